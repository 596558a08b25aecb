//! Room reverberation: a synthetic impulse response (direct path plus an
//! exponentially decaying noise tail with a given RT60 and direct-to-
//! reverberant ratio), applied by FFT convolution.

use rand::RngExt;
use rand_distr::StandardNormal;
use rand_pcg::Pcg64Mcg;
use realfft::RealFftPlanner;
use realfft::num_complex::Complex32;

/// A room: how long sound rings, and how loud the ring is against the direct path.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Room {
    /// Time for the reverberation to decay by 60 dB, seconds.
    pub rt60: f32,
    /// Direct-to-reverberant energy ratio, dB (0 dB: the tail is as strong as the direct sound).
    pub drr_db: f32,
}

/// The room's impulse response at `rate` Hz.
pub fn impulse_response(room: Room, rate: u32, rng: &mut Pcg64Mcg) -> Vec<f32> {
    let rate = f64::from(rate);
    let len = ((f64::from(room.rt60) * rate) as usize).max(2);
    let onset = (0.002 * rate) as usize; // first reflections after 2 ms
    let decay = 6.907_755 / (f64::from(room.rt60) * rate); // ln(1000): 60 dB in amplitude
    let mut h: Vec<f32> = (0..len)
        .map(|i| {
            if i < onset {
                0.0
            } else {
                let n: f64 = rng.sample(StandardNormal);
                (n * (-decay * (i - onset) as f64).exp()) as f32
            }
        })
        .collect();
    let tail_energy: f64 = h.iter().map(|&x| f64::from(x).powi(2)).sum();
    let wanted = 10f64.powf(-f64::from(room.drr_db) / 10.0); // direct energy is 1
    if tail_energy > 0.0 {
        let k = (wanted / tail_energy).sqrt() as f32;
        h.iter_mut().for_each(|x| *x *= k);
    }
    h[0] = 1.0;
    h
}

/// Full linear convolution of `signal` with `h`, by one large real FFT.
pub fn convolve(signal: &[f32], h: &[f32]) -> Vec<f32> {
    if signal.is_empty() || h.is_empty() {
        return Vec::new();
    }
    let n = (signal.len() + h.len() - 1).next_power_of_two();
    let mut planner = RealFftPlanner::<f32>::new();
    let forward = planner.plan_fft_forward(n);
    let inverse = planner.plan_fft_inverse(n);
    let spectrum = |x: &[f32]| {
        let mut buf = vec![0.0f32; n];
        buf[..x.len()].copy_from_slice(x);
        let mut out = forward.make_output_vec();
        // Lengths come from the plan itself, so this cannot fail.
        let _ = forward.process(&mut buf, &mut out);
        out
    };
    let a = spectrum(signal);
    let b = spectrum(h);
    let mut product: Vec<Complex32> = a.iter().zip(&b).map(|(x, y)| x * y).collect();
    // The DC and Nyquist bins of a real signal's spectrum are real.
    if let Some(first) = product.first_mut() {
        first.im = 0.0;
    }
    if let Some(last) = product.last_mut() {
        last.im = 0.0;
    }
    let mut out = inverse.make_output_vec();
    let _ = inverse.process(&mut product, &mut out);
    out.truncate(signal.len() + h.len() - 1);
    let scale = 1.0 / n as f32;
    out.iter_mut().for_each(|x| *x *= scale);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn convolution_matches_the_direct_sum() {
        let x = [1.0, 2.0, 3.0, -1.0];
        let h = [0.5, 0.25, 0.0, 1.0];
        let y = convolve(&x, &h);
        let mut direct = vec![0.0f32; x.len() + h.len() - 1];
        for (i, a) in x.iter().enumerate() {
            for (j, b) in h.iter().enumerate() {
                direct[i + j] += a * b;
            }
        }
        for (a, b) in y.iter().zip(&direct) {
            assert!((a - b).abs() < 1e-4, "{y:?} vs {direct:?}");
        }
    }

    #[test]
    fn impulse_response_has_the_asked_drr_and_decay() {
        let room = Room {
            rt60: 0.4,
            drr_db: 6.0,
        };
        let h = impulse_response(room, 48_000, &mut Pcg64Mcg::seed_from_u64(3));
        assert_eq!(h.len(), 19_200);
        let tail: f64 = h[1..].iter().map(|&x| f64::from(x).powi(2)).sum();
        let drr = 10.0 * (1.0 / tail).log10();
        assert!((drr - 6.0).abs() < 0.01, "drr {drr}");
        // Energy in the last 10% is > 40 dB below the first 10% of the tail.
        let energy =
            |r: std::ops::Range<usize>| h[r].iter().map(|&x| f64::from(x).powi(2)).sum::<f64>();
        let early = energy(100..1_920);
        let late = energy(17_280..19_200);
        assert!(10.0 * (early / late).log10() > 40.0);
    }
}
