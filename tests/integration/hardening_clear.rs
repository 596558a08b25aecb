//! Issue 13, items 6 and 7 through the real binary: a zero-length or
//! schema-less database is refused outside `init`, and the PostgreSQL
//! password comes from a password file instead of the command line.
//! (Item 2, bounded voids, is pinned in `src/hub/postgres/tests.rs` on both
//! backends.)

use std::os::unix::fs::PermissionsExt;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use crate::pg_server;
use crate::util::{HUB_SERVE, Scratch, first_stdout_line, sonotap};

/// Runs `sonotap ARGS` in `s` and kills it should it still run after
/// `limit` (a command that took an empty database for a new one would
/// serve forever).
fn run_bounded(s: &Scratch, args: &[&str], envs: &[(&str, &str)], limit: Duration) -> Output {
    let mut child = sonotap()
        .args(args)
        .envs(envs.iter().copied())
        .current_dir(s.dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("sonotap runs");
    let start = Instant::now();
    while child.try_wait().expect("wait").is_none() {
        if start.elapsed() > limit {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("output")
}

/// The command exits 2 with a message naming the file as corrupt and the remedy.
fn assert_refused_as_corrupt(out: &Output, file: &str, why: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(file), "{stderr}");
    assert!(stderr.contains("is corrupt"), "{stderr}");
    assert!(stderr.contains("restore from backup"), "{stderr}");
    assert!(stderr.contains(why), "{stderr}");
}

const WALLET: &str = "0011223344556677";

fn hub_commands() -> [Vec<&'static str>; 3] {
    [
        vec!["hub", "serve", "--data", "hub", "--listen", "127.0.0.1:0"],
        vec!["hub", "report", "--data", "hub"],
        vec!["hub", "deny", "--data", "hub", "--wallet", WALLET],
    ]
}

#[test]
fn issue13_06_zero_length_hub_db_is_refused_by_serve_report_and_deny() {
    let s = Scratch::new();
    s.ok(&["hub", "init", "--data", "hub"]);
    let db = s.path("hub/hub.db");
    std::fs::write(&db, b"").expect("truncate");
    for args in hub_commands() {
        let out = run_bounded(&s, &args, &[], Duration::from_secs(30));
        assert_refused_as_corrupt(&out, "hub.db", "empty (0 bytes)");
        assert_eq!(
            std::fs::metadata(&db).expect("still there").len(),
            0,
            "{args:?} wrote to the empty file"
        );
    }
}

#[test]
fn issue13_06_schema_less_or_foreign_sqlite_file_is_refused_as_hub_db() {
    let s = Scratch::new();
    s.ok(&["hub", "init", "--data", "hub"]);
    let db = s.path("hub/hub.db");
    std::fs::remove_file(&db).expect("remove");
    {
        let conn = rusqlite::Connection::open(&db).expect("create");
        conn.execute_batch("CREATE TABLE notes (text TEXT); INSERT INTO notes VALUES ('x');")
            .expect("foreign table");
    }
    assert!(std::fs::metadata(&db).expect("file").len() > 0);
    for args in hub_commands() {
        let out = run_bounded(&s, &args, &[], Duration::from_secs(30));
        assert_refused_as_corrupt(&out, "hub.db", "no sonotap schema version");
    }
    // A reader's database put in the hub's place: versioned, but not a hub's.
    s.reader_init("r", "gate-1", &[]);
    std::fs::remove_file(&db).expect("remove");
    std::fs::copy(s.path("r/reader.db"), &db).expect("copy");
    let out = run_bounded(&s, &hub_commands()[1], &[], Duration::from_secs(30));
    assert_refused_as_corrupt(&out, "hub.db", "no `issuer_keys` table");
}

#[test]
fn issue13_06_zero_length_reader_db_is_refused_not_given_a_new_schema() {
    let s = Scratch::new();
    s.ok(&["hub", "init", "--data", "hub"]);
    s.reader_init("r", "gate-1", &[]);
    let db = s.path("r/reader.db");
    for suffix in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(s.path(&format!("r/reader.db{suffix}")));
    }
    std::fs::write(&db, b"").expect("truncate");
    for args in [
        vec!["reader", "queue", "--data", "r"],
        vec!["reader", "deny", "--data", "r", "--wallet", WALLET],
    ] {
        let out = run_bounded(&s, &args, &[], Duration::from_secs(30));
        assert_refused_as_corrupt(&out, "reader.db", "empty (0 bytes)");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("belongs to"), "{stderr}");
        assert_eq!(std::fs::metadata(&db).expect("still there").len(), 0);
    }
    // A schema-less SQLite file in its place.
    std::fs::remove_file(&db).expect("remove");
    rusqlite::Connection::open(&db)
        .and_then(|c| c.execute_batch("CREATE TABLE t (x)"))
        .expect("foreign");
    let out = run_bounded(
        &s,
        &["reader", "queue", "--data", "r"],
        &[],
        Duration::from_secs(30),
    );
    assert_refused_as_corrupt(&out, "reader.db", "no sonotap schema version");
}

/// Starts `hub serve --database URL` with `envs`; the first stdout line
/// (its address) if it started, and everything it wrote to stderr.
fn serve_postgres(s: &Scratch, url: &str, envs: &[(&str, &str)]) -> (Option<String>, String) {
    let mut child = sonotap()
        .args(HUB_SERVE)
        .args(["--database", url])
        .env_remove("PGPASSWORD")
        .env_remove("PGPASSFILE")
        .env("HOME", s.dir.path())
        .envs(envs.iter().copied())
        .current_dir(s.dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("hub starts");
    let line = first_stdout_line(&mut child, Duration::from_secs(60));
    let _ = child.kill();
    let out = child.wait_with_output().expect("reaped");
    (line, String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn issue13_07_postgres_password_from_a_0600_passfile_not_from_a_0644_one() {
    let Some(server) = pg_server::PgServer::start() else {
        return;
    };
    let s = Scratch::new();
    s.ok(&["hub", "init", "--data", "hub"]);
    let port = server.port();
    // TCP needs the role's password (SCRAM); the URL carries none.
    let url = format!(
        "postgres://{}@127.0.0.1:{port}/postgres?sslmode=disable",
        pg_server::USER
    );
    let passfile = s.path("pgpass");
    std::fs::write(
        &passfile,
        format!(
            "# hub\n127.0.0.1:{port}:other:*:wrong\n127.0.0.1:{port}:postgres:{}:{}\n",
            pg_server::USER,
            pg_server::PASSWORD
        ),
    )
    .expect("passfile");
    let passfile_env = passfile.display().to_string();
    let env = [("PGPASSFILE", passfile_env.as_str())];

    std::fs::set_permissions(&passfile, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let (line, stderr) = serve_postgres(&s, &url, &env);
    assert!(line.is_some(), "no start with a 0600 passfile: {stderr}");
    assert!(!stderr.contains("warning"), "{stderr}");

    std::fs::set_permissions(&passfile, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let (line, stderr) = serve_postgres(&s, &url, &env);
    assert_eq!(
        line, None,
        "started with a world-readable passfile: {stderr}"
    );
    assert!(
        stderr.contains("has group or world access") && stderr.contains("0600"),
        "{stderr}"
    );
    assert!(
        stderr.contains("asks for a password and none was found"),
        "{stderr}"
    );
    assert!(!stderr.contains(pg_server::PASSWORD), "{stderr}");

    // ~/.pgpass when PGPASSFILE is not set.
    std::fs::copy(&passfile, s.path(".pgpass")).expect("copy");
    std::fs::set_permissions(s.path(".pgpass"), std::fs::Permissions::from_mode(0o600))
        .expect("chmod");
    let (line, stderr) = serve_postgres(&s, &url, &[]);
    assert!(line.is_some(), "no start with ~/.pgpass: {stderr}");
    std::fs::remove_file(s.path(".pgpass")).expect("remove");

    // PGPASSWORD works too; a password in the URL works, with a warning.
    let (line, stderr) = serve_postgres(&s, &url, &[("PGPASSWORD", pg_server::PASSWORD)]);
    assert!(line.is_some(), "no start with PGPASSWORD: {stderr}");
    let (line, stderr) = serve_postgres(&s, &server.tcp_url("postgres", pg_server::PASSWORD), &[]);
    assert!(line.is_some(), "no start with the URL's password: {stderr}");
    assert!(
        stderr.contains("/proc/PID/cmdline") && stderr.contains("PGPASSFILE"),
        "{stderr}"
    );
    assert!(!stderr.contains(pg_server::PASSWORD), "{stderr}");
}
