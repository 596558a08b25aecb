//! Live capture through cpal and a real ALSA device: the `file` plugin feeds
//! a raw PCM file (S16_LE mono at the rate asked) as if it were a microphone.
//! No sound card, no mock.

use std::process::Output;

use crate::util::Scratch;

/// Writes `samples` (raw S16_LE mono) to file `raw` in `s`, and `.asoundrc`
/// into `s` (the `HOME` of [`Scratch::run_with_home`]) defining
/// `pcm.sonotap_test`, a capture device that plays that file.
pub fn alsa_test_device(s: &Scratch, raw: &str, samples: &[i16]) {
    let raw = s.path(raw);
    let bytes: Vec<u8> = samples.iter().flat_map(|s| s.to_le_bytes()).collect();
    std::fs::write(&raw, bytes).expect("raw pcm");
    let config = format!(
        "pcm.sonotap_test {{\n  type file\n  slave.pcm \"null\"\n  file \"/dev/null\"\n  infile \"{}\"\n  format \"raw\"\n  hint {{ show on description \"file-backed capture\" }}\n}}\n",
        raw.display()
    );
    std::fs::write(s.path(".asoundrc"), config).expect("asoundrc");
}

/// `.asoundrc` in the scratch directory (the daemon's and the wallet's
/// `HOME`): `gate_speaker`, an output that writes what it plays to
/// `speaker.raw` as S16_LE mono at 48 kHz (whatever format the player
/// asks, `plug` converts), and `sonotap_test`, a capture device that plays
/// that same file as a microphone would hear it.
pub fn speaker_to_microphone(s: &Scratch) {
    let raw = s.path("speaker.raw");
    let config = format!(
        "pcm.gate_speaker {{\n  type plug\n  slave {{\n    pcm \"gate_file\"\n    format S16_LE\n    rate 48000\n    channels 1\n  }}\n}}\n\
         pcm.gate_file {{\n  type file\n  slave.pcm \"null\"\n  file \"{raw}\"\n  format \"raw\"\n}}\n\
         pcm.sonotap_test {{\n  type file\n  slave.pcm \"null\"\n  file \"/dev/null\"\n  infile \"{raw}\"\n  format \"raw\"\n}}\n",
        raw = raw.display()
    );
    std::fs::write(s.path(".asoundrc"), config).expect("asoundrc");
}

/// What `gate_speaker` ([`speaker_to_microphone`]) has played so far, as
/// a 48 kHz 16-bit WAV file `out` in `s`.
pub fn speaker_as_wav(s: &Scratch, out: &str) {
    let samples: Vec<i16> = std::fs::read(s.path("speaker.raw"))
        .expect("what the speaker played")
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect();
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 48_000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut wav = hound::WavWriter::create(s.path(out), spec).expect("wav");
    for v in samples {
        wav.write_sample(v).expect("sample");
    }
    wav.finalize().expect("wav");
}

/// `modem record --device DEVICE --seconds SECONDS --out OUT`, with the
/// scratch directory as `HOME`.
fn record(s: &Scratch, device: &str, seconds: &str, out: &str) -> Output {
    s.run_with_home(&[
        "modem",
        "record",
        "--device",
        device,
        "--seconds",
        seconds,
        "--out",
        out,
    ])
}

#[test]
fn record_captures_the_file_backed_alsa_device_sample_exactly() {
    let s = Scratch::new();
    // A pattern no device would invent: a pseudo-random walk.
    let mut x: u32 = 12345;
    let pattern: Vec<i16> = (0..48_000)
        .map(|_| {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            ((x >> 16) as i16) / 4
        })
        .collect();
    alsa_test_device(&s, "in.raw", &pattern);
    let out = record(&s, "sonotap_test", "0.5", "rec.wav");
    assert!(
        out.status.success(),
        "record failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("alsa:sonotap_test at 48000 Hz"), "{stdout}");
    let mut reader = hound::WavReader::open(s.path("rec.wav")).expect("wav");
    let recorded: Vec<i16> = reader
        .samples::<i16>()
        .map(|v| v.expect("sample"))
        .collect();
    assert_eq!(recorded.len(), 24_000);
    assert_eq!(
        recorded,
        pattern[..24_000],
        "capture altered or lost samples"
    );
}

#[test]
fn an_unknown_device_is_named_with_the_ones_that_exist() {
    let s = Scratch::new();
    alsa_test_device(&s, "in.raw", &[0; 480]);
    let out = record(&s, "no-such-mic", "0.1", "x.wav");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no input device \"no-such-mic\""),
        "{stderr}"
    );
    assert!(stderr.contains("alsa:sonotap_test"), "{stderr}");
}
