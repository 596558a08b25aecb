//! `<data dir>/daemon-status.json`: the running daemon's device health, for
//! `sonotap status` (which reads it; the daemon only writes). Its format
//! lives here, beside [`crate::status`], so that neither side depends on the
//! other.
//!
//! Written atomically (a temporary file in the same directory, renamed over
//! the old one) at start, whenever a device's state changes, and at least
//! every 5 s, so a reader of the file never sees half of it and can tell a
//! dead daemon by a stale `updated_at`. Not fsynced: it is rewritten often
//! and losing it in a power cut costs nothing.

use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The file's name inside the reader's data directory.
pub const FILE_NAME: &str = "daemon-status.json";

/// The daemon's state, as written to [`FILE_NAME`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DaemonStatus {
    /// The daemon's process id.
    pub pid: u32,
    /// When it started, Unix seconds.
    pub started_at: u64,
    /// When this file was written, Unix seconds.
    pub updated_at: u64,
    /// The config file it runs.
    pub config: String,
    /// Configured devices only: `audio`, `camera`, `gate` or `vending`, `feedback`.
    pub devices: Vec<DeviceStatus>,
    /// The uplink; `None` (JSON null) when no hub is configured.
    pub sync: Option<SyncStatus>,
    /// Vend settlements the store has not taken yet (a void owed, a
    /// success not stored), retried until written; empty when none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub owed: Vec<OwedSettlement>,
}

/// One device's health.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceStatus {
    /// `audio`, `camera`, `gate`, `vending`, `feedback`.
    pub name: String,
    /// Working now.
    pub ok: bool,
    /// What it is, or what is wrong (and that it is retrying).
    pub detail: String,
}

/// The uplink's health.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncStatus {
    /// The hub's URL.
    pub hub: String,
    /// The last round succeeded.
    pub ok: bool,
    /// `last round ok`, or the last error.
    pub detail: String,
}

/// One owed settlement, as the status file shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwedSettlement {
    /// The charge record.
    pub charge_seq: u64,
    /// `void`, `vend_success` or `gate_outcome`.
    pub owed: String,
    /// Since when, Unix seconds.
    pub since: u64,
    /// Failed attempts so far.
    pub attempts: u32,
    /// The last failure.
    pub last_error: String,
}

impl DaemonStatus {
    /// The file's path in `dir`.
    pub fn path(dir: &Path) -> PathBuf {
        dir.join(FILE_NAME)
    }

    /// Writes the file atomically into `dir`.
    pub fn write(&self, dir: &Path) -> io::Result<()> {
        let json = serde_json::to_vec(self).map_err(io::Error::other)?;
        let tmp = dir.join(format!(".{FILE_NAME}.tmp{}", std::process::id()));
        std::fs::write(&tmp, json)?;
        std::fs::rename(&tmp, Self::path(dir)).inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })
    }

    /// Reads the file from `dir`.
    pub fn read(dir: &Path) -> io::Result<Self> {
        let bytes = std::fs::read(Self::path(dir))?;
        serde_json::from_slice(&bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_file_has_the_agreed_shape_and_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let status = DaemonStatus {
            pid: 1234,
            started_at: 1_790_000_000,
            updated_at: 1_790_000_005,
            config: "/etc/sonotap/config.toml".into(),
            devices: vec![DeviceStatus {
                name: "gate".into(),
                ok: false,
                detail: "/dev/ttyUSB0: No such file or directory (retrying)".into(),
            }],
            sync: None,
            owed: Vec::new(),
        };
        status.write(dir.path()).unwrap();
        let text = std::fs::read_to_string(dir.path().join(FILE_NAME)).unwrap();
        assert_eq!(
            text,
            r#"{"pid":1234,"started_at":1790000000,"updated_at":1790000005,"config":"/etc/sonotap/config.toml","devices":[{"name":"gate","ok":false,"detail":"/dev/ttyUSB0: No such file or directory (retrying)"}],"sync":null}"#
        );
        assert_eq!(DaemonStatus::read(dir.path()).unwrap(), status);
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temp file left"
        );
    }
}
