//! Checking a reader's batch before anything is stored: the reader's
//! signatures, the hash chain inside the batch, and each token's issuer and
//! wallet signatures.
//!
//! Signatures are checked with ed25519 batch verification on two threads,
//! which is about twice as fast as one-by-one. Batch verification does not
//! say which signature failed and skips the weak-key check, so keys are
//! checked for weakness first, and a failed batch is checked again one by
//! one with `verify_strict` to name the culprit.

use std::collections::HashMap;

use ed25519_dalek::{Signature, VerifyingKey};
use sha2::{Digest, Sha256};
use thiserror::Error;

use super::clearing::Payment;
use crate::policy::TrustedKeys;
use crate::record::RecordKind;
use crate::sync::wire::Batch;
use crate::token::Token;

/// Why a batch is refused as a whole.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum BatchRefused {
    /// The batch signature does not verify under the registered key.
    #[error("batch from {reader}: bad signature (not signed by the registered reader key)")]
    BadBatchSignature {
        /// The reader named in the batch.
        reader: String,
    },
    /// A record's signature does not verify: a forged or altered record.
    #[error("batch from {reader}: record {seq} has a bad reader signature")]
    BadRecordSignature {
        /// The reader.
        reader: String,
        /// The record.
        seq: u64,
    },
}

/// A record that passed the reader-signature check, with what the hub
/// learned from its token.
#[derive(Debug, Clone)]
pub struct CheckedRecord {
    /// Sequence number.
    pub seq: u64,
    /// Reader time, Unix seconds.
    pub at: u64,
    /// Charge or void.
    pub kind: RecordKind,
    /// Amount, minor units.
    pub amount: u32,
    /// The token bytes.
    pub token: Vec<u8>,
    /// SHA-256 of the token.
    pub token_hash: [u8; 32],
    /// The previous record's hash.
    pub prev_hash: [u8; 32],
    /// This record's hash.
    pub hash: [u8; 32],
    /// The reader's signature.
    pub signature: [u8; 64],
    /// The payment, or why the token is not a valid one.
    pub payment: Result<(Payment, u32), String>,
}

/// A batch whose reader signatures all verify.
#[derive(Debug, Clone)]
pub struct CheckedBatch {
    /// The batch as received.
    pub batch: Batch,
    /// Its records, in order.
    pub records: Vec<CheckedRecord>,
}

impl CheckedBatch {
    /// Hash of the last record, computed when the chain was checked.
    pub fn last_hash(&self) -> [u8; 32] {
        self.records.last().map_or(self.batch.prev_hash, |r| r.hash)
    }
}

/// One signature to check.
struct Check<'a> {
    message: Vec<u8>,
    signature: Signature,
    key: &'a VerifyingKey,
}

fn verify_all(checks: &[Check<'_>]) -> Vec<bool> {
    let messages: Vec<&[u8]> = checks.iter().map(|c| c.message.as_slice()).collect();
    let signatures: Vec<Signature> = checks.iter().map(|c| c.signature).collect();
    let keys: Vec<VerifyingKey> = checks.iter().map(|c| *c.key).collect();
    if ed25519_dalek::verify_batch(&messages, &signatures, &keys).is_ok() {
        return vec![true; checks.len()];
    }
    checks
        .iter()
        .map(|c| c.key.verify_strict(&c.message, &c.signature).is_ok())
        .collect()
}

/// Verifies in parallel chunks; `true` where the signature is good.
fn verify_parallel(checks: &[Check<'_>]) -> Vec<bool> {
    if checks.len() < 64 {
        return verify_all(checks);
    }
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get().min(4));
    let chunk = checks.len().div_ceil(threads);
    std::thread::scope(|s| {
        let handles: Vec<_> = checks
            .chunks(chunk)
            .map(|part| s.spawn(move || verify_all(part)))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_else(|_| vec![false; chunk]))
            .collect()
    })
}

/// Checks a batch from `reader_key`'s reader: batch signature, every record
/// signature (any failure refuses the whole batch), then each token's
/// signatures (a bad token is kept and reported, not refused: the reader
/// vouched for it, and the operator must see it).
pub fn check_batch(
    batch: Batch,
    reader_key: &VerifyingKey,
    issuers: &TrustedKeys,
) -> Result<CheckedBatch, BatchRefused> {
    if batch.verify(reader_key).is_err() {
        return Err(BatchRefused::BadBatchSignature {
            reader: batch.reader_id.clone(),
        });
    }
    let chained = batch.chained();

    // Parse tokens; collect the wallet keys (checked for weakness once each).
    let tokens: Vec<Option<Token>> = batch
        .records
        .iter()
        .map(|r| Token::decode(&r.token).ok())
        .collect();
    let mut wallet_keys: HashMap<[u8; 32], Option<VerifyingKey>> = HashMap::new();
    for t in tokens.iter().flatten() {
        let bytes = t.credential.terms.wallet_key;
        wallet_keys.entry(bytes).or_insert_with(|| {
            VerifyingKey::from_bytes(&bytes)
                .ok()
                .filter(|k| !k.is_weak())
        });
    }
    let mut credentials: HashMap<[u8; 32], Option<VerifyingKey>> = HashMap::new();
    for t in tokens.iter().flatten() {
        credentials
            .entry(t.credential.digest())
            .or_insert_with(|| issuers.get(t.credential.terms.issuer_key_id).copied());
    }

    let mut checks = Vec::with_capacity(chained.len() * 2 + credentials.len());
    for r in &chained {
        checks.push(Check {
            message: r.body.encode(),
            signature: Signature::from_bytes(r.signature),
            key: reader_key,
        });
    }
    let records = chained.len();
    // Credential signatures: one per distinct credential.
    let mut credential_checks = Vec::new();
    for t in tokens.iter().flatten() {
        let digest = t.credential.digest();
        if credential_checks.iter().any(|(d, _)| *d == digest) {
            continue;
        }
        if let Some(Some(key)) = credentials.get(&digest) {
            credential_checks.push((digest, checks.len()));
            checks.push(Check {
                message: t.credential.signed_message(),
                signature: Signature::from_bytes(&t.credential.issuer_signature),
                key,
            });
        }
    }
    let mut payment_checks = vec![None; records];
    for (i, t) in tokens.iter().enumerate() {
        let Some(t) = t else { continue };
        if let Some(Some(key)) = wallet_keys.get(&t.credential.terms.wallet_key) {
            payment_checks[i] = Some(checks.len());
            checks.push(Check {
                message: t.payment_message(),
                signature: Signature::from_bytes(&t.wallet_signature),
                key,
            });
        }
    }
    let good = verify_parallel(&checks);
    if let Some(i) = good[..records].iter().position(|ok| !ok) {
        return Err(BatchRefused::BadRecordSignature {
            reader: batch.reader_id.clone(),
            seq: chained[i].body.seq,
        });
    }
    let credential_ok = |digest: &[u8; 32]| {
        credential_checks
            .iter()
            .find(|(d, _)| d == digest)
            .is_some_and(|(_, i)| good[*i])
    };

    let mut out = Vec::with_capacity(records);
    for (i, r) in chained.iter().enumerate() {
        let payment = match &tokens[i] {
            None => Err("the token does not parse".to_owned()),
            Some(t) => {
                let digest = t.credential.digest();
                let terms = &t.credential.terms;
                if !matches!(credentials.get(&digest), Some(Some(_))) {
                    Err(format!("issuer key {} is unknown", terms.issuer_key_id))
                } else if !credential_ok(&digest) {
                    Err("bad credential signature".to_owned())
                } else if !payment_checks[i].is_some_and(|j| good[j]) {
                    Err("bad wallet signature".to_owned())
                } else {
                    Ok((
                        Payment {
                            token_hash: Sha256::digest(r.body.token).into(),
                            wallet: t.wallet_id(),
                            counter: t.payment.counter,
                            credential: digest,
                            total_before: t.payment.total_before,
                            authorised: t.payment.amount,
                            reader: batch.reader_id.clone(),
                            seq: r.body.seq,
                        },
                        terms.offline_limit,
                    ))
                }
            }
        };
        out.push(CheckedRecord {
            seq: r.body.seq,
            at: r.body.at,
            kind: r.body.kind,
            amount: r.body.amount,
            token: r.body.token.to_vec(),
            token_hash: Sha256::digest(r.body.token).into(),
            prev_hash: r.body.prev_hash,
            hash: r.hash,
            signature: *r.signature,
            payment,
        });
    }
    drop(chained);
    Ok(CheckedBatch {
        batch,
        records: out,
    })
}
