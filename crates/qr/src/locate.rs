//! Finding codes cheaply before rqrr runs: finder patterns by their
//! 1:1:3:1:1 run lengths, grouped in threes, give each code's place, size
//! and module size, so rqrr gets one crop per code, scaled to a module
//! size it reads well, instead of a whole frame.
//!
//! rqrr's cost is mostly its grid fit, paid for every group of three
//! capstone-like blobs it finds, true or false; a crop holding one code
//! gives it one group. Each step here is a plain function on a [`Bitmap`]
//! or on points, tested on generated images.

use std::collections::HashMap;

use super::prepare::{Bitmap, Rect};

/// A finder pattern candidate (the 7×7 squares in three corners of a code).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Finder {
    /// Centre, in the bitmap's pixels.
    pub x: f32,
    /// Centre, in the bitmap's pixels.
    pub y: f32,
    /// Module size in pixels (the pattern's width over seven).
    pub module: f32,
    /// How many row scans confirmed it (more is surer).
    pub hits: u32,
}

/// Whether five run lengths (dark, light, dark, light, dark) look like a
/// finder pattern cut through its centre: 1:1:3:1:1, with room for blur and
/// thresholding to thicken or thin the rings.
fn finder_ratios(runs: [usize; 5]) -> bool {
    let total: usize = runs.iter().sum();
    if total < 7 {
        return false;
    }
    let unit = total as f32 / 7.0;
    let ok = |r: usize, modules: f32, tol: f32| (r as f32 - modules * unit).abs() <= tol * unit;
    ok(runs[0], 1.0, 0.7)
        && ok(runs[1], 1.0, 0.7)
        && ok(runs[2], 3.0, 1.3)
        && ok(runs[3], 1.0, 0.7)
        && ok(runs[4], 1.0, 0.7)
}

/// From a dark pixel in a finder's centre, measures the pattern along the
/// column: returns the vertical centre and total height when the column
/// also reads 1:1:3:1:1 and its total is within reach of `expect` (the
/// horizontal total; a tilted code squashes one direction).
fn cross_check_column(bits: &Bitmap, x: usize, y: usize, expect: usize) -> Option<(f32, usize)> {
    let h = bits.height();
    let limit = expect * 2 + 4;
    let dark = |yy: usize| bits.is_dark(x, yy);
    // Walk up through the centre run, the light ring and the dark ring.
    let mut counts = [0usize; 5];
    let mut yy = y as isize;
    for (slot, want_dark) in [(2usize, true), (1, false), (0, true)] {
        while yy >= 0 && dark(yy as usize) == want_dark && counts[slot] <= limit {
            counts[slot] += 1;
            yy -= 1;
        }
        if counts[slot] == 0 || counts[slot] > limit {
            return None;
        }
    }
    let top = (yy + 1) as usize;
    let mut yy = y + 1;
    for (slot, want_dark) in [(2usize, true), (3, false), (4, true)] {
        let before = counts[slot];
        while yy < h && dark(yy) == want_dark && counts[slot] <= limit {
            counts[slot] += 1;
            yy += 1;
        }
        if (slot != 2 && counts[slot] == before) || counts[slot] > limit {
            return None;
        }
    }
    let total: usize = counts.iter().sum();
    let (lo, hi) = (expect as f32 * 0.4, expect as f32 * 2.5);
    if !finder_ratios(counts) || (total as f32) < lo || (total as f32) > hi {
        return None;
    }
    // Centre of the middle run.
    let mid_top = top + counts[0] + counts[1];
    Some((mid_top as f32 + counts[2] as f32 / 2.0 - 0.5, total))
}

/// Finds finder patterns (dark on light) in a bitmap: every row is cut
/// into runs, five runs in 1:1:3:1:1 are checked along the column through
/// their middle, and hits closer than a pattern's half-width are merged.
/// Sorted by how many rows confirmed them, most first.
pub fn finder_patterns(bits: &Bitmap) -> Vec<Finder> {
    let mut raw: Vec<(f32, f32, f32)> = Vec::new();
    let mut runs: Vec<(usize, usize)> = Vec::new(); // (start, length)
    for y in 0..bits.height() {
        let row = bits.row(y);
        runs.clear();
        // Runs from the first dark pixel on, alternating dark and light.
        let Some(first) = row.iter().position(|&d| d) else {
            continue;
        };
        let mut start = first;
        for x in first + 1..=row.len() {
            if x == row.len() || row[x] != row[start] {
                runs.push((start, x - start));
                start = x;
            }
        }
        // Runs at even indices are dark.
        let mut i = 0;
        while i + 4 < runs.len() {
            let lens = [
                runs[i].1,
                runs[i + 1].1,
                runs[i + 2].1,
                runs[i + 3].1,
                runs[i + 4].1,
            ];
            if finder_ratios(lens) {
                let total: usize = lens.iter().sum();
                let cx = runs[i + 2].0 + runs[i + 2].1 / 2;
                if let Some((cy, vtotal)) = cross_check_column(bits, cx, y, total) {
                    let fx = runs[i + 2].0 as f32 + runs[i + 2].1 as f32 / 2.0 - 0.5;
                    raw.push((fx, cy, (total + vtotal) as f32 / 14.0));
                }
            }
            i += 2;
        }
    }
    merge_hits(&raw)
}

/// Merges raw hits (x, y, module) lying within two modules of each other
/// into one finder each, averaging their positions and module sizes. A hit
/// joins the first finder started that it lies near. The finders are filed
/// in cells of [`MERGE_CELL`] pixels by their current centre, so a hit
/// looks only at the cells it can reach: looking at every finder made a
/// frame tiled with thousands of finder patterns cost half a second at
/// 1920×1080 (quadratic in the finders).
fn merge_hits(raw: &[(f32, f32, f32)]) -> Vec<Finder> {
    let mut merged: Vec<Merged> = Vec::new();
    let mut cells: HashMap<(i64, i64), Vec<usize>> = HashMap::new();
    for &(x, y, m) in raw {
        // A finder the hit joins has its centre within four of the hit's
        // modules: twice the larger module size, at most twice the hit's.
        let reach = 4.0 * m;
        let (lo, hi) = (cell_of(x - reach, y - reach), cell_of(x + reach, y + reach));
        let span = (hi.0 - lo.0 + 1).saturating_mul(hi.1 - lo.1 + 1);
        let near = if usize::try_from(span).map_or(true, |span| span > merged.len()) {
            merged.iter().position(|f| f.takes(x, y, m))
        } else {
            (lo.1..=hi.1)
                .flat_map(|cy| (lo.0..=hi.0).map(move |cx| (cx, cy)))
                .filter_map(|cell| cells.get(&cell))
                .flatten()
                .copied()
                .filter(|&i| merged[i].takes(x, y, m))
                .min()
        };
        let (i, before) = match near {
            Some(i) => {
                let before = merged[i].cell();
                merged[i].add(x, y, m);
                (i, Some(before))
            }
            None => {
                merged.push(Merged::new(x, y, m));
                (merged.len() - 1, None)
            }
        };
        let after = merged[i].cell();
        if before != Some(after) {
            if let Some(ids) = before.and_then(|cell| cells.get_mut(&cell)) {
                ids.retain(|&j| j != i);
            }
            cells.entry(after).or_default().push(i);
        }
    }
    let mut finders: Vec<Finder> = merged.iter().map(Merged::finder).collect();
    finders.sort_by_key(|f| std::cmp::Reverse(f.hits));
    finders
}

/// The side of the cells [`merge_hits`] files finders in, in pixels: a
/// few small finders to a cell, and a large one's reach spans few cells.
const MERGE_CELL: f32 = 16.0;

/// The cell of [`MERGE_CELL`] pixels holding a point.
fn cell_of(x: f32, y: f32) -> (i64, i64) {
    (
        (x / MERGE_CELL).floor() as i64,
        (y / MERGE_CELL).floor() as i64,
    )
}

/// A finder being merged: the sums of its hits and how many.
struct Merged {
    x: f32,
    y: f32,
    module: f32,
    hits: u32,
}

impl Merged {
    fn new(x: f32, y: f32, module: f32) -> Self {
        Self {
            x,
            y,
            module,
            hits: 1,
        }
    }

    fn add(&mut self, x: f32, y: f32, module: f32) {
        self.x += x;
        self.y += y;
        self.module += module;
        self.hits += 1;
    }

    /// The finder so far: its hits' mean centre and module size.
    fn finder(&self) -> Finder {
        let k = self.hits as f32;
        Finder {
            x: self.x / k,
            y: self.y / k,
            module: self.module / k,
            hits: self.hits,
        }
    }

    /// The cell its centre is in.
    fn cell(&self) -> (i64, i64) {
        let f = self.finder();
        cell_of(f.x, f.y)
    }

    /// Whether a hit at (x, y) of module `m` is this finder: within twice
    /// the larger module size, the module sizes within a factor of two.
    fn takes(&self, x: f32, y: f32, m: f32) -> bool {
        let f = self.finder();
        (f.x - x).abs() <= 2.0 * f.module.max(m)
            && (f.y - y).abs() <= 2.0 * f.module.max(m)
            && m <= f.module * 2.0
            && f.module <= m * 2.0
    }
}

/// Three finders that can be one code: `corner` is the top-left one (the
/// right angle), `a` and `b` its neighbours.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FinderGroup {
    /// The finder at the right angle.
    pub corner: Finder,
    /// One neighbour of the corner.
    pub a: Finder,
    /// The other neighbour.
    pub b: Finder,
    /// Mean module size of the three, in pixels.
    pub module: f32,
}

impl FinderGroup {
    /// The code's four finder-centre corners (the fourth estimated as the
    /// parallelogram's), in pixels.
    pub fn corners(&self) -> [[f32; 2]; 4] {
        let c = self.corner;
        [
            [c.x, c.y],
            [self.a.x, self.a.y],
            [self.a.x + self.b.x - c.x, self.a.y + self.b.y - c.y],
            [self.b.x, self.b.y],
        ]
    }

    /// The rectangle that holds the whole code with a quiet zone of
    /// `quiet` modules (finder centres sit 3.5 modules inside the code's
    /// edge; perspective moves the fourth corner, so a little more is
    /// kept), clipped to `width`×`height`.
    pub fn bounds(&self, quiet: f32, width: usize, height: usize) -> Option<Rect> {
        let pts = self.corners();
        let margin = (3.5 + quiet) * self.module;
        let (mut x0, mut y0, mut x1, mut y1) = (f32::MAX, f32::MAX, f32::MIN, f32::MIN);
        for [x, y] in pts {
            (x0, y0, x1, y1) = (x0.min(x), y0.min(y), x1.max(x), y1.max(y));
        }
        // Perspective: the far corner can sit a tenth of the side further out.
        let slack = 0.1 * (x1 - x0).max(y1 - y0);
        let left = (x0 - margin - slack).max(0.0) as usize;
        let top = (y0 - margin - slack).max(0.0) as usize;
        let right = ((x1 + margin + slack).max(0.0) as usize).min(width);
        let bottom = ((y1 + margin + slack).max(0.0) as usize).min(height);
        (right > left + 8 && bottom > top + 8).then_some(Rect {
            x: left,
            y: top,
            width: right - left,
            height: bottom - top,
        })
    }
}

/// Groups finders into codes: three with similar module sizes forming a
/// roughly right-angled, roughly isosceles triangle whose legs are 14 to
/// 180 modules long (versions 1 to 40, with perspective). Best-shaped
/// groups first, each finder in one group. Given `share` (a still's
/// search, which has time for what this adds), groups that would hold
/// other finders are picked only after all others, a finder may serve a
/// second group that is well shaped ([`SHARED_SHAPE`]), and, given the
/// bitmap the finders were found in (`bits`), a group must show both its
/// timing lines.
pub fn group_finders(
    finders: &[Finder],
    max_groups: usize,
    share: bool,
    bits: Option<&Bitmap>,
) -> Vec<FinderGroup> {
    // A true finder's centre run is three modules tall, so about that many
    // rows confirm it; 1:1:3:1:1 runs inside a code's data rarely line up
    // over more than one or two rows. Then bound the O(n³) search to the
    // best-confirmed candidates: six per group wanted (24 for a gate's 4
    // groups, 96 at most: 150,000 triangles).
    let fs: Vec<Finder> = finders
        .iter()
        .filter(|f| f.hits >= 2 && f.hits as f32 >= 1.0 * f.module)
        .take((6 * max_groups).clamp(24, 96))
        .copied()
        .collect();
    let mut candidates: Vec<(f32, [usize; 3])> = Vec::new();
    for i in 0..fs.len() {
        for j in i + 1..fs.len() {
            for k in j + 1..fs.len() {
                let (mmin, mmax) = [fs[i].module, fs[j].module, fs[k].module]
                    .iter()
                    .fold((f32::MAX, 0.0f32), |(lo, hi), &m| (lo.min(m), hi.max(m)));
                if mmax > mmin * 1.8 {
                    continue;
                }
                let module = (fs[i].module + fs[j].module + fs[k].module) / 3.0;
                let mut best: Option<(f32, [usize; 3])> = None;
                for [c, a, b] in [[i, j, k], [j, i, k], [k, i, j]] {
                    let (vx, vy) = (fs[a].x - fs[c].x, fs[a].y - fs[c].y);
                    let (wx, wy) = (fs[b].x - fs[c].x, fs[b].y - fs[c].y);
                    let (la, lb) = (vx.hypot(vy), wx.hypot(wy));
                    if la < 1.0 || lb < 1.0 {
                        continue;
                    }
                    let ratio = la.max(lb) / la.min(lb);
                    let cos = (vx * wx + vy * wy) / (la * lb);
                    let legs = (la + lb) / 2.0 / module;
                    if ratio > 1.7 || cos.abs() > 0.45 || !(12.0..=190.0).contains(&legs) {
                        continue;
                    }
                    let min_hits = fs[c].hits.min(fs[a].hits).min(fs[b].hits);
                    let score =
                        (ratio - 1.0) + cos.abs() + (mmax / mmin - 1.0) + 1.0 / min_hits as f32;
                    if best.is_none_or(|(s, _)| score < s) {
                        best = Some((score, [c, a, b]));
                    }
                }
                if let Some(b) = best {
                    candidates.push(b);
                }
            }
        }
    }
    candidates.sort_by(|x, y| x.0.total_cmp(&y.0));
    let shapely: Vec<(f32, [usize; 3])> = candidates
        .iter()
        .copied()
        .filter(|&(score, _)| score <= SHARED_SHAPE)
        .collect();
    // Best first, each finder in one group. In a still's search
    // (`share`), three rounds. A group whose code would hold other
    // finders of its size waits for the second: on a sheet of labels in
    // rows, the finders of codes three apart make triangles as well shaped
    // as a code's own, each of which would take three finders from real
    // codes. In the third, a finder may serve a second group as well
    // shaped as a code's own ([`SHARED_SHAPE`]) and holding none: where
    // four labels meet, the nearest finders of three of them make such a
    // small triangle, and take a finder from the fourth (its timing lines
    // run through the blank gap between labels). The groups go out best
    // first, whatever round picked them.
    let mut uses = vec![0u8; fs.len()];
    let mut picked: Vec<(f32, [usize; 3])> = Vec::new();
    let mut waiting = Vec::new();
    for round in 0..if share { 3 } else { 1 } {
        let list = match round {
            0 => &candidates,
            1 => &std::mem::take(&mut waiting),
            _ => &shapely,
        };
        let most_uses = if round == 2 { 1 } else { 0 };
        for &(score, [c, a, b]) in list {
            if picked.len() >= max_groups {
                break;
            }
            let taken = [c, a, b].iter().any(|&i| uses[i] > most_uses);
            if taken || picked.iter().any(|(_, g)| *g == [c, a, b]) {
                continue;
            }
            if share
                && round != 1
                && !bits.is_none_or(|bits| timing_lines_alternate(bits, &fs, [c, a, b]))
            {
                continue;
            }
            if share && round != 1 && holds_other_finders(&fs, [c, a, b]) {
                if round == 0 {
                    waiting.push((score, [c, a, b]));
                }
                continue;
            }
            for i in [c, a, b] {
                uses[i] += 1;
            }
            picked.push((score, [c, a, b]));
        }
    }
    picked.sort_by(|x, y| x.0.total_cmp(&y.0));
    picked
        .into_iter()
        .map(|(_, [c, a, b])| FinderGroup {
            corner: fs[c],
            a: fs[a],
            b: fs[b],
            module: (fs[c].module + fs[a].module + fs[b].module) / 3.0,
        })
        .collect()
}

/// Whether both timing lines of the code finders `fs[c]` (the right
/// angle), `fs[a]` and `fs[b]` would make change colour as a code's do:
/// each runs 3 modules in from the line between two finder centres, from
/// one finder's separator to the other's, and a code's alternates dark
/// and light module by module. At least a third of its module boundaries
/// must show: where four labels meet, three finders of three labels make
/// a triangle as well shaped as a code's, and the lines between them run
/// through the blank gap between the labels.
fn timing_lines_alternate(bits: &Bitmap, fs: &[Finder], [c, a, b]: [usize; 3]) -> bool {
    let module = (fs[c].module + fs[a].module + fs[b].module) / 3.0;
    let along = |from: &Finder, to: &Finder, toward: &Finder| {
        let (dx, dy) = (to.x - from.x, to.y - from.y);
        let (ex, ey) = (toward.x - from.x, toward.y - from.y);
        let (len, across) = (dx.hypot(dy), ex.hypot(ey));
        if len < 1.0 || across < 1.0 {
            return false;
        }
        let (ux, uy) = (dx / len, dy / len);
        let (wx, wy) = (3.0 * module * ex / across, 3.0 * module * ey / across);
        let (start, end) = (4.5 * module, len - 4.5 * module);
        if end - start < 2.0 * module {
            return true;
        }
        let step = (module / 3.0).max(0.5);
        let mut changes = 0usize;
        let mut last = None;
        let mut t = start;
        while t <= end {
            let (x, y) = (from.x + ux * t + wx, from.y + uy * t + wy);
            if x >= 0.0 && y >= 0.0 && (x as usize) < bits.width() && (y as usize) < bits.height() {
                let dark = bits.is_dark(x as usize, y as usize);
                changes += usize::from(last.is_some_and(|l| l != dark));
                last = Some(dark);
            }
            t += step;
        }
        changes as f32 >= (end - start) / module / 3.0
    };
    along(&fs[c], &fs[a], &fs[b]) && along(&fs[c], &fs[b], &fs[a])
}

/// The worst shape score (the sum of the legs' length ratio less 1, the
/// cosine of their angle, the module sizes' ratio less 1 and one over the
/// fewest rows confirming a finder) of a group that may share a finder
/// with another (a code face-on whose finders 8 rows confirm scores
/// 0.125 and its module sizes' spread; tilt adds the rest).
const SHARED_SHAPE: f32 = 0.35;

/// Whether the code that finders `fs[c]` (the right angle), `fs[a]` and
/// `fs[b]` would make holds the centres of two or more other finders of
/// about their size and about as well confirmed (data modules can mimic
/// one finder, rarely two that strongly): inside the parallelogram on the
/// two legs. Finder centres sit 3.5 modules in from the code's edges, so a
/// neighbouring code's finders, beyond two quiet zones, stay outside.
fn holds_other_finders(fs: &[Finder], [c, a, b]: [usize; 3]) -> bool {
    let module = (fs[c].module + fs[a].module + fs[b].module) / 3.0;
    let hits = fs[c].hits.min(fs[a].hits).min(fs[b].hits) as f32;
    let (vx, vy) = (fs[a].x - fs[c].x, fs[a].y - fs[c].y);
    let (wx, wy) = (fs[b].x - fs[c].x, fs[b].y - fs[c].y);
    let det = vx * wy - vy * wx;
    if det.abs() < 1.0 {
        return false;
    }
    let held = fs.iter().enumerate().filter(|&(i, f)| {
        let like = f.module <= module * 1.5 && f.module * 1.5 >= module;
        if i == c || i == a || i == b || !like || (f.hits as f32) < 0.75 * hits {
            return false;
        }
        // The finder's centre as α·v + β·w from the corner, within two
        // modules of the parallelogram (a neighbour's finders are 11
        // modules or more beyond it, across one or two quiet zones).
        let (px, py) = (f.x - fs[c].x, f.y - fs[c].y);
        let alpha = (px * wy - py * wx) / det;
        let beta = (vx * py - vy * px) / det;
        let (ma, mb) = (2.0 * module / vx.hypot(vy), 2.0 * module / wx.hypot(wy));
        (-ma..=1.0 + ma).contains(&alpha) && (-mb..=1.0 + mb).contains(&beta)
    });
    held.count() >= 2
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encode::render_token;
    use crate::prepare::adaptive_threshold;
    use crate::{GreyImage, prepare};

    /// What [`merge_hits`] did before it filed finders in cells: each hit
    /// compared with every finder so far.
    fn merge_hits_looking_at_every_finder(raw: &[(f32, f32, f32)]) -> Vec<Finder> {
        let mut merged: Vec<Merged> = Vec::new();
        for &(x, y, m) in raw {
            match merged.iter_mut().find(|f| f.takes(x, y, m)) {
                Some(f) => f.add(x, y, m),
                None => merged.push(Merged::new(x, y, m)),
            }
        }
        let mut finders: Vec<Finder> = merged.iter().map(Merged::finder).collect();
        finders.sort_by_key(|f| std::cmp::Reverse(f.hits));
        finders
    }

    #[test]
    fn merging_by_cells_finds_what_looking_at_every_finder_finds() {
        use rand::{RngExt, SeedableRng};
        let mut rng = rand_pcg::Pcg64::seed_from_u64(21);
        for round in 0..200 {
            // Finders of every size, some overlapping, each seen by a few
            // rows with jitter, in row order, and stray hits between them.
            let mut raw = Vec::new();
            let finders = rng.random_range(1..60);
            for _ in 0..finders {
                let module = rng.random_range(0.5f32..40.0);
                let (x, y) = (
                    rng.random_range(-50.0..2000.0),
                    rng.random_range(-50.0..1100.0),
                );
                for _ in 0..rng.random_range(1..12) {
                    let jitter = module * 3.0;
                    raw.push((
                        x + rng.random_range(-jitter..=jitter),
                        y + rng.random_range(-jitter..=jitter),
                        module * rng.random_range(0.4..2.5),
                    ));
                }
            }
            for _ in 0..rng.random_range(0..40) {
                raw.push((
                    rng.random_range(0.0..2000.0),
                    rng.random_range(0.0..1100.0),
                    rng.random_range(0.5..300.0),
                ));
            }
            raw.sort_by(|a, b| a.1.total_cmp(&b.1));
            assert_eq!(
                merge_hits(&raw),
                merge_hits_looking_at_every_finder(&raw),
                "round {round}"
            );
        }
    }

    fn payload(seed: u8) -> Vec<u8> {
        (0..199u32)
            .map(|i| (i * 37 + u32::from(seed)) as u8)
            .collect()
    }

    #[test]
    fn ratios_accept_a_finder_and_reject_other_runs() {
        assert!(finder_ratios([4, 4, 12, 4, 4]));
        assert!(finder_ratios([3, 5, 11, 5, 4]));
        assert!(!finder_ratios([4, 4, 4, 4, 4]));
        assert!(!finder_ratios([1, 1, 1, 1, 1]));
        assert!(!finder_ratios([10, 2, 12, 2, 2]));
    }

    #[test]
    fn finds_the_three_finders_of_a_rendered_code() {
        // Version 10 (57 modules), 4 px per module, 4-module quiet zone:
        // finder centres at (4 + 3.5) * 4 - 0.5 = 29.5 and 29.5 + 50 * 4.
        let code = render_token(&payload(1), 4, 4).unwrap();
        let bits = adaptive_threshold(&code, 20, 8);
        let found = finder_patterns(&bits);
        let at = |x: f32, y: f32| {
            found.iter().any(|f| {
                (f.x - x).abs() < 2.0 && (f.y - y).abs() < 2.0 && (f.module - 4.0).abs() < 0.8
            })
        };
        assert!(at(29.5, 29.5), "{found:?}");
        assert!(at(229.5, 29.5), "{found:?}");
        assert!(at(29.5, 229.5), "{found:?}");
        // The three best-confirmed hits are the finders.
        assert!(found.len() >= 3);
        let groups = group_finders(&found, 4, false, None);
        assert_eq!(groups.len(), 1, "{groups:?}");
        let g = groups[0];
        assert!((g.corner.x - 29.5).abs() < 2.0 && (g.corner.y - 29.5).abs() < 2.0);
        let r = g.bounds(2.0, code.width(), code.height()).unwrap();
        assert!(r.x <= 8 && r.y <= 8, "{r:?}");
        assert!(r.x + r.width >= code.width() - 8, "{r:?}");
    }

    #[test]
    fn finds_finders_of_a_rotated_code() {
        // The same code turned by 30 degrees (nearest-neighbour), on white.
        let code = render_token(&payload(2), 5, 4).unwrap();
        let (w, h) = (code.width(), code.height());
        let side = w * 3 / 2;
        let (c, s) = (30f32.to_radians().cos(), 30f32.to_radians().sin());
        let mut data = vec![255u8; side * side];
        for y in 0..side {
            for x in 0..side {
                let (dx, dy) = (x as f32 - side as f32 / 2.0, y as f32 - side as f32 / 2.0);
                let sx = c * dx + s * dy + w as f32 / 2.0;
                let sy = -s * dx + c * dy + h as f32 / 2.0;
                if sx >= 0.0
                    && sy >= 0.0
                    && let Some(v) = code.get(sx as usize, sy as usize)
                {
                    data[y * side + x] = v;
                }
            }
        }
        let img = GreyImage::new(side, side, data).unwrap();
        let found = finder_patterns(&adaptive_threshold(&img, 24, 8));
        let groups = group_finders(&found, 4, false, None);
        assert_eq!(groups.len(), 1, "{found:?}");
        assert!((groups[0].module - 5.0).abs() < 1.0, "{groups:?}");
    }

    #[test]
    fn noise_and_flat_frames_give_no_group() {
        let noise = Bitmap::from_fn(300, 300, |x, y| {
            let h = ((x * 7919 + y * 104_729) as u32).wrapping_mul(2_654_435_761);
            h >> 31 == 1
        });
        assert!(group_finders(&finder_patterns(&noise), 4, false, None).is_empty());
        let flat = Bitmap::from_fn(100, 100, |_, _| false);
        assert!(finder_patterns(&flat).is_empty());
        let mut blank = GreyImage::filled(64, 64, 200).unwrap();
        prepare::invert(&mut blank);
        assert!(finder_patterns(&adaptive_threshold(&blank, 8, 8)).is_empty());
    }

    #[test]
    fn grouping_rejects_a_line_and_keeps_two_codes_apart() {
        let f = |x: f32, y: f32| Finder {
            x,
            y,
            module: 4.0,
            hits: 8,
        };
        // Three in a line are no code.
        assert!(
            group_finders(&[f(0.0, 0.0), f(100.0, 0.0), f(200.0, 0.0)], 4, false, None).is_empty()
        );
        // Two codes side by side: two groups, no finder shared.
        let two = [
            f(0.0, 0.0),
            f(200.0, 0.0),
            f(0.0, 200.0),
            f(600.0, 0.0),
            f(800.0, 0.0),
            f(600.0, 200.0),
        ];
        let g = group_finders(&two, 4, false, None);
        assert_eq!(g.len(), 2, "{g:?}");
        assert!(g.iter().any(|g| g.corner.x == 0.0 && g.corner.y == 0.0));
        assert!(g.iter().any(|g| g.corner.x == 600.0));
        assert_eq!(group_finders(&two, 1, false, None).len(), 1);
    }

    /// Issue 20: where four labels of a sheet meet, the top-left finder of
    /// one and the nearest finders of two neighbours make a triangle as
    /// well shaped as a code's; the lines between them run through the
    /// blank gap between the labels, not along timing patterns.
    #[test]
    fn issue20_finders_of_three_labels_meeting_have_no_timing_lines() {
        // Four version-1 labels (4 px modules, 4-module quiet zones) in a
        // 2 × 2 sheet.
        let labels: Vec<GreyImage> = (0..4)
            .map(|k| render_token(&[k as u8; 10], 4, 4).expect("a code"))
            .collect();
        let side = labels[0].width();
        let bits = Bitmap::from_fn(2 * side, 2 * side, |x, y| {
            let label = &labels[(y / side) * 2 + x / side];
            label.get(x % side, y % side).expect("inside") < 128
        });
        let size = 21.0f32;
        let finder = |label: usize, u: f32, v: f32| Finder {
            x: (label % 2 * side) as f32 + (4.0 + u) * 4.0,
            y: (label / 2 * side) as f32 + (4.0 + v) * 4.0,
            module: 4.0,
            hits: 9,
        };
        let (near, far) = (3.5, size - 3.5);
        // A label's own: top-left, top-right, bottom-left.
        let own = [
            finder(3, near, near),
            finder(3, far, near),
            finder(3, near, far),
        ];
        assert!(timing_lines_alternate(&bits, &own, [0, 1, 2]));
        // At the meeting point: the bottom-right label's top-left, the
        // bottom-left label's top-right, the top-right label's bottom-left.
        let meeting = [
            finder(3, near, near),
            finder(2, far, near),
            finder(1, near, far),
        ];
        assert!(!timing_lines_alternate(&bits, &meeting, [0, 1, 2]));
    }

    /// Issue 20: a sheet of 4 × 3 labels of version 8 (4 px modules, each
    /// label's quiet zone touching its neighbours'). A still's grouping (`share`) puts every code's own three
    /// finders together; one finder in one group, best shape first (a
    /// gate's), gives some to triangles across labels.
    #[test]
    fn issue20_a_sheet_of_labels_is_grouped_code_by_code_in_a_still() {
        let (module, cell) = (4.0f32, 57.0f32 * 4.0);
        let mut fs = Vec::new();
        let mut codes = Vec::new();
        for row in 0..3 {
            for col in 0..4 {
                let (x0, y0) = (col as f32 * cell, row as f32 * cell);
                let at = |u: f32, v: f32| Finder {
                    x: x0 + (4.0 + u) * module,
                    y: y0 + (4.0 + v) * module,
                    module,
                    hits: 9,
                };
                // The bottom-left finder a third of a module off, as a
                // camera's tilt leaves it: triangles across labels that
                // avoid it are the better shaped.
                let own = [at(3.5, 3.5), at(45.5, 3.5), at(3.8, 45.5)];
                codes.push(own);
                fs.extend(own);
            }
        }
        let whole = |groups: &[FinderGroup]| {
            codes
                .iter()
                .filter(|own| {
                    groups.iter().any(|g| {
                        [g.corner, g.a, g.b]
                            .iter()
                            .all(|f| own.iter().any(|o| o.x == f.x && o.y == f.y))
                    })
                })
                .count()
        };
        assert_eq!(whole(&group_finders(&fs, 48, true, None)), 12);
        assert!(whole(&group_finders(&fs, 48, false, None)) < 12);
    }
}
