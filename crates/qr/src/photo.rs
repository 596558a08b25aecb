//! Photo-like frames of QR codes as operators also meet them off the gate
//! (issue 20): printed labels and posters of every version and
//! error-correction level, many codes in one photo, codes that fill the
//! frame, labels on bottles (a cylinder), strong lighting gradients and
//! shadows, codes on monitors, any rotation, blur, mirrored codes, and
//! sheets of labels.
//! Beside the phone-screen corpus of [`super::synth`]; deterministic from
//! a seed, one category per [`Category`], the scenes in [`photo_scenes`].
//!
//! A label is drawn by splatting: a dense grid of points on it (a plane, or
//! a cylinder for curved surfaces) is rotated, placed and projected by a
//! pinhole camera, and each camera pixel averages the points that land on
//! it. Then light (a gradient, a shadow, an exposure), blur, sensor noise
//! and JPEG, as in [`super::synth`].

use std::f32::consts::PI;
use std::path::{Path, PathBuf};

use qrcode::EcLevel;
use rand::{RngExt, SeedableRng};
use rand_pcg::Pcg64Mcg;

use super::encode::{Modules, byte_capacity, modules_at};
use super::prepare::box_blur;
use super::synth::{background, gaussian, jpeg_bytes, motion_blur, to_grey, write_entry};
use super::{GreyImage, QrError};

/// What a photo of codes shows; the corpus has the same number of each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Category {
    /// A printed label or poster, frontal to moderately tilted, well lit.
    Nominal,
    /// Versions 11 to 40.
    HighVersion,
    /// Eight to sixteen small codes in one photo.
    ManyCodes,
    /// A steep lighting gradient, a shadow with a sharp edge, over- or
    /// under-exposure.
    Lighting,
    /// A label around a bottle or pillar (a cylinder) spanning 60–140°.
    Curved,
    /// A code that fills the frame, its quiet zone (two modules) at the
    /// frame's edge.
    CloseUp,
    /// A code on a monitor: its pixel grid seen by the camera's (moiré).
    Monitor,
    /// Any roll, including upside down and a quarter turn.
    Rotation,
    /// Motion or focus blur.
    Blurred,
    /// A mirrored code (seen through glass from behind, or in a mirror).
    Mirrored,
    /// A sheet of labels: 6 to 20 codes of one version in rows and
    /// columns, each label's quiet zone nearly touching its neighbours'.
    LabelSheet,
}

impl Category {
    /// Every category, in the order of the tables.
    pub const ALL: [Category; 11] = [
        Category::Nominal,
        Category::HighVersion,
        Category::ManyCodes,
        Category::Lighting,
        Category::Curved,
        Category::CloseUp,
        Category::Monitor,
        Category::Rotation,
        Category::Blurred,
        Category::Mirrored,
        Category::LabelSheet,
    ];

    /// The name files of this category start with.
    pub fn name(self) -> &'static str {
        match self {
            Category::Nominal => "nominal",
            Category::HighVersion => "high-version",
            Category::ManyCodes => "many-codes",
            Category::Lighting => "lighting",
            Category::Curved => "curved",
            Category::CloseUp => "close-up",
            Category::Monitor => "monitor",
            Category::Rotation => "rotation",
            Category::Blurred => "blurred",
            Category::Mirrored => "mirrored",
            Category::LabelSheet => "label-sheet",
        }
    }

    /// The category of a corpus file name (`CATEGORY-NN.jpg`).
    pub fn of_file(name: &str) -> Option<Category> {
        Category::ALL
            .into_iter()
            .filter(|c| name.starts_with(c.name()))
            .max_by_key(|c| c.name().len())
    }
}

/// One photo to render.
#[derive(Clone, Debug, PartialEq)]
pub struct PhotoScene {
    /// File name without extension: `CATEGORY-NN`.
    pub name: String,
    /// What it shows.
    pub category: Category,
    /// Frame width in pixels.
    pub width: usize,
    /// Frame height in pixels.
    pub height: usize,
}

/// A rendered photo and the payloads it holds.
#[derive(Clone, Debug)]
pub struct Photo {
    /// The scene it renders.
    pub scene: PhotoScene,
    /// The frame.
    pub image: GreyImage,
    /// Every code's payload, in drawing order.
    pub payloads: Vec<Vec<u8>>,
    /// The quality it is stored at as JPEG.
    pub jpeg_quality: u8,
}

/// Photos per category in the corpus.
pub const PER_CATEGORY: usize = 6;

/// The corpus' scenes: [`PER_CATEGORY`] of each category, at 640×480,
/// 1280×720 and 1920×1080 (many codes and label sheets: always
/// 1920×1080).
pub fn photo_scenes() -> Vec<PhotoScene> {
    let sizes = [(1280, 720), (1920, 1080), (640, 480)];
    let mut out = Vec::new();
    for category in Category::ALL {
        for i in 0..PER_CATEGORY {
            let (width, height) = match category {
                Category::ManyCodes | Category::LabelSheet => (1920, 1080),
                Category::CloseUp | Category::HighVersion => sizes[i % 2],
                _ => sizes[i % 3],
            };
            out.push(PhotoScene {
                name: format!("{}-{i:02}", category.name()),
                category,
                width,
                height,
            });
        }
    }
    out
}

/// Where a label is and what it looks like.
struct Label {
    modules: Modules,
    /// Quiet-zone modules drawn around the code.
    quiet: usize,
    mirrored: bool,
    /// Angle the label's width spans around a cylinder (0: flat).
    span: f32,
    /// Screen pixels per module, for a code on a monitor.
    screen_px: Option<f32>,
    /// Where its centre lands, pixels.
    centre: (f32, f32),
    /// Its side (with the quiet zone) when frontal, pixels.
    side_px: f32,
    roll: f32,
    yaw: f32,
    pitch: f32,
}

/// Levels of paper and ink (a monitor's white and black are other).
const PAPER: f32 = 232.0;
const INK: f32 = 28.0;

impl Label {
    /// The label's level at (s, t), both −0.5 … 0.5 across its side.
    fn level(&self, s: f32, t: f32) -> f32 {
        let total = (self.modules.size + 2 * self.quiet) as f32;
        let mut u = (s + 0.5) * total;
        if self.mirrored {
            u = total - u;
        }
        let v = (t + 0.5) * total;
        let dark = self.modules.is_dark(
            u.floor() as isize - self.quiet as isize,
            v.floor() as isize - self.quiet as isize,
        );
        match self.screen_px {
            None => {
                if dark {
                    INK
                } else {
                    PAPER
                }
            }
            Some(px) => {
                // Each screen pixel lit over 75 % × 80 % of its cell.
                let (fu, fv) = ((u * px).fract(), (v * px).fract());
                let level = if dark { 35.0 } else { 215.0 };
                if fu < 0.75 && fv < 0.8 {
                    level
                } else {
                    level * 0.4
                }
            }
        }
    }

    /// Camera pixel of label point (s, t), or `None` behind the camera.
    fn project(&self, w: usize, h: usize, s: f32, t: f32) -> Option<(f32, f32)> {
        let f = 1.1 * w.max(h) as f32;
        // On the surface, in label sides: a plane, or a cylinder whose
        // axis is the label's vertical (the sides curve away).
        let p = if self.span > 0.0 {
            let r = 1.0 / self.span;
            let a = s * self.span;
            [r * a.sin(), t, r * (1.0 - a.cos())]
        } else {
            [s, t, 0.0]
        };
        let (sr, cr) = self.roll.sin_cos();
        let (sy, cy) = self.yaw.sin_cos();
        let (sp, cp) = self.pitch.sin_cos();
        // Rx(pitch), then Ry(yaw), then Rz(roll).
        let x1 = [p[0], cp * p[1] - sp * p[2], sp * p[1] + cp * p[2]];
        let x2 = [cy * x1[0] + sy * x1[2], x1[1], -sy * x1[0] + cy * x1[2]];
        let x3 = [cr * x2[0] - sr * x2[1], sr * x2[0] + cr * x2[1], x2[2]];
        let z0 = f / self.side_px;
        let (cx, cyy) = self.centre;
        let camera = [
            x3[0] + (cx - w as f32 / 2.0) * z0 / f,
            x3[1] + (cyy - h as f32 / 2.0) * z0 / f,
            x3[2] + z0,
        ];
        (camera[2] > 0.01 * z0).then(|| {
            (
                f * camera[0] / camera[2] + w as f32 / 2.0,
                f * camera[1] / camera[2] + h as f32 / 2.0,
            )
        })
    }

    /// Where the code's own corners (inside the quiet zone) land.
    fn code_corners(&self, w: usize, h: usize) -> Vec<(f32, f32)> {
        let total = (self.modules.size + 2 * self.quiet) as f32;
        let e = 0.5 - self.quiet as f32 / total;
        [(-e, -e), (e, -e), (e, e), (-e, e)]
            .iter()
            .filter_map(|&(s, t)| self.project(w, h, s, t))
            .collect()
    }

    /// Draws the label into `img` (w wide), each pixel the mean of the
    /// label points landing on it.
    fn draw(&self, img: &mut [f32], w: usize, h: usize) {
        // Enough points that every pixel the label covers gets some, at
        // the steepest foreshortening drawn here; one or two a pixel on a
        // monitor, so that its pixel grid aliases as a camera's does.
        let density = if self.screen_px.is_some() { 1.4 } else { 3.0 };
        let n = ((self.side_px * density * (1.0 + self.span)) as usize).clamp(8, 6000);
        let mut sum = vec![0f32; w * h];
        let mut count = vec![0u16; w * h];
        for j in 0..n {
            let t = (j as f32 + 0.5) / n as f32 - 0.5;
            for i in 0..n {
                let s = (i as f32 + 0.5) / n as f32 - 0.5;
                let Some((x, y)) = self.project(w, h, s, t) else {
                    continue;
                };
                if x < 0.0 || y < 0.0 || x >= w as f32 || y >= h as f32 {
                    continue;
                }
                let at = y as usize * w + x as usize;
                sum[at] += self.level(s, t);
                count[at] = count[at].saturating_add(1);
            }
        }
        for ((p, s), c) in img.iter_mut().zip(sum).zip(count) {
            if c > 0 {
                *p = s / f32::from(c);
            }
        }
    }
}

/// A random payload of `len` bytes: text for small codes now and then
/// (what posters carry), bytes otherwise.
fn payload(rng: &mut Pcg64Mcg, len: usize) -> Vec<u8> {
    if rng.random_range(0..3) == 0 {
        let alphabet = b"abcdefghijklmnopqrstuvwxyz0123456789/.-:?=&";
        (0..len)
            .map(|_| alphabet[rng.random_range(0..alphabet.len())])
            .collect()
    } else {
        (0..len).map(|_| rng.random_range(0..=255u8)).collect()
    }
}

fn ec_level(rng: &mut Pcg64Mcg) -> EcLevel {
    [EcLevel::L, EcLevel::M, EcLevel::Q, EcLevel::H][rng.random_range(0..4)]
}

/// A code of exactly `version` at a random level, filled to 50–100 % of
/// what it carries.
fn code_of_version(rng: &mut Pcg64Mcg, version: i16) -> Result<(Vec<u8>, Modules), QrError> {
    let ec = ec_level(rng);
    let capacity = byte_capacity(version, ec).max(1);
    let len = rng.random_range(capacity.div_ceil(2)..=capacity);
    let bytes = payload(rng, len);
    let modules = modules_at(&bytes, ec, version)?;
    Ok((bytes, modules))
}

/// Renders one photo deterministically from `seed`.
pub fn render_photo(scene: &PhotoScene, seed: u64) -> Result<Photo, QrError> {
    let mut rng = Pcg64Mcg::seed_from_u64(seed);
    let (w, h) = (scene.width, scene.height);
    GreyImage::filled(w, h, 0)?; // size check
    let mut img = background(w, h, &mut rng);
    let category = scene.category;
    // A label sheet: its grid, its labels' version, and one pose for all.
    let sheet = (category == Category::LabelSheet).then(|| Sheet::draw(&mut rng, w, h));
    let count = match (category, &sheet) {
        (Category::ManyCodes, _) => rng.random_range(8..=16),
        (_, Some(sheet)) => sheet.cols * sheet.rows,
        _ => 1,
    };
    // Many codes: one per cell of a 5 × 4 grid, in random cells.
    let (cols, rows) = (5usize, 4usize);
    let mut cells: Vec<usize> = (0..cols * rows).collect();
    for i in (1..cells.len()).rev() {
        cells.swap(i, rng.random_range(0..=i));
    }
    let mut payloads = Vec::new();
    for (k, &cell) in cells.iter().enumerate().take(count) {
        let version = match (category, &sheet) {
            (_, Some(sheet)) => sheet.version,
            (Category::HighVersion, _) => rng.random_range(11..=40),
            (Category::ManyCodes, _) => rng.random_range(1..=6),
            (Category::CloseUp | Category::Monitor, _) => rng.random_range(2..=12),
            _ => rng.random_range(1..=10),
        };
        let (bytes, modules) = code_of_version(&mut rng, version)?;
        let size = modules.size as f32;
        let short = h.min(w) as f32;
        // At least 2.5 pixels a module (what a camera resolves of a print
        // in focus), at most what the frame holds.
        let least = 2.5 * (size + 8.0);
        let tilt = match category {
            Category::Nominal | Category::Mirrored | Category::Rotation => 20f32,
            Category::CloseUp => 8.0,
            Category::ManyCodes | Category::Curved => 15.0,
            _ => 25.0,
        }
        .to_radians();
        let quiet = if category == Category::CloseUp { 2 } else { 4 };
        let span = if category == Category::Curved {
            rng.random_range(60f32..140.0).to_radians()
        } else {
            0.0
        };
        let screen_px = (category == Category::Monitor).then(|| rng.random_range(2.0f32..5.0));
        // A pose whose code lies inside the frame: drawn again, a little
        // smaller each time, until one does.
        let mut shrink = 1.0f32;
        let mut placed = None;
        for _ in 0..60 {
            let (side_px, centre) = match (category, &sheet) {
                (_, Some(sheet)) => (sheet.cell, sheet.centre(k)),
                (Category::ManyCodes, _) => {
                    let (cw, ch) = (w as f32 / cols as f32, h as f32 / rows as f32);
                    let side = rng.random_range(0.55f32..0.75) * ch.min(cw);
                    let cx =
                        (cell % cols) as f32 * cw + cw / 2.0 + rng.random_range(-0.1f32..0.1) * cw;
                    let cy =
                        (cell / cols) as f32 * ch + ch / 2.0 + rng.random_range(-0.1f32..0.1) * ch;
                    (side.max(least.min(0.9 * ch)), (cx, cy))
                }
                (Category::CloseUp, _) => {
                    // The code itself (no quiet zone) just inside the frame,
                    // its quiet zone (two modules) at the frame's edge.
                    let side = short * rng.random_range(0.78f32..0.88) * (size + 4.0) / size;
                    (side, (w as f32 / 2.0, h as f32 / 2.0))
                }
                _ => {
                    let side = rng.random_range(0.35f32..0.8) * short;
                    let x = rng.random_range(0.35f32..0.65) * w as f32;
                    let y = rng.random_range(0.4f32..0.6) * h as f32;
                    (side.max(least).min(0.95 * short), (x, y))
                }
            };
            let roll = match (category, &sheet) {
                (_, Some(sheet)) => sheet.roll,
                (Category::Rotation, _) => {
                    if rng.random_range(0..3) == 0 {
                        rng.random_range(1..4) as f32 * PI / 2.0
                    } else {
                        rng.random_range(0.0f32..2.0 * PI)
                    }
                }
                (Category::CloseUp, _) => rng.random_range(-0.1f32..0.1),
                _ => rng.random_range(-0.5f32..0.5),
            };
            let (yaw, pitch) = match &sheet {
                Some(sheet) => (sheet.yaw, sheet.pitch),
                None => (
                    rng.random_range(-tilt..=tilt),
                    rng.random_range(-tilt..=tilt) * 0.6,
                ),
            };
            let label = Label {
                modules: modules.clone(),
                quiet,
                mirrored: category == Category::Mirrored,
                span,
                screen_px,
                centre,
                side_px: side_px * shrink,
                roll,
                yaw,
                pitch,
            };
            let corners = label.code_corners(w, h);
            let inside = corners.len() == 4
                && corners.iter().all(|&(x, y)| {
                    x >= 1.0 && y >= 1.0 && x < w as f32 - 1.0 && y < h as f32 - 1.0
                });
            if inside {
                placed = Some(label);
                break;
            }
            shrink *= 0.97;
        }
        let Some(label) = placed else {
            return Err(QrError::Invalid(format!(
                "photo {}: code {} does not fit the frame",
                scene.name,
                k + 1
            )));
        };
        label.draw(&mut img, w, h);
        payloads.push(bytes);
    }
    light(&mut img, w, h, category, &mut rng);
    let mut grey = to_grey(&img, w, h);
    let (motion, focus) = match category {
        Category::Blurred => {
            if rng.random_range(0..2) == 0 {
                (rng.random_range(4.0f32..9.0), 0)
            } else {
                (0.0, rng.random_range(1usize..=3))
            }
        }
        _ => (0.0, rng.random_range(0usize..=1)),
    };
    if motion >= 1.0 {
        grey = motion_blur(&grey, motion, rng.random_range(0.0f32..PI));
    }
    if focus > 0 {
        grey = box_blur(&box_blur(&grey, focus), focus);
    }
    let noise = rng.random_range(1.5f32..4.0);
    for p in grey.data_mut() {
        *p = (f32::from(*p) + gaussian(&mut rng, noise))
            .round()
            .clamp(0.0, 255.0) as u8;
    }
    Ok(Photo {
        scene: scene.clone(),
        image: grey,
        payloads,
        jpeg_quality: rng.random_range(80..=92),
    })
}

/// A sheet of labels ([`Category::LabelSheet`]): `cols` × `rows` labels of
/// one version, each `cell` pixels wide with its quiet zone, side by side
/// on a grid turned by `roll` about the frame's centre; every label turned
/// the same way about its own centre (so their quiet zones touch face-on
/// and leave a narrow gap when tilted).
struct Sheet {
    cols: usize,
    rows: usize,
    version: i16,
    cell: f32,
    centre: (f32, f32),
    roll: f32,
    yaw: f32,
    pitch: f32,
}

impl Sheet {
    fn draw(rng: &mut Pcg64Mcg, w: usize, h: usize) -> Self {
        let cols = rng.random_range(3..=5);
        let rows = rng.random_range(2..=4);
        // Room for the grid turned by up to 0.15 rad.
        let cell = (0.85 * w as f32 / cols as f32).min(0.85 * h as f32 / rows as f32);
        let tilt = 15f32.to_radians();
        Self {
            cols,
            rows,
            version: rng.random_range(2..=8),
            cell,
            centre: (w as f32 / 2.0, h as f32 / 2.0),
            roll: rng.random_range(-0.15f32..0.15),
            yaw: rng.random_range(-tilt..=tilt),
            pitch: rng.random_range(-tilt..=tilt) * 0.6,
        }
    }

    /// The centre of label `k` (row by row).
    fn centre(&self, k: usize) -> (f32, f32) {
        let dx = ((k % self.cols) as f32 - (self.cols - 1) as f32 / 2.0) * self.cell;
        let dy = ((k / self.cols) as f32 - (self.rows - 1) as f32 / 2.0) * self.cell;
        let (c, s) = (self.roll.cos(), self.roll.sin());
        (
            self.centre.0 + c * dx - s * dy,
            self.centre.1 + s * dx + c * dy,
        )
    }
}

/// Light over the whole frame: always a gentle gradient; for
/// [`Category::Lighting`] a steep one, a shadow (its edge a ramp 4 % of
/// the frame wide) across the
/// middle, and over- or under-exposure (clipped).
fn light(img: &mut [f32], w: usize, h: usize, category: Category, rng: &mut Pcg64Mcg) {
    let strong = category == Category::Lighting;
    let angle = rng.random_range(0.0f32..2.0 * PI);
    let (dx, dy) = (angle.cos(), angle.sin());
    let depth = if strong {
        rng.random_range(0.45f32..0.7)
    } else {
        rng.random_range(0.0f32..0.15)
    };
    let shadow = strong.then(|| {
        let a = rng.random_range(0.0f32..2.0 * PI);
        let offset = rng.random_range(-0.15f32..0.15);
        (a.cos(), a.sin(), offset, rng.random_range(0.35f32..0.55))
    });
    let exposure = if strong {
        if rng.random_range(0..2) == 0 {
            rng.random_range(0.45f32..0.7)
        } else {
            rng.random_range(1.3f32..1.7)
        }
    } else {
        1.0
    };
    let scale = w.max(h) as f32;
    for (i, p) in img.iter_mut().enumerate() {
        let x = (i % w) as f32 / scale - 0.5 * w as f32 / scale;
        let y = (i / w) as f32 / scale - 0.5 * h as f32 / scale;
        let along = (x * dx + y * dy + 0.5).clamp(0.0, 1.0);
        let mut gain = 1.0 - depth * along;
        if let Some((sx, sy, offset, dark)) = shadow {
            // A soft edge two hundredths of the frame wide.
            let d = (x * sx + y * sy - offset) / 0.02;
            gain *= 1.0 - (1.0 - dark) * (0.5 + 0.5 * d.clamp(-1.0, 1.0));
        }
        *p *= gain * exposure;
    }
}

/// Writes the photo corpus into `dir`: `CATEGORY-NN.jpg` and
/// `CATEGORY-NN.hex` (one payload per line, lowercase hex), deterministic
/// for `seed`. Returns the image paths.
pub fn write_photo_corpus(dir: &Path, seed: u64) -> Result<Vec<PathBuf>, QrError> {
    let mut paths = Vec::new();
    for (i, scene) in photo_scenes().iter().enumerate() {
        let photo = render_photo(scene, seed.wrapping_add(i as u64 * 7919))?;
        let image = jpeg_bytes(&photo.image, photo.jpeg_quality)?;
        let file = format!("{}.jpg", scene.name);
        paths.push(write_entry(dir, &file, &image, &photo.payloads)?);
    }
    Ok(paths)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DecodeOptions;
    use crate::tests::{payloads_read, untimed};

    /// A flat, frontal, well-lit label of `modules` centred at `centre`,
    /// `side_px` wide with its four-module quiet zone.
    fn label(modules: Modules, centre: (f32, f32), side_px: f32) -> Label {
        Label {
            modules,
            quiet: 4,
            mirrored: false,
            span: 0.0,
            screen_px: None,
            centre,
            side_px,
            roll: 0.0,
            yaw: 0.0,
            pitch: 0.0,
        }
    }

    #[test]
    fn every_category_renders_deterministically_with_its_codes_in_the_frame() {
        for scene in photo_scenes().iter().step_by(PER_CATEGORY) {
            let a = render_photo(scene, 5).expect("renders");
            let b = render_photo(scene, 5).expect("renders");
            assert_eq!(a.image, b.image, "{}", scene.name);
            assert_eq!(a.payloads, b.payloads);
            assert!(!a.payloads.is_empty());
            assert_eq!(Category::of_file(&scene.name), Some(scene.category));
        }
    }

    #[test]
    fn high_versions_are_above_ten_and_a_flat_frontal_code_reads() {
        let mut rng = Pcg64Mcg::seed_from_u64(1);
        for v in [11i16, 25, 40] {
            let (_, m) = code_of_version(&mut rng, v).expect("a code");
            assert_eq!(m.size, 17 + 4 * v as usize);
        }
        // A flat, frontal, well-lit version 3 label: the decoder reads it.
        let (bytes, modules) = code_of_version(&mut rng, 3).expect("a code");
        let rolled = Label {
            roll: 0.3,
            ..label(modules, (320.0, 240.0), 300.0)
        };
        let mut img = vec![128f32; 640 * 480];
        rolled.draw(&mut img, 640, 480);
        let grey = to_grey(&img, 640, 480);
        let read = crate::decode_frame(grey.as_frame());
        assert!(read.iter().any(|c| c.payload == bytes), "{read:?}");
    }

    /// Issue 20 (a review): twelve version-10 codes lined up in rows, as
    /// on a sheet of labels, are all read from a still. The finder search
    /// kept the 24 best finders whatever it wanted, which held a still to
    /// 8 codes; the later stages found all but 1 of the others then (with
    /// no time limit, as here; 3 were missed in a still's budget).
    #[test]
    fn issue20_a_sheet_of_twelve_codes_in_rows_is_read_whole() {
        let mut rng = Pcg64Mcg::seed_from_u64(9);
        let (w, h) = (1280usize, 960usize);
        let mut img = vec![PAPER; w * h];
        let mut want = Vec::new();
        for row in 0..3 {
            for col in 0..4 {
                let (bytes, modules) = code_of_version(&mut rng, 10).expect("a code");
                let centre = (190.0 + 300.0 * col as f32, 170.0 + 310.0 * row as f32);
                label(modules, centre, 240.0).draw(&mut img, w, h);
                want.push(bytes);
            }
        }
        let read = payloads_read(&untimed(DecodeOptions::thorough()), &to_grey(&img, w, h));
        let missed = want.iter().filter(|p| !read.contains(*p)).count();
        assert_eq!(missed, 0, "{missed} of {} codes missed", want.len());
    }

    /// Issue 20: labels round a bottle, which one homography from the
    /// finders misplaces by a module or more in the middle, are read from
    /// a still: versions from 7 on their alignment patterns
    /// (`sample::place_alignment_grid`, a warp through them and the timing
    /// lines), lower ones (one alignment pattern) by the search of bent
    /// shapes (`sample::read_bent`). The gate's options, which take every
    /// code as flat, read none of them. Before the alignment grid the
    /// still read 4 of these 6.
    #[test]
    fn issue20_labels_bent_round_a_bottle_are_read_from_a_still() {
        let still = untimed(DecodeOptions::thorough());
        let gate = untimed(DecodeOptions::default());
        let labels = [
            (6i16, 100.0f32, 0.0f32),
            (8, 80.0, 0.1),
            (10, 70.0, 0.0),
            (14, 60.0, 0.1),
            (20, 45.0, 0.0),
            (20, 60.0, 0.1),
        ];
        for (version, span_deg, pitch) in labels {
            let mut rng = Pcg64Mcg::seed_from_u64(u64::from(version.unsigned_abs()));
            let (bytes, modules) = code_of_version(&mut rng, version).expect("a code");
            let bent = Label {
                span: span_deg.to_radians(),
                pitch,
                ..label(modules, (640.0, 360.0), 500.0)
            };
            let mut img = vec![128f32; 1280 * 720];
            bent.draw(&mut img, 1280, 720);
            let grey = to_grey(&img, 1280, 720);
            let case = format!("version {version}, {span_deg}° round, pitch {pitch}");
            assert!(payloads_read(&still, &grey).contains(&bytes), "{case}");
            assert!(
                !payloads_read(&gate, &grey).contains(&bytes),
                "{case}, at the gate"
            );
        }
    }
}
