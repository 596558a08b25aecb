//! The web wallet: its own tests (`wallet-web/test/*.test.js`, node's
//! built-in runner), run by `cargo test` against this build's `sonotap`, so
//! that the README's one test command covers the phone's code too; and the
//! wallet as a real `hub serve` serves it.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::util::{HubProcess, Scratch};

#[test]
fn the_web_wallets_node_tests_pass() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    // Its one npm package (the QR renderer the wallet vendors, checked
    // against the installed one), as package-lock.json pins it.
    if !root
        .join("wallet-web/node_modules/qrcode-generator")
        .is_dir()
    {
        let status = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--prefix", "wallet-web"])
            .current_dir(root)
            .status()
            .unwrap_or_else(|e| panic!("npm (with node 20 or newer) is needed: {e}"));
        assert!(status.success(), "npm ci in wallet-web/ failed");
    }
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

/// A raw request's status line and headers, lower-cased (for paths an HTTP
/// client would tidy up before sending).
fn raw_get(url: &str, target: &str) -> String {
    let addr = url.trim_start_matches("http://");
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(
        stream,
        "GET {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer.to_lowercase()
}

#[test]
fn issue19_hub_serve_serves_the_wallet_with_the_headers_an_offline_app_needs() {
    let s = Scratch::new();
    s.ok(&["hub", "init", "--data", "hub"]);
    let hub = HubProcess::start(&s, 0);
    let agent = ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .build(),
    );
    let get = |path: &str, etag: Option<&str>| {
        let mut request = agent.get(&format!("{}{path}", hub.url));
        if let Some(tag) = etag {
            request = request.header("If-None-Match", tag);
        }
        let mut answer = request.call().expect("an answer");
        let header = |name: &str| {
            answer
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned()
        };
        let headers = [
            "content-type",
            "content-security-policy",
            "x-content-type-options",
            "cache-control",
            "etag",
            "location",
        ]
        .map(header);
        let body = answer.body_mut().read_to_string().unwrap_or_default();
        (answer.status().as_u16(), headers, body)
    };

    let (status, h, _) = get("/wallet", None);
    assert_eq!((status, h[5].as_str()), (308, "/wallet/"));
    let (status, h, page) = get("/wallet/", None);
    assert_eq!(status, 200);
    assert_eq!(h[0], "text/html; charset=utf-8");
    assert!(
        h[1].starts_with("default-src 'none'; script-src 'self'"),
        "{}",
        h[1]
    );
    assert!(
        !h[1].contains("unsafe"),
        "no inline script or eval: {}",
        h[1]
    );
    assert_eq!((h[2].as_str(), h[3].as_str()), ("nosniff", "no-cache"));
    assert!(page.contains(r#"<script type="module" src="app.js">"#));
    let (status, again, _) = get("/wallet/", Some(&h[4]));
    assert_eq!(status, 304, "the same ETag: not modified");
    assert_eq!(again[4], h[4]);

    for (path, kind) in [
        ("app.js", "text/javascript; charset=utf-8"),
        ("sonotap/modem.js", "text/javascript; charset=utf-8"),
        (
            "vendor/qrcode-generator.mjs",
            "text/javascript; charset=utf-8",
        ),
        ("manifest.webmanifest", "application/manifest+json"),
        ("icon.svg", "image/svg+xml"),
    ] {
        let (status, h, _) = get(&format!("/wallet/{path}"), None);
        assert_eq!((status, h[0].as_str()), (200, kind), "{path}");
    }
    let (_, _, worker) = get("/wallet/sw.js", None);
    assert!(worker.contains("// build "), "the worker names its build");

    // Only the wallet's own files, by exact path: no tests, no notes, no
    // climbing out of the folder, and not to other methods.
    for target in [
        "/wallet/test/protocol.test.js",
        "/wallet/package.json",
        "/wallet/README.md",
        "/wallet/../Cargo.toml",
        "/wallet/%2e%2e/Cargo.toml",
        "/wallet/sonotap/../app.js",
        "/wallet//app.js",
        "/wallet/app.js/",
    ] {
        let answer = raw_get(&hub.url, target);
        assert!(answer.starts_with("http/1.1 404"), "{target}: {answer}");
    }
    let mut posted = agent
        .post(&format!("{}/wallet/app.js", hub.url))
        .send(&b""[..])
        .expect("an answer");
    assert_eq!(posted.status().as_u16(), 404);
    let _ = posted.body_mut().read_to_string();
}
