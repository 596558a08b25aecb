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

mod postgres;
mod sqlite;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;

pub(crate) use self::sqlite::SqliteHub;
use super::ledger::{self, DenySigner, IngestReport, Ledger, Via};
use super::verify::CheckedBatch;
use super::{Hub, HubError};
use sonotap_disk::sqlite::{StoreError, blob, unsigned};
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
    /// Runs `f` once on a [`Ledger`] inside one write transaction, the
    /// only writer at a time, committed if `f` succeeds.
    fn transaction(
        &mut self,
        f: &mut dyn FnMut(&mut dyn Ledger) -> Result<(), HubError>,
    ) -> Result<(), HubError>;
    /// Opens read connections to the same state.
    fn reader_opener(&self) -> ReaderOpener;

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
    /// Incidents, oldest first.
    fn incidents(&mut self) -> Result<Vec<IncidentTuple>, HubError>;
}

/// A per-reader summary row: id, count, charged, voided, first, last, last received.
pub(crate) type ReaderTuple = (String, i64, i64, i64, Option<i64>, Option<i64>, Option<i64>);
/// A flag row: wallet, rule, detail, at, the wallet's newest deny action.
pub(crate) type FlagTuple = (Vec<u8>, String, String, i64, Option<String>);
/// An incident row: reader, seq, kind, detail, at.
pub(crate) type IncidentTuple = (String, i64, String, String, i64);

/// `deny_entries.action` as stored.
pub(crate) fn action_name(action: DenyAction) -> &'static str {
    match action {
        DenyAction::Deny => "deny",
        DenyAction::Allow => "allow",
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
pub(super) fn write<B: HubBackend + ?Sized, T>(
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
pub(super) fn ran<T>(out: Option<T>) -> Result<T, HubError> {
    out.ok_or_else(|| HubError::Backend("the database backend did not run the transaction".into()))
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
    Ok(Report {
        readers,
        flagged,
        incidents,
        deny_version: u("deny version", s.deny_version()?)?,
    })
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
