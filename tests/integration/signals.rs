//! The corpus under signals/: every recording decodes to exactly the payloads
//! its sidecar file lists (signals/modem/make.sh regenerates them).

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
        let out = sonotap()
            .args(["modem", "decode"])
            .arg(&wav)
            .output()
            .expect("runs");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let got: Vec<&str> = stdout.lines().collect();
        assert_eq!(got, expected, "{}", wav.display());
        let code = if expected.is_empty() { 1 } else { 0 };
        assert_eq!(out.status.code(), Some(code), "{}", wav.display());
        checked += 1;
    }
    assert!(checked >= 8, "only {checked} recordings in signals/modem");
}
