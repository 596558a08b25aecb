//! Issue 15, high availability, through real processes: a reader given
//! several hubs fails over at once (`reader sync --hub A --hub B`, the
//! daemon's `[hub] url = [A, B]`), and a hub process killed mid-upload
//! costs at most a retry, nothing lost and nothing counted twice, with two
//! `hub serve` processes on one PostgreSQL database.

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Stdio;
use std::time::{Duration, Instant};

use sonotap_reader::daemon::metrics::parse_exposition;
use sonotap_reader::reader::Reader;
use sonotap_wallet::Wallet;

use crate::pg_server;
use crate::util::{
    HubProcess, Scratch, SlowProxy, last_json, pay_token, reader_totals, sonotap, unix_now,
    unsynced,
};

/// A URL on 127.0.0.1 of a hub that is down: every connection is closed
/// unanswered. The port stays taken for the whole test run, so no other
/// test's hub can come up there (a port freed at once could be).
fn dead_hub() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    std::thread::spawn(move || {
        for connection in listener.incoming() {
            drop(connection);
        }
    });
    url
}

/// Hub `hub`, reader `r` (gate-1) registered with it, `n` payments queued there.
fn site(n: u32) -> Scratch {
    let s = Scratch::new();
    s.ok(&["hub", "init", "--data", "hub"]);
    s.reader_init("r", "gate-1", &[]);
    s.register_reader("r", "gate-1");
    crate::sync::queue(&s, "r", n);
    s
}

#[test]
fn issue15_05_reader_sync_passes_over_a_dead_first_hub_in_its_first_attempt() {
    let s = site(5);
    let live = HubProcess::start(&s, 0);
    let dead = dead_hub();
    let out = s.run(&[
        "reader",
        "sync",
        "--data",
        "r",
        "--hub",
        &dead,
        "--hub",
        &live.url,
        "--timeout",
        "5s",
    ]);
    let err = crate::util::stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(!err.contains("retrying"), "no second attempt: {err}");
    assert!(
        err.contains("failing over") && err.contains(&dead) && err.contains(&live.url),
        "the move is logged, from which hub to which: {err}"
    );
    let report = last_json(&out);
    assert_eq!(report["hub"], live.url.as_str(), "{report}");
    assert_eq!(report["records"], 5);
    assert_eq!(unsynced(&s, "r"), 0);

    // Named twice: refused before anything is sent.
    let out = s.run(&[
        "reader", "sync", "--data", "r", "--hub", &live.url, "--hub", &live.url,
    ]);
    crate::util::assert_fails(&out, 2, &["--hub", "named twice"]);
}

/// A wallet `w` with a credential issued by the hub on PostgreSQL `db`.
fn pg_wallet(s: &Scratch, db: &str) -> Wallet {
    s.ok(&["wallet", "new", "--dir", "w"]);
    let from = (unix_now() - 3600).to_string();
    s.ok(&[
        "hub",
        "issue",
        "--data",
        "hub",
        "--database",
        db,
        "--wallet-key",
        "w/wallet.pub",
        "--limit",
        "100000000",
        "--per-payment",
        "300",
        "--valid-hours",
        "48",
        "--valid-from",
        &from,
        "--out",
        "cred",
    ]);
    s.ok(&["wallet", "add-credential", "--dir", "w", "cred"]);
    Wallet::open(&s.path("w")).expect("wallet")
}

#[test]
fn issue15_06_a_hub_process_killed_mid_upload_costs_at_most_a_retry() {
    const TAPS: u32 = 4_000;
    let Some(server) = pg_server::PgServer::start() else {
        return;
    };
    server.create_database("failover");
    let db = server.url("failover");
    let s = Scratch::new();
    s.ok(&["hub", "init", "--data", "hub", "--database", &db]);
    s.reader_init("r", "gate-1", &[]);
    s.ok(&[
        "hub",
        "reader",
        "add",
        "--data",
        "hub",
        "--id",
        "gate-1",
        "--key",
        "r/reader.pub",
        "--database",
        &db,
    ]);
    let mut w = pg_wallet(&s, &db);
    let now = unix_now();
    let mut reader = Reader::open(&s.path("r")).expect("reader");
    let mut taken = 0u64;
    for i in 0..TAPS {
        let amount = 1 + i % 7;
        let outcome = reader
            .present(&pay_token(&mut w, amount, now), None, now)
            .expect("present");
        assert!(outcome.decision.is_ok(), "tap {i}");
        taken += u64::from(amount);
    }
    drop(reader);

    let mut a = HubProcess::start_logged(&s, &["--database", &db], "hub-a.stderr");
    let b = HubProcess::start_logged(&s, &["--database", &db], "hub-b.stderr");
    // Each upload to A held 10 ms on its way, so that A dies with most of
    // the 40 still to come, however fast this machine is.
    let to_a = SlowProxy::start(&a.url, Duration::ZERO, Duration::from_millis(10));
    let sync_log = fs::File::create(s.path("sync.stderr")).expect("log");
    let mut sync = sonotap()
        .args(["reader", "sync", "--data", "r", "--batch-size", "100"])
        .args(["--hub", &to_a.url, "--hub", &b.url, "--timeout", "10s"])
        .current_dir(s.dir.path())
        .stdout(Stdio::piped())
        .stderr(sync_log)
        .spawn()
        .expect("sync starts");

    // Once the first batches are acknowledged, hub A dies (SIGKILL) with
    // more to come.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = unsynced(&s, "r");
        if left < u64::from(TAPS) {
            assert!(left > 0, "the upload ended before the kill: make it longer");
            break;
        }
        assert!(Instant::now() < deadline, "no batch acknowledged");
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(
        sync.try_wait().expect("wait").is_none(),
        "the sync is still running"
    );
    a.kill();

    let mut stdout = String::new();
    sync.stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut stdout)
        .expect("read");
    let status = sync.wait().expect("sync ends");
    let err = fs::read_to_string(s.path("sync.stderr")).expect("log");
    assert!(status.success(), "{err}");
    assert!(!err.contains("retrying"), "no second attempt: {err}");
    assert!(err.contains("failing over"), "A's death was noticed: {err}");
    let report: serde_json::Value =
        serde_json::from_str(stdout.lines().last().unwrap_or_default()).expect("report JSON");
    assert_eq!(report["hub"], b.url.as_str(), "{report}");
    assert_eq!(report["queued"], 0, "{report}");
    assert_eq!(unsynced(&s, "r"), 0);

    let hub: serde_json::Value = serde_json::from_str(&s.ok(&[
        "hub",
        "report",
        "--data",
        "hub",
        "--json",
        "--database",
        &db,
    ]))
    .expect("report");
    assert_eq!(
        reader_totals(&hub, "gate-1"),
        (u64::from(TAPS), taken),
        "every record once: {hub}"
    );
    assert_eq!(hub["incidents"].as_array().map(Vec::len), Some(0), "{hub}");
    assert_eq!(hub["flagged"].as_array().map(Vec::len), Some(0), "{hub}");
    drop(b);
}

fn scrape(port: u16) -> Vec<(String, f64)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("metrics endpoint");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .expect("request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("response");
    let body = response.split("\r\n\r\n").nth(1).expect("body");
    parse_exposition(body).expect("exposition parses")
}

#[test]
fn issue15_07_the_daemon_given_two_hubs_syncs_through_the_second_when_the_first_is_dead() {
    let s = site(3);
    let live = HubProcess::start(&s, 0);
    let dead = dead_hub();
    let metrics_port = {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let config = s.path("daemon.toml");
    fs::write(
        &config,
        format!(
            "data = \"r\"\n[metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n\
             [hub]\nurl = [\"{dead}\", \"{}\"]\ninterval_secs = 1\ntimeout_secs = 5\n",
            live.url
        ),
    )
    .expect("config");
    let mut daemon = crate::util::Daemon::start(&s, &config, &[]);
    daemon.wait_log("failing over", Duration::from_secs(20));
    let deadline = Instant::now() + Duration::from_secs(20);
    while unsynced(&s, "r") > 0 {
        assert!(
            Instant::now() < deadline,
            "not synced: {}",
            daemon.drain_log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = || -> serde_json::Value {
        serde_json::from_slice(&fs::read(s.path("r/daemon-status.json")).expect("status"))
            .expect("json")
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while status()["sync"]["ok"] != true {
        assert!(Instant::now() < deadline, "{}", status());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(status()["sync"]["hub"], live.url.as_str(), "the hub in use");
    let failovers = scrape(metrics_port)
        .into_iter()
        .find(|(series, _)| series == "sonotap_sync_failovers_total")
        .map(|(_, v)| v);
    assert_eq!(failovers, Some(1.0), "once, then it stays on the live hub");
    daemon.stop();
}
