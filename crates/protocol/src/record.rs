//! Transaction records: the reader's signed, hash-chained journal.
//!
//! Each record names the previous record's hash, and the reader signs each
//! record, so the hub can see a gap (a missing sequence number), an edit (a
//! hash that no longer matches) or a forgery (a signature that does not
//! verify). The encoding is canonical and documented in `docs/protocol.md`.

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::Serialize;
use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::token::WalletId;

/// Domain-separation prefix of every record body.
pub const RECORD_DOMAIN: &[u8] = b"sonotap/v1/record\0";
/// The `prev_hash` of a reader's first record.
pub const GENESIS_HASH: [u8; 32] = [0; 32];

/// What a record does to the money.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordKind {
    /// An accepted payment: the wallet is charged `amount`.
    Charge,
    /// A charge cancelled because the service was not delivered (a vend that
    /// failed or timed out): same token bytes (so the same wallet and counter)
    /// as the charge it cancels, `amount` = the charge's amount. The token
    /// stays spent; the hub refunds the wallet.
    Void,
}

impl RecordKind {
    /// The one-byte code in the record body.
    pub fn code(self) -> u8 {
        match self {
            RecordKind::Charge => 1,
            RecordKind::Void => 2,
        }
    }

    /// Reads the one-byte code.
    pub fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(RecordKind::Charge),
            2 => Some(RecordKind::Void),
            _ => None,
        }
    }

    /// The name stored in the database and shown to operators.
    pub fn as_str(self) -> &'static str {
        match self {
            RecordKind::Charge => "charge",
            RecordKind::Void => "void",
        }
    }

    /// Reads the stored name.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "charge" => Some(RecordKind::Charge),
            "void" => Some(RecordKind::Void),
            _ => None,
        }
    }
}

/// The signed and hashed part of a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordBody<'a> {
    /// The reader that made the record.
    pub reader_id: &'a str,
    /// Per-reader sequence number, from 1, without gaps.
    pub seq: u64,
    /// Reader time of the decision, Unix seconds.
    pub at: u64,
    /// What the record does.
    pub kind: RecordKind,
    /// Amount charged, minor units.
    pub amount: u32,
    /// The token exactly as presented.
    pub token: &'a [u8],
    /// Hash of the previous record, or [`GENESIS_HASH`].
    pub prev_hash: [u8; 32],
}

impl RecordBody<'_> {
    /// The canonical encoding: what is hashed and signed.
    ///
    /// `domain ‖ u8 len ‖ reader_id ‖ u64 seq ‖ u64 at ‖ u8 kind ‖ u32 amount ‖
    /// u8 len ‖ token ‖ prev_hash`, integers big-endian.
    pub fn encode(&self) -> Vec<u8> {
        let id = self.reader_id.as_bytes();
        let mut out = Vec::with_capacity(RECORD_DOMAIN.len() + 64 + id.len() + self.token.len());
        out.extend_from_slice(RECORD_DOMAIN);
        out.push(len_u8(id.len()));
        out.extend_from_slice(&id[..usize::from(len_u8(id.len()))]);
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&self.at.to_be_bytes());
        out.push(self.kind.code());
        out.extend_from_slice(&self.amount.to_be_bytes());
        out.push(len_u8(self.token.len()));
        out.extend_from_slice(&self.token[..usize::from(len_u8(self.token.len()))]);
        out.extend_from_slice(&self.prev_hash);
        out
    }

    /// SHA-256 of the encoding: the next record's `prev_hash`.
    pub fn hash(&self) -> [u8; 32] {
        Sha256::digest(self.encode()).into()
    }

    /// The reader's signature over the encoding.
    pub fn sign(&self, reader: &SigningKey) -> [u8; 64] {
        reader.sign(&self.encode()).to_bytes()
    }
}

/// Reader ids and tokens are limited to 255 bytes by the encoding; callers
/// validate this, so clamping here only keeps the encoder total.
fn len_u8(len: usize) -> u8 {
    u8::try_from(len).unwrap_or(u8::MAX)
}

/// A stored record, with its chain fields and sync state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Per-reader sequence number.
    pub seq: u64,
    /// Reader time of the decision, Unix seconds.
    pub at: u64,
    /// What the record does.
    pub kind: RecordKind,
    /// The paying wallet.
    pub wallet: WalletId,
    /// The payment's counter.
    pub counter: u32,
    /// Amount charged.
    pub amount: u32,
    /// The token bytes.
    pub token: Vec<u8>,
    /// Hash of the previous record.
    pub prev_hash: [u8; 32],
    /// Hash of this record's body.
    pub hash: [u8; 32],
    /// Reader signature over this record's body.
    pub signature: [u8; 64],
    /// When the hub acknowledged it, if it has.
    pub synced_at: Option<u64>,
}

impl Record {
    /// The body this record claims to have.
    pub fn body<'a>(&'a self, reader_id: &'a str) -> RecordBody<'a> {
        RecordBody {
            reader_id,
            seq: self.seq,
            at: self.at,
            kind: self.kind,
            amount: self.amount,
            token: &self.token,
            prev_hash: self.prev_hash,
        }
    }
}

/// Where a chain of records breaks.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ChainError {
    /// A sequence number is missing.
    #[error("gap: record {found} follows record {after}")]
    Gap {
        /// The last good sequence number.
        after: u64,
        /// The sequence number found next.
        found: u64,
    },
    /// The record's stored hash is not the hash of its body (it was edited).
    #[error("record {seq} was altered: its hash does not match its content")]
    Altered {
        /// The record.
        seq: u64,
    },
    /// The record does not name its predecessor's hash.
    #[error("record {seq} does not chain to record {prev}")]
    Unchained {
        /// The record.
        seq: u64,
        /// Its predecessor.
        prev: u64,
    },
    /// The reader's signature does not verify.
    #[error("record {seq} has a bad reader signature")]
    BadSignature {
        /// The record.
        seq: u64,
    },
}

/// Verifies records one at a time, in order: hashes, links and signatures.
///
/// Incremental, so a reader's whole history or a hub's batch can be checked
/// as it streams past, in constant memory.
pub struct ChainVerifier<'a> {
    reader_id: &'a str,
    reader_key: &'a VerifyingKey,
    head: Option<(u64, [u8; 32])>,
}

impl<'a> ChainVerifier<'a> {
    /// Starts after `prev` (sequence number and hash of the last trusted
    /// record; `(0, GENESIS_HASH)` for a reader's whole history), or, with
    /// `None`, at whatever the first record says precedes it (a history
    /// whose older records were pruned after the hub acknowledged them).
    pub fn new(
        reader_id: &'a str,
        reader_key: &'a VerifyingKey,
        prev: Option<(u64, [u8; 32])>,
    ) -> Self {
        Self {
            reader_id,
            reader_key,
            head: prev,
        }
    }

    /// Checks the next record.
    pub fn push(&mut self, record: &Record) -> Result<(), ChainError> {
        let (last_seq, last_hash) = self
            .head
            .unwrap_or((record.seq.saturating_sub(1), record.prev_hash));
        if record.seq != last_seq + 1 {
            return Err(ChainError::Gap {
                after: last_seq,
                found: record.seq,
            });
        }
        let body = record.body(self.reader_id);
        if body.hash() != record.hash {
            return Err(ChainError::Altered { seq: record.seq });
        }
        if record.prev_hash != last_hash {
            return Err(ChainError::Unchained {
                seq: record.seq,
                prev: last_seq,
            });
        }
        self.reader_key
            .verify_strict(&body.encode(), &Signature::from_bytes(&record.signature))
            .map_err(|_| ChainError::BadSignature { seq: record.seq })?;
        self.head = Some((record.seq, record.hash));
        Ok(())
    }

    /// The last record verified (or the starting point).
    pub fn head(&self) -> Option<(u64, [u8; 32])> {
        self.head
    }
}

/// Verifies consecutive records after `prev` (see [`ChainVerifier::new`]) and
/// returns the sequence number and hash of the last one.
pub fn verify_chain<'a>(
    reader_id: &str,
    reader_key: &VerifyingKey,
    prev: (u64, [u8; 32]),
    records: impl IntoIterator<Item = &'a Record>,
) -> Result<(u64, [u8; 32]), ChainError> {
    let mut verifier = ChainVerifier::new(reader_id, reader_key, Some(prev));
    for record in records {
        verifier.push(record)?;
    }
    Ok(verifier.head().unwrap_or(prev))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(key: &SigningKey, n: u64) -> Vec<Record> {
        let mut prev = GENESIS_HASH;
        (1..=n)
            .map(|seq| {
                let token = vec![seq as u8; 10];
                let body = RecordBody {
                    reader_id: "gate-1",
                    seq,
                    at: 1_800_000_000 + seq,
                    kind: RecordKind::Charge,
                    amount: 100,
                    token: &token,
                    prev_hash: prev,
                };
                let record = Record {
                    seq,
                    at: body.at,
                    kind: body.kind,
                    wallet: WalletId([0; 8]),
                    counter: seq as u32,
                    amount: body.amount,
                    hash: body.hash(),
                    signature: body.sign(key),
                    prev_hash: prev,
                    token: token.clone(),
                    synced_at: None,
                };
                prev = record.hash;
                record
            })
            .collect()
    }

    #[test]
    fn kinds_have_stable_codes_and_names_and_a_void_signs_differently() {
        for (kind, code, name) in [
            (RecordKind::Charge, 1, "charge"),
            (RecordKind::Void, 2, "void"),
        ] {
            assert_eq!((kind.code(), kind.as_str()), (code, name));
            assert_eq!(RecordKind::from_name(name), Some(kind));
        }
        assert_eq!(RecordKind::from_name("refund"), None);
        let token = [7u8; 10];
        let charge = RecordBody {
            reader_id: "vend-1",
            seq: 1,
            at: 1_800_000_000,
            kind: RecordKind::Charge,
            amount: 250,
            token: &token,
            prev_hash: GENESIS_HASH,
        };
        let void = RecordBody {
            kind: RecordKind::Void,
            ..charge.clone()
        };
        assert_ne!(charge.hash(), void.hash());
        assert_eq!(void.encode()[RECORD_DOMAIN.len() + 1 + 6 + 16], 2);
    }

    #[test]
    fn an_intact_chain_verifies() {
        let key = SigningKey::from_bytes(&[3; 32]);
        let records = chain(&key, 5);
        let end = verify_chain("gate-1", &key.verifying_key(), (0, GENESIS_HASH), &records);
        assert_eq!(end, Ok((5, records[4].hash)));
    }

    #[test]
    fn a_removed_record_is_a_gap() {
        let key = SigningKey::from_bytes(&[3; 32]);
        let mut records = chain(&key, 5);
        records.remove(2);
        let err = verify_chain("gate-1", &key.verifying_key(), (0, GENESIS_HASH), &records);
        assert_eq!(err, Err(ChainError::Gap { after: 2, found: 4 }));
    }

    #[test]
    fn an_edited_amount_is_seen() {
        let key = SigningKey::from_bytes(&[3; 32]);
        let mut records = chain(&key, 3);
        records[1].amount = 1;
        let err = verify_chain("gate-1", &key.verifying_key(), (0, GENESIS_HASH), &records);
        assert_eq!(err, Err(ChainError::Altered { seq: 2 }));
    }

    #[test]
    fn a_rehashed_edit_breaks_the_link_or_the_signature() {
        let key = SigningKey::from_bytes(&[3; 32]);
        let mut records = chain(&key, 3);
        records[1].amount = 1;
        records[1].hash = records[1].body("gate-1").hash();
        let err = verify_chain("gate-1", &key.verifying_key(), (0, GENESIS_HASH), &records);
        assert_eq!(err, Err(ChainError::BadSignature { seq: 2 }));
    }

    #[test]
    fn a_pruned_history_verifies_from_its_first_kept_record() {
        let key = SigningKey::from_bytes(&[3; 32]);
        let records = chain(&key, 6);
        let verifying = key.verifying_key();
        let mut verifier = ChainVerifier::new("gate-1", &verifying, None);
        for record in &records[3..] {
            verifier.push(record).expect("intact");
        }
        assert_eq!(verifier.head(), Some((6, records[5].hash)));
        let mut verifier = ChainVerifier::new("gate-1", &verifying, None);
        verifier.push(&records[3]).expect("first kept");
        assert_eq!(
            verifier.push(&records[5]),
            Err(ChainError::Gap { after: 4, found: 6 })
        );
    }

    #[test]
    fn another_readers_key_or_id_does_not_verify() {
        let key = SigningKey::from_bytes(&[3; 32]);
        let records = chain(&key, 2);
        let other = SigningKey::from_bytes(&[4; 32]).verifying_key();
        assert_eq!(
            verify_chain("gate-1", &other, (0, GENESIS_HASH), &records),
            Err(ChainError::BadSignature { seq: 1 })
        );
        assert_eq!(
            verify_chain("gate-2", &key.verifying_key(), (0, GENESIS_HASH), &records),
            Err(ChainError::Altered { seq: 1 })
        );
    }
}
