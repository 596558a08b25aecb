//! The hub's Prometheus metrics (`hub serve --metrics ADDR`, docs/sync.md
//! §2.6): what this process counted since it started (requests, uploads by
//! outcome, ingest latency, database errors, its connections) and, read
//! from the database at each scrape, what the whole fleet's state is
//! (every reader's last contact and report, the deny-list version, the
//! clearing findings by kind), so several hub processes on one database
//! all show the same fleet.
//!
//! The metric names are part of the operator's interface: the alert rules
//! and the Grafana dashboard in `hw/monitoring/` use them, and a test
//! checks that every name they use is served.

use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::clearing::FraudRule;
use crate::fleet::Fleet;
use crate::ledger::IncidentKind;

/// The `Content-Type` of [`HubMetrics::render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Upper bounds of the ingest latency buckets, seconds.
const INGEST_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// The API's routes, as the `route` label names them (anything else is
/// `other`, so a scanner cannot grow the label set).
const ROUTES: [&str; 10] = [
    "/v1/batches",
    "/v1/deny",
    "/v1/keys",
    "/v1/time",
    "/v1/report",
    "/v1/health",
    "/v1/wallet/enrol",
    "/v1/wallet/renew",
    "/v1/wallet/statement",
    "/wallet",
];

/// How an upload ended, as the `outcome` label names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UploadOutcome {
    /// Stored new records.
    Stored,
    /// Every record was stored already (a retried upload).
    Duplicate,
    /// Not a canonical batch, or a request the API refuses as such (400, 411, 415).
    Malformed,
    /// Not signed by a registered reader (403; 401).
    Refused,
    /// Contradicts stored records (409).
    Conflict,
    /// The body came too slowly or too large, or too many at once (408,
    /// 413, 429).
    Rejected,
    /// The hub could not store it now (5xx).
    Unavailable,
}

impl UploadOutcome {
    const ALL: [UploadOutcome; 7] = [
        UploadOutcome::Stored,
        UploadOutcome::Duplicate,
        UploadOutcome::Malformed,
        UploadOutcome::Refused,
        UploadOutcome::Conflict,
        UploadOutcome::Rejected,
        UploadOutcome::Unavailable,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            UploadOutcome::Stored => "stored",
            UploadOutcome::Duplicate => "duplicate",
            UploadOutcome::Malformed => "malformed",
            UploadOutcome::Refused => "refused",
            UploadOutcome::Conflict => "conflict",
            UploadOutcome::Rejected => "rejected",
            UploadOutcome::Unavailable => "unavailable",
        }
    }

    /// The outcome of an upload answered with `status`; `duplicate` tells
    /// a stored upload (200) that added nothing.
    pub fn of(status: u16, duplicate: bool) -> Self {
        match status {
            200..=299 if duplicate => UploadOutcome::Duplicate,
            200..=299 => UploadOutcome::Stored,
            403 | 401 => UploadOutcome::Refused,
            409 => UploadOutcome::Conflict,
            408 | 413 | 429 => UploadOutcome::Rejected,
            500.. => UploadOutcome::Unavailable,
            _ => UploadOutcome::Malformed,
        }
    }
}

/// One answered request, as the metrics count it.
#[derive(Debug, Clone, Copy)]
pub struct Answered<'a> {
    /// The request's path.
    pub path: &'a str,
    /// The answer's status.
    pub status: u16,
    /// From the request head to the answer.
    pub elapsed: Duration,
    /// An upload's records: new, already stored (`None` when not stored).
    pub records: Option<(u64, u64)>,
    /// The answer is a failure of the hub's database.
    pub database_error: bool,
}

/// This process's connections to its state at a scrape.
#[derive(Debug, Clone, Copy, Default)]
pub struct Connections {
    /// Writer connections (more than one on PostgreSQL).
    pub writers: u64,
    /// Of those, storing something now.
    pub writers_busy: u64,
    /// Read connections serving a request now.
    pub readers_busy: u64,
    /// Read connections open and idle.
    pub readers_idle: u64,
    /// Time the writers spent waiting for PostgreSQL's locks, summed.
    pub lock_wait: Option<Duration>,
}

/// What this process counts, shared by every request.
#[derive(Debug)]
pub struct HubMetrics {
    requests: Family<[(&'static str, String); 2], Counter>,
    uploads: Family<[(&'static str, &'static str); 1], Counter>,
    records: Family<[(&'static str, &'static str); 1], Counter>,
    ingest_seconds: Histogram,
    database_errors: Counter,
    scrape_errors: Counter,
}

impl Default for HubMetrics {
    fn default() -> Self {
        let metrics = Self {
            requests: Family::default(),
            uploads: Family::default(),
            records: Family::default(),
            ingest_seconds: Histogram::new(INGEST_BUCKETS),
            database_errors: Counter::default(),
            scrape_errors: Counter::default(),
        };
        // Every outcome exists from the start, at 0: an alert on a rate
        // needs the series before the first event.
        for outcome in UploadOutcome::ALL {
            let _ = metrics
                .uploads
                .get_or_create(&[("outcome", outcome.as_str())]);
        }
        for outcome in ["new", "already_stored"] {
            let _ = metrics.records.get_or_create(&[("outcome", outcome)]);
        }
        metrics
    }
}

impl HubMetrics {
    /// Counts one answered request.
    pub fn answered(&self, request: &Answered<'_>) {
        let route = ROUTES
            .iter()
            .find(|r| **r == request.path)
            .map_or("other", |r| r);
        self.requests
            .get_or_create(&[
                ("route", route.to_owned()),
                ("code", request.status.to_string()),
            ])
            .inc();
        if request.database_error {
            self.database_errors.inc();
        }
        if route != "/v1/batches" {
            return;
        }
        let duplicate = request.records.is_some_and(|(new, _)| new == 0);
        let outcome = UploadOutcome::of(request.status, duplicate);
        self.uploads
            .get_or_create(&[("outcome", outcome.as_str())])
            .inc();
        if let Some((new, already)) = request.records {
            self.records
                .get_or_create(&[("outcome", "new")])
                .inc_by(new);
            self.records
                .get_or_create(&[("outcome", "already_stored")])
                .inc_by(already);
            self.ingest_seconds.observe(request.elapsed.as_secs_f64());
        }
    }

    /// The text exposition: this process's counters, its `connections`,
    /// and `fleet` (`None`: the database could not be read for this
    /// scrape, counted in `sonotap_hub_scrape_errors_total`).
    pub fn render(&self, fleet: Option<&Fleet>, connections: &Connections) -> String {
        if fleet.is_none() {
            self.scrape_errors.inc();
        }
        let mut registry = Registry::with_prefix("sonotap_hub");
        registry.register(
            "requests",
            "Requests answered by this process, by route and status code",
            self.requests.clone(),
        );
        registry.register(
            "ingest_batches",
            "Batch uploads by outcome: stored, duplicate, malformed, refused, conflict, rejected (too slow, too large), unavailable",
            self.uploads.clone(),
        );
        registry.register(
            "ingest_records",
            "Records in stored uploads: new, or already stored (a retried upload)",
            self.records.clone(),
        );
        registry.register(
            "ingest_seconds",
            "Time from an upload's request head to its acknowledgement, stored uploads",
            self.ingest_seconds.clone(),
        );
        registry.register(
            "database_errors",
            "Requests answered 503 because the hub's database failed",
            self.database_errors.clone(),
        );
        registry.register(
            "scrape_errors",
            "Scrapes whose fleet state could not be read from the database",
            self.scrape_errors.clone(),
        );
        register_connections(&mut registry, connections);
        if let Some(fleet) = fleet {
            register_fleet(&mut registry, fleet);
        }
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut text, &registry);
        text
    }
}

fn gauge(value: f64) -> Gauge<f64, std::sync::atomic::AtomicU64> {
    let g = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
    g.set(value);
    g
}

fn register_connections(registry: &mut Registry, c: &Connections) {
    let pool = Family::<[(&'static str, &'static str); 2], Gauge>::default();
    let set = |kind, state, n: u64| {
        pool.get_or_create(&[("kind", kind), ("state", state)])
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    };
    set("writer", "busy", c.writers_busy);
    set("writer", "idle", c.writers.saturating_sub(c.writers_busy));
    set("reader", "busy", c.readers_busy);
    set("reader", "idle", c.readers_idle);
    registry.register(
        "connections",
        "This process's database connections, by kind (writer, reader) and state (busy, idle)",
        pool,
    );
    registry.register(
        "lock_wait_seconds",
        "Time this process's writers waited for PostgreSQL's locks: another hub process clearing the same reader or wallets (0 on SQLite)",
        counter_seconds(c.lock_wait.unwrap_or_default()),
    );
}

fn counter(value: u64) -> Counter {
    let c = Counter::default();
    c.inc_by(value);
    c
}

fn counter_seconds(d: Duration) -> Counter<f64, std::sync::atomic::AtomicU64> {
    let c = Counter::<f64, std::sync::atomic::AtomicU64>::default();
    c.inc_by(d.as_secs_f64());
    c
}

fn register_fleet(registry: &mut Registry, fleet: &Fleet) {
    registry.register(
        "deny_list_version",
        "The newest deny-list version: what every reader should reach",
        gauge(fleet.deny_version as f64),
    );
    registry.register(
        "readers",
        "Registered readers",
        gauge(fleet.readers.len() as f64),
    );
    let per_reader = || {
        Family::<[(&'static str, String); 1], Gauge<f64, std::sync::atomic::AtomicU64>>::default()
    };
    let (seen, upload, queue, lag, offset, error, deny) = (
        per_reader(),
        per_reader(),
        per_reader(),
        per_reader(),
        per_reader(),
        per_reader(),
        per_reader(),
    );
    let info = Family::<[(&'static str, String); 2], Gauge>::default();
    for state in &fleet.readers {
        let label = [("reader", state.reader.clone())];
        // A reader never heard from counts as seen when it was registered,
        // so one that never comes up is found silent like one that stopped.
        let last_seen = state.last_seen_at().unwrap_or(state.registered_at);
        seen.get_or_create(&label).set(last_seen as f64);
        if let Some(at) = state.last_upload_at {
            upload.get_or_create(&label).set(at as f64);
        }
        if let Some(report) = &state.report {
            queue.get_or_create(&label).set(report.queue as f64);
            lag.get_or_create(&label).set(report.lag_secs as f64);
            offset
                .get_or_create(&label)
                .set(report.clock_offset_ms as f64 / 1000.0);
            error
                .get_or_create(&label)
                .set(report.clock_error_ms() as f64 / 1000.0);
            deny.get_or_create(&label).set(report.deny_version as f64);
            info.get_or_create(&[
                ("reader", state.reader.clone()),
                ("software", report.software.clone()),
            ])
            .set(1);
        }
    }
    let families = [
        (
            "reader_last_seen_timestamp_seconds",
            "When each reader was last heard from (a report or a stored batch; its registration if never), Unix seconds",
            seen,
        ),
        (
            "reader_last_upload_timestamp_seconds",
            "When each reader's last new batch was stored, Unix seconds",
            upload,
        ),
        (
            "reader_queue_records",
            "Records each reader held unacknowledged at its last report",
            queue,
        ),
        (
            "reader_queue_lag_seconds",
            "Age of the oldest record each reader held unacknowledged at its last report",
            lag,
        ),
        (
            "reader_clock_offset_seconds",
            "The hub's clock minus each reader's at its last report (positive: the reader is slow), as the reader's own clock_offset_ms",
            offset,
        ),
        (
            "reader_clock_error_seconds",
            "How far behind the hub's clock each reader's corrected clock (the one it stamps records with) was at its last report: its clock's error left after its own correction",
            error,
        ),
        (
            "reader_deny_list_version",
            "The deny-list version each reader had applied at its last report",
            deny,
        ),
    ];
    for (name, help, family) in families {
        registry.register(name, help, family);
    }
    registry.register(
        "reader_info",
        "Each reader's software version at its last report (always 1)",
        info,
    );
    // Every known rule and kind is served, at 0 until the first: a rate
    // or `increase()` sees the first finding only if the series was there
    // before it.
    let flags = Family::<[(&'static str, String); 1], Counter>::default();
    for rule in FraudRule::ALL {
        let _ = flags.get_or_create(&[("rule", rule.as_str().to_owned())]);
    }
    for (rule, n) in &fleet.flags {
        flags.get_or_create(&[("rule", rule.clone())]).inc_by(*n);
    }
    registry.register(
        "clearing_flags",
        "Clearing flags stored, by rule (counter_reused: a cloned wallet)",
        flags,
    );
    let incidents = Family::<[(&'static str, String); 1], Counter>::default();
    for kind in IncidentKind::ALL {
        let _ = incidents.get_or_create(&[("kind", kind.as_str().to_owned())]);
    }
    for (kind, n) in &fleet.incidents {
        incidents
            .get_or_create(&[("kind", kind.clone())])
            .inc_by(*n);
    }
    registry.register(
        "replays",
        "Charges of a token already charged elsewhere (a replayed sound, a copied code), stored",
        counter(fleet.replays),
    );
    registry.register(
        "incidents",
        "Incidents stored, by kind (edited, unchained: a reader's chain tampered with; invalid_token; void_*)",
        incidents,
    );
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::fleet::{ReaderState, ReportState};

    /// The value of the sample named exactly `series` (name and labels).
    fn value(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    fn fleet() -> Fleet {
        Fleet {
            deny_version: 7,
            readers: vec![
                ReaderState {
                    reader: "gate-1".into(),
                    registered_at: 100,
                    last_upload_at: Some(900),
                    report: Some(ReportState {
                        at_ms: 950_500,
                        clock_offset_ms: -2_500,
                        applied_offset_ms: -2_000,
                        deny_version: 6,
                        queue: 3,
                        lag_secs: 40,
                        software: "0.1.0".into(),
                    }),
                },
                ReaderState {
                    reader: "gate-2".into(),
                    registered_at: 200,
                    last_upload_at: None,
                    report: None,
                },
            ],
            flags: BTreeMap::from([("counter_reused".to_owned(), 2)]),
            incidents: BTreeMap::from([("duplicate_token".to_owned(), 1)]),
            replays: 4,
        }
    }

    #[test]
    fn uploads_are_counted_by_outcome_and_their_records_by_novelty() {
        let m = HubMetrics::default();
        let upload = |status, records| Answered {
            path: "/v1/batches",
            status,
            elapsed: Duration::from_millis(3),
            records,
            database_error: status == 503,
        };
        m.answered(&upload(200, Some((5, 0))));
        m.answered(&upload(200, Some((0, 5))));
        m.answered(&upload(400, None));
        m.answered(&upload(403, None));
        m.answered(&upload(503, None));
        m.answered(&Answered {
            path: "/../../etc/passwd",
            status: 404,
            elapsed: Duration::ZERO,
            records: None,
            database_error: false,
        });
        let text = m.render(None, &Connections::default());
        let outcome = |o: &str| {
            value(
                &text,
                &format!("sonotap_hub_ingest_batches_total{{outcome=\"{o}\"}}"),
            )
        };
        assert_eq!(outcome("stored"), Some(1.0));
        assert_eq!(outcome("duplicate"), Some(1.0));
        assert_eq!(outcome("malformed"), Some(1.0));
        assert_eq!(outcome("refused"), Some(1.0));
        assert_eq!(outcome("unavailable"), Some(1.0));
        assert_eq!(outcome("conflict"), Some(0.0), "every outcome exists at 0");
        assert_eq!(
            value(&text, "sonotap_hub_ingest_records_total{outcome=\"new\"}"),
            Some(5.0)
        );
        assert_eq!(
            value(
                &text,
                "sonotap_hub_ingest_records_total{outcome=\"already_stored\"}"
            ),
            Some(5.0)
        );
        assert_eq!(value(&text, "sonotap_hub_ingest_seconds_count"), Some(2.0));
        assert_eq!(value(&text, "sonotap_hub_database_errors_total"), Some(1.0));
        assert_eq!(
            value(
                &text,
                "sonotap_hub_requests_total{route=\"other\",code=\"404\"}"
            ),
            Some(1.0),
            "an unknown path is `other`: a scanner cannot grow the label set"
        );
        assert_eq!(value(&text, "sonotap_hub_scrape_errors_total"), Some(1.0));
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn the_fleet_is_served_per_reader_with_every_rule_and_kind() {
        let text = HubMetrics::default().render(
            Some(&fleet()),
            &Connections {
                writers: 4,
                writers_busy: 1,
                readers_busy: 2,
                readers_idle: 3,
                lock_wait: Some(Duration::from_millis(1500)),
            },
        );
        let at = |series: &str| value(&text, series);
        assert_eq!(at("sonotap_hub_deny_list_version"), Some(7.0));
        assert_eq!(at("sonotap_hub_readers"), Some(2.0));
        assert_eq!(
            at("sonotap_hub_reader_last_seen_timestamp_seconds{reader=\"gate-1\"}"),
            Some(950.0)
        );
        assert_eq!(
            at("sonotap_hub_reader_last_seen_timestamp_seconds{reader=\"gate-2\"}"),
            Some(200.0),
            "never heard from: seen at registration"
        );
        assert_eq!(
            at("sonotap_hub_reader_last_upload_timestamp_seconds{reader=\"gate-1\"}"),
            Some(900.0)
        );
        assert_eq!(
            at("sonotap_hub_reader_last_upload_timestamp_seconds{reader=\"gate-2\"}"),
            None
        );
        assert_eq!(
            at("sonotap_hub_reader_queue_records{reader=\"gate-1\"}"),
            Some(3.0)
        );
        assert_eq!(
            at("sonotap_hub_reader_queue_lag_seconds{reader=\"gate-1\"}"),
            Some(40.0)
        );
        assert_eq!(
            at("sonotap_hub_reader_clock_offset_seconds{reader=\"gate-1\"}"),
            Some(-2.5)
        );
        assert_eq!(
            at("sonotap_hub_reader_clock_error_seconds{reader=\"gate-1\"}"),
            Some(-0.5)
        );
        assert_eq!(
            at("sonotap_hub_reader_deny_list_version{reader=\"gate-1\"}"),
            Some(6.0)
        );
        assert_eq!(
            at("sonotap_hub_reader_info{reader=\"gate-1\",software=\"0.1.0\"}"),
            Some(1.0)
        );
        assert_eq!(
            at("sonotap_hub_clearing_flags_total{rule=\"counter_reused\"}"),
            Some(2.0)
        );
        assert_eq!(
            at("sonotap_hub_clearing_flags_total{rule=\"over_offline_limit\"}"),
            Some(0.0)
        );
        assert_eq!(
            at("sonotap_hub_incidents_total{kind=\"duplicate_token\"}"),
            Some(1.0)
        );
        assert_eq!(
            at("sonotap_hub_incidents_total{kind=\"edited\"}"),
            Some(0.0)
        );
        assert_eq!(
            at("sonotap_hub_connections{kind=\"writer\",state=\"idle\"}"),
            Some(3.0)
        );
        assert_eq!(
            at("sonotap_hub_connections{kind=\"reader\",state=\"busy\"}"),
            Some(2.0)
        );
        assert_eq!(at("sonotap_hub_lock_wait_seconds_total"), Some(1.5));
        assert_eq!(at("sonotap_hub_replays_total"), Some(4.0));
        assert_eq!(at("sonotap_hub_scrape_errors_total"), Some(0.0));
    }
}
