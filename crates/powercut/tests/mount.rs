//! The filesystem through the kernel: what programs write through a real
//! FUSE mount survives a cut exactly as far as they synced it.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use sonotap_powercut::{Disk, Mounted, OpKind, Trigger, When};

/// `disk` mounted at `at`, or `None` where FUSE cannot be used here.
fn mount(disk: Disk, at: &Path) -> Option<Mounted> {
    Mounted::mount_or_skip(disk, at)
}

fn sync_dir(path: &Path) {
    File::open(path).unwrap().sync_all().unwrap();
}

#[test]
fn only_what_was_synced_through_the_kernel_survives_a_cut() {
    let scratch = tempfile::tempdir().unwrap();
    let at = scratch.path().join("m");
    fs::create_dir(&at).unwrap();
    let Some(m) = mount(Disk::new(), &at) else {
        return;
    };
    let mut kept = File::create(at.join("kept")).unwrap();
    kept.write_all(b"synced").unwrap();
    kept.sync_all().unwrap();
    fs::write(at.join("lost"), b"never synced").unwrap();
    sync_dir(&at);
    kept.write_all(b" and more").unwrap();
    fs::create_dir(at.join("d")).unwrap();
    drop(kept);
    let disk = m.cut().unwrap();

    let m = mount(disk, &at).unwrap();
    assert_eq!(fs::read(at.join("kept")).unwrap(), b"synced");
    assert_eq!(
        fs::read(at.join("lost")).unwrap(),
        b"",
        "named, never synced"
    );
    assert!(!at.join("d").exists(), "made after the directory's sync");
    m.unmount_live().unwrap();
}

#[test]
fn a_trigger_cuts_at_the_counted_operation_and_later_requests_wait() {
    let scratch = tempfile::tempdir().unwrap();
    let at = scratch.path().join("m");
    fs::create_dir(&at).unwrap();
    let Some(m) = mount(Disk::new(), &at) else {
        return;
    };
    // create, write, fsync, then the second write is cut before it lands.
    m.arm(Trigger {
        op: 3,
        when: When::Before,
    });
    let path = at.join("f");
    let child = std::thread::spawn(move || {
        let mut f = OpenOptions::new()
            .create_new(true)
            .write(true)
            .open(&path)
            .unwrap();
        f.write_all(b"one").unwrap();
        f.sync_all().unwrap();
        let _ = f.write_all(b"two");
        let _ = f.sync_all();
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !m.is_cut() {
        assert!(std::time::Instant::now() < deadline, "never cut");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let kinds: Vec<OpKind> = m.trace().iter().map(|op| op.kind).collect();
    assert_eq!(
        kinds,
        [OpKind::Create, OpKind::Write, OpKind::Fsync, OpKind::Write]
    );
    assert_eq!(m.trace()[1].path, "/f");
    let disk = m.cut().unwrap();
    child.join().unwrap();
    // The directory was never synced: the file is gone whatever it held.
    let m = mount(disk, &at).unwrap();
    assert!(!at.join("f").exists());
    m.unmount_live().unwrap();
}

#[test]
fn sqlite_in_wal_mode_with_full_sync_keeps_every_commit_across_cuts() {
    let scratch = tempfile::tempdir().unwrap();
    let at = scratch.path().join("m");
    fs::create_dir(&at).unwrap();
    let Some(m) = mount(Disk::new(), &at) else {
        return;
    };
    let db = rusqlite::Connection::open(at.join("t.db")).unwrap();
    db.execute_batch(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;
         CREATE TABLE t(x INTEGER);",
    )
    .unwrap();
    drop(db);
    // SQLite syncs the directory for its journals, not for a new database.
    sync_dir(&at);
    let mut disk = m.unmount_live().unwrap();
    let mut committed = 0;
    for round in 0..6u64 {
        let m = mount(disk, &at).unwrap();
        m.arm(Trigger {
            op: 5 + round * 7,
            when: When::After,
        });
        let path = at.join("t.db");
        let acked = Arc::new(AtomicI64::new(0));
        let writer = {
            let acked = Arc::clone(&acked);
            std::thread::spawn(move || {
                let db = rusqlite::Connection::open(path).unwrap();
                db.execute_batch("PRAGMA synchronous=FULL;").unwrap();
                for i in 0..1000 {
                    if db.execute("INSERT INTO t VALUES (?1)", [i]).is_err() {
                        break;
                    }
                    acked.fetch_add(1, Ordering::SeqCst);
                }
            })
        };
        while !m.is_cut() && !writer.is_finished() {
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        assert!(m.is_cut(), "round {round}: the trigger never fired");
        m.release();
        writer.join().unwrap();
        committed += acked.load(Ordering::SeqCst);
        disk = m.cut().unwrap();
        let m = mount(disk, &at).unwrap();
        let db = rusqlite::Connection::open(at.join("t.db")).unwrap();
        let rows: i64 = db
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert!(
            rows >= committed,
            "round {round}: {rows} rows, {committed} committed"
        );
        assert!(
            rows <= committed + 1,
            "round {round}: at most the cut insert more"
        );
        committed = rows;
        drop(db);
        disk = m.unmount_live().unwrap();
    }
}
