//! Helpers: run the real binary in a scratch directory; play a serial
//! device on a pseudo-terminal.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use serialport::{SerialPort, TTYPort};

pub use crate::support::{issued_wallet, mkfifo, pay_token, qr_frame, reader_init_args, unix_now};

/// `hub serve` of the hub in `hub` on any free port of 127.0.0.1; callers
/// append their own flags.
pub const HUB_SERVE: [&str; 6] = ["hub", "serve", "--data", "hub", "--listen", "127.0.0.1:0"];

/// What a command wrote to standard error, for assertion messages.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `out` exited with `code`, and its standard error says each of `needles`.
pub fn assert_fails(out: &Output, code: i32, needles: &[&str]) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(code), "{err}");
    for needle in needles {
        assert!(err.contains(needle), "expected {needle:?} in: {err}");
    }
}

/// Every record in reader `dir`'s database, oldest first.
pub fn records(s: &Scratch, dir: &str) -> Vec<sonotap_protocol::record::Record> {
    sonotap_reader::store::ReaderDb::open(&s.path(&format!("{dir}/reader.db")))
        .expect("db")
        .records(false)
        .expect("records")
}

/// Records in reader `dir`'s queue the hub has not acknowledged.
pub fn unsynced(s: &Scratch, dir: &str) -> u64 {
    sonotap_reader::store::ReaderDb::open(&s.path(&format!("{dir}/reader.db")))
        .expect("db")
        .summary()
        .expect("summary")
        .unsynced
}

/// The `sonotap` binary cargo built for this test run.
pub fn sonotap() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sonotap"))
}

/// A scratch directory with shorthands for running commands in it.
pub struct Scratch {
    pub dir: tempfile::TempDir,
}

/// The terms of the credential [`Scratch::provision`] issues: limit 500,
/// 300 per payment, valid 24 h.
pub const PROVISION_TERMS: [&str; 6] = [
    "--limit",
    "500",
    "--per-payment",
    "300",
    "--valid-hours",
    "24",
];

impl Scratch {
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Runs `sonotap ARGS` in the scratch directory.
    pub fn run(&self, args: &[&str]) -> Output {
        sonotap()
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .expect("sonotap runs")
    }

    /// Runs `sonotap ARGS` with `input` on standard input.
    pub fn run_with_stdin(&self, args: &[&str], input: &[u8]) -> Output {
        let mut child = sonotap()
            .args(args)
            .current_dir(self.dir.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("sonotap runs");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input)
            .expect("input written");
        child.wait_with_output().expect("sonotap finishes")
    }

    /// Runs `sonotap ARGS` with the scratch directory as `HOME`, so the
    /// `.asoundrc` written there defines the ALSA devices it sees.
    pub fn run_with_home(&self, args: &[&str]) -> Output {
        sonotap()
            .args(args)
            .current_dir(self.dir.path())
            .env("HOME", self.dir.path())
            .output()
            .expect("sonotap runs")
    }

    /// A hub, a wallet `w` holding a credential ([`PROVISION_TERMS`] from
    /// `valid_from` or now), and reader `r` (gate-1) trusting the hub.
    pub fn provision(&self, valid_from: Option<u64>) {
        self.ok(&["hub", "init", "--data", "hub"]);
        self.ok(&["wallet", "new", "--dir", "w"]);
        let from = valid_from.map(|t| t.to_string());
        let mut terms = PROVISION_TERMS.to_vec();
        if let Some(from) = &from {
            terms.extend(["--valid-from", from.as_str()]);
        }
        self.hub_issue("hub", "w", &terms, "cred");
        self.ok(&["wallet", "add-credential", "--dir", "w", "cred"]);
        self.reader_init("r", "gate-1", &[]);
    }

    /// `hub issue --data HUB --wallet-key WALLET/wallet.pub TERMS… --out OUT`:
    /// a credential for the wallet in directory `wallet`.
    pub fn hub_issue(&self, hub: &str, wallet: &str, terms: &[&str], out: &str) {
        let key = format!("{wallet}/wallet.pub");
        let mut args = vec!["hub", "issue", "--data", hub, "--wallet-key", &key];
        args.extend_from_slice(terms);
        args.extend(["--out", out]);
        self.ok(&args);
    }

    /// `wallet pay --dir w --amount AMOUNT --out OUT EXTRA…`: wallet `w`'s
    /// token in file `out`; requires success, returns stdout.
    pub fn wallet_pay(&self, amount: u32, out: &str, extra: &[&str]) -> String {
        let amount = amount.to_string();
        let mut args = vec![
            "wallet", "pay", "--dir", "w", "--amount", &amount, "--out", out,
        ];
        args.extend_from_slice(extra);
        self.ok(&args)
    }

    /// `reader sync --data READER --hub URL --timeout 5s EXTRA…`.
    pub fn reader_sync(&self, reader: &str, url: &str, extra: &[&str]) -> Output {
        let mut args = vec![
            "reader",
            "sync",
            "--data",
            reader,
            "--hub",
            url,
            "--timeout",
            "5s",
        ];
        args.extend_from_slice(extra);
        self.run(&args)
    }

    /// `reader init --data DIR --id ID --trust hub/issuer.pub EXTRA…`: a
    /// reader trusting this scratch directory's hub.
    pub fn reader_init(&self, dir: &str, id: &str, extra: &[&str]) {
        self.ok(&reader_init_args(dir, id, extra));
    }

    /// [`Scratch::reader_init`] for a test that expects it may fail.
    pub fn try_reader_init(&self, dir: &str, id: &str, extra: &[&str]) -> Output {
        self.run(&reader_init_args(dir, id, extra))
    }

    /// `hub reader add`: registers reader `dir` (id `id`) at the hub.
    pub fn register_reader(&self, dir: &str, id: &str) {
        let key = format!("{dir}/reader.pub");
        self.ok(&[
            "hub", "reader", "add", "--data", "hub", "--id", id, "--key", &key,
        ]);
    }

    /// Checks that `hex_line` (a decoder's output) is the token in
    /// `token_file`, and that reader `r` accepts it for `amount`.
    pub fn assert_reader_accepts(&self, hex_line: &str, token_file: &str, amount: u64) {
        let token = std::fs::read(self.path(token_file)).expect("token file");
        assert_eq!(hex::decode(hex_line).expect("hex"), token);
        std::fs::write(self.path("decoded.hex"), hex_line).expect("write");
        let out = self.run(&["reader", "accept", "--data", "r", "decoded.hex"]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert_eq!(last_json(&out)["amount"], amount);
    }

    /// Runs and requires success, returning stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        succeeded(args, self.run(args))
    }

    /// `sonotap ARGS` against the hub state in `database` (a PostgreSQL
    /// URL, given as `$SONOTAP_HUB_DATABASE`), or the SQLite file in `hub/`.
    pub fn run_on_hub<S: AsRef<std::ffi::OsStr>>(
        &self,
        database: Option<&str>,
        args: &[S],
    ) -> Output {
        let mut command = sonotap();
        command
            .args(args)
            .env_remove(HUB_DATABASE_ENV)
            .current_dir(self.dir.path());
        if let Some(url) = database {
            command.env(HUB_DATABASE_ENV, url);
        }
        command.output().expect("sonotap runs")
    }
}

/// Where `sonotap hub …` finds its database when `--database` is not given.
pub const HUB_DATABASE_ENV: &str = "SONOTAP_HUB_DATABASE";

/// `out` of `sonotap ARGS`, which must have succeeded: its stdout.
pub fn succeeded<S: std::fmt::Debug>(args: &[S], out: Output) -> String {
    assert!(
        out.status.success(),
        "sonotap {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

/// The JSON object on the last line of stdout.
pub fn last_json(out: &Output) -> serde_json::Value {
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().unwrap_or_default();
    serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// The device's end of a pseudo-terminal pair (a relay board, a turnstile
/// controller, a vending machine behind its MDB adapter, a display):
/// sonotap opens the slave by path. Every read has a deadline, so no test
/// can hang on a silent device.
pub struct PtyDevice {
    master: TTYPort,
    /// Held open so the pair never hangs up while sonotap reopens its end.
    _slave: TTYPort,
    /// The slave's path: what sonotap is given as its port.
    pub port: PathBuf,
    /// Bytes received and not consumed yet.
    pub pending: Vec<u8>,
}

impl PtyDevice {
    pub fn new() -> Self {
        let (master, slave) = TTYPort::pair().expect("pty pair");
        // serialport opens the pair without O_CLOEXEC: a `sonotap` another
        // test spawns at that moment would inherit both ends and keep the
        // device "plugged in" after this test unplugs it (a write that
        // should fail with EIO went through, in a full run).
        for fd in [master.as_raw_fd(), slave.as_raw_fd()] {
            // SAFETY: fcntl on a descriptor owned by a live TTYPort.
            let set = unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
            assert_eq!(set, 0, "FD_CLOEXEC on the pty");
        }
        let port = PathBuf::from(slave.name().expect("slave name"));
        Self {
            master,
            _slave: slave,
            port,
            pending: Vec::new(),
        }
    }

    /// A new pair with `link` pointing at its slave: the device plugged in.
    pub fn plug(link: &Path) -> Self {
        let device = Self::new();
        let _ = std::fs::remove_file(link);
        symlink(&device.port, link).expect("symlink");
        device
    }

    /// Reads what arrives before `deadline` (at most 20 ms of it); whether
    /// anything did.
    pub fn fill(&mut self, deadline: Instant) -> bool {
        let wait = deadline
            .saturating_duration_since(Instant::now())
            .clamp(Duration::from_millis(1), Duration::from_millis(20));
        self.master.set_timeout(wait).expect("timeout");
        let mut buf = [0u8; 256];
        match self.master.read(&mut buf) {
            Ok(n) if n > 0 => {
                self.pending.extend_from_slice(&buf[..n]);
                true
            }
            Ok(_) => false,
            Err(e) if e.kind() == io::ErrorKind::TimedOut => false,
            Err(_) => {
                std::thread::sleep(wait);
                false
            }
        }
    }

    /// Reads whatever arrives for `wait`.
    pub fn pump(&mut self, wait: Duration) {
        let deadline = Instant::now() + wait;
        while Instant::now() < deadline {
            self.fill(deadline);
        }
    }

    /// Reads at least `n` bytes within `within`; the time the last arrived.
    pub fn read_exact(&mut self, n: usize, within: Duration) -> (Vec<u8>, Instant) {
        let deadline = Instant::now() + within;
        let mut at = Instant::now();
        while self.pending.len() < n {
            assert!(
                Instant::now() < deadline,
                "wanted {n} bytes within {within:?}, got {:02X?}",
                self.pending
            );
            if self.fill(deadline) {
                at = Instant::now();
            }
        }
        (self.pending.drain(..n).collect(), at)
    }

    /// The next line sonotap writes, within `within`.
    pub fn line(&mut self, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            if let Some(end) = self.pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.pending.drain(..=end).collect();
                return String::from_utf8_lossy(&line).trim_end().to_string();
            }
            assert!(
                Instant::now() < deadline,
                "no line within {within:?}; got {:?}",
                String::from_utf8_lossy(&self.pending)
            );
            self.fill(deadline);
        }
    }

    /// Expects the next line to be `want` (within 10 s).
    pub fn expect(&mut self, want: &str) {
        assert_eq!(self.line(Duration::from_secs(10)), want);
    }

    /// Nothing arrives for `quiet`.
    pub fn silent(&mut self, quiet: Duration) {
        self.pump(quiet);
        assert!(self.pending.is_empty(), "unexpected {:02X?}", self.pending);
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.master.write_all(bytes).expect("device writes");
        self.master.flush().expect("flush");
    }

    /// Sends a line as the ASCII adapters end theirs (CR LF).
    pub fn say(&mut self, line: &str) {
        self.send(format!("{line}\r\n").as_bytes());
    }

    /// As the vending machine behind an MDB adapter (`mdb-qibixx`'s
    /// lines): answers the adapter's reset (`C,1`) as enabled.
    pub fn mdb_enable(&mut self) {
        self.expect("C,1");
        self.say("c,STATUS,ENABLED");
    }

    /// Takes the session the reader opens offering `funds` and asks to vend
    /// item `item` at `price` (amounts as the adapter writes them: "3.00").
    pub fn mdb_request(&mut self, funds: &str, price: &str, item: u32) {
        self.expect(&format!("C,START,{funds}"));
        self.say(&format!("c,STATUS,IDLE,{funds}"));
        self.say(&format!("c,STATUS,VEND,{price},{item}"));
    }

    /// The session's end: `C,STOP`, answered as enabled again.
    pub fn mdb_end(&mut self) {
        self.expect("C,STOP");
        self.say("c,STATUS,ENABLED");
    }
}

/// A `sonotap hub serve` process, killed when dropped.
pub struct HubProcess {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// The port it listens on (to restart it there).
    pub port: u16,
}

impl HubProcess {
    /// Starts `hub serve --data hub` in `s` on `port` (0: any free port).
    pub fn start(s: &Scratch, port: u16) -> Self {
        let listen = format!("127.0.0.1:{port}");
        let child = sonotap()
            .args(["hub", "serve", "--data", "hub", "--listen", &listen])
            .current_dir(s.dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("hub starts");
        Self::listening(child)
    }

    /// Waits for a started hub's first line ("listening on URL").
    fn listening(mut child: Child) -> Self {
        let line =
            first_stdout_line(&mut child, Duration::from_secs(20)).expect("hub prints its address");
        let url = line.split_whitespace().nth(2).expect("address").to_owned();
        let port = url
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("port");
        Self { child, url, port }
    }

    /// Stops it as an operator would (SIGTERM) and waits for it to end.
    pub fn terminate(&mut self) {
        if let Ok(pid) = libc::pid_t::try_from(self.child.id()) {
            // SAFETY: signalling a child this test started and has not reaped.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
    }

    /// Sends it SIGKILL without waiting: a process stopped inside a
    /// filesystem request ends only once the request is answered.
    pub fn kill_now(&mut self) {
        let _ = self.child.kill();
    }

    /// Kills it (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for HubProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

impl HubProcess {
    /// Starts `hub serve --data hub EXTRA…` in `s` on an ephemeral port,
    /// with its standard error kept in `hub.stderr` (for its warnings).
    pub fn start_with(s: &Scratch, extra: &[&str]) -> Self {
        Self::start_logged(s, extra, "hub.stderr")
    }

    /// [`HubProcess::start_with`], its standard error kept in `log` (for
    /// several hub processes side by side).
    pub fn start_logged(s: &Scratch, extra: &[&str], log: &str) -> Self {
        Self::spawn_logged(s, &[&HUB_SERVE[..], extra].concat(), log)
    }

    /// `hub serve --data DATA --listen LISTEN EXTRA…` in `s`, its standard
    /// error kept in `DATA.stderr` (another hub directory, or a port again).
    pub fn serve(s: &Scratch, data: &str, listen: &str, extra: &[&str]) -> Self {
        let args = [
            &["hub", "serve", "--data", data, "--listen", listen][..],
            extra,
        ]
        .concat();
        Self::spawn_logged(s, &args, &format!("{data}.stderr"))
    }

    fn spawn_logged(s: &Scratch, args: &[&str], log: &str) -> Self {
        let stderr = std::fs::File::create(s.path(log)).expect("stderr file");
        let child = sonotap()
            .args(args)
            .current_dir(s.dir.path())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("hub starts");
        Self::listening(child)
    }
}

/// The first line `child` prints on its piped stdout within `within`, if
/// any (read on a thread, so a child that prints nothing cannot hang a test).
pub fn first_stdout_line(child: &mut Child, within: Duration) -> Option<String> {
    let stdout = child.stdout.take().expect("stdout piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    rx.recv_timeout(within).ok().filter(|l| !l.is_empty())
}

/// Reads one HTTP/1.1 message with a Content-Length body (head and body),
/// for the tests' proxies; `None` if the stream ends or times out first.
pub fn read_http_message(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 65536];
    let header_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut chunk).ok().filter(|n| *n > 0)?;
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..header_end]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    while buf.len() < header_end + length {
        let n = stream.read(&mut chunk).ok().filter(|n| *n > 0)?;
        buf.extend_from_slice(&chunk[..n]);
    }
    buf.truncate(header_end + length);
    Some(buf)
}

/// A server on 127.0.0.1 that takes one connection at a time and answers
/// its one request with what `answer` returns (with `Connection: close`),
/// or closes it unanswered on `None`; its URL.
pub fn serve_one_by_one(answer: impl Fn(&[u8]) -> Option<Vec<u8>> + Send + 'static) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(mut client) = client else { return };
            let _ = client.set_read_timeout(Some(Duration::from_secs(5)));
            let Some(request) = read_http_message(&mut client) else {
                continue;
            };
            if let Some(response) = answer(&request) {
                let _ = client.write_all(&with_connection_close(response));
            }
        }
    });
    format!("http://{addr}")
}

/// Passes `request` to the hub at `upstream` (waiting up to `wait` for
/// its answer): the answer, or `None` if there was none.
pub fn forward(upstream: &str, request: &[u8], wait: Duration) -> Option<Vec<u8>> {
    let mut server = TcpStream::connect(upstream).ok()?;
    let _ = server.set_read_timeout(Some(wait));
    server.write_all(request).ok()?;
    read_http_message(&mut server)
}

/// The message with `connection: close` (and no other `connection` header),
/// so each proxied connection carries one request.
pub fn with_connection_close(message: Vec<u8>) -> Vec<u8> {
    let end = message
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(0);
    let head = String::from_utf8_lossy(&message[..end])
        .lines()
        .filter(|l| !l.to_ascii_lowercase().starts_with("connection:"))
        .collect::<Vec<_>>()
        .join("\r\n");
    let mut out = format!("{head}\r\nconnection: close\r\n\r\n").into_bytes();
    out.extend_from_slice(&message[end + 4..]);
    out
}

/// The daemon's config for a vending machine behind the MDB adapter on
/// `vmc` (profile `profile`), tokens arriving as QR frames through the FIFO
/// `cam.y8` (made here; the decoder has 1 s a frame): `vend.toml` in `s`,
/// with the lines `top` after `data`.
pub fn vend_config(s: &Scratch, vmc: &PtyDevice, profile: &str, top: &str) -> PathBuf {
    mkfifo(&s.path("cam.y8"));
    let path = s.path("vend.toml");
    std::fs::write(
        &path,
        format!(
            "data = \"r\"\n{top}[camera]\nsource = \"pipe\"\npath = \"cam.y8\"\nbudget_ms = 1000\n[actuator]\nprofile = \"{profile}\"\nport = \"{}\"\n[metrics]\nlisten = \"\"\n",
            vmc.port.display()
        ),
    )
    .expect("config");
    path
}

/// A frame fuzzing found (`fuzz/regressions/qr/<name>`, stored as width,
/// height, then grey pixels): `(width, height, pixels)`.
/// `rqrr-perspective-maps-past-i32`: rqrr asserts on it;
/// `rqrr-alignment-search-spirals`: rqrr's search runs for over a second.
pub fn qr_regression_frame(name: &str) -> (u8, u8, Vec<u8>) {
    let input = std::fs::read(format!("fuzz/regressions/qr/{name}")).expect("input");
    let [w, h, pixels @ ..] = &input[..] else {
        panic!("the regression input holds a frame");
    };
    let size = usize::from(*w) * usize::from(*h);
    (*w, *h, pixels[..size].to_vec())
}

/// Opens the FIFO for writing (waits for the daemon to open its end).
pub fn open_fifo(path: &Path) -> File {
    let (tx, rx) = std::sync::mpsc::channel();
    let p = path.to_path_buf();
    thread::spawn(move || {
        let _ = tx.send(std::fs::OpenOptions::new().write(true).open(p));
    });
    rx.recv_timeout(Duration::from_secs(20))
        .expect("the daemon opens the camera FIFO")
        .expect("fifo")
}

/// The daemon, killed when dropped (a test that fails must not leave it running).
pub struct Daemon {
    child: Option<Child>,
    stderr: std::sync::mpsc::Receiver<String>,
    log: Vec<String>,
}

impl Daemon {
    pub fn start(s: &Scratch, config: &Path, env: &[(&str, &str)]) -> Self {
        let mut cmd = sonotap();
        cmd.args(["run", "--config"])
            .arg(config)
            .current_dir(s.dir.path())
            .env("HOME", s.dir.path())
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("JOURNAL_STREAM")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("daemon starts");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Self {
            child: Some(child),
            stderr: rx,
            log: Vec::new(),
        }
    }

    pub fn signal(&self, sig: libc::c_int) {
        let pid = libc::pid_t::try_from(self.pid()).expect("pid");
        // SAFETY: kill(2) with a child's pid and a signal number has no memory effects.
        assert_eq!(unsafe { libc::kill(pid, sig) }, 0);
    }

    /// After the exit: every line the daemon wrote, up to the end of its stderr.
    pub fn full_log(&mut self) -> String {
        while let Ok(line) = self.stderr.recv_timeout(Duration::from_secs(5)) {
            self.log.push(line);
        }
        self.log.join("\n")
    }

    /// The running daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// SIGTERM, then expects exit status 0 within 10 s (the log if not).
    pub fn stop(&mut self) {
        self.stop_within(Duration::from_secs(10));
    }

    /// SIGTERM, then expects exit status 0 within `within` (the log if not).
    pub fn stop_within(&mut self, within: Duration) {
        self.signal(libc::SIGTERM);
        let code = self.wait_exit(within);
        assert_eq!(code, Some(0), "{}", self.drain_log());
    }

    /// SIGKILL (a power cut, for the process), then what it had logged.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("SIGKILL");
            child.wait().expect("reaped");
        }
        while let Ok(line) = self.stderr.recv_timeout(Duration::from_secs(2)) {
            self.log.push(line);
        }
    }

    pub fn drain_log(&mut self) -> String {
        while let Ok(line) = self.stderr.try_recv() {
            self.log.push(line);
        }
        self.log.join("\n")
    }

    /// Waits for the daemon to log a line containing `needle`.
    pub fn wait_log(&mut self, needle: &str, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            if self.log.iter().any(|l| l.contains(needle)) {
                return;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "no {needle:?} in the log within {within:?}:\n{}",
                self.drain_log()
            );
            if let Ok(line) = self
                .stderr
                .recv_timeout(left.min(Duration::from_millis(100)))
            {
                self.log.push(line);
            }
        }
    }

    /// Waits for the exit; its code.
    pub fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        let child = self.child.as_mut().expect("running");
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                self.child = None;
                return status.code();
            }
            assert!(
                Instant::now() < deadline,
                "the daemon did not exit within {within:?}:\n{}",
                self.drain_log()
            );
            thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A proxy on 127.0.0.1 in front of a hub, one thread a connection, that
/// holds uploads on their way: the first for `first`, every one for
/// `each`. It counts the uploads in flight through it at once.
pub struct SlowProxy {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    most: Arc<AtomicUsize>,
}

impl SlowProxy {
    /// A proxy to the hub at `upstream` (`http://HOST:PORT`).
    pub fn start(upstream: &str, first: Duration, each: Duration) -> Self {
        let upstream = upstream.trim_start_matches("http://").to_owned();
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let most = Arc::new(AtomicUsize::new(0));
        let (watch, in_flight, seen) = (
            Arc::clone(&most),
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicUsize::new(0)),
        );
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(mut client) = client else { return };
                let (upstream, most) = (upstream.clone(), Arc::clone(&watch));
                let (in_flight, seen) = (Arc::clone(&in_flight), Arc::clone(&seen));
                std::thread::spawn(move || {
                    let _ = client.set_read_timeout(Some(Duration::from_secs(10)));
                    let Some(request) = read_http_message(&mut client) else {
                        return;
                    };
                    let upload = request.starts_with(b"POST /v1/batches");
                    if upload {
                        let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(now, Ordering::SeqCst);
                        let hold = if seen.fetch_add(1, Ordering::SeqCst) == 0 {
                            first.max(each)
                        } else {
                            each
                        };
                        std::thread::sleep(hold);
                    }
                    let answer = forward(
                        &upstream,
                        &with_connection_close(request),
                        Duration::from_secs(10),
                    );
                    if upload {
                        in_flight.fetch_sub(1, Ordering::SeqCst);
                    }
                    // No answer from the hub (it died): the connection closes unanswered.
                    if let Some(answer) = answer {
                        let _ = client.write_all(&with_connection_close(answer));
                    }
                });
            }
        });
        Self { url, most }
    }

    /// The most uploads that were in flight through the proxy at once.
    pub fn most_in_flight(&self) -> usize {
        self.most.load(Ordering::SeqCst)
    }
}

/// A reader's records and charged sum in `hub report --json`'s answer.
pub fn reader_totals(report: &serde_json::Value, id: &str) -> (u64, u64) {
    let row = reader_report(report, id);
    (
        row["records"].as_u64().expect("records"),
        row["charged"].as_u64().expect("charged"),
    )
}

/// A reader's row in `hub report --json`'s answer.
pub fn reader_report<'a>(report: &'a serde_json::Value, id: &str) -> &'a serde_json::Value {
    report["readers"]
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["reader"] == id))
        .unwrap_or_else(|| panic!("no row for {id}: {report}"))
}

/// Copies a wallet directory (files only), as a phone backup or a clone would.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("entry");
        std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy");
    }
}

impl HubProcess {
    /// Starts `hub serve --data hub --metrics 127.0.0.1:0 EXTRA…` in `s`
    /// (standard error in `hub.stderr`); returns it and its metrics URL.
    pub fn start_with_metrics(s: &Scratch, extra: &[&str]) -> (Self, String) {
        let stderr = std::fs::File::create(s.path("hub.stderr")).expect("stderr file");
        let args = [&HUB_SERVE[..], &["--metrics", "127.0.0.1:0"], extra].concat();
        let mut child = sonotap()
            .args(&args)
            .current_dir(s.dir.path())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("hub starts");
        let stdout = child.stdout.take().expect("stdout piped");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let line = || {
            rx.recv_timeout(Duration::from_secs(20))
                .expect("hub prints its addresses")
        };
        let url = line()
            .split_whitespace()
            .nth(2)
            .expect("address")
            .to_owned();
        let metrics = line()
            .split_whitespace()
            .nth(2)
            .expect("metrics address")
            .to_owned();
        let port = url
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("port");
        (Self { child, url, port }, metrics)
    }
}
