//! The offline acceptance policy: a pure function of (token, reader state, clock).
//!
//! Checks run in a fixed order and the first failure is the decline reason,
//! so that every token has exactly one stable reason code. The order is
//! written down as data ([`Reason::ALL`] and [`RULES`]) and printed by
//! `sonotap reader policy`. Nothing here does I/O: the store fetches the
//! wallet's history, calls [`decide`], and commits the record in one
//! transaction.

use std::collections::BTreeMap;
use std::fmt;
use std::num::NonZeroU32;

use ed25519_dalek::VerifyingKey;
use serde::Serialize;

use crate::token::{Scope, Token, TokenVersion, WalletId};

/// Why a token was declined. The string forms are stable: operators,
/// dashboards and the hub match on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// Not a canonical token (length, version, reserved values).
    Malformed,
    /// The credential names an issuer key id this reader does not trust.
    UnknownIssuerKey,
    /// The issuer's or the wallet's signature does not verify.
    BadSignature,
    /// The wallet is on the deny list.
    WalletDenied,
    /// Wrong scope, wrong currency, bound to another reader or gate, or a
    /// version-1 token where only beacon-bound ones are taken.
    WrongScope,
    /// The credential's validity has not started yet.
    CredentialNotYetValid,
    /// The credential's validity has ended.
    CredentialExpired,
    /// The token was made further in the future than the skew window allows.
    FutureToken,
    /// The token is older than the skew window allows, or its gate
    /// challenge has lived out.
    StaleToken,
    /// The counter is not above the last one accepted from this wallet,
    /// here or (as announced) at another reader of the site.
    Replayed,
    /// The payment authorises more than the credential's per-payment cap,
    /// or the charge is more than the payment authorises.
    OverPaymentCap,
    /// The running total plus this payment passes the offline limit.
    OverOfflineLimit,
}

impl Reason {
    /// Every reason, in the order the checks run.
    pub const ALL: [Reason; 12] = [
        Reason::Malformed,
        Reason::UnknownIssuerKey,
        Reason::BadSignature,
        Reason::WalletDenied,
        Reason::WrongScope,
        Reason::CredentialNotYetValid,
        Reason::CredentialExpired,
        Reason::FutureToken,
        Reason::StaleToken,
        Reason::Replayed,
        Reason::OverPaymentCap,
        Reason::OverOfflineLimit,
    ];

    /// The stable code, e.g. `over_offline_limit`.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Malformed => "malformed",
            Reason::UnknownIssuerKey => "unknown_issuer_key",
            Reason::BadSignature => "bad_signature",
            Reason::WalletDenied => "wallet_denied",
            Reason::WrongScope => "wrong_scope",
            Reason::CredentialNotYetValid => "credential_not_yet_valid",
            Reason::CredentialExpired => "credential_expired",
            Reason::FutureToken => "future_token",
            Reason::StaleToken => "stale_token",
            Reason::Replayed => "replayed",
            Reason::OverPaymentCap => "over_payment_cap",
            Reason::OverOfflineLimit => "over_offline_limit",
        }
    }

    /// What the check is, in one sentence.
    pub fn rule(self) -> &'static str {
        match self {
            Reason::Malformed => "the bytes are exactly one canonical token (version 1 or 2)",
            Reason::UnknownIssuerKey => "the credential's issuer key id is trusted by this reader",
            Reason::BadSignature => {
                "the issuer signature over the credential and the wallet signature over \
                 credential and payment verify (verify_strict)"
            }
            Reason::WalletDenied => "the wallet is not on the deny list",
            Reason::WrongScope => {
                "the credential's scope and currency are the reader's; a version-1 token is \
                 bound to no reader or to this one, and accepted here; a version-2 token is \
                 bound to a challenge this gate announced"
            }
            Reason::CredentialNotYetValid => "reader time >= credential valid_from",
            Reason::CredentialExpired => "reader time < valid_from + valid_hours * 3600",
            Reason::FutureToken => {
                "token timestamp <= reader time + clock skew (version 2: at most the challenge's \
                 life + 10 s)"
            }
            Reason::StaleToken => {
                "token timestamp >= reader time - clock skew (version 2: at most the \
                 challenge's life + 10 s), and a version-2 token's challenge was announced at \
                 most its life ago"
            }
            Reason::Replayed => {
                "counter > the last counter accepted from this wallet, here or at a reader of \
                 this site"
            }
            Reason::OverPaymentCap => {
                "authorised amount <= per-payment cap, and charge <= authorised amount"
            }
            Reason::OverOfflineLimit => {
                "max(running total claimed, running total seen) + authorised amount <= offline limit"
            }
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A declined token: one reason code and a sentence for the operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decline {
    /// The stable reason code.
    pub reason: Reason,
    /// Human-readable specifics (which key id, how many seconds late, ...).
    pub detail: String,
}

impl Decline {
    fn new(reason: Reason, detail: impl Into<String>) -> Self {
        Self {
            reason,
            detail: detail.into(),
        }
    }
}

/// What a reader is configured to accept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReaderPolicy {
    /// This reader's tag (see [`crate::token::reader_tag`]); bound tokens must match it.
    pub reader_tag: u32,
    /// The scope this reader serves.
    pub scope: Scope,
    /// The ISO 4217 numeric currency this reader charges in.
    pub currency: u16,
    /// How far a token's timestamp may be from the reader's clock, either way.
    pub clock_skew_secs: u32,
    /// What the reader's beacon announced, and whether it still takes
    /// tokens not bound to it.
    pub gate: GatePolicy,
}

/// A gate's beacon, as the policy sees it: the challenges it issued
/// recently, how long one lives, and whether version-1 tokens (bound to
/// no challenge) are still accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatePolicy {
    /// Version-1 tokens are accepted (the default without a beacon; off by
    /// default at a gate that beacons).
    pub accept_v1: bool,
    /// Seconds a challenge is accepted after the gate first announced it.
    pub challenge_life_secs: u32,
    /// Challenges issued recently (the live ones and some older, so that a
    /// late token is told apart from one made for another gate).
    pub issued: Vec<IssuedChallenge>,
}

impl Default for GatePolicy {
    /// A reader without a beacon: version-1 tokens only.
    fn default() -> Self {
        Self {
            accept_v1: true,
            challenge_life_secs: 0,
            issued: Vec::new(),
        }
    }
}

/// One challenge a gate announced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IssuedChallenge {
    /// What a token bound to it carries (`token::gate_binding`).
    pub binding: u32,
    /// Reader time it was first announced, Unix seconds.
    pub issued_at: u64,
}

impl GatePolicy {
    fn issued(&self, binding: u32) -> Option<&IssuedChallenge> {
        self.issued.iter().find(|c| c.binding == binding)
    }
}

/// The issuer keys a reader trusts, by key id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedKeys {
    keys: BTreeMap<u8, VerifyingKey>,
}

impl TrustedKeys {
    /// Trusts `key` under `key_id`, replacing any older key with that id.
    pub fn insert(&mut self, key_id: u8, key: VerifyingKey) {
        self.keys.insert(key_id, key);
    }

    /// The key with that id, if trusted.
    pub fn get(&self, key_id: u8) -> Option<&VerifyingKey> {
        self.keys.get(&key_id)
    }

    /// Whether no key is trusted (such a reader declines everything).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The keys, by ascending key id.
    pub fn iter(&self) -> impl Iterator<Item = (u8, &VerifyingKey)> {
        self.keys.iter().map(|(id, key)| (*id, key))
    }
}

/// A token whose format and both signatures have been checked.
///
/// Only [`authenticate`] makes one, so holding one proves the checks ran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authentic {
    token: Token,
    bytes: Vec<u8>,
}

impl Authentic {
    /// The parsed token.
    pub fn token(&self) -> &Token {
        &self.token
    }

    /// The exact bytes presented (canonical, so equal to `token().encode()`).
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The paying wallet.
    pub fn wallet(&self) -> WalletId {
        self.token.wallet_id()
    }
}

/// Stage one, stateless: parse, look up the issuer key, verify both signatures.
pub fn authenticate(bytes: &[u8], keys: &TrustedKeys) -> Result<Authentic, Decline> {
    let token = Token::decode(bytes).map_err(|e| Decline::new(Reason::Malformed, e.to_string()))?;
    let key_id = token.credential.terms.issuer_key_id;
    let issuer = keys.get(key_id).ok_or_else(|| {
        Decline::new(
            Reason::UnknownIssuerKey,
            format!("issuer key id {key_id} is not trusted by this reader"),
        )
    })?;
    token.credential.verify(issuer).map_err(|_| {
        Decline::new(
            Reason::BadSignature,
            format!("credential signature does not verify under issuer key {key_id}"),
        )
    })?;
    token.verify_payment().map_err(|_| {
        Decline::new(
            Reason::BadSignature,
            "payment signature does not verify under the credential's wallet key",
        )
    })?;
    Ok(Authentic {
        bytes: token.encode(),
        token,
    })
}

/// What the reader's store knows about the paying wallet.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WalletHistory {
    /// The wallet is on the deny list.
    pub denied: bool,
    /// The highest counter accepted from this wallet, if any.
    pub last_counter: Option<u32>,
    /// The highest running total (before + authorised) accepted under this
    /// token's credential at this reader or, as announced, at a reader of
    /// its site; 0 if none.
    pub credential_total: u64,
    /// The highest counter of this wallet another reader of the site
    /// announced it accepted, if any.
    pub site: Option<SiteSeen>,
}

/// A peer's accept of the wallet's highest counter, as announced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiteSeen {
    /// The peer reader that accepted it.
    pub reader: String,
    /// The counter it accepted.
    pub counter: u32,
    /// Its reader time of the decision, Unix seconds.
    pub at: u64,
}

/// An accepted payment: what to charge and the wallet's running total after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Approval {
    /// The amount to charge, at most the authorised amount.
    pub charge: u32,
    /// The running total under the credential after this payment.
    pub running_total: u64,
}

/// Everything one stateful check may look at.
struct Facts<'a> {
    token: &'a Token,
    history: &'a WalletHistory,
    policy: &'a ReaderPolicy,
    charge: u32,
    now: u64,
}

/// Seconds a version-2 token's time may be from the reader's beyond its
/// challenge's life. Its time is the gate's own (the beacon's time plus
/// the whole seconds since the phone heard it: docs/protocol.md §3a), so no
/// phone clock is involved; what remains is the beacon's age when heard (a
/// QR code shows the time its challenge was drawn, up to a period old) and
/// whole-second rounding. Measured with `sonotap reader clock` after a
/// phone heard a beacon through ALSA (`tests/integration/site.rs`): 3 s
/// behind, for a beacon the gate had played 2.5 s before the phone
/// listened; a phone listening live is behind by the beacon's air time
/// (0.66 s) and its decoding.
pub const GATE_TIME_SLACK_SECS: u32 = 10;

impl Facts<'_> {
    /// How far the token's time may be from the reader's, either way: the
    /// reader's clock-skew window for version 1 (the phone's clock); for
    /// version 2 (the gate's clock) no more than the challenge's life and
    /// [`GATE_TIME_SLACK_SECS`].
    fn window(&self) -> u32 {
        match self.token.version {
            TokenVersion::V1 => self.policy.clock_skew_secs,
            TokenVersion::V2 => self.policy.clock_skew_secs.min(
                self.policy
                    .gate
                    .challenge_life_secs
                    .saturating_add(GATE_TIME_SLACK_SECS),
            ),
        }
    }

    fn running_total(&self) -> u64 {
        u64::from(self.token.payment.total_before).max(self.history.credential_total)
            + u64::from(self.token.payment.amount)
    }
}

/// One stateful check: its reason code and the test (`Err(detail)` declines).
pub struct Rule {
    /// The decline reason when the check fails.
    pub reason: Reason,
    check: fn(&Facts<'_>) -> Result<(), String>,
}

/// Stage two, in order: every check that needs the reader's state or clock.
pub static RULES: [Rule; 9] = [
    Rule {
        reason: Reason::WalletDenied,
        check: |f| match f.history.denied {
            true => Err(format!(
                "wallet {} is on the deny list",
                f.token.wallet_id()
            )),
            false => Ok(()),
        },
    },
    Rule {
        reason: Reason::WrongScope,
        check: |f| {
            let terms = &f.token.credential.terms;
            let tag = f.token.payment.reader_tag;
            if terms.scope != f.policy.scope {
                Err(format!(
                    "credential scope {} at a {} reader",
                    terms.scope, f.policy.scope
                ))
            } else if terms.currency != f.policy.currency {
                Err(format!(
                    "credential currency {} at a reader charging currency {}",
                    terms.currency, f.policy.currency
                ))
            } else {
                match (f.token.version, f.policy.gate.accept_v1) {
                    (TokenVersion::V1, false) => Err(
                        "a version-1 token at a gate that takes only tokens bound to its beacon"
                            .to_string(),
                    ),
                    (TokenVersion::V1, true) if tag != 0 && tag != f.policy.reader_tag => Err(
                        format!("token bound to reader tag {tag:08x}, not this reader"),
                    ),
                    (TokenVersion::V2, _) if f.policy.gate.issued(tag).is_none() => Err(format!(
                        "token bound to gate binding {tag:08x}: another gate's, or a challenge \
                         this gate never announced"
                    )),
                    _ => Ok(()),
                }
            }
        },
    },
    Rule {
        reason: Reason::CredentialNotYetValid,
        check: |f| {
            let from = u64::from(f.token.credential.terms.valid_from);
            match f.now < from {
                true => Err(format!(
                    "credential valid from {from}, {}s from now",
                    from - f.now
                )),
                false => Ok(()),
            }
        },
    },
    Rule {
        reason: Reason::CredentialExpired,
        check: |f| {
            let until = f.token.credential.terms.valid_until();
            match f.now >= until {
                true => Err(format!(
                    "credential expired at {until}, {}s ago",
                    f.now - until
                )),
                false => Ok(()),
            }
        },
    },
    Rule {
        reason: Reason::FutureToken,
        check: |f| {
            let at = u64::from(f.token.payment.timestamp);
            let latest = f.now + u64::from(f.window());
            match at > latest {
                true => Err(format!(
                    "token made {}s ahead of the reader clock (skew window {}s)",
                    at - f.now,
                    f.window()
                )),
                false => Ok(()),
            }
        },
    },
    Rule {
        reason: Reason::StaleToken,
        check: |f| {
            let at = u64::from(f.token.payment.timestamp);
            let life = u64::from(f.policy.gate.challenge_life_secs);
            let challenge = f
                .token
                .gate_binding()
                .and_then(|binding| f.policy.gate.issued(binding));
            if at + u64::from(f.window()) < f.now {
                Err(format!(
                    "token made {}s ago (skew window {}s)",
                    f.now - at,
                    f.window()
                ))
            } else if let Some(c) = challenge
                && c.issued_at + life < f.now
            {
                Err(format!(
                    "bound to a challenge this gate announced {}s ago; a challenge lives {life}s",
                    f.now - c.issued_at
                ))
            } else {
                Ok(())
            }
        },
    },
    Rule {
        reason: Reason::Replayed,
        check: |f| {
            let counter = f.token.payment.counter;
            match (f.history.last_counter, &f.history.site) {
                (Some(last), _) if counter <= last => Err(format!(
                    "counter {counter} is not above {last}, the last accepted from this wallet"
                )),
                (_, Some(seen)) if counter <= seen.counter => Err(format!(
                    "counter {counter} is not above {}, accepted at {} (a reader of this site) \
                     {}s ago",
                    seen.counter,
                    seen.reader,
                    f.now.saturating_sub(seen.at)
                )),
                _ => Ok(()),
            }
        },
    },
    Rule {
        reason: Reason::OverPaymentCap,
        check: |f| {
            let amount = f.token.payment.amount;
            let cap = f.token.credential.terms.per_payment_cap;
            if amount > cap {
                Err(format!(
                    "payment authorises {amount}, cap per payment is {cap}"
                ))
            } else if f.charge > amount {
                Err(format!(
                    "charge {} is more than the {amount} authorised",
                    f.charge
                ))
            } else {
                Ok(())
            }
        },
    },
    Rule {
        reason: Reason::OverOfflineLimit,
        check: |f| {
            let limit = u64::from(f.token.credential.terms.offline_limit);
            let total = f.running_total();
            match total > limit {
                true => Err(format!(
                    "running total would be {total}, offline limit is {limit}"
                )),
                false => Ok(()),
            }
        },
    },
];

/// Stage two: decides on an authentic token given the wallet's history, the
/// reader's policy, the requested charge (default: the authorised amount)
/// and the reader's clock (Unix seconds). Pure: no I/O, no clock reads.
pub fn decide(
    token: &Authentic,
    history: &WalletHistory,
    policy: &ReaderPolicy,
    charge: Option<NonZeroU32>,
    now: u64,
) -> Result<Approval, Decline> {
    let facts = Facts {
        token: &token.token,
        history,
        policy,
        charge: charge.map_or(token.token.payment.amount, NonZeroU32::get),
        now,
    };
    for rule in &RULES {
        (rule.check)(&facts).map_err(|detail| Decline::new(rule.reason, detail))?;
    }
    Ok(Approval {
        charge: facts.charge,
        running_total: facts.running_total(),
    })
}

/// The checks of [`decide`] that do not depend on the price, for a vending
/// session before it offers funds: every rule runs with the charge taken as
/// the authorised amount. `Ok` is the most any charge for this token may be:
/// the authorised amount, within the per-payment cap and what is left of the
/// offline limit. Pure, as [`decide`]; nothing is committed.
pub fn most_chargeable(
    token: &Authentic,
    history: &WalletHistory,
    policy: &ReaderPolicy,
    now: u64,
) -> Result<u32, Decline> {
    let approval = decide(token, history, policy, None, now)?;
    let terms = &token.token.credential.terms;
    let seen = u64::from(token.token.payment.total_before).max(history.credential_total);
    let left = u64::from(terms.offline_limit).saturating_sub(seen);
    Ok(approval
        .charge
        .min(terms.per_payment_cap)
        .min(u32::try_from(left).unwrap_or(u32::MAX)))
}

#[cfg(test)]
mod tests;
