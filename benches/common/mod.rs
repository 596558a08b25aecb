//! What the benches that drive real `sonotap` processes share: their
//! arguments, the binary, a checked run of it, a started hub's address,
//! the relay board's side of a pty, and the summary line every figure is
//! quoted from.

// Each bench uses a part of it.
#![allow(dead_code)]

use std::io::Read;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::thread;
use std::time::{Duration, Instant};

use serialport::{SerialPort, TTYPort};

/// The relay board's open command (hw/profiles/ch340-relay.toml).
pub const ON: [u8; 4] = [0xA0, 0x01, 0x01, 0xA2];

/// `--NAME N` from the bench's command line, or `default`.
pub fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The address a started `hub serve` prints on its first line
/// ("listening on URL"), read from its piped standard output.
pub fn hub_url(hub: &mut std::process::Child) -> String {
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(hub.stdout.take().expect("stdout piped")),
        &mut line,
    )
    .expect("the hub's address");
    line.split_whitespace()
        .nth(2)
        .expect("an address")
        .to_owned()
}

/// The `sonotap` binary of this build.
pub fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sonotap"))
}

/// Runs `sonotap ARGS` in `dir`; panics with its stderr if it fails.
pub fn ok(dir: &Path, args: &[&str]) {
    let out = bin()
        .args(args)
        .current_dir(dir)
        .output()
        .expect("sonotap runs");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Prints `name: n=… median …, p99 …, max …` for samples in `unit`.
pub fn summary(name: &str, unit: &str, mut samples: Vec<f64>) {
    if samples.is_empty() {
        println!("{name}: no samples");
        return;
    }
    samples.sort_by(f64::total_cmp);
    let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize];
    println!(
        "{name}: n={} median {:.2} {unit}, p99 {:.2} {unit}, max {:.2} {unit}",
        samples.len(),
        at(0.5),
        at(0.99),
        samples[samples.len() - 1]
    );
}

/// Reads the relay side of a pty; sends the arrival time of every open command.
pub fn relay_thread(mut master: TTYPort, opens: Sender<Instant>, stop: Arc<AtomicBool>) {
    thread::spawn(move || {
        let mut pending = Vec::new();
        let _ = master.set_timeout(Duration::from_millis(5));
        let mut buf = [0u8; 64];
        while !stop.load(Ordering::Relaxed) {
            if let Ok(n) = master.read(&mut buf)
                && n > 0
            {
                let at = Instant::now();
                pending.extend_from_slice(&buf[..n]);
                while pending.len() >= 4 {
                    let cmd: Vec<u8> = pending.drain(..4).collect();
                    if cmd == ON {
                        let _ = opens.send(at);
                    }
                }
            }
        }
    });
}
