//! Riders' accounts at the hub (docs/accounts.md §7).
//!
//! 1. `renewals`: N phones (default 4,000), each enrolled in an account,
//!    renew once: a signed request checked ([`check_wallet_request`]) and
//!    answered ([`Hub::answer_phones`]: nonce, account lock, balance,
//!    exposure, credential signed and recorded, note) as `hub serve` does
//!    for `POST /v1/wallet/renew`, without HTTP: one request per
//!    transaction (a phone alone), and 32 (phones arriving together, which
//!    `hub serve` answers in one transaction). On SQLite (one writer, as
//!    `hub serve`) and on PostgreSQL with 1 and 4 writers (each a connection
//!    and a thread of its own, as `hub serve --writers`): renewals/s, and
//!    the median and p99 of the time to a renewal's answer.
//! 2. `ingest`: the same payments (250 wallets in 25 accounts × 200
//!    payments, in batches of 5,000) stored by two fresh hubs with the same
//!    accounts, one where their credentials came from `hub issue` (no
//!    account) and one where they came from renewals (every charge debits
//!    an account, checked by the balances after), batch by batch in turns,
//!    R rounds (default 3), medians; SQLite and PostgreSQL.
//!
//! Run: `cargo bench --bench accounts -- [--renewals N] [--rounds R] [--skip-renewals]`.
//! PostgreSQL is a throwaway cluster with its default durability (`fsync`,
//! `synchronous_commit` on); SQLite runs at `synchronous=FULL`.

use std::path::Path;
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use sonotap_disk::keys::{PublicKey, Role};
use sonotap_hub::accounts::{Account, AccountPolicy};
use sonotap_hub::ledger::Via;
use sonotap_hub::verify::CheckedBatch;
use sonotap_hub::{Hub, IssueRequest, PhoneAnswer, check_wallet_request};
use sonotap_protocol::record::{GENESIS_HASH, RecordBody, RecordKind};
use sonotap_protocol::token::{Credential, PaymentTerms, Scope, Token};
use sonotap_protocol::wire::{
    AccountState, Batch, BatchRecord, EntryKind, WalletAsk, WalletRequest,
};

#[path = "common/mod.rs"]
mod common;
#[path = "../crates/hub/src/backend/postgres/test_server.rs"]
mod pg_server;

const NOW: u64 = 1_790_000_000;
const WALLETS_PER_ACCOUNT: usize = 10;
/// Each account's first top-up.
const SEED: i64 = 1 << 40;
const BATCH: usize = 5_000;

fn wallet(i: usize) -> SigningKey {
    let mut seed = [7u8; 32];
    seed[..8].copy_from_slice(&(i as u64).to_be_bytes());
    SigningKey::from_bytes(&seed)
}

fn request(key: &SigningKey, ask: WalletAsk, at_ms: u64, n: u64) -> Vec<u8> {
    let mut nonce = [0; 16];
    nonce[..8].copy_from_slice(&n.to_be_bytes());
    WalletRequest::sign(ask, at_ms, nonce, key)
        .expect("canonical")
        .encode()
        .expect("encodable")
}

fn answer(hub: &mut Hub, bytes: &[u8], at_ms: u64) -> PhoneAnswer {
    let checked = check_wallet_request(bytes, at_ms).expect("valid request");
    match hub.answer_phone(&checked, at_ms).expect("hub") {
        Ok(answer) => answer,
        Err(refused) => panic!("refused: {refused:?}"),
    }
}

/// Accounts with plenty of money and `wallets` phones enrolled in them.
fn enrol_all(hub: &mut Hub, wallets: usize) {
    for a in 0..wallets.div_ceil(WALLETS_PER_ACCOUNT) {
        let id = format!("acct-{a}");
        hub.open_account(&Account {
            id: id.clone(),
            label: String::new(),
            currency: 978,
            credit_line: 0,
            policy: AccountPolicy {
                offline_limit: 1_000_000,
                per_payment_cap: 1_000,
                valid_hours: 24,
                scope: Scope::Transit,
            },
            state: AccountState::Open,
            state_reason: String::new(),
            created_at: NOW,
        })
        .expect("open");
        hub.credit_account(&id, EntryKind::TopUp, SEED, "seed", "", NOW)
            .expect("credit");
    }
    for i in 0..wallets {
        let id = format!("acct-{}", i / WALLETS_PER_ACCOUNT);
        let (code, _) = hub.enrol_code(&id, 3600, NOW).expect("code");
        let bytes = request(&wallet(i), WalletAsk::Enrol { code }, NOW * 1000, i as u64);
        answer(hub, &bytes, NOW * 1000);
    }
}

fn percentile(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

/// Renews every wallet once, `hubs.len()` writers at once, `batch`
/// requests per transaction (as `hub serve` answers the requests queued
/// when a writer comes free); prints a line.
fn renewals(label: &str, hubs: &mut [Hub], first_wallet: usize, n: usize, batch: usize) {
    let at_ms = (NOW + 10) * 1000;
    let requests: Vec<WalletRequest> = (first_wallet..first_wallet + n)
        .map(|i| {
            let bytes = request(&wallet(i), WalletAsk::Renew, at_ms, (1 << 32) + i as u64);
            check_wallet_request(&bytes, at_ms).expect("valid")
        })
        .collect();
    let chunks: Vec<&[WalletRequest]> = requests.chunks(batch).collect();
    let writers = hubs.len();
    let started = Instant::now();
    let mut latencies: Vec<Duration> = std::thread::scope(|s| {
        let workers: Vec<_> = hubs
            .iter_mut()
            .enumerate()
            .map(|(w, hub)| {
                let chunks = &chunks;
                s.spawn(move || {
                    let mut took = Vec::new();
                    for chunk in chunks.iter().skip(w).step_by(writers) {
                        let one = Instant::now();
                        // Each request is checked as the server checks it.
                        for r in chunk.iter() {
                            let bytes = r.encode().expect("encodable");
                            check_wallet_request(&bytes, at_ms).expect("valid");
                        }
                        let answers = hub.answer_phones(chunk, at_ms).expect("hub");
                        for a in answers {
                            assert!(matches!(a, Ok(PhoneAnswer::Renewed(_))), "{a:?}");
                        }
                        took.extend(std::iter::repeat_n(one.elapsed(), chunk.len()));
                    }
                    took
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().expect("worker"))
            .collect()
    });
    let took = started.elapsed();
    println!(
        "renewals {label}, {batch} per transaction: {n} in {:.2} s = {:.0}/s; a renewal's answer \
         median {:.2} ms, p99 {:.2} ms",
        took.as_secs_f64(),
        n as f64 / took.as_secs_f64(),
        percentile(&mut latencies, 0.5).as_secs_f64() * 1e3,
        percentile(&mut latencies, 0.99).as_secs_f64() * 1e3,
    );
}

/// Every renewal figure on `hubs`: one at a time, then in batches.
fn renewal_table(label: &str, mut hubs: Vec<Hub>, n: usize) {
    enrol_all(&mut hubs[0], 2 * n);
    renewals(label, &mut hubs, 0, n, 1);
    renewals(label, &mut hubs, n, n, 32);
}

/// `wallets` × `payments` charges of 10 under `credentials`, sealed by
/// reader `gate-1` in batches.
fn batches(credentials: &[Credential], payments: usize, reader: &SigningKey) -> Vec<Vec<u8>> {
    let mut records = Vec::new();
    let mut prev = GENESIS_HASH;
    let mut out = Vec::new();
    let mut first_seq = 1;
    for p in 0..payments {
        for (w, credential) in credentials.iter().enumerate() {
            let payment = PaymentTerms {
                amount: 10,
                counter: p as u32 + 1,
                total_before: 10 * p as u32,
                timestamp: credential.terms.valid_from + 600,
                reader_tag: 0,
            };
            let token = Token::sign(*credential, payment, &wallet(w))
                .expect("key")
                .encode();
            let body = RecordBody {
                reader_id: "gate-1",
                seq: first_seq + records.len() as u64,
                at: NOW + 20,
                kind: RecordKind::Charge,
                amount: 10,
                token: &token,
                prev_hash: prev,
            };
            let signature = body.sign(reader);
            prev = body.hash();
            records.push(BatchRecord {
                at: body.at,
                kind: RecordKind::Charge,
                amount: 10,
                token: token.to_vec(),
                signature,
            });
            if records.len() == BATCH {
                let seq = first_seq;
                first_seq += BATCH as u64;
                let chain = out.last().map_or(GENESIS_HASH, |(_, h)| *h);
                let batch = Batch::seal(
                    "gate-1",
                    seq,
                    chain,
                    std::mem::take(&mut records),
                    NOW + 30,
                    reader,
                )
                .expect("seal");
                out.push((batch.encode().expect("encode"), prev));
            }
        }
    }
    if !records.is_empty() {
        let chain = out.last().map_or(GENESIS_HASH, |(_, h)| *h);
        let batch =
            Batch::seal("gate-1", first_seq, chain, records, NOW + 30, reader).expect("seal");
        out.push((batch.encode().expect("encode"), prev));
    }
    out.into_iter().map(|(b, _)| b).collect()
}

/// A fresh hub from `open` with the payments to store, checked: their
/// credentials from renewals (`accounts`) or from `hub issue`.
fn prepared(
    open: &dyn Fn() -> Hub,
    accounts: bool,
    wallets: usize,
    payments: usize,
) -> (Hub, Vec<CheckedBatch>) {
    let mut hub = open();
    let reader = SigningKey::from_bytes(&[9; 32]);
    let reader_pub =
        PublicKey::from_bytes(Role::Reader, None, &reader.verifying_key().to_bytes()).expect("key");
    hub.add_reader("gate-1", &reader_pub, NOW).expect("reader");
    // Both sides enrol the same wallets, so they store into the same
    // database; only the credentials they pay under differ.
    enrol_all(&mut hub, wallets);
    let credentials: Vec<Credential> = if accounts {
        (0..wallets)
            .map(|i| {
                let bytes = request(
                    &wallet(i),
                    WalletAsk::Renew,
                    NOW * 1000,
                    (wallets + i) as u64,
                );
                match answer(&mut hub, &bytes, NOW * 1000) {
                    PhoneAnswer::Renewed(r) => r.credential,
                    other => panic!("{other:?}"),
                }
            })
            .collect()
    } else {
        (0..wallets)
            .map(|i| {
                let public = PublicKey::from_bytes(
                    Role::Wallet,
                    None,
                    &wallet(i).verifying_key().to_bytes(),
                )
                .expect("key");
                let request = IssueRequest {
                    scope: Scope::Transit,
                    currency: 978,
                    offline_limit: 1_000_000,
                    per_payment_cap: 1_000,
                    valid_from: (NOW - 300) as u32,
                    valid_hours: 24,
                };
                hub.issue(&public, request, NOW).expect("issue")
            })
            .collect()
    };
    let checked = batches(&credentials, payments, &reader)
        .iter()
        .map(|b| hub.admit(b).expect("admit").check().expect("check"))
        .collect();
    (hub, checked)
}

/// What the payments took from the hub's accounts.
fn debited(hub: &mut Hub, wallets: usize) -> i64 {
    (0..wallets.div_ceil(WALLETS_PER_ACCOUNT))
        .map(|a| {
            let view = hub
                .account_view(&format!("acct-{a}"), 0, NOW + 40)
                .expect("view")
                .expect("account");
            SEED - view.balance
        })
        .sum()
}

/// Each round, two fresh hubs store the same payments batch by batch,
/// taking turns (which goes first alternates), so that both meet the
/// machine as it is at that moment: one without accounts, one where every
/// charge debits an account.
fn ingest(label: &str, open: &dyn Fn() -> Hub, rounds: usize) {
    let (wallets, payments) = (250, 200);
    let records = wallets * payments;
    let (mut plain, mut with_accounts) = (Vec::new(), Vec::new());
    // Each pair of batches stored back to back: the plain one's time over
    // the other's (a rate ratio), which drift on the machine moves least.
    let mut paired: Vec<f64> = Vec::new();
    for _ in 0..rounds {
        let (mut plain_hub, plain_batches) = prepared(open, false, wallets, payments);
        let (mut debit_hub, debit_batches) = prepared(open, true, wallets, payments);
        let (mut p, mut d) = (Duration::ZERO, Duration::ZERO);
        for (i, (plain_batch, debit_batch)) in plain_batches.iter().zip(&debit_batches).enumerate()
        {
            let store = |hub: &mut Hub, batch: &CheckedBatch| {
                let started = Instant::now();
                hub.store(batch, Via::Import, (NOW + 40) * 1000)
                    .expect("store");
                started.elapsed()
            };
            let (one, other) = if i % 2 == 0 {
                let one = store(&mut plain_hub, plain_batch);
                (one, store(&mut debit_hub, debit_batch))
            } else {
                let other = store(&mut debit_hub, debit_batch);
                (store(&mut plain_hub, plain_batch), other)
            };
            p += one;
            d += other;
            paired.push(one.as_secs_f64() / other.as_secs_f64());
        }
        assert_eq!(debited(&mut plain_hub, wallets), 0, "no account debited");
        assert_eq!(
            debited(&mut debit_hub, wallets),
            10 * records as i64,
            "every charge debited"
        );
        plain.push(p);
        with_accounts.push(d);
    }
    let rate = |d: Duration| records as f64 / d.as_secs_f64();
    let (p, d) = (
        percentile(&mut plain, 0.5),
        percentile(&mut with_accounts, 0.5),
    );
    paired.sort_by(f64::total_cmp);
    println!(
        "ingest {label} ({records} charges, {} batches, medians of {rounds}): without accounts \
         {:.0} records/s, every charge debiting an account {:.0} records/s, ratio {:.2}; \
         median of {} paired batches {:.2}",
        records.div_ceil(BATCH),
        rate(p),
        rate(d),
        rate(d) / rate(p),
        paired.len(),
        paired[paired.len() / 2]
    );
}

fn main() {
    let n = common::arg("--renewals", 4_000);
    let rounds = common::arg("--rounds", 3).max(1);
    let tmp = tempfile::tempdir().expect("tempdir");
    let fresh = |name: &str| -> std::path::PathBuf { tmp.path().join(name) };
    let sqlite = |dir: &Path| Hub::init(dir, 1, NOW).expect("hub");
    let renew = !std::env::args().any(|a| a == "--skip-renewals");
    if renew {
        renewal_table("SQLite, 1 writer", vec![sqlite(&fresh("renew-sqlite"))], n);
    }
    let pg = pg_server::PgServer::start_durable();
    match &pg {
        None => println!("postgres: skipped (PostgreSQL is not installed)"),
        Some(_) if !renew => {}
        Some(pg) => {
            for writers in [1, 4] {
                let db = format!("renew{writers}");
                pg.create_database(&db);
                let dir = fresh(&db);
                drop(Hub::init(&dir, 1, NOW).expect("hub dir"));
                let first =
                    sonotap_hub::open_database(&dir, Some(&pg.url(&db)), NOW).expect("postgres");
                let mut hubs = vec![first];
                while hubs.len() < writers {
                    let more = hubs[0]
                        .another_writer()
                        .expect("PostgreSQL")
                        .expect("writer");
                    hubs.push(more);
                }
                renewal_table(&format!("PostgreSQL, {writers} writer(s)"), hubs, n);
            }
        }
    }
    let counter = std::cell::Cell::new(0);
    let next = |prefix: &str| {
        counter.set(counter.get() + 1);
        format!("{prefix}{}", counter.get())
    };
    ingest(
        "SQLite",
        &|| sqlite(&fresh(&next("ingest-sqlite-"))),
        rounds,
    );
    if let Some(pg) = &pg {
        ingest(
            "PostgreSQL",
            &|| {
                let db = next("ingest");
                pg.create_database(&db);
                let dir = fresh(&db);
                drop(Hub::init(&dir, 1, NOW).expect("hub dir"));
                sonotap_hub::open_database(&dir, Some(&pg.url(&db)), NOW).expect("postgres")
            },
            rounds,
        );
    }
}
