//! The daemon's rules, without I/O: when a decoded token is still served
//! during shutdown, what the rider is told and which decline is counted,
//! when a device's health has changed, and which config changes need a
//! restart. The threads around it ([`super::acceptor`], [`super::sources`])
//! only carry out what these say, so the rules are unit-tested here.

use std::time::{Duration, Instant};

use super::config::Config;
use super::metrics::TapSource;
use crate::actuator::Denial;
use sonotap_protocol::policy::Reason;

/// How long already-decoded tokens are still served after SIGTERM.
pub const DRAIN_GRACE: Duration = Duration::from_secs(2);

/// A decoded token on its way to the acceptor, with the times the
/// benchmark and the metrics need.
#[derive(Debug, Clone)]
pub struct Tap {
    /// The token bytes.
    pub payload: Vec<u8>,
    /// Sound or QR.
    pub source: TapSource,
    /// When the sound frame ended, or the camera frame arrived.
    pub frame_end: Instant,
    /// When the decoder handed the token over.
    pub decoded_at: Instant,
}

/// Running, or draining until a deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Serving every token.
    Running,
    /// Stopping: serve what is already queued until `until`.
    Draining {
        /// The deadline.
        until: Instant,
    },
}

/// What to do with the next queued token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Decide, commit, actuate.
    Serve,
    /// The drain deadline passed: log it as not served (nothing was charged).
    NotServed,
}

/// The acceptor's life cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lifecycle {
    phase: Phase,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Self::new()
    }
}

impl Lifecycle {
    /// Running.
    pub fn new() -> Self {
        Self {
            phase: Phase::Running,
        }
    }

    /// The phase now.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Stop was asked: drain until `until`. A second stop never extends the deadline.
    pub fn stop(&mut self, until: Instant) {
        self.phase = match self.phase {
            Phase::Running => Phase::Draining { until },
            Phase::Draining { until: first } => Phase::Draining {
                until: first.min(until),
            },
        };
    }

    /// Whether a token taken from the queue at `now` is served.
    pub fn admit(&self, now: Instant) -> Admit {
        match self.phase {
            Phase::Draining { until } if now >= until => Admit::NotServed,
            _ => Admit::Serve,
        }
    }

    /// Whether the acceptor is done: draining and the queue is empty, or
    /// (in any phase) the queue's senders are all gone and it is empty.
    pub fn finished(&self, queue_empty: bool) -> bool {
        matches!(self.phase, Phase::Draining { .. }) && queue_empty
    }
}

/// What the rider hears (tone) for a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Feedback {
    /// Accepted: the gate opens, the vend is approved.
    Accept,
    /// Declined.
    Decline,
}

impl Feedback {
    /// The tone: (frequency Hz, duration) segments, silence as 0 Hz.
    /// Accept: one rising pair of short beeps; decline: two low beeps.
    pub fn tone(self) -> &'static [(f32, Duration)] {
        const ACCEPT: [(f32, Duration); 2] = [
            (1_320.0, Duration::from_millis(70)),
            (1_760.0, Duration::from_millis(110)),
        ];
        const DECLINE: [(f32, Duration); 3] = [
            (440.0, Duration::from_millis(140)),
            (0.0, Duration::from_millis(60)),
            (440.0, Duration::from_millis(140)),
        ];
        match self {
            Feedback::Accept => &ACCEPT,
            Feedback::Decline => &DECLINE,
        }
    }
}

/// Why the daemon declined a tap, as the metrics count it and the rider's
/// display shows it: the policy's reason, or one of the daemon's own. The
/// label is made here, at the edge, from typed values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The offline policy declined the token.
    Policy(Reason),
    /// The reader's store failed: nothing charged, nothing actuated.
    StoreError,
    /// The vend was denied before any charge, not by the policy (over the
    /// funds, or no charge could be committed).
    VendDenied,
    /// The vend failed after its charge was committed: the charge is voided.
    VendFailed,
    /// The session ended without a vend (nothing charged).
    NoVend,
}

impl Refusal {
    /// The label (`sonotap_declines_total{reason=…}`, the display's `{reason}`).
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Policy(reason) => reason.as_str(),
            Refusal::StoreError => "store_error",
            Refusal::VendDenied => "vend_denied",
            Refusal::VendFailed => "vend_failed",
            Refusal::NoVend => "no_vend",
        }
    }
}

impl From<&Denial> for Refusal {
    /// A vend denied before any charge keeps the policy's reason when the
    /// policy declined it; any other denial is `vend_denied`.
    fn from(denial: &Denial) -> Self {
        denial
            .policy_reason()
            .map_or(Refusal::VendDenied, Refusal::Policy)
    }
}

/// The fields of a new config (SIGHUP) that take effect only at the next
/// restart and differ from the running one, in the file's order. The log
/// level and the fare are applied at once, so they are never listed.
pub fn restart_needed(running: &Config, new: &Config) -> Vec<&'static str> {
    let changed = [
        ("data", running.data != new.data),
        (
            "clock_skew_secs",
            running.clock_skew_secs != new.clock_skew_secs,
        ),
        ("audio", running.audio != new.audio),
        ("camera", running.camera != new.camera),
        ("actuator", running.actuator != new.actuator),
        ("hub", running.hub != new.hub),
        ("metrics", running.metrics != new.metrics),
        ("feedback", running.feedback != new.feedback),
        ("site", running.site != new.site),
        ("beacon", running.beacon != new.beacon),
    ];
    changed
        .into_iter()
        .filter_map(|(field, changed)| changed.then_some(field))
        .collect()
}

/// A device's health, as the status file shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceHealth {
    /// The device (`audio`, `camera`, `gate`, `vending`, `feedback`).
    pub name: &'static str,
    /// Working now.
    pub ok: bool,
    /// What it is, or what is wrong.
    pub detail: String,
}

/// How a health report changed a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Nothing that matters (same state and text).
    None,
    /// The text changed, not the state.
    Detail,
    /// It works again (or for the first time).
    Up,
    /// It failed: count a device error.
    Down,
}

/// Applies a report to `health`; what changed decides whether the status
/// file is rewritten now and whether a device error is counted.
pub fn report(health: &mut DeviceHealth, ok: bool, detail: &str) -> Change {
    let change = match (health.ok, ok) {
        (true, false) => Change::Down,
        (false, true) => Change::Up,
        _ if health.detail != detail => Change::Detail,
        _ => Change::None,
    };
    health.ok = ok;
    if health.detail != detail {
        health.detail = detail.to_string();
    }
    change
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_served_until_the_drain_deadline_then_not_served() {
        let t0 = Instant::now();
        let mut life = Lifecycle::new();
        assert_eq!(life.admit(t0 + Duration::from_secs(3600)), Admit::Serve);
        assert!(
            !life.finished(true),
            "running never finishes on an empty queue"
        );
        life.stop(t0 + DRAIN_GRACE);
        assert_eq!(life.admit(t0 + Duration::from_millis(1999)), Admit::Serve);
        assert_eq!(life.admit(t0 + DRAIN_GRACE), Admit::NotServed);
        assert!(!life.finished(false));
        assert!(life.finished(true));
    }

    #[test]
    fn a_second_stop_never_extends_the_deadline() {
        let t0 = Instant::now();
        let mut life = Lifecycle::new();
        life.stop(t0 + Duration::from_secs(1));
        life.stop(t0 + Duration::from_secs(5));
        assert_eq!(
            life.phase(),
            Phase::Draining {
                until: t0 + Duration::from_secs(1)
            }
        );
    }

    #[test]
    fn health_changes_count_errors_only_on_the_way_down() {
        let mut h = DeviceHealth {
            name: "gate",
            ok: true,
            detail: "ok".into(),
        };
        assert_eq!(report(&mut h, true, "ok"), Change::None);
        assert_eq!(report(&mut h, false, "gone (retrying)"), Change::Down);
        assert_eq!(report(&mut h, false, "gone (retrying)"), Change::None);
        assert_eq!(report(&mut h, false, "other"), Change::Detail);
        assert_eq!(report(&mut h, true, "back"), Change::Up);
        assert!(h.ok && h.detail == "back");
    }

    #[test]
    fn vend_denials_keep_the_policy_reason_when_there_is_one() {
        let replayed = Denial::Policy(sonotap_protocol::policy::Decline {
            reason: Reason::Replayed,
            detail: "counter 1 is not above 1".into(),
        });
        assert_eq!(Refusal::from(&replayed).as_str(), "replayed");
        let over = Denial::OverFunds {
            price: 900,
            funds: 200,
        };
        assert_eq!(Refusal::from(&over).as_str(), "vend_denied");
        let not_charged = Denial::NotCharged("the reader's store failed".into());
        assert_eq!(Refusal::from(&not_charged).as_str(), "vend_denied");
    }

    fn config(text: &str) -> Config {
        Config::parse(
            &format!("data = \"r\"\n{text}"),
            std::path::Path::new("/etc/sonotap/config.toml"),
            std::path::Path::new("/etc/sonotap"),
        )
        .unwrap()
    }

    #[test]
    fn a_reload_that_changes_only_the_log_level_and_the_fare_needs_no_restart() {
        let running = config("log_level = \"info\"\n[payment]\nfare = 250");
        let new = config("log_level = \"debug\"\n[payment]\nfare = 300");
        assert!(restart_needed(&running, &new).is_empty());
        assert!(restart_needed(&running, &running).is_empty());
    }

    #[test]
    fn a_reload_that_changes_devices_hub_or_metrics_names_each_field_that_waits_for_a_restart() {
        let running = config("[camera]\nsource = \"pipe\"\npath = \"-\"");
        let new = config(
            "clock_skew_secs = 60\n[camera]\nsource = \"pipe\"\npath = \"-\"\nbudget_ms = 40\n\
             [hub]\nurl = \"http://h\"\n[metrics]\nlisten = \"\"\n[beacon]\nlife_secs = 40\nqr_file = \"b.png\"",
        );
        assert_eq!(
            restart_needed(&running, &new),
            ["clock_skew_secs", "camera", "hub", "metrics", "beacon"]
        );
    }

    #[test]
    fn a_reload_that_moves_the_data_directory_or_changes_feedback_or_the_actuator_needs_a_restart()
    {
        let running = config("");
        let moved = Config::parse(
            "data = \"elsewhere\"",
            std::path::Path::new("/etc/sonotap/config.toml"),
            std::path::Path::new("/etc/sonotap"),
        )
        .unwrap();
        assert_eq!(restart_needed(&running, &moved), ["data"]);
        let new = config(
            "[feedback]\ntone = true\n[actuator]\nprofile = \"ch340-relay\"\n[audio]\nsource = \"device\"",
        );
        assert_eq!(
            restart_needed(&running, &new),
            ["audio", "actuator", "feedback"]
        );
    }

    #[test]
    fn accept_and_decline_tones_differ_and_are_short() {
        let total = |f: Feedback| f.tone().iter().map(|(_, d)| *d).sum::<Duration>();
        assert_ne!(Feedback::Accept.tone(), Feedback::Decline.tone());
        assert!(total(Feedback::Accept) <= Duration::from_millis(400));
        assert!(total(Feedback::Decline) <= Duration::from_millis(400));
    }
}
