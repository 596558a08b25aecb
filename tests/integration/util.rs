//! Helpers: run the real binary in a scratch directory.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

/// The `sonotap` binary cargo built for this test run.
pub fn sonotap() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sonotap"))
}

/// A scratch directory with shorthands for running commands in it.
pub struct Scratch {
    pub dir: tempfile::TempDir,
}

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

    /// A hub, a wallet `w` holding a credential (limit 500, 300 per payment,
    /// 24 h from `valid_from` or now), and reader `r` (gate-1) trusting the hub.
    pub fn provision(&self, valid_from: Option<u64>) {
        self.ok(&["hub", "init", "--data", "hub"]);
        self.ok(&["wallet", "new", "--dir", "w"]);
        let from = valid_from.map(|t| t.to_string());
        let mut issue = vec![
            "hub",
            "issue",
            "--data",
            "hub",
            "--wallet-key",
            "w/wallet.pub",
            "--limit",
            "500",
            "--per-payment",
            "300",
            "--valid-hours",
            "24",
            "--out",
            "cred",
        ];
        if let Some(from) = &from {
            issue.extend(["--valid-from", from.as_str()]);
        }
        self.ok(&issue);
        self.ok(&["wallet", "add-credential", "--dir", "w", "cred"]);
        let reader = [
            "reader",
            "init",
            "--data",
            "r",
            "--id",
            "gate-1",
            "--trust",
            "hub/issuer.pub",
        ];
        self.ok(&reader);
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
        let out = self.run(args);
        assert!(
            out.status.success(),
            "sonotap {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8(out.stdout).expect("utf-8")
    }
}

/// The JSON object on the last line of stdout.
pub fn last_json(out: &Output) -> serde_json::Value {
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().unwrap_or_default();
    serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}
