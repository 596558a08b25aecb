//! In-band power per STFT hop for each modem band (the payment profiles'
//! and the readers' beacon's): a histogram for the band's noise floor over
//! the whole file, and a ring of recent hops from which each decoded
//! frame's SNR is measured.

use std::collections::VecDeque;
use std::ops::Range;

use sonotap_modem::Profile;

use super::stft::{FFT_LEN, HOP};

/// A band the analysis measures: a payment profile's, or the beacon's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Band {
    /// Where a payment profile's frames are.
    Payment(Profile),
    /// Where readers' beacons are (18.3–19.8 kHz).
    Beacon,
}

impl Band {
    /// Every band, in the order reported.
    pub const ALL: [Band; BANDS] = [
        Band::Payment(Profile::Fast),
        Band::Payment(Profile::Robust),
        Band::Beacon,
    ];

    /// Its name in reports: the profile's, or `beacon`.
    pub fn name(self) -> &'static str {
        match self {
            Band::Payment(p) => p.name(),
            Band::Beacon => "beacon",
        }
    }

    /// The band by name.
    pub fn from_name(name: &str) -> Option<Band> {
        Band::ALL.into_iter().find(|b| b.name() == name)
    }

    /// Lowest and highest carrier or tone, Hz.
    pub fn hz(self) -> (f32, f32) {
        match self {
            Band::Payment(p) => p.band_hz(),
            Band::Beacon => sonotap_modem::beacon_band_hz(),
        }
    }

    fn index(self) -> usize {
        match self {
            Band::Payment(Profile::Fast) => 0,
            Band::Payment(Profile::Robust) => 1,
            Band::Beacon => 2,
        }
    }
}

impl From<Profile> for Band {
    fn from(profile: Profile) -> Band {
        Band::Payment(profile)
    }
}

/// Bands measured.
const BANDS: usize = 3;

/// The noise floor is the level the band exceeds 90 % of the time (L90, as
/// background noise is measured in acoustics): frames, taps and announcements
/// are short and do not move it.
pub const FLOOR_PERCENTILE: f64 = 10.0;

/// Histogram resolution and range, dB.
const HIST_STEP_DB: f64 = 0.25;
const HIST_MIN_DB: f64 = -200.0;
const HIST_MAX_DB: f64 = 20.0;

/// Seconds of hop powers kept for SNR: a frame can be emitted up to the
/// decoder's 6 s buffer after it starts, and its noise window begins 0.5 s
/// before that.
const RING_SECONDS: f64 = 10.0;

/// Noise windows around a frame (seconds): before the frame, from
/// `BEFORE.0` to `BEFORE.1` before its start; after it, from `AFTER.0` to
/// `AFTER.1` after its end (used only when the window before is too short,
/// because a reverberant room's tail fills the first tenths after a frame).
const BEFORE: (f64, f64) = (0.5, 0.03);
const AFTER: (f64, f64) = (0.15, 0.65);
/// Fewer noise hops than this (about 50 ms) and the estimate is not made.
const MIN_NOISE_HOPS: usize = 4;

/// How far past a frame's end the stream must be before its SNR is measured.
pub(crate) const SETTLE_SECONDS: f64 = 0.7;

/// One hop's powers: each band's, and the whole band's.
#[derive(Debug, Clone, Copy)]
struct HopPower {
    hop: u64,
    band: [f64; BANDS],
    total: f64,
}

/// A frame's SNR, in its profile's band and over the whole band.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Snr {
    pub(crate) in_band_db: f64,
    pub(crate) wideband_db: f64,
}

/// Per-band tracker.
pub(crate) struct Bands {
    rate: u32,
    /// Bin ranges of each band (in `Band::ALL` order).
    bins: [Range<usize>; BANDS],
    hist: [Vec<u64>; BANDS],
    hist_total: Vec<u64>,
    hops: u64,
    ring: VecDeque<HopPower>,
    ring_len: usize,
}

impl Bands {
    pub(crate) fn new(rate: u32) -> Self {
        let bin_hz = f64::from(rate) / FFT_LEN as f64;
        let nyquist_bin = FFT_LEN / 2;
        let bins = Band::ALL.map(|b| {
            let (lo, hi) = b.hz();
            let first = (f64::from(lo) / bin_hz).round() as usize;
            let last = (f64::from(hi) / bin_hz).round() as usize;
            first.min(nyquist_bin + 1)..(last + 1).min(nyquist_bin + 1)
        });
        let slots = ((HIST_MAX_DB - HIST_MIN_DB) / HIST_STEP_DB) as usize + 1;
        Self {
            rate,
            bins,
            hist: std::array::from_fn(|_| vec![0; slots]),
            hist_total: vec![0; slots],
            hops: 0,
            ring: VecDeque::new(),
            ring_len: (RING_SECONDS * f64::from(rate) / HOP as f64) as usize + 1,
        }
    }

    /// Whether the file's rate reaches all of `band`.
    pub(crate) fn covers(&self, band: impl Into<Band>) -> bool {
        f64::from(band.into().hz().1) < f64::from(self.rate) / 2.0
    }

    pub(crate) fn push(&mut self, hop: u64, power: &[f32]) {
        let sum = |r: &Range<usize>| {
            power
                .get(r.clone())
                .map_or(0.0, |p| p.iter().map(|&v| f64::from(v)).sum())
        };
        let band = std::array::from_fn(|i| sum(&self.bins[i]));
        let total = power.iter().map(|&v| f64::from(v)).sum();
        for (hist, p) in self.hist.iter_mut().zip(band) {
            hist[slot(p)] += 1;
        }
        self.hist_total[slot(total)] += 1;
        self.hops += 1;
        if self.ring.len() == self.ring_len {
            self.ring.pop_front();
        }
        self.ring.push_back(HopPower { hop, band, total });
    }

    /// The band's noise floor (L90) in dBFS, `None` before any hop.
    pub(crate) fn floor_dbfs(&self, band: impl Into<Band>) -> Option<f64> {
        percentile(&self.hist[band.into().index()], self.hops)
    }

    /// The whole band's L90 in dBFS.
    pub(crate) fn total_floor_dbfs(&self) -> Option<f64> {
        percentile(&self.hist_total, self.hops)
    }

    /// Width of `band` as measured, Hz.
    pub(crate) fn band_width_hz(&self, band: impl Into<Band>) -> f64 {
        self.bins[band.into().index()].len() as f64 * f64::from(self.rate) / FFT_LEN as f64
    }

    /// The SNR of a frame spanning file samples `frame`, with `others` (other
    /// frames, file samples) kept out of the noise estimate.
    ///
    /// Signal + noise is the mean in-band power of the hops whose window
    /// lies inside the frame; noise is the mean in-band power of the hops in
    /// the 0.5 s before the frame (ending 30 ms before it), or, when that is
    /// too short (a frame at the very start), of 0.15–0.65 s after it; SNR =
    /// (signal+noise − noise) / noise. The same is done over the whole band.
    pub(crate) fn snr(
        &self,
        band: impl Into<Band>,
        frame: Range<u64>,
        others: &[Range<u64>],
    ) -> Option<Snr> {
        let index = band.into().index();
        let rate = f64::from(self.rate);
        let secs = |s: f64| (s * rate) as u64;
        let inside = |h: &HopPower, r: &Range<u64>| {
            let start = h.hop * HOP as u64;
            start >= r.start && start + FFT_LEN as u64 <= r.end
        };
        let touches_other = |h: &HopPower| {
            let (start, end) = (h.hop * HOP as u64, h.hop * HOP as u64 + FFT_LEN as u64);
            others
                .iter()
                .any(|o| start < o.end + secs(AFTER.0) && end > o.start)
        };
        let mean = |r: &Range<u64>, exclude: bool| {
            let picked: Vec<&HopPower> = self
                .ring
                .iter()
                .filter(|h| inside(h, r) && !(exclude && touches_other(h)))
                .collect();
            let n = picked.len();
            let band = picked.iter().map(|h| h.band[index]).sum::<f64>() / n.max(1) as f64;
            let total = picked.iter().map(|h| h.total).sum::<f64>() / n.max(1) as f64;
            (n, band, total)
        };
        let (n_sig, sig_band, sig_total) = mean(&frame, false);
        if n_sig == 0 {
            return None;
        }
        let before =
            frame.start.saturating_sub(secs(BEFORE.0))..frame.start.saturating_sub(secs(BEFORE.1));
        let after = frame.end + secs(AFTER.0)..frame.end + secs(AFTER.1);
        let (mut n, mut noise_band, mut noise_total) = mean(&before, true);
        if n < MIN_NOISE_HOPS {
            (n, noise_band, noise_total) = mean(&after, true);
        }
        if n < MIN_NOISE_HOPS || noise_band <= 0.0 || noise_total <= 0.0 {
            return None;
        }
        let ratio = |s: f64, n: f64| 10.0 * ((s - n).max(n * 1e-4) / n).log10();
        Some(Snr {
            in_band_db: ratio(sig_band, noise_band),
            wideband_db: ratio(sig_total, noise_total),
        })
    }
}

fn slot(power: f64) -> usize {
    let db = if power > 0.0 {
        10.0 * power.log10()
    } else {
        HIST_MIN_DB
    };
    let max = ((HIST_MAX_DB - HIST_MIN_DB) / HIST_STEP_DB) as usize;
    (((db.clamp(HIST_MIN_DB, HIST_MAX_DB) - HIST_MIN_DB) / HIST_STEP_DB) as usize).min(max)
}

fn percentile(hist: &[u64], total: u64) -> Option<f64> {
    if total == 0 {
        return None;
    }
    let wanted = ((total as f64 * FLOOR_PERCENTILE / 100.0).ceil() as u64).max(1);
    let mut seen = 0;
    for (i, &count) in hist.iter().enumerate() {
        seen += count;
        if seen >= wanted {
            return Some(HIST_MIN_DB + (i as f64 + 0.5) * HIST_STEP_DB);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floor_is_the_level_exceeded_ninety_percent_of_the_time() {
        let mut bands = Bands::new(48_000);
        let bins = FFT_LEN / 2 + 1;
        for hop in 0..100u64 {
            // 95 quiet hops (1e-6 per bin in band), 5 loud ones.
            let level = if hop % 20 == 0 { 1e-2 } else { 1e-6 };
            bands.push(hop, &vec![level; bins]);
        }
        let fast_bins = bands.bins[0].len() as f64;
        let expected = 10.0 * (1e-6 * fast_bins).log10();
        let floor = bands.floor_dbfs(Profile::Fast).expect("floor");
        assert!((floor - expected).abs() < 0.3, "{floor} vs {expected}");
    }

    #[test]
    fn snr_compares_the_frame_with_the_noise_before_it() {
        let mut bands = Bands::new(48_000);
        let bins = FFT_LEN / 2 + 1;
        let frame = 48_000u64..96_000;
        for hop in 0..300u64 {
            let start = hop * HOP as u64;
            let in_frame = start >= frame.start && start + FFT_LEN as u64 <= frame.end;
            // Signal + noise is 11 × noise: SNR 10 dB.
            bands.push(hop, &vec![if in_frame { 11e-6 } else { 1e-6 }; bins]);
        }
        let snr = bands.snr(Profile::Fast, frame, &[]).expect("snr");
        assert!((snr.in_band_db - 10.0).abs() < 0.01, "{snr:?}");
        assert!((snr.wideband_db - 10.0).abs() < 0.01, "{snr:?}");
    }
}
