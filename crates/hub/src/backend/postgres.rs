//! The hub's PostgreSQL backend, for an operator whose fleet outgrows one
//! machine: several `sonotap hub serve --database postgres://…` processes
//! can share one database.
//!
//! The schema mirrors [`super::sqlite`] (BYTEA for blobs, BIGINT for
//! integers); its version is kept in the `sonotap_schema` table, and
//! missing migrations are applied in one transaction when a hub connects,
//! which also registers the hub's issuer key (both under the writers' lock,
//! so hub processes may start together on an empty database).
//! A database whose schema is newer than this build is refused untouched.
//!
//! # Isolation
//!
//! Every write that goes through the clearing logic ([`crate::ledger::ingest`],
//! [`crate::ledger::set_deny`]) runs in one READ COMMITTED transaction that first
//! takes transaction-scoped advisory locks on what it shares with other
//! writers (`locks`): an ingest locks its reader's chain and the wallets
//! of its payments, an operator's deny or allow its wallet, and an append
//! to the deny list its version counter. Every row a clearing decision
//! reads (the wallet's payments, its credentials' net charges, its deny
//! entries, the reader's stored records) is written only under the lock of
//! its reader or wallet, and READ COMMITTED reads it *after* the previous
//! holder committed (a fresh snapshot per statement, the locks taken by the
//! first): two hubs can never both miss each other's clone of a wallet or
//! both append deny-list version `n + 1`, yet batches of other readers for
//! other wallets are ingested at once by other hub processes.
//! SERIALIZABLE would give the same guarantee but aborts one of two
//! conflicting ingests (SQLSTATE 40001), which then has to be retried
//! whole, signer included; locks never abort. Every read (a report, a
//! deny-list page, a reader's key) runs in one REPEATABLE READ, READ ONLY
//! transaction (one snapshot) without a lock, on a connection of its own
//! when the server reads beside the writer ([`HubBackend::reader_opener`]:
//! it connects, it does not migrate).
//!
//! An ingest is a handful of statements whatever the batch's size (its
//! ledger, `ledger.rs`, prefetches what clearing asks and writes
//! set-based before the commit).
//!
//! A waiting writer gives up after [`LOCK_TIMEOUT`] with a clear error, as
//! a SQLite writer does after its busy timeout.
//!
//! # Connections and TLS
//!
//! The client is the synchronous `postgres` crate, which drives its own
//! single-threaded tokio runtime. Its calls must not be made on an async
//! worker thread ("Cannot start a runtime from within a runtime"): the HTTP
//! server calls the hub from `tokio::task::spawn_blocking`, where they are
//! allowed. [`open_database`] and [`PostgresHub::connect_as`] run on a
//! short-lived plain thread when called inside a runtime, and dropping hands
//! the client to one, so opening and dropping are safe from any context.
//!
//! Connections are made without TLS: `sslmode=disable` and the default
//! `sslmode=prefer` (which then stays in plain text) are accepted,
//! `sslmode=require` is refused. Use a Unix socket
//! (`postgres://user@%2Fvar%2Frun%2Fpostgresql/db`), loopback, or a private
//! network. A lost connection is reopened before the next operation.

use std::error::Error as _;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use postgres::config::{Host, SslMode};
use postgres::error::SqlState;
use postgres::types::ToSql;
use postgres::{Client, Config, IsolationLevel, NoTls, Row, Transaction};

use self::ledger::PgLedger;
use super::LockWaits;
use super::{
    Arrival, FlagTuple, HubBackend, IncidentTuple, RawConflict, RawReplayCharge, RawSuspension,
    ReadBackend, ReaderOpener, ReaderStateTuple, ReaderTuple, STALE_REPORT_MS, Snapshot,
};
use crate::ledger::{self as clearing_ledger, DenySigner, IngestReport, Ledger, Via};
use crate::verify::CheckedBatch;
use crate::{HubError, pgpass};
use sonotap_disk::sqlite::StoreError;
use sonotap_disk::sqlite::int;
use sonotap_protocol::api::StatusReport;
use sonotap_protocol::token::{Credential, WalletId};
use sonotap_protocol::wire::{DenyAction, DenyEntry, DenyReason};

/// The hub's advisory lock key (`"sonotap1"` as an integer): ingests hold
/// it shared, migrations and any other write exclusively.
pub const WRITE_LOCK: i64 = 0x736f_6e6f_7461_7031;

/// How long a writer waits for another hub process's write lock.
pub const LOCK_TIMEOUT: Duration = Duration::from_secs(10);

/// How long connecting may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The table holding the applied schema versions.
const SCHEMA_TABLE: &str = "sonotap_schema";

/// Migrations, oldest first; the schema version is the number applied.
static MIGRATIONS: [&str; 8] = [
    "CREATE TABLE issuer_keys (
        key_id BIGINT PRIMARY KEY CHECK (key_id BETWEEN 0 AND 255),
        public_key BYTEA NOT NULL CHECK (length(public_key) = 32),
        created_at BIGINT NOT NULL,
        retired_at BIGINT
    );
    CREATE TABLE credentials (
        digest BYTEA PRIMARY KEY CHECK (length(digest) = 32),
        wallet_id BYTEA NOT NULL CHECK (length(wallet_id) = 8),
        issuer_key_id BIGINT NOT NULL REFERENCES issuer_keys (key_id),
        scope TEXT NOT NULL,
        currency BIGINT NOT NULL,
        offline_limit BIGINT NOT NULL,
        per_payment_cap BIGINT NOT NULL,
        valid_from BIGINT NOT NULL,
        valid_until BIGINT NOT NULL,
        credential BYTEA NOT NULL,
        issued_at BIGINT NOT NULL
    );
    CREATE INDEX credentials_by_wallet ON credentials (wallet_id);",
    "CREATE TABLE readers (
        reader_id TEXT PRIMARY KEY,
        public_key BYTEA NOT NULL CHECK (length(public_key) = 32),
        added_at BIGINT NOT NULL
    );
    CREATE TABLE batches (
        reader_id TEXT NOT NULL,
        first_seq BIGINT NOT NULL,
        last_seq BIGINT NOT NULL,
        count BIGINT NOT NULL,
        charged BIGINT NOT NULL,
        voided BIGINT NOT NULL,
        last_hash BYTEA NOT NULL,
        via TEXT NOT NULL,
        received_at BIGINT NOT NULL,
        PRIMARY KEY (reader_id, first_seq, last_seq)
    );
    CREATE TABLE records (
        reader_id TEXT NOT NULL,
        seq BIGINT NOT NULL CHECK (seq >= 1),
        at BIGINT NOT NULL,
        kind TEXT NOT NULL,
        amount BIGINT NOT NULL,
        token BYTEA NOT NULL,
        token_hash BYTEA NOT NULL CHECK (length(token_hash) = 32),
        prev_hash BYTEA NOT NULL CHECK (length(prev_hash) = 32),
        hash BYTEA NOT NULL CHECK (length(hash) = 32),
        signature BYTEA NOT NULL CHECK (length(signature) = 64),
        received_at BIGINT NOT NULL,
        PRIMARY KEY (reader_id, seq)
    );
    CREATE TABLE payments (
        id BIGSERIAL PRIMARY KEY,
        token_hash BYTEA NOT NULL CHECK (length(token_hash) = 32),
        wallet_id BYTEA NOT NULL CHECK (length(wallet_id) = 8),
        counter BIGINT NOT NULL,
        credential BYTEA NOT NULL CHECK (length(credential) = 32),
        total_before BIGINT NOT NULL,
        authorised BIGINT NOT NULL,
        charged BIGINT NOT NULL,
        reader_id TEXT NOT NULL,
        seq BIGINT NOT NULL
    );
    CREATE INDEX payments_by_counter ON payments (wallet_id, counter);
    CREATE INDEX payments_by_credential ON payments (credential, counter);
    CREATE TABLE credential_spend (
        credential BYTEA PRIMARY KEY CHECK (length(credential) = 32),
        charged BIGINT NOT NULL
    );
    CREATE TABLE flags (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        wallet_id BYTEA NOT NULL CHECK (length(wallet_id) = 8),
        rule TEXT NOT NULL,
        detail TEXT NOT NULL,
        evidence TEXT NOT NULL,
        at BIGINT NOT NULL
    );
    CREATE TABLE incidents (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        reader_id TEXT NOT NULL,
        seq BIGINT NOT NULL,
        kind TEXT NOT NULL,
        detail TEXT NOT NULL,
        at BIGINT NOT NULL
    );
    CREATE TABLE deny_entries (
        version BIGINT PRIMARY KEY CHECK (version >= 1),
        wallet_id BYTEA NOT NULL CHECK (length(wallet_id) = 8),
        action TEXT NOT NULL,
        reason TEXT NOT NULL,
        evidence TEXT NOT NULL,
        at BIGINT NOT NULL,
        entry BYTEA NOT NULL
    );
    CREATE INDEX deny_by_wallet ON deny_entries (wallet_id, version);",
    // The batch signature kept as the records' evidence (the hub checks it,
    // and by default only the last record's own signature).
    "ALTER TABLE batches ADD COLUMN created_at BIGINT;
    ALTER TABLE batches ADD COLUMN signature BYTEA CHECK (length(signature) = 64);",
    // Bounded voids (issue 13), as SQLite's migration 4: voids counted per
    // payment, credential totals recomputed from the payments' net charges.
    "ALTER TABLE payments ADD COLUMN voids BIGINT NOT NULL DEFAULT 0;
    UPDATE payments SET voids = v.n
        FROM (SELECT p.id, count(*) AS n
              FROM records r JOIN payments p
                  ON p.token_hash = r.token_hash AND p.reader_id = r.reader_id AND r.seq > p.seq
              WHERE r.kind = 'void'
              GROUP BY p.id) AS v
        WHERE payments.id = v.id;
    UPDATE credential_spend SET charged = s.total
        FROM (SELECT credential, sum(charged) AS total FROM payments GROUP BY credential) AS s
        WHERE credential_spend.credential = s.credential;",
    // Issue 17, as SQLite's migration 5: deny entries that name one
    // credential, replays (the charges kept before as `duplicate_token`
    // incidents carried over), suspensions for review.
    "ALTER TABLE deny_entries ADD COLUMN credential BYTEA
        CHECK (credential IS NULL OR length(credential) = 32);
    ALTER TABLE flags ADD COLUMN credential BYTEA
        CHECK (credential IS NULL OR length(credential) = 32);
    CREATE TABLE replays (
        wallet_id BYTEA NOT NULL CHECK (length(wallet_id) = 8),
        counter BIGINT NOT NULL,
        token_hash BYTEA NOT NULL CHECK (length(token_hash) = 32),
        reader_id TEXT NOT NULL,
        seq BIGINT NOT NULL,
        charged BIGINT NOT NULL,
        voids BIGINT NOT NULL DEFAULT 0,
        PRIMARY KEY (wallet_id, counter, token_hash, reader_id, seq)
    );
    INSERT INTO replays (wallet_id, counter, token_hash, reader_id, seq, charged)
        SELECT p.wallet_id, p.counter, p.token_hash, r.reader_id, r.seq, r.amount
        FROM incidents i
        JOIN records r ON r.reader_id = i.reader_id AND r.seq = i.seq
        JOIN payments p ON p.token_hash = r.token_hash
        WHERE i.kind = 'duplicate_token' AND r.kind = 'charge'
        ON CONFLICT DO NOTHING;
    CREATE TABLE suspensions (
        deny_version BIGINT PRIMARY KEY,
        credential BYTEA NOT NULL CHECK (length(credential) = 32),
        wallet_id BYTEA NOT NULL CHECK (length(wallet_id) = 8),
        rule TEXT NOT NULL,
        detail TEXT NOT NULL,
        at BIGINT NOT NULL,
        cleared_at BIGINT,
        cleared_by TEXT,
        cleared_note TEXT,
        allow_version BIGINT
    );
    CREATE INDEX suspensions_by_credential ON suspensions (credential);
    CREATE INDEX suspensions_by_wallet ON suspensions (wallet_id);",
    // Issue 18, as SQLite's migration 6: riders' accounts.
    "CREATE TABLE accounts (
        account_id TEXT PRIMARY KEY,
        label TEXT NOT NULL,
        currency BIGINT NOT NULL,
        credit_line BIGINT NOT NULL CHECK (credit_line >= 0),
        offline_limit BIGINT NOT NULL,
        per_payment_cap BIGINT NOT NULL,
        valid_hours BIGINT NOT NULL,
        scope TEXT NOT NULL,
        state TEXT NOT NULL,
        state_reason TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        changed_at BIGINT NOT NULL
    );
    CREATE TABLE account_events (
        account_id TEXT NOT NULL REFERENCES accounts (account_id),
        at BIGINT NOT NULL,
        state TEXT NOT NULL,
        reason TEXT NOT NULL,
        by_whom TEXT NOT NULL
    );
    -- No foreign key to accounts: an entry is only written for an
    -- account just read.
    CREATE TABLE account_entries (
        entry_id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        account_id TEXT NOT NULL,
        kind TEXT NOT NULL,
        amount BIGINT NOT NULL,
        at BIGINT NOT NULL,
        recorded_at BIGINT NOT NULL,
        source TEXT NOT NULL,
        seq BIGINT NOT NULL,
        credential BYTEA CHECK (credential IS NULL OR length(credential) = 32),
        token_hash BYTEA CHECK (token_hash IS NULL OR length(token_hash) = 32),
        note TEXT NOT NULL
    );
    CREATE INDEX account_entries_by_account ON account_entries (account_id, entry_id);
    CREATE UNIQUE INDEX account_entries_references ON account_entries (account_id, source)
        WHERE kind IN ('top_up', 'adjustment');
    CREATE TABLE account_wallets (
        wallet_id BYTEA PRIMARY KEY CHECK (length(wallet_id) = 8),
        wallet_key BYTEA NOT NULL CHECK (length(wallet_key) = 32),
        account_id TEXT NOT NULL REFERENCES accounts (account_id),
        enrolled_at BIGINT NOT NULL
    );
    CREATE INDEX account_wallets_by_account ON account_wallets (account_id);
    CREATE TABLE enrol_codes (
        code_hash BYTEA PRIMARY KEY CHECK (length(code_hash) = 32),
        account_id TEXT NOT NULL REFERENCES accounts (account_id),
        created_at BIGINT NOT NULL,
        expires_at BIGINT NOT NULL,
        used_at BIGINT,
        used_by BYTEA CHECK (used_by IS NULL OR length(used_by) = 8)
    );
    CREATE TABLE account_credentials (
        credential BYTEA PRIMARY KEY CHECK (length(credential) = 32),
        account_id TEXT NOT NULL REFERENCES accounts (account_id),
        wallet_id BYTEA NOT NULL CHECK (length(wallet_id) = 8),
        offline_limit BIGINT NOT NULL,
        valid_until BIGINT NOT NULL,
        settles_at BIGINT NOT NULL,
        issued_at BIGINT NOT NULL,
        credential_bytes BYTEA NOT NULL
    );
    CREATE INDEX account_credentials_live ON account_credentials (account_id, settles_at);
    CREATE INDEX account_credentials_by_wallet ON account_credentials (wallet_id, issued_at);
    CREATE TABLE wallet_nonces (
        wallet_id BYTEA NOT NULL,
        nonce BYTEA NOT NULL,
        at_ms BIGINT NOT NULL,
        PRIMARY KEY (wallet_id, nonce)
    );
    CREATE INDEX wallet_nonces_by_time ON wallet_nonces (at_ms);",
    // Charges debit accounts without a row of their own (docs/accounts.md
    // §4): a cleared charge is its `payments` row, which takes an entry id
    // from the sequence top-ups, adjustments and voids take, so a
    // statement keeps one order. The charge entries written before are
    // carried over: their ids go to their payments, and their amounts,
    // times and readers are the records'. `watched_credentials`: the live
    // credentials of accounts whose phones could spend more than the
    // account holds (§4); schema 6 never looked, so every credential
    // starts watched until its account's first look.
    "CREATE SEQUENCE entry_ids;
    ALTER TABLE payments ADD COLUMN entry_id BIGINT;
    ALTER TABLE payments ALTER COLUMN entry_id SET DEFAULT nextval('entry_ids');
    UPDATE payments p SET entry_id = e.entry_id
        FROM account_entries e
        WHERE e.kind = 'charge' AND e.source = p.reader_id AND e.seq = p.seq;
    SELECT setval('entry_ids', (SELECT COALESCE(MAX(entry_id), 0) + 1 FROM account_entries),
                  false);
    ALTER TABLE account_entries ALTER COLUMN entry_id DROP IDENTITY;
    ALTER TABLE account_entries ALTER COLUMN entry_id SET DEFAULT nextval('entry_ids');
    DELETE FROM account_entries WHERE kind = 'charge';
    CREATE TABLE watched_credentials (
        credential BYTEA PRIMARY KEY CHECK (length(credential) = 32),
        account_id TEXT NOT NULL,
        settles_at BIGINT NOT NULL,
        since BIGINT NOT NULL
    );
    CREATE INDEX watched_credentials_live ON watched_credentials (settles_at);
    INSERT INTO watched_credentials (credential, account_id, settles_at, since)
        SELECT credential, account_id, settles_at, 0 FROM account_credentials;",
    // The fleet view (docs/sync.md §2.5): each reader's last report of
    // itself, and its last upload found through an index.
    "CREATE TABLE reader_reports (
        reader_id TEXT PRIMARY KEY,
        at_ms BIGINT NOT NULL,
        signed_ms BIGINT NOT NULL,
        clock_offset_ms BIGINT NOT NULL,
        applied_offset_ms BIGINT NOT NULL,
        deny_version BIGINT NOT NULL,
        queue BIGINT NOT NULL,
        lag_secs BIGINT NOT NULL,
        software TEXT NOT NULL
    );
    CREATE INDEX batches_by_reader_time ON batches (reader_id, received_at);",
];

/// The newest schema version this build knows.
pub const SCHEMA_VERSION: usize = MIGRATIONS.len();

/// A URL without its password, for messages.
pub(super) fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            format!("{scheme}://{user}@{host}{tail}")
        }
        None => url.to_owned(),
    }
}

/// The PostgreSQL hub backend.
pub struct PostgresHub {
    config: Config,
    /// `None` only while being dropped.
    client: Option<Client>,
    target: String,
    /// Time this connection's writes spent taking locks.
    waits: LockWaits,
    /// Statements prepared on this connection, by their text: a phone's
    /// renewal is a handful of small statements, each of which would
    /// otherwise cost a round trip to be prepared again.
    statements: ledger::Prepared,
}

impl PostgresHub {
    /// Connects to `url` (`postgres://user[:password]@host[:port]/dbname`,
    /// with libpq-style parameters; a host starting with `/`, percent-encoded,
    /// is a Unix socket directory) and migrates the schema, registering no
    /// issuer key (hubs connect with [`PostgresHub::connect_as`]).
    #[cfg(test)]
    pub fn connect(url: &str) -> Result<Self, HubError> {
        Self::connect_as(url, None)
    }

    /// Connects as `connect` does, registering `issuer` (the hub directory's
    /// issuer key) in the same transaction and under the same lock as the
    /// migration: any number of hub processes may start together on an
    /// empty database (issue 15).
    pub(crate) fn connect_as(url: &str, issuer: Option<IssuerKey>) -> Result<Self, HubError> {
        let mut config = Config::from_str(url).map_err(|e| HubError::Postgres {
            message: format!("invalid PostgreSQL URL {:?}: {}", redact(url), chain(&e)),
            source: e,
        })?;
        let target = describe_config(&config);
        if config.get_password().is_none() {
            let (found, warnings) =
                pgpass::resolve(&pgpass_target(&config), &|name| std::env::var(name).ok());
            for warning in warnings {
                eprintln!("sonotap: warning: {warning}");
            }
            if let Some((password, source)) = found {
                tracing::debug!("{target}: password from {source:?}");
                config.password(password);
            }
        }
        match config.get_ssl_mode() {
            SslMode::Disable | SslMode::Prefer => {}
            other => {
                return Err(HubError::Backend(format!(
                    "{target}: sslmode {other:?} is not supported: this build connects to \
                     PostgreSQL without TLS (use sslmode=disable or prefer over a Unix socket, \
                     loopback or a private network)"
                )));
            }
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("sonotap-hub");
        }
        off_runtime(move || {
            let client = open_client(&config, &target)?;
            let mut hub = Self {
                config,
                client: Some(client),
                target,
                waits: LockWaits::default(),
                statements: ledger::Prepared::default(),
            };
            hub.migrate(issuer)?;
            Ok(hub)
        })
    }

    /// Another connection to a database whose schema and issuer key an
    /// earlier connection checked: it only connects.
    fn connected(config: Config, target: String) -> Result<Self, HubError> {
        let client = open_client(&config, &target)?;
        Ok(Self {
            config,
            client: Some(client),
            target,
            waits: LockWaits::default(),
            statements: ledger::Prepared::default(),
        })
    }

    /// The connection, reopened if the server closed it.
    fn client(&mut self) -> Result<&mut Client, HubError> {
        if self.client.as_ref().is_none_or(Client::is_closed) {
            let fresh = open_client(&self.config, &self.target)?;
            // Statements belong to the connection they were prepared on.
            self.statements.clear();
            if let Some(old) = self.client.replace(fresh) {
                drop_client(old);
            }
        }
        self.client
            .as_mut()
            .ok_or_else(|| HubError::Backend(format!("{}: no connection", self.target)))
    }

    /// What opening needs, read without any lock in one read-only
    /// snapshot: in the usual case (migrated to this version, holding
    /// `issuer`) nothing more, so that a `hub report` or another process
    /// starting never waits for ingests nor holds them up; a directory the
    /// database will never accept (another key under its key id, or a key
    /// it may not add) is refused here too. Only a migration or a key to
    /// add needs the hubs' exclusive lock.
    fn readiness(&mut self, issuer: Option<IssuerKey>) -> Result<Readiness, HubError> {
        let target = self.target.clone();
        let err = |e| pg_err(&target, e);
        let mut tx = self
            .client()?
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .map_err(&err)?;
        tx.batch_execute(&format!(
            "SET LOCAL lock_timeout = {}",
            LOCK_TIMEOUT.as_millis()
        ))
        .map_err(&err)?;
        let row = tx
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[&SCHEMA_TABLE])
            .map_err(&err)?;
        if !column::<bool>(&target, &row, 0, "schema table present")? {
            return Ok(Readiness::NeedsLock);
        }
        let row = tx
            .query_one(
                &format!("SELECT coalesce(max(version), 0) FROM {SCHEMA_TABLE}"),
                &[],
            )
            .map_err(&err)?;
        if column::<i64>(&target, &row, 0, "schema version")? != SCHEMA_VERSION as i64 {
            return Ok(Readiness::NeedsLock);
        }
        let Some(issuer) = issuer else {
            return Ok(Readiness::Ready);
        };
        let row = tx
            .query_one(
                "SELECT (SELECT public_key FROM issuer_keys WHERE key_id = $1),
                        EXISTS (SELECT 1 FROM issuer_keys)",
                &[&i64::from(issuer.key_id)],
            )
            .map_err(&err)?;
        let stored: Option<Vec<u8>> = column(&target, &row, 0, "issuer key")?;
        let any: bool = column(&target, &row, 1, "any issuer key")?;
        // Keys are never deleted, so what is refused now stays refused.
        Ok(match stored {
            Some(key) if key == issuer.public => Readiness::Ready,
            Some(_) => Readiness::Refused(another_key(&target, issuer.key_id)),
            None if any && issuer.adopt == Adopt::IfFirst => {
                Readiness::Refused(key_not_held(&target, issuer.key_id))
            }
            None => Readiness::NeedsLock,
        })
    }

    fn migrate(&mut self, issuer: Option<IssuerKey>) -> Result<(), HubError> {
        match self.readiness(issuer)? {
            Readiness::Ready => return Ok(()),
            Readiness::Refused(e) => return Err(e),
            Readiness::NeedsLock => {}
        }
        let target = self.target.clone();
        let err = |e| pg_err(&target, e);
        let mut tx = self.client()?.transaction().map_err(&err)?;
        // Hubs connecting at once must not both apply a migration, nor both
        // register their issuer key.
        take_write_lock(&mut tx).map_err(&err)?;
        // The schema is only made in a database with no tables at all (a
        // fresh `createdb`): one holding tables but no sonotap schema is
        // someone else's, or a hub database that lost its version table.
        let row = tx
            .query_one(
                "SELECT to_regclass($1) IS NOT NULL,
                        (SELECT count(*) FROM pg_catalog.pg_tables
                         WHERE schemaname = current_schema())",
                &[&SCHEMA_TABLE],
            )
            .map_err(&err)?;
        let versioned: bool = column(&target, &row, 0, "schema table present")?;
        let tables: i64 = column(&target, &row, 1, "table count")?;
        if !versioned && tables > 0 {
            return Err(HubError::Backend(format!(
                "{target} holds {tables} tables but no {SCHEMA_TABLE} table: not a sonotap hub \
                 database, or one that lost its schema version (nothing was changed; a hub \
                 makes its schema only in an empty database: point --database at one made with \
                 createdb, or restore this one from backup)"
            )));
        }
        tx.batch_execute(&format!(
            "CREATE TABLE IF NOT EXISTS {SCHEMA_TABLE} (
                 version BIGINT PRIMARY KEY,
                 applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
             )"
        ))
        .map_err(&err)?;
        let found: i64 = column(
            &target,
            &tx.query_one(
                &format!("SELECT coalesce(max(version), 0) FROM {SCHEMA_TABLE}"),
                &[],
            )
            .map_err(&err)?,
            0,
            "schema version",
        )?;
        if found > SCHEMA_VERSION as i64 || found < 0 {
            return Err(HubError::Backend(format!(
                "{target} has schema version {found}, newer than this sonotap supports \
                 ({SCHEMA_VERSION}); upgrade sonotap (nothing was changed)"
            )));
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
            tx.batch_execute(sql).map_err(&err)?;
            tx.execute(
                &format!("INSERT INTO {SCHEMA_TABLE} (version) VALUES ($1)"),
                &[&(i as i64 + 1)],
            )
            .map_err(&err)?;
        }
        if let Some(issuer) = issuer {
            register_issuer(&mut tx, &target, issuer)?;
        }
        tx.commit().map_err(&err)
    }

    /// Runs `f` on a [`Ledger`] in one transaction holding `scope`'s locks
    /// (see [`locks`]).
    fn in_transaction<T>(
        &mut self,
        scope: locks::Scope<'_>,
        f: impl FnOnce(&mut dyn Ledger) -> Result<T, HubError>,
    ) -> Result<T, HubError> {
        let target = self.target.clone();
        let err = |e| pg_err(&target, e);
        // How long the locks took, counted whatever happens next: a wait
        // that ended in the lock timeout is the longest of all.
        let mut waited = None;
        let out = (|| {
            self.client()?;
            let client = self
                .client
                .as_mut()
                .ok_or_else(|| HubError::Backend(format!("{target}: no connection")))?;
            let mut tx = client
                .build_transaction()
                .isolation_level(IsolationLevel::ReadCommitted)
                .start()
                .map_err(&err)?;
            let started = Instant::now();
            let taken = locks::take(&mut tx, scope);
            waited = Some(started.elapsed());
            taken.map_err(&err)?;
            let mut ledger = PgLedger::new(tx, &target, &mut self.statements);
            // On an error the transaction is dropped, which rolls it back.
            let out = f(&mut ledger)?;
            ledger.flush()?;
            ledger.tx.commit().map_err(&err)?;
            Ok(out)
        })();
        if let Some(took) = waited {
            self.waits.count(took);
            if took >= Duration::from_millis(100) {
                tracing::info!(
                    wait_ms = took.as_millis() as u64,
                    "{target}: waited for another writer's clearing locks"
                );
            }
        }
        out
    }
}

/// The issuer key a hub process signs with, checked (and perhaps
/// registered) when it connects.
#[derive(Debug, Clone, Copy)]
pub(crate) struct IssuerKey {
    /// Its key id.
    pub key_id: u8,
    /// Its public key.
    pub public: [u8; 32],
    /// Now, Unix seconds (`created_at` of a key registered now).
    pub now: u64,
    /// Whether this connection may add it.
    pub adopt: Adopt,
}

/// When a connecting hub adds its directory's issuer key to the database.
/// Every key there is published to every reader as trusted, so a key is
/// added only on purpose: a stray hub directory pointed at the database by
/// mistake (a test hub's, another site's) must not become trusted fleet-wide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Adopt {
    /// `hub init --database`: adds the new key under its key id.
    New,
    /// Every other command: adds the key only to a database that holds
    /// none yet (the first hub of a fresh database); else it must be there.
    IfFirst,
}

/// What opening a database needs beyond a connection.
enum Readiness {
    /// Migrated to this version and holding the issuer key: nothing.
    Ready,
    /// A migration, or the issuer key to add: the hubs' exclusive lock.
    NeedsLock,
    /// Never usable with this hub directory.
    Refused(HubError),
}

/// The database holds another key under this directory's key id.
fn another_key(target: &str, key_id: u8) -> HubError {
    HubError::Backend(format!(
        "{target} holds another key under issuer key id {key_id}: this hub directory's \
         issuer.key is not the one the database's other hubs sign with (give every hub \
         process a copy of the same hub directory; nothing was changed)"
    ))
}

/// The database holds keys, not this directory's, and may not add it.
fn key_not_held(target: &str, key_id: u8) -> HubError {
    HubError::Backend(format!(
        "{target} does not hold this hub directory's issuer key (key id {key_id}): its hubs \
         sign with another hub directory's key, and every key in the database is trusted \
         by every reader, so one is added only by `sonotap hub init --database` (give \
         every hub process a copy of the hub directory that made the database; nothing \
         was changed)"
    ))
}

/// Registers `issuer` as its [`Adopt`] allows, then checks that the stored
/// key under its key id is this one. Idempotent, and run under the lock
/// that covers the migration: hubs starting together on an empty database
/// once read "no key", and all inserted it (`issuer_keys_pkey`, issue 15).
fn register_issuer(
    tx: &mut Transaction<'_>,
    target: &str,
    issuer: IssuerKey,
) -> Result<(), HubError> {
    let err = |e| pg_err(target, e);
    let key_id = i64::from(issuer.key_id);
    let insert = match issuer.adopt {
        Adopt::New => {
            "INSERT INTO issuer_keys (key_id, public_key, created_at) VALUES ($1, $2, $3)
             ON CONFLICT (key_id) DO NOTHING"
        }
        Adopt::IfFirst => {
            "INSERT INTO issuer_keys (key_id, public_key, created_at)
             SELECT $1, $2, $3 WHERE NOT EXISTS (SELECT 1 FROM issuer_keys)"
        }
    };
    tx.execute(
        insert,
        &[&key_id, &issuer.public.as_slice(), &int(issuer.now)],
    )
    .map_err(err)?;
    let rows = tx
        .query(
            "SELECT public_key FROM issuer_keys WHERE key_id = $1",
            &[&key_id],
        )
        .map_err(err)?;
    let Some(row) = rows.first() else {
        return Err(key_not_held(target, issuer.key_id));
    };
    let stored: Vec<u8> = column(target, row, 0, "issuer key")?;
    if stored != issuer.public {
        return Err(another_key(target, issuer.key_id));
    }
    Ok(())
}

/// Waits (at most [`LOCK_TIMEOUT`]) for the hub writers' advisory lock,
/// held until `tx` ends.
fn take_write_lock(tx: &mut Transaction<'_>) -> Result<(), postgres::Error> {
    tx.batch_execute(&format!(
        "SET LOCAL lock_timeout = {}",
        LOCK_TIMEOUT.as_millis()
    ))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&WRITE_LOCK])
        .map(drop)
}

impl Drop for PostgresHub {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            drop_client(client);
        }
    }
}

/// Drops a client where its runtime may be shut down: closing it blocks on
/// its runtime, which panics on an async worker thread.
fn drop_client(client: Client) {
    if tokio::runtime::Handle::try_current().is_err() {
        drop(client);
    } else {
        let closer = std::thread::Builder::new()
            .name("sonotap-pg-close".into())
            .spawn(move || drop(client));
        // If no thread can be made the client leaks; the server closes it.
        if let Ok(closer) = closer {
            let _ = closer.join();
        }
    }
}

/// Runs `f` here, or on a short-lived thread of its own when called inside
/// a tokio runtime: the client's `block_on` panics on an async worker thread.
pub(super) fn off_runtime<T: Send>(
    f: impl FnOnce() -> Result<T, HubError> + Send,
) -> Result<T, HubError> {
    if tokio::runtime::Handle::try_current().is_err() {
        return f();
    }
    std::thread::scope(|s| {
        std::thread::Builder::new()
            .name("sonotap-pg".into())
            .spawn_scoped(s, f)
            .map_err(|e| HubError::Backend(format!("cannot start a thread: {e}")))?
            .join()
            .unwrap_or_else(|_| Err(HubError::Backend("connecting panicked".into())))
    })
}

fn open_client(config: &Config, target: &str) -> Result<Client, HubError> {
    let mut client = config
        .connect(NoTls)
        .map_err(|e| connect_err(config, target, e))?;
    client
        .batch_execute("SET TIME ZONE 'UTC'")
        .map_err(|e| pg_err(target, e))?;
    Ok(client)
}

/// What a password file line is matched against: the first host and port
/// (the `postgres` crate sends one password to every host), the database
/// (the user's name by default) and the user.
fn pgpass_target(config: &Config) -> pgpass::Target<'_> {
    let host = match config.get_hosts().first() {
        Some(Host::Tcp(name)) => name.as_str(),
        #[cfg(unix)]
        Some(Host::Unix(dir)) => dir.to_str().unwrap_or(""),
        None => "localhost",
    };
    let user = config.get_user().unwrap_or("");
    pgpass::Target {
        host,
        port: config.get_ports().first().copied().unwrap_or(5432),
        database: config.get_dbname().unwrap_or(user),
        user,
    }
}

/// `host:port` of each host (`[/socket/dir]:port` for a Unix socket).
fn hosts(config: &Config) -> String {
    let ports = config.get_ports();
    config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, host)| {
            let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
            match host {
                Host::Tcp(name) => format!("{name}:{port}"),
                #[cfg(unix)]
                Host::Unix(dir) => format!("[{}]:{port}", dir.display()),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// `postgres://user@host:port/dbname`, without the password.
fn describe_config(config: &Config) -> String {
    format!(
        "postgres://{}@{}/{}",
        config.get_user().unwrap_or(""),
        hosts(config),
        config.get_dbname().or(config.get_user()).unwrap_or("")
    )
}

/// An error and its causes, one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = cause.source();
    }
    out
}

fn io_kind(e: &postgres::Error) -> Option<std::io::ErrorKind> {
    let mut source = e.source();
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            return Some(io.kind());
        }
        source = cause.source();
    }
    None
}

/// Why connecting failed, in the terms an operator acts on.
fn connect_err(config: &Config, target: &str, e: postgres::Error) -> HubError {
    let user = config.get_user().unwrap_or("");
    let message = if let Some(db) = e.as_db_error() {
        let code = db.code();
        if *code == SqlState::INVALID_PASSWORD
            || *code == SqlState::INVALID_AUTHORIZATION_SPECIFICATION
        {
            format!(
                "authentication failed for user {user:?} at {target}: {}",
                db.message()
            )
        } else if *code == SqlState::INVALID_CATALOG_NAME {
            format!("{target}: {} (create it first)", db.message())
        } else {
            format!(
                "cannot connect to {target}: {} ({})",
                db.message(),
                code.code()
            )
        }
    } else if config.get_password().is_none() && chain(&e).contains("password missing") {
        format!(
            "{target} asks for a password and none was found: put it in the password file \
             (PGPASSFILE, default ~/.pgpass, mode 0600) or in PGPASSWORD"
        )
    } else {
        match io_kind(&e) {
            Some(std::io::ErrorKind::ConnectionRefused) => format!(
                "connection refused by {} (is PostgreSQL running and listening there?)",
                hosts(config)
            ),
            Some(std::io::ErrorKind::NotFound) => format!(
                "cannot connect to {target}: no PostgreSQL socket there ({})",
                chain(&e)
            ),
            _ => format!("cannot connect to {target}: {}", chain(&e)),
        }
    };
    HubError::Postgres { message, source: e }
}

/// Sorts an error on an open connection.
fn pg_err(target: &str, e: postgres::Error) -> HubError {
    let message = if let Some(db) = e.as_db_error() {
        if *db.code() == SqlState::LOCK_NOT_AVAILABLE {
            format!(
                "{target} is locked by another hub writer (waited {} ms)",
                LOCK_TIMEOUT.as_millis()
            )
        } else {
            format!(
                "{target}: {} ({}){}",
                db.message(),
                db.code().code(),
                db.detail().map(|d| format!(": {d}")).unwrap_or_default()
            )
        }
    } else if e.is_closed() {
        format!("{target}: connection closed ({})", chain(&e))
    } else {
        format!("{target}: {}", chain(&e))
    };
    HubError::Postgres { message, source: e }
}

/// Column `i` of `row`: a NULL or a value of another type is an
/// inconsistency of the database naming `what`, never a panic (as
/// `Row::get` would, inside the server's lock).
fn column<'a, T: postgres::types::FromSql<'a>>(
    target: &str,
    row: &'a Row,
    i: usize,
    what: &str,
) -> Result<T, HubError> {
    row.try_get(i)
        .map_err(|e| inconsistent(target, format!("{what}: {e}")))
}

fn inconsistent(target: &str, detail: String) -> HubError {
    HubError::Store(StoreError::inconsistent(Path::new(target), detail))
}

impl HubBackend for PostgresHub {
    fn add_issuer_key(&mut self, key_id: u8, key: &[u8; 32], now: u64) -> Result<(), HubError> {
        let target = self.target.clone();
        self.client()?
            .execute(
                "INSERT INTO issuer_keys (key_id, public_key, created_at) VALUES ($1, $2, $3)",
                &[&i64::from(key_id), &key.as_slice(), &int(now)],
            )
            .map(drop)
            .map_err(|e| pg_err(&target, e))
    }

    fn log_credential(&mut self, credential: &Credential, now: u64) -> Result<(), HubError> {
        let target = self.target.clone();
        let terms = &credential.terms;
        self.client()?
            .execute(
                "INSERT INTO credentials (digest, wallet_id, issuer_key_id, scope, currency,
                     offline_limit, per_payment_cap, valid_from, valid_until, credential, issued_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
                 ON CONFLICT (digest) DO NOTHING",
                &[
                    &credential.digest().as_slice(),
                    &terms.wallet_id().0.as_slice(),
                    &i64::from(terms.issuer_key_id),
                    &terms.scope.to_string(),
                    &i64::from(terms.currency),
                    &i64::from(terms.offline_limit),
                    &i64::from(terms.per_payment_cap),
                    &i64::from(terms.valid_from),
                    &int(terms.valid_until()),
                    &credential.encode().as_slice(),
                    &int(now),
                ],
            )
            .map(drop)
            .map_err(|e| pg_err(&target, e))
    }

    fn add_reader(&mut self, id: &str, key: &[u8; 32], now: u64) -> Result<bool, HubError> {
        let target = self.target.clone();
        // One statement, so two hubs adding the same reader cannot both insert.
        let inserted = self
            .client()?
            .execute(
                "INSERT INTO readers (reader_id, public_key, added_at) VALUES ($1, $2, $3)
                 ON CONFLICT (reader_id) DO NOTHING",
                &[&id, &key.as_slice(), &int(now)],
            )
            .map_err(|e| pg_err(&target, e))?;
        if inserted == 1 {
            return Ok(true);
        }
        match self.reader_key(id)? {
            Some(existing) if existing == *key => Ok(false),
            _ => Err(HubError::ReaderKeyMismatch { reader: id.into() }),
        }
    }

    fn record_report(
        &mut self,
        reader: &str,
        report: &StatusReport,
        arrival: &Arrival,
    ) -> Result<(), HubError> {
        let target = self.target.clone();
        self.client()?
            .execute(
                "INSERT INTO reader_reports (reader_id, at_ms, signed_ms, clock_offset_ms,
                     applied_offset_ms, deny_version, queue, lag_secs, software)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
                 ON CONFLICT (reader_id) DO UPDATE SET
                     at_ms = excluded.at_ms, signed_ms = excluded.signed_ms,
                     clock_offset_ms = excluded.clock_offset_ms,
                     applied_offset_ms = excluded.applied_offset_ms,
                     deny_version = excluded.deny_version, queue = excluded.queue,
                     lag_secs = excluded.lag_secs, software = excluded.software
                 WHERE excluded.signed_ms > reader_reports.signed_ms
                    OR reader_reports.signed_ms > excluded.at_ms + $10",
                &[
                    &reader,
                    &int(arrival.at_ms),
                    &int(arrival.signed_ms),
                    &arrival.clock_offset_ms,
                    &report.applied_ms,
                    &int(report.deny),
                    &int(report.queue),
                    &int(report.lag),
                    &report.software,
                    &int(STALE_REPORT_MS),
                ],
            )
            .map_err(|e| pg_err(&target, e))?;
        Ok(())
    }

    fn transaction(
        &mut self,
        f: &mut dyn FnMut(&mut dyn Ledger) -> Result<(), HubError>,
    ) -> Result<(), HubError> {
        self.in_transaction(locks::Scope::Everything, f)
    }

    fn phone_transaction(
        &mut self,
        f: &mut dyn FnMut(&mut dyn Ledger) -> Result<(), HubError>,
    ) -> Result<(), HubError> {
        self.in_transaction(locks::Scope::Keys(&[]), f)
    }

    /// Locks the batch's reader and wallets only (see [`locks`]), so that
    /// hub processes ingesting other readers' batches for other wallets
    /// proceed at once.
    fn ingest(
        &mut self,
        checked: &CheckedBatch,
        signer: &dyn DenySigner,
        via: Via,
        now: u64,
    ) -> Result<IngestReport, HubError> {
        let keys = locks::for_batch(checked);
        self.in_transaction(locks::Scope::Keys(&keys), |ledger| {
            clearing_ledger::ingest(ledger, checked, signer, via, now)
        })
    }

    fn set_deny(
        &mut self,
        signer: &dyn DenySigner,
        action: DenyAction,
        wallet: WalletId,
        reason: DenyReason,
        note: &str,
        now: u64,
    ) -> Result<DenyEntry, HubError> {
        let keys = [locks::wallet(wallet)];
        self.in_transaction(locks::Scope::Keys(&keys), |ledger| {
            clearing_ledger::set_deny(ledger, signer, action, wallet, reason, note, now)
        })
    }

    fn lock_waits(&self) -> Option<LockWaits> {
        Some(self.waits)
    }

    fn another_writer(&self) -> Option<Result<Box<dyn HubBackend>, HubError>> {
        // The schema was checked and the issuer key registered when this
        // writer connected: another one only connects.
        let (config, target) = (self.config.clone(), self.target.clone());
        Some(off_runtime(move || {
            Ok(Box::new(PostgresHub::connected(config, target)?) as Box<dyn HubBackend>)
        }))
    }

    fn reader_opener(&self) -> ReaderOpener {
        let config = self.config.clone();
        let target = self.target.clone();
        Arc::new(move || {
            // The schema was checked when the writer connected: a reader
            // connection only connects.
            let (config, target) = (config.clone(), target.clone());
            off_runtime(move || {
                Ok(Box::new(PostgresHub::connected(config, target)?) as Box<dyn ReadBackend>)
            })
        })
    }
}

impl ReadBackend for PostgresHub {
    fn describe(&self) -> String {
        self.target.clone()
    }

    fn snapshot(
        &mut self,
        f: &mut dyn FnMut(&mut dyn Snapshot) -> Result<(), HubError>,
    ) -> Result<(), HubError> {
        let target = self.target.clone();
        let tx = self
            .client()?
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .map_err(|e| pg_err(&target, e))?;
        let mut snapshot = PgSnapshot {
            tx,
            target: &target,
        };
        f(&mut snapshot)?;
        snapshot.tx.commit().map_err(|e| pg_err(&target, e))
    }
}

/// One REPEATABLE READ, READ ONLY transaction: one snapshot, no lock.
struct PgSnapshot<'a> {
    tx: Transaction<'a>,
    target: &'a str,
}

impl PgSnapshot<'_> {
    /// Every row of `sql` with `params`, read by `row`.
    fn rows<T>(
        &mut self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
        row: impl Fn(&str, &Row) -> Result<T, HubError>,
    ) -> Result<Vec<T>, HubError> {
        let target = self.target;
        self.tx
            .query(sql, params)
            .map_err(|e| pg_err(target, e))?
            .iter()
            .map(|r| row(target, r))
            .collect()
    }

    /// The one value of a one-row, one-column query.
    fn value<T: for<'r> postgres::types::FromSql<'r>>(
        &mut self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
        what: &str,
    ) -> Result<T, HubError> {
        let row = self
            .tx
            .query_one(sql, params)
            .map_err(|e| pg_err(self.target, e))?;
        column(self.target, &row, 0, what)
    }
}

impl Snapshot for PgSnapshot<'_> {
    fn path(&self) -> &Path {
        Path::new(self.target)
    }

    fn reader_key(&mut self, id: &str) -> Result<Option<Vec<u8>>, HubError> {
        self.rows(
            "SELECT public_key FROM readers WHERE reader_id = $1",
            &[&id],
            |t, r| column(t, r, 0, "reader key"),
        )
        .map(|keys| keys.into_iter().next())
    }

    fn issuer_keys(&mut self) -> Result<Vec<(i64, Vec<u8>)>, HubError> {
        self.rows(
            "SELECT key_id, public_key FROM issuer_keys WHERE retired_at IS NULL
             ORDER BY key_id",
            &[],
            |t, r| {
                Ok((
                    column(t, r, 0, "issuer key id")?,
                    column(t, r, 1, "issuer key")?,
                ))
            },
        )
    }

    fn deny_version(&mut self) -> Result<i64, HubError> {
        self.value(
            "SELECT coalesce(max(version), 0)::BIGINT FROM deny_entries",
            &[],
            "deny version",
        )
    }

    fn deny_page(&mut self, since: u64, limit: u32) -> Result<Vec<Vec<u8>>, HubError> {
        self.rows(
            "SELECT entry FROM deny_entries WHERE version > $1 ORDER BY version LIMIT $2",
            &[&int(since), &i64::from(limit)],
            |t, r| column(t, r, 0, "deny entry"),
        )
    }

    fn reader_totals(&mut self) -> Result<Vec<ReaderTuple>, HubError> {
        self.rows(
            "SELECT r.reader_id,
                    count(x.seq),
                    coalesce(sum(x.amount) FILTER (WHERE x.kind = 'charge'), 0)::BIGINT,
                    coalesce(sum(x.amount) FILTER (WHERE x.kind = 'void'), 0)::BIGINT,
                    min(x.seq), max(x.seq), max(x.received_at)
             FROM readers r LEFT JOIN records x ON x.reader_id = r.reader_id
             GROUP BY r.reader_id ORDER BY r.reader_id",
            &[],
            |t, r| {
                Ok((
                    column(t, r, 0, "reader id")?,
                    column(t, r, 1, "record count")?,
                    column(t, r, 2, "charged")?,
                    column(t, r, 3, "voided")?,
                    column(t, r, 4, "first seq")?,
                    column(t, r, 5, "last seq")?,
                    column(t, r, 6, "last received")?,
                ))
            },
        )
    }

    fn gaps(&mut self, reader: &str) -> Result<Vec<(i64, i64)>, HubError> {
        self.rows(
            "SELECT prev + 1, seq - 1 FROM (
                 SELECT seq, lag(seq, 1, 0::BIGINT) OVER (ORDER BY seq) AS prev
                 FROM records WHERE reader_id = $1) AS s
             WHERE seq > prev + 1
             ORDER BY seq",
            &[&reader],
            |t, r| Ok((column(t, r, 0, "gap")?, column(t, r, 1, "gap")?)),
        )
    }

    fn flags(&mut self) -> Result<Vec<FlagTuple>, HubError> {
        self.rows(
            "SELECT f.wallet_id, f.rule, f.detail, f.at,
                    (SELECT action FROM deny_entries d
                     WHERE d.wallet_id = f.wallet_id AND d.credential IS NULL
                     ORDER BY version DESC LIMIT 1)
             FROM flags f ORDER BY f.id",
            &[],
            |t, r| {
                Ok((
                    column(t, r, 0, "flag wallet")?,
                    column(t, r, 1, "flag rule")?,
                    column(t, r, 2, "flag detail")?,
                    column(t, r, 3, "flag time")?,
                    column(t, r, 4, "deny action")?,
                ))
            },
        )
    }

    fn reader_states(&mut self) -> Result<Vec<ReaderStateTuple>, HubError> {
        self.rows(super::READER_STATES_SQL, &[], |t, r| {
            let at: Option<i64> = column(t, r, 3, "report time")?;
            let report = match at {
                None => None,
                Some(at) => Some((
                    at,
                    column(t, r, 4, "clock offset")?,
                    column(t, r, 5, "applied offset")?,
                    column(t, r, 6, "reported deny version")?,
                    column(t, r, 7, "reported queue")?,
                    column(t, r, 8, "reported lag")?,
                    column(t, r, 9, "software")?,
                )),
            };
            Ok((
                column(t, r, 0, "reader id")?,
                column(t, r, 1, "registration time")?,
                column(t, r, 2, "last upload")?,
                report,
            ))
        })
    }

    fn finding_counts(&mut self) -> Result<Vec<(String, String, i64)>, HubError> {
        self.rows(super::FINDING_COUNTS_SQL, &[], |t, r| {
            Ok((
                column(t, r, 0, "finding type")?,
                column(t, r, 1, "finding name")?,
                column(t, r, 2, "finding count")?,
            ))
        })
    }

    fn incidents(&mut self) -> Result<Vec<IncidentTuple>, HubError> {
        self.rows(
            "SELECT reader_id, seq, kind, detail, at FROM incidents ORDER BY id",
            &[],
            |t, r| {
                Ok((
                    column(t, r, 0, "incident reader")?,
                    column(t, r, 1, "incident seq")?,
                    column(t, r, 2, "incident kind")?,
                    column(t, r, 3, "incident detail")?,
                    column(t, r, 4, "incident time")?,
                ))
            },
        )
    }

    fn replay_charges(&mut self) -> Result<Vec<RawReplayCharge>, HubError> {
        self.rows(super::REPLAY_CHARGES_SQL, &[], |t, r| {
            Ok(RawReplayCharge {
                wallet: column(t, r, 0, "replay wallet")?,
                counter: column(t, r, 1, "replay counter")?,
                token_hash: column(t, r, 2, "replay token hash")?,
                credential: column(t, r, 3, "replay credential")?,
                replay: column(t, r, 4, "replay flag")?,
                reader: column(t, r, 5, "replay reader")?,
                seq: column(t, r, 6, "replay seq")?,
                at: column(t, r, 7, "replay time")?,
                amount: column(t, r, 8, "replay amount")?,
                net: column(t, r, 9, "replay net charge")?,
                wallet_action: column(t, r, 10, "deny action")?,
            })
        })
    }

    fn suspensions(&mut self) -> Result<Vec<RawSuspension>, HubError> {
        self.rows(super::SUSPENSIONS_SQL, &[], |t, r| {
            Ok(RawSuspension {
                deny_version: column(t, r, 0, "suspension version")?,
                credential: column(t, r, 1, "suspension credential")?,
                wallet: column(t, r, 2, "suspension wallet")?,
                rule: column(t, r, 3, "suspension rule")?,
                detail: column(t, r, 4, "suspension detail")?,
                at: column(t, r, 5, "suspension time")?,
                cleared_at: column(t, r, 6, "clearing time")?,
                cleared_by: column(t, r, 7, "cleared by")?,
                cleared_note: column(t, r, 8, "clearing note")?,
                allow_version: column(t, r, 9, "allow version")?,
            })
        })
    }

    fn highest_counter(&mut self, wallet: &[u8]) -> Result<Option<i64>, HubError> {
        self.value(
            "SELECT max(counter) FROM payments WHERE wallet_id = $1",
            &[&wallet],
            "highest counter",
        )
    }

    fn conflicts(&mut self, wallet: &[u8]) -> Result<Vec<RawConflict>, HubError> {
        self.rows(super::CONFLICTS_SQL, &[&wallet], |t, r| {
            Ok(RawConflict {
                counter: column(t, r, 0, "conflict counter")?,
                token_hash: column(t, r, 1, "conflict token hash")?,
                credential: column(t, r, 2, "conflict credential")?,
                reader: column(t, r, 3, "conflict reader")?,
                seq: column(t, r, 4, "conflict seq")?,
                at: column(t, r, 5, "conflict time")?,
                amount: column(t, r, 6, "conflict amount")?,
                authorised: column(t, r, 7, "conflict authorised")?,
                total_before: column(t, r, 8, "conflict running total")?,
                net: column(t, r, 9, "conflict net charge")?,
            })
        })
    }

    fn credential_spend(&mut self, credential: &[u8]) -> Result<(Option<i64>, i64), HubError> {
        let rows = self.rows(
            "SELECT (SELECT offline_limit FROM credentials WHERE digest = $1),
                    coalesce((SELECT charged FROM credential_spend WHERE credential = $1), 0)",
            &[&credential],
            |t, r| {
                Ok((
                    column(t, r, 0, "offline limit")?,
                    column(t, r, 1, "credential spend")?,
                ))
            },
        )?;
        Ok(rows.into_iter().next().unwrap_or((None, 0)))
    }
}

mod ledger;
mod locks;

#[cfg(test)]
pub(crate) mod test_server;

#[cfg(test)]
mod tests;
