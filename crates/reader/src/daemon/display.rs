//! The rider's status display (a profile's `[display]`): lines written on
//! their own thread to their own serial port, so a slow, missing or
//! unplugged display never delays the gate. The port is reopened with the
//! serial link's backoff; lines that find no port are dropped (a status
//! line is only worth showing now).

use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use super::Shared;
use crate::actuator::SerialLink;
use crate::actuator::profile::DisplayConfig;

/// Starts the display thread; it ends when every sender is gone.
pub fn spawn(
    config: DisplayConfig,
    shared: Arc<Shared>,
    rx: Receiver<Vec<u8>>,
) -> std::io::Result<thread::JoinHandle<()>> {
    thread::Builder::new()
        .name("sonotap-display".into())
        .spawn(move || {
            let what = config.port.display().to_string();
            let mut link = SerialLink::new(&config.port, config.baud);
            let report = |link: &SerialLink| {
                if link.is_open() {
                    shared.device("display", true, &what);
                } else {
                    let why = link.last_error().unwrap_or("not open");
                    shared.device("display", false, &format!("{why} (retrying)"));
                }
            };
            let _ = link.open();
            report(&link);
            loop {
                match rx.recv_timeout(Duration::from_millis(500)) {
                    Ok(line) => {
                        if !link.is_open() {
                            link.try_open(Instant::now());
                        }
                        if link.is_open()
                            && let Err(e) = link.write(&line)
                        {
                            link.close(Instant::now(), &e.to_string());
                        }
                    }
                    Err(RecvTimeoutError::Timeout) => {
                        if !link.is_open() {
                            link.try_open(Instant::now());
                        }
                    }
                    Err(RecvTimeoutError::Disconnected) => return,
                }
                report(&link);
            }
        })
}
