//! The advisory locks a PostgreSQL write takes: on what clearing shares,
//! not on the whole database.
//!
//! An ingest reads and writes three kinds of shared state, and locks each
//! thing it touches, for the rest of its transaction:
//!
//! - a reader's chain (`records` and `batches` of that reader): key
//!   `(1, hash(reader id))`;
//! - a wallet's payments, its credentials' net charges and its deny state:
//!   key `(2, hash(wallet id))`, for every wallet with a payment in the batch;
//! - the deny list's version counter, only when appending an entry:
//!   key `(3, 0)`.
//!
//! Every key is taken in ascending `(class, hash)` order, the deny list's
//! last, so two writers can never each hold a key the other waits for (no
//! deadlock). Two keys whose hashes collide only make two writers wait for
//! each other. Every ingest also holds the hub's [`super::WRITE_LOCK`]
//! shared, and anything else that writes through a [`crate::ledger::Ledger`]
//! takes it exclusively, so such a write (and a migration) excludes all
//! ingests at once.

use std::time::Duration;

use postgres::Transaction;
use sha2::{Digest, Sha256};

use super::{LOCK_TIMEOUT, WRITE_LOCK};
use crate::backend::LockWaits;
use crate::verify::CheckedBatch;
use sonotap_protocol::token::WalletId;

/// An advisory lock key: `(class, hash)`, PostgreSQL's two-integer form
/// (a key space apart from the one-integer [`WRITE_LOCK`]).
pub(super) type Key = (i32, i32);

const READER: i32 = 1;
const WALLET: i32 = 2;

/// The deny list's version counter.
pub(super) const DENY_LIST: Key = (3, 0);

fn hashed(class: i32, domain: &str, bytes: &[u8]) -> Key {
    let digest = Sha256::new()
        .chain_update(domain.as_bytes())
        .chain_update([0])
        .chain_update(bytes)
        .finalize();
    (
        class,
        i32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]),
    )
}

/// The key of a reader's chain.
pub(super) fn reader(id: &str) -> Key {
    hashed(READER, "sonotap/lock/reader", id.as_bytes())
}

/// The key of a wallet's payments, totals and deny state.
pub(super) fn wallet(id: WalletId) -> Key {
    hashed(WALLET, "sonotap/lock/wallet", &id.0)
}

/// What an ingest of `checked` locks, ascending.
pub(super) fn for_batch(checked: &CheckedBatch) -> Vec<Key> {
    let mut keys = vec![reader(&checked.batch.reader_id)];
    keys.extend(
        checked
            .records
            .iter()
            .filter_map(|r| r.payment.as_ref().ok())
            .map(|(p, _)| wallet(p.wallet)),
    );
    keys.sort_unstable();
    keys.dedup();
    keys
}

/// What a write locks.
pub(super) enum Scope<'a> {
    /// Everything: the hub's write lock, exclusively.
    Everything,
    /// The hub's write lock shared, then these keys (ascending).
    Keys(&'a [Key]),
}

/// Sets the lock timeout and takes `scope`'s locks until `tx` ends.
pub(super) fn take(tx: &mut Transaction<'_>, scope: Scope<'_>) -> Result<(), postgres::Error> {
    let mode = match scope {
        Scope::Everything => "",
        Scope::Keys(_) => "_shared",
    };
    tx.batch_execute(&format!(
        "SET LOCAL lock_timeout = {}; SELECT pg_advisory_xact_lock{mode}({WRITE_LOCK})",
        LOCK_TIMEOUT.as_millis()
    ))?;
    if let Scope::Keys(keys) = scope
        && !keys.is_empty()
    {
        let (class, hash): (Vec<i32>, Vec<i32>) = keys.iter().copied().unzip();
        // One row per key, in the arrays' (ascending) order: PostgreSQL
        // evaluates a volatile function of the select list after the sort.
        tx.execute(
            "SELECT pg_advisory_xact_lock(class, hash)
             FROM unnest($1::int4[], $2::int4[]) WITH ORDINALITY AS k(class, hash, i)
             ORDER BY i",
            &[&class, &hash],
        )?;
    }
    Ok(())
}

/// Takes one more key inside a transaction that holds only lower ones.
pub(super) fn take_one(tx: &mut Transaction<'_>, key: Key) -> Result<(), postgres::Error> {
    tx.execute("SELECT pg_advisory_xact_lock($1, $2)", &[&key.0, &key.1])
        .map(drop)
}

impl LockWaits {
    /// Counts one write that spent `took` taking its locks.
    pub(super) fn count(&mut self, took: Duration) {
        self.writes += 1;
        self.total += took;
        self.longest = self.longest.max(took);
    }
}
