//! A phone's amplifier driven into clipping: the wallet app plays loud and
//! the output stage saturates, spreading the frame's energy into
//! intermodulation products across the band.

/// Gain into a saturating output stage.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Clipper {
    /// Gain before the limit, dB.
    pub drive_db: f64,
    /// `tanh` saturation instead of a hard clip at ±1.
    pub soft: bool,
}

impl Clipper {
    /// Drives and clips `samples` in place; the result stays within ±1.
    pub fn apply(&self, samples: &mut [f32]) {
        let gain = 10f64.powf(self.drive_db / 20.0);
        for s in samples {
            let x = f64::from(*s) * gain;
            *s = if self.soft {
                x.tanh()
            } else {
                x.clamp(-1.0, 1.0)
            } as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::f64::consts::PI;

    fn tone() -> Vec<f32> {
        (0..4_800)
            .map(|i| (0.8 * (2.0 * PI * f64::from(i) / 48.0).sin()) as f32)
            .collect()
    }

    #[test]
    fn clipping_bounds_the_peak_and_flattens_it() {
        for soft in [false, true] {
            let mut x = tone();
            Clipper {
                drive_db: 12.0,
                soft,
            }
            .apply(&mut x);
            let peak = x.iter().fold(0.0f32, |m, s| m.max(s.abs()));
            assert!(peak <= 1.0 && peak > 0.99, "soft {soft}: {peak}");
            // Driven 12 dB into the limit, most of the wave sits near it.
            let near = x.iter().filter(|s| s.abs() > 0.95).count();
            assert!(near > x.len() / 2, "soft {soft}: {near}");
        }
    }

    #[test]
    fn no_drive_below_the_limit_is_transparent_when_hard() {
        let mut x = tone();
        Clipper {
            drive_db: 0.0,
            soft: false,
        }
        .apply(&mut x);
        assert_eq!(x, tone());
    }
}
