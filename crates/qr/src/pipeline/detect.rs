//! rqrr's detector and decoder on a prepared image, and the attempts that
//! binarise a working image for it.

use std::time::Instant;

use rqrr::PreparedImage;

use super::watched::Watched;
use crate::GreyImage;
use crate::contain::contained;
use crate::prepare::{self, Bitmap};

/// A code as rqrr reports it in a working image's pixels.
pub(super) struct Found {
    pub(super) payload: Vec<u8>,
    pub(super) corners: [[f32; 2]; 4],
}

/// Decodes every grid rqrr detects in a prepared image.
fn collect_grids(img: &mut PreparedImage<Watched>) -> Vec<Found> {
    let mut out = Vec::new();
    for grid in img.detect_grids() {
        let mut payload = Vec::new();
        if grid.decode_to(&mut payload).is_ok() {
            let corners = grid.bounds.map(|p| [p.x as f32, p.y as f32]);
            out.push(Found { payload, corners });
        }
    }
    out
}

/// Runs rqrr's grid detection and decoding on a bitmap, abandoned if still
/// running at `until` ([`Watched`]). A panic inside rqrr (it asserts on
/// some inputs) is contained and counts as "no code", as does running out
/// of time.
pub(super) fn rqrr_bitmap(bits: &Bitmap, until: Option<Instant>) -> Vec<Found> {
    // rqrr's bitmap colours: 0 light, 1 dark.
    let pixels = (0..bits.height())
        .flat_map(|y| bits.row(y))
        .map(|&dark| u8::from(dark))
        .collect();
    let Some(image) = Watched::new(bits.width(), bits.height(), pixels, until) else {
        return Vec::new();
    };
    contained(|| collect_grids(&mut PreparedImage::without_preparation(image))).unwrap_or_default()
}

/// Runs rqrr with its own row-average threshold on a grey image (abandoned
/// as [`rqrr_bitmap`] is).
fn rqrr_grey(image: &GreyImage, until: Option<Instant>) -> Vec<Found> {
    let pixels = image.data().to_vec();
    let Some(image) = Watched::new(image.width(), image.height(), pixels, until) else {
        return Vec::new();
    };
    contained(|| collect_grids(&mut PreparedImage::prepare(image))).unwrap_or_default()
}

/// Window radius for the adaptive threshold: large enough to span a finder
/// pattern of a code filling the image, small enough to follow glare.
fn threshold_radius(image: &GreyImage) -> usize {
    (image.width().min(image.height()) / 14).clamp(6, 48)
}

/// One attempt: a way to produce candidates from a working image. The
/// stages that search whole images list theirs as `(name, Attempt)`
/// tables, tried in order.
#[derive(Clone, Copy)]
pub(super) enum Attempt {
    /// [`prepare::adaptive_threshold`] after a box blur of `blur` (0: none),
    /// on the image inverted first when `inverted` (dark mode).
    Adaptive {
        blur: usize,
        offset: u8,
        inverted: bool,
    },
    /// rqrr's own row-average threshold.
    Native { inverted: bool },
}

impl Attempt {
    /// Runs the attempt on `image`; rqrr is abandoned if still running at
    /// `until`.
    pub(super) fn run(self, image: &GreyImage, until: Option<Instant>) -> Vec<Found> {
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
                rqrr_bitmap(&bits, until)
            }
            Attempt::Native { inverted } => {
                if inverted {
                    let mut inv = image.clone();
                    prepare::invert(&mut inv);
                    rqrr_grey(&inv, until)
                } else {
                    rqrr_grey(image, until)
                }
            }
        }
    }
}
