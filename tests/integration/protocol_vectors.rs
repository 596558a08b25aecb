//! The test vectors in docs/protocol.md and docs/accounts.md are what this
//! code computes.
//!
//! A phone app written from the documents alone must produce these bytes, so
//! the documents and the code are checked against each other here. Run with
//! `SONOTAP_PRINT_VECTORS=1` (and `--nocapture`) to print the blocks for the
//! documents.

use std::collections::BTreeMap;

use ed25519_dalek::SigningKey;
use sonotap_protocol::beacon::Beacon;
use sonotap_protocol::policy::{
    GatePolicy, IssuedChallenge, ReaderPolicy, Reason, TrustedKeys, WalletHistory, authenticate,
    decide,
};
use sonotap_protocol::record::{GENESIS_HASH, RecordBody, RecordKind};
use sonotap_protocol::token::{
    CREDENTIAL_DOMAIN, Credential, CredentialTerms, PAYMENT_DOMAIN, PAYMENT_V2_DOMAIN,
    PaymentTerms, Scope, Token, WalletId, reader_tag,
};
use sonotap_protocol::wire::{
    AccountState, EntryKind, RenewalNote, Renewed, Statement, StatementEntry, WalletAsk,
    WalletRequest, enrol_code,
};

const PROTOCOL_DOC: &str = "docs/protocol.md";
const ACCOUNTS_DOC: &str = "docs/accounts.md";

fn seed(first: u8) -> [u8; 32] {
    std::array::from_fn(|i| first + i as u8)
}

/// The credential of docs/protocol.md §7: key id 1, transit, EUR, limit
/// 5000, cap 500, from 1800000000 for 72 hours.
fn documented_credential(issuer: &SigningKey, wallet: &SigningKey) -> Credential {
    let terms = CredentialTerms {
        issuer_key_id: 1,
        scope: Scope::Transit,
        currency: 978,
        wallet_key: wallet.verifying_key().to_bytes(),
        offline_limit: 5_000,
        per_payment_cap: 500,
        valid_from: 1_800_000_000,
        valid_hours: 72,
    };
    terms.sign(issuer).expect("valid terms")
}

/// Every value of the vector set, by name, in hex (or decimal for numbers).
fn compute() -> Vec<(&'static str, String)> {
    let issuer = SigningKey::from_bytes(&seed(0x00));
    let wallet = SigningKey::from_bytes(&seed(0x20));
    let reader = SigningKey::from_bytes(&seed(0x40));
    let credential = documented_credential(&issuer, &wallet);
    let payment = PaymentTerms {
        amount: 250,
        counter: 7,
        total_before: 1_000,
        timestamp: 1_800_003_600,
        reader_tag: reader_tag("gate-1"),
    };
    let token = Token::sign(credential, payment, &wallet).expect("matching key");
    let token_bytes = token.encode();
    let credential_bytes = credential.encode();
    let record = RecordBody {
        reader_id: "gate-1",
        seq: 1,
        at: 1_800_003_601,
        kind: RecordKind::Charge,
        amount: 250,
        token: &token_bytes,
        prev_hash: GENESIS_HASH,
    };
    let mut credential_message = CREDENTIAL_DOMAIN.to_vec();
    credential_message.extend_from_slice(&credential_bytes[..51]);
    let mut payment_message = PAYMENT_DOMAIN.to_vec();
    payment_message.extend_from_slice(&token_bytes[..135]);
    let beacon = Beacon {
        reader_tag: reader_tag("gate-1"),
        challenge: std::array::from_fn(|i| 0x60 + i as u8),
        reader_time: 1_800_003_590,
    };
    let payment_v2 = PaymentTerms {
        counter: 8,
        total_before: 1_250,
        timestamp: 1_800_003_595,
        ..payment
    };
    let token_v2 = Token::sign_for_gate(
        credential,
        payment_v2,
        beacon.reader_tag,
        &beacon.challenge,
        &wallet,
    )
    .expect("matching key")
    .encode();
    let mut payment_v2_message = PAYMENT_V2_DOMAIN.to_vec();
    payment_v2_message.extend_from_slice(&token_v2[..136]);
    vec![
        ("issuer_seed", hex::encode(seed(0x00))),
        (
            "issuer_public",
            hex::encode(issuer.verifying_key().as_bytes()),
        ),
        ("wallet_seed", hex::encode(seed(0x20))),
        (
            "wallet_public",
            hex::encode(wallet.verifying_key().as_bytes()),
        ),
        (
            "wallet_id",
            WalletId::of_key(&wallet.verifying_key().to_bytes()).to_string(),
        ),
        ("reader_seed", hex::encode(seed(0x40))),
        (
            "reader_public",
            hex::encode(reader.verifying_key().as_bytes()),
        ),
        ("reader_tag_gate_1", format!("{:08x}", reader_tag("gate-1"))),
        (
            "credential_signed_message",
            hex::encode(&credential_message),
        ),
        ("credential", hex::encode(credential_bytes)),
        ("credential_digest", hex::encode(credential.digest())),
        ("payment_signed_message", hex::encode(&payment_message)),
        ("token", hex::encode(&token_bytes)),
        ("beacon", hex::encode(beacon.encode())),
        ("gate_binding", format!("{:08x}", beacon.binding())),
        (
            "payment_v2_signed_message",
            hex::encode(&payment_v2_message),
        ),
        ("token_v2", hex::encode(&token_v2)),
        ("record_body", hex::encode(record.encode())),
        ("record_hash", hex::encode(record.hash())),
        ("record_signature", hex::encode(record.sign(&reader))),
    ]
}

/// docs/accounts.md §3.5: the riders' account messages, from the keys and
/// the credential above.
fn compute_accounts() -> Vec<(&'static str, String)> {
    let issuer = SigningKey::from_bytes(&seed(0x00));
    let wallet = SigningKey::from_bytes(&seed(0x20));
    let wallet_key = wallet.verifying_key().to_bytes();
    let time_ms = 1_800_000_000_000;
    let nonce: [u8; 16] = std::array::from_fn(|i| 0x70 + i as u8);
    let random: [u8; 10] = std::array::from_fn(|i| 0xa0 + i as u8);
    let code = enrol_code(random);
    let request = |ask| {
        WalletRequest::sign(ask, time_ms, nonce, &wallet)
            .and_then(|r| r.encode())
            .expect("a canonical request")
    };
    let credential = documented_credential(&issuer, &wallet);
    let note = RenewalNote::sign(&credential, 7, 1_800_000_000, &issuer);
    let renewed = Renewed {
        credential,
        note: note.clone(),
    };
    let entry = |id, kind, amount, at, source: &str, seq| StatementEntry {
        id,
        kind,
        amount,
        at,
        source: source.to_string(),
        seq,
    };
    let statement = Statement {
        nonce,
        wallet: WalletId::of_key(&wallet_key),
        at: 1_800_000_000,
        state: AccountState::Open,
        currency: 978,
        balance: 2_000,
        credit_line: 1_000,
        exposure: 5_000,
        next_before: 0,
        entries: vec![
            entry(3, EntryKind::Void, 250, 1_799_996_460, "gate-1", 42),
            entry(2, EntryKind::Charge, -250, 1_799_996_400, "gate-1", 41),
            entry(1, EntryKind::TopUp, 2_000, 1_799_900_000, "TOPUP-0001", 0),
        ],
        key_id: 0,
        signature: [0; 64],
    }
    .sign(1, &issuer)
    .and_then(|s| s.encode())
    .expect("a valid statement");
    vec![
        (
            "issuer_public",
            hex::encode(issuer.verifying_key().as_bytes()),
        ),
        ("wallet_public", hex::encode(wallet_key)),
        ("wallet_id", WalletId::of_key(&wallet_key).to_string()),
        ("nonce", hex::encode(nonce)),
        ("enrol_random", hex::encode(random)),
        ("enrol_code_ascii", hex::encode(&code)),
        (
            "enrol_request",
            hex::encode(request(WalletAsk::Enrol { code })),
        ),
        ("renew_request", hex::encode(request(WalletAsk::Renew))),
        (
            "statement_request",
            hex::encode(request(WalletAsk::Statement { before: 0 })),
        ),
        ("credential", hex::encode(credential.encode())),
        ("credential_digest", hex::encode(credential.digest())),
        ("renewal_note", hex::encode(note.encode())),
        ("renewed", hex::encode(renewed.encode())),
        ("statement", hex::encode(statement)),
    ]
}

/// The `name value` lines between the vector markers of `doc`.
fn documented(doc: &str) -> BTreeMap<String, String> {
    let path = format!("{}/{doc}", env!("CARGO_MANIFEST_DIR"));
    let doc = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let start = doc.find("<!-- vectors:begin -->").expect("begin marker");
    let end = doc.find("<!-- vectors:end -->").expect("end marker");
    doc[start..end]
        .lines()
        .filter_map(|line| {
            let mut parts = line.split_whitespace();
            match (parts.next(), parts.next(), parts.next()) {
                (Some(name), Some(value), None) if value.bytes().all(|b| b.is_ascii_hexdigit()) => {
                    Some((name.to_string(), value.to_string()))
                }
                _ => None,
            }
        })
        .collect()
}

/// Prints `computed` if asked, then checks that `doc` holds exactly it.
fn check_document(doc: &str, computed: &[(&'static str, String)]) {
    if std::env::var_os("SONOTAP_PRINT_VECTORS").is_some() {
        println!("{doc}:");
        for (name, value) in computed {
            println!("{name:<26} {value}");
        }
    }
    let documented = documented(doc);
    for (name, value) in computed {
        assert_eq!(
            documented.get(*name),
            Some(value),
            "{doc} vector {name} differs from the code"
        );
    }
    assert_eq!(documented.len(), computed.len(), "{doc} has extra vectors");
}

#[test]
fn protocol_document_vectors_match_the_code() {
    check_document(PROTOCOL_DOC, &compute());
}

#[test]
fn accounts_document_vectors_match_the_code() {
    check_document(ACCOUNTS_DOC, &compute_accounts());
}

#[test]
fn documented_account_messages_decode_and_verify_as_the_document_says() {
    let documented = documented(ACCOUNTS_DOC);
    let bytes = |name: &str| hex::decode(&documented[name]).expect("hex");
    let wallet_key: [u8; 32] = bytes("wallet_public").try_into().expect("32 bytes");
    let issuer: [u8; 32] = bytes("issuer_public").try_into().expect("32 bytes");
    let nonce: [u8; 16] = bytes("nonce").try_into().expect("16 bytes");
    let mut keys = TrustedKeys::default();
    keys.insert(
        1,
        ed25519_dalek::VerifyingKey::from_bytes(&issuer).expect("key"),
    );
    let code = String::from_utf8(bytes("enrol_code_ascii")).expect("ASCII");
    let now_ms = 1_800_000_000_000;
    for (name, ask) in [
        ("enrol_request", WalletAsk::Enrol { code }),
        ("renew_request", WalletAsk::Renew),
        ("statement_request", WalletAsk::Statement { before: 0 }),
    ] {
        let request = WalletRequest::decode(&bytes(name)).expect(name);
        assert_eq!((&request.ask, request.wallet_key), (&ask, wallet_key));
        request.verify(now_ms).expect(name);
        // Five minutes either way, and no further.
        request.verify(now_ms + 300_000).expect(name);
        assert!(request.verify(now_ms + 300_001).is_err(), "{name}");
    }
    let renewed = Renewed::decode(&bytes("renewed")).expect("renewed");
    renewed.verify(&wallet_key, &keys).expect("renewed");
    assert_eq!(renewed.note.highest_cleared_counter, 7);
    let statement = Statement::decode(&bytes("statement")).expect("statement");
    statement
        .verify(&nonce, WalletId::of_key(&wallet_key), &keys)
        .expect("statement");
    assert_eq!(
        statement.entries.iter().map(|e| e.amount).sum::<i64>(),
        statement.balance,
        "the documented page reaches the first entry, so it sums to the balance"
    );
    // The document's must-reject cases: a trailing byte, another nonce.
    let mut long = bytes("statement");
    long.push(0);
    assert!(Statement::decode(&long).is_err());
    assert!(
        statement
            .verify(&[0; 16], WalletId::of_key(&wallet_key), &keys)
            .is_err()
    );
}

#[test]
fn documented_token_is_accepted_by_the_documented_reader_setup() {
    let documented = documented(PROTOCOL_DOC);
    let token = hex::decode(&documented["token"]).expect("hex");
    let issuer = hex::decode(&documented["issuer_public"]).expect("hex");
    let mut keys = TrustedKeys::default();
    keys.insert(
        1,
        ed25519_dalek::VerifyingKey::from_bytes(&issuer.try_into().expect("32 bytes"))
            .expect("key"),
    );
    let policy = ReaderPolicy {
        reader_tag: reader_tag("gate-1"),
        scope: Scope::Transit,
        currency: 978,
        clock_skew_secs: 300,
        gate: Default::default(),
    };
    let authentic = authenticate(&token, &keys).expect("the vector verifies");
    let approval = decide(
        &authentic,
        &WalletHistory::default(),
        &policy,
        None,
        1_800_003_601,
    )
    .expect("the vector is acceptable at its own time");
    assert_eq!((approval.charge, approval.running_total), (250, 1_250));

    // The document's must-reject cases.
    let mut trailing = token.clone();
    trailing.push(0);
    assert_eq!(
        authenticate(&trailing, &keys).err().map(|d| d.reason),
        Some(Reason::Malformed)
    );
    let mut version_two = token.clone();
    version_two[0] = 2;
    assert_eq!(
        authenticate(&version_two, &keys).err().map(|d| d.reason),
        Some(Reason::Malformed)
    );
    let mut other_reader = ReaderPolicy {
        reader_tag: reader_tag("gate-2"),
        ..policy
    };
    other_reader.clock_skew_secs = 300;
    assert_eq!(
        decide(
            &authentic,
            &WalletHistory::default(),
            &other_reader,
            None,
            1_800_003_601
        )
        .err()
        .map(|d| d.reason),
        Some(Reason::WrongScope)
    );
}

#[test]
fn documented_version_2_token_is_accepted_at_its_gate_within_the_challenges_life_only() {
    let documented = documented(PROTOCOL_DOC);
    let token = hex::decode(&documented["token_v2"]).expect("hex");
    let beacon = Beacon::decode(&hex::decode(&documented["beacon"]).expect("hex")).expect("beacon");
    let issuer = hex::decode(&documented["issuer_public"]).expect("hex");
    let mut keys = TrustedKeys::default();
    keys.insert(
        1,
        ed25519_dalek::VerifyingKey::from_bytes(&issuer.try_into().expect("32 bytes"))
            .expect("key"),
    );
    let gate = |name: &str| ReaderPolicy {
        reader_tag: reader_tag(name),
        scope: Scope::Transit,
        currency: 978,
        clock_skew_secs: 300,
        gate: GatePolicy {
            accept_v1: false,
            challenge_life_secs: 30,
            issued: vec![IssuedChallenge {
                binding: sonotap_protocol::token::gate_binding(reader_tag(name), &beacon.challenge),
                issued_at: u64::from(beacon.reader_time),
            }],
        },
    };
    let authentic = authenticate(&token, &keys).expect("the vector verifies");
    let at = |policy: &ReaderPolicy, now: u64| {
        decide(&authentic, &WalletHistory::default(), policy, None, now)
            .err()
            .map(|d| d.reason)
    };
    assert_eq!(at(&gate("gate-1"), 1_800_003_596), None);
    // The document's must-reject cases: 31 s after the beacon, and at gate-2
    // (even had gate-2 drawn the same challenge).
    assert_eq!(at(&gate("gate-1"), 1_800_003_621), Some(Reason::StaleToken));
    assert_eq!(at(&gate("gate-2"), 1_800_003_596), Some(Reason::WrongScope));
}
