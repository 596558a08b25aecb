//! The disk as a power cut sees it: every file and directory has what
//! programs see now (`live`) and what would survive a cut (`synced`).
//!
//! The rule is the strictest a POSIX disk may follow: a file's bytes, size
//! and mode survive as of its last `fsync` (or `fdatasync`); a name — made
//! by create, mkdir, rename or link, or removed by unlink — survives as of
//! the last `fsync` of the directory holding it. Nothing else survives.
//! Real disks often keep more, and some can tear a write, which this does
//! not model: what it shows is what a program that syncs too little loses.
//! Two liberties, both on the side of keeping: `fdatasync` keeps the mode
//! and owner with the bytes, and a rename between two directories of which
//! only one was synced comes back under both names or neither.
//! No I/O: [`crate::mount`] drives it from the kernel's requests.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

/// An inode number; 1 is the root directory.
pub type Ino = u64;

/// The root directory's inode number.
pub const ROOT: Ino = 1;

/// Why an operation failed, as the errno the kernel passes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No such file or directory.
    NotFound,
    /// The name exists already.
    Exists,
    /// A directory was needed.
    NotDir,
    /// A file was needed.
    IsDir,
    /// The directory still holds names.
    NotEmpty,
    /// Not supported here (exchanging or whiteout renames, offsets past
    /// what memory can hold); links and symlinks are not offered at all.
    Unsupported,
}

impl Refusal {
    /// The errno for the kernel.
    pub fn errno(self) -> i32 {
        match self {
            Refusal::NotFound => libc::ENOENT,
            Refusal::Exists => libc::EEXIST,
            Refusal::NotDir => libc::ENOTDIR,
            Refusal::IsDir => libc::EISDIR,
            Refusal::NotEmpty => libc::ENOTEMPTY,
            Refusal::Unsupported => libc::EPERM,
        }
    }
}

/// A file's bytes or a directory's names.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Body {
    /// A regular file's bytes.
    File(Vec<u8>),
    /// A directory's names and their inodes.
    Dir(BTreeMap<OsString, Ino>),
}

/// One state of an inode: its body and the metadata a sync keeps with it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Version {
    body: Body,
    /// Permission bits (the low 12 bits of the mode).
    perm: u16,
    uid: u32,
    gid: u32,
}

impl Version {
    fn empty_like(&self) -> Version {
        Version {
            body: match self.body {
                Body::File(_) => Body::File(Vec::new()),
                Body::Dir(_) => Body::Dir(BTreeMap::new()),
            },
            ..self.clone()
        }
    }
}

#[derive(Debug, Clone)]
struct Node {
    live: Version,
    /// What a cut leaves; a node made since its directory's last sync
    /// starts empty.
    synced: Version,
}

/// What [`Disk::attr`] reports of an inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attr {
    /// Its number.
    pub ino: Ino,
    /// True for a directory.
    pub dir: bool,
    /// Bytes (files) or names (directories).
    pub size: u64,
    /// Permission bits.
    pub perm: u16,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
}

/// A whole disk: every inode, live and synced.
#[derive(Debug, Clone)]
pub struct Disk {
    nodes: BTreeMap<Ino, Node>,
    next: Ino,
}

impl Default for Disk {
    fn default() -> Self {
        Self::new()
    }
}

impl Disk {
    /// An empty disk: a root directory (0755, root's) that is already durable.
    pub fn new() -> Disk {
        let root = Version {
            body: Body::Dir(BTreeMap::new()),
            perm: 0o755,
            uid: 0,
            gid: 0,
        };
        Disk {
            nodes: BTreeMap::from([(
                ROOT,
                Node {
                    live: root.clone(),
                    synced: root,
                },
            )]),
            next: ROOT + 1,
        }
    }

    /// A durable copy of the real directory tree at `path` (files and
    /// directories only, with their modes and owners): the state a test
    /// starts from.
    pub fn import(path: &Path) -> io::Result<Disk> {
        let mut disk = Disk::new();
        disk.import_into(ROOT, path)?;
        disk.sync_everything();
        Ok(disk)
    }

    fn import_into(&mut self, dir: Ino, path: &Path) -> io::Result<()> {
        for entry in fs::read_dir(path)? {
            let entry = entry?;
            let meta = entry.metadata()?;
            let perm = (meta.permissions().mode() & 0o7777) as u16;
            let name = entry.file_name();
            if meta.is_dir() {
                let ino = self
                    .mkdir(dir, &name, perm, meta.uid(), meta.gid())
                    .map_err(refused)?;
                self.import_into(ino, &entry.path())?;
            } else if meta.is_file() {
                let ino = self
                    .create(dir, &name, perm, meta.uid(), meta.gid())
                    .map_err(refused)?;
                self.write(ino, 0, &fs::read(entry.path())?)
                    .map_err(refused)?;
            }
        }
        Ok(())
    }

    fn sync_everything(&mut self) {
        for node in self.nodes.values_mut() {
            node.synced = node.live.clone();
        }
    }

    /// The disk as it is found when power comes back: every inode as of
    /// its last sync, and only the inodes a synced directory still names.
    pub fn after_cut(&self) -> Disk {
        let mut nodes = BTreeMap::new();
        let mut pending = vec![ROOT];
        while let Some(ino) = pending.pop() {
            let Some(node) = self.nodes.get(&ino) else {
                continue;
            };
            if nodes.contains_key(&ino) {
                continue;
            }
            if let Body::Dir(entries) = &node.synced.body {
                pending.extend(entries.values().copied());
            }
            nodes.insert(
                ino,
                Node {
                    live: node.synced.clone(),
                    synced: node.synced.clone(),
                },
            );
        }
        Disk {
            nodes,
            next: self.next,
        }
    }

    /// The inode named `name` in directory `dir`.
    pub fn lookup(&self, dir: Ino, name: &OsStr) -> Result<Ino, Refusal> {
        self.entries(dir)?
            .get(name)
            .copied()
            .ok_or(Refusal::NotFound)
    }

    /// What `stat` says of `ino`.
    pub fn attr(&self, ino: Ino) -> Result<Attr, Refusal> {
        let node = self.nodes.get(&ino).ok_or(Refusal::NotFound)?;
        let (dir, size) = match &node.live.body {
            Body::File(data) => (false, data.len() as u64),
            Body::Dir(entries) => (true, entries.len() as u64),
        };
        Ok(Attr {
            ino,
            dir,
            size,
            perm: node.live.perm,
            uid: node.live.uid,
            gid: node.live.gid,
        })
    }

    /// The names in directory `dir`, sorted.
    pub fn list(&self, dir: Ino) -> Result<Vec<(OsString, Ino, bool)>, Refusal> {
        Ok(self
            .entries(dir)?
            .iter()
            .map(|(name, ino)| {
                let is_dir = matches!(
                    self.nodes.get(ino).map(|n| &n.live.body),
                    Some(Body::Dir(_))
                );
                (name.clone(), *ino, is_dir)
            })
            .collect())
    }

    /// A new empty file `name` in `dir`.
    pub fn create(
        &mut self,
        dir: Ino,
        name: &OsStr,
        perm: u16,
        uid: u32,
        gid: u32,
    ) -> Result<Ino, Refusal> {
        self.make(dir, name, Body::File(Vec::new()), perm, uid, gid)
    }

    /// A new empty directory `name` in `dir`.
    pub fn mkdir(
        &mut self,
        dir: Ino,
        name: &OsStr,
        perm: u16,
        uid: u32,
        gid: u32,
    ) -> Result<Ino, Refusal> {
        self.make(dir, name, Body::Dir(BTreeMap::new()), perm, uid, gid)
    }

    fn make(
        &mut self,
        dir: Ino,
        name: &OsStr,
        body: Body,
        perm: u16,
        uid: u32,
        gid: u32,
    ) -> Result<Ino, Refusal> {
        if self.entries(dir)?.contains_key(name) {
            return Err(Refusal::Exists);
        }
        let ino = self.next;
        self.next += 1;
        let live = Version {
            body,
            perm,
            uid,
            gid,
        };
        let synced = live.empty_like();
        self.nodes.insert(ino, Node { live, synced });
        self.entries_mut(dir)?.insert(name.to_owned(), ino);
        Ok(ino)
    }

    /// Removes file `name` from `dir`.
    pub fn unlink(&mut self, dir: Ino, name: &OsStr) -> Result<(), Refusal> {
        let ino = self.lookup(dir, name)?;
        if self.attr(ino)?.dir {
            return Err(Refusal::IsDir);
        }
        self.entries_mut(dir)?.remove(name);
        Ok(())
    }

    /// Removes empty directory `name` from `dir`.
    pub fn rmdir(&mut self, dir: Ino, name: &OsStr) -> Result<(), Refusal> {
        let ino = self.lookup(dir, name)?;
        if !self.entries(ino)?.is_empty() {
            return Err(Refusal::NotEmpty);
        }
        self.entries_mut(dir)?.remove(name);
        Ok(())
    }

    /// Moves `name` in `dir` to `new_name` in `new_dir`, replacing a file
    /// or an empty directory there unless `no_replace`.
    pub fn rename(
        &mut self,
        dir: Ino,
        name: &OsStr,
        new_dir: Ino,
        new_name: &OsStr,
        no_replace: bool,
    ) -> Result<(), Refusal> {
        let moving = self.lookup(dir, name)?;
        let moving_is_dir = self.attr(moving)?.dir;
        if let Ok(there) = self.lookup(new_dir, new_name) {
            if there == moving {
                return Ok(());
            }
            if no_replace {
                return Err(Refusal::Exists);
            }
            match (moving_is_dir, self.attr(there)?.dir) {
                (false, true) => return Err(Refusal::IsDir),
                (true, false) => return Err(Refusal::NotDir),
                (true, true) if !self.entries(there)?.is_empty() => {
                    return Err(Refusal::NotEmpty);
                }
                _ => {}
            }
        }
        self.entries(new_dir)?;
        self.entries_mut(dir)?.remove(name);
        self.entries_mut(new_dir)?
            .insert(new_name.to_owned(), moving);
        Ok(())
    }

    /// Up to `size` bytes of file `ino` from `offset`.
    pub fn read(&self, ino: Ino, offset: u64, size: u32) -> Result<&[u8], Refusal> {
        let data = self.data(ino)?;
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(data.len());
        let end = start.saturating_add(size as usize).min(data.len());
        Ok(&data[start..end])
    }

    /// Writes `bytes` into file `ino` at `offset`, growing it with zeros.
    pub fn write(&mut self, ino: Ino, offset: u64, bytes: &[u8]) -> Result<(), Refusal> {
        let data = self.data_mut(ino)?;
        let start = usize::try_from(offset).map_err(|_| Refusal::Unsupported)?;
        let end = start.checked_add(bytes.len()).ok_or(Refusal::Unsupported)?;
        if data.len() < end {
            data.resize(end, 0);
        }
        data[start..end].copy_from_slice(bytes);
        Ok(())
    }

    /// Cuts or grows file `ino` to `size` bytes.
    pub fn truncate(&mut self, ino: Ino, size: u64) -> Result<(), Refusal> {
        let size = usize::try_from(size).map_err(|_| Refusal::Unsupported)?;
        self.data_mut(ino)?.resize(size, 0);
        Ok(())
    }

    /// Changes `ino`'s permission bits, owner or group.
    pub fn set_meta(
        &mut self,
        ino: Ino,
        perm: Option<u16>,
        uid: Option<u32>,
        gid: Option<u32>,
    ) -> Result<(), Refusal> {
        let node = self.nodes.get_mut(&ino).ok_or(Refusal::NotFound)?;
        if let Some(perm) = perm {
            node.live.perm = perm;
        }
        if let Some(uid) = uid {
            node.live.uid = uid;
        }
        if let Some(gid) = gid {
            node.live.gid = gid;
        }
        Ok(())
    }

    /// `fsync` of `ino`: a file's bytes and mode, or a directory's names,
    /// become durable.
    pub fn sync(&mut self, ino: Ino) -> Result<(), Refusal> {
        let node = self.nodes.get_mut(&ino).ok_or(Refusal::NotFound)?;
        node.synced = node.live.clone();
        Ok(())
    }

    /// The path of `ino` from the root as programs see it now, for traces;
    /// `None` once nothing names it.
    pub fn path_of(&self, ino: Ino) -> Option<String> {
        if ino == ROOT {
            return Some(String::new());
        }
        for (&dir, node) in &self.nodes {
            if let Body::Dir(entries) = &node.live.body
                && let Some((name, _)) = entries.iter().find(|(_, i)| **i == ino)
            {
                let parent = self.path_of(dir)?;
                return Some(format!("{parent}/{}", name.to_string_lossy()));
            }
        }
        None
    }

    fn entries(&self, dir: Ino) -> Result<&BTreeMap<OsString, Ino>, Refusal> {
        match &self.nodes.get(&dir).ok_or(Refusal::NotFound)?.live.body {
            Body::Dir(entries) => Ok(entries),
            Body::File(_) => Err(Refusal::NotDir),
        }
    }

    fn entries_mut(&mut self, dir: Ino) -> Result<&mut BTreeMap<OsString, Ino>, Refusal> {
        match &mut self.nodes.get_mut(&dir).ok_or(Refusal::NotFound)?.live.body {
            Body::Dir(entries) => Ok(entries),
            Body::File(_) => Err(Refusal::NotDir),
        }
    }

    fn data(&self, ino: Ino) -> Result<&Vec<u8>, Refusal> {
        match &self.nodes.get(&ino).ok_or(Refusal::NotFound)?.live.body {
            Body::File(data) => Ok(data),
            Body::Dir(_) => Err(Refusal::IsDir),
        }
    }

    fn data_mut(&mut self, ino: Ino) -> Result<&mut Vec<u8>, Refusal> {
        match &mut self.nodes.get_mut(&ino).ok_or(Refusal::NotFound)?.live.body {
            Body::File(data) => Ok(data),
            Body::Dir(_) => Err(Refusal::IsDir),
        }
    }
}

fn refused(refusal: Refusal) -> io::Error {
    io::Error::from_raw_os_error(refusal.errno())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> &OsStr {
        OsStr::new(s)
    }

    #[test]
    fn a_file_never_synced_is_gone_after_a_cut() {
        let mut disk = Disk::new();
        let f = disk.create(ROOT, name("a"), 0o600, 0, 0).unwrap();
        disk.write(f, 0, b"hello").unwrap();
        assert!(disk.after_cut().lookup(ROOT, name("a")).is_err());
    }

    #[test]
    fn a_synced_file_in_an_unsynced_directory_is_gone_after_a_cut() {
        let mut disk = Disk::new();
        let f = disk.create(ROOT, name("a"), 0o600, 0, 0).unwrap();
        disk.write(f, 0, b"hello").unwrap();
        disk.sync(f).unwrap();
        assert!(disk.after_cut().lookup(ROOT, name("a")).is_err());
        disk.sync(ROOT).unwrap();
        let after = disk.after_cut();
        let f = after.lookup(ROOT, name("a")).unwrap();
        assert_eq!(after.read(f, 0, 100).unwrap(), b"hello");
    }

    #[test]
    fn a_name_synced_before_its_bytes_comes_back_empty() {
        let mut disk = Disk::new();
        let f = disk.create(ROOT, name("a"), 0o600, 0, 0).unwrap();
        disk.sync(ROOT).unwrap();
        disk.write(f, 0, b"hello").unwrap();
        let after = disk.after_cut();
        let f = after.lookup(ROOT, name("a")).unwrap();
        assert_eq!(after.read(f, 0, 100).unwrap(), b"");
    }

    #[test]
    fn writes_after_the_last_sync_are_lost_and_the_size_with_them() {
        let mut disk = Disk::new();
        let f = disk.create(ROOT, name("a"), 0o644, 0, 0).unwrap();
        disk.write(f, 0, b"one").unwrap();
        disk.sync(f).unwrap();
        disk.sync(ROOT).unwrap();
        disk.write(f, 3, b" two").unwrap();
        disk.set_meta(f, Some(0o600), None, None).unwrap();
        let after = disk.after_cut();
        let f = after.lookup(ROOT, name("a")).unwrap();
        assert_eq!(after.read(f, 0, 100).unwrap(), b"one");
        assert_eq!(after.attr(f).unwrap().perm, 0o644);
    }

    #[test]
    fn a_rename_is_durable_only_once_its_directory_is_synced() {
        let mut disk = Disk::new();
        let old = disk.create(ROOT, name("key"), 0o600, 0, 0).unwrap();
        disk.write(old, 0, b"old").unwrap();
        disk.sync(old).unwrap();
        disk.sync(ROOT).unwrap();
        let new = disk.create(ROOT, name("key.tmp"), 0o600, 0, 0).unwrap();
        disk.write(new, 0, b"new").unwrap();
        disk.sync(new).unwrap();
        disk.rename(ROOT, name("key.tmp"), ROOT, name("key"), false)
            .unwrap();
        let before_dir_sync = disk.after_cut();
        let k = before_dir_sync.lookup(ROOT, name("key")).unwrap();
        assert_eq!(before_dir_sync.read(k, 0, 9).unwrap(), b"old");
        disk.sync(ROOT).unwrap();
        let after = disk.after_cut();
        let k = after.lookup(ROOT, name("key")).unwrap();
        assert_eq!(after.read(k, 0, 9).unwrap(), b"new");
        assert!(after.lookup(ROOT, name("key.tmp")).is_err());
    }

    #[test]
    fn an_unlink_is_undone_by_a_cut_before_the_directory_sync() {
        let mut disk = Disk::new();
        let f = disk.create(ROOT, name("a"), 0o600, 0, 0).unwrap();
        disk.write(f, 0, b"x").unwrap();
        disk.sync(f).unwrap();
        disk.sync(ROOT).unwrap();
        disk.unlink(ROOT, name("a")).unwrap();
        assert!(disk.after_cut().lookup(ROOT, name("a")).is_ok());
        disk.sync(ROOT).unwrap();
        assert!(disk.after_cut().lookup(ROOT, name("a")).is_err());
    }

    #[test]
    fn a_new_directory_needs_its_parent_synced_and_its_own_names_synced() {
        let mut disk = Disk::new();
        let d = disk.mkdir(ROOT, name("d"), 0o700, 0, 0).unwrap();
        let f = disk.create(d, name("f"), 0o600, 0, 0).unwrap();
        disk.sync(f).unwrap();
        disk.sync(ROOT).unwrap();
        let after = disk.after_cut();
        let d2 = after.lookup(ROOT, name("d")).unwrap();
        assert!(after.lookup(d2, name("f")).is_err(), "d's names unsynced");
        disk.sync(d).unwrap();
        let after = disk.after_cut();
        let d2 = after.lookup(ROOT, name("d")).unwrap();
        assert!(after.lookup(d2, name("f")).is_ok());
    }

    #[test]
    fn rename_refuses_what_posix_refuses() {
        let mut disk = Disk::new();
        disk.create(ROOT, name("f"), 0o600, 0, 0).unwrap();
        let d = disk.mkdir(ROOT, name("d"), 0o700, 0, 0).unwrap();
        disk.create(d, name("x"), 0o600, 0, 0).unwrap();
        disk.mkdir(ROOT, name("e"), 0o700, 0, 0).unwrap();
        assert_eq!(
            disk.rename(ROOT, name("f"), ROOT, name("d"), false),
            Err(Refusal::IsDir)
        );
        assert_eq!(
            disk.rename(ROOT, name("e"), ROOT, name("d"), false),
            Err(Refusal::NotEmpty)
        );
        assert_eq!(
            disk.rename(ROOT, name("f"), ROOT, name("e"), true),
            Err(Refusal::Exists)
        );
        assert_eq!(disk.rmdir(ROOT, name("d")), Err(Refusal::NotEmpty));
        assert_eq!(
            disk.rename(ROOT, name("nope"), ROOT, name("z"), false),
            Err(Refusal::NotFound)
        );
    }

    #[test]
    fn reads_past_the_end_are_short_and_writes_past_it_fill_with_zeros() {
        let mut disk = Disk::new();
        let f = disk.create(ROOT, name("f"), 0o600, 0, 0).unwrap();
        disk.write(f, 4, b"ab").unwrap();
        assert_eq!(disk.read(f, 0, 100).unwrap(), b"\0\0\0\0ab");
        assert_eq!(disk.read(f, 5, 100).unwrap(), b"b");
        assert_eq!(disk.read(f, u64::MAX, 100).unwrap(), b"");
        disk.truncate(f, 2).unwrap();
        assert_eq!(disk.attr(f).unwrap().size, 2);
    }
}
