//! `wallet enrol`, `wallet renew`, `wallet statement`: the phone online
//! (issue 18), over [`sonotap_wallet::HubClient`].
//!
//! A refusal by the hub (an account or allowance decision, a code, a rate
//! limit) is printed in the hub's words and exits 1, like a payment the
//! wallet refuses to sign; anything else (no network, a garbled answer, a
//! bad argument) is an error and exits 2. Nothing is retried: a 429 says
//! when to try again.

use std::io::{self, BufRead, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use clap::Args;
use serde_json::json;

use sonotap_protocol::currency;
use sonotap_protocol::wire::{AccountState, EntryKind, Statement};
use sonotap_wallet::{HubClient, HubOptions, Installed, OnlineError, Wallet};

use super::output;

/// The longest line read for an enrolment code or link.
const MAX_CODE_INPUT: u64 = 4096;

/// How to reach the hub.
#[derive(Debug, Args)]
pub(super) struct HubArgs {
    /// Wallet directory
    #[arg(long, value_name = "W")]
    dir: PathBuf,
    /// Hub base URL, e.g. https://hub.example:8443 (plain http:// only to
    /// loopback); default: the hub of the operator's link (enrol), or the
    /// one the wallet enrolled with
    #[arg(long, value_name = "URL")]
    hub: Option<String>,
    /// PEM file with the hub's CA certificate (default: public web roots)
    #[arg(long, value_name = "PEM")]
    hub_ca: Option<PathBuf>,
    /// Timeout for each request to the hub
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    timeout: Duration,
}

impl HubArgs {
    /// The client for `url`.
    fn client(&self, url: &str) -> Result<HubClient> {
        let options = HubOptions {
            ca: self.hub_ca.clone(),
            timeout: self.timeout,
        };
        Ok(HubClient::new(url, &options)?)
    }

    /// The command line that asks again (`wallet NAME --dir W [--hub URL]`).
    fn again(&self, name: &str) -> String {
        let mut line = format!("sonotap wallet {name} --dir {}", self.dir.display());
        if let Some(url) = &self.hub {
            line.push_str(&format!(" --hub {url}"));
        }
        line
    }

    /// The hub named, or the one the wallet enrolled with.
    fn hub_of(&self, wallet: &Wallet) -> Result<String> {
        match (&self.hub, wallet.hub()) {
            (Some(url), _) => Ok(url.clone()),
            (None, Some(url)) => Ok(url.to_owned()),
            (None, None) => bail!(
                "wallet {} has not enrolled with a hub: give --hub URL, or enrol first \
                 (`sonotap wallet enrol`)",
                self.dir.display()
            ),
        }
    }
}

/// `wallet enrol`.
#[derive(Debug, Args)]
pub(super) struct EnrolArgs {
    #[command(flatten)]
    hub: HubArgs,
    /// Read the code (or link) from this file instead of standard input
    #[arg(long, value_name = "PATH")]
    code_file: Option<PathBuf>,
    /// Print JSON lines (the enrolment, then the credential) instead of text
    #[arg(long)]
    json: bool,
}

/// `wallet renew`.
#[derive(Debug, Args)]
pub(super) struct RenewArgs {
    #[command(flatten)]
    hub: HubArgs,
    /// Print the credential as a JSON line (as `wallet add-credential` does)
    #[arg(long)]
    json: bool,
}

/// `wallet statement`.
#[derive(Debug, Args)]
pub(super) struct StatementArgs {
    #[command(flatten)]
    hub: HubArgs,
    /// Entries older than this entry id (the statement prints the id to
    /// ask for the next page); default: the newest
    #[arg(long, value_name = "ID", value_parser = clap::value_parser!(u64).range(1..))]
    before: Option<u64>,
    /// Print the statement as one JSON line
    #[arg(long)]
    json: bool,
}

/// A hub refusal ends the command with exit 1 after its words; any other
/// error goes on to exit 2.
fn refused(command: &str, e: OnlineError) -> Result<ExitCode> {
    if e.hub_refused() {
        eprintln!("sonotap: wallet {command}: {e}");
        return Ok(ExitCode::from(1));
    }
    Err(e.into())
}

pub(super) fn enrol(args: EnrolArgs) -> Result<ExitCode> {
    let typed = read_code(args.code_file.as_deref())?;
    let input = sonotap_wallet::parse_enrol_input(&typed).map_err(|e| anyhow!(e))?;
    let mut wallet = Wallet::open(&args.hub.dir)?;
    let url = match (&args.hub.hub, &input.hub, wallet.hub()) {
        (Some(named), Some(linked), _) => {
            if sonotap_wallet::check_hub_url(named).ok().as_ref() != Some(linked) {
                eprintln!("sonotap: note: enrolling with --hub {named}, not the link's {linked}");
            }
            named.clone()
        }
        (Some(url), None, _) | (None, Some(url), _) => url.clone(),
        (None, None, Some(url)) => url.to_owned(),
        (None, None, None) => bail!(
            "which hub? give --hub URL, or the operator's link (HUB/wallet/#enrol=CODE) \
             instead of the bare code"
        ),
    };
    let client = args.hub.client(&url)?;
    let enrolled = match client.enrol(&mut wallet, &input.code) {
        Ok(enrolled) => enrolled,
        Err(e) => return refused("enrol", e),
    };
    let currency_name = enrolled.account_currency.map(currency::name);
    if args.json {
        println!(
            "{}",
            json!({
                "enrolled": true,
                "hub": enrolled.hub,
                "wallet": wallet.id().to_string(),
                "account_currency": currency_name,
            })
        );
    } else {
        println!(
            "enrolled wallet {} with hub {}{}",
            wallet.id(),
            enrolled.hub,
            currency_name.map_or(String::new(), |c| format!(" (account in {c})"))
        );
    }
    let before = wallet.credential().copied();
    match client.renew(&mut wallet) {
        Ok(installed) => {
            print_installed(&wallet, &installed, before.as_ref(), args.json);
            Ok(ExitCode::SUCCESS)
        }
        Err(e) if e.hub_refused() => {
            eprintln!(
                "sonotap: wallet enrol: enrolled, but no credential yet: {e}; \
                 `sonotap wallet renew --dir {}` asks again",
                args.hub.dir.display()
            );
            Ok(ExitCode::from(1))
        }
        Err(e) => Err(anyhow::Error::new(e).context(format!(
            "enrolled, but the first renewal failed (`sonotap wallet renew --dir {}` tries again)",
            args.hub.dir.display()
        ))),
    }
}

pub(super) fn renew(args: RenewArgs) -> Result<ExitCode> {
    let mut wallet = Wallet::open(&args.hub.dir)?;
    let client = args.hub.client(&args.hub.hub_of(&wallet)?)?;
    let before = wallet.credential().copied();
    match client.renew(&mut wallet) {
        Ok(installed) => {
            print_installed(&wallet, &installed, before.as_ref(), args.json);
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => refused("renew", e),
    }
}

pub(super) fn statement(args: StatementArgs) -> Result<ExitCode> {
    let wallet = Wallet::open(&args.hub.dir)?;
    let client = args.hub.client(&args.hub.hub_of(&wallet)?)?;
    let statement = match client.statement(&wallet, args.before.unwrap_or(0)) {
        Ok(statement) => statement,
        Err(e) => return refused("statement", e),
    };
    let mut out = io::stdout().lock();
    match args.json {
        true => writeln!(out, "{}", statement_json(&statement))?,
        false => print_statement(&mut out, &statement, &args.hub.again("statement"))?,
    }
    Ok(ExitCode::SUCCESS)
}

/// One line of standard input (or of `path`), prompting on a terminal.
fn read_code(path: Option<&Path>) -> Result<String> {
    let mut line = String::new();
    match path {
        Some(path) => {
            // Not the fsutil reader: a pipe (`--code-file <(...)`) is fine here.
            let file = std::fs::File::open(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            io::BufReader::new(file.take(MAX_CODE_INPUT))
                .read_line(&mut line)
                .with_context(|| format!("cannot read {}", path.display()))?;
        }
        None => {
            let stdin = io::stdin();
            if stdin.is_terminal() {
                eprint!("enrolment code or link from the operator: ");
                io::stderr().flush()?;
            }
            stdin
                .lock()
                .take(MAX_CODE_INPUT)
                .read_line(&mut line)
                .context("cannot read the code from standard input")?;
        }
    }
    if line.trim().is_empty() {
        bail!(
            "no enrolment code: give it on standard input (one line) or in --code-file, \
             never on the command line"
        );
    }
    Ok(line)
}

fn print_installed(
    wallet: &Wallet,
    installed: &Installed,
    before: Option<&sonotap_protocol::token::Credential>,
    as_json: bool,
) {
    if as_json {
        println!("{}", output::installed_json(installed));
        return;
    }
    let terms = &installed.credential.terms;
    let same = before == Some(&installed.credential);
    println!(
        "{}: offline limit {}, per payment {} ({} minor units), scope {}, valid {} to {}",
        match same {
            true =>
                "the credential in use stays (the hub answered it again, or offered one with less left)",
            false => "new credential",
        },
        terms.offline_limit,
        terms.per_payment_cap,
        currency::name(terms.currency),
        terms.scope,
        output::utc(u64::from(terms.valid_from)),
        output::utc(terms.valid_until()),
    );
    let cleared = match installed.highest_cleared_counter {
        None => String::new(),
        Some(0) => "; the hub has cleared no payment of this wallet yet".into(),
        Some(c) => format!("; the hub has cleared its payments up to counter {c}"),
    };
    let counter = match installed.counter == installed.counter_before {
        true => format!("counter {}", installed.counter),
        false => format!(
            "counter {} -> {}",
            installed.counter_before, installed.counter
        ),
    };
    let total = wallet.state().running_total;
    println!(
        "{counter}{cleared}; running total {total}{}",
        match same {
            true => " (kept)",
            false => " (a new credential starts at 0)",
        }
    );
}

fn statement_json(s: &Statement) -> serde_json::Value {
    json!({
        "wallet": s.wallet.to_string(),
        "at": s.at,
        "state": s.state,
        "currency": currency::name(s.currency),
        "currency_code": s.currency,
        "balance": s.balance,
        "credit_line": s.credit_line,
        "exposure": s.exposure,
        "next_before": s.next_before,
        "issuer_key_id": s.key_id,
        "entries": s.entries,
    })
}

fn print_statement(out: &mut impl Write, s: &Statement, again: &str) -> io::Result<()> {
    let unit = format!("{} minor units", currency::name(s.currency));
    writeln!(
        out,
        "account {}: balance {}, credit line {}, exposure {} ({unit})",
        s.state.as_str(),
        s.balance,
        s.credit_line,
        s.exposure
    )?;
    writeln!(
        out,
        "as of {} for wallet {}; signed by issuer key {}",
        utc(s.at),
        s.wallet,
        s.key_id
    )?;
    writeln!(
        out,
        "(exposure: what this account's credentials could still spend offline)"
    )?;
    match s.state {
        AccountState::Open => {}
        AccountState::Suspended => writeln!(
            out,
            "the account is suspended: no renewals, and its wallets are declined at the \
             gates; contact the operator"
        )?,
        AccountState::Closed => writeln!(
            out,
            "the account is closed: no renewals, and its wallets are declined at the gates"
        )?,
    }
    writeln!(out)?;
    if s.entries.is_empty() {
        writeln!(out, "no entries")?;
    } else {
        writeln!(
            out,
            "{:>8}  {:<20}  {:<10}  {:>12}  {:<24}  {:>8}",
            "id", "time (UTC)", "kind", "amount", "reader / reference", "seq"
        )?;
        for e in &s.entries {
            writeln!(
                out,
                "{:>8}  {:<20}  {:<10}  {:>12}  {:<24}  {:>8}",
                e.id,
                utc(e.at),
                e.kind.as_str(),
                format!("{:+}", e.amount),
                printable(&e.source),
                match e.kind {
                    EntryKind::Charge | EntryKind::Void => e.seq.to_string(),
                    EntryKind::TopUp | EntryKind::Adjustment => String::new(),
                }
            )?;
        }
    }
    writeln!(out)?;
    match s.next_before {
        0 => writeln!(out, "this page reaches the account's first entry"),
        id => writeln!(out, "older entries: {again} --before {id}"),
    }
}

/// [`output::utc`] for a time from the hub, which may be any u64: past
/// the year 9999 (no RFC 3339 form) the seconds themselves.
fn utc(secs: u64) -> String {
    const LAST_RFC3339_SECOND: u64 = 253_402_300_799;
    match secs <= LAST_RFC3339_SECOND {
        true => output::utc(secs),
        false => format!("{secs} (Unix seconds)"),
    }
}

/// Hub text for a terminal: control characters (escapes) shown as U+FFFD.
fn printable(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { '\u{fffd}' } else { c })
        .collect()
}
