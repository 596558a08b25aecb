//! Reading a located code without rqrr's detector: our own finder
//! patterns give the code's place; a homography maps module coordinates to
//! frame pixels; each module is sampled and thresholded; rqrr's decoder
//! (Reed–Solomon and bitstream, [`rqrr::Grid::decode_to`]) reads the bits.
//!
//! rqrr's detector fits its grid by evaluating a ~3,400-sample fitness 81
//! times, twice, for every group of capstone-like blobs: ~84 M instructions
//! per version-10 read, most of a located read's cost. Sampling the grid
//! from finders we already found costs a small fraction of that, and a
//! homography anchored on the bottom-right alignment pattern follows
//! perspective that rqrr's fit (which starts from a parallelogram) can
//! lose. Steps, one function each, each tested on generated codes:
//!
//! 1. [`Homography`]: four point pairs → a projective map.
//! 2. [`orient`] and [`version_estimate`]: which finder is which, and the
//!    version from the finder spacing over the module size.
//! 3. [`timing_sizes`]: the size counted on the two timing lines (their
//!    dark runs), tried before the versions nearest the finder spacing.
//! 4. [`refine_anchor`]: moves a finder or alignment pattern's centre to
//!    where its template (dark/light module layout) has the most contrast;
//!    of the alignment pattern's best places, the one whose homography
//!    makes the timing lines alternate best ([`timing_phase`]) is used.
//! 5. [`sample_modules`] and [`threshold_modules`]: a grey value per module
//!    (five samples), thresholded against the mean of its neighbourhood in
//!    module space (follows glare and gradients whatever the pixel scale).
//! 6. [`timing_fraction`], then [`decode_modules`]: a grid whose timing
//!    lines do not alternate is skipped (rqrr's decoder would spend
//!    milliseconds on it), the others go to rqrr's decoder.
//! 7. In a still, from version 7, when no map from the finders and one
//!    alignment pattern reads: every alignment pattern placed in turn,
//!    outward from the top-left finder, each predicted by a least-squares fit of those
//!    placed so far ([`Homography::fit`]); then a warp bent through all of
//!    them and the timing lines' module boundaries (a thin-plate spline):
//!    strong perspective, labels round a bottle, lens distortion. The
//!    version comes from the version blocks read beside the finders too,
//!    since a bent code's finder spacing misjudges it.

use std::time::Instant;

use super::GreyFrame;
use crate::contain::contained;

/// A projective map from module coordinates `(u, v)` to frame pixels.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Homography {
    m: [f64; 9],
}

impl Homography {
    /// The map taking each `src[i]` to `dst[i]`; `None` when the points are
    /// degenerate (three in a line, repeated points).
    pub fn from_points(src: &[[f64; 2]; 4], dst: &[[f64; 2]; 4]) -> Option<Self> {
        // h = (a b c; d e f; g h 1): two linear equations per point pair.
        let mut a = [[0.0f64; 9]; 8];
        for i in 0..4 {
            let ([u, v], [x, y]) = (src[i], dst[i]);
            a[2 * i] = [u, v, 1.0, 0.0, 0.0, 0.0, -u * x, -v * x, x];
            a[2 * i + 1] = [0.0, 0.0, 0.0, u, v, 1.0, -u * y, -v * y, y];
        }
        let solved = solve8(a)?;
        let mut m = [1.0f64; 9];
        m[..8].copy_from_slice(&solved);
        m.iter().all(|v| v.is_finite()).then_some(Self { m })
    }

    /// The affine map taking `src` to `dst` for three point pairs (the
    /// fourth is completed as a parallelogram on both sides).
    pub fn affine(src: &[[f64; 2]; 3], dst: &[[f64; 2]; 3]) -> Option<Self> {
        let fourth = |p: &[[f64; 2]; 3]| [p[1][0] + p[2][0] - p[0][0], p[1][1] + p[2][1] - p[0][1]];
        Self::from_points(
            &[src[0], src[1], fourth(src), src[2]],
            &[dst[0], dst[1], fourth(dst), dst[2]],
        )
    }

    /// The map that best takes each `src[i]` to `dst[i]` for four or more
    /// point pairs (least squares on the linearised equations, both sides
    /// first moved to their centroid and scaled to unit spread, which
    /// keeps the system well conditioned); `None` when degenerate.
    pub fn fit(src: &[[f64; 2]], dst: &[[f64; 2]]) -> Option<Self> {
        if src.len() != dst.len() || src.len() < 4 {
            return None;
        }
        let (ns, nd) = (Normaliser::of(src)?, Normaliser::of(dst)?);
        // Normal equations (8 × 8, augmented) of the unknowns a…h, i = 1.
        let mut n = [[0.0f64; 9]; 8];
        for (&s, &d) in src.iter().zip(dst) {
            let ([u, v], [x, y]) = (ns.apply(s), nd.apply(d));
            let rows = [
                [u, v, 1.0, 0.0, 0.0, 0.0, -u * x, -v * x, x],
                [0.0, 0.0, 0.0, u, v, 1.0, -u * y, -v * y, y],
            ];
            for r in rows {
                for i in 0..8 {
                    for j in 0..9 {
                        n[i][j] += r[i] * r[j];
                    }
                }
            }
        }
        let solved = solve8(n)?;
        let mut m = [1.0f64; 9];
        m[..8].copy_from_slice(&solved);
        // Undo the normalisations: H = Nd⁻¹ · Hn · Ns.
        let hn = Self { m };
        let h = compose(&nd.inverse(), &compose(&hn.m, &ns.matrix()));
        (h.iter().all(|v| v.is_finite()) && h[8].abs() > 1e-300).then(|| Self {
            m: h.map(|v| v / h[8]),
        })
    }

    /// This map followed by a shift of `(dx, dy)` pixels.
    fn shifted(&self, dx: f64, dy: f64) -> Self {
        let mut m = self.m;
        for k in 0..3 {
            m[k] += dx * m[6 + k];
            m[3 + k] += dy * m[6 + k];
        }
        Self { m }
    }

    /// Where module coordinates `(u, v)` fall in the frame.
    pub fn map(&self, u: f64, v: f64) -> [f64; 2] {
        let m = &self.m;
        let w = m[6] * u + m[7] * v + m[8];
        let w = if w.abs() < 1e-12 { 1e-12 } else { w };
        [
            (m[0] * u + m[1] * v + m[2]) / w,
            (m[3] * u + m[4] * v + m[5]) / w,
        ]
    }
}

/// A similarity moving points to their centroid at a mean distance of √2
/// (Hartley's normalisation for fitting a homography).
struct Normaliser {
    cx: f64,
    cy: f64,
    scale: f64,
}

impl Normaliser {
    fn of(points: &[[f64; 2]]) -> Option<Self> {
        let n = points.len() as f64;
        let cx = points.iter().map(|p| p[0]).sum::<f64>() / n;
        let cy = points.iter().map(|p| p[1]).sum::<f64>() / n;
        let spread = points
            .iter()
            .map(|p| (p[0] - cx).hypot(p[1] - cy))
            .sum::<f64>()
            / n;
        (spread.is_finite() && spread > 1e-9).then(|| Self {
            cx,
            cy,
            scale: std::f64::consts::SQRT_2 / spread,
        })
    }

    fn apply(&self, [x, y]: [f64; 2]) -> [f64; 2] {
        [(x - self.cx) * self.scale, (y - self.cy) * self.scale]
    }

    fn matrix(&self) -> [f64; 9] {
        let k = self.scale;
        [k, 0.0, -k * self.cx, 0.0, k, -k * self.cy, 0.0, 0.0, 1.0]
    }

    fn inverse(&self) -> [f64; 9] {
        let k = 1.0 / self.scale;
        [k, 0.0, self.cx, 0.0, k, self.cy, 0.0, 0.0, 1.0]
    }
}

/// The product of two 3 × 3 matrices (row-major).
fn compose(a: &[f64; 9], b: &[f64; 9]) -> [f64; 9] {
    let mut out = [0.0; 9];
    for r in 0..3 {
        for c in 0..3 {
            out[r * 3 + c] = (0..3).map(|k| a[r * 3 + k] * b[k * 3 + c]).sum();
        }
    }
    out
}

/// Solves an 8 × 8 system given as an augmented matrix; `None` when
/// singular.
fn solve8(mut a: [[f64; 9]; 8]) -> Option<[f64; 8]> {
    if !eliminate(&mut a) {
        return None;
    }
    let mut out = [0.0; 8];
    for (i, slot) in out.iter_mut().enumerate() {
        *slot = a[i][8] / a[i][i];
    }
    Some(out)
}

/// Gauss–Jordan elimination with partial pivoting on an n × n system
/// (n = `rows.len()`) augmented by its right-hand sides: afterwards row i
/// holds `a_ii` and `a_ii · x_i` for each right-hand side. False when
/// singular.
fn eliminate<R: AsMut<[f64]>>(rows: &mut [R]) -> bool {
    let n = rows.len();
    for col in 0..n {
        let Some(pivot) = (col..n).max_by(|&p, &q| {
            rows[p].as_mut()[col]
                .abs()
                .total_cmp(&rows[q].as_mut()[col].abs())
        }) else {
            return false;
        };
        if rows[pivot].as_mut()[col].abs() < 1e-12 {
            return false;
        }
        rows.swap(col, pivot);
        let (before, rest) = rows.split_at_mut(col);
        let Some((pivot_row, after)) = rest.split_first_mut() else {
            return false;
        };
        let pivot_row = pivot_row.as_mut();
        for r in before.iter_mut().chain(after) {
            let r = r.as_mut();
            let f = r[col] / pivot_row[col];
            if f != 0.0 {
                for (x, p) in r.iter_mut().zip(pivot_row.iter()).skip(col) {
                    *x -= f * p;
                }
            }
        }
    }
    true
}

/// Grey level at a sub-pixel position (bilinear), clamped to the frame.
#[inline]
pub fn bilinear(frame: GreyFrame<'_>, x: f64, y: f64) -> f32 {
    let (w, h) = (frame.width(), frame.height());
    if w == 0 || h == 0 {
        return 0.0;
    }
    let x = x.clamp(0.0, (w - 1) as f64);
    let y = y.clamp(0.0, (h - 1) as f64);
    let (x0, y0) = (x as usize, y as usize);
    let (x1, y1) = ((x0 + 1).min(w - 1), (y0 + 1).min(h - 1));
    let (fx, fy) = ((x - x0 as f64) as f32, (y - y0 as f64) as f32);
    let d = frame.data();
    let p = |xx: usize, yy: usize| f32::from(d[yy * w + xx]);
    let top = p(x0, y0) * (1.0 - fx) + p(x1, y0) * fx;
    let bottom = p(x0, y1) * (1.0 - fx) + p(x1, y1) * fx;
    top * (1.0 - fy) + bottom * fy
}

/// Modules per side of a version (21 for version 1, 57 for version 10).
pub fn size_of(version: usize) -> usize {
    17 + 4 * version
}

/// The three finder centres in code order: top-left (the right angle),
/// top-right, bottom-left. A code seen from the front has its top-right
/// finder clockwise from the bottom-left one around the top-left (in
/// image coordinates, y down); a mirrored code is read by rqrr's decoder,
/// which retries transposed.
pub fn orient(corner: [f64; 2], a: [f64; 2], b: [f64; 2]) -> [[f64; 2]; 3] {
    let cross = (a[0] - corner[0]) * (b[1] - corner[1]) - (a[1] - corner[1]) * (b[0] - corner[0]);
    if cross >= 0.0 {
        [corner, a, b]
    } else {
        [corner, b, a]
    }
}

/// The version whose size best fits the finder spacing: centres are
/// `size − 7` modules apart. `module` is the locator's module size, which
/// it measures along rows and columns: a code turned by θ shows finders
/// `1 / max(|cos θ|, |sin θ|)` wider along a row, so that is taken out.
/// Returns the fractional version (callers try the nearest ones).
pub fn version_estimate(finders: &[[f64; 2]; 3], module: f64) -> f64 {
    let [tl, tr, bl] = *finders;
    let (dx, dy) = (tr[0] - tl[0], tr[1] - tl[1]);
    let across = dx.hypot(dy);
    let down = (bl[0] - tl[0]).hypot(bl[1] - tl[1]);
    let theta = dy.atan2(dx);
    let squash = theta.cos().abs().max(theta.sin().abs());
    let module = (module * squash).max(1e-3);
    let size = (across + down) / 2.0 / module + 7.0;
    (size - 17.0) / 4.0
}

/// Reference grey levels: the mean of the dark and of the light modules of
/// the top-left finder pattern under `h` (dark-on-light polarity).
fn finder_levels(frame: GreyFrame<'_>, h: &Homography) -> (f32, f32) {
    let (mut dark, mut light, mut nd, mut nl) = (0.0, 0.0, 0.0, 0.0);
    for y in 0..7 {
        for x in 0..7 {
            let [px, py] = h.map(f64::from(x) + 0.5, f64::from(y) + 0.5);
            let g = bilinear(frame, px, py);
            if finder_dark(x, y) {
                dark += g;
                nd += 1.0;
            } else {
                light += g;
                nl += 1.0;
            }
        }
    }
    (dark / nd, light / nl)
}

/// Whether module (x, y) of a 7×7 finder pattern is dark.
fn finder_dark(x: i32, y: i32) -> bool {
    let ring = x.min(y).min(6 - x).min(6 - y);
    ring != 1
}

/// Whether module (x, y) of a 5×5 alignment pattern is dark.
fn alignment_dark(x: i32, y: i32) -> bool {
    let ring = x.min(y).min(4 - x).min(4 - y);
    ring != 1
}

/// Modules per side counted on the timing lines: from just past the
/// top-left finder's separator to just before the next finder's, row 6
/// (and column 6) alternates dark and light, `(size − 15) / 2` dark modules
/// in all. Each line is walked at a quarter module (under `h`, the affine
/// map of the estimated size; its error of a few percent moves the ends
/// by a fraction of a module) and its dark runs are counted against the
/// midpoint of `levels` (finder dark, finder light). Counting runs, unlike
/// matching a phase, survives perspective (uneven module spacing). Returns
/// the sizes read from row 6 and column 6 (each `None` when its count is
/// not a possible size).
pub fn timing_sizes(
    frame: GreyFrame<'_>,
    h: &Homography,
    size: usize,
    levels: (f32, f32),
) -> [Option<usize>; 2] {
    let mid = (levels.0 + levels.1) / 2.0;
    let dark_low = levels.0 < levels.1;
    let s = size as f64;
    let span = s - 15.0;
    let steps = (span * 4.0).ceil().max(1.0) as usize;
    [false, true].map(|column| {
        let mut runs = 0usize;
        let (mut prev, mut len) = (false, 0usize);
        for k in 0..=steps {
            let t = 7.5 + span * k as f64 / steps as f64;
            let [x, y] = if column { h.map(6.5, t) } else { h.map(t, 6.5) };
            let dark = (bilinear(frame, x, y) < mid) == dark_low;
            if dark == prev {
                len += 1;
            } else {
                (prev, len) = (dark, 1);
            }
            // A run counts once it is a third of a module long (noise
            // makes single-sample runs).
            if dark && len == 2 {
                runs += 1;
            }
        }
        let size = 2 * runs + 15;
        (runs >= 3 && (size - 17).is_multiple_of(4) && size <= size_of(40)).then_some(size)
    })
}

/// A pattern whose centre is refined: its side in modules and which of its
/// modules are dark.
#[derive(Clone, Copy)]
pub enum Pattern {
    /// A 7×7 finder pattern.
    Finder,
    /// A 5×5 alignment pattern.
    Alignment,
}

impl Pattern {
    fn side(self) -> i32 {
        match self {
            Pattern::Finder => 7,
            Pattern::Alignment => 5,
        }
    }

    fn dark(self, x: i32, y: i32) -> bool {
        match self {
            Pattern::Finder => finder_dark(x, y),
            Pattern::Alignment => alignment_dark(x, y),
        }
    }
}

/// The pixel centres of `pattern`'s modules around module `(u, v)` under
/// `h`, row by row, each with whether it is dark: mapped once per anchor,
/// then sampled at every shift the search tries.
fn pattern_modules(h: &Homography, pattern: Pattern, (u, v): (f64, f64)) -> Vec<([f64; 2], bool)> {
    let side = pattern.side();
    let half = f64::from(side) / 2.0;
    (0..side)
        .flat_map(|y| (0..side).map(move |x| (x, y)))
        .map(|(x, y)| {
            let at = h.map(u - half + f64::from(x) + 0.5, v - half + f64::from(y) + 0.5);
            (at, pattern.dark(x, y))
        })
        .collect()
}

/// Contrast of a pattern whose modules are at `modules`, shifted by
/// `(dx, dy)` pixels: mean of its light modules minus mean of its dark
/// ones (dark-on-light; negated when `inverted`).
fn pattern_contrast(
    frame: GreyFrame<'_>,
    modules: &[([f64; 2], bool)],
    (dx, dy): (f64, f64),
    inverted: bool,
) -> f32 {
    let (mut dark, mut light, mut nd, mut nl) = (0.0, 0.0, 0.0f32, 0.0f32);
    for &([px, py], is_dark) in modules {
        let g = bilinear(frame, px + dx, py + dy);
        if is_dark {
            dark += g;
            nd += 1.0;
        } else {
            light += g;
            nl += 1.0;
        }
    }
    let c = light / nl - dark / nd;
    if inverted { -c } else { c }
}

/// Places a pattern whose centre `h` predicts at module `(u, v)`: the
/// pixel offsets within `radius` modules where the pattern shows the most
/// contrast, best first, at most `keep` of them at least two modules
/// apart (a coarse search at half-module steps, then a fine one at a
/// tenth of a module around each). Each is the centre in pixels and its
/// contrast; none under `min_contrast` (nothing there looks like the
/// pattern). Several are kept because, far from the finders, data modules
/// can mimic an alignment pattern: the caller checks each.
#[allow(clippy::too_many_arguments)]
pub fn refine_anchor(
    frame: GreyFrame<'_>,
    h: &Homography,
    pattern: Pattern,
    (u, v): (f64, f64),
    radius: f64,
    inverted: bool,
    min_contrast: f32,
    keep: usize,
) -> Vec<([f64; 2], f32)> {
    let centre = h.map(u, v);
    let right = h.map(u + 1.0, v);
    let down = h.map(u, v + 1.0);
    let module = ((right[0] - centre[0]).hypot(right[1] - centre[1])
        + (down[0] - centre[0]).hypot(down[1] - centre[1]))
        / 2.0;
    if !(module.is_finite() && module > 0.3) {
        return Vec::new();
    }
    let modules = pattern_modules(h, pattern, (u, v));
    let score = |dx: f64, dy: f64| pattern_contrast(frame, &modules, (dx, dy), inverted);
    // Coarse grid: every position's score, then the best separated ones.
    // Half-module steps, but at most 33×33 positions (a wide search for a
    // large version, often a false finder group, stays cheap).
    let reach = ((radius * 2.0).ceil() as i32).min(MAX_REACH);
    let step = radius * module / f64::from(reach.max(1));
    let mut coarse: Vec<(f64, f64, f32)> = Vec::new();
    for j in -reach..=reach {
        for i in -reach..=reach {
            let (dx, dy) = (f64::from(i) * step, f64::from(j) * step);
            if dx.hypot(dy) <= radius * module + 1e-9 {
                coarse.push((dx, dy, score(dx, dy)));
            }
        }
    }
    coarse.sort_by(|a, b| b.2.total_cmp(&a.2));
    let mut out: Vec<([f64; 2], f32)> = Vec::new();
    let mut seeds: Vec<(f64, f64)> = Vec::new();
    for &(dx, dy, s) in &coarse {
        if out.len() >= keep || s < min_contrast * 0.5 {
            break;
        }
        if seeds
            .iter()
            .any(|&(sx, sy)| (sx - dx).hypot(sy - dy) < 2.0 * module)
        {
            continue;
        }
        seeds.push((dx, dy));
        let mut best = (dx, dy, s);
        let fine = module / 10.0;
        for j in -5..=5 {
            for i in -5..=5 {
                let (fx, fy) = (dx + f64::from(i) * fine, dy + f64::from(j) * fine);
                let sc = score(fx, fy);
                if sc > best.2 {
                    best = (fx, fy, sc);
                }
            }
        }
        if best.2 >= min_contrast {
            out.push(([centre[0] + best.0, centre[1] + best.1], best.2));
        }
    }
    out
}

/// Coarse steps each way from a predicted anchor, at most.
const MAX_REACH: i32 = 16;

/// Where the module boundaries of a timing line really are under `h`: for
/// a code bent round a bottle or a pillar, whose columns (or rows) one
/// homography from the finders spaces evenly when they are wide in the
/// middle and narrow at the edges. Row 6 (`along_row`) or column 6 is
/// walked at a sixteenth of a module from inside the first finder to
/// inside the second; module c of it is dark for even c (the finders'
/// edge rows, the separators, the timing modules), so each boundary k
/// (7 … size − 7) must show up once and in order, dark to light for odd
/// k. Returns the knots (k, where it is), with the finder centres (exact
/// under `h`, which was built on them) at both ends; `None` otherwise.
pub fn timing_knots(
    frame: GreyFrame<'_>,
    h: &dyn Fn(f64, f64) -> [f64; 2],
    size: usize,
    levels: (f32, f32),
    along_row: bool,
) -> Option<Vec<(f64, f64)>> {
    const STEP: f64 = 1.0 / 16.0;
    if size < 21 {
        return None;
    }
    let mid = (levels.0 + levels.1) / 2.0;
    let dark_low = levels.0 < levels.1;
    let s = size as f64;
    let from = 4.0;
    let steps = ((s - 8.0) / STEP) as usize;
    let mut dark: Vec<bool> = (0..=steps)
        .map(|i| {
            let t = from + i as f64 * STEP;
            let sum: f32 = [6.3, 6.5, 6.7]
                .iter()
                .map(|&across| {
                    let (u, v) = if along_row { (t, across) } else { (across, t) };
                    let [x, y] = h(u, v);
                    bilinear(frame, x, y)
                })
                .sum();
            (sum / 3.0 < mid) == dark_low
        })
        .collect();
    // A single sample against both neighbours is noise, not a module.
    for i in 1..dark.len().saturating_sub(1) {
        if dark[i - 1] == dark[i + 1] && dark[i] != dark[i - 1] {
            dark[i] = dark[i - 1];
        }
    }
    let mut knots = vec![(3.5, 3.5)];
    let mut next = 7usize;
    for i in 1..dark.len() {
        if dark[i] == dark[i - 1] {
            continue;
        }
        if next > size - 7 || dark[i - 1] != (next % 2 == 1) {
            return None;
        }
        knots.push((next as f64, from + (i as f64 - 0.5) * STEP));
        next += 1;
    }
    if next != size - 6 {
        return None;
    }
    knots.push((s - 3.5, s - 3.5));
    knots.windows(2).all(|w| w[1].1 > w[0].1).then_some(knots)
}

/// The piecewise-linear map through `knots` (ascending in both), extended
/// past the ends along the end segments; the identity without knots.
fn through(knots: &[(f64, f64)], x: f64) -> f64 {
    let n = knots.len();
    if n < 2 {
        return x;
    }
    let at = knots.partition_point(|k| k.0 <= x).clamp(1, n - 1);
    let ((x0, y0), (x1, y1)) = (knots[at - 1], knots[at]);
    y0 + (x - x0) * (y1 - y0) / (x1 - x0)
}

/// How well the timing lines (row 6 and column 6, between the finders)
/// alternate under `h` for a code of `size` modules: the fraction of
/// their modules on the expected side of the midpoint of `levels` (finder
/// dark, finder light). Near 1 under the right map; a misplaced fourth
/// point bends the lines out of phase.
pub fn timing_phase(frame: GreyFrame<'_>, h: &Homography, size: usize, levels: (f32, f32)) -> f32 {
    let mid = (levels.0 + levels.1) / 2.0;
    let dark_low = levels.0 < levels.1;
    let (mut good, mut n) = (0u32, 0u32);
    for i in 8..size.saturating_sub(8) {
        let want_dark = i % 2 == 0;
        for (u, v) in [(i as f64 + 0.5, 6.5), (6.5, i as f64 + 0.5)] {
            let [x, y] = h.map(u, v);
            if ((bilinear(frame, x, y) < mid) == dark_low) == want_dark {
                good += 1;
            }
            n += 1;
        }
    }
    if n == 0 { 0.0 } else { good as f32 / n as f32 }
}

/// The grey level of every module of a `size`×`size` code under `h`, row
/// by row: the mean of five samples (the centre and four at a quarter
/// module from it), which averages out pixel noise, JPEG blocks and screen
/// pixels without reaching into the neighbours.
pub fn sample_modules(frame: GreyFrame<'_>, h: &Homography, size: usize) -> Vec<f32> {
    sample_modules_by(frame, size, |u, v| h.map(u, v))
}

/// [`sample_modules`] under any map from module space to frame pixels.
fn sample_modules_by(
    frame: GreyFrame<'_>,
    size: usize,
    map: impl Fn(f64, f64) -> [f64; 2],
) -> Vec<f32> {
    const OFFS: [(f64, f64); 5] = [
        (0.5, 0.5),
        (0.25, 0.5),
        (0.75, 0.5),
        (0.5, 0.25),
        (0.5, 0.75),
    ];
    let mut out = Vec::with_capacity(size * size);
    for y in 0..size {
        for x in 0..size {
            let mut sum = 0.0;
            for (ou, ov) in OFFS {
                let [px, py] = map(x as f64 + ou, y as f64 + ov);
                sum += bilinear(frame, px, py);
            }
            out.push(sum / OFFS.len() as f32);
        }
    }
    out
}

/// Dark modules of a sampled grid: each module against the mean of the
/// `(2 × radius + 1)²` modules around it (in module space, so the window
/// follows the code whatever its pixel size; about half of a code's
/// modules are dark, so the local mean sits between the two levels and
/// follows glare and gradients). `radius` 0 thresholds at the global mean.
/// `inverted` reads light modules as dark (dark-mode codes).
pub fn threshold_modules(grey: &[f32], size: usize, radius: usize, inverted: bool) -> Vec<bool> {
    if size == 0 || grey.len() != size * size {
        return Vec::new();
    }
    // Integral image (size + 1)² of the grey levels.
    let s1 = size + 1;
    let mut sum = vec![0.0f64; s1 * s1];
    for y in 0..size {
        let mut row = 0.0;
        for x in 0..size {
            row += f64::from(grey[y * size + x]);
            sum[(y + 1) * s1 + x + 1] = sum[y * s1 + x + 1] + row;
        }
    }
    let r = if radius == 0 { size } else { radius };
    let mut out = Vec::with_capacity(size * size);
    for y in 0..size {
        let (y0, y1) = (y.saturating_sub(r), (y + r + 1).min(size));
        for x in 0..size {
            let (x0, x1) = (x.saturating_sub(r), (x + r + 1).min(size));
            let total =
                sum[y1 * s1 + x1] - sum[y0 * s1 + x1] - sum[y1 * s1 + x0] + sum[y0 * s1 + x0];
            let mean = total / ((y1 - y0) * (x1 - x0)) as f64;
            let g = f64::from(grey[y * size + x]);
            out.push(if inverted { g > mean } else { g < mean });
        }
    }
    out
}

/// rqrr's decoder (format, Reed–Solomon, bitstream; byte mode read as raw
/// bytes) on a bit matrix, `true` for dark. A panic inside rqrr counts as
/// no code.
pub fn decode_modules(size: usize, dark: &[bool]) -> Option<Vec<u8>> {
    if size < 21 || dark.len() != size * size {
        return None;
    }
    contained(|| {
        let grid = rqrr::Grid::new(rqrr::SimpleGrid::from_func(size, |x, y| dark[y * size + x]));
        let mut payload = Vec::new();
        grid.decode_to(&mut payload).ok().map(|_| payload)
    })
    .flatten()
}

/// The version-information codewords (BCH(18, 6)) of versions 7 to 40.
const VERSION_INFO: [u32; 34] = [
    0x07c94, 0x085bc, 0x09a99, 0x0a4d3, 0x0bbf6, 0x0c762, 0x0d847, 0x0e60d, 0x0f928, 0x10b78,
    0x1145d, 0x12a17, 0x13532, 0x149a6, 0x15683, 0x168c9, 0x177ec, 0x18ec4, 0x191e1, 0x1afab,
    0x1b08e, 0x1cc1a, 0x1d33f, 0x1ed75, 0x1f250, 0x209d5, 0x216f0, 0x228ba, 0x2379f, 0x24b0b,
    0x2542e, 0x26a64, 0x27541, 0x28c69,
];

/// Of the two version-information blocks of a code of `size` modules
/// (versions ≥ 7), the one nearest to a version's codeword: how many bits
/// apart, and the version (a read code's is within 3: the code corrects 3
/// errors). Bit `i` sits at module `(i / 3, size − 11 + i % 3)` and,
/// transposed, at `(size − 11 + i % 3, i / 3)`.
fn version_blocks(dark: impl Fn(usize, usize) -> bool, size: usize) -> Option<(u32, usize)> {
    if size < size_of(7) {
        return None;
    }
    [false, true]
        .into_iter()
        .map(|transposed| {
            nearest_version((0..18).fold(0u32, |word, i| {
                let (a, b) = (i / 3, size - 11 + i % 3);
                let (x, y) = if transposed { (b, a) } else { (a, b) };
                word | (u32::from(dark(x, y)) << i)
            }))
        })
        // The first block on a tie (as a gate always read them).
        .min_by_key(|&(distance, _)| distance)
}

/// The version whose version-information codeword is nearest to `word`
/// (bit i of the block in bit i), and how many bits apart.
fn nearest_version(word: u32) -> (u32, usize) {
    VERSION_INFO
        .iter()
        .enumerate()
        .map(|(k, &code)| ((word ^ code).count_ones(), k + 7))
        .min()
        .unwrap_or((u32::MAX, 0))
}

/// Versions (7 and up) read straight from the version-information blocks
/// beside the top-right and bottom-left finders, before the size is
/// known: a code bent round a bottle shows its finders narrower than its
/// middle, and the finder spacing then suggests a version or more too
/// many. Each block is sampled on `h` (the map of a guessed size, which
/// passes through the finder centres) with its offsets from its finder
/// scaled by 0.7 to 1.4, which takes out the guess's error there. A
/// version is named when one block reads as its codeword with at most one
/// bit wrong at some scale, or both blocks with at most two (random bits
/// do either about one time in 200 a scale, by our estimate; a false name
/// costs one more size tried).
fn versions_beside_finders(
    frame: GreyFrame<'_>,
    h: &Homography,
    size: usize,
    (dark, light): (f32, f32),
) -> Vec<usize> {
    let s = size as f64;
    // The nearest version and its distance at each scale, per block.
    let read = |beside_top_right: bool| -> Vec<(u32, usize)> {
        (0..=14)
            .map(|step| {
                let k = 0.7 + 0.05 * f64::from(step);
                nearest_version((0..18).fold(0u32, |word, i| {
                    // Bit i: 3 wide across the block, 6 along it.
                    let (across, along) = (-7.0 + (i % 3) as f64, (i / 3) as f64 - 3.0);
                    let [x, y] = if beside_top_right {
                        h.map(s - 3.5 + across * k, 3.5 + along * k)
                    } else {
                        h.map(3.5 + along * k, s - 3.5 + across * k)
                    };
                    let g = bilinear(frame, x, y);
                    word | (u32::from((g - dark).abs() < (g - light).abs()) << i)
                }))
            })
            .collect()
    };
    let (right, left) = (read(true), read(false));
    let best = |reads: &[(u32, usize)], version: usize| {
        reads
            .iter()
            .filter(|r| r.1 == version)
            .map(|r| r.0)
            .min()
            .unwrap_or(u32::MAX)
    };
    let mut named: Vec<(u32, usize)> = (7..=40)
        .filter_map(|v| {
            let (a, b) = (best(&right, v), best(&left, v));
            (a.min(b) <= 1 || a.max(b) <= 2).then_some((a.saturating_add(b), v))
        })
        .collect();
    named.sort();
    named.into_iter().map(|(_, v)| v).collect()
}

/// Fewest timing-line modules, as a fraction, that must alternate in a
/// sampled grid before rqrr's decoder runs on it. On 150 generated frames
/// (seeds apart from the corpus') every grid that decoded had 0.95 or
/// more; grids that did not were mostly 0.45–0.75.
const MIN_TIMING: f32 = 0.8;

/// The fraction of the timing lines' modules (row and column 6 between
/// the finders' separators) that alternate as they must in a thresholded
/// grid, `dark[y * size + x]`.
pub fn timing_fraction(size: usize, dark: &[bool]) -> f32 {
    if size < 21 || dark.len() != size * size {
        return 0.0;
    }
    let mut good = 0u32;
    for i in 8..size - 8 {
        let want = i % 2 == 0;
        good += u32::from(dark[6 * size + i] == want) + u32::from(dark[i * size + 6] == want);
    }
    good as f32 / (2 * (size - 16)) as f32
}

/// A code read by sampling: its payload and its corners in frame pixels
/// (top-left, top-right, bottom-right, bottom-left).
#[derive(Clone, Debug, PartialEq)]
pub struct Sampled {
    /// The payload bytes.
    pub payload: Vec<u8>,
    /// The code's corners in frame pixels.
    pub corners: [[f32; 2]; 4],
}

/// Module-space threshold radii tried on each sampled grid, in order: the
/// local mean over 9×9 modules, then the whole code's mean, then 5×5.
const RADII: [usize; 3] = [4, 0, 2];

/// Reads the code whose three finder centres (in frame pixels, any order
/// with `corner` at the right angle) and module size the locator found.
/// The version is chosen among those near the finder spacing by the
/// timing lines (in a still, from version 7, also by the version blocks
/// beside the finders); finder centres are refined on their templates; from version 2
/// the bottom-right alignment pattern is searched for and anchors the
/// homography's fourth point (perspective), else the fourth point is the
/// parallelogram's. Each module is sampled and thresholded at a few
/// radii, and rqrr's decoder reads the bits. Given `still_until` (a
/// still's deadline; a gate's phone is flat and its frame's budget
/// short), a code no such map reads is also read, until then, on all its
/// alignment patterns from version 7 ([`place_alignment_grid`],
/// [`Warp`]; the version blocks beside the finders name versions to try
/// too), and as bent round a bottle ([`read_bent`]).
pub fn read_located(
    frame: GreyFrame<'_>,
    corner: [f64; 2],
    a: [f64; 2],
    b: [f64; 2],
    module: f64,
    inverted: bool,
    still_until: Option<Instant>,
) -> Option<Sampled> {
    let finders = orient(corner, a, b);
    let estimate = version_estimate(&finders, module);
    if !estimate.is_finite() {
        return None;
    }
    let centre = estimate.round().clamp(1.0, 40.0) as i64;
    let affine_for = |version: usize| {
        let s = size_of(version) as f64;
        Homography::affine(&[[3.5, 3.5], [s - 3.5, 3.5], [3.5, s - 3.5]], &finders)
    };
    let h = affine_for(centre as usize)?;
    // The levels of the finder's dark and light modules, whatever the
    // polarity: the timing lines continue the finders' dark modules.
    let levels = finder_levels(frame, &h);
    // Candidates: the sizes the timing lines count (both agreeing first),
    // then the versions nearest the estimate.
    let mut versions: Vec<usize> = Vec::new();
    let counted = timing_sizes(frame, &h, size_of(centre as usize), levels);
    if let [Some(a), Some(b)] = counted
        && a == b
    {
        versions.push((a - 17) / 4);
    }
    // Named by the version blocks (stills): tried on top of the others.
    let mut extra = 0;
    if still_until.is_some() && estimate > 6.0 {
        for named in versions_beside_finders(frame, &h, size_of(centre as usize), levels) {
            if !versions.contains(&named) && extra < 2 {
                versions.push(named);
                extra += 1;
            }
        }
    }
    for size in counted.into_iter().flatten() {
        versions.push((size - 17) / 4);
    }
    let mut near: Vec<usize> = (1..=40).collect();
    near.sort_by(|&a, &b| {
        (a as f64 - estimate)
            .abs()
            .total_cmp(&(b as f64 - estimate).abs())
    });
    versions.extend(near.into_iter().take(2));
    let mut tried = Vec::new();
    for version in versions {
        if tried.contains(&version) || tried.len() >= MAX_VERSIONS + extra {
            continue;
        }
        tried.push(version);
        let Some(h) = affine_for(version) else {
            continue;
        };
        if let Some(found) = read_version(frame, &finders, version, h, inverted, still_until) {
            return Some(found);
        }
    }
    None
}

/// Versions tried per located code: the timing lines' count and the two
/// nearest the finder spacing usually coincide, so three covers them (a
/// still also tries up to two its version blocks name).
const MAX_VERSIONS: usize = 3;

/// Reads a code of a given version from its (roughly placed) finders:
/// refines the anchors, builds the homography, samples and decodes.
fn read_version(
    frame: GreyFrame<'_>,
    finders: &[[f64; 2]; 3],
    version: usize,
    affine: Homography,
    inverted: bool,
    still_until: Option<Instant>,
) -> Option<Sampled> {
    let size = size_of(version);
    let s = size as f64;
    let src = [[3.5, 3.5], [s - 3.5, 3.5], [3.5, s - 3.5]];
    // Finder centres on their templates, within a module.
    let (dark, light) = finder_levels(frame, &affine);
    let min_contrast = ((light - dark).abs() * 0.3).max(4.0);
    let mut anchors = *finders;
    for (k, &[u, v]) in src.iter().enumerate() {
        if let Some(&(p, _)) = refine_anchor(
            frame,
            &affine,
            Pattern::Finder,
            (u, v),
            1.0,
            inverted,
            min_contrast,
            1,
        )
        .first()
        {
            anchors[k] = p;
        }
    }
    let h3 = Homography::affine(&src, &anchors)?;
    let mut homographies = Vec::with_capacity(2);
    if version >= 2 {
        // The alignment pattern, 3 modules in from the bottom-right finder
        // position: search wider for larger codes (perspective moves the
        // far corner off the parallelogram by more modules).
        let c = s - 6.5;
        let radius = 2.0 + s / 6.0;
        let levels = finder_levels(frame, &h3);
        let mut scored: Vec<(f32, Homography)> = refine_anchor(
            frame,
            &h3,
            Pattern::Alignment,
            (c, c),
            radius,
            inverted,
            min_contrast,
            3,
        )
        .into_iter()
        .filter_map(|(p, _)| {
            let h = Homography::from_points(
                &[src[0], src[1], [c, c], src[2]],
                &[anchors[0], anchors[1], p, anchors[2]],
            )?;
            Some((timing_phase(frame, &h, size, levels), h))
        })
        .collect();
        scored.sort_by(|a, b| b.0.total_cmp(&a.0));
        // The best map, refined once more: the finders were placed with
        // the affine map, whose local scale is off under perspective; under
        // the homography their templates fit, and they and the alignment
        // pattern move by a fraction of a module.
        if let Some(&(_, h)) = scored.first() {
            let targets = [src[0], src[1], [c, c], src[2]];
            let mut moved = [anchors[0], anchors[1], h.map(c, c), anchors[2]];
            for (k, &[u, v]) in targets.iter().enumerate() {
                let pattern = if k == 2 {
                    Pattern::Alignment
                } else {
                    Pattern::Finder
                };
                if let Some(&(p, _)) =
                    refine_anchor(frame, &h, pattern, (u, v), 0.5, inverted, min_contrast, 1)
                        .first()
                {
                    moved[k] = p;
                }
            }
            if let Some(better) = Homography::from_points(&targets, &moved) {
                homographies.push(better);
            }
        }
        homographies.extend(scored.into_iter().take(2).map(|(_, h)| h));
    }
    homographies.push(h3);
    // Whether the version blocks said another size (a still goes on to
    // the alignment grid, but not to the bent shapes' 70 samplings).
    let mut rejected = false;
    for h in &homographies {
        let grey = sample_modules(frame, h, size);
        match decode_grid(&grey, size, version, inverted) {
            // Another size, by the version blocks: a gate tries the next
            // at once. A still goes on to the alignment grid, since a
            // misplaced map's blocks name a version at random one time in
            // four (the perspective photo blurred-02 was lost so).
            Grid::WrongVersion if still_until.is_none() => return None,
            Grid::WrongVersion => {
                rejected = true;
                break;
            }
            Grid::Read(payload) => {
                let corners = corners(&|u, v| h.map(u, v), s);
                return Some(Sampled { payload, corners });
            }
            Grid::NotRead => {}
        }
    }
    // Stills only, given a deadline: a gate's phone is flat, and its
    // frame's budget short.
    let deadline = still_until?;
    // From version 7, every alignment pattern placed in turn, the map
    // refitted on all of them: perspective too strong for the finders and
    // one alignment pattern to follow.
    if version >= 7
        && Instant::now() < deadline
        && let Some(found) =
            read_on_alignment_grid(frame, &anchors, &h3, version, inverted, min_contrast)
    {
        return Some(found);
    }
    if rejected {
        return None;
    }
    read_bent(
        frame,
        homographies.first()?,
        size,
        version,
        inverted,
        deadline,
    )
}

/// Module boundaries of each timing line added to a warp's points, at
/// most.
const TIMING_POINTS: usize = 24;

/// How far from its predicted place an alignment pattern is searched for
/// while the grid is fitted, in modules.
const GRID_REACH: f64 = 3.0;

/// A placed pattern further than this from where the projective fit puts
/// it, in modules, is left out of that fit (data modules that look like
/// one, or a bend).
const GRID_OUTLIER: f64 = 0.75;

/// The finders and alignment patterns of a code placed one by one, and
/// the projective map that fits them best (a [`Warp`] can bend it through
/// each of them).
struct PlacedGrid {
    /// Module coordinates of the finder and alignment centres placed.
    src: Vec<[f64; 2]>,
    /// Where each was placed, in frame pixels.
    dst: Vec<[f64; 2]>,
    /// The projective map fitted on all of them (least squares), those it
    /// puts more than [`GRID_OUTLIER`] away left out.
    fitted: Homography,
}

/// Places the finder centres `anchors` and every alignment pattern of a
/// code of `version` (7 and up) that can be found, outward from the
/// top-left finder. Each is searched for where the current map puts it, moved by
/// how far off that map is at the nearest one placed (which follows a
/// bend as well as perspective); the current map is `start` (the
/// finders') until a pattern off the two timing lines is placed, and from
/// then on the least-squares fit of all placed. `None` when none off the
/// timing lines was placed (the points then lie on two lines and fix no
/// perspective), or fewer than half of them (a false finder group or the
/// wrong size: after four tried, the search stops as soon as fewer than
/// half of those tried were placed).
fn place_alignment_grid(
    frame: GreyFrame<'_>,
    anchors: &[[f64; 2]; 3],
    start: &Homography,
    version: usize,
    inverted: bool,
    min_contrast: f32,
) -> Option<PlacedGrid> {
    let s = size_of(version) as f64;
    let mut src = vec![[3.5, 3.5], [s - 3.5, 3.5], [3.5, s - 3.5]];
    let mut dst = anchors.to_vec();
    let mut todo = alignment_patterns(version);
    todo.sort_by_key(|&(x, y)| (x.max(y), x + y));
    let patterns = todo.len();
    let off_lines = |p: &[f64; 2]| p[0].min(p[1]) > 9.0;
    let mut h = *start;
    for (tried, (x, y)) in todo.into_iter().enumerate() {
        // Half missing after the first four: not a code of this version
        // (a false finder group, or the wrong size); give up early.
        if tried >= 4 && (src.len() - 3) * 2 < tried {
            return None;
        }
        let (u, v) = (x as f64 + 0.5, y as f64 + 0.5);
        let nearest = (0..src.len())
            .min_by(|&a, &b| {
                let d = |i: usize| (src[i][0] - u).hypot(src[i][1] - v);
                d(a).total_cmp(&d(b))
            })
            .unwrap_or(0);
        let [px, py] = h.map(src[nearest][0], src[nearest][1]);
        let predicted = h.shifted(dst[nearest][0] - px, dst[nearest][1] - py);
        let placed = refine_anchor(
            frame,
            &predicted,
            Pattern::Alignment,
            (u, v),
            GRID_REACH,
            inverted,
            min_contrast,
            1,
        );
        if let Some(&(p, _)) = placed.first() {
            src.push([u, v]);
            dst.push(p);
            if src.iter().any(off_lines)
                && let Some(fitted) = Homography::fit(&src, &dst)
            {
                h = fitted;
            }
        }
    }
    if !src.iter().any(off_lines) || (src.len() - 3) * 2 < patterns {
        return None;
    }
    // The projective fit without the patterns it disagrees with.
    let agree: Vec<usize> = (0..src.len())
        .filter(|&i| {
            let [u, v] = src[i];
            let [x, y] = h.map(u, v);
            let [rx, ry] = h.map(u + 1.0, v);
            let module = (rx - x).hypot(ry - y);
            (x - dst[i][0]).hypot(y - dst[i][1]) <= GRID_OUTLIER * module
        })
        .collect();
    let fitted = if agree.len() < src.len() {
        let (s, d): (Vec<_>, Vec<_>) = agree.iter().map(|&i| (src[i], dst[i])).unzip();
        if s.len() >= 4 && s.iter().any(off_lines) {
            Homography::fit(&s, &d).unwrap_or(h)
        } else {
            h
        }
    } else {
        h
    };
    Some(PlacedGrid { src, dst, fitted })
}

/// A homography bent to pass through a set of placed points: the points'
/// offsets from it spread smoothly between them by a thin-plate spline
/// (the interpolant of least bending), evaluated once every
/// [`WARP_LATTICE`] modules and read bilinearly between (so it passes
/// through points on the lattice exactly, through the others within a
/// small fraction of a module: the spline bends little over 4 modules).
/// A label round a bottle, a page's curl or a lens's distortion, where
/// alignment patterns give the places.
struct Warp {
    base: Homography,
    size: usize,
    /// Lattice points a side: `size / WARP_LATTICE + 2`.
    side: usize,
    /// The spline's offset at lattice point (i, j), module (i, j) ×
    /// [`WARP_LATTICE`], row by row.
    offsets: Vec<[f64; 2]>,
}

/// Modules between the points a [`Warp`]'s spline is evaluated at: a
/// version-40 code's spline at every module corner cost ~1.5 M
/// logarithms a try, at every fourth one 16 times fewer.
const WARP_LATTICE: usize = 4;

impl Warp {
    /// The warp of `base` through `src[i]` → `dst[i]` for a code of `size`
    /// modules; `None` when the points are degenerate.
    fn through(base: &Homography, src: &[[f64; 2]], dst: &[[f64; 2]], size: usize) -> Option<Self> {
        let n = src.len();
        if n < 4 || dst.len() != n || size == 0 {
            return None;
        }
        // In units of the code's side: the system stays well scaled.
        let scale = 1.0 / size as f64;
        let at: Vec<[f64; 2]> = src.iter().map(|p| [p[0] * scale, p[1] * scale]).collect();
        let kernel = |a: [f64; 2], b: [f64; 2]| {
            let r2 = (a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2);
            if r2 < 1e-18 { 0.0 } else { 0.5 * r2 * r2.ln() }
        };
        // [K P; Pᵀ 0] [w; a] = [offsets; 0], both coordinates at once.
        let m = n + 3;
        let mut rows = vec![vec![0.0f64; m + 2]; m];
        for i in 0..n {
            for j in 0..n {
                rows[i][j] = kernel(at[i], at[j]);
            }
            let affine = [1.0, at[i][0], at[i][1]];
            for k in 0..3 {
                rows[i][n + k] = affine[k];
                rows[n + k][i] = affine[k];
            }
            let [x, y] = base.map(src[i][0], src[i][1]);
            rows[i][m] = dst[i][0] - x;
            rows[i][m + 1] = dst[i][1] - y;
        }
        if !eliminate(&mut rows) {
            return None;
        }
        let weights: Vec<[f64; 2]> = rows
            .iter()
            .enumerate()
            .map(|(i, r)| [r[m] / r[i], r[m + 1] / r[i]])
            .collect();
        let side = size / WARP_LATTICE + 2;
        let step = WARP_LATTICE as f64 * scale;
        let mut offsets = Vec::with_capacity(side * side);
        for y in 0..side {
            for x in 0..side {
                let p = [x as f64 * step, y as f64 * step];
                let mut o = [weights[n][0], weights[n][1]];
                for c in 0..2 {
                    o[c] += weights[n + 1][c] * p[0] + weights[n + 2][c] * p[1];
                }
                for (q, w) in at.iter().zip(&weights) {
                    let k = kernel(p, *q);
                    o[0] += w[0] * k;
                    o[1] += w[1] * k;
                }
                offsets.push(o);
            }
        }
        offsets
            .iter()
            .all(|o| o[0].is_finite() && o[1].is_finite())
            .then_some(Self {
                base: *base,
                size,
                side,
                offsets,
            })
    }

    /// Where module coordinates `(u, v)` fall in the frame.
    fn map(&self, u: f64, v: f64) -> [f64; 2] {
        let [x, y] = self.base.map(u, v);
        let step = WARP_LATTICE as f64;
        let last = self.size as f64;
        let (u, v) = (u.clamp(0.0, last) / step, v.clamp(0.0, last) / step);
        let (x0, y0) = (
            (u as usize).min(self.side - 2),
            (v as usize).min(self.side - 2),
        );
        let (fx, fy) = (u - x0 as f64, v - y0 as f64);
        let row = self.side;
        let o = |xx: usize, yy: usize| self.offsets[yy * row + xx];
        let mut out = [x, y];
        for (c, slot) in out.iter_mut().enumerate() {
            let top = o(x0, y0)[c] * (1.0 - fx) + o(x0 + 1, y0)[c] * fx;
            let bottom = o(x0, y0 + 1)[c] * (1.0 - fx) + o(x0 + 1, y0 + 1)[c] * fx;
            *slot += top * (1.0 - fy) + bottom * fy;
        }
        out
    }
}

/// Reads a code of `version` (7 and up) on all its alignment patterns
/// ([`place_alignment_grid`]): under their least-squares homography, then
/// warped through them ([`Warp`]), then through them and the timing
/// lines' module boundaries.
fn read_on_alignment_grid(
    frame: GreyFrame<'_>,
    anchors: &[[f64; 2]; 3],
    start: &Homography,
    version: usize,
    inverted: bool,
    min_contrast: f32,
) -> Option<Sampled> {
    let size = size_of(version);
    let grid = place_alignment_grid(frame, anchors, start, version, inverted, min_contrast)?;
    let h = grid.fitted;
    if let Some(found) = read_under(frame, &|u, v| h.map(u, v), size, version, inverted) {
        return Some(found);
    }
    let warp = Warp::through(&h, &grid.src, &grid.dst, size)?;
    let map = |u: f64, v: f64| warp.map(u, v);
    if let Some(found) = read_under(frame, &map, size, version, inverted) {
        return Some(found);
    }
    // The timing lines' module boundaries as more points.
    let levels = finder_levels(frame, &h);
    let (mut src, mut dst) = (grid.src.clone(), grid.dst.clone());
    for along_row in [true, false] {
        let Some(knots) = timing_knots(frame, &map, size, levels, along_row) else {
            continue;
        };
        // Every other boundary at least (one kind of edge: dark to light
        // and light to dark are biased opposite ways by the threshold),
        // none within 1.5 modules of an alignment centre on the line (two
        // targets so close would fight).
        let inner = &knots[1..knots.len() - 1];
        let every = inner
            .len()
            .div_ceil(TIMING_POINTS)
            .max(1)
            .next_multiple_of(2);
        let (fixed, along) = if along_row { (1, 0) } else { (0, 1) };
        let clear = |k: f64| {
            grid.src
                .iter()
                .all(|p| p[fixed] != 6.5 || (p[along] - k).abs() >= 1.5)
        };
        for &(k, t) in inner.iter().step_by(every).filter(|(k, _)| clear(*k)) {
            let (at, seen) = if along_row {
                ([k, 6.5], map(t, 6.5))
            } else {
                ([6.5, k], map(6.5, t))
            };
            src.push(at);
            dst.push(seen);
        }
    }
    if src.len() == grid.src.len() {
        return None;
    }
    let warp = Warp::through(&h, &src, &dst, size)?;
    read_under(frame, &|u, v| warp.map(u, v), size, version, inverted)
}

/// Samples a code of `version` under `map` and decodes it: its payload
/// and corners, when it reads.
fn read_under(
    frame: GreyFrame<'_>,
    map: &dyn Fn(f64, f64) -> [f64; 2],
    size: usize,
    version: usize,
    inverted: bool,
) -> Option<Sampled> {
    let grey = sample_modules_by(frame, size, map);
    match decode_grid(&grey, size, version, inverted) {
        Grid::Read(payload) => Some(Sampled {
            payload,
            corners: corners(map, size as f64),
        }),
        Grid::NotRead | Grid::WrongVersion => None,
    }
}

/// A code's corners in frame pixels under `map` (size `s` modules).
fn corners(map: &dyn Fn(f64, f64) -> [f64; 2], s: f64) -> [[f32; 2]; 4] {
    [(0.0, 0.0), (s, 0.0), (s, s), (0.0, s)].map(|(u, v)| {
        let [x, y] = map(u, v);
        [x as f32, y as f32]
    })
}

/// How much taller a bent code's middle column is drawn than its finder
/// columns, tried in turn: a label round a bottle is nearer the camera in
/// the middle (0 for a label bent the other way, or lying flat).
const BULGES: [f64; 7] = [0.0, 0.03, 0.06, 0.09, 0.12, -0.03, -0.06];
/// How far a bent code's middle rows (columns) sag or rise against its
/// finders' (a bottle seen from a little above or below), as a share of
/// half the code, tried in turn with each of [`BULGES`].
const SAGS: [f64; 5] = [0.0, 0.03, -0.03, 0.06, -0.06];

/// A code bent round a bottle or a pillar (its axis along the code's
/// columns, then along its rows): under `h`, the best map from the
/// finders, its middle drawn taller (nearer the camera than the finders'
/// edges) by each of [`BULGES`] and sagging by each of [`SAGS`], its
/// columns (rows) moved to where the timing line shows them
/// ([`timing_knots`]); decoded best-aligned first.
fn read_bent(
    frame: GreyFrame<'_>,
    h: &Homography,
    size: usize,
    version: usize,
    inverted: bool,
    deadline: Instant,
) -> Option<Sampled> {
    let levels = finder_levels(frame, h);
    let s = size as f64;
    let (mid, half) = (s / 2.0, s / 2.0 - 3.5);
    // The map for a shape: the middle drawn taller (or wider) by `bulge`
    // and sagging by `sag`, then, once the timing line is walked where it
    // is, its columns (rows) moved to where it shows them.
    let shaped = |vertical: bool, bulge: f64, sag: f64| {
        let swell = move |u: f64, v: f64| {
            let (along, across) = if vertical { (u, v) } else { (v, u) };
            let x = ((along - mid) / half).clamp(-1.0, 1.0);
            let across =
                mid + (across - mid) * (1.0 + bulge * (1.0 - x * x)) + sag * half * (1.0 - x * x);
            if vertical { (u, across) } else { (across, v) }
        };
        let swollen = |u: f64, v: f64| {
            let (u, v) = swell(u, v);
            h.map(u, v)
        };
        let knots = timing_knots(frame, &swollen, size, levels, vertical)?;
        Some(move |u: f64, v: f64| {
            let (u, v) = if vertical {
                (through(&knots, u), v)
            } else {
                (u, through(&knots, v))
            };
            let (u, v) = swell(u, v);
            h.map(u, v)
        })
    };
    // Every shape is sampled, and goes to the decoder in the order of how
    // well its alignment patterns come out (a wrong shape smears them).
    for vertical in [true, false] {
        let mut tried = Vec::new();
        for bulge in BULGES {
            for sag in SAGS {
                if Instant::now() >= deadline {
                    return None;
                }
                if let Some(map) = shaped(vertical, bulge, sag) {
                    let grey = sample_modules_by(frame, size, &map);
                    let dark = threshold_modules(&grey, size, RADII[0], inverted);
                    tried.push((alignment_fit(&dark, version), map, grey));
                }
            }
        }
        tried.sort_by(|a, b| b.0.total_cmp(&a.0));
        for (_, map, grey) in &tried {
            if Instant::now() >= deadline {
                return None;
            }
            match decode_grid(grey, size, version, inverted) {
                Grid::Read(payload) => {
                    return Some(Sampled {
                        payload,
                        corners: corners(map, s),
                    });
                }
                // One shape seen as another size: the next may not be.
                Grid::WrongVersion | Grid::NotRead => {}
            }
        }
    }
    None
}

/// The centres of a code's alignment patterns along each axis, in
/// modules (ISO/IEC 18004 Annex E: from 6 to size − 7 in even steps,
/// the first step taking up the slack); none for version 1.
pub fn alignment_centres(version: usize) -> Vec<usize> {
    if !(2..=40).contains(&version) {
        return Vec::new();
    }
    let size = size_of(version);
    let count = version / 7 + 2;
    let step = if version == 32 {
        26
    } else {
        (version * 4 + count * 2 + 1) / (count * 2 - 2) * 2
    };
    let mut out: Vec<usize> = (0..count - 1).map(|i| size - 7 - i * step).collect();
    out.push(6);
    out.reverse();
    out
}

/// The centre module (x, y) of each of a version's alignment patterns,
/// row by row, those the finders would overlap left out.
fn alignment_patterns(version: usize) -> Vec<(usize, usize)> {
    let size = size_of(version);
    let centres = alignment_centres(version);
    let near_finder = |a: usize, b: usize| a < 9 && (b < 9 || b + 9 > size);
    centres
        .iter()
        .flat_map(|&y| centres.iter().map(move |&x| (x, y)))
        .filter(|&(x, y)| !near_finder(x, y) && !near_finder(y, x))
        .collect()
}

/// The share of a grid's alignment-pattern modules (those clear of the
/// finders) that are as they should be: 1 under the right map, lower where
/// the map smears them. 0.5 for a code without alignment patterns.
fn alignment_fit(dark: &[bool], version: usize) -> f32 {
    let size = size_of(version);
    let (mut good, mut all) = (0u32, 0u32);
    for (cx, cy) in alignment_patterns(version) {
        for dy in 0..5 {
            for dx in 0..5 {
                let (x, y) = (cx + dx - 2, cy + dy - 2);
                let want = alignment_dark(dx as i32, dy as i32);
                good += u32::from(dark.get(y * size + x) == Some(&want));
                all += 1;
            }
        }
    }
    if all == 0 {
        0.5
    } else {
        good as f32 / all as f32
    }
}

/// What a sampled grid gave.
enum Grid {
    Read(Vec<u8>),
    NotRead,
    /// The version blocks say another size: this one is wrong.
    WrongVersion,
}

/// Thresholds a sampled grid at each radius in turn and decodes it.
fn decode_grid(grey: &[f32], size: usize, version: usize, inverted: bool) -> Grid {
    for radius in RADII {
        let dark = threshold_modules(grey, size, radius, inverted);
        if version >= 7
            && version_blocks(|x, y| dark[y * size + x], size)
                .is_some_and(|(d, v)| d <= 3 && v != version)
        {
            return Grid::WrongVersion;
        }
        // A grid whose timing lines do not alternate is not a code (a
        // false finder group, a wrong size or map): rqrr's decoder would
        // accept its format bits about half the time and then spend
        // milliseconds on Reed–Solomon syndromes.
        if timing_fraction(size, &dark) < MIN_TIMING {
            continue;
        }
        if let Some(payload) = decode_modules(size, &dark) {
            return Grid::Read(payload);
        }
    }
    Grid::NotRead
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::GreyImage;
    use crate::encode::modules;

    fn payload(n: usize, seed: u8) -> Vec<u8> {
        (0..n)
            .map(|i| (i as u8).wrapping_mul(37).wrapping_add(seed))
            .collect()
    }

    /// A generated camera view of a code: its modules (4-module quiet
    /// zone) mapped through `h` (module coordinates → pixels) by inverse
    /// sampling with 4×4 supersampling, on a mid-grey background, in dark
    /// mode when `inverted`. Returns the frame.
    fn view(
        payload: &[u8],
        w: usize,
        h: usize,
        map: &Homography,
        inverted: bool,
    ) -> (GreyImage, usize) {
        let m = modules(payload).unwrap();
        let size = m.size as f64;
        // Inverse: pixels → modules, from the four corners of the quiet zone.
        let q = 4.0;
        let quad = [
            [-q, -q],
            [size + q, -q],
            [size + q, size + q],
            [-q, size + q],
        ];
        let px = quad.map(|[u, v]| map.map(u, v));
        let inv = Homography::from_points(&px, &quad).unwrap();
        let mut data = vec![128u8; w * h];
        for y in 0..h {
            for x in 0..w {
                let mut acc = 0u32;
                let mut any = false;
                for sy in 0..4 {
                    for sx in 0..4 {
                        let [u, v] = inv.map(
                            x as f64 + (sx as f64 + 0.5) / 4.0 - 0.5,
                            y as f64 + (sy as f64 + 0.5) / 4.0 - 0.5,
                        );
                        if u >= -q && v >= -q && u < size + q && v < size + q {
                            any = true;
                            let dark = m.is_dark(u.floor() as isize, v.floor() as isize);
                            acc += if dark != inverted { 30 } else { 220 };
                        } else {
                            acc += 128;
                        }
                    }
                }
                if any {
                    data[y * w + x] = (acc / 16) as u8;
                }
            }
        }
        (GreyImage::new(w, h, data).unwrap(), m.size)
    }

    /// A pose: the code (size modules) centred at (cx, cy), `px` pixels per
    /// module, turned by `roll` degrees and tilted by `yaw` degrees about
    /// the vertical axis (a pinhole camera at 3 code widths, closer than
    /// the corpus generator's ~4, so perspective is stronger).
    fn pose(size: usize, cx: f64, cy: f64, px: f64, roll: f64, yaw: f64) -> Homography {
        let s = size as f64;
        let (cr, sr) = (roll.to_radians().cos(), roll.to_radians().sin());
        let (cyaw, syaw) = (yaw.to_radians().cos(), yaw.to_radians().sin());
        let dist = 3.0 * s;
        let project = |u: f64, v: f64| {
            let (x, y) = (u - s / 2.0, v - s / 2.0);
            // Tilt about the vertical axis, then perspective, then roll.
            let (x3, z3) = (x * cyaw, dist + x * syaw);
            let (xp, yp) = (x3 * dist / z3, y * dist / z3);
            [cx + px * (cr * xp - sr * yp), cy + px * (sr * xp + cr * yp)]
        };
        let src = [[0.0, 0.0], [s, 0.0], [s, s], [0.0, s]];
        let dst = src.map(|[u, v]| project(u, v));
        Homography::from_points(&src, &dst).unwrap()
    }

    /// Reads a generated view from its true finder centres (jittered by a
    /// pixel) and a module size as the locator measures it.
    fn read_view(img: &GreyImage, h: &Homography, size: usize, inverted: bool) -> Option<Sampled> {
        read_view_until(img, h, size, inverted, None)
    }

    /// [`read_view`] with a still's deadline (`still_until`).
    fn read_view_until(
        img: &GreyImage,
        h: &Homography,
        size: usize,
        inverted: bool,
        still_until: Option<Instant>,
    ) -> Option<Sampled> {
        let s = size as f64;
        let tl = h.map(3.5, 3.5);
        let tr = h.map(s - 3.5, 3.5);
        let bl = h.map(3.5, s - 3.5);
        let jitter = |p: [f64; 2], dx: f64, dy: f64| [p[0] + dx, p[1] + dy];
        // The locator's module: each finder's width along a row and along
        // a column (a cut through a turned square is longer by 1 / max(|cos|,
        // |sin|)), averaged over the three finders.
        let mut module = 0.0;
        for (fu, fv) in [(0.0, 0.0), (s - 7.0, 0.0), (0.0, s - 7.0)] {
            for (du, dv) in [(1.0, 0.0), (0.0, 1.0)] {
                let a = h.map(fu + 3.5 - 3.5 * du, fv + 3.5 - 3.5 * dv);
                let b = h.map(fu + 3.5 + 3.5 * du, fv + 3.5 + 3.5 * dv);
                let theta = (b[1] - a[1]).atan2(b[0] - a[0]);
                let along = (b[0] - a[0]).hypot(b[1] - a[1]) / 7.0;
                module += along / theta.cos().abs().max(theta.sin().abs()) / 6.0;
            }
        }
        read_located(
            img.as_frame(),
            jitter(tl, 0.8, -0.6),
            jitter(bl, -0.7, 0.5),
            jitter(tr, 0.6, 0.9),
            module,
            inverted,
            still_until,
        )
    }

    /// Every alignment pattern [`alignment_centres`] names is there, in the
    /// codes the encoder makes, versions 2 to 40.
    #[test]
    fn alignment_centres_are_the_encoders() {
        assert!(alignment_centres(1).is_empty());
        assert_eq!(alignment_centres(2), [6, 18]);
        assert_eq!(alignment_centres(7), [6, 22, 38]);
        assert_eq!(alignment_centres(32), [6, 34, 60, 86, 112, 138]);
        for version in 2..=40usize {
            let m =
                crate::encode::modules_at(&[0x5a; 8], qrcode::EcLevel::L, version as i16).unwrap();
            assert_eq!(m.size, size_of(version));
            let centres = alignment_centres(version);
            for &cy in &centres {
                for &cx in &centres {
                    let in_finder = |a: usize, b: usize| a < 9 && (b < 9 || b + 9 > m.size);
                    if in_finder(cx, cy) || in_finder(cy, cx) {
                        continue;
                    }
                    for dy in 0..5 {
                        for dx in 0..5 {
                            let dark = m.is_dark((cx + dx - 2) as isize, (cy + dy - 2) as isize);
                            assert_eq!(
                                dark,
                                alignment_dark(dx as i32, dy as i32),
                                "v{version} ({cx}, {cy})"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn timing_fraction_tells_a_code_from_noise() {
        let m = modules(&payload(199, 5)).unwrap();
        let n = m.size;
        let code: Vec<bool> = (0..n * n)
            .map(|i| m.is_dark((i % n) as isize, (i / n) as isize))
            .collect();
        assert_eq!(timing_fraction(n, &code), 1.0);
        // Pseudo-random modules: about half the timing modules agree.
        let noise: Vec<bool> = (0..n * n)
            .map(|i| (i as u32).wrapping_mul(2_654_435_761) >> 31 == 1)
            .collect();
        assert!(timing_fraction(n, &noise) < MIN_TIMING);
        // A few timing modules flipped (blur, glare) still pass.
        let mut worn = code.clone();
        for i in [9, 14, 20, 33] {
            worn[6 * n + i] = !worn[6 * n + i];
        }
        assert!(timing_fraction(n, &worn) >= 0.95);
        assert_eq!(timing_fraction(n, &code[1..]), 0.0);
    }

    #[test]
    fn homography_maps_its_points_and_inverts() {
        let src = [[0.0, 0.0], [10.0, 0.0], [10.0, 10.0], [0.0, 10.0]];
        let dst = [[5.0, 7.0], [120.0, 15.0], [110.0, 140.0], [-3.0, 100.0]];
        let h = Homography::from_points(&src, &dst).unwrap();
        for (s, d) in src.iter().zip(&dst) {
            let p = h.map(s[0], s[1]);
            assert!((p[0] - d[0]).abs() < 1e-6 && (p[1] - d[1]).abs() < 1e-6);
        }
        let inv = Homography::from_points(&dst, &src).unwrap();
        let p = inv.map(h.map(3.0, 7.0)[0], h.map(3.0, 7.0)[1]);
        assert!((p[0] - 3.0).abs() < 1e-6 && (p[1] - 7.0).abs() < 1e-6);
        let same = [[1.0, 1.0]; 4];
        assert!(Homography::from_points(&same, &dst).is_none());
    }

    #[test]
    fn a_least_squares_homography_recovers_a_map_from_many_points() {
        let truth = pose(57, 640.0, 360.0, 6.0, 20.0, 35.0);
        let src: Vec<[f64; 2]> = [6.5, 28.5, 50.5]
            .iter()
            .flat_map(|&v| [6.5, 28.5, 50.5].map(|u| [u, v]))
            .collect();
        let exact: Vec<[f64; 2]> = src.iter().map(|&[u, v]| truth.map(u, v)).collect();
        let fitted = Homography::fit(&src, &exact).unwrap();
        for [u, v] in [[0.0, 0.0], [57.0, 57.0], [20.0, 41.0]] {
            let (a, b) = (fitted.map(u, v), truth.map(u, v));
            assert!((a[0] - b[0]).hypot(a[1] - b[1]) < 1e-6, "({u}, {v})");
        }
        // Each point off by up to a pixel: the fit stays within one.
        let noisy: Vec<[f64; 2]> = exact
            .iter()
            .enumerate()
            .map(|(i, p)| [p[0] + [1.0, -1.0][i % 2], p[1] + [-0.5, 0.5][i % 2]])
            .collect();
        let fitted = Homography::fit(&src, &noisy).unwrap();
        let (a, b) = (fitted.map(28.5, 28.5), truth.map(28.5, 28.5));
        assert!((a[0] - b[0]).hypot(a[1] - b[1]) < 1.0);
        // Too few, or all in one spot: no map.
        assert!(Homography::fit(&src[..3], &exact[..3]).is_none());
        assert!(Homography::fit(&[[1.0, 1.0]; 5], &exact[..5]).is_none());
    }

    #[test]
    fn a_warp_passes_through_its_points_and_bends_smoothly_between() {
        let base = pose(57, 640.0, 360.0, 6.0, 0.0, 0.0);
        // On the spline's lattice (every 4 modules) but for the last.
        let src = [
            [0.0, 0.0],
            [56.0, 0.0],
            [0.0, 56.0],
            [28.0, 28.0],
            [57.0, 57.0],
        ];
        // Points on the base: the warp is the base.
        let on: Vec<[f64; 2]> = src.iter().map(|&[u, v]| base.map(u, v)).collect();
        let flat = Warp::through(&base, &src, &on, 57).unwrap();
        for [u, v] in [[10.3, 44.9], [28.0, 28.0], [56.0, 1.0]] {
            let (a, b) = (flat.map(u, v), base.map(u, v));
            assert!((a[0] - b[0]).hypot(a[1] - b[1]) < 1e-6);
        }
        // The middle pushed 9 pixels right: the warp goes through it, and
        // moves points between by less.
        let mut bent = on.clone();
        bent[3][0] += 9.0;
        let warp = Warp::through(&base, &src, &bent, 57).unwrap();
        for (&[u, v], want) in src.iter().zip(&bent) {
            let got = warp.map(u, v);
            let off = (got[0] - want[0]).hypot(got[1] - want[1]);
            // Exact on the lattice; off it within a tenth of a module.
            let on_lattice = u % 4.0 == 0.0 && v % 4.0 == 0.0;
            assert!(
                off < if on_lattice { 1e-6 } else { 0.6 },
                "({u}, {v}): {off}"
            );
        }
        let shift = warp.map(14.0, 28.0)[0] - base.map(14.0, 28.0)[0];
        assert!(shift > 1.0 && shift < 9.0, "{shift}");
        // Fewer than four points: no warp.
        assert!(Warp::through(&base, &src[..3], &on[..3], 57).is_none());
    }

    /// A version-20 code whose finder spacing is taken for version 22's:
    /// its version blocks, read beside the finders, still name 20.
    #[test]
    fn the_version_blocks_name_the_version_the_finder_spacing_misjudges() {
        let p = payload(600, 5);
        let size = modules(&p).unwrap().size;
        let truth = pose(size, 640.0, 360.0, 5.0, 15.0, 10.0);
        let (img, _) = view(&p, 1280, 720, &truth, false);
        let s = size as f64;
        let finders = [(3.5, 3.5), (s - 3.5, 3.5), (3.5, s - 3.5)].map(|(u, v)| truth.map(u, v));
        let wrong = size + 8;
        let w = wrong as f64;
        let guess =
            Homography::affine(&[[3.5, 3.5], [w - 3.5, 3.5], [3.5, w - 3.5]], &finders).unwrap();
        let levels = finder_levels(img.as_frame(), &guess);
        let named = versions_beside_finders(img.as_frame(), &guess, wrong, levels);
        assert_eq!(named.first(), Some(&((size - 17) / 4)), "{named:?}");
        // Flat grey names nothing.
        let grey = GreyImage::new(1280, 720, vec![128; 1280 * 720]).unwrap();
        assert!(versions_beside_finders(grey.as_frame(), &guess, wrong, (30.0, 220.0)).is_empty());
    }

    /// A version-19 code turned 30°, 45° and 60° away from a camera at
    /// three code widths: the finders and the bottom-right alignment
    /// pattern misplace the far side (none of the three is read so, as at
    /// a gate); in a still, every alignment pattern, placed in turn, reads
    /// each.
    #[test]
    fn a_high_version_in_strong_perspective_is_read_on_its_alignment_grid() {
        let p = payload(600, 8);
        let size = modules(&p).unwrap().size;
        for yaw in [30.0, 45.0, 60.0] {
            let h = pose(size, 640.0, 360.0, 5.0, 10.0, yaw);
            let (img, _) = view(&p, 1280, 720, &h, false);
            assert!(read_view(&img, &h, size, false).is_none(), "turned {yaw}°");
            let far = Instant::now() + std::time::Duration::from_secs(600);
            let got = read_view_until(&img, &h, size, false, Some(far)).map(|s| s.payload);
            assert_eq!(got.as_ref(), Some(&p), "turned {yaw}°");
        }
    }

    #[test]
    fn orient_puts_top_right_clockwise() {
        let (tl, tr, bl) = ([0.0, 0.0], [10.0, 0.0], [0.0, 10.0]);
        assert_eq!(orient(tl, tr, bl), [tl, tr, bl]);
        assert_eq!(orient(tl, bl, tr), [tl, tr, bl]);
    }

    #[test]
    fn version_estimate_from_finder_spacing_at_any_roll() {
        for version in [1usize, 4, 7, 10, 15] {
            let size = size_of(version);
            for roll in [0.0, 20.0, 45.0, 70.0] {
                let h = pose(size, 400.0, 400.0, 4.0, roll, 0.0);
                let s = size as f64;
                let f = [h.map(3.5, 3.5), h.map(s - 3.5, 3.5), h.map(3.5, s - 3.5)];
                let a = h.map(0.0, 3.5);
                let b = h.map(7.0, 3.5);
                let theta = (b[1] - a[1]).atan2(b[0] - a[0]);
                let module = 4.0 / theta.cos().abs().max(theta.sin().abs());
                let v = version_estimate(&f, module);
                assert!((v - version as f64).abs() < 0.3, "{version} {roll}: {v}");
            }
        }
    }

    #[test]
    fn threshold_follows_a_gradient_in_module_space() {
        // A checkerboard whose levels rise left to right (glare).
        let size = 21;
        let grey: Vec<f32> = (0..size * size)
            .map(|i| {
                let (x, y) = (i % size, i / size);
                let base = 40.0 + 8.0 * x as f32;
                if (x + y) % 2 == 0 { base } else { base + 60.0 }
            })
            .collect();
        let dark = threshold_modules(&grey, size, 2, false);
        for (i, &d) in dark.iter().enumerate() {
            assert_eq!(d, (i % size + i / size) % 2 == 0, "module {i}");
        }
        let light = threshold_modules(&grey, size, 2, true);
        assert!(dark.iter().zip(&light).all(|(a, b)| a != b));
        assert!(threshold_modules(&grey, 20, 2, false).is_empty());
    }

    #[test]
    fn version_info_reads_back_from_encoded_codes() {
        for version_payload in [(7usize, 110usize), (10, 199), (12, 270)] {
            let m = modules(&payload(version_payload.1, 3)).unwrap();
            assert_eq!(m.size, size_of(version_payload.0), "{version_payload:?}");
            let dark = |x: usize, y: usize| m.dark[y * m.size + x];
            assert_eq!(version_blocks(dark, m.size), Some((0, version_payload.0)));
        }
        let small = modules(&payload(20, 1)).unwrap();
        assert_eq!(version_blocks(|_, _| false, small.size), None);
    }

    #[test]
    fn decodes_a_perfect_module_matrix_with_binary_bytes() {
        let p: Vec<u8> = (0..=255u8).rev().take(199).collect();
        let m = modules(&p).unwrap();
        assert_eq!(decode_modules(m.size, &m.dark), Some(p));
        assert_eq!(decode_modules(m.size, &vec![false; m.size * m.size]), None);
        assert_eq!(decode_modules(3, &[true; 9]), None);
    }

    #[test]
    fn reads_generated_views_versions_1_to_10_both_polarities() {
        // Payload sizes that need versions 1 to 10 at level M (byte mode).
        let lengths = [10, 20, 32, 50, 70, 90, 110, 140, 170, 199];
        for (k, &len) in lengths.iter().enumerate() {
            let p = payload(len, k as u8);
            let size = modules(&p).unwrap().size;
            assert_eq!(size, size_of(k + 1), "payload {len}");
            let inverted = k % 2 == 1;
            let roll = [0.0, 17.0, -33.0, 90.0, 151.0][k % 5];
            let h = pose(size, 320.0, 240.0, 5.0, roll, 0.0);
            let (img, _) = view(&p, 640, 480, &h, inverted);
            let got = read_view(&img, &h, size, inverted);
            assert_eq!(got.map(|s| s.payload), Some(p), "version {}", k + 1);
        }
    }

    #[test]
    fn reads_perspective_up_to_40_degrees() {
        let p = payload(199, 9);
        let size = size_of(10);
        for (yaw, roll) in [(20.0, 10.0), (30.0, -25.0), (40.0, 5.0), (-40.0, 60.0)] {
            let h = pose(size, 640.0, 360.0, 6.0, roll, yaw);
            let (img, _) = view(&p, 1280, 720, &h, false);
            let got = read_view(&img, &h, size, false);
            let got = got.unwrap_or_else(|| panic!("yaw {yaw} roll {roll}"));
            assert_eq!(got.payload, p);
            // Corners within three pixels of the truth (they lie 3.5
            // modules beyond the finder centres).
            let s = size as f64;
            for (c, (u, v)) in got
                .corners
                .iter()
                .zip([(0.0, 0.0), (s, 0.0), (s, s), (0.0, s)])
            {
                let t = h.map(u, v);
                assert!(
                    (f64::from(c[0]) - t[0]).hypot(f64::from(c[1]) - t[1]) < 3.0,
                    "{c:?} vs {t:?}"
                );
            }
        }
    }

    #[test]
    fn refine_anchor_finds_a_displaced_finder_and_ignores_flat_grey() {
        let p = payload(100, 4);
        let size = modules(&p).unwrap().size;
        let h = pose(size, 200.0, 200.0, 5.0, 0.0, 0.0);
        let (img, _) = view(&p, 400, 400, &h, false);
        // A map that is off by 3 pixels right and 2 down.
        let off = {
            let s = size as f64;
            let src = [[0.0, 0.0], [s, 0.0], [s, s], [0.0, s]];
            let dst = src.map(|[u, v]| {
                let [x, y] = h.map(u, v);
                [x + 3.0, y + 2.0]
            });
            Homography::from_points(&src, &dst).unwrap()
        };
        let (at, c) = refine_anchor(
            img.as_frame(),
            &off,
            Pattern::Finder,
            (3.5, 3.5),
            1.0,
            false,
            20.0,
            1,
        )[0];
        let truth = h.map(3.5, 3.5);
        assert!(
            (at[0] - truth[0]).hypot(at[1] - truth[1]) < 0.8,
            "{at:?} {truth:?}"
        );
        assert!(c > 100.0);
        let flat = GreyImage::filled(400, 400, 128).unwrap();
        assert!(
            refine_anchor(
                flat.as_frame(),
                &h,
                Pattern::Finder,
                (3.5, 3.5),
                1.0,
                false,
                4.0,
                3
            )
            .is_empty()
        );
    }

    #[test]
    fn timing_lines_count_the_size_under_perspective() {
        let p = payload(199, 2);
        let size = size_of(10);
        for (roll, yaw) in [(12.0, 0.0), (-30.0, 35.0)] {
            let h = pose(size, 320.0, 320.0, 5.0, roll, yaw);
            let (img, _) = view(&p, 640, 640, &h, false);
            // Finders where they are; the affine map of a wrong size (53).
            let s = size as f64;
            let finders = [h.map(3.5, 3.5), h.map(s - 3.5, 3.5), h.map(3.5, s - 3.5)];
            let t = 53.0;
            let a = Homography::affine(&[[3.5, 3.5], [t - 3.5, 3.5], [3.5, t - 3.5]], &finders)
                .unwrap();
            let got = timing_sizes(img.as_frame(), &a, 53, (30.0, 220.0));
            // Frontal: both lines count it; under strong perspective the
            // affine map's line can drift off the row far from the finder,
            // so one of the two must.
            if yaw == 0.0 {
                assert_eq!(got, [Some(57), Some(57)], "roll {roll}");
            } else {
                assert!(got.contains(&Some(57)), "roll {roll} yaw {yaw}: {got:?}");
            }
        }
        let flat = GreyImage::filled(200, 200, 128).unwrap();
        let a = pose(21, 100.0, 100.0, 4.0, 0.0, 0.0);
        assert_eq!(
            timing_sizes(flat.as_frame(), &a, 21, (30.0, 220.0)),
            [None, None]
        );
    }
}
