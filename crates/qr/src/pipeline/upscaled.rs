//! Stage `upscaled`: small frames at twice the size, for codes with
//! modules of 2–4 pixels.

use crate::prepare;

use super::detect::Attempt;
use super::{Flow, Placement, Work};

/// The attempts on a small frame upscaled twice.
const UPSCALED: [(&str, Attempt); 2] = [
    (
        "upscaled",
        Attempt::Adaptive {
            blur: 1,
            offset: 6,
            inverted: false,
        },
    ),
    (
        "upscaled-inverted",
        Attempt::Adaptive {
            blur: 1,
            offset: 6,
            inverted: true,
        },
    ),
];

pub(super) fn run(work: &mut Work<'_>) -> Flow {
    let max_side = work.options.max_side;
    let (whole, progress) = work.whole();
    // An attempt here works on four times the pixels of a whole-frame
    // one: it starts only if four of the longest steps so far still
    // fit (else a gate frame with no code overran its 25 ms budget by
    // half at 640×480, the look-ahead knowing only the shorter steps).
    let upscaled_fits = progress.clock.fits(progress.clock.longest() * 4);
    let small = whole.image.width().max(whole.image.height()) <= max_side / 2;
    if whole.at.scale > 1.0 || !small || !upscaled_fits {
        return Flow::Continue(());
    }
    let mut big = prepare::upscale2(&whole.image);
    prepare::contrast_stretch(&mut big, 1.0, 99.0);
    let at = Placement {
        scale: 0.5,
        dx: 0.0,
        dy: 0.0,
    };
    progress.try_each(&big, at, &UPSCALED)
}
