//! rqrr asserts on some degenerate inputs (a perspective that maps a point
//! past `i32`, found by fuzzing), so every call into it runs in
//! [`contained`]: a panic there reads as "no code" for that attempt. The
//! catch alone still leaves the process's panic hook printing a panic
//! message and backtrace note each time, and a phone held up showing such
//! a frame would write one per camera frame into a reader's log. A program
//! that runs the decoder calls [`quiet_contained_panics`] once: then the
//! first contained panic is reported in one line, later ones only counted
//! ([`contained_panics`], exported by the daemon as a metric), and every
//! other panic still reaches the hook that was there before.

use std::cell::Cell;
use std::panic::{self, AssertUnwindSafe, PanicHookInfo};
use std::sync::Once;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

thread_local! {
    /// Whether this thread is inside [`contained`].
    static CONTAINING: Cell<bool> = const { Cell::new(false) };
}

/// Panics caught by [`contained`] since the process started.
static CONTAINED: AtomicU64 = AtomicU64::new(0);

/// Whether the quiet hook has reported its first contained panic.
static REPORTED: AtomicBool = AtomicBool::new(false);

/// Runs `f` (a call into rqrr); a panic inside it is caught, counted and
/// returned as `None`.
pub(crate) fn contained<T>(f: impl FnOnce() -> T) -> Option<T> {
    let outer = CONTAINING.replace(true);
    let result = panic::catch_unwind(AssertUnwindSafe(f));
    CONTAINING.set(outer);
    if result.is_err() {
        CONTAINED.fetch_add(1, Ordering::Relaxed);
    }
    result.ok()
}

/// How many panics inside the QR library the decoder has caught since the
/// process started (each one an attempt that read as no code).
pub fn contained_panics() -> u64 {
    CONTAINED.load(Ordering::Relaxed)
}

/// Installs, once per process, a panic hook in front of the current one:
/// a panic the decoder contains is reported on standard error the first
/// time (one line: where and why, and that it was caught) and silently
/// counted after that; any other panic goes to the previous hook as before.
pub fn quiet_contained_panics() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if !CONTAINING.get() {
                previous(info);
            } else if !REPORTED.swap(true, Ordering::Relaxed) {
                eprintln!("{}", first_report(info));
            }
        }));
    });
}

/// The one line said about the first contained panic.
fn first_report(info: &PanicHookInfo<'_>) -> String {
    let at = info
        .location()
        .map_or_else(|| "an unknown place".to_string(), ToString::to_string);
    let message = info.payload_as_str().unwrap_or("(no message)");
    format!(
        "sonotap-qr: a call into rqrr panicked at {at}: {message}; caught, that attempt on the frame read as no code (later ones are counted, not printed)"
    )
}
