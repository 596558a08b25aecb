//! The decline log: what an operator on site needs to see why riders were
//! turned away (`sonotap status`). Declines move no money and are not part
//! of the signed chain; the log is diagnostic, bounded, and best effort: the
//! caller ([`crate::reader::Reader::present`]) never lets a failure here
//! change a decision.

use rusqlite::params;
use serde::Serialize;

use super::{ReaderDb, StoreError, sqlite};

/// Declines kept: the newest this many, older ones are trimmed on insert.
/// At a busy gate that is hours of declines; enough to see a pattern, small
/// enough (a few hundred KiB) never to matter next to the record queue.
pub const DECLINE_LOG_CAP: u64 = 1_000;

/// The longest detail kept per decline, in characters (details are one
/// sentence; this only guards against a pathological one).
const MAX_DETAIL_CHARS: usize = 300;

/// One logged decline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeclineEntry {
    /// Reader time of the decision, Unix seconds.
    pub at: u64,
    /// The stable reason code (`replayed`, `malformed`, ...).
    pub reason: String,
    /// The wallet id (16 hex digits), when the token parsed.
    pub wallet: Option<String>,
    /// The amount asked for, when known.
    pub amount: Option<u32>,
    /// The payment counter, when the token parsed.
    pub counter: Option<u32>,
    /// Why, in words.
    pub detail: String,
}

impl ReaderDb {
    /// Appends a decline and trims the log to the newest [`DECLINE_LOG_CAP`],
    /// in one short transaction.
    pub fn log_decline(&mut self, entry: &DeclineEntry) -> Result<(), StoreError> {
        let detail: String = entry.detail.chars().take(MAX_DETAIL_CHARS).collect();
        self.write(|tx, path| {
            let err = |e| StoreError::from_sqlite(path, e);
            tx.execute(
                "INSERT INTO declines (at, reason, wallet, amount, counter, detail)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    sqlite::int(entry.at),
                    entry.reason,
                    entry.wallet,
                    entry.amount,
                    entry.counter,
                    detail
                ],
            )
            .map_err(err)?;
            let newest = tx.last_insert_rowid();
            tx.execute(
                "DELETE FROM declines WHERE id <= ?1",
                [newest.saturating_sub(sqlite::int(DECLINE_LOG_CAP))],
            )
            .map_err(err)?;
            Ok(())
        })
    }

    /// The newest `n` declines, newest first. A database from before the
    /// decline log (opened read-only, so not migrated) has none.
    pub fn recent_declines(&self, n: usize) -> Result<Vec<DeclineEntry>, StoreError> {
        let err = |e| StoreError::from_sqlite(&self.path, e);
        if !sqlite::has_table(&self.conn, "declines").map_err(err)? {
            return Ok(Vec::new());
        }
        let path = &self.path;
        self.rows(
            "SELECT at, reason, wallet, amount, counter, detail FROM declines
             ORDER BY id DESC LIMIT ?1",
            [i64::try_from(n).unwrap_or(i64::MAX)],
            |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, Option<String>>(2)?,
                    r.get::<_, Option<i64>>(3)?,
                    r.get::<_, Option<i64>>(4)?,
                    r.get::<_, String>(5)?,
                ))
            },
            |(at, reason, wallet, amount, counter, detail)| {
                Ok(DeclineEntry {
                    at: sqlite::unsigned(path, "decline time", at)?,
                    reason,
                    wallet,
                    amount: amount
                        .map(|a| sqlite::unsigned(path, "decline amount", a))
                        .transpose()?,
                    counter: counter
                        .map(|c| sqlite::unsigned(path, "decline counter", c))
                        .transpose()?,
                    detail,
                })
            },
        )
    }

    /// When the oldest record the hub has not acknowledged was made (Unix
    /// seconds), or `None` when everything is synced.
    pub fn oldest_unsynced_at(&self) -> Result<Option<u64>, StoreError> {
        let at: Option<i64> = self
            .conn
            .query_row(
                "SELECT min(at) FROM records WHERE synced_at IS NULL",
                [],
                |r| r.get(0),
            )
            .map_err(|e| StoreError::from_sqlite(&self.path, e))?;
        at.map(|at| sqlite::unsigned(&self.path, "record time", at))
            .transpose()
    }

    /// Opens an existing database for reading only, without migrating it or
    /// ever taking a write lock: for `sonotap status` while the daemon runs
    /// (WAL lets readers and the writer proceed side by side).
    pub fn open_read_only(path: &std::path::Path) -> Result<Self, StoreError> {
        let conn = sqlite::open_read_only(
            path,
            super::SCHEMA_VERSION,
            "run `sonotap reader init` first",
        )?;
        Ok(Self {
            conn,
            path: path.into(),
        })
    }
}
