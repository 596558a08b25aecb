//! Ingesting a checked batch, written once for every database backend.
//!
//! A backend provides a [`Ledger`]: primitive reads and writes inside one
//! database transaction. [`ingest`] decides (idempotency, chain links,
//! deduplication, clearing rules, deny entries) and the backend commits,
//! so a batch is stored whole or not at all, and the acknowledgement is
//! only signed after the commit.

use std::collections::HashMap;

use serde::Serialize;

use super::HubError;
use super::accounts::{self, NewEntry};
use super::backend::book;
use super::clearing::{self, Context, Finding, FraudRule, Payment, Sanction};
use super::verify::{CheckedBatch, CheckedRecord, CredentialLimits};
use sonotap_protocol::record::RecordKind;
use sonotap_protocol::token::WalletId;
use sonotap_protocol::wire::{
    AccountState, DenyAction, DenyEntry, DenyReason, DenyScope, EntryKind, Totals,
};

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
    /// Written by hubs before issue 17; a charge of a token already cleared
    /// is now a replay (`replays`, [`Ledger::insert_replay`]).
    DuplicateToken,
    /// A void names no earlier charge of that token at that reader.
    VoidWithoutCharge,
    /// A void of a charge that was voided before; it changed nothing.
    VoidRepeated,
    /// A void of more than is left of its charge; only what was left was voided.
    VoidOverCharge,
}

impl IncidentKind {
    /// Every kind.
    pub const ALL: [IncidentKind; 7] = [
        IncidentKind::Edited,
        IncidentKind::Unchained,
        IncidentKind::InvalidToken,
        IncidentKind::DuplicateToken,
        IncidentKind::VoidWithoutCharge,
        IncidentKind::VoidRepeated,
        IncidentKind::VoidOverCharge,
    ];

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

/// Picks which of a token's earlier charges at one reader a void cancels:
/// the latest not voided yet (a void follows the charge it undoes), else
/// the latest (then [`bound_void`] finds it voided and applies nothing).
/// `charges` are `(seq, what is left)`; returns an index into them.
pub fn pick_voided(charges: &[(u64, ChargeLeft)]) -> Option<usize> {
    let latest = |unvoided: bool| {
        charges
            .iter()
            .enumerate()
            .filter(|(_, (_, left))| !unvoided || left.voids == 0)
            .max_by_key(|(_, (seq, _))| *seq)
            .map(|(i, _)| i)
    };
    latest(true).or_else(|| latest(false))
}

/// One more charge of a token the hub had cleared already (a replay):
/// where, and what is left of it after voids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayCharge {
    /// The reader that charged it.
    pub reader: String,
    /// The record's sequence number there.
    pub seq: u64,
    /// Its net charge and void count.
    pub left: ChargeLeft,
}

/// A credential suspended for review after a counter conflict.
#[derive(Debug, Clone, Copy)]
pub struct Suspension<'a> {
    /// The version of the deny entry that published it (its id).
    pub deny_version: u64,
    /// The credential's digest.
    pub credential: [u8; 32],
    /// The wallet it was issued to.
    pub wallet: WalletId,
    /// The rule that opened it.
    pub rule: FraudRule,
    /// What was seen.
    pub detail: &'a str,
    /// Hub time, Unix seconds.
    pub at: u64,
}

/// A suspension not cleared yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenSuspension {
    /// The version of the deny entry that published it.
    pub deny_version: u64,
    /// The credential's digest.
    pub credential: [u8; 32],
    /// The wallet it was issued to.
    pub wallet: WalletId,
}

/// What an operator's `hub clear` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClearTarget {
    /// One credential, by digest.
    Credential([u8; 32]),
    /// Every open suspension of a wallet's credentials.
    Wallet(WalletId),
}

impl std::fmt::Display for ClearTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClearTarget::Credential(c) => write!(f, "credential {}", hex::encode(c)),
            ClearTarget::Wallet(w) => write!(f, "wallet {}", hex::encode(w.0)),
        }
    }
}

/// Who lifted a suspension, when and why (kept at the hub).
#[derive(Debug, Clone, Copy)]
pub struct Clearance<'a> {
    /// The operator.
    pub by: &'a str,
    /// Why.
    pub note: &'a str,
    /// Hub time, Unix seconds.
    pub at: u64,
}

/// A suspension lifted by [`clear`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cleared {
    /// The credential.
    pub credential: [u8; 32],
    /// Its wallet.
    pub wallet: WalletId,
    /// The deny-list version that suspended it.
    pub suspended_by: u64,
    /// The signed allow entry that lifts it at the readers.
    pub entry: DenyEntry,
}

/// A stored finding: its rule's code, and the credential of the payment
/// it was found on (`None` for findings stored before issue 17).
pub type FlagOn = (String, Option<[u8; 32]>);

/// Signs deny-list entries on the hub's behalf.
pub trait DenySigner {
    /// Signs the entry with the given version: for the whole `wallet`, or
    /// for one of its credentials.
    fn sign(
        &self,
        version: u64,
        action: DenyAction,
        wallet: WalletId,
        scope: DenyScope,
        at: u64,
        reason: DenyReason,
    ) -> Result<DenyEntry, HubError>;
}

/// Primitive operations inside one backend transaction.
pub trait Ledger: crate::backend::book::Sql {
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
    /// The net charges of every payment under `credential` so far in this
    /// transaction.
    fn credential_charged(&mut self, credential: &[u8; 32]) -> Result<i64, HubError>;
    /// Writes the credentials' net charges kept so far in this transaction
    /// to `credential_spend`, so that SQL in it reads them (an account's
    /// balance, docs/accounts.md §4).
    fn write_credential_totals(&mut self) -> Result<(), HubError>;
    /// Appends the `void` entries of a batch's voids to the accounts'
    /// ledger, with ids after the batch's payments (a statement lists a
    /// void after its charge).
    fn append_voids(&mut self, entries: &[NewEntry]) -> Result<(), HubError>;
    /// What is left of the charge of stored `payment` (same wallet, counter
    /// and token hash), and how many voids it has had.
    fn charge_left(&mut self, payment: &Payment) -> Result<ChargeLeft, HubError>;
    /// Takes `amount` off the net charge of stored `payment` and off its
    /// credential's total, and counts one void against it. [`ingest`]
    /// never asks for more than [`Ledger::charge_left`] said was left.
    fn void_charge(&mut self, payment: &Payment, amount: u32) -> Result<(), HubError>;
    /// Stores one more charge of the stored payment `first`'s token, at
    /// `reader` #`seq`, for `charged`. It is never added to the
    /// credential's total: the token counts once against the wallet.
    fn insert_replay(
        &mut self,
        first: &Payment,
        reader: &str,
        seq: u64,
        charged: u32,
    ) -> Result<(), HubError>;
    /// The replayed charges of `first`'s token at `reader`, ascending by seq.
    fn replays_at(&mut self, first: &Payment, reader: &str) -> Result<Vec<ReplayCharge>, HubError>;
    /// Takes `amount` off the replayed charge at `reader` #`seq` and counts
    /// one void against it ([`ingest`] never asks for more than is left).
    fn void_replay(
        &mut self,
        first: &Payment,
        reader: &str,
        seq: u64,
        amount: u32,
    ) -> Result<(), HubError>;
    /// Whether `credential` has a suspension not cleared yet.
    fn is_suspended(&mut self, credential: &[u8; 32]) -> Result<bool, HubError>;
    /// Stores a suspension (its deny entry goes through [`Ledger::insert_deny`]).
    fn insert_suspension(&mut self, suspension: &Suspension<'_>) -> Result<(), HubError>;
    /// The suspensions of `target` not cleared yet, oldest first.
    fn open_suspensions(&mut self, target: ClearTarget) -> Result<Vec<OpenSuspension>, HubError>;
    /// Marks the suspension published by `deny_version` cleared by the
    /// allow entry `allow_version`.
    fn clear_suspension(
        &mut self,
        deny_version: u64,
        allow_version: u64,
        clearance: &Clearance<'_>,
    ) -> Result<(), HubError>;
    /// Records a fraud finding against `wallet`, on a payment under `credential`.
    fn insert_flag(
        &mut self,
        wallet: WalletId,
        credential: &[u8; 32],
        finding: &Finding,
        evidence: &str,
        at: u64,
    ) -> Result<(), HubError>;
    /// The wallet's findings: each rule and the credential of its payment
    /// (`None` for findings stored before issue 17).
    fn wallet_flags(&mut self, wallet: WalletId) -> Result<Vec<FlagOn>, HubError>;
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
    /// Why the wallet is denied, if its latest deny-list entry for the
    /// whole wallet denies it (entries for one credential do not count).
    fn wallet_denial(&mut self, wallet: WalletId) -> Result<Option<DenyReason>, HubError>;
    /// Whether the wallet's latest entry for the whole wallet denies it.
    fn is_denied(&mut self, wallet: WalletId) -> Result<bool, HubError> {
        Ok(self.wallet_denial(wallet)?.is_some())
    }
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
    /// Credentials newly suspended for review (hex digests).
    pub suspended: Vec<String>,
    /// Wallets allowed again because every finding behind their denial
    /// now stands with a suspension of its credential (hex ids).
    pub lifted: Vec<String>,
    /// Charges of tokens the hub had cleared already (replays).
    pub replays: u32,
    /// Incidents noted (chain breaks, invalid tokens, voids not applied).
    pub incidents: u32,
    /// Accounts this batch left in debt, now suspended (their phones denied).
    pub accounts_suspended: Vec<String>,
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
        suspended: Vec::new(),
        lifted: Vec::new(),
        replays: 0,
        incidents: 0,
        accounts_suspended: Vec::new(),
    };

    // Idempotency: a record already stored must be byte-identical (same hash).
    let stored: HashMap<u64, Link> = ledger
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
    // Accounts (docs/accounts.md §4): a charge debits its account as the
    // payment stored below, with no work here; a void that gives money
    // back is an entry, written after the loop. Only the accounts that
    // this batch may leave short are looked at (and, on PostgreSQL,
    // locked, before anything else the loop locks).
    let short = accounts_it_may_leave_short(ledger, &fresh, now)?;
    book::lock_accounts(ledger, &short)?;
    let mut voids: Vec<(&Payment, &CheckedRecord, u32)> = Vec::new();
    ledger.insert_records(reader, &fresh, now)?;
    for record in fresh {
        report.new_records += 1;
        let (payment, limits) = match &record.payment {
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
                    // A replay: charged again, counted once against the
                    // wallet; kept with its amount for the report.
                    ledger.insert_replay(first, reader, record.seq, record.amount)?;
                    report.replays += 1;
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
                    offline_limit: limits.offline_limit,
                };
                let findings = clearing::check(payment, &ctx);
                if findings.is_empty() {
                    continue;
                }
                let under_review = ledger.is_suspended(&payment.credential)?;
                let sanction = clearing::sanction(payment, &ctx, &findings, under_review);
                let flagged = flag(ledger, signer, payment, &findings, &sanction, now)?;
                if flagged.wallet_denied {
                    report.flagged.push(hex::encode(payment.wallet.0));
                }
                report
                    .suspended
                    .extend(flagged.suspended.iter().map(hex::encode));
                if flagged.wallet_lifted {
                    report.lifted.push(hex::encode(payment.wallet.0));
                }
            }
            RecordKind::Void => {
                // Only a charge of this token earlier in this reader's own
                // chain can be voided by it: the one the hub cleared first,
                // or a replay of it.
                let first = ledger
                    .payments_with_counter(payment.wallet, payment.counter)?
                    .into_iter()
                    .find(|p| p.token_hash == record.token_hash);
                let mut charges: Vec<(u64, ChargeLeft)> = Vec::new();
                let mut is_first: Vec<bool> = Vec::new();
                if let Some(first) = &first {
                    if first.reader == reader && first.seq < record.seq {
                        charges.push((first.seq, ledger.charge_left(first)?));
                        is_first.push(true);
                    }
                    for replay in ledger.replays_at(first, reader)? {
                        if replay.seq < record.seq {
                            charges.push((replay.seq, replay.left));
                            is_first.push(false);
                        }
                    }
                }
                let picked = pick_voided(&charges);
                let (Some(first), Some(i)) = (first, picked) else {
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
                let (seq, left) = charges[i];
                let bound = bound_void(record.amount, left);
                if bound.applied > 0 {
                    match is_first[i] {
                        true => {
                            ledger.void_charge(&first, bound.applied)?;
                            // Only the first charge was debited: a
                            // replay's void gives nothing back.
                            voids.push((payment, record, bound.applied));
                        }
                        false => ledger.void_replay(&first, reader, seq, bound.applied)?,
                    }
                }
                if let Some(kind) = bound.incident {
                    let detail = format!(
                        "void of {} against the charge at {} #{}, which had {} left after {} \
                         earlier void(s); {} voided",
                        record.amount, reader, seq, left.left, left.voids, bound.applied
                    );
                    ledger.insert_incident(reader, record.seq, kind, &detail, now)?;
                    report.incidents += 1;
                }
            }
        }
    }
    if !voids.is_empty() {
        let mut credentials: Vec<[u8; 32]> = voids.iter().map(|(p, _, _)| p.credential).collect();
        credentials.sort_unstable();
        credentials.dedup();
        let accounts: HashMap<[u8; 32], String> = book::credential_accounts(ledger, &credentials)?
            .into_iter()
            .collect();
        let entries: Vec<NewEntry> = voids
            .iter()
            .filter_map(|(payment, record, applied)| {
                accounts.get(&payment.credential).map(|account| NewEntry {
                    account: account.clone(),
                    kind: EntryKind::Void,
                    amount: i64::from(*applied),
                    at: record.at,
                    recorded_at: now,
                    source: reader.to_owned(),
                    seq: record.seq,
                    credential: Some(payment.credential),
                    token_hash: Some(record.token_hash),
                    note: String::new(),
                })
            })
            .collect();
        ledger.append_voids(&entries)?;
    }
    if !short.is_empty() {
        ledger.write_credential_totals()?;
        report.accounts_suspended = accounts::settle_debts(ledger, signer, &short, now)?;
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

/// The accounts (sorted) whose credentials the batch's charges may leave
/// short, that is with phones that could spend more than the account
/// holds (docs/accounts.md §2): a credential it charges past its offline
/// limit (counting every charge of the batch, before any void), one that
/// has expired (it may have settled), and one already watched because
/// its account is short. Any other charge lowers the balance and what
/// its credential could still spend alike.
fn accounts_it_may_leave_short(
    ledger: &mut dyn Ledger,
    fresh: &[&CheckedRecord],
    now: u64,
) -> Result<Vec<String>, HubError> {
    let mut charged: HashMap<[u8; 32], (u64, CredentialLimits)> = HashMap::new();
    for record in fresh.iter().filter(|r| r.kind == RecordKind::Charge) {
        if let Ok((payment, limits)) = &record.payment {
            let entry = charged.entry(payment.credential).or_insert((0, *limits));
            entry.0 += u64::from(record.amount);
        }
    }
    let mut credentials: Vec<[u8; 32]> = charged.keys().copied().collect();
    credentials.sort_unstable();
    let mut suspect = book::watched_among(ledger, &credentials, now)?;
    for credential in &credentials {
        let (batch, limits) = charged[credential];
        let before = u64::try_from(ledger.credential_charged(credential)?).unwrap_or(0);
        if limits.valid_until <= now || before + batch > u64::from(limits.offline_limit) {
            suspect.push(*credential);
        }
    }
    if suspect.is_empty() {
        return Ok(Vec::new());
    }
    suspect.sort_unstable();
    suspect.dedup();
    let mut accounts: Vec<String> = book::credential_accounts(ledger, &suspect)?
        .into_iter()
        .map(|(_, account)| account)
        .collect();
    accounts.sort_unstable();
    accounts.dedup();
    Ok(accounts)
}

/// What [`flag`] newly published.
#[derive(Debug, Default)]
struct Flagged {
    wallet_denied: bool,
    suspended: Vec<[u8; 32]>,
    wallet_lifted: bool,
}

/// Stores the findings and acts on the `sanction`: a wallet not denied
/// yet gets a signed deny entry; credentials not suspended yet get one each
/// (format 3) and a suspension row for the operator's review.
fn flag(
    ledger: &mut dyn Ledger,
    signer: &dyn DenySigner,
    payment: &Payment,
    findings: &[Finding],
    sanction: &Sanction,
    now: u64,
) -> Result<Flagged, HubError> {
    let wallet = payment.wallet;
    let evidence = serde_json::to_string(findings).unwrap_or_default();
    for finding in findings {
        ledger.insert_flag(wallet, &payment.credential, finding, &evidence, now)?;
    }
    let mut flagged = Flagged::default();
    match sanction {
        Sanction::None | Sanction::UnderReview => {}
        Sanction::DenyWallet(rule) => {
            if !ledger.is_denied(wallet)? {
                set_deny(
                    ledger,
                    signer,
                    DenyAction::Deny,
                    wallet,
                    rule.deny_reason(),
                    &evidence,
                    now,
                )?;
                flagged.wallet_denied = true;
            }
        }
        Sanction::Suspend(credentials) => {
            let rule = FraudRule::CounterReused;
            let detail = findings
                .iter()
                .find(|f| f.rule == rule)
                .map_or("", |f| f.detail.as_str());
            for credential in credentials {
                if ledger.is_suspended(credential)? {
                    continue;
                }
                let entry = append_deny(
                    ledger,
                    signer,
                    DenyAction::Deny,
                    wallet,
                    DenyScope::Credential(*credential),
                    rule.deny_reason(),
                    &evidence,
                    now,
                )?;
                ledger.insert_suspension(&Suspension {
                    deny_version: entry.version,
                    credential: *credential,
                    wallet,
                    rule,
                    detail,
                    at: now,
                })?;
                flagged.suspended.push(*credential);
            }
            // The same findings in the other order (a limit passed on the
            // credential reached the hub before its conflict did) denied the
            // wallet first: lift that, so the outcome does not depend on
            // which reader synced first.
            if let Some(reason) = ledger.wallet_denial(wallet)? {
                let flags = ledger.wallet_flags(wallet)?;
                let mut open = Vec::new();
                for (_, credential) in &flags {
                    if let Some(c) = credential
                        && !open.contains(c)
                        && ledger.is_suspended(c)?
                    {
                        open.push(*c);
                    }
                }
                // A phone of an account suspended or closed stays denied:
                // that denial is the account's, not these findings'.
                let account_open = !matches!(
                    book::wallet_account_state(ledger, wallet)?,
                    Some(AccountState::Suspended | AccountState::Closed)
                );
                if account_open && clearing::deny_is_under_review(reason, &flags, &open) {
                    set_deny(
                        ledger,
                        signer,
                        DenyAction::Allow,
                        wallet,
                        rule.deny_reason(),
                        &evidence,
                        now,
                    )?;
                    flagged.wallet_lifted = true;
                }
            }
        }
    }
    Ok(flagged)
}

/// Appends a signed deny-list entry for a whole wallet (for clearing and
/// for operators). The entry publishes `reason` only; `evidence` (the
/// findings, or an operator's note) stays in the hub's database.
pub fn set_deny(
    ledger: &mut dyn Ledger,
    signer: &dyn DenySigner,
    action: DenyAction,
    wallet: WalletId,
    reason: DenyReason,
    evidence: &str,
    now: u64,
) -> Result<DenyEntry, HubError> {
    append_deny(
        ledger,
        signer,
        action,
        wallet,
        DenyScope::Wallet,
        reason,
        evidence,
        now,
    )
}

/// Appends a signed deny-list entry for `scope` with the next version.
#[allow(clippy::too_many_arguments)]
fn append_deny(
    ledger: &mut dyn Ledger,
    signer: &dyn DenySigner,
    action: DenyAction,
    wallet: WalletId,
    scope: DenyScope,
    reason: DenyReason,
    evidence: &str,
    now: u64,
) -> Result<DenyEntry, HubError> {
    let version = ledger.deny_version()? + 1;
    let entry = signer.sign(version, action, wallet, scope, now, reason)?;
    ledger.insert_deny(&entry, evidence)?;
    Ok(entry)
}

/// An operator lifts the open suspensions of `target` after reviewing
/// them: each gets a signed allow entry for its credential (readers drop
/// the deny at their next sync) and is marked cleared with who, when and
/// why. Nothing open is an error that says where to look.
pub fn clear(
    ledger: &mut dyn Ledger,
    signer: &dyn DenySigner,
    target: ClearTarget,
    clearance: &Clearance<'_>,
) -> Result<Vec<Cleared>, HubError> {
    let open = ledger.open_suspensions(target)?;
    if open.is_empty() {
        return Err(HubError::NothingToClear {
            target: target.to_string(),
        });
    }
    let mut cleared = Vec::with_capacity(open.len());
    for s in open {
        let entry = append_deny(
            ledger,
            signer,
            DenyAction::Allow,
            s.wallet,
            DenyScope::Credential(s.credential),
            DenyReason::Operator,
            clearance.note,
            clearance.at,
        )?;
        ledger.clear_suspension(s.deny_version, entry.version, clearance)?;
        cleared.push(Cleared {
            credential: s.credential,
            wallet: s.wallet,
            suspended_by: s.deny_version,
            entry,
        });
    }
    Ok(cleared)
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

    #[test]
    fn issue17_a_void_cancels_the_latest_charge_not_voided_before_it() {
        let left = |voids| ChargeLeft { left: 250, voids };
        assert_eq!(pick_voided(&[]), None);
        assert_eq!(pick_voided(&[(3, left(0)), (7, left(0))]), Some(1));
        assert_eq!(pick_voided(&[(3, left(0)), (7, left(1))]), Some(0));
        assert_eq!(
            pick_voided(&[(3, left(1)), (7, left(1))]),
            Some(1),
            "all voided: the latest, which bound_void applies nothing to"
        );
    }
}
