//! Digital silence, found fast: the padding that flushes a stream's end and
//! a muted microphone are exact zeros, and the decoder skips their FFTs and
//! filter taps. The scans fold whole chunks without branching so that the
//! compiler vectorises them; a sample is signal exactly when `x != 0.0`
//! (NaN included).

/// Samples folded per step (a few vector registers' worth).
const CHUNK: usize = 64;

/// The sample's bits without its sign: zero exactly for +0.0 and -0.0.
fn magnitude_bits(x: f32) -> u32 {
    x.to_bits() << 1
}

/// Index just past the last sample that is not zero; 0 if every one is.
pub(crate) fn signal_end(samples: &[f32]) -> usize {
    let mut end = samples.len();
    for chunk in samples.rchunks(CHUNK) {
        if chunk.iter().fold(0, |acc, &x| acc | magnitude_bits(x)) != 0 {
            let last = chunk.iter().rposition(|&x| magnitude_bits(x) != 0);
            return end - chunk.len() + last.map_or(0, |i| i + 1);
        }
        end -= chunk.len();
    }
    0
}

/// Whether every sample is zero (of either sign).
pub(crate) fn is_silent(samples: &[f32]) -> bool {
    signal_end(samples) == 0
}

/// The first score at or above `threshold`, if any.
pub(crate) fn first_at_least(scores: &[f32], threshold: f32) -> Option<usize> {
    let mut start = 0;
    for chunk in scores.chunks(CHUNK) {
        if chunk.iter().fold(false, |any, &s| any | (s >= threshold)) {
            return chunk
                .iter()
                .position(|&s| s >= threshold)
                .map(|i| start + i);
        }
        start += chunk.len();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scans_agree_with_reading_sample_by_sample() {
        for len in [0, 1, 63, 64, 65, 200] {
            for at in 0..len {
                for value in [1e-30, -0.5, f32::NAN, f32::INFINITY] {
                    let mut x = vec![0.0f32; len];
                    x[len - 1 - at] = -0.0;
                    x[at] = value;
                    let want = x.iter().rposition(|&v| v != 0.0).map_or(0, |i| i + 1);
                    assert_eq!(signal_end(&x), want, "len {len} at {at} value {value}");
                    assert!(!is_silent(&x));
                    let first = x.iter().position(|&s| s >= 1e-31);
                    assert_eq!(first_at_least(&x, 1e-31), first, "len {len} at {at}");
                }
            }
            let zeros = vec![-0.0f32; len];
            assert!(is_silent(&zeros) && first_at_least(&zeros, 0.5).is_none());
        }
    }
}
