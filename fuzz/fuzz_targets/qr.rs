//! The QR decoder on arbitrary bytes, both as an image file (PNG, JPEG:
//! the header checks) and as a raw grey frame whose size the first two
//! bytes give: codes or nothing, never a panic, within the gate's budget.
//!
//! rqrr asserts on some inputs (a degenerate perspective maps a point past
//! `i32`); the decoder contains its panics and reads "no code" there. The
//! fuzzer's panic hook aborts on every panic, caught or not, so the
//! decoder's quiet hook goes in front of it, reporting nothing: a panic
//! raised in rqrr inside the decoder's catch is let through to it, any
//! other (ours included, caught or not) still aborts.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sonotap_qr::source::load_image_bytes;
use sonotap_qr::{DecodeOptions, Decoder, GreyFrame, quiet_contained_panics};

fuzz_target!(
    init: quiet_contained_panics(|_| {}),
    |data: &[u8]| {
        let decoder = Decoder::new(DecodeOptions::default());
        if let Ok(image) = load_image_bytes(data, "fuzz") {
            let _ = decoder.decode(image.as_frame());
        }
        if let [w, h, pixels @ ..] = data {
            let (w, h) = (usize::from(*w).max(1), usize::from(*h).max(1));
            if let Some(frame) = pixels
                .get(..w * h)
                .and_then(|p| GreyFrame::new(w, h, p).ok())
            {
                let _ = decoder.decode(frame);
            }
        }
    }
);
