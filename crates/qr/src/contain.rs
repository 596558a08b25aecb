//! rqrr asserts on some degenerate inputs (a perspective that maps a point
//! past `i32`, found by fuzzing), so every call into it runs in
//! [`contained`]: a panic there reads as "no code" for that attempt. The
//! catch alone still leaves the process's panic hook printing a panic
//! message and backtrace note each time, and a phone held up showing such
//! a frame would write one per attempt into a reader's log. A program that
//! runs the decoder calls [`quiet_contained_panics`] once: then a contained
//! panic raised in rqrr's source is handed to the program's reporter the
//! first time at each place and only counted after that
//! ([`contained_panics`], exported by the daemon as a metric). Every other
//! panic, one in our own code inside the catch included, still reaches the
//! hook that was there before (the fuzz target's aborts).

use std::cell::Cell;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, Once};

thread_local! {
    /// Whether this thread is inside [`contained`].
    static CONTAINING: Cell<bool> = const { Cell::new(false) };
}

/// Panics caught by [`contained`] since the process started.
static CONTAINED: AtomicU64 = AtomicU64::new(0);

/// The places (file:line) already reported: bounded, so a library that
/// panicked at ever new places could not grow it.
static REPORTED: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// How many distinct places are reported before the reporter hears no more.
const MAX_REPORTED: usize = 16;

/// A panic raised in rqrr and caught by the decoder, as its reporter gets it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainedPanic {
    /// Where in rqrr's source, `file:line:column`.
    pub location: String,
    /// The panic's message (an assertion's text).
    pub message: String,
}

/// Runs `f` (a call into rqrr and the pixel accessors it calls back); a
/// panic inside it is caught, counted and returned as `None`.
pub(crate) fn contained<T>(f: impl FnOnce() -> T) -> Option<T> {
    let outer = CONTAINING.replace(true);
    let result = panic::catch_unwind(AssertUnwindSafe(f));
    CONTAINING.set(outer);
    if result.is_err() {
        CONTAINED.fetch_add(1, Ordering::Relaxed);
    }
    result.ok()
}

/// How many panics the decoder has caught in its calls into the QR library
/// since the process started (each an attempt that read as no code; one
/// frame can count several).
pub fn contained_panics() -> u64 {
    CONTAINED.load(Ordering::Relaxed)
}

/// Installs, once per process, a panic hook in front of the current one:
/// a panic raised in rqrr's source inside the decoder's catch goes to
/// `report` the first time at each place and is only counted after that;
/// any other panic goes to the previous hook as before. With `panic =
/// "abort"` nothing is caught, so every panic goes to the previous hook.
pub fn quiet_contained_panics(report: fn(&ContainedPanic)) {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            let place = info.location().map(ToString::to_string);
            let quiet = cfg!(panic = "unwind")
                && CONTAINING.get()
                && place.as_deref().is_some_and(in_rqrr_source);
            match place {
                Some(location) if quiet => {
                    if first_time_at(&location) {
                        let message = info.payload_as_str().unwrap_or("(no message)");
                        report(&ContainedPanic {
                            location,
                            message: message.to_string(),
                        });
                    }
                }
                _ => previous(info),
            }
        }));
    });
}

/// Whether `place` is not reported yet (and is now), within [`MAX_REPORTED`].
fn first_time_at(place: &str) -> bool {
    let Ok(mut reported) = REPORTED.lock() else {
        return false;
    };
    if reported.len() >= MAX_REPORTED || reported.iter().any(|p| p == place) {
        return false;
    }
    reported.push(place.to_string());
    true
}

/// Whether a panic location is in rqrr's source: a path component `rqrr`
/// (vendored) or `rqrr-<version>` (the registry's folder).
fn in_rqrr_source(location: &str) -> bool {
    location
        .split(['/', '\\'])
        .any(|part| part == "rqrr" || part.starts_with("rqrr-"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rqrr_source_is_told_from_ours_by_its_path() {
        assert!(in_rqrr_source(
            "/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/rqrr-0.11.0/src/geometry.rs:56:9"
        ));
        assert!(in_rqrr_source("vendor/rqrr/src/geometry.rs:56:9"));
        assert!(in_rqrr_source(
            r"C:\cargo\registry\src\x\rqrr-0.11.0\src\lib.rs:1:1"
        ));
        assert!(!in_rqrr_source("crates/qr/src/pipeline/detect.rs:50:9"));
        assert!(!in_rqrr_source("crates/qr/src/rqrr_glue.rs:1:1"));
        assert!(!in_rqrr_source(
            "/home/rqrrfan/sonotap/crates/qr/src/sample.rs:1:1"
        ));
    }
}
