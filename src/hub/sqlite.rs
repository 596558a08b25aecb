//! The hub's default backend: one SQLite file (`DIR/hub.db`), WAL,
//! `synchronous=FULL`, zero set-up.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension, Row, TransactionBehavior, params};
use rusqlite_migration::M;

use super::HubError;
use super::backend::{FlagRow, HubBackend, IncidentRow, ReaderReport, Report};
use super::clearing::{Finding, Payment};
use super::ledger::{self, BatchRow, DenySigner, IncidentKind, IngestReport, Ledger, Link, Via};
use super::verify::{CheckedBatch, CheckedRecord};
use crate::store::StoreError;
use crate::store::sqlite;
use crate::sync::wire::{DenyAction, DenyEntry};
use crate::token::{Credential, WalletId};

/// The hub database file in a hub directory.
pub const DB_FILE: &str = "hub.db";

static MIGRATIONS: [M<'static>; 2] = [
    M::up(
        "CREATE TABLE issuer_keys (
            key_id INTEGER PRIMARY KEY CHECK (key_id BETWEEN 0 AND 255),
            public_key BLOB NOT NULL CHECK (length(public_key) = 32),
            created_at INTEGER NOT NULL,
            retired_at INTEGER
        ) STRICT;
        CREATE TABLE credentials (
            digest BLOB PRIMARY KEY CHECK (length(digest) = 32),
            wallet_id BLOB NOT NULL CHECK (length(wallet_id) = 8),
            issuer_key_id INTEGER NOT NULL REFERENCES issuer_keys (key_id),
            scope TEXT NOT NULL,
            currency INTEGER NOT NULL,
            offline_limit INTEGER NOT NULL,
            per_payment_cap INTEGER NOT NULL,
            valid_from INTEGER NOT NULL,
            valid_until INTEGER NOT NULL,
            credential BLOB NOT NULL,
            issued_at INTEGER NOT NULL
        ) STRICT;
        CREATE INDEX credentials_by_wallet ON credentials (wallet_id);",
    ),
    M::up(
        "CREATE TABLE readers (
            reader_id TEXT PRIMARY KEY,
            public_key BLOB NOT NULL CHECK (length(public_key) = 32),
            added_at INTEGER NOT NULL
        ) STRICT;
        CREATE TABLE batches (
            reader_id TEXT NOT NULL,
            first_seq INTEGER NOT NULL,
            last_seq INTEGER NOT NULL,
            count INTEGER NOT NULL,
            charged INTEGER NOT NULL,
            voided INTEGER NOT NULL,
            last_hash BLOB NOT NULL,
            via TEXT NOT NULL,
            received_at INTEGER NOT NULL,
            PRIMARY KEY (reader_id, first_seq, last_seq)
        ) STRICT;
        CREATE TABLE records (
            reader_id TEXT NOT NULL,
            seq INTEGER NOT NULL CHECK (seq >= 1),
            at INTEGER NOT NULL,
            kind TEXT NOT NULL,
            amount INTEGER NOT NULL,
            token BLOB NOT NULL,
            token_hash BLOB NOT NULL CHECK (length(token_hash) = 32),
            prev_hash BLOB NOT NULL CHECK (length(prev_hash) = 32),
            hash BLOB NOT NULL CHECK (length(hash) = 32),
            signature BLOB NOT NULL CHECK (length(signature) = 64),
            received_at INTEGER NOT NULL,
            PRIMARY KEY (reader_id, seq)
        ) STRICT, WITHOUT ROWID;
        CREATE TABLE payments (
            id INTEGER PRIMARY KEY,
            token_hash BLOB NOT NULL CHECK (length(token_hash) = 32),
            wallet_id BLOB NOT NULL CHECK (length(wallet_id) = 8),
            counter INTEGER NOT NULL,
            credential BLOB NOT NULL CHECK (length(credential) = 32),
            total_before INTEGER NOT NULL,
            authorised INTEGER NOT NULL,
            charged INTEGER NOT NULL,
            reader_id TEXT NOT NULL,
            seq INTEGER NOT NULL
        ) STRICT;
        CREATE INDEX payments_by_counter ON payments (wallet_id, counter);
        CREATE INDEX payments_by_credential ON payments (credential, counter);
        CREATE TABLE credential_spend (
            credential BLOB PRIMARY KEY CHECK (length(credential) = 32),
            charged INTEGER NOT NULL
        ) STRICT;
        CREATE TABLE flags (
            id INTEGER PRIMARY KEY,
            wallet_id BLOB NOT NULL CHECK (length(wallet_id) = 8),
            rule TEXT NOT NULL,
            detail TEXT NOT NULL,
            evidence TEXT NOT NULL,
            at INTEGER NOT NULL
        ) STRICT;
        CREATE TABLE incidents (
            id INTEGER PRIMARY KEY,
            reader_id TEXT NOT NULL,
            seq INTEGER NOT NULL,
            kind TEXT NOT NULL,
            detail TEXT NOT NULL,
            at INTEGER NOT NULL
        ) STRICT;
        CREATE TABLE deny_entries (
            version INTEGER PRIMARY KEY CHECK (version >= 1),
            wallet_id BLOB NOT NULL CHECK (length(wallet_id) = 8),
            action TEXT NOT NULL,
            reason TEXT NOT NULL,
            evidence TEXT NOT NULL,
            at INTEGER NOT NULL,
            entry BLOB NOT NULL
        ) STRICT;
        CREATE INDEX deny_by_wallet ON deny_entries (wallet_id, version);",
    ),
];

/// The SQLite hub backend.
pub struct SqliteHub {
    conn: Connection,
    path: PathBuf,
}

impl SqliteHub {
    /// Opens (with `create`, makes) `DIR/hub.db`.
    pub fn open(dir: &Path, create: bool) -> Result<Self, StoreError> {
        let path = dir.join(DB_FILE);
        let conn = sqlite::open(&path, &MIGRATIONS, create, "run `sonotap hub init` first")?;
        // Clearing looks up wallets at random: keep their index pages in memory.
        conn.pragma_update(None, "cache_size", -128 * 1024)
            .map_err(|e| StoreError::from_sqlite(&path, e))?;
        Ok(Self { conn, path })
    }
}

fn store_err(path: &Path) -> impl Fn(rusqlite::Error) -> HubError + '_ {
    move |e| HubError::Store(StoreError::from_sqlite(path, e))
}

struct SqliteLedger<'a> {
    tx: &'a rusqlite::Transaction<'a>,
    path: &'a Path,
}

/// A `payments` row as SQLite returns it, in [`PAYMENT_COLUMNS`] order.
type PaymentTuple = (Vec<u8>, Vec<u8>, i64, Vec<u8>, i64, i64, String, i64);

/// A per-reader summary row: id, count, charged, voided, first, last, last received.
type ReaderTuple = (String, i64, i64, i64, Option<i64>, Option<i64>, Option<i64>);

fn payment_row(r: &Row<'_>) -> rusqlite::Result<PaymentTuple> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
        r.get(7)?,
    ))
}

const PAYMENT_COLUMNS: &str =
    "token_hash, wallet_id, counter, credential, total_before, authorised, reader_id, seq";

impl SqliteLedger<'_> {
    fn err(&self) -> impl Fn(rusqlite::Error) -> HubError + '_ {
        store_err(self.path)
    }

    fn to_payment(&self, row: PaymentTuple) -> Result<Payment, HubError> {
        let p = self.path;
        Ok(Payment {
            token_hash: sqlite::blob(p, "token hash", row.0)?,
            wallet: WalletId(sqlite::blob(p, "wallet id", row.1)?),
            counter: sqlite::unsigned(p, "counter", row.2)?,
            credential: sqlite::blob(p, "credential", row.3)?,
            total_before: sqlite::unsigned(p, "running total", row.4)?,
            authorised: sqlite::unsigned(p, "amount", row.5)?,
            reader: row.6,
            seq: sqlite::unsigned(p, "sequence number", row.7)?,
        })
    }

    fn one_payment(
        &self,
        sql: &str,
        params: impl rusqlite::Params,
    ) -> Result<Option<Payment>, HubError> {
        let row = self
            .tx
            .prepare_cached(sql)
            .and_then(|mut s| s.query_row(params, payment_row).optional())
            .map_err(self.err())?;
        row.map(|r| self.to_payment(r)).transpose()
    }
}

impl Ledger for SqliteLedger<'_> {
    fn link(&mut self, reader: &str, seq: u64) -> Result<Option<Link>, HubError> {
        let row: Option<(Vec<u8>, Vec<u8>)> = self
            .tx
            .prepare_cached("SELECT prev_hash, hash FROM records WHERE reader_id = ?1 AND seq = ?2")
            .and_then(|mut s| {
                s.query_row(params![reader, sqlite::int(seq)], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })
                .optional()
            })
            .map_err(self.err())?;
        row.map(|(prev, hash)| {
            Ok(Link {
                prev_hash: sqlite::blob(self.path, "previous hash", prev)?,
                hash: sqlite::blob(self.path, "record hash", hash)?,
            })
        })
        .transpose()
    }

    fn links(&mut self, reader: &str, first: u64, last: u64) -> Result<Vec<(u64, Link)>, HubError> {
        let rows: Vec<(i64, Vec<u8>, Vec<u8>)> = self
            .tx
            .prepare_cached(
                "SELECT seq, prev_hash, hash FROM records
                 WHERE reader_id = ?1 AND seq BETWEEN ?2 AND ?3 ORDER BY seq",
            )
            .and_then(|mut s| {
                s.query_map(
                    params![reader, sqlite::int(first), sqlite::int(last)],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )?
                .collect::<rusqlite::Result<Vec<_>>>()
            })
            .map_err(self.err())?;
        rows.into_iter()
            .map(|(seq, prev, hash)| {
                Ok((
                    sqlite::unsigned(self.path, "sequence number", seq)?,
                    Link {
                        prev_hash: sqlite::blob(self.path, "previous hash", prev)?,
                        hash: sqlite::blob(self.path, "record hash", hash)?,
                    },
                ))
            })
            .collect()
    }

    fn insert_record(
        &mut self,
        reader: &str,
        r: &CheckedRecord,
        received_at: u64,
    ) -> Result<(), HubError> {
        self.tx
            .prepare_cached(
                "INSERT INTO records (reader_id, seq, at, kind, amount, token, token_hash,
                                      prev_hash, hash, signature, received_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    reader,
                    sqlite::int(r.seq),
                    sqlite::int(r.at),
                    r.kind.as_str(),
                    r.amount,
                    r.token,
                    r.token_hash.as_slice(),
                    r.prev_hash.as_slice(),
                    r.hash.as_slice(),
                    r.signature.as_slice(),
                    sqlite::int(received_at),
                ])
            })
            .map(drop)
            .map_err(self.err())
    }

    fn insert_batch(&mut self, row: &BatchRow<'_>) -> Result<(), HubError> {
        let BatchRow {
            reader,
            first,
            last,
            totals,
            last_hash,
            via,
            at,
        } = *row;
        self.tx
            .execute(
                "INSERT OR REPLACE INTO batches (reader_id, first_seq, last_seq, count, charged,
                                                 voided, last_hash, via, received_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![
                    reader,
                    sqlite::int(first),
                    sqlite::int(last),
                    totals.count,
                    sqlite::int(totals.charged),
                    sqlite::int(totals.voided),
                    last_hash.as_slice(),
                    via.as_str(),
                    sqlite::int(at),
                ],
            )
            .map(drop)
            .map_err(self.err())
    }

    fn payments_with_counter(
        &mut self,
        wallet: WalletId,
        counter: u32,
    ) -> Result<Vec<Payment>, HubError> {
        let rows: Vec<_> = self
            .tx
            .prepare_cached(&format!(
                "SELECT {PAYMENT_COLUMNS} FROM payments WHERE wallet_id = ?1 AND counter = ?2"
            ))
            .and_then(|mut s| {
                s.query_map(params![wallet.0.as_slice(), counter], payment_row)?
                    .collect::<rusqlite::Result<Vec<_>>>()
            })
            .map_err(self.err())?;
        rows.into_iter().map(|r| self.to_payment(r)).collect()
    }

    fn neighbours(
        &mut self,
        credential: &[u8; 32],
        counter: u32,
    ) -> Result<(Option<Payment>, Option<Payment>), HubError> {
        let before = self.one_payment(
            &format!(
                "SELECT {PAYMENT_COLUMNS} FROM payments WHERE credential = ?1 AND counter < ?2
                 ORDER BY counter DESC LIMIT 1"
            ),
            params![credential.as_slice(), counter],
        )?;
        let after = self.one_payment(
            &format!(
                "SELECT {PAYMENT_COLUMNS} FROM payments WHERE credential = ?1 AND counter > ?2
                 ORDER BY counter ASC LIMIT 1"
            ),
            params![credential.as_slice(), counter],
        )?;
        Ok((before, after))
    }

    fn insert_payment(&mut self, p: &Payment, charged: u32) -> Result<u64, HubError> {
        self.tx
            .prepare_cached(
                "INSERT INTO payments (token_hash, wallet_id, counter, credential, total_before,
                                       authorised, charged, reader_id, seq)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    p.token_hash.as_slice(),
                    p.wallet.0.as_slice(),
                    p.counter,
                    p.credential.as_slice(),
                    p.total_before,
                    p.authorised,
                    charged,
                    p.reader,
                    sqlite::int(p.seq),
                ])
            })
            .map_err(self.err())?;
        let total: i64 = self
            .tx
            .prepare_cached(
                "INSERT INTO credential_spend (credential, charged) VALUES (?1, ?2)
                 ON CONFLICT (credential) DO UPDATE SET charged = charged + excluded.charged
                 RETURNING charged",
            )
            .and_then(|mut s| s.query_row(params![p.credential.as_slice(), charged], |r| r.get(0)))
            .map_err(self.err())?;
        Ok(sqlite::unsigned(self.path, "credential spend", total)?)
    }

    fn adjust_charge(&mut self, p: &Payment, delta: i64) -> Result<i64, HubError> {
        let (credential, charged): (Vec<u8>, i64) = self
            .tx
            .query_row(
                "UPDATE payments SET charged = max(0, charged + ?4)
                 WHERE wallet_id = ?1 AND counter = ?2 AND token_hash = ?3
                 RETURNING credential, charged",
                params![
                    p.wallet.0.as_slice(),
                    p.counter,
                    p.token_hash.as_slice(),
                    delta
                ],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map_err(self.err())?;
        self.tx
            .execute(
                "UPDATE credential_spend SET charged = max(0, charged + ?2) WHERE credential = ?1",
                params![credential, delta],
            )
            .map_err(self.err())?;
        Ok(charged)
    }

    fn insert_flag(
        &mut self,
        wallet: WalletId,
        f: &Finding,
        evidence: &str,
        at: u64,
    ) -> Result<(), HubError> {
        self.tx
            .execute(
                "INSERT INTO flags (wallet_id, rule, detail, evidence, at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![wallet.0.as_slice(), f.rule.as_str(), f.detail, evidence, sqlite::int(at)],
            )
            .map(drop)
            .map_err(self.err())
    }

    fn insert_incident(
        &mut self,
        reader: &str,
        seq: u64,
        kind: IncidentKind,
        detail: &str,
        at: u64,
    ) -> Result<(), HubError> {
        self.tx
            .execute(
                "INSERT INTO incidents (reader_id, seq, kind, detail, at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![reader, sqlite::int(seq), kind.as_str(), detail, sqlite::int(at)],
            )
            .map(drop)
            .map_err(self.err())
    }

    fn deny_version(&mut self) -> Result<u64, HubError> {
        let v: i64 = self
            .tx
            .query_row(
                "SELECT coalesce(max(version), 0) FROM deny_entries",
                [],
                |r| r.get(0),
            )
            .map_err(self.err())?;
        Ok(sqlite::unsigned(self.path, "deny version", v)?)
    }

    fn is_denied(&mut self, wallet: WalletId) -> Result<bool, HubError> {
        let action: Option<String> = self
            .tx
            .query_row(
                "SELECT action FROM deny_entries WHERE wallet_id = ?1 ORDER BY version DESC LIMIT 1",
                [wallet.0.as_slice()],
                |r| r.get(0),
            )
            .optional()
            .map_err(self.err())?;
        Ok(action.as_deref() == Some("deny"))
    }

    fn insert_deny(&mut self, entry: &DenyEntry, evidence: &str) -> Result<(), HubError> {
        let bytes = entry.encode().map_err(|e| HubError::Terms(e.to_string()))?;
        let action = match entry.action {
            DenyAction::Deny => "deny",
            DenyAction::Allow => "allow",
        };
        self.tx
            .execute(
                "INSERT INTO deny_entries (version, wallet_id, action, reason, evidence, at, entry)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    sqlite::int(entry.version),
                    entry.wallet.0.as_slice(),
                    action,
                    entry.reason,
                    evidence,
                    sqlite::int(entry.at),
                    bytes,
                ],
            )
            .map(drop)
            .map_err(self.err())
    }
}

impl SqliteHub {
    fn in_transaction<T>(
        &mut self,
        f: impl FnOnce(&mut dyn Ledger) -> Result<T, HubError>,
    ) -> Result<T, HubError> {
        let path = self.path.clone();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(store_err(&path))?;
        let out = f(&mut SqliteLedger {
            tx: &tx,
            path: &path,
        })?;
        tx.commit().map_err(store_err(&path))?;
        Ok(out)
    }
}

impl HubBackend for SqliteHub {
    fn describe(&self) -> String {
        format!("sqlite:{}", self.path.display())
    }

    fn add_issuer_key(&mut self, key_id: u8, key: &[u8; 32], now: u64) -> Result<(), HubError> {
        self.conn
            .execute(
                "INSERT INTO issuer_keys (key_id, public_key, created_at) VALUES (?1, ?2, ?3)",
                params![key_id, key.as_slice(), sqlite::int(now)],
            )
            .map(drop)
            .map_err(store_err(&self.path))
    }

    fn issuer_keys(&mut self) -> Result<Vec<(u8, [u8; 32])>, HubError> {
        let rows: Vec<(i64, Vec<u8>)> = self
            .conn
            .prepare("SELECT key_id, public_key FROM issuer_keys WHERE retired_at IS NULL ORDER BY key_id")
            .and_then(|mut s| {
                s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect::<rusqlite::Result<Vec<_>>>()
            })
            .map_err(store_err(&self.path))?;
        rows.into_iter()
            .map(|(id, key)| {
                Ok((
                    sqlite::unsigned(&self.path, "issuer key id", id)?,
                    sqlite::blob(&self.path, "issuer key", key)?,
                ))
            })
            .collect()
    }

    fn log_credential(&mut self, credential: &Credential, now: u64) -> Result<(), HubError> {
        let terms = &credential.terms;
        self.conn
            .execute(
                "INSERT OR IGNORE INTO credentials (digest, wallet_id, issuer_key_id, scope, currency,
                     offline_limit, per_payment_cap, valid_from, valid_until, credential, issued_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                params![
                    credential.digest().as_slice(),
                    terms.wallet_id().0.as_slice(),
                    terms.issuer_key_id,
                    terms.scope.to_string(),
                    terms.currency,
                    terms.offline_limit,
                    terms.per_payment_cap,
                    terms.valid_from,
                    sqlite::int(terms.valid_until()),
                    credential.encode().as_slice(),
                    sqlite::int(now),
                ],
            )
            .map(drop)
            .map_err(store_err(&self.path))
    }

    fn add_reader(&mut self, id: &str, key: &[u8; 32], now: u64) -> Result<bool, HubError> {
        if let Some(existing) = self.reader_key(id)? {
            if existing == *key {
                return Ok(false);
            }
            return Err(HubError::ReaderKeyMismatch { reader: id.into() });
        }
        self.conn
            .execute(
                "INSERT INTO readers (reader_id, public_key, added_at) VALUES (?1, ?2, ?3)",
                params![id, key.as_slice(), sqlite::int(now)],
            )
            .map_err(store_err(&self.path))?;
        Ok(true)
    }

    fn reader_key(&mut self, id: &str) -> Result<Option<[u8; 32]>, HubError> {
        let key: Option<Vec<u8>> = self
            .conn
            .prepare_cached("SELECT public_key FROM readers WHERE reader_id = ?1")
            .and_then(|mut s| s.query_row([id], |r| r.get(0)).optional())
            .map_err(store_err(&self.path))?;
        Ok(key
            .map(|k| sqlite::blob(&self.path, "reader key", k))
            .transpose()?)
    }

    fn ingest(
        &mut self,
        checked: &CheckedBatch,
        signer: &dyn DenySigner,
        via: Via,
        now: u64,
    ) -> Result<IngestReport, HubError> {
        self.in_transaction(|ledger| ledger::ingest(ledger, checked, signer, via, now))
    }

    fn set_deny(
        &mut self,
        signer: &dyn DenySigner,
        action: DenyAction,
        wallet: WalletId,
        reason: &str,
        now: u64,
    ) -> Result<DenyEntry, HubError> {
        self.in_transaction(|ledger| {
            ledger::set_deny(ledger, signer, action, wallet, reason, "operator", now)
        })
    }

    fn deny_entries(&mut self, since: u64, limit: u32) -> Result<(u64, Vec<Vec<u8>>), HubError> {
        let err = store_err(&self.path);
        let latest: i64 = self
            .conn
            .query_row(
                "SELECT coalesce(max(version), 0) FROM deny_entries",
                [],
                |r| r.get(0),
            )
            .map_err(&err)?;
        let entries = self
            .conn
            .prepare_cached(
                "SELECT entry FROM deny_entries WHERE version > ?1 ORDER BY version LIMIT ?2",
            )
            .and_then(|mut s| {
                s.query_map(params![sqlite::int(since), limit], |r| r.get(0))?
                    .collect::<rusqlite::Result<Vec<Vec<u8>>>>()
            })
            .map_err(&err)?;
        Ok((
            sqlite::unsigned(&self.path, "deny version", latest)?,
            entries,
        ))
    }

    fn report(&mut self) -> Result<Report, HubError> {
        let path = self.path.clone();
        let err = store_err(&path);
        let mut readers = Vec::new();
        let rows: Vec<ReaderTuple> = self
            .conn
            .prepare(
                "SELECT r.reader_id,
                        count(x.seq),
                        coalesce(sum(x.amount) FILTER (WHERE x.kind = 'charge'), 0),
                        coalesce(sum(x.amount) FILTER (WHERE x.kind = 'void'), 0),
                        min(x.seq), max(x.seq), max(x.received_at)
                 FROM readers r LEFT JOIN records x ON x.reader_id = r.reader_id
                 GROUP BY r.reader_id ORDER BY r.reader_id",
            )
            .and_then(|mut s| {
                s.query_map([], |r| {
                    Ok((
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                        r.get(5)?,
                        r.get(6)?,
                    ))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()
            })
            .map_err(&err)?;
        let u = |what: &str, v: i64| sqlite::unsigned::<u64>(&path, what, v);
        for (reader, count, charged, voided, first, last, last_at) in rows {
            let gaps: Vec<(u64, u64)> = self
                .conn
                .prepare_cached(
                    "SELECT prev + 1, seq - 1 FROM (
                         SELECT seq, lag(seq, 1, 0) OVER (ORDER BY seq) AS prev
                         FROM records WHERE reader_id = ?1)
                     WHERE seq > prev + 1",
                )
                .and_then(|mut s| {
                    s.query_map([&reader], |r| {
                        Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?))
                    })?
                    .collect::<rusqlite::Result<Vec<_>>>()
                })
                .map_err(&err)?
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
        let flagged = self
            .conn
            .prepare(
                "SELECT f.wallet_id, f.rule, f.detail, f.at,
                        (SELECT action FROM deny_entries d WHERE d.wallet_id = f.wallet_id
                         ORDER BY version DESC LIMIT 1)
                 FROM flags f ORDER BY f.id",
            )
            .and_then(|mut s| {
                s.query_map([], |r| {
                    Ok(FlagRow {
                        wallet: hex::encode(r.get::<_, Vec<u8>>(0)?),
                        rule: r.get(1)?,
                        detail: r.get(2)?,
                        at: r.get::<_, i64>(3)?.max(0) as u64,
                        denied: r.get::<_, Option<String>>(4)?.as_deref() == Some("deny"),
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()
            })
            .map_err(&err)?;
        let incidents = self
            .conn
            .prepare("SELECT reader_id, seq, kind, detail, at FROM incidents ORDER BY id")
            .and_then(|mut s| {
                s.query_map([], |r| {
                    Ok(IncidentRow {
                        reader: r.get(0)?,
                        seq: r.get::<_, i64>(1)?.max(0) as u64,
                        kind: r.get(2)?,
                        detail: r.get(3)?,
                        at: r.get::<_, i64>(4)?.max(0) as u64,
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()
            })
            .map_err(&err)?;
        let (deny_version, _) = self.deny_entries(u64::MAX, 0)?;
        Ok(Report {
            readers,
            flagged,
            incidents,
            deny_version,
        })
    }
}
