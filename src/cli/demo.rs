//! `sonotap demo`: the main job on embedded defaults, narrated.
//!
//! Everything runs through the same library calls as the CLI commands, on
//! real files (keys, SQLite) in a scratch directory: an operator issues a
//! credential, a phone pays, a gate accepts, then a double tap, an over-limit
//! payment and a forged token are declined, a second rider pays by sound
//! through a simulated station, the queue is listed and its chain verified;
//! then a cloned wallet spends twice offline, both gates sync to a hub on
//! 127.0.0.1, the hub flags the clone and the deny list reaches the gate.

use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};

use super::{clock, output, unix_u32};
use crate::hub::server::{self, ServeOptions};
use crate::hub::{Hub, IssueRequest};
use crate::modem::{self, Decoder, Profile};
use crate::reader::{InitOptions, Outcome, Reader};
use crate::record;
use crate::sim::{self, Channel, NoiseKind, Room};
use crate::sync::client::{self, HubClient, SyncOptions};
use crate::token::Scope;
use crate::wallet::{PayRequest, Wallet};

/// A scratch directory removed on drop unless the user asked to keep it.
struct Workspace {
    path: PathBuf,
    remove: bool,
}

impl Drop for Workspace {
    fn drop(&mut self) {
        if self.remove {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

pub(super) fn run(keep: Option<&Path>) -> Result<ExitCode> {
    let workspace = match keep {
        Some(dir) => {
            if dir.exists() && dir.read_dir()?.next().is_some() {
                bail!(
                    "{} is not empty; give a new or empty directory",
                    dir.display()
                );
            }
            Workspace {
                path: dir.to_path_buf(),
                remove: false,
            }
        }
        None => Workspace {
            path: std::env::temp_dir().join(format!("sonotap-demo-{}", std::process::id())),
            remove: true,
        },
    };
    std::fs::create_dir_all(&workspace.path)
        .with_context(|| format!("cannot create {}", workspace.path.display()))?;
    let dir = &workspace.path;
    let now = clock(None)?;

    println!("sonotap demo: offline payment core on embedded defaults");
    println!("files in {}", dir.display());
    println!();

    let mut hub = Hub::init(&dir.join("hub"), 1, now)?;
    println!(
        "1. operator: hub initialised, issuer key 1 = {}",
        hex::encode(hub.issuer_public().to_bytes())
    );

    let mut wallet = Wallet::create(&dir.join("wallet"))?;
    println!("2. rider's phone: new wallet {}", wallet.id());

    let request = IssueRequest {
        scope: Scope::Transit,
        currency: 978,
        offline_limit: 500,
        per_payment_cap: 300,
        valid_from: unix_u32(now)?,
        valid_hours: 24,
    };
    let credential = hub.issue(&wallet.public_key(), request, now)?;
    let credential_path = dir.join("credential");
    crate::fsutil::replace_atomic(&credential_path, &credential.encode(), 0o644)?;
    wallet.add_credential(&credential_path)?;
    println!(
        "3. operator: credential issued (transit, EUR, offline limit 500, at most 300 per payment, 24 h)"
    );

    let options = InitOptions {
        id: "gate-1".into(),
        scope: Scope::Transit,
        currency: 978,
        clock_skew_secs: crate::reader::DEFAULT_CLOCK_SKEW_SECS,
        fare: None,
    };
    let mut gate = Reader::init(&dir.join("gate-1"), &options, &hub.issuer_public(), now)?;
    println!("4. gate-1: reader initialised, trusts issuer key 1, no network needed from here on");
    println!();

    let mut pay = |amount: u32| -> Result<Vec<u8>> {
        let payment = wallet.pay(PayRequest {
            amount,
            at: unix_u32(now)?,
            reader_tag: 0,
        })?;
        Ok(payment.token.encode().to_vec())
    };
    let mut tap = |label: &str, bytes: &[u8]| -> Result<Outcome> {
        let outcome = gate.present(bytes, None::<NonZeroU32>, now)?;
        let verdict = match &outcome.decision {
            Ok(c) => format!("ACCEPT, record {} committed, gate opens", c.seq),
            Err(d) => format!("DECLINE {}: {}", d.reason, d.detail),
        };
        println!("   {label:<44} {verdict}");
        println!("   {:<44} {}", "", output::decision_json(&outcome));
        Ok(outcome)
    };

    let first = pay(250)?;
    println!("5. taps at gate-1 (token: {} bytes)", first.len());
    tap("phone pays 250", &first)?;
    tap("same sound heard again (double tap)", &first)?;
    let second = pay(200)?;
    tap("phone pays 200 (running total 450)", &second)?;
    let third = pay(100)?;
    tap("phone pays 100 (would make 550 > 500)", &third)?;
    let mut forged = pay(50)?;
    if let Some(byte) = forged.get_mut(crate::token::CREDENTIAL_LEN + 3) {
        *byte ^= 0x01;
    }
    tap("token with one bit flipped in the amount", &forged)?;
    tap("token cut short by noise", &first[..120])?;
    println!();

    // The real path: another rider's phone plays its token, the gate's
    // microphone hears it through a noisy, reverberant station, and the modem
    // decodes it.
    let mut rider2 = Wallet::create(&dir.join("wallet-2"))?;
    let credential2 = hub.issue(&rider2.public_key(), request, now)?;
    let credential2_path = dir.join("credential-2");
    crate::fsutil::replace_atomic(&credential2_path, &credential2.encode(), 0o644)?;
    rider2.add_credential(&credential2_path)?;
    let by_sound = rider2
        .pay(PayRequest {
            amount: 120,
            at: unix_u32(now)?,
            reader_tag: 0,
        })?
        .token
        .encode()
        .to_vec();
    let sound = modem::encode(&by_sound, Profile::Fast, modem::INTERNAL_RATE)?;
    let station = Channel {
        noise: NoiseKind::Station,
        snr_db: 5.0,
        room: Some(Room {
            rt60: 0.4,
            drr_db: 12.0,
        }),
        rx_rate: 44_100,
        clock_ppm: 200.0,
        ..Channel::default()
    };
    let heard = sim::transmit(&sound, modem::INTERNAL_RATE, &station, 7);
    let mut decoder = Decoder::new(heard.rate)?;
    let mut payloads = Vec::new();
    for chunk in heard.samples.chunks(heard.rate as usize / 100) {
        payloads.extend(decoder.push(chunk));
    }
    payloads.extend(decoder.finish().into_iter().map(|r| r.payload));
    println!(
        "6. by sound: a second rider's phone plays its token ({:.2} s, fast profile); the gate hears \
         {:.1} s of a station (5 dB SNR, RT60 0.4 s) at 44.1 kHz and decodes {} payload(s)",
        sound.len() as f64 / f64::from(modem::INTERNAL_RATE),
        heard.samples.len() as f64 / f64::from(heard.rate),
        payloads.len()
    );
    for payload in &payloads {
        tap("token heard over the air", payload)?;
    }
    println!();

    let records = gate.db().records(false)?;
    let summary = gate.db().summary()?;
    println!("7. gate-1 queue (what the hub will receive):");
    let mut out = std::io::stdout().lock();
    output::queue_header(&mut out)?;
    for record in &records {
        output::queue_row(&mut out, record)?;
    }
    output::queue_summary(&mut out, &summary, 978)?;
    drop(out);
    let key = gate.public_key();
    let (last, _) = record::verify_chain(
        "gate-1",
        key.verifying_key(),
        (0, record::GENESIS_HASH),
        &records,
    )?;
    println!("   chain verified: records 1..={last} hash-chained and signed by gate-1");
    println!();

    store_and_forward(dir, hub, gate, rider2, request, now)?;
    println!();
    println!("Try it yourself: `sonotap --help`; README.md walks through each command.");
    Ok(ExitCode::SUCCESS)
}

/// Step 8: the network comes back. A cloned copy of rider 2's phone spent
/// the same counter at gate-2 while gate-1 took the original; both gates
/// sync to a hub on 127.0.0.1, the hub flags the clone, and the deny list
/// reaches gate-1 at its next sync.
fn store_and_forward(
    dir: &Path,
    mut hub: Hub,
    mut gate1: Reader,
    mut rider2: Wallet,
    request: IssueRequest,
    now: u64,
) -> Result<()> {
    let options = InitOptions {
        id: "gate-2".into(),
        scope: Scope::Transit,
        currency: 978,
        clock_skew_secs: crate::reader::DEFAULT_CLOCK_SKEW_SECS,
        fare: None,
    };
    let mut gate2 = Reader::init(&dir.join("gate-2"), &options, &hub.issuer_public(), now)?;
    hub.add_reader("gate-1", &gate1.public_key(), now)?;
    hub.add_reader("gate-2", &gate2.public_key(), now)?;
    let mut rider3 = Wallet::create(&dir.join("wallet-3"))?;
    let credential = hub.issue(&rider3.public_key(), request, now)?;
    let credential_path = dir.join("credential-3");
    crate::fsutil::replace_atomic(&credential_path, &credential.encode(), 0o644)?;
    rider3.add_credential(&credential_path)?;

    // The clone: a copy of rider 2's wallet files, taken before it pays again.
    let clone_dir = dir.join("wallet-2-clone");
    std::fs::create_dir_all(&clone_dir)?;
    for entry in std::fs::read_dir(dir.join("wallet-2"))? {
        let entry = entry?;
        std::fs::copy(entry.path(), clone_dir.join(entry.file_name()))?;
    }
    let mut clone = Wallet::open(&clone_dir)?;

    let tap = |reader: &mut Reader, wallet: &mut Wallet, label: &str, amount: u32| -> Result<()> {
        let token = wallet.pay(PayRequest {
            amount,
            at: unix_u32(now)?,
            reader_tag: 0,
        })?;
        let outcome = reader.present(&token.token.encode(), None, now)?;
        let verdict = match &outcome.decision {
            Ok(c) => format!("ACCEPT (record {})", c.seq),
            Err(d) => format!("DECLINE {}", d.reason),
        };
        println!("   {label:<52} {verdict}");
        Ok(())
    };
    println!(
        "8. offline for a while: rider 2's phone was cloned; both copies pay with the same counter"
    );
    tap(&mut gate1, &mut rider2, "rider 2 pays 100 at gate-1", 100)?;
    tap(
        &mut gate2,
        &mut clone,
        "the clone pays 150 at gate-2 (gate-2 cannot know)",
        150,
    )?;
    tap(&mut gate2, &mut rider3, "rider 3 pays 200 at gate-2", 200)?;

    // The hub comes online on loopback.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let options = ServeOptions {
        listen: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        tls: None,
    };
    let (addr, serving) = runtime.block_on(server::bind(hub, options, async {
        let _ = stopped.await;
    }))?;
    let server = runtime.spawn(serving);
    let url = format!("http://{addr}");
    println!("9. the network is back: hub serving on {url}");
    let client = HubClient::new(&url, None, std::time::Duration::from_secs(10))?;
    let sync = |reader: &mut Reader, id: &str| -> Result<()> {
        let report = client::sync_once(reader, &client, &SyncOptions::default(), &mut |_| {})?;
        println!(
            "   {id} synced: {} records acknowledged ({} EUR minor units), {} deny-list entries applied, {} queued",
            report.records, report.charged, report.deny_entries, report.queued
        );
        Ok(())
    };
    sync(&mut gate1, "gate-1")?;
    sync(&mut gate2, "gate-2")?;
    let mut reporting = Hub::open(&dir.join("hub"))?;
    let report = reporting.report()?;
    for r in &report.readers {
        println!(
            "   hub holds {} records from {} ({} charged)",
            r.records, r.reader, r.charged
        );
    }
    for f in &report.flagged {
        println!(
            "   hub flags wallet {}: {} ({})",
            f.wallet, f.rule, f.detail
        );
    }
    println!("10. gate-1 syncs again and learns the deny list");
    sync(&mut gate1, "gate-1")?;
    tap(
        &mut gate1,
        &mut rider2,
        "rider 2's phone pays 50 at gate-1",
        50,
    )?;
    tap(
        &mut gate1,
        &mut rider3,
        "rider 3 (honest) pays 50 at gate-1",
        50,
    )?;
    let _ = stop.send(());
    runtime.block_on(server)??;
    Ok(())
}
