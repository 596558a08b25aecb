//! The MDB cashless-device machine driven by arbitrary events: adapter
//! bytes (lines, garbage, lines cut anywhere), time passing, sessions
//! begun and aborted, charges answered or refused, the port lost and back.
//! Never a panic; and the money rule holds: a vend is approved only after
//! the caller answered that vend's charge with a committed record, once.
#![no_main]

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use sonotap_reader::actuator::mdb::{MdbCommand, MdbConfig, MdbEvent, MdbMachine};
use sonotap_reader::actuator::profile::{Device, Profile};
use sonotap_reader::actuator::{Actuator, Denial, Output, Outputs};

/// The caller's view: a charge asked for and not answered, a committed
/// charge not yet approved.
#[derive(Default)]
struct Ledger {
    asked: bool,
    committed: u32,
}

impl Ledger {
    fn take(&mut self, out: Outputs<MdbMachine>) {
        for output in out {
            match output {
                Output::Write {
                    command: MdbCommand::Approve,
                    ..
                } => {
                    assert!(self.committed > 0, "a vend approved without a committed charge");
                    self.committed -= 1;
                }
                // A session's end settles it: a committed charge not
                // approved by then is the driver's to void.
                Output::Event(MdbEvent::Done(_)) => self.committed = 0,
                Output::Event(MdbEvent::Charge { .. }) => {
                    assert!(!self.asked, "a second charge asked before the first was answered");
                    self.asked = true;
                }
                _ => {}
            }
        }
    }
}

/// The stock adapter profile's settings, parsed once.
static CONFIG: OnceLock<MdbConfig> = OnceLock::new();

fn config() -> MdbConfig {
    CONFIG
        .get_or_init(|| {
            let profile = Profile::load("mdb-qibixx", &[]).expect("the built-in profile loads");
            match profile.device {
                Device::Mdb(config) => config,
                Device::Gate(_) => panic!("mdb-qibixx is a vending profile"),
            }
        })
        .clone()
}

fuzz_target!(|data: &[u8]| {
    let mut machine = MdbMachine::new(config());
    let mut ledger = Ledger::default();
    let mut now = Instant::now();
    let mut bytes = data.iter().copied();
    let mut out = Vec::new();
    machine.connected(now, &mut out);
    ledger.take(std::mem::take(&mut out));
    while let Some(op) = bytes.next() {
        match op % 8 {
            0 => {
                let len = usize::from(bytes.next().unwrap_or(0));
                let chunk: Vec<u8> = bytes.by_ref().take(len).collect();
                machine.received(now, &chunk, &mut out);
            }
            1 => {
                now += Duration::from_millis(u64::from(bytes.next().unwrap_or(0)) * 50);
                if machine.deadline().is_some_and(|d| d <= now) {
                    machine.tick(now, &mut out);
                }
            }
            2 => {
                let funds = u32::from(bytes.next().unwrap_or(0)) * 25;
                machine.begin_session(now, funds, &mut out);
            }
            3 if ledger.asked => {
                ledger.asked = false;
                ledger.committed += 1;
                machine.charged(now, Ok(7), &mut out);
            }
            4 if ledger.asked => {
                ledger.asked = false;
                let denial = Denial::NotCharged("fuzz".into());
                machine.charged(now, Err(denial), &mut out);
            }
            5 => {
                // The port lost, noticed by a write that failed, or not.
                let failed = match bytes.next().unwrap_or(0) % 6 {
                    0 => Some(MdbCommand::Enable),
                    1 => Some(MdbCommand::Start),
                    2 => Some(MdbCommand::Approve),
                    3 => Some(MdbCommand::Deny),
                    4 => Some(MdbCommand::End),
                    _ => None,
                };
                machine.disconnected(now, failed, "fuzz", &mut out);
            }
            6 => machine.connected(now, &mut out),
            7 => machine.abort(now, "fuzz", &mut out),
            _ => {}
        }
        ledger.take(std::mem::take(&mut out));
    }
});
