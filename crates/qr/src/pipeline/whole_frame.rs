//! Stage `whole-frame`: the whole frame, downscaled to at most `max_side`,
//! for what the locators miss (no three finders found by either search).

use super::detect::Attempt;
use super::{Flow, Work};

/// The whole-frame attempts in order, with their names. The order was
/// chosen greedily on the corpus: each attempt reads the most frames the
/// ones before it missed (see docs/qr.md).
const WHOLE_FRAME: [(&str, Attempt); 8] = [
    (
        "adaptive",
        Attempt::Adaptive {
            blur: 0,
            offset: 8,
            inverted: false,
        },
    ),
    (
        "blurred",
        Attempt::Adaptive {
            blur: 1,
            offset: 4,
            inverted: false,
        },
    ),
    (
        "adaptive-inverted",
        Attempt::Adaptive {
            blur: 0,
            offset: 8,
            inverted: true,
        },
    ),
    (
        "blurred-strict",
        Attempt::Adaptive {
            blur: 1,
            offset: 14,
            inverted: false,
        },
    ),
    (
        "blurred-inverted",
        Attempt::Adaptive {
            blur: 1,
            offset: 14,
            inverted: true,
        },
    ),
    (
        "blurred-mid",
        Attempt::Adaptive {
            blur: 1,
            offset: 8,
            inverted: false,
        },
    ),
    ("native", Attempt::Native { inverted: false }),
    ("native-inverted", Attempt::Native { inverted: true }),
];

pub(super) fn run(work: &mut Work<'_>) -> Flow {
    let (whole, progress) = work.whole();
    progress.try_each(&whole.image, whole.at, &WHOLE_FRAME)
}
