//! The decode pipeline: an ordered table of stages ([`STAGES`]), each
//! handing prepared images to rqrr (or its decoder alone), run in order
//! under a per-frame budget until a code is read or time runs out.
//!
//! Order (cheapest and most likely first): codes located by their finder
//! patterns ([`crate::locate`]), each read by sampling its modules
//! ([`crate::sample`]: a homography, rqrr's decoder on the bit matrix);
//! when none is read, a rescue search on a copy shrunk by at least 2 and
//! unsharp-masked (defocus, moiré), its codes sampled, then every located
//! code sampled again from an unsharp-masked crop; failing that, each is
//! cut from the frame at 10 pixels per module in its own
//! polarity for rqrr's detector (three thresholds); then up to four regions
//! of interest (edge-dense blobs, cropped at full resolution, upscaled
//! twice when small), each thresholded against its local mean in both
//! polarities and box-blurred; then the whole frame, downscaled to at most
//! `max_side`, in the attempt order of `WHOLE_FRAME` (chosen greedily on
//! the corpus); then 1/1.6 resolution (big or very blurred codes); then
//! small frames upscaled twice; then full-resolution tiles of large frames.
//! An attempt starts only if the time spent plus the longest step so far
//! fits the budget ([`budget::Clock`]), and every image handed to rqrr is
//! bounded in size, so a frame ends close to its budget; an attempt rqrr
//! keeps past that by a budget more is abandoned ([`watched`]).
//!
//! One stage per module, named for what it does; what they share is in
//! [`detect`] (rqrr and the attempts), [`watched`] (the image rqrr reads),
//! [`located`] (the finder search's codes) and here (the budget and the
//! codes read so far).

mod budget;
mod crops;
mod detect;
mod half;
mod larger;
mod located;
mod regions;
mod rescue;
mod sampled;
mod tiles;
mod upscaled;
mod watched;
mod whole_frame;

#[cfg(test)]
mod tests;

use std::collections::HashSet;
use std::ops::ControlFlow;
use std::time::Duration;

use crate::prepare::{self, Rect};
use crate::sample::Sampled;
use crate::{GreyFrame, GreyImage};

use budget::Clock;
use detect::{Attempt, Found};
use located::Spot;

/// How hard to look at one frame.
#[derive(Clone, Debug)]
pub struct DecodeOptions {
    /// Longest side of the image rqrr sees; larger frames are downscaled
    /// (and searched again tile by tile at full resolution if time allows).
    /// rqrr's cost grows faster than linearly with size.
    pub max_side: usize,
    /// Time per frame. An attempt starts only when the time spent plus the
    /// longest step so far still fits, so a frame ends near its budget; a
    /// step is bounded (every image rqrr sees is at most `max_side`, or
    /// 1024 for located crops), so a misjudged one overruns by little.
    pub budget: Duration,
    /// Keep trying strategies after one has found a code (to collect every
    /// code in view, e.g. for the CLI); a gate stops at the first hit.
    pub find_all: bool,
}

/// The gate's budget per frame: a camera at 30 frames a second sends one
/// every 33 ms, and a reader that keeps up tries the next frame instead of
/// lingering on a bad one (the rider's phone stays in view for many).
pub const GATE_BUDGET: Duration = Duration::from_millis(25);

impl Default for DecodeOptions {
    /// The gate: [`GATE_BUDGET`] per frame, stop at the first code.
    fn default() -> Self {
        Self {
            max_side: 1280,
            budget: GATE_BUDGET,
            find_all: false,
        }
    }
}

/// What each code read adds to a still's budget (`find_all`): a sheet of
/// labels or a poster wall holds dozens, and each costs its own sampling;
/// a frame of false finders (a screen's pixel grid) earns nothing.
pub const BUDGET_PER_CODE: Duration = Duration::from_millis(20);
/// The most a still's budget grows to (`find_all`), whatever it holds.
pub const STILL_BUDGET_CAP: Duration = Duration::from_secs(1);

impl DecodeOptions {
    /// Options for reading every code in a still image (CLI, tests): all
    /// strategies run within a larger budget, 160 ms plus
    /// [`BUDGET_PER_CODE`] for each code read, up to [`STILL_BUDGET_CAP`]
    /// (unless `budget` is set above that).
    pub fn thorough() -> Self {
        Self {
            find_all: true,
            budget: Duration::from_millis(160),
            ..Self::default()
        }
    }
}

/// One code read from a frame.
#[derive(Clone, Debug, PartialEq)]
pub struct DecodedCode {
    /// The payload bytes (byte mode, any binary content).
    pub payload: Vec<u8>,
    /// The code's corners in the original frame's pixels, in the code's own
    /// orientation: top-left, top-right, bottom-right, bottom-left.
    pub corners: [[f32; 2]; 4],
    /// Which strategy read it (for diagnostics and the benchmark).
    pub strategy: &'static str,
}

impl DecodedCode {
    /// The centre of the code (mean of its corners), in frame pixels.
    pub fn centre(&self) -> [f32; 2] {
        let [sx, sy] = self
            .corners
            .iter()
            .fold([0.0, 0.0], |[ax, ay], [x, y]| [ax + x, ay + y]);
        [sx / 4.0, sy / 4.0]
    }
}

/// Decodes frames with fixed options; cheap to create and reuse.
#[derive(Clone, Debug, Default)]
pub struct Decoder {
    options: DecodeOptions,
}

/// Decodes one frame with [`DecodeOptions::thorough`]: every code in view.
pub fn decode_frame(frame: GreyFrame<'_>) -> Vec<DecodedCode> {
    Decoder::new(DecodeOptions::thorough()).decode(frame)
}

/// One step of the pipeline: a name (for the docs and tests) and what it
/// runs. A stage breaks when the frame is done or out of time.
struct Stage {
    #[cfg_attr(
        not(test),
        expect(dead_code, reason = "read by the docs' and the tests' checks")
    )]
    name: &'static str,
    run: fn(&mut Work<'_>) -> Flow,
}

/// The stages in the order they run (docs/qr.md, "Order"): cheapest and
/// most likely first, each for what the ones before it miss.
const STAGES: [Stage; 10] = [
    // Finder search; each located code read by sampling its modules.
    Stage {
        name: "sampled",
        run: sampled::run,
    },
    // Search on a shrunk, unsharp-masked copy; masked crops sampled.
    Stage {
        name: "rescue",
        run: rescue::run,
    },
    // Located codes cut for rqrr: the first threshold.
    Stage {
        name: "crops",
        run: crops::first_threshold,
    },
    // Regions of interest (edge-dense blobs).
    Stage {
        name: "regions",
        run: regions::run,
    },
    // Located codes cut for rqrr: the other two thresholds.
    Stage {
        name: "crops-more",
        run: crops::other_thresholds,
    },
    // A finder search at twice the size (large frames).
    Stage {
        name: "larger",
        run: larger::run,
    },
    // The whole frame, downscaled to `max_side`.
    Stage {
        name: "whole-frame",
        run: whole_frame::run,
    },
    // The whole frame at 1/1.6 of that.
    Stage {
        name: "half",
        run: half::run,
    },
    // Small frames upscaled twice.
    Stage {
        name: "upscaled",
        run: upscaled::run,
    },
    // Full-resolution tiles of large frames.
    Stage {
        name: "tiles",
        run: tiles::run,
    },
];

/// What a stage returns: go on to the next, or stop (done or out of time).
type Flow = ControlFlow<()>;

/// Where a working image sits in the original frame.
#[derive(Clone, Copy, Debug)]
struct Placement {
    scale: f32,
    dx: f32,
    dy: f32,
}

impl Placement {
    fn map(&self, [x, y]: [f32; 2]) -> [f32; 2] {
        [
            (x + 0.5) * self.scale - 0.5 + self.dx,
            (y + 0.5) * self.scale - 0.5 + self.dy,
        ]
    }
}

/// The frame itself as a working image.
const FRAME: Placement = Placement {
    scale: 1.0,
    dx: 0.0,
    dy: 0.0,
};

/// The codes read so far (deduplicated by payload) and the budget they
/// are read under: whether the next attempt may start.
struct Progress {
    clock: Clock,
    find_all: bool,
    seen: HashSet<Vec<u8>>,
    codes: Vec<DecodedCode>,
}

impl Progress {
    fn new(budget: Duration, find_all: bool) -> Self {
        Self {
            clock: Clock::new(budget),
            find_all,
            seen: HashSet::new(),
            codes: Vec::new(),
        }
    }

    /// A gate stops at its first code.
    fn done(&self) -> bool {
        !self.find_all && !self.codes.is_empty()
    }

    /// Whether another attempt may start: not done, and the budget allows
    /// ([`Clock::may_start`], which records the step since the last check).
    /// Once it says stop it always will.
    fn check(&self) -> Flow {
        if self.done() || !self.clock.may_start() {
            Flow::Break(())
        } else {
            Flow::Continue(())
        }
    }

    /// Adds the codes rqrr found in a working image placed `at`, those
    /// not read before.
    fn add(&mut self, found: Vec<Found>, at: Placement, strategy: &'static str) {
        for f in found {
            if self.seen.insert(f.payload.clone()) {
                if self.find_all {
                    // A still that holds codes may hold more: each one
                    // read buys time for the next.
                    self.clock.extend(BUDGET_PER_CODE, STILL_BUDGET_CAP);
                }
                self.codes.push(DecodedCode {
                    corners: f.corners.map(|c| at.map(c)),
                    payload: f.payload,
                    strategy,
                });
            }
        }
    }

    /// Adds a code read by sampling (corners already in frame pixels).
    fn add_sampled(&mut self, read: Sampled, strategy: &'static str) {
        let found = vec![Found {
            payload: read.payload,
            corners: read.corners,
        }];
        self.add(found, FRAME, strategy);
    }

    /// Whether a code read so far has its centre in `rect`.
    fn covers(&self, rect: Rect) -> bool {
        self.codes.iter().any(|c| rect.contains(c.centre()))
    }

    /// Runs `attempts` on `image` (placed `at`) in order, each only if
    /// another may start.
    fn try_each(
        &mut self,
        image: &GreyImage,
        at: Placement,
        attempts: &[(&'static str, Attempt)],
    ) -> Flow {
        for &(name, attempt) in attempts {
            self.check()?;
            self.add(attempt.run(image, self.clock.abandon_at()), at, name);
        }
        Flow::Continue(())
    }
}

/// The whole frame downscaled to at most `max_side` and
/// contrast-stretched: the image of the last stages.
struct Whole {
    image: GreyImage,
    at: Placement,
}

impl Whole {
    fn new(frame: GreyFrame<'_>, max_side: usize) -> Self {
        let scaled = prepare::downscale(frame, max_side);
        let mut image = scaled.image;
        prepare::contrast_stretch(&mut image, 1.0, 99.0);
        let at = Placement {
            scale: scaled.scale,
            dx: 0.0,
            dy: 0.0,
        };
        Self { image, at }
    }
}

/// What the stages of one frame share.
struct Work<'f> {
    frame: GreyFrame<'f>,
    options: &'f DecodeOptions,
    progress: Progress,
    /// The codes the first finder search placed (stage `sampled`), tried
    /// again by later stages.
    located: Vec<Spot>,
    /// How long that search took: the larger search costs up to four times as much.
    search_took: Duration,
    /// Made by the whole-frame stage, used by the ones after it.
    whole: Option<Whole>,
}

impl<'f> Work<'f> {
    fn new(frame: GreyFrame<'f>, options: &'f DecodeOptions) -> Self {
        Self {
            frame,
            options,
            progress: Progress::new(options.budget, options.find_all),
            located: Vec::new(),
            search_took: Duration::ZERO,
            whole: None,
        }
    }

    /// The whole-frame image (made the first time) and the progress, apart.
    fn whole(&mut self) -> (&Whole, &mut Progress) {
        let (frame, max_side) = (self.frame, self.options.max_side);
        let whole = self
            .whole
            .get_or_insert_with(|| Whole::new(frame, max_side));
        (whole, &mut self.progress)
    }
}

impl Decoder {
    /// A decoder with the given options.
    pub fn new(options: DecodeOptions) -> Self {
        Self { options }
    }

    /// The options in use.
    pub fn options(&self) -> &DecodeOptions {
        &self.options
    }

    /// Reads the codes in one frame: each payload once, with its corners in
    /// the frame's pixels. Ends near the budget; an attempt still inside
    /// rqrr a budget (at least 25 ms) past it is abandoned. An empty result
    /// means no code was read.
    pub fn decode(&self, frame: GreyFrame<'_>) -> Vec<DecodedCode> {
        let mut work = Work::new(frame, &self.options);
        for stage in &STAGES {
            if (stage.run)(&mut work).is_break() {
                break;
            }
        }
        work.progress.codes
    }
}
