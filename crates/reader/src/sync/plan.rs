//! What the uplink does next: a pure state machine, no I/O, no clock.
//!
//! The loop in [`super::client`] asks [`Plan::next`] for a [`Step`], carries
//! it out, and reports the [`Outcome`]. One round is: check the hub's clock,
//! upload batches until none is left, fetch the key set, fetch the deny-list
//! delta, prune, then sleep for the interval. Any failure ends the round and
//! sleeps for an exponential backoff with full jitter (a uniformly random
//! wait up to `min(cap, base · 2^attempt)`), so a fleet of readers coming
//! back online does not hit the hub in lockstep.

use std::time::Duration;

use crate::backoff::Backoff;
use crate::reader::MAX_CLOCK_CORRECTION_SECS;

/// The most one successful sync may move the reader's stored clock offset
/// (hub clock minus reader clock), in milliseconds: 5 minutes. Honest drift
/// between syncs is far smaller; a reader whose clock is off by more gets
/// there over several syncs (an hour's error in 12), and the offset stored
/// never exceeds [`MAX_CLOCK_CORRECTION_SECS`] (beyond that, fix the
/// reader's clock: NTP, or `date -s` then a sync).
pub const MAX_CLOCK_STEP_MS: i64 = 5 * 60 * 1000;

/// The clock offset to store after a successful sync measured `measured`
/// while `current` was stored: at most [`MAX_CLOCK_STEP_MS`] from
/// `current`, and at most [`MAX_CLOCK_CORRECTION_SECS`] either way.
pub fn next_clock_offset(current: i64, measured: i64) -> i64 {
    let limit = i64::try_from(MAX_CLOCK_CORRECTION_SECS.saturating_mul(1000)).unwrap_or(i64::MAX);
    let current = current.clamp(-limit, limit);
    let step = measured
        .saturating_sub(current)
        .clamp(-MAX_CLOCK_STEP_MS, MAX_CLOCK_STEP_MS);
    current.saturating_add(step).clamp(-limit, limit)
}

/// One thing for the loop to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Ask the hub for its time; store the offset.
    CheckClock,
    /// Upload the oldest unsynced batch.
    Upload,
    /// Fetch and adopt a newer issuer key set.
    FetchKeys,
    /// Fetch and apply deny-list entries after the reader's version.
    FetchDeny,
    /// Delete acknowledged records older than the retention period.
    Prune,
    /// The round is over (for a one-shot sync: stop).
    Sleep(Duration),
}

/// How a step went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Done; for an upload, whether unsynced records remain.
    Done {
        /// More to upload right away.
        more: bool,
    },
    /// Failed; the round ends with a backoff.
    Failed,
    /// The hub refused the request for good (a 4xx answer: malformed, not
    /// authenticated, a conflict): the round ends and the next one waits the
    /// longest backoff, `cap`, since retrying soon cannot help.
    Refused,
}

/// The uplink's state between steps.
#[derive(Debug, Clone)]
pub struct Plan {
    interval: Duration,
    backoff: Backoff,
    current: Step,
}

impl Plan {
    /// A plan that syncs every `interval` and backs off from `base` up to `cap`.
    pub fn new(interval: Duration, base: Duration, cap: Duration) -> Self {
        Self {
            interval,
            backoff: Backoff::new(base, cap),
            current: Step::CheckClock,
        }
    }

    /// The step to carry out now.
    pub fn current(&self) -> Step {
        self.current
    }

    /// Failures in a row.
    pub fn failures(&self) -> u32 {
        self.backoff.attempts()
    }

    /// Moves on after `outcome` of the current step; `unit` is a uniform
    /// random number in `[0, 1)` for the jitter.
    pub fn next(&mut self, outcome: Outcome, unit: f64) -> Step {
        self.current = match (self.current, outcome) {
            (Step::Sleep(_), _) => Step::CheckClock,
            (_, Outcome::Failed) => Step::Sleep(self.backoff.failed(unit)),
            (_, Outcome::Refused) => Step::Sleep(self.backoff.refused(unit)),
            (Step::CheckClock, Outcome::Done { .. }) => Step::Upload,
            (Step::Upload, Outcome::Done { more: true }) => Step::Upload,
            (Step::Upload, Outcome::Done { more: false }) => Step::FetchKeys,
            (Step::FetchKeys, Outcome::Done { .. }) => Step::FetchDeny,
            (Step::FetchDeny, Outcome::Done { .. }) => Step::Prune,
            (Step::Prune, Outcome::Done { .. }) => {
                self.backoff.succeeded();
                Step::Sleep(self.interval)
            }
        };
        self.current
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_round_uploads_until_empty_then_fetches_prunes_and_sleeps() {
        let mut p = Plan::new(30_000 * MS, 100 * MS, 10_000 * MS);
        let done = |more| Outcome::Done { more };
        assert_eq!(p.current(), Step::CheckClock);
        assert_eq!(p.next(done(false), 0.5), Step::Upload);
        assert_eq!(p.next(done(true), 0.5), Step::Upload);
        assert_eq!(p.next(done(false), 0.5), Step::FetchKeys);
        assert_eq!(p.next(done(false), 0.5), Step::FetchDeny);
        assert_eq!(p.next(done(false), 0.5), Step::Prune);
        assert_eq!(p.next(done(false), 0.5), Step::Sleep(30_000 * MS));
        assert_eq!(p.next(done(false), 0.5), Step::CheckClock);
    }

    #[test]
    fn a_failure_anywhere_backs_off_longer_each_time_and_restarts_the_round() {
        let mut p = Plan::new(30_000 * MS, 100 * MS, 10_000 * MS);
        assert_eq!(p.next(Outcome::Done { more: false }, 0.5), Step::Upload);
        assert_eq!(p.next(Outcome::Failed, 1.0), Step::Sleep(100 * MS));
        assert_eq!(p.next(Outcome::Done { more: false }, 0.5), Step::CheckClock);
        assert_eq!(p.next(Outcome::Failed, 1.0), Step::Sleep(200 * MS));
        assert_eq!(p.failures(), 2);
        p.next(Outcome::Done { more: false }, 0.5);
        for step in [Step::Upload, Step::FetchKeys, Step::FetchDeny, Step::Prune] {
            assert_eq!(p.next(Outcome::Done { more: false }, 0.5), step);
        }
        assert_eq!(
            p.next(Outcome::Done { more: false }, 0.5),
            Step::Sleep(30_000 * MS)
        );
        assert_eq!(p.failures(), 0);
    }

    #[test]
    fn issue13_04_one_sync_moves_the_clock_offset_by_at_most_five_minutes() {
        assert_eq!(next_clock_offset(0, 1_200), 1_200);
        assert_eq!(next_clock_offset(0, -1_200), -1_200);
        // The 3,500 s a lying hub once moved the offset by: 300 s a sync.
        assert_eq!(next_clock_offset(0, 3_500_000), 300_000);
        assert_eq!(next_clock_offset(300_000, 3_500_000), 600_000);
        assert_eq!(next_clock_offset(0, -3_500_000), -300_000);
        // Converging: an hour's error is reached in 12 syncs and never passed.
        let mut offset = 0;
        for _ in 0..12 {
            offset = next_clock_offset(offset, 3_600_000);
        }
        assert_eq!(offset, 3_600_000);
        // Never beyond the hour a reader corrects at most.
        assert_eq!(next_clock_offset(3_600_000, 9_000_000), 3_600_000);
        assert_eq!(next_clock_offset(i64::MIN, i64::MAX), -3_600_000 + 300_000);
        assert_eq!(next_clock_offset(i64::MAX, i64::MIN), 3_600_000 - 300_000);
    }

    #[test]
    fn issue13_10_a_refusal_waits_the_longest_backoff_not_a_quick_retry() {
        let mut p = Plan::new(30_000 * MS, 100 * MS, 10_000 * MS);
        assert_eq!(p.next(Outcome::Done { more: false }, 0.5), Step::Upload);
        // A transient failure would wait at most 100 ms; a refusal waits
        // between half the cap and the cap.
        for unit in [0.0, 0.5, 0.999] {
            match p.next(Outcome::Refused, unit) {
                Step::Sleep(wait) => {
                    assert!((5_000 * MS..=10_000 * MS).contains(&wait), "{wait:?}")
                }
                other => panic!("{other:?}"),
            }
            assert_eq!(p.next(Outcome::Done { more: false }, 0.5), Step::CheckClock);
            assert_eq!(p.next(Outcome::Done { more: false }, 0.5), Step::Upload);
        }
        assert_eq!(p.failures(), 3);
    }
}
