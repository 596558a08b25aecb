//! Frame preparation steps, one function each, composed by the pipeline's stages.
//!
//! rqrr binarises with a running row average that fails on glare, gradients
//! and dark-mode codes, and its cost grows with frame size. Each step here
//! fixes one of those: [`downscale`] bounds the work, [`contrast_stretch`]
//! lifts low-contrast screens, [`box_blur`] removes moiré and JPEG noise,
//! [`adaptive_threshold`] binarises against the local mean (glare,
//! gradients), [`invert`] turns dark-mode codes dark-on-light, and
//! [`crop`] / [`tiles`] give regions of interest at full resolution.

use super::{GreyFrame, GreyImage};

/// A downscaled image and the factor back to the source: a pixel centre at
/// `(x, y)` here is at `((x + 0.5) * scale - 0.5, …)` in the source.
#[derive(Clone, Debug)]
pub struct Scaled {
    /// The downscaled image.
    pub image: GreyImage,
    /// Source pixels per pixel of `image` (≥ 1).
    pub scale: f32,
}

impl Scaled {
    /// Maps a point of the scaled image back to source pixels.
    #[cfg(test)]
    pub fn to_source(&self, x: f32, y: f32) -> (f32, f32) {
        ((x + 0.5) * self.scale - 0.5, (y + 0.5) * self.scale - 0.5)
    }
}

/// Shrinks a frame so that neither side exceeds `max_side`, by area
/// averaging (which also low-passes moiré); frames already small enough are
/// copied unchanged with scale 1.
pub fn downscale(frame: GreyFrame<'_>, max_side: usize) -> Scaled {
    let longest = frame.width().max(frame.height());
    let max_side = max_side.max(16);
    if longest <= max_side {
        return Scaled {
            image: frame.to_image(),
            scale: 1.0,
        };
    }
    downscale_by(frame, longest as f32 / max_side as f32)
}

/// Shrinks a frame by `factor` (≥ 1) by area averaging over the source
/// pixels each output pixel covers.
pub fn downscale_by(frame: GreyFrame<'_>, factor: f32) -> Scaled {
    let factor = if factor.is_finite() {
        factor.max(1.0)
    } else {
        1.0
    };
    let (sw, sh) = (frame.width(), frame.height());
    let k = factor.round() as usize;
    if k >= 2 && (factor - k as f32).abs() < 1e-6 && sw >= k && sh >= k {
        return downscale_int(frame, k);
    }
    // The small epsilon keeps 1920 / 2.4 at 800, not 799.9999 → 799.
    let dw = ((sw as f32 / factor + 1e-3).floor() as usize).clamp(1, sw);
    let dh = ((sh as f32 / factor + 1e-3).floor() as usize).clamp(1, sh);
    // Source column/row span of each output pixel, at least one pixel wide.
    let span = |d: usize, n: usize, src: usize| -> (usize, usize) {
        let a = ((d as f32 * src as f32) / n as f32) as usize;
        let b = (((d + 1) as f32 * src as f32) / n as f32) as usize;
        let a = a.min(src - 1);
        (a, b.clamp(a + 1, src))
    };
    let cols: Vec<(usize, usize)> = (0..dw).map(|d| span(d, dw, sw)).collect();
    let src = frame.data();
    let mut out = Vec::with_capacity(dw * dh);
    let mut row_sum = vec![0u32; sw];
    for dy in 0..dh {
        let (y0, y1) = span(dy, dh, sh);
        row_sum.iter_mut().for_each(|s| *s = 0);
        for y in y0..y1 {
            let row = &src[y * sw..(y + 1) * sw];
            for (s, &p) in row_sum.iter_mut().zip(row) {
                *s += u32::from(p);
            }
        }
        let rows = (y1 - y0) as u32;
        for &(x0, x1) in &cols {
            let sum: u32 = row_sum[x0..x1].iter().sum();
            let n = rows * (x1 - x0) as u32;
            out.push(((sum + n / 2) / n) as u8);
        }
    }
    Scaled {
        image: GreyImage::from_parts(dw, dh, out),
        scale: sw as f32 / dw as f32,
    }
}

/// [`downscale_by`] for a whole factor `k` ≥ 2: each output pixel is the
/// rounded mean of a `k`×`k` block (a last partial row or column of blocks
/// is dropped, as the general path does), summed row by row.
fn downscale_int(frame: GreyFrame<'_>, k: usize) -> Scaled {
    let (sw, sh) = (frame.width(), frame.height());
    let (dw, dh) = (sw / k, sh / k);
    let src = frame.data();
    let n = (k * k) as u32;
    let mut out = Vec::with_capacity(dw * dh);
    let mut sums = vec![0u32; dw];
    for dy in 0..dh {
        sums.iter_mut().for_each(|s| *s = 0);
        for y in dy * k..(dy + 1) * k {
            let row = &src[y * sw..y * sw + dw * k];
            for (s, block) in sums.iter_mut().zip(row.chunks_exact(k)) {
                *s += block.iter().map(|&p| u32::from(p)).sum::<u32>();
            }
        }
        out.extend(sums.iter().map(|&s| ((s + n / 2) / n) as u8));
    }
    Scaled {
        image: GreyImage::from_parts(dw, dh, out),
        scale: k as f32,
    }
}

/// Doubles a small image's size by bilinear interpolation: rqrr needs
/// modules of about four pixels or more, and interpolating before
/// thresholding places module edges at sub-pixel precision.
pub fn upscale2(image: &GreyImage) -> GreyImage {
    let (w, h) = (image.width(), image.height());
    let (dw, dh) = (w * 2, h * 2);
    let src = image.data();
    let mut out = Vec::with_capacity(dw * dh);
    for dy in 0..dh {
        // Destination pixel centre in source coordinates.
        let sy = ((dy as f32 + 0.5) / 2.0 - 0.5).clamp(0.0, (h - 1) as f32);
        let y0 = sy.floor() as usize;
        let y1 = (y0 + 1).min(h - 1);
        let fy = sy - y0 as f32;
        for dx in 0..dw {
            let sx = ((dx as f32 + 0.5) / 2.0 - 0.5).clamp(0.0, (w - 1) as f32);
            let x0 = sx.floor() as usize;
            let x1 = (x0 + 1).min(w - 1);
            let fx = sx - x0 as f32;
            let p = |x: usize, y: usize| f32::from(src[y * w + x]);
            let top = p(x0, y0) * (1.0 - fx) + p(x1, y0) * fx;
            let bottom = p(x0, y1) * (1.0 - fx) + p(x1, y1) * fx;
            out.push((top * (1.0 - fy) + bottom * fy).round() as u8);
        }
    }
    GreyImage::from_parts(dw, dh, out)
}

/// Stretches grey levels so that the `low_pct` and `high_pct` percentiles map
/// to 0 and 255: a dim or washed-out screen gets the full range, which the
/// fixed offsets of the thresholds assume. Flat images are left alone.
pub fn contrast_stretch(image: &mut GreyImage, low_pct: f32, high_pct: f32) {
    let mut hist = [0usize; 256];
    for &p in image.data() {
        hist[usize::from(p)] += 1;
    }
    let n = image.data().len();
    let rank = |pct: f32| -> usize { ((n as f32) * pct.clamp(0.0, 100.0) / 100.0) as usize };
    let percentile = |target: usize| -> u8 {
        let mut acc = 0;
        for (v, &c) in hist.iter().enumerate() {
            acc += c;
            if acc > target {
                return v as u8;
            }
        }
        255
    };
    let lo = percentile(rank(low_pct));
    let hi = percentile(rank(high_pct).min(n.saturating_sub(1)));
    if hi <= lo.saturating_add(8) {
        return;
    }
    let range = f32::from(hi - lo);
    let mut lut = [0u8; 256];
    for (v, out) in lut.iter_mut().enumerate() {
        let t = (v as f32 - f32::from(lo)) / range;
        *out = (t.clamp(0.0, 1.0) * 255.0).round() as u8;
    }
    for p in image.data_mut() {
        *p = lut[usize::from(*p)];
    }
}

/// Inverts grey levels (255 - v): turns a dark-mode (light-on-dark) code
/// into the dark-on-light form rqrr expects.
pub fn invert(image: &mut GreyImage) {
    for p in image.data_mut() {
        *p = 255 - *p;
    }
}

/// Box-blurs with a `(2 * radius + 1)²` window (separable running sums):
/// removes a phone screen's pixel grid (moiré) and JPEG block noise before
/// thresholding. Radius 0 copies.
pub fn box_blur(image: &GreyImage, radius: usize) -> GreyImage {
    if radius == 0 {
        return image.clone();
    }
    if radius == 1 {
        return box_blur3(image);
    }
    let (w, h) = (image.width(), image.height());
    let src = image.data();
    let r = radius;
    let n = (2 * r + 1) as u32;
    // Division by the window size as a rounded fixed-point multiply.
    let inv = (65_536 + n / 2) / n;
    let div = |sum: u32| ((sum * inv + 32_768) >> 16).min(255) as u8;
    // Horizontal running sums, edges replicated.
    let mut tmp = vec![0u8; w * h];
    for (row, out) in src.chunks_exact(w).zip(tmp.chunks_exact_mut(w)) {
        let (first, last) = (u32::from(row[0]), u32::from(row[w - 1]));
        let at = |i: usize| row.get(i).map_or(last, |&p| u32::from(p));
        let mut sum: u32 = first * r as u32 + (0..=r).map(at).sum::<u32>();
        for (x, o) in out.iter_mut().enumerate() {
            *o = div(sum);
            let add = at(x + r + 1);
            let sub = if x >= r { u32::from(row[x - r]) } else { first };
            sum = sum + add - sub;
        }
    }
    // Vertical running sums, one row at a time (cache friendly).
    let row_of = |y: isize| {
        let y = y.clamp(0, h as isize - 1) as usize;
        &tmp[y * w..(y + 1) * w]
    };
    let mut col = vec![0u32; w];
    for dy in -(r as isize)..=r as isize {
        for (c, &p) in col.iter_mut().zip(row_of(dy)) {
            *c += u32::from(p);
        }
    }
    let mut out = vec![0u8; w * h];
    for (y, dst) in out.chunks_exact_mut(w).enumerate() {
        for (d, &c) in dst.iter_mut().zip(&col) {
            *d = div(c);
        }
        let yi = y as isize;
        let (add, sub) = (row_of(yi + r as isize + 1), row_of(yi - r as isize));
        for ((c, &a), &s) in col.iter_mut().zip(add).zip(sub) {
            *c = *c + u32::from(a) - u32::from(s);
        }
    }
    GreyImage::from_parts(w, h, out)
}

/// The 3×3 box blur of [`box_blur`] (radius 1, edges replicated), written
/// as three-tap sums over whole rows so the compiler vectorises it: the
/// pipeline blurs every located crop.
fn box_blur3(image: &GreyImage) -> GreyImage {
    let (w, h) = (image.width(), image.height());
    let src = image.data();
    // Horizontal three-tap sums (0..=765), edges replicated.
    let mut rows = vec![0u16; w * h];
    for (row, out) in src.chunks_exact(w).zip(rows.chunks_exact_mut(w)) {
        if w == 1 {
            out[0] = u16::from(row[0]) * 3;
            continue;
        }
        out[0] = u16::from(row[0]) * 2 + u16::from(row[1]);
        out[w - 1] = u16::from(row[w - 1]) * 2 + u16::from(row[w - 2]);
        for (o, t) in out[1..w - 1].iter_mut().zip(row.windows(3)) {
            *o = u16::from(t[0]) + u16::from(t[1]) + u16::from(t[2]);
        }
    }
    // Vertical three-tap sums of those (0..=2295), divided by nine with a
    // rounded fixed-point multiply.
    let mut out = vec![0u8; w * h];
    for y in 0..h {
        let up = &rows[y.saturating_sub(1) * w..][..w];
        let mid = &rows[y * w..][..w];
        let down = &rows[(y + 1).min(h - 1) * w..][..w];
        let dst = &mut out[y * w..(y + 1) * w];
        for (((d, &a), &b), &c) in dst.iter_mut().zip(up).zip(mid).zip(down) {
            let sum = u32::from(a) + u32::from(b) + u32::from(c);
            *d = ((sum * 7282 + 32_768) >> 16) as u8;
        }
    }
    GreyImage::from_parts(w, h, out)
}

/// Unsharp mask: `p + amount * (p - blur(p))` with a box blur of `radius`.
/// Out-of-focus or motion-blurred modules regain their edges, so thin
/// light or dark gaps survive thresholding.
pub fn sharpen(image: &GreyImage, radius: usize, amount: f32) -> GreyImage {
    let blurred = box_blur(image, radius.max(1));
    let data = image
        .data()
        .iter()
        .zip(blurred.data())
        .map(|(&p, &b)| {
            let v = f32::from(p) + amount * (f32::from(p) - f32::from(b));
            v.round().clamp(0.0, 255.0) as u8
        })
        .collect();
    GreyImage::from_parts(image.width(), image.height(), data)
}

/// A binary image: `true` is dark (a QR module), the form rqrr searches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bitmap {
    width: usize,
    height: usize,
    dark: Vec<bool>,
}

impl Bitmap {
    /// Width in pixels.
    pub fn width(&self) -> usize {
        self.width
    }

    /// Height in pixels.
    pub fn height(&self) -> usize {
        self.height
    }

    /// Whether (x, y) is dark; `false` outside the image.
    pub fn is_dark(&self, x: usize, y: usize) -> bool {
        x < self.width && y < self.height && self.dark[y * self.width + x]
    }

    /// One row of the bitmap (`true` is dark); empty outside the image.
    pub fn row(&self, y: usize) -> &[bool] {
        if y < self.height {
            &self.dark[y * self.width..(y + 1) * self.width]
        } else {
            &[]
        }
    }

    /// A bitmap from a function of (x, y), for tests and synthetic inputs.
    #[cfg(test)]
    pub fn from_fn(width: usize, height: usize, dark: impl Fn(usize, usize) -> bool) -> Self {
        let mut bits = Vec::with_capacity(width * height);
        for y in 0..height {
            for x in 0..width {
                bits.push(dark(x, y));
            }
        }
        Self {
            width,
            height,
            dark: bits,
        }
    }

    /// Fraction of dark pixels, for tests and diagnostics.
    #[cfg(test)]
    pub fn dark_fraction(&self) -> f32 {
        let n = self.dark.iter().filter(|&&d| d).count();
        n as f32 / self.dark.len().max(1) as f32
    }

    /// Swaps dark and light: a dark-mode code thresholded as-is has light
    /// modules, and rqrr needs dark finder patterns.
    #[cfg(test)]
    pub fn invert(&mut self) {
        for d in &mut self.dark {
            *d = !*d;
        }
    }
}

/// Binarises against the mean of a `(2 * radius + 1)²` neighbourhood (via an
/// integral image): a pixel is dark when it is more than `offset` below its
/// local mean. Unlike a global or row-running threshold this survives glare
/// spots, gradients across a tilted screen and low contrast. `offset` keeps
/// flat areas (where pixel ≈ mean) light instead of noisy.
pub fn adaptive_threshold(image: &GreyImage, radius: usize, offset: u8) -> Bitmap {
    let (w, h) = (image.width(), image.height());
    let src = image.data();
    let stride = w + 1;
    let mut integral = vec![0u64; stride * (h + 1)];
    for y in 0..h {
        let mut row = 0u64;
        for x in 0..w {
            row += u64::from(src[y * w + x]);
            integral[(y + 1) * stride + x + 1] = integral[y * stride + x + 1] + row;
        }
    }
    let radius = radius.max(1);
    let offset = u64::from(offset);
    let mut dark = vec![false; w * h];
    for y in 0..h {
        let y0 = y.saturating_sub(radius);
        let y1 = (y + radius + 1).min(h);
        for x in 0..w {
            let x0 = x.saturating_sub(radius);
            let x1 = (x + radius + 1).min(w);
            let sum = integral[y1 * stride + x1] + integral[y0 * stride + x0]
                - integral[y0 * stride + x1]
                - integral[y1 * stride + x0];
            let n = ((y1 - y0) * (x1 - x0)) as u64;
            // pixel + offset < mean, in integers: (pixel + offset) * n < sum.
            dark[y * w + x] = (u64::from(src[y * w + x]) + offset) * n < sum;
        }
    }
    Bitmap {
        width: w,
        height: h,
        dark,
    }
}

/// A fast adaptive threshold in both polarities: the image is cut into
/// `block`×`block` cells, each cell's threshold is the mean of the 5×5
/// cells around it (a window of five blocks, as zxing's hybrid binariser),
/// and a pixel is `dark` when more than `offset` below its cell's
/// threshold, `light` when more than `offset` above it. A few operations
/// per pixel instead of a window sum per pixel: the locator runs it on
/// every frame.
pub fn block_threshold_both(image: &GreyImage, block: usize, offset: u8) -> (Bitmap, Bitmap) {
    let (w, h) = (image.width(), image.height());
    let block = block.max(2);
    let (bw, bh) = (w.div_ceil(block), h.div_ceil(block));
    let src = image.data();
    // Sum and pixel count of each cell.
    let mut sums = vec![0u32; bw * bh];
    let mut counts = vec![0u32; bw * bh];
    for y in 0..h {
        let cells = &mut sums[(y / block) * bw..(y / block + 1) * bw];
        let ns = &mut counts[(y / block) * bw..(y / block + 1) * bw];
        for (bx, chunk) in src[y * w..(y + 1) * w].chunks(block).enumerate() {
            cells[bx] += chunk.iter().map(|&p| u32::from(p)).sum::<u32>();
            ns[bx] += chunk.len() as u32;
        }
    }
    // Mean over the 5x5 cells around each cell (clipped at the edges).
    let mut thresholds = vec![0u8; bw * bh];
    for by in 0..bh {
        let (y0, y1) = (by.saturating_sub(2), (by + 3).min(bh));
        for bx in 0..bw {
            let (x0, x1) = (bx.saturating_sub(2), (bx + 3).min(bw));
            let (mut sum, mut n) = (0u64, 0u64);
            for yy in y0..y1 {
                for xx in x0..x1 {
                    sum += u64::from(sums[yy * bw + xx]);
                    n += u64::from(counts[yy * bw + xx]);
                }
            }
            thresholds[by * bw + bx] = (sum / n.max(1)) as u8;
        }
    }
    let offset = i16::from(offset);
    let mut dark = vec![false; w * h];
    let mut light = vec![false; w * h];
    for y in 0..h {
        let t_row = &thresholds[(y / block) * bw..(y / block + 1) * bw];
        let row = &src[y * w..(y + 1) * w];
        let d_row = &mut dark[y * w..(y + 1) * w];
        let l_row = &mut light[y * w..(y + 1) * w];
        for (bx, ((px, d), l)) in row
            .chunks(block)
            .zip(d_row.chunks_mut(block))
            .zip(l_row.chunks_mut(block))
            .enumerate()
        {
            let t = i16::from(t_row[bx]);
            for ((&p, d), l) in px.iter().zip(d).zip(l) {
                let p = i16::from(p);
                *d = p + offset < t;
                *l = p > t + offset;
            }
        }
    }
    (
        Bitmap {
            width: w,
            height: h,
            dark,
        },
        Bitmap {
            width: w,
            height: h,
            dark: light,
        },
    )
}

/// Enlarges an image by `factor` (≥ 1) with bilinear interpolation, pixel
/// centres aligned as in [`downscale_by`]: small modules (a code far away,
/// a VGA camera) reach the three to four pixels rqrr needs. The output is
/// at most [`MAX_DIMENSION`](super::MAX_DIMENSION) a side.
pub fn upscale_by(image: &GreyImage, factor: f32) -> Scaled {
    let factor = if factor.is_finite() {
        factor.clamp(1.0, 8.0)
    } else {
        1.0
    };
    let (w, h) = (image.width(), image.height());
    let dw = ((w as f32 * factor).round() as usize).clamp(w, super::MAX_DIMENSION.max(w));
    let dh = ((h as f32 * factor).round() as usize).clamp(h, super::MAX_DIMENSION.max(h));
    // Source position of a destination pixel centre: index and weight of
    // the next pixel in 1/256ths.
    let taps = |d: usize, n: usize, len: usize| -> (usize, usize, u32) {
        let s = ((d as f32 + 0.5) * len as f32 / n as f32 - 0.5).clamp(0.0, (len - 1) as f32);
        let i = s.floor() as usize;
        (
            i,
            (i + 1).min(len - 1),
            ((s - i as f32) * 256.0).round() as u32,
        )
    };
    let xt: Vec<(usize, usize, u32)> = (0..dw).map(|dx| taps(dx, dw, w)).collect();
    let src = image.data();
    let mut out = Vec::with_capacity(dw * dh);
    let mut mixed = vec![0u32; w];
    for dy in 0..dh {
        let (y0, y1, fy) = taps(dy, dh, h);
        let (r0, r1) = (&src[y0 * w..(y0 + 1) * w], &src[y1 * w..(y1 + 1) * w]);
        // Vertical blend first (in 1/256ths), then horizontal.
        for ((m, &a), &b) in mixed.iter_mut().zip(r0).zip(r1) {
            *m = u32::from(a) * (256 - fy) + u32::from(b) * fy;
        }
        out.extend(
            xt.iter().map(|&(x0, x1, fx)| {
                ((mixed[x0] * (256 - fx) + mixed[x1] * fx + 32_768) >> 16) as u8
            }),
        );
    }
    Scaled {
        image: GreyImage::from_parts(dw, dh, out),
        scale: w as f32 / dw as f32,
    }
}

/// A rectangle of interest in a frame, in pixels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rect {
    /// Left edge.
    pub x: usize,
    /// Top edge.
    pub y: usize,
    /// Width.
    pub width: usize,
    /// Height.
    pub height: usize,
}

impl Rect {
    /// Whether the point (x, y) lies inside.
    pub fn contains(&self, [x, y]: [f32; 2]) -> bool {
        x >= self.x as f32
            && y >= self.y as f32
            && x < (self.x + self.width) as f32
            && y < (self.y + self.height) as f32
    }
}

/// Copies a rectangle of a frame (clipped to the frame), so a region can be
/// searched at full resolution while the whole frame is searched downscaled.
/// `None` when the clipped rectangle is empty.
pub fn crop(frame: GreyFrame<'_>, rect: Rect) -> Option<GreyImage> {
    let x0 = rect.x.min(frame.width());
    let y0 = rect.y.min(frame.height());
    let x1 = rect.x.saturating_add(rect.width).min(frame.width());
    let y1 = rect.y.saturating_add(rect.height).min(frame.height());
    if x1 <= x0 || y1 <= y0 {
        return None;
    }
    let w = x1 - x0;
    let mut out = Vec::with_capacity(w * (y1 - y0));
    for y in y0..y1 {
        let start = y * frame.width() + x0;
        out.extend_from_slice(&frame.data()[start..start + w]);
    }
    Some(GreyImage::from_parts(w, y1 - y0, out))
}

/// Overlapping tiles of at most `tile`×`tile` pixels covering a frame, each
/// overlapping its neighbours by `overlap` pixels so that a code cut by one
/// tile edge lies whole in another tile when it is smaller than the overlap.
pub fn tiles(width: usize, height: usize, tile: usize, overlap: usize) -> Vec<Rect> {
    let tile = tile.max(16);
    let overlap = overlap.min(tile / 2);
    let starts = |len: usize| -> Vec<usize> {
        if len <= tile {
            return vec![0];
        }
        let step = tile - overlap;
        let count = (len - overlap).div_ceil(step);
        (0..count)
            .map(|i| {
                // Spread the tiles evenly so the last one ends at the edge.
                if count == 1 {
                    0
                } else {
                    i * (len - tile) / (count - 1)
                }
            })
            .collect()
    };
    let mut out = Vec::new();
    for y in starts(height) {
        for x in starts(width) {
            out.push(Rect {
                x,
                y,
                width: tile.min(width),
                height: tile.min(height),
            });
        }
    }
    out
}

/// Regions likely to hold a code: cells of `cell`×`cell` pixels whose
/// mean absolute gradient is high (a QR code is dense with edges, walls and
/// screens are not) are grouped into connected blobs, and each blob's
/// bounding box, grown by `margin` cells for the quiet zone, is returned,
/// largest first, at most `max` of them. Searching these crops instead of the
/// whole frame cuts rqrr's work several times over.
pub fn regions_of_interest(
    frame: GreyFrame<'_>,
    cell: usize,
    margin: usize,
    max: usize,
) -> Vec<Rect> {
    let cell = cell.max(4);
    let (w, h) = (frame.width(), frame.height());
    let (cw, ch) = (w / cell, h / cell);
    if cw < 3 || ch < 3 {
        return Vec::new();
    }
    let src = frame.data();
    // Activity per cell: mean |dx| + |dy| over every other pixel.
    let mut activity = vec![0u32; cw * ch];
    for cy in 0..ch {
        for cx in 0..cw {
            let mut sum = 0u32;
            let mut n = 0u32;
            for y in (cy * cell..(cy + 1) * cell).step_by(2) {
                let row = y * w;
                for x in (cx * cell..(cx + 1) * cell).step_by(2) {
                    let p = i32::from(src[row + x]);
                    let right = i32::from(src[row + (x + 1).min(w - 1)]);
                    let down = i32::from(src[(y + 1).min(h - 1) * w + x]);
                    sum += (p - right).unsigned_abs() + (p - down).unsigned_abs();
                    n += 1;
                }
            }
            activity[cy * cw + cx] = sum / n.max(1);
        }
    }
    let mut sorted = activity.clone();
    sorted.sort_unstable();
    let top = sorted[sorted.len() * 98 / 100];
    let threshold = (top * 2 / 5).max(6);
    let mut label = vec![0usize; cw * ch];
    let mut blobs: Vec<(usize, usize, usize, usize, usize)> = Vec::new();
    let mut stack = Vec::new();
    for start in 0..cw * ch {
        if label[start] != 0 || activity[start] < threshold {
            continue;
        }
        let id = blobs.len() + 1;
        let (mut x0, mut y0, mut x1, mut y1, mut count) = (cw, ch, 0, 0, 0);
        label[start] = id;
        stack.push(start);
        while let Some(i) = stack.pop() {
            let (x, y) = (i % cw, i / cw);
            (x0, y0, x1, y1) = (x0.min(x), y0.min(y), x1.max(x), y1.max(y));
            count += 1;
            for (dx, dy) in [
                (-1isize, 0isize),
                (1, 0),
                (0, -1),
                (0, 1),
                (-1, -1),
                (1, 1),
                (-1, 1),
                (1, -1),
            ] {
                let (nx, ny) = (x as isize + dx, y as isize + dy);
                if nx < 0 || ny < 0 || nx >= cw as isize || ny >= ch as isize {
                    continue;
                }
                let j = ny as usize * cw + nx as usize;
                if label[j] == 0 && activity[j] >= threshold {
                    label[j] = id;
                    stack.push(j);
                }
            }
        }
        blobs.push((x0, y0, x1, y1, count));
    }
    // A code needs a few cells each way; keep the biggest blobs.
    blobs.retain(|&(x0, y0, x1, y1, count)| x1 - x0 >= 2 && y1 - y0 >= 2 && count >= 6);
    blobs.sort_by_key(|&(.., count)| std::cmp::Reverse(count));
    blobs
        .into_iter()
        .take(max)
        .map(|(x0, y0, x1, y1, _)| {
            let x = x0.saturating_sub(margin) * cell;
            let y = y0.saturating_sub(margin) * cell;
            let xe = ((x1 + 1 + margin) * cell).min(w);
            let ye = ((y1 + 1 + margin) * cell).min(h);
            Rect {
                x,
                y,
                width: xe - x,
                height: ye - y,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(w: usize, h: usize, f: impl Fn(usize, usize) -> u8) -> GreyImage {
        let mut data = Vec::with_capacity(w * h);
        for y in 0..h {
            for x in 0..w {
                data.push(f(x, y));
            }
        }
        GreyImage::new(w, h, data).unwrap()
    }

    #[test]
    fn downscale_keeps_small_frames_and_averages_large_ones() {
        let small = image(100, 50, |x, _| x as u8);
        let s = downscale(small.as_frame(), 200);
        assert_eq!(s.scale, 1.0);
        assert_eq!(s.image, small);

        // 2x2 checkerboard averages to mid-grey at half size.
        let checker = image(400, 200, |x, y| if (x + y) % 2 == 0 { 0 } else { 200 });
        let s = downscale(checker.as_frame(), 200);
        assert_eq!((s.image.width(), s.image.height()), (200, 100));
        assert!((s.scale - 2.0).abs() < 1e-6);
        assert!(s.image.data().iter().all(|&p| p == 100));
        // Pixel centres map back: (0,0) covers source 0..2, centre 0.5.
        assert_eq!(s.to_source(0.0, 0.0), (0.5, 0.5));
    }

    #[test]
    fn downscale_non_integer_factor_bounds_the_longest_side() {
        let img = image(1920, 1080, |x, y| ((x ^ y) & 0xff) as u8);
        let s = downscale(img.as_frame(), 800);
        assert!(s.image.width() <= 800 && s.image.height() <= 800);
        assert_eq!(s.image.width(), 800);
        assert!((s.scale - 2.4).abs() < 0.01);
    }

    #[test]
    fn upscale2_doubles_and_interpolates() {
        let img = image(2, 1, |x, _| [0, 200][x]);
        let up = upscale2(&img);
        assert_eq!((up.width(), up.height()), (4, 2));
        assert_eq!(up.data()[..4], [0, 50, 150, 200]);
        let flat = image(3, 3, |_, _| 40);
        assert!(upscale2(&flat).data().iter().all(|&p| p == 40));
    }

    #[test]
    fn contrast_stretch_maps_narrow_range_to_full() {
        let mut img = image(64, 64, |x, _| if x < 32 { 110 } else { 140 });
        contrast_stretch(&mut img, 1.0, 99.0);
        assert_eq!(img.get(0, 0), Some(0));
        assert_eq!(img.get(63, 0), Some(255));
        // A flat image is left alone.
        let mut flat = image(8, 8, |_, _| 77);
        contrast_stretch(&mut flat, 1.0, 99.0);
        assert!(flat.data().iter().all(|&p| p == 77));
    }

    #[test]
    fn invert_flips_levels() {
        let mut img = image(3, 1, |x, _| [0, 100, 255][x]);
        invert(&mut img);
        assert_eq!(img.data(), &[255, 155, 0]);
    }

    #[test]
    fn box_blur_removes_a_fine_grid_and_keeps_flat_areas() {
        // A 1-pixel line grid (a screen's pixel grid) becomes nearly flat.
        let img = image(60, 60, |x, _| if x % 3 == 0 { 60 } else { 240 });
        let b = box_blur(&img, 1);
        let inner: Vec<u8> = (5..55).map(|x| b.get(x, 30).unwrap()).collect();
        let (min, max) = (inner.iter().min().unwrap(), inner.iter().max().unwrap());
        assert!(max - min <= 1, "{min}..{max}");
        let flat = image(10, 10, |_, _| 90);
        assert_eq!(box_blur(&flat, 2), flat);
        assert_eq!(box_blur(&img, 0), img);
    }

    #[test]
    fn box_blur3_matches_the_general_blur() {
        let img = image(37, 23, |x, y| ((x * 53 + y * 97 + x * y) % 256) as u8);
        let fast = box_blur(&img, 1);
        // The running-sum path with radius 1, written out.
        let at = |x: isize, y: isize| {
            u32::from(
                img.get(x.clamp(0, 36) as usize, y.clamp(0, 22) as usize)
                    .unwrap(),
            )
        };
        for y in 0..23isize {
            for x in 0..37isize {
                let sum: u32 = (-1..=1)
                    .flat_map(|dy| (-1..=1).map(move |dx| (dx, dy)))
                    .map(|(dx, dy)| at(x + dx, y + dy))
                    .sum();
                let want = (f64::from(sum) / 9.0).round() as i32;
                let got = i32::from(fast.get(x as usize, y as usize).unwrap());
                assert!((got - want).abs() <= 1, "({x},{y}) {got} vs {want}");
            }
        }
        let one = image(1, 3, |_, y| [0, 90, 180][y]);
        assert_eq!(box_blur(&one, 1).data(), &[30, 90, 150]);
    }

    #[test]
    fn downscale_by_a_whole_factor_averages_blocks() {
        let img = image(7, 5, |x, y| (x * 10 + y) as u8);
        let s = downscale_by(img.as_frame(), 2.0);
        assert_eq!((s.image.width(), s.image.height()), (3, 2));
        // Block (0..2, 0..2): 0, 10, 1, 11 → 5.5 → 6.
        assert_eq!(s.image.get(0, 0), Some(6));
        // Block (4..6, 2..4): 42, 52, 43, 53 → 47.5 → 48.
        assert_eq!(s.image.get(2, 1), Some(48));
        // Exactly two source pixels per pixel (the seventh column is dropped).
        assert_eq!(s.scale, 2.0);
    }

    #[test]
    fn sharpen_steepens_a_soft_edge_and_keeps_flat_areas() {
        let soft = image(20, 3, |x, _| (x * 12).min(255) as u8);
        let edge = image(20, 3, |x, _| if x < 10 { 60 } else { 180 });
        let blurred = box_blur(&edge, 2);
        let sharp = sharpen(&blurred, 2, 1.5);
        // Next to the edge the sharpened image is further from mid-grey.
        assert!(sharp.get(8, 1).unwrap() < blurred.get(8, 1).unwrap());
        assert!(sharp.get(11, 1).unwrap() > blurred.get(11, 1).unwrap());
        let flat = image(9, 9, |_, _| 100);
        assert_eq!(sharpen(&flat, 1, 2.0), flat);
        assert_eq!(sharpen(&soft, 1, 0.0), soft);
    }

    /// Whether (x, y) is in a dark square of [`gradient_squares`].
    fn in_square(x: usize, y: usize) -> bool {
        (x / 10 + y / 10).is_multiple_of(2)
    }

    /// Dark 10-pixel squares on a 200×100 background that ramps from dark
    /// to bright, with a contrast of 60 everywhere: no global threshold
    /// separates them.
    fn gradient_squares() -> GreyImage {
        image(200, 100, |x, y| {
            let bg = 40 + (x as u32 * 200 / 200) as u8;
            if in_square(x, y) {
                bg.saturating_sub(40)
            } else {
                bg.saturating_add(20)
            }
        })
    }

    /// Pixels of a 200×100 bitmap dark where [`gradient_squares`] is
    /// light or the other way round.
    fn wrong_pixels(bits: &Bitmap) -> usize {
        (0..100)
            .flat_map(|y| (0..200).map(move |x| (x, y)))
            .filter(|&(x, y)| bits.is_dark(x, y) != in_square(x, y))
            .count()
    }

    #[test]
    fn adaptive_threshold_survives_a_gradient_and_glare() {
        let img = gradient_squares();
        let wrong = wrong_pixels(&adaptive_threshold(&img, 12, 5));
        assert!(wrong < 200 * 100 / 50, "{wrong} wrong pixels");
        // A flat image is all light thanks to the offset.
        let flat = image(30, 30, |_, _| 128);
        assert_eq!(adaptive_threshold(&flat, 5, 3).dark_fraction(), 0.0);
    }

    #[test]
    fn block_threshold_survives_a_gradient_and_finds_both_polarities() {
        let img = gradient_squares();
        let (dark, light) = block_threshold_both(&img, 8, 5);
        for y in 0..100 {
            for x in 0..200 {
                // No pixel is both.
                assert!(!(dark.is_dark(x, y) && light.is_dark(x, y)));
            }
        }
        let wrong = wrong_pixels(&dark);
        assert!(wrong < 200 * 100 / 50, "{wrong} wrong pixels");
        assert!(light.is_dark(15, 5) && !light.is_dark(5, 5));
        let flat = image(33, 17, |_, _| 90);
        let (d, l) = block_threshold_both(&flat, 4, 3);
        assert_eq!((d.dark_fraction(), l.dark_fraction()), (0.0, 0.0));
        assert_eq!((d.width(), d.height()), (33, 17));
    }

    #[test]
    fn upscale_by_keeps_levels_and_pixel_centres() {
        let img = image(10, 4, |x, _| if x < 5 { 0 } else { 200 });
        let s = upscale_by(&img, 2.5);
        assert_eq!((s.image.width(), s.image.height()), (25, 10));
        assert!((s.scale - 0.4).abs() < 1e-6);
        // Far from the edge the levels are kept; the edge stays at x = 5 in
        // source pixels, i.e. 12.5 here.
        assert_eq!(s.image.get(2, 3), Some(0));
        assert_eq!(s.image.get(22, 3), Some(200));
        let mid = s.image.get(12, 3).unwrap();
        assert!((60..=140).contains(&mid), "{mid}");
        assert!((s.to_source(12.0, 0.0).0 - 4.5).abs() < 1e-4);
        assert_eq!(upscale_by(&img, 0.5).image, img);
        assert_eq!(upscale_by(&img, f32::NAN).image, img);
    }

    #[test]
    fn bitmap_rows_and_from_fn() {
        let b = Bitmap::from_fn(3, 2, |x, y| x == y);
        assert_eq!(b.row(1), &[false, true, false]);
        assert!(b.row(2).is_empty());
    }

    #[test]
    fn bitmap_invert_swaps() {
        let img = image(4, 1, |x, _| if x < 2 { 0 } else { 255 });
        let mut bits = adaptive_threshold(&img, 4, 2);
        assert!(bits.is_dark(0, 0) && !bits.is_dark(3, 0));
        bits.invert();
        assert!(!bits.is_dark(0, 0) && bits.is_dark(3, 0));
        assert!(!bits.is_dark(99, 0));
    }

    #[test]
    fn crop_clips_and_copies() {
        let img = image(10, 10, |x, y| (y * 10 + x) as u8);
        let c = crop(
            img.as_frame(),
            Rect {
                x: 8,
                y: 7,
                width: 5,
                height: 5,
            },
        )
        .unwrap();
        assert_eq!((c.width(), c.height()), (2, 3));
        assert_eq!(c.get(0, 0), Some(78));
        let none = Rect {
            x: 10,
            y: 0,
            width: 3,
            height: 3,
        };
        assert!(crop(img.as_frame(), none).is_none());
        assert!(none.contains([10.0, 0.0]) && none.contains([12.9, 2.9]));
        assert!(!none.contains([13.0, 1.0]) && !none.contains([9.9, 1.0]));
    }

    #[test]
    fn regions_of_interest_find_a_busy_patch_on_a_flat_frame() {
        // A 160x160 checkerboard of 5-pixel squares at (400, 200) in a flat frame.
        let img = image(1280, 720, |x, y| {
            if (400..560).contains(&x) && (200..360).contains(&y) {
                if (x / 5 + y / 5) % 2 == 0 { 20 } else { 230 }
            } else {
                120
            }
        });
        let rois = regions_of_interest(img.as_frame(), 16, 1, 3);
        assert_eq!(rois.len(), 1, "{rois:?}");
        let r = rois[0];
        assert!(
            r.x <= 400 && r.y <= 200 && r.x + r.width >= 560 && r.y + r.height >= 360,
            "{r:?}"
        );
        assert!(r.width < 260 && r.height < 260, "{r:?}");
        let flat = image(640, 480, |_, _| 90);
        assert!(regions_of_interest(flat.as_frame(), 16, 1, 3).is_empty());
    }

    #[test]
    fn tiles_cover_the_frame_with_overlap() {
        let t = tiles(1920, 1080, 800, 300);
        for y in (0..1080).step_by(7) {
            for x in (0..1920).step_by(7) {
                assert!(
                    t.iter()
                        .any(|r| x >= r.x && x < r.x + r.width && y >= r.y && y < r.y + r.height)
                );
            }
        }
        assert!(
            t.iter()
                .all(|r| r.x + r.width <= 1920 && r.y + r.height <= 1080)
        );
        assert_eq!(tiles(500, 400, 800, 300).len(), 1);
    }
}
