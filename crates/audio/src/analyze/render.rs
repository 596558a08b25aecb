//! The spectrogram picture: STFT power averaged into at most [`MAX_WIDTH`]
//! columns (a long file is decimated in time, so memory is bounded by the
//! picture, not the file), then drawn with the bands, the decoded frames
//! and beacons, and the clipped stretches marked.

use image::{Rgb, RgbImage};

use super::bands::Band;
use super::stft::{FFT_LEN, HOP};
use super::{Analysis, Layout};
use sonotap_modem::Profile;

/// The widest picture, columns.
pub const MAX_WIDTH: u32 = 4000;
/// Spectrum rows: FFT bins 0 .. FFT_LEN/2 (0 Hz to just below Nyquist).
pub const SPECTRUM_ROWS: u32 = (FFT_LEN / 2) as u32;
/// Rows of the strip under the spectrum: red where samples clipped, with a
/// tick every second (every ten or sixty for long files).
pub const STRIP_ROWS: u32 = 12;
/// Colours span this many dB below the loudest pixel.
const RANGE_DB: f32 = 90.0;

/// A profile's colour: boxes around its frames and its band's dotted edges.
pub fn profile_colour(profile: Profile) -> Rgb<u8> {
    match profile {
        Profile::Fast => Rgb([0, 255, 0]),
        Profile::Robust => Rgb([0, 200, 255]),
    }
}
/// A band's colour: a profile's, or white for the readers' beacon.
pub fn band_colour(band: Band) -> Rgb<u8> {
    match band {
        Band::Payment(p) => profile_colour(p),
        Band::Beacon => Rgb([255, 255, 255]),
    }
}
const CLIPPED: Rgb<u8> = Rgb([255, 0, 0]);
const STRIP: Rgb<u8> = Rgb([40, 40, 40]);
const TICK: Rgb<u8> = Rgb([160, 160, 160]);

/// Time-decimated STFT power.
pub(crate) struct Spectrogram {
    rate: u32,
    cap: usize,
    hops_per_column: u64,
    /// `SPECTRUM_ROWS` sums per column.
    sums: Vec<f32>,
    counts: Vec<u32>,
    clipped: Vec<u32>,
}

impl Spectrogram {
    /// `expected_frames` (from the header) sets the decimation; a file that
    /// turns out longer piles its end into the last column.
    pub(crate) fn new(expected_frames: u64, rate: u32, max_width: u32) -> Self {
        let cap = max_width.clamp(1, MAX_WIDTH) as u64;
        let hops = (expected_frames / HOP as u64).max(1);
        Self {
            rate,
            cap: cap as usize,
            hops_per_column: hops.div_ceil(cap).max(1),
            sums: Vec::new(),
            counts: Vec::new(),
            clipped: Vec::new(),
        }
    }

    /// The column of `hop`, halving the time resolution first (merging
    /// column pairs) whenever the file runs past the width cap, so memory
    /// stays bounded whatever the header claimed.
    fn column(&mut self, hop: u64) -> usize {
        while hop / self.hops_per_column >= self.cap as u64 {
            self.halve();
        }
        (hop / self.hops_per_column) as usize
    }

    fn halve(&mut self) {
        let rows = SPECTRUM_ROWS as usize;
        let pairs = |len: usize| len.div_ceil(2);
        for c in 0..pairs(self.counts.len()) {
            let (a, b) = (2 * c, 2 * c + 1);
            let count_b = self.counts.get(b).copied().unwrap_or(0);
            self.counts[c] = self.counts[a] + count_b;
            for r in 0..rows {
                let sum_b = self.sums.get(b * rows + r).copied().unwrap_or(0.0);
                self.sums[c * rows + r] = self.sums[a * rows + r] + sum_b;
            }
        }
        self.counts.truncate(pairs(self.counts.len()));
        self.sums.truncate(self.counts.len() * rows);
        for c in 0..pairs(self.clipped.len()) {
            let b = self.clipped.get(2 * c + 1).copied().unwrap_or(0);
            self.clipped[c] = self.clipped[2 * c] + b;
        }
        self.clipped.truncate(pairs(self.clipped.len()));
        self.hops_per_column *= 2;
    }

    pub(crate) fn push(&mut self, hop: u64, power: &[f32]) {
        let c = self.column(hop);
        let rows = SPECTRUM_ROWS as usize;
        if self.counts.len() <= c {
            self.counts.resize(c + 1, 0);
            self.sums.resize((c + 1) * rows, 0.0);
        }
        self.counts[c] += 1;
        for (sum, &p) in self.sums[c * rows..(c + 1) * rows].iter_mut().zip(power) {
            *sum += p;
        }
    }

    /// Marks the column holding sample `index` as clipped.
    pub(crate) fn mark_clipped(&mut self, index: u64) {
        let c = self.column(index / HOP as u64);
        if self.clipped.len() <= c {
            self.clipped.resize(c + 1, 0);
        }
        self.clipped[c] += 1;
    }

    pub(crate) fn layout(&self) -> Layout {
        let width = self.counts.len().max(self.clipped.len()).max(1) as u32;
        Layout {
            width,
            height: SPECTRUM_ROWS + STRIP_ROWS,
            hops_per_column: self.hops_per_column,
            seconds_per_column: (self.hops_per_column * HOP as u64) as f64 / f64::from(self.rate),
            hz_per_row: f64::from(self.rate) / FFT_LEN as f64,
        }
    }

    pub(crate) fn render(&self, analysis: &Analysis) -> RgbImage {
        let layout = self.layout();
        let rows = SPECTRUM_ROWS as usize;
        let mut img = RgbImage::from_pixel(layout.width, layout.height, Rgb([0, 0, 0]));
        let db = |v: f32| 10.0 * v.max(1e-20).log10();
        let top = self
            .counts
            .iter()
            .enumerate()
            .filter(|(_, n)| **n > 0)
            .flat_map(|(c, n)| {
                self.sums[c * rows..(c + 1) * rows]
                    .iter()
                    .map(move |s| db(s / *n as f32))
            })
            .fold(f32::MIN, f32::max);
        for (c, &n) in self.counts.iter().enumerate() {
            if n == 0 {
                continue;
            }
            for (bin, &sum) in self.sums[c * rows..(c + 1) * rows].iter().enumerate() {
                let t = 1.0 - (top - db(sum / n as f32)) / RANGE_DB;
                img.put_pixel(c as u32, SPECTRUM_ROWS - 1 - bin as u32, colour(t));
            }
        }
        let nyquist = f64::from(self.rate) / 2.0;
        for band in Band::ALL {
            let (lo, hi) = band.hz();
            for hz in [lo, hi]
                .map(f64::from)
                .into_iter()
                .filter(|&hz| hz < nyquist)
            {
                let y = layout.row(hz);
                for x in (0..layout.width).filter(|x| x % 6 < 2) {
                    img.put_pixel(x, y, band_colour(band));
                }
            }
        }
        for frame in &analysis.frames {
            frame_box(
                &mut img,
                &layout,
                frame.profile,
                (frame.start_s, frame.end_s),
                1,
            );
        }
        for beacon in &analysis.beacons {
            frame_box(
                &mut img,
                &layout,
                Band::Beacon.name(),
                (beacon.start_s, beacon.end_s),
                1,
            );
        }
        // Frames heard but not decoded: the same box, dashed.
        for frame in &analysis.missed {
            frame_box(
                &mut img,
                &layout,
                frame.profile,
                (frame.start_s, frame.end_s),
                4,
            );
        }
        let tick_every = match analysis.duration_s {
            d if d <= 120.0 => 1.0,
            d if d <= 1200.0 => 10.0,
            _ => 60.0,
        };
        let mut next_tick = 0.0;
        for x in 0..layout.width {
            let clipped = self.clipped.get(x as usize).is_some_and(|&n| n > 0);
            let fill = if clipped { CLIPPED } else { STRIP };
            for y in SPECTRUM_ROWS..layout.height {
                img.put_pixel(x, y, fill);
            }
            let t = f64::from(x) * layout.seconds_per_column;
            if t >= next_tick {
                for y in SPECTRUM_ROWS..SPECTRUM_ROWS + 3 {
                    img.put_pixel(x, y, TICK);
                }
                next_tick += tick_every;
            }
        }
        img
    }
}

/// The box of a frame in `band` (by name: a profile's or `beacon`) from
/// `start_s` to `end_s` over the band, in its colour: solid for `dash` 1,
/// else drawn two pixels of every `dash`. A band this build does not know
/// is skipped.
fn frame_box(
    img: &mut RgbImage,
    layout: &Layout,
    band: &str,
    (start_s, end_s): (f64, f64),
    dash: u32,
) {
    let Some(band) = Band::from_name(band) else {
        return;
    };
    let (lo, hi) = band.hz();
    let (x0, x1) = (layout.column(start_s), layout.column(end_s));
    let (y0, y1) = (layout.row(f64::from(hi)), layout.row(f64::from(lo)));
    let colour = band_colour(band);
    let drawn = |from: u32, at: u32| dash == 1 || (at - from) % dash < 2;
    for x in (x0..=x1).filter(|&x| drawn(x0, x)) {
        img.put_pixel(x, y0, colour);
        img.put_pixel(x, y1, colour);
    }
    for y in (y0..=y1).filter(|&y| drawn(y0, y)) {
        img.put_pixel(x0, y, colour);
        img.put_pixel(x1, y, colour);
    }
}

/// A dark-to-bright colour map (black, indigo, crimson, orange, pale
/// yellow, like matplotlib's "inferno"): never pure green or cyan, so the
/// frame boxes stand out.
fn colour(t: f32) -> Rgb<u8> {
    const STOPS: [[f32; 3]; 5] = [
        [0.0, 0.0, 4.0],
        [60.0, 15.0, 110.0],
        [180.0, 45.0, 80.0],
        [245.0, 140.0, 20.0],
        [252.0, 250.0, 165.0],
    ];
    let t = if t.is_finite() {
        t.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let pos = t * (STOPS.len() - 1) as f32;
    let i = (pos.floor() as usize).min(STOPS.len() - 2);
    let f = pos - i as f32;
    let mix = |k: usize| (STOPS[i][k] + (STOPS[i + 1][k] - STOPS[i][k]) * f).round() as u8;
    Rgb([mix(0), mix(1), mix(2)])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ten_minute_file_is_decimated_to_the_width_cap() {
        let rate = 48_000;
        let s = Spectrogram::new(600 * u64::from(rate), rate, MAX_WIDTH);
        let power = vec![1e-6f32; FFT_LEN / 2 + 1];
        let mut s = s;
        let hops = 600 * u64::from(rate) / HOP as u64;
        for hop in (0..hops).step_by(97) {
            s.push(hop, &power);
        }
        let layout = s.layout();
        assert!(layout.width <= MAX_WIDTH, "{layout:?}");
        assert!(layout.width > MAX_WIDTH * 9 / 10, "{layout:?}");
        assert!(s.sums.len() <= MAX_WIDTH as usize * SPECTRUM_ROWS as usize);
    }

    #[test]
    fn a_file_longer_than_its_header_said_is_decimated_further_not_grown() {
        let rate = 48_000;
        // The header claimed 10 s; the file runs for 100 s.
        let mut s = Spectrogram::new(10 * u64::from(rate), rate, 400);
        let power = vec![1e-6f32; FFT_LEN / 2 + 1];
        let hops = 100 * u64::from(rate) / HOP as u64;
        for hop in 0..hops {
            s.push(hop, &power);
        }
        s.mark_clipped(99 * u64::from(rate));
        let layout = s.layout();
        assert!(layout.width <= 400 && layout.width > 100, "{layout:?}");
        assert_eq!(s.counts.iter().map(|&n| u64::from(n)).sum::<u64>(), hops);
        let last_second = layout.column(99.0) as usize;
        assert!(
            s.clipped.get(last_second).is_some_and(|&n| n == 1),
            "{layout:?}"
        );
    }

    #[test]
    fn colour_map_never_draws_a_band_colour() {
        for i in 0..=1000 {
            let c = colour(i as f32 / 1000.0);
            for b in Band::ALL {
                assert_ne!(c, band_colour(b));
            }
        }
    }
}
