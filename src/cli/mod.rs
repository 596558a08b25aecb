//! Command-line interface: argument parsing and thin wrappers over the library.
//!
//! Exit codes: 0 success (or accept), 1 decline (or nothing found, or a
//! payment the wallet refuses to sign because every reader would decline
//! it), 2 usage or environment error (clap's own usage errors also exit 2).

mod account;
mod analyze;
mod beacon;
mod demo;
mod hub;
mod hw;
mod manual;
mod output;
mod qr;
mod rider;
mod sound;
mod status;

use std::io::{self, Read, Write};
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, Parser, Subcommand};

use sonotap_disk::keys::{PublicKey, Role};
use sonotap_hub::IssueRequest;
use sonotap_protocol::api::check_reader_id;
use sonotap_protocol::currency;
use sonotap_protocol::policy::Reason;
use sonotap_protocol::record::{self, ChainVerifier};
use sonotap_protocol::token::{self, Scope, Token, WalletId};
use sonotap_reader::reader::{self, InitOptions, Reader};
use sonotap_wallet as wallet;
use sonotap_wallet::{PayRequest, Wallet};

/// Offline payment reader: tokens by sound or QR, offline checks, durable queue.
#[derive(Debug, Parser)]
#[command(name = "sonotap", version, about, max_term_width = 100)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Show the main job end to end in a scratch directory: issue, pay, accept, decline
    Demo {
        /// Keep the demo's files in DIR instead of a temporary directory
        #[arg(long, value_name = "DIR")]
        keep: Option<PathBuf>,
    },
    /// Operator hub: issuer keys and credentials
    #[command(subcommand)]
    Hub(HubCommand),
    /// Phone wallet simulator: keys, credential, payment tokens
    #[command(subcommand)]
    Wallet(WalletCommand),
    /// Reader: offline acceptance and the durable record queue
    #[command(subcommand)]
    Reader(ReaderCommand),
    /// Look inside token files
    #[command(subcommand)]
    Token(TokenCommand),
    /// Acoustic modem: encode, decode, listen, record, simulate, and readers' beacons
    #[command(subcommand)]
    Modem(sound::ModemCommand),
    /// QR codes: decode from camera frames and images, render tokens
    #[command(subcommand)]
    Qr(qr::QrCommand),
    /// Hardware: gate and vending profiles, on-site tests over serial ports
    #[command(subcommand)]
    Hw(hw::HwCommand),
    /// Field tool: a recording's levels, band noise, decoded frames and SNR, and a spectrogram PNG
    Analyze(analyze::AnalyzeArgs),
    /// On-site status, read-only: queue, last sync, devices, last declines (exit 1: needs attention)
    Status {
        /// Reader data directory
        #[arg(long, value_name = "R")]
        data: PathBuf,
        /// One JSON object instead of text
        #[arg(long)]
        json: bool,
        /// Evaluate at this time, Unix seconds (default: now)
        #[arg(long, value_name = "UNIX_SECONDS")]
        at: Option<u64>,
    },
    /// The reader daemon: listen, decide, record, open the gate, sync (systemd Type=notify)
    Run {
        /// The daemon's configuration (see hw/config.example.toml)
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Write the man pages (sonotap.1, sonotap-hub-serve.1, …) into a directory
    Manual {
        /// Where to write them (created if missing)
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum HubCommand {
    /// Create the issuer key (DIR/issuer.pub) and the hub database
    Init {
        #[command(flatten)]
        place: hub::HubPlace,
        /// Key id of the first issuer key
        #[arg(long, default_value_t = 1)]
        key_id: u8,
    },
    /// Issue an offline credential to a wallet
    Issue(IssueArgs),
    /// Serve the hub's HTTP API: batch upload, deny list, key set, time
    Serve(hub::ServeArgs),
    /// Register readers
    #[command(subcommand)]
    Reader(hub::HubReaderCommand),
    /// Deny a wallet at every reader (after each reader's next sync)
    Deny(hub::DenyArgs),
    /// Credentials suspended after a counter conflict, with the evidence (both tokens)
    Review(hub::ReviewArgs),
    /// Lift a reviewed suspension (a credential, or every one of a wallet) at every reader
    Clear(hub::ClearArgs),
    /// Lift a wallet's denial
    Allow(hub::DenyArgs),
    /// Riders' accounts: open, top up, enrol phones, show, suspend
    #[command(subcommand)]
    Account(account::AccountCommand),
    /// Per-reader totals, flagged wallets, gaps, incidents, replays and suspensions
    Report {
        #[command(flatten)]
        place: hub::HubPlace,
        /// One JSON document instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Every reader: last seen, last upload, queue and its lag, clock offset, deny-list version, software
    Readers {
        #[command(flatten)]
        place: hub::HubPlace,
        /// One JSON document instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Import a batch file exported on site (same checks as an upload)
    Import {
        #[command(flatten)]
        place: hub::HubPlace,
        /// The file from `sonotap reader export`
        file: PathBuf,
        /// Check every record's own reader signature (as `hub serve`)
        #[arg(long)]
        every_record_signature: bool,
    },
}

#[derive(Debug, Args)]
struct IssueArgs {
    #[command(flatten)]
    place: hub::HubPlace,
    /// The wallet's public key file (W/wallet.pub)
    #[arg(long, value_name = "WALLET.pub")]
    wallet_key: PathBuf,
    /// Most the wallet may spend offline, in minor units
    #[arg(long, value_name = "N")]
    limit: u32,
    /// Most one payment may authorise, in minor units
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    per_payment: u32,
    /// Hours of validity
    #[arg(long, value_name = "H", value_parser = clap::value_parser!(u16).range(1..))]
    valid_hours: u16,
    /// Where the credential may be spent: transit, vending or group:N
    #[arg(long, default_value = "transit")]
    scope: Scope,
    /// ISO 4217 currency: letters (EUR) or number (978)
    #[arg(long, default_value = "EUR", value_parser = currency::parse)]
    currency: u16,
    /// Start of validity, Unix seconds (default: now)
    #[arg(long, value_name = "UNIX_SECONDS")]
    valid_from: Option<u64>,
    /// Where to write the credential (115 bytes); its renewal note (the
    /// highest counter the hub cleared for the wallet) goes to CRED.renewal
    #[arg(long, value_name = "CRED")]
    out: PathBuf,
}

#[derive(Debug, Subcommand)]
enum WalletCommand {
    /// Create a wallet key pair (W/wallet.pub)
    New {
        /// Wallet directory
        #[arg(long, value_name = "W")]
        dir: PathBuf,
    },
    /// Install a credential issued by the hub
    AddCredential {
        /// Wallet directory
        #[arg(long, value_name = "W")]
        dir: PathBuf,
        /// Credential file from `sonotap hub issue`
        credential: PathBuf,
        /// The renewal note from `hub issue` (default: CRED.renewal, if
        /// present): the counter moves above the highest the hub cleared
        #[arg(long, value_name = "NOTE")]
        renewal: Option<PathBuf>,
    },
    /// Make a payment token (advances the counter and running total first);
    /// exit 1, nothing signed, if every reader would decline it
    Pay {
        /// Wallet directory
        #[arg(long, value_name = "W")]
        dir: PathBuf,
        /// Amount to authorise, minor units
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
        amount: u32,
        /// Token time, Unix seconds (default: now)
        #[arg(long, value_name = "UNIX_SECONDS")]
        at: Option<u64>,
        /// Bind the token to this reader id (default: any reader)
        #[arg(long, value_name = "ID", conflicts_with = "beacon")]
        reader: Option<String>,
        /// Bind the token to the gate whose beacon this is (a version-2
        /// token): alsa:DEVICE (or device:NAME) to listen for its sound, a
        /// .wav recording of it, an image of the QR code it shows, or its 34
        /// hex digits; the token's time is then the gate's (unless --at)
        #[arg(long, value_name = "SOURCE")]
        beacon: Option<String>,
        /// With --beacon on a device: how long to listen, seconds
        #[arg(
            long,
            value_name = "SECONDS",
            default_value_t = 10.0,
            requires = "beacon"
        )]
        listen_secs: f64,
        /// Where to write the token
        #[arg(long, value_name = "TOKEN")]
        out: PathBuf,
        /// Write the token as hex text instead of its raw bytes (199, or 200 for version 2)
        #[arg(long)]
        hex: bool,
        /// Also render the token as sound, as the phone would play it
        #[arg(long, value_name = "FILE.wav")]
        wav: Option<PathBuf>,
        /// Modem profile for --wav: fast or robust
        #[arg(long, default_value = "fast", value_parser = sound::parse_profile)]
        profile: sonotap_modem::Profile,
        /// Also render the token as a QR code, as the phone would show it
        #[arg(long, value_name = "FILE.png")]
        qr: Option<PathBuf>,
        /// Sign even a payment every reader will decline (over the cap or the
        /// offline limit, outside validity), for tests and demos; it still counts
        #[arg(long)]
        force: bool,
    },
    /// Show the wallet's id, credential, counter and running total
    Show {
        /// Wallet directory
        #[arg(long, value_name = "W")]
        dir: PathBuf,
    },
    /// Enrol with the operator's one-time code, read from standard input
    /// (the code, or the link HUB/wallet/#enrol=CODE), then renew at once;
    /// exit 1 if the hub refuses
    Enrol(rider::EnrolArgs),
    /// A fresh credential from the hub, online (the counter moves above the
    /// highest the hub cleared); exit 1 if the hub refuses
    Renew(rider::RenewArgs),
    /// The account's balance and entries from the hub, checked against the
    /// issuer key learned at the first renewal; exit 1 if the hub refuses
    Statement(rider::StatementArgs),
}

#[derive(Debug, Subcommand)]
enum ReaderCommand {
    /// Create a reader: key pair (R/reader.pub), database, configuration
    Init {
        /// Reader data directory
        #[arg(long, value_name = "R")]
        data: PathBuf,
        /// Reader id (A-Z a-z 0-9 . _ -, at most 64)
        #[arg(long)]
        id: String,
        /// Issuer public key to trust (DIR/issuer.pub)
        #[arg(long, value_name = "ISSUER.pub")]
        trust: PathBuf,
        /// Scope served: transit, vending or group:N
        #[arg(long, default_value = "transit")]
        scope: Scope,
        /// ISO 4217 currency: letters (EUR) or number (978)
        #[arg(long, default_value = "EUR", value_parser = currency::parse)]
        currency: u16,
        /// Allowed difference between token time and reader time, seconds (1 to 86400)
        #[arg(long, default_value_t = reader::ClockSkew::DEFAULT)]
        clock_skew_secs: reader::ClockSkew,
        /// Fixed fare charged when no amount is given (default: what the token authorises)
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
        fare: Option<u32>,
    },
    /// Upload queued records to the hub, fetch its deny list and keys (one round)
    Sync(hub::SyncArgs),
    /// Write every unsynced record to a signed batch file, for `hub import`
    Export {
        /// Reader data directory
        #[arg(long, value_name = "R")]
        data: PathBuf,
        /// The batch file to write
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Check a token offline; on accept, commit the record before answering
    Accept {
        /// Reader data directory
        #[arg(long, value_name = "R")]
        data: PathBuf,
        /// Amount to charge, minor units (default: the fare, else the amount authorised)
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
        amount: Option<u32>,
        /// Reader time, Unix seconds (default: now)
        #[arg(long, value_name = "UNIX_SECONDS")]
        at: Option<u64>,
        /// Token file: raw bytes or hex text; - for standard input
        token: PathBuf,
    },
    /// List the record queue
    Queue {
        /// Reader data directory
        #[arg(long, value_name = "R")]
        data: PathBuf,
        /// One JSON object per record and line
        #[arg(long)]
        json: bool,
        /// Only records the hub has not acknowledged
        #[arg(long)]
        unsynced: bool,
    },
    /// How far the tokens' own times were from this reader's clock when it
    /// decided, per token version: what the clock-skew window is chosen from
    Clock {
        /// Reader data directory
        #[arg(long, value_name = "R")]
        data: PathBuf,
        /// One JSON object per token version instead of text
        #[arg(long)]
        json: bool,
    },
    /// Verify the hash chain and signatures of the records kept
    Verify {
        /// Reader data directory
        #[arg(long, value_name = "R")]
        data: PathBuf,
    },
    /// Trust another issuer key (key rotation)
    Trust {
        /// Reader data directory
        #[arg(long, value_name = "R")]
        data: PathBuf,
        /// Issuer public key file
        key: PathBuf,
    },
    /// Put a wallet on this reader's deny list
    Deny {
        /// Reader data directory
        #[arg(long, value_name = "R")]
        data: PathBuf,
        /// Wallet id (16 hex digits)
        #[arg(long)]
        wallet: WalletId,
        /// Why (kept with the entry)
        #[arg(long, default_value = "denied by operator")]
        reason: String,
    },
    /// Take a wallet off this reader's deny list
    Allow {
        /// Reader data directory
        #[arg(long, value_name = "R")]
        data: PathBuf,
        /// Wallet id (16 hex digits)
        #[arg(long)]
        wallet: WalletId,
    },
    /// Print the acceptance checks in the order they run
    Policy,
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Decode a token's fields as JSON, without checking signatures
    Inspect {
        /// Token file: raw bytes or hex text; - for standard input
        token: PathBuf,
    },
}

/// Parses the command line, runs it, and maps errors to exit code 2.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    sonotap_qr::quiet_contained_panics(report_contained_panic);
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("sonotap: error: {}", with_causes(&e));
            ExitCode::from(2)
        }
    }
}

/// Tells of a panic rqrr raised on a frame and the decoder caught (a hostile
/// or degenerate frame): once for each place, as a warning in the daemon's
/// log when one is set up, else on standard error (`qr decode`, `qr scan`);
/// after that the daemon's metric counts them.
fn report_contained_panic(caught: &sonotap_qr::ContainedPanic) {
    let sonotap_qr::ContainedPanic { location, message } = caught;
    if tracing::dispatcher::has_been_set() {
        tracing::warn!(
            %location,
            panic_message = %message,
            "the QR library (rqrr) panicked on a camera frame; caught, that attempt read as no code (counted in sonotap_qr_contained_panics_total, not logged again for this place)"
        );
    } else {
        let _ = writeln!(
            io::stderr(),
            "sonotap: the QR library (rqrr) panicked at {location}: {message}; caught, that attempt read as no code (not said again for this place)"
        );
    }
}

/// `e` and its causes, `: `-separated, leaving out a cause whose words are
/// already said (an operator's message often quotes the driver error it
/// keeps as its source).
fn with_causes(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let said = cause.to_string();
        if text.contains(&said) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&said);
    }
    text
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Demo { keep } => demo::run(keep.as_deref()),
        Command::Hub(command) => run_hub(command),
        Command::Wallet(command) => run_wallet(command),
        Command::Reader(command) => run_reader(command),
        Command::Modem(command) => sound::run(command),
        Command::Qr(command) => qr::run(command),
        Command::Hw(command) => hw::run(command),
        Command::Analyze(args) => analyze::run(args),
        Command::Status { data, json, at } => status::run(&data, json, clock(at)?),
        Command::Run { config } => {
            sonotap_reader::daemon::run(&config)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Manual { out } => {
            let written = manual::write_pages(&out)?;
            println!("{written} man pages in {}", out.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Token(TokenCommand::Inspect { token }) => {
            let bytes = read_token_file(&token)?;
            let token = Token::decode(&bytes).context("not a valid v1 token")?;
            println!("{}", output::inspect_json(&token));
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn run_hub(command: HubCommand) -> Result<ExitCode> {
    match command {
        HubCommand::Init { place, key_id } => {
            let hub = place.init(key_id, clock(None)?)?;
            let public = place.data.join(sonotap_hub::ISSUER_PUB_FILE);
            println!(
                "hub initialised: issuer key id {key_id}, public key {}, state {}",
                public.display(),
                hub.describe()
            );
            Ok(ExitCode::SUCCESS)
        }
        HubCommand::Serve(args) => hub::serve(args),
        HubCommand::Reader(command) => hub::reader_add(command),
        HubCommand::Deny(args) => hub::deny(args, sonotap_protocol::wire::DenyAction::Deny),
        HubCommand::Allow(args) => hub::deny(args, sonotap_protocol::wire::DenyAction::Allow),
        HubCommand::Report { place, json } => hub::report(&place, json),
        HubCommand::Readers { place, json } => hub::readers(&place, json),
        HubCommand::Account(command) => account::run(command),
        HubCommand::Review(args) => hub::review(&args),
        HubCommand::Clear(args) => hub::clear(&args),
        HubCommand::Import {
            place,
            file,
            every_record_signature,
        } => hub::import(
            &place,
            &file,
            hub::record_signatures(every_record_signature),
        ),
        HubCommand::Issue(args) => {
            let wallet = PublicKey::read(&args.wallet_key, Role::Wallet)?;
            let now = clock(None)?;
            let mut hub = args.place.open(now)?;
            let request = IssueRequest {
                scope: args.scope,
                currency: args.currency,
                offline_limit: args.limit,
                per_payment_cap: args.per_payment,
                valid_from: unix_u32(args.valid_from.unwrap_or(now))?,
                valid_hours: args.valid_hours,
            };
            let credential = hub.issue(&wallet, request, now)?;
            let open = hub.review(false)?;
            let digest = hex::encode(credential.digest());
            if open
                .suspensions
                .iter()
                .any(|s| s.suspension.credential == digest)
            {
                bail!(
                    "the credential issued has the same terms, hence the same bytes, as \
                     credential {digest}, which is suspended for review: give another \
                     --valid-from or --valid-hours so that the renewal is a new credential \
                     (nothing was written)"
                );
            }
            let note = hub.renewal_note(&credential, now)?;
            let mut note_path = args.out.clone().into_os_string();
            note_path.push(wallet::RENEWAL_SUFFIX);
            let note_path = PathBuf::from(note_path);
            // The note first: a credential is never left beside a stale note.
            sonotap_disk::fsutil::replace_atomic(&note_path, &note.encode(), 0o644)
                .with_context(|| format!("cannot write {}", note_path.display()))?;
            sonotap_disk::fsutil::replace_atomic(&args.out, &credential.encode(), 0o644)
                .with_context(|| format!("cannot write {}", args.out.display()))?;
            let wallet_id = credential.terms.wallet_id().to_string();
            for s in open
                .suspensions
                .iter()
                .filter(|s| s.suspension.wallet == wallet_id)
            {
                eprintln!(
                    "sonotap: note: wallet {wallet_id} has credential {} suspended for review \
                     since {} ({}); this credential is not affected (`sonotap hub review`)",
                    s.suspension.credential, s.suspension.at, s.suspension.rule
                );
            }
            println!(
                "{}",
                output::issued_json(&credential, &note_path, note.highest_cleared_counter)
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn run_wallet(command: WalletCommand) -> Result<ExitCode> {
    match command {
        WalletCommand::New { dir } => {
            let wallet = Wallet::create(&dir)?;
            println!(
                "wallet {} created; public key {}",
                wallet.id(),
                dir.join(wallet::PUB_FILE).display()
            );
        }
        WalletCommand::AddCredential {
            dir,
            credential,
            renewal,
        } => {
            let mut wallet = Wallet::open(&dir)?;
            let note = renewal.or_else(|| wallet::renewal_beside(&credential));
            let installed = wallet.install(&credential, note.as_deref())?;
            println!("{}", output::installed_json(&installed));
        }
        WalletCommand::Pay {
            dir,
            amount,
            at,
            reader,
            beacon,
            listen_secs,
            out,
            hex,
            wav,
            profile,
            qr,
            force,
        } => {
            if !(listen_secs > 0.0 && listen_secs <= 600.0) {
                bail!("--listen-secs must be more than 0 and at most 600");
            }
            let listen = std::time::Duration::from_secs_f64(listen_secs);
            let heard = beacon
                .as_deref()
                .map(|source| beacon::hear(source, listen))
                .transpose()?;
            let reader_tag = match reader {
                Some(id) => {
                    check_reader_id(&id).map_err(|e| anyhow!(e))?;
                    token::reader_tag(&id)
                }
                None => 0,
            };
            let mut wallet = Wallet::open(&dir)?;
            if let Some(h) = &heard {
                eprintln!(
                    "sonotap: binding to the gate with reader tag {:08x} (challenge {}, its time {})",
                    h.beacon.reader_tag,
                    ::hex::encode(h.beacon.challenge),
                    h.beacon.reader_time
                );
            }
            let at = match (at, &heard) {
                (None, Some(heard)) => heard.gate_time_now(),
                (at, _) => clock(at)?,
            };
            let request = PayRequest {
                amount,
                at: unix_u32(at)?,
                reader_tag,
                gate: heard.map(|h| h.beacon),
            };
            let payment = match force {
                true => wallet.pay_forced(request)?,
                false => match wallet.pay(request) {
                    Err(refused @ wallet::WalletError::WouldBeDeclined(_)) => {
                        eprintln!("sonotap: wallet pay: {refused}");
                        return Ok(ExitCode::from(1));
                    }
                    other => other?,
                },
            };
            for warning in &payment.warnings {
                eprintln!("sonotap: warning: {warning}; a reader will decline this token");
            }
            let bytes = payment.token.encode();
            let content = match hex {
                true => format!("{}\n", ::hex::encode(&bytes)).into_bytes(),
                false => bytes.to_vec(),
            };
            // A token is a bearer instrument until it is spent: owner only.
            sonotap_disk::fsutil::replace_atomic(&out, &content, 0o600)
                .with_context(|| format!("cannot write {}", out.display()))?;
            // The sound and the picture carry the same token: owner only too.
            // A fresh empty 0600 file is renamed into place first, so the
            // content is never written into a file others may read.
            if let Some(wav) = wav {
                sonotap_disk::fsutil::replace_atomic(&wav, b"", 0o600)
                    .with_context(|| format!("cannot write {}", wav.display()))?;
                sound::write_wav(&bytes, profile, sonotap_modem::INTERNAL_RATE, &wav)?;
            }
            if let Some(png) = qr {
                sonotap_disk::fsutil::replace_atomic(&png, b"", 0o600)
                    .with_context(|| format!("cannot write {}", png.display()))?;
                qr::write_png(&bytes, &png)?;
            }
            println!("{}", output::payment_json(&payment.token));
        }
        WalletCommand::Show { dir } => {
            let wallet = Wallet::open(&dir)?;
            println!("{}", output::wallet_json(&wallet));
        }
        WalletCommand::Enrol(args) => return rider::enrol(args),
        WalletCommand::Renew(args) => return rider::renew(args),
        WalletCommand::Statement(args) => return rider::statement(args),
    }
    Ok(ExitCode::SUCCESS)
}

fn run_reader(command: ReaderCommand) -> Result<ExitCode> {
    match command {
        ReaderCommand::Sync(args) => return hub::sync(args),
        ReaderCommand::Export { data, out } => return hub::export(&data, &out),
        ReaderCommand::Init {
            data,
            id,
            trust,
            scope,
            currency,
            clock_skew_secs,
            fare,
        } => {
            let issuer = PublicKey::read(&trust, Role::Issuer)?;
            let options = InitOptions {
                id,
                scope,
                currency,
                clock_skew_secs: clock_skew_secs.secs(),
                fare,
            };
            let reader = Reader::init(&data, &options, &issuer, clock(None)?)?;
            println!(
                "reader {} initialised: {} {}, trusts issuer key {}; public key {}",
                reader.config().id,
                scope,
                currency::name(currency),
                issuer.key_id().unwrap_or(1),
                data.join(reader::PUB_FILE).display()
            );
        }
        ReaderCommand::Accept {
            data,
            amount,
            at,
            token,
        } => {
            // Read the token before opening the reader so that a missing file
            // is an environment error, not a decline.
            let bytes = read_token_file(&token)?;
            let mut reader = Reader::open(&data)?;
            // Without --at: the system clock, corrected by the hub's offset.
            let now = match at {
                Some(at) => at,
                None => reader.adjusted_now(clock(None)?)?,
            };
            let outcome = reader.present(&bytes, amount.and_then(NonZeroU32::new), now)?;
            println!("{}", output::decision_json(&outcome));
            return Ok(match outcome.decision {
                Ok(_) => ExitCode::SUCCESS,
                Err(_) => ExitCode::from(1),
            });
        }
        ReaderCommand::Queue {
            data,
            json,
            unsynced,
        } => {
            let reader = Reader::open(&data)?;
            let mut out = io::stdout().lock();
            // What the gate or the machine did after each record was
            // committed (`unknown`: the daemon stopped with it in flight).
            let outcomes = |seq: u64| -> Result<Vec<&'static str>> {
                Ok(reader
                    .actuations(seq)?
                    .iter()
                    .map(|a| a.outcome.as_str())
                    .collect())
            };
            if json {
                reader.for_each_record(unsynced, |record| {
                    let outcomes = outcomes(record.seq)?;
                    writeln!(out, "{}", output::record_json(&record, &outcomes))
                        .map_err(anyhow::Error::from)
                })?;
            } else {
                output::queue_header(&mut out)?;
                reader.for_each_record(unsynced, |record| {
                    let outcomes = outcomes(record.seq)?;
                    output::queue_row(&mut out, &record, outcomes.last().copied())
                        .map_err(anyhow::Error::from)
                })?;
                let summary = reader.summary()?;
                output::queue_summary(&mut out, &summary, reader.config().currency)?;
            }
        }
        ReaderCommand::Clock { data, json } => {
            let reader = Reader::open(&data)?;
            let records = reader.records(false)?;
            let summaries = sonotap_reader::clock::offsets(&records);
            if summaries.is_empty() {
                eprintln!("sonotap: no charges kept at this reader to measure");
                return Ok(ExitCode::from(1));
            }
            for s in &summaries {
                if json {
                    println!("{}", serde_json::to_string(s)?);
                } else {
                    println!(
                        "version {}: {} charges, token time - reader time: median {} s; |offset| p90 {} s, p99 {} s, max {} s; beyond 30 s: {}, beyond 300 s: {} (window now {} s)",
                        s.version,
                        s.charges,
                        s.median_secs,
                        s.p90_abs_secs,
                        s.p99_abs_secs,
                        s.max_abs_secs,
                        s.beyond_30s,
                        s.beyond_300s,
                        reader.clock_skew_secs()
                    );
                }
            }
        }
        ReaderCommand::Verify { data } => {
            let reader = Reader::open(&data)?;
            let key = reader.public_key();
            let mut verifier = ChainVerifier::new(&reader.config().id, key.verifying_key(), None);
            let (mut count, mut first) = (0u64, None);
            let walked = reader.for_each_record(false, |record| {
                first.get_or_insert(record.seq);
                count += 1;
                verifier.push(&record).map_err(anyhow::Error::from)
            });
            match walked {
                Ok(()) => match (first, verifier.head()) {
                    (Some(first), Some((last, _))) => println!(
                        "chain intact: {count} records (seq {first}..={last}), hashes and reader signatures verify"
                    ),
                    _ => println!("chain intact: no records yet"),
                },
                Err(e) => match e.downcast::<record::ChainError>() {
                    Ok(broken) => {
                        println!("chain broken: {broken}");
                        return Ok(ExitCode::from(1));
                    }
                    Err(other) => return Err(other),
                },
            }
        }
        ReaderCommand::Trust { data, key } => {
            let issuer = PublicKey::read(&key, Role::Issuer)?;
            let mut reader = Reader::open(&data)?;
            reader.trust(&issuer, clock(None)?)?;
            println!(
                "reader {} now trusts issuer key {}",
                reader.config().id,
                issuer.key_id().unwrap_or(1)
            );
        }
        ReaderCommand::Deny {
            data,
            wallet,
            reason,
        } => {
            let reader = Reader::open(&data)?;
            reader.deny_wallet(wallet, &reason, clock(None)?)?;
            println!("wallet {wallet} denied at reader {}", reader.config().id);
        }
        ReaderCommand::Allow { data, wallet } => {
            let reader = Reader::open(&data)?;
            match reader.allow_wallet(wallet)? {
                true => println!("wallet {wallet} allowed again"),
                false => println!("wallet {wallet} was not denied"),
            }
        }
        ReaderCommand::Policy => {
            for (n, reason) in Reason::ALL.iter().enumerate() {
                println!("{:>2}. {:<26} {}", n + 1, reason.as_str(), reason.rule());
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The evaluation time: `--at` if given, else the system clock.
fn clock(at: Option<u64>) -> Result<u64> {
    match at {
        Some(at) => Ok(at),
        None => Ok(SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .context("the system clock is before 1970")?
            .as_secs()),
    }
}

/// Tokens carry 32-bit Unix times.
fn unix_u32(at: u64) -> Result<u32> {
    u32::try_from(at).map_err(|_| anyhow!("time {at} is past 2106, beyond what token v1 can carry"))
}

/// The most a token file may hold: a token is 199 bytes (398 as hex text);
/// anything near this is not a token, and is refused unread.
const MAX_TOKEN_FILE_BYTES: u64 = 64 * 1024;

/// Reads a token: raw bytes, or hex text (as `--hex` and the decoders print);
/// `-` reads standard input. Anything else is passed on as-is, to be declined
/// as malformed. A FIFO, a device or a file over [`MAX_TOKEN_FILE_BYTES`] is
/// refused (exit 2) without waiting on it or reading it all.
fn read_token_file(path: &Path) -> Result<Vec<u8>> {
    let bytes = if path == Path::new("-") {
        let mut bytes = Vec::new();
        io::stdin()
            .take(MAX_TOKEN_FILE_BYTES + 1)
            .read_to_end(&mut bytes)
            .context("cannot read the token from standard input")?;
        if bytes.len() as u64 > MAX_TOKEN_FILE_BYTES {
            bail!(
                "standard input holds more than {MAX_TOKEN_FILE_BYTES} bytes; a token is {}",
                token::TOKEN_LEN
            );
        }
        bytes
    } else {
        sonotap_disk::fsutil::read_regular_file_capped(path, MAX_TOKEN_FILE_BYTES)
            .with_context(|| format!("cannot read token file {}", path.display()))?
    };
    Ok(decode_hex_text(&bytes).unwrap_or(bytes))
}

/// Hex text with optional surrounding whitespace; `None` if it is not that.
fn decode_hex_text(bytes: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(bytes).ok()?.trim();
    if text.is_empty() || text.len() % 2 != 0 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    ::hex::decode(text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_text_tokens_are_decoded_binary_ones_kept() {
        assert_eq!(decode_hex_text(b"01ff\n"), Some(vec![0x01, 0xff]));
        assert_eq!(decode_hex_text(b"\x01\xff"), None);
        assert_eq!(decode_hex_text(b"abc"), None);
        assert_eq!(decode_hex_text(b""), None);
    }

    #[test]
    fn a_cause_the_message_already_quotes_is_printed_once() {
        #[derive(Debug)]
        struct Quoting(std::io::Error);
        impl std::fmt::Display for Quoting {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "cannot connect to db: {}", self.0)
            }
        }
        impl std::error::Error for Quoting {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let driver = || std::io::Error::other("connection refused");
        let e = anyhow::Error::new(Quoting(driver())).context("hub serve");
        assert_eq!(
            with_causes(&e),
            "hub serve: cannot connect to db: connection refused"
        );
        let plain = anyhow::Error::new(driver()).context("opening hub.db");
        assert_eq!(with_causes(&plain), "opening hub.db: connection refused");
    }

    #[test]
    fn command_line_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
