//! `sonotap run --config FILE`: the daemon's TOML configuration.
//!
//! Every table refuses unknown fields by name (a typo in a config that runs
//! for months must fail at start, not be ignored). Relative paths are
//! resolved against the directory of the config file, so a config and its
//! files can move together. [`Config::load`] parses and validates; every
//! error names the file and the field.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use thiserror::Error;

use crate::reader::ClockSkew;

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

/// The whole configuration, as read from the file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The reader's data directory (`sonotap reader init --data`).
    pub data: PathBuf,
    /// `tracing` filter: `error`, `warn`, `info`, `debug`, `trace`, or a
    /// directive list (`sonotap=debug,info`).
    #[serde(default = "default_log_level")]
    pub log_level: String,
    /// Clock-skew window, seconds (1 to one day, [`ClockSkew`]); overrides
    /// the reader's `reader.toml`.
    #[serde(default)]
    pub clock_skew_secs: Option<ClockSkew>,
    /// Where sound comes from; none when absent.
    #[serde(default)]
    pub audio: Option<AudioConfig>,
    /// Where camera frames come from; none when absent.
    #[serde(default)]
    pub camera: Option<CameraConfig>,
    /// The gate or vending machine; none when absent (decide and record only).
    #[serde(default)]
    pub actuator: Option<ActuatorConfig>,
    /// What a passage costs.
    #[serde(default)]
    pub payment: PaymentConfig,
    /// The operator hub; the reader works offline without it.
    #[serde(default)]
    pub hub: Option<HubConfig>,
    /// The Prometheus endpoint.
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// Accept / decline tones for the rider.
    #[serde(default)]
    pub feedback: FeedbackConfig,
}

fn default_log_level() -> String {
    "info".into()
}

/// Audio input.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AudioConfig {
    /// `device` (cpal / ALSA capture), `wav` (files played in order, for
    /// demos and tests) or `raw` (S16_LE mono samples from a file or FIFO).
    pub source: AudioSource,
    /// `device`: a cpal id or ALSA PCM name (`default`, `hw:1,0`); default input when absent.
    #[serde(default)]
    pub device: Option<String>,
    /// `wav`: the files, played one after the other.
    #[serde(default)]
    pub files: Vec<PathBuf>,
    /// `raw`: the file or FIFO (`-` for standard input).
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// `raw`: sample rate of the stream, Hz.
    #[serde(default)]
    pub rate: Option<u32>,
    /// `wav`: play at the pace of real time (true) or as fast as the decoder reads (false).
    #[serde(default = "yes")]
    pub realtime: bool,
    /// `wav`: silence between two files, milliseconds.
    #[serde(default = "default_gap_ms")]
    pub gap_ms: u64,
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

/// Camera input.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CameraConfig {
    /// `v4l2` (a camera, needs the `v4l2` build feature), `pipe` (raw
    /// frames from a file or FIFO, `-` for standard input) or `folder`
    /// (PNG / JPEG images, each once, in name order).
    pub source: CameraSource,
    /// The device, pipe or folder.
    pub path: PathBuf,
    /// Frame width, pixels (`v4l2`, `pipe`).
    #[serde(default = "default_width")]
    pub width: usize,
    /// Frame height, pixels (`v4l2`, `pipe`).
    #[serde(default = "default_height")]
    pub height: usize,
    /// `pipe`: `y8` or `yuyv`.
    #[serde(default = "default_format")]
    pub format: String,
    /// `folder`: pause between two images, milliseconds.
    #[serde(default)]
    pub interval_ms: u64,
    /// Decode time budget per frame, milliseconds.
    #[serde(default = "default_budget_ms")]
    pub budget_ms: u64,
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

/// The operator hub.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HubConfig {
    /// Base URL (`https://hub.example:8443`).
    pub url: String,
    /// PEM file of the CA that signed the hub's certificate; the public roots when absent.
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// Seconds between sync rounds (after a failure, backoff with jitter).
    #[serde(default = "default_interval")]
    pub interval_secs: f64,
    /// Seconds allowed for one request.
    #[serde(default = "default_timeout")]
    pub timeout_secs: f64,
}

fn default_interval() -> f64 {
    60.0
}
fn default_timeout() -> f64 {
    10.0
}

/// The Prometheus endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// `IP:PORT` to serve `/metrics` on; `""` turns it off.
    #[serde(default = "default_metrics_listen")]
    pub listen: String,
    /// Allow a non-loopback address (the metrics reveal traffic).
    #[serde(default)]
    pub allow_remote: bool,
}

impl Default for MetricsConfig {
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

/// Wraps the config file's path for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source(pub PathBuf);

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.display())
    }
}

impl Config {
    /// Reads, parses, resolves relative paths against the file's directory, and validates.
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

    /// Parses `text` (from `path`, for messages), resolving relative paths against `base`.
    pub fn parse(text: &str, path: &Path, base: &Path) -> Result<Config, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.into(),
            detail: e.to_string().trim_end().replace('\n', " "),
        })?;
        config.resolve(base);
        config.validate(path)?;
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
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let bad = |field: &str, detail: String| ConfigError::Invalid {
            path: path.into(),
            field: field.into(),
            detail,
        };
        tracing_subscriber::EnvFilter::try_new(&self.log_level)
            .map_err(|e| bad("log_level", format!("{:?}: {e}", self.log_level)))?;
        if let Some(audio) = &self.audio {
            let wrong = |field: &str, set: bool| -> Result<(), ConfigError> {
                if set {
                    Err(bad(
                        &format!("audio.{field}"),
                        format!("does not apply to source = \"{}\"", audio.source.as_str()),
                    ))
                } else {
                    Ok(())
                }
            };
            match audio.source {
                AudioSource::Device => {
                    wrong("files", !audio.files.is_empty())?;
                    wrong("path", audio.path.is_some())?;
                    wrong("rate", audio.rate.is_some())?;
                }
                AudioSource::Wav => {
                    if audio.files.is_empty() {
                        return Err(bad(
                            "audio.files",
                            "source = \"wav\" needs at least one file".into(),
                        ));
                    }
                    wrong("device", audio.device.is_some())?;
                    wrong("path", audio.path.is_some())?;
                    wrong("rate", audio.rate.is_some())?;
                }
                AudioSource::Raw => {
                    if audio.path.is_none() {
                        return Err(bad("audio.path", "source = \"raw\" needs a path".into()));
                    }
                    match audio.rate {
                        Some(8_000..=384_000) => {}
                        Some(r) => {
                            return Err(bad(
                                "audio.rate",
                                format!("{r} Hz is outside 8000..=384000"),
                            ));
                        }
                        None => {
                            return Err(bad("audio.rate", "source = \"raw\" needs a rate".into()));
                        }
                    }
                    wrong("device", audio.device.is_some())?;
                    wrong("files", !audio.files.is_empty())?;
                }
            }
            if audio.gap_ms > 600_000 {
                return Err(bad("audio.gap_ms", "at most 600000".into()));
            }
        }
        if let Some(camera) = &self.camera {
            if camera.source != CameraSource::Folder {
                let (w, h) = (camera.width, camera.height);
                if w == 0
                    || h == 0
                    || w > sonotap_qr::MAX_DIMENSION
                    || h > sonotap_qr::MAX_DIMENSION
                {
                    return Err(bad(
                        "camera.width",
                        format!("{w}x{h} is not a usable frame size"),
                    ));
                }
                if sonotap_qr::source::PixelFormat::from_name(&camera.format).is_none() {
                    return Err(bad(
                        "camera.format",
                        format!("{:?}: expected y8 or yuyv", camera.format),
                    ));
                }
            }
            if camera.source == CameraSource::V4l2 && !cfg!(feature = "v4l2") {
                return Err(bad(
                    "camera.source",
                    "\"v4l2\" needs a build with `--features v4l2` (this one has none); feed raw frames with source = \"pipe\" instead".into(),
                ));
            }
            if !(1..=2_000).contains(&camera.budget_ms) {
                return Err(bad(
                    "camera.budget_ms",
                    format!("{} is outside 1..=2000", camera.budget_ms),
                ));
            }
        }
        if self.payment.fare == Some(0) {
            return Err(bad("payment.fare", "must be at least 1".into()));
        }
        if let Some(hub) = &self.hub {
            if !(hub.url.starts_with("http://") || hub.url.starts_with("https://")) {
                return Err(bad(
                    "hub.url",
                    format!("{:?} is not an http:// or https:// URL", hub.url),
                ));
            }
            if !(hub.interval_secs.is_finite() && (0.1..=86_400.0).contains(&hub.interval_secs)) {
                return Err(bad(
                    "hub.interval_secs",
                    "must be between 0.1 and 86400".into(),
                ));
            }
            if !(hub.timeout_secs.is_finite() && (0.1..=600.0).contains(&hub.timeout_secs)) {
                return Err(bad(
                    "hub.timeout_secs",
                    "must be between 0.1 and 600".into(),
                ));
            }
        }
        if let Some(addr) = self.metrics_addr().map_err(|d| bad("metrics.listen", d))?
            && !addr.ip().is_loopback()
            && !self.metrics.allow_remote
        {
            return Err(bad(
                "metrics.listen",
                format!(
                    "{addr} is not a loopback address; set metrics.allow_remote = true to serve it"
                ),
            ));
        }
        if !(0.0..=1.0).contains(&self.feedback.volume) {
            return Err(bad("feedback.volume", "must be between 0 and 1".into()));
        }
        Ok(())
    }

    /// The metrics address, `None` when turned off.
    pub fn metrics_addr(&self) -> Result<Option<SocketAddr>, String> {
        if self.metrics.listen.is_empty() {
            return Ok(None);
        }
        self.metrics
            .listen
            .parse()
            .map(Some)
            .map_err(|e| format!("{:?}: {e} (expected IP:PORT)", self.metrics.listen))
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

impl HubConfig {
    /// The sync interval.
    pub fn interval(&self) -> Duration {
        Duration::from_secs_f64(self.interval_secs)
    }
    /// The request timeout.
    pub fn timeout(&self) -> Duration {
        Duration::from_secs_f64(self.timeout_secs)
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
        assert_eq!(c.metrics.listen, "127.0.0.1:9477");
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
        assert_eq!(c.metrics_addr().unwrap().unwrap().port(), 9477);
        let off = parse("data = \"r\"\n[metrics]\nlisten = \"\"").unwrap();
        assert_eq!(off.metrics_addr().unwrap(), None);
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
}
