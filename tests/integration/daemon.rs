//! `sonotap run` end to end with real parts: a file-backed ALSA capture
//! device and raw frames through a FIFO feed the daemon; the test plays the
//! relay board on the other end of a pseudo-terminal; a real hub runs on
//! 127.0.0.1; sd_notify goes to a real unix datagram socket; metrics are
//! scraped over HTTP. Every wait has a deadline.

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant};

use sonotap_protocol::token::Scope;
use sonotap_reader::actuator::ActuationOutcome;
use sonotap_reader::daemon::metrics::parse_exposition;
use sonotap_reader::store::ReaderDb;
use sonotap_wallet::Wallet;

use crate::audio_capture::alsa_test_device;
use crate::util::{
    Daemon, HubProcess, PtyDevice, Scratch, issued_wallet, mkfifo, open_fifo, pay_token, qr_frame,
    qr_regression_frame, records, unix_now, unsynced, vend_config,
};

const OFF: [u8; 4] = [0xA0, 0x01, 0x00, 0xA1];
const ON: [u8; 4] = [0xA0, 0x01, 0x01, 0xA2];

/// The relay board: the test's end of a pty pair; sonotap opens the slave.
pub(crate) type Relay = PtyDevice;

/// What the test reads from a relay board: its 4-byte commands.
pub(crate) trait RelayBoard {
    /// The 4-byte commands received so far (kept, not consumed).
    fn commands(&self) -> Vec<[u8; 4]>;
    fn opens(&self) -> usize;
    /// Waits until `n` open commands have arrived; the time the last came.
    fn wait_opens(&mut self, n: usize, within: Duration) -> Instant;
}

impl RelayBoard for PtyDevice {
    fn commands(&self) -> Vec<[u8; 4]> {
        self.pending
            .chunks_exact(4)
            .map(|c| [c[0], c[1], c[2], c[3]])
            .collect()
    }

    fn opens(&self) -> usize {
        self.commands().iter().filter(|c| **c == ON).count()
    }

    fn wait_opens(&mut self, n: usize, within: Duration) -> Instant {
        let deadline = Instant::now() + within;
        while self.opens() < n {
            assert!(
                Instant::now() < deadline,
                "wanted {n} open commands within {within:?}, got {:02X?}",
                self.commands()
            );
            self.pump(Duration::from_millis(5));
        }
        Instant::now()
    }
}

/// A site: hub `hub`, reader `r` (gate-1, registered at the hub), wallet `w`
/// with a large offline limit.
fn site() -> (Scratch, Wallet) {
    let s = Scratch::new();
    s.ok(&["hub", "init", "--data", "hub"]);
    s.reader_init("r", "gate-1", &[]);
    s.register_reader("r", "gate-1");
    let w = wallet(&s, "w");
    (s, w)
}

fn wallet(s: &Scratch, dir: &str) -> Wallet {
    wallet_for(s, dir, Scope::Transit)
}

fn wallet_for(s: &Scratch, dir: &str, scope: Scope) -> Wallet {
    issued_wallet(s.dir.path(), dir, scope, 1_000_000, unix_now())
}

/// The fare, paid now.
fn pay(w: &mut Wallet) -> Vec<u8> {
    pay_token(w, 100, unix_now())
}

/// Writes a config file: `extra` is appended to the common part. Camera
/// configs in these tests give the QR decoder 1 s per frame: each token
/// frame is written once (a phone stays in view for many), and the test
/// machine may be busy.
pub(crate) fn config(s: &Scratch, relay: &Relay, extra: &str) -> PathBuf {
    let text = format!(
        "data = \"r\"\nlog_level = \"sonotap=debug,info\"\n[actuator]\nprofile = \"ch340-relay\"\nport = \"{}\"\n[payment]\nfare = 100\n[metrics]\nlisten = \"\"\n{extra}",
        relay.port.display()
    );
    let path = s.path("daemon.toml");
    fs::write(&path, text).expect("config");
    path
}

/// [`config`] with tokens arriving as QR frames through the FIFO `cam.y8`
/// (made here; the decoder has 1 s a frame), `extra` continuing the
/// `[camera]` table.
fn camera_config(s: &Scratch, relay: &Relay, extra: &str) -> PathBuf {
    mkfifo(&s.path("cam.y8"));
    config(
        s,
        relay,
        &format!("[camera]\nsource = \"pipe\"\npath = \"cam.y8\"\nbudget_ms = 1000\n{extra}"),
    )
}

/// Makes the daemon's config `cfg` use the gate profile `text` (written
/// as `gate.toml`) instead of the stock relay board's.
fn use_profile(s: &Scratch, cfg: &std::path::Path, text: &str) {
    fs::write(s.path("gate.toml"), text).expect("profile");
    let config = fs::read_to_string(cfg)
        .expect("cfg")
        .replace("\"ch340-relay\"", "\"gate.toml\"");
    fs::write(cfg, config).expect("cfg");
}

/// Makes the daemon's config `cfg` serve its metrics on 127.0.0.1:`port`.
fn serve_metrics(cfg: &std::path::Path, port: u16) {
    let text = fs::read_to_string(cfg)
        .expect("cfg")
        .replace("listen = \"\"", &format!("listen = \"127.0.0.1:{port}\""));
    fs::write(cfg, text).expect("cfg");
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

pub(crate) fn wait_for(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        thread::sleep(Duration::from_millis(50));
    }
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
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("text/plain; version=0.0.4"), "{response}");
    let body = response.split("\r\n\r\n").nth(1).expect("body");
    parse_exposition(body).expect("exposition parses")
}

fn metric(samples: &[(String, f64)], series: &str) -> f64 {
    samples
        .iter()
        .find(|(s, _)| s == series)
        .unwrap_or_else(|| panic!("no {series}"))
        .1
}

fn status(s: &Scratch) -> serde_json::Value {
    serde_json::from_slice(&fs::read(s.path("r/daemon-status.json")).expect("status file"))
        .expect("json")
}

#[test]
fn sound_token_from_the_alsa_device_opens_the_gate_is_recorded_and_reaches_the_hub() {
    let (s, mut w) = site();
    let hub = HubProcess::start(&s, 0);
    let mut relay = Relay::new();
    let token = pay(&mut w);
    let sound =
        sonotap_modem::encode(&token, sonotap_modem::Profile::Fast, 48_000).expect("encode");
    let mut pcm: Vec<i16> = vec![0; 24_000];
    pcm.extend(sound.iter().map(|v| (v * 20_000.0) as i16));
    pcm.extend(std::iter::repeat_n(0, 96_000));
    alsa_test_device(&s, "capture.raw", &pcm);
    let cfg = config(
        &s,
        &relay,
        &format!(
            "[audio]\nsource = \"device\"\ndevice = \"sonotap_test\"\n[hub]\nurl = \"{}\"\ninterval_secs = 1\ntimeout_secs = 5\n",
            hub.url
        ),
    );
    let mut daemon = Daemon::start(&s, &cfg, &[]);
    relay.wait_opens(1, Duration::from_secs(30));
    relay.pump(Duration::from_millis(600));
    assert_eq!(relay.commands()[0], OFF, "released on connect");
    assert_eq!(relay.commands()[1..3], [ON, OFF], "one pulse");
    let recs = records(&s, "r");
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0].token, token);
    assert_eq!(recs[0].amount, 100);
    wait_for(
        "the hub acknowledges the record",
        Duration::from_secs(20),
        || unsynced(&s, "r") == 0,
    );
    let report: serde_json::Value =
        serde_json::from_str(&s.ok(&["hub", "report", "--data", "hub", "--json"])).expect("json");
    assert!(report.to_string().contains("gate-1"), "{report}");
    let acts = ReaderDb::open(&s.path("r/reader.db"))
        .expect("db")
        .actuations(recs[0].seq)
        .expect("acts");
    assert!(
        acts.iter()
            .any(|a| a.outcome == ActuationOutcome::Delivered),
        "{acts:?}"
    );
    daemon.wait_log("sync round ok", Duration::from_secs(10));
    daemon.stop();
    assert_eq!(relay.opens(), 1, "the gate opened once");
}

#[test]
fn qr_frame_from_a_fifo_opens_the_gate_shows_the_display_line_and_reaches_the_hub() {
    let (s, mut w) = site();
    let hub = HubProcess::start(&s, 0);
    let mut relay = Relay::new();
    let cfg = camera_config(
        &s,
        &relay,
        &format!(
            "width = 1280\nheight = 720\nformat = \"y8\"\n[hub]\nurl = \"{}\"\ninterval_secs = 1\n",
            hub.url
        ),
    );
    // The relay board's profile with a rider display on a second port.
    let mut display = Relay::new();
    let profile = format!(
        "{}\n[display]\nport = \"{}\"\naccept = \"PAID {{amount}}\"\ndecline = \"DECLINED {{reason}}\"\n",
        fs::read_to_string("hw/profiles/ch340-relay.toml").expect("profile"),
        display.port.display()
    );
    use_profile(&s, &cfg, &profile);
    let mut daemon = Daemon::start(&s, &cfg, &[]);
    let mut fifo = open_fifo(&s.path("cam.y8"));
    relay.pump(Duration::from_millis(300));
    let token = pay(&mut w);
    let frame = qr_frame(&token);
    // The code held in view for three frames: one tap.
    for _ in 0..3 {
        fifo.write_all(&frame).expect("frame");
    }
    let sent = Instant::now();
    let opened = relay.wait_opens(1, Duration::from_secs(10));
    eprintln!(
        "QR frame written -> open command read: {:?} (debug build)",
        opened - sent
    );
    relay.pump(Duration::from_millis(800));
    assert_eq!(
        relay.opens(),
        1,
        "held in view for three frames, opened once"
    );
    let recs = records(&s, "r");
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0].token, token);
    display.expect("PAID 100");
    // The same token again (after the 5 s the camera keeps a code in mind): replayed.
    thread::sleep(Duration::from_millis(5200));
    fifo.write_all(&frame).expect("frame");
    display.expect("DECLINED replayed");
    assert_eq!(relay.opens(), 1);
    wait_for(
        "the hub acknowledges the record",
        Duration::from_secs(20),
        || unsynced(&s, "r") == 0,
    );
    daemon.wait_log("tap timings", Duration::from_secs(5));
    drop(fifo);
    daemon.stop();
}

#[test]
fn sigterm_during_a_burst_loses_nothing_and_opens_nothing_twice() {
    let (s, mut w) = site();
    let mut relay = Relay::new();
    let cfg = camera_config(&s, &relay, "");
    let mut daemon = Daemon::start(&s, &cfg, &[]);
    let mut fifo = open_fifo(&s.path("cam.y8"));
    let tokens: Vec<Vec<u8>> = (0..12).map(|_| pay(&mut w)).collect();
    for token in &tokens {
        fifo.write_all(&qr_frame(token)).expect("frame");
    }
    // Each opening holds the relay 300 ms: most of the burst is still queued.
    relay.wait_opens(2, Duration::from_secs(20));
    daemon.stop();
    relay.pump(Duration::from_millis(300));
    let commands = relay.commands();
    assert_eq!(
        commands.last(),
        Some(&OFF),
        "the relay is released at the end: {commands:02X?}"
    );
    let opens = relay.opens();
    let recs = records(&s, "r");
    let db = ReaderDb::open(&s.path("r/reader.db")).expect("db");
    let mut delivered = 0;
    for r in &recs {
        let acts = db.actuations(r.seq).expect("actuations");
        let d = acts
            .iter()
            .any(|a| a.outcome == ActuationOutcome::Delivered);
        let u = acts
            .iter()
            .any(|a| a.outcome == ActuationOutcome::Undeliverable);
        assert!(d ^ u, "record {} has one delivery outcome: {acts:?}", r.seq);
        delivered += usize::from(d);
    }
    assert_eq!(
        opens, delivered,
        "every open command has a record and every delivered record an open command"
    );
    assert!(recs.len() >= 2, "{} records", recs.len());
    // Tokens are served in order; none twice.
    for (r, t) in recs.iter().zip(&tokens) {
        assert_eq!(&r.token, t);
    }
    let log = daemon.full_log();
    let not_served = log.matches("token not served").count();
    assert_eq!(
        recs.len() + not_served,
        tokens.len(),
        "every decoded token is either recorded or logged as not served:\n{log}"
    );
    let out = s.run(&["reader", "verify", "--data", "r"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn hub_down_for_the_whole_test_leaves_records_queued_and_the_gate_working() {
    let (s, mut w) = site();
    let mut relay = Relay::new();
    let closed = free_port();
    let metrics_port = free_port();
    let cfg = camera_config(
        &s,
        &relay,
        &format!(
            "[hub]\nurl = \"http://127.0.0.1:{closed}\"\ninterval_secs = 1\ntimeout_secs = 1\n"
        ),
    );
    serve_metrics(&cfg, metrics_port);
    let mut daemon = Daemon::start(&s, &cfg, &[]);
    let mut fifo = open_fifo(&s.path("cam.y8"));
    for _ in 0..2 {
        fifo.write_all(&qr_frame(&pay(&mut w))).expect("frame");
    }
    relay.wait_opens(2, Duration::from_secs(15));
    wait_for(
        "a failed sync round in the status file",
        Duration::from_secs(15),
        || status(&s)["sync"]["ok"] == false && status(&s)["sync"]["detail"] != "no round yet",
    );
    assert_eq!(unsynced(&s, "r"), 2, "both records stay queued");
    let m = scrape(metrics_port);
    assert!(metric(&m, "sonotap_sync_failures_total") >= 1.0);
    assert_eq!(metric(&m, "sonotap_queue_depth"), 2.0);
    assert_eq!(metric(&m, "sonotap_accepts_total{source=\"qr\"}"), 2.0);
    let st = status(&s);
    assert_eq!(st["devices"].as_array().map(Vec::len), Some(2), "{st}");
    daemon.stop();
    assert_eq!(unsynced(&s, "r"), 2);
}

/// Holds a frame fuzzing found (`fuzz/regressions/qr/<name>`) up to a
/// daemon's camera (`budget_ms` a frame) until the metric `series` counts
/// 3 and 3 frames went: the metrics then, and the daemon's whole log after
/// it stopped, with its scratch directory.
fn hold_up_fuzz_frame(
    name: &str,
    budget_ms: u64,
    series: &str,
) -> (Scratch, Vec<(String, f64)>, String) {
    let (s, _w) = site();
    let relay = Relay::new();
    let metrics_port = free_port();
    let (w, h, frame) = qr_regression_frame(name);
    mkfifo(&s.path("cam.y8"));
    let cfg = config(
        &s,
        &relay,
        &format!(
            "[camera]\nsource = \"pipe\"\npath = \"cam.y8\"\nbudget_ms = {budget_ms}\nwidth = {w}\nheight = {h}\n"
        ),
    );
    serve_metrics(&cfg, metrics_port);
    let mut daemon = Daemon::start(&s, &cfg, &[]);
    let mut fifo = open_fifo(&s.path("cam.y8"));
    let count = || metric(&scrape(metrics_port), series);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut frames = 0;
    // At most 20 frames (58 KB): a stalled daemon cannot fill the pipe's
    // 64 KiB and block the write past the deadline.
    while frames < 3 || count() < 3.0 {
        assert!(
            frames < 20 && Instant::now() < deadline,
            "{frames} frames, {series} {}:\n{}",
            count(),
            daemon.drain_log()
        );
        fifo.write_all(&frame).expect("frame");
        frames += 1;
        thread::sleep(Duration::from_millis(100));
    }
    let m = scrape(metrics_port);
    drop(fifo);
    daemon.stop();
    let log = daemon.full_log();
    (s, m, log)
}

/// The frame fuzzing found on which rqrr asserts (a degenerate perspective
/// maps a point past `i32`), held up to the camera again and again: the
/// decoder catches every panic, the log says so once (not a panic message
/// and backtrace note per frame), the metric counts them, the camera is not
/// called broken, and the daemon goes on and stops cleanly.
#[test]
fn issue21_a_frame_the_qr_library_panics_on_is_logged_once_counted_and_survived() {
    let (s, m, log) = hold_up_fuzz_frame(
        "rqrr-perspective-maps-past-i32",
        1000,
        "sonotap_qr_contained_panics_total",
    );
    assert_eq!(
        metric(&m, "sonotap_device_errors_total{device=\"camera\"}"),
        0.0
    );
    assert_eq!(metric(&m, "sonotap_taps_total{source=\"qr\"}"), 0.0);
    let said: Vec<&str> = log.lines().filter(|l| l.contains("panicked")).collect();
    assert_eq!(
        said.len(),
        1,
        "one line about it, however many frames:\n{log}"
    );
    assert!(
        said[0].contains("WARN")
            && said[0].contains("the QR library (rqrr) panicked")
            && said[0].contains("i32::MIN")
            && said[0].contains("caught"),
        "{log}"
    );
    assert!(!log.contains("RUST_BACKTRACE"), "{log}");
    assert!(records(&s, "r").is_empty());
}

/// The frame fuzzing found on which rqrr's alignment-pattern search spirals
/// for over a second, held up to a camera with 100 ms a frame: each
/// frame's attempt is abandoned inside rqrr (at 200 ms) and counted,
/// nothing is logged as a panic, the camera is not called broken, and the
/// daemon stops cleanly.
#[test]
fn issue21_a_frame_that_stalls_the_qr_library_is_cut_short_and_counted() {
    let (s, m, log) = hold_up_fuzz_frame(
        "rqrr-alignment-search-spirals",
        100,
        "sonotap_qr_attempts_out_of_time_total",
    );
    assert_eq!(
        metric(&m, "sonotap_device_errors_total{device=\"camera\"}"),
        0.0
    );
    assert_eq!(metric(&m, "sonotap_qr_contained_panics_total"), 0.0);
    assert!(!log.contains("panicked"), "{log}");
    assert!(records(&s, "r").is_empty());
}

/// Runs `sonotap run` on `config` (written as bad.toml), expects it refused
/// at start (exit 2), and returns what it said.
fn refused_at_start(config: &str) -> String {
    let s = Scratch::new();
    fs::write(s.path("bad.toml"), config).expect("write");
    let out = s.run(&["run", "--config", "bad.toml"]);
    assert_eq!(out.status.code(), Some(2));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn unknown_config_field_is_refused_by_name() {
    let err =
        refused_at_start("data = \"r\"\n[camera]\nsource = \"pipe\"\npath = \"-\"\nwidht = 640\n");
    assert!(err.contains("widht") && err.contains("bad.toml"), "{err}");
}

#[test]
fn a_pixel_format_the_daemon_cannot_use_is_refused_at_start_by_field() {
    // A folder source ignores the format; it used to pass unchecked.
    let err = refused_at_start(
        "data = \"r\"\n[camera]\nsource = \"folder\"\npath = \"frames\"\nformat = \"rgb\"\n",
    );
    assert!(
        err.contains("`camera.format`") && err.contains("expected y8 or yuyv"),
        "{err}"
    );
}

#[test]
fn example_config_runs_notifies_systemd_serves_metrics_and_sighup_applies_a_new_deny_entry() {
    let (s, mut w) = site();
    let mut relay = Relay::new();
    mkfifo(&s.path("cam.y8"));
    let metrics_port = free_port();
    // hw/config.example.toml with only the site-specific values replaced.
    let mut example: toml::Table = fs::read_to_string("hw/config.example.toml")
        .expect("example")
        .parse()
        .expect("toml");
    example.insert("data".into(), s.path("r").display().to_string().into());
    example.remove("audio");
    example.remove("hub");
    let set = |t: &mut toml::Table, table: &str, key: &str, v: toml::Value| {
        t.get_mut(table)
            .and_then(|x| x.as_table_mut())
            .expect(table)
            .insert(key.into(), v);
    };
    set(
        &mut example,
        "camera",
        "path",
        s.path("cam.y8").display().to_string().into(),
    );
    set(
        &mut example,
        "actuator",
        "port",
        relay.port.display().to_string().into(),
    );
    set(
        &mut example,
        "metrics",
        "listen",
        format!("127.0.0.1:{metrics_port}").into(),
    );
    set(&mut example, "payment", "fare", 100.into());
    // Each token frame is shown once: give the decoder time even on a loaded machine.
    set(&mut example, "camera", "budget_ms", 1000.into());
    let cfg = s.path("example.toml");
    fs::write(&cfg, toml::to_string(&example).expect("toml")).expect("write");
    let notify_path = s.path("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).expect("notify socket");
    notify
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let mut daemon = Daemon::start(
        &s,
        &cfg,
        &[
            ("NOTIFY_SOCKET", notify_path.to_str().expect("utf-8")),
            ("WATCHDOG_USEC", "400000"),
        ],
    );
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    while !(got.iter().any(|m| m == "READY=1") && got.iter().any(|m| m == "WATCHDOG=1")) {
        let n = notify
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("datagrams so far {got:?}: {e}\n{}", daemon.drain_log()));
        got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    assert_eq!(got[0], "READY=1", "{got:?}");
    let mut fifo = open_fifo(&s.path("cam.y8"));
    fifo.write_all(&qr_frame(&pay(&mut w))).expect("frame");
    relay.wait_opens(1, Duration::from_secs(10));
    let wallet_id = w.id().to_string();
    s.ok(&["reader", "deny", "--data", "r", "--wallet", &wallet_id]);
    daemon.signal(libc::SIGHUP);
    daemon.wait_log("configuration reloaded", Duration::from_secs(5));
    fifo.write_all(&qr_frame(&pay(&mut w))).expect("frame");
    wait_for(
        "the denied wallet is declined",
        Duration::from_secs(10),
        || {
            metric(
                &scrape(metrics_port),
                "sonotap_declines_total{reason=\"wallet_denied\"}",
            ) == 1.0
        },
    );
    relay.pump(Duration::from_millis(500));
    assert_eq!(relay.opens(), 1, "no opening for the denied wallet");
    let m = scrape(metrics_port);
    assert_eq!(metric(&m, "sonotap_taps_total{source=\"qr\"}"), 2.0);
    assert_eq!(metric(&m, "sonotap_accepts_total{source=\"qr\"}"), 1.0);
    assert_eq!(metric(&m, "sonotap_tap_to_actuate_seconds_count"), 1.0);
    assert_eq!(metric(&m, "sonotap_queue_depth"), 1.0);
    let st = status(&s);
    assert_eq!(st["pid"], daemon.pid());
    assert_eq!(
        st["config"],
        fs::canonicalize(&cfg).expect("cfg").display().to_string()
    );
    assert!(st["sync"].is_null(), "{st}");
    // An invalid config on SIGHUP is refused by field name; the running one stays.
    let good = fs::read_to_string(&cfg).expect("cfg");
    fs::write(&cfg, format!("frobnicate = 1\n{good}")).expect("cfg");
    daemon.signal(libc::SIGHUP);
    daemon.wait_log("keeping the running configuration", Duration::from_secs(5));
    assert!(daemon.drain_log().contains("frobnicate"));
    fifo.write_all(&qr_frame(&pay(&mut w))).expect("frame");
    wait_for(
        "still deciding after a bad reload",
        Duration::from_secs(10),
        || {
            metric(
                &scrape(metrics_port),
                "sonotap_declines_total{reason=\"wallet_denied\"}",
            ) == 2.0
        },
    );
    let names: Vec<&str> = st["devices"]
        .as_array()
        .expect("devices")
        .iter()
        .filter_map(|d| d["name"].as_str())
        .collect();
    assert_eq!(names, ["gate", "camera"]);
    daemon.stop();
    let rest: Vec<String> = std::iter::from_fn(|| {
        notify
            .set_read_timeout(Some(Duration::from_millis(200)))
            .ok()?;
        let n = notify.recv(&mut buf).ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).into_owned())
    })
    .collect();
    assert!(rest.iter().any(|m| m == "STOPPING=1"), "{rest:?}");
}

#[test]
fn vending_profile_charges_the_vend_requests_price_before_approval() {
    let s = Scratch::new();
    s.ok(&["hub", "init", "--data", "hub"]);
    s.reader_init("r", "vend-1", &["--scope", "vending"]);
    let mut w = wallet_for(&s, "w", Scope::Vending);
    let mut vmc = Relay::new();
    let cfg = vend_config(&s, &vmc, "mdb-qibixx", "");
    let mut daemon = Daemon::start(&s, &cfg, &[]);
    vmc.mdb_enable();
    let mut fifo = open_fifo(&s.path("cam.y8"));
    let token = pay_token(&mut w, 300, unix_now());
    fifo.write_all(&qr_frame(&token)).expect("frame");
    vmc.mdb_request("3.00", "2.50", 12);
    vmc.expect("C,VEND,2.50");
    let recs = records(&s, "r");
    assert_eq!(recs.len(), 1, "charge committed before C,VEND");
    assert_eq!((recs[0].amount, &recs[0].token), (250, &token));
    vmc.say("c,VEND,SUCCESS");
    vmc.mdb_end();
    wait_for(
        "the vend success is stored",
        Duration::from_secs(10),
        || {
            ReaderDb::open(&s.path("r/reader.db"))
                .expect("db")
                .actuations(recs[0].seq)
                .expect("actuations")
                .iter()
                .any(|a| a.outcome == ActuationOutcome::VendSuccess)
        },
    );
    daemon.stop();
}

/// Issue 21: a daemon killed while its gate is open (a 5 s pulse here)
/// left the record with no outcome at all (41 of 600 records in 60 kills);
/// at its next start the gate is released and the record's outcome stored
/// as `unknown`, so that an operator can tell it from a gate never opened.
#[test]
fn issue21_a_daemon_killed_with_the_gate_open_stores_the_outcome_unknown_at_start() {
    let (s, mut w) = site();
    let mut relay = Relay::new();
    let cfg = camera_config(&s, &relay, "width = 1280\nheight = 720\nformat = \"y8\"\n");
    let profile = fs::read_to_string("hw/profiles/ch340-relay.toml")
        .expect("profile")
        .replace("pulse_ms = 300", "pulse_ms = 5000");
    use_profile(&s, &cfg, &profile);
    let mut daemon = Daemon::start(&s, &cfg, &[]);
    let mut fifo = open_fifo(&s.path("cam.y8"));
    relay.pump(Duration::from_millis(300));
    let token = pay(&mut w);
    fifo.write_all(&qr_frame(&token)).expect("frame");
    relay.wait_opens(1, Duration::from_secs(10));
    // The gate is open (its pulse lasts 5 s): power is cut.
    daemon.kill();
    drop(fifo);
    let recs = records(&s, "r");
    assert_eq!(recs.len(), 1);
    let seq = recs[0].seq;
    let acts = || {
        ReaderDb::open(&s.path("r/reader.db"))
            .expect("db")
            .actuations(seq)
            .expect("actuations")
    };
    assert!(acts().is_empty(), "no outcome was stored: {:?}", acts());
    // The next start releases the gate and says what is known.
    let closes_before = relay.commands().iter().filter(|c| **c == OFF).count();
    let mut daemon = Daemon::start(&s, &cfg, &[]);
    daemon.wait_log("its outcome is stored as unknown", Duration::from_secs(20));
    relay.pump(Duration::from_millis(500));
    let closes = relay.commands().iter().filter(|c| **c == OFF).count();
    assert!(closes > closes_before, "released at start");
    let stored = acts();
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert_eq!(stored[0].outcome, ActuationOutcome::Unknown);
    assert!(stored[0].detail.contains("released at start"), "{stored:?}");
    // The operator sees it: `reader queue` names the outcome.
    let queue = s.ok(&["reader", "queue", "--data", "r", "--json"]);
    let last: serde_json::Value =
        serde_json::from_str(queue.lines().last().expect("a record")).expect("json");
    assert_eq!(
        last["actuations"],
        serde_json::json!(["unknown"]),
        "{queue}"
    );
    let table = s.ok(&["reader", "queue", "--data", "r"]);
    assert!(table.contains(" unknown "), "{table}");
    daemon.stop();
    // Once: a third start finds nothing left in flight.
    let mut daemon = Daemon::start(&s, &cfg, &[]);
    daemon.wait_log("ready", Duration::from_secs(20));
    daemon.stop();
    assert_eq!(acts().len(), 1);
}

/// The gate's outcome could not be stored (the database held by another
/// process past the busy timeout): before, it was logged and lost until a
/// restart settled the opening as unknown; now it is owed and retried.
#[test]
fn issue21_a_gate_outcome_the_store_refused_is_retried_until_written() {
    let (s, mut w) = site();
    let mut relay = Relay::new();
    let cfg = camera_config(&s, &relay, "width = 1280\nheight = 720\nformat = \"y8\"\n");
    let profile = fs::read_to_string("hw/profiles/ch340-relay.toml")
        .expect("profile")
        .replace("pulse_ms = 300", "pulse_ms = 1000");
    use_profile(&s, &cfg, &profile);
    let mut daemon = Daemon::start(&s, &cfg, &[]);
    daemon.wait_log("ready", Duration::from_secs(20));
    let mut fifo = open_fifo(&s.path("cam.y8"));
    relay.pump(Duration::from_millis(300));
    fifo.write_all(&qr_frame(&pay(&mut w))).expect("frame");
    relay.wait_opens(1, Duration::from_secs(10));
    // The record is committed; while the gate is open another process
    // takes the database's write lock for longer than the busy timeout.
    let mut other = rusqlite::Connection::open(s.path("r/reader.db")).expect("db");
    let held = other
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .expect("write lock");
    daemon.wait_log(
        "storing the gate's outcome, will retry",
        Duration::from_secs(20),
    );
    held.rollback().expect("release");
    daemon.wait_log("gate outcome stored", Duration::from_secs(20));
    let seq = records(&s, "r")[0].seq;
    let stored = ReaderDb::open(&s.path("r/reader.db"))
        .expect("db")
        .actuations(seq)
        .expect("actuations");
    assert_eq!(
        stored.first().map(|a| a.outcome),
        Some(ActuationOutcome::Delivered),
        "{stored:?}"
    );
    daemon.stop();
}

/// Two daemons on one reader would drive one gate, and the second's start
/// would settle the first's opening in flight as unknown: the second is
/// refused (exit 2) naming the first, which goes on opening the gate.
#[test]
fn issue21_a_second_daemon_on_the_same_reader_is_refused_and_the_first_goes_on() {
    let (s, mut w) = site();
    let mut relay = Relay::new();
    let cfg = camera_config(&s, &relay, "width = 1280\nheight = 720\nformat = \"y8\"\n");
    let mut first = Daemon::start(&s, &cfg, &[]);
    first.wait_log("ready", Duration::from_secs(20));
    let mut second = Daemon::start(&s, &cfg, &[]);
    assert_eq!(second.wait_exit(Duration::from_secs(20)), Some(2));
    let said = second.drain_log();
    assert!(said.contains("one daemon per reader"), "{said}");
    assert!(said.contains(&first.pid().to_string()), "{said}");
    let mut fifo = open_fifo(&s.path("cam.y8"));
    relay.pump(Duration::from_millis(300));
    fifo.write_all(&qr_frame(&pay(&mut w))).expect("frame");
    relay.wait_opens(1, Duration::from_secs(10));
    first.stop();
    assert_eq!(records(&s, "r").len(), 1);
}

/// Issue 21's count, by hand (`cargo test --test integration --
/// --ignored issue21_sixty`, about two minutes): 60 cycles, each a burst
/// of 10 tokens and a SIGKILL at a random point of it (the relay pulses
/// 300 ms, so many kills land with the gate open), then a last start.
/// Every record ends with an outcome; before the in-flight openings, 41
/// of 600 had none.
#[test]
#[ignore]
fn issue21_sixty_kills_leave_no_record_without_an_outcome() {
    let (s, mut w) = site();
    let mut relay = Relay::new();
    let cfg = camera_config(&s, &relay, "");
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for _ in 0..60 {
        let mut daemon = Daemon::start(&s, &cfg, &[]);
        let mut fifo = open_fifo(&s.path("cam.y8"));
        for _ in 0..10 {
            let _ = fifo.write_all(&qr_frame(&pay(&mut w)));
        }
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        relay.pump(Duration::from_millis(200 + seed % 2_500));
        daemon.kill();
    }
    let mut daemon = Daemon::start(&s, &cfg, &[]);
    daemon.wait_log("ready", Duration::from_secs(20));
    daemon.stop();
    let recs = records(&s, "r");
    let db = ReaderDb::open(&s.path("r/reader.db")).expect("db");
    let without: Vec<u64> = recs
        .iter()
        .filter(|r| db.actuations(r.seq).expect("actuations").is_empty())
        .map(|r| r.seq)
        .collect();
    let unknown = recs
        .iter()
        .filter(|r| {
            db.actuations(r.seq)
                .expect("actuations")
                .iter()
                .any(|a| a.outcome == ActuationOutcome::Unknown)
        })
        .count();
    eprintln!(
        "60 kills: {} records, {} without an outcome, {unknown} unknown",
        recs.len(),
        without.len()
    );
    assert!(
        without.is_empty(),
        "records without an outcome: {without:?}"
    );
}
