//! The hub's storage, behind a trait so that one operator can run on the
//! embedded SQLite file and a larger fleet on PostgreSQL.
//!
//! Decisions live in [`super::ledger`] and [`super::clearing`]; a backend
//! only stores, fetches and provides transactions, so every backend clears
//! the same way.

use serde::Serialize;

use super::HubError;
use super::ledger::{DenySigner, IngestReport, Via};
use super::verify::CheckedBatch;
use sonotap_protocol::token::{Credential, WalletId};
use sonotap_protocol::wire::{DenyAction, DenyEntry, DenyReason};

/// Where the hub keeps its state.
pub trait HubBackend: Send {
    /// A short description for logs (`sqlite:/path`, `postgres://host/db`).
    fn describe(&self) -> String;
    /// Adds an issuer public key.
    fn add_issuer_key(&mut self, key_id: u8, key: &[u8; 32], now: u64) -> Result<(), HubError>;
    /// The issuer keys in use, ascending key ids.
    fn issuer_keys(&mut self) -> Result<Vec<(u8, [u8; 32])>, HubError>;
    /// Logs an issued credential.
    fn log_credential(&mut self, credential: &Credential, now: u64) -> Result<(), HubError>;
    /// Registers a reader's key; `Ok(false)` if it was registered with the
    /// same key already, an error if with another key.
    fn add_reader(&mut self, id: &str, key: &[u8; 32], now: u64) -> Result<bool, HubError>;
    /// A registered reader's key.
    fn reader_key(&mut self, id: &str) -> Result<Option<[u8; 32]>, HubError>;
    /// Stores a checked batch in one transaction (see [`super::ledger::ingest`]).
    fn ingest(
        &mut self,
        checked: &CheckedBatch,
        signer: &dyn DenySigner,
        via: Via,
        now: u64,
    ) -> Result<IngestReport, HubError>;
    /// An operator's deny or allow: the entry publishes `reason`; `note`
    /// (free text) is kept in the hub's database only.
    fn set_deny(
        &mut self,
        signer: &dyn DenySigner,
        action: DenyAction,
        wallet: WalletId,
        reason: DenyReason,
        note: &str,
        now: u64,
    ) -> Result<DenyEntry, HubError>;
    /// The newest deny-list version and up to `limit` encoded entries after `since`.
    fn deny_entries(&mut self, since: u64, limit: u32) -> Result<(u64, Vec<Vec<u8>>), HubError>;
    /// Totals, flags and incidents for operators.
    fn report(&mut self) -> Result<Report, HubError>;
}

/// What `sonotap hub report` shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    /// Per registered reader.
    pub readers: Vec<ReaderReport>,
    /// Fraud findings, oldest first.
    pub flagged: Vec<FlagRow>,
    /// Chain breaks, duplicates and other incidents, oldest first.
    pub incidents: Vec<IncidentRow>,
    /// The newest deny-list version.
    pub deny_version: u64,
}

/// One reader's records at the hub.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReaderReport {
    /// Reader id.
    pub reader: String,
    /// Records held.
    pub records: u64,
    /// Sum of charges.
    pub charged: u64,
    /// Sum of voids.
    pub voided: u64,
    /// Lowest sequence number held.
    pub first_seq: Option<u64>,
    /// Highest sequence number held.
    pub last_seq: Option<u64>,
    /// Missing sequence ranges below the highest, inclusive.
    pub gaps: Vec<(u64, u64)>,
    /// When the last record arrived, Unix seconds.
    pub last_received_at: Option<u64>,
}

/// A fraud finding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FlagRow {
    /// Wallet id, hex.
    pub wallet: String,
    /// The rule's code.
    pub rule: String,
    /// What was seen.
    pub detail: String,
    /// When, Unix seconds.
    pub at: u64,
    /// Whether the wallet is denied now.
    pub denied: bool,
}

/// A reader-side incident.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IncidentRow {
    /// Reader id.
    pub reader: String,
    /// The record concerned.
    pub seq: u64,
    /// The incident's code.
    pub kind: String,
    /// What was seen.
    pub detail: String,
    /// When, Unix seconds.
    pub at: u64,
}
