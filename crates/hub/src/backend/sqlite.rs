//! The hub's default backend: one SQLite file (`DIR/hub.db`), WAL,
//! `synchronous=FULL`, zero set-up.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rusqlite::{Connection, OptionalExtension, Row, TransactionBehavior, params};
use rusqlite_migration::M;

use super::{
    Arrival, FlagTuple, HubBackend, IncidentTuple, RawConflict, RawReplayCharge, RawSuspension,
    ReadBackend, ReaderOpener, ReaderStateTuple, ReaderTuple, STALE_REPORT_MS, Snapshot,
    action_name,
};
use crate::HubError;
use crate::clearing::{Finding, Payment};
use crate::ledger::{
    BatchRow, ChargeLeft, ClearTarget, Clearance, FlagOn, IncidentKind, Ledger, Link,
    OpenSuspension, ReplayCharge, Suspension,
};
use crate::verify::CheckedRecord;
use sonotap_disk::sqlite;
use sonotap_disk::sqlite::StoreError;
use sonotap_protocol::api::StatusReport;
use sonotap_protocol::token::{Credential, WalletId};
use sonotap_protocol::wire::{DenyEntry, DenyReason, DenyScope};

/// The hub database file in a hub directory.
pub const DB_FILE: &str = "hub.db";

static MIGRATIONS: [M<'static>; 8] = [
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
    // Ingest speed: `records` becomes a rowid table (its rows of ~450 bytes
    // made a deep WITHOUT ROWID tree whose interior pages copy whole rows;
    // a rowid table appends); `payments` is keyed by what clearing looks
    // up, wallet and counter, in one B-tree where there were a rowid table
    // and two indexes (the neighbours under a credential are the wallet's
    // nearest counters). And the batch signature is kept with its batch, as
    // the records' evidence.
    M::up(
        "CREATE TABLE records_v3 (
            id INTEGER PRIMARY KEY,
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
            UNIQUE (reader_id, seq)
        ) STRICT;
        INSERT INTO records_v3 (reader_id, seq, at, kind, amount, token, token_hash, prev_hash,
                                hash, signature, received_at)
            SELECT reader_id, seq, at, kind, amount, token, token_hash, prev_hash, hash,
                   signature, received_at
            FROM records ORDER BY received_at, reader_id, seq;
        DROP TABLE records;
        ALTER TABLE records_v3 RENAME TO records;
        CREATE TABLE payments_v3 (
            wallet_id BLOB NOT NULL CHECK (length(wallet_id) = 8),
            counter INTEGER NOT NULL,
            token_hash BLOB NOT NULL CHECK (length(token_hash) = 32),
            credential BLOB NOT NULL CHECK (length(credential) = 32),
            total_before INTEGER NOT NULL,
            authorised INTEGER NOT NULL,
            charged INTEGER NOT NULL,
            reader_id TEXT NOT NULL,
            seq INTEGER NOT NULL,
            PRIMARY KEY (wallet_id, counter, token_hash)
        ) STRICT, WITHOUT ROWID;
        INSERT INTO payments_v3 (wallet_id, counter, token_hash, credential, total_before,
                                 authorised, charged, reader_id, seq)
            SELECT wallet_id, counter, token_hash, credential, total_before, authorised, charged,
                   reader_id, seq
            FROM payments ORDER BY id;
        DROP TABLE payments;
        ALTER TABLE payments_v3 RENAME TO payments;
        ALTER TABLE batches ADD COLUMN created_at INTEGER;
        ALTER TABLE batches ADD COLUMN signature BLOB CHECK (length(signature) = 64);",
    ),
    // Bounded voids (issue 13): a payment counts the voids applied to it, so
    // that a second void changes nothing; the voids already stored are
    // counted, and each credential's total is recomputed from its payments'
    // net charges (a void larger than its charge used to take the whole
    // claimed amount off the total while the payment stopped at zero).
    M::up(
        "ALTER TABLE payments ADD COLUMN voids INTEGER NOT NULL DEFAULT 0;
        UPDATE payments SET voids = v.n
            FROM (SELECT p.wallet_id, p.counter, p.token_hash, count(*) AS n
                  FROM records r JOIN payments p
                      ON p.token_hash = r.token_hash AND p.reader_id = r.reader_id
                         AND r.seq > p.seq
                  WHERE r.kind = 'void'
                  GROUP BY p.wallet_id, p.counter, p.token_hash) AS v
            WHERE payments.wallet_id = v.wallet_id AND payments.counter = v.counter
              AND payments.token_hash = v.token_hash;
        UPDATE credential_spend SET charged = s.total
            FROM (SELECT credential, sum(charged) AS total FROM payments GROUP BY credential) AS s
            WHERE credential_spend.credential = s.credential;",
    ),
    // Issue 17. Replays: a charge of a token already cleared is kept with
    // its reader, seq and net charge (voids of it apply), never added to
    // the credential's total; the charges stored before as
    // `duplicate_token` incidents are carried over (their incidents stay;
    // a void of one stored before stays the `void_without_charge` incident
    // it was). Suspensions: a deny entry may name one credential
    // (`deny_entries.credential`), and a counter conflict opens a
    // suspension for review, keyed by the version of its deny entry.
    M::up(
        "ALTER TABLE deny_entries ADD COLUMN credential BLOB
            CHECK (credential IS NULL OR length(credential) = 32);
        ALTER TABLE flags ADD COLUMN credential BLOB
            CHECK (credential IS NULL OR length(credential) = 32);
        CREATE TABLE replays (
            wallet_id BLOB NOT NULL CHECK (length(wallet_id) = 8),
            counter INTEGER NOT NULL,
            token_hash BLOB NOT NULL CHECK (length(token_hash) = 32),
            reader_id TEXT NOT NULL,
            seq INTEGER NOT NULL,
            charged INTEGER NOT NULL,
            voids INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (wallet_id, counter, token_hash, reader_id, seq)
        ) STRICT, WITHOUT ROWID;
        CREATE INDEX payments_by_token_v5 ON payments (token_hash);
        INSERT OR IGNORE INTO replays (wallet_id, counter, token_hash, reader_id, seq, charged)
            SELECT p.wallet_id, p.counter, p.token_hash, r.reader_id, r.seq, r.amount
            FROM incidents i
            JOIN records r ON r.reader_id = i.reader_id AND r.seq = i.seq
            JOIN payments p ON p.token_hash = r.token_hash
            WHERE i.kind = 'duplicate_token' AND r.kind = 'charge';
        DROP INDEX payments_by_token_v5;
        CREATE TABLE suspensions (
            deny_version INTEGER PRIMARY KEY,
            credential BLOB NOT NULL CHECK (length(credential) = 32),
            wallet_id BLOB NOT NULL CHECK (length(wallet_id) = 8),
            rule TEXT NOT NULL,
            detail TEXT NOT NULL,
            at INTEGER NOT NULL,
            cleared_at INTEGER,
            cleared_by TEXT,
            cleared_note TEXT,
            allow_version INTEGER
        ) STRICT;
        CREATE INDEX suspensions_by_credential ON suspensions (credential);
        CREATE INDEX suspensions_by_wallet ON suspensions (wallet_id);",
    ),
    // Issue 18: riders' accounts (docs/accounts.md). A balance is the sum
    // of its account's entries (its charges are rows of `payments` from
    // schema 7); nothing here is ever updated but an account's state (with
    // a row in `account_events` for each change) and a code's use.
    M::up(
        "CREATE TABLE accounts (
            account_id TEXT PRIMARY KEY,
            label TEXT NOT NULL,
            currency INTEGER NOT NULL,
            credit_line INTEGER NOT NULL CHECK (credit_line >= 0),
            offline_limit INTEGER NOT NULL,
            per_payment_cap INTEGER NOT NULL,
            valid_hours INTEGER NOT NULL,
            scope TEXT NOT NULL,
            state TEXT NOT NULL,
            state_reason TEXT NOT NULL,
            created_at INTEGER NOT NULL,
            changed_at INTEGER NOT NULL
        ) STRICT;
        CREATE TABLE account_events (
            account_id TEXT NOT NULL REFERENCES accounts (account_id),
            at INTEGER NOT NULL,
            state TEXT NOT NULL,
            reason TEXT NOT NULL,
            by_whom TEXT NOT NULL
        ) STRICT;
        -- No foreign key to accounts: an entry is only written for an
        -- account just read.
        CREATE TABLE account_entries (
            entry_id INTEGER PRIMARY KEY,
            account_id TEXT NOT NULL,
            kind TEXT NOT NULL,
            amount INTEGER NOT NULL,
            at INTEGER NOT NULL,
            recorded_at INTEGER NOT NULL,
            source TEXT NOT NULL,
            seq INTEGER NOT NULL,
            credential BLOB CHECK (credential IS NULL OR length(credential) = 32),
            token_hash BLOB CHECK (token_hash IS NULL OR length(token_hash) = 32),
            note TEXT NOT NULL
        ) STRICT;
        CREATE INDEX account_entries_by_account ON account_entries (account_id, entry_id);
        CREATE UNIQUE INDEX account_entries_references ON account_entries (account_id, source)
            WHERE kind IN ('top_up', 'adjustment');
        CREATE TABLE account_wallets (
            wallet_id BLOB PRIMARY KEY CHECK (length(wallet_id) = 8),
            wallet_key BLOB NOT NULL CHECK (length(wallet_key) = 32),
            account_id TEXT NOT NULL REFERENCES accounts (account_id),
            enrolled_at INTEGER NOT NULL
        ) STRICT;
        CREATE INDEX account_wallets_by_account ON account_wallets (account_id);
        CREATE TABLE enrol_codes (
            code_hash BLOB PRIMARY KEY CHECK (length(code_hash) = 32),
            account_id TEXT NOT NULL REFERENCES accounts (account_id),
            created_at INTEGER NOT NULL,
            expires_at INTEGER NOT NULL,
            used_at INTEGER,
            used_by BLOB CHECK (used_by IS NULL OR length(used_by) = 8)
        ) STRICT;
        CREATE TABLE account_credentials (
            credential BLOB PRIMARY KEY CHECK (length(credential) = 32),
            account_id TEXT NOT NULL REFERENCES accounts (account_id),
            wallet_id BLOB NOT NULL CHECK (length(wallet_id) = 8),
            offline_limit INTEGER NOT NULL,
            valid_until INTEGER NOT NULL,
            settles_at INTEGER NOT NULL,
            issued_at INTEGER NOT NULL,
            credential_bytes BLOB NOT NULL
        ) STRICT;
        CREATE INDEX account_credentials_live ON account_credentials (account_id, settles_at);
        CREATE INDEX account_credentials_by_wallet ON account_credentials (wallet_id, issued_at);
        CREATE TABLE wallet_nonces (
            wallet_id BLOB NOT NULL,
            nonce BLOB NOT NULL,
            at_ms INTEGER NOT NULL,
            PRIMARY KEY (wallet_id, nonce)
        ) STRICT, WITHOUT ROWID;
        CREATE INDEX wallet_nonces_by_time ON wallet_nonces (at_ms);",
    ),
    // Charges debit accounts without a row of their own (docs/accounts.md
    // §4): a cleared charge is its `payments` row, which takes an entry id
    // from the ids top-ups, adjustments and voids take (`entry_ids`, this
    // database's one writer's counter), so a statement keeps one order.
    // The charge entries written before are carried over: their ids go to
    // their payments, and their amounts, times and readers are the
    // records'. `watched_credentials`: the live credentials of accounts
    // whose phones could spend more than the account holds (§4); schema 6
    // never looked, so every credential starts watched until its account's
    // first look.
    M::up(
        "ALTER TABLE payments ADD COLUMN entry_id INTEGER;
        UPDATE payments SET entry_id = e.entry_id
            FROM account_entries e
            WHERE e.kind = 'charge' AND e.source = payments.reader_id AND e.seq = payments.seq;
        CREATE TABLE entry_ids (next INTEGER NOT NULL) STRICT;
        INSERT INTO entry_ids (next) SELECT COALESCE(MAX(entry_id), 0) + 1 FROM account_entries;
        DELETE FROM account_entries WHERE kind = 'charge';
        CREATE TABLE watched_credentials (
            credential BLOB PRIMARY KEY CHECK (length(credential) = 32),
            account_id TEXT NOT NULL,
            settles_at INTEGER NOT NULL,
            since INTEGER NOT NULL
        ) STRICT;
        CREATE INDEX watched_credentials_live ON watched_credentials (settles_at);
        INSERT INTO watched_credentials (credential, account_id, settles_at, since)
            SELECT credential, account_id, settles_at, 0 FROM account_credentials;",
    ),
    // The fleet view (docs/sync.md §2.5): each reader's last report of
    // itself, and its last upload found through an index.
    M::up(
        "CREATE TABLE reader_reports (
            reader_id TEXT PRIMARY KEY,
            at_ms INTEGER NOT NULL,
            signed_ms INTEGER NOT NULL,
            clock_offset_ms INTEGER NOT NULL,
            applied_offset_ms INTEGER NOT NULL,
            deny_version INTEGER NOT NULL,
            queue INTEGER NOT NULL,
            lag_secs INTEGER NOT NULL,
            software TEXT NOT NULL
        ) STRICT;
        CREATE INDEX batches_by_reader_time ON batches (reader_id, received_at);",
    ),
];

/// The hub database's schema.
static SCHEMA: sqlite::Schema = sqlite::Schema {
    migrations: &MIGRATIONS,
    marker_table: "issuer_keys",
    missing_hint: "run `sonotap hub init` first",
};

/// The SQLite hub backend.
pub struct SqliteHub {
    conn: Connection,
    path: PathBuf,
    checkpointer: Checkpointer,
}

/// WAL pages after which a commit checkpoints by itself, should the
/// checkpointer fall behind (64 MiB; SQLite's default is 1,000 pages).
const WAL_BACKSTOP_PAGES: i64 = 16_384;

/// Folds the WAL back into the database on its own thread and connection
/// after each stored batch, so the next batch's transaction does not wait
/// for the copy and the database file's fsync. Durability is unchanged: a
/// commit is durable once its WAL frames are synced (`synchronous=FULL`),
/// and a checkpoint syncs the database before the WAL is reused.
struct Checkpointer {
    wake: Option<std::sync::mpsc::SyncSender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Checkpointer {
    fn start(path: &Path) -> Result<Self, StoreError> {
        let conn = Connection::open(path).map_err(|e| StoreError::from_sqlite(path, e))?;
        let (wake, woken) = std::sync::mpsc::sync_channel::<()>(1);
        let shown = path.display().to_string();
        let thread = std::thread::Builder::new()
            .name("hub-checkpoint".into())
            .spawn(move || {
                while woken.recv().is_ok() {
                    // PASSIVE: never waits for the writer or a reader.
                    if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
                    {
                        // Busy with the writer's own backstop checkpoint,
                        // most likely; the next batch asks again.
                        tracing::debug!("checkpoint of {shown} skipped: {e}");
                    }
                }
            })
            .map_err(|e| StoreError::inconsistent(path, format!("no checkpoint thread: {e}")))?;
        Ok(Self {
            wake: Some(wake),
            thread: Some(thread),
        })
    }

    /// Asks for a checkpoint; one already asked for and not started covers it.
    fn nudge(&self) {
        if let Some(wake) = &self.wake {
            let _ = wake.try_send(());
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        // Closing the channel ends the thread after its current checkpoint.
        drop(self.wake.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl SqliteHub {
    /// Opens (with `create`, makes) `DIR/hub.db`.
    pub fn open(dir: &Path, create: bool) -> Result<Self, StoreError> {
        let path = dir.join(DB_FILE);
        let conn = sqlite::open(&path, &SCHEMA, create)?;
        let err = |e| StoreError::from_sqlite(&path, e);
        // Clearing looks up wallets at random: keep their index pages in memory.
        conn.pragma_update(None, "cache_size", -128 * 1024)
            .map_err(err)?;
        conn.pragma_update(None, "wal_autocheckpoint", WAL_BACKSTOP_PAGES)
            .map_err(err)?;
        let checkpointer = Checkpointer::start(&path)?;
        Ok(Self {
            conn,
            path,
            checkpointer,
        })
    }
}

fn store_err(path: &Path) -> impl Fn(rusqlite::Error) -> HubError + '_ {
    move |e| HubError::Store(StoreError::from_sqlite(path, e))
}

struct SqliteLedger<'a> {
    tx: &'a rusqlite::Transaction<'a>,
    path: &'a Path,
    /// Net charges per credential as of this transaction: read once, kept
    /// here while the batch's payments add to them, written back by
    /// [`SqliteLedger::flush`] before the commit (one upsert per credential
    /// instead of one per payment).
    spend: std::collections::HashMap<[u8; 32], Spend>,
    /// The next ledger entry id (`entry_ids`), once read: kept here while
    /// payments and entries take ids, written back by the flush.
    next_entry: Option<NextEntry>,
}

/// The entry id counter inside the transaction.
#[derive(Clone, Copy)]
struct NextEntry {
    next: i64,
    dirty: bool,
}

/// A credential's net charges inside the transaction.
#[derive(Clone, Copy)]
struct Spend {
    charged: i64,
    dirty: bool,
}

/// Records per multi-row `INSERT` (11 parameters each; SQLite allows 32,766).
const RECORDS_PER_INSERT: usize = 64;

/// `INSERT INTO records … VALUES (…), (…), …` for `rows` rows.
fn insert_records_sql(rows: usize) -> String {
    let mut sql = String::from(
        "INSERT INTO records (reader_id, seq, at, kind, amount, token, token_hash, prev_hash, \
         hash, signature, received_at) VALUES ",
    );
    for i in 0..rows {
        if i > 0 {
            sql.push(',');
        }
        sql.push_str("(?,?,?,?,?,?,?,?,?,?,?)");
    }
    sql
}

/// A `payments` row as SQLite returns it, in [`payment_columns!`] order.
type PaymentTuple = (Vec<u8>, Vec<u8>, i64, Vec<u8>, i64, i64, String, i64);

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

/// The `payments` columns [`payment_row`] reads, as a literal so that the
/// queries are `&'static str` (no string built per lookup).
macro_rules! payment_columns {
    () => {
        "token_hash, wallet_id, counter, credential, total_before, authorised, reader_id, seq"
    };
}

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

    /// The credential's net charges in this transaction.
    fn spend(&mut self, credential: &[u8; 32]) -> Result<&mut Spend, HubError> {
        use std::collections::hash_map::Entry;
        match self.spend.entry(*credential) {
            Entry::Occupied(e) => Ok(e.into_mut()),
            Entry::Vacant(e) => {
                let charged: Option<i64> = self
                    .tx
                    .prepare_cached("SELECT charged FROM credential_spend WHERE credential = ?1")
                    .and_then(|mut s| {
                        s.query_row([credential.as_slice()], |r| r.get(0))
                            .optional()
                    })
                    .map_err(store_err(self.path))?;
                Ok(e.insert(Spend {
                    charged: charged.unwrap_or(0),
                    dirty: false,
                }))
            }
        }
    }

    /// Takes the next ledger entry id (docs/accounts.md §4).
    fn entry_id(&mut self) -> Result<i64, HubError> {
        let counter = match &mut self.next_entry {
            Some(counter) => counter,
            None => {
                let next: i64 = self
                    .tx
                    .prepare_cached("SELECT next FROM entry_ids")
                    .and_then(|mut s| s.query_row([], |r| r.get(0)))
                    .map_err(store_err(self.path))?;
                self.next_entry.insert(NextEntry { next, dirty: false })
            }
        };
        let id = counter.next;
        counter.next += 1;
        counter.dirty = true;
        Ok(id)
    }

    /// Writes the changed credential totals and the entry id counter back;
    /// what it wrote counts as written until it changes again.
    fn flush(&mut self) -> Result<(), HubError> {
        let mut upsert = self
            .tx
            .prepare_cached(
                "INSERT INTO credential_spend (credential, charged) VALUES (?1, ?2)
                 ON CONFLICT (credential) DO UPDATE SET charged = excluded.charged",
            )
            .map_err(store_err(self.path))?;
        for (credential, spend) in &mut self.spend {
            if spend.dirty {
                upsert
                    .execute(params![credential.as_slice(), spend.charged])
                    .map_err(store_err(self.path))?;
                spend.dirty = false;
            }
        }
        if let Some(counter) = self.next_entry.as_mut().filter(|c| c.dirty) {
            self.tx
                .prepare_cached("UPDATE entry_ids SET next = ?1")
                .and_then(|mut s| s.execute([counter.next]))
                .map_err(store_err(self.path))?;
            counter.dirty = false;
        }
        Ok(())
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

impl crate::backend::book::Sql for SqliteLedger<'_> {
    fn postgres(&self) -> bool {
        false
    }

    fn place(&self) -> String {
        describe(self.path)
    }

    fn sql_execute(
        &mut self,
        sql: &str,
        params: &[crate::backend::book::Param<'_>],
    ) -> Result<u64, HubError> {
        let sql = sql.replace('$', "?");
        let changed = self
            .tx
            .prepare_cached(&sql)
            .and_then(|mut s| s.execute(rusqlite::params_from_iter(params)))
            .map_err(self.err())?;
        Ok(changed as u64)
    }

    fn append_entries(&mut self, entries: &[crate::accounts::NewEntry]) -> Result<(), HubError> {
        use crate::backend::book::{ENTRY_COLUMNS, Param, entry_params};
        let sql = format!(
            "INSERT INTO account_entries (entry_id, {ENTRY_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, \
             ?6, ?7, ?8, ?9, ?10, ?11)"
        );
        for e in entries {
            let mut params = vec![Param::Int(self.entry_id()?)];
            params.extend(entry_params(e));
            self.tx
                .prepare_cached(&sql)
                .and_then(|mut s| s.execute(rusqlite::params_from_iter(params)))
                .map_err(store_err(self.path))?;
        }
        Ok(())
    }

    fn sql_rows(
        &mut self,
        sql: &str,
        params: &[crate::backend::book::Param<'_>],
    ) -> Result<Vec<Vec<crate::backend::book::Value>>, HubError> {
        use crate::backend::book::Value;
        use rusqlite::types::ValueRef;
        let sql = sql.replace('$', "?");
        self.tx
            .prepare_cached(&sql)
            .and_then(|mut s| {
                let columns = s.column_count();
                let mut rows = s.query(rusqlite::params_from_iter(params))?;
                let mut out = Vec::new();
                while let Some(row) = rows.next()? {
                    let mut values = Vec::with_capacity(columns);
                    for i in 0..columns {
                        values.push(match row.get_ref(i)? {
                            ValueRef::Null => Value::Null,
                            ValueRef::Integer(v) => Value::Int(v),
                            ValueRef::Real(v) => Value::Int(v as i64),
                            ValueRef::Text(t) => {
                                Value::Text(String::from_utf8_lossy(t).into_owned())
                            }
                            ValueRef::Blob(b) => Value::Bytes(b.to_vec()),
                        });
                    }
                    out.push(values);
                }
                Ok(out)
            })
            .map_err(self.err())
    }
}

impl rusqlite::ToSql for crate::backend::book::Param<'_> {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use crate::backend::book::Param;
        use rusqlite::types::{ToSqlOutput, ValueRef};
        Ok(ToSqlOutput::Borrowed(match *self {
            Param::Int(v) => ValueRef::Integer(v),
            Param::Bytes(b) | Param::OptBytes(Some(b)) => ValueRef::Blob(b),
            Param::Text(t) => ValueRef::Text(t.as_bytes()),
            Param::OptBytes(None) => ValueRef::Null,
        }))
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
        self.insert_records(reader, &[r], received_at)
    }

    fn insert_records(
        &mut self,
        reader: &str,
        records: &[&CheckedRecord],
        received_at: u64,
    ) -> Result<(), HubError> {
        // Many rows per statement: the per-statement work (reset, bind,
        // step, B-tree seek to the end) is paid once per chunk.
        for chunk in records.chunks(RECORDS_PER_INSERT) {
            let mut s = self
                .tx
                .prepare_cached(&insert_records_sql(chunk.len()))
                .map_err(self.err())?;
            let mut i = 0;
            let mut bind = |v: &dyn rusqlite::ToSql| {
                i += 1;
                s.raw_bind_parameter(i, v)
            };
            for r in chunk {
                bind(&reader)
                    .and_then(|()| bind(&sqlite::int(r.seq)))
                    .and_then(|()| bind(&sqlite::int(r.at)))
                    .and_then(|()| bind(&r.kind.as_str()))
                    .and_then(|()| bind(&r.amount))
                    .and_then(|()| bind(&r.token))
                    .and_then(|()| bind(&r.token_hash.as_slice()))
                    .and_then(|()| bind(&r.prev_hash.as_slice()))
                    .and_then(|()| bind(&r.hash.as_slice()))
                    .and_then(|()| bind(&r.signature.as_slice()))
                    .and_then(|()| bind(&sqlite::int(received_at)))
                    .map_err(store_err(self.path))?;
            }
            s.raw_execute().map_err(store_err(self.path))?;
        }
        Ok(())
    }

    fn insert_batch(&mut self, row: &BatchRow<'_>) -> Result<(), HubError> {
        let BatchRow {
            reader,
            first,
            last,
            totals,
            last_hash,
            created_at,
            signature,
            via,
            at,
        } = *row;
        self.tx
            .execute(
                "INSERT OR REPLACE INTO batches (reader_id, first_seq, last_seq, count, charged,
                                                 voided, last_hash, via, received_at,
                                                 created_at, signature)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
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
                    sqlite::int(created_at),
                    signature.as_slice(),
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
            .prepare_cached(concat!(
                "SELECT ",
                payment_columns!(),
                " FROM payments WHERE wallet_id = ?1 AND counter = ?2"
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
        wallet: WalletId,
        credential: &[u8; 32],
        counter: u32,
    ) -> Result<(Option<Payment>, Option<Payment>), HubError> {
        // A credential names one wallet: walk that wallet's counters (the
        // primary key) outward, skipping payments under its other credentials.
        let before = self.one_payment(
            concat!(
                "SELECT ",
                payment_columns!(),
                " FROM payments
                 WHERE wallet_id = ?1 AND counter < ?2 AND credential = ?3
                 ORDER BY wallet_id DESC, counter DESC LIMIT 1"
            ),
            params![wallet.0.as_slice(), counter, credential.as_slice()],
        )?;
        let after = self.one_payment(
            concat!(
                "SELECT ",
                payment_columns!(),
                " FROM payments
                 WHERE wallet_id = ?1 AND counter > ?2 AND credential = ?3
                 ORDER BY wallet_id, counter LIMIT 1"
            ),
            params![wallet.0.as_slice(), counter, credential.as_slice()],
        )?;
        Ok((before, after))
    }

    fn insert_payment(&mut self, p: &Payment, charged: u32) -> Result<u64, HubError> {
        let entry_id = self.entry_id()?;
        self.tx
            .prepare_cached(
                "INSERT INTO payments (token_hash, wallet_id, counter, credential, total_before,
                                       authorised, charged, reader_id, seq, entry_id)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
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
                    entry_id,
                ])
            })
            .map_err(self.err())?;
        let spend = self.spend(&p.credential)?;
        spend.charged += i64::from(charged);
        spend.dirty = true;
        let total = spend.charged;
        Ok(sqlite::unsigned(self.path, "credential spend", total)?)
    }

    fn credential_charged(&mut self, credential: &[u8; 32]) -> Result<i64, HubError> {
        Ok(self.spend(credential)?.charged)
    }

    fn write_credential_totals(&mut self) -> Result<(), HubError> {
        self.flush()
    }

    fn append_voids(&mut self, entries: &[crate::accounts::NewEntry]) -> Result<(), HubError> {
        // Payments took their ids as they were stored.
        crate::backend::book::Sql::append_entries(self, entries)
    }

    fn charge_left(&mut self, p: &Payment) -> Result<ChargeLeft, HubError> {
        let (left, voids): (i64, i64) = self
            .tx
            .prepare_cached(
                "SELECT charged, voids FROM payments
                 WHERE wallet_id = ?1 AND counter = ?2 AND token_hash = ?3",
            )
            .and_then(|mut s| {
                s.query_row(
                    params![p.wallet.0.as_slice(), p.counter, p.token_hash.as_slice()],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
            })
            .map_err(self.err())?;
        Ok(ChargeLeft {
            left: sqlite::unsigned(self.path, "net charge", left)?,
            voids: sqlite::unsigned(self.path, "void count", voids)?,
        })
    }

    fn void_charge(&mut self, p: &Payment, amount: u32) -> Result<(), HubError> {
        let credential: Vec<u8> = self
            .tx
            .prepare_cached(
                "UPDATE payments SET charged = charged - ?4, voids = voids + 1
                 WHERE wallet_id = ?1 AND counter = ?2 AND token_hash = ?3
                 RETURNING credential",
            )
            .and_then(|mut s| {
                s.query_row(
                    params![
                        p.wallet.0.as_slice(),
                        p.counter,
                        p.token_hash.as_slice(),
                        amount
                    ],
                    |r| r.get(0),
                )
            })
            .map_err(self.err())?;
        let credential: [u8; 32] = sqlite::blob(self.path, "credential", credential)?;
        let spend = self.spend(&credential)?;
        spend.charged -= i64::from(amount);
        spend.dirty = true;
        Ok(())
    }

    fn insert_flag(
        &mut self,
        wallet: WalletId,
        credential: &[u8; 32],
        f: &Finding,
        evidence: &str,
        at: u64,
    ) -> Result<(), HubError> {
        self.tx
            .execute(
                "INSERT INTO flags (wallet_id, rule, detail, evidence, at, credential)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    wallet.0.as_slice(),
                    f.rule.as_str(),
                    f.detail,
                    evidence,
                    sqlite::int(at),
                    credential.as_slice()
                ],
            )
            .map(drop)
            .map_err(self.err())
    }

    fn wallet_flags(&mut self, wallet: WalletId) -> Result<Vec<FlagOn>, HubError> {
        let rows: Vec<(String, Option<Vec<u8>>)> = self
            .tx
            .prepare_cached("SELECT rule, credential FROM flags WHERE wallet_id = ?1 ORDER BY id")
            .and_then(|mut s| {
                s.query_map([wallet.0.as_slice()], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect::<rusqlite::Result<Vec<_>>>()
            })
            .map_err(self.err())?;
        rows.into_iter()
            .map(|(rule, c)| {
                let c = c
                    .map(|c| sqlite::blob(self.path, "credential", c))
                    .transpose()?;
                Ok((rule, c))
            })
            .collect()
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

    fn wallet_denial(&mut self, wallet: WalletId) -> Result<Option<DenyReason>, HubError> {
        let newest: Option<(String, String)> = self
            .tx
            .query_row(
                "SELECT action, reason FROM deny_entries WHERE wallet_id = ?1 AND credential IS NULL
                 ORDER BY version DESC LIMIT 1",
                [wallet.0.as_slice()],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(self.err())?;
        Ok(super::denial(newest))
    }

    fn insert_deny(&mut self, entry: &DenyEntry, evidence: &str) -> Result<(), HubError> {
        let bytes = entry.encode().map_err(|e| HubError::Terms(e.to_string()))?;
        let action = action_name(entry.action);
        let credential = match &entry.scope {
            DenyScope::Wallet => None,
            DenyScope::Credential(c) => Some(c.as_slice()),
        };
        self.tx
            .execute(
                "INSERT INTO deny_entries (version, wallet_id, action, reason, evidence, at, entry,
                                           credential)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    sqlite::int(entry.version),
                    entry.wallet.0.as_slice(),
                    action,
                    entry.reason.as_str(),
                    evidence,
                    sqlite::int(entry.at),
                    bytes,
                    credential,
                ],
            )
            .map(drop)
            .map_err(self.err())
    }

    fn insert_replay(
        &mut self,
        first: &Payment,
        reader: &str,
        seq: u64,
        charged: u32,
    ) -> Result<(), HubError> {
        self.tx
            .prepare_cached(
                "INSERT INTO replays (wallet_id, counter, token_hash, reader_id, seq, charged)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    first.wallet.0.as_slice(),
                    first.counter,
                    first.token_hash.as_slice(),
                    reader,
                    sqlite::int(seq),
                    charged,
                ])
            })
            .map(drop)
            .map_err(self.err())
    }

    fn replays_at(&mut self, first: &Payment, reader: &str) -> Result<Vec<ReplayCharge>, HubError> {
        let rows: Vec<(i64, i64, i64)> = self
            .tx
            .prepare_cached(
                "SELECT seq, charged, voids FROM replays
                 WHERE wallet_id = ?1 AND counter = ?2 AND token_hash = ?3 AND reader_id = ?4
                 ORDER BY seq",
            )
            .and_then(|mut s| {
                s.query_map(
                    params![
                        first.wallet.0.as_slice(),
                        first.counter,
                        first.token_hash.as_slice(),
                        reader
                    ],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )?
                .collect::<rusqlite::Result<Vec<_>>>()
            })
            .map_err(self.err())?;
        rows.into_iter()
            .map(|(seq, left, voids)| {
                Ok(ReplayCharge {
                    reader: reader.to_owned(),
                    seq: sqlite::unsigned(self.path, "sequence number", seq)?,
                    left: ChargeLeft {
                        left: sqlite::unsigned(self.path, "net charge", left)?,
                        voids: sqlite::unsigned(self.path, "void count", voids)?,
                    },
                })
            })
            .collect()
    }

    fn void_replay(
        &mut self,
        first: &Payment,
        reader: &str,
        seq: u64,
        amount: u32,
    ) -> Result<(), HubError> {
        self.tx
            .prepare_cached(
                "UPDATE replays SET charged = charged - ?6, voids = voids + 1
                 WHERE wallet_id = ?1 AND counter = ?2 AND token_hash = ?3 AND reader_id = ?4
                   AND seq = ?5",
            )
            .and_then(|mut s| {
                s.execute(params![
                    first.wallet.0.as_slice(),
                    first.counter,
                    first.token_hash.as_slice(),
                    reader,
                    sqlite::int(seq),
                    amount,
                ])
            })
            .map(drop)
            .map_err(self.err())
    }

    fn is_suspended(&mut self, credential: &[u8; 32]) -> Result<bool, HubError> {
        self.tx
            .prepare_cached(
                "SELECT 1 FROM suspensions WHERE credential = ?1 AND cleared_at IS NULL LIMIT 1",
            )
            .and_then(|mut s| s.exists([credential.as_slice()]))
            .map_err(self.err())
    }

    fn insert_suspension(&mut self, x: &Suspension<'_>) -> Result<(), HubError> {
        self.tx
            .execute(
                "INSERT INTO suspensions (deny_version, credential, wallet_id, rule, detail, at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    sqlite::int(x.deny_version),
                    x.credential.as_slice(),
                    x.wallet.0.as_slice(),
                    x.rule.as_str(),
                    x.detail,
                    sqlite::int(x.at),
                ],
            )
            .map(drop)
            .map_err(self.err())
    }

    fn open_suspensions(&mut self, target: ClearTarget) -> Result<Vec<OpenSuspension>, HubError> {
        let (sql, key): (&str, &[u8]) = match &target {
            ClearTarget::Credential(c) => (
                "SELECT deny_version, credential, wallet_id FROM suspensions
                 WHERE credential = ?1 AND cleared_at IS NULL ORDER BY deny_version",
                c.as_slice(),
            ),
            ClearTarget::Wallet(w) => (
                "SELECT deny_version, credential, wallet_id FROM suspensions
                 WHERE wallet_id = ?1 AND cleared_at IS NULL ORDER BY deny_version",
                w.0.as_slice(),
            ),
        };
        let rows: Vec<(i64, Vec<u8>, Vec<u8>)> = self
            .tx
            .prepare_cached(sql)
            .and_then(|mut s| {
                s.query_map([key], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                    .collect::<rusqlite::Result<Vec<_>>>()
            })
            .map_err(self.err())?;
        rows.into_iter()
            .map(|(version, credential, wallet)| {
                Ok(OpenSuspension {
                    deny_version: sqlite::unsigned(self.path, "deny version", version)?,
                    credential: sqlite::blob(self.path, "credential", credential)?,
                    wallet: WalletId(sqlite::blob(self.path, "wallet id", wallet)?),
                })
            })
            .collect()
    }

    fn clear_suspension(
        &mut self,
        deny_version: u64,
        allow_version: u64,
        c: &Clearance<'_>,
    ) -> Result<(), HubError> {
        self.tx
            .execute(
                "UPDATE suspensions SET cleared_at = ?2, cleared_by = ?3, cleared_note = ?4,
                                        allow_version = ?5
                 WHERE deny_version = ?1",
                params![
                    sqlite::int(deny_version),
                    sqlite::int(c.at),
                    c.by,
                    c.note,
                    sqlite::int(allow_version)
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
        let mut ledger = SqliteLedger {
            tx: &tx,
            path: &path,
            spend: std::collections::HashMap::new(),
            next_entry: None,
        };
        let out = f(&mut ledger)?;
        ledger.flush()?;
        tx.commit().map_err(store_err(&path))?;
        self.checkpointer.nudge();
        Ok(out)
    }
}

impl HubBackend for SqliteHub {
    fn add_issuer_key(&mut self, key_id: u8, key: &[u8; 32], now: u64) -> Result<(), HubError> {
        // Again with the same key (a `hub init` retried after a cut) adds
        // nothing; another key under the same id is refused.
        let err = store_err(&self.path);
        self.conn
            .execute(
                "INSERT INTO issuer_keys (key_id, public_key, created_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (key_id) DO NOTHING",
                params![key_id, key.as_slice(), sqlite::int(now)],
            )
            .map_err(&err)?;
        let stored: Vec<u8> = self
            .conn
            .query_row(
                "SELECT public_key FROM issuer_keys WHERE key_id = ?1",
                [key_id],
                |row| row.get(0),
            )
            .map_err(&err)?;
        if stored == key.as_slice() {
            Ok(())
        } else {
            Err(HubError::IssuerKeyMismatch { key_id })
        }
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

    fn record_report(
        &mut self,
        reader: &str,
        report: &StatusReport,
        arrival: &Arrival,
    ) -> Result<(), HubError> {
        self.conn
            .execute(
                "INSERT INTO reader_reports (reader_id, at_ms, signed_ms, clock_offset_ms,
                     applied_offset_ms, deny_version, queue, lag_secs, software)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
                 ON CONFLICT (reader_id) DO UPDATE SET
                     at_ms = excluded.at_ms, signed_ms = excluded.signed_ms,
                     clock_offset_ms = excluded.clock_offset_ms,
                     applied_offset_ms = excluded.applied_offset_ms,
                     deny_version = excluded.deny_version, queue = excluded.queue,
                     lag_secs = excluded.lag_secs, software = excluded.software
                 WHERE excluded.signed_ms > reader_reports.signed_ms
                    OR reader_reports.signed_ms > excluded.at_ms + ?10",
                params![
                    reader,
                    sqlite::int(arrival.at_ms),
                    sqlite::int(arrival.signed_ms),
                    arrival.clock_offset_ms,
                    report.applied_ms,
                    sqlite::int(report.deny),
                    sqlite::int(report.queue),
                    sqlite::int(report.lag),
                    report.software,
                    sqlite::int(STALE_REPORT_MS),
                ],
            )
            .map_err(store_err(&self.path))?;
        Ok(())
    }

    fn transaction(
        &mut self,
        f: &mut dyn FnMut(&mut dyn Ledger) -> Result<(), HubError>,
    ) -> Result<(), HubError> {
        self.in_transaction(f)
    }

    fn reader_opener(&self) -> ReaderOpener {
        let path = self.path.clone();
        Arc::new(move || {
            let conn = sqlite::open_read_only(&path, MIGRATIONS.len(), SCHEMA.missing_hint)?;
            Ok(Box::new(SqliteReader {
                conn,
                path: path.clone(),
            }) as Box<dyn ReadBackend>)
        })
    }
}

impl ReadBackend for SqliteHub {
    fn describe(&self) -> String {
        describe(&self.path)
    }

    fn snapshot(
        &mut self,
        f: &mut dyn FnMut(&mut dyn Snapshot) -> Result<(), HubError>,
    ) -> Result<(), HubError> {
        in_snapshot(&mut self.conn, &self.path, f)
    }
}

fn describe(path: &Path) -> String {
    format!("sqlite:{}", path.display())
}

/// A read-only connection to a hub database: in WAL mode it reads the last
/// committed state and never waits for the writer.
struct SqliteReader {
    conn: Connection,
    path: PathBuf,
}

impl ReadBackend for SqliteReader {
    fn describe(&self) -> String {
        describe(&self.path)
    }

    fn snapshot(
        &mut self,
        f: &mut dyn FnMut(&mut dyn Snapshot) -> Result<(), HubError>,
    ) -> Result<(), HubError> {
        in_snapshot(&mut self.conn, &self.path, f)
    }
}

/// Runs `f` in one read transaction: every statement sees the state of its
/// first read.
fn in_snapshot(
    conn: &mut Connection,
    path: &Path,
    f: &mut dyn FnMut(&mut dyn Snapshot) -> Result<(), HubError>,
) -> Result<(), HubError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Deferred)
        .map_err(store_err(path))?;
    f(&mut SqliteSnapshot { conn: &tx, path })?;
    tx.commit().map_err(store_err(path))
}

struct SqliteSnapshot<'a> {
    conn: &'a Connection,
    path: &'a Path,
}

impl SqliteSnapshot<'_> {
    /// Every row of `sql` with `params`, read by `row`.
    fn rows<T>(
        &self,
        sql: &str,
        params: impl rusqlite::Params,
        row: impl FnMut(&Row<'_>) -> rusqlite::Result<T>,
    ) -> Result<Vec<T>, HubError> {
        self.conn
            .prepare_cached(sql)
            .and_then(|mut s| s.query_map(params, row)?.collect())
            .map_err(store_err(self.path))
    }
}

impl Snapshot for SqliteSnapshot<'_> {
    fn path(&self) -> &Path {
        self.path
    }

    fn reader_key(&mut self, id: &str) -> Result<Option<Vec<u8>>, HubError> {
        self.conn
            .prepare_cached("SELECT public_key FROM readers WHERE reader_id = ?1")
            .and_then(|mut s| s.query_row([id], |r| r.get(0)).optional())
            .map_err(store_err(self.path))
    }

    fn issuer_keys(&mut self) -> Result<Vec<(i64, Vec<u8>)>, HubError> {
        self.rows(
            "SELECT key_id, public_key FROM issuer_keys WHERE retired_at IS NULL ORDER BY key_id",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
    }

    fn deny_version(&mut self) -> Result<i64, HubError> {
        self.conn
            .query_row(
                "SELECT coalesce(max(version), 0) FROM deny_entries",
                [],
                |r| r.get(0),
            )
            .map_err(store_err(self.path))
    }

    fn deny_page(&mut self, since: u64, limit: u32) -> Result<Vec<Vec<u8>>, HubError> {
        self.rows(
            "SELECT entry FROM deny_entries WHERE version > ?1 ORDER BY version LIMIT ?2",
            params![sqlite::int(since), limit],
            |r| r.get(0),
        )
    }

    fn reader_totals(&mut self) -> Result<Vec<ReaderTuple>, HubError> {
        self.rows(
            "SELECT r.reader_id,
                    count(x.seq),
                    coalesce(sum(x.amount) FILTER (WHERE x.kind = 'charge'), 0),
                    coalesce(sum(x.amount) FILTER (WHERE x.kind = 'void'), 0),
                    min(x.seq), max(x.seq), max(x.received_at)
             FROM readers r LEFT JOIN records x ON x.reader_id = r.reader_id
             GROUP BY r.reader_id ORDER BY r.reader_id",
            [],
            |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                ))
            },
        )
    }

    fn gaps(&mut self, reader: &str) -> Result<Vec<(i64, i64)>, HubError> {
        self.rows(
            "SELECT prev + 1, seq - 1 FROM (
                 SELECT seq, lag(seq, 1, 0) OVER (ORDER BY seq) AS prev
                 FROM records WHERE reader_id = ?1)
             WHERE seq > prev + 1
             ORDER BY seq",
            [reader],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
    }

    fn flags(&mut self) -> Result<Vec<FlagTuple>, HubError> {
        self.rows(
            "SELECT f.wallet_id, f.rule, f.detail, f.at,
                    (SELECT action FROM deny_entries d
                     WHERE d.wallet_id = f.wallet_id AND d.credential IS NULL
                     ORDER BY version DESC LIMIT 1)
             FROM flags f ORDER BY f.id",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
        )
    }

    fn reader_states(&mut self) -> Result<Vec<ReaderStateTuple>, HubError> {
        self.rows(super::READER_STATES_SQL, [], |r| {
            let at: Option<i64> = r.get(3)?;
            let report = match at {
                None => None,
                Some(at) => Some((
                    at,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                    r.get(7)?,
                    r.get(8)?,
                    r.get(9)?,
                )),
            };
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, report))
        })
    }

    fn finding_counts(&mut self) -> Result<Vec<(String, String, i64)>, HubError> {
        self.rows(super::FINDING_COUNTS_SQL, [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
    }

    fn incidents(&mut self) -> Result<Vec<IncidentTuple>, HubError> {
        self.rows(
            "SELECT reader_id, seq, kind, detail, at FROM incidents ORDER BY id",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
        )
    }

    fn replay_charges(&mut self) -> Result<Vec<RawReplayCharge>, HubError> {
        self.rows(super::REPLAY_CHARGES_SQL, [], |r| {
            Ok(RawReplayCharge {
                wallet: r.get(0)?,
                counter: r.get(1)?,
                token_hash: r.get(2)?,
                credential: r.get(3)?,
                replay: r.get(4)?,
                reader: r.get(5)?,
                seq: r.get(6)?,
                at: r.get(7)?,
                amount: r.get(8)?,
                net: r.get(9)?,
                wallet_action: r.get(10)?,
            })
        })
    }

    fn suspensions(&mut self) -> Result<Vec<RawSuspension>, HubError> {
        self.rows(super::SUSPENSIONS_SQL, [], |r| {
            Ok(RawSuspension {
                deny_version: r.get(0)?,
                credential: r.get(1)?,
                wallet: r.get(2)?,
                rule: r.get(3)?,
                detail: r.get(4)?,
                at: r.get(5)?,
                cleared_at: r.get(6)?,
                cleared_by: r.get(7)?,
                cleared_note: r.get(8)?,
                allow_version: r.get(9)?,
            })
        })
    }

    fn highest_counter(&mut self, wallet: &[u8]) -> Result<Option<i64>, HubError> {
        self.conn
            .query_row(
                "SELECT max(counter) FROM payments WHERE wallet_id = ?1",
                [wallet],
                |r| r.get(0),
            )
            .map_err(store_err(self.path))
    }

    fn conflicts(&mut self, wallet: &[u8]) -> Result<Vec<RawConflict>, HubError> {
        self.rows(super::CONFLICTS_SQL, [wallet], |r| {
            Ok(RawConflict {
                counter: r.get(0)?,
                token_hash: r.get(1)?,
                credential: r.get(2)?,
                reader: r.get(3)?,
                seq: r.get(4)?,
                at: r.get(5)?,
                amount: r.get(6)?,
                authorised: r.get(7)?,
                total_before: r.get(8)?,
                net: r.get(9)?,
            })
        })
    }

    fn credential_spend(&mut self, credential: &[u8]) -> Result<(Option<i64>, i64), HubError> {
        self.conn
            .query_row(
                "SELECT (SELECT offline_limit FROM credentials WHERE digest = ?1),
                        coalesce((SELECT charged FROM credential_spend WHERE credential = ?1), 0)",
                [credential],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map_err(store_err(self.path))
    }
}

#[cfg(test)]
mod tests {
    use ed25519_dalek::SigningKey;

    use super::*;
    use crate::Hub;
    use crate::ledger::Via;
    use sonotap_disk::keys::{PublicKey, Role};
    use sonotap_protocol::record::{GENESIS_HASH, RecordBody, RecordKind};
    use sonotap_protocol::testkit::{NOW, payment, terms, token_bytes};
    use sonotap_protocol::wire::{Batch, BatchRecord, EntryKind};

    /// A hub database of schema 2 (before `records` became a rowid table and
    /// `payments` was keyed by wallet and counter) keeps its rows, and
    /// clearing finds the old payments through the new key.
    #[test]
    fn schema_2_hub_upgrades_with_its_records_and_payments() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(DB_FILE);
        {
            let conn = sqlite::open(
                &path,
                &sqlite::Schema {
                    migrations: &MIGRATIONS[..2],
                    ..SCHEMA
                },
                true,
            )
            .expect("schema 2");
            conn.execute_batch(
                "INSERT INTO records VALUES ('gate-1', 1, 10, 'charge', 250, x'00', zeroblob(32),
                                             zeroblob(32), randomblob(32), zeroblob(64), 11);
                 INSERT INTO payments (token_hash, wallet_id, counter, credential, total_before,
                                       authorised, charged, reader_id, seq)
                 VALUES (zeroblob(32), x'0101010101010101', 5, x'0707070707070707070707070707070707070707070707070707070707070707',
                         0, 250, 250, 'gate-1', 1);",
            )
            .expect("old rows");
        }
        let mut hub = SqliteHub::open(dir.path(), false).expect("upgrade");
        let wallet = WalletId([1; 8]);
        hub.in_transaction(|ledger| {
            let same = ledger.payments_with_counter(wallet, 5)?;
            assert_eq!(same.len(), 1);
            assert_eq!((same[0].reader.as_str(), same[0].seq), ("gate-1", 1));
            let (before, after) = ledger.neighbours(wallet, &[7; 32], 6)?;
            assert_eq!(before.map(|p| p.counter), Some(5));
            assert!(after.is_none());
            // Under another credential of the same wallet: no neighbour.
            assert_eq!(ledger.neighbours(wallet, &[8; 32], 6)?, (None, None));
            assert!(ledger.link("gate-1", 1)?.is_some());
            Ok(())
        })
        .expect("clearing look-ups");
        hub.report().expect("the report reads the upgraded tables");
        let count: i64 = hub
            .conn
            .query_row(
                "SELECT count(*) FROM records WHERE reader_id = 'gate-1'",
                [],
                |r| r.get(0),
            )
            .expect("count");
        assert_eq!(count, 1);
    }

    /// Issue 17: a hub database of schema 4 keeps the charges it stored as
    /// `duplicate_token` incidents; upgraded, they are replays with their
    /// amounts in the report's uncollected sum.
    #[test]
    fn issue17_a_schema_4_hub_upgrades_its_duplicate_charges_into_replays() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(DB_FILE);
        {
            let conn = sqlite::open(
                &path,
                &sqlite::Schema {
                    migrations: &MIGRATIONS[..4],
                    ..SCHEMA
                },
                true,
            )
            .expect("schema 4");
            conn.execute_batch(
                "INSERT INTO readers VALUES ('gate-1', zeroblob(32), 1), ('gate-2', zeroblob(32), 1);
                 INSERT INTO records (reader_id, seq, at, kind, amount, token, token_hash,
                                      prev_hash, hash, signature, received_at)
                 VALUES ('gate-1', 1, 10, 'charge', 250, x'00', x'1111111111111111111111111111111111111111111111111111111111111111',
                         zeroblob(32), randomblob(32), zeroblob(64), 11),
                        ('gate-2', 1, 12, 'charge', 240, x'00', x'1111111111111111111111111111111111111111111111111111111111111111',
                         zeroblob(32), randomblob(32), zeroblob(64), 13);
                 INSERT INTO payments (token_hash, wallet_id, counter, credential, total_before,
                                       authorised, charged, reader_id, seq)
                 VALUES (x'1111111111111111111111111111111111111111111111111111111111111111',
                         x'0101010101010101', 5, zeroblob(32), 0, 250, 250, 'gate-1', 1);
                 INSERT INTO incidents (reader_id, seq, kind, detail, at)
                 VALUES ('gate-2', 1, 'duplicate_token', 'token already charged', 13);",
            )
            .expect("old rows");
        }
        let mut hub = SqliteHub::open(dir.path(), false).expect("upgrade");
        let report = hub.report().expect("report");
        assert_eq!(report.replays.len(), 1);
        let replay = &report.replays[0];
        let charges: Vec<(&str, u64, u64, bool)> = replay
            .charges
            .iter()
            .map(|c| (c.reader.as_str(), c.at, c.amount, c.counted))
            .collect();
        assert_eq!(
            charges,
            [("gate-1", 10, 250, true), ("gate-2", 12, 240, false)]
        );
        assert_eq!((replay.collected, replay.uncollected), (250, 240));
        assert_eq!(report.uncollected, 240);
    }

    /// A hub database of schema 6 kept a row per charge in
    /// `account_entries`; upgraded, the charge is its payment, with the
    /// entry's id, and the balance and the statement are what they were.
    #[test]
    fn schema_6_hub_carries_its_charge_entries_over_to_their_payments() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(DB_FILE);
        {
            let conn = sqlite::open(
                &path,
                &sqlite::Schema {
                    migrations: &MIGRATIONS[..6],
                    ..SCHEMA
                },
                true,
            )
            .expect("schema 6");
            conn.execute_batch(
                "INSERT INTO accounts VALUES ('acct-1', '', 978, 0, 1000, 300, 24, 'transit',
                                              'open', '', 1, 1);
                 INSERT INTO account_wallets VALUES (x'0101010101010101', zeroblob(32), 'acct-1', 1);
                 INSERT INTO account_credentials VALUES (x'0707070707070707070707070707070707070707070707070707070707070707',
                     'acct-1', x'0101010101010101', 1000, 100000, 400000, 2, x'00');
                 INSERT INTO records (reader_id, seq, at, kind, amount, token, token_hash,
                                      prev_hash, hash, signature, received_at)
                 VALUES ('gate-1', 1, 10, 'charge', 250, x'00', x'1111111111111111111111111111111111111111111111111111111111111111',
                         zeroblob(32), randomblob(32), zeroblob(64), 11),
                        ('gate-1', 2, 12, 'void', 50, x'00', x'1111111111111111111111111111111111111111111111111111111111111111',
                         zeroblob(32), randomblob(32), zeroblob(64), 13);
                 INSERT INTO payments (token_hash, wallet_id, counter, credential, total_before,
                                       authorised, charged, reader_id, seq, voids)
                 VALUES (x'1111111111111111111111111111111111111111111111111111111111111111',
                         x'0101010101010101', 1, x'0707070707070707070707070707070707070707070707070707070707070707',
                         0, 250, 200, 'gate-1', 1, 1);
                 INSERT INTO credential_spend VALUES (x'0707070707070707070707070707070707070707070707070707070707070707', 200);
                 INSERT INTO account_entries (entry_id, account_id, kind, amount, at, recorded_at,
                                              source, seq, credential, token_hash, note)
                 VALUES (1, 'acct-1', 'top_up', 1000, 1, 1, 'p1', 0, NULL, NULL, ''),
                        (2, 'acct-1', 'charge', -250, 10, 11, 'gate-1', 1, NULL, NULL, ''),
                        (3, 'acct-1', 'void', 50, 12, 13, 'gate-1', 2, NULL, NULL, '');",
            )
            .expect("old rows");
        }
        let mut hub = SqliteHub::open(dir.path(), false).expect("upgrade");
        let page = |hub: &mut SqliteHub| {
            let mut view = None;
            hub.in_transaction(|ledger| {
                view = crate::accounts::view(ledger, "acct-1", 0, 20)?;
                Ok(())
            })
            .expect("view");
            let view = view.expect("the account");
            let entries: Vec<(u64, &'static str, i64, u64, String, u64)> = view
                .entries
                .iter()
                .map(|e| {
                    (
                        e.id,
                        e.kind.as_str(),
                        e.amount,
                        e.at,
                        e.source.clone(),
                        e.seq,
                    )
                })
                .collect();
            (view.balance, entries)
        };
        let watched: i64 = hub
            .conn
            .query_row("SELECT count(*) FROM watched_credentials", [], |r| r.get(0))
            .expect("count");
        assert_eq!(
            watched, 1,
            "schema 6 never looked: watched until a first look"
        );
        let (balance, entries) = page(&mut hub);
        assert_eq!(balance, 800);
        assert_eq!(
            entries,
            [
                (3, "void", 50, 12, "gate-1".to_owned(), 2),
                (2, "charge", -250, 10, "gate-1".to_owned(), 1),
                (1, "top_up", 1000, 1, "p1".to_owned(), 0),
            ]
        );
        hub.in_transaction(|ledger| {
            crate::accounts::credit(ledger, "acct-1", EntryKind::TopUp, 5, "p2", "", 30).map(drop)
        })
        .expect("a top-up");
        let (balance, entries) = page(&mut hub);
        assert_eq!(
            (balance, entries[0].0),
            (805, 4),
            "ids go on after the old ones"
        );
    }

    /// The batch signature is stored with its batch, and the batch rebuilt
    /// from the stored rows verifies: the evidence for records whose own
    /// signatures the hub did not check one by one.
    #[test]
    fn stored_rows_rebuild_the_signed_batch() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut hub = Hub::init(dir.path(), 1, NOW).expect("hub");
        let reader = SigningKey::from_bytes(&[9; 32]);
        let public = PublicKey::from_bytes(Role::Reader, None, &reader.verifying_key().to_bytes())
            .expect("key");
        hub.add_reader("gate-1", &public, NOW).expect("register");
        let mut prev = GENESIS_HASH;
        let mut records = Vec::new();
        for seq in 1..=3u64 {
            let token = token_bytes(
                terms(),
                sonotap_protocol::token::PaymentTerms {
                    counter: seq as u32,
                    ..payment()
                },
            );
            let body = RecordBody {
                reader_id: "gate-1",
                seq,
                at: NOW + seq,
                kind: RecordKind::Charge,
                amount: 100,
                token: &token,
                prev_hash: prev,
            };
            records.push(BatchRecord {
                at: body.at,
                kind: body.kind,
                amount: 100,
                token: token.clone(),
                signature: body.sign(&reader),
            });
            prev = body.hash();
        }
        let sent =
            Batch::seal("gate-1", 1, GENESIS_HASH, records, NOW + 50, &reader).expect("seal");
        let bytes = sent.encode().expect("encode");
        hub.receive(&bytes, Via::Network, NOW * 1000)
            .expect("stored");
        drop(hub);

        let conn = Connection::open(dir.path().join(DB_FILE)).expect("db");
        let (created_at, signature): (i64, Vec<u8>) = conn
            .query_row(
                "SELECT created_at, signature FROM batches WHERE reader_id = 'gate-1'",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .expect("batch row");
        let prev_hash: Vec<u8> = conn
            .query_row("SELECT prev_hash FROM records WHERE seq = 1", [], |r| {
                r.get(0)
            })
            .expect("first record");
        let mut rows = conn
            .prepare("SELECT at, amount, token, signature FROM records ORDER BY seq")
            .expect("query");
        let records: Vec<BatchRecord> = rows
            .query_map([], |r| {
                let signature: Vec<u8> = r.get(3)?;
                Ok(BatchRecord {
                    at: r.get::<_, i64>(0)? as u64,
                    kind: RecordKind::Charge,
                    amount: r.get(1)?,
                    token: r.get(2)?,
                    signature: signature.try_into().unwrap_or([0; 64]),
                })
            })
            .and_then(|rows| rows.collect())
            .expect("records");
        let rebuilt = Batch {
            reader_id: "gate-1".into(),
            first_seq: 1,
            prev_hash: prev_hash.try_into().expect("hash"),
            records,
            created_at: created_at as u64,
            signature: signature.try_into().expect("signature"),
        };
        assert_eq!(rebuilt.encode().expect("encode"), bytes);
        rebuilt
            .verify(&reader.verifying_key())
            .expect("the stored batch signature verifies");
    }
}
