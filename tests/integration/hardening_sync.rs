//! Issue 13, items 4, 5, 8 and 10, against a real `hub serve` process and
//! the real `sonotap reader sync`: the hub's time taken only when signed,
//! key sets never rolled back, reads of the deny list and keys only by
//! registered readers, and sequence numbers past 2^63 − 1 refused once.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use ed25519_dalek::Signer;
use sonotap_disk::keys::{Role, SecretKey};
use sonotap_hub::Hub;
use sonotap_protocol::wire::{
    BATCH_DOMAIN, DenyEntry, DenyReason, KeySet, MAX_SEQ, SignedRequest, TimeStatement,
};
use sonotap_reader::reader::Reader;
use sonotap_wallet::Wallet;

use crate::sync::{first_batch, queue};
use crate::util::{HubProcess, Scratch, forward, last_json, serve_one_by_one, stderr, unsynced};

const NOW: u64 = 1_790_000_000;

/// Hub `hub` and reader `ra` (gate-a) registered with it.
fn site() -> Scratch {
    let s = Scratch::new();
    s.ok(&["hub", "init", "--data", "hub"]);
    s.reader_init("ra", "gate-a", &[]);
    s.register_reader("ra", "gate-a");
    s
}

/// `reader sync` of `reader` to `url` with `--attempts ATTEMPTS` fails
/// (exit 1): its standard error.
fn failed_sync(s: &Scratch, reader: &str, url: &str, attempts: &str) -> String {
    let out = s.reader_sync(reader, url, &["--attempts", attempts]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    stderr(&out)
}

/// Sends `body` to `url` (POST when given) and returns the status and JSON answer.
fn request(url: &str, body: Option<&[u8]>, headers: &[(&str, &str)]) -> (u16, serde_json::Value) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    let response = match body {
        Some(body) => {
            // As the reader's client sends it (the hub answers 415 otherwise).
            let mut r = agent
                .post(url)
                .header("content-type", "application/octet-stream");
            for (k, v) in headers {
                r = r.header(*k, *v);
            }
            r.send(body)
        }
        None => {
            let mut r = agent.get(url);
            for (k, v) in headers {
                r = r.header(*k, *v);
            }
            r.call()
        }
    };
    let mut response = response.expect("an answer");
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_string().expect("body");
    (
        status,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
    )
}

/// A proxy to the hub at `upstream` that answers every upload itself with
/// 400 `malformed` (counting them) and passes every other request through.
fn refusing_proxy(upstream: String, posts: Arc<AtomicUsize>) -> String {
    serve_one_by_one(move |request| {
        if request.starts_with(b"POST /v1/batches") {
            posts.fetch_add(1, Ordering::SeqCst);
            let body = r#"{"error":"malformed","message":"invalid batch: past 2^63-1"}"#;
            Some(
                format!(
                    "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                )
                .into_bytes(),
            )
        } else {
            forward(&upstream, request, Duration::from_secs(5))
        }
    })
}

#[test]
fn issue13_10_batch_with_sequence_numbers_past_2_63_is_refused_once_and_not_retried() {
    let s = site();
    queue(&s, "ra", 2);
    let hub = HubProcess::start(&s, 0);
    // Reader A's genuine batch, moved to 2^63 - 1 and 2^63 and re-signed with
    // A's key: what a reader whose counter ran past SQLite's range would send.
    let batch = first_batch(&s, "ra");
    let mut bytes = batch.encode().expect("encode");
    let at = BATCH_DOMAIN.len() + 1 + "gate-a".len();
    bytes[at..at + 8].copy_from_slice(&MAX_SEQ.to_be_bytes());
    let key = SecretKey::read(&s.path("ra/reader.key"), Role::Reader).expect("key");
    let signed = bytes.len() - 64;
    let signature = key.signing_key().sign(&bytes[..signed]).to_bytes();
    bytes[signed..].copy_from_slice(&signature);

    let (status, body) = request(&format!("{}/v1/batches", hub.url), Some(&bytes), &[]);
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"], "malformed", "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap_or_default()
            .contains("2^63-1"),
        "{body}"
    );
    // Nothing stored, nothing clamped: the hub's report shows no record and no gap.
    let report: serde_json::Value =
        serde_json::from_str(&s.ok(&["hub", "report", "--data", "hub", "--json"])).expect("json");
    let row = report["readers"]
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["reader"] == "gate-a"))
        .expect("row");
    assert_eq!(row["records"], 0, "{report}");
    assert_eq!(row["gaps"].as_array().map(Vec::len), Some(0), "{report}");

    // The reader's client treats a 400 as final: one upload, no retry loop,
    // however many attempts it was given; the records stay queued.
    let posts = Arc::new(AtomicUsize::new(0));
    let proxy = refusing_proxy(
        hub.url.trim_start_matches("http://").to_owned(),
        Arc::clone(&posts),
    );
    let err = failed_sync(&s, "ra", &proxy, "5");
    assert!(err.contains("not retried"), "{err}");
    assert_eq!(posts.load(Ordering::SeqCst), 1, "{err}");
    assert_eq!(unsynced(&s, "ra"), 2);
}

/// A proxy to the hub at `upstream` that passes each request through and
/// lets `rewrite` change the answer (`request`, `response` → what the
/// reader gets).
fn rewriting_proxy(
    upstream: String,
    rewrite: impl Fn(&[u8], Vec<u8>) -> Vec<u8> + Send + Sync + 'static,
) -> String {
    serve_one_by_one(move |request| {
        forward(&upstream, request, Duration::from_secs(10)).map(|r| rewrite(request, r))
    })
}

/// An HTTP 200 answer with a JSON body.
fn json_response(body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// The body of an HTTP message.
fn body_of(message: &[u8]) -> serde_json::Value {
    let end = message
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("head");
    serde_json::from_slice(&message[end + 4..]).expect("json body")
}

/// The hub's answer to an upload with its acknowledgement broken.
fn with_a_broken_ack(response: &[u8]) -> Vec<u8> {
    let mut answer = body_of(response);
    answer["ack"] = serde_json::Value::String("00".into());
    json_response(&answer.to_string())
}

/// The answer to a time request with `nonce`: the time `AHEAD_MS` ahead,
/// signed by `signer`.
fn time_ahead(nonce: [u8; 16], signer: &SecretKey) -> Vec<u8> {
    let ahead = now_ms() + AHEAD_MS;
    let st = hex::encode(TimeStatement::sign(nonce, ahead, 1, signer.signing_key()).encode());
    json_response(&format!("{{\"unix_ms\":{ahead},\"statement\":\"{st}\"}}"))
}

/// The nonce of a `GET /v1/time?nonce=HEX` request.
fn time_nonce(request: &[u8]) -> Option<[u8; 16]> {
    let line = String::from_utf8_lossy(request);
    let rest = line.strip_prefix("GET /v1/time?nonce=")?;
    let hex_nonce: String = rest.chars().take(32).collect();
    hex::decode(hex_nonce).ok()?.try_into().ok()
}

fn now_ms() -> u64 {
    u64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_millis(),
    )
    .expect("ms")
}

fn stored_offset(s: &Scratch, reader: &str) -> i64 {
    Reader::open(&s.path(reader))
        .expect("reader")
        .sync_state()
        .expect("state")
        .clock_offset_ms
}

const AHEAD_MS: u64 = 3_500_000;

#[test]
fn issue13_04_hub_time_moves_the_reader_clock_only_when_signed_fresh_and_the_sync_succeeds() {
    let s = site();
    queue(&s, "ra", 3);
    let hub = HubProcess::start(&s, 0);
    let upstream = hub.url.trim_start_matches("http://").to_owned();
    let issuer = Arc::new(SecretKey::read(&s.path("hub/issuer.key"), Role::Issuer).expect("key"));
    let forger = Arc::new(SecretKey::generate(Role::Issuer, Some(1)).expect("key"));
    let recorded = Arc::new(std::sync::Mutex::new(None::<String>));

    // 1. Something between reader and hub that says the hub is 3,500 s
    // ahead: unsigned, signed by a key the reader does not trust, or a
    // genuine statement recorded earlier (another nonce). Each time the
    // acknowledgement is also broken, as in the issue.
    for lie in ["unsigned", "forged", "replayed"] {
        let (forger, recorded, issuer) = (
            Arc::clone(&forger),
            Arc::clone(&recorded),
            Arc::clone(&issuer),
        );
        let proxy = rewriting_proxy(upstream.clone(), move |request, response| {
            if let Some(nonce) = time_nonce(request) {
                let ahead = now_ms() + AHEAD_MS;
                let statement = match lie {
                    "unsigned" => None,
                    "forged" => Some(TimeStatement::sign(nonce, ahead, 1, forger.signing_key())),
                    _ => Some(TimeStatement::sign(
                        [0xAA; 16],
                        ahead,
                        1,
                        issuer.signing_key(),
                    )),
                };
                let body = match statement {
                    None => format!("{{\"unix_ms\":{ahead}}}"),
                    Some(st) => {
                        let hex_st = hex::encode(st.encode());
                        *recorded.lock().expect("lock") = Some(hex_st.clone());
                        format!("{{\"unix_ms\":{ahead},\"statement\":\"{hex_st}\"}}")
                    }
                };
                return json_response(&body);
            }
            if request.starts_with(b"POST /v1/batches") {
                return with_a_broken_ack(&response);
            }
            response
        });
        let err = failed_sync(&s, "ra", &proxy, "1");
        assert!(err.contains("cannot be trusted"), "{lie}: {err}");
        assert_eq!(stored_offset(&s, "ra"), 0, "{lie}");
    }

    // 2. Even a genuine signed statement 3,500 s ahead is not taken from a
    // sync that then fails (a bad acknowledgement).
    let signer = Arc::clone(&issuer);
    let ahead_then_bad_ack = rewriting_proxy(upstream.clone(), move |request, response| {
        if let Some(nonce) = time_nonce(request) {
            return time_ahead(nonce, &signer);
        }
        if request.starts_with(b"POST /v1/batches") {
            return with_a_broken_ack(&response);
        }
        response
    });
    failed_sync(&s, "ra", &ahead_then_bad_ack, "1");
    assert_eq!(stored_offset(&s, "ra"), 0);
    assert_eq!(unsynced(&s, "ra"), 3);

    // 3. A sync that succeeds with a signed time 3,500 s ahead moves the
    // offset by at most 5 minutes; the honest hub then brings it back.
    let signer = Arc::clone(&issuer);
    // (A hub 3,500 s ahead: the reader stamps its signed reads with that
    // time, so this hub answers them itself, with the genuine key set.)
    let set = Hub::open(&s.path("hub"))
        .expect("hub")
        .key_set()
        .expect("key set");
    let keys = format!(
        "{{\"version\":{},\"key_set\":\"{}\"}}",
        set.version,
        hex::encode(set.encode().expect("encode"))
    );
    let ahead = rewriting_proxy(upstream, move |request, response| {
        if let Some(nonce) = time_nonce(request) {
            return time_ahead(nonce, &signer);
        }
        if request.starts_with(b"GET /v1/keys") {
            return json_response(&keys);
        }
        if request.starts_with(b"GET /v1/deny") {
            return json_response(r#"{"version":0,"entries":[],"more":false}"#);
        }
        response
    });
    let out = s.reader_sync("ra", &ahead, &["--attempts", "1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report = last_json(&out);
    assert_eq!(report["records"], 3, "{report}");
    let measured = report["hub_clock_offset_ms"].as_i64().expect("measured");
    assert!((measured - AHEAD_MS as i64).abs() < 60_000, "{report}");
    assert_eq!(report["clock_offset_ms"], 300_000, "{report}");
    assert_eq!(stored_offset(&s, "ra"), 300_000);

    let out = s.reader_sync("ra", &hub.url, &["--attempts", "1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stored_offset(&s, "ra").abs() < 60_000,
        "{}",
        stored_offset(&s, "ra")
    );
}

#[test]
fn issue13_05_an_old_key_set_announced_as_a_new_version_is_refused() {
    let s = site();
    let hub = HubProcess::start(&s, 0);
    // The reader holds keys {1, 2} at version 2 (a rotation it adopted).
    let issuer = SecretKey::read(&s.path("hub/issuer.key"), Role::Issuer).expect("key");
    let second = SecretKey::generate(Role::Issuer, Some(2)).expect("key");
    let v2 = KeySet::sign(
        2,
        vec![
            (1, issuer.public().to_bytes()),
            (2, second.public().to_bytes()),
        ],
        &[(1, issuer.signing_key()), (2, second.signing_key())],
    )
    .expect("set");
    {
        let mut reader = Reader::open(&s.path("ra")).expect("reader");
        let keys = v2
            .verify(&reader.trusted_keys().expect("keys"))
            .expect("v2");
        reader.adopt_keys(&keys, 2, NOW).expect("adopt v2");
    }
    // The hub's genuine version-1 set {1}, announced as version 99.
    let proxy = rewriting_proxy(
        hub.url.trim_start_matches("http://").to_owned(),
        |request, response| {
            if request.starts_with(b"GET /v1/keys") {
                let mut answer = body_of(&response);
                answer["version"] = 99.into();
                return json_response(&answer.to_string());
            }
            response
        },
    );
    let err = failed_sync(&s, "ra", &proxy, "1");
    assert!(err.contains("refusing to roll back"), "{err}");
    let reader = Reader::open(&s.path("ra")).expect("reader");
    let state = reader.sync_state().expect("state");
    assert_eq!(state.keyset_version, 2);
    let keys = reader.trusted_keys().expect("keys");
    assert!(keys.get(1).is_some() && keys.get(2).is_some(), "{keys:?}");
}

/// `Authorization: Sonotap HEX` for reader `id` signing with `key`.
fn auth(id: &str, key: &SecretKey, target: &str, time_ms: u64) -> String {
    let request =
        SignedRequest::sign(id, time_ms, [3; 16], "GET", target, key.signing_key()).expect("sign");
    format!("Sonotap {}", hex::encode(request.encode().expect("encode")))
}

#[test]
fn issue13_08_deny_list_and_keys_are_read_only_by_registered_readers_and_carry_no_free_text() {
    let s = site();
    s.ok(&["wallet", "new", "--dir", "w"]);
    let wallet = Wallet::open(&s.path("w")).expect("wallet").id();
    let wallet = hex::encode(wallet.0);
    let denied = s.ok(&[
        "hub",
        "deny",
        "--data",
        "hub",
        "--wallet",
        &wallet,
        "--reason",
        "lost_or_stolen",
        "--note",
        "Rider Jane Doe, phone 555-0100",
    ]);
    assert!(denied.contains("lost_or_stolen"), "{denied}");
    // Free text as a reason is refused, pointing at --note.
    let out = s.run(&[
        "hub", "deny", "--data", "hub", "--wallet", &wallet, "--reason", "Jane Doe",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--note"), "{}", stderr(&out));

    let hub = HubProcess::start(&s, 0);
    let a_key = SecretKey::read(&s.path("ra/reader.key"), Role::Reader).expect("key");
    let stranger = SecretKey::generate(Role::Reader, None).expect("key");
    let now = now_ms();
    for path in ["/v1/deny?since=0", "/v1/keys"] {
        let url = format!("{}{path}", hub.url);
        let refusals = [
            request(&url, None, &[]),
            request(&url, None, &[("authorization", "Sonotap 00")]),
            // A registered id signed with another key; an unregistered id.
            request(
                &url,
                None,
                &[("authorization", &auth("gate-a", &stranger, path, now))],
            ),
            request(
                &url,
                None,
                &[("authorization", &auth("gate-x", &stranger, path, now))],
            ),
            // Gate-a's own signature, but stale, or for another path.
            request(
                &url,
                None,
                &[(
                    "authorization",
                    &auth("gate-a", &a_key, path, now - 3_600_000),
                )],
            ),
            request(
                &url,
                None,
                &[("authorization", &auth("gate-a", &a_key, "/v1/x", now))],
            ),
        ];
        for (status, body) in &refusals {
            assert_eq!(*status, 401, "{path}: {body}");
            assert_eq!(body, &refusals[0].1, "{path}: one answer for every refusal");
        }
        assert_eq!(refusals[0].1["error"], "unauthenticated");
    }
    // Reader A's signed request is answered, with the reason code only.
    let path = "/v1/deny?since=0";
    let (status, body) = request(
        &format!("{}{path}", hub.url),
        None,
        &[("authorization", &auth("gate-a", &a_key, path, now))],
    );
    assert_eq!(status, 200, "{body}");
    let entries = body["entries"].as_array().expect("entries");
    assert_eq!(entries.len(), 1, "{body}");
    let bytes = hex::decode(entries[0].as_str().expect("hex")).expect("hex");
    assert!(
        !String::from_utf8_lossy(&bytes).contains("Jane")
            && !String::from_utf8_lossy(&bytes).contains("555"),
        "free text leaked: {body}"
    );
    let entry = DenyEntry::decode(&bytes).expect("entry");
    assert_eq!(entry.reason, DenyReason::LostOrStolen);
    // The note stays at the hub.
    let conn = rusqlite::Connection::open(s.path("hub/hub.db")).expect("open");
    let note: String = conn
        .query_row(
            "SELECT evidence FROM deny_entries WHERE version = 1",
            [],
            |r| r.get(0),
        )
        .expect("note");
    assert_eq!(note, "Rider Jane Doe, phone 555-0100");
    // Health and time stay public.
    assert_eq!(request(&format!("{}/v1/health", hub.url), None, &[]).0, 200);
    assert_eq!(request(&format!("{}/v1/time", hub.url), None, &[]).0, 200);

    // The real reader signs its reads and applies the entry.
    let out = s.reader_sync("ra", &hub.url, &["--attempts", "1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report = last_json(&out);
    assert_eq!(report["deny_entries"], 1, "{report}");
    assert_eq!(report["deny_version"], 1, "{report}");
}

#[test]
fn issue13_08_unknown_reader_and_bad_signature_uploads_get_one_identical_answer() {
    let s = site();
    queue(&s, "ra", 2);
    s.reader_init("rc", "gate-c", &[]);
    queue(&s, "rc", 2);
    let hub = HubProcess::start(&s, 0);
    let batch = first_batch(&s, "ra");
    // Gate-a's records signed by gate-c's key (a bad signature for a
    // registered id), and gate-c's own batch (an id not registered).
    let c_key = SecretKey::read(&s.path("rc/reader.key"), Role::Reader).expect("key");
    let forged = sonotap_protocol::wire::Batch::seal(
        "gate-a",
        1,
        batch.prev_hash,
        batch.records,
        NOW,
        c_key.signing_key(),
    )
    .expect("seal");
    let unknown = first_batch(&s, "rc");
    let url = format!("{}/v1/batches", hub.url);
    let bad_signature = request(&url, Some(&forged.encode().expect("encode")), &[]);
    let unknown_reader = request(&url, Some(&unknown.encode().expect("encode")), &[]);
    assert_eq!(bad_signature.0, 403, "{}", bad_signature.1);
    assert_eq!(bad_signature, unknown_reader);
    assert_eq!(bad_signature.1["error"], "refused");
    let text = bad_signature.1.to_string();
    assert!(
        !text.contains("gate-") && !text.contains("registered with"),
        "{text}"
    );

    // The real reader reports the refusal, does not retry it, keeps its records.
    let err = failed_sync(&s, "rc", &hub.url, "3");
    assert!(
        err.contains("refused") && err.contains("not retried"),
        "{err}"
    );
    assert_eq!(unsynced(&s, "rc"), 2);
}
