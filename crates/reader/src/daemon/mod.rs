//! `sonotap run`: the reader daemon that ties capture, decoding, the offline
//! policy, the durable record, the actuator and the uplink together.
//!
//! Threads, by concern (the modules are private; [`run`] is the entry):
//! - capture (`sources`): sound into the modem decoder, frames into the QR
//!   decoder; tokens go down an unbounded channel, so a burst queues and
//!   capture never waits on the database or the network;
//! - the acceptor (`acceptor`): owns the [`Reader`] and the gate or vending
//!   machine; commit, then actuate, then feedback, one token at a time;
//! - the uplink: [`crate::sync::client::run_loop`] on its own database connection;
//! - feedback tones (`feedback`) and the rider's display (`display`);
//! - a small tokio runtime for signals, the metrics endpoint ([`metrics`]),
//!   the status file ([`crate::status_file`]) and sd_notify (`notify`).
//!
//! One stop signal (`stop`) fans out to every thread at shutdown. The
//! decisions that need no I/O (drain on shutdown, health changes, tones,
//! decline labels, what a SIGHUP may change) live in `rules`; the
//! configuration is checked once into typed values at load ([`config`]).

mod acceptor;
mod beacon;
pub mod config;
mod display;
mod feedback;
pub mod instance;
pub mod metrics;
mod notify;
mod owed;
mod rules;
mod sources;
mod stop;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use thiserror::Error;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry, reload};

use self::acceptor::{Acceptor, DrivenDevice, Msg, Settings, Tell};
use self::config::{Config, ConfigError};
use self::metrics::Metrics;
use self::notify::Notifier;
use self::rules::{DRAIN_GRACE, DeviceHealth};
use self::stop::Stop;
use crate::actuator::profile::{self, Device, Profile};
use crate::actuator::{Gate, PortError, Vending};
use crate::beacon::ChallengeBook;
use crate::reader::Reader;
use crate::site::{SiteConfig, SiteListener, SiteSender, SiteStats};
use crate::status_file::{self, DaemonStatus, DeviceStatus, SyncStatus};
use crate::sync::client::{HubClient, SyncOptions};

/// The status file is rewritten at least this often.
const STATUS_EVERY: Duration = Duration::from_secs(2);

/// Why the daemon could not start or had to stop.
#[derive(Debug, Error)]
pub enum DaemonError {
    /// The configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The reader's data directory or database.
    #[error("reader {dir}: {source}")]
    Reader {
        /// The directory.
        dir: PathBuf,
        /// What is wrong.
        source: crate::reader::ReaderError,
    },
    /// The actuator's profile.
    #[error("actuator: {0}")]
    Actuator(String),
    /// The metrics address.
    #[error("metrics: cannot listen on {addr}: {source}")]
    Metrics {
        /// The address.
        addr: std::net::SocketAddr,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A thread, the runtime or the signal handlers could not start.
    #[error("cannot start: {0}")]
    Start(String),
    /// The site link could not start.
    #[error("site: {0}")]
    Site(String),
    /// The acceptor thread ended while the daemon was running.
    #[error("the acceptor stopped unexpectedly; exiting so systemd restarts the reader")]
    AcceptorDied,
    /// Another daemon serves this reader, or its lock cannot be taken.
    #[error(transparent)]
    Instance(#[from] instance::InstanceError),
}

/// State shared by the threads: health, metrics, the stop signal, heartbeat.
#[derive(Debug)]
struct Shared {
    /// The metrics.
    metrics: Arc<Metrics>,
    devices: Mutex<Vec<DeviceHealth>>,
    sync: Mutex<Option<SyncStatus>>,
    dirty: AtomicBool,
    /// Fired at shutdown: capture and the uplink stop, the acceptor drains.
    stop: Stop,
    /// Set when a sync round may have changed the issuer keys.
    keys_changed: AtomicBool,
    base: Instant,
    heartbeat_ms: AtomicU64,
    /// The acceptor is inside a device transaction that may block it until
    /// then (ms since `base`): a vend session waits for the buyer.
    busy_until_ms: AtomicU64,
    owed: Mutex<Vec<status_file::OwedSettlement>>,
}

impl Shared {
    fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            metrics,
            devices: Mutex::new(Vec::new()),
            sync: Mutex::new(None),
            dirty: AtomicBool::new(true),
            stop: Stop::new(),
            keys_changed: AtomicBool::new(false),
            base: Instant::now(),
            heartbeat_ms: AtomicU64::new(0),
            busy_until_ms: AtomicU64::new(0),
            owed: Mutex::new(Vec::new()),
        }
    }

    /// The vend settlements owed now (see [`owed::OwedBook`]), for the
    /// status file and the metrics.
    fn set_owed(&self, owed: Vec<status_file::OwedSettlement>) {
        let voids = owed.iter().filter(|o| o.owed == "void").count();
        self.metrics.set_voids_owed(voids as u64);
        if let Ok(mut o) = self.owed.lock()
            && *o != owed
        {
            *o = owed;
            self.dirty.store(true, Ordering::Relaxed);
        }
    }

    /// Registers a configured device (listed in the status file from now on).
    fn configure(&self, name: &'static str, ok: bool, detail: &str) {
        if let Ok(mut d) = self.devices.lock() {
            d.push(DeviceHealth {
                name,
                ok,
                detail: detail.into(),
            });
        }
        self.dirty.store(true, Ordering::Relaxed);
    }

    /// Reports a device's state; a failure counts as a device error.
    fn device(&self, name: &str, ok: bool, detail: &str) {
        let Ok(mut devices) = self.devices.lock() else {
            return;
        };
        let Some(health) = devices.iter_mut().find(|d| d.name == name) else {
            return;
        };
        match rules::report(health, ok, detail) {
            rules::Change::None => {}
            rules::Change::Down => {
                tracing::warn!(device = name, "{detail}");
                self.metrics.device_error(name);
                self.dirty.store(true, Ordering::Relaxed);
            }
            rules::Change::Up => {
                tracing::info!(device = name, "{detail}");
                self.dirty.store(true, Ordering::Relaxed);
            }
            rules::Change::Detail => self.dirty.store(true, Ordering::Relaxed),
        }
    }

    fn set_sync(&self, status: SyncStatus) {
        if let Ok(mut s) = self.sync.lock()
            && s.as_ref() != Some(&status)
        {
            *s = Some(status);
            self.dirty.store(true, Ordering::Relaxed);
        }
    }

    /// The acceptor is alive.
    fn beat(&self) {
        let ms = self.base.elapsed().as_millis() as u64;
        self.heartbeat_ms.store(ms, Ordering::Relaxed);
    }

    /// The acceptor enters a device transaction that may take up to `bound`
    /// (its heartbeat pauses meanwhile; the watchdog allows for it).
    fn busy_for(&self, bound: Duration) {
        self.beat();
        let until = (self.base.elapsed() + bound).as_millis() as u64;
        self.busy_until_ms.store(until, Ordering::Relaxed);
    }

    /// Whether the acceptor is alive: it beat within `period`, or it is
    /// inside a transaction whose bound has not passed.
    fn alive(&self, period: Duration) -> bool {
        let now = self.base.elapsed().as_millis() as u64;
        self.heartbeat_age() < period || now < self.busy_until_ms.load(Ordering::Relaxed)
    }

    fn heartbeat_age(&self) -> Duration {
        let now = self.base.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.heartbeat_ms.load(Ordering::Relaxed)))
    }

    /// The drain deadline, once the stop signal fired.
    fn drain_until(&self) -> Option<Instant> {
        self.stop.fired_at().map(|at| at + DRAIN_GRACE)
    }

    fn status(&self, pid: u32, started_at: u64, config: &Path) -> DaemonStatus {
        DaemonStatus {
            pid,
            started_at,
            updated_at: unix_now(),
            config: config.display().to_string(),
            devices: self
                .devices
                .lock()
                .map(|d| {
                    d.iter()
                        .map(|h| DeviceStatus {
                            name: h.name.into(),
                            ok: h.ok,
                            detail: h.detail.clone(),
                        })
                        .collect()
                })
                .unwrap_or_default(),
            sync: self.sync.lock().ok().and_then(|s| s.clone()),
            owed: self.owed.lock().map(|o| o.clone()).unwrap_or_default(),
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

type FilterHandle = reload::Handle<EnvFilter, Registry>;

/// Logging: stderr with timestamps; under systemd (`$JOURNAL_STREAM` set)
/// straight to journald (structured fields kept), or stderr without
/// timestamps (journald adds its own) if the journal socket is missing.
fn init_logging(level: &str) -> Option<FilterHandle> {
    let filter = EnvFilter::try_new(level).unwrap_or_else(|_| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    let journald = if std::env::var_os("JOURNAL_STREAM").is_some() {
        tracing_journald::layer()
            .ok()
            .map(|l| l.with_syslog_identifier("sonotap".into()))
    } else {
        None
    };
    let result = if journald.is_some() {
        tracing_subscriber::registry()
            .with(filter)
            .with(journald)
            .try_init()
    } else if std::env::var_os("JOURNAL_STREAM").is_some() {
        tracing_subscriber::registry()
            .with(filter)
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .without_time()
                    .with_target(false),
            )
            .try_init()
    } else {
        tracing_subscriber::registry()
            .with(filter)
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_target(false),
            )
            .try_init()
    };
    result.ok().map(|()| handle)
}

/// Loads the actuator for `config`: the profile must load (a bad profile is
/// a config error); the port may be missing (retried, shown in the health).
fn actuator(
    config: &Config,
    shared: &Shared,
) -> Result<(DrivenDevice, Option<profile::DisplayConfig>, Duration), DaemonError> {
    let Some(a) = &config.actuator else {
        return Ok((DrivenDevice::None, None, Duration::ZERO));
    };
    let mut dirs = a.profile_dirs.clone();
    dirs.extend(profile::default_dirs());
    let profile =
        Profile::load(&a.profile, &dirs).map_err(|e| DaemonError::Actuator(e.to_string()))?;
    let port = a.port.as_deref();
    let display = profile.display.clone();
    // The longest one transaction can keep the acceptor (see Shared::busy_for).
    let slack = Duration::from_secs(3);
    let bound = match &profile.device {
        Device::Gate(g) => {
            g.deliver_within + g.pulse + g.ack_timeout.max(g.passage_timeout) + slack
        }
        Device::Mdb(m) => {
            m.ready_timeout + m.session_timeout + m.vend_result_timeout + m.end_timeout + slack
        }
    };
    // A port that is not there yet is retried; the health says so meanwhile.
    let configure = |name, connected: Result<(), PortError>, device: &str| match connected {
        Ok(()) => shared.configure(name, true, device),
        Err(e) => shared.configure(name, false, &format!("{e} (retrying)")),
    };
    let actuator = match profile.device {
        Device::Gate(_) => {
            let mut gate =
                Gate::new(&profile, port).map_err(|e| DaemonError::Actuator(e.to_string()))?;
            configure("gate", gate.connect(), gate.device());
            DrivenDevice::Gate(Box::new(gate))
        }
        Device::Mdb(_) => {
            let mut vending =
                Vending::new(&profile, port).map_err(|e| DaemonError::Actuator(e.to_string()))?;
            configure("vending", vending.connect(), vending.device());
            DrivenDevice::Vending(Box::new(vending))
        }
    };
    Ok((actuator, display, bound))
}

fn spawn_err(e: std::io::Error) -> DaemonError {
    DaemonError::Start(format!("thread: {e}"))
}

/// Runs the daemon until SIGTERM or SIGINT.
pub fn run(config_path: &Path) -> Result<(), DaemonError> {
    let config = Config::load(config_path)?;
    // Absolute, as the status file shows it and SIGHUP re-reads it.
    let absolute = std::fs::canonicalize(config_path).unwrap_or_else(|_| config_path.to_path_buf());
    let config_path = absolute.as_path();
    let log = init_logging(&config.log_level);
    let started_at = unix_now();
    let metrics = Arc::new(Metrics::new(started_at));
    let shared = Arc::new(Shared::new(Arc::clone(&metrics)));
    let mut reader = Reader::open(&config.data).map_err(|source| DaemonError::Reader {
        dir: config.data.clone(),
        source,
    })?;
    // Before a device is opened or an opening settled: one daemon per reader.
    let _instance = instance::InstanceLock::take(&config.data)?;
    if let Some(skew) = config.clock_skew_secs {
        reader.set_clock_skew(skew);
    }
    tracing::info!(reader = reader.id(), config = %config_path.display(), "starting");
    let site_thread = match &config.site {
        Some(site) => Some(start_site(site, &mut reader, &config.data, &shared)?),
        None => None,
    };
    let beacon_thread = match &config.beacon {
        Some(b) => {
            let tag = sonotap_protocol::token::reader_tag(reader.id());
            let book = Arc::new(Mutex::new(ChallengeBook::new(tag, b.timing)));
            reader.attach_beacon(Arc::clone(&book), b.accept_version_1);
            shared.configure("beacon", false, "starting");
            let db = config.data.join(crate::reader::DB_FILE);
            Some(beacon::spawn(b.clone(), book, &db, Arc::clone(&shared)).map_err(spawn_err)?)
        }
        None => None,
    };
    let (actuator, display, busy_bound) = actuator(&config, &shared)?;
    if let Some(audio) = &config.audio {
        shared.configure(
            "audio",
            false,
            &format!("{} source starting", audio.source.as_str()),
        );
    }
    if let Some(camera) = &config.camera {
        shared.configure(
            "camera",
            false,
            &format!("{} starting", camera.path.display()),
        );
    }
    let mut tell = Tell::default();
    if config.feedback.tone {
        shared.configure("feedback", true, "starting");
        let (tx, rx) = mpsc::channel();
        feedback::spawn(config.feedback.clone(), Arc::clone(&shared), rx).map_err(spawn_err)?;
        tell.tone = Some(tx);
    }
    if let Some(display_config) = display {
        shared.configure("display", false, "starting");
        let (tx, rx) = mpsc::channel();
        display::spawn(display_config.clone(), Arc::clone(&shared), rx).map_err(spawn_err)?;
        tell.display = Some((display_config, tx));
    }
    let metrics_listener = config
        .metrics
        .listen
        .map(|addr| {
            std::net::TcpListener::bind(addr)
                .and_then(|l| l.set_nonblocking(true).map(|()| l))
                .map_err(|source| DaemonError::Metrics { addr, source })
        })
        .transpose()?;

    let (tx, rx) = mpsc::channel::<Msg>();
    let settings = Settings {
        fare: config.payment.fare,
    };
    let acceptor = Acceptor::new(
        reader,
        actuator,
        settings,
        Arc::clone(&shared),
        tell,
        busy_bound,
    );
    shared.beat();
    let acceptor = thread::Builder::new()
        .name("sonotap-acceptor".into())
        .spawn(move || acceptor.run(rx))
        .map_err(spawn_err)?;
    if let Some(audio) = &config.audio {
        sources::spawn_audio(audio.clone(), Arc::clone(&shared), tx.clone()).map_err(spawn_err)?;
    }
    if let Some(camera) = &config.camera {
        sources::spawn_camera(camera.clone(), Arc::clone(&shared), tx.clone())
            .map_err(spawn_err)?;
    }
    let sync_thread = match &config.hub {
        Some(hub) => Some(spawn_sync(&config, hub, Arc::clone(&shared))?),
        None => None,
    };

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| DaemonError::Start(format!("tokio runtime: {e}")))?;
    let notifier = Notifier::from_env();
    let status = StatusWriter {
        pid: std::process::id(),
        started_at,
        config_path,
        data: config.data.clone(),
    };
    let outcome = runtime.block_on(
        Supervisor {
            config_path,
            config: config.clone(),
            shared: Arc::clone(&shared),
            acceptor_tx: tx.clone(),
            acceptor: &acceptor,
            notifier: &notifier,
            log,
            status: &status,
        }
        .run(metrics_listener),
    );

    // Shutdown: capture stops, decoded tokens drain for a bounded time, the
    // transaction in flight finishes, the gate is released.
    let _ = notifier.send("STOPPING=1");
    let stopped_at = Instant::now();
    shared.stop.fire(stopped_at);
    let deadline = stopped_at + DRAIN_GRACE;
    drop(tx);
    // The transaction in flight may run past the deadline (a pulse, a vend): give it a little more.
    let hard = deadline + Duration::from_millis(2500);
    while !acceptor.is_finished() && Instant::now() < hard {
        thread::sleep(Duration::from_millis(10));
    }
    if !acceptor.is_finished() {
        tracing::error!(
            "the acceptor did not finish in time; exiting anyway (systemd's ExecStopPost releases the gate)"
        );
    } else {
        let _ = acceptor.join();
    }
    for t in [site_thread, beacon_thread].into_iter().flatten() {
        let until = Instant::now() + Duration::from_secs(1);
        while !t.is_finished() && Instant::now() < until {
            thread::sleep(Duration::from_millis(10));
        }
    }
    if let Some(t) = sync_thread {
        let until = Instant::now() + Duration::from_secs(1);
        while !t.is_finished() && Instant::now() < until {
            thread::sleep(Duration::from_millis(10));
        }
    }
    status.write(&shared);
    tracing::info!("stopped");
    outcome
}

/// Starts the site link: the listener thread learns the peers' accepts
/// (and, first, announces this reader's recent charges again and asks the
/// peers for what it missed while down), the reader announces its own
/// (see [`crate::site`]).
fn start_site(
    site: &SiteConfig,
    reader: &mut Reader,
    data: &Path,
    shared: &Arc<Shared>,
) -> Result<thread::JoinHandle<()>, DaemonError> {
    if let Some(me) = site.peers.iter().find(|p| p.id == reader.id()) {
        return Err(DaemonError::Site(format!(
            "site.peers lists {:?}, this reader itself",
            me.id
        )));
    }
    let stats = Arc::new(SiteStats::default());
    shared.metrics.attach_site(Arc::clone(&stats));
    let sender = SiteSender::new(site, reader.id(), reader.site_key(), stats)
        .map_err(|e| DaemonError::Site(format!("cannot send from {}: {e}", site.listen.ip())))?;
    let listener = SiteListener::bind(
        site,
        reader.id(),
        &data.join(crate::reader::DB_FILE),
        sender.clone(),
        u64::from(reader.clock_skew_secs()),
    )
    .map_err(DaemonError::Site)?;
    let shared_thread = Arc::clone(shared);
    let handle = thread::Builder::new()
        .name("sonotap-site".into())
        .spawn(move || listener.run(shared_thread.stop.flag()))
        .map_err(spawn_err)?;
    reader.attach_site(sender);
    shared.configure(
        "site",
        true,
        &format!(
            "site {} on {}, {} peers",
            site.id,
            site.listen,
            site.peers.len()
        ),
    );
    tracing::info!(site = %site.id, listen = %site.listen, peers = site.peers.len(), "site link up");
    Ok(handle)
}

fn spawn_sync(
    config: &Config,
    hub: &config::HubConfig,
    shared: Arc<Shared>,
) -> Result<thread::JoinHandle<()>, DaemonError> {
    let dir = config.data.clone();
    let hub = hub.clone();
    // Until a client exists (or when it cannot), the status names the preferred hub.
    let status = |hub: &str, ok: bool, detail: String| SyncStatus {
        hub: hub.to_owned(),
        ok,
        detail,
    };
    shared.set_sync(status(hub.urls.first(), false, "no round yet".into()));
    thread::Builder::new()
        .name("sonotap-sync".into())
        .spawn(move || {
            let client = match HubClient::new(&hub.urls, hub.ca.as_deref(), hub.timeout) {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!("sync disabled: {e}");
                    shared.set_sync(status(hub.urls.first(), false, e.to_string()));
                    return;
                }
            };
            let options = SyncOptions::default();
            let stop = &shared.stop;
            while !stop.is_fired() {
                let result = crate::sync::client::run_loop(
                    &dir,
                    &client,
                    &options,
                    hub.interval,
                    stop.flag(),
                    |round| {
                        shared.metrics.sync_failovers(client.failovers());
                        match round {
                            Ok(report) => {
                                shared.metrics.sync_ok(unix_now());
                                shared.metrics.set_queue_depth(report.queued);
                                shared.keys_changed.store(true, Ordering::Relaxed);
                                if let Some(why) = &report.report_error {
                                    tracing::warn!(
                                        "the hub did not take this reader's report: {why}"
                                    );
                                }
                                tracing::debug!(
                                    records = report.records,
                                    queued = report.queued,
                                    hub = report.hub,
                                    "sync round ok"
                                );
                                shared.set_sync(status(&report.hub, true, "last round ok".into()));
                            }
                            Err(e) => {
                                shared.metrics.sync_failed();
                                tracing::warn!("sync: {e} (records stay queued)");
                                shared.set_sync(status(client.in_use(), false, e.to_string()));
                            }
                        }
                    },
                );
                if let Err(e) = result {
                    tracing::error!("sync stopped: {e} (retrying in 5 s)");
                    shared.set_sync(status(client.in_use(), false, e.to_string()));
                    stop.nap(Duration::from_secs(5));
                }
            }
        })
        .map_err(spawn_err)
}

/// Writes the status file for `sonotap status`: this daemon, its config,
/// and what [`Shared`] says now.
struct StatusWriter<'a> {
    pid: u32,
    started_at: u64,
    config_path: &'a Path,
    data: PathBuf,
}

impl StatusWriter<'_> {
    fn write(&self, shared: &Shared) {
        shared.dirty.store(false, Ordering::Relaxed);
        let status = shared.status(self.pid, self.started_at, self.config_path);
        if let Err(e) = status.write(&self.data) {
            tracing::warn!(
                "cannot write the status file in {}: {e}",
                self.data.display()
            );
        }
    }
}

/// The runtime's side of the daemon: metrics, status file, sd_notify,
/// signals.
struct Supervisor<'a> {
    /// Re-read on SIGHUP.
    config_path: &'a Path,
    /// The config running now (SIGHUP compares the new one with it).
    config: Config,
    shared: Arc<Shared>,
    /// SIGHUP's new settings go to the acceptor.
    acceptor_tx: mpsc::Sender<Msg>,
    /// Watched: if it ends, the daemon exits for systemd to restart it.
    acceptor: &'a thread::JoinHandle<()>,
    notifier: &'a Notifier,
    /// Reloads the log level on SIGHUP.
    log: Option<FilterHandle>,
    status: &'a StatusWriter<'a>,
}

/// Serves `/metrics` on `listener` from the runtime.
fn serve_metrics(
    listener: std::net::TcpListener,
    metrics: Arc<Metrics>,
) -> Result<(), DaemonError> {
    let listener = tokio::net::TcpListener::from_std(listener)
        .map_err(|e| DaemonError::Start(format!("metrics listener: {e}")))?;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let metrics = Arc::clone(&metrics);
            async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    metrics.render(unix_now()),
                )
            }
        }),
    );
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!("metrics endpoint stopped: {e}");
        }
    });
    Ok(())
}

impl Supervisor<'_> {
    /// Runs until SIGTERM or SIGINT arrives (Ok) or the acceptor died (Err).
    async fn run(mut self, metrics: Option<std::net::TcpListener>) -> Result<(), DaemonError> {
        use tokio::signal::unix::{SignalKind, signal};
        let sig =
            |kind| signal(kind).map_err(|e| DaemonError::Start(format!("signal handler: {e}")));
        let mut term = sig(SignalKind::terminate())?;
        let mut int = sig(SignalKind::interrupt())?;
        let mut hup = sig(SignalKind::hangup())?;
        if let Some(listener) = metrics {
            serve_metrics(listener, Arc::clone(&self.shared.metrics))?;
        }
        self.status.write(&self.shared);
        let _ = self.notifier.send("READY=1");
        tracing::info!("ready");
        let watchdog = self.notifier.watchdog();
        let mut last_status = Instant::now();
        let mut last_ping = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            tokio::select! {
                _ = term.recv() => { tracing::info!("SIGTERM: stopping"); return Ok(()); }
                _ = int.recv() => { tracing::info!("SIGINT: stopping"); return Ok(()); }
                _ = hup.recv() => self.reload(),
                _ = tick.tick() => {
                    if self.acceptor.is_finished() {
                        return Err(DaemonError::AcceptorDied);
                    }
                    if self.shared.dirty.load(Ordering::Relaxed) || last_status.elapsed() >= STATUS_EVERY {
                        self.status.write(&self.shared);
                        last_status = Instant::now();
                    }
                    if let Some(period) = watchdog
                        && last_ping.elapsed() >= period / 2
                    {
                        // Only while the acceptor is alive: a stuck acceptor lets systemd restart us.
                        if self.shared.alive(period) {
                            let _ = self.notifier.send("WATCHDOG=1");
                            last_ping = Instant::now();
                        } else {
                            tracing::error!("the acceptor has not beaten for {:?}; withholding the watchdog ping", self.shared.heartbeat_age());
                        }
                    }
                }
            }
        }
    }

    /// SIGHUP: re-reads the config; applies the log level and the fare at
    /// once, and says which other changes wait for a restart. An invalid
    /// config is refused and the running one kept.
    fn reload(&mut self) {
        let new = match Config::load(self.config_path) {
            Ok(new) => new,
            Err(e) => {
                tracing::error!("SIGHUP: keeping the running configuration: {e}");
                return;
            }
        };
        if let Some(handle) = &self.log
            && let Ok(filter) = EnvFilter::try_new(&new.log_level)
            && let Err(e) = handle.reload(filter)
        {
            tracing::warn!("log level: {e}");
        }
        let waiting = rules::restart_needed(&self.config, &new);
        if !waiting.is_empty() {
            tracing::warn!(
                "SIGHUP: devices, hub, metrics, feedback and clock-skew changes take effect at the next restart (changed: {})",
                waiting.join(", ")
            );
        }
        let _ = self.acceptor_tx.send(Msg::Reload(Settings {
            fare: new.payment.fare,
        }));
        tracing::info!("SIGHUP: configuration reloaded");
        self.config = new;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watchdog_allows_a_bounded_transaction_but_not_a_stuck_acceptor() {
        let shared = Shared::new(Arc::new(Metrics::new(0)));
        let period = Duration::from_millis(200);
        shared.beat();
        assert!(shared.alive(period));
        thread::sleep(Duration::from_millis(250));
        assert!(!shared.alive(period), "no beat for longer than the period");
        shared.busy_for(Duration::from_secs(10));
        thread::sleep(Duration::from_millis(250));
        assert!(shared.alive(period), "inside a vend session's bound");
    }

    #[test]
    fn device_reports_count_errors_and_mark_the_status_dirty() {
        let shared = Shared::new(Arc::new(Metrics::new(0)));
        shared.configure("gate", true, "ch340-relay@/dev/ttyUSB0");
        shared.dirty.store(false, Ordering::Relaxed);
        shared.device("gate", false, "gone (retrying)");
        assert!(shared.dirty.load(Ordering::Relaxed));
        shared.device("camera", false, "not configured: ignored");
        let status = shared.status(1, 2, Path::new("/etc/sonotap/config.toml"));
        assert_eq!(status.devices.len(), 1);
        assert!(!status.devices[0].ok);
        assert!(
            shared
                .metrics
                .render(0)
                .contains("sonotap_device_errors_total{device=\"gate\"} 1")
        );
    }
}
