//! The operator's hub: issuer keys, credential issuance, reader
//! registration, batch clearing and the deny list.
//!
//! Layout of `DIR/`: `issuer.key` (0600, the active issuer key and its key
//! id), `issuer.pub` (what readers trust), and the state: `hub.db` (SQLite,
//! the default) or a PostgreSQL database ([`backend`]).
//!
//! Everything that arrives (uploads over HTTP, imported batch files) goes
//! through [`Hub::receive`]: decode, check the registered reader's
//! signatures ([`verify`]), store idempotently with the clearing rules
//! ([`ledger`], [`clearing`]), then sign the acknowledgement.

#![deny(missing_docs)]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod accounts;
pub mod backend;
pub mod clearing;
pub mod fleet;
pub mod ledger;
pub mod listen;
pub mod metrics;
pub mod pgpass;
pub mod phones;
pub mod server;
pub mod verify;
pub mod wallet_web;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ed25519_dalek::VerifyingKey;
use thiserror::Error;

use accounts::{Account, AccountView, Refusal};
use backend::{HubBackend, ReadBackend, ReaderOpener, Report, Review, SqliteHub, book};
pub use backend::{init_database, open_database};
use ledger::{ClearTarget, Clearance, Cleared, DenySigner, IngestReport, IngestStatus, Via};
use sonotap_disk::fsutil;
use sonotap_disk::keys::{KeyFileError, PublicKey, Role, SecretKey};
use sonotap_disk::sqlite::StoreError;
use sonotap_protocol::api::StatusReport;
use sonotap_protocol::policy::TrustedKeys;
use sonotap_protocol::token::{Credential, CredentialTerms, FormatError, Scope, WalletId};
use sonotap_protocol::wire::{
    Ack, Batch, DenyAction, DenyEntry, DenyReason, DenyScope, EntryKind, KeySet, REQUEST_WINDOW_MS,
    RenewalNote, Renewed, SignedRequest, Statement, TimeStatement, WalletAsk, WalletRequest,
    WireError, enrol_code,
};
pub use verify::RecordSignatureCheck;
use verify::{BatchRefused, CheckedBatch};

/// Active issuer secret key.
pub const ISSUER_KEY_FILE: &str = "issuer.key";
/// Active issuer public key, for readers.
pub const ISSUER_PUB_FILE: &str = "issuer.pub";

/// The issuer's secret key while `hub init` registers it (renamed to
/// [`ISSUER_KEY_FILE`] once it has).
const ISSUER_KEY_PENDING_FILE: &str = "issuer.key.pending";
/// The most bytes an operator's name or note on a review may hold.
pub const REVIEW_TEXT_MAX: usize = 1000;
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
    /// An interrupted `hub init` left a key for another key id.
    #[error(
        "{path} holds the issuer key an interrupted init made for key id {found}, not {asked}: run init with that key id, or remove the file if the database has never registered it"
    )]
    PendingKeyOtherId {
        /// The pending key file.
        path: PathBuf,
        /// Its key id.
        found: u8,
        /// The key id asked for.
        asked: u8,
    },
    /// An issuer key id is registered with another public key.
    #[error("issuer key {key_id} is registered with another public key; refusing to replace it")]
    IssuerKeyMismatch {
        /// The key id.
        key_id: u8,
    },
    /// A reader id is registered with another key.
    #[error("reader {reader} is registered with a different key; refusing to replace it")]
    ReaderKeyMismatch {
        /// The reader id.
        reader: String,
    },
    /// A batch from a reader the hub does not know.
    #[error("reader {reader} is not registered (run `sonotap hub reader add`)")]
    UnknownReader {
        /// The reader id named in the batch.
        reader: String,
    },
    /// Bytes that are not a valid message.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// A batch whose signatures do not verify.
    #[error(transparent)]
    Refused(#[from] BatchRefused),
    /// A batch that contradicts records already stored.
    #[error(
        "batch from {reader} conflicts with stored record {seq} (same sequence number, other \
         contents); nothing stored, incident recorded"
    )]
    Conflict {
        /// The reader.
        reader: String,
        /// The first conflicting record.
        seq: u64,
    },
    /// A request that is not signed by a registered reader (a read of the
    /// deny list or the keys). `detail` is for the hub's log only: the
    /// answer is the same whatever it says, so that nobody can learn which
    /// reader ids are registered.
    #[error("request not authenticated: {detail}")]
    NotAuthenticated {
        /// Why (missing, malformed, stale, unknown reader, bad signature).
        detail: String,
    },
    /// A PostgreSQL call failed. `message` is for the operator (which
    /// database, what to do); `source` is the driver's error, kept so a
    /// caller can still tell a lost connection from a refused statement.
    #[error("hub database: {message}")]
    Postgres {
        /// What failed, in the operator's terms.
        message: String,
        /// What the PostgreSQL client said.
        source: ::postgres::Error,
    },
    /// `hub clear` names nothing suspended.
    #[error(
        "no open suspension for {target} (`sonotap hub review` lists the suspensions, \
         `--all` the cleared ones too)"
    )]
    NothingToClear {
        /// The credential or wallet named.
        target: String,
    },
    /// An operator's review input that cannot be recorded.
    #[error("cannot record the review: {0}")]
    Review(String),
    /// A reader's report of itself that does not follow docs/sync.md §2.5.
    #[error("malformed report: {0}")]
    Report(String),
    /// The hub's database is not usable for a reason no driver reported
    /// (an unsupported URL, a schema from another build, a key mismatch).
    #[error("hub database: {0}")]
    Backend(String),
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

/// What the hub answers for a received batch.
#[derive(Debug, Clone)]
pub struct Receipt {
    /// The signed acknowledgement for the reader.
    pub ack: Ack,
    /// What was stored and flagged.
    pub report: IngestReport,
}

/// A decoded batch from a registered reader, with the keys to check it.
#[derive(Debug, Clone)]
pub struct Admitted {
    batch: Batch,
    reader_key: VerifyingKey,
    issuers: TrustedKeys,
    record_signatures: RecordSignatureCheck,
}

impl Admitted {
    /// The reader the batch names (registered: its key was found).
    pub fn reader_id(&self) -> &str {
        &self.batch.reader_id
    }

    /// How many records the batch carries.
    pub fn records(&self) -> u64 {
        self.batch.records.len() as u64
    }

    /// Checks the signatures the hub's policy asks for (see [`verify::check_batch`]).
    pub fn check(self) -> Result<CheckedBatch, HubError> {
        Ok(verify::check_batch(
            self.batch,
            &self.reader_key,
            &self.issuers,
            self.record_signatures,
        )?)
    }
}

/// An open hub directory: the issuer key and the one writer of the state.
pub struct Hub {
    issuer: Arc<SecretKey>,
    backend: Box<dyn HubBackend>,
    record_signatures: RecordSignatureCheck,
    /// Calls of [`Hub::answer_phones`], to sweep old nonces now and then.
    phone_calls: u64,
    /// How long a renewed credential's allowance stays reserved after it
    /// expires ([`accounts::SETTLE_SECS`] unless set).
    settle_secs: u64,
}

/// What the hub's read path needs without the writer: the issuer key (to
/// sign times) and a way to open read connections ([`HubReader`]).
#[derive(Clone)]
pub struct ReadSide {
    issuer: Arc<SecretKey>,
    open: ReaderOpener,
    record_signatures: RecordSignatureCheck,
}

impl ReadSide {
    /// The active issuer key: its id and public key (what a phone learns
    /// when it enrols, to check its statements).
    pub fn issuer_key(&self) -> (u8, [u8; 32]) {
        (
            IssuerSigner(&self.issuer).key_id(),
            self.issuer.public().to_bytes(),
        )
    }

    /// The hub's time for a reader's `nonce`, signed by the active issuer key.
    pub fn time_statement(&self, nonce: [u8; 16], now_ms: u64) -> TimeStatement {
        time_statement(&self.issuer, nonce, now_ms)
    }

    /// Opens another read connection to the hub's state.
    pub fn open(&self) -> Result<HubReader, HubError> {
        Ok(HubReader {
            issuer: Arc::clone(&self.issuer),
            backend: (self.open)()?,
            record_signatures: self.record_signatures,
        })
    }
}

/// A read connection with the issuer key: answers what readers ask (the
/// keys, the deny list, who signed a request or a batch) while an ingest
/// holds the writer.
pub struct HubReader {
    issuer: Arc<SecretKey>,
    backend: Box<dyn ReadBackend>,
    record_signatures: RecordSignatureCheck,
}

impl HubReader {
    fn reads(&mut self) -> Reads<'_> {
        Reads {
            issuer: &self.issuer,
            backend: &mut *self.backend,
            record_signatures: self.record_signatures,
        }
    }

    /// Checks a reader's signed request (docs/sync.md §2.1): `encoded` is
    /// the hex from `Authorization: Sonotap HEX`, for `method` and `target`
    /// (path and query) at hub time `now_ms`. Returns the request, verified
    /// (its `reader_id` is the signer).
    pub fn authenticate(
        &mut self,
        encoded: &str,
        method: &str,
        target: &str,
        now_ms: u64,
    ) -> Result<SignedRequest, HubError> {
        self.reads().authenticate(encoded, method, target, now_ms)
    }

    /// See [`Hub::admit`].
    pub fn admit(&mut self, bytes: &[u8]) -> Result<Admitted, HubError> {
        self.reads().admit(bytes)
    }

    /// See [`Hub::fleet`].
    pub fn fleet(&mut self) -> Result<fleet::Fleet, HubError> {
        self.backend.fleet()
    }

    /// See [`Hub::key_set`].
    pub fn key_set(&mut self) -> Result<KeySet, HubError> {
        self.reads().key_set()
    }

    /// See [`Hub::deny_entries`].
    pub fn deny_entries(
        &mut self,
        since: u64,
        limit: u32,
    ) -> Result<(u64, Vec<Vec<u8>>), HubError> {
        self.backend.deny_entries(since, limit)
    }
}

/// The hub's reads that need the issuer key, over the writer's connection
/// ([`Hub`]) or a reader's ([`HubReader`]): written once for both.
struct Reads<'a> {
    issuer: &'a SecretKey,
    backend: &'a mut dyn ReadBackend,
    record_signatures: RecordSignatureCheck,
}

impl Reads<'_> {
    fn trusted_keys(&mut self) -> Result<TrustedKeys, HubError> {
        let mut keys = TrustedKeys::default();
        for (id, bytes) in self.backend.issuer_keys()? {
            let key = VerifyingKey::from_bytes(&bytes)
                .map_err(|_| HubError::Backend(format!("issuer key {id} is not a valid key")))?;
            keys.insert(id, key);
        }
        Ok(keys)
    }

    fn key_set(&mut self) -> Result<KeySet, HubError> {
        let keys = self.backend.issuer_keys()?;
        // The set only grows while no key is retired, so its size is its version.
        let version = keys.len() as u64;
        let signer = IssuerSigner(self.issuer);
        // The keys come from the hub's own state: a set that cannot be
        // signed (none left unretired, too many) is the hub's problem, not
        // a malformed request.
        KeySet::sign(
            version,
            keys,
            &[(signer.key_id(), self.issuer.signing_key())],
        )
        .map_err(|e| HubError::Backend(format!("cannot sign the issuer key set: {e}")))
    }

    /// A registered reader's key, or `None`.
    fn reader_key(&mut self, id: &str) -> Result<Option<VerifyingKey>, HubError> {
        Ok(self
            .backend
            .reader_key(id)?
            .and_then(|k| VerifyingKey::from_bytes(&k).ok()))
    }

    fn authenticate(
        &mut self,
        encoded: &str,
        method: &str,
        target: &str,
        now_ms: u64,
    ) -> Result<SignedRequest, HubError> {
        let refused = |detail: String| HubError::NotAuthenticated { detail };
        let bytes = hex::decode(encoded.trim()).map_err(|e| refused(format!("not hex: {e}")))?;
        let request = SignedRequest::decode(&bytes).map_err(|e| refused(e.to_string()))?;
        let key = self
            .reader_key(&request.reader_id)?
            .ok_or_else(|| refused(format!("reader {:?} is not registered", request.reader_id)))?;
        request
            .verify(&key, method, target, now_ms)
            .map_err(|e| refused(format!("reader {:?}: {e}", request.reader_id)))?;
        Ok(request)
    }

    fn admit(&mut self, bytes: &[u8]) -> Result<Admitted, HubError> {
        let batch = Batch::decode(bytes)?;
        let reader_key =
            self.reader_key(&batch.reader_id)?
                .ok_or_else(|| HubError::UnknownReader {
                    reader: batch.reader_id.clone(),
                })?;
        let issuers = self.trusted_keys()?;
        Ok(Admitted {
            batch,
            reader_key,
            issuers,
            record_signatures: self.record_signatures,
        })
    }
}

/// What the hub answers a phone whose request it took.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PhoneAnswer {
    /// The wallet is enrolled in an account of this currency.
    Enrolled {
        /// The account's currency.
        currency: u16,
    },
    /// A credential and its note.
    Renewed(Renewed),
    /// The account's statement.
    Statement(Statement),
}

/// How long the hub remembers a phone's nonce: a request stamped further
/// from its clock is refused anyway.
const NONCE_MEMORY_MS: u64 = 2 * REQUEST_WINDOW_MS + 60_000;
/// How often (in calls of [`Hub::answer_phones`]) old nonces are forgotten.
const NONCE_SWEEP: u64 = 256;

/// An enrolment code as the hub stores it: hashed, so that a copy of the
/// database enrols nobody.
pub fn enrol_code_hash(code: &str) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    Sha256::new()
        .chain_update(b"sonotap/v1/enrol-code\0")
        .chain_update(code.as_bytes())
        .finalize()
        .into()
}

/// Decodes and checks a phone's request (docs/accounts.md §3): its
/// signature under the key it carries and its time. Needs nothing of the
/// hub's, so a server runs it before it takes a writer. The error is for
/// the hub's log: the phone is told only that it is not authenticated.
pub fn check_wallet_request(bytes: &[u8], now_ms: u64) -> Result<WalletRequest, String> {
    let request = WalletRequest::decode(bytes).map_err(|e| e.to_string())?;
    request.verify(now_ms).map_err(|e| e.to_string())?;
    Ok(request)
}

/// One phone's request inside a transaction (see [`Hub::answer_phone`]).
/// `account` is the wallet's account (locked by the caller), looked up
/// for every request but an enrolment.
fn answer_one(
    ledger: &mut dyn ledger::Ledger,
    issuer: &accounts::Issuer<'_>,
    request: &WalletRequest,
    account: Option<&str>,
    now_ms: u64,
) -> Result<Result<PhoneAnswer, Refusal>, HubError> {
    let now = now_ms / 1000;
    let wallet = request.wallet();
    // A wallet enrolled nowhere asks for nothing that needs a write: a
    // stranger's fresh keys cost the hub no commit (the answer goes to the
    // key holder only, and is the same if replayed).
    let account = match (&request.ask, account) {
        (WalletAsk::Enrol { .. }, _) => None,
        (_, None) => return Ok(Err(Refusal::NotEnrolled)),
        (_, Some(id)) => Some(id),
    };
    if !book::fresh_nonce(ledger, wallet, &request.nonce, now_ms)? {
        return Ok(Err(Refusal::Replayed));
    }
    Ok(match &request.ask {
        WalletAsk::Enrol { code } => {
            accounts::enrol(ledger, &enrol_code_hash(code), &request.wallet_key, now)?.map(
                |account| PhoneAnswer::Enrolled {
                    currency: account.currency,
                },
            )
        }
        WalletAsk::Renew => accounts::renew(ledger, issuer, &request.wallet_key, now)?.map(|r| {
            PhoneAnswer::Renewed(Renewed {
                credential: r.credential,
                note: r.note,
            })
        }),
        WalletAsk::Statement { before } => {
            let view = match account {
                Some(id) => accounts::view(ledger, id, *before, now)?,
                None => None,
            };
            match view.ok_or(Refusal::NotEnrolled) {
                Err(refusal) => Err(refusal),
                Ok(view) => Ok(PhoneAnswer::Statement(
                    Statement {
                        nonce: request.nonce,
                        wallet,
                        at: now,
                        state: view.account.state,
                        currency: view.account.currency,
                        balance: view.balance,
                        credit_line: view.account.credit_line,
                        exposure: view.exposure,
                        next_before: view.next_before,
                        entries: view.entries,
                        key_id: 0,
                        signature: [0; 64],
                    }
                    .sign(issuer.key_id, issuer.key)?,
                )),
            }
        }
    })
}

/// The hub's time for a reader's `nonce`, signed by the active issuer key.
fn time_statement(issuer: &SecretKey, nonce: [u8; 16], now_ms: u64) -> TimeStatement {
    let signer = IssuerSigner(issuer);
    TimeStatement::sign(nonce, now_ms, signer.key_id(), issuer.signing_key())
}

/// Signs deny entries and acknowledgements with the active issuer key.
struct IssuerSigner<'a>(&'a SecretKey);

impl IssuerSigner<'_> {
    fn key_id(&self) -> u8 {
        self.0.key_id().unwrap_or(1)
    }
}

impl DenySigner for IssuerSigner<'_> {
    fn sign(
        &self,
        version: u64,
        action: DenyAction,
        wallet: WalletId,
        scope: DenyScope,
        at: u64,
        reason: DenyReason,
    ) -> Result<DenyEntry, HubError> {
        Ok(DenyEntry::sign_scoped(
            version,
            action,
            wallet,
            scope,
            at,
            reason,
            self.key_id(),
            self.0.signing_key(),
        )?)
    }
}

impl Hub {
    /// Creates the issuer key (with `key_id`) and the hub database.
    pub fn init(dir: &Path, key_id: u8, now: u64) -> Result<Self, HubError> {
        Self::init_with(dir, key_id, |public| {
            let mut backend = SqliteHub::open(dir, true)?;
            backend.add_issuer_key(key_id, public, now)?;
            Ok(Box::new(backend))
        })
    }

    /// Creates the issuer key (with `key_id`) and its state through
    /// `create`, which makes the backend and registers the public key there.
    pub(crate) fn init_with(
        dir: &Path,
        key_id: u8,
        create: impl FnOnce(&[u8; 32]) -> Result<Box<dyn HubBackend>, HubError>,
    ) -> Result<Self, HubError> {
        let key_path = dir.join(ISSUER_KEY_FILE);
        if key_path.exists() {
            return Err(HubError::AlreadyInitialised { path: dir.into() });
        }
        let io_err = |source| HubError::Io {
            path: dir.into(),
            source,
        };
        fsutil::create_private_dir(dir).map_err(io_err)?;
        // The secret is written first under a name of its own, registered,
        // and renamed into place last: its presence under `issuer.key`
        // marks a complete hub. An init cut short (a power cut) left no key
        // or this pending one, which a retry takes up: the database may
        // have registered it already, and a new key would clash there.
        let pending = dir.join(ISSUER_KEY_PENDING_FILE);
        let issuer = match SecretKey::read(&pending, Role::Issuer) {
            Ok(key) if key.key_id() == Some(key_id) => key,
            // It may be registered already: never thrown away.
            Ok(key) => {
                return Err(HubError::PendingKeyOtherId {
                    path: pending,
                    // An issuer key always has one.
                    found: key.key_id().unwrap_or_default(),
                    asked: key_id,
                });
            }
            Err(KeyFileError::Missing { .. }) => new_pending_key(&pending, key_id)?,
            // Torn: a pending key is synced before it is registered, so
            // this one never was.
            Err(KeyFileError::Malformed { .. }) => {
                fs::remove_file(&pending).map_err(io_err)?;
                new_pending_key(&pending, key_id)?
            }
            Err(e) => return Err(e.into()),
        };
        let backend = create(&issuer.public().to_bytes())?;
        issuer.public().write(&dir.join(ISSUER_PUB_FILE))?;
        fsutil::rename_durably(&pending, &key_path).map_err(io_err)?;
        Ok(Self::from_parts(issuer, backend))
    }

    /// Opens an existing hub directory with its SQLite database.
    pub fn open(dir: &Path) -> Result<Self, HubError> {
        let issuer = Self::read_issuer(dir)?;
        let backend = SqliteHub::open(dir, false)?;
        Ok(Self::from_parts(issuer, Box::new(backend)))
    }

    /// A hub directory's issuer key.
    pub(crate) fn read_issuer(dir: &Path) -> Result<SecretKey, HubError> {
        Ok(SecretKey::read(&dir.join(ISSUER_KEY_FILE), Role::Issuer)?)
    }

    /// A hub signing with `issuer`, its state in `backend` (where the
    /// issuer key is registered already).
    pub(crate) fn from_parts(issuer: SecretKey, backend: Box<dyn HubBackend>) -> Self {
        Self {
            issuer: Arc::new(issuer),
            backend,
            record_signatures: RecordSignatureCheck::default(),
            phone_calls: 0,
            settle_secs: accounts::SETTLE_SECS,
        }
    }

    /// Which per-record reader signatures uploads and imports are checked
    /// for (besides the batch signature, always checked).
    pub fn set_record_signatures(&mut self, check: RecordSignatureCheck) {
        self.record_signatures = check;
    }

    /// How long after it expires a credential renewed from now on keeps
    /// its unspent allowance reserved (docs/accounts.md §2): the longest a
    /// reader may take to sync.
    pub fn set_settle_secs(&mut self, secs: u64) {
        self.settle_secs = secs;
    }

    /// Where the state lives, for logs.
    pub fn describe(&self) -> String {
        self.backend.describe()
    }

    /// The active issuer public key.
    pub fn issuer_public(&self) -> PublicKey {
        self.issuer.public()
    }

    /// Signs a credential for `wallet` and logs it.
    pub fn issue(
        &mut self,
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
        self.backend.log_credential(&credential, now)?;
        Ok(credential)
    }

    /// The renewal note that goes beside `credential` (just issued): the
    /// highest counter the hub has cleared for its wallet, signed by the
    /// issuer key that signed the credential (docs/sync.md §3.8). A phone
    /// restored from a backup moves its counter above it when it installs
    /// the credential, instead of reusing counters the hub holds.
    pub fn renewal_note(
        &mut self,
        credential: &Credential,
        now: u64,
    ) -> Result<RenewalNote, HubError> {
        if credential.terms.issuer_key_id != self.issuer.key_id().unwrap_or(1)
            || credential
                .verify(&self.issuer.signing_key().verifying_key())
                .is_err()
        {
            return Err(HubError::Terms(
                "a renewal note goes with a credential this hub's active issuer key signed".into(),
            ));
        }
        let highest = self.backend.highest_counter(credential.terms.wallet_id())?;
        Ok(RenewalNote::sign(
            credential,
            highest,
            now,
            self.issuer.signing_key(),
        ))
    }

    /// Registers a reader by id and public key.
    pub fn add_reader(&mut self, id: &str, key: &PublicKey, now: u64) -> Result<bool, HubError> {
        sonotap_protocol::api::check_reader_id(id).map_err(HubError::Terms)?;
        self.backend.add_reader(id, &key.to_bytes(), now)
    }

    /// Another writer on the same state, to store batches beside this one
    /// (PostgreSQL: its own connection; the advisory locks keep clearing exact,
    /// docs/sync.md §8); `None` where the state has one writer (SQLite).
    pub fn another_writer(&self) -> Option<Result<Hub, HubError>> {
        let backend = self.backend.another_writer()?;
        Some(backend.map(|backend| Hub {
            issuer: Arc::clone(&self.issuer),
            backend,
            record_signatures: self.record_signatures,
            phone_calls: 0,
            settle_secs: self.settle_secs,
        }))
    }

    /// What the read path needs without the writer (see [`ReadSide`]).
    pub fn read_side(&self) -> ReadSide {
        ReadSide {
            issuer: Arc::clone(&self.issuer),
            open: self.backend.reader_opener(),
            record_signatures: self.record_signatures,
        }
    }

    fn reads(&mut self) -> Reads<'_> {
        Reads {
            issuer: &self.issuer,
            backend: &mut *self.backend,
            record_signatures: self.record_signatures,
        }
    }

    /// The issuer keys readers should trust.
    pub fn trusted_keys(&mut self) -> Result<TrustedKeys, HubError> {
        self.reads().trusted_keys()
    }

    /// The current key set, signed by the active key.
    pub fn key_set(&mut self) -> Result<KeySet, HubError> {
        self.reads().key_set()
    }

    /// Checks, stores and acknowledges an encoded batch (upload or import).
    pub fn receive(&mut self, bytes: &[u8], via: Via, now_ms: u64) -> Result<Receipt, HubError> {
        let admitted = self.admit(bytes)?;
        let checked = admitted.check()?;
        self.store(&checked, via, now_ms)
    }

    /// First step of [`Hub::receive`]: decodes the batch and looks up its
    /// reader's key and the issuer keys. The signature checks that follow
    /// ([`Admitted::check`]) need no access to the hub, so a server runs
    /// them outside the writer's lock, in parallel with other batches being
    /// stored (and admits through a [`HubReader`], beside the writer).
    pub fn admit(&mut self, bytes: &[u8]) -> Result<Admitted, HubError> {
        self.reads().admit(bytes)
    }

    /// Last step of [`Hub::receive`]: stores a checked batch and signs the
    /// acknowledgement, after the commit.
    pub fn store(
        &mut self,
        checked: &CheckedBatch,
        via: Via,
        now_ms: u64,
    ) -> Result<Receipt, HubError> {
        let signer = IssuerSigner(&self.issuer);
        let report = self.backend.ingest(checked, &signer, via, now_ms / 1000)?;
        if let IngestStatus::Conflict { seq } = report.status {
            return Err(HubError::Conflict {
                reader: checked.batch.reader_id.clone(),
                seq,
            });
        }
        // The chain was walked when the batch was checked: reuse its last hash.
        let ack = Ack::with_last_hash(
            &checked.batch,
            checked.last_hash(),
            now_ms,
            signer.key_id(),
            self.issuer.signing_key(),
        )?;
        Ok(Receipt { ack, report })
    }

    /// An operator denies (or allows again) a wallet. Readers see `reason`
    /// only; the free-text `note` stays in the hub's database.
    pub fn set_deny(
        &mut self,
        action: DenyAction,
        wallet: WalletId,
        reason: DenyReason,
        note: &str,
        now: u64,
    ) -> Result<DenyEntry, HubError> {
        let signer = IssuerSigner(&self.issuer);
        self.backend
            .set_deny(&signer, action, wallet, reason, note, now)
    }

    /// The newest deny-list version and the encoded entries after `since`.
    pub fn deny_entries(
        &mut self,
        since: u64,
        limit: u32,
    ) -> Result<(u64, Vec<Vec<u8>>), HubError> {
        self.backend.deny_entries(since, limit)
    }

    /// Time this hub's writes spent taking locks (PostgreSQL only).
    pub fn lock_waits(&self) -> Option<backend::LockWaits> {
        self.backend.lock_waits()
    }

    /// Totals, flags and incidents.
    pub fn report(&mut self) -> Result<Report, HubError> {
        self.backend.report()
    }

    /// Every reader with its last upload and report, the deny-list
    /// version, and the findings by kind (`hub readers`, metrics).
    pub fn fleet(&mut self) -> Result<fleet::Fleet, HubError> {
        self.backend.fleet()
    }

    /// Keeps `reader`'s report of itself, signed at (the reader's estimate
    /// of) hub time `signed_ms` and arrived at hub time `now_ms`
    /// (docs/sync.md §2.5), unless a report signed later is kept already
    /// (a replayed request changes nothing). Returns the hub's clock minus
    /// the reader's.
    pub fn record_report(
        &mut self,
        reader: &str,
        report: &StatusReport,
        signed_ms: u64,
        now_ms: u64,
    ) -> Result<i64, HubError> {
        report.check().map_err(HubError::Report)?;
        let offset = i128::from(now_ms) - i128::from(report.reader_ms);
        let offset = i64::try_from(offset).unwrap_or(if offset > 0 { i64::MAX } else { i64::MIN });
        let arrival = backend::Arrival {
            clock_offset_ms: offset,
            signed_ms,
            at_ms: now_ms,
        };
        self.backend.record_report(reader, report, &arrival)?;
        Ok(offset)
    }

    /// Suspensions for review with their evidence: those not cleared, or
    /// every one with `all`.
    pub fn review(&mut self, all: bool) -> Result<Review, HubError> {
        self.backend.review(all)
    }

    /// Runs `f` in one write transaction and returns what it returned.
    fn write<T>(
        &mut self,
        f: impl FnMut(&mut dyn ledger::Ledger) -> Result<T, HubError>,
    ) -> Result<T, HubError> {
        backend::write(&mut *self.backend, f)
    }

    /// Opens a rider's account (docs/accounts.md §1); `false` if it exists
    /// with the same terms already.
    pub fn open_account(&mut self, account: &Account) -> Result<bool, HubError> {
        self.write(|ledger| accounts::open(ledger, account))
    }

    /// Tops up an account or adjusts it, idempotently on `reference`.
    pub fn credit_account(
        &mut self,
        id: &str,
        kind: EntryKind,
        amount: i64,
        reference: &str,
        note: &str,
        now: u64,
    ) -> Result<accounts::Credited, HubError> {
        let signer = IssuerSigner(&self.issuer);
        backend::write(&mut *self.backend, |ledger| {
            let mut credited = accounts::credit(ledger, id, kind, amount, reference, note, now)?;
            // An adjustment that leaves the account in debt suspends it, as
            // a debt found by the clearing does (docs/accounts.md §4).
            if credited.added && amount < 0 {
                credited.suspended =
                    !accounts::settle_debts(ledger, &signer, &[id.to_owned()], now)?.is_empty();
            }
            Ok(credited)
        })
    }

    /// An account with its balance, exposure, phones, live credentials and
    /// a page of its ledger before entry `before` (0: the newest).
    pub fn account_view(
        &mut self,
        id: &str,
        before: u64,
        now: u64,
    ) -> Result<Option<AccountView>, HubError> {
        self.look(|ledger| accounts::view(ledger, id, before, now))
    }

    /// Accounts whose id or label contains `search` (any case), at most `limit`.
    pub fn accounts(&mut self, search: &str, limit: u32) -> Result<Vec<Account>, HubError> {
        self.look(|ledger| accounts::list(ledger, search, limit))
    }

    /// Runs `f`, which only reads accounts, in a transaction that holds up
    /// no ingest and no phone ([`backend::HubBackend::phone_transaction`]).
    fn look<T>(
        &mut self,
        mut f: impl FnMut(&mut dyn ledger::Ledger) -> Result<T, HubError>,
    ) -> Result<T, HubError> {
        let mut out = None;
        self.backend.phone_transaction(&mut |ledger| {
            out = Some(f(ledger)?);
            Ok(())
        })?;
        backend::ran(out)
    }

    /// Suspends, closes or reopens an account; its phones are denied or
    /// allowed again accordingly (the wallets whose entry changed).
    pub fn change_account(
        &mut self,
        id: &str,
        change: accounts::Change<'_>,
        now: u64,
    ) -> Result<Vec<WalletId>, HubError> {
        for (what, text) in [("--by", change.by), ("--reason", change.reason)] {
            if text.trim().is_empty()
                || text.len() > REVIEW_TEXT_MAX
                || text.chars().any(char::is_control)
            {
                return Err(HubError::Review(format!(
                    "{what} must say who or why, 1 to {REVIEW_TEXT_MAX} printable bytes"
                )));
            }
        }
        let signer = IssuerSigner(&self.issuer);
        backend::write(&mut *self.backend, |ledger| {
            let state = change.state;
            let changed = accounts::change_state(
                ledger,
                &signer,
                id,
                change,
                DenyReason::Operator,
                true,
                now,
            )?;
            // Reopened while its phones could spend more than it holds:
            // watched, so the clearing catches a debt (docs/accounts.md §4).
            if state == sonotap_protocol::wire::AccountState::Open {
                accounts::settle_debts(ledger, &signer, &[id.to_owned()], now)?;
            }
            Ok(changed)
        })
    }

    /// Makes a one-time enrolment code for an account, valid `life_secs`:
    /// the code (shown once; the hub keeps its hash) and its expiry.
    pub fn enrol_code(
        &mut self,
        id: &str,
        life_secs: u64,
        now: u64,
    ) -> Result<(String, u64), HubError> {
        let mut random = [0u8; 10];
        getrandom::fill(&mut random)
            .map_err(|e| HubError::Backend(format!("no randomness for a code: {e}")))?;
        let code = enrol_code(random);
        let hash = enrol_code_hash(&code);
        let expires = self.write(|ledger| accounts::add_code(ledger, id, &hash, life_secs, now))?;
        Ok((code, expires))
    }

    /// Answers a phone's checked request ([`check_wallet_request`]) in one
    /// transaction: its nonce is remembered (a replay is refused), then it
    /// is enrolled, renewed or given its statement, or told why not.
    pub fn answer_phone(
        &mut self,
        request: &WalletRequest,
        now_ms: u64,
    ) -> Result<Result<PhoneAnswer, Refusal>, HubError> {
        let mut answers = self.answer_phones(std::slice::from_ref(request), now_ms)?;
        backend::ran(answers.pop())
    }

    /// Answers phones' checked requests in one transaction, in order, as
    /// [`Hub::answer_phone`] answers each: what a commit costs (a sync of
    /// the log to disk) is shared by all of them. The accounts of the
    /// renewals and statements are locked first, in ascending order, so two
    /// writers' batches never wait for each other in a circle.
    pub fn answer_phones(
        &mut self,
        requests: &[WalletRequest],
        now_ms: u64,
    ) -> Result<Vec<Result<PhoneAnswer, Refusal>>, HubError> {
        let signer = IssuerSigner(&self.issuer);
        let issuer = accounts::Issuer {
            key_id: signer.key_id(),
            key: self.issuer.signing_key(),
            settle_secs: self.settle_secs,
        };
        // Old nonces are forgotten in a transaction of their own, every
        // `NONCE_SWEEP`-th call, so that no phone's transaction deletes rows
        // another one may be locking.
        self.phone_calls = self.phone_calls.wrapping_add(1);
        if self.phone_calls % NONCE_SWEEP == 1 {
            let before = now_ms.saturating_sub(NONCE_MEMORY_MS);
            self.backend
                .phone_transaction(&mut |ledger| book::forget_nonces(ledger, before).map(drop))?;
        }
        let mut out = Vec::new();
        self.backend.phone_transaction(&mut |ledger| {
            out.clear();
            // Accounts first, then nonces, whatever the batch's size: the
            // same order as every other batch.
            let mut accounts = Vec::with_capacity(requests.len());
            for r in requests {
                accounts.push(match r.ask {
                    WalletAsk::Enrol { .. } => None,
                    _ => book::wallet_account(ledger, r.wallet())?,
                });
            }
            let ids: Vec<String> = accounts.iter().flatten().cloned().collect();
            book::lock_accounts(ledger, &ids)?;
            for (request, account) in requests.iter().zip(&accounts) {
                out.push(answer_one(
                    ledger,
                    &issuer,
                    request,
                    account.as_deref(),
                    now_ms,
                )?);
            }
            Ok(())
        })?;
        Ok(out)
    }

    /// An operator lifts the open suspensions of `target` (one credential,
    /// or every one of a wallet) after reviewing them: a signed allow entry
    /// each, and who, when and why kept with the suspension. `by` and
    /// `note` must say something (at most [`REVIEW_TEXT_MAX`] bytes each).
    pub fn clear(
        &mut self,
        target: ClearTarget,
        by: &str,
        note: &str,
        now: u64,
    ) -> Result<Vec<Cleared>, HubError> {
        for (what, text) in [("--by", by), ("--note", note)] {
            if text.trim().is_empty() || text.len() > REVIEW_TEXT_MAX {
                return Err(HubError::Review(format!(
                    "{what} must name who and why, 1 to {REVIEW_TEXT_MAX} bytes"
                )));
            }
            if text.chars().any(char::is_control) {
                return Err(HubError::Review(format!(
                    "{what} holds a control character"
                )));
            }
        }
        let signer = IssuerSigner(&self.issuer);
        let clearance = Clearance { by, note, at: now };
        self.backend.clear(&signer, target, &clearance)
    }
}

/// A new issuer key written to `pending` (synced, so that the database
/// never registers a key that a power cut could take back).
fn new_pending_key(pending: &Path, key_id: u8) -> Result<SecretKey, HubError> {
    let key = SecretKey::generate(Role::Issuer, Some(key_id)).map_err(|source| HubError::Io {
        path: pending.into(),
        source,
    })?;
    key.write_new(pending)?;
    Ok(key)
}
