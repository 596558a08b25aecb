//! Ingesting a checked batch, written once for every database backend.
//!
//! A backend provides a [`Ledger`]: primitive reads and writes inside one
//! database transaction. [`ingest`] decides (idempotency, chain links,
//! deduplication, clearing rules, deny entries) and the backend commits,
//! so a batch is stored whole or not at all, and the acknowledgement is
//! only signed after the commit.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;

use serde::Serialize;

use super::HubError;
use super::clearing::{self, Context, Finding, Payment};
use super::verify::{CheckedBatch, CheckedRecord};
use crate::record::RecordKind;
use crate::sync::wire::{DenyAction, DenyEntry, Totals};
use crate::token::WalletId;

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
    /// A void names no charge of that token at that reader.
    VoidWithoutCharge,
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
    /// Upload or import.
    pub via: Via,
    /// Hub time, Unix seconds.
    pub at: u64,
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
        reason: &str,
    ) -> Result<DenyEntry, HubError>;
}

/// What clearing needs to know about one charge, read in one go: the
/// stored payments with the same wallet counter, and the stored payments
/// with the nearest lower and higher counters under the same credential.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClearingView {
    /// Payments of the wallet with this counter (a token's hash is among
    /// them if the token was seen: same bytes, same wallet and counter).
    pub same_counter: Vec<Payment>,
    /// The payment with the nearest lower counter under the credential.
    pub before: Option<Payment>,
    /// The payment with the nearest higher counter under the credential.
    pub after: Option<Payment>,
}

/// Primitive operations inside one backend transaction.
///
/// Writes that happen once per record come in bulk ([`Ledger::insert_records`],
/// [`Ledger::insert_payments`]) and clearing reads one view per charge:
/// at tens of thousands of records a second, the number of statements is
/// what a database transaction spends its time on.
pub trait Ledger {
    /// The stored record `(reader, seq)`'s chain fields.
    fn link(&mut self, reader: &str, seq: u64) -> Result<Option<Link>, HubError>;
    /// The chain fields of the stored records `first..=last` of `reader`,
    /// ascending (one query for a batch's idempotency check).
    fn links(&mut self, reader: &str, first: u64, last: u64) -> Result<Vec<(u64, Link)>, HubError>;
    /// Stores records (their tokens' payment facts are stored separately).
    fn insert_records(
        &mut self,
        reader: &str,
        records: &[&CheckedRecord],
        received_at: u64,
    ) -> Result<(), HubError>;
    /// Stores the batch's receipt row.
    fn insert_batch(&mut self, row: &BatchRow<'_>) -> Result<(), HubError>;
    /// Payments of `wallet` with `counter`.
    fn payments_with_counter(
        &mut self,
        wallet: WalletId,
        counter: u32,
    ) -> Result<Vec<Payment>, HubError>;
    /// What clearing needs about a charge of `wallet`'s `counter` under
    /// `credential` (see [`ClearingView`]).
    fn clearing_view(
        &mut self,
        wallet: WalletId,
        credential: &[u8; 32],
        counter: u32,
    ) -> Result<ClearingView, HubError>;
    /// Stores new payments, each with its net charge.
    fn insert_payments(&mut self, payments: &[(Payment, u32)]) -> Result<(), HubError>;
    /// Adjusts the stored net charge of `payment`'s token (negative for a
    /// void, never below 0); returns the new net charge.
    fn adjust_charge(&mut self, payment: &Payment, delta: i64) -> Result<i64, HubError>;
    /// The net charges of every stored payment under `credential`.
    fn credential_charged(&mut self, credential: &[u8; 32]) -> Result<u64, HubError>;
    /// Sets the net charges under `credential` (kept beside the payments so
    /// the offline-limit rule needs no sum over them).
    fn set_credential_charged(
        &mut self,
        credential: &[u8; 32],
        charged: u64,
    ) -> Result<(), HubError>;
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

    let mut pending = PendingPayments::default();
    for record in &fresh {
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
                let stored =
                    ledger.clearing_view(payment.wallet, &payment.credential, payment.counter)?;
                let view = pending.merge(stored, payment);
                if let Some(first) = view
                    .same_counter
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
                let credential_charged =
                    pending.charge(ledger, &payment.credential, i64::from(record.amount))?;
                pending.push(payment.clone(), record.amount);
                let ctx = Context {
                    same_counter: &view.same_counter,
                    before: view.before.as_ref(),
                    after: view.after.as_ref(),
                    credential_charged,
                    offline_limit: *offline_limit,
                };
                let findings = clearing::check(payment, &ctx);
                if !findings.is_empty() && flag(ledger, signer, payment.wallet, &findings, now)? {
                    report.flagged.push(hex::encode(payment.wallet.0));
                }
            }
            RecordKind::Void => {
                let charged_here = |p: &Payment| {
                    p.token_hash == record.token_hash && p.reader == reader && p.seq < record.seq
                };
                let delta = -i64::from(record.amount);
                if pending.adjust(payment, &charged_here, delta) {
                    pending.charge(ledger, &payment.credential, delta)?;
                } else if ledger
                    .payments_with_counter(payment.wallet, payment.counter)?
                    .iter()
                    .any(charged_here)
                {
                    ledger.adjust_charge(payment, delta)?;
                    pending.charge(ledger, &payment.credential, delta)?;
                } else {
                    let detail = "void of a token this reader did not charge before; ignored";
                    ledger.insert_incident(
                        reader,
                        record.seq,
                        IncidentKind::VoidWithoutCharge,
                        detail,
                        now,
                    )?;
                    report.incidents += 1;
                }
            }
        }
    }
    ledger.insert_records(reader, &fresh, now)?;
    pending.flush(ledger)?;
    ledger.insert_batch(&BatchRow {
        reader,
        first: batch.first_seq,
        last: batch.last_seq(),
        totals: batch.totals(),
        last_hash,
        via,
        at: now,
    })?;
    Ok(report)
}

/// The payments of the batch being ingested, written to the ledger in bulk
/// when the batch ends, and consulted (with the stored ones) by each later
/// record of the batch; with each touched credential's running net charge.
#[derive(Default)]
struct PendingPayments {
    payments: Vec<(Payment, u32)>,
    by_counter: HashMap<(WalletId, u32), Vec<usize>>,
    by_credential: HashMap<[u8; 32], BTreeMap<u32, usize>>,
    /// Net charges per credential: stored value plus this batch's changes.
    charged: HashMap<[u8; 32], u64>,
}

impl PendingPayments {
    /// The stored view of a charge completed with this batch's payments.
    fn merge(&self, mut view: ClearingView, p: &Payment) -> ClearingView {
        if let Some(found) = self.by_counter.get(&(p.wallet, p.counter)) {
            view.same_counter
                .extend(found.iter().map(|&i| self.payments[i].0.clone()));
        }
        if let Some(counters) = self.by_credential.get(&p.credential) {
            if let Some((_, &i)) = counters.range(..p.counter).next_back() {
                let mine = &self.payments[i].0;
                if view
                    .before
                    .as_ref()
                    .is_none_or(|b| b.counter < mine.counter)
                {
                    view.before = Some(mine.clone());
                }
            }
            let above = (Bound::Excluded(p.counter), Bound::Unbounded);
            if let Some((_, &i)) = counters.range(above).next() {
                let mine = &self.payments[i].0;
                if view.after.as_ref().is_none_or(|a| a.counter > mine.counter) {
                    view.after = Some(mine.clone());
                }
            }
        }
        view
    }

    fn push(&mut self, payment: Payment, charged: u32) {
        let i = self.payments.len();
        self.by_counter
            .entry((payment.wallet, payment.counter))
            .or_default()
            .push(i);
        self.by_credential
            .entry(payment.credential)
            .or_default()
            .entry(payment.counter)
            .or_insert(i);
        self.payments.push((payment, charged));
    }

    /// Adds `delta` to the net charges under `credential` (never below 0,
    /// as a void of more than was charged refunds what was charged);
    /// returns the new total.
    fn charge(
        &mut self,
        ledger: &mut dyn Ledger,
        credential: &[u8; 32],
        delta: i64,
    ) -> Result<u64, HubError> {
        let total = match self.charged.get(credential) {
            Some(&t) => t,
            None => ledger.credential_charged(credential)?,
        };
        let total = total.saturating_add_signed(delta);
        self.charged.insert(*credential, total);
        Ok(total)
    }

    /// Voids against a payment of this batch; false if none matches.
    fn adjust(&mut self, p: &Payment, matches: &dyn Fn(&Payment) -> bool, delta: i64) -> bool {
        let Some(found) = self.by_counter.get(&(p.wallet, p.counter)) else {
            return false;
        };
        let Some(&i) = found.iter().find(|&&i| matches(&self.payments[i].0)) else {
            return false;
        };
        let charged = &mut self.payments[i].1;
        *charged = u32::try_from(i64::from(*charged).saturating_add(delta).max(0)).unwrap_or(0);
        true
    }

    fn flush(self, ledger: &mut dyn Ledger) -> Result<(), HubError> {
        ledger.insert_payments(&self.payments)?;
        for (credential, charged) in &self.charged {
            ledger.set_credential_charged(credential, *charged)?;
        }
        Ok(())
    }
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
    let reason = findings.first().map_or("fraud", |f| f.rule.as_str());
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

/// Appends a signed deny-list entry (for clearing and for operators).
pub fn set_deny(
    ledger: &mut dyn Ledger,
    signer: &dyn DenySigner,
    action: DenyAction,
    wallet: WalletId,
    reason: &str,
    evidence: &str,
    now: u64,
) -> Result<DenyEntry, HubError> {
    let version = ledger.deny_version()? + 1;
    let entry = signer.sign(version, action, wallet, now, reason)?;
    ledger.insert_deny(&entry, evidence)?;
    Ok(entry)
}
