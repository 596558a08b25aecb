//! Streaming sample-rate conversion by band-limited (windowed-sinc)
//! interpolation, for any pair of rates: 44.1 kHz capture to the internal
//! 48 kHz, 48 kHz to 44.1 kHz on the sending side, and (in tests) a small
//! clock offset.
//!
//! The kernel is a Blackman-windowed sinc, 32 zero crossings either side,
//! cut off at 95% of the lower Nyquist frequency, tabulated at 256 phases
//! and linearly interpolated between phases.

use std::sync::Arc;

/// Zero crossings of the sinc on each side of the centre.
const ZERO_CROSSINGS: usize = 32;
/// Tabulated kernel phases per input sample.
const PHASES: usize = 256;
/// Cut-off as a fraction of the lower of the two Nyquist frequencies.
const CUTOFF: f64 = 0.95;

/// A tabulated interpolation kernel, shareable between resamplers with
/// (nearly) the same cut-off.
#[derive(Debug)]
pub struct Kernel {
    /// Kernel half-width in input samples.
    half: usize,
    taps: usize,
    /// table[phase * taps + j]: weight of input sample (base - half + 1 + j)
    /// for an output at fractional position phase / PHASES after base.
    table: Vec<f32>,
}

impl Kernel {
    /// A Blackman-windowed sinc with `zero_crossings` either side and cut-off
    /// `fc` in cycles per input sample (0.5 = input Nyquist).
    pub fn new(fc: f64, zero_crossings: usize) -> Kernel {
        let fc = if fc.is_finite() {
            fc.clamp(0.01, 0.5)
        } else {
            0.5
        };
        let half = ((zero_crossings.max(1) as f64) / (2.0 * fc)).ceil() as usize;
        let taps = 2 * half;
        let mut table = vec![0f32; (PHASES + 1) * taps];
        for phase in 0..=PHASES {
            let frac = phase as f64 / PHASES as f64;
            let mut sum = 0.0;
            let row = &mut table[phase * taps..(phase + 1) * taps];
            for (j, w) in row.iter_mut().enumerate() {
                // Distance from the output point to input sample.
                let t = (j as f64 - (half as f64 - 1.0)) - frac;
                let x = 2.0 * fc * t;
                let sinc = if x.abs() < 1e-12 {
                    1.0
                } else {
                    (std::f64::consts::PI * x).sin() / (std::f64::consts::PI * x)
                };
                let u = (t / half as f64 + 1.0) / 2.0; // 0..1 across the window
                let window = if (0.0..=1.0).contains(&u) {
                    0.42 - 0.5 * (2.0 * std::f64::consts::PI * u).cos()
                        + 0.08 * (4.0 * std::f64::consts::PI * u).cos()
                } else {
                    0.0
                };
                let v = 2.0 * fc * sinc * window;
                *w = v as f32;
                sum += v;
            }
            // Unity gain at DC for every phase.
            if sum.abs() > 1e-9 {
                for w in row.iter_mut() {
                    *w = (*w as f64 / sum) as f32;
                }
            }
        }
        Kernel { half, taps, table }
    }

    /// The standard kernel for converting `from` Hz to `to` Hz.
    pub fn for_rates(from: f64, to: f64) -> Kernel {
        Kernel::new(0.5 * CUTOFF * (to / from).min(1.0), ZERO_CROSSINGS)
    }
}

/// A streaming resampler from `from` Hz to `to` Hz.
#[derive(Debug, Clone)]
pub struct Resampler {
    /// Input samples per output sample.
    step: f64,
    kernel: Arc<Kernel>,
    /// Buffered input; history[0] is input sample number `history_start`.
    history: Vec<f32>,
    history_start: u64,
    /// Index of the next output sample.
    next_out: u64,
    /// Input index just past the last non-zero sample seen (0: none yet):
    /// an output whose taps all lie at or past it is exactly zero, so the
    /// silence that flushes a stream or pads a segment costs no taps.
    signal_end: u64,
    /// Identity conversion: samples pass straight through.
    passthrough: bool,
}

impl Resampler {
    /// A resampler from `from` Hz to `to` Hz (both must be positive and
    /// finite; anything else falls back to a pass-through).
    pub fn new(from: f64, to: f64) -> Resampler {
        let valid = from.is_finite() && to.is_finite() && from > 0.0 && to > 0.0;
        let passthrough = !valid || (from - to).abs() < 1e-9;
        let kernel = if passthrough {
            Kernel {
                half: 0,
                taps: 0,
                table: Vec::new(),
            }
        } else {
            Kernel::for_rates(from, to)
        };
        Resampler::with_kernel(Arc::new(kernel), from, to)
    }

    /// A resampler using a prepared kernel (cheap to build: for converting
    /// many short stretches by slightly different ratios).
    pub fn with_kernel(kernel: Arc<Kernel>, from: f64, to: f64) -> Resampler {
        let valid = from.is_finite() && to.is_finite() && from > 0.0 && to > 0.0;
        let passthrough = !valid || (from - to).abs() < 1e-12 || kernel.taps == 0;
        Resampler {
            step: if valid { from / to } else { 1.0 },
            kernel,
            history: Vec::new(),
            history_start: 0,
            next_out: 0,
            signal_end: 0,
            passthrough,
        }
    }

    /// Feeds input samples; returns every output sample now computable.
    pub fn process(&mut self, input: &[f32]) -> Vec<f32> {
        if self.passthrough {
            return input.to_vec();
        }
        let heard = super::silence::signal_end(input);
        if heard > 0 {
            self.signal_end = self.history_start + (self.history.len() + heard) as u64;
        }
        self.history.extend_from_slice(input);
        let available_end = self.history_start + self.history.len() as u64;
        let mut out = Vec::with_capacity((input.len() as f64 / self.step) as usize + 2);
        let half = self.kernel.half;
        let taps = self.kernel.taps;
        let table = &self.kernel.table;
        loop {
            // Positions are never negative, so truncation is the floor
            // (and, unlike f64::floor, needs no call on baseline x86-64).
            let pos = self.next_out as f64 * self.step;
            let base = pos as u64;
            // Need input samples up to base + half.
            if base + half as u64 >= available_end {
                break;
            }
            if (base + 1).saturating_sub(half as u64) >= self.signal_end {
                out.push(0.0);
                self.next_out += 1;
                continue;
            }
            let frac = pos - base as f64;
            let ph = frac * PHASES as f64;
            let p0 = (ph as usize).min(PHASES - 1);
            let mix = (ph - p0 as f64) as f32;
            let row0 = &table[p0 * taps..(p0 + 1) * taps];
            let row1 = &table[(p0 + 1) * taps..(p0 + 2) * taps];
            let first = base as i64 - half as i64 + 1 - self.history_start as i64;
            let acc = if first >= 0 {
                // Common case: every tap has input.
                let xs = &self.history[first as usize..first as usize + taps];
                let mut sums = [0f32; 4];
                let (mut cx, mut c0, mut c1) = (
                    xs.chunks_exact(4),
                    row0.chunks_exact(4),
                    row1.chunks_exact(4),
                );
                for ((x, a), b) in (&mut cx).zip(&mut c0).zip(&mut c1) {
                    for lane in 0..4 {
                        sums[lane] += x[lane] * (a[lane] + mix * (b[lane] - a[lane]));
                    }
                }
                let rest: f32 = cx
                    .remainder()
                    .iter()
                    .zip(c0.remainder())
                    .zip(c1.remainder())
                    .map(|((x, a), b)| x * (a + mix * (b - a)))
                    .sum();
                sums.iter().sum::<f32>() + rest
            } else {
                // Start of the stream: samples before it are silence.
                let mut acc = 0f32;
                for j in 0..taps {
                    let idx = first + j as i64;
                    if idx >= 0
                        && let Some(&x) = self.history.get(idx as usize)
                    {
                        acc += x * (row0[j] + mix * (row1[j] - row0[j]));
                    }
                }
                acc
            };
            out.push(acc);
            self.next_out += 1;
        }
        // Drop input no future output needs.
        let next_base = (self.next_out as f64 * self.step) as u64;
        let keep_from = next_base.saturating_sub(half as u64);
        if keep_from > self.history_start {
            let drop = ((keep_from - self.history_start) as usize).min(self.history.len());
            self.history.drain(..drop);
            self.history_start += drop as u64;
        }
        out
    }

    /// Flushes the kernel's look-ahead with silence and returns the rest of
    /// the output (for one-shot conversions).
    pub fn finish(&mut self) -> Vec<f32> {
        if self.passthrough {
            return Vec::new();
        }
        let pad = vec![0f32; self.kernel.half + 1];
        self.process(&pad)
    }
}

/// Converts a whole signal from `from` Hz to `to` Hz.
pub fn resample(input: &[f32], from: f64, to: f64) -> Vec<f32> {
    let mut r = Resampler::new(from, to);
    let mut out = r.process(input);
    out.extend(r.finish());
    let expected = (input.len() as f64 * to / from).round() as usize;
    out.truncate(expected.max(if from == to { input.len() } else { 0 }));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(freq: f64, rate: f64, len: usize) -> Vec<f32> {
        (0..len)
            .map(|i| (2.0 * std::f64::consts::PI * freq * i as f64 / rate).sin() as f32)
            .collect()
    }

    fn max_error_vs_tone(out: &[f32], freq: f64, rate: f64, skip: usize) -> f32 {
        let want = tone(freq, rate, out.len());
        out.iter()
            .zip(&want)
            .skip(skip)
            .take(out.len().saturating_sub(2 * skip))
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max)
    }

    #[test]
    fn converts_44k1_to_48k_and_back_accurately_in_band() {
        for freq in [1_000.0, 15_000.0, 19_000.0] {
            let x = tone(freq, 44_100.0, 8_820);
            let y = resample(&x, 44_100.0, 48_000.0);
            assert_eq!(y.len(), 9_600);
            let err = max_error_vs_tone(&y, freq, 48_000.0, 200);
            assert!(err < 0.02, "{freq} Hz up: error {err}");
            let z = resample(&y, 48_000.0, 44_100.0);
            let err = max_error_vs_tone(&z, freq, 44_100.0, 200);
            assert!(err < 0.03, "{freq} Hz down: error {err}");
        }
    }

    #[test]
    fn streaming_in_odd_chunks_equals_one_shot() {
        let x = tone(3_000.0, 44_100.0, 5_000);
        let mut a = Resampler::new(44_100.0, 48_000.0);
        let whole = a.process(&x);
        let mut b = Resampler::new(44_100.0, 48_000.0);
        let mut parts = Vec::new();
        for chunk in x.chunks(37) {
            parts.extend(b.process(chunk));
        }
        parts.extend(b.process(&[]));
        assert_eq!(whole.len(), parts.len());
        for (p, q) in whole.iter().zip(&parts) {
            assert!((p - q).abs() < 1e-6);
        }
    }

    #[test]
    fn downsampling_rejects_what_the_new_rate_cannot_hold() {
        // 30 kHz at 96 kHz cannot exist at 48 kHz: it must be filtered out.
        let x = tone(30_000.0, 96_000.0, 9_600);
        let y = resample(&x, 96_000.0, 48_000.0);
        let rms = (y[100..4_700].iter().map(|v| v * v).sum::<f32>() / 4_600.0).sqrt();
        assert!(rms < 0.01, "alias rms {rms}");
    }

    #[test]
    fn silence_after_the_signal_skips_its_taps_and_changes_nothing() {
        // A tone ending in an impulse, then silence: every output equals the
        // full sum over its taps, and those whose taps all lie past the
        // impulse are exactly zero.
        let mut x = tone(3_000.0, 44_100.0, 300);
        x.push(1.0);
        x.extend(vec![0.0; 400]);
        let mut r = Resampler::new(44_100.0, 48_000.0);
        let out = r.process(&x);
        let k = Arc::clone(&r.kernel);
        let weight = |p0: usize, mix: f32, j: usize| {
            let a = k.table[p0 * k.taps + j];
            a + mix * (k.table[(p0 + 1) * k.taps + j] - a)
        };
        for (n, &y) in out.iter().enumerate() {
            let pos = n as f64 * r.step;
            let base = pos as usize;
            let ph = (pos - base as f64) * PHASES as f64;
            let p0 = (ph as usize).min(PHASES - 1);
            let mix = (ph - p0 as f64) as f32;
            let want: f32 = (0..k.taps)
                .filter_map(|j| {
                    let idx = (base + 1 + j).checked_sub(k.half)?;
                    x.get(idx).map(|&v| v * weight(p0, mix, j))
                })
                .sum();
            assert!((y - want).abs() < 1e-5, "output {n}: {y} against {want}");
        }
        let reach = ((301 + k.half) as f64 / r.step).ceil() as usize;
        assert!(out.len() > reach + 10, "{} outputs", out.len());
        assert!(out[reach - 2] != 0.0 && out[reach..].iter().all(|&v| v == 0.0));
    }

    #[test]
    fn identity_and_invalid_rates_pass_through() {
        let x = vec![0.5f32, -0.25, 1.0];
        assert_eq!(resample(&x, 48_000.0, 48_000.0), x);
        assert_eq!(Resampler::new(0.0, 48_000.0).process(&x), x);
        assert_eq!(Resampler::new(f64::NAN, 48_000.0).process(&x), x);
    }

    #[test]
    fn a_long_stream_keeps_its_history_short() {
        let mut r = Resampler::new(44_100.0, 48_000.0);
        let chunk = vec![0.1f32; 4_410];
        for _ in 0..50 {
            r.process(&chunk);
        }
        assert!(r.history.len() < 200, "history {}", r.history.len());
    }
}
