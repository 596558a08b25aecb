//! The thin serial drivers: a state machine run over a [`SerialLink`].
//!
//! [`Driver`] carries out a machine's outputs (writes; a failed write is
//! reported back to the machine as the port being gone, with the command
//! that was not delivered), feeds it what the port reads and the timers it
//! asks for, and reopens the port with backoff. [`Gate`] and [`Vending`] are
//! the two devices the daemon uses, with synchronous calls: open the gate
//! for a record, run one vend session.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use thiserror::Error;

use super::gate::{GateEvent, GateMachine, GateOutcome};
use super::mdb::{Denial, MdbEvent, MdbMachine, VendOutcome};
use super::profile::{Device, Profile};
use super::serial::{PortError, SerialLink};
use super::{Actuator, Output, Outputs};

/// The longest a driver sleeps between looks at the port and the stop flag.
const POLL: Duration = Duration::from_millis(20);

/// Why a driver could not be set up.
#[derive(Debug, Error)]
pub enum DriverError {
    /// The profile is for another kind of device.
    #[error("profile {profile} is a {found} profile, not a {wanted} profile")]
    WrongKind {
        /// The profile.
        profile: String,
        /// Its kind.
        found: &'static str,
        /// The kind needed.
        wanted: &'static str,
    },
    /// The port could not be opened.
    #[error(transparent)]
    Port(#[from] PortError),
}

/// Runs a machine over a serial link.
pub struct Driver<A: Actuator> {
    link: SerialLink,
    machine: A,
    stop: Option<Arc<AtomicBool>>,
    reported_error: Option<String>,
}

impl<A: Actuator> Driver<A> {
    /// A driver for `machine` on `link` (not yet open).
    pub fn new(link: SerialLink, machine: A) -> Self {
        Self {
            link,
            machine,
            stop: None,
            reported_error: None,
        }
    }

    /// The machine.
    pub fn machine(&self) -> &A {
        &self.machine
    }

    /// The link.
    pub fn link(&self) -> &SerialLink {
        &self.link
    }

    /// A flag that, once set (by a signal handler), makes [`Driver::pump`]
    /// return at once.
    pub fn set_stop(&mut self, flag: Arc<AtomicBool>) {
        self.stop = Some(flag);
    }

    /// Whether the stop flag is set.
    pub fn stopped(&self) -> bool {
        self.stop.as_ref().is_some_and(|f| f.load(Ordering::SeqCst))
    }

    /// Opens the port now, or says why not.
    pub fn connect(&mut self) -> Result<Vec<A::Event>, PortError> {
        if !self.link.is_open() {
            self.link.open()?;
            let now = Instant::now();
            let mut out = Vec::new();
            self.machine.connected(now, &mut out);
            return Ok(self.apply(out));
        }
        Ok(Vec::new())
    }

    /// Calls a machine method with the time now and carries out its outputs.
    pub fn with_machine(
        &mut self,
        f: impl FnOnce(&mut A, Instant, &mut Outputs<A>),
    ) -> Vec<A::Event> {
        let mut out = Vec::new();
        f(&mut self.machine, Instant::now(), &mut out);
        self.apply(out)
    }

    /// Carries out outputs in order; returns the events among them.
    pub fn apply(&mut self, out: Outputs<A>) -> Vec<A::Event> {
        let mut queue: VecDeque<_> = out.into();
        let mut events = Vec::new();
        while let Some(output) = queue.pop_front() {
            match output {
                Output::Event(event) => events.push(event),
                Output::Write { bytes, command } => {
                    if let Err(e) = self.link.write(&bytes) {
                        let now = Instant::now();
                        let reason = e.to_string();
                        self.link.close(now, &reason);
                        let mut more = Vec::new();
                        self.machine
                            .disconnected(now, Some(command), &reason, &mut more);
                        queue.extend(more);
                    }
                }
            }
        }
        events
    }

    /// Runs the port and the timers until the machine has something to say
    /// or `until` passes (or the stop flag is set).
    pub fn pump(&mut self, until: Instant) -> Vec<A::Event> {
        loop {
            let now = Instant::now();
            let mut events = Vec::new();
            if !self.link.is_open() {
                if self.link.try_open(now) {
                    self.reported_error = None;
                    let mut out = Vec::new();
                    self.machine.connected(now, &mut out);
                    events.extend(self.apply(out));
                } else if self.link.last_error() != self.reported_error.as_deref() {
                    // Tell the machine why the port is not there (once per reason).
                    self.reported_error = self.link.last_error().map(str::to_string);
                    let reason = self.reported_error.clone().unwrap_or_default();
                    let mut out = Vec::new();
                    self.machine.disconnected(now, None, &reason, &mut out);
                    events.extend(self.apply(out));
                }
            }
            if self.machine.deadline().is_some_and(|d| now >= d) {
                let mut out = Vec::new();
                self.machine.tick(now, &mut out);
                events.extend(self.apply(out));
            }
            if !events.is_empty() || self.stopped() {
                return events;
            }
            let mut wake = until;
            if let Some(d) = self.machine.deadline() {
                wake = wake.min(d);
            }
            if let Some(n) = self.link.next_attempt() {
                wake = wake.min(n);
            }
            let wait = wake.saturating_duration_since(now).min(POLL);
            if self.link.is_open() {
                match self.link.read(wait) {
                    Ok(bytes) if bytes.is_empty() => {}
                    Ok(bytes) => {
                        let mut out = Vec::new();
                        self.machine.received(Instant::now(), &bytes, &mut out);
                        events.extend(self.apply(out));
                    }
                    Err(e) => {
                        let now = Instant::now();
                        let reason = e.to_string();
                        self.link.close(now, &reason);
                        self.reported_error = Some(reason.clone());
                        let mut out = Vec::new();
                        self.machine.disconnected(now, None, &reason, &mut out);
                        events.extend(self.apply(out));
                    }
                }
            } else {
                std::thread::sleep(wait);
            }
            // At least one look at the port (a zero-time read finds a hang-up).
            if !events.is_empty() || Instant::now() >= until {
                return events;
            }
        }
    }
}

fn device_name(profile: &Profile, port: &Path) -> String {
    format!("{}@{}", profile.name, port.display())
}

/// A gate on a serial port.
pub struct Gate {
    driver: Driver<GateMachine>,
    device: String,
    notes: Vec<String>,
    limit: Duration,
}

impl Gate {
    /// A gate driven as `profile` says, on `port` or the profile's port.
    /// Nothing is opened yet: see [`Gate::connect`]; [`Gate::open_for`]
    /// opens the port itself when it can.
    pub fn new(profile: &Profile, port: Option<&Path>) -> Result<Self, DriverError> {
        let Device::Gate(cfg) = &profile.device else {
            return Err(DriverError::WrongKind {
                profile: profile.name.clone(),
                found: profile.kind().as_str(),
                wanted: "gate",
            });
        };
        let port = port.unwrap_or(&profile.port);
        let limit = cfg.deliver_within
            + cfg.pulse
            + cfg.ack_timeout.max(cfg.passage_timeout)
            + Duration::from_secs(2);
        Ok(Self {
            driver: Driver::new(
                SerialLink::new(port, profile.baud),
                GateMachine::new(cfg.clone()),
            ),
            device: device_name(profile, port),
            notes: Vec::new(),
            limit,
        })
    }

    /// Opens the port now (releasing the gate, as the profile's reset says).
    pub fn connect(&mut self) -> Result<(), PortError> {
        let events = self.driver.connect()?;
        self.absorb(events);
        Ok(())
    }

    /// `profile@port`, as stored with actuations.
    pub fn device(&self) -> &str {
        &self.device
    }

    /// Whether the port is open.
    pub fn is_connected(&self) -> bool {
        self.driver.link().is_open()
    }

    /// Stops an opening early (releasing the relay) when `flag` is set.
    pub fn set_stop(&mut self, flag: Arc<AtomicBool>) {
        self.driver.set_stop(flag);
    }

    /// Notes for the log since the last call (unexpected lines, port losses).
    pub fn take_notes(&mut self) -> Vec<String> {
        std::mem::take(&mut self.notes)
    }

    fn absorb(&mut self, events: Vec<GateEvent>) -> Option<GateOutcome> {
        let mut done = None;
        for event in events {
            match event {
                GateEvent::Note(note) => self.notes.push(note),
                GateEvent::Done(outcome) => done = Some(outcome),
            }
        }
        done
    }

    /// Opens the gate for committed record `seq`: writes the open command,
    /// releases after the pulse, and collects acknowledgement and passage.
    /// Store [`GateOutcome::actuations`] with the record.
    pub fn open_for(&mut self, seq: u64) -> GateOutcome {
        let started = Instant::now();
        let events = self.driver.pump(started);
        self.absorb(events);
        let events = self
            .driver
            .with_machine(|m, now, out| m.open(now, seq, out));
        let mut outcome = self.absorb(events);
        while outcome.is_none() {
            if self.driver.stopped() || started.elapsed() > self.limit {
                let events = self
                    .driver
                    .with_machine(|m, now, out| m.interrupt(now, out));
                outcome = self.absorb(events);
                if outcome.is_none() {
                    break;
                }
            } else {
                let events = self.driver.pump(started + self.limit);
                outcome = self.absorb(events);
            }
        }
        outcome.unwrap_or_else(|| GateOutcome {
            seq,
            delivery: super::gate::Delivery::Undeliverable("the opening did not finish".into()),
            ack: None,
            held: None,
            release: super::gate::Release::NotOpened,
            passage: super::gate::Passage::NotExpected,
        })
    }

    /// Writes the close command now if the relay may be held.
    pub fn release(&mut self) {
        let events = self.driver.with_machine(|m, now, out| m.release(now, out));
        self.absorb(events);
    }

    /// Keeps the port watched for `duration` (reconnecting, releasing a
    /// pending relay when the port returns); for a daemon between riders.
    pub fn idle(&mut self, duration: Duration) {
        let until = Instant::now() + duration;
        while Instant::now() < until && !self.driver.stopped() {
            let events = self.driver.pump(until);
            self.absorb(events);
        }
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        if self.driver.machine().relay_may_be_held() {
            self.release();
        }
    }
}

/// What the reader does when a vend is requested, approved or settled.
pub trait Charger {
    /// Commits the charge for `price` (minor units) and returns the record's
    /// sequence number, or why it is declined. Called before the vend is approved.
    fn charge(&mut self, price: u32, item: u16) -> Result<u64, Denial>;
    /// The vend of charge `seq` succeeded.
    fn vended(&mut self, seq: u64, price: u32, item: u16) -> Result<(), String>;
    /// The vend of charge `seq` failed, timed out or could not be approved: void it.
    fn void(&mut self, seq: u64, reason: &str) -> Result<(), String>;
}

/// How a vend session went, and whether settling it in the store worked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VendReport {
    /// The session's outcome.
    pub outcome: VendOutcome,
    /// The charger failed to record the success or the void: the operator
    /// must look (the outcome says what should have been stored).
    pub settle_error: Option<String>,
    /// Notes for the log (unknown lines, out-of-sequence messages).
    pub notes: Vec<String>,
}

/// A vending machine behind an MDB cashless-device adapter.
pub struct Vending {
    driver: Driver<MdbMachine>,
    device: String,
    notes: Vec<String>,
}

impl Vending {
    /// A vending machine driven as `profile` says, on `port` or the profile's port.
    pub fn new(profile: &Profile, port: Option<&Path>) -> Result<Self, DriverError> {
        let Device::Mdb(cfg) = &profile.device else {
            return Err(DriverError::WrongKind {
                profile: profile.name.clone(),
                found: profile.kind().as_str(),
                wanted: "mdb",
            });
        };
        let port = port.unwrap_or(&profile.port);
        Ok(Self {
            driver: Driver::new(
                SerialLink::new(port, profile.baud),
                MdbMachine::new(cfg.clone()),
            ),
            device: device_name(profile, port),
            notes: Vec::new(),
        })
    }

    /// Opens the port now (and enables the reader).
    pub fn connect(&mut self) -> Result<(), PortError> {
        let events = self.driver.connect()?;
        self.note_all(events);
        Ok(())
    }

    /// `profile@port`, as stored with actuations.
    pub fn device(&self) -> &str {
        &self.device
    }

    /// The state machine (for status).
    pub fn machine(&self) -> &MdbMachine {
        self.driver.machine()
    }

    /// Ends a session early when `flag` is set.
    pub fn set_stop(&mut self, flag: Arc<AtomicBool>) {
        self.driver.set_stop(flag);
    }

    fn note_all(&mut self, events: Vec<MdbEvent>) {
        for event in events {
            if let MdbEvent::Note(note) = event {
                self.notes.push(note);
            }
        }
    }

    /// Waits up to `timeout` for the machine to enable the reader.
    pub fn wait_ready(&mut self, timeout: Duration) -> bool {
        let until = Instant::now() + timeout;
        while !self.driver.machine().ready() && Instant::now() < until && !self.driver.stopped() {
            let events = self.driver.pump(until);
            self.note_all(events);
        }
        self.driver.machine().ready()
    }

    /// Runs one session offering `funds`: the charge is committed through
    /// `charger` before the vend is approved, kept on success and voided
    /// on failure, timeout or loss of the port.
    pub fn session(&mut self, funds: u32, charger: &mut dyn Charger) -> VendReport {
        let ready_timeout = self.driver.machine().config().ready_timeout;
        if !self.driver.machine().ready() {
            self.wait_ready(ready_timeout);
        }
        let mut pending: VecDeque<MdbEvent> = self
            .driver
            .with_machine(|m, now, out| m.begin_session(now, funds, out))
            .into();
        let outcome = loop {
            let Some(event) = pending.pop_front() else {
                if self.driver.stopped() {
                    pending.extend(self.driver.with_machine(|m, now, out| {
                        m.abort(now, "interrupted (the process is stopping)", out)
                    }));
                    if pending.is_empty() {
                        break VendOutcome::NoVend {
                            reason: "interrupted".into(),
                        };
                    }
                    continue;
                }
                let until = Instant::now() + Duration::from_secs(1);
                pending.extend(self.driver.pump(until));
                continue;
            };
            match event {
                MdbEvent::Charge { price, item } => {
                    let result = charger.charge(price, item);
                    pending.extend(
                        self.driver
                            .with_machine(|m, now, out| m.charged(now, result, out)),
                    );
                }
                MdbEvent::Done(outcome) => break outcome,
                MdbEvent::Note(note) => self.notes.push(note),
                MdbEvent::Ready => {}
            }
        };
        // What came with the outcome (notes) is kept; later events wait for the next session.
        for event in pending {
            if let MdbEvent::Note(note) = event {
                self.notes.push(note);
            }
        }
        let settle_error = match &outcome {
            VendOutcome::Vended { seq, price, item } => charger.vended(*seq, *price, *item).err(),
            VendOutcome::Voided { seq, reason, .. } => charger.void(*seq, reason).err(),
            _ => None,
        };
        VendReport {
            outcome,
            settle_error,
            notes: std::mem::take(&mut self.notes),
        }
    }
}
