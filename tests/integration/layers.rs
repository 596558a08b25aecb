//! The workspace's layering rules (docs/architecture.md), checked against
//! what the manifests declare: which sonotap crate may depend on which, and
//! that the protocol crate stays free of I/O and async runtimes. Cargo
//! already refuses cycles; these rules keep the layers from growing
//! sideways or downwards without anyone deciding so.

use std::collections::BTreeMap;
use std::process::Command;

use serde_json::Value;

/// Each workspace crate and the sonotap crates it may use (normal and build
/// dependencies; dev-dependencies may also take `sonotap-protocol`'s testkit).
const ALLOWED: &[(&str, &[&str])] = &[
    ("sonotap-protocol", &[]),
    ("sonotap-disk", &[]),
    ("sonotap-modem", &[]),
    ("sonotap-audio", &["sonotap-modem"]),
    ("sonotap-qr", &["sonotap-disk"]),
    ("sonotap-wallet", &["sonotap-protocol", "sonotap-disk"]),
    ("sonotap-hub", &["sonotap-protocol", "sonotap-disk"]),
    ("sonotap-powercut", &[]),
    (
        "sonotap-reader",
        &[
            "sonotap-protocol",
            "sonotap-disk",
            "sonotap-modem",
            "sonotap-audio",
            "sonotap-qr",
        ],
    ),
    (
        "sonotap",
        &[
            "sonotap-protocol",
            "sonotap-disk",
            "sonotap-modem",
            "sonotap-audio",
            "sonotap-qr",
            "sonotap-reader",
            "sonotap-hub",
            "sonotap-wallet",
            "sonotap-powercut",
        ],
    ),
];

/// Crates that do I/O or run an async runtime: never in the protocol crate,
/// which a phone or a hub in another stack builds on.
const IO_CRATES: &[&str] = &[
    "axum",
    "cpal",
    "hound",
    "hyper",
    "hyper-util",
    "libc",
    "postgres",
    "rusqlite",
    "rusqlite_migration",
    "serialport",
    "tokio",
    "tokio-rustls",
    "ureq",
];

/// Every workspace package and its dependencies as (name, kind), kind being
/// "normal", "dev" or "build".
fn manifests() -> BTreeMap<String, Vec<(String, String)>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata runs");
    assert!(
        out.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: Value = serde_json::from_slice(&out.stdout).expect("cargo metadata is JSON");
    let packages = meta["packages"].as_array().expect("packages");
    packages
        .iter()
        .map(|p| {
            let deps = p["dependencies"]
                .as_array()
                .expect("dependencies")
                .iter()
                .map(|d| {
                    let kind = d["kind"].as_str().unwrap_or("normal").to_owned();
                    (d["name"].as_str().expect("name").to_owned(), kind)
                })
                .collect();
            (p["name"].as_str().expect("name").to_owned(), deps)
        })
        .collect()
}

#[test]
fn every_workspace_crate_has_its_place_in_the_layers() {
    let found: Vec<String> = manifests().into_keys().collect();
    let mut listed: Vec<String> = ALLOWED.iter().map(|(n, _)| (*n).to_owned()).collect();
    listed.sort();
    assert_eq!(
        found, listed,
        "a crate was added or removed: give it a row in ALLOWED and in docs/architecture.md"
    );
}

#[test]
fn crates_depend_only_on_the_layers_below_them() {
    let manifests = manifests();
    for (name, allowed) in ALLOWED {
        let deps = &manifests[*name];
        for (dep, kind) in deps {
            if !dep.starts_with("sonotap") {
                continue;
            }
            let test_support = kind == "dev" && dep == "sonotap-protocol";
            assert!(
                test_support || allowed.contains(&dep.as_str()),
                "{name} depends on {dep} ({kind}), which docs/architecture.md does not allow"
            );
        }
    }
}

#[test]
fn the_protocol_crate_does_no_io_and_runs_no_runtime() {
    let manifests = manifests();
    for (dep, kind) in &manifests["sonotap-protocol"] {
        assert!(
            kind == "dev" || !IO_CRATES.contains(&dep.as_str()),
            "sonotap-protocol depends on {dep}: I/O belongs in the crates above it"
        );
    }
}
