//! Durable file writes: private files created 0600, atomic replacement with fsync.
//!
//! A wallet's counter or a key must never be half-written by a crash, and a
//! secret must never be readable by another user, not even for a moment.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

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

/// Creates a directory (and parents) that only its owner may enter.
pub fn create_private_dir(path: &Path) -> io::Result<()> {
    fs::create_dir_all(path)?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o700))
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
}
