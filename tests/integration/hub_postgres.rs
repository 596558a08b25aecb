//! Issue 15 through the real binary: every `hub` command works against
//! PostgreSQL (`--database URL` or `$SONOTAP_HUB_DATABASE`), `hub serve`
//! processes started together on an empty database all start, and the
//! hub logs one structured line per request.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use crate::pg_server;
use crate::util::{
    HUB_DATABASE_ENV, HUB_SERVE, HubProcess, Scratch, first_stdout_line, last_json, reader_totals,
    sonotap, succeeded,
};

/// Runs `sonotap ARGS` in `s` with `envs` (and without the caller's
/// `$SONOTAP_HUB_DATABASE` unless given).
fn run_env(s: &Scratch, args: &[&str], envs: &[(&str, &str)]) -> Output {
    sonotap()
        .args(args)
        .env_remove(HUB_DATABASE_ENV)
        .envs(envs.iter().copied())
        .current_dir(s.dir.path())
        .output()
        .expect("sonotap runs")
}

/// [`run_env`], requiring success; stdout.
fn ok_env(s: &Scratch, args: &[&str], envs: &[(&str, &str)]) -> String {
    succeeded(args, run_env(s, args, envs))
}

/// `ARGS --database URL`, requiring success; stdout.
fn ok_db(s: &Scratch, args: &[&str], url: &str) -> String {
    let mut all = args.to_vec();
    all.extend(["--database", url]);
    ok_env(s, &all, &[])
}

/// One tap: `wallet pay` from `w` for `amount`, `reader accept` at `reader`;
/// the reader's JSON answer.
fn tap(s: &Scratch, reader: &str, amount: u32, n: u32) -> serde_json::Value {
    let token = format!("t{n}");
    let amount = amount.to_string();
    ok_env(
        s,
        &[
            "wallet", "pay", "--dir", "w", "--amount", &amount, "--out", &token,
        ],
        &[],
    );
    last_json(&run_env(
        s,
        &["reader", "accept", "--data", reader, &token],
        &[],
    ))
}

fn report(s: &Scratch, url: &str) -> serde_json::Value {
    serde_json::from_str(&ok_db(
        s,
        &["hub", "report", "--data", "hub", "--json"],
        url,
    ))
    .expect("report JSON")
}

fn sync(s: &Scratch, reader: &str, hub: &HubProcess) -> serde_json::Value {
    let out = s.reader_sync(reader, &hub.url, &[]);
    assert!(
        out.status.success(),
        "sync: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    last_json(&out)
}

#[test]
fn issue15_01_the_whole_operator_flow_runs_on_postgresql() {
    let Some(server) = pg_server::PgServer::start() else {
        return;
    };
    server.create_database("ops");
    let url = server.url("ops");
    let s = Scratch::new();

    // The hub directory holds the issuer key; the state is in PostgreSQL.
    let init = ok_db(&s, &["hub", "init", "--data", "hub"], &url);
    assert!(init.contains("state postgres://"), "{init}");
    assert!(!s.path("hub/hub.db").exists(), "init made a SQLite file");

    let wallet = ok_env(&s, &["wallet", "new", "--dir", "w"], &[]);
    let wallet_id = wallet
        .split_whitespace()
        .nth(1)
        .expect("wallet id")
        .to_owned();
    let from = (crate::util::unix_now() - 3600).to_string();
    let issued = ok_db(
        &s,
        &[
            "hub",
            "issue",
            "--data",
            "hub",
            "--wallet-key",
            "w/wallet.pub",
            "--limit",
            "5000",
            "--per-payment",
            "300",
            "--valid-hours",
            "48",
            "--valid-from",
            &from,
            "--out",
            "cred",
        ],
        &url,
    );
    assert!(issued.contains(&wallet_id), "{issued}");
    ok_env(&s, &["wallet", "add-credential", "--dir", "w", "cred"], &[]);
    let mut db = postgres::Client::connect(&url, postgres::NoTls).expect("psql");
    let logged: i64 = db
        .query_one(
            "SELECT count(*) FROM credentials WHERE wallet_id = $1",
            &[&hex::decode(&wallet_id).expect("hex")],
        )
        .expect("credentials table")
        .try_get(0)
        .expect("a count");
    assert_eq!(logged, 1, "the issued credential is recorded in PostgreSQL");

    s.reader_init("r", "gate-1", &[]);
    let added = ok_db(
        &s,
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
        &url,
    );
    assert!(added.contains("reader gate-1 registered"), "{added}");
    for n in 1..=2 {
        assert_eq!(tap(&s, "r", 100, n)["decision"], "accept");
    }

    let hub = HubProcess::start_with(&s, &["--database", &url]);
    assert_eq!(sync(&s, "r", &hub)["records"], 2);
    // On PostgreSQL an upload's log line says how long it waited for locks.
    let stored = log_lines(&s, "/v1/batches", 200);
    assert!(
        stored.len() == 1 && stored[0].contains("lock_wait_ms="),
        "{stored:?}"
    );
    assert_eq!(reader_totals(&report(&s, &url), "gate-1"), (2, 200));
    // Without the database named, the hub directory has no state at all:
    // an error, never an empty report from some other file.
    let bare = run_env(&s, &["hub", "report", "--data", "hub"], &[]);
    assert_eq!(
        bare.status.code(),
        Some(2),
        "{}",
        crate::util::stderr(&bare)
    );

    // An operator's deny reaches the reader through its next sync.
    let denied = ok_db(
        &s,
        &["hub", "deny", "--data", "hub", "--wallet", &wallet_id],
        &url,
    );
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&denied).expect("json")["version"],
        1
    );
    assert_eq!(sync(&s, "r", &hub)["deny_entries"], 1);
    let declined = tap(&s, "r", 100, 3);
    assert_eq!(declined["reason"], "wallet_denied", "{declined}");
    ok_db(
        &s,
        &["hub", "allow", "--data", "hub", "--wallet", &wallet_id],
        &url,
    );
    assert_eq!(sync(&s, "r", &hub)["deny_entries"], 1);
    assert_eq!(tap(&s, "r", 100, 4)["decision"], "accept");

    // The environment variable names the database for every command; the
    // flag wins over it. A reader with no network: export, then import.
    let env = [(HUB_DATABASE_ENV, url.as_str())];
    s.reader_init("r2", "gate-2", &[]);
    ok_env(
        &s,
        &[
            "hub",
            "reader",
            "add",
            "--data",
            "hub",
            "--id",
            "gate-2",
            "--key",
            "r2/reader.pub",
        ],
        &env,
    );
    assert_eq!(tap(&s, "r2", 250, 5)["decision"], "accept");
    ok_env(
        &s,
        &["reader", "export", "--data", "r2", "--out", "site.batch"],
        &[],
    );
    let imported = ok_env(&s, &["hub", "import", "--data", "hub", "site.batch"], &env);
    assert!(imported.contains("\"status\":\"stored\""), "{imported}");
    let nowhere = "postgres://nobody@127.0.0.1:1/nowhere";
    let flag_wins = ok_env(
        &s,
        &[
            "hub",
            "report",
            "--data",
            "hub",
            "--json",
            "--database",
            &url,
        ],
        &[(HUB_DATABASE_ENV, nowhere)],
    );
    let r: serde_json::Value = serde_json::from_str(&flag_wins).expect("json");
    assert_eq!(reader_totals(&r, "gate-2"), (1, 250));
    assert_eq!(reader_totals(&r, "gate-1"), (2, 200), "not synced yet: {r}");
    assert_eq!(r["deny_version"], 2);
    assert_eq!(sync(&s, "r", &hub)["records"], 1);
    assert_eq!(reader_totals(&report(&s, &url), "gate-1"), (3, 300));
    // Stopped as an operator stops it, the hub sums the lock waits of its writes (the two uploads).
    let mut hub = hub;
    hub.terminate();
    let log = std::fs::read_to_string(s.path("hub.stderr")).expect("hub log");
    assert!(
        log.lines()
            .any(|l| l.contains("lock waits") && l.contains("writes=2") && l.contains("total_ms=")),
        "{log}"
    );

    // An unreachable database: a clear error, naming where the URL came from.
    let out = run_env(
        &s,
        &["hub", "report", "--data", "hub"],
        &[(HUB_DATABASE_ENV, nowhere)],
    );
    let err = crate::util::stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("$SONOTAP_HUB_DATABASE")
            && err.contains("connection refused by 127.0.0.1:1")
            && err.contains("is PostgreSQL running"),
        "{err}"
    );
}

/// Issue 15, item 2, through real processes: `hub serve` processes started
/// at the same instant on an empty database all start.
#[test]
fn issue15_02_hub_serve_processes_started_together_on_an_empty_database_all_start() {
    const PROCESSES: usize = 4;
    const ROUNDS: usize = 3;
    let Some(server) = pg_server::PgServer::start() else {
        return;
    };
    let s = Scratch::new();
    s.ok(&["hub", "init", "--data", "hub"]);
    for round in 0..ROUNDS {
        let db = format!("serve{round}");
        server.create_database(&db);
        let url = server.url(&db);
        let mut children: Vec<_> = (0..PROCESSES)
            .map(|_| {
                sonotap()
                    .args(HUB_SERVE)
                    .args(["--database", &url])
                    .env_remove(HUB_DATABASE_ENV)
                    .current_dir(s.dir.path())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .expect("hub starts")
            })
            .collect();
        let lines: Vec<Option<String>> = children
            .iter_mut()
            .map(|c| first_stdout_line(c, Duration::from_secs(60)))
            .collect();
        let mut errors = Vec::new();
        for (child, line) in children.into_iter().zip(&lines) {
            let mut child = child;
            let _ = child.kill();
            let out = child.wait_with_output().expect("reaped");
            if line
                .as_deref()
                .is_none_or(|l| !l.starts_with("listening on"))
            {
                errors.push(String::from_utf8_lossy(&out.stderr).into_owned());
            }
        }
        assert!(errors.is_empty(), "round {round}: {errors:?}");
    }
}

/// A request on a connection of its own; the answer's status.
fn status_of(hub: &HubProcess, head: &str, body: &[u8]) -> u16 {
    let mut stream = TcpStream::connect(("127.0.0.1", hub.port)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(15)))
        .expect("timeout");
    stream.write_all(head.as_bytes()).expect("head");
    stream.write_all(body).expect("body");
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer)
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status line")
}

/// The hub's log lines for `path` with status `status`, waiting up to 10 s
/// for one to appear.
fn log_lines(s: &Scratch, path: &str, status: u16) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let (path, status) = (format!("path=\"{path}\""), format!("status={status} "));
    loop {
        let log = std::fs::read_to_string(s.path("hub.stderr")).expect("hub log");
        let lines: Vec<String> = log
            .lines()
            .filter(|l| l.contains(" request ") && l.contains(&path) && l.contains(&status))
            .map(str::to_owned)
            .collect();
        if !lines.is_empty() || Instant::now() > deadline {
            return lines;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn issue15_04_the_hub_logs_each_request_with_its_reader_status_records_and_why() {
    let s = Scratch::new();
    s.provision(None);
    s.register_reader("r", "gate-1");
    s.ok(&[
        "wallet", "pay", "--dir", "w", "--amount", "120", "--out", "t",
    ]);
    s.ok(&["reader", "accept", "--data", "r", "t"]);
    let hub = HubProcess::start_with(&s, &[]);

    // OK: an upload by gate-1 of its one record.
    let out = s.reader_sync("r", &hub.url, &[]);
    assert!(out.status.success(), "{}", crate::util::stderr(&out));
    let ok = log_lines(&s, "/v1/batches", 200);
    assert_eq!(ok.len(), 1, "{ok:?}");
    for field in [
        "INFO",
        "method=\"POST\"",
        "reader=\"gate-1\"",
        "records=1",
        "ms=",
    ] {
        assert!(ok[0].contains(field), "{field} in {}", ok[0]);
    }
    // The sync's signed reads name the reader too.
    let deny = log_lines(&s, "/v1/deny", 200);
    assert!(
        deny.iter().any(|l| l.contains("reader=\"gate-1\"")),
        "{deny:?}"
    );

    // Refused: a read signed by a reader the hub does not know. The answer
    // says only "needs a request signed by a registered reader"; the log
    // says which reader and why.
    let key = sonotap_disk::keys::SecretKey::generate(sonotap_disk::keys::Role::Reader, None)
        .expect("key");
    let now_ms = crate::util::unix_now() * 1000;
    let request = sonotap_protocol::wire::SignedRequest::sign(
        "gate-9",
        now_ms,
        [7; 16],
        "GET",
        "/v1/keys",
        key.signing_key(),
    )
    .expect("sign");
    let head = format!(
        "GET /v1/keys HTTP/1.1\r\nHost: hub\r\nAuthorization: Sonotap {}\r\n\
         Connection: close\r\n\r\n",
        hex::encode(request.encode().expect("encode"))
    );
    assert_eq!(status_of(&hub, &head, b""), 401);
    let refused = log_lines(&s, "/v1/keys", 401);
    assert_eq!(refused.len(), 1, "{refused:?}");
    for field in [
        "WARN",
        "method=\"GET\"",
        "ms=",
        "why=",
        "gate-9",
        "is not registered",
    ] {
        assert!(refused[0].contains(field), "{field} in {}", refused[0]);
    }

    // Malformed: an upload whose body is not a batch.
    let body = b"not a batch at all";
    let head = format!(
        "POST /v1/batches HTTP/1.1\r\nHost: hub\r\nContent-Type: application/octet-stream\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    assert_eq!(status_of(&hub, &head, body), 400);
    let malformed = log_lines(&s, "/v1/batches", 400);
    assert_eq!(malformed.len(), 1, "{malformed:?}");
    for field in ["WARN", "method=\"POST\"", "status=400", "ms=", "why="] {
        assert!(malformed[0].contains(field), "{field} in {}", malformed[0]);
    }
    assert!(!malformed[0].contains("reader="), "{}", malformed[0]);
}
