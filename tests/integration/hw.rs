//! Hardware over pseudo-terminal pairs: the test is the relay board, the
//! turnstile controller and the vending machine (behind its MDB adapter) on
//! the master side; sonotap's drivers open the slave side by path. Every
//! read on the test's side has a deadline, so no test can hang.

use std::ffi::OsStr;
use std::fs;
use std::path::Path;
use std::process::{Child, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use sonotap_protocol::record::RecordKind;
use sonotap_reader::actuator::ActuationOutcome;
use sonotap_reader::actuator::gate::{Delivery, Passage, Release};
use sonotap_reader::actuator::{Gate, Profile, VendOutcome, Vending};
use sonotap_reader::reader::Reader;
use sonotap_reader::store::ReaderDb;
use sonotap_reader::vend::ReaderCharger;

use crate::util::{PtyDevice, Scratch, records, sonotap, unix_now};

const OFF: [u8; 4] = [0xA0, 0x01, 0x00, 0xA1];
const ON: [u8; 4] = [0xA0, 0x01, 0x01, 0xA2];

/// The test's end of each serial line.
type Device = PtyDevice;

fn profile(name: &str) -> Profile {
    Profile::load(name, &[]).expect("built-in profile")
}

/// The gate of built-in profile `name` on `port`, connected.
fn connected_gate(name: &str, port: &Path) -> Gate {
    let mut gate = Gate::new(&profile(name), Some(port)).expect("gate");
    gate.connect().expect("port opens");
    gate
}

/// A profile file in `s` from a built-in one with some lines replaced.
fn profile_file(s: &Scratch, builtin: &str, edits: &[(&str, &str)]) -> Profile {
    let mut text = fs::read_to_string(format!("hw/profiles/{builtin}.toml")).expect("profile");
    for (from, to) in edits {
        assert!(text.contains(from), "{from}");
        text = text.replace(from, to);
    }
    let path = s.path(&format!("{builtin}-test.toml"));
    fs::write(&path, text).expect("write");
    Profile::from_file(&path).expect("valid profile")
}

#[test]
fn relay_board_is_released_on_connect_then_gets_on_and_off_after_the_pulse() {
    let mut board = Device::new();
    let path = board.port.clone();
    let gate = thread::spawn(move || connected_gate("ch340-relay", &path).open_for(11));
    let (reset, _) = board.read_exact(4, Duration::from_secs(5));
    assert_eq!(reset, OFF, "released when the port opens");
    let (on, on_at) = board.read_exact(4, Duration::from_secs(5));
    assert_eq!(on, ON);
    let (off, off_at) = board.read_exact(4, Duration::from_secs(5));
    assert_eq!(off, OFF);
    let held = off_at - on_at;
    assert!(
        // Never early; late only by scheduling on a loaded machine.
        held >= Duration::from_millis(280) && held <= Duration::from_millis(700),
        "pulse of 300 ms held for {held:?}"
    );
    let outcome = gate.join().expect("driver thread");
    assert_eq!(outcome.seq, 11);
    assert_eq!(outcome.delivery, Delivery::Delivered);
    assert_eq!(outcome.release, Release::Released);
    let measured = outcome.held.expect("held");
    assert!(
        measured >= Duration::from_millis(300) && measured < Duration::from_millis(700),
        "{measured:?}"
    );
    board.silent(Duration::from_millis(100));
}

/// A reader whose credential and reader are for vending, and a token for `amount`.
fn vending_site(amount: u32) -> Scratch {
    let s = Scratch::new();
    s.ok(&["hub", "init", "--data", "hub"]);
    s.ok(&["wallet", "new", "--dir", "w"]);
    let terms = [
        "--limit",
        "1000",
        "--per-payment",
        "500",
        "--valid-hours",
        "24",
        "--scope",
        "vending",
    ];
    s.hub_issue("hub", "w", &terms, "cred");
    s.ok(&["wallet", "add-credential", "--dir", "w", "cred"]);
    s.reader_init("r", "vend-1", &["--scope", "vending"]);
    s.wallet_pay(amount, "token", &[]);
    s
}

/// Runs one vend session at reader `r` for the token, offering `funds`,
/// with `machine` playing the vending machine on a new pty.
fn vend_with(
    s: &Scratch,
    funds: u32,
    machine: impl FnOnce(&mut Device) + Send + 'static,
) -> sonotap_reader::actuator::VendReport {
    let mut device = Device::new();
    let port = device.port.clone();
    let profile = profile_file(
        s,
        "mdb-qibixx",
        &[
            (
                "vend_result_timeout_ms = 30000",
                "vend_result_timeout_ms = 1500",
            ),
            ("end_timeout_ms = 2000", "end_timeout_ms = 500"),
        ],
    );
    let vmc = thread::spawn(move || {
        machine(&mut device);
        device
    });
    let token = fs::read(s.path("token")).expect("token");
    let mut reader = Reader::open(&s.path("r")).expect("reader");
    let mut vending = Vending::new(&profile, Some(&port)).expect("vending");
    vending.connect().expect("port opens");
    let clock = unix_now;
    let device = vending.device().to_string();
    let mut charger = ReaderCharger::new(&mut reader, &token, &device, &clock);
    let report = vending.session(funds, &mut charger);
    drop(vending);
    vmc.join().expect("vending machine thread");
    report
}

/// Reader `r`'s records, oldest first: kind and amount.
fn kinds_and_amounts(s: &Scratch) -> Vec<(RecordKind, u32)> {
    records(s, "r").iter().map(|r| (r.kind, r.amount)).collect()
}

fn verify(s: &Scratch) -> String {
    s.ok(&["reader", "verify", "--data", "r"])
}

/// The machine's side up to a vend request for `price_text`, item 12.
fn enable_and_request(vmc: &mut Device, funds_text: &str, price_text: &str) {
    vmc.mdb_enable();
    vmc.mdb_request(funds_text, price_text, 12);
}

#[test]
fn approved_vend_is_charged_at_the_actual_price_before_approval() {
    let s = vending_site(300);
    let db_path = s.path("r/reader.db");
    let report = vend_with(&s, 300, move |vmc| {
        enable_and_request(vmc, "3.00", "2.50");
        vmc.expect("C,VEND,2.50");
        // The approval came: the charge must already be on disk.
        let on_disk = ReaderDb::open(&db_path)
            .expect("db")
            .records(false)
            .expect("records");
        assert_eq!(on_disk.len(), 1, "charge committed before C,VEND");
        assert_eq!(on_disk[0].amount, 250);
        vmc.say("c,VEND,SUCCESS");
        vmc.mdb_end();
    });
    assert_eq!(
        report.outcome,
        VendOutcome::Vended {
            seq: 1,
            price: 250,
            item: 12
        }
    );
    assert_eq!(report.settle_error, None);
    assert_eq!(kinds_and_amounts(&s), [(RecordKind::Charge, 250)]);
    let db = ReaderDb::open(&s.path("r/reader.db")).expect("db");
    let rows = db.actuations(1).expect("actuations");
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].outcome, ActuationOutcome::VendSuccess);
    assert!(verify(&s).contains("chain intact: 1 records"));
}

#[test]
fn vend_priced_above_the_funds_is_denied_and_nothing_is_charged() {
    let s = vending_site(100);
    let report = vend_with(&s, 100, |vmc| {
        enable_and_request(vmc, "1.00", "1.50");
        vmc.mdb_end();
    });
    assert!(
        matches!(&report.outcome, VendOutcome::Denied { price: 150, reason, .. } if reason.to_string().contains("above the funds")),
        "{report:?}"
    );
    assert!(records(&s, "r").is_empty());
}

#[test]
fn failed_dispense_voids_the_charge_and_the_chain_still_verifies() {
    let s = vending_site(300);
    let report = vend_with(&s, 300, |vmc| {
        enable_and_request(vmc, "3.00", "2.00");
        vmc.expect("C,VEND,2.00");
        vmc.say("c,VEND,FAIL");
        vmc.mdb_end();
    });
    assert!(
        matches!(
            &report.outcome,
            VendOutcome::Voided {
                seq: 1,
                price: 200,
                ..
            }
        ),
        "{report:?}"
    );
    assert_eq!(report.settle_error, None);
    assert_eq!(
        kinds_and_amounts(&s),
        [(RecordKind::Charge, 200), (RecordKind::Void, 200)]
    );
    let records = records(&s, "r");
    assert_eq!(records[1].token, records[0].token);
    let db = ReaderDb::open(&s.path("r/reader.db")).expect("db");
    assert_eq!(
        db.actuations(1).expect("rows")[0].outcome,
        ActuationOutcome::VendFailed
    );
    assert_eq!(db.summary().expect("summary").unsynced_amount, 0);
    assert!(verify(&s).contains("chain intact: 2 records"));
    let queue = s.ok(&["reader", "queue", "--data", "r"]);
    assert!(queue.contains("void"), "{queue}");
}

#[test]
fn vend_result_that_never_comes_is_voided() {
    let s = vending_site(300);
    let started = Instant::now();
    let report = vend_with(&s, 300, |vmc| {
        enable_and_request(vmc, "3.00", "1.00");
        vmc.expect("C,VEND,1.00");
        // The machine says nothing: sonotap ends the session after 1.5 s.
        let stop = vmc.line(Duration::from_secs(5));
        assert_eq!(stop, "C,STOP");
    });
    assert!(
        matches!(&report.outcome, VendOutcome::Voided { reason, .. } if reason.contains("no vend result within 1500 ms")),
        "{report:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    let kinds: Vec<_> = records(&s, "r").iter().map(|r| r.kind).collect();
    assert_eq!(kinds, [RecordKind::Charge, RecordKind::Void]);
}

#[test]
fn garbage_from_the_vending_machine_is_ignored_and_the_session_completes() {
    let s = vending_site(300);
    let report = vend_with(&s, 300, |vmc| {
        vmc.expect("C,1");
        vmc.send(b"\x00\xff\xfe\x13\x37 line noise\r\n");
        vmc.send(&[b'#'; 2000]);
        vmc.send(b"\nc,STATUS,WHATEVER\r\nc,VEND,SUCCESS\r\nhello\r\n");
        vmc.say("c,STATUS,ENABLED");
        vmc.expect("C,START,3.00");
        vmc.send(b"c,STATUS,VEND,x.yz,1\r\n\xc3\x28\r\n");
        vmc.say("c,STATUS,VEND,2.50,7");
        vmc.expect("C,VEND,2.50");
        vmc.send(&[0xAA; 300]);
        vmc.say("");
        vmc.say("c,VEND,SUCCESS");
        vmc.mdb_end();
    });
    assert!(
        matches!(
            report.outcome,
            VendOutcome::Vended {
                price: 250,
                item: 7,
                ..
            }
        ),
        "{report:?}"
    );
    assert!(report.notes.len() >= 5, "{:?}", report.notes);
    assert_eq!(records(&s, "r").len(), 1);
}

#[test]
fn vending_adapter_unplugged_mid_vend_voids_and_replugged_works_again() {
    let s = vending_site(300);
    let dir = tempfile::tempdir().expect("tempdir");
    let link = dir.path().join("mdb");
    let mut adapter = Device::plug(&link);
    let profile = profile_file(&s, "mdb-qibixx", &[]);
    let token = fs::read(s.path("token")).expect("token");
    let mut reader = Reader::open(&s.path("r")).expect("reader");
    let mut vending = Vending::new(&profile, Some(&link)).expect("vending");
    vending.connect().expect("port opens");
    let link2 = link.clone();
    let vmc = thread::spawn(move || {
        enable_and_request(&mut adapter, "3.00", "2.00");
        adapter.expect("C,VEND,2.00");
        // Unplugged while dispensing.
        let _ = fs::remove_file(&link2);
        drop(adapter);
        thread::sleep(Duration::from_millis(300));
        // Plugged back in, as a fresh device.
        let mut adapter = Device::plug(&link2);
        adapter.mdb_enable();
        adapter.expect("C,START,1.00");
        adapter.say("c,STATUS,VEND,1.00,3");
        adapter.expect("C,VEND,1.00");
        adapter.say("c,VEND,SUCCESS");
        adapter.mdb_end();
    });
    let device = vending.device().to_string();
    let clock = unix_now;
    let first = {
        let mut charger = ReaderCharger::new(&mut reader, &token, &device, &clock);
        vending.session(300, &mut charger)
    };
    assert!(
        matches!(&first.outcome, VendOutcome::Voided { seq: 1, reason, .. } if reason.contains("port")),
        "{first:?}"
    );
    // A second token for the second session, after the port came back.
    s.wallet_pay(100, "token2", &[]);
    let token2 = fs::read(s.path("token2")).expect("token");
    assert!(
        vending.wait_ready(Duration::from_secs(5)),
        "reconnected and enabled"
    );
    let second = {
        let mut charger = ReaderCharger::new(&mut reader, &token2, &device, &clock);
        vending.session(100, &mut charger)
    };
    vmc.join().expect("vending machine thread");
    assert!(
        matches!(
            second.outcome,
            VendOutcome::Vended {
                seq: 3,
                price: 100,
                ..
            }
        ),
        "{second:?}"
    );
    let kinds: Vec<_> = records(&s, "r").iter().map(|r| r.kind).collect();
    assert_eq!(
        kinds,
        [RecordKind::Charge, RecordKind::Void, RecordKind::Charge]
    );
    drop(reader);
    assert!(verify(&s).contains("chain intact: 3 records"));
}

#[test]
fn relay_unplugged_and_replugged_is_reopened_and_an_opening_without_it_is_flagged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let link = dir.path().join("gate");
    let mut board = Device::plug(&link);
    let mut gate = connected_gate("ch340-relay", &link);
    assert_eq!(board.read_exact(4, Duration::from_secs(5)).0, OFF);
    // Unplugged: the driver finds out on its next read or write. (The
    // kernel hangs a pty up asynchronously, as a USB unplug takes a moment
    // to reach the tty: a write in between is accepted and lost, which is
    // why a board without feedback can only promise "written".)
    let _ = fs::remove_file(&link);
    drop(board);
    thread::sleep(Duration::from_millis(100));
    // Replugged 200 ms into the opening: it waits (deliver_within 1 s), reopens, delivers.
    let link2 = link.clone();
    let replug = thread::spawn(move || {
        thread::sleep(Duration::from_millis(200));
        let mut board = Device::plug(&link2);
        let (bytes, _) = board.read_exact(12, Duration::from_secs(5));
        assert_eq!(bytes[..4], OFF, "released when the port opens");
        assert_eq!(bytes[4..8], ON);
        assert_eq!(bytes[8..], OFF);
        board
    });
    let outcome = gate.open_for(1);
    assert_eq!(outcome.delivery, Delivery::Delivered, "{outcome:?}");
    assert!(gate.is_connected());
    let board = replug.join().expect("board thread");
    // Gone for good: the opening is undeliverable, and the record is flagged.
    let _ = fs::remove_file(&link);
    drop(board);
    thread::sleep(Duration::from_millis(100));
    let started = Instant::now();
    let outcome = gate.open_for(2);
    assert!(
        matches!(&outcome.delivery, Delivery::Undeliverable(why) if why.contains("1000 ms")),
        "{outcome:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(
        outcome.actuations()[0].0,
        ActuationOutcome::Undeliverable,
        "flagged"
    );
}

#[test]
fn turnstile_controller_acknowledges_and_its_passage_is_stored_with_the_record() {
    let s = Scratch::new();
    s.provision(None);
    s.wallet_pay(250, "t", &[]);
    let accepted = s.run(&["reader", "accept", "--data", "r", "t"]);
    assert_eq!(accepted.status.code(), Some(0));
    let mut controller = Device::new();
    let path = controller.port.clone();
    let gate = thread::spawn(move || {
        let mut gate = connected_gate("turnstile-line", &path);
        let outcome = gate.open_for(1);
        (outcome, gate.device().to_string(), gate.take_notes())
    });
    controller.expect("CLOSE");
    controller.expect("OPEN 5000");
    // Garbage and chatter around the feedback are ignored.
    controller.send(b"\x07\xff\r\nBOOT v1.2\r\n");
    controller.say("OK");
    thread::sleep(Duration::from_millis(100));
    controller.say("PASSED 1");
    let (outcome, device, notes) = gate.join().expect("driver thread");
    assert_eq!(outcome.ack.as_deref(), Some("OK"));
    assert_eq!(outcome.release, Release::ByDevice);
    assert_eq!(outcome.passage, Passage::Seen("PASSED 1".into()));
    assert_eq!(notes.len(), 2, "{notes:?}");
    let reader = Reader::open(&s.path("r")).expect("reader");
    for (what, detail) in outcome.actuations() {
        reader
            .record_actuation(1, unix_now(), &device, what, &detail)
            .expect("stored");
    }
    let rows = reader.actuations(1).expect("rows");
    let kinds: Vec<_> = rows.iter().map(|r| r.outcome).collect();
    assert_eq!(
        kinds,
        [ActuationOutcome::Delivered, ActuationOutcome::Passage]
    );
    assert_eq!(rows[1].detail, "PASSED 1");
    assert!(rows[1].device.starts_with("turnstile-line@"));
}

#[test]
fn turnstile_refusal_is_undeliverable() {
    let mut controller = Device::new();
    let path = controller.port.clone();
    let gate = thread::spawn(move || connected_gate("turnstile-line", &path).open_for(4));
    controller.expect("CLOSE");
    controller.expect("OPEN 5000");
    controller.say("ERR EMERGENCY");
    let outcome = gate.join().expect("driver thread");
    assert!(
        matches!(&outcome.delivery, Delivery::Undeliverable(w) if w.contains("ERR EMERGENCY")),
        "{outcome:?}"
    );
}

/// Starts `sonotap hw test --profile PROFILE --port DEVICE EXTRA…` with
/// its output piped.
fn hw_test(device: &Device, profile: &OsStr, extra: &[&str]) -> Child {
    sonotap()
        .args(["hw", "test", "--profile"])
        .arg(profile)
        .arg("--port")
        .arg(&device.port)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("sonotap runs")
}

/// Waits for `child` to exit with `code` (its stderr if not); the JSON line
/// it printed.
fn exit_json(child: Child, code: i32) -> serde_json::Value {
    let out = child.wait_with_output().expect("exits");
    assert_eq!(
        out.status.code(),
        Some(code),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON line")
}

#[test]
fn hw_test_pulses_the_relay_and_reports_json() {
    let mut board = Device::new();
    let child = hw_test(&board, "ch340-relay".as_ref(), &[]);
    let (bytes, _) = board.read_exact(12, Duration::from_secs(10));
    assert_eq!(bytes, [OFF, ON, OFF].concat());
    let json = exit_json(child, 0);
    assert_eq!(json["delivered"], true);
    assert_eq!(json["release"], "released");
    assert!(
        json["held_ms"]
            .as_u64()
            .is_some_and(|ms| (300..700).contains(&ms))
    );
}

#[test]
fn hw_test_interrupted_mid_pulse_releases_the_relay() {
    let mut board = Device::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let long = dir.path().join("long.toml");
    let text = fs::read_to_string("hw/profiles/ch340-relay.toml")
        .expect("profile")
        .replace("pulse_ms = 300", "pulse_ms = 20000");
    fs::write(&long, text).expect("write");
    let child = hw_test(&board, long.as_os_str(), &[]);
    let (bytes, _) = board.read_exact(8, Duration::from_secs(10));
    assert_eq!(bytes, [OFF, ON].concat());
    let sent = Instant::now();
    let pid = libc::pid_t::try_from(child.id()).expect("pid");
    // SAFETY: kill(2) with a child's pid and a signal number has no memory effects.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGINT) }, 0, "SIGINT sent");
    let (off, at) = board.read_exact(4, Duration::from_secs(5));
    assert_eq!(off, OFF, "released on SIGINT");
    assert!(at - sent < Duration::from_secs(1));
    assert_eq!(exit_json(child, 1)["interrupted"], true);
}

#[test]
fn hw_test_runs_one_vend_session_and_exits_1_on_a_deny() {
    for (price, code, outcome) in [("1.00", 0, "vended"), ("9.00", 1, "denied")] {
        let mut vmc = Device::new();
        let child = hw_test(&vmc, "mdb-qibixx".as_ref(), &["--funds", "200"]);
        enable_and_request(&mut vmc, "2.00", price);
        if code == 0 {
            vmc.expect(&format!("C,VEND,{price}"));
            vmc.say("c,VEND,SUCCESS");
        }
        vmc.mdb_end();
        assert_eq!(exit_json(child, code)["outcome"], outcome);
    }
}

#[test]
fn hw_profiles_lists_the_builtin_profiles_and_bad_ports_exit_2() {
    let s = Scratch::new();
    let listed = s.ok(&["hw", "profiles"]);
    for name in ["ch340-relay", "turnstile-line", "generic", "mdb-qibixx"] {
        assert!(listed.contains(name), "{listed}");
    }
    let out = s.run(&[
        "hw",
        "test",
        "--profile",
        "ch340-relay",
        "--port",
        "/nonexistent/tty",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/tty"));
    let out = s.run(&["hw", "test", "--profile", "no-such-board"]);
    assert_eq!(out.status.code(), Some(2));
    fs::write(
        s.path("bad.toml"),
        "kind = \"gate\"\nbaud = 9600\nwat = 1\n",
    )
    .expect("write");
    let out = s.run(&["hw", "test", "--profile", "./bad.toml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("wat"));
}

/// A full test run once saw an unplugged relay take a write: a `sonotap`
/// spawned by another test at that moment had inherited both ends of the
/// pseudo-terminal (opened without O_CLOEXEC) and kept it alive. A process
/// spawned while a device is plugged in holds neither end.
#[test]
fn relay_unplugged_while_another_test_spawns_a_process_is_really_gone() {
    let device = PtyDevice::new();
    let out = std::process::Command::new("sh")
        .args(["-c", "for f in /proc/$$/fd/*; do readlink \"$f\"; done"])
        .output()
        .expect("sh runs");
    let held = String::from_utf8_lossy(&out.stdout).into_owned();
    let slave = device.port.display().to_string();
    // Every master reads as /dev/ptmx, another test's too: the slave's
    // path is this device's own.
    assert!(
        !held.lines().any(|l| l == slave),
        "the child holds the device's slave end: {held}"
    );
}
