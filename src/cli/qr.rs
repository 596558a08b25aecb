//! `sonotap qr …`: read tokens from images and render tokens as QR codes.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Subcommand;
use serde_json::json;

use crate::qr::{self, DecodedCode};

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
