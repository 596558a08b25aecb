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
            let db = match ReaderDb::open(&db_path) {
                Ok(db) => Some(db),
                Err(e) => {
                    tracing::error!("beacon: cannot read the reader's clock offset ({e}); beaconing on the system clock");
                    None
                }
            };
            let mut shown: Option<[u8; 8]> = None;
            let mut played: Option<(Instant, [u8; 8])> = None;
            // The last outcome of each way of telling riders, and what the
            // health says: changed only when a play or a write happened.
            let (mut sound_error, mut qr_error): (Option<String>, Option<String>) = (None, None);
            let mut reported: Option<Option<String>> = None;
            while shared.stop.nap(TICK) {
                let system = system_now();
                let now = db
                    .as_ref()
                    .and_then(|db| db.reader_time(system).ok())
                    .unwrap_or(system);
                let Some(fresh) = random_challenge() else {
                    continue;
                };
                let beacon = match book.lock() {
                    Ok(mut book) => book.beacon(now, || fresh),
                    Err(_) => {
                        tracing::error!("beacon: the challenge book is poisoned; no more beacons");
                        shared.device("beacon", false, "stopped: the challenge book is poisoned");
                        return;
                    }
                };
                if let Some(sound) = &config.sound {
                    let due = match played {
                        Some((at, challenge)) => {
                            challenge != beacon.challenge || at.elapsed() >= sound.every
                        }
                        None => true,
                    };
                    if due {
                        played = Some((Instant::now(), beacon.challenge));
                        sound_error = play(&beacon, sound).err();
                    }
                }
                if let Some(path) = &config.qr_file
                    && shown != Some(beacon.challenge)
                {
                    qr_error = show_qr(&beacon, path).err();
                    if qr_error.is_none() {
                        shown = Some(beacon.challenge);
                    }
                }
                let problem = sound_error.clone().or_else(|| qr_error.clone());
                if reported.as_ref() != Some(&problem) {
                    match &problem {
                        None => shared.device("beacon", true, &describe(&config)),
                        Some(e) => {
                            tracing::warn!(
                                "beacon: {e} (riders cannot bind to this gate that way; \
                                 the gate and its decisions go on)"
                            );
                            shared.device("beacon", false, e);
                        }
                    }
                    reported = Some(problem);
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
