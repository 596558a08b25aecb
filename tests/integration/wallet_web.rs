//! The web wallet: its own tests (`wallet-web/test/*.test.js`, node's
//! built-in runner), run by `cargo test` against this build's `sonotap`, so
//! that the README's one test command covers the phone's code too; and the
//! wallet as a real `hub serve` serves it.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::audio_capture::{alsa_test_device, speaker_as_wav, speaker_to_microphone};
use sonotap_protocol::beacon::Beacon;

use crate::daemon::{Relay, RelayBoard, config, wait_for};
use crate::util::{Daemon, HubProcess, Scratch, mkfifo, open_fifo, records, unsynced};

/// Installs wallet-web/'s npm packages as package-lock.json pins them (the
/// QR renderer the wallet vendors, checked against the installed one, and
/// puppeteer-core for the browser tests), once per test run and before any
/// test that needs them: a fresh clone has none.
fn npm_ready() {
    static READY: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    READY.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let lock = std::fs::read(root.join("wallet-web/package-lock.json")).expect("the lock");
        let installed = std::fs::read(root.join("wallet-web/node_modules/.package-lock.json"));
        if installed.is_ok_and(|i| same_packages(&i, &lock)) {
            return;
        }
        let status = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--prefix", "wallet-web"])
            .current_dir(root)
            .status()
            .unwrap_or_else(|e| panic!("npm (with node 20 or newer) is needed: {e}"));
        assert!(status.success(), "npm ci in wallet-web/ failed");
    });
}

/// Whether npm's record of what it installed names the lock's packages at
/// the lock's versions.
fn same_packages(installed: &[u8], lock: &[u8]) -> bool {
    let packages = |bytes: &[u8]| -> Option<Vec<(String, Option<serde_json::Value>)>> {
        let all: serde_json::Value = serde_json::from_slice(bytes).ok()?;
        let mut list: Vec<_> = all
            .get("packages")?
            .as_object()?
            .iter()
            .filter(|(name, _)| !name.is_empty())
            .map(|(name, p)| (name.clone(), p.get("version").cloned()))
            .collect();
        list.sort_by(|a, b| a.0.cmp(&b.0));
        Some(list)
    };
    matches!((packages(installed), packages(lock)), (Some(a), Some(b)) if a == b)
}

#[test]
fn the_web_wallets_node_tests_pass() {
    npm_ready();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let tests: Vec<_> = std::fs::read_dir(root.join("wallet-web/test"))
        .expect("wallet-web/test")
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.to_string_lossy().ends_with(".test.js"))
        .collect();
    assert!(!tests.is_empty(), "no wallet-web/test/*.test.js");
    let out = Command::new("node")
        .arg("--test")
        .args(&tests)
        .env("SONOTAP_BIN", env!("CARGO_BIN_EXE_sonotap"))
        .current_dir(root)
        .output()
        .unwrap_or_else(|e| panic!("node (20 or newer) is needed for the web wallet's tests: {e}"));
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "node --test failed:\n{report}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(report.contains("# fail 0"), "{report}");
}

/// A raw request's status line and headers, lower-cased (for paths an HTTP
/// client would tidy up before sending).
fn raw_get(url: &str, target: &str) -> String {
    let addr = url.trim_start_matches("http://");
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(
        stream,
        "GET {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer.to_lowercase()
}

#[test]
fn issue19_hub_serve_serves_the_wallet_with_the_headers_an_offline_app_needs() {
    let s = Scratch::new();
    s.ok(&["hub", "init", "--data", "hub"]);
    let hub = HubProcess::start(&s, 0);
    let agent = ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .build(),
    );
    let get = |path: &str, etag: Option<&str>| {
        let mut request = agent.get(&format!("{}{path}", hub.url));
        if let Some(tag) = etag {
            request = request.header("If-None-Match", tag);
        }
        let mut answer = request.call().expect("an answer");
        let header = |name: &str| {
            answer
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned()
        };
        let headers = [
            "content-type",
            "content-security-policy",
            "x-content-type-options",
            "cache-control",
            "etag",
            "location",
        ]
        .map(header);
        let body = answer.body_mut().read_to_string().unwrap_or_default();
        (answer.status().as_u16(), headers, body)
    };

    let (status, h, _) = get("/wallet", None);
    assert_eq!((status, h[5].as_str()), (308, "/wallet/"));
    let (status, h, page) = get("/wallet/", None);
    assert_eq!(status, 200);
    assert_eq!(h[0], "text/html; charset=utf-8");
    assert!(
        h[1].starts_with("default-src 'none'; script-src 'self'"),
        "{}",
        h[1]
    );
    assert!(
        !h[1].contains("unsafe"),
        "no inline script or eval: {}",
        h[1]
    );
    assert_eq!((h[2].as_str(), h[3].as_str()), ("nosniff", "no-cache"));
    assert!(page.contains(r#"<script type="module" src="app.js">"#));
    let (status, again, _) = get("/wallet/", Some(&h[4]));
    assert_eq!(status, 304, "the same ETag: not modified");
    assert_eq!(again[4], h[4]);

    for (path, kind) in [
        ("app.js", "text/javascript; charset=utf-8"),
        ("sonotap/modem.js", "text/javascript; charset=utf-8"),
        (
            "vendor/qrcode-generator.mjs",
            "text/javascript; charset=utf-8",
        ),
        ("manifest.webmanifest", "application/manifest+json"),
        ("icon.svg", "image/svg+xml"),
    ] {
        let (status, h, _) = get(&format!("/wallet/{path}"), None);
        assert_eq!((status, h[0].as_str()), (200, kind), "{path}");
    }
    let (_, _, worker) = get("/wallet/sw.js", None);
    assert!(
        worker.contains("self.sonotapBuild = \""),
        "the worker names its build"
    );

    // Only the wallet's own files, by exact path: no tests, no notes, no
    // climbing out of the folder, and not to other methods.
    for target in [
        "/wallet/test/protocol.test.js",
        "/wallet/package.json",
        "/wallet/README.md",
        "/wallet/../Cargo.toml",
        "/wallet/%2e%2e/Cargo.toml",
        "/wallet/sonotap/../app.js",
        "/wallet//app.js",
        "/wallet/app.js/",
    ] {
        let answer = raw_get(&hub.url, target);
        assert!(answer.starts_with("http/1.1 404"), "{target}: {answer}");
    }
    let mut posted = agent
        .post(&format!("{}/wallet/app.js", hub.url))
        .send(&b""[..])
        .expect("an answer");
    assert_eq!(posted.status().as_u16(), 404);
    let _ = posted.body_mut().read_to_string();
}

/// Runs one step of the browser phone (`wallet-web/test/browser/phone.mjs`):
/// what the page showed, as JSON.
fn phone(s: &Scratch, step: &[&str]) -> serde_json::Value {
    let (shown, refused) = phone_in(s, "phone-profile", step);
    assert!(!refused, "phone {step:?}: the page refused: {shown}");
    shown
}

/// [`phone`] with its browser profile in `profile` (another phone), which
/// may refuse: what the page showed, and whether it said it refused.
fn phone_in(s: &Scratch, profile: &str, step: &[&str]) -> (serde_json::Value, bool) {
    npm_ready();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("node")
        .arg(root.join("wallet-web/test/browser/phone.mjs"))
        .arg(s.path(profile))
        .arg(s.path("shots"))
        .args(step)
        .current_dir(root.join("wallet-web"))
        .output()
        .expect("node runs the phone");
    assert!(
        matches!(out.status.code(), Some(0 | 1)),
        "phone {step:?}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let shown = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "phone {step:?} printed no JSON line ({e}): {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (shown, out.status.code() == Some(1))
}

/// Account `rider-1` of hub `hub` (offline limit 10.00, 2.50 a payment,
/// `credit` paid in), made by `hub` commands that `run` runs; a code to
/// enrol a phone in it.
fn open_account(run: &dyn Fn(&[&str]) -> String, credit: &str) -> String {
    run(&[
        "hub",
        "account",
        "new",
        "rider-1",
        "--data",
        "hub",
        "--offline-limit",
        "1000",
        "--per-payment",
        "250",
    ]);
    run(&[
        "hub",
        "account",
        "credit",
        "rider-1",
        credit,
        "--reference",
        "p1",
        "--data",
        "hub",
    ]);
    enrol_code(run)
}

/// A fresh code to enrol a phone in account `rider-1` of hub `hub`.
fn enrol_code(run: &dyn Fn(&[&str]) -> String) -> String {
    let code: serde_json::Value = serde_json::from_str(&run(&[
        "hub", "account", "enroll", "rider-1", "--data", "hub", "--json",
    ]))
    .expect("json");
    code["code"].as_str().expect("a code").to_owned()
}

/// A hub with reader `gate-1` registered, account `rider-1` (offline limit
/// 10.00, 2.50 a payment, 30.00 paid in) and a `hub serve` on 127.0.0.1;
/// the browser phone has enrolled with a code from `hub account enroll`
/// and renewed. The hub, and the wallet's URL.
fn enrolled_phone(s: &Scratch) -> (HubProcess, String) {
    s.ok(&["hub", "init", "--data", "hub"]);
    s.reader_init("r", "gate-1", &[]);
    s.register_reader("r", "gate-1");
    let code = open_account(&|args| s.ok(args), "3000");
    std::fs::create_dir_all(s.path("shots")).expect("shots");
    let hub = HubProcess::start(s, 0);
    let wallet = format!("{}/wallet/", hub.url);
    let home = phone(s, &["enrol", &format!("{wallet}#enrol={code}")]);
    assert_eq!(home["left"], "€10.00", "{home}");
    (hub, wallet)
}

/// A screenshot (any size up to 1280 × 720) centred in a 1280 × 720 Y8
/// camera frame, grey around it.
fn camera_frame(png: &Path) -> Vec<u8> {
    let shot = image::open(png).expect("the screenshot").to_luma8();
    let (w, h) = (1280usize, 720usize);
    let (sw, sh) = (shot.width() as usize, shot.height() as usize);
    assert!(sw <= w && sh <= h, "a {sw}x{sh} screenshot");
    let mut frame = vec![128u8; w * h];
    let (x0, y0) = ((w - sw) / 2, (h - sh) / 2);
    for y in 0..sh {
        frame[(y0 + y) * w + x0..(y0 + y) * w + x0 + sw]
            .copy_from_slice(&shot.as_raw()[y * sw..(y + 1) * sw]);
    }
    frame
}

/// The whole life of a rider's phone in a real browser: the operator opens
/// an account and makes a code; the page (served by a real `hub serve`)
/// enrols and renews; offline, reloaded from its service worker, it pays
/// by sound (what it played, fed to a real `sonotap run` through a
/// file-backed ALSA device) and by QR code (a screenshot of the page as
/// the camera frame), and the gate on a pseudo-terminal opens for each;
/// the reader syncs; the page's statement shows both charges and the new
/// balance.
#[test]
fn issue19_a_phone_in_a_real_browser_enrols_pays_by_sound_and_qr_offline_and_sees_its_statement() {
    let s = Scratch::new();
    let (hub, wallet) = enrolled_phone(&s);
    let sound_wav = s.path("sound.wav");
    let paid = phone(
        &s,
        &["pay-sound", &wallet, sound_wav.to_str().expect("path")],
    );
    assert_eq!(paid["left"], "€7.50", "{paid}");
    let qr_png = s.path("qr.png");
    let shown = phone(&s, &["pay-qr", &wallet, qr_png.to_str().expect("path")]);
    assert_eq!(shown["left"], "€5.00", "{shown}");

    // The microphone: what the page played, at the page's rate, captured
    // at 48 kHz.
    let mut reader = hound::WavReader::open(&sound_wav).expect("the page's sound");
    let rate = reader.spec().sample_rate;
    let played: Vec<f32> = reader
        .samples::<i16>()
        .map(|v| f32::from(v.expect("a sample")) / 32768.0)
        .collect();
    let heard = sonotap_modem::resample::resample(&played, f64::from(rate), 48_000.0);
    let mut pcm: Vec<i16> = vec![0; 24_000];
    pcm.extend(heard.iter().map(|v| (v * 20_000.0) as i16));
    pcm.extend(std::iter::repeat_n(0, 96_000));
    alsa_test_device(&s, "capture.raw", &pcm);

    let mut relay = Relay::new();
    mkfifo(&s.path("cam.y8"));
    let cfg = config(
        &s,
        &relay,
        &format!(
            "[audio]\nsource = \"device\"\ndevice = \"sonotap_test\"\n[camera]\nsource = \"pipe\"\npath = \"cam.y8\"\nbudget_ms = 1000\nwidth = 1280\nheight = 720\nformat = \"y8\"\n[hub]\nurl = \"{}\"\ninterval_secs = 1\ntimeout_secs = 5\n",
            hub.url
        ),
    );
    let mut daemon = Daemon::start(&s, &cfg, &[]);
    relay.wait_opens(1, Duration::from_secs(30));
    let mut fifo = open_fifo(&s.path("cam.y8"));
    let frame = camera_frame(&qr_png);
    for _ in 0..3 {
        fifo.write_all(&frame).expect("a frame");
    }
    relay.wait_opens(2, Duration::from_secs(30));
    let recs = records(&s, "r");
    assert_eq!(recs.len(), 2, "one record per payment");
    assert!(recs.iter().all(|r| r.amount == 100));
    wait_for("the hub acknowledges both", Duration::from_secs(30), || {
        unsynced(&s, "r") == 0
    });
    drop(fifo);
    daemon.stop();

    let statement = phone(&s, &["statement", &wallet]);
    assert_eq!(statement["balance"], "€28.00", "{statement}");
    assert_eq!(
        statement["entries"],
        serde_json::json!(["charge", "charge", "top_up"]),
        "{statement}"
    );
    // Each screen as the test saw it, for docs/wallet/ (README).
    let keep = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/wallet-web-screens");
    std::fs::create_dir_all(&keep).expect("target/wallet-web-screens");
    for screen in ["enrol", "home", "pay-sound", "pay-qr", "statement"] {
        let name = format!("{screen}.png");
        std::fs::copy(s.path("shots").join(&name), keep.join(&name)).expect("a screenshot");
    }
}

/// A gate that beacons (docs/protocol.md §3a) declines version-1 tokens.
/// The page, offline, listens on the phone's microphone (Chromium's, fed
/// what the real gate's speaker played through a file-backed ALSA
/// output), hears the gate, and pays by QR code with a version-2 token
/// bound to its challenge and stamped in its time; the gate opens.
#[test]
fn issue19_the_page_hears_a_gates_beacon_and_pays_it_with_a_token_bound_to_its_challenge() {
    let s = Scratch::new();
    let (hub, wallet) = enrolled_phone(&s);
    speaker_to_microphone(&s);
    let mut relay = Relay::new();
    mkfifo(&s.path("cam.y8"));
    let cfg = config(
        &s,
        &relay,
        &format!(
            "[camera]\nsource = \"pipe\"\npath = \"cam.y8\"\nbudget_ms = 1000\nwidth = 1280\nheight = 720\nformat = \"y8\"\n\
             [hub]\nurl = \"{}\"\ninterval_secs = 1\ntimeout_secs = 5\n\
             [beacon]\nperiod_secs = 60\nlife_secs = 120\nsound = true\ndevice = \"gate_speaker\"\nvolume = 0.3\nevery_ms = 1500\n",
            hub.url
        ),
    );
    let mut daemon = Daemon::start(&s, &cfg, &[]);
    // What the phone's microphone hears, in a loop: the gate's speaker
    // until it has played a whole beacon.
    // The file exists from the moment the output opens, empty at first:
    // finding no beacon in it yet is "not yet", not a failure.
    wait_for("the gate plays its beacon", Duration::from_secs(20), || {
        std::fs::metadata(s.path("speaker.raw")).is_ok() && {
            speaker_as_wav(&s, "heard.wav");
            let out = s.run(&["modem", "beacon", "decode", "heard.wav"]);
            out.status.success() && !out.stdout.trim_ascii().is_empty()
        }
    });
    // The speaker's file is mostly the silence an idle output plays, and
    // Chromium's microphone starts it from the top: a loop of the first
    // beacon and a second after it, heard every 1.7 s.
    let first: serde_json::Value = serde_json::from_str(
        s.ok(&["modem", "beacon", "decode", "--json", "heard.wav"])
            .lines()
            .next()
            .expect("a beacon"),
    )
    .expect("json");
    let (from, to) = (
        first["start_s"].as_f64().expect("start"),
        first["end_s"].as_f64().expect("end") + 1.0,
    );
    let mut played = hound::WavReader::open(s.path("heard.wav")).expect("the recording");
    let spec = played.spec();
    let samples: Vec<i16> = played
        .samples::<i16>()
        .map(|v| v.expect("a sample"))
        .collect();
    let at = |t: f64| ((t * f64::from(spec.sample_rate)) as usize).min(samples.len());
    let mut looped = hound::WavWriter::create(s.path("loop.wav"), spec).expect("wav");
    for &v in &samples[at(from)..at(to)] {
        looped.write_sample(v).expect("a sample");
    }
    looped.finalize().expect("wav");
    let qr_png = s.path("qr.png");
    let heard = s.path("loop.wav");
    let shown = phone(
        &s,
        &[
            "gate-qr",
            &wallet,
            qr_png.to_str().expect("path"),
            heard.to_str().expect("path"),
        ],
    );
    let tag = format!("{:08x}", sonotap_protocol::token::reader_tag("gate-1"));
    assert_eq!(shown["gate"], tag.as_str(), "{shown}");
    let token = hex::decode(shown["token"].as_str().expect("a token")).expect("hex");
    let token = sonotap_protocol::token::Token::decode(&token).expect("a token");
    assert!(token.gate_binding().is_some(), "a version-2 token: {shown}");
    let mut fifo = open_fifo(&s.path("cam.y8"));
    let frame = camera_frame(&qr_png);
    for _ in 0..3 {
        fifo.write_all(&frame).expect("a frame");
    }
    relay.wait_opens(1, Duration::from_secs(30));
    drop(fifo);
    daemon.stop();
    // Bound to the challenge the microphone heard, and stamped in the
    // gate's time as heard: the time of a beacon in the recording plus the
    // few seconds since the page heard it (the recording is older than
    // that: Chromium plays it in a loop).
    let heard: Vec<Beacon> = s
        .ok(&["modem", "beacon", "decode", "heard.wav"])
        .lines()
        .map(|line| Beacon::decode(&hex::decode(line.trim()).expect("hex")).expect("a beacon"))
        .collect();
    assert!(!heard.is_empty(), "no beacon in what the speaker played");
    let challenge = heard[0].challenge;
    assert!(heard.iter().all(|b| b.challenge == challenge));
    assert_eq!(
        token.gate_binding(),
        Some(sonotap_protocol::token::gate_binding(
            heard[0].reader_tag,
            &challenge
        ))
    );
    let stamped = token.payment.timestamp;
    assert!(
        heard
            .iter()
            .any(|b| (b.reader_time..=b.reader_time + 5).contains(&stamped)),
        "stamped {stamped}, beacons at {:?}",
        heard.iter().map(|b| b.reader_time).collect::<Vec<_>>()
    );
    let keep = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/wallet-web-screens");
    std::fs::create_dir_all(&keep).expect("target/wallet-web-screens");
    std::fs::copy(s.path("shots/gate.png"), keep.join("gate.png")).expect("a screenshot");
}

/// An issuer key rotation (docs/accounts.md §3.3): the operator adds key 2
/// to a PostgreSQL hub while its processes still sign with key 1; a phone
/// renews, and adopts the key set key 1 signed; once every process signs
/// with key 2, its next renewal, a credential under key 2, is installed. A
/// second phone of the account, which did not renew in between, has
/// nothing it trusts to vouch for key 2 and refuses that answer.
#[test]
fn issue19_a_phone_that_renewed_during_a_key_rotation_renews_under_the_new_issuer_key() {
    let Some(server) = crate::pg_server::PgServer::start() else {
        return;
    };
    let url = server.url("postgres");
    let s = Scratch::new();
    let db = |args: &[&str]| s.ok(&[args, &["--database", &url]].concat());
    db(&["hub", "init", "--data", "hub"]);
    let code = open_account(&db, "5000");
    let other = enrol_code(&db);
    std::fs::create_dir_all(s.path("shots")).expect("shots");
    let mut hub = HubProcess::start_with(&s, &["--database", &url]);
    let wallet = format!("{}/wallet/", hub.url);
    phone(&s, &["enrol", &format!("{wallet}#enrol={code}")]);
    let (_, refused) = phone_in(
        &s,
        "other-phone",
        &["enrol", &format!("{wallet}#enrol={other}")],
    );
    assert!(!refused, "the second phone enrols");
    db(&["hub", "init", "--data", "hub2", "--key-id", "2"]);
    std::thread::sleep(Duration::from_millis(1100)); // the hub's key set is read again
    let adopted = phone(&s, &["renew", &wallet]);
    assert_eq!(adopted["message"], "Your pass is up to date.", "{adopted}");
    // Every process now signs with key 2, at the same address (the page's
    // origin, and so its storage).
    hub.terminate();
    let listen = format!("127.0.0.1:{}", hub.port);
    let _hub2 = HubProcess::serve(&s, "hub2", &listen, &["--database", &url]);
    let renewed = phone(&s, &["renew", &wallet]);
    assert_eq!(renewed["message"], "Your pass is renewed.", "{renewed}");
    let (stranded, refused) = phone_in(&s, "other-phone", &["renew", &wallet]);
    assert!(refused, "{stranded}");
    assert_eq!(
        stranded["message"], "The hub's answer did not check out; nothing was changed.",
        "{stranded}"
    );
}

/// Regression (a review of the page): each tab kept the wallet's state in
/// memory and counted on from it, so two tabs of one wallet (a browser tab
/// beside the installed app) signed the same counter with other contents,
/// which the hub takes for a clone. Every payment now takes its counter
/// from the stored record under a lock all tabs share.
#[test]
fn issue19_two_tabs_of_one_wallet_paying_at_once_never_sign_the_same_counter() {
    let s = Scratch::new();
    let (_hub, wallet) = enrolled_phone(&s);
    let shown = phone(&s, &["two-tabs", &wallet]);
    let tokens: Vec<sonotap_protocol::token::Token> = shown["tokens"]
        .as_array()
        .expect("two tokens")
        .iter()
        .map(|t| {
            let bytes = hex::decode(t.as_str().expect("hex")).expect("hex");
            sonotap_protocol::token::Token::decode(&bytes).expect("a token")
        })
        .collect();
    let (ta, tb) = (&tokens[0], &tokens[1]);
    assert_ne!(
        ta.payment.counter, tb.payment.counter,
        "two tabs signed one counter: {shown}"
    );
    let mut totals = [ta.payment.total_before, tb.payment.total_before];
    totals.sort_unstable();
    assert_eq!(totals, [0, 250], "each counted the other's payment");
}
