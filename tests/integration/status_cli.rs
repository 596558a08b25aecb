//! `sonotap status` and the decline log through the real binary, against
//! real reader directories and hand-written daemon status files.

use std::fs;
use std::process::Output;

use crate::util::{Scratch, last_json};

const NOW: u64 = 1_900_000_000;

fn status(s: &Scratch, extra: &[&str]) -> Output {
    status_at(s, NOW, extra)
}

fn status_at(s: &Scratch, at: u64, extra: &[&str]) -> Output {
    let at = at.to_string();
    let mut args = vec!["status", "--data", "r", "--at", at.as_str()];
    args.extend_from_slice(extra);
    s.run(&args)
}

/// `status` at `at` exits with `code`: what it printed (stdout, stderr).
fn status_text_at(s: &Scratch, at: u64, code: i32) -> String {
    let out = status_at(s, at, &[]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(code), "{t}");
    t
}

/// [`status_text_at`] at `NOW`.
fn status_text(s: &Scratch, code: i32) -> String {
    status_text_at(s, NOW, code)
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn daemon_file(s: &Scratch, pid: u32, updated_at: u64, gate_ok: bool) {
    let json = format!(
        r#"{{"pid":{pid},"started_at":{},"updated_at":{updated_at},"config":"/etc/sonotap/config.toml","devices":[{{"name":"audio","ok":true,"detail":"ALSA default, 48000 Hz"}},{{"name":"gate","ok":{gate_ok},"detail":"/dev/ttyUSB0: No such file or directory (retrying)"}}],"sync":{{"hub":"https://hub:8443","ok":true,"detail":"last round ok"}}}}"#,
        updated_at - 100
    );
    fs::write(s.path("r/daemon-status.json"), json).expect("write");
}

fn provisioned() -> Scratch {
    let s = Scratch::new();
    s.provision(None);
    s
}

/// A reader provisioned from an hour before `NOW`, with one payment of 250
/// accepted a minute before `NOW` (not synced).
fn with_a_record() -> Scratch {
    let s = Scratch::new();
    s.provision(Some(NOW - 3600));
    let at = (NOW - 60).to_string();
    s.wallet_pay(250, "token", &["--at", &at]);
    s.ok(&["reader", "accept", "--data", "r", "--at", &at, "token"]);
    s
}

#[test]
fn status_of_a_fresh_reader_without_daemon_needs_attention() {
    let s = provisioned();
    let t = status_text(&s, 1);
    assert!(t.contains("reader gate-1"), "{t}");
    assert!(t.contains("0 unsynced"), "{t}");
    assert!(t.contains("daemon not running"), "{t}");
    assert!(t.contains("declines: none logged"), "{t}");
    let json = last_json(&status(&s, &["--json"]));
    assert_eq!(json["queue"]["unsynced"], 0);
    assert_eq!(json["daemon"]["state"], "not_running");
    assert_eq!(json["sync"]["last_sync_at"], serde_json::Value::Null);
}

/// A daemon status file (this process's pid), as `status` reads it.
struct DaemonFileCase {
    case: &'static str,
    /// Seconds between the file's last update and `NOW`.
    age: u64,
    gate_ok: bool,
    exit: i32,
    /// What the text says.
    says: &'static [&'static str],
    /// `daemon.state` in the JSON, where the case checks it.
    state: Option<&'static str>,
}

#[test]
fn status_reads_the_daemon_file_fresh_failing_or_stale() {
    let cases = [
        DaemonFileCase {
            case: "a fresh healthy daemon file exits 0",
            age: 2,
            gate_ok: true,
            exit: 0,
            says: &[
                "daemon:   running",
                "ALSA default, 48000 Hz",
                "status:   ok",
            ],
            state: None,
        },
        DaemonFileCase {
            case: "a failing device is reported with exit 1",
            age: 2,
            gate_ok: false,
            exit: 1,
            says: &["device gate not ok: /dev/ttyUSB0"],
            state: None,
        },
        DaemonFileCase {
            case: "a stale daemon file is treated as not running",
            age: 60,
            gate_ok: true,
            exit: 1,
            says: &["daemon not running (last seen"],
            state: Some("stale"),
        },
    ];
    for c in cases {
        let s = provisioned();
        daemon_file(&s, std::process::id(), NOW - c.age, c.gate_ok);
        let out = status(&s, &[]);
        let t = text(&out);
        assert_eq!(out.status.code(), Some(c.exit), "{}: {t}", c.case);
        for needle in c.says {
            assert!(t.contains(needle), "{}: {t}", c.case);
        }
        if let Some(state) = c.state {
            let json = last_json(&status(&s, &["--json"]));
            assert_eq!(json["daemon"]["state"], state, "{}", c.case);
        }
    }
}

#[test]
fn status_reports_a_corrupt_daemon_file_clearly() {
    let s = provisioned();
    fs::write(s.path("r/daemon-status.json"), "{\"pid\": 1, \"upd").expect("write");
    let t = status_text(&s, 1);
    assert!(t.contains("is not a daemon status file"), "{t}");
    assert!(!t.contains("panicked"), "{t}");
}

#[test]
fn status_lists_declines_made_by_reader_accept_newest_first() {
    let s = provisioned();
    s.wallet_pay(250, "token", &[]);
    s.ok(&["reader", "accept", "--data", "r", "token"]);
    let replay = s.run(&["reader", "accept", "--data", "r", "token"]);
    assert_eq!(replay.status.code(), Some(1));
    fs::write(s.path("junk"), b"not a token").expect("write");
    let junk = s.run(&["reader", "accept", "--data", "r", "junk"]);
    assert_eq!(junk.status.code(), Some(1));
    let wallet = last_json(&replay)["wallet"]
        .as_str()
        .expect("wallet")
        .to_string();

    let json = last_json(&status(&s, &["--json"]));
    let declines = json["declines"].as_array().expect("declines");
    assert_eq!(declines.len(), 2, "{json}");
    assert_eq!(declines[0]["reason"], "malformed");
    assert_eq!(declines[0]["wallet"], serde_json::Value::Null);
    assert_eq!(declines[1]["reason"], "replayed");
    assert_eq!(declines[1]["wallet"], wallet.as_str());
    assert_eq!(declines[1]["amount"], 250);
    assert_eq!(json["queue"]["unsynced"], 1);
    let t = text(&status(&s, &[]));
    assert!(t.contains("replayed"), "{t}");
    assert!(t.contains(&wallet), "{t}");
}

#[test]
fn a_decline_log_that_cannot_be_written_changes_no_decision() {
    let s = provisioned();
    {
        let conn = rusqlite::Connection::open(s.path("r/reader.db")).expect("open");
        conn.execute_batch(
            "CREATE TRIGGER no_declines BEFORE INSERT ON declines
             BEGIN SELECT RAISE(ABORT, 'decline log broken'); END;",
        )
        .expect("trigger");
    }
    s.wallet_pay(250, "token", &[]);
    s.ok(&["reader", "accept", "--data", "r", "token"]);
    let replay = s.run(&["reader", "accept", "--data", "r", "token"]);
    assert_eq!(replay.status.code(), Some(1), "{}", text(&replay));
    let line = last_json(&replay);
    assert_eq!(line["decision"], "decline");
    assert_eq!(line["reason"], "replayed");
    let json = last_json(&status(&s, &["--json"]));
    assert_eq!(json["declines"].as_array().map(Vec::len), Some(0));
}

#[test]
fn status_without_a_reader_directory_or_with_a_corrupt_database_exits_2() {
    let s = Scratch::new();
    let t = status_text(&s, 2);
    assert!(t.contains("not a directory"), "{t}");

    let s = provisioned();
    let mut bytes = fs::read(s.path("r/reader.db")).expect("read");
    bytes[..16].copy_from_slice(b"garbage garbage!");
    fs::write(s.path("r/reader.db"), bytes).expect("write");
    let _ = fs::remove_file(s.path("r/reader.db-wal"));
    let _ = fs::remove_file(s.path("r/reader.db-shm"));
    let t = status_text(&s, 2);
    assert!(t.contains("corrupt"), "{t}");
}

#[test]
fn status_reads_while_another_process_holds_the_write_lock() {
    let s = with_a_record();
    let conn = rusqlite::Connection::open(s.path("r/reader.db")).expect("open");
    conn.execute_batch("BEGIN IMMEDIATE; INSERT INTO meta (key, value) VALUES ('x', 'y');")
        .expect("hold the write lock");
    daemon_file(&s, std::process::id(), NOW - 1, true);
    let started = std::time::Instant::now();
    let out = status(&s, &["--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        started.elapsed() < std::time::Duration::from_secs(2),
        "no lock wait"
    );
    let json = last_json(&out);
    assert_eq!(json["queue"]["unsynced"], 1);
    assert_eq!(json["queue"]["oldest_unsynced_age_secs"], 60);
    conn.execute_batch("ROLLBACK").expect("rollback");
}

#[test]
fn status_flags_unsynced_records_older_than_a_day() {
    let s = with_a_record();
    let later = NOW + 25 * 3600;
    daemon_file(&s, std::process::id(), later - 1, true);
    let t = status_text_at(&s, later, 1);
    assert!(
        t.contains("1 records not synced, the oldest 25 h old"),
        "{t}"
    );
}
