//! Stage `larger`: when the first finder search ran on a copy shrunk by 2
//! or more, a search on one twice as large (small codes in large frames
//! and photos), its new codes sampled, then cut for rqrr.

use super::crops::every_threshold;
use super::located::{LOCATE_SIDE, Search, groups_for, locate_codes, search_factor, similar};
use super::sampled::{Sampling, sample_spots};
use super::{Flow, Work};

pub(super) fn run(work: &mut Work<'_>) -> Flow {
    let frame = work.frame;
    // The search at twice the size costs up to four times the first
    // one (a single step of 20 ms or more on a 1080p frame full of
    // moiré): it starts only if that still fits the budget.
    let larger_fits = work.progress.clock.fits(work.search_took * 4);
    if frame.width().max(frame.height()) <= LOCATE_SIDE || !larger_fits {
        return Flow::Continue(());
    }
    work.progress.check()?;
    let groups = groups_for(work.options.find_all);
    let mut larger = locate_codes(
        frame,
        search_factor(frame, 2 * LOCATE_SIDE),
        Search::Plain,
        groups,
    );
    // A code found again at about the same place was tried.
    larger.retain(|s| !work.located.iter().any(|l| similar(&l.rect, &s.rect)));
    let progress = &mut work.progress;
    sample_spots(frame, &mut larger, Sampling::Frame, progress)?;
    sample_spots(frame, &mut larger, Sampling::MaskedCrop, progress)?;
    every_threshold(frame, &mut larger, progress)
}
