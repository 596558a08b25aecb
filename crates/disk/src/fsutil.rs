//! Files in and out: private files created 0600, atomic replacement with
//! fsync, and bounded reads of files that come from outside.
//!
//! A wallet's counter or a key must never be half-written by a crash, and a
//! secret must never be readable by another user, not even for a moment.
//! A file given to sonotap (a token, a batch file, a key, a configuration)
//! may be anything a path can name: a FIFO nobody writes, `/dev/zero`, a
//! symlink to either, or a file that grows while it is read. Reading one
//! never blocks on open and never takes more than its cap in memory.

use std::fs::{self, File, Metadata, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use thiserror::Error;
use zeroize::Zeroizing;

/// Why a file from outside was not read.
///
/// Each message starts with the path, so a caller can put what the file is
/// in front: "token file {error}", "key file {error}".
#[derive(Debug, Error)]
pub enum ReadError {
    /// No file at that path.
    #[error("{path} does not exist")]
    Missing {
        /// The path looked at.
        path: PathBuf,
    },
    /// The OS refused (permissions, I/O).
    #[error("{path} cannot be read: {source}")]
    Io {
        /// The path looked at.
        path: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
    /// A FIFO, a device, a directory or a socket: reading it could block
    /// forever or never end.
    #[error("{path} is {kind}, not a regular file; give a regular file")]
    NotRegular {
        /// The path looked at.
        path: PathBuf,
        /// "a FIFO", "a character device", ...
        kind: &'static str,
    },
    /// More bytes than such a file can hold.
    #[error("{path} holds more than {cap} bytes, more than such a file can hold")]
    TooLarge {
        /// The path looked at.
        path: PathBuf,
        /// The most that is read.
        cap: u64,
    },
    /// A private file that group or others may read or write.
    #[error("{path} has permissions {mode:04o}; it must be readable by its owner only (chmod 600)")]
    TooOpen {
        /// The path looked at.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A private file owned by another user: that user can read it, and
    /// replace it at will.
    #[error(
        "{path} is owned by uid {owner}, not by the user running sonotap (uid {user}); \
         chown it to uid {user}, or run sonotap as its owner"
    )]
    ForeignOwner {
        /// The path looked at.
        path: PathBuf,
        /// The file's owner.
        owner: u32,
        /// The effective uid of this process.
        user: u32,
    },
}

/// Why a data directory was refused.
#[derive(Debug, Error)]
pub enum DirError {
    /// Group or others may create, rename or delete files in it, so they
    /// could replace a key or a database.
    #[error(
        "directory {path} has permissions {mode:04o}: group or others can replace the files in it; \
         make it private (chmod 700 {path}); sonotap never changes the mode of an existing directory"
    )]
    Writable {
        /// The directory.
        path: PathBuf,
        /// Its permission bits (with the sticky bit).
        mode: u32,
    },
    /// The path exists and is not a directory.
    #[error("{path} exists and is not a directory")]
    NotDirectory {
        /// The path.
        path: PathBuf,
    },
    /// The OS refused.
    #[error("directory {path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
}

/// Creates `path` with mode 0600 and writes `bytes`, refusing to overwrite.
pub fn create_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    // The mode given to open() is filtered by the umask; set it explicitly.
    file.set_permissions(fs::Permissions::from_mode(0o600))?;
    file.write_all(bytes)?;
    file.sync_all()?;
    sync_parent(path)
}

/// Renames `from` to `to` (in the same directory) and syncs the directory,
/// so that the new name survives a power cut.
pub fn rename_durably(from: &Path, to: &Path) -> io::Result<()> {
    fs::rename(from, to)?;
    sync_parent(to)
}

/// Replaces `path` with `bytes` atomically: a crash leaves the old or the new
/// content, never a mix. The file gets `mode`.
pub fn replace_atomic(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let file_name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let mut tmp_name = file_name.to_os_string();
    tmp_name.push(format!(".tmp{}", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        sync_parent(path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Removes the temporaries [`replace_atomic`] leaves for `path` when it is
/// cut short (`<name>.tmp<pid>` beside it). Only for a caller that knows no
/// other process is replacing `path` at the same time.
pub fn remove_stale_temporaries(path: &Path) -> io::Result<()> {
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Ok(());
    };
    let parent = if parent.as_os_str().is_empty() {
        Path::new(".")
    } else {
        parent
    };
    let mut prefix = name.to_os_string();
    prefix.push(".tmp");
    let prefix = prefix.as_encoded_bytes();
    let entries = match fs::read_dir(parent) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let file_name = entry.file_name();
        let bytes = file_name.as_encoded_bytes();
        let temporary = bytes.len() > prefix.len()
            && bytes.starts_with(prefix)
            && bytes[prefix.len()..].iter().all(u8::is_ascii_digit);
        if temporary {
            match fs::remove_file(entry.path()) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
    }
    Ok(())
}

/// Reads the regular file at `path`, at most `cap` bytes, refusing anything else.
///
/// The file is opened with `O_NONBLOCK`, so opening a FIFO nobody writes
/// cannot hang; the opened descriptor (not the path, which could be swapped
/// in between) must be a regular file; and the bound is on bytes actually
/// read, not on the size the file claims.
pub fn read_regular_file_capped(path: &Path, cap: u64) -> Result<Vec<u8>, ReadError> {
    let (file, meta) = open_regular(path)?;
    refuse_claimed_size(path, &meta, cap)?;
    let mut bytes = Vec::new();
    read_capped(path, file, cap, &mut bytes)?;
    Ok(bytes)
}

/// [`read_regular_file_capped`] for secrets: the file must also be owned by
/// the effective user and closed to group and others. The bytes are zeroized
/// when dropped (read into one allocation of `cap + 1`, never copied on growth).
pub fn read_private_file_capped(path: &Path, cap: u64) -> Result<Zeroizing<Vec<u8>>, ReadError> {
    let (file, meta) = open_regular(path)?;
    let user = effective_uid();
    if meta.uid() != user {
        return Err(ReadError::ForeignOwner {
            path: path.into(),
            owner: meta.uid(),
            user,
        });
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(ReadError::TooOpen {
            path: path.into(),
            mode: mode & 0o777,
        });
    }
    refuse_claimed_size(path, &meta, cap)?;
    let capacity = usize::try_from(cap.saturating_add(1)).unwrap_or(usize::MAX);
    let mut bytes = Zeroizing::new(Vec::with_capacity(capacity));
    read_capped(path, file, cap, &mut bytes)?;
    Ok(bytes)
}

/// Refuses a directory that group or others may write (even with the sticky
/// bit: a private directory is the simple rule). Never changes its mode.
pub fn check_private_dir(path: &Path) -> Result<(), DirError> {
    let meta = fs::metadata(path).map_err(|source| DirError::Io {
        path: path.into(),
        source,
    })?;
    check_dir_meta(path, &meta)
}

/// Creates the data directory `path` (and its parents) mode 0700, or accepts
/// an existing one that group and others cannot write; the mode of a
/// directory that already existed is never changed.
///
/// The error is an `io::Error` (kind `PermissionDenied` for a directory
/// others can write) whose message is the [`DirError`].
pub fn create_private_dir(path: &Path) -> io::Result<()> {
    make_private_dir(path).map_err(|e| {
        let kind = match &e {
            DirError::Io { source, .. } => source.kind(),
            DirError::Writable { .. } => io::ErrorKind::PermissionDenied,
            DirError::NotDirectory { .. } => io::ErrorKind::AlreadyExists,
        };
        io::Error::new(kind, e)
    })
}

fn make_private_dir(path: &Path) -> Result<(), DirError> {
    let io_err = |source| DirError::Io {
        path: path.into(),
        source,
    };
    match fs::symlink_metadata(path) {
        Ok(_) => {
            check_private_dir(path)?;
            // Made by a run that was killed before it made it durable: a
            // power cut would still take it, and all this run puts in it.
            return sync_parent_if_allowed(path).map_err(io_err);
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(e)),
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_dirs_durably(parent).map_err(io_err)?;
    }
    match fs::DirBuilder::new().mode(0o700).create(path) {
        // Created here: the umask may have narrowed 0700; set it exactly.
        Ok(()) => {
            fs::set_permissions(path, fs::Permissions::from_mode(0o700)).map_err(io_err)?;
            // Its name in its parent survives a power cut only once the
            // parent is synced (the power-cut tests lost a whole hub so).
            sync_parent_if_allowed(path).map_err(io_err)
        }
        // Made by someone else in between: judge it as an existing one.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            check_private_dir(path)?;
            sync_parent_if_allowed(path).map_err(io_err)
        }
        Err(e) => Err(io_err(e)),
    }
}

/// `create_dir_all`, with each directory it makes synced into its parent.
fn create_dirs_durably(dir: &Path) -> io::Result<()> {
    let mut missing = Vec::new();
    let mut at = dir;
    while !at.as_os_str().is_empty() && !at.exists() {
        missing.push(at.to_path_buf());
        match at.parent() {
            Some(parent) => at = parent,
            None => break,
        }
    }
    fs::create_dir_all(dir)?;
    for made in missing.iter().rev() {
        sync_parent_if_allowed(made)?;
    }
    Ok(())
}

/// [`sync_parent`], unless the parent cannot be opened (a parent this user
/// may search but not list, such as 0711) or synced (a filesystem without
/// directory fsync): then there is nothing this process can do about it.
fn sync_parent_if_allowed(path: &Path) -> io::Result<()> {
    match sync_parent(path) {
        Err(e)
            if e.kind() == io::ErrorKind::PermissionDenied
                || e.raw_os_error() == Some(libc::EINVAL) =>
        {
            Ok(())
        }
        result => result,
    }
}

fn check_dir_meta(path: &Path, meta: &Metadata) -> Result<(), DirError> {
    if !meta.is_dir() {
        return Err(DirError::NotDirectory { path: path.into() });
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(DirError::Writable {
            path: path.into(),
            mode,
        });
    }
    Ok(())
}

/// Opens the regular file at `path` for reading, for a caller that reads it
/// as a stream with bounds of its own (an image decoder): never blocks on
/// open, refuses anything but a regular file.
pub fn open_regular_file(path: &Path) -> Result<File, ReadError> {
    open_regular(path).map(|(file, _)| file)
}

/// Opens `path` for reading without blocking and checks, on the opened
/// descriptor, that it is a regular file.
fn open_regular(path: &Path) -> Result<(File, Metadata), ReadError> {
    let file = OpenOptions::new()
        .read(true)
        // A FIFO without a writer would block open(2); a terminal would
        // become our controlling terminal. For a regular file, O_NONBLOCK
        // changes nothing, so it can stay set.
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => ReadError::Missing { path: path.into() },
            _ => ReadError::Io {
                path: path.into(),
                source: e,
            },
        })?;
    let meta = file.metadata().map_err(|source| ReadError::Io {
        path: path.into(),
        source,
    })?;
    let kind = meta.file_type();
    let what = if kind.is_file() {
        return Ok((file, meta));
    } else if kind.is_dir() {
        "a directory"
    } else if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_char_device() {
        "a character device"
    } else if kind.is_block_device() {
        "a block device"
    } else if kind.is_socket() {
        "a socket"
    } else {
        "not a file"
    };
    Err(ReadError::NotRegular {
        path: path.into(),
        kind: what,
    })
}

/// A file that says it is over the cap is refused unread (a sparse file of
/// a terabyte costs nothing to make). The size is trusted only to refuse:
/// what is accepted is bounded by [`read_capped`].
fn refuse_claimed_size(path: &Path, meta: &Metadata, cap: u64) -> Result<(), ReadError> {
    if meta.len() > cap {
        return Err(ReadError::TooLarge {
            path: path.into(),
            cap,
        });
    }
    Ok(())
}

/// Reads at most `cap + 1` bytes into `into`; more than `cap` is refused.
fn read_capped(path: &Path, file: File, cap: u64, into: &mut Vec<u8>) -> Result<(), ReadError> {
    file.take(cap.saturating_add(1))
        .read_to_end(into)
        .map_err(|source| ReadError::Io {
            path: path.into(),
            source,
        })?;
    if into.len() as u64 > cap {
        return Err(ReadError::TooLarge {
            path: path.into(),
            cap,
        });
    }
    Ok(())
}

/// The effective uid of this process, which owns the files it creates.
fn effective_uid() -> u32 {
    // SAFETY: geteuid(2) takes no arguments, touches no memory and cannot fail.
    unsafe { libc::geteuid() }
}

/// Makes a rename or a new file in the parent directory durable.
fn sync_parent(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => File::open(parent)?.sync_all(),
        _ => File::open(".")?.sync_all(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_private_dir_is_made_with_its_missing_parents() {
        let scratch = tempfile::tempdir().unwrap();
        let deep = scratch.path().join("a/b/c");
        create_private_dir(&deep).unwrap();
        assert!(deep.is_dir());
        assert_eq!(fs::metadata(&deep).unwrap().mode() & 0o777, 0o700);
        // Again on the one that exists: judged and synced, not changed.
        create_private_dir(&deep).unwrap();
        assert_eq!(fs::metadata(&deep).unwrap().mode() & 0o777, 0o700);
    }

    #[test]
    fn private_files_are_0600_and_never_overwritten() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("secret");
        create_private(&path, b"one").expect("create");
        let mode = fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let again = create_private(&path, b"two").expect_err("must refuse");
        assert_eq!(again.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(fs::read(&path).expect("read"), b"one");
    }

    #[test]
    fn issue13_16_stale_temporaries_of_one_file_are_removed_and_nothing_else() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("reader.toml");
        for name in [
            "reader.toml.tmp12",
            "reader.toml.tmp",
            "reader.toml.tmpx",
            "reader.toml",
        ] {
            fs::write(dir.path().join(name), b"x").expect("write");
        }
        remove_stale_temporaries(&path).expect("clean");
        let mut left: Vec<String> = fs::read_dir(dir.path())
            .expect("ls")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["reader.toml", "reader.toml.tmp", "reader.toml.tmpx"]);
    }

    #[test]
    fn atomic_replace_leaves_no_temporary_behind() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state");
        replace_atomic(&path, b"a", 0o600).expect("first");
        replace_atomic(&path, b"bb", 0o644).expect("second");
        assert_eq!(fs::read(&path).expect("read"), b"bb");
        assert_eq!(fs::read_dir(dir.path()).expect("ls").count(), 1);
    }

    fn mkfifo(path: &Path) {
        let status = std::process::Command::new("mkfifo")
            .arg(path)
            .status()
            .expect("mkfifo");
        assert!(status.success());
    }

    /// Runs `f` on another thread and fails if it does not return within
    /// a generous bound (the bug was a hang, forever).
    fn within<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(f());
        });
        rx.recv_timeout(std::time::Duration::from_secs(20))
            .expect("the read must not block")
    }

    #[test]
    fn issue13_11_a_fifo_nobody_writes_is_refused_without_blocking() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fifo = dir.path().join("fifo");
        mkfifo(&fifo);
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&fifo, &link).expect("symlink");
        for path in [fifo, link] {
            let err = within(move || read_regular_file_capped(&path, 1024)).expect_err("fifo");
            assert!(
                matches!(err, ReadError::NotRegular { kind: "a FIFO", .. }),
                "{err}"
            );
            assert!(err.to_string().contains("not a regular file"), "{err}");
        }
    }

    #[test]
    fn issue13_11_dev_zero_is_refused_not_read_forever() {
        let err = within(|| read_regular_file_capped(Path::new("/dev/zero"), 1 << 30))
            .expect_err("a device");
        assert!(
            matches!(
                err,
                ReadError::NotRegular {
                    kind: "a character device",
                    ..
                }
            ),
            "{err}"
        );
        let err = read_regular_file_capped(Path::new("/"), 1024).expect_err("a directory");
        assert!(matches!(
            err,
            ReadError::NotRegular {
                kind: "a directory",
                ..
            }
        ));
    }

    #[test]
    fn issue13_11_the_cap_counts_bytes_read_not_the_size_claimed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f");
        fs::write(&path, [7u8; 100]).expect("write");
        assert_eq!(
            read_regular_file_capped(&path, 100)
                .expect("at the cap")
                .len(),
            100
        );
        let err = read_regular_file_capped(&path, 99).expect_err("over the cap");
        assert!(matches!(err, ReadError::TooLarge { cap: 99, .. }), "{err}");
        // /proc files claim size 0 and hold more: the cap still holds.
        let err = read_regular_file_capped(Path::new("/proc/self/maps"), 8).expect_err("cap");
        assert!(matches!(err, ReadError::TooLarge { cap: 8, .. }), "{err}");
        assert!(matches!(
            read_regular_file_capped(&dir.path().join("nope"), 8),
            Err(ReadError::Missing { .. })
        ));
    }

    #[test]
    fn issue13_13_private_files_must_be_closed_to_others() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("secret");
        create_private(&path, b"s").expect("create");
        assert_eq!(&*read_private_file_capped(&path, 16).expect("0600"), b"s");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).expect("chmod");
        let err = read_private_file_capped(&path, 16).expect_err("0640");
        assert!(
            matches!(err, ReadError::TooOpen { mode: 0o640, .. }),
            "{err}"
        );
    }

    #[test]
    fn issue13_13_a_private_file_owned_by_another_user_is_refused() {
        if effective_uid() != 0 {
            eprintln!("skipped: needs root to give a file to another user");
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("secret");
        create_private(&path, b"s").expect("create");
        std::os::unix::fs::chown(&path, Some(65534), None).expect("chown");
        let err = read_private_file_capped(&path, 16).expect_err("foreign");
        assert!(
            matches!(
                err,
                ReadError::ForeignOwner {
                    owner: 65534,
                    user: 0,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("chown"), "{err}");
    }

    #[test]
    fn issue13_13_an_existing_directory_keeps_its_mode() {
        let dir = tempfile::tempdir().expect("tempdir");
        let shared = dir.path().join("shared");
        fs::create_dir(&shared).expect("mkdir");
        fs::set_permissions(&shared, fs::Permissions::from_mode(0o1777)).expect("chmod");
        let err = create_private_dir(&shared).expect_err("world-writable");
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied);
        assert!(err.to_string().contains("chmod 700"), "{err}");
        let mode = fs::metadata(&shared).expect("meta").permissions().mode() & 0o7777;
        assert_eq!(
            mode, 0o1777,
            "the mode of an existing directory is never changed"
        );

        let open = dir.path().join("open");
        fs::create_dir(&open).expect("mkdir");
        fs::set_permissions(&open, fs::Permissions::from_mode(0o755)).expect("chmod");
        create_private_dir(&open).expect("0755 is not writable by others");
        let mode = fs::metadata(&open).expect("meta").permissions().mode() & 0o7777;
        assert_eq!(mode, 0o755);

        let new = dir.path().join("a/b");
        create_private_dir(&new).expect("create");
        let mode = fs::metadata(&new).expect("meta").permissions().mode() & 0o7777;
        assert_eq!(mode, 0o700);

        let file = dir.path().join("file");
        fs::write(&file, b"").expect("write");
        assert!(create_private_dir(&file).is_err());
    }
}
