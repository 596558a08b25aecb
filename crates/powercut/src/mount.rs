//! A [`Disk`] mounted with FUSE, with the power switch a test holds.
//!
//! Power is on until a test cuts it, at once or at an exact operation
//! (before or after the n-th write, fsync, rename… counted from the mount).
//! From the cut every request is left unanswered, as a dead machine answers
//! nothing: the processes on the disk stop at their next file operation,
//! and never learn whether the operation that was cut happened. The test
//! then kills them, [`Mounted::cut`] answers what was left waiting with
//! EIO (the processes are already dying), unmounts, and hands back the
//! disk as it is found when power comes back ([`Disk::after_cut`]).

use std::any::Any;
use std::ffi::OsStr;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use fuser::{
    BackgroundSession, Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags,
    Generation, INodeNo, LockOwner, MountOption, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate,
    ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyWrite, Request, TimeOrNow, WriteFlags,
};

use crate::disk::{Attr, Disk, Ino, Refusal};

/// What a counted operation did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpKind {
    /// A file made.
    Create,
    /// A directory made.
    Mkdir,
    /// Bytes written.
    Write,
    /// A file's size set.
    Truncate,
    /// A mode or owner changed.
    Chmod,
    /// A file synced.
    Fsync,
    /// A directory synced.
    FsyncDir,
    /// A name moved.
    Rename,
    /// A file removed.
    Unlink,
    /// A directory removed.
    Rmdir,
}

/// One counted operation: what, and on which path (as seen at the time).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Op {
    /// What it did.
    pub kind: OpKind,
    /// The path below the mount it did it to.
    pub path: String,
}

/// Whether a cut at an operation falls before it or after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    /// The operation never happens.
    Before,
    /// It happens, but its caller never hears so.
    After,
}

/// A cut at the `op`-th counted operation (0-based) since the mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trigger {
    /// Which operation.
    pub op: u64,
    /// Before or after it.
    pub when: When,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Power {
    On,
    /// Cut: requests wait for ever (until the test releases them).
    Off,
    /// After the cut's processes are gone: requests fail at once.
    Released,
}

struct Switch {
    power: Power,
    counted: u64,
    trigger: Option<Trigger>,
    trace: Vec<Op>,
    /// Replies never sent, held so that their requests stay unanswered;
    /// under the switch's lock, so that none is parked after the release.
    parked: Vec<Box<dyn Any + Send>>,
}

struct Shared {
    disk: Mutex<Disk>,
    switch: Mutex<Switch>,
}

/// A lock that a panicking holder does not poison for the others: the
/// filesystem must keep answering for the test to end.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// What a request may do, given the power switch.
enum Go {
    Run { cut_after: bool },
    Wait,
    Fail,
}

struct PowerFs {
    shared: Arc<Shared>,
}

/// The kernel caches nothing: every `stat` and lookup asks the disk.
const TTL: Duration = Duration::ZERO;

impl PowerFs {
    fn disk(&self) -> MutexGuard<'_, Disk> {
        lock(&self.shared.disk)
    }

    /// The switch's word on a request; a counted one (`kind` with the
    /// inode it names) may be the one the trigger cuts.
    fn go(&self, counted: Option<(OpKind, Ino, Option<&OsStr>)>) -> Go {
        let op = counted.and_then(|(kind, ino, name)| {
            // A file nothing names now (unlinked, still open) is not
            // counted: SQLite's unlinked shared memory is written back at
            // the kernel's pace and would shift the numbering. What is done
            // to it still counts for what a cut leaves.
            let mut path = self.disk().path_of(ino)?;
            if let Some(name) = name {
                path = format!("{path}/{}", name.to_string_lossy());
            }
            // SQLite's shared-memory index is rebuilt after a crash and
            // written through mmap at the kernel's pace: not counted.
            (!path.ends_with("-shm")).then_some(Op { kind, path })
        });
        let mut switch = lock(&self.shared.switch);
        match switch.power {
            Power::Off => return Go::Wait,
            Power::Released => return Go::Fail,
            Power::On => {}
        }
        let Some(op) = op else {
            return Go::Run { cut_after: false };
        };
        let n = switch.counted;
        switch.counted += 1;
        switch.trace.push(op);
        match switch.trigger {
            Some(Trigger { op, when }) if op == n => {
                if when == When::Before {
                    switch.power = Power::Off;
                    Go::Wait
                } else {
                    Go::Run { cut_after: true }
                }
            }
            _ => Go::Run { cut_after: false },
        }
    }

    /// Holds `reply` unanswered while the power is cut; once released,
    /// drops it (answering EIO) instead.
    fn park(&self, reply: impl Any + Send) {
        let mut switch = lock(&self.shared.switch);
        if switch.power == Power::Released {
            drop(switch);
            drop(reply);
        } else {
            switch.parked.push(Box::new(reply));
        }
    }

    fn cut_now(&self) {
        let mut switch = lock(&self.shared.switch);
        if switch.power == Power::On {
            switch.power = Power::Off;
        }
    }

    fn attr(&self, ino: Ino) -> Result<FileAttr, Refusal> {
        self.disk().attr(ino).map(file_attr)
    }
}

fn file_attr(attr: Attr) -> FileAttr {
    // Times mean nothing here; a fixed one keeps stat stable.
    let time = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    FileAttr {
        ino: INodeNo(attr.ino),
        size: attr.size,
        blocks: attr.size.div_ceil(512),
        atime: time,
        mtime: time,
        ctime: time,
        crtime: time,
        kind: if attr.dir {
            FileType::Directory
        } else {
            FileType::RegularFile
        },
        perm: attr.perm,
        nlink: if attr.dir { 2 } else { 1 },
        uid: attr.uid,
        gid: attr.gid,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

fn errno(refusal: Refusal) -> Errno {
    Errno::from_i32(refusal.errno())
}

/// The permission bits a create asks for, less the caller's umask.
fn perm(mode: u32, umask: u32) -> u16 {
    ((mode & !umask) & 0o7777) as u16
}

/// Runs `$body` (which answers `$reply`) when the switch lets request
/// `$counted` through; parks or fails `$reply` otherwise. With a cut after
/// the operation, the body's answer is parked instead of sent.
macro_rules! powered {
    ($fs:expr, $counted:expr, $reply:ident, $body:expr) => {
        match $fs.go($counted) {
            Go::Wait => $fs.park($reply),
            Go::Fail => $reply.error(Errno::EIO),
            Go::Run { cut_after } => {
                let outcome = $body;
                if cut_after {
                    $fs.cut_now();
                    $fs.park($reply);
                } else {
                    outcome($reply);
                }
            }
        }
    };
}

impl Filesystem for PowerFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        powered!(self, None, reply, {
            let found = {
                let disk = self.disk();
                disk.lookup(parent.0, name).and_then(|i| disk.attr(i))
            }
            .map(file_attr);
            move |reply: ReplyEntry| match found {
                Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
                Err(e) => reply.error(errno(e)),
            }
        })
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        powered!(self, None, reply, {
            let found = self.attr(ino.0);
            move |reply: ReplyAttr| match found {
                Ok(attr) => reply.attr(&TTL, &attr),
                Err(e) => reply.error(errno(e)),
            }
        })
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let kind = if size.is_some() {
            Some(OpKind::Truncate)
        } else if mode.is_some() || uid.is_some() || gid.is_some() {
            Some(OpKind::Chmod)
        } else {
            None
        };
        powered!(self, kind.map(|k| (k, ino.0, None)), reply, {
            let done = (|| {
                let mut disk = self.disk();
                if let Some(size) = size {
                    disk.truncate(ino.0, size)?;
                }
                disk.set_meta(ino.0, mode.map(|m| (m & 0o7777) as u16), uid, gid)?;
                disk.attr(ino.0)
            })();
            move |reply: ReplyAttr| match done {
                Ok(attr) => reply.attr(&TTL, &file_attr(attr)),
                Err(e) => reply.error(errno(e)),
            }
        })
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        powered!(self, Some((OpKind::Mkdir, parent.0, Some(name))), reply, {
            let made = {
                let mut disk = self.disk();
                disk.mkdir(parent.0, name, perm(mode, umask), req.uid(), req.gid())
                    .and_then(|i| disk.attr(i))
            }
            .map(file_attr);
            move |reply: ReplyEntry| match made {
                Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
                Err(e) => reply.error(errno(e)),
            }
        })
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        powered!(self, Some((OpKind::Create, parent.0, Some(name))), reply, {
            let made = {
                let mut disk = self.disk();
                disk.create(parent.0, name, perm(mode, umask), req.uid(), req.gid())
                    .and_then(|i| disk.attr(i))
            }
            .map(file_attr);
            move |reply: ReplyCreate| match made {
                Ok(attr) => reply.created(
                    &TTL,
                    &attr,
                    Generation(0),
                    FileHandle(0),
                    FopenFlags::empty(),
                ),
                Err(e) => reply.error(errno(e)),
            }
        })
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        powered!(self, Some((OpKind::Unlink, parent.0, Some(name))), reply, {
            let done = self.disk().unlink(parent.0, name);
            move |reply: ReplyEmpty| empty(reply, done)
        })
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        powered!(self, Some((OpKind::Rmdir, parent.0, Some(name))), reply, {
            let done = self.disk().rmdir(parent.0, name);
            move |reply: ReplyEmpty| empty(reply, done)
        })
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        powered!(
            self,
            Some((OpKind::Rename, newparent.0, Some(newname))),
            reply,
            {
                let done = if flags
                    .intersects(RenameFlags::RENAME_EXCHANGE | RenameFlags::RENAME_WHITEOUT)
                {
                    Err(Refusal::Unsupported)
                } else {
                    self.disk().rename(
                        parent.0,
                        name,
                        newparent.0,
                        newname,
                        flags.contains(RenameFlags::RENAME_NOREPLACE),
                    )
                };
                move |reply: ReplyEmpty| empty(reply, done)
            }
        )
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        powered!(self, None, reply, {
            let bytes = self.disk().read(ino.0, offset, size).map(<[u8]>::to_vec);
            move |reply: ReplyData| match bytes {
                Ok(bytes) => reply.data(&bytes),
                Err(e) => reply.error(errno(e)),
            }
        })
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        powered!(self, Some((OpKind::Write, ino.0, None)), reply, {
            let done = self.disk().write(ino.0, offset, data);
            let len = u32::try_from(data.len()).unwrap_or(u32::MAX);
            move |reply: ReplyWrite| match done {
                Ok(()) => reply.written(len),
                Err(e) => reply.error(errno(e)),
            }
        })
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        powered!(self, None, reply, { |reply: ReplyEmpty| reply.ok() })
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        powered!(self, Some((OpKind::Fsync, ino.0, None)), reply, {
            let done = self.disk().sync(ino.0);
            move |reply: ReplyEmpty| empty(reply, done)
        })
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        reply: ReplyDirectory,
    ) {
        powered!(self, None, reply, {
            let listed = self.disk().list(ino.0);
            move |mut reply: ReplyDirectory| match listed {
                Ok(names) => {
                    let dots = [(".".into(), ino.0, true), ("..".into(), ino.0, true)];
                    let all = dots.into_iter().chain(names);
                    for (i, (name, child, dir)) in all.enumerate().skip(offset as usize) {
                        let kind = if dir {
                            FileType::Directory
                        } else {
                            FileType::RegularFile
                        };
                        if reply.add(INodeNo(child), i as u64 + 1, kind, &name) {
                            break;
                        }
                    }
                    reply.ok();
                }
                Err(e) => reply.error(errno(e)),
            }
        })
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        powered!(self, Some((OpKind::FsyncDir, ino.0, None)), reply, {
            let done = self.disk().sync(ino.0);
            move |reply: ReplyEmpty| empty(reply, done)
        })
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: fuser::ReplyStatfs) {
        powered!(self, None, reply, {
            |reply: fuser::ReplyStatfs| {
                reply.statfs(1 << 24, 1 << 23, 1 << 23, 1 << 20, 1 << 19, 4096, 255, 4096)
            }
        })
    }
}

fn empty(reply: ReplyEmpty, done: Result<(), Refusal>) {
    match done {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(errno(e)),
    }
}

fn release(shared: &Shared) {
    let parked = {
        let mut switch = lock(&shared.switch);
        switch.power = Power::Released;
        std::mem::take(&mut switch.parked)
    };
    // Dropping a reply never sent answers it with EIO.
    drop(parked);
}

/// Releases a cut when dropped ([`Mounted::release_on_drop`]).
pub struct ReleaseOnDrop(Arc<Shared>);

impl Drop for ReleaseOnDrop {
    fn drop(&mut self) {
        release(&self.0);
    }
}

/// A [`Disk`] mounted at a directory, and its power switch.
///
/// Operations are counted in the order the kernel sends them: for one
/// process doing one thing at a time (a command) the n-th is the same in
/// every run; where threads or the kernel's own writeback take part (a
/// server's background checkpoints, mmap), the numbering may shift a
/// little from run to run, so "every operation" is every index, not every
/// interleaving.
pub struct Mounted {
    session: Option<BackgroundSession>,
    shared: Arc<Shared>,
    at: PathBuf,
}

impl Mounted {
    /// Mounts `disk` at the empty directory `at`, power on, nothing counted
    /// yet. Needs root (the mount, and the unmount a cut does) and
    /// `/dev/fuse`.
    pub fn mount(disk: Disk, at: &Path) -> io::Result<Mounted> {
        let shared = Arc::new(Shared {
            disk: Mutex::new(disk),
            switch: Mutex::new(Switch {
                power: Power::On,
                counted: 0,
                trigger: None,
                trace: Vec::new(),
                parked: Vec::new(),
            }),
        });
        let mut config = Config::default();
        config.mount_options = vec![
            MountOption::FSName("sonotap-powercut".into()),
            MountOption::Subtype("powercut".into()),
        ];
        // The path the kernel's mount table will show (for a last-resort abort).
        let at = at.canonicalize()?;
        let session = fuser::spawn_mount(
            PowerFs {
                shared: Arc::clone(&shared),
            },
            &at,
            &config,
        )?;
        Ok(Mounted {
            session: Some(session),
            shared,
            at,
        })
    }

    /// [`Mounted::mount`] for a test: `None`, saying why, where FUSE
    /// cannot mount here, so that the test skips; with
    /// `SONOTAP_REQUIRE_FUSE=1` (as CI sets it) that is a failure instead.
    pub fn mount_or_skip(disk: Disk, at: &Path) -> Option<Mounted> {
        let required = std::env::var_os("SONOTAP_REQUIRE_FUSE").is_some_and(|v| v == "1");
        match Mounted::mount(disk, at) {
            Ok(m) => Some(m),
            Err(e) if !required => {
                eprintln!(
                    "skipped: FUSE cannot mount here ({e}); SONOTAP_REQUIRE_FUSE=1 fails instead"
                );
                None
            }
            Err(e) => panic!("SONOTAP_REQUIRE_FUSE=1 and FUSE cannot mount: {e}"),
        }
    }

    /// Where it is mounted.
    pub fn path(&self) -> &Path {
        &self.at
    }

    /// Cuts the power at `trigger`'s operation, when it comes.
    pub fn arm(&self, trigger: Trigger) {
        lock(&self.shared.switch).trigger = Some(trigger);
    }

    /// Cuts the power now (if it is on).
    pub fn cut_now(&self) {
        let mut switch = lock(&self.shared.switch);
        if switch.power == Power::On {
            switch.power = Power::Off;
        }
    }

    /// True once the power is cut (by a trigger or [`Mounted::cut_now`]).
    pub fn is_cut(&self) -> bool {
        lock(&self.shared.switch).power != Power::On
    }

    /// How many operations were counted since the mount.
    pub fn counted(&self) -> u64 {
        lock(&self.shared.switch).counted
    }

    /// The counted operations, in order.
    pub fn trace(&self) -> Vec<Op> {
        lock(&self.shared.switch).trace.clone()
    }

    /// Ends a cut, once the processes using the disk are killed: what they
    /// were left waiting for fails, as does anything else asked; then the
    /// disk is unmounted and comes back as a cut leaves it.
    pub fn cut(mut self) -> io::Result<Disk> {
        self.cut_now();
        self.release();
        self.unmount()?;
        Ok(lock(&self.shared.disk).after_cut())
    }

    /// Unmounts with power on (after the processes ended by themselves):
    /// the disk as they left it, synced or not.
    pub fn unmount_live(mut self) -> io::Result<Disk> {
        self.unmount()?;
        Ok(lock(&self.shared.disk).clone())
    }

    /// Answers every request left waiting by the cut with EIO, and every
    /// later one at once: call it once the processes on the disk are
    /// killed (a killed process still waits for its request to end).
    pub fn release(&self) {
        release(&self.shared);
    }

    /// A guard that releases the cut when dropped. Made after the processes
    /// on the disk, it is dropped before them: a test failing mid-cut then
    /// cannot wait for ever on a killed process whose request nobody
    /// answers (their own drop kills and reaps them).
    pub fn release_on_drop(&self) -> ReleaseOnDrop {
        ReleaseOnDrop(Arc::clone(&self.shared))
    }

    /// Unmounts, waiting up to 10 s for the last files on it to close
    /// (killed processes close theirs as they end), then detaches it.
    fn unmount(&mut self) -> io::Result<()> {
        let Some(session) = self.session.take() else {
            return Ok(());
        };
        let path = std::ffi::CString::new(self.at.as_os_str().as_encoded_bytes())
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            // SAFETY: `path` is a valid NUL-terminated string.
            if unsafe { libc::umount2(path.as_ptr(), 0) } == 0 {
                break;
            }
            let err = io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EBUSY) {
                return Err(err);
            }
            if std::time::Instant::now() > deadline {
                eprintln!(
                    "powercut: {} still busy after 10 s, aborted: {:?}",
                    self.at.display(),
                    users(&self.at)
                );
                abort_connection(&self.at);
                // SAFETY: as above.
                if unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) } != 0 {
                    return Err(io::Error::last_os_error());
                }
                // The disk is in memory and whole; the session ends with
                // the abort's error, which says nothing of it. Should the
                // abort not have taken, the session ends with the last file
                // open on it: not waited for past another 10 s.
                let (ended, end) = std::sync::mpsc::channel();
                std::thread::spawn(move || {
                    let _ = ended.send(session.join());
                });
                let _ = end.recv_timeout(Duration::from_secs(10));
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        match session.join() {
            // Unmounted: a read racing the teardown may see the connection
            // aborted rather than gone, which says nothing of the disk.
            Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => Ok(()),
            result => result,
        }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if self.session.is_some() {
            self.release();
            let _ = self.unmount();
        }
    }
}

/// Aborts the FUSE connection mounted at `at` (fusectl), failing whatever
/// its requests wait for: the last resort when a mount will not go.
fn abort_connection(at: &Path) {
    // The connection's number is the mount's minor device number, read
    // from mountinfo (a stat of the mount would itself ask the filesystem).
    let Ok(mountinfo) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let at = at.to_string_lossy();
    let Some(minor) = mountinfo.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        (fields.get(4) == Some(&&*at)).then(|| fields.get(2)?.split(':').nth(1))?
    }) else {
        return;
    };
    let control = Path::new("/sys/fs/fuse/connections");
    if std::fs::read_dir(control)
        .map(|mut d| d.next().is_none())
        .unwrap_or(true)
    {
        let _ = std::process::Command::new("mount")
            .args(["-t", "fusectl", "fusectl"])
            .arg(control)
            .status();
    }
    let _ = std::fs::write(control.join(minor).join("abort"), "1");
}

/// The processes keeping the mount at `at` busy (their working directory
/// or an open file on it), or waiting in a FUSE request: what a mount that
/// will not go is told about.
fn users(at: &Path) -> Vec<String> {
    let mut found = Vec::new();
    for process in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let pid = process.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let command = std::fs::read_to_string(process.path().join("cmdline"))
            .unwrap_or_default()
            .replace('\0', " ");
        let on_mount = |link: &Path| std::fs::read_link(link).is_ok_and(|t| t.starts_with(at));
        let fds = std::fs::read_dir(process.path().join("fd"));
        if on_mount(&process.path().join("cwd"))
            || fds
                .into_iter()
                .flatten()
                .flatten()
                .any(|fd| on_mount(&fd.path()))
        {
            found.push(format!("{pid} ({command}) uses it"));
        }
        for task in std::fs::read_dir(process.path().join("task"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let wchan = std::fs::read_to_string(task.path().join("wchan")).unwrap_or_default();
            if wchan.starts_with("fuse") || wchan.starts_with("request_wait") {
                found.push(format!("{pid} ({command}) waits in {wchan}"));
            }
        }
    }
    found
}
