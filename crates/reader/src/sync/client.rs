//! The reader's uplink: carries out [`super::plan`]'s steps over HTTP(S) and
//! the reader database.
//!
//! Records are marked synced only on an acknowledgement that the issuer
//! signed and that names exactly the batch sent (reader, range, count, sums,
//! last hash); anything else from the hub (a timeout, a 5xx, a lie) leaves
//! them queued, the request going on at once to the reader's next hub if
//! it has several ([`super::failover`]), else to the next attempt. The uplink opens its own database
//! connection, so taps on the reader's connection are never blocked for
//! longer than one short write.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::de::DeserializeOwned;
use thiserror::Error;

use super::failover::{Failover, HubUrls};
use super::plan::{self, Outcome, Plan, Step};
use crate::reader::{Reader, ReaderError};
use crate::store::{Pruned, StoreError};
use sonotap_protocol::api::{
    AUTH_SCHEME, DenyAnswer, KeysAnswer, ReportAnswer, StatusReport, TimeAnswer, UploadAnswer,
};
use sonotap_protocol::policy::TrustedKeys;
use sonotap_protocol::wire::{Ack, Batch, DenyEntry, KeySet, TimeStatement, WireError};

/// Largest answer read from the hub (a page of deny entries is ~100 kB).
const MAX_ANSWER: u64 = 8 << 20;

/// The longest round trip of a time request whose answer may set the clock
/// offset: the hub's time is known to within half of it.
const MAX_TIME_ROUND_TRIP: Duration = Duration::from_secs(10);

/// Why a sync step failed. Every case leaves unacknowledged records queued.
#[derive(Debug, Error)]
pub enum SyncError {
    /// The hub could not be reached or did not answer in time.
    #[error("hub {url}: {detail}")]
    Transport {
        /// The request URL.
        url: String,
        /// What went wrong.
        detail: String,
    },
    /// The hub answered with an error.
    #[error("hub {url} answered {status} {code}: {message}")]
    Refused {
        /// The request URL.
        url: String,
        /// HTTP status.
        status: u16,
        /// The hub's error code (`unknown_reader`, `bad_signature`, `conflict`, ...).
        code: String,
        /// The hub's message.
        message: String,
    },
    /// The hub's answer does not parse or does not verify: nothing is applied.
    #[error("hub {url} sent an answer that cannot be trusted: {detail}")]
    BadAnswer {
        /// The request URL.
        url: String,
        /// What is wrong with it.
        detail: String,
    },
    /// Several hubs were named and none answered: each one's failure, in
    /// the order tried.
    #[error("no hub answered ({} tried): {}", .failures.len(), join_failures(.failures))]
    NoHubAnswered {
        /// What went wrong at each hub.
        failures: Vec<SyncError>,
    },
    /// The reader's own state.
    #[error(transparent)]
    Reader(#[from] ReaderError),
    /// The reader database.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The CA file for the hub's certificate.
    #[error("hub CA certificate {path}: {detail}")]
    Ca {
        /// The file.
        path: String,
        /// What is wrong.
        detail: String,
    },
}

fn join_failures(failures: &[SyncError]) -> String {
    failures
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

impl SyncError {
    /// Whether the hub refused the request for good: a 4xx answer other
    /// than 408 (timeout) and 429 (too many requests). The same request
    /// would be refused again (a batch the hub cannot store, a reader it
    /// does not authenticate, a conflicting record), so it is not retried
    /// at once: `reader sync` stops, the daemon's loop waits its longest
    /// backoff. Timeouts, 5xx and answers that cannot be trusted may be
    /// transient and are retried.
    pub fn is_permanent(&self) -> bool {
        matches!(self, SyncError::Refused { status, .. }
            if (400..500).contains(status) && *status != 408 && *status != 429)
    }
}

/// An HTTP(S) client for one or several hubs (processes sharing one
/// database), which fails over between them as [`super::failover`] says.
pub struct HubClient {
    hubs: Vec<Endpoint>,
    agent: ureq::Agent,
    failover: Failover,
}

/// One hub's base URL.
struct Endpoint {
    /// Without a trailing `/`.
    base: String,
    /// The base URL's path ("" at the root), which signed requests cover.
    base_path: String,
}

impl HubClient {
    /// A client for `urls` (e.g. `https://hub.example:8443`, preferred
    /// first), trusting the PEM certificates in `ca` (or the public web
    /// roots without it), with `timeout` for each whole request to one hub.
    pub fn new(urls: &HubUrls, ca: Option<&Path>, timeout: Duration) -> Result<Self, SyncError> {
        let mut tls = ureq::tls::TlsConfig::builder();
        if let Some(path) = ca {
            let certs = sonotap_disk::ca::read_ca_bundle(path).map_err(|detail| SyncError::Ca {
                path: path.display().to_string(),
                detail,
            })?;
            tls = tls.root_certs(ureq::tls::RootCerts::Specific(Arc::new(certs)));
        }
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .http_status_as_error(false)
            .tls_config(tls.build())
            .build()
            .into();
        let hubs: Vec<Endpoint> = urls
            .as_slice()
            .iter()
            .map(|base| Endpoint {
                base: base.clone(),
                base_path: base
                    .parse::<ureq::http::Uri>()
                    .map(|uri| uri.path().trim_end_matches('/').to_owned())
                    .unwrap_or_default(),
            })
            .collect();
        Ok(Self {
            failover: Failover::new(hubs.len()),
            hubs,
            agent,
        })
    }

    /// The base URL of the hub in use: the one that last answered (the
    /// first named until one has).
    pub fn in_use(&self) -> &str {
        self.hubs
            .get(self.failover.in_use())
            .map_or("", |hub| hub.base.as_str())
    }

    /// Times a request moved from one hub to another since this client was made.
    pub fn failovers(&self) -> u64 {
        self.failover.failovers()
    }

    /// Runs `request` on the hub in use, and on the others in turn while it
    /// fails in a way another hub might not ([`super::failover`]); logs each
    /// move. `request` is called afresh for each hub, so a signed request
    /// is signed for that hub's path with a fresh nonce.
    pub fn call<T>(
        &self,
        mut request: impl FnMut(&Hub<'_>) -> Result<T, SyncError>,
    ) -> Result<T, SyncError> {
        self.failover.run(
            |i| match self.hubs.get(i) {
                Some(endpoint) => request(&Hub {
                    endpoint,
                    agent: &self.agent,
                }),
                None => Err(SyncError::Transport {
                    url: format!("hub #{i}"),
                    detail: "no such hub".into(),
                }),
            },
            |from, to, why| {
                let name = |i: usize| self.hubs.get(i).map_or("?", |h| h.base.as_str());
                tracing::warn!(
                    from = name(from),
                    to = name(to),
                    "failing over to another hub: {why}"
                );
            },
        )
    }
}

/// One hub, for one attempt of a request ([`HubClient::call`]).
pub struct Hub<'a> {
    endpoint: &'a Endpoint,
    agent: &'a ureq::Agent,
}

impl Hub<'_> {
    /// This hub's base URL.
    pub fn base(&self) -> &str {
        &self.endpoint.base
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.endpoint.base)
    }

    /// What a signed request covers: the path and query as sent.
    fn target(&self, path: &str) -> String {
        format!("{}{path}", self.endpoint.base_path)
    }

    fn answer<T: DeserializeOwned>(
        url: &str,
        result: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<T, SyncError> {
        let mut response = result.map_err(|e| SyncError::Transport {
            url: url.to_owned(),
            detail: e.to_string(),
        })?;
        let status = response.status().as_u16();
        let text = response
            .body_mut()
            .with_config()
            .limit(MAX_ANSWER)
            .read_to_string()
            .map_err(|e| SyncError::Transport {
                url: url.to_owned(),
                detail: format!("reading the answer: {e}"),
            })?;
        if status != 200 {
            let parsed: Option<serde_json::Value> = serde_json::from_str(&text).ok();
            let field = |k: &str| {
                parsed
                    .as_ref()
                    .and_then(|v| v.get(k))
                    .and_then(|v| v.as_str())
                    .map(str::to_owned)
            };
            return Err(SyncError::Refused {
                url: url.to_owned(),
                status,
                code: field("error").unwrap_or_else(|| "http_error".into()),
                message: field("message").unwrap_or_else(|| text.chars().take(200).collect()),
            });
        }
        serde_json::from_str(&text).map_err(|e| SyncError::BadAnswer {
            url: url.to_owned(),
            detail: e.to_string(),
        })
    }

    /// `GET /v1/time?nonce=N`: the hub's time statement for `nonce`,
    /// verified under `issuers`, with the local time it corresponds to (the
    /// request's midpoint) and the round trip.
    pub fn time(
        &self,
        nonce: &[u8; 16],
        issuers: &TrustedKeys,
    ) -> Result<(TimeStatement, u64, Duration), SyncError> {
        let url = self.url(&format!("/v1/time?nonce={}", hex::encode(nonce)));
        let started = Instant::now();
        let before = now_ms();
        let answer: TimeAnswer = Self::answer(&url, self.agent.get(&url).call())?;
        let after = now_ms();
        let round_trip = started.elapsed();
        let bad = |detail: String| SyncError::BadAnswer {
            url: url.clone(),
            detail,
        };
        let hex_statement = answer.statement.ok_or_else(|| {
            bad("no signed time statement (a hub older than this reader?)".into())
        })?;
        let bytes = hex::decode(hex_statement).map_err(|e| bad(e.to_string()))?;
        let statement = TimeStatement::decode(&bytes).map_err(|e| bad(e.to_string()))?;
        statement
            .verify(nonce, issuers)
            .map_err(|e| bad(e.to_string()))?;
        Ok((statement, before / 2 + after / 2, round_trip))
    }

    /// `POST /v1/batches`.
    pub fn upload(&self, batch: &[u8]) -> Result<UploadAnswer, SyncError> {
        let url = self.url("/v1/batches");
        let request = self
            .agent
            .post(&url)
            .header("content-type", "application/octet-stream")
            .send(batch);
        Self::answer(&url, request)
    }

    /// A request signed by `reader`, stamped with the hub's time `hub_ms`
    /// (docs/sync.md §2.1): the method and the whole target are signed.
    fn signed<T: DeserializeOwned>(
        &self,
        method: &str,
        target: &str,
        reader: &Reader,
        hub_ms: u64,
    ) -> Result<T, SyncError> {
        let url = self.url(target);
        let request = reader
            .sign_request(hub_ms, random_nonce(&url)?, method, &self.target(target))
            .and_then(|r| r.encode())
            .map_err(|e| SyncError::BadAnswer {
                url: url.clone(),
                detail: format!("cannot sign the request: {e}"),
            })?;
        let header = format!("{AUTH_SCHEME} {}", hex::encode(request));
        let sent = if method == "POST" {
            // What is said is in the signed target; the body stays empty.
            self.agent
                .post(&url)
                .header("authorization", &header)
                .header("content-type", "application/octet-stream")
                .send(&[][..])
        } else {
            self.agent.get(&url).header("authorization", &header).call()
        };
        Self::answer(&url, sent)
    }

    /// A `GET` signed by `reader`.
    fn signed_get<T: DeserializeOwned>(
        &self,
        path: &str,
        reader: &Reader,
        hub_ms: u64,
    ) -> Result<T, SyncError> {
        self.signed("GET", path, reader, hub_ms)
    }

    /// `POST /v1/report?…`, signed by `reader`.
    pub fn report(
        &self,
        report: &StatusReport,
        reader: &Reader,
        hub_ms: u64,
    ) -> Result<ReportAnswer, SyncError> {
        self.signed("POST", &report.target(), reader, hub_ms)
    }

    /// `GET /v1/keys`, signed by `reader`.
    pub fn keys(&self, reader: &Reader, hub_ms: u64) -> Result<KeysAnswer, SyncError> {
        self.signed_get("/v1/keys", reader, hub_ms)
    }

    /// `GET /v1/deny?since=V`, signed by `reader`.
    pub fn deny(&self, since: u64, reader: &Reader, hub_ms: u64) -> Result<DenyAnswer, SyncError> {
        self.signed_get(&format!("/v1/deny?since={since}"), reader, hub_ms)
    }
}

/// 16 random bytes, for a time request or a signed request.
fn random_nonce(url: &str) -> Result<[u8; 16], SyncError> {
    let mut nonce = [0u8; 16];
    getrandom::fill(&mut nonce).map_err(|e| SyncError::Transport {
        url: url.to_owned(),
        detail: format!("no randomness for a nonce: {e}"),
    })?;
    Ok(nonce)
}

/// What this round learned of the hub's clock from its signed statement.
#[derive(Debug, Clone, Copy)]
struct HubClock {
    /// The hub's time in the statement, Unix milliseconds.
    hub_ms: u64,
    /// When that was, on this reader's monotonic clock (the request's midpoint).
    at: Instant,
    /// Hub clock minus reader clock, if the round trip was short enough to tell.
    offset_ms: Option<i64>,
}

impl HubClock {
    /// The hub's time now, as far as this reader can tell.
    fn now_ms(&self) -> u64 {
        let elapsed = u64::try_from(self.at.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.hub_ms.saturating_add(elapsed)
    }
}

/// State carried between the steps of one round.
#[derive(Debug, Default)]
struct Round {
    clock: Option<HubClock>,
}

impl Round {
    /// The hub's time to stamp a signed request with: from this round's
    /// statement, else this reader's clock corrected by its stored offset.
    fn hub_now_ms(&self, reader: &Reader) -> Result<u64, SyncError> {
        match self.clock {
            Some(clock) => Ok(clock.now_ms()),
            None => {
                let offset = reader.sync_state()?.clock_offset_ms;
                Ok(now_ms().saturating_add_signed(offset))
            }
        }
    }
}

/// At the end of a round that succeeded end to end: moves the stored clock
/// offset towards what this round's signed statement measured, by at most
/// [`plan::MAX_CLOCK_STEP_MS`]. A failed round changes nothing.
fn commit_clock(reader: &Reader, round: &Round, report: &mut SyncReport) -> Result<(), SyncError> {
    let stored = reader.sync_state()?.clock_offset_ms;
    let measured = round.clock.and_then(|c| c.offset_ms);
    let applied = measured.map_or(stored, |m| plan::next_clock_offset(stored, m));
    if applied != stored {
        reader.note_clock_offset(applied)?;
    }
    report.clock_offset_ms = applied;
    report.hub_clock_offset_ms = measured;
    Ok(())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// How the uplink behaves.
#[derive(Debug, Clone)]
pub struct SyncOptions {
    /// Records per batch.
    pub batch_size: usize,
    /// How long acknowledged records are kept before pruning.
    pub retention: Duration,
}

impl Default for SyncOptions {
    fn default() -> Self {
        Self {
            batch_size: 2_000,
            retention: Duration::from_secs(30 * 24 * 3600),
        }
    }
}

/// What one round did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct SyncReport {
    /// The hub in use at the end of the round: the one that last answered.
    pub hub: String,
    /// Batches the hub acknowledged.
    pub batches: u64,
    /// Records acknowledged.
    pub records: u64,
    /// Of those, records the hub already had (a retried upload).
    pub already_stored: u64,
    /// Sum of acknowledged charges.
    pub charged: u64,
    /// Hub clock minus reader clock, milliseconds, as stored and applied
    /// after this round (moved by at most 5 minutes a round).
    pub clock_offset_ms: i64,
    /// What this round's signed time statement measured (`None` when the
    /// round did not get one, or its round trip was too long to tell).
    pub hub_clock_offset_ms: Option<i64>,
    /// Issuer key-set version in use afterwards.
    pub keyset_version: u64,
    /// Deny-list version applied afterwards.
    pub deny_version: u64,
    /// Deny-list entries applied in this round.
    pub deny_entries: u64,
    /// What pruning removed.
    pub pruned: Pruned,
    /// Records still queued.
    pub queued: u64,
    /// Why the hub did not take this round's report of the reader's state
    /// (`POST /v1/report`; a hub older than the report answers 404). The
    /// round succeeded all the same: the report is for the operator's view.
    pub report_error: Option<String>,
}

/// Progress of uploads, for a progress bar.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    /// Records acknowledged so far this round.
    pub done: u64,
    /// Records queued when the round started.
    pub total: u64,
}

/// Batches read and signed ahead of the upload in flight.
const READ_AHEAD: usize = 2;

/// Uploads every unsynced record in three stages, each with its own
/// database connection: one thread reads and signs batches ahead, one
/// uploads them **one at a time, in order**, and this thread marks each
/// synced on its verified acknowledgement while the next one travels. One
/// at a time because the hub must store a reader's batches in its chain's
/// order (a void refunds an *earlier* charge of the same chain): two in
/// flight could overtake each other on the way, in the hub's writers or
/// across a failover, and a void stored before its charge refunds nothing
/// (`void_without_charge`). Other readers' uploads keep the hub's cores
/// busy meanwhile. The first failure stops the rest (whatever was
/// acknowledged is marked, the rest stays queued).
fn upload_all(
    dir: &Path,
    hub: &HubClient,
    options: &SyncOptions,
    report: &mut SyncReport,
    progress: &mut dyn FnMut(u64),
) -> Result<(), SyncError> {
    let failed = AtomicBool::new(false);
    let (batch_tx, batch_rx) = std::sync::mpsc::sync_channel::<Batch>(READ_AHEAD);
    let (done_tx, done_rx) = std::sync::mpsc::channel::<Result<(Ack, u32), SyncError>>();
    let mut marker = Reader::open(dir)?;
    std::thread::scope(|s| {
        let failed = &failed;
        let producer = s.spawn(move || -> Result<(), SyncError> {
            let reader = Reader::open(dir)?;
            let mut after = 0;
            while !failed.load(Ordering::Relaxed) {
                let Some(batch) = reader.next_batch(after, options.batch_size, now_ms() / 1000)?
                else {
                    break;
                };
                after = batch.last_seq();
                if batch_tx.send(batch).is_err() {
                    break;
                }
            }
            Ok(())
        });
        s.spawn(move || {
            // Dropped when this thread ends, which wakes a producer blocked
            // on a full channel.
            let batch_rx = batch_rx;
            let result = (|| -> Result<(), SyncError> {
                let issuers = Reader::open(dir)?.trusted_keys()?;
                for batch in &batch_rx {
                    if failed.load(Ordering::Relaxed) {
                        return Ok(());
                    }
                    let acknowledged = upload_one(hub, &batch, &issuers)?;
                    if done_tx.send(Ok(acknowledged)).is_err() {
                        return Ok(());
                    }
                }
                Ok(())
            })();
            if let Err(e) = result {
                failed.store(true, Ordering::Relaxed);
                let _ = done_tx.send(Err(e));
            }
        });
        let mut first_error = None;
        for done in done_rx {
            let marked = done.and_then(|(ack, already)| {
                marker.mark_synced(ack.first_seq, ack.last_seq, now_ms() / 1000)?;
                Ok((ack, already))
            });
            match marked {
                Ok((ack, already)) => {
                    report.batches += 1;
                    report.records += u64::from(ack.totals.count);
                    report.already_stored += u64::from(already);
                    report.charged += ack.totals.charged;
                    progress(report.records);
                }
                Err(e) => {
                    failed.store(true, Ordering::Relaxed);
                    first_error.get_or_insert(e);
                }
            }
        }
        let produced = producer.join().unwrap_or(Ok(()));
        match (first_error, produced) {
            (Some(e), _) | (None, Err(e)) => Err(e),
            (None, Ok(())) => Ok(()),
        }
    })
}

/// Uploads one batch (to another hub if the one in use fails: the hub
/// stores a batch idempotently, so one that a dying hub stored before it
/// could answer is acknowledged again and counted once); returns the
/// verified acknowledgement and how many records the hub already had.
fn upload_one(
    hub: &HubClient,
    batch: &Batch,
    issuers: &TrustedKeys,
) -> Result<(Ack, u32), SyncError> {
    let bytes = batch.encode().map_err(|e| SyncError::BadAnswer {
        url: hub.in_use().to_owned(),
        detail: format!("cannot encode the batch: {e}"),
    })?;
    hub.call(|hub| {
        let answer = hub.upload(&bytes)?;
        let bad = |detail: String| SyncError::BadAnswer {
            url: hub.url("/v1/batches"),
            detail,
        };
        let ack_bytes =
            hex::decode(&answer.ack).map_err(|e| bad(format!("ack is not hex: {e}")))?;
        let ack = Ack::decode(&ack_bytes).map_err(|e: WireError| bad(e.to_string()))?;
        ack.verify(batch, issuers).map_err(|e| bad(e.to_string()))?;
        Ok((ack, answer.already_stored))
    })
}

/// Carries out one step; `Ok(more)` for an upload says whether more remain.
/// Each request, with the checks of its answer, is one [`HubClient::call`]:
/// an answer that cannot be trusted is asked of another hub; what the
/// reader stores is written only after.
fn run_step(
    step: Step,
    reader: &mut Reader,
    hub: &HubClient,
    options: &SyncOptions,
    round: &mut Round,
    report: &mut SyncReport,
    progress: &mut dyn FnMut(u64),
) -> Result<bool, SyncError> {
    let now = now_ms() / 1000;
    match step {
        Step::CheckClock => {
            // Only time the issuer signed over this request's fresh nonce
            // counts; it is stored only when the whole round succeeds
            // (`commit_clock`).
            let issuers = reader.trusted_keys()?;
            let (statement, local_ms, round_trip) = hub.call(|hub| {
                let nonce = random_nonce(hub.base())?;
                hub.time(&nonce, &issuers)
            })?;
            let offset = i64::try_from(i128::from(statement.hub_time_ms) - i128::from(local_ms))
                .unwrap_or(if statement.hub_time_ms > local_ms {
                    i64::MAX
                } else {
                    i64::MIN
                });
            let anchor = Instant::now()
                .checked_sub(round_trip / 2)
                .unwrap_or_else(Instant::now);
            round.clock = Some(HubClock {
                hub_ms: statement.hub_time_ms,
                at: anchor,
                offset_ms: (round_trip <= MAX_TIME_ROUND_TRIP).then_some(offset),
            });
            report.hub_clock_offset_ms = round.clock.and_then(|c| c.offset_ms);
            Ok(false)
        }
        Step::Upload => {
            let dir = reader.dir().to_owned();
            upload_all(&dir, hub, options, report, progress)?;
            Ok(false)
        }
        Step::FetchKeys => {
            // The answer's plain `version` is only informative: what counts
            // is the version inside the signed set (`KeySet::adopt`).
            let current = reader.sync_state()?.keyset_version;
            let trusted = reader.trusted_keys()?;
            let signer: &Reader = reader;
            let (version, adopted) = hub.call(|hub| {
                let answer = hub.keys(signer, round.hub_now_ms(signer)?)?;
                let bad = |detail: String| SyncError::BadAnswer {
                    url: hub.url("/v1/keys"),
                    detail,
                };
                let bytes = hex::decode(&answer.key_set).map_err(|e| bad(e.to_string()))?;
                let set = KeySet::decode(&bytes).map_err(|e| bad(e.to_string()))?;
                let adopted = set
                    .adopt(current, &trusted)
                    .map_err(|e| bad(e.to_string()))?;
                Ok((set.version, adopted))
            })?;
            if let Some(keys) = adopted {
                reader.adopt_keys(&keys, version, now)?;
            }
            report.keyset_version = reader.sync_state()?.keyset_version;
            Ok(false)
        }
        Step::FetchDeny => {
            let mut version = reader.sync_state()?.deny_version;
            let issuers = reader.trusted_keys()?;
            loop {
                let signer: &Reader = reader;
                let (entries, more) = hub.call(|hub| {
                    let answer = hub.deny(version, signer, round.hub_now_ms(signer)?)?;
                    let mut entries = Vec::with_capacity(answer.entries.len());
                    for hex_entry in &answer.entries {
                        let entry = hex::decode(hex_entry)
                            .map_err(|e| e.to_string())
                            .and_then(|b| DenyEntry::decode(&b).map_err(|e| e.to_string()))
                            .and_then(|e| e.verify(&issuers).map(|()| e).map_err(|e| e.to_string()))
                            .map_err(|detail| SyncError::BadAnswer {
                                url: hub.url("/v1/deny"),
                                detail,
                            })?;
                        entries.push(entry);
                    }
                    Ok((entries, answer.more))
                })?;
                let applied = reader.apply_deny_entries(&entries)?;
                report.deny_entries += applied.saturating_sub(version);
                let progressed = applied > version;
                version = applied;
                if !more || !progressed {
                    break;
                }
            }
            report.deny_version = version;
            Ok(false)
        }
        Step::Prune => {
            let cutoff = now.saturating_sub(options.retention.as_secs());
            report.pruned = reader.prune(cutoff)?;
            Ok(false)
        }
        Step::Sleep(_) => Ok(false),
    }
}

/// One full round (clock, uploads, keys, deny list, prune), stopping at the
/// first failure. `progress` is told after each acknowledged batch.
pub fn sync_once(
    reader: &mut Reader,
    hub: &HubClient,
    options: &SyncOptions,
    progress: &mut dyn FnMut(Progress),
) -> Result<SyncReport, SyncError> {
    let total = reader.summary()?.unsynced;
    let mut report = SyncReport::default();
    let mut round = Round::default();
    let mut plan = Plan::new(Duration::ZERO, Duration::ZERO, Duration::ZERO);
    let result = loop {
        let step = plan.current();
        if let Step::Sleep(_) = step {
            break commit_clock(reader, &round, &mut report);
        }
        let mut told = |done| progress(Progress { done, total });
        match run_step(
            step,
            reader,
            hub,
            options,
            &mut round,
            &mut report,
            &mut told,
        ) {
            Ok(more) => {
                plan.next(Outcome::Done { more }, 0.0);
            }
            Err(e) => break Err(e),
        }
    };
    let now = now_ms() / 1000;
    match result {
        Ok(()) => {
            reader.note_sync(now, None)?;
            report.queued = reader.summary()?.unsynced;
            report.hub = hub.in_use().to_owned();
            report.report_error = report_state(reader, hub, &round, report.queued).err();
            Ok(report)
        }
        Err(e) => {
            reader.note_sync(now, Some(&e.to_string()))?;
            // The hub answered: it can still hear how this reader is.
            if let SyncError::Refused { .. } = e
                && let Err(why) =
                    queued(reader).and_then(|queued| report_state(reader, hub, &round, queued))
            {
                tracing::debug!("the hub did not take this reader's report: {why}");
            }
            Err(e)
        }
    }
}

/// Tells the hub this reader's state (docs/sync.md §2.5) at the end of a
/// round that succeeded, or that the hub refused (an upload it will not
/// take: the operator must see the queue grow), `queued` records still
/// unacknowledged. An error is returned as text, for the round's result only.
fn report_state(
    reader: &Reader,
    hub: &HubClient,
    round: &Round,
    queued: u64,
) -> Result<(), String> {
    let reader_ms = now_ms();
    // Records are stamped on the corrected clock: their age is measured on it.
    let stamped_now = reader
        .adjusted_now(reader_ms / 1000)
        .map_err(|e| e.to_string())?;
    let lag = reader
        .oldest_unsynced_at()
        .map_err(|e| e.to_string())?
        .map_or(0, |at| stamped_now.saturating_sub(at));
    let state = reader.sync_state().map_err(|e| e.to_string())?;
    let report = StatusReport {
        reader_ms,
        applied_ms: state.clock_offset_ms,
        deny: state.deny_version,
        queue: queued,
        lag,
        software: StatusReport::software_name(env!("CARGO_PKG_VERSION")),
    };
    let hub_ms = round.hub_now_ms(reader).map_err(|e| e.to_string())?;
    hub.call(|hub| hub.report(&report, reader, hub_ms))
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Records still unacknowledged, for a report after a failed round.
fn queued(reader: &Reader) -> Result<u64, String> {
    Ok(reader.summary().map_err(|e| e.to_string())?.unsynced)
}

/// The background uplink for the daemon: opens its own connection to the
/// reader in `dir`, syncs every `interval`, backs off on failure, and
/// returns when `stop` is set (checked at least every 100 ms).
pub fn run_loop(
    dir: &Path,
    hub: &HubClient,
    options: &SyncOptions,
    interval: Duration,
    stop: &AtomicBool,
    mut on_round: impl FnMut(Result<&SyncReport, &SyncError>),
) -> Result<(), SyncError> {
    let mut reader = Reader::open(dir)?;
    let mut plan = Plan::new(
        interval,
        Duration::from_millis(500),
        Duration::from_secs(300),
    );
    let mut seed = now_ms() | 1;
    let mut report = SyncReport::default();
    let mut round = Round::default();
    while !stop.load(Ordering::Relaxed) {
        let step = plan.current();
        // xorshift: jitter needs spread, not secrecy.
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let unit = (seed >> 11) as f64 / (1u64 << 53) as f64;
        let outcome = match step {
            Step::Sleep(wait) => {
                let until = Instant::now() + wait;
                while Instant::now() < until && !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(100).min(until - Instant::now()));
                }
                report = SyncReport::default();
                round = Round::default();
                Outcome::Done { more: false }
            }
            _ => match run_step(
                step,
                &mut reader,
                hub,
                options,
                &mut round,
                &mut report,
                &mut |_| {},
            )
            .and_then(|more| {
                if step == Step::Prune {
                    commit_clock(&reader, &round, &mut report)?;
                }
                Ok(more)
            }) {
                Ok(more) => {
                    if step == Step::Prune {
                        let now = now_ms() / 1000;
                        reader.note_sync(now, None)?;
                        report.queued = reader.summary()?.unsynced;
                        report.hub = hub.in_use().to_owned();
                        report.report_error =
                            report_state(&reader, hub, &round, report.queued).err();
                        on_round(Ok(&report));
                    }
                    Outcome::Done { more }
                }
                Err(e) => {
                    let now = now_ms() / 1000;
                    reader.note_sync(now, Some(&e.to_string()))?;
                    if let SyncError::Refused { .. } = e
                        && let Err(why) = queued(&reader)
                            .and_then(|queued| report_state(&reader, hub, &round, queued))
                    {
                        tracing::debug!("the hub did not take this reader's report: {why}");
                    }
                    on_round(Err(&e));
                    if e.is_permanent() {
                        Outcome::Refused
                    } else {
                        Outcome::Failed
                    }
                }
            },
        };
        plan.next(outcome, unit);
    }
    Ok(())
}
