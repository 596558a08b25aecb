//! A phone wallet simulator: holds a wallet key and a credential, and makes
//! payment tokens with a strictly increasing counter and a running total.
//!
//! Layout of `W/`: `wallet.key` (0600), `wallet.pub`, `credential` (the
//! issuer's 115 bytes) and `wallet.toml` (counter and running total). The
//! state is written, atomically, *before* the token is handed out, so a
//! crash can skip a counter but never reuse one.
//!
//! Like a real phone, it pays what it is asked and leaves enforcement to the
//! reader: paying over the limit or after expiry gives warnings, not errors,
//! so that tests and demos can show the reader's declines.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::fsutil;
use crate::keys::{KeyFileError, PublicKey, Role, SecretKey};
use crate::token::{Credential, FormatError, PaymentTerms, SignError, Token, WalletId};

/// Secret key file name.
pub const KEY_FILE: &str = "wallet.key";
/// Public key file name.
pub const PUB_FILE: &str = "wallet.pub";
/// Credential file name.
pub const CREDENTIAL_FILE: &str = "credential";
/// State file name.
pub const STATE_FILE: &str = "wallet.toml";

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
}

/// What one payment asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PayRequest {
    /// Amount to authorise, minor units (at least 1).
    pub amount: u32,
    /// Token time, Unix seconds.
    pub at: u32,
    /// Reader to bind the token to, or 0 for any reader.
    pub reader_tag: u32,
}

/// A token and what the wallet noticed while making it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payment {
    /// The signed token.
    pub token: Token,
    /// Reasons a reader is likely to decline it (over limit, expired, ...).
    pub warnings: Vec<String>,
}

/// An open wallet directory.
pub struct Wallet {
    dir: PathBuf,
    key: SecretKey,
    credential: Option<Credential>,
    state: WalletState,
}

impl Wallet {
    /// Creates a wallet directory with a fresh key.
    pub fn create(dir: &Path) -> Result<Self, WalletError> {
        if dir.join(STATE_FILE).exists() || dir.join(KEY_FILE).exists() {
            return Err(WalletError::AlreadyExists { path: dir.into() });
        }
        let io_err = |source| WalletError::Io {
            path: dir.into(),
            source,
        };
        fsutil::create_private_dir(dir).map_err(io_err)?;
        let key = SecretKey::generate(Role::Wallet, None).map_err(io_err)?;
        key.write_new(&dir.join(KEY_FILE))?;
        key.public().write(&dir.join(PUB_FILE))?;
        let wallet = Self {
            dir: dir.into(),
            key,
            credential: None,
            state: WalletState::default(),
        };
        wallet.save_state()?;
        Ok(wallet)
    }

    /// Opens an existing wallet directory.
    pub fn open(dir: &Path) -> Result<Self, WalletError> {
        let key = SecretKey::read(&dir.join(KEY_FILE), Role::Wallet)?;
        let state_path = dir.join(STATE_FILE);
        let text = fs::read_to_string(&state_path).map_err(|source| WalletError::Io {
            path: state_path.clone(),
            source,
        })?;
        let state: WalletState = toml::from_str(&text).map_err(|e| WalletError::State {
            path: state_path.clone(),
            detail: e.message().to_string(),
        })?;
        let credential_path = dir.join(CREDENTIAL_FILE);
        let credential =
            match fs::read(&credential_path) {
                Ok(bytes) => Some(Credential::decode(&bytes).map_err(|source| {
                    WalletError::BadCredential {
                        path: credential_path.clone(),
                        source,
                    }
                })?),
                Err(e) if e.kind() == io::ErrorKind::NotFound => None,
                Err(source) => {
                    return Err(WalletError::Io {
                        path: credential_path,
                        source,
                    });
                }
            };
        Ok(Self {
            dir: dir.into(),
            key,
            credential,
            state,
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

    /// Installs a credential from a file. A new credential starts a new
    /// running total; the counter never restarts.
    pub fn add_credential(&mut self, path: &Path) -> Result<Credential, WalletError> {
        // A credential is 115 bytes; a FIFO or a device is refused unread.
        let bytes = crate::fsutil::read_regular_file_capped(path, 64 * 1024).map_err(|e| {
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
        let digest = hex::encode(credential.digest());
        if self.state.credential.as_deref() != Some(digest.as_str()) {
            self.state.running_total = 0;
            self.state.credential = Some(digest);
        }
        let target = self.dir.join(CREDENTIAL_FILE);
        fsutil::replace_atomic(&target, &credential.encode(), 0o600).map_err(|source| {
            WalletError::Io {
                path: target,
                source,
            }
        })?;
        self.save_state()?;
        self.credential = Some(credential);
        Ok(credential)
    }

    /// Makes a token. The new counter and running total are on disk before
    /// this returns the token.
    pub fn pay(&mut self, request: PayRequest) -> Result<Payment, WalletError> {
        let credential = self.credential.ok_or(WalletError::NoCredential)?;
        let terms = credential.terms;
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
        let token = Token::sign(credential, payment, self.key.signing_key())?;

        let mut warnings = Vec::new();
        if request.amount > terms.per_payment_cap {
            warnings.push(format!(
                "amount {} is over the per-payment cap {}",
                request.amount, terms.per_payment_cap
            ));
        }
        if total_after > terms.offline_limit {
            warnings.push(format!(
                "running total {total_after} is over the offline limit {}",
                terms.offline_limit
            ));
        }
        let at = u64::from(request.at);
        if at < u64::from(terms.valid_from) {
            warnings.push("the credential is not valid yet".into());
        } else if at >= terms.valid_until() {
            warnings.push("the credential has expired".into());
        }

        self.state.counter = counter;
        self.state.running_total = total_after;
        self.save_state()?;
        Ok(Payment { token, warnings })
    }

    fn save_state(&self) -> Result<(), WalletError> {
        let path = self.dir.join(STATE_FILE);
        let text = toml::to_string(&self.state).map_err(|e| WalletError::State {
            path: path.clone(),
            detail: e.to_string(),
        })?;
        fsutil::replace_atomic(&path, text.as_bytes(), 0o600)
            .map_err(|source| WalletError::Io { path, source })
    }
}
