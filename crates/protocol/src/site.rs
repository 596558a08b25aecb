//! What the readers of one site tell each other: "I accepted this token".
//!
//! A token heard at one gate can be replayed at the next (sound carries; a
//! screen can be photographed). Readers of a site share a local network
//! even when the hub is away, so each one announces every accept to the
//! others at once, and a reader declines `replayed` a token a peer already
//! accepted. An announcement carries the token itself, so a receiver checks
//! the wallet's and the issuer's signatures: a reader can only announce
//! tokens that exist, never frame a rider with an invented one. It is
//! signed by the announcing reader's key (under the `sonotap/v1/site`
//! domain) and is idempotent: the pair (reader, seq) names it, so a repeat
//! changes nothing. The layout is in `docs/sync.md` ("Site peers").

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use thiserror::Error;

use crate::api::check_reader_id;
use crate::bytes::{Cursor, Truncated};

/// Domain-separation prefix of every signed site message.
pub const SITE_DOMAIN: &[u8] = b"sonotap/v1/site\0";

/// The largest datagram a site message can be: two 64-byte ids, a 255-byte
/// token, the fixed fields and the signature. Receivers read into a buffer
/// one byte larger and refuse anything that fills it.
pub const MAX_SITE_MESSAGE: usize = 1 + (1 + 64) * 2 + 8 + 8 + 8 + 8 + 1 + 255 + 64;

/// What a site message says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SiteBody {
    /// The sender committed a charge for `token` as record `seq`.
    Accept {
        /// The charge record's sequence number at the sender.
        seq: u64,
        /// The sender's reader time of the decision, Unix seconds.
        at: u64,
        /// The running total the sender holds the credential to after this
        /// charge (what it saw, not what the token claims: a cheating
        /// wallet resets its claim at every gate).
        running_total: u64,
        /// The token exactly as presented.
        token: Vec<u8>,
    },
    /// The sender (re)started: peers re-send the accepts of their last
    /// freshness window, so that it learns what it missed while down. The
    /// nonce tells a new hello from a recorded one played again.
    Hello {
        /// Random bytes, fresh for each hello.
        nonce: [u8; 8],
    },
}

impl SiteBody {
    fn code(&self) -> u8 {
        match self {
            SiteBody::Accept { .. } => 1,
            SiteBody::Hello { .. } => 2,
        }
    }
}

/// One signed site message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiteMessage {
    /// The site both readers belong to.
    pub site: String,
    /// The sending reader.
    pub reader: String,
    /// The sender's wall clock when it sent, Unix microseconds: how the
    /// receiver measures the delay (the replay window); never used for a
    /// decision.
    pub sent_us: u64,
    /// What it says.
    pub body: SiteBody,
}

/// Why a datagram is not a site message, or not one to believe.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SiteError {
    /// Too short, too long, trailing bytes, or an unknown kind.
    #[error("not a site message: {0}")]
    Malformed(String),
    /// The signature does not verify under the sender's key.
    #[error("signature of {reader} does not verify")]
    BadSignature {
        /// The claimed sender.
        reader: String,
    },
}

fn malformed(detail: impl Into<String>) -> SiteError {
    SiteError::Malformed(detail.into())
}

impl SiteMessage {
    /// The signed bytes, without the domain: `u8 kind ‖ u8 len ‖ site ‖
    /// u8 len ‖ reader ‖ u64 sent_us` and, for an accept, `‖ u64 seq ‖ u64 at
    /// ‖ u64 running_total ‖ u8 len ‖ token`, for a hello `‖ nonce (8)`.
    fn unsigned(&self) -> Result<Vec<u8>, SiteError> {
        check_reader_id(&self.site).map_err(|e| malformed(format!("site: {e}")))?;
        check_reader_id(&self.reader).map_err(malformed)?;
        let mut out = Vec::with_capacity(MAX_SITE_MESSAGE);
        out.push(self.body.code());
        for id in [&self.site, &self.reader] {
            out.push(id.len() as u8); // checked above: 1 to 64 bytes
            out.extend_from_slice(id.as_bytes());
        }
        out.extend_from_slice(&self.sent_us.to_be_bytes());
        match &self.body {
            SiteBody::Accept {
                seq,
                at,
                running_total,
                token,
            } => {
                let len = u8::try_from(token.len())
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| malformed(format!("a token of {} bytes", token.len())))?;
                out.extend_from_slice(&seq.to_be_bytes());
                out.extend_from_slice(&at.to_be_bytes());
                out.extend_from_slice(&running_total.to_be_bytes());
                out.push(len);
                out.extend_from_slice(token);
            }
            SiteBody::Hello { nonce } => out.extend_from_slice(nonce),
        }
        Ok(out)
    }

    /// The datagram: the signed bytes and the reader's signature over
    /// `"sonotap/v1/site" ‖ 0x00 ‖ those bytes`.
    pub fn sign(&self, reader: &SigningKey) -> Result<Vec<u8>, SiteError> {
        let mut out = self.unsigned()?;
        let signature = reader.sign(&[SITE_DOMAIN, &out].concat());
        out.extend_from_slice(&signature.to_bytes());
        Ok(out)
    }

    /// Parses one datagram without checking its signature (the receiver
    /// needs the sender's id to find its key): canonical, nothing left over.
    pub fn parse(datagram: &[u8]) -> Result<Unverified, SiteError> {
        if datagram.len() > MAX_SITE_MESSAGE {
            return Err(malformed(format!("{} bytes", datagram.len())));
        }
        let signed_len = datagram
            .len()
            .checked_sub(64)
            .ok_or_else(|| malformed(format!("{} bytes", datagram.len())))?;
        let (signed, signature) = datagram.split_at(signed_len);
        let mut c = Cursor::new(signed);
        let truncated = |Truncated| malformed("truncated");
        let kind = c.u8().map_err(truncated)?;
        let mut id = |what: &str| -> Result<String, SiteError> {
            let bytes = c.short_bytes().map_err(truncated)?;
            let text = std::str::from_utf8(bytes)
                .map_err(|_| malformed(format!("{what} is not UTF-8")))?;
            check_reader_id(text).map_err(|e| malformed(format!("{what}: {e}")))?;
            Ok(text.to_string())
        };
        let site = id("site")?;
        let reader = id("reader")?;
        let sent_us = c.u64().map_err(truncated)?;
        let body = match kind {
            1 => {
                let seq = c.u64().map_err(truncated)?;
                let at = c.u64().map_err(truncated)?;
                let running_total = c.u64().map_err(truncated)?;
                let token = c.short_bytes().map_err(truncated)?.to_vec();
                if token.is_empty() {
                    return Err(malformed("an empty token"));
                }
                SiteBody::Accept {
                    seq,
                    at,
                    running_total,
                    token,
                }
            }
            2 => SiteBody::Hello {
                nonce: c.array().map_err(truncated)?,
            },
            other => return Err(malformed(format!("unknown kind {other}"))),
        };
        if c.remaining() != 0 {
            return Err(malformed(format!("{} trailing bytes", c.remaining())));
        }
        let mut sig = [0u8; 64];
        sig.copy_from_slice(signature);
        Ok(Unverified {
            message: SiteMessage {
                site,
                reader,
                sent_us,
                body,
            },
            signed: signed.to_vec(),
            signature: sig,
        })
    }
}

/// A parsed datagram whose signature has not been checked yet.
#[derive(Debug, Clone)]
pub struct Unverified {
    message: SiteMessage,
    signed: Vec<u8>,
    signature: [u8; 64],
}

impl Unverified {
    /// Who claims to have sent it (look up its key by this).
    pub fn sender(&self) -> (&str, &str) {
        (&self.message.site, &self.message.reader)
    }

    /// The message, once its signature verifies strictly under `key`.
    pub fn verify(self, key: &VerifyingKey) -> Result<SiteMessage, SiteError> {
        key.verify_strict(
            &[SITE_DOMAIN, &self.signed].concat(),
            &Signature::from_bytes(&self.signature),
        )
        .map_err(|_| SiteError::BadSignature {
            reader: self.message.reader.clone(),
        })?;
        Ok(self.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn accept() -> SiteMessage {
        SiteMessage {
            site: "station-12".into(),
            reader: "gate-1".into(),
            sent_us: 1_800_003_601_250_000,
            body: SiteBody::Accept {
                seq: 42,
                at: 1_800_003_601,
                running_total: 1_250,
                token: vec![7; 199],
            },
        }
    }

    #[test]
    fn a_signed_accept_parses_back_and_verifies_under_the_senders_key() {
        let datagram = accept().sign(&key(1)).unwrap();
        assert!(datagram.len() <= MAX_SITE_MESSAGE);
        let parsed = SiteMessage::parse(&datagram).unwrap();
        assert_eq!(parsed.sender(), ("station-12", "gate-1"));
        assert_eq!(parsed.verify(&key(1).verifying_key()).unwrap(), accept());
    }

    #[test]
    fn a_hello_parses_back() {
        let hello = SiteMessage {
            body: SiteBody::Hello { nonce: [3; 8] },
            ..accept()
        };
        let datagram = hello.sign(&key(1)).unwrap();
        let parsed = SiteMessage::parse(&datagram).unwrap();
        assert_eq!(parsed.verify(&key(1).verifying_key()).unwrap(), hello);
    }

    #[test]
    fn another_readers_key_or_any_changed_byte_fails_the_signature() {
        let datagram = accept().sign(&key(1)).unwrap();
        let parsed = SiteMessage::parse(&datagram).unwrap();
        assert!(matches!(
            parsed.verify(&key(2).verifying_key()),
            Err(SiteError::BadSignature { .. })
        ));
        for i in 0..datagram.len() {
            let mut bent = datagram.clone();
            bent[i] ^= 0x01;
            if let Ok(parsed) = SiteMessage::parse(&bent) {
                assert!(parsed.verify(&key(1).verifying_key()).is_err(), "byte {i}");
            }
        }
    }

    #[test]
    fn truncated_extended_and_oversized_datagrams_are_malformed() {
        let datagram = accept().sign(&key(1)).unwrap();
        for n in 0..datagram.len() {
            assert!(
                SiteMessage::parse(&datagram[..n]).is_err(),
                "{n} bytes parsed"
            );
        }
        let mut longer = datagram.clone();
        longer.insert(datagram.len() - 64, 0);
        assert!(matches!(
            SiteMessage::parse(&longer),
            Err(SiteError::Malformed(_))
        ));
        assert!(SiteMessage::parse(&vec![1; MAX_SITE_MESSAGE + 1]).is_err());
    }

    #[test]
    fn ids_outside_the_reader_id_rules_are_refused_both_ways() {
        let bad = SiteMessage {
            reader: "gate 1".into(),
            ..accept()
        };
        assert!(bad.sign(&key(1)).is_err());
        let mut datagram = accept().sign(&key(1)).unwrap();
        // "gate-1" starts after kind, len, "station-12", len.
        datagram[1 + 1 + 10 + 1 + 4] = b' ';
        assert!(matches!(
            SiteMessage::parse(&datagram),
            Err(SiteError::Malformed(_))
        ));
    }

    #[test]
    fn an_unknown_kind_or_an_empty_token_is_malformed() {
        let mut datagram = accept().sign(&key(1)).unwrap();
        datagram[0] = 9;
        assert!(SiteMessage::parse(&datagram).is_err());
        let empty = SiteMessage {
            body: SiteBody::Accept {
                seq: 1,
                at: 1,
                running_total: 1,
                token: Vec::new(),
            },
            ..accept()
        };
        assert!(empty.sign(&key(1)).is_err());
    }
}
