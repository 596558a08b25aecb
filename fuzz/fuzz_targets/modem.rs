//! The acoustic modem's decoder on arbitrary PCM (16-bit little-endian at
//! 48 kHz, the first byte choosing how it is cut into pushes): frames or
//! nothing, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sonotap_modem::Decoder;

fuzz_target!(|data: &[u8]| {
    let Some((&cut, pcm)) = data.split_first() else {
        return;
    };
    let samples: Vec<f32> = pcm
        .chunks_exact(2)
        .map(|b| f32::from(i16::from_le_bytes([b[0], b[1]])) / 32768.0)
        .collect();
    let mut decoder = Decoder::new(48_000).expect("48 kHz is supported");
    for chunk in samples.chunks(usize::from(cut).max(1) * 64) {
        let _ = decoder.push(chunk);
    }
    let _ = decoder.finish();
});
