//! Vending: sonotap as an MDB/ICP cashless device, through an MDB-to-serial
//! adapter's ASCII protocol, as a pure state machine.
//!
//! The flow of one session: a valid token arrives → begin a session with
//! the funds it authorises → the vending machine sends a vend request with
//! the price and item → if the price fits the funds, ask the caller to
//! charge it ([`MdbEvent::Charge`]: the record is committed *before* the
//! approval is written) and approve; otherwise deny → vend success keeps
//! the charge; vend failure, a vend result that does not come in time, a
//! session the machine ends first, or a port that vanishes voids it → the
//! session is ended (session complete).
//!
//! What the MDB cashless-device flow says about the rest, as this machine
//! does it: a vend request with no session is denied (command out of
//! sequence); a second vend request, or a result with no vend approved, is
//! ignored and noted; a session the machine opens on its own is ended;
//! unknown lines and garbage are noted and ignored; a session with no vend
//! request within the session timeout is ended. Nothing here panics on
//! input.

pub mod qibixx;

use std::fmt;
use std::time::{Duration, Instant};

use serde::Deserialize;
use sonotap_protocol::policy::{Decline, Reason};

use super::{Actuator, Line, LineBuffer, Output, Outputs};

/// An adapter's command set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Dialect {
    /// Qibixx MDB Pi HAT / MDB USB, cashless-device ("C,...") commands.
    Qibixx,
}

/// Vending settings, checked (see `hw/profiles/mdb-qibixx.toml`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MdbConfig {
    /// The adapter's command set.
    pub dialect: Dialect,
    /// Decimal places of amounts on the wire.
    pub decimals: u8,
    /// How long to wait for the machine to enable the reader.
    pub ready_timeout: Duration,
    /// A session with no vend request within this time is ended.
    pub session_timeout: Duration,
    /// An approved vend with no result within this time is voided.
    pub vend_result_timeout: Duration,
    /// How long to wait for the session to close after ending it.
    pub end_timeout: Duration,
    /// The most a session offers as funds, minor units, whatever the token
    /// allows: what the machine's display and its funds field can show.
    pub max_funds: u32,
}

impl Dialect {
    fn enable(self) -> Vec<u8> {
        match self {
            Dialect::Qibixx => qibixx::enable(),
        }
    }
    fn begin_session(self, funds: u32, decimals: u8) -> Vec<u8> {
        match self {
            Dialect::Qibixx => qibixx::begin_session(funds, decimals),
        }
    }
    fn approve(self, price: u32, decimals: u8) -> Vec<u8> {
        match self {
            Dialect::Qibixx => qibixx::approve(price, decimals),
        }
    }
    fn deny(self) -> Vec<u8> {
        match self {
            Dialect::Qibixx => qibixx::deny(),
        }
    }
    fn end_session(self) -> Vec<u8> {
        match self {
            Dialect::Qibixx => qibixx::end_session(),
        }
    }
    fn parse(self, line: &str, decimals: u8) -> AdapterLine {
        match self {
            Dialect::Qibixx => qibixx::parse(line, decimals),
        }
    }
}

/// What an adapter line means, whatever the adapter's syntax.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdapterLine {
    /// The machine has not set the reader up (or reset it).
    Inactive,
    /// The machine disabled the reader.
    Disabled,
    /// The reader is enabled, no session open.
    Enabled,
    /// A session is open, waiting for a selection.
    SessionIdle,
    /// The machine asks to vend `item` at `price` (minor units).
    VendRequest {
        /// Price, minor units.
        price: u32,
        /// Item number.
        item: u16,
    },
    /// The product was dispensed.
    VendSuccess,
    /// The dispense failed.
    VendFailure(String),
    /// The adapter reports an error.
    Error(String),
    /// Anything else.
    Unknown(String),
}

/// Minor units as a decimal with `decimals` places (`250`, 2 → `2.50`).
pub fn format_amount(minor: u32, decimals: u8) -> String {
    if decimals == 0 {
        return minor.to_string();
    }
    let scale = 10u32.pow(u32::from(decimals));
    format!(
        "{}.{:0width$}",
        minor / scale,
        minor % scale,
        width = usize::from(decimals)
    )
}

/// Reads a decimal with at most `decimals` places into minor units
/// (`"2.5"`, 2 → 250; `"2"`, 2 → 200); `None` if it is not one or overflows.
pub fn parse_amount(text: &str, decimals: u8) -> Option<u32> {
    let (whole, frac) = text.split_once('.').unwrap_or((text, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() || !digits(whole) || !digits(frac) || frac.len() > usize::from(decimals) {
        return None;
    }
    if text.contains('.') && frac.is_empty() {
        return None;
    }
    let scale = 10u64.pow(u32::from(decimals));
    let whole: u64 = whole.parse().ok()?;
    let frac_scaled: u64 = if frac.is_empty() {
        0
    } else {
        frac.parse::<u64>().ok()? * 10u64.pow(u32::from(decimals) - frac.len() as u32)
    };
    u32::try_from(whole.checked_mul(scale)?.checked_add(frac_scaled)?).ok()
}

/// What an MDB write was for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MdbCommand {
    /// Enable the reader.
    Enable,
    /// Begin a session.
    Start,
    /// Approve a vend (the charge is already committed).
    Approve,
    /// Deny a vend.
    Deny,
    /// End the session.
    End,
}

/// Why a vend was denied before any charge was committed. Typed until the
/// edge that prints or counts it: the daemon counts a policy decline under
/// its own reason, every other denial as `vend_denied`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denial {
    /// The machine asked for more than the session offered.
    OverFunds {
        /// The price asked.
        price: u32,
        /// The funds offered.
        funds: u32,
    },
    /// The reader's offline policy declined the charge.
    Policy(Decline),
    /// No charge could be committed (a price of 0, a store that failed, a
    /// test's dry run): nothing was charged; the sentence says why.
    NotCharged(String),
}

impl Denial {
    /// The policy's reason, when the policy declined the charge.
    pub fn policy_reason(&self) -> Option<Reason> {
        match self {
            Denial::Policy(decline) => Some(decline.reason),
            Denial::OverFunds { .. } | Denial::NotCharged(_) => None,
        }
    }
}

impl fmt::Display for Denial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Denial::OverFunds { price, funds } => {
                write!(f, "price {price} is above the funds {funds}")
            }
            Denial::Policy(decline) => write!(f, "{}: {}", decline.reason, decline.detail),
            Denial::NotCharged(why) => f.write_str(why),
        }
    }
}

/// How one session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VendOutcome {
    /// Dispensed: the charge `seq` stands.
    Vended {
        /// The charge record.
        seq: u64,
        /// The price charged.
        price: u32,
        /// The item.
        item: u16,
    },
    /// Denied before any charge: over the funds, or the reader declined.
    Denied {
        /// The price asked.
        price: u32,
        /// The item.
        item: u16,
        /// Why.
        reason: Denial,
    },
    /// The charge `seq` must be voided: the vend failed, timed out, or could
    /// not be approved.
    Voided {
        /// The charge record to void.
        seq: u64,
        /// The price charged.
        price: u32,
        /// The item.
        item: u16,
        /// Why.
        reason: String,
    },
    /// The session ended without a vend request (nothing charged).
    NoVend {
        /// Why.
        reason: String,
    },
    /// No session could be begun (nothing charged).
    NotStarted {
        /// Why.
        reason: String,
    },
}

/// What the MDB machine tells its caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MdbEvent {
    /// The machine enabled the reader: sessions can begin.
    Ready,
    /// Commit the charge for this vend now, then call [`MdbMachine::charged`].
    Charge {
        /// Price, minor units.
        price: u32,
        /// Item number.
        item: u16,
    },
    /// A session is over.
    Done(VendOutcome),
    /// Something for the log.
    Note(String),
}

/// What the vending machine last said about the reader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmcStatus {
    /// Nothing heard since the port opened.
    Unknown,
    /// Not set up.
    Inactive,
    /// Disabled.
    Disabled,
    /// Enabled.
    Enabled,
}

impl fmt::Display for VmcStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            VmcStatus::Unknown => "no status yet",
            VmcStatus::Inactive => "inactive",
            VmcStatus::Disabled => "disabled",
            VmcStatus::Enabled => "enabled",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Session {
    None,
    Starting {
        funds: u32,
        idle_seen: bool,
        deadline: Instant,
    },
    Charging {
        funds: u32,
        price: u32,
        item: u16,
        aborted: Option<String>,
    },
    Vending {
        seq: u64,
        price: u32,
        item: u16,
        deadline: Instant,
    },
    Ending {
        outcome: VendOutcome,
        deadline: Instant,
    },
}

/// The cashless device's protocol state.
#[derive(Debug, Clone)]
pub struct MdbMachine {
    cfg: MdbConfig,
    connected: bool,
    vmc: VmcStatus,
    session: Session,
    lines: LineBuffer,
    enable_sent: Option<Instant>,
}

impl MdbMachine {
    /// A machine with these settings, port not yet open.
    pub fn new(cfg: MdbConfig) -> Self {
        Self {
            cfg,
            connected: false,
            vmc: VmcStatus::Unknown,
            session: Session::None,
            lines: LineBuffer::default(),
            enable_sent: None,
        }
    }

    /// The settings.
    pub fn config(&self) -> &MdbConfig {
        &self.cfg
    }

    /// Whether a session can begin now.
    pub fn ready(&self) -> bool {
        self.connected && self.vmc == VmcStatus::Enabled && self.session == Session::None
    }

    /// What the vending machine last said about the reader.
    pub fn vmc_status(&self) -> VmcStatus {
        self.vmc
    }

    /// Whether a session is open.
    pub fn in_session(&self) -> bool {
        self.session != Session::None
    }

    /// Begins a session with `funds` (minor units) available: the most the
    /// reader's checks allow a charge to be, offered up to the profile's
    /// `max_funds`. The caller runs those checks first; a declined token
    /// never comes here.
    pub fn begin_session(&mut self, now: Instant, funds: u32, out: &mut Outputs<Self>) {
        let funds = funds.min(self.cfg.max_funds);
        let refuse =
            |reason: String| Output::Event(MdbEvent::Done(VendOutcome::NotStarted { reason }));
        if self.session != Session::None {
            out.push(refuse("a session is already open".into()));
        } else if !self.connected {
            out.push(refuse("the adapter's port is not open".into()));
        } else if self.vmc != VmcStatus::Enabled {
            out.push(refuse(format!(
                "the vending machine has not enabled the reader ({})",
                self.vmc
            )));
        } else if funds == 0 {
            out.push(refuse("no funds to offer".into()));
        } else {
            out.push(Output::Write {
                bytes: self.cfg.dialect.begin_session(funds, self.cfg.decimals),
                command: MdbCommand::Start,
            });
            self.session = Session::Starting {
                funds,
                idle_seen: false,
                deadline: now + self.cfg.session_timeout,
            };
        }
    }

    /// The caller's answer to [`MdbEvent::Charge`]: the committed record's
    /// sequence number, or why the reader declined.
    pub fn charged(&mut self, now: Instant, result: Result<u64, Denial>, out: &mut Outputs<Self>) {
        let Session::Charging {
            price,
            item,
            aborted,
            ..
        } = std::mem::replace(&mut self.session, Session::None)
        else {
            out.push(note(
                "a charge result with no vend waiting for one was ignored",
            ));
            return;
        };
        match (aborted, result) {
            (None, Ok(seq)) => {
                out.push(Output::Write {
                    bytes: self.cfg.dialect.approve(price, self.cfg.decimals),
                    command: MdbCommand::Approve,
                });
                self.session = Session::Vending {
                    seq,
                    price,
                    item,
                    deadline: now + self.cfg.vend_result_timeout,
                };
            }
            (None, Err(reason)) => {
                let deny = self.cfg.dialect.deny();
                self.end_with(
                    now,
                    deny,
                    MdbCommand::Deny,
                    VendOutcome::Denied {
                        price,
                        item,
                        reason,
                    },
                    out,
                );
            }
            (Some(why), Ok(seq)) => out.push(done(VendOutcome::Voided {
                seq,
                price,
                item,
                reason: why,
            })),
            (Some(_), Err(reason)) => out.push(done(VendOutcome::Denied {
                price,
                item,
                reason,
            })),
        }
    }

    /// Writes `bytes` to close the session and waits for the machine to
    /// confirm, then reports `outcome`; without a port, reports it at once.
    fn end_with(
        &mut self,
        now: Instant,
        bytes: Vec<u8>,
        command: MdbCommand,
        outcome: VendOutcome,
        out: &mut Outputs<Self>,
    ) {
        if self.connected {
            out.push(Output::Write { bytes, command });
            self.session = Session::Ending {
                outcome,
                deadline: now + self.cfg.end_timeout,
            };
        } else {
            self.session = Session::None;
            out.push(done(outcome));
        }
    }

    /// The session cannot go on (`why`): settle it without writing anything.
    fn session_lost(&mut self, why: &str, out: &mut Outputs<Self>) {
        match std::mem::replace(&mut self.session, Session::None) {
            Session::None => {}
            Session::Starting { .. } => out.push(done(VendOutcome::NoVend { reason: why.into() })),
            Session::Charging {
                funds,
                price,
                item,
                aborted,
            } => {
                // The charge may be being committed right now: void it when it comes.
                self.session = Session::Charging {
                    funds,
                    price,
                    item,
                    aborted: aborted.or(Some(why.into())),
                };
            }
            Session::Vending {
                seq, price, item, ..
            } => out.push(done(VendOutcome::Voided {
                seq,
                price,
                item,
                reason: why.into(),
            })),
            Session::Ending { outcome, .. } => out.push(done(outcome)),
        }
    }

    fn on_line(&mut self, now: Instant, line: AdapterLine, out: &mut Outputs<Self>) {
        match line {
            AdapterLine::Enabled => {
                let was = std::mem::replace(&mut self.vmc, VmcStatus::Enabled);
                match &mut self.session {
                    Session::None => {
                        if was != VmcStatus::Enabled {
                            out.push(Output::Event(MdbEvent::Ready));
                        }
                    }
                    Session::Starting { idle_seen: false, .. } => {}
                    Session::Starting { idle_seen: true, .. } => {
                        self.session = Session::None;
                        out.push(done(VendOutcome::NoVend {
                            reason: "the vending machine ended the session (cancelled)".into(),
                        }));
                    }
                    Session::Charging { .. } | Session::Vending { .. } => self.session_lost(
                        "the vending machine ended the session before the vend was settled",
                        out,
                    ),
                    Session::Ending { .. } => self.session_lost("", out),
                }
            }
            AdapterLine::Disabled | AdapterLine::Inactive => {
                let inactive = line == AdapterLine::Inactive;
                self.vmc = if inactive {
                    VmcStatus::Inactive
                } else {
                    VmcStatus::Disabled
                };
                self.session_lost(
                    &format!("the vending machine made the reader {}", self.vmc),
                    out,
                );
                let recently = self
                    .enable_sent
                    .is_some_and(|at| now.saturating_duration_since(at) < Duration::from_secs(1));
                if inactive && !recently {
                    self.enable(now, out);
                }
            }
            AdapterLine::SessionIdle => match &mut self.session {
                Session::Starting { idle_seen, .. } => *idle_seen = true,
                Session::None => {
                    out.push(note(
                        "the adapter reports a session sonotap did not begin; ending it",
                    ));
                    out.push(Output::Write {
                        bytes: self.cfg.dialect.end_session(),
                        command: MdbCommand::End,
                    });
                }
                _ => {}
            },
            AdapterLine::VendRequest { price, item } => match self.session {
                Session::Starting { funds, .. } => {
                    if price > funds {
                        let deny = self.cfg.dialect.deny();
                        self.end_with(now, deny, MdbCommand::Deny, VendOutcome::Denied {
                            price,
                            item,
                            reason: Denial::OverFunds { price, funds },
                        }, out);
                    } else {
                        self.session = Session::Charging {
                            funds,
                            price,
                            item,
                            aborted: None,
                        };
                        out.push(Output::Event(MdbEvent::Charge { price, item }));
                    }
                }
                Session::None => {
                    out.push(note(&format!(
                        "vend request (item {item}, price {price}) outside a session: denied (out of sequence)"
                    )));
                    out.push(Output::Write {
                        bytes: self.cfg.dialect.deny(),
                        command: MdbCommand::Deny,
                    });
                }
                _ => out.push(note(&format!(
                    "a second vend request (item {item}, price {price}) during a vend was ignored (out of sequence)"
                ))),
            },
            AdapterLine::VendSuccess => match self.session {
                Session::Vending {
                    seq, price, item, ..
                } => {
                    let end = self.cfg.dialect.end_session();
                    self.end_with(now, end, MdbCommand::End, VendOutcome::Vended {
                        seq,
                        price,
                        item,
                    }, out);
                }
                _ => out.push(note("vend success with no vend approved was ignored (out of sequence)")),
            },
            AdapterLine::VendFailure(detail) | AdapterLine::Error(detail)
                if matches!(self.session, Session::Vending { .. }) =>
            {
                if let Session::Vending {
                    seq, price, item, ..
                } = self.session
                {
                    let end = self.cfg.dialect.end_session();
                    self.end_with(now, end, MdbCommand::End, VendOutcome::Voided {
                        seq,
                        price,
                        item,
                        reason: format!("vend failed: {detail}"),
                    }, out);
                }
            }
            AdapterLine::Error(detail)
                if matches!(self.session, Session::Starting { idle_seen: false, .. }) =>
            {
                self.session = Session::None;
                out.push(done(VendOutcome::NotStarted {
                    reason: format!("the adapter refused the session: {detail}"),
                }));
            }
            AdapterLine::VendFailure(detail) => out.push(note(&format!(
                "vend failure {detail:?} with no vend approved was ignored (out of sequence)"
            ))),
            AdapterLine::Error(detail) => out.push(note(&format!("adapter error: {detail}"))),
            AdapterLine::Unknown(what) => out.push(note(&format!("ignored from the adapter: {what}"))),
        }
    }

    /// Ends the session now (the process is stopping): an approved vend
    /// is voided, an open session ended.
    pub fn abort(&mut self, _now: Instant, reason: &str, out: &mut Outputs<Self>) {
        let had = self.session != Session::None;
        self.session_lost(reason, out);
        if had && self.connected {
            out.push(Output::Write {
                bytes: self.cfg.dialect.end_session(),
                command: MdbCommand::End,
            });
        }
    }

    fn enable(&mut self, now: Instant, out: &mut Outputs<Self>) {
        out.push(Output::Write {
            bytes: self.cfg.dialect.enable(),
            command: MdbCommand::Enable,
        });
        self.enable_sent = Some(now);
    }
}

fn note(text: &str) -> Output<MdbCommand, MdbEvent> {
    Output::Event(MdbEvent::Note(text.into()))
}

fn done(outcome: VendOutcome) -> Output<MdbCommand, MdbEvent> {
    Output::Event(MdbEvent::Done(outcome))
}

impl Actuator for MdbMachine {
    type Command = MdbCommand;
    type Event = MdbEvent;

    fn connected(&mut self, now: Instant, out: &mut Outputs<Self>) {
        self.connected = true;
        self.vmc = VmcStatus::Unknown;
        self.lines = LineBuffer::default();
        self.enable(now, out);
    }

    fn disconnected(
        &mut self,
        _now: Instant,
        failed: Option<MdbCommand>,
        reason: &str,
        out: &mut Outputs<Self>,
    ) {
        if self.connected {
            out.push(note(&format!("port lost: {reason}")));
        }
        self.connected = false;
        self.vmc = VmcStatus::Unknown;
        let why = match failed {
            Some(MdbCommand::Approve) => {
                format!("the vend approval could not be delivered ({reason})")
            }
            Some(MdbCommand::Start) => {
                if matches!(self.session, Session::Starting { .. }) {
                    self.session = Session::None;
                    out.push(done(VendOutcome::NotStarted {
                        reason: format!("the session could not be begun ({reason})"),
                    }));
                }
                return;
            }
            _ => format!("the adapter's port was lost ({reason})"),
        };
        self.session_lost(&why, out);
    }

    fn received(&mut self, now: Instant, bytes: &[u8], out: &mut Outputs<Self>) {
        for line in self.lines.push(bytes) {
            match line {
                Line::Text(text) => {
                    let parsed = self.cfg.dialect.parse(&text, self.cfg.decimals);
                    self.on_line(now, parsed, out);
                }
                Line::Garbage(what) => out.push(note(&format!("ignored from the adapter: {what}"))),
            }
        }
    }

    fn tick(&mut self, now: Instant, out: &mut Outputs<Self>) {
        match self.session {
            Session::Starting { deadline, .. } if now >= deadline => {
                let end = self.cfg.dialect.end_session();
                self.end_with(
                    now,
                    end,
                    MdbCommand::End,
                    VendOutcome::NoVend {
                        reason: format!(
                            "no vend request within {} ms",
                            self.cfg.session_timeout.as_millis()
                        ),
                    },
                    out,
                );
            }
            Session::Vending {
                seq,
                price,
                item,
                deadline,
            } if now >= deadline => {
                let end = self.cfg.dialect.end_session();
                self.end_with(
                    now,
                    end,
                    MdbCommand::End,
                    VendOutcome::Voided {
                        seq,
                        price,
                        item,
                        reason: format!(
                            "no vend result within {} ms",
                            self.cfg.vend_result_timeout.as_millis()
                        ),
                    },
                    out,
                );
            }
            Session::Ending { deadline, .. } if now >= deadline => {
                out.push(note(&format!(
                    "the session end was not confirmed within {} ms",
                    self.cfg.end_timeout.as_millis()
                )));
                self.session_lost("", out);
            }
            _ => {}
        }
    }

    fn deadline(&self) -> Option<Instant> {
        match self.session {
            Session::Starting { deadline, .. }
            | Session::Vending { deadline, .. }
            | Session::Ending { deadline, .. } => Some(deadline),
            Session::None | Session::Charging { .. } => None,
        }
    }
}

#[cfg(test)]
mod tests;
