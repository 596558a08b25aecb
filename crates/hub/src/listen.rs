//! The hub's connections: one serving loop for plain HTTP and TLS, with the
//! limits that keep anyone who can reach the hub from taking it down.
//!
//! - **Connections**: at most [`Limits::max_connections`] at once (a
//!   semaphore, as mini-redis does), clamped below the open-file limit. The
//!   next connection waits in the kernel's listen backlog until one closes
//!   rather than being accepted and closed: a reader that arrives while an
//!   attacker holds every slot is served as soon as one of the attacker's
//!   connections times out (first come, first served), instead of failing
//!   outright and backing off. Every slot an attacker holds is freed by one
//!   of the timeouts below, so the wait is bounded.
//! - **Headers and idle keep-alive**: hyper's `header_read_timeout`, which
//!   runs from the moment hyper waits for a request head, so it also closes
//!   a kept-alive connection that sends no next request (hyper 1.12
//!   `proto/h1/conn.rs` `poll_read_head`; pinned by the integration test
//!   `issue13_01_idle_keep_alive_connection_is_closed_after_the_header_timeout`).
//! - **Bodies**: read by `admit_body` before any handler sees them: the
//!   declared length is checked against [`MAX_BODY`] before the body is
//!   first polled (hyper sends `100 Continue` only then), a body that stalls
//!   for [`Limits::body_timeout`] or arrives slower than
//!   [`Limits::min_body_rate`] gets a 408, and the bytes held in memory
//!   across all connections stay under [`Limits::body_budget`]; when the
//!   budget is full, a body that has not moved for 1 s gives its
//!   share up (408) to an upload waiting for room.
//! - **Responses**: a client that stops reading its answer for
//!   [`Limits::body_timeout`] is dropped (`Stall`).
//! - **TLS**: the handshake must finish within [`TLS_HANDSHAKE_TIMEOUT`].
//!
//! Every error the hub's API gives is JSON (`{"error", "message"}`), also
//! the ones axum and this module produce (`json_errors`), and every request
//! that reaches the API leaves one line in the hub's log (`log_request`,
//! through `tracing`): method, path, reader, status, records, duration and,
//! for a refusal or a failure, why.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{Request, State};
use axum::http::header::{self, HeaderValue};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use serde_json::json;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;
use tokio_rustls::TlsAcceptor;

use super::metrics::{Answered, HubMetrics};
use super::server::{MAX_BODY, PHONE_MAX_BODY, PHONE_PATHS, ServeError};
use sonotap_protocol::api::REPORT_PATH;

/// Default for [`Limits::header_timeout`]: a reader's request head is a few
/// hundred bytes and its next request follows within milliseconds, so 10 s
/// is generous on a slow cellular link, yet a slowloris or idle connection
/// holds its slot for at most 10 s.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Default for [`Limits::body_timeout`]: no body byte (or no answer byte
/// taken by the client) for 10 s is a stalled transfer, not a slow link.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// Default for [`Limits::min_body_rate`], bytes per second: 16 KiB/s is
/// 128 kbit/s, below a poor 3G uplink; a default 2,000-record batch (about
/// 560 kB) then may take 45 s, a full 4 MiB body 4 min 26 s.
pub const MIN_BODY_RATE: u64 = 16 * 1024;
/// Default for [`Limits::max_connections`]: a site's readers hold one or two
/// connections each for a few seconds per sync, so 1,024 serves hundreds of
/// readers syncing at the same moment; an idle connection costs the hub
/// about 20 kB (a task, hyper's buffers), so 1,024 of them cost ~20 MB.
pub const MAX_CONNECTIONS: usize = 1024;
/// Default for [`Limits::body_budget`]: request bytes held in memory across
/// all connections. The hub stores one batch at a time, so 64 MiB (16 full
/// 4 MiB bodies, 100 default batches) keeps it busy; it bounds what stalled
/// uploads can pin (150 of them took 633 MB before this limit).
pub const BODY_BUDGET: usize = 64 << 20;
/// The TLS handshake of a new connection must finish within this.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Descriptors kept free of connections: the database, its journal and WAL,
/// TLS and key files, the runtime's own.
const FD_RESERVE: u64 = 64;
/// hyper's per-connection read buffer: a request head must fit in it, so it
/// bounds what a slow header can make the hub hold per connection (hyper's
/// default is ~400 kB; sonotap's request heads are under 1 kB).
const READ_BUFFER: usize = 16 * 1024;
/// On shutdown, requests in progress get this long to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// A body that has not moved for this long gives its share of the body
/// budget up (408) when another upload is waiting for room: memory held by
/// stalled bodies goes to bodies that are arriving.
const YIELD_AFTER: Duration = Duration::from_secs(1);
/// The "connection cap reached" warning is repeated at most this often.
const CAP_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// The connection-level limits of `hub serve` (defaults: the constants of
/// this module; `hub serve` flags override them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// A request head, and the next request on a kept-alive connection,
    /// must arrive within this.
    pub header_timeout: Duration,
    /// A body (or an answer being sent) that makes no progress for this
    /// long is dropped; also the grace before [`Limits::min_body_rate`]
    /// applies, and the longest an upload waits for [`Limits::body_budget`].
    pub body_timeout: Duration,
    /// Slowest accepted body, bytes per second on average: a body of `n`
    /// bytes must be whole within `body_timeout + n / min_body_rate`.
    pub min_body_rate: u64,
    /// Most connections open at once (also clamped below the open-file limit).
    pub max_connections: usize,
    /// Most request-body bytes held in memory across all connections.
    pub body_budget: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            header_timeout: HEADER_TIMEOUT,
            body_timeout: BODY_TIMEOUT,
            min_body_rate: MIN_BODY_RATE,
            max_connections: MAX_CONNECTIONS,
            body_budget: BODY_BUDGET,
        }
    }
}

impl Limits {
    /// How long a body of `len` bytes may take to arrive whole.
    pub fn body_deadline(&self, len: u64) -> Duration {
        let rate = self.min_body_rate.max(1);
        self.body_timeout
            .saturating_add(Duration::from_millis(len.saturating_mul(1000) / rate))
    }
}

/// Raises this process's soft open-file limit to its hard limit, so the
/// connection cap rather than `EMFILE` is what bounds connections; returns
/// the soft limit in force afterwards.
pub fn raise_open_file_limit() -> io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one `rlimit` through a valid pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit reads one `rlimit` through a valid pointer.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            return Ok(raised.rlim_cur);
        }
    }
    Ok(limit.rlim_cur)
}

/// The current soft open-file limit, if it can be read.
fn open_file_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one `rlimit` through a valid pointer.
    (unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0).then_some(limit.rlim_cur)
}

/// The connection cap in force: `wanted`, lowered so that connections
/// leave [`FD_RESERVE`] descriptors of `fd_limit` free (at least 1).
fn connection_cap(wanted: usize, fd_limit: Option<u64>) -> usize {
    let Some(fds) = fd_limit else {
        return wanted.max(1);
    };
    let room = usize::try_from(fds.saturating_sub(FD_RESERVE)).unwrap_or(usize::MAX);
    wanted.min(room).max(1)
}

fn warn(message: &str) {
    tracing::warn!("{message}");
}

/// What a handler (or a refusal here) tells the request log beyond the
/// method, path, status and duration, as a response extension.
#[derive(Debug, Clone, Default)]
pub(crate) struct Outcome {
    /// The reader that signed the request, or that an upload names.
    pub reader: Option<String>,
    /// Records in an upload.
    pub records: Option<u64>,
    /// How long an upload's write waited for its locks (PostgreSQL's row
    /// locks: another hub process clearing the same reader or wallets).
    pub lock_wait_ms: Option<u64>,
    /// Why a request was refused or failed, including what the answer
    /// deliberately leaves out (which reader id, which signature).
    pub why: Option<String>,
    /// A stored upload's records: new, already stored (for the metrics).
    pub ingested: Option<(u64, u64)>,
    /// The request failed because the hub's database did.
    pub database_error: bool,
}

/// Logs one line per request, after its answer is made: `method`, `path`,
/// `reader`, `status`, `records`, `ms`, `lock_wait_ms` for a stored upload
/// on PostgreSQL, and `why` for a refusal (level WARN) or a failure (ERROR).
async fn log_request(
    State(metrics): State<Arc<HubMetrics>>,
    request: Request,
    next: Next,
) -> Response {
    let start = Instant::now();
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let response = next.run(request).await;
    let elapsed = start.elapsed();
    let ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
    let status = response.status();
    let outcome = response.extensions().get::<Outcome>();
    metrics.answered(&Answered {
        path: &path,
        status: status.as_u16(),
        elapsed,
        records: outcome.and_then(|o| o.ingested),
        database_error: outcome.is_some_and(|o| o.database_error),
    });
    let reader = outcome.and_then(|o| o.reader.as_deref());
    let records = outcome.and_then(|o| o.records);
    let lock_wait_ms = outcome.and_then(|o| o.lock_wait_ms);
    let why = outcome.and_then(|o| o.why.as_deref());
    let (method, path, code) = (method.as_str(), path.as_str(), status.as_u16());
    if status.is_server_error() {
        tracing::error!(
            method,
            path,
            reader,
            status = code,
            records,
            ms,
            why,
            "request"
        );
    } else if status.is_client_error() {
        tracing::warn!(
            method,
            path,
            reader,
            status = code,
            records,
            ms,
            why,
            "request"
        );
    } else {
        tracing::info!(
            method,
            path,
            reader,
            status = code,
            records,
            ms,
            lock_wait_ms,
            "request"
        );
    }
    response
}

/// Adds the body admission, JSON-error and request-log layers to the API
/// routes; the log counts each request in `metrics`.
pub(super) fn layers(app: Router, limits: Limits, metrics: Arc<HubMetrics>) -> Router {
    let guard = Arc::new(BodyGuard {
        limits,
        budget: Arc::new(Semaphore::new(
            limits.body_budget.clamp(MAX_BODY, Semaphore::MAX_PERMITS),
        )),
        holders: std::sync::Mutex::new(Vec::new()),
    });
    app.route_layer(middleware::from_fn_with_state(guard, admit_body))
        .layer(middleware::from_fn(json_errors))
        .layer(middleware::from_fn_with_state(metrics, log_request))
}

/// Accepts connections on `listener` (TLS if `tls`) and serves `app` on
/// each under `limits` until `shutdown` completes; then lets requests in
/// progress finish for up to [`SHUTDOWN_GRACE`].
pub(super) async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    app: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let cap = connection_cap(limits.max_connections, open_file_limit());
    if cap < limits.max_connections {
        warn(&format!(
            "the open-file limit allows {cap} connections, not {}; raise `ulimit -n`",
            limits.max_connections
        ));
    }
    let slots = Arc::new(Semaphore::new(cap));
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(READ_BUFFER);
    let graceful = GracefulShutdown::new();
    let mut last_cap_warning: Option<Instant> = None;
    tokio::pin!(shutdown);
    loop {
        let permit = match Arc::clone(&slots).try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                if last_cap_warning.is_none_or(|t| t.elapsed() >= CAP_LOG_INTERVAL) {
                    last_cap_warning = Some(Instant::now());
                    warn(&format!(
                        "{cap} connections open, the cap (--max-connections); new connections \
                         wait until one closes (repeated at most once a minute)"
                    ));
                }
                tokio::select! {
                    permit = Arc::clone(&slots).acquire_owned() => match permit {
                        Ok(permit) => permit,
                        Err(_) => break, // never closed
                    },
                    () = &mut shutdown => break,
                }
            }
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => (stream, peer),
                Err(e) => {
                    warn(&format!("accept: {e}"));
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let (stream, peer) = stream;
        let _ = stream.set_nodelay(true);
        let connection = Connection {
            permit,
            builder: builder.clone(),
            // The client's address, for the phone endpoints' budgets.
            app: app.clone().layer(axum::Extension(Peer(peer.ip()))),
            stall: limits.body_timeout,
        };
        let watcher = graceful.watcher();
        let tls = tls.clone();
        tokio::spawn(async move {
            match tls {
                None => connection.serve(stream, watcher).await,
                Some(acceptor) => {
                    let handshake = acceptor.accept(stream);
                    // A failed or slow handshake concerns only that client.
                    if let Ok(Ok(stream)) =
                        tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, handshake).await
                    {
                        connection.serve(stream, watcher).await;
                    }
                }
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        warn("requests still in progress at shutdown were cut off");
    }
    Ok(())
}

/// The address a connection came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Peer(pub std::net::IpAddr);

/// One accepted connection and what serving it needs.
struct Connection {
    /// Its slot under the connection cap, freed when it closes.
    permit: OwnedSemaphorePermit,
    builder: http1::Builder,
    app: Router,
    stall: Duration,
}

impl Connection {
    async fn serve<T>(self, stream: T, watcher: hyper_util::server::graceful::Watcher)
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let io = TokioIo::new(Stall::new(stream, self.stall));
        let service = TowerToHyperService::new(self.app);
        let _ = watcher
            .watch(self.builder.serve_connection(io, service))
            .await;
        drop(self.permit);
    }
}

/// A stream whose writes fail once they have made no progress for a
/// while: a client that stops reading its answers cannot hold a connection.
/// Reads are not timed here: hyper times request heads, [`admit_body`]
/// times bodies, and between them a connection legitimately waits for the
/// hub's answer.
struct Stall<T> {
    inner: T,
    limit: Duration,
    pending_since: Option<Pin<Box<Sleep>>>,
}

impl<T> Stall<T> {
    fn new(inner: T, limit: Duration) -> Self {
        Self {
            inner,
            limit,
            pending_since: None,
        }
    }

    /// After the inner write returned `poll`: arms, polls or clears the timer.
    fn check<R>(&mut self, cx: &mut Context<'_>, poll: Poll<io::Result<R>>) -> Poll<io::Result<R>> {
        if poll.is_ready() {
            self.pending_since = None;
            return poll;
        }
        let limit = self.limit;
        let timer = self
            .pending_since
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client took no data for the body timeout",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Stall<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Stall<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.check(cx, poll)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.check(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_flush(cx);
        self.check(cx, poll)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.check(cx, poll)
    }
}

/// What [`admit_body`] shares across connections.
struct BodyGuard {
    limits: Limits,
    /// One permit per body byte held in memory.
    budget: Arc<Semaphore>,
    /// Bodies being read under the budget.
    holders: std::sync::Mutex<Vec<Arc<Holder>>>,
}

/// A body being read while it holds part of the budget.
struct Holder {
    bytes: u64,
    /// When its last bytes came.
    last: std::sync::Mutex<Instant>,
    /// Set once it has been asked to yield.
    evicted: std::sync::atomic::AtomicBool,
    yield_now: tokio::sync::Notify,
}

impl Holder {
    fn last(&self) -> Instant {
        *unpoisoned(&self.last)
    }
}

/// Locks `mutex` even if a thread panicked while holding it: for state that
/// one statement changes (a list pushed to, a time set), which a panic
/// cannot leave half-changed. Otherwise one panic would stop that state
/// from working for every later request.
pub(super) fn unpoisoned<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl BodyGuard {
    /// Asks bodies that have not moved for [`YIELD_AFTER`], the longest
    /// stalled first, to give up their budget until `want` bytes could be
    /// free.
    fn evict_stalled(&self, want: u64) {
        let holders = unpoisoned(&self.holders);
        let now = Instant::now();
        let mut stalled: Vec<(Instant, &Arc<Holder>)> = holders
            .iter()
            .filter(|h| !h.evicted.load(std::sync::atomic::Ordering::Relaxed))
            .map(|h| (h.last(), h))
            .filter(|(last, _)| now.saturating_duration_since(*last) >= YIELD_AFTER)
            .collect();
        stalled.sort_by_key(|(last, _)| *last);
        let mut free = self.budget.available_permits() as u64;
        for (_, holder) in stalled {
            if free >= want {
                break;
            }
            holder
                .evicted
                .store(true, std::sync::atomic::Ordering::Relaxed);
            holder.yield_now.notify_one();
            free += holder.bytes;
        }
    }

    fn register(&self, holder: &Arc<Holder>) {
        unpoisoned(&self.holders).push(Arc::clone(holder));
    }

    fn deregister(&self, holder: &Arc<Holder>) {
        unpoisoned(&self.holders).retain(|h| !Arc::ptr_eq(h, holder));
    }

    /// Room for `want` bytes within the body timeout, asking stalled
    /// bodies to yield theirs.
    async fn room(&self, want: u32) -> Option<OwnedSemaphorePermit> {
        let end = tokio::time::Instant::now() + self.limits.body_timeout;
        loop {
            if let Ok(permit) = Arc::clone(&self.budget).try_acquire_many_owned(want) {
                return Some(permit);
            }
            self.evict_stalled(u64::from(want));
            let step = end
                .saturating_duration_since(tokio::time::Instant::now())
                .min(Duration::from_millis(200));
            if step.is_zero() {
                return None;
            }
            let acquire = Arc::clone(&self.budget).acquire_many_owned(want);
            if let Ok(Ok(permit)) = tokio::time::timeout(step, acquire).await {
                return Some(permit);
            }
        }
    }
}

/// A refusal by this module: a status, a stable code, a message.
struct Refusal(StatusCode, &'static str, String);

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let mut response = error_response(self.0, self.1, &self.2);
        response.extensions_mut().insert(Outcome {
            why: Some(self.2),
            ..Outcome::default()
        });
        if matches!(self.0, StatusCode::REQUEST_TIMEOUT) {
            // The rest of the body is unread: close rather than drain it.
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

fn error_response(status: StatusCode, code: &str, message: &str) -> Response {
    let body = json!({ "error": code, "message": message });
    (status, axum::Json(body)).into_response()
}

/// What a request's headers say about its body, checked before any of it
/// is read: `Ok(len)` to read `len` bytes, or the refusal.
fn check_body_headers(method: &Method, path: &str, headers: &HeaderMap) -> Result<u64, Refusal> {
    let length = match headers.get(header::CONTENT_LENGTH) {
        // hyper has already refused a malformed or duplicated Content-Length.
        Some(value) => value
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .ok_or_else(|| {
                Refusal(
                    StatusCode::BAD_REQUEST,
                    "malformed",
                    "Content-Length is not a number".into(),
                )
            })?,
        None if headers.contains_key(header::TRANSFER_ENCODING) => {
            return Err(Refusal(
                StatusCode::LENGTH_REQUIRED,
                "length_required",
                "send the body with a Content-Length (chunked uploads are not accepted)".into(),
            ));
        }
        None => 0,
    };
    if path == REPORT_PATH && length > 0 {
        // A report is its signed query: nothing to read.
        return Err(Refusal(
            StatusCode::BAD_REQUEST,
            "malformed",
            "a report is its signed query; send no body".into(),
        ));
    }
    if path.starts_with(PHONE_PATHS) && length > PHONE_MAX_BODY as u64 {
        return Err(Refusal(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!(
                "a phone's request is at most {PHONE_MAX_BODY} bytes; this one declares {length}"
            ),
        ));
    }
    if length > MAX_BODY as u64 {
        return Err(Refusal(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("a body is at most {MAX_BODY} bytes; this one declares {length}"),
        ));
    }
    if method == Method::POST {
        let essence = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(str::trim);
        if !essence.is_some_and(|t| t.eq_ignore_ascii_case("application/octet-stream")) {
            return Err(Refusal(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                format!(
                    "send the body as Content-Type: application/octet-stream, not {}",
                    essence.unwrap_or("none")
                ),
            ));
        }
    }
    Ok(length)
}

/// Checks a request's body headers before the body is polled (so a refused
/// `Expect: 100-continue` upload never gets `100 Continue`), then reads the
/// body under the body budget and timeouts and hands the handler the
/// bytes; the budget is held until the handler has answered.
async fn admit_body(State(guard): State<Arc<BodyGuard>>, request: Request, next: Next) -> Response {
    let (parts, body) = request.into_parts();
    let length = match check_body_headers(&parts.method, parts.uri.path(), &parts.headers) {
        Ok(length) => length,
        Err(refusal) => return refusal.into_response(),
    };
    if length == 0 {
        return next.run(Request::from_parts(parts, Body::empty())).await;
    }
    match read_body(&guard, body, length).await {
        Ok((bytes, permit)) => {
            let response = next
                .run(Request::from_parts(parts, Body::from(bytes)))
                .await;
            drop(permit);
            response
        }
        Err(refusal) => refusal.into_response(),
    }
}

/// Reads exactly `length` declared bytes of `body` within the limits.
async fn read_body(
    guard: &BodyGuard,
    body: Body,
    length: u64,
) -> Result<(Bytes, OwnedSemaphorePermit), Refusal> {
    let limits = guard.limits;
    // `length` <= MAX_BODY (checked), which fits a u32 and the budget.
    let want = u32::try_from(length).unwrap_or(u32::MAX);
    let permit = guard.room(want).await.ok_or_else(|| {
        Refusal(
            StatusCode::SERVICE_UNAVAILABLE,
            "hub_unavailable",
            "the hub is receiving too many uploads at once; try again shortly".into(),
        )
    })?;
    let holder = Arc::new(Holder {
        bytes: length,
        last: std::sync::Mutex::new(Instant::now()),
        evicted: std::sync::atomic::AtomicBool::new(false),
        yield_now: tokio::sync::Notify::new(),
    });
    guard.register(&holder);
    let read = read_held(&limits, &holder, body, length).await;
    guard.deregister(&holder);
    read.map(|bytes| (bytes, permit))
}

/// The body loop of [`read_body`], under `holder`'s share of the budget.
async fn read_held(
    limits: &Limits,
    holder: &Holder,
    body: Body,
    length: u64,
) -> Result<Bytes, Refusal> {
    let deadline = tokio::time::Instant::now() + limits.body_deadline(length);
    let mut out = Vec::with_capacity(usize::try_from(length).unwrap_or(0));
    let mut body = std::pin::pin!(body);
    loop {
        let stall = tokio::time::Instant::now() + limits.body_timeout;
        let next = tokio::time::timeout_at(
            stall.min(deadline),
            std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)),
        );
        let frame = tokio::select! {
            frame = next => frame,
            () = holder.yield_now.notified() => {
                return Err(Refusal(
                    StatusCode::REQUEST_TIMEOUT,
                    "timeout",
                    format!(
                        "the body stalled ({} of {length} bytes arrived) while other uploads \
                         waited for room",
                        out.len()
                    ),
                ));
            }
        };
        let frame = frame.map_err(|_| {
            Refusal(
                StatusCode::REQUEST_TIMEOUT,
                "timeout",
                format!(
                    "the body stopped or came slower than {} bytes/s: {} of {length} bytes \
                     arrived",
                    limits.min_body_rate,
                    out.len()
                ),
            )
        })?;
        match frame {
            None => break,
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    if out.len() + data.len() > MAX_BODY {
                        return Err(Refusal(
                            StatusCode::PAYLOAD_TOO_LARGE,
                            "too_large",
                            format!("a body is at most {MAX_BODY} bytes"),
                        ));
                    }
                    out.extend_from_slice(&data);
                    *unpoisoned(&holder.last) = Instant::now();
                }
            }
            Some(Err(e)) => {
                return Err(Refusal(
                    StatusCode::BAD_REQUEST,
                    "malformed",
                    format!("the body could not be read: {e}"),
                ));
            }
        }
    }
    Ok(Bytes::from(out))
}

/// The stable code of an error status that came without one (a rejection
/// by axum or hyper's protocol layer).
fn code_for(status: StatusCode) -> &'static str {
    match status {
        StatusCode::BAD_REQUEST => "malformed",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::REQUEST_TIMEOUT => "timeout",
        StatusCode::LENGTH_REQUIRED => "length_required",
        StatusCode::PAYLOAD_TOO_LARGE => "too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::SERVICE_UNAVAILABLE => "hub_unavailable",
        s if s.is_server_error() => "internal",
        _ => "http_error",
    }
}

/// Turns every error answer that is not JSON yet (axum's query and body
/// rejections are plain text, its 405 is empty) into `{"error", "message"}`,
/// keeping the status and headers such as `Allow`.
async fn json_errors(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 4096)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
        .unwrap_or_default();
    let message = match (status, parts.headers.get(header::ALLOW)) {
        (StatusCode::METHOD_NOT_ALLOWED, Some(allow)) => format!(
            "method not allowed here; allowed: {}",
            allow.to_str().unwrap_or("?")
        ),
        _ if text.is_empty() => status.canonical_reason().unwrap_or("error").to_owned(),
        _ => text,
    };
    parts.headers.remove(header::CONTENT_LENGTH);
    if parts.extensions.get::<Outcome>().is_none() {
        parts.extensions.insert(Outcome {
            why: Some(message.clone()),
            ..Outcome::default()
        });
    }
    let fresh = error_response(status, code_for(status), &message);
    let (fresh_parts, body) = fresh.into_parts();
    parts.headers.extend(fresh_parts.headers);
    Response::from_parts(parts, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.insert(*k, HeaderValue::from_static(v));
        }
        map
    }

    #[test]
    fn issue13_01_declared_length_over_the_limit_is_refused_before_reading() {
        let declared = headers(&[
            ("content-length", "104857600"),
            ("content-type", "application/octet-stream"),
        ]);
        let refusal = check_body_headers(&Method::POST, "/v1/batches", &declared).err();
        assert!(matches!(
            refusal,
            Some(Refusal(StatusCode::PAYLOAD_TOO_LARGE, "too_large", _))
        ));
    }

    #[test]
    fn issue13_01_chunked_upload_without_length_is_refused_411() {
        let chunked = headers(&[
            ("transfer-encoding", "chunked"),
            ("content-type", "application/octet-stream"),
        ]);
        assert!(matches!(
            check_body_headers(&Method::POST, "/v1/batches", &chunked),
            Err(Refusal(StatusCode::LENGTH_REQUIRED, "length_required", _))
        ));
    }

    #[test]
    fn issue13_13_upload_content_type_must_be_octet_stream() {
        for (value, ok) in [
            ("application/octet-stream", true),
            ("Application/Octet-Stream; charset=binary", true),
            ("application/json", false),
            ("text/plain", false),
        ] {
            let mut h = headers(&[("content-length", "10")]);
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static(value));
            assert_eq!(
                check_body_headers(&Method::POST, "/v1/batches", &h).is_ok(),
                ok,
                "{value}"
            );
        }
        let missing = headers(&[("content-length", "10")]);
        assert!(matches!(
            check_body_headers(&Method::POST, "/v1/batches", &missing),
            Err(Refusal(StatusCode::UNSUPPORTED_MEDIA_TYPE, _, _))
        ));
        // Reads carry no body and need no content type.
        assert_eq!(
            check_body_headers(&Method::GET, "/v1/deny", &HeaderMap::new()).ok(),
            Some(0)
        );
    }

    #[test]
    fn issue13_01_connection_cap_leaves_descriptors_for_the_hub() {
        assert_eq!(connection_cap(1024, Some(256)), 192);
        assert_eq!(connection_cap(1024, Some(1 << 20)), 1024);
        assert_eq!(connection_cap(1024, Some(10)), 1);
        assert_eq!(connection_cap(100, None), 100);
    }

    #[test]
    fn issue13_01_slow_body_deadline_grows_with_its_length() {
        let limits = Limits::default();
        assert_eq!(limits.body_deadline(0), BODY_TIMEOUT);
        assert_eq!(
            limits.body_deadline(MIN_BODY_RATE * 30),
            BODY_TIMEOUT + Duration::from_secs(30)
        );
    }
}
