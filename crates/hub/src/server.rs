//! `sonotap hub serve`: the hub's HTTP API (documented in `docs/sync.md`).
//!
//! A thin axum layer over [`Hub`]: every request becomes one call into the
//! hub on a blocking thread (SQLite and signature checks are synchronous),
//! under one lock, so batches are stored one at a time in arrival order.
//! TLS (rustls) is required on any address but loopback.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::header::AUTHORIZATION;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::ledger::{IngestStatus, Via};
use super::listen::{self, Limits};
use super::{Hub, HubError};
use sonotap_protocol::api::{AUTH_SCHEME, DenyAnswer, KeysAnswer, TimeAnswer, UploadAnswer};

/// Largest accepted request body: a full batch is about 2.8 MB.
pub const MAX_BODY: usize = 4 << 20;
/// Most deny-list entries per response; readers ask again for the rest.
pub const DENY_PAGE: u32 = 1000;

/// Where and how to listen.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Address to bind (port 0 picks a free port).
    pub listen: SocketAddr,
    /// PEM certificate chain and private key; required unless `listen` is loopback.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Connection limits and timeouts.
    pub limits: Limits,
}

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

type Shared = Arc<Mutex<Hub>>;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// An error answer: a stable code, a message, and the HTTP status.
struct ApiError(StatusCode, &'static str, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({ "error": self.1, "message": self.2 });
        if self.0 == StatusCode::UNAUTHORIZED {
            // HTTP requires a 401 to name the scheme that would be accepted.
            let challenge = [(axum::http::header::WWW_AUTHENTICATE, AUTH_SCHEME)];
            return (self.0, challenge, axum::Json(body)).into_response();
        }
        (self.0, axum::Json(body)).into_response()
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
        match &e {
            HubError::Wire(_) => ApiError(StatusCode::BAD_REQUEST, "malformed", e.to_string()),
            HubError::UnknownReader { .. } | HubError::Refused(_) => {
                log_refusal(&format!("upload refused: {e}"));
                ApiError(StatusCode::FORBIDDEN, "refused", REFUSED_MESSAGE.into())
            }
            HubError::NotAuthenticated { .. } => {
                log_refusal(&e.to_string());
                ApiError(
                    StatusCode::UNAUTHORIZED,
                    "unauthenticated",
                    UNAUTHENTICATED_MESSAGE.into(),
                )
            }
            HubError::Conflict { .. } => ApiError(StatusCode::CONFLICT, "conflict", e.to_string()),
            _ => ApiError(
                StatusCode::SERVICE_UNAVAILABLE,
                "hub_unavailable",
                e.to_string(),
            ),
        }
    }
}

/// The hub's own record of a refusal, with the reason the answer leaves out.
fn log_refusal(message: &str) {
    eprintln!("sonotap hub: {message}");
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

async fn with_hub<T: Send + 'static>(
    hub: Shared,
    f: impl FnOnce(&mut Hub) -> Result<T, HubError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(move || {
        let mut guard = hub
            .lock()
            .map_err(|_| HubError::Backend("an earlier request panicked".into()))?;
        f(&mut guard)
    })
    .await
    .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
    .map_err(ApiError::from)
}

async fn upload(
    State(hub): State<Shared>,
    body: Bytes,
) -> Result<axum::Json<UploadAnswer>, ApiError> {
    let admitted = with_hub(Arc::clone(&hub), move |hub| hub.admit(&body)).await?;
    // Signature checks run outside the hub's lock, beside other uploads.
    let checked = tokio::task::spawn_blocking(move || admitted.check())
        .await
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
        .map_err(ApiError::from)?;
    let receipt = with_hub(hub, move |hub| hub.store(&checked, Via::Network, now_ms())).await?;
    let ack = receipt
        .ack
        .encode()
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    let status = match receipt.report.status {
        IngestStatus::Duplicate => "duplicate",
        _ => "stored",
    };
    Ok(axum::Json(UploadAnswer {
        status: status.into(),
        ack: hex::encode(ack),
        new_records: receipt.report.new_records,
        already_stored: receipt.report.already_stored,
        flagged: receipt.report.flagged,
    }))
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
) -> Result<axum::Json<DenyAnswer>, ApiError> {
    let auth = signed_request(&headers)?;
    let target = target(&uri);
    let (version, entries) = with_hub(hub, move |hub| {
        hub.authenticate(&auth, "GET", &target, now_ms())?;
        hub.deny_entries(q.since, DENY_PAGE)
    })
    .await?;
    let more = q.since + (entries.len() as u64) < version;
    Ok(axum::Json(DenyAnswer {
        version,
        entries: entries.into_iter().map(hex::encode).collect(),
        more,
    }))
}

async fn keys(
    State(hub): State<Shared>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<axum::Json<KeysAnswer>, ApiError> {
    let auth = signed_request(&headers)?;
    let target = target(&uri);
    let set = with_hub(hub, move |hub| {
        hub.authenticate(&auth, "GET", &target, now_ms())?;
        hub.key_set()
    })
    .await?;
    let bytes = set
        .encode()
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    Ok(axum::Json(KeysAnswer {
        version: set.version,
        key_set: hex::encode(bytes),
    }))
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
            ApiError(
                StatusCode::BAD_REQUEST,
                "malformed",
                "nonce must be 16 bytes, hex (32 digits)".into(),
            )
        })?;
    let statement = with_hub(hub, move |hub| Ok(hub.time_statement(nonce, now_ms()))).await?;
    Ok(axum::Json(TimeAnswer {
        unix_ms: statement.hub_time_ms,
        statement: Some(hex::encode(statement.encode())),
    }))
}

async fn not_found() -> ApiError {
    ApiError(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such endpoint; see docs/sync.md".into(),
    )
}

/// The API routes over a hub.
pub fn router(hub: Hub) -> Router {
    let shared: Shared = Arc::new(Mutex::new(hub));
    Router::new()
        .route("/v1/batches", post(upload))
        .route("/v1/deny", get(deny))
        .route("/v1/keys", get(keys))
        .route("/v1/time", get(time))
        .route(
            "/v1/health",
            get(|| async { axum::Json(json!({ "ok": true })) }),
        )
        .fallback(not_found)
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

/// Binds and returns the bound address and the server future, which runs
/// until `shutdown` completes (then lets requests in progress finish).
pub async fn bind(
    hub: Hub,
    options: ServeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(SocketAddr, impl Future<Output = Result<(), ServeError>>), ServeError> {
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
    let app = listen::layers(router(hub), options.limits);
    Ok((
        addr,
        listen::serve(listener, acceptor, app, options.limits, shutdown),
    ))
}
