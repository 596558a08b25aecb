//! Issue 15, high availability: PostgreSQL restarted (stopped as a
//! crash would stop it) while two `hub serve` processes take uploads from two
//! readers loses nothing, counts nothing twice, and the hub processes carry
//! on by themselves, without being restarted.

use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

use sonotap_hub::IssueRequest;
use sonotap_protocol::token::Scope;
use sonotap_reader::reader::Reader;
use sonotap_wallet::Wallet;

use crate::pg_server::PgServer;
use crate::util::{
    HubProcess, Scratch, SlowProxy, last_json, pay_token, reader_report, reader_totals, sonotap,
    unsynced,
};

const NOW: u64 = 1_790_000_000;
/// Taps per reader: 15 uploads of 10 records, each held 50 ms on its way
/// (so the server stops with most of them still to come).
const TAPS: u64 = 150;

/// A wallet in `dir` with a credential issued by the hub whose state is at `url`.
fn wallet(s: &Scratch, url: &str, dir: &str) -> Wallet {
    let mut hub = sonotap_hub::open_database(&s.path("hub"), Some(url), NOW).expect("hub");
    let mut w = Wallet::create(&s.path(dir)).expect("wallet");
    let request = IssueRequest {
        scope: Scope::Transit,
        currency: 978,
        offline_limit: 1_000_000,
        per_payment_cap: 300,
        valid_from: (NOW - 3600) as u32,
        valid_hours: 48,
    };
    let credential = hub.issue(&w.public_key(), request, NOW).expect("issue");
    let path = s.path(&format!("{dir}.cred"));
    std::fs::write(&path, credential.encode()).expect("credential file");
    w.add_credential(&path).expect("add credential");
    w
}

/// `reader sync` of `reader` to the hub at `url`, 10 records a batch,
/// retrying for up to about a minute; runs in the background.
fn start_sync(s: &Scratch, reader: &str, url: &str) -> Child {
    sonotap()
        .args(["reader", "sync", "--data", reader, "--hub", url])
        .args(["--batch-size", "10", "--timeout", "5s", "--attempts", "30"])
        .current_dir(s.dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("sync starts")
}

/// Waits up to `within` for `child` to end.
fn finish(child: Child, within: Duration) -> Output {
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(within) {
        Ok(out) => out.expect("sync output"),
        Err(_) => {
            // SAFETY: killing a child this test started.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            panic!("reader sync did not finish within {within:?}");
        }
    }
}

#[test]
fn issue15_08_postgresql_restarted_under_load_loses_nothing_and_the_hubs_recover() {
    // Durable, as an operator runs it: an acknowledged commit survives the stop.
    let Some(server) = PgServer::start_durable() else {
        return;
    };
    server.create_database("ha");
    let url = server.url("ha");
    let s = Scratch::new();
    s.ok(&["hub", "init", "--data", "hub", "--database", &url]);
    for (dir, id) in [("ra", "gate-a"), ("rb", "gate-b")] {
        s.reader_init(dir, id, &[]);
        let key = format!("{dir}/reader.pub");
        s.ok(&[
            "hub",
            "reader",
            "add",
            "--data",
            "hub",
            "--id",
            id,
            "--key",
            &key,
            "--database",
            &url,
        ]);
    }
    // Each reader: its own wallet, TAPS charges of 1..=TAPS.
    for (reader, dir) in [("ra", "wa"), ("rb", "wb")] {
        let mut w = wallet(&s, &url, dir);
        let mut r = Reader::open(&s.path(reader)).expect("reader");
        for n in 1..=TAPS {
            let at = NOW + n;
            let token = pay_token(&mut w, n as u32, at);
            let outcome = r.present(&token, None, at).expect("present");
            assert!(outcome.decision.is_ok(), "tap {n} at {reader} declined");
        }
    }
    let charged = TAPS * (TAPS + 1) / 2;

    let hubs = [
        HubProcess::start_with(&s, &["--database", &url]),
        HubProcess::start_with(&s, &["--database", &url]),
    ];
    let proxies = hubs
        .each_ref()
        .map(|hub| SlowProxy::start(&hub.url, Duration::ZERO, Duration::from_millis(50)));
    let syncs = [
        start_sync(&s, "ra", &proxies[0].url),
        start_sync(&s, "rb", &proxies[1].url),
    ];
    // Stop the server once uploads are being stored, while both syncs run.
    let deadline = Instant::now() + Duration::from_secs(60);
    while unsynced(&s, "ra") == TAPS || unsynced(&s, "rb") == TAPS {
        assert!(Instant::now() < deadline, "no upload was acknowledged");
        std::thread::sleep(Duration::from_millis(20));
    }
    server.crash().expect("stop PostgreSQL");
    let stopped_with = [unsynced(&s, "ra"), unsynced(&s, "rb")];
    std::thread::sleep(Duration::from_secs(1));
    server.start_again().expect("start PostgreSQL again");

    for ((child, reader), left) in syncs.into_iter().zip(["ra", "rb"]).zip(stopped_with) {
        let out = finish(child, Duration::from_secs(120));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{reader}: {stderr}");
        assert_eq!(unsynced(&s, reader), 0, "{reader}: {stderr}");
        // A sync with records left when the server stopped met it, and retried.
        assert!(
            left == 0 || stderr.contains("retrying"),
            "{reader}: {stderr}"
        );
    }
    assert!(
        stopped_with.iter().any(|&left| left > 0),
        "the server stopped after every record was acknowledged: {stopped_with:?}"
    );

    // Everything exactly once: every record, every charge, no incident, no flag.
    let report: serde_json::Value = serde_json::from_str(&s.ok(&[
        "hub",
        "report",
        "--data",
        "hub",
        "--json",
        "--database",
        &url,
    ]))
    .expect("report");
    for id in ["gate-a", "gate-b"] {
        assert_eq!(reader_totals(&report, id), (TAPS, charged), "{report}");
        let gaps = reader_report(&report, id)["gaps"].as_array().map(Vec::len);
        assert_eq!(gaps, Some(0), "{report}");
    }
    assert_eq!(
        report["incidents"].as_array().map(Vec::len),
        Some(0),
        "{report}"
    );
    assert_eq!(
        report["flagged"].as_array().map(Vec::len),
        Some(0),
        "{report}"
    );

    // The same hub processes take the next uploads at once: they reconnected.
    for (reader, dir, hub) in [("ra", "wa", &hubs[0]), ("rb", "wb", &hubs[1])] {
        let mut w = Wallet::open(&s.path(dir)).expect("wallet");
        let at = NOW + TAPS + 1;
        let token = pay_token(&mut w, 1, at);
        let mut r = Reader::open(&s.path(reader)).expect("reader");
        assert!(
            r.present(&token, None, at)
                .expect("present")
                .decision
                .is_ok()
        );
        let out = s.reader_sync(reader, &hub.url, &["--attempts", "1"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(last_json(&out)["records"], 1);
    }
}
