//! A phone wallet simulator: holds a wallet key and a credential, and makes
//! payment tokens with a strictly increasing counter and a running total.
//!
//! Layout of `W/`: `wallet.key` (0600), `wallet.pub` and `wallet.toml`:
//! the counter, the running total and the credential they belong to (its
//! 115 bytes), in one file replaced atomically (write a temporary, fsync,
//! rename, fsync the directory). The state is written *before* a token is
//! handed out, so a crash can skip a counter but never reuse one; and a
//! credential never lands without its running total, so a power cut during
//! `add-credential` leaves the old credential with its total or the new one
//! with its own, and running it again converges.
//!
//! `wallet.toml` is also what makes a directory a wallet: `wallet new`
//! writes it last, and nothing signs without it, so a key left without it
//! by an interrupted `wallet new` never signed anything and the next `wallet
//! new` replaces it.
//!
//! Older wallets kept the credential in a separate `credential` file, renamed
//! into place before the state was rewritten. They are read as they are (if
//! the file and the state name different credentials, the file wins and the
//! running total is kept, since tokens under the file's credential may carry
//! that total) and migrated on the next write, which removes the file.
//!
//! Online (issue 18), the wallet enrols with an operator's one-time code,
//! renews its credential and fetches its account statement from the hub
//! ([`HubClient`]). `wallet.toml` then also keeps the hub's URL and the
//! issuer key learned from the first online renewal (trusted as the HTTPS
//! connection it came over is), which every later renewal and statement
//! must be signed by.
//!
//! Like an honest phone, it refuses to sign a payment that every reader
//! would decline (over the per-payment cap, over what is left of the offline
//! limit, outside the credential's validity): such a token would only count
//! against the rider's allowance. [`Wallet::pay_forced`] signs it anyway, for
//! tests and demos that show the reader's declines.

#![deny(missing_docs)]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use sonotap_disk::fsutil;
use sonotap_disk::keys::{KeyFileError, PublicKey, Role, SecretKey};
use sonotap_protocol::beacon::Beacon;
use sonotap_protocol::policy::{Reason, TrustedKeys};
use sonotap_protocol::token::{
    Credential, CredentialTerms, FormatError, PaymentTerms, SignError, Token, WalletId,
};
use sonotap_protocol::wire::{RenewalNote, Renewed, WalletAsk, WalletRequest, WireError};

mod hub_url;
mod online;

pub use hub_url::{EnrolInput, check_hub_url, parse_enrol_input};
pub use online::{Enrolled, HUB_ANSWER_LIMIT, HUB_TIMEOUT, HubClient, HubOptions, OnlineError};

/// Secret key file name.
pub const KEY_FILE: &str = "wallet.key";
/// Public key file name.
pub const PUB_FILE: &str = "wallet.pub";
/// Where older wallets kept the credential; read and migrated, no longer written.
pub const CREDENTIAL_FILE: &str = "credential";
/// State file name.
pub const STATE_FILE: &str = "wallet.toml";
/// What `hub issue --out CRED` appends to CRED's name for the renewal note
/// beside it, and where `wallet add-credential CRED` looks for one.
pub const RENEWAL_SUFFIX: &str = ".renewal";

/// A renewal that grants less than the current credential has left is set
/// aside while the current one is valid this much longer (seconds after
/// the new credential's start, which is a few minutes before the hub
/// issued it).
pub const KEEP_CURRENT_SECS: u64 = 3600 + 300;

/// `wallet.toml`: what the wallet must remember between payments.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WalletState {
    /// The last counter used (0: none yet).
    pub counter: u32,
    /// Running total authorised under the current credential.
    pub running_total: u32,
    /// SHA-256 (hex) of the credential the running total belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
    /// That credential's 115 bytes (hex): the credential and its running
    /// total are one atomic write. Absent in older wallets, whose credential
    /// is in a separate file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential_bytes: Option<String>,
    /// The hub's base URL this wallet enrolled with, for renewals and
    /// statements that name no other. Absent before enrolment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hub: Option<String>,
    /// The issuer key learned from the first online renewal; every later
    /// renewal and statement must be signed by it. Absent before then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<TrustedIssuer>,
}

/// `[issuer]` in `wallet.toml`: the one issuer key a wallet trusts online.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustedIssuer {
    /// The issuer key id credentials name.
    pub key_id: u8,
    /// The Ed25519 public key, 64 hex digits.
    pub public_key: String,
}

impl TrustedIssuer {
    fn new(key_id: u8, key: &[u8; 32]) -> Self {
        Self {
            key_id,
            public_key: hex::encode(key),
        }
    }

    /// The key, or why the stored text is not one.
    fn key(&self) -> Result<VerifyingKey, String> {
        let bytes = hex::decode(&self.public_key)
            .ok()
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .ok_or("issuer.public_key is not 64 hex digits")?;
        VerifyingKey::from_bytes(&bytes)
            .map_err(|_| "issuer.public_key is not a valid Ed25519 key".to_string())
    }
}

/// Why the wallet cannot do what was asked.
#[derive(Debug, Error)]
pub enum WalletError {
    /// A key file problem.
    #[error(transparent)]
    Key(#[from] KeyFileError),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
    /// The state file is damaged.
    #[error("wallet state {path} is damaged: {detail}")]
    State {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// A credential file that does not parse.
    #[error("credential {path} is not a v1 credential: {source}")]
    BadCredential {
        /// The file.
        path: PathBuf,
        /// Why.
        source: FormatError,
    },
    /// A credential issued to another wallet key.
    #[error("credential {path} was issued to wallet {issued_to}, not to this wallet ({this})")]
    NotOurs {
        /// The file.
        path: PathBuf,
        /// The wallet it names.
        issued_to: WalletId,
        /// This wallet.
        this: WalletId,
    },
    /// A renewal note that is not the hub's word on this credential.
    #[error(
        "renewal note {path} cannot be used with this credential: {source}; nothing was \
         installed (ask the operator for the credential and its note again)"
    )]
    BadRenewal {
        /// The note file.
        path: PathBuf,
        /// Why.
        source: WireError,
    },
    /// The hub's renewal answer does not verify: nothing was installed.
    #[error("the hub's renewal cannot be used: {source}; nothing was installed")]
    BadRenewed {
        /// Why.
        source: WireError,
    },
    /// A renewal signed by another issuer key than the one this wallet
    /// learned at its first renewal.
    #[error(
        "the hub's renewal is signed by issuer key {offered_id} ({offered}), but this wallet \
         trusts issuer key {trusted_id} ({trusted}), learned at its first renewal; nothing \
         was installed (is this your operator's hub? if the operator has announced a new \
         issuer key, make a new wallet with `sonotap wallet new` and enrol it)"
    )]
    IssuerChanged {
        /// The key id trusted.
        trusted_id: u8,
        /// The key trusted, hex.
        trusted: String,
        /// The key id offered.
        offered_id: u8,
        /// The key offered, hex.
        offered: String,
    },
    /// A renewal answer older than the credential in use: a recorded
    /// answer played back (it would restart the running total under a
    /// credential already spent from).
    #[error(
        "the hub's renewal holds a credential valid from {offered}, older than the one in use \
         (valid from {current}); nothing was installed (renew again)"
    )]
    StaleRenewal {
        /// Start of validity of the credential offered.
        offered: u32,
        /// Start of validity of the credential in use.
        current: u32,
    },
    /// A request to the hub that cannot be made (an enrolment code that is
    /// not canonical).
    #[error("cannot make the request to the hub: {source}")]
    Request {
        /// Why.
        source: WireError,
    },
    /// Paying needs a credential first.
    #[error("the wallet has no credential yet (`sonotap wallet add-credential`)")]
    NoCredential,
    /// The counter or the running total would overflow.
    #[error("{0}; the wallet must go online for a new key and credential")]
    Exhausted(&'static str),
    /// Signing refused the payment terms.
    #[error("cannot sign the payment: {0}")]
    Sign(#[from] SignError),
    /// `new` on a directory that already holds a wallet.
    #[error("{path} already holds a wallet; refusing to replace its key")]
    AlreadyExists {
        /// The directory.
        path: PathBuf,
    },
    /// `new` on a directory that lost its `wallet.toml` after paying: its
    /// key may have signed payments, so it is not replaced.
    #[error(
        "{path} has a credential but no wallet.toml: its key may have signed payments, so \
         `wallet new` will not replace it; restore wallet.toml from a backup, or move the \
         directory away and start a new wallet"
    )]
    StateLost {
        /// The directory.
        path: PathBuf,
    },
    /// Every reader would decline this payment; nothing was signed and the
    /// counter and running total are unchanged.
    #[error(
        "refusing to sign: {} (a reader would decline it: {}); nothing was signed, \
         the counter and running total are unchanged",
        .0.detail, .0.reason
    )]
    WouldBeDeclined(Refusal),
}

/// A reason every reader would decline a payment, known to the wallet
/// before it signs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The decline reason a reader would give.
    pub reason: Reason,
    /// What is wrong, in words.
    pub detail: String,
}

/// The reader checks a wallet can run on its own payment, in the readers'
/// order (docs/protocol.md §4): validity at the token's time, the per-payment
/// cap, and the offline limit against the wallet's own running total. Scope
/// and the reader's deny list, counters and clock are the reader's to know.
/// Empty when no reader is bound to decline the payment.
pub fn would_decline(
    terms: &CredentialTerms,
    running_total: u32,
    request: &PayRequest,
) -> Vec<Refusal> {
    let mut found = Vec::new();
    let at = u64::from(request.at);
    if at < u64::from(terms.valid_from) {
        found.push(Refusal {
            reason: Reason::CredentialNotYetValid,
            detail: format!(
                "the credential is valid from {}, after the payment time {at}",
                terms.valid_from
            ),
        });
    } else if at >= terms.valid_until() {
        found.push(Refusal {
            reason: Reason::CredentialExpired,
            detail: format!(
                "the credential's validity ended at {} and the payment time is {at}; \
                 go online for a new credential",
                terms.valid_until()
            ),
        });
    }
    if request.amount > terms.per_payment_cap {
        found.push(Refusal {
            reason: Reason::OverPaymentCap,
            detail: format!(
                "amount {} is over the credential's per-payment cap {}",
                request.amount, terms.per_payment_cap
            ),
        });
    }
    let total_after = u64::from(running_total) + u64::from(request.amount);
    if total_after > u64::from(terms.offline_limit) {
        found.push(Refusal {
            reason: Reason::OverOfflineLimit,
            detail: format!(
                "amount {} is over what is left of the offline limit: {} of {} already \
                 authorised under this credential, {} left",
                request.amount,
                running_total,
                terms.offline_limit,
                terms.offline_limit.saturating_sub(running_total)
            ),
        });
    }
    found
}

/// What one payment asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PayRequest {
    /// Amount to authorise, minor units (at least 1).
    pub amount: u32,
    /// Token time, Unix seconds.
    pub at: u32,
    /// Reader to bind the token to, or 0 for any reader (version 1).
    pub reader_tag: u32,
    /// The gate beacon heard: a version-2 token bound to its gate and
    /// challenge is made instead (`reader_tag` is then ignored, and `at`
    /// should be the gate's time: the beacon's plus the seconds since).
    pub gate: Option<Beacon>,
}

/// A token and what the wallet noticed while making it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payment {
    /// The signed token.
    pub token: Token,
    /// Why every reader will decline it (only from [`Wallet::pay_forced`]).
    pub warnings: Vec<String>,
}

/// What [`Wallet::install`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Installed {
    /// The credential now in use.
    pub credential: Credential,
    /// The hub's highest cleared counter, from the renewal note, if one came.
    pub highest_cleared_counter: Option<u32>,
    /// The last counter used before.
    pub counter_before: u32,
    /// The last counter used now: the next token carries one more.
    pub counter: u32,
}

/// The renewal note `hub issue` wrote beside the credential file `path`
/// (`PATH.renewal`), if there is one.
pub fn renewal_beside(path: &Path) -> Option<PathBuf> {
    let mut beside = path.as_os_str().to_owned();
    beside.push(RENEWAL_SUFFIX);
    let beside = PathBuf::from(beside);
    beside.exists().then_some(beside)
}

/// Reads and checks a renewal note for `credential`; its counter.
fn read_note(path: &Path, credential: &Credential) -> Result<u32, WalletError> {
    let bytes = sonotap_disk::fsutil::read_regular_file_capped(path, 4096).map_err(|e| {
        WalletError::Io {
            path: path.into(),
            source: io::Error::other(e),
        }
    })?;
    let bad = |source| WalletError::BadRenewal {
        path: path.into(),
        source,
    };
    let note = RenewalNote::decode(&bytes).map_err(bad)?;
    note.verify(credential).map_err(bad)?;
    Ok(note.highest_cleared_counter)
}

/// An open wallet directory.
pub struct Wallet {
    dir: PathBuf,
    key: SecretKey,
    credential: Option<Credential>,
    state: WalletState,
    /// `state.issuer`, parsed: empty, or the one key trusted online.
    trusted: TrustedKeys,
}

impl Wallet {
    /// Creates a wallet directory with a fresh key.
    ///
    /// `wallet.toml` is the commit point: it is written last, and a directory
    /// that has it holds a wallet and is refused. Without it, what an
    /// interrupted `new` left (a key of any length, the public key,
    /// temporaries) never signed anything, since paying needs `wallet.toml`,
    /// and is replaced. A `credential` file without `wallet.toml` is the
    /// exception ([`WalletError::StateLost`]): an older wallet that lost its
    /// state after paying.
    pub fn create(dir: &Path) -> Result<Self, WalletError> {
        if dir.join(STATE_FILE).exists() {
            return Err(WalletError::AlreadyExists { path: dir.into() });
        }
        if dir.join(CREDENTIAL_FILE).exists() {
            return Err(WalletError::StateLost { path: dir.into() });
        }
        let io_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| WalletError::Io { path, source }
        };
        fsutil::create_private_dir(dir).map_err(io_err(dir))?;
        for leftover in [KEY_FILE, PUB_FILE] {
            let path = dir.join(leftover);
            remove_if_present(&path).map_err(io_err(&path))?;
        }
        for replaced in [PUB_FILE, STATE_FILE] {
            let path = dir.join(replaced);
            fsutil::remove_stale_temporaries(&path).map_err(io_err(&path))?;
        }
        let key = SecretKey::generate(Role::Wallet, None).map_err(io_err(dir))?;
        key.write_new(&dir.join(KEY_FILE))?;
        key.public().write(&dir.join(PUB_FILE))?;
        let wallet = Self {
            dir: dir.into(),
            key,
            credential: None,
            state: WalletState::default(),
            trusted: TrustedKeys::default(),
        };
        wallet.save_state()?;
        Ok(wallet)
    }

    /// Opens an existing wallet directory.
    pub fn open(dir: &Path) -> Result<Self, WalletError> {
        let state_path = dir.join(STATE_FILE);
        let text = fs::read_to_string(&state_path).map_err(|source| match source.kind() {
            io::ErrorKind::NotFound => WalletError::State {
                path: state_path.clone(),
                detail: "not found; is this a wallet directory? (`sonotap wallet new` makes \
                         one, and may be run again after an interrupted one)"
                    .into(),
            },
            _ => WalletError::Io {
                path: state_path.clone(),
                source,
            },
        })?;
        let key = SecretKey::read(&dir.join(KEY_FILE), Role::Wallet)?;
        let mut state: WalletState = toml::from_str(&text).map_err(|e| WalletError::State {
            path: state_path.clone(),
            detail: e.message().to_string(),
        })?;
        let this = WalletId::of_key(&key.public().to_bytes());
        let credential = match &state.credential_bytes {
            Some(hex) => Some(embedded_credential(&state_path, &state, hex)?),
            None => legacy_credential(&dir.join(CREDENTIAL_FILE))?,
        };
        if let Some(credential) = &credential {
            let issued_to = credential.terms.wallet_id();
            if issued_to != this {
                return Err(WalletError::NotOurs {
                    path: state_path,
                    issued_to,
                    this,
                });
            }
            // An older wallet whose state names another credential than its
            // file (a cut between the two writes): the file wins, and the
            // running total stays, since tokens under the file's credential
            // may already carry it. The next write makes it one file.
            state.credential = Some(hex::encode(credential.digest()));
            state.credential_bytes = Some(hex::encode(credential.encode()));
        }
        let mut trusted = TrustedKeys::default();
        if let Some(issuer) = &state.issuer {
            let key = issuer.key().map_err(|detail| WalletError::State {
                path: state_path.clone(),
                detail,
            })?;
            trusted.insert(issuer.key_id, key);
        }
        Ok(Self {
            dir: dir.into(),
            key,
            credential,
            state,
            trusted,
        })
    }

    /// This wallet's id.
    pub fn id(&self) -> WalletId {
        WalletId::of_key(&self.key.public().to_bytes())
    }

    /// This wallet's public key.
    pub fn public_key(&self) -> PublicKey {
        self.key.public()
    }

    /// The credential in use, if any.
    pub fn credential(&self) -> Option<&Credential> {
        self.credential.as_ref()
    }

    /// The counter and running total.
    pub fn state(&self) -> &WalletState {
        &self.state
    }

    /// The issuer key this wallet trusts online (empty before its first
    /// online renewal): what a statement must be signed by.
    pub fn trusted_keys(&self) -> &TrustedKeys {
        &self.trusted
    }

    /// The hub this wallet enrolled with, if it has.
    pub fn hub(&self) -> Option<&str> {
        self.state.hub.as_deref()
    }

    /// Remembers `url` as the hub this wallet enrolled with.
    pub fn remember_hub(&mut self, url: &str) -> Result<(), WalletError> {
        if self.state.hub.as_deref() == Some(url) {
            return Ok(());
        }
        let state = WalletState {
            hub: Some(url.to_owned()),
            ..self.state.clone()
        };
        write_state(&self.dir, &state)?;
        self.state = state;
        Ok(())
    }

    /// A request to the hub, signed by this wallet's key, stamped with the
    /// hub's time as the phone estimates it (Unix milliseconds) and
    /// `nonce` (16 fresh random bytes). An enrolment code must be
    /// canonical ([`sonotap_protocol::wire::normalise_enrol_code`]).
    pub fn request(
        &self,
        ask: WalletAsk,
        hub_time_ms: u64,
        nonce: [u8; 16],
    ) -> Result<WalletRequest, WalletError> {
        WalletRequest::sign(ask, hub_time_ms, nonce, self.key.signing_key())
            .map_err(|source| WalletError::Request { source })
    }

    /// Installs a credential from a file, with the renewal note beside it
    /// (`PATH.renewal`) if there is one ([`Wallet::install`]).
    pub fn add_credential(&mut self, path: &Path) -> Result<Credential, WalletError> {
        let note = renewal_beside(path);
        Ok(self.install(path, note.as_deref())?.credential)
    }

    /// Installs a credential from a file. A new credential starts a new
    /// running total; the counter never restarts. Installing the credential
    /// in use again changes nothing (the running total is kept), so running
    /// it again after an interruption is safe.
    ///
    /// With a renewal note (`note`, checked against the credential: it must
    /// name it and be signed by the key that signed it), the counter moves
    /// up to the highest counter the hub has cleared for this wallet, never
    /// down: a phone restored from a backup then reuses no counter the hub
    /// holds. The counter and the credential are one atomic write.
    pub fn install(&mut self, path: &Path, note: Option<&Path>) -> Result<Installed, WalletError> {
        // A credential is 115 bytes; a FIFO or a device is refused unread.
        let bytes =
            sonotap_disk::fsutil::read_regular_file_capped(path, 64 * 1024).map_err(|e| {
                WalletError::Io {
                    path: path.into(),
                    source: io::Error::other(e),
                }
            })?;
        let credential =
            Credential::decode(&bytes).map_err(|source| WalletError::BadCredential {
                path: path.into(),
                source,
            })?;
        let issued_to = credential.terms.wallet_id();
        if issued_to != self.id() {
            return Err(WalletError::NotOurs {
                path: path.into(),
                issued_to,
                this: self.id(),
            });
        }
        let floor = match note {
            Some(note) => Some(read_note(note, &credential)?),
            None => None,
        };
        self.commit(credential, floor, None)
    }

    /// Installs the credential of the hub's answer to an online renewal,
    /// as [`Wallet::install`] does with a renewal note: the counter moves
    /// up to the note's highest cleared counter, a new credential starts a
    /// new running total, and the credential in use again keeps its total.
    ///
    /// The answer must be for this wallet and signed, credential and note,
    /// by the issuer key this wallet trusts; the first one is trusted as
    /// the connection it came over is, and its key is kept (in the same
    /// atomic write) for every later renewal and statement.
    pub fn install_renewed(&mut self, renewed: &Renewed) -> Result<Installed, WalletError> {
        let offered = (renewed.note.key_id, renewed.note.issuer_key);
        if let Err(source) = renewed.verify(&self.key.public().to_bytes(), &self.trusted) {
            // Say which key when that is what is wrong: the advice differs.
            return Err(match self.trusted.iter().next() {
                Some((id, key)) if (id, key.to_bytes()) != offered => WalletError::IssuerChanged {
                    trusted_id: id,
                    trusted: hex::encode(key.to_bytes()),
                    offered_id: offered.0,
                    offered: hex::encode(offered.1),
                },
                _ => WalletError::BadRenewed { source },
            });
        }
        let mut credential = renewed.credential;
        if let Some(current) = self.credential
            && current != renewed.credential
        {
            if renewed.credential.terms.valid_from < current.terms.valid_from {
                return Err(WalletError::StaleRenewal {
                    offered: renewed.credential.terms.valid_from,
                    current: current.terms.valid_from,
                });
            }
            // Only the phone knows what it has spent: a new credential that
            // grants less than the current one has left (the hub had little
            // headroom) would take allowance away, so the current one stays
            // while it lasts another hour (the note still moves the counter).
            let left = current
                .terms
                .offline_limit
                .saturating_sub(self.state.running_total);
            let lasts = current.terms.valid_until()
                > u64::from(renewed.credential.terms.valid_from) + KEEP_CURRENT_SECS;
            if lasts && left > renewed.credential.terms.offline_limit {
                credential = current;
            }
        }
        self.commit(
            credential,
            Some(renewed.note.highest_cleared_counter),
            Some(TrustedIssuer::new(offered.0, &offered.1)),
        )
    }

    /// Trusts the issuer key the hub named when this wallet enrolled, if
    /// it trusts none yet (as its first renewal would): its statements can
    /// then be checked before it holds a credential. A key other than the
    /// one trusted is refused ([`WalletError::IssuerChanged`]).
    pub fn trust_issuer(&mut self, key_id: u8, key: &[u8; 32]) -> Result<(), WalletError> {
        if let Some((id, trusted)) = self.trusted.iter().next() {
            if (id, trusted.to_bytes()) == (key_id, *key) {
                return Ok(());
            }
            return Err(WalletError::IssuerChanged {
                trusted_id: id,
                trusted: hex::encode(trusted.to_bytes()),
                offered_id: key_id,
                offered: hex::encode(key),
            });
        }
        let issuer = TrustedIssuer::new(key_id, key);
        let verifying = issuer.key().map_err(|detail| WalletError::State {
            path: self.dir.join(STATE_FILE),
            detail,
        })?;
        let state = WalletState {
            issuer: Some(issuer),
            ..self.state.clone()
        };
        write_state(&self.dir, &state)?;
        self.state = state;
        self.trusted.insert(key_id, verifying);
        Ok(())
    }

    /// Puts `credential` in use, the counter at least `floor`, trusting
    /// `issuer` if given: one atomic write, none if nothing changes.
    fn commit(
        &mut self,
        credential: Credential,
        floor: Option<u32>,
        issuer: Option<TrustedIssuer>,
    ) -> Result<Installed, WalletError> {
        let trusted = match &issuer {
            Some(issuer) => {
                let key = issuer.key().map_err(|detail| WalletError::State {
                    path: self.dir.join(STATE_FILE),
                    detail,
                })?;
                let mut trusted = TrustedKeys::default();
                trusted.insert(issuer.key_id, key);
                trusted
            }
            None => self.trusted.clone(),
        };
        let mut state = self.state.clone();
        let digest = hex::encode(credential.digest());
        if state.credential.as_deref() != Some(digest.as_str()) {
            state.running_total = 0;
        }
        state.credential = Some(digest);
        state.credential_bytes = Some(hex::encode(credential.encode()));
        let counter_before = state.counter;
        if let Some(floor) = floor {
            state.counter = state.counter.max(floor);
        }
        if issuer.is_some() {
            state.issuer = issuer;
        }
        if state != self.state || self.dir.join(CREDENTIAL_FILE).exists() {
            write_state(&self.dir, &state)?;
            self.state = state;
        }
        self.trusted = trusted;
        self.credential = Some(credential);
        Ok(Installed {
            credential,
            highest_cleared_counter: floor,
            counter_before,
            counter: self.state.counter,
        })
    }

    /// Makes a token. The new counter and running total are on disk before
    /// this returns the token.
    ///
    /// A payment that every reader would decline ([`would_decline`]) is
    /// refused with [`WalletError::WouldBeDeclined`] before anything is
    /// signed or counted.
    pub fn pay(&mut self, request: PayRequest) -> Result<Payment, WalletError> {
        let credential = self.credential.ok_or(WalletError::NoCredential)?;
        if let Some(refusal) = would_decline(&credential.terms, self.state.running_total, &request)
            .into_iter()
            .next()
        {
            return Err(WalletError::WouldBeDeclined(refusal));
        }
        self.sign(credential, request)
    }

    /// Makes a token even when every reader will decline it, for tests and
    /// demos of the reader's declines; [`Payment::warnings`] says why. It is
    /// counted like any other: the counter advances and the amount joins the
    /// running total (a token once signed may be presented, so the wallet
    /// holds itself to it).
    pub fn pay_forced(&mut self, request: PayRequest) -> Result<Payment, WalletError> {
        let credential = self.credential.ok_or(WalletError::NoCredential)?;
        let mut payment = self.sign(credential, request)?;
        payment.warnings = would_decline(
            &credential.terms,
            payment.token.payment.total_before,
            &request,
        )
        .into_iter()
        .map(|refusal| format!("{} ({})", refusal.detail, refusal.reason))
        .collect();
        Ok(payment)
    }

    fn sign(
        &mut self,
        credential: Credential,
        request: PayRequest,
    ) -> Result<Payment, WalletError> {
        let counter = self
            .state
            .counter
            .checked_add(1)
            .ok_or(WalletError::Exhausted("the payment counter is used up"))?;
        let total_before = self.state.running_total;
        let total_after = total_before
            .checked_add(request.amount)
            .ok_or(WalletError::Exhausted("the running total would overflow"))?;
        let payment = PaymentTerms {
            amount: request.amount,
            counter,
            total_before,
            timestamp: request.at,
            reader_tag: request.reader_tag,
        };
        let token = match request.gate {
            None => Token::sign(credential, payment, self.key.signing_key())?,
            Some(beacon) => Token::sign_for_gate(
                credential,
                payment,
                beacon.reader_tag,
                &beacon.challenge,
                self.key.signing_key(),
            )?,
        };
        self.state.counter = counter;
        self.state.running_total = total_after;
        self.save_state()?;
        Ok(Payment {
            token,
            warnings: Vec::new(),
        })
    }

    fn save_state(&self) -> Result<(), WalletError> {
        write_state(&self.dir, &self.state)
    }
}

/// Replaces `W/wallet.toml` atomically. Once the state holds the credential,
/// an older wallet's separate credential file is stale and removed (best
/// effort: a leftover is ignored, since the state's copy wins).
fn write_state(dir: &Path, state: &WalletState) -> Result<(), WalletError> {
    let path = dir.join(STATE_FILE);
    let text = toml::to_string(state).map_err(|e| WalletError::State {
        path: path.clone(),
        detail: e.to_string(),
    })?;
    fsutil::replace_atomic(&path, text.as_bytes(), 0o600)
        .map_err(|source| WalletError::Io { path, source })?;
    if state.credential_bytes.is_some() {
        let _ = remove_if_present(&dir.join(CREDENTIAL_FILE));
    }
    Ok(())
}

/// The credential kept in the state, checked against the digest beside it.
fn embedded_credential(
    state_path: &Path,
    state: &WalletState,
    text: &str,
) -> Result<Credential, WalletError> {
    let damaged = |detail: String| WalletError::State {
        path: state_path.into(),
        detail,
    };
    let bytes =
        hex::decode(text).map_err(|e| damaged(format!("credential_bytes is not hex: {e}")))?;
    let credential = Credential::decode(&bytes).map_err(|source| WalletError::BadCredential {
        path: state_path.into(),
        source,
    })?;
    let digest = hex::encode(credential.digest());
    if state.credential.as_deref() != Some(digest.as_str()) {
        return Err(damaged(format!(
            "credential {} does not match credential_bytes (digest {digest})",
            state.credential.as_deref().unwrap_or("(none)")
        )));
    }
    Ok(credential)
}

/// An older wallet's separate credential file, if there is one.
fn legacy_credential(path: &Path) -> Result<Option<Credential>, WalletError> {
    match fs::read(path) {
        Ok(bytes) => {
            Credential::decode(&bytes)
                .map(Some)
                .map_err(|source| WalletError::BadCredential {
                    path: path.into(),
                    source,
                })
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(WalletError::Io {
            path: path.into(),
            source,
        }),
    }
}

fn remove_if_present(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sonotap_protocol::testkit::{self, NOW};

    /// A wallet in `dir` (a fresh directory under a temporary one).
    fn new_wallet() -> (tempfile::TempDir, PathBuf, Wallet) {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("w");
        let wallet = Wallet::create(&dir).expect("create");
        (tmp, dir, wallet)
    }

    /// A new wallet holding one credential from [`credential_for`].
    fn wallet_with_credential() -> (tempfile::TempDir, PathBuf, Wallet, Credential) {
        let (tmp, dir, mut wallet) = new_wallet();
        let cred = credential_for(&wallet, 0);
        wallet
            .add_credential(&write_credential(&dir, "c", &cred))
            .expect("add");
        (tmp, dir, wallet, cred)
    }

    /// A credential for `wallet` (limit 1000, cap 400, valid a day from an
    /// hour before NOW), `tag` varying the validity so that two differ.
    fn credential_for(wallet: &Wallet, tag: u16) -> Credential {
        let terms = CredentialTerms {
            wallet_key: wallet.public_key().to_bytes(),
            offline_limit: 1_000,
            per_payment_cap: 400,
            valid_hours: 24 + tag,
            ..testkit::terms()
        };
        terms.sign(&testkit::issuer()).expect("terms")
    }

    fn write_credential(dir: &Path, name: &str, credential: &Credential) -> PathBuf {
        let path = dir.with_file_name(name);
        fs::write(&path, credential.encode()).expect("write credential");
        path
    }

    fn request(amount: u32, at: u64) -> PayRequest {
        PayRequest {
            amount,
            at: at as u32,
            reader_tag: 0,
            gate: None,
        }
    }

    fn refusal(result: Result<Payment, WalletError>) -> Reason {
        match result {
            Err(WalletError::WouldBeDeclined(refusal)) => refusal.reason,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn issue13_14_payment_over_the_cap_is_refused_uncounted_and_the_next_one_chains() {
        let (_tmp, dir, mut wallet, _) = wallet_with_credential();
        wallet.pay(request(300, NOW)).expect("300");
        let before = fs::read(dir.join(STATE_FILE)).expect("state");
        assert_eq!(
            refusal(wallet.pay(request(500, NOW))),
            Reason::OverPaymentCap
        );
        assert_eq!(fs::read(dir.join(STATE_FILE)).expect("state"), before);
        assert_eq!(
            (wallet.state().counter, wallet.state().running_total),
            (1, 300)
        );
        let next = wallet
            .pay(request(400, NOW))
            .expect("400 fits: 300 + 400 <= 1000");
        assert_eq!(
            (next.token.payment.counter, next.token.payment.total_before),
            (2, 300)
        );
        assert!(next.warnings.is_empty());
    }

    #[test]
    fn issue13_14_payment_over_the_remaining_allowance_or_outside_validity_is_refused() {
        let (_tmp, _, mut wallet, cred) = wallet_with_credential();
        for _ in 0..2 {
            wallet.pay(request(400, NOW)).expect("400");
        }
        // 800 spent: 201 is over what is left, 200 is exactly what is left.
        assert_eq!(
            refusal(wallet.pay(request(201, NOW))),
            Reason::OverOfflineLimit
        );
        let expired = cred.terms.valid_until();
        assert_eq!(
            refusal(wallet.pay(request(1, expired))),
            Reason::CredentialExpired
        );
        let early = u64::from(cred.terms.valid_from) - 1;
        assert_eq!(
            refusal(wallet.pay(request(1, early))),
            Reason::CredentialNotYetValid
        );
        assert_eq!(
            (wallet.state().counter, wallet.state().running_total),
            (2, 800)
        );
        let last = wallet
            .pay(request(200, expired - 1))
            .expect("the last second");
        assert_eq!(last.token.payment.total_before, 800);
    }

    #[test]
    fn issue13_14_a_forced_payment_is_signed_with_warnings_and_counted() {
        let (_tmp, _, mut wallet, _) = wallet_with_credential();
        let forced = wallet.pay_forced(request(500, NOW)).expect("forced");
        assert_eq!(forced.warnings.len(), 1, "{:?}", forced.warnings);
        assert!(forced.warnings[0].contains("over_payment_cap"));
        assert_eq!(
            (wallet.state().counter, wallet.state().running_total),
            (1, 500)
        );
        let honest = wallet.pay_forced(request(100, NOW)).expect("fine");
        assert!(honest.warnings.is_empty());
    }

    /// The on-disk states a power cut can leave around `add-credential`,
    /// by the old writer (credential file renamed first, then the state)
    /// and by the new one (one state file through a temporary).
    #[derive(Debug, Clone, Copy)]
    enum Cut {
        /// Nothing of the new credential written.
        Before,
        /// New writer: a 0-byte temporary beside the old state.
        EmptyTemporary,
        /// New writer: the complete new state in a temporary, not renamed.
        FullTemporary,
        /// New writer: done (a retry must be a no-op).
        After,
        /// Old writer: the new credential file in place, the old state.
        LegacyFileOnly,
        /// Old writer cut as above, then an old binary paid 20 under the
        /// new credential with the old total before the retry.
        LegacyFileOnlyThenPaid,
        /// Old writer: both written (old layout, complete).
        LegacyAfter,
        /// New layout with the old credential file not yet removed.
        StaleLegacyFile,
    }

    const CUTS: [Cut; 8] = [
        Cut::Before,
        Cut::EmptyTemporary,
        Cut::FullTemporary,
        Cut::After,
        Cut::LegacyFileOnly,
        Cut::LegacyFileOnlyThenPaid,
        Cut::LegacyAfter,
        Cut::StaleLegacyFile,
    ];

    /// Old layout: `wallet.toml` without the credential, plus the file.
    fn write_legacy(dir: &Path, state: &WalletState, file: &Credential) {
        let state = WalletState {
            credential_bytes: None,
            ..state.clone()
        };
        let text = toml::to_string(&state).expect("toml");
        fs::write(dir.join(STATE_FILE), text).expect("state");
        fs::write(dir.join(CREDENTIAL_FILE), file.encode()).expect("credential");
    }

    #[test]
    fn issue13_15_a_retry_after_any_cut_in_add_credential_converges_and_chains() {
        for cut in CUTS {
            let (_tmp, dir, mut wallet) = new_wallet();
            let old = credential_for(&wallet, 0);
            let new = credential_for(&wallet, 1);
            wallet
                .add_credential(&write_credential(&dir, "old", &old))
                .expect("old");
            wallet
                .pay(request(30, NOW))
                .expect("30 under the old credential");
            let old_state = wallet.state().clone();
            let new_path = write_credential(&dir, "new", &new);
            // Tokens under the new credential before the retry: (counter,
            // total_before, amount).
            let mut under_new: Vec<(u32, u32, u32)> = Vec::new();
            match cut {
                Cut::Before => {}
                Cut::EmptyTemporary => {
                    fs::write(dir.join("wallet.toml.tmp4242"), b"").expect("tmp");
                }
                Cut::FullTemporary => {
                    let mut copy = Wallet::open(&dir).expect("open");
                    copy.add_credential(&new_path).expect("add");
                    let text = fs::read(dir.join(STATE_FILE)).expect("state");
                    let text_old = toml::to_string(&old_state).expect("toml");
                    fs::write(dir.join("wallet.toml.tmp4242"), text).expect("tmp");
                    fs::write(dir.join(STATE_FILE), text_old).expect("old state");
                }
                Cut::After => {
                    Wallet::open(&dir)
                        .expect("open")
                        .add_credential(&new_path)
                        .expect("add");
                }
                Cut::LegacyFileOnly => write_legacy(&dir, &old_state, &new),
                Cut::LegacyFileOnlyThenPaid => {
                    write_legacy(&dir, &old_state, &new);
                    // What the old binary did: sign under the file's
                    // credential with the state's total, and count it.
                    let mut paid = old_state.clone();
                    under_new.push((paid.counter + 1, paid.running_total, 20));
                    paid.counter += 1;
                    paid.running_total += 20;
                    write_legacy(&dir, &paid, &new);
                }
                Cut::LegacyAfter => {
                    let state = WalletState {
                        counter: old_state.counter,
                        running_total: 0,
                        credential: Some(hex::encode(new.digest())),
                        credential_bytes: None,
                        ..WalletState::default()
                    };
                    write_legacy(&dir, &state, &new);
                }
                Cut::StaleLegacyFile => {
                    Wallet::open(&dir)
                        .expect("open")
                        .add_credential(&new_path)
                        .expect("add");
                    fs::write(dir.join(CREDENTIAL_FILE), old.encode()).expect("stale");
                }
            }

            // The rider retries, twice, then pays twice.
            for _ in 0..2 {
                let mut retry = Wallet::open(&dir).unwrap_or_else(|e| panic!("{cut:?}: {e}"));
                retry
                    .add_credential(&new_path)
                    .unwrap_or_else(|e| panic!("{cut:?}: {e}"));
            }
            let mut wallet = Wallet::open(&dir).expect("open");
            assert_eq!(wallet.credential(), Some(&new), "{cut:?}");
            for amount in [40, 50] {
                let token = wallet.pay(request(amount, NOW)).expect("pay").token;
                under_new.push((
                    token.payment.counter,
                    token.payment.total_before,
                    token.payment.amount,
                ));
                assert_eq!(token.credential, new, "{cut:?}");
            }
            // The hub's chain rule (hub::clearing): each token's total is at
            // least the previous one's total plus its amount, and exactly
            // that for consecutive counters.
            for pair in under_new.windows(2) {
                let ((c1, t1, a1), (c2, t2, _)) = (pair[0], pair[1]);
                assert!(c2 > c1, "{cut:?}: counters {under_new:?}");
                assert!(t2 >= t1 + a1, "{cut:?}: totals go back: {under_new:?}");
                if c2 == c1 + 1 {
                    assert_eq!(t2, t1 + a1, "{cut:?}: {under_new:?}");
                }
            }
            assert!(
                under_new[0].0 > old_state.counter,
                "{cut:?}: counter reused"
            );
            // Converged to the one-file layout.
            assert!(!dir.join(CREDENTIAL_FILE).exists(), "{cut:?}");
            let state: WalletState =
                toml::from_str(&fs::read_to_string(dir.join(STATE_FILE)).expect("state"))
                    .expect("parses");
            assert_eq!(
                state.credential_bytes,
                Some(hex::encode(new.encode())),
                "{cut:?}"
            );
        }
    }

    #[test]
    fn issue13_15_adding_the_credential_in_use_again_keeps_its_total() {
        let (_tmp, dir, mut wallet) = new_wallet();
        let cred = credential_for(&wallet, 0);
        let path = write_credential(&dir, "c", &cred);
        wallet.add_credential(&path).expect("add");
        wallet.pay(request(70, NOW)).expect("pay");
        let before = fs::read(dir.join(STATE_FILE)).expect("state");
        wallet.add_credential(&path).expect("again");
        assert_eq!(fs::read(dir.join(STATE_FILE)).expect("state"), before);
        assert_eq!(wallet.state().running_total, 70);
    }

    #[test]
    fn issue13_15_a_state_whose_credential_does_not_match_its_digest_is_damaged() {
        let (_tmp, dir, _wallet, cred) = wallet_with_credential();
        let text = fs::read_to_string(dir.join(STATE_FILE)).expect("state");
        let digest = hex::encode(cred.digest());
        fs::write(dir.join(STATE_FILE), text.replace(&digest, &"0".repeat(64))).expect("edit");
        assert!(matches!(Wallet::open(&dir), Err(WalletError::State { .. })));
    }

    #[test]
    fn issue13_16_an_interrupted_new_is_replaced_a_finished_one_never() {
        let (_tmp, dir, wallet) = new_wallet();
        let key = fs::read(dir.join(KEY_FILE)).expect("key");
        assert!(matches!(
            Wallet::create(&dir),
            Err(WalletError::AlreadyExists { .. })
        ));
        assert_eq!(fs::read(dir.join(KEY_FILE)).expect("key"), key);
        drop(wallet);
        // Cut before wallet.toml: a 0-byte key, a full key with its public
        // key and temporaries; each time `new` runs again and succeeds.
        for leftover in [&b""[..], &key[..]] {
            fs::remove_file(dir.join(STATE_FILE)).expect("rm state");
            fs::write(dir.join(KEY_FILE), leftover).expect("key");
            fs::write(dir.join("wallet.toml.tmp77"), b"counter = ").expect("tmp");
            let again = Wallet::create(&dir).expect("retry");
            assert_ne!(fs::read(dir.join(KEY_FILE)).expect("key"), key);
            assert!(!dir.join("wallet.toml.tmp77").exists());
            Wallet::open(&dir).expect("opens");
            drop(again);
        }
        // A credential without wallet.toml: an old wallet that paid.
        fs::remove_file(dir.join(STATE_FILE)).expect("rm state");
        fs::write(dir.join(CREDENTIAL_FILE), b"x").expect("credential");
        let key = fs::read(dir.join(KEY_FILE)).expect("key");
        assert!(matches!(
            Wallet::create(&dir),
            Err(WalletError::StateLost { .. })
        ));
        assert_eq!(fs::read(dir.join(KEY_FILE)).expect("key"), key);
    }

    /// Issue 17: a phone restored from a backup installs its renewed
    /// credential with the hub's note and jumps its counter above the
    /// highest the hub cleared; a note never lowers it; a note for another
    /// credential or under another key installs nothing.
    #[test]
    fn issue17_a_restored_phone_moves_its_counter_above_the_highest_cleared_on_renewal() {
        use sonotap_protocol::wire::RenewalNote;
        let (_tmp, dir, mut wallet, _) = wallet_with_credential();
        for _ in 0..3 {
            wallet.pay(request(10, NOW)).expect("pay");
        }
        assert_eq!(wallet.state().counter, 3);
        let renewed = credential_for(&wallet, 1);
        let path = write_credential(&dir, "renewed", &renewed);
        let note_path = dir.with_file_name("renewed.renewal");
        let note = RenewalNote::sign(&renewed, 25, NOW, &testkit::issuer());
        fs::write(&note_path, note.encode()).expect("note");

        // A note under another key, or for another credential: refused,
        // nothing installed.
        let forged = RenewalNote::sign(
            &renewed,
            1_000_000,
            NOW,
            &ed25519_dalek::SigningKey::from_bytes(&[7; 32]),
        );
        fs::write(&note_path, forged.encode()).expect("forged");
        let before = fs::read(dir.join(STATE_FILE)).expect("state");
        assert!(matches!(
            wallet.add_credential(&path),
            Err(WalletError::BadRenewal { .. })
        ));
        let other = RenewalNote::sign(&credential_for(&wallet, 2), 25, NOW, &testkit::issuer());
        fs::write(&note_path, other.encode()).expect("other");
        let e = wallet.add_credential(&path).unwrap_err();
        assert!(e.to_string().contains("another credential"), "{e}");
        assert_eq!(fs::read(dir.join(STATE_FILE)).expect("state"), before);

        // The hub's note beside the credential: the counter jumps to 25.
        fs::write(&note_path, note.encode()).expect("note");
        wallet.add_credential(&path).expect("install");
        assert_eq!(
            (wallet.state().counter, wallet.state().running_total),
            (25, 0)
        );
        let next = wallet.pay(request(10, NOW)).expect("pay");
        assert_eq!(next.token.payment.counter, 26);
        let reopened = Wallet::open(&dir).expect("reopen");
        assert_eq!(reopened.state().counter, 26);

        // A note below the counter never lowers it.
        let low = RenewalNote::sign(&renewed, 2, NOW, &testkit::issuer());
        fs::write(&note_path, low.encode()).expect("low");
        let installed = wallet.install(&path, Some(&note_path)).expect("again");
        assert_eq!((installed.counter_before, installed.counter), (26, 26));
        assert_eq!(installed.highest_cleared_counter, Some(2));
        assert_eq!(
            wallet.state().running_total,
            10,
            "same credential: total kept"
        );
    }

    /// A renewal answer for `wallet`: [`credential_for`]'s credential with
    /// `tag`, signed by `issuer` as key `key_id`, and its note.
    fn renewed_by(
        wallet: &Wallet,
        tag: u16,
        highest: u32,
        key_id: u8,
        issuer: &ed25519_dalek::SigningKey,
    ) -> Renewed {
        let terms = CredentialTerms {
            issuer_key_id: key_id,
            ..credential_for(wallet, tag).terms
        };
        let credential = terms.sign(issuer).expect("terms");
        Renewed {
            credential,
            note: RenewalNote::sign(&credential, highest, NOW, issuer),
        }
    }

    fn renewed(wallet: &Wallet, tag: u16, highest: u32) -> Renewed {
        renewed_by(wallet, tag, highest, 1, &testkit::issuer())
    }

    #[test]
    fn issue18_the_first_online_renewal_is_trusted_and_its_issuer_key_kept() {
        let (_tmp, dir, mut wallet) = new_wallet();
        assert!(wallet.trusted_keys().is_empty());
        let answer = renewed(&wallet, 0, 0);
        let installed = wallet.install_renewed(&answer).expect("first renewal");
        assert_eq!(installed.credential, answer.credential);
        assert_eq!(wallet.credential(), Some(&answer.credential));
        let issuer = testkit::issuer().verifying_key();
        assert_eq!(wallet.trusted_keys(), &testkit::keys());
        let reopened = Wallet::open(&dir).expect("reopen");
        assert_eq!(reopened.trusted_keys(), &testkit::keys());
        assert_eq!(
            reopened.state().issuer,
            Some(TrustedIssuer {
                key_id: 1,
                public_key: hex::encode(issuer.to_bytes()),
            })
        );
        // A credential from a file later keeps the key learned online.
        let path = write_credential(&dir, "c", &credential_for(&wallet, 3));
        wallet.add_credential(&path).expect("file");
        assert_eq!(
            Wallet::open(&dir).expect("reopen").trusted_keys(),
            &testkit::keys()
        );
    }

    #[test]
    fn issue18_a_renewal_under_another_issuer_key_is_refused_and_installs_nothing() {
        let (_tmp, dir, mut wallet) = new_wallet();
        wallet
            .install_renewed(&renewed(&wallet, 0, 0))
            .expect("first");
        wallet.pay(request(50, NOW)).expect("pay");
        let before = fs::read(dir.join(STATE_FILE)).expect("state");
        let stranger = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
        // Under the trusted key id, or under one the wallet does not know.
        for key_id in [1, 2] {
            let e = wallet
                .install_renewed(&renewed_by(&wallet, 1, 99, key_id, &stranger))
                .unwrap_err();
            assert!(
                matches!(
                    e,
                    WalletError::IssuerChanged {
                        trusted_id: 1,
                        offered_id,
                        ..
                    } if offered_id == key_id
                ),
                "{e}"
            );
            assert!(e.to_string().contains("nothing was installed"), "{e}");
        }
        // The trusted key but a forged note: not a key change.
        let mut forged = renewed(&wallet, 1, 99);
        forged.note.highest_cleared_counter = 1_000;
        let e = wallet.install_renewed(&forged).unwrap_err();
        assert!(matches!(e, WalletError::BadRenewed { .. }), "{e}");
        assert_eq!(fs::read(dir.join(STATE_FILE)).expect("state"), before);
        assert_eq!(
            (wallet.state().counter, wallet.state().running_total),
            (1, 50)
        );
    }

    #[test]
    fn issue18_an_online_renewal_moves_the_counter_up_to_the_hubs_note_never_down() {
        let (_tmp, dir, mut wallet) = new_wallet();
        wallet
            .install_renewed(&renewed(&wallet, 0, 0))
            .expect("first");
        for _ in 0..3 {
            wallet.pay(request(10, NOW)).expect("pay");
        }
        let installed = wallet
            .install_renewed(&renewed(&wallet, 1, 25))
            .expect("up");
        assert_eq!((installed.counter_before, installed.counter), (3, 25));
        assert_eq!(installed.highest_cleared_counter, Some(25));
        assert_eq!(wallet.state().running_total, 0, "new credential, new total");
        assert_eq!(
            wallet
                .pay(request(10, NOW))
                .expect("pay")
                .token
                .payment
                .counter,
            26
        );
        let installed = wallet
            .install_renewed(&renewed(&wallet, 2, 4))
            .expect("low");
        assert_eq!((installed.counter_before, installed.counter), (26, 26));
        assert_eq!(Wallet::open(&dir).expect("reopen").state().counter, 26);
    }

    #[test]
    fn issue18_the_same_renewal_twice_keeps_the_running_total_and_writes_nothing() {
        let (_tmp, dir, mut wallet) = new_wallet();
        let answer = renewed(&wallet, 0, 0);
        wallet.install_renewed(&answer).expect("first");
        wallet.pay(request(70, NOW)).expect("pay");
        let before = fs::read(dir.join(STATE_FILE)).expect("state");
        let again = wallet.install_renewed(&answer).expect("again");
        assert_eq!((again.counter_before, again.counter), (1, 1));
        assert_eq!(fs::read(dir.join(STATE_FILE)).expect("state"), before);
        assert_eq!(wallet.state().running_total, 70);
    }

    #[test]
    fn issue18_a_recorded_renewal_older_than_the_credential_in_use_is_refused() {
        let (_tmp, _dir, mut wallet) = new_wallet();
        let old = renewed(&wallet, 0, 0);
        let mut newer = old.clone();
        newer.credential = CredentialTerms {
            valid_from: old.credential.terms.valid_from + 86_400,
            ..old.credential.terms
        }
        .sign(&testkit::issuer())
        .expect("terms");
        newer.note = RenewalNote::sign(&newer.credential, 0, NOW, &testkit::issuer());
        wallet.install_renewed(&newer).expect("the newer one");
        let e = wallet.install_renewed(&old).expect_err("played back");
        assert!(matches!(e, WalletError::StaleRenewal { .. }), "{e}");
        assert_eq!(wallet.credential(), Some(&newer.credential));
    }

    #[test]
    fn issue18_a_renewal_granting_less_than_is_left_keeps_the_current_credential() {
        let (_tmp, _dir, mut wallet) = new_wallet();
        let first = renewed(&wallet, 0, 0);
        wallet.install_renewed(&first).expect("first");
        wallet.pay(request(300, NOW)).expect("pay 300 of 1000");
        let mut small = first.clone();
        small.credential = CredentialTerms {
            offline_limit: 10,
            per_payment_cap: 10,
            valid_from: first.credential.terms.valid_from + 60,
            ..first.credential.terms
        }
        .sign(&testkit::issuer())
        .expect("terms");
        small.note = RenewalNote::sign(&small.credential, 0, NOW, &testkit::issuer());
        let installed = wallet.install_renewed(&small).expect("answered");
        assert_eq!(installed.credential, first.credential, "700 left beats 10");
        assert_eq!(wallet.state().running_total, 300);
    }

    #[test]
    fn issue18_the_issuer_key_named_at_enrolment_is_trusted_and_no_other() {
        let (_tmp, dir, mut wallet) = new_wallet();
        let key = testkit::issuer().verifying_key().to_bytes();
        wallet.trust_issuer(1, &key).expect("first key");
        wallet.trust_issuer(1, &key).expect("the same again");
        assert_eq!(
            Wallet::open(&dir).expect("reopen").trusted_keys(),
            &testkit::keys()
        );
        let other = ed25519_dalek::SigningKey::from_bytes(&[9; 32]).verifying_key();
        let e = wallet
            .trust_issuer(2, &other.to_bytes())
            .expect_err("another key");
        assert!(matches!(e, WalletError::IssuerChanged { .. }), "{e}");
    }

    #[test]
    fn issue18_a_renewal_for_another_wallet_is_refused() {
        let (_tmp, dir, mut wallet) = new_wallet();
        let (_tmp2, _, other) = new_wallet();
        let before = fs::read(dir.join(STATE_FILE)).expect("state");
        let e = wallet.install_renewed(&renewed(&other, 0, 0)).unwrap_err();
        assert!(e.to_string().contains("another wallet key"), "{e}");
        assert_eq!(fs::read(dir.join(STATE_FILE)).expect("state"), before);
        assert!(wallet.trusted_keys().is_empty(), "nothing learned");
    }

    #[test]
    fn issue18_a_request_is_signed_by_the_wallet_key_and_survives_the_wire() {
        use sonotap_protocol::wire::WalletAsk;
        let (_tmp, _, wallet) = new_wallet();
        let now_ms = NOW * 1000;
        for ask in [
            WalletAsk::Enrol {
                code: "ABCDEFGHJKLMNPQR".into(),
            },
            WalletAsk::Renew,
            WalletAsk::Statement { before: 42 },
        ] {
            let request = wallet.request(ask, now_ms, [9; 16]).expect("sign");
            assert_eq!(request.wallet_key, wallet.public_key().to_bytes());
            assert_eq!(request.wallet(), wallet.id());
            let decoded =
                WalletRequest::decode(&request.encode().expect("encode")).expect("decode");
            assert_eq!(decoded, request);
            decoded.verify(now_ms + 1000).expect("verifies");
        }
        let typed = WalletAsk::Enrol {
            code: "abcd-efgh-jklm-npqr".into(),
        };
        assert!(matches!(
            wallet.request(typed, now_ms, [9; 16]),
            Err(WalletError::Request { .. })
        ));
    }

    #[test]
    fn issue18_a_wallet_toml_from_before_accounts_opens_and_one_with_a_bad_issuer_key_is_damaged() {
        let (_tmp, dir, wallet, cred) = wallet_with_credential();
        drop(wallet);
        let old = format!(
            "counter = 4\nrunning_total = 120\ncredential = \"{}\"\ncredential_bytes = \"{}\"\n",
            hex::encode(cred.digest()),
            hex::encode(cred.encode())
        );
        fs::write(dir.join(STATE_FILE), &old).expect("old state");
        let mut wallet = Wallet::open(&dir).expect("an old wallet opens");
        assert_eq!((wallet.hub(), wallet.state().issuer.as_ref()), (None, None));
        assert_eq!(wallet.state().running_total, 120);
        wallet.remember_hub("https://hub.example").expect("hub");
        wallet
            .install_renewed(&renewed(&wallet, 1, 0))
            .expect("renew");
        let text = fs::read_to_string(dir.join(STATE_FILE)).expect("state");
        assert!(text.contains("hub = \"https://hub.example\""), "{text}");
        assert!(text.contains("[issuer]"), "{text}");
        let reopened = Wallet::open(&dir).expect("reopen");
        assert_eq!(reopened.hub(), Some("https://hub.example"));
        assert_eq!(reopened.state().counter, 4);

        let key = hex::encode(testkit::issuer().verifying_key().to_bytes());
        fs::write(dir.join(STATE_FILE), text.replace(&key, &"zz".repeat(32))).expect("edit");
        let e = Wallet::open(&dir).err().expect("damaged");
        assert!(e.to_string().contains("issuer.public_key"), "{e}");
    }
}
