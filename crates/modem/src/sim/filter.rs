//! Second-order IIR sections (RBJ audio-EQ cookbook): the speaker's band
//! limits and resonances, and the shaping of synthetic noises.

use std::f64::consts::PI;

/// One biquad section, direct form I.
#[derive(Debug, Clone)]
pub struct Biquad {
    b: [f64; 3],
    a: [f64; 2],
    x: [f64; 2],
    y: [f64; 2],
}

impl Biquad {
    fn from_rbj(b: [f64; 3], a: [f64; 3]) -> Self {
        Self {
            b: [b[0] / a[0], b[1] / a[0], b[2] / a[0]],
            a: [a[1] / a[0], a[2] / a[0]],
            x: [0.0; 2],
            y: [0.0; 2],
        }
    }

    fn omega(freq: f64, rate: f64, q: f64) -> (f64, f64) {
        let w = 2.0 * PI * (freq / rate).clamp(1e-6, 0.499);
        (w.cos(), w.sin() / (2.0 * q))
    }

    /// Low-pass at `freq` Hz.
    pub fn low_pass(freq: f64, rate: f64, q: f64) -> Self {
        let (cos, alpha) = Self::omega(freq, rate, q);
        Self::from_rbj(
            [(1.0 - cos) / 2.0, 1.0 - cos, (1.0 - cos) / 2.0],
            [1.0 + alpha, -2.0 * cos, 1.0 - alpha],
        )
    }

    /// High-pass at `freq` Hz.
    pub fn high_pass(freq: f64, rate: f64, q: f64) -> Self {
        let (cos, alpha) = Self::omega(freq, rate, q);
        Self::from_rbj(
            [(1.0 + cos) / 2.0, -(1.0 + cos), (1.0 + cos) / 2.0],
            [1.0 + alpha, -2.0 * cos, 1.0 - alpha],
        )
    }

    /// Band-pass (0 dB peak) around `freq` Hz.
    pub fn band_pass(freq: f64, rate: f64, q: f64) -> Self {
        let (cos, alpha) = Self::omega(freq, rate, q);
        Self::from_rbj([alpha, 0.0, -alpha], [1.0 + alpha, -2.0 * cos, 1.0 - alpha])
    }

    /// Peaking EQ: `gain_db` at `freq` Hz, 0 dB far from it; an enclosure
    /// resonance (or a dip) of a phone speaker.
    pub fn peaking(freq: f64, rate: f64, q: f64, gain_db: f64) -> Self {
        let (cos, alpha) = Self::omega(freq, rate, q);
        let a = 10f64.powf(gain_db / 40.0);
        Self::from_rbj(
            [1.0 + alpha * a, -2.0 * cos, 1.0 - alpha * a],
            [1.0 + alpha / a, -2.0 * cos, 1.0 - alpha / a],
        )
    }

    /// Filters one sample.
    pub fn step(&mut self, x: f64) -> f64 {
        let y = self.b[0] * x + self.b[1] * self.x[0] + self.b[2] * self.x[1]
            - self.a[0] * self.y[0]
            - self.a[1] * self.y[1];
        self.x = [x, self.x[0]];
        self.y = [y, self.y[0]];
        y
    }

    /// Filters a buffer in place.
    pub fn run(&mut self, samples: &mut [f32]) {
        for s in samples {
            *s = self.step(f64::from(*s)) as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gain_at(mut filter: Biquad, freq: f64, rate: f64) -> f64 {
        let n = rate as usize;
        let mut peak: f64 = 0.0;
        for i in 0..n {
            let y = filter.step((2.0 * PI * freq * i as f64 / rate).sin());
            if i > n / 2 {
                peak = peak.max(y.abs());
            }
        }
        peak
    }

    #[test]
    fn low_and_high_pass_keep_their_band_and_cut_the_other() {
        let rate = 48_000.0;
        assert!(gain_at(Biquad::low_pass(4_000.0, rate, 0.707), 500.0, rate) > 0.95);
        assert!(gain_at(Biquad::low_pass(4_000.0, rate, 0.707), 16_000.0, rate) < 0.1);
        assert!(gain_at(Biquad::high_pass(400.0, rate, 0.707), 5_000.0, rate) > 0.95);
        assert!(gain_at(Biquad::high_pass(400.0, rate, 0.707), 50.0, rate) < 0.05);
        let bp = || Biquad::band_pass(1_000.0, rate, 2.0);
        assert!(gain_at(bp(), 1_000.0, rate) > 0.95);
        assert!(gain_at(bp(), 8_000.0, rate) < 0.1);
    }

    #[test]
    fn a_peaking_filter_peaks_at_its_frequency_and_leaves_the_rest() {
        let rate = 48_000.0;
        let db = |f: Biquad, freq: f64| 20.0 * gain_at(f, freq, rate).log10();
        for gain_db in [6.0, -6.0] {
            let peak = || Biquad::peaking(5_000.0, rate, 2.0, gain_db);
            assert!((db(peak(), 5_000.0) - gain_db).abs() < 0.1, "{gain_db}");
            assert!(db(peak(), 500.0).abs() < 0.2, "{gain_db}");
            assert!(db(peak(), 18_000.0).abs() < 0.5, "{gain_db}");
            // Off its centre, the boost or cut is smaller.
            assert!(db(peak(), 4_000.0).abs() < gain_db.abs() - 1.0, "{gain_db}");
        }
    }
}
