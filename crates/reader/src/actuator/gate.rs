//! The gate: a relay pulsed by byte strings or a controller driven by text
//! lines, as a pure state machine.
//!
//! One opening at a time: `open(seq)` writes the open command (at once, or
//! when the port returns within `deliver_within`), writes the close command
//! `pulse` later, and collects the acknowledgement and passage report the
//! profile expects. The outcome says whether the command was delivered
//! (written, and acknowledged if the device acknowledges), whether the relay
//! was released, and what the passage sensor said. A relay that could not be
//! released because the port vanished is released as soon as the port
//! returns, and the profile's `reset` command is written whenever the port
//! opens, so a gate is never left held by a crash or an unplugged cable
//! longer than it takes sonotap to come back.

use std::time::{Duration, Instant};

use super::{
    ActuationOutcome, Actuator, Line, LineBuffer, Output, Outputs, format_hex, glob_match,
};

/// A gate's settings, checked (see `hw/profiles/generic.toml`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GateConfig {
    /// Bytes that open the gate (text commands include their line ending).
    pub open: Vec<u8>,
    /// Bytes that release it after the pulse; `None` when the device times the pulse.
    pub close: Option<Vec<u8>>,
    /// Bytes that put the gate in its safe state when the port opens.
    pub reset: Option<Vec<u8>>,
    /// How long the gate is held open.
    pub pulse: Duration,
    /// How long an opening may wait for a vanished port to return.
    pub deliver_within: Duration,
    /// The device accepted the command.
    pub ack: Option<Pattern>,
    /// The device refused the command.
    pub nak: Option<Pattern>,
    /// How long to wait for `ack` / `nak`.
    pub ack_timeout: Duration,
    /// Someone went through.
    pub passage: Option<Pattern>,
    /// Nobody went through.
    pub no_passage: Option<Pattern>,
    /// How long after opening to wait for `passage` / `no_passage`.
    pub passage_timeout: Duration,
}

/// Feedback to recognise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pattern {
    /// A whole text line, `*` matching anything.
    Line(String),
    /// A byte string anywhere in what the device sends.
    Bytes(Vec<u8>),
}

/// What a gate write was for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GateCommand {
    /// The safe state, written when the port opens.
    Reset,
    /// Open the gate.
    Open,
    /// Release it after the pulse.
    Close,
}

/// What the gate machine tells its caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GateEvent {
    /// An opening is finished.
    Done(GateOutcome),
    /// Something for the log (an unexpected line, the port going away).
    Note(String),
}

/// Whether the open command reached the gate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// Written (and acknowledged, if the device acknowledges).
    Delivered,
    /// Not delivered, refused, or not acknowledged: flag the record.
    Undeliverable(String),
}

/// Whether the relay was let go after the pulse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Release {
    /// The close command was written after the pulse.
    Released,
    /// The device times the pulse itself (no close command).
    ByDevice,
    /// The close command could not be written; it will be when the port returns.
    Pending(String),
    /// The gate was never opened.
    NotOpened,
}

/// What the passage sensor said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Passage {
    /// The profile has no passage feedback (or the opening failed).
    NotExpected,
    /// Someone went through: the device's words.
    Seen(String),
    /// Nobody went through: the device's words.
    NotSeen(String),
    /// No report came in time.
    NoReport(String),
}

/// How one opening went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GateOutcome {
    /// The record the opening was for.
    pub seq: u64,
    /// Whether the command reached the gate.
    pub delivery: Delivery,
    /// The acknowledgement line or bytes, if any.
    pub ack: Option<String>,
    /// How long the gate was held (open write to close write).
    pub held: Option<Duration>,
    /// Whether the relay was released.
    pub release: Release,
    /// What the passage sensor said.
    pub passage: Passage,
}

impl GateOutcome {
    /// Whether the gate opened as asked.
    pub fn delivered(&self) -> bool {
        self.delivery == Delivery::Delivered
    }

    /// The rows to store with the record: delivered or
    /// undeliverable (the record is flagged), then the passage report if the
    /// gate gave one.
    pub fn actuations(&self) -> Vec<(ActuationOutcome, String)> {
        let mut rows = Vec::new();
        match &self.delivery {
            Delivery::Delivered => {
                let mut detail = Vec::new();
                if let Some(ack) = &self.ack {
                    detail.push(format!("ack {ack:?}"));
                }
                if let Some(held) = self.held {
                    detail.push(format!("held {} ms", held.as_millis()));
                }
                match &self.release {
                    Release::Pending(why) => detail.push(format!("release pending: {why}")),
                    Release::ByDevice => detail.push("pulse timed by the device".into()),
                    Release::Released | Release::NotOpened => {}
                }
                if let Passage::NoReport(why) = &self.passage {
                    detail.push(why.clone());
                }
                rows.push((ActuationOutcome::Delivered, detail.join("; ")));
            }
            Delivery::Undeliverable(why) => {
                rows.push((ActuationOutcome::Undeliverable, why.clone()))
            }
        }
        match &self.passage {
            Passage::Seen(line) => rows.push((ActuationOutcome::Passage, line.clone())),
            Passage::NotSeen(line) => rows.push((ActuationOutcome::NoPassage, line.clone())),
            Passage::NotExpected | Passage::NoReport(_) => {}
        }
        rows
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Wait {
    NotExpected,
    Pending(Instant),
    Got(String),
    Refused(String),
    Missing,
}

impl Wait {
    fn pending(&self) -> Option<Instant> {
        match self {
            Wait::Pending(at) => Some(*at),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Relay {
    /// Released (or never held).
    Released,
    /// Open written; close due at `until`.
    Held { until: Instant },
    /// Close due but not written (port gone): write it when the port opens.
    Unreleased,
}

#[derive(Debug, Clone)]
struct Active {
    seq: u64,
    asked_at: Instant,
    /// Set while waiting for the port to deliver the open command.
    deliver_by: Option<Instant>,
    opened_at: Option<Instant>,
    held: Option<Duration>,
    release: Release,
    ack: Wait,
    passage: Wait,
    failure: Option<String>,
}

/// The gate's protocol state.
#[derive(Debug, Clone)]
pub struct GateMachine {
    cfg: GateConfig,
    connected: bool,
    relay: Relay,
    active: Option<Active>,
    lines: LineBuffer,
    rx: Vec<u8>,
    last_loss: Option<String>,
}

impl GateMachine {
    /// A machine for a gate with these settings, port not yet open.
    pub fn new(cfg: GateConfig) -> Self {
        Self {
            cfg,
            connected: false,
            relay: Relay::Released,
            active: None,
            lines: LineBuffer::default(),
            rx: Vec::new(),
            last_loss: None,
        }
    }

    /// The settings.
    pub fn config(&self) -> &GateConfig {
        &self.cfg
    }

    /// Whether an opening is in progress.
    pub fn busy(&self) -> bool {
        self.active.is_some()
    }

    /// Whether the relay may be held (open written and close not yet written).
    pub fn relay_may_be_held(&self) -> bool {
        self.relay != Relay::Released
    }

    /// Opens the gate for record `seq` (already committed).
    pub fn open(&mut self, now: Instant, seq: u64, out: &mut Outputs<Self>) {
        if let Some(busy) = &self.active {
            out.push(Output::Event(GateEvent::Done(GateOutcome {
                seq,
                delivery: Delivery::Undeliverable(format!(
                    "the gate is still busy with record {}",
                    busy.seq
                )),
                ack: None,
                held: None,
                release: Release::NotOpened,
                passage: Passage::NotExpected,
            })));
            return;
        }
        self.active = Some(Active {
            seq,
            asked_at: now,
            deliver_by: None,
            opened_at: None,
            held: None,
            release: Release::NotOpened,
            ack: Wait::NotExpected,
            passage: Wait::NotExpected,
            failure: None,
        });
        if self.connected {
            self.fire_open(now, out);
        } else if let Some(a) = self.active.as_mut() {
            a.deliver_by = Some(now + self.cfg.deliver_within);
            self.tick(now, out);
        }
    }

    /// Ends an opening now (the process is being stopped): releases the
    /// relay if it is held and reports what is known.
    pub fn interrupt(&mut self, now: Instant, out: &mut Outputs<Self>) {
        self.release(now, out);
        if let Some(a) = self.active.as_mut() {
            if a.opened_at.is_none() && a.failure.is_none() {
                a.failure = Some("interrupted before the gate was opened".into());
            }
            if a.ack.pending().is_some() {
                a.ack = Wait::Missing;
            }
            if a.passage.pending().is_some() {
                a.passage = Wait::Missing;
            }
            a.deliver_by = None;
        }
        self.finish_if_done(now, out);
    }

    /// Writes the close (or reset) command now if the relay may be held.
    pub fn release(&mut self, now: Instant, out: &mut Outputs<Self>) {
        if self.relay == Relay::Released || !self.connected {
            return;
        }
        let bytes = match (&self.cfg.close, &self.cfg.reset) {
            (Some(close), _) => close.clone(),
            (None, Some(reset)) => reset.clone(),
            (None, None) => return,
        };
        out.push(Output::Write {
            bytes,
            command: GateCommand::Close,
        });
        self.relay = Relay::Released;
        if let Some(a) = self.active.as_mut()
            && let Some(opened) = a.opened_at
        {
            a.held = Some(now.saturating_duration_since(opened));
            a.release = Release::Released;
        }
    }

    fn fire_open(&mut self, now: Instant, out: &mut Outputs<Self>) {
        let Some(a) = self.active.as_mut() else {
            return;
        };
        out.push(Output::Write {
            bytes: self.cfg.open.clone(),
            command: GateCommand::Open,
        });
        a.deliver_by = None;
        a.opened_at = Some(now);
        if self.cfg.close.is_some() {
            self.relay = Relay::Held {
                until: now + self.cfg.pulse,
            };
        } else {
            a.release = Release::ByDevice;
        }
        if self.cfg.ack.is_some() {
            a.ack = Wait::Pending(now + self.cfg.ack_timeout);
        }
        if self.cfg.passage.is_some() {
            a.passage = Wait::Pending(now + self.cfg.passage_timeout);
        }
        self.rx.clear();
    }

    fn finish_if_done(&mut self, _now: Instant, out: &mut Outputs<Self>) {
        let Some(a) = self.active.as_mut() else {
            return;
        };
        if matches!(a.ack, Wait::Refused(_) | Wait::Missing) && a.passage.pending().is_some() {
            a.passage = Wait::NotExpected;
        }
        let held = matches!(self.relay, Relay::Held { .. }) && a.opened_at.is_some();
        let waiting = a.deliver_by.is_some()
            || held
            || a.ack.pending().is_some()
            || a.passage.pending().is_some();
        if waiting {
            return;
        }
        let Some(a) = self.active.take() else {
            return;
        };
        let delivery = match (&a.failure, &a.ack) {
            (Some(why), _) => Delivery::Undeliverable(why.clone()),
            (None, Wait::Refused(line)) => {
                Delivery::Undeliverable(format!("the device refused the command: {line}"))
            }
            (None, Wait::Missing) => Delivery::Undeliverable(format!(
                "no acknowledgement within {} ms",
                self.cfg.ack_timeout.as_millis()
            )),
            (None, _) => Delivery::Delivered,
        };
        let passage = match a.passage {
            Wait::Got(line) => Passage::Seen(line),
            Wait::Refused(line) => Passage::NotSeen(line),
            Wait::Missing => Passage::NoReport(format!(
                "no passage report within {} ms",
                self.cfg.passage_timeout.as_millis()
            )),
            Wait::NotExpected | Wait::Pending(_) => Passage::NotExpected,
        };
        let ack = match a.ack {
            Wait::Got(line) => Some(line),
            _ => None,
        };
        out.push(Output::Event(GateEvent::Done(GateOutcome {
            seq: a.seq,
            delivery,
            ack,
            held: a.held,
            release: if a.opened_at.is_some() {
                a.release
            } else {
                Release::NotOpened
            },
            passage,
        })));
    }

    fn feedback_line(&mut self, line: &str, out: &mut Outputs<Self>) {
        let is = |p: &Option<Pattern>| matches!(p, Some(Pattern::Line(g)) if glob_match(g, line));
        let (nak, ack, no_pass, pass) = (
            is(&self.cfg.nak),
            is(&self.cfg.ack),
            is(&self.cfg.no_passage),
            is(&self.cfg.passage),
        );
        if let Some(a) = self.active.as_mut() {
            if a.ack.pending().is_some() && (nak || ack) {
                a.ack = match nak {
                    true => Wait::Refused(line.into()),
                    false => Wait::Got(line.into()),
                };
                return;
            }
            if a.passage.pending().is_some() && (no_pass || pass) {
                a.passage = match no_pass {
                    true => Wait::Refused(line.into()),
                    false => Wait::Got(line.into()),
                };
                return;
            }
        }
        out.push(Output::Event(GateEvent::Note(format!(
            "ignored a line from the gate that nothing was waiting for: {line:?}"
        ))));
    }

    fn feedback_bytes(&mut self, bytes: &[u8], out: &mut Outputs<Self>) {
        self.rx.extend_from_slice(bytes);
        let Some(a) = self.active.as_mut() else {
            out.push(Output::Event(GateEvent::Note(format!(
                "ignored {} bytes from the gate while idle",
                bytes.len()
            ))));
            self.rx.clear();
            return;
        };
        let find = |rx: &[u8], p: &Option<Pattern>| match p {
            Some(Pattern::Bytes(pat)) if !pat.is_empty() => rx
                .windows(pat.len())
                .position(|w| w == pat.as_slice())
                .map(|at| at + pat.len()),
            _ => None,
        };
        let hex = format_hex;
        loop {
            let mut consumed = None;
            if a.ack.pending().is_some() {
                if let Some(end) = find(&self.rx, &self.cfg.nak) {
                    a.ack = Wait::Refused(hex(&self.rx[..end]));
                    consumed = Some(end);
                } else if let Some(end) = find(&self.rx, &self.cfg.ack) {
                    a.ack = Wait::Got(hex(&self.rx[..end]));
                    consumed = Some(end);
                }
            }
            if consumed.is_none() && a.passage.pending().is_some() {
                if let Some(end) = find(&self.rx, &self.cfg.no_passage) {
                    a.passage = Wait::Refused(hex(&self.rx[..end]));
                    consumed = Some(end);
                } else if let Some(end) = find(&self.rx, &self.cfg.passage) {
                    a.passage = Wait::Got(hex(&self.rx[..end]));
                    consumed = Some(end);
                }
            }
            match consumed {
                Some(end) => {
                    self.rx.drain(..end);
                }
                None => break,
            }
        }
        // Keep only what could still begin a pattern.
        if self.rx.len() > 64 {
            let cut = self.rx.len() - 64;
            self.rx.drain(..cut);
        }
    }

    fn text_feedback(&self) -> bool {
        [
            &self.cfg.ack,
            &self.cfg.nak,
            &self.cfg.passage,
            &self.cfg.no_passage,
        ]
        .iter()
        .any(|p| matches!(p, Some(Pattern::Line(_))))
    }
}

impl Actuator for GateMachine {
    type Command = GateCommand;
    type Event = GateEvent;

    fn connected(&mut self, now: Instant, out: &mut Outputs<Self>) {
        self.connected = true;
        self.lines = LineBuffer::default();
        self.rx.clear();
        if !matches!(self.relay, Relay::Held { .. }) {
            let reset = match self.relay {
                // A pending release: the close command, else the reset.
                Relay::Unreleased => self
                    .cfg
                    .close
                    .clone()
                    .map(|c| (c, GateCommand::Close))
                    .or(self.cfg.reset.clone().map(|r| (r, GateCommand::Reset))),
                _ => self.cfg.reset.clone().map(|r| (r, GateCommand::Reset)),
            };
            if let Some((bytes, command)) = reset {
                out.push(Output::Write { bytes, command });
            }
            self.relay = Relay::Released;
        }
        let deliver = self
            .active
            .as_ref()
            .and_then(|a| a.deliver_by)
            .is_some_and(|by| now <= by);
        if deliver {
            self.fire_open(now, out);
        }
        self.tick(now, out);
    }

    fn disconnected(
        &mut self,
        now: Instant,
        failed: Option<GateCommand>,
        reason: &str,
        out: &mut Outputs<Self>,
    ) {
        if self.connected {
            out.push(Output::Event(GateEvent::Note(format!(
                "port lost: {reason}"
            ))));
        }
        self.connected = false;
        self.last_loss = Some(reason.into());
        match failed {
            Some(GateCommand::Open) => {
                if self.cfg.close.is_some() {
                    // Part of it may have gone out: release when the port returns.
                    self.relay = Relay::Unreleased;
                }
                if let Some(a) = self.active.as_mut() {
                    a.opened_at = None;
                    a.ack = Wait::NotExpected;
                    a.passage = Wait::NotExpected;
                    // Nothing was delivered: wait for the port to return
                    // within the delivery window, then open.
                    let by = a.asked_at + self.cfg.deliver_within;
                    if now < by {
                        a.deliver_by = Some(by);
                    } else {
                        a.failure = Some(format!("the open command was not delivered: {reason}"));
                    }
                }
            }
            Some(GateCommand::Close) | Some(GateCommand::Reset) => {
                self.relay = Relay::Unreleased;
                if let Some(a) = self.active.as_mut()
                    && a.opened_at.is_some()
                {
                    a.release = Release::Pending(format!(
                        "the close command was not delivered ({reason}); it is written when the port returns"
                    ));
                }
            }
            None => {}
        }
        self.tick(now, out);
    }

    fn received(&mut self, now: Instant, bytes: &[u8], out: &mut Outputs<Self>) {
        if self.text_feedback() {
            for line in self.lines.push(bytes) {
                match line {
                    Line::Text(text) => self.feedback_line(&text, out),
                    Line::Garbage(what) => out.push(Output::Event(GateEvent::Note(format!(
                        "ignored from the gate: {what}"
                    )))),
                }
            }
        } else if self.cfg.ack.is_some() || self.cfg.passage.is_some() {
            self.feedback_bytes(bytes, out);
        } else {
            out.push(Output::Event(GateEvent::Note(format!(
                "ignored {} bytes from a gate that sends no feedback",
                bytes.len()
            ))));
        }
        self.finish_if_done(now, out);
    }

    fn tick(&mut self, now: Instant, out: &mut Outputs<Self>) {
        if let Some(a) = self.active.as_mut()
            && let Some(by) = a.deliver_by
            && (now >= by || self.cfg.deliver_within.is_zero())
        {
            a.deliver_by = None;
            a.failure = Some(format!(
                "the port was not available within {} ms ({})",
                self.cfg.deliver_within.as_millis(),
                self.last_loss.as_deref().unwrap_or("not open")
            ));
        }
        if let Relay::Held { until } = self.relay
            && now >= until
        {
            if self.connected {
                self.release(now, out);
            } else {
                self.relay = Relay::Unreleased;
                if let Some(a) = self.active.as_mut() {
                    a.release = Release::Pending(
                        "the port was gone at the end of the pulse; the close command is written when it returns"
                            .into(),
                    );
                }
            }
        }
        if let Some(a) = self.active.as_mut() {
            if a.ack.pending().is_some_and(|d| now >= d) {
                a.ack = Wait::Missing;
            }
            if a.passage.pending().is_some_and(|d| now >= d) {
                a.passage = Wait::Missing;
            }
        }
        self.finish_if_done(now, out);
    }

    fn deadline(&self) -> Option<Instant> {
        let relay = match self.relay {
            Relay::Held { until } => Some(until),
            _ => None,
        };
        let active = self.active.as_ref();
        [
            relay,
            active.and_then(|a| a.deliver_by),
            active.and_then(|a| a.ack.pending()),
            active.and_then(|a| a.passage.pending()),
        ]
        .into_iter()
        .flatten()
        .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actuator::profile::{Device, Profile};

    fn machine(name: &str) -> GateMachine {
        match Profile::load(name, &[]).expect("built-in").device {
            Device::Gate(cfg) => GateMachine::new(cfg),
            Device::Mdb(_) => panic!("{name} is a gate"),
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Runs `f` and returns what it output.
    fn step(
        m: &mut GateMachine,
        f: impl FnOnce(&mut GateMachine, &mut Outputs<GateMachine>),
    ) -> Outputs<GateMachine> {
        let mut out = Vec::new();
        f(m, &mut out);
        out
    }

    fn writes(out: &Outputs<GateMachine>) -> Vec<(Vec<u8>, GateCommand)> {
        out.iter()
            .filter_map(|o| match o {
                Output::Write { bytes, command } => Some((bytes.clone(), *command)),
                Output::Event(_) => None,
            })
            .collect()
    }

    fn done(out: &Outputs<GateMachine>) -> Option<GateOutcome> {
        out.iter().find_map(|o| match o {
            Output::Event(GateEvent::Done(outcome)) => Some(outcome.clone()),
            _ => None,
        })
    }

    const ON: [u8; 4] = [0xA0, 0x01, 0x01, 0xA2];
    const OFF: [u8; 4] = [0xA0, 0x01, 0x00, 0xA1];

    #[test]
    fn a_relay_is_released_on_connect_then_pulsed_for_exactly_the_pulse() {
        let mut m = machine("ch340-relay");
        let t0 = Instant::now();
        let out = step(&mut m, |m, o| m.connected(t0, o));
        assert_eq!(writes(&out), vec![(OFF.to_vec(), GateCommand::Reset)]);
        let out = step(&mut m, |m, o| m.open(t0, 7, o));
        assert_eq!(writes(&out), vec![(ON.to_vec(), GateCommand::Open)]);
        assert_eq!(m.deadline(), Some(t0 + ms(300)));
        let out = step(&mut m, |m, o| m.tick(t0 + ms(299), o));
        assert!(out.is_empty(), "{out:?}");
        let out = step(&mut m, |m, o| m.tick(t0 + ms(300), o));
        assert_eq!(writes(&out), vec![(OFF.to_vec(), GateCommand::Close)]);
        let outcome = done(&out).expect("done");
        assert_eq!(outcome.seq, 7);
        assert!(outcome.delivered());
        assert_eq!(outcome.held, Some(ms(300)));
        assert_eq!(outcome.release, Release::Released);
        assert!(!m.relay_may_be_held());
        assert_eq!(outcome.actuations()[0].0, ActuationOutcome::Delivered);
    }

    #[test]
    fn an_open_that_cannot_be_written_in_its_window_is_undeliverable_and_released_on_return() {
        let mut m = machine("ch340-relay");
        let t0 = Instant::now();
        step(&mut m, |m, o| m.connected(t0, o));
        step(&mut m, |m, o| m.open(t0, 1, o));
        let out = step(&mut m, |m, o| {
            m.disconnected(t0, Some(GateCommand::Open), "EIO", o)
        });
        assert_eq!(done(&out), None, "waits for the port within deliver_within");
        let out = step(&mut m, |m, o| m.tick(t0 + ms(1000), o));
        let outcome = done(&out).expect("done");
        assert!(matches!(&outcome.delivery, Delivery::Undeliverable(w) if w.contains("EIO")));
        assert_eq!(outcome.release, Release::NotOpened);
        assert_eq!(outcome.actuations()[0].0, ActuationOutcome::Undeliverable);
        assert!(m.relay_may_be_held());
        let out = step(&mut m, |m, o| m.connected(t0 + ms(50), o));
        assert_eq!(writes(&out), vec![(OFF.to_vec(), GateCommand::Close)]);
        assert!(!m.relay_may_be_held());
    }

    #[test]
    fn a_failed_open_write_is_retried_when_the_port_returns_in_time() {
        let mut m = machine("ch340-relay");
        let t0 = Instant::now();
        step(&mut m, |m, o| m.connected(t0, o));
        step(&mut m, |m, o| m.open(t0, 1, o));
        step(&mut m, |m, o| {
            m.disconnected(t0, Some(GateCommand::Open), "EIO", o)
        });
        let out = step(&mut m, |m, o| m.connected(t0 + ms(300), o));
        assert_eq!(
            writes(&out),
            vec![
                (OFF.to_vec(), GateCommand::Close),
                (ON.to_vec(), GateCommand::Open)
            ]
        );
        let out = step(&mut m, |m, o| m.tick(t0 + ms(600), o));
        assert!(done(&out).expect("done").delivered());
    }

    #[test]
    fn an_open_waits_for_the_port_within_its_window_then_gives_up() {
        let mut m = machine("ch340-relay");
        let t0 = Instant::now();
        let out = step(&mut m, |m, o| m.open(t0, 1, o));
        assert!(writes(&out).is_empty());
        assert_eq!(m.deadline(), Some(t0 + ms(1000)));
        // The port comes back in time: released, then opened.
        let out = step(&mut m, |m, o| m.connected(t0 + ms(400), o));
        assert_eq!(
            writes(&out),
            vec![
                (OFF.to_vec(), GateCommand::Reset),
                (ON.to_vec(), GateCommand::Open)
            ]
        );
        let out = step(&mut m, |m, o| m.tick(t0 + ms(700), o));
        assert!(done(&out).expect("done").delivered());
        // Now it never comes back.
        step(&mut m, |m, o| {
            m.disconnected(t0 + ms(800), None, "unplugged", o)
        });
        step(&mut m, |m, o| m.open(t0 + ms(900), 2, o));
        let out = step(&mut m, |m, o| m.tick(t0 + ms(1900), o));
        let outcome = done(&out).expect("done");
        assert!(
            matches!(&outcome.delivery, Delivery::Undeliverable(w) if w.contains("1000 ms") && w.contains("unplugged")),
            "{outcome:?}"
        );
    }

    #[test]
    fn a_port_lost_mid_pulse_leaves_the_release_pending_until_it_returns() {
        let mut m = machine("ch340-relay");
        let t0 = Instant::now();
        step(&mut m, |m, o| m.connected(t0, o));
        step(&mut m, |m, o| m.open(t0, 3, o));
        step(&mut m, |m, o| m.disconnected(t0 + ms(100), None, "EIO", o));
        let out = step(&mut m, |m, o| m.tick(t0 + ms(300), o));
        let outcome = done(&out).expect("done");
        assert!(outcome.delivered());
        assert!(matches!(outcome.release, Release::Pending(_)));
        assert!(m.relay_may_be_held());
        let out = step(&mut m, |m, o| m.connected(t0 + ms(2000), o));
        assert_eq!(writes(&out), vec![(OFF.to_vec(), GateCommand::Close)]);
    }

    #[test]
    fn a_turnstile_acknowledges_and_reports_the_passage() {
        let mut m = machine("turnstile-line");
        let t0 = Instant::now();
        let out = step(&mut m, |m, o| m.connected(t0, o));
        assert_eq!(
            writes(&out),
            vec![(b"CLOSE\r\n".to_vec(), GateCommand::Reset)]
        );
        let out = step(&mut m, |m, o| m.open(t0, 5, o));
        assert_eq!(
            writes(&out),
            vec![(b"OPEN 5000\r\n".to_vec(), GateCommand::Open)]
        );
        assert!(step(&mut m, |m, o| m.received(t0 + ms(20), b"O", o)).is_empty());
        let out = step(&mut m, |m, o| m.received(t0 + ms(21), b"K\r\nHELLO\r\n", o));
        assert!(matches!(&out[..], [Output::Event(GateEvent::Note(n))] if n.contains("HELLO")));
        let out = step(&mut m, |m, o| m.received(t0 + ms(2000), b"PASSED 1\r\n", o));
        let outcome = done(&out).expect("done");
        assert_eq!(outcome.ack.as_deref(), Some("OK"));
        assert_eq!(outcome.release, Release::ByDevice);
        assert_eq!(outcome.passage, Passage::Seen("PASSED 1".into()));
        let rows = outcome.actuations();
        assert_eq!(rows[1], (ActuationOutcome::Passage, "PASSED 1".into()));
    }

    #[test]
    fn a_turnstile_refusal_or_silence_is_undeliverable() {
        let mut m = machine("turnstile-line");
        let t0 = Instant::now();
        step(&mut m, |m, o| m.connected(t0, o));
        step(&mut m, |m, o| m.open(t0, 1, o));
        let out = step(&mut m, |m, o| m.received(t0, b"ERR BUSY\n", o));
        let outcome = done(&out).expect("done");
        assert!(matches!(&outcome.delivery, Delivery::Undeliverable(w) if w.contains("ERR BUSY")));
        assert_eq!(outcome.passage, Passage::NotExpected);
        step(&mut m, |m, o| m.open(t0, 2, o));
        let out = step(&mut m, |m, o| m.tick(t0 + ms(500), o));
        let outcome = done(&out).expect("done");
        assert!(
            matches!(&outcome.delivery, Delivery::Undeliverable(w) if w.contains("acknowledgement"))
        );
    }

    #[test]
    fn no_passage_and_no_report_are_told_apart() {
        let mut m = machine("turnstile-line");
        let t0 = Instant::now();
        step(&mut m, |m, o| m.connected(t0, o));
        step(&mut m, |m, o| m.open(t0, 1, o));
        step(&mut m, |m, o| m.received(t0, b"OK\n", o));
        let out = step(&mut m, |m, o| m.received(t0 + ms(5000), b"NOPASS\n", o));
        let outcome = done(&out).expect("done");
        assert_eq!(outcome.passage, Passage::NotSeen("NOPASS".into()));
        assert_eq!(outcome.actuations()[1].0, ActuationOutcome::NoPassage);
        step(&mut m, |m, o| m.open(t0, 2, o));
        step(&mut m, |m, o| m.received(t0, b"OK\n", o));
        let out = step(&mut m, |m, o| m.tick(t0 + ms(8000), o));
        let outcome = done(&out).expect("done");
        assert!(outcome.delivered());
        assert!(matches!(outcome.passage, Passage::NoReport(_)));
        assert_eq!(outcome.actuations().len(), 1);
    }

    #[test]
    fn a_second_opening_while_busy_is_refused_not_queued() {
        let mut m = machine("ch340-relay");
        let t0 = Instant::now();
        step(&mut m, |m, o| m.connected(t0, o));
        step(&mut m, |m, o| m.open(t0, 1, o));
        let out = step(&mut m, |m, o| m.open(t0 + ms(10), 2, o));
        let outcome = done(&out).expect("refused");
        assert_eq!(outcome.seq, 2);
        assert!(matches!(&outcome.delivery, Delivery::Undeliverable(w) if w.contains("record 1")));
        assert!(writes(&out).is_empty());
    }

    #[test]
    fn an_interrupt_releases_the_relay_at_once() {
        let mut m = machine("ch340-relay");
        let t0 = Instant::now();
        step(&mut m, |m, o| m.connected(t0, o));
        step(&mut m, |m, o| m.open(t0, 1, o));
        let out = step(&mut m, |m, o| m.interrupt(t0 + ms(40), o));
        assert_eq!(writes(&out), vec![(OFF.to_vec(), GateCommand::Close)]);
        let outcome = done(&out).expect("done");
        assert_eq!(outcome.held, Some(ms(40)));
        assert!(!m.relay_may_be_held());
    }

    #[test]
    fn hex_feedback_is_found_in_the_byte_stream() {
        let mut cfg = match Profile::load("ch340-relay", &[]).expect("p").device {
            Device::Gate(cfg) => cfg,
            Device::Mdb(_) => panic!(),
        };
        cfg.ack = Some(Pattern::Bytes(vec![0xAA, 0x01]));
        cfg.passage = Some(Pattern::Bytes(vec![0xBB]));
        let mut m = GateMachine::new(cfg);
        let t0 = Instant::now();
        step(&mut m, |m, o| m.connected(t0, o));
        step(&mut m, |m, o| m.open(t0, 1, o));
        step(&mut m, |m, o| m.received(t0, &[0x00, 0xAA], o));
        step(&mut m, |m, o| m.received(t0, &[0x01, 0x17, 0xBB], o));
        let out = step(&mut m, |m, o| m.tick(t0 + ms(300), o));
        let outcome = done(&out).expect("done");
        assert_eq!(outcome.ack.as_deref(), Some("00 AA 01"));
        assert_eq!(outcome.passage, Passage::Seen("17 BB".into()));
    }
}
