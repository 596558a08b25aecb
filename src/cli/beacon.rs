//! Where `wallet pay --beacon` hears a gate: the beacon's 17 bytes as hex
//! (read off a display), or a QR code the gate shows (an image file).

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use sonotap_protocol::beacon::{BEACON_LEN, Beacon};
use sonotap_qr as qr;

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
    /// The gate's time now, as the beacon told it.
    pub fn gate_time_now(&self) -> u64 {
        u64::from(self.beacon.reader_time) + self.at.elapsed().as_secs()
    }
}

/// Reads a beacon from `source`: 34 hex digits, or an image file holding
/// the gate's QR code.
pub fn hear(source: &str) -> Result<Heard> {
    if source.len() == 2 * BEACON_LEN && source.chars().all(|c| c.is_ascii_hexdigit()) {
        let bytes = hex::decode(source).context("beacon hex")?;
        return Ok(Heard {
            beacon: Beacon::decode(&bytes)?,
            at: Instant::now(),
        });
    }
    let path = Path::new(source);
    let image = qr::load_image(path)
        .with_context(|| format!("--beacon {source}: not 34 hex digits, nor an image to scan"))?;
    let codes = qr::decode_frame(image.as_frame());
    let beacons: Vec<Beacon> = codes
        .iter()
        .filter_map(|code| Beacon::decode(&code.payload).ok())
        .collect();
    match beacons.as_slice() {
        [beacon] => Ok(Heard {
            beacon: *beacon,
            at: Instant::now(),
        }),
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
