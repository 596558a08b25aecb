//! The acoustic modem's decoder on arbitrary PCM (16-bit little-endian at
//! 48 kHz; the first byte chooses the profiles listened for and how the
//! samples are cut into pushes): frames or nothing, never a panic.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use sonotap_modem::{Decoder, Profile};

/// Built once (every profile, fast only, robust only) and cloned per input:
/// building a decoder costs far more than decoding a short input.
static TEMPLATES: OnceLock<[Decoder; 3]> = OnceLock::new();

fn templates() -> &'static [Decoder; 3] {
    TEMPLATES.get_or_init(|| {
        let with = |profiles: &[Profile]| {
            Decoder::with_profiles(48_000, profiles).expect("48 kHz holds every profile")
        };
        [with(&Profile::ALL), with(&[Profile::Fast]), with(&[Profile::Robust])]
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&choice, pcm)) = data.split_first() else {
        return;
    };
    let samples: Vec<f32> = pcm
        .chunks_exact(2)
        .map(|b| f32::from(i16::from_le_bytes([b[0], b[1]])) / 32768.0)
        .collect();
    let mut decoder = templates()[usize::from(choice % 3)].clone();
    for chunk in samples.chunks(usize::from(choice / 3).max(1) * 64) {
        let _ = decoder.push(chunk);
    }
    let _ = decoder.finish();
});
