//! Prometheus metrics: counters, gauges and histograms on atomics, rendered
//! by hand in the text exposition format (version 0.0.4).
//!
//! The set is fixed and small, so a registry crate would add more than it
//! saves; every series is created up front (a counter that exists at 0 is
//! easier to alert on than one that appears with the first event).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sonotap_protocol::policy::Reason;

use super::rules::Refusal;
use crate::site::SiteStats;

/// Where a token came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TapSource {
    /// Sound, through the modem.
    Audio,
    /// A QR code, through the camera.
    Qr,
}

impl TapSource {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            TapSource::Audio => "audio",
            TapSource::Qr => "qr",
        }
    }
    const ALL: [TapSource; 2] = [TapSource::Audio, TapSource::Qr];
    fn index(self) -> usize {
        self as usize
    }
}

/// Devices whose errors are counted.
pub const DEVICES: [&str; 6] = ["audio", "camera", "gate", "vending", "feedback", "display"];

/// Upper bounds of the latency buckets, seconds.
const BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// A latency histogram with fixed buckets.
#[derive(Debug, Default)]
pub struct Histogram {
    counts: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    /// Sum in microseconds.
    sum_us: AtomicU64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|&b| secs <= b) {
            self.counts[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(
            d.as_micros().min(u128::from(u64::MAX)) as u64,
            Ordering::Relaxed,
        );
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        let sep = if labels.is_empty() { "" } else { "," };
        for (bound, c) in BUCKETS.iter().zip(&self.counts) {
            cumulative += c.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {cumulative}"
            );
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {count}");
        let sum = self.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        let braces = |s: &str| {
            if s.is_empty() {
                String::new()
            } else {
                format!("{{{s}}}")
            }
        };
        let _ = writeln!(out, "{name}_sum{} {sum}", braces(labels));
        let _ = writeln!(out, "{name}_count{} {count}", braces(labels));
    }
}

/// Every metric the daemon exports.
#[derive(Debug, Default)]
pub struct Metrics {
    taps: [AtomicU64; 2],
    accepts: [AtomicU64; 2],
    declines: Mutex<Vec<(Refusal, u64)>>,
    decode: [Histogram; 2],
    tap_to_actuate: Histogram,
    commit: Histogram,
    queue_depth: AtomicI64,
    /// Unix seconds of the last successful sync; 0 = none yet.
    last_sync_ok: AtomicU64,
    /// Unix seconds the daemon started (the lag's origin before any sync).
    started_at: AtomicU64,
    sync_failures: AtomicU64,
    sync_failovers: AtomicU64,
    device_errors: [AtomicU64; DEVICES.len()],
    not_served: AtomicU64,
    voids_owed: AtomicU64,
    site: Mutex<Option<Arc<SiteStats>>>,
}

impl Metrics {
    /// Metrics for a daemon started at `started_at` (Unix seconds).
    pub fn new(started_at: u64) -> Self {
        let m = Self::default();
        m.started_at.store(started_at, Ordering::Relaxed);
        if let Ok(mut d) = m.declines.lock() {
            *d = Reason::ALL.map(|r| (Refusal::Policy(r), 0)).to_vec();
        }
        m
    }

    /// A token was decoded from `source`, `decode` after its frame ended.
    pub fn tap(&self, source: TapSource, decode: Duration) {
        self.taps[source.index()].fetch_add(1, Ordering::Relaxed);
        self.decode[source.index()].observe(decode);
    }

    /// A token from `source` was accepted.
    pub fn accept(&self, source: TapSource) {
        self.accepts[source.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// A token was declined: by the policy, or by the daemon (a policy
    /// reason's series exists from the start, a daemon one from its first decline).
    pub fn decline(&self, refusal: Refusal) {
        if let Ok(mut d) = self.declines.lock() {
            match d.iter_mut().find(|(r, _)| *r == refusal) {
                Some((_, n)) => *n += 1,
                None => d.push((refusal, 1)),
            }
        }
    }

    /// How long the record took to commit.
    pub fn commit(&self, d: Duration) {
        self.commit.observe(d);
    }

    /// From the end of the frame to the open command (or vend approval).
    pub fn actuated(&self, d: Duration) {
        self.tap_to_actuate.observe(d);
    }

    /// Records waiting for the hub.
    pub fn set_queue_depth(&self, n: u64) {
        self.queue_depth
            .store(i64::try_from(n).unwrap_or(i64::MAX), Ordering::Relaxed);
    }

    /// One more record is waiting (a commit), before the next exact count.
    pub fn queued_one(&self) {
        self.queue_depth.fetch_add(1, Ordering::Relaxed);
    }

    /// A sync round succeeded at `at` (Unix seconds).
    pub fn sync_ok(&self, at: u64) {
        self.last_sync_ok.store(at, Ordering::Relaxed);
    }

    /// A sync round failed.
    pub fn sync_failed(&self) {
        self.sync_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// The uplink's requests have moved from one hub to another `total`
    /// times since it started (its client counts; a counter never goes back).
    pub fn sync_failovers(&self, total: u64) {
        self.sync_failovers.fetch_max(total, Ordering::Relaxed);
    }

    /// A device failed (went missing, errored, reconnected).
    pub fn device_error(&self, device: &str) {
        if let Some(i) = DEVICES.iter().position(|&d| d == device) {
            self.device_errors[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Voids owed: vend charges not delivered whose void is not written yet.
    pub fn set_voids_owed(&self, n: u64) {
        self.voids_owed.store(n, Ordering::Relaxed);
    }

    /// A decoded token was dropped at shutdown, never decided (no money moved).
    pub fn not_served(&self) {
        self.not_served.fetch_add(1, Ordering::Relaxed);
    }

    /// Exports the site link's counters from now on.
    pub fn attach_site(&self, stats: Arc<SiteStats>) {
        if let Ok(mut site) = self.site.lock() {
            *site = Some(stats);
        }
    }

    /// The exposition text at time `now` (Unix seconds).
    pub fn render(&self, now: u64) -> String {
        let mut out = String::with_capacity(4096);
        let counter = |out: &mut String, name: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        };
        let by_source = |out: &mut String, name: &str, help: &str, counts: &[AtomicU64; 2]| {
            counter(out, name, help);
            for s in TapSource::ALL {
                let n = counts[s.index()].load(Ordering::Relaxed);
                let _ = writeln!(out, "{name}{{source=\"{}\"}} {n}", s.as_str());
            }
        };
        by_source(
            &mut out,
            "sonotap_taps_total",
            "Tokens decoded, by source.",
            &self.taps,
        );
        by_source(
            &mut out,
            "sonotap_accepts_total",
            "Tokens accepted (record committed), by source.",
            &self.accepts,
        );
        counter(
            &mut out,
            "sonotap_declines_total",
            "Tokens declined, by reason.",
        );
        if let Ok(d) = self.declines.lock() {
            for (refusal, n) in d.iter() {
                let _ = writeln!(
                    out,
                    "sonotap_declines_total{{reason=\"{}\"}} {n}",
                    refusal.as_str()
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP sonotap_decode_seconds From the end of a sound frame or a camera frame's arrival to the decoded token.\n# TYPE sonotap_decode_seconds histogram"
        );
        for s in TapSource::ALL {
            self.decode[s.index()].render(
                &mut out,
                "sonotap_decode_seconds",
                &format!("source=\"{}\"", s.as_str()),
            );
        }
        let _ = writeln!(
            out,
            "# HELP sonotap_commit_seconds Time to decide and commit a record.\n# TYPE sonotap_commit_seconds histogram"
        );
        self.commit.render(&mut out, "sonotap_commit_seconds", "");
        let _ = writeln!(
            out,
            "# HELP sonotap_tap_to_actuate_seconds From the end of the frame to the open command (or vend approval) being written.\n# TYPE sonotap_tap_to_actuate_seconds histogram"
        );
        self.tap_to_actuate
            .render(&mut out, "sonotap_tap_to_actuate_seconds", "");
        let _ = writeln!(
            out,
            "# HELP sonotap_queue_depth Records not yet acknowledged by the hub.\n# TYPE sonotap_queue_depth gauge\nsonotap_queue_depth {}",
            self.queue_depth.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP sonotap_voids_owed Vend charges not delivered whose void is not written yet (retried).\n# TYPE sonotap_voids_owed gauge\nsonotap_voids_owed {}",
            self.voids_owed.load(Ordering::Relaxed)
        );
        let last = self.last_sync_ok.load(Ordering::Relaxed);
        let origin = if last == 0 {
            self.started_at.load(Ordering::Relaxed)
        } else {
            last
        };
        let _ = writeln!(
            out,
            "# HELP sonotap_sync_lag_seconds Seconds since the last successful sync (since start when none yet).\n# TYPE sonotap_sync_lag_seconds gauge\nsonotap_sync_lag_seconds {}",
            now.saturating_sub(origin)
        );
        let total = |out: &mut String, name: &str, help: &str, n: &AtomicU64| {
            counter(out, name, help);
            let _ = writeln!(out, "{name} {}", n.load(Ordering::Relaxed));
        };
        total(
            &mut out,
            "sonotap_sync_failures_total",
            "Sync rounds that failed.",
            &self.sync_failures,
        );
        total(
            &mut out,
            "sonotap_sync_failovers_total",
            "Requests to the hub sent on to another hub after the one in use failed.",
            &self.sync_failovers,
        );
        counter(
            &mut out,
            "sonotap_device_errors_total",
            "Device failures (missing, errors, reconnections), by device.",
        );
        for (i, d) in DEVICES.iter().enumerate() {
            let _ = writeln!(
                out,
                "sonotap_device_errors_total{{device=\"{d}\"}} {}",
                self.device_errors[i].load(Ordering::Relaxed)
            );
        }
        total(
            &mut out,
            "sonotap_not_served_total",
            "Decoded tokens dropped at shutdown before a decision (nothing charged).",
            &self.not_served,
        );
        counter(
            &mut out,
            "sonotap_qr_contained_panics_total",
            "Panics the QR decoder caught around its calls into rqrr (each an attempt on a camera frame read as no code).",
        );
        let _ = writeln!(
            out,
            "sonotap_qr_contained_panics_total {}",
            sonotap_qr::contained_panics()
        );
        counter(
            &mut out,
            "sonotap_qr_attempts_out_of_time_total",
            "Attempts the QR decoder abandoned inside rqrr, still running a budget past the frame's (each read as no code; odd frames, or ones made to stall a reader).",
        );
        let _ = writeln!(
            out,
            "sonotap_qr_attempts_out_of_time_total {}",
            sonotap_qr::attempts_out_of_time()
        );
        if let Some(site) = self.site.lock().ok().and_then(|s| s.clone()) {
            let site = &*site;
            for (name, help, n) in [
                (
                    "sonotap_site_sent_total",
                    "Site announcements sent (one per peer).",
                    &site.sent,
                ),
                (
                    "sonotap_site_send_errors_total",
                    "Site announcements the OS refused to send (dropped).",
                    &site.send_errors,
                ),
                (
                    "sonotap_site_learned_total",
                    "Accepts learned from the site's other readers.",
                    &site.learned,
                ),
                (
                    "sonotap_site_repeats_total",
                    "Site announcements already known (idempotent repeats).",
                    &site.repeats,
                ),
                (
                    "sonotap_site_refused_total",
                    "Site datagrams refused (malformed, other site, unknown peer, bad signature or token).",
                    &site.refused,
                ),
            ] {
                total(&mut out, name, help, n);
            }
            let _ = writeln!(
                out,
                "# HELP sonotap_site_delay_seconds From a peer's send to this reader storing its accept (the replay window).\n# TYPE sonotap_site_delay_seconds histogram"
            );
            site.delay
                .render(&mut out, "sonotap_site_delay_seconds", "");
        }
        out
    }
}

/// Parses exposition text into `(name{labels}, value)` pairs; for tests and
/// for `sonotap` tools that read a scrape.
pub fn parse_exposition(text: &str) -> Result<Vec<(String, f64)>, String> {
    let mut samples = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .ok_or_else(|| format!("line {}: no value: {line:?}", i + 1))?;
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            v => v
                .parse()
                .map_err(|e| format!("line {}: value {v:?}: {e}", i + 1))?,
        };
        let name_end = series.find('{').unwrap_or(series.len());
        let name = &series[..name_end];
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
        {
            return Err(format!("line {}: bad metric name {name:?}", i + 1));
        }
        if name_end < series.len() && !series.ends_with('}') {
            return Err(format!("line {}: unterminated labels", i + 1));
        }
        samples.push((series.to_string(), value));
    }
    Ok(samples)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(samples: &[(String, f64)], series: &str) -> f64 {
        samples
            .iter()
            .find(|(s, _)| s == series)
            .unwrap_or_else(|| panic!("no {series}"))
            .1
    }

    #[test]
    fn exposition_parses_and_counts_what_happened() {
        let m = Metrics::new(1000);
        m.tap(TapSource::Audio, Duration::from_millis(30));
        m.tap(TapSource::Qr, Duration::from_millis(8));
        m.accept(TapSource::Audio);
        m.decline(Refusal::Policy(Reason::Replayed));
        m.decline(Refusal::VendDenied);
        m.actuated(Duration::from_millis(120));
        m.set_queue_depth(7);
        m.device_error("gate");
        m.sync_failovers(2);
        m.sync_failovers(1);
        let text = m.render(1060);
        let s = parse_exposition(&text).unwrap();
        assert_eq!(value(&s, "sonotap_taps_total{source=\"audio\"}"), 1.0);
        assert_eq!(value(&s, "sonotap_accepts_total{source=\"qr\"}"), 0.0);
        assert_eq!(
            value(&s, "sonotap_declines_total{reason=\"replayed\"}"),
            1.0
        );
        assert_eq!(
            value(&s, "sonotap_declines_total{reason=\"wallet_denied\"}"),
            0.0
        );
        assert_eq!(
            value(&s, "sonotap_declines_total{reason=\"vend_denied\"}"),
            1.0
        );
        assert_eq!(value(&s, "sonotap_queue_depth"), 7.0);
        assert_eq!(value(&s, "sonotap_sync_failovers_total"), 2.0);
        assert_eq!(value(&s, "sonotap_sync_lag_seconds"), 60.0);
        assert_eq!(
            value(&s, "sonotap_device_errors_total{device=\"gate\"}"),
            1.0
        );
        m.sync_ok(1050);
        let s = parse_exposition(&m.render(1060)).unwrap();
        assert_eq!(value(&s, "sonotap_sync_lag_seconds"), 10.0);
    }

    #[test]
    fn histogram_buckets_are_cumulative_and_end_at_the_count() {
        let m = Metrics::new(0);
        for ms in [3, 40, 40, 140, 9000, 20_000] {
            m.actuated(Duration::from_millis(ms));
        }
        let s = parse_exposition(&m.render(0)).unwrap();
        let b = |le: &str| {
            value(
                &s,
                &format!("sonotap_tap_to_actuate_seconds_bucket{{le=\"{le}\"}}"),
            )
        };
        assert_eq!(b("0.005"), 1.0);
        assert_eq!(b("0.05"), 3.0);
        assert_eq!(b("0.15"), 4.0);
        assert_eq!(b("10"), 5.0);
        assert_eq!(b("+Inf"), 6.0);
        assert_eq!(value(&s, "sonotap_tap_to_actuate_seconds_count"), 6.0);
        let sum = value(&s, "sonotap_tap_to_actuate_seconds_sum");
        assert!((sum - 29.223).abs() < 1e-6, "{sum}");
        let mut last = 0.0;
        for (series, v) in &s {
            if series.starts_with("sonotap_decode_seconds_bucket{source=\"audio\"") {
                assert!(*v >= last);
                last = *v;
            }
        }
    }

    #[test]
    fn every_line_is_help_type_or_a_well_formed_sample() {
        let text = Metrics::new(0).render(5);
        for line in text.lines() {
            assert!(
                line.starts_with("# HELP ")
                    || line.starts_with("# TYPE ")
                    || parse_exposition(line).map(|v| v.len()) == Ok(1),
                "{line}"
            );
        }
        assert!(parse_exposition("bad name{ 1").is_err());
        assert!(parse_exposition("x 1 2 z").is_err());
    }
}
