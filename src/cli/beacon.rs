//! Where `wallet pay --beacon` hears a gate: its sound (a WAV recording, or
//! a capture device listened to live), the QR code its display shows (an
//! image file), or the beacon's 17 bytes as hex (read off a display).
//!
//! Where several gates are heard, the loudest is taken: at a line of gates
//! the nearest beacon is the one the phone is held to.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use sonotap_audio::capture::{Capture, CaptureEvent};
use sonotap_audio::wav::WavChunks;
use sonotap_modem::{BeaconDecoder, BeaconReception};
use sonotap_protocol::beacon::{BEACON_LEN, Beacon};
use sonotap_qr as qr;

/// After the first beacon is heard live, listen this much longer for a
/// louder one (another gate's): one beacon repeat of the reference reader.
const LOUDER_WITHIN: Duration = Duration::from_millis(2200);

/// A capture device that delivers nothing for this long is broken, not quiet.
const SILENT_DEVICE: Duration = Duration::from_secs(10);

/// A beacon and when the wallet heard it (the token's time is the gate's
/// time then, plus what passed since).
#[derive(Debug, Clone, Copy)]
pub struct Heard {
    /// What the gate announced.
    pub beacon: Beacon,
    /// When it was heard.
    pub at: Instant,
}

impl Heard {
    fn now(beacon: Beacon) -> Self {
        Self {
            beacon,
            at: Instant::now(),
        }
    }

    /// The gate's time now, as the beacon told it.
    pub fn gate_time_now(&self) -> u64 {
        u64::from(self.beacon.reader_time) + self.at.elapsed().as_secs()
    }
}

/// Hears a beacon from `source`: 34 hex digits; `alsa:DEVICE` (or
/// `device:NAME`, any capture device cpal knows), listened to for up to
/// `listen` seconds; a `.wav` recording; or an image of the gate's QR code.
pub fn hear(source: &str, listen: Duration) -> Result<Heard> {
    if source.len() == 2 * BEACON_LEN && source.chars().all(|c| c.is_ascii_hexdigit()) {
        let bytes = hex::decode(source).context("beacon hex")?;
        return Ok(Heard::now(Beacon::decode(&bytes)?));
    }
    if let Some(device) = source.strip_prefix("device:") {
        return listen_live(device, listen);
    }
    if source.starts_with("alsa:") {
        return listen_live(source, listen);
    }
    let path = Path::new(source);
    let is_wav = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("wav"));
    match is_wav {
        true => from_recording(path),
        false => from_image(path),
    }
}

/// The loudest of `receptions` that is a beacon.
fn loudest(receptions: &[BeaconReception]) -> Option<Beacon> {
    receptions
        .iter()
        .filter_map(|r| Beacon::decode(&r.payload).ok().map(|b| (r.level_dbfs, b)))
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, b)| b)
}

fn from_recording(path: &Path) -> Result<Heard> {
    let mut chunks = WavChunks::open(path)?;
    let mut decoder = BeaconDecoder::new(chunks.rate()).with_context(|| {
        format!(
            "{}: {} Hz cannot carry the beacon",
            path.display(),
            chunks.rate()
        )
    })?;
    let heard = super::sound::scan_wav(&mut chunks, |chunk| match chunk {
        Some(samples) => decoder.push(samples),
        None => decoder.finish(),
    })?;
    match loudest(&heard) {
        Some(beacon) => Ok(Heard::now(beacon)),
        None => bail!(
            "no gate beacon in {} ({:.1} s of audio)",
            path.display(),
            chunks.duration_secs()
        ),
    }
}

fn listen_live(device: &str, listen: Duration) -> Result<Heard> {
    let capture = Capture::start(Some(device))?;
    let mut decoder = BeaconDecoder::new(capture.rate).with_context(|| {
        format!(
            "{} captures at {} Hz, too low for the beacon",
            capture.device, capture.rate
        )
    })?;
    eprintln!(
        "sonotap: listening for a gate beacon on {} at {} Hz",
        capture.device, capture.rate
    );
    let deadline = Instant::now() + listen;
    let mut first: Option<Instant> = None;
    let mut heard = Vec::new();
    loop {
        let now = Instant::now();
        let until = match first {
            Some(at) => (at + LOUDER_WITHIN).min(deadline),
            None => deadline,
        };
        if now >= until {
            break;
        }
        match capture
            .events()
            .recv_timeout((until - now).min(SILENT_DEVICE))
        {
            Ok(CaptureEvent::Samples(chunk)) => {
                let got = decoder.push(&chunk);
                if first.is_none() && loudest(&got).is_some() {
                    first = Some(Instant::now());
                }
                heard.extend(got);
            }
            Ok(CaptureEvent::Error(e)) => eprintln!("sonotap: warning: {}: {e}", capture.device),
            Err(_) if Instant::now() < until => bail!(
                "{} delivered no audio for {} s",
                capture.device,
                SILENT_DEVICE.as_secs()
            ),
            Err(_) => break,
        }
    }
    match loudest(&heard) {
        // Heard live: its time is now, give or take the beacon's own length.
        Some(beacon) => Ok(Heard {
            beacon,
            at: first.unwrap_or_else(Instant::now),
        }),
        None => bail!(
            "no gate beacon heard on {} within {:.0} s",
            capture.device,
            listen.as_secs_f64()
        ),
    }
}

fn from_image(path: &Path) -> Result<Heard> {
    let image = qr::load_image(path).with_context(|| {
        format!(
            "--beacon {}: not 34 hex digits, a .wav recording, alsa:DEVICE, nor an image to scan",
            path.display()
        )
    })?;
    let codes = qr::decode_frame(image.as_frame());
    let beacons: Vec<Beacon> = codes
        .iter()
        .filter_map(|code| Beacon::decode(&code.payload).ok())
        .collect();
    match beacons.as_slice() {
        [beacon] => Ok(Heard::now(*beacon)),
        [] => bail!(
            "no gate beacon in {} ({} other QR codes)",
            path.display(),
            codes.len()
        ),
        _ => bail!(
            "{} shows {} gate beacons; a wallet binds to one gate",
            path.display(),
            beacons.len()
        ),
    }
}
