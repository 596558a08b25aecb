//! Issue 13, item 1 and item 13's HTTP nits, against a real `hub serve`
//! process on 127.0.0.1 driven by raw TCP sockets: idle, slowloris and
//! stalled connections are closed, `Expect: 100-continue` is refused before
//! any `100 Continue`, the connection cap recovers, and every error is JSON.
//! The hub runs with 1–2 s timeouts so each test takes a few seconds.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use sonotap::hub::{Hub, IssueRequest};
use sonotap::reader::Reader;
use sonotap::token::Scope;
use sonotap::wallet::{PayRequest, Wallet};

use crate::util::{HubProcess, Scratch, last_json};

/// Fast limits for tests; the defaults are 10 s.
const FAST: &[&str] = &["--header-timeout", "1s", "--body-timeout", "1s"];
/// The longest any wait in these tests may take.
const BOUND: Duration = Duration::from_secs(15);

fn hub_site() -> Scratch {
    let s = Scratch::new();
    s.ok(&["hub", "init", "--data", "hub"]);
    s
}

fn connect(hub: &HubProcess) -> TcpStream {
    let stream = TcpStream::connect(("127.0.0.1", hub.port)).expect("connect");
    stream.set_read_timeout(Some(BOUND)).expect("timeout");
    stream
}

/// Reads until the hub closes the connection (or `BOUND` passes); returns
/// what came and when the close was seen.
fn read_to_close(stream: &mut TcpStream) -> (Vec<u8>, Instant, bool) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return (got, Instant::now(), true),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return (got, Instant::now(), true);
            }
            Err(_) => return (got, Instant::now(), false), // BOUND passed
        }
    }
}

/// One request with `Connection: close`: status line, and the JSON body.
fn exchange(hub: &HubProcess, head: &str, body: &[u8]) -> (u16, String, serde_json::Value) {
    let mut stream = connect(hub);
    stream.write_all(head.as_bytes()).expect("head");
    stream.write_all(body).expect("body");
    let (got, _, closed) = read_to_close(&mut stream);
    assert!(closed, "the hub answers and closes within {BOUND:?}");
    let text = String::from_utf8_lossy(&got).into_owned();
    let (headers, body) = text.split_once("\r\n\r\n").expect("a full answer");
    let status = headers
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status");
    let json = serde_json::from_str(body)
        .unwrap_or_else(|e| panic!("error body is not JSON ({e}): {text}"));
    (status, headers.to_owned(), json)
}

fn assert_error(json: &serde_json::Value, code: &str) {
    assert_eq!(json["error"], code, "{json}");
    assert!(
        json["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{json}"
    );
}

#[test]
fn issue13_01_idle_connection_is_closed_after_the_header_timeout() {
    let s = hub_site();
    let hub = HubProcess::start_with(&s, FAST);
    let start = Instant::now();
    let mut idle = connect(&hub);
    let (got, at, closed) = read_to_close(&mut idle);
    assert!(closed, "a silent connection is still open after {BOUND:?}");
    assert!(got.is_empty() || String::from_utf8_lossy(&got).contains("408"));
    assert!(
        at - start >= Duration::from_millis(800),
        "closed after {:?}, before the 1 s header timeout",
        at - start
    );
}

#[test]
fn issue13_01_idle_keep_alive_connection_is_closed_after_the_header_timeout() {
    let s = hub_site();
    let hub = HubProcess::start_with(&s, FAST);
    let mut stream = connect(&hub);
    stream
        .write_all(b"GET /v1/health HTTP/1.1\r\nHost: hub\r\n\r\n")
        .expect("request");
    let mut first = [0u8; 12];
    stream.read_exact(&mut first).expect("an answer");
    assert_eq!(&first, b"HTTP/1.1 200");
    // No next request: hyper's header timeout also covers this wait.
    let (_, _, closed) = read_to_close(&mut stream);
    assert!(
        closed,
        "a kept-alive idle connection is still open after {BOUND:?}"
    );
}

#[test]
fn issue13_01_slowloris_header_dribble_is_closed() {
    let s = hub_site();
    let hub = HubProcess::start_with(&s, FAST);
    let mut stream = connect(&hub);
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let start = Instant::now();
    stream
        .write_all(b"GET /v1/health HTTP/1.1\r\n")
        .expect("start");
    let mut buf = [0u8; 256];
    let closed = loop {
        assert!(
            start.elapsed() < BOUND,
            "a header dribble is still served after {BOUND:?}"
        );
        // One header byte every 200 ms, never finishing the head.
        if stream.write_all(b"X").is_err() {
            break true;
        }
        match stream.read(&mut buf) {
            Ok(_) => break true, // 0 (closed) or a 408 before closing
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => break true,
        }
    };
    assert!(closed);
    assert!(start.elapsed() >= Duration::from_millis(800));
}

#[test]
fn issue13_01_stalled_upload_gets_408_and_is_closed() {
    let s = hub_site();
    let hub = HubProcess::start_with(&s, FAST);
    let head = "POST /v1/batches HTTP/1.1\r\nHost: hub\r\n\
                Content-Type: application/octet-stream\r\nContent-Length: 100000\r\n\r\n";
    let mut stream = connect(&hub);
    stream.write_all(head.as_bytes()).expect("head");
    stream.write_all(&[0u8; 1000]).expect("some of the body");
    let (got, _, closed) = read_to_close(&mut stream);
    assert!(closed, "a stalled upload is still open after {BOUND:?}");
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    let json: serde_json::Value = serde_json::from_str(body).expect("JSON body");
    assert_error(&json, "timeout");
}

#[test]
fn issue13_01_expect_continue_with_huge_length_gets_413_and_never_100_continue() {
    let s = hub_site();
    let hub = HubProcess::start_with(&s, FAST);
    let head = "POST /v1/batches HTTP/1.1\r\nHost: hub\r\n\
                Content-Type: application/octet-stream\r\nContent-Length: 104857600\r\n\
                Expect: 100-continue\r\n\r\n";
    let mut stream = connect(&hub);
    stream.write_all(head.as_bytes()).expect("head");
    let (got, _, closed) = read_to_close(&mut stream);
    assert!(closed, "the hub keeps waiting for a refused body");
    let text = String::from_utf8_lossy(&got);
    assert!(!text.contains("100 Continue"), "{text}");
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    let json: serde_json::Value = serde_json::from_str(body).expect("JSON body");
    assert_error(&json, "too_large");
}

/// Reader `r` registered at the hub, holding one accepted 150 payment.
fn reader_with_a_record(s: &Scratch) {
    s.reader_init("r", "gate-1", &[]);
    s.register_reader("r", "gate-1");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let mut hub = Hub::open(&s.path("hub")).expect("hub");
    let mut w = Wallet::create(&s.path("w")).expect("wallet");
    let request = IssueRequest {
        scope: Scope::Transit,
        currency: 978,
        offline_limit: 1000,
        per_payment_cap: 300,
        valid_from: (now - 3600) as u32,
        valid_hours: 48,
    };
    let credential = hub.issue(&w.public_key(), request, now).expect("issue");
    drop(hub);
    std::fs::write(s.path("w.cred"), credential.encode()).expect("write");
    w.add_credential(&s.path("w.cred")).expect("credential");
    let token = w
        .pay(PayRequest {
            amount: 150,
            at: now as u32,
            reader_tag: 0,
        })
        .expect("pay")
        .token
        .encode();
    let mut r = Reader::open(&s.path("r")).expect("reader");
    let outcome = r.present(&token, None, now).expect("present");
    assert!(outcome.decision.is_ok(), "the payment is accepted");
}

#[test]
fn issue13_01_connection_cap_filled_by_idle_connections_recovers_after_their_timeout() {
    let s = hub_site();
    reader_with_a_record(&s);
    let hub = HubProcess::start_with(&s, &["--header-timeout", "2s", "--max-connections", "8"]);
    // Every slot taken by a silent connection, and more waiting behind.
    let mut idle: Vec<TcpStream> = (0..12).map(|_| connect(&hub)).collect();
    let start = Instant::now();
    let (status, _, json) = exchange(
        &hub,
        "GET /v1/health HTTP/1.1\r\nHost: hub\r\nConnection: close\r\n\r\n",
        b"",
    );
    assert_eq!((status, &json["ok"]), (200, &serde_json::json!(true)));
    assert!(
        start.elapsed() >= Duration::from_secs(1),
        "answered after {:?}: the cap of 8 was not in force",
        start.elapsed()
    );
    for stream in &mut idle {
        let (_, _, closed) = read_to_close(stream);
        assert!(closed, "an idle connection outlived the header timeout");
    }
    let out = s.run(&[
        "reader",
        "sync",
        "--data",
        "r",
        "--hub",
        &hub.url,
        "--timeout",
        "10s",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(last_json(&out)["records"], 1);
    let log = std::fs::read_to_string(s.path("hub.stderr")).expect("stderr");
    assert!(log.contains("the cap (--max-connections)"), "{log}");
}

#[test]
fn issue13_13_query_error_is_a_json_error() {
    let s = hub_site();
    let hub = HubProcess::start_with(&s, FAST);
    let (status, _, json) = exchange(
        &hub,
        "GET /v1/deny?since=abc HTTP/1.1\r\nHost: hub\r\nConnection: close\r\n\r\n",
        b"",
    );
    assert_eq!(status, 400);
    assert_error(&json, "malformed");
}

#[test]
fn issue13_13_wrong_method_is_405_with_a_json_error_and_allow() {
    let s = hub_site();
    let hub = HubProcess::start_with(&s, FAST);
    let (status, headers, json) = exchange(
        &hub,
        "DELETE /v1/keys HTTP/1.1\r\nHost: hub\r\nConnection: close\r\n\r\n",
        b"",
    );
    assert_eq!(status, 405);
    assert!(
        headers.to_ascii_lowercase().contains("allow: get"),
        "{headers}"
    );
    assert_error(&json, "method_not_allowed");
}

#[test]
fn issue13_13_upload_that_is_not_octet_stream_is_415() {
    let s = hub_site();
    let hub = HubProcess::start_with(&s, FAST);
    let (status, _, json) = exchange(
        &hub,
        "POST /v1/batches HTTP/1.1\r\nHost: hub\r\nConnection: close\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 3\r\n\r\n",
        b"a=b",
    );
    assert_eq!(status, 415);
    assert_error(&json, "unsupported_media_type");
}

#[test]
fn issue13_13_key_set_the_hub_cannot_sign_is_503_not_400_malformed() {
    let s = hub_site();
    // Every issuer key retired: the hub's own state cannot make a key set.
    let db = rusqlite::Connection::open(s.path("hub/hub.db")).expect("hub.db");
    db.execute("UPDATE issuer_keys SET retired_at = 1", [])
        .expect("retire");
    drop(db);
    let hub = HubProcess::start_with(&s, FAST);
    let (status, _, json) = exchange(
        &hub,
        "GET /v1/keys HTTP/1.1\r\nHost: hub\r\nConnection: close\r\n\r\n",
        b"",
    );
    assert_eq!(status, 503, "{json}");
    assert_error(&json, "hub_unavailable");
}
