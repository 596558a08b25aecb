//! The gate's challenges: what its beacon announces, and which bindings
//! the policy takes (see `sonotap_protocol::beacon`).
//!
//! [`ChallengeBook`] is pure: it takes `now` and fresh random bytes and
//! keeps the challenges it announced. A challenge is drawn per period, lives
//! for a while after it was first announced (a phone hears the beacon,
//! signs and plays its token within a few seconds), and is remembered a
//! while longer, so that a late token is told apart (`stale_token`) from
//! one made for another gate (`wrong_scope`).

use std::collections::VecDeque;

use sonotap_protocol::beacon::Beacon;
use sonotap_protocol::policy::IssuedChallenge;

/// How a gate's beacon behaves, checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChallengeTiming {
    /// Seconds between two challenges.
    pub period_secs: u64,
    /// Seconds a challenge is accepted after it was first announced.
    pub life_secs: u64,
}

impl ChallengeTiming {
    /// A new challenge every 10 s, each accepted for 30 s: a rider who hears
    /// the beacon as they reach the gate has at least 20 s to pay, and a
    /// recording is worthless half a minute later.
    pub const DEFAULT: ChallengeTiming = ChallengeTiming {
        period_secs: 10,
        life_secs: 30,
    };

    /// How long announced challenges are remembered: ten lives, so a late
    /// token gets `stale_token` rather than `wrong_scope`.
    fn remember_secs(self) -> u64 {
        self.life_secs * 10
    }
}

/// The challenges one gate announced.
#[derive(Debug, Clone)]
pub struct ChallengeBook {
    reader_tag: u32,
    timing: ChallengeTiming,
    /// Oldest first: (first announced at, challenge).
    issued: VecDeque<(u64, [u8; 8])>,
}

impl ChallengeBook {
    /// A book for the gate with `reader_tag`.
    pub fn new(reader_tag: u32, timing: ChallengeTiming) -> Self {
        Self {
            reader_tag,
            timing,
            issued: VecDeque::new(),
        }
    }

    /// The beacon to announce at `now`: the current challenge, or a new one
    /// made of `fresh` once the period has passed; forgets challenges past
    /// remembering.
    pub fn beacon(&mut self, now: u64, fresh: impl FnOnce() -> [u8; 8]) -> Beacon {
        let due = match self.issued.back() {
            Some(&(at, _)) => now >= at + self.timing.period_secs || now < at,
            None => true,
        };
        if due {
            self.issued.push_back((now, fresh()));
        }
        let horizon = now.saturating_sub(self.timing.remember_secs());
        while self.issued.len() > 1 && self.issued.front().is_some_and(|(at, _)| *at < horizon) {
            self.issued.pop_front();
        }
        let challenge = self.issued.back().map_or([0; 8], |(_, c)| *c);
        Beacon {
            reader_tag: self.reader_tag,
            challenge,
            reader_time: u32::try_from(now).unwrap_or(u32::MAX),
        }
    }

    /// What the policy needs: every remembered challenge's binding and when
    /// it was first announced.
    pub fn issued(&self) -> Vec<IssuedChallenge> {
        self.issued
            .iter()
            .map(|(at, challenge)| IssuedChallenge {
                binding: sonotap_protocol::token::gate_binding(self.reader_tag, challenge),
                issued_at: *at,
            })
            .collect()
    }

    /// Seconds a challenge lives.
    pub fn life_secs(&self) -> u64 {
        self.timing.life_secs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn book() -> ChallengeBook {
        ChallengeBook::new(0x0102_0304, ChallengeTiming::DEFAULT)
    }

    #[test]
    fn a_challenge_is_kept_for_its_period_then_a_fresh_one_is_drawn() {
        let mut b = book();
        let first = b.beacon(1000, || [1; 8]);
        assert_eq!(first.challenge, [1; 8]);
        assert_eq!(first.reader_time, 1000);
        assert_eq!(b.beacon(1009, || [2; 8]).challenge, [1; 8]);
        let next = b.beacon(1010, || [2; 8]);
        assert_eq!(next.challenge, [2; 8]);
        assert_eq!(next.reader_tag, 0x0102_0304);
        let issued = b.issued();
        assert_eq!(issued.len(), 2);
        assert_eq!(issued[0].issued_at, 1000);
        assert_eq!(issued[1].binding, next.binding());
    }

    #[test]
    fn old_challenges_are_forgotten_after_ten_lives_but_the_current_one_never() {
        let mut b = book();
        b.beacon(1000, || [1; 8]);
        b.beacon(1010, || [2; 8]);
        b.beacon(1000 + 300, || [3; 8]);
        assert_eq!(b.issued().len(), 3, "1000 is exactly at the horizon: kept");
        b.beacon(1000 + 301, || [4; 8]);
        assert_eq!(b.issued().len(), 2, "1000 is past it, 1010 and 1300 within");
        b.beacon(5000, || [5; 8]);
        assert_eq!(b.issued().len(), 1);
        assert_eq!(b.issued()[0].issued_at, 5000);
    }

    #[test]
    fn a_clock_that_steps_back_draws_a_fresh_challenge() {
        let mut b = book();
        b.beacon(1000, || [1; 8]);
        assert_eq!(b.beacon(900, || [2; 8]).challenge, [2; 8]);
    }
}
