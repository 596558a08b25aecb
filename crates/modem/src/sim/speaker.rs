//! The phone's loudspeaker: weak below ~400 Hz, rolling off somewhere
//! between 15 and 20 kHz depending on the model, with enclosure resonances
//! (docs/modem.md §5). Phone models differ most in exactly the band the fast
//! profile uses, so the roll-off corner and the resonances are parameters.

use super::filter::Biquad;

/// A phone speaker's frequency response.
#[derive(Debug, Clone, PartialEq)]
pub struct Speaker {
    /// Corner of the high-frequency roll-off (two 2nd-order Butterworth
    /// low-passes, −6 dB here and 24 dB per octave above), Hz.
    pub low_pass_hz: f64,
    /// Enclosure resonances and dips, applied after the band limits.
    pub resonances: Vec<Resonance>,
}

/// One resonance (or dip) of a speaker's enclosure: an RBJ peaking filter.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Resonance {
    /// Centre frequency, Hz.
    pub hz: f64,
    /// Gain at the centre, dB (negative: a dip).
    pub gain_db: f64,
    /// Sharpness: centre frequency over bandwidth.
    pub q: f64,
}

impl Default for Speaker {
    /// The speaker the simulator always had: corner 19.5 kHz, flat otherwise.
    fn default() -> Self {
        Self {
            low_pass_hz: 19_500.0,
            resonances: Vec::new(),
        }
    }
}

impl Speaker {
    /// Plays `sound` (at `rate` Hz) through this speaker, in place.
    pub fn play(&self, sound: &mut [f32], rate: u32) {
        let rate = f64::from(rate);
        // The order of the first four filters is the original simulator's:
        // the same samples come out of a default speaker.
        let band_limits = [
            Biquad::high_pass(400.0, rate, 0.707),
            Biquad::high_pass(400.0, rate, 0.707),
            Biquad::low_pass(self.low_pass_hz, rate, 0.707),
            Biquad::low_pass(self.low_pass_hz, rate, 0.707),
        ];
        let resonances = self
            .resonances
            .iter()
            .map(|r| Biquad::peaking(r.hz, rate, r.q, r.gain_db));
        for mut filter in band_limits.into_iter().chain(resonances) {
            filter.run(sound);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::f64::consts::PI;

    /// Gain in dB of `speaker` for a steady tone at `freq` Hz.
    fn response_db(speaker: &Speaker, freq: f64) -> f64 {
        let rate = 48_000;
        let mut tone: Vec<f32> = (0..rate)
            .map(|i| (2.0 * PI * freq * f64::from(i) / f64::from(rate)).sin() as f32)
            .collect();
        speaker.play(&mut tone, rate as u32);
        let settled = &tone[tone.len() / 2..];
        let rms = (settled.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>()
            / settled.len() as f64)
            .sqrt();
        20.0 * (rms * 2f64.sqrt()).log10()
    }

    #[test]
    fn a_16_khz_roll_off_attenuates_19_khz_as_two_butterworth_sections_do() {
        let speaker = Speaker {
            low_pass_hz: 16_000.0,
            resonances: Vec::new(),
        };
        // Bilinear-transform Butterworth: |H|² = 1 / (1 + (tan(πf/fs) / tan(πfc/fs))⁴), twice.
        let ratio = (PI * 19_000.0 / 48_000.0).tan() / (PI * 16_000.0 / 48_000.0).tan();
        let expected = 2.0 * -10.0 * (1.0 + ratio.powi(4)).log10();
        let got = response_db(&speaker, 19_000.0);
        assert!(
            (got - expected).abs() < 0.3,
            "{got:.2} dB, expected {expected:.2}"
        );
        assert!(expected < -18.0, "{expected}");
        assert!((response_db(&speaker, 16_000.0) + 6.0).abs() < 0.3);
        assert!(response_db(&speaker, 4_000.0).abs() < 0.3);
        // The default speaker barely touches 16 kHz.
        assert!(response_db(&Speaker::default(), 16_000.0) > -1.5);
    }

    #[test]
    fn a_resonance_peaks_at_its_frequency() {
        let speaker = Speaker {
            resonances: vec![
                Resonance {
                    hz: 3_000.0,
                    gain_db: 6.0,
                    q: 3.0,
                },
                Resonance {
                    hz: 9_000.0,
                    gain_db: -6.0,
                    q: 3.0,
                },
            ],
            ..Speaker::default()
        };
        let flat = Speaker::default();
        let relative = |freq| response_db(&speaker, freq) - response_db(&flat, freq);
        assert!(
            (relative(3_000.0) - 6.0).abs() < 0.2,
            "{}",
            relative(3_000.0)
        );
        assert!(
            (relative(9_000.0) + 6.0).abs() < 0.2,
            "{}",
            relative(9_000.0)
        );
        assert!(relative(3_500.0) < 5.0 && relative(2_500.0) < 5.0);
        assert!(relative(15_000.0).abs() < 0.5, "{}", relative(15_000.0));
    }
}
