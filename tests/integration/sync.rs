//! Store-and-forward against a real hub process on 127.0.0.1: the issue's
//! scenario (a cloned wallet at two readers), then faults: the hub killed
//! mid-upload, the network dropping a response, the same batch twice, a
//! batch relabelled with another reader's identity, a hub that lies.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use sonotap_disk::keys::{Role, SecretKey};
use sonotap_protocol::token::Scope;
use sonotap_protocol::wire::Batch;
use sonotap_reader::reader::Reader;
use sonotap_reader::sync::export;
use sonotap_wallet::Wallet;

use crate::util::{
    self, HubProcess, Scratch, copy_dir, issued_wallet, last_json, pay_token, serve_one_by_one,
    sonotap, unsynced,
};

const NOW: u64 = 1_790_000_000;

/// Hub `hub`, readers `ra` (gate-a) and `rb` (gate-b) registered with it.
fn site() -> Scratch {
    let s = Scratch::new();
    s.ok(&["hub", "init", "--data", "hub"]);
    for (dir, id) in [("ra", "gate-a"), ("rb", "gate-b")] {
        s.reader_init(dir, id, &[]);
        s.register_reader(dir, id);
    }
    s
}

/// A wallet in `dir` with a credential (limit `limit`, 300 per payment).
fn wallet(s: &Scratch, dir: &str, limit: u32) -> Wallet {
    issued_wallet(s.dir.path(), dir, Scope::Transit, limit, NOW)
}

/// Pays `amount` at reader `dir` at time `at`; returns the decision's reason (None = accepted).
fn tap(s: &Scratch, w: &mut Wallet, reader: &str, amount: u32, at: u64) -> Option<String> {
    let token = pay_token(w, amount, at);
    let mut r = Reader::open(&s.path(reader)).expect("reader");
    let outcome = r.present(&token, None, at).expect("present");
    outcome.decision.err().map(|d| d.reason.as_str().to_owned())
}

fn report(s: &Scratch) -> serde_json::Value {
    serde_json::from_str(&s.ok(&["hub", "report", "--data", "hub", "--json"])).expect("json")
}

fn reader_row<'a>(report: &'a serde_json::Value, id: &str) -> &'a serde_json::Value {
    report["readers"]
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["reader"] == id))
        .expect("reader row")
}

#[test]
fn cloned_wallet_is_flagged_at_the_hub_and_then_declined_by_reader_a() {
    let s = site();
    let hub = HubProcess::start(&s, 0);
    let mut honest = wallet(&s, "honest", 5_000);
    let mut cloned = wallet(&s, "phone", 5_000);
    // The clone: a byte-for-byte copy of the phone's wallet, taken before it pays.
    copy_dir(&s.path("phone"), &s.path("clone"));
    let mut clone = Wallet::open(&s.path("clone")).expect("clone");

    assert_eq!(tap(&s, &mut cloned, "ra", 250, NOW), None);
    assert_eq!(
        tap(&s, &mut clone, "rb", 200, NOW + 5),
        None,
        "offline, reader B cannot know"
    );
    assert_eq!(tap(&s, &mut honest, "ra", 250, NOW + 10), None);
    assert_eq!(tap(&s, &mut honest, "rb", 250, NOW + 20), None);

    for reader in ["ra", "rb"] {
        let out = s.reader_sync(reader, &hub.url, &[]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(last_json(&out)["records"], 2);
        assert_eq!(unsynced(&s, reader), 0);
    }
    let r = report(&s);
    assert_eq!(reader_row(&r, "gate-a")["records"], 2);
    assert_eq!(reader_row(&r, "gate-b")["records"], 2);
    let flagged = r["flagged"].as_array().expect("flags");
    assert_eq!(flagged.len(), 1, "{r}");
    assert_eq!(flagged[0]["wallet"], cloned.id().to_string());
    assert_eq!(flagged[0]["rule"], "counter_reused");
    // Issue 17: a clone and a phone restored from a backup look alike, so
    // the credential is suspended for review; the wallet is not denied.
    assert_eq!(flagged[0]["denied"], false);
    let suspended = r["suspensions"].as_array().expect("suspensions");
    assert_eq!(suspended.len(), 1, "{r}");
    assert_eq!(suspended[0]["wallet"], cloned.id().to_string());

    // Reader A learns of the suspension at its next sync.
    let out = s.reader_sync("ra", &hub.url, &[]);
    assert_eq!(last_json(&out)["deny_entries"], 1);
    assert_eq!(
        tap(&s, &mut cloned, "ra", 250, NOW + 60).as_deref(),
        Some("wallet_denied")
    );
    assert_eq!(tap(&s, &mut honest, "ra", 250, NOW + 70), None);

    // Syncing again changes nothing at the hub: every record exactly once.
    for reader in ["ra", "rb"] {
        assert!(s.reader_sync(reader, &hub.url, &[]).status.success());
    }
    let r = report(&s);
    assert_eq!(reader_row(&r, "gate-a")["records"], 3);
    assert_eq!(reader_row(&r, "gate-a")["charged"], 750);
    assert_eq!(r["flagged"].as_array().map(Vec::len), Some(1));
}

/// Makes `n` accepted payments at `reader`.
pub(crate) fn queue(s: &Scratch, reader: &str, n: u32) {
    let mut w = wallet(s, &format!("bulk-{reader}"), 1_000_000_000);
    let mut r = Reader::open(&s.path(reader)).expect("reader");
    for i in 0..n {
        let token = pay_token(&mut w, 1, NOW + u64::from(i));
        let outcome = r
            .present(&token, None, NOW + u64::from(i))
            .expect("present");
        assert!(outcome.decision.is_ok());
    }
}

/// The first batch `reader` would upload (up to 100 records), sealed at `NOW`.
pub(crate) fn first_batch(s: &Scratch, reader: &str) -> Batch {
    Reader::open(&s.path(reader))
        .expect("reader")
        .next_batch(0, 100, NOW)
        .expect("batch")
        .expect("records")
}

fn hub_record_count(s: &Scratch) -> i64 {
    let conn = rusqlite::Connection::open(s.path("hub/hub.db")).expect("open");
    conn.busy_timeout(Duration::from_secs(2)).expect("timeout");
    conn.query_row("SELECT count(*) FROM records", [], |r| r.get(0))
        .unwrap_or(0)
}

#[test]
fn hub_killed_mid_upload_loses_nothing_and_counts_nothing_twice() {
    let s = site();
    queue(&s, "ra", 1_500);
    let mut hub = HubProcess::start(&s, 0);
    let url = hub.url.clone();
    let mut child = sonotap()
        .args([
            "reader",
            "sync",
            "--data",
            "ra",
            "--hub",
            &url,
            "--batch-size",
            "20",
        ])
        .args(["--attempts", "1", "--timeout", "5s"])
        .current_dir(s.dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("sync starts");
    let deadline = Instant::now() + Duration::from_secs(30);
    while hub_record_count(&s) == 0 {
        assert!(Instant::now() < deadline, "no batch reached the hub");
        std::thread::sleep(Duration::from_millis(5));
    }
    hub.kill();
    let status = child.wait().expect("sync ends");
    assert_eq!(status.code(), Some(1), "the sync must notice the hub died");
    let stored = hub_record_count(&s);
    let queued = unsynced(&s, "ra");
    assert!(stored > 0 && stored < 1_500, "stored {stored}");
    assert!(queued > 0, "records are still queued");
    // Whatever the reader marked synced, the hub has (it marks only on a signed ack).
    assert!(1_500 - queued as i64 <= stored);

    let hub = HubProcess::start(&s, hub.port);
    let out = s.reader_sync("ra", &hub.url, &["--batch-size", "500"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(unsynced(&s, "ra"), 0);
    let r = report(&s);
    let row = reader_row(&r, "gate-a");
    assert_eq!(row["records"], 1_500);
    assert_eq!(row["charged"], 1_500);
    assert_eq!(row["gaps"].as_array().map(Vec::len), Some(0));
    assert_eq!(r["incidents"].as_array().map(Vec::len), Some(0), "{r}");
    assert_eq!(r["flagged"].as_array().map(Vec::len), Some(0), "{r}");
}

/// A TCP proxy that forwards each request to `upstream` but, while `drop`
/// is set, closes the connection instead of passing an upload's response back.
fn dropping_proxy(upstream: String, drop: Arc<AtomicBool>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(mut client) = client else { return };
            let upstream = upstream.clone();
            let drop = Arc::clone(&drop);
            std::thread::spawn(move || {
                let _ = client.set_read_timeout(Some(Duration::from_secs(10)));
                let Some(request) = read_http_message(&mut client) else {
                    return;
                };
                let Ok(mut server) = TcpStream::connect(&upstream) else {
                    return;
                };
                let _ = server.set_read_timeout(Some(Duration::from_secs(10)));
                if server.write_all(&request).is_err() {
                    return;
                }
                let response = read_http_message(&mut server);
                let upload = request.starts_with(b"POST /v1/batches");
                if !(upload && drop.load(Ordering::SeqCst))
                    && let Some(response) = response
                {
                    let _ = client.write_all(&response);
                }
            });
        }
    });
    format!("http://{addr}")
}

/// Reads one HTTP/1.1 message with a Content-Length body; forces `Connection: close`.
fn read_http_message(stream: &mut TcpStream) -> Option<Vec<u8>> {
    util::read_http_message(stream).map(util::with_connection_close)
}

#[test]
fn response_lost_on_the_way_back_is_retried_and_stored_once() {
    let s = site();
    queue(&s, "ra", 30);
    let hub = HubProcess::start(&s, 0);
    let drop = Arc::new(AtomicBool::new(true));
    let proxy = dropping_proxy(
        hub.url.trim_start_matches("http://").to_owned(),
        Arc::clone(&drop),
    );

    let out = s.reader_sync("ra", &proxy, &["--attempts", "1"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(unsynced(&s, "ra"), 30, "no acknowledgement, nothing marked");
    assert_eq!(hub_record_count(&s), 30, "but the hub stored the batch");

    drop.store(false, Ordering::SeqCst);
    let out = s.reader_sync("ra", &proxy, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(last_json(&out)["already_stored"], 30);
    assert_eq!(unsynced(&s, "ra"), 0);
    assert_eq!(reader_row(&report(&s), "gate-a")["records"], 30);
}

#[test]
fn same_batch_twice_by_upload_and_by_import_is_counted_once() {
    let s = site();
    queue(&s, "ra", 12);
    s.ok(&["reader", "export", "--data", "ra", "--out", "a.batches"]);
    let first = s.run(&["hub", "import", "--data", "hub", "a.batches"]);
    assert!(first.status.success());
    assert_eq!(last_json(&first)["status"], "stored");
    let again = s.run(&["hub", "import", "--data", "hub", "a.batches"]);
    assert_eq!(last_json(&again)["status"], "duplicate");

    let hub = HubProcess::start(&s, 0);
    let file = std::fs::read(s.path("a.batches")).expect("read");
    let batch = export::decode_file(&file).expect("file")[0].to_vec();
    for expected in ["duplicate", "duplicate"] {
        let text = ureq::post(format!("{}/v1/batches", hub.url))
            .header("content-type", "application/octet-stream")
            .send(&batch[..])
            .expect("upload")
            .body_mut()
            .read_to_string()
            .expect("answer");
        let answer: serde_json::Value = serde_json::from_str(&text).expect("json");
        assert_eq!(answer["status"], expected);
    }
    // The network sync then only collects the acknowledgement.
    let out = s.reader_sync("ra", &hub.url, &[]);
    assert_eq!(last_json(&out)["already_stored"], 12);
    let r = report(&s);
    assert_eq!(reader_row(&r, "gate-a")["records"], 12);
    assert_eq!(reader_row(&r, "gate-a")["charged"], 12);
}

#[test]
fn batch_relabelled_with_another_readers_identity_is_refused() {
    let s = site();
    queue(&s, "ra", 5);
    let hub = HubProcess::start(&s, 0);
    let original = first_batch(&s, "ra");
    let b_key = SecretKey::read(&s.path("rb/reader.key"), Role::Reader).expect("key");

    // Reader B re-signs A's records as its own: the batch signature is B's,
    // but every record signature is A's over a body naming gate-a (the hub
    // checks the last one's: record 5).
    let relabelled = Batch::seal(
        "gate-b",
        1,
        original.prev_hash,
        original.records.clone(),
        NOW,
        b_key.signing_key(),
    )
    .expect("seal");
    // And a batch that names gate-a, signed with B's key.
    let impostor = Batch::seal(
        "gate-a",
        1,
        original.prev_hash,
        original.records,
        NOW,
        b_key.signing_key(),
    )
    .expect("seal");
    // Both get the one answer for an upload not signed by a registered
    // reader (issue 13, item 8); the hub's log keeps which it was.
    for batch in [relabelled, impostor] {
        let mut response = ureq::post(format!("{}/v1/batches", hub.url))
            .header("content-type", "application/octet-stream")
            .config()
            .http_status_as_error(false)
            .build()
            .send(&batch.encode().expect("encode")[..])
            .expect("answer");
        assert_eq!(response.status().as_u16(), 403);
        let text = response.body_mut().read_to_string().expect("answer");
        let body: serde_json::Value = serde_json::from_str(&text).expect("json");
        assert_eq!(body["error"], "refused");
        assert_eq!(
            body["message"],
            sonotap_hub::server::REFUSED_MESSAGE,
            "{body}"
        );
    }
    let r = report(&s);
    assert_eq!(reader_row(&r, "gate-a")["records"], 0);
    assert_eq!(reader_row(&r, "gate-b")["records"], 0);

    // An unregistered reader gets the same answer.
    s.reader_init("rc", "gate-c", &[]);
    queue(&s, "rc", 1);
    let out = s.reader_sync("rc", &hub.url, &["--attempts", "1"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("refused") && err.contains(sonotap_hub::server::REFUSED_MESSAGE),
        "{err}"
    );
    assert_eq!(unsynced(&s, "rc"), 1);
}

#[test]
fn hub_checks_every_record_signature_only_when_asked() {
    let s = site();
    queue(&s, "ra", 5);
    let mut batch = first_batch(&s, "ra");
    let a_key = SecretKey::read(&s.path("ra/reader.key"), Role::Reader).expect("key");
    // Reader A's own batch, whose record 2 carries a broken record
    // signature: what a reader with a faulty signer would send.
    batch.records[1].signature[0] ^= 1;
    let resealed = Batch::seal(
        "gate-a",
        1,
        batch.prev_hash,
        batch.records,
        NOW,
        a_key.signing_key(),
    )
    .expect("seal");
    let file = export::encode_file(&[resealed]).expect("file");
    std::fs::write(s.path("faulty.batches"), file).expect("write");

    let audit = s.run(&[
        "hub",
        "import",
        "--data",
        "hub",
        "--every-record-signature",
        "faulty.batches",
    ]);
    assert!(!audit.status.success());
    let err = String::from_utf8_lossy(&audit.stderr);
    assert!(err.contains("record 2 has a bad reader signature"), "{err}");
    assert_eq!(reader_row(&report(&s), "gate-a")["records"], 0);

    // By default the batch signature, which covers record 2 and its
    // signature, is what vouches for it.
    let default = s.run(&["hub", "import", "--data", "hub", "faulty.batches"]);
    assert!(default.status.success(), "{default:?}");
    assert_eq!(last_json(&default)["new_records"], 5);
}

/// A fake hub that answers every upload with `answer`; it holds the issuer
/// key of the hub in `s`, so its time statements are genuine.
fn lying_hub(s: &Scratch, answer: String) -> String {
    let issuer = SecretKey::read(&s.path("hub/issuer.key"), Role::Issuer).expect("issuer key");
    serve_one_by_one(move |request| {
        let nonce = request
            .strip_prefix(b"GET /v1/time?nonce=")
            .and_then(|rest| hex::decode(&rest[..32.min(rest.len())]).ok())
            .and_then(|b| <[u8; 16]>::try_from(b).ok());
        let body = if let Some(nonce) = nonce {
            let st = sonotap_protocol::wire::TimeStatement::sign(
                nonce,
                1_790_000_000_000,
                1,
                issuer.signing_key(),
            );
            format!(
                "{{\"unix_ms\": 1790000000000, \"statement\": \"{}\"}}",
                hex::encode(st.encode())
            )
        } else {
            answer.clone()
        };
        let response = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        Some(response.into_bytes())
    })
}

#[test]
fn hub_that_lies_about_the_acknowledgement_marks_nothing() {
    let s = site();
    queue(&s, "ra", 3);
    // An acknowledgement signed by a key the reader does not trust.
    let forger = SecretKey::generate(Role::Issuer, Some(1)).expect("key");
    let batch = first_batch(&s, "ra");
    let forged =
        sonotap_protocol::wire::Ack::for_batch(&batch, 0, 1, forger.signing_key()).expect("ack");
    let forged = hex::encode(forged.encode().expect("encode"));
    for ack in ["not hex", "00", forged.as_str()] {
        let answer = format!(
            "{{\"status\":\"stored\",\"ack\":\"{ack}\",\"new_records\":3,\"already_stored\":0,\"flagged\":[]}}"
        );
        let url = lying_hub(&s, answer);
        let out = s.reader_sync("ra", &url, &["--attempts", "1"]);
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("cannot be trusted"), "{err}");
        assert_eq!(unsynced(&s, "ra"), 3);
    }
}

#[test]
fn hub_refuses_plain_http_off_loopback_and_serves_https_with_a_ca() {
    let s = site();
    let out = s.run(&["hub", "serve", "--data", "hub", "--listen", "0.0.0.0:0"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("refusing plain HTTP"));

    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("cert");
    std::fs::write(s.path("hub.crt"), cert.cert.pem()).expect("write");
    // A private key is refused unless it is closed to group and others (0600).
    sonotap_disk::fsutil::create_private(
        &s.path("hub.key"),
        cert.signing_key.serialize_pem().as_bytes(),
    )
    .expect("write");
    let mut child = sonotap()
        .args(["hub", "serve", "--data", "hub", "--listen", "127.0.0.1:0"])
        .args(["--tls-cert", "hub.crt", "--tls-key", "hub.key"])
        .current_dir(s.dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("hub starts");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("line");
    let port = line
        .split_whitespace()
        .nth(2)
        .and_then(|u| u.rsplit(':').next())
        .expect("port")
        .to_owned();
    let url = format!("https://localhost:{port}");
    queue(&s, "ra", 2);
    let untrusted = s.reader_sync("ra", &url, &["--attempts", "1"]);
    assert_eq!(untrusted.status.code(), Some(1));
    let out = s.reader_sync("ra", &url, &["--hub-ca", "hub.crt"]);
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(last_json(&out)["records"], 2);
}

#[test]
fn background_loop_syncs_each_new_tap_and_keeps_everything_while_the_hub_is_down() {
    use sonotap_reader::sync::client::{HubClient, SyncOptions, run_loop};
    use sonotap_reader::sync::failover::HubUrls;
    let s = site();
    queue(&s, "ra", 3);
    // First no hub at all: every round fails, nothing is lost.
    let dead = TcpListener::bind("127.0.0.1:0").expect("bind");
    let dead_url = format!("http://{}", dead.local_addr().expect("addr"));
    drop(dead);
    let run = |url: String, want_rounds: usize| {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let dir = s.path("ra");
        let stop_loop = Arc::clone(&stop);
        let handle = std::thread::spawn(move || {
            let hub = HubClient::new(
                &HubUrls::check(&[&url]).expect("url"),
                None,
                Duration::from_secs(5),
            )
            .expect("client");
            let options = SyncOptions::default();
            run_loop(
                &dir,
                &hub,
                &options,
                Duration::from_millis(100),
                &stop_loop,
                |round| {
                    let _ = tx.send(round.map(|r| r.queued).map_err(|e| e.to_string()));
                },
            )
        });
        let rounds: Vec<_> = (0..want_rounds)
            .map(|_| {
                rx.recv_timeout(Duration::from_secs(30))
                    .expect("a round ends")
            })
            .collect();
        stop.store(true, Ordering::SeqCst);
        handle
            .join()
            .expect("loop thread")
            .expect("loop ends cleanly");
        rounds
    };
    let rounds = run(dead_url, 2);
    assert!(
        rounds
            .iter()
            .all(|r| r.as_ref().is_err_and(|e| e.contains("127.0.0.1"))),
        "{rounds:?}"
    );
    assert_eq!(unsynced(&s, "ra"), 3);
    let state = Reader::open(&s.path("ra"))
        .expect("reader")
        .sync_state()
        .expect("state");
    assert!(state.last_error.is_some());

    let hub = HubProcess::start(&s, 0);
    let rounds = run(hub.url.clone(), 2);
    assert_eq!(rounds[0], Ok(0), "{rounds:?}");
    assert_eq!(unsynced(&s, "ra"), 0);
    let state = Reader::open(&s.path("ra"))
        .expect("reader")
        .sync_state()
        .expect("state");
    assert_eq!(state.last_error, None);
    assert_eq!(reader_row(&report(&s), "gate-a")["records"], 3);
}

/// A void refunds an earlier charge of the same reader's chain, so the hub
/// must store a reader's batches in chain order. With two uploads in flight
/// a batch could overtake the one before it: a void in batch 2 of a charge
/// in batch 1, stored first, found no charge (`void_without_charge`) and the
/// rider stayed charged. Now a reader has one upload in flight: held 500 ms
/// on its way, batch 1 is still stored first.
#[test]
fn a_void_in_the_next_batch_refunds_its_charge_even_when_the_first_batch_is_slow() {
    let s = site();
    let hub = HubProcess::start(&s, 0);
    let mut w = wallet(&s, "w", 5_000);
    assert_eq!(tap(&s, &mut w, "ra", 250, NOW), None);
    let mut reader = Reader::open(&s.path("ra")).expect("reader");
    reader.void(1, "vend failed", NOW + 1).expect("void");
    drop(reader);
    let proxy = util::SlowProxy::start(&hub.url, Duration::from_millis(500), Duration::ZERO);
    let out = s.reader_sync("ra", &proxy.url, &["--batch-size", "1"]);
    assert!(out.status.success(), "{}", util::stderr(&out));
    assert_eq!(last_json(&out)["records"], 2);
    let r = report(&s);
    let row = reader_row(&r, "gate-a");
    assert_eq!(
        (row["charged"].as_u64(), row["voided"].as_u64()),
        (Some(250), Some(250)),
        "{r}"
    );
    assert_eq!(r["incidents"].as_array().map(Vec::len), Some(0), "{r}");
    assert_eq!(proxy.most_in_flight(), 1);
}
