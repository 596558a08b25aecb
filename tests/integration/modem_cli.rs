//! The modem through the real binary: encode, decode, listen on a real ALSA
//! capture device, and the token path from phone to reader by sound.

use std::fs;
use std::process::Output;

use hound::{SampleFormat, WavSpec, WavWriter};

use crate::audio_capture::alsa_test_device;
use crate::util::Scratch;

fn encode(s: &Scratch, payload: &[u8], profile: &str, rate: u32, out: &str) {
    let rate_text = rate.to_string();
    let args = [
        "modem",
        "encode",
        "--profile",
        profile,
        "--rate",
        &rate_text,
        "--out",
        out,
    ];
    let result = s.run_with_stdin(&args, payload);
    assert!(result.status.success(), "encode {profile} at {rate} Hz");
}

fn decode(s: &Scratch, file: &str) -> Output {
    s.run(&["modem", "decode", file])
}

fn lines(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

fn payload(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// Rewrites a mono 16-bit WAV in another layout.
fn relayout(s: &Scratch, from: &str, to: &str, spec: WavSpec, gain: f32) {
    let (samples, rate) = sonotap_audio::wav::read_mono(&s.path(from)).expect("read");
    let spec = WavSpec {
        sample_rate: rate,
        ..spec
    };
    let mut w = WavWriter::create(s.path(to), spec).expect("create");
    for &x in &samples {
        let x = (x * gain).clamp(-1.0, 1.0);
        for _ in 0..spec.channels {
            match spec.sample_format {
                SampleFormat::Float => w.write_sample(x).expect("write"),
                SampleFormat::Int => {
                    let max = ((1i64 << (spec.bits_per_sample - 1)) - 1) as f32;
                    w.write_sample((x * max) as i32).expect("write")
                }
            }
        }
    }
    w.finalize().expect("finalize");
}

#[test]
fn encode_then_decode_round_trips_both_profiles_at_both_rates() {
    let s = Scratch::new();
    for (profile, rate) in [
        ("fast", 48_000),
        ("fast", 44_100),
        ("robust", 48_000),
        ("robust", 44_100),
    ] {
        let data = payload(199, rate as u8);
        let file = format!("{profile}-{rate}.wav");
        encode(&s, &data, profile, rate, &file);
        let out = decode(&s, &file);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{profile} at {rate}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(lines(&out), vec![hex::encode(&data)], "{profile} at {rate}");
    }
    // The largest payload a frame carries, and a one-byte one.
    for len in [1, 256] {
        let data = payload(len, 9);
        encode(&s, &data, "fast", 48_000, "len.wav");
        assert_eq!(
            lines(&decode(&s, "len.wav")),
            vec![hex::encode(&data)],
            "{len} bytes"
        );
    }
}

#[test]
fn every_wav_layout_decodes() {
    let s = Scratch::new();
    let data = payload(199, 3);
    encode(&s, &data, "fast", 48_000, "mono16.wav");
    let layouts = [
        (
            "stereo24.wav",
            WavSpec {
                channels: 2,
                sample_rate: 0,
                bits_per_sample: 24,
                sample_format: SampleFormat::Int,
            },
        ),
        (
            "float32.wav",
            WavSpec {
                channels: 1,
                sample_rate: 0,
                bits_per_sample: 32,
                sample_format: SampleFormat::Float,
            },
        ),
        (
            "stereo-float.wav",
            WavSpec {
                channels: 2,
                sample_rate: 0,
                bits_per_sample: 32,
                sample_format: SampleFormat::Float,
            },
        ),
    ];
    for (name, spec) in layouts {
        relayout(&s, "mono16.wav", name, spec, 1.0);
        assert_eq!(lines(&decode(&s, name)), vec![hex::encode(&data)], "{name}");
    }
    // A recording at a rate the phone did not use: 96 kHz, via the simulator.
    let out = s.run(&[
        "modem",
        "simulate",
        "mono16.wav",
        "--snr",
        "30",
        "--rate",
        "96000",
        "--out",
        "96k.wav",
    ]);
    assert!(out.status.success());
    assert_eq!(
        lines(&decode(&s, "96k.wav")),
        vec![hex::encode(&data)],
        "96 kHz"
    );
}

#[test]
fn a_token_paid_by_sound_is_accepted_by_the_reader() {
    let s = Scratch::new();
    s.provision(None);
    s.wallet_pay(250, "t.bin", &["--wav", "t.wav"]);
    // Through a noisy station at 44.1 kHz, as a gate's microphone hears it.
    s.ok(&[
        "modem",
        "simulate",
        "t.wav",
        "--noise",
        "station",
        "--snr",
        "15",
        "--rate",
        "44100",
        "--out",
        "heard.wav",
    ]);
    let heard = lines(&decode(&s, "heard.wav"));
    assert_eq!(heard.len(), 1);
    s.assert_reader_accepts(&heard[0], "t.bin", 250);
}

#[test]
fn listen_decodes_from_a_file_backed_alsa_capture_device() {
    let s = Scratch::new();
    let data = payload(199, 42);
    encode(&s, &data, "fast", 48_000, "token.wav");
    // Raw S16_LE mono at 48 kHz: a second of room noise, the token, more noise.
    s.ok(&[
        "modem",
        "simulate",
        "token.wav",
        "--noise",
        "babble",
        "--snr",
        "20",
        "--out",
        "room.wav",
    ]);
    let mut reader = hound::WavReader::open(s.path("room.wav")).expect("wav");
    let room: Vec<i16> = reader
        .samples::<i16>()
        .map(|x| x.expect("sample"))
        .collect();
    let mut raw = vec![0i16; 48_000];
    raw.extend_from_slice(&room);
    raw.extend(std::iter::repeat_n(0, 48_000));
    alsa_test_device(&s, "capture.raw", &raw);

    let out = s.run_with_home(&[
        "modem",
        "listen",
        "--device",
        "sonotap_test",
        "--seconds",
        "3",
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(lines(&out), vec![hex::encode(&data)], "heard once, exactly");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("listening on alsa:sonotap_test at 48000 Hz")
    );
}

#[test]
fn bad_audio_gives_a_clear_answer_and_no_payload() {
    let s = Scratch::new();
    let silent = vec![0.0f32; 48_000 * 3];
    sonotap_audio::wav::write_mono_16(&s.path("silence.wav"), &silent, 48_000).expect("write");
    let out = decode(&s, "silence.wav");
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no payload found"));

    // Clipped hard: the signal driven 20 dB into the rails still carries the payload or nothing.
    let data = payload(199, 5);
    encode(&s, &data, "robust", 48_000, "robust.wav");
    relayout(
        &s,
        "robust.wav",
        "clipped.wav",
        WavSpec {
            channels: 1,
            sample_rate: 0,
            bits_per_sample: 16,
            sample_format: SampleFormat::Int,
        },
        10.0,
    );
    let out = decode(&s, "clipped.wav");
    assert!(
        lines(&out).iter().all(|l| *l == hex::encode(&data)),
        "never a wrong payload"
    );

    // A recording at a rate too low for either band is "no payload", said
    // plainly; a rate that holds only the robust band still decodes it.
    sonotap_audio::wav::write_mono_16(&s.path("16k.wav"), &vec![0.0; 16_000], 16_000)
        .expect("write");
    let out = decode(&s, "16k.wav");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot hold the modem's bands"));
    encode(&s, &data, "robust", 38_000, "robust-38k.wav");
    assert_eq!(
        lines(&decode(&s, "robust-38k.wav")),
        vec![hex::encode(&data)]
    );

    fs::write(s.path("empty.wav"), b"").expect("write");
    fs::write(s.path("notes.wav"), "this is not audio").expect("write");
    for file in ["empty.wav", "notes.wav", "missing.wav"] {
        let out = decode(&s, file);
        assert_eq!(out.status.code(), Some(2), "{file}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("not a readable WAV file"),
            "{file}"
        );
    }
    // Too many bytes for one frame is refused, not truncated.
    let out = s.run_with_stdin(&["modem", "encode", "--out", "big.wav"], &[7; 300]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn ten_minutes_of_station_noise_yield_nothing_and_finish() {
    let s = Scratch::new();
    use rand::SeedableRng;
    let mut rng = rand_pcg::Pcg64Mcg::seed_from_u64(10);
    let minute: Vec<f32> = sonotap_modem::sim::noise::generate(
        sonotap_modem::sim::NoiseKind::Station,
        48_000 * 60,
        48_000,
        &mut rng,
    )
    .iter()
    .map(|x| (x * 0.25).clamp(-1.0, 1.0))
    .collect();
    let ten: Vec<f32> = minute.iter().copied().cycle().take(48_000 * 600).collect();
    sonotap_audio::wav::write_mono_16(&s.path("ten.wav"), &ten, 48_000).expect("write");
    let out = decode(&s, "ten.wav");
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn a_beacon_encoded_by_the_binary_decodes_by_it_and_nowhere_else() {
    let s = Scratch::new();
    // What a reader sends: version, 4-byte tag, 8-byte challenge, 4-byte time.
    let beacon = "01a1b2c3d40011223344556677650a1b2c";
    for rate in ["48000", "44100"] {
        let out = s.run(&[
            "modem", "beacon", "encode", "--hex", beacon, "--rate", rate, "--out", "b.wav",
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("17 bytes as a beacon: 0.664 s"),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        let heard = s.run(&["modem", "beacon", "decode", "b.wav"]);
        assert_eq!(heard.status.code(), Some(0), "{rate}");
        assert_eq!(lines(&heard), vec![beacon.to_string()], "{rate}");
        let json = s.run(&["modem", "beacon", "decode", "--json", "b.wav"]);
        let value: serde_json::Value =
            serde_json::from_slice(&json.stdout).expect("one JSON object");
        assert_eq!(value["payload_hex"], beacon);
        assert!(value["end_s"].as_f64().expect("end") > 0.66);
        assert!(value["level_dbfs"].as_f64().expect("level") < 0.0);
        // A payment decoder hears no payment in it.
        let payment = decode(&s, "b.wav");
        assert_eq!(payment.status.code(), Some(1));
        assert!(payment.stdout.is_empty());
    }
    // A payment frame is no beacon.
    encode(&s, &payload(17, 1), "fast", 48_000, "token.wav");
    let none = s.run(&["modem", "beacon", "decode", "token.wav"]);
    assert_eq!(none.status.code(), Some(1));
    assert!(none.stdout.is_empty());
    assert!(String::from_utf8_lossy(&none.stderr).contains("no beacon found"));
    // Payloads a beacon cannot carry are refused with the reason.
    for bad in ["", "zz", &"00".repeat(33)] {
        let out = s.run(&["modem", "beacon", "encode", "--hex", bad, "--out", "x.wav"]);
        assert_eq!(out.status.code(), Some(2), "{bad:?}");
        assert!(!s.path("x.wav").exists());
    }
    let low = s.run(&[
        "modem", "beacon", "encode", "--hex", "01", "--rate", "32000", "--out", "x.wav",
    ]);
    assert!(!low.status.success());
}
