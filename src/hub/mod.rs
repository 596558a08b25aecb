//! The operator's hub: issuer keys and credential issuance.
//!
//! Layout of `DIR/`: `issuer.key` (0600, the active issuer key and its key
//! id), `issuer.pub` (what readers trust), `hub.db` (SQLite: issuer keys and
//! a log of every credential issued, which clearing later checks spending
//! against).

use std::io;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, params};
use rusqlite_migration::M;
use thiserror::Error;

use crate::fsutil;
use crate::keys::{KeyFileError, PublicKey, Role, SecretKey};
use crate::store::StoreError;
use crate::store::sqlite;
use crate::token::{Credential, CredentialTerms, FormatError, Scope};

/// Active issuer secret key.
pub const ISSUER_KEY_FILE: &str = "issuer.key";
/// Active issuer public key, for readers.
pub const ISSUER_PUB_FILE: &str = "issuer.pub";
/// Hub database.
pub const DB_FILE: &str = "hub.db";

static MIGRATIONS: [M<'static>; 1] = [M::up(
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
)];

/// Why the hub cannot do what was asked.
#[derive(Debug, Error)]
pub enum HubError {
    /// A key file problem.
    #[error(transparent)]
    Key(#[from] KeyFileError),
    /// A database problem.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// `init` on a directory that already holds a hub.
    #[error("{path} already holds a hub; refusing to replace its issuer key")]
    AlreadyInitialised {
        /// The directory.
        path: PathBuf,
    },
    /// A file could not be written.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
    /// The requested credential terms are not encodable.
    #[error("cannot issue this credential: {0}")]
    Terms(String),
}

/// What an operator grants a wallet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IssueRequest {
    /// Where it may be spent.
    pub scope: Scope,
    /// ISO 4217 numeric currency.
    pub currency: u16,
    /// Most spent offline, minor units.
    pub offline_limit: u32,
    /// Most per payment, minor units.
    pub per_payment_cap: u32,
    /// Start of validity, Unix seconds.
    pub valid_from: u32,
    /// Hours of validity.
    pub valid_hours: u16,
}

/// An open hub directory.
pub struct Hub {
    issuer: SecretKey,
    db: Connection,
    db_path: PathBuf,
}

impl Hub {
    /// Creates the issuer key (with `key_id`) and the hub database.
    pub fn init(dir: &Path, key_id: u8, now: u64) -> Result<Self, HubError> {
        let key_path = dir.join(ISSUER_KEY_FILE);
        if key_path.exists() {
            return Err(HubError::AlreadyInitialised { path: dir.into() });
        }
        let io_err = |source| HubError::Io {
            path: dir.into(),
            source,
        };
        fsutil::create_private_dir(dir).map_err(io_err)?;
        let issuer = SecretKey::generate(Role::Issuer, Some(key_id)).map_err(io_err)?;
        let db_path = dir.join(DB_FILE);
        let db = sqlite::open(&db_path, &MIGRATIONS, true, "run `sonotap hub init` first")?;
        db.execute(
            "INSERT INTO issuer_keys (key_id, public_key, created_at) VALUES (?1, ?2, ?3)",
            params![
                key_id,
                issuer.public().to_bytes().as_slice(),
                sqlite::int(now)
            ],
        )
        .map_err(|e| StoreError::from_sqlite(&db_path, e))?;
        // The secret last: its presence marks a complete hub.
        issuer.public().write(&dir.join(ISSUER_PUB_FILE))?;
        issuer.write_new(&key_path)?;
        Ok(Self {
            issuer,
            db,
            db_path,
        })
    }

    /// Opens an existing hub directory.
    pub fn open(dir: &Path) -> Result<Self, HubError> {
        let issuer = SecretKey::read(&dir.join(ISSUER_KEY_FILE), Role::Issuer)?;
        let db_path = dir.join(DB_FILE);
        let db = sqlite::open(&db_path, &MIGRATIONS, false, "run `sonotap hub init` first")?;
        Ok(Self {
            issuer,
            db,
            db_path,
        })
    }

    /// The active issuer public key.
    pub fn issuer_public(&self) -> PublicKey {
        self.issuer.public()
    }

    /// Signs a credential for `wallet` and logs it.
    pub fn issue(
        &self,
        wallet: &PublicKey,
        request: IssueRequest,
        now: u64,
    ) -> Result<Credential, HubError> {
        if request.per_payment_cap > request.offline_limit {
            return Err(HubError::Terms(format!(
                "per-payment cap {} is above the offline limit {}",
                request.per_payment_cap, request.offline_limit
            )));
        }
        let terms = CredentialTerms {
            issuer_key_id: self.issuer.key_id().unwrap_or(1),
            scope: request.scope,
            currency: request.currency,
            wallet_key: wallet.to_bytes(),
            offline_limit: request.offline_limit,
            per_payment_cap: request.per_payment_cap,
            valid_from: request.valid_from,
            valid_hours: request.valid_hours,
        };
        let credential = terms
            .sign(self.issuer.signing_key())
            .map_err(|e: FormatError| HubError::Terms(e.to_string()))?;
        self.db
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
            .map_err(|e| StoreError::from_sqlite(&self.db_path, e))?;
        Ok(credential)
    }
}
