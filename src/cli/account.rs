//! `sonotap hub account …`: riders' accounts at the hub (docs/accounts.md):
//! open, top up, show, list, suspend, close, reopen, and one-time codes
//! that enrol a phone.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};

use sonotap_hub::accounts::{Account, AccountPolicy, AccountView, Change};
use sonotap_protocol::currency;
use sonotap_protocol::token::Scope;
use sonotap_protocol::wire::{AccountState, EntryKind};

use super::clock;
use super::hub::HubPlace;

/// `sonotap hub account`.
#[derive(Debug, Subcommand)]
pub enum AccountCommand {
    /// Open a rider's account: currency, offline policy, optional credit line
    New(NewArgs),
    /// Top up an account (idempotent on --reference: the payment's id)
    Credit(CreditArgs),
    /// An operator's correction, either way (idempotent on --reference)
    Adjust(CreditArgs),
    /// An account: balance, exposure, phones, live credentials, ledger
    Show(ShowArgs),
    /// Accounts whose id or label contains TEXT (all without it)
    List(ListArgs),
    /// Make a one-time code that enrols a phone in the account
    #[command(alias = "enrol")]
    Enroll(EnrollArgs),
    /// Suspend: no renewal, and its phones denied at every reader
    Suspend(StateArgs),
    /// Reopen a suspended account: its phones allowed again
    Reopen(StateArgs),
    /// Close for good: no renewal, its phones denied
    Close(StateArgs),
}

/// `hub account new`.
#[derive(Debug, Args)]
pub struct NewArgs {
    #[command(flatten)]
    place: HubPlace,
    /// The account's id (letters, digits, '.', '_', '-')
    id: String,
    /// A name to find it by (e.g. the rider's email)
    #[arg(long, default_value = "")]
    label: String,
    /// ISO 4217 currency: letters (EUR) or number (978)
    #[arg(long, default_value = "EUR", value_parser = currency::parse)]
    currency: u16,
    /// How far below zero the balance may go (postpaid), minor units
    #[arg(long, value_name = "N", default_value_t = 0)]
    credit_line: u64,
    /// Most one credential may spend offline, minor units
    #[arg(long, value_name = "N")]
    offline_limit: u32,
    /// Most one payment may authorise, minor units
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    per_payment: u32,
    /// Hours a credential is valid
    #[arg(long, value_name = "H", default_value_t = 24, value_parser = clap::value_parser!(u16).range(1..))]
    valid_hours: u16,
    /// Where its credentials may be spent: transit, vending or group:N
    #[arg(long, default_value = "transit")]
    scope: Scope,
    /// Print JSON
    #[arg(long)]
    json: bool,
}

/// `hub account credit|adjust`.
#[derive(Debug, Args)]
pub struct CreditArgs {
    #[command(flatten)]
    place: HubPlace,
    /// The account
    id: String,
    /// Minor units (a top-up above 0; an adjustment may be negative: `-- -250`)
    #[arg(allow_negative_numbers = true)]
    amount: i64,
    /// The payment's or correction's id: the same reference twice adds once
    #[arg(long, value_name = "REF")]
    reference: String,
    /// A note kept at the hub
    #[arg(long, default_value = "")]
    note: String,
    /// Print JSON
    #[arg(long)]
    json: bool,
}

/// `hub account show`.
#[derive(Debug, Args)]
pub struct ShowArgs {
    #[command(flatten)]
    place: HubPlace,
    /// The account
    id: String,
    /// Ledger entries older than this entry id (paging; default: the newest)
    #[arg(long, value_name = "ID", default_value_t = 0)]
    before: u64,
    /// One JSON document
    #[arg(long)]
    json: bool,
}

/// `hub account list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    place: HubPlace,
    /// Part of an id or label
    #[arg(default_value = "")]
    search: String,
    /// At most this many
    #[arg(long, default_value_t = 100)]
    limit: u32,
    /// One JSON document
    #[arg(long)]
    json: bool,
}

/// `hub account enroll`.
#[derive(Debug, Args)]
pub struct EnrollArgs {
    #[command(flatten)]
    place: HubPlace,
    /// The account
    id: String,
    /// Hours the code may be used in (once)
    #[arg(long, value_name = "H", default_value_t = 24)]
    valid_hours: u64,
    /// The hub's public base URL (https://…): the code is also printed as
    /// URL/wallet/#enrol=CODE and as a QR code of it, for the phone to scan
    #[arg(long, value_name = "URL")]
    hub_url: Option<String>,
    /// Also write the QR code as a PNG
    #[arg(long, value_name = "PNG")]
    qr_png: Option<PathBuf>,
    /// Print JSON
    #[arg(long)]
    json: bool,
}

/// `hub account suspend|reopen|close`.
#[derive(Debug, Args)]
pub struct StateArgs {
    #[command(flatten)]
    place: HubPlace,
    /// The account
    id: String,
    /// Who decided (kept at the hub)
    #[arg(long, value_name = "NAME")]
    by: String,
    /// Why (kept at the hub; the rider's phone is told)
    #[arg(long, value_name = "TEXT")]
    reason: String,
}

/// Runs a `hub account` command.
pub fn run(command: AccountCommand) -> Result<ExitCode> {
    let now = clock(None)?;
    match command {
        AccountCommand::New(a) => {
            let account = Account {
                id: a.id,
                label: a.label,
                currency: a.currency,
                credit_line: a.credit_line,
                policy: AccountPolicy {
                    offline_limit: a.offline_limit,
                    per_payment_cap: a.per_payment,
                    valid_hours: a.valid_hours,
                    scope: a.scope,
                },
                state: AccountState::Open,
                state_reason: String::new(),
                created_at: now,
            };
            let opened = a.place.open(now)?.open_account(&account)?;
            if a.json {
                println!(
                    "{}",
                    serde_json::json!({ "account": account, "opened": opened })
                );
            } else if opened {
                println!(
                    "account {} opened ({}, credit line {}, offline limit {} per credential, \
                     {} per payment, credentials valid {} h, {})",
                    account.id,
                    currency::name(account.currency),
                    account.credit_line,
                    account.policy.offline_limit,
                    account.policy.per_payment_cap,
                    account.policy.valid_hours,
                    account.policy.scope
                );
            } else {
                println!("account {} exists already with these terms", account.id);
            }
        }
        AccountCommand::Credit(a) | AccountCommand::Adjust(a) if a.amount == 0 => {
            bail!("an amount of 0 moves nothing")
        }
        AccountCommand::Credit(a) => credit(a, EntryKind::TopUp, now)?,
        AccountCommand::Adjust(a) => credit(a, EntryKind::Adjustment, now)?,
        AccountCommand::Show(a) => {
            let view = a
                .place
                .open(now)?
                .account_view(&a.id, a.before, now)?
                .with_context(|| format!("no account {} (`sonotap hub account list`)", a.id))?;
            match a.json {
                true => println!("{}", serde_json::to_string_pretty(&view)?),
                false => print!("{}", describe(&view)),
            }
        }
        AccountCommand::List(a) => {
            let found = a.place.open(now)?.accounts(&a.search, a.limit)?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&found)?);
            } else {
                for acc in &found {
                    println!(
                        "{}\t{}\t{}\t{}",
                        acc.id,
                        acc.state.as_str(),
                        currency::name(acc.currency),
                        acc.label
                    );
                }
                if found.is_empty() {
                    println!("no account matches");
                }
            }
        }
        AccountCommand::Enroll(a) => {
            let life = a
                .valid_hours
                .checked_mul(3600)
                .context("--valid-hours is too large")?;
            let (code, expires) = a.place.open(now)?.enrol_code(&a.id, life, now)?;
            let grouped = code
                .as_bytes()
                .chunks(4)
                .map(|c| String::from_utf8_lossy(c).into_owned())
                .collect::<Vec<_>>()
                .join("-");
            let url = a
                .hub_url
                .as_deref()
                .map(|base| format!("{}/wallet/#enrol={code}", base.trim_end_matches('/')));
            let payload = url.clone().unwrap_or_else(|| code.clone());
            if let Some(png) = &a.qr_png {
                sonotap_qr::write_png(payload.as_bytes(), png)
                    .with_context(|| format!("cannot write {}", png.display()))?;
            }
            if a.json {
                println!(
                    "{}",
                    serde_json::json!({
                        "account": a.id, "code": grouped, "expires_at": expires, "url": url,
                    })
                );
            } else {
                println!("enrolment code for account {}: {grouped}", a.id);
                println!("single use, valid until {expires} (Unix time)");
                if let Some(url) = &url {
                    println!("{url}");
                }
                print!("{}", sonotap_qr::encode::terminal_text(payload.as_bytes())?);
                println!("the phone: `sonotap wallet enrol --dir W --hub URL` and type the code");
            }
        }
        AccountCommand::Suspend(a) => change(a, AccountState::Suspended, now)?,
        AccountCommand::Reopen(a) => change(a, AccountState::Open, now)?,
        AccountCommand::Close(a) => change(a, AccountState::Closed, now)?,
    }
    Ok(ExitCode::SUCCESS)
}

fn credit(a: CreditArgs, kind: EntryKind, now: u64) -> Result<()> {
    let credited =
        a.place
            .open(now)?
            .credit_account(&a.id, kind, a.amount, &a.reference, &a.note, now)?;
    if a.json {
        println!("{}", serde_json::to_string(&credited)?);
    } else {
        match credited.added {
            true => println!(
                "{} {} credited to {}; balance {}{}",
                kind.as_str(),
                a.amount,
                a.id,
                credited.balance,
                match credited.suspended {
                    true => "; the account is in debt and now suspended",
                    false => "",
                }
            ),
            false => println!(
                "reference {} was credited before; nothing added; balance {}",
                a.reference, credited.balance
            ),
        }
    }
    Ok(())
}

fn change(a: StateArgs, state: AccountState, now: u64) -> Result<()> {
    let change = Change {
        state,
        reason: &a.reason,
        by: &a.by,
    };
    let wallets = a.place.open(now)?.change_account(&a.id, change, now)?;
    println!(
        "account {} is {}; {} phone(s) {} at every reader after its next sync",
        a.id,
        state.as_str(),
        wallets.len(),
        match state {
            AccountState::Open => "allowed again",
            _ => "denied",
        }
    );
    Ok(())
}

/// The text of `hub account show`.
fn describe(v: &AccountView) -> String {
    use std::fmt::Write;
    let a = &v.account;
    let cur = currency::name(a.currency);
    let mut out = String::new();
    let _ = writeln!(out, "account {} ({}) {}", a.id, a.label, a.state.as_str());
    if !a.state_reason.is_empty() {
        let _ = writeln!(out, "  why: {}", a.state_reason);
    }
    let _ = writeln!(
        out,
        "  balance {} {cur}, credit line {}, exposure {} (live credentials' unspent allowance), \
         available {}",
        v.balance, a.credit_line, v.exposure, v.available
    );
    let _ = writeln!(
        out,
        "  policy: offline limit {}, per payment {}, {} h, {}",
        a.policy.offline_limit, a.policy.per_payment_cap, a.policy.valid_hours, a.policy.scope
    );
    let _ = writeln!(out, "  phones: {}", v.wallets.len());
    for (wallet, at) in &v.wallets {
        let _ = writeln!(out, "    {wallet} enrolled at {at}");
    }
    let _ = writeln!(
        out,
        "  credentials reserving allowance: {}",
        v.credentials.len()
    );
    for c in &v.credentials {
        let _ = writeln!(
            out,
            "    {} limit {} cleared {} unspent {} valid until {} settles {}",
            &hex::encode(c.digest)[..16],
            c.offline_limit,
            c.cleared,
            c.unspent(),
            c.valid_until,
            c.settles_at
        );
    }
    let _ = writeln!(out, "  entries (newest first):");
    for e in &v.entries {
        let _ = writeln!(
            out,
            "    #{} {} {:+} at {} {} {}",
            e.id,
            e.kind.as_str(),
            e.amount,
            e.at,
            e.source,
            match e.seq {
                0 => String::new(),
                seq => format!("#{seq}"),
            }
        );
    }
    if v.next_before > 0 {
        let _ = writeln!(out, "  older: --before {}", v.next_before);
    }
    out
}
