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
//!
//! The hook itself only notes the panic; the reporter runs after the catch,
//! outside the hook, where a failing logger cannot abort the process.
//!
//! rqrr cannot be stopped from outside either, and one of its loops has no
//! bound of its own, so the image it reads watches the time
//! (`pipeline::watched`) and, past the attempt's end, unwinds out of rqrr
//! with [`OutOfTime`]: [`contained`] catches that too (an attempt cut
//! short, [`attempts_out_of_time`]), without a hook or a report, since it
//! is no panic.

use std::cell::RefCell;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, Once, OnceLock};

thread_local! {
    /// Whether this thread is inside [`contained`], and what the quiet hook
    /// noted of a panic raised there in rqrr.
    static CONTAINMENT: RefCell<Containment> = const {
        RefCell::new(Containment { inside: false, noted: None })
    };
}

/// One thread's state between [`contained`] and the quiet hook.
struct Containment {
    inside: bool,
    noted: Option<ContainedPanic>,
}

/// Panics caught by [`contained`] since the process started.
static CONTAINED: AtomicU64 = AtomicU64::new(0);

/// Attempts [`contained`] cut short with [`OutOfTime`] since the process
/// started.
static OUT_OF_TIME: AtomicU64 = AtomicU64::new(0);

/// What unwinds out of rqrr when an attempt runs past its end (with
/// `resume_unwind`, which no panic hook sees): caught by [`contained`].
pub(crate) struct OutOfTime;

/// The reporter given to [`quiet_contained_panics`].
static REPORTER: OnceLock<fn(&ContainedPanic)> = OnceLock::new();

/// The places (`file:line:column`) already reported.
static REPORTED: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// How many distinct places are reported before the reporter hears no more
/// (a library that panicked at ever new places could not grow the list).
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
/// panic inside it is caught, counted and returned as `None`, and one the
/// quiet hook noted goes to the reporter if its place is new. An
/// [`OutOfTime`] unwinding out of it is counted apart and returns `None`.
pub(crate) fn contained<T>(f: impl FnOnce() -> T) -> Option<T> {
    let outer = CONTAINMENT.with_borrow_mut(|c| std::mem::replace(&mut c.inside, true));
    let result = panic::catch_unwind(AssertUnwindSafe(f));
    let noted = CONTAINMENT.with_borrow_mut(|c| {
        c.inside = outer;
        c.noted.take()
    });
    match &result {
        Ok(_) => {}
        Err(payload) if payload.is::<OutOfTime>() => {
            OUT_OF_TIME.fetch_add(1, Ordering::Relaxed);
        }
        Err(_) => {
            CONTAINED.fetch_add(1, Ordering::Relaxed);
        }
    }
    if let (Some(caught), Some(report)) = (noted, REPORTER.get())
        && REPORTED
            .lock()
            .is_ok_and(|mut places| first_time_at(&mut places, &caught.location))
    {
        report(&caught);
    }
    result.ok()
}

/// How many panics the decoder has caught around its calls into the QR
/// library since the process started (each an attempt that read as no
/// code; one frame can count several).
pub fn contained_panics() -> u64 {
    CONTAINED.load(Ordering::Relaxed)
}

/// How many attempts the decoder has cut short inside the QR library since
/// the process started: still running a budget past the frame's budget
/// (rqrr's alignment search on a degenerate perspective), each read as no
/// code. Frames that do this are odd or made to stall a reader.
pub fn attempts_out_of_time() -> u64 {
    OUT_OF_TIME.load(Ordering::Relaxed)
}

/// Installs, once per process, a panic hook in front of the current one:
/// a panic raised in rqrr's source inside the decoder's catch goes to
/// `report` the first time at each place (after the catch, not from the
/// hook) and is only counted after that; any other panic goes to the
/// previous hook as before. With `panic = "abort"` nothing is caught, so
/// every panic goes to the previous hook.
pub fn quiet_contained_panics(report: fn(&ContainedPanic)) {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let _ = REPORTER.set(report);
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            let location = info.location().map(ToString::to_string);
            let noted = CONTAINMENT.with(|c| {
                let Ok(mut c) = c.try_borrow_mut() else {
                    return false;
                };
                if !quiets(c.inside, location.as_deref()) {
                    return false;
                }
                c.noted = Some(ContainedPanic {
                    location: location.clone().unwrap_or_default(),
                    message: info.payload_as_str().unwrap_or("(no message)").to_string(),
                });
                true
            });
            if !noted {
                previous(info);
            }
        }));
    });
}

/// Whether the quiet hook keeps a panic at `location` to itself: raised in
/// rqrr's source while the thread is inside [`contained`] (and caught
/// there: a build that aborts on panic catches nothing).
fn quiets(inside: bool, location: Option<&str>) -> bool {
    cfg!(panic = "unwind") && inside && location.is_some_and(in_rqrr_source)
}

/// Whether `place` is not in `reported` yet (and is now), within
/// [`MAX_REPORTED`] places.
fn first_time_at(reported: &mut Vec<String>, place: &str) -> bool {
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

    const IN_RQRR: &str = "/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/rqrr-0.11.0/src/geometry.rs:56:9";
    const OURS: &str = "crates/qr/src/pipeline/detect.rs:50:9";

    #[test]
    fn rqrr_source_is_told_from_ours_by_its_path() {
        assert!(in_rqrr_source(IN_RQRR));
        assert!(in_rqrr_source("vendor/rqrr/src/geometry.rs:56:9"));
        assert!(in_rqrr_source(
            r"C:\cargo\registry\src\x\rqrr-0.11.0\src\lib.rs:1:1"
        ));
        assert!(!in_rqrr_source(OURS));
        assert!(!in_rqrr_source("crates/qr/src/rqrr_glue.rs:1:1"));
        assert!(!in_rqrr_source(
            "/home/rqrrfan/sonotap/crates/qr/src/sample.rs:1:1"
        ));
    }

    #[test]
    fn only_rqrrs_panics_inside_the_catch_are_kept_quiet() {
        assert!(quiets(true, Some(IN_RQRR)));
        assert!(
            !quiets(true, Some(OURS)),
            "our bug inside the catch is told"
        );
        assert!(!quiets(false, Some(IN_RQRR)), "outside the catch");
        assert!(!quiets(true, None));
    }

    #[test]
    fn each_place_is_reported_once_and_at_most_sixteen_places() {
        let mut reported = Vec::new();
        assert!(first_time_at(&mut reported, IN_RQRR));
        assert!(!first_time_at(&mut reported, IN_RQRR));
        for i in 1..MAX_REPORTED {
            assert!(first_time_at(
                &mut reported,
                &format!("rqrr-0.11.0/src/x.rs:{i}:1")
            ));
        }
        assert!(!first_time_at(&mut reported, "rqrr-0.11.0/src/x.rs:999:1"));
        assert_eq!(reported.len(), MAX_REPORTED);
    }
}
