//! The client against a tiny HTTP server on 127.0.0.1: an honest hub, and
//! hubs that answer garbage, too much, a refusal, or nothing at all. Each
//! must end in a clear error, never a panic or a hang.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sonotap_protocol::testkit::{self, NOW};
use sonotap_protocol::token::CredentialTerms;
use sonotap_protocol::wire::{
    AccountState, EntryKind, RenewalNote, Renewed, Statement, StatementEntry, WalletAsk,
    WalletRequest,
};

use super::*;
use crate::STATE_FILE;

const CODE: &str = "ABCDEFGHJKLMNPQR";

/// What the fake hub says to one request: the whole HTTP answer, or
/// `None` to hold the connection without a word.
type Answer = Option<Vec<u8>>;

/// Serves `answer(path, body)` on 127.0.0.1, one request per connection
/// (`Connection: close`); `/v1/time` is answered with the real time unless
/// `answer` handles it. Returns the base URL.
fn fake_hub(answer: impl Fn(&str, &[u8]) -> Option<Answer> + Send + Sync + 'static) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let answer = Arc::new(answer);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let answer = Arc::clone(&answer);
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream);
                let mut line = String::new();
                let _ = reader.read_line(&mut line);
                let path = line.split(' ').nth(1).unwrap_or("").to_owned();
                let mut length = 0usize;
                loop {
                    let mut header = String::new();
                    if reader.read_line(&mut header).unwrap_or(0) == 0 || header == "\r\n" {
                        break;
                    }
                    if let Some((name, value)) = header.split_once(':')
                        && name.eq_ignore_ascii_case("content-length")
                    {
                        length = value.trim().parse().unwrap_or(0);
                    }
                }
                let mut body = vec![0; length.min(1 << 16)];
                let _ = reader.read_exact(&mut body);
                let reply = match answer(&path, &body) {
                    Some(reply) => reply,
                    None if path == "/v1/time" => {
                        Some(json(200, &[], &format!("{{\"unix_ms\":{}}}", now_ms())))
                    }
                    None => Some(json(
                        404,
                        &[],
                        "{\"error\":\"not_found\",\"message\":\"?\"}",
                    )),
                };
                let mut stream = reader.into_inner();
                match reply {
                    Some(bytes) => {
                        let _ = stream.write_all(&bytes);
                    }
                    // A hub that never answers: hold the connection open.
                    None => std::thread::sleep(Duration::from_secs(60)),
                }
            });
        }
    });
    url
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64
}

fn http(status: u16, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (name, value) in headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str("\r\n");
    let mut out = out.into_bytes();
    out.extend_from_slice(body);
    out
}

fn json(status: u16, headers: &[(&str, &str)], body: &str) -> Vec<u8> {
    let mut all = vec![("Content-Type", "application/json")];
    all.extend_from_slice(headers);
    http(status, &all, body.as_bytes())
}

/// The request a fake hub received, checked as the real hub would.
fn checked(body: &[u8]) -> WalletRequest {
    let request = WalletRequest::decode(body).expect("a wallet request");
    request.verify(now_ms()).expect("signed and on time");
    request
}

/// The testkit issuer's renewal for the wallet that sent `request`.
fn renewal_for(request: &WalletRequest, highest: u32) -> Renewed {
    let terms = CredentialTerms {
        wallet_key: request.wallet_key,
        ..testkit::terms()
    };
    let credential = terms.sign(&testkit::issuer()).expect("terms");
    Renewed {
        credential,
        note: RenewalNote::sign(&credential, highest, NOW, &testkit::issuer()),
    }
}

fn statement_for(request: &WalletRequest, nonce: [u8; 16]) -> Statement {
    let WalletAsk::Statement { before } = request.ask else {
        panic!("not a statement request: {:?}", request.ask);
    };
    Statement {
        nonce,
        wallet: request.wallet(),
        at: NOW,
        state: AccountState::Open,
        currency: 978,
        balance: 750,
        credit_line: 0,
        exposure: 250,
        next_before: if before == 0 { 2 } else { 0 },
        entries: vec![StatementEntry {
            id: 3,
            kind: EntryKind::Charge,
            amount: -250,
            at: NOW - 60,
            source: "gate-1".into(),
            seq: 17,
        }],
        key_id: 0,
        signature: [0; 64],
    }
    .sign(1, &testkit::issuer())
    .expect("sign")
}

fn hex_json(field: &str, bytes: &[u8]) -> Vec<u8> {
    json(
        200,
        &[],
        &format!("{{\"{field}\":\"{}\"}}", hex::encode(bytes)),
    )
}

fn new_wallet() -> (tempfile::TempDir, PathBuf, Wallet) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("w");
    let wallet = Wallet::create(&dir).expect("create");
    (tmp, dir, wallet)
}

/// A wallet that trusts the testkit issuer (its first renewal done).
fn renewed_wallet() -> (tempfile::TempDir, PathBuf, Wallet) {
    let (tmp, dir, mut wallet) = new_wallet();
    let request = wallet
        .request(WalletAsk::Renew, now_ms(), [0; 16])
        .expect("sign");
    wallet
        .install_renewed(&renewal_for(&request, 0))
        .expect("renewal");
    (tmp, dir, wallet)
}

fn client(url: &str) -> HubClient {
    let options = HubOptions {
        ca: None,
        timeout: Duration::from_secs(2),
    };
    HubClient::new(url, &options).expect("client")
}

fn bad_answer(result: Result<impl std::fmt::Debug, OnlineError>, says: &str) {
    match result {
        Err(e @ OnlineError::BadAnswer { .. }) => {
            assert!(e.to_string().contains(says), "{e}");
        }
        other => panic!("expected a bad answer saying {says:?}, got {other:?}"),
    }
}

#[test]
fn issue18_enrol_renew_and_statement_through_an_honest_hub_are_verified_and_installed() {
    let url = fake_hub(|path, body| {
        Some(Some(match path {
            "/v1/wallet/enrol" => {
                let request = checked(body);
                assert_eq!(request.ask, WalletAsk::Enrol { code: CODE.into() });
                json(
                    200,
                    &[],
                    "{\"status\":\"enrolled\",\"account_currency\":978}",
                )
            }
            "/v1/wallet/renew" => {
                let request = checked(body);
                assert_eq!(request.ask, WalletAsk::Renew);
                hex_json("renewed", &renewal_for(&request, 7).encode())
            }
            "/v1/wallet/statement" => {
                let request = checked(body);
                let statement = statement_for(&request, request.nonce);
                hex_json("statement", &statement.encode().expect("encode"))
            }
            _ => return None,
        }))
    });
    let (_tmp, dir, mut wallet) = new_wallet();
    let hub = client(&format!("{url}/"));
    let enrolled = hub
        .enrol(&mut wallet, "abcd-efgh-jklm-npqr")
        .expect("enrol");
    assert_eq!(
        enrolled,
        Enrolled {
            hub: url.clone(),
            account_currency: Some(978)
        }
    );
    let installed = hub.renew(&mut wallet).expect("renew");
    assert_eq!((installed.counter_before, installed.counter), (0, 7));
    let statement = hub.statement(&wallet, 0).expect("statement");
    assert_eq!((statement.balance, statement.next_before), (750, 2));
    assert_eq!(statement.entries[0].source, "gate-1");
    let reopened = Wallet::open(&dir).expect("reopen");
    assert_eq!(reopened.hub(), Some(url.as_str()));
    assert_eq!(reopened.trusted_keys(), &testkit::keys());
    assert_eq!(reopened.credential(), wallet.credential());
}

#[test]
fn issue18_garbled_json_wrong_hex_and_undecodable_renewals_change_nothing() {
    // Each renewal request gets the next kind of garbage, and the error must say so.
    let garbage = [
        "EOF while parsing",
        "invalid type",
        "renewed is not hex",
        "truncated",
        "not UTF-8",
        "bad signature",
    ];
    let asked = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&asked);
    let url = fake_hub(move |path, body| {
        if path != "/v1/wallet/renew" {
            return None;
        }
        let renewal = renewal_for(&checked(body), 0).encode();
        Some(Some(match count.fetch_add(1, Ordering::SeqCst) {
            0 => json(200, &[], "{\"renewed\": "),
            1 => json(200, &[], "{\"renewed\": 5}"),
            2 => json(200, &[], "{\"renewed\": \"zz\"}"),
            3 => hex_json("renewed", &renewal[..renewal.len() - 1]),
            4 => http(200, &[], &[0xff, 0xfe, 0x00]),
            _ => {
                let mut wrong = renewal.clone();
                *wrong.last_mut().expect("bytes") ^= 1;
                hex_json("renewed", &wrong)
            }
        }))
    });
    let (_tmp, dir, mut wallet) = new_wallet();
    let before = fs_state(&dir);
    let hub = client(&url);
    for says in garbage {
        let e = match hub.renew(&mut wallet) {
            Err(e) => e.to_string(),
            Ok(installed) => panic!("installed garbage: {installed:?}"),
        };
        assert!(e.contains(says), "expected {says:?}: {e}");
        assert!(e.contains("nothing was"), "{e}");
    }
    assert_eq!(asked.load(Ordering::SeqCst), garbage.len());
    assert_eq!(fs_state(&dir), before);
    assert!(wallet.credential().is_none());
    assert!(wallet.trusted_keys().is_empty());
}

fn fs_state(dir: &std::path::Path) -> Vec<u8> {
    std::fs::read(dir.join(STATE_FILE)).expect("state")
}

#[test]
fn issue18_a_statement_for_another_nonce_or_wallet_or_before_any_renewal_is_refused() {
    let asked = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&asked);
    let url = fake_hub(move |path, body| {
        if path != "/v1/wallet/statement" {
            return None;
        }
        let request = checked(body);
        let statement = match count.fetch_add(1, Ordering::SeqCst) {
            0 => statement_for(&request, [0xAA; 16]),
            _ => {
                let mut other = statement_for(&request, request.nonce);
                other.wallet = sonotap_protocol::token::WalletId([3; 8]);
                other.sign(1, &testkit::issuer()).expect("sign")
            }
        };
        Some(Some(hex_json(
            "statement",
            &statement.encode().expect("encode"),
        )))
    });
    let (_tmp, _dir, wallet) = renewed_wallet();
    let hub = client(&url);
    for says in ["another nonce", "another wallet"] {
        let e = hub.statement(&wallet, 0).expect_err("refused").to_string();
        assert!(
            e.contains("cannot be used") && e.contains(says),
            "{says}: {e}"
        );
    }

    // A wallet that never renewed knows no key to check a statement by:
    // it does not even ask.
    let (_tmp, _dir, fresh) = new_wallet();
    assert!(matches!(
        client("http://127.0.0.1:9").statement(&fresh, 0),
        Err(OnlineError::NoIssuerKey)
    ));
}

#[test]
fn issue18_an_oversize_answer_is_cut_off_and_refused() {
    let url = fake_hub(|path, _| match path {
        "/v1/wallet/renew" => {
            let huge = format!("{{\"renewed\":\"{}\"}}", "0".repeat(400 * 1024));
            Some(Some(json(200, &[], &huge)))
        }
        _ => None,
    });
    let (_tmp, _dir, mut wallet) = new_wallet();
    bad_answer(client(&url).renew(&mut wallet), "larger than 256 KiB");
}

#[test]
fn issue18_refusals_carry_the_hubs_words_and_a_429_its_retry_after() {
    let url = fake_hub(|path, _| {
        Some(Some(match path {
            "/v1/wallet/renew" => json(
                429,
                &[("Retry-After", "17")],
                "{\"error\":\"rate_limited\",\"message\":\"too many renewals\"}",
            ),
            "/v1/wallet/enrol" => json(
                403,
                &[],
                "{\"error\":\"code_not_valid\",\"message\":\"this code \\u001b[31mexpired\"}",
            ),
            "/v1/wallet/statement" => http(502, &[], b"<html>Bad gateway</html>"),
            _ => return None,
        }))
    });
    let (_tmp, dir, mut wallet) = renewed_wallet();
    let before = fs_state(&dir);
    let hub = client(&url);

    let e = hub.renew(&mut wallet).expect_err("429");
    assert!(e.hub_refused(), "{e}");
    assert!(
        matches!(
            e,
            OnlineError::Refused {
                status: 429,
                retry_after_secs: Some(17),
                ..
            }
        ),
        "{e:?}"
    );
    let text = e.to_string();
    assert!(text.contains("too many renewals"), "{text}");
    assert!(text.contains("Retry-After: 17 s"), "{text}");

    let e = hub.enrol(&mut wallet, CODE).expect_err("403").to_string();
    assert!(e.contains("code_not_valid") && e.contains("expired"), "{e}");
    assert!(!e.contains('\u{1b}'), "no terminal escapes: {e:?}");

    let e = hub.statement(&wallet, 0).expect_err("502");
    assert!(!e.hub_refused(), "{e}");
    assert!(e.to_string().contains("Bad gateway"), "{e}");

    assert_eq!(fs_state(&dir), before);
    assert_eq!(wallet.hub(), None, "no enrolment remembered");
}

#[test]
fn issue18_a_hub_that_never_answers_times_out_and_a_closed_port_fails_fast() {
    let url = fake_hub(|path, _| match path {
        "/v1/wallet/renew" => Some(None),
        _ => None,
    });
    let (_tmp, _dir, mut wallet) = new_wallet();
    let started = Instant::now();
    let e = client(&url).renew(&mut wallet).expect_err("timeout");
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );
    assert!(
        matches!(&e, OnlineError::Transport { detail, .. }
            if detail.contains("no answer within 2 s")),
        "{e}"
    );

    // The time request itself never answered.
    let silent = fake_hub(|_, _| Some(None));
    let e = client(&silent).renew(&mut wallet).expect_err("timeout");
    assert!(e.to_string().contains("/v1/time: no answer within"), "{e}");

    let closed = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = closed.local_addr().expect("addr").port();
    drop(closed);
    let e = client(&format!("http://127.0.0.1:{port}"))
        .renew(&mut wallet)
        .expect_err("refused");
    assert!(e.to_string().contains("cannot connect"), "{e}");
}

#[test]
fn issue18_plain_http_to_another_machine_and_a_mistyped_code_send_nothing() {
    let options = HubOptions::default();
    let e = HubClient::new("http://hub.example:8443", &options)
        .err()
        .expect("refused");
    assert!(e.to_string().contains("https://hub.example:8443"), "{e}");
    let (_tmp, _dir, mut wallet) = new_wallet();
    let e = client("http://127.0.0.1:9")
        .enrol(&mut wallet, "ABCD-EFGH")
        .expect_err("code");
    assert!(matches!(e, OnlineError::Code(_)), "{e}");
}
