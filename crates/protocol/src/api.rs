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

/// Where a reader reports on itself: `POST` with the report as the query,
/// the whole target signed (docs/sync.md §2.5).
pub const REPORT_PATH: &str = "/v1/report";

/// Longest software version a report may name.
pub const MAX_SOFTWARE_LEN: usize = 32;

/// What a reader tells the hub of itself at the end of each sync round, so
/// the operator sees every reader's state in one place (`hub readers`, the
/// hub's metrics): the query of a signed `POST /v1/report`. Plain numbers
/// and a short version, so the query needs no escaping.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusReport {
    /// The reader's own clock, Unix milliseconds, uncorrected: the hub
    /// compares it with its own to tell how far off the reader's clock is.
    pub reader_ms: u64,
    /// The correction the reader applies to its clock, milliseconds (hub
    /// minus reader as it last measured it, moved at most 5 minutes a
    /// round): the times it stamps are its clock plus this.
    pub applied_ms: i64,
    /// The deny-list version the reader has applied.
    pub deny: u64,
    /// Records the hub has not acknowledged.
    pub queue: u64,
    /// Age of the oldest of them, seconds, on the reader's corrected
    /// clock, the one its records are stamped with (0 when none).
    pub lag: u64,
    /// The reader's software version.
    pub software: String,
}

impl StatusReport {
    /// The request target: path and query.
    pub fn target(&self) -> String {
        format!(
            "{REPORT_PATH}?reader_ms={}&applied_ms={}&deny={}&queue={}&lag={}&software={}",
            self.reader_ms, self.applied_ms, self.deny, self.queue, self.lag, self.software
        )
    }

    /// `version` as a report may carry it: characters outside the
    /// alphabet [`StatusReport::check`] allows become `-` (`0.2.0+deb12`
    /// is `0.2.0-deb12`), at most [`MAX_SOFTWARE_LEN`] of them.
    pub fn software_name(version: &str) -> String {
        version
            .chars()
            .map(|c| if version_char(c) { c } else { '-' })
            .take(MAX_SOFTWARE_LEN)
            .collect()
    }

    /// Checks what serde cannot: the version is 1..=32 characters of
    /// `A-Z a-z 0-9 . - _ ~` (nothing a query would escape or read as
    /// something else: `+` is a space in a query).
    pub fn check(&self) -> Result<(), String> {
        if self.software.is_empty()
            || self.software.len() > MAX_SOFTWARE_LEN
            || !self.software.chars().all(version_char)
        {
            return Err(format!(
                "software version {:?}: give 1 to {MAX_SOFTWARE_LEN} characters of A-Z a-z 0-9 . - _ ~",
                self.software
            ));
        }
        Ok(())
    }
}

/// A character a report's software version may hold: nothing a query
/// would escape or read as something else (`+` is a space in a query).
fn version_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || ".-_~".contains(c)
}

/// Answer to `POST /v1/report`.
#[derive(Debug, Serialize, Deserialize)]
pub struct ReportAnswer {
    /// The hub's clock minus the reader's as the hub saw the report
    /// arrive, milliseconds (one network delay included): the same sense
    /// as the reader's own `clock_offset_ms`.
    pub clock_offset_ms: i64,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn report(software: &str) -> StatusReport {
        StatusReport {
            reader_ms: 1,
            applied_ms: -5,
            deny: 2,
            queue: 3,
            lag: 4,
            software: software.into(),
        }
    }

    #[test]
    fn a_report_is_its_query_and_its_version_needs_no_escaping() {
        assert_eq!(
            report("0.1.0").target(),
            "/v1/report?reader_ms=1&applied_ms=-5&deny=2&queue=3&lag=4&software=0.1.0"
        );
        assert_eq!(report("0.1.0-rc.1_a~b").check(), Ok(()));
        for bad in ["", "0.2.0+deb12", "0.1 0", "0.1&x=1", "é", &"9".repeat(33)] {
            assert!(report(bad).check().is_err(), "{bad:?}");
        }
        assert_eq!(StatusReport::software_name("0.2.0+deb12"), "0.2.0-deb12");
        assert_eq!(StatusReport::software_name(&"7".repeat(40)).len(), 32);
        let odd = StatusReport::software_name("1.0+x y&z");
        assert_eq!(report(&odd).check(), Ok(()));
    }
}
