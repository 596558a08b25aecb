//! A throwaway PostgreSQL cluster for tests: `initdb` into a temporary
//! directory, `pg_ctl start` on a free loopback port and a Unix socket in
//! that directory, `pg_ctl stop -m immediate` on drop.
//!
//! Depends only on `std` and `tempfile`, so an integration test can include
//! it with `#[path = "../../crates/hub/src/backend/postgres/test_server.rs"] mod pg_server;`.
//!
//! - The binaries come from `$SONOTAP_PG_BINDIR`, else the newest
//!   `/usr/lib/postgresql/N/bin` (Debian's layout), else `PATH`.
//! - Absent binaries: [`PgServer::start`] prints `skipped: PostgreSQL not
//!   installed` and returns `None`, unless `SONOTAP_REQUIRE_POSTGRES=1`
//!   (CI), where it panics.
//! - `initdb` refuses to run as root: as root the binaries run as the
//!   `postgres` user (Debian's package creates it), else `nobody`, through
//!   `runuser`, with the cluster's directories owned by that user.
//! - Unix-socket connections are trusted; TCP (127.0.0.1 only) needs the
//!   password [`PASSWORD`] (SCRAM), so wrong-password errors can be tested.
//! - Every command has a time limit, and a watchdog stops the cluster if
//!   the test process dies without dropping it.

#![allow(dead_code)]

use std::fs::{self, File};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The cluster's superuser.
pub const USER: &str = "sonotap";
/// Its password, for TCP connections.
pub const PASSWORD: &str = "sonotap-test-password";

const COMMAND_TIMEOUT: Duration = Duration::from_secs(90);

/// A running throwaway cluster.
pub struct PgServer {
    dir: tempfile::TempDir,
    bindir: PathBuf,
    run_as: Option<String>,
    port: u16,
    durability: Durability,
}

/// How the cluster treats the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// `fsync=off`, `synchronous_commit=off`: fast tests, a crash of the
    /// machine may lose the cluster (it is thrown away anyway).
    Throwaway,
    /// PostgreSQL's defaults (`fsync`, `synchronous_commit`,
    /// `full_page_writes` on): what an operator runs, for benchmarks
    /// compared with SQLite at `synchronous=FULL`.
    Durable,
}

impl PgServer {
    /// Starts a [`Durability::Throwaway`] cluster, or `None` (after saying
    /// so) when PostgreSQL is not installed.
    pub fn start() -> Option<Self> {
        Self::start_with(Durability::Throwaway)
    }

    /// Starts a cluster that syncs to disk as PostgreSQL does by default.
    pub fn start_durable() -> Option<Self> {
        Self::start_with(Durability::Durable)
    }

    fn start_with(durability: Durability) -> Option<Self> {
        let Some(bindir) = bindir() else {
            if std::env::var_os("SONOTAP_REQUIRE_POSTGRES").is_some_and(|v| v == "1") {
                panic!(
                    "PostgreSQL not installed (no initdb in $SONOTAP_PG_BINDIR, \
                     /usr/lib/postgresql/*/bin or PATH) but SONOTAP_REQUIRE_POSTGRES=1"
                );
            }
            eprintln!(
                "skipped: PostgreSQL not installed (no initdb in $SONOTAP_PG_BINDIR, \
                 /usr/lib/postgresql/*/bin or PATH)"
            );
            return None;
        };
        let run_as = if is_root() {
            Some(
                if user_exists("postgres") {
                    "postgres"
                } else {
                    "nobody"
                }
                .to_owned(),
            )
        } else {
            None
        };
        // As root, under /tmp: `$TMPDIR` may be a directory the other user cannot enter.
        let mut builder = tempfile::Builder::new();
        builder.prefix("sonotap-pg-");
        let dir = match run_as {
            Some(_) => builder.tempdir_in("/tmp"),
            None => builder.tempdir(),
        }
        .expect("temporary directory");
        set_mode(dir.path(), 0o755);
        for sub in ["data", "sock", "log"] {
            let path = dir.path().join(sub);
            fs::create_dir(&path).expect("cluster directory");
            set_mode(&path, if sub == "data" { 0o700 } else { 0o755 });
        }
        let pwfile = dir.path().join("log/pw");
        fs::write(&pwfile, PASSWORD).expect("password file");
        let mut server = Self {
            dir,
            bindir,
            run_as,
            port: 0,
            durability,
        };
        if let Some(user) = &server.run_as {
            let status = Command::new("chown")
                .arg("-R")
                .arg(format!("{user}:"))
                .args(["data", "sock", "log"].map(|s| server.dir.path().join(s)))
                .status()
                .expect("chown runs");
            assert!(status.success(), "chown to {user} failed");
        }
        server.watch();
        server.run(
            "initdb",
            &[
                "-D".as_ref(),
                server.data().as_os_str(),
                "-U".as_ref(),
                USER.as_ref(),
                "--auth-local=trust".as_ref(),
                "--auth-host=scram-sha-256".as_ref(),
                "--pwfile".as_ref(),
                pwfile.as_os_str(),
                "--no-sync".as_ref(),
                "--encoding=UTF8".as_ref(),
                "--locale=C".as_ref(),
            ],
        );
        // A port found free may be taken before the server binds it: retry.
        let mut last = String::new();
        for _ in 0..3 {
            server.port = free_port();
            match server.pg_ctl_start() {
                Ok(()) => return Some(server),
                Err(e) => last = e,
            }
        }
        panic!("PostgreSQL did not start: {last}");
    }

    /// `pg_ctl start` on this cluster's port and socket, waiting until it
    /// accepts connections.
    fn pg_ctl_start(&self) -> Result<(), String> {
        let sync = match self.durability {
            Durability::Throwaway => {
                " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
            }
            Durability::Durable => "",
        };
        let options = format!(
            "-k {} -p {} -c listen_addresses=127.0.0.1{sync}",
            self.socket_dir().display(),
            self.port
        );
        let log = self.dir.path().join("log/server.log");
        self.try_run(
            "pg_ctl",
            &[
                "-D".as_ref(),
                self.data().as_os_str(),
                "-l".as_ref(),
                log.as_os_str(),
                "-o".as_ref(),
                options.as_ref(),
                "-w".as_ref(),
                "-t".as_ref(),
                "60".as_ref(),
                "start".as_ref(),
            ],
        )
        .map_err(|e| format!("{e}\n{}", fs::read_to_string(&log).unwrap_or_default()))
    }

    /// Stops the server as a crash would (`pg_ctl stop -m immediate`:
    /// no checkpoint, every connection dropped; the next start recovers
    /// from the write-ahead log).
    pub fn crash(&self) -> Result<(), String> {
        self.try_run(
            "pg_ctl",
            &[
                "-D".as_ref(),
                self.data().as_os_str(),
                "-m".as_ref(),
                "immediate".as_ref(),
                "-w".as_ref(),
                "-t".as_ref(),
                "30".as_ref(),
                "stop".as_ref(),
            ],
        )
    }

    /// Starts the server again on the same port after [`Self::crash`].
    pub fn start_again(&self) -> Result<(), String> {
        self.pg_ctl_start()
    }

    /// Stops the cluster and removes its directory should this process
    /// end without dropping the server (an abort, SIGKILL, a CI time limit).
    fn watch(&self) {
        let pg_ctl = self.bindir.join("pg_ctl");
        let stop = match &self.run_as {
            Some(user) => format!("runuser -u {user} -- '{}'", pg_ctl.display()),
            None => format!("'{}'", pg_ctl.display()),
        };
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 1; done; \
             if [ -f '{data}/postmaster.pid' ]; then \
             {stop} -D '{data}' -m immediate -w -t 30 stop; fi; rm -rf '{dir}'",
            pid = std::process::id(),
            data = self.data().display(),
            dir = self.dir.path().display(),
        );
        // In a process group of its own, so that a signal to the test's
        // group (a time limit) leaves it to clean up, and detached from the
        // test's output so that it never holds a pipe open.
        let _ = Command::new("sh")
            .args(["-c", &script])
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The directory holding the server's Unix socket.
    pub fn socket_dir(&self) -> PathBuf {
        self.dir.path().join("sock")
    }

    /// The loopback TCP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A URL for database `db` over the Unix socket (trusted, no password).
    pub fn url(&self, db: &str) -> String {
        let socket = self.socket_dir().display().to_string().replace('/', "%2F");
        format!("postgres://{USER}@{socket}:{}/{db}", self.port)
    }

    /// A URL for database `db` over TCP on 127.0.0.1 with `password`.
    pub fn tcp_url(&self, db: &str, password: &str) -> String {
        format!(
            "postgres://{USER}:{password}@127.0.0.1:{}/{db}?sslmode=disable",
            self.port
        )
    }

    /// Creates database `db` with `createdb` (shipped with the server).
    pub fn create_database(&self, db: &str) {
        let socket = self.socket_dir();
        let port = self.port.to_string();
        self.run(
            "createdb",
            &[
                "-h".as_ref(),
                socket.as_os_str(),
                "-p".as_ref(),
                port.as_ref(),
                "-U".as_ref(),
                USER.as_ref(),
                db.as_ref(),
            ],
        );
    }

    fn run(&self, program: &str, args: &[&std::ffi::OsStr]) {
        if let Err(e) = self.try_run(program, args) {
            panic!("{e}");
        }
    }

    fn try_run(&self, program: &str, args: &[&std::ffi::OsStr]) -> Result<(), String> {
        let binary = self.bindir.join(program);
        let mut command = match &self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(&binary);
                c
            }
            None => Command::new(&binary),
        };
        let out_path = self.dir.path().join(format!("log/{program}.out"));
        let out = File::create(&out_path).map_err(|e| format!("{program} output file: {e}"))?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        command
            .args(args)
            .current_dir(self.dir.path())
            .env("LC_ALL", "C")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        let mut child = command
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", binary.display()))?;
        let start = Instant::now();
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if start.elapsed() > COMMAND_TIMEOUT => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!(
                        "{program} did not finish in {} s",
                        COMMAND_TIMEOUT.as_secs()
                    ));
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                Err(e) => return Err(format!("{program}: {e}")),
            }
        };
        if status.success() {
            Ok(())
        } else {
            Err(format!(
                "{program} failed ({status}):\n{}",
                fs::read_to_string(&out_path).unwrap_or_default()
            ))
        }
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        if self.port == 0 {
            return;
        }
        let data = self.data();
        let stopped = self.crash();
        if let Err(e) = stopped {
            eprintln!("pg_ctl stop: {e}");
            // Last resort: kill the postmaster by its pid file.
            if let Some(pid) = fs::read_to_string(data.join("postmaster.pid"))
                .ok()
                .and_then(|s| s.lines().next().map(str::to_owned))
            {
                let _ = Command::new("kill").args(["-9", pid.trim()]).status();
            }
        }
    }
}

/// Where `initdb`, `pg_ctl` and `createdb` are, if installed.
pub fn bindir() -> Option<PathBuf> {
    let has_initdb = |dir: &Path| dir.join("initdb").is_file();
    if let Some(dir) = std::env::var_os("SONOTAP_PG_BINDIR") {
        let dir = PathBuf::from(dir);
        return has_initdb(&dir).then_some(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            has_initdb(&bin).then_some((version, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Some(bin);
    }
    std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path).find(|dir| has_initdb(dir) && dir.join("pg_ctl").is_file())
    })
}

/// A loopback port nobody listens on (at the moment of asking).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

fn is_root() -> bool {
    // The effective uid: the second number on /proc/self/status's `Uid:` line.
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

fn user_exists(name: &str) -> bool {
    Command::new("id")
        .arg(name)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).expect("chmod");
}
