//! Power cut in the middle of a tap: SIGKILL `reader accept` at varying
//! moments, then reopen the real SQLite file. Nothing acknowledged may be
//! lost, nothing may be recorded twice, and the chain must stay intact.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::thread::sleep;
use std::time::Duration;

use sonotap_hub::{Hub, IssueRequest};
use sonotap_protocol::record::{GENESIS_HASH, verify_chain};
use sonotap_protocol::token::Scope;
use sonotap_reader::reader::{InitOptions, Reader};
use sonotap_wallet::{PayRequest, Wallet};

use crate::util::sonotap;

const NOW: u64 = 1_800_000_000;

#[test]
fn sigkill_during_accepts_loses_no_acknowledged_record() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut hub = Hub::init(&dir.path().join("hub"), 1, NOW).expect("hub");
    let mut wallet = Wallet::create(&dir.path().join("w")).expect("wallet");
    let request = IssueRequest {
        scope: Scope::Transit,
        currency: 978,
        offline_limit: 1_000_000,
        per_payment_cap: 1_000,
        valid_from: NOW as u32,
        valid_hours: 24,
    };
    let credential = hub
        .issue(&wallet.public_key(), request, NOW)
        .expect("issue");
    std::fs::write(dir.path().join("cred"), credential.encode()).expect("write");
    wallet
        .add_credential(&dir.path().join("cred"))
        .expect("credential");
    let options = InitOptions {
        id: "gate-1".into(),
        scope: Scope::Transit,
        currency: 978,
        clock_skew_secs: 300,
        fare: None,
    };
    let reader_dir = dir.path().join("r");
    drop(Reader::init(&reader_dir, &options, &hub.issuer_public(), NOW).expect("reader"));

    // Acknowledged accepts: counter -> seq, as the process printed them.
    let mut acknowledged = BTreeMap::new();
    let mut killed = 0;
    for i in 0..60u32 {
        let token = wallet
            .pay(PayRequest {
                amount: 10,
                at: NOW as u32,
                reader_tag: 0,
                gate: None,
            })
            .expect("pay")
            .token;
        let path = dir.path().join(format!("t{i}"));
        std::fs::write(&path, token.encode()).expect("token");
        let mut child = sonotap()
            .args(["reader", "accept", "--data"])
            .arg(&reader_dir)
            .args(["--at", &NOW.to_string()])
            .arg(&path)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn");
        // Every other tap is cut at a different moment: before the database
        // is open, during the transaction, or after the commit.
        if i % 2 == 1 {
            sleep(Duration::from_micros(u64::from(i) * 150));
            if child.kill().is_ok() {
                killed += 1;
            }
        }
        let out = child.wait_with_output().expect("wait");
        if out.status.code() == Some(0) {
            let line = String::from_utf8_lossy(&out.stdout);
            let json: serde_json::Value = serde_json::from_str(line.trim()).expect("accept line");
            assert_eq!(json["decision"], "accept");
            acknowledged.insert(token.payment.counter, json["seq"].as_u64().expect("seq"));
        }
    }
    assert!(
        killed > 10,
        "the test killed too few processes to mean anything"
    );
    assert!(
        acknowledged.len() >= 30,
        "every uninterrupted tap is acknowledged"
    );

    let reader = Reader::open(&reader_dir).expect("the database reopens after the kills");
    let records = reader.records(false).expect("records");
    for (counter, seq) in &acknowledged {
        let record = records
            .iter()
            .find(|r| r.seq == *seq)
            .expect("acknowledged record kept");
        assert_eq!(record.counter, *counter);
    }
    let counters: Vec<u32> = records.iter().map(|r| r.counter).collect();
    assert!(
        counters.windows(2).all(|w| w[0] < w[1]),
        "no counter recorded twice: {counters:?}"
    );
    let key = reader.public_key();
    verify_chain("gate-1", key.verifying_key(), (0, GENESIS_HASH), &records)
        .expect("the chain is intact after the kills");
}
