//! QR path: read payment tokens shown on phone screens through a camera.
//!
//! rqrr finds and decodes QR codes, but on camera frames of phone screens it
//! misses inverted (dark-mode) codes, struggles with moiré, glare, low
//! contrast and small modules, and its cost grows fast with frame size. A
//! [`Decoder`] runs a fixed table of stages within a per-frame budget
//! (private modules: `pipeline` and one module per stage, over the steps in
//! `prepare`, `locate` and `sample`), returning every code found with its
//! corners in the original frame's pixels. [`source`] reads frames from
//! image files and raw Y8/YUYV streams, [`encode`] renders tokens as QR
//! images, and `synth` (feature `synth`: test support for benches and
//! tests) generates the test corpus under `signals/qr/`.

#![deny(missing_docs)]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

mod contain;
pub mod encode;
mod locate;
/// Photo-like frames of codes in every category of issue 20 (feature
/// `synth`): the second corpus, `signals/qr/photo/`.
#[cfg(any(test, feature = "synth"))]
pub mod photo;
mod pipeline;
mod prepare;
mod sample;
pub mod source;
/// Synthetic camera frames and the corpus (feature `synth`): test support
/// for the benches and tests, not part of the decoder.
#[cfg(any(test, feature = "synth"))]
pub mod synth;
/// V4L2 camera source (feature `v4l2`, 64-bit Linux).
#[cfg(all(feature = "v4l2", target_os = "linux", target_pointer_width = "64"))]
pub mod v4l2;

#[cfg(test)]
mod tests;

pub use contain::{ContainedPanic, attempts_out_of_time, contained_panics, quiet_contained_panics};
pub use encode::{encode_png, render_token, write_png};
pub use pipeline::{
    BUDGET_PER_CODE, DecodeOptions, DecodedCode, Decoder, GATE_BUDGET, STILL_BUDGET_CAP,
    decode_frame,
};
pub use source::{
    FrameSource, ImageFileSource, PixelFormat, RawStreamSource, load_image, luma_from_packed,
};

use thiserror::Error;

/// Largest width or height accepted for any frame or image file: larger
/// inputs are refused before their pixels are read, so a hostile header
/// cannot make the reader allocate gigabytes.
pub const MAX_DIMENSION: usize = 16_384;

/// Largest pixel count accepted for one frame (64 MP, 64 MiB of grey).
pub const MAX_PIXELS: usize = 64 * 1024 * 1024;

/// Everything that can go wrong on the QR path, in words an operator can act on.
#[derive(Debug, Error)]
pub enum QrError {
    /// A frame's buffer does not match its stated size.
    #[error("frame of {width}x{height} needs {expected} bytes of luma, got {actual}")]
    FrameSize {
        /// Stated width in pixels.
        width: usize,
        /// Stated height in pixels.
        height: usize,
        /// Bytes the stated size needs.
        expected: usize,
        /// Bytes actually given.
        actual: usize,
    },
    /// A frame or image is larger than the reader accepts.
    #[error(
        "image of {width}x{height} is too large (limit {MAX_DIMENSION} per side and {MAX_PIXELS} pixels)"
    )]
    TooLarge {
        /// Width in pixels.
        width: usize,
        /// Height in pixels.
        height: usize,
    },
    /// A frame with no pixels.
    #[error("image is empty ({width}x{height})")]
    Empty {
        /// Width in pixels.
        width: usize,
        /// Height in pixels.
        height: usize,
    },
    /// Reading a file or stream failed.
    #[error("cannot read {what}: {source}")]
    Io {
        /// What was being read.
        what: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// An image file could not be decoded.
    #[error("cannot decode image {what}: {detail}")]
    Image {
        /// Which file.
        what: String,
        /// What the decoder said.
        detail: String,
    },
    /// A raw frame stream ended in the middle of a frame.
    #[error("raw stream ended inside frame {frame}: got {got} of {need} bytes")]
    TruncatedFrame {
        /// Index of the incomplete frame (0-based).
        frame: u64,
        /// Bytes read.
        got: usize,
        /// Bytes a full frame needs.
        need: usize,
    },
    /// Invalid parameters (e.g. odd width for YUYV).
    #[error("invalid parameter: {0}")]
    Invalid(String),
    /// The payload cannot be encoded as a QR code.
    #[error("cannot encode {len} bytes as a QR code (byte mode, level M): {detail}")]
    Encode {
        /// Payload length in bytes.
        len: usize,
        /// What the encoder said.
        detail: String,
    },
    /// Writing an image failed.
    #[error("cannot write image {what}: {detail}")]
    Write {
        /// Which file or buffer.
        what: String,
        /// What went wrong.
        detail: String,
    },
}

/// An owned 8-bit grey image, row-major, `width * height` bytes.
///
/// The one image type of the QR path: frames, prepared images and rendered
/// codes all use it, so every step composes with every other.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GreyImage {
    width: usize,
    height: usize,
    data: Vec<u8>,
}

/// Checks a frame's stated size against the limits and its buffer length.
fn check_size(width: usize, height: usize, len: usize) -> Result<(), QrError> {
    if width == 0 || height == 0 {
        return Err(QrError::Empty { width, height });
    }
    if width > MAX_DIMENSION || height > MAX_DIMENSION || width.saturating_mul(height) > MAX_PIXELS
    {
        return Err(QrError::TooLarge { width, height });
    }
    let expected = width * height;
    if len != expected {
        return Err(QrError::FrameSize {
            width,
            height,
            expected,
            actual: len,
        });
    }
    Ok(())
}

impl GreyImage {
    /// Wraps luma bytes, checking that their count matches the size and the
    /// size is within [`MAX_DIMENSION`] / [`MAX_PIXELS`].
    pub fn new(width: usize, height: usize, data: Vec<u8>) -> Result<Self, QrError> {
        check_size(width, height, data.len())?;
        Ok(Self {
            width,
            height,
            data,
        })
    }

    /// An image of one grey level, for backgrounds and tests.
    pub fn filled(width: usize, height: usize, value: u8) -> Result<Self, QrError> {
        check_size(width, height, width.saturating_mul(height))?;
        Ok(Self {
            width,
            height,
            data: vec![value; width * height],
        })
    }

    /// Internal constructor for sizes already known to be valid.
    pub(crate) fn from_parts(width: usize, height: usize, data: Vec<u8>) -> Self {
        debug_assert_eq!(width * height, data.len());
        Self {
            width,
            height,
            data,
        }
    }

    /// Width in pixels.
    pub fn width(&self) -> usize {
        self.width
    }

    /// Height in pixels.
    pub fn height(&self) -> usize {
        self.height
    }

    /// Luma bytes, row-major.
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    /// Mutable luma bytes, row-major (the size cannot change).
    pub fn data_mut(&mut self) -> &mut [u8] {
        &mut self.data
    }

    /// The pixel at (x, y), or `None` outside the image.
    pub fn get(&self, x: usize, y: usize) -> Option<u8> {
        if x < self.width && y < self.height {
            self.data.get(y * self.width + x).copied()
        } else {
            None
        }
    }

    /// A borrowed view, the form the decoder takes.
    pub fn as_frame(&self) -> GreyFrame<'_> {
        GreyFrame {
            width: self.width,
            height: self.height,
            data: &self.data,
        }
    }

    /// Consumes the image, returning its bytes.
    pub fn into_data(self) -> Vec<u8> {
        self.data
    }
}

/// A borrowed grey frame: what a camera or file hands the decoder without a copy.
#[derive(Clone, Copy, Debug)]
pub struct GreyFrame<'a> {
    width: usize,
    height: usize,
    data: &'a [u8],
}

impl<'a> GreyFrame<'a> {
    /// Borrows luma bytes as a frame, checking size and limits.
    pub fn new(width: usize, height: usize, data: &'a [u8]) -> Result<Self, QrError> {
        check_size(width, height, data.len())?;
        Ok(Self {
            width,
            height,
            data,
        })
    }

    /// Width in pixels.
    pub fn width(&self) -> usize {
        self.width
    }

    /// Height in pixels.
    pub fn height(&self) -> usize {
        self.height
    }

    /// Luma bytes, row-major.
    pub fn data(&self) -> &'a [u8] {
        self.data
    }

    /// Copies the frame into an owned image.
    pub fn to_image(&self) -> GreyImage {
        GreyImage::from_parts(self.width, self.height, self.data.to_vec())
    }
}
