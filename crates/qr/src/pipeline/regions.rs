//! Stage `regions`: crops around edge-dense blobs (up to four), at full
//! resolution (or shrunk to `max_side`), are far cheaper for rqrr than the
//! whole frame.

use crate::prepare;

use super::detect::Attempt;
use super::{Flow, Placement, Work};

/// The attempts on each region of interest.
const ROI: [(&str, Attempt); 3] = [
    (
        "roi",
        Attempt::Adaptive {
            blur: 0,
            offset: 8,
            inverted: false,
        },
    ),
    (
        "roi-inverted",
        Attempt::Adaptive {
            blur: 0,
            offset: 8,
            inverted: true,
        },
    ),
    (
        "roi-blurred",
        Attempt::Adaptive {
            blur: 1,
            offset: 4,
            inverted: false,
        },
    ),
];

pub(super) fn run(work: &mut Work<'_>) -> Flow {
    let frame = work.frame;
    for rect in prepare::regions_of_interest(frame, 16, 2, 4) {
        // A region around a code already read holds nothing new (a
        // second code there is still found by the whole-frame passes).
        if work.progress.covers(rect) {
            continue;
        }
        let Some(crop) = prepare::crop(frame, rect) else {
            continue;
        };
        let sub = prepare::downscale(crop.as_frame(), work.options.max_side);
        // A small crop (a code far away, or a VGA camera) is upscaled
        // twice so its modules reach the size rqrr needs.
        let (mut img, scale) = if sub.scale <= 1.0 && crop.width().max(crop.height()) <= 400 {
            (prepare::upscale2(&sub.image), 0.5)
        } else {
            (sub.image, sub.scale)
        };
        prepare::contrast_stretch(&mut img, 1.0, 99.0);
        let at = Placement {
            scale,
            dx: rect.x as f32,
            dy: rect.y as f32,
        };
        work.progress.try_each(&img, at, &ROI)?;
    }
    Flow::Continue(())
}
