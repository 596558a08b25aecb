//! Ingesting a checked batch, written once for every database backend.
//!
//! A backend provides a [`Ledger`]: primitive reads and writes inside one
//! database transaction. [`ingest`] decides (idempotency, chain links,
//! deduplication, clearing rules, deny entries) and the backend commits,
//! so a batch is stored whole or not at all, and the acknowledgement is
//! only signed after the commit.

use serde::Serialize;

use super::HubError;
use super::clearing::{self, Context, Finding, Payment};
use super::verify::{CheckedBatch, CheckedRecord};
use sonotap_protocol::record::RecordKind;
use sonotap_protocol::token::WalletId;
use sonotap_protocol::wire::{DenyAction, DenyEntry, DenyReason, Totals};

/// How a batch reached the hub.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Via {
    /// Uploaded over HTTP(S).
    Network,
    /// Imported from a batch file.
    Import,
}

impl Via {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Via::Network => "network",
            Via::Import => "import",
        }
    }
}

/// A stored record's chain fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Link {
    /// The hash it names as its predecessor's.
    pub prev_hash: [u8; 32],
    /// Its own hash.
    pub hash: [u8; 32],
}

/// What the hub noticed about a reader's records that is not wallet fraud.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IncidentKind {
    /// A record at a stored sequence number with other contents was offered.
    Edited,
    /// A record does not name its stored predecessor's hash.
    Unchained,
    /// The reader accepted a token whose signatures do not verify.
    InvalidToken,
    /// The same token was charged again (at another reader, or twice).
    DuplicateToken,
    /// A void names no earlier charge of that token at that reader.
    VoidWithoutCharge,
    /// A void of a charge that was voided before; it changed nothing.
    VoidRepeated,
    /// A void of more than is left of its charge; only what was left was voided.
    VoidOverCharge,
}

impl IncidentKind {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            IncidentKind::Edited => "edited",
            IncidentKind::Unchained => "unchained",
            IncidentKind::InvalidToken => "invalid_token",
            IncidentKind::DuplicateToken => "duplicate_token",
            IncidentKind::VoidWithoutCharge => "void_without_charge",
            IncidentKind::VoidRepeated => "void_repeated",
            IncidentKind::VoidOverCharge => "void_over_charge",
        }
    }
}

/// The receipt row of a stored batch.
#[derive(Debug, Clone, Copy)]
pub struct BatchRow<'a> {
    /// The reader.
    pub reader: &'a str,
    /// First sequence number.
    pub first: u64,
    /// Last sequence number.
    pub last: u64,
    /// Count and sums.
    pub totals: Totals,
    /// Hash of the last record.
    pub last_hash: [u8; 32],
    /// When the reader made the batch (Unix seconds), as it signed it.
    pub created_at: u64,
    /// The reader's signature over the batch: with `created_at` and the
    /// stored records `first..=last` it is the evidence that the reader sent
    /// them (the batch's bytes can be rebuilt from those rows).
    pub signature: &'a [u8; 64],
    /// Upload or import.
    pub via: Via,
    /// Hub time, Unix seconds.
    pub at: u64,
}

/// What is left of a stored payment's charge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChargeLeft {
    /// Its net charge: what was charged minus what was voided.
    pub left: u32,
    /// The voids applied to it so far (at most one is ever applied).
    pub voids: u32,
}

/// How much of a void the hub applies, and why not all of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VoidBound {
    /// The amount taken off the charge and its credential's total.
    pub applied: u32,
    /// Set when the void was not applied as claimed.
    pub incident: Option<IncidentKind>,
}

/// Bounds a void of `claimed` against a charge with `charge` left: a charge
/// is voided at most once, for at most what is left of it, so that a void
/// can never take spend off the credential's total that its charge did not
/// add (which would hide over-limit spending at every other reader).
pub fn bound_void(claimed: u32, charge: ChargeLeft) -> VoidBound {
    if charge.voids > 0 {
        VoidBound {
            applied: 0,
            incident: Some(IncidentKind::VoidRepeated),
        }
    } else if claimed > charge.left {
        VoidBound {
            applied: charge.left,
            incident: Some(IncidentKind::VoidOverCharge),
        }
    } else {
        VoidBound {
            applied: claimed,
            incident: None,
        }
    }
}

/// Signs deny-list entries on the hub's behalf.
pub trait DenySigner {
    /// Signs the entry with the given version.
    fn sign(
        &self,
        version: u64,
        action: DenyAction,
        wallet: WalletId,
        at: u64,
        reason: DenyReason,
    ) -> Result<DenyEntry, HubError>;
}

/// Primitive operations inside one backend transaction.
pub trait Ledger {
    /// The stored record `(reader, seq)`'s chain fields.
    fn link(&mut self, reader: &str, seq: u64) -> Result<Option<Link>, HubError>;
    /// The chain fields of the stored records `first..=last` of `reader`,
    /// ascending (one query for a batch's idempotency check).
    fn links(&mut self, reader: &str, first: u64, last: u64) -> Result<Vec<(u64, Link)>, HubError>;
    /// Told, before clearing asks about them, which records an ingest will
    /// clear: a backend may read what clearing will look up for all of them
    /// at once. Lookups must answer alike with or without it.
    fn prefetch(&mut self, records: &[&CheckedRecord]) -> Result<(), HubError> {
        let _ = records;
        Ok(())
    }
    /// Stores a record (its token and payment facts are stored separately).
    fn insert_record(
        &mut self,
        reader: &str,
        record: &CheckedRecord,
        received_at: u64,
    ) -> Result<(), HubError>;
    /// Stores records in order; a backend may write many per statement.
    fn insert_records(
        &mut self,
        reader: &str,
        records: &[&CheckedRecord],
        received_at: u64,
    ) -> Result<(), HubError> {
        for record in records {
            self.insert_record(reader, record, received_at)?;
        }
        Ok(())
    }
    /// Stores the batch's receipt row.
    fn insert_batch(&mut self, row: &BatchRow<'_>) -> Result<(), HubError>;
    /// Payments of `wallet` with `counter` (a token's hash is among them
    /// if the token was seen: same bytes, same wallet and counter).
    fn payments_with_counter(
        &mut self,
        wallet: WalletId,
        counter: u32,
    ) -> Result<Vec<Payment>, HubError>;
    /// The payments with the nearest lower and higher counters under
    /// `credential` (which names `wallet`).
    fn neighbours(
        &mut self,
        wallet: WalletId,
        credential: &[u8; 32],
        counter: u32,
    ) -> Result<(Option<Payment>, Option<Payment>), HubError>;
    /// Stores a new payment with its first charge; returns the net charges
    /// of every payment under its credential, this one included.
    fn insert_payment(&mut self, payment: &Payment, charged: u32) -> Result<u64, HubError>;
    /// What is left of the charge of stored `payment` (same wallet, counter
    /// and token hash), and how many voids it has had.
    fn charge_left(&mut self, payment: &Payment) -> Result<ChargeLeft, HubError>;
    /// Takes `amount` off the net charge of stored `payment` and off its
    /// credential's total, and counts one void against it. [`ingest`]
    /// never asks for more than [`Ledger::charge_left`] said was left.
    fn void_charge(&mut self, payment: &Payment, amount: u32) -> Result<(), HubError>;
    /// Records a fraud finding against `wallet`.
    fn insert_flag(
        &mut self,
        wallet: WalletId,
        finding: &Finding,
        evidence: &str,
        at: u64,
    ) -> Result<(), HubError>;
    /// Records an incident.
    fn insert_incident(
        &mut self,
        reader: &str,
        seq: u64,
        kind: IncidentKind,
        detail: &str,
        at: u64,
    ) -> Result<(), HubError>;
    /// The newest deny-list version (0 when empty).
    fn deny_version(&mut self) -> Result<u64, HubError>;
    /// Whether the wallet's latest deny-list entry denies it.
    fn is_denied(&mut self, wallet: WalletId) -> Result<bool, HubError>;
    /// Appends a signed deny-list entry.
    fn insert_deny(&mut self, entry: &DenyEntry, evidence: &str) -> Result<(), HubError>;
}

/// What happened to an uploaded or imported batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IngestReport {
    /// `stored` (new records), `duplicate` (all seen before), or `conflict`.
    pub status: IngestStatus,
    /// Records stored now.
    pub new_records: u32,
    /// Records that were already stored, identically.
    pub already_stored: u32,
    /// Wallets newly flagged and denied.
    pub flagged: Vec<String>,
    /// Incidents noted (chain breaks, duplicates, invalid tokens).
    pub incidents: u32,
}

/// The outcome class of an ingest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IngestStatus {
    /// At least one record was new.
    Stored,
    /// Every record was already stored identically: a retry.
    Duplicate,
    /// A record differs from the stored one at its sequence number; nothing
    /// was stored but the incident.
    Conflict {
        /// The first differing sequence number.
        seq: u64,
    },
}

/// Stores a checked batch: idempotently, with the clearing rules applied.
pub fn ingest(
    ledger: &mut dyn Ledger,
    checked: &CheckedBatch,
    signer: &dyn DenySigner,
    via: Via,
    now: u64,
) -> Result<IngestReport, HubError> {
    let batch = &checked.batch;
    let reader = batch.reader_id.as_str();
    let mut report = IngestReport {
        status: IngestStatus::Stored,
        new_records: 0,
        already_stored: 0,
        flagged: Vec::new(),
        incidents: 0,
    };

    // Idempotency: a record already stored must be byte-identical (same hash).
    let stored: std::collections::HashMap<u64, Link> = ledger
        .links(reader, batch.first_seq, batch.last_seq())?
        .into_iter()
        .collect();
    let mut fresh = Vec::with_capacity(checked.records.len());
    for record in &checked.records {
        match stored.get(&record.seq) {
            None => fresh.push(record),
            Some(link) if link.hash == record.hash => report.already_stored += 1,
            Some(_) => {
                let detail = format!(
                    "record {} offered with contents that differ from the stored record",
                    record.seq
                );
                ledger.insert_incident(reader, record.seq, IncidentKind::Edited, &detail, now)?;
                report.status = IngestStatus::Conflict { seq: record.seq };
                report.incidents = 1;
                return Ok(report);
            }
        }
    }
    if fresh.is_empty() {
        report.status = IngestStatus::Duplicate;
        return Ok(report);
    }

    // Links to stored neighbours outside the batch (inside, they chain by construction).
    if batch.first_seq > 1
        && let Some(before) = ledger.link(reader, batch.first_seq - 1)?
        && before.hash != batch.prev_hash
    {
        let detail = format!(
            "record {} does not name the stored record {}'s hash",
            batch.first_seq,
            batch.first_seq - 1
        );
        ledger.insert_incident(
            reader,
            batch.first_seq,
            IncidentKind::Unchained,
            &detail,
            now,
        )?;
        report.incidents += 1;
    }
    let last_hash = checked.last_hash();
    if let Some(after) = ledger.link(reader, batch.last_seq() + 1)?
        && after.prev_hash != last_hash
    {
        let detail = format!(
            "stored record {} does not name record {}'s hash",
            batch.last_seq() + 1,
            batch.last_seq()
        );
        ledger.insert_incident(
            reader,
            batch.last_seq() + 1,
            IncidentKind::Unchained,
            &detail,
            now,
        )?;
        report.incidents += 1;
    }

    ledger.prefetch(&fresh)?;
    ledger.insert_records(reader, &fresh, now)?;
    for record in fresh {
        report.new_records += 1;
        let (payment, offline_limit) = match &record.payment {
            Ok(p) => p,
            Err(why) => {
                let detail =
                    format!("the reader accepted a token that fails the hub's checks: {why}");
                ledger.insert_incident(
                    reader,
                    record.seq,
                    IncidentKind::InvalidToken,
                    &detail,
                    now,
                )?;
                report.incidents += 1;
                continue;
            }
        };
        match record.kind {
            RecordKind::Charge => {
                let same_counter = ledger.payments_with_counter(payment.wallet, payment.counter)?;
                if let Some(first) = same_counter
                    .iter()
                    .find(|p| p.token_hash == record.token_hash)
                {
                    let detail = format!(
                        "token already charged at {} #{}; counted once",
                        first.reader, first.seq
                    );
                    ledger.insert_incident(
                        reader,
                        record.seq,
                        IncidentKind::DuplicateToken,
                        &detail,
                        now,
                    )?;
                    report.incidents += 1;
                    continue;
                }
                let (before, after) =
                    ledger.neighbours(payment.wallet, &payment.credential, payment.counter)?;
                let credential_charged = ledger.insert_payment(payment, record.amount)?;
                let ctx = Context {
                    same_counter: &same_counter,
                    before: before.as_ref(),
                    after: after.as_ref(),
                    credential_charged,
                    offline_limit: *offline_limit,
                };
                let findings = clearing::check(payment, &ctx);
                if !findings.is_empty() && flag(ledger, signer, payment.wallet, &findings, now)? {
                    report.flagged.push(hex::encode(payment.wallet.0));
                }
            }
            RecordKind::Void => {
                // Only a charge of this token earlier in this reader's own
                // chain can be voided by it.
                let charge = ledger
                    .payments_with_counter(payment.wallet, payment.counter)?
                    .into_iter()
                    .find(|p| {
                        p.token_hash == record.token_hash
                            && p.reader == reader
                            && p.seq < record.seq
                    });
                let Some(charge) = charge else {
                    let detail = format!(
                        "void of {} for a token this reader did not charge before; ignored",
                        record.amount
                    );
                    ledger.insert_incident(
                        reader,
                        record.seq,
                        IncidentKind::VoidWithoutCharge,
                        &detail,
                        now,
                    )?;
                    report.incidents += 1;
                    continue;
                };
                let left = ledger.charge_left(&charge)?;
                let bound = bound_void(record.amount, left);
                if bound.applied > 0 {
                    ledger.void_charge(&charge, bound.applied)?;
                }
                if let Some(kind) = bound.incident {
                    let detail = format!(
                        "void of {} against the charge at {} #{}, which had {} left after {} \
                         earlier void(s); {} voided",
                        record.amount,
                        charge.reader,
                        charge.seq,
                        left.left,
                        left.voids,
                        bound.applied
                    );
                    ledger.insert_incident(reader, record.seq, kind, &detail, now)?;
                    report.incidents += 1;
                }
            }
        }
    }
    ledger.insert_batch(&BatchRow {
        reader,
        first: batch.first_seq,
        last: batch.last_seq(),
        totals: batch.totals(),
        last_hash,
        created_at: batch.created_at,
        signature: &batch.signature,
        via,
        at: now,
    })?;
    Ok(report)
}

/// Stores the findings and, if the wallet is not denied yet, appends a
/// signed deny entry. Returns whether the wallet was newly denied.
fn flag(
    ledger: &mut dyn Ledger,
    signer: &dyn DenySigner,
    wallet: WalletId,
    findings: &[Finding],
    now: u64,
) -> Result<bool, HubError> {
    let evidence = serde_json::to_string(findings).unwrap_or_default();
    for finding in findings {
        ledger.insert_flag(wallet, finding, &evidence, now)?;
    }
    if ledger.is_denied(wallet)? {
        return Ok(false);
    }
    let reason = findings
        .first()
        .map_or(DenyReason::SuspectedFraud, |f| f.rule.deny_reason());
    set_deny(
        ledger,
        signer,
        DenyAction::Deny,
        wallet,
        reason,
        &evidence,
        now,
    )?;
    Ok(true)
}

/// Appends a signed deny-list entry (for clearing and for operators). The
/// entry publishes `reason` only; `evidence` (the findings, or an
/// operator's note) stays in the hub's database.
pub fn set_deny(
    ledger: &mut dyn Ledger,
    signer: &dyn DenySigner,
    action: DenyAction,
    wallet: WalletId,
    reason: DenyReason,
    evidence: &str,
    now: u64,
) -> Result<DenyEntry, HubError> {
    let version = ledger.deny_version()? + 1;
    let entry = signer.sign(version, action, wallet, now, reason)?;
    ledger.insert_deny(&entry, evidence)?;
    Ok(entry)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issue13_02_a_void_takes_at_most_what_is_left_and_only_once() {
        let fresh = |left| ChargeLeft { left, voids: 0 };
        assert_eq!(
            bound_void(500, fresh(500)),
            VoidBound {
                applied: 500,
                incident: None
            }
        );
        assert_eq!(
            bound_void(100_000, fresh(500)),
            VoidBound {
                applied: 500,
                incident: Some(IncidentKind::VoidOverCharge)
            }
        );
        assert_eq!(
            bound_void(200, fresh(500)),
            VoidBound {
                applied: 200,
                incident: None
            },
            "a partial void is a void"
        );
        for claimed in [0, 1, 500] {
            assert_eq!(
                bound_void(
                    claimed,
                    ChargeLeft {
                        left: 300,
                        voids: 1
                    }
                ),
                VoidBound {
                    applied: 0,
                    incident: Some(IncidentKind::VoidRepeated)
                },
                "a second void changes nothing"
            );
        }
    }
}
