//! Level statistics: peak, RMS, and clipping, with where the clipping is.

/// A sample at or above this fraction of full scale counts as clipped
/// (−0.09 dBFS): converters that clip sit exactly at the rail (a 16-bit
/// file's positive rail is 0.99997), and a level this close to it leaves no
/// headroom for the next, louder phone.
pub const CLIP_LEVEL: f32 = 0.99;

/// Running level statistics over a stream.
#[derive(Debug, Clone, Default)]
pub(crate) struct Levels {
    pub(crate) samples: u64,
    pub(crate) peak: f32,
    pub(crate) sum_squares: f64,
    pub(crate) clipped: u64,
}

impl Levels {
    /// Adds samples; calls `clipped_at(index)` for each clipped one (its
    /// index since the stream began).
    pub(crate) fn push(&mut self, samples: &[f32], mut clipped_at: impl FnMut(u64)) {
        for &s in samples {
            let a = if s.is_finite() { s.abs() } else { 0.0 };
            self.peak = self.peak.max(a);
            self.sum_squares += f64::from(a) * f64::from(a);
            if a >= CLIP_LEVEL {
                self.clipped += 1;
                clipped_at(self.samples);
            }
            self.samples += 1;
        }
    }

    /// Peak level in dBFS (full scale = 1.0), `None` for digital silence.
    pub(crate) fn peak_dbfs(&self) -> Option<f64> {
        db_amplitude(f64::from(self.peak))
    }

    /// RMS level in dBFS (a full-scale square wave is 0 dBFS, a full-scale
    /// sine −3 dBFS), `None` for digital silence.
    pub(crate) fn rms_dbfs(&self) -> Option<f64> {
        if self.samples == 0 {
            return None;
        }
        db_power(self.sum_squares / self.samples as f64)
    }

    /// Clipped samples as a percentage of all samples.
    pub(crate) fn clipped_percent(&self) -> f64 {
        if self.samples == 0 {
            return 0.0;
        }
        100.0 * self.clipped as f64 / self.samples as f64
    }
}

/// 20·log10 of an amplitude; `None` at zero.
pub(crate) fn db_amplitude(a: f64) -> Option<f64> {
    (a > 0.0).then(|| 20.0 * a.log10())
}

/// 10·log10 of a power (mean square); `None` at zero.
pub(crate) fn db_power(p: f64) -> Option<f64> {
    (p > 0.0).then(|| 10.0 * p.log10())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_report_peak_rms_and_each_clipped_sample() {
        let mut levels = Levels::default();
        let mut at = Vec::new();
        levels.push(&[0.5, -0.5, 1.0, -1.0, 0.0], |i| at.push(i));
        assert_eq!(at, [2, 3]);
        assert_eq!(levels.clipped, 2);
        assert!((levels.clipped_percent() - 40.0).abs() < 1e-9);
        assert!(levels.peak_dbfs().is_some_and(|d| d.abs() < 1e-9));
        // Mean square (0.25 + 0.25 + 1 + 1 + 0) / 5 = 0.5: −3.01 dBFS.
        assert!(levels.rms_dbfs().is_some_and(|d| (d + 3.0103).abs() < 1e-3));
        assert_eq!(Levels::default().rms_dbfs(), None);
    }
}
