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
