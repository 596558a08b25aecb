//! The operator's view of the fleet (`hub readers`, the hub's metrics):
//! every registered reader with when it was last heard from and what it
//! last reported of itself (docs/sync.md §2.5), the deny-list version
//! readers should reach, and the clearing findings counted by kind.

use std::collections::BTreeMap;

use serde::Serialize;

/// One reader as the hub knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReaderState {
    /// The reader's id.
    pub reader: String,
    /// When it was registered, Unix seconds.
    pub registered_at: u64,
    /// When its last new batch was stored, Unix seconds.
    pub last_upload_at: Option<u64>,
    /// Its last report, if it has sent one.
    pub report: Option<ReportState>,
}

/// What a reader last reported of itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReportState {
    /// When the report arrived, hub clock, Unix milliseconds.
    pub at_ms: u64,
    /// The hub's clock minus the reader's on arrival, milliseconds
    /// (positive: the reader is slow; one network delay included), as the
    /// reader's own `clock_offset_ms` counts it.
    pub clock_offset_ms: i64,
    /// The deny-list version it had applied.
    pub deny_version: u64,
    /// Records it held that the hub had not acknowledged.
    pub queue: u64,
    /// Age of the oldest of them, seconds.
    pub lag_secs: u64,
    /// Its software version.
    pub software: String,
}

impl ReaderState {
    /// When the reader was last heard from (a report or a stored batch),
    /// Unix seconds.
    pub fn last_seen_at(&self) -> Option<u64> {
        let reported = self.report.as_ref().map(|r| r.at_ms / 1000);
        reported.max(self.last_upload_at)
    }
}

/// The fleet from one snapshot of the hub's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Fleet {
    /// The newest deny-list version: what every reader should reach.
    pub deny_version: u64,
    /// Every registered reader, by id.
    pub readers: Vec<ReaderState>,
    /// Clearing flags stored, by rule.
    pub flags: BTreeMap<String, u64>,
    /// Incidents stored, by kind.
    pub incidents: BTreeMap<String, u64>,
    /// Replayed charges stored: charges of a token already charged.
    pub replays: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reader(last_upload_at: Option<u64>, reported_ms: Option<u64>) -> ReaderState {
        ReaderState {
            reader: "gate-1".into(),
            registered_at: 1,
            last_upload_at,
            report: reported_ms.map(|at_ms| ReportState {
                at_ms,
                clock_offset_ms: 0,
                deny_version: 0,
                queue: 0,
                lag_secs: 0,
                software: "0.1.0".into(),
            }),
        }
    }

    #[test]
    fn last_seen_is_the_later_of_the_last_report_and_the_last_upload() {
        assert_eq!(reader(None, None).last_seen_at(), None);
        assert_eq!(reader(Some(50), None).last_seen_at(), Some(50));
        assert_eq!(reader(None, Some(70_999)).last_seen_at(), Some(70));
        assert_eq!(reader(Some(80), Some(70_000)).last_seen_at(), Some(80));
        assert_eq!(reader(Some(60), Some(70_000)).last_seen_at(), Some(70));
    }
}
