//! A serial port that comes and goes: opened by path, reopened with backoff.
//!
//! USB serial adapters vanish when unplugged or reset and come back, often
//! under the same udev name (`/dev/sonotap-gate`). The link opens the path
//! (following symlinks), reports a read or write failure as the port being
//! gone, closes it, and reopens it later, waiting 50 ms after the first
//! failure and doubling up to 2 s.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serialport::{ClearBuffer, SerialPort, TTYPort};
use thiserror::Error;

use crate::backoff::Backoff;

/// First wait before reopening a port that failed.
pub const MIN_BACKOFF: Duration = Duration::from_millis(50);
/// Longest wait between attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// A serial port problem, naming the port.
#[derive(Debug, Error)]
pub enum PortError {
    /// The port could not be opened (missing, busy, no permission).
    #[error("cannot open serial port {path} at {baud} baud: {cause}")]
    Open {
        /// The port.
        path: PathBuf,
        /// The baud rate asked for.
        baud: u32,
        /// What the OS said.
        cause: serialport::Error,
    },
    /// Reading or writing failed: the port is gone.
    #[error("serial port {path}: {op} failed: {cause}")]
    Io {
        /// The port.
        path: PathBuf,
        /// `read` or `write`.
        op: &'static str,
        /// What the OS said.
        cause: io::Error,
    },
    /// The port is closed (it vanished and has not come back yet).
    #[error("serial port {path} is not open{}", last.as_deref().map(|l| format!(" (last: {l})")).unwrap_or_default())]
    NotOpen {
        /// The port.
        path: PathBuf,
        /// The last failure, if any.
        last: Option<String>,
    },
}

/// A serial port by path, reopened when it returns.
pub struct SerialLink {
    path: PathBuf,
    baud: u32,
    port: Option<TTYPort>,
    next_attempt: Option<Instant>,
    backoff: Backoff,
    last_error: Option<String>,
}

impl SerialLink {
    /// A link to `path` at `baud`; nothing is opened yet.
    pub fn new(path: &Path, baud: u32) -> Self {
        Self {
            path: path.into(),
            baud,
            port: None,
            next_attempt: None,
            backoff: Backoff::new(MIN_BACKOFF, MAX_BACKOFF),
            last_error: None,
        }
    }

    /// The port's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the port is open.
    pub fn is_open(&self) -> bool {
        self.port.is_some()
    }

    /// The last failure, for messages.
    pub fn last_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }

    /// When the next reopening attempt is due, while closed.
    pub fn next_attempt(&self) -> Option<Instant> {
        match self.port {
            Some(_) => None,
            None => self.next_attempt,
        }
    }

    /// Opens the port now (8N1, no flow control, exclusive), discarding
    /// whatever the device sent before.
    pub fn open(&mut self) -> Result<(), PortError> {
        let opened = serialport::new(self.path.to_string_lossy(), self.baud)
            .timeout(Duration::from_millis(10))
            .open_native();
        match opened {
            Ok(port) => {
                // Stale input is from before this process looked; drop it.
                let _ = port.clear(ClearBuffer::Input);
                self.port = Some(port);
                self.backoff.succeeded();
                self.next_attempt = None;
                Ok(())
            }
            Err(cause) => {
                let err = PortError::Open {
                    path: self.path.clone(),
                    baud: self.baud,
                    cause,
                };
                self.last_error = Some(err.to_string());
                Err(err)
            }
        }
    }

    /// Tries to open a closed port if its backoff has passed; returns
    /// whether the port was opened by this call.
    pub fn try_open(&mut self, now: Instant) -> bool {
        if self.port.is_some() || self.next_attempt.is_some_and(|at| now < at) {
            return false;
        }
        match self.open() {
            Ok(()) => true,
            Err(_) => {
                self.next_attempt = Some(now + self.backoff.failed_without_jitter());
                false
            }
        }
    }

    /// Closes the port after a failure; the next attempt waits the backoff.
    pub fn close(&mut self, now: Instant, reason: &str) {
        if self.port.take().is_some() {
            self.last_error = Some(reason.into());
            self.next_attempt = Some(now + self.backoff.ceiling());
        }
    }

    /// Writes all of `bytes` and waits until they are sent.
    pub fn write(&mut self, bytes: &[u8]) -> Result<(), PortError> {
        let Some(port) = self.port.as_mut() else {
            return Err(PortError::NotOpen {
                path: self.path.clone(),
                last: self.last_error.clone(),
            });
        };
        port.write_all(bytes)
            .and_then(|()| port.flush())
            .map_err(|cause| PortError::Io {
                path: self.path.clone(),
                op: "write",
                cause,
            })
    }

    /// Reads what arrives within `timeout` (empty if nothing did).
    pub fn read(&mut self, timeout: Duration) -> Result<Vec<u8>, PortError> {
        let path = self.path.clone();
        let Some(port) = self.port.as_mut() else {
            return Err(PortError::NotOpen {
                path,
                last: self.last_error.clone(),
            });
        };
        let io_err = |cause| PortError::Io {
            path: path.clone(),
            op: "read",
            cause,
        };
        port.set_timeout(timeout)
            .map_err(|e| io_err(io::Error::other(e.to_string())))?;
        let mut buf = [0u8; 512];
        match port.read(&mut buf) {
            Ok(0) => Err(io_err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "end of file (the device hung up)",
            ))),
            Ok(n) => Ok(buf[..n].to_vec()),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                        | io::ErrorKind::WouldBlock
                ) =>
            {
                Ok(Vec::new())
            }
            Err(e) => Err(io_err(e)),
        }
    }
}
