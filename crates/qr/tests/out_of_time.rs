//! An attempt still inside rqrr a budget past the frame's is abandoned, in
//! a process of its own (the count is global): the frame fuzzing found on
//! which rqrr's alignment-pattern search spirals for over a second (CI's
//! bounded fuzz run timed out on it under the sanitizer) reads as no code
//! each time, each time cut short and counted, with no panic hook called
//! and nothing counted as a panic.

use std::panic;
use std::sync::Mutex;
use std::time::Duration;

use sonotap_qr::{DecodeOptions, Decoder, GreyFrame, attempts_out_of_time, contained_panics};

/// What reached the panic hook.
static HOOKED: Mutex<Vec<String>> = Mutex::new(Vec::new());

#[test]
fn rqrr_alignment_search_spirals() {
    panic::set_hook(Box::new(|info| {
        let message = info.payload_as_str().unwrap_or("?").to_string();
        HOOKED.lock().unwrap().push(message);
    }));
    let input = include_bytes!("../../../fuzz/regressions/qr/rqrr-alignment-search-spirals");
    let [w, h, pixels @ ..] = &input[..] else {
        panic!("the regression input holds a frame");
    };
    let (w, h) = (usize::from(*w), usize::from(*h));
    let frame = GreyFrame::new(w, h, &pixels[..w * h]).unwrap();
    // 100 ms a frame: the attempt that spirals starts well within it on a
    // busy machine too, and is abandoned at 200 ms, long before rqrr's
    // search would end.
    let decoder = Decoder::new(DecodeOptions {
        budget: Duration::from_millis(100),
        ..DecodeOptions::default()
    });
    for _ in 0..3 {
        let before = attempts_out_of_time();
        assert!(decoder.decode(frame).is_empty());
        assert!(
            attempts_out_of_time() > before,
            "rqrr spirals on this frame every time and the decoder cuts it short"
        );
    }
    assert_eq!(contained_panics(), 0, "a cut is no panic");
    let _ = panic::take_hook();
    let hooked = HOOKED.lock().unwrap().clone();
    assert!(hooked.is_empty(), "the panic hook saw {hooked:?}");
}
