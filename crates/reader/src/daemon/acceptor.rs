//! The acceptor: the one thread that owns the [`Reader`] and the actuator.
//!
//! Tokens are served in the order they were decoded: decide and commit the
//! record, then actuate (the gate's open command, or an MDB vend session
//! whose charge is committed before approval), then tell the rider. The
//! gate never opens without a committed record because the open command is
//! only ever written for a `seq` that [`Reader::present`] returned.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::Shared;
use super::owed::{OwedBook, Settlement};
use super::rules::{Admit, Feedback, Lifecycle, Phase, Refusal, Tap};
use crate::actuator::mdb::VendOutcome;
use crate::actuator::profile::DisplayConfig;
use crate::actuator::{Gate, Vending};
use crate::reader::Reader;
use crate::store::VoidError;
use crate::vend::{ReaderCharger, void_vend};
use sonotap_disk::sqlite::BUSY_TIMEOUT;

/// What the acceptor is sent.
#[derive(Debug)]
pub enum Msg {
    /// A decoded token.
    Tap(Tap),
    /// SIGHUP: new settings; reload keys and the deny list.
    Reload(Settings),
}

/// What can change on SIGHUP without a restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// The gate's fixed fare, overriding the reader's.
    pub fare: Option<u32>,
}

/// The device the acceptor drives.
pub enum DrivenDevice {
    /// None: decide and record only.
    None,
    /// A gate.
    Gate(Box<Gate>),
    /// A vending machine.
    Vending(Box<Vending>),
}

/// Where the rider is told the decision: a tone, a display line.
#[derive(Default)]
pub struct Tell {
    /// The tone thread.
    pub tone: Option<Sender<Feedback>>,
    /// The display's lines and the display thread.
    pub display: Option<(DisplayConfig, Sender<Vec<u8>>)>,
}

/// The acceptor's state.
pub struct Acceptor {
    reader: Reader,
    actuator: DrivenDevice,
    settings: Settings,
    shared: Arc<Shared>,
    tell: Tell,
    life: Lifecycle,
    connected: Option<bool>,
    /// When the queue depth was last counted exactly.
    counted: Instant,
    /// The longest one device transaction may take.
    busy_bound: Duration,
    /// Vend settlements the store could not take yet, retried.
    owed: OwedBook,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Acceptor {
    /// An acceptor for `reader` driving `actuator`.
    pub fn new(
        reader: Reader,
        actuator: DrivenDevice,
        settings: Settings,
        shared: Arc<Shared>,
        tell: Tell,
        busy_bound: Duration,
    ) -> Self {
        Self {
            reader,
            actuator,
            settings,
            shared,
            tell,
            life: Lifecycle::new(),
            connected: None,
            counted: Instant::now(),
            busy_bound,
            owed: OwedBook::default(),
        }
    }

    /// Serves taps until stopped (see [`Shared::drain_until`]) or every sender is gone.
    pub fn run(mut self, rx: Receiver<Msg>) {
        self.settle_gate_openings();
        self.settle_pending_vends();
        self.note_queue_depth();
        self.watch_device();
        loop {
            self.shared.beat();
            if let Some(until) = self.shared.drain_until() {
                self.life.stop(until);
            }
            let next = match self.life.phase() {
                Phase::Running => match rx.recv_timeout(Duration::from_millis(50)) {
                    Ok(m) => Some(m),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => break,
                },
                Phase::Draining { .. } => match rx.try_recv() {
                    Ok(m) => Some(m),
                    Err(TryRecvError::Empty) => {
                        if self.life.finished(true) {
                            break;
                        }
                        None
                    }
                    Err(TryRecvError::Disconnected) => break,
                },
            };
            match next {
                Some(Msg::Tap(tap)) => match self.life.admit(Instant::now()) {
                    Admit::Serve => self.serve(tap),
                    Admit::NotServed => {
                        self.shared.metrics.not_served();
                        tracing::warn!(
                            source = tap.source.as_str(),
                            "token not served: the daemon is stopping (nothing was charged)"
                        );
                    }
                },
                Some(Msg::Reload(settings)) => {
                    self.settings = settings;
                    match self.reader.reload_keys() {
                        Ok(()) => tracing::info!(
                            "reloaded issuer keys and settings; the deny list is read at every tap"
                        ),
                        Err(e) => tracing::error!("reload: {e}"),
                    }
                }
                None => {
                    if self.shared.keys_changed.swap(false, Ordering::Relaxed)
                        && let Err(e) = self.reader.reload_keys()
                    {
                        tracing::error!("reloading keys after a sync: {e}");
                    }
                    self.idle();
                }
            }
        }
        if !self.owed.is_empty() {
            self.settle_owed();
        }
        if !self.owed.is_empty() {
            tracing::error!(
                owed = self.owed.voids(),
                "stopping with vend settlements owed; their charges stay pending in the \
                 database and are voided at the next start"
            );
        }
        if let DrivenDevice::Gate(gate) = &mut self.actuator {
            gate.release();
            for note in gate.take_notes() {
                tracing::info!("gate: {note}");
            }
        }
        tracing::info!("acceptor stopped");
    }

    /// At start, before serving: every gate opening a stopped daemon left
    /// in flight (killed while its gate was open, or the outcome's write
    /// failed) is stored as the outcome `unknown`, the gate having been
    /// released at start, so that an operator can tell that record from
    /// one whose outcome is known.
    fn settle_gate_openings(&mut self) {
        let now = self.now();
        match self.reader.settle_gate_openings(now) {
            Ok(settled) => {
                for seq in settled {
                    tracing::warn!(
                        seq,
                        "the daemon stopped (or could not store the gate's outcome) after \
                         this record was committed: its outcome is stored as unknown \
                         (released at start)"
                    );
                }
            }
            Err(e) => tracing::error!("settling the gate openings left in flight: {e}"),
        }
    }

    /// At start, before serving: every vend charge still pending delivery
    /// (its session ended without its success or its void being stored,
    /// or the daemon stopped during it) is voided; a void that cannot be
    /// written now is owed and retried.
    fn settle_pending_vends(&mut self) {
        let pending = match self.reader.pending_vends() {
            Ok(p) => p,
            Err(e) => {
                tracing::error!("reading the vend charges pending delivery: {e}");
                return;
            }
        };
        let now = Instant::now();
        for p in pending {
            tracing::warn!(
                seq = p.charge_seq,
                device = p.device.as_str(),
                "a vend charged at {} was never confirmed delivered: voiding it",
                p.at
            );
            self.owed.owe_now(
                now,
                self.now(),
                p.charge_seq,
                &p.device,
                Settlement::Void {
                    reason: "the vend was not confirmed delivered before the daemon stopped".into(),
                },
            );
        }
        self.settle_owed();
    }

    /// Writes the settlements that are due; what fails stays owed, with a
    /// longer wait. Only a committed void is logged as "voided".
    fn settle_owed(&mut self) {
        for (seq, device, settlement) in self.owed.due(Instant::now()) {
            self.shared.busy_for(BUSY_TIMEOUT + Duration::from_secs(1));
            let now = self.now();
            let result = match &settlement {
                Settlement::Void { reason } => {
                    match void_vend(&mut self.reader, seq, reason, &device, now) {
                        Ok(()) => Ok(()),
                        Err(VoidError::Store(e)) => Err(e.to_string()),
                        Err(e) => {
                            // No void can ever be written for it: retrying cannot help.
                            tracing::error!(
                                seq,
                                "the owed void cannot be written ({e}); the operator must look"
                            );
                            self.owed.settled(seq);
                            continue;
                        }
                    }
                }
                Settlement::Delivered { detail } => self
                    .reader
                    .confirm_vend(seq, now, &device, detail)
                    .map_err(|e| e.to_string()),
                Settlement::GateOutcome { outcomes } => self
                    .reader
                    .record_gate_outcome(seq, now, &device, outcomes)
                    .map_err(|e| e.to_string()),
            };
            match (result, &settlement) {
                (Ok(()), Settlement::Void { reason }) => {
                    self.owed.settled(seq);
                    tracing::warn!(seq, "owed void written: charge voided ({reason})");
                }
                (Ok(()), Settlement::Delivered { .. }) => {
                    self.owed.settled(seq);
                    tracing::info!(seq, "vend success stored: the charge stands");
                }
                (Ok(()), Settlement::GateOutcome { .. }) => {
                    self.owed.settled(seq);
                    tracing::info!(seq, "gate outcome stored");
                }
                (Err(e), _) => {
                    tracing::warn!(seq, "settlement owed, will retry: {e}");
                    self.owed
                        .owe(Instant::now(), now, seq, &device, settlement, &e, jitter());
                }
            }
        }
        self.shared.beat();
        self.shared.set_owed(self.owed.report());
    }

    fn idle(&mut self) {
        if !self.owed.is_empty() {
            self.settle_owed();
        }
        match &mut self.actuator {
            DrivenDevice::None => {}
            DrivenDevice::Gate(gate) => gate.idle(Duration::from_millis(1)),
            DrivenDevice::Vending(_) => {}
        }
        self.watch_device();
        // Commits count themselves; an exact count now and then corrects
        // for what the uplink acknowledged meanwhile.
        if self.counted.elapsed() >= Duration::from_secs(5) {
            self.note_queue_depth();
        }
    }

    /// Reports the actuator's port state when it changes.
    fn watch_device(&mut self) {
        let (name, connected, detail) = match &mut self.actuator {
            DrivenDevice::None => return,
            DrivenDevice::Gate(gate) => {
                for note in gate.take_notes() {
                    tracing::info!("gate: {note}");
                }
                (Some("gate"), gate.is_connected(), gate.device().to_string())
            }
            DrivenDevice::Vending(v) => {
                (Some("vending"), v.machine().ready(), v.device().to_string())
            }
        };
        let Some(name) = name else { return };
        if self.connected != Some(connected) {
            self.connected = Some(connected);
            let detail = if connected {
                detail
            } else {
                format!("{detail}: port not open (retrying)")
            };
            self.shared.device(name, connected, &detail);
        }
    }

    fn note_queue_depth(&mut self) {
        self.counted = Instant::now();
        match self.reader.summary() {
            Ok(s) => self.shared.metrics.set_queue_depth(s.unsynced),
            Err(e) => tracing::error!("queue depth: {e}"),
        }
    }

    /// Tells the rider (never blocks: both run on their own threads); a
    /// decline shows `refusal`.
    fn tell(&self, feedback: Feedback, amount: Option<u32>, refusal: Option<Refusal>) {
        if let Some(tx) = &self.tell.tone {
            let _ = tx.send(feedback);
        }
        if let Some((display, tx)) = &self.tell.display {
            let reason = refusal.map_or("", Refusal::as_str);
            let _ = tx.send(display.line(feedback == Feedback::Accept, amount, reason));
        }
    }

    /// Counts a decline and tells the rider.
    fn decline(&self, refusal: Refusal, amount: Option<u32>) {
        self.shared.metrics.decline(refusal);
        self.tell(Feedback::Decline, amount, Some(refusal));
    }

    fn now(&self) -> u64 {
        let system = unix_now();
        self.reader.adjusted_now(system).unwrap_or(system)
    }

    fn serve(&mut self, tap: Tap) {
        if !self.owed.is_empty() {
            self.settle_owed();
        }
        let metrics = Arc::clone(&self.shared.metrics);
        metrics.tap(
            tap.source,
            tap.decoded_at.saturating_duration_since(tap.frame_end),
        );
        if let DrivenDevice::Vending(_) = self.actuator {
            self.vend(tap);
            return;
        }
        let now = self.now();
        let started = Instant::now();
        let fare = self.settings.fare.and_then(NonZeroU32::new);
        let presented = match &self.actuator {
            DrivenDevice::Gate(gate) => {
                let device = gate.device().to_string();
                self.reader
                    .present_at_gate(&tap.payload, fare, &device, now)
            }
            _ => self.reader.present(&tap.payload, fare, now),
        };
        let outcome = match presented {
            Ok(o) => o,
            Err(e) => {
                tracing::error!("the reader's store failed, nothing charged, gate not opened: {e}");
                self.decline(Refusal::StoreError, None);
                return;
            }
        };
        let committed_at = Instant::now();
        metrics.commit(committed_at - started);
        let wallet = outcome.wallet.map(|w| w.to_string()).unwrap_or_default();
        match outcome.decision {
            Err(decline) => {
                tracing::info!(
                    source = tap.source.as_str(),
                    reason = decline.reason.as_str(),
                    wallet = %wallet,
                    counter = outcome.counter,
                    "declined: {}",
                    decline.detail
                );
                self.decline(Refusal::Policy(decline.reason), outcome.amount);
            }
            Ok(committed) => {
                metrics.accept(tap.source);
                metrics.queued_one();
                self.tell(Feedback::Accept, Some(committed.charge), None);
                let seq = committed.seq;
                let mut open_written = None;
                if let DrivenDevice::Gate(gate) = &mut self.actuator {
                    // open_for writes the open command at once, then holds the pulse.
                    let at = Instant::now();
                    open_written = Some(at);
                    metrics.actuated(at.saturating_duration_since(tap.frame_end));
                    self.shared.busy_for(self.busy_bound);
                    let result = gate.open_for(seq);
                    self.shared.beat();
                    let device = gate.device().to_string();
                    let delivered = result.delivered();
                    let now = self.now();
                    let outcomes = result.actuations();
                    if let Err(e) = self
                        .reader
                        .record_gate_outcome(seq, now, &device, &outcomes)
                    {
                        // Retried like an owed void: the opening stays in
                        // flight in the store until its outcome is written.
                        tracing::error!(seq, "storing the gate's outcome, will retry: {e}");
                        self.owed.owe(
                            Instant::now(),
                            now,
                            seq,
                            &device,
                            Settlement::GateOutcome { outcomes },
                            &e.to_string(),
                            jitter(),
                        );
                        self.shared.set_owed(self.owed.report());
                    }
                    if !delivered {
                        metrics.device_error("gate");
                        tracing::warn!(
                            seq,
                            "gate opening undeliverable: {:?} (the record is flagged)",
                            result.delivery
                        );
                    }
                }
                let ms =
                    |t: Instant| t.saturating_duration_since(tap.frame_end).as_secs_f64() * 1e3;
                tracing::info!(
                    seq,
                    source = tap.source.as_str(),
                    wallet = %wallet,
                    counter = outcome.counter,
                    amount = committed.charge,
                    "accepted"
                );
                tracing::debug!(
                    seq,
                    decoded_ms = ms(tap.decoded_at),
                    committed_ms = ms(committed_at),
                    open_written_ms = open_written.map(ms),
                    "tap timings from the end of the frame"
                );
            }
        }
        self.watch_device();
    }

    fn vend(&mut self, tap: Tap) {
        let metrics = Arc::clone(&self.shared.metrics);
        // Every check that does not depend on the price runs before a
        // session begins: a token that would be declined opens none, and
        // the session offers no more than a charge could be.
        let now = self.now();
        let offer = match self.reader.offer(&tap.payload, now) {
            Ok(offer) => offer,
            Err(e) => {
                tracing::error!("the reader's store failed, nothing charged, no vend session: {e}");
                self.decline(Refusal::StoreError, None);
                return;
            }
        };
        let funds = match offer.decision {
            Ok(funds) => funds,
            Err(decline) => {
                tracing::info!(
                    source = tap.source.as_str(),
                    reason = decline.reason.as_str(),
                    wallet = %offer.wallet.map(|w| w.to_string()).unwrap_or_default(),
                    counter = offer.counter,
                    "declined before any vend session: {}",
                    decline.detail
                );
                self.decline(Refusal::Policy(decline.reason), offer.amount);
                return;
            }
        };
        let offset = now as i64 - unix_now() as i64;
        let clock = move || unix_now().saturating_add_signed(offset);
        let DrivenDevice::Vending(vending) = &mut self.actuator else {
            return;
        };
        let device = vending.device().to_string();
        let mut charger = ReaderCharger::new(&mut self.reader, &tap.payload, &device, &clock);
        self.shared.busy_for(self.busy_bound);
        let report = vending.session(funds, &mut charger);
        self.shared.beat();
        for note in &report.notes {
            tracing::info!("vending: {note}");
        }
        match &report.outcome {
            VendOutcome::Vended { seq, price, item } => {
                metrics.accept(tap.source);
                metrics.actuated(Instant::now().saturating_duration_since(tap.frame_end));
                tracing::info!(seq, price, item, "vended");
                if let Some(e) = &report.settle_error {
                    tracing::error!(
                        seq,
                        "storing the vend's success failed, will retry (until it is stored the \
                         charge is pending, and it is voided if the daemon stops first): {e}"
                    );
                    self.owed.owe(
                        Instant::now(),
                        self.now(),
                        *seq,
                        &device,
                        Settlement::Delivered {
                            detail: format!("item {item} at {price}"),
                        },
                        e,
                        jitter(),
                    );
                }
                self.tell(Feedback::Accept, Some(*price), None);
            }
            VendOutcome::Denied { reason, .. } => {
                let refusal = Refusal::from(reason);
                tracing::info!(reason = refusal.as_str(), "vend denied: {reason}");
                self.decline(refusal, None);
            }
            VendOutcome::Voided { seq, reason, .. } => {
                match &report.settle_error {
                    None => tracing::warn!(seq, "vend failed, charge voided: {reason}"),
                    Some(e) => {
                        tracing::warn!(
                            seq,
                            "vend failed ({reason}); writing the void failed: void owed, will retry: {e}"
                        );
                        self.owed.owe(
                            Instant::now(),
                            self.now(),
                            *seq,
                            &device,
                            Settlement::Void {
                                reason: reason.clone(),
                            },
                            e,
                            jitter(),
                        );
                    }
                }
                self.decline(Refusal::VendFailed, None);
            }
            VendOutcome::NoVend { reason } | VendOutcome::NotStarted { reason } => {
                metrics.decline(Refusal::NoVend);
                tracing::info!("no vend: {reason}");
            }
        }
        self.shared.set_owed(self.owed.report());
        self.note_queue_depth();
        self.watch_device();
    }
}

/// A uniform random number in `[0, 1)` for the backoff's jitter.
fn jitter() -> f64 {
    let mut b = [0u8; 8];
    match getrandom::fill(&mut b) {
        Ok(()) => (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64,
        Err(_) => 0.5,
    }
}
