//! The quiet panic hook, in a process of its own (a panic hook is global):
//! a panic inside rqrr that the decoder catches is counted and never
//! reaches the hook that was there before; any other panic still does.

use std::panic;
use std::sync::Mutex;
use std::time::Duration;

use sonotap_qr::{DecodeOptions, Decoder, GreyFrame, contained_panics, quiet_contained_panics};

/// The panic messages the hook before ours received.
static SEEN: Mutex<Vec<String>> = Mutex::new(Vec::new());

#[test]
fn caught_rqrr_panics_are_counted_and_kept_from_the_previous_hook_others_are_not() {
    let default = panic::take_hook();
    panic::set_hook(Box::new(move |info| {
        let message = info.payload_as_str().unwrap_or("?").to_string();
        SEEN.lock().unwrap().push(message);
        default(info);
    }));
    quiet_contained_panics();
    quiet_contained_panics(); // a second call installs nothing more

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
    for round in 1..=3 {
        assert!(decoder.decode(frame).is_empty());
        assert!(
            contained_panics() >= round,
            "rqrr panics on this frame and the decoder catches it"
        );
    }
    let seen = SEEN.lock().unwrap().clone();
    assert!(seen.is_empty(), "the previous hook saw {seen:?}");

    // A panic outside the decoder still reaches the previous hook.
    let caught = contained_panics();
    assert!(panic::catch_unwind(|| panic!("outside the decoder")).is_err());
    let seen = SEEN.lock().unwrap().clone();
    assert_eq!(seen, ["outside the decoder"]);
    assert_eq!(contained_panics(), caught, "not counted as contained");
}
