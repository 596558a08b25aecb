//! Stage `rescue`: defocus and moiré can hide every finder from the plain
//! search (their one-module rings blur shut or break into a checkerboard);
//! a copy shrunk by at least 2 and unsharp-masked often shows them again.

use super::located::{LOCATE_SIDE, Search, groups_for, locate_codes, search_factor, similar};
use super::sampled::{Sampling, sample_spots};
use super::{Flow, Work};

/// The rescue search's codes are sampled from the frame; then every
/// located code not read yet is sampled from a masked crop (a code both
/// searches found, once).
pub(super) fn run(work: &mut Work<'_>) -> Flow {
    work.progress.check()?;
    let frame = work.frame;
    let factor = search_factor(frame, LOCATE_SIDE).max(2);
    let groups = groups_for(work.options.find_all);
    let mut rescued = locate_codes(frame, factor, Search::Deblurred, groups);
    let progress = &mut work.progress;
    sample_spots(frame, &mut rescued, Sampling::Frame, progress)?;
    sample_spots(frame, &mut work.located, Sampling::MaskedCrop, progress)?;
    rescued.retain(|s| {
        !work
            .located
            .iter()
            .any(|l| l.inverted == s.inverted && similar(&l.rect, &s.rect))
    });
    sample_spots(frame, &mut rescued, Sampling::MaskedCrop, progress)?;
    if !work.options.find_all {
        // A phone at a gate is flat, and a frame's budget is short.
        return Flow::Continue(());
    }
    // Stills: codes bent round a bottle, last of the located codes' tries.
    sample_spots(frame, &mut work.located, Sampling::Bent, progress)?;
    sample_spots(frame, &mut rescued, Sampling::Bent, progress)
}
