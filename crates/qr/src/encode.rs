//! Rendering tokens as QR codes: byte mode, error-correction level M, with a
//! quiet zone, as a grey image or PNG (what a wallet shows on its screen).
//!
//! Byte mode is forced (no numeric/alphanumeric segments) so any binary token
//! round-trips through decoders that handle byte mode only; level M corrects
//! about 15% of damaged codewords (glare, a finger) while a 199-byte token
//! still fits version 10.

use std::io::Cursor;
use std::path::Path;

use image::{ExtendedColorType, ImageEncoder, codecs::png::PngEncoder};
use qrcode::bits::Bits;
use qrcode::{Color, EcLevel, QrCode, Version};

use super::{GreyImage, MAX_DIMENSION, QrError};

/// Quiet zone, in modules, that the standard asks for around a code.
pub const QUIET_ZONE: usize = 4;

/// Pixels per module of [`encode_png`]'s images: sharp on a phone screen and
/// small enough as a file.
pub const PNG_MODULE_PX: usize = 8;

/// A QR code's modules: `size`×`size`, `true` for dark.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Modules {
    /// Modules per side (21 for version 1, 57 for version 10).
    pub size: usize,
    /// Row-major darkness of each module.
    pub dark: Vec<bool>,
}

impl Modules {
    /// Whether the module at (x, y) is dark; `false` outside (quiet zone).
    pub fn is_dark(&self, x: isize, y: isize) -> bool {
        x >= 0
            && y >= 0
            && (x as usize) < self.size
            && (y as usize) < self.size
            && self.dark[y as usize * self.size + x as usize]
    }
}

/// Encodes a payload as QR modules in byte mode at level M, using the
/// smallest version that fits.
pub(crate) fn modules(payload: &[u8]) -> Result<Modules, QrError> {
    modules_at(payload, EcLevel::M, 1)
}

/// Encodes a payload as QR modules in byte mode at level `ec`, using the
/// smallest version from `min_version` (1–40) that fits.
pub(crate) fn modules_at(
    payload: &[u8],
    ec: EcLevel,
    min_version: i16,
) -> Result<Modules, QrError> {
    let err = |detail: String| QrError::Encode {
        len: payload.len(),
        detail,
    };
    let mut last = String::from("no version fits");
    for v in min_version.clamp(1, 40)..=40i16 {
        let mut bits = Bits::new(Version::Normal(v));
        let pushed = bits
            .push_byte_data(payload)
            .and_then(|()| bits.push_terminator(ec));
        match pushed {
            Ok(()) => {
                let code = QrCode::with_bits(bits, ec).map_err(|e| err(e.to_string()))?;
                let size = code.width();
                let dark = code
                    .to_colors()
                    .into_iter()
                    .map(|c| c == Color::Dark)
                    .collect();
                return Ok(Modules { size, dark });
            }
            Err(e) => last = e.to_string(),
        }
    }
    Err(err(last))
}

/// The most bytes a code of `version` (1–40) at level `ec` carries in byte
/// mode (for the photo corpus' sizes).
#[cfg(any(test, feature = "synth"))]
pub(crate) fn byte_capacity(version: i16, ec: EcLevel) -> usize {
    let fits = |len: usize| {
        let mut bits = Bits::new(Version::Normal(version));
        bits.push_byte_data(&vec![0u8; len])
            .and_then(|()| bits.push_terminator(ec))
            .is_ok()
    };
    let (mut lo, mut hi) = (0usize, 3000usize);
    while lo < hi {
        let mid = (lo + hi).div_ceil(2);
        if fits(mid) { lo = mid } else { hi = mid - 1 }
    }
    lo
}

/// Renders a payload as text for a terminal: two modules per character
/// cell (upper and lower half blocks), dark on a light background, with a
/// quiet zone, so an operator can show it to a phone's camera.
pub fn terminal_text(payload: &[u8]) -> Result<String, QrError> {
    let m = modules(payload)?;
    let q = QUIET_ZONE as isize;
    let side = m.size as isize;
    let mut out = String::new();
    let mut y = -q;
    while y < side + q {
        for x in -q..side + q {
            // Light modules are drawn (the terminal's background is dark).
            let top = !m.is_dark(x, y);
            let bottom = y + 1 < side + q && !m.is_dark(x, y + 1);
            out.push(match (top, bottom) {
                (true, true) => '\u{2588}',
                (true, false) => '\u{2580}',
                (false, true) => '\u{2584}',
                (false, false) => ' ',
            });
        }
        out.push('\n');
        y += 2;
    }
    Ok(out)
}

/// Renders a payload as a grey image: black modules of `module_px` pixels on
/// white, with `quiet` modules of white margin.
pub fn render_token(payload: &[u8], module_px: usize, quiet: usize) -> Result<GreyImage, QrError> {
    let m = modules(payload)?;
    let module_px = module_px.max(1);
    let side = (m.size + 2 * quiet).saturating_mul(module_px);
    if side > MAX_DIMENSION {
        return Err(QrError::Invalid(format!(
            "rendered code would be {side} pixels wide (limit {MAX_DIMENSION})"
        )));
    }
    let mut data = vec![255u8; side * side];
    for y in 0..side {
        for x in 0..side {
            let mx = (x / module_px) as isize - quiet as isize;
            let my = (y / module_px) as isize - quiet as isize;
            if m.is_dark(mx, my) {
                data[y * side + x] = 0;
            }
        }
    }
    GreyImage::new(side, side, data)
}

/// Encodes a grey image as PNG bytes.
pub fn png_bytes(image: &GreyImage) -> Result<Vec<u8>, QrError> {
    let mut out = Cursor::new(Vec::new());
    write_grey(PngEncoder::new(&mut out), image, "PNG")?;
    Ok(out.into_inner())
}

/// Writes a grey image through one of `image`'s encoders; errors name the
/// `format`.
pub(crate) fn write_grey(
    encoder: impl ImageEncoder,
    image: &GreyImage,
    format: &str,
) -> Result<(), QrError> {
    encoder
        .write_image(
            image.data(),
            image.width() as u32,
            image.height() as u32,
            ExtendedColorType::L8,
        )
        .map_err(|e| QrError::Write {
            what: format.into(),
            detail: e.to_string(),
        })
}

/// Renders a payload as a PNG (byte mode, level M, 4-module quiet zone,
/// [`PNG_MODULE_PX`] pixels per module).
pub fn encode_png(payload: &[u8]) -> Result<Vec<u8>, QrError> {
    png_bytes(&render_token(payload, PNG_MODULE_PX, QUIET_ZONE)?)
}

/// Renders a payload as a PNG file at `out` (see [`encode_png`]).
pub fn write_png(payload: &[u8], out: &Path) -> Result<(), QrError> {
    let bytes = encode_png(payload)?;
    std::fs::write(out, bytes).map_err(|e| QrError::Write {
        what: out.display().to_string(),
        detail: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::load_image_bytes;

    #[test]
    fn token_sized_payload_is_version_10_level_m() {
        let m = modules(&[0xA5; 199]).unwrap();
        assert_eq!(m.size, 57, "version 10 is 57 modules");
        // Finder pattern corners are dark, the separator light.
        assert!(m.is_dark(0, 0) && m.is_dark(6, 6) && !m.is_dark(7, 7));
        assert!(!m.is_dark(-1, 0) && !m.is_dark(57, 0));
    }

    #[test]
    fn too_long_payload_is_an_error() {
        let e = modules(&vec![1u8; 3000]).unwrap_err();
        assert!(e.to_string().contains("3000 bytes"), "{e}");
    }

    #[test]
    fn png_round_trips_through_the_decoder() {
        let payload: Vec<u8> = (0..199u32).map(|i| (i * 7 % 256) as u8).collect();
        let png = encode_png(&payload).unwrap();
        let img = load_image_bytes(&png, "test").unwrap();
        assert_eq!(img.width(), (57 + 8) * PNG_MODULE_PX);
        let got = crate::Decoder::new(crate::DecodeOptions {
            budget: std::time::Duration::from_secs(600),
            ..crate::DecodeOptions::thorough()
        })
        .decode(img.as_frame());
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].payload, payload);
    }

    #[test]
    fn write_png_reports_bad_paths() {
        let e = write_png(b"x", Path::new("/nonexistent-dir/x.png")).unwrap_err();
        assert!(e.to_string().contains("/nonexistent-dir/x.png"), "{e}");
    }
}
