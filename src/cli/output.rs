//! What the CLI prints: JSON lines for programs, a table for people.

use std::io::{self, Write};
use std::time::{Duration, UNIX_EPOCH};

use serde::Serialize;
use serde_json::{Value, json};

use sonotap_protocol::currency;
use sonotap_protocol::policy::Reason;
use sonotap_protocol::record::Record;
use sonotap_protocol::token::{Credential, Token};
use sonotap_reader::reader::Outcome;
use sonotap_reader::store::QueueSummary;
use sonotap_wallet::Wallet;

/// The answer of `reader accept`: field order as documented.
#[derive(Serialize)]
struct DecisionLine {
    decision: &'static str,
    reason: Option<Reason>,
    wallet: Option<String>,
    amount: Option<u32>,
    counter: Option<u32>,
    seq: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<String>,
}

pub(super) fn decision_json(outcome: &Outcome) -> String {
    let (decision, reason, seq, detail) = match &outcome.decision {
        Ok(committed) => ("accept", None, Some(committed.seq), None),
        Err(decline) => (
            "decline",
            Some(decline.reason),
            None,
            Some(decline.detail.clone()),
        ),
    };
    to_line(&DecisionLine {
        decision,
        reason,
        wallet: outcome.wallet.map(|w| w.to_string()),
        amount: outcome.amount,
        counter: outcome.counter,
        seq,
        detail,
    })
}

fn credential_value(credential: &Credential) -> Value {
    let terms = &credential.terms;
    json!({
        "wallet": terms.wallet_id().to_string(),
        "issuer_key_id": terms.issuer_key_id,
        "scope": terms.scope.to_string(),
        "currency": currency::name(terms.currency),
        "offline_limit": terms.offline_limit,
        "per_payment_cap": terms.per_payment_cap,
        "valid_from": terms.valid_from,
        "valid_until": terms.valid_until(),
    })
}

/// `hub issue`: the credential, its digest, and the renewal note beside it.
pub(super) fn issued_json(credential: &Credential, note: &std::path::Path, highest: u32) -> String {
    let mut value = credential_value(credential);
    if let Some(fields) = value.as_object_mut() {
        fields.insert("digest".into(), json!(hex::encode(credential.digest())));
        fields.insert("renewal_note".into(), json!(note.display().to_string()));
        fields.insert("highest_cleared_counter".into(), json!(highest));
    }
    to_line(&value)
}

/// `wallet add-credential`: the credential and what became of the counter.
pub(super) fn installed_json(installed: &sonotap_wallet::Installed) -> String {
    let mut value = credential_value(&installed.credential);
    if let Some(fields) = value.as_object_mut() {
        fields.insert(
            "highest_cleared_counter".into(),
            json!(installed.highest_cleared_counter),
        );
        fields.insert("counter_before".into(), json!(installed.counter_before));
        fields.insert("counter".into(), json!(installed.counter));
    }
    to_line(&value)
}

pub(super) fn payment_json(token: &Token) -> String {
    let p = &token.payment;
    to_line(&json!({
        "wallet": token.wallet_id().to_string(),
        "amount": p.amount,
        "counter": p.counter,
        "total_before": p.total_before,
        "timestamp": p.timestamp,
        "bytes": token.encode().len(),
    }))
}

pub(super) fn inspect_json(token: &Token) -> String {
    let p = &token.payment;
    to_line(&json!({
        "version": sonotap_protocol::token::VERSION,
        "credential": credential_value(&token.credential),
        "payment": {
            "amount": p.amount,
            "counter": p.counter,
            "total_before": p.total_before,
            "timestamp": p.timestamp,
            "reader_tag": format!("{:08x}", p.reader_tag),
        },
        "signatures_checked": false,
    }))
}

pub(super) fn wallet_json(wallet: &Wallet) -> String {
    to_line(&json!({
        "wallet": wallet.id().to_string(),
        "counter": wallet.state().counter,
        "running_total": wallet.state().running_total,
        "credential": wallet.credential().map(credential_value),
    }))
}

/// A record as one JSON line, with what the device did after it
/// (`actuations`: outcomes in order, e.g. `["delivered", "passage"]`).
pub(super) fn record_json(record: &Record, actuations: &[&str]) -> String {
    to_line(&json!({
        "seq": record.seq,
        "at": record.at,
        "kind": record.kind,
        "wallet": record.wallet.to_string(),
        "counter": record.counter,
        "amount": record.amount,
        "synced": record.synced_at.is_some(),
        "synced_at": record.synced_at,
        "hash": hex::encode(record.hash),
        "prev_hash": hex::encode(record.prev_hash),
        "token": hex::encode(&record.token),
        "actuations": actuations,
    }))
}

pub(super) fn queue_header(out: &mut impl Write) -> io::Result<()> {
    writeln!(
        out,
        "{:>6}  {:<20}  {:<6}  {:<16}  {:>7}  {:>8}  {:<13}  synced",
        "seq", "time (UTC)", "kind", "wallet", "counter", "amount", "device"
    )
}

/// A record as a row of `reader queue`; `device` is what the gate or the
/// machine did last after it (`-`: nothing recorded).
pub(super) fn queue_row(out: &mut impl Write, r: &Record, device: Option<&str>) -> io::Result<()> {
    writeln!(
        out,
        "{:>6}  {:<20}  {:<6}  {:<16}  {:>7}  {:>8}  {:<13}  {}",
        r.seq,
        utc(r.at),
        r.kind.as_str(),
        r.wallet.to_string(),
        r.counter,
        r.amount,
        device.unwrap_or("-"),
        if r.synced_at.is_some() { "yes" } else { "no" }
    )
}

pub(super) fn queue_summary(
    out: &mut impl Write,
    summary: &QueueSummary,
    currency_code: u16,
) -> io::Result<()> {
    writeln!(
        out,
        "{} records kept, {} waiting for the hub ({} {} minor units), last seq {}",
        summary.records,
        summary.unsynced,
        summary.unsynced_amount,
        currency::name(currency_code),
        summary.head_seq
    )
}

/// `2026-11-21T19:40:00Z`
pub(super) fn utc(secs: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs)).to_string()
}

fn to_line(value: &impl Serialize) -> String {
    // Serialising these plain structures cannot fail; say so if it ever does.
    serde_json::to_string(value).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}

/// How long before `now` the moment `at` was (Unix seconds), in the unit
/// a person reads at a glance.
pub(super) fn ago(now: u64, at: u64) -> String {
    let secs = now.saturating_sub(at);
    match secs {
        0..120 => format!("{secs} s ago"),
        120..7200 => format!("{} min ago", secs / 60),
        7200..172_800 => format!("{} h ago", secs / 3600),
        _ => format!("{} days ago", secs / 86_400),
    }
}
