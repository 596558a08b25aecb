//! Band-limited resampling with a clock offset: a phone's 48 kHz heard by a
//! 44.1 kHz reader whose clocks disagree by some parts per million.

use std::f64::consts::PI;

/// Half-width of the interpolation kernel, in input samples (at unit cutoff).
const HALF_TAPS: isize = 24;

/// Resamples `input` (at `in_rate`) to `out_rate`, with the sender's clock
/// running `ppm` parts per million fast (negative: slow).
///
/// Windowed-sinc interpolation (Blackman window), with the cutoff lowered
/// to the output's Nyquist frequency when downsampling.
pub fn resample(input: &[f32], in_rate: u32, out_rate: u32, ppm: f64) -> Vec<f32> {
    if input.is_empty() || in_rate == 0 || out_rate == 0 {
        return Vec::new();
    }
    // Input samples advanced per output sample.
    let step = f64::from(in_rate) * (1.0 + ppm * 1e-6) / f64::from(out_rate);
    let cutoff = (1.0 / step).min(1.0);
    let half = (HALF_TAPS as f64 / cutoff).ceil() as isize;
    // The epsilon keeps an exact ratio (48000 / (48000/44100)) from rounding down.
    let out_len = ((input.len() as f64) / step + 1e-6).floor() as usize;
    let mut out = Vec::with_capacity(out_len);
    for n in 0..out_len {
        let x = n as f64 * step;
        let centre = x.floor() as isize;
        let mut acc = 0.0;
        for k in (centre - half + 1)..=(centre + half) {
            let Some(&sample) = usize::try_from(k).ok().and_then(|i| input.get(i)) else {
                continue;
            };
            let d = x - k as f64;
            let window = 0.42
                + 0.5 * (PI * d / half as f64).cos()
                + 0.08 * (2.0 * PI * d / half as f64).cos();
            let arg = PI * d * cutoff;
            let sinc = if arg.abs() < 1e-9 {
                1.0
            } else {
                arg.sin() / arg
            };
            acc += f64::from(sample) * cutoff * sinc * window;
        }
        out.push(acc as f32);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(freq: f64, rate: u32, len: usize) -> Vec<f32> {
        (0..len)
            .map(|i| (2.0 * PI * freq * i as f64 / f64::from(rate)).sin() as f32)
            .collect()
    }

    #[test]
    fn a_tone_keeps_its_frequency_across_rates() {
        let input = tone(18_000.0, 48_000, 48_000);
        let output = resample(&input, 48_000, 44_100, 0.0);
        assert_eq!(output.len(), 44_100);
        let expected = tone(18_000.0, 44_100, 44_100);
        let err: f64 = output[1000..43_000]
            .iter()
            .zip(&expected[1000..43_000])
            .map(|(a, b)| f64::from(a - b).powi(2))
            .sum::<f64>()
            / 42_000.0;
        assert!(err < 1e-4, "mean squared error {err}");
    }

    #[test]
    fn clock_offset_stretches_time() {
        let input = vec![0.0f32; 1_000_000];
        // A sender 300 ppm fast puts out 300 ppm more samples per second.
        assert_eq!(resample(&input, 48_000, 48_000, 300.0).len(), 999_700);
        assert_eq!(resample(&input, 48_000, 48_000, -300.0).len(), 1_000_300);
    }
}
