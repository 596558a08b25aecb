//! Every transition of the cashless-device machine, driven with adapter lines.

use super::*;
use crate::actuator::profile::{Device, Profile};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn config() -> MdbConfig {
    match Profile::load("mdb-qibixx", &[]).expect("built-in").device {
        Device::Mdb(cfg) => MdbConfig {
            session_timeout: ms(10_000),
            vend_result_timeout: ms(5_000),
            end_timeout: ms(1_000),
            ..cfg
        },
        Device::Gate(_) => panic!("mdb-qibixx is a vending profile"),
    }
}

/// A machine with the port open and the reader enabled, at `t0`.
struct Rig {
    m: MdbMachine,
    t0: Instant,
}

impl Rig {
    fn new() -> Self {
        let t0 = Instant::now();
        let mut m = MdbMachine::new(config());
        let mut out = Vec::new();
        m.connected(t0, &mut out);
        assert_eq!(writes(&out), ["C,1"]);
        let mut rig = Rig { m, t0 };
        let out = rig.line(0, "c,STATUS,ENABLED");
        assert_eq!(events(&out), [MdbEvent::Ready]);
        assert!(rig.m.ready());
        rig
    }

    fn at(&self, n: u64) -> Instant {
        self.t0 + ms(n)
    }

    fn line(&mut self, at: u64, line: &str) -> Outputs<MdbMachine> {
        let mut out = Vec::new();
        self.m
            .received(self.at(at), format!("{line}\r\n").as_bytes(), &mut out);
        out
    }

    fn begin(&mut self, at: u64, funds: u32) -> Outputs<MdbMachine> {
        let mut out = Vec::new();
        self.m.begin_session(self.at(at), funds, &mut out);
        out
    }

    fn charged(&mut self, at: u64, result: Result<u64, Denial>) -> Outputs<MdbMachine> {
        let mut out = Vec::new();
        self.m.charged(self.at(at), result, &mut out);
        out
    }

    fn tick(&mut self, at: u64) -> Outputs<MdbMachine> {
        let mut out = Vec::new();
        self.m.tick(self.at(at), &mut out);
        out
    }

    /// Begins a session with 250 and gets a vend request for 125, item 12.
    fn reach_charging(&mut self) {
        assert_eq!(writes(&self.begin(0, 250)), ["C,START,2.50"]);
        assert!(self.line(10, "c,STATUS,IDLE,2.50").is_empty());
        let out = self.line(20, "c,STATUS,VEND,1.25,12");
        assert_eq!(
            events(&out),
            [MdbEvent::Charge {
                price: 125,
                item: 12
            }]
        );
        assert!(
            writes(&out).is_empty(),
            "nothing approved before the charge"
        );
    }

    /// ... and the charge is committed as record 7: approved.
    fn reach_vending(&mut self) {
        self.reach_charging();
        let out = self.charged(30, Ok(7));
        assert_eq!(writes(&out), ["C,VEND,1.25"]);
    }
}

fn writes(out: &Outputs<MdbMachine>) -> Vec<String> {
    out.iter()
        .filter_map(|o| match o {
            Output::Write { bytes, .. } => {
                Some(String::from_utf8_lossy(bytes).trim_end().to_string())
            }
            Output::Event(_) => None,
        })
        .collect()
}

fn events(out: &Outputs<MdbMachine>) -> Vec<MdbEvent> {
    out.iter()
        .filter_map(|o| match o {
            Output::Event(MdbEvent::Note(_)) | Output::Write { .. } => None,
            Output::Event(e) => Some(e.clone()),
        })
        .collect()
}

fn notes(out: &Outputs<MdbMachine>) -> Vec<String> {
    out.iter()
        .filter_map(|o| match o {
            Output::Event(MdbEvent::Note(n)) => Some(n.clone()),
            _ => None,
        })
        .collect()
}

fn outcome(out: &Outputs<MdbMachine>) -> Option<VendOutcome> {
    out.iter().find_map(|o| match o {
        Output::Event(MdbEvent::Done(v)) => Some(v.clone()),
        _ => None,
    })
}

#[test]
fn an_approved_vend_is_charged_before_approval_and_kept_on_success() {
    let mut r = Rig::new();
    r.reach_vending();
    assert!(!r.m.ready());
    let out = r.line(40, "c,VEND,SUCCESS");
    assert_eq!(writes(&out), ["C,STOP"], "session complete");
    assert_eq!(outcome(&out), None, "settled when the machine confirms");
    let out = r.line(50, "c,STATUS,ENABLED");
    assert_eq!(
        outcome(&out),
        Some(VendOutcome::Vended {
            seq: 7,
            price: 125,
            item: 12
        })
    );
    assert!(r.m.ready());
}

#[test]
fn a_price_above_the_funds_is_denied_without_a_charge() {
    let mut r = Rig::new();
    r.begin(0, 100);
    let out = r.line(10, "c,STATUS,VEND,1.50,3");
    assert_eq!(writes(&out), ["C,STOP"]);
    assert!(events(&out).is_empty(), "no charge asked for");
    let out = r.line(20, "c,STATUS,ENABLED");
    assert!(matches!(
        outcome(&out),
        Some(VendOutcome::Denied { price: 150, item: 3, reason }) if reason.to_string().contains("above the funds 100")
    ));
}

#[test]
fn a_price_equal_to_the_funds_fits() {
    let mut r = Rig::new();
    r.begin(0, 150);
    let out = r.line(10, "c,STATUS,VEND,1.50,3");
    assert_eq!(
        events(&out),
        [MdbEvent::Charge {
            price: 150,
            item: 3
        }]
    );
}

#[test]
fn a_reader_decline_denies_the_vend() {
    let mut r = Rig::new();
    r.reach_charging();
    let decline = Decline {
        reason: Reason::OverOfflineLimit,
        detail: "250 + 125 is over the limit 300".into(),
    };
    let out = r.charged(30, Err(Denial::Policy(decline)));
    assert_eq!(writes(&out), ["C,STOP"]);
    let out = r.line(40, "c,STATUS,ENABLED");
    assert!(matches!(
        outcome(&out),
        Some(VendOutcome::Denied { reason, .. }) if reason.policy_reason() == Some(Reason::OverOfflineLimit)
    ));
}

#[test]
fn a_failed_dispense_voids_the_charge() {
    let mut r = Rig::new();
    r.reach_vending();
    let out = r.line(40, "c,VEND,FAIL");
    assert_eq!(writes(&out), ["C,STOP"]);
    let out = r.line(50, "c,STATUS,ENABLED");
    assert!(matches!(
        outcome(&out),
        Some(VendOutcome::Voided { seq: 7, price: 125, reason, .. }) if reason.contains("FAIL")
    ));
}

#[test]
fn an_adapter_error_during_the_vend_voids_the_charge() {
    let mut r = Rig::new();
    r.reach_vending();
    let out = r.line(40, "c,ERR,VEND 3");
    assert_eq!(writes(&out), ["C,STOP"]);
    let out = r.tick(40 + 1_000);
    assert!(matches!(
        outcome(&out),
        Some(VendOutcome::Voided { seq: 7, .. })
    ));
}

#[test]
fn no_vend_result_in_time_voids_the_charge() {
    let mut r = Rig::new();
    r.reach_vending();
    assert_eq!(r.m.deadline(), Some(r.at(30 + 5_000)));
    assert!(r.tick(30 + 4_999).is_empty());
    let out = r.tick(30 + 5_000);
    assert_eq!(writes(&out), ["C,STOP"]);
    let out = r.line(6_000, "c,STATUS,ENABLED");
    assert!(matches!(
        outcome(&out),
        Some(VendOutcome::Voided { seq: 7, reason, .. }) if reason.contains("no vend result within 5000 ms")
    ));
}

#[test]
fn a_late_success_after_the_void_is_only_noted() {
    let mut r = Rig::new();
    r.reach_vending();
    r.tick(30 + 5_000);
    r.line(6_000, "c,STATUS,ENABLED");
    let out = r.line(6_100, "c,VEND,SUCCESS");
    assert!(writes(&out).is_empty() && events(&out).is_empty());
    assert!(notes(&out)[0].contains("out of sequence"));
}

#[test]
fn no_vend_request_within_the_session_timeout_ends_the_session() {
    let mut r = Rig::new();
    r.begin(0, 250);
    r.line(10, "c,STATUS,IDLE,2.50");
    let out = r.tick(10_000);
    assert_eq!(writes(&out), ["C,STOP"]);
    let out = r.tick(11_000);
    assert!(matches!(
        outcome(&out),
        Some(VendOutcome::NoVend { reason }) if reason.contains("no vend request")
    ));
    assert!(notes(&out)[0].contains("not confirmed"));
    assert!(r.m.ready(), "a new session can begin");
}

#[test]
fn the_machine_cancelling_the_session_is_no_vend() {
    let mut r = Rig::new();
    r.begin(0, 250);
    r.line(10, "c,STATUS,IDLE,2.50");
    let out = r.line(20, "c,STATUS,ENABLED");
    assert!(matches!(outcome(&out), Some(VendOutcome::NoVend { .. })));
    assert!(writes(&out).is_empty());
}

#[test]
fn a_vend_request_outside_a_session_is_denied() {
    let mut r = Rig::new();
    let out = r.line(0, "c,STATUS,VEND,1.00,1");
    assert_eq!(writes(&out), ["C,STOP"]);
    assert!(events(&out).is_empty());
    assert!(notes(&out)[0].contains("outside a session"));
    assert!(r.m.ready());
}

#[test]
fn a_second_vend_request_during_a_vend_is_ignored() {
    let mut r = Rig::new();
    r.reach_vending();
    let out = r.line(35, "c,STATUS,VEND,0.50,2");
    assert!(writes(&out).is_empty() && events(&out).is_empty());
    assert!(notes(&out)[0].contains("second vend request"));
    let out = r.line(40, "c,VEND,SUCCESS");
    assert_eq!(writes(&out), ["C,STOP"]);
}

#[test]
fn a_session_the_reader_did_not_begin_is_ended() {
    let mut r = Rig::new();
    let out = r.line(0, "c,STATUS,IDLE,5.00");
    assert_eq!(writes(&out), ["C,STOP"]);
}

#[test]
fn being_disabled_mid_vend_voids_and_mid_charge_voids_when_the_charge_lands() {
    let mut r = Rig::new();
    r.reach_vending();
    let out = r.line(40, "c,STATUS,DISABLED");
    assert!(writes(&out).is_empty());
    assert!(matches!(
        outcome(&out),
        Some(VendOutcome::Voided { seq: 7, .. })
    ));
    assert_eq!(r.m.vmc_status(), VmcStatus::Disabled);

    let mut r = Rig::new();
    r.reach_charging();
    let out = r.line(25, "c,STATUS,DISABLED");
    assert_eq!(outcome(&out), None, "the charge is still being committed");
    let out = r.charged(30, Ok(8));
    assert!(
        writes(&out).is_empty(),
        "never approve a vend that cannot be delivered"
    );
    assert!(matches!(
        outcome(&out),
        Some(VendOutcome::Voided { seq: 8, reason, .. }) if reason.contains("disabled")
    ));
}

#[test]
fn the_port_lost_mid_vend_voids_and_an_undelivered_approval_voids() {
    let mut r = Rig::new();
    r.reach_vending();
    let mut out = Vec::new();
    r.m.disconnected(r.at(40), None, "broken pipe", &mut out);
    assert!(matches!(
        outcome(&out),
        Some(VendOutcome::Voided { seq: 7, reason, .. }) if reason.contains("broken pipe")
    ));
    assert!(!r.m.ready());

    let mut r = Rig::new();
    r.reach_vending();
    let mut out = Vec::new();
    r.m.disconnected(r.at(31), Some(MdbCommand::Approve), "EIO", &mut out);
    assert!(matches!(
        outcome(&out),
        Some(VendOutcome::Voided { seq: 7, reason, .. }) if reason.contains("approval could not be delivered")
    ));
}

#[test]
fn the_port_lost_while_charging_voids_the_charge_when_it_lands() {
    let mut r = Rig::new();
    r.reach_charging();
    let mut out = Vec::new();
    r.m.disconnected(r.at(25), None, "EIO", &mut out);
    assert_eq!(outcome(&out), None);
    let out = r.charged(30, Ok(9));
    assert!(writes(&out).is_empty());
    assert!(matches!(
        outcome(&out),
        Some(VendOutcome::Voided { seq: 9, .. })
    ));
}

#[test]
fn a_session_cannot_begin_unless_enabled_connected_and_idle() {
    let mut m = MdbMachine::new(config());
    let t0 = Instant::now();
    let mut out = Vec::new();
    m.begin_session(t0, 100, &mut out);
    assert!(
        matches!(outcome(&out), Some(VendOutcome::NotStarted { reason }) if reason.contains("port"))
    );
    m.connected(t0, &mut out);
    let mut out = Vec::new();
    m.begin_session(t0, 100, &mut out);
    assert!(
        matches!(outcome(&out), Some(VendOutcome::NotStarted { reason }) if reason.contains("no status yet"))
    );
    let mut r = Rig::new();
    r.begin(0, 100);
    let out = r.begin(1, 100);
    assert!(
        matches!(outcome(&out), Some(VendOutcome::NotStarted { reason }) if reason.contains("already open"))
    );
    let mut r = Rig::new();
    let out = r.begin(0, 0);
    assert!(matches!(
        outcome(&out),
        Some(VendOutcome::NotStarted { .. })
    ));
    assert!(writes(&out).is_empty());
}

#[test]
fn an_adapter_error_on_begin_is_not_started() {
    let mut r = Rig::new();
    r.begin(0, 100);
    let out = r.line(5, "c,ERR,START -3");
    assert!(matches!(
        outcome(&out),
        Some(VendOutcome::NotStarted { reason }) if reason.contains("START -3")
    ));
    assert!(r.m.ready());
}

#[test]
fn an_undelivered_begin_is_not_started() {
    let mut r = Rig::new();
    r.begin(0, 100);
    let mut out = Vec::new();
    r.m.disconnected(r.at(0), Some(MdbCommand::Start), "EIO", &mut out);
    assert!(matches!(
        outcome(&out),
        Some(VendOutcome::NotStarted { .. })
    ));
}

#[test]
fn inactive_re_enables_at_most_once_a_second() {
    let mut r = Rig::new();
    let out = r.line(2_000, "c,STATUS,INACTIVE");
    assert_eq!(writes(&out), ["C,1"]);
    let out = r.line(2_500, "c,STATUS,INACTIVE");
    assert!(writes(&out).is_empty());
    let out = r.line(2_600, "c,STATUS,ENABLED");
    assert_eq!(events(&out), [MdbEvent::Ready]);
}

#[test]
fn unknown_lines_and_garbage_are_noted_and_change_nothing() {
    let mut r = Rig::new();
    r.begin(0, 250);
    let mut out = Vec::new();
    r.m.received(
        r.at(1),
        b"\x00\xff\xfe garbage\r\nhello\nc,STATUS,WHAT\nc,STATUS,VEND,abc,1\n",
        &mut out,
    );
    assert_eq!(notes(&out).len(), 4, "{out:?}");
    assert!(writes(&out).is_empty() && events(&out).is_empty());
    let out = r.line(2, "c,STATUS,VEND,1.00,4");
    assert_eq!(
        events(&out),
        [MdbEvent::Charge {
            price: 100,
            item: 4
        }]
    );
}

#[test]
fn a_charge_result_with_nothing_waiting_is_ignored() {
    let mut r = Rig::new();
    let out = r.charged(0, Ok(1));
    assert!(writes(&out).is_empty() && events(&out).is_empty());
    assert_eq!(notes(&out).len(), 1);
}

#[test]
fn amounts_follow_the_profiles_decimals() {
    assert_eq!(format_amount(250, 2), "2.50");
    assert_eq!(format_amount(5, 2), "0.05");
    assert_eq!(format_amount(250, 0), "250");
    assert_eq!(parse_amount("2.50", 2), Some(250));
    assert_eq!(parse_amount("2.5", 2), Some(250));
    assert_eq!(parse_amount("2", 2), Some(200));
    assert_eq!(parse_amount("250", 0), Some(250));
    for bad in ["", ".5", "2.", "2.505", "-1", "1e3", "99999999999"] {
        assert_eq!(parse_amount(bad, 2), None, "{bad}");
    }
    assert_eq!(parse_amount("2.5", 0), None);
}

#[test]
fn issue13_12_a_session_offers_no_more_than_max_funds() {
    let mut rig = Rig::new();
    let ceiling = rig.m.config().max_funds;
    assert_eq!(ceiling, 65_534, "the built-in profile's default");
    let out = rig.begin(0, u32::MAX);
    assert_eq!(writes(&out), ["C,START,655.34"]);
    // A price above the ceiling is denied, not charged.
    let out = rig.line(10, "c,STATUS,VEND,700.00,1");
    assert!(
        !events(&out)
            .iter()
            .any(|e| matches!(e, MdbEvent::Charge { .. })),
        "{out:?}"
    );
    assert_eq!(writes(&out), ["C,STOP"]);
}
