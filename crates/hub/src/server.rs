//! `sonotap hub serve`: the hub's HTTP API (documented in `docs/sync.md`).
//!
//! A thin axum layer over [`Hub`]: every request becomes one call into the
//! hub on a blocking thread (SQLite and signature checks are synchronous).
//! Batches are stored by writers (one on SQLite, several on PostgreSQL,
//! whose advisory locks order what clearing shares), each one batch at a time; a
//! reader sends its batches one at a time, in its chain's order. Reads (the deny list, the keys, who signed a request or a
//! batch) go through read connections of their own ([`HubReader`]) and the
//! signed time needs only the issuer key, so no read waits for an ingest.
//! TLS (rustls) is required on any address but loopback.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::header::AUTHORIZATION;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use serde::Deserialize;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::accounts::Refusal;
use super::backend::LockWaits;
use super::ledger::{IngestStatus, Via};
use super::listen::{self, Limits, Outcome, Peer};
use super::metrics::{self, Connections, HubMetrics};
use super::phones::{self, Limiter};
use super::{Hub, HubError, HubReader, PhoneAnswer, ReadSide, check_wallet_request};
use sonotap_protocol::api::{
    AUTH_SCHEME, DenyAnswer, KeysAnswer, REPORT_PATH, ReportAnswer, StatusReport, TimeAnswer,
    UploadAnswer,
};
use sonotap_protocol::wire::{WalletAsk, WalletRequest};

/// Largest accepted request body: a full batch is about 2.8 MB.
pub const MAX_BODY: usize = 4 << 20;
/// Most deny-list entries per response; readers ask again for the rest.
pub const DENY_PAGE: u32 = 1000;
/// Where the phones' endpoints live (docs/sync.md §2.3).
pub const PHONE_PATHS: &str = "/v1/wallet/";
/// Largest body a phone may send: its largest request.
pub const PHONE_MAX_BODY: usize = WalletRequest::MAX_LEN;

/// Where and how to listen.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Address to bind (port 0 picks a free port).
    pub listen: SocketAddr,
    /// PEM certificate chain and private key; required unless `listen` is loopback.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Connection limits and timeouts.
    pub limits: Limits,
    /// Batches stored at once, each on a connection of its own, where the
    /// state allows concurrent writers (PostgreSQL); SQLite has one writer
    /// whatever this says. At least 1.
    pub writers: usize,
    /// Where to serve `GET /metrics` (Prometheus), plain HTTP and
    /// unauthenticated: loopback, or a network only the monitoring reaches.
    pub metrics: Option<SocketAddr>,
}

/// Where a bound hub answers.
#[derive(Debug, Clone, Copy)]
pub struct Bound {
    /// The API.
    pub api: SocketAddr,
    /// `GET /metrics`, when asked for.
    pub metrics: Option<SocketAddr>,
}

/// Writers `hub serve` opens on PostgreSQL unless told otherwise: enough
/// that one reader's batch waiting for the disk does not hold up another's.
pub const DEFAULT_WRITERS: usize = 4;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Plain HTTP was asked for on a non-loopback address.
    #[error(
        "refusing plain HTTP on {0}: give --tls-cert and --tls-key, or listen on 127.0.0.1 / ::1"
    )]
    PlainOffLoopback(SocketAddr),
    /// The certificate or key could not be loaded.
    #[error("TLS: {0}")]
    Tls(String),
    /// Binding or serving failed.
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
}

/// Read connections open at most at once: reads run beside each other
/// and beside the writer, without opening a connection per request.
const READ_CONNECTIONS: usize = 4;

/// What every request shares.
struct Served {
    /// The writers: each stores one batch at a time. PostgreSQL has
    /// several (its advisory locks order batches that share a reader or a
    /// wallet, docs/sync.md §8), SQLite one (batches stored one at a time).
    writers: Vec<Mutex<Hub>>,
    /// One permit per writer in use, so that a request holding one always
    /// finds a writer free.
    writing: Arc<Semaphore>,
    /// The issuer key and the way to open read connections.
    read: ReadSide,
    /// Read connections not in use.
    idle: Mutex<Vec<HubReader>>,
    /// One permit per read connection in use.
    readers: Arc<Semaphore>,
    /// The phones' budgets.
    limiter: Mutex<Limiter>,
    /// Phones' checked requests waiting for a writer (see [`answer_in_turn`]).
    phones: Mutex<Vec<Waiting>>,
    /// The signed issuer key set a renewal answer carries, hex, and when it
    /// was read (see [`wallet_key_set`]).
    key_set: Mutex<Option<(Instant, String)>>,
    /// What this process counts (served at `--metrics`).
    metrics: Arc<HubMetrics>,
}

/// A phone's request waiting for its answer.
type Waiting = (
    WalletRequest,
    tokio::sync::oneshot::Sender<Result<Result<PhoneAnswer, Refusal>, ApiError>>,
);

/// The most phone requests answered in one transaction.
const PHONE_BATCH: usize = 256;

/// Answers a phone's request with the others waiting: each request joins
/// the queue, then takes a writer in turn, and a writer answers everything
/// queued (up to [`PHONE_BATCH`]) in one transaction
/// ([`Hub::answer_phones`]), so phones arriving together share one commit
/// (one sync of the log to disk). A request whose writer finds the queue
/// empty was answered by an earlier one; every request is followed by a
/// writer turn of its own, so none is left in the queue. A batch that
/// fails as a whole (a lost connection) is answered again request by
/// request. Enrolments are not queued ([`phone`]).
async fn answer_in_turn(
    hub: &Shared,
    request: WalletRequest,
) -> Result<Result<PhoneAnswer, Refusal>, ApiError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    listen::unpoisoned(&hub.phones).push((request, tx));
    let shared = Arc::clone(hub);
    with_writer(Arc::clone(hub), move |writer| {
        let batch: Vec<Waiting> = {
            let mut queue = listen::unpoisoned(&shared.phones);
            let take = queue.len().min(PHONE_BATCH);
            queue.drain(..take).collect()
        };
        if batch.is_empty() {
            return Ok(());
        }
        let (requests, senders): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
        match writer.answer_phones(&requests, now_ms()) {
            Ok(answers) => {
                for (sender, answer) in senders.into_iter().zip(answers) {
                    let _ = sender.send(Ok(answer));
                }
            }
            Err(_) => {
                for (request, sender) in requests.iter().zip(senders) {
                    let answer = writer.answer_phone(request, now_ms());
                    let _ = sender.send(answer.map_err(ApiError::from));
                }
            }
        }
        Ok(())
    })
    .await?;
    rx.await
        .map_err(|_| ApiError::internal("the writer answering this request stopped".into()))?
}

/// The writer a request that panicked left locked: see [`Served::writer`].
fn recovered<'a>(
    w: &'a Mutex<Hub>,
    poisoned: std::sync::PoisonError<MutexGuard<'a, Hub>>,
) -> MutexGuard<'a, Hub> {
    tracing::warn!("a request panicked while storing; its transaction was rolled back");
    w.clear_poison();
    poisoned.into_inner()
}

impl Served {
    /// Serves `hub`, with up to `writers` writers where its state allows
    /// more than one (each another connection, opened now).
    fn new(hub: Hub, writers: usize) -> Result<Self, HubError> {
        let mut more = Vec::new();
        for _ in 1..writers.max(1) {
            match hub.another_writer() {
                Some(writer) => more.push(writer?),
                None => break,
            }
        }
        let read = hub.read_side();
        let writers: Vec<Mutex<Hub>> = std::iter::once(hub).chain(more).map(Mutex::new).collect();
        Ok(Self {
            read,
            writing: Arc::new(Semaphore::new(writers.len())),
            writers,
            idle: Mutex::new(Vec::new()),
            readers: Arc::new(Semaphore::new(READ_CONNECTIONS)),
            limiter: Mutex::new(Limiter::default()),
            phones: Mutex::new(Vec::new()),
            key_set: Mutex::new(None),
            metrics: Arc::new(HubMetrics::default()),
        })
    }

    /// This process's connections now, for the metrics.
    fn connections(&self) -> Connections {
        let in_use =
            |permits: &Semaphore, of: usize| of.saturating_sub(permits.available_permits()) as u64;
        Connections {
            writers: self.writers.len() as u64,
            writers_busy: in_use(&self.writing, self.writers.len()),
            readers_busy: in_use(&self.readers, READ_CONNECTIONS),
            readers_idle: self.idle().len() as u64,
            lock_wait: self.lock_waits().map(|w| w.total),
        }
    }

    /// A free writer; the caller holds one of [`Self::writing`]'s permits,
    /// so one is free. A request that panicked while holding it (a bug)
    /// left nothing half-done: its transaction rolled back as the panic
    /// unwound (both backends roll back a transaction that is dropped), so
    /// the next request goes on instead of failing forever on the poisoned
    /// lock.
    fn writer(&self) -> MutexGuard<'_, Hub> {
        for w in &self.writers {
            match w.try_lock() {
                Ok(guard) => return guard,
                Err(std::sync::TryLockError::Poisoned(poisoned)) => return recovered(w, poisoned),
                Err(std::sync::TryLockError::WouldBlock) => {}
            }
        }
        // Not reached while every holder of a writer holds a permit; waiting is right anyway.
        let first = &self.writers[0];
        first
            .lock()
            .unwrap_or_else(|poisoned| recovered(first, poisoned))
    }

    /// Time the writers spent taking locks, summed (PostgreSQL).
    fn lock_waits(&self) -> Option<LockWaits> {
        self.writers
            .iter()
            .try_fold(LockWaits::default(), |sum, w| {
                let waits = listen::unpoisoned(w).lock_waits()?;
                Some(LockWaits {
                    writes: sum.writes + waits.writes,
                    total: sum.total + waits.total,
                    longest: sum.longest.max(waits.longest),
                })
            })
    }

    /// The idle read connections (a push or a pop cannot leave the list
    /// half-changed).
    fn idle(&self) -> MutexGuard<'_, Vec<HubReader>> {
        listen::unpoisoned(&self.idle)
    }
}

type Shared = Arc<Served>;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// An error answer: the HTTP status, a stable code and a message for the
/// client, and what the hub's request log adds (the reader, and why, when
/// that is more than the message says).
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    /// Boxed: every handler returns `Result<_, ApiError>`, kept small.
    log: Box<Outcome>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: String) -> Self {
        Self {
            status,
            code,
            message,
            log: Box::default(),
        }
    }

    fn internal(message: String) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }

    /// The refusal's detail for the log only (the answer leaves it out).
    fn why(mut self, detail: String) -> Self {
        self.log.why = Some(detail);
        self
    }

    /// The request concerned `reader` (an upload with `records` records).
    fn about(mut self, reader: &str, records: Option<u64>) -> Self {
        self.log.reader.get_or_insert_with(|| reader.to_owned());
        self.log.records = self.log.records.or(records);
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({ "error": self.code, "message": self.message });
        let mut log = *self.log;
        log.why.get_or_insert(self.message);
        let mut response = if self.status == StatusCode::UNAUTHORIZED {
            // HTTP requires a 401 to name the scheme that would be accepted.
            let challenge = [(axum::http::header::WWW_AUTHENTICATE, AUTH_SCHEME)];
            (self.status, challenge, axum::Json(body)).into_response()
        } else {
            (self.status, axum::Json(body)).into_response()
        };
        response.extensions_mut().insert(log);
        response
    }
}

/// The one answer to an upload not signed by a registered reader: the same
/// for an unknown reader id and a bad signature, so that nobody can learn
/// which ids are registered. The hub's log keeps the difference.
pub const REFUSED_MESSAGE: &str = "the batch is not signed by a registered reader's key";
/// The one answer to a read of the deny list or the keys without a valid
/// reader signature (missing, malformed, stale, unknown reader, bad signature).
pub const UNAUTHENTICATED_MESSAGE: &str =
    "this endpoint needs a request signed by a registered reader (docs/sync.md, signed requests)";

impl From<HubError> for ApiError {
    fn from(e: HubError) -> Self {
        let detail = e.to_string();
        match &e {
            HubError::Wire(_) => ApiError::new(StatusCode::BAD_REQUEST, "malformed", detail),
            HubError::UnknownReader { reader } => {
                ApiError::new(StatusCode::FORBIDDEN, "refused", REFUSED_MESSAGE.into())
                    .why(format!("upload refused: {detail}"))
                    .about(reader, None)
            }
            HubError::Refused(_) => {
                ApiError::new(StatusCode::FORBIDDEN, "refused", REFUSED_MESSAGE.into())
                    .why(format!("upload refused: {detail}"))
            }
            HubError::NotAuthenticated { .. } => ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                UNAUTHENTICATED_MESSAGE.into(),
            )
            .why(detail),
            HubError::Conflict { reader, .. } => {
                ApiError::new(StatusCode::CONFLICT, "conflict", detail).about(reader, None)
            }
            HubError::Report(_) => ApiError::new(StatusCode::BAD_REQUEST, "malformed", detail),
            HubError::Store(_) | HubError::Postgres { .. } | HubError::Backend(_) => {
                let mut error =
                    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "hub_unavailable", detail);
                error.log.database_error = true;
                error
            }
            _ => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "hub_unavailable", detail),
        }
    }
}

/// The reader's signed request from `Authorization: Sonotap HEX` (docs/sync.md).
fn signed_request(headers: &HeaderMap) -> Result<String, ApiError> {
    let value = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix(AUTH_SCHEME))
        .and_then(|v| v.strip_prefix(' '));
    match value {
        Some(hex) => Ok(hex.to_owned()),
        None => Err(ApiError::from(HubError::NotAuthenticated {
            detail: "no `Authorization: Sonotap …` header".into(),
        })),
    }
}

/// Path and query, as the reader signed them.
fn target(uri: &Uri) -> String {
    uri.path_and_query()
        .map_or_else(|| uri.path().to_owned(), |pq| pq.as_str().to_owned())
}

/// Runs `f` on a blocking thread.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, HubError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(ApiError::from)
}

/// Runs `f` with the writer, after the writes before it.
async fn with_writer<T: Send + 'static>(
    hub: Shared,
    f: impl FnOnce(&mut Hub) -> Result<T, HubError> + Send + 'static,
) -> Result<T, ApiError> {
    let permit = Arc::clone(&hub.writing)
        .acquire_owned()
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?;
    blocking(move || {
        let mut writer = hub.writer();
        let out = f(&mut writer);
        drop(writer);
        drop(permit);
        out
    })
    .await
}

/// Runs `f` on a read connection of its own, beside the writer.
async fn with_reader<T: Send + 'static>(
    hub: Shared,
    f: impl FnOnce(&mut HubReader) -> Result<T, HubError> + Send + 'static,
) -> Result<T, ApiError> {
    let permit = Arc::clone(&hub.readers)
        .acquire_owned()
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?;
    blocking(move || {
        let idle = hub.idle().pop();
        let mut reader = match idle {
            Some(reader) => reader,
            None => hub.read.open()?,
        };
        let out = f(&mut reader);
        // Not reached if `f` panicked: that connection is dropped, and the
        // next read opens a fresh one.
        hub.idle().push(reader);
        drop(permit);
        out
    })
    .await
}

async fn upload(
    State(hub): State<Shared>,
    body: Bytes,
) -> Result<(Extension<Outcome>, axum::Json<UploadAnswer>), ApiError> {
    let admitted = with_reader(Arc::clone(&hub), move |reader| reader.admit(&body)).await?;
    let reader = admitted.reader_id().to_owned();
    let records = Some(admitted.records());
    let about = |e: ApiError| e.about(&reader, records);
    // Signature checks run outside the writer's lock, beside other uploads.
    let checked = blocking(move || admitted.check()).await.map_err(about)?;
    let (receipt, lock_wait_ms) = with_writer(hub, move |hub| {
        let before = hub.lock_waits();
        let receipt = hub.store(&checked, Via::Network, now_ms())?;
        let waited = hub
            .lock_waits()
            .zip(before)
            .map(|(after, before)| after.total.saturating_sub(before.total));
        Ok((receipt, waited))
    })
    .await
    .map_err(about)?;
    let ack = receipt
        .ack
        .encode()
        .map_err(|e| about(ApiError::internal(e.to_string())))?;
    let status = match receipt.report.status {
        IngestStatus::Duplicate => "duplicate",
        _ => "stored",
    };
    let log = Outcome {
        reader: Some(reader.clone()),
        records,
        lock_wait_ms: lock_wait_ms.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        ingested: Some((
            u64::from(receipt.report.new_records),
            u64::from(receipt.report.already_stored),
        )),
        ..Outcome::default()
    };
    Ok((
        Extension(log),
        axum::Json(UploadAnswer {
            status: status.into(),
            ack: hex::encode(ack),
            new_records: receipt.report.new_records,
            already_stored: receipt.report.already_stored,
            flagged: receipt.report.flagged,
        }),
    ))
}

/// The request log's note of an authenticated reader.
fn signed_by(reader: String) -> Extension<Outcome> {
    Extension(Outcome {
        reader: Some(reader),
        ..Outcome::default()
    })
}

/// `POST /v1/report?…`: a reader's report of itself (docs/sync.md §2.5),
/// the query signed with the request. Kept as the reader's newest.
async fn report(
    State(hub): State<Shared>,
    headers: HeaderMap,
    uri: Uri,
    query: Result<Query<StatusReport>, axum::extract::rejection::QueryRejection>,
) -> Result<(Extension<Outcome>, axum::Json<ReportAnswer>), ApiError> {
    // The clock offset is measured on arrival, not after waiting for a
    // connection. (A body was refused before this: `listen`.)
    let arrived_ms = now_ms();
    let auth = signed_request(&headers)?;
    let target = target(&uri);
    // Who signed it first: an unsigned caller learns nothing, not even
    // whether its query parses.
    let request = with_reader(Arc::clone(&hub), move |reader| {
        reader.authenticate(&auth, "POST", &target, arrived_ms)
    })
    .await?;
    // Its signed time orders the reports.
    let (signer, signed_ms) = (request.reader_id, request.time_ms);
    let Query(report) = query.map_err(|e| {
        ApiError::new(StatusCode::BAD_REQUEST, "malformed", e.body_text()).about(&signer, None)
    })?;
    let reader = signer.clone();
    let clock_offset_ms = with_writer(hub, move |hub| {
        hub.record_report(&reader, &report, signed_ms, arrived_ms)
    })
    .await
    .map_err(|e| e.about(&signer, None))?;
    Ok((
        signed_by(signer),
        axum::Json(ReportAnswer { clock_offset_ms }),
    ))
}

/// `GET /metrics` on the metrics listener: this process's counters and
/// the fleet from the database (docs/sync.md §2.6).
async fn scrape(State(hub): State<Shared>) -> Response {
    let fleet = with_reader(Arc::clone(&hub), |reader| reader.fleet()).await;
    let fleet = match fleet {
        Ok(fleet) => Some(fleet),
        Err(e) => {
            tracing::error!(why = %e.message, "metrics: cannot read the fleet's state");
            None
        }
    };
    let text = hub.metrics.render(fleet.as_ref(), &hub.connections());
    (
        [(axum::http::header::CONTENT_TYPE, metrics::CONTENT_TYPE)],
        text,
    )
        .into_response()
}

/// Query of `GET /v1/deny`.
#[derive(Debug, Deserialize)]
struct Since {
    #[serde(default)]
    since: u64,
}

async fn deny(
    State(hub): State<Shared>,
    headers: HeaderMap,
    uri: Uri,
    Query(q): Query<Since>,
) -> Result<(Extension<Outcome>, axum::Json<DenyAnswer>), ApiError> {
    let auth = signed_request(&headers)?;
    let target = target(&uri);
    let (signer, (version, entries)) = with_reader(hub, move |reader| {
        let signer = reader
            .authenticate(&auth, "GET", &target, now_ms())?
            .reader_id;
        Ok((signer, reader.deny_entries(q.since, DENY_PAGE)?))
    })
    .await?;
    let more = q.since + (entries.len() as u64) < version;
    Ok((
        signed_by(signer),
        axum::Json(DenyAnswer {
            version,
            entries: entries.into_iter().map(hex::encode).collect(),
            more,
        }),
    ))
}

async fn keys(
    State(hub): State<Shared>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<(Extension<Outcome>, axum::Json<KeysAnswer>), ApiError> {
    let auth = signed_request(&headers)?;
    let target = target(&uri);
    let (signer, set) = with_reader(hub, move |reader| {
        let signer = reader
            .authenticate(&auth, "GET", &target, now_ms())?
            .reader_id;
        Ok((signer, reader.key_set()?))
    })
    .await?;
    let bytes = set
        .encode()
        .map_err(|e| ApiError::internal(e.to_string()).about(&signer, None))?;
    Ok((
        signed_by(signer),
        axum::Json(KeysAnswer {
            version: set.version,
            key_set: hex::encode(bytes),
        }),
    ))
}

/// How long a renewal answer's key set is reused before it is read again:
/// phones that renew together share one read, and a key the operator adds
/// reaches the next phone a second later.
const KEY_SET_REUSED: Duration = Duration::from_secs(1);

/// The signed issuer key set (docs/sync.md §3.4), hex, for a renewal
/// answer: a phone adopts it as a reader does, so that credentials under a
/// key added later verify (docs/accounts.md §3.3). Read at most once a
/// [`KEY_SET_REUSED`]; `None` if it cannot be read or signed now (the
/// answer goes without, and the phone keeps the keys it has).
async fn wallet_key_set(hub: &Shared) -> Option<String> {
    if let Some((at, set)) = listen::unpoisoned(&hub.key_set).as_ref()
        && at.elapsed() < KEY_SET_REUSED
    {
        return Some(set.clone());
    }
    let read = with_reader(Arc::clone(hub), |reader| reader.key_set()).await;
    let set = match read.map(|set| set.encode()) {
        Ok(Ok(bytes)) => hex::encode(bytes),
        Ok(Err(e)) => {
            tracing::warn!("renewal answers go without the key set: {e}");
            return None;
        }
        Err(e) => {
            tracing::warn!("renewal answers go without the key set: {}", e.message);
            return None;
        }
    };
    *listen::unpoisoned(&hub.key_set) = Some((Instant::now(), set.clone()));
    Some(set)
}

/// Query of `GET /v1/time`.
#[derive(Debug, Deserialize)]
struct TimeQuery {
    /// 16 random bytes from the reader, hex: the hub signs its time over them.
    nonce: Option<String>,
}

async fn time(
    State(hub): State<Shared>,
    Query(q): Query<TimeQuery>,
) -> Result<axum::Json<TimeAnswer>, ApiError> {
    let Some(nonce) = q.nonce else {
        return Ok(axum::Json(TimeAnswer {
            unix_ms: now_ms(),
            statement: None,
        }));
    };
    let nonce = hex::decode(&nonce)
        .ok()
        .and_then(|b| <[u8; 16]>::try_from(b).ok())
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "malformed",
                "nonce must be 16 bytes, hex (32 digits)".into(),
            )
        })?;
    // The issuer key alone: no lock, no database.
    let statement = hub.read.time_statement(nonce, now_ms());
    Ok(axum::Json(TimeAnswer {
        unix_ms: statement.hub_time_ms,
        statement: Some(hex::encode(statement.encode())),
    }))
}

/// The one answer to a phone's request that is not authenticated (not a
/// request, a bad signature, a stale time, a replayed nonce): the same
/// whatever the reason, so that it tells nobody anything about a wallet.
pub const PHONE_UNAUTHENTICATED: &str = "request not authenticated: sign it with the wallet key, stamped with the hub's time \
     (GET /v1/time), with a fresh nonce (docs/accounts.md)";

/// A phone's request over its budget: 429 with `Retry-After`.
fn too_many(wait_ms: u64, what: &str) -> Response {
    let secs = wait_ms.div_ceil(1000).max(1);
    let mut response = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        format!("too many requests {what}; try again in {secs} s"),
    )
    .into_response();
    if let Ok(value) = axum::http::HeaderValue::from_str(&secs.to_string()) {
        response
            .headers_mut()
            .insert(axum::http::header::RETRY_AFTER, value);
    }
    response
}

/// The HTTP status of a refusal.
fn refusal_status(refusal: &Refusal) -> StatusCode {
    match refusal {
        Refusal::Replayed => StatusCode::UNAUTHORIZED,
        Refusal::NoAllowance { .. } => StatusCode::CONFLICT,
        _ => StatusCode::FORBIDDEN,
    }
}

/// `POST /v1/wallet/{enrol,renew,statement}`: a phone's signed request
/// (docs/sync.md §2.3). `kind` is the path's: a request of another kind
/// is refused.
async fn phone(hub: Shared, peer: IpAddr, kind: &'static str, body: Bytes) -> Response {
    let taken = listen::unpoisoned(&hub.limiter)
        .addresses
        .take(&peer, now_ms());
    if let Err(wait) = taken {
        return too_many(wait, "from this address");
    }
    if kind == "enrol" {
        let wait = listen::unpoisoned(&hub.limiter)
            .code_failures
            .wait_ms(&peer, now_ms());
        if wait > 0 {
            return too_many(
                wait,
                "with enrolment codes that are not valid from this address",
            );
        }
    }
    let checked = tokio::task::spawn_blocking(move || check_wallet_request(&body, now_ms())).await;
    let request = match checked {
        Ok(Ok(request)) if request.ask.name() == kind => request,
        Ok(Ok(request)) => {
            return ApiError::new(
                StatusCode::BAD_REQUEST,
                "malformed",
                format!(
                    "a {} request sent to the {kind} endpoint",
                    request.ask.name()
                ),
            )
            .into_response();
        }
        Ok(Err(why)) => {
            return ApiError::new(
                StatusCode::UNAUTHORIZED,
                "not_authenticated",
                PHONE_UNAUTHENTICATED.into(),
            )
            .why(why)
            .into_response();
        }
        Err(e) => return ApiError::internal(e.to_string()).into_response(),
    };
    let wallet = request.wallet();
    let taken = listen::unpoisoned(&hub.limiter)
        .wallets
        .take(&wallet, now_ms());
    if let Err(wait) = taken {
        return too_many(wait, "from this wallet");
    }
    // Enrolments lock a code and an account in an order a batch cannot
    // sort in advance: each is answered in a transaction of its own.
    let answer = match request.ask {
        WalletAsk::Enrol { .. } => {
            with_writer(Arc::clone(&hub), move |writer| {
                writer.answer_phone(&request, now_ms())
            })
            .await
        }
        _ => answer_in_turn(&hub, request).await,
    };
    let outcome = Extension(Outcome {
        reader: Some(format!("wallet {wallet}")),
        ..Outcome::default()
    });
    match answer {
        Err(e) => e.into_response(),
        Ok(Ok(PhoneAnswer::Enrolled { currency })) => {
            let issuer = hub.read.issuer_key();
            let answer = json!({
                "status": "enrolled",
                "account_currency": currency,
                "issuer_key_id": issuer.0,
                "issuer_key": hex::encode(issuer.1),
            });
            (outcome, axum::Json(answer)).into_response()
        }
        Ok(Ok(PhoneAnswer::Renewed(renewed))) => {
            let mut answer = json!({ "renewed": hex::encode(renewed.encode()) });
            if let Some(set) = wallet_key_set(&hub).await {
                answer["key_set"] = set.into();
            }
            (outcome, axum::Json(answer)).into_response()
        }
        Ok(Ok(PhoneAnswer::Statement(statement))) => match statement.encode() {
            Ok(bytes) => (
                outcome,
                axum::Json(json!({ "statement": hex::encode(bytes) })),
            )
                .into_response(),
            Err(e) => ApiError::internal(e.to_string()).into_response(),
        },
        Ok(Err(refusal)) => {
            if refusal == Refusal::CodeNotValid {
                let _ = listen::unpoisoned(&hub.limiter)
                    .code_failures
                    .take(&peer, now_ms());
            }
            let message = match refusal {
                Refusal::Replayed => PHONE_UNAUTHENTICATED.to_owned(),
                _ => refusal.message(),
            };
            let mut response = ApiError::new(refusal_status(&refusal), refusal.code(), message)
                .why(format!("wallet {wallet}: {}", refusal.message()))
                .into_response();
            response.extensions_mut().insert(outcome.0);
            response
        }
    }
}

/// The client's address; unspecified where the router runs without the
/// hub's listener (in-process tests), which then share one budget.
fn peer_ip(peer: Option<Extension<Peer>>) -> IpAddr {
    let ip = peer.map_or(IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED), |p| p.0.0);
    phones::address_key(ip)
}

async fn phone_enrol(
    State(hub): State<Shared>,
    peer: Option<Extension<Peer>>,
    body: Bytes,
) -> Response {
    phone(hub, peer_ip(peer), "enrol", body).await
}

async fn phone_renew(
    State(hub): State<Shared>,
    peer: Option<Extension<Peer>>,
    body: Bytes,
) -> Response {
    phone(hub, peer_ip(peer), "renew", body).await
}

async fn phone_statement(
    State(hub): State<Shared>,
    peer: Option<Extension<Peer>>,
    body: Bytes,
) -> Response {
    phone(hub, peer_ip(peer), "statement", body).await
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such endpoint; see docs/sync.md".into(),
    )
}

/// The rider's web wallet's files (`/wallet/…`, crate::wallet_web), or
/// the API's not-found answer.
async fn wallet_or_not_found(method: Method, uri: Uri, headers: HeaderMap) -> Response {
    let wallet = matches!(method, Method::GET | Method::HEAD)
        .then(|| crate::wallet_web::serve(&uri, &headers))
        .flatten();
    match wallet {
        Some(response) => response,
        None => not_found().await.into_response(),
    }
}

/// The API routes over a hub.
pub fn router(hub: Hub) -> Router {
    routes(Arc::new(
        Served::new(hub, 1).unwrap_or_else(|_| unreachable!("one writer opens nothing")),
    ))
}

fn routes(shared: Shared) -> Router {
    Router::new()
        .route("/v1/batches", post(upload))
        .route("/v1/deny", get(deny))
        .route("/v1/keys", get(keys))
        .route("/v1/time", get(time))
        .route(REPORT_PATH, post(report))
        .route("/v1/wallet/enrol", post(phone_enrol))
        .route("/v1/wallet/renew", post(phone_renew))
        .route("/v1/wallet/statement", post(phone_statement))
        .route(
            "/v1/health",
            get(|| async { axum::Json(json!({ "ok": true })) }),
        )
        .route("/wallet", get(crate::wallet_web::to_folder))
        .fallback(wallet_or_not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(shared)
}

fn tls_acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, ServeError> {
    // A certificate chain is a few KiB, a private key (RSA 4096) about 3 KiB.
    const MAX_CERT_BYTES: u64 = 1 << 20;
    const MAX_KEY_BYTES: u64 = 64 << 10;
    let pem = sonotap_disk::fsutil::read_regular_file_capped(cert, MAX_CERT_BYTES)
        .map_err(|e| ServeError::Tls(format!("certificate {e}")))?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| ServeError::Tls(format!("{}: {e}", cert.display())))?;
    if certs.is_empty() {
        return Err(ServeError::Tls(format!(
            "{}: no certificate",
            cert.display()
        )));
    }
    // The same rule as the issuer key: a regular file, owned by this user,
    // closed to group and others.
    let pem = sonotap_disk::fsutil::read_private_file_capped(key, MAX_KEY_BYTES)
        .map_err(|e| ServeError::Tls(format!("private key {e}")))?;
    let key = PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|e| ServeError::Tls(format!("{}: {e}", key.display())))?;
    let config = ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| ServeError::Tls(e.to_string()))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Binds and returns the bound addresses and the server future, which runs
/// until `shutdown` completes (then lets requests in progress finish).
pub async fn bind(
    hub: Hub,
    options: ServeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(Bound, impl Future<Output = Result<(), ServeError>>), ServeError> {
    let acceptor = match &options.tls {
        Some((cert, key)) => Some(tls_acceptor(cert, key)?),
        None if options.listen.ip().is_loopback() => None,
        None => return Err(ServeError::PlainOffLoopback(options.listen)),
    };
    let listener = TcpListener::bind(options.listen)
        .await
        .map_err(|e| ServeError::Io(format!("bind {}", options.listen), e))?;
    let addr = listener
        .local_addr()
        .map_err(|e| ServeError::Io("local address".into(), e))?;
    let shared: Shared = Arc::new(
        Served::new(hub, options.writers)
            .map_err(|e| ServeError::Io("opening the writers".into(), std::io::Error::other(e)))?,
    );
    let metrics_listener = match options.metrics {
        Some(at) => Some(
            TcpListener::bind(at)
                .await
                .map_err(|e| ServeError::Io(format!("bind {at} (metrics)"), e))?,
        ),
        None => None,
    };
    let metrics_addr = metrics_listener
        .as_ref()
        .map(TcpListener::local_addr)
        .transpose()
        .map_err(|e| ServeError::Io("local address".into(), e))?;
    // One shutdown for both listeners.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let until_stopped = move || {
        let mut stopped = stopped.clone();
        async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        }
    };
    let app = listen::layers(
        routes(Arc::clone(&shared)),
        options.limits,
        Arc::clone(&shared.metrics),
    );
    let serving = listen::serve(listener, acceptor, app, options.limits, until_stopped());
    let scraping = metrics_listener.map(|listener| {
        let app = Router::new()
            .route("/metrics", get(scrape))
            .with_state(Arc::clone(&shared));
        listen::serve(listener, None, app, options.limits, until_stopped())
    });
    let bound = Bound {
        api: addr,
        metrics: metrics_addr,
    };
    Ok((bound, async move {
        let signal = async move {
            shutdown.await;
            let _ = stop.send(true);
        };
        let (served, scraped, ()) = tokio::join!(
            serving,
            async move {
                match scraping {
                    Some(scraping) => scraping.await,
                    None => Ok(()),
                }
            },
            signal
        );
        let served = served.and(scraped);
        // What the operator needs to judge whether hub processes on one
        // PostgreSQL database got in each other's way.
        if let Some(waits) = shared.lock_waits() {
            tracing::info!(
                writes = waits.writes,
                total_ms = u64::try_from(waits.total.as_millis()).unwrap_or(u64::MAX),
                longest_ms = u64::try_from(waits.longest.as_millis()).unwrap_or(u64::MAX),
                "lock waits"
            );
        }
        served
    }))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use ed25519_dalek::SigningKey;
    use tokio::time::timeout;

    use super::*;
    use sonotap_disk::keys::{PublicKey, Role};
    use sonotap_protocol::testkit::NOW;
    use sonotap_protocol::token::WalletId;
    use sonotap_protocol::wire::{DenyAction, DenyReason, SignedRequest};

    /// Far longer than a read takes; a read queued behind the writer never ends.
    const LIMIT: Duration = Duration::from_secs(5);

    /// A served hub in `dir` with reader `gate-1` registered, and its key.
    fn served(dir: &Path) -> (Shared, SigningKey) {
        let mut hub = Hub::init(dir, 1, NOW).expect("hub");
        let reader = SigningKey::from_bytes(&[9; 32]);
        let public = PublicKey::from_bytes(Role::Reader, None, &reader.verifying_key().to_bytes())
            .expect("key");
        hub.add_reader("gate-1", &public, NOW).expect("register");
        (Arc::new(Served::new(hub, 1).expect("served")), reader)
    }

    /// `Authorization: Sonotap …` for `GET target`, signed by `gate-1`.
    fn signed(reader: &SigningKey, target: &str, nonce: u8) -> HeaderMap {
        let request = SignedRequest::sign("gate-1", now_ms(), [nonce; 16], "GET", target, reader)
            .expect("sign");
        let value = format!(
            "{AUTH_SCHEME} {}",
            hex::encode(request.encode().expect("encode"))
        );
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, value.parse().expect("header value"));
        headers
    }

    /// Issue 14: the signed time needs only the issuer key, and the deny
    /// list and the keys are read (with the request's authentication)
    /// through read connections of their own, so none of them waits while
    /// an ingest holds the writer. Before, every request took the one lock
    /// behind the ingest, and these timed out.
    #[tokio::test]
    async fn reads_answer_while_an_ingest_holds_the_writer() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (hub, reader) = served(dir.path());
        // An ingest in progress on another thread: the writer's lock held,
        // and a write transaction open on the database, until released.
        let (held, is_held) = std::sync::mpsc::channel();
        let (release, released) = std::sync::mpsc::channel::<()>();
        let ingest = {
            let hub = Arc::clone(&hub);
            let path = dir.path().join("hub.db");
            std::thread::spawn(move || {
                let _writer = hub.writer();
                let db = rusqlite::Connection::open(path).expect("db");
                db.execute_batch(
                    "BEGIN IMMEDIATE;
                     INSERT INTO incidents (reader_id, seq, kind, detail, at)
                     VALUES ('gate-1', 1, 'test', 'an ingest in progress', 0);",
                )
                .expect("the database's write lock");
                held.send(()).expect("the test waits");
                // Until released, or until the test ends (failed).
                let _ = released.recv();
                db.execute_batch("ROLLBACK").expect("rollback");
            })
        };
        is_held.recv().expect("the ingest holds the writer");

        let nonce = Some(hex::encode([1u8; 16]));
        let time = timeout(
            LIMIT,
            time(State(Arc::clone(&hub)), Query(TimeQuery { nonce })),
        )
        .await
        .expect("the time answers while the writer is held")
        .expect("a signed time");
        assert!(time.statement.is_some());

        let target = "/v1/deny?since=0";
        let denied = timeout(
            LIMIT,
            deny(
                State(Arc::clone(&hub)),
                signed(&reader, target, 2),
                target.parse().expect("uri"),
                Query(Since { since: 0 }),
            ),
        )
        .await
        .expect("the deny list answers while the writer is held")
        .expect("an authenticated read")
        .1;
        assert_eq!((denied.version, denied.entries.len()), (0, 0));

        let target = "/v1/keys";
        let keys = timeout(
            LIMIT,
            keys(
                State(Arc::clone(&hub)),
                signed(&reader, target, 3),
                target.parse().expect("uri"),
            ),
        )
        .await
        .expect("the keys answer while the writer is held")
        .expect("an authenticated read")
        .1;
        assert_eq!(keys.version, 1);

        release.send(()).expect("the ingest waits");
        ingest.join().expect("the ingest ends");
    }

    /// Issue 14: a request that panics while holding the writer (or a read
    /// connection) does not make every later request fail, as a poisoned
    /// lock did ("an earlier request panicked", forever).
    #[tokio::test]
    async fn a_panic_while_storing_or_reading_does_not_fail_later_requests() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (hub, _) = served(dir.path());
        let panicked = with_writer(Arc::clone(&hub), |_| -> Result<(), HubError> {
            panic!("a bug while storing")
        })
        .await
        .expect_err("the request that panicked fails");
        assert_eq!(panicked.status, StatusCode::INTERNAL_SERVER_ERROR);
        let wallet = WalletId([1; 8]);
        let entry = with_writer(Arc::clone(&hub), move |hub| {
            hub.set_deny(DenyAction::Deny, wallet, DenyReason::Operator, "test", NOW)
        })
        .await
        .expect("the writer stores again");
        assert_eq!(entry.version, 1);

        let panicked = with_reader(Arc::clone(&hub), |_| -> Result<(), HubError> {
            panic!("a bug while reading")
        })
        .await
        .expect_err("the request that panicked fails");
        assert_eq!(panicked.status, StatusCode::INTERNAL_SERVER_ERROR);
        for _ in 0..=READ_CONNECTIONS {
            let (version, entries) = with_reader(Arc::clone(&hub), |r| r.deny_entries(0, 10))
                .await
                .expect("reads go on, and see what the writer committed");
            assert_eq!((version, entries.len()), (1, 1));
        }
    }
}
