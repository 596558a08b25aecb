//! Codes located by their finder patterns: the search that places them,
//! shared by the stages that sample them ([`super::sampled`],
//! [`super::rescue`], [`super::larger`]) and hand their crops to rqrr
//! ([`super::crops`]).

use crate::GreyFrame;
use crate::locate;
use crate::prepare::{self, Rect};

use super::Progress;
use super::crops::Crop;

/// Module size, in pixels, that located crops are scaled to. rqrr reads
/// far more codes from large, interpolated modules than from small ones
/// (its timing-pattern count and grid fit round to whole pixels): on 126
/// generated frames (not the corpus) the best single threshold read 81 at
/// 10 px per module, 67 at 6 px and 43 at 4 px. Its grid fit costs the
/// same at any size; the capstone search and the thresholds grow with the
/// crop.
pub(super) const LOCATE_MODULE_PX: f32 = 10.0;

/// Longest side of a located crop, whatever the code's version.
const LOCATE_SPOT_MAX: f32 = 1024.0;

/// Smallest module, in frame pixels, of a located code worth reading: a
/// camera's blur and a screen's pixel grid leave nothing of modules much
/// under two pixels, while a moiré checkerboard makes 1:1:3:1:1 runs of
/// one-pixel "modules" everywhere (in one generated VGA frame, eight
/// such groups cost 12–45 ms of sampling each).
const MIN_MODULE_PX: f32 = 1.5;

/// Longest side of the copy finder patterns are searched in.
pub(super) const LOCATE_SIDE: usize = 960;

/// Unsharp-mask radius of the rescue search and of the rescue sampling
/// (box radius, pixels of the copy it is applied to): about the blur of a
/// defocused phone screen a module or less wide. Radii 1 and 2 at
/// amounts 1 and 2 were measured on generated frames (seeds apart from the
/// corpus'); 2 and 2 read the most (docs/qr.md).
pub(super) const DEBLUR_RADIUS: usize = 2;

/// Unsharp-mask amount of the rescue search and sampling.
pub(super) const DEBLUR_AMOUNT: f32 = 2.0;

/// A code placed by its finder patterns: its crop, prepared for rqrr.
pub(super) struct Spot {
    /// The crop for rqrr, made the first time rqrr runs on this code (the
    /// sampler, which runs first, reads most codes without it).
    pub(super) prepared: Option<Crop>,
    /// Source pixels per crop pixel wanted: `LOCATE_MODULE_PX` pixels per
    /// module, but no crop over `LOCATE_SPOT_MAX`.
    pub(super) factor: f32,
    /// A dark-mode code (light modules), inverted in the crop.
    pub(super) inverted: bool,
    /// Where the crop lies in the frame.
    pub(super) rect: Rect,
    /// The finder centres (right-angle corner first) and the module size,
    /// in frame pixels, for [`crate::sample::read_located`].
    pub(super) finders: [[f64; 2]; 3],
    pub(super) module: f64,
    pub(super) read: bool,
}

impl Spot {
    /// Whether the code is still to be read: not read yet, and not holding
    /// a code read already (by another stage or another spot).
    pub(super) fn pending(&self, progress: &Progress) -> bool {
        !self.read && !progress.covers(self.rect)
    }
}

/// Whether two rectangles cover about the same area (corners within a
/// tenth of the larger side).
pub(super) fn similar(a: &Rect, b: &Rect) -> bool {
    let tol = (a.width.max(a.height).max(b.width).max(b.height) / 10) as isize;
    let d = |p: usize, q: usize| (p as isize - q as isize).abs() <= tol;
    d(a.x, b.x)
        && d(a.y, b.y)
        && d(a.x + a.width, b.x + b.width)
        && d(a.y + a.height, b.y + b.height)
}

/// The whole factor by which a frame is shrunk for a finder search on a
/// copy of at most `side` pixels a side.
pub(super) fn search_factor(frame: GreyFrame<'_>, side: usize) -> usize {
    frame.width().max(frame.height()).div_ceil(side.max(16))
}

/// How the copy finder patterns are searched in is prepared.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum Search {
    /// Shrunk and contrast-stretched: the everyday search.
    Plain,
    /// Shrunk by at least 2, then unsharp-masked
    /// ([`DEBLUR_RADIUS`], [`DEBLUR_AMOUNT`]): the rescue search when the
    /// plain one read nothing. Shrinking averages a screen's pixel grid
    /// (moiré) and sensor noise over 2×2 pixels; the mask gives back the
    /// one-module light ring of a defocused finder that blur closed up, so
    /// its 1:1:3:1:1 runs reappear.
    Deblurred,
}

/// Finder groups kept per polarity at a gate: it stops at the first code,
/// and a frame of one phone holds one.
pub(super) const GATE_GROUPS: usize = 4;
/// Finder groups kept per polarity when every code in view is wanted (a
/// still, `qr decode`): a poster wall or a sheet of labels holds dozens;
/// each group costs sampling tries, bounded by the budget.
pub(super) const ALL_GROUPS: usize = 48;

/// Groups kept per polarity for options that do (`find_all`) or do not
/// want every code in view.
pub(super) fn groups_for(find_all: bool) -> usize {
    if find_all { ALL_GROUPS } else { GATE_GROUPS }
}

/// Finds codes by their finder patterns on a copy of the frame shrunk by
/// the whole factor `factor` (prepared as `search` says), in both
/// polarities, at most `max_groups` in each; each is cut from the full
/// frame when rqrr needs it, scaled to [`LOCATE_MODULE_PX`] per module and
/// inverted if it is a dark-mode code. A still's plain search (more
/// groups than a gate's) groups finders as for a sheet of labels
/// ([`locate::group_finders`]'s `share`); the rescue search does not:
/// the defocused and moiré phone frames it is for lost codes to it
/// (moiré's false finders inside a code held its group back).
pub(super) fn locate_codes(
    frame: GreyFrame<'_>,
    factor: usize,
    search: Search,
    max_groups: usize,
) -> Vec<Spot> {
    // An integer factor: exact area averaging, and cheap.
    let small = prepare::downscale_by(frame, factor.max(1) as f32);
    let mut work = match search {
        Search::Plain => small.image,
        Search::Deblurred => prepare::sharpen(&small.image, DEBLUR_RADIUS, DEBLUR_AMOUNT),
    };
    prepare::contrast_stretch(&mut work, 1.0, 99.0);
    let block = (work.width().min(work.height()) / 40).max(4);
    let (dark, light) = prepare::block_threshold_both(&work, block, 6);
    let mut spots = Vec::new();
    for (bits, inverted) in [(&dark, false), (&light, true)] {
        let finders = locate::finder_patterns(bits);
        let share = max_groups > GATE_GROUPS && search == Search::Plain;
        for group in locate::group_finders(&finders, max_groups, share, Some(bits)) {
            let s = small.scale;
            // Modules under MIN_MODULE_PX frame pixels are past reading (by
            // us or any reader); such groups are a screen's pixel grid or
            // noise, and each could cost a sampling try of tens of ms.
            if group.module * s < MIN_MODULE_PX {
                continue;
            }
            let Some(r) = group.bounds(3.0, work.width(), work.height()) else {
                continue;
            };
            let rect = Rect {
                x: (r.x as f32 * s) as usize,
                y: (r.y as f32 * s) as usize,
                width: (r.width as f32 * s).ceil() as usize,
                height: (r.height as f32 * s).ceil() as usize,
            };
            // The crop must hold pixels (it is cut when rqrr needs it).
            let (cw, ch) = (
                rect.width.min(frame.width().saturating_sub(rect.x)),
                rect.height.min(frame.height().saturating_sub(rect.y)),
            );
            if cw == 0 || ch == 0 {
                continue;
            }
            // Modules of LOCATE_MODULE_PX, but no crop over LOCATE_SPOT_MAX.
            let longest = cw.max(ch) as f32;
            let factor = (LOCATE_MODULE_PX / (group.module * s)).min(LOCATE_SPOT_MAX / longest);
            spots.push(Spot {
                prepared: None,
                factor,
                inverted,
                rect,
                finders: [group.corner, group.a, group.b].map(|f| {
                    [
                        f64::from((f.x + 0.5) * s - 0.5),
                        f64::from((f.y + 0.5) * s - 0.5),
                    ]
                }),
                module: f64::from(group.module * s),
                read: false,
            });
        }
    }
    spots
}
