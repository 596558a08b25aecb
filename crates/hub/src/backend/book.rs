//! Riders' accounts in SQL, written once for SQLite and PostgreSQL.
//!
//! A backend's write transaction offers [`Sql`]: a statement with `$1`,
//! `$2`… parameters and rows of plain values. The statements here use only
//! what both databases understand (`CAST(… AS BIGINT)`, `ON CONFLICT`,
//! `IN (…)` lists); the one difference, a row lock, is [`Sql::postgres`]
//! (and appending entries, [`Sql::append_entries`], is each database's own).
//! Decisions stay in [`crate::accounts`]; this module only reads and writes.

use sonotap_protocol::token::{Credential, WalletId};
use sonotap_protocol::wire::{AccountState, EntryKind, StatementEntry};

use crate::HubError;
use crate::accounts::{Account, AccountPolicy, CredentialUse, NewEntry};

/// A statement parameter.
#[derive(Debug, Clone, Copy)]
pub enum Param<'a> {
    /// An integer.
    Int(i64),
    /// Bytes.
    Bytes(&'a [u8]),
    /// Text.
    Text(&'a str),
    /// Bytes or NULL.
    OptBytes(Option<&'a [u8]>),
}

/// A value as a row returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// NULL.
    Null,
    /// An integer.
    Int(i64),
    /// Bytes.
    Bytes(Vec<u8>),
    /// Text.
    Text(String),
}

/// Statements inside one write transaction.
pub trait Sql {
    /// Whether this is PostgreSQL (which takes row locks with `FOR UPDATE`).
    fn postgres(&self) -> bool;
    /// Where the state lives, for errors.
    fn place(&self) -> String;
    /// Runs a statement; the rows it changed.
    fn sql_execute(&mut self, sql: &str, params: &[Param<'_>]) -> Result<u64, HubError>;
    /// Runs a query; its rows.
    fn sql_rows(&mut self, sql: &str, params: &[Param<'_>]) -> Result<Vec<Vec<Value>>, HubError>;
    /// Appends ledger entries in order, the fastest way the database
    /// offers: a batch of charges is thousands of rows.
    fn append_entries(&mut self, entries: &[NewEntry]) -> Result<(), HubError>;
}

/// The columns of `account_entries` an entry is written to, in
/// [`entry_params`] order.
pub(crate) const ENTRY_COLUMNS: &str =
    "account_id, kind, amount, at, recorded_at, source, seq, credential, token_hash, note";

/// An entry's values in [`ENTRY_COLUMNS`] order.
pub(crate) fn entry_params(e: &NewEntry) -> [Param<'_>; 10] {
    [
        Param::Text(&e.account),
        Param::Text(e.kind.as_str()),
        Param::Int(e.amount),
        int(e.at),
        int(e.recorded_at),
        Param::Text(&e.source),
        int(e.seq),
        Param::OptBytes(e.credential.as_ref().map(|c| c.as_slice())),
        Param::OptBytes(e.token_hash.as_ref().map(|c| c.as_slice())),
        Param::Text(&e.note),
    ]
}

/// Reads typed columns of one row, naming the column in every error.
struct Row<'a> {
    values: &'a [Value],
    place: &'a str,
}

impl Row<'_> {
    fn broken(&self, what: &str, detail: &str) -> HubError {
        HubError::Backend(format!("{}: {what} {detail}", self.place))
    }

    fn int(&self, i: usize, what: &str) -> Result<i64, HubError> {
        match self.values.get(i) {
            Some(Value::Int(v)) => Ok(*v),
            _ => Err(self.broken(what, "is not an integer")),
        }
    }

    fn unsigned<T: TryFrom<i64>>(&self, i: usize, what: &str) -> Result<T, HubError> {
        T::try_from(self.int(i, what)?).map_err(|_| self.broken(what, "is out of range"))
    }

    fn text(&self, i: usize, what: &str) -> Result<String, HubError> {
        match self.values.get(i) {
            Some(Value::Text(v)) => Ok(v.clone()),
            _ => Err(self.broken(what, "is not text")),
        }
    }

    fn bytes(&self, i: usize, what: &str) -> Result<Vec<u8>, HubError> {
        match self.values.get(i) {
            Some(Value::Bytes(v)) => Ok(v.clone()),
            _ => Err(self.broken(what, "is not bytes")),
        }
    }

    fn array<const N: usize>(&self, i: usize, what: &str) -> Result<[u8; N], HubError> {
        <[u8; N]>::try_from(self.bytes(i, what)?.as_slice())
            .map_err(|_| self.broken(what, &format!("is not {N} bytes")))
    }
}

fn rows<T>(
    sql: &mut dyn Sql,
    query: &str,
    params: &[Param<'_>],
    mut each: impl FnMut(&Row<'_>) -> Result<T, HubError>,
) -> Result<Vec<T>, HubError> {
    let place = sql.place();
    sql.sql_rows(query, params)?
        .iter()
        .map(|values| {
            each(&Row {
                values,
                place: &place,
            })
        })
        .collect()
}

fn first<T>(
    sql: &mut dyn Sql,
    query: &str,
    params: &[Param<'_>],
    each: impl FnMut(&Row<'_>) -> Result<T, HubError>,
) -> Result<Option<T>, HubError> {
    Ok(rows(sql, query, params, each)?.into_iter().next())
}

fn int(v: u64) -> Param<'static> {
    Param::Int(i64::try_from(v).unwrap_or(i64::MAX))
}

const ACCOUNT_COLUMNS: &str = "account_id, label, currency, credit_line, offline_limit, \
     per_payment_cap, valid_hours, scope, state, state_reason, created_at";

fn account_row(r: &Row<'_>) -> Result<Account, HubError> {
    let scope = r.text(7, "account scope")?;
    let state = r.text(8, "account state")?;
    Ok(Account {
        id: r.text(0, "account id")?,
        label: r.text(1, "account label")?,
        currency: r.unsigned(2, "account currency")?,
        credit_line: r.unsigned(3, "credit line")?,
        policy: AccountPolicy {
            offline_limit: r.unsigned(4, "account offline limit")?,
            per_payment_cap: r.unsigned(5, "account per-payment cap")?,
            valid_hours: r.unsigned(6, "account validity")?,
            scope: scope
                .parse()
                .map_err(|_| r.broken("account scope", "is not a scope"))?,
        },
        state: AccountState::from_name(&state)
            .ok_or_else(|| r.broken("account state", "is not a state"))?,
        state_reason: r.text(9, "account state reason")?,
        created_at: r.unsigned(10, "account creation time")?,
    })
}

/// Creates an account; `false` if the id is taken.
pub(crate) fn insert_account(sql: &mut dyn Sql, a: &Account) -> Result<bool, HubError> {
    let scope = a.policy.scope.to_string();
    let changed = sql.sql_execute(
        &format!(
            "INSERT INTO accounts ({ACCOUNT_COLUMNS}, changed_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $11)
             ON CONFLICT (account_id) DO NOTHING"
        ),
        &[
            Param::Text(&a.id),
            Param::Text(&a.label),
            Param::Int(i64::from(a.currency)),
            int(a.credit_line),
            Param::Int(i64::from(a.policy.offline_limit)),
            Param::Int(i64::from(a.policy.per_payment_cap)),
            Param::Int(i64::from(a.policy.valid_hours)),
            Param::Text(&scope),
            Param::Text(a.state.as_str()),
            Param::Text(&a.state_reason),
            int(a.created_at),
        ],
    )?;
    Ok(changed == 1)
}

/// An account; with `lock`, its row stays locked until the transaction
/// ends (PostgreSQL; SQLite has one writer anyway), so that what is
/// decided from its balance and credentials cannot interleave.
pub(crate) fn account(
    sql: &mut dyn Sql,
    id: &str,
    lock: bool,
) -> Result<Option<Account>, HubError> {
    let lock = if lock && sql.postgres() {
        " FOR UPDATE"
    } else {
        ""
    };
    first(
        sql,
        &format!("SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE account_id = $1{lock}"),
        &[Param::Text(id)],
        account_row,
    )
}

/// Accounts whose id or label contains `search` (all with ""), by id.
pub(crate) fn accounts(
    sql: &mut dyn Sql,
    search: &str,
    limit: u32,
) -> Result<Vec<Account>, HubError> {
    let pattern = format!(
        "%{}%",
        search
            .replace('\\', "\\\\")
            .replace('%', "\\%")
            .replace('_', "\\_")
    );
    rows(
        sql,
        &format!(
            "SELECT {ACCOUNT_COLUMNS} FROM accounts
             WHERE lower(account_id) LIKE lower($1) ESCAPE '\\'
                OR lower(label) LIKE lower($1) ESCAPE '\\'
             ORDER BY account_id LIMIT $2"
        ),
        &[Param::Text(&pattern), Param::Int(i64::from(limit))],
        account_row,
    )
}

/// Locks the accounts in `ids` in ascending order (PostgreSQL), so that
/// two writers debiting or renewing can never wait for each other in a circle.
pub(crate) fn lock_accounts(sql: &mut dyn Sql, ids: &[String]) -> Result<(), HubError> {
    if !sql.postgres() || ids.is_empty() {
        return Ok(());
    }
    let mut sorted: Vec<&String> = ids.iter().collect();
    sorted.sort();
    sorted.dedup();
    // One list at a time, in order: a later list's ids are all above an
    // earlier one's, so the order holds across lists too.
    for chunk in sorted.chunks(IN_LIST) {
        let params: Vec<Param<'_>> = chunk.iter().map(|id| Param::Text(id)).collect();
        sql.sql_rows(
            &format!(
                "SELECT account_id FROM accounts WHERE account_id IN ({})
                 ORDER BY account_id FOR UPDATE",
                placeholders(1, chunk.len())
            ),
            &params,
        )?;
    }
    Ok(())
}

/// Records a change of state, and why.
pub(crate) fn set_state(
    sql: &mut dyn Sql,
    id: &str,
    state: AccountState,
    reason: &str,
    by: &str,
    now: u64,
) -> Result<(), HubError> {
    sql.sql_execute(
        "UPDATE accounts SET state = $2, state_reason = $3, changed_at = $4 WHERE account_id = $1",
        &[
            Param::Text(id),
            Param::Text(state.as_str()),
            Param::Text(reason),
            int(now),
        ],
    )?;
    sql.sql_execute(
        "INSERT INTO account_events (account_id, at, state, reason, by_whom)
         VALUES ($1, $2, $3, $4, $5)",
        &[
            Param::Text(id),
            int(now),
            Param::Text(state.as_str()),
            Param::Text(reason),
            Param::Text(by),
        ],
    )?;
    Ok(())
}

/// Appends top-ups, adjustments and voids to the ledger (charges are the
/// payments the clearing stores, docs/accounts.md §4).
pub(crate) fn insert_entries(sql: &mut dyn Sql, entries: &[NewEntry]) -> Result<(), HubError> {
    match entries.is_empty() {
        true => Ok(()),
        false => sql.append_entries(entries),
    }
}

/// The kind and amount of the top-up or adjustment with `reference`, if
/// the account has one (references are unique across both).
pub(crate) fn credited(
    sql: &mut dyn Sql,
    id: &str,
    reference: &str,
) -> Result<Option<(String, i64)>, HubError> {
    first(
        sql,
        "SELECT kind, amount FROM account_entries
         WHERE account_id = $1 AND kind IN ('top_up', 'adjustment') AND source = $2",
        &[Param::Text(id), Param::Text(reference)],
        |r| Ok((r.text(0, "entry kind")?, r.int(1, "entry amount")?)),
    )
}

/// SQL for the balance of the account whose id is `account` (a column or
/// a parameter): the sum of its ledger (docs/accounts.md §1), taken as its
/// top-ups and adjustments less the net charges cleared under its
/// credentials. A credential's net charges (`credential_spend`, kept by
/// the clearing) are its payments' charges less the voids applied to
/// them, so this is the same sum as charges, voids and all, read from one
/// row per credential instead of one per payment.
fn balance_sql(account: &str) -> String {
    format!(
        "((SELECT CAST(COALESCE(SUM(e.amount), 0) AS BIGINT) FROM account_entries e
           WHERE e.account_id = {account} AND e.kind <> 'void')
          - (SELECT CAST(COALESCE(SUM(s.charged), 0) AS BIGINT)
             FROM account_credentials c JOIN credential_spend s ON s.credential = c.credential
             WHERE c.account_id = {account}))"
    )
}

/// The sum of the account's ledger.
pub(crate) fn balance(sql: &mut dyn Sql, id: &str) -> Result<i64, HubError> {
    Ok(first(
        sql,
        &format!("SELECT CAST({} AS BIGINT)", balance_sql("$1")),
        &[Param::Text(id)],
        |r| r.int(0, "balance"),
    )?
    .unwrap_or(0))
}

/// The newest entries before entry `before` (0: the newest), newest first.
pub(crate) fn entries(
    sql: &mut dyn Sql,
    id: &str,
    before: u64,
    limit: usize,
) -> Result<Vec<StatementEntry>, HubError> {
    let before = match before {
        0 => i64::MAX,
        b => i64::try_from(b).unwrap_or(i64::MAX),
    };
    // The account's own entries and its charges (the payments cleared
    // under its credentials, with their records' amounts and times), in
    // the one order of their entry ids. Payments are found by their
    // phones' wallet ids, the key they are stored under.
    rows(
        sql,
        "SELECT x.id, x.kind, x.amount, x.at, x.source, x.seq FROM (
             SELECT e.entry_id AS id, e.kind AS kind, e.amount AS amount, e.at AS at,
                    e.source AS source, e.seq AS seq
             FROM account_entries e WHERE e.account_id = $1 AND e.entry_id < $2
             UNION ALL
             SELECT p.entry_id, 'charge', -r.amount, r.at, p.reader_id, p.seq
             FROM account_wallets w
             JOIN payments p ON p.wallet_id = w.wallet_id
             JOIN account_credentials c ON c.credential = p.credential AND c.account_id = $1
             JOIN records r ON r.reader_id = p.reader_id AND r.seq = p.seq
             WHERE w.account_id = $1 AND p.entry_id < $2
         ) x ORDER BY x.id DESC LIMIT $3",
        &[
            Param::Text(id),
            Param::Int(before),
            Param::Int(i64::try_from(limit).unwrap_or(i64::MAX)),
        ],
        |r| {
            let kind = r.text(1, "entry kind")?;
            Ok(StatementEntry {
                id: r.unsigned(0, "entry id")?,
                kind: EntryKind::from_name(&kind)
                    .ok_or_else(|| r.broken("entry kind", "is not a kind"))?,
                amount: r.int(2, "entry amount")?,
                at: r.unsigned(3, "entry time")?,
                source: r.text(4, "entry source")?,
                seq: r.unsigned(5, "entry seq")?,
            })
        },
    )
}

/// The account's balance and its credentials still reserving allowance at
/// `now`, with what has cleared under each, read together.
pub(crate) fn standing(
    sql: &mut dyn Sql,
    id: &str,
    now: u64,
) -> Result<(i64, Vec<CredentialUse>), HubError> {
    let found = rows(
        sql,
        &format!(
            "SELECT c.credential, c.offline_limit, c.valid_until, c.settles_at, c.issued_at,
                    CAST(COALESCE(s.charged, 0) AS BIGINT), CAST({} AS BIGINT)
             FROM account_credentials c LEFT JOIN credential_spend s ON s.credential = c.credential
             WHERE c.account_id = $1 AND c.settles_at > $2
             ORDER BY c.issued_at",
            balance_sql("$1")
        ),
        &[Param::Text(id), int(now)],
        |r| {
            Ok((
                r.int(6, "balance")?,
                CredentialUse {
                    digest: r.array(0, "credential digest")?,
                    offline_limit: r.unsigned(1, "credential offline limit")?,
                    valid_until: r.unsigned(2, "credential expiry")?,
                    settles_at: r.unsigned(3, "credential settle time")?,
                    issued_at: r.unsigned(4, "credential issue time")?,
                    cleared: r.int(5, "credential net charges")?,
                },
            ))
        },
    )?;
    let balance = match found.first() {
        Some((balance, _)) => *balance,
        // No live credential: nothing to agree with.
        None => balance(sql, id)?,
    };
    Ok((balance, found.into_iter().map(|(_, c)| c).collect()))
}

/// Records a credential issued against an account, before it is handed out.
pub(crate) fn insert_credential(
    sql: &mut dyn Sql,
    account: &str,
    credential: &Credential,
    settles_at: u64,
    now: u64,
) -> Result<(), HubError> {
    let terms = &credential.terms;
    sql.sql_execute(
        "INSERT INTO account_credentials (credential, account_id, wallet_id, offline_limit,
             valid_until, settles_at, issued_at, credential_bytes)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        &[
            Param::Bytes(&credential.digest()),
            Param::Text(account),
            Param::Bytes(&terms.wallet_id().0),
            Param::Int(i64::from(terms.offline_limit)),
            int(terms.valid_until()),
            int(settles_at),
            int(now),
            Param::Bytes(&credential.encode()),
        ],
    )?;
    Ok(())
}

/// `$first, $first+1, …` for `n` parameters: an `IN (…)` list.
fn placeholders(first: usize, n: usize) -> String {
    (first..first + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Parameters per `IN (…)` list: both databases take thousands; a batch
/// of 10,000 records takes a few statements.
const IN_LIST: usize = 1_000;

/// Which account each of `credentials` was issued against, where one was.
pub(crate) fn credential_accounts(
    sql: &mut dyn Sql,
    credentials: &[[u8; 32]],
) -> Result<Vec<([u8; 32], String)>, HubError> {
    let mut found = Vec::new();
    for chunk in credentials.chunks(IN_LIST) {
        let params: Vec<Param<'_>> = chunk.iter().map(|c| Param::Bytes(c)).collect();
        found.extend(rows(
            sql,
            &format!(
                "SELECT credential, account_id FROM account_credentials WHERE credential IN ({})",
                placeholders(1, chunk.len())
            ),
            &params,
            |r| Ok((r.array(0, "credential digest")?, r.text(1, "account id")?)),
        )?);
    }
    Ok(found)
}

/// Of `credentials`, those being watched at `now` (§4 of
/// docs/accounts.md): one indexed query that finds nothing while no
/// account is short, the usual case.
pub(crate) fn watched_among(
    sql: &mut dyn Sql,
    credentials: &[[u8; 32]],
    now: u64,
) -> Result<Vec<[u8; 32]>, HubError> {
    if credentials.is_empty()
        || first(
            sql,
            "SELECT 1 FROM watched_credentials WHERE settles_at > $1 LIMIT 1",
            &[int(now)],
            |_| Ok(()),
        )?
        .is_none()
    {
        return Ok(Vec::new());
    }
    let mut found = Vec::new();
    for chunk in credentials.chunks(IN_LIST) {
        let mut params: Vec<Param<'_>> = vec![int(now)];
        params.extend(chunk.iter().map(|c| Param::Bytes(c)));
        found.extend(rows(
            sql,
            &format!(
                "SELECT credential FROM watched_credentials
                 WHERE settles_at > $1 AND credential IN ({})",
                placeholders(2, chunk.len())
            ),
            &params,
            |r| r.array(0, "credential digest"),
        )?);
    }
    Ok(found)
}

/// Watches the account's credentials not yet settled at `now` (or, with
/// `watch` false, none of its credentials): a charge under a watched
/// credential makes the clearing look at the account's balance. A settled
/// credential needs no watch (its charges are looked at anyway): those of
/// every account are dropped here.
pub(crate) fn set_watch(
    sql: &mut dyn Sql,
    id: &str,
    watch: bool,
    now: u64,
) -> Result<(), HubError> {
    sql.sql_execute(
        "DELETE FROM watched_credentials WHERE account_id = $1 OR settles_at <= $2",
        &[Param::Text(id), int(now)],
    )?;
    if watch {
        sql.sql_execute(
            "INSERT INTO watched_credentials (credential, account_id, settles_at, since)
             SELECT credential, account_id, settles_at, $2 FROM account_credentials
             WHERE account_id = $1 AND settles_at > $2",
            &[Param::Text(id), int(now)],
        )?;
    }
    Ok(())
}

/// The account a wallet is enrolled in.
pub(crate) fn wallet_account(
    sql: &mut dyn Sql,
    wallet: WalletId,
) -> Result<Option<String>, HubError> {
    first(
        sql,
        "SELECT account_id FROM account_wallets WHERE wallet_id = $1",
        &[Param::Bytes(&wallet.0)],
        |r| r.text(0, "account id"),
    )
}

/// The wallets enrolled in an account, with their keys and enrolment times.
pub(crate) fn account_wallets(
    sql: &mut dyn Sql,
    id: &str,
) -> Result<Vec<(WalletId, [u8; 32], u64)>, HubError> {
    rows(
        sql,
        "SELECT wallet_id, wallet_key, enrolled_at FROM account_wallets
         WHERE account_id = $1 ORDER BY enrolled_at, wallet_id",
        &[Param::Text(id)],
        |r| {
            Ok((
                WalletId(r.array(0, "wallet id")?),
                r.array(1, "wallet key")?,
                r.unsigned(2, "enrolment time")?,
            ))
        },
    )
}

/// Binds a wallet to an account.
pub(crate) fn bind_wallet(
    sql: &mut dyn Sql,
    id: &str,
    wallet_key: &[u8; 32],
    now: u64,
) -> Result<(), HubError> {
    let wallet = WalletId::of_key(wallet_key);
    sql.sql_execute(
        "INSERT INTO account_wallets (wallet_id, wallet_key, account_id, enrolled_at)
         VALUES ($1, $2, $3, $4)",
        &[
            Param::Bytes(&wallet.0),
            Param::Bytes(wallet_key),
            Param::Text(id),
            int(now),
        ],
    )?;
    Ok(())
}

/// A stored enrolment code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CodeRow {
    pub account: String,
    pub expires_at: u64,
    pub used_by: Option<WalletId>,
}

/// Stores a code by its hash.
pub(crate) fn insert_code(
    sql: &mut dyn Sql,
    hash: &[u8; 32],
    id: &str,
    expires_at: u64,
    now: u64,
) -> Result<(), HubError> {
    sql.sql_execute(
        "INSERT INTO enrol_codes (code_hash, account_id, created_at, expires_at)
         VALUES ($1, $2, $3, $4)",
        &[
            Param::Bytes(hash),
            Param::Text(id),
            int(now),
            int(expires_at),
        ],
    )?;
    Ok(())
}

/// The code with this hash, locked against a second use.
pub(crate) fn code(sql: &mut dyn Sql, hash: &[u8; 32]) -> Result<Option<CodeRow>, HubError> {
    let lock = if sql.postgres() { " FOR UPDATE" } else { "" };
    first(
        sql,
        &format!(
            "SELECT account_id, expires_at, used_by FROM enrol_codes WHERE code_hash = $1{lock}"
        ),
        &[Param::Bytes(hash)],
        |r| {
            let used_by = match r.values.get(2) {
                Some(Value::Null) => None,
                _ => Some(WalletId(r.array(2, "code user")?)),
            };
            Ok(CodeRow {
                account: r.text(0, "account id")?,
                expires_at: r.unsigned(1, "code expiry")?,
                used_by,
            })
        },
    )
}

/// Marks a code used by `wallet`.
pub(crate) fn use_code(
    sql: &mut dyn Sql,
    hash: &[u8; 32],
    wallet: WalletId,
    now: u64,
) -> Result<(), HubError> {
    sql.sql_execute(
        "UPDATE enrol_codes SET used_at = $2, used_by = $3 WHERE code_hash = $1",
        &[Param::Bytes(hash), int(now), Param::Bytes(&wallet.0)],
    )?;
    Ok(())
}

/// Remembers a wallet request's nonce; `false` if it was seen before.
pub(crate) fn fresh_nonce(
    sql: &mut dyn Sql,
    wallet: WalletId,
    nonce: &[u8; 16],
    now_ms: u64,
) -> Result<bool, HubError> {
    let inserted = sql.sql_execute(
        "INSERT INTO wallet_nonces (wallet_id, nonce, at_ms) VALUES ($1, $2, $3)
         ON CONFLICT (wallet_id, nonce) DO NOTHING",
        &[Param::Bytes(&wallet.0), Param::Bytes(nonce), int(now_ms)],
    )?;
    Ok(inserted == 1)
}

/// Forgets nonces older than `before_ms`: a request that old is refused by
/// its time anyway.
pub(crate) fn forget_nonces(sql: &mut dyn Sql, before_ms: u64) -> Result<u64, HubError> {
    sql.sql_execute(
        "DELETE FROM wallet_nonces WHERE at_ms < $1",
        &[int(before_ms)],
    )
}

/// What a renewal decides from, read in one statement after the account
/// is locked ([`lock_accounts`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RenewFacts {
    pub account: Account,
    pub balance: i64,
    pub exposure: u64,
    /// When the soonest credential with allowance left settles.
    pub frees_at: Option<u64>,
    pub highest_counter: u32,
    pub newest: Option<Newest>,
    pub denied: bool,
}

/// The wallet's newest credential issued against its account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Newest {
    pub credential: Credential,
    pub issued_at: u64,
    /// Net charges cleared under it.
    pub cleared: i64,
    /// Whether its newest credential-scope deny entry denies it (a
    /// suspension for review).
    pub suspended: bool,
}

/// The wallet's account with everything a renewal decides from; `None`
/// if the wallet is not enrolled.
pub(crate) fn renew_facts(
    sql: &mut dyn Sql,
    wallet: WalletId,
    now: u64,
) -> Result<Option<RenewFacts>, HubError> {
    let columns = ACCOUNT_COLUMNS
        .split(", ")
        .map(|c| format!("a.{c}"))
        .collect::<Vec<_>>()
        .join(", ");
    const UNSPENT: &str = "CASE WHEN c.offline_limit > COALESCE(s.charged, 0) \
         THEN c.offline_limit - COALESCE(s.charged, 0) ELSE 0 END";
    const LIVE: &str = "account_credentials c LEFT JOIN credential_spend s \
         ON s.credential = c.credential WHERE c.account_id = a.account_id AND c.settles_at > $2";
    const NEWEST: &str = "FROM account_credentials n WHERE n.wallet_id = $1 \
         ORDER BY n.issued_at DESC, n.credential DESC LIMIT 1";
    let balance = balance_sql("a.account_id");
    let query = format!(
        "SELECT {columns},
            {balance},
            (SELECT CAST(COALESCE(SUM({UNSPENT}), 0) AS BIGINT) FROM {LIVE}),
            (SELECT CAST(MIN(c.settles_at) AS BIGINT) FROM {LIVE}
             AND c.offline_limit > COALESCE(s.charged, 0)),
            (SELECT CAST(COALESCE(MAX(p.counter), 0) AS BIGINT) FROM payments p
             WHERE p.wallet_id = $1),
            (SELECT n.credential_bytes {NEWEST}),
            (SELECT n.issued_at {NEWEST}),
            (SELECT d.action FROM deny_entries d WHERE d.wallet_id = $1 AND d.credential IS NULL
             ORDER BY d.version DESC LIMIT 1),
            (SELECT CAST(COALESCE(s.charged, 0) AS BIGINT) FROM account_credentials n
             LEFT JOIN credential_spend s ON s.credential = n.credential
             WHERE n.wallet_id = $1 ORDER BY n.issued_at DESC, n.credential DESC LIMIT 1),
            (SELECT d.action FROM deny_entries d
             WHERE d.wallet_id = $1 AND d.credential = (SELECT n.credential {NEWEST})
             ORDER BY d.version DESC LIMIT 1)
         FROM account_wallets w JOIN accounts a ON a.account_id = w.account_id
         WHERE w.wallet_id = $1"
    );
    first(sql, &query, &[Param::Bytes(&wallet.0), int(now)], |r| {
        let newest = match r.values.get(15) {
            Some(Value::Bytes(bytes)) => Some(Newest {
                credential: Credential::decode(bytes)
                    .map_err(|e| r.broken("stored credential", &e.to_string()))?,
                issued_at: r.unsigned(16, "credential issue time")?,
                cleared: r.int(18, "credential net charges")?,
                suspended: match r.values.get(19) {
                    Some(Value::Text(action)) => super::denies(Some(action)),
                    _ => false,
                },
            }),
            _ => None,
        };
        let denied = match r.values.get(17) {
            Some(Value::Text(action)) => super::denies(Some(action)),
            _ => false,
        };
        Ok(RenewFacts {
            account: account_row(r)?,
            balance: r.int(11, "balance")?,
            exposure: r.unsigned(12, "exposure")?,
            frees_at: match r.values.get(13) {
                Some(Value::Int(at)) => u64::try_from(*at).ok(),
                _ => None,
            },
            highest_counter: r.unsigned(14, "highest counter")?,
            newest,
            denied,
        })
    })
}

/// The wallet's newest whole-wallet deny-list entry: its action, reason
/// and the evidence kept with it.
pub(crate) fn newest_wallet_deny(
    sql: &mut dyn Sql,
    wallet: WalletId,
) -> Result<Option<(String, String, String)>, HubError> {
    first(
        sql,
        "SELECT action, reason, evidence FROM deny_entries
         WHERE wallet_id = $1 AND credential IS NULL ORDER BY version DESC LIMIT 1",
        &[Param::Bytes(&wallet.0)],
        |r| {
            Ok((
                r.text(0, "deny action")?,
                r.text(1, "deny reason")?,
                r.text(2, "deny evidence")?,
            ))
        },
    )
}

/// How many of the account's credentials not yet settled were charged
/// past their limit (an old clone's mark, paid and reopened, does not
/// count again), by their net charges.
pub(crate) fn overspent_credentials(
    sql: &mut dyn Sql,
    id: &str,
    now: u64,
) -> Result<u64, HubError> {
    Ok(first(
        sql,
        "SELECT CAST(COUNT(*) AS BIGINT) FROM account_credentials c
         JOIN credential_spend s ON s.credential = c.credential
         WHERE c.account_id = $1 AND c.settles_at > $2 AND c.offline_limit < s.charged",
        &[Param::Text(id), int(now)],
        |r| r.unsigned(0, "count"),
    )?
    .unwrap_or(0))
}

/// The state of the account a wallet is enrolled in, if it is.
pub(crate) fn wallet_account_state(
    sql: &mut dyn Sql,
    wallet: WalletId,
) -> Result<Option<AccountState>, HubError> {
    first(
        sql,
        "SELECT a.state FROM accounts a JOIN account_wallets w ON w.account_id = a.account_id
         WHERE w.wallet_id = $1",
        &[Param::Bytes(&wallet.0)],
        |r| {
            AccountState::from_name(&r.text(0, "account state")?)
                .ok_or_else(|| r.broken("account state", "is not a state"))
        },
    )
}
