//! `sonotap hw`: list device profiles, test a gate or a vending machine on
//! site, release a gate relay.
//!
//! Exit codes: 0 the device did what was asked; 1 a device-level failure
//! (not acknowledged, vend denied, failed or not requested, machine not
//! enabling the reader, interrupted); 2 a configuration or port error.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use serde_json::json;

use sonotap_reader::actuator::driver::Charger;
use sonotap_reader::actuator::gate::{Delivery, Passage, Release};
use sonotap_reader::actuator::mdb::{Denial, VendOutcome};
use sonotap_reader::actuator::profile::{self, Device, Profile};
use sonotap_reader::actuator::{Gate, Vending};

#[derive(Debug, Subcommand)]
pub(super) enum HwCommand {
    /// List the device profiles: built in, ./hw/profiles and /etc/sonotap/profiles
    Profiles {
        /// Also look for profiles in DIR (before the default directories)
        #[arg(long, value_name = "DIR")]
        dir: Vec<PathBuf>,
    },
    /// On site: pulse the gate once, or run one vend session (nothing is charged)
    Test(TestArgs),
    /// Release a gate's relay now (write its close / reset command)
    Release {
        /// Profile name or path to a .toml file
        #[arg(long)]
        profile: String,
        /// Serial port (default: the profile's)
        #[arg(long, value_name = "PATH")]
        port: Option<PathBuf>,
        /// Also look for profiles in DIR
        #[arg(long, value_name = "DIR")]
        dir: Vec<PathBuf>,
    },
}

#[derive(Debug, Args)]
pub(super) struct TestArgs {
    /// Profile name or path to a .toml file (`sonotap hw profiles` lists them)
    #[arg(long)]
    profile: String,
    /// Serial port (default: the profile's)
    #[arg(long, value_name = "PATH")]
    port: Option<PathBuf>,
    /// Vending: the price the machine should ask; another price is denied
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    price: Option<u32>,
    /// Vending: funds to offer in the session, minor units (default: --price, else 100)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    funds: Option<u32>,
    /// Also look for profiles in DIR
    #[arg(long, value_name = "DIR")]
    dir: Vec<PathBuf>,
}

pub(super) fn run(command: HwCommand) -> Result<ExitCode> {
    match command {
        HwCommand::Profiles { dir } => {
            let (profiles, errors) = Profile::list(&dirs(dir));
            println!(
                "{:<16} {:<5} {:<20} {:>6}  {:<10} description",
                "name", "kind", "port", "baud", "from"
            );
            for p in &profiles {
                println!(
                    "{:<16} {:<5} {:<20} {:>6}  {:<10} {}",
                    p.name,
                    p.kind().as_str(),
                    p.port.display(),
                    p.baud,
                    match p.origin {
                        profile::Origin::Builtin => "built-in".into(),
                        profile::Origin::File(_) => "file".to_string(),
                    },
                    p.description
                );
            }
            for e in &errors {
                eprintln!("sonotap: warning: {e}");
            }
            Ok(ExitCode::SUCCESS)
        }
        HwCommand::Test(args) => {
            let profile = Profile::load(&args.profile, &dirs(args.dir.clone()))?;
            match profile.device {
                Device::Gate(_) => test_gate(&profile, &args),
                Device::Mdb(_) => test_vend(&profile, &args),
            }
        }
        HwCommand::Release { profile, port, dir } => {
            let profile = Profile::load(&profile, &dirs(dir))?;
            let mut gate = Gate::new(&profile, port.as_deref())?;
            gate.connect()?;
            gate.release();
            print_notes(gate.take_notes());
            println!("{}: reset written (relay released)", gate.device());
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn dirs(extra: Vec<PathBuf>) -> Vec<PathBuf> {
    let mut all = extra;
    all.extend(profile::default_dirs());
    all
}

/// A flag set by SIGINT or SIGTERM, so a test can release the gate or end
/// the session before exiting.
fn stop_flag() -> Result<Arc<AtomicBool>> {
    let flag = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&flag))
            .context("cannot install the signal handler")?;
    }
    Ok(flag)
}

fn print_notes(notes: Vec<String>) {
    for note in notes {
        eprintln!("sonotap: note: {note}");
    }
}

fn test_gate(profile: &Profile, args: &TestArgs) -> Result<ExitCode> {
    if args.price.is_some() || args.funds.is_some() {
        anyhow::bail!(
            "--price and --funds are for vending profiles; {} is a gate",
            profile.name
        );
    }
    let stop = stop_flag()?;
    let mut gate = Gate::new(profile, args.port.as_deref())?;
    gate.set_stop(Arc::clone(&stop));
    gate.connect()?;
    let outcome = gate.open_for(0);
    print_notes(gate.take_notes());
    let interrupted = stop.load(std::sync::atomic::Ordering::SeqCst);
    let (delivered, detail) = match &outcome.delivery {
        Delivery::Delivered => (true, None),
        Delivery::Undeliverable(why) => (false, Some(why.clone())),
    };
    let release = match &outcome.release {
        Release::Released => "released".to_string(),
        Release::ByDevice => "by_device".to_string(),
        Release::NotOpened => "not_opened".to_string(),
        Release::Pending(why) => format!("pending: {why}"),
    };
    let (passage, passage_detail) = match &outcome.passage {
        Passage::NotExpected => ("not_expected", None),
        Passage::Seen(line) => ("seen", Some(line.clone())),
        Passage::NotSeen(line) => ("not_seen", Some(line.clone())),
        Passage::NoReport(why) => ("no_report", Some(why.clone())),
    };
    println!(
        "{}",
        json!({
            "profile": profile.name,
            "device": gate.device(),
            "delivered": delivered && !interrupted,
            "detail": detail,
            "ack": outcome.ack,
            "held_ms": outcome.held.map(|h| h.as_millis() as u64),
            "release": release,
            "passage": passage,
            "passage_detail": passage_detail,
            "interrupted": interrupted,
        })
    );
    drop(gate);
    Ok(match delivered && !interrupted {
        true => ExitCode::SUCCESS,
        false => ExitCode::from(1),
    })
}

/// Charges nothing: an installer's session checks the machine, not a wallet.
struct DryRun {
    expected_price: Option<u32>,
}

impl Charger for DryRun {
    fn charge(&mut self, price: u32, _item: u16) -> Result<u64, Denial> {
        match self.expected_price {
            Some(expected) if expected != price => Err(Denial::NotCharged(format!(
                "the machine asked {price}, the test expected {expected}"
            ))),
            _ => Ok(0),
        }
    }
    fn vended(&mut self, _seq: u64, _price: u32, _item: u16) -> Result<(), String> {
        Ok(())
    }
    fn void(&mut self, _seq: u64, _reason: &str) -> Result<(), String> {
        Ok(())
    }
}

fn test_vend(profile: &Profile, args: &TestArgs) -> Result<ExitCode> {
    let funds = args.funds.or(args.price).unwrap_or(100);
    let stop = stop_flag()?;
    let mut vending = Vending::new(profile, args.port.as_deref())?;
    vending.set_stop(Arc::clone(&stop));
    vending.connect()?;
    eprintln!(
        "sonotap: {}: session offering {funds}; select a product on the machine (test: nothing is charged)",
        vending.device()
    );
    let report = vending.session(
        funds,
        &mut DryRun {
            expected_price: args.price,
        },
    );
    print_notes(report.notes);
    let line = match &report.outcome {
        VendOutcome::Vended { price, item, .. } => {
            json!({"outcome": "vended", "price": price, "item": item})
        }
        VendOutcome::Denied {
            price,
            item,
            reason,
        } => {
            json!({"outcome": "denied", "price": price, "item": item, "reason": reason.to_string()})
        }
        VendOutcome::Voided {
            price,
            item,
            reason,
            ..
        } => json!({"outcome": "failed", "price": price, "item": item, "reason": reason}),
        VendOutcome::NoVend { reason } => json!({"outcome": "no_vend", "reason": reason}),
        VendOutcome::NotStarted { reason } => {
            json!({"outcome": "not_started", "reason": reason})
        }
    };
    let mut line = line;
    line["profile"] = json!(profile.name);
    line["device"] = json!(vending.device());
    line["funds"] = json!(funds);
    println!("{line}");
    Ok(match report.outcome {
        VendOutcome::Vended { .. } => ExitCode::SUCCESS,
        _ => ExitCode::from(1),
    })
}
