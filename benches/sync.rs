//! Store-and-forward throughput and its effect on taps.
//!
//! 1. `sync`: a reader with N queued records (default 1,000,000) syncs to a
//!    real hub on 127.0.0.1 (`hub serve`'s server in this process, SQLite,
//!    its default signature checks): wall time and records/s.
//! 2. `ingest`: the hub alone (`Hub::admit`, `check`, `store` on the same
//!    batches, fresh copies of the hub), under both record-signature
//!    policies side by side: records/s one batch at a time and pipelined,
//!    the CPU split between checks and store; then batch vs one-by-one
//!    `verify_strict` on one batch.
//! 3. `taps while syncing`: a reader offline with M records (default
//!    100,000) syncs to a hub process (at the lowest CPU priority, standing
//!    in for a remote hub) while taps keep arriving every 10 ms on its own
//!    connection: tap latency median / p99 / max, idle vs during the sync.
//!
//! 4. `--postgres` (instead of 1–3): the ingest table. Two readers with N/2
//!    records each sync at once to real `sonotap hub serve` processes:
//!    SQLite (one process), PostgreSQL with one process (both readers to
//!    it) and with two processes (one reader each), each with `hub serve`'s
//!    default writers and with one writer, each on fresh state; `--rounds R`
//!    times in turn (default 3), medians; the CPU per record of the readers,
//!    the hub processes and PostgreSQL, and the lock waits the hub
//!    processes log when stopped. PostgreSQL is
//!    a throwaway cluster on this machine with its default durability
//!    (`fsync` and `synchronous_commit` on), as SQLite runs at
//!    `synchronous=FULL`.
//!
//! Run: `cargo bench --bench sync -- [--records N] [--offline M] [--skip-sync]
//! [--skip-taps] [--postgres [--rounds R]]`.
//! The queued records are made directly in the reader database (one
//! transaction), because making a million through the tap path would take
//! minutes of fsyncs that measure nothing here.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use sonotap_disk::keys::{PublicKey, Role, SecretKey};
use sonotap_hub::ledger::Via;
use sonotap_hub::server::{self, ServeOptions};
use sonotap_hub::{Hub, IssueRequest, RecordSignatureCheck};
use sonotap_protocol::record::{GENESIS_HASH, RecordBody, RecordKind};
use sonotap_protocol::token::{Credential, PaymentTerms, Scope, Token};
use sonotap_reader::reader::{InitOptions, Reader};
use sonotap_reader::sync::client::{self, HubClient, SyncOptions};
use sonotap_reader::sync::failover::HubUrls;

#[path = "common/mod.rs"]
mod common;
#[path = "../crates/hub/src/backend/postgres/test_server.rs"]
mod pg_server;

const NOW: u64 = 1_790_000_000;
const PAYMENTS_PER_WALLET: usize = 1_000;
const BATCH: usize = 5_000;

fn flag(name: &str) -> bool {
    std::env::args().any(|a| a == name)
}

struct Site {
    _tmp: tempfile::TempDir,
    root: std::path::PathBuf,
    hub: Hub,
}

fn site() -> Site {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().to_owned();
    let hub = Hub::init(&root.join("hub"), 1, NOW).expect("hub");
    Site {
        _tmp: tmp,
        root,
        hub,
    }
}

/// A registered reader `id` with `n` accepted payments queued in its database.
fn reader_with_queue(site: &mut Site, id: &str, n: usize) -> std::path::PathBuf {
    let dir = site.root.join(id);
    let options = InitOptions {
        id: id.into(),
        scope: Scope::Transit,
        currency: 978,
        clock_skew_secs: 300,
        fare: None,
    };
    let reader = Reader::init(&dir, &options, &site.hub.issuer_public(), NOW).expect("reader");
    site.hub
        .add_reader(id, &reader.public_key(), NOW)
        .expect("register");
    drop(reader);
    let reader_key = SecretKey::read(&dir.join("reader.key"), Role::Reader).expect("key");

    // Wallets and their credentials.
    let wallets = n.div_ceil(PAYMENTS_PER_WALLET).max(1);
    let started = Instant::now();
    let mut keys = Vec::with_capacity(wallets);
    for w in 0..wallets {
        let mut seed = [0u8; 32];
        seed[..8].copy_from_slice(&(w as u64).to_be_bytes());
        seed[8..8 + id.len().min(24)].copy_from_slice(&id.as_bytes()[..id.len().min(24)]);
        let key = SigningKey::from_bytes(&seed);
        let credential = issue(&mut site.hub, &key);
        keys.push((key, credential));
    }

    // Tokens, signed on every core: payment i is wallet i % W's next payment.
    let tokens: Vec<Vec<u8>> = parallel(n, |i| {
        let (key, credential): &(SigningKey, Credential) = &keys[i % wallets];
        let counter = (i / wallets + 1) as u32;
        let payment = PaymentTerms {
            amount: 250,
            counter,
            total_before: (counter - 1) * 250,
            timestamp: (NOW + (i / 100) as u64) as u32,
            reader_tag: 0,
        };
        Token::sign(*credential, payment, key)
            .expect("token")
            .encode()
            .to_vec()
    });
    // The chain is sequential (each record names the previous hash); the
    // signatures are not.
    // Record i: a charge of 250 for token i after `prev_hash`.
    let body = |i: usize, prev_hash: [u8; 32]| RecordBody {
        reader_id: id,
        seq: i as u64 + 1,
        at: NOW + (i / 100) as u64,
        kind: RecordKind::Charge,
        amount: 250,
        token: &tokens[i],
        prev_hash,
    };
    let mut prev = GENESIS_HASH;
    let mut chain = Vec::with_capacity(n);
    for i in 0..n {
        let hash = body(i, prev).hash();
        chain.push((prev, hash));
        prev = hash;
    }
    let signing = reader_key.signing_key();
    let signatures: Vec<[u8; 64]> = parallel(n, |i| {
        signing.sign(&body(i, chain[i].0).encode()).to_bytes()
    });

    let mut conn = rusqlite::Connection::open(dir.join("reader.db")).expect("db");
    conn.pragma_update(None, "synchronous", "OFF")
        .expect("pragma");
    let tx = conn.transaction().expect("tx");
    {
        let mut insert = tx
            .prepare(
                "INSERT INTO records (seq, at, kind, wallet_id, counter, amount, token, prev_hash, hash, signature)
                 VALUES (?1, ?2, 'charge', ?3, ?4, 250, ?5, ?6, ?7, ?8)",
            )
            .expect("prepare");
        for i in 0..n {
            let token = Token::decode(&tokens[i]).expect("token");
            insert
                .execute(rusqlite::params![
                    i as i64 + 1,
                    (NOW + (i / 100) as u64) as i64,
                    token.wallet_id().0.as_slice(),
                    token.payment.counter,
                    tokens[i],
                    chain[i].0.as_slice(),
                    chain[i].1.as_slice(),
                    signatures[i].as_slice(),
                ])
                .expect("insert");
        }
        tx.execute(
            "INSERT INTO chain_head (id, seq, hash) VALUES (1, ?1, ?2)",
            rusqlite::params![n as i64, prev.as_slice()],
        )
        .expect("head");
    }
    tx.commit().expect("commit");
    println!(
        "  made {n} records for {id} ({wallets} wallets) in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    dir
}

/// A month-long credential without a practical offline limit.
fn issue(hub: &mut Hub, wallet: &SigningKey) -> Credential {
    let public = PublicKey::from_bytes(Role::Wallet, None, &wallet.verifying_key().to_bytes())
        .expect("wallet key");
    let request = IssueRequest {
        scope: Scope::Transit,
        currency: 978,
        offline_limit: u32::MAX,
        per_payment_cap: 1_000,
        valid_from: (NOW - 3600) as u32,
        valid_hours: 24 * 30,
    };
    hub.issue(&public, request, NOW).expect("issue")
}

fn parallel<T: Send>(n: usize, f: impl Fn(usize) -> T + Sync) -> Vec<T> {
    let threads = std::thread::available_parallelism().map_or(2, |t| t.get());
    let chunk = n.div_ceil(threads).max(1);
    let f = &f;
    std::thread::scope(|s| {
        let parts: Vec<_> = (0..n)
            .step_by(chunk)
            .map(|start| {
                s.spawn(move || (start..(start + chunk).min(n)).map(f).collect::<Vec<T>>())
            })
            .collect();
        parts
            .into_iter()
            .flat_map(|h| h.join().expect("worker"))
            .collect()
    })
}

/// Starts `hub serve`'s server for the hub in `dir` on a loopback port.
fn serve(
    dir: &Path,
) -> (
    SocketAddr,
    std::thread::JoinHandle<()>,
    tokio::sync::oneshot::Sender<()>,
) {
    let hub = Hub::open(dir).expect("hub");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (addr_tx, addr_rx) = mpsc::channel();
    let handle = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let options = ServeOptions {
                listen: "127.0.0.1:0".parse().expect("addr"),
                tls: None,
                limits: Default::default(),
                writers: 1,
                metrics: None,
            };
            let (addr, server) = server::bind(hub, options, async {
                let _ = stop_rx.await;
            })
            .await
            .expect("bind");
            addr_tx.send(addr.api).expect("addr");
            server.await.expect("serve");
        });
    });
    (addr_rx.recv().expect("address"), handle, stop_tx)
}

fn copy_hub(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    let conn = rusqlite::Connection::open(from.join("hub.db")).expect("db");
    conn.execute("VACUUM INTO ?1", [to.join("hub.db").to_string_lossy()])
        .expect("vacuum into");
    for f in ["issuer.key", "issuer.pub"] {
        std::fs::copy(from.join(f), to.join(f)).expect("copy");
    }
}

fn percentiles(mut v: Vec<Duration>) -> String {
    if v.is_empty() {
        return "no samples".into();
    }
    v.sort();
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    format!(
        "median {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} taps)",
        at(0.5).as_secs_f64() * 1e3,
        at(0.99).as_secs_f64() * 1e3,
        at(1.0).as_secs_f64() * 1e3,
        v.len()
    )
}

/// CPU time of this process or thread: a figure that other work on a
/// shared machine disturbs far less than wall time.
fn cpu_time(clock: libc::clockid_t) -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write to; both clocks exist on Linux.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// A `sonotap hub serve` process and its log.
struct HubProcess {
    child: std::process::Child,
    url: String,
    log: std::path::PathBuf,
}

/// Starts `sonotap hub serve` for the hub in `dir` (state in `database`,
/// else its SQLite file) on a loopback port, its log in `log`.
fn hub_process(dir: &Path, database: Option<&str>, writers: Option<u32>, log: &Path) -> HubProcess {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_sonotap"));
    command.args(["hub", "serve", "--data"]).arg(dir);
    if let Some(url) = database {
        command.args(["--database", url]);
    }
    if let Some(n) = writers {
        command.args(["--writers", &n.to_string()]);
    }
    let mut child = command
        .args(["--listen", "127.0.0.1:0"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(log).expect("log file"))
        .spawn()
        .expect("hub process");
    let url = common::hub_url(&mut child);
    HubProcess {
        child,
        url,
        log: log.to_owned(),
    }
}

impl HubProcess {
    /// Stops the process as an operator would (SIGTERM) and returns what
    /// its last log line says of lock waits: writes, total ms, longest ms.
    fn stop(mut self) -> Option<[u64; 3]> {
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid");
        // SAFETY: signalling a child this process started and has not reaped.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let _ = self.child.wait();
        let log = std::fs::read_to_string(&self.log).ok()?;
        let line = log.lines().rev().find(|l| l.contains("lock waits"))?;
        let field = |name: &str| -> Option<u64> {
            let rest = &line[line.find(&format!("{name}="))? + name.len() + 1..];
            rest.split_whitespace().next()?.parse().ok()
        };
        Some([field("writes")?, field("total_ms")?, field("longest_ms")?])
    }
}

/// CPU time so far of this process (the readers), of every `sonotap`
/// process (the hubs) and of every `postgres` process.
fn cpu_split() -> [Duration; 3] {
    let tick = 1.0 / 100.0; // USER_HZ on Linux
    let mut hubs = 0u64;
    let mut postgres = 0u64;
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid ... utime(14) stime(15)
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = &stat[open + 1..close];
        let fields: Vec<&str> = stat[close + 2..].split(' ').collect();
        let ticks = fields
            .get(11)
            .and_then(|u| u.parse::<u64>().ok())
            .unwrap_or(0)
            + fields
                .get(12)
                .and_then(|s| s.parse::<u64>().ok())
                .unwrap_or(0);
        match comm {
            "sonotap" => hubs += ticks,
            "postgres" => postgres += ticks,
            _ => {}
        }
    }
    [
        cpu_time(libc::CLOCK_PROCESS_CPUTIME_ID),
        Duration::from_secs_f64(hubs as f64 * tick),
        Duration::from_secs_f64(postgres as f64 * tick),
    ]
}

/// Syncs each reader to its hub URL at once; the wall time until all are done.
fn sync_all(readers: &[(&Path, &str)]) -> Duration {
    for (dir, _) in readers {
        rusqlite::Connection::open(dir.join("reader.db"))
            .expect("db")
            .execute("UPDATE records SET synced_at = NULL", [])
            .expect("reset");
    }
    let started = Instant::now();
    std::thread::scope(|s| {
        let handles: Vec<_> = readers
            .iter()
            .map(|(dir, url)| {
                s.spawn(move || {
                    let client = HubClient::new(
                        &HubUrls::check(&[url]).expect("url"),
                        None,
                        Duration::from_secs(120),
                    )
                    .expect("client");
                    let mut reader = Reader::open(dir).expect("reader");
                    let options = SyncOptions {
                        batch_size: BATCH,
                        ..SyncOptions::default()
                    };
                    client::sync_once(&mut reader, &client, &options, &mut |_| {})
                        .expect("sync")
                        .records
                })
            })
            .collect();
        for h in handles {
            h.join().expect("sync thread");
        }
    });
    started.elapsed()
}

/// One configuration of the ingest table.
#[derive(Clone, Copy)]
enum Setup {
    Sqlite,
    /// `processes` hub processes with `writers` writers each (`None`: `hub serve`'s default).
    Postgres {
        processes: usize,
        writers: Option<u32>,
    },
}

impl Setup {
    fn name(self) -> String {
        match self {
            Setup::Sqlite => "SQLite (hub.db)".into(),
            Setup::Postgres { processes, writers } => format!(
                "PostgreSQL, {} ({})",
                if processes == 1 {
                    "one hub process".to_owned()
                } else {
                    format!("{processes} hub processes (one reader each)")
                },
                match writers {
                    Some(1) => "one writer each".to_owned(),
                    Some(n) => format!("--writers {n}"),
                    None => format!("--writers {} (default)", server::DEFAULT_WRITERS),
                }
            ),
        }
    }

    fn processes(self) -> usize {
        match self {
            Setup::Sqlite => 1,
            Setup::Postgres { processes, .. } => processes,
        }
    }

    fn writers(self) -> Option<u32> {
        match self {
            Setup::Sqlite => None,
            Setup::Postgres { writers, .. } => writers,
        }
    }
}

/// The ingest table: SQLite, PostgreSQL with one and with two hub
/// processes (with `hub serve`'s default writers, and with one writer
/// each), `rounds` times in turn (so that a noisy moment of the machine
/// falls on every setup alike), each run on fresh state; the median of each.
fn postgres_table(records: usize, rounds: usize) {
    let Some(pg) = pg_server::PgServer::start_durable() else {
        println!("postgres: skipped (PostgreSQL is not installed)");
        return;
    };
    let half = records / 2;
    println!(
        "ingest table: 2 readers x {half} records (disjoint wallets), batches of {BATCH}, \
         synced at once over HTTP to `sonotap hub serve` processes on fresh state; \
         {rounds} rounds, the setups in turn; PostgreSQL with its default \
         durability (fsync, synchronous_commit on), SQLite at synchronous=FULL"
    );
    let mut site = site();
    let dirs = [
        reader_with_queue(&mut site, "bench-a", half),
        reader_with_queue(&mut site, "bench-b", records - half),
    ];
    let ids = ["bench-a", "bench-b"];
    let hub_dir = site.root.join("hub");
    drop(site.hub);
    let keys: Vec<PublicKey> = dirs
        .iter()
        .map(|d| Reader::open(d).expect("reader").public_key())
        .collect();
    let total = 2 * half;
    let postgres = |processes, writers| Setup::Postgres { processes, writers };
    let setups = [
        Setup::Sqlite,
        postgres(1, None),
        postgres(2, None),
        postgres(1, Some(1)),
        postgres(2, Some(1)),
    ];
    let mut times: Vec<Vec<Duration>> = vec![Vec::new(); setups.len()];
    // Per setup, over its runs and processes: writes, ms waiting for locks, longest wait.
    let mut waits = vec![[0u64; 3]; setups.len()];
    // Per setup, CPU time of the readers (this process), the hub processes and PostgreSQL.
    let mut cpu = vec![[Duration::ZERO; 3]; setups.len()];
    for round in 0..rounds {
        for (index, (setup, took)) in setups.iter().zip(&mut times).enumerate() {
            let database = match setup {
                Setup::Sqlite => None,
                Setup::Postgres { .. } => {
                    let db = format!("ingest_{round}_{index}");
                    pg.create_database(&db);
                    let url = pg.url(&db);
                    let mut hub =
                        sonotap_hub::open_database(&hub_dir, Some(&url), NOW).expect("postgres");
                    for (id, key) in ids.iter().zip(&keys) {
                        hub.add_reader(id, key, NOW).expect("register");
                    }
                    Some(url)
                }
            };
            // SQLite's state is the hub directory itself: a fresh copy each run.
            let state = site.root.join(format!("hub-run-{round}-{index}"));
            copy_hub(&hub_dir, &state);
            let children: Vec<_> = (0..setup.processes())
                .map(|i| {
                    let log = state.join(format!("{i}.log"));
                    hub_process(&state, database.as_deref(), setup.writers(), &log)
                })
                .collect();
            let to = |i: usize| children[i % children.len()].url.as_str();
            let before = cpu_split();
            took.push(sync_all(&[(&dirs[0], to(0)), (&dirs[1], to(1))]));
            let after = cpu_split();
            for (sum, (a, b)) in cpu[index].iter_mut().zip(after.iter().zip(before)) {
                *sum += a.saturating_sub(b);
            }
            for child in children {
                if let Some([writes, total, longest]) = child.stop() {
                    let sum = &mut waits[index];
                    sum[0] += writes;
                    sum[1] += total;
                    sum[2] = sum[2].max(longest);
                }
            }
        }
    }
    let rate = |d: Duration| total as f64 / d.as_secs_f64();
    println!(
        "| hub state | hub processes | records | median wall time | records/s (median) | runs (records/s) |"
    );
    println!("| --- | --- | --- | --- | --- | --- |");
    for (setup, took) in setups.iter().zip(&mut times) {
        took.sort();
        let median = took[took.len() / 2];
        let runs: Vec<String> = took.iter().map(|d| format!("{:.0}", rate(*d))).collect();
        println!(
            "| {} | {} | {total} | {:.2} s | {:.0} | {} |",
            setup.name(),
            setup.processes(),
            median.as_secs_f64(),
            rate(median),
            runs.join(", ")
        );
    }
    for (setup, [readers, hubs, postgres]) in setups.iter().zip(&cpu) {
        let per = |d: &Duration| d.as_secs_f64() * 1e6 / (total * rounds) as f64;
        println!(
            "CPU per record, {}: readers {:.1} µs, hub processes {:.1} µs, PostgreSQL {:.1} µs",
            setup.name(),
            per(readers),
            per(hubs),
            per(postgres)
        );
    }
    for (setup, [writes, total, longest]) in setups.iter().zip(&waits).skip(1) {
        println!(
            "lock waits, {}: {writes} writes over {rounds} runs waited {total} ms in all \
             (longest {longest} ms)",
            setup.name()
        );
    }
    store_side_by_side(&pg, &hub_dir, &dirs, &ids, &keys, rounds);
    let [sqlite, one, two, one_single, two_single] =
        [0, 1, 2, 3, 4].map(|i| rate(times[i][times[i].len() / 2]));
    println!(
        "ratios of medians: PostgreSQL one process / SQLite {:.2}; two processes / one {:.2} \
         (default writers), {:.2} (one writer each)",
        one / sqlite,
        two / one,
        two_single / one_single
    );
}

/// Clearing alone, the part of an ingest that the hubs share: the same
/// checked batches stored through one PostgreSQL writer (both readers'
/// batches in turn) and through two writers at once (one reader each, as two
/// hub processes would), `rounds` times in turn, on fresh databases. The
/// signature checks, HTTP and the readers' work, which took most of the two
/// cores in the table above and which a fleet spreads over more machines,
/// are left out: what remains shows what the locks let run side by side.
fn store_side_by_side(
    pg: &pg_server::PgServer,
    hub_dir: &Path,
    dirs: &[std::path::PathBuf; 2],
    ids: &[&str; 2],
    keys: &[PublicKey],
    rounds: usize,
) {
    let batches: Vec<Vec<Vec<u8>>> = dirs
        .iter()
        .map(|dir| {
            rusqlite::Connection::open(dir.join("reader.db"))
                .expect("db")
                .execute("UPDATE records SET synced_at = NULL", [])
                .expect("reset");
            let reader = Reader::open(dir).expect("reader");
            let (mut all, mut after) = (Vec::new(), 0);
            while let Some(batch) = reader.next_batch(after, BATCH, NOW).expect("batch") {
                after = batch.last_seq();
                all.push(batch.encode().expect("encode"));
            }
            all
        })
        .collect();
    let records: usize = dirs
        .iter()
        .map(|d| {
            Reader::open(d)
                .expect("reader")
                .summary()
                .expect("summary")
                .unsynced as usize
        })
        .sum();
    // A fresh database with the readers registered, and `n` writers on it.
    let writers = |name: String, n: usize| -> Vec<Hub> {
        pg.create_database(&name);
        let url = pg.url(&name);
        let mut first = sonotap_hub::open_database(hub_dir, Some(&url), NOW).expect("postgres");
        for (id, key) in ids.iter().zip(keys) {
            first.add_reader(id, key, NOW).expect("register");
        }
        let mut all = vec![first];
        while all.len() < n {
            all.push(
                all[0]
                    .another_writer()
                    .expect("PostgreSQL")
                    .expect("writer"),
            );
        }
        all
    };
    let check = |hub: &mut Hub, reader: &[Vec<u8>]| -> Vec<sonotap_hub::verify::CheckedBatch> {
        reader
            .iter()
            .map(|b| hub.admit(b).expect("admit").check().expect("check"))
            .collect()
    };
    let (mut one, mut two) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let mut hubs = writers(format!("store_{round}_one"), 1);
        let checked: Vec<_> = batches.iter().map(|b| check(&mut hubs[0], b)).collect();
        let started = Instant::now();
        for i in 0..checked.iter().map(Vec::len).max().unwrap_or(0) {
            for reader in &checked {
                if let Some(batch) = reader.get(i) {
                    hubs[0]
                        .store(batch, Via::Import, NOW * 1000)
                        .expect("store");
                }
            }
        }
        one.push(started.elapsed());

        let mut hubs = writers(format!("store_{round}_two"), 2);
        let checked: Vec<_> = batches.iter().map(|b| check(&mut hubs[0], b)).collect();
        let started = Instant::now();
        std::thread::scope(|s| {
            for (hub, reader) in hubs.iter_mut().zip(&checked) {
                s.spawn(move || {
                    for batch in reader {
                        hub.store(batch, Via::Import, NOW * 1000).expect("store");
                    }
                });
            }
        });
        two.push(started.elapsed());
    }
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let rate = |d: Duration| records as f64 / d.as_secs_f64();
    let (one, two) = (median(&mut one), median(&mut two));
    println!(
        "clearing alone (PostgreSQL store of checked batches, {records} records, medians of \
         {rounds}): one writer {:.0} records/s, two writers on disjoint readers at once {:.0} \
         records/s, ratio {:.2}",
        rate(one),
        rate(two),
        rate(two) / rate(one)
    );
}

fn main() {
    let records = common::arg("--records", 1_000_000);
    let offline = common::arg("--offline", 100_000);
    if flag("--postgres") {
        postgres_table(records, common::arg("--rounds", 3).max(1));
        return;
    }
    println!("sync bench: {records} queued records, batches of {BATCH}");
    let mut site = site();
    let reader_dir = reader_with_queue(&mut site, "bench-a", records);
    let hub_dir = site.root.join("hub");
    let fresh_hub = site.root.join("hub-fresh");
    drop(std::mem::replace(
        &mut site.hub,
        Hub::open(&hub_dir).expect("hub"),
    ));
    copy_hub(&hub_dir, &fresh_hub);

    // 1. Network sync.
    let (addr, handle, stop) = serve(&hub_dir);
    if !flag("--skip-sync") {
        let url = format!("http://{addr}");
        let client = HubClient::new(
            &HubUrls::check(&[&url]).expect("url"),
            None,
            Duration::from_secs(120),
        )
        .expect("client");
        let mut reader = Reader::open(&reader_dir).expect("reader");
        let options = SyncOptions {
            batch_size: BATCH,
            ..SyncOptions::default()
        };
        let started = Instant::now();
        let report = client::sync_once(&mut reader, &client, &options, &mut |_| {}).expect("sync");
        let took = started.elapsed();
        assert_eq!(report.records as usize, records);
        println!(
            "sync: {} records in {:.1} s = {:.0} records/s (target: 1,000,000 in <= 60 s)",
            report.records,
            took.as_secs_f64(),
            report.records as f64 / took.as_secs_f64()
        );
    }

    // 2. Hub ingest alone, on fresh copies of the hub, under each
    // record-signature policy (the default first).
    let reread = Reader::open(&reader_dir).expect("reader");
    let mut batches = Vec::new();
    let mut after = 0;
    // The records are synced now; rebuild the batches from the same rows.
    let conn = rusqlite::Connection::open(reader_dir.join("reader.db")).expect("db");
    conn.execute("UPDATE records SET synced_at = NULL", [])
        .expect("reset");
    while let Some(batch) = reread.next_batch(after, BATCH, NOW).expect("batch") {
        after = batch.last_seq();
        batches.push(batch.encode().expect("encode"));
    }
    let per_record = |d: Duration| d.as_secs_f64() * 1e6 / records as f64;
    for (name, policy) in [
        (
            "batch signature + last record's",
            RecordSignatureCheck::BatchAndLast,
        ),
        ("every record signature", RecordSignatureCheck::Every),
    ] {
        let copy = site.root.join(format!("hub-{policy:?}"));
        copy_hub(&fresh_hub, &copy);
        let mut hub = Hub::open(&copy).expect("hub");
        hub.set_record_signatures(policy);
        let started = Instant::now();
        let (mut checking, mut storing) = (Duration::ZERO, Duration::ZERO);
        let (mut checking_cpu, mut storing_cpu) = (Duration::ZERO, Duration::ZERO);
        for bytes in &batches {
            let (t, cpu) = (Instant::now(), cpu_time(libc::CLOCK_PROCESS_CPUTIME_ID));
            let checked = hub.admit(bytes).expect("admit").check().expect("check");
            checking += t.elapsed();
            checking_cpu += cpu_time(libc::CLOCK_PROCESS_CPUTIME_ID) - cpu;
            let (t, cpu) = (Instant::now(), cpu_time(libc::CLOCK_THREAD_CPUTIME_ID));
            hub.store(&checked, Via::Import, NOW * 1000).expect("store");
            storing += t.elapsed();
            storing_cpu += cpu_time(libc::CLOCK_THREAD_CPUTIME_ID) - cpu;
        }
        let sequential = started.elapsed();
        println!(
            "ingest, {name}: split per record: checks {:.1} µs wall, {:.1} µs CPU (all threads); \
             store {:.1} µs wall, {:.1} µs CPU",
            per_record(checking),
            per_record(checking_cpu),
            per_record(storing),
            per_record(storing_cpu)
        );
        println!(
            "ingest, {name}: one batch at a time (checks, then store): {:.0} records/s",
            records as f64 / sequential.as_secs_f64()
        );
        // As the server runs it: the next batch's signatures are checked
        // while the previous one is stored (on another fresh copy).
        let copy = site.root.join(format!("hub-{policy:?}-pipelined"));
        copy_hub(&fresh_hub, &copy);
        let mut hub = Hub::open(&copy).expect("hub");
        hub.set_record_signatures(policy);
        let admitted: Vec<_> = batches
            .iter()
            .map(|b| hub.admit(b).expect("admit"))
            .collect();
        let started = Instant::now();
        std::thread::scope(|s| {
            let (tx, rx) = mpsc::sync_channel(1);
            s.spawn(move || {
                for a in admitted {
                    if tx.send(a.check().expect("check")).is_err() {
                        break;
                    }
                }
            });
            for checked in rx {
                hub.store(&checked, Via::Import, NOW * 1000).expect("store");
            }
        });
        let pipelined = started.elapsed();
        println!(
            "ingest, {name}: hub alone (signature checks + clearing + SQLite), checks of the \
             next batch overlapping the store of the previous: {:.0} records/s \
             (target >= 50,000); {:.2}x one batch at a time",
            records as f64 / pipelined.as_secs_f64(),
            sequential.as_secs_f64() / pipelined.as_secs_f64()
        );
    }
    let issuers = Hub::open(&fresh_hub)
        .expect("hub")
        .trusted_keys()
        .expect("keys");
    if let Some(first) = batches.first() {
        let batch = sonotap_protocol::wire::Batch::decode(first).expect("batch");
        let key = reread.public_key();
        let t = Instant::now();
        let checked = sonotap_hub::verify::check_batch(
            batch.clone(),
            key.verifying_key(),
            &issuers,
            RecordSignatureCheck::Every,
        )
        .expect("check");
        let batched = t.elapsed();
        let t = Instant::now();
        for (r, c) in batch.chained().iter().zip(&checked.records) {
            let token = Token::decode(&c.token).expect("token");
            let wallet = VerifyingKey::from_bytes(&token.credential.terms.wallet_key).expect("key");
            key.verifying_key()
                .verify_strict(&r.body.encode(), &Signature::from_bytes(r.signature))
                .expect("reader sig");
            wallet
                .verify_strict(
                    &token.payment_message(),
                    &Signature::from_bytes(&token.wallet_signature),
                )
                .expect("wallet sig");
        }
        let strict = t.elapsed();
        println!(
            "signature checks on one batch of {}: batched on all cores {:.1} µs/record, \
             one-by-one verify_strict on one core {:.1} µs/record (ratio {:.1}x)",
            batch.records.len(),
            batched.as_secs_f64() * 1e6 / batch.records.len() as f64,
            strict.as_secs_f64() * 1e6 / batch.records.len() as f64,
            strict.as_secs_f64() / batched.as_secs_f64()
        );
    }

    // 3. Taps while a week offline syncs.
    if flag("--skip-taps") {
        let _ = stop.send(());
        let _ = handle.join();
        return;
    }
    let offline_dir = reader_with_queue(&mut site, "bench-b", offline);
    drop(site.hub);
    let mut tapper = Reader::open(&offline_dir).expect("reader");
    let wallet = SigningKey::from_bytes(&[77; 32]);
    let credential = issue(&mut Hub::open(&hub_dir).expect("hub"), &wallet);
    let mut counter = 0u32;
    let mut tap = |reader: &mut Reader| {
        counter += 1;
        let payment = PaymentTerms {
            amount: 250,
            counter,
            total_before: (counter - 1) * 250,
            timestamp: NOW as u32,
            reader_tag: 0,
        };
        let token = Token::sign(credential, payment, &wallet)
            .expect("token")
            .encode();
        let t = Instant::now();
        let outcome = reader
            .present(&token, NonZeroU32::new(250), NOW)
            .expect("present");
        let took = t.elapsed();
        assert!(outcome.decision.is_ok(), "{:?}", outcome.decision);
        took
    };
    let idle: Vec<Duration> = (0..200)
        .map(|_| {
            std::thread::sleep(Duration::from_millis(10));
            tap(&mut tapper)
        })
        .collect();
    // The hub of a real site runs on another machine: here it runs as its own
    // process at the lowest CPU priority, so that what the taps feel is the
    // reader's side of the sync (reads, marks, WAL), not the hub's
    // signature checks competing for the same two cores.
    let mut remote = std::process::Command::new("nice")
        .args([
            "-n",
            "19",
            env!("CARGO_BIN_EXE_sonotap"),
            "hub",
            "serve",
            "--data",
        ])
        .arg(&hub_dir)
        .args(["--listen", "127.0.0.1:0"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("hub process");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(remote.stdout.take().expect("stdout")),
        &mut line,
    )
    .expect("address");
    let sync_url = line.split_whitespace().nth(2).expect("url").to_owned();
    let sync_dir = offline_dir.clone();
    let syncing = std::thread::spawn(move || {
        let client = HubClient::new(
            &HubUrls::check(&[&sync_url]).expect("url"),
            None,
            Duration::from_secs(120),
        )
        .expect("client");
        let mut reader = Reader::open(&sync_dir).expect("reader");
        let options = SyncOptions {
            batch_size: 2_000,
            ..SyncOptions::default()
        };
        let t = Instant::now();
        let report = client::sync_once(&mut reader, &client, &options, &mut |_| {}).expect("sync");
        (report.records, t.elapsed())
    });
    let mut during = Vec::new();
    while !syncing.is_finished() {
        std::thread::sleep(Duration::from_millis(10));
        during.push(tap(&mut tapper));
    }
    let (synced, took) = syncing.join().expect("sync thread");
    println!(
        "taps while {synced} offline records sync ({:.1} s): idle {}; during sync {}",
        took.as_secs_f64(),
        percentiles(idle),
        percentiles(during)
    );
    let _ = remote.kill();
    let _ = remote.wait();
    let _ = stop.send(());
    let _ = handle.join();
}
