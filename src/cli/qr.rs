//! `sonotap qr …`: read tokens from images and render tokens as QR codes.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Subcommand;
use serde_json::json;

use sonotap_qr::{self as qr, DecodedCode, FrameSource, PixelFormat, RawStreamSource};

#[derive(Debug, Subcommand)]
pub(super) enum QrCommand {
    /// Read every QR code in image files (PNG, JPEG): one line of hex each; exit 1 if none
    Decode {
        /// One JSON object per code: payload_hex, text (when UTF-8), corners in image pixels
        #[arg(long)]
        json: bool,
        /// Image files to read
        #[arg(required = true, value_name = "IMAGE")]
        images: Vec<PathBuf>,
    },
    /// Read codes from a stream of frames (raw Y8/YUYV frames on standard input
    /// or from a file, or a V4L2 camera): one line per code, the first time it
    /// is seen; exit 1 if none
    Scan {
        /// Frame size, WIDTHxHEIGHT (for a camera: the size asked for)
        #[arg(long, value_name = "WxH", default_value = "1280x720")]
        size: String,
        /// Pixel layout of raw frames: y8 (grey) or yuyv
        #[arg(long, default_value = "y8")]
        format: String,
        /// Read raw frames from this file instead of standard input
        #[arg(long, value_name = "FILE", conflicts_with = "device")]
        input: Option<PathBuf>,
        /// A V4L2 camera, e.g. /dev/video0 (builds with the v4l2 feature)
        #[arg(long, value_name = "DEVICE")]
        device: Option<PathBuf>,
        /// Stop after this many frames
        #[arg(long, value_name = "N")]
        frames: Option<u64>,
        /// Stop at the first code
        #[arg(long)]
        once: bool,
        /// One JSON object per code: frame, payload_hex, text (when UTF-8), corners
        #[arg(long)]
        json: bool,
    },
    /// Render payload bytes from standard input as a QR code PNG (byte mode, level M)
    Encode {
        /// Where to write the PNG
        #[arg(long, value_name = "FILE.png")]
        out: PathBuf,
    },
}

/// Runs a `qr` subcommand. Exit codes: 0 code(s) found / written, 1 no code
/// found, 2 an unreadable file or other error.
pub(super) fn run(command: QrCommand) -> Result<ExitCode> {
    match command {
        QrCommand::Decode { json, images } => {
            // An unreadable file is an error (exit 2, reported by cli::main)
            // after the codes of the files before it have been printed.
            match decode_files(&images, json, &mut io::stdout().lock())? {
                0 => Ok(ExitCode::from(1)),
                _ => Ok(ExitCode::SUCCESS),
            }
        }
        QrCommand::Scan {
            size,
            format,
            input,
            device,
            frames,
            once,
            json,
        } => {
            let (width, height) = parse_size(&size)?;
            let mut source = open_source(width, height, &format, input, device)?;
            let limits = ScanLimits { frames, once };
            match scan(source.as_mut(), limits, json, &mut io::stdout().lock())? {
                0 => Ok(ExitCode::from(1)),
                _ => Ok(ExitCode::SUCCESS),
            }
        }
        QrCommand::Encode { out } => {
            // A QR code holds at most 2953 bytes; read a little more so that
            // an oversized payload is refused rather than cut.
            let mut payload = Vec::new();
            io::stdin()
                .take(4096)
                .read_to_end(&mut payload)
                .context("reading the payload from standard input")?;
            write_png(&payload, &out)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Renders a payload as a QR code PNG at `out` (byte mode, level M, quiet
/// zone), for `qr encode` and `wallet pay --qr`.
pub(super) fn write_png(payload: &[u8], out: &Path) -> Result<()> {
    qr::write_png(payload, out).with_context(|| format!("writing QR code to {}", out.display()))
}

/// Parses `WIDTHxHEIGHT`.
fn parse_size(size: &str) -> Result<(usize, usize)> {
    let parsed = size
        .split_once(['x', 'X'])
        .and_then(|(w, h)| Some((w.trim().parse().ok()?, h.trim().parse().ok()?)));
    parsed.with_context(|| format!("--size {size:?}: expected WIDTHxHEIGHT, e.g. 1280x720"))
}

/// The frame source a `qr scan` reads: a camera, a raw file, or stdin.
fn open_source(
    width: usize,
    height: usize,
    format: &str,
    input: Option<PathBuf>,
    device: Option<PathBuf>,
) -> Result<Box<dyn FrameSource>> {
    if let Some(device) = device {
        return open_camera(&device, width, height);
    }
    let pixel = PixelFormat::from_name(format)
        .with_context(|| format!("--format {format:?}: expected y8 or yuyv"))?;
    Ok(match input {
        Some(path) => {
            let file = std::fs::File::open(&path)
                .with_context(|| format!("opening raw frames {}", path.display()))?;
            Box::new(RawStreamSource::new(
                io::BufReader::new(file),
                width,
                height,
                pixel,
            )?)
        }
        None => Box::new(RawStreamSource::new(io::stdin(), width, height, pixel)?),
    })
}

#[cfg(all(feature = "v4l2", target_os = "linux", target_pointer_width = "64"))]
fn open_camera(device: &Path, width: usize, height: usize) -> Result<Box<dyn FrameSource>> {
    let camera = qr::v4l2::V4l2Source::open(device, width, height)?;
    let (w, h) = camera.size();
    eprintln!(
        "{}: {w}x{h} {:?} frames",
        device.display(),
        camera.pixel_format()
    );
    Ok(Box::new(camera))
}

#[cfg(not(all(feature = "v4l2", target_os = "linux", target_pointer_width = "64")))]
fn open_camera(device: &Path, _width: usize, _height: usize) -> Result<Box<dyn FrameSource>> {
    anyhow::bail!(
        "cannot open camera {}: this build has no V4L2 support (build with `--features v4l2`, 64-bit Linux), or pipe raw frames to `qr scan --size WxH --format y8|yuyv`",
        device.display()
    )
}

/// When a `qr scan` stops besides the end of the stream.
#[derive(Clone, Copy, Debug, Default)]
struct ScanLimits {
    frames: Option<u64>,
    once: bool,
}

/// Decodes frames until the source ends (or a limit), printing each code
/// the first time it is seen; returns how many codes were printed. A source
/// error (a stream cut inside a frame, a silent camera) ends the scan with
/// that error, after the codes already printed.
fn scan(
    source: &mut dyn FrameSource,
    limits: ScanLimits,
    json: bool,
    out: &mut dyn Write,
) -> Result<usize> {
    let decoder = qr::Decoder::new(qr::DecodeOptions::default());
    let mut seen = std::collections::HashSet::new();
    let mut index = 0u64;
    while limits.frames.is_none_or(|n| index < n) {
        let Some(frame) = source.next_frame()? else {
            break;
        };
        for code in decoder.decode(frame.as_frame()) {
            if seen.insert(code.payload.clone()) {
                let line = format_code(&code, json);
                if json {
                    let mut v: serde_json::Value = serde_json::from_str(&line)?;
                    v["frame"] = json!(index);
                    writeln!(out, "{v}")?;
                } else {
                    writeln!(out, "{line}")?;
                }
                out.flush()?;
                if limits.once {
                    return Ok(seen.len());
                }
            }
        }
        index += 1;
    }
    Ok(seen.len())
}

/// Decodes each image and prints its codes; returns how many were found.
/// Stops at the first unreadable file (after printing earlier results).
fn decode_files(images: &[PathBuf], json: bool, out: &mut dyn Write) -> Result<usize> {
    let mut found = 0;
    for path in images {
        let image = qr::load_image(path)?;
        for code in qr::decode_frame(image.as_frame()) {
            writeln!(out, "{}", format_code(&code, json))?;
            found += 1;
        }
    }
    Ok(found)
}

/// One output line for a code: lowercase hex, or a JSON object.
fn format_code(code: &DecodedCode, json: bool) -> String {
    let hex = hex::encode(&code.payload);
    if !json {
        return hex;
    }
    let corners: Vec<[f64; 2]> = code
        .corners
        .iter()
        .map(|[x, y]| [round1(*x), round1(*y)])
        .collect();
    let mut obj = json!({ "payload_hex": hex, "corners": corners });
    if let Ok(text) = std::str::from_utf8(&code.payload) {
        obj["text"] = json!(text);
    }
    obj.to_string()
}

/// Rounds to 0.1 pixel for readable JSON.
fn round1(v: f32) -> f64 {
    (f64::from(v) * 10.0).round() / 10.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_then_decode_files_prints_hex_and_json() {
        let dir = tempfile::tempdir().unwrap();
        let png = dir.path().join("t.png");
        write_png(b"hello gate", &png).unwrap();
        let mut out = Vec::new();
        assert_eq!(
            decode_files(std::slice::from_ref(&png), false, &mut out).unwrap(),
            1
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            format!("{}\n", hex::encode("hello gate"))
        );

        let mut out = Vec::new();
        decode_files(&[png], true, &mut out).unwrap();
        let line: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(line["text"], "hello gate");
        assert_eq!(line["payload_hex"], hex::encode("hello gate"));
        assert_eq!(line["corners"].as_array().unwrap().len(), 4);
    }

    #[test]
    fn binary_payload_has_no_text_and_blank_image_finds_nothing() {
        let code = DecodedCode {
            payload: vec![0xff, 0xfe],
            corners: [[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]],
            strategy: "test",
        };
        let v: serde_json::Value = serde_json::from_str(&format_code(&code, true)).unwrap();
        assert!(v.get("text").is_none());
        assert_eq!(v["payload_hex"], "fffe");

        let dir = tempfile::tempdir().unwrap();
        let blank = dir.path().join("blank.png");
        let img = qr::GreyImage::filled(64, 64, 255).unwrap();
        std::fs::write(&blank, qr::encode::png_bytes(&img).unwrap()).unwrap();
        assert_eq!(decode_files(&[blank], false, &mut Vec::new()).unwrap(), 0);
    }

    /// `frames` raw Y8 frames of 400x300: blank, then the code, then blank.
    fn raw_frames(payload: &[u8]) -> Vec<u8> {
        let code = qr::render_token(payload, 4, 4).unwrap();
        let mut with_code = vec![255u8; 400 * 300];
        for y in 0..code.height() {
            for x in 0..code.width() {
                with_code[(y + 10) * 400 + x + 60] = code.get(x, y).unwrap();
            }
        }
        let blank = vec![255u8; 400 * 300];
        [blank.clone(), with_code.clone(), with_code, blank].concat()
    }

    #[test]
    fn scan_prints_each_code_once_with_its_frame() {
        let bytes = raw_frames(b"gate 7");
        let mut src =
            RawStreamSource::new(io::Cursor::new(bytes.clone()), 400, 300, PixelFormat::Y8)
                .unwrap();
        let mut out = Vec::new();
        assert_eq!(
            scan(&mut src, ScanLimits::default(), true, &mut out).unwrap(),
            1
        );
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            (v["frame"].as_u64(), v["text"].as_str()),
            (Some(1), Some("gate 7"))
        );

        // Stopping after the first frame finds nothing.
        let mut src =
            RawStreamSource::new(io::Cursor::new(bytes), 400, 300, PixelFormat::Y8).unwrap();
        let limits = ScanLimits {
            frames: Some(1),
            once: false,
        };
        assert_eq!(scan(&mut src, limits, false, &mut Vec::new()).unwrap(), 0);
    }

    #[test]
    fn scan_reports_a_cut_stream_after_the_codes_before_it() {
        let mut bytes = raw_frames(b"cut");
        bytes.truncate(400 * 300 * 3 + 10);
        let mut src =
            RawStreamSource::new(io::Cursor::new(bytes), 400, 300, PixelFormat::Y8).unwrap();
        let mut out = Vec::new();
        let e = scan(&mut src, ScanLimits::default(), false, &mut out).unwrap_err();
        assert!(e.to_string().contains("inside frame 3"), "{e}");
        assert_eq!(
            String::from_utf8(out).unwrap(),
            format!("{}\n", hex::encode("cut"))
        );
    }

    #[test]
    fn sizes_parse_and_bad_ones_are_explained() {
        assert_eq!(parse_size("1280x720").unwrap(), (1280, 720));
        assert_eq!(parse_size("640X480").unwrap(), (640, 480));
        let e = parse_size("big").unwrap_err().to_string();
        assert!(e.contains("WIDTHxHEIGHT"), "{e}");
        let e = open_source(2, 2, "rgb", None, None)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("y8 or yuyv"), "{e}");
    }

    #[test]
    fn unreadable_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("bad.png");
        std::fs::write(&bad, b"not an image").unwrap();
        let e = decode_files(&[bad], false, &mut Vec::new()).unwrap_err();
        assert!(e.to_string().contains("bad.png"), "{e}");
        let missing = dir.path().join("missing.png");
        assert!(decode_files(&[missing], false, &mut Vec::new()).is_err());
    }
}
