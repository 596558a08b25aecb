//! What a rider's phone and the hub say to each other over the internet:
//! enrolment with an operator's one-time code, online credential renewal
//! and the account statement (docs/accounts.md; the layouts are its §3).
//!
//! A phone signs each request with its wallet key, under a domain tag of
//! the request's kind, stamped with the hub's time and a random nonce: the
//! key is carried in the request, so the hub checks the signature before
//! it looks anything up, and a party without the key can neither ask nor
//! learn whether a wallet exists. The answers are the issuer's: a renewal
//! is a credential and its [`RenewalNote`]; a statement is signed by the
//! issuer over the request's nonce, so a recorded statement cannot be
//! passed off as a fresh one.

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};

use super::{
    Fields, REQUEST_WINDOW_MS, RenewalNote, WireError, invalid, push_short, signed, verify_issuer,
};
use crate::policy::TrustedKeys;
use crate::token::{CREDENTIAL_LEN, Credential, WalletId};

/// First bytes of a phone's enrolment request.
pub const ENROL_DOMAIN: &[u8] = b"sonotap/v1/enrol\0";
/// First bytes of a phone's renewal request.
pub const RENEW_DOMAIN: &[u8] = b"sonotap/v1/renew\0";
/// First bytes of a phone's statement request.
pub const STATEMENT_REQUEST_DOMAIN: &[u8] = b"sonotap/v1/statement-request\0";
/// First bytes of the hub's answer to a renewal.
pub const RENEWED_DOMAIN: &[u8] = b"sonotap/v1/renewed\0";
/// First bytes of the hub's signed account statement.
pub const STATEMENT_DOMAIN: &[u8] = b"sonotap/v1/statement\0";
/// An enrolment code's length: 16 base32 letters (80 bits), shown to
/// people in groups of four (`ABCD-EFGH-JKLM-NPQR`).
pub const ENROL_CODE_LEN: usize = 16;
/// The most entries one statement carries; a phone pages back with
/// [`Statement::next_before`].
pub const STATEMENT_PAGE: usize = 100;

/// The letters of an enrolment code: RFC 4648 base32 (no 0, 1, 8, 9, so
/// nothing looks like O, I or B).
const CODE_ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

/// Makes an enrolment code from 10 random bytes.
pub fn enrol_code(random: [u8; 10]) -> String {
    let mut bits = 0u128;
    for b in random {
        bits = (bits << 8) | u128::from(b);
    }
    (0..ENROL_CODE_LEN)
        .rev()
        .map(|i| char::from(CODE_ALPHABET[((bits >> (5 * i)) & 31) as usize]))
        .collect()
}

/// A code as a person may type it (lower case, spaces or dashes between
/// the groups) in its canonical form, or why it cannot be one.
pub fn normalise_enrol_code(typed: &str) -> Result<String, String> {
    let code: String = typed
        .chars()
        .filter(|c| !matches!(c, '-' | ' '))
        .map(|c| c.to_ascii_uppercase())
        .collect();
    // Counted and named in characters, not bytes: `é` is one wrong letter.
    let letters = code.chars().count();
    if letters != ENROL_CODE_LEN {
        return Err(format!(
            "an enrolment code has {ENROL_CODE_LEN} letters and digits, not {letters}"
        ));
    }
    if let Some(bad) = code
        .chars()
        .find(|c| !u8::try_from(*c).is_ok_and(|b| CODE_ALPHABET.contains(&b)))
    {
        return Err(format!(
            "'{bad}' is not in an enrolment code (A–Z and 2–7 only)"
        ));
    }
    Ok(code)
}

/// Refuses a code that [`normalise_enrol_code`] would change or refuse:
/// the wire carries canonical codes only.
fn check_canonical_code(code: &str, what: &'static str) -> Result<(), WireError> {
    match normalise_enrol_code(code) {
        Ok(canonical) if canonical == code => Ok(()),
        _ => Err(invalid(what, "the enrolment code is not canonical")),
    }
}

/// What a phone asks the hub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WalletAsk {
    /// Bind this wallet key to the account the code was made for.
    Enrol {
        /// The code, canonical ([`normalise_enrol_code`]).
        code: String,
    },
    /// A fresh credential for this wallet.
    Renew,
    /// The account's statement: entries older than `before` (an entry id
    /// from [`Statement::next_before`]; 0 for the newest).
    Statement {
        /// Where the page ends.
        before: u64,
    },
}

impl WalletAsk {
    fn domain(&self) -> &'static [u8] {
        match self {
            WalletAsk::Enrol { .. } => ENROL_DOMAIN,
            WalletAsk::Renew => RENEW_DOMAIN,
            WalletAsk::Statement { .. } => STATEMENT_REQUEST_DOMAIN,
        }
    }

    /// The name a hub logs and an API path uses.
    pub fn name(&self) -> &'static str {
        match self {
            WalletAsk::Enrol { .. } => "enrol",
            WalletAsk::Renew => "renew",
            WalletAsk::Statement { .. } => "statement",
        }
    }
}

/// A phone's request, signed by its wallet key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalletRequest {
    /// What is asked.
    pub ask: WalletAsk,
    /// The wallet's public key (it signs the request and the payments).
    pub wallet_key: [u8; 32],
    /// When, in the hub's time as the phone estimates it, Unix milliseconds.
    pub time_ms: u64,
    /// Random: the hub refuses a nonce it has seen from this wallet.
    pub nonce: [u8; 16],
    /// The wallet key's signature over everything above.
    pub signature: [u8; 64],
}

// A module-level const is evaluated at build time (an associated one only when used).
const _: () = assert!(
    WalletRequest::MAX_LEN >= WalletRequest::ENROL_LEN
        && WalletRequest::MAX_LEN >= WalletRequest::RENEW_LEN
);

impl WalletRequest {
    const WHAT: &'static str = "wallet request";

    /// The encoded size of an enrolment request (154 bytes).
    pub const ENROL_LEN: usize = ENROL_DOMAIN.len() + 32 + 8 + 16 + 1 + ENROL_CODE_LEN + 64;
    /// The encoded size of a renewal request (137 bytes).
    pub const RENEW_LEN: usize = RENEW_DOMAIN.len() + 32 + 8 + 16 + 64;
    /// The encoded size of a statement request (157 bytes).
    pub const STATEMENT_LEN: usize = STATEMENT_REQUEST_DOMAIN.len() + 32 + 8 + 16 + 8 + 64;
    /// The longest encoding (a statement request).
    pub const MAX_LEN: usize = Self::STATEMENT_LEN;

    /// Signs `ask` with the wallet's key. Refuses an enrolment code that
    /// is not canonical ([`normalise_enrol_code`] it first).
    pub fn sign(
        ask: WalletAsk,
        time_ms: u64,
        nonce: [u8; 16],
        key: &SigningKey,
    ) -> Result<Self, WireError> {
        let mut request = Self {
            ask,
            wallet_key: key.verifying_key().to_bytes(),
            time_ms,
            nonce,
            signature: [0; 64],
        };
        request.signature = key.sign(&request.signed_part()?).to_bytes();
        Ok(request)
    }

    /// The wallet asking.
    pub fn wallet(&self) -> WalletId {
        WalletId::of_key(&self.wallet_key)
    }

    fn signed_part(&self) -> Result<Vec<u8>, WireError> {
        let mut out = Vec::with_capacity(Self::MAX_LEN);
        out.extend_from_slice(self.ask.domain());
        out.extend_from_slice(&self.wallet_key);
        out.extend_from_slice(&self.time_ms.to_be_bytes());
        out.extend_from_slice(&self.nonce);
        match &self.ask {
            WalletAsk::Enrol { code } => {
                check_canonical_code(code, Self::WHAT)?;
                push_short(&mut out, code.as_bytes(), Self::WHAT)?;
            }
            WalletAsk::Renew => {}
            WalletAsk::Statement { before } => out.extend_from_slice(&before.to_be_bytes()),
        }
        Ok(out)
    }

    /// The canonical encoding; refuses an enrolment code that is not
    /// canonical (the decoder would).
    pub fn encode(&self) -> Result<Vec<u8>, WireError> {
        Ok(signed(self.signed_part()?, &self.signature))
    }

    /// Parses a request of the kind its domain tag names; [`Self::verify`]
    /// checks it. A code that is not canonical is refused here.
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        let what = Self::WHAT;
        let domain = [ENROL_DOMAIN, RENEW_DOMAIN, STATEMENT_REQUEST_DOMAIN]
            .into_iter()
            .find(|d| bytes.starts_with(d))
            .ok_or(WireError::Domain { what })?;
        let mut c = Fields::open(bytes, domain, what)?;
        let wallet_key = c.array()?;
        let time_ms = c.u64()?;
        let nonce = c.array()?;
        let ask = if domain == ENROL_DOMAIN {
            let code = c.short_string()?;
            check_canonical_code(&code, what)?;
            WalletAsk::Enrol { code }
        } else if domain == RENEW_DOMAIN {
            WalletAsk::Renew
        } else {
            WalletAsk::Statement { before: c.u64()? }
        };
        let request = Self {
            ask,
            wallet_key,
            time_ms,
            nonce,
            signature: c.array()?,
        };
        c.end()?;
        Ok(request)
    }

    /// Checks that it is stamped within [`REQUEST_WINDOW_MS`] of `now_ms`
    /// and signed by the key it carries (`verify_strict`, which also
    /// refuses weak keys).
    pub fn verify(&self, now_ms: u64) -> Result<(), WireError> {
        let what = Self::WHAT;
        if self.time_ms.abs_diff(now_ms) > REQUEST_WINDOW_MS {
            return Err(invalid(
                what,
                format!(
                    "stamped {} ms from the hub's clock (at most {REQUEST_WINDOW_MS})",
                    i128::from(self.time_ms) - i128::from(now_ms)
                ),
            ));
        }
        let key = VerifyingKey::from_bytes(&self.wallet_key)
            .map_err(|_| invalid(what, "the wallet key is not a valid key"))?;
        key.verify_strict(
            &self.signed_part()?,
            &Signature::from_bytes(&self.signature),
        )
        .map_err(|_| WireError::BadSignature { what })
    }
}

/// The hub's answer to a renewal: a fresh credential and the renewal note
/// beside it (the highest counter the hub has cleared for the wallet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Renewed {
    /// The new credential.
    pub credential: Credential,
    /// Its renewal note, signed by the same issuer key.
    pub note: RenewalNote,
}

impl Renewed {
    const WHAT: &'static str = "renewal answer";

    /// The encoded size.
    pub const LEN: usize = RENEWED_DOMAIN.len() + CREDENTIAL_LEN + RenewalNote::LEN;

    /// The canonical encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(Self::LEN);
        out.extend_from_slice(RENEWED_DOMAIN);
        out.extend_from_slice(&self.credential.encode());
        out.extend_from_slice(&self.note.encode());
        out
    }

    /// Parses an answer; [`Self::verify`] checks it.
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        let what = Self::WHAT;
        // The domain first, so another message is named as such, not as
        // a renewal answer of the wrong length.
        let mut c = Fields::open(bytes, RENEWED_DOMAIN, what)?;
        let credential = c.c.take(CREDENTIAL_LEN).map_err(c.truncated())?;
        let credential = Credential::decode(credential)
            .map_err(|e| invalid(what, format!("its credential: {e}")))?;
        let note = RenewalNote::decode(c.c.take(RenewalNote::LEN).map_err(c.truncated())?)?;
        c.end()?;
        Ok(Self { credential, note })
    }

    /// Checks that the credential was issued to `wallet_key`, that the
    /// note goes with it, and that a key in `issuers` signed both, or,
    /// with no trusted keys yet (a phone's first credential), the key the
    /// note names (trusted as the TLS connection it came over is). A key
    /// id the wallet does not trust is refused once it trusts any.
    pub fn verify(&self, wallet_key: &[u8; 32], issuers: &TrustedKeys) -> Result<(), WireError> {
        let what = Self::WHAT;
        if self.credential.terms.wallet_key != *wallet_key {
            return Err(invalid(what, "the credential is for another wallet key"));
        }
        self.note.verify(&self.credential)?;
        let key_id = self.note.key_id;
        match issuers.get(key_id) {
            Some(key) if key.to_bytes() == self.note.issuer_key => Ok(()),
            Some(_) => Err(invalid(
                what,
                format!("issuer key {key_id} is not the key this wallet trusts"),
            )),
            None if issuers.is_empty() => Ok(()),
            None => Err(WireError::UnknownKey { what, key_id }),
        }
    }
}

/// The state of a rider's account.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccountState {
    /// Renewals are granted.
    Open,
    /// No renewal; its wallets are on the deny list.
    Suspended,
    /// For good: no renewal; its wallets are on the deny list.
    Closed,
}

impl AccountState {
    /// Every state, in wire order (code 1 first).
    pub const ALL: [AccountState; 3] = [
        AccountState::Open,
        AccountState::Suspended,
        AccountState::Closed,
    ];

    /// The wire code.
    pub fn code(self) -> u8 {
        match self {
            AccountState::Open => 1,
            AccountState::Suspended => 2,
            AccountState::Closed => 3,
        }
    }

    /// The state with this code.
    pub fn from_code(code: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.code() == code)
    }

    /// The stored and printed name.
    pub fn as_str(self) -> &'static str {
        match self {
            AccountState::Open => "open",
            AccountState::Suspended => "suspended",
            AccountState::Closed => "closed",
        }
    }

    /// The state with this name.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == name)
    }
}

/// What moved an account's balance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    /// Money paid in (`hub account credit`).
    TopUp,
    /// A payment cleared from a reader's record (negative).
    Charge,
    /// A cleared payment voided by its reader (positive).
    Void,
    /// An operator's correction, either way.
    Adjustment,
}

impl EntryKind {
    /// Every kind, in wire order (code 1 first).
    pub const ALL: [EntryKind; 4] = [
        EntryKind::TopUp,
        EntryKind::Charge,
        EntryKind::Void,
        EntryKind::Adjustment,
    ];

    /// The wire code.
    pub fn code(self) -> u8 {
        match self {
            EntryKind::TopUp => 1,
            EntryKind::Charge => 2,
            EntryKind::Void => 3,
            EntryKind::Adjustment => 4,
        }
    }

    /// The kind with this code.
    pub fn from_code(code: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.code() == code)
    }

    /// The stored and printed name.
    pub fn as_str(self) -> &'static str {
        match self {
            EntryKind::TopUp => "top_up",
            EntryKind::Charge => "charge",
            EntryKind::Void => "void",
            EntryKind::Adjustment => "adjustment",
        }
    }

    /// The kind with this name.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == name)
    }
}

/// One line of an account's ledger, as a statement shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StatementEntry {
    /// The entry's id: increasing, a cursor for paging.
    pub id: u64,
    /// What it is.
    pub kind: EntryKind,
    /// Signed minor units: positive paid in, negative paid out.
    pub amount: i64,
    /// For a charge or void the reader's time of the record, otherwise the
    /// hub's time of the entry, Unix seconds.
    pub at: u64,
    /// For a charge or void the reader, for a top-up its reference.
    pub source: String,
    /// For a charge or void the record's sequence number at the reader.
    pub seq: u64,
}

/// An account's statement, signed by the issuer over the phone's nonce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    /// The request's nonce: a statement answers one request only.
    pub nonce: [u8; 16],
    /// The wallet that asked.
    pub wallet: WalletId,
    /// Hub time, Unix seconds.
    pub at: u64,
    /// The account's state.
    pub state: AccountState,
    /// ISO 4217 numeric currency of every amount.
    pub currency: u16,
    /// The sum of every ledger entry, minor units (negative: debt).
    pub balance: i64,
    /// How far below zero the balance may go.
    pub credit_line: u64,
    /// What the account's live credentials could still spend offline
    /// (docs/accounts.md §2).
    pub exposure: u64,
    /// The id to ask `before` for the next older page; 0 when this page
    /// reaches the first entry.
    pub next_before: u64,
    /// Newest first, at most [`STATEMENT_PAGE`].
    pub entries: Vec<StatementEntry>,
    /// The issuer key that signed.
    pub key_id: u8,
    /// The issuer's signature over everything above.
    pub signature: [u8; 64],
}

impl Statement {
    const WHAT: &'static str = "statement";

    /// Signs a statement with the issuer key `key_id`.
    pub fn sign(mut self, key_id: u8, issuer: &SigningKey) -> Result<Self, WireError> {
        self.key_id = key_id;
        self.signature = issuer.sign(&self.signed_part()?).to_bytes();
        Ok(self)
    }

    fn signed_part(&self) -> Result<Vec<u8>, WireError> {
        let what = Self::WHAT;
        // One check gives the count byte: no cast that could wrap.
        let count = u8::try_from(self.entries.len())
            .ok()
            .filter(|n| usize::from(*n) <= STATEMENT_PAGE)
            .ok_or_else(|| {
                invalid(
                    what,
                    format!("{} entries (at most {STATEMENT_PAGE})", self.entries.len()),
                )
            })?;
        let mut out = Vec::with_capacity(96 + 48 * self.entries.len());
        out.extend_from_slice(STATEMENT_DOMAIN);
        out.extend_from_slice(&self.nonce);
        out.extend_from_slice(&self.wallet.0);
        out.extend_from_slice(&self.at.to_be_bytes());
        out.push(self.state.code());
        out.extend_from_slice(&self.currency.to_be_bytes());
        out.extend_from_slice(&self.balance.to_be_bytes());
        out.extend_from_slice(&self.credit_line.to_be_bytes());
        out.extend_from_slice(&self.exposure.to_be_bytes());
        out.extend_from_slice(&self.next_before.to_be_bytes());
        out.push(count);
        for e in &self.entries {
            out.extend_from_slice(&e.id.to_be_bytes());
            out.push(e.kind.code());
            out.extend_from_slice(&e.amount.to_be_bytes());
            out.extend_from_slice(&e.at.to_be_bytes());
            push_short(&mut out, e.source.as_bytes(), what)?;
            out.extend_from_slice(&e.seq.to_be_bytes());
        }
        out.push(self.key_id);
        Ok(out)
    }

    /// The canonical encoding.
    pub fn encode(&self) -> Result<Vec<u8>, WireError> {
        Ok(signed(self.signed_part()?, &self.signature))
    }

    /// Parses a statement; [`Self::verify`] checks it.
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        let what = Self::WHAT;
        let mut c = Fields::open(bytes, STATEMENT_DOMAIN, what)?;
        let nonce = c.array()?;
        let wallet = WalletId(c.array()?);
        let at = c.u64()?;
        let state = AccountState::from_code(c.u8()?)
            .ok_or_else(|| invalid(what, "an unknown account state"))?;
        let currency = u16::from_be_bytes(c.array()?);
        let balance = i64::from_be_bytes(c.array()?);
        let credit_line = c.u64()?;
        let exposure = c.u64()?;
        let next_before = c.u64()?;
        let count = usize::from(c.u8()?);
        if count > STATEMENT_PAGE {
            return Err(invalid(
                what,
                format!("{count} entries (at most {STATEMENT_PAGE})"),
            ));
        }
        let mut entries = Vec::with_capacity(count);
        for _ in 0..count {
            entries.push(StatementEntry {
                id: c.u64()?,
                kind: EntryKind::from_code(c.u8()?)
                    .ok_or_else(|| invalid(what, "an unknown entry kind"))?,
                amount: i64::from_be_bytes(c.array()?),
                at: c.u64()?,
                source: c.short_string()?,
                seq: c.u64()?,
            });
        }
        let statement = Self {
            nonce,
            wallet,
            at,
            state,
            currency,
            balance,
            credit_line,
            exposure,
            next_before,
            entries,
            key_id: c.u8()?,
            signature: c.array()?,
        };
        c.end()?;
        Ok(statement)
    }

    /// Checks that a trusted issuer key signed it, for `nonce` (the one
    /// this phone just sent) and this phone's `wallet`.
    pub fn verify(
        &self,
        nonce: &[u8; 16],
        wallet: WalletId,
        issuers: &TrustedKeys,
    ) -> Result<(), WireError> {
        let what = Self::WHAT;
        verify_issuer(
            issuers,
            self.key_id,
            &self.signed_part()?,
            &self.signature,
            what,
        )?;
        if self.nonce != *nonce {
            return Err(invalid(
                what,
                "signed for another nonce than this request's (a replayed statement)",
            ));
        }
        if self.wallet != wallet {
            return Err(invalid(what, "made for another wallet"));
        }
        Ok(())
    }
}
