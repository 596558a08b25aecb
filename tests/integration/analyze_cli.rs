//! `sonotap analyze` through the real binary on generated recordings: a
//! token sent through the channel simulator at a known offset and SNR,
//! clipped copies, noise alone, and files that are not audio.

use std::fs;
use std::process::Output;

use rand::SeedableRng;
use sonotap_audio::wav;
use sonotap_modem::sim::{self, Channel, NoiseKind};
use sonotap_modem::{self as modem, Profile};

use crate::util::{Scratch, assert_fails, last_json, stderr};

const RATE: u32 = 48_000;

fn token_like(seed: u8) -> Vec<u8> {
    (0..199u32)
        .map(|i| (i as u8).wrapping_mul(37).wrapping_add(seed))
        .collect()
}

/// A fast-profile token 1.0 s into white noise at `snr_db` (whole band),
/// written to `name`; returns the signal's start in seconds.
fn heard(s: &Scratch, name: &str, snr_db: f32) -> f64 {
    let signal = modem::encode(&token_like(1), Profile::Fast, RATE).expect("encode");
    let channel = Channel {
        speaker: None,
        noise: NoiseKind::White,
        snr_db,
        lead_secs: (1.0, 1.0),
        tail_secs: 1.0,
        ..Channel::default()
    };
    let rx = sim::transmit(&signal, RATE, &channel, 7);
    wav::write_mono_16(&s.path(name), &rx.samples, rx.rate).expect("write");
    rx.signal_start as f64 / f64::from(RATE)
}

fn analyze(s: &Scratch, file: &str, extra: &[&str]) -> Output {
    let mut args = vec!["analyze", file, "--png", "out.png", "--json"];
    args.extend_from_slice(extra);
    s.run(&args)
}

#[test]
fn analyze_finds_the_frame_at_its_offset_with_the_snr_that_was_set() {
    let s = Scratch::new();
    let start = heard(&s, "heard.wav", 10.0);
    let out = analyze(&s, "heard.wav", &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let json = last_json(&out);
    let frames = json["frames"].as_array().expect("frames");
    assert_eq!(frames.len(), 1, "{json}");
    let f = &frames[0];
    assert_eq!(f["profile"], "fast");
    assert_eq!(f["payload_len"], 199);
    assert_eq!(f["payload_hex"], hex::encode(token_like(1)));
    let found = f["start_s"].as_f64().expect("start");
    assert!((found - start).abs() < 0.005, "start {found} vs {start}");
    // Whole band: what the simulator set. In band: white noise spreads over
    // 24 kHz, the fast band is ~6 kHz of it, so the band holds a quarter
    // of the noise and all of the signal: +6 dB.
    let wide = f["snr_wideband_db"].as_f64().expect("wideband snr");
    assert!((wide - 10.0).abs() < 2.0, "wideband SNR {wide}");
    let in_band = f["snr_db"].as_f64().expect("snr");
    assert!((in_band - 16.0).abs() < 3.0, "in-band SNR {in_band}");
    assert_eq!(json["levels"]["clipped_samples"], 0);
    assert!(
        json["bands"][0]["noise_floor_dbfs"].as_f64().is_some(),
        "{json}"
    );
}

#[test]
fn analyze_finds_two_frames_of_both_profiles_at_their_offsets() {
    let s = Scratch::new();
    let fast = modem::encode(&token_like(2), Profile::Fast, RATE).expect("encode");
    let robust = modem::encode(&token_like(3), Profile::Robust, RATE).expect("encode");
    let gap = RATE as usize * 3 / 2;
    let mut signal = fast.clone();
    signal.extend(std::iter::repeat_n(0.0, gap));
    signal.extend_from_slice(&robust);
    let channel = Channel {
        noise: NoiseKind::Station,
        snr_db: 5.0,
        lead_secs: (0.5, 0.5),
        tail_secs: 0.8,
        ..Channel::default()
    };
    let rx = sim::transmit(&signal, RATE, &channel, 3);
    wav::write_mono_16(&s.path("two.wav"), &rx.samples, rx.rate).expect("write");
    let out = analyze(&s, "two.wav", &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let json = last_json(&out);
    let frames = json["frames"].as_array().expect("frames");
    assert_eq!(frames.len(), 2, "{json}");
    let expected = [
        ("fast", 0.5),
        ("robust", 0.5 + (fast.len() + gap) as f64 / f64::from(RATE)),
    ];
    for (frame, (profile, at)) in frames.iter().zip(expected) {
        assert_eq!(frame["profile"], profile);
        let start = frame["start_s"].as_f64().expect("start");
        assert!((start - at).abs() < 0.005, "{profile}: {start} vs {at}");
        assert!(frame["snr_db"].as_f64().is_some(), "{frame}");
    }
}

#[test]
fn analyze_shows_a_readers_beacons_beside_the_payment_frame_and_their_payload() {
    let s = Scratch::new();
    let beacon: Vec<u8> = (0..17u8)
        .map(|i| i.wrapping_mul(11).wrapping_add(1))
        .collect();
    let tone = modem::encode_beacon(&beacon, RATE).expect("beacon");
    let token = modem::encode(&token_like(4), Profile::Fast, RATE).expect("encode");
    // Beacon, gap, the token, gap, beacon again: what a gate's microphone hears.
    let gap = vec![0f32; RATE as usize / 2];
    let mut signal = tone.clone();
    signal.extend_from_slice(&gap);
    signal.extend_from_slice(&token);
    signal.extend_from_slice(&gap);
    signal.extend_from_slice(&tone);
    let channel = Channel {
        noise: NoiseKind::Station,
        snr_db: 10.0,
        lead_secs: (0.5, 0.5),
        tail_secs: 1.0,
        ..Channel::default()
    };
    let rx = sim::transmit(&signal, RATE, &channel, 4);
    wav::write_mono_16(&s.path("gate.wav"), &rx.samples, rx.rate).expect("write");
    let out = analyze(&s, "gate.wav", &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let json = last_json(&out);
    let frames = json["frames"].as_array().expect("frames");
    assert_eq!(frames.len(), 1, "{json}");
    assert_eq!(frames[0]["profile"], "fast");
    let beacons = json["beacons"].as_array().expect("beacons");
    assert_eq!(beacons.len(), 2, "{json}");
    let second = 0.5 + (tone.len() + token.len() + 2 * gap.len()) as f64 / f64::from(RATE);
    for (b, at) in beacons.iter().zip([0.5, second]) {
        assert_eq!(b["payload_hex"], hex::encode(&beacon));
        assert_eq!(b["payload_len"], 17);
        let start = b["start_s"].as_f64().expect("start");
        assert!((start - at).abs() < 0.005, "{start} vs {at}");
        assert!(b["low_hz"].as_f64().expect("low") > 18_000.0);
        assert!(b["high_hz"].as_f64().expect("high") < 19_800.0);
    }
    let bands: Vec<&str> = json["bands"]
        .as_array()
        .expect("bands")
        .iter()
        .map(|b| b["profile"].as_str().expect("name"))
        .collect();
    assert_eq!(bands, ["fast", "robust", "beacon"]);
    // The same in text, the payload in hex.
    let text = s.run(&["analyze", "gate.wav"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("beacons:   2 decoded"), "{text}");
    assert!(text.contains(&hex::encode(&beacon)), "{text}");
    assert!(text.contains("beacon 18.3–19.8 kHz"), "{text}");
}

#[test]
fn analyze_draws_the_frame_box_at_the_expected_columns() {
    let s = Scratch::new();
    heard(&s, "heard.wav", 20.0);
    let out = analyze(&s, "heard.wav", &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let json = last_json(&out);
    let img = image::open(s.path("out.png")).expect("png").to_rgb8();
    let layout = &json["image"];
    assert_eq!(
        u64::from(img.width()),
        layout["width"].as_u64().expect("width")
    );
    assert_eq!(
        img.height(),
        sonotap_audio::analyze::SPECTRUM_ROWS + sonotap_audio::analyze::STRIP_ROWS
    );
    assert!(img.width() <= sonotap_audio::analyze::MAX_WIDTH);
    let per_column = layout["seconds_per_column"].as_f64().expect("spc");
    let hz_per_row = layout["hz_per_row"].as_f64().expect("hz");
    let frame = &json["frames"][0];
    let x0 = (frame["start_s"].as_f64().expect("start") / per_column).floor() as u32;
    let x1 = (frame["end_s"].as_f64().expect("end") / per_column).floor() as u32;
    let row =
        |hz: f64| sonotap_audio::analyze::SPECTRUM_ROWS - 1 - (hz / hz_per_row).round() as u32;
    let (low, high) = Profile::Fast.band_hz();
    let mid = row(f64::from(low + high) / 2.0);
    let green = image::Rgb([0u8, 255, 0]);
    assert_eq!(*img.get_pixel(x0, mid), green, "left edge at column {x0}");
    assert_eq!(*img.get_pixel(x1, mid), green, "right edge at column {x1}");
    assert_ne!(
        *img.get_pixel((x0 + x1) / 2, mid),
        green,
        "the box is hollow"
    );
    assert_ne!(*img.get_pixel(x0.saturating_sub(3), mid), green);
    assert_eq!(
        *img.get_pixel((x0 + x1) / 2, row(f64::from(high))),
        green,
        "top edge"
    );
}

#[test]
fn analyze_reports_clipping_in_a_clipped_copy() {
    let s = Scratch::new();
    heard(&s, "heard.wav", 10.0);
    let (samples, rate) = wav::read_mono(&s.path("heard.wav")).expect("read");
    let peak = samples.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    let loud: Vec<f32> = samples
        .iter()
        .map(|x| (x * 4.0 / peak).clamp(-1.0, 1.0))
        .collect();
    wav::write_mono_16(&s.path("loud.wav"), &loud, rate).expect("write");
    let out = analyze(&s, "loud.wav", &[]);
    assert!(matches!(out.status.code(), Some(0 | 1)), "{}", stderr(&out));
    let json = last_json(&out);
    assert!(
        json["levels"]["clipped_samples"].as_u64().expect("clipped") > 1_000,
        "{json}"
    );
    let hints = json["hints"].to_string();
    assert!(hints.contains("clipping: "), "{hints}");
    assert!(hints.contains("lower the microphone gain"), "{hints}");
    let img = image::open(s.path("out.png")).expect("png").to_rgb8();
    let strip = sonotap_audio::analyze::SPECTRUM_ROWS + sonotap_audio::analyze::STRIP_ROWS - 1;
    assert!(
        (0..img.width()).any(|x| *img.get_pixel(x, strip) == image::Rgb([255, 0, 0])),
        "clipped columns are marked red"
    );
    let text = s.run(&["analyze", "loud.wav"]);
    assert!(String::from_utf8_lossy(&text.stdout).contains("hint:      clipping"));
}

#[test]
fn analyze_of_noise_alone_finds_no_frame_exits_1_and_still_draws() {
    let s = Scratch::new();
    let mut rng = rand_pcg::Pcg64Mcg::seed_from_u64(5);
    let noise: Vec<f32> =
        sim::noise::generate(NoiseKind::Station, 3 * RATE as usize, RATE, &mut rng)
            .into_iter()
            .map(|x| x * 0.05)
            .collect();
    wav::write_mono_16(&s.path("noise.wav"), &noise, RATE).expect("write");
    let out = analyze(&s, "noise.wav", &[]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let json = last_json(&out);
    assert_eq!(json["frames"].as_array().map(Vec::len), Some(0));
    assert!(
        json["hints"].to_string().contains("no frame heard"),
        "{json}"
    );
    assert!(image::open(s.path("out.png")).is_ok(), "PNG written anyway");

    wav::write_mono_16(&s.path("silence.wav"), &vec![0.0; RATE as usize], RATE).expect("write");
    let out = s.run(&["analyze", "silence.wav", "--png", "silence.png"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("nearly silent"), "{text}");
    assert!(s.path("silence.png").exists());
}

#[test]
fn analyze_bounds_the_picture_width() {
    let s = Scratch::new();
    heard(&s, "heard.wav", 10.0);
    let out = analyze(&s, "heard.wav", &["--width", "100"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let img = image::open(s.path("out.png")).expect("png");
    assert!(img.width() <= 100 && img.width() >= 50, "{}", img.width());
}

#[test]
fn analyze_refuses_bad_input_with_exit_2_and_reads_a_truncated_file() {
    let s = Scratch::new();
    let out = s.run(&["analyze", "missing.wav"]);
    assert_fails(&out, 2, &["missing.wav"]);

    fs::write(s.path("text.wav"), "this is not a wav file").expect("write");
    let out = s.run(&["analyze", "text.wav", "--png", "x.png"]);
    assert_fails(&out, 2, &["not a readable WAV"]);

    wav::write_mono_16(&s.path("empty.wav"), &[], RATE).expect("write");
    let out = s.run(&["analyze", "empty.wav"]);
    assert_fails(&out, 2, &["no audio"]);
    assert!(!stderr(&out).contains("panicked"));

    heard(&s, "heard.wav", 10.0);
    let bytes = fs::read(s.path("heard.wav")).expect("read");
    // Cut mid-sample, well after the frame (which ends about 1.4 s in).
    fs::write(s.path("cut.wav"), &bytes[..bytes.len() * 3 / 4 + 1]).expect("write");
    let out = analyze(&s, "cut.wav", &[]);
    assert!(matches!(out.status.code(), Some(0 | 1)), "{}", stderr(&out));
    let json = last_json(&out);
    assert!(
        json["duration_s"].as_f64().expect("duration") > 1.0,
        "{json}"
    );
}

#[test]
fn analyze_reports_a_frame_heard_but_not_decoded() {
    use rand::RngExt;
    let s = Scratch::new();
    let frame = modem::encode(&token_like(4), Profile::Fast, RATE).expect("encode");
    let lead = RATE as usize / 2;
    let mut capture = vec![0.0f32; lead];
    capture.extend(frame.iter().map(|x| x * 0.5));
    capture.extend(std::iter::repeat_n(0.0, lead));
    // The header (first data symbol) and the closing chirp survive; a burst
    // covers the rest of the body.
    let mut rng = rand_pcg::Pcg64Mcg::seed_from_u64(9);
    for x in &mut capture[lead + 2048 + 2 * 4352 + 256..lead + 2048 + 4 * 4352] {
        *x += rng.random_range(-0.5f32..0.5);
    }
    wav::write_mono_16(&s.path("lost.wav"), &capture, RATE).expect("write");
    let out = analyze(&s, "lost.wav", &[]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let json = last_json(&out);
    assert_eq!(json["missed_count"], 1, "{json}");
    let missed = &json["missed"][0];
    assert_eq!(missed["profile"], "fast");
    assert_eq!(missed["payload_len"], 199);
    assert!(
        (missed["start_s"].as_f64().expect("start") - 0.5).abs() < 0.005,
        "{missed}"
    );
    let hints = json["hints"].to_string();
    assert!(hints.contains("heard but not decoded"), "{hints}");
    assert!(!hints.contains("no frame heard"), "{hints}");
}
