//! Site peers and gate beacons with real parts: several `sonotap run`
//! processes on loopback addresses announce their accepts to each other
//! over UDP; tokens arrive as camera frames through FIFOs; each gate's
//! relay board is the test's end of a pseudo-terminal. A replay at another
//! gate is declined, a gate keeps working with every peer dead, and a peer
//! killed mid-burst learns what it missed when it comes back. Gates that
//! beacon show their challenge as a QR code the real `sonotap wallet pay
//! --beacon` reads; a token bound to it is declined at another gate and
//! once its challenge has lived out.

use std::fs::{self, File};
use std::io::Write;
use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use sonotap_disk::keys::{Role, SecretKey};
use sonotap_protocol::site::{SiteBody, SiteMessage};
use sonotap_protocol::token::Scope;
use sonotap_reader::store::ReaderDb;
use sonotap_wallet::Wallet;

use crate::audio_capture::{speaker_as_wav, speaker_to_microphone};
use crate::util::{
    Daemon, PtyDevice, Scratch, issued_wallet, mkfifo, open_fifo, pay_token, qr_frame, records,
    unix_now,
};

const ON: [u8; 4] = [0xA0, 0x01, 0x01, 0xA2];
const SITE: &str = "station-1";

/// One gate of the site: its reader directory, relay board, camera FIFO and daemon.
struct Gate {
    id: String,
    dir: String,
    addr: SocketAddr,
    relay: PtyDevice,
    config: PathBuf,
    fifo: Option<File>,
    daemon: Option<Daemon>,
}

impl Gate {
    fn opens(&self) -> usize {
        self.relay
            .pending
            .chunks_exact(4)
            .filter(|c| *c == ON)
            .count()
    }

    /// Waits until the relay has received `n` open commands.
    fn wait_opens(&mut self, n: usize, within: Duration) {
        let deadline = Instant::now() + within;
        while self.opens() < n {
            assert!(
                Instant::now() < deadline,
                "{}: wanted {n} opens within {within:?}, got {}",
                self.id,
                self.opens()
            );
            self.relay.pump(Duration::from_millis(5));
        }
    }

    /// Shows `token` to the gate's camera (one frame).
    fn show(&mut self, token: &[u8]) {
        self.fifo
            .as_mut()
            .expect("running")
            .write_all(&qr_frame(token))
            .expect("frame");
    }

    fn daemon(&mut self) -> &mut Daemon {
        self.daemon.as_mut().expect("running")
    }

    /// After its token was shown: the daemon logs `why` and the gate
    /// neither opens (the relay gets no open command) nor charges.
    fn expect_declined(&mut self, s: &Scratch, why: &str) {
        self.daemon().wait_log(why, Duration::from_secs(10));
        self.relay.pump(Duration::from_millis(300));
        assert_eq!(self.opens(), 0, "{} opened: {why}", self.id);
        assert!(
            records(s, &self.dir).is_empty(),
            "{} charged: {why}",
            self.id
        );
    }

    /// Closes the camera FIFO, then stops the daemon (exit 0 expected).
    fn stop(&mut self) {
        self.fifo = None;
        self.daemon().stop();
    }

    fn start(&mut self, s: &Scratch) {
        self.daemon = Some(Daemon::start(s, &self.config, &[]));
        self.fifo = Some(open_fifo(&s.path(&format!("{}.y8", self.dir))));
        self.daemon()
            .wait_log("site link up", Duration::from_secs(20));
    }

    /// The accepts this gate learned from its peers.
    fn learned(&self, s: &Scratch) -> Vec<(String, u64)> {
        ReaderDb::open(&s.path(&format!("{}/reader.db", self.dir)))
            .expect("db")
            .learned_accepts()
            .expect("learned")
            .into_iter()
            .map(|a| (a.reader, a.seq))
            .collect()
    }

    fn wait_learned(&self, s: &Scratch, n: usize, within: Duration) {
        let deadline = Instant::now() + within;
        while self.learned(s).len() < n {
            assert!(
                Instant::now() < deadline,
                "{}: learned {:?}, wanted {n}",
                self.id,
                self.learned(s)
            );
            thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A UDP port free on `ip` right now.
fn free_udp(ip: &str) -> SocketAddr {
    UdpSocket::bind((ip, 0))
        .expect("bind")
        .local_addr()
        .expect("addr")
}

/// The hex public key of reader directory `dir` (the last field of reader.pub).
fn public_hex(s: &Scratch, dir: &str) -> String {
    let line = fs::read_to_string(s.path(&format!("{dir}/reader.pub"))).expect("reader.pub");
    line.split_whitespace().last().expect("key").to_string()
}

/// A site of `n` gates (gate-1 … gate-n on 127.0.0.1 … 127.0.0.n), each
/// listing every other as a peer, none started; and a wallet.
fn site(n: usize) -> (Scratch, Vec<Gate>, Wallet) {
    site_with(n, "")
}

/// [`site`] with `extra` appended to every gate's config (`{dir}` stands
/// for the gate's reader directory).
fn site_with(n: usize, extra: &str) -> (Scratch, Vec<Gate>, Wallet) {
    let s = Scratch::new();
    s.ok(&["hub", "init", "--data", "hub"]);
    let mut gates = Vec::new();
    for i in 1..=n {
        let (id, dir) = (format!("gate-{i}"), format!("r{i}"));
        s.reader_init(&dir, &id, &[]);
        mkfifo(&s.path(&format!("{dir}.y8")));
        gates.push(Gate {
            addr: free_udp(&format!("127.0.0.{i}")),
            id,
            dir,
            relay: PtyDevice::new(),
            config: PathBuf::new(),
            fifo: None,
            daemon: None,
        });
    }
    for i in 0..n {
        let mut peers = String::new();
        for (j, peer) in gates.iter().enumerate() {
            if j != i {
                peers += &format!(
                    "[[site.peers]]\nid = \"{}\"\naddr = \"{}\"\npublic_key = \"{}\"\n",
                    peer.id,
                    peer.addr,
                    public_hex(&s, &peer.dir)
                );
            }
        }
        let g = &gates[i];
        let text = format!(
            "data = \"{dir}\"\nlog_level = \"sonotap=debug,info\"\n\
             [actuator]\nprofile = \"ch340-relay\"\nport = \"{port}\"\n\
             [payment]\nfare = 100\n[metrics]\nlisten = \"\"\n\
             [camera]\nsource = \"pipe\"\npath = \"{dir}.y8\"\nbudget_ms = 1000\nwidth = 1280\nheight = 720\nformat = \"y8\"\n\
             [site]\nid = \"{SITE}\"\nlisten = \"{addr}\"\n{peers}{extra}",
            extra = extra.replace("{dir}", &g.dir),
            dir = g.dir,
            port = g.relay.port.display(),
            addr = g.addr,
        );
        let path = s.path(&format!("{}.toml", g.dir));
        fs::write(&path, text).expect("config");
        gates[i].config = path;
    }
    let w = issued_wallet(s.dir.path(), "w", Scope::Transit, 1_000_000, unix_now());
    (s, gates, w)
}

fn pay(w: &mut Wallet) -> Vec<u8> {
    pay_token(w, 100, unix_now())
}

#[test]
fn a_token_accepted_at_one_gate_and_replayed_at_once_at_the_others_is_declined() {
    let (s, mut gates, mut w) = site(3);
    for g in &mut gates {
        g.start(&s);
    }
    let token = pay(&mut w);
    gates[0].show(&token);
    gates[0].wait_opens(1, Duration::from_secs(10));
    // The replay is shown the moment the first gate opened: no waiting for the peers.
    gates[1].show(&token);
    gates[2].show(&token);
    for g in &mut gates[1..] {
        g.expect_declined(&s, "accepted at gate-1 (a reader of this site)");
    }
    // The rider's next token is honest and opens the second gate.
    let next = pay(&mut w);
    gates[1].show(&next);
    gates[1].wait_opens(1, Duration::from_secs(10));
    // Every gate learned both accepts from its peers, once each.
    gates[0].wait_learned(&s, 1, Duration::from_secs(5));
    gates[2].wait_learned(&s, 2, Duration::from_secs(5));
    assert_eq!(
        gates[2].learned(&s),
        vec![("gate-1".to_string(), 1), ("gate-2".to_string(), 1)]
    );
    for g in &mut gates {
        g.stop();
    }
}

#[test]
fn a_gate_keeps_working_with_every_peer_dead() {
    let (s, mut gates, mut w) = site(3);
    // Only gate-1 runs: its two peers are configured and never answer.
    gates[0].start(&s);
    for n in 1..=3 {
        let token = pay(&mut w);
        gates[0].show(&token);
        gates[0].wait_opens(n, Duration::from_secs(10));
    }
    assert_eq!(records(&s, "r1").len(), 3);
    gates[0].stop();
}

#[test]
fn a_peer_killed_mid_burst_learns_what_it_missed_when_it_comes_back() {
    let (s, mut gates, mut w) = site(3);
    for g in &mut gates {
        g.start(&s);
    }
    let tokens: Vec<Vec<u8>> = (0..8).map(|_| pay(&mut w)).collect();
    for (i, token) in tokens.iter().enumerate() {
        if i == 3 {
            gates[2].daemon().kill(); // a power cut at gate-3, mid-burst
            gates[2].daemon = None;
            gates[2].fifo = None;
        }
        gates[0].show(token);
        gates[0].wait_opens(i + 1, Duration::from_secs(10));
    }
    // The gate never waited for its dead peer; the live one learned everything.
    assert_eq!(records(&s, "r1").len(), 8);
    gates[1].wait_learned(&s, 8, Duration::from_secs(5));
    // gate-3 comes back, says hello, and both peers send it their recent accepts.
    gates[2].start(&s);
    gates[2].wait_learned(&s, 8, Duration::from_secs(10));
    // A token accepted while gate-3 was down, replayed there: declined.
    gates[2].show(&tokens[6]);
    gates[2].expect_declined(&s, "accepted at gate-1 (a reader of this site)");
    for g in &mut gates {
        g.stop();
    }
}

#[test]
fn hostile_datagrams_on_the_site_port_teach_nothing_and_the_gate_works() {
    let (s, mut gates, mut w) = site(2);
    gates[0].start(&s);
    // Elsewhere on the LAN, and on gate-2's own host (its address).
    let attacker = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let on_gate_2 = UdpSocket::bind("127.0.0.2:0").expect("bind");
    let token = pay(&mut w);
    let accept = |site: &str, reader: &str| SiteMessage {
        site: site.into(),
        reader: reader.into(),
        sent_us: unix_now() * 1_000_000,
        body: SiteBody::Accept {
            seq: 1,
            at: unix_now(),
            running_total: 100,
            token: token.clone(),
        },
    };
    let stranger = SigningKey::from_bytes(&[7; 32]);
    let gate_2 = SecretKey::read(&s.path("r2/reader.key"), Role::Reader).expect("gate-2's key");
    let mut bent = token.clone();
    bent[130] ^= 1; // the wallet's signature no longer verifies
    let forged = SiteMessage {
        body: SiteBody::Accept {
            seq: 2,
            at: unix_now(),
            running_total: 100,
            token: bent,
        },
        ..accept(SITE, "gate-2")
    };
    let peer_key_missing = accept(SITE, "gate-2").sign(&stranger).expect("sign");
    let datagrams: Vec<Vec<u8>> = vec![
        Vec::new(),
        vec![0xFF; 2000],
        b"hello".to_vec(),
        accept("station-9", "gate-2").sign(&stranger).expect("sign"),
        accept(SITE, "gate-7").sign(&stranger).expect("sign"),
        peer_key_missing.clone(),
        peer_key_missing[..peer_key_missing.len() - 1].to_vec(),
        // Genuinely gate-2's, but not from gate-2's address.
        accept(SITE, "gate-2")
            .sign(gate_2.signing_key())
            .expect("sign"),
    ];
    for d in &datagrams {
        attacker.send_to(d, gates[0].addr).expect("send");
    }
    // From gate-2's address: a stranger's signature, and gate-2's own over
    // a token no wallet signed.
    for d in [
        peer_key_missing,
        forged.sign(gate_2.signing_key()).expect("sign"),
    ] {
        on_gate_2.send_to(&d, gates[0].addr).expect("send");
    }
    // Then one true announcement from gate-2, for another token: the
    // listener was alive all along, and only this one is learned.
    let mut another_rider = issued_wallet(s.dir.path(), "w2", Scope::Transit, 1_000, unix_now());
    let other = pay(&mut another_rider);
    let true_one = SiteMessage {
        body: SiteBody::Accept {
            seq: 3,
            at: unix_now(),
            running_total: 100,
            token: other,
        },
        ..accept(SITE, "gate-2")
    };
    // Sent fifty times (a recording of the LAN played again): learned once.
    let true_datagram = true_one.sign(gate_2.signing_key()).expect("sign");
    for _ in 0..50 {
        on_gate_2
            .send_to(&true_datagram, gates[0].addr)
            .expect("send");
    }
    gates[0].wait_learned(&s, 1, Duration::from_secs(5));
    thread::sleep(Duration::from_millis(200));
    assert_eq!(gates[0].learned(&s), vec![("gate-2".to_string(), 3)]);
    // The token the attacker tried to burn is the rider's, and it opens the gate.
    gates[0].show(&token);
    gates[0].wait_opens(1, Duration::from_secs(10));
    gates[0].stop();
}

/// The beacon every gate shows: a new challenge every second, each accepted
/// for two, version-1 tokens declined.
const BEACON: &str = "[beacon]\nperiod_secs = 1\nlife_secs = 2\nqr_file = \"{dir}-beacon.png\"\n";

/// `sonotap wallet pay` in wallet `w` bound to gate `dir`'s beacon (its QR
/// image), once the gate shows one; the token's bytes.
fn pay_at_gate(s: &Scratch, dir: &str) -> Vec<u8> {
    let png = format!("{dir}-beacon.png");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !s.path(&png).exists() {
        assert!(Instant::now() < deadline, "{dir} shows no beacon");
        thread::sleep(Duration::from_millis(50));
    }
    s.ok(&[
        "wallet",
        "pay",
        "--dir",
        "w",
        "--amount",
        "100",
        "--beacon",
        &png,
        "--out",
        "bound.tok",
    ]);
    fs::read(s.path("bound.tok")).expect("token")
}

#[test]
fn a_token_bound_to_one_gates_beacon_opens_it_and_its_recording_is_declined_anywhere_else() {
    let (s, mut gates, _w) = site_with(2, BEACON);
    for g in &mut gates {
        g.start(&s);
    }
    let token = pay_at_gate(&s, "r1");
    assert_eq!(token.len(), 200, "a version-2 token");
    assert_eq!(token[0], 2);
    gates[0].show(&token);
    gates[0].wait_opens(1, Duration::from_secs(10));
    // The recording, at the other gate: bound to gate-1's challenge.
    gates[1].show(&token);
    gates[1].expect_declined(&s, "another gate's, or a challenge");
    for g in &mut gates {
        g.stop();
    }
}

#[test]
fn a_token_bound_to_a_challenge_that_lived_out_is_declined_at_its_own_gate() {
    let (s, mut gates, _w) = site_with(2, BEACON);
    gates[0].start(&s);
    let token = pay_at_gate(&s, "r1");
    // The rider, or a recording of them, comes back after the challenge's
    // two seconds: the gate has drawn new challenges since.
    thread::sleep(Duration::from_millis(3500));
    gates[0].show(&token);
    gates[0].expect_declined(&s, "a challenge lives 2s");
    // A fresh one opens it.
    let fresh = pay_at_gate(&s, "r1");
    gates[0].show(&fresh);
    gates[0].wait_opens(1, Duration::from_secs(10));
    gates[0].stop();
}

#[test]
fn a_version_1_token_is_declined_at_a_gate_that_beacons_unless_the_operator_allows_it() {
    let (s, mut gates, mut w) = site_with(2, BEACON);
    gates[0].start(&s);
    let v1 = pay(&mut w);
    gates[0].show(&v1);
    gates[0].expect_declined(&s, "a version-1 token at a gate");
    gates[0].stop();
    // The operator allows version-1 tokens during a migration.
    let config = fs::read_to_string(&gates[0].config).expect("config");
    fs::write(
        &gates[0].config,
        config.replace("[beacon]\n", "[beacon]\naccept_version_1 = true\n"),
    )
    .expect("config");
    gates[0].start(&s);
    let v1 = pay(&mut w);
    gates[0].show(&v1);
    gates[0].wait_opens(1, Duration::from_secs(10));
    gates[0].stop();
}

#[test]
fn a_phone_hears_the_gates_beacon_through_alsa_and_its_token_opens_that_gate_only() {
    // One challenge for the whole test, played once at start.
    let beacon = "[beacon]\nperiod_secs = 60\nlife_secs = 120\nsound = true\n\
                  device = \"gate_speaker\"\nvolume = 0.3\nevery_ms = 60000\n";
    let (s, mut gates, _w) = site_with(2, beacon);
    speaker_to_microphone(&s);
    gates[0].start(&s);
    let deadline = Instant::now() + Duration::from_secs(10);
    while fs::metadata(s.path("speaker.raw")).map_or(0, |m| m.len()) < 96_000 {
        assert!(Instant::now() < deadline, "the gate played no beacon");
        thread::sleep(Duration::from_millis(50));
    }
    thread::sleep(Duration::from_millis(1500)); // the whole beacon is written
    // The phone listens on its microphone (the file-backed capture device).
    let out = s.run_with_home(&[
        "wallet",
        "pay",
        "--dir",
        "w",
        "--amount",
        "100",
        "--beacon",
        "alsa:sonotap_test",
        "--listen-secs",
        "5",
        "--out",
        "heard.tok",
    ]);
    assert!(
        out.status.success(),
        "wallet pay --beacon: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = fs::read(s.path("heard.tok")).expect("token");
    assert_eq!(token[0], 2, "bound to the beacon heard");
    // The same sound, recorded to a WAV file, serves a second phone.
    speaker_as_wav(&s, "heard.wav");
    s.ok(&[
        "wallet",
        "pay",
        "--dir",
        "w",
        "--amount",
        "100",
        "--beacon",
        "heard.wav",
        "--out",
        "from-wav.tok",
    ]);
    let from_wav = fs::read(s.path("from-wav.tok")).expect("token");
    assert_eq!(
        from_wav[132..136],
        token[132..136],
        "the recording carries the same gate and challenge"
    );
    gates[0].show(&token);
    gates[0].wait_opens(1, Duration::from_secs(10));
    gates[0].stop();
    // The token's time is the gate's, as heard: measured against the
    // decision, it is within the slack the policy allows version 2.
    let measured = s.ok(&["reader", "clock", "--data", "r1", "--json"]);
    eprintln!("reader clock: {measured}");
    let v2: serde_json::Value = serde_json::from_str(measured.trim()).expect("one version");
    assert_eq!(v2["version"], 2);
    assert!(
        v2["max_abs_secs"].as_u64().expect("max")
            <= u64::from(sonotap_protocol::policy::GATE_TIME_SLACK_SECS),
        "{v2}"
    );
    // A recording of the rider's token, played at gate-2: bound to gate-1.
    gates[1].start(&s);
    gates[1].show(&token);
    gates[1].expect_declined(&s, "another gate's, or a challenge");
    gates[1].stop();
}
