//! The hub's storage: one SQLite file for one operator (`sqlite.rs`), a
//! PostgreSQL database for a larger fleet (`postgres.rs`), and the choice
//! between them by URL ([`open_database`]).
//!
//! Decisions are written once above the backends: writes in
//! [`crate::ledger`] and [`crate::clearing`] over a
//! [`Ledger`], reads here over a `Snapshot`. A
//! backend only stores, fetches and provides transactions, so every backend
//! clears and reports the same way. Every read runs in one snapshot (a
//! SQLite read transaction, a PostgreSQL REPEATABLE READ, READ ONLY one):
//! a report or a deny-list page never mixes two states of the database.
//!
//! A backend can open further read connections (`HubBackend::reader_opener`):
//! the server reads through them while an ingest holds the writer (a SQLite
//! reader in WAL mode never waits for the writer; a PostgreSQL reader takes
//! no lock).

pub mod book;
mod postgres;
mod sqlite;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;

pub(crate) use self::sqlite::SqliteHub;
use super::fleet::{Fleet, ReaderState, ReportState};
use super::ledger::{self, ClearTarget, Clearance, Cleared, DenySigner, IngestReport, Ledger, Via};
use super::verify::CheckedBatch;
use super::{Hub, HubError};
use sonotap_disk::sqlite::{StoreError, blob, unsigned};
use sonotap_protocol::api::StatusReport;
use sonotap_protocol::token::{Credential, WalletId};
use sonotap_protocol::wire::{DenyAction, DenyEntry, DenyReason};

/// Opens a hub directory's issuer key with its state where `database`
/// says: `None` is the directory's SQLite file, a `postgres://` or
/// `postgresql://` URL a PostgreSQL database (migrated if needed; the
/// directory's issuer key must be there, and is registered only in a
/// database that holds no key yet).
pub fn open_database(dir: &Path, database: Option<&str>, now: u64) -> Result<Hub, HubError> {
    match database {
        None => Hub::open(dir),
        Some(url) if is_postgres_url(url) => postgres::off_runtime(|| {
            let issuer = Hub::read_issuer(dir)?;
            let key = postgres::IssuerKey {
                key_id: issuer.key_id().unwrap_or(1),
                public: issuer.public().to_bytes(),
                now,
                adopt: postgres::Adopt::IfFirst,
            };
            let backend = postgres::PostgresHub::connect_as(url, Some(key))?;
            Ok(Hub::from_parts(issuer, Box::new(backend)))
        }),
        Some(other) => Err(unsupported(other)),
    }
}

/// Creates a hub directory's issuer key (with `key_id`) and its state
/// where `database` says (as [`open_database`]): the SQLite file, or a
/// PostgreSQL database, migrated, where the new key is registered.
pub fn init_database(
    dir: &Path,
    key_id: u8,
    database: Option<&str>,
    now: u64,
) -> Result<Hub, HubError> {
    match database {
        None => Hub::init(dir, key_id, now),
        Some(url) if is_postgres_url(url) => Hub::init_with(dir, key_id, |public| {
            let key = postgres::IssuerKey {
                key_id,
                public: *public,
                now,
                adopt: postgres::Adopt::New,
            };
            postgres::off_runtime(|| {
                Ok(Box::new(postgres::PostgresHub::connect_as(url, Some(key))?)
                    as Box<dyn HubBackend>)
            })
        }),
        Some(other) => Err(unsupported(other)),
    }
}

fn unsupported(url: &str) -> HubError {
    HubError::Backend(format!(
        "unsupported database URL {:?}: use postgres://… or postgresql://…, or leave \
         --database out for the SQLite file in the hub directory",
        postgres::redact(url)
    ))
}

fn is_postgres_url(url: &str) -> bool {
    ["postgres://", "postgresql://"].iter().any(|scheme| {
        url.get(..scheme.len())
            .is_some_and(|s| s.eq_ignore_ascii_case(scheme))
    })
}

/// Opens another read connection to the same state, for a request that
/// must not wait for the writer.
pub(crate) type ReaderOpener =
    Arc<dyn Fn() -> Result<Box<dyn ReadBackend>, HubError> + Send + Sync>;

/// A connection the hub reads through.
pub(crate) trait ReadBackend: Send {
    /// A short description for logs (`sqlite:/path`, `postgres://host/db`).
    fn describe(&self) -> String;
    /// Runs `f` once, inside one read-only snapshot of the state.
    fn snapshot(
        &mut self,
        f: &mut dyn FnMut(&mut dyn Snapshot) -> Result<(), HubError>,
    ) -> Result<(), HubError>;

    /// A registered reader's key.
    fn reader_key(&mut self, id: &str) -> Result<Option<[u8; 32]>, HubError> {
        read(self, |s| {
            let key = s.reader_key(id)?;
            Ok(key.map(|k| blob(s.path(), "reader key", k)).transpose()?)
        })
    }

    /// The issuer keys in use, ascending key ids.
    fn issuer_keys(&mut self) -> Result<Vec<(u8, [u8; 32])>, HubError> {
        read(self, |s| {
            let rows = s.issuer_keys()?;
            let path = s.path();
            rows.into_iter()
                .map(|(id, key)| {
                    Ok((
                        unsigned(path, "issuer key id", id)?,
                        blob(path, "issuer key", key)?,
                    ))
                })
                .collect()
        })
    }

    /// The newest deny-list version and up to `limit` encoded entries after
    /// `since`, from one snapshot.
    fn deny_entries(&mut self, since: u64, limit: u32) -> Result<(u64, Vec<Vec<u8>>), HubError> {
        read(self, |s| {
            let latest = s.deny_version()?;
            let entries = s.deny_page(since, limit)?;
            Ok((unsigned(s.path(), "deny version", latest)?, entries))
        })
    }

    /// Totals, flags and incidents for operators, from one snapshot.
    fn report(&mut self) -> Result<Report, HubError> {
        read(self, report)
    }

    /// The fleet's state, from one snapshot.
    fn fleet(&mut self) -> Result<Fleet, HubError> {
        read(self, fleet)
    }

    /// The suspensions for review with their evidence (every one with
    /// `all`, else those not cleared), from one snapshot.
    fn review(&mut self, all: bool) -> Result<Review, HubError> {
        read(self, |s| review(s, all))
    }

    /// The highest counter of `wallet` the hub has cleared, 0 for none.
    fn highest_counter(&mut self, wallet: WalletId) -> Result<u32, HubError> {
        read(self, |s| {
            let top = s.highest_counter(&wallet.0)?;
            Ok(top
                .map(|c| unsigned(s.path(), "counter", c))
                .transpose()?
                .unwrap_or(0))
        })
    }
}

/// A kept report signed further ahead of the hub's clock than a signed
/// request may be (`sonotap_protocol::wire::REQUEST_WINDOW_MS`) was stamped
/// by a hub clock since stepped back: the next report replaces it, so a
/// clock fixed on the hub cannot freeze readers' reports.
pub(crate) const STALE_REPORT_MS: u64 = sonotap_protocol::wire::REQUEST_WINDOW_MS;

/// How a reader's report reached the hub.
#[derive(Debug, Clone, Copy)]
pub struct Arrival {
    /// Hub clock minus reader clock on arrival, milliseconds.
    pub clock_offset_ms: i64,
    /// The time its signed request carries (hub time as the reader
    /// estimates it), Unix milliseconds: orders reports whatever the
    /// reader's own clock does.
    pub signed_ms: u64,
    /// When it arrived, hub clock, Unix milliseconds.
    pub at_ms: u64,
}

/// Time a hub connection spent taking the locks of its writes
/// (PostgreSQL's advisory locks; the time includes one round trip).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct LockWaits {
    /// Writes that took locks.
    pub writes: u64,
    /// Their time taking locks, summed.
    pub total: std::time::Duration,
    /// The longest of them.
    pub longest: std::time::Duration,
}

/// Where the hub keeps its state: reads, and the writes that go through
/// one writer.
pub(crate) trait HubBackend: ReadBackend {
    /// Adds an issuer public key.
    fn add_issuer_key(&mut self, key_id: u8, key: &[u8; 32], now: u64) -> Result<(), HubError>;
    /// Logs an issued credential.
    fn log_credential(&mut self, credential: &Credential, now: u64) -> Result<(), HubError>;
    /// Registers a reader's key; `Ok(false)` if it was registered with the
    /// same key already, an error if with another key.
    fn add_reader(&mut self, id: &str, key: &[u8; 32], now: u64) -> Result<bool, HubError>;
    /// Keeps a reader's report of itself in place of the one before,
    /// unless that one was signed later (a replayed request).
    fn record_report(
        &mut self,
        reader: &str,
        report: &StatusReport,
        arrival: &Arrival,
    ) -> Result<(), HubError>;
    /// Runs `f` once on a [`Ledger`] inside one write transaction, the
    /// only writer at a time, committed if `f` succeeds.
    fn transaction(
        &mut self,
        f: &mut dyn FnMut(&mut dyn Ledger) -> Result<(), HubError>,
    ) -> Result<(), HubError>;
    /// Opens read connections to the same state.
    fn reader_opener(&self) -> ReaderOpener;

    /// Runs `f` as [`HubBackend::transaction`] does, for a phone's request
    /// (docs/accounts.md): where writers run beside each other
    /// (PostgreSQL), it excludes no ingest and no other phone's request,
    /// since what it shares it locks by row (the account, the code).
    fn phone_transaction(
        &mut self,
        f: &mut dyn FnMut(&mut dyn Ledger) -> Result<(), HubError>,
    ) -> Result<(), HubError> {
        self.transaction(f)
    }

    /// Time spent taking locks, where the backend counts it.
    fn lock_waits(&self) -> Option<LockWaits> {
        None
    }

    /// Another connection that writes beside this one, where the backend
    /// clears concurrent writers correctly (PostgreSQL's advisory locks);
    /// `None` where writes are one at a time anyway (SQLite).
    fn another_writer(&self) -> Option<Result<Box<dyn HubBackend>, HubError>> {
        None
    }

    /// Stores a checked batch in one transaction (see [`crate::ledger::ingest`]).
    fn ingest(
        &mut self,
        checked: &CheckedBatch,
        signer: &dyn DenySigner,
        via: Via,
        now: u64,
    ) -> Result<IngestReport, HubError> {
        write(self, |ledger| {
            ledger::ingest(ledger, checked, signer, via, now)
        })
    }

    /// An operator lifts the open suspensions of `target` (see
    /// [`crate::ledger::clear`]).
    fn clear(
        &mut self,
        signer: &dyn DenySigner,
        target: ClearTarget,
        clearance: &Clearance<'_>,
    ) -> Result<Vec<Cleared>, HubError> {
        write(self, |ledger| {
            ledger::clear(ledger, signer, target, clearance)
        })
    }

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
    ) -> Result<DenyEntry, HubError> {
        write(self, |ledger| {
            ledger::set_deny(ledger, signer, action, wallet, reason, note, now)
        })
    }
}

/// The reads the hub makes, inside one snapshot, as the database returns
/// them: the conversions to the domain's types are written once, here.
pub(crate) trait Snapshot {
    /// Where the state lives, for errors.
    fn path(&self) -> &Path;
    /// A reader's stored public key.
    fn reader_key(&mut self, id: &str) -> Result<Option<Vec<u8>>, HubError>;
    /// Unretired issuer keys, ascending key ids.
    fn issuer_keys(&mut self) -> Result<Vec<(i64, Vec<u8>)>, HubError>;
    /// The newest deny-list version (0 when empty).
    fn deny_version(&mut self) -> Result<i64, HubError>;
    /// Up to `limit` encoded deny entries after version `since`, ascending.
    fn deny_page(&mut self, since: u64, limit: u32) -> Result<Vec<Vec<u8>>, HubError>;
    /// One row per registered reader, ascending ids.
    fn reader_totals(&mut self) -> Result<Vec<ReaderTuple>, HubError>;
    /// Missing sequence ranges of `reader` below its highest, ascending.
    fn gaps(&mut self, reader: &str) -> Result<Vec<(i64, i64)>, HubError>;
    /// Fraud findings, oldest first.
    fn flags(&mut self) -> Result<Vec<FlagTuple>, HubError>;
    /// Every registered reader with its last upload and last report,
    /// ascending ids.
    fn reader_states(&mut self) -> Result<Vec<ReaderStateTuple>, HubError>;
    /// What clearing stored, counted: `("flag", rule, n)` per rule,
    /// `("incident", kind, n)` per kind, and `("replay", "", n)`.
    fn finding_counts(&mut self) -> Result<Vec<(String, String, i64)>, HubError>;
    /// Incidents, oldest first.
    fn incidents(&mut self) -> Result<Vec<IncidentTuple>, HubError>;
    /// Every charge of each token charged more than once: the one the hub
    /// counted, then its replays by reader time, reader and seq; tokens by
    /// wallet, counter and token hash.
    fn replay_charges(&mut self) -> Result<Vec<RawReplayCharge>, HubError>;
    /// Suspensions, oldest first.
    fn suspensions(&mut self) -> Result<Vec<RawSuspension>, HubError>;
    /// The highest counter of the wallet among its payments.
    fn highest_counter(&mut self, wallet: &[u8]) -> Result<Option<i64>, HubError>;
    /// The wallet's payments whose counter another of its payments holds
    /// too, by counter, then token hash.
    fn conflicts(&mut self, wallet: &[u8]) -> Result<Vec<RawConflict>, HubError>;
    /// A credential's offline limit (if the hub logged it) and net charges.
    fn credential_spend(&mut self, credential: &[u8]) -> Result<(Option<i64>, i64), HubError>;
}

/// [`Snapshot::replay_charges`], in SQL both backends run.
pub(crate) const REPLAY_CHARGES_SQL: &str = "
    SELECT p.wallet_id, p.counter, p.token_hash, p.credential, CAST(0 AS BIGINT),
           p.reader_id, p.seq, r.at, r.amount, p.charged,
           (SELECT d.action FROM deny_entries d
            WHERE d.wallet_id = p.wallet_id AND d.credential IS NULL
            ORDER BY d.version DESC LIMIT 1)
    FROM (SELECT DISTINCT wallet_id, counter, token_hash FROM replays) k
    JOIN payments p
        ON p.wallet_id = k.wallet_id AND p.counter = k.counter AND p.token_hash = k.token_hash
    JOIN records r ON r.reader_id = p.reader_id AND r.seq = p.seq
    UNION ALL
    SELECT x.wallet_id, x.counter, x.token_hash, p.credential, CAST(1 AS BIGINT),
           x.reader_id, x.seq, r.at, r.amount, x.charged, NULL
    FROM replays x
    JOIN payments p
        ON p.wallet_id = x.wallet_id AND p.counter = x.counter AND p.token_hash = x.token_hash
    JOIN records r ON r.reader_id = x.reader_id AND r.seq = x.seq
    ORDER BY 1, 2, 3, 5, 8, 6, 7";

/// [`Snapshot::suspensions`], in SQL both backends run.
pub(crate) const SUSPENSIONS_SQL: &str = "
    SELECT deny_version, credential, wallet_id, rule, detail, at,
           cleared_at, cleared_by, cleared_note, allow_version
    FROM suspensions ORDER BY deny_version";

/// [`Snapshot::conflicts`] of wallet `$1`, in SQL both backends run.
pub(crate) const CONFLICTS_SQL: &str = "
    SELECT p.counter, p.token_hash, p.credential, p.reader_id, p.seq, r.at, r.amount,
           p.authorised, p.total_before, p.charged
    FROM payments p JOIN records r ON r.reader_id = p.reader_id AND r.seq = p.seq
    WHERE p.wallet_id = $1 AND EXISTS (
        SELECT 1 FROM payments q
        WHERE q.wallet_id = p.wallet_id AND q.counter = p.counter
          AND q.token_hash <> p.token_hash)
    ORDER BY p.counter, p.token_hash";

/// A row of [`Snapshot::replay_charges`], as stored.
#[derive(Debug, Clone)]
pub(crate) struct RawReplayCharge {
    pub wallet: Vec<u8>,
    pub counter: i64,
    pub token_hash: Vec<u8>,
    pub credential: Vec<u8>,
    /// 0: the charge the hub counted; 1: a replay.
    pub replay: i64,
    pub reader: String,
    pub seq: i64,
    /// The record's time at the reader.
    pub at: i64,
    /// The amount the reader charged.
    pub amount: i64,
    /// What is left after voids.
    pub net: i64,
    /// The wallet's newest whole-wallet deny action.
    pub wallet_action: Option<String>,
}

/// A row of [`Snapshot::suspensions`], as stored.
#[derive(Debug, Clone)]
pub(crate) struct RawSuspension {
    pub deny_version: i64,
    pub credential: Vec<u8>,
    pub wallet: Vec<u8>,
    pub rule: String,
    pub detail: String,
    pub at: i64,
    pub cleared_at: Option<i64>,
    pub cleared_by: Option<String>,
    pub cleared_note: Option<String>,
    pub allow_version: Option<i64>,
}

/// A row of [`Snapshot::conflicts`], as stored.
#[derive(Debug, Clone)]
pub(crate) struct RawConflict {
    pub counter: i64,
    pub token_hash: Vec<u8>,
    pub credential: Vec<u8>,
    pub reader: String,
    pub seq: i64,
    pub at: i64,
    pub amount: i64,
    pub authorised: i64,
    pub total_before: i64,
    pub net: i64,
}

/// A per-reader summary row: id, count, charged, voided, first, last, last received.
pub(crate) type ReaderTuple = (String, i64, i64, i64, Option<i64>, Option<i64>, Option<i64>);
/// A flag row: wallet, rule, detail, at, the wallet's newest deny action.
pub(crate) type FlagTuple = (Vec<u8>, String, String, i64, Option<String>);
/// Every registered reader with its last network upload and last report
/// (the columns of [`ReaderStateTuple`]); the same SQL on both backends.
pub(crate) const READER_STATES_SQL: &str = "SELECT r.reader_id, r.added_at,
        (SELECT max(b.received_at) FROM batches b
         WHERE b.reader_id = r.reader_id AND b.via = 'network'),
        p.at_ms, p.clock_offset_ms, p.applied_offset_ms, p.deny_version, p.queue, p.lag_secs,
        p.software
    FROM readers r LEFT JOIN reader_reports p ON p.reader_id = r.reader_id
    ORDER BY r.reader_id";

/// Clearing's findings counted (see [`Snapshot::finding_counts`]); the same
/// SQL on both backends.
pub(crate) const FINDING_COUNTS_SQL: &str = "SELECT 'flag', rule, count(*) FROM flags GROUP BY rule
    UNION ALL SELECT 'incident', kind, count(*) FROM incidents GROUP BY kind
    UNION ALL SELECT 'replay', '', count(*) FROM replays";

/// A reader's state row: reader, registered at, last upload (seconds);
/// then its last report if any: at (ms), clock offset (ms), applied offset
/// (ms), deny version, queue, lag (s), software.
pub(crate) type ReaderStateTuple = (String, i64, Option<i64>, Option<ReportTuple>);
/// A kept report's columns (see [`ReaderStateTuple`]).
pub(crate) type ReportTuple = (i64, i64, i64, i64, i64, i64, String);
/// An incident row: reader, seq, kind, detail, at.
pub(crate) type IncidentTuple = (String, i64, String, String, i64);

/// `deny_entries.action` as stored.
pub(crate) fn action_name(action: DenyAction) -> &'static str {
    match action {
        DenyAction::Deny => "deny",
        DenyAction::Allow => "allow",
    }
}

/// Why a wallet is denied, from its newest stored whole-wallet entry
/// (action, reason), if that denies it. A reason stored as text by a hub
/// before reason codes reads as `operator`, as its format-1 entry does.
pub(crate) fn denial(newest: Option<(String, String)>) -> Option<DenyReason> {
    match newest {
        Some((action, reason)) if denies(Some(&action)) => {
            Some(DenyReason::from_name(&reason).unwrap_or(DenyReason::Operator))
        }
        _ => None,
    }
}

/// Whether a wallet whose newest stored action is `newest` is denied.
pub(crate) fn denies(newest: Option<&str>) -> bool {
    newest == Some(action_name(DenyAction::Deny))
}

/// Runs `f` in one snapshot of `backend` and returns what it returned.
fn read<B: ReadBackend + ?Sized, T>(
    backend: &mut B,
    mut f: impl FnMut(&mut dyn Snapshot) -> Result<T, HubError>,
) -> Result<T, HubError> {
    let mut out = None;
    backend.snapshot(&mut |s| {
        out = Some(f(s)?);
        Ok(())
    })?;
    ran(out)
}

/// Runs `f` in one write transaction of `backend` and returns what it returned.
pub(crate) fn write<B: HubBackend + ?Sized, T>(
    backend: &mut B,
    mut f: impl FnMut(&mut dyn Ledger) -> Result<T, HubError>,
) -> Result<T, HubError> {
    let mut out = None;
    backend.transaction(&mut |ledger| {
        out = Some(f(ledger)?);
        Ok(())
    })?;
    ran(out)
}

/// What a backend's transaction or snapshot returned through its callback
/// (which is a `dyn FnMut`, so that the traits stay object-safe).
pub(crate) fn ran<T>(out: Option<T>) -> Result<T, HubError> {
    out.ok_or_else(|| HubError::Backend("the database backend did not run the transaction".into()))
}

/// The fleet's state from one snapshot.
fn fleet(s: &mut dyn Snapshot) -> Result<Fleet, HubError> {
    let path = PathBuf::from(s.path());
    let u = |what: &str, v: i64| unsigned::<u64>(&path, what, v);
    let deny_version = u("deny version", s.deny_version()?)?;
    let mut readers = Vec::new();
    for (reader, registered_at, last_upload, report) in s.reader_states()? {
        let report = match report {
            None => None,
            Some((at_ms, clock_offset_ms, applied_offset_ms, deny, queue, lag, software)) => {
                Some(ReportState {
                    at_ms: u("report time", at_ms)?,
                    clock_offset_ms,
                    applied_offset_ms,
                    deny_version: u("reported deny version", deny)?,
                    queue: u("reported queue", queue)?,
                    lag_secs: u("reported lag", lag)?,
                    software,
                })
            }
        };
        readers.push(ReaderState {
            reader,
            registered_at: u("registration time", registered_at)?,
            last_upload_at: last_upload.map(|v| u("upload time", v)).transpose()?,
            report,
        });
    }
    let (mut flags, mut incidents, mut replays) = (BTreeMap::new(), BTreeMap::new(), 0);
    for (what, name, n) in s.finding_counts()? {
        let n = u("count", n)?;
        match what.as_str() {
            "flag" => {
                flags.insert(name, n);
            }
            "incident" => {
                incidents.insert(name, n);
            }
            "replay" => replays = n,
            other => {
                let detail = format!("finding type {other:?}");
                return Err(StoreError::inconsistent(&path, detail).into());
            }
        }
    }
    Ok(Fleet {
        deny_version,
        readers,
        flags,
        incidents,
        replays,
    })
}

/// Builds the operator's report from one snapshot.
fn report(s: &mut dyn Snapshot) -> Result<Report, HubError> {
    let path = PathBuf::from(s.path());
    let u = |what: &str, v: i64| unsigned::<u64>(&path, what, v);
    // Times and incident seqs below zero read as 0, as they always have.
    let clamp = |v: i64| v.max(0) as u64;
    let mut readers = Vec::new();
    for (reader, count, charged, voided, first, last, last_at) in s.reader_totals()? {
        let gaps = s
            .gaps(&reader)?
            .into_iter()
            .map(|(a, b)| Ok((u("gap", a)?, u("gap", b)?)))
            .collect::<Result<_, StoreError>>()?;
        readers.push(ReaderReport {
            reader,
            records: u("record count", count)?,
            charged: u("charged", charged)?,
            voided: u("voided", voided)?,
            first_seq: first.map(|v| u("seq", v)).transpose()?,
            last_seq: last.map(|v| u("seq", v)).transpose()?,
            gaps,
            last_received_at: last_at.map(|v| u("time", v)).transpose()?,
        });
    }
    let flagged = s
        .flags()?
        .into_iter()
        .map(|(wallet, rule, detail, at, newest)| FlagRow {
            wallet: hex::encode(wallet),
            rule,
            detail,
            at: clamp(at),
            denied: denies(newest.as_deref()),
        })
        .collect();
    let incidents = s
        .incidents()?
        .into_iter()
        .map(|(reader, seq, kind, detail, at)| IncidentRow {
            reader,
            seq: clamp(seq),
            kind,
            detail,
            at: clamp(at),
        })
        .collect();
    let (replays, uncollected) = replay_rows(&path, s.replay_charges()?)?;
    let suspensions = s
        .suspensions()?
        .into_iter()
        .map(|raw| suspension_row(&path, raw))
        .collect::<Result<_, _>>()?;
    Ok(Report {
        readers,
        flagged,
        incidents,
        replays,
        uncollected,
        suspensions,
        deny_version: u("deny version", s.deny_version()?)?,
    })
}

/// Groups the charges of replayed tokens into one row per token: what the
/// hub counted against the wallet (the first charge it cleared, net of its
/// voids) and what the others delivered and nobody will pay (their net
/// charges: a voided charge was not delivered, so it is not uncollected).
fn replay_rows(path: &Path, raw: Vec<RawReplayCharge>) -> Result<(Vec<ReplayRow>, u64), HubError> {
    let u = |what: &str, v: i64| unsigned::<u64>(path, what, v);
    let mut rows: Vec<ReplayRow> = Vec::new();
    let mut total = 0u64;
    for r in raw {
        let token = hex::encode(&r.token_hash);
        let amount = u("charged amount", r.amount)?;
        let net = u("net charge", r.net)?;
        let charge = ReplayChargeRow {
            reader: r.reader,
            seq: u("seq", r.seq)?,
            at: u("record time", r.at)?,
            amount,
            voided: amount.saturating_sub(net),
            counted: r.replay == 0,
        };
        let same_token = rows.last().is_some_and(|row| row.token == token);
        if !same_token {
            rows.push(ReplayRow {
                token,
                wallet: hex::encode(&r.wallet),
                credential: hex::encode(&r.credential),
                counter: unsigned(path, "counter", r.counter)?,
                attribution: ReplayAttribution::CopiedToken,
                charges: Vec::new(),
                collected: 0,
                uncollected: 0,
                wallet_denied: denies(r.wallet_action.as_deref()),
            });
        }
        let Some(row) = rows.last_mut() else {
            continue;
        };
        match charge.counted {
            true => row.collected += net,
            false => {
                row.uncollected += net;
                total += net;
            }
        }
        row.charges.push(charge);
    }
    for row in &mut rows {
        row.attribution = ReplayAttribution::of(&row.charges);
    }
    Ok((rows, total))
}

fn suspension_row(path: &Path, raw: RawSuspension) -> Result<SuspensionRow, HubError> {
    let u = |what: &str, v: i64| unsigned::<u64>(path, what, v);
    let cleared = match (raw.cleared_at, raw.allow_version) {
        (Some(at), Some(version)) => Some(ClearedRow {
            at: u("clearing time", at)?,
            by: raw.cleared_by.unwrap_or_default(),
            note: raw.cleared_note.unwrap_or_default(),
            allow_version: u("deny version", version)?,
        }),
        _ => None,
    };
    Ok(SuspensionRow {
        credential: hex::encode(&raw.credential),
        wallet: hex::encode(&raw.wallet),
        rule: raw.rule,
        detail: raw.detail,
        at: u("suspension time", raw.at)?,
        deny_version: u("deny version", raw.deny_version)?,
        cleared,
    })
}

/// Builds the review of suspensions from one snapshot.
fn review(s: &mut dyn Snapshot, all: bool) -> Result<Review, HubError> {
    let path = PathBuf::from(s.path());
    let u = |what: &str, v: i64| unsigned::<u64>(&path, what, v);
    let flags = s.flags()?;
    let mut out = Vec::new();
    for raw in s.suspensions()? {
        if raw.cleared_at.is_some() && !all {
            continue;
        }
        let wallet = raw.wallet.clone();
        let credential = raw.credential.clone();
        let suspension = suspension_row(&path, raw)?;
        let highest = s.highest_counter(&wallet)?;
        let (limit, charged) = s.credential_spend(&credential)?;
        let conflicts = s
            .conflicts(&wallet)?
            .into_iter()
            .map(|c| {
                Ok(ConflictRow {
                    counter: unsigned(&path, "counter", c.counter)?,
                    token: hex::encode(&c.token_hash),
                    credential: hex::encode(&c.credential),
                    reader: c.reader,
                    seq: u("seq", c.seq)?,
                    at: u("record time", c.at)?,
                    charged: u("charged amount", c.amount)?,
                    authorised: u("authorised amount", c.authorised)?,
                    total_before: u("running total", c.total_before)?,
                    net: u("net charge", c.net)?,
                })
            })
            .collect::<Result<_, HubError>>()?;
        let findings = flags
            .iter()
            .filter(|f| f.0 == wallet)
            .map(|(w, rule, detail, at, newest)| FlagRow {
                wallet: hex::encode(w),
                rule: rule.clone(),
                detail: detail.clone(),
                at: (*at).max(0) as u64,
                denied: denies(newest.as_deref()),
            })
            .collect();
        out.push(SuspensionReview {
            suspension,
            highest_cleared_counter: highest.map(|c| unsigned(&path, "counter", c)).transpose()?,
            offline_limit: limit
                .map(|l| unsigned(&path, "offline limit", l))
                .transpose()?,
            credential_charged: u("credential spend", charged)?,
            findings,
            conflicts,
        });
    }
    Ok(Review { suspensions: out })
}

/// What `sonotap hub report` shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    /// Per registered reader.
    pub readers: Vec<ReaderReport>,
    /// Fraud findings, oldest first.
    pub flagged: Vec<FlagRow>,
    /// Chain breaks, voids not applied and other incidents, oldest first.
    pub incidents: Vec<IncidentRow>,
    /// Tokens charged more than once (a recorded sound or a photographed
    /// code replayed at other readers), one row per token.
    pub replays: Vec<ReplayRow>,
    /// What replays delivered that nobody will pay: the sum of their
    /// `uncollected`.
    pub uncollected: u64,
    /// Credentials suspended for review after a counter conflict, oldest first.
    pub suspensions: Vec<SuspensionRow>,
    /// The newest deny-list version.
    pub deny_version: u64,
}

/// Who a replay points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplayAttribution {
    /// Charged at two readers or more: someone recorded the sound or
    /// photographed the code and played it again. The wallet is the victim,
    /// and is not denied for it.
    CopiedToken,
    /// Charged more than once by one reader only: that reader's own replay
    /// check failed (its database restored from a backup, say).
    ReaderRepeated,
}

impl ReplayAttribution {
    fn of(charges: &[ReplayChargeRow]) -> Self {
        let first = charges.first().map(|c| c.reader.as_str());
        match charges.iter().all(|c| Some(c.reader.as_str()) == first) {
            true => ReplayAttribution::ReaderRepeated,
            false => ReplayAttribution::CopiedToken,
        }
    }

    /// One line for operators.
    pub fn describe(self) -> &'static str {
        match self {
            ReplayAttribution::CopiedToken => {
                "a replay of a copied token (recorded or photographed); the wallet is the \
                 victim and is not denied"
            }
            ReplayAttribution::ReaderRepeated => {
                "one reader charged the token again (its replay check failed: restored \
                 database?); not the wallet's doing"
            }
        }
    }
}

/// A token charged more than once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReplayRow {
    /// SHA-256 of the token, hex.
    pub token: String,
    /// The wallet that signed it, hex.
    pub wallet: String,
    /// Its credential's digest, hex.
    pub credential: String,
    /// The wallet's counter in it.
    pub counter: u32,
    /// Who the replay points at.
    pub attribution: ReplayAttribution,
    /// Every charge of it: the one counted first, then the replays by reader time.
    pub charges: Vec<ReplayChargeRow>,
    /// What the wallet pays for it (the counted charge, net of voids).
    pub collected: u64,
    /// What the other charges delivered and nobody will pay (net of voids).
    pub uncollected: u64,
    /// Whether the wallet is denied now (never because of a replay).
    pub wallet_denied: bool,
}

/// One charge of a replayed token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReplayChargeRow {
    /// The reader.
    pub reader: String,
    /// The record's sequence number there.
    pub seq: u64,
    /// When the reader charged it, its clock, Unix seconds.
    pub at: u64,
    /// What it charged.
    pub amount: u64,
    /// What voids took off it (not delivered).
    pub voided: u64,
    /// The charge counted against the wallet (the first the hub cleared).
    pub counted: bool,
}

/// A credential suspended for review.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SuspensionRow {
    /// The credential's digest, hex.
    pub credential: String,
    /// Its wallet, hex.
    pub wallet: String,
    /// The rule that opened it (`counter_reused`).
    pub rule: String,
    /// What was seen.
    pub detail: String,
    /// When, Unix seconds.
    pub at: u64,
    /// The deny-list version that published it.
    pub deny_version: u64,
    /// Set once an operator cleared it.
    pub cleared: Option<ClearedRow>,
}

/// Who lifted a suspension, when and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClearedRow {
    /// When, Unix seconds.
    pub at: u64,
    /// The operator.
    pub by: String,
    /// Why.
    pub note: String,
    /// The deny-list version of the allow entry.
    pub allow_version: u64,
}

/// What `sonotap hub review` shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Review {
    /// Suspensions with their evidence, oldest first.
    pub suspensions: Vec<SuspensionReview>,
}

/// One suspension and the evidence behind it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SuspensionReview {
    /// The suspension.
    #[serde(flatten)]
    pub suspension: SuspensionRow,
    /// The highest counter of the wallet the hub has cleared (what a
    /// renewal tells the wallet to move above).
    pub highest_cleared_counter: Option<u32>,
    /// The credential's offline limit, if the hub issued it.
    pub offline_limit: Option<u32>,
    /// Net charges under the credential, at every reader.
    pub credential_charged: u64,
    /// The wallet's fraud findings.
    pub findings: Vec<FlagRow>,
    /// The wallet's tokens that share a counter with another of its tokens.
    pub conflicts: Vec<ConflictRow>,
}

/// One token in a counter conflict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConflictRow {
    /// The counter it shares.
    pub counter: u32,
    /// SHA-256 of the token, hex.
    pub token: String,
    /// Its credential's digest, hex.
    pub credential: String,
    /// The reader that cleared it first.
    pub reader: String,
    /// The record's sequence number there.
    pub seq: u64,
    /// When the reader charged it, Unix seconds.
    pub at: u64,
    /// What the reader charged.
    pub charged: u64,
    /// What the wallet authorised.
    pub authorised: u64,
    /// The running total the wallet signed before it.
    pub total_before: u64,
    /// The charge net of voids.
    pub net: u64,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_database_url_with_a_multibyte_character_at_the_scheme_boundary_is_refused_not_a_panic() {
        // "postgres:/" is 10 bytes: the é straddles byte 11, where the
        // scheme check used to slice the string.
        for url in ["postgres:/é@db/x", "postgresql:/é@db/x", "é", ""] {
            assert!(!is_postgres_url(url), "{url}");
            let dir = tempfile::tempdir().expect("tempdir");
            match open_database(dir.path(), Some(url), 0) {
                Err(HubError::Backend(message)) => {
                    assert!(message.contains("unsupported database URL"), "{message}")
                }
                Err(other) => panic!("{url}: {other}"),
                Ok(_) => panic!("{url}: opened"),
            }
        }
        assert!(is_postgres_url("PostgreSQL://db/x"));
        assert!(is_postgres_url("postgres://db/x"));
    }
}
