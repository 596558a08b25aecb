//! The phone's client for the hub's rider API (issue 18): enrolment with
//! an operator's code, online renewal, the account statement.
//!
//! Each call first asks the hub its time (`GET /v1/time`, once per client)
//! and stamps the signed request with it, plus half the round trip and the
//! time since, so a phone whose own clock is wrong is still on time. A
//! request is `POST /v1/wallet/{enrol,renew,statement}` with the raw bytes
//! of a [`WalletRequest`]; the answer is JSON, a refusal
//! `{"error": CODE, "message": TEXT}`.
//!
//! Nothing the hub sends is trusted for its own sake: answers are read up
//! to [`HUB_ANSWER_LIMIT`], within a timeout ([`HUB_TIMEOUT`] by default),
//! without following redirects; a renewal must be for this wallet and signed by
//! the issuer key it trusts ([`Wallet::install_renewed`]), a statement
//! signed by that key over this request's nonce. Whatever is wrong with an
//! answer is an [`OnlineError`] naming it, and changes nothing.

use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde::de::DeserializeOwned;
use thiserror::Error;

use sonotap_protocol::api::TimeAnswer;
use sonotap_protocol::wire::{Renewed, Statement, WalletAsk, WalletRequest, normalise_enrol_code};

use crate::hub_url::check_hub_url;
use crate::{Installed, Wallet, WalletError};

/// How long one request to the hub may take, by default.
pub const HUB_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest answer read from the hub: a statement page of 100 entries
/// with the longest sources is under 60 KiB as hex.
pub const HUB_ANSWER_LIMIT: u64 = 256 * 1024;

/// The most of a hub's text (a refusal's message) repeated to the rider.
const MAX_HUB_TEXT: usize = 500;

/// How to reach the hub.
#[derive(Debug, Clone)]
pub struct HubOptions {
    /// PEM file with the hub's CA certificate (default: the public web roots).
    pub ca: Option<PathBuf>,
    /// How long one request may take, answer included.
    pub timeout: Duration,
}

impl Default for HubOptions {
    fn default() -> Self {
        Self {
            ca: None,
            timeout: HUB_TIMEOUT,
        }
    }
}

/// What an enrolment got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enrolled {
    /// The hub's base URL, now remembered by the wallet.
    pub hub: String,
    /// The account's ISO 4217 numeric currency, if the hub said.
    pub account_currency: Option<u16>,
}

/// Why a request to the hub did not do what was asked. Every case leaves
/// the wallet as it was, but for [`OnlineError::Wallet`] from a failed
/// state write.
#[derive(Debug, Error)]
pub enum OnlineError {
    /// The hub URL cannot be used.
    #[error("hub URL {url}: {detail}")]
    Url {
        /// The URL as given.
        url: String,
        /// What is wrong.
        detail: String,
    },
    /// The CA file for the hub's certificate.
    #[error("hub CA certificate {path}: {detail}")]
    Ca {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// What was typed is not an enrolment code.
    #[error("not an enrolment code: {0}; nothing was sent")]
    Code(String),
    /// The hub could not be reached or did not answer in time.
    #[error("hub {url}: {detail}")]
    Transport {
        /// The request URL.
        url: String,
        /// What went wrong.
        detail: String,
    },
    /// The hub refused, in its words ([`OnlineError::hub_refused`]).
    #[error(
        "the hub refused ({code}, HTTP {status}): {}{}",
        match .message.as_str() { "" => "(no message)", m => m },
        advice(.code, .message, *.retry_after_secs)
    )]
    Refused {
        /// The request URL.
        url: String,
        /// HTTP status.
        status: u16,
        /// The hub's error code (`no_allowance`, `not_enrolled`, ...).
        code: String,
        /// The hub's message.
        message: String,
        /// With a 429, the `Retry-After` header's seconds.
        retry_after_secs: Option<u64>,
    },
    /// The answer cannot be read or does not verify.
    #[error("hub {url} sent an answer that cannot be used: {detail}; nothing was changed")]
    BadAnswer {
        /// The request URL.
        url: String,
        /// What is wrong with it.
        detail: String,
    },
    /// A statement needs the issuer key learned at the first renewal.
    #[error(
        "this wallet does not know its hub's issuer key yet, so it cannot check a statement; \
         it learns the key from its first online renewal (`sonotap wallet renew`)"
    )]
    NoIssuerKey,
    /// No randomness for the request's nonce.
    #[error("cannot draw a random nonce: {0}")]
    Random(String),
    /// The wallet refused the answer, or could not save it.
    #[error(transparent)]
    Wallet(#[from] WalletError),
}

impl OnlineError {
    /// Whether the hub itself refused the rider's request (an account or
    /// allowance decision, an enrolment code, a rate limit, a request it
    /// could not authenticate): the message is the hub's, and the request
    /// was understood, unlike a transport failure, a malformed request
    /// (400) or an error of the hub's own (5xx).
    pub fn hub_refused(&self) -> bool {
        matches!(
            self,
            OnlineError::Refused {
                status: 401 | 403 | 409 | 429,
                ..
            }
        )
    }
}

/// After the hub's words: the `Retry-After` it sent, and what the rider
/// can do when the hub said nothing (its message usually says it).
fn advice(code: &str, message: &str, retry_after_secs: Option<u64>) -> String {
    let mut out = match retry_after_secs {
        Some(secs) => format!(" (Retry-After: {secs} s)"),
        None => String::new(),
    };
    if !message.is_empty() {
        return out;
    }
    out.push_str(match code {
        "rate_limited" => "; wait before trying again",
        "not_authenticated" => {
            "; the hub did not accept this phone's signed request: try again, and check the \
             hub URL if it persists"
        }
        "code_not_valid" => "; ask the operator for a new enrolment code",
        "not_enrolled" => "; enrol first with the operator's code (`sonotap wallet enrol`)",
        "account_suspended" | "account_closed" | "wallet_denied" => "; contact the operator",
        _ => "",
    });
    out
}

/// Hub text as it may be shown to a person: no control characters (no
/// terminal escapes), at most [`MAX_HUB_TEXT`] characters.
fn printable(text: &str) -> String {
    let mut out: String = text
        .chars()
        .take(MAX_HUB_TEXT)
        .map(|c| if c.is_control() { '\u{fffd}' } else { c })
        .collect();
    if text.chars().nth(MAX_HUB_TEXT).is_some() {
        out.push('…');
    }
    out
}

/// The hub's time, as learned from one `GET /v1/time`.
#[derive(Debug, Clone, Copy)]
struct HubClock {
    /// The hub's time at `at`, Unix milliseconds (its answer plus half
    /// the round trip).
    hub_ms: u64,
    /// When the answer came.
    at: Instant,
}

/// The hub's JSON refusal.
#[derive(Deserialize)]
struct Refusal {
    error: String,
    #[serde(default)]
    message: String,
}

#[derive(Deserialize)]
struct EnrolAnswer {
    status: String,
    #[serde(default)]
    account_currency: Option<u16>,
    /// The hub's issuer key, so statements can be checked before the
    /// first credential (older hubs leave it out).
    #[serde(default)]
    issuer_key_id: Option<u8>,
    #[serde(default)]
    issuer_key: Option<String>,
}

#[derive(Deserialize)]
struct RenewAnswer {
    renewed: String,
}

#[derive(Deserialize)]
struct StatementAnswer {
    statement: String,
}

/// A client for one hub.
pub struct HubClient {
    base: String,
    agent: ureq::Agent,
    timeout: Duration,
    clock: Cell<Option<HubClock>>,
}

impl HubClient {
    /// A client for the hub at `url` (`https://`, or `http://` to
    /// loopback; [`crate::check_hub_url`]).
    pub fn new(url: &str, options: &HubOptions) -> Result<Self, OnlineError> {
        let base = check_hub_url(url).map_err(|detail| OnlineError::Url {
            url: url.to_owned(),
            detail,
        })?;
        let mut tls = ureq::tls::TlsConfig::builder();
        if let Some(path) = &options.ca {
            tls = tls.root_certs(ureq::tls::RootCerts::Specific(Arc::new(read_ca(path)?)));
        }
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(options.timeout))
            .http_status_as_error(false)
            .max_redirects(0)
            .user_agent(concat!("sonotap-wallet/", env!("CARGO_PKG_VERSION")))
            .tls_config(tls.build())
            .build()
            .into();
        Ok(Self {
            base,
            agent,
            timeout: options.timeout,
            clock: Cell::new(None),
        })
    }

    /// The hub's base URL, without a trailing `/`.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Enrols `wallet` with the operator's one-time `code` (as typed: any
    /// case, dashes or spaces) and remembers this hub in the wallet.
    pub fn enrol(&self, wallet: &mut Wallet, code: &str) -> Result<Enrolled, OnlineError> {
        let code = normalise_enrol_code(code).map_err(OnlineError::Code)?;
        let (url, answer): (_, EnrolAnswer) =
            self.ask(wallet, WalletAsk::Enrol { code }, "/v1/wallet/enrol")?;
        if answer.status != "enrolled" {
            return Err(OnlineError::BadAnswer {
                url,
                detail: format!("status {:?}, not \"enrolled\"", printable(&answer.status)),
            });
        }
        if let Some(code) = answer.account_currency
            && !(1..=999).contains(&code)
        {
            return Err(OnlineError::BadAnswer {
                url,
                detail: format!("account currency {code} is not an ISO 4217 code (1..=999)"),
            });
        }
        if let (Some(key_id), Some(key)) = (answer.issuer_key_id, &answer.issuer_key) {
            let key = hex::decode(key)
                .ok()
                .and_then(|b| <[u8; 32]>::try_from(b).ok())
                .ok_or_else(|| OnlineError::BadAnswer {
                    url: url.clone(),
                    detail: "issuer_key is not 64 hex digits".into(),
                })?;
            wallet.trust_issuer(key_id, &key)?;
        }
        wallet.remember_hub(&self.base)?;
        Ok(Enrolled {
            hub: self.base.clone(),
            account_currency: answer.account_currency,
        })
    }

    /// Asks a fresh credential for `wallet` and installs it
    /// ([`Wallet::install_renewed`]).
    pub fn renew(&self, wallet: &mut Wallet) -> Result<Installed, OnlineError> {
        let (url, answer): (_, RenewAnswer) =
            self.ask(wallet, WalletAsk::Renew, "/v1/wallet/renew")?;
        let bytes = from_hex(&url, &answer.renewed, "renewed")?;
        let renewed = Renewed::decode(&bytes).map_err(|e| OnlineError::BadAnswer {
            url,
            detail: e.to_string(),
        })?;
        Ok(wallet.install_renewed(&renewed)?)
    }

    /// The account's statement: the newest entries (`before` 0) or those
    /// older than entry `before`, verified: signed by the issuer key the
    /// wallet trusts, over this request's nonce, for this wallet.
    pub fn statement(&self, wallet: &Wallet, before: u64) -> Result<Statement, OnlineError> {
        if wallet.trusted_keys().is_empty() {
            return Err(OnlineError::NoIssuerKey);
        }
        let nonce = nonce()?;
        let request = wallet.request(WalletAsk::Statement { before }, self.hub_now()?, nonce)?;
        let (url, answer): (_, StatementAnswer) = self.post("/v1/wallet/statement", &request)?;
        let bytes = from_hex(&url, &answer.statement, "statement")?;
        let bad = |e: sonotap_protocol::wire::WireError| OnlineError::BadAnswer {
            url: url.clone(),
            detail: e.to_string(),
        };
        let statement = Statement::decode(&bytes).map_err(bad)?;
        statement
            .verify(&nonce, wallet.id(), wallet.trusted_keys())
            .map_err(bad)?;
        Ok(statement)
    }

    /// Signs `ask` with a fresh nonce at the hub's time and posts it.
    fn ask<T: DeserializeOwned>(
        &self,
        wallet: &Wallet,
        ask: WalletAsk,
        path: &str,
    ) -> Result<(String, T), OnlineError> {
        let request = wallet.request(ask, self.hub_now()?, nonce()?)?;
        self.post(path, &request)
    }

    /// The hub's time now, Unix milliseconds, asking it the first time.
    fn hub_now(&self) -> Result<u64, OnlineError> {
        let clock = match self.clock.get() {
            Some(clock) => clock,
            None => {
                let started = Instant::now();
                let url = format!("{}/v1/time", self.base);
                let answer: TimeAnswer = self.answer(&url, self.agent.get(&url).call())?;
                let clock = HubClock {
                    hub_ms: answer.unix_ms.saturating_add(millis(started.elapsed() / 2)),
                    at: Instant::now(),
                };
                self.clock.set(Some(clock));
                clock
            }
        };
        Ok(clock.hub_ms.saturating_add(millis(clock.at.elapsed())))
    }

    fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        request: &WalletRequest,
    ) -> Result<(String, T), OnlineError> {
        let url = format!("{}{path}", self.base);
        let body = request
            .encode()
            .map_err(|source| WalletError::Request { source })?;
        let sent = self
            .agent
            .post(&url)
            .header("content-type", "application/octet-stream")
            .send(&body[..]);
        let answer = self.answer(&url, sent)?;
        Ok((url, answer))
    }

    /// Reads an answer: its JSON on 200, else the hub's refusal.
    fn answer<T: DeserializeOwned>(
        &self,
        url: &str,
        result: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<T, OnlineError> {
        let mut response = result.map_err(|e| self.failed(url, e))?;
        let status = response.status().as_u16();
        let retry_after_secs = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        let bytes = response
            .body_mut()
            .with_config()
            .limit(HUB_ANSWER_LIMIT)
            .read_to_vec()
            .map_err(|e| self.failed(url, e))?;
        let bad = |detail: String| OnlineError::BadAnswer {
            url: url.to_owned(),
            detail,
        };
        let text = String::from_utf8(bytes).map_err(|_| bad("the answer is not UTF-8".into()))?;
        if status != 200 {
            let (code, message) = match serde_json::from_str::<Refusal>(&text) {
                Ok(refusal) => (printable(&refusal.error), printable(&refusal.message)),
                Err(_) => (format!("http_{status}"), printable(text.trim())),
            };
            return Err(OnlineError::Refused {
                url: url.to_owned(),
                status,
                code,
                message,
                retry_after_secs,
            });
        }
        serde_json::from_str(&text)
            .map_err(|e| bad(format!("not the JSON expected ({e}): {}", printable(&text))))
    }

    fn failed(&self, url: &str, e: ureq::Error) -> OnlineError {
        let detail = match e {
            ureq::Error::BodyExceedsLimit(limit) => {
                return OnlineError::BadAnswer {
                    url: url.to_owned(),
                    detail: format!("the answer is larger than {} KiB", limit / 1024),
                };
            }
            ureq::Error::Timeout(_) => format!(
                "no answer within {} s (is the hub up, and the network?)",
                self.timeout.as_secs_f64()
            ),
            ureq::Error::HostNotFound => "host not found (check the hub URL)".into(),
            ureq::Error::ConnectionFailed => {
                "cannot connect (is the hub up? check the URL and the network)".into()
            }
            ureq::Error::Io(e) => match e.kind() {
                std::io::ErrorKind::ConnectionRefused => {
                    "cannot connect: connection refused (is the hub up? check the URL)".into()
                }
                std::io::ErrorKind::TimedOut => format!(
                    "no answer within {} s (is the hub up, and the network?)",
                    self.timeout.as_secs_f64()
                ),
                _ => format!("network error: {e}"),
            },
            e => e.to_string(),
        };
        OnlineError::Transport {
            url: url.to_owned(),
            detail,
        }
    }
}

fn from_hex(url: &str, text: &str, field: &str) -> Result<Vec<u8>, OnlineError> {
    hex::decode(text).map_err(|e| OnlineError::BadAnswer {
        url: url.to_owned(),
        detail: format!("{field} is not hex: {e}"),
    })
}

fn nonce() -> Result<[u8; 16], OnlineError> {
    let mut nonce = [0u8; 16];
    getrandom::fill(&mut nonce).map_err(|e| OnlineError::Random(e.to_string()))?;
    Ok(nonce)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The certificates of a PEM file.
fn read_ca(path: &Path) -> Result<Vec<ureq::tls::Certificate<'static>>, OnlineError> {
    sonotap_disk::ca::read_ca_bundle(path).map_err(|detail| OnlineError::Ca {
        path: path.into(),
        detail,
    })
}

#[cfg(test)]
mod tests;
