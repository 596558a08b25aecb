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
    /// The correction the reader said it applies (hub minus reader as it
    /// measured it): what it stamps is its clock plus this.
    pub applied_offset_ms: i64,
    /// The deny-list version it had applied.
    pub deny_version: u64,
    /// Records it held that the hub had not acknowledged.
    pub queue: u64,
    /// Age of the oldest of them, seconds.
    pub lag_secs: u64,
    /// Its software version.
    pub software: String,
}

impl ReportState {
    /// How far behind the hub's clock the times the reader stamps (on its
    /// records, and checks tokens' times against) are, milliseconds
    /// (positive: behind): its clock's error left after its own
    /// correction. What declines honest riders when large.
    pub fn clock_error_ms(&self) -> i64 {
        self.clock_offset_ms.saturating_sub(self.applied_offset_ms)
    }
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
    use crate::Hub;
    use sonotap_disk::keys::{PublicKey, Role};
    use sonotap_protocol::api::StatusReport;
    use sonotap_protocol::testkit::NOW;

    fn status(queue: u64) -> StatusReport {
        StatusReport {
            reader_ms: NOW * 1000,
            applied_ms: 0,
            deny: 0,
            queue,
            lag: 0,
            software: "0.1.0".into(),
        }
    }

    /// Reports are kept by their signed time, so a replay changes nothing;
    /// but one signed further ahead than a request may be (the hub's clock
    /// was ahead, then fixed) gives way, or no report would be kept for as
    /// long as the hub's clock was wrong.
    #[test]
    fn the_newest_signed_report_is_kept_and_one_from_a_clock_since_fixed_gives_way() {
        let dir = tempfile::tempdir().unwrap();
        let mut hub = Hub::init(dir.path(), 1, NOW).unwrap();
        let signing = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
        let public = signing.verifying_key().to_bytes();
        let key = PublicKey::from_bytes(Role::Reader, None, &public).unwrap();
        hub.add_reader("gate-1", &key, NOW).unwrap();
        let now_ms = NOW * 1000;
        let queue = |hub: &mut Hub| {
            hub.fleet().unwrap().readers[0]
                .report
                .as_ref()
                .map(|r| r.queue)
        };
        hub.record_report("gate-1", &status(1), now_ms, now_ms)
            .unwrap();
        hub.record_report("gate-1", &status(2), now_ms + 10, now_ms + 10)
            .unwrap();
        hub.record_report("gate-1", &status(1), now_ms, now_ms + 20)
            .unwrap();
        assert_eq!(queue(&mut hub), Some(2), "the replay changed nothing");
        // Signed an hour ahead (a hub clock an hour fast, since fixed).
        hub.record_report("gate-1", &status(3), now_ms + 3_600_000, now_ms + 30)
            .unwrap();
        hub.record_report("gate-1", &status(4), now_ms + 40, now_ms + 40)
            .unwrap();
        assert_eq!(
            queue(&mut hub),
            Some(4),
            "the report from the wrong clock gave way"
        );
    }

    fn reader(last_upload_at: Option<u64>, reported_ms: Option<u64>) -> ReaderState {
        ReaderState {
            reader: "gate-1".into(),
            registered_at: 1,
            last_upload_at,
            report: reported_ms.map(|at_ms| ReportState {
                at_ms,
                clock_offset_ms: 0,
                applied_offset_ms: 0,
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
