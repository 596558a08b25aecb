//! `sonotap run` end to end, timed from the outside through real parts:
//! sound as raw S16_LE samples paced at 48 kHz through a FIFO (what a
//! microphone delivers), 1280x720 Y8 frames at 30 frames/s through another
//! FIFO, and the gate relay on a pseudo-terminal.
//!
//! - sound: from writing the last sample of a token's frame to the relay's
//!   open command arriving on the pty;
//! - QR: from a token frame having been written to the FIFO to the open command;
//! - RSS of the daemon (VmRSS from /proc): idle, and the peak while it
//!   decodes audio continuously and 720p frames at 30 frames/s.
//!
//! Run: `cargo bench --bench daemon` (release build). Prints median, p99 and max.

use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::thread;
use std::time::{Duration, Instant};

use serialport::{SerialPort, TTYPort};
use sonotap_protocol::token::Scope;

#[path = "common/mod.rs"]
mod common;
#[path = "../tests/support/mod.rs"]
mod support;
use common::{bin, ok, relay_thread, summary};
use support::{issued_wallet, mkfifo, pay_token, qr_frame, reader_init_args, unix_now};

const TAPS: usize = 20;

fn rss_kb(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next().and_then(|n| n.parse().ok()))
        .unwrap_or(0)
}

fn main() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    ok(d, &["hub", "init", "--data", "hub"]);
    ok(d, &reader_init_args("r", "gate-1", &[]));
    let mut wallet = issued_wallet(d, "w", Scope::Transit, 10_000_000, unix_now());
    let mut pay = move || pay_token(&mut wallet, 100, unix_now());

    let metrics_port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let (master, slave) = TTYPort::pair().expect("pty");
    let port = PathBuf::from(slave.name().expect("name"));
    mkfifo(&d.join("audio.raw"));
    mkfifo(&d.join("cam.y8"));
    fs::write(
        d.join("daemon.toml"),
        format!(
            "data = \"r\"\nlog_level = \"warn\"\n[audio]\nsource = \"raw\"\npath = \"audio.raw\"\nrate = 48000\n\
             [camera]\nsource = \"pipe\"\npath = \"cam.y8\"\n[actuator]\nprofile = \"ch340-relay\"\nport = \"{}\"\n\
             [payment]\nfare = 100\n[metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n",
            port.display()
        ),
    )
    .expect("config");
    let mut child: Child = bin()
        .args(["run", "--config", "daemon.toml"])
        .current_dir(d)
        .env_remove("NOTIFY_SOCKET")
        .stderr(Stdio::piped())
        .spawn()
        .expect("daemon");
    let pid = child.id();
    let stderr = child.stderr.take().expect("stderr");
    thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("daemon: {line}");
        }
    });
    let stop = Arc::new(AtomicBool::new(false));
    let (open_tx, opens) = channel();
    relay_thread(master, open_tx, Arc::clone(&stop));
    let audio = fs::OpenOptions::new()
        .write(true)
        .open(d.join("audio.raw"))
        .expect("audio fifo");
    let camera = fs::OpenOptions::new()
        .write(true)
        .open(d.join("cam.y8"))
        .expect("camera fifo");
    thread::sleep(Duration::from_secs(3));
    let idle = rss_kb(pid);
    println!("idle RSS: {:.1} MB", idle as f64 / 1024.0);

    // Background load: audio silence paced at 48 kHz and blank 720p frames at 30/s.
    let (audio_tx, audio_rx) = channel::<Vec<u8>>();
    let (audio_done_tx, audio_done) = channel::<Instant>();
    let (cam_tx, cam_rx) = channel::<Vec<u8>>();
    let (cam_done_tx, cam_done) = channel::<Instant>();
    feed_audio(audio, audio_rx, audio_done_tx, Arc::clone(&stop));
    feed_camera(camera, cam_rx, cam_done_tx, Arc::clone(&stop));
    let peak = Arc::new(std::sync::atomic::AtomicU64::new(0));
    {
        let (peak, stop) = (Arc::clone(&peak), Arc::clone(&stop));
        thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                peak.fetch_max(rss_kb(pid), Ordering::Relaxed);
                thread::sleep(Duration::from_millis(50));
            }
        });
    }
    thread::sleep(Duration::from_secs(2));

    let mut sound_ms = Vec::new();
    for _ in 0..TAPS {
        let token = pay();
        let samples =
            sonotap_modem::encode(&token, sonotap_modem::Profile::Fast, 48_000).expect("encode");
        let bytes: Vec<u8> = samples
            .iter()
            .flat_map(|v| ((v * 20_000.0) as i16).to_le_bytes())
            .collect();
        audio_tx.send(bytes).expect("audio feeder");
        let end = audio_done.recv().expect("frame written");
        match opens.recv_timeout(Duration::from_secs(5)) {
            Ok(at) => sound_ms.push(at.saturating_duration_since(end).as_secs_f64() * 1e3),
            Err(_) => eprintln!("a sound tap opened nothing"),
        }
        thread::sleep(Duration::from_millis(700));
    }
    let mut qr_ms = Vec::new();
    for _ in 0..TAPS {
        let token = pay();
        cam_tx.send(qr_frame(&token)).expect("camera feeder");
        let arrived = cam_done.recv().expect("frame written");
        match opens.recv_timeout(Duration::from_secs(5)) {
            Ok(at) => qr_ms.push(at.saturating_duration_since(arrived).as_secs_f64() * 1e3),
            Err(_) => eprintln!("a QR tap opened nothing"),
        }
        thread::sleep(Duration::from_millis(500));
    }
    let busy = peak.load(Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    summary("sound frame end -> open command", "ms", sound_ms);
    summary("QR frame arrival -> open command", "ms", qr_ms);
    println!(
        "RSS: idle {:.1} MB, peak while decoding audio + 720p frames at 30/s {:.1} MB",
        idle as f64 / 1024.0,
        busy as f64 / 1024.0
    );
    // The daemon's own view of where the time went (means from its histograms).
    if let Ok(text) = scrape(metrics_port) {
        let samples = sonotap_reader::daemon::metrics::parse_exposition(&text).unwrap_or_default();
        let get = |name: &str| {
            samples
                .iter()
                .find(|(s, _)| s == name)
                .map_or(0.0, |(_, v)| *v)
        };
        for (label, base) in [
            (
                "decode (audio)",
                "sonotap_decode_seconds_{}{{source=\"audio\"}}",
            ),
            ("decode (qr)", "sonotap_decode_seconds_{}{{source=\"qr\"}}"),
            ("commit", "sonotap_commit_seconds_{}"),
            (
                "frame end -> open command written",
                "sonotap_tap_to_actuate_seconds_{}",
            ),
        ] {
            let sum = get(&base
                .replace("{}", "sum")
                .replace("{{", "{")
                .replace("}}", "}"));
            let count = get(&base
                .replace("{}", "count")
                .replace("{{", "{")
                .replace("}}", "}"));
            if count > 0.0 {
                println!(
                    "daemon metrics: {label}: mean {:.1} ms over {count}",
                    sum / count * 1e3
                );
            }
        }
    }
    // SAFETY: kill(2) on our child.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
    let _ = child.wait();
}

/// Writes 10 ms of silence every 10 ms, or the next token's samples, paced
/// at 48 kHz; reports when a token's last sample was written.
fn feed_audio(
    mut fifo: File,
    tokens: Receiver<Vec<u8>>,
    done: Sender<Instant>,
    stop: Arc<AtomicBool>,
) {
    thread::spawn(move || {
        let chunk = 960; // 10 ms of S16 mono at 48 kHz
        let start = Instant::now();
        let mut written = 0u64;
        let mut current: Option<(Vec<u8>, usize)> = None;
        while !stop.load(Ordering::Relaxed) {
            if current.is_none()
                && let Ok(t) = tokens.try_recv()
            {
                current = Some((t, 0));
            }
            let piece: Vec<u8> = match &mut current {
                Some((bytes, pos)) => {
                    let end = (*pos + chunk * 2).min(bytes.len());
                    let p = bytes[*pos..end].to_vec();
                    *pos = end;
                    p
                }
                None => vec![0; chunk * 2],
            };
            written += piece.len() as u64 / 2;
            let due = start + Duration::from_secs_f64(written as f64 / 48_000.0);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                thread::sleep(wait);
            }
            if fifo.write_all(&piece).is_err() {
                return;
            }
            if let Some((bytes, pos)) = &current
                && *pos >= bytes.len()
            {
                let _ = done.send(Instant::now());
                current = None;
            }
        }
    });
}

/// Writes a blank 720p frame every 33 ms, or the next token's frame;
/// reports when a token frame has been written.
fn feed_camera(
    mut fifo: File,
    tokens: Receiver<Vec<u8>>,
    done: Sender<Instant>,
    stop: Arc<AtomicBool>,
) {
    thread::spawn(move || {
        let blank = vec![200u8; 1280 * 720];
        let mut next = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            if let Ok(frame) = tokens.try_recv() {
                if fifo.write_all(&frame).is_err() {
                    return;
                }
                let _ = done.send(Instant::now());
            } else if fifo.write_all(&blank).is_err() {
                return;
            }
            next += Duration::from_millis(33);
            if let Some(wait) = next.checked_duration_since(Instant::now()) {
                thread::sleep(wait);
            }
        }
    });
}

fn scrape(port: u16) -> std::io::Result<String> {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_string())
}
