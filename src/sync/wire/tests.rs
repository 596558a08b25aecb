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
        "counter_reused",
        1,
        &key(1),
    )
    .unwrap();
    let bytes = entry.encode().unwrap();
    let back = DenyEntry::decode(&bytes).unwrap();
    assert_eq!(back, entry);
    back.verify(&issuers()).unwrap();
    let mut bad = bytes.clone();
    bad[DENY_DOMAIN.len() + 8] = 2; // deny → allow
    assert!(DenyEntry::decode(&bad).unwrap().verify(&issuers()).is_err());
    bad[DENY_DOMAIN.len() + 8] = 9;
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
