//! Power cuts: the reader, the wallet and the hub run with their files on
//! a disk that forgets every write not fsynced when the power goes
//! (`crates/powercut`, a FUSE filesystem), and the power is cut at every
//! counted operation (before it and after it: each write, fsync, rename,
//! create and unlink of each file) and at random moments. After each cut
//! the disk comes back as a real one might, and the checks are what the
//! operator and the rider rely on: no acknowledged record lost, no gate
//! opened without a record, no wallet counter used twice, no key lost or
//! torn, nothing the hub acknowledged forgotten, and every interrupted
//! command retried to a good state.
//!
//! Needs root and /dev/fuse; skipped elsewhere unless
//! `SONOTAP_REQUIRE_FUSE=1` (CI), which makes that a failure.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use sonotap_powercut::{Disk, Mounted, Trigger, When};
use sonotap_protocol::token::Token;

use crate::daemon::{Relay, RelayBoard};
use crate::util::{HubProcess, Scratch, reader_totals, records, sonotap, succeeded};

/// `disk` mounted at `at`, or `None` where FUSE cannot be used here.
fn mount(disk: Disk, at: &Path) -> Option<Mounted> {
    Mounted::mount_or_skip(disk, at)
}

/// How a command on the powered disk ended.
enum Ran {
    /// By itself (the power may have been cut after its last file
    /// operation: it then ended without needing the disk).
    Ended(Output),
    /// Killed by the cut (not yet reaped: it ends once the cut is released).
    Cut(Child),
}

/// Runs `sonotap ARGS` in `cwd` until it ends or the power is cut (by a
/// trigger, or at `due`), in which case it is killed at once, as the
/// machine under it stops.
fn run(m: &Mounted, cwd: &Path, args: &[&str], due: Option<Instant>) -> Ran {
    let mut child = sonotap()
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("sonotap runs");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if due.is_some_and(|due| Instant::now() >= due) {
            m.cut_now();
        }
        if m.is_cut() {
            let _ = child.kill();
            return Ran::Cut(child);
        }
        if matches!(child.try_wait(), Ok(Some(_))) {
            return Ran::Ended(child.wait_with_output().expect("output"));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("sonotap {args:?} hangs");
        }
        sleep(Duration::from_micros(300));
    }
}

/// Cuts the power (if a trigger has not already), releases what the
/// killed processes wait for, and returns the disk as found after the cut
/// and what each killed process had written to its stdout.
fn cut(m: Mounted, killed: Vec<Child>) -> (Disk, Vec<String>) {
    m.cut_now();
    m.release();
    let outputs = killed
        .into_iter()
        .map(|c| {
            String::from_utf8_lossy(&c.wait_with_output().expect("reaped").stdout).into_owned()
        })
        .collect();
    (m.cut().expect("unmounts"), outputs)
}

/// A deterministic stream of numbers for the random cuts (xorshift).
struct Dice(u64);

impl Dice {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

/// Runs `trial` once uncut (trial 0, which counts the workload's
/// operations and times it), then once for each of its [`cuts`]; `trial`
/// returns `None` where FUSE cannot mount (the test is then skipped).
fn every_cut(
    name: &str,
    random: u64,
    seed: u64,
    mut trial: impl FnMut(usize, CutAt) -> Option<(u64, Duration)>,
) {
    let never = CutAt::Op(Trigger {
        op: u64::MAX,
        when: When::Before,
    });
    let Some((ops, span)) = trial(0, never) else {
        return;
    };
    let all = cuts(ops, random, span, &mut Dice(seed));
    let started = Instant::now();
    // Counts drift a little from run to run: a trigger past this run's
    // last operation never fires, and the trial is cut after its end.
    let mut unfired = 0;
    for (n, at) in &all {
        let counted = trial(*n, *at).map(|(ops, _)| ops);
        if let (CutAt::Op(trigger), Some(ops)) = (at, counted)
            && ops <= trigger.op
        {
            unfired += 1;
        }
    }
    eprintln!(
        "{name}: {ops} operations, {} cuts in {:.1?} ({unfired} fell past the run's end)",
        all.len(),
        started.elapsed()
    );
    assert!(
        unfired * 20 <= all.len(),
        "{name}: {unfired} of {} cuts never fired",
        all.len()
    );
}

/// Where a trial's cut falls.
#[derive(Debug, Clone, Copy)]
enum CutAt {
    /// At a counted operation.
    Op(Trigger),
    /// This long after the workload started.
    After(Duration),
}

fn arm(m: &Mounted, at: CutAt) -> Option<Instant> {
    match at {
        CutAt::Op(trigger) => {
            m.arm(trigger);
            None
        }
        CutAt::After(delay) => Some(Instant::now() + delay),
    }
}

/// Every cut of a workload of `ops` counted operations, before and after
/// each, then `random` cuts at random operations and random moments
/// within `span`; numbered from 1 as the trials' labels say, and only the
/// one `SONOTAP_POWERCUT_ONLY` names when it is set (with
/// `SONOTAP_POWERCUT_TRACE`, to see what a failing cut fell on).
fn cuts(ops: u64, random: u64, span: Duration, dice: &mut Dice) -> Vec<(usize, CutAt)> {
    let mut all = Vec::new();
    for op in 0..ops {
        for when in [When::Before, When::After] {
            all.push(CutAt::Op(Trigger { op, when }));
        }
    }
    for i in 0..random {
        if i % 2 == 0 {
            let op = dice.below(ops);
            let when = if dice.below(2) == 0 {
                When::Before
            } else {
                When::After
            };
            all.push(CutAt::Op(Trigger { op, when }));
        } else {
            let micros = dice.below(span.as_micros() as u64);
            all.push(CutAt::After(Duration::from_micros(micros)));
        }
    }
    let numbered = all.into_iter().enumerate().map(|(i, at)| (i + 1, at));
    match std::env::var("SONOTAP_POWERCUT_ONLY") {
        Ok(only) => {
            let only: usize = only
                .parse()
                .expect("SONOTAP_POWERCUT_ONLY: a trial's number");
            numbered.filter(|(n, _)| *n == only).collect()
        }
        Err(_) => numbered.collect(),
    }
}

// ---------------------------------------------------------------------
// The reader and the wallet from the command line.

/// One command of the reader-and-wallet workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// `wallet pay`: token `n` leaves the phone (written outside the disk).
    Pay(u32),
    /// `reader accept` of token `n`.
    Accept(u32),
    /// `reader sync` to the hub.
    Sync,
    /// `wallet add-credential` of a second credential (a higher limit).
    AddCredential,
}

const STEPS: [Step; 9] = [
    Step::Pay(1),
    Step::Accept(1),
    Step::Pay(2),
    Step::Accept(2),
    Step::Sync,
    Step::AddCredential,
    Step::Pay(3),
    Step::Accept(3),
    Step::Sync,
];

/// The terms of the first credential every workload's wallet holds.
const TERMS: [&str; 6] = crate::util::PROVISION_TERMS;

/// The limit of the credential `AddCredential` installs.
const SECOND_LIMIT: u64 = 800;

/// What the rider and the operator were told before the cut.
#[derive(Debug, Default)]
struct Told {
    /// Counters of tokens that left the wallet.
    emitted: BTreeSet<u32>,
    /// Counters the reader said it accepted (and so recorded).
    accepted: BTreeSet<u32>,
    /// `add-credential` said it was done.
    credential_added: bool,
}

/// The fixed parts of the reader-and-wallet bench: a hub on an ordinary
/// disk, and the seed disk holding wallet `w` and reader `r`.
struct Site {
    s: Scratch,
    seed: Disk,
}

fn site() -> Site {
    let s = Scratch::new();
    s.ok(&["hub", "init", "--data", "hub"]);
    fs::create_dir(s.path("seed")).expect("mkdir");
    s.ok(&["wallet", "new", "--dir", "seed/w"]);
    s.hub_issue("hub", "seed/w", &TERMS, "cred");
    let second = SECOND_LIMIT.to_string();
    let terms = [
        "--limit",
        &second,
        "--per-payment",
        "300",
        "--valid-hours",
        "48",
    ];
    s.hub_issue("hub", "seed/w", &terms, "cred2");
    s.ok(&["wallet", "add-credential", "--dir", "seed/w", "cred"]);
    s.reader_init("seed/r", "gate-1", &[]);
    s.register_reader("seed/r", "gate-1");
    let seed = Disk::import(&s.path("seed")).expect("seed disk");
    Site { s, seed }
}

/// One trial's own hub and token directory, fresh from the site's.
struct Trial {
    dir: PathBuf,
    hub: HubProcess,
}

impl Site {
    fn trial(&self, n: usize) -> Trial {
        let dir = self.s.path(&format!("trial{n}"));
        fs::create_dir(&dir).expect("trial dir");
        crate::util::copy_dir(&self.s.path("hub"), &dir.join("hub"));
        let hub = HubProcess::serve(&self.s, &format!("trial{n}/hub"), "127.0.0.1:0", &[]);
        Trial { dir, hub }
    }
}

impl Trial {
    fn commands(&self) -> Vec<Command> {
        STEPS
            .iter()
            .map(|step| {
                let token = match step {
                    Step::Pay(n) | Step::Accept(n) => self.token(*n).display().to_string(),
                    _ => String::new(),
                };
                let cred = self.dir.parent().expect("scratch").join("cred2");
                let cred = cred.display().to_string();
                let args: Vec<&str> = match step {
                    Step::Pay(_) => vec![
                        "wallet", "pay", "--dir", "w", "--amount", "10", "--out", &token,
                    ],
                    Step::Accept(_) => vec!["reader", "accept", "--data", "r", &token],
                    Step::Sync => vec![
                        "reader",
                        "sync",
                        "--data",
                        "r",
                        "--hub",
                        &self.hub.url,
                        "--timeout",
                        "5s",
                    ],
                    Step::AddCredential => vec!["wallet", "add-credential", "--dir", "w", &cred],
                };
                // A tap retried after a cut that had recorded it is declined
                // as a replay: the rider was charged once.
                command(&args, &["\"reason\":\"replayed\""])
            })
            .collect()
    }

    /// Where token `n` is written when it leaves the phone.
    fn token(&self, n: u32) -> PathBuf {
        self.dir.join(format!("t{n}"))
    }

    /// What `step`'s output (complete or cut short) told the rider or the
    /// operator; a token file that exists has left the phone.
    fn note(&self, step: Step, stdout: &str, ended_ok: bool, told: &mut Told) {
        match step {
            Step::Pay(n) => {
                if let Ok(bytes) = fs::read(self.token(n))
                    && let Ok(token) = Token::decode(&bytes)
                {
                    told.emitted.insert(token.payment.counter);
                }
            }
            Step::Accept(_) => {
                for line in stdout.lines() {
                    if let Ok(v) = serde_json::from_str::<serde_json::Value>(line)
                        && v["decision"] == "accept"
                    {
                        told.accepted
                            .insert(v["counter"].as_u64().expect("counter") as u32);
                    }
                }
            }
            Step::Sync => {}
            Step::AddCredential => told.credential_added |= ended_ok,
        }
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// One command of a workload, and the words that make its failure on a
/// retry after a cut a good state (the cut came after it had done its
/// work: "replayed", "already holds").
struct Command {
    args: Vec<String>,
    retried_ok: &'static [&'static str],
}

fn command(args: &[&str], retried_ok: &'static [&'static str]) -> Command {
    Command {
        args: args.iter().map(|a| a.to_string()).collect(),
        retried_ok,
    }
}

/// Runs `commands` from the `from`-th with the power on until the cut (if
/// one is armed or due), telling `ended` what each said; returns the
/// command the cut stopped and the process it killed there, if any.
fn drive(
    m: &Mounted,
    commands: &[Command],
    from: usize,
    due: Option<Instant>,
    ended: &mut dyn FnMut(usize, &str, bool),
) -> Option<(usize, Option<Child>)> {
    for (i, command) in commands.iter().enumerate().skip(from) {
        if due.is_some_and(|d| Instant::now() >= d) {
            m.cut_now();
        }
        if m.is_cut() {
            return Some((i, None));
        }
        let args: Vec<&str> = command.args.iter().map(String::as_str).collect();
        match run(m, m.path(), &args, due) {
            Ran::Ended(out) => {
                let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
                ended(i, &stdout, out.status.success());
                assert!(
                    out.status.success(),
                    "{args:?} failed with the power on: {stderr}"
                );
            }
            Ran::Cut(child) => return Some((i, Some(child))),
        }
    }
    None
}

/// Runs `commands` from the `from`-th, the one a cut stopped, to the end
/// with the power on: the first may fail saying the cut came after it had
/// done its work (its `retried_ok` words); every other must succeed.
fn retry(m: &Mounted, commands: &[Command], from: usize) {
    for (i, command) in commands.iter().enumerate().skip(from) {
        let args: Vec<&str> = command.args.iter().map(String::as_str).collect();
        let Ran::Ended(out) = run(m, m.path(), &args, None) else {
            panic!("cut with no cut armed");
        };
        let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
        let done_before = i == from
            && command
                .retried_ok
                .iter()
                .any(|w| stdout.contains(w) || stderr.contains(w));
        assert!(
            out.status.success() || done_before,
            "{args:?} failed when retried after the cut: {stderr}{stdout}"
        );
    }
}

/// Reader `r`'s records as `reader queue --json` lists them: (counter,
/// synced) in order.
fn queue(m: &Mounted) -> Vec<(u32, bool)> {
    let out = match run(
        m,
        m.path(),
        &["reader", "queue", "--data", "r", "--json"],
        None,
    ) {
        Ran::Ended(out) => out,
        Ran::Cut(_) => panic!("cut with no cut armed"),
    };
    let out = succeeded(&["reader queue"], out);
    out.lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).expect("queue line");
            (
                v["counter"].as_u64().expect("counter") as u32,
                v["synced"].as_bool().expect("synced"),
            )
        })
        .collect()
}

fn ok(m: &Mounted, args: &[&str]) -> String {
    match run(m, m.path(), args, None) {
        Ran::Ended(out) => succeeded(args, out),
        Ran::Cut(_) => panic!("cut with no cut armed"),
    }
}

/// What must hold after any cut, before anything is retried.
fn check_after_cut(m: &Mounted, site: &Site, trial: &Trial, told: &Told, label: &str) {
    ok(m, &["reader", "verify", "--data", "r"]);
    let records = queue(m);
    let counters: BTreeSet<u32> = records.iter().map(|r| r.0).collect();
    assert_eq!(
        counters.len(),
        records.len(),
        "{label}: a counter recorded twice"
    );
    let lost: Vec<_> = told.accepted.difference(&counters).collect();
    assert!(lost.is_empty(), "{label}: accepted, then lost: {lost:?}");
    let report: serde_json::Value = serde_json::from_str(&ok_on_hub(site, trial)).expect("report");
    let (at_hub, _) = reader_totals(&report, "gate-1");
    let synced = records.iter().filter(|r| r.1).count() as u64;
    assert!(
        synced <= at_hub,
        "{label}: the reader holds {synced} records as acknowledged, the hub {at_hub}"
    );
    assert!(
        at_hub <= records.len() as u64,
        "{label}: the hub has records the reader lost"
    );
    let wallet: serde_json::Value =
        serde_json::from_str(&ok(m, &["wallet", "show", "--dir", "w"])).expect("wallet show");
    let counter = wallet["counter"].as_u64().expect("counter") as u32;
    if let Some(&last) = told.emitted.last() {
        assert!(
            counter >= last,
            "{label}: token {last} left the phone, the wallet came back at {counter}"
        );
    }
    if told.credential_added {
        assert_eq!(
            wallet["credential"]["offline_limit"], SECOND_LIMIT,
            "{label}: the credential added was lost"
        );
    }
    for key in ["w/wallet.pub", "r/reader.pub"] {
        assert_eq!(
            fs::read(m.path().join(key)).expect(key),
            fs::read(site.s.path("seed").join(key)).expect(key),
            "{label}: {key} changed"
        );
    }
}

fn ok_on_hub(site: &Site, trial: &Trial) -> String {
    let hub = trial.dir.join("hub").display().to_string();
    site.s.ok(&["hub", "report", "--data", &hub, "--json"])
}

/// What must hold once every interrupted command was retried and the
/// workload finished.
fn check_finished(m: &Mounted, site: &Site, trial: &Trial, label: &str) {
    let records = queue(m);
    // One record per tap, each the token the tap finally paid with.
    let paid: Vec<u32> = [1, 2, 3]
        .iter()
        .map(|n| {
            let bytes = fs::read(trial.token(*n)).expect("token");
            Token::decode(&bytes).expect("token").payment.counter
        })
        .collect();
    let recorded: Vec<u32> = records.iter().map(|r| r.0).collect();
    assert_eq!(recorded, paid, "{label}: the records are not the taps");
    assert!(
        records.iter().all(|r| r.1),
        "{label}: left unsynced: {records:?}"
    );
    let report: serde_json::Value = serde_json::from_str(&ok_on_hub(site, trial)).expect("report");
    let (at_hub, charged) = reader_totals(&report, "gate-1");
    assert_eq!(
        at_hub,
        records.len() as u64,
        "{label}: hub and reader disagree"
    );
    assert_eq!(charged, 10 * at_hub, "{label}: charged");
    let wallet: serde_json::Value =
        serde_json::from_str(&ok(m, &["wallet", "show", "--dir", "w"])).expect("wallet show");
    assert_eq!(
        wallet["credential"]["offline_limit"], SECOND_LIMIT,
        "{label}"
    );
}

/// One trial: the workload on a fresh copy of the seed, cut at `at`,
/// checked, retried to the end and checked again. Returns the operations
/// counted before the cut and how long the workload ran.
fn reader_and_wallet_trial(site: &Site, n: usize, at: CutAt) -> Option<(u64, Duration)> {
    let trial = site.trial(n);
    let mnt = site.s.path("m");
    let m = mount(site.seed.clone(), &mnt)?;
    let label = format!("trial {n}, cut {at:?}");
    let due = arm(&m, at);
    let mut told = Told::default();
    let commands = trial.commands();
    let started = Instant::now();
    let stopped = drive(&m, &commands, 0, due, &mut |i, out, ok| {
        trial.note(STEPS[i], out, ok, &mut told)
    });
    let ran = started.elapsed();
    let ops = m.counted();
    print_trace(&m);
    let (step, child) = stopped.unwrap_or((STEPS.len(), None));
    let (disk, outputs) = cut(m, child.into_iter().collect());
    if step < STEPS.len() {
        let output = outputs.first().map(String::as_str).unwrap_or("");
        trial.note(STEPS[step], output, false, &mut told);
    }
    let m = mount(disk, &mnt).expect("mounts again");
    check_after_cut(&m, site, &trial, &told, &label);
    retry(&m, &commands, step);
    check_finished(&m, site, &trial, &label);
    m.unmount_live().expect("unmounts");
    Some((ops, ran))
}

#[test]
fn reader_and_wallet_survive_a_cut_at_every_operation_and_at_random() {
    let site = site();
    fs::create_dir(site.s.path("m")).expect("mountpoint");
    every_cut("reader and wallet", 100, 0x9e37_79b9_7f4a_7c15, |n, at| {
        reader_and_wallet_trial(&site, n, at)
    });
}

// ---------------------------------------------------------------------
// The init commands, from an empty disk.

/// Setting up a site from nothing: the hub, a wallet, a reader, the
/// reader's registration, a credential and its installation.
fn init_commands() -> Vec<Command> {
    let done: &[&str] = &["already holds"];
    vec![
        command(&["hub", "init", "--data", "hub"], done),
        command(&["wallet", "new", "--dir", "w"], done),
        command(&crate::util::reader_init_args("r", "gate-1", &[]), done),
        command(
            &[
                "hub",
                "reader",
                "add",
                "--data",
                "hub",
                "--id",
                "gate-1",
                "--key",
                "r/reader.pub",
            ],
            &[],
        ),
        command(
            &[
                &[
                    "hub",
                    "issue",
                    "--data",
                    "hub",
                    "--wallet-key",
                    "w/wallet.pub",
                ][..],
                &TERMS,
                &["--out", "cred"],
            ]
            .concat(),
            &[],
        ),
        command(&["wallet", "add-credential", "--dir", "w", "cred"], &[]),
    ]
}

/// The key files each init command makes: what it has told its user is
/// there once it has said it is done.
const INIT_KEYS: [&[&str]; 3] = [
    &["hub/issuer.pub", "hub/issuer.key"],
    &["w/wallet.pub", "w/wallet.key"],
    &["r/reader.pub", "r/reader.key"],
];

fn init_trial(s: &Scratch, n: usize, at: CutAt) -> Option<(u64, Duration)> {
    let mnt = s.path("m");
    let m = mount(Disk::new(), &mnt)?;
    let label = format!("init trial {n}, cut {at:?}");
    let due = arm(&m, at);
    let commands = init_commands();
    // Each finished init's key files as it left them.
    let mut keys: Vec<(String, Vec<u8>)> = Vec::new();
    let started = Instant::now();
    let stopped = drive(&m, &commands, 0, due, &mut |i, _, ok| {
        if ok && let Some(files) = INIT_KEYS.get(i) {
            for file in *files {
                let bytes = fs::read(mnt.join(file)).expect("a finished init's key");
                keys.push((file.to_string(), bytes));
            }
        }
    });
    let ran = started.elapsed();
    let ops = m.counted();
    print_trace(&m);
    let (step, child) = stopped.unwrap_or((commands.len(), None));
    let (disk, _) = cut(m, child.into_iter().collect());
    let m = mount(disk, &mnt).expect("mounts again");
    for (file, bytes) in &keys {
        let now = fs::read(mnt.join(file));
        assert!(
            now.as_ref().ok() == Some(bytes),
            "{label}: {file} lost or changed after its init finished: {:?}, {:?}",
            now.map(hex::encode),
            fs::read_dir(mnt.join(file).parent().expect("dir"))
                .map(|d| d.flatten().map(|e| e.file_name()).collect::<Vec<_>>())
        );
    }
    retry(&m, &commands, step);
    // The site works: a payment signed with the wallet's key and the
    // hub's credential is accepted by the reader trusting that hub.
    let token = s.path("token");
    let token = token.to_str().expect("path");
    ok(
        &m,
        &[
            "wallet", "pay", "--dir", "w", "--amount", "10", "--out", token,
        ],
    );
    let out = ok(&m, &["reader", "accept", "--data", "r", token]);
    assert!(out.contains("\"decision\":\"accept\""), "{label}: {out}");
    m.unmount_live().expect("unmounts");
    Some((ops, ran))
}

#[test]
fn the_init_commands_survive_a_cut_at_every_operation_and_at_random() {
    let s = Scratch::new();
    fs::create_dir(s.path("m")).expect("mountpoint");
    every_cut("init", 60, 0x2545_f491_4f6c_dd1d, |n, at| {
        init_trial(&s, n, at)
    });
}

/// With `SONOTAP_POWERCUT_TRACE` set, prints the operations counted (to
/// find what a failing cut fell on).
fn print_trace(m: &Mounted) {
    if std::env::var_os("SONOTAP_POWERCUT_TRACE").is_some() {
        for (i, op) in m.trace().iter().enumerate() {
            eprintln!("{i:5} {:?} {}", op.kind, op.path);
        }
    }
}

/// Runs `hub init` alone on an empty disk with the power cut at `at`
/// (`None`: not cut); returns the disk after the cut and the operations.
fn hub_init_cut(s: &Scratch, at: Option<Trigger>) -> Option<(Disk, Vec<sonotap_powercut::Op>)> {
    let m = mount(Disk::new(), &s.path("m"))?;
    if let Some(trigger) = at {
        m.arm(trigger);
    }
    let commands = [command(&["hub", "init", "--data", "hub"], &[])];
    let stopped = drive(&m, &commands, 0, None, &mut |_, _, _| {});
    let trace = m.trace();
    let killed = stopped.and_then(|(_, child)| child);
    let (disk, _) = cut(m, killed.into_iter().collect());
    Some((disk, trace))
}

/// The hub's directory was never synced into its parent: a cut after
/// `hub init` said it was done took the whole hub, issuer key and all.
#[test]
fn issue21_a_cut_just_after_hub_init_keeps_the_hub_it_made() {
    let s = Scratch::new();
    fs::create_dir(s.path("m")).expect("mountpoint");
    let Some((disk, _)) = hub_init_cut(&s, None) else {
        return;
    };
    let m = mount(disk, &s.path("m")).expect("mounts");
    assert!(
        s.path("m/hub/issuer.key").exists(),
        "the hub init made is gone after the cut"
    );
    ok(&m, &["hub", "readers", "--data", "hub"]);
    m.unmount_live().expect("unmounts");
}

/// A cut after the database registered the new issuer key but before the
/// key file was in place: the retried `hub init` failed for ever on the
/// registration (a UNIQUE constraint); it now takes up the pending key.
#[test]
fn issue21_hub_init_retried_after_a_cut_between_registration_and_key_file_succeeds() {
    let s = Scratch::new();
    fs::create_dir(s.path("m")).expect("mountpoint");
    let Some((_, trace)) = hub_init_cut(&s, None) else {
        return;
    };
    let into_place = trace
        .iter()
        .position(|op| op.kind == sonotap_powercut::OpKind::Rename && op.path == "/hub/issuer.key")
        .expect("the key is renamed into place") as u64;
    let trigger = Trigger {
        op: into_place,
        when: When::Before,
    };
    let (disk, _) = hub_init_cut(&s, Some(trigger)).expect("mounts");
    let m = mount(disk, &s.path("m")).expect("mounts");
    assert!(!s.path("m/hub/issuer.key").exists());
    let pending = fs::read(s.path("m/hub/issuer.key.pending")).expect("the pending key");
    ok(&m, &["hub", "init", "--data", "hub"]);
    assert_eq!(
        fs::read(s.path("m/hub/issuer.key")).expect("key"),
        pending,
        "the retry took up the key the database registered"
    );
    ok(&m, &["hub", "readers", "--data", "hub"]);
    m.unmount_live().expect("unmounts");
}

// ---------------------------------------------------------------------
// The hub, its database on the disk that is cut, readers uploading to it.

/// A hub whose directory is the seed disk, and reader `r` (on an ordinary
/// disk) holding `RECORDS` accepted records it has not uploaded.
struct HubSite {
    s: Scratch,
    seed: Disk,
}

const RECORDS: usize = 4;

fn hub_site() -> HubSite {
    let s = Scratch::new();
    fs::create_dir(s.path("seed")).expect("mkdir");
    s.ok(&["hub", "init", "--data", "seed/hub"]);
    s.ok(&["wallet", "new", "--dir", "w"]);
    s.hub_issue("seed/hub", "w", &TERMS, "cred");
    s.ok(&["wallet", "add-credential", "--dir", "w", "cred"]);
    s.ok(&[
        "reader",
        "init",
        "--data",
        "r",
        "--id",
        "gate-1",
        "--trust",
        "seed/hub/issuer.pub",
    ]);
    s.ok(&[
        "hub",
        "reader",
        "add",
        "--data",
        "seed/hub",
        "--id",
        "gate-1",
        "--key",
        "r/reader.pub",
    ]);
    for i in 0..RECORDS + 1 {
        s.wallet_pay(10, &format!("t{i}"), &[]);
    }
    for i in 0..RECORDS {
        s.ok(&["reader", "accept", "--data", "r", &format!("t{i}")]);
    }
    let seed = Disk::import(&s.path("seed")).expect("seed disk");
    fs::create_dir(s.path("m")).expect("mountpoint");
    // `hub serve --data hubdata` keeps its log beside it, off the disk.
    std::os::unix::fs::symlink("m/hub", s.path("hubdata")).expect("symlink");
    HubSite { s, seed }
}

fn hub_trial(site: &HubSite, n: usize, at: CutAt) -> Option<(u64, Duration)> {
    let s = &site.s;
    let label = format!("hub trial {n}, cut {at:?}");
    let reader = s.path(&format!("r{n}"));
    crate::util::copy_dir(&s.path("r"), &reader);
    let m = mount(site.seed.clone(), &s.path("m"))?;
    let mut hub = HubProcess::serve(s, "hubdata", "127.0.0.1:0", &[]);
    // Dropped before the hub: a failing check cannot leave it waiting.
    let _release = m.release_on_drop();
    // Counted from the hub's start, so that it is cut serving.
    let base = m.counted();
    let due = arm(
        &m,
        match at {
            CutAt::Op(Trigger { op, when }) => CutAt::Op(Trigger {
                op: base.saturating_add(op),
                when,
            }),
            after => after,
        },
    );
    let url = hub.url.clone();
    let reader_arg = reader.display().to_string();
    let token = s.path(&format!("t{RECORDS}")).display().to_string();
    let steps: [&[&str]; 3] = [
        &[
            "reader",
            "sync",
            "--data",
            &reader_arg,
            "--hub",
            &url,
            "--timeout",
            "5s",
        ],
        &["reader", "accept", "--data", &reader_arg, &token],
        &[
            "reader",
            "sync",
            "--data",
            &reader_arg,
            "--hub",
            &url,
            "--timeout",
            "5s",
        ],
    ];
    let started = Instant::now();
    for step in steps {
        // The reader is not on the disk that is cut: it runs to its end,
        // which comes quickly once the hub is gone.
        let mut child = sonotap()
            .args(step)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("runs");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            assert!(Instant::now() < deadline, "{label}: {step:?} hangs");
            if due.is_some_and(|d| Instant::now() >= d) {
                m.cut_now();
            }
            if m.is_cut() {
                // Killed, it ends (and the reader's connection with it)
                // once what it waits for on the disk is released.
                hub.kill_now();
                m.release();
            }
            if matches!(child.try_wait(), Ok(Some(_))) {
                break;
            }
            sleep(Duration::from_micros(300));
        }
    }
    let ran = started.elapsed();
    let ops = m.counted() - base;
    print_trace(&m);
    hub.kill_now();
    let (disk, _) = cut(m, Vec::new());
    drop(hub);

    // What the reader holds as acknowledged, the hub has.
    let reader_name = format!("r{n}");
    let acknowledged = records(s, &reader_name)
        .iter()
        .filter(|r| r.synced_at.is_some())
        .count() as u64;
    let m = mount(disk, &s.path("m")).expect("mounts again");
    let report: serde_json::Value =
        serde_json::from_str(&s.ok(&["hub", "report", "--data", "m/hub", "--json"]))
            .expect("report");
    let (at_hub, _) = reader_totals(&report, "gate-1");
    assert!(
        at_hub >= acknowledged,
        "{label}: the hub acknowledged {acknowledged} records and kept {at_hub}"
    );
    // Retried: the reader uploads again, and the hub counts each once.
    let hub = HubProcess::serve(s, "hubdata", "127.0.0.1:0", &[]);
    succeeded(
        &["reader sync (retried)"],
        s.reader_sync(&reader_name, &hub.url, &[]),
    );
    drop(hub);
    let records = records(s, &reader_name);
    assert!(
        records.iter().all(|r| r.synced_at.is_some()),
        "{label}: {records:?}"
    );
    let report: serde_json::Value =
        serde_json::from_str(&s.ok(&["hub", "report", "--data", "m/hub", "--json"]))
            .expect("report");
    let (at_hub, charged) = reader_totals(&report, "gate-1");
    assert_eq!(at_hub, records.len() as u64, "{label}: once each");
    assert_eq!(charged, 10 * at_hub, "{label}");
    m.unmount_live().expect("unmounts");
    Some((ops, ran))
}

#[test]
fn the_hub_never_forgets_what_it_acknowledged_across_cuts() {
    let site = hub_site();
    every_cut("hub", 40, 0x5851_f42d_4c95_7f2d, |n, at| {
        hub_trial(&site, n, at)
    });
}

// ---------------------------------------------------------------------
// The daemon, its reader on the disk that is cut, its gate on a pty.

/// Tokens shown to the daemon's camera in each trial.
const TAPS: usize = 3;

struct GateSite {
    s: Scratch,
    seed: Disk,
    wallet: sonotap_wallet::Wallet,
    relay: Relay,
    config: PathBuf,
    /// Gate openings seen over the trials cut.
    opened: usize,
}

fn gate_site() -> GateSite {
    let s = Scratch::new();
    s.ok(&["hub", "init", "--data", "hub"]);
    fs::create_dir(s.path("seed")).expect("mkdir");
    s.reader_init("seed/r", "gate-1", &[]);
    let seed = Disk::import(&s.path("seed")).expect("seed disk");
    fs::remove_dir_all(s.path("seed")).expect("rm");
    let wallet = crate::util::issued_wallet(
        s.dir.path(),
        "w",
        sonotap_protocol::token::Scope::Transit,
        1_000_000,
        crate::util::unix_now(),
    );
    let relay = Relay::new();
    crate::util::mkfifo(&s.path("cam.y8"));
    let config = crate::daemon::config(
        &s,
        &relay,
        "[camera]\nsource = \"pipe\"\npath = \"cam.y8\"\nbudget_ms = 1000\n",
    );
    let text = fs::read_to_string(&config)
        .expect("config")
        .replace("data = \"r\"", "data = \"m/r\"");
    fs::write(&config, text).expect("config");
    fs::create_dir(s.path("m")).expect("mountpoint");
    GateSite {
        s,
        seed,
        wallet,
        relay,
        config,
        opened: 0,
    }
}

/// Where a daemon trial's cut falls: at the n-th counted operation after
/// the daemon is ready, or this long after the first token is shown.
#[derive(Debug, Clone, Copy)]
enum GateCut {
    Op(u64, When),
    After(Duration),
    Never,
}

/// One trial: the daemon starts on the seed (or what the last trial left),
/// `TAPS` tokens are shown, the power is cut; every gate opening seen on
/// the relay must have its record after the cut, and the next start must
/// settle every record's gate outcome. Returns the disk to go on from, the
/// operations counted after ready, and how long the taps took.
fn gate_trial(site: &mut GateSite, disk: Disk, n: usize, at: GateCut) -> (Disk, u64, Duration) {
    let s = &site.s;
    let label = format!("gate trial {n}, cut {at:?}");
    let m = mount(disk, &s.path("m")).expect("mounts");
    let opens_before = site.relay.opens();
    let mut daemon = crate::util::Daemon::start(s, &site.config, &[]);
    // Dropped before the daemon: a failing check cannot leave it waiting.
    let _release = m.release_on_drop();
    daemon.wait_log("ready", Duration::from_secs(30));
    let base = m.counted();
    let mut due = None;
    match at {
        GateCut::Op(k, when) => m.arm(Trigger { op: base + k, when }),
        GateCut::After(delay) => due = Some(Instant::now() + delay),
        GateCut::Never => {}
    }
    let mut fifo = crate::util::open_fifo(&s.path("cam.y8"));
    let started = Instant::now();
    let mut shown = Vec::new();
    for _ in 0..TAPS {
        let token = crate::util::pay_token(&mut site.wallet, 100, crate::util::unix_now());
        shown.push(Token::decode(&token).expect("token").payment.counter);
        let _ = std::io::Write::write_all(&mut fifo, &crate::util::qr_frame(&token));
    }
    // Until the cut, or until every tap has opened the gate.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !m.is_cut() && site.relay.opens() < opens_before + TAPS && Instant::now() < deadline {
        if due.is_some_and(|d| Instant::now() >= d) {
            m.cut_now();
        }
        site.relay.pump(Duration::from_millis(2));
    }
    let took = started.elapsed();
    let ops = m.counted() - base;
    print_trace(&m);
    m.cut_now();
    daemon.signal(libc::SIGKILL);
    let (disk, _) = cut(m, Vec::new());
    drop(daemon);
    drop(fifo);
    site.relay.pump(Duration::from_millis(50));
    let opened = site.relay.opens() - opens_before;

    let m = mount(disk, &s.path("m")).expect("mounts again");
    // The daemon takes the taps in order: the gate's openings are the
    // first taps', and each must have its record.
    let counters: BTreeSet<u32> = records(s, "m/r").iter().map(|r| r.counter).collect();
    let lost: Vec<&u32> = shown[..opened.min(TAPS)]
        .iter()
        .filter(|c| !counters.contains(c))
        .collect();
    assert!(
        opened <= TAPS && lost.is_empty(),
        "{label}: the gate opened {opened} times; no record for the taps of counters {lost:?}"
    );
    // The next start settles every opening the cut left in flight.
    let mut daemon = crate::util::Daemon::start(s, &site.config, &[]);
    daemon.wait_log("ready", Duration::from_secs(30));
    daemon.stop();
    let db = sonotap_reader::store::ReaderDb::open(&s.path("m/r/reader.db")).expect("db");
    for seq in records(s, "m/r").iter().map(|r| r.seq) {
        assert!(
            !db.actuations(seq).expect("actuations").is_empty(),
            "{label}: record {seq} has no gate outcome after the restart"
        );
    }
    drop(db);
    ok(&m, &["reader", "verify", "--data", "r"]);
    site.opened += opened;
    (m.unmount_live().expect("unmounts"), ops, took)
}

#[test]
fn the_daemon_opens_no_gate_without_a_record_across_cuts() {
    let mut site = gate_site();
    let Some(m) = mount(Disk::new(), &site.s.path("m")) else {
        return;
    };
    m.unmount_live().expect("unmounts");
    let disk = site.seed.clone();
    let (mut disk, ops, span) = gate_trial(&mut site, disk, 0, GateCut::Never);
    assert_eq!(site.opened, TAPS, "uncut, every tap opens the gate");
    let mut dice = Dice(0xd1b5_4a32_d192_ed03);
    let started = Instant::now();
    let trials = 100;
    site.opened = 0;
    for i in 0..trials {
        let at = if i % 2 == 0 {
            let when = if dice.below(2) == 0 {
                When::Before
            } else {
                When::After
            };
            GateCut::Op(dice.below(ops), when)
        } else {
            GateCut::After(Duration::from_micros(dice.below(span.as_micros() as u64)))
        };
        let (next, _, _) = gate_trial(&mut site, disk, i + 1, at);
        disk = next;
    }
    let records = mount(disk, &site.s.path("m"))
        .map(|m| {
            let n = records(&site.s, "m/r").len();
            m.unmount_live().expect("unmounts");
            n
        })
        .expect("mounts");
    eprintln!(
        "daemon: {ops} operations for {TAPS} taps, {trials} cuts in {:.1?}: \
         the gate opened {} times, {records} records kept",
        started.elapsed(),
        site.opened
    );
    assert!(
        site.opened >= trials / 2,
        "the cuts left too few openings to mean anything"
    );
}

/// What an interrupted `hub init` left as its pending key is taken up
/// only when it is whole and for the key id asked: a torn one (never
/// registered) is replaced, one for another key id is refused by name,
/// never deleted (the database may have registered it).
#[test]
fn hub_init_replaces_a_torn_pending_key_and_refuses_one_for_another_key_id() {
    use std::os::unix::fs::PermissionsExt;
    let s = Scratch::new();
    let private_dir = |name: &str| {
        fs::create_dir(s.path(name)).expect("mkdir");
        fs::set_permissions(s.path(name), fs::Permissions::from_mode(0o700)).expect("chmod");
    };
    private_dir("hub");
    let pending = s.path("hub/issuer.key.pending");
    fs::write(&pending, "sonotap issuer-secret 1 0123").expect("torn key");
    fs::set_permissions(&pending, fs::Permissions::from_mode(0o600)).expect("chmod");
    s.ok(&["hub", "init", "--data", "hub"]);
    assert!(!pending.exists(), "the torn key was replaced");
    s.ok(&["hub", "readers", "--data", "hub"]);

    // A whole pending key made for key id 2, and init run for key id 1.
    s.ok(&["hub", "init", "--data", "two", "--key-id", "2"]);
    private_dir("other");
    let pending = s.path("other/issuer.key.pending");
    fs::rename(s.path("two/issuer.key"), &pending).expect("mv");
    let out = s.run(&["hub", "init", "--data", "other"]);
    crate::util::assert_fails(&out, 2, &["issuer.key.pending", "key id 2, not 1"]);
    assert!(pending.exists(), "never deleted");
    s.ok(&["hub", "init", "--data", "other", "--key-id", "2"]);
    assert!(s.path("other/issuer.key").exists());
}
