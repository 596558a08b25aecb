//! Automatic gain control, as a phone's output limiter (sender side) or a
//! microphone's AGC (receiver side) applies it: the channel's gain changes
//! while a frame plays, which a decoder that estimates the channel once from
//! the reference symbol does not expect.

use std::f64::consts::PI;

/// A slowly varying gain.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Agc {
    /// An envelope follower pulling the level (RMS, dB full scale) towards
    /// `target_dbfs`: the gain falls with time constant `attack_s` when the
    /// input gets louder and rises with `release_s` when it gets quieter, and
    /// never leaves ±`max_swing_db` around 0 dB.
    Follower {
        /// The level the AGC aims for, dB relative to full scale (RMS).
        target_dbfs: f64,
        /// Time constant of gain reduction, seconds.
        attack_s: f64,
        /// Time constant of gain recovery, seconds.
        release_s: f64,
        /// Largest boost or cut, dB.
        max_swing_db: f64,
    },
    /// Gain swinging ±`depth_db` sinusoidally at `hz`: an AGC pumping on
    /// station noise, at its worst.
    Pumping {
        /// Peak deviation from 0 dB.
        depth_db: f64,
        /// Pumping rate, Hz (1–4 Hz is typical).
        hz: f64,
        /// Phase at the first sample, radians.
        phase: f64,
    },
}

/// Time constant of the follower's level detector: short against any AGC's
/// attack, long enough to smooth a 400 Hz cycle.
const DETECTOR_SECS: f64 = 0.005;

impl Agc {
    /// Short name for tables.
    pub fn name(&self) -> &'static str {
        match self {
            Agc::Follower { .. } => "follower",
            Agc::Pumping { .. } => "pumping",
        }
    }

    /// Applies the gain to `samples` (at `rate` Hz), in place.
    pub fn apply(&self, samples: &mut [f32], rate: u32) {
        let rate = f64::from(rate);
        match *self {
            Agc::Follower {
                target_dbfs,
                attack_s,
                release_s,
                max_swing_db,
            } => {
                let step = |tau: f64| 1.0 - (-1.0 / (tau.max(1e-6) * rate)).exp();
                let (detect, attack, release) =
                    (step(DETECTOR_SECS), step(attack_s), step(release_s));
                // A level at the target, so the gain starts at 0 dB.
                let mut power = 10f64.powf(target_dbfs / 10.0);
                let mut gain_db = 0.0f64;
                for s in samples {
                    let x = f64::from(*s);
                    power += detect * (x * x - power);
                    let level_db = 10.0 * (power + 1e-20).log10();
                    let wanted = (target_dbfs - level_db).clamp(-max_swing_db, max_swing_db);
                    let k = if wanted < gain_db { attack } else { release };
                    gain_db += k * (wanted - gain_db);
                    *s = (x * 10f64.powf(gain_db / 20.0)) as f32;
                }
            }
            Agc::Pumping {
                depth_db,
                hz,
                phase,
            } => {
                for (i, s) in samples.iter_mut().enumerate() {
                    let t = i as f64 / rate;
                    let gain_db = depth_db * (2.0 * PI * hz * t + phase).sin();
                    *s = (f64::from(*s) * 10f64.powf(gain_db / 20.0)) as f32;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RATE: u32 = 48_000;

    fn tone(amplitude: f64, secs: f64) -> Vec<f32> {
        (0..(secs * f64::from(RATE)) as usize)
            .map(|i| (amplitude * (2.0 * PI * 1_000.0 * i as f64 / f64::from(RATE)).sin()) as f32)
            .collect()
    }

    /// RMS level in dB full scale of `secs` seconds around `at` seconds.
    fn level_dbfs(samples: &[f32], at: f64, secs: f64) -> f64 {
        let from = ((at - secs / 2.0) * f64::from(RATE)) as usize;
        let to = ((at + secs / 2.0) * f64::from(RATE)) as usize;
        let part = &samples[from..to];
        10.0 * (part.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>() / part.len() as f64).log10()
    }

    fn follower(target_dbfs: f64, max_swing_db: f64) -> Agc {
        Agc::Follower {
            target_dbfs,
            attack_s: 0.01,
            release_s: 0.1,
            max_swing_db,
        }
    }

    #[test]
    fn the_follower_converges_to_its_target_within_its_time_constants() {
        // A 1 kHz tone at amplitude 0.05 is −29 dBFS; the target is 14 dB above.
        let mut quiet = tone(0.05, 1.0);
        follower(-15.0, 20.0).apply(&mut quiet, RATE);
        // Release is 0.1 s: after one time constant most of the way, after five there.
        let after_one = level_dbfs(&quiet, 0.1, 0.004) + 29.0;
        assert!(
            (7.0..12.0).contains(&after_one),
            "{after_one:.1} dB of 14 after 0.1 s"
        );
        assert!((level_dbfs(&quiet, 0.7, 0.1) + 15.0).abs() < 0.5);
        // Louder than the target: cut with the 10 ms attack.
        let mut loud = tone(0.9, 0.5);
        follower(-15.0, 20.0).apply(&mut loud, RATE);
        assert!((level_dbfs(&loud, 0.2, 0.1) + 15.0).abs() < 0.5);
    }

    #[test]
    fn the_follower_never_swings_beyond_its_limit() {
        let mut faint = tone(0.001, 1.0); // −63 dBFS
        follower(-15.0, 10.0).apply(&mut faint, RATE);
        assert!((level_dbfs(&faint, 0.8, 0.1) + 53.0).abs() < 0.3);
    }

    #[test]
    fn pumping_swings_the_gain_by_its_depth() {
        let mut steady = vec![0.1f32; RATE as usize];
        Agc::Pumping {
            depth_db: 6.0,
            hz: 2.0,
            phase: 0.0,
        }
        .apply(&mut steady, RATE);
        let max = steady.iter().fold(0.0f32, |m, &s| m.max(s));
        let min = steady.iter().fold(1.0f32, |m, &s| m.min(s));
        assert!((20.0 * f64::from(max / 0.1).log10() - 6.0).abs() < 0.01);
        assert!((20.0 * f64::from(min / 0.1).log10() + 6.0).abs() < 0.01);
        // A quarter period in (2 Hz: 125 ms), the gain is at its peak.
        assert!((steady[RATE as usize / 8] - max).abs() < 1e-4);
    }
}
