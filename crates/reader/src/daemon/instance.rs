//! One daemon per reader: `sonotap run` holds an exclusive lock on
//! `DIR/daemon.lock` while it runs. A second daemon on the same data
//! directory would drive the same gate and, at its start, settle the first
//! one's openings in flight as unknown; it is refused instead, naming the
//! process that holds the reader. The kernel drops the lock when the
//! holder ends in any way (a SIGKILL, a crash), so a stale lock cannot
//! keep a restarted daemon out.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The lock file in the reader's data directory.
pub const LOCK_FILE: &str = "daemon.lock";

/// Why the lock was not taken.
#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    /// Another daemon holds the reader.
    #[error(
        "another `sonotap run` (pid {holder}) is serving the reader in {dir}; \
         one daemon per reader (stop it first, or give this one another data directory)"
    )]
    Running {
        /// The data directory.
        dir: PathBuf,
        /// What the holder wrote: its process id.
        holder: String,
    },
    /// The lock file could not be opened or locked.
    #[error("cannot lock {path}: {source}")]
    Io {
        /// The lock file.
        path: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
}

/// The lock, held until dropped (the process's end).
#[derive(Debug)]
pub struct InstanceLock {
    _file: File,
}

impl InstanceLock {
    /// Takes the lock of the reader in `dir`, or says who holds it.
    pub fn take(dir: &Path) -> Result<Self, InstanceError> {
        let path = dir.join(LOCK_FILE);
        let io_err = |source| InstanceError::Io {
            path: path.clone(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(io_err)?;
        // SAFETY: flock(2) on a descriptor this function owns; no memory is shared.
        let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if locked != 0 {
            let error = io::Error::last_os_error();
            if error.raw_os_error() == Some(libc::EWOULDBLOCK) {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim().chars().take(20).collect::<String>();
                return Err(InstanceError::Running {
                    dir: dir.to_path_buf(),
                    holder: if holder.is_empty() {
                        "?".into()
                    } else {
                        holder
                    },
                });
            }
            return Err(io_err(error));
        }
        // Who holds it, for the next one's message (not a lock by itself).
        file.set_len(0).map_err(io_err)?;
        file.rewind().map_err(io_err)?;
        writeln!(file, "{}", std::process::id()).map_err(io_err)?;
        Ok(Self { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_one_reader_is_refused_naming_the_holder_and_free_once_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let first = InstanceLock::take(dir.path()).unwrap();
        let refused = InstanceLock::take(dir.path()).unwrap_err();
        let text = refused.to_string();
        assert!(text.contains(&std::process::id().to_string()), "{text}");
        assert!(text.contains("one daemon per reader"), "{text}");
        drop(first);
        let again = InstanceLock::take(dir.path());
        assert!(again.is_ok(), "{again:?}");
        let mode = std::fs::metadata(dir.path().join(LOCK_FILE)).unwrap();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
            0o600
        );
    }
}
