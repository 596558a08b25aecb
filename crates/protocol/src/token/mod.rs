//! Payment tokens: an issuer-signed credential followed by a wallet-signed payment.
//!
//! Version 1 is 199 bytes and may name one reader by its tag; version 2 is
//! 200 bytes, a version byte in front of the same fields, and is bound to
//! the challenge a gate's beacon announced (see [`gate_binding`] and
//! [`crate::beacon`]), so that a recording replayed at another gate, or
//! later, is declined. Both fit one short acoustic frame and a version-10 QR
//! code at error-correction level M. Every field has a fixed
//! width and a fixed place; a parser accepts exactly one encoding of each
//! token (wrong length, unknown version, reserved values and trailing bytes
//! are refused). `docs/protocol.md` documents the layout byte by byte, with
//! test vectors.
//!
//! This module only encodes, decodes, signs and verifies signatures; whether
//! a token is *acceptable* (keys, time, counters, limits) is `policy`'s job.

use std::fmt;
use std::str::FromStr;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::bytes::{Cursor, Truncated};

/// The credential's version, and the first byte of a version-1 token.
pub const VERSION: u8 = 1;
/// The first byte of a version-2 (gate-bound) token.
pub const VERSION_2: u8 = 2;
/// Encoded length of a credential (version byte included).
pub const CREDENTIAL_LEN: usize = 115;
/// Encoded length of the payment part that follows the credential in a token.
pub const PAYMENT_LEN: usize = 84;
/// Encoded length of a version-1 token.
pub const TOKEN_LEN: usize = CREDENTIAL_LEN + PAYMENT_LEN;
/// Encoded length of a version-2 token: its version byte, then the same fields.
pub const TOKEN_V2_LEN: usize = 1 + TOKEN_LEN;
/// The longest token of any version.
pub const MAX_TOKEN_LEN: usize = TOKEN_V2_LEN;
// The budget every transport is designed around (docs/protocol.md §3).
const _: () = assert!(MAX_TOKEN_LEN <= 200);

/// Length of the credential's signed part (everything before its signature).
const CREDENTIAL_SIGNED_LEN: usize = CREDENTIAL_LEN - 64;
/// Length of a version-1 token's wallet-signed part (everything before the wallet signature).
#[cfg(test)]
const PAYMENT_SIGNED_LEN: usize = TOKEN_LEN - 64;

/// Domain-separation prefix of the message an issuer signs.
pub const CREDENTIAL_DOMAIN: &[u8] = b"sonotap/v1/credential\0";
/// Domain-separation prefix of the message a wallet signs (version 1).
pub const PAYMENT_DOMAIN: &[u8] = b"sonotap/v1/payment\0";
/// Domain-separation prefix of the message a wallet signs (version 2).
pub const PAYMENT_V2_DOMAIN: &[u8] = b"sonotap/v2/payment\0";
const WALLET_ID_DOMAIN: &[u8] = b"sonotap/v1/wallet-id\0";
const READER_TAG_DOMAIN: &[u8] = b"sonotap/v1/reader-tag\0";
const GATE_BINDING_DOMAIN: &[u8] = b"sonotap/v2/gate-binding\0";

/// A token's layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TokenVersion {
    /// 199 bytes; `reader_tag` is 0 (any reader) or one reader's tag.
    V1,
    /// 200 bytes; `reader_tag` holds the gate binding ([`gate_binding`]).
    V2,
}

impl TokenVersion {
    /// The first byte of the token.
    pub fn code(self) -> u8 {
        match self {
            TokenVersion::V1 => VERSION,
            TokenVersion::V2 => VERSION_2,
        }
    }

    /// The encoded length.
    pub fn encoded_len(self) -> usize {
        match self {
            TokenVersion::V1 => TOKEN_LEN,
            TokenVersion::V2 => TOKEN_V2_LEN,
        }
    }

    fn domain(self) -> &'static [u8] {
        match self {
            TokenVersion::V1 => PAYMENT_DOMAIN,
            TokenVersion::V2 => PAYMENT_V2_DOMAIN,
        }
    }
}

/// Why some bytes are not a canonical v1 credential or token.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FormatError {
    /// Too short, or too long (trailing bytes are never ignored).
    #[error("wrong length: {got} bytes, a v1 {what} is exactly {expected}")]
    WrongLength {
        /// What was being parsed.
        what: &'static str,
        /// The length the format requires.
        expected: usize,
        /// The length presented.
        got: usize,
    },
    /// The first byte names a version this build does not know.
    #[error("unsupported version {0} (this build speaks versions {VERSION} and {VERSION_2})")]
    UnsupportedVersion(u8),
    /// The scope byte is one of the reserved values.
    #[error("reserved scope code 0x{0:02x}")]
    ReservedScope(u8),
    /// Currency codes are ISO 4217 numeric codes, 1 to 999.
    #[error("currency code {0} is not an ISO 4217 numeric code (1..=999)")]
    BadCurrency(u16),
    /// A credential must be valid for at least one hour.
    #[error("credential validity of zero hours")]
    ZeroValidity,
    /// The per-payment cap must be at least one minor unit.
    #[error("per-payment cap of zero")]
    ZeroCap,
    /// Counters start at 1; 0 is never a valid counter.
    #[error("payment counter 0 (counters start at 1)")]
    ZeroCounter,
    /// A payment must authorise at least one minor unit.
    #[error("payment amount of zero")]
    ZeroAmount,
}

/// Where a credential may be spent.
///
/// Encoded in one byte: `0x01` transit, `0x02` vending, `0x80 | g` merchant
/// group `g` (0..=127). All other values are reserved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Transit gates.
    Transit,
    /// Vending machines.
    Vending,
    /// A group of merchants the operator defines (0..=127).
    Group(u8),
}

impl Scope {
    /// The one-byte wire code.
    pub fn code(self) -> u8 {
        match self {
            Scope::Transit => 0x01,
            Scope::Vending => 0x02,
            Scope::Group(g) => 0x80 | (g & 0x7f),
        }
    }

    /// Reads a wire code, refusing reserved values.
    pub fn from_code(code: u8) -> Result<Self, FormatError> {
        match code {
            0x01 => Ok(Scope::Transit),
            0x02 => Ok(Scope::Vending),
            0x80..=0xff => Ok(Scope::Group(code & 0x7f)),
            other => Err(FormatError::ReservedScope(other)),
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Transit => f.write_str("transit"),
            Scope::Vending => f.write_str("vending"),
            Scope::Group(g) => write!(f, "group:{g}"),
        }
    }
}

impl FromStr for Scope {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "transit" => Ok(Scope::Transit),
            "vending" => Ok(Scope::Vending),
            _ => s
                .strip_prefix("group:")
                .and_then(|g| g.parse::<u8>().ok())
                .filter(|g| *g <= 0x7f)
                .map(Scope::Group)
                .ok_or_else(|| {
                    format!("unknown scope {s:?}: expected transit, vending or group:N (N 0..=127)")
                }),
        }
    }
}

/// A wallet's identity: the first 8 bytes of SHA-256 over a domain tag and
/// the wallet's public key, so it needs no room in the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WalletId(pub [u8; 8]);

impl WalletId {
    /// Derives the id of the wallet holding `public_key`.
    pub fn of_key(public_key: &[u8; 32]) -> Self {
        let digest = Sha256::new()
            .chain_update(WALLET_ID_DOMAIN)
            .chain_update(public_key)
            .finalize();
        let mut id = [0; 8];
        id.copy_from_slice(&digest[..8]);
        WalletId(id)
    }
}

impl fmt::Display for WalletId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl FromStr for WalletId {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut id = [0; 8];
        hex::decode_to_slice(s, &mut id)
            .map_err(|_| format!("wallet id {s:?} is not 16 hex digits"))?;
        Ok(WalletId(id))
    }
}

/// The tag a token carries to bind itself to one reader (0 = any reader):
/// the first 4 bytes of SHA-256 over a domain tag and the reader id, never 0.
pub fn reader_tag(reader_id: &str) -> u32 {
    let digest = Sha256::new()
        .chain_update(READER_TAG_DOMAIN)
        .chain_update(reader_id.as_bytes())
        .finalize();
    let tag = u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]);
    tag.max(1)
}

/// What a version-2 token carries to bind itself to one gate and one of its
/// challenges: the first 4 bytes of SHA-256 over a domain tag, the gate's
/// reader tag and the challenge its beacon announced.
pub fn gate_binding(reader_tag: u32, challenge: &[u8; 8]) -> u32 {
    let digest = Sha256::new()
        .chain_update(GATE_BINDING_DOMAIN)
        .chain_update(reader_tag.to_be_bytes())
        .chain_update(challenge)
        .finalize();
    u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]])
}

/// What an issuer grants a wallet for offline use: the signed part of a credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CredentialTerms {
    /// Which issuer key signs this credential.
    pub issuer_key_id: u8,
    /// Where it may be spent.
    pub scope: Scope,
    /// ISO 4217 numeric currency code of every amount.
    pub currency: u16,
    /// The wallet's ed25519 public key; it signs the payments.
    pub wallet_key: [u8; 32],
    /// The most the wallet may spend offline under this credential, in minor units.
    pub offline_limit: u32,
    /// The most one payment may authorise, in minor units.
    pub per_payment_cap: u32,
    /// Start of validity, Unix seconds.
    pub valid_from: u32,
    /// Length of validity in hours, at least 1.
    pub valid_hours: u16,
}

impl CredentialTerms {
    /// The first second at which the credential is no longer valid.
    pub fn valid_until(&self) -> u64 {
        u64::from(self.valid_from) + u64::from(self.valid_hours) * 3600
    }

    /// The wallet this credential belongs to.
    pub fn wallet_id(&self) -> WalletId {
        WalletId::of_key(&self.wallet_key)
    }

    fn check(&self) -> Result<(), FormatError> {
        if !(1..=999).contains(&self.currency) {
            return Err(FormatError::BadCurrency(self.currency));
        }
        if self.valid_hours == 0 {
            return Err(FormatError::ZeroValidity);
        }
        if self.per_payment_cap == 0 {
            return Err(FormatError::ZeroCap);
        }
        Ok(())
    }

    fn encode_signed_part(&self) -> [u8; CREDENTIAL_SIGNED_LEN] {
        let mut out = [0; CREDENTIAL_SIGNED_LEN];
        let mut w = Writer::new(&mut out);
        w.put(&[VERSION, self.issuer_key_id, self.scope.code()]);
        w.put(&self.currency.to_be_bytes());
        w.put(&self.wallet_key);
        w.put(&self.offline_limit.to_be_bytes());
        w.put(&self.per_payment_cap.to_be_bytes());
        w.put(&self.valid_from.to_be_bytes());
        w.put(&self.valid_hours.to_be_bytes());
        out
    }

    /// Signs the terms with an issuer key, giving a credential.
    ///
    /// Refuses terms that would not parse back (currency, zero validity or cap).
    pub fn sign(self, issuer: &SigningKey) -> Result<Credential, FormatError> {
        self.check()?;
        let signature = issuer.sign(&signed_message(
            CREDENTIAL_DOMAIN,
            &self.encode_signed_part(),
        ));
        Ok(Credential {
            terms: self,
            issuer_signature: signature.to_bytes(),
        })
    }
}

/// An issuer-signed credential, as stored by a wallet and embedded in each token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Credential {
    /// What was granted.
    pub terms: CredentialTerms,
    /// The issuer's signature over the domain tag and the encoded terms.
    pub issuer_signature: [u8; 64],
}

impl Credential {
    /// The canonical 115-byte encoding.
    pub fn encode(&self) -> [u8; CREDENTIAL_LEN] {
        let mut out = [0; CREDENTIAL_LEN];
        out[..CREDENTIAL_SIGNED_LEN].copy_from_slice(&self.terms.encode_signed_part());
        out[CREDENTIAL_SIGNED_LEN..].copy_from_slice(&self.issuer_signature);
        out
    }

    /// Parses exactly one canonical credential.
    pub fn decode(bytes: &[u8]) -> Result<Self, FormatError> {
        if bytes.len() != CREDENTIAL_LEN {
            return Err(FormatError::WrongLength {
                what: "credential",
                expected: CREDENTIAL_LEN,
                got: bytes.len(),
            });
        }
        let mut c = Cursor::new(bytes);
        let credential = Self::read(&mut c).map_err(|Truncated| FormatError::WrongLength {
            what: "credential",
            expected: CREDENTIAL_LEN,
            got: bytes.len(),
        })??;
        Ok(credential)
    }

    /// Reads the fields; the outer error is running out of bytes.
    fn read(c: &mut Cursor<'_>) -> Result<Result<Self, FormatError>, Truncated> {
        let version = c.u8()?;
        let issuer_key_id = c.u8()?;
        let scope = c.u8()?;
        let currency = c.u16()?;
        let wallet_key = c.array()?;
        let offline_limit = c.u32()?;
        let per_payment_cap = c.u32()?;
        let valid_from = c.u32()?;
        let valid_hours = c.u16()?;
        let issuer_signature = c.array()?;
        Ok((|| {
            if version != VERSION {
                return Err(FormatError::UnsupportedVersion(version));
            }
            let terms = CredentialTerms {
                issuer_key_id,
                scope: Scope::from_code(scope)?,
                currency,
                wallet_key,
                offline_limit,
                per_payment_cap,
                valid_from,
                valid_hours,
            };
            terms.check()?;
            Ok(Credential {
                terms,
                issuer_signature,
            })
        })())
    }

    /// SHA-256 of the encoded credential: how readers and the hub name it.
    pub fn digest(&self) -> [u8; 32] {
        Sha256::digest(self.encode()).into()
    }

    /// Checks the issuer signature with `verify_strict` (no weak keys, no
    /// malleable signatures).
    pub fn verify(&self, issuer: &VerifyingKey) -> Result<(), ed25519_dalek::SignatureError> {
        issuer.verify_strict(
            &self.signed_message(),
            &Signature::from_bytes(&self.issuer_signature),
        )
    }

    /// The exact message the issuer signed (for batch verification at the hub).
    pub fn signed_message(&self) -> Vec<u8> {
        signed_message(CREDENTIAL_DOMAIN, &self.terms.encode_signed_part())
    }
}

/// What a wallet authorises in one payment: the payment's signed fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PaymentTerms {
    /// The most the reader may charge, in minor units (at least 1).
    pub amount: u32,
    /// Per-wallet counter, strictly increasing from 1.
    pub counter: u32,
    /// The wallet's offline running total under this credential before this payment.
    pub total_before: u32,
    /// When the wallet made the token, Unix seconds (version 2: in the
    /// gate's time, as its beacon told it).
    pub timestamp: u32,
    /// Version 1: the reader this token is bound to (see [`reader_tag`]), or
    /// 0 for any reader. Version 2: the gate binding (see [`gate_binding`]).
    pub reader_tag: u32,
}

impl PaymentTerms {
    fn check(&self) -> Result<(), FormatError> {
        if self.amount == 0 {
            return Err(FormatError::ZeroAmount);
        }
        if self.counter == 0 {
            return Err(FormatError::ZeroCounter);
        }
        Ok(())
    }
}

/// A complete payment token: credential, payment terms and the wallet's signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Token {
    /// The layout (and the domain the wallet signed under).
    pub version: TokenVersion,
    /// The issuer-signed credential.
    pub credential: Credential,
    /// What the wallet authorises.
    pub payment: PaymentTerms,
    /// The wallet's signature over the domain tag, the credential and the payment terms.
    pub wallet_signature: [u8; 64],
}

impl Token {
    /// Signs `payment` under `credential` with the wallet key: a version-1
    /// token, bound to the reader whose tag `payment.reader_tag` is (0: any).
    ///
    /// The key must be the one the credential names; a mismatch would only
    /// produce tokens every reader declines, so it is refused here.
    pub fn sign(
        credential: Credential,
        payment: PaymentTerms,
        wallet: &SigningKey,
    ) -> Result<Token, SignError> {
        Self::sign_as(TokenVersion::V1, credential, payment, wallet)
    }

    /// Signs a version-2 token bound to the gate whose beacon announced
    /// `reader_tag` and `challenge`: `payment.reader_tag` is replaced by
    /// their [`gate_binding`].
    pub fn sign_for_gate(
        credential: Credential,
        payment: PaymentTerms,
        reader_tag: u32,
        challenge: &[u8; 8],
        wallet: &SigningKey,
    ) -> Result<Token, SignError> {
        let payment = PaymentTerms {
            reader_tag: gate_binding(reader_tag, challenge),
            ..payment
        };
        Self::sign_as(TokenVersion::V2, credential, payment, wallet)
    }

    fn sign_as(
        version: TokenVersion,
        credential: Credential,
        payment: PaymentTerms,
        wallet: &SigningKey,
    ) -> Result<Token, SignError> {
        payment.check().map_err(SignError::Format)?;
        if wallet.verifying_key().to_bytes() != credential.terms.wallet_key {
            return Err(SignError::KeyMismatch);
        }
        let mut token = Token {
            version,
            credential,
            payment,
            wallet_signature: [0; 64],
        };
        token.wallet_signature = wallet.sign(&token.payment_message()).to_bytes();
        Ok(token)
    }

    /// The canonical encoding: 199 bytes (version 1) or 200 (version 2).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.version.encoded_len());
        if self.version == TokenVersion::V2 {
            out.push(VERSION_2);
        }
        out.extend_from_slice(&self.credential.encode());
        out.extend_from_slice(&self.payment.amount.to_be_bytes());
        out.extend_from_slice(&self.payment.counter.to_be_bytes());
        out.extend_from_slice(&self.payment.total_before.to_be_bytes());
        out.extend_from_slice(&self.payment.timestamp.to_be_bytes());
        out.extend_from_slice(&self.payment.reader_tag.to_be_bytes());
        out.extend_from_slice(&self.wallet_signature);
        out
    }

    /// Parses exactly one canonical token of either version; never panics,
    /// whatever the bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, FormatError> {
        // The version byte is checked first so that a future, longer token
        // version is reported as such rather than as a length error.
        let version = match bytes.first() {
            Some(&VERSION) | None => TokenVersion::V1,
            Some(&VERSION_2) => TokenVersion::V2,
            Some(&other) => return Err(FormatError::UnsupportedVersion(other)),
        };
        let wrong_length = FormatError::WrongLength {
            what: "token",
            expected: version.encoded_len(),
            got: bytes.len(),
        };
        if bytes.len() != version.encoded_len() {
            return Err(wrong_length);
        }
        let fields = match version {
            TokenVersion::V1 => bytes,
            TokenVersion::V2 => &bytes[1..],
        };
        let mut c = Cursor::new(fields);
        let read = |c: &mut Cursor<'_>| -> Result<Result<Token, FormatError>, Truncated> {
            let credential = match Credential::read(c)? {
                Ok(credential) => credential,
                Err(e) => return Ok(Err(e)),
            };
            let payment = PaymentTerms {
                amount: c.u32()?,
                counter: c.u32()?,
                total_before: c.u32()?,
                timestamp: c.u32()?,
                reader_tag: c.u32()?,
            };
            let wallet_signature = c.array()?;
            Ok(payment.check().map(|()| Token {
                version,
                credential,
                payment,
                wallet_signature,
            }))
        };
        let token = read(&mut c).map_err(|Truncated| wrong_length.clone())??;
        if c.remaining() != 0 {
            return Err(wrong_length);
        }
        Ok(token)
    }

    /// The reader a version-1 token is bound to by its tag; `None` for an
    /// unbound version-1 token and for every version-2 token.
    pub fn bound_reader_tag(&self) -> Option<u32> {
        match (self.version, self.payment.reader_tag) {
            (TokenVersion::V1, 0) | (TokenVersion::V2, _) => None,
            (TokenVersion::V1, tag) => Some(tag),
        }
    }

    /// The gate binding of a version-2 token.
    pub fn gate_binding(&self) -> Option<u32> {
        match self.version {
            TokenVersion::V1 => None,
            TokenVersion::V2 => Some(self.payment.reader_tag),
        }
    }

    /// Checks the wallet signature against the key inside the credential,
    /// with `verify_strict`. Does not check the credential's own signature.
    pub fn verify_payment(&self) -> Result<(), ed25519_dalek::SignatureError> {
        let wallet = VerifyingKey::from_bytes(&self.credential.terms.wallet_key)?;
        wallet.verify_strict(
            &self.payment_message(),
            &Signature::from_bytes(&self.wallet_signature),
        )
    }

    /// The exact message the wallet signed (for batch verification at the
    /// hub): the version's domain tag, then every byte of the token before
    /// the wallet's signature.
    pub fn payment_message(&self) -> Vec<u8> {
        let encoded = self.encode();
        signed_message(self.version.domain(), &encoded[..encoded.len() - 64])
    }

    /// The wallet that made this token.
    pub fn wallet_id(&self) -> WalletId {
        self.credential.terms.wallet_id()
    }
}

/// Why a wallet could not sign a payment.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SignError {
    /// The payment terms would not parse back.
    #[error("{0}")]
    Format(FormatError),
    /// The signing key is not the wallet key named in the credential.
    #[error("this wallet key is not the key the credential was issued to")]
    KeyMismatch,
}

/// Domain tag followed by the encoded fields: what ed25519 actually signs.
fn signed_message(domain: &[u8], fields: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(domain.len() + fields.len());
    message.extend_from_slice(domain);
    message.extend_from_slice(fields);
    message
}

/// Appends to a fixed buffer whose layout is known to fit.
struct Writer<'a> {
    buf: &'a mut [u8],
    at: usize,
}

impl<'a> Writer<'a> {
    fn new(buf: &'a mut [u8]) -> Self {
        Self { buf, at: 0 }
    }

    fn put(&mut self, bytes: &[u8]) {
        self.buf[self.at..self.at + bytes.len()].copy_from_slice(bytes);
        self.at += bytes.len();
    }
}

#[cfg(test)]
mod tests;
