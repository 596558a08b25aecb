//! Issue 13, items 3 and 12, against the real daemon (`sonotap run`) with a
//! pseudo-terminal playing the MDB adapter: tokens arrive as QR frames
//! through a FIFO; the reader database is locked by this test process (a
//! second SQLite connection holding `BEGIN IMMEDIATE`), as another process
//! would. Every wait has a deadline.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use sonotap_disk::keys::{PublicKey, Role};
use sonotap_hub::{Hub, IssueRequest};
use sonotap_protocol::token::{CredentialTerms, PaymentTerms, Scope, Token};
use sonotap_reader::store::ReaderDb;

use crate::util::{Daemon, PtyDevice, Scratch, open_fifo, qr_frame, unix_now, vend_config};

/// A vending site: hub, reader `r` (vending), the daemon's config driving
/// `profile` on the pty, and a wallet key with a hub-issued credential
/// (limit 1,000,000, cap 300).
struct Site {
    s: Scratch,
    vmc: PtyDevice,
    config: PathBuf,
    wallet: SigningKey,
    credential: sonotap_protocol::token::Credential,
    counter: u32,
}

impl Site {
    fn new(profile: &str) -> Self {
        let s = Scratch::new();
        s.ok(&["hub", "init", "--data", "hub"]);
        s.reader_init("r", "vend-1", &["--scope", "vending"]);
        let wallet = SigningKey::from_bytes(&[7; 32]);
        let public = PublicKey::from_bytes(Role::Wallet, None, wallet.verifying_key().as_bytes())
            .expect("wallet key");
        let now = unix_now();
        let credential = Hub::open(&s.path("hub"))
            .expect("hub")
            .issue(
                &public,
                IssueRequest {
                    scope: Scope::Vending,
                    currency: 978,
                    offline_limit: 1_000_000,
                    per_payment_cap: 300,
                    valid_from: (now - 3600) as u32,
                    valid_hours: 48,
                },
                now,
            )
            .expect("issue");
        let vmc = PtyDevice::new();
        let config = vend_config(&s, &vmc, profile, "log_level = \"sonotap=debug,info\"\n");
        Self {
            s,
            vmc,
            config,
            wallet,
            credential,
            counter: 0,
        }
    }

    /// A token of the site's wallet for `amount`, signed as a wallet would
    /// (whatever its own checks would say about the amount).
    fn token(&mut self, amount: u32) -> Vec<u8> {
        self.counter += 1;
        let payment = PaymentTerms {
            amount,
            counter: self.counter,
            total_before: 0,
            timestamp: unix_now() as u32,
            reader_tag: 0,
        };
        Token::sign(self.credential, payment, &self.wallet)
            .expect("sign")
            .encode()
            .to_vec()
    }

    /// Starts the daemon, enables the vending machine and opens the
    /// camera FIFO.
    fn start(&mut self) -> (Daemon, File) {
        let daemon = Daemon::start(&self.s, &self.config, &[]);
        self.vmc.mdb_enable();
        (daemon, open_fifo(&self.s.path("cam.y8")))
    }

    fn db(&self) -> ReaderDb {
        ReaderDb::open(&self.s.path("r/reader.db")).expect("db")
    }

    fn status_json(&self) -> serde_json::Value {
        let out = self.s.run(&["status", "--data", "r", "--json"]);
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "status JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }
}

/// A token whose credential is signed by a key the hub never had, for the
/// largest amount a token can carry.
fn forged_token() -> Vec<u8> {
    let forger = SigningKey::from_bytes(&[66; 32]);
    let wallet = SigningKey::from_bytes(&[67; 32]);
    let now = unix_now();
    let credential = CredentialTerms {
        issuer_key_id: 1,
        scope: Scope::Vending,
        currency: 978,
        wallet_key: wallet.verifying_key().to_bytes(),
        offline_limit: u32::MAX,
        per_payment_cap: u32::MAX,
        valid_from: (now - 3600) as u32,
        valid_hours: 48,
    }
    .sign(&forger)
    .expect("terms");
    let payment = PaymentTerms {
        amount: u32::MAX,
        counter: 1,
        total_before: 0,
        timestamp: now as u32,
        reader_tag: 0,
    };
    Token::sign(credential, payment, &wallet)
        .expect("sign")
        .encode()
        .to_vec()
}

#[test]
fn issue13_12_a_forged_token_for_4294967295_opens_no_vend_session() {
    let mut site = Site::new("mdb-qibixx");
    let (mut daemon, mut fifo) = site.start();
    fifo.write_all(&qr_frame(&forged_token())).expect("frame");
    daemon.wait_log("declined before any vend session", Duration::from_secs(20));
    site.vmc.silent(Duration::from_secs(2));
    let log = daemon.drain_log();
    assert!(log.contains("bad_signature"), "{log}");
    assert!(!log.contains("C,START"), "{log}");
    let declines = site.db().recent_declines(5).expect("declines");
    assert_eq!(
        declines[0].reason, "bad_signature",
        "the decline is logged for status"
    );
    assert!(site.db().records(false).expect("records").is_empty());

    // Above the credential's cap (300): declined at once too, no session.
    let over_cap = site.token(500);
    fifo.write_all(&qr_frame(&over_cap)).expect("frame");
    daemon.wait_log("over_payment_cap", Duration::from_secs(20));
    site.vmc.silent(Duration::from_secs(1));

    // A good token opens a session offering what it authorises (within the cap).
    let good = site.token(300);
    fifo.write_all(&qr_frame(&good)).expect("frame");
    site.vmc.expect("C,START,3.00");
    site.vmc.say("c,STATUS,IDLE,3.00");
    site.vmc.say("c,STATUS,ENABLED");
    daemon.wait_log("no vend", Duration::from_secs(10));
    daemon.stop_within(Duration::from_secs(15));
}

#[test]
fn issue13_12_a_session_never_offers_more_than_the_profile_ceiling() {
    let mut site = Site::new("mdb-small");
    let profiles = site.s.path("hw/profiles");
    fs::create_dir_all(&profiles).expect("profiles dir");
    let builtin = fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("hw/profiles/mdb-qibixx.toml"),
    )
    .expect("built-in profile");
    fs::write(
        profiles.join("mdb-small.toml"),
        builtin.replace("max_funds = 65534", "max_funds = 120"),
    )
    .expect("profile");
    let (mut daemon, mut fifo) = site.start();
    let token = site.token(300);
    fifo.write_all(&qr_frame(&token)).expect("frame");
    site.vmc.mdb_request("1.20", "2.00", 4);
    site.vmc.mdb_end();
    daemon.wait_log("vend denied", Duration::from_secs(10));
    assert!(site.db().records(false).expect("records").is_empty());
    daemon.stop_within(Duration::from_secs(15));
}

#[test]
fn issue13_03_a_void_blocked_by_a_locked_database_is_owed_shown_and_written_after_a_restart() {
    let mut site = Site::new("mdb-qibixx");
    let (mut daemon, mut fifo) = site.start();
    let token = site.token(300);
    fifo.write_all(&qr_frame(&token)).expect("frame");
    site.vmc.mdb_request("3.00", "1.50", 3);
    site.vmc.expect("C,VEND,1.50");
    let charge = site.db().records(false).expect("records")[0].seq;

    // Another process takes the write lock; the machine reports the failure.
    let lock = rusqlite::Connection::open(site.s.path("r/reader.db")).expect("connection");
    lock.execute_batch("BEGIN IMMEDIATE").expect("lock");
    site.vmc.say("c,VEND,FAILED");
    site.vmc.mdb_end();
    daemon.wait_log("void owed, will retry", Duration::from_secs(20));

    // Meanwhile `sonotap status` shows the owed void (from the daemon's status file).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status = site.status_json();
        let owed = &status["daemon"]["status"]["owed"];
        if owed.as_array().is_some_and(|o| !o.is_empty()) {
            assert_eq!(owed[0]["charge_seq"], charge, "{status}");
            assert_eq!(owed[0]["owed"], "void", "{status}");
            let attention = status["attention"].to_string();
            assert!(attention.contains("void owed"), "{attention}");
            assert_eq!(status["pending_vends"][0]["charge_seq"], charge, "{status}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no owed void in status: {status}"
        );
        thread::sleep(Duration::from_millis(200));
    }

    // The daemon dies with the void still owed; the log never said "voided".
    daemon.kill();
    let log = daemon.drain_log();
    assert!(!log.contains("charge voided"), "{log}");
    assert!(!log.contains("owed void written"), "{log}");
    lock.execute_batch("COMMIT").expect("unlock");
    drop(lock);
    let db = site.db();
    assert_eq!(db.void_of(charge).expect("read"), None, "no void yet");
    assert_eq!(db.pending_vends().expect("pending")[0].charge_seq, charge);
    drop(db);
    let status = site.status_json();
    assert!(
        status["attention"]
            .to_string()
            .contains(&format!("void owed for charge {charge}")),
        "{status}"
    );

    // Restarted, the daemon writes the void before serving.
    let mut daemon = Daemon::start(&site.s, &site.config, &[]);
    daemon.wait_log("owed void written", Duration::from_secs(20));
    let db = site.db();
    let (void_seq, _) = db.void_of(charge).expect("read").expect("voided");
    let records = db.records(false).expect("records");
    let void = records
        .iter()
        .find(|r| r.seq == void_seq)
        .expect("void record");
    assert_eq!((void.amount, &void.token), (150, &token));
    assert!(db.pending_vends().expect("pending").is_empty());
    site.vmc.mdb_enable();
    daemon.stop_within(Duration::from_secs(15));
}
