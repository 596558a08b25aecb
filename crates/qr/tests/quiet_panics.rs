//! The quiet panic hook, in a process of its own (a panic hook is global):
//! a panic inside rqrr that the decoder catches is counted, reported once
//! for its place and never reaches the hook that was there before; any
//! other panic still does.

use std::panic;
use std::sync::Mutex;
use std::time::Duration;

use sonotap_qr::{
    ContainedPanic, DecodeOptions, Decoder, GreyFrame, contained_panics, quiet_contained_panics,
};

/// The panic messages the hook before ours received.
static SEEN: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// What the quiet hook reported.
static REPORTS: Mutex<Vec<ContainedPanic>> = Mutex::new(Vec::new());

#[test]
fn issue21_caught_rqrr_panics_are_counted_reported_once_and_kept_from_the_previous_hook() {
    let default = panic::take_hook();
    panic::set_hook(Box::new(move |info| {
        let message = info.payload_as_str().unwrap_or("?").to_string();
        SEEN.lock().unwrap().push(message);
        default(info);
    }));
    quiet_contained_panics(|caught| REPORTS.lock().unwrap().push(caught.clone()));

    // The frame fuzzing found on which rqrr asserts (`Perspective::map`).
    let input = include_bytes!("../../../fuzz/regressions/qr/rqrr-perspective-maps-past-i32");
    let [w, h, pixels @ ..] = &input[..] else {
        panic!("the regression input holds a frame");
    };
    let (w, h) = (usize::from(*w), usize::from(*h));
    let frame = GreyFrame::new(w, h, &pixels[..w * h]).unwrap();
    let decoder = Decoder::new(DecodeOptions {
        budget: Duration::from_secs(600),
        ..DecodeOptions::default()
    });
    assert_eq!(contained_panics(), 0);
    for _ in 0..3 {
        let before = contained_panics();
        assert!(decoder.decode(frame).is_empty());
        assert!(
            contained_panics() > before,
            "rqrr panics on this frame every time and the decoder catches it"
        );
    }
    let seen = SEEN.lock().unwrap().clone();
    assert!(seen.is_empty(), "the previous hook saw {seen:?}");
    let reports = REPORTS.lock().unwrap().clone();
    assert_eq!(reports.len(), 1, "one place, reported once: {reports:?}");
    assert!(
        reports[0].location.contains("rqrr") && reports[0].message.contains("i32::MIN"),
        "{reports:?}"
    );

    // A panic outside the decoder still reaches the previous hook.
    let caught = contained_panics();
    assert!(panic::catch_unwind(|| panic!("outside the decoder")).is_err());
    let seen = SEEN.lock().unwrap().clone();
    assert_eq!(seen, ["outside the decoder"]);
    assert_eq!(contained_panics(), caught, "not counted as contained");
    assert_eq!(
        REPORTS.lock().unwrap().len(),
        1,
        "not reported as contained"
    );
}
