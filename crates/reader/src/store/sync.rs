//! What the uplink needs from the reader database: runs of unsynced
//! records, marking them synced on a verified acknowledgement, pruning after
//! the retention period, and applying what the hub sent back.
//!
//! Every write here is one short transaction, so a tap waiting for the write
//! lock waits for at most one of them.

use rusqlite::params;

use super::{ReaderDb, StoreError, begin_immediate, sqlite};
use sonotap_protocol::policy::TrustedKeys;
use sonotap_protocol::record::Record;
use sonotap_protocol::wire::{DenyAction, DenyEntry, DenyScope};

const DENY_VERSION: &str = "sync.deny_version";
const KEYSET_VERSION: &str = "sync.keyset_version";
const CLOCK_OFFSET_MS: &str = "sync.clock_offset_ms";
const LAST_SYNC_AT: &str = "sync.last_ok_at";
const LAST_ERROR: &str = "sync.last_error";
const LAST_ATTEMPT_AT: &str = "sync.last_attempt_at";

/// Records marked synced per write transaction.
pub const MARK_SLICE: u64 = 500;

/// What the reader knows of its link to the hub.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
pub struct SyncState {
    /// Highest deny-list version applied.
    pub deny_version: u64,
    /// Version of the issuer key set in use (0: the one from provisioning).
    pub keyset_version: u64,
    /// Hub clock minus reader clock, milliseconds, at the last sync.
    pub clock_offset_ms: i64,
    /// When a sync last completed, Unix seconds.
    pub last_sync_at: Option<u64>,
    /// Why the last sync failed, if it did.
    pub last_error: Option<String>,
}

/// What a prune removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct Pruned {
    /// Acknowledged records older than the retention period.
    pub records: u64,
    /// Running totals of credentials that expired before the cutoff.
    pub credential_totals: u64,
}

impl ReaderDb {
    /// The oldest unsynced records after sequence number `after`, in order,
    /// at most `limit`, stopping before any gap so that they form one batch.
    pub fn unsynced_run(&self, after: u64, limit: usize) -> Result<Vec<Record>, StoreError> {
        let mut out: Vec<Record> = Vec::new();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.records_where(
            "WHERE synced_at IS NULL AND seq > ?1 ORDER BY seq LIMIT ?2",
            [sqlite::int(after), limit],
            &mut |record: Record| {
                if out.last().is_none_or(|prev| prev.seq + 1 == record.seq) {
                    out.push(record);
                }
                Ok::<(), StoreError>(())
            },
        )?;
        // Records after a gap wait for the next batch; the gap itself is
        // impossible (sequence numbers are assigned in one transaction) and
        // would be caught by `reader verify` and the hub.
        if let Some(i) = out.windows(2).position(|w| w[0].seq + 1 != w[1].seq) {
            out.truncate(i + 1);
        }
        Ok(out)
    }

    /// Marks `first..=last` as acknowledged by the hub at `at`.
    ///
    /// Written in slices of `MARK_SLICE` (500) records, one short transaction
    /// each, so a tap waiting for the write lock waits for one slice, not for
    /// a whole batch. Each slice must be wholly unsynced or it changes
    /// nothing; slices already marked stay marked (a crash in between only
    /// means the next sync gets those records acknowledged as duplicates).
    pub fn mark_synced(&mut self, first: u64, last: u64, at: u64) -> Result<(), StoreError> {
        let mut start = first;
        while start <= last {
            let end = last.min(start.saturating_add(MARK_SLICE - 1));
            self.mark_slice(start, end, at)?;
            match end.checked_add(1) {
                Some(next) => start = next,
                None => break,
            }
        }
        // Fold the WAL back into the database here, on the uplink's
        // connection, so a tap's commit does not find a large WAL and pay
        // for the checkpoint itself. PASSIVE: never waits for readers or a tap.
        self.conn
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
            .map_err(|e| StoreError::from_sqlite(&self.path, e))
    }

    fn mark_slice(&mut self, first: u64, last: u64, at: u64) -> Result<(), StoreError> {
        self.write(|tx, path| {
            let err = |e| StoreError::from_sqlite(path, e);
            let changed = tx
                .execute(
                    "UPDATE records SET synced_at = ?1
                 WHERE seq BETWEEN ?2 AND ?3 AND synced_at IS NULL",
                    params![sqlite::int(at), sqlite::int(first), sqlite::int(last)],
                )
                .map_err(err)?;
            let expected = last.saturating_sub(first) + 1;
            if changed as u64 != expected {
                return Err(StoreError::inconsistent(
                    path,
                    format!(
                        "acknowledgement for records {first}..={last} matched {changed} unsynced \
                     records, not {expected}; nothing marked"
                    ),
                ));
            }
            Ok(())
        })
    }

    /// Deletes records the hub acknowledged before `synced_before`, and the
    /// running totals of credentials that expired before `expired_before`
    /// (a token under them is declined as expired anyway). Wallet counters
    /// are kept: they are what refuses a replay.
    pub fn prune(&mut self, synced_before: u64, expired_before: u64) -> Result<Pruned, StoreError> {
        self.write(|tx, path| {
            let err = |e| StoreError::from_sqlite(path, e);
            let records = tx
                .execute(
                    // A charge whose void is owed is kept until the void is written.
                    "DELETE FROM records WHERE synced_at IS NOT NULL AND synced_at < ?1
                     AND seq NOT IN (SELECT charge_seq FROM pending_vends)",
                    [sqlite::int(synced_before)],
                )
                .map_err(err)?;
            let credential_totals = tx
                .execute(
                    "DELETE FROM credential_totals WHERE valid_until < ?1",
                    [sqlite::int(expired_before)],
                )
                .map_err(err)?;
            Ok(Pruned {
                records: records as u64,
                credential_totals: credential_totals as u64,
            })
        })
    }

    /// Applies verified deny-list entries, which must continue the version
    /// sequence from [`SyncState::deny_version`] without a gap.
    pub fn apply_deny_entries(&mut self, entries: &[DenyEntry]) -> Result<u64, StoreError> {
        self.write(|tx, path| {
            let err = |e| StoreError::from_sqlite(path, e);
            let mut version = meta_u64(tx, DENY_VERSION, path)?;
            for entry in entries {
                if entry.version <= version {
                    continue; // already applied
                }
                if entry.version != version + 1 {
                    return Err(StoreError::inconsistent(
                        path,
                        format!(
                            "deny-list entry {} does not follow version {version}",
                            entry.version
                        ),
                    ));
                }
                let reason = format!("hub: {}", entry.reason.as_str());
                match (entry.action, entry.scope) {
                    (DenyAction::Deny, DenyScope::Wallet) => tx.execute(
                        "INSERT INTO deny_list (wallet_id, reason, added_at) VALUES (?1, ?2, ?3)
                     ON CONFLICT (wallet_id) DO UPDATE SET reason = excluded.reason",
                        params![entry.wallet.0.as_slice(), reason, sqlite::int(entry.at)],
                    ),
                    (DenyAction::Allow, DenyScope::Wallet) => tx.execute(
                        "DELETE FROM deny_list WHERE wallet_id = ?1",
                        [entry.wallet.0.as_slice()],
                    ),
                    (DenyAction::Deny, DenyScope::Credential(digest)) => tx.execute(
                        "INSERT INTO credential_deny (credential, wallet_id, reason, added_at)
                         VALUES (?1, ?2, ?3, ?4)
                         ON CONFLICT (credential) DO UPDATE SET reason = excluded.reason",
                        params![
                            digest.as_slice(),
                            entry.wallet.0.as_slice(),
                            entry.reason.as_str(),
                            sqlite::int(entry.at)
                        ],
                    ),
                    (DenyAction::Allow, DenyScope::Credential(digest)) => tx.execute(
                        "DELETE FROM credential_deny WHERE credential = ?1",
                        [digest.as_slice()],
                    ),
                }
                .map_err(err)?;
                version = entry.version;
            }
            set_meta(tx, DENY_VERSION, &version.to_string(), path)?;
            Ok(version)
        })
    }

    /// Replaces the trusted issuer keys with a verified key set of a higher
    /// version than the one in use; never goes back to a lower or equal one
    /// (checked in the same transaction).
    pub fn replace_trusted_keys(
        &mut self,
        keys: &TrustedKeys,
        version: u64,
        now: u64,
    ) -> Result<(), StoreError> {
        self.write(|tx, path| {
            let err = |e| StoreError::from_sqlite(path, e);
            let current = meta_u64(tx, KEYSET_VERSION, path)?;
            if version <= current {
                return Err(StoreError::inconsistent(
                    path,
                    format!(
                        "key set version {version} is not above version {current} in use; \
                         keys unchanged"
                    ),
                ));
            }
            tx.execute("DELETE FROM trusted_keys", []).map_err(err)?;
            for (id, key) in keys.iter() {
                tx.execute(
                    "INSERT INTO trusted_keys (key_id, public_key, added_at) VALUES (?1, ?2, ?3)",
                    params![id, key.as_bytes().as_slice(), sqlite::int(now)],
                )
                .map_err(err)?;
            }
            set_meta(tx, KEYSET_VERSION, &version.to_string(), path)?;
            Ok(())
        })
    }

    /// Stores the hub's clock minus this reader's, from the last sync.
    pub fn note_clock_offset(&self, offset_ms: i64) -> Result<(), StoreError> {
        self.set_meta(CLOCK_OFFSET_MS, &offset_ms.to_string())
    }

    /// Records how a sync round ended: `None` for success at `at`, or why it failed.
    pub fn note_sync(&self, at: u64, error: Option<&str>) -> Result<(), StoreError> {
        self.set_meta(LAST_ATTEMPT_AT, &at.to_string())?;
        match error {
            None => {
                self.set_meta(LAST_SYNC_AT, &at.to_string())?;
                self.set_meta(LAST_ERROR, "")
            }
            Some(e) => self.set_meta(LAST_ERROR, e),
        }
    }

    /// When a sync round last ended, successfully or not (Unix seconds);
    /// `None` before the first round, or for rounds from before this was kept.
    pub fn last_sync_attempt(&self) -> Result<Option<u64>, StoreError> {
        self.meta_number(LAST_ATTEMPT_AT)
    }

    /// A number kept in the metadata table, if set; anything else there is
    /// an inconsistency that names the key and the value.
    fn meta_number<T: std::str::FromStr>(&self, key: &str) -> Result<Option<T>, StoreError> {
        self.meta(key)?
            .map(|v| {
                v.parse::<T>().map_err(|_| {
                    StoreError::inconsistent(&self.path, format!("meta {key} = {v:?}"))
                })
            })
            .transpose()
    }

    /// Reader time at `system_now` (Unix seconds): the system clock
    /// corrected by the offset measured against the hub, the clock every
    /// decision, beacon and site announcement uses
    /// ([`crate::reader::adjusted`]). One read of one key.
    pub fn reader_time(&self, system_now: u64) -> Result<u64, StoreError> {
        let offset_ms = self.meta_number::<i64>(CLOCK_OFFSET_MS)?.unwrap_or(0);
        Ok(crate::reader::adjusted(system_now, offset_ms))
    }

    /// What the reader knows of its link to the hub.
    pub fn sync_state(&self) -> Result<SyncState, StoreError> {
        let number = |key: &str| self.meta_number::<i64>(key);
        let unsigned = |key: &str| -> Result<Option<u64>, StoreError> {
            number(key)?
                .map(|v| sqlite::unsigned(&self.path, "sync state", v))
                .transpose()
        };
        Ok(SyncState {
            deny_version: unsigned(DENY_VERSION)?.unwrap_or(0),
            keyset_version: unsigned(KEYSET_VERSION)?.unwrap_or(0),
            clock_offset_ms: number(CLOCK_OFFSET_MS)?.unwrap_or(0),
            last_sync_at: unsigned(LAST_SYNC_AT)?,
            last_error: self.meta(LAST_ERROR)?.filter(|e| !e.is_empty()),
        })
    }
}

impl ReaderDb {
    /// Runs `f` in one `BEGIN IMMEDIATE` transaction, committed if it succeeds.
    pub(super) fn write<T>(
        &mut self,
        f: impl FnOnce(&rusqlite::Transaction<'_>, &std::path::Path) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let path = self.path.clone();
        let tx = begin_immediate(&mut self.conn, &path)?;
        let out = f(&tx, &path)?;
        tx.commit().map_err(|e| StoreError::from_sqlite(&path, e))?;
        Ok(out)
    }
}

fn meta_u64(
    tx: &rusqlite::Transaction<'_>,
    key: &str,
    path: &std::path::Path,
) -> Result<u64, StoreError> {
    use rusqlite::OptionalExtension;
    let value: Option<String> = tx
        .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
        .optional()
        .map_err(|e| StoreError::from_sqlite(path, e))?;
    match value {
        None => Ok(0),
        Some(v) => v
            .parse()
            .map_err(|_| StoreError::inconsistent(path, format!("meta {key} = {v:?}"))),
    }
}

fn set_meta(
    tx: &rusqlite::Transaction<'_>,
    key: &str,
    value: &str,
    path: &std::path::Path,
) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO meta (key, value) VALUES (?1, ?2)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        [key, value],
    )
    .map(drop)
    .map_err(|e| StoreError::from_sqlite(path, e))
}
