//! `sonotap run --config FILE`: the daemon's TOML configuration.
//!
//! Every table refuses unknown fields by name (a typo in a config that runs
//! for months must fail at start, not be ignored). Relative paths are
//! resolved against the directory of the config file, so a config and its
//! files can move together. [`Config::load`] parses the file as written
//! (private `*Section` types, the TOML's own names and units) and checks it
//! once into a [`Config`] of typed values (a [`PixelFormat`], a
//! [`SocketAddr`], [`Duration`]s): nothing downstream parses a string again
//! or falls back to a default. Every error names the file and the field.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use sonotap_qr::source::PixelFormat;
use thiserror::Error;

use crate::beacon::ChallengeTiming;
use crate::reader::ClockSkew;
use crate::site::{SiteConfig, SitePeer};
use crate::sync::failover::HubUrls;

/// Why a configuration was refused.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file could not be read (missing, not a regular file, too large).
    #[error("config {cause}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What is wrong (starts with the path).
        cause: sonotap_disk::fsutil::ReadError,
    },
    /// Not valid TOML, or a field of the wrong type, or an unknown field.
    #[error("config {path}: {detail}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong (toml names the field and the line).
        detail: String,
    },
    /// A field has a value the daemon cannot use.
    #[error("config {path}: field `{field}`: {detail}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The field, dotted (`camera.width`).
        field: String,
        /// What is wrong.
        detail: String,
    },
}

/// A field the checks refused: its dotted name and what is wrong
/// ([`ConfigError::Invalid`] once the file is known).
#[derive(Debug)]
struct Invalid {
    field: String,
    detail: String,
}

fn invalid<T>(field: impl Into<String>, detail: impl Into<String>) -> Result<T, Invalid> {
    Err(Invalid {
        field: field.into(),
        detail: detail.into(),
    })
}

/// The whole configuration, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The reader's data directory (`sonotap reader init --data`).
    pub data: PathBuf,
    /// `tracing` filter: `error`, `warn`, `info`, `debug`, `trace`, or a
    /// directive list (`sonotap=debug,info`); checked to parse.
    pub log_level: String,
    /// Clock-skew window, seconds (1 to one day, [`ClockSkew`]); overrides
    /// the reader's `reader.toml`.
    pub clock_skew_secs: Option<ClockSkew>,
    /// Where sound comes from; none when absent.
    pub audio: Option<AudioConfig>,
    /// Where camera frames come from; none when absent.
    pub camera: Option<CameraConfig>,
    /// The gate or vending machine; none when absent (decide and record only).
    pub actuator: Option<ActuatorConfig>,
    /// What a passage costs.
    pub payment: PaymentConfig,
    /// The operator hub; the reader works offline without it.
    pub hub: Option<HubConfig>,
    /// The Prometheus endpoint.
    pub metrics: MetricsConfig,
    /// Accept / decline tones for the rider.
    pub feedback: FeedbackConfig,
    /// The site's other readers, told of every accept; none when absent.
    pub site: Option<SiteConfig>,
    /// The gate's beacon (who it is and a short-lived challenge); none
    /// when absent.
    pub beacon: Option<BeaconConfig>,
}

/// The file as written; [`ConfigFile::check`] makes it a [`Config`].
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    data: PathBuf,
    #[serde(default = "default_log_level")]
    log_level: String,
    #[serde(default)]
    clock_skew_secs: Option<ClockSkew>,
    #[serde(default)]
    audio: Option<AudioSection>,
    #[serde(default)]
    camera: Option<CameraSection>,
    #[serde(default)]
    actuator: Option<ActuatorConfig>,
    #[serde(default)]
    payment: PaymentConfig,
    #[serde(default)]
    hub: Option<HubSection>,
    #[serde(default)]
    metrics: MetricsSection,
    #[serde(default)]
    feedback: FeedbackConfig,
    #[serde(default)]
    site: Option<SiteSection>,
    #[serde(default)]
    beacon: Option<BeaconSection>,
}

fn default_log_level() -> String {
    "info".into()
}

/// Audio input, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct AudioConfig {
    /// `device` (cpal / ALSA capture), `wav` (files played in order, for
    /// demos and tests) or `raw` (S16_LE mono samples from a file or FIFO).
    pub source: AudioSource,
    /// `device`: a cpal id or ALSA PCM name (`default`, `hw:1,0`); default input when absent.
    pub device: Option<String>,
    /// `wav`: the files, played one after the other.
    pub files: Vec<PathBuf>,
    /// `raw`: the file or FIFO (`-` for standard input).
    pub path: Option<PathBuf>,
    /// `raw`: sample rate of the stream, Hz.
    pub rate: Option<u32>,
    /// `wav`: play at the pace of real time (true) or as fast as the decoder reads (false).
    pub realtime: bool,
    /// `wav`: silence between two files (`gap_ms`).
    pub gap: Duration,
}

/// `[audio]` as written (see [`AudioConfig`]).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AudioSection {
    source: AudioSource,
    #[serde(default)]
    device: Option<String>,
    #[serde(default)]
    files: Vec<PathBuf>,
    #[serde(default)]
    path: Option<PathBuf>,
    #[serde(default)]
    rate: Option<u32>,
    #[serde(default = "yes")]
    realtime: bool,
    #[serde(default = "default_gap_ms")]
    gap_ms: u64,
}

fn yes() -> bool {
    true
}
fn default_gap_ms() -> u64 {
    1000
}

/// Where sound comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AudioSource {
    /// A capture device through cpal.
    Device,
    /// WAV files.
    Wav,
    /// Raw S16_LE mono samples.
    Raw,
}

impl AudioSection {
    fn check(self) -> Result<AudioConfig, Invalid> {
        let source = self.source;
        let wrong = |field: &str, set: bool| -> Result<(), Invalid> {
            if set {
                invalid(
                    format!("audio.{field}"),
                    format!("does not apply to source = \"{}\"", source.as_str()),
                )
            } else {
                Ok(())
            }
        };
        match source {
            AudioSource::Device => {
                wrong("files", !self.files.is_empty())?;
                wrong("path", self.path.is_some())?;
                wrong("rate", self.rate.is_some())?;
            }
            AudioSource::Wav => {
                if self.files.is_empty() {
                    return invalid("audio.files", "source = \"wav\" needs at least one file");
                }
                wrong("device", self.device.is_some())?;
                wrong("path", self.path.is_some())?;
                wrong("rate", self.rate.is_some())?;
            }
            AudioSource::Raw => {
                if self.path.is_none() {
                    return invalid("audio.path", "source = \"raw\" needs a path");
                }
                match self.rate {
                    Some(8_000..=384_000) => {}
                    Some(r) => {
                        return invalid("audio.rate", format!("{r} Hz is outside 8000..=384000"));
                    }
                    None => return invalid("audio.rate", "source = \"raw\" needs a rate"),
                }
                wrong("device", self.device.is_some())?;
                wrong("files", !self.files.is_empty())?;
            }
        }
        if self.gap_ms > 600_000 {
            return invalid("audio.gap_ms", "at most 600000");
        }
        Ok(AudioConfig {
            source,
            device: self.device,
            files: self.files,
            path: self.path,
            rate: self.rate,
            realtime: self.realtime,
            gap: Duration::from_millis(self.gap_ms),
        })
    }
}

/// Camera input, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct CameraConfig {
    /// `v4l2` (a camera, needs the `v4l2` build feature), `pipe` (raw
    /// frames from a file or FIFO, `-` for standard input) or `folder`
    /// (PNG / JPEG images, each once, in name order).
    pub source: CameraSource,
    /// The device, pipe or folder.
    pub path: PathBuf,
    /// Frame width, pixels (`v4l2`, `pipe`).
    pub width: usize,
    /// Frame height, pixels (`v4l2`, `pipe`).
    pub height: usize,
    /// `pipe`: `y8` or `yuyv`.
    pub format: PixelFormat,
    /// `folder`: pause between two images (`interval_ms`).
    pub interval: Duration,
    /// Decode time budget per frame (`budget_ms`).
    pub budget: Duration,
}

/// `[camera]` as written (see [`CameraConfig`]).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CameraSection {
    source: CameraSource,
    path: PathBuf,
    #[serde(default = "default_width")]
    width: usize,
    #[serde(default = "default_height")]
    height: usize,
    #[serde(default = "default_format")]
    format: String,
    #[serde(default)]
    interval_ms: u64,
    #[serde(default = "default_budget_ms")]
    budget_ms: u64,
}

fn default_width() -> usize {
    1280
}
fn default_height() -> usize {
    720
}
fn default_format() -> String {
    "y8".into()
}
fn default_budget_ms() -> u64 {
    25
}

/// Where frames come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CameraSource {
    /// A V4L2 camera.
    V4l2,
    /// Raw frames from a file or FIFO.
    Pipe,
    /// A folder of images.
    Folder,
}

impl CameraSection {
    fn check(self) -> Result<CameraConfig, Invalid> {
        if self.source != CameraSource::Folder {
            let (w, h) = (self.width, self.height);
            if w == 0 || h == 0 || w > sonotap_qr::MAX_DIMENSION || h > sonotap_qr::MAX_DIMENSION {
                return invalid(
                    "camera.width",
                    format!("{w}x{h} is not a usable frame size"),
                );
            }
        }
        // Checked for every source (a folder ignores it): a value that cannot
        // be used is refused, never replaced by a default.
        let Some(format) = PixelFormat::from_name(&self.format) else {
            return invalid(
                "camera.format",
                format!("{:?}: expected y8 or yuyv", self.format),
            );
        };
        if self.source == CameraSource::V4l2 && !cfg!(feature = "v4l2") {
            return invalid(
                "camera.source",
                "\"v4l2\" needs a build with `--features v4l2` (this one has none); feed raw frames with source = \"pipe\" instead",
            );
        }
        if !(1..=2_000).contains(&self.budget_ms) {
            return invalid(
                "camera.budget_ms",
                format!("{} is outside 1..=2000", self.budget_ms),
            );
        }
        Ok(CameraConfig {
            source: self.source,
            path: self.path,
            width: self.width,
            height: self.height,
            format,
            interval: Duration::from_millis(self.interval_ms),
            budget: Duration::from_millis(self.budget_ms),
        })
    }
}

/// The actuator: a device profile and its port.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActuatorConfig {
    /// A profile name (`ch340-relay`, `turnstile-line`, `mdb-qibixx`, ...) or a path to a `.toml`.
    pub profile: String,
    /// The serial port; the profile's when absent.
    #[serde(default)]
    pub port: Option<PathBuf>,
    /// More directories to look for profiles in, before the defaults.
    #[serde(default)]
    pub profile_dirs: Vec<PathBuf>,
}

/// The fare or price rule.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PaymentConfig {
    /// Gates: the fixed fare charged per passage, minor units; the reader's
    /// `fare` (reader.toml), else the token's amount, when absent. Vending
    /// machines charge the price of the vend request instead.
    #[serde(default)]
    pub fare: Option<u32>,
}

/// The operator hub, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubConfig {
    /// Base URLs (`https://hub.example:8443`), preferred first: hub
    /// processes sharing one database, failed over between
    /// ([`crate::sync::failover`]).
    pub urls: HubUrls,
    /// PEM file of the CA that signed the hub's certificate; the public roots when absent.
    pub ca: Option<PathBuf>,
    /// Between sync rounds (`interval_secs`; after a failure, backoff with jitter).
    pub interval: Duration,
    /// Allowed for one request (`timeout_secs`).
    pub timeout: Duration,
}

/// `[hub]` as written (see [`HubConfig`]).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HubSection {
    url: OneOrMany,
    #[serde(default)]
    ca: Option<PathBuf>,
    #[serde(default = "default_interval")]
    interval_secs: f64,
    #[serde(default = "default_timeout")]
    timeout_secs: f64,
}

/// `url = "…"` for one hub, `url = ["…", "…"]` for several.
#[derive(Debug, Deserialize)]
#[serde(untagged, expecting = "a URL, or a list of URLs")]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

fn default_interval() -> f64 {
    60.0
}
fn default_timeout() -> f64 {
    10.0
}

impl HubSection {
    fn check(self) -> Result<HubConfig, Invalid> {
        let (urls, listed) = match self.url {
            OneOrMany::One(url) => (vec![url], false),
            OneOrMany::Many(urls) => (urls, true),
        };
        let urls = match HubUrls::check(&urls) {
            Ok(urls) => urls,
            Err(e) => {
                let field = match e.index() {
                    Some(i) if listed => format!("hub.url[{i}]"),
                    _ => "hub.url".to_owned(),
                };
                return invalid(field, e.to_string());
            }
        };
        let seconds = |field: &str, value: f64, max: f64| {
            if value.is_finite() && (0.1..=max).contains(&value) {
                Ok(Duration::from_secs_f64(value))
            } else {
                invalid(field, format!("must be between 0.1 and {max}"))
            }
        };
        Ok(HubConfig {
            interval: seconds("hub.interval_secs", self.interval_secs, 86_400.0)?,
            timeout: seconds("hub.timeout_secs", self.timeout_secs, 600.0)?,
            urls,
            ca: self.ca,
        })
    }
}

/// The Prometheus endpoint, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsConfig {
    /// Where to serve `/metrics`; none when turned off (`listen = ""`). A
    /// non-loopback address only with `allow_remote`.
    pub listen: Option<SocketAddr>,
    /// Allow a non-loopback address (the metrics reveal traffic).
    pub allow_remote: bool,
}

/// `[metrics]` as written (see [`MetricsConfig`]).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MetricsSection {
    /// `IP:PORT`, or `""` for off.
    #[serde(default = "default_metrics_listen")]
    listen: String,
    #[serde(default)]
    allow_remote: bool,
}

impl Default for MetricsSection {
    fn default() -> Self {
        Self {
            listen: default_metrics_listen(),
            allow_remote: false,
        }
    }
}

fn default_metrics_listen() -> String {
    "127.0.0.1:9477".into()
}

impl MetricsSection {
    fn check(self) -> Result<MetricsConfig, Invalid> {
        let listen = if self.listen.is_empty() {
            None
        } else {
            match self.listen.parse::<SocketAddr>() {
                Ok(addr) => Some(addr),
                Err(e) => {
                    return invalid(
                        "metrics.listen",
                        format!("{:?}: {e} (expected IP:PORT)", self.listen),
                    );
                }
            }
        };
        if let Some(addr) = listen
            && !addr.ip().is_loopback()
            && !self.allow_remote
        {
            return invalid(
                "metrics.listen",
                format!(
                    "{addr} is not a loopback address; set metrics.allow_remote = true to serve it"
                ),
            );
        }
        Ok(MetricsConfig {
            listen,
            allow_remote: self.allow_remote,
        })
    }
}

/// Feedback to the rider.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeedbackConfig {
    /// Play a short tone on accept (rising) and decline (low, double).
    #[serde(default)]
    pub tone: bool,
    /// Output device (cpal id or ALSA PCM name); the default output when absent.
    #[serde(default)]
    pub device: Option<String>,
    /// Tone amplitude, 0 to 1.
    #[serde(default = "default_volume")]
    pub volume: f32,
}

impl Default for FeedbackConfig {
    fn default() -> Self {
        Self {
            tone: false,
            device: None,
            volume: default_volume(),
        }
    }
}

fn default_volume() -> f32 {
    0.3
}

/// `[site]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SiteSection {
    id: String,
    listen: SocketAddr,
    #[serde(default)]
    peers: Vec<PeerSection>,
}

/// One `[[site.peers]]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PeerSection {
    id: String,
    addr: SocketAddr,
    public_key: String,
}

/// The most peers one reader announces to: a large station's gate lines
/// and machines, with room to spare; each accept costs one datagram each.
const MAX_SITE_PEERS: usize = 256;

impl SiteSection {
    fn check(self) -> Result<SiteConfig, Invalid> {
        use sonotap_protocol::api::check_reader_id;
        check_reader_id(&self.id)
            .or_else(|e| invalid("site.id", e.replace("reader id", "site id")))?;
        if self.peers.is_empty() {
            return invalid(
                "site.peers",
                "a site needs at least one peer to announce to",
            );
        }
        if self.peers.len() > MAX_SITE_PEERS {
            return invalid("site.peers", format!("at most {MAX_SITE_PEERS} peers"));
        }
        let mut peers: Vec<SitePeer> = Vec::with_capacity(self.peers.len());
        for (i, p) in self.peers.into_iter().enumerate() {
            let field = |name: &str| format!("site.peers[{i}].{name}");
            check_reader_id(&p.id).or_else(|e| invalid(field("id"), e))?;
            if peers.iter().any(|q| q.id == p.id) {
                return invalid(field("id"), format!("{:?} is listed twice", p.id));
            }
            if p.addr == self.listen {
                return invalid(field("addr"), "is this reader's own site.listen");
            }
            let key =
                parse_public_key(&p.public_key).or_else(|e| invalid(field("public_key"), e))?;
            peers.push(SitePeer {
                id: p.id,
                addr: p.addr,
                key,
            });
        }
        Ok(SiteConfig {
            id: self.id,
            listen: self.listen,
            peers,
        })
    }
}

/// A reader public key as 64 hex digits (the last field of `reader.pub`).
fn parse_public_key(text: &str) -> Result<ed25519_dalek::VerifyingKey, String> {
    let mut bytes = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut bytes).map_err(|_| {
        "expected 64 hex digits (the last field of the peer's reader.pub)".to_string()
    })?;
    let key = ed25519_dalek::VerifyingKey::from_bytes(&bytes)
        .map_err(|_| "not an Ed25519 public key".to_string())?;
    if key.is_weak() {
        return Err("a small-order (weak) key is never a reader's".into());
    }
    Ok(key)
}

/// The gate's beacon, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct BeaconConfig {
    /// How often a new challenge is drawn, and how long one is accepted.
    pub timing: ChallengeTiming,
    /// Version-1 tokens (bound to no challenge) are still accepted.
    pub accept_version_1: bool,
    /// Where the current beacon is written as a QR code (PNG) for the
    /// gate's display, rewritten at each new challenge; none when absent.
    pub qr_file: Option<PathBuf>,
    /// The beacon's sound on the gate's speaker; none when absent.
    pub sound: Option<BeaconSound>,
}

/// The beacon's sound, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct BeaconSound {
    /// Output device (cpal id or ALSA PCM name); the default output when absent.
    pub device: Option<String>,
    /// Amplitude, 0 to 1: quiet, the phone is held close.
    pub volume: f32,
    /// How often the beacon plays (and at once on each new challenge).
    pub every: Duration,
}

/// `[beacon]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BeaconSection {
    #[serde(default = "default_period")]
    period_secs: u64,
    #[serde(default = "default_life")]
    life_secs: u64,
    #[serde(default)]
    accept_version_1: bool,
    #[serde(default)]
    qr_file: Option<PathBuf>,
    #[serde(default)]
    sound: bool,
    #[serde(default)]
    device: Option<String>,
    #[serde(default = "default_beacon_volume")]
    volume: f32,
    #[serde(default = "default_beacon_every")]
    every_ms: u64,
}

fn default_beacon_volume() -> f32 {
    0.1
}

fn default_beacon_every() -> u64 {
    2_000
}

fn default_period() -> u64 {
    ChallengeTiming::DEFAULT.period_secs
}

fn default_life() -> u64 {
    ChallengeTiming::DEFAULT.life_secs
}

impl BeaconSection {
    fn check(self) -> Result<BeaconConfig, Invalid> {
        if !(1..=300).contains(&self.period_secs) {
            return invalid(
                "beacon.period_secs",
                format!("{} is outside 1..=300", self.period_secs),
            );
        }
        if !(self.period_secs..=600).contains(&self.life_secs) {
            return invalid(
                "beacon.life_secs",
                format!(
                    "{} is outside {}..=600 (a challenge must live at least one period)",
                    self.life_secs, self.period_secs
                ),
            );
        }
        if !(0.0..=1.0).contains(&self.volume) {
            return invalid("beacon.volume", "must be between 0 and 1");
        }
        if !(500..=60_000).contains(&self.every_ms) {
            return invalid(
                "beacon.every_ms",
                format!("{} is outside 500..=60000", self.every_ms),
            );
        }
        if !self.sound && self.device.is_some() {
            return invalid("beacon.device", "set, but sound = false plays nothing");
        }
        if !self.sound && self.qr_file.is_none() {
            return invalid(
                "beacon.sound",
                "a beacon needs sound = true or a qr_file: riders could not hear it",
            );
        }
        Ok(BeaconConfig {
            timing: ChallengeTiming {
                period_secs: self.period_secs,
                life_secs: self.life_secs,
            },
            accept_version_1: self.accept_version_1,
            qr_file: self.qr_file,
            sound: self.sound.then_some(BeaconSound {
                device: self.device,
                volume: self.volume,
                every: Duration::from_millis(self.every_ms),
            }),
        })
    }
}

impl ConfigFile {
    /// Checks every section, in the order of the file's documentation.
    fn check(self) -> Result<Config, Invalid> {
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log_level) {
            return invalid("log_level", format!("{:?}: {e}", self.log_level));
        }
        let audio = self.audio.map(AudioSection::check).transpose()?;
        let camera = self.camera.map(CameraSection::check).transpose()?;
        if self.payment.fare == Some(0) {
            return invalid("payment.fare", "must be at least 1");
        }
        let hub = self.hub.map(HubSection::check).transpose()?;
        let metrics = self.metrics.check()?;
        if !(0.0..=1.0).contains(&self.feedback.volume) {
            return invalid("feedback.volume", "must be between 0 and 1");
        }
        let site = self.site.map(SiteSection::check).transpose()?;
        let beacon = self.beacon.map(BeaconSection::check).transpose()?;
        Ok(Config {
            data: self.data,
            log_level: self.log_level,
            clock_skew_secs: self.clock_skew_secs,
            audio,
            camera,
            actuator: self.actuator,
            payment: self.payment,
            hub,
            metrics,
            feedback: self.feedback,
            site,
            beacon,
        })
    }
}

impl Config {
    /// Reads, parses, checks, and resolves relative paths against the file's directory.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let bytes =
            sonotap_disk::fsutil::read_regular_file_capped(path, crate::reader::MAX_CONFIG_BYTES)
                .map_err(|cause| ConfigError::Read {
                path: path.into(),
                cause,
            })?;
        let text = String::from_utf8(bytes).map_err(|_| ConfigError::Parse {
            path: path.into(),
            detail: "not UTF-8 text".into(),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::parse(&text, path, base)
    }

    /// Parses and checks `text` (from `path`, for messages), resolving relative paths against `base`.
    pub fn parse(text: &str, path: &Path, base: &Path) -> Result<Config, ConfigError> {
        let file: ConfigFile = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.into(),
            detail: e.to_string().trim_end().replace('\n', " "),
        })?;
        let mut config = file.check().map_err(|e| ConfigError::Invalid {
            path: path.into(),
            field: e.field,
            detail: e.detail,
        })?;
        config.resolve(base);
        Ok(config)
    }

    fn resolve(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() && p.as_os_str() != "-" {
                *p = base.join(&*p);
            }
        };
        fix(&mut self.data);
        if let Some(audio) = &mut self.audio {
            audio.files.iter_mut().for_each(fix);
            if let Some(p) = &mut audio.path {
                fix(p);
            }
        }
        if let Some(camera) = &mut self.camera {
            fix(&mut camera.path);
        }
        if let Some(actuator) = &mut self.actuator {
            if let Some(p) = &mut actuator.port {
                fix(p);
            }
            actuator.profile_dirs.iter_mut().for_each(fix);
            // A profile given as a path (it names a file) is relative to the config too.
            if actuator.profile.contains('/') || actuator.profile.ends_with(".toml") {
                let mut p = PathBuf::from(&actuator.profile);
                fix(&mut p);
                actuator.profile = p.display().to_string();
            }
        }
        if let Some(hub) = &mut self.hub
            && let Some(ca) = &mut hub.ca
        {
            fix(ca);
        }
        if let Some(qr) = self.beacon.as_mut().and_then(|b| b.qr_file.as_mut()) {
            fix(qr);
        }
    }
}

impl AudioSource {
    /// The name used in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            AudioSource::Device => "device",
            AudioSource::Wav => "wav",
            AudioSource::Raw => "raw",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(
            text,
            Path::new("/etc/sonotap/config.toml"),
            Path::new("/etc/sonotap"),
        )
    }

    #[test]
    fn minimal_config_takes_defaults_and_resolves_data_against_the_file() {
        let c = parse("data = \"reader\"").unwrap();
        assert_eq!(c.data, PathBuf::from("/etc/sonotap/reader"));
        assert_eq!(c.log_level, "info");
        assert_eq!(
            c.metrics.listen,
            Some(SocketAddr::from(([127, 0, 0, 1], 9477)))
        );
        assert!(c.audio.is_none() && c.camera.is_none() && c.hub.is_none());
    }

    #[test]
    fn unknown_fields_are_refused_by_name_at_any_depth() {
        let e = parse("data = \"r\"\nfrobnicate = 1")
            .unwrap_err()
            .to_string();
        assert!(e.contains("frobnicate"), "{e}");
        assert!(e.contains("/etc/sonotap/config.toml"), "{e}");
        let e = parse("data = \"r\"\n[camera]\nsource = \"pipe\"\npath = \"-\"\nwidht = 3")
            .unwrap_err()
            .to_string();
        assert!(e.contains("widht"), "{e}");
    }

    #[test]
    fn invalid_values_name_their_field() {
        for (text, field) in [
            ("data = \"r\"\nlog_level = \"loud[\"", "log_level"),
            ("data = \"r\"\n[audio]\nsource = \"wav\"", "audio.files"),
            (
                "data = \"r\"\n[audio]\nsource = \"raw\"\npath = \"x\"",
                "audio.rate",
            ),
            (
                "data = \"r\"\n[audio]\nsource = \"device\"\nrate = 48000",
                "audio.rate",
            ),
            (
                "data = \"r\"\n[camera]\nsource = \"pipe\"\npath = \"-\"\nformat = \"rgb\"",
                "camera.format",
            ),
            ("data = \"r\"\n[payment]\nfare = 0", "payment.fare"),
            ("data = \"r\"\n[hub]\nurl = \"ftp://x\"", "hub.url"),
            (
                "data = \"r\"\n[metrics]\nlisten = \"0.0.0.0:9477\"",
                "metrics.listen",
            ),
            (
                "data = \"r\"\n[metrics]\nlisten = \"nonsense\"",
                "metrics.listen",
            ),
        ] {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.contains(&format!("`{field}`")), "{text}: {e}");
        }
    }

    #[test]
    fn remote_metrics_need_explicit_permission() {
        let c = parse("data = \"r\"\n[metrics]\nlisten = \"0.0.0.0:9477\"\nallow_remote = true")
            .unwrap();
        assert_eq!(c.metrics.listen.unwrap().port(), 9477);
        let off = parse("data = \"r\"\n[metrics]\nlisten = \"\"").unwrap();
        assert_eq!(off.metrics.listen, None);
    }

    #[test]
    fn values_are_checked_once_into_types_at_load() {
        let c = parse(
            "data = \"r\"\n[audio]\nsource = \"wav\"\nfiles = [\"a.wav\"]\ngap_ms = 1500\n\
             [camera]\nsource = \"pipe\"\npath = \"-\"\nformat = \"YUY2\"\ninterval_ms = 20\nbudget_ms = 40\n\
             [hub]\nurl = \"http://127.0.0.1:1\"\ninterval_secs = 2.5\ntimeout_secs = 5\n\
             [metrics]\nlisten = \"[::1]:9000\"",
        )
        .unwrap();
        assert_eq!(c.audio.unwrap().gap, Duration::from_millis(1500));
        let camera = c.camera.unwrap();
        assert_eq!(camera.format, PixelFormat::Yuyv);
        assert_eq!(camera.interval, Duration::from_millis(20));
        assert_eq!(camera.budget, Duration::from_millis(40));
        let hub = c.hub.unwrap();
        assert_eq!(hub.interval, Duration::from_millis(2500));
        assert_eq!(hub.timeout, Duration::from_secs(5));
        assert_eq!(c.metrics.listen, Some("[::1]:9000".parse().unwrap()));
    }

    #[test]
    fn a_pixel_format_that_cannot_be_used_is_refused_even_where_it_is_ignored() {
        // It used to pass for a folder and fall back to y8 downstream.
        let e =
            parse("data = \"r\"\n[camera]\nsource = \"folder\"\npath = \"f\"\nformat = \"rgb\"")
                .unwrap_err()
                .to_string();
        assert!(
            e.contains("`camera.format`") && e.contains("expected y8 or yuyv"),
            "{e}"
        );
        let ok = parse("data = \"r\"\n[camera]\nsource = \"folder\"\npath = \"f\"").unwrap();
        assert_eq!(ok.camera.unwrap().format, PixelFormat::Y8);
    }

    #[test]
    fn hub_durations_out_of_range_are_refused_by_field_before_they_become_durations() {
        for (text, field) in [
            ("interval_secs = -1", "hub.interval_secs"),
            ("interval_secs = nan", "hub.interval_secs"),
            ("interval_secs = 1e300", "hub.interval_secs"),
            ("timeout_secs = 0", "hub.timeout_secs"),
            ("timeout_secs = inf", "hub.timeout_secs"),
        ] {
            let e = parse(&format!("data = \"r\"\n[hub]\nurl = \"http://h\"\n{text}"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(&format!("`{field}`")), "{text}: {e}");
        }
    }

    #[test]
    fn hub_url_is_one_url_or_a_list_in_preference_order() {
        let hub = |url: &str| parse(&format!("data = \"r\"\n[hub]\nurl = {url}")).map(|c| c.hub);
        let one = hub("\"https://a:8443/\"").unwrap().unwrap();
        assert_eq!(one.urls.as_slice(), ["https://a:8443"]);
        let two = hub("[\"https://a:8443\", \"https://b:8443\"]")
            .unwrap()
            .unwrap();
        assert_eq!(two.urls.as_slice(), ["https://a:8443", "https://b:8443"]);
        assert_eq!(two.urls.first(), "https://a:8443");
    }

    #[test]
    fn a_hub_list_that_cannot_be_used_is_refused_by_field_and_place() {
        for (url, field, says) in [
            ("[]", "hub.url", "names no hub"),
            (
                "[\"http://a\", \"ftp://b\"]",
                "hub.url[1]",
                "\"ftp://b\" is not an http",
            ),
            ("[\"http://\"]", "hub.url[0]", "with a host"),
            ("\"http://\"", "hub.url", "with a host"),
            (
                "[\"http://a\", \"http://b\", \"http://a/\"]",
                "hub.url[2]",
                "named twice",
            ),
        ] {
            let e = parse(&format!("data = \"r\"\n[hub]\nurl = {url}"))
                .unwrap_err()
                .to_string();
            assert!(
                e.contains(&format!("`{field}`")) && e.contains(says),
                "{url}: {e}"
            );
        }
        let many = (0..17)
            .map(|i| format!("\"http://h{i}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let e = parse(&format!("data = \"r\"\n[hub]\nurl = [{many}]"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("`hub.url`") && e.contains("at most 16"), "{e}");
        let e = parse("data = \"r\"\n[hub]\nurl = 5")
            .unwrap_err()
            .to_string();
        assert!(e.contains("a URL, or a list of URLs"), "{e}");
    }

    #[test]
    fn v4l2_without_the_feature_is_a_clear_error() {
        let r = parse("data = \"r\"\n[camera]\nsource = \"v4l2\"\npath = \"/dev/video0\"");
        if cfg!(feature = "v4l2") {
            assert!(r.is_ok());
        } else {
            let e = r.unwrap_err().to_string();
            assert!(
                e.contains("camera.source") && e.contains("--features v4l2"),
                "{e}"
            );
        }
    }

    #[test]
    fn relative_paths_follow_the_config_file_and_stdin_stays_stdin() {
        let c = parse(
            "data = \"/var/lib/r\"\n[audio]\nsource = \"wav\"\nfiles = [\"a.wav\", \"/abs/b.wav\"]\n\
             [camera]\nsource = \"pipe\"\npath = \"-\"\n[actuator]\nprofile = \"site/gate.toml\"",
        )
        .unwrap();
        let audio = c.audio.unwrap();
        assert_eq!(
            audio.files,
            [
                PathBuf::from("/etc/sonotap/a.wav"),
                PathBuf::from("/abs/b.wav")
            ]
        );
        assert_eq!(c.camera.unwrap().path, PathBuf::from("-"));
        assert_eq!(c.actuator.unwrap().profile, "/etc/sonotap/site/gate.toml");
        assert_eq!(c.data, PathBuf::from("/var/lib/r"));
    }

    #[test]
    fn the_example_config_parses() {
        let text = include_str!("../../../../hw/config.example.toml");
        let c = parse(text).unwrap();
        assert!(c.audio.is_some() && c.actuator.is_some() && c.hub.is_some());
    }

    /// The example's commented-out table that starts at `marker`, up to the
    /// next blank line, its lines uncommented.
    fn example_table(marker: &str) -> String {
        let text = include_str!("../../../../hw/config.example.toml");
        let from = text.find(marker).expect("the example has the table");
        text[from..]
            .lines()
            .take_while(|l| !l.trim().is_empty())
            .filter_map(|l| l.strip_prefix("# "))
            .filter(|l| l.starts_with('[') || l.contains(" = "))
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn example_site() -> String {
        example_table("# [site]")
    }

    #[test]
    fn the_example_beacon_table_parses_once_uncommented_and_bad_timings_are_refused() {
        let beacon = example_table("# [beacon]");
        let c = parse(&format!("data = \"r\"\n{beacon}")).unwrap();
        let b = c.beacon.expect("beacon");
        assert_eq!(b.timing, ChallengeTiming::DEFAULT);
        assert!(!b.accept_version_1);
        assert_eq!(b.qr_file, Some(PathBuf::from("/run/sonotap/beacon.png")));
        for (good, bad, field) in [
            ("period_secs = 10", "period_secs = 0", "beacon.period_secs"),
            ("life_secs = 30", "life_secs = 601", "beacon.life_secs"),
        ] {
            let text = beacon.replace(good, bad);
            let e = parse(&format!("data = \"r\"\n{text}"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(&format!("`{field}`")), "{field}: {e}");
        }
        let short_life = beacon.replace("life_secs = 30", "life_secs = 5");
        let e = parse(&format!("data = \"r\"\n{short_life}"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("at least one period"), "{e}");
    }

    #[test]
    fn the_example_site_table_parses_once_uncommented() {
        let c = parse(&format!("data = \"r\"\n{}", example_site())).unwrap();
        let site = c.site.expect("site");
        assert_eq!(site.id, "station-12");
        assert_eq!(site.peers.len(), 1);
        assert_eq!(site.peers[0].id, "gate-2");
    }

    #[test]
    fn a_site_that_cannot_be_used_is_refused_by_field_and_place() {
        let site = example_site();
        let key = "2543b92ff1095511476adc8369db6ddc933665a11978dda1404ee1066ca9559d";
        let peer = |id: &str, addr: &str, key: &str| {
            format!("[[site.peers]]\nid = \"{id}\"\naddr = \"{addr}\"\npublic_key = \"{key}\"\n")
        };
        // The identity point: a small-order key no reader can have.
        let weak = format!("01{}", "00".repeat(31));
        let cases = [
            (site.replace("station-12", "station 12"), "site.id"),
            (
                "[site]\nid = \"s\"\nlisten = \"127.0.0.1:7411\"\n".to_string(),
                "site.peers",
            ),
            (
                format!("{site}\n{}", peer("gate-2", "127.0.0.2:1", key)),
                "site.peers[1].id",
            ),
            (site.replace(key, &key[..60]), "site.peers[0].public_key"),
            (site.replace(key, &weak), "site.peers[0].public_key"),
            (
                site.replace("10.0.12.12:7411", "10.0.12.11:7411"),
                "site.peers[0].addr",
            ),
        ];
        for (text, field) in cases {
            let e = parse(&format!("data = \"r\"\n{text}"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(&format!("`{field}`")), "{field}: {e}");
        }
        let e = parse(&format!("data = \"r\"\n{site}\nport = 1"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("port"), "an unknown peer field is named: {e}");
    }
}
