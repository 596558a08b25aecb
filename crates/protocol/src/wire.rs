//! The sync formats: reader batches, hub acknowledgements, deny-list entries
//! and issuer key sets.
//!
//! Each is a canonical binary encoding (fixed-width big-endian fields, short
//! byte strings with a one-byte length, nothing after the last field) that
//! starts with its own domain tag and ends with the signature over
//! everything before it, so a message of one kind can never be taken for
//! another. `docs/sync.md` documents the layouts byte by byte.

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use thiserror::Error;

use crate::bytes::{Cursor, Truncated};
use crate::policy::TrustedKeys;
use crate::record::{RecordBody, RecordKind};
use crate::token::WalletId;

mod account;
pub use account::*;

/// First bytes of a batch, and of what its reader signs.
pub const BATCH_DOMAIN: &[u8] = b"sonotap/v1/batch\0";
/// First bytes of a hub acknowledgement.
pub const ACK_DOMAIN: &[u8] = b"sonotap/v1/ack\0";
/// First bytes of a deny-list entry of format 1 (a free-text reason), which
/// readers still accept from hubs that wrote them before format 2.
pub const DENY_DOMAIN: &[u8] = b"sonotap/v1/deny\0";
/// First bytes of a deny-list entry of format 2 (a reason code, no text):
/// what the hub signs for an entry that names a whole wallet.
pub const DENY_DOMAIN_V2: &[u8] = b"sonotap/v2/deny\0";
/// First bytes of a deny-list entry of format 3 (a kind and its subject):
/// what the hub signs for an entry that names one credential. Wallet
/// entries stay format 2, so readers built before format 3 keep reading them.
pub const DENY_DOMAIN_V3: &[u8] = b"sonotap/v3/deny\0";
/// First bytes of a renewal note (hub → wallet, beside a renewed credential).
pub const RENEWAL_DOMAIN: &[u8] = b"sonotap/v1/renewal\0";
/// First bytes of the hub's signed time statement.
pub const TIME_DOMAIN: &[u8] = b"sonotap/v1/time\0";
/// First bytes of a reader's signed request (reads of the deny list and keys).
pub const REQUEST_DOMAIN: &[u8] = b"sonotap/v1/request\0";
/// How far a signed request's time may be from the hub's clock, either way.
/// The reader stamps its requests with the hub's time it learned from this
/// round's signed time statement, so only the network delay counts against it.
pub const REQUEST_WINDOW_MS: u64 = 5 * 60 * 1000;
/// First bytes of an issuer key set.
pub const KEYSET_DOMAIN: &[u8] = b"sonotap/v1/keyset\0";
/// The most records one batch may carry (about 2.8 MB of 199-byte tokens).
pub const MAX_BATCH_RECORDS: usize = 10_000;
/// The largest sequence number a record may carry: 2^63 − 1, the largest
/// integer SQLite and PostgreSQL store (`INTEGER`, `BIGINT`). A batch
/// reaching past it is refused when decoded, never stored clamped.
pub const MAX_SEQ: u64 = i64::MAX as u64;

/// Why bytes are not a valid sync message.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum WireError {
    /// The bytes end before the layout does.
    #[error("{what} is truncated")]
    Truncated {
        /// The message kind.
        what: &'static str,
    },
    /// Bytes after the last field.
    #[error("{what} has {extra} trailing bytes")]
    Trailing {
        /// The message kind.
        what: &'static str,
        /// How many.
        extra: usize,
    },
    /// The bytes do not start with the kind's domain tag.
    #[error("not a {what} (wrong domain tag)")]
    Domain {
        /// The message kind expected.
        what: &'static str,
    },
    /// A field is out of range or the message contradicts itself.
    #[error("invalid {what}: {detail}")]
    Invalid {
        /// The message kind.
        what: &'static str,
        /// Which field and why.
        detail: String,
    },
    /// The signature does not verify under the named key.
    #[error("{what}: bad signature")]
    BadSignature {
        /// The message kind.
        what: &'static str,
    },
    /// Signed by an issuer key this side does not trust.
    #[error("{what} is signed by issuer key {key_id}, which is not trusted here")]
    UnknownKey {
        /// The message kind.
        what: &'static str,
        /// The key id named.
        key_id: u8,
    },
}

fn invalid(what: &'static str, detail: impl Into<String>) -> WireError {
    WireError::Invalid {
        what,
        detail: detail.into(),
    }
}

/// Reads one message's fields after its domain tag, naming the message in
/// every error; [`Fields::end`] refuses trailing bytes.
struct Fields<'a> {
    c: Cursor<'a>,
    what: &'static str,
}

impl<'a> Fields<'a> {
    /// Starts after `domain`, which must open `bytes`.
    fn open(bytes: &'a [u8], domain: &[u8], what: &'static str) -> Result<Self, WireError> {
        let mut c = Cursor::new(bytes);
        match c.take(domain.len()) {
            Ok(tag) if tag == domain => Ok(Self { c, what }),
            _ => Err(WireError::Domain { what }),
        }
    }

    fn truncated(&self) -> impl Fn(Truncated) -> WireError + use<> {
        let what = self.what;
        move |_| WireError::Truncated { what }
    }

    fn u8(&mut self) -> Result<u8, WireError> {
        self.c.u8().map_err(self.truncated())
    }

    fn u32(&mut self) -> Result<u32, WireError> {
        self.c.u32().map_err(self.truncated())
    }

    fn u64(&mut self) -> Result<u64, WireError> {
        self.c.u64().map_err(self.truncated())
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        self.c.array().map_err(self.truncated())
    }

    fn short_bytes(&mut self) -> Result<&'a [u8], WireError> {
        self.c.short_bytes().map_err(self.truncated())
    }

    fn short_string(&mut self) -> Result<String, WireError> {
        let what = self.what;
        let bytes = self.short_bytes()?;
        String::from_utf8(bytes.to_vec()).map_err(|_| invalid(what, "a text field is not UTF-8"))
    }

    /// The message must end here: a canonical encoding has nothing after it.
    fn end(self) -> Result<(), WireError> {
        match self.c.remaining() {
            0 => Ok(()),
            extra => Err(WireError::Trailing {
                what: self.what,
                extra,
            }),
        }
    }
}

fn push_short(out: &mut Vec<u8>, bytes: &[u8], what: &'static str) -> Result<(), WireError> {
    let len = u8::try_from(bytes.len()).map_err(|_| {
        invalid(
            what,
            format!("a field of {} bytes (at most 255)", bytes.len()),
        )
    })?;
    out.push(len);
    out.extend_from_slice(bytes);
    Ok(())
}

/// A message's signed part followed by its signature: every encoding's layout.
fn signed(mut part: Vec<u8>, signature: &[u8; 64]) -> Vec<u8> {
    part.extend_from_slice(signature);
    part
}

/// Checks an issuer signature under the trusted key it names.
fn verify_issuer(
    issuers: &TrustedKeys,
    key_id: u8,
    message: &[u8],
    signature: &[u8; 64],
    what: &'static str,
) -> Result<(), WireError> {
    let key = issuers
        .get(key_id)
        .ok_or(WireError::UnknownKey { what, key_id })?;
    key.verify_strict(message, &Signature::from_bytes(signature))
        .map_err(|_| WireError::BadSignature { what })
}

/// Count and sums of a run of records: what both ends reconcile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct Totals {
    /// Number of records.
    pub count: u32,
    /// Sum of charge amounts, minor units.
    pub charged: u64,
    /// Sum of void amounts, minor units.
    pub voided: u64,
}

impl Totals {
    /// Adds one record.
    pub fn add(&mut self, kind: RecordKind, amount: u32) {
        self.count = self.count.saturating_add(1);
        match kind {
            RecordKind::Charge => self.charged = self.charged.saturating_add(u64::from(amount)),
            RecordKind::Void => self.voided = self.voided.saturating_add(u64::from(amount)),
        }
    }

    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.count.to_be_bytes());
        out.extend_from_slice(&self.charged.to_be_bytes());
        out.extend_from_slice(&self.voided.to_be_bytes());
    }

    fn decode(c: &mut Fields<'_>) -> Result<Self, WireError> {
        Ok(Self {
            count: c.u32()?,
            charged: c.u64()?,
            voided: c.u64()?,
        })
    }
}

/// One record in a batch: the chain fields are implied by its position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchRecord {
    /// Reader time of the decision, Unix seconds.
    pub at: u64,
    /// What the record does.
    pub kind: RecordKind,
    /// Amount, minor units.
    pub amount: u32,
    /// The token exactly as presented.
    pub token: Vec<u8>,
    /// The reader's signature over the record body.
    pub signature: [u8; 64],
}

/// A reader's signed run of consecutive records: the unit of upload and export.
///
/// Its idempotency key is `(reader_id, first_seq, last_seq)`; its content is
/// pinned by the hash of its last record, which chains over all of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// The reader that made the records.
    pub reader_id: String,
    /// Sequence number of the first record.
    pub first_seq: u64,
    /// Hash of the record before the first one ([`crate::record::GENESIS_HASH`] at the start).
    pub prev_hash: [u8; 32],
    /// The records, in sequence order.
    pub records: Vec<BatchRecord>,
    /// Reader time when the batch was made, Unix seconds.
    pub created_at: u64,
    /// The reader's signature over everything above.
    pub signature: [u8; 64],
}

/// A record of a batch with its implied sequence number and hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainedRecord<'a> {
    /// The record body, as the reader signed it.
    pub body: RecordBody<'a>,
    /// Hash of the body.
    pub hash: [u8; 32],
    /// The reader's signature.
    pub signature: &'a [u8; 64],
}

impl Batch {
    const WHAT: &'static str = "batch";

    /// Builds and signs a batch.
    pub fn seal(
        reader_id: &str,
        first_seq: u64,
        prev_hash: [u8; 32],
        records: Vec<BatchRecord>,
        created_at: u64,
        reader_key: &SigningKey,
    ) -> Result<Self, WireError> {
        let mut batch = Self {
            reader_id: reader_id.to_owned(),
            first_seq,
            prev_hash,
            records,
            created_at,
            signature: [0; 64],
        };
        let signed = batch.signed_part()?;
        batch.signature = reader_key.sign(&signed).to_bytes();
        Ok(batch)
    }

    /// Sequence number of the last record.
    pub fn last_seq(&self) -> u64 {
        self.first_seq
            .saturating_add(self.records.len() as u64)
            .saturating_sub(1)
    }

    /// Count and sums of the records.
    pub fn totals(&self) -> Totals {
        let mut totals = Totals::default();
        for r in &self.records {
            totals.add(r.kind, r.amount);
        }
        totals
    }

    /// The records with their sequence numbers, bodies and hashes, in order.
    pub fn chained(&self) -> Vec<ChainedRecord<'_>> {
        let mut prev = self.prev_hash;
        let mut out = Vec::with_capacity(self.records.len());
        for (i, r) in self.records.iter().enumerate() {
            let body = RecordBody {
                reader_id: &self.reader_id,
                seq: self.first_seq + i as u64,
                at: r.at,
                kind: r.kind,
                amount: r.amount,
                token: &r.token,
                prev_hash: prev,
            };
            let hash = body.hash();
            prev = hash;
            out.push(ChainedRecord {
                body,
                hash,
                signature: &r.signature,
            });
        }
        out
    }

    /// Hash of the last record (or `prev_hash` of an empty batch).
    pub fn last_hash(&self) -> [u8; 32] {
        self.chained().last().map_or(self.prev_hash, |r| r.hash)
    }

    fn check(&self) -> Result<(), WireError> {
        let what = Self::WHAT;
        if self.reader_id.is_empty() {
            return Err(invalid(what, "empty reader id"));
        }
        if self.records.is_empty() || self.records.len() > MAX_BATCH_RECORDS {
            return Err(invalid(
                what,
                format!(
                    "{} records (a batch holds 1 to {MAX_BATCH_RECORDS})",
                    self.records.len()
                ),
            ));
        }
        if self.first_seq == 0 {
            return Err(invalid(what, "first sequence number 0 (they start at 1)"));
        }
        let last = self
            .first_seq
            .checked_add(self.records.len() as u64 - 1)
            .filter(|last| *last <= MAX_SEQ);
        if last.is_none() {
            return Err(invalid(
                what,
                format!(
                    "sequence numbers {}.. with {} records reach past 2^63-1 \
                     ({MAX_SEQ}), the largest a record may carry",
                    self.first_seq,
                    self.records.len()
                ),
            ));
        }
        Ok(())
    }

    fn signed_part(&self) -> Result<Vec<u8>, WireError> {
        self.check()?;
        let what = Self::WHAT;
        let mut out = Vec::with_capacity(128 + self.records.len() * 280);
        out.extend_from_slice(BATCH_DOMAIN);
        push_short(&mut out, self.reader_id.as_bytes(), what)?;
        out.extend_from_slice(&self.first_seq.to_be_bytes());
        self.totals().encode(&mut out);
        out.extend_from_slice(&self.prev_hash);
        for r in &self.records {
            out.extend_from_slice(&r.at.to_be_bytes());
            out.push(r.kind.code());
            out.extend_from_slice(&r.amount.to_be_bytes());
            push_short(&mut out, &r.token, what)?;
            out.extend_from_slice(&r.signature);
        }
        out.extend_from_slice(&self.created_at.to_be_bytes());
        Ok(out)
    }

    /// The canonical encoding, signature last.
    pub fn encode(&self) -> Result<Vec<u8>, WireError> {
        Ok(signed(self.signed_part()?, &self.signature))
    }

    /// Parses a batch. Checks the layout and that the stated totals match
    /// the records; [`Batch::verify`] checks the signature.
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        let what = Self::WHAT;
        let mut c = Fields::open(bytes, BATCH_DOMAIN, what)?;
        let reader_id = c.short_string()?;
        let first_seq = c.u64()?;
        let stated = Totals::decode(&mut c)?;
        if stated.count as usize > MAX_BATCH_RECORDS {
            return Err(invalid(
                what,
                format!("{} records (at most {MAX_BATCH_RECORDS})", stated.count),
            ));
        }
        let prev_hash = c.array()?;
        let mut records = Vec::with_capacity(stated.count as usize);
        for _ in 0..stated.count {
            let at = c.u64()?;
            let code = c.u8()?;
            let kind = RecordKind::from_code(code)
                .ok_or_else(|| invalid(what, format!("unknown record kind {code}")))?;
            let amount = c.u32()?;
            let token = c.short_bytes()?.to_vec();
            let signature = c.array()?;
            records.push(BatchRecord {
                at,
                kind,
                amount,
                token,
                signature,
            });
        }
        let created_at = c.u64()?;
        let signature = c.array()?;
        c.end()?;
        let batch = Self {
            reader_id,
            first_seq,
            prev_hash,
            records,
            created_at,
            signature,
        };
        batch.check()?;
        let actual = batch.totals();
        if actual != stated {
            return Err(invalid(
                what,
                format!(
                    "stated totals (count {}, charged {}, voided {}) do not match its records \
                     (count {}, charged {}, voided {})",
                    stated.count,
                    stated.charged,
                    stated.voided,
                    actual.count,
                    actual.charged,
                    actual.voided
                ),
            ));
        }
        Ok(batch)
    }

    /// Checks the reader's signature over the whole batch (`verify_strict`).
    pub fn verify(&self, reader_key: &VerifyingKey) -> Result<(), WireError> {
        let signed = self.signed_part()?;
        reader_key
            .verify_strict(&signed, &Signature::from_bytes(&self.signature))
            .map_err(|_| WireError::BadSignature { what: Self::WHAT })
    }
}

/// The hub's signed receipt for a batch: the reader may mark these records
/// synced (and later prune them) only on a receipt that verifies and matches
/// what it sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    /// The reader whose records these are.
    pub reader_id: String,
    /// First sequence number acknowledged.
    pub first_seq: u64,
    /// Last sequence number acknowledged.
    pub last_seq: u64,
    /// What the hub counted in that range.
    pub totals: Totals,
    /// Hash of the last record, as the hub computed it.
    pub last_hash: [u8; 32],
    /// Hub time at acknowledgement, Unix milliseconds.
    pub hub_time_ms: u64,
    /// The issuer key that signed.
    pub key_id: u8,
    /// The issuer's signature over everything above.
    pub signature: [u8; 64],
}

impl Ack {
    const WHAT: &'static str = "acknowledgement";

    /// The receipt for `batch`, signed by the issuer key `key_id`.
    pub fn for_batch(
        batch: &Batch,
        hub_time_ms: u64,
        key_id: u8,
        issuer: &SigningKey,
    ) -> Result<Self, WireError> {
        Self::with_last_hash(batch, batch.last_hash(), hub_time_ms, key_id, issuer)
    }

    /// As [`Ack::for_batch`], for a caller that already walked the chain
    /// and knows the last record's hash (the hub, after checking it).
    pub fn with_last_hash(
        batch: &Batch,
        last_hash: [u8; 32],
        hub_time_ms: u64,
        key_id: u8,
        issuer: &SigningKey,
    ) -> Result<Self, WireError> {
        let mut ack = Self {
            reader_id: batch.reader_id.clone(),
            first_seq: batch.first_seq,
            last_seq: batch.last_seq(),
            totals: batch.totals(),
            last_hash,
            hub_time_ms,
            key_id,
            signature: [0; 64],
        };
        ack.signature = issuer.sign(&ack.signed_part()?).to_bytes();
        Ok(ack)
    }

    fn signed_part(&self) -> Result<Vec<u8>, WireError> {
        let mut out = Vec::with_capacity(160);
        out.extend_from_slice(ACK_DOMAIN);
        push_short(&mut out, self.reader_id.as_bytes(), Self::WHAT)?;
        out.extend_from_slice(&self.first_seq.to_be_bytes());
        out.extend_from_slice(&self.last_seq.to_be_bytes());
        self.totals.encode(&mut out);
        out.extend_from_slice(&self.last_hash);
        out.extend_from_slice(&self.hub_time_ms.to_be_bytes());
        out.push(self.key_id);
        Ok(out)
    }

    /// The canonical encoding.
    pub fn encode(&self) -> Result<Vec<u8>, WireError> {
        Ok(signed(self.signed_part()?, &self.signature))
    }

    /// Parses a receipt; [`Ack::verify`] checks it.
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        let what = Self::WHAT;
        let mut c = Fields::open(bytes, ACK_DOMAIN, what)?;
        let ack = Self {
            reader_id: c.short_string()?,
            first_seq: c.u64()?,
            last_seq: c.u64()?,
            totals: Totals::decode(&mut c)?,
            last_hash: c.array()?,
            hub_time_ms: c.u64()?,
            key_id: c.u8()?,
            signature: c.array()?,
        };
        c.end()?;
        Ok(ack)
    }

    /// Checks the issuer's signature and that the receipt is for exactly
    /// `batch` (same reader, range, totals and last hash).
    pub fn verify(&self, batch: &Batch, issuers: &TrustedKeys) -> Result<(), WireError> {
        let what = Self::WHAT;
        verify_issuer(
            issuers,
            self.key_id,
            &self.signed_part()?,
            &self.signature,
            what,
        )?;
        let expected = (
            batch.reader_id.as_str(),
            batch.first_seq,
            batch.last_seq(),
            batch.totals(),
            batch.last_hash(),
        );
        let got = (
            self.reader_id.as_str(),
            self.first_seq,
            self.last_seq,
            self.totals,
            self.last_hash,
        );
        if expected != got {
            return Err(invalid(
                what,
                format!(
                    "it acknowledges {} records {}..={} (count {}, charged {}), \
                     not the batch sent ({} records {}..={}, count {}, charged {})",
                    got.0,
                    got.1,
                    got.2,
                    got.3.count,
                    got.3.charged,
                    expected.0,
                    expected.1,
                    expected.2,
                    expected.3.count,
                    expected.3.charged
                ),
            ));
        }
        Ok(())
    }
}

/// What a deny-list entry does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DenyAction {
    /// Decline the wallet from now on.
    Deny,
    /// Lift an earlier denial.
    Allow,
}

impl DenyAction {
    fn code(self) -> u8 {
        match self {
            DenyAction::Deny => 1,
            DenyAction::Allow => 2,
        }
    }

    fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(DenyAction::Deny),
            2 => Some(DenyAction::Allow),
            _ => None,
        }
    }
}

/// Why a wallet is denied (or allowed again): the only reason a deny-list
/// entry publishes. An operator's free-text note stays at the hub.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DenyReason {
    /// An operator's decision (`hub deny|allow` without another code).
    Operator,
    /// The rider reported the phone lost or stolen.
    LostOrStolen,
    /// The operator suspects fraud.
    SuspectedFraud,
    /// Clearing: one wallet counter signed twice with different contents.
    CounterReused,
    /// Clearing: running totals that do not chain.
    TotalsDoNotChain,
    /// Clearing: net spend under one credential above its offline limit.
    OverOfflineLimit,
}

impl DenyReason {
    /// Every code, in wire order (code 1 first).
    pub const ALL: [DenyReason; 6] = [
        DenyReason::Operator,
        DenyReason::LostOrStolen,
        DenyReason::SuspectedFraud,
        DenyReason::CounterReused,
        DenyReason::TotalsDoNotChain,
        DenyReason::OverOfflineLimit,
    ];

    /// The stable name (`hub deny --reason`, JSON, the reader's deny list).
    pub fn as_str(self) -> &'static str {
        match self {
            DenyReason::Operator => "operator",
            DenyReason::LostOrStolen => "lost_or_stolen",
            DenyReason::SuspectedFraud => "suspected_fraud",
            DenyReason::CounterReused => "counter_reused",
            DenyReason::TotalsDoNotChain => "totals_do_not_chain",
            DenyReason::OverOfflineLimit => "over_offline_limit",
        }
    }

    /// The reason with this name.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == name)
    }

    /// The wire code (1..=6).
    pub fn code(self) -> u8 {
        Self::ALL
            .iter()
            .position(|r| *r == self)
            .map_or(0, |i| i as u8 + 1)
    }

    /// The reason with this wire code.
    pub fn from_code(code: u8) -> Option<Self> {
        Self::ALL.get(usize::from(code).checked_sub(1)?).copied()
    }
}

impl std::fmt::Display for DenyReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for DenyReason {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::from_name(s).ok_or_else(|| {
            let names: Vec<&str> = Self::ALL.iter().map(|r| r.as_str()).collect();
            format!(
                "{s:?} is not a reason code (one of {}); free text goes in --note and stays at the hub",
                names.join(", ")
            )
        })
    }
}

/// What a deny-list entry names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DenyScope {
    /// Every token of the wallet, whatever its credential (formats 1 and 2).
    Wallet,
    /// Only tokens made under the credential with this digest (format 3,
    /// kind 2): a suspension for review that leaves the wallet's other and
    /// later credentials alone.
    Credential([u8; 32]),
}

impl DenyScope {
    /// Format 3's kind code of a credential entry.
    const CREDENTIAL: u8 = 2;
}

/// One versioned, issuer-signed change to the deny list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DenyEntry {
    /// Position in the hub's deny-list history, from 1.
    pub version: u64,
    /// Deny or allow.
    pub action: DenyAction,
    /// The wallet (for a credential entry, the wallet it was issued to).
    pub wallet: WalletId,
    /// The whole wallet, or one of its credentials.
    pub scope: DenyScope,
    /// Hub time of the change, Unix seconds.
    pub at: u64,
    /// Why, as a code.
    pub reason: DenyReason,
    /// The free text signed into an entry of format 1 (written before
    /// format 2), kept only to verify its signature; `None` otherwise.
    pub legacy_text: Option<String>,
    /// The issuer key that signed.
    pub key_id: u8,
    /// The issuer's signature over everything above.
    pub signature: [u8; 64],
}

impl DenyEntry {
    const WHAT: &'static str = "deny-list entry";

    /// Makes and signs an entry for a whole wallet (format 2: a reason
    /// code, no text).
    pub fn sign(
        version: u64,
        action: DenyAction,
        wallet: WalletId,
        at: u64,
        reason: DenyReason,
        key_id: u8,
        issuer: &SigningKey,
    ) -> Result<Self, WireError> {
        Self::sign_scoped(
            version,
            action,
            wallet,
            DenyScope::Wallet,
            at,
            reason,
            key_id,
            issuer,
        )
    }

    /// Makes and signs an entry for `scope`: format 2 for a whole wallet,
    /// format 3 for one credential of `wallet`.
    #[allow(clippy::too_many_arguments)]
    pub fn sign_scoped(
        version: u64,
        action: DenyAction,
        wallet: WalletId,
        scope: DenyScope,
        at: u64,
        reason: DenyReason,
        key_id: u8,
        issuer: &SigningKey,
    ) -> Result<Self, WireError> {
        let mut entry = Self {
            version,
            action,
            wallet,
            scope,
            at,
            reason,
            legacy_text: None,
            key_id,
            signature: [0; 64],
        };
        entry.signature = issuer.sign(&entry.signed_part()?).to_bytes();
        Ok(entry)
    }

    fn signed_part(&self) -> Result<Vec<u8>, WireError> {
        let mut out = Vec::with_capacity(104);
        let domain = match (&self.legacy_text, self.scope) {
            (Some(_), DenyScope::Wallet) => DENY_DOMAIN,
            (None, DenyScope::Wallet) => DENY_DOMAIN_V2,
            (_, DenyScope::Credential(_)) => DENY_DOMAIN_V3,
        };
        out.extend_from_slice(domain);
        out.extend_from_slice(&self.version.to_be_bytes());
        out.push(self.action.code());
        out.extend_from_slice(&self.wallet.0);
        if let DenyScope::Credential(digest) = &self.scope {
            out.push(DenyScope::CREDENTIAL);
            out.extend_from_slice(digest);
        }
        out.extend_from_slice(&self.at.to_be_bytes());
        match (&self.legacy_text, self.scope) {
            (Some(text), DenyScope::Wallet) => push_short(&mut out, text.as_bytes(), Self::WHAT)?,
            (Some(_), DenyScope::Credential(_)) => {
                return Err(invalid(
                    Self::WHAT,
                    "a format-1 text with a credential (format 3 carries a code)",
                ));
            }
            (None, _) => out.push(self.reason.code()),
        }
        out.push(self.key_id);
        Ok(out)
    }

    /// The canonical encoding.
    pub fn encode(&self) -> Result<Vec<u8>, WireError> {
        Ok(signed(self.signed_part()?, &self.signature))
    }

    /// Parses an entry of format 3 (one credential), 2 (a wallet, a reason
    /// code) or 1 (a wallet, its text mapped to the code of the same name,
    /// else `operator`); [`DenyEntry::verify`] checks it.
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        let what = Self::WHAT;
        let legacy = bytes.starts_with(DENY_DOMAIN);
        let scoped = bytes.starts_with(DENY_DOMAIN_V3);
        let domain = match (legacy, scoped) {
            (true, _) => DENY_DOMAIN,
            (_, true) => DENY_DOMAIN_V3,
            _ => DENY_DOMAIN_V2,
        };
        let mut c = Fields::open(bytes, domain, what)?;
        let version = c.u64()?;
        let code = c.u8()?;
        let action = DenyAction::from_code(code)
            .ok_or_else(|| invalid(what, format!("action code {code}")))?;
        let wallet = WalletId(c.array()?);
        let scope = match scoped {
            false => DenyScope::Wallet,
            true => match c.u8()? {
                DenyScope::CREDENTIAL => DenyScope::Credential(c.array()?),
                kind => {
                    return Err(invalid(
                        what,
                        format!("kind {kind} (format 3 names a credential, kind 2)"),
                    ));
                }
            },
        };
        let at = c.u64()?;
        let (reason, legacy_text) = if legacy {
            let text = c.short_string()?;
            let reason = DenyReason::from_name(&text).unwrap_or(DenyReason::Operator);
            (reason, Some(text))
        } else {
            let code = c.u8()?;
            let reason = DenyReason::from_code(code)
                .ok_or_else(|| invalid(what, format!("reason code {code}")))?;
            (reason, None)
        };
        let entry = Self {
            version,
            action,
            wallet,
            scope,
            at,
            reason,
            legacy_text,
            key_id: c.u8()?,
            signature: c.array()?,
        };
        c.end()?;
        if entry.version == 0 {
            return Err(invalid(what, "version 0 (versions start at 1)"));
        }
        Ok(entry)
    }

    /// Checks the issuer's signature.
    pub fn verify(&self, issuers: &TrustedKeys) -> Result<(), WireError> {
        let what = Self::WHAT;
        verify_issuer(
            issuers,
            self.key_id,
            &self.signed_part()?,
            &self.signature,
            what,
        )
    }
}

/// The hub's word to a wallet beside a renewed credential: the highest
/// counter it has cleared for the wallet. A phone restored from a backup
/// has an older counter; it moves its counter above this one when it
/// installs the credential, so that its next tokens reuse no counter the
/// hub already holds (docs/protocol.md §3, docs/sync.md §3.8).
///
/// The credential's own 115 bytes are unchanged: the note travels beside
/// them. It names the credential by digest and is signed by the issuer key
/// that signed the credential, so a wallet needs no other key to check it
/// ([`RenewalNote::verify`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenewalNote {
    /// SHA-256 of the credential it goes with.
    pub credential: [u8; 32],
    /// The highest counter of the wallet the hub had cleared; 0 for none.
    pub highest_cleared_counter: u32,
    /// Hub time when signed, Unix seconds.
    pub at: u64,
    /// The issuer key that signed (the credential's).
    pub key_id: u8,
    /// The issuer's public key, so a wallet can check the note against the
    /// credential alone.
    pub issuer_key: [u8; 32],
    /// The issuer's signature over everything above.
    pub signature: [u8; 64],
}

impl RenewalNote {
    const WHAT: &'static str = "renewal note";

    /// The encoded size.
    pub const LEN: usize = RENEWAL_DOMAIN.len() + 32 + 4 + 8 + 1 + 32 + 64;

    /// Signs a note for `credential`: `issuer` must be the key that signed it.
    pub fn sign(
        credential: &crate::token::Credential,
        highest_cleared_counter: u32,
        at: u64,
        issuer: &SigningKey,
    ) -> Self {
        let mut note = Self {
            credential: credential.digest(),
            highest_cleared_counter,
            at,
            key_id: credential.terms.issuer_key_id,
            issuer_key: issuer.verifying_key().to_bytes(),
            signature: [0; 64],
        };
        note.signature = issuer.sign(&note.signed_part()).to_bytes();
        note
    }

    fn signed_part(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(Self::LEN);
        out.extend_from_slice(RENEWAL_DOMAIN);
        out.extend_from_slice(&self.credential);
        out.extend_from_slice(&self.highest_cleared_counter.to_be_bytes());
        out.extend_from_slice(&self.at.to_be_bytes());
        out.push(self.key_id);
        out.extend_from_slice(&self.issuer_key);
        out
    }

    /// The canonical encoding.
    pub fn encode(&self) -> Vec<u8> {
        signed(self.signed_part(), &self.signature)
    }

    /// Parses a note; [`RenewalNote::verify`] checks it.
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        let what = Self::WHAT;
        let mut c = Fields::open(bytes, RENEWAL_DOMAIN, what)?;
        let note = Self {
            credential: c.array()?,
            highest_cleared_counter: c.u32()?,
            at: c.u64()?,
            key_id: c.u8()?,
            issuer_key: c.array()?,
            signature: c.array()?,
        };
        c.end()?;
        Ok(note)
    }

    /// Checks that the note goes with `credential` and that the key that
    /// signed the credential signed it too (both strictly). A note under
    /// any other key fails: the credential's signature binds the key.
    pub fn verify(&self, credential: &crate::token::Credential) -> Result<(), WireError> {
        let what = Self::WHAT;
        if self.credential != credential.digest() {
            return Err(invalid(what, "it names another credential"));
        }
        if self.key_id != credential.terms.issuer_key_id {
            return Err(invalid(
                what,
                format!(
                    "signed by issuer key {}, the credential by key {}",
                    self.key_id, credential.terms.issuer_key_id
                ),
            ));
        }
        let key = VerifyingKey::from_bytes(&self.issuer_key)
            .map_err(|_| invalid(what, "its issuer key is not a valid key"))?;
        credential.verify(&key).map_err(|_| {
            invalid(
                what,
                "the credential is not signed by the note's issuer key",
            )
        })?;
        key.verify_strict(&self.signed_part(), &Signature::from_bytes(&self.signature))
            .map_err(|_| WireError::BadSignature { what })
    }
}

/// The hub's clock, signed by the issuer over a reader's fresh nonce, so a
/// statement recorded earlier cannot be replayed to move a reader's clock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimeStatement {
    /// The reader's nonce, from its request.
    pub nonce: [u8; 16],
    /// Hub time when signed, Unix milliseconds.
    pub hub_time_ms: u64,
    /// The issuer key that signed.
    pub key_id: u8,
    /// The issuer's signature over everything above.
    pub signature: [u8; 64],
}

impl TimeStatement {
    const WHAT: &'static str = "time statement";

    /// Signs the hub's time for `nonce`.
    pub fn sign(nonce: [u8; 16], hub_time_ms: u64, key_id: u8, issuer: &SigningKey) -> Self {
        let mut statement = Self {
            nonce,
            hub_time_ms,
            key_id,
            signature: [0; 64],
        };
        statement.signature = issuer.sign(&statement.signed_part()).to_bytes();
        statement
    }

    fn signed_part(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(48);
        out.extend_from_slice(TIME_DOMAIN);
        out.extend_from_slice(&self.nonce);
        out.extend_from_slice(&self.hub_time_ms.to_be_bytes());
        out.push(self.key_id);
        out
    }

    /// The canonical encoding.
    pub fn encode(&self) -> Vec<u8> {
        signed(self.signed_part(), &self.signature)
    }

    /// Parses a statement; [`TimeStatement::verify`] checks it.
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        let what = Self::WHAT;
        let mut c = Fields::open(bytes, TIME_DOMAIN, what)?;
        let statement = Self {
            nonce: c.array()?,
            hub_time_ms: c.u64()?,
            key_id: c.u8()?,
            signature: c.array()?,
        };
        c.end()?;
        Ok(statement)
    }

    /// Checks that a trusted issuer key signed it, for the nonce this
    /// reader just sent.
    pub fn verify(&self, nonce: &[u8; 16], issuers: &TrustedKeys) -> Result<(), WireError> {
        let what = Self::WHAT;
        verify_issuer(
            issuers,
            self.key_id,
            &self.signed_part(),
            &self.signature,
            what,
        )?;
        if self.nonce != *nonce {
            return Err(invalid(
                what,
                "signed for another nonce than this request's (a replayed statement)",
            ));
        }
        Ok(())
    }
}

/// A reader's signature over one HTTP request: who asks, when (hub time),
/// a random nonce, the method and the path with its query. Sent hex-encoded
/// in `Authorization: Sonotap HEX`; the hub checks it under the reader's
/// registered key before answering a read of the deny list or the keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedRequest {
    /// The reader.
    pub reader_id: String,
    /// When, in the hub's time as the reader estimates it, Unix milliseconds.
    pub time_ms: u64,
    /// Random, so no two requests are signed alike.
    pub nonce: [u8; 16],
    /// HTTP method, e.g. `GET`.
    pub method: String,
    /// Path and query, e.g. `/v1/deny?since=3`.
    pub target: String,
    /// The reader's signature over everything above.
    pub signature: [u8; 64],
}

impl SignedRequest {
    const WHAT: &'static str = "signed request";

    /// Signs a request as `reader_id`.
    pub fn sign(
        reader_id: &str,
        time_ms: u64,
        nonce: [u8; 16],
        method: &str,
        target: &str,
        key: &SigningKey,
    ) -> Result<Self, WireError> {
        let mut request = Self {
            reader_id: reader_id.to_owned(),
            time_ms,
            nonce,
            method: method.to_owned(),
            target: target.to_owned(),
            signature: [0; 64],
        };
        request.signature = key.sign(&request.signed_part()?).to_bytes();
        Ok(request)
    }

    fn signed_part(&self) -> Result<Vec<u8>, WireError> {
        let what = Self::WHAT;
        if self.reader_id.is_empty() || self.method.is_empty() || self.target.is_empty() {
            return Err(invalid(what, "an empty reader id, method or target"));
        }
        let mut out = Vec::with_capacity(64 + self.target.len());
        out.extend_from_slice(REQUEST_DOMAIN);
        push_short(&mut out, self.reader_id.as_bytes(), what)?;
        out.extend_from_slice(&self.time_ms.to_be_bytes());
        out.extend_from_slice(&self.nonce);
        push_short(&mut out, self.method.as_bytes(), what)?;
        push_short(&mut out, self.target.as_bytes(), what)?;
        Ok(out)
    }

    /// The canonical encoding.
    pub fn encode(&self) -> Result<Vec<u8>, WireError> {
        Ok(signed(self.signed_part()?, &self.signature))
    }

    /// Parses a signed request; [`SignedRequest::verify`] checks it.
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        let what = Self::WHAT;
        let mut c = Fields::open(bytes, REQUEST_DOMAIN, what)?;
        let request = Self {
            reader_id: c.short_string()?,
            time_ms: c.u64()?,
            nonce: c.array()?,
            method: c.short_string()?,
            target: c.short_string()?,
            signature: c.array()?,
        };
        c.end()?;
        request.signed_part()?;
        Ok(request)
    }

    /// Checks that it is for this `method` and `target`, stamped within
    /// [`REQUEST_WINDOW_MS`] of `now_ms`, and signed by `reader_key`
    /// (`verify_strict`).
    pub fn verify(
        &self,
        reader_key: &VerifyingKey,
        method: &str,
        target: &str,
        now_ms: u64,
    ) -> Result<(), WireError> {
        let what = Self::WHAT;
        if self.method != method || self.target != target {
            return Err(invalid(
                what,
                format!(
                    "signed for {} {}, not {method} {target}",
                    self.method, self.target
                ),
            ));
        }
        if self.time_ms.abs_diff(now_ms) > REQUEST_WINDOW_MS {
            return Err(invalid(
                what,
                format!(
                    "stamped {} ms from the hub's clock (at most {REQUEST_WINDOW_MS})",
                    i128::from(self.time_ms) - i128::from(now_ms)
                ),
            ));
        }
        reader_key
            .verify_strict(
                &self.signed_part()?,
                &Signature::from_bytes(&self.signature),
            )
            .map_err(|_| WireError::BadSignature { what })
    }
}

/// The hub's versioned set of issuer keys, signed by every key in it.
///
/// A reader adopts a newer set when at least one signature is by a key it
/// already trusts, so a key can be rotated in while the old one still signs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySet {
    /// Version, from 1; readers only move forward.
    pub version: u64,
    /// `(key id, public key)`, ascending key ids.
    pub keys: Vec<(u8, [u8; 32])>,
    /// `(key id, signature)` over the version and keys.
    pub signatures: Vec<(u8, [u8; 64])>,
}

impl KeySet {
    const WHAT: &'static str = "key set";

    /// Makes a key set signed by each of `signers` (`(key id, key)`).
    pub fn sign(
        version: u64,
        keys: Vec<(u8, [u8; 32])>,
        signers: &[(u8, &SigningKey)],
    ) -> Result<Self, WireError> {
        let mut set = Self {
            version,
            keys,
            signatures: Vec::new(),
        };
        let message = set.signed_part()?;
        set.signatures = signers
            .iter()
            .map(|(id, key)| (*id, key.sign(&message).to_bytes()))
            .collect();
        Ok(set)
    }

    fn signed_part(&self) -> Result<Vec<u8>, WireError> {
        let what = Self::WHAT;
        if self.keys.is_empty() {
            return Err(invalid(what, "no keys"));
        }
        if !self.keys.windows(2).all(|w| w[0].0 < w[1].0) {
            return Err(invalid(what, "key ids not strictly ascending"));
        }
        let count = u8::try_from(self.keys.len()).map_err(|_| invalid(what, "over 255 keys"))?;
        let mut out = Vec::with_capacity(32 + self.keys.len() * 33);
        out.extend_from_slice(KEYSET_DOMAIN);
        out.extend_from_slice(&self.version.to_be_bytes());
        out.push(count);
        for (id, key) in &self.keys {
            out.push(*id);
            out.extend_from_slice(key);
        }
        Ok(out)
    }

    /// The canonical encoding.
    pub fn encode(&self) -> Result<Vec<u8>, WireError> {
        let mut out = self.signed_part()?;
        let count = u8::try_from(self.signatures.len())
            .map_err(|_| invalid(Self::WHAT, "over 255 signatures"))?;
        out.push(count);
        for (id, sig) in &self.signatures {
            out.push(*id);
            out.extend_from_slice(sig);
        }
        Ok(out)
    }

    /// Parses a key set; [`KeySet::verify`] checks it.
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        let what = Self::WHAT;
        let mut c = Fields::open(bytes, KEYSET_DOMAIN, what)?;
        let version = c.u64()?;
        let n = c.u8()?;
        let mut keys = Vec::with_capacity(usize::from(n));
        for _ in 0..n {
            keys.push((c.u8()?, c.array()?));
        }
        let m = c.u8()?;
        let mut signatures = Vec::with_capacity(usize::from(m));
        for _ in 0..m {
            signatures.push((c.u8()?, c.array()?));
        }
        c.end()?;
        let set = Self {
            version,
            keys,
            signatures,
        };
        set.signed_part()?;
        Ok(set)
    }

    /// Checks that a key this side trusts signed the set, and that every key
    /// in it is a valid, non-weak ed25519 key. Returns the new trusted keys.
    pub fn verify(&self, trusted: &TrustedKeys) -> Result<TrustedKeys, WireError> {
        let what = Self::WHAT;
        let message = self.signed_part()?;
        let mut next = TrustedKeys::default();
        for (id, bytes) in &self.keys {
            let key = VerifyingKey::from_bytes(bytes)
                .map_err(|_| invalid(what, format!("key {id} is not a valid ed25519 key")))?;
            if key.is_weak() {
                return Err(invalid(what, format!("key {id} is a weak key")));
            }
            next.insert(*id, key);
        }
        let vouched = self.signatures.iter().any(|(id, sig)| {
            trusted.get(*id).is_some_and(|key| {
                key.verify_strict(&message, &Signature::from_bytes(sig))
                    .is_ok()
            })
        });
        if vouched {
            Ok(next)
        } else {
            Err(WireError::BadSignature { what })
        }
    }

    /// What a reader holding `trusted` at key-set version `current` does
    /// with this set: verifies it ([`KeySet::verify`]), then goes by the
    /// **signed** version only. A higher version is adopted (`Some`); the
    /// same version changes nothing (`None`), even with other keys: a key
    /// the operator added by hand (`reader trust`) stays, and only a newer
    /// signed set replaces the reader's keys; a lower version (an old set
    /// replayed, which would bring a retired key back) is refused.
    pub fn adopt(
        &self,
        current: u64,
        trusted: &TrustedKeys,
    ) -> Result<Option<TrustedKeys>, WireError> {
        let what = Self::WHAT;
        let next = self.verify(trusted)?;
        match self.version.cmp(&current) {
            std::cmp::Ordering::Greater => Ok(Some(next)),
            std::cmp::Ordering::Equal => Ok(None),
            std::cmp::Ordering::Less => Err(invalid(
                what,
                format!(
                    "version {} is older than this reader's version {current}; \
                     refusing to roll back",
                    self.version
                ),
            )),
        }
    }
}

#[cfg(test)]
mod tests;
