//! Issue 13, items 9, 11 and the file nits of 13, through the real binary:
//! a bounded clock-skew window everywhere, bounded reads that refuse FIFOs
//! and devices without hanging, directories whose mode is never changed,
//! private data directories and keys, and token files only the owner reads.

use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::util::{HUB_SERVE, Scratch, assert_fails, reader_init_args, sonotap, stderr};

/// Far above what any of these commands needs on a loaded machine; the bugs
/// were hangs (forever) and reads until memory ran out.
const BOUND: Duration = Duration::from_secs(60);

/// Runs `sonotap ARGS` in `s` and fails the test if it is still running
/// after [`BOUND`] (it is killed first, so the test never hangs).
fn run_bounded(s: &Scratch, args: &[&str]) -> Output {
    let mut command = sonotap();
    command.args(args).current_dir(s.dir.path());
    bounded(command)
}

fn bounded(mut command: Command) -> Output {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("sonotap runs");
    let deadline = Instant::now() + BOUND;
    loop {
        if child.try_wait().expect("wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "still running after {BOUND:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).expect("meta").permissions().mode() & 0o7777
}

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).expect("chmod");
}

fn mkfifo(path: &Path) {
    let status = Command::new("mkfifo").arg(path).status().expect("mkfifo");
    assert!(status.success());
}

fn is_root() -> bool {
    // SAFETY: geteuid(2) takes no arguments, touches no memory and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Exit 2 and a message containing every one of `needles`.
fn assert_refused(out: &Output, needles: &[&str]) {
    assert_fails(out, 2, needles);
}

// ---- item 9: the clock-skew window is bounded everywhere ----

#[test]
fn issue13_09_reader_init_refuses_a_clock_skew_window_of_4294967295() {
    let s = Scratch::new();
    s.ok(&["hub", "init", "--data", "hub"]);
    for skew in ["4294967295", "86401", "0", "99999999999"] {
        let out = s.try_reader_init("r", "gate-1", &["--clock-skew-secs", skew]);
        assert_refused(&out, &["--clock-skew-secs", "outside 1..=86400"]);
        assert!(!s.path("r").exists(), "nothing is created for {skew}");
    }
    s.reader_init("r", "gate-1", &["--clock-skew-secs", "86400"]);
    let toml = fs::read_to_string(s.path("r/reader.toml")).expect("reader.toml");
    assert!(toml.contains("clock_skew_secs = 86400"), "{toml}");
}

#[test]
fn issue13_09_a_hand_edited_reader_toml_with_a_huge_skew_is_refused() {
    let s = Scratch::new();
    s.provision(None);
    s.wallet_pay(100, "t", &[]);
    let path = s.path("r/reader.toml");
    let original = fs::read_to_string(&path).expect("reader.toml");
    for value in ["4294967295", "5000000000", "0"] {
        let edited = original.replace(
            "clock_skew_secs = 300",
            &format!("clock_skew_secs = {value}"),
        );
        assert_ne!(edited, original);
        fs::write(&path, edited).expect("edit");
        let out = s.run(&["reader", "accept", "--data", "r", "t"]);
        assert_refused(
            &out,
            &["reader.toml", "clock_skew_secs", "outside 1..=86400"],
        );
    }
    fs::write(&path, &original).expect("restore");
    let out = s.run(&["reader", "accept", "--data", "r", "t"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

#[test]
fn issue13_09_the_daemon_config_still_refuses_a_huge_skew() {
    let s = Scratch::new();
    s.provision(None);
    for value in ["4294967295", "86401", "0"] {
        fs::write(
            s.path("run.toml"),
            format!("data = \"r\"\nclock_skew_secs = {value}\n"),
        )
        .expect("config");
        let out = run_bounded(&s, &["run", "--config", "run.toml"]);
        assert_refused(&out, &["clock_skew_secs", "outside 1..=86400"]);
    }
}

// ---- item 11: bounded reads, regular files only ----

#[test]
fn issue13_11_reader_accept_of_dev_zero_is_refused_at_once() {
    let s = Scratch::new();
    s.provision(None);
    let started = Instant::now();
    let out = run_bounded(&s, &["reader", "accept", "--data", "r", "/dev/zero"]);
    assert_refused(
        &out,
        &[
            "token file /dev/zero",
            "a character device, not a regular file",
        ],
    );
    // The bug read until memory ran out; a refusal takes milliseconds.
    assert!(started.elapsed() < BOUND);
    let out = run_bounded(&s, &["token", "inspect", "/dev/zero"]);
    assert_refused(&out, &["not a regular file"]);
}

#[test]
fn issue13_11_reader_accept_of_a_fifo_nobody_writes_does_not_hang() {
    let s = Scratch::new();
    s.provision(None);
    mkfifo(&s.path("fifo"));
    let out = run_bounded(&s, &["reader", "accept", "--data", "r", "fifo"]);
    assert_refused(&out, &["token file fifo", "is a FIFO, not a regular file"]);
}

#[test]
fn issue13_11_hub_import_of_a_fifo_or_dev_zero_is_refused_without_hanging() {
    let s = Scratch::new();
    s.ok(&["hub", "init", "--data", "hub"]);
    mkfifo(&s.path("batches"));
    let out = run_bounded(&s, &["hub", "import", "--data", "hub", "batches"]);
    assert_refused(
        &out,
        &["batch file batches", "is a FIFO, not a regular file"],
    );
    let out = run_bounded(&s, &["hub", "import", "--data", "hub", "/dev/zero"]);
    assert_refused(&out, &["a character device, not a regular file"]);
    // A sparse file claiming more than any batch file: refused unread.
    let huge = fs::File::create(s.path("huge")).expect("create");
    huge.set_len((1 << 30) + 1).expect("sparse");
    let out = run_bounded(&s, &["hub", "import", "--data", "hub", "huge"]);
    assert_refused(&out, &["batch file huge", "more than 1073741824 bytes"]);
}

#[test]
fn issue13_11_a_key_file_symlinked_to_a_fifo_is_refused_without_hanging() {
    let s = Scratch::new();
    s.provision(None);
    s.wallet_pay(100, "t", &[]);
    mkfifo(&s.path("r/fifo"));
    chmod(&s.path("r/fifo"), 0o600);
    fs::remove_file(s.path("r/reader.key")).expect("rm");
    symlink("fifo", s.path("r/reader.key")).expect("symlink");
    let out = run_bounded(&s, &["reader", "accept", "--data", "r", "t"]);
    assert_refused(
        &out,
        &["key file", "reader.key is a FIFO, not a regular file"],
    );
    // A public key given on the command line, too.
    mkfifo(&s.path("issuer-fifo.pub"));
    let out = run_bounded(&s, &["reader", "trust", "--data", "r", "issuer-fifo.pub"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("FIFO"), "{}", stderr(&out));
}

// ---- item 13: directories, key owners, the TLS key, token files ----

#[test]
fn issue13_13_init_never_chmods_an_existing_directory_and_refuses_a_world_writable_one() {
    let s = Scratch::new();
    s.ok(&["hub", "init", "--data", "hub"]);
    for dir in ["r", "w", "hub2"] {
        fs::create_dir(s.path(dir)).expect("mkdir");
        chmod(&s.path(dir), 0o1777);
    }
    let inits: [&[&str]; 3] = [
        &reader_init_args("r", "gate-1", &[]),
        &["wallet", "new", "--dir", "w"],
        &["hub", "init", "--data", "hub2"],
    ];
    for (dir, args) in ["r", "w", "hub2"].into_iter().zip(inits) {
        let out = s.run(args);
        assert_refused(&out, &["1777", &format!("chmod 700 {dir}")]);
        assert_eq!(mode(&s.path(dir)), 0o1777, "{dir} keeps its mode");
        assert_eq!(
            fs::read_dir(s.path(dir)).expect("ls").count(),
            0,
            "nothing written into {dir}"
        );
    }
    // A directory others cannot write is used as it is, mode unchanged.
    fs::create_dir(s.path("r2")).expect("mkdir");
    chmod(&s.path("r2"), 0o750);
    s.reader_init("r2", "gate-2", &[]);
    assert_eq!(mode(&s.path("r2")), 0o750);
    // A directory init creates is private.
    s.reader_init("r3", "gate-3", &[]);
    assert_eq!(mode(&s.path("r3")), 0o700);
}

#[test]
fn issue13_13_a_world_writable_data_directory_is_refused_when_opened() {
    let s = Scratch::new();
    s.provision(None);
    s.wallet_pay(100, "t", &[]);
    for (dir, args) in [
        ("r", &["reader", "accept", "--data", "r", "t"][..]),
        ("w", &["wallet", "show", "--dir", "w"][..]),
        ("hub", &["hub", "report", "--data", "hub"][..]),
    ] {
        chmod(&s.path(dir), 0o777);
        let out = s.run(args);
        assert_refused(&out, &["0777", &format!("chmod 700 {dir}")]);
        assert_eq!(mode(&s.path(dir)), 0o777, "never changed");
        chmod(&s.path(dir), 0o700);
        assert!(s.run(args).status.code() != Some(2), "{dir} usable again");
    }
}

#[test]
fn issue13_13_a_key_owned_by_another_user_is_refused() {
    if !is_root() {
        eprintln!("skipped: needs root to give a key to another user");
        return;
    }
    let s = Scratch::new();
    s.provision(None);
    s.wallet_pay(100, "t", &[]);
    let key = s.path("r/reader.key");
    std::os::unix::fs::chown(&key, Some(65534), None).expect("chown");
    let out = s.run(&["reader", "accept", "--data", "r", "t"]);
    assert_refused(&out, &["reader.key is owned by uid 65534", "chown"]);
    std::os::unix::fs::chown(&key, Some(0), None).expect("chown back");
    let out = s.run(&["reader", "accept", "--data", "r", "t"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

#[test]
fn issue13_13_hub_serve_refuses_a_tls_key_others_can_read_as_it_refuses_issuer_key() {
    let s = Scratch::new();
    s.ok(&["hub", "init", "--data", "hub"]);
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("cert");
    fs::write(s.path("hub.crt"), cert.cert.pem()).expect("write");
    fs::write(s.path("hub.key"), cert.signing_key.serialize_pem()).expect("write");
    chmod(&s.path("hub.key"), 0o644);
    let out = run_bounded(
        &s,
        &[
            &HUB_SERVE[..],
            &["--tls-cert", "hub.crt", "--tls-key", "hub.key"],
        ]
        .concat(),
    );
    assert_refused(&out, &["hub.key has permissions 0644", "chmod 600"]);
    // The same rule for the issuer key.
    chmod(&s.path("hub/issuer.key"), 0o644);
    let out = s.run(&["hub", "report", "--data", "hub"]);
    assert_refused(&out, &["issuer.key has permissions 0644", "chmod 600"]);
    // A FIFO as the certificate does not hang the hub either.
    chmod(&s.path("hub/issuer.key"), 0o600);
    chmod(&s.path("hub.key"), 0o600);
    mkfifo(&s.path("fifo.crt"));
    let out = run_bounded(
        &s,
        &[
            &HUB_SERVE[..],
            &["--tls-cert", "fifo.crt", "--tls-key", "hub.key"],
        ]
        .concat(),
    );
    assert_refused(&out, &["fifo.crt is a FIFO"]);
}

#[test]
fn issue13_13_token_files_are_written_for_their_owner_only() {
    let s = Scratch::new();
    s.provision(None);
    // An older token file others could read is replaced, not reused.
    fs::write(s.path("t"), b"old").expect("write");
    chmod(&s.path("t"), 0o644);
    s.wallet_pay(100, "t", &["--qr", "t.png", "--wav", "t.wav"]);
    for file in ["t", "t.png", "t.wav"] {
        assert_eq!(mode(&s.path(file)), 0o600, "{file}");
    }
    let out = s.run(&["reader", "accept", "--data", "r", "t"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}
