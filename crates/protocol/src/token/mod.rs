//! Token format v1: an issuer-signed credential followed by a wallet-signed payment.
//!
//! The whole token is 199 bytes, so it fits one short acoustic frame and a
//! version-10 QR code at error-correction level M. Every field has a fixed
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

/// The only token version this build reads and writes.
pub const VERSION: u8 = 1;
/// Encoded length of a credential (version byte included).
pub const CREDENTIAL_LEN: usize = 115;
/// Encoded length of the payment part that follows the credential in a token.
pub const PAYMENT_LEN: usize = 84;
/// Encoded length of a whole token.
pub const TOKEN_LEN: usize = CREDENTIAL_LEN + PAYMENT_LEN;
// The budget every transport is designed around (docs/protocol.md §3).
const _: () = assert!(TOKEN_LEN <= 200);

/// Length of the credential's signed part (everything before its signature).
const CREDENTIAL_SIGNED_LEN: usize = CREDENTIAL_LEN - 64;
/// Length of the token's wallet-signed part (everything before the wallet signature).
const PAYMENT_SIGNED_LEN: usize = TOKEN_LEN - 64;

/// Domain-separation prefix of the message an issuer signs.
pub const CREDENTIAL_DOMAIN: &[u8] = b"sonotap/v1/credential\0";
/// Domain-separation prefix of the message a wallet signs.
pub const PAYMENT_DOMAIN: &[u8] = b"sonotap/v1/payment\0";
const WALLET_ID_DOMAIN: &[u8] = b"sonotap/v1/wallet-id\0";
const READER_TAG_DOMAIN: &[u8] = b"sonotap/v1/reader-tag\0";

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
    #[error("unsupported version {0} (this reader speaks version {VERSION})")]
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
    /// When the wallet made the token, Unix seconds.
    pub timestamp: u32,
    /// The reader this token is bound to (see [`reader_tag`]), or 0 for any reader.
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
    /// The issuer-signed credential.
    pub credential: Credential,
    /// What the wallet authorises.
    pub payment: PaymentTerms,
    /// The wallet's signature over the domain tag, the credential and the payment terms.
    pub wallet_signature: [u8; 64],
}

impl Token {
    /// Signs `payment` under `credential` with the wallet key.
    ///
    /// The key must be the one the credential names; a mismatch would only
    /// produce tokens every reader declines, so it is refused here.
    pub fn sign(
        credential: Credential,
        payment: PaymentTerms,
        wallet: &SigningKey,
    ) -> Result<Token, SignError> {
        payment.check().map_err(SignError::Format)?;
        if wallet.verifying_key().to_bytes() != credential.terms.wallet_key {
            return Err(SignError::KeyMismatch);
        }
        let mut token = Token {
            credential,
            payment,
            wallet_signature: [0; 64],
        };
        let message = signed_message(PAYMENT_DOMAIN, &token.encode()[..PAYMENT_SIGNED_LEN]);
        token.wallet_signature = wallet.sign(&message).to_bytes();
        Ok(token)
    }

    /// The canonical 199-byte encoding.
    pub fn encode(&self) -> [u8; TOKEN_LEN] {
        let mut out = [0; TOKEN_LEN];
        out[..CREDENTIAL_LEN].copy_from_slice(&self.credential.encode());
        let mut w = Writer::new(&mut out[CREDENTIAL_LEN..]);
        w.put(&self.payment.amount.to_be_bytes());
        w.put(&self.payment.counter.to_be_bytes());
        w.put(&self.payment.total_before.to_be_bytes());
        w.put(&self.payment.timestamp.to_be_bytes());
        w.put(&self.payment.reader_tag.to_be_bytes());
        w.put(&self.wallet_signature);
        out
    }

    /// Parses exactly one canonical token; never panics, whatever the bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, FormatError> {
        let wrong_length = FormatError::WrongLength {
            what: "token",
            expected: TOKEN_LEN,
            got: bytes.len(),
        };
        // The version byte is checked first so that a future, longer token
        // version is reported as such rather than as a length error.
        if let Some(&version) = bytes.first()
            && version != VERSION
        {
            return Err(FormatError::UnsupportedVersion(version));
        }
        if bytes.len() != TOKEN_LEN {
            return Err(wrong_length);
        }
        let mut c = Cursor::new(bytes);
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

    /// Checks the wallet signature against the key inside the credential,
    /// with `verify_strict`. Does not check the credential's own signature.
    pub fn verify_payment(&self) -> Result<(), ed25519_dalek::SignatureError> {
        let wallet = VerifyingKey::from_bytes(&self.credential.terms.wallet_key)?;
        wallet.verify_strict(
            &self.payment_message(),
            &Signature::from_bytes(&self.wallet_signature),
        )
    }

    /// The exact message the wallet signed (for batch verification at the hub).
    pub fn payment_message(&self) -> Vec<u8> {
        signed_message(PAYMENT_DOMAIN, &self.encode()[..PAYMENT_SIGNED_LEN])
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
