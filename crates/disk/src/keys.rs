//! Key files for the three key holders: issuer (with key ids), wallet, reader.
//!
//! A key file is one line of text: `sonotap <role>-<secret|public> <key id|-> <hex>`.
//! Secret files hold the 32-byte ed25519 seed, are created 0600, and are
//! zeroized in memory when dropped. A secret file is refused when other users
//! can read it, when another user owns it, or when its directory lets others
//! replace it; any key file is refused when it is not a regular file (a FIFO
//! would hang the reader, a device would never end).

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use ed25519_dalek::{SigningKey, VerifyingKey};
use thiserror::Error;
use zeroize::Zeroizing;

use crate::fsutil::{self, DirError, ReadError};

/// The most a key file may hold: one line of about 100 bytes, with room to spare.
const MAX_KEY_FILE_BYTES: u64 = 1024;

/// Who holds a key; a key file of one role is never accepted for another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The operator's hub: signs credentials, deny lists and key sets.
    Issuer,
    /// A phone: signs payments.
    Wallet,
    /// A gate or vending reader: signs its transaction records.
    Reader,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::Issuer => "issuer",
            Role::Wallet => "wallet",
            Role::Reader => "reader",
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        match name {
            "issuer" => Some(Role::Issuer),
            "wallet" => Some(Role::Wallet),
            "reader" => Some(Role::Reader),
            _ => None,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a key file could not be used.
#[derive(Debug, Error)]
pub enum KeyFileError {
    /// No file at that path.
    #[error("key file {path} does not exist")]
    Missing {
        /// The path looked at.
        path: PathBuf,
    },
    /// The file exists but could not be read (permissions, I/O).
    #[error("key file {path} cannot be read: {source}")]
    Unreadable {
        /// The path looked at.
        path: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
    /// A secret key file that group or others may read.
    #[error(
        "secret key file {path} has permissions {mode:04o}; it must be readable by its owner only (chmod 600)"
    )]
    TooOpen {
        /// The path looked at.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// Not a regular file, too large, or owned by another user.
    #[error("key file {0}")]
    Refused(ReadError),
    /// A secret key in a directory that group or others can write: they
    /// could replace the key.
    #[error("secret key file {path}: {source}")]
    DirTooOpen {
        /// The key file.
        path: PathBuf,
        /// What is wrong with its directory.
        source: DirError,
    },
    /// A valid key file, but for another role or kind.
    #[error("key file {path} holds {found}, expected {expected}")]
    WrongType {
        /// The path looked at.
        path: PathBuf,
        /// What the file holds.
        found: String,
        /// What the caller needed.
        expected: String,
    },
    /// Not a sonotap key file at all, or damaged.
    #[error("key file {path} is not a sonotap key file: {why}")]
    Malformed {
        /// The path looked at.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// Creating a key would overwrite an existing one.
    #[error("key file {path} already exists; refusing to overwrite a key")]
    Exists {
        /// The path looked at.
        path: PathBuf,
    },
    /// Writing failed.
    #[error("cannot write key file {path}: {source}")]
    Write {
        /// The path written.
        path: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
}

/// A secret signing key with its role and (for issuers) key id.
///
/// The seed is zeroized when this value is dropped (ed25519-dalek's
/// `zeroize` feature); it is never printed by `Debug`.
pub struct SecretKey {
    role: Role,
    key_id: Option<u8>,
    signing: SigningKey,
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretKey")
            .field("role", &self.role)
            .field("key_id", &self.key_id)
            .field(
                "public",
                &hex::encode(self.signing.verifying_key().as_bytes()),
            )
            .finish_non_exhaustive()
    }
}

impl SecretKey {
    /// A fresh key from the operating system's random source.
    ///
    /// Issuer keys get `key_id` (1 if none is given); other roles have none.
    pub fn generate(role: Role, key_id: Option<u8>) -> io::Result<Self> {
        let mut seed = Zeroizing::new([0u8; 32]);
        getrandom::fill(seed.as_mut()).map_err(|e| io::Error::other(e.to_string()))?;
        Ok(Self::from_seed(role, key_id, &seed))
    }

    /// A key from a known seed (test vectors, deterministic tests).
    pub fn from_seed(role: Role, key_id: Option<u8>, seed: &[u8; 32]) -> Self {
        let key_id = if role == Role::Issuer {
            Some(key_id.unwrap_or(1))
        } else {
            None
        };
        Self {
            role,
            key_id,
            signing: SigningKey::from_bytes(seed),
        }
    }

    /// The role this key was made for.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The issuer key id (issuer keys only).
    pub fn key_id(&self) -> Option<u8> {
        self.key_id
    }

    /// The ed25519 signing key.
    pub fn signing_key(&self) -> &SigningKey {
        &self.signing
    }

    /// The matching public key.
    pub fn public(&self) -> PublicKey {
        PublicKey {
            role: self.role,
            key_id: self.key_id,
            verifying: self.signing.verifying_key(),
        }
    }

    /// Writes the secret to a new 0600 file; never overwrites.
    pub fn write_new(&self, path: &Path) -> Result<(), KeyFileError> {
        let seed = Zeroizing::new(hex::encode(self.signing.as_bytes()));
        let line = Zeroizing::new(format!(
            "sonotap {}-secret {} {}\n",
            self.role,
            key_id_field(self.key_id),
            seed.as_str()
        ));
        fsutil::create_private(path, line.as_bytes()).map_err(|source| {
            if source.kind() == io::ErrorKind::AlreadyExists {
                KeyFileError::Exists { path: path.into() }
            } else {
                KeyFileError::Write {
                    path: path.into(),
                    source,
                }
            }
        })
    }

    /// Reads a secret key of the expected role, checking the file's type,
    /// owner and permissions, and that its directory is private.
    pub fn read(path: &Path, role: Role) -> Result<Self, KeyFileError> {
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        fsutil::check_private_dir(dir).map_err(|source| KeyFileError::DirTooOpen {
            path: path.into(),
            source,
        })?;
        let text =
            fsutil::read_private_file_capped(path, MAX_KEY_FILE_BYTES).map_err(read_error)?;
        let line = parse_line(path, &text, role, Kind::Secret)?;
        let mut seed = Zeroizing::new([0u8; 32]);
        hex::decode_to_slice(line.hex, seed.as_mut()).map_err(|_| KeyFileError::Malformed {
            path: path.into(),
            why: "the key is not 64 hex digits".into(),
        })?;
        Ok(Self::from_seed(role, line.key_id, &seed))
    }
}

/// A public key with its role and (for issuers) key id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublicKey {
    role: Role,
    key_id: Option<u8>,
    verifying: VerifyingKey,
}

impl PublicKey {
    /// Builds a public key from raw bytes, refusing bytes that are not a curve point.
    pub fn from_bytes(role: Role, key_id: Option<u8>, bytes: &[u8; 32]) -> Result<Self, String> {
        let verifying = VerifyingKey::from_bytes(bytes)
            .map_err(|_| "not a valid ed25519 public key".to_string())?;
        if verifying.is_weak() {
            return Err("a weak (small-order) ed25519 public key".into());
        }
        let key_id = if role == Role::Issuer {
            Some(key_id.unwrap_or(1))
        } else {
            None
        };
        Ok(Self {
            role,
            key_id,
            verifying,
        })
    }

    /// The role this key belongs to.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The issuer key id (issuer keys only).
    pub fn key_id(&self) -> Option<u8> {
        self.key_id
    }

    /// The ed25519 verifying key.
    pub fn verifying_key(&self) -> &VerifyingKey {
        &self.verifying
    }

    /// The 32 raw bytes.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.verifying.to_bytes()
    }

    /// The key file's text.
    pub fn to_line(&self) -> String {
        format!(
            "sonotap {}-public {} {}\n",
            self.role,
            key_id_field(self.key_id),
            hex::encode(self.verifying.as_bytes())
        )
    }

    /// Writes the public key file (0644; replaces an older copy atomically).
    pub fn write(&self, path: &Path) -> Result<(), KeyFileError> {
        fsutil::replace_atomic(path, self.to_line().as_bytes(), 0o644).map_err(|source| {
            KeyFileError::Write {
                path: path.into(),
                source,
            }
        })
    }

    /// Reads a public key of the expected role.
    pub fn read(path: &Path, role: Role) -> Result<Self, KeyFileError> {
        let text =
            fsutil::read_regular_file_capped(path, MAX_KEY_FILE_BYTES).map_err(read_error)?;
        let line = parse_line(path, &text, role, Kind::Public)?;
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(line.hex, &mut bytes).map_err(|_| KeyFileError::Malformed {
            path: path.into(),
            why: "the key is not 64 hex digits".into(),
        })?;
        Self::from_bytes(role, line.key_id, &bytes).map_err(|why| KeyFileError::Malformed {
            path: path.into(),
            why,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Secret,
    Public,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Secret => "secret",
            Kind::Public => "public",
        }
    }
}

struct Line<'a> {
    key_id: Option<u8>,
    hex: &'a str,
}

/// "an issuer public key", "a wallet secret key": for error messages.
fn describe(role: Role, kind: Kind) -> String {
    let article = if role == Role::Issuer { "an" } else { "a" };
    format!("{article} {role} {} key", kind.name())
}

fn key_id_field(key_id: Option<u8>) -> String {
    key_id.map_or_else(|| "-".to_string(), |id| id.to_string())
}

fn read_error(e: ReadError) -> KeyFileError {
    match e {
        ReadError::Missing { path } => KeyFileError::Missing { path },
        ReadError::Io { path, source } => KeyFileError::Unreadable { path, source },
        ReadError::TooOpen { path, mode } => KeyFileError::TooOpen { path, mode },
        other => KeyFileError::Refused(other),
    }
}

fn parse_line<'a>(
    path: &Path,
    text: &'a [u8],
    role: Role,
    kind: Kind,
) -> Result<Line<'a>, KeyFileError> {
    let malformed = |why: &str| KeyFileError::Malformed {
        path: path.into(),
        why: why.into(),
    };
    let text = std::str::from_utf8(text).map_err(|_| malformed("it is not text"))?;
    let mut fields = text.split_ascii_whitespace();
    let (Some("sonotap"), Some(what), Some(key_id), Some(hex), None) = (
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
    ) else {
        return Err(malformed(
            "expected one line `sonotap <role>-<secret|public> <key id|-> <hex>`",
        ));
    };
    let (found_role, found_kind) = what
        .split_once('-')
        .and_then(|(r, k)| {
            let kind = match k {
                "secret" => Kind::Secret,
                "public" => Kind::Public,
                _ => return None,
            };
            Some((Role::from_name(r)?, kind))
        })
        .ok_or_else(|| malformed(&format!("unknown key type {what:?}")))?;
    if (found_role, found_kind) != (role, kind) {
        return Err(KeyFileError::WrongType {
            path: path.into(),
            found: describe(found_role, found_kind),
            expected: describe(role, kind),
        });
    }
    let key_id = match (role, key_id) {
        (Role::Issuer, id) => Some(
            id.parse::<u8>()
                .map_err(|_| malformed("an issuer key needs a key id from 0 to 255"))?,
        ),
        (_, "-") => None,
        (_, _) => return Err(malformed("only issuer keys have a key id")),
    };
    Ok(Line { key_id, hex })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn secret_key_round_trips_with_0600() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("issuer.key");
        let key = SecretKey::generate(Role::Issuer, Some(7)).expect("random");
        key.write_new(&path).expect("write");
        let mode = fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let back = SecretKey::read(&path, Role::Issuer).expect("read");
        assert_eq!(back.public(), key.public());
        assert_eq!(back.key_id(), Some(7));
    }

    #[test]
    fn secret_key_readable_by_others_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("wallet.key");
        SecretKey::generate(Role::Wallet, None)
            .expect("random")
            .write_new(&path)
            .expect("write");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).expect("chmod");
        let err = SecretKey::read(&path, Role::Wallet).expect_err("too open");
        assert!(
            matches!(err, KeyFileError::TooOpen { mode: 0o644, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("chmod 600"));
    }

    #[test]
    fn key_file_of_another_role_is_named_in_the_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("wallet.pub");
        SecretKey::generate(Role::Wallet, None)
            .expect("random")
            .public()
            .write(&path)
            .expect("write");
        let err = PublicKey::read(&path, Role::Issuer).expect_err("wrong role");
        assert_eq!(
            err.to_string(),
            format!(
                "key file {} holds a wallet public key, expected an issuer public key",
                path.display()
            )
        );
        let err = SecretKey::read(&path, Role::Wallet).expect_err("public, not secret");
        assert!(matches!(
            err,
            KeyFileError::TooOpen { .. } | KeyFileError::WrongType { .. }
        ));
    }

    #[test]
    fn missing_and_garbage_key_files_get_specific_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("nope.pub");
        assert!(matches!(
            PublicKey::read(&missing, Role::Reader),
            Err(KeyFileError::Missing { .. })
        ));
        let garbage = dir.path().join("garbage.pub");
        fs::write(&garbage, b"\xff\xfe not a key").expect("write");
        assert!(matches!(
            PublicKey::read(&garbage, Role::Reader),
            Err(KeyFileError::Malformed { .. })
        ));
        let short = dir.path().join("short.pub");
        fs::write(&short, "sonotap reader-public - abcd\n").expect("write");
        let err = PublicKey::read(&short, Role::Reader).expect_err("short hex");
        assert!(err.to_string().contains("64 hex digits"), "{err}");
    }

    #[test]
    fn existing_secret_is_never_overwritten() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("reader.key");
        let first = SecretKey::generate(Role::Reader, None).expect("random");
        first.write_new(&path).expect("write");
        let second = SecretKey::generate(Role::Reader, None).expect("random");
        assert!(matches!(
            second.write_new(&path),
            Err(KeyFileError::Exists { .. })
        ));
        let back = SecretKey::read(&path, Role::Reader).expect("read");
        assert_eq!(back.public(), first.public());
    }

    #[test]
    fn debug_output_never_shows_the_seed() {
        let key = SecretKey::from_seed(Role::Wallet, None, &[0x42; 32]);
        assert!(!format!("{key:?}").contains(&"42".repeat(32)));
    }

    #[test]
    fn issue13_11_a_key_file_symlinked_to_a_fifo_is_refused_without_hanging() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fifo = dir.path().join("fifo");
        let status = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .expect("mkfifo");
        assert!(status.success());
        fs::set_permissions(&fifo, fs::Permissions::from_mode(0o600)).expect("chmod");
        let key = dir.path().join("reader.key");
        std::os::unix::fs::symlink(&fifo, &key).expect("symlink");
        let public = dir.path().join("issuer.pub");
        std::os::unix::fs::symlink(&fifo, &public).expect("symlink");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let secret = SecretKey::read(&key, Role::Reader).map(|_| ());
            let public = PublicKey::read(&public, Role::Issuer).map(|_| ());
            let _ = tx.send((secret, public));
        });
        let (secret, public) = rx
            .recv_timeout(std::time::Duration::from_secs(20))
            .expect("reading a key must not block");
        for err in [secret.expect_err("fifo"), public.expect_err("fifo")] {
            assert!(matches!(err, KeyFileError::Refused(_)), "{err}");
            assert!(
                err.to_string().contains("is a FIFO, not a regular file"),
                "{err}"
            );
        }
    }

    #[test]
    fn issue13_13_a_secret_key_in_a_directory_others_can_write_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("reader.key");
        SecretKey::generate(Role::Reader, None)
            .expect("random")
            .write_new(&path)
            .expect("write");
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o777)).expect("chmod");
        let err = SecretKey::read(&path, Role::Reader).expect_err("0777 dir");
        assert!(matches!(err, KeyFileError::DirTooOpen { .. }), "{err}");
        assert!(err.to_string().contains("chmod 700"), "{err}");
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
        SecretKey::read(&path, Role::Reader).expect("0755 is fine");
    }
}
