//! The hub's HTTP answers, as JSON, and the rules both ends of the link
//! keep about names. The signed payloads inside them are [`crate::wire`]
//! formats; `docs/sync.md` documents the endpoints.

use serde::{Deserialize, Serialize};

/// The `Authorization` scheme of a reader's signed request.
pub const AUTH_SCHEME: &str = "Sonotap";

/// Answer to `POST /v1/batches`.
#[derive(Debug, Serialize, Deserialize)]
pub struct UploadAnswer {
    /// `stored` or `duplicate`.
    pub status: String,
    /// The signed acknowledgement, hex.
    pub ack: String,
    /// Records stored by this upload.
    pub new_records: u32,
    /// Records that were already stored.
    pub already_stored: u32,
    /// Wallets flagged by this upload (hex ids).
    pub flagged: Vec<String>,
}

/// Answer to `GET /v1/deny`.
#[derive(Debug, Serialize, Deserialize)]
pub struct DenyAnswer {
    /// The newest version at the hub.
    pub version: u64,
    /// Signed entries after `since`, hex, in version order.
    pub entries: Vec<String>,
    /// Whether more entries follow this page.
    pub more: bool,
}

/// Answer to `GET /v1/keys`.
#[derive(Debug, Serialize, Deserialize)]
pub struct KeysAnswer {
    /// Key-set version, for people: a reader goes by the version inside
    /// the signed set only.
    pub version: u64,
    /// The signed key set, hex.
    pub key_set: String,
}

/// Answer to `GET /v1/time`.
#[derive(Debug, Serialize, Deserialize)]
pub struct TimeAnswer {
    /// Hub time, Unix milliseconds (unsigned: for people and monitoring).
    pub unix_ms: u64,
    /// With `?nonce=HEX`: the signed time statement over that nonce, hex
    /// (docs/sync.md). Readers take their clock offset from this only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub statement: Option<String>,
}

/// Reader ids appear in records and on the wire: short and plain.
pub fn check_reader_id(id: &str) -> Result<(), String> {
    let plain = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if (1..=64).contains(&id.len()) && id.chars().all(plain) {
        Ok(())
    } else {
        Err(format!(
            "reader id {id:?} must be 1 to 64 characters from A-Z a-z 0-9 . _ -"
        ))
    }
}
