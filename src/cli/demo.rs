//! `sonotap demo`: the main job on embedded defaults, narrated.
//!
//! On real files in a scratch directory: an operator issues credentials and
//! provisions two gates; a clone of one rider's phone pays offline at
//! gate-2, which syncs to a hub on 127.0.0.1. Then gate-1 runs the real
//! daemon (`sonotap run`, a child process) fed by sound files (tokens heard
//! through a simulated station, and station noise from `signals/`) and a
//! folder of QR frames (one from `signals/`), with the demo playing its
//! relay board on a pseudo-terminal. The demo prints what happens as it
//! happens: accepts and the relay's open commands, declines with their
//! reasons, the syncs, and the cloned wallet declined once the deny list
//! reached gate-1; then it stops the daemon with SIGTERM and shows the hub,
//! and a fifth rider's phone enrols with a one-time code and renews its
//! credential online against the account the operator opened for it.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serialport::{SerialPort, TTYPort};

use super::{clock, unix_u32};
use sonotap_hub::server::{self, ServeOptions};
use sonotap_hub::{Hub, IssueRequest};
use sonotap_modem::sim::{self, Channel, NoiseKind, Room};
use sonotap_modem::{self as modem, Profile};
use sonotap_protocol::token::Scope;
use sonotap_reader::reader::{InitOptions, Outcome, Reader};
use sonotap_reader::store::DeclineEntry;
use sonotap_reader::store::ReaderDb;
use sonotap_reader::sync::client::{self, HubClient, SyncOptions};
use sonotap_reader::sync::failover::HubUrls;
use sonotap_wallet::{PayRequest, Wallet};

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
    // Absolute: the daemon's config resolves relative paths against its
    // own directory.
    let dir = &std::fs::canonicalize(&workspace.path)
        .with_context(|| format!("cannot resolve {}", workspace.path.display()))?;
    let started = Instant::now();
    let now = clock(None)?;

    println!("sonotap demo: the reader daemon (`sonotap run`) on embedded defaults");
    println!("files in {}", dir.display());
    println!();

    let mut hub = Hub::init(&dir.join("hub"), 1, now)?;
    println!(
        "1. operator: hub initialised, issuer key 1 = {}",
        hex::encode(hub.issuer_public().to_bytes())
    );
    let request = IssueRequest {
        scope: Scope::Transit,
        currency: 978,
        offline_limit: 500,
        per_payment_cap: 300,
        valid_from: unix_u32(now)?,
        valid_hours: 24,
    };
    let mut riders = Vec::new();
    for n in 1..=4 {
        let mut wallet = Wallet::create(&dir.join(format!("wallet-{n}")))?;
        let credential = hub.issue(&wallet.public_key(), request, now)?;
        let path = dir.join(format!("credential-{n}"));
        sonotap_disk::fsutil::replace_atomic(&path, &credential.encode(), 0o644)?;
        wallet.add_credential(&path)?;
        riders.push(wallet);
    }
    println!(
        "2. operator: four riders' phones get credentials (transit, EUR, offline limit 500, \
         at most 300 a payment, 24 h)"
    );
    let mut gates = Vec::new();
    for id in ["gate-1", "gate-2"] {
        let options = InitOptions {
            id: id.into(),
            scope: Scope::Transit,
            currency: 978,
            clock_skew_secs: sonotap_reader::reader::DEFAULT_CLOCK_SKEW_SECS,
            fare: Some(FARE),
        };
        let gate = Reader::init(&dir.join(id), &options, &hub.issuer_public(), now)?;
        hub.add_reader(id, &gate.public_key(), now)?;
        gates.push(gate);
    }
    println!(
        "3. operator: readers gate-1 and gate-2 provisioned (fare {FARE}), registered at the hub"
    );

    // Rider 2's phone is cloned: the copy pays at gate-2 with the same
    // counter that the phone will use at gate-1.
    let clone_dir = dir.join("wallet-2-clone");
    std::fs::create_dir_all(&clone_dir)?;
    for entry in std::fs::read_dir(dir.join("wallet-2"))? {
        let entry = entry?;
        std::fs::copy(entry.path(), clone_dir.join(entry.file_name()))?;
    }
    let mut clone = Wallet::open(&clone_dir)?;
    let at = unix_u32(now)?;
    let request = |amount: u32| PayRequest {
        amount,
        at,
        reader_tag: 0,
        gate: None,
    };
    let pay = |wallet: &mut Wallet, amount: u32| -> Result<Vec<u8>> {
        Ok(wallet.pay(request(amount))?.token.encode().to_vec())
    };
    // A token every reader must decline: an honest wallet refuses to sign it.
    let pay_forced = |wallet: &mut Wallet, amount: u32| -> Result<Vec<u8>> {
        Ok(wallet.pay_forced(request(amount))?.token.encode().to_vec())
    };
    // Same counter, other contents (it authorises more than the fare).
    let cloned = pay(&mut clone, 300)?;
    let mut gate2 = gates.pop().context("gate-2")?;
    let outcome = gate2.present(&cloned, None, now)?;
    println!(
        "4. offline, a clone of rider 2's phone pays at gate-2 with counter 1: {}",
        verdict(&outcome)
    );

    // What the riders will play and show at gate-1, made now (tokens carry
    // the time) as files the daemon reads: WAVs through a simulated station,
    // QR frames in a folder.
    let inputs = dir.join("inputs");
    let frames = inputs.join("frames");
    std::fs::create_dir_all(&frames)?;
    let (r1, rest) = riders.split_first_mut().context("rider 1")?;
    let (r2, rest) = rest.split_first_mut().context("rider 2")?;
    let (r3, rest) = rest.split_first_mut().context("rider 3")?;
    let r4 = rest.first_mut().context("rider 4")?;
    let r1_token = pay(r1, FARE)?;
    let r2_first = pay(r2, FARE)?;
    let r2_later = pay(r2, FARE)?;
    let r4_token = pay(r4, FARE)?;
    let mut audio = Vec::new();
    for (i, (name, token)) in [("rider-1", &r1_token), ("rider-2", &r2_first)]
        .into_iter()
        .enumerate()
    {
        audio.push(station_wav(&inputs, name, token, i as u64)?);
    }
    let noise = inputs.join("station-noise.wav");
    std::fs::write(&noise, STATION_NOISE)?;
    audio.push(noise);
    audio.push(station_wav(&inputs, "rider-2-again", &r2_later, 3)?);
    audio.push(station_wav(&inputs, "rider-4", &r4_token, 4)?);
    let r3_first = pay(r3, 300)?;
    let r3_second = pay_forced(r3, 300)?; // 600 > 500
    let mut forged = pay_forced(r3, 50)?;
    if let Some(byte) = forged.get_mut(sonotap_protocol::token::CREDENTIAL_LEN + 3) {
        *byte ^= 0x01;
    }
    for (name, token) in [
        ("1-rider-1-screen", &r1_token),
        ("2-rider-3", &r3_first),
        ("3-rider-3-again", &r3_second),
        ("4-forged", &forged),
    ] {
        qr_frame(&frames.join(format!("{name}.png")), token)?;
    }
    std::fs::write(frames.join("5-other-operator.jpg"), OTHER_OPERATOR_QR)?;
    let labels: Vec<(String, &str)> = [
        (r1.id(), "rider 1"),
        (r2.id(), "rider 2"),
        (r3.id(), "rider 3"),
        (r4.id(), "rider 4"),
    ]
    .into_iter()
    .map(|(id, name)| (id.to_string(), name))
    .collect();
    println!(
        "5. riders' phones: {} sound files (fast profile through a station at 5 dB SNR, RT60 0.4 s, \
         44.1 kHz microphone; then {:.0} s of station noise from signals/) and 5 QR frames \
         (rider 1 also shows the token it plays, a forged token, and a QR code from signals/ that is \
         not a payment token)",
        audio.len() - 1,
        STATION_NOISE.len() as f64 / 96_000.0
    );

    // The hub comes up on loopback; gate-2 syncs its clone payment first.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let options = ServeOptions {
        listen: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        tls: None,
        limits: Default::default(),
        writers: 1,
        metrics: None,
    };
    let (bound, serving) = runtime.block_on(server::bind(hub, options, async {
        let _ = stopped.await;
    }))?;
    let addr = bound.api;
    let server = runtime.spawn(serving);
    let url = format!("http://{addr}");
    let client = HubClient::new(&HubUrls::check(&[&url])?, None, Duration::from_secs(10))?;
    let report = client::sync_once(&mut gate2, &client, &SyncOptions::default(), &mut |_| {})?;
    println!(
        "6. hub serving on {url}; gate-2 synced {} record(s)",
        report.records
    );
    drop(gate2);
    let gate1_dir = dir.join("gate-1");
    drop(gates);

    // The gate: a pseudo-terminal pair; the demo plays the relay board.
    let (mut relay, gate_port) = TTYPort::pair().context("cannot make a pseudo-terminal pair")?;
    let port_path = gate_port
        .name()
        .context("the pseudo-terminal has no name")?;
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        daemon_config(&gate1_dir, &audio, &frames, &port_path, &url),
    )?;
    let log_path = dir.join("daemon.log");
    let log = std::fs::File::create(&log_path)?;
    let exe = std::env::current_exe().context("cannot find the sonotap binary")?;
    let mut daemon = std::process::Command::new(exe)
        .args(["run", "--config"])
        .arg(&config)
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .context("cannot start `sonotap run`")?;
    println!(
        "7. gate-1 runs the daemon: `sonotap run --config {}` (log: {}), relay board on {port_path}",
        config.display(),
        log_path.display()
    );
    println!();

    relay.set_timeout(Duration::from_millis(100))?;
    let watched = watch(&gate1_dir, &mut relay, &labels, &mut daemon, started);
    // Stop the daemon the way systemd does, whatever happened.
    terminate(&mut daemon);
    let status = daemon.wait()?;
    let watched = watched?;
    println!();
    println!("8. SIGTERM: the daemon finished, {status}");

    let mut reporting = Hub::open(&dir.join("hub"))?;
    let report = reporting.report()?;
    for r in &report.readers {
        println!(
            "   hub holds {} record(s) from {} ({} charged)",
            r.records, r.reader, r.charged
        );
    }
    for f in &report.flagged {
        let who = labels
            .iter()
            .find(|(id, _)| *id == f.wallet)
            .map_or("a wallet", |(_, name)| *name);
        println!("   hub flagged {who} ({}): {}", f.wallet, f.rule);
    }
    let signed_up = sign_up_online(&mut reporting, dir, &url, now);
    let _ = stop.send(());
    runtime.block_on(server)??;
    let signed_up = signed_up?;

    let expected = [
        ("accepts", watched.accepts, ACCEPTS),
        ("gate openings", watched.openings, ACCEPTS),
        ("declines", watched.declines.len(), DECLINES),
    ];
    let mut ok = status.success() && watched.denied_after_sync && signed_up;
    for (what, got, want) in expected {
        if got != want {
            println!("   expected {want} {what}, saw {got}");
            ok = false;
        }
    }
    println!();
    if !ok {
        println!(
            "the demo did not go as expected; see {}",
            log_path.display()
        );
        return Ok(ExitCode::FAILURE);
    }
    println!(
        "Done in {:.0} s. Try it yourself: `sonotap --help`; README.md walks through each command.",
        started.elapsed().as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}

/// Step 9: a fifth rider signs up online. The operator opens an account,
/// pays 20.00 into it and makes a one-time code; the phone enrols with it
/// and renews over HTTP from the hub still serving on `url`, then reads
/// its statement. Whether it went as expected.
fn sign_up_online(hub: &mut Hub, dir: &Path, url: &str, now: u64) -> Result<bool> {
    use sonotap_hub::accounts::{Account, AccountPolicy};
    use sonotap_protocol::wire::{AccountState, EntryKind};
    let account = Account {
        id: "rider-5".into(),
        label: "rider5@example.org".into(),
        currency: 978,
        credit_line: 0,
        policy: AccountPolicy {
            offline_limit: 1_000,
            per_payment_cap: 300,
            valid_hours: 24,
            scope: Scope::Transit,
        },
        state: AccountState::Open,
        state_reason: String::new(),
        created_at: now,
    };
    hub.open_account(&account)?;
    hub.credit_account(&account.id, EntryKind::TopUp, 2_000, "demo-card", "", now)?;
    let (code, _) = hub.enrol_code(&account.id, 3600, now)?;
    println!(
        "9. operator: account rider-5 opened, 2000 paid in, one-time code {code}; \
         the phone enrols over HTTP"
    );
    let mut wallet = Wallet::create(&dir.join("wallet-5"))?;
    let client = sonotap_wallet::HubClient::new(url, &sonotap_wallet::HubOptions::default())?;
    client.enrol(&mut wallet, &code)?;
    let installed = client.renew(&mut wallet)?;
    let statement = client.statement(&wallet, 0)?;
    let limit = installed.credential.terms.offline_limit;
    println!(
        "   rider 5's phone renewed its credential online: offline limit {limit}; statement: \
         balance {}, exposure {} (the account covers what the phone may spend offline)",
        statement.balance, statement.exposure
    );
    Ok(limit == 1_000 && statement.balance == 2_000 && statement.exposure == 1_000)
}

/// The fare at the demo's gates.
const FARE: u32 = 250;
/// 10 s of station noise with no payment in it (signals/modem).
const STATION_NOISE: &[u8] = include_bytes!("../../signals/modem/no-payment-station-noise.wav");
/// A phone screen photographed with a token of another operator (signals/qr).
const OTHER_OPERATOR_QR: &[u8] = include_bytes!("../../signals/qr/clean-00.jpg");
/// What gate-1 decides in the demo: riders 1, 3, 2 and 4 pass; `replayed`,
/// `over_offline_limit`, `bad_signature`, `malformed`, `wallet_denied`.
const ACCEPTS: usize = 4;
const DECLINES: usize = 5;
/// The demo gives up waiting for the daemon after this long.
const DEMO_LIMIT: Duration = Duration::from_secs(90);

fn verdict(outcome: &Outcome) -> String {
    match &outcome.decision {
        Ok(c) => format!("ACCEPT (record {})", c.seq),
        Err(d) => format!("DECLINE {}", d.reason),
    }
}

/// A token as the gate's microphone hears it in a station, as a WAV file.
fn station_wav(dir: &Path, name: &str, token: &[u8], seed: u64) -> Result<PathBuf> {
    let sound = modem::encode(token, Profile::Fast, modem::INTERNAL_RATE)?;
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
    let heard = sim::transmit(&sound, modem::INTERNAL_RATE, &station, seed);
    let path = dir.join(format!("{name}.wav"));
    sonotap_audio::wav::write_mono_16(&path, &heard.samples, heard.rate)?;
    Ok(path)
}

/// A token's QR code on a grey, screen-like background, as a PNG frame.
fn qr_frame(path: &Path, token: &[u8]) -> Result<()> {
    let code = sonotap_qr::encode::render_token(token, 6, 4)?;
    let (w, h) = (640usize, 480usize);
    let mut frame = vec![70u8; w * h];
    let (x0, y0) = ((w - code.width()) / 2, (h - code.height()) / 2);
    for y in 0..code.height().min(h) {
        for x in 0..code.width().min(w) {
            if let Some(v) = code.get(x, y) {
                frame[(y0 + y) * w + x0 + x] = v;
            }
        }
    }
    let image = image::GrayImage::from_raw(w as u32, h as u32, frame)
        .context("frame size does not match its pixels")?;
    image
        .save(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// The daemon's configuration for the demo (see hw/config.example.toml).
fn daemon_config(data: &Path, audio: &[PathBuf], frames: &Path, port: &str, hub: &str) -> String {
    let files: Vec<String> = audio
        .iter()
        .map(|p| format!("{:?}", p.display().to_string()))
        .collect();
    format!(
        "data = {data:?}\nlog_level = \"info\"\n\n\
         [audio]\nsource = \"wav\"\nfiles = [{files}]\nrealtime = true\ngap_ms = 1500\n\n\
         [camera]\nsource = \"folder\"\npath = {frames:?}\ninterval_ms = 2500\n\n\
         [actuator]\nprofile = \"ch340-relay\"\nport = {port:?}\n\n\
         [hub]\nurl = {hub:?}\ninterval_secs = 2\ntimeout_secs = 5\n\n\
         [metrics]\nlisten = \"\"\n",
        data = data.display().to_string(),
        files = files.join(", "),
        frames = frames.display().to_string(),
    )
}

/// What the demo saw while the daemon ran.
#[derive(Default)]
struct Watched {
    accepts: usize,
    openings: usize,
    declines: Vec<DeclineEntry>,
    /// Whether a tap was declined `wallet_denied` after a sync.
    denied_after_sync: bool,
}

/// Prints the daemon's decisions, the relay's commands and the syncs as they
/// happen, until every input was decided and the queue is synced.
fn watch(
    data: &Path,
    relay: &mut TTYPort,
    labels: &[(String, &str)],
    daemon: &mut std::process::Child,
    started: Instant,
) -> Result<Watched> {
    let name_of = |wallet: &str| {
        labels
            .iter()
            .find(|(id, _)| id == wallet)
            .map_or("unknown wallet", |(_, name)| *name)
    };
    let stamp = || format!("   t+{:>4.1} s", started.elapsed().as_secs_f64());
    let mut seen = Watched::default();
    let mut printed_seq = 0;
    let mut last_sync = None;
    let mut bytes = Vec::new();
    let mut pulse = None;
    let mut shown_sync = (0, 0);
    let deadline = Instant::now() + DEMO_LIMIT;
    // One read-only connection: each query sees the daemon's latest commit.
    let db = ReaderDb::open_read_only(&data.join("reader.db"))?;
    loop {
        if let Some(status) = daemon.try_wait()? {
            println!("{} the daemon exited early: {status}", stamp());
            return Ok(seen);
        }
        let mut buf = [0u8; 64];
        match relay.read(&mut buf) {
            Ok(n) => bytes.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(e) => return Err(e).context("reading the relay side"),
        }
        // Commands in the order they came; a close is shown only as the
        // end of a pulse (the daemon also releases the relay when it opens
        // the port).
        while let Some((at, open)) = first_command(&bytes) {
            bytes.drain(..at + RELAY_OPEN.len());
            if open {
                seen.openings += 1;
                pulse = Some(Instant::now());
                println!("{} relay board: open", stamp());
            } else if let Some(since) = pulse.take() {
                println!(
                    "{} relay board: close after a {} ms pulse",
                    stamp(),
                    since.elapsed().as_millis()
                );
            }
        }
        let records = db.records(false)?;
        let after = printed_seq;
        for record in records.iter().filter(|r| r.seq > after) {
            printed_seq = record.seq;
            seen.accepts += 1;
            let wallet = record.wallet.to_string();
            println!(
                "{} ACCEPT  {:<8} {} cents, record {} committed before the gate opens",
                stamp(),
                name_of(&wallet),
                record.amount,
                record.seq
            );
        }
        let declines = db.recent_declines(100)?;
        for d in declines
            .iter()
            .take(declines.len().saturating_sub(seen.declines.len()))
            .rev()
        {
            let who = d.wallet.as_deref().map_or("no wallet", |w| name_of(w));
            println!("{} DECLINE {who:<8} {}: {}", stamp(), d.reason, d.detail);
            if d.reason == "wallet_denied" && last_sync.is_some() {
                seen.denied_after_sync = true;
            }
            seen.declines.insert(0, d.clone());
        }
        let state = db.sync_state()?;
        if state.last_sync_at.is_some() && state.last_sync_at != last_sync {
            last_sync = state.last_sync_at;
            let synced = records.iter().filter(|r| r.synced_at.is_some()).count();
            if (synced, state.deny_version) != shown_sync {
                shown_sync = (synced, state.deny_version);
                println!(
                    "{} sync with the hub: {synced} record(s) acknowledged in all, deny list version {}",
                    stamp(),
                    state.deny_version
                );
            }
        }
        let decided = seen.accepts + seen.declines.len();
        let queued = records.iter().any(|r| r.synced_at.is_none());
        if decided >= ACCEPTS + DECLINES && !queued && seen.openings >= seen.accepts {
            return Ok(seen);
        }
        if Instant::now() > deadline {
            println!("{} giving up after {} s", stamp(), DEMO_LIMIT.as_secs());
            return Ok(seen);
        }
    }
}

/// Where the first relay command in `bytes` ends, and whether it opens.
fn first_command(bytes: &[u8]) -> Option<(usize, bool)> {
    let find = |c: &[u8]| bytes.windows(c.len()).position(|w| w == c);
    match (find(RELAY_OPEN), find(RELAY_CLOSE)) {
        (Some(o), Some(c)) if c < o => Some((c, false)),
        (Some(o), _) => Some((o, true)),
        (None, Some(c)) => Some((c, false)),
        (None, None) => None,
    }
}

/// The ch340-relay profile's commands (hw/profiles/ch340-relay.toml).
const RELAY_OPEN: &[u8] = &[0xA0, 0x01, 0x01, 0xA2];
const RELAY_CLOSE: &[u8] = &[0xA0, 0x01, 0x00, 0xA1];

/// SIGTERM, as systemd stops the service; SIGKILL if it cannot be sent.
fn terminate(child: &mut std::process::Child) {
    let sent = libc::pid_t::try_from(child.id())
        // SAFETY: kill(2) takes plain integers; the pid is our child's,
        // not yet reaped (we still hold its `Child`), so it names no other
        // process.
        .is_ok_and(|pid| unsafe { libc::kill(pid, libc::SIGTERM) } == 0);
    if !sent {
        let _ = child.kill();
    }
}
