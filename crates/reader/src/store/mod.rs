//! The reader's durable state in SQLite: record queue, wallet state, deny list, trusted keys,
//! and what the site's other readers announced.
//!
//! Every accept runs as one `BEGIN IMMEDIATE` transaction (read the wallet's
//! history, decide, append the signed record, advance the wallet state,
//! commit with `synchronous=FULL`), so a decision and its record are never
//! apart, two processes never charge the same token, and nothing is actuated
//! before the record is on disk.

mod declines;
mod site;
mod sync;

use std::num::NonZeroU32;
use std::path::{Path, PathBuf};

use ed25519_dalek::{SigningKey, VerifyingKey};
use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};
use rusqlite_migration::M;
use serde::Serialize;
use thiserror::Error;

use crate::actuator::ActuationOutcome;
use sonotap_protocol::policy::{
    self, Authentic, Decline, ReaderPolicy, TrustedKeys, WalletHistory,
};
use sonotap_protocol::record::{GENESIS_HASH, Record, RecordBody, RecordKind};
use sonotap_protocol::token::WalletId;

pub use declines::{DECLINE_LOG_CAP, DeclineEntry};
pub use site::{LearnedAccept, OwnCharge, SiteAccept};
use sonotap_disk::sqlite;
pub use sonotap_disk::sqlite::StoreError;
pub use sync::{Pruned, SyncState};

/// Schema versions of the reader database, oldest first. Append only.
static MIGRATIONS: [M<'static>; 7] = [
    M::up(
        "CREATE TABLE meta (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    ) STRICT;
    CREATE TABLE trusted_keys (
        key_id INTEGER PRIMARY KEY CHECK (key_id BETWEEN 0 AND 255),
        public_key BLOB NOT NULL CHECK (length(public_key) = 32),
        added_at INTEGER NOT NULL
    ) STRICT;
    CREATE TABLE deny_list (
        wallet_id BLOB PRIMARY KEY CHECK (length(wallet_id) = 8),
        reason TEXT NOT NULL,
        added_at INTEGER NOT NULL
    ) STRICT;
    CREATE TABLE wallet_state (
        wallet_id BLOB PRIMARY KEY CHECK (length(wallet_id) = 8),
        last_counter INTEGER NOT NULL,
        updated_at INTEGER NOT NULL
    ) STRICT;
    CREATE TABLE credential_totals (
        credential BLOB PRIMARY KEY CHECK (length(credential) = 32),
        wallet_id BLOB NOT NULL,
        running_total INTEGER NOT NULL,
        valid_until INTEGER NOT NULL
    ) STRICT;
    CREATE TABLE chain_head (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        seq INTEGER NOT NULL,
        hash BLOB NOT NULL CHECK (length(hash) = 32)
    ) STRICT;
    CREATE TABLE records (
        seq INTEGER PRIMARY KEY CHECK (seq >= 1),
        at INTEGER NOT NULL,
        kind TEXT NOT NULL,
        wallet_id BLOB NOT NULL CHECK (length(wallet_id) = 8),
        counter INTEGER NOT NULL,
        amount INTEGER NOT NULL,
        token BLOB NOT NULL,
        prev_hash BLOB NOT NULL CHECK (length(prev_hash) = 32),
        hash BLOB NOT NULL CHECK (length(hash) = 32),
        signature BLOB NOT NULL CHECK (length(signature) = 64),
        synced_at INTEGER
    ) STRICT;
    CREATE INDEX records_unsynced ON records (seq) WHERE synced_at IS NULL;",
    ),
    // Hardware: which charge each void cancels (and why), and what the gate
    // or vending machine did after a record was committed. Neither is part
    // of the signed chain: a void is itself a chained record; these rows are
    // the reader's local account of actuation.
    M::up(
        "CREATE TABLE voids (
        seq INTEGER PRIMARY KEY REFERENCES records (seq) ON DELETE CASCADE,
        charge_seq INTEGER NOT NULL UNIQUE,
        reason TEXT NOT NULL
    ) STRICT;
    CREATE TABLE actuations (
        id INTEGER PRIMARY KEY,
        seq INTEGER NOT NULL REFERENCES records (seq) ON DELETE CASCADE,
        at INTEGER NOT NULL,
        device TEXT NOT NULL,
        outcome TEXT NOT NULL CHECK (outcome IN ('delivered', 'undeliverable', 'passage',
            'no_passage', 'vend_success', 'vend_failed')),
        detail TEXT NOT NULL
    ) STRICT;
    CREATE INDEX actuations_by_seq ON actuations (seq);",
    ),
    // Diagnostics: recent declines for `sonotap status`. Not money and not
    // part of the chain; bounded by trimming on insert (see declines.rs).
    M::up(
        "CREATE TABLE declines (
        id INTEGER PRIMARY KEY,
        at INTEGER NOT NULL,
        reason TEXT NOT NULL,
        wallet TEXT,
        amount INTEGER,
        counter INTEGER,
        detail TEXT NOT NULL
    ) STRICT;",
    ),
    // Vending: a charge committed for a vend is void by default until the
    // machine's success is stored. The row is written in the charge's own
    // transaction and removed in the transaction that stores the success or
    // the void; a row that outlives its session is a void owed (retried, and
    // written at the daemon's next start). Pruning keeps its charge.
    M::up(
        "CREATE TABLE pending_vends (
        charge_seq INTEGER PRIMARY KEY,
        device TEXT NOT NULL,
        at INTEGER NOT NULL
    ) STRICT;",
    ),
    // Site peers: accepts other readers of the site announced (site.rs).
    // Not money and not chained; kept while a replay could still be fresh.
    M::up(
        "CREATE TABLE site_accepts (
        reader_id TEXT NOT NULL,
        token_hash BLOB NOT NULL CHECK (length(token_hash) = 32),
        seq INTEGER NOT NULL,
        at INTEGER NOT NULL,
        stale_after INTEGER NOT NULL,
        wallet_id BLOB NOT NULL CHECK (length(wallet_id) = 8),
        counter INTEGER NOT NULL,
        credential BLOB NOT NULL CHECK (length(credential) = 32),
        running_total INTEGER NOT NULL,
        sent_us INTEGER NOT NULL,
        learned_us INTEGER NOT NULL,
        PRIMARY KEY (reader_id, token_hash)
    ) STRICT;
    CREATE INDEX site_accepts_wallet ON site_accepts (wallet_id, counter);
    CREATE INDEX site_accepts_credential ON site_accepts (credential);
    CREATE INDEX site_accepts_stale ON site_accepts (stale_after);",
    ),
    // Issue 17: the hub's deny entries that name one credential (a
    // suspension for review after a counter conflict): its tokens are
    // declined `wallet_denied`, the wallet's other credentials are not.
    M::up(
        "CREATE TABLE credential_deny (
        credential BLOB PRIMARY KEY CHECK (length(credential) = 32),
        wallet_id BLOB NOT NULL CHECK (length(wallet_id) = 8),
        reason TEXT NOT NULL,
        added_at INTEGER NOT NULL
    ) STRICT;",
    ),
    // Issue 21: a gate opening in flight. Written in the charge's own
    // transaction when the daemon will open a gate for it, removed in the
    // transaction that stores the gate's outcome; a row that outlives the
    // daemon (killed while the gate was open) becomes an `unknown`
    // outcome at its next start. The actuations table is rebuilt to
    // allow that outcome (SQLite cannot alter a CHECK).
    M::up(
        "CREATE TABLE gate_openings (
        charge_seq INTEGER PRIMARY KEY REFERENCES records (seq) ON DELETE CASCADE,
        device TEXT NOT NULL,
        at INTEGER NOT NULL
    ) STRICT;
    CREATE TABLE actuations_v2 (
        id INTEGER PRIMARY KEY,
        seq INTEGER NOT NULL REFERENCES records (seq) ON DELETE CASCADE,
        at INTEGER NOT NULL,
        device TEXT NOT NULL,
        outcome TEXT NOT NULL CHECK (outcome IN ('delivered', 'undeliverable', 'passage',
            'no_passage', 'vend_success', 'vend_failed', 'unknown')),
        detail TEXT NOT NULL
    ) STRICT;
    INSERT INTO actuations_v2 (id, seq, at, device, outcome, detail)
        SELECT id, seq, at, device, outcome, detail FROM actuations;
    DROP TABLE actuations;
    ALTER TABLE actuations_v2 RENAME TO actuations;
    CREATE INDEX actuations_by_seq ON actuations (seq);",
    ),
];

/// The newest schema version this build writes.
pub const SCHEMA_VERSION: usize = MIGRATIONS.len();

/// Who signs the records: the reader's id and its secret key.
pub struct RecordSigner<'a> {
    /// The reader id, as in the record body.
    pub reader_id: &'a str,
    /// The reader's signing key.
    pub key: &'a SigningKey,
}

/// An accepted payment, on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Committed {
    /// The record's sequence number.
    pub seq: u64,
    /// The amount charged.
    pub charge: u32,
    /// The wallet's running total under its credential afterwards.
    pub running_total: u64,
}

/// A void, on disk: a chained record cancelling a charge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Voided {
    /// The void record's sequence number.
    pub seq: u64,
    /// The charge it cancels.
    pub charge_seq: u64,
    /// The amount given back (the charge's amount).
    pub amount: u32,
}

/// A vend charge not yet confirmed delivered nor voided (see
/// [`ReaderDb::pending_vends`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PendingVend {
    /// The charge record.
    pub charge_seq: u64,
    /// The vending machine (profile name and port).
    pub device: String,
    /// When it was charged, reader time (Unix seconds).
    pub at: u64,
}

/// Why a charge could not be voided.
#[derive(Debug, Error)]
pub enum VoidError {
    /// The database failed; nothing was written.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// No record has that sequence number (never made, or pruned after sync).
    #[error("cannot void record {seq}: there is no such record")]
    NoSuchRecord {
        /// The sequence number asked for.
        seq: u64,
    },
    /// The record is not a charge (a void cannot be voided).
    #[error("cannot void record {seq}: it is a {kind}, not a charge")]
    NotACharge {
        /// The record.
        seq: u64,
        /// What it is.
        kind: &'static str,
    },
    /// The charge was voided before.
    #[error("cannot void record {seq}: it was already voided by record {void_seq}")]
    AlreadyVoided {
        /// The charge.
        seq: u64,
        /// The earlier void.
        void_seq: u64,
    },
}

/// One stored actuation row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actuation {
    /// The record it belongs to.
    pub seq: u64,
    /// Reader time, Unix seconds.
    pub at: u64,
    /// The device (profile name and port).
    pub device: String,
    /// What happened.
    pub outcome: ActuationOutcome,
    /// The device's own words (an acknowledgement, a passage line, an error).
    pub detail: String,
}

/// Counts for an operator: how much is waiting for the hub.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QueueSummary {
    /// All records kept.
    pub records: u64,
    /// Records the hub has not acknowledged.
    pub unsynced: u64,
    /// Net of the unsynced records: their charges minus their voids (a
    /// void cancels a charge), never below zero. A void whose charge the hub
    /// already acknowledged is a refund the hub owes, not a negative sum here.
    pub unsynced_amount: u64,
    /// The last sequence number used.
    pub head_seq: u64,
}

/// An open reader database.
pub struct ReaderDb {
    conn: Connection,
    path: PathBuf,
}

impl ReaderDb {
    /// Creates a new database (or opens one that exists) and migrates it.
    pub fn create(path: &Path) -> Result<Self, StoreError> {
        Self::open_with(path, true)
    }

    /// Opens an existing database; a missing file is an error, not a new database.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_with(path, false)
    }

    fn open_with(path: &Path, create: bool) -> Result<Self, StoreError> {
        let schema = sqlite::Schema {
            migrations: &MIGRATIONS,
            marker_table: "meta",
            missing_hint: "run `sonotap reader init` first",
        };
        let conn = sqlite::open(path, &schema, create)?;
        Ok(Self {
            conn,
            path: path.into(),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err(&self) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
        |e| StoreError::from_sqlite(&self.path, e)
    }

    /// The rows `sql` selects, each read as SQLite types by `read` and then
    /// checked into a value by `convert`; every error names this database.
    fn rows<R, T>(
        &self,
        sql: &str,
        params: impl rusqlite::Params,
        read: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<R>,
        mut convert: impl FnMut(R) -> Result<T, StoreError>,
    ) -> Result<Vec<T>, StoreError> {
        let mut stmt = self.conn.prepare(sql).map_err(self.err())?;
        let rows = stmt.query_map(params, read).map_err(self.err())?;
        rows.map(|row| convert(row.map_err(self.err())?)).collect()
    }

    /// Reads a value from the metadata table.
    pub fn meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.conn
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()
            .map_err(self.err())
    }

    /// Writes a value to the metadata table.
    pub fn set_meta(&self, key: &str, value: &str) -> Result<(), StoreError> {
        self.conn
            .execute(
                "INSERT INTO meta (key, value) VALUES (?1, ?2)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                [key, value],
            )
            .map(drop)
            .map_err(self.err())
    }

    /// Trusts an issuer key under its key id (replacing an older key with that id).
    pub fn trust_key(&self, key_id: u8, key: &VerifyingKey, now: u64) -> Result<(), StoreError> {
        self.conn
            .execute(
                "INSERT INTO trusted_keys (key_id, public_key, added_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (key_id) DO UPDATE SET public_key = excluded.public_key,
                                                    added_at = excluded.added_at",
                params![key_id, key.as_bytes().as_slice(), sqlite::int(now)],
            )
            .map(drop)
            .map_err(self.err())
    }

    /// The issuer keys this reader trusts.
    pub fn trusted_keys(&self) -> Result<TrustedKeys, StoreError> {
        let rows = self.rows(
            "SELECT key_id, public_key FROM trusted_keys",
            [],
            |r| Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?)),
            |(id, bytes)| {
                let id = sqlite::unsigned::<u8>(&self.path, "issuer key id", id)?;
                let bytes = sqlite::blob::<32>(&self.path, "issuer key", bytes)?;
                let key = VerifyingKey::from_bytes(&bytes).map_err(|_| {
                    StoreError::inconsistent(
                        &self.path,
                        format!("trusted key {id} is not a valid key"),
                    )
                })?;
                Ok((id, key))
            },
        )?;
        let mut keys = TrustedKeys::default();
        for (id, key) in rows {
            keys.insert(id, key);
        }
        Ok(keys)
    }

    /// Puts a wallet on the deny list.
    pub fn deny(&self, wallet: WalletId, reason: &str, now: u64) -> Result<(), StoreError> {
        self.conn
            .execute(
                "INSERT INTO deny_list (wallet_id, reason, added_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (wallet_id) DO UPDATE SET reason = excluded.reason",
                params![wallet.0.as_slice(), reason, sqlite::int(now)],
            )
            .map(drop)
            .map_err(self.err())
    }

    /// Takes a wallet off the deny list; returns whether it was on it.
    pub fn allow(&self, wallet: WalletId) -> Result<bool, StoreError> {
        self.conn
            .execute(
                "DELETE FROM deny_list WHERE wallet_id = ?1",
                [wallet.0.as_slice()],
            )
            .map(|n| n > 0)
            .map_err(self.err())
    }

    /// Decides on an authentic token and, if it is accepted, commits the
    /// signed record and the wallet's new state before returning.
    ///
    /// The outer `Result` is the store failing (nothing was charged); the
    /// inner one is the policy's decision.
    pub fn commit_payment(
        &mut self,
        signer: &RecordSigner<'_>,
        token: &Authentic,
        policy: &ReaderPolicy,
        charge: Option<NonZeroU32>,
        now: u64,
    ) -> Result<Result<Committed, Decline>, StoreError> {
        self.commit_charge(signer, token, policy, charge, None, now)
    }

    /// [`ReaderDb::commit_payment`] for a gate `device` about to open: the
    /// opening is written as in flight in the same transaction (see
    /// [`ReaderDb::settle_gate_openings`]), so that a daemon killed while
    /// the gate is open leaves a record an operator can find.
    pub fn commit_gate_charge(
        &mut self,
        signer: &RecordSigner<'_>,
        token: &Authentic,
        policy: &ReaderPolicy,
        charge: Option<NonZeroU32>,
        device: &str,
        now: u64,
    ) -> Result<Result<Committed, Decline>, StoreError> {
        self.commit_charge(
            signer,
            token,
            policy,
            charge,
            Some(InFlight::Gate(device)),
            now,
        )
    }

    /// [`ReaderDb::commit_payment`] for a vend on `device`: the charge is
    /// written as pending delivery in the same transaction (see
    /// [`ReaderDb::pending_vends`]), so that it is voided unless
    /// [`ReaderDb::confirm_vend`] stores the machine's success.
    pub fn commit_vend_charge(
        &mut self,
        signer: &RecordSigner<'_>,
        token: &Authentic,
        policy: &ReaderPolicy,
        price: NonZeroU32,
        device: &str,
        now: u64,
    ) -> Result<Result<Committed, Decline>, StoreError> {
        self.commit_charge(
            signer,
            token,
            policy,
            Some(price),
            Some(InFlight::Vend(device)),
            now,
        )
    }

    fn commit_charge(
        &mut self,
        signer: &RecordSigner<'_>,
        token: &Authentic,
        policy: &ReaderPolicy,
        charge: Option<NonZeroU32>,
        in_flight: Option<InFlight<'_>>,
        now: u64,
    ) -> Result<Result<Committed, Decline>, StoreError> {
        let path = self.path.clone();
        let err = |e| StoreError::from_sqlite(&path, e);
        let tx = begin_immediate(&mut self.conn, &path)?;
        let (history, denial) = wallet_history(&tx, &path, token)?;
        let approval = match policy::decide(token, &history, policy, charge, now) {
            Ok(approval) => approval,
            // The transaction rolls back on drop.
            Err(decline) => return Ok(Err(denial.explain(decline, token))),
        };
        let payment = token.token().payment;
        let terms = token.token().credential.terms;
        let wallet = token.wallet();
        let seq = append_record(
            &tx,
            &path,
            signer,
            NewRecord {
                at: now,
                kind: RecordKind::Charge,
                wallet: &wallet.0,
                counter: payment.counter,
                amount: approval.charge,
                token: token.bytes(),
            },
        )?;
        tx.execute(
            "INSERT INTO wallet_state (wallet_id, last_counter, updated_at) VALUES (?1, ?2, ?3)
             ON CONFLICT (wallet_id) DO UPDATE SET last_counter = excluded.last_counter,
                                                   updated_at = excluded.updated_at",
            params![wallet.0.as_slice(), payment.counter, sqlite::int(now)],
        )
        .map_err(err)?;
        tx.execute(
            "INSERT INTO credential_totals (credential, wallet_id, running_total, valid_until)
             VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (credential) DO UPDATE SET running_total = excluded.running_total",
            params![
                token.token().credential.digest().as_slice(),
                wallet.0.as_slice(),
                sqlite::int(approval.running_total),
                sqlite::int(terms.valid_until()),
            ],
        )
        .map_err(err)?;
        if let Some(in_flight) = in_flight {
            let (sql, device) = match in_flight {
                InFlight::Vend(device) => (
                    "INSERT INTO pending_vends (charge_seq, device, at) VALUES (?1, ?2, ?3)",
                    device,
                ),
                InFlight::Gate(device) => (
                    "INSERT INTO gate_openings (charge_seq, device, at) VALUES (?1, ?2, ?3)",
                    device,
                ),
            };
            tx.execute(sql, params![sqlite::int(seq), device, sqlite::int(now)])
                .map_err(err)?;
        }
        tx.commit().map_err(err)?;
        Ok(Ok(Committed {
            seq,
            charge: approval.charge,
            running_total: approval.running_total,
        }))
    }

    /// Runs the checks that do not depend on the price (see
    /// [`policy::most_chargeable`]) against the wallet's history, in a read
    /// transaction: nothing is written. `Ok(Ok(funds))` is the most a charge
    /// for this token may be; the charge itself is still decided and
    /// committed by [`ReaderDb::commit_payment`].
    pub fn check_payment(
        &mut self,
        token: &Authentic,
        policy: &ReaderPolicy,
        now: u64,
    ) -> Result<Result<u32, Decline>, StoreError> {
        let path = self.path.clone();
        let tx = self
            .conn
            .transaction()
            .map_err(|e| StoreError::from_sqlite(&path, e))?;
        let (history, denial) = wallet_history(&tx, &path, token)?;
        Ok(policy::most_chargeable(token, &history, policy, now)
            .map_err(|decline| denial.explain(decline, token)))
    }

    /// Cancels the charge `charge_seq` with a chained, signed void record
    /// (same token bytes, same amount), in one `BEGIN IMMEDIATE` transaction.
    ///
    /// The wallet's counter and running total are left as they are: the
    /// token stays spent (it cannot be presented again) and the wallet's own
    /// running total includes it; the hub refunds. A record that is not a
    /// charge, or a charge already voided, is refused.
    pub fn void_charge(
        &mut self,
        signer: &RecordSigner<'_>,
        charge_seq: u64,
        reason: &str,
        now: u64,
    ) -> Result<Voided, VoidError> {
        let path = self.path.clone();
        let err = |e| StoreError::from_sqlite(&path, e);
        let tx = begin_immediate(&mut self.conn, &path)?;
        let charge = tx
            .query_row(
                "SELECT kind, wallet_id, counter, amount, token FROM records WHERE seq = ?1",
                [sqlite::int(charge_seq)],
                |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, Vec<u8>>(1)?,
                        r.get::<_, i64>(2)?,
                        r.get::<_, i64>(3)?,
                        r.get::<_, Vec<u8>>(4)?,
                    ))
                },
            )
            .optional()
            .map_err(err)?;
        let Some((kind, wallet, counter, amount, token)) = charge else {
            return Err(VoidError::NoSuchRecord { seq: charge_seq });
        };
        let kind = RecordKind::from_name(&kind).ok_or_else(|| {
            StoreError::inconsistent(&path, format!("unknown record kind {kind:?}"))
        })?;
        if kind != RecordKind::Charge {
            return Err(VoidError::NotACharge {
                seq: charge_seq,
                kind: kind.as_str(),
            });
        }
        let earlier = tx
            .query_row(
                "SELECT seq FROM voids WHERE charge_seq = ?1",
                [sqlite::int(charge_seq)],
                |r| r.get::<_, i64>(0),
            )
            .optional()
            .map_err(err)?;
        if let Some(void_seq) = earlier {
            return Err(VoidError::AlreadyVoided {
                seq: charge_seq,
                void_seq: sqlite::unsigned(&path, "void sequence number", void_seq)?,
            });
        }
        let amount: u32 = sqlite::unsigned(&path, "amount", amount)?;
        let wallet: [u8; 8] = sqlite::blob(&path, "wallet id", wallet)?;
        let counter: u32 = sqlite::unsigned(&path, "counter", counter)?;
        let seq = append_record(
            &tx,
            &path,
            signer,
            NewRecord {
                at: now,
                kind: RecordKind::Void,
                wallet: &wallet,
                counter,
                amount,
                token: &token,
            },
        )?;
        tx.execute(
            "INSERT INTO voids (seq, charge_seq, reason) VALUES (?1, ?2, ?3)",
            params![sqlite::int(seq), sqlite::int(charge_seq), reason],
        )
        .map_err(err)?;
        // A vend's charge pending delivery is settled by its void.
        settle_pending(&tx, charge_seq).map_err(err)?;
        tx.commit().map_err(err)?;
        Ok(Voided {
            seq,
            charge_seq,
            amount,
        })
    }

    /// Stores the machine's success for the vend charged by `charge_seq`
    /// (a `vend_success` actuation) and takes the charge out of
    /// [`ReaderDb::pending_vends`], in one transaction: from then on the
    /// charge stands.
    pub fn confirm_vend(
        &mut self,
        charge_seq: u64,
        now: u64,
        device: &str,
        detail: &str,
    ) -> Result<(), StoreError> {
        let path = self.path.clone();
        let err = |e| StoreError::from_sqlite(&path, e);
        let tx = begin_immediate(&mut self.conn, &path)?;
        insert_actuation(
            &tx,
            charge_seq,
            now,
            device,
            ActuationOutcome::VendSuccess,
            detail,
        )
        .map_err(err)?;
        settle_pending(&tx, charge_seq).map_err(err)?;
        tx.commit().map_err(err)
    }

    /// Vend charges whose delivery was never confirmed and that are not
    /// voided yet, oldest first: during a session, the one being vended;
    /// otherwise each is a void owed (the daemon writes them at start and
    /// retries them while it runs).
    pub fn pending_vends(&self) -> Result<Vec<PendingVend>, StoreError> {
        // `status` opens read-only, which runs no migration: a database an
        // older sonotap wrote has no such table, and so nothing pending.
        if !sqlite::has_table(&self.conn, "pending_vends").map_err(self.err())? {
            return Ok(Vec::new());
        }
        self.rows(
            "SELECT charge_seq, device, at FROM pending_vends ORDER BY charge_seq",
            [],
            |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            },
            |(seq, device, at)| {
                Ok(PendingVend {
                    charge_seq: sqlite::unsigned(&self.path, "pending vend charge", seq)?,
                    device,
                    at: sqlite::unsigned(&self.path, "pending vend time", at)?,
                })
            },
        )
    }

    /// The void record that cancelled charge `charge_seq`, and why, if any.
    pub fn void_of(&self, charge_seq: u64) -> Result<Option<(u64, String)>, StoreError> {
        let found = self
            .conn
            .query_row(
                "SELECT seq, reason FROM voids WHERE charge_seq = ?1",
                [sqlite::int(charge_seq)],
                |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)),
            )
            .optional()
            .map_err(self.err())?;
        found
            .map(|(seq, reason)| {
                Ok((
                    sqlite::unsigned(&self.path, "void sequence number", seq)?,
                    reason,
                ))
            })
            .transpose()
    }

    /// Stores what the gate `device` did about record `seq` (each of
    /// `outcomes`) and ends its opening in flight, in one transaction.
    pub fn record_gate_outcome(
        &mut self,
        seq: u64,
        now: u64,
        device: &str,
        outcomes: &[(ActuationOutcome, String)],
    ) -> Result<(), StoreError> {
        let path = self.path.clone();
        let err = |e| StoreError::from_sqlite(&path, e);
        let tx = begin_immediate(&mut self.conn, &path)?;
        for (outcome, detail) in outcomes {
            insert_actuation(&tx, seq, now, device, *outcome, detail).map_err(err)?;
        }
        tx.execute(
            "DELETE FROM gate_openings WHERE charge_seq = ?1",
            params![sqlite::int(seq)],
        )
        .map_err(err)?;
        tx.commit().map_err(err)
    }

    /// At a daemon's start: every gate opening still in flight (the daemon
    /// stopped between committing a charge and storing what its gate did,
    /// or storing it failed) is given the outcome
    /// [`ActuationOutcome::Unknown`], the gate having been released at
    /// start, in one transaction. Returns those records'
    /// sequence numbers.
    pub fn settle_gate_openings(&mut self, now: u64) -> Result<Vec<u64>, StoreError> {
        let path = self.path.clone();
        let err = |e| StoreError::from_sqlite(&path, e);
        let tx = begin_immediate(&mut self.conn, &path)?;
        let open: Vec<(i64, String, i64)> = {
            let mut stmt = tx
                .prepare("SELECT charge_seq, device, at FROM gate_openings ORDER BY charge_seq")
                .map_err(err)?;
            stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .map_err(err)?
                .collect::<rusqlite::Result<_>>()
                .map_err(err)?
        };
        let mut settled = Vec::with_capacity(open.len());
        for (seq, device, at) in open {
            let seq = sqlite::unsigned(&path, "gate opening", seq)?;
            let detail = format!("{GATE_RELEASED_AT_START} (at {at})");
            insert_actuation(&tx, seq, now, &device, ActuationOutcome::Unknown, &detail)
                .map_err(err)?;
            settled.push(seq);
        }
        tx.execute("DELETE FROM gate_openings", []).map_err(err)?;
        tx.commit().map_err(err)?;
        Ok(settled)
    }

    /// Stores what a device did about record `seq` (see [`ActuationOutcome`]).
    pub fn record_actuation(
        &self,
        seq: u64,
        now: u64,
        device: &str,
        outcome: ActuationOutcome,
        detail: &str,
    ) -> Result<(), StoreError> {
        insert_actuation(&self.conn, seq, now, device, outcome, detail).map_err(self.err())
    }

    /// The actuations stored for record `seq`, oldest first.
    pub fn actuations(&self, seq: u64) -> Result<Vec<Actuation>, StoreError> {
        self.rows(
            "SELECT seq, at, device, outcome, detail FROM actuations WHERE seq = ?1 ORDER BY id",
            [sqlite::int(seq)],
            |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, String>(4)?,
                ))
            },
            |(seq, at, device, outcome, detail)| {
                Ok(Actuation {
                    seq: sqlite::unsigned(&self.path, "actuation seq", seq)?,
                    at: sqlite::unsigned(&self.path, "actuation time", at)?,
                    device,
                    outcome: ActuationOutcome::from_name(&outcome).ok_or_else(|| {
                        StoreError::inconsistent(
                            &self.path,
                            format!("unknown actuation outcome {outcome:?}"),
                        )
                    })?,
                    detail,
                })
            },
        )
    }

    /// Records in sequence order; `unsynced_only` keeps those the hub has not acknowledged.
    pub fn records(&self, unsynced_only: bool) -> Result<Vec<Record>, StoreError> {
        let mut records = Vec::new();
        self.for_each_record(unsynced_only, |record| {
            records.push(record);
            Ok::<(), StoreError>(())
        })?;
        Ok(records)
    }

    /// Streams records in sequence order to `visit`, in constant memory
    /// however long the queue is.
    pub fn for_each_record<E: From<StoreError>>(
        &self,
        unsynced_only: bool,
        mut visit: impl FnMut(Record) -> Result<(), E>,
    ) -> Result<(), E> {
        let clause = if unsynced_only {
            "WHERE synced_at IS NULL ORDER BY seq"
        } else {
            "ORDER BY seq"
        };
        self.records_where(clause, [], &mut visit)
    }

    /// Streams the records selected by `clause` (after `FROM records`).
    fn records_where<E: From<StoreError>>(
        &self,
        clause: &str,
        params: impl rusqlite::Params,
        visit: &mut impl FnMut(Record) -> Result<(), E>,
    ) -> Result<(), E> {
        let sql = format!(
            "SELECT seq, at, kind, wallet_id, counter, amount, token, prev_hash, hash, signature, synced_at
             FROM records {clause}"
        );
        let mut stmt = self.conn.prepare_cached(&sql).map_err(self.err())?;
        let mut rows = stmt.query(params).map_err(self.err())?;
        while let Some(r) = rows.next().map_err(self.err())? {
            let raw = (|| {
                Ok(RawRecord {
                    seq: r.get(0)?,
                    at: r.get(1)?,
                    kind: r.get(2)?,
                    wallet: r.get(3)?,
                    counter: r.get(4)?,
                    amount: r.get(5)?,
                    token: r.get(6)?,
                    prev_hash: r.get(7)?,
                    hash: r.get(8)?,
                    signature: r.get(9)?,
                    synced_at: r.get(10)?,
                })
            })()
            .map_err(self.err())?;
            visit(raw.into_record(&self.path)?)?;
        }
        Ok(())
    }

    /// Queue depth and totals.
    pub fn summary(&self) -> Result<QueueSummary, StoreError> {
        let (records, unsynced, unsynced_amount): (i64, i64, i64) = self
            .conn
            .query_row(
                "SELECT count(*),
                        count(*) FILTER (WHERE synced_at IS NULL),
                        max(0, coalesce(sum(CASE kind WHEN 'void' THEN -amount ELSE amount END)
                                        FILTER (WHERE synced_at IS NULL), 0))
                 FROM records",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .map_err(self.err())?;
        let (head_seq, _) = chain_head(&self.conn, &self.path)?;
        Ok(QueueSummary {
            records: sqlite::unsigned(&self.path, "record count", records)?,
            unsynced: sqlite::unsigned(&self.path, "unsynced count", unsynced)?,
            unsynced_amount: sqlite::unsigned(&self.path, "unsynced amount", unsynced_amount)?,
            head_seq,
        })
    }
}

/// A `BEGIN IMMEDIATE` transaction on `conn`, the database at `path`: the
/// write lock is taken before anything is read.
fn begin_immediate<'c>(
    conn: &'c mut Connection,
    path: &Path,
) -> Result<Transaction<'c>, StoreError> {
    conn.transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(|e| StoreError::from_sqlite(path, e))
}

/// The detail of an [`ActuationOutcome::Unknown`] written at start (then
/// when the charge was committed, in Unix seconds).
pub const GATE_RELEASED_AT_START: &str = "released at start: the daemon stopped (or could not \
     store the gate's outcome) after the charge was committed";

/// An operation a charge is committed for, still in flight: written in the
/// charge's transaction, ended by the device's outcome.
#[derive(Clone, Copy, Debug)]
pub enum InFlight<'a> {
    /// A vend on this device (see [`ReaderDb::pending_vends`]).
    Vend(&'a str),
    /// A gate opening on this device (see [`ReaderDb::settle_gate_openings`]).
    Gate(&'a str),
}

/// Stores what `device` did about record `seq` at `now`.
fn insert_actuation(
    conn: &Connection,
    seq: u64,
    now: u64,
    device: &str,
    outcome: ActuationOutcome,
    detail: &str,
) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO actuations (seq, at, device, outcome, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![
            sqlite::int(seq),
            sqlite::int(now),
            device,
            outcome.as_str(),
            detail
        ],
    )
    .map(drop)
}

/// Takes charge `charge_seq` out of the vends pending delivery (its vend
/// is settled: confirmed or voided).
fn settle_pending(tx: &Transaction<'_>, charge_seq: u64) -> rusqlite::Result<usize> {
    tx.execute(
        "DELETE FROM pending_vends WHERE charge_seq = ?1",
        [sqlite::int(charge_seq)],
    )
}

/// Which deny-list row, if any, declines a token: its wallet's, or its
/// credential's (a suspension for review).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Denial {
    None,
    Wallet,
    Credential { reason: String },
}

impl Denial {
    /// A `wallet_denied` decline for a credential's suspension says so and
    /// names the credential (the policy's own detail names the wallet).
    fn explain(&self, decline: Decline, token: &Authentic) -> Decline {
        match (self, decline.reason) {
            (Denial::Credential { reason }, policy::Reason::WalletDenied) => Decline {
                reason: decline.reason,
                detail: format!(
                    "credential {} of wallet {} is suspended for review ({reason}); the \
                     wallet's other credentials are not",
                    hex::encode(token.token().credential.digest()),
                    token.wallet()
                ),
            },
            _ => decline,
        }
    }
}

/// The wallet's history for the policy, and which deny row (if any) makes
/// it `denied`: the wallet's, else its credential's.
fn wallet_history(
    tx: &Transaction<'_>,
    path: &Path,
    token: &Authentic,
) -> Result<(WalletHistory, Denial), StoreError> {
    let err = |e| StoreError::from_sqlite(path, e);
    let wallet = token.wallet();
    let digest = token.token().credential.digest();
    let wallet_denied = tx
        .query_row(
            "SELECT 1 FROM deny_list WHERE wallet_id = ?1",
            [wallet.0.as_slice()],
            |_| Ok(()),
        )
        .optional()
        .map_err(err)?
        .is_some();
    let credential_denied: Option<String> = tx
        .query_row(
            "SELECT reason FROM credential_deny WHERE credential = ?1",
            [digest.as_slice()],
            |r| r.get(0),
        )
        .optional()
        .map_err(err)?;
    let denial = match (wallet_denied, credential_denied) {
        (true, _) => Denial::Wallet,
        (false, Some(reason)) => Denial::Credential { reason },
        (false, None) => Denial::None,
    };
    let last_counter = tx
        .query_row(
            "SELECT last_counter FROM wallet_state WHERE wallet_id = ?1",
            [wallet.0.as_slice()],
            |r| r.get::<_, i64>(0),
        )
        .optional()
        .map_err(err)?
        .map(|c| sqlite::unsigned::<u32>(path, "wallet counter", c))
        .transpose()?;
    let credential_total = tx
        .query_row(
            "SELECT running_total FROM credential_totals WHERE credential = ?1",
            [digest.as_slice()],
            |r| r.get::<_, i64>(0),
        )
        .optional()
        .map_err(err)?
        .map(|t| sqlite::unsigned::<u64>(path, "running total", t))
        .transpose()?
        .unwrap_or(0);
    let (site, site_total) = site::site_history(tx, path, token)?;
    let history = WalletHistory {
        denied: denial != Denial::None,
        last_counter,
        credential_total: credential_total.max(site_total),
        site,
    };
    Ok((history, denial))
}

/// A record about to be appended to the chain.
struct NewRecord<'a> {
    at: u64,
    kind: RecordKind,
    wallet: &'a [u8; 8],
    counter: u32,
    amount: u32,
    token: &'a [u8],
}

/// Appends `record` after the chain head, signed by `signer`, and moves the
/// head; returns its sequence number. Runs inside the caller's transaction.
fn append_record(
    tx: &Transaction<'_>,
    path: &Path,
    signer: &RecordSigner<'_>,
    record: NewRecord<'_>,
) -> Result<u64, StoreError> {
    let err = |e| StoreError::from_sqlite(path, e);
    let (head_seq, head_hash) = chain_head(tx, path)?;
    // SQLite's INTEGER holds at most 2^63 - 1: never store a number clamped.
    let seq = head_seq
        .checked_add(1)
        .filter(|seq| *seq <= sonotap_protocol::wire::MAX_SEQ)
        .ok_or_else(|| {
            StoreError::inconsistent(
                path,
                format!("the record chain is at sequence number {head_seq}, the largest a record may carry"),
            )
        })?;
    let body = RecordBody {
        reader_id: signer.reader_id,
        seq,
        at: record.at,
        kind: record.kind,
        amount: record.amount,
        token: record.token,
        prev_hash: head_hash,
    };
    let hash = body.hash();
    tx.execute(
        "INSERT INTO records (seq, at, kind, wallet_id, counter, amount, token, prev_hash, hash, signature)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        params![
            sqlite::int(body.seq),
            sqlite::int(record.at),
            body.kind.as_str(),
            record.wallet.as_slice(),
            record.counter,
            record.amount,
            record.token,
            head_hash.as_slice(),
            hash.as_slice(),
            body.sign(signer.key).as_slice(),
        ],
    )
    .map_err(err)?;
    tx.execute(
        "INSERT INTO chain_head (id, seq, hash) VALUES (1, ?1, ?2)
         ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash",
        params![sqlite::int(body.seq), hash.as_slice()],
    )
    .map_err(err)?;
    Ok(body.seq)
}

fn chain_head(conn: &Connection, path: &Path) -> Result<(u64, [u8; 32]), StoreError> {
    let head = conn
        .query_row("SELECT seq, hash FROM chain_head WHERE id = 1", [], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?))
        })
        .optional()
        .map_err(|e| StoreError::from_sqlite(path, e))?;
    match head {
        None => Ok((0, GENESIS_HASH)),
        Some((seq, hash)) => Ok((
            sqlite::unsigned(path, "chain head", seq)?,
            sqlite::blob(path, "chain head hash", hash)?,
        )),
    }
}

/// A row as SQLite returns it, before its invariants are checked.
struct RawRecord {
    seq: i64,
    at: i64,
    kind: String,
    wallet: Vec<u8>,
    counter: i64,
    amount: i64,
    token: Vec<u8>,
    prev_hash: Vec<u8>,
    hash: Vec<u8>,
    signature: Vec<u8>,
    synced_at: Option<i64>,
}

impl RawRecord {
    fn into_record(self, path: &Path) -> Result<Record, StoreError> {
        Ok(Record {
            seq: sqlite::unsigned(path, "sequence number", self.seq)?,
            at: sqlite::unsigned(path, "record time", self.at)?,
            kind: RecordKind::from_name(&self.kind).ok_or_else(|| {
                StoreError::inconsistent(path, format!("unknown record kind {:?}", self.kind))
            })?,
            wallet: WalletId(sqlite::blob(path, "wallet id", self.wallet)?),
            counter: sqlite::unsigned(path, "counter", self.counter)?,
            amount: sqlite::unsigned(path, "amount", self.amount)?,
            token: self.token,
            prev_hash: sqlite::blob(path, "previous hash", self.prev_hash)?,
            hash: sqlite::blob(path, "record hash", self.hash)?,
            signature: sqlite::blob(path, "record signature", self.signature)?,
            synced_at: self
                .synced_at
                .map(|t| sqlite::unsigned(path, "sync time", t))
                .transpose()?,
        })
    }
}

#[cfg(test)]
mod tests;
