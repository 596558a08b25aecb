//! The web wallet's own tests (`wallet-web/test/*.test.js`, node's built-in
//! runner), run by `cargo test` against this build's `sonotap`, so that the
//! README's one test command covers the phone's code too.

use std::path::Path;
use std::process::Command;

#[test]
fn the_web_wallets_node_tests_pass() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let tests: Vec<_> = std::fs::read_dir(root.join("wallet-web/test"))
        .expect("wallet-web/test")
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.to_string_lossy().ends_with(".test.js"))
        .collect();
    assert!(!tests.is_empty(), "no wallet-web/test/*.test.js");
    let out = Command::new("node")
        .arg("--test")
        .args(&tests)
        .env("SONOTAP_BIN", env!("CARGO_BIN_EXE_sonotap"))
        .current_dir(root)
        .output()
        .unwrap_or_else(|e| panic!("node (20 or newer) is needed for the web wallet's tests: {e}"));
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "node --test failed:\n{report}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(report.contains("# fail 0"), "{report}");
}
