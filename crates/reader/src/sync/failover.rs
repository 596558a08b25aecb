//! Which hub a request goes to, and when it moves on to another: pure
//! logic, no I/O (the requests themselves are the caller's closure).
//!
//! A reader may name several hub processes (sharing one database) in
//! preference order. A request goes first to the hub in use (the one that
//! last answered; the first named until then). If it fails in a way another
//! hub might not (no connection, a timeout, 5xx, 408, 429, an answer that
//! cannot be trusted) it is sent at once to the next hub, the others in
//! preference order, each at most once per request. A permanent refusal
//! (another 4xx, [`SyncError::is_permanent`]) is returned as it is: the hubs
//! share one database, so another would refuse it too. Neither is a local
//! failure (the reader's database, its key) worth another hub.
//!
//! Resending elsewhere is safe: every request is a read except an upload,
//! and the hub stores a batch idempotently (a batch it already has, whole
//! or in part, is acknowledged again and counted once), so a batch whose
//! first hub stored it and then died before answering is counted once.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use thiserror::Error;

use super::client::SyncError;

/// The most hubs a reader may name: more would make one failing request
/// wait for that many timeouts.
pub const MAX_HUBS: usize = 16;

/// Hub base URLs, checked: 1 to [`MAX_HUBS`], each `http://` or
/// `https://` with a host, no two the same, in preference order, without
/// a trailing `/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubUrls(Vec<String>);

/// Why a list of hub URLs was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum HubUrlsError {
    /// No URL at all.
    #[error("names no hub (give at least one URL)")]
    Empty,
    /// More than [`MAX_HUBS`].
    #[error("names {count} hubs; at most {MAX_HUBS}")]
    TooMany {
        /// How many were given.
        count: usize,
    },
    /// Not a URL the client can use.
    #[error("{url:?} is not an http:// or https:// URL with a host")]
    NotHttp {
        /// Its place in the list, from 0.
        index: usize,
        /// The URL as given.
        url: String,
    },
    /// The same hub twice (a trailing `/` aside).
    #[error("{url:?} is named twice")]
    Duplicate {
        /// The second one's place in the list, from 0.
        index: usize,
        /// The URL as given.
        url: String,
    },
}

impl HubUrlsError {
    /// The place in the list of the URL refused, if one is.
    pub fn index(&self) -> Option<usize> {
        match self {
            HubUrlsError::Empty | HubUrlsError::TooMany { .. } => None,
            HubUrlsError::NotHttp { index, .. } | HubUrlsError::Duplicate { index, .. } => {
                Some(*index)
            }
        }
    }
}

impl HubUrls {
    /// Checks `urls` (preference order).
    pub fn check<S: AsRef<str>>(urls: &[S]) -> Result<Self, HubUrlsError> {
        if urls.is_empty() {
            return Err(HubUrlsError::Empty);
        }
        if urls.len() > MAX_HUBS {
            return Err(HubUrlsError::TooMany { count: urls.len() });
        }
        let mut checked: Vec<String> = Vec::with_capacity(urls.len());
        for (index, url) in urls.iter().map(AsRef::as_ref).enumerate() {
            let usable = url.parse::<ureq::http::Uri>().is_ok_and(|uri| {
                matches!(uri.scheme_str(), Some("http" | "https"))
                    && uri.host().is_some_and(|h| !h.is_empty())
            });
            if !usable {
                return Err(HubUrlsError::NotHttp {
                    index,
                    url: url.to_owned(),
                });
            }
            let base = url.trim_end_matches('/').to_owned();
            if checked.contains(&base) {
                return Err(HubUrlsError::Duplicate {
                    index,
                    url: url.to_owned(),
                });
            }
            checked.push(base);
        }
        Ok(Self(checked))
    }

    /// The URLs, in preference order.
    pub fn as_slice(&self) -> &[String] {
        &self.0
    }

    /// The preferred hub (the first named).
    pub fn first(&self) -> &str {
        self.0.first().map_or("", String::as_str)
    }
}

impl std::fmt::Display for HubUrls {
    /// The URLs separated by `, `.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.join(", "))
    }
}

/// Whether a request that failed with `error` at one hub is worth sending
/// to another: the hub could not be reached or did not answer in time, was
/// failing (5xx), busy (408, 429) or said something that cannot be
/// trusted. Not for a permanent refusal (the hubs share one database) nor
/// for the reader's own failures (its database, its CA file).
pub fn worth_another_hub(error: &SyncError) -> bool {
    match error {
        SyncError::Transport { .. } | SyncError::BadAnswer { .. } => true,
        SyncError::Refused { .. } => !error.is_permanent(),
        SyncError::NoHubAnswered { .. }
        | SyncError::Reader(_)
        | SyncError::Store(_)
        | SyncError::Ca { .. } => false,
    }
}

/// The hubs a request tries, in order: `in_use` first, then the others in
/// preference order; each once.
pub fn order(in_use: usize, count: usize) -> impl Iterator<Item = usize> {
    let first = in_use.min(count.saturating_sub(1));
    std::iter::once(first)
        .take(count.min(1))
        .chain((0..count).filter(move |&i| i != first))
}

/// Which hub is in use, shared by every thread of one client (the uploads
/// run on two), and how many times a request moved on to another.
#[derive(Debug)]
pub struct Failover {
    count: usize,
    in_use: AtomicUsize,
    failovers: AtomicU64,
}

impl Failover {
    /// For `count` hubs (at least 1), the first in use.
    pub fn new(count: usize) -> Self {
        Self {
            count: count.max(1),
            in_use: AtomicUsize::new(0),
            failovers: AtomicU64::new(0),
        }
    }

    /// The hub the next request tries first: the one that last answered.
    pub fn in_use(&self) -> usize {
        self.in_use.load(Ordering::Relaxed)
    }

    /// Times a request moved from one hub to another, since the start.
    pub fn failovers(&self) -> u64 {
        self.failovers.load(Ordering::Relaxed)
    }

    /// Runs `attempt` on hub after hub in [`order`] until one answers or a
    /// failure is not [`worth_another_hub`]; `moving(from, to, why)` is told
    /// before each move. The hub that answered becomes the one in use.
    /// When every hub failed, with one hub its error is returned as it is;
    /// with several, [`SyncError::NoHubAnswered`] holds each hub's.
    pub fn run<T>(
        &self,
        mut attempt: impl FnMut(usize) -> Result<T, SyncError>,
        mut moving: impl FnMut(usize, usize, &SyncError),
    ) -> Result<T, SyncError> {
        let mut failures: Vec<SyncError> = Vec::new();
        let mut last = None;
        for hub in order(self.in_use(), self.count) {
            if let (Some(from), Some(why)) = (last, failures.last()) {
                self.failovers.fetch_add(1, Ordering::Relaxed);
                moving(from, hub, why);
            }
            match attempt(hub) {
                Ok(answer) => {
                    self.in_use.store(hub, Ordering::Relaxed);
                    return Ok(answer);
                }
                Err(e) if worth_another_hub(&e) => failures.push(e),
                Err(e) => return Err(e),
            }
            last = Some(hub);
        }
        if failures.len() == 1
            && let Some(only) = failures.pop()
        {
            return Err(only);
        }
        Err(SyncError::NoHubAnswered { failures })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transport(hub: usize) -> SyncError {
        SyncError::Transport {
            url: format!("http://hub{hub}/v1/batches"),
            detail: "connection refused".into(),
        }
    }

    fn refused(hub: usize, status: u16) -> SyncError {
        SyncError::Refused {
            url: format!("http://hub{hub}/v1/batches"),
            status,
            code: "x".into(),
            message: "no".into(),
        }
    }

    fn bad_answer(hub: usize) -> SyncError {
        SyncError::BadAnswer {
            url: format!("http://hub{hub}/v1/batches"),
            detail: "ack does not verify".into(),
        }
    }

    /// What one request did: the hubs tried, the moves told (from, to), the result.
    type Request = (
        Vec<usize>,
        Vec<(usize, usize)>,
        Result<&'static str, SyncError>,
    );

    /// Runs one request on `f`, answering with each hub's `outcome`.
    fn request(
        f: &Failover,
        outcome: impl Fn(usize) -> Result<&'static str, SyncError>,
    ) -> Request {
        let mut tried = Vec::new();
        let mut moves = Vec::new();
        let result = f.run(
            |hub| {
                tried.push(hub);
                outcome(hub)
            },
            |from, to, _| moves.push((from, to)),
        );
        (tried, moves, result)
    }

    #[test]
    fn transport_errors_timeouts_5xx_408_429_and_untrusted_answers_try_another_hub() {
        for e in [
            transport(0),
            refused(0, 500),
            refused(0, 502),
            refused(0, 503),
            refused(0, 408),
            refused(0, 429),
            bad_answer(0),
        ] {
            assert!(worth_another_hub(&e), "{e}");
        }
    }

    #[test]
    fn a_permanent_refusal_or_a_local_failure_is_not_sent_to_another_hub() {
        for status in [400, 401, 403, 404, 409, 413, 422] {
            assert!(!worth_another_hub(&refused(0, status)), "{status}");
        }
        let local = SyncError::Ca {
            path: "ca.pem".into(),
            detail: "no certificate".into(),
        };
        assert!(!worth_another_hub(&local));
        let f = Failover::new(3);
        let (tried, moves, result) = request(&f, |hub| match hub {
            0 => Err(transport(0)),
            _ => Err(refused(hub, 409)),
        });
        assert_eq!(tried, [0, 1], "hub 2 would refuse it too");
        assert_eq!(moves, [(0, 1)]);
        let e = result.unwrap_err();
        assert!(e.is_permanent(), "the refusal itself is returned: {e}");
        assert_eq!(f.in_use(), 0, "no hub answered");
    }

    #[test]
    fn the_order_is_the_hub_in_use_then_the_others_in_preference_order_each_once() {
        let all = |in_use, count| order(in_use, count).collect::<Vec<_>>();
        assert_eq!(all(0, 3), [0, 1, 2]);
        assert_eq!(all(1, 3), [1, 0, 2]);
        assert_eq!(all(2, 3), [2, 0, 1]);
        assert_eq!(all(0, 1), [0]);
        assert_eq!(all(7, 2), [1, 0], "an index past the end is the last hub");
        assert_eq!(all(0, 0), Vec::<usize>::new());
    }

    #[test]
    fn the_first_hub_is_preferred_and_a_failing_one_is_passed_over_at_once() {
        let f = Failover::new(3);
        let (tried, moves, result) = request(&f, |_| Ok("ok"));
        assert_eq!((tried, moves, result.unwrap()), (vec![0], vec![], "ok"));

        let (tried, moves, result) = request(&f, |hub| match hub {
            0 => Err(transport(0)),
            1 => Err(refused(1, 503)),
            _ => Ok("from 2"),
        });
        assert_eq!(tried, [0, 1, 2]);
        assert_eq!(moves, [(0, 1), (1, 2)]);
        assert_eq!(result.unwrap(), "from 2");
        assert_eq!(f.failovers(), 2);
    }

    #[test]
    fn the_client_sticks_with_the_hub_that_last_answered() {
        let f = Failover::new(3);
        let (_, _, result) = request(&f, |hub| if hub == 0 { Err(transport(0)) } else { Ok("b") });
        assert_eq!(result.unwrap(), "b");
        assert_eq!(f.in_use(), 1);
        // The next request goes straight to hub 1, not back to the dead hub 0.
        let (tried, moves, _) = request(&f, |_| Ok("b"));
        assert_eq!((tried, moves), (vec![1], vec![]));
        // When hub 1 fails in turn, the preferred hub 0 comes before hub 2.
        let (tried, moves, result) = request(&f, |hub| {
            if hub == 1 {
                Err(bad_answer(1))
            } else {
                Ok("a")
            }
        });
        assert_eq!((tried, moves), (vec![1, 0], vec![(1, 0)]));
        assert_eq!(result.unwrap(), "a");
        assert_eq!(f.in_use(), 0);
    }

    #[test]
    fn when_every_hub_fails_the_error_names_each_hubs_failure() {
        let f = Failover::new(2);
        let (tried, _, result) = request(&f, |hub| {
            if hub == 0 {
                Err(transport(0))
            } else {
                Err(refused(1, 502))
            }
        });
        assert_eq!(tried, [0, 1], "each hub once");
        let e = result.unwrap_err();
        assert!(!e.is_permanent() && !worth_another_hub(&e));
        let text = e.to_string();
        for part in [
            "no hub answered (2 tried)",
            "http://hub0/v1/batches: connection refused",
            "http://hub1/v1/batches answered 502",
        ] {
            assert!(text.contains(part), "{part} in {text}");
        }
        assert_eq!(f.in_use(), 0, "nothing answered, nothing moves");
    }

    #[test]
    fn with_one_hub_its_error_is_returned_as_it_is() {
        let f = Failover::new(1);
        let (tried, moves, result) = request(&f, |_| Err(transport(0)));
        assert_eq!((tried, moves), (vec![0], vec![]));
        assert!(matches!(result, Err(SyncError::Transport { .. })));
        assert_eq!(f.failovers(), 0);
    }

    #[test]
    fn hub_lists_are_checked_by_place() {
        let ok = HubUrls::check(&["https://a:8443/", "http://b/sub"]).unwrap();
        assert_eq!(ok.as_slice(), ["https://a:8443", "http://b/sub"]);
        assert_eq!(ok.first(), "https://a:8443");
        assert_eq!(
            HubUrls::check::<&str>(&[]).unwrap_err(),
            HubUrlsError::Empty
        );
        let many: Vec<String> = (0..=MAX_HUBS).map(|i| format!("http://h{i}")).collect();
        assert_eq!(
            HubUrls::check(&many).unwrap_err(),
            HubUrlsError::TooMany { count: 17 }
        );
        for (bad, at) in [
            (["http://a", "ftp://b"], 1),
            (["http://", "http://b"], 0),
            (["http://a", "a:8443"], 1),
            (["http://a", "http://a/"], 1),
        ] {
            let e = HubUrls::check(&bad).unwrap_err();
            assert_eq!(e.index(), Some(at), "{bad:?}: {e}");
        }
        let e = HubUrls::check(&["http://a", "http://a/"]).unwrap_err();
        assert_eq!(e.to_string(), "\"http://a/\" is named twice");
    }
}
