//! The CLI end to end, as an operator and a rider would use it.

use std::fs;
use std::os::unix::fs::PermissionsExt;

use crate::util::{Scratch, assert_fails, last_json, stderr};

/// Hub, wallet with a credential (limit 500, cap 300, valid 24 h from `FROM`), reader gate-1.
const FROM: u64 = 1_800_000_000;

fn setup() -> Scratch {
    let s = Scratch::new();
    s.provision(Some(FROM));
    for key in ["hub/issuer.pub", "w/wallet.pub", "r/reader.pub"] {
        assert!(s.path(key).exists(), "{key}");
    }
    s
}

fn at(offset: u64) -> String {
    (FROM + offset).to_string()
}

/// `hub issue` from `hub` to the wallet in `wallet`: cap 300, valid from FROM.
fn issue(s: &Scratch, hub: &str, wallet: &str, limit: u32, hours: u32, out: &str) {
    let (limit, hours, from) = (limit.to_string(), hours.to_string(), FROM.to_string());
    let terms = [
        "--limit",
        &limit,
        "--per-payment",
        "300",
        "--valid-hours",
        &hours,
        "--valid-from",
        &from,
    ];
    s.hub_issue(hub, wallet, &terms, out);
}

/// `wallet pay` from the wallet in `dir` at absolute time `when`, with extra options.
fn pay_with(s: &Scratch, dir: &str, amount: u32, when: u64, out: &str, extra: &[&str]) -> String {
    let (amount, when) = (amount.to_string(), when.to_string());
    let mut args = vec![
        "wallet", "pay", "--dir", dir, "--amount", &amount, "--at", &when, "--out", out,
    ];
    args.extend_from_slice(extra);
    s.ok(&args)
}

fn pay(s: &Scratch, amount: u32, offset: u64, out: &str) {
    pay_with(s, "w", amount, FROM + offset, out, &[]);
}

/// `reader accept` at FROM + offset; returns (exit code, JSON).
fn accept(s: &Scratch, token: &str, offset: u64, extra: &[&str]) -> (i32, serde_json::Value) {
    let when = at(offset);
    let mut args = vec!["reader", "accept", "--data", "r", "--at", when.as_str()];
    args.extend_from_slice(extra);
    args.push(token);
    let out = s.run(&args);
    (out.status.code().expect("exit code"), last_json(&out))
}

fn reason(json: &serde_json::Value) -> &str {
    json["reason"].as_str().unwrap_or("<none>")
}

#[test]
fn pay_accept_replay_and_over_limit_through_the_cli() {
    let s = setup();
    pay(&s, 250, 60, "t1");
    let (code, json) = accept(&s, "t1", 61, &[]);
    assert_eq!(code, 0, "{json}");
    assert_eq!(json["decision"], "accept");
    assert_eq!(json["reason"], serde_json::Value::Null);
    assert_eq!(json["amount"], 250);
    assert_eq!(json["counter"], 1);
    assert_eq!(json["seq"], 1);
    assert_eq!(json["wallet"].as_str().map(str::len), Some(16));

    // A rider who taps twice: same token, declined, not charged again.
    let (code, json) = accept(&s, "t1", 62, &[]);
    assert_eq!((code, reason(&json)), (1, "replayed"), "{json}");
    assert_eq!(json["decision"], "decline");

    pay(&s, 250, 120, "t2");
    let (code, json) = accept(&s, "t2", 121, &[]);
    assert_eq!((code, json["seq"].as_u64()), (0, Some(2)), "{json}");
    // 501 > 500: the wallet refuses it unless forced.
    pay_with(&s, "w", 1, FROM + 180, "t3", &["--force"]);
    let (code, json) = accept(&s, "t3", 181, &[]);
    assert_eq!((code, reason(&json)), (1, "over_offline_limit"), "{json}");

    let queue = s.ok(&["reader", "queue", "--data", "r", "--json"]);
    let records: Vec<serde_json::Value> = queue
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert_eq!(records.len(), 2, "declines are not queued: {queue}");
    assert_eq!(records[0]["amount"], 250);
    assert_eq!(records[1]["counter"], 2);
    assert_eq!(records[1]["prev_hash"], records[0]["hash"]);
    let table = s.ok(&["reader", "queue", "--data", "r"]);
    assert!(
        table.contains("2 records kept, 2 waiting for the hub (500 EUR"),
        "{table}"
    );
    let verified = s.ok(&["reader", "verify", "--data", "r"]);
    assert!(
        verified.starts_with("chain intact: 2 records"),
        "{verified}"
    );
}

#[test]
fn flipped_bit_truncated_and_padded_tokens_are_declined() {
    let s = setup();
    pay(&s, 100, 60, "good");
    let good = fs::read(s.path("good")).expect("token");
    assert_eq!(good.len(), 199);

    let mut flipped = good.clone();
    flipped[150] ^= 0x10; // inside the payment part
    fs::write(s.path("flipped"), &flipped).expect("write");
    let (code, json) = accept(&s, "flipped", 61, &[]);
    assert_eq!((code, reason(&json)), (1, "bad_signature"), "{json}");

    let mut sig_flipped = good.clone();
    sig_flipped[60] ^= 0x01; // inside the issuer signature
    fs::write(s.path("sig"), &sig_flipped).expect("write");
    let (code, json) = accept(&s, "sig", 61, &[]);
    assert_eq!((code, reason(&json)), (1, "bad_signature"), "{json}");

    fs::write(s.path("short"), &good[..198]).expect("write");
    let (code, json) = accept(&s, "short", 61, &[]);
    assert_eq!((code, reason(&json)), (1, "malformed"), "{json}");

    let mut padded = good.clone();
    padded.push(0);
    fs::write(s.path("padded"), &padded).expect("write");
    let (code, json) = accept(&s, "padded", 61, &[]);
    assert_eq!((code, reason(&json)), (1, "malformed"), "{json}");

    fs::write(s.path("empty"), b"").expect("write");
    let (code, json) = accept(&s, "empty", 61, &[]);
    assert_eq!((code, reason(&json)), (1, "malformed"), "{json}");

    // None of that consumed the good token.
    let (code, json) = accept(&s, "good", 61, &[]);
    assert_eq!(code, 0, "{json}");
}

#[test]
fn tokens_from_another_issuer_are_declined() {
    let s = setup();
    // Another operator's hub, with the same key id 1 (a forgery under a trusted id)...
    s.ok(&["hub", "init", "--data", "rogue"]);
    // ...and one with key id 2, which gate-1 has never heard of.
    s.ok(&["hub", "init", "--data", "other", "--key-id", "2"]);
    for (hub, expected) in [("rogue", "bad_signature"), ("other", "unknown_issuer_key")] {
        let wallet = format!("w-{hub}");
        s.ok(&["wallet", "new", "--dir", &wallet]);
        issue(&s, hub, &wallet, 500, 24, "c");
        s.ok(&["wallet", "add-credential", "--dir", &wallet, "c"]);
        pay_with(&s, &wallet, 100, FROM + 60, "t", &[]);
        let (code, json) = accept(&s, "t", 61, &[]);
        assert_eq!((code, reason(&json)), (1, expected), "{hub}: {json}");
    }
    // Trusting the second issuer's key (a key rotation) makes its tokens good.
    s.ok(&["reader", "trust", "--data", "r", "other/issuer.pub"]);
    pay_with(&s, "w-other", 100, FROM + 70, "t", &[]);
    let (code, json) = accept(&s, "t", 71, &[]);
    assert_eq!(code, 0, "{json}");
}

#[test]
fn credential_used_after_expiry_or_before_start_is_declined() {
    let s = setup();
    let after = 24 * 3600 + 10;
    pay_with(&s, "w", 100, FROM + after, "late", &["--force"]);
    let (code, json) = accept(&s, "late", after, &[]);
    assert_eq!((code, reason(&json)), (1, "credential_expired"), "{json}");
    // The last second of validity is still good.
    pay(&s, 100, 24 * 3600 - 1, "edge");
    let (code, json) = accept(&s, "edge", 24 * 3600 - 1, &[]);
    assert_eq!(code, 0, "{json}");
    pay_with(&s, "w", 100, FROM - 10, "early", &["--force"]);
    let out = s.run(&[
        "reader",
        "accept",
        "--data",
        "r",
        "--at",
        &(FROM - 10).to_string(),
        "early",
    ]);
    assert_eq!(last_json(&out)["reason"], "credential_not_yet_valid");
}

#[test]
fn clock_skew_window_and_reader_binding() {
    let s = setup();
    pay(&s, 10, 1000, "t");
    let (_, json) = accept(&s, "t", 1000 - 301, &[]);
    assert_eq!(reason(&json), "future_token", "{json}");
    let (_, json) = accept(&s, "t", 1000 + 301, &[]);
    assert_eq!(reason(&json), "stale_token", "{json}");
    let (code, _) = accept(&s, "t", 1000 + 300, &[]);
    assert_eq!(code, 0);

    pay_with(&s, "w", 10, FROM + 1100, "b2", &["--reader", "gate-2"]);
    let (_, json) = accept(&s, "b2", 1100, &[]);
    assert_eq!(reason(&json), "wrong_scope", "{json}");
    pay_with(&s, "w", 10, FROM + 1100, "b1", &["--reader", "gate-1"]);
    let (code, _) = accept(&s, "b1", 1100, &[]);
    assert_eq!(code, 0);
}

#[test]
fn charge_limits_scope_and_deny_list() {
    let s = setup();
    pay_with(&s, "w", 301, FROM + 10, "big", &["--force"]);
    let (_, json) = accept(&s, "big", 10, &[]);
    assert_eq!(reason(&json), "over_payment_cap", "{json}");
    pay(&s, 100, 20, "t");
    let (_, json) = accept(&s, "t", 20, &["--amount", "101"]);
    assert_eq!(reason(&json), "over_payment_cap", "{json}");
    let (code, json) = accept(&s, "t", 20, &["--amount", "80"]);
    assert_eq!((code, json["amount"].as_u64()), (0, Some(80)), "{json}");

    let wallet = json["wallet"].as_str().expect("wallet id").to_string();
    s.ok(&["reader", "deny", "--data", "r", "--wallet", &wallet]);
    // The wallet has authorised 301 + 100 so far; 50 more stays within 500.
    pay(&s, 50, 30, "t");
    let (_, json) = accept(&s, "t", 30, &[]);
    assert_eq!(reason(&json), "wallet_denied", "{json}");
    s.ok(&["reader", "allow", "--data", "r", "--wallet", &wallet]);
    let (code, _) = accept(&s, "t", 30, &[]);
    assert_eq!(code, 0);

    s.reader_init("v", "vend-1", &["--scope", "vending"]);
    // 551 > 500, but a vending reader declines the scope first.
    pay_with(&s, "w", 100, FROM + 40, "t", &["--force"]);
    let out = s.run(&["reader", "accept", "--data", "v", "--at", &at(40), "t"]);
    assert_eq!(last_json(&out)["reason"], "wrong_scope");
}

#[test]
fn hex_tokens_and_standard_input_are_read() {
    let s = setup();
    pay_with(&s, "w", 10, FROM + 5, "t.hex", &["--hex"]);
    let text = fs::read_to_string(s.path("t.hex")).expect("hex");
    assert_eq!(text.trim().len(), 398);
    let (code, json) = accept(&s, "t.hex", 5, &[]);
    assert_eq!(code, 0, "{json}");
    pay(&s, 10, 6, "raw");
    let out = crate::util::sonotap()
        .args(["reader", "accept", "--data", "r", "--at", &at(6), "-"])
        .current_dir(s.dir.path())
        .stdin(fs::File::open(s.path("raw")).expect("token"))
        .output()
        .expect("runs");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(last_json(&out)["counter"], 2);
    let inspect = s.ok(&["token", "inspect", "t.hex"]);
    assert!(inspect.contains("\"counter\":1"), "{inspect}");
}

#[test]
fn environment_errors_exit_2_with_a_clear_message() {
    let s = setup();

    let out = s.run(&["reader", "accept", "--data", "r", "no-such-token"]);
    assert_fails(&out, 2, &["cannot read token file no-such-token"]);

    pay(&s, 10, 5, "t");
    let out = s.run(&["reader", "accept", "--data", "nowhere", "t"]);
    assert_fails(&out, 2, &["sonotap reader init"]);

    // Wrong key type: a wallet key offered as the issuer key.
    let out = s.run(&[
        "reader",
        "init",
        "--data",
        "r2",
        "--id",
        "g",
        "--trust",
        "w/wallet.pub",
    ]);
    assert_fails(
        &out,
        2,
        &["holds a wallet public key, expected an issuer public key"],
    );

    // A secret key other users can read is refused.
    fs::set_permissions(s.path("r/reader.key"), fs::Permissions::from_mode(0o644)).expect("chmod");
    let out = s.run(&["reader", "accept", "--data", "r", "t"]);
    assert_fails(&out, 2, &["chmod 600"]);
    fs::set_permissions(s.path("r/reader.key"), fs::Permissions::from_mode(0o600)).expect("chmod");

    // A corrupt database: an error, not a panic, and not a decline.
    fs::write(s.path("r/reader.db"), vec![0xa5; 4096]).expect("trash");
    let _ = fs::remove_file(s.path("r/reader.db-wal"));
    let _ = fs::remove_file(s.path("r/reader.db-shm"));
    let out = s.run(&["reader", "accept", "--data", "r", "t"]);
    assert_fails(&out, 2, &["corrupt"]);
    assert!(!stderr(&out).contains("panicked"));

    // Usage errors are exit 2 too, and init never replaces a reader.
    assert_eq!(s.run(&["reader", "accept"]).status.code(), Some(2));
    assert_eq!(
        s.run(&["wallet", "pay", "--dir", "w", "--amount", "0", "--out", "x"])
            .status
            .code(),
        Some(2)
    );
    let out = s.run(&["hub", "init", "--data", "hub"]);
    assert_fails(&out, 2, &["refusing to replace"]);
}

#[test]
fn secrets_are_private_and_public_keys_readable() {
    let s = setup();
    for secret in ["hub/issuer.key", "w/wallet.key", "r/reader.key"] {
        let mode = fs::metadata(s.path(secret))
            .expect("exists")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "{secret}");
    }
    for public in ["hub/issuer.pub", "w/wallet.pub", "r/reader.pub"] {
        let text = fs::read_to_string(s.path(public)).expect("exists");
        assert!(text.starts_with("sonotap "), "{public}: {text}");
    }
}

#[test]
fn wallet_counter_survives_and_never_repeats() {
    let s = setup();
    pay(&s, 10, 1, "a");
    pay(&s, 10, 2, "b");
    let show = s.ok(&["wallet", "show", "--dir", "w"]);
    assert!(
        show.contains("\"counter\":2") && show.contains("\"running_total\":20"),
        "{show}"
    );
    // A new credential restarts the running total but not the counter.
    issue(&s, "hub", "w", 900, 48, "cred2");
    s.ok(&["wallet", "add-credential", "--dir", "w", "cred2"]);
    let json: serde_json::Value =
        serde_json::from_str(pay_with(&s, "w", 10, FROM + 3, "c", &[]).trim()).expect("json");
    assert_eq!(
        (json["counter"].as_u64(), json["total_before"].as_u64()),
        (Some(3), Some(0))
    );
}

#[test]
fn demo_runs_on_embedded_defaults() {
    let s = Scratch::new();
    let out = s.ok(&["demo", "--keep", "d"]);
    // The demo itself exits 1 unless every step happened; the lines say who.
    for expected in [
        "ACCEPT  rider 1",
        "DECLINE rider 1  replayed",
        "DECLINE rider 3  over_offline_limit",
        "DECLINE rider 3  bad_signature",
        "DECLINE no wallet malformed",
        "DECLINE rider 2  wallet_denied",
        "ACCEPT  rider 4",
        "relay board: open",
        "the daemon finished, exit status: 0",
        "hub flagged rider 2",
    ] {
        assert!(out.contains(expected), "missing {expected:?} in:\n{out}");
    }
    assert!(s.path("d/gate-1/reader.db").exists());
}

#[test]
fn verify_reports_edited_and_deleted_records_in_the_database() {
    let s = setup();
    for (i, name) in ["a", "b", "c"].iter().enumerate() {
        pay(&s, 10, 10 + i as u64, name);
        assert_eq!(accept(&s, name, 20, &[]).0, 0);
    }
    let verified = s.ok(&["reader", "verify", "--data", "r"]);
    assert!(
        verified.contains("chain intact: 3 records (seq 1..=3)"),
        "{verified}"
    );

    let db = rusqlite::Connection::open(s.path("r/reader.db")).expect("open");
    db.execute("UPDATE records SET amount = 1 WHERE seq = 2", [])
        .expect("edit");
    let out = s.run(&["reader", "verify", "--data", "r"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("record 2 was altered"));

    db.execute("UPDATE records SET amount = 10 WHERE seq = 2", [])
        .expect("restore");
    db.execute("DELETE FROM records WHERE seq = 2", [])
        .expect("delete");
    let out = s.run(&["reader", "verify", "--data", "r"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("gap: record 3 follows record 1"));
}
