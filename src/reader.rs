//! A reader's data directory: configuration, signing key, database, and the
//! tap path that ties token, policy and store together.
//!
//! Layout of `R/`: `reader.toml` (configuration, written last by `init`, so
//! its presence means the directory is complete), `reader.key` (0600),
//! `reader.pub`, `reader.db` (SQLite).

use std::fs;
use std::io;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::fsutil;
use crate::keys::{KeyFileError, PublicKey, Role, SecretKey};
use crate::policy::{self, Decline, ReaderPolicy, TrustedKeys};
use crate::store::{
    ActuationOutcome, Committed, DeclineEntry, ReaderDb, RecordSigner, StoreError, VoidError,
    Voided,
};
use crate::sync::wire::{Batch, BatchRecord, MAX_BATCH_RECORDS, SignedRequest, WireError};
use crate::token::{self, Scope, WalletId};

/// The largest clock correction taken from the hub, seconds.
pub const MAX_CLOCK_CORRECTION_SECS: u64 = 3600;

/// Configuration file name inside the data directory.
pub const CONFIG_FILE: &str = "reader.toml";
/// Secret key file name.
pub const KEY_FILE: &str = "reader.key";
/// Public key file name.
pub const PUB_FILE: &str = "reader.pub";
/// Database file name.
pub const DB_FILE: &str = "reader.db";
/// Default tolerance between a token's timestamp and the reader's clock.
pub const DEFAULT_CLOCK_SKEW_SECS: u32 = 300;

/// `reader.toml`: what this reader is and what it accepts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReaderConfig {
    /// Reader id: 1 to 64 characters from `A-Z a-z 0-9 . _ -`.
    pub id: String,
    /// `transit`, `vending` or `group:N`.
    pub scope: String,
    /// ISO 4217 numeric currency code.
    pub currency: u16,
    /// Allowed distance between token time and reader time, seconds.
    #[serde(default = "default_skew")]
    pub clock_skew_secs: u32,
    /// Fixed fare or price charged when the caller names no amount.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fare: Option<u32>,
}

fn default_skew() -> u32 {
    DEFAULT_CLOCK_SKEW_SECS
}

impl ReaderConfig {
    fn policy(&self) -> Result<ReaderPolicy, String> {
        check_reader_id(&self.id)?;
        if !(1..=999).contains(&self.currency) {
            return Err(format!("currency {} is outside 1..=999", self.currency));
        }
        if self.fare == Some(0) {
            return Err("fare must be at least 1".into());
        }
        Ok(ReaderPolicy {
            reader_tag: token::reader_tag(&self.id),
            scope: self.scope.parse::<Scope>()?,
            currency: self.currency,
            clock_skew_secs: self.clock_skew_secs,
        })
    }
}

/// Reader ids appear in records and on the wire: short and plain.
pub fn check_reader_id(id: &str) -> Result<(), String> {
    let plain = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if (1..=64).contains(&id.len()) && id.chars().all(plain) {
        Ok(())
    } else {
        Err(format!(
            "reader id {id:?} must be 1 to 64 characters from A-Z a-z 0-9 . _ -"
        ))
    }
}

/// Why a reader directory could not be created or used.
#[derive(Debug, Error)]
pub enum ReaderError {
    /// A key file problem.
    #[error(transparent)]
    Key(#[from] KeyFileError),
    /// A database problem.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// `reader.toml` is missing, unreadable or invalid.
    #[error("reader configuration {path}: {detail}")]
    Config {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// `init` on a directory that already holds a reader.
    #[error("{path} already holds a reader; refusing to replace its key and records")]
    AlreadyInitialised {
        /// The directory.
        path: PathBuf,
    },
    /// The configuration and the database disagree.
    #[error("reader.toml says id {config:?} but the database belongs to {database:?}")]
    IdMismatch {
        /// Id in the configuration.
        config: String,
        /// Id in the database.
        database: String,
    },
    /// Files could not be written.
    #[error("cannot write {path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
}

/// Settings chosen at `reader init`.
#[derive(Debug, Clone)]
pub struct InitOptions {
    /// The reader id.
    pub id: String,
    /// The scope served.
    pub scope: Scope,
    /// ISO 4217 numeric currency.
    pub currency: u16,
    /// Clock-skew window, seconds.
    pub clock_skew_secs: u32,
    /// Fixed fare, if any.
    pub fare: Option<u32>,
}

/// The result of presenting some bytes to the reader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The paying wallet, when the token parsed.
    pub wallet: Option<WalletId>,
    /// The payment counter, when the token parsed.
    pub counter: Option<u32>,
    /// The amount charged on accept; the amount asked for on decline.
    pub amount: Option<u32>,
    /// The committed record, or why not.
    pub decision: Result<Committed, Decline>,
}

/// An open reader: configuration, key, trusted keys and database.
pub struct Reader {
    dir: PathBuf,
    config: ReaderConfig,
    policy: ReaderPolicy,
    key: SecretKey,
    keys: TrustedKeys,
    db: ReaderDb,
}

impl Reader {
    /// Creates a reader directory: key pair, database trusting `issuer`, configuration.
    pub fn init(
        dir: &Path,
        options: &InitOptions,
        issuer: &PublicKey,
        now: u64,
    ) -> Result<Self, ReaderError> {
        let config_path = dir.join(CONFIG_FILE);
        if config_path.exists() {
            return Err(ReaderError::AlreadyInitialised { path: dir.into() });
        }
        let config = ReaderConfig {
            id: options.id.clone(),
            scope: options.scope.to_string(),
            currency: options.currency,
            clock_skew_secs: options.clock_skew_secs,
            fare: options.fare,
        };
        config.policy().map_err(|detail| ReaderError::Config {
            path: config_path.clone(),
            detail,
        })?;
        let io_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| ReaderError::Io { path, source }
        };
        fsutil::create_private_dir(dir).map_err(io_err(dir))?;
        let key = SecretKey::generate(Role::Reader, None).map_err(io_err(dir))?;
        key.write_new(&dir.join(KEY_FILE))?;
        key.public().write(&dir.join(PUB_FILE))?;
        let db = ReaderDb::create(&dir.join(DB_FILE))?;
        db.set_meta("reader_id", &config.id)?;
        trust_issuer(&db, issuer, now)?;
        let text = toml::to_string(&config).map_err(|e| ReaderError::Config {
            path: config_path.clone(),
            detail: e.to_string(),
        })?;
        fsutil::replace_atomic(&config_path, text.as_bytes(), 0o644)
            .map_err(io_err(&config_path))?;
        Self::open(dir)
    }

    /// Opens an initialised reader directory.
    pub fn open(dir: &Path) -> Result<Self, ReaderError> {
        let config_path = dir.join(CONFIG_FILE);
        let config_error = |detail: String| ReaderError::Config {
            path: config_path.clone(),
            detail,
        };
        let text = fs::read_to_string(&config_path).map_err(|e| {
            config_error(match e.kind() {
                io::ErrorKind::NotFound => {
                    "not found; is this a reader directory? (`sonotap reader init` makes one)"
                        .into()
                }
                _ => e.to_string(),
            })
        })?;
        let config: ReaderConfig =
            toml::from_str(&text).map_err(|e| config_error(e.message().to_string()))?;
        let policy = config.policy().map_err(config_error)?;
        let key = SecretKey::read(&dir.join(KEY_FILE), Role::Reader)?;
        let db = ReaderDb::open(&dir.join(DB_FILE))?;
        let stored_id = db.meta("reader_id")?.unwrap_or_default();
        if stored_id != config.id {
            return Err(ReaderError::IdMismatch {
                config: config.id,
                database: stored_id,
            });
        }
        let keys = db.trusted_keys()?;
        Ok(Self {
            dir: dir.into(),
            config,
            policy,
            key,
            keys,
            db,
        })
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The configuration.
    pub fn config(&self) -> &ReaderConfig {
        &self.config
    }

    /// The reader's public key.
    pub fn public_key(&self) -> PublicKey {
        self.key.public()
    }

    /// The database.
    pub fn db(&self) -> &ReaderDb {
        &self.db
    }

    /// Trusts another issuer key (key rotation).
    pub fn trust(&mut self, issuer: &PublicKey, now: u64) -> Result<(), ReaderError> {
        trust_issuer(&self.db, issuer, now)?;
        self.keys = self.db.trusted_keys()?;
        Ok(())
    }

    /// The reader id.
    pub fn id(&self) -> &str {
        &self.config.id
    }

    /// The database, for the uplink's writes (marking synced, pruning, deny list).
    pub fn db_mut(&mut self) -> &mut ReaderDb {
        &mut self.db
    }

    /// Re-reads the trusted issuer keys after the uplink replaced them.
    pub fn reload_keys(&mut self) -> Result<(), ReaderError> {
        self.keys = self.db.trusted_keys()?;
        Ok(())
    }

    /// Reader time for a decision: the system clock corrected by the hub's
    /// offset from the last sync, when that offset is within
    /// [`MAX_CLOCK_CORRECTION_SECS`]. A larger one is not applied (a reader
    /// clock that far off needs NTP fixed); the uplink stores offsets only
    /// from signed hub time and within that bound
    /// (`sync::plan::next_clock_offset`); `reader status` and the sync
    /// report show it.
    pub fn adjusted_now(&self, system_now: u64) -> Result<u64, ReaderError> {
        let offset_secs = self.db.sync_state()?.clock_offset_ms / 1000;
        if offset_secs.unsigned_abs() > MAX_CLOCK_CORRECTION_SECS {
            return Ok(system_now);
        }
        Ok(system_now.saturating_add_signed(offset_secs))
    }

    /// Signs a request to the hub as this reader (`GET /v1/deny`, `/v1/keys`;
    /// docs/sync.md): `time_ms` is the hub's time as the uplink estimates it.
    pub fn sign_request(
        &self,
        time_ms: u64,
        nonce: [u8; 16],
        method: &str,
        target: &str,
    ) -> Result<SignedRequest, WireError> {
        SignedRequest::sign(
            &self.config.id,
            time_ms,
            nonce,
            method,
            target,
            self.key.signing_key(),
        )
    }

    /// The oldest unsynced records after sequence number `after` (at most
    /// `limit`) as a batch signed by this reader, or `None` when there are none.
    pub fn next_batch(
        &self,
        after: u64,
        limit: usize,
        now: u64,
    ) -> Result<Option<Batch>, ReaderError> {
        let records = self
            .db
            .unsynced_run(after, limit.clamp(1, MAX_BATCH_RECORDS))?;
        let Some(first) = records.first() else {
            return Ok(None);
        };
        let (first_seq, prev_hash) = (first.seq, first.prev_hash);
        let records = records
            .into_iter()
            .map(|r| BatchRecord {
                at: r.at,
                kind: r.kind,
                amount: r.amount,
                token: r.token,
                signature: r.signature,
            })
            .collect();
        Batch::seal(
            &self.config.id,
            first_seq,
            prev_hash,
            records,
            now,
            self.key.signing_key(),
        )
        .map(Some)
        .map_err(|e| StoreError::inconsistent(self.db.path(), e.to_string()).into())
    }

    /// The tap path: authenticate, decide, and commit the record before returning.
    ///
    /// `charge` overrides the configured fare; without either the reader
    /// charges what the token authorises. An `Err` means the store failed
    /// and nothing was charged. A decline is also written to the decline
    /// log ([`ReaderDb::recent_declines`]) after the decision, best effort:
    /// if that write fails the decline is returned all the same.
    pub fn present(
        &mut self,
        bytes: &[u8],
        charge: Option<NonZeroU32>,
        now: u64,
    ) -> Result<Outcome, StoreError> {
        let outcome = self.decide(bytes, charge, now)?;
        if let Err(decline) = &outcome.decision {
            self.log_decline(&outcome, decline, now);
        }
        Ok(outcome)
    }

    /// Logs a decline for `sonotap status`, best effort: the log is a
    /// diagnostic, so a failure to write it (disk full, lock held too long)
    /// is warned about and never turns the rider's decline into an error.
    fn log_decline(&mut self, outcome: &Outcome, decline: &Decline, now: u64) {
        let entry = DeclineEntry {
            at: now,
            reason: decline.reason.as_str().to_string(),
            wallet: outcome.wallet.map(|w| w.to_string()),
            amount: outcome.amount,
            counter: outcome.counter,
            detail: decline.detail.clone(),
        };
        if let Err(e) = self.db.log_decline(&entry) {
            tracing::warn!(reason = %decline.reason, "cannot log the decline: {e}");
        }
    }

    fn decide(
        &mut self,
        bytes: &[u8],
        charge: Option<NonZeroU32>,
        now: u64,
    ) -> Result<Outcome, StoreError> {
        let charge = charge.or(self.config.fare.and_then(NonZeroU32::new));
        let authentic = match policy::authenticate(bytes, &self.keys) {
            Ok(authentic) => authentic,
            Err(decline) => {
                // Parse what can be parsed, so the operator sees whose token failed.
                let parsed = token::Token::decode(bytes).ok();
                return Ok(Outcome {
                    wallet: parsed.map(|t| t.wallet_id()),
                    counter: parsed.map(|t| t.payment.counter),
                    amount: charge
                        .map(NonZeroU32::get)
                        .or(parsed.map(|t| t.payment.amount)),
                    decision: Err(decline),
                });
            }
        };
        let payment = authentic.token().payment;
        let signer = RecordSigner {
            reader_id: &self.config.id,
            key: self.key.signing_key(),
        };
        let decision = self
            .db
            .commit_payment(&signer, &authentic, &self.policy, charge, now)?;
        Ok(Outcome {
            wallet: Some(authentic.wallet()),
            counter: Some(payment.counter),
            amount: Some(match &decision {
                Ok(committed) => committed.charge,
                Err(_) => charge.map_or(payment.amount, NonZeroU32::get),
            }),
            decision,
        })
    }
}

impl Reader {
    /// Cancels charge `charge_seq` with a signed, chained void record (a vend
    /// that failed or timed out); see [`ReaderDb::void_charge`].
    pub fn void(&mut self, charge_seq: u64, reason: &str, now: u64) -> Result<Voided, VoidError> {
        let signer = RecordSigner {
            reader_id: &self.config.id,
            key: self.key.signing_key(),
        };
        self.db.void_charge(&signer, charge_seq, reason, now)
    }

    /// Stores what a device did about record `seq` (kept beside the chain).
    pub fn record_actuation(
        &self,
        seq: u64,
        now: u64,
        device: &str,
        outcome: ActuationOutcome,
        detail: &str,
    ) -> Result<(), StoreError> {
        self.db.record_actuation(seq, now, device, outcome, detail)
    }

    /// Overrides the clock-skew window of `reader.toml` (the daemon's config
    /// sets it per site) for this open reader only.
    pub fn set_clock_skew_secs(&mut self, secs: u32) {
        self.config.clock_skew_secs = secs;
        self.policy.clock_skew_secs = secs;
    }
}

fn trust_issuer(db: &ReaderDb, issuer: &PublicKey, now: u64) -> Result<(), ReaderError> {
    // PublicKey::read(.., Role::Issuer) always yields a key id.
    let key_id = issuer.key_id().unwrap_or(1);
    db.trust_key(key_id, issuer.verifying_key(), now)?;
    Ok(())
}
