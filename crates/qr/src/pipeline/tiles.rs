//! Stage `tiles`: full-resolution tiles when the frame was shrunk
//! noticeably for the whole-frame stage: small codes whose modules the
//! downscale made too fine.

use crate::prepare;

use super::detect::Attempt;
use super::{Flow, Placement, Work};

/// The full-resolution tile attempts.
const TILE: [(&str, Attempt); 3] = [
    (
        "tile",
        Attempt::Adaptive {
            blur: 0,
            offset: 8,
            inverted: false,
        },
    ),
    (
        "tile-blurred",
        Attempt::Adaptive {
            blur: 1,
            offset: 4,
            inverted: false,
        },
    ),
    (
        "tile-inverted",
        Attempt::Adaptive {
            blur: 0,
            offset: 8,
            inverted: true,
        },
    ),
];

pub(super) fn run(work: &mut Work<'_>) -> Flow {
    let (frame, max_side) = (work.frame, work.options.max_side);
    let (whole, progress) = work.whole();
    if whole.at.scale <= 1.25 {
        return Flow::Continue(());
    }
    let side = max_side.max(64);
    for rect in prepare::tiles(frame.width(), frame.height(), side, side / 3) {
        let Some(mut tile) = prepare::crop(frame, rect) else {
            continue;
        };
        prepare::contrast_stretch(&mut tile, 1.0, 99.0);
        let at = Placement {
            scale: 1.0,
            dx: rect.x as f32,
            dy: rect.y as f32,
        };
        progress.try_each(&tile, at, &TILE)?;
    }
    Flow::Continue(())
}
