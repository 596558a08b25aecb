//! The test vectors in docs/protocol.md are what this code computes.
//!
//! A phone app written from the document alone must produce these bytes, so
//! the document and the code are checked against each other here. Run with
//! `SONOTAP_PRINT_VECTORS=1` to print the block for the document.

use std::collections::BTreeMap;

use ed25519_dalek::SigningKey;
use sonotap_protocol::beacon::Beacon;
use sonotap_protocol::policy::{
    GatePolicy, IssuedChallenge, ReaderPolicy, Reason, TrustedKeys, WalletHistory, authenticate,
    decide,
};
use sonotap_protocol::record::{GENESIS_HASH, RecordBody, RecordKind};
use sonotap_protocol::token::{
    CREDENTIAL_DOMAIN, CredentialTerms, PAYMENT_DOMAIN, PAYMENT_V2_DOMAIN, PaymentTerms, Scope,
    Token, WalletId, reader_tag,
};

fn seed(first: u8) -> [u8; 32] {
    std::array::from_fn(|i| first + i as u8)
}

/// Every value of the vector set, by name, in hex (or decimal for numbers).
fn compute() -> Vec<(&'static str, String)> {
    let issuer = SigningKey::from_bytes(&seed(0x00));
    let wallet = SigningKey::from_bytes(&seed(0x20));
    let reader = SigningKey::from_bytes(&seed(0x40));
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
    let credential = terms.sign(&issuer).expect("valid terms");
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

/// The `name value` lines between the vector markers of docs/protocol.md.
fn documented() -> BTreeMap<String, String> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/protocol.md");
    let doc = std::fs::read_to_string(path).expect("docs/protocol.md is readable");
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

#[test]
fn protocol_document_vectors_match_the_code() {
    let computed = compute();
    if std::env::var_os("SONOTAP_PRINT_VECTORS").is_some() {
        for (name, value) in &computed {
            println!("{name:<26} {value}");
        }
    }
    let documented = documented();
    for (name, value) in &computed {
        assert_eq!(
            documented.get(*name),
            Some(value),
            "docs/protocol.md vector {name} differs from the code"
        );
    }
    assert_eq!(
        documented.len(),
        computed.len(),
        "the document has extra vectors"
    );
}

#[test]
fn documented_token_is_accepted_by_the_documented_reader_setup() {
    let documented = documented();
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
    let documented = documented();
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
