//! Exponential backoff, the one the reader uses everywhere it retries: the
//! uplink's rounds ([`crate::sync::plan`]), the vend settlements owed
//! ([`crate::daemon`]'s owed book), the capture devices and the serial
//! ports that come and go.
//!
//! Pure: it neither sleeps nor reads the clock, and randomness comes in as a
//! number, so every wait is a unit test away. With full jitter (a uniformly
//! random wait up to `min(cap, base · 2^attempt)`) a fleet of readers coming
//! back online does not retry in lockstep; a loop that retries one local
//! device has no fleet to spread and takes the ceiling itself
//! ([`Backoff::failed_without_jitter`]).

use std::time::Duration;

/// Exponential backoff, with or without full jitter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    /// Starts at `base`, doubling up to `cap`.
    pub fn new(base: Duration, cap: Duration) -> Self {
        Self {
            base,
            cap,
            attempt: 0,
        }
    }

    /// The ceiling for the next failure, `min(cap, base · 2^attempt)`,
    /// without counting one: the wait after a loss that is not a failed
    /// attempt (a serial port that closed under its driver).
    pub fn ceiling(&self) -> Duration {
        self.base
            .saturating_mul(1u32.checked_shl(self.attempt.min(31)).unwrap_or(u32::MAX))
            .min(self.cap)
    }

    /// The ceiling for the next failure; counts the failure.
    fn next_ceiling(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        ceiling
    }

    /// The wait after one more failure; `unit` is a uniform random number in `[0, 1)`.
    pub fn failed(&mut self, unit: f64) -> Duration {
        self.next_ceiling().mul_f64(unit.clamp(0.0, 1.0))
    }

    /// The wait after one more failure without jitter: `base`, then twice
    /// as long each time, up to `cap`.
    pub fn failed_without_jitter(&mut self) -> Duration {
        self.next_ceiling()
    }

    /// Failures in a row so far.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// The wait after a refusal that a retry cannot cure (the hub answered
    /// 4xx): the longest wait, `cap`, with jitter over its upper half, so a
    /// refused reader asks again rarely instead of retrying at once.
    pub fn refused(&mut self, unit: f64) -> Duration {
        self.attempt = self.attempt.saturating_add(1);
        self.cap.mul_f64(0.5 + unit.clamp(0.0, 1.0) / 2.0)
    }

    /// Resets after a success.
    pub fn succeeded(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn full_jitter_stays_under_a_doubling_ceiling_up_to_the_cap() {
        let mut b = Backoff::new(100 * MS, 1_000 * MS);
        assert_eq!(b.failed(0.999_999), (100 * MS).mul_f64(0.999_999));
        assert_eq!(b.failed(0.5), 100 * MS);
        assert_eq!(b.failed(0.5), 200 * MS);
        assert_eq!(b.failed(0.5), 400 * MS);
        assert_eq!(b.failed(0.5), 500 * MS); // capped at 1 s
        for _ in 0..100 {
            assert!(b.failed(1.0) <= 1_000 * MS);
        }
        assert_eq!(b.failed(0.0), Duration::ZERO);
        b.succeeded();
        assert_eq!(b.failed(1.0), 100 * MS);
    }

    #[test]
    fn without_jitter_the_wait_doubles_from_the_base_to_the_cap_and_a_success_resets_it() {
        let mut b = Backoff::new(500 * MS, 30_000 * MS);
        let waits: Vec<Duration> = (0..8).map(|_| b.failed_without_jitter()).collect();
        assert_eq!(
            waits,
            [500, 1_000, 2_000, 4_000, 8_000, 16_000, 30_000, 30_000].map(|ms| ms * MS)
        );
        assert_eq!(b.attempts(), 8);
        assert_eq!(b.ceiling(), 30_000 * MS, "looking does not count a failure");
        assert_eq!(b.attempts(), 8);
        b.succeeded();
        assert_eq!(b.ceiling(), 500 * MS);
        assert_eq!(b.failed_without_jitter(), 500 * MS);
    }

    #[test]
    fn a_huge_attempt_count_saturates_at_the_cap_instead_of_overflowing() {
        let mut b = Backoff::new(500 * MS, 30_000 * MS);
        for _ in 0..100 {
            b.failed_without_jitter();
        }
        assert_eq!(b.failed_without_jitter(), 30_000 * MS);
        assert_eq!(b.refused(0.0), 15_000 * MS);
    }
}
