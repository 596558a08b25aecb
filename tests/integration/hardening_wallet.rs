//! Issue 13, items 14 to 16, through the real binary: the wallet refuses
//! payments every reader would decline, `wallet add-credential` survives a
//! power cut at any point, and an interrupted `reader init` or `wallet new`
//! can be run again without ever replacing a key that signed something.

use std::fs;
use std::os::unix::fs::PermissionsExt;

use crate::util::{Scratch, assert_fails, last_json, stderr};

/// Credentials are valid from here for 24 hours.
const FROM: u64 = 1_800_000_000;

/// `hub issue` to wallet `w`: limit 1000, 400 a payment, `hours` from FROM.
fn issue(s: &Scratch, hours: &str, out: &str) {
    let from = FROM.to_string();
    let terms = [
        "--limit",
        "1000",
        "--per-payment",
        "400",
        "--valid-hours",
        hours,
        "--valid-from",
        &from,
    ];
    s.hub_issue("hub", "w", &terms, out);
}

/// A hub, wallet `w` holding credential `cred` (limit 1000, cap 400) and reader `r` (gate-1).
fn site() -> Scratch {
    let s = Scratch::new();
    s.ok(&["hub", "init", "--data", "hub"]);
    s.ok(&["wallet", "new", "--dir", "w"]);
    issue(&s, "24", "cred");
    s.ok(&["wallet", "add-credential", "--dir", "w", "cred"]);
    s.reader_init("r", "gate-1", &[]);
    s
}

/// `wallet pay` of `amount` at FROM + `offset` into `out`.
fn pay(s: &Scratch, amount: u32, offset: u64, out: &str, extra: &[&str]) -> std::process::Output {
    let (amount, at) = (amount.to_string(), (FROM + offset).to_string());
    let mut args = vec![
        "wallet", "pay", "--dir", "w", "--amount", &amount, "--at", &at, "--out", out,
    ];
    args.extend_from_slice(extra);
    s.run(&args)
}

/// Pays and requires success; the payment's JSON.
fn paid(s: &Scratch, amount: u32, offset: u64, out: &str) -> serde_json::Value {
    let out_ = pay(s, amount, offset, out, &[]);
    assert!(out_.status.success(), "{}", stderr(&out_));
    last_json(&out_)
}

/// `reader accept` at reader `r` at FROM + `offset`: (exit code, reason).
fn accept(s: &Scratch, token: &str, offset: u64) -> (i32, String) {
    let at = (FROM + offset).to_string();
    let out = s.run(&["reader", "accept", "--data", "r", "--at", &at, token]);
    let json = last_json(&out);
    let reason = json["reason"].as_str().unwrap_or("").to_string();
    (out.status.code().expect("exit code"), reason)
}

/// (counter, running total) as `wallet show` prints them.
fn counter_and_total(s: &Scratch) -> (u64, u64) {
    let show: serde_json::Value =
        serde_json::from_str(s.ok(&["wallet", "show", "--dir", "w"]).trim()).expect("json");
    (
        show["counter"].as_u64().expect("counter"),
        show["running_total"].as_u64().expect("total"),
    )
}

/// The wallet refuses: exit 1, the reason named, no token written.
fn assert_refused(s: &Scratch, out: &std::process::Output, reason: &str, token: &str) {
    assert_eq!(out.status.code(), Some(1), "{}", stderr(out));
    assert!(stderr(out).contains(reason), "{}", stderr(out));
    assert!(
        stderr(out).contains("nothing was signed"),
        "{}",
        stderr(out)
    );
    assert!(!s.path(token).exists(), "no token for a refused payment");
}

#[test]
fn issue13_14_pay_500_under_a_cap_of_400_is_refused_then_400_is_accepted() {
    let s = site();
    assert_eq!(paid(&s, 300, 60, "t1")["total_before"], 0);
    assert_eq!(accept(&s, "t1", 61), (0, String::new()));

    let out = pay(&s, 500, 120, "t2", &[]);
    assert_refused(&s, &out, "over_payment_cap", "t2");
    assert_eq!(counter_and_total(&s), (1, 300), "nothing counted");

    // Before the fix the 500 was counted, and this was over_offline_limit
    // (300 + 500 + 400 > 1000).
    let json = paid(&s, 400, 180, "t3");
    assert_eq!(
        (json["counter"].as_u64(), json["total_before"].as_u64()),
        (Some(2), Some(300))
    );
    assert_eq!(accept(&s, "t3", 181), (0, String::new()));
}

#[test]
fn issue13_14_pay_over_the_remaining_offline_allowance_is_refused() {
    let s = site();
    for (i, name) in ["a", "b"].into_iter().enumerate() {
        paid(&s, 400, 10 + i as u64, name);
        assert_eq!(accept(&s, name, 20).0, 0);
    }
    let out = pay(&s, 201, 30, "c", &[]);
    assert_refused(&s, &out, "over_offline_limit", "c");
    assert!(stderr(&out).contains("200 left"), "{}", stderr(&out));
    assert_eq!(counter_and_total(&s), (2, 800));
    paid(&s, 200, 40, "d");
    assert_eq!(accept(&s, "d", 41), (0, String::new()));
}

#[test]
fn issue13_14_pay_with_an_expired_or_not_yet_valid_credential_is_refused() {
    let s = site();
    let day = 24 * 3600;
    let out = pay(&s, 100, day, "late", &[]);
    assert_refused(&s, &out, "credential_expired", "late");
    let early = (FROM - 10).to_string();
    let out = s.run(&[
        "wallet", "pay", "--dir", "w", "--amount", "100", "--at", &early, "--out", "early",
    ]);
    assert_refused(&s, &out, "credential_not_yet_valid", "early");
    assert_eq!(counter_and_total(&s), (0, 0));

    // --force signs it anyway (for tests and demos), warns, and counts it;
    // a reader declines it as the wallet said.
    let out = pay(&s, 100, day, "late", &["--force"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("warning"), "{}", stderr(&out));
    assert_eq!(accept(&s, "late", day), (1, "credential_expired".into()));
    assert_eq!(counter_and_total(&s), (1, 100));
}

/// `wallet.toml` as sonotap wrote it before the credential moved into it:
/// no credential bytes, the credential in `w/credential`.
fn legacy_state(counter: u64, total: u64, credential_file: &[u8]) -> String {
    let digest = sonotap_protocol::token::Credential::decode(credential_file)
        .expect("credential")
        .digest();
    format!(
        "counter = {counter}\nrunning_total = {total}\ncredential = \"{}\"\n",
        hex::encode(digest)
    )
}

/// Clears every record of reader `r` through a batch file, as the hub
/// would after a sync; the hub's flags.
fn hub_flags(s: &Scratch) -> Vec<serde_json::Value> {
    let _ = fs::remove_file(s.path("site.batches"));
    s.ok(&["reader", "export", "--data", "r", "--out", "site.batches"]);
    s.ok(&["hub", "import", "--data", "hub", "site.batches"]);
    let report: serde_json::Value =
        serde_json::from_str(&s.ok(&["hub", "report", "--data", "hub", "--json"])).expect("json");
    report["flagged"].as_array().expect("flagged").clone()
}

#[test]
fn issue13_15_a_cut_between_the_credential_file_and_the_state_leaves_a_chain_the_hub_accepts() {
    let s = site();
    s.register_reader("r", "gate-1");
    paid(&s, 30, 10, "t1");
    assert_eq!(accept(&s, "t1", 11).0, 0);
    issue(&s, "48", "cred2");
    let old = fs::read(s.path("cred")).expect("cred");
    let new = fs::read(s.path("cred2")).expect("cred2");

    // What the old writer left when the power failed between its two
    // writes: the new credential renamed into place, the old state (the old
    // credential's digest, its total of 30). The rider pays before retrying.
    fs::write(s.path("w/wallet.toml"), legacy_state(1, 30, &old)).expect("state");
    fs::write(s.path("w/credential"), &new).expect("credential");
    fs::set_permissions(s.path("w/wallet.toml"), fs::Permissions::from_mode(0o600)).expect("chmod");
    let json = paid(&s, 40, 20, "t2");
    assert_eq!(
        json["total_before"], 30,
        "the total the file's credential may carry"
    );
    assert_eq!(accept(&s, "t2", 21).0, 0);

    // The retry keeps the total (same credential), and so does a second one.
    for _ in 0..2 {
        s.ok(&["wallet", "add-credential", "--dir", "w", "cred2"]);
    }
    assert_eq!(counter_and_total(&s), (2, 70));
    assert!(
        !s.path("w/credential").exists(),
        "migrated into wallet.toml"
    );
    let json = paid(&s, 50, 30, "t3");
    assert_eq!(json["total_before"], 70);
    assert_eq!(accept(&s, "t3", 31).0, 0);

    // Before the fix the retry restarted the total at 0: 30, then 0, and
    // the hub denied the wallet for totals_do_not_chain.
    let flags = hub_flags(&s);
    assert!(flags.is_empty(), "{flags:?}");
}

#[test]
fn issue13_15_temporaries_left_by_a_cut_are_ignored_and_a_retry_converges() {
    let s = site();
    paid(&s, 30, 10, "t1");
    issue(&s, "48", "cred2");
    // A cut while the new state was still a temporary: a 0-byte one and a
    // half-written one beside the old state.
    fs::write(s.path("w/wallet.toml.tmp999"), b"").expect("tmp");
    fs::write(s.path("w/wallet.toml.tmp998"), b"counter = 7\nrunning").expect("tmp");
    assert_eq!(counter_and_total(&s), (1, 30));
    s.ok(&["wallet", "add-credential", "--dir", "w", "cred2"]);
    assert_eq!(
        counter_and_total(&s),
        (1, 0),
        "a new credential, a new total"
    );
    s.ok(&["wallet", "add-credential", "--dir", "w", "cred2"]);
    paid(&s, 20, 20, "t2");
    let json = paid(&s, 20, 21, "t3");
    assert_eq!(
        (json["counter"].as_u64(), json["total_before"].as_u64()),
        (Some(3), Some(20))
    );
}

/// A complete reader directory's key, to leave behind as if from a cut.
fn a_reader_key(s: &Scratch) -> Vec<u8> {
    s.reader_init("donor", "gate-9", &[]);
    fs::read(s.path("donor/reader.key")).expect("key")
}

#[test]
fn issue13_16_reader_init_cut_before_its_config_can_be_run_again() {
    let s = Scratch::new();
    s.ok(&["hub", "init", "--data", "hub"]);
    let full_key = a_reader_key(&s);
    let donor_db = fs::read(s.path("donor/reader.db")).expect("db");
    type Leftovers = fn(&Scratch, &[u8], &[u8]);
    let cases: [(&str, Leftovers); 4] = [
        ("0-byte key alone", |s, _, _| {
            fs::write(s.path("r/reader.key"), b"").expect("key");
        }),
        ("full key alone", |s, key, _| {
            fs::write(s.path("r/reader.key"), key).expect("key");
        }),
        ("key, public key and temporaries", |s, key, _| {
            fs::write(s.path("r/reader.key"), key).expect("key");
            fs::write(s.path("r/reader.pub.tmp4711"), b"sonotap reader-pub").expect("tmp");
            fs::write(s.path("r/reader.toml.tmp4711"), b"id = \"gate-1\"\n").expect("tmp");
        }),
        ("key and a database without records", |s, key, db| {
            fs::write(s.path("r/reader.key"), key).expect("key");
            fs::write(s.path("r/reader.db"), db).expect("db");
        }),
    ];
    for (case, leave) in cases {
        let _ = fs::remove_dir_all(s.path("r"));
        fs::create_dir(s.path("r")).expect("mkdir");
        leave(&s, &full_key, &donor_db);
        fs::set_permissions(s.path("r/reader.key"), fs::Permissions::from_mode(0o600))
            .expect("chmod");
        // Before the fix: "reader.key already exists; refusing to overwrite a key".
        s.reader_init("r", "gate-1", &[]);
        let verified = s.ok(&["reader", "verify", "--data", "r"]);
        assert!(verified.contains("chain intact"), "{case}: {verified}");
        let key = fs::read(s.path("r/reader.key")).expect("key");
        assert!(key.len() > 64 && key != full_key, "{case}: a new key");
        let names: Vec<String> = fs::read_dir(s.path("r"))
            .expect("ls")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            !names.iter().any(|n| n.contains(".tmp")),
            "{case}: {names:?}"
        );
    }
}

#[test]
fn issue13_16_a_complete_reader_init_is_still_refused_and_keeps_its_key() {
    let s = Scratch::new();
    s.ok(&["hub", "init", "--data", "hub"]);
    s.reader_init("r", "gate-1", &[]);
    let key = fs::read(s.path("r/reader.key")).expect("key");
    let out = s.try_reader_init("r", "gate-1", &[]);
    assert_fails(&out, 2, &["already holds a reader"]);
    assert_eq!(fs::read(s.path("r/reader.key")).expect("key"), key);
}

#[test]
fn issue13_16_a_reader_key_beside_a_database_with_records_is_never_replaced() {
    let s = site();
    paid(&s, 100, 10, "t");
    assert_eq!(accept(&s, "t", 11).0, 0);
    let key = fs::read(s.path("r/reader.key")).expect("key");
    fs::remove_file(s.path("r/reader.toml")).expect("config lost");
    for leftover in [None, Some(&b""[..])] {
        if let Some(bytes) = leftover {
            // Even a damaged key: the records say a key signed here.
            fs::write(s.path("r/reader.key"), bytes).expect("key");
        }
        let before = fs::read(s.path("r/reader.key")).expect("key");
        let out = s.try_reader_init("r", "gate-1", &[]);
        assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
        assert!(stderr(&out).contains("holds 1 records"), "{}", stderr(&out));
        assert!(
            stderr(&out).contains("restore reader.toml"),
            "{}",
            stderr(&out)
        );
        assert_eq!(fs::read(s.path("r/reader.key")).expect("key"), before);
        assert!(s.path("r/reader.db").exists());
    }
    assert_ne!(key, b"");
}

#[test]
fn issue13_16_wallet_new_cut_before_its_state_can_be_run_again() {
    let s = Scratch::new();
    s.ok(&["wallet", "new", "--dir", "donor"]);
    let full_key = fs::read(s.path("donor/wallet.key")).expect("key");
    for (case, key, temporaries) in [
        ("0-byte key alone", &b""[..], false),
        ("full key alone", &full_key[..], false),
        ("key, public key and temporaries", &full_key[..], true),
    ] {
        let _ = fs::remove_dir_all(s.path("w"));
        fs::create_dir(s.path("w")).expect("mkdir");
        fs::write(s.path("w/wallet.key"), key).expect("key");
        fs::set_permissions(s.path("w/wallet.key"), fs::Permissions::from_mode(0o600))
            .expect("chmod");
        if temporaries {
            fs::copy(s.path("donor/wallet.pub"), s.path("w/wallet.pub")).expect("pub");
            fs::write(s.path("w/wallet.toml.tmp31"), b"").expect("tmp");
        }
        // Before the fix: "w already holds a wallet; refusing to replace its key".
        s.ok(&["wallet", "new", "--dir", "w"]);
        let show = s.ok(&["wallet", "show", "--dir", "w"]);
        assert!(show.contains("\"counter\":0"), "{case}: {show}");
        assert_ne!(
            fs::read(s.path("w/wallet.key")).expect("key"),
            full_key,
            "{case}"
        );
        assert!(!s.path("w/wallet.toml.tmp31").exists(), "{case}");
    }
    // A finished wallet is never replaced.
    let key = fs::read(s.path("w/wallet.key")).expect("key");
    let out = s.run(&["wallet", "new", "--dir", "w"]);
    assert_fails(&out, 2, &["already holds a wallet"]);
    assert_eq!(fs::read(s.path("w/wallet.key")).expect("key"), key);
}
