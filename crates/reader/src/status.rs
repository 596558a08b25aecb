//! `sonotap status`: what an operator on site needs at a glance — queue
//! depth, the link to the hub, the daemon's devices, the last declines —
//! gathered read-only, so it works beside a running daemon (WAL readers
//! never block the writer) and when there is none.
//!
//! Device health comes from `<data dir>/daemon-status.json`, which the
//! daemon replaces atomically at least every [`DAEMON_STATUS_INTERVAL_SECS`].

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::Serialize;
use thiserror::Error;

use crate::reader::DB_FILE;
use crate::store::{DeclineEntry, PendingVend, QueueSummary, ReaderDb, StoreError, SyncState};

/// The daemon's status file inside the data directory.
pub const DAEMON_STATUS_FILE: &str = crate::status_file::FILE_NAME;
/// How often the daemon promises to rewrite its status file.
pub const DAEMON_STATUS_INTERVAL_SECS: u64 = 5;
/// A status file older than this means the daemon is not running (six
/// missed updates: a busy machine is late, not dead).
pub const DAEMON_STALE_SECS: u64 = 30;
/// Unsynced records older than this need attention: the hub has not seen a
/// day of payments, so a cheating wallet's spending stays undetected and
/// the deny list is a day old.
pub const SYNC_STALE_SECS: u64 = 24 * 3600;
/// Declines shown by default.
pub const RECENT_DECLINES: usize = 10;
/// The largest status file read (the daemon's is well under 4 KiB).
const MAX_STATUS_BYTES: u64 = 64 * 1024;

pub use crate::status_file::{DaemonStatus, DeviceStatus, SyncStatus as LinkStatus};

/// What the status file says about the daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum DaemonHealth {
    /// A fresh file from a live process.
    Running {
        /// What it wrote.
        status: DaemonStatus,
    },
    /// No status file: the daemon has not run here (or cleaned up on exit).
    NotRunning,
    /// A file too old, or from a process that is gone.
    Stale {
        /// What it last wrote.
        status: DaemonStatus,
        /// Why it is considered stale.
        why: String,
    },
    /// A file that cannot be read or parsed.
    Unreadable {
        /// What is wrong.
        detail: String,
    },
}

/// Reads and judges `<dir>/daemon-status.json` at `now`. Never fails: every
/// problem with the file is itself a health state to report.
pub fn daemon_health(dir: &Path, now: u64) -> DaemonHealth {
    let path = dir.join(DAEMON_STATUS_FILE);
    let bytes = match read_bounded(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return DaemonHealth::NotRunning,
        Err(e) => {
            return DaemonHealth::Unreadable {
                detail: format!("cannot read {}: {e}", path.display()),
            };
        }
    };
    let status: DaemonStatus = match serde_json::from_slice(&bytes) {
        Ok(status) => status,
        Err(e) => {
            return DaemonHealth::Unreadable {
                detail: format!("{} is not a daemon status file: {e}", path.display()),
            };
        }
    };
    let age = now.saturating_sub(status.updated_at);
    if age > DAEMON_STALE_SECS {
        return DaemonHealth::Stale {
            why: format!("last updated {age} s ago"),
            status,
        };
    }
    if process_alive(status.pid) == Some(false) {
        return DaemonHealth::Stale {
            why: format!("process {} is gone", status.pid),
            status,
        };
    }
    DaemonHealth::Running { status }
}

fn read_bounded(path: &Path) -> io::Result<Vec<u8>> {
    sonotap_disk::fsutil::read_regular_file_capped(path, MAX_STATUS_BYTES).map_err(|e| match e {
        sonotap_disk::fsutil::ReadError::Missing { .. } => io::ErrorKind::NotFound.into(),
        e => io::Error::other(e),
    })
}

/// Whether process `pid` exists: `/proc/<pid>` on Linux; `None` (unknown)
/// where there is no `/proc`. Judged in this process's PID namespace: a
/// daemon in another container looks gone, and only the file's age counts
/// there if `/proc` is absent.
fn process_alive(pid: u32) -> Option<bool> {
    let proc = Path::new("/proc");
    if pid == 0 {
        return Some(false);
    }
    if !proc.join("self").exists() {
        return None;
    }
    Some(proc.join(pid.to_string()).exists())
}

/// Why status could not be gathered at all (exit 2).
#[derive(Debug, Error)]
pub enum StatusError {
    /// No such data directory.
    #[error("{path} is not a directory ({detail})")]
    NoDataDir {
        /// The path given.
        path: PathBuf,
        /// What the OS said.
        detail: String,
    },
    /// The database is missing, corrupt, too new or unreadable.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The link to the hub, from the reader database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SyncReport {
    /// Deny-list and key-set versions, clock offset, last success and error.
    #[serde(flatten)]
    pub state: SyncState,
    /// When a round last ended, either way.
    pub last_attempt_at: Option<u64>,
}

/// Everything `sonotap status` shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StatusReport {
    /// The data directory.
    pub data: PathBuf,
    /// The reader id from the database.
    pub reader_id: Option<String>,
    /// When the report was made, Unix seconds.
    pub now: u64,
    /// Record counts.
    pub queue: QueueReport,
    /// The link to the hub.
    pub sync: SyncReport,
    /// The daemon and its devices.
    pub daemon: DaemonHealth,
    /// The newest declines, newest first.
    pub declines: Vec<DeclineEntry>,
    /// Vend charges not yet confirmed delivered nor voided: the vend in
    /// progress, or a void owed (the daemon's status says which it retries;
    /// with no daemon running each is voided at its next start).
    pub pending_vends: Vec<PendingVend>,
    /// What needs attention, in words; empty when healthy.
    pub attention: Vec<String>,
}

/// Queue depth.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QueueReport {
    /// All records kept.
    pub records: u64,
    /// Records the hub has not acknowledged.
    pub unsynced: u64,
    /// Their net amount, minor units.
    pub unsynced_amount: u64,
    /// When the oldest unsynced record was made.
    pub oldest_unsynced_at: Option<u64>,
    /// Its age in seconds at `now`.
    pub oldest_unsynced_age_secs: Option<u64>,
}

impl StatusReport {
    /// Gathers the status of reader directory `dir` at `now`, read-only.
    pub fn gather(dir: &Path, now: u64) -> Result<Self, StatusError> {
        match fs::metadata(dir) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => {
                return Err(StatusError::NoDataDir {
                    path: dir.into(),
                    detail: "not a directory".into(),
                });
            }
            Err(e) => {
                return Err(StatusError::NoDataDir {
                    path: dir.into(),
                    detail: e.to_string(),
                });
            }
        }
        let db = ReaderDb::open_read_only(&dir.join(DB_FILE))?;
        let QueueSummary {
            records,
            unsynced,
            unsynced_amount,
            ..
        } = db.summary()?;
        let oldest = db.oldest_unsynced_at()?;
        let queue = QueueReport {
            records,
            unsynced,
            unsynced_amount,
            oldest_unsynced_at: oldest,
            oldest_unsynced_age_secs: oldest.map(|at| now.saturating_sub(at)),
        };
        let sync = SyncReport {
            state: db.sync_state()?,
            last_attempt_at: db.last_sync_attempt()?,
        };
        let mut report = Self {
            data: dir.into(),
            reader_id: db.meta("reader_id")?,
            now,
            queue,
            sync,
            daemon: daemon_health(dir, now),
            declines: db.recent_declines(RECENT_DECLINES)?,
            pending_vends: db.pending_vends()?,
            attention: Vec::new(),
        };
        report.attention = report.judge();
        Ok(report)
    }

    /// Whether nothing needs attention (exit 0).
    pub fn healthy(&self) -> bool {
        self.attention.is_empty()
    }

    /// What needs attention: the daemon not running, a device or the
    /// uplink failing, the last sync round failing, unsynced records
    /// older than [`SYNC_STALE_SECS`], or a vend settlement owed.
    fn judge(&self) -> Vec<String> {
        let mut out = Vec::new();
        match &self.daemon {
            DaemonHealth::Running { status } => {
                for device in status.devices.iter().filter(|d| !d.ok) {
                    out.push(format!("device {} not ok: {}", device.name, device.detail));
                }
                for owed in &status.owed {
                    let what = match owed.owed.as_str() {
                        "void" => "void owed",
                        _ => "vend success not stored yet",
                    };
                    out.push(format!(
                        "{what} for charge {} since {} ({} attempts, retrying): {}",
                        owed.charge_seq, owed.since, owed.attempts, owed.last_error
                    ));
                }
                if let Some(link) = status.sync.as_ref().filter(|l| !l.ok) {
                    out.push(format!("sync to {} failing: {}", link.hub, link.detail));
                }
            }
            DaemonHealth::NotRunning => {
                out.push(format!("daemon not running (no {DAEMON_STATUS_FILE})"))
            }
            DaemonHealth::Stale { status, why } => out.push(format!(
                "daemon not running (last seen at {}, {why})",
                status.updated_at
            )),
            DaemonHealth::Unreadable { detail } => {
                out.push(format!("daemon status unknown: {detail}"));
            }
        }
        if !matches!(self.daemon, DaemonHealth::Running { .. }) {
            for p in &self.pending_vends {
                out.push(format!(
                    "void owed for charge {} (vend at {} on {} never confirmed delivered): \
                     written when the daemon starts",
                    p.charge_seq, p.at, p.device
                ));
            }
        }
        if let Some(error) = &self.sync.state.last_error {
            out.push(format!("last sync failed: {error}"));
        }
        if let Some(age) = self.queue.oldest_unsynced_age_secs
            && age > SYNC_STALE_SECS
        {
            out.push(format!(
                "{} records not synced, the oldest {} h old (more than {} h)",
                self.queue.unsynced,
                age / 3600,
                SYNC_STALE_SECS / 3600
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_790_000_010;

    fn status_json(pid: u32, updated_at: u64, gate_ok: bool) -> String {
        format!(
            r#"{{"pid":{pid},"started_at":1790000000,"updated_at":{updated_at},"config":"/etc/sonotap/config.toml","devices":[{{"name":"audio","ok":true,"detail":"ALSA default, 48000 Hz"}},{{"name":"gate","ok":{gate_ok},"detail":"/dev/ttyUSB0: No such file or directory (retrying)"}}],"sync":null}}"#
        )
    }

    #[test]
    fn the_contract_example_parses_field_for_field() {
        let example = r#"{"pid":1234,"started_at":1790000000,"updated_at":1790000005,"config":"/etc/sonotap/config.toml","devices":[{"name":"audio","ok":true,"detail":"ALSA default, 48000 Hz"},{"name":"gate","ok":false,"detail":"/dev/ttyUSB0: No such file or directory (retrying)"}],"sync":{"hub":"https://hub:8443","ok":true,"detail":"last round ok"}}"#;
        let status: DaemonStatus = serde_json::from_str(example).expect("parses");
        assert_eq!(status.pid, 1234);
        assert_eq!(status.started_at, 1_790_000_000);
        assert_eq!(status.updated_at, 1_790_000_005);
        assert_eq!(status.config, "/etc/sonotap/config.toml");
        assert_eq!(status.devices[1].name, "gate");
        assert!(!status.devices[1].ok);
        assert_eq!(
            status.sync,
            Some(LinkStatus {
                hub: "https://hub:8443".into(),
                ok: true,
                detail: "last round ok".into()
            })
        );
        let round_trip: DaemonStatus =
            serde_json::from_str(&serde_json::to_string(&status).expect("json")).expect("parses");
        assert_eq!(round_trip, status);
    }

    #[test]
    fn a_missing_status_file_means_the_daemon_is_not_running() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(daemon_health(dir.path(), NOW), DaemonHealth::NotRunning);
    }

    #[test]
    fn a_fresh_status_file_from_a_live_process_is_running() {
        let dir = tempfile::tempdir().expect("tempdir");
        let text = status_json(std::process::id(), NOW - 3, true);
        fs::write(dir.path().join(DAEMON_STATUS_FILE), text).expect("write");
        match daemon_health(dir.path(), NOW) {
            DaemonHealth::Running { status } => {
                assert_eq!(status.devices.len(), 2);
                assert_eq!(status.sync, None);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_old_status_file_or_a_dead_pid_is_stale() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(DAEMON_STATUS_FILE);
        fs::write(&path, status_json(std::process::id(), NOW - 31, true)).expect("write");
        assert!(matches!(
            daemon_health(dir.path(), NOW),
            DaemonHealth::Stale { .. }
        ));
        // Pid numbers above the kernel's pid_max (4194304) never exist.
        fs::write(&path, status_json(4_194_305, NOW, true)).expect("write");
        match daemon_health(dir.path(), NOW) {
            DaemonHealth::Stale { why, .. } => assert!(why.contains("gone"), "{why}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_corrupt_status_file_is_reported_not_a_panic() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(DAEMON_STATUS_FILE);
        for junk in [&b"{\"pid\": 12"[..], b"\xff\xfe", b"[]", b""] {
            fs::write(&path, junk).expect("write");
            match daemon_health(dir.path(), NOW) {
                DaemonHealth::Unreadable { detail } => {
                    assert!(detail.contains(DAEMON_STATUS_FILE), "{detail}")
                }
                other => panic!("{other:?}"),
            }
        }
    }
}
