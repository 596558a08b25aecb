//! Riders' accounts: balances kept as an append-only ledger, enrolment of
//! phones with one-time codes, online renewal of credentials covered by
//! the account's money, and statements (docs/accounts.md).
//!
//! The rule every renewal keeps (docs/accounts.md §2): what the account's
//! live credentials could still spend offline, each at most its offline
//! limit less what has cleared under it, never exceeds its balance plus
//! its credit line. [`exposure`] and [`grant`] are that rule, pure; the
//! functions below them run it inside one write transaction over the
//! backend's SQL ([`crate::backend::book`]), after locking the account. A
//! renewal reads the exposure summed in SQL, in the one statement that
//! reads everything it decides from (`book::renew_facts`); the property
//! tests check every grant against [`exposure`] computed here.

use ed25519_dalek::SigningKey;
use serde::Serialize;

use crate::HubError;
use crate::backend::book::{self, Sql};
use crate::ledger::{self, DenySigner, Ledger};
use sonotap_protocol::token::{Credential, CredentialTerms, Scope, WalletId};
use sonotap_protocol::wire::{
    AccountState, DenyAction, DenyReason, EntryKind, RenewalNote, STATEMENT_PAGE, StatementEntry,
};

/// How long after a credential expires its unspent allowance stays
/// reserved: charges made before the expiry may still be on readers that
/// have not synced, and reach the hub later. A reader is expected to sync
/// within this (docs/accounts.md §2).
pub const SETTLE_SECS: u64 = 72 * 3600;
/// A renewal this soon after the wallet's last one gets that credential
/// again: a phone retrying after a lost answer reserves nothing more.
pub const REUSE_SECS: u64 = 60;
/// A credential's validity starts this long before it is issued, so a
/// reader whose clock is a little behind the hub's accepts it at once.
pub const BACKDATE_SECS: u64 = 300;
/// The most phones one account may enrol.
pub const MAX_WALLETS: usize = 16;
/// The longest an enrolment code may live.
pub const MAX_CODE_LIFE_SECS: u64 = 30 * 24 * 3600;
/// The most an account id or label may hold.
pub const NAME_MAX: usize = 64;

/// What a credential issued for an account may grant at most.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct AccountPolicy {
    /// Most spent offline under one credential, minor units.
    pub offline_limit: u32,
    /// Most per payment, minor units.
    pub per_payment_cap: u32,
    /// Hours a credential is valid.
    pub valid_hours: u16,
    /// Where it may be spent.
    #[serde(serialize_with = "scope_name")]
    pub scope: Scope,
}

fn scope_name<S: serde::Serializer>(scope: &Scope, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(scope)
}

/// A rider's account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Account {
    /// The operator's id for it.
    pub id: String,
    /// A name to find it by (free text, may be empty).
    pub label: String,
    /// ISO 4217 numeric currency.
    pub currency: u16,
    /// How far below zero the balance may go (postpaid), minor units.
    pub credit_line: u64,
    /// What its credentials grant.
    pub policy: AccountPolicy,
    /// Open, suspended or closed.
    pub state: AccountState,
    /// Why it is in that state.
    pub state_reason: String,
    /// Hub time it was opened, Unix seconds.
    pub created_at: u64,
}

impl Account {
    /// Checks what an operator asked for.
    pub fn check(&self) -> Result<(), String> {
        let plain = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
        if !(1..=NAME_MAX).contains(&self.id.len()) || !self.id.chars().all(plain) {
            return Err(format!(
                "account id {:?}: 1 to {NAME_MAX} letters, digits, '.', '_' or '-'",
                self.id
            ));
        }
        if self.label.len() > NAME_MAX * 4 || self.label.chars().any(char::is_control) {
            return Err("the label must be printable and at most 256 bytes".into());
        }
        if !(1..=999).contains(&self.currency) {
            return Err(format!(
                "currency {} is not an ISO 4217 number",
                self.currency
            ));
        }
        if i64::try_from(self.credit_line).is_err() {
            return Err("the credit line is too large".into());
        }
        let p = &self.policy;
        if p.per_payment_cap == 0 || p.per_payment_cap > p.offline_limit {
            return Err(format!(
                "per-payment cap {} must be 1 to the offline limit {}",
                p.per_payment_cap, p.offline_limit
            ));
        }
        if p.valid_hours == 0 {
            return Err("credentials must be valid for at least 1 hour".into());
        }
        Ok(())
    }
}

/// A credential issued against an account and what has cleared under it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct CredentialUse {
    /// SHA-256 of the credential.
    #[serde(serialize_with = "hex_bytes")]
    pub digest: [u8; 32],
    /// Its offline limit.
    pub offline_limit: u32,
    /// When readers stop accepting it.
    pub valid_until: u64,
    /// When its unspent allowance stops being reserved.
    pub settles_at: u64,
    /// When it was issued.
    pub issued_at: u64,
    /// Net charges cleared under it (charges less voids).
    pub cleared: i64,
}

fn hex_bytes<S: serde::Serializer>(bytes: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&hex::encode(bytes))
}

impl CredentialUse {
    /// What it could still spend offline: its limit less what cleared,
    /// never below 0 (an overspend is debt, not negative exposure).
    pub fn unspent(&self) -> u64 {
        let cleared = u64::try_from(self.cleared.max(0)).unwrap_or(0);
        u64::from(self.offline_limit).saturating_sub(cleared)
    }
}

/// A ledger entry to append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEntry {
    /// The account.
    pub account: String,
    /// What moved the balance.
    pub kind: EntryKind,
    /// Signed minor units.
    pub amount: i64,
    /// Reader time of the record, or hub time.
    pub at: u64,
    /// Hub time of the entry.
    pub recorded_at: u64,
    /// Reader id, top-up reference or operator.
    pub source: String,
    /// Record sequence number (0 if none).
    pub seq: u64,
    /// The credential a charge or void was made under.
    pub credential: Option<[u8; 32]>,
    /// The token of a charge or void.
    pub token_hash: Option<[u8; 32]>,
    /// An operator's note.
    pub note: String,
}

/// What the account's live credentials could still spend offline at
/// `now`: the sum of their [`CredentialUse::unspent`] while reserved.
pub fn exposure(credentials: &[CredentialUse], now: u64) -> u64 {
    credentials
        .iter()
        .filter(|c| c.settles_at > now)
        .map(CredentialUse::unspent)
        .sum()
}

/// What a renewal may grant: the offline limit and cap of a new credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    /// Offline limit.
    pub offline_limit: u32,
    /// Per-payment cap.
    pub per_payment_cap: u32,
}

/// Money left for a new credential: balance plus credit line less the
/// exposure (may be negative: debt, or a balance that fell under what is
/// reserved).
pub fn headroom(balance: i64, credit_line: u64, exposure: u64) -> i128 {
    i128::from(balance) + i128::from(credit_line) - i128::from(exposure)
}

/// The largest credential the rule allows: the account's offline limit,
/// or the headroom if less; `None` when nothing is left.
pub fn grant(policy: &AccountPolicy, headroom: i128) -> Option<Grant> {
    let limit = headroom.clamp(0, i128::from(policy.offline_limit));
    let limit = u32::try_from(limit).ok().filter(|l| *l > 0)?;
    Some(Grant {
        offline_limit: limit,
        per_payment_cap: policy.per_payment_cap.min(limit),
    })
}

/// Why a phone's request is refused (its answer says so; the wallet key
/// holder may know all of this).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The code is wrong, used by another phone, or expired.
    CodeNotValid,
    /// The wallet is not enrolled in any account.
    NotEnrolled,
    /// Enrolled in another account.
    EnrolledElsewhere,
    /// The account has as many phones as it may.
    TooManyWallets,
    /// The account is suspended.
    Suspended(String),
    /// The account is closed.
    Closed,
    /// The wallet is on the deny list.
    WalletDenied,
    /// The request's nonce was seen before (a replayed request).
    Replayed,
    /// Nothing left to grant; allowance frees at `frees_at`, if ever.
    NoAllowance {
        /// Balance + credit line − exposure.
        headroom: i128,
        /// When the soonest reserved credential settles.
        frees_at: Option<u64>,
    },
}

impl Refusal {
    /// The stable code in the hub's answer.
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::CodeNotValid => "code_not_valid",
            Refusal::Replayed => "not_authenticated",
            Refusal::NotEnrolled => "not_enrolled",
            Refusal::EnrolledElsewhere => "enrolled_elsewhere",
            Refusal::TooManyWallets => "too_many_wallets",
            Refusal::Suspended(_) => "account_suspended",
            Refusal::Closed => "account_closed",
            Refusal::WalletDenied => "wallet_denied",
            Refusal::NoAllowance { .. } => "no_allowance",
        }
    }

    /// What the rider is told.
    pub fn message(&self) -> String {
        match self {
            Refusal::CodeNotValid => {
                "this enrolment code is not valid (wrong, already used or expired); ask the \
                 operator for a new one"
                    .into()
            }
            Refusal::NotEnrolled => "this phone is not enrolled; enrol it with a code first".into(),
            Refusal::Replayed => "request not authenticated".into(),
            Refusal::EnrolledElsewhere => "this phone is enrolled in another account".into(),
            Refusal::TooManyWallets => {
                format!("the account has {MAX_WALLETS} phones already; ask the operator")
            }
            Refusal::Suspended(why) => format!("the account is suspended: {why}"),
            Refusal::Closed => "the account is closed".into(),
            Refusal::WalletDenied => "this phone is blocked; contact the operator".into(),
            Refusal::NoAllowance { headroom, frees_at } => {
                let short = match *headroom < 0 {
                    true => format!("the account is {} short", -headroom),
                    false => "nothing is left to spend offline".into(),
                };
                match frees_at {
                    Some(at) => format!(
                        "{short}: top up, or wait until {at} (Unix time) when an older \
                         credential's unspent allowance is released"
                    ),
                    None => format!("{short}: top up the account"),
                }
            }
        }
    }
}

/// Opens an account; `false` if its id is taken (with the same terms, so
/// running it again is harmless), an error if taken with other terms.
pub fn open(sql: &mut dyn Sql, account: &Account) -> Result<bool, HubError> {
    account.check().map_err(HubError::Review)?;
    if book::insert_account(sql, account)? {
        return Ok(true);
    }
    match book::account(sql, &account.id, false)? {
        Some(stored)
            if Account {
                created_at: account.created_at,
                state: account.state,
                state_reason: account.state_reason.clone(),
                ..stored.clone()
            } == *account =>
        {
            Ok(false)
        }
        _ => Err(HubError::Review(format!(
            "account {} exists with other terms (`sonotap hub account show {}`)",
            account.id, account.id
        ))),
    }
}

/// An account the operator names, or a clear error.
fn named(sql: &mut dyn Sql, id: &str) -> Result<Account, HubError> {
    book::account(sql, id, true)?.ok_or_else(|| {
        HubError::Review(format!(
            "no account {id} (`sonotap hub account list` shows them)"
        ))
    })
}

/// What [`credit`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Credited {
    /// Whether this call added the entry (false: the reference was seen).
    pub added: bool,
    /// The balance after.
    pub balance: i64,
    /// Whether it left the account in debt, which suspended it.
    pub suspended: bool,
}

/// Adds a top-up (`amount` > 0) or an operator's adjustment (any sign,
/// with `kind` [`EntryKind::Adjustment`]); idempotent on `reference`: the
/// same reference with the same amount adds nothing, with another amount
/// is refused.
pub fn credit(
    sql: &mut dyn Sql,
    id: &str,
    kind: EntryKind,
    amount: i64,
    reference: &str,
    note: &str,
    now: u64,
) -> Result<Credited, HubError> {
    let account = named(sql, id)?;
    if account.state == AccountState::Closed {
        return Err(HubError::Review(format!("account {id} is closed")));
    }
    if reference.is_empty() || reference.len() > NAME_MAX * 2 {
        return Err(HubError::Review(
            "a reference of 1 to 128 bytes is required (the payment's id)".into(),
        ));
    }
    match kind {
        EntryKind::TopUp if amount <= 0 => {
            return Err(HubError::Review("a top-up must be above 0".into()));
        }
        EntryKind::TopUp | EntryKind::Adjustment => {}
        EntryKind::Charge | EntryKind::Void => {
            return Err(HubError::Review(
                "charges and voids come from readers' records only".into(),
            ));
        }
    }
    // References are unique per account across top-ups and adjustments:
    // the same one again (a retry) adds nothing, with anything else it is
    // refused.
    if let Some((seen_kind, seen)) = book::credited(sql, id, reference)? {
        if seen_kind != kind.as_str() || seen != amount {
            return Err(HubError::Review(format!(
                "reference {reference:?} was used already, for a {seen_kind} of {seen}, not a \
                 {} of {amount}",
                kind.as_str()
            )));
        }
        return Ok(Credited {
            added: false,
            balance: book::balance(sql, id)?,
            suspended: false,
        });
    }
    book::insert_entries(
        sql,
        &[NewEntry {
            account: id.into(),
            kind,
            amount,
            at: now,
            recorded_at: now,
            source: reference.into(),
            seq: 0,
            credential: None,
            token_hash: None,
            note: note.into(),
        }],
    )?;
    Ok(Credited {
        added: true,
        balance: book::balance(sql, id)?,
        suspended: false,
    })
}

/// Stores a new enrolment code for an open account (by its hash only).
pub fn add_code(
    sql: &mut dyn Sql,
    id: &str,
    code_hash: &[u8; 32],
    life_secs: u64,
    now: u64,
) -> Result<u64, HubError> {
    let account = named(sql, id)?;
    if account.state != AccountState::Open {
        return Err(HubError::Review(format!(
            "account {id} is {}; reopen it first",
            account.state.as_str()
        )));
    }
    if life_secs == 0 || life_secs > MAX_CODE_LIFE_SECS {
        return Err(HubError::Review(format!(
            "a code lives 1 s to {} days",
            MAX_CODE_LIFE_SECS / 86_400
        )));
    }
    let expires_at = now + life_secs;
    book::insert_code(sql, code_hash, id, expires_at, now)?;
    Ok(expires_at)
}

/// Binds `wallet_key` to the account of the code with `code_hash`. The
/// same phone presenting its code again (its answer was lost) is enrolled
/// still; any other use of a used or expired code is [`Refusal::CodeNotValid`].
pub fn enrol(
    sql: &mut dyn Sql,
    code_hash: &[u8; 32],
    wallet_key: &[u8; 32],
    now: u64,
) -> Result<Result<Account, Refusal>, HubError> {
    let wallet = WalletId::of_key(wallet_key);
    let Some(code) = book::code(sql, code_hash)? else {
        return Ok(Err(Refusal::CodeNotValid));
    };
    match code.used_by {
        Some(user) if user == wallet => {}
        Some(_) => return Ok(Err(Refusal::CodeNotValid)),
        None if now >= code.expires_at => return Ok(Err(Refusal::CodeNotValid)),
        None => {}
    }
    let Some(account) = book::account(sql, &code.account, true)? else {
        return Ok(Err(Refusal::CodeNotValid));
    };
    match account.state {
        AccountState::Open => {}
        AccountState::Suspended => return Ok(Err(Refusal::Suspended(account.state_reason))),
        AccountState::Closed => return Ok(Err(Refusal::Closed)),
    }
    match book::wallet_account(sql, wallet)? {
        Some(bound) if bound == account.id => {}
        Some(_) => return Ok(Err(Refusal::EnrolledElsewhere)),
        None => {
            if book::account_wallets(sql, &account.id)?.len() >= MAX_WALLETS {
                return Ok(Err(Refusal::TooManyWallets));
            }
            book::bind_wallet(sql, &account.id, wallet_key, now)?;
        }
    }
    if code.used_by.is_none() {
        book::use_code(sql, code_hash, wallet, now)?;
    }
    Ok(Ok(account))
}

/// The issuer key a hub signs credentials and notes with, and how long
/// what it issues stays reserved.
pub struct Issuer<'a> {
    /// Its key id.
    pub key_id: u8,
    /// The key.
    pub key: &'a SigningKey,
    /// Seconds after a credential expires that its unspent allowance is
    /// reserved ([`SETTLE_SECS`] by default).
    pub settle_secs: u64,
}

/// What a renewal hands the phone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Renewal {
    /// The credential (new, or the one issued within [`REUSE_SECS`]).
    pub credential: Credential,
    /// Its note.
    pub note: RenewalNote,
    /// Whether it was issued by this call.
    pub fresh: bool,
}

/// Issues a credential for the wallet of `wallet_key` under the rule of
/// this module, recorded before it is returned. The caller holds the
/// account's row lock ([`crate::Hub::answer_phones`] takes it), so that
/// what this reads after it is every renewal and debit committed before.
pub fn renew(
    ledger: &mut dyn Ledger,
    issuer: &Issuer<'_>,
    wallet_key: &[u8; 32],
    now: u64,
) -> Result<Result<Renewal, Refusal>, HubError> {
    let wallet = WalletId::of_key(wallet_key);
    let Some(facts) = book::renew_facts(ledger, wallet, now)? else {
        return Ok(Err(Refusal::NotEnrolled));
    };
    let account = &facts.account;
    match account.state {
        AccountState::Open => {}
        AccountState::Suspended => {
            return Ok(Err(Refusal::Suspended(account.state_reason.clone())));
        }
        AccountState::Closed => return Ok(Err(Refusal::Closed)),
    }
    if facts.denied {
        return Ok(Err(Refusal::WalletDenied));
    }
    let note = |credential: &Credential| {
        RenewalNote::sign(credential, facts.highest_counter, now, issuer.key)
    };
    let room = headroom(facts.balance, account.credit_line, facts.exposure);
    let granted = grant(&account.policy, room);
    // The phone's current credential again, rather than a new one, when it
    // was issued moments ago: a retry after a lost answer reserves nothing
    // more. Never one suspended for review. (Whether a new credential is
    // worth more than what the current one has left only the phone knows:
    // the hub does not see what it spent offline; the wallet keeps the one
    // with more left, docs/accounts.md §2.)
    if let Some(newest) = &facts.newest {
        let current = &newest.credential;
        let usable = now < current.terms.valid_until()
            && current.terms.issuer_key_id == issuer.key_id
            && !newest.suspended;
        if usable && now < newest.issued_at + REUSE_SECS {
            return Ok(Ok(Renewal {
                note: note(current),
                credential: *current,
                fresh: false,
            }));
        }
    }
    let Some(grant) = granted else {
        return Ok(Err(Refusal::NoAllowance {
            headroom: room,
            frees_at: facts.frees_at,
        }));
    };
    let valid_from = u32::try_from(now.saturating_sub(BACKDATE_SECS))
        .map_err(|_| HubError::Terms("the hub's clock is past 2106".into()))?;
    let credential = CredentialTerms {
        issuer_key_id: issuer.key_id,
        scope: account.policy.scope,
        currency: account.currency,
        wallet_key: *wallet_key,
        offline_limit: grant.offline_limit,
        per_payment_cap: grant.per_payment_cap,
        valid_from,
        valid_hours: account.policy.valid_hours,
    }
    .sign(issuer.key)
    .map_err(|e| HubError::Terms(e.to_string()))?;
    let settles_at = credential.terms.valid_until() + issuer.settle_secs;
    book::insert_credential(ledger, &account.id, &credential, settles_at, now)?;
    Ok(Ok(Renewal {
        note: note(&credential),
        credential,
        fresh: true,
    }))
}

/// An account as a statement or the operator sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AccountView {
    /// The account.
    pub account: Account,
    /// The sum of its entries.
    pub balance: i64,
    /// What its live credentials could still spend offline.
    pub exposure: u64,
    /// Balance + credit line − exposure: what the next renewal may grant
    /// (up to the policy's offline limit).
    pub available: i64,
    /// Its phones: wallet id (hex), enrolled at.
    pub wallets: Vec<(String, u64)>,
    /// Its credentials still reserving allowance.
    pub credentials: Vec<CredentialUse>,
    /// A page of its ledger, newest first.
    pub entries: Vec<StatementEntry>,
    /// The id to page back from; 0 when the page reaches the first entry.
    pub next_before: u64,
}

/// The account, its balance, exposure and a page of entries before `before`.
pub fn view(
    sql: &mut dyn Sql,
    id: &str,
    before: u64,
    now: u64,
) -> Result<Option<AccountView>, HubError> {
    // Locked (PostgreSQL): no renewal, and no ingest that may leave the
    // account in debt, runs meanwhile. The balance and the credentials'
    // charges are read in one statement, so they agree with each other;
    // the page of entries is read after them.
    let Some(account) = book::account(sql, id, true)? else {
        return Ok(None);
    };
    let (balance, credentials) = book::standing(sql, id, now)?;
    let exposure = exposure(&credentials, now);
    let available = headroom(balance, account.credit_line, exposure)
        .clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64;
    let wallets = book::account_wallets(sql, id)?
        .into_iter()
        .map(|(w, _, at)| (w.to_string(), at))
        .collect();
    let mut entries = book::entries(sql, id, before, STATEMENT_PAGE + 1)?;
    let next_before = match entries.len() > STATEMENT_PAGE {
        true => {
            entries.truncate(STATEMENT_PAGE);
            entries.last().map_or(0, |e| e.id)
        }
        false => 0,
    };
    Ok(Some(AccountView {
        account,
        balance,
        exposure,
        available,
        wallets,
        credentials,
        entries,
        next_before,
    }))
}

/// Accounts whose id or label contains `search`.
pub fn list(sql: &mut dyn Sql, search: &str, limit: u32) -> Result<Vec<Account>, HubError> {
    book::accounts(sql, search, limit)
}

/// Who changed an account's state.
#[derive(Debug, Clone, Copy)]
pub struct Change<'a> {
    /// The new state.
    pub state: AccountState,
    /// Why.
    pub reason: &'a str,
    /// Who (an operator's name, or `clearing`).
    pub by: &'a str,
}

/// The evidence an account's own deny entries carry: how a reopening
/// tells them from any other denial of its phones.
fn account_evidence(id: &str) -> String {
    format!("account {id}: ")
}

/// Whether a stored deny reason is a clearing rule's, which clearing may
/// lift by itself (docs/sync.md §4), rather than an operator's.
fn clearing_reason(reason: &str) -> bool {
    DenyReason::from_name(reason).is_some_and(|r| {
        matches!(
            r,
            DenyReason::CounterReused | DenyReason::TotalsDoNotChain | DenyReason::OverOfflineLimit
        )
    })
}

/// Suspends, closes or reopens an account. Suspending or closing with
/// `deny_phones` puts each of its phones on the deny list (reason
/// `reason_code`), as the account's own entry even where a clearing rule's
/// denial stands, so that clearing lifting that one does not let the phone
/// back in (an operator's denial stands as it is);
/// reopening a suspended account, once the balance covers its credit
/// line, lifts only those entries (a phone denied as lost or stolen stays
/// denied). Returns the phones whose entry changed.
pub fn change_state(
    ledger: &mut dyn Ledger,
    signer: &dyn DenySigner,
    id: &str,
    change: Change<'_>,
    reason_code: DenyReason,
    deny_phones: bool,
    now: u64,
) -> Result<Vec<WalletId>, HubError> {
    let account = named(ledger, id)?;
    let wallets: Vec<WalletId> = book::account_wallets(ledger, id)?
        .into_iter()
        .map(|(w, _, _)| w)
        .collect();
    match (account.state, change.state) {
        (AccountState::Closed, _) => {
            return Err(HubError::Review(format!("account {id} is closed for good")));
        }
        (from, to) if from == to => return Ok(Vec::new()),
        (_, AccountState::Open) => {
            let balance = book::balance(ledger, id)?;
            if headroom(balance, account.credit_line, 0) < 0 {
                return Err(HubError::Review(format!(
                    "account {id} is in debt (balance {balance}, credit line {}); credit it first",
                    account.credit_line
                )));
            }
        }
        _ => {}
    }
    book::set_state(ledger, id, change.state, change.reason, change.by, now)?;
    let ours = account_evidence(id);
    let mut changed = Vec::new();
    for wallet in wallets {
        let newest = book::newest_wallet_deny(ledger, wallet)?;
        let denied_by = |ours_too: bool| {
            newest.as_ref().is_some_and(|(action, reason, evidence)| {
                action == "deny"
                    && (evidence.starts_with(&ours) == ours_too)
                    && (ours_too || !clearing_reason(reason))
            })
        };
        match change.state {
            AccountState::Open => {
                if !denied_by(true) {
                    continue;
                }
                let evidence = format!("{ours}reopened: {}", change.reason);
                ledger::set_deny(
                    ledger,
                    signer,
                    DenyAction::Allow,
                    wallet,
                    reason_code,
                    &evidence,
                    now,
                )?;
            }
            _ if !deny_phones => continue,
            // An operator's denial (lost, stolen, fraud) stands as it is:
            // nothing lifts it but the operator.
            _ if denied_by(false) => continue,
            _ => {
                let evidence = format!("{ours}{}: {}", change.state.as_str(), change.reason);
                ledger::set_deny(
                    ledger,
                    signer,
                    DenyAction::Deny,
                    wallet,
                    reason_code,
                    &evidence,
                    now,
                )?;
            }
        }
        changed.push(wallet);
    }
    Ok(changed)
}

/// Looks at accounts a batch or an operator may have left short
/// (docs/accounts.md §4): each whose phones could now spend more than it
/// holds has its live credentials watched (until it is not short), and
/// each open one whose balance is below minus its credit line is
/// suspended. Where one of its credentials was charged past its limit (a
/// clone spent beyond what the rule reserved), its phones are denied too,
/// with the evidence. The accounts suspended.
pub fn settle_debts(
    ledger: &mut dyn Ledger,
    signer: &dyn DenySigner,
    accounts: &[String],
    now: u64,
) -> Result<Vec<String>, HubError> {
    let mut suspended = Vec::new();
    for id in accounts {
        let Some(account) = book::account(ledger, id, false)? else {
            continue;
        };
        let (balance, credentials) = book::standing(ledger, id, now)?;
        let short = headroom(balance, account.credit_line, exposure(&credentials, now)) < 0;
        book::set_watch(ledger, id, short, now)?;
        if account.state != AccountState::Open || headroom(balance, account.credit_line, 0) >= 0 {
            continue;
        }
        // A clone leaves its mark: a credential charged past its limit.
        // Without one (a reader that synced after the settle window, an
        // operator's adjustment) the rider is not a cheat: renewals stop
        // until the debt is paid, and the phone still pays at the gates.
        let clone = book::overspent_credentials(ledger, id, now)? > 0;
        let reason = match clone {
            true => format!(
                "in debt: balance {balance} is below the credit line of {} (payments beyond \
                 what its credentials allowed: see the clearing flags of its wallets)",
                account.credit_line
            ),
            false => format!(
                "in debt: balance {balance} is below the credit line of {} (no credential \
                 charged past its limit: a late reader or an adjustment)",
                account.credit_line
            ),
        };
        let change = Change {
            state: AccountState::Suspended,
            reason: &reason,
            by: "clearing",
        };
        change_state(
            ledger,
            signer,
            id,
            change,
            DenyReason::SuspectedFraud,
            clone,
            now,
        )?;
        suspended.push(id.clone());
    }
    Ok(suspended)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn used(limit: u32, cleared: i64, settles_at: u64) -> CredentialUse {
        CredentialUse {
            digest: [0; 32],
            offline_limit: limit,
            valid_until: settles_at.saturating_sub(SETTLE_SECS),
            settles_at,
            issued_at: 0,
            cleared,
        }
    }

    const POLICY: AccountPolicy = AccountPolicy {
        offline_limit: 2_000,
        per_payment_cap: 500,
        valid_hours: 24,
        scope: Scope::Transit,
    };

    #[test]
    fn exposure_counts_what_each_live_credential_could_still_spend() {
        let creds = [
            used(1_000, 300, 100),
            used(500, 0, 100),
            used(800, 900, 100),
        ];
        assert_eq!(exposure(&creds, 50), 700 + 500);
        assert_eq!(
            exposure(&creds, 100),
            0,
            "settled credentials reserve nothing"
        );
    }

    #[test]
    fn a_grant_is_the_policy_limit_or_the_headroom_whichever_is_less() {
        assert_eq!(
            grant(&POLICY, 10_000),
            Some(Grant {
                offline_limit: 2_000,
                per_payment_cap: 500
            })
        );
        assert_eq!(
            grant(&POLICY, 300),
            Some(Grant {
                offline_limit: 300,
                per_payment_cap: 300
            })
        );
        assert_eq!(grant(&POLICY, 0), None);
        assert_eq!(grant(&POLICY, -5), None);
    }

    #[test]
    fn headroom_counts_the_credit_line_and_subtracts_the_exposure() {
        assert_eq!(headroom(100, 50, 120), 30);
        assert_eq!(headroom(-40, 50, 0), 10);
        assert!(headroom(i64::MIN, 0, u64::MAX) < 0);
    }
}
