//! What the other readers of the site announced they accepted (see
//! `sonotap_protocol::site`): read by every decision, so that a token a peer
//! accepted is declined `replayed` here too.
//!
//! A learned accept is not money and not part of this reader's chain: it is
//! kept only while a replay of its token could still be fresh, and written
//! by the site listener on its own connection. Losing one to a crash only
//! reopens the window the hub's clearing already covers.

use rusqlite::{OptionalExtension, Transaction, params};
use sha2::{Digest, Sha256};

use super::{ReaderDb, StoreError, sqlite};
use sonotap_protocol::policy::{Authentic, SiteSeen};
use sonotap_protocol::record::RecordKind;
use sonotap_protocol::token::Token;

/// One accept a peer announced, after its signatures were checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiteAccept {
    /// The peer that accepted it (with the token, names the accept: a
    /// peer re-initialised with the same id starts its sequence again).
    pub reader: String,
    /// The peer's record sequence number.
    pub seq: u64,
    /// The peer's reader time of the decision, Unix seconds.
    pub at: u64,
    /// The running total the peer holds the credential to after it.
    pub running_total: u64,
    /// This reader's time after which the token is `stale_token` here, so
    /// the accept no longer matters.
    pub stale_after: u64,
    /// The peer's wall clock when it sent the announcement, Unix µs.
    pub sent_us: u64,
    /// The token, authenticated by the listener.
    pub token: Authentic,
}

/// A learned accept as stored, for measurements and `sonotap status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LearnedAccept {
    /// The peer that accepted it.
    pub reader: String,
    /// The peer's record sequence number.
    pub seq: u64,
    /// The peer's wall clock when it sent the announcement, Unix µs.
    pub sent_us: u64,
    /// This reader's wall clock when it stored it, Unix µs.
    pub learned_us: u64,
}

/// One of this reader's own charges, to announce again (to a peer that
/// restarted, or to all at this reader's own start).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnCharge {
    /// Its record sequence number.
    pub seq: u64,
    /// Reader time of the decision.
    pub at: u64,
    /// The running total this reader holds the token's credential to now
    /// (at least what it was after this charge).
    pub running_total: u64,
    /// The token bytes.
    pub token: Vec<u8>,
}

impl ReaderDb {
    /// This connection's commits skip the fsync (`synchronous=NORMAL` in
    /// WAL mode: a power cut may lose its last commits, never corrupt the
    /// file). For the site listener only: what it writes is not money.
    pub fn relax_durability(&self) -> Result<(), StoreError> {
        self.conn
            .pragma_update(None, "synchronous", "NORMAL")
            .map_err(|e| StoreError::from_sqlite(&self.path, e))
    }

    /// Stores an accept a peer announced, unless it is already known (an
    /// announcement is idempotent), and forgets those whose tokens are
    /// stale here at `now` (reader time). `Ok(true)` when it was new.
    pub fn learn_site_accept(
        &mut self,
        accept: &SiteAccept,
        learned_us: u64,
        now: u64,
    ) -> Result<bool, StoreError> {
        self.write(|tx, path| {
            let err = |e| StoreError::from_sqlite(path, e);
            let token = accept.token.token();
            let token_hash: [u8; 32] = Sha256::digest(accept.token.bytes()).into();
            tx.execute(
                "DELETE FROM site_accepts WHERE stale_after < ?1",
                [sqlite::int(now)],
            )
            .map_err(err)?;
            if accept.stale_after < now {
                return Ok(false);
            }
            let new = tx
                .execute(
                    "INSERT OR IGNORE INTO site_accepts (reader_id, token_hash, seq, at,
                         stale_after, wallet_id, counter, credential, running_total, sent_us,
                         learned_us)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                    params![
                        accept.reader,
                        token_hash.as_slice(),
                        sqlite::int(accept.seq),
                        sqlite::int(accept.at),
                        sqlite::int(accept.stale_after),
                        accept.token.wallet().0.as_slice(),
                        token.payment.counter,
                        token.credential.digest().as_slice(),
                        sqlite::int(accept.running_total),
                        sqlite::int(accept.sent_us),
                        sqlite::int(learned_us),
                    ],
                )
                .map_err(err)?;
            Ok(new == 1)
        })
    }

    /// The accepts learned from peers, oldest first (for the replay-window
    /// measurement and tests).
    pub fn learned_accepts(&self) -> Result<Vec<LearnedAccept>, StoreError> {
        let path = self.path.clone();
        self.rows(
            "SELECT reader_id, seq, sent_us, learned_us FROM site_accepts ORDER BY learned_us, seq",
            [],
            |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, i64>(3)?,
                ))
            },
            |(reader, seq, sent, learned)| {
                Ok(LearnedAccept {
                    reader,
                    seq: sqlite::unsigned(&path, "site seq", seq)?,
                    sent_us: sqlite::unsigned(&path, "site sent_us", sent)?,
                    learned_us: sqlite::unsigned(&path, "site learned_us", learned)?,
                })
            },
        )
    }

    /// This reader's newest `limit` charges decided at or after `since`
    /// (reader time), oldest first: what is announced again.
    pub fn charges_since(&self, since: u64, limit: u32) -> Result<Vec<OwnCharge>, StoreError> {
        let path = self.path.clone();
        let rows = self.rows(
            "SELECT seq, at, token FROM (SELECT seq, at, token FROM records
                 WHERE kind = ?1 AND at >= ?2 ORDER BY seq DESC LIMIT ?3) ORDER BY seq",
            params![RecordKind::Charge.as_str(), sqlite::int(since), limit],
            |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, Vec<u8>>(2)?,
                ))
            },
            |(seq, at, token)| {
                Ok((
                    sqlite::unsigned::<u64>(&path, "record seq", seq)?,
                    sqlite::unsigned::<u64>(&path, "record at", at)?,
                    token,
                ))
            },
        )?;
        let mut charges = Vec::with_capacity(rows.len());
        for (seq, at, token) in rows {
            // The token's own claim, or the total held now, whichever is more.
            let parsed = Token::decode(&token).map_err(|e| {
                StoreError::inconsistent(&path, format!("record {seq} holds no token: {e}"))
            })?;
            let claimed = u64::from(parsed.payment.total_before) + u64::from(parsed.payment.amount);
            let held = self
                .conn
                .query_row(
                    "SELECT running_total FROM credential_totals WHERE credential = ?1",
                    [parsed.credential.digest().as_slice()],
                    |r| r.get::<_, i64>(0),
                )
                .optional()
                .map_err(|e| StoreError::from_sqlite(&path, e))?
                .map(|t| sqlite::unsigned::<u64>(&path, "running total", t))
                .transpose()?
                .unwrap_or(0);
            charges.push(OwnCharge {
                seq,
                at,
                running_total: claimed.max(held),
                token,
            });
        }
        Ok(charges)
    }
}

/// What the site knows about `token`'s wallet: its highest counter a peer
/// accepted, and the highest running total peers saw under its credential.
pub(super) fn site_history(
    tx: &Transaction<'_>,
    path: &std::path::Path,
    token: &Authentic,
) -> Result<(Option<SiteSeen>, u64), StoreError> {
    let err = |e| StoreError::from_sqlite(path, e);
    let seen = tx
        .query_row(
            "SELECT reader_id, counter, at FROM site_accepts WHERE wallet_id = ?1
             ORDER BY counter DESC LIMIT 1",
            [token.wallet().0.as_slice()],
            |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            },
        )
        .optional()
        .map_err(err)?
        .map(|(reader, counter, at)| -> Result<SiteSeen, StoreError> {
            Ok(SiteSeen {
                reader,
                counter: sqlite::unsigned(path, "site counter", counter)?,
                at: sqlite::unsigned(path, "site at", at)?,
            })
        })
        .transpose()?;
    let total = tx
        .query_row(
            "SELECT MAX(running_total) FROM site_accepts WHERE credential = ?1",
            [token.token().credential.digest().as_slice()],
            |r| r.get::<_, Option<i64>>(0),
        )
        .map_err(err)?
        .map(|t| sqlite::unsigned::<u64>(path, "site running total", t))
        .transpose()?
        .unwrap_or(0);
    Ok((seen, total))
}
