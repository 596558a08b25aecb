//! The hub's commands, `hub serve|reader add|deny|allow|report|import`, and
//! the reader's side of the link to it, `reader sync|export`.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};

use sonotap_disk::keys::{PublicKey, Role};
use sonotap_hub::backend::Report;
use sonotap_hub::ledger::{IngestStatus, Via};
use sonotap_hub::listen::{self, Limits};
use sonotap_hub::server::{self, ServeOptions};
use sonotap_hub::{Hub, HubError, RecordSignatureCheck};
use sonotap_protocol::token::WalletId;
use sonotap_protocol::wire::{DenyAction, DenyReason};
use sonotap_reader::reader::Reader;
use sonotap_reader::sync::client::{self, HubClient, Progress, SyncOptions};
use sonotap_reader::sync::export;

/// `sonotap hub serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Hub data directory
    #[arg(long, value_name = "DIR")]
    data: PathBuf,
    /// Address to listen on (plain HTTP only on loopback; port 0 picks one)
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8443")]
    listen: SocketAddr,
    /// PEM certificate chain for HTTPS
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for HTTPS
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// State database: postgres://… (default: DIR/hub.db, SQLite); give the
    /// password in PGPASSFILE / ~/.pgpass or PGPASSWORD, not in the URL
    #[arg(long, value_name = "URL")]
    database: Option<String>,
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
        /// Hub data directory
        #[arg(long, value_name = "DIR")]
        data: PathBuf,
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
    /// Hub data directory
    #[arg(long, value_name = "DIR")]
    data: PathBuf,
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

/// `sonotap reader sync`.
#[derive(Debug, Args)]
pub struct SyncArgs {
    /// Reader data directory
    #[arg(long, value_name = "R")]
    data: PathBuf,
    /// Hub base URL, e.g. https://hub.example:8443 or http://127.0.0.1:8443
    #[arg(long, value_name = "URL")]
    hub: String,
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
    let now = super::clock(None)?;
    if args
        .database
        .as_deref()
        .is_some_and(sonotap_hub::pgpass::url_has_password)
    {
        eprintln!("sonotap: {}", sonotap_hub::pgpass::URL_PASSWORD_WARNING);
    }
    let mut hub = sonotap_hub::open_database(&args.data, args.database.as_deref(), now)?;
    hub.set_record_signatures(record_signatures(args.every_record_signature));
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
    };
    // Connections, not EMFILE, should be what bounds the hub: the cap is
    // clamped below whatever limit is in force.
    if let Err(e) = listen::raise_open_file_limit() {
        eprintln!("sonotap hub: cannot raise the open-file limit: {e}");
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
        let (addr, server) = server::bind(hub, options.clone(), shutdown).await?;
        let scheme = if options.tls.is_some() {
            "https"
        } else {
            "http"
        };
        // The first line is the address (tests and scripts read it).
        println!("listening on {scheme}://{addr} (state: {where_})");
        server.await?;
        println!("hub stopped");
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// `sonotap hub reader add`.
pub fn reader_add(command: HubReaderCommand) -> Result<ExitCode> {
    let HubReaderCommand::Add { data, id, key } = command;
    let key = PublicKey::read(&key, Role::Reader)?;
    let mut hub = Hub::open(&data)?;
    let new = hub.add_reader(&id, &key, super::clock(None)?)?;
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

/// `sonotap hub deny|allow`.
pub fn deny(args: DenyArgs, action: DenyAction) -> Result<ExitCode> {
    let wallet = parse_wallet(&args.wallet)?;
    let mut hub = Hub::open(&args.data)?;
    let note = if args.note.is_empty() {
        "operator"
    } else {
        args.note.as_str()
    };
    let entry = hub.set_deny(action, wallet, args.reason, note, super::clock(None)?)?;
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
pub fn report(data: &Path, json: bool) -> Result<ExitCode> {
    let mut hub = Hub::open(data)?;
    let report = hub.report()?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
    }
    Ok(ExitCode::SUCCESS)
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
    println!("deny-list version: {}", report.deny_version);
}

/// `sonotap hub import`: the same checks and idempotency as an upload.
pub fn import(data: &Path, file: &Path, records: RecordSignatureCheck) -> Result<ExitCode> {
    let bytes = sonotap_disk::fsutil::read_regular_file_capped(file, export::MAX_FILE_BYTES)
        .with_context(|| format!("cannot read batch file {}", file.display()))?;
    let batches = export::decode_file(&bytes)
        .with_context(|| format!("{} is not a sonotap batch file", file.display()))?;
    let mut hub = Hub::open(data)?;
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
    let hub = HubClient::new(&args.hub, args.hub_ca.as_deref(), args.timeout)?;
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
