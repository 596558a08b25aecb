//! PostgreSQL's [`Ledger`]: a batch at a time, in a few set-based statements.
//!
//! A round trip to the server costs far more than the work of one row, so
//! the ledger does not ask one question per record:
//!
//! - [`Ledger::prefetch`] reads, in three statements, everything clearing
//!   will ask about the batch's payments: the stored payments of each wallet
//!   over the batch's range of its counters, the nearest stored payment
//!   below and above that range under each credential, and each
//!   credential's net charges.
//! - Lookups ([`Ledger::payments_with_counter`], [`Ledger::neighbours`],
//!   [`Ledger::charge_left`]) are answered from what was read plus what this
//!   transaction added; a lookup outside what was read asks the database
//!   (the answer is the same, only slower).
//! - Writes of payments, void counts, credential totals, flags, incidents
//!   and deny entries are kept here and written by [`PgLedger::flush`]
//!   before the commit, one `INSERT … SELECT … FROM unnest(…)` (or
//!   `UPDATE … FROM unnest(…)`) per table, but one `INSERT` per deny entry
//!   (rare: a flagged wallet); records go in one statement as they arrive.
//!
//! The database does not change under the transaction between the prefetch
//! and the flush: every row clearing reads is written only by a writer
//! holding the locks this transaction holds (see the parent module). So
//! "what was read, plus what this transaction added" is what the database
//! would answer, and the decisions are those [`crate::ledger::ingest`]
//! makes over SQLite, which asks its database every time.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Bound;
use std::path::Path;

use postgres::types::ToSql;
use postgres::{Row, Transaction};

use super::{column, inconsistent, locks, pg_err};
use crate::HubError;
use crate::backend::action_name;
use crate::clearing::{Finding, Payment};
use crate::ledger::{
    BatchRow, ChargeLeft, ClearTarget, Clearance, FlagOn, IncidentKind, Ledger, Link,
    OpenSuspension, ReplayCharge, Suspension,
};
use crate::verify::CheckedRecord;
use sonotap_disk::sqlite::{blob, int, unsigned};
use sonotap_protocol::record::RecordKind;
use sonotap_protocol::token::WalletId;
use sonotap_protocol::wire::{DenyAction, DenyEntry, DenyReason, DenyScope};

/// The `payments` columns [`payment_at`] reads, in its order.
const PAYMENT_COLUMNS: &str = "p.token_hash, p.wallet_id, p.counter, p.credential, \
     p.total_before, p.authorised, p.reader_id, p.seq";

/// A payment this transaction knows, with its net charge and void count.
#[derive(Debug, Clone)]
struct Held {
    payment: Payment,
    charged: i64,
    voids: i64,
    /// Stored before this transaction (else inserted by [`PgLedger::flush`]).
    stored: bool,
    /// Stored, and its charge or void count changed here.
    dirty: bool,
}

/// The stored payments under one credential around a batch's counters.
#[derive(Debug, Default)]
struct Window {
    /// The lowest and highest counter of the batch under the credential.
    lo: u32,
    hi: u32,
    /// Every stored payment with a counter in `lo..=hi`, ascending by
    /// counter, then token hash.
    inside: Vec<Payment>,
    /// The stored payment with the highest counter below `lo` (the highest token hash among equals).
    below: Option<Payment>,
    /// The stored payment with the lowest counter above `hi` (the lowest token hash among equals).
    above: Option<Payment>,
}

/// One credential's payments added in this transaction, by counter and token hash.
type Added = BTreeMap<(u32, [u8; 32]), Payment>;

/// A credential's net charges in this transaction.
#[derive(Debug, Clone, Copy)]
struct Spend {
    charged: i64,
    dirty: bool,
}

/// A flag to insert.
struct FlagRow {
    wallet: WalletId,
    credential: [u8; 32],
    rule: &'static str,
    detail: String,
    evidence: String,
    at: i64,
}

/// An incident to insert.
struct IncidentRow {
    reader: String,
    seq: i64,
    kind: &'static str,
    detail: String,
    at: i64,
}

/// A replayed charge this transaction knows.
#[derive(Debug, Clone)]
struct HeldReplay {
    reader: String,
    seq: i64,
    charged: i64,
    voids: i64,
    /// Stored before this transaction (else inserted by [`PgLedger::flush`]).
    stored: bool,
    /// Stored, and its charge or void count changed here.
    dirty: bool,
}

/// A token's replayed charges: read from the database on first lookup
/// (`loaded`), with this transaction's added after them.
#[derive(Debug, Default)]
struct Replays {
    loaded: bool,
    held: Vec<HeldReplay>,
}

/// A replayed token: wallet, counter, token hash.
type TokenKey = (WalletId, u32, [u8; 32]);

/// A suspension to insert.
struct SuspensionRow {
    deny_version: i64,
    credential: [u8; 32],
    wallet: WalletId,
    rule: &'static str,
    detail: String,
    at: i64,
}

/// A deny entry to insert.
struct DenyRow {
    version: i64,
    wallet: WalletId,
    credential: Option<[u8; 32]>,
    action: &'static str,
    reason: &'static str,
    evidence: String,
    at: i64,
    entry: Vec<u8>,
}

/// Statements prepared on one connection, by their text.
#[derive(Default)]
pub(crate) struct Prepared(HashMap<String, postgres::Statement>);

impl Prepared {
    /// The most kept: queries whose text varies with their input (lists
    /// of parameters) are prepared each time once this many are held.
    const MAX: usize = 256;

    /// Forgets them all (a new connection).
    pub(super) fn clear(&mut self) {
        self.0.clear();
    }
}

/// The ledger of one PostgreSQL write transaction.
pub(super) struct PgLedger<'a> {
    pub(super) tx: Transaction<'a>,
    pub(super) target: &'a str,
    statements: &'a mut Prepared,
    /// Every payment with a given wallet and counter (stored and this
    /// transaction's, in token hash order as SQLite's key returns them),
    /// for each key looked up or prefetched.
    held: HashMap<(WalletId, u32), Vec<Held>>,
    /// Stored neighbours around the batch's counters, per credential.
    windows: HashMap<[u8; 32], Window>,
    /// This transaction's new payments per credential, by counter and token hash.
    added: HashMap<[u8; 32], Added>,
    /// This transaction's new payments (wallet, counter, token hash), in order.
    added_order: Vec<(WalletId, u32, [u8; 32])>,
    spend: HashMap<[u8; 32], Spend>,
    /// Why each wallet looked up is denied, if its newest whole-wallet
    /// entry denies it.
    denied: HashMap<WalletId, Option<DenyReason>>,
    deny_version: Option<u64>,
    flags: Vec<FlagRow>,
    incidents: Vec<IncidentRow>,
    denies: Vec<DenyRow>,
    /// Replayed charges per token, for voids and the flush.
    replays: HashMap<TokenKey, Replays>,
    /// This transaction's new replays, in order (token, reader, seq).
    replay_order: Vec<(TokenKey, String, i64)>,
    /// Whether each credential looked up has an open suspension.
    suspended: HashMap<[u8; 32], bool>,
    suspensions: Vec<SuspensionRow>,
    /// Accounts' `void` entries, written after the payments.
    voids: Vec<crate::accounts::NewEntry>,
}

impl<'a> PgLedger<'a> {
    pub(super) fn new(tx: Transaction<'a>, target: &'a str, statements: &'a mut Prepared) -> Self {
        Self {
            tx,
            target,
            statements,
            held: HashMap::new(),
            windows: HashMap::new(),
            added: HashMap::new(),
            added_order: Vec::new(),
            spend: HashMap::new(),
            denied: HashMap::new(),
            deny_version: None,
            flags: Vec::new(),
            incidents: Vec::new(),
            denies: Vec::new(),
            replays: HashMap::new(),
            replay_order: Vec::new(),
            voids: Vec::new(),
            suspended: HashMap::new(),
            suspensions: Vec::new(),
        }
    }

    /// The replayed charges of `first`'s token, read on first use (a void
    /// asks: rare, so not prefetched).
    fn replays_of(&mut self, first: &Payment) -> Result<&mut Vec<HeldReplay>, HubError> {
        let key = (first.wallet, first.counter, first.token_hash);
        let loaded = self.replays.get(&key).is_some_and(|r| r.loaded);
        if !loaded {
            let rows = self.query(
                "SELECT reader_id, seq, charged, voids FROM replays
                 WHERE wallet_id = $1 AND counter = $2 AND token_hash = $3
                 ORDER BY reader_id, seq",
                &[
                    &first.wallet.0.as_slice(),
                    &i64::from(first.counter),
                    &first.token_hash.as_slice(),
                ],
            )?;
            let stored = rows
                .iter()
                .map(|r| {
                    Ok(HeldReplay {
                        reader: column(self.target, r, 0, "replay reader")?,
                        seq: column(self.target, r, 1, "replay seq")?,
                        charged: column(self.target, r, 2, "replay net charge")?,
                        voids: column(self.target, r, 3, "replay void count")?,
                        stored: true,
                        dirty: false,
                    })
                })
                .collect::<Result<Vec<_>, HubError>>()?;
            let entry = self.replays.entry(key).or_default();
            // This transaction's replays are not in the database yet: after.
            let added = std::mem::take(&mut entry.held);
            entry.held = stored;
            entry.held.extend(added);
            entry.loaded = true;
        }
        self.replays
            .get_mut(&key)
            .map(|r| &mut r.held)
            .ok_or_else(|| inconsistent(self.target, "replay cache".into()))
    }

    fn path(&self) -> &Path {
        Path::new(self.target)
    }

    /// `sql` prepared on this connection, once (see [`Prepared`]).
    fn prepared(&mut self, sql: &str) -> Result<Option<postgres::Statement>, HubError> {
        if let Some(statement) = self.statements.0.get(sql) {
            return Ok(Some(statement.clone()));
        }
        // A list of parameters of varying length makes a text per length:
        // not worth keeping.
        if self.statements.0.len() >= Prepared::MAX || sql.contains(" IN (") {
            return Ok(None);
        }
        let statement = self.tx.prepare(sql).map_err(|e| pg_err(self.target, e))?;
        self.statements.0.insert(sql.to_owned(), statement.clone());
        Ok(Some(statement))
    }

    fn query(&mut self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>, HubError> {
        let out = match self.prepared(sql)? {
            Some(statement) => self.tx.query(&statement, params),
            None => self.tx.query(sql, params),
        };
        out.map_err(|e| pg_err(self.target, e))
    }

    fn execute(&mut self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<u64, HubError> {
        let out = match self.prepared(sql)? {
            Some(statement) => self.tx.execute(&statement, params),
            None => self.tx.execute(sql, params),
        };
        out.map_err(|e| pg_err(self.target, e))
    }

    /// The previous and own hash of a record, from column `i` on.
    fn link_at(&self, r: &Row, i: usize) -> Result<Link, HubError> {
        Ok(Link {
            prev_hash: blob(
                self.path(),
                "previous hash",
                column(self.target, r, i, "previous hash")?,
            )?,
            hash: blob(
                self.path(),
                "record hash",
                column(self.target, r, i + 1, "record hash")?,
            )?,
        })
    }

    /// The payments with `wallet` and `counter`, read on first use.
    fn held(&mut self, wallet: WalletId, counter: u32) -> Result<&mut Vec<Held>, HubError> {
        if !self.held.contains_key(&(wallet, counter)) {
            let rows = self.query(
                &format!(
                    "SELECT {PAYMENT_COLUMNS}, p.charged, p.voids FROM payments p
                     WHERE p.wallet_id = $1 AND p.counter = $2 ORDER BY p.token_hash"
                ),
                &[&wallet.0.as_slice(), &i64::from(counter)],
            )?;
            let list = rows
                .iter()
                .map(|r| held_at(self.target, r))
                .collect::<Result<_, _>>()?;
            self.held.insert((wallet, counter), list);
        }
        self.held
            .get_mut(&(wallet, counter))
            .ok_or_else(|| inconsistent(self.target, "payment cache".into()))
    }

    /// The stored payment `p` (same wallet, counter and token).
    fn held_payment(&mut self, p: &Payment) -> Result<&mut Held, HubError> {
        let target = self.target;
        self.held(p.wallet, p.counter)?
            .iter_mut()
            .find(|h| h.payment.token_hash == p.token_hash)
            .ok_or_else(|| {
                inconsistent(
                    target,
                    format!("no stored payment for counter {} of the wallet", p.counter),
                )
            })
    }

    /// The nearest stored payments below and above `counter` under `credential`.
    fn stored_neighbours(
        &mut self,
        credential: &[u8; 32],
        counter: u32,
    ) -> Result<(Option<Payment>, Option<Payment>), HubError> {
        if let Some(w) = self.windows.get(credential)
            && (w.lo..=w.hi).contains(&counter)
        {
            let below = w.inside.partition_point(|p| p.counter < counter);
            let above = w.inside.partition_point(|p| p.counter <= counter);
            let before = match below {
                0 => w.below.clone(),
                i => w.inside.get(i - 1).cloned(),
            };
            let after = w.inside.get(above).cloned().or_else(|| w.above.clone());
            return Ok((before, after));
        }
        let counter = i64::from(counter);
        let mut one = |sql: String| -> Result<Option<Payment>, HubError> {
            let rows = self.query(&sql, &[&credential.as_slice(), &counter])?;
            rows.first()
                .map(|r| payment_at(self.target, r, 0))
                .transpose()
        };
        let before = one(format!(
            "SELECT {PAYMENT_COLUMNS} FROM payments p
             WHERE p.credential = $1 AND p.counter = (
                 SELECT max(counter) FROM payments WHERE credential = $1 AND counter < $2)
             ORDER BY p.token_hash DESC LIMIT 1"
        ))?;
        let after = one(format!(
            "SELECT {PAYMENT_COLUMNS} FROM payments p
             WHERE p.credential = $1 AND p.counter = (
                 SELECT min(counter) FROM payments WHERE credential = $1 AND counter > $2)
             ORDER BY p.token_hash LIMIT 1"
        ))?;
        Ok((before, after))
    }

    /// The credential's net charges in this transaction, read on first use.
    fn spend(&mut self, credential: &[u8; 32]) -> Result<&mut Spend, HubError> {
        if !self.spend.contains_key(credential) {
            let rows = self.query(
                "SELECT charged FROM credential_spend WHERE credential = $1",
                &[&credential.as_slice()],
            )?;
            let charged = match rows.first() {
                Some(r) => column(self.target, r, 0, "credential spend")?,
                None => 0,
            };
            self.spend.insert(
                *credential,
                Spend {
                    charged,
                    dirty: false,
                },
            );
        }
        self.spend
            .get_mut(credential)
            .ok_or_else(|| inconsistent(self.target, "spend cache".into()))
    }

    /// Writes what this transaction kept: new payments, changed charges,
    /// credential totals, flags, incidents and deny entries, one statement
    /// per table (none for a table with nothing to write).
    pub(super) fn flush(&mut self) -> Result<(), HubError> {
        self.flush_payments()?;
        let voids = std::mem::take(&mut self.voids);
        if !voids.is_empty() {
            crate::backend::book::Sql::append_entries(self, &voids)?;
        }
        self.flush_replays()?;
        self.flush_spend()?;
        self.flush_findings()?;
        self.flush_denies()?;
        self.flush_suspensions()
    }

    fn flush_replays(&mut self) -> Result<(), HubError> {
        let mut new: Vec<(&TokenKey, &HeldReplay)> = Vec::with_capacity(self.replay_order.len());
        for (key, reader, seq) in &self.replay_order {
            let held = self
                .replays
                .get(key)
                .and_then(|r| {
                    r.held
                        .iter()
                        .find(|h| !h.stored && h.reader == *reader && h.seq == *seq)
                })
                .ok_or_else(|| inconsistent(self.target, "new replay cache".into()))?;
            new.push((key, held));
        }
        if !new.is_empty() {
            let wallet: Vec<&[u8]> = new.iter().map(|(k, _)| &k.0.0[..]).collect();
            let counter: Vec<i64> = new.iter().map(|(k, _)| i64::from(k.1)).collect();
            let token_hash: Vec<&[u8]> = new.iter().map(|(k, _)| &k.2[..]).collect();
            let reader: Vec<&str> = new.iter().map(|(_, h)| h.reader.as_str()).collect();
            let seq: Vec<i64> = new.iter().map(|(_, h)| h.seq).collect();
            let charged: Vec<i64> = new.iter().map(|(_, h)| h.charged).collect();
            let voids: Vec<i64> = new.iter().map(|(_, h)| h.voids).collect();
            self.tx
                .execute(
                    "INSERT INTO replays (wallet_id, counter, token_hash, reader_id, seq,
                                          charged, voids)
                     SELECT * FROM unnest($1::bytea[], $2::bigint[], $3::bytea[], $4::text[],
                                          $5::bigint[], $6::bigint[], $7::bigint[])",
                    &[
                        &wallet,
                        &counter,
                        &token_hash,
                        &reader,
                        &seq,
                        &charged,
                        &voids,
                    ],
                )
                .map_err(|e| pg_err(self.target, e))?;
        }
        for (key, list) in &self.replays {
            for h in list.held.iter().filter(|h| h.stored && h.dirty) {
                self.tx
                    .execute(
                        "UPDATE replays SET charged = $6, voids = $7
                         WHERE wallet_id = $1 AND counter = $2 AND token_hash = $3
                           AND reader_id = $4 AND seq = $5",
                        &[
                            &key.0.0.as_slice(),
                            &i64::from(key.1),
                            &key.2.as_slice(),
                            &h.reader,
                            &h.seq,
                            &h.charged,
                            &h.voids,
                        ],
                    )
                    .map_err(|e| pg_err(self.target, e))?;
            }
        }
        Ok(())
    }

    fn flush_suspensions(&mut self) -> Result<(), HubError> {
        let rows = std::mem::take(&mut self.suspensions);
        for x in &rows {
            self.execute(
                "INSERT INTO suspensions (deny_version, credential, wallet_id, rule, detail, at)
                 VALUES ($1, $2, $3, $4, $5, $6)",
                &[
                    &x.deny_version,
                    &x.credential.as_slice(),
                    &x.wallet.0.as_slice(),
                    &x.rule,
                    &x.detail,
                    &x.at,
                ],
            )?;
        }
        Ok(())
    }

    fn flush_payments(&mut self) -> Result<(), HubError> {
        let mut new: Vec<&Held> = Vec::with_capacity(self.added_order.len());
        for (wallet, counter, hash) in &self.added_order {
            let held = self
                .held
                .get(&(*wallet, *counter))
                .and_then(|list| list.iter().find(|h| h.payment.token_hash == *hash))
                .ok_or_else(|| inconsistent(self.target, "new payment cache".into()))?;
            new.push(held);
        }
        if !new.is_empty() {
            let token_hash: Vec<&[u8]> = new.iter().map(|h| &h.payment.token_hash[..]).collect();
            let wallet: Vec<&[u8]> = new.iter().map(|h| &h.payment.wallet.0[..]).collect();
            let counter: Vec<i64> = new.iter().map(|h| i64::from(h.payment.counter)).collect();
            let credential: Vec<&[u8]> = new.iter().map(|h| &h.payment.credential[..]).collect();
            let total_before: Vec<i64> = new
                .iter()
                .map(|h| i64::from(h.payment.total_before))
                .collect();
            let authorised: Vec<i64> = new
                .iter()
                .map(|h| i64::from(h.payment.authorised))
                .collect();
            let charged: Vec<i64> = new.iter().map(|h| h.charged).collect();
            let reader: Vec<&str> = new.iter().map(|h| h.payment.reader.as_str()).collect();
            let seq: Vec<i64> = new.iter().map(|h| int(h.payment.seq)).collect();
            let voids: Vec<i64> = new.iter().map(|h| h.voids).collect();
            // In array order, so that ids ascend as the payments were seen.
            self.tx
                .execute(
                    "INSERT INTO payments (token_hash, wallet_id, counter, credential,
                         total_before, authorised, charged, reader_id, seq, voids)
                     SELECT token_hash, wallet_id, counter, credential, total_before,
                            authorised, charged, reader_id, seq, voids
                     FROM unnest($1::bytea[], $2::bytea[], $3::bigint[], $4::bytea[],
                                 $5::bigint[], $6::bigint[], $7::bigint[], $8::text[],
                                 $9::bigint[], $10::bigint[])
                          WITH ORDINALITY AS u(token_hash, wallet_id, counter, credential,
                              total_before, authorised, charged, reader_id, seq, voids, i)
                     ORDER BY i",
                    &[
                        &token_hash,
                        &wallet,
                        &counter,
                        &credential,
                        &total_before,
                        &authorised,
                        &charged,
                        &reader,
                        &seq,
                        &voids,
                    ],
                )
                .map_err(|e| pg_err(self.target, e))?;
        }
        let changed: Vec<&Held> = self
            .held
            .values()
            .flatten()
            .filter(|h| h.stored && h.dirty)
            .collect();
        if !changed.is_empty() {
            let wallet: Vec<&[u8]> = changed.iter().map(|h| &h.payment.wallet.0[..]).collect();
            let counter: Vec<i64> = changed
                .iter()
                .map(|h| i64::from(h.payment.counter))
                .collect();
            let token_hash: Vec<&[u8]> =
                changed.iter().map(|h| &h.payment.token_hash[..]).collect();
            let charged: Vec<i64> = changed.iter().map(|h| h.charged).collect();
            let voids: Vec<i64> = changed.iter().map(|h| h.voids).collect();
            self.tx
                .execute(
                    "UPDATE payments p SET charged = u.charged, voids = u.voids
                     FROM unnest($1::bytea[], $2::bigint[], $3::bytea[], $4::bigint[],
                                 $5::bigint[]) AS u(wallet_id, counter, token_hash, charged, voids)
                     WHERE p.wallet_id = u.wallet_id AND p.counter = u.counter
                       AND p.token_hash = u.token_hash",
                    &[&wallet, &counter, &token_hash, &charged, &voids],
                )
                .map_err(|e| pg_err(self.target, e))?;
        }
        Ok(())
    }

    fn flush_spend(&mut self) -> Result<(), HubError> {
        let (credential, charged): (Vec<&[u8]>, Vec<i64>) = self
            .spend
            .iter()
            .filter(|(_, s)| s.dirty)
            .map(|(c, s)| (&c[..], s.charged))
            .unzip();
        if credential.is_empty() {
            return Ok(());
        }
        self.tx
            .execute(
                "INSERT INTO credential_spend (credential, charged)
                 SELECT * FROM unnest($1::bytea[], $2::bigint[])
                 ON CONFLICT (credential) DO UPDATE SET charged = excluded.charged",
                &[&credential, &charged],
            )
            .map(drop)
            .map_err(|e| pg_err(self.target, e))
    }

    fn flush_findings(&mut self) -> Result<(), HubError> {
        if !self.flags.is_empty() {
            let f = &self.flags;
            let wallet: Vec<&[u8]> = f.iter().map(|r| &r.wallet.0[..]).collect();
            let rule: Vec<&str> = f.iter().map(|r| r.rule).collect();
            let detail: Vec<&str> = f.iter().map(|r| r.detail.as_str()).collect();
            let evidence: Vec<&str> = f.iter().map(|r| r.evidence.as_str()).collect();
            let at: Vec<i64> = f.iter().map(|r| r.at).collect();
            let credential: Vec<&[u8]> = f.iter().map(|r| &r.credential[..]).collect();
            self.tx
                .execute(
                    "INSERT INTO flags (wallet_id, rule, detail, evidence, at, credential)
                     SELECT wallet_id, rule, detail, evidence, at, credential
                     FROM unnest($1::bytea[], $2::text[], $3::text[], $4::text[], $5::bigint[],
                                 $6::bytea[])
                          WITH ORDINALITY AS u(wallet_id, rule, detail, evidence, at,
                                               credential, i)
                     ORDER BY i",
                    &[&wallet, &rule, &detail, &evidence, &at, &credential],
                )
                .map_err(|e| pg_err(self.target, e))?;
        }
        if !self.incidents.is_empty() {
            let n = &self.incidents;
            let reader: Vec<&str> = n.iter().map(|r| r.reader.as_str()).collect();
            let seq: Vec<i64> = n.iter().map(|r| r.seq).collect();
            let kind: Vec<&str> = n.iter().map(|r| r.kind).collect();
            let detail: Vec<&str> = n.iter().map(|r| r.detail.as_str()).collect();
            let at: Vec<i64> = n.iter().map(|r| r.at).collect();
            self.tx
                .execute(
                    "INSERT INTO incidents (reader_id, seq, kind, detail, at)
                     SELECT reader_id, seq, kind, detail, at
                     FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[], $5::bigint[])
                          WITH ORDINALITY AS u(reader_id, seq, kind, detail, at, i)
                     ORDER BY i",
                    &[&reader, &seq, &kind, &detail, &at],
                )
                .map_err(|e| pg_err(self.target, e))?;
        }
        Ok(())
    }

    fn flush_denies(&mut self) -> Result<(), HubError> {
        let rows = std::mem::take(&mut self.denies);
        for d in &rows {
            let credential: Option<&[u8]> = d.credential.as_ref().map(|c| c.as_slice());
            self.execute(
                "INSERT INTO deny_entries (version, wallet_id, action, reason, evidence, at, entry,
                                           credential)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                &[
                    &d.version,
                    &d.wallet.0.as_slice(),
                    &d.action,
                    &d.reason,
                    &d.evidence,
                    &d.at,
                    &d.entry,
                    &credential,
                ],
            )?;
        }
        Ok(())
    }
}

/// A payment from column `i` on ([`PAYMENT_COLUMNS`]' order).
fn payment_at(target: &str, r: &Row, i: usize) -> Result<Payment, HubError> {
    let p = Path::new(target);
    let get = |k: usize, what: &str| -> Result<i64, HubError> { column(target, r, i + k, what) };
    let bytes =
        |k: usize, what: &str| -> Result<Vec<u8>, HubError> { column(target, r, i + k, what) };
    Ok(Payment {
        token_hash: blob(p, "token hash", bytes(0, "token hash")?)?,
        wallet: WalletId(blob(p, "wallet id", bytes(1, "wallet id")?)?),
        counter: unsigned(p, "counter", get(2, "counter")?)?,
        credential: blob(p, "credential", bytes(3, "credential")?)?,
        total_before: unsigned(p, "running total", get(4, "running total")?)?,
        authorised: unsigned(p, "amount", get(5, "amount")?)?,
        reader: column(target, r, i + 6, "payment reader")?,
        seq: unsigned(p, "sequence number", get(7, "sequence number")?)?,
    })
}

/// A stored payment with its charge and void count (columns 8 and 9).
fn held_at(target: &str, r: &Row) -> Result<Held, HubError> {
    Ok(Held {
        payment: payment_at(target, r, 0)?,
        charged: column(target, r, 8, "net charge")?,
        voids: column(target, r, 9, "void count")?,
        stored: true,
        dirty: false,
    })
}

impl Ledger for PgLedger<'_> {
    fn prefetch(&mut self, records: &[&CheckedRecord]) -> Result<(), HubError> {
        // Counter ranges per wallet (charges and voids) and per credential
        // (charges: only they ask for neighbours).
        let mut wallets: HashMap<WalletId, (u32, u32)> = HashMap::new();
        let mut credentials: HashMap<[u8; 32], (u32, u32)> = HashMap::new();
        let mut spent: HashSet<[u8; 32]> = HashSet::new();
        let widen = |range: &mut (u32, u32), c: u32| {
            range.0 = range.0.min(c);
            range.1 = range.1.max(c);
        };
        for record in records {
            let Ok((p, _)) = &record.payment else {
                continue;
            };
            widen(
                wallets.entry(p.wallet).or_insert((p.counter, p.counter)),
                p.counter,
            );
            if record.kind == RecordKind::Charge {
                widen(
                    credentials
                        .entry(p.credential)
                        .or_insert((p.counter, p.counter)),
                    p.counter,
                );
            }
            if !self.spend.contains_key(&p.credential) {
                spent.insert(p.credential);
            }
        }

        let mut windows: Vec<([u8; 32], Window)> = credentials
            .into_iter()
            .map(|(c, (lo, hi))| {
                let window = Window {
                    lo,
                    hi,
                    ..Window::default()
                };
                (c, window)
            })
            .collect();
        let window_of: HashMap<[u8; 32], usize> = windows
            .iter()
            .enumerate()
            .map(|(i, (c, _))| (*c, i))
            .collect();

        // 1. Every stored payment of each wallet over its range of counters
        //    (a batch's counters of one wallet are usually a short run).
        if !wallets.is_empty() {
            let keys: Vec<(WalletId, (u32, u32))> = wallets.into_iter().collect();
            let w_id: Vec<&[u8]> = keys.iter().map(|(w, _)| &w.0[..]).collect();
            let w_lo: Vec<i64> = keys.iter().map(|(_, r)| i64::from(r.0)).collect();
            let w_hi: Vec<i64> = keys.iter().map(|(_, r)| i64::from(r.1)).collect();
            let rows = self.query(
                &format!(
                    "SELECT {PAYMENT_COLUMNS}, p.charged, p.voids
                     FROM unnest($1::bytea[], $2::bigint[], $3::bigint[]) AS q(wallet_id, lo, hi)
                     JOIN payments p
                         ON p.wallet_id = q.wallet_id AND p.counter BETWEEN q.lo AND q.hi
                     ORDER BY p.id"
                ),
                &[&w_id, &w_lo, &w_hi],
            )?;
            let mut found: HashMap<(WalletId, u32), Vec<Held>> = HashMap::new();
            for row in &rows {
                let h = held_at(self.target, row)?;
                // Every counter of a credential's range lies in its
                // wallet's range: its window's inside is read here.
                if let Some((_, w)) = window_of
                    .get(&h.payment.credential)
                    .and_then(|i| windows.get_mut(*i))
                    && (w.lo..=w.hi).contains(&h.payment.counter)
                {
                    w.inside.push(h.payment.clone());
                }
                found
                    .entry((h.payment.wallet, h.payment.counter))
                    .or_default()
                    .push(h);
            }
            for record in records {
                if let Ok((p, _)) = &record.payment {
                    found.entry((p.wallet, p.counter)).or_default();
                }
            }
            // A key looked up before keeps its list (which holds what this
            // transaction added).
            for (key, mut list) in found {
                list.sort_by_key(|h| h.payment.token_hash);
                self.held.entry(key).or_insert(list);
            }
        }

        // 2. Per credential: its stored payments inside the batch's range of
        //    counters (read above, as its wallet's), and the nearest stored
        //    payment below and above that range.
        if !windows.is_empty() {
            for (_, w) in &mut windows {
                w.inside.sort_by_key(|p| (p.counter, p.token_hash));
            }
            let c_id: Vec<&[u8]> = windows.iter().map(|(c, _)| &c[..]).collect();
            let c_lo: Vec<i64> = windows.iter().map(|(_, w)| i64::from(w.lo)).collect();
            let c_hi: Vec<i64> = windows.iter().map(|(_, w)| i64::from(w.hi)).collect();
            let rows = self.query(
                &format!(
                    "SELECT q.i, x.side, x.token_hash, x.wallet_id, x.counter, x.credential,
                            x.total_before, x.authorised, x.reader_id, x.seq
                     FROM unnest($1::bytea[], $2::bigint[], $3::bigint[])
                          WITH ORDINALITY AS q(credential, lo, hi, i)
                     CROSS JOIN LATERAL (
                         (SELECT 0 AS side, {PAYMENT_COLUMNS} FROM payments p
                          WHERE p.credential = q.credential AND p.counter = (
                              SELECT max(counter) FROM payments
                              WHERE credential = q.credential AND counter < q.lo)
                          ORDER BY p.token_hash DESC LIMIT 1)
                         UNION ALL
                         (SELECT 1 AS side, {PAYMENT_COLUMNS} FROM payments p
                          WHERE p.credential = q.credential AND p.counter = (
                              SELECT min(counter) FROM payments
                              WHERE credential = q.credential AND counter > q.hi)
                          ORDER BY p.token_hash LIMIT 1)
                     ) AS x"
                ),
                &[&c_id, &c_lo, &c_hi],
            )?;
            for row in &rows {
                let i: i64 = column(self.target, row, 0, "credential index")?;
                let side: i32 = column(self.target, row, 1, "side")?;
                let payment = payment_at(self.target, row, 2)?;
                let (_, w) = usize::try_from(i - 1)
                    .ok()
                    .and_then(|i| windows.get_mut(i))
                    .ok_or_else(|| inconsistent(self.target, format!("credential index {i}")))?;
                match side {
                    0 => w.below = Some(payment),
                    _ => w.above = Some(payment),
                }
            }
            self.windows.extend(windows);
        }

        // 3. Each credential's net charges.
        if !spent.is_empty() {
            let ids: Vec<&[u8]> = spent.iter().map(|c| &c[..]).collect();
            let rows = self.query(
                "SELECT credential, charged FROM credential_spend WHERE credential = ANY($1)",
                &[&ids],
            )?;
            let mut found: HashMap<[u8; 32], i64> = HashMap::new();
            for row in &rows {
                let credential: [u8; 32] = blob(
                    self.path(),
                    "credential",
                    column(self.target, row, 0, "credential")?,
                )?;
                found.insert(credential, column(self.target, row, 1, "credential spend")?);
            }
            for c in spent {
                let charged = found.get(&c).copied().unwrap_or(0);
                self.spend.entry(c).or_insert(Spend {
                    charged,
                    dirty: false,
                });
            }
        }
        Ok(())
    }

    fn link(&mut self, reader: &str, seq: u64) -> Result<Option<Link>, HubError> {
        let rows = self.query(
            "SELECT prev_hash, hash FROM records WHERE reader_id = $1 AND seq = $2",
            &[&reader, &int(seq)],
        )?;
        rows.first().map(|r| self.link_at(r, 0)).transpose()
    }

    fn links(&mut self, reader: &str, first: u64, last: u64) -> Result<Vec<(u64, Link)>, HubError> {
        let rows = self.query(
            "SELECT seq, prev_hash, hash FROM records
             WHERE reader_id = $1 AND seq BETWEEN $2 AND $3 ORDER BY seq",
            &[&reader, &int(first), &int(last)],
        )?;
        rows.iter()
            .map(|r| {
                Ok((
                    unsigned(
                        self.path(),
                        "sequence number",
                        column(self.target, r, 0, "sequence number")?,
                    )?,
                    self.link_at(r, 1)?,
                ))
            })
            .collect()
    }

    fn insert_record(
        &mut self,
        reader: &str,
        record: &CheckedRecord,
        received_at: u64,
    ) -> Result<(), HubError> {
        self.insert_records(reader, &[record], received_at)
    }

    fn insert_records(
        &mut self,
        reader: &str,
        records: &[&CheckedRecord],
        received_at: u64,
    ) -> Result<(), HubError> {
        if records.is_empty() {
            return Ok(());
        }
        let seq: Vec<i64> = records.iter().map(|r| int(r.seq)).collect();
        let at: Vec<i64> = records.iter().map(|r| int(r.at)).collect();
        let kind: Vec<&str> = records.iter().map(|r| r.kind.as_str()).collect();
        let amount: Vec<i64> = records.iter().map(|r| i64::from(r.amount)).collect();
        let token: Vec<&[u8]> = records.iter().map(|r| r.token.as_slice()).collect();
        let token_hash: Vec<&[u8]> = records.iter().map(|r| &r.token_hash[..]).collect();
        let prev_hash: Vec<&[u8]> = records.iter().map(|r| &r.prev_hash[..]).collect();
        let hash: Vec<&[u8]> = records.iter().map(|r| &r.hash[..]).collect();
        let signature: Vec<&[u8]> = records.iter().map(|r| &r.signature[..]).collect();
        self.execute(
            "INSERT INTO records (reader_id, seq, at, kind, amount, token, token_hash,
                                  prev_hash, hash, signature, received_at)
             SELECT $1, seq, at, kind, amount, token, token_hash, prev_hash, hash, signature, $2
             FROM unnest($3::bigint[], $4::bigint[], $5::text[], $6::bigint[], $7::bytea[],
                         $8::bytea[], $9::bytea[], $10::bytea[], $11::bytea[])
                  AS u(seq, at, kind, amount, token, token_hash, prev_hash, hash, signature)",
            &[
                &reader,
                &int(received_at),
                &seq,
                &at,
                &kind,
                &amount,
                &token,
                &token_hash,
                &prev_hash,
                &hash,
                &signature,
            ],
        )
        .map(drop)
    }

    fn insert_batch(&mut self, row: &BatchRow<'_>) -> Result<(), HubError> {
        let BatchRow {
            reader,
            first,
            last,
            totals,
            last_hash,
            created_at,
            signature,
            via,
            at,
        } = *row;
        self.execute(
            "INSERT INTO batches (reader_id, first_seq, last_seq, count, charged, voided,
                                  last_hash, via, received_at, created_at, signature)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
             ON CONFLICT (reader_id, first_seq, last_seq) DO UPDATE SET
                 count = excluded.count, charged = excluded.charged,
                 voided = excluded.voided, last_hash = excluded.last_hash,
                 via = excluded.via, received_at = excluded.received_at,
                 created_at = excluded.created_at, signature = excluded.signature",
            &[
                &reader,
                &int(first),
                &int(last),
                &i64::from(totals.count),
                &int(totals.charged),
                &int(totals.voided),
                &last_hash.as_slice(),
                &via.as_str(),
                &int(at),
                &int(created_at),
                &signature.as_slice(),
            ],
        )
        .map(drop)
    }

    fn payments_with_counter(
        &mut self,
        wallet: WalletId,
        counter: u32,
    ) -> Result<Vec<Payment>, HubError> {
        Ok(self
            .held(wallet, counter)?
            .iter()
            .map(|h| h.payment.clone())
            .collect())
    }

    fn neighbours(
        &mut self,
        _wallet: WalletId,
        credential: &[u8; 32],
        counter: u32,
    ) -> Result<(Option<Payment>, Option<Payment>), HubError> {
        let (stored_before, stored_after) = self.stored_neighbours(credential, counter)?;
        // Among equal counters, the nearest below has the highest token
        // hash and the nearest above the lowest (SQLite's key order).
        let key = |p: &Payment| (p.counter, p.token_hash);
        let added = self.added.get(credential);
        let added_before = added
            .and_then(|m| m.range(..(counter, [0; 32])).next_back())
            .map(|(_, p)| p);
        let added_after = added
            .and_then(|m| {
                m.range((Bound::Excluded((counter, [0xff; 32])), Bound::Unbounded))
                    .next()
            })
            .map(|(_, p)| p);
        let before = match (stored_before, added_before) {
            (Some(s), Some(a)) if key(&s) > key(a) => Some(s),
            (_, Some(a)) => Some(a.clone()),
            (s, None) => s,
        };
        let after = match (stored_after, added_after) {
            (Some(s), Some(a)) if key(&s) < key(a) => Some(s),
            (_, Some(a)) => Some(a.clone()),
            (s, None) => s,
        };
        Ok((before, after))
    }

    fn insert_payment(&mut self, p: &Payment, charged: u32) -> Result<u64, HubError> {
        let list = self.held(p.wallet, p.counter)?;
        // In token hash order, as SQLite returns them.
        let at = list.partition_point(|h| h.payment.token_hash < p.token_hash);
        list.insert(
            at,
            Held {
                payment: p.clone(),
                charged: i64::from(charged),
                voids: 0,
                stored: false,
                dirty: false,
            },
        );
        self.added_order.push((p.wallet, p.counter, p.token_hash));
        self.added
            .entry(p.credential)
            .or_default()
            .insert((p.counter, p.token_hash), p.clone());
        let spend = self.spend(&p.credential)?;
        spend.charged += i64::from(charged);
        spend.dirty = true;
        let total = spend.charged;
        Ok(unsigned(self.path(), "credential spend", total)?)
    }

    fn credential_charged(&mut self, credential: &[u8; 32]) -> Result<i64, HubError> {
        Ok(self.spend(credential)?.charged)
    }

    fn append_voids(&mut self, entries: &[crate::accounts::NewEntry]) -> Result<(), HubError> {
        // Payments take their ids when the flush writes them: the voids
        // follow them there.
        self.voids.extend_from_slice(entries);
        Ok(())
    }

    fn write_credential_totals(&mut self) -> Result<(), HubError> {
        self.flush_spend()?;
        self.spend.values_mut().for_each(|s| s.dirty = false);
        Ok(())
    }

    fn charge_left(&mut self, p: &Payment) -> Result<ChargeLeft, HubError> {
        let held = self.held_payment(p)?;
        let (left, voids) = (held.charged, held.voids);
        Ok(ChargeLeft {
            left: unsigned(self.path(), "net charge", left)?,
            voids: unsigned(self.path(), "void count", voids)?,
        })
    }

    fn void_charge(&mut self, p: &Payment, amount: u32) -> Result<(), HubError> {
        let held = self.held_payment(p)?;
        held.charged -= i64::from(amount);
        held.voids += 1;
        held.dirty = held.stored;
        let credential = held.payment.credential;
        let spend = self.spend(&credential)?;
        spend.charged -= i64::from(amount);
        spend.dirty = true;
        Ok(())
    }

    fn insert_flag(
        &mut self,
        wallet: WalletId,
        credential: &[u8; 32],
        f: &Finding,
        evidence: &str,
        at: u64,
    ) -> Result<(), HubError> {
        self.flags.push(FlagRow {
            wallet,
            credential: *credential,
            rule: f.rule.as_str(),
            detail: f.detail.clone(),
            evidence: evidence.to_owned(),
            at: int(at),
        });
        Ok(())
    }

    fn wallet_flags(&mut self, wallet: WalletId) -> Result<Vec<FlagOn>, HubError> {
        let rows = self.query(
            "SELECT rule, credential FROM flags WHERE wallet_id = $1 ORDER BY id",
            &[&wallet.0.as_slice()],
        )?;
        let path = self.path();
        let mut flags = rows
            .iter()
            .map(|r| {
                let credential: Option<Vec<u8>> = column(self.target, r, 1, "flag credential")?;
                Ok((
                    column(self.target, r, 0, "flag rule")?,
                    credential
                        .map(|c| blob(path, "credential", c))
                        .transpose()?,
                ))
            })
            .collect::<Result<Vec<_>, HubError>>()?;
        // And this transaction's, not written yet.
        flags.extend(
            self.flags
                .iter()
                .filter(|f| f.wallet == wallet)
                .map(|f| (f.rule.to_owned(), Some(f.credential))),
        );
        Ok(flags)
    }

    fn insert_incident(
        &mut self,
        reader: &str,
        seq: u64,
        kind: IncidentKind,
        detail: &str,
        at: u64,
    ) -> Result<(), HubError> {
        self.incidents.push(IncidentRow {
            reader: reader.to_owned(),
            seq: int(seq),
            kind: kind.as_str(),
            detail: detail.to_owned(),
            at: int(at),
        });
        Ok(())
    }

    fn deny_version(&mut self) -> Result<u64, HubError> {
        if let Some(v) = self.deny_version {
            return Ok(v);
        }
        // The version counter is shared by every wallet: the next version
        // is read under its own lock (the highest key, so taken last).
        locks::take_one(&mut self.tx, locks::DENY_LIST).map_err(|e| pg_err(self.target, e))?;
        let rows = self.query(
            "SELECT coalesce(max(version), 0)::BIGINT FROM deny_entries",
            &[],
        )?;
        let v: i64 = match rows.first() {
            Some(r) => column(self.target, r, 0, "deny version")?,
            None => 0,
        };
        let v = unsigned(self.path(), "deny version", v)?;
        self.deny_version = Some(v);
        Ok(v)
    }

    fn wallet_denial(&mut self, wallet: WalletId) -> Result<Option<DenyReason>, HubError> {
        if let Some(denied) = self.denied.get(&wallet) {
            return Ok(*denied);
        }
        let rows = self.query(
            "SELECT action, reason FROM deny_entries WHERE wallet_id = $1 AND credential IS NULL
             ORDER BY version DESC LIMIT 1",
            &[&wallet.0.as_slice()],
        )?;
        let newest: Option<(String, String)> = rows
            .first()
            .map(|r| {
                Ok::<_, HubError>((
                    column(self.target, r, 0, "deny action")?,
                    column(self.target, r, 1, "deny reason")?,
                ))
            })
            .transpose()?;
        let denied = crate::backend::denial(newest);
        self.denied.insert(wallet, denied);
        Ok(denied)
    }

    fn insert_deny(&mut self, entry: &DenyEntry, evidence: &str) -> Result<(), HubError> {
        let bytes = entry.encode().map_err(|e| HubError::Terms(e.to_string()))?;
        let credential = match entry.scope {
            DenyScope::Wallet => None,
            DenyScope::Credential(c) => Some(c),
        };
        self.denies.push(DenyRow {
            version: int(entry.version),
            wallet: entry.wallet,
            credential,
            action: action_name(entry.action),
            reason: entry.reason.as_str(),
            evidence: evidence.to_owned(),
            at: int(entry.at),
            entry: bytes,
        });
        if credential.is_none() {
            let denied = (entry.action == DenyAction::Deny).then_some(entry.reason);
            self.denied.insert(entry.wallet, denied);
        }
        self.deny_version = Some(entry.version);
        Ok(())
    }

    fn insert_replay(
        &mut self,
        first: &Payment,
        reader: &str,
        seq: u64,
        charged: u32,
    ) -> Result<(), HubError> {
        let key = (first.wallet, first.counter, first.token_hash);
        self.replays.entry(key).or_default().held.push(HeldReplay {
            reader: reader.to_owned(),
            seq: int(seq),
            charged: i64::from(charged),
            voids: 0,
            stored: false,
            dirty: false,
        });
        self.replay_order.push((key, reader.to_owned(), int(seq)));
        Ok(())
    }

    fn replays_at(&mut self, first: &Payment, reader: &str) -> Result<Vec<ReplayCharge>, HubError> {
        let path = Path::new(self.target);
        let mut found: Vec<(i64, i64, i64)> = self
            .replays_of(first)?
            .iter()
            .filter(|h| h.reader == reader)
            .map(|h| (h.seq, h.charged, h.voids))
            .collect();
        found.sort_unstable();
        found
            .into_iter()
            .map(|(seq, left, voids)| {
                Ok(ReplayCharge {
                    reader: reader.to_owned(),
                    seq: unsigned(path, "sequence number", seq)?,
                    left: ChargeLeft {
                        left: unsigned(path, "net charge", left)?,
                        voids: unsigned(path, "void count", voids)?,
                    },
                })
            })
            .collect()
    }

    fn void_replay(
        &mut self,
        first: &Payment,
        reader: &str,
        seq: u64,
        amount: u32,
    ) -> Result<(), HubError> {
        let target = self.target;
        let seq = int(seq);
        let held = self
            .replays_of(first)?
            .iter_mut()
            .find(|h| h.reader == reader && h.seq == seq)
            .ok_or_else(|| inconsistent(target, format!("no replay at {reader} #{seq}")))?;
        held.charged -= i64::from(amount);
        held.voids += 1;
        held.dirty = held.stored;
        Ok(())
    }

    fn is_suspended(&mut self, credential: &[u8; 32]) -> Result<bool, HubError> {
        if let Some(open) = self.suspended.get(credential) {
            return Ok(*open);
        }
        let rows = self.query(
            "SELECT 1 FROM suspensions WHERE credential = $1 AND cleared_at IS NULL LIMIT 1",
            &[&credential.as_slice()],
        )?;
        let open = !rows.is_empty();
        self.suspended.insert(*credential, open);
        Ok(open)
    }

    fn insert_suspension(&mut self, x: &Suspension<'_>) -> Result<(), HubError> {
        self.suspensions.push(SuspensionRow {
            deny_version: int(x.deny_version),
            credential: x.credential,
            wallet: x.wallet,
            rule: x.rule.as_str(),
            detail: x.detail.to_owned(),
            at: int(x.at),
        });
        self.suspended.insert(x.credential, true);
        Ok(())
    }

    fn open_suspensions(&mut self, target: ClearTarget) -> Result<Vec<OpenSuspension>, HubError> {
        // Only `hub clear` asks, in a transaction of its own: no suspension
        // of this transaction is waiting in `self.suspensions`.
        let rows = match &target {
            ClearTarget::Credential(c) => self.query(
                "SELECT deny_version, credential, wallet_id FROM suspensions
                 WHERE credential = $1 AND cleared_at IS NULL ORDER BY deny_version",
                &[&c.as_slice()],
            )?,
            ClearTarget::Wallet(w) => self.query(
                "SELECT deny_version, credential, wallet_id FROM suspensions
                 WHERE wallet_id = $1 AND cleared_at IS NULL ORDER BY deny_version",
                &[&w.0.as_slice()],
            )?,
        };
        let path = self.path();
        rows.iter()
            .map(|r| {
                Ok(OpenSuspension {
                    deny_version: unsigned(
                        path,
                        "deny version",
                        column(self.target, r, 0, "deny version")?,
                    )?,
                    credential: blob(path, "credential", column(self.target, r, 1, "credential")?)?,
                    wallet: WalletId(blob(
                        path,
                        "wallet id",
                        column(self.target, r, 2, "wallet id")?,
                    )?),
                })
            })
            .collect()
    }

    fn clear_suspension(
        &mut self,
        deny_version: u64,
        allow_version: u64,
        c: &Clearance<'_>,
    ) -> Result<(), HubError> {
        self.execute(
            "UPDATE suspensions SET cleared_at = $2, cleared_by = $3, cleared_note = $4,
                                    allow_version = $5
             WHERE deny_version = $1",
            &[
                &int(deny_version),
                &int(c.at),
                &c.by,
                &c.note,
                &int(allow_version),
            ],
        )?;
        self.suspended.clear();
        Ok(())
    }
}

impl crate::backend::book::Sql for PgLedger<'_> {
    fn postgres(&self) -> bool {
        true
    }

    fn place(&self) -> String {
        self.target.to_owned()
    }

    fn sql_execute(
        &mut self,
        sql: &str,
        params: &[crate::backend::book::Param<'_>],
    ) -> Result<u64, HubError> {
        let params: Vec<&(dyn ToSql + Sync)> = params.iter().map(pg_param).collect();
        self.execute(sql, &params)
    }

    /// One statement for the whole batch: the columns as arrays, unnested.
    fn append_entries(&mut self, entries: &[crate::accounts::NewEntry]) -> Result<(), HubError> {
        use crate::backend::book::ENTRY_COLUMNS;
        let account: Vec<&str> = entries.iter().map(|e| e.account.as_str()).collect();
        let kind: Vec<&str> = entries.iter().map(|e| e.kind.as_str()).collect();
        let amount: Vec<i64> = entries.iter().map(|e| e.amount).collect();
        let at: Vec<i64> = entries.iter().map(|e| int(e.at)).collect();
        let recorded_at: Vec<i64> = entries.iter().map(|e| int(e.recorded_at)).collect();
        let source: Vec<&str> = entries.iter().map(|e| e.source.as_str()).collect();
        let seq: Vec<i64> = entries.iter().map(|e| int(e.seq)).collect();
        let credential: Vec<Option<&[u8]>> = entries
            .iter()
            .map(|e| e.credential.as_ref().map(|c| c.as_slice()))
            .collect();
        let token_hash: Vec<Option<&[u8]>> = entries
            .iter()
            .map(|e| e.token_hash.as_ref().map(|c| c.as_slice()))
            .collect();
        let note: Vec<&str> = entries.iter().map(|e| e.note.as_str()).collect();
        self.execute(
            &format!(
                "INSERT INTO account_entries ({ENTRY_COLUMNS})
                 SELECT * FROM unnest($1::text[], $2::text[], $3::int8[], $4::int8[], $5::int8[],
                     $6::text[], $7::int8[], $8::bytea[], $9::bytea[], $10::text[])"
            ),
            &[
                &account,
                &kind,
                &amount,
                &at,
                &recorded_at,
                &source,
                &seq,
                &credential,
                &token_hash,
                &note,
            ],
        )
        .map(drop)
    }

    fn sql_rows(
        &mut self,
        sql: &str,
        params: &[crate::backend::book::Param<'_>],
    ) -> Result<Vec<Vec<crate::backend::book::Value>>, HubError> {
        use crate::backend::book::Value;
        use postgres::types::Type;
        let params: Vec<&(dyn ToSql + Sync)> = params.iter().map(pg_param).collect();
        let rows = self.query(sql, &params)?;
        let err = |e| pg_err(self.target, e);
        rows.iter()
            .map(|row| {
                (0..row.len())
                    .map(|i| {
                        let ty = row.columns()[i].type_();
                        Ok(if *ty == Type::INT8 {
                            row.try_get::<_, Option<i64>>(i)
                                .map_err(err)?
                                .map_or(Value::Null, Value::Int)
                        } else if *ty == Type::INT4 {
                            row.try_get::<_, Option<i32>>(i)
                                .map_err(err)?
                                .map_or(Value::Null, |v| Value::Int(v.into()))
                        } else if *ty == Type::BYTEA {
                            row.try_get::<_, Option<Vec<u8>>>(i)
                                .map_err(err)?
                                .map_or(Value::Null, Value::Bytes)
                        } else {
                            row.try_get::<_, Option<String>>(i)
                                .map_err(err)?
                                .map_or(Value::Null, Value::Text)
                        })
                    })
                    .collect()
            })
            .collect()
    }
}

/// A [`crate::backend::book::Param`] as the PostgreSQL client binds it.
fn pg_param<'a>(p: &'a crate::backend::book::Param<'_>) -> &'a (dyn ToSql + Sync) {
    use crate::backend::book::Param;
    match p {
        Param::Int(v) => v,
        Param::Bytes(b) => b,
        Param::Text(t) => t,
        Param::OptBytes(b) => b,
    }
}
