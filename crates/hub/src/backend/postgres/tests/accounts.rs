//! Riders' accounts on SQLite and on a real PostgreSQL server: the same
//! scenario gives the same trace on both, two phones renewing at the same
//! instant never get more than the account holds, and a property test
//! over random renewals, payments, syncs and top-ups keeps the rule of
//! docs/accounts.md §2.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};

use proptest::prelude::*;

use super::*;
use crate::accounts::{Account, AccountPolicy, Change, Refusal, SETTLE_SECS};
use crate::{PhoneAnswer, check_wallet_request};
use sonotap_protocol::token::Credential;
use sonotap_protocol::wire::{AccountState, DenyEntry, EntryKind, WalletAsk, WalletRequest};

const ACCOUNT: &str = "acct-1";
const PHONE_1: u8 = 21;
const PHONE_2: u8 = 22;
const PHONE_3: u8 = 23;

fn account(credit_line: u64) -> Account {
    Account {
        id: ACCOUNT.into(),
        label: "rider@example.org".into(),
        currency: 978,
        credit_line,
        policy: AccountPolicy {
            offline_limit: 1_000,
            per_payment_cap: 300,
            valid_hours: 24,
            scope: Scope::Transit,
        },
        state: AccountState::Open,
        state_reason: String::new(),
        created_at: NOW,
    }
}

/// A phone's request, signed, stamped `at` seconds after [`NOW`], as the
/// server checks and answers it.
fn ask(hub: &mut Hub, seed: u8, ask: WalletAsk, at: u64) -> Result<PhoneAnswer, Refusal> {
    static NONCE: AtomicU64 = AtomicU64::new(1);
    let n = NONCE.fetch_add(1, Ordering::Relaxed);
    let mut nonce = [0; 16];
    nonce[..8].copy_from_slice(&n.to_be_bytes());
    let now_ms = (NOW + at) * 1000;
    let request = WalletRequest::sign(ask, now_ms, nonce, &key(seed)).expect("a canonical ask");
    let bytes = request.encode().expect("encodable");
    let checked = check_wallet_request(&bytes, now_ms).expect("a valid request");
    hub.answer_phone(&checked, now_ms).expect("the hub answers")
}

fn enrol(hub: &mut Hub, seed: u8, code: &str, at: u64) -> Result<PhoneAnswer, Refusal> {
    let code = code.to_owned();
    ask(hub, seed, WalletAsk::Enrol { code }, at)
}

fn renew(hub: &mut Hub, seed: u8, at: u64) -> Result<Credential, Refusal> {
    ask(hub, seed, WalletAsk::Renew, at).map(|answer| match answer {
        PhoneAnswer::Renewed(r) => r.credential,
        other => panic!("a renewal answered {other:?}"),
    })
}

fn statement(hub: &mut Hub, seed: u8, at: u64) -> sonotap_protocol::wire::Statement {
    match ask(hub, seed, WalletAsk::Statement { before: 0 }, at) {
        Ok(PhoneAnswer::Statement(s)) => s,
        other => panic!("a statement request answered {other:?}"),
    }
}

fn pay(credential: &Credential, seed: u8, amount: u32, counter: u32, total: u32) -> Vec<u8> {
    let payment = PaymentTerms {
        amount,
        counter,
        total_before: total,
        timestamp: credential.terms.valid_from + 600,
        reader_tag: 0,
    };
    Token::sign(*credential, payment, &key(seed))
        .expect("wallet key matches")
        .encode()
        .to_vec()
}

/// Whether the wallet's newest whole-wallet deny-list entry denies it.
fn denied(hub: &mut Hub, seed: u8) -> bool {
    let (_, entries) = hub.deny_entries(0, 10_000).expect("deny list");
    entries
        .iter()
        .map(|e| DenyEntry::decode(e).expect("an entry"))
        .rfind(|e| e.wallet == wallet_of(seed) && e.scope == DenyScope::Wallet)
        .is_some_and(|e| e.action == DenyAction::Deny)
}

fn code(hub: &mut Hub, life: u64) -> String {
    hub.enrol_code(ACCOUNT, life, NOW).expect("a code").0
}

/// Every step of an account's life, asserted, and what each gave (ids of
/// entries left out: PostgreSQL's identity skips numbers after a rollback).
fn account_scenario(hub: &mut Hub) -> Vec<String> {
    let mut trace = Vec::new();
    let mut note = |what: &str, value: String| trace.push(format!("{what}: {value}"));
    hub.add_reader("gate-1", &public(Role::Reader, READER_1), NOW)
        .unwrap();
    assert!(hub.open_account(&account(0)).unwrap());
    assert!(!hub.open_account(&account(0)).unwrap(), "same terms: no-op");
    assert!(
        hub.open_account(&account(5)).is_err(),
        "other terms refused"
    );

    // Enrolment.
    assert_eq!(renew(hub, PHONE_1, 1), Err(Refusal::NotEnrolled));
    let c1 = code(hub, 3600);
    let wrong = if c1.starts_with('A') { "B" } else { "A" }.to_owned() + &c1[1..];
    assert_eq!(enrol(hub, PHONE_1, &wrong, 2), Err(Refusal::CodeNotValid));
    assert_eq!(
        enrol(hub, PHONE_1, &c1, 3),
        Ok(PhoneAnswer::Enrolled { currency: 978 })
    );
    assert!(
        enrol(hub, PHONE_1, &c1, 4).is_ok(),
        "the same phone again: its answer was lost"
    );
    assert_eq!(enrol(hub, PHONE_2, &c1, 5), Err(Refusal::CodeNotValid));
    let expired = code(hub, 10);
    assert_eq!(
        enrol(hub, PHONE_2, &expired, 11),
        Err(Refusal::CodeNotValid)
    );

    // No money, no allowance; a top-up is idempotent on its reference.
    let refused = renew(hub, PHONE_1, 20).unwrap_err();
    assert!(matches!(refused, Refusal::NoAllowance { headroom: 0, .. }));
    let credit = |hub: &mut Hub, amount, reference: &str| {
        hub.credit_account(ACCOUNT, EntryKind::TopUp, amount, reference, "", NOW)
    };
    assert!(credit(hub, 1_500, "p1").unwrap().added);
    assert!(!credit(hub, 1_500, "p1").unwrap().added);
    assert!(credit(hub, 1_400, "p1").is_err());

    // Renewals share the money.
    let first = renew(hub, PHONE_1, 30).unwrap();
    note("phone 1 limit", first.terms.offline_limit.to_string());
    assert_eq!(
        (first.terms.offline_limit, first.terms.per_payment_cap),
        (1_000, 300)
    );
    assert_eq!(
        renew(hub, PHONE_1, 40).unwrap(),
        first,
        "a retry gets it again"
    );
    let c2 = code(hub, 3600);
    enrol(hub, PHONE_2, &c2, 50).unwrap();
    let second = renew(hub, PHONE_2, 50).unwrap();
    note("phone 2 limit", second.terms.offline_limit.to_string());
    assert_eq!(
        second.terms.offline_limit, 500,
        "1,500 less phone 1's 1,000"
    );
    assert!(
        matches!(renew(hub, PHONE_2, 200), Err(Refusal::NoAllowance { .. })),
        "nothing more to give"
    );
    let c3 = code(hub, 3600);
    enrol(hub, PHONE_3, &c3, 200).unwrap();
    let Err(Refusal::NoAllowance { frees_at, .. }) = renew(hub, PHONE_3, 210) else {
        panic!("nothing is left for a third phone")
    };
    assert_eq!(
        frees_at,
        Some(first.terms.valid_until() + SETTLE_SECS),
        "the first credential settles first"
    );

    // Payments clear against the account; a void gives back.
    let t1 = pay(&first, PHONE_1, 300, 1, 0);
    let t2 = pay(&first, PHONE_1, 200, 2, 300);
    let (batch, last) = seal(
        "gate-1",
        READER_1,
        1,
        GENESIS_HASH,
        &[
            (RecordKind::Charge, 300, &t1),
            (RecordKind::Charge, 200, &t2),
        ],
    );
    receive(hub, &batch, 300).unwrap();
    let balance =
        |hub: &mut Hub, at: u64| hub.account_view(ACCOUNT, 0, at).unwrap().unwrap().balance;
    assert_eq!(balance(hub, NOW + 300), 1_000, "both charges debited");
    let (batch, last) = seal("gate-1", READER_1, 3, last, &[(RecordKind::Void, 200, &t2)]);
    receive(hub, &batch, 310).unwrap();
    assert_eq!(balance(hub, NOW + 310), 1_200, "the void gives back");
    let view = hub.account_view(ACCOUNT, 0, NOW + 320).unwrap().unwrap();
    assert_eq!(
        (view.balance, view.exposure, view.available),
        (1_200, 1_200, 0)
    );
    note(
        "after payments",
        format!("{} {}", view.balance, view.exposure),
    );

    // A top-up, and a renewal takes what it freed.
    credit(hub, 800, "p2").unwrap();
    let third = renew(hub, PHONE_1, 400).unwrap();
    assert_eq!(third.terms.offline_limit, 800);
    let s = statement(hub, PHONE_1, 410);
    assert_eq!(
        (s.balance, s.exposure, s.state),
        (2_000, 2_000, AccountState::Open)
    );
    let kinds: Vec<(EntryKind, i64)> = s.entries.iter().map(|e| (e.kind, e.amount)).collect();
    assert_eq!(
        kinds,
        [
            (EntryKind::TopUp, 800),
            (EntryKind::Void, 200),
            (EntryKind::Charge, -200),
            (EntryKind::Charge, -300),
            (EntryKind::TopUp, 1_500),
        ]
    );
    assert!(s.entries[2].source == "gate-1" && s.entries[2].seq == 2);
    note("statement", format!("{kinds:?}"));

    // A clone of phone 2 spends its 500 seven times over at gate-1: the
    // account goes into debt, is suspended, and both phones are denied.
    let clone: Vec<Vec<u8>> = (1..=7u32)
        .map(|i| pay(&second, PHONE_2, 300, i, 0))
        .collect();
    let items: Vec<(RecordKind, u32, &[u8])> = clone
        .iter()
        .map(|t| (RecordKind::Charge, 300, t.as_slice()))
        .collect();
    let (batch, _) = seal("gate-1", READER_1, 4, last, &items);
    let report = receive(hub, &batch, 500).unwrap().report;
    assert_eq!(
        balance(hub, NOW + 500),
        2_000 - 2_100,
        "every charge debited"
    );
    assert_eq!(report.accounts_suspended, [ACCOUNT]);
    note("clone", format!("{:?}", report.flagged));
    assert!(denied(hub, PHONE_1) && denied(hub, PHONE_2));
    let s = statement(hub, PHONE_2, 510);
    assert_eq!((s.balance, s.state), (-100, AccountState::Suspended));
    assert!(matches!(
        renew(hub, PHONE_1, 520),
        Err(Refusal::Suspended(_))
    ));

    // Reopening waits for the debt to be paid.
    let reopen = Change {
        state: AccountState::Open,
        reason: "debt paid",
        by: "ops",
    };
    assert!(hub.change_account(ACCOUNT, reopen, NOW + 600).is_err());
    credit(hub, 3_000, "p3").unwrap();
    let allowed = hub.change_account(ACCOUNT, reopen, NOW + 600).unwrap();
    assert_eq!(allowed.len(), 3);
    assert!(!denied(hub, PHONE_1) && !denied(hub, PHONE_2));
    // A phone the operator denies gets no credential, its account open.
    hub.set_deny(
        DenyAction::Deny,
        wallet_of(PHONE_1),
        DenyReason::LostOrStolen,
        "reported lost",
        NOW + 650,
    )
    .unwrap();
    assert_eq!(renew(hub, PHONE_1, 660), Err(Refusal::WalletDenied));
    let view = hub.account_view(ACCOUNT, 0, NOW + 700).unwrap().unwrap();
    note(
        "end",
        format!("{} {} {}", view.balance, view.exposure, view.available),
    );
    trace
}

#[test]
fn accounts_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    account_scenario(&mut sqlite_hub(dir.path()));
}

#[test]
fn accounts_on_postgres_give_the_sqlite_trace() {
    let Some(server) = PgServer::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut hub = postgres_hub(&dir.path().join("pg"), &server.url("postgres"));
    let on_postgres = account_scenario(&mut hub);
    let on_sqlite = account_scenario(&mut sqlite_hub(&dir.path().join("sqlite")));
    assert_eq!(on_postgres, on_sqlite);
}

/// Two phones of one account renew at the same instant, round after
/// round (each after a top-up of one phone's worth), each through a
/// connection of its own: the grants together never exceed the account's
/// money.
fn renewals_race(mut hubs: [Hub; 2]) {
    {
        let hub = &mut hubs[0];
        hub.open_account(&account(250)).unwrap();
        hub.credit_account(ACCOUNT, EntryKind::TopUp, 1_250, "p1", "", NOW)
            .unwrap();
        for seed in [PHONE_1, PHONE_2] {
            let code = code(hub, 3600);
            enrol(hub, seed, &code, 1).unwrap();
        }
    }
    let [a, b] = hubs;
    let barrier = Arc::new(Barrier::new(2));
    let mut at = 100;
    let mut pair = (a, b);
    let mut held: [Option<Credential>; 2] = [None, None];
    for round in 0..6 {
        // After the first round, 1,000 more each round: one phone's worth.
        if round > 0 {
            pair.1
                .credit_account(
                    ACCOUNT,
                    EntryKind::TopUp,
                    1_000,
                    &format!("round-{round}"),
                    "",
                    NOW + at,
                )
                .unwrap();
        }
        let run = |mut hub: Hub, seed: u8, barrier: Arc<Barrier>| {
            std::thread::spawn(move || {
                barrier.wait();
                let got = renew(&mut hub, seed, at);
                (hub, got)
            })
        };
        let one = run(pair.0, PHONE_1, Arc::clone(&barrier));
        let two = run(pair.1, PHONE_2, Arc::clone(&barrier));
        let (a, got_a) = one.join().unwrap();
        let (mut b, got_b) = two.join().unwrap();
        // What each phone got that it did not hold already.
        let mut granted = 0u64;
        for (held, got) in held.iter_mut().zip([&got_a, &got_b]) {
            if let Ok(c) = got
                && held.as_ref() != Some(c)
            {
                granted += u64::from(c.terms.offline_limit);
                *held = Some(*c);
            }
        }
        let view = b.account_view(ACCOUNT, 0, NOW + at).unwrap().unwrap();
        assert!(
            i128::from(view.exposure) <= i128::from(view.balance) + 250,
            "round {round}: exposure {} over balance {} + 250 (granted {granted})",
            view.exposure,
            view.balance
        );
        let expected = if round == 0 { 1_500 } else { 1_000 };
        assert_eq!(
            granted, expected,
            "round {round}: the phones share what is there: {got_a:?} {got_b:?}"
        );
        at += 120;
        pair = (a, b);
    }
}

#[test]
fn two_phones_renewing_at_once_on_sqlite_share_the_money() {
    let dir = tempfile::tempdir().unwrap();
    drop(sqlite_hub(dir.path()));
    renewals_race([
        Hub::open(dir.path()).unwrap(),
        Hub::open(dir.path()).unwrap(),
    ]);
}

#[test]
fn two_phones_renewing_at_once_on_postgres_share_the_money() {
    let Some(server) = PgServer::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let url = server.url("postgres");
    drop(postgres_hub(dir.path(), &url));
    let open = || open_database(dir.path(), Some(&url), NOW).unwrap();
    renewals_race([open(), open()]);
}

/// One step of the property test.
#[derive(Debug, Clone)]
enum Step {
    TopUp(i64),
    Renew(usize),
    Pay(usize, u32),
    Sync,
    Wait(u64),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (1i64..2_000).prop_map(Step::TopUp),
        (0usize..2).prop_map(Step::Renew),
        ((0usize..2), (1u32..400)).prop_map(|(p, a)| Step::Pay(p, a)),
        Just(Step::Sync),
        (60u64..40 * 3600).prop_map(Step::Wait),
    ]
}

/// An honest phone: its credential, counter and running total.
#[derive(Default)]
struct Phone {
    credential: Option<Credential>,
    counter: u32,
    total: u32,
}

impl Phone {
    /// Renews phone `seed`: a new credential starts a fresh running total.
    fn renew(&mut self, hub: &mut Hub, seed: u8, at: u64) -> Result<(), Refusal> {
        let c = renew(hub, seed, at)?;
        if Some(c) != self.credential {
            self.credential = Some(c);
            self.total = 0;
        }
        Ok(())
    }

    /// A token for `amount` if its credential allows it at `at` (an honest
    /// phone signs nothing a reader would decline).
    fn pay(&mut self, seed: u8, amount: u32, at: u64) -> Option<Vec<u8>> {
        let c = self.credential?;
        let t = &c.terms;
        let valid = NOW + at < t.valid_until();
        if !(valid && amount <= t.per_payment_cap && self.total + amount <= t.offline_limit) {
            return None;
        }
        self.counter += 1;
        let token = pay(&c, seed, amount, self.counter, self.total);
        self.total += amount;
        Some(token)
    }
}

/// Gate-1, the account with `credit_line`, and phones 1 and 2 enrolled in
/// it: the start of both property tests.
fn two_enrolled_phones(hub: &mut Hub, credit_line: u64) -> [u8; 2] {
    hub.add_reader("gate-1", &public(Role::Reader, READER_1), NOW)
        .unwrap();
    hub.open_account(&account(credit_line)).unwrap();
    let seeds = [PHONE_1, PHONE_2];
    for seed in seeds {
        let code = code(hub, 3600);
        enrol(hub, seed, &code, 1).unwrap();
    }
    seeds
}

/// The operator's `n`th money movement (a top-up or an adjustment).
fn operator_entry(hub: &mut Hub, kind: EntryKind, amount: i64, n: u32, at: u64) {
    hub.credit_account(ACCOUNT, kind, amount, &format!("t{n}"), "", NOW + at)
        .unwrap();
}

/// Runs `steps` on a hub: honest phones pay what their credential allows,
/// readers sync before the clock moves on (within the settle window), and
/// after every step what the live credentials could still spend stays
/// within balance plus credit line; at the end, nothing is in debt.
fn keeps_the_rule(hub: &mut Hub, credit_line: u64, steps: &[Step]) {
    let seeds = two_enrolled_phones(hub, credit_line);
    let mut phones = [Phone::default(), Phone::default()];
    let mut at = 10;
    let mut pending: Vec<(u32, Vec<u8>)> = Vec::new();
    let mut chain = (1u64, GENESIS_HASH);
    let mut top_ups = 0;
    let mut sync = |hub: &mut Hub, pending: &mut Vec<(u32, Vec<u8>)>, at: u64| {
        if pending.is_empty() {
            return;
        }
        let items: Vec<(RecordKind, u32, &[u8])> = pending
            .iter()
            .map(|(a, t)| (RecordKind::Charge, *a, t.as_slice()))
            .collect();
        let (batch, last) = seal("gate-1", READER_1, chain.0, chain.1, &items);
        let report = receive(hub, &batch, at).unwrap().report;
        assert!(
            report.accounts_suspended.is_empty(),
            "honest riders in debt"
        );
        assert!(report.flagged.is_empty(), "honest riders flagged");
        chain = (chain.0 + pending.len() as u64, last);
        pending.clear();
    };
    for step in steps {
        match *step {
            Step::TopUp(amount) => {
                top_ups += 1;
                operator_entry(hub, EntryKind::TopUp, amount, top_ups, at);
            }
            Step::Renew(p) => match phones[p].renew(hub, seeds[p], at) {
                Ok(()) | Err(Refusal::NoAllowance { .. }) => {}
                Err(other) => panic!("renewal refused: {other:?}"),
            },
            Step::Pay(p, amount) => {
                if let Some(token) = phones[p].pay(seeds[p], amount, at) {
                    pending.push((amount, token));
                }
            }
            Step::Sync => sync(hub, &mut pending, at),
            Step::Wait(secs) => {
                sync(hub, &mut pending, at);
                at += secs;
            }
        }
        let view = hub.account_view(ACCOUNT, 0, NOW + at).unwrap().unwrap();
        assert!(
            i128::from(view.exposure) <= i128::from(view.balance) + i128::from(credit_line),
            "after {step:?}: exposure {} over balance {} + credit line {credit_line}",
            view.exposure,
            view.balance
        );
    }
    sync(hub, &mut pending, at);
    let view = hub.account_view(ACCOUNT, 0, NOW + at).unwrap().unwrap();
    assert!(view.balance >= -(credit_line as i64));
    assert_eq!(view.account.state, AccountState::Open);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn renewals_never_grant_more_than_balance_plus_credit_line_on_sqlite(
        credit_line in prop_oneof![Just(0u64), 1u64..1_500],
        steps in proptest::collection::vec(step(), 1..40),
    ) {
        let dir = tempfile::tempdir().unwrap();
        keeps_the_rule(&mut sqlite_hub(dir.path()), credit_line, &steps);
    }
}

/// Six cases of a property test on PostgreSQL, each on a fresh database
/// of a real server (a server per case would cost more than the case):
/// `check` runs on a hub with a credit line and steps drawn from `steps`.
fn on_postgres<S: Strategy>(name: &str, steps: S, check: impl Fn(&mut Hub, u64, &S::Value)) {
    let Some(server) = PgServer::start() else {
        return;
    };
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 6,
        ..ProptestConfig::default()
    });
    let round = AtomicU64::new(0);
    runner
        .run(
            &(prop_oneof![Just(0u64), 1u64..1_500], steps),
            |(credit_line, steps)| {
                let db = format!("{name}{}", round.fetch_add(1, Ordering::Relaxed));
                server.create_database(&db);
                let dir = tempfile::tempdir().unwrap();
                check(
                    &mut postgres_hub(dir.path(), &server.url(&db)),
                    credit_line,
                    &steps,
                );
                Ok(())
            },
        )
        .unwrap();
}

#[test]
fn renewals_never_grant_more_than_balance_plus_credit_line_on_postgres() {
    on_postgres(
        "prop",
        proptest::collection::vec(step(), 1..40),
        |hub, credit_line, steps| keeps_the_rule(hub, credit_line, steps),
    );
}

/// One step of the debt property test: honest steps, and a clone's, a
/// void's and a reader's that syncs late.
#[derive(Debug, Clone)]
enum Rough {
    Honest(Step),
    /// A clone of phone `.0` pays `.1`, claiming a fresh running total.
    Clone(usize, u32),
    /// The reader voids phone `.0`'s last charge.
    Void(usize),
    /// The clock moves on with the reader's records still on it.
    Hold(u64),
    /// The operator takes `.0` off the account.
    Adjust(i64),
}

fn rough() -> impl Strategy<Value = Rough> {
    prop_oneof![
        4 => step().prop_map(Rough::Honest),
        2 => ((0usize..2), (1u32..300)).prop_map(|(p, a)| Rough::Clone(p, a)),
        1 => (0usize..2).prop_map(Rough::Void),
        1 => (3_600u64..60 * 3600).prop_map(Rough::Hold),
        1 => (1i64..800).prop_map(Rough::Adjust),
    ]
}

/// Runs `steps` and checks, after every one, that the balance is what
/// was topped up less what cleared (charges less voids), that it is the
/// sum of the statement's entries, and that an account below its credit
/// line is suspended: charges debit accounts without rows of their own
/// and only some batches look for debt (docs/accounts.md §4), so this is
/// what keeps that honest.
fn catches_every_debt(hub: &mut Hub, credit_line: u64, steps: &[Rough]) {
    let seeds = two_enrolled_phones(hub, credit_line);
    let mut phones = [Phone::default(), Phone::default()];
    // Each phone's last charge on the reader, not voided yet.
    let mut last: [Option<(u32, Vec<u8>)>; 2] = [None, None];
    let mut clone_counter = 10_000;
    let mut at = 10;
    let mut pending: Vec<(RecordKind, u32, Vec<u8>)> = Vec::new();
    let mut chain = (1u64, GENESIS_HASH);
    let mut top_ups = 0;
    let mut expected = 0i64;
    let mut charged: std::collections::HashSet<Vec<u8>> = Default::default();
    let mut sync =
        |hub: &mut Hub, pending: &mut Vec<(RecordKind, u32, Vec<u8>)>, at, expected: &mut i64| {
            if pending.is_empty() {
                return;
            }
            let items: Vec<(RecordKind, u32, &[u8])> = pending
                .iter()
                .map(|(k, a, t)| (*k, *a, t.as_slice()))
                .collect();
            let (batch, last) = seal("gate-1", READER_1, chain.0, chain.1, &items);
            receive(hub, &batch, at).unwrap();
            for (kind, amount, token) in pending.iter() {
                match kind {
                    RecordKind::Charge if charged.insert(token.clone()) => {
                        *expected -= i64::from(*amount)
                    }
                    RecordKind::Charge => {}
                    RecordKind::Void => *expected += i64::from(*amount),
                }
            }
            chain = (chain.0 + pending.len() as u64, last);
            pending.clear();
        };
    for step in steps {
        match step {
            Rough::Honest(Step::TopUp(amount)) => {
                top_ups += 1;
                operator_entry(hub, EntryKind::TopUp, *amount, top_ups, at);
                expected += amount;
            }
            // Clones get phones denied and accounts suspended: any answer.
            Rough::Honest(Step::Renew(p)) => drop(phones[*p].renew(hub, seeds[*p], at)),
            Rough::Honest(Step::Pay(p, amount)) => {
                if let Some(token) = phones[*p].pay(seeds[*p], *amount, at) {
                    last[*p] = Some((*amount, token.clone()));
                    pending.push((RecordKind::Charge, *amount, token));
                }
            }
            Rough::Clone(p, amount) => {
                let Some(c) = phones[*p].credential else {
                    continue;
                };
                clone_counter += 1;
                let amount = (*amount).min(c.terms.per_payment_cap);
                let token = pay(&c, seeds[*p], amount, clone_counter, 0);
                pending.push((RecordKind::Charge, amount, token));
            }
            Rough::Void(p) => {
                if let Some((amount, token)) = last[*p].take() {
                    pending.push((RecordKind::Void, amount, token));
                }
            }
            Rough::Honest(Step::Sync) => sync(hub, &mut pending, at, &mut expected),
            Rough::Honest(Step::Wait(secs)) => {
                sync(hub, &mut pending, at, &mut expected);
                at += secs;
            }
            Rough::Hold(secs) => at += secs,
            Rough::Adjust(amount) => {
                top_ups += 1;
                operator_entry(hub, EntryKind::Adjustment, -amount, top_ups, at);
                expected -= amount;
            }
        }
        let view = hub.account_view(ACCOUNT, 0, NOW + at).unwrap().unwrap();
        assert_eq!(view.balance, expected, "after {step:?}: the balance");
        let mut sum = 0;
        let mut before = 0;
        loop {
            let page = hub
                .account_view(ACCOUNT, before, NOW + at)
                .unwrap()
                .unwrap();
            sum += page.entries.iter().map(|e| e.amount).sum::<i64>();
            assert!(
                page.entries.windows(2).all(|w| w[0].id > w[1].id),
                "newest first"
            );
            match page.next_before {
                0 => break,
                next => before = next,
            }
        }
        assert_eq!(sum, view.balance, "after {step:?}: the statement adds up");
        if view.balance + (credit_line as i64) < 0 {
            assert_eq!(
                view.account.state,
                AccountState::Suspended,
                "after {step:?}: in debt ({}) but not suspended",
                view.balance
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn every_debt_is_caught_and_every_statement_adds_up_on_sqlite(
        credit_line in prop_oneof![Just(0u64), 1u64..1_500],
        steps in proptest::collection::vec(rough(), 1..60),
    ) {
        let dir = tempfile::tempdir().unwrap();
        catches_every_debt(&mut sqlite_hub(dir.path()), credit_line, &steps);
    }
}

#[test]
fn every_debt_is_caught_and_every_statement_adds_up_on_postgres() {
    on_postgres(
        "debt",
        proptest::collection::vec(rough(), 1..60),
        |hub, credit_line, steps| catches_every_debt(hub, credit_line, steps),
    );
}

/// Registers gate-1 and gate-2.
fn two_gates(hub: &mut Hub) {
    hub.add_reader("gate-1", &public(Role::Reader, READER_1), NOW)
        .unwrap();
    hub.add_reader("gate-2", &public(Role::Reader, READER_2), NOW)
        .unwrap();
}

/// Opens [`ACCOUNT`] (no credit line) with `balance` paid in, and enrols
/// the phone of key `seed` in it.
fn funded(hub: &mut Hub, balance: i64, seed: u8) {
    hub.open_account(&account(0)).unwrap();
    if balance > 0 {
        hub.credit_account(ACCOUNT, EntryKind::TopUp, balance, "p1", "", NOW)
            .unwrap();
    }
    let c = code(hub, 3600);
    enrol(hub, seed, &c, 1).unwrap();
}

#[test]
fn issue18_clearing_does_not_let_back_a_phone_of_an_account_in_debt() {
    let dir = tempfile::tempdir().unwrap();
    let hub = &mut sqlite_hub(dir.path());
    two_gates(hub);
    funded(hub, 500, PHONE_2);
    let second = renew(hub, PHONE_2, 2).unwrap();
    // A clone claims a running total of 0 seven times: over the limit, in
    // debt, denied.
    let clone: Vec<Vec<u8>> = (1..=7u32)
        .map(|i| pay(&second, PHONE_2, 300, i, 0))
        .collect();
    let items: Vec<(RecordKind, u32, &[u8])> = clone
        .iter()
        .map(|t| (RecordKind::Charge, 300, t.as_slice()))
        .collect();
    let (batch, _) = seal("gate-1", READER_1, 1, GENESIS_HASH, &items);
    let report = receive(hub, &batch, 500).unwrap().report;
    assert_eq!(report.accounts_suspended, [ACCOUNT]);
    assert!(denied(hub, PHONE_2));
    // A counter conflict later puts the credential under review, which
    // would lift a clearing rule's wallet denial: not the account's.
    let other = pay(&second, PHONE_2, 100, 1, 0);
    let (batch, _) = seal(
        "gate-2",
        READER_2,
        1,
        GENESIS_HASH,
        &[(RecordKind::Charge, 100, &other)],
    );
    let report = receive(hub, &batch, 600).unwrap().report;
    assert!(report.lifted.is_empty(), "{report:?}");
    assert!(denied(hub, PHONE_2));
}

/// A reader holds a charge past its credential's settle window; the
/// allowance it freed was renewed and spent meanwhile, so the two
/// together take the account into debt, whichever reader syncs first:
/// suspended, with no phone denied (no credential went past its limit:
/// nobody cheated).
fn a_late_reader_leaves_debt(hub: &mut Hub, late_first: bool) {
    two_gates(hub);
    funded(hub, 1_000, PHONE_1);
    let first = renew(hub, PHONE_1, 2).unwrap();
    let late = pay(&first, PHONE_1, 300, 1, 0);
    let settled = first.terms.valid_until() + SETTLE_SECS + 10 - NOW;
    let second = renew(hub, PHONE_1, settled).unwrap();
    assert_eq!(second.terms.offline_limit, 1_000, "the first one settled");
    let spent: Vec<Vec<u8>> = (0..4u32)
        .map(|i| pay(&second, PHONE_1, 250, 2 + i, 250 * i))
        .collect();
    let items: Vec<(RecordKind, u32, &[u8])> = spent
        .iter()
        .map(|t| (RecordKind::Charge, 250, t.as_slice()))
        .collect();
    let (honest, _) = seal("gate-2", READER_2, 1, GENESIS_HASH, &items);
    let (held, _) = seal(
        "gate-1",
        READER_1,
        1,
        GENESIS_HASH,
        &[(RecordKind::Charge, 300, &late)],
    );
    let (one, other) = match late_first {
        true => (held, honest),
        false => (honest, held),
    };
    let report = receive(hub, &one, settled + 10).unwrap().report;
    assert!(report.accounts_suspended.is_empty(), "700 or 0 left");
    let report = receive(hub, &other, settled + 20).unwrap().report;
    assert_eq!(report.accounts_suspended, [ACCOUNT]);
    let view = hub
        .account_view(ACCOUNT, 0, NOW + settled + 30)
        .unwrap()
        .unwrap();
    assert_eq!(
        (view.balance, view.account.state),
        (-300, AccountState::Suspended)
    );
    assert!(!denied(hub, PHONE_1), "a late reader is not a clone");
}

#[test]
fn issue18_a_charge_synced_after_its_credential_settled_suspends_the_account_in_debt() {
    for late_first in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        a_late_reader_leaves_debt(&mut sqlite_hub(dir.path()), late_first);
    }
    let Some(server) = PgServer::start() else {
        return;
    };
    for late_first in [false, true] {
        let db = format!("late{late_first}");
        server.create_database(&db);
        let dir = tempfile::tempdir().unwrap();
        a_late_reader_leaves_debt(&mut postgres_hub(dir.path(), &server.url(&db)), late_first);
    }
}

/// A clone overspends one phone's credential while the account still
/// holds enough: no debt yet, but the other phone can now spend more
/// than is left. When it does, honestly, the account is in debt: the
/// clearing catches it (the credential was watched) and denies both
/// phones (the clone's mark is on the account).
#[test]
fn issue18_honest_spending_after_a_clone_left_the_account_short_is_caught() {
    let dir = tempfile::tempdir().unwrap();
    let hub = &mut sqlite_hub(dir.path());
    two_gates(hub);
    funded(hub, 2_000, PHONE_1);
    let c2 = code(hub, 3600);
    enrol(hub, PHONE_2, &c2, 2).unwrap();
    let one = renew(hub, PHONE_1, 3).unwrap();
    let two = renew(hub, PHONE_2, 4).unwrap();
    assert_eq!(
        (one.terms.offline_limit, two.terms.offline_limit),
        (1_000, 1_000)
    );
    let cloned: Vec<Vec<u8>> = (1..=5u32).map(|i| pay(&one, PHONE_1, 260, i, 0)).collect();
    let items: Vec<(RecordKind, u32, &[u8])> = cloned
        .iter()
        .map(|t| (RecordKind::Charge, 260, t.as_slice()))
        .collect();
    let (batch, _) = seal("gate-1", READER_1, 1, GENESIS_HASH, &items);
    let report = receive(hub, &batch, 100).unwrap().report;
    assert!(
        report.accounts_suspended.is_empty(),
        "700 left: no debt yet"
    );
    let honest: Vec<Vec<u8>> = (0..4u32)
        .map(|i| pay(&two, PHONE_2, 250, 1 + i, 250 * i))
        .collect();
    let items: Vec<(RecordKind, u32, &[u8])> = honest
        .iter()
        .map(|t| (RecordKind::Charge, 250, t.as_slice()))
        .collect();
    let (batch, _) = seal("gate-2", READER_2, 1, GENESIS_HASH, &items);
    let report = receive(hub, &batch, 200).unwrap().report;
    assert_eq!(report.accounts_suspended, [ACCOUNT], "{report:?}");
    let view = hub.account_view(ACCOUNT, 0, NOW + 210).unwrap().unwrap();
    assert_eq!(view.balance, 2_000 - 1_300 - 1_000);
    assert!(denied(hub, PHONE_1) && denied(hub, PHONE_2));
}

#[test]
fn issue18_an_adjustment_into_debt_suspends_the_account() {
    let dir = tempfile::tempdir().unwrap();
    let hub = &mut sqlite_hub(dir.path());
    funded(hub, 100, PHONE_1);
    let credited = hub
        .credit_account(ACCOUNT, EntryKind::Adjustment, -40, "a1", "fee", NOW + 5)
        .unwrap();
    assert!(!credited.suspended, "60 left");
    let credited = hub
        .credit_account(
            ACCOUNT,
            EntryKind::Adjustment,
            -90,
            "a2",
            "chargeback",
            NOW + 6,
        )
        .unwrap();
    assert!(
        credited.suspended && credited.balance == -30,
        "{credited:?}"
    );
    let view = hub.account_view(ACCOUNT, 0, NOW + 7).unwrap().unwrap();
    assert_eq!(view.account.state, AccountState::Suspended);
    assert!(
        !denied(hub, PHONE_1),
        "an operator's adjustment is not a clone"
    );
}

/// A PostgreSQL hub database of schema 6 kept a row per charge in
/// `account_entries`; upgraded, the charge is its payment, with the
/// entry's id, and the balance and the statement are what they were.
#[test]
fn schema_6_postgres_hub_carries_its_charge_entries_over_to_their_payments() {
    let Some(server) = PgServer::start() else {
        return;
    };
    server.create_database("six");
    let url = server.url("six");
    {
        let mut client = postgres::Client::connect(&url, NoTls).unwrap();
        let mut tx = client.transaction().unwrap();
        tx.batch_execute(
            "CREATE TABLE sonotap_schema (version BIGINT PRIMARY KEY,
                                          applied_at TIMESTAMPTZ NOT NULL DEFAULT now())",
        )
        .unwrap();
        for (i, sql) in MIGRATIONS[..6].iter().enumerate() {
            tx.batch_execute(sql).unwrap();
            tx.execute(
                "INSERT INTO sonotap_schema (version) VALUES ($1)",
                &[&(i as i64 + 1)],
            )
            .unwrap();
        }
        let credential = [7u8; 32].as_slice();
        let token_hash = [0x11u8; 32].as_slice();
        let zero = [0u8; 32].as_slice();
        tx.execute(
            "INSERT INTO accounts VALUES ('acct-1', '', 978, 0, 1000, 300, 24, 'transit', 'open',
                                          '', 1, 1)",
            &[],
        )
        .unwrap();
        tx.execute(
            "INSERT INTO account_wallets VALUES ($1, $2, 'acct-1', 1)",
            &[&[1u8; 8].as_slice(), &zero],
        )
        .unwrap();
        tx.execute(
            "INSERT INTO account_credentials VALUES ($1, 'acct-1', $2, 1000, 100000, 400000, 2,
                                                     '\\x00')",
            &[&credential, &[1u8; 8].as_slice()],
        )
        .unwrap();
        for (seq, kind, amount) in [(1i64, "charge", 250i64), (2, "void", 50)] {
            tx.execute(
                "INSERT INTO records (reader_id, seq, at, kind, amount, token, token_hash,
                                      prev_hash, hash, signature, received_at)
                 VALUES ('gate-1', $1, $2, $3, $4, '\\x00', $5, $6, $7, $8, $9)",
                &[
                    &seq,
                    &(8 + 2 * seq),
                    &kind,
                    &amount,
                    &token_hash,
                    &zero,
                    &[seq as u8; 32].as_slice(),
                    &[0u8; 64].as_slice(),
                    &(9 + 2 * seq),
                ],
            )
            .unwrap();
        }
        tx.execute(
            "INSERT INTO payments (token_hash, wallet_id, counter, credential, total_before,
                                   authorised, charged, reader_id, seq, voids)
             VALUES ($1, $2, 1, $3, 0, 250, 200, 'gate-1', 1, 1)",
            &[&token_hash, &[1u8; 8].as_slice(), &credential],
        )
        .unwrap();
        tx.execute(
            "INSERT INTO credential_spend VALUES ($1, 200)",
            &[&credential],
        )
        .unwrap();
        tx.batch_execute(
            "INSERT INTO account_entries (entry_id, account_id, kind, amount, at, recorded_at,
                                          source, seq, note)
             OVERRIDING SYSTEM VALUE
             VALUES (1, 'acct-1', 'top_up', 1000, 1, 1, 'p1', 0, ''),
                    (2, 'acct-1', 'charge', -250, 10, 11, 'gate-1', 1, ''),
                    (3, 'acct-1', 'void', 50, 12, 13, 'gate-1', 2, '')",
        )
        .unwrap();
        tx.commit().unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let hub = &mut postgres_hub(dir.path(), &url);
    let mut client = postgres::Client::connect(&url, NoTls).unwrap();
    let watched: i64 = client
        .query_one("SELECT count(*) FROM watched_credentials", &[])
        .unwrap()
        .try_get(0)
        .unwrap();
    assert_eq!(
        watched, 1,
        "schema 6 never looked: watched until a first look"
    );
    let page = |hub: &mut Hub| {
        let view = hub.account_view("acct-1", 0, 20).unwrap().unwrap();
        let entries: Vec<(u64, EntryKind, i64, u64, String, u64)> = view
            .entries
            .iter()
            .map(|e| (e.id, e.kind, e.amount, e.at, e.source.clone(), e.seq))
            .collect();
        (view.balance, entries)
    };
    let (balance, entries) = page(hub);
    assert_eq!(balance, 800);
    assert_eq!(
        entries,
        [
            (3, EntryKind::Void, 50, 12, "gate-1".to_owned(), 2),
            (2, EntryKind::Charge, -250, 10, "gate-1".to_owned(), 1),
            (1, EntryKind::TopUp, 1000, 1, "p1".to_owned(), 0),
        ]
    );
    hub.credit_account("acct-1", EntryKind::TopUp, 5, "p2", "", 30)
        .unwrap();
    let (balance, entries) = page(hub);
    assert_eq!(
        (balance, entries[0].0),
        (805, 4),
        "ids go on after the old ones"
    );
}

#[test]
fn issue18_reopening_an_account_keeps_a_stolen_phone_denied() {
    let dir = tempfile::tempdir().unwrap();
    let hub = &mut sqlite_hub(dir.path());
    funded(hub, 0, PHONE_1);
    hub.set_deny(
        DenyAction::Deny,
        wallet_of(PHONE_1),
        DenyReason::LostOrStolen,
        "stolen",
        NOW + 10,
    )
    .unwrap();
    let change = |state| Change {
        state,
        reason: "review",
        by: "ops",
    };
    hub.change_account(ACCOUNT, change(AccountState::Suspended), NOW + 20)
        .unwrap();
    let allowed = hub
        .change_account(ACCOUNT, change(AccountState::Open), NOW + 30)
        .unwrap();
    assert!(allowed.is_empty());
    assert!(denied(hub, PHONE_1), "the stolen phone stays denied");
}

#[test]
fn issue18_after_a_small_top_up_the_hub_grants_what_is_left_and_the_phone_decides() {
    let dir = tempfile::tempdir().unwrap();
    let hub = &mut sqlite_hub(dir.path());
    funded(hub, 1_000, PHONE_1);
    let first = renew(hub, PHONE_1, 2).unwrap();
    assert_eq!(renew(hub, PHONE_1, 30), Ok(first), "a retry: the same one");
    hub.credit_account(ACCOUNT, EntryKind::TopUp, 10, "p2", "", NOW + 100)
        .unwrap();
    // The hub cannot see what the phone spent offline: it grants the 10
    // it has; the wallet keeps its current credential if that has more
    // left (crates/wallet, `install_renewed`).
    let small = renew(hub, PHONE_1, 200).unwrap();
    assert_eq!(small.terms.offline_limit, 10);
}

#[test]
fn issue18_an_adjustment_retried_adds_once_and_a_reference_is_one_kind() {
    let dir = tempfile::tempdir().unwrap();
    let hub = &mut sqlite_hub(dir.path());
    hub.open_account(&account(0)).unwrap();
    let adjust = |hub: &mut Hub, kind, amount, reference: &str| {
        hub.credit_account(ACCOUNT, kind, amount, reference, "", NOW)
    };
    assert!(adjust(hub, EntryKind::Adjustment, -5, "a1").unwrap().added);
    assert!(!adjust(hub, EntryKind::Adjustment, -5, "a1").unwrap().added);
    assert!(adjust(hub, EntryKind::TopUp, 100, "p1").unwrap().added);
    assert!(adjust(hub, EntryKind::Adjustment, 100, "p1").is_err());
    assert_eq!(
        hub.account_view(ACCOUNT, 0, NOW).unwrap().unwrap().balance,
        95
    );
}

#[test]
fn issue18_account_search_ignores_case_on_postgres_as_on_sqlite() {
    let Some(server) = PgServer::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut pg = postgres_hub(&dir.path().join("pg"), &server.url("postgres"));
    let mut sqlite = sqlite_hub(&dir.path().join("sqlite"));
    for hub in [&mut pg, &mut sqlite] {
        hub.open_account(&account(0)).unwrap();
        for (search, found) in [("RIDER", 1), ("Acct", 1), ("t-1", 1), ("t_1", 0), ("t%", 0)] {
            assert_eq!(hub.accounts(search, 10).unwrap().len(), found, "{search}");
        }
    }
}

#[test]
fn issue18_a_stranger_with_fresh_keys_is_answered_without_a_write() {
    let dir = tempfile::tempdir().unwrap();
    let hub = &mut sqlite_hub(dir.path());
    for _ in 0..3 {
        assert_eq!(renew(hub, PHONE_1, 5), Err(Refusal::NotEnrolled));
    }
    let db = rusqlite::Connection::open(dir.path().join("hub.db")).unwrap();
    let nonces: i64 = db
        .query_row("SELECT count(*) FROM wallet_nonces", [], |r| r.get(0))
        .unwrap();
    assert_eq!(nonces, 0);
}

#[test]
fn issue18_a_credential_suspended_for_review_is_not_handed_out_again() {
    let dir = tempfile::tempdir().unwrap();
    let hub = &mut sqlite_hub(dir.path());
    two_gates(hub);
    funded(hub, 1_000, PHONE_1);
    let first = renew(hub, PHONE_1, 2).unwrap();
    // One counter, two contents, at two gates: the credential is suspended.
    let one = pay(&first, PHONE_1, 100, 1, 0);
    let two = pay(&first, PHONE_1, 150, 1, 0);
    for (gate, key, token, amount) in [
        ("gate-1", READER_1, &one, 100),
        ("gate-2", READER_2, &two, 150),
    ] {
        let (batch, _) = seal(
            gate,
            key,
            1,
            GENESIS_HASH,
            &[(RecordKind::Charge, amount, token)],
        );
        receive(hub, &batch, 100).unwrap();
    }
    assert_eq!(hub.review(false).unwrap().suspensions.len(), 1);
    // All the money is reserved by that credential: nothing new, and not
    // the suspended one again.
    assert!(matches!(
        renew(hub, PHONE_1, 200),
        Err(Refusal::NoAllowance { .. })
    ));
}
