//! Synthetic camera frames of phone screens showing QR tokens: the corpus
//! generator behind `signals/qr/`, deterministic from a seed.
//!
//! A token is rendered on a phone-screen-like page (app header, text lines,
//! dark bezel), the phone is placed in a cluttered camera frame through a
//! pinhole projection (roll, and yaw/pitch up to 40°), and camera effects
//! follow: the screen's pixel grid sampled by the camera grid (moiré),
//! motion and focus blur, glare spots, low contrast, dark mode (light
//! modules on a dark screen), a finger-like blob over part of the code (not
//! the finder patterns), sensor noise and JPEG re-encoding.

use std::path::{Path, PathBuf};

use image::codecs::jpeg::JpegEncoder;
use rand::{RngExt, SeedableRng};
use rand_pcg::Pcg64Mcg;

use super::encode::{Modules, QUIET_ZONE, modules, png_bytes, write_grey};
use super::prepare::box_blur;
use super::{GreyImage, QrError};

/// Length of a payment token in bytes (token format v1).
pub const TOKEN_LEN: usize = 199;

/// Screen width in screen pixels (the phone's own pixel grid).
const SCREEN_W: f32 = 600.0;
/// Screen height in screen pixels.
const SCREEN_H: f32 = 1100.0;
/// Bezel around the screen, in screen pixels.
const BEZEL: f32 = 28.0;
/// Left edge of the code's quiet zone on the screen.
const CODE_X: f32 = 30.0;
/// Top edge of the code's quiet zone on the screen.
const CODE_Y: f32 = 290.0;
/// Width of the code with its quiet zone on the screen.
const CODE_SIDE: f32 = 540.0;

/// What the camera does to one frame. `Default` is a sharp, frontal,
/// well-lit light-mode screen.
#[derive(Clone, Debug, PartialEq)]
pub struct Effects {
    /// Largest yaw/pitch of the phone relative to the camera, in degrees.
    pub tilt_deg: f32,
    /// Motion blur length in camera pixels (0 = none).
    pub motion_px: f32,
    /// Focus blur radius in camera pixels (0 = none).
    pub focus_px: usize,
    /// Number of glare spots.
    pub glare: usize,
    /// Render the screen's pixel grid and sample it point-wise (moiré).
    pub moire: bool,
    /// Contrast kept, 1.0 = full, 0.25 = washed out.
    pub contrast: f32,
    /// Light modules on a dark screen.
    pub dark_mode: bool,
    /// A finger-like blob over the bottom middle of the code.
    pub occlusion: bool,
    /// Sensor noise standard deviation in grey levels.
    pub noise: f32,
    /// JPEG quality the frame is stored at (artefacts), `None` for PNG.
    pub jpeg_quality: Option<u8>,
    /// Code side (with quiet zone) as a fraction of the frame height.
    pub code_frac: (f32, f32),
}

impl Default for Effects {
    fn default() -> Self {
        Self {
            tilt_deg: 0.0,
            motion_px: 0.0,
            focus_px: 0,
            glare: 0,
            moire: false,
            contrast: 1.0,
            dark_mode: false,
            occlusion: false,
            noise: 2.0,
            jpeg_quality: Some(90),
            code_frac: (0.4, 0.6),
        }
    }
}

/// One frame to generate: size, how many codes, what the camera does.
#[derive(Clone, Debug, PartialEq)]
pub struct Scene {
    /// Name, used for the file name.
    pub name: String,
    /// Frame width in pixels.
    pub width: usize,
    /// Frame height in pixels.
    pub height: usize,
    /// Number of phones (codes) in view.
    pub codes: usize,
    /// Camera effects.
    pub effects: Effects,
}

/// A generated frame and what it must decode to.
#[derive(Clone, Debug)]
pub struct Sample {
    /// The scene it was made from.
    pub scene: Scene,
    /// The grey frame, before JPEG storage.
    pub image: GreyImage,
    /// Payloads of the codes in view.
    pub payloads: Vec<Vec<u8>>,
}

impl Sample {
    /// The frame as stored: JPEG at the scene's quality, or PNG.
    pub fn file_bytes(&self) -> Result<Vec<u8>, QrError> {
        match self.scene.effects.jpeg_quality {
            Some(q) => jpeg_bytes(&self.image, q),
            None => png_bytes(&self.image),
        }
    }

    /// The file extension matching [`Sample::file_bytes`].
    pub fn extension(&self) -> &'static str {
        if self.scene.effects.jpeg_quality.is_some() {
            "jpg"
        } else {
            "png"
        }
    }
}

/// Encodes a grey image as JPEG at `quality` (1–100).
pub fn jpeg_bytes(image: &GreyImage, quality: u8) -> Result<Vec<u8>, QrError> {
    let mut out = Vec::new();
    let encoder = JpegEncoder::new_with_quality(&mut out, quality.clamp(1, 100));
    write_grey(encoder, image, "JPEG")?;
    Ok(out)
}

/// A 3×3 matrix, row-major.
type Mat3 = [[f32; 3]; 3];

fn mat_mul(a: &Mat3, b: &Mat3) -> Mat3 {
    let mut m = [[0.0; 3]; 3];
    for (i, row) in m.iter_mut().enumerate() {
        for (j, v) in row.iter_mut().enumerate() {
            *v = (0..3).map(|k| a[i][k] * b[k][j]).sum();
        }
    }
    m
}

fn mat_inverse(m: &Mat3) -> Option<Mat3> {
    let det = m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1])
        - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0])
        + m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0]);
    if det.abs() < 1e-12 {
        return None;
    }
    let c =
        |r0: usize, c0: usize, r1: usize, c1: usize| m[r0][c0] * m[r1][c1] - m[r0][c1] * m[r1][c0];
    let inv = [
        [c(1, 1, 2, 2), -c(0, 1, 2, 2), c(0, 1, 1, 2)],
        [-c(1, 0, 2, 2), c(0, 0, 2, 2), -c(0, 0, 1, 2)],
        [c(1, 0, 2, 1), -c(0, 0, 2, 1), c(0, 0, 1, 1)],
    ];
    Some(inv.map(|row| row.map(|v| v / det)))
}

fn apply(m: &Mat3, x: f32, y: f32) -> Option<(f32, f32)> {
    let w = m[2][0] * x + m[2][1] * y + m[2][2];
    if w.abs() < 1e-9 {
        return None;
    }
    Some((
        (m[0][0] * x + m[0][1] * y + m[0][2]) / w,
        (m[1][0] * x + m[1][1] * y + m[1][2]) / w,
    ))
}

/// The homography from screen coordinates to camera pixels for a phone
/// whose code centre is at camera (cx, cy), `scale` camera pixels per screen
/// pixel when frontal, rotated by roll, yaw and pitch (radians), seen by a
/// pinhole camera of focal length `f` pixels centred in a `w`×`h` frame.
#[allow(clippy::too_many_arguments)]
fn phone_homography(
    w: usize,
    h: usize,
    cx: f32,
    cy: f32,
    scale: f32,
    roll: f32,
    yaw: f32,
    pitch: f32,
) -> Mat3 {
    let f = 1.1 * w.max(h) as f32;
    let (sr, cr) = roll.sin_cos();
    let (sy, cyw) = yaw.sin_cos();
    let (sp, cp) = pitch.sin_cos();
    let rz = [[cr, -sr, 0.0], [sr, cr, 0.0], [0.0, 0.0, 1.0]];
    let ry = [[cyw, 0.0, sy], [0.0, 1.0, 0.0], [-sy, 0.0, cyw]];
    let rx = [[1.0, 0.0, 0.0], [0.0, cp, -sp], [0.0, sp, cp]];
    let r = mat_mul(&rz, &mat_mul(&ry, &rx));
    let (u0, v0) = (CODE_X + CODE_SIDE / 2.0, CODE_Y + CODE_SIDE / 2.0);
    // Plane point (u, v) → camera space: R * s * (u - u0, v - v0, 0) + (X0, Y0, f),
    // with the code centre placed so it projects to (cx, cy).
    let t = [(cx - w as f32 / 2.0), (cy - h as f32 / 2.0), f];
    let mut m = [[0.0f32; 3]; 3];
    for i in 0..3 {
        m[i][0] = scale * r[i][0];
        m[i][1] = scale * r[i][1];
        m[i][2] = -scale * (u0 * r[i][0] + v0 * r[i][1]) + t[i];
    }
    let k = [
        [f, 0.0, w as f32 / 2.0],
        [0.0, f, h as f32 / 2.0],
        [0.0, 0.0, 1.0],
    ];
    mat_mul(&k, &m)
}

/// One phone in view: its screen content and where it is.
struct Phone {
    modules: Modules,
    dark_mode: bool,
    moire: bool,
    finger: Option<(f32, f32, f32, f32)>,
    /// Camera pixel → screen coordinates.
    inverse: Mat3,
    /// Camera-pixel bounding box of the body.
    bbox: (usize, usize, usize, usize),
}

impl Phone {
    /// Grey level of the phone at screen point (u, v); `None` off the phone.
    fn sample(&self, u: f32, v: f32) -> Option<f32> {
        if u < -BEZEL || v < -BEZEL || u > SCREEN_W + BEZEL || v > SCREEN_H + BEZEL {
            return None;
        }
        if u < 0.0 || v < 0.0 || u > SCREEN_W || v > SCREEN_H {
            return Some(28.0); // bezel
        }
        if let Some((fx, fy, rx, ry)) = self.finger {
            let d = ((u - fx) / rx).powi(2) + ((v - fy) / ry).powi(2);
            if d < 1.0 {
                // Skin, shaded towards the edge.
                return Some(175.0 - 45.0 * d);
            }
        }
        let (light, dark) = if self.dark_mode {
            (22.0, 225.0)
        } else {
            (242.0, 18.0)
        };
        let module = CODE_SIDE / (self.modules.size + 2 * QUIET_ZONE) as f32;
        let mut level = if (CODE_X..CODE_X + CODE_SIDE).contains(&u)
            && (CODE_Y..CODE_Y + CODE_SIDE).contains(&v)
        {
            let mx = ((u - CODE_X) / module).floor() as isize - QUIET_ZONE as isize;
            let my = ((v - CODE_Y) / module).floor() as isize - QUIET_ZONE as isize;
            if self.modules.is_dark(mx, my) {
                dark
            } else {
                light
            }
        } else if (60.0..140.0).contains(&v) {
            if self.dark_mode { 60.0 } else { 200.0 } // app header bar
        } else if ((880.0..900.0).contains(&v) || (930.0..950.0).contains(&v))
            && (60.0..(if v < 910.0 { 420.0 } else { 300.0 })).contains(&u)
        {
            if self.dark_mode { 150.0 } else { 110.0 } // text lines
        } else {
            light
        };
        if self.moire {
            // The screen's pixel grid: each screen pixel lit over 70% × 80%
            // of its cell, dark in the gaps.
            let (fu, fv) = (u - u.floor(), v - v.floor());
            let lit = fu < 0.7 && fv < 0.8;
            level *= if lit { 1.0 } else { 0.45 };
        }
        Some(level)
    }
}

/// Whether a point lies inside a convex quadrilateral (either winding).
fn in_quad(quad: &[(f32, f32)], (x, y): (f32, f32)) -> bool {
    let mut sign = 0.0f32;
    for i in 0..quad.len() {
        let (x0, y0) = quad[i];
        let (x1, y1) = quad[(i + 1) % quad.len()];
        let cross = (x1 - x0) * (y - y0) - (y1 - y0) * (x - x0);
        if cross != 0.0 {
            if sign != 0.0 && cross.signum() != sign {
                return false;
            }
            sign = cross.signum();
        }
    }
    true
}

/// Whether two convex quads overlap, tested on corners and edge midpoints
/// (enough for the large, similar-sized shapes placed here) plus a margin
/// ring around `b`'s corners.
fn quads_overlap(a: &[(f32, f32)], b: &[(f32, f32)]) -> bool {
    let probes = |q: &[(f32, f32)]| -> Vec<(f32, f32)> {
        let mut v = q.to_vec();
        for i in 0..q.len() {
            let (p, n) = (q[i], q[(i + 1) % q.len()]);
            for t in [0.25f32, 0.5, 0.75] {
                v.push((p.0 + (n.0 - p.0) * t, p.1 + (n.1 - p.1) * t));
            }
        }
        v
    };
    probes(b).into_iter().any(|p| in_quad(a, p)) || probes(a).into_iter().any(|p| in_quad(b, p))
}

/// Approximately normal noise from the sum of uniforms (Irwin–Hall).
pub(crate) fn gaussian(rng: &mut Pcg64Mcg, sigma: f32) -> f32 {
    let s: f32 = (0..4).map(|_| rng.random_range(-1.0f32..1.0)).sum();
    s * sigma * 0.866
}

/// A cluttered background: a lighting gradient and random boxes.
pub(crate) fn background(w: usize, h: usize, rng: &mut Pcg64Mcg) -> Vec<f32> {
    let base = rng.random_range(70.0f32..150.0);
    let gx = rng.random_range(-60.0f32..60.0);
    let gy = rng.random_range(-60.0f32..60.0);
    let mut img: Vec<f32> = (0..w * h)
        .map(|i| {
            let (x, y) = ((i % w) as f32 / w as f32, (i / w) as f32 / h as f32);
            base + gx * (x - 0.5) + gy * (y - 0.5)
        })
        .collect();
    for _ in 0..rng.random_range(4..12) {
        let bw = rng.random_range(w / 20..w / 4);
        let bh = rng.random_range(h / 20..h / 4);
        let x0 = rng.random_range(0..w - bw);
        let y0 = rng.random_range(0..h - bh);
        let level = rng.random_range(20.0f32..230.0);
        for y in y0..y0 + bh {
            for x in x0..x0 + bw {
                img[y * w + x] = level;
            }
        }
    }
    img
}

/// Renders one scene deterministically from `seed`.
pub fn render(scene: &Scene, seed: u64) -> Result<Sample, QrError> {
    let mut rng = Pcg64Mcg::seed_from_u64(seed);
    let (w, h) = (scene.width, scene.height);
    GreyImage::filled(w, h, 0)?; // size check
    let fx = &scene.effects;
    let mut img = background(w, h, &mut rng);
    let mut payloads = Vec::new();
    let mut placed: Vec<(f32, f32, f32)> = Vec::new();
    let mut code_quads: Vec<Vec<(f32, f32)>> = Vec::new();
    for _ in 0..scene.codes.max(1) {
        let payload: Vec<u8> = (0..TOKEN_LEN)
            .map(|_| rng.random_range(0..=255u8))
            .collect();
        let m = modules(&payload)?;
        // Place the code fully in the frame, apart from codes already placed.
        let mut chosen = None;
        for _ in 0..1000 {
            let frac = rng.random_range(fx.code_frac.0..=fx.code_frac.1);
            let side = frac * h as f32;
            let scale = side / CODE_SIDE;
            let cx = rng.random_range(0.0..w as f32);
            let cy = rng.random_range(0.0..h as f32);
            let roll = rng.random_range(-0.6f32..0.6);
            let t = fx.tilt_deg.to_radians();
            let (yaw, pitch) = if t > 0.0 {
                // The larger of the two angles is the scene's tilt.
                let a = t * rng.random_range(0.75f32..1.0);
                let b = t * rng.random_range(-0.5f32..0.5);
                if rng.random_range(0..2) == 0 {
                    (a, b)
                } else {
                    (b, a)
                }
            } else {
                (0.0, 0.0)
            };
            let mut sign = |x: f32| if rng.random_range(0..2) == 0 { x } else { -x };
            let (yaw, pitch) = (sign(yaw), sign(pitch));
            let fwd = phone_homography(w, h, cx, cy, scale, roll, yaw, pitch);
            let corners = [
                (CODE_X, CODE_Y),
                (CODE_X + CODE_SIDE, CODE_Y),
                (CODE_X + CODE_SIDE, CODE_Y + CODE_SIDE),
                (CODE_X, CODE_Y + CODE_SIDE),
            ];
            let pts: Vec<(f32, f32)> = corners
                .iter()
                .filter_map(|&(u, v)| apply(&fwd, u, v))
                .collect();
            let margin = 4.0;
            let inside = pts.len() == 4
                && pts.iter().all(|&(x, y)| {
                    x > margin && y > margin && x < w as f32 - margin && y < h as f32 - margin
                });
            // The new phone is drawn on top: its body must not cover any
            // part of a code already placed.
            let body: Vec<(f32, f32)> = [
                (-BEZEL, -BEZEL),
                (SCREEN_W + BEZEL, -BEZEL),
                (SCREEN_W + BEZEL, SCREEN_H + BEZEL),
                (-BEZEL, SCREEN_H + BEZEL),
            ]
            .iter()
            .filter_map(|&(u, v)| apply(&fwd, u, v))
            .collect();
            let apart = body.len() == 4
                && code_quads
                    .iter()
                    .all(|quad: &Vec<(f32, f32)>| !quads_overlap(&body, quad));
            if inside && apart {
                chosen = Some((fwd, cx, cy, side, pts));
                break;
            }
        }
        let Some((fwd, cx, cy, side, code_quad)) = chosen else {
            return Err(QrError::Invalid(format!(
                "scene {}: no room for code {} in {w}x{h}",
                scene.name,
                payloads.len() + 1
            )));
        };
        placed.push((cx, cy, side));
        code_quads.push(code_quad);
        let inverse =
            mat_inverse(&fwd).ok_or_else(|| QrError::Invalid("degenerate homography".into()))?;
        let body = [
            (-BEZEL, -BEZEL),
            (SCREEN_W + BEZEL, -BEZEL),
            (SCREEN_W + BEZEL, SCREEN_H + BEZEL),
            (-BEZEL, SCREEN_H + BEZEL),
        ];
        let pts: Vec<(f32, f32)> = body
            .iter()
            .filter_map(|&(u, v)| apply(&fwd, u, v))
            .collect();
        let clampx = |x: f32| x.clamp(0.0, w as f32 - 1.0) as usize;
        let clampy = |y: f32| y.clamp(0.0, h as f32 - 1.0) as usize;
        let bbox = (
            clampx(pts.iter().map(|p| p.0).fold(f32::MAX, f32::min) - 2.0),
            clampy(pts.iter().map(|p| p.1).fold(f32::MAX, f32::min) - 2.0),
            clampx(pts.iter().map(|p| p.0).fold(f32::MIN, f32::max) + 2.0),
            clampy(pts.iter().map(|p| p.1).fold(f32::MIN, f32::max) + 2.0),
        );
        let module = CODE_SIDE / (m.size + 2 * QUIET_ZONE) as f32;
        let finger = fx.occlusion.then(|| {
            // From below the code, over its bottom middle: the finder
            // patterns (top corners, bottom-left) stay clear.
            let code0 = CODE_Y + QUIET_ZONE as f32 * module;
            let n = m.size as f32;
            (
                CODE_X + CODE_SIDE / 2.0 + rng.random_range(-2.0f32..2.0) * module,
                code0 + n * module + rng.random_range(1.0f32..3.0) * module,
                rng.random_range(6.0f32..8.0) * module,
                rng.random_range(9.0f32..12.0) * module,
            )
        });
        let phone = Phone {
            modules: m,
            dark_mode: fx.dark_mode,
            moire: fx.moire,
            finger,
            inverse,
            bbox,
        };
        draw_phone(&mut img, w, &phone);
        payloads.push(payload);
    }

    // Camera effects, in the order light meets the sensor.
    for _ in 0..fx.glare {
        let (gx, gy, _) = placed[rng.random_range(0..placed.len())];
        let side = placed[0].2;
        let gx = gx + rng.random_range(-0.35f32..0.35) * side;
        let gy = gy + rng.random_range(-0.35f32..0.35) * side;
        let sigma = rng.random_range(0.03f32..0.07) * side;
        let peak = rng.random_range(90.0f32..170.0);
        add_glare(&mut img, w, h, gx, gy, sigma, peak);
    }
    let mut grey = to_grey(&img, w, h);
    if fx.motion_px >= 1.0 {
        let angle = rng.random_range(0.0f32..std::f32::consts::PI);
        grey = motion_blur(&grey, fx.motion_px, angle);
    }
    if fx.focus_px > 0 {
        // Two box passes approximate a Gaussian.
        grey = box_blur(&box_blur(&grey, fx.focus_px), fx.focus_px);
    }
    let contrast = fx.contrast.clamp(0.05, 1.0);
    let mid = rng.random_range(100.0f32..150.0);
    let data = grey.data_mut();
    for p in data.iter_mut() {
        let v = mid + (f32::from(*p) - 128.0) * contrast + gaussian(&mut rng, fx.noise);
        *p = v.round().clamp(0.0, 255.0) as u8;
    }
    Ok(Sample {
        scene: scene.clone(),
        image: grey,
        payloads,
    })
}

/// Draws a phone into the float frame: 2×2 supersampling normally, one
/// point sample per camera pixel for moiré (the camera grid aliasing the
/// screen grid).
fn draw_phone(img: &mut [f32], w: usize, phone: &Phone) {
    let offsets: &[(f32, f32)] = if phone.moire {
        &[(0.5, 0.5)]
    } else {
        &[(0.25, 0.25), (0.75, 0.25), (0.25, 0.75), (0.75, 0.75)]
    };
    let (x0, y0, x1, y1) = phone.bbox;
    for y in y0..=y1 {
        for x in x0..=x1 {
            let mut sum = 0.0;
            let mut hit = 0;
            for &(ox, oy) in offsets {
                if let Some((u, v)) = apply(&phone.inverse, x as f32 + ox, y as f32 + oy)
                    && let Some(level) = phone.sample(u, v)
                {
                    sum += level;
                    hit += 1;
                }
            }
            if hit > 0 {
                let i = y * w + x;
                let frac = hit as f32 / offsets.len() as f32;
                img[i] = img[i] * (1.0 - frac) + sum / hit as f32 * frac;
            }
        }
    }
}

fn add_glare(img: &mut [f32], w: usize, h: usize, gx: f32, gy: f32, sigma: f32, peak: f32) {
    let reach = 3.0 * sigma;
    let x0 = (gx - reach).max(0.0) as usize;
    let y0 = (gy - reach).max(0.0) as usize;
    let x1 = ((gx + reach) as usize).min(w.saturating_sub(1));
    let y1 = ((gy + reach) as usize).min(h.saturating_sub(1));
    for y in y0..=y1 {
        for x in x0..=x1 {
            let d2 = (x as f32 - gx).powi(2) + (y as f32 - gy).powi(2);
            img[y * w + x] += peak * (-d2 / (2.0 * sigma * sigma)).exp();
        }
    }
}

pub(crate) fn to_grey(img: &[f32], w: usize, h: usize) -> GreyImage {
    GreyImage::from_parts(
        w,
        h,
        img.iter()
            .map(|v| v.round().clamp(0.0, 255.0) as u8)
            .collect(),
    )
}

/// Averages `len` samples along a line at `angle` (nearest pixel, clamped).
pub(crate) fn motion_blur(image: &GreyImage, len: f32, angle: f32) -> GreyImage {
    let (w, h) = (image.width(), image.height());
    let n = len.round().max(1.0) as usize;
    let (dx, dy) = (angle.cos(), angle.sin());
    let offsets: Vec<(isize, isize)> = (0..n)
        .map(|i| {
            let t = i as f32 - (n as f32 - 1.0) / 2.0;
            ((t * dx).round() as isize, (t * dy).round() as isize)
        })
        .collect();
    let src = image.data();
    let mut out = vec![0u8; w * h];
    for y in 0..h {
        for x in 0..w {
            let mut sum = 0u32;
            for &(ox, oy) in &offsets {
                let sx = (x as isize + ox).clamp(0, w as isize - 1) as usize;
                let sy = (y as isize + oy).clamp(0, h as isize - 1) as usize;
                sum += u32::from(src[sy * w + sx]);
            }
            out[y * w + x] = (sum / n as u32) as u8;
        }
    }
    GreyImage::from_parts(w, h, out)
}

/// The corpus: a fixed list of scenes covering each effect alone and in
/// combination, at 640×480, 1280×720 and 1920×1080.
pub fn corpus_scenes() -> Vec<Scene> {
    let d = Effects::default();
    let mut out = Vec::new();
    let mut add = |name: &str, n: usize, size: (usize, usize), codes: usize, fx: Effects| {
        for i in 0..n {
            out.push(Scene {
                name: format!("{name}-{i:02}"),
                width: size.0,
                height: size.1,
                codes,
                effects: fx.clone(),
            });
        }
    };
    const HD: (usize, usize) = (1280, 720);
    const VGA: (usize, usize) = (640, 480);
    const FHD: (usize, usize) = (1920, 1080);
    add("clean", 2, HD, 1, d.clone());
    add(
        "clean-vga",
        1,
        VGA,
        1,
        Effects {
            jpeg_quality: None,
            ..d.clone()
        },
    );
    add(
        "tilt20",
        2,
        HD,
        1,
        Effects {
            tilt_deg: 20.0,
            ..d.clone()
        },
    );
    add(
        "tilt30",
        2,
        HD,
        1,
        Effects {
            tilt_deg: 30.0,
            ..d.clone()
        },
    );
    add(
        "tilt40",
        2,
        HD,
        1,
        Effects {
            tilt_deg: 40.0,
            ..d.clone()
        },
    );
    add(
        "motion",
        3,
        HD,
        1,
        Effects {
            motion_px: 7.0,
            ..d.clone()
        },
    );
    add(
        "focus",
        3,
        HD,
        1,
        Effects {
            focus_px: 2,
            ..d.clone()
        },
    );
    add(
        "glare",
        3,
        HD,
        1,
        Effects {
            glare: 2,
            ..d.clone()
        },
    );
    add(
        "moire",
        3,
        HD,
        1,
        Effects {
            moire: true,
            ..d.clone()
        },
    );
    add(
        "moire-vga",
        1,
        VGA,
        1,
        Effects {
            moire: true,
            jpeg_quality: None,
            ..d.clone()
        },
    );
    add(
        "jpeg-q25",
        3,
        HD,
        1,
        Effects {
            jpeg_quality: Some(25),
            ..d.clone()
        },
    );
    add(
        "lowcontrast",
        3,
        HD,
        1,
        Effects {
            contrast: 0.25,
            noise: 3.0,
            ..d.clone()
        },
    );
    add(
        "darkmode",
        3,
        HD,
        1,
        Effects {
            dark_mode: true,
            ..d.clone()
        },
    );
    add(
        "darkmode-vga",
        1,
        VGA,
        1,
        Effects {
            dark_mode: true,
            jpeg_quality: None,
            ..d.clone()
        },
    );
    add(
        "finger",
        3,
        HD,
        1,
        Effects {
            occlusion: true,
            ..d.clone()
        },
    );
    add(
        "multi2",
        2,
        HD,
        2,
        Effects {
            code_frac: (0.35, 0.45),
            ..d.clone()
        },
    );
    add(
        "multi3",
        1,
        FHD,
        3,
        Effects {
            code_frac: (0.26, 0.32),
            ..d.clone()
        },
    );
    add(
        "small-fhd",
        2,
        FHD,
        1,
        Effects {
            code_frac: (0.28, 0.35),
            ..d.clone()
        },
    );
    add(
        "mixed",
        4,
        HD,
        1,
        Effects {
            tilt_deg: 30.0,
            motion_px: 4.0,
            glare: 1,
            moire: true,
            contrast: 0.5,
            noise: 3.0,
            jpeg_quality: Some(60),
            ..d.clone()
        },
    );
    add(
        "mixed-dark",
        2,
        HD,
        1,
        Effects {
            tilt_deg: 25.0,
            focus_px: 1,
            glare: 1,
            dark_mode: true,
            contrast: 0.6,
            jpeg_quality: Some(50),
            ..d.clone()
        },
    );
    out
}

/// One corpus image and the payloads it must yield.
pub type CorpusEntry = (PathBuf, Vec<Vec<u8>>);

/// Reads a corpus written by [`write_corpus`]: each PNG/JPEG image in `dir`
/// with its expected payloads, sorted by name. An image without a readable
/// `NAME.hex`, or a line that is not hex, is an error, never skipped.
pub fn read_corpus(dir: &Path) -> Result<Vec<CorpusEntry>, QrError> {
    let io = |what: &Path| {
        let what = what.display().to_string();
        move |source| QrError::Io { what, source }
    };
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let path = entry.map_err(io(dir))?.path();
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        if ext != "png" && ext != "jpg" {
            continue;
        }
        let sidecar = path.with_extension("hex");
        let text = std::fs::read_to_string(&sidecar).map_err(io(&sidecar))?;
        let payloads = text
            .lines()
            .map(|line| {
                hex::decode(line.trim()).map_err(|e| QrError::Io {
                    what: sidecar.display().to_string(),
                    source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
                })
            })
            .collect::<Result<_, _>>()?;
        out.push((path, payloads));
    }
    out.sort();
    Ok(out)
}

/// Generates the corpus into `dir`: one image per scene plus `NAME.hex`
/// with one expected payload per line (lowercase hex). Returns the image
/// paths. Deterministic for a given `seed`.
pub fn write_corpus(dir: &Path, seed: u64) -> Result<Vec<PathBuf>, QrError> {
    let mut paths = Vec::new();
    for (i, scene) in corpus_scenes().iter().enumerate() {
        let sample = render(scene, seed.wrapping_add(i as u64 * 7919))?;
        let file = format!("{}.{}", scene.name, sample.extension());
        paths.push(write_entry(
            dir,
            &file,
            &sample.file_bytes()?,
            &sample.payloads,
        )?);
    }
    Ok(paths)
}

/// Writes one corpus entry into `dir` (made if missing): the image `file`
/// and its sidecar `NAME.hex` (one payload per line, lowercase hex), as
/// [`read_corpus`] reads them. Returns the image's path.
pub(crate) fn write_entry(
    dir: &Path,
    file: &str,
    image: &[u8],
    payloads: &[Vec<u8>],
) -> Result<PathBuf, QrError> {
    std::fs::create_dir_all(dir).map_err(|e| QrError::Io {
        what: dir.display().to_string(),
        source: e,
    })?;
    let write = |p: &Path, bytes: &[u8]| {
        std::fs::write(p, bytes).map_err(|e| QrError::Write {
            what: p.display().to_string(),
            detail: e.to_string(),
        })
    };
    let path = dir.join(file);
    write(&path, image)?;
    let hex: String = payloads.iter().map(|p| hex::encode(p) + "\n").collect();
    write(&path.with_extension("hex"), hex.as_bytes())?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_is_deterministic_and_sized() {
        let scene = &corpus_scenes()[0];
        let a = render(scene, 1).unwrap();
        let b = render(scene, 1).unwrap();
        assert_eq!(a.image, b.image);
        assert_eq!((a.image.width(), a.image.height()), (1280, 720));
        assert_eq!(a.payloads.len(), 1);
        assert_eq!(a.payloads[0].len(), TOKEN_LEN);
        let c = render(scene, 2).unwrap();
        assert_ne!(a.image, c.image);
    }

    #[test]
    fn frontal_homography_maps_code_centre_to_target() {
        let m = phone_homography(1280, 720, 400.0, 300.0, 0.5, 0.0, 0.0, 0.0);
        let (x, y) = apply(&m, CODE_X + CODE_SIDE / 2.0, CODE_Y + CODE_SIDE / 2.0).unwrap();
        assert!((x - 400.0).abs() < 1e-3 && (y - 300.0).abs() < 1e-3);
        let (x2, _) = apply(&m, CODE_X + CODE_SIDE, CODE_Y + CODE_SIDE / 2.0).unwrap();
        assert!((x2 - x - 135.0).abs() < 1e-2, "{}", x2 - x);
        let inv = mat_inverse(&m).unwrap();
        let (u, v) = apply(&inv, x, y).unwrap();
        assert!((u - 300.0).abs() < 1e-2 && (v - 560.0).abs() < 1e-2);
    }

    #[test]
    fn quad_overlap_detects_covering_and_separation() {
        let sq = |x: f32, y: f32, s: f32| vec![(x, y), (x + s, y), (x + s, y + s), (x, y + s)];
        assert!(quads_overlap(&sq(0.0, 0.0, 10.0), &sq(5.0, 5.0, 10.0)));
        assert!(quads_overlap(&sq(0.0, 0.0, 100.0), &sq(40.0, 40.0, 10.0)));
        assert!(!quads_overlap(&sq(0.0, 0.0, 10.0), &sq(20.0, 0.0, 10.0)));
        assert!(in_quad(&sq(0.0, 0.0, 10.0), (5.0, 5.0)));
        assert!(!in_quad(&sq(0.0, 0.0, 10.0), (15.0, 5.0)));
    }

    #[test]
    fn dark_mode_inverts_the_code_area() {
        let mut fx = Effects {
            noise: 0.0,
            ..Effects::default()
        };
        let scene = Scene {
            name: "t".into(),
            width: 640,
            height: 480,
            codes: 1,
            effects: fx.clone(),
        };
        let light = render(&scene, 5).unwrap();
        fx.dark_mode = true;
        let dark = render(
            &Scene {
                effects: fx,
                ..scene
            },
            5,
        )
        .unwrap();
        let mean = |g: &GreyImage| {
            g.data().iter().map(|&p| f32::from(p)).sum::<f32>() / g.data().len() as f32
        };
        assert!(mean(&dark.image) < mean(&light.image) - 10.0);
    }
}
