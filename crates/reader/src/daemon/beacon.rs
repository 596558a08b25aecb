//! The gate's beacon, on its own thread: draws a challenge per period
//! (`crate::beacon::ChallengeBook`, shared with the acceptor's decisions)
//! and tells the riders: as sound on the gate's speaker (the modem's
//! beacon, every `every_ms` and at once on a new challenge) and as a QR
//! code the gate's display shows. It never touches the gate: a failure to
//! play or write is logged once and shown in the health, and the acceptor
//! keeps deciding on the challenges issued.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::Shared;
use super::config::{BeaconConfig, BeaconSound};
use super::feedback;
use crate::beacon::ChallengeBook;
use crate::store::ReaderDb;
use sonotap_protocol::beacon::Beacon;

/// How often the thread looks at the clock (a new challenge is due at most
/// this late).
const TICK: Duration = Duration::from_millis(250);

fn system_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Eight bytes from the OS's generator; `None` if it failed (the beacon
/// then keeps its challenge until the next tick).
fn random_challenge() -> Option<[u8; 8]> {
    let mut c = [0u8; 8];
    getrandom::fill(&mut c).ok()?;
    Some(c)
}

/// Starts the beacon thread; it ends at the stop signal.
pub fn spawn(
    config: BeaconConfig,
    book: Arc<Mutex<ChallengeBook>>,
    db_path: &Path,
    shared: Arc<Shared>,
) -> std::io::Result<thread::JoinHandle<()>> {
    let db_path = db_path.to_path_buf();
    thread::Builder::new()
        .name("sonotap-beacon".into())
        .spawn(move || {
            // The reader's clock offset (from the hub) is read from its store,
            // so that the beacon's time is the time the acceptor decides at.
            let db = ReaderDb::open(&db_path).ok();
            let mut shown: Option<Beacon> = None;
            let mut played: Option<(Instant, [u8; 8])> = None;
            let mut failing = false;
            while shared.stop.nap(TICK) {
                let offset_ms = db
                    .as_ref()
                    .and_then(|db| db.sync_state().ok())
                    .map_or(0, |s| s.clock_offset_ms);
                let now = crate::reader::adjusted(system_now(), offset_ms);
                let beacon = match book.lock() {
                    Ok(mut book) => {
                        let Some(fresh) = random_challenge() else {
                            continue;
                        };
                        book.beacon(now, || fresh)
                    }
                    Err(_) => return,
                };
                let mut result = Ok(());
                if let Some(sound) = &config.sound {
                    let due = match played {
                        Some((at, challenge)) => {
                            challenge != beacon.challenge || at.elapsed() >= sound.every
                        }
                        None => true,
                    };
                    if due {
                        played = Some((Instant::now(), beacon.challenge));
                        result = play(&beacon, sound);
                    }
                }
                if shown.map(|b| b.challenge) != Some(beacon.challenge)
                    && let Some(path) = &config.qr_file
                    && result.is_ok()
                {
                    result = show_qr(&beacon, path);
                }
                match result {
                    Ok(()) => {
                        if failing || shown.is_none() {
                            shared.device("beacon", true, &describe(&config));
                        }
                        failing = false;
                        shown = Some(beacon);
                    }
                    Err(e) => {
                        if !failing {
                            tracing::warn!(
                                "beacon: {e} (riders cannot bind to this gate that way; \
                                 the gate and its decisions go on)"
                            );
                            shared.device("beacon", false, &e);
                        }
                        failing = true;
                    }
                }
            }
        })
}

/// Plays the beacon once, at the output's rate, scaled to the volume.
fn play(beacon: &Beacon, sound: &BeaconSound) -> Result<(), String> {
    feedback::play_samples(sound.device.as_deref(), |rate| {
        let samples = sonotap_modem::encode_beacon(&beacon.encode(), rate as u32)
            .map_err(|e| format!("the beacon cannot be played at {rate} Hz: {e}"))?;
        Ok(samples.into_iter().map(|v| v * sound.volume).collect())
    })
}

/// What the status file says about the beacon.
pub fn describe(config: &BeaconConfig) -> String {
    let qr = config
        .qr_file
        .as_ref()
        .map_or("no QR file".to_string(), |p| format!("QR {}", p.display()));
    let sound = config.sound.as_ref().map_or("no sound".to_string(), |s| {
        format!(
            "sound every {} ms on {}",
            s.every.as_millis(),
            s.device.as_deref().unwrap_or("the default output")
        )
    });
    format!(
        "new challenge every {}s, each accepted {}s; {sound}; {qr}; version-1 tokens {}",
        config.timing.period_secs,
        config.timing.life_secs,
        if config.accept_version_1 {
            "accepted"
        } else {
            "declined"
        }
    )
}

/// Writes the beacon as a QR code PNG, atomically (the display never reads
/// half an image), readable by the display's user.
fn show_qr(beacon: &Beacon, path: &Path) -> Result<(), String> {
    let png = sonotap_qr::encode::encode_png(&beacon.encode()).map_err(|e| e.to_string())?;
    sonotap_disk::fsutil::replace_atomic(path, &png, 0o644)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}
