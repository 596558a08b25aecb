use ed25519_dalek::SigningKey;

use super::*;
use crate::record::GENESIS_HASH;

fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

fn record(i: u8, kind: RecordKind) -> BatchRecord {
    BatchRecord {
        at: 1_700_000_000 + u64::from(i),
        kind,
        amount: 250 + u32::from(i),
        token: vec![i; 199],
        signature: [i; 64],
    }
}

fn batch() -> Batch {
    let records = vec![
        record(1, RecordKind::Charge),
        record(2, RecordKind::Charge),
        record(3, RecordKind::Void),
    ];
    Batch::seal("gate-7", 1, GENESIS_HASH, records, 1_700_000_100, &key(9)).unwrap()
}

fn issuers() -> TrustedKeys {
    let mut keys = TrustedKeys::default();
    keys.insert(1, key(1).verifying_key());
    keys
}

#[test]
fn batch_round_trips_and_verifies() {
    let b = batch();
    let bytes = b.encode().unwrap();
    let back = Batch::decode(&bytes).unwrap();
    assert_eq!(back, b);
    back.verify(&key(9).verifying_key()).unwrap();
    assert_eq!(back.last_seq(), 3);
    assert_eq!(
        back.totals(),
        Totals {
            count: 3,
            charged: 251 + 252,
            voided: 253
        }
    );
}

#[test]
fn batch_chain_links_each_record_to_the_previous_hash() {
    let b = batch();
    let chained = b.chained();
    assert_eq!(chained[0].body.prev_hash, GENESIS_HASH);
    assert_eq!(chained[1].body.prev_hash, chained[0].hash);
    assert_eq!(chained[2].body.seq, 3);
    assert_eq!(b.last_hash(), chained[2].hash);
}

#[test]
fn batch_signed_by_another_key_is_refused() {
    let b = batch();
    assert_eq!(
        b.verify(&key(8).verifying_key()),
        Err(WireError::BadSignature { what: "batch" })
    );
}

#[test]
fn every_truncation_and_any_trailing_byte_is_refused() {
    let bytes = batch().encode().unwrap();
    for len in 0..bytes.len() {
        assert!(
            Batch::decode(&bytes[..len]).is_err(),
            "length {len} accepted"
        );
    }
    let mut long = bytes.clone();
    long.push(0);
    assert_eq!(
        Batch::decode(&long),
        Err(WireError::Trailing {
            what: "batch",
            extra: 1
        })
    );
}

#[test]
fn every_flipped_byte_is_refused_or_fails_the_signature() {
    let b = batch();
    let bytes = b.encode().unwrap();
    let reader = key(9).verifying_key();
    for i in 0..bytes.len() {
        let mut bad = bytes.clone();
        bad[i] ^= 0x01;
        if let Ok(parsed) = Batch::decode(&bad) {
            assert!(parsed.verify(&reader).is_err(), "flip at {i} verified");
        }
    }
}

#[test]
fn stated_totals_that_do_not_match_the_records_are_refused() {
    let b = batch();
    let mut bytes = b.encode().unwrap();
    // The charged sum follows the domain, the id and the first sequence number.
    let at = BATCH_DOMAIN.len() + 1 + b.reader_id.len() + 8 + 4 + 7;
    bytes[at] ^= 0x04;
    let err = Batch::decode(&bytes).unwrap_err();
    assert!(err.to_string().contains("do not match"), "{err}");
}

#[test]
fn empty_and_oversized_batches_are_refused() {
    let empty = Batch::seal("gate-7", 1, GENESIS_HASH, vec![], 0, &key(9));
    assert!(matches!(empty, Err(WireError::Invalid { .. })));
    let many = vec![record(1, RecordKind::Charge); MAX_BATCH_RECORDS + 1];
    let big = Batch::seal("gate-7", 1, GENESIS_HASH, many, 0, &key(9));
    assert!(matches!(big, Err(WireError::Invalid { .. })));
    let zero = Batch::seal(
        "gate-7",
        0,
        GENESIS_HASH,
        vec![record(1, RecordKind::Charge)],
        0,
        &key(9),
    );
    assert!(matches!(zero, Err(WireError::Invalid { .. })));
}

#[test]
fn ack_verifies_only_for_the_batch_it_names() {
    let b = batch();
    let ack = Ack::for_batch(&b, 42_000, 1, &key(1)).unwrap();
    let back = Ack::decode(&ack.encode().unwrap()).unwrap();
    assert_eq!(back, ack);
    back.verify(&b, &issuers()).unwrap();

    let mut other = b.clone();
    other.records.pop();
    let err = back.verify(&other, &issuers()).unwrap_err();
    assert!(err.to_string().contains("not the batch sent"), "{err}");

    let mut lying = ack.clone();
    lying.last_seq += 1;
    assert_eq!(
        lying.verify(&b, &issuers()),
        Err(WireError::BadSignature {
            what: "acknowledgement"
        })
    );
    let forged = Ack::for_batch(&b, 42_000, 1, &key(5)).unwrap();
    assert!(forged.verify(&b, &issuers()).is_err());
    let unknown = Ack::for_batch(&b, 42_000, 3, &key(1)).unwrap();
    assert_eq!(
        unknown.verify(&b, &issuers()),
        Err(WireError::UnknownKey {
            what: "acknowledgement",
            key_id: 3
        })
    );
}

#[test]
fn deny_entry_round_trips_and_verifies() {
    let entry = DenyEntry::sign(
        7,
        DenyAction::Deny,
        WalletId([3; 8]),
        1_700_000_000,
        DenyReason::CounterReused,
        1,
        &key(1),
    )
    .unwrap();
    let bytes = entry.encode().unwrap();
    let back = DenyEntry::decode(&bytes).unwrap();
    assert_eq!(back, entry);
    back.verify(&issuers()).unwrap();
    let mut bad = bytes.clone();
    bad[DENY_DOMAIN_V2.len() + 8] = 2; // deny → allow
    assert!(DenyEntry::decode(&bad).unwrap().verify(&issuers()).is_err());
    bad[DENY_DOMAIN_V2.len() + 8] = 9;
    assert!(DenyEntry::decode(&bad).is_err());
    assert!(DenyEntry::decode(&bytes[..bytes.len() - 1]).is_err());
}

#[test]
fn key_set_is_adopted_only_when_a_trusted_key_vouches() {
    let (old, new) = (key(1), key(2));
    let keys = vec![
        (1, old.verifying_key().to_bytes()),
        (2, new.verifying_key().to_bytes()),
    ];
    let set = KeySet::sign(2, keys.clone(), &[(1, &old), (2, &new)]).unwrap();
    let back = KeySet::decode(&set.encode().unwrap()).unwrap();
    assert_eq!(back, set);
    let adopted = back.verify(&issuers()).unwrap();
    assert_eq!(adopted.get(2), Some(&new.verifying_key()));

    let only_new = KeySet::sign(2, keys, &[(2, &new)]).unwrap();
    assert_eq!(
        only_new.verify(&issuers()),
        Err(WireError::BadSignature { what: "key set" })
    );
    let unsorted = KeySet::sign(3, vec![(2, [7; 32]), (1, [7; 32])], &[(1, &old)]);
    assert!(unsorted.is_err());
}

#[test]
fn issue13_10_sequence_numbers_past_2_63_minus_1_are_refused_at_parse() {
    let records = vec![record(1, RecordKind::Charge), record(2, RecordKind::Charge)];
    // The last record at exactly 2^63 - 1 is fine.
    let top = Batch::seal(
        "gate-7",
        MAX_SEQ - 1,
        GENESIS_HASH,
        records.clone(),
        1,
        &key(9),
    )
    .unwrap();
    let bytes = top.encode().unwrap();
    assert_eq!(Batch::decode(&bytes).unwrap().last_seq(), MAX_SEQ);
    // One further, and a batch starting at 2^63, are refused by the
    // decoder with the reason, before any signature is looked at.
    let at = BATCH_DOMAIN.len() + 1 + "gate-7".len();
    for first in [MAX_SEQ, MAX_SEQ + 1, u64::MAX - 1] {
        let mut past = bytes.clone();
        past[at..at + 8].copy_from_slice(&first.to_be_bytes());
        match Batch::decode(&past) {
            Err(WireError::Invalid { detail, .. }) => {
                assert!(detail.contains("2^63-1"), "{detail}")
            }
            other => panic!("{first}: {other:?}"),
        }
    }
    // Nor can a batch past it be sealed.
    assert!(Batch::seal("gate-7", MAX_SEQ, GENESIS_HASH, records, 1, &key(9)).is_err());
}

#[test]
fn issue13_05_an_old_key_set_is_never_adopted_whatever_version_it_is_announced_as() {
    let (one, two) = (key(1), key(2));
    let mut both = TrustedKeys::default();
    both.insert(1, one.verifying_key());
    both.insert(2, two.verifying_key());
    let v1 = KeySet::sign(1, vec![(1, one.verifying_key().to_bytes())], &[(1, &one)]).unwrap();
    let v2 = KeySet::sign(
        2,
        vec![
            (1, one.verifying_key().to_bytes()),
            (2, two.verifying_key().to_bytes()),
        ],
        &[(1, &one), (2, &two)],
    )
    .unwrap();
    // From the provisioned key alone (version 0), v2 is adopted.
    assert_eq!(v2.adopt(0, &issuers()).unwrap(), Some(both.clone()));
    // Holding v2, the genuine v1 is refused: only its signed version counts.
    match v1.adopt(2, &both) {
        Err(WireError::Invalid { detail, .. }) => assert!(detail.contains("roll back"), "{detail}"),
        other => panic!("{other:?}"),
    }
    // The same version again changes nothing, even with other keys (a key
    // added by `reader trust` stays until a newer signed set).
    assert_eq!(v2.adopt(2, &both).unwrap(), None);
    let other = KeySet::sign(2, vec![(1, one.verifying_key().to_bytes())], &[(1, &one)]).unwrap();
    assert_eq!(other.adopt(2, &both).unwrap(), None);
    // A set no trusted key signed is refused before its version is looked at.
    let forged = KeySet::sign(
        9,
        vec![(3, key(3).verifying_key().to_bytes())],
        &[(3, &key(3))],
    )
    .unwrap();
    assert_eq!(
        forged.adopt(2, &both),
        Err(WireError::BadSignature { what: "key set" })
    );
}

#[test]
fn issue13_08_a_deny_entry_publishes_a_reason_code_and_no_text() {
    let entry = DenyEntry::sign(
        3,
        DenyAction::Deny,
        WalletId([5; 8]),
        1_700_000_000,
        DenyReason::LostOrStolen,
        1,
        &key(1),
    )
    .unwrap();
    let bytes = entry.encode().unwrap();
    // Domain, version, action, wallet, time, reason code, key id, signature:
    // no text field at all.
    assert_eq!(
        bytes.len(),
        DENY_DOMAIN_V2.len() + 8 + 1 + 8 + 8 + 1 + 1 + 64
    );
    assert!(bytes.starts_with(b"sonotap/v2/deny\0"));
    assert_eq!(
        bytes[DENY_DOMAIN_V2.len() + 25],
        2,
        "lost_or_stolen is code 2"
    );
    // An unknown code, a trailing byte and every truncation are refused.
    let mut bad = bytes.clone();
    bad[DENY_DOMAIN_V2.len() + 25] = 0;
    assert!(DenyEntry::decode(&bad).is_err());
    bad[DENY_DOMAIN_V2.len() + 25] = 7;
    assert!(DenyEntry::decode(&bad).is_err());
    let mut long = bytes.clone();
    long.push(0);
    assert!(matches!(
        DenyEntry::decode(&long),
        Err(WireError::Trailing { .. })
    ));
    for cut in 0..bytes.len() {
        assert!(DenyEntry::decode(&bytes[..cut]).is_err(), "{cut}");
    }
    for (i, reason) in DenyReason::ALL.into_iter().enumerate() {
        assert_eq!(usize::from(reason.code()), i + 1);
        assert_eq!(DenyReason::from_code(reason.code()), Some(reason));
        assert_eq!(reason.as_str().parse::<DenyReason>(), Ok(reason));
    }
    assert!("Rider J. Doe, 555-0100".parse::<DenyReason>().is_err());
}

#[test]
fn issue13_08_a_format_1_entry_from_before_still_verifies_with_its_code() {
    // What a hub wrote before format 2: the reason as text in the signed bytes.
    let mut part = DENY_DOMAIN.to_vec();
    part.extend_from_slice(&4u64.to_be_bytes());
    part.push(1);
    part.extend_from_slice(&[6; 8]);
    part.extend_from_slice(&1_700_000_000u64.to_be_bytes());
    for (text, code) in [
        ("counter_reused", DenyReason::CounterReused),
        ("lost phone", DenyReason::Operator),
    ] {
        let mut signed_part = part.clone();
        signed_part.push(text.len() as u8);
        signed_part.extend_from_slice(text.as_bytes());
        signed_part.push(1);
        let signature = key(1).sign(&signed_part).to_bytes();
        let mut bytes = signed_part.clone();
        bytes.extend_from_slice(&signature);
        let entry = DenyEntry::decode(&bytes).unwrap();
        entry.verify(&issuers()).unwrap();
        assert_eq!(entry.reason, code);
        assert_eq!(entry.encode().unwrap(), bytes);
    }
}

#[test]
fn issue13_04_a_time_statement_counts_only_for_its_nonce_and_a_trusted_key() {
    let nonce = [7; 16];
    let statement = TimeStatement::sign(nonce, 1_790_000_000_000, 1, &key(1));
    let bytes = statement.encode();
    let back = TimeStatement::decode(&bytes).unwrap();
    assert_eq!(back, statement);
    back.verify(&nonce, &issuers()).unwrap();
    // Replayed to a request with another nonce: refused.
    assert!(matches!(
        back.verify(&[8; 16], &issuers()),
        Err(WireError::Invalid { .. })
    ));
    // Signed by a key the reader does not trust, or altered: refused.
    let forged = TimeStatement::sign(nonce, 1_790_003_500_000, 1, &key(2));
    assert_eq!(
        forged.verify(&nonce, &issuers()),
        Err(WireError::BadSignature {
            what: "time statement"
        })
    );
    let mut moved = bytes.clone();
    moved[TIME_DOMAIN.len() + 16] ^= 1;
    assert!(
        TimeStatement::decode(&moved)
            .unwrap()
            .verify(&nonce, &issuers())
            .is_err()
    );
    // Not an ack or any other message; no trailing byte; no truncation.
    let mut long = bytes.clone();
    long.push(0);
    assert!(TimeStatement::decode(&long).is_err());
    for cut in 0..bytes.len() {
        assert!(TimeStatement::decode(&bytes[..cut]).is_err());
    }
    assert!(matches!(
        TimeStatement::decode(&batch().encode().unwrap()),
        Err(WireError::Domain { .. })
    ));
}

#[test]
fn issue13_08_a_signed_request_holds_only_for_its_reader_method_target_and_time() {
    let now = 1_790_000_000_000;
    let reader = key(9);
    let request =
        SignedRequest::sign("gate-7", now, [1; 16], "GET", "/v1/deny?since=0", &reader).unwrap();
    let bytes = request.encode().unwrap();
    let back = SignedRequest::decode(&bytes).unwrap();
    assert_eq!(back, request);
    let key9 = reader.verifying_key();
    back.verify(&key9, "GET", "/v1/deny?since=0", now).unwrap();
    back.verify(&key9, "GET", "/v1/deny?since=0", now + REQUEST_WINDOW_MS)
        .unwrap();
    // Another reader's key, another target or method, or outside the window.
    assert_eq!(
        back.verify(&key(8).verifying_key(), "GET", "/v1/deny?since=0", now),
        Err(WireError::BadSignature {
            what: "signed request"
        })
    );
    assert!(back.verify(&key9, "GET", "/v1/deny?since=5", now).is_err());
    assert!(back.verify(&key9, "POST", "/v1/deny?since=0", now).is_err());
    assert!(
        back.verify(
            &key9,
            "GET",
            "/v1/deny?since=0",
            now + REQUEST_WINDOW_MS + 1
        )
        .is_err()
    );
    assert!(
        back.verify(
            &key9,
            "GET",
            "/v1/deny?since=0",
            now - REQUEST_WINDOW_MS - 1
        )
        .is_err()
    );
    // Canonical: no trailing byte, no truncation, its own domain.
    let mut long = bytes.clone();
    long.push(0);
    assert!(matches!(
        SignedRequest::decode(&long),
        Err(WireError::Trailing { .. })
    ));
    for cut in 0..bytes.len() {
        assert!(SignedRequest::decode(&bytes[..cut]).is_err());
    }
    let mut flipped = bytes.clone();
    flipped[REQUEST_DOMAIN.len() + 10] ^= 1;
    assert!(
        SignedRequest::decode(&flipped)
            .map(|r| r.verify(&key9, "GET", "/v1/deny?since=0", now))
            .map_or(true, |r| r.is_err())
    );
}

/// Issue 17: an entry that names one credential is format 3 (a kind and
/// the digest), signed and refused like the others; a wallet entry is
/// still format 2, so a reader that predates format 3 reads it.
#[test]
fn issue17_a_deny_entry_for_one_credential_is_format_3_with_its_digest() {
    let digest = [0xc7; 32];
    let entry = DenyEntry::sign_scoped(
        4,
        DenyAction::Deny,
        WalletId([5; 8]),
        DenyScope::Credential(digest),
        1_700_000_000,
        DenyReason::CounterReused,
        1,
        &key(1),
    )
    .unwrap();
    let bytes = entry.encode().unwrap();
    assert!(bytes.starts_with(b"sonotap/v3/deny\0"));
    // Domain, version, action, wallet, kind, digest, time, reason, key id, signature.
    let d = DENY_DOMAIN_V3.len();
    assert_eq!(bytes.len(), d + 8 + 1 + 8 + 1 + 32 + 8 + 1 + 1 + 64);
    assert_eq!(bytes[d + 17], 2, "kind 2: a credential");
    assert_eq!(&bytes[d + 18..d + 50], &digest);
    let back = DenyEntry::decode(&bytes).unwrap();
    assert_eq!(back, entry);
    assert_eq!(back.scope, DenyScope::Credential(digest));
    back.verify(&issuers()).unwrap();

    // Another digest under the same signature fails; so does a wallet entry
    // made of the same fields (the domains differ).
    let mut other = bytes.clone();
    other[d + 18] ^= 1;
    assert_eq!(
        DenyEntry::decode(&other).unwrap().verify(&issuers()),
        Err(WireError::BadSignature {
            what: "deny-list entry"
        })
    );
    // Unknown kinds, trailing bytes and every truncation are refused.
    for kind in [0, 1, 3, 255] {
        let mut bad = bytes.clone();
        bad[d + 17] = kind;
        let e = DenyEntry::decode(&bad).unwrap_err();
        assert!(e.to_string().contains(&format!("kind {kind}")), "{e}");
    }
    let mut long = bytes.clone();
    long.push(0);
    assert!(matches!(
        DenyEntry::decode(&long),
        Err(WireError::Trailing { .. })
    ));
    for cut in 0..bytes.len() {
        assert!(DenyEntry::decode(&bytes[..cut]).is_err(), "{cut}");
    }

    let wallet = DenyEntry::sign(
        5,
        DenyAction::Allow,
        WalletId([5; 8]),
        1_700_000_000,
        DenyReason::Operator,
        1,
        &key(1),
    )
    .unwrap();
    assert!(wallet.encode().unwrap().starts_with(b"sonotap/v2/deny\0"));
    assert_eq!(wallet.scope, DenyScope::Wallet);
}

/// Issue 17: the renewal note names its credential and is signed by the
/// key that signed the credential; a wallet checks it with nothing else.
#[test]
fn issue17_a_renewal_note_is_bound_to_its_credential_and_its_issuer() {
    use crate::testkit::{credential, issuer, terms};
    use crate::token::CredentialTerms;
    let cred = credential(terms());
    let note = RenewalNote::sign(&cred, 41, 1_700_000_000, &issuer());
    let bytes = note.encode();
    assert_eq!(bytes.len(), RenewalNote::LEN);
    assert!(bytes.starts_with(b"sonotap/v1/renewal\0"));
    let back = RenewalNote::decode(&bytes).unwrap();
    assert_eq!(back, note);
    back.verify(&cred).unwrap();
    assert_eq!(back.highest_cleared_counter, 41);

    // A raised counter under the same signature fails.
    let mut raised = bytes.clone();
    raised[RENEWAL_DOMAIN.len() + 32] = 0xff;
    assert_eq!(
        RenewalNote::decode(&raised).unwrap().verify(&cred),
        Err(WireError::BadSignature {
            what: "renewal note"
        })
    );
    // A note someone else signed with their own key, for this credential:
    // the credential does not verify under that key.
    let forged = RenewalNote::sign(&cred, u32::MAX, 1_700_000_000, &key(77));
    let e = forged.verify(&cred).unwrap_err();
    assert!(
        e.to_string()
            .contains("not signed by the note's issuer key"),
        "{e}"
    );
    // A note for another credential.
    let other = credential(CredentialTerms {
        offline_limit: 1,
        per_payment_cap: 1,
        ..terms()
    });
    let e = note.verify(&other).unwrap_err();
    assert!(e.to_string().contains("another credential"), "{e}");
    // Truncations and trailing bytes.
    for cut in 0..bytes.len() {
        assert!(RenewalNote::decode(&bytes[..cut]).is_err(), "{cut}");
    }
    let mut long = bytes;
    long.push(0);
    assert!(matches!(
        RenewalNote::decode(&long),
        Err(WireError::Trailing { .. })
    ));
}

// Riders' accounts: the phone's signed requests and the hub's answers
// (wire/account.rs, docs/accounts.md §3).

mod accounts {
    use ed25519_dalek::{Verifier, VerifyingKey};
    use proptest::prelude::*;

    use super::*;
    use crate::testkit::{credential, issuer, keys, terms, wallet};
    use crate::token::{CredentialTerms, Scope};

    /// The hub's clock in these tests, Unix milliseconds.
    const NOW_MS: u64 = 1_800_000_000_000;
    const NONCE: [u8; 16] = [0x70; 16];

    fn code() -> String {
        enrol_code([0xa0; 10])
    }

    fn asks() -> [WalletAsk; 3] {
        [
            WalletAsk::Enrol { code: code() },
            WalletAsk::Renew,
            WalletAsk::Statement { before: 42 },
        ]
    }

    fn domain_of(ask: &WalletAsk) -> &'static [u8] {
        match ask {
            WalletAsk::Enrol { .. } => ENROL_DOMAIN,
            WalletAsk::Renew => RENEW_DOMAIN,
            WalletAsk::Statement { .. } => STATEMENT_REQUEST_DOMAIN,
        }
    }

    fn request(ask: WalletAsk) -> WalletRequest {
        WalletRequest::sign(ask, NOW_MS, NONCE, &wallet()).unwrap()
    }

    /// An enrolment request's bytes carrying `code` as it is, signed.
    fn enrol_bytes_with(code: &[u8]) -> Vec<u8> {
        let mut out = ENROL_DOMAIN.to_vec();
        out.extend_from_slice(&wallet().verifying_key().to_bytes());
        out.extend_from_slice(&NOW_MS.to_be_bytes());
        out.extend_from_slice(&NONCE);
        out.push(code.len() as u8);
        out.extend_from_slice(code);
        let signature = wallet().sign(&out).to_bytes();
        out.extend_from_slice(&signature);
        out
    }

    fn renewed() -> Renewed {
        let credential = credential(terms());
        Renewed {
            note: RenewalNote::sign(&credential, 7, 1_800_000_000, &issuer()),
            credential,
        }
    }

    fn entry(id: u64, kind: EntryKind, amount: i64, source: &str, seq: u64) -> StatementEntry {
        StatementEntry {
            id,
            kind,
            amount,
            at: 1_799_990_000 + id,
            source: source.to_owned(),
            seq,
        }
    }

    fn unsigned_statement(entries: Vec<StatementEntry>) -> Statement {
        Statement {
            nonce: NONCE,
            wallet: WalletId::of_key(&wallet().verifying_key().to_bytes()),
            at: 1_800_000_000,
            state: AccountState::Open,
            currency: 978,
            balance: -150,
            credit_line: 1_000,
            exposure: 5_000,
            next_before: 0,
            entries,
            key_id: 0,
            signature: [0; 64],
        }
    }

    fn statement() -> Statement {
        unsigned_statement(vec![
            entry(3, EntryKind::Void, 250, "gate-1", 2),
            entry(2, EntryKind::Charge, -250, "gate-1", 1),
            entry(1, EntryKind::Adjustment, -150, "", 0),
        ])
        .sign(1, &issuer())
        .unwrap()
    }

    /// Every account message encoded, with its domain and error name.
    fn every_message() -> Vec<(&'static str, &'static [u8], Vec<u8>)> {
        let mut all: Vec<_> = asks()
            .into_iter()
            .map(|ask| {
                let domain = domain_of(&ask);
                ("wallet request", domain, request(ask).encode().unwrap())
            })
            .collect();
        all.push(("renewal answer", RENEWED_DOMAIN, renewed().encode()));
        all.push(("statement", STATEMENT_DOMAIN, statement().encode().unwrap()));
        all
    }

    fn decode_as(what: &str, bytes: &[u8]) -> Result<(), WireError> {
        match what {
            "wallet request" => WalletRequest::decode(bytes).map(drop),
            "renewal answer" => Renewed::decode(bytes).map(drop),
            _ => Statement::decode(bytes).map(drop),
        }
    }

    #[test]
    fn a_wallet_request_of_each_kind_round_trips_and_verifies() {
        let lengths = [
            WalletRequest::ENROL_LEN,
            WalletRequest::RENEW_LEN,
            WalletRequest::STATEMENT_LEN,
        ];
        for (ask, len) in asks().into_iter().zip(lengths) {
            let r = request(ask.clone());
            let bytes = r.encode().unwrap();
            assert_eq!(bytes.len(), len, "{}", ask.name());
            assert!(bytes.len() <= WalletRequest::MAX_LEN);
            let back = WalletRequest::decode(&bytes).unwrap();
            assert_eq!(back, r);
            assert_eq!(back.ask, ask);
            back.verify(NOW_MS).unwrap();
            assert_eq!(
                back.wallet(),
                WalletId::of_key(&wallet().verifying_key().to_bytes())
            );
        }
        assert_eq!(
            (
                WalletRequest::ENROL_LEN,
                WalletRequest::RENEW_LEN,
                WalletRequest::STATEMENT_LEN
            ),
            (154, 137, 157)
        );
        assert_eq!(WalletRequest::MAX_LEN, WalletRequest::STATEMENT_LEN);
    }

    #[test]
    fn every_truncation_and_one_trailing_byte_of_an_account_message_is_refused() {
        for (what, domain, bytes) in every_message() {
            for cut in 0..bytes.len() {
                let expected = match cut < domain.len() {
                    true => WireError::Domain { what },
                    false => WireError::Truncated { what },
                };
                assert_eq!(
                    decode_as(what, &bytes[..cut]),
                    Err(expected),
                    "{what} cut to {cut}"
                );
            }
            let mut long = bytes.clone();
            long.push(0);
            assert_eq!(
                decode_as(what, &long),
                Err(WireError::Trailing { what, extra: 1 }),
                "{what}"
            );
            decode_as(what, &bytes).unwrap();
        }
    }

    #[test]
    fn an_account_message_is_not_taken_for_another_kind() {
        let messages = every_message();
        for (what, _, _) in &messages {
            for (other, _, bytes) in &messages {
                if what != other {
                    assert_eq!(
                        decode_as(what, bytes),
                        Err(WireError::Domain { what }),
                        "{other} read as {what}"
                    );
                }
            }
        }
        // Nor for the reader's and the renewal's formats of the same shape.
        let time = TimeStatement::sign(NONCE, NOW_MS, 1, &issuer()).encode();
        assert!(matches!(
            WalletRequest::decode(&time),
            Err(WireError::Domain { .. })
        ));
        let note = renewed().note.encode();
        assert!(matches!(
            Renewed::decode(&note),
            Err(WireError::Domain { .. })
        ));
    }

    #[test]
    fn a_request_relabelled_as_another_kind_fails_its_signature() {
        for signed in asks() {
            let original = request(signed.clone());
            for relabel in asks() {
                if relabel.name() == signed.name() {
                    continue;
                }
                let forged = WalletRequest {
                    ask: relabel.clone(),
                    ..original.clone()
                };
                // Its bytes carry the other domain tag and parse as that kind.
                let bytes = forged.encode().unwrap();
                assert!(bytes.starts_with(domain_of(&relabel)));
                let parsed = WalletRequest::decode(&bytes).unwrap();
                assert_eq!(parsed.ask, relabel);
                assert_eq!(
                    parsed.verify(NOW_MS),
                    Err(WireError::BadSignature {
                        what: "wallet request"
                    }),
                    "{} signed, sent as {}",
                    signed.name(),
                    relabel.name()
                );
            }
        }
        // The same at the byte level: a renewal's tag swapped for a
        // statement request's (with `before` 0 inserted).
        let renew = request(WalletAsk::Renew).encode().unwrap();
        let mut swapped = STATEMENT_REQUEST_DOMAIN.to_vec();
        swapped.extend_from_slice(&renew[RENEW_DOMAIN.len()..renew.len() - 64]);
        swapped.extend_from_slice(&0u64.to_be_bytes());
        swapped.extend_from_slice(&renew[renew.len() - 64..]);
        let parsed = WalletRequest::decode(&swapped).unwrap();
        assert_eq!(parsed.ask, WalletAsk::Statement { before: 0 });
        assert!(parsed.verify(NOW_MS).is_err());
    }

    #[test]
    fn a_wallet_request_verifies_only_within_the_window_under_its_own_key() {
        let r = request(WalletAsk::Renew);
        r.verify(NOW_MS + REQUEST_WINDOW_MS).unwrap();
        r.verify(NOW_MS - REQUEST_WINDOW_MS).unwrap();
        for now in [
            NOW_MS + REQUEST_WINDOW_MS + 1,
            NOW_MS - REQUEST_WINDOW_MS - 1,
            0,
            u64::MAX,
        ] {
            match r.verify(now) {
                Err(WireError::Invalid { detail, .. }) => {
                    assert!(detail.contains("from the hub's clock"), "{detail}")
                }
                other => panic!("at {now}: {other:?}"),
            }
        }
        let bad_signature = |r: &WalletRequest| {
            assert_eq!(
                r.verify(NOW_MS),
                Err(WireError::BadSignature {
                    what: "wallet request"
                })
            )
        };
        // A flipped signature bit; a field changed under the signature.
        let mut flipped = r.clone();
        flipped.signature[10] ^= 1;
        bad_signature(&flipped);
        let mut later = r.clone();
        later.time_ms += 1;
        bad_signature(&later);
        // Another wallet's signature under this key, and this wallet's
        // signature presented with another key.
        let other = WalletRequest::sign(WalletAsk::Renew, NOW_MS, NONCE, &key(5)).unwrap();
        bad_signature(&WalletRequest {
            signature: other.signature,
            ..r.clone()
        });
        bad_signature(&WalletRequest {
            wallet_key: other.wallet_key,
            ..r.clone()
        });
    }

    #[test]
    fn a_small_order_or_invalid_wallet_key_is_refused() {
        // The identity point with R = identity and S = 0 satisfies the
        // unstrict equation for every message: what verify_strict is for.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        let mut signature = [0u8; 64];
        signature[0] = 1;
        let forged = WalletRequest {
            ask: WalletAsk::Renew,
            wallet_key: identity,
            time_ms: NOW_MS,
            nonce: NONCE,
            signature,
        };
        let lax = VerifyingKey::from_bytes(&identity).unwrap();
        assert!(
            lax.verify(
                &forged.encode().unwrap()[..WalletRequest::RENEW_LEN - 64],
                &ed25519_dalek::Signature::from_bytes(&signature)
            )
            .is_ok(),
            "the forgery holds under unstrict verification"
        );
        assert!(forged.verify(NOW_MS).is_err());
        // Bytes that are no point at all.
        let not_a_point = (0u8..=255)
            .map(|b| {
                let mut k = [0u8; 32];
                k[0] = b;
                k
            })
            .find(|k| VerifyingKey::from_bytes(k).is_err())
            .unwrap();
        let bad = WalletRequest {
            wallet_key: not_a_point,
            ..request(WalletAsk::Renew)
        };
        let parsed = WalletRequest::decode(&bad.encode().unwrap()).unwrap();
        match parsed.verify(NOW_MS) {
            Err(WireError::Invalid { detail, .. }) => {
                assert!(detail.contains("not a valid key"), "{detail}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_non_canonical_enrolment_code_is_refused_by_decode_sign_and_encode() {
        let code = code();
        WalletRequest::decode(&enrol_bytes_with(code.as_bytes())).unwrap();
        let dashed = format!(
            "{}-{}-{}-{}",
            &code[..4],
            &code[4..8],
            &code[8..12],
            &code[12..]
        );
        let not_canonical = [
            code.to_lowercase(),
            dashed,
            format!("{code} "),
            code[..15].to_owned(),
            format!("{code}A"),
            format!("{}0", &code[..15]),
            "é".repeat(16),
            String::new(),
        ];
        for bad in &not_canonical {
            match WalletRequest::decode(&enrol_bytes_with(bad.as_bytes())) {
                Err(WireError::Invalid { detail, .. }) => {
                    assert!(detail.contains("not canonical"), "{bad:?}: {detail}")
                }
                other => panic!("{bad:?}: {other:?}"),
            }
            let ask = WalletAsk::Enrol { code: bad.clone() };
            assert!(
                WalletRequest::sign(ask.clone(), NOW_MS, NONCE, &wallet()).is_err(),
                "{bad:?} signed"
            );
            let edited = WalletRequest {
                ask,
                ..request(WalletAsk::Enrol { code: code.clone() })
            };
            assert!(edited.encode().is_err(), "{bad:?} encoded");
            assert!(edited.verify(NOW_MS).is_err(), "{bad:?} verified");
        }
        // Too long for its length byte: refused, not cut.
        let huge = WalletAsk::Enrol {
            code: "A".repeat(300),
        };
        assert!(WalletRequest::sign(huge, NOW_MS, NONCE, &wallet()).is_err());
        // Not UTF-8 at all.
        assert!(matches!(
            WalletRequest::decode(&enrol_bytes_with(&[0xff; 16])),
            Err(WireError::Invalid { .. })
        ));
    }

    #[test]
    fn normalise_enrol_code_accepts_what_a_person_types_and_names_what_is_wrong() {
        for typed in [
            "abcd-efgh ijkl-mnop",
            "ABCD-EFGH-IJKL-MNOP",
            " abcd efgh ijkl mnop ",
            "aBcDeFgHiJkLmNoP",
        ] {
            assert_eq!(
                normalise_enrol_code(typed).as_deref(),
                Ok("ABCDEFGHIJKLMNOP"),
                "{typed:?}"
            );
        }
        assert_eq!(
            normalise_enrol_code("2345-67ab cdef-ghij").as_deref(),
            Ok("234567ABCDEFGHIJ")
        );
        for (typed, says) in [
            ("abcd-efgh-ijkl-mno", "not 15"),
            ("abcd-efgh-ijkl-mnopq", "not 17"),
            ("", "not 0"),
            ("abcd-efgh-ijkl-mno0", "'0'"),
            ("abcd-efgh-ijkl-mno1", "'1'"),
            ("abcd-efgh-ijkl-mno8", "'8'"),
            ("abcd-efgh-ijkl-mno9", "'9'"),
            ("abcd_efgh_ijkl_mnop", "not 19"),
            ("abcd.efgh.ijkl.m", "'.'"),
            // Sixteen characters, one of them not ASCII: named as typed.
            ("abcd-efgh-ijkl-mnoé", "'é'"),
        ] {
            match normalise_enrol_code(typed) {
                Err(e) => assert!(e.contains(says), "{typed:?}: {e}"),
                Ok(code) => panic!("{typed:?} accepted as {code}"),
            }
        }
    }

    #[test]
    fn enrol_code_uses_the_base32_alphabet_most_significant_bits_first() {
        assert_eq!(enrol_code([0; 10]), "AAAAAAAAAAAAAAAA");
        assert_eq!(enrol_code([0xff; 10]), "7777777777777777");
        assert_eq!(enrol_code([0xa0; 10]), "UCQKBIFAUCQKBIFA");
        let mut one = [0; 10];
        one[9] = 1;
        assert_eq!(enrol_code(one), "AAAAAAAAAAAAAAAB");
        one[0] = 0x80;
        assert_eq!(enrol_code(one), "QAAAAAAAAAAAAAAB");
    }

    #[test]
    fn a_statement_round_trips_and_holds_only_for_its_nonce_wallet_and_a_trusted_key() {
        let s = statement();
        let bytes = s.encode().unwrap();
        assert_eq!(
            bytes.len(),
            154 + (34 + 6) * 2 + 34,
            "fixed part, two entries from gate-1, one with no source"
        );
        let back = Statement::decode(&bytes).unwrap();
        assert_eq!(back, s);
        let wallet_id = WalletId::of_key(&wallet().verifying_key().to_bytes());
        back.verify(&NONCE, wallet_id, &keys()).unwrap();

        match back.verify(&[0x71; 16], wallet_id, &keys()) {
            Err(WireError::Invalid { detail, .. }) => {
                assert!(detail.contains("another nonce"), "{detail}")
            }
            other => panic!("{other:?}"),
        }
        match back.verify(&NONCE, WalletId([0; 8]), &keys()) {
            Err(WireError::Invalid { detail, .. }) => {
                assert!(detail.contains("another wallet"), "{detail}")
            }
            other => panic!("{other:?}"),
        }
        let untrusted = unsigned_statement(vec![]).sign(3, &issuer()).unwrap();
        assert_eq!(
            untrusted.verify(&NONCE, wallet_id, &keys()),
            Err(WireError::UnknownKey {
                what: "statement",
                key_id: 3
            })
        );
        let forged = unsigned_statement(vec![]).sign(1, &key(5)).unwrap();
        assert_eq!(
            forged.verify(&NONCE, wallet_id, &keys()),
            Err(WireError::BadSignature { what: "statement" })
        );
        // A balance raised under the signature (two's complement: −150 → +106).
        let at = STATEMENT_DOMAIN.len() + 16 + 8 + 8 + 1 + 2;
        assert_eq!(bytes[at..at + 8], (-150i64).to_be_bytes());
        let mut raised = bytes.clone();
        raised[at] = 0;
        raised[at + 1..at + 7].fill(0);
        let raised = Statement::decode(&raised).unwrap();
        assert!(raised.balance > 0);
        assert_eq!(
            raised.verify(&NONCE, wallet_id, &keys()),
            Err(WireError::BadSignature { what: "statement" })
        );
    }

    #[test]
    fn a_statement_with_an_unknown_state_or_entry_kind_is_refused() {
        let bytes = statement().encode().unwrap();
        let state = STATEMENT_DOMAIN.len() + 16 + 8 + 8;
        let kind = STATEMENT_DOMAIN.len() + 16 + 8 + 8 + 1 + 2 + 8 * 4 + 1 + 8;
        assert_eq!(bytes[state], AccountState::Open.code());
        assert_eq!(bytes[kind], EntryKind::Void.code());
        for (at, code, says) in [
            (state, 0, "account state"),
            (state, 4, "account state"),
            (kind, 0, "entry kind"),
            (kind, 5, "entry kind"),
        ] {
            let mut bad = bytes.clone();
            bad[at] = code;
            match Statement::decode(&bad) {
                Err(WireError::Invalid { detail, .. }) => {
                    assert!(detail.contains(says), "{detail}")
                }
                other => panic!("{code} at {at}: {other:?}"),
            }
        }
        for state in AccountState::ALL {
            assert_eq!(AccountState::from_code(state.code()), Some(state));
            assert_eq!(AccountState::from_name(state.as_str()), Some(state));
        }
        for kind in EntryKind::ALL {
            assert_eq!(EntryKind::from_code(kind.code()), Some(kind));
            assert_eq!(EntryKind::from_name(kind.as_str()), Some(kind));
        }
    }

    #[test]
    fn a_statement_of_more_than_100_entries_is_refused_to_sign_encode_and_decode() {
        let page: Vec<_> = (1..=STATEMENT_PAGE as u64)
            .rev()
            .map(|id| entry(id, EntryKind::Charge, -1, "gate-1", id))
            .collect();
        let full = unsigned_statement(page.clone()).sign(1, &issuer()).unwrap();
        let bytes = full.encode().unwrap();
        assert_eq!(Statement::decode(&bytes).unwrap(), full);

        // 101, and 256 (which a count byte would wrap to 0), are refused.
        for n in [STATEMENT_PAGE + 1, 256] {
            let mut entries = page.clone();
            entries.resize(n, entry(0, EntryKind::TopUp, 1, "", 0));
            let too_many = unsigned_statement(entries);
            assert!(matches!(
                too_many.clone().sign(1, &issuer()),
                Err(WireError::Invalid { .. })
            ));
            assert!(too_many.encode().is_err());
            let edited = Statement {
                entries: too_many.entries,
                ..full.clone()
            };
            assert!(edited.verify(&NONCE, full.wallet, &keys()).is_err());
        }
        // A count byte of 101 or more is refused before any entry is read.
        let count = STATEMENT_DOMAIN.len() + 16 + 8 + 8 + 1 + 2 + 8 * 4;
        assert_eq!(usize::from(bytes[count]), STATEMENT_PAGE);
        for n in [101, 255] {
            let mut bad = bytes.clone();
            bad[count] = n;
            match Statement::decode(&bad) {
                Err(WireError::Invalid { detail, .. }) => {
                    assert!(detail.contains(&format!("{n} entries")), "{detail}")
                }
                other => panic!("{n}: {other:?}"),
            }
        }
        // A source too long for its length byte is refused, not cut.
        let long = unsigned_statement(vec![entry(1, EntryKind::TopUp, 1, &"x".repeat(256), 0)]);
        assert!(long.sign(1, &issuer()).is_err());
    }

    #[test]
    fn a_renewal_answer_holds_only_for_its_wallet_its_credential_and_a_trusted_key() {
        let r = renewed();
        let bytes = r.encode();
        assert_eq!(bytes.len(), Renewed::LEN);
        // The note is 160 bytes (docs/sync.md §3.8 says 168: the document is wrong).
        assert_eq!((RenewalNote::LEN, Renewed::LEN), (160, 19 + 115 + 160));
        let back = Renewed::decode(&bytes).unwrap();
        assert_eq!(back, r);
        let wallet_key = wallet().verifying_key().to_bytes();
        back.verify(&wallet_key, &keys()).unwrap();
        // A phone's first credential: no trusted key yet, the note's is taken.
        back.verify(&wallet_key, &TrustedKeys::default()).unwrap();

        // Issued to another wallet.
        let other_wallet = key(5).verifying_key().to_bytes();
        match back.verify(&other_wallet, &keys()) {
            Err(WireError::Invalid { detail, .. }) => {
                assert!(detail.contains("another wallet key"), "{detail}")
            }
            other => panic!("{other:?}"),
        }
        // A note for another credential of the same wallet.
        let other = credential(CredentialTerms {
            offline_limit: 1,
            ..terms()
        });
        let mixed = Renewed {
            credential: other,
            note: r.note.clone(),
        };
        let mixed = Renewed::decode(&mixed.encode()).unwrap();
        match mixed.verify(&wallet_key, &keys()) {
            Err(WireError::Invalid { what, detail }) => {
                assert_eq!(what, "renewal note");
                assert!(detail.contains("another credential"), "{detail}")
            }
            other => panic!("{other:?}"),
        }
        // Another key under the trusted key's id.
        let mut impostor = TrustedKeys::default();
        impostor.insert(1, key(5).verifying_key());
        match back.verify(&wallet_key, &impostor) {
            Err(WireError::Invalid { detail, .. }) => {
                assert!(
                    detail.contains("not the key this wallet trusts"),
                    "{detail}"
                )
            }
            other => panic!("{other:?}"),
        }
        // A key id the wallet does not trust, once it trusts one: refused,
        // however well the note and credential agree with each other.
        let stranger = key(7);
        let foreign = CredentialTerms {
            issuer_key_id: 7,
            ..terms()
        }
        .sign(&stranger)
        .unwrap();
        let foreign = Renewed {
            note: RenewalNote::sign(&foreign, u32::MAX, 1_800_000_000, &stranger),
            credential: foreign,
        };
        assert_eq!(
            foreign.verify(&wallet_key, &keys()),
            Err(WireError::UnknownKey {
                what: "renewal answer",
                key_id: 7
            })
        );
        // A credential that does not parse is named.
        let mut bad = bytes.clone();
        bad[RENEWED_DOMAIN.len() + 2] = 0x03; // a reserved scope
        match Renewed::decode(&bad) {
            Err(WireError::Invalid { detail, .. }) => {
                assert!(detail.contains("its credential"), "{detail}")
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            Scope::from_code(bytes[RENEWED_DOMAIN.len() + 2]),
            Ok(Scope::Transit)
        );
    }

    proptest! {
        #[test]
        fn decoding_arbitrary_bytes_as_an_account_message_never_panics(
            domain in 0usize..6,
            tail in proptest::collection::vec(any::<u8>(), 0..800),
        ) {
            let domains = [
                ENROL_DOMAIN, RENEW_DOMAIN, STATEMENT_REQUEST_DOMAIN,
                RENEWED_DOMAIN, STATEMENT_DOMAIN, b"",
            ];
            let mut bytes = domains[domain].to_vec();
            bytes.extend_from_slice(&tail);
            for what in ["wallet request", "renewal answer", "statement"] {
                let _ = decode_as(what, &bytes);
            }
            if let Ok(r) = WalletRequest::decode(&bytes) {
                let _ = r.verify(NOW_MS);
            }
        }

        #[test]
        fn decoding_near_valid_account_messages_never_panics_and_what_decodes_re_encodes(
            which in 0usize..5, position in any::<prop::sample::Index>(),
            value in any::<u8>(), cut in any::<prop::sample::Index>(),
        ) {
            let (what, _, mut bytes) = every_message().swap_remove(which);
            let len = bytes.len();
            bytes[position.index(len)] = value;
            bytes.truncate(cut.index(len + 1));
            let again = match what {
                "wallet request" => WalletRequest::decode(&bytes).ok().map(|m| m.encode().unwrap()),
                "renewal answer" => Renewed::decode(&bytes).ok().map(|m| m.encode()),
                _ => Statement::decode(&bytes).ok().map(|m| m.encode().unwrap()),
            };
            if let Some(again) = again {
                prop_assert_eq!(again, bytes);
            }
        }

        #[test]
        fn an_enrol_code_always_normalises_to_itself_as_typed_in_groups(random in any::<[u8; 10]>()) {
            let code = enrol_code(random);
            prop_assert_eq!(code.len(), ENROL_CODE_LEN);
            prop_assert_eq!(normalise_enrol_code(&code), Ok(code.clone()));
            let typed = format!(
                "{}-{} {}-{}",
                &code[..4], &code[4..8], &code[8..12], &code[12..]
            ).to_lowercase();
            prop_assert_eq!(normalise_enrol_code(&typed), Ok(code.clone()));
            let r = WalletRequest::sign(WalletAsk::Enrol { code }, NOW_MS, NONCE, &wallet()).unwrap();
            prop_assert_eq!(WalletRequest::decode(&r.encode().unwrap()), Ok(r));
        }
    }
}
