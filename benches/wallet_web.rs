//! The rider's web wallet (issue 19), in headless Chromium against a real
//! `hub serve` (wallet-web/test/browser/bench.mjs drives the page):
//!
//! 1. the bytes the page fetched on its first visit (enrolment and renewal)
//!    and on a later one (its service worker answers), beside the size of
//!    every file of the wallet (what the worker caches on its first visit);
//! 2. from the tap on "Pay by sound" to the sound's start (the counter and
//!    running total written to IndexedDB with strict durability, the token
//!    signed, the frame encoded and resampled, the buffer started; the audio
//!    output's own latency is not in it), and from the tap on "Pay by QR
//!    code" to the code drawn;
//! 3. the page's own sounds, exactly as it played them, sent through the
//!    channel simulator at the fast profile's gate conditions (docs/modem.md
//!    §5), side by side with the Rust encoder's frames of the same tokens
//!    through the same channels and seeds;
//! 4. what listening for a gate's beacon costs: the page's decoder on 20 s
//!    of noise at 48 and 44.1 kHz, as a share of one core.
//!
//! Run: `cargo bench --bench wallet_web -- [--taps N] [--seeds S]`
//! (defaults 30 taps, 4 seeds per sound and condition).

#[path = "common/mod.rs"]
mod common;

use std::path::Path;
use std::process::{Command, Stdio};

use sonotap_hub::wallet_web::ASSETS;
use sonotap_modem::sim::noise::NoiseKind;
use sonotap_modem::sim::reverb::Room;
use sonotap_modem::sim::{Channel, transmit};
use sonotap_modem::{Decoder, Profile};

/// Every payload a fresh decoder finds in `samples` at `rate`.
fn decode(samples: &[f32], rate: u32) -> Vec<Vec<u8>> {
    let mut decoder = Decoder::new(rate).expect("a decoder");
    let mut got = Vec::new();
    for chunk in samples.chunks(rate as usize / 50) {
        got.extend(decoder.push(chunk));
    }
    got.extend(decoder.finish().into_iter().map(|r| r.payload));
    got
}

fn read_wav(path: &Path) -> (Vec<f32>, u32) {
    let mut reader = hound::WavReader::open(path).expect("a sound the page played");
    let rate = reader.spec().sample_rate;
    let samples = reader
        .samples::<i16>()
        .map(|v| f32::from(v.expect("a sample")) / 32768.0)
        .collect();
    (samples, rate)
}

/// The fast profile's gate conditions (docs/modem.md §5.3's targets).
fn conditions() -> Vec<(String, Channel)> {
    let station = |snr_db: f32| Channel {
        noise: NoiseKind::Station,
        snr_db,
        ..Channel::default()
    };
    let mut list = Vec::new();
    for drr in [12.0, 9.0, 6.0] {
        list.push((
            format!("station 5 dB, RT60 0.4 s, DRR {drr} dB"),
            Channel {
                room: Some(Room {
                    rt60: 0.4,
                    drr_db: drr,
                }),
                ..station(5.0)
            },
        ));
    }
    for ppm in [300.0, -300.0] {
        list.push((
            format!("station 10 dB, 44.1 kHz rx, {ppm:+} ppm"),
            Channel {
                rx_rate: 44_100,
                clock_ppm: ppm,
                ..station(10.0)
            },
        ));
    }
    list
}

fn main() {
    let taps = common::arg("--taps", 30);
    let seeds = common::arg("--seeds", 4) as u64;
    let dir = tempfile::tempdir().expect("scratch");
    let d = dir.path();
    common::ok(d, &["hub", "init", "--data", "hub"]);
    common::ok(
        d,
        &[
            "hub",
            "account",
            "new",
            "rider",
            "--data",
            "hub",
            "--offline-limit",
            "1000000",
            "--per-payment",
            "100",
        ],
    );
    common::ok(
        d,
        &[
            "hub",
            "account",
            "credit",
            "rider",
            "10000000",
            "--reference",
            "seed",
            "--data",
            "hub",
        ],
    );
    let out = common::bin()
        .args([
            "hub", "account", "enroll", "rider", "--data", "hub", "--json",
        ])
        .current_dir(d)
        .output()
        .expect("enroll");
    let code: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let code = code["code"].as_str().expect("a code").to_owned();
    let mut hub = common::bin()
        .args(["hub", "serve", "--data", "hub", "--listen", "127.0.0.1:0"])
        .current_dir(d)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("hub serve");
    let url = common::hub_url(&mut hub);

    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let sounds = d.join("sounds");
    std::fs::create_dir_all(&sounds).expect("sounds");
    let run = Command::new("node")
        .arg(root.join("wallet-web/test/browser/bench.mjs"))
        .arg(d.join("profile"))
        .arg(&sounds)
        .arg(format!("{url}/wallet/#enrol={code}"))
        .arg(taps.to_string())
        .current_dir(root.join("wallet-web"))
        .output()
        .expect("node runs the page");
    let _ = hub.kill();
    let _ = hub.wait();
    assert!(
        run.status.success(),
        "bench.mjs: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    let figures: serde_json::Value = serde_json::from_slice(&run.stdout).expect("json");
    let all: usize = ASSETS.iter().map(|a| a.len()).sum();
    println!(
        "page transfer: first visit {} bytes fetched by the page, every file of the wallet {} \
         bytes ({} files; the worker caches them all), later visit {} bytes",
        figures["first_visit_bytes"],
        all,
        ASSETS.len(),
        figures["later_visit_bytes"]
    );
    let ms = |key: &str| -> Vec<f64> {
        figures[key]
            .as_array()
            .expect("timings")
            .iter()
            .filter_map(|v| v.as_f64())
            .collect()
    };
    common::summary("tap to the sound's start", "ms", ms("sound"));
    common::summary("tap to the QR code drawn", "ms", ms("qr"));
    for rate in ["48000", "44100"] {
        let share = figures["listening_core_share"][rate]
            .as_f64()
            .expect("a share");
        println!(
            "listening for a gate at {rate} Hz: the page's beacon decoder takes {:.1}% of one core",
            100.0 * share
        );
    }

    // The page's sounds and the Rust encoder's, through the same channels.
    let page: Vec<(Vec<f32>, u32, Vec<u8>)> = (0..taps)
        .map(|i| {
            let (samples, rate) = read_wav(&sounds.join(format!("page-{i}.wav")));
            let token = decode(&samples, rate)
                .into_iter()
                .next()
                .expect("the page's sound decodes without a channel");
            (samples, rate, token)
        })
        .collect();
    println!(
        "the page played at {} Hz; trials per condition: {} sounds x {seeds} seeds",
        page[0].1,
        page.len()
    );
    for (name, channel) in conditions() {
        let (mut js, mut rust, mut n) = (0, 0, 0);
        for (i, (samples, rate, token)) in page.iter().enumerate() {
            let ours = sonotap_modem::encode(token, Profile::Fast, 48_000).expect("encode");
            for seed in 0..seeds {
                let seed = 1_000 * i as u64 + seed;
                n += 1;
                let rx = transmit(samples, *rate, &channel, seed);
                js += usize::from(decode(&rx.samples, rx.rate).contains(token));
                let rx = transmit(&ours, 48_000, &channel, seed);
                rust += usize::from(decode(&rx.samples, rx.rate).contains(token));
            }
        }
        println!(
            "{name}: the page's sound {js}/{n} ({:.1}%), the Rust encoder's {rust}/{n} ({:.1}%)",
            100.0 * js as f64 / n as f64,
            100.0 * rust as f64 / n as f64
        );
    }
}
