//! Stage `sampled`: the finder search, and every code it places read by
//! sampling its modules ([`crate::sample::read_located`]: our finders, a
//! homography, rqrr's decoder on the bit matrix), which costs a fraction
//! of rqrr's grid fit. The sampling is shared with the rescue and larger
//! searches, which also sample from unsharp-masked crops.

use std::time::Instant;

use crate::GreyFrame;
use crate::prepare;
use crate::sample::{self, Sampled};

use super::located::{DEBLUR_AMOUNT, DEBLUR_RADIUS, LOCATE_SIDE, Search, Spot};
use super::located::{groups_for, locate_codes, search_factor};
use super::{Flow, Progress, Work};

/// Finder patterns grouped in threes give each code's place and module
/// size (on a copy of at most [`LOCATE_SIDE`] a side); each code is
/// sampled from the frame. The codes stay in [`Work::located`] for the
/// later stages, and the search's time in [`Work::search_took`].
pub(super) fn run(work: &mut Work<'_>) -> Flow {
    let started = Instant::now();
    let factor = search_factor(work.frame, LOCATE_SIDE);
    let groups = groups_for(work.options.find_all);
    work.located = locate_codes(work.frame, factor, Search::Plain, groups);
    work.search_took = started.elapsed();
    sample_spots(
        work.frame,
        &mut work.located,
        Sampling::Frame,
        &mut work.progress,
    )
}

/// Where a located code's modules are sampled.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum Sampling {
    /// The frame itself.
    Frame,
    /// An unsharp-masked copy of the code's crop ([`read_deblurred`]); a
    /// second pass, so that codes the frame's samples read are not
    /// delayed by it.
    MaskedCrop,
    /// The frame, the code read on all its alignment patterns or taken as
    /// bent round a bottle ([`sample::read_located`] with a deadline):
    /// stills only, in a pass of its own after the others, for the same
    /// reason.
    Bent,
}

impl Sampling {
    /// The strategy names of a light-mode and a dark-mode code.
    fn names(self) -> [&'static str; 2] {
        match self {
            Sampling::Frame => ["sampled", "sampled-inverted"],
            Sampling::MaskedCrop => ["deblurred", "deblurred-inverted"],
            Sampling::Bent => ["bent", "bent-inverted"],
        }
    }
}

/// Reads every located code still pending by sampling its modules `from`
/// the frame or a masked crop; stops when done or out of time.
pub(super) fn sample_spots(
    frame: GreyFrame<'_>,
    spots: &mut [Spot],
    from: Sampling,
    progress: &mut Progress,
) -> Flow {
    for spot in spots.iter_mut() {
        if !spot.pending(progress) {
            continue;
        }
        progress.check()?;
        let [corner, a, b] = spot.finders;
        let read = match from {
            Sampling::Frame => {
                sample::read_located(frame, corner, a, b, spot.module, spot.inverted, None)
            }
            Sampling::MaskedCrop => read_deblurred(frame, spot),
            Sampling::Bent => {
                let deadline = Some(progress.clock.deadline());
                sample::read_located(frame, corner, a, b, spot.module, spot.inverted, deadline)
            }
        };
        if let Some(read) = read {
            spot.read = true;
            let name = from.names()[usize::from(spot.inverted)];
            progress.add_sampled(read, name);
        }
    }
    progress.check()
}

/// Samples a located code from an unsharp-masked copy of its crop: a
/// defocused code's isolated modules keep too little contrast against
/// their neighbours to threshold; the mask restores some of it (a crude
/// deconvolution). Only the crop is masked, not the frame.
pub(super) fn read_deblurred(frame: GreyFrame<'_>, spot: &Spot) -> Option<Sampled> {
    let crop = prepare::crop(frame, spot.rect)?;
    let sharp = prepare::sharpen(&crop, DEBLUR_RADIUS, DEBLUR_AMOUNT);
    let (dx, dy) = (spot.rect.x as f64, spot.rect.y as f64);
    let [corner, a, b] = spot.finders.map(|[x, y]| [x - dx, y - dy]);
    let mut found = sample::read_located(
        sharp.as_frame(),
        corner,
        a,
        b,
        spot.module,
        spot.inverted,
        None,
    )?;
    for c in &mut found.corners {
        c[0] += dx as f32;
        c[1] += dy as f32;
    }
    Some(found)
}
