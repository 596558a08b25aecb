//! Multicarrier symbols: synthesis (inverse FFT, cyclic prefix, raised-cosine
//! cross-fade) and analysis (FFT at a fractional position).
//!
//! A symbol is `cp + fft` samples: the last `cp` samples of the inverse FFT
//! repeated in front. Each symbol is rendered `ramp` samples longer (a cyclic
//! suffix) and faded in and out over `ramp` samples; consecutive symbols
//! overlap by `ramp` samples inside the next prefix, so there are no clicks
//! and the receiver's FFT window (which starts `backoff` samples before the
//! end of the prefix, with `ramp + backoff <= cp`) sees an unwindowed symbol.

use std::sync::Arc;

use realfft::num_complex::Complex32;
use realfft::{ComplexToReal, RealFftPlanner, RealToComplex};

/// Synthesis and analysis for one symbol shape.
#[derive(Clone)]
pub(crate) struct Ofdm {
    fft: usize,
    cp: usize,
    ramp: usize,
    inverse: Arc<dyn ComplexToReal<f32>>,
    forward: Arc<dyn RealToComplex<f32>>,
}

impl std::fmt::Debug for Ofdm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ofdm")
            .field("fft", &self.fft)
            .field("cp", &self.cp)
            .field("ramp", &self.ramp)
            .finish()
    }
}

/// Raised-cosine fade-in weight of sample `i` of `len`.
fn fade_in(i: usize, len: usize) -> f32 {
    0.5 - 0.5 * (std::f32::consts::PI * (i as f32 + 0.5) / len as f32).cos()
}

impl Ofdm {
    /// Plans the FFTs for symbols of `fft` samples with a `cp`-sample prefix.
    pub fn new(fft: usize, cp: usize, ramp: usize) -> Ofdm {
        let mut planner = RealFftPlanner::<f32>::new();
        Ofdm {
            fft,
            cp,
            ramp: ramp.min(cp),
            inverse: planner.plan_fft_inverse(fft),
            forward: planner.plan_fft_forward(fft),
        }
    }

    /// Samples a symbol advances the signal by.
    pub fn symbol_len(&self) -> usize {
        self.fft + self.cp
    }

    /// Renders one symbol from its spectrum (`fft / 2 + 1` bins; bins not
    /// given are zero). Returns `cp + fft + ramp` samples, faded at both ends,
    /// to be overlap-added at multiples of [`Ofdm::symbol_len`]. The scale is
    /// such that a bin of magnitude 1 gives a sinusoid of amplitude 2 / fft.
    pub fn synthesize(&self, bins: &[(usize, Complex32)]) -> Vec<f32> {
        let mut spectrum = vec![Complex32::new(0.0, 0.0); self.fft / 2 + 1];
        for &(k, v) in bins {
            // DC and Nyquist must be real for a real signal; never used.
            if k > 0 && k < self.fft / 2 {
                spectrum[k] = v;
            }
        }
        let mut time = vec![0f32; self.fft];
        if self.inverse.process(&mut spectrum, &mut time).is_err() {
            return vec![0.0; self.cp + self.fft + self.ramp];
        }
        let scale = 1.0 / self.fft as f32;
        let total = self.cp + self.fft + self.ramp;
        (0..total)
            .map(|i| {
                let t = (i + self.fft - self.cp) % self.fft;
                let mut w = 1.0;
                if i < self.ramp {
                    w = fade_in(i, self.ramp);
                } else if i >= self.cp + self.fft {
                    w = 1.0 - fade_in(i - self.cp - self.fft, self.ramp);
                }
                time[t] * scale * w
            })
            .collect()
    }

    /// Spectrum of the `fft` samples starting at fractional position `start`
    /// of `signal`, with the fractional part compensated by a phase ramp.
    /// Returns None if the window does not lie inside the signal.
    pub fn analyze(&self, signal: &[f32], start: f64) -> Option<Vec<Complex32>> {
        if !start.is_finite() || start < 0.0 {
            return None;
        }
        let base = start.floor();
        let frac = (start - base) as f32;
        let base = base as usize;
        let window = signal.get(base..base.checked_add(self.fft)?)?;
        let mut spectrum = vec![Complex32::new(0.0, 0.0); self.fft / 2 + 1];
        // Digital silence (the padding past a stream's end) has an all-zero
        // spectrum: skip its FFT.
        if super::silence::is_silent(window) {
            return Some(spectrum);
        }
        let mut input = window.to_vec();
        self.forward.process(&mut input, &mut spectrum).ok()?;
        if frac != 0.0 {
            let step = 2.0 * std::f32::consts::PI * frac / self.fft as f32;
            for (k, v) in spectrum.iter_mut().enumerate() {
                *v *= Complex32::from_polar(1.0, step * k as f32);
            }
        }
        Some(spectrum)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(ofdm: &Ofdm, symbols: &[Vec<(usize, Complex32)>]) -> Vec<f32> {
        let mut out = vec![0f32; symbols.len() * ofdm.symbol_len() + ofdm.ramp];
        for (m, s) in symbols.iter().enumerate() {
            for (i, v) in ofdm.synthesize(s).into_iter().enumerate() {
                out[m * ofdm.symbol_len() + i] += v;
            }
        }
        out
    }

    #[test]
    fn analysis_recovers_each_symbol_inside_the_prefix_margin() {
        let ofdm = Ofdm::new(256, 64, 16);
        let symbols: Vec<Vec<(usize, Complex32)>> = (0..4)
            .map(|m| {
                (20..40)
                    .map(|k| (k, Complex32::from_polar(1.0, (k * 7 + m * 3) as f32)))
                    .collect()
            })
            .collect();
        let signal = render(&ofdm, &symbols);
        for (m, s) in symbols.iter().enumerate() {
            // Any window start between the end of the fade and the end of
            // the prefix sees the symbol undisturbed (up to a phase ramp).
            for offset in [16.0, 40.0, 63.5, 64.0] {
                let start = (m * ofdm.symbol_len()) as f64 + offset;
                let spec = ofdm.analyze(&signal, start).expect("inside");
                for &(k, v) in s {
                    let lead = 64.0 - offset as f32;
                    let expect = v * Complex32::from_polar(
                        1.0,
                        -2.0 * std::f32::consts::PI * k as f32 * lead / 256.0,
                    );
                    assert!(
                        (spec[k] - expect).norm() < 1e-3,
                        "m {m} k {k} offset {offset}"
                    );
                }
                assert!(spec[60].norm() < 1e-3);
            }
        }
    }

    #[test]
    fn silence_has_a_zero_spectrum_and_one_sample_is_not_silence() {
        let ofdm = Ofdm::new(64, 16, 4);
        let mut signal = vec![0f32; 100];
        let spec = ofdm.analyze(&signal, 10.5).expect("inside");
        assert_eq!(spec.len(), 33);
        assert!(spec.iter().all(|v| v.norm() == 0.0));
        // The window's last sample alone: a flat spectrum of its height.
        signal[73] = 0.5;
        let spec = ofdm.analyze(&signal, 10.0).expect("inside");
        assert!(spec.iter().all(|v| (v.norm() - 0.5).abs() < 1e-5));
    }

    #[test]
    fn windows_outside_the_signal_are_refused() {
        let ofdm = Ofdm::new(64, 16, 4);
        let signal = vec![0f32; 100];
        assert!(ofdm.analyze(&signal, 40.0).is_none());
        assert!(ofdm.analyze(&signal, -1.0).is_none());
        assert!(ofdm.analyze(&signal, f64::NAN).is_none());
        assert!(ofdm.analyze(&signal, 36.0).is_some());
    }

    #[test]
    fn cross_fade_keeps_the_envelope_smooth() {
        let ofdm = Ofdm::new(256, 64, 16);
        let sym: Vec<(usize, Complex32)> = vec![(32, Complex32::new(128.0, 0.0))];
        let signal = render(&ofdm, &[sym.clone(), sym.clone(), sym]);
        // A single steady tone: the joined signal has no jumps beyond the
        // tone's own slope.
        let max_step = signal
            .windows(2)
            .map(|w| (w[1] - w[0]).abs())
            .fold(0.0, f32::max);
        assert!(max_step < 0.9 * 2.0 * std::f32::consts::PI * 32.0 / 256.0 + 0.05);
    }
}
