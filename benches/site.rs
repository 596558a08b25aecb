//! The replay window between two gates of one site, measured with real
//! `sonotap run` processes on 127.0.0.1 and 127.0.0.2: every token is shown
//! to gate-1's camera (a 720p frame through a FIFO) and, the moment gate-1's
//! relay receives the open command, the same frame is shown to gate-2 (the
//! attack: record the rider ahead of you, play it at the next gate).
//!
//! - the window: from gate-1 sending its announcement (right after its
//!   record is committed) to gate-2 having stored it, from gate-2's own
//!   store (both processes read one clock);
//! - the attempts: how many replays gate-2 declined `replayed` (its
//!   metrics) and how many it charged (its records: must be none).
//!
//! Run: `cargo bench --bench site` (release build). `SITE_ATTEMPTS=N`
//! changes the number of attempts (default 1000).

use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::channel;
use std::thread;
use std::time::{Duration, Instant};

use serialport::{SerialPort, TTYPort};
use sonotap_protocol::token::Scope;
use sonotap_reader::store::ReaderDb;

#[path = "common/mod.rs"]
mod common;
#[path = "../tests/support/mod.rs"]
mod support;
use common::{bin, ok, relay_thread, summary};
use support::{issued_wallet, mkfifo, pay_token, qr_frame, reader_init_args, unix_now};

struct Gate {
    child: Child,
    camera: File,
}

fn public_hex(d: &Path, dir: &str) -> String {
    let line = fs::read_to_string(d.join(dir).join("reader.pub")).expect("reader.pub");
    line.split_whitespace().last().expect("key").to_string()
}

fn free_udp(ip: &str) -> std::net::SocketAddr {
    UdpSocket::bind((ip, 0))
        .and_then(|s| s.local_addr())
        .expect("free port")
}

fn scrape(port: u16) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("metrics");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .expect("request");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).map(str::trim))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

fn main() {
    let attempts: usize = std::env::var("SITE_ATTEMPTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let d = dir.path();
    ok(d, &["hub", "init", "--data", "hub"]);
    let ids = ["gate-1", "gate-2"];
    let dirs = ["r1", "r2"];
    for (id, r) in ids.iter().zip(dirs) {
        ok(d, &reader_init_args(r, id, &[]));
    }
    let addrs = [free_udp("127.0.0.1"), free_udp("127.0.0.2")];
    let metrics_port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let stop = Arc::new(AtomicBool::new(false));
    let mut gates = Vec::new();
    let mut opens = Vec::new();
    for i in 0..2 {
        let (master, slave) = TTYPort::pair().expect("pty");
        let port = PathBuf::from(slave.name().expect("name"));
        let (tx, rx) = channel();
        relay_thread(master, tx, Arc::clone(&stop));
        opens.push((rx, slave));
        let other = 1 - i;
        let cam = format!("cam{i}.y8");
        mkfifo(&d.join(&cam));
        let metrics = if i == 1 {
            format!("listen = \"127.0.0.1:{metrics_port}\"")
        } else {
            "listen = \"\"".to_string()
        };
        let config = format!(
            "data = \"{dir}\"\nlog_level = \"warn\"\n\
             [camera]\nsource = \"pipe\"\npath = \"{cam}\"\n\
             [actuator]\nprofile = \"ch340-relay\"\nport = \"{port}\"\n\
             [payment]\nfare = 100\n[metrics]\n{metrics}\n\
             [site]\nid = \"bench\"\nlisten = \"{listen}\"\n\
             [[site.peers]]\nid = \"{peer}\"\naddr = \"{peer_addr}\"\npublic_key = \"{key}\"\n",
            dir = dirs[i],
            port = port.display(),
            listen = addrs[i],
            peer = ids[other],
            peer_addr = addrs[other],
            key = public_hex(d, dirs[other]),
        );
        let name = format!("{}.toml", dirs[i]);
        fs::write(d.join(&name), config).expect("config");
        let mut child = bin()
            .args(["run", "--config", &name])
            .current_dir(d)
            .env_remove("NOTIFY_SOCKET")
            .stderr(Stdio::piped())
            .spawn()
            .expect("daemon");
        let stderr = child.stderr.take().expect("stderr");
        let tag = ids[i];
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("{tag}: {line}");
            }
        });
        let camera = fs::OpenOptions::new()
            .write(true)
            .open(d.join(&cam))
            .expect("camera fifo");
        gates.push(Gate { child, camera });
    }
    thread::sleep(Duration::from_secs(2));
    let mut wallet = issued_wallet(d, "w", Scope::Transit, u32::MAX, unix_now());

    let mut opened_ms = Vec::new();
    let started = Instant::now();
    for n in 0..attempts {
        let token = pay_token(&mut wallet, 100, unix_now());
        let frame = qr_frame(&token);
        let shown = Instant::now();
        gates[0].camera.write_all(&frame).expect("frame to gate-1");
        match opens[0].0.recv_timeout(Duration::from_secs(10)) {
            Ok(at) => opened_ms.push(at.saturating_duration_since(shown).as_secs_f64() * 1e3),
            Err(_) => {
                eprintln!("attempt {n}: gate-1 did not open; skipped");
                continue;
            }
        }
        // The replay, at once.
        gates[1].camera.write_all(&frame).expect("frame to gate-2");
    }
    // Let gate-2 finish the frames it holds.
    let deadline = Instant::now() + Duration::from_secs(30);
    let replayed = loop {
        let text = scrape(metrics_port);
        let declined = value(&text, "sonotap_declines_total{reason=\"replayed\"}");
        let taps = value(&text, "sonotap_taps_total{source=\"qr\"}");
        if taps as usize >= opened_ms.len() || Instant::now() > deadline {
            break declined;
        }
        thread::sleep(Duration::from_millis(100));
    };
    let elapsed = started.elapsed();
    let opened_at_gate_2 = opens[1].0.try_iter().count();
    stop.store(true, Ordering::Relaxed);
    for g in &mut gates {
        // SAFETY: kill(2) with a child's pid and SIGTERM has no memory effects.
        unsafe { libc::kill(g.child.id() as libc::pid_t, libc::SIGTERM) };
    }
    for g in &mut gates {
        let _ = g.child.wait();
    }
    let charged_at_gate_2 = ReaderDb::open(&d.join("r2/reader.db"))
        .and_then(|db| db.records(false))
        .expect("gate-2's records")
        .len();
    let window_ms: Vec<f64> = ReaderDb::open(&d.join("r2/reader.db"))
        .and_then(|db| db.learned_accepts())
        .expect("gate-2's learned accepts")
        .iter()
        .map(|a| a.learned_us.saturating_sub(a.sent_us) as f64 / 1e3)
        .collect();
    println!(
        "{attempts} attempts in {:.0} s: gate-1 opened {}, gate-2 declined {replayed} as replayed, \
         charged {charged_at_gate_2}, opened {opened_at_gate_2}",
        elapsed.as_secs_f64(),
        opened_ms.len()
    );
    summary(
        "replay window (gate-1 announces -> gate-2 has stored it)",
        "ms",
        window_ms,
    );
    summary("gate-1: QR frame written -> open command", "ms", opened_ms);
}
