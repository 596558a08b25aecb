//! Device profiles: `hw/profiles/*.toml`, loaded by name or path.
//!
//! A profile says which port and baud rate a device uses and how to talk to
//! it: for a gate, the open / close / reset commands (hex byte strings or
//! text lines), the pulse length and the feedback patterns; for a vending
//! machine, the MDB adapter's dialect, its amount scale and the timeouts.
//! The built-in profiles are embedded in the binary; a file of the same name
//! in a profile directory takes precedence, and a path loads any file.
//! Unknown fields are refused with their name.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use thiserror::Error;

use super::gate::{GateConfig, Pattern};
use super::mdb::{Dialect, MdbConfig};

/// Profiles built into the binary: (name, TOML text).
pub const BUILTIN: [(&str, &str); 4] = [
    (
        "ch340-relay",
        include_str!("../../../../hw/profiles/ch340-relay.toml"),
    ),
    (
        "turnstile-line",
        include_str!("../../../../hw/profiles/turnstile-line.toml"),
    ),
    (
        "generic",
        include_str!("../../../../hw/profiles/generic.toml"),
    ),
    (
        "mdb-qibixx",
        include_str!("../../../../hw/profiles/mdb-qibixx.toml"),
    ),
];

/// Where profiles are looked for by name, before the built-in set:
/// `./hw/profiles` (a checkout or an installer's working directory) and
/// `/etc/sonotap/profiles` (an installed reader).
pub fn default_dirs() -> Vec<PathBuf> {
    vec![
        PathBuf::from("hw/profiles"),
        PathBuf::from("/etc/sonotap/profiles"),
    ]
}

/// Why a profile could not be found or used.
#[derive(Debug, Error)]
pub enum ProfileError {
    /// No profile of that name in the directories nor built in.
    #[error(
        "no profile named {name:?} (looked in {searched} and the built-in set: {builtin}); `sonotap hw profiles` lists them"
    )]
    Unknown {
        /// The name asked for.
        name: String,
        /// The directories searched, for the message.
        searched: String,
        /// The built-in names.
        builtin: String,
    },
    /// The file could not be read.
    #[error("cannot read profile {path}: {cause}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        cause: std::io::Error,
    },
    /// The TOML is not a valid profile.
    #[error("profile {origin}: {detail}")]
    Invalid {
        /// The file, or `built-in NAME`.
        origin: String,
        /// What is wrong, naming the field.
        detail: String,
    },
}

/// Where a profile came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// Embedded in the binary.
    Builtin,
    /// Read from this file.
    File(PathBuf),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Builtin => f.write_str("built-in"),
            Origin::File(path) => write!(f, "{}", path.display()),
        }
    }
}

/// What kind of device a profile drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A gate relay or a turnstile controller.
    Gate,
    /// A vending machine through an MDB cashless-device adapter.
    Mdb,
}

impl Kind {
    /// The name used in profiles.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Gate => "gate",
            Kind::Mdb => "mdb",
        }
    }
}

/// A loaded, checked profile.
#[derive(Debug, Clone)]
pub struct Profile {
    /// The profile's name (its file name without `.toml`).
    pub name: String,
    /// Where it was loaded from.
    pub origin: Origin,
    /// One line for people.
    pub description: String,
    /// The serial device.
    pub port: PathBuf,
    /// Baud rate.
    pub baud: u32,
    /// What the device does if sonotap dies mid-command (gates).
    pub fail_safe: Option<String>,
    /// The device-specific settings.
    pub device: Device,
    /// An optional status display for the rider (`[display]`).
    pub display: Option<DisplayConfig>,
}

/// A serial text display beside the gate or machine (an LED or LCD line
/// board): one line per decision. It has its own port, because serial
/// ports are opened exclusively and a display must never hold up the gate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DisplayConfig {
    /// The display's serial device.
    pub port: PathBuf,
    /// Baud rate.
    pub baud: u32,
    /// Line shown on accept; `{amount}` is replaced by the amount charged (minor units).
    pub accept: String,
    /// Line shown on decline; `{reason}` is replaced by the decline reason.
    pub decline: String,
    /// Appended to every line.
    pub line_ending: String,
}

impl DisplayConfig {
    /// The bytes to write for a decision: the accept line with the amount,
    /// or the decline line with the reason.
    pub fn line(&self, accepted: bool, amount: Option<u32>, reason: &str) -> Vec<u8> {
        let text = if accepted {
            self.accept.replace(
                "{amount}",
                &amount.map(|a| a.to_string()).unwrap_or_default(),
            )
        } else {
            self.decline.replace("{reason}", reason)
        };
        format!("{text}{}", self.line_ending).into_bytes()
    }
}

/// Device-specific settings of a profile.
#[derive(Debug, Clone)]
pub enum Device {
    /// A gate.
    Gate(GateConfig),
    /// A vending machine.
    Mdb(MdbConfig),
}

impl Profile {
    /// The kind of device.
    pub fn kind(&self) -> Kind {
        match self.device {
            Device::Gate(_) => Kind::Gate,
            Device::Mdb(_) => Kind::Mdb,
        }
    }

    /// Loads `name_or_path`: a path (it contains `/` or ends in `.toml`) is
    /// read as is; a name is looked for as `NAME.toml` in `dirs`, then in the
    /// built-in set.
    pub fn load(name_or_path: &str, dirs: &[PathBuf]) -> Result<Profile, ProfileError> {
        if name_or_path.contains('/') || name_or_path.ends_with(".toml") {
            return Self::from_file(Path::new(name_or_path));
        }
        for dir in dirs {
            let path = dir.join(format!("{name_or_path}.toml"));
            if path.is_file() {
                return Self::from_file(&path);
            }
        }
        match BUILTIN.iter().find(|(name, _)| *name == name_or_path) {
            Some((name, text)) => Self::parse(name, Origin::Builtin, text),
            None => Err(ProfileError::Unknown {
                name: name_or_path.into(),
                searched: dirs
                    .iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                builtin: BUILTIN.map(|(n, _)| n).join(", "),
            }),
        }
    }

    /// Reads a profile file; its name is the file name without `.toml`.
    pub fn from_file(path: &Path) -> Result<Profile, ProfileError> {
        // A profile is a few hundred bytes; a FIFO or a device is refused unread.
        let bytes =
            sonotap_disk::fsutil::read_regular_file_capped(path, 64 * 1024).map_err(|e| {
                ProfileError::Read {
                    path: path.into(),
                    cause: std::io::Error::other(e),
                }
            })?;
        let text = String::from_utf8(bytes).map_err(|_| ProfileError::Read {
            path: path.into(),
            cause: std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8 text"),
        })?;
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        Self::parse(&name, Origin::File(path.into()), &text)
    }

    /// Every profile: the built-in set, then files in `dirs` (a file with a
    /// built-in's name replaces it, as [`Profile::load`] would). Files that do
    /// not load are returned as errors beside the good ones.
    pub fn list(dirs: &[PathBuf]) -> (Vec<Profile>, Vec<ProfileError>) {
        let mut profiles: Vec<Profile> = Vec::new();
        let mut errors = Vec::new();
        for (name, text) in BUILTIN {
            match Self::parse(name, Origin::Builtin, text) {
                Ok(p) => profiles.push(p),
                Err(e) => errors.push(e),
            }
        }
        // Later directories have lower precedence: walk them in reverse.
        for dir in dirs.iter().rev() {
            let Ok(entries) = fs::read_dir(dir) else {
                continue;
            };
            let mut paths: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "toml"))
                .collect();
            paths.sort();
            for path in paths {
                match Self::from_file(&path) {
                    Ok(p) => {
                        profiles.retain(|q| q.name != p.name);
                        profiles.push(p);
                    }
                    Err(e) => errors.push(e),
                }
            }
        }
        profiles.sort_by(|a, b| a.name.cmp(&b.name));
        (profiles, errors)
    }

    /// Parses and checks a profile's TOML text.
    pub fn parse(name: &str, origin: Origin, text: &str) -> Result<Profile, ProfileError> {
        let invalid = |detail: String| ProfileError::Invalid {
            origin: match &origin {
                Origin::Builtin => format!("built-in {name}"),
                Origin::File(path) => path.display().to_string(),
            },
            detail,
        };
        let file: ProfileFile = toml::from_str(text).map_err(|e| invalid(e.to_string()))?;
        if !(1200..=921_600).contains(&file.baud) {
            return Err(invalid(format!(
                "baud {} is outside 1200..=921600",
                file.baud
            )));
        }
        if file.port.trim().is_empty() {
            return Err(invalid("port is empty".into()));
        }
        let device = match (file.kind, file.gate, file.mdb) {
            (Kind::Gate, Some(gate), None) => {
                if file.fail_safe.is_none() {
                    return Err(invalid(
                        "fail_safe is required for a gate: say what the gate does if sonotap dies mid-pulse"
                            .into(),
                    ));
                }
                Device::Gate(gate.check().map_err(invalid)?)
            }
            (Kind::Mdb, None, Some(mdb)) => Device::Mdb(mdb.check().map_err(invalid)?),
            (Kind::Gate, _, _) => {
                return Err(invalid(
                    "kind = \"gate\" needs a [gate] table and no [mdb] table".into(),
                ));
            }
            (Kind::Mdb, _, _) => {
                return Err(invalid(
                    "kind = \"mdb\" needs an [mdb] table and no [gate] table".into(),
                ));
            }
        };
        let display = file
            .display
            .map(DisplaySection::check)
            .transpose()
            .map_err(invalid)?;
        Ok(Profile {
            name: name.into(),
            origin,
            description: file.description,
            port: PathBuf::from(file.port),
            baud: file.baud,
            fail_safe: file.fail_safe.map(|s| s.trim().to_string()),
            device,
            display,
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProfileFile {
    kind: Kind,
    description: String,
    port: String,
    baud: u32,
    fail_safe: Option<String>,
    gate: Option<GateSection>,
    mdb: Option<MdbSection>,
    #[serde(default)]
    display: Option<DisplaySection>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DisplaySection {
    port: String,
    #[serde(default = "default_display_baud")]
    baud: u32,
    accept: String,
    decline: String,
    #[serde(default)]
    line_ending: Option<String>,
}

fn default_display_baud() -> u32 {
    9600
}

impl DisplaySection {
    fn check(self) -> Result<DisplayConfig, String> {
        if self.port.trim().is_empty() {
            return Err("display.port is empty".into());
        }
        if !(1200..=921_600).contains(&self.baud) {
            return Err(format!(
                "display.baud {} is outside 1200..=921600",
                self.baud
            ));
        }
        for (field, value) in [
            ("display.accept", &self.accept),
            ("display.decline", &self.decline),
        ] {
            if value.is_empty() || value.contains(['\r', '\n']) {
                return Err(format!(
                    "{field} must be one non-empty line (line_ending is added)"
                ));
            }
        }
        Ok(DisplayConfig {
            port: PathBuf::from(self.port),
            baud: self.baud,
            accept: self.accept,
            decline: self.decline,
            line_ending: self.line_ending.unwrap_or_else(|| "\r\n".into()),
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Format {
    Hex,
    Text,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GateSection {
    format: Format,
    #[serde(default)]
    line_ending: Option<String>,
    open: String,
    close: Option<String>,
    reset: Option<String>,
    pulse_ms: u64,
    #[serde(default = "default_deliver_within_ms")]
    deliver_within_ms: u64,
    ack: Option<String>,
    nak: Option<String>,
    #[serde(default = "default_ack_timeout_ms")]
    ack_timeout_ms: u64,
    passage: Option<String>,
    no_passage: Option<String>,
    #[serde(default = "default_passage_timeout_ms")]
    passage_timeout_ms: u64,
}

fn default_deliver_within_ms() -> u64 {
    1_000
}
fn default_ack_timeout_ms() -> u64 {
    500
}
fn default_passage_timeout_ms() -> u64 {
    5_000
}

impl GateSection {
    fn check(self) -> Result<GateConfig, String> {
        let ms = |field: &str, value: u64, range: std::ops::RangeInclusive<u64>| {
            if range.contains(&value) {
                Ok(Duration::from_millis(value))
            } else {
                Err(format!(
                    "{field} = {value} is outside {}..={} ms",
                    range.start(),
                    range.end()
                ))
            }
        };
        let pulse = ms("pulse_ms", self.pulse_ms, 1..=60_000)?;
        let text = self.format == Format::Text;
        if !text && self.line_ending.is_some() {
            return Err("line_ending is for format = \"text\" only".into());
        }
        let ending = self.line_ending.unwrap_or_else(|| "\r\n".into());
        let command = |field: &str, value: &str| -> Result<Vec<u8>, String> {
            if text {
                let line = value.replace("{pulse_ms}", &self.pulse_ms.to_string());
                if line.contains(['\r', '\n']) {
                    return Err(format!("{field} must be one line (line_ending is added)"));
                }
                Ok(format!("{line}{ending}").into_bytes())
            } else {
                parse_hex(value).map_err(|e| format!("{field}: {e}"))
            }
        };
        let pattern = |field: &str, value: Option<String>| -> Result<Option<Pattern>, String> {
            value
                .map(|v| {
                    if text {
                        if v.is_empty() {
                            return Err(format!("{field} is empty"));
                        }
                        Ok(Pattern::Line(v))
                    } else {
                        parse_hex(&v)
                            .map(Pattern::Bytes)
                            .map_err(|e| format!("{field}: {e}"))
                    }
                })
                .transpose()
        };
        let open = command("open", &self.open)?;
        let close = self
            .close
            .as_deref()
            .map(|c| command("close", c))
            .transpose()?;
        let reset = match self.reset.as_deref() {
            Some(r) => Some(command("reset", r)?),
            None => close.clone(),
        };
        if self.nak.is_some() && self.ack.is_none() {
            return Err("nak needs ack (the pattern of an accepted command)".into());
        }
        if self.no_passage.is_some() && self.passage.is_none() {
            return Err("no_passage needs passage".into());
        }
        Ok(GateConfig {
            open,
            close,
            reset,
            pulse,
            deliver_within: ms("deliver_within_ms", self.deliver_within_ms, 0..=60_000)?,
            ack: pattern("ack", self.ack)?,
            nak: pattern("nak", self.nak)?,
            ack_timeout: ms("ack_timeout_ms", self.ack_timeout_ms, 1..=60_000)?,
            passage: pattern("passage", self.passage)?,
            no_passage: pattern("no_passage", self.no_passage)?,
            passage_timeout: ms("passage_timeout_ms", self.passage_timeout_ms, 1..=600_000)?,
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MdbSection {
    dialect: Dialect,
    decimals: u8,
    #[serde(default = "default_ready_timeout_ms")]
    ready_timeout_ms: u64,
    #[serde(default = "default_session_timeout_ms")]
    session_timeout_ms: u64,
    #[serde(default = "default_vend_result_timeout_ms")]
    vend_result_timeout_ms: u64,
    #[serde(default = "default_end_timeout_ms")]
    end_timeout_ms: u64,
    #[serde(default = "default_max_funds")]
    max_funds: u32,
}

fn default_ready_timeout_ms() -> u64 {
    5_000
}
fn default_session_timeout_ms() -> u64 {
    30_000
}
fn default_vend_result_timeout_ms() -> u64 {
    30_000
}
fn default_end_timeout_ms() -> u64 {
    2_000
}
/// MDB's Begin Session carries the funds in two bytes of scaled units
/// (`FFFF` meaning "unknown"), so at scale factor 1 no machine shows more.
fn default_max_funds() -> u32 {
    65_534
}

impl MdbSection {
    fn check(self) -> Result<MdbConfig, String> {
        if self.decimals > 4 {
            return Err(format!("decimals = {} is outside 0..=4", self.decimals));
        }
        let ms = |field: &str, value: u64| {
            if (1..=600_000).contains(&value) {
                Ok(Duration::from_millis(value))
            } else {
                Err(format!("{field} = {value} is outside 1..=600000 ms"))
            }
        };
        Ok(MdbConfig {
            dialect: self.dialect,
            decimals: self.decimals,
            ready_timeout: ms("ready_timeout_ms", self.ready_timeout_ms)?,
            session_timeout: ms("session_timeout_ms", self.session_timeout_ms)?,
            vend_result_timeout: ms("vend_result_timeout_ms", self.vend_result_timeout_ms)?,
            end_timeout: ms("end_timeout_ms", self.end_timeout_ms)?,
            max_funds: match self.max_funds {
                0 => return Err("max_funds = 0: a session must be able to offer something".into()),
                n => n,
            },
        })
    }
}

/// Parses a byte string written as hex, bytes optionally separated by spaces
/// (`"A0 01 01 A2"` or `"a00101a2"`).
pub fn parse_hex(text: &str) -> Result<Vec<u8>, String> {
    let digits: String = text.split_whitespace().collect();
    if digits.is_empty() {
        return Err("empty byte string".into());
    }
    if !digits.len().is_multiple_of(2) {
        return Err(format!(
            "{text:?} has an odd number of hex digits (write bytes as pairs: \"A0 01\")"
        ));
    }
    hex::decode(&digits).map_err(|e| format!("{text:?} is not hex bytes ({e})"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actuator::format_hex;

    #[test]
    fn display_section_is_optional_checked_and_formats_its_lines() {
        let base = include_str!("../../../../hw/profiles/ch340-relay.toml");
        assert_eq!(
            Profile::parse("x", Origin::Builtin, base).unwrap().display,
            None
        );
        let with = format!(
            "{base}\n[display]\nport = \"/dev/ttyUSB1\"\naccept = \"OK {{amount}}\"\ndecline = \"NO {{reason}}\"\n"
        );
        let d = Profile::parse("x", Origin::Builtin, &with)
            .unwrap()
            .display
            .unwrap();
        assert_eq!((d.baud, d.port.to_str()), (9600, Some("/dev/ttyUSB1")));
        assert_eq!(d.line(true, Some(250), ""), b"OK 250\r\n");
        assert_eq!(d.line(false, None, "replayed"), b"NO replayed\r\n");
        let typo = format!("{with}colour = 1\n");
        let e = Profile::parse("x", Origin::Builtin, &typo)
            .unwrap_err()
            .to_string();
        assert!(e.contains("colour"), "{e}");
    }

    #[test]
    fn every_builtin_profile_loads() {
        for (name, text) in BUILTIN {
            let profile = Profile::parse(name, Origin::Builtin, text).expect(name);
            assert_eq!(profile.name, name);
        }
        let (all, errors) = Profile::list(&[]);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(all.len(), BUILTIN.len());
    }

    #[test]
    fn the_ch340_profile_has_the_boards_bytes() {
        let profile = Profile::load("ch340-relay", &[]).expect("built-in");
        let Device::Gate(gate) = profile.device else {
            panic!("a gate")
        };
        assert_eq!(gate.open, [0xA0, 0x01, 0x01, 0xA2]);
        assert_eq!(gate.close.as_deref(), Some(&[0xA0, 0x01, 0x00, 0xA1][..]));
        assert_eq!(gate.reset, gate.close);
        assert_eq!(profile.baud, 9600);
        assert_eq!(gate.pulse, Duration::from_millis(300));
    }

    #[test]
    fn text_commands_get_the_pulse_and_the_line_ending() {
        let profile = Profile::load("turnstile-line", &[]).expect("built-in");
        let Device::Gate(gate) = profile.device else {
            panic!("a gate")
        };
        assert_eq!(gate.open, b"OPEN 5000\r\n");
        assert_eq!(gate.close, None);
        assert_eq!(gate.reset.as_deref(), Some(&b"CLOSE\r\n"[..]));
    }

    #[test]
    fn unknown_fields_are_refused_by_name() {
        let text = include_str!("../../../../hw/profiles/ch340-relay.toml")
            .replace("pulse_ms = 300", "pulse_ms = 300\npulse_len = 3");
        let err = Profile::parse("x", Origin::Builtin, &text).expect_err("refused");
        assert!(err.to_string().contains("pulse_len"), "{err}");
        let text = format!(
            "{}\ncolour = 1\n",
            include_str!("../../../../hw/profiles/mdb-qibixx.toml")
        );
        let err = Profile::parse("x", Origin::Builtin, &text).expect_err("refused");
        assert!(err.to_string().contains("colour"), "{err}");
    }

    #[test]
    fn bad_values_are_refused_with_the_field() {
        let base = include_str!("../../../../hw/profiles/ch340-relay.toml");
        for (from, to, needle) in [
            ("A0 01 01 A2", "A0 01 01 A", "open"),
            ("A0 01 00 A1", "ZZ", "close"),
            ("pulse_ms = 300", "pulse_ms = 0", "pulse_ms"),
            ("baud = 9600", "baud = 7", "baud"),
        ] {
            let text = base.replace(from, to);
            let err = Profile::parse("x", Origin::Builtin, &text).expect_err(to);
            assert!(err.to_string().contains(needle), "{err}");
        }
    }

    #[test]
    fn a_name_is_looked_for_in_the_directories_first_and_a_path_is_read_as_is() {
        let dir = tempfile::tempdir().expect("tempdir");
        let text = include_str!("../../../../hw/profiles/ch340-relay.toml")
            .replace("pulse_ms = 300", "pulse_ms = 120");
        fs::write(dir.path().join("ch340-relay.toml"), &text).expect("write");
        fs::write(dir.path().join("site.toml"), &text).expect("write");
        let dirs = [dir.path().to_path_buf()];
        let local = Profile::load("ch340-relay", &dirs).expect("found");
        assert!(matches!(local.origin, Origin::File(_)));
        let Device::Gate(gate) = local.device else {
            panic!("a gate")
        };
        assert_eq!(gate.pulse, Duration::from_millis(120));
        let by_path = dir.path().join("site.toml");
        let site = Profile::load(&by_path.to_string_lossy(), &[]).expect("by path");
        assert_eq!(site.name, "site");
        let (all, _) = Profile::list(&dirs);
        assert_eq!(all.len(), BUILTIN.len() + 1);
        let err = Profile::load("nope", &dirs).expect_err("unknown");
        assert!(err.to_string().contains("mdb-qibixx"), "{err}");
    }

    #[test]
    fn hex_strings_parse_with_or_without_spaces() {
        assert_eq!(parse_hex("A0 01 01 A2"), Ok(vec![0xA0, 1, 1, 0xA2]));
        assert_eq!(parse_hex("a00101a2"), Ok(vec![0xA0, 1, 1, 0xA2]));
        assert!(parse_hex("").is_err());
        assert!(parse_hex("A").is_err());
        assert_eq!(format_hex(&[0xA0, 1]), "A0 01");
    }
}
