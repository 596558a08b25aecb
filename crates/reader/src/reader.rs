//! A reader's data directory: configuration, signing key, database, and the
//! tap path that ties token, policy and store together.
//!
//! Layout of `R/`: `reader.toml` (configuration, written last by `init`, so
//! its presence means the directory is complete), `reader.key` (0600),
//! `reader.pub`, `reader.db` (SQLite).
//!
//! `reader.toml` is the commit point of `init`, and nothing signs before it
//! exists (every command but `init` needs it). So an `init` cut short (by a
//! power cut, a full disk) leaves nothing that could have signed a record, and
//! the next `init` replaces what it left: the key (of any length), the public
//! key, a database without records, temporaries. A database *with* records
//! beside no `reader.toml` is a reader that lost its configuration, not an
//! unfinished init: its key signed those records, and `init` refuses to touch
//! it ([`ReaderError::ConfigLost`]).

use std::fmt;
use std::fs;
use std::io;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::actuator::ActuationOutcome;
use crate::beacon::ChallengeBook;
use crate::site::SiteSender;
use crate::store::{
    Actuation, Committed, DeclineEntry, InFlight, PendingVend, Pruned, QueueSummary, ReaderDb,
    RecordSigner, StoreError, SyncState, VoidError, Voided,
};
use sonotap_disk::fsutil;
use sonotap_disk::keys::{KeyFileError, PublicKey, Role, SecretKey};
use sonotap_protocol::api::check_reader_id;
use sonotap_protocol::policy::{self, Decline, ReaderPolicy, TrustedKeys};
use sonotap_protocol::record::Record;
use sonotap_protocol::token::{self, Scope, WalletId};
use sonotap_protocol::wire::{
    Batch, BatchRecord, DenyEntry, MAX_BATCH_RECORDS, SignedRequest, WireError,
};

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
/// The widest clock-skew window a reader takes: one day. Unbounded, a u32
/// window of 4294967295 s accepted tokens stamped 1970 and 2106 (issue 13).
pub const MAX_CLOCK_SKEW_SECS: u32 = 86_400;

/// A clock-skew window of 1 to [`MAX_CLOCK_SKEW_SECS`] seconds: the one check
/// behind `reader init --clock-skew-secs`, `reader.toml` and the daemon's
/// `clock_skew_secs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "i64")]
pub struct ClockSkew(u32);

/// Why a clock-skew window was refused; names the field and the range.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ClockSkewError {
    /// A number outside 1..=MAX_CLOCK_SKEW_SECS.
    #[error(
        "clock_skew_secs {0} is outside 1..={MAX_CLOCK_SKEW_SECS} seconds (at most one day; the default is {DEFAULT_CLOCK_SKEW_SECS})"
    )]
    OutOfRange(i128),
    /// Not a whole number of seconds.
    #[error("clock_skew_secs {0:?} is not a whole number of seconds")]
    NotANumber(String),
}

impl ClockSkew {
    /// The default window, [`DEFAULT_CLOCK_SKEW_SECS`].
    pub const DEFAULT: ClockSkew = ClockSkew(DEFAULT_CLOCK_SKEW_SECS);

    /// A window of `secs` seconds, if within 1..=[`MAX_CLOCK_SKEW_SECS`].
    pub fn new(secs: impl Into<i128>) -> Result<Self, ClockSkewError> {
        let secs = secs.into();
        match u32::try_from(secs) {
            Ok(s @ 1..=MAX_CLOCK_SKEW_SECS) => Ok(Self(s)),
            _ => Err(ClockSkewError::OutOfRange(secs)),
        }
    }

    /// The window in seconds.
    pub fn secs(self) -> u32 {
        self.0
    }
}

impl Default for ClockSkew {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl TryFrom<i64> for ClockSkew {
    type Error = ClockSkewError;

    fn try_from(secs: i64) -> Result<Self, Self::Error> {
        Self::new(secs)
    }
}

impl std::str::FromStr for ClockSkew {
    type Err = ClockSkewError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let secs = text
            .trim()
            .parse::<i128>()
            .map_err(|_| ClockSkewError::NotANumber(text.into()))?;
        Self::new(secs)
    }
}

impl fmt::Display for ClockSkew {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

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
    /// Allowed distance between token time and reader time, seconds
    /// (checked by [`ClockSkew`]: 1 to [`MAX_CLOCK_SKEW_SECS`]).
    #[serde(default = "default_skew", deserialize_with = "skew_in_range")]
    pub clock_skew_secs: u32,
    /// Fixed fare or price charged when the caller names no amount.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fare: Option<u32>,
}

fn default_skew() -> u32 {
    DEFAULT_CLOCK_SKEW_SECS
}

/// Reads `clock_skew_secs` as any integer, so that an out-of-range value is
/// refused by [`ClockSkew`] with the range, not by serde as "expected u32".
fn skew_in_range<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    ClockSkew::new(i64::deserialize(d)?)
        .map(ClockSkew::secs)
        .map_err(serde::de::Error::custom)
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
        let skew = ClockSkew::new(self.clock_skew_secs).map_err(|e| e.to_string())?;
        Ok(ReaderPolicy {
            reader_tag: token::reader_tag(&self.id),
            scope: self.scope.parse::<Scope>()?,
            currency: self.currency,
            clock_skew_secs: skew.secs(),
            gate: Default::default(),
        })
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
    /// `init` on a directory whose `reader.toml` is gone but whose database
    /// holds records (or cannot be read to show it holds none): its key
    /// signed them, so it is never replaced.
    #[error(
        "{path} has no reader.toml but its database {detail}; reader.key signed what it holds, \
         so init will not replace it: restore reader.toml from a backup (or move the \
         directory away to start a new reader)"
    )]
    ConfigLost {
        /// The directory.
        path: PathBuf,
        /// What the database holds, or why it could not be read.
        detail: String,
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

/// What a vending session may offer for some bytes, decided before the
/// session begins (see [`Reader::offer`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer {
    /// The paying wallet, when the token parsed.
    pub wallet: Option<WalletId>,
    /// The payment counter, when the token parsed.
    pub counter: Option<u32>,
    /// The amount the token authorises, when it parsed.
    pub amount: Option<u32>,
    /// The most a charge may be (never above the authorised amount, the
    /// per-payment cap or what is left of the offline limit), or why the
    /// token is declined.
    pub decision: Result<u32, Decline>,
}

/// An open reader: configuration, key, trusted keys and database.
pub struct Reader {
    dir: PathBuf,
    config: ReaderConfig,
    policy: ReaderPolicy,
    key: SecretKey,
    keys: TrustedKeys,
    db: ReaderDb,
    /// The site's other readers, told of every accept (the daemon sets it).
    site: Option<SiteSender>,
    /// The challenges this gate's beacon announced (the daemon sets it).
    challenges: Option<Arc<Mutex<ChallengeBook>>>,
}

impl Reader {
    /// Creates a reader directory: key pair, database trusting `issuer`, and
    /// last the configuration, which commits it. What an earlier `init` left
    /// without its configuration is replaced, unless the database holds
    /// records (see the module documentation).
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
        clear_unfinished_init(dir)?;
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
        let text =
            fsutil::read_regular_file_capped(&config_path, MAX_CONFIG_BYTES).map_err(|e| {
                config_error(match e {
                    fsutil::ReadError::Missing { .. } => {
                        "not found; is this a reader directory? (`sonotap reader init` makes one)"
                            .into()
                    }
                    e => e.to_string(),
                })
            })?;
        let text = String::from_utf8(text).map_err(|_| config_error("not UTF-8 text".into()))?;
        let config: ReaderConfig =
            toml::from_str(&text).map_err(|e| config_error(toml_detail(&text, &e)))?;
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
            site: None,
            challenges: None,
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

    /// Re-reads the trusted issuer keys, which another connection (the
    /// daemon's uplink) may have replaced.
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
        Ok(self.db.reader_time(system_now)?)
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
        self.decide_and_log(bytes, charge, None, now)
    }

    /// [`Reader::present`] for a vend at `price` on `device`: an accepted
    /// charge is committed as pending delivery (see
    /// [`ReaderDb::commit_vend_charge`]): voided unless
    /// [`Reader::confirm_vend`] stores the machine's success.
    pub fn present_vend(
        &mut self,
        bytes: &[u8],
        price: NonZeroU32,
        device: &str,
        now: u64,
    ) -> Result<Outcome, StoreError> {
        self.decide_and_log(bytes, Some(price), Some(InFlight::Vend(device)), now)
    }

    /// [`Reader::present`] at a gate the daemon opens on `device` for an
    /// accepted charge: the opening is committed as in flight with the
    /// charge (see [`ReaderDb::commit_gate_charge`]) and ended by
    /// [`Reader::record_gate_outcome`]; one still in flight at the next
    /// start is settled as unknown ([`Reader::settle_gate_openings`]).
    pub fn present_at_gate(
        &mut self,
        bytes: &[u8],
        charge: Option<NonZeroU32>,
        device: &str,
        now: u64,
    ) -> Result<Outcome, StoreError> {
        self.decide_and_log(bytes, charge, Some(InFlight::Gate(device)), now)
    }

    /// The offline checks that do not depend on the price (signatures,
    /// validity, clock, counter, deny list, scope, cap, offline limit),
    /// without committing anything: run before a vending session begins, so
    /// that a token that would be declined never opens a session, and the
    /// session never offers more than a charge could be. A decline is
    /// logged as [`Reader::present`] logs one. An `Err` is the store failing.
    pub fn offer(&mut self, bytes: &[u8], now: u64) -> Result<Offer, StoreError> {
        self.refresh_challenges();
        let parsed = token::Token::decode(bytes).ok();
        let decision = match policy::authenticate(bytes, &self.keys) {
            Ok(authentic) => self.db.check_payment(&authentic, &self.policy, now)?,
            Err(decline) => Err(decline),
        };
        let offer = Offer {
            wallet: parsed.map(|t| t.wallet_id()),
            counter: parsed.map(|t| t.payment.counter),
            amount: parsed.map(|t| t.payment.amount),
            decision,
        };
        if let Err(decline) = &offer.decision {
            let outcome = Outcome {
                wallet: offer.wallet,
                counter: offer.counter,
                amount: offer.amount,
                decision: Err(decline.clone()),
            };
            self.log_decline(&outcome, decline, now);
        }
        Ok(offer)
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

    /// [`Reader::decide`], a decline then written to the decline log.
    fn decide_and_log(
        &mut self,
        bytes: &[u8],
        charge: Option<NonZeroU32>,
        in_flight: Option<InFlight<'_>>,
        now: u64,
    ) -> Result<Outcome, StoreError> {
        let outcome = self.decide(bytes, charge, in_flight, now)?;
        if let Err(decline) = &outcome.decision {
            self.log_decline(&outcome, decline, now);
        }
        Ok(outcome)
    }

    fn decide(
        &mut self,
        bytes: &[u8],
        charge: Option<NonZeroU32>,
        in_flight: Option<InFlight<'_>>,
        now: u64,
    ) -> Result<Outcome, StoreError> {
        let charge = charge.or(self.config.fare.and_then(NonZeroU32::new));
        self.refresh_challenges();
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
        let decision = match (in_flight, charge) {
            (Some(InFlight::Vend(device)), Some(price)) => {
                self.db
                    .commit_vend_charge(&signer, &authentic, &self.policy, price, device, now)?
            }
            (Some(InFlight::Gate(device)), charge) => self.db.commit_gate_charge(
                &signer,
                &authentic,
                &self.policy,
                charge,
                device,
                now,
            )?,
            _ => self
                .db
                .commit_payment(&signer, &authentic, &self.policy, charge, now)?,
        };
        if let (Ok(committed), Some(site)) = (&decision, &self.site) {
            site.announce(
                committed.seq,
                now,
                committed.running_total,
                authentic.bytes(),
            );
        }
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

    /// The vend charged by `charge_seq` was delivered: stores the success
    /// and ends its pending state (see [`ReaderDb::confirm_vend`]).
    pub fn confirm_vend(
        &mut self,
        charge_seq: u64,
        now: u64,
        device: &str,
        detail: &str,
    ) -> Result<(), StoreError> {
        self.db.confirm_vend(charge_seq, now, device, detail)
    }

    /// Stores what the gate did about record `seq` and ends its opening in
    /// flight (see [`ReaderDb::record_gate_outcome`]).
    pub fn record_gate_outcome(
        &mut self,
        seq: u64,
        now: u64,
        device: &str,
        outcomes: &[(ActuationOutcome, String)],
    ) -> Result<(), StoreError> {
        self.db.record_gate_outcome(seq, now, device, outcomes)
    }

    /// Gate openings a stopped daemon left in flight, settled as unknown
    /// (see [`ReaderDb::settle_gate_openings`]).
    pub fn settle_gate_openings(&mut self, now: u64) -> Result<Vec<u64>, StoreError> {
        self.db.settle_gate_openings(now)
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

    /// Announces every accept from now on to the site's other readers
    /// (after its record is committed; see [`crate::site`]).
    pub fn attach_site(&mut self, sender: SiteSender) {
        self.site = Some(sender);
    }

    /// Takes tokens bound to the challenges in `book` (which the beacon
    /// announces), and version-1 tokens only if `accept_v1`.
    pub fn attach_beacon(&mut self, book: Arc<Mutex<ChallengeBook>>, accept_v1: bool) {
        self.policy.gate.accept_v1 = accept_v1;
        self.challenges = Some(book);
    }

    /// Brings the policy's view of the announced challenges up to date
    /// before a decision.
    fn refresh_challenges(&mut self) {
        if let Some(book) = &self.challenges
            && let Ok(book) = book.lock()
        {
            self.policy.gate.issued = book.issued();
            self.policy.gate.challenge_life_secs =
                u32::try_from(book.life_secs()).unwrap_or(u32::MAX);
        }
    }

    /// A copy of the reader's signing key, for the site link's own thread.
    pub fn site_key(&self) -> ed25519_dalek::SigningKey {
        self.key.signing_key().clone()
    }

    /// The clock-skew window in force, seconds.
    pub fn clock_skew_secs(&self) -> u32 {
        self.policy.clock_skew_secs
    }

    /// Overrides the clock-skew window of `reader.toml` (the daemon's config
    /// sets it per site) for this open reader only.
    pub fn set_clock_skew(&mut self, skew: ClockSkew) {
        self.config.clock_skew_secs = skew.secs();
        self.policy.clock_skew_secs = skew.secs();
    }
}

/// What the reader holds, read from its store: for the operator's commands,
/// the daemon's status and the uplink.
impl Reader {
    /// Queue depth and totals.
    pub fn summary(&self) -> Result<QueueSummary, StoreError> {
        self.db.summary()
    }

    /// When the oldest record the hub has not acknowledged was made
    /// (reader clock, Unix seconds).
    pub fn oldest_unsynced_at(&self) -> Result<Option<u64>, StoreError> {
        self.db.oldest_unsynced_at()
    }

    /// What the reader knows of its link to the hub.
    pub fn sync_state(&self) -> Result<SyncState, StoreError> {
        self.db.sync_state()
    }

    /// The issuer keys trusted as the store holds them now (the uplink may
    /// have replaced them through another connection since this one opened).
    pub fn trusted_keys(&self) -> Result<TrustedKeys, StoreError> {
        self.db.trusted_keys()
    }

    /// Records in sequence order; `unsynced_only` keeps those the hub has
    /// not acknowledged.
    pub fn records(&self, unsynced_only: bool) -> Result<Vec<Record>, StoreError> {
        self.db.records(unsynced_only)
    }

    /// Streams records in sequence order to `visit`, in constant memory
    /// however long the queue is.
    pub fn for_each_record<E: From<StoreError>>(
        &self,
        unsynced_only: bool,
        visit: impl FnMut(Record) -> Result<(), E>,
    ) -> Result<(), E> {
        self.db.for_each_record(unsynced_only, visit)
    }

    /// Vend charges whose delivery was never confirmed and that are not
    /// voided yet, oldest first (see [`ReaderDb::pending_vends`]).
    pub(crate) fn pending_vends(&self) -> Result<Vec<PendingVend>, StoreError> {
        self.db.pending_vends()
    }

    /// The actuations stored for record `seq`, oldest first.
    pub fn actuations(&self, seq: u64) -> Result<Vec<Actuation>, StoreError> {
        self.db.actuations(seq)
    }
}

/// The operator's own deny list (`reader deny|allow`), beside the hub's.
impl Reader {
    /// Declines `wallet` at this reader from now on, for `reason`.
    pub fn deny_wallet(&self, wallet: WalletId, reason: &str, now: u64) -> Result<(), StoreError> {
        self.db.deny(wallet, reason, now)
    }

    /// Takes `wallet` off the deny list; returns whether it was on it.
    pub fn allow_wallet(&self, wallet: WalletId) -> Result<bool, StoreError> {
        self.db.allow(wallet)
    }
}

/// The uplink's bookkeeping (`sync::client`): what the hub acknowledged,
/// sent and measured, written only after it was verified.
impl Reader {
    /// Records `first..=last` were acknowledged by the hub at `at`.
    pub(crate) fn mark_synced(&mut self, first: u64, last: u64, at: u64) -> Result<(), StoreError> {
        self.db.mark_synced(first, last, at)
    }

    /// Trusts exactly `keys` from now on, as key-set `version` (which must be
    /// above the one in use), and decides with them at once.
    pub fn adopt_keys(
        &mut self,
        keys: &TrustedKeys,
        version: u64,
        now: u64,
    ) -> Result<(), StoreError> {
        self.db.replace_trusted_keys(keys, version, now)?;
        self.keys = self.db.trusted_keys()?;
        Ok(())
    }

    /// Applies verified deny-list entries continuing the stored version;
    /// returns the version reached.
    pub(crate) fn apply_deny_entries(&mut self, entries: &[DenyEntry]) -> Result<u64, StoreError> {
        self.db.apply_deny_entries(entries)
    }

    /// Forgets records the hub acknowledged before `cutoff` (Unix seconds)
    /// and the totals of credentials that expired before it.
    pub(crate) fn prune(&mut self, cutoff: u64) -> Result<Pruned, StoreError> {
        self.db.prune(cutoff, cutoff)
    }

    /// Stores the hub's clock minus this reader's (see [`Reader::adjusted_now`]).
    pub(crate) fn note_clock_offset(&self, offset_ms: i64) -> Result<(), StoreError> {
        self.db.note_clock_offset(offset_ms)
    }

    /// Records how a sync round ended at `at`: `None` for success, or why it failed.
    pub(crate) fn note_sync(&self, at: u64, error: Option<&str>) -> Result<(), StoreError> {
        self.db.note_sync(at, error)
    }
}

/// The most a configuration file may hold; real ones are a few hundred bytes.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// Reader time: the system clock corrected by the offset the uplink
/// measured against the hub (`SyncState::clock_offset_ms`), unless that
/// offset is past [`MAX_CLOCK_CORRECTION_SECS`].
pub fn adjusted(system_now: u64, clock_offset_ms: i64) -> u64 {
    let offset_secs = clock_offset_ms / 1000;
    if offset_secs.unsigned_abs() > MAX_CLOCK_CORRECTION_SECS {
        return system_now;
    }
    system_now.saturating_add_signed(offset_secs)
}

/// A TOML error with the line it is about, so that the field is named
/// (`line 4 \`clock_skew_secs = 5000000000\`: ...`).
fn toml_detail(text: &str, e: &toml::de::Error) -> String {
    let Some(span) = e.span() else {
        return e.message().to_string();
    };
    let before = text.get(..span.start).unwrap_or(text);
    let number = before.matches('\n').count() + 1;
    let line = text.lines().nth(number - 1).unwrap_or_default().trim();
    format!("line {number} `{line}`: {}", e.message())
}

/// Removes what an interrupted `init` left in `dir` (which has no
/// `reader.toml`), after checking that the database holds no record.
fn clear_unfinished_init(dir: &Path) -> Result<(), ReaderError> {
    let db_path = dir.join(DB_FILE);
    let lost = |detail: String| ReaderError::ConfigLost {
        path: dir.into(),
        detail,
    };
    match records_in(&db_path) {
        Ok(0) => {}
        Ok(n) => return Err(lost(format!("holds {n} records"))),
        Err(why) => {
            return Err(lost(format!(
                "cannot be read to show it holds no record ({why})"
            )));
        }
    }
    let remove = |path: PathBuf| match fs::remove_file(&path) {
        Err(source) if source.kind() != io::ErrorKind::NotFound => {
            Err(ReaderError::Io { path, source })
        }
        _ => Ok(()),
    };
    let db_files = ["", "-wal", "-shm", "-journal"].map(|suffix| format!("{DB_FILE}{suffix}"));
    for name in [KEY_FILE, PUB_FILE]
        .into_iter()
        .chain(db_files.iter().map(String::as_str))
    {
        remove(dir.join(name))?;
    }
    for name in [PUB_FILE, CONFIG_FILE] {
        let path = dir.join(name);
        fsutil::remove_stale_temporaries(&path)
            .map_err(|source| ReaderError::Io { path, source })?;
    }
    Ok(())
}

/// How many records the database at `path` holds: 0 when there is no
/// database (nor a write-ahead log that could hold one), it is empty, or it
/// has no `records` table yet. SQLite itself reads it, so a committed
/// transaction still in the write-ahead log counts.
fn records_in(path: &Path) -> Result<u64, String> {
    use rusqlite::{Connection, OpenFlags};
    let wal = {
        let mut wal = path.as_os_str().to_os_string();
        wal.push("-wal");
        PathBuf::from(wal)
    };
    if !path.exists() {
        // A log without its database: what it holds cannot be read here,
        // so it is not taken for nothing.
        return match fs::metadata(&wal) {
            Ok(meta) if meta.len() > 0 => Err(format!(
                "{} is missing but its write-ahead log {} is not empty",
                path.display(),
                wal.display()
            )),
            _ => Ok(0),
        };
    }
    let sqlite = |e: rusqlite::Error| e.to_string();
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags).map_err(sqlite)?;
    if !sonotap_disk::sqlite::has_table(&conn, "records").map_err(sqlite)? {
        return Ok(0);
    }
    let records: i64 = conn
        .query_row("SELECT count(*) FROM records", [], |row| row.get(0))
        .map_err(sqlite)?;
    Ok(u64::try_from(records).unwrap_or(u64::MAX))
}

fn trust_issuer(db: &ReaderDb, issuer: &PublicKey, now: u64) -> Result<(), ReaderError> {
    // PublicKey::read(.., Role::Issuer) always yields a key id.
    let key_id = issuer.key_id().unwrap_or(1);
    db.trust_key(key_id, issuer.verifying_key(), now)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issue13_09_clock_skew_is_one_second_to_one_day() {
        assert_eq!(ClockSkew::new(1).map(ClockSkew::secs), Ok(1));
        assert_eq!(ClockSkew::new(86_400).map(ClockSkew::secs), Ok(86_400));
        for bad in [
            0,
            86_401,
            i128::from(u32::MAX),
            -1,
            i128::from(u64::MAX) + 1,
        ] {
            let err = ClockSkew::new(bad).expect_err("out of range");
            assert!(err.to_string().contains("outside 1..=86400"), "{err}");
        }
        assert_eq!("300".parse::<ClockSkew>(), Ok(ClockSkew::DEFAULT));
        assert!(matches!(
            "5m".parse::<ClockSkew>(),
            Err(ClockSkewError::NotANumber(_))
        ));
        assert!("4294967295".parse::<ClockSkew>().is_err());
    }

    #[test]
    fn issue13_09_reader_toml_with_a_huge_skew_names_the_field_and_the_range() {
        let base = "id = \"gate-1\"\nscope = \"transit\"\ncurrency = 978\n";
        for value in ["4294967295", "5000000000", "0", "-5"] {
            let text = format!("{base}clock_skew_secs = {value}\n");
            let err = toml::from_str::<ReaderConfig>(&text).expect_err("refused");
            let detail = toml_detail(&text, &err);
            assert!(
                detail.contains("line 4 `clock_skew_secs") && detail.contains("outside 1..=86400"),
                "{detail}"
            );
        }
        let config: ReaderConfig = toml::from_str(base).expect("default skew");
        assert_eq!(config.clock_skew_secs, DEFAULT_CLOCK_SKEW_SECS);
    }
}
