//! Frame sources: image files and raw Y8/YUYV frame streams, behind one
//! small trait so the reader loop does not care where frames come from.
//!
//! Every source checks sizes before allocating: an image header claiming
//! 20000×20000, an empty or truncated file, or a text file named `.png` is a
//! clear [`QrError`], never a panic or a multi-gigabyte allocation.

use std::io::{self, BufReader, Cursor, Read};
use std::path::{Path, PathBuf};

use image::{ImageDecoder, ImageReader, Limits};

use super::{GreyImage, MAX_DIMENSION, MAX_PIXELS, QrError};

/// Anything that yields grey frames one after another.
pub trait FrameSource {
    /// The next frame, `Ok(None)` at the end of the source.
    fn next_frame(&mut self) -> Result<Option<GreyImage>, QrError>;
}

/// Decoder limits that refuse oversized images before their pixels are read.
fn limits() -> Limits {
    let mut l = Limits::default();
    l.max_image_width = Some(MAX_DIMENSION as u32);
    l.max_image_height = Some(MAX_DIMENSION as u32);
    // Grey output plus decoder scratch for an RGB(A) image of MAX_PIXELS.
    l.max_alloc = Some((MAX_PIXELS as u64) * 5);
    l
}

/// Decodes an image held by `reader` to grey, checking the header's size first.
fn decode_reader<R: std::io::BufRead + std::io::Seek>(
    reader: ImageReader<R>,
    what: &str,
) -> Result<GreyImage, QrError> {
    let image_err = |detail: String| QrError::Image {
        what: what.to_string(),
        detail,
    };
    let mut reader = reader.with_guessed_format().map_err(|e| QrError::Io {
        what: what.to_string(),
        source: e,
    })?;
    if reader.format().is_none() {
        return Err(image_err(
            "not a PNG or JPEG image (unrecognised content)".into(),
        ));
    }
    reader.limits(limits());
    let decoder = reader
        .into_decoder()
        .map_err(|e| image_err(e.to_string()))?;
    let (w, h) = decoder.dimensions();
    let (w, h) = (w as usize, h as usize);
    if w == 0 || h == 0 {
        return Err(QrError::Empty {
            width: w,
            height: h,
        });
    }
    if w > MAX_DIMENSION || h > MAX_DIMENSION || w.saturating_mul(h) > MAX_PIXELS {
        return Err(QrError::TooLarge {
            width: w,
            height: h,
        });
    }
    let img = image::DynamicImage::from_decoder(decoder).map_err(|e| image_err(e.to_string()))?;
    let grey = img.into_luma8();
    GreyImage::new(w, h, grey.into_raw())
}

/// Loads a PNG or JPEG file as a grey image (format from content, not name).
pub fn load_image(path: &Path) -> Result<GreyImage, QrError> {
    let what = path.display().to_string();
    // A FIFO dropped into a watched directory must not hang the camera thread.
    let file = sonotap_disk::fsutil::open_regular_file(path).map_err(|e| QrError::Io {
        what: what.clone(),
        source: io::Error::other(e),
    })?;
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    if len == 0 {
        return Err(QrError::Image {
            what,
            detail: "file is empty".into(),
        });
    }
    decode_reader(ImageReader::new(BufReader::new(file)), &what)
}

/// Decodes PNG or JPEG bytes already in memory; `what` names them in errors.
pub fn load_image_bytes(bytes: &[u8], what: &str) -> Result<GreyImage, QrError> {
    if bytes.is_empty() {
        return Err(QrError::Image {
            what: what.to_string(),
            detail: "no bytes".into(),
        });
    }
    decode_reader(ImageReader::new(Cursor::new(bytes)), what)
}

/// Image files, one frame each, in the order given.
#[derive(Clone, Debug)]
pub struct ImageFileSource {
    paths: std::vec::IntoIter<PathBuf>,
}

impl ImageFileSource {
    /// A source over these files.
    pub fn new(paths: Vec<PathBuf>) -> Self {
        Self {
            paths: paths.into_iter(),
        }
    }
}

impl FrameSource for ImageFileSource {
    fn next_frame(&mut self) -> Result<Option<GreyImage>, QrError> {
        match self.paths.next() {
            Some(p) => load_image(&p).map(Some),
            None => Ok(None),
        }
    }
}

/// Pixel layout of a raw frame stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PixelFormat {
    /// 8-bit luma only (GStreamer `GRAY8`, ffmpeg `gray`, V4L2 `GREY`).
    Y8,
    /// Packed 4:2:2, Y0 U Y1 V (GStreamer `YUY2`, ffmpeg `yuyv422`, V4L2 `YUYV`),
    /// the format most USB cameras send; only the luma is kept.
    Yuyv,
}

impl PixelFormat {
    /// Parses `y8`/`gray`/`grey` or `yuyv`/`yuy2`, for command lines.
    pub fn from_name(name: &str) -> Option<Self> {
        match name.to_ascii_lowercase().as_str() {
            "y8" | "gray" | "grey" | "gray8" => Some(Self::Y8),
            "yuyv" | "yuy2" | "yuyv422" => Some(Self::Yuyv),
            _ => None,
        }
    }

    /// Bytes per pixel in the stream.
    pub fn bytes_per_pixel(self) -> usize {
        match self {
            Self::Y8 => 1,
            Self::Yuyv => 2,
        }
    }
}

/// Raw frames of a fixed size read back to back from a pipe or file (what
/// `gst-launch … ! filesink`, `ffmpeg -f rawvideo` or `v4l2-ctl
/// --stream-to` emit). A stream ending between frames is a clean end; one
/// ending inside a frame is an error.
pub struct RawStreamSource<R> {
    reader: R,
    width: usize,
    height: usize,
    format: PixelFormat,
    buf: Vec<u8>,
    index: u64,
}

impl<R: Read> RawStreamSource<R> {
    /// A source of `width`×`height` frames in `format`; refuses sizes over
    /// the limits and odd widths for YUYV.
    pub fn new(
        reader: R,
        width: usize,
        height: usize,
        format: PixelFormat,
    ) -> Result<Self, QrError> {
        if width == 0 || height == 0 {
            return Err(QrError::Empty { width, height });
        }
        if width > MAX_DIMENSION || height > MAX_DIMENSION || width * height > MAX_PIXELS {
            return Err(QrError::TooLarge { width, height });
        }
        if format == PixelFormat::Yuyv && !width.is_multiple_of(2) {
            return Err(QrError::Invalid(format!(
                "YUYV frames need an even width, got {width}"
            )));
        }
        Ok(Self {
            reader,
            width,
            height,
            format,
            buf: vec![0; width * height * format.bytes_per_pixel()],
            index: 0,
        })
    }
}

impl<R: Read> FrameSource for RawStreamSource<R> {
    fn next_frame(&mut self) -> Result<Option<GreyImage>, QrError> {
        let need = self.buf.len();
        let mut got = 0;
        while got < need {
            match self.reader.read(&mut self.buf[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(QrError::Io {
                        what: format!("raw frame {}", self.index),
                        source: e,
                    });
                }
            }
        }
        if got == 0 {
            return Ok(None);
        }
        if got < need {
            return Err(QrError::TruncatedFrame {
                frame: self.index,
                got,
                need,
            });
        }
        self.index += 1;
        let stride = self.width * self.format.bytes_per_pixel();
        luma_from_packed(&self.buf, self.width, self.height, stride, self.format).map(Some)
    }
}

/// The luma plane of one packed frame whose rows are `stride` bytes apart
/// (cameras pad rows: V4L2's `bytesperline` may exceed the pixel bytes).
/// The one conversion for every raw source, pipe or camera.
pub fn luma_from_packed(
    data: &[u8],
    width: usize,
    height: usize,
    stride: usize,
    format: PixelFormat,
) -> Result<GreyImage, QrError> {
    let row_bytes = width.saturating_mul(format.bytes_per_pixel());
    if stride < row_bytes {
        return Err(QrError::Invalid(format!(
            "row stride {stride} is shorter than a row of {width} {format:?} pixels ({row_bytes} bytes)"
        )));
    }
    let need = stride.saturating_mul(height.saturating_sub(1)) + row_bytes;
    if height == 0 || width == 0 || data.len() < need {
        return Err(QrError::FrameSize {
            width,
            height,
            expected: need,
            actual: data.len(),
        });
    }
    let mut luma = Vec::with_capacity(width * height);
    for row in data.chunks(stride).take(height) {
        let row = &row[..row_bytes];
        match format {
            PixelFormat::Y8 => luma.extend_from_slice(row),
            PixelFormat::Yuyv => luma.extend(row.iter().step_by(2)),
        }
    }
    GreyImage::new(width, height, luma)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encode::{encode_png, png_bytes};

    fn temp_file(name: &str, bytes: &[u8]) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        (dir, path)
    }

    #[test]
    fn empty_file_is_a_clear_error() {
        let (_d, p) = temp_file("empty.png", b"");
        let e = load_image(&p).unwrap_err();
        assert!(e.to_string().contains("empty"), "{e}");
    }

    #[test]
    fn text_named_png_is_a_clear_error() {
        let (_d, p) = temp_file("notes.png", b"this is not an image\n");
        let e = load_image(&p).unwrap_err();
        assert!(matches!(e, QrError::Image { .. }), "{e}");
    }

    #[test]
    fn truncated_png_is_a_clear_error() {
        let png = encode_png(b"hello").unwrap();
        let (_d, p) = temp_file("cut.png", &png[..png.len() / 2]);
        let e = load_image(&p).unwrap_err();
        assert!(matches!(e, QrError::Image { .. }), "{e}");
    }

    /// A PNG header claiming 20000×20000 (valid CRCs, tiny data): refused
    /// from the header, before any pixel buffer is allocated.
    #[test]
    fn huge_header_is_refused_before_decoding() {
        let mut png = Vec::new();
        png.extend_from_slice(b"\x89PNG\r\n\x1a\n");
        let mut ihdr = Vec::new();
        ihdr.extend_from_slice(&20_000u32.to_be_bytes());
        ihdr.extend_from_slice(&20_000u32.to_be_bytes());
        ihdr.extend_from_slice(&[8, 0, 0, 0, 0]);
        let chunk = |out: &mut Vec<u8>, kind: &[u8], data: &[u8]| {
            out.extend_from_slice(&(data.len() as u32).to_be_bytes());
            let mut crc_in = kind.to_vec();
            crc_in.extend_from_slice(data);
            out.extend_from_slice(&crc_in);
            out.extend_from_slice(&crc32(&crc_in).to_be_bytes());
        };
        chunk(&mut png, b"IHDR", &ihdr);
        chunk(&mut png, b"IEND", &[]);
        let (_d, p) = temp_file("huge.png", &png);
        let e = load_image(&p).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("20000") || msg.contains("limit") || msg.contains("too large"),
            "{msg}"
        );
    }

    fn crc32(data: &[u8]) -> u32 {
        let mut crc = 0xFFFF_FFFFu32;
        for &b in data {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    #[test]
    fn png_and_jpeg_load_as_grey() {
        let img = GreyImage::new(8, 4, (0..32).map(|i| i * 8).collect()).unwrap();
        let png = png_bytes(&img).unwrap();
        assert_eq!(load_image_bytes(&png, "png").unwrap(), img);
        let mut jpeg = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 95)
            .encode(img.data(), 8, 4, image::ExtendedColorType::L8)
            .unwrap();
        let back = load_image_bytes(&jpeg, "jpeg").unwrap();
        assert_eq!((back.width(), back.height()), (8, 4));
        assert!(load_image_bytes(&[], "nothing").is_err());
    }

    #[test]
    fn file_source_yields_each_file_then_ends() {
        let img = GreyImage::filled(4, 4, 9).unwrap();
        let (_d, p) = temp_file("a.png", &png_bytes(&img).unwrap());
        let mut src = ImageFileSource::new(vec![p.clone(), p]);
        assert_eq!(src.next_frame().unwrap().unwrap(), img);
        assert!(src.next_frame().unwrap().is_some());
        assert!(src.next_frame().unwrap().is_none());
    }

    #[test]
    fn y8_stream_yields_frames_and_reports_truncation() {
        let mut bytes: Vec<u8> = (0..24).collect();
        bytes.extend_from_slice(&[1, 2, 3]);
        let mut src = RawStreamSource::new(Cursor::new(bytes), 4, 3, PixelFormat::Y8).unwrap();
        assert_eq!(
            src.next_frame().unwrap().unwrap().data(),
            &(0..12).collect::<Vec<u8>>()[..]
        );
        assert_eq!(src.next_frame().unwrap().unwrap().get(0, 0), Some(12));
        let e = src.next_frame().unwrap_err();
        assert!(
            matches!(
                e,
                QrError::TruncatedFrame {
                    frame: 2,
                    got: 3,
                    need: 12
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn packed_frames_with_padded_rows_give_their_luma() {
        // 2x2 YUYV with rows padded to 6 bytes (2 bytes of padding).
        let data = [10, 128, 20, 128, 0xEE, 0xEE, 30, 1, 40, 2, 0xEE, 0xEE];
        let img = luma_from_packed(&data, 2, 2, 6, PixelFormat::Yuyv).unwrap();
        assert_eq!(img.data(), &[10, 20, 30, 40]);
        // Y8, stride 3 for 2 pixels; the last row needs no padding.
        let img = luma_from_packed(&[1, 2, 9, 3, 4], 2, 2, 3, PixelFormat::Y8).unwrap();
        assert_eq!(img.data(), &[1, 2, 3, 4]);
        // Too short a buffer, too short a stride.
        assert!(matches!(
            luma_from_packed(&[1, 2, 9, 3], 2, 2, 3, PixelFormat::Y8),
            Err(QrError::FrameSize { .. })
        ));
        let e = luma_from_packed(&data, 2, 2, 3, PixelFormat::Yuyv).unwrap_err();
        assert!(e.to_string().contains("stride"), "{e}");
    }

    #[test]
    fn yuyv_stream_keeps_luma() {
        // Y0 U Y1 V for a 2x1 frame, two frames.
        let bytes = vec![10, 128, 20, 128, 30, 1, 40, 2];
        let mut src = RawStreamSource::new(Cursor::new(bytes), 2, 1, PixelFormat::Yuyv).unwrap();
        assert_eq!(src.next_frame().unwrap().unwrap().data(), &[10, 20]);
        assert_eq!(src.next_frame().unwrap().unwrap().data(), &[30, 40]);
        assert!(src.next_frame().unwrap().is_none());
        assert!(RawStreamSource::new(Cursor::new(vec![]), 3, 1, PixelFormat::Yuyv).is_err());
        assert!(
            RawStreamSource::new(Cursor::new(vec![]), 20_000, 20_000, PixelFormat::Y8).is_err()
        );
        assert_eq!(PixelFormat::from_name("YUY2"), Some(PixelFormat::Yuyv));
        assert_eq!(PixelFormat::from_name("rgb"), None);
    }
}
