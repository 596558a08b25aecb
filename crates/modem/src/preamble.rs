//! Preamble: a linear chirp across the profile's band (rising; falling for
//! the robust profile's format 2), and its matched filter.
//!
//! The detector correlates the analytic (positive-frequency, band-limited)
//! input with the analytic chirp by FFT (overlap-save) and normalises by the
//! in-band energy under the template, so the score is in 0..=1 regardless of
//! gain and of noise outside the band: about 1 for a clean chirp, about
//! 1/sqrt(time-bandwidth product) for noise.

use std::sync::Arc;

use rustfft::num_complex::Complex32;
use rustfft::{Fft, FftPlanner};

use super::profile::{INTERNAL_RATE, Params};

/// Fraction of the chirp tapered (raised cosine) at each end.
const TAPER: f32 = 0.05;
/// Extra band kept around the chirp when normalising, Hz.
const BAND_MARGIN: f32 = 300.0;

/// The profile's preamble chirp, peak amplitude 1.
pub(crate) fn chirp(p: &Params) -> Vec<f32> {
    // In double precision: at the chirp's end the phase is ~4000 rad, where
    // f32 keeps only ~3e-4 rad, and an encoder in another language could
    // round differently (docs/modem.md §2b's test vector is exact).
    let n = p.chirp_len;
    let rate = f64::from(INTERNAL_RATE);
    let duration = n as f64 / rate;
    let (f0, f1) = (f64::from(p.chirp_f0), f64::from(p.chirp_f1));
    let sweep = (f1 - f0) / duration;
    let taper = ((n as f32 * TAPER) as usize).max(1);
    (0..n)
        .map(|i| {
            let t = i as f64 / rate;
            let phase = 2.0 * std::f64::consts::PI * (f0 * t + 0.5 * sweep * t * t);
            let edge = i.min(n - 1 - i);
            let w = if edge < taper {
                0.5 - 0.5 * (std::f32::consts::PI * (edge as f32 + 0.5) / taper as f32).cos()
            } else {
                1.0
            };
            phase.sin() as f32 * w
        })
        .collect()
}

/// Matched filter for one chirp, evaluated block by block.
#[derive(Clone)]
pub(crate) struct Correlator {
    len: usize,
    size: usize,
    forward: Arc<dyn Fft<f32>>,
    inverse: Arc<dyn Fft<f32>>,
    /// conj(analytic template spectrum) / size.
    template: Vec<Complex32>,
    /// Analytic band mask (2 inside the band on positive frequencies, else 0).
    mask: Vec<f32>,
    /// Energy of the analytic template.
    template_energy: f64,
}

impl std::fmt::Debug for Correlator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Correlator")
            .field("len", &self.len)
            .field("size", &self.size)
            .finish()
    }
}

impl Correlator {
    /// A correlator for `template` occupying `band` Hz, using FFT blocks of
    /// `size` samples (at least twice the template).
    pub fn new(template: &[f32], band: (f32, f32), size: usize) -> Correlator {
        let len = template.len();
        let size = size.max(2 * len).next_power_of_two();
        let mut planner = FftPlanner::<f32>::new();
        let forward = planner.plan_fft_forward(size);
        let inverse = planner.plan_fft_inverse(size);
        let bin_hz = INTERNAL_RATE as f32 / size as f32;
        let lo = ((band.0 - BAND_MARGIN) / bin_hz).floor().max(1.0) as usize;
        let hi = (((band.1 + BAND_MARGIN) / bin_hz).ceil() as usize).min(size / 2 - 1);
        let mut mask = vec![0f32; size];
        for m in mask.iter_mut().take(hi + 1).skip(lo) {
            *m = 2.0;
        }
        let mut spec: Vec<Complex32> = template
            .iter()
            .map(|&v| Complex32::new(v, 0.0))
            .chain(std::iter::repeat(Complex32::new(0.0, 0.0)))
            .take(size)
            .collect();
        forward.process(&mut spec);
        let mut template_energy = 0f64;
        let inv_size = 1.0 / size as f32;
        let template = spec
            .iter()
            .zip(&mask)
            .map(|(v, &m)| {
                let a = v * m;
                template_energy += a.norm_sqr() as f64 / size as f64;
                a.conj() * inv_size
            })
            .collect();
        Correlator {
            len,
            size,
            forward,
            inverse,
            template,
            mask,
            template_energy,
        }
    }

    /// Input samples each call to [`Correlator::scores`] consumes.
    pub fn block(&self) -> usize {
        self.size
    }

    /// Lags each block yields (the block advances by this much).
    pub fn hop(&self) -> usize {
        self.size - self.len + 1
    }

    /// Normalised correlation scores for lags 0..hop of a `block()`-sample
    /// input; lag t means the chirp starts at input sample t.
    pub fn scores(&self, input: &[f32]) -> Vec<f32> {
        let hop = self.hop();
        if input.len() < self.size {
            return vec![0.0; hop];
        }
        // Digital silence (a muted microphone, the padding that flushes a
        // stream's end) scores exactly zero: skip its three FFTs.
        if super::silence::is_silent(&input[..self.size]) {
            return vec![0.0; hop];
        }
        let mut spec: Vec<Complex32> = input[..self.size]
            .iter()
            .map(|&v| Complex32::new(if v.is_finite() { v } else { 0.0 }, 0.0))
            .collect();
        self.forward.process(&mut spec);
        let inv_size = 1.0 / self.size as f32;
        // The input's spectrum becomes the analytic signal's in place.
        let mut corr = Vec::with_capacity(self.size);
        for ((v, &m), t) in spec.iter_mut().zip(&self.mask).zip(&self.template) {
            *v *= m * inv_size;
            corr.push(*v * t * self.size as f32);
        }
        let mut analytic = spec;
        self.inverse.process(&mut analytic);
        self.inverse.process(&mut corr);
        // Sliding in-band energy under the template, via prefix sums.
        let mut prefix = Vec::with_capacity(self.size + 1);
        prefix.push(0f64);
        let mut acc = 0f64;
        for a in &analytic {
            acc += a.norm_sqr() as f64;
            prefix.push(acc);
        }
        (0..hop)
            .map(|t| {
                let energy = (prefix[t + self.len] - prefix[t]).max(0.0);
                let denom = (energy * self.template_energy).sqrt();
                if denom > 1e-12 {
                    ((corr[t].norm() as f64) / denom).min(1.0) as f32
                } else {
                    0.0
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::Format;
    use crate::sim::{NoiseKind, noise};
    use rand::SeedableRng;
    use rand_pcg::Pcg64Mcg;

    /// Unit-power white Gaussian noise.
    fn white(len: usize, seed: u64) -> Vec<f32> {
        noise::generate(
            NoiseKind::White,
            len,
            48_000,
            &mut Pcg64Mcg::seed_from_u64(seed),
        )
    }

    #[test]
    fn chirp_stays_in_band() {
        use realfft::RealFftPlanner;
        for profile in Format::ALL {
            let p = profile.params();
            let c = chirp(&p);
            assert_eq!(c.len(), p.chirp_len);
            assert!(c.iter().all(|v| v.abs() <= 1.0));
            let mut x = c.clone();
            let fft = RealFftPlanner::<f32>::new().plan_fft_forward(x.len());
            let mut spec = fft.make_output_vec();
            fft.process(&mut x, &mut spec).expect("fft");
            let hz = INTERNAL_RATE as f32 / p.chirp_len as f32;
            let (mut inside, mut outside) = (0f32, 0f32);
            for (k, v) in spec.iter().enumerate() {
                let f = k as f32 * hz;
                if f >= p.chirp_band().0 - 500.0 && f <= p.chirp_band().1 + 500.0 {
                    inside += v.norm_sqr();
                } else {
                    outside += v.norm_sqr();
                }
            }
            assert!(outside < 1e-3 * inside, "{profile:?}: {}", outside / inside);
        }
    }

    #[test]
    fn finds_a_buried_chirp_at_the_right_lag_with_any_gain() {
        let p = Format::FastV2.params();
        let c = chirp(&p);
        let corr = Correlator::new(&c, p.chirp_band(), 8192);
        let mut x: Vec<f32> = white(8192, 7).iter().map(|v| 0.3 * v).collect();
        let at = 1234;
        for (i, v) in c.iter().enumerate() {
            x[at + i] += 0.05 * v;
        }
        let s = corr.scores(&x);
        let (best, peak) = s
            .iter()
            .enumerate()
            .fold((0, 0f32), |b, (i, &v)| if v > b.1 { (i, v) } else { b });
        assert!(best.abs_diff(at) <= 3, "{best} vs {at}");
        assert!(peak > p.threshold, "peak {peak}");
        // Scaling the input changes nothing.
        let loud: Vec<f32> = x.iter().map(|v| v * 1000.0).collect();
        let s2 = corr.scores(&loud);
        assert!((s2[at] - s[at]).abs() < 1e-3);
    }

    #[test]
    fn noise_and_silence_stay_below_threshold() {
        for profile in Format::ALL {
            let p = profile.params();
            let corr = Correlator::new(&chirp(&p), p.chirp_band(), 4 * p.chirp_len);
            let x = white(corr.block(), 11);
            let max = corr.scores(&x).into_iter().fold(0.0, f32::max);
            assert!(max < p.threshold * 0.8, "{profile:?}: {max}");
            let silent = vec![0f32; corr.block()];
            assert!(corr.scores(&silent).iter().all(|&v| v == 0.0));
            let short = corr.scores(&[1.0, f32::NAN]);
            assert!(short.iter().all(|&v| v == 0.0));
        }
    }

    #[test]
    fn a_chirp_in_a_blocks_last_samples_after_silence_is_found() {
        for profile in Format::ALL {
            let p = profile.params();
            let c = chirp(&p);
            let corr = Correlator::new(&c, p.chirp_band(), 4 * p.chirp_len);
            // Silence, then the chirp ending on the block's last sample: the
            // last lag the block yields.
            let mut x = vec![0f32; corr.block()];
            let at = corr.hop() - 1;
            x[at..].copy_from_slice(&c);
            let s = corr.scores(&x);
            assert!(s[at] > 0.9, "{profile:?}: {}", s[at]);
        }
    }

    #[test]
    fn the_robust_formats_rising_and_falling_chirps_do_not_trigger_each_other() {
        let (v1, v2) = (Format::RobustV1.params(), Format::RobustV2.params());
        for (listen, sent) in [(v1, v2), (v2, v1)] {
            let corr = Correlator::new(&chirp(&listen), listen.chirp_band(), 4 * listen.chirp_len);
            let mut x = vec![0f32; corr.block()];
            for (o, c) in x[1000..].iter_mut().zip(chirp(&sent)) {
                *o += c;
            }
            let max = corr.scores(&x).into_iter().fold(0.0, f32::max);
            // About 0.11 either way, against a threshold of 0.15: a
            // candidate from the other format's chirp would cost a header
            // decode, no more.
            assert!(max < listen.threshold, "cross-correlation {max}");
        }
    }

    /// The peak picker's rule read score by score, as it was before it
    /// skipped stretches below the threshold while holding nothing.
    fn feed_one_by_one(
        best: &mut Option<Peak>,
        first: u64,
        scores: &[f32],
        threshold: f32,
        len: u64,
    ) -> Vec<(f64, f32)> {
        let mut settled = Vec::new();
        for (i, &s) in scores.iter().enumerate() {
            let at = first + i as u64;
            if let Some(b) = best.as_mut()
                && b.next.is_none()
                && at == b.at + 1
            {
                b.next = Some(s);
            }
            if s >= threshold && best.is_none_or(|b| s > b.score) {
                let prev = if i > 0 { scores[i - 1] } else { s };
                *best = Some(Peak {
                    at,
                    score: s,
                    prev,
                    next: None,
                });
            }
            if let Some(b) = *best
                && at >= b.at + len
            {
                *best = None;
                let next = b.next.unwrap_or(b.score);
                let frac = crate::decoder::parabolic_offset(b.prev, b.score, next);
                settled.push((b.at as f64 + f64::from(frac), b.score));
            }
        }
        settled
    }

    #[test]
    fn the_peak_picker_settles_what_a_score_by_score_reading_settles() {
        use rand::RngExt;
        let mut rng = Pcg64Mcg::seed_from_u64(21);
        for round in 0..300 {
            let scores: Vec<f32> = (0..rng.random_range(1..3_000))
                .map(|_| match rng.random_range(0..100) {
                    0..3 => rng.random_range(0.15..1.0),
                    3 => f32::NAN,
                    _ => rng.random_range(0.0..0.2),
                })
                .collect();
            let len = rng.random_range(1..400);
            // Fed in blocks of any size, as the detectors feed it.
            let (mut picker, mut held) = (PeakPicker::default(), None);
            let (mut got, mut want) = (Vec::new(), Vec::new());
            let mut at = 0;
            while at < scores.len() {
                let block = &scores[at..(at + rng.random_range(1..800)).min(scores.len())];
                got.extend(picker.feed(at as u64, block, 0.15, len));
                want.extend(feed_one_by_one(&mut held, at as u64, block, 0.15, len));
                at += block.len();
            }
            assert_eq!(got, want, "round {round}");
            assert_eq!(picker.held_at(), held.map(|p| p.at), "round {round}");
        }
    }
}

/// The strongest correlation score at or above a threshold within one chirp
/// length, kept with its neighbours for sub-sample interpolation: how the
/// payment formats' detectors and the beacon's pick a chirp's start.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct PeakPicker {
    best: Option<Peak>,
}

#[derive(Debug, Clone, Copy)]
struct Peak {
    at: u64,
    score: f32,
    prev: f32,
    next: Option<f32>,
}

impl PeakPicker {
    /// Forgets the peak held (its samples are gone).
    pub(crate) fn reset(&mut self) {
        self.best = None;
    }

    /// Where the peak held so far is, if one is: its samples must be kept.
    pub(crate) fn held_at(&self) -> Option<u64> {
        self.best.map(|b| b.at)
    }

    /// Takes the scores of one block, the first at absolute position
    /// `first`; returns each peak settled by them (no higher score within
    /// `len` after it): its fractional start and its score.
    pub(crate) fn feed(
        &mut self,
        first: u64,
        scores: &[f32],
        threshold: f32,
        len: u64,
    ) -> Vec<(f64, f32)> {
        let mut settled = Vec::new();
        let mut i = 0;
        while i < scores.len() {
            if self.best.is_none() {
                // Nothing held: only a score at or above the threshold
                // matters (most blocks have none).
                match super::silence::first_at_least(&scores[i..], threshold) {
                    Some(skip) => i += skip,
                    None => break,
                }
            }
            let s = scores[i];
            let at = first + i as u64;
            if let Some(best) = self.best.as_mut()
                && best.next.is_none()
                && at == best.at + 1
            {
                best.next = Some(s);
            }
            if s >= threshold && self.best.is_none_or(|b| s > b.score) {
                let prev = if i > 0 { scores[i - 1] } else { s };
                self.best = Some(Peak {
                    at,
                    score: s,
                    prev,
                    next: None,
                });
            }
            if let Some(best) = self.best
                && at >= best.at + len
            {
                self.best = None;
                let next = best.next.unwrap_or(best.score);
                let frac = super::decoder::parabolic_offset(best.prev, best.score, next);
                settled.push((best.at as f64 + f64::from(frac), best.score));
            }
            i += 1;
        }
        settled
    }
}
