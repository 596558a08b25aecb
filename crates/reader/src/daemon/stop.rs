//! The daemon's one stop signal (mini-redis's `shutdown.rs` is the model):
//! fired once, when SIGTERM or SIGINT arrives or the acceptor dies, and seen
//! by every thread. Capture threads stop at once (their naps wake when it
//! fires), the acceptor serves what is already decoded until
//! [`DRAIN_GRACE`](super::rules::DRAIN_GRACE) after it fired, and the
//! uplink ends its round.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// A stop signal shared by clones: fire one, every clone sees it.
#[derive(Debug, Clone, Default)]
pub struct Stop {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// When it fired; the condition variable wakes the nappers.
    fired_at: Mutex<Option<Instant>>,
    woken: Condvar,
    /// The same fact, for loops that poll a flag (the uplink's).
    flag: AtomicBool,
}

impl Stop {
    /// A signal not fired yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Fires the signal at `now`; firing again keeps the first time.
    pub fn fire(&self, now: Instant) {
        if let Ok(mut at) = self.inner.fired_at.lock() {
            at.get_or_insert(now);
        }
        self.inner.flag.store(true, Ordering::SeqCst);
        self.inner.woken.notify_all();
    }

    /// Whether it fired.
    pub fn is_fired(&self) -> bool {
        self.inner.flag.load(Ordering::SeqCst)
    }

    /// When it fired.
    pub fn fired_at(&self) -> Option<Instant> {
        self.inner.fired_at.lock().ok().and_then(|at| *at)
    }

    /// Sleeps up to `d`, waking as soon as the signal fires; false if it fired.
    pub fn nap(&self, d: Duration) -> bool {
        let until = Instant::now() + d;
        let Ok(mut at) = self.inner.fired_at.lock() else {
            return !self.is_fired();
        };
        while at.is_none() {
            let now = Instant::now();
            if now >= until {
                return true;
            }
            match self.inner.woken.wait_timeout(at, until - now) {
                Ok((guard, _)) => at = guard,
                Err(_) => return !self.is_fired(),
            }
        }
        false
    }

    /// The signal as a flag, for a loop that polls one.
    pub fn flag(&self) -> &AtomicBool {
        &self.inner.flag
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::thread;

    #[test]
    fn a_nap_runs_its_length_when_nothing_fires() {
        let stop = Stop::new();
        let t0 = Instant::now();
        assert!(stop.nap(Duration::from_millis(30)));
        assert!(t0.elapsed() >= Duration::from_millis(30));
        assert!(!stop.is_fired() && stop.fired_at().is_none());
    }

    #[test]
    fn firing_wakes_every_napping_clone_at_once() {
        let stop = Stop::new();
        let nappers: Vec<_> = (0..3)
            .map(|_| {
                let stop = stop.clone();
                thread::spawn(move || {
                    let t0 = Instant::now();
                    let slept_through = stop.nap(Duration::from_secs(30));
                    (slept_through, t0.elapsed())
                })
            })
            .collect();
        thread::sleep(Duration::from_millis(50));
        stop.fire(Instant::now());
        for napper in nappers {
            let (slept_through, took) = napper.join().unwrap();
            assert!(!slept_through);
            assert!(took < Duration::from_secs(5), "{took:?}");
        }
        assert!(stop.flag().load(Ordering::SeqCst));
    }

    #[test]
    fn a_second_fire_keeps_the_first_time_and_a_fired_stop_never_naps() {
        let stop = Stop::new();
        let t0 = Instant::now();
        stop.fire(t0);
        stop.fire(t0 + Duration::from_secs(9));
        assert_eq!(stop.fired_at(), Some(t0));
        assert!(!stop.nap(Duration::from_secs(30)));
    }
}
