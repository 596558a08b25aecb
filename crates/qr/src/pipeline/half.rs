//! Stage `half`: the whole-frame image shrunk by 1.6 more, for heavy blur,
//! large codes and strong moiré.

use crate::prepare;

use super::detect::Attempt;
use super::{Flow, Placement, Work};

/// The half-resolution attempts.
const HALF: [(&str, Attempt); 2] = [
    (
        "half",
        Attempt::Adaptive {
            blur: 0,
            offset: 4,
            inverted: false,
        },
    ),
    (
        "half-inverted",
        Attempt::Adaptive {
            blur: 0,
            offset: 4,
            inverted: true,
        },
    ),
];

pub(super) fn run(work: &mut Work<'_>) -> Flow {
    let (whole, progress) = work.whole();
    if whole.image.width().min(whole.image.height()) < 120 {
        return Flow::Continue(());
    }
    progress.check()?;
    let half = prepare::downscale_by(whole.image.as_frame(), 1.6);
    let mut image = half.image;
    prepare::contrast_stretch(&mut image, 1.0, 99.0);
    let at = Placement {
        scale: whole.at.scale * half.scale,
        dx: 0.0,
        dy: 0.0,
    };
    progress.try_each(&image, at, &HALF)
}
