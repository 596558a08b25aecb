//! Settlements the store could not take yet: voids owed, vend successes
//! and gate outcomes not yet stored, retried with backoff until they are
//! written.
//!
//! The durable half is in the database: a vend's charge is committed as
//! pending delivery ([`crate::store::ReaderDb::pending_vends`]) and stays
//! so until its success or its void is committed, so nothing here is the
//! only copy. This book is the daemon's plan for the retries: which charge,
//! what to write, when to try again, and what went wrong last time, for the
//! log and the status file. Pure: time comes in, the caller does the writes.

use std::time::{Duration, Instant};

use crate::actuator::ActuationOutcome;
use crate::status_file::OwedSettlement;

use crate::backoff::Backoff;

/// The first wait before retrying a settlement that failed.
pub const RETRY_BASE: Duration = Duration::from_millis(500);
/// The longest wait between retries.
pub const RETRY_CAP: Duration = Duration::from_secs(30);

/// What is owed for a charge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settlement {
    /// A void record: the vend was not delivered.
    Void {
        /// Why (stored with the void).
        reason: String,
    },
    /// The machine's success: the charge stands once it is stored.
    Delivered {
        /// What was vended (stored with the success).
        detail: String,
    },
    /// What the gate did after the record was committed; until it is
    /// stored the opening stays in flight (settled as unknown at the next
    /// start if the daemon stops first).
    GateOutcome {
        /// The outcomes, in order, with the device's words.
        outcomes: Vec<(ActuationOutcome, String)>,
    },
}

#[derive(Debug, Clone)]
struct Entry {
    charge_seq: u64,
    device: String,
    settlement: Settlement,
    since: u64,
    last_error: String,
    backoff: Backoff,
    next: Instant,
}

/// The settlements owed, oldest first.
#[derive(Debug, Clone, Default)]
pub struct OwedBook {
    entries: Vec<Entry>,
}

impl OwedBook {
    /// Notes that `settlement` of `charge_seq` on `device` could not be
    /// written (`error`) at `now` (Unix `since`); the first retry is after
    /// a backoff (`unit` is a uniform random number in `[0, 1)`). A charge
    /// already in the book keeps its place; a void replaces a success.
    #[allow(clippy::too_many_arguments)]
    pub fn owe(
        &mut self,
        now: Instant,
        since: u64,
        charge_seq: u64,
        device: &str,
        settlement: Settlement,
        error: &str,
        unit: f64,
    ) {
        let is_void = matches!(settlement, Settlement::Void { .. });
        self.owe_now(now, since, charge_seq, device, settlement.clone());
        if let Some(e) = self.entries.iter_mut().find(|e| e.charge_seq == charge_seq) {
            if is_void {
                e.settlement = settlement;
            }
            e.last_error = error.into();
            e.next = now + e.backoff.failed(unit);
        }
    }

    /// A charge whose settlement is to be written now, not after a failure
    /// (the daemon's start): due at once.
    pub fn owe_now(
        &mut self,
        now: Instant,
        since: u64,
        charge_seq: u64,
        device: &str,
        settlement: Settlement,
    ) {
        if self.entries.iter().any(|e| e.charge_seq == charge_seq) {
            return;
        }
        self.entries.push(Entry {
            charge_seq,
            device: device.into(),
            settlement,
            since,
            last_error: String::new(),
            backoff: Backoff::new(RETRY_BASE, RETRY_CAP),
            next: now,
        });
    }

    /// The settlements due at `now`: charge, device, what to write.
    pub fn due(&self, now: Instant) -> Vec<(u64, String, Settlement)> {
        self.entries
            .iter()
            .filter(|e| e.next <= now)
            .map(|e| (e.charge_seq, e.device.clone(), e.settlement.clone()))
            .collect()
    }

    /// The settlement of `charge_seq` was written.
    pub fn settled(&mut self, charge_seq: u64) {
        self.entries.retain(|e| e.charge_seq != charge_seq);
    }

    /// Whether nothing is owed.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Voids owed.
    pub fn voids(&self) -> usize {
        self.entries
            .iter()
            .filter(|e| matches!(e.settlement, Settlement::Void { .. }))
            .count()
    }

    /// What the status file shows.
    pub fn report(&self) -> Vec<OwedSettlement> {
        self.entries
            .iter()
            .map(|e| OwedSettlement {
                charge_seq: e.charge_seq,
                owed: match e.settlement {
                    Settlement::Void { .. } => "void",
                    Settlement::Delivered { .. } => "vend_success",
                    Settlement::GateOutcome { .. } => "gate_outcome",
                }
                .into(),
                since: e.since,
                attempts: e.backoff.attempts(),
                last_error: e.last_error.clone(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn void() -> Settlement {
        Settlement::Void {
            reason: "vend failed: 3".into(),
        }
    }

    #[test]
    fn issue13_03_an_owed_void_is_retried_with_growing_waits_until_settled() {
        let t0 = Instant::now();
        let mut book = OwedBook::default();
        book.owe(t0, 100, 7, "mdb@pty", void(), "locked", 1.0);
        assert!(book.due(t0).is_empty(), "not retried at once");
        assert_eq!(book.due(t0 + RETRY_BASE).len(), 1);
        book.owe(
            t0 + RETRY_BASE,
            100,
            7,
            "mdb@pty",
            void(),
            "locked again",
            1.0,
        );
        assert!(book.due(t0 + RETRY_BASE * 2).is_empty(), "the wait doubled");
        assert_eq!(book.due(t0 + RETRY_BASE * 3)[0].0, 7);
        let report = book.report();
        assert_eq!(report.len(), 1);
        assert_eq!(
            (report[0].owed.as_str(), report[0].attempts, report[0].since),
            ("void", 2, 100)
        );
        assert_eq!(report[0].last_error, "locked again");
        assert_eq!(book.voids(), 1);
        book.settled(7);
        assert!(book.is_empty());
    }

    #[test]
    fn issue13_03_a_void_replaces_an_owed_success_and_waits_are_capped() {
        let t0 = Instant::now();
        let mut book = OwedBook::default();
        let delivered = Settlement::Delivered {
            detail: "item 1".into(),
        };
        book.owe(t0, 1, 3, "d", delivered, "locked", 1.0);
        assert_eq!(book.voids(), 0);
        book.owe(t0, 1, 3, "d", void(), "locked", 1.0);
        assert_eq!(book.voids(), 1);
        for _ in 0..40 {
            book.owe(t0, 1, 3, "d", void(), "locked", 1.0);
        }
        assert_eq!(
            book.due(t0 + RETRY_CAP).len(),
            1,
            "never longer than the cap"
        );
        book.owe_now(t0, 1, 3, "d", void());
        assert_eq!(book.report().len(), 1, "one entry per charge");
    }
}
