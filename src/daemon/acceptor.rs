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
use super::core::{Admit, Feedback, Lifecycle, Tap, vend_decline_reason};
use crate::actuator::mdb::VendOutcome;
use crate::actuator::profile::DisplayConfig;
use crate::actuator::{Gate, ReaderCharger, Vending};
use crate::reader::Reader;
use crate::token::Token;

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
pub enum Actuator {
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
    actuator: Actuator,
    settings: Settings,
    shared: Arc<Shared>,
    tell: Tell,
    life: Lifecycle,
    connected: Option<bool>,
    /// When the queue depth was last counted exactly.
    counted: Instant,
    /// The longest one device transaction may take.
    busy_bound: Duration,
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
        actuator: Actuator,
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
        }
    }

    /// Serves taps until stopped (see [`Shared::drain_until`]) or every sender is gone.
    pub fn run(mut self, rx: Receiver<Msg>) {
        self.note_queue_depth();
        self.watch_device();
        loop {
            self.shared.beat();
            if let Some(until) = self.shared.drain_until() {
                self.life.stop(until);
            }
            let next = match self.life.phase() {
                super::core::Phase::Running => match rx.recv_timeout(Duration::from_millis(50)) {
                    Ok(m) => Some(m),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => break,
                },
                super::core::Phase::Draining { .. } => match rx.try_recv() {
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
        if let Actuator::Gate(gate) = &mut self.actuator {
            gate.release();
            for note in gate.take_notes() {
                tracing::info!("gate: {note}");
            }
        }
        tracing::info!("acceptor stopped");
    }

    fn idle(&mut self) {
        match &mut self.actuator {
            Actuator::None => {}
            Actuator::Gate(gate) => gate.idle(Duration::from_millis(1)),
            Actuator::Vending(_) => {}
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
            Actuator::None => return,
            Actuator::Gate(gate) => {
                for note in gate.take_notes() {
                    tracing::info!("gate: {note}");
                }
                (Some("gate"), gate.is_connected(), gate.device().to_string())
            }
            Actuator::Vending(v) => (Some("vending"), v.machine().ready(), v.device().to_string()),
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
        match self.reader.db().summary() {
            Ok(s) => self.shared.metrics.set_queue_depth(s.unsynced),
            Err(e) => tracing::error!("queue depth: {e}"),
        }
    }

    /// Tells the rider (never blocks: both run on their own threads).
    fn tell(&self, feedback: Feedback, amount: Option<u32>, reason: &str) {
        if let Some(tx) = &self.tell.tone {
            let _ = tx.send(feedback);
        }
        if let Some((display, tx)) = &self.tell.display {
            let _ = tx.send(display.line(feedback == Feedback::Accept, amount, reason));
        }
    }

    fn now(&self) -> u64 {
        let system = unix_now();
        self.reader.adjusted_now(system).unwrap_or(system)
    }

    fn serve(&mut self, tap: Tap) {
        let metrics = Arc::clone(&self.shared.metrics);
        metrics.tap(
            tap.source,
            tap.decoded_at.saturating_duration_since(tap.frame_end),
        );
        if let Actuator::Vending(_) = self.actuator {
            self.vend(tap);
            return;
        }
        let now = self.now();
        let started = Instant::now();
        let fare = self.settings.fare.and_then(NonZeroU32::new);
        let outcome = match self.reader.present(&tap.payload, fare, now) {
            Ok(o) => o,
            Err(e) => {
                tracing::error!("the reader's store failed, nothing charged, gate not opened: {e}");
                metrics.decline("store_error");
                self.tell(Feedback::Decline, None, "store_error");
                return;
            }
        };
        let committed_at = Instant::now();
        metrics.commit(committed_at - started);
        let wallet = outcome.wallet.map(|w| w.to_string()).unwrap_or_default();
        match outcome.decision {
            Err(decline) => {
                metrics.decline(decline.reason.as_str());
                tracing::info!(
                    source = tap.source.as_str(),
                    reason = decline.reason.as_str(),
                    wallet = %wallet,
                    counter = outcome.counter,
                    "declined: {}",
                    decline.detail
                );
                self.tell(Feedback::Decline, outcome.amount, decline.reason.as_str());
            }
            Ok(committed) => {
                metrics.accept(tap.source);
                metrics.queued_one();
                self.tell(Feedback::Accept, Some(committed.charge), "");
                let seq = committed.seq;
                let mut open_written = None;
                if let Actuator::Gate(gate) = &mut self.actuator {
                    // open_for writes the open command at once, then holds the pulse.
                    let at = Instant::now();
                    open_written = Some(at);
                    metrics.actuated(at.saturating_duration_since(tap.frame_end));
                    self.shared.busy_for(self.busy_bound);
                    let result = gate.open_for(seq);
                    self.shared.beat();
                    let device = gate.device().to_string();
                    let delivered = result.delivered();
                    for (what, detail) in result.actuations() {
                        if let Err(e) =
                            self.reader
                                .record_actuation(seq, self.now(), &device, what, &detail)
                        {
                            tracing::error!(seq, "storing the gate's outcome: {e}");
                        }
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
        let Ok(token) = Token::decode(&tap.payload) else {
            metrics.decline("malformed");
            tracing::info!(source = tap.source.as_str(), "declined: not a token");
            self.tell(Feedback::Decline, None, "malformed");
            return;
        };
        let funds = token.payment.amount;
        let offset = self.now() as i64 - unix_now() as i64;
        let clock = move || unix_now().saturating_add_signed(offset);
        let Actuator::Vending(vending) = &mut self.actuator else {
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
        if let Some(e) = &report.settle_error {
            tracing::error!("vending: settling the session in the store failed: {e}");
        }
        match &report.outcome {
            VendOutcome::Vended { seq, price, item } => {
                metrics.accept(tap.source);
                metrics.actuated(Instant::now().saturating_duration_since(tap.frame_end));
                tracing::info!(seq, price, item, "vended");
                self.tell(Feedback::Accept, Some(*price), "");
            }
            VendOutcome::Denied { reason, .. } => {
                let label = vend_decline_reason(reason);
                metrics.decline(label);
                tracing::info!("vend denied: {reason}");
                self.tell(Feedback::Decline, None, label);
            }
            VendOutcome::Voided { seq, reason, .. } => {
                metrics.decline("vend_failed");
                tracing::warn!(seq, "vend failed, charge voided: {reason}");
                self.tell(Feedback::Decline, None, "vend_failed");
            }
            VendOutcome::NoVend { reason } | VendOutcome::NotStarted { reason } => {
                metrics.decline("no_vend");
                tracing::info!("no vend: {reason}");
            }
        }
        self.note_queue_depth();
        self.watch_device();
    }
}
