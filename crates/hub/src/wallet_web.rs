//! The rider's web wallet (`wallet-web/`), built into the binary and served
//! at `/wallet/` by `hub serve`, so that the operator's one command serves
//! the phones too. Files are served as they are, with the headers an
//! installable, offline web app needs (docs/sync.md §2.4): a content
//! security policy that allows nothing but this origin, `no-cache` with an
//! ETag (the service worker keeps the copy a phone uses offline), and the
//! worker script ending with a line naming a hash of every file, so that any
//! new build installs a new worker with a cache of its own.

use std::sync::OnceLock;

use axum::http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, ETAG, IF_NONE_MATCH, LOCATION,
    REFERRER_POLICY, X_CONTENT_TYPE_OPTIONS,
};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

/// Where the wallet is served.
pub const PREFIX: &str = "/wallet/";

/// What a page of the wallet may load and reach: its own files and the
/// hub's API, nothing else; no inline script or style, no framing.
pub const CONTENT_SECURITY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self'; connect-src 'self'; manifest-src 'self'; worker-src 'self'; \
     base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// A file of the wallet.
pub struct Asset {
    /// Its path under [`PREFIX`].
    pub path: &'static str,
    /// Its `Content-Type`.
    pub kind: &'static str,
    body: &'static [u8],
}

macro_rules! asset {
    ($path:literal, $kind:expr) => {
        Asset {
            path: $path,
            kind: $kind,
            body: include_bytes!(concat!("../../../wallet-web/", $path)),
        }
    };
}

const JS: &str = "text/javascript; charset=utf-8";

/// Every file the wallet is made of (`sw.js` caches the same list; a test
/// checks both against the folder).
pub static ASSETS: &[Asset] = &[
    asset!("index.html", "text/html; charset=utf-8"),
    asset!("app.js", JS),
    asset!("store.js", JS),
    asset!("qr.js", JS),
    asset!("sw.js", JS),
    asset!("style.css", "text/css; charset=utf-8"),
    asset!("manifest.webmanifest", "application/manifest+json"),
    asset!("icon.svg", "image/svg+xml"),
    asset!("vendor/qrcode-generator.mjs", JS),
    asset!("sonotap/index.js", JS),
    asset!("sonotap/bytes.js", JS),
    asset!("sonotap/crypto.js", JS),
    asset!("sonotap/ids.js", JS),
    asset!("sonotap/credential.js", JS),
    asset!("sonotap/token.js", JS),
    asset!("sonotap/account.js", JS),
    asset!("sonotap/modem.js", JS),
    asset!("sonotap/dsp.js", JS),
    asset!("sonotap/beacon.js", JS),
    asset!("sonotap/currency.js", JS),
    asset!("listen.js", JS),
];

impl Asset {
    /// Its size in bytes, as stored (the worker gets a build line more).
    pub fn len(&self) -> usize {
        self.body.len()
    }

    /// Whether it is empty (none is).
    pub fn is_empty(&self) -> bool {
        self.body.is_empty()
    }
}

/// SHA-256 over every file, in [`ASSETS`] order: the build the worker names.
fn build() -> &'static str {
    static BUILD: OnceLock<String> = OnceLock::new();
    BUILD.get_or_init(|| {
        let mut h = Sha256::new();
        for a in ASSETS {
            h.update(a.path.as_bytes());
            h.update((a.body.len() as u64).to_be_bytes());
            h.update(a.body);
        }
        hex::encode(&h.finalize()[..16])
    })
}

/// The body of [`ASSETS`]`[at]` as served (the worker gets the line naming
/// the build), and its ETag: made once, for every request after.
fn served(at: usize) -> &'static (Vec<u8>, String) {
    static SERVED: OnceLock<Vec<(Vec<u8>, String)>> = OnceLock::new();
    let all = SERVED.get_or_init(|| {
        ASSETS
            .iter()
            .map(|a| {
                let mut body = a.body.to_vec();
                if a.path == "sw.js" {
                    body.extend_from_slice(
                        format!("self.sonotapBuild = \"{}\";\n", build()).as_bytes(),
                    );
                }
                let tag = format!("\"{}\"", hex::encode(&Sha256::digest(&body)[..12]));
                (body, tag)
            })
            .collect()
    });
    &all[at]
}

/// `GET /wallet`: to the folder, where the page's relative links work.
pub async fn to_folder() -> Response {
    (StatusCode::PERMANENT_REDIRECT, [(LOCATION, PREFIX)]).into_response()
}

/// `GET /wallet/…`: one of [`ASSETS`] (the folder itself is
/// `index.html`), or `None` for the API's not-found answer.
pub fn serve(uri: &Uri, headers: &HeaderMap) -> Option<Response> {
    let path = uri.path().strip_prefix(PREFIX)?;
    let path = if path.is_empty() { "index.html" } else { path };
    let at = ASSETS.iter().position(|a| a.path == path)?;
    let (asset, (body, tag)) = (&ASSETS[at], served(at));
    let fixed = [
        (CACHE_CONTROL, "no-cache"),
        (CONTENT_SECURITY_POLICY, CONTENT_SECURITY),
        (X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (REFERRER_POLICY, "no-referrer"),
    ];
    let mut response = match headers.get(IF_NONE_MATCH).map(HeaderValue::as_bytes) {
        Some(seen) if seen == tag.as_bytes() => StatusCode::NOT_MODIFIED.into_response(),
        _ => ([(CONTENT_TYPE, asset.kind)], body.clone()).into_response(),
    };
    let out = response.headers_mut();
    for (name, value) in fixed {
        out.insert(name, HeaderValue::from_static(value));
    }
    out.insert(
        HeaderName::from_static("cross-origin-opener-policy"),
        HeaderValue::from_static("same-origin"),
    );
    out.insert(
        HeaderName::from_static("permissions-policy"),
        HeaderValue::from_static("camera=(), geolocation=(), microphone=(self), payment=()"),
    );
    if let Ok(tag) = HeaderValue::from_str(tag) {
        out.insert(ETAG, tag);
    }
    Some(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The folder's files that make the app (not its tests, notes or npm
    /// set-up), relative to it.
    fn app_files() -> Vec<String> {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../wallet-web");
        let mut out = Vec::new();
        let mut stack = vec![root.clone()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).expect("wallet-web") {
                let path = entry.expect("an entry").path();
                let rel = path
                    .strip_prefix(&root)
                    .expect("inside")
                    .to_string_lossy()
                    .into_owned();
                if ["test", "node_modules"].contains(&rel.as_str()) {
                    continue;
                }
                if path.is_dir() {
                    stack.push(path);
                } else if !rel.ends_with(".md")
                    && !rel.ends_with("package.json")
                    && !rel.ends_with("package-lock.json")
                {
                    out.push(rel);
                }
            }
        }
        out.sort();
        out
    }

    #[test]
    fn every_file_of_the_wallet_is_served_and_cached_by_its_worker() {
        let mut paths: Vec<String> = ASSETS.iter().map(|a| a.path.to_owned()).collect();
        paths.sort();
        assert_eq!(paths, app_files(), "ASSETS is wallet-web/'s app files");
        let worker = ASSETS
            .iter()
            .position(|a| a.path == "sw.js")
            .expect("sw.js");
        let worker = String::from_utf8(served(worker).0.clone()).expect("UTF-8");
        let mut cached: Vec<String> = worker
            .lines()
            .filter_map(|l| {
                l.trim()
                    .strip_prefix('"')?
                    .strip_suffix("\",")
                    .map(str::to_owned)
            })
            .filter(|f| f != "./")
            .collect();
        cached.push("sw.js".into());
        cached.sort();
        assert_eq!(cached, paths, "sw.js caches every file but itself");
        assert!(worker.ends_with(&format!("self.sonotapBuild = \"{}\";\n", build())));
    }
}
