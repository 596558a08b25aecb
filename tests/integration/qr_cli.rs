//! The QR path through the real binary: render, read back, pay, accept, and
//! bad images refused with a clear error.

use std::fs;

use crate::util::{Scratch, last_json};

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
    s.ok(&[
        "wallet", "pay", "--dir", "w", "--amount", "180", "--out", "t.bin", "--qr", "t.png",
    ]);
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
