//! The QR path through the real binary: render, read back, pay, accept, and
//! bad images refused with a clear error.

use std::fs;

use crate::util::{Scratch, last_json, qr_regression_frame};

#[test]
fn encode_then_decode_gives_payload_text_and_corners() {
    let s = Scratch::new();
    let written = s.run_with_stdin(&["qr", "encode", "--out", "hello.png"], b"hello, gate");
    assert!(written.status.success());
    let out = s.run(&["qr", "decode", "--json", "hello.png"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json = last_json(&out);
    assert_eq!(json["payload_hex"], hex::encode(b"hello, gate"));
    assert_eq!(json["text"], "hello, gate");
    let corners = json["corners"].as_array().expect("corners");
    assert_eq!(corners.len(), 4);
    assert!(
        corners
            .iter()
            .all(|c| c.as_array().is_some_and(|xy| xy.len() == 2))
    );
}

#[test]
fn a_token_shown_as_a_qr_code_is_accepted_by_the_reader() {
    let s = Scratch::new();
    s.provision(None);
    s.wallet_pay(180, "t.bin", &["--qr", "t.png"]);
    let out = s.run(&["qr", "decode", "t.png"]);
    assert_eq!(out.status.code(), Some(0));
    let line = String::from_utf8_lossy(&out.stdout).trim().to_string();
    s.assert_reader_accepts(&line, "t.bin", 180);
}

#[test]
fn bad_images_are_refused_clearly() {
    let s = Scratch::new();
    fs::write(s.path("empty.png"), b"").expect("write");
    fs::write(s.path("notes.png"), "not an image at all").expect("write");
    // A PNG header claiming 20000 x 20000 pixels, and nothing after it.
    let mut huge = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec();
    huge.extend_from_slice(&20_000u32.to_be_bytes());
    huge.extend_from_slice(&20_000u32.to_be_bytes());
    huge.extend_from_slice(&[8, 0, 0, 0, 0, 0, 0, 0, 0]);
    fs::write(s.path("huge.png"), &huge).expect("write");
    for file in ["empty.png", "notes.png", "huge.png", "missing.png"] {
        let out = s.run(&["qr", "decode", file]);
        assert_eq!(out.status.code(), Some(2), "{file}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(file), "{file}: {stderr}");
        assert!(!stderr.contains("panicked"), "{file}: {stderr}");
    }
    // A real picture with no code in it: exit 1, nothing printed.
    let blank = image::GrayImage::from_pixel(640, 480, image::Luma([200]));
    blank.save(s.path("blank.png")).expect("save");
    let out = s.run(&["qr", "decode", "blank.png"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
}

/// Raw frames as a camera tool would pipe them: `frames` of 480x360 luma,
/// the code (4 px modules, on white) in all but the first.
fn luma_frames(payload: &[u8], frames: usize) -> Vec<Vec<u8>> {
    let code = sonotap_qr::render_token(payload, 4, 4).expect("render");
    let (w, h) = (480, 360);
    let mut with_code = vec![250u8; w * h];
    for y in 0..code.height() {
        for x in 0..code.width() {
            with_code[(y + 40) * w + x + 100] = code.get(x, y).expect("pixel");
        }
    }
    let mut out = vec![vec![250u8; w * h]];
    out.extend(std::iter::repeat_n(with_code, frames - 1));
    out
}

#[test]
fn raw_y8_and_yuyv_frames_on_stdin_are_read_once_each_code() {
    let s = Scratch::new();
    let payload: Vec<u8> = (0..199u32).map(|i| (i * 73 + 5) as u8).collect();
    let frames = luma_frames(&payload, 3);

    let y8: Vec<u8> = frames.concat();
    let out = s.run_with_stdin(&["qr", "scan", "--size", "480x360", "--json"], &y8);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    let json = last_json(&out);
    assert_eq!(json["payload_hex"], hex::encode(&payload));
    assert_eq!(json["frame"], 1);
    assert!(json.get("text").is_none());

    // The same frames as YUYV (Y0 U Y1 V), as most USB cameras send them.
    let yuyv: Vec<u8> = y8.iter().flat_map(|&y| [y, 128]).collect();
    let out = s.run_with_stdin(
        &["qr", "scan", "--size", "480x360", "--format", "yuyv"],
        &yuyv,
    );
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        hex::encode(&payload)
    );
}

#[test]
fn raw_streams_without_a_code_or_cut_short_say_so() {
    let s = Scratch::new();
    // Only the blank first frame: no code, exit 1.
    let blank = luma_frames(b"x", 2).swap_remove(0);
    let out = s.run_with_stdin(&["qr", "scan", "--size", "480x360"], &blank);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    // A stream cut inside its second frame: exit 2, the frame named.
    let mut cut = luma_frames(b"x", 2).concat();
    cut.truncate(480 * 360 + 1000);
    let out = s.run_with_stdin(&["qr", "scan", "--size", "480x360"], &cut);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("inside frame 1"), "{stderr}");
    // A camera in a build without V4L2 support, or a size that is no size.
    let out = s.run(&["qr", "scan", "--size", "wide"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("WIDTHxHEIGHT"));
}

/// A picture on which rqrr panics (the frame fuzzing found), given five
/// times: no code (exit 1), and one line on standard error saying the
/// panic was caught, not a panic message for each.
#[test]
fn issue21_an_image_the_qr_library_panics_on_reads_as_no_code_said_once() {
    let s = Scratch::new();
    let (w, h, pixels) = qr_regression_frame("rqrr-perspective-maps-past-i32");
    let image =
        image::GrayImage::from_raw(u32::from(w), u32::from(h), pixels).expect("a grey image");
    image.save(s.path("hostile.png")).expect("save");
    let out = s.run(&[
        "qr",
        "decode",
        "hostile.png",
        "hostile.png",
        "hostile.png",
        "hostile.png",
        "hostile.png",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(out.stdout.is_empty());
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("the QR library (rqrr) panicked at") && stderr.contains("caught"),
        "{stderr}"
    );
}
