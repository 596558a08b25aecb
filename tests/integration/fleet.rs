//! The operator's view of a fleet (issue 21): readers report themselves at
//! each sync round, `hub readers` lists them, `hub serve --metrics` serves
//! the hub's counters and the fleet's state to Prometheus, and the alert
//! rules and dashboard in `hw/monitoring/` use only metrics that exist.
//! Against a real `hub serve` process on 127.0.0.1.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sonotap_protocol::api::AUTH_SCHEME;
use sonotap_protocol::token::Scope;
use sonotap_reader::daemon::metrics::Metrics;
use sonotap_reader::reader::Reader;
use sonotap_wallet::Wallet;

use crate::pg_server;
use crate::util::{HubProcess, Scratch, copy_dir, issued_wallet, last_json, pay_token, succeeded};

const NOW: u64 = 1_790_000_000;

/// Hub `hub`; readers `ra` (gate-a), `rb` (gate-b) and `rc` (gate-c) registered.
fn site() -> Scratch {
    let s = Scratch::new();
    s.ok(&["hub", "init", "--data", "hub"]);
    for (dir, id) in [("ra", "gate-a"), ("rb", "gate-b"), ("rc", "gate-c")] {
        s.reader_init(dir, id, &[]);
        s.register_reader(dir, id);
    }
    s
}

fn accept(s: &Scratch, reader: &str, token: &[u8], at: u64) {
    let mut r = Reader::open(&s.path(reader)).expect("reader");
    let outcome = r.present(token, None, at).expect("present");
    assert!(outcome.decision.is_ok(), "{:?}", outcome.decision);
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into()
}

fn scrape(url: &str) -> String {
    let mut response = agent().get(url).call().expect("metrics answer");
    assert_eq!(response.status().as_u16(), 200);
    response.body_mut().read_to_string().expect("text")
}

/// The value of the sample named exactly `series` (name and labels).
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// The names of the samples in an exposition.
fn sample_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

/// `hub readers --json` on the hub's state in `database` (else its SQLite file).
fn readers_json(s: &Scratch, database: Option<&str>) -> serde_json::Value {
    let args = ["hub", "readers", "--data", "hub", "--json"];
    serde_json::from_str(&succeeded(&args, s.run_on_hub(database, &args))).expect("json")
}

fn row<'a>(fleet: &'a serde_json::Value, id: &str) -> &'a serde_json::Value {
    fleet["readers"]
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["reader"] == id))
        .expect("reader row")
}

fn unix_now() -> u64 {
    unix_ms() / 1000
}

fn unix_ms() -> u64 {
    u64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_millis(),
    )
    .expect("ms")
}

#[test]
fn issue21_the_hub_shows_every_reader_and_serves_the_fleet_to_prometheus() {
    fleet_view(None);
}

#[test]
fn issue21_the_fleet_view_on_postgresql() {
    let Some(server) = pg_server::PgServer::start() else {
        return;
    };
    server.create_database("fleet");
    fleet_view(Some(&server.url("fleet")));
}

/// Readers syncing (a clone and a replay among their records), one never
/// heard from, as `hub readers` and the metrics show them; the hub's state
/// in `database` (PostgreSQL), else its SQLite file.
fn fleet_view(database: Option<&str>) {
    let s = site();
    let mut extra = Vec::new();
    if let Some(url) = database {
        for (dir, id) in [("ra", "gate-a"), ("rb", "gate-b"), ("rc", "gate-c")] {
            let key = format!("{dir}/reader.pub");
            let args = [
                "hub", "reader", "add", "--data", "hub", "--id", id, "--key", &key,
            ];
            succeeded(&args, s.run_on_hub(database, &args));
        }
        extra = vec!["--database", url];
    }
    let (hub, metrics_url) = HubProcess::start_with_metrics(&s, &extra);
    let mut honest = issued_wallet(s.dir.path(), "honest", Scope::Transit, 5_000, NOW);
    let mut phone = issued_wallet(s.dir.path(), "phone", Scope::Transit, 5_000, NOW);
    // A clone of the phone, and one token replayed at a second gate.
    copy_dir(&s.path("phone"), &s.path("clone"));
    let mut clone = Wallet::open(&s.path("clone")).expect("clone");
    accept(&s, "ra", &pay_token(&mut phone, 250, NOW), NOW);
    accept(&s, "rb", &pay_token(&mut clone, 200, NOW + 5), NOW + 5);
    let copied = pay_token(&mut honest, 100, NOW + 10);
    accept(&s, "ra", &copied, NOW + 10);
    accept(&s, "rb", &copied, NOW + 12);

    for reader in ["ra", "rb"] {
        let out = s.reader_sync(reader, &hub.url, &[]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let round = last_json(&out);
        assert_eq!(round["records"], 2);
        assert_eq!(round["report_error"], serde_json::Value::Null, "{round}");
    }

    // `hub readers`: gate-a synced before the clone was seen, so it is one
    // deny-list version behind; gate-c was never heard from.
    let fleet = readers_json(&s, database);
    assert_eq!(fleet["deny_version"], 1, "{fleet}");
    let a = row(&fleet, "gate-a");
    let report = &a["report"];
    assert_eq!(report["queue"], 0, "{a}");
    assert_eq!(report["lag_secs"], 0);
    assert_eq!(report["deny_version"], 0);
    assert_eq!(report["software"], env!("CARGO_PKG_VERSION"));
    let offset = report["clock_offset_ms"].as_i64().expect("offset");
    assert!(
        offset.abs() < 10_000,
        "same machine, same clock: {offset} ms"
    );
    let error = a["clock_error_ms"].as_i64().expect("clock error");
    assert!(error.abs() < 10_000, "{a}");
    let seen = a["last_seen_at"].as_u64().expect("seen");
    assert!(unix_now().abs_diff(seen) < 60, "{a}");
    assert!(a["last_upload_at"].as_u64().is_some(), "{a}");
    assert_eq!(row(&fleet, "gate-b")["report"]["deny_version"], 1);
    let c = row(&fleet, "gate-c");
    assert_eq!(c["report"], serde_json::Value::Null, "{c}");
    assert_eq!(c["last_seen_at"], serde_json::Value::Null);
    let args = ["hub", "readers", "--data", "hub"];
    let table = succeeded(&args, s.run_on_hub(database, &args));
    let line = |id: &str| {
        table
            .lines()
            .find(|l| l.starts_with(id))
            .unwrap_or_else(|| panic!("no {id} in {table}"))
            .to_owned()
    };
    assert!(line("gate-a").contains("0 -1"), "{table}");
    assert!(line("gate-a").contains(" ok "), "the same clock: {table}");
    assert!(line("gate-b").contains("1 ok"), "{table}");
    assert!(line("gate-c").contains("never"), "{table}");

    // A refused upload is counted by its outcome.
    let (status, _) = post(&format!("{}/v1/batches", hub.url), b"not a batch", &[]);
    assert_eq!(status, 400);

    let text = scrape(&metrics_url);
    let at = |series: &str| value(&text, series);
    assert_eq!(
        at("sonotap_hub_ingest_batches_total{outcome=\"stored\"}"),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        at("sonotap_hub_ingest_batches_total{outcome=\"malformed\"}"),
        Some(1.0)
    );
    assert_eq!(
        at("sonotap_hub_ingest_records_total{outcome=\"new\"}"),
        Some(4.0)
    );
    assert_eq!(at("sonotap_hub_ingest_seconds_count"), Some(2.0));
    assert_eq!(
        at("sonotap_hub_requests_total{route=\"/v1/report\",code=\"200\"}"),
        Some(2.0)
    );
    assert_eq!(
        at("sonotap_hub_clearing_flags_total{rule=\"counter_reused\"}"),
        Some(1.0)
    );
    assert_eq!(at("sonotap_hub_replays_total"), Some(1.0));
    assert_eq!(at("sonotap_hub_deny_list_version"), Some(1.0));
    assert_eq!(at("sonotap_hub_readers"), Some(3.0));
    assert_eq!(
        at("sonotap_hub_reader_queue_records{reader=\"gate-a\"}"),
        Some(0.0)
    );
    assert_eq!(
        at("sonotap_hub_reader_deny_list_version{reader=\"gate-a\"}"),
        Some(0.0)
    );
    assert_eq!(
        at("sonotap_hub_reader_info{reader=\"gate-a\",software=\"0.1.0\"}"),
        Some(1.0)
    );
    // gate-c counts as seen at its registration, so a silent-reader alert finds it.
    let registered = at("sonotap_hub_reader_last_seen_timestamp_seconds{reader=\"gate-c\"}")
        .expect("gate-c last seen");
    assert!((unix_now() as f64 - registered).abs() < 120.0, "{text}");
    assert_eq!(
        at("sonotap_hub_reader_queue_records{reader=\"gate-c\"}"),
        None
    );
    assert_eq!(at("sonotap_hub_database_errors_total"), Some(0.0));
    assert_eq!(
        at("sonotap_hub_connections{kind=\"writer\",state=\"busy\"}"),
        Some(0.0)
    );

    // Every metric the alert rules and the dashboard use is served, by the
    // hub (this scrape) or by a reader's daemon.
    let mut served = sample_names(&text);
    served.extend(sample_names(&Metrics::new(0).render(0)));
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    for file in [
        "hw/monitoring/alerts.yml",
        "hw/monitoring/grafana-dashboard.json",
    ] {
        let body = std::fs::read_to_string(repo.join(file)).expect(file);
        let used = metric_names(&body);
        assert!(used.len() >= 8, "{file} uses {used:?}");
        let missing: Vec<_> = used.difference(&served).collect();
        assert!(
            missing.is_empty(),
            "{file} uses metrics nobody serves: {missing:?}"
        );
    }
}

/// The review's first finding: only `reader sync` reported, so every reader
/// run by the daemon looked silent when idle and showed no state at all.
#[test]
fn issue21_the_daemons_uplink_reports_the_reader_after_its_rounds() {
    let s = site();
    let hub = HubProcess::start_with(&s, &[]);
    let mut w = issued_wallet(s.dir.path(), "w", Scope::Transit, 5_000, NOW);
    accept(&s, "ra", &pay_token(&mut w, 100, NOW), NOW);
    let config = s.path("daemon.toml");
    std::fs::write(
        &config,
        format!(
            "data = \"ra\"\n[hub]\nurl = \"{}\"\ninterval_secs = 1\ntimeout_secs = 5\n",
            hub.url
        ),
    )
    .expect("config");
    let mut daemon = crate::util::Daemon::start(&s, &config, &[]);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let report = loop {
        let fleet = readers_json(&s, None);
        let a = row(&fleet, "gate-a").clone();
        if a["report"]["queue"] == 0 && a["last_upload_at"].is_u64() {
            break a;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no report from the daemon: {a}\n{}",
            daemon.drain_log()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(report["report"]["software"], env!("CARGO_PKG_VERSION"));
    daemon.stop();
}

/// The `sonotap_…` metric names a rules file or a dashboard uses.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("sonotap_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        // Words such as `sonotap_hub` in prose are not metrics.
        if name.matches('_').count() >= 2 {
            names.insert(name.to_owned());
        }
        rest = &tail[end..];
    }
    names
}

#[test]
fn issue21_the_dashboard_is_grafana_json_with_one_id_per_panel_on_the_grid() {
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(repo.join("hw/monitoring/grafana-dashboard.json"))
        .expect("dashboard");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    assert_eq!(dashboard["uid"], "sonotap-fleet");
    assert!(dashboard["schemaVersion"].as_u64().is_some_and(|v| v >= 30));
    let panels = dashboard["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    for panel in panels {
        let id = panel["id"].as_u64().expect("id");
        assert!(ids.insert(id), "panel id {id} twice");
        let grid = &panel["gridPos"];
        let (x, w) = (
            grid["x"].as_u64().expect("x"),
            grid["w"].as_u64().expect("w"),
        );
        assert!(
            x + w <= 24 && w > 0 && grid["h"].as_u64().is_some(),
            "{panel}"
        );
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(panel["datasource"]["uid"], "${DS_PROMETHEUS}", "{panel}");
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{panel}");
        for target in targets {
            let expr = target["expr"].as_str().expect("expr");
            assert!(expr.contains("sonotap_"), "{panel}");
            assert_eq!(
                expr.matches('(').count(),
                expr.matches(')').count(),
                "unbalanced: {expr}"
            );
        }
    }
    assert!(ids.len() >= 20, "{} panels", ids.len());
}

/// POSTs `body` to `url` as an upload would be sent; the status and the text.
fn post(url: &str, body: &[u8], headers: &[(&str, &str)]) -> (u16, String) {
    let mut request = agent()
        .post(url)
        .header("content-type", "application/octet-stream");
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let mut response = request.send(body).expect("an answer");
    let status = response.status().as_u16();
    (status, response.body_mut().read_to_string().expect("body"))
}

/// A hostile report: what it is, who signs it with which method (none:
/// unsigned), the target signed, the target sent, the body, the status.
type Case<'a> = (
    &'a str,
    Option<(&'a str, &'a str)>,
    String,
    String,
    &'a [u8],
    u16,
);

/// `Authorization` for `METHOD target`, signed by reader `dir` now.
fn signed_by(s: &Scratch, dir: &str, method: &str, target: &str) -> String {
    signed_at(s, dir, method, target, unix_ms())
}

/// [`signed_by`], stamped `at_ms` (hub time as the reader estimates it).
fn signed_at(s: &Scratch, dir: &str, method: &str, target: &str, at_ms: u64) -> String {
    let reader = Reader::open(&s.path(dir)).expect("reader");
    let request = reader
        .sign_request(at_ms, rand::random(), method, target)
        .expect("sign");
    format!(
        "{AUTH_SCHEME} {}",
        hex::encode(request.encode().expect("encode"))
    )
}

#[test]
fn issue21_a_report_unsigned_forged_or_malformed_is_refused_and_stores_nothing() {
    let s = site();
    let hub = HubProcess::start_with(&s, &[]);
    let good = "/v1/report?reader_ms=1&applied_ms=-2000&deny=0&queue=0&lag=0&software=0.1.0";
    let send = |target: &str, auth: Option<String>, body: &[u8]| {
        let headers: Vec<(&str, &str)> = auth
            .as_deref()
            .map(|a| vec![("authorization", a)])
            .unwrap_or_default();
        post(&format!("{}{target}", hub.url), body, &headers)
    };
    s.reader_init("stray", "gate-z", &[]);
    let other = |from: &str, to: &str| good.replace(from, to);
    let cases: Vec<Case> = vec![
        ("unsigned", None, String::new(), good.into(), b"", 401),
        (
            "signed for another query",
            Some(("ra", "POST")),
            other("queue=0", "queue=9"),
            good.into(),
            b"",
            401,
        ),
        (
            "signed as a GET",
            Some(("ra", "GET")),
            good.into(),
            good.into(),
            b"",
            401,
        ),
        (
            "by an unregistered reader",
            Some(("stray", "POST")),
            good.into(),
            good.into(),
            b"",
            401,
        ),
        (
            "with a body",
            Some(("ra", "POST")),
            good.into(),
            good.into(),
            b"queue=0",
            400,
        ),
        (
            "a version with a space",
            Some(("ra", "POST")),
            other("0.1.0", "0.1%200"),
            other("0.1.0", "0.1%200"),
            b"",
            400,
        ),
        (
            "a version too long",
            Some(("ra", "POST")),
            other("0.1.0", &"9".repeat(33)),
            other("0.1.0", &"9".repeat(33)),
            b"",
            400,
        ),
        (
            "an unknown field",
            Some(("ra", "POST")),
            format!("{good}&extra=1"),
            format!("{good}&extra=1"),
            b"",
            400,
        ),
        (
            "a field missing",
            Some(("ra", "POST")),
            other("&lag=0", ""),
            other("&lag=0", ""),
            b"",
            400,
        ),
        (
            "a version with a + (a space in a query)",
            Some(("ra", "POST")),
            other("0.1.0", "0.2.0+deb12"),
            other("0.1.0", "0.2.0+deb12"),
            b"",
            400,
        ),
        (
            "a number past u64",
            Some(("ra", "POST")),
            other("deny=0", "deny=18446744073709551616"),
            other("deny=0", "deny=18446744073709551616"),
            b"",
            400,
        ),
    ];
    for (case, signer, signed, sent, body, want) in cases {
        let auth = signer.map(|(dir, method)| signed_by(&s, dir, method, &signed));
        let (status, text) = send(&sent, auth, body);
        assert_eq!(status, want, "{case}: {text}");
        let answer: serde_json::Value = serde_json::from_str(&text).expect("JSON error");
        assert!(answer["error"].is_string(), "{case}: {text}");
    }
    let fleet = readers_json(&s, None);
    assert_eq!(
        row(&fleet, "gate-a")["report"],
        serde_json::Value::Null,
        "{fleet}"
    );

    // The same report, signed and sent as signed, is kept.
    let (status, text) = send(good, Some(signed_by(&s, "ra", "POST", good)), b"");
    assert_eq!(status, 200, "{text}");
    let fleet = readers_json(&s, None);
    let report = &row(&fleet, "gate-a")["report"];
    assert_eq!(report["software"], "0.1.0", "{fleet}");
    assert!(
        report["clock_offset_ms"]
            .as_i64()
            .is_some_and(|ms| ms > 1_000_000_000),
        "a reader whose clock says 1 ms after 1970 is far behind: {report}"
    );
    assert_eq!(report["applied_offset_ms"], -2000, "{report}");

    // A report recorded and sent again later (within the signed request's
    // window) does not replace a newer one.
    let old = good.replace("queue=0", "queue=7");
    let new = good.replace("queue=0", "queue=1");
    let base = unix_ms();
    let old_auth = signed_at(&s, "ra", "POST", &old, base + 1_000);
    assert_eq!(send(&old, Some(old_auth.clone()), b"").0, 200);
    assert_eq!(row(&readers_json(&s, None), "gate-a")["report"]["queue"], 7);
    let new_auth = signed_at(&s, "ra", "POST", &new, base + 2_000);
    assert_eq!(send(&new, Some(new_auth), b"").0, 200);
    assert_eq!(send(&old, Some(old_auth), b"").0, 200);
    assert_eq!(
        row(&readers_json(&s, None), "gate-a")["report"]["queue"],
        1,
        "the replayed older report changed nothing"
    );
}
