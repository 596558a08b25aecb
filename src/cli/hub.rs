//! The hub's commands, `hub serve|reader add|deny|allow|report|review|clear|import`
//! (each opens the hub through one [`HubPlace`]: `--data DIR` and
//! `--database URL` or `$SONOTAP_HUB_DATABASE`), and the reader's side of
//! the link to it, `reader sync|export`.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};

use sonotap_disk::keys::{PublicKey, Role};
use sonotap_hub::backend::{Report, Review};
use sonotap_hub::fleet::Fleet;
use sonotap_hub::ledger::{ClearTarget, IngestStatus, Via};
use sonotap_hub::listen::{self, Limits};
use sonotap_hub::server::{self, ServeOptions};
use sonotap_hub::{Hub, HubError, RecordSignatureCheck};
use sonotap_protocol::token::WalletId;
use sonotap_protocol::wire::{DenyAction, DenyReason};
use sonotap_reader::reader::Reader;
use sonotap_reader::sync::client::{self, HubClient, Progress, SyncOptions};
use sonotap_reader::sync::export;
use sonotap_reader::sync::failover::HubUrls;

/// The environment variable that names the hub's database when
/// `--database` is not given.
pub const DATABASE_ENV: &str = "SONOTAP_HUB_DATABASE";

/// Where every `hub` command finds the hub: its directory (the issuer key)
/// and its state (declared once, flattened into each command).
#[derive(Debug, Args)]
pub struct HubPlace {
    /// Hub data directory
    #[arg(long, value_name = "DIR")]
    pub data: PathBuf,
    /// State database: postgres://… (default: $SONOTAP_HUB_DATABASE, else
    /// DIR/hub.db, SQLite); give the password in PGPASSFILE / ~/.pgpass or
    /// PGPASSWORD, not in the URL
    #[arg(long, value_name = "URL")]
    database: Option<String>,
}

/// Where the database URL came from, for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Named {
    Flag,
    Env,
}

impl HubPlace {
    /// The database URL (the flag wins over the environment) and where it
    /// came from; `None` for the SQLite file in the hub directory.
    fn database(&self) -> Option<(String, Named)> {
        self.database_from(std::env::var(DATABASE_ENV).ok())
    }

    fn database_from(&self, env: Option<String>) -> Option<(String, Named)> {
        match (&self.database, env) {
            (Some(url), _) => Some((url.clone(), Named::Flag)),
            // An empty variable is an unset one (as libpq treats its own).
            (None, Some(url)) if !url.is_empty() => Some((url, Named::Env)),
            (None, _) => None,
        }
    }

    /// Opens the hub: the directory's issuer key, the state where
    /// `--database` or `$SONOTAP_HUB_DATABASE` says.
    pub fn open(&self, now: u64) -> Result<Hub> {
        let database = self.database();
        self.warn_password(database.as_ref());
        let url = database.as_ref().map(|(url, _)| url.as_str());
        let hub = sonotap_hub::open_database(&self.data, url, now);
        Self::named(hub, database.as_ref())
    }

    /// `hub init`: creates the issuer key and the state where the database
    /// is named (registering the key there).
    pub fn init(&self, key_id: u8, now: u64) -> Result<Hub> {
        let database = self.database();
        self.warn_password(database.as_ref());
        let url = database.as_ref().map(|(url, _)| url.as_str());
        let hub = sonotap_hub::init_database(&self.data, key_id, url, now);
        Self::named(hub, database.as_ref())
    }

    /// A password on the command line is readable by every local user; in
    /// the environment it is not (as `PGPASSWORD`).
    fn warn_password(&self, database: Option<&(String, Named)>) {
        if let Some((url, Named::Flag)) = database
            && sonotap_hub::pgpass::url_has_password(url)
        {
            eprintln!("sonotap: {}", sonotap_hub::pgpass::URL_PASSWORD_WARNING);
        }
    }

    /// An error opening a named database says where the name came from (an
    /// operator may not know a variable is set); the SQLite file's errors
    /// name the file already.
    fn named(hub: Result<Hub, HubError>, database: Option<&(String, Named)>) -> Result<Hub> {
        let from = match database {
            None => return Ok(hub?),
            Some((_, Named::Flag)) => "--database".to_owned(),
            Some((_, Named::Env)) => format!("${DATABASE_ENV}"),
        };
        hub.with_context(|| format!("cannot open the hub database given by {from}"))
    }
}

/// `sonotap hub serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    place: HubPlace,
    /// Address to listen on (plain HTTP only on loopback; port 0 picks one)
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8443")]
    listen: SocketAddr,
    /// PEM certificate chain for HTTPS
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for HTTPS
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Serve Prometheus metrics at http://ADDR/metrics: plain HTTP without
    /// authentication, so loopback or a network only the monitoring reaches
    #[arg(long, value_name = "ADDR")]
    metrics: Option<SocketAddr>,
    /// Check every record's own reader signature, not only the batch
    /// signature that covers them and the last record's (slower; for audits)
    #[arg(long)]
    every_record_signature: bool,
    /// Close a connection whose request head (or next request, when kept
    /// alive) takes longer than this
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = timeout_at_least_a_second)]
    header_timeout: Duration,
    /// Answer 408 to an upload whose body stalls this long (and drop a
    /// client that takes no answer bytes for this long)
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = timeout_at_least_a_second)]
    body_timeout: Duration,
    /// Slowest accepted upload, bytes per second on average (after the body timeout)
    #[arg(long, value_name = "BYTES", default_value_t = listen::MIN_BODY_RATE, value_parser = clap::value_parser!(u64).range(1..))]
    min_body_rate: u64,
    /// Most connections open at once; more wait in the listen backlog
    #[arg(long, value_name = "N", default_value_t = listen::MAX_CONNECTIONS as u32, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    max_connections: u32,
    /// Batches stored at once on PostgreSQL, each on a connection of its own
    /// (a process opens N + 4 connections; SQLite stores one at a time
    /// whatever this says)
    #[arg(long, value_name = "N", default_value_t = server::DEFAULT_WRITERS as u32, value_parser = clap::value_parser!(u32).range(1..=16))]
    writers: u32,
    /// What the log on standard error shows: a level (error, warn, info,
    /// debug) or a tracing filter; `info` has one line per request
    #[arg(long, value_name = "FILTER", default_value = "info", value_parser = log_filter)]
    log_level: String,
    /// Hours after a credential expires that its unspent allowance stays
    /// reserved against the rider's account: the longest a reader may take
    /// to sync (docs/accounts.md §2; for credentials renewed from now on)
    #[arg(long, value_name = "H", default_value_t = sonotap_hub::accounts::SETTLE_SECS / 3600, value_parser = clap::value_parser!(u64).range(1..=24 * 365))]
    settle_hours: u64,
}

fn log_filter(text: &str) -> Result<String, String> {
    tracing_subscriber::EnvFilter::try_new(text)
        .map(|_| text.to_owned())
        .map_err(|e| e.to_string())
}

/// `hub serve`'s log: `tracing` events, one line each on standard error,
/// with their fields (`key=value`).
fn init_logging(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

/// A `hub serve` timeout: under a second every honest request would time
/// out (and `0s` would refuse them all).
fn timeout_at_least_a_second(text: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(text).map_err(|e| e.to_string())?;
    if duration < Duration::from_secs(1) {
        return Err(format!("{text} is too short: give at least 1s"));
    }
    Ok(duration)
}

/// The hub's record-signature policy from the command line.
pub fn record_signatures(every: bool) -> RecordSignatureCheck {
    if every {
        RecordSignatureCheck::Every
    } else {
        RecordSignatureCheck::BatchAndLast
    }
}

/// `sonotap hub reader …`.
#[derive(Debug, Subcommand)]
pub enum HubReaderCommand {
    /// Register a reader's public key so the hub accepts its batches
    Add {
        #[command(flatten)]
        place: HubPlace,
        /// Reader id, as in its reader.toml
        #[arg(long)]
        id: String,
        /// The reader's public key file (R/reader.pub)
        #[arg(long, value_name = "READER.pub")]
        key: PathBuf,
    },
}

/// `sonotap hub deny|allow`.
#[derive(Debug, Args)]
pub struct DenyArgs {
    #[command(flatten)]
    place: HubPlace,
    /// Wallet id (16 hex digits)
    #[arg(long, value_name = "ID")]
    wallet: String,
    /// Why, as a code readers see: operator, lost_or_stolen, suspected_fraud
    /// (or a clearing rule's: counter_reused, totals_do_not_chain, over_offline_limit)
    #[arg(long, value_name = "CODE", default_value = "operator")]
    reason: DenyReason,
    /// Free text for the hub's records (a name, a case number): kept in the
    /// hub's database, never sent to readers
    #[arg(long, value_name = "TEXT", default_value = "")]
    note: String,
}

/// `sonotap hub review`.
#[derive(Debug, Args)]
pub struct ReviewArgs {
    #[command(flatten)]
    place: HubPlace,
    /// Also the suspensions already cleared (who, when, why)
    #[arg(long)]
    all: bool,
    /// One JSON document instead of text
    #[arg(long)]
    json: bool,
}

/// `sonotap hub clear`.
#[derive(Debug, Args)]
pub struct ClearArgs {
    #[command(flatten)]
    place: HubPlace,
    /// A credential digest (64 hex digits, from `hub review`), or a wallet
    /// id (16 hex digits) for every suspension of its credentials
    #[arg(value_name = "CREDENTIAL|WALLET")]
    target: String,
    /// Who reviewed the evidence (kept at the hub)
    #[arg(long, value_name = "NAME")]
    by: String,
    /// Why it is lifted, e.g. "phone restored from a backup; renewed"
    /// (kept at the hub, never sent to readers)
    #[arg(long, value_name = "TEXT")]
    note: String,
}

/// `sonotap reader sync`.
#[derive(Debug, Args)]
pub struct SyncArgs {
    /// Reader data directory
    #[arg(long, value_name = "R")]
    data: PathBuf,
    /// Hub base URL, e.g. https://hub.example:8443 or http://127.0.0.1:8443;
    /// repeat it for hub processes sharing one database, preferred first (a
    /// request the hub in use fails goes on at once to the next)
    #[arg(long, value_name = "URL", required = true)]
    hub: Vec<String>,
    /// PEM file with the hub's CA certificate (default: public web roots)
    #[arg(long, value_name = "PEM")]
    hub_ca: Option<PathBuf>,
    /// Records per batch
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    batch_size: u32,
    /// Keep acknowledged records this long before pruning
    #[arg(long, default_value = "30days", value_parser = humantime::parse_duration)]
    retention: Duration,
    /// Timeout for each request to the hub
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Attempts before giving up (with exponential backoff and jitter between)
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    attempts: u32,
}

/// `sonotap hub serve`: runs until SIGINT or SIGTERM.
pub fn serve(args: ServeArgs) -> Result<ExitCode> {
    init_logging(&args.log_level);
    let now = super::clock(None)?;
    let mut hub = args.place.open(now)?;
    hub.set_record_signatures(record_signatures(args.every_record_signature));
    hub.set_settle_secs(args.settle_hours * 3600);
    let where_ = hub.describe();
    let options = ServeOptions {
        listen: args.listen,
        tls: args.tls_cert.zip(args.tls_key),
        limits: Limits {
            header_timeout: args.header_timeout,
            body_timeout: args.body_timeout,
            min_body_rate: args.min_body_rate,
            max_connections: args.max_connections as usize,
            ..Limits::default()
        },
        writers: args.writers as usize,
        metrics: args.metrics,
    };
    // Connections, not EMFILE, should be what bounds the hub: the cap is
    // clamped below whatever limit is in force.
    if let Err(e) = listen::raise_open_file_limit() {
        tracing::warn!("cannot raise the open-file limit: {e}");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let shutdown = async {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(s) => s,
                    Err(_) => return std::future::pending().await,
                };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {},
                _ = term.recv() => {},
            }
        };
        let (bound, server) = server::bind(hub, options.clone(), shutdown).await?;
        let addr = bound.api;
        let scheme = if options.tls.is_some() {
            "https"
        } else {
            "http"
        };
        // The first line is the address (tests and scripts read it).
        println!("listening on {scheme}://{addr} (state: {where_})");
        if let Some(metrics) = bound.metrics {
            println!("metrics on http://{metrics}/metrics");
        }
        server.await?;
        println!("hub stopped");
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// `sonotap hub reader add`.
pub fn reader_add(command: HubReaderCommand) -> Result<ExitCode> {
    let HubReaderCommand::Add { place, id, key } = command;
    let key = PublicKey::read(&key, Role::Reader)?;
    let now = super::clock(None)?;
    let mut hub = place.open(now)?;
    let new = hub.add_reader(&id, &key, now)?;
    match new {
        true => println!("reader {id} registered"),
        false => println!("reader {id} was already registered with this key"),
    }
    Ok(ExitCode::SUCCESS)
}

fn parse_wallet(text: &str) -> Result<WalletId> {
    let bytes = hex::decode(text.trim())
        .ok()
        .and_then(|b| <[u8; 8]>::try_from(b).ok());
    match bytes {
        Some(b) => Ok(WalletId(b)),
        None => bail!("wallet id {text:?} is not 16 hex digits"),
    }
}

/// A credential digest (64 hex digits) or a wallet id (16).
fn parse_clear_target(text: &str) -> Result<ClearTarget> {
    let bytes = hex::decode(text.trim()).ok();
    match bytes.as_deref().map(<[u8]>::len) {
        Some(32) => Ok(ClearTarget::Credential(
            bytes.and_then(|b| b.try_into().ok()).unwrap_or([0; 32]),
        )),
        Some(8) => Ok(ClearTarget::Wallet(parse_wallet(text)?)),
        _ => bail!(
            "{text:?} is neither a credential digest (64 hex digits, as `hub review` shows) \
             nor a wallet id (16 hex digits)"
        ),
    }
}

/// `sonotap hub review`.
pub fn review(args: &ReviewArgs) -> Result<ExitCode> {
    let mut hub = args.place.open(super::clock(None)?)?;
    let review = hub.review(args.all)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&review)?);
    } else {
        print_review(&review, &args.place.data);
    }
    Ok(ExitCode::SUCCESS)
}

fn print_review(review: &Review, data: &Path) {
    println!("suspensions: {}", review.suspensions.len());
    for s in &review.suspensions {
        let x = &s.suspension;
        println!(
            "credential {} of wallet {}: {} since {} (deny-list version {})",
            x.credential, x.wallet, x.rule, x.at, x.deny_version
        );
        println!("  {}", x.detail);
        let limit = s
            .offline_limit
            .map_or("an offline limit the hub did not log".to_owned(), |l| {
                format!("offline limit {l}")
            });
        let highest = s
            .highest_cleared_counter
            .map_or("none".to_owned(), |c| c.to_string());
        println!(
            "  charged under the credential: {} ({limit}); the wallet's highest cleared counter: {highest}",
            s.credential_charged
        );
        println!("  tokens sharing a counter: {}", s.conflicts.len());
        for c in &s.conflicts {
            println!(
                "    counter {} at {} #{}, time {}: charged {} (net {}), authorised {}, \
                 running total before {}; credential {}, token {}",
                c.counter,
                c.reader,
                c.seq,
                c.at,
                c.charged,
                c.net,
                c.authorised,
                c.total_before,
                c.credential,
                c.token
            );
        }
        println!("  findings on the wallet: {}", s.findings.len());
        for f in &s.findings {
            println!("    {} at {}: {}", f.rule, f.at, f.detail);
        }
        match &x.cleared {
            Some(c) => println!(
                "  cleared at {} by {}: {} (deny-list version {})",
                c.at, c.by, c.note, c.allow_version
            ),
            None => println!(
                "  to lift it: sonotap hub clear --data {} {} --by NAME --note WHY",
                data.display(),
                x.credential
            ),
        }
    }
}

/// `sonotap hub clear`.
pub fn clear(args: &ClearArgs) -> Result<ExitCode> {
    let target = parse_clear_target(&args.target)?;
    let now = super::clock(None)?;
    let mut hub = args.place.open(now)?;
    let cleared = hub.clear(target, &args.by, &args.note, now)?;
    for c in &cleared {
        println!(
            "{}",
            serde_json::json!({
                "cleared": hex::encode(c.credential),
                "wallet": hex::encode(c.wallet.0),
                "suspended_by_version": c.suspended_by,
                "version": c.entry.version,
                "action": c.entry.action,
                "by": args.by,
            })
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `sonotap hub deny|allow`.
pub fn deny(args: DenyArgs, action: DenyAction) -> Result<ExitCode> {
    let wallet = parse_wallet(&args.wallet)?;
    let now = super::clock(None)?;
    let mut hub = args.place.open(now)?;
    let note = if args.note.is_empty() {
        "operator"
    } else {
        args.note.as_str()
    };
    let entry = hub.set_deny(action, wallet, args.reason, note, now)?;
    println!(
        "{}",
        serde_json::json!({
            "version": entry.version,
            "action": entry.action,
            "wallet": hex::encode(entry.wallet.0),
            "reason": entry.reason,
            "note_kept_at_hub": !args.note.is_empty(),
        })
    );
    Ok(ExitCode::SUCCESS)
}

/// `sonotap hub report`.
pub fn report(place: &HubPlace, json: bool) -> Result<ExitCode> {
    let mut hub = place.open(super::clock(None)?)?;
    let report = hub.report()?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
    }
    Ok(ExitCode::SUCCESS)
}

/// `sonotap hub readers`: the fleet as the hub knows it (docs/sync.md §2.5).
pub fn readers(place: &HubPlace, json: bool) -> Result<ExitCode> {
    let now = super::clock(None)?;
    let mut hub = place.open(now)?;
    let fleet = hub.fleet()?;
    if json {
        let readers: Vec<serde_json::Value> = fleet
            .readers
            .iter()
            .map(|r| {
                serde_json::json!({
                    "reader": r.reader,
                    "registered_at": r.registered_at,
                    "last_seen_at": r.last_seen_at(),
                    "last_upload_at": r.last_upload_at,
                    "clock_error_ms": r.report.as_ref().map(|p| p.clock_error_ms()),
                    "report": r.report,
                })
            })
            .collect();
        let document = serde_json::json!({
            "now": now,
            "deny_version": fleet.deny_version,
            "readers": readers,
        });
        println!("{}", serde_json::to_string_pretty(&document)?);
    } else {
        print_fleet(&fleet, now);
    }
    Ok(ExitCode::SUCCESS)
}

fn print_fleet(fleet: &Fleet, now: u64) {
    println!(
        "{:<20} {:<14} {:<14} {:>7} {:>9} {:>13} {:>11}  software",
        "reader", "last seen", "last upload", "queue", "lag", "reader clock", "deny list"
    );
    for r in &fleet.readers {
        let when =
            |at: Option<u64>| at.map_or("never".to_owned(), |at| super::output::ago(now, at));
        let (queue, lag, clock, deny, software) = match &r.report {
            None => Default::default(),
            Some(p) => (
                p.queue.to_string(),
                format!("{} s", p.lag_secs),
                reader_clock(p.clock_error_ms()),
                match fleet.deny_version.saturating_sub(p.deny_version) {
                    0 => format!("{} ok", p.deny_version),
                    behind => format!("{} -{behind}", p.deny_version),
                },
                p.software.clone(),
            ),
        };
        let dash = |s: String| if s.is_empty() { "-".to_owned() } else { s };
        println!(
            "{:<20} {:<14} {:<14} {:>7} {:>9} {:>13} {:>11}  {}",
            r.reader,
            when(r.last_seen_at()),
            when(r.last_upload_at),
            dash(queue),
            dash(lag),
            dash(clock),
            dash(deny),
            dash(software),
        );
    }
    println!(
        "{} reader(s); the hub's deny list is at version {} (\"-N\": a reader N versions behind)",
        fleet.readers.len(),
        fleet.deny_version
    );
}

/// How far the clock a reader stamps with (after its own correction) is
/// from the hub's, given the hub's minus that: "2.5 s slow", "0.8 s fast",
/// "ok" within 0.05 s.
fn reader_clock(offset_ms: i64) -> String {
    let secs = offset_ms as f64 / 1000.0;
    match secs {
        s if s.abs() < 0.05 => "ok".into(),
        s if s > 0.0 => format!("{s:.1} s slow"),
        s => format!("{:.1} s fast", -s),
    }
}

fn print_report(report: &Report) {
    println!(
        "{:<20} {:>9} {:>12} {:>10} {:>7} {:>7}  gaps",
        "reader", "records", "charged", "voided", "first", "last"
    );
    for r in &report.readers {
        let seq = |s: Option<u64>| s.map_or("-".to_owned(), |s| s.to_string());
        let gaps: Vec<String> = r.gaps.iter().map(|(a, b)| format!("{a}..={b}")).collect();
        println!(
            "{:<20} {:>9} {:>12} {:>10} {:>7} {:>7}  {}",
            r.reader,
            r.records,
            r.charged,
            r.voided,
            seq(r.first_seq),
            seq(r.last_seq),
            if gaps.is_empty() {
                "none".to_owned()
            } else {
                gaps.join(", ")
            }
        );
    }
    println!("flagged wallets: {}", report.flagged.len());
    for f in &report.flagged {
        let state = if f.denied { "denied" } else { "allowed" };
        println!("  {} {} ({state}): {}", f.wallet, f.rule, f.detail);
    }
    println!("incidents: {}", report.incidents.len());
    for i in &report.incidents {
        println!("  {} #{} {}: {}", i.reader, i.seq, i.kind, i.detail);
    }
    println!(
        "replayed tokens: {}, uncollected {}",
        report.replays.len(),
        report.uncollected
    );
    for r in &report.replays {
        let readers: Vec<&str> = r.charges.iter().map(|c| c.reader.as_str()).collect();
        println!(
            "  token {} of wallet {} (counter {}), charged {} times at {}: {}; collected {}, \
             uncollected {}{}",
            r.token,
            r.wallet,
            r.counter,
            r.charges.len(),
            readers.join(", "),
            r.attribution.describe(),
            r.collected,
            r.uncollected,
            if r.wallet_denied {
                " (the wallet is denied for another reason)"
            } else {
                ""
            }
        );
        for c in &r.charges {
            let what = match (c.counted, c.voided) {
                (true, _) => "counted against the wallet".to_owned(),
                (false, 0) => "replay, uncollected".to_owned(),
                (false, v) if v >= c.amount => "replay, voided: not delivered".to_owned(),
                (false, v) => format!("replay, {v} voided"),
            };
            println!(
                "    {} #{} at {}: charged {} ({what})",
                c.reader, c.seq, c.at, c.amount
            );
        }
    }
    println!("suspended credentials: {}", report.suspensions.len());
    for s in &report.suspensions {
        let state = match &s.cleared {
            Some(c) => format!("cleared at {} by {}", c.at, c.by),
            None => "open: `sonotap hub review`".to_owned(),
        };
        println!(
            "  {} of wallet {}: {} since {} ({state})",
            s.credential, s.wallet, s.rule, s.at
        );
    }
    println!("deny-list version: {}", report.deny_version);
}

/// `sonotap hub import`: the same checks and idempotency as an upload.
pub fn import(place: &HubPlace, file: &Path, records: RecordSignatureCheck) -> Result<ExitCode> {
    let bytes = sonotap_disk::fsutil::read_regular_file_capped(file, export::MAX_FILE_BYTES)
        .with_context(|| format!("cannot read batch file {}", file.display()))?;
    let batches = export::decode_file(&bytes)
        .with_context(|| format!("{} is not a sonotap batch file", file.display()))?;
    let mut hub = place.open(super::clock(None)?)?;
    hub.set_record_signatures(records);
    let mut failed = false;
    for (i, batch) in batches.iter().enumerate() {
        let now_ms = super::clock(None)?.saturating_mul(1000);
        match hub.receive(batch, Via::Import, now_ms) {
            Ok(receipt) => {
                let status = match receipt.report.status {
                    IngestStatus::Duplicate => "duplicate",
                    _ => "stored",
                };
                println!(
                    "{}",
                    serde_json::json!({
                        "batch": i + 1,
                        "reader": receipt.ack.reader_id,
                        "first_seq": receipt.ack.first_seq,
                        "last_seq": receipt.ack.last_seq,
                        "count": receipt.ack.totals.count,
                        "charged": receipt.ack.totals.charged,
                        "status": status,
                        "new_records": receipt.report.new_records,
                        "flagged": receipt.report.flagged,
                        "suspended": receipt.report.suspended,
                        "replays": receipt.report.replays,
                    })
                );
            }
            Err(
                e @ (HubError::Wire(_)
                | HubError::Refused(_)
                | HubError::UnknownReader { .. }
                | HubError::Conflict { .. }),
            ) => {
                eprintln!("sonotap: batch {}: refused: {e}", i + 1);
                failed = true;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// `sonotap reader sync`: one round, retried with backoff.
pub fn sync(args: SyncArgs) -> Result<ExitCode> {
    // Failing over from one hub to another is a warning on standard error.
    init_logging("warn");
    let urls = HubUrls::check(&args.hub).map_err(|e| anyhow::anyhow!("--hub: {e}"))?;
    let hub = HubClient::new(&urls, args.hub_ca.as_deref(), args.timeout)?;
    let mut reader = Reader::open(&args.data)?;
    let options = SyncOptions {
        batch_size: args.batch_size as usize,
        retention: args.retention,
    };
    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} records {per_sec} {eta}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar
    });
    let mut backoff =
        sonotap_reader::backoff::Backoff::new(Duration::from_millis(250), Duration::from_secs(10));
    let mut attempt = 0;
    loop {
        attempt += 1;
        let mut progress = |p: Progress| {
            if let Some(bar) = &bar {
                bar.set_length(p.total);
                bar.set_position(p.done);
            }
        };
        match client::sync_once(&mut reader, &hub, &options, &mut progress) {
            Ok(report) => {
                if let Some(bar) = &bar {
                    bar.finish_and_clear();
                }
                println!("{}", serde_json::to_string(&report)?);
                return Ok(ExitCode::SUCCESS);
            }
            Err(e) if e.is_permanent() => {
                if let Some(bar) = &bar {
                    bar.abandon();
                }
                eprintln!("sonotap: sync refused by the hub: {e}");
                eprintln!(
                    "sonotap: not retried (the hub would refuse it again); \
                     unacknowledged records stay queued; nothing was lost"
                );
                return Ok(ExitCode::from(1));
            }
            Err(e) if attempt < args.attempts => {
                let wait = backoff.failed(jitter());
                eprintln!(
                    "sonotap: sync attempt {attempt} failed: {e}; retrying in {} ms",
                    wait.as_millis()
                );
                std::thread::sleep(wait);
            }
            Err(e) => {
                if let Some(bar) = &bar {
                    bar.abandon();
                }
                eprintln!("sonotap: sync failed after {attempt} attempts: {e}");
                eprintln!("sonotap: unacknowledged records stay queued; nothing was lost");
                return Ok(ExitCode::from(1));
            }
        }
    }
}

fn jitter() -> f64 {
    let mut b = [0u8; 8];
    match getrandom::fill(&mut b) {
        Ok(()) => (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64,
        Err(_) => 0.5,
    }
}

/// `sonotap reader export`: every unsynced record, as signed batches in one file.
pub fn export(data: &Path, out: &Path) -> Result<ExitCode> {
    let reader = Reader::open(data)?;
    let now = super::clock(None)?;
    let (batches, totals) = export::build(&reader, now)?;
    let bytes = export::encode_file(&batches)?;
    sonotap_disk::fsutil::replace_atomic(out, &bytes, 0o600)
        .with_context(|| format!("cannot write {}", out.display()))?;
    println!(
        "{}",
        serde_json::json!({
            "file": out.display().to_string(),
            "batches": batches.len(),
            "records": totals.count,
            "charged": totals.charged,
            "voided": totals.voided,
        })
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn place(flag: Option<&str>) -> HubPlace {
        HubPlace {
            data: PathBuf::from("hub"),
            database: flag.map(str::to_owned),
        }
    }

    #[test]
    fn the_database_flag_wins_over_the_variable_and_an_empty_variable_is_unset() {
        let env = || Some("postgres://env/db".to_owned());
        assert_eq!(
            place(Some("postgres://flag/db")).database_from(env()),
            Some(("postgres://flag/db".to_owned(), Named::Flag))
        );
        assert_eq!(
            place(None).database_from(env()),
            Some(("postgres://env/db".to_owned(), Named::Env))
        );
        assert_eq!(place(None).database_from(Some(String::new())), None);
        assert_eq!(place(None).database_from(None), None);
    }
}
