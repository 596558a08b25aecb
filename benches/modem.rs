//! Acoustic modem benchmark: success rate, air time and goodput per profile
//! and channel condition, with a public peer (minimodem, Bell 202 AFSK at
//! 1200 baud, from Debian) sent through the very same simulated channels;
//! then the decoder's real-time factor and latency, and false payloads in an
//! hour of sound with no transmission; the same for the readers' beacon
//! (docs/modem.md §7) beside them: its air time, its decoder's speed and
//! latency, and false beacons in the same hour.
//!
//! `cargo bench --bench modem` (all of it, several minutes);
//! `cargo bench --bench modem -- --trials 20` for a quicker look;
//! `-- --no-peer`, `-- --no-false-hour` to skip parts.
//! Every trial has its own fixed seed, so a run is reproducible.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Instant;

use rand::{RngExt, SeedableRng};
use rand_pcg::Pcg64Mcg;
use sonotap_audio::wav;
use sonotap_modem::sim::{self, Channel, NoiseKind, Room};
use sonotap_modem::{self as modem, BeaconDecoder, Decoder, Profile};

/// What a reader hears between transmissions, a minute of each in turn:
/// the hour of station audio, speech, music and gate beeps, and
/// the plain noises.
const FALSE_HOUR: [NoiseKind; 7] = [
    NoiseKind::Station,
    NoiseKind::Speech,
    NoiseKind::Music,
    NoiseKind::Beeps,
    NoiseKind::White,
    NoiseKind::Pink,
    NoiseKind::Babble,
];

/// The payload size the targets are stated for (a token is 199).
const PAYLOAD: usize = 200;
const TX_RATE: u32 = 48_000;

struct Condition {
    name: String,
    channel: Channel,
    /// The target for this row, if it is one.
    target: Option<&'static str>,
}

fn condition(name: &str, channel: Channel, target: Option<&'static str>) -> Condition {
    Condition {
        name: name.to_string(),
        channel,
        target,
    }
}

fn station(snr_db: f32) -> Channel {
    Channel {
        noise: NoiseKind::Station,
        snr_db,
        ..Channel::default()
    }
}

fn room(rt60: f32, drr_db: f32) -> Option<Room> {
    Some(Room { rt60, drr_db })
}

fn conditions(profile: Profile) -> Vec<Condition> {
    let mut list = Vec::new();
    match profile {
        Profile::Fast => {
            // The target names RT60 0.4 s but no direct-to-reverberant
            // ratio; a phone held at a gate's reader is close (high DRR), so
            // the sweep shows where the fast profile holds and where it breaks.
            for drr in [12.0, 9.0, 6.0, 3.0, 0.0] {
                let target = (drr >= 6.0).then_some(">= 99%");
                list.push(condition(
                    &format!("station 5 dB, RT60 0.4 s, DRR {drr} dB"),
                    Channel {
                        room: room(0.4, drr),
                        ..station(5.0)
                    },
                    target,
                ));
            }
            for ppm in [300.0, -300.0] {
                list.push(condition(
                    &format!("station 10 dB, 44.1 kHz rx, {ppm:+} ppm"),
                    Channel {
                        rx_rate: 44_100,
                        clock_ppm: ppm,
                        ..station(10.0)
                    },
                    Some(">= 99%"),
                ));
            }
        }
        Profile::Robust => {
            list.push(condition("station -10 dB", station(-10.0), Some(">= 99%")));
            list.push(condition("station -15 dB", station(-15.0), None));
            list.push(condition(
                "station 5 dB, hall RT60 2 s, DRR 0 dB",
                Channel {
                    room: room(2.0, 0.0),
                    ..station(5.0)
                },
                Some(">= 99%"),
            ));
            list.push(condition(
                "station 5 dB, hall RT60 2 s, DRR -3 dB",
                Channel {
                    room: room(2.0, -3.0),
                    ..station(5.0)
                },
                None,
            ));
            list.push(condition(
                "station -10 dB, RT60 0.4 s DRR 6 dB, 44.1 kHz rx, +300 ppm",
                Channel {
                    room: room(0.4, 6.0),
                    rx_rate: 44_100,
                    clock_ppm: 300.0,
                    ..station(-10.0)
                },
                None,
            ));
        }
    }
    for noise in [
        NoiseKind::White,
        NoiseKind::Pink,
        NoiseKind::Babble,
        NoiseKind::Station,
    ] {
        for snr in [30.0, 10.0, 5.0, 0.0, -5.0, -10.0] {
            list.push(condition(
                &format!("{} {snr} dB", noise.name()),
                Channel {
                    noise,
                    snr_db: snr,
                    ..Channel::default()
                },
                None,
            ));
        }
    }
    list
}

fn payload(seed: u64) -> Vec<u8> {
    let mut rng = Pcg64Mcg::seed_from_u64(seed ^ 0x5eed);
    (0..PAYLOAD).map(|_| rng.random::<u8>()).collect()
}

/// Outcome of one trial: decoded exactly, and any wrong payload emitted.
struct Trial {
    ok: bool,
    false_payloads: usize,
}

fn sonotap_trial(profile: Profile, channel: &Channel, seed: u64) -> Trial {
    let payload = payload(seed);
    let got = sim::send_and_decode(&payload, profile, channel, seed)
        .unwrap_or_else(|e| panic!("encode failed: {e}"));
    Trial {
        ok: got.contains(&payload),
        false_payloads: got.iter().filter(|p| **p != payload).count(),
    }
}

/// minimodem through the same channel: its WAV in, the simulated capture out.
fn minimodem_trial(channel: &Channel, seed: u64, dir: &std::path::Path) -> Option<(bool, f64)> {
    let payload = payload(seed);
    let tx = dir.join("tx.wav");
    let rx = dir.join("rx.wav");
    let mut child = Command::new("minimodem")
        .args(["--tx", "-q", "--samplerate", "48000", "-f"])
        .arg(&tx)
        .arg("1200")
        .stdin(Stdio::piped())
        .spawn()
        .ok()?;
    child.stdin.take()?.write_all(&payload).ok()?;
    child.wait().ok()?;
    let (signal, rate) = wav::read_mono(&tx).ok()?;
    let air = signal.len() as f64 / f64::from(rate);
    let captured = sim::transmit(&signal, rate, channel, seed);
    wav::write_mono_16(&rx, &captured.samples, captured.rate).ok()?;
    let out = Command::new("minimodem")
        .args(["--rx", "-q", "-f"])
        .arg(&rx)
        .arg("1200")
        .output()
        .ok()?;
    let ok = out.stdout.windows(PAYLOAD).any(|w| w == payload.as_slice());
    Some((ok, air))
}

fn args() -> (usize, bool, bool) {
    let argv: Vec<String> = std::env::args().collect();
    let trials = argv
        .iter()
        .position(|a| a == "--trials")
        .and_then(|i| argv.get(i + 1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(100);
    let peer = !argv.iter().any(|a| a == "--no-peer");
    let false_hour = !argv.iter().any(|a| a == "--no-false-hour");
    (trials, peer, false_hour)
}

fn main() {
    let (trials, peer, false_hour) = args();
    let peer = peer && Command::new("minimodem").arg("--version").output().is_ok();
    let dir = tempfile::tempdir().expect("tempdir");
    println!(
        "# sonotap modem benchmark: {PAYLOAD}-byte payloads, {trials} trials per row, SNR over the whole band"
    );
    println!();
    println!("| modem | condition | success | air time | goodput | target |");
    println!("| --- | --- | ---: | ---: | ---: | --- |");
    let mut total_false = 0;
    for profile in Profile::ALL {
        let air = modem::air_time(PAYLOAD, profile).expect("air time");
        for (row, condition) in conditions(profile).iter().enumerate() {
            let mut ok = 0;
            for t in 0..trials {
                let seed = (row as u64) << 32 | t as u64 | (profile as u64) << 48;
                let trial = sonotap_trial(profile, &condition.channel, seed);
                ok += usize::from(trial.ok);
                total_false += trial.false_payloads;
            }
            let rate = ok as f64 / trials as f64;
            println!(
                "| sonotap {} | {} | {:.1}% | {air:.3} s | {:.0} B/s | {} |",
                profile.name(),
                condition.name,
                100.0 * rate,
                PAYLOAD as f64 / air,
                condition.target.unwrap_or("")
            );
        }
    }
    if peer {
        // The peer is slow to run (two processes per trial): fewer trials, same channels.
        let peer_trials = trials.min(30);
        for (row, condition) in conditions(Profile::Robust)
            .iter()
            .chain(conditions(Profile::Fast).iter().take(1))
            .enumerate()
        {
            let mut ok = 0;
            let mut air = 0.0;
            for t in 0..peer_trials {
                let seed = (row as u64) << 32 | t as u64 | 7 << 48;
                if let Some((success, seconds)) =
                    minimodem_trial(&condition.channel, seed, dir.path())
                {
                    ok += usize::from(success);
                    air = seconds;
                }
            }
            println!(
                "| minimodem 1200 (peer, {peer_trials} trials) | {} | {:.1}% | {air:.3} s | {:.0} B/s | |",
                condition.name,
                100.0 * ok as f64 / peer_trials as f64,
                PAYLOAD as f64 / air.max(1e-9),
            );
        }
    } else {
        println!("| minimodem | not installed (apt-get install minimodem) | | | | |");
    }
    println!();
    println!("false payloads emitted during the trials above: {total_false}");

    // Real-time factor and latency, streaming 10 ms chunks as a sound card would.
    for profile in Profile::ALL {
        for rx_rate in [48_000u32, 44_100] {
            let mut rtf = Vec::new();
            let mut latency = Vec::new();
            for t in 0..trials.min(50) {
                let payload = payload(t as u64);
                let signal = modem::encode(&payload, profile, TX_RATE).expect("encode");
                let channel = Channel {
                    rx_rate,
                    ..station(10.0)
                };
                let rx = sim::transmit(&signal, TX_RATE, &channel, t as u64);
                let mut decoder = Decoder::new(rx_rate).expect("decoder");
                let chunk = rx_rate as usize / 100;
                let started = Instant::now();
                let mut emitted_at = None;
                for (i, piece) in rx.samples.chunks(chunk).enumerate() {
                    let before = Instant::now();
                    let got = decoder.push(piece);
                    if emitted_at.is_none() && got.contains(&payload) {
                        // Audio time at the end of this chunk, minus the frame's end,
                        // plus the time this chunk took to process.
                        let audio_end = ((i + 1) * chunk) as f64 / f64::from(rx_rate);
                        let frame_end = rx.signal_end as f64 / f64::from(rx_rate);
                        emitted_at = Some(audio_end - frame_end + before.elapsed().as_secs_f64());
                    }
                }
                let cpu = started.elapsed().as_secs_f64();
                rtf.push(cpu / (rx.samples.len() as f64 / f64::from(rx_rate)));
                if let Some(l) = emitted_at {
                    latency.push(l);
                }
            }
            let median = |v: &mut Vec<f64>| {
                v.sort_by(f64::total_cmp);
                v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
            };
            let max = latency.iter().copied().fold(f64::NAN, f64::max);
            println!(
                "{} at {rx_rate} Hz: real-time factor median {:.4} (one core), payload out {:.0} ms after the frame ends (median; max {:.0} ms; {} of {} decoded)",
                profile.name(),
                median(&mut rtf),
                1e3 * median(&mut latency),
                1e3 * max,
                latency.len(),
                trials.min(50)
            );
        }
    }

    beacon_speed(trials.min(50));

    if false_hour {
        // An hour of sound with no transmission, in one-minute pieces of each
        // kind in turn, through one decoder (as an endless stream would be),
        // and through a beacon decoder, timed apart.
        let mut decoder = Decoder::new(48_000).expect("decoder");
        let mut beacons = BeaconDecoder::new(48_000).expect("beacon decoder");
        let mut false_beacons = 0;
        let mut beacon_time = std::time::Duration::ZERO;
        let mut rng = Pcg64Mcg::seed_from_u64(2026);
        let mut false_payloads = 0;
        // Headers that passed on noise: each cost a body decode.
        let mut false_headers = std::collections::BTreeMap::<&str, usize>::new();
        let started = Instant::now();
        let rss_before = peak_rss_kib();
        for minute in 0..60 {
            let kind = FALSE_HOUR[minute % FALSE_HOUR.len()];
            let noise = sim::noise::generate(kind, 48_000 * 60, 48_000, &mut rng);
            let gain = 0.2;
            let noise: Vec<f32> = noise.iter().map(|s| (s * gain).clamp(-1.0, 1.0)).collect();
            for chunk in noise.chunks(480) {
                false_payloads += decoder.push(chunk).len();
            }
            let beacon_started = Instant::now();
            for chunk in noise.chunks(480) {
                false_beacons += beacons.push(chunk).len();
            }
            beacon_time += beacon_started.elapsed();
            for missed in decoder.take_missed() {
                *false_headers.entry(missed.profile.name()).or_default() += 1;
            }
        }
        false_payloads += decoder.finish().len();
        false_beacons += beacons.finish().len();
        for missed in decoder.take_missed() {
            *false_headers.entry(missed.profile.name()).or_default() += 1;
        }
        println!(
            "one hour of station noise, speech, music, gate beeps, white, pink and babble noise with no transmission: {false_payloads} false payloads, {} headers passed on noise ({:?}), decoded in {:.1} s (real-time factor {:.4}), peak RSS {} KiB before, {} KiB after",
            false_headers.values().sum::<usize>(),
            false_headers,
            (started.elapsed() - beacon_time).as_secs_f64(),
            (started.elapsed() - beacon_time).as_secs_f64() / 3600.0,
            rss_before,
            peak_rss_kib()
        );
        println!(
            "beacon decoder through the same hour: {false_beacons} false beacons, decoded in {:.1} s (real-time factor {:.4})",
            beacon_time.as_secs_f64(),
            beacon_time.as_secs_f64() / 3600.0
        );
    }
}

/// The readers' beacon (17 bytes) beside the payment formats: air time,
/// its decoder's real-time factor and latency, streaming 10 ms chunks of
/// station noise at 10 dB.
fn beacon_speed(trials: usize) {
    let air = modem::beacon_air_time(17).expect("air time");
    println!("beacon, 17 bytes: air time {air:.3} s");
    for rx_rate in [48_000u32, 44_100] {
        let mut rtf = Vec::new();
        let mut latency = Vec::new();
        for t in 0..trials {
            let mut rng = Pcg64Mcg::seed_from_u64(t as u64 ^ 0xbeac);
            let payload: Vec<u8> = (0..17).map(|_| rng.random::<u8>()).collect();
            let signal = modem::encode_beacon(&payload, TX_RATE).expect("encode");
            let channel = Channel {
                rx_rate,
                ..station(10.0)
            };
            let rx = sim::transmit(&signal, TX_RATE, &channel, t as u64);
            let mut decoder = BeaconDecoder::new(rx_rate).expect("decoder");
            let chunk = rx_rate as usize / 100;
            let started = Instant::now();
            let mut emitted_at = None;
            for (i, piece) in rx.samples.chunks(chunk).enumerate() {
                let before = Instant::now();
                let got = decoder.push(piece);
                if emitted_at.is_none() && got.iter().any(|r| r.payload == payload) {
                    let audio_end = ((i + 1) * chunk) as f64 / f64::from(rx_rate);
                    let frame_end = rx.signal_end as f64 / f64::from(rx_rate);
                    emitted_at = Some(audio_end - frame_end + before.elapsed().as_secs_f64());
                }
            }
            rtf.push(
                started.elapsed().as_secs_f64() / (rx.samples.len() as f64 / f64::from(rx_rate)),
            );
            if let Some(l) = emitted_at {
                latency.push(l);
            }
        }
        let median = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
        };
        let max = latency.iter().copied().fold(f64::NAN, f64::max);
        println!(
            "beacon at {rx_rate} Hz: real-time factor median {:.4} (one core), beacon out {:.0} ms after it ends (median; max {:.0} ms; {} of {trials} decoded)",
            median(&mut rtf),
            1e3 * median(&mut latency),
            1e3 * max,
            latency.len(),
        );
    }
}

/// Peak resident set size of this process (Linux), KiB.
fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}
