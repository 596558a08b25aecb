//! The per-frame budget: whether another attempt may start.

use std::cell::Cell;
use std::time::{Duration, Instant};

/// The per-frame budget: an attempt starts only if the time spent plus the
/// longest step so far (a step is what ran between two checks) still fits,
/// so a frame ends near its budget instead of one attempt past it.
pub(super) struct Clock {
    start: Instant,
    budget: Cell<Duration>,
    last: Cell<Instant>,
    longest: Cell<Duration>,
    started: Cell<u32>,
}

impl Clock {
    pub(super) fn new(budget: Duration) -> Self {
        let now = Instant::now();
        Self {
            start: now,
            budget: Cell::new(budget),
            last: Cell::new(now),
            longest: Cell::new(Duration::ZERO),
            started: Cell::new(0),
        }
    }

    /// Whether another attempt may start (and the step since the last
    /// check is recorded). The first attempt always may: a frame that
    /// never reaches rqrr (a loaded machine, a slow locator) is wasted.
    pub(super) fn may_start(&self) -> bool {
        let now = Instant::now();
        let step = now.saturating_duration_since(self.last.get());
        self.last.set(now);
        if step > self.longest.get() {
            self.longest.set(step);
        }
        let fits =
            now.saturating_duration_since(self.start) + self.longest.get() <= self.budget.get();
        let first = self.started.get() == 0;
        if fits || first {
            self.started.set(self.started.get() + 1);
        }
        fits || first
    }

    /// Whether a step expected to take `step` still fits the budget (for a
    /// step known to cost several of the steps measured so far; records
    /// nothing).
    pub(super) fn fits(&self, step: Duration) -> bool {
        self.start.elapsed() + step <= self.budget.get()
    }

    /// When the budget, as it stands, ends (for a step that checks the
    /// time itself).
    pub(super) fn deadline(&self) -> Instant {
        self.start + self.budget.get()
    }

    /// When an attempt starting now is abandoned if still running: one
    /// budget (at least the gate's) past the later of now and the budget's
    /// end. So an attempt overruns the budget by at most that, or has that
    /// long of its own if it starts late (a first attempt on a loaded
    /// machine). No bounded step comes near it; rqrr's alignment search on
    /// a degenerate perspective does (`watched`). `None`: never (a budget
    /// past what the clock can count).
    pub(super) fn abandon_at(&self) -> Option<Instant> {
        let budget = self.budget.get();
        let end = self.start.checked_add(budget)?;
        end.max(Instant::now())
            .checked_add(budget.max(super::GATE_BUDGET))
    }

    /// Grows the budget by `more`, to at most `cap` (never shrinks it).
    pub(super) fn extend(&self, more: Duration, cap: Duration) {
        let grown = (self.budget.get() + more).min(cap);
        self.budget.set(grown.max(self.budget.get()));
    }

    /// The longest step between two checks so far.
    pub(super) fn longest(&self) -> Duration {
        self.longest.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clock_lets_the_first_attempt_run_and_stops_when_the_next_cannot_fit() {
        let none = Clock::new(Duration::ZERO);
        assert!(none.may_start());
        assert!(!none.may_start());
        let roomy = Clock::new(Duration::from_secs(600));
        assert!(roomy.may_start() && roomy.may_start());
        let tight = Clock::new(Duration::from_millis(30));
        assert!(tight.may_start());
        std::thread::sleep(Duration::from_millis(20));
        // 20 ms spent plus a 20 ms step would end past 30 ms.
        assert!(!tight.may_start());
        // Grown (as a still with many codes grows it), it lets the next
        // attempt start, up to its cap and never below what it was.
        tight.extend(Duration::from_secs(600), Duration::from_millis(400));
        assert!(tight.may_start());
        assert!(tight.fits(Duration::from_millis(300)) && !tight.fits(Duration::from_millis(400)));
        tight.extend(Duration::from_millis(1), Duration::from_millis(10));
        assert!(tight.may_start());
    }

    #[test]
    fn an_attempt_is_abandoned_a_budget_past_the_later_of_now_and_the_end() {
        let clock = Clock::new(Duration::from_millis(40));
        let until = clock.abandon_at().unwrap();
        assert!(until >= clock.start + Duration::from_millis(80));
        assert!(until <= Instant::now() + Duration::from_millis(80));
        // One starting late (past the end) still has a budget of its own,
        // and a short budget leaves it the gate's.
        let short = Clock::new(Duration::from_millis(1));
        std::thread::sleep(Duration::from_millis(5));
        let now = Instant::now();
        assert!(short.abandon_at().unwrap() >= now + super::super::GATE_BUDGET);
        // No end when the clock cannot count that far.
        assert_eq!(Clock::new(Duration::MAX).abandon_at(), None);
    }
}
