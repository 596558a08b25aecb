//! The pipeline's tests: reads through [`Decoder::decode`] and the
//! located-code stages on generated frames, and the stage table.

use super::located::{GATE_GROUPS, LOCATE_SIDE, Search, locate_codes, search_factor};
use super::sampled::{Sampling, read_deblurred, sample_spots};
use super::*;
use crate::encode::render_token;
use crate::prepare::invert;
use crate::sample;

/// A decoder that never runs out of time: read assertions must not
/// depend on how loaded the test machine is (speed is the benchmark's).
fn unhurried(find_all: bool) -> Decoder {
    Decoder::new(DecodeOptions {
        budget: Duration::from_secs(600),
        find_all,
        ..DecodeOptions::default()
    })
}

fn payload(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// Pastes a rendered code into a larger grey frame at (x0, y0).
fn place(code: &GreyImage, w: usize, h: usize, x0: usize, y0: usize, bg: u8) -> GreyImage {
    let mut data = vec![bg; w * h];
    for y in 0..code.height() {
        for x in 0..code.width() {
            data[(y0 + y) * w + x0 + x] = code.get(x, y).unwrap();
        }
    }
    GreyImage::new(w, h, data).unwrap()
}

#[test]
fn reads_a_clean_binary_token_with_corners_in_frame_pixels() {
    let p = payload(199, 7);
    let code = render_token(&p, 5, 4).unwrap();
    let frame = place(&code, 1280, 720, 300, 100, 255);
    let got = unhurried(false).decode(frame.as_frame());
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].payload, p);
    // Code area (without quiet zone) starts at 300 + 4*5 = 320.
    let [tl, _, br, _] = got[0].corners;
    let size = (code.width() - 40) as f32;
    assert!(
        (tl[0] - 320.0).abs() < 8.0 && (tl[1] - 120.0).abs() < 8.0,
        "{tl:?}"
    );
    assert!((br[0] - (320.0 + size)).abs() < 8.0, "{br:?}");
    let [cx, cy] = got[0].centre();
    let mid = size / 2.0;
    assert!((cx - 320.0 - mid).abs() < 8.0 && (cy - 120.0 - mid).abs() < 8.0);
}

#[test]
fn a_located_code_is_read_by_sampling_first() {
    // Upright and dark mode: the sampler reads both before rqrr's
    // detector runs, with corners where the code is.
    for inverted in [false, true] {
        let p = payload(199, 11);
        let mut code = render_token(&p, 6, 4).unwrap();
        if inverted {
            invert(&mut code);
        }
        let bg = if inverted { 0 } else { 255 };
        let frame = place(&code, 1280, 720, 400, 200, bg);
        let got = unhurried(false).decode(frame.as_frame());
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].payload, p);
        let want = if inverted {
            "sampled-inverted"
        } else {
            "sampled"
        };
        assert_eq!(got[0].strategy, want);
        let [tl, _, br, _] = got[0].corners;
        let side = 57.0 * 6.0;
        assert!(
            (tl[0] - 424.0).abs() < 3.0 && (tl[1] - 224.0).abs() < 3.0,
            "{tl:?}"
        );
        assert!(
            (br[0] - 424.0 - side).abs() < 3.0 && (br[1] - 224.0 - side).abs() < 3.0,
            "{br:?}"
        );
    }
}

#[test]
fn reads_an_inverted_code() {
    let p = payload(199, 9);
    let mut code = render_token(&p, 4, 4).unwrap();
    invert(&mut code);
    let frame = place(&code, 640, 480, 100, 100, 0);
    let got = unhurried(false).decode(frame.as_frame());
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].payload, p);
    assert!(got[0].strategy.contains("inverted"));
}

#[test]
fn returns_every_code_once() {
    let a = payload(199, 1);
    let b = payload(120, 2);
    let ca = render_token(&a, 4, 4).unwrap();
    let cb = render_token(&b, 4, 4).unwrap();
    let mut frame = place(&ca, 1280, 720, 20, 20, 255);
    for y in 0..cb.height() {
        for x in 0..cb.width() {
            let i = (300 + y) * 1280 + 700 + x;
            frame.data_mut()[i] = cb.get(x, y).unwrap();
        }
    }
    let got = unhurried(true).decode(frame.as_frame());
    let mut payloads: Vec<_> = got.iter().map(|c| c.payload.clone()).collect();
    payloads.sort();
    let mut want = vec![a, b];
    want.sort();
    assert_eq!(payloads, want);
}

#[test]
fn empty_and_noise_frames_give_nothing() {
    let blank = GreyImage::filled(1920, 1080, 200).unwrap();
    assert!(decode_frame(blank.as_frame()).is_empty());
    let mut state = 12345u32;
    let noise: Vec<u8> = (0..1920 * 1080)
        .map(|_| {
            state = state.wrapping_mul(1_103_515_245).wrapping_add(12345);
            (state >> 24) as u8
        })
        .collect();
    let noise = GreyImage::new(1920, 1080, noise).unwrap();
    assert!(decode_frame(noise.as_frame()).is_empty());
    // How long they take is the benchmark's (`no-code` rows), not a
    // timed test's.
}

/// A code of `px` pixels per module turned by `deg` degrees about its
/// centre (nearest module, 4×4 supersampled), centred in a `w`×`h`
/// frame of grey 140: light modules 225, dark 35.
fn turned(p: &[u8], px: f64, deg: f64, w: usize, h: usize) -> GreyImage {
    let m = crate::encode::modules(p).unwrap();
    let n = m.size as f64;
    let (c, s) = (deg.to_radians().cos(), deg.to_radians().sin());
    let mut data = vec![140u8; w * h];
    for y in 0..h {
        for x in 0..w {
            let mut acc = 0u32;
            for k in 0..16 {
                let fx = x as f64 + (k % 4) as f64 / 4.0 - 0.375 - w as f64 / 2.0;
                let fy = y as f64 + (k / 4) as f64 / 4.0 - 0.375 - h as f64 / 2.0;
                let u = (c * fx + s * fy) / px + n / 2.0;
                let v = (-s * fx + c * fy) / px + n / 2.0;
                acc += if u < -4.0 || v < -4.0 || u >= n + 4.0 || v >= n + 4.0 {
                    140
                } else if m.is_dark(u.floor() as isize, v.floor() as isize) {
                    35
                } else {
                    225
                };
            }
            data[y * w + x] = (acc / 16) as u8;
        }
    }
    GreyImage::new(w, h, data).unwrap()
}

/// Payloads read by sampling the codes `spots` holds.
fn sampled(frame: GreyFrame<'_>, spots: &mut [Spot]) -> Vec<Vec<u8>> {
    let mut progress = Progress::new(Duration::from_secs(600), true);
    for from in [Sampling::Frame, Sampling::MaskedCrop] {
        let _ = sample_spots(frame, spots, from, &mut progress);
    }
    progress.codes.into_iter().map(|c| c.payload).collect()
}

#[test]
fn the_rescue_search_finds_the_finders_of_a_defocused_code() {
    // 4.5 px modules turned by 33 degrees, then defocused (two 7×7 box
    // passes, a blur of about 2.8 px): the one-module light ring of
    // each finder closes up and the plain search finds no code; the
    // rescue search's shrunk, unsharp-masked copy shows the three
    // finders where they are.
    let p = payload(199, 21);
    let sharp = turned(&p, 4.5, 33.0, 1280, 720);
    let frame = prepare::box_blur(&prepare::box_blur(&sharp, 3), 3);
    let factor = search_factor(frame.as_frame(), LOCATE_SIDE);
    assert!(locate_codes(frame.as_frame(), factor, Search::Plain, GATE_GROUPS).is_empty());
    let rescued = locate_codes(
        frame.as_frame(),
        factor.max(2),
        Search::Deblurred,
        GATE_GROUPS,
    );
    assert_eq!(rescued.len(), 1);
    // Finder centres 25 modules from the code's centre (version 10,
    // 57 modules) at 45 degrees off the code's axes, turned by 33.
    let (c, s) = (33f64.to_radians().cos(), 33f64.to_radians().sin());
    let truth = [(-25.0, -25.0), (25.0, -25.0), (-25.0, 25.0)].map(|(u, v)| {
        [
            640.0 + 4.5 * (c * u - s * v) - 0.5,
            360.0 + 4.5 * (s * u + c * v) - 0.5,
        ]
    });
    for [x, y] in rescued[0].finders {
        let near = truth.iter().any(|t| (t[0] - x).hypot(t[1] - y) < 1.5 * 4.5);
        assert!(near, "{x} {y} not at a finder: {truth:?}");
    }
}

#[test]
fn a_defocused_code_is_read_from_an_unsharp_masked_crop() {
    // 4 px modules, the corpus generator's focus blur (two 5×5 box
    // passes): located, but isolated modules keep too little contrast
    // to threshold when sampled from the frame; the masked crop reads.
    let p = payload(199, 24);
    let sharp = turned(&p, 4.0, 33.0, 1280, 720);
    let frame = prepare::box_blur(&prepare::box_blur(&sharp, 2), 2);
    let factor = search_factor(frame.as_frame(), LOCATE_SIDE);
    let spots = locate_codes(frame.as_frame(), factor, Search::Plain, GATE_GROUPS);
    assert_eq!(spots.len(), 1);
    let [corner, a, b] = spots[0].finders;
    let f = frame.as_frame();
    assert!(sample::read_located(f, corner, a, b, spots[0].module, false, None).is_none());
    let read = read_deblurred(f, &spots[0]).map(|s| s.payload);
    assert_eq!(read, Some(p.clone()));
    let got = unhurried(false).decode(f);
    assert_eq!(
        got.first().map(|c| (c.payload.clone(), c.strategy)),
        Some((p, "deblurred"))
    );
}

#[test]
fn the_rescue_search_finds_a_code_under_a_checkerboard_moire() {
    // A VGA frame, 3 px modules, the light areas of the screen broken
    // into a one-pixel checkerboard (a screen's pixel grid point-sampled
    // by the camera): the plain search, at full size, sees runs of one
    // pixel; the rescue search's copy, shrunk by 2, averages them out.
    let p = payload(199, 22);
    let mut frame = turned(&p, 3.0, 12.0, 640, 480);
    for (i, px) in frame.data_mut().iter_mut().enumerate() {
        let (x, y) = (i % 640, i / 640);
        if *px > 150 && (x + y) % 2 == 0 {
            *px = 90;
        }
    }
    let factor = search_factor(frame.as_frame(), LOCATE_SIDE);
    assert_eq!(factor, 1);
    let mut plain = locate_codes(frame.as_frame(), factor, Search::Plain, GATE_GROUPS);
    assert!(sampled(frame.as_frame(), &mut plain).is_empty());
    let mut rescued = locate_codes(frame.as_frame(), 2, Search::Deblurred, GATE_GROUPS);
    assert_eq!(sampled(frame.as_frame(), &mut rescued), vec![p.clone()]);
    let got = unhurried(false).decode(frame.as_frame());
    assert_eq!(got.first().map(|c| c.payload.clone()), Some(p));
}

#[test]
fn groups_of_modules_under_the_floor_are_dropped() {
    // A clean code at 1.2 px per module: found as finders by the run
    // scan at most, never handed to the sampler or rqrr.
    let p = payload(40, 23);
    let code = render_token(&p, 1, 4).unwrap();
    let frame = place(&code, 320, 240, 100, 80, 255);
    for search in [Search::Plain, Search::Deblurred] {
        assert!(locate_codes(frame.as_frame(), 1, search, GATE_GROUPS).is_empty());
    }
    // The same code at 3 px per module is located.
    let code = render_token(&p, 3, 4).unwrap();
    let frame = place(&code, 320, 240, 60, 40, 255);
    assert!(!locate_codes(frame.as_frame(), 1, Search::Plain, GATE_GROUPS).is_empty());
}

#[test]
fn placement_maps_back_to_source_pixels() {
    let p = Placement {
        scale: 2.0,
        dx: 10.0,
        dy: 20.0,
    };
    assert_eq!(p.map([0.0, 0.0]), [10.5, 20.5]);
}

#[test]
fn every_stage_has_a_name_of_its_own() {
    let names: HashSet<&str> = STAGES.iter().map(|s| s.name).collect();
    assert_eq!(names.len(), STAGES.len());
}

#[test]
fn the_stages_run_in_the_order_docs_qr_md_lists_them() {
    // The table under "### Stages": `| 1 | `sampled` | ...`.
    let doc = include_str!("../../../../docs/qr.md");
    let section = doc
        .split("\n### Stages\n")
        .nth(1)
        .and_then(|rest| rest.split("\n#").next())
        .expect("docs/qr.md has a Stages section");
    let listed: Vec<&str> = section
        .lines()
        .filter_map(|line| {
            let mut cells = line.split('|').map(str::trim).skip(1);
            cells.next()?.parse::<usize>().ok()?;
            cells.next().map(|name| name.trim_matches('`'))
        })
        .collect();
    let table: Vec<&str> = STAGES.iter().map(|s| s.name).collect();
    assert_eq!(listed, table);
}

/// Fuzzing found a raw frame (50×58, `fuzz/regressions/qr/`) whose
/// regions stage hands rqrr a grid with a degenerate perspective: rqrr's
/// `Perspective::map` asserts the point fits an `i32` and panics. The
/// decoder catches rqrr's panics, so the frame reads as no code, every
/// stage run (no budget to end it early).
#[test]
fn rqrr_perspective_maps_past_i32() {
    let input = include_bytes!("../../../../fuzz/regressions/qr/rqrr-perspective-maps-past-i32");
    let [w, h, pixels @ ..] = &input[..] else {
        panic!("the regression input holds a frame");
    };
    let (w, h) = (usize::from(*w), usize::from(*h));
    let frame = GreyFrame::new(w, h, &pixels[..w * h]).unwrap();
    assert!(unhurried(true).decode(frame).is_empty());
}
