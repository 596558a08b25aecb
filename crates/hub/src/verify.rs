//! Checking a reader's batch before anything is stored: the reader's
//! signatures, the hash chain inside the batch, and each token's issuer and
//! wallet signatures.
//!
//! The reader's signature over the batch covers every byte of every record,
//! each record's own signature included; only the holder of the reader's
//! key can make it, and that holder could sign each record too. So checking
//! every per-record signature as well guards against no forger: it only
//! catches a reader whose per-record signing is broken, which the check of
//! the last record's signature in every batch also catches, at its first
//! upload. [`RecordSignatureCheck`] says which the hub does.
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
use sonotap_protocol::policy::TrustedKeys;
use sonotap_protocol::record::RecordKind;
use sonotap_protocol::token::Token;
use sonotap_protocol::wire::Batch;

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

/// Which per-record reader signatures the hub checks, beyond the batch
/// signature that covers them all (see the module docs for why).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RecordSignatureCheck {
    /// The batch signature, and the last record's own signature.
    #[default]
    BatchAndLast,
    /// Every record's own signature too (one more ed25519 verification a
    /// record, about a third of the hub's work per record): for audits.
    Every,
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
    pub payment: Result<(Payment, CredentialLimits), String>,
}

/// What a payment is held to, from its credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CredentialLimits {
    /// The most the credential may spend offline.
    pub offline_limit: u32,
    /// Its expiry, Unix seconds.
    pub valid_until: u64,
}

/// A batch whose reader signatures (the batch's, and the records' asked for) verify.
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

/// Checks a batch from `reader_key`'s reader: the batch signature, the
/// record signatures `records` asks for (any failure refuses the whole
/// batch), then each token's signatures (a bad token is kept and reported,
/// not refused: the reader vouched for it, and the operator must see it).
pub fn check_batch(
    batch: Batch,
    reader_key: &VerifyingKey,
    issuers: &TrustedKeys,
    records: RecordSignatureCheck,
) -> Result<CheckedBatch, BatchRefused> {
    if batch.verify(reader_key).is_err() {
        return Err(BatchRefused::BadBatchSignature {
            reader: batch.reader_id.clone(),
        });
    }
    let chained = batch.chained();

    // Parse tokens, each with its credential's digest (hashed once); collect
    // the wallet keys (checked for weakness once each).
    let tokens: Vec<Option<(Token, [u8; 32])>> = batch
        .records
        .iter()
        .map(|r| {
            Token::decode(&r.token).ok().map(|t| {
                let digest = t.credential.digest();
                (t, digest)
            })
        })
        .collect();
    let mut wallet_keys: HashMap<[u8; 32], Option<VerifyingKey>> = HashMap::new();
    for (t, _) in tokens.iter().flatten() {
        let bytes = t.credential.terms.wallet_key;
        wallet_keys.entry(bytes).or_insert_with(|| {
            VerifyingKey::from_bytes(&bytes)
                .ok()
                .filter(|k| !k.is_weak())
        });
    }
    let mut credentials: HashMap<[u8; 32], Option<VerifyingKey>> = HashMap::new();
    for (t, digest) in tokens.iter().flatten() {
        credentials
            .entry(*digest)
            .or_insert_with(|| issuers.get(t.credential.terms.issuer_key_id).copied());
    }

    let mut checks = Vec::with_capacity(chained.len() * 2 + credentials.len());
    // Indices into `chained` of the record signatures checked, in order;
    // their checks come first.
    let record_checks: Vec<usize> = match records {
        RecordSignatureCheck::Every => (0..chained.len()).collect(),
        RecordSignatureCheck::BatchAndLast => chained.len().checked_sub(1).into_iter().collect(),
    };
    for &i in &record_checks {
        let r = &chained[i];
        checks.push(Check {
            message: r.body.encode(),
            signature: Signature::from_bytes(r.signature),
            key: reader_key,
        });
    }
    let records = chained.len();
    // Credential signatures: one per distinct credential.
    let mut credential_checks: HashMap<[u8; 32], usize> = HashMap::new();
    for (t, digest) in tokens.iter().flatten() {
        if credential_checks.contains_key(digest) {
            continue;
        }
        if let Some(Some(key)) = credentials.get(digest) {
            credential_checks.insert(*digest, checks.len());
            checks.push(Check {
                message: t.credential.signed_message(),
                signature: Signature::from_bytes(&t.credential.issuer_signature),
                key,
            });
        }
    }
    let mut payment_checks = vec![None; records];
    for (i, t) in tokens.iter().enumerate() {
        let Some((t, _)) = t else { continue };
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
    if let Some(i) = good[..record_checks.len()].iter().position(|ok| !ok) {
        return Err(BatchRefused::BadRecordSignature {
            reader: batch.reader_id.clone(),
            seq: chained[record_checks[i]].body.seq,
        });
    }
    let credential_ok = |digest: &[u8; 32]| credential_checks.get(digest).is_some_and(|i| good[*i]);

    let mut out = Vec::with_capacity(records);
    for (i, r) in chained.iter().enumerate() {
        let token_hash: [u8; 32] = Sha256::digest(r.body.token).into();
        let payment = match &tokens[i] {
            None => Err("the token does not parse".to_owned()),
            Some((t, digest)) => {
                let digest = *digest;
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
                            token_hash,
                            wallet: t.wallet_id(),
                            counter: t.payment.counter,
                            credential: digest,
                            total_before: t.payment.total_before,
                            authorised: t.payment.amount,
                            reader: batch.reader_id.clone(),
                            seq: r.body.seq,
                        },
                        CredentialLimits {
                            offline_limit: terms.offline_limit,
                            valid_until: terms.valid_until(),
                        },
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
            token_hash,
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

#[cfg(test)]
mod tests {
    use ed25519_dalek::SigningKey;

    use super::*;
    use sonotap_protocol::record::{GENESIS_HASH, RecordBody};
    use sonotap_protocol::testkit::{NOW, keys, payment, terms, token_bytes};
    use sonotap_protocol::token::PaymentTerms;
    use sonotap_protocol::wire::BatchRecord;

    fn reader_key() -> SigningKey {
        SigningKey::from_bytes(&[9; 32])
    }

    /// A batch of `n` charges signed by the reader, with the record at
    /// `bad` (if any) carrying another key's signature: what a reader whose
    /// per-record signing is broken would send.
    fn batch(n: u32, bad: Option<usize>) -> Batch {
        let key = reader_key();
        let stranger = SigningKey::from_bytes(&[8; 32]);
        let mut prev = GENESIS_HASH;
        let mut records = Vec::new();
        for i in 0..n {
            let token = token_bytes(
                terms(),
                PaymentTerms {
                    counter: i + 1,
                    total_before: 10 * i,
                    amount: 10,
                    ..payment()
                },
            );
            let body = RecordBody {
                reader_id: "gate-1",
                seq: u64::from(i) + 1,
                at: NOW,
                kind: RecordKind::Charge,
                amount: 10,
                token: &token,
                prev_hash: prev,
            };
            let signer = if bad == Some(i as usize) {
                &stranger
            } else {
                &key
            };
            records.push(BatchRecord {
                at: NOW,
                kind: RecordKind::Charge,
                amount: 10,
                token: token.clone(),
                signature: body.sign(signer),
            });
            prev = body.hash();
        }
        Batch::seal("gate-1", 1, GENESIS_HASH, records, NOW, &key).expect("seal")
    }

    fn check(b: Batch, policy: RecordSignatureCheck) -> Result<CheckedBatch, BatchRefused> {
        check_batch(b, &reader_key().verifying_key(), &keys(), policy)
    }

    #[test]
    fn every_policy_refuses_a_bad_record_signature_in_the_middle() {
        let refused = check(batch(5, Some(2)), RecordSignatureCheck::Every);
        assert_eq!(
            refused.err(),
            Some(BatchRefused::BadRecordSignature {
                reader: "gate-1".into(),
                seq: 3
            })
        );
    }

    #[test]
    fn default_policy_stores_what_the_batch_signature_covers() {
        // The reader's batch signature vouches for record 3 whatever its own
        // signature says; the tokens are checked all the same.
        let checked = check(batch(5, Some(2)), RecordSignatureCheck::default()).expect("stored");
        assert_eq!(checked.records.len(), 5);
        assert!(checked.records.iter().all(|r| r.payment.is_ok()));
    }

    #[test]
    fn default_policy_refuses_a_reader_whose_last_record_signature_is_bad() {
        let refused = check(batch(5, Some(4)), RecordSignatureCheck::BatchAndLast);
        assert_eq!(
            refused.err(),
            Some(BatchRefused::BadRecordSignature {
                reader: "gate-1".into(),
                seq: 5
            })
        );
    }

    #[test]
    fn either_policy_refuses_a_batch_not_signed_by_the_reader() {
        let mut b = batch(3, None);
        b.records[1].amount += 1;
        for policy in [
            RecordSignatureCheck::BatchAndLast,
            RecordSignatureCheck::Every,
        ] {
            assert_eq!(
                check(b.clone(), policy).err(),
                Some(BatchRefused::BadBatchSignature {
                    reader: "gate-1".into()
                })
            );
        }
    }

    #[test]
    fn a_bad_wallet_signature_is_kept_and_named_under_either_policy() {
        let mut b = batch(3, None);
        // Flip a bit of record 2's wallet signature (the token's last bytes),
        // then re-sign the record and the batch as the reader would.
        let last = b.records[1].token.len() - 1;
        b.records[1].token[last] ^= 1;
        let key = reader_key();
        let mut prev = GENESIS_HASH;
        for (i, r) in b.records.iter_mut().enumerate() {
            let body = RecordBody {
                reader_id: "gate-1",
                seq: i as u64 + 1,
                at: r.at,
                kind: r.kind,
                amount: r.amount,
                token: &r.token,
                prev_hash: prev,
            };
            r.signature = body.sign(&key);
            prev = body.hash();
        }
        let b = Batch::seal("gate-1", 1, GENESIS_HASH, b.records, NOW, &key).expect("seal");
        for policy in [
            RecordSignatureCheck::BatchAndLast,
            RecordSignatureCheck::Every,
        ] {
            let checked = check(b.clone(), policy).expect("kept");
            assert_eq!(
                checked.records[1]
                    .payment
                    .as_ref()
                    .err()
                    .map(String::as_str),
                Some("bad wallet signature")
            );
            assert!(checked.records[0].payment.is_ok() && checked.records[2].payment.is_ok());
        }
    }
}
