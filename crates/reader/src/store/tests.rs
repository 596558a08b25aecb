//! The store against real SQLite files: durability settings, chain, and damaged databases.

use super::*;
use sonotap_protocol::policy::{Reason, authenticate};
use sonotap_protocol::record::{ChainError, verify_chain};
use sonotap_protocol::testkit::*;
use sonotap_protocol::token::PaymentTerms;

const READER: &str = "gate-1";

fn reader_key() -> SigningKey {
    SigningKey::from_bytes(&[9; 32])
}

fn fresh_db(dir: &tempfile::TempDir) -> ReaderDb {
    let db = ReaderDb::create(&dir.path().join("reader.db")).expect("create");
    db.trust_key(1, &issuer().verifying_key(), NOW)
        .expect("trust");
    db
}

/// Checks `records` as a chain from the genesis hash, signed by the reader.
fn verify_from_genesis(records: &[Record]) -> Result<(u64, [u8; 32]), ChainError> {
    verify_chain(
        READER,
        &reader_key().verifying_key(),
        (0, GENESIS_HASH),
        records,
    )
}

/// The sequence numbers of `records`.
fn seqs(records: Vec<Record>) -> Vec<u64> {
    records.iter().map(|r| r.seq).collect()
}

/// A new database in a new directory (kept while it is used).
fn fresh() -> (tempfile::TempDir, ReaderDb) {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = fresh_db(&dir);
    (dir, db)
}

/// Runs `f` with the reader's record signer.
fn with_signer<T>(f: impl FnOnce(&RecordSigner<'_>) -> T) -> T {
    let key = reader_key();
    f(&RecordSigner {
        reader_id: READER,
        key: &key,
    })
}

/// The test wallet's token for `payment`, authenticated with `db`'s keys.
fn authentic(db: &ReaderDb, payment: PaymentTerms) -> Authentic {
    let bytes = token_bytes(terms(), payment);
    authenticate(&bytes, &db.trusted_keys().expect("keys")).expect("authentic")
}

/// Accepts `n` payments of `amount`, counters 1 to `n`.
fn taps(db: &mut ReaderDb, n: u32, amount: u32) {
    for counter in 1..=n {
        tap(db, counter, amount).expect("accepted");
    }
}

fn tap(db: &mut ReaderDb, counter: u32, amount: u32) -> Result<Committed, Decline> {
    let payment = PaymentTerms {
        counter,
        amount,
        ..payment()
    };
    let token = authentic(db, payment);
    with_signer(|signer| db.commit_payment(signer, &token, &policy(), None, NOW))
        .expect("store works")
}

#[test]
fn database_uses_wal_and_full_sync() {
    let (_dir, db) = fresh();
    let mode: String = db
        .conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .expect("pragma");
    let sync: i64 = db
        .conn
        .query_row("PRAGMA synchronous", [], |r| r.get(0))
        .expect("pragma");
    assert_eq!(mode, "wal");
    assert_eq!(sync, 2, "synchronous=FULL");
}

#[test]
fn accepted_payments_are_chained_signed_and_counted() {
    let (_dir, mut db) = fresh();
    let first = tap(&mut db, 1, 100).expect("accept");
    let second = tap(&mut db, 2, 200).expect("accept");
    assert_eq!((first.seq, second.seq), (1, 2));
    // Both tokens claim total_before 0; the reader holds the wallet to what it saw.
    assert_eq!(second.running_total, 300);
    let records = db.records(false).expect("records");
    assert_eq!(records.len(), 2);
    assert_eq!(records[1].amount, 200);
    assert_eq!(records[1].counter, 2);
    let end = verify_from_genesis(&records);
    assert_eq!(end, Ok((2, records[1].hash)));
    let summary = db.summary().expect("summary");
    assert_eq!(
        summary,
        QueueSummary {
            records: 2,
            unsynced: 2,
            unsynced_amount: 300,
            head_seq: 2
        }
    );
}

#[test]
fn a_decline_writes_nothing() {
    let (_dir, mut db) = fresh();
    tap(&mut db, 3, 100).expect("accept");
    let replay = tap(&mut db, 3, 100).expect_err("same counter");
    assert_eq!(replay.reason, Reason::Replayed);
    let older = tap(&mut db, 2, 100).expect_err("older counter");
    assert_eq!(older.reason, Reason::Replayed);
    assert_eq!(db.records(false).expect("records").len(), 1);
    assert_eq!(db.summary().expect("summary").head_seq, 1);
}

#[test]
fn the_running_total_seen_carries_across_taps() {
    let (_dir, mut db) = fresh();
    // Limit 1000: a wallet that always claims total_before 0 is still stopped.
    taps(&mut db, 4, 250);
    let decline = tap(&mut db, 5, 250).expect_err("over");
    assert_eq!(decline.reason, Reason::OverOfflineLimit);
}

#[test]
fn deny_list_is_consulted_and_can_be_lifted() {
    let (_dir, mut db) = fresh();
    let wallet_id = sonotap_protocol::token::WalletId::of_key(&wallet().verifying_key().to_bytes());
    db.deny(wallet_id, "cloned phone", NOW).expect("deny");
    assert_eq!(
        tap(&mut db, 1, 100).expect_err("denied").reason,
        Reason::WalletDenied
    );
    assert!(db.allow(wallet_id).expect("allow"));
    assert!(tap(&mut db, 1, 100).is_ok());
}

#[test]
fn records_survive_reopening() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let mut db = fresh_db(&dir);
        tap(&mut db, 1, 100).expect("accept");
    }
    let mut db = ReaderDb::open(&dir.path().join("reader.db")).expect("reopen");
    assert_eq!(db.records(false).expect("records").len(), 1);
    assert_eq!(
        tap(&mut db, 1, 100).expect_err("replay").reason,
        Reason::Replayed
    );
    assert_eq!(tap(&mut db, 2, 100).expect("accept").seq, 2);
}

#[test]
fn missing_database_is_not_silently_created() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("reader.db");
    let err = ReaderDb::open(&path).err().expect("missing");
    assert!(matches!(err, StoreError::Missing { .. }), "{err}");
    assert!(!path.exists());
}

#[test]
fn garbage_file_is_reported_corrupt() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("reader.db");
    std::fs::write(&path, vec![0x5a; 8192]).expect("write");
    let err = ReaderDb::open(&path).err().expect("corrupt");
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("corrupt"), "{err}");
}

#[test]
fn damaged_pages_are_reported_corrupt_not_panicked_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("reader.db");
    {
        let mut db = fresh_db(&dir);
        taps(&mut db, 20, 10);
        db.conn
            .execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
            .expect("checkpoint");
    }
    let mut bytes = std::fs::read(&path).expect("read");
    // Keep the 100-byte header, trash every page after the first.
    let page = 4096.min(bytes.len());
    for b in &mut bytes[page..] {
        *b = 0xa5;
    }
    std::fs::write(&path, &bytes).expect("write");
    let result = ReaderDb::open(&path).and_then(|db| db.records(false).map(|_| ()));
    let err = result.expect_err("must fail");
    assert!(
        matches!(
            err,
            StoreError::Corrupt { .. } | StoreError::Inconsistent { .. }
        ),
        "{err}"
    );
}

#[test]
fn database_from_a_newer_version_is_refused_untouched() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("reader.db");
    drop(fresh_db(&dir));
    {
        let conn = Connection::open(&path).expect("raw open");
        conn.pragma_update(None, "user_version", 99).expect("bump");
    }
    let err = ReaderDb::open(&path).err().expect("too new");
    assert!(
        matches!(
            err,
            StoreError::TooNew {
                found: 99,
                supported: SCHEMA_VERSION,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("upgrade sonotap"), "{err}");
    let conn = Connection::open(&path).expect("raw open");
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .expect("read");
    assert_eq!(version, 99, "the newer database was left as it was");
}

#[test]
fn a_locked_database_gives_a_clear_error_and_charges_nothing() {
    let (dir, mut db) = fresh();
    let other = Connection::open(dir.path().join("reader.db")).expect("second connection");
    other.execute_batch("BEGIN EXCLUSIVE").expect("lock");
    let bytes = token_bytes(terms(), payment());
    let token = authenticate(&bytes, &keys()).expect("authentic");
    with_signer(|signer| {
        let err = db
            .commit_payment(signer, &token, &policy(), None, NOW)
            .expect_err("locked");
        assert!(matches!(err, StoreError::Locked { .. }), "{err}");
        other.execute_batch("ROLLBACK").expect("unlock");
        assert!(db.records(false).expect("records").is_empty());
        assert!(
            db.commit_payment(signer, &token, &policy(), None, NOW)
                .expect("store")
                .is_ok()
        );
    });
}

fn void(db: &mut ReaderDb, seq: u64, reason: &str) -> Result<Voided, VoidError> {
    with_signer(|signer| db.void_charge(signer, seq, reason, NOW + 5))
}

#[test]
fn a_void_is_a_chained_record_with_the_charges_token_and_amount() {
    let (_dir, mut db) = fresh();
    tap(&mut db, 1, 100).expect("accept");
    tap(&mut db, 2, 200).expect("accept");
    let voided = void(&mut db, 2, "vend failed").expect("void");
    assert_eq!(
        voided,
        Voided {
            seq: 3,
            charge_seq: 2,
            amount: 200
        }
    );
    let records = db.records(false).expect("records");
    assert_eq!(records[2].kind, RecordKind::Void);
    assert_eq!(records[2].token, records[1].token);
    assert_eq!(
        (records[2].wallet, records[2].counter),
        (records[1].wallet, 2)
    );
    assert_eq!(records[2].amount, 200);
    let end = verify_from_genesis(&records);
    assert_eq!(end, Ok((3, records[2].hash)));
    assert_eq!(
        db.void_of(2).expect("void_of"),
        Some((3, "vend failed".into()))
    );
    assert_eq!(db.void_of(1).expect("void_of"), None);
    // Net of the unsynced records: 100 + 200 - 200.
    assert_eq!(db.summary().expect("summary").unsynced_amount, 100);
}

#[test]
fn a_void_leaves_the_token_spent_and_the_running_total_as_it_was() {
    let (_dir, mut db) = fresh();
    tap(&mut db, 1, 250).expect("accept");
    void(&mut db, 1, "vend failed").expect("void");
    assert_eq!(
        tap(&mut db, 1, 250).expect_err("replay").reason,
        Reason::Replayed
    );
    // Limit 1000: the voided 250 still counts until the hub refunds it.
    for counter in 2..=4 {
        tap(&mut db, counter, 250).expect("within limit");
    }
    assert_eq!(
        tap(&mut db, 5, 250).expect_err("over").reason,
        Reason::OverOfflineLimit
    );
}

#[test]
fn voiding_twice_a_void_or_a_missing_record_is_refused_and_writes_nothing() {
    let (_dir, mut db) = fresh();
    tap(&mut db, 1, 100).expect("accept");
    void(&mut db, 1, "first").expect("void");
    assert!(matches!(
        void(&mut db, 1, "again"),
        Err(VoidError::AlreadyVoided {
            seq: 1,
            void_seq: 2
        })
    ));
    assert!(matches!(
        void(&mut db, 2, "a void"),
        Err(VoidError::NotACharge {
            seq: 2,
            kind: "void"
        })
    ));
    let missing = void(&mut db, 9, "none").expect_err("missing");
    assert!(matches!(missing, VoidError::NoSuchRecord { seq: 9 }));
    assert_eq!(
        missing.to_string(),
        "cannot void record 9: there is no such record"
    );
    assert_eq!(db.records(false).expect("records").len(), 2);
}

/// Issue 21: a gate opening is in flight from its charge's commit until
/// its outcome is stored; one a killed daemon left in flight is stored as
/// `unknown` (released at start) by the next start, once.
#[test]
fn issue21_a_gate_opening_left_in_flight_is_settled_as_unknown_at_start() {
    let (_dir, mut db) = fresh();
    let gate_tap = |db: &mut ReaderDb, counter: u32| {
        let token = authentic(
            db,
            PaymentTerms {
                counter,
                amount: 100,
                ..payment()
            },
        );
        with_signer(|signer| {
            db.commit_gate_charge(signer, &token, &policy(), None, "relay@pty", NOW)
        })
        .expect("store works")
        .expect("accepted")
        .seq
    };
    // The first opening's outcome is stored: nothing left in flight.
    let done = gate_tap(&mut db, 1);
    db.record_gate_outcome(
        done,
        NOW + 1,
        "relay@pty",
        &[(ActuationOutcome::Delivered, String::new())],
    )
    .expect("store");
    // The second's never is (the daemon was killed with the gate open).
    let killed = gate_tap(&mut db, 2);
    assert_eq!(db.settle_gate_openings(NOW + 60).expect("settle"), [killed]);
    let rows = db.actuations(killed).expect("rows");
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].outcome, ActuationOutcome::Unknown);
    assert_eq!(
        rows[0].detail,
        format!("{GATE_RELEASED_AT_START} (at {NOW})")
    );
    assert_eq!(rows[0].device, "relay@pty");
    assert_eq!(db.actuations(done).expect("rows").len(), 1);
    // Settled once: the next start finds nothing.
    assert!(
        db.settle_gate_openings(NOW + 120)
            .expect("settle")
            .is_empty()
    );
    assert_eq!(db.actuations(killed).expect("rows").len(), 1);
}

/// Issue 21: the migration that lets an outcome be `unknown` rebuilds
/// the actuations table: a reader's existing outcomes are kept (ids and
/// all), with their index and their cascade from the records.
#[test]
fn issue21_the_actuations_rebuild_keeps_every_outcome_a_reader_has() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("reader.db");
    {
        let mut db = fresh_db(&dir);
        tap(&mut db, 1, 100).expect("accepted");
        tap(&mut db, 2, 100).expect("accepted");
        db.record_actuation(1, NOW, "relay", ActuationOutcome::Delivered, "")
            .expect("store");
        db.record_actuation(2, NOW, "relay", ActuationOutcome::Passage, "PASS 1")
            .expect("store");
    }
    // Back to the schema before the migration, as a reader has it.
    {
        let conn = Connection::open(&path).expect("raw open");
        conn.execute_batch(
            "DROP TABLE gate_openings;
             CREATE TABLE actuations_old (
                 id INTEGER PRIMARY KEY,
                 seq INTEGER NOT NULL REFERENCES records (seq) ON DELETE CASCADE,
                 at INTEGER NOT NULL,
                 device TEXT NOT NULL,
                 outcome TEXT NOT NULL CHECK (outcome IN ('delivered', 'undeliverable',
                     'passage', 'no_passage', 'vend_success', 'vend_failed')),
                 detail TEXT NOT NULL
             ) STRICT;
             INSERT INTO actuations_old SELECT * FROM actuations;
             DROP TABLE actuations;
             ALTER TABLE actuations_old RENAME TO actuations;
             CREATE INDEX actuations_by_seq ON actuations (seq);",
        )
        .expect("the old schema");
        let before = i64::try_from(SCHEMA_VERSION - 1).expect("a version");
        conn.pragma_update(None, "user_version", before)
            .expect("version");
    }
    let db = ReaderDb::open(&path).expect("migrates");
    let kept = |db: &ReaderDb, seq| db.actuations(seq).expect("rows");
    assert_eq!(kept(&db, 1)[0].outcome, ActuationOutcome::Delivered);
    assert_eq!(kept(&db, 2)[0].detail, "PASS 1");
    db.record_actuation(2, NOW, "relay", ActuationOutcome::Unknown, "now allowed")
        .expect("the new outcome");
    let conn = Connection::open(&path).expect("raw open");
    let ids: Vec<i64> = conn
        .prepare("SELECT id FROM actuations ORDER BY id")
        .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
        .expect("ids");
    assert_eq!(ids, [1, 2, 3]);
    let index: i64 = conn
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE name = 'actuations_by_seq'",
            [],
            |r| r.get(0),
        )
        .expect("index");
    assert_eq!(index, 1);
    let cascade: String = conn
        .query_row(
            "SELECT on_delete FROM pragma_foreign_key_list('actuations')",
            [],
            |r| r.get(0),
        )
        .expect("foreign key");
    assert_eq!(cascade, "CASCADE");
}

#[test]
fn actuations_are_stored_beside_their_record() {
    let (_dir, mut db) = fresh();
    tap(&mut db, 1, 100).expect("accept");
    db.record_actuation(1, NOW, "ch340-relay", ActuationOutcome::Delivered, "")
        .expect("store");
    db.record_actuation(
        1,
        NOW + 1,
        "ch340-relay",
        ActuationOutcome::Passage,
        "PASS 1",
    )
    .expect("store");
    let rows = db.actuations(1).expect("rows");
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[1].outcome, ActuationOutcome::Passage);
    assert_eq!(rows[1].detail, "PASS 1");
    assert!(
        db.record_actuation(7, NOW, "gate", ActuationOutcome::Delivered, "")
            .is_err(),
        "an actuation names a record that exists"
    );
}

#[test]
fn unsynced_runs_page_by_sequence_and_marking_needs_every_record_unsynced() {
    let (_dir, mut db) = fresh();
    taps(&mut db, 5, 10);
    assert_eq!(seqs(db.unsynced_run(0, 2).expect("run")), [1, 2]);
    assert_eq!(seqs(db.unsynced_run(2, 10).expect("run")), [3, 4, 5]);
    db.mark_synced(1, 2, NOW).expect("marked");
    assert_eq!(seqs(db.unsynced_run(0, 10).expect("run")), [3, 4, 5]);
    // Overlapping an acknowledged range, or past the head: nothing changes.
    assert!(db.mark_synced(2, 3, NOW).is_err());
    assert!(db.mark_synced(5, 6, NOW).is_err());
    assert_eq!(db.summary().expect("summary").unsynced, 3);
}

#[test]
fn prune_deletes_only_acknowledged_records_past_retention() {
    let (_dir, mut db) = fresh();
    taps(&mut db, 3, 10);
    db.mark_synced(1, 1, NOW - 100).expect("marked");
    db.mark_synced(2, 2, NOW).expect("marked");
    let pruned = db.prune(NOW - 50, 0).expect("prune");
    assert_eq!(pruned.records, 1);
    let left = seqs(db.records(false).expect("records"));
    assert_eq!(
        left,
        [2, 3],
        "the unsynced record 3 and the recent ack stay"
    );
    // The counter survives pruning: the same token is still a replay.
    assert_eq!(tap(&mut db, 1, 10).unwrap_err().reason, Reason::Replayed);
}

#[test]
fn deny_entries_apply_in_version_order_and_a_gap_is_refused() {
    use sonotap_protocol::wire::{DenyAction, DenyEntry, DenyReason};
    let (_dir, mut db) = fresh();
    let wallet = sonotap_protocol::token::WalletId::of_key(&wallet().verifying_key().to_bytes());
    let entry = |version, action| {
        DenyEntry::sign(
            version,
            action,
            wallet,
            NOW,
            DenyReason::CounterReused,
            1,
            &issuer(),
        )
        .expect("sign")
    };
    assert_eq!(
        db.apply_deny_entries(&[entry(1, DenyAction::Deny)])
            .expect("apply"),
        1
    );
    assert_eq!(
        tap(&mut db, 1, 10).unwrap_err().reason,
        Reason::WalletDenied
    );
    assert!(
        db.apply_deny_entries(&[entry(3, DenyAction::Allow)])
            .is_err(),
        "gap"
    );
    assert_eq!(db.sync_state().expect("state").deny_version, 1);
    // Re-sent entries are skipped; the allow lifts the denial.
    let applied = db
        .apply_deny_entries(&[entry(1, DenyAction::Deny), entry(2, DenyAction::Allow)])
        .expect("apply");
    assert_eq!(applied, 2);
    tap(&mut db, 1, 10).expect("accepted again");
}

fn decline(n: u32) -> DeclineEntry {
    DeclineEntry {
        at: NOW + u64::from(n),
        reason: "replayed".into(),
        wallet: Some("8295c3321c53b2d7".into()),
        amount: Some(250),
        counter: Some(n),
        detail: format!("decline {n}"),
    }
}

#[test]
fn decline_log_keeps_only_the_newest_entries() {
    let (_dir, mut db) = fresh();
    let total = DECLINE_LOG_CAP as u32 + 5;
    for n in 1..=total {
        db.log_decline(&decline(n)).expect("log");
    }
    let count: i64 = db
        .conn
        .query_row("SELECT count(*) FROM declines", [], |r| r.get(0))
        .expect("count");
    assert_eq!(count, DECLINE_LOG_CAP as i64);
    let recent = db.recent_declines(3).expect("recent");
    let counters: Vec<_> = recent.iter().map(|d| d.counter).collect();
    assert_eq!(counters, [Some(total), Some(total - 1), Some(total - 2)]);
    let all = db.recent_declines(5_000).expect("all");
    assert_eq!(
        all.last().and_then(|d| d.counter),
        Some(6),
        "the oldest five trimmed"
    );
}

#[test]
fn decline_log_survives_reopening_and_reads_read_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("reader.db");
    {
        let mut db = fresh_db(&dir);
        db.log_decline(&DeclineEntry {
            wallet: None,
            counter: None,
            ..decline(1)
        })
        .expect("log");
        db.log_decline(&decline(2)).expect("log");
    }
    let db = ReaderDb::open_read_only(&path).expect("read-only open");
    let recent = db.recent_declines(10).expect("recent");
    assert_eq!(
        recent,
        vec![
            decline(2),
            DeclineEntry {
                wallet: None,
                counter: None,
                ..decline(1)
            }
        ]
    );
    assert!(
        db.set_meta("x", "y").is_err(),
        "a read-only handle never writes"
    );
}

#[test]
fn read_only_open_never_creates_or_migrates() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("reader.db");
    assert!(matches!(
        ReaderDb::open_read_only(&path),
        Err(StoreError::Missing { .. })
    ));
    assert!(!path.exists());
    std::fs::write(&path, b"not a database at all, just some text").expect("write");
    assert!(ReaderDb::open_read_only(&path).is_err());
}

#[test]
fn oldest_unsynced_time_follows_the_queue() {
    let (_dir, mut db) = fresh();
    assert_eq!(db.oldest_unsynced_at().expect("read"), None);
    tap(&mut db, 1, 100).expect("accepted");
    assert_eq!(db.oldest_unsynced_at().expect("read"), Some(NOW));
}

/// Issue 13 item 2, the reader's side: whatever is asked, the reader writes
/// at most one void per charge, for exactly the charge's amount, and never
/// a void of a void.
#[test]
fn issue13_02_reader_never_writes_a_void_larger_than_its_charge_or_a_second_void() {
    let (dir, mut db) = fresh();
    for (counter, amount) in [(1, 100), (2, 250), (3, 1)] {
        tap(&mut db, counter, amount).expect("accept");
    }
    for seq in [1, 2, 3] {
        void(&mut db, seq, "vend failed").expect("first void");
        for _ in 0..3 {
            assert!(matches!(
                void(&mut db, seq, "again"),
                Err(VoidError::AlreadyVoided { .. })
            ));
        }
    }
    for void_seq in [4, 5, 6] {
        assert!(matches!(
            void(&mut db, void_seq, "a void of a void"),
            Err(VoidError::NotACharge { .. })
        ));
    }
    let records = db.records(false).expect("records");
    assert_eq!(records.len(), 6, "three charges and exactly three voids");
    for charge in records.iter().filter(|r| r.kind == RecordKind::Charge) {
        let voids: Vec<_> = records
            .iter()
            .filter(|r| r.kind == RecordKind::Void && r.token == charge.token)
            .collect();
        assert_eq!(voids.len(), 1, "one void for charge {}", charge.seq);
        assert_eq!(voids[0].amount, charge.amount);
        assert!(voids[0].seq > charge.seq);
    }
    // The schema itself refuses a second void row for one charge.
    let other = rusqlite::Connection::open(dir.path().join("reader.db")).expect("open");
    assert!(
        other
            .execute(
                "INSERT INTO voids (seq, charge_seq, reason) VALUES (6, 1, 'forced')",
                [],
            )
            .is_err()
    );
}

fn vend_charge(db: &mut ReaderDb, counter: u32, price: u32) -> Committed {
    let token = authentic(
        db,
        PaymentTerms {
            counter,
            ..payment()
        },
    );
    let price = NonZeroU32::new(price).expect("price");
    with_signer(|signer| db.commit_vend_charge(signer, &token, &policy(), price, "mdb@pty", NOW))
        .expect("store works")
        .expect("accepted")
}

#[test]
fn issue13_03_a_void_that_fails_on_a_locked_database_stays_owed_and_is_written_on_retry() {
    let (dir, mut db) = fresh();
    let charge = vend_charge(&mut db, 5, 150);
    let pending = db.pending_vends().expect("pending");
    assert_eq!(
        pending.len(),
        1,
        "the charge is pending delivery from its own commit"
    );
    assert_eq!(
        (pending[0].charge_seq, pending[0].device.as_str()),
        (charge.seq, "mdb@pty")
    );

    // Another process (here: another connection) holds the write lock.
    let other = Connection::open(dir.path().join("reader.db")).expect("second connection");
    other.execute_batch("BEGIN IMMEDIATE").expect("lock");
    let err = void(&mut db, charge.seq, "vend failed: 3").expect_err("the lock is held");
    assert!(
        matches!(err, VoidError::Store(StoreError::Locked { .. })),
        "{err}"
    );
    assert_eq!(
        db.void_of(charge.seq).expect("read"),
        None,
        "nothing voided"
    );
    assert_eq!(
        db.pending_vends().expect("pending").len(),
        1,
        "the void is still owed, on disk"
    );
    other.execute_batch("COMMIT").expect("unlock");

    let voided = void(&mut db, charge.seq, "vend failed: 3").expect("the retry writes the void");
    assert_eq!((voided.charge_seq, voided.amount), (charge.seq, 150));
    assert!(db.pending_vends().expect("pending").is_empty(), "settled");
    assert_eq!(
        db.void_of(charge.seq).expect("read"),
        Some((voided.seq, "vend failed: 3".into()))
    );
}

#[test]
fn issue13_03_a_confirmed_vend_is_no_longer_pending_and_prune_keeps_pending_charges() {
    let (_dir, mut db) = fresh();
    let delivered = vend_charge(&mut db, 5, 100);
    let owed = vend_charge(&mut db, 6, 100);
    db.confirm_vend(delivered.seq, NOW + 1, "mdb@pty", "item 1 at 100")
        .expect("confirm");
    let pending: Vec<u64> = db
        .pending_vends()
        .expect("pending")
        .iter()
        .map(|p| p.charge_seq)
        .collect();
    assert_eq!(pending, [owed.seq]);
    assert_eq!(
        db.actuations(delivered.seq).expect("actuations")[0].outcome,
        ActuationOutcome::VendSuccess
    );
    db.mark_synced(delivered.seq, owed.seq, NOW)
        .expect("synced");
    db.prune(NOW + 10, 0).expect("prune");
    let kept = seqs(db.records(false).expect("records"));
    assert_eq!(kept, [owed.seq], "the charge whose void is owed is kept");
    void(&mut db, owed.seq, "never confirmed").expect("its void can still be written");
}

/// Review of issue 13: `sonotap status` opens the database read-only (no
/// migration), so a database written before `pending_vends` existed must
/// read as "nothing pending", not as an unreadable database.
#[test]
fn issue13_03_status_reads_a_database_from_before_pending_vends_as_nothing_pending() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("reader.db");
    drop(fresh_db(&dir));
    let raw = rusqlite::Connection::open(&path).expect("open");
    raw.execute_batch("DROP TABLE pending_vends; PRAGMA user_version = 3;")
        .expect("back to schema 3");
    drop(raw);
    let db = ReaderDb::open_read_only(&path).expect("read-only open");
    assert!(db.pending_vends().expect("pending").is_empty());
}

/// What a peer `reader` announced: it charged the test wallet's `payment` as
/// `seq`, holding the credential to the token's own claim.
fn peer_accept(db: &ReaderDb, reader: &str, seq: u64, payment: PaymentTerms) -> SiteAccept {
    SiteAccept {
        reader: reader.into(),
        seq,
        at: NOW,
        running_total: u64::from(payment.total_before) + u64::from(payment.amount),
        stale_after: NOW + 300,
        sent_us: NOW * 1_000_000,
        token: authentic(db, payment),
    }
}

#[test]
fn a_token_a_site_peer_accepted_is_declined_replayed_naming_the_peer() {
    let (_dir, mut db) = fresh();
    let first = PaymentTerms {
        counter: 3,
        ..payment()
    };
    let learned = peer_accept(&db, "gate-2", 17, first);
    assert!(
        db.learn_site_accept(&learned, NOW * 1_000_000 + 5, NOW)
            .unwrap()
    );
    let declined = tap(&mut db, 3, first.amount).unwrap_err();
    assert_eq!(declined.reason, Reason::Replayed);
    assert!(declined.detail.contains("gate-2"), "{}", declined.detail);
    // The wallet's next token is its own and is accepted.
    tap(&mut db, 4, first.amount).expect("a later counter is accepted");
    assert_eq!(db.records(false).unwrap().len(), 1);
}

#[test]
fn a_repeated_announcement_changes_nothing() {
    let (_dir, mut db) = fresh();
    let learned = peer_accept(&db, "gate-2", 17, payment());
    assert!(
        db.learn_site_accept(&learned, NOW * 1_000_000, NOW)
            .unwrap()
    );
    assert!(
        !db.learn_site_accept(&learned, NOW * 1_000_000 + 9, NOW)
            .unwrap()
    );
    let rows = db.learned_accepts().unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(
        rows[0].learned_us,
        NOW * 1_000_000,
        "the first learning stands"
    );
}

#[test]
fn a_re_initialised_peer_reusing_a_sequence_number_is_still_heard() {
    let (_dir, mut db) = fresh();
    let before = peer_accept(&db, "gate-2", 1, payment());
    let after = peer_accept(
        &db,
        "gate-2",
        1,
        PaymentTerms {
            counter: 9,
            ..payment()
        },
    );
    assert!(db.learn_site_accept(&before, NOW * 1_000_000, NOW).unwrap());
    assert!(db.learn_site_accept(&after, NOW * 1_000_000, NOW).unwrap());
    assert_eq!(tap(&mut db, 9, 10).unwrap_err().reason, Reason::Replayed);
}

/// Issue 17 (review): a cheating wallet claims a running total of 0 at
/// every gate; the total the peer held it to is what counts here.
#[test]
fn the_running_total_a_peer_held_counts_against_the_offline_limit_here_whatever_the_token_claims() {
    let (_dir, mut db) = fresh();
    let limit = u64::from(terms().offline_limit);
    let cap = terms().per_payment_cap;
    // The peer accepted a token claiming nothing spent, but it held the
    // credential to the limit less one.
    let claimed_nothing = PaymentTerms {
        counter: 3,
        amount: cap,
        total_before: 0,
        ..payment()
    };
    let learned = SiteAccept {
        running_total: limit - 1,
        ..peer_accept(&db, "gate-2", 1, claimed_nothing)
    };
    db.learn_site_accept(&learned, NOW * 1_000_000, NOW)
        .unwrap();
    // Here the wallet claims nothing again: two units more pass the limit.
    let declined = tap(&mut db, 4, 2).unwrap_err();
    assert_eq!(declined.reason, Reason::OverOfflineLimit);
    tap(&mut db, 5, 1).expect("one unit is still within it");
}

#[test]
fn learned_accepts_whose_tokens_are_stale_here_are_forgotten_and_never_stored() {
    let (_dir, mut db) = fresh();
    let old = peer_accept(&db, "gate-2", 1, payment());
    db.learn_site_accept(&old, NOW * 1_000_000, NOW).unwrap();
    let newer = SiteAccept {
        stale_after: NOW + 1000,
        ..peer_accept(
            &db,
            "gate-2",
            2,
            PaymentTerms {
                counter: 9,
                ..payment()
            },
        )
    };
    // At NOW + 301 the first token is stale here: forgotten.
    db.learn_site_accept(&newer, NOW * 1_000_000, NOW + 301)
        .unwrap();
    let rows = db.learned_accepts().unwrap();
    assert_eq!(rows.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![2]);
    // One already stale when it arrives is not stored at all.
    let late = peer_accept(
        &db,
        "gate-2",
        3,
        PaymentTerms {
            counter: 10,
            ..payment()
        },
    );
    assert!(
        !db.learn_site_accept(&late, NOW * 1_000_000, NOW + 301)
            .unwrap()
    );
    assert_eq!(db.learned_accepts().unwrap().len(), 1);
}

#[test]
fn charges_since_lists_only_recent_charges_newest_limited() {
    let (_dir, mut db) = fresh();
    taps(&mut db, 5, 10);
    assert_eq!(db.charges_since(NOW, 100).unwrap().len(), 5);
    assert!(db.charges_since(NOW + 1, 100).unwrap().is_empty());
    let newest = db.charges_since(0, 2).unwrap();
    assert_eq!(newest.iter().map(|c| c.seq).collect::<Vec<_>>(), vec![4, 5]);
}

/// Issue 17: a deny entry for one credential declines that credential's
/// tokens `wallet_denied`, naming the credential, and no other credential
/// of the wallet; its allow entry lifts it; `check_payment` (vending)
/// agrees.
#[test]
fn issue17_a_suspended_credential_is_declined_and_the_wallets_next_credential_is_not() {
    use sonotap_protocol::token::CredentialTerms;
    use sonotap_protocol::wire::{DenyAction, DenyEntry, DenyReason, DenyScope};
    let (_dir, mut db) = fresh();
    let wallet = sonotap_protocol::token::WalletId::of_key(&wallet().verifying_key().to_bytes());
    let suspended = credential(terms()).digest();
    let entry = |version, action| {
        DenyEntry::sign_scoped(
            version,
            action,
            wallet,
            DenyScope::Credential(suspended),
            NOW,
            DenyReason::CounterReused,
            1,
            &issuer(),
        )
        .expect("sign")
    };
    db.apply_deny_entries(&[entry(1, DenyAction::Deny)])
        .expect("apply");
    let decline = tap(&mut db, 1, 10).unwrap_err();
    assert_eq!(decline.reason, Reason::WalletDenied);
    assert!(
        decline.detail.contains(&hex::encode(suspended))
            && decline
                .detail
                .contains("suspended for review (counter_reused)"),
        "{}",
        decline.detail
    );
    let checked = db
        .check_payment(
            &authentic(
                &db,
                PaymentTerms {
                    counter: 1,
                    amount: 10,
                    ..payment()
                },
            ),
            &policy(),
            NOW,
        )
        .expect("store")
        .unwrap_err();
    assert_eq!(checked, decline);

    // A renewed credential of the same wallet is accepted.
    let renewed = CredentialTerms {
        valid_from: terms().valid_from + 60,
        ..terms()
    };
    let bytes = token_bytes(
        renewed,
        PaymentTerms {
            counter: 2,
            amount: 10,
            ..payment()
        },
    );
    let token = authenticate(&bytes, &db.trusted_keys().expect("keys")).expect("authentic");
    with_signer(|signer| db.commit_payment(signer, &token, &policy(), None, NOW))
        .expect("store")
        .expect("the renewed credential is not suspended");

    // The allow entry lifts the suspension.
    db.apply_deny_entries(&[entry(2, DenyAction::Allow)])
        .expect("apply");
    tap(&mut db, 3, 10).expect("accepted again");
}
