//! The corpus under signals/: every recording decodes to exactly the payloads
//! its sidecar file lists (signals/modem/make.sh regenerates them); a
//! `beacon-*` recording holds readers' beacons and no payment, every other
//! recording payments and no beacon.

use std::path::Path;

use crate::util::sonotap;

#[test]
fn every_modem_recording_yields_exactly_its_expected_payloads() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("signals/modem");
    let mut checked = 0;
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .expect("signals/modem exists")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "wav"))
        .collect();
    entries.sort();
    for wav in entries {
        let expected_text = std::fs::read_to_string(wav.with_extension("hex"))
            .unwrap_or_else(|_| panic!("{} has no .hex sidecar", wav.display()));
        let expected: Vec<&str> = expected_text.lines().filter(|l| !l.is_empty()).collect();
        let beacon = wav
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("beacon-"));
        let (holds, lacks): (&[&str], &[&str]) = if beacon {
            (&["modem", "beacon", "decode"], &["modem", "decode"])
        } else {
            (&["modem", "decode"], &["modem", "beacon", "decode"])
        };
        let out = sonotap().args(holds).arg(&wav).output().expect("runs");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let got: Vec<&str> = stdout.lines().collect();
        assert_eq!(got, expected, "{}", wav.display());
        let code = if expected.is_empty() { 1 } else { 0 };
        assert_eq!(out.status.code(), Some(code), "{}", wav.display());
        let other = sonotap().args(lacks).arg(&wav).output().expect("runs");
        assert!(other.stdout.is_empty(), "{}: {lacks:?}", wav.display());
        assert_eq!(other.status.code(), Some(1), "{}", wav.display());
        checked += 1;
    }
    assert!(checked >= 8, "only {checked} recordings in signals/modem");
}

/// The test vector `name` (.wav and .hex in signals/modem) is exactly what
/// the encoder sends for `profile`.
fn assert_vector_is_what_the_encoder_sends(name: &str, profile: sonotap_modem::Profile) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("signals/modem");
    let hex = std::fs::read_to_string(dir.join(format!("{name}.hex"))).expect("vector payload");
    let payload: Vec<u8> = (0..hex.trim().len() / 2)
        .map(|i| u8::from_str_radix(&hex.trim()[2 * i..2 * i + 2], 16).expect("hex"))
        .collect();
    let (vector, rate) =
        sonotap_audio::wav::read_mono(&dir.join(format!("{name}.wav"))).expect("vector wav");
    assert_eq!(rate, 48_000);
    let sent = sonotap_modem::encode(&payload, profile, 48_000).expect("encode");
    assert_eq!(sent.len(), vector.len(), "frame length");
    let lsb = 1.0 / 32_768.0;
    let worst = sent
        .iter()
        .zip(&vector)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(worst <= 1.5 * lsb, "largest difference {} LSB", worst / lsb);
}

/// docs/modem.md §3b's test vector is exactly what the encoder sends: a
/// change to format 2 that forgets the document, the vector and
/// tests/conformance/modem_v2.py fails here.
#[test]
fn format_2_test_vector_is_what_the_fast_encoder_sends() {
    assert_vector_is_what_the_encoder_sends("token-fast-48k", sonotap_modem::Profile::Fast);
}

/// docs/modem.md §7.2's test vector (tests/conformance/modem_beacon.py) is
/// exactly what the beacon encoder sends.
#[test]
fn beacon_test_vector_is_what_the_beacon_encoder_sends() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("signals/modem");
    let hex = std::fs::read_to_string(dir.join("beacon-48k.hex")).expect("vector payload");
    let payload = hex::decode(hex.trim()).expect("hex");
    assert_eq!(payload.len(), 17);
    let (vector, rate) = sonotap_audio::wav::read_mono(&dir.join("beacon-48k.wav")).expect("wav");
    assert_eq!(rate, 48_000);
    let sent = sonotap_modem::encode_beacon(&payload, 48_000).expect("encode");
    assert_eq!(sent.len(), vector.len(), "frame length");
    let lsb = 1.0 / 32_768.0;
    let worst = sent
        .iter()
        .zip(&vector)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(worst <= 1.5 * lsb, "largest difference {} LSB", worst / lsb);
}

/// docs/modem.md §3c's test vector (tests/conformance/modem_robust_v2.py),
/// likewise for the robust profile's format 2.
#[test]
fn format_2_test_vector_is_what_the_robust_encoder_sends() {
    assert_vector_is_what_the_encoder_sends("token-robust-48k", sonotap_modem::Profile::Robust);
}
