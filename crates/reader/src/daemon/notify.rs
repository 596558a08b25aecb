//! systemd's readiness protocol (`sd_notify`): datagrams such as `READY=1`
//! and `WATCHDOG=1` sent to the unix socket named by `$NOTIFY_SOCKET`.
//!
//! A dozen lines of std instead of a crate: a path socket, or an abstract
//! one when the name starts with `@`. Without `$NOTIFY_SOCKET` (not run by
//! systemd) every send is a no-op.

use std::io;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::time::Duration;

/// Where notifications go, if anywhere.
#[derive(Debug)]
pub struct Notifier {
    target: Option<Target>,
    watchdog: Option<Duration>,
}

#[derive(Debug)]
enum Target {
    Path(PathBuf),
    Abstract(Vec<u8>),
}

impl Notifier {
    /// Reads `$NOTIFY_SOCKET`, `$WATCHDOG_USEC` and `$WATCHDOG_PID` (the
    /// watchdog applies only when its pid, if given, is ours).
    pub fn from_env() -> Self {
        let target = std::env::var_os("NOTIFY_SOCKET").and_then(|s| {
            let bytes = s.as_encoded_bytes();
            match bytes.first() {
                None => None,
                Some(b'@') => Some(Target::Abstract(bytes[1..].to_vec())),
                Some(_) => Some(Target::Path(PathBuf::from(s))),
            }
        });
        let pid_ok = std::env::var("WATCHDOG_PID")
            .ok()
            .and_then(|p| p.parse::<u32>().ok())
            .is_none_or(|p| p == std::process::id());
        let watchdog = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|&us| us > 0 && pid_ok)
            .map(Duration::from_micros);
        Self { target, watchdog }
    }

    /// The watchdog period systemd asked for, if any: ping at half of it.
    pub fn watchdog(&self) -> Option<Duration> {
        self.watchdog
    }

    /// Whether there is a socket to notify.
    #[cfg(test)]
    pub fn enabled(&self) -> bool {
        self.target.is_some()
    }

    /// Sends one notification (`READY=1`, `WATCHDOG=1`, `STOPPING=1`, `STATUS=...`).
    pub fn send(&self, state: &str) -> io::Result<()> {
        let Some(target) = &self.target else {
            return Ok(());
        };
        let socket = UnixDatagram::unbound()?;
        match target {
            Target::Path(path) => socket.send_to(state.as_bytes(), path)?,
            Target::Abstract(name) => {
                use std::os::linux::net::SocketAddrExt;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
                socket.send_to_addr(state.as_bytes(), &addr)?
            }
        };
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notifications_arrive_as_datagrams_on_a_path_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let server = UnixDatagram::bind(&path).unwrap();
        let n = Notifier {
            target: Some(Target::Path(path)),
            watchdog: None,
        };
        n.send("READY=1").unwrap();
        let mut buf = [0u8; 64];
        let len = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1");
    }

    #[test]
    fn without_a_socket_sending_is_a_no_op() {
        let n = Notifier {
            target: None,
            watchdog: None,
        };
        assert!(!n.enabled());
        n.send("READY=1").unwrap();
    }
}
