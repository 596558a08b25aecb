//! Streaming short-time Fourier transform: Hann window, fixed hop, power per
//! bin scaled so that the bins of one frame sum to the mean square of the
//! audio under the window (Parseval), which makes band sums directly
//! comparable to RMS levels in dBFS.

use std::sync::Arc;

use realfft::num_complex::Complex;
use realfft::{RealFftPlanner, RealToComplex};

/// FFT length: 1024 points (21 ms, 47 Hz bins at 48 kHz): fine enough to see
/// a 43 ms chirp and to separate the two profiles' bands.
pub const FFT_LEN: usize = 1024;
/// Hop between frames: half the window.
pub const HOP: usize = FFT_LEN / 2;

/// Cuts a stream into windowed frames and hands out their power spectra.
pub(crate) struct Stft {
    fft: Arc<dyn RealToComplex<f32>>,
    window: Vec<f32>,
    /// Per-bin factor turning |X|² into a share of the mean square.
    scale: Vec<f32>,
    pending: Vec<f32>,
    input: Vec<f32>,
    output: Vec<Complex<f32>>,
    scratch: Vec<Complex<f32>>,
    power: Vec<f32>,
    next_hop: u64,
}

impl Stft {
    pub(crate) fn new() -> Self {
        let fft = RealFftPlanner::<f32>::new().plan_fft_forward(FFT_LEN);
        let window: Vec<f32> = (0..FFT_LEN)
            .map(|i| {
                let x = std::f32::consts::PI * 2.0 * i as f32 / FFT_LEN as f32;
                0.5 - 0.5 * x.cos()
            })
            .collect();
        let energy: f32 = window.iter().map(|w| w * w).sum();
        let bins = FFT_LEN / 2 + 1;
        let scale = (0..bins)
            .map(|k| {
                let one_sided = if k == 0 || k == bins - 1 { 1.0 } else { 2.0 };
                one_sided / (FFT_LEN as f32 * energy)
            })
            .collect();
        Self {
            input: fft.make_input_vec(),
            output: fft.make_output_vec(),
            scratch: fft.make_scratch_vec(),
            fft,
            window,
            scale,
            pending: Vec::with_capacity(2 * FFT_LEN),
            power: vec![0.0; bins],
            next_hop: 0,
        }
    }

    /// Feeds samples; calls `frame(hop_index, power)` for every complete
    /// window (hop `h` covers samples `h·HOP .. h·HOP + FFT_LEN`).
    pub(crate) fn push(&mut self, samples: &[f32], mut frame: impl FnMut(u64, &[f32])) {
        self.pending.extend_from_slice(samples);
        let mut offset = 0;
        while self.pending.len() - offset >= FFT_LEN {
            let block = &self.pending[offset..offset + FFT_LEN];
            for ((x, &s), &w) in self.input.iter_mut().zip(block).zip(&self.window) {
                *x = s * w;
            }
            if self
                .fft
                .process_with_scratch(&mut self.input, &mut self.output, &mut self.scratch)
                .is_ok()
            {
                for ((p, c), &k) in self.power.iter_mut().zip(&self.output).zip(&self.scale) {
                    *p = c.norm_sqr() * k;
                }
                frame(self.next_hop, &self.power);
            }
            self.next_hop += 1;
            offset += HOP;
        }
        self.pending.drain(..offset);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bins_of_a_frame_sum_to_the_mean_square() {
        let rate = 48_000.0;
        let tone: Vec<f32> = (0..4 * FFT_LEN)
            .map(|i| 0.5 * (2.0 * std::f32::consts::PI * 3_000.0 * i as f32 / rate).sin())
            .collect();
        let mut stft = Stft::new();
        let mut sums = Vec::new();
        stft.push(&tone, |_, p| sums.push(p.iter().sum::<f32>()));
        assert_eq!(sums.len(), 7, "hops of a 4-window signal");
        for s in sums {
            assert!(
                (s - 0.125).abs() < 0.005,
                "mean square of a 0.5 sine is 0.125, got {s}"
            );
        }
    }
}
