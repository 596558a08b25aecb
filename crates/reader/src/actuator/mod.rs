//! Hardware: gate relays, turnstile controllers and vending machines over serial ports.
//!
//! The reader decides; the hardware acts, and only after the record is on
//! disk. Each device is a pure state machine ([`gate::GateMachine`],
//! [`mdb::MdbMachine`]) implementing [`Actuator`]: events in (the port
//! opened or vanished, bytes arrived, a timer fired, a command from the
//! reader), outputs out (bytes to write, outcomes). Time is passed in; no
//! machine reads a clock or touches a port. A thin serial driver
//! ([`driver::Driver`]) runs a machine over a [`serial::SerialLink`], which
//! reopens the port by path with backoff when it vanishes and returns.
//!
//! The drivers the daemon uses: [`driver::Gate::open_for`] pulses the gate
//! for a committed record and returns a [`gate::GateOutcome`], whose
//! [`ActuationOutcome`]s the caller stores beside the record;
//! [`driver::Vending::session`] runs one MDB cashless session, committing the
//! charge (through a [`driver::Charger`], which the caller implements over
//! its store) before the vend is approved and voiding it when the vend fails,
//! times out or cannot be delivered. This layer depends on neither the
//! reader nor its store.
//!
//! Device settings live in profiles ([`profile`], `hw/profiles/*.toml`).

pub mod driver;
pub mod gate;
pub mod mdb;
pub mod profile;
pub mod serial;

use std::fmt;
use std::time::Instant;

use serde::Serialize;

pub use driver::{Charger, Gate, VendReport, Vending};
pub use gate::{Delivery, GateOutcome, Passage};
pub use mdb::{Denial, VendOutcome};
pub use profile::{Device, Kind, Profile, ProfileError};
pub use serial::{PortError, SerialLink};

/// What a state machine asks its driver to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output<C, E> {
    /// Write these bytes to the port; `command` says what they are, so a
    /// failed write can be reported back (see [`Actuator::disconnected`]).
    Write {
        /// The bytes.
        bytes: Vec<u8>,
        /// What they are for.
        command: C,
    },
    /// Something for the caller: an outcome, a request, a note for the log.
    Event(E),
}

/// What a device did about a committed record: what the machines report
/// and the store keeps beside the chain (not part of the signed chain).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ActuationOutcome {
    /// The command reached the device (and it acknowledged, if it does).
    Delivered,
    /// The command could not be delivered: the record is flagged for the operator.
    Undeliverable,
    /// The gate reported a passage.
    Passage,
    /// The gate reported that nobody passed (or no report came in time).
    NoPassage,
    /// The vending machine reported a successful dispense.
    VendSuccess,
    /// The vend failed or timed out (the charge is voided).
    VendFailed,
    /// The daemon stopped (or could not store the outcome) after the
    /// charge was committed, before what the gate did was stored: the gate
    /// was released at the next start, and whether it opened or anyone
    /// passed is not known.
    Unknown,
}

impl ActuationOutcome {
    /// The name stored with the record (and shown in JSON).
    pub fn as_str(self) -> &'static str {
        match self {
            ActuationOutcome::Delivered => "delivered",
            ActuationOutcome::Undeliverable => "undeliverable",
            ActuationOutcome::Passage => "passage",
            ActuationOutcome::NoPassage => "no_passage",
            ActuationOutcome::VendSuccess => "vend_success",
            ActuationOutcome::VendFailed => "vend_failed",
            ActuationOutcome::Unknown => "unknown",
        }
    }

    /// Reads the stored name.
    pub fn from_name(name: &str) -> Option<Self> {
        [
            ActuationOutcome::Delivered,
            ActuationOutcome::Undeliverable,
            ActuationOutcome::Passage,
            ActuationOutcome::NoPassage,
            ActuationOutcome::VendSuccess,
            ActuationOutcome::VendFailed,
            ActuationOutcome::Unknown,
        ]
        .into_iter()
        .find(|o| o.as_str() == name)
    }
}

/// The outputs of one step of a machine.
pub type Outputs<A> = Vec<Output<<A as Actuator>::Command, <A as Actuator>::Event>>;

/// A device's protocol as a pure state machine: no I/O, no clock.
///
/// The driver calls these as things happen and carries out the outputs in
/// order. Device-specific commands from the reader (open the gate, begin a
/// session) are methods of each machine.
pub trait Actuator {
    /// What a write is for (reported back if it fails).
    type Command: Copy + fmt::Debug;
    /// What the machine tells its caller.
    type Event: fmt::Debug;

    /// The port (re)opened.
    fn connected(&mut self, now: Instant, out: &mut Outputs<Self>);

    /// The port is gone: a read or write failed, or it could not be opened.
    /// `failed` is the command whose write failed, if that is how it was
    /// noticed; that command was not delivered. Machines write nothing here.
    fn disconnected(
        &mut self,
        now: Instant,
        failed: Option<Self::Command>,
        reason: &str,
        out: &mut Outputs<Self>,
    );

    /// Bytes arrived from the device.
    fn received(&mut self, now: Instant, bytes: &[u8], out: &mut Outputs<Self>);

    /// Time passed; called at (or after) [`Actuator::deadline`].
    fn tick(&mut self, now: Instant, out: &mut Outputs<Self>);

    /// When the machine next needs [`Actuator::tick`], if it is waiting for time.
    fn deadline(&self) -> Option<Instant>;
}

/// The longest line a device may send; longer ones are discarded as garbage.
pub const MAX_LINE: usize = 256;

/// One line from a line-oriented device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    /// A line of text, without its ending and surrounding whitespace.
    Text(String),
    /// Bytes that are not a line: not UTF-8, control characters, or too long.
    Garbage(String),
}

/// Splits a byte stream into lines (`\n`, `\r\n` or `\r`), bounded in memory.
#[derive(Debug, Default, Clone)]
pub struct LineBuffer {
    buf: Vec<u8>,
    overlong: bool,
}

impl LineBuffer {
    /// Feeds bytes; returns the complete lines (empty lines are skipped).
    pub fn push(&mut self, bytes: &[u8]) -> Vec<Line> {
        let mut lines = Vec::new();
        for &b in bytes {
            if b == b'\n' || b == b'\r' {
                let raw = std::mem::take(&mut self.buf);
                if std::mem::take(&mut self.overlong) {
                    lines.push(Line::Garbage(format!(
                        "a line longer than {MAX_LINE} bytes was discarded"
                    )));
                } else if !raw.is_empty() {
                    lines.push(classify(&raw));
                }
            } else if self.overlong {
                // Discard until the next line ending.
            } else if self.buf.len() >= MAX_LINE {
                self.buf.clear();
                self.overlong = true;
            } else {
                self.buf.push(b);
            }
        }
        lines
    }
}

fn classify(raw: &[u8]) -> Line {
    match std::str::from_utf8(raw) {
        Ok(text) if !text.chars().any(|c| c.is_control() && c != '\t') => {
            let text = text.trim();
            if text.is_empty() {
                Line::Garbage("a blank line".into())
            } else {
                Line::Text(text.to_string())
            }
        }
        _ => Line::Garbage(format!(
            "{} bytes that are not a text line: {}",
            raw.len(),
            format_hex(&raw[..raw.len().min(16)])
        )),
    }
}

/// Bytes as spaced upper-case hex, as profiles write them.
pub(crate) fn format_hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Matches a whole line against a pattern where `*` matches any run of
/// characters (and everything else matches itself).
pub fn glob_match(pattern: &str, line: &str) -> bool {
    let (p, s): (Vec<char>, Vec<char>) = (pattern.chars().collect(), line.chars().collect());
    let (mut pi, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        if pi < p.len() && p[pi] == '*' {
            star = Some((pi, si));
            pi += 1;
        } else if pi < p.len() && p[pi] == s[si] {
            pi += 1;
            si += 1;
        } else if let Some((sp, ss)) = star {
            pi = sp + 1;
            si = ss + 1;
            star = Some((sp, ss + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_split_on_any_ending_and_garbage_is_named() {
        let mut lb = LineBuffer::default();
        assert_eq!(lb.push(b"OK\r\nPASS"), vec![Line::Text("OK".into())]);
        assert_eq!(lb.push(b"ED 1\n\n"), vec![Line::Text("PASSED 1".into())]);
        let lines = lb.push(b"\xff\xfe\x00\n");
        assert!(matches!(&lines[..], [Line::Garbage(g)] if g.contains("FF FE 00")));
        let long = vec![b'x'; MAX_LINE * 3];
        assert!(lb.push(&long).is_empty());
        let lines = lb.push(b"\nOK\n");
        assert!(matches!(&lines[0], Line::Garbage(g) if g.contains("longer")));
        assert_eq!(lines[1], Line::Text("OK".into()));
    }

    #[test]
    fn glob_matches_whole_lines_with_stars() {
        assert!(glob_match("OK*", "OK"));
        assert!(glob_match("OK*", "OK 1"));
        assert!(!glob_match("OK*", "NOK"));
        assert!(glob_match("*PASS*", "GATE 1 PASSED"));
        assert!(!glob_match("PASSED", "PASSED 1"));
        assert!(glob_match("a*b*c", "a-b-b-c"));
        assert!(!glob_match("a*b*c", "a-b-b-"));
    }
}
