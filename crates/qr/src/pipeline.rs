//! The decode pipeline: a fixed sequence of preparation strategies, each
//! handing a binarised image to rqrr, within a per-frame budget.
//!
//! Order (cheapest and most likely first): codes located by their finder
//! patterns ([`super::locate`]), each read by sampling its modules
//! ([`super::sample`]: a homography, rqrr's decoder on the bit matrix);
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
//! fits the budget, and every image handed to rqrr is bounded in size, so
//! a frame ends close to its budget.

use std::cell::Cell;
use std::collections::HashSet;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration, Instant};

use rqrr::PreparedImage;

use super::locate;
use super::prepare::{self, Bitmap, Rect};
use super::sample;
use super::{GreyFrame, GreyImage};

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

impl DecodeOptions {
    /// Options for reading every code in a still image (CLI, tests): all
    /// strategies run within a larger budget.
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

/// A code as rqrr reports it in a working image's pixels.
struct Found {
    payload: Vec<u8>,
    corners: [[f32; 2]; 4],
}

/// Decodes every grid rqrr detects in a prepared image (a macro because
/// rqrr's buffer type is not nameable outside the crate).
macro_rules! collect_grids {
    ($img:expr) => {{
        let mut out = Vec::new();
        for grid in $img.detect_grids() {
            let mut payload = Vec::new();
            if grid.decode_to(&mut payload).is_ok() {
                let corners = grid.bounds.map(|p| [p.x as f32, p.y as f32]);
                out.push(Found { payload, corners });
            }
        }
        out
    }};
}

/// Runs rqrr's grid detection and decoding on a prepared bitmap. A panic
/// inside rqrr (it asserts on some inputs) is caught and counts as "no code".
fn rqrr_bitmap(bits: &Bitmap) -> Vec<Found> {
    catch_unwind(AssertUnwindSafe(|| {
        let mut img = PreparedImage::prepare_from_bitmap(bits.width(), bits.height(), |x, y| {
            bits.is_dark(x, y)
        });
        collect_grids!(img)
    }))
    .unwrap_or_default()
}

/// Runs rqrr with its own row-average threshold on a grey image.
fn rqrr_grey(image: &GreyImage) -> Vec<Found> {
    catch_unwind(AssertUnwindSafe(|| {
        let w = image.width();
        let data = image.data();
        let mut img =
            PreparedImage::prepare_from_greyscale(w, image.height(), |x, y| data[y * w + x]);
        collect_grids!(img)
    }))
    .unwrap_or_default()
}

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

/// The per-frame budget: an attempt starts only if the time spent plus the
/// longest step so far (a step is what ran between two checks) still fits,
/// so a frame ends near its budget instead of one attempt past it.
struct Clock {
    start: Instant,
    budget: Duration,
    last: Cell<Instant>,
    longest: Cell<Duration>,
    started: Cell<u32>,
}

impl Clock {
    fn new(budget: Duration) -> Self {
        let now = Instant::now();
        Self {
            start: now,
            budget,
            last: Cell::new(now),
            longest: Cell::new(Duration::ZERO),
            started: Cell::new(0),
        }
    }

    /// Whether another attempt may start (and the step since the last
    /// check is recorded). The first attempt always may: a frame that
    /// never reaches rqrr (a loaded machine, a slow locator) is wasted.
    fn may_start(&self) -> bool {
        let now = Instant::now();
        let step = now.saturating_duration_since(self.last.get());
        self.last.set(now);
        if step > self.longest.get() {
            self.longest.set(step);
        }
        let fits = now.saturating_duration_since(self.start) + self.longest.get() <= self.budget;
        let first = self.started.get() == 0;
        if fits || first {
            self.started.set(self.started.get() + 1);
        }
        fits || first
    }
}

/// Collects codes across strategies, deduplicated by payload.
struct Collector {
    seen: HashSet<Vec<u8>>,
    codes: Vec<DecodedCode>,
}

impl Collector {
    fn add(&mut self, found: Vec<Found>, at: Placement, strategy: &'static str) -> usize {
        let mut new = 0;
        for f in found {
            if self.seen.insert(f.payload.clone()) {
                self.codes.push(DecodedCode {
                    corners: f.corners.map(|c| at.map(c)),
                    payload: f.payload,
                    strategy,
                });
                new += 1;
            }
        }
        new
    }
}

/// Window radius for the adaptive threshold: large enough to span a finder
/// pattern of a code filling the image, small enough to follow glare.
fn threshold_radius(image: &GreyImage) -> usize {
    (image.width().min(image.height()) / 14).clamp(6, 48)
}

/// One attempt: a name and a way to produce candidates from a working image.
#[derive(Clone, Copy)]
enum Attempt {
    Adaptive {
        blur: usize,
        offset: u8,
        inverted: bool,
    },
    Native {
        inverted: bool,
    },
}

impl Attempt {
    fn run(self, image: &GreyImage) -> Vec<Found> {
        match self {
            Attempt::Adaptive {
                blur,
                offset,
                inverted,
            } => {
                // Invert the grey image, not the bitmap: a dark quiet zone
                // must become light, and flat areas must stay light.
                let mut src = if blur > 0 {
                    prepare::box_blur(image, blur)
                } else {
                    image.clone()
                };
                if inverted {
                    prepare::invert(&mut src);
                }
                let bits = prepare::adaptive_threshold(&src, threshold_radius(&src), offset);
                rqrr_bitmap(&bits)
            }
            Attempt::Native { inverted } => {
                if inverted {
                    let mut inv = image.clone();
                    prepare::invert(&mut inv);
                    rqrr_grey(&inv)
                } else {
                    rqrr_grey(image)
                }
            }
        }
    }
}

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

/// The attempts on a small frame upscaled twice.
const UPSCALED: [(&str, Attempt); 2] = [
    (
        "upscaled",
        Attempt::Adaptive {
            blur: 1,
            offset: 6,
            inverted: false,
        },
    ),
    (
        "upscaled-inverted",
        Attempt::Adaptive {
            blur: 1,
            offset: 6,
            inverted: true,
        },
    ),
];

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

/// Module size, in pixels, that located crops are scaled to. rqrr reads
/// far more codes from large, interpolated modules than from small ones
/// (its timing-pattern count and grid fit round to whole pixels): on 126
/// generated frames (not the corpus) the best single threshold read 81 at
/// 10 px per module, 67 at 6 px and 43 at 4 px. Its grid fit costs the
/// same at any size; the capstone search and the thresholds grow with the
/// crop.
const LOCATE_MODULE_PX: f32 = 10.0;

/// Longest side of a located crop, whatever the code's version.
const LOCATE_SPOT_MAX: f32 = 1024.0;

/// Smallest module, in frame pixels, of a located code worth reading: a
/// camera's blur and a screen's pixel grid leave nothing of modules much
/// under two pixels, while a moiré checkerboard makes 1:1:3:1:1 runs of
/// one-pixel "modules" everywhere (in one generated VGA frame, eight
/// such groups cost 12–45 ms of sampling each).
const MIN_MODULE_PX: f32 = 1.5;

/// Longest side of the copy finder patterns are searched in.
const LOCATE_SIDE: usize = 960;

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

/// A code placed by its finder patterns: its crop, prepared for rqrr.
struct Spot {
    /// The crop for rqrr, made the first time rqrr runs on this code (the
    /// sampler, which runs first, reads most codes without it).
    prepared: Option<Crop>,
    /// Source pixels per crop pixel wanted: `LOCATE_MODULE_PX` pixels per
    /// module, but no crop over `LOCATE_SPOT_MAX`.
    factor: f32,
    /// A dark-mode code (light modules), inverted in `image`.
    inverted: bool,
    /// Where the crop lies in the frame.
    rect: Rect,
    /// The finder centres (right-angle corner first) and the module size,
    /// in frame pixels, for [`sample::read_located`].
    finders: [[f64; 2]; 3],
    module: f64,
    read: bool,
}

/// A located code's crop, prepared for rqrr.
struct Crop {
    /// The crop at `LOCATE_MODULE_PX` pixels per module, dark modules dark.
    image: GreyImage,
    /// The same, box-blurred (3×3).
    smooth: GreyImage,
    at: Placement,
}

impl Spot {
    /// Cuts the code from the frame, scaled to `LOCATE_MODULE_PX` per
    /// module, contrast-stretched and inverted if it is a dark-mode code.
    fn prepare(&self, frame: GreyFrame<'_>) -> Option<Crop> {
        let crop = prepare::crop(frame, self.rect)?;
        let scaled = if self.factor < 1.0 {
            prepare::downscale_by(crop.as_frame(), 1.0 / self.factor)
        } else {
            prepare::upscale_by(&crop, self.factor)
        };
        let mut image = scaled.image;
        prepare::contrast_stretch(&mut image, 1.0, 99.0);
        if self.inverted {
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
                dx: self.rect.x as f32,
                dy: self.rect.y as f32,
            },
        })
    }

    fn attempt(
        &mut self,
        frame: GreyFrame<'_>,
        blur: usize,
        offset: u8,
        threshold: SpotThreshold,
    ) -> (Vec<Found>, Placement) {
        if self.prepared.is_none() {
            self.prepared = self.prepare(frame);
        }
        let Some(crop) = self.prepared.as_ref() else {
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
        (rqrr_bitmap(&bits), crop.at)
    }
}

/// Runs `variants` on every located crop not read yet and not holding a
/// code already read; `true` when the caller should stop (done or out of
/// time).
fn run_spots(
    frame: GreyFrame<'_>,
    spots: &mut [Spot],
    variants: &[([&'static str; 2], usize, u8, SpotThreshold)],
    collector: &mut Collector,
    stop: &dyn Fn(&Collector) -> bool,
) -> bool {
    for &(names, blur, offset, threshold) in variants {
        for spot in spots.iter_mut() {
            if spot.read
                || collector
                    .codes
                    .iter()
                    .any(|c| spot.rect.contains(c.centre()))
            {
                continue;
            }
            if stop(collector) {
                return true;
            }
            let (found, at) = spot.attempt(frame, blur, offset, threshold);
            if !found.is_empty() {
                spot.read = true;
                collector.add(found, at, names[usize::from(spot.inverted)]);
            }
        }
    }
    stop(collector)
}

/// Reads every located code not read yet by sampling its modules
/// ([`sample::read_located`]: our finders, a homography, rqrr's decoder),
/// which costs a fraction of rqrr's grid fit: from the frame, or with
/// `masked` from an unsharp-masked crop ([`read_deblurred`]; a second
/// pass, so that codes the frame's samples read are not delayed by it).
/// `true` when the caller should stop.
fn run_sampled(
    frame: GreyFrame<'_>,
    spots: &mut [Spot],
    masked: bool,
    collector: &mut Collector,
    stop: &dyn Fn(&Collector) -> bool,
) -> bool {
    for spot in spots.iter_mut() {
        if spot.read
            || collector
                .codes
                .iter()
                .any(|c| spot.rect.contains(c.centre()))
        {
            continue;
        }
        if stop(collector) {
            return true;
        }
        let (found, name) = if masked {
            (
                read_deblurred(frame, spot),
                ["deblurred", "deblurred-inverted"],
            )
        } else {
            let [corner, a, b] = spot.finders;
            (
                sample::read_located(frame, corner, a, b, spot.module, spot.inverted),
                ["sampled", "sampled-inverted"],
            )
        };
        if let Some(found) = found {
            spot.read = true;
            let found = vec![Found {
                payload: found.payload,
                corners: found.corners,
            }];
            collector.add(found, FRAME, name[usize::from(spot.inverted)]);
        }
    }
    stop(collector)
}

/// Samples a located code from an unsharp-masked copy of its crop: a
/// defocused code's isolated modules keep too little contrast against
/// their neighbours to threshold; the mask restores some of it (a crude
/// deconvolution). Only the crop is masked, not the frame.
fn read_deblurred(frame: GreyFrame<'_>, spot: &Spot) -> Option<sample::Sampled> {
    let crop = prepare::crop(frame, spot.rect)?;
    let sharp = prepare::sharpen(&crop, DEBLUR_RADIUS, DEBLUR_AMOUNT);
    let (dx, dy) = (spot.rect.x as f64, spot.rect.y as f64);
    let [corner, a, b] = spot.finders.map(|[x, y]| [x - dx, y - dy]);
    let mut found =
        sample::read_located(sharp.as_frame(), corner, a, b, spot.module, spot.inverted)?;
    for c in &mut found.corners {
        c[0] += dx as f32;
        c[1] += dy as f32;
    }
    Some(found)
}

/// The frame itself as a working image.
const FRAME: Placement = Placement {
    scale: 1.0,
    dx: 0.0,
    dy: 0.0,
};

/// Whether two rectangles cover about the same area (corners within a
/// tenth of the larger side).
fn similar(a: &Rect, b: &Rect) -> bool {
    let tol = (a.width.max(a.height).max(b.width).max(b.height) / 10) as isize;
    let d = |p: usize, q: usize| (p as isize - q as isize).abs() <= tol;
    d(a.x, b.x)
        && d(a.y, b.y)
        && d(a.x + a.width, b.x + b.width)
        && d(a.y + a.height, b.y + b.height)
}

/// The whole factor by which a frame is shrunk for a finder search on a
/// copy of at most `side` pixels a side.
fn search_factor(frame: GreyFrame<'_>, side: usize) -> usize {
    frame.width().max(frame.height()).div_ceil(side.max(16))
}

/// How the copy finder patterns are searched in is prepared.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Search {
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

/// Unsharp-mask radius of the rescue search and of the rescue sampling
/// (box radius, pixels of the copy it is applied to): about the blur of a
/// defocused phone screen a module or less wide. Radii 1 and 2 at
/// amounts 1 and 2 were measured on generated frames (seeds apart from the
/// corpus'); 2 and 2 read the most (docs/qr.md).
const DEBLUR_RADIUS: usize = 2;

/// Unsharp-mask amount of the rescue search and sampling.
const DEBLUR_AMOUNT: f32 = 2.0;

/// Finds codes by their finder patterns on a copy of the frame shrunk by
/// the whole factor `factor` (prepared as `search` says), in both
/// polarities, and cuts each from the full frame, scaled to
/// [`LOCATE_MODULE_PX`] per module and inverted if it is a dark-mode code.
fn locate_codes(frame: GreyFrame<'_>, factor: usize, search: Search) -> Vec<Spot> {
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
        for group in locate::group_finders(&finders, 4) {
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
    /// the frame's pixels. Never takes much longer than the budget; an
    /// empty result means no code was read.
    pub fn decode(&self, frame: GreyFrame<'_>) -> Vec<DecodedCode> {
        let opts = &self.options;
        let clock = Clock::new(opts.budget);
        let out_of_time = || !clock.may_start();
        let mut collector = Collector {
            seen: HashSet::new(),
            codes: Vec::new(),
        };
        let done = |c: &Collector| !opts.find_all && !c.codes.is_empty();

        let stop = |c: &Collector| done(c) || out_of_time();

        // Located codes first: finder patterns grouped in threes give each
        // code's place and module size; rqrr sees one crop per code at
        // LOCATE_MODULE_PX per module, in the right polarity. The first
        // threshold here, the other two after the (cheaper) regions of
        // interest; then, when the search ran on a copy shrunk by 2 or
        // more, a search on one twice as large (small codes in large
        // frames and photos).
        let search_started = Instant::now();
        let first_factor = search_factor(frame, LOCATE_SIDE);
        let mut located = locate_codes(frame, first_factor, Search::Plain);
        let search_took = search_started.elapsed();
        if run_sampled(frame, &mut located, false, &mut collector, &stop) {
            return collector.codes;
        }
        // The rescue search: defocus and moiré can hide every finder from
        // the plain search (their one-module rings blur shut or break into
        // a checkerboard); a copy shrunk by at least 2 and unsharp-masked
        // often shows them again. Its codes are sampled from the frame;
        // then every located code not read yet is sampled from a masked
        // crop (a code both searches found, once).
        if !stop(&collector) {
            let mut rescued = locate_codes(frame, first_factor.max(2), Search::Deblurred);
            if run_sampled(frame, &mut rescued, false, &mut collector, &stop)
                || run_sampled(frame, &mut located, true, &mut collector, &stop)
            {
                return collector.codes;
            }
            rescued.retain(|s| {
                !located
                    .iter()
                    .any(|l| l.inverted == s.inverted && similar(&l.rect, &s.rect))
            });
            if run_sampled(frame, &mut rescued, true, &mut collector, &stop) {
                return collector.codes;
            }
        }

        if run_spots(frame, &mut located, &LOCATED[..1], &mut collector, &stop) {
            return collector.codes;
        }

        // Regions of interest first: crops around edge-dense blobs, at
        // full resolution (or shrunk to max_side), are far cheaper for rqrr.
        for rect in prepare::regions_of_interest(frame, 16, 2, 4) {
            // A region around a code already read holds nothing new (a
            // second code there is still found by the whole-frame passes).
            if collector.codes.iter().any(|c| rect.contains(c.centre())) {
                continue;
            }
            let Some(crop) = prepare::crop(frame, rect) else {
                continue;
            };
            let sub = prepare::downscale(crop.as_frame(), opts.max_side);
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
            for (name, attempt) in ROI {
                if done(&collector) || out_of_time() {
                    return collector.codes;
                }
                collector.add(attempt.run(&img), at, name);
            }
        }

        if run_spots(frame, &mut located, &LOCATED[1..], &mut collector, &stop) {
            return collector.codes;
        }
        // The search at twice the size costs up to four times the first
        // one (a single step of 20 ms or more on a 1080p frame full of
        // moiré): it starts only if that still fits the budget.
        let larger_fits = clock.start.elapsed() + search_took * 4 <= opts.budget;
        if frame.width().max(frame.height()) > LOCATE_SIDE && larger_fits && !stop(&collector) {
            let tried: Vec<Rect> = located.iter().map(|s| s.rect).collect();
            let mut larger =
                locate_codes(frame, search_factor(frame, 2 * LOCATE_SIDE), Search::Plain);
            // A code found again at about the same place was tried.
            larger.retain(|s| !tried.iter().any(|r| similar(r, &s.rect)));
            if run_sampled(frame, &mut larger, false, &mut collector, &stop)
                || run_sampled(frame, &mut larger, true, &mut collector, &stop)
            {
                return collector.codes;
            }
            if run_spots(frame, &mut larger, &LOCATED, &mut collector, &stop) {
                return collector.codes;
            }
        }

        let scaled = prepare::downscale(frame, opts.max_side);
        let mut work = scaled.image;
        prepare::contrast_stretch(&mut work, 1.0, 99.0);
        let whole = Placement {
            scale: scaled.scale,
            dx: 0.0,
            dy: 0.0,
        };
        for (name, attempt) in WHOLE_FRAME {
            if done(&collector) || out_of_time() {
                return collector.codes;
            }
            collector.add(attempt.run(&work), whole, name);
        }

        // Half resolution: heavy blur, large codes, strong moiré.
        if work.width().min(work.height()) >= 120 && !done(&collector) && !out_of_time() {
            let half = prepare::downscale_by(work.as_frame(), 1.6);
            let mut himg = half.image;
            prepare::contrast_stretch(&mut himg, 1.0, 99.0);
            let at = Placement {
                scale: scaled.scale * half.scale,
                dx: 0.0,
                dy: 0.0,
            };
            for (name, attempt) in HALF {
                if done(&collector) || out_of_time() {
                    return collector.codes;
                }
                collector.add(attempt.run(&himg), at, name);
            }
        }

        // Small frames: twice the size, for codes with modules of 2–4 pixels.
        // An attempt there works on four times the pixels of a whole-frame
        // one: it starts only if four of the longest steps so far still
        // fit (else a gate frame with no code overran its 25 ms budget by
        // half at 640×480, the look-ahead knowing only the shorter steps).
        let upscaled_fits = clock.start.elapsed() + clock.longest.get() * 4 <= opts.budget;
        if scaled.scale <= 1.0
            && work.width().max(work.height()) <= opts.max_side / 2
            && upscaled_fits
        {
            let mut big = prepare::upscale2(&work);
            prepare::contrast_stretch(&mut big, 1.0, 99.0);
            let at = Placement {
                scale: 0.5,
                dx: 0.0,
                dy: 0.0,
            };
            for (name, attempt) in UPSCALED {
                if done(&collector) || out_of_time() {
                    return collector.codes;
                }
                collector.add(attempt.run(&big), at, name);
            }
        }

        // Full-resolution tiles when the frame was shrunk noticeably: small
        // codes whose modules the downscale made too fine.
        if scaled.scale > 1.25 {
            let side = opts.max_side.max(64);
            let rects: Vec<Rect> = prepare::tiles(frame.width(), frame.height(), side, side / 3);
            for rect in rects {
                let Some(mut tile) = prepare::crop(frame, rect) else {
                    continue;
                };
                prepare::contrast_stretch(&mut tile, 1.0, 99.0);
                let at = Placement {
                    scale: 1.0,
                    dx: rect.x as f32,
                    dy: rect.y as f32,
                };
                for (name, attempt) in TILE {
                    if done(&collector) || out_of_time() {
                        return collector.codes;
                    }
                    collector.add(attempt.run(&tile), at, name);
                }
            }
        }
        collector.codes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A decoder that never runs out of time: read assertions must not
    /// depend on how loaded the test machine is (speed is the benchmark's).
    fn unhurried(find_all: bool) -> Decoder {
        Decoder::new(DecodeOptions {
            budget: Duration::from_secs(600),
            find_all,
            ..DecodeOptions::default()
        })
    }
    use crate::encode::render_token;
    use crate::prepare::invert;

    fn payload(n: usize, seed: u8) -> Vec<u8> {
        (0..n)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    /// Pastes a rendered code into a larger grey frame at (x0, y0).
    fn place(code: &GreyImage, w: usize, h: usize, x0: usize, y0: usize, bg: u8) -> GreyImage {
        let mut data = vec![bg; w * h];
        for y in 0..code.height() {
            for x in 0..code.width() {
                data[(y0 + y) * w + x0 + x] = code.get(x, y).unwrap();
            }
        }
        GreyImage::new(w, h, data).unwrap()
    }

    #[test]
    fn reads_a_clean_binary_token_with_corners_in_frame_pixels() {
        let p = payload(199, 7);
        let code = render_token(&p, 5, 4).unwrap();
        let frame = place(&code, 1280, 720, 300, 100, 255);
        let got = unhurried(false).decode(frame.as_frame());
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].payload, p);
        // Code area (without quiet zone) starts at 300 + 4*5 = 320.
        let [tl, _, br, _] = got[0].corners;
        let size = (code.width() - 40) as f32;
        assert!(
            (tl[0] - 320.0).abs() < 8.0 && (tl[1] - 120.0).abs() < 8.0,
            "{tl:?}"
        );
        assert!((br[0] - (320.0 + size)).abs() < 8.0, "{br:?}");
        let [cx, cy] = got[0].centre();
        let mid = size / 2.0;
        assert!((cx - 320.0 - mid).abs() < 8.0 && (cy - 120.0 - mid).abs() < 8.0);
    }

    #[test]
    fn a_located_code_is_read_by_sampling_first() {
        // Upright and dark mode: the sampler reads both before rqrr's
        // detector runs, with corners where the code is.
        for inverted in [false, true] {
            let p = payload(199, 11);
            let mut code = render_token(&p, 6, 4).unwrap();
            if inverted {
                invert(&mut code);
            }
            let bg = if inverted { 0 } else { 255 };
            let frame = place(&code, 1280, 720, 400, 200, bg);
            let got = unhurried(false).decode(frame.as_frame());
            assert_eq!(got.len(), 1);
            assert_eq!(got[0].payload, p);
            let want = if inverted {
                "sampled-inverted"
            } else {
                "sampled"
            };
            assert_eq!(got[0].strategy, want);
            let [tl, _, br, _] = got[0].corners;
            let side = 57.0 * 6.0;
            assert!(
                (tl[0] - 424.0).abs() < 3.0 && (tl[1] - 224.0).abs() < 3.0,
                "{tl:?}"
            );
            assert!(
                (br[0] - 424.0 - side).abs() < 3.0 && (br[1] - 224.0 - side).abs() < 3.0,
                "{br:?}"
            );
        }
    }

    #[test]
    fn reads_an_inverted_code() {
        let p = payload(199, 9);
        let mut code = render_token(&p, 4, 4).unwrap();
        invert(&mut code);
        let frame = place(&code, 640, 480, 100, 100, 0);
        let got = unhurried(false).decode(frame.as_frame());
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].payload, p);
        assert!(got[0].strategy.contains("inverted"));
    }

    #[test]
    fn returns_every_code_once() {
        let a = payload(199, 1);
        let b = payload(120, 2);
        let ca = render_token(&a, 4, 4).unwrap();
        let cb = render_token(&b, 4, 4).unwrap();
        let mut frame = place(&ca, 1280, 720, 20, 20, 255);
        for y in 0..cb.height() {
            for x in 0..cb.width() {
                let i = (300 + y) * 1280 + 700 + x;
                frame.data_mut()[i] = cb.get(x, y).unwrap();
            }
        }
        let got = unhurried(true).decode(frame.as_frame());
        let mut payloads: Vec<_> = got.iter().map(|c| c.payload.clone()).collect();
        payloads.sort();
        let mut want = vec![a, b];
        want.sort();
        assert_eq!(payloads, want);
    }

    #[test]
    fn empty_and_noise_frames_give_nothing() {
        let blank = GreyImage::filled(1920, 1080, 200).unwrap();
        assert!(decode_frame(blank.as_frame()).is_empty());
        let mut state = 12345u32;
        let noise: Vec<u8> = (0..1920 * 1080)
            .map(|_| {
                state = state.wrapping_mul(1_103_515_245).wrapping_add(12345);
                (state >> 24) as u8
            })
            .collect();
        let noise = GreyImage::new(1920, 1080, noise).unwrap();
        assert!(decode_frame(noise.as_frame()).is_empty());
        // How long they take is the benchmark's (`no-code` rows), not a
        // timed test's.
    }

    #[test]
    fn the_clock_lets_the_first_attempt_run_and_stops_when_the_next_cannot_fit() {
        let none = Clock::new(Duration::ZERO);
        assert!(none.may_start());
        assert!(!none.may_start());
        let roomy = Clock::new(Duration::from_secs(600));
        assert!(roomy.may_start() && roomy.may_start());
        let tight = Clock::new(Duration::from_millis(30));
        assert!(tight.may_start());
        std::thread::sleep(Duration::from_millis(20));
        // 20 ms spent plus a 20 ms step would end past 30 ms.
        assert!(!tight.may_start());
    }

    /// A code of `px` pixels per module turned by `deg` degrees about its
    /// centre (nearest module, 4×4 supersampled), centred in a `w`×`h`
    /// frame of grey 140: light modules 225, dark 35.
    fn turned(p: &[u8], px: f64, deg: f64, w: usize, h: usize) -> GreyImage {
        let m = crate::encode::modules(p).unwrap();
        let n = m.size as f64;
        let (c, s) = (deg.to_radians().cos(), deg.to_radians().sin());
        let mut data = vec![140u8; w * h];
        for y in 0..h {
            for x in 0..w {
                let mut acc = 0u32;
                for k in 0..16 {
                    let fx = x as f64 + (k % 4) as f64 / 4.0 - 0.375 - w as f64 / 2.0;
                    let fy = y as f64 + (k / 4) as f64 / 4.0 - 0.375 - h as f64 / 2.0;
                    let u = (c * fx + s * fy) / px + n / 2.0;
                    let v = (-s * fx + c * fy) / px + n / 2.0;
                    acc += if u < -4.0 || v < -4.0 || u >= n + 4.0 || v >= n + 4.0 {
                        140
                    } else if m.is_dark(u.floor() as isize, v.floor() as isize) {
                        35
                    } else {
                        225
                    };
                }
                data[y * w + x] = (acc / 16) as u8;
            }
        }
        GreyImage::new(w, h, data).unwrap()
    }

    /// Payloads read by sampling the codes `spots` holds.
    fn sampled(frame: GreyFrame<'_>, spots: &mut [Spot]) -> Vec<Vec<u8>> {
        let mut collector = Collector {
            seen: HashSet::new(),
            codes: Vec::new(),
        };
        for masked in [false, true] {
            run_sampled(frame, spots, masked, &mut collector, &|_: &Collector| false);
        }
        collector.codes.into_iter().map(|c| c.payload).collect()
    }

    #[test]
    fn the_rescue_search_finds_the_finders_of_a_defocused_code() {
        // 4.5 px modules turned by 33 degrees, then defocused (two 7×7 box
        // passes, a blur of about 2.8 px): the one-module light ring of
        // each finder closes up and the plain search finds no code; the
        // rescue search's shrunk, unsharp-masked copy shows the three
        // finders where they are.
        let p = payload(199, 21);
        let sharp = turned(&p, 4.5, 33.0, 1280, 720);
        let frame = prepare::box_blur(&prepare::box_blur(&sharp, 3), 3);
        let factor = search_factor(frame.as_frame(), LOCATE_SIDE);
        assert!(locate_codes(frame.as_frame(), factor, Search::Plain).is_empty());
        let rescued = locate_codes(frame.as_frame(), factor.max(2), Search::Deblurred);
        assert_eq!(rescued.len(), 1);
        // Finder centres 25 modules from the code's centre (version 10,
        // 57 modules) at 45 degrees off the code's axes, turned by 33.
        let (c, s) = (33f64.to_radians().cos(), 33f64.to_radians().sin());
        let truth = [(-25.0, -25.0), (25.0, -25.0), (-25.0, 25.0)].map(|(u, v)| {
            [
                640.0 + 4.5 * (c * u - s * v) - 0.5,
                360.0 + 4.5 * (s * u + c * v) - 0.5,
            ]
        });
        for [x, y] in rescued[0].finders {
            let near = truth.iter().any(|t| (t[0] - x).hypot(t[1] - y) < 1.5 * 4.5);
            assert!(near, "{x} {y} not at a finder: {truth:?}");
        }
    }

    #[test]
    fn a_defocused_code_is_read_from_an_unsharp_masked_crop() {
        // 4 px modules, the corpus generator's focus blur (two 5×5 box
        // passes): located, but isolated modules keep too little contrast
        // to threshold when sampled from the frame; the masked crop reads.
        let p = payload(199, 24);
        let sharp = turned(&p, 4.0, 33.0, 1280, 720);
        let frame = prepare::box_blur(&prepare::box_blur(&sharp, 2), 2);
        let factor = search_factor(frame.as_frame(), LOCATE_SIDE);
        let spots = locate_codes(frame.as_frame(), factor, Search::Plain);
        assert_eq!(spots.len(), 1);
        let [corner, a, b] = spots[0].finders;
        let f = frame.as_frame();
        assert!(sample::read_located(f, corner, a, b, spots[0].module, false).is_none());
        let read = read_deblurred(f, &spots[0]).map(|s| s.payload);
        assert_eq!(read, Some(p.clone()));
        let got = unhurried(false).decode(f);
        assert_eq!(
            got.first().map(|c| (c.payload.clone(), c.strategy)),
            Some((p, "deblurred"))
        );
    }

    #[test]
    fn the_rescue_search_finds_a_code_under_a_checkerboard_moire() {
        // A VGA frame, 3 px modules, the light areas of the screen broken
        // into a one-pixel checkerboard (a screen's pixel grid point-sampled
        // by the camera): the plain search, at full size, sees runs of one
        // pixel; the rescue search's copy, shrunk by 2, averages them out.
        let p = payload(199, 22);
        let mut frame = turned(&p, 3.0, 12.0, 640, 480);
        for (i, px) in frame.data_mut().iter_mut().enumerate() {
            let (x, y) = (i % 640, i / 640);
            if *px > 150 && (x + y) % 2 == 0 {
                *px = 90;
            }
        }
        let factor = search_factor(frame.as_frame(), LOCATE_SIDE);
        assert_eq!(factor, 1);
        let mut plain = locate_codes(frame.as_frame(), factor, Search::Plain);
        assert!(sampled(frame.as_frame(), &mut plain).is_empty());
        let mut rescued = locate_codes(frame.as_frame(), 2, Search::Deblurred);
        assert_eq!(sampled(frame.as_frame(), &mut rescued), vec![p.clone()]);
        let got = unhurried(false).decode(frame.as_frame());
        assert_eq!(got.first().map(|c| c.payload.clone()), Some(p));
    }

    #[test]
    fn groups_of_modules_under_the_floor_are_dropped() {
        // A clean code at 1.2 px per module: found as finders by the run
        // scan at most, never handed to the sampler or rqrr.
        let p = payload(40, 23);
        let code = render_token(&p, 1, 4).unwrap();
        let frame = place(&code, 320, 240, 100, 80, 255);
        for search in [Search::Plain, Search::Deblurred] {
            assert!(locate_codes(frame.as_frame(), 1, search).is_empty());
        }
        // The same code at 3 px per module is located.
        let code = render_token(&p, 3, 4).unwrap();
        let frame = place(&code, 320, 240, 60, 40, 255);
        assert!(!locate_codes(frame.as_frame(), 1, Search::Plain).is_empty());
    }

    #[test]
    fn placement_maps_back_to_source_pixels() {
        let p = Placement {
            scale: 2.0,
            dx: 10.0,
            dy: 20.0,
        };
        assert_eq!(p.map([0.0, 0.0]), [10.5, 20.5]);
    }
}
