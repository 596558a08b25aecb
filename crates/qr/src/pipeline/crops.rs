//! Stages `crops` and `crops-more`: each located code the sampler did not
//! read is cut from the frame at [`LOCATE_MODULE_PX`] per module, in its
//! own polarity, for rqrr's detector, under three thresholds (the first
//! before the regions of interest, the other two after them).

use std::time::Instant;

use crate::prepare::{self, Rect};
use crate::{GreyFrame, GreyImage};

use super::detect::{Found, rqrr_bitmap};
use super::located::{LOCATE_MODULE_PX, Spot};
use super::{FRAME, Flow, Placement, Progress, Work};

/// How a located crop is binarised.
#[derive(Clone, Copy)]
enum SpotThreshold {
    /// [`prepare::block_threshold_both`] with two-module cells.
    Blocks,
    /// [`prepare::adaptive_threshold`] over five modules each way.
    Window,
}

/// The attempts on each located code: name, blur radius, threshold offset,
/// threshold. The order is a greedy set cover measured on 126 generated
/// frames (14 effect mixes at three sizes, seeds apart from the corpus'):
/// 81, then 11 and 2 more frames read.
/// Names: light-mode code, dark-mode (inverted) code.
const LOCATED: [([&str; 2], usize, u8, SpotThreshold); 3] = [
    (
        ["located", "located-inverted"],
        1,
        10,
        SpotThreshold::Blocks,
    ),
    (
        ["located-window", "located-window-inverted"],
        1,
        2,
        SpotThreshold::Window,
    ),
    (
        ["located-sharp", "located-sharp-inverted"],
        0,
        5,
        SpotThreshold::Blocks,
    ),
];

/// The first threshold on the codes of the first search.
pub(super) fn first_threshold(work: &mut Work<'_>) -> Flow {
    run_spots(
        work.frame,
        &mut work.located,
        &LOCATED[..1],
        &mut work.progress,
    )
}

/// The other two thresholds on the codes of the first search.
pub(super) fn other_thresholds(work: &mut Work<'_>) -> Flow {
    run_spots(
        work.frame,
        &mut work.located,
        &LOCATED[1..],
        &mut work.progress,
    )
}

/// Every threshold on `spots` (the larger search's codes).
pub(super) fn every_threshold(
    frame: GreyFrame<'_>,
    spots: &mut [Spot],
    progress: &mut Progress,
) -> Flow {
    run_spots(frame, spots, &LOCATED, progress)
}

/// A located code's crop, prepared for rqrr.
pub(super) struct Crop {
    /// The crop at `LOCATE_MODULE_PX` pixels per module, dark modules dark.
    image: GreyImage,
    /// The same, box-blurred (3×3).
    smooth: GreyImage,
    at: Placement,
}

impl Crop {
    /// Cuts the code from the frame, scaled to `LOCATE_MODULE_PX` per
    /// module, contrast-stretched and inverted if it is a dark-mode code.
    fn cut(frame: GreyFrame<'_>, rect: Rect, factor: f32, inverted: bool) -> Option<Crop> {
        let crop = prepare::crop(frame, rect)?;
        let scaled = if factor < 1.0 {
            prepare::downscale_by(crop.as_frame(), 1.0 / factor)
        } else {
            prepare::upscale_by(&crop, factor)
        };
        let mut image = scaled.image;
        prepare::contrast_stretch(&mut image, 1.0, 99.0);
        if inverted {
            prepare::invert(&mut image);
        }
        // A light 3x3 blur of the enlarged crop smooths the steps of
        // the interpolation and what is left of JPEG blocks and screen
        // pixels (blurring at the camera's scale instead read less).
        let smooth = prepare::box_blur(&image, 1);
        Some(Crop {
            image,
            smooth,
            at: Placement {
                scale: scaled.scale,
                dx: rect.x as f32,
                dy: rect.y as f32,
            },
        })
    }
}

/// One threshold on a located code's crop (cut the first time).
fn attempt(
    spot: &mut Spot,
    frame: GreyFrame<'_>,
    blur: usize,
    offset: u8,
    threshold: SpotThreshold,
    until: Option<Instant>,
) -> (Vec<Found>, Placement) {
    if spot.prepared.is_none() {
        spot.prepared = Crop::cut(frame, spot.rect, spot.factor, spot.inverted);
    }
    let Some(crop) = spot.prepared.as_ref() else {
        return (Vec::new(), FRAME);
    };
    let heavier;
    let src = match blur {
        0 => &crop.image,
        1 => &crop.smooth,
        r => {
            heavier = prepare::box_blur(&crop.image, r);
            &heavier
        }
    };
    let bits = match threshold {
        SpotThreshold::Blocks => {
            let block = (LOCATE_MODULE_PX * 2.0) as usize;
            prepare::block_threshold_both(src, block, offset).0
        }
        SpotThreshold::Window => {
            let radius = (LOCATE_MODULE_PX * 5.0) as usize;
            prepare::adaptive_threshold(src, radius, offset)
        }
    };
    (rqrr_bitmap(&bits, until), crop.at)
}

/// Runs `variants` on every located crop still pending; stops when done
/// or out of time.
fn run_spots(
    frame: GreyFrame<'_>,
    spots: &mut [Spot],
    variants: &[([&'static str; 2], usize, u8, SpotThreshold)],
    progress: &mut Progress,
) -> Flow {
    for &(names, blur, offset, threshold) in variants {
        for spot in spots.iter_mut() {
            if !spot.pending(progress) {
                continue;
            }
            progress.check()?;
            let until = progress.clock.abandon_at();
            let (found, at) = attempt(spot, frame, blur, offset, threshold, until);
            if !found.is_empty() {
                spot.read = true;
                progress.add(found, at, names[usize::from(spot.inverted)]);
            }
        }
    }
    progress.check()
}
