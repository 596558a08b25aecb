//! The rate-1/2, constraint-length-7 convolutional code of IEEE 802.11a
//! (generators 133 and 171 octal), terminated with six zero tail bits, and
//! its soft-decision Viterbi decoder: the beacon's code (docs/modem.md §7).
//!
//! A short block wants a short code: the LDPC codes of the payment formats
//! have 1944-bit codewords, and a 21-byte beacon shortened into one would
//! send 972 parity bits for 168 information bits. The Viterbi decoder is
//! maximum-likelihood over the whole block and uses every soft decision.
//!
//! Bit convention: LLR > 0 means the bit is more likely 0.

/// Constraint length: each output depends on the input bit and six before it.
pub(crate) const CONSTRAINT: usize = 7;
/// Zero bits appended to return the encoder to state 0.
pub(crate) const TAIL: usize = CONSTRAINT - 1;
/// Encoder states (the last six input bits).
const STATES: usize = 1 << TAIL;
/// Generator taps on bits i, i−1, …, i−6 (bit 6 of the mask is bit i):
/// 133 octal = 1011011, 171 octal = 1111001.
const G0: u32 = 0o133;
const G1: u32 = 0o171;

/// The two code bits for input bit `bit` after the six earlier bits `state`
/// (bit 5 of `state` is the previous input bit, bit 0 the oldest).
fn outputs(state: usize, bit: u8) -> (u8, u8) {
    let window = (u32::from(bit & 1) << TAIL) | state as u32;
    (
        ((window & G0).count_ones() & 1) as u8,
        ((window & G1).count_ones() & 1) as u8,
    )
}

/// The state after input bit `bit`.
fn next(state: usize, bit: u8) -> usize {
    (usize::from(bit & 1) << (TAIL - 1)) | (state >> 1)
}

/// Code bits sent for `info` information bits: two per bit and tail bit.
pub(crate) fn coded_len(info: usize) -> usize {
    2 * (info + TAIL)
}

/// Encodes `info` (bits 0/1) followed by the six tail zeros: bits
/// `c[2i] = b_i ⊕ b_{i−2} ⊕ b_{i−3} ⊕ b_{i−5} ⊕ b_{i−6}` and
/// `c[2i+1] = b_i ⊕ b_{i−1} ⊕ b_{i−2} ⊕ b_{i−3} ⊕ b_{i−6}`, with
/// `b_{<0} = 0`.
pub(crate) fn encode(info: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(coded_len(info.len()));
    let mut state = 0;
    for &bit in info.iter().chain(&[0u8; TAIL]) {
        let (a, b) = outputs(state, bit);
        out.push(a);
        out.push(b);
        state = next(state, bit);
    }
    out
}

/// The most likely information bits (without the tail) given the LLRs of
/// the code bits, `coded_len(info)` of them; None if the LLRs do not have
/// that length. The path must start and end in state 0 (the tail).
pub(crate) fn decode(llr: &[f32], info: usize) -> Option<Vec<u8>> {
    if llr.len() != coded_len(info) {
        return None;
    }
    let steps = info + TAIL;
    // Path metrics: log-likelihood up to a constant; unreachable states −∞.
    let mut metric = vec![f32::NEG_INFINITY; STATES];
    metric[0] = 0.0;
    let mut fresh = vec![f32::NEG_INFINITY; STATES];
    // The decision per step and state: which predecessor won (its low bit).
    let mut decisions = vec![0u64; steps];
    let table: Vec<[(u8, u8); 2]> = (0..STATES)
        .map(|s| [outputs(s, 0), outputs(s, 1)])
        .collect();
    for (step, pair) in llr.chunks_exact(2).enumerate() {
        let (l0, l1) = (clean(pair[0]), clean(pair[1]));
        let tail = step >= info;
        fresh.iter_mut().for_each(|m| *m = f32::NEG_INFINITY);
        let mut chosen = 0u64;
        for (to, slot) in fresh.iter_mut().enumerate() {
            let bit = (to >> (TAIL - 1)) as u8;
            if tail && bit == 1 {
                continue;
            }
            // The two predecessors differ in their oldest bit.
            let base = (to << 1) & (STATES - 1);
            let mut best = f32::NEG_INFINITY;
            let mut from_low = 0u64;
            for low in 0..2usize {
                let from = base | low;
                let m = metric[from];
                if m == f32::NEG_INFINITY {
                    continue;
                }
                let (a, b) = table[from][usize::from(bit)];
                let branch = 0.5 * (sign(a) * l0 + sign(b) * l1);
                if m + branch > best {
                    best = m + branch;
                    from_low = low as u64;
                }
            }
            *slot = best;
            chosen |= from_low << to;
        }
        decisions[step] = chosen;
        std::mem::swap(&mut metric, &mut fresh);
    }
    if metric[0] == f32::NEG_INFINITY {
        return None;
    }
    let mut bits = vec![0u8; steps];
    let mut state = 0usize;
    for step in (0..steps).rev() {
        bits[step] = (state >> (TAIL - 1)) as u8;
        let low = ((decisions[step] >> state) & 1) as usize;
        state = ((state << 1) & (STATES - 1)) | low;
    }
    bits.truncate(info);
    Some(bits)
}

/// +1 for a 0 bit, −1 for a 1 bit.
fn sign(bit: u8) -> f32 {
    if bit == 0 { 1.0 } else { -1.0 }
}

/// A finite LLR (NaN and infinities say nothing / the most).
fn clean(llr: f32) -> f32 {
    if llr.is_nan() {
        0.0
    } else {
        llr.clamp(-1e6, 1e6)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{RngExt, SeedableRng};
    use rand_distr::StandardNormal;
    use rand_pcg::Pcg64Mcg;

    #[test]
    fn the_encoder_follows_the_generators_and_ends_in_state_zero() {
        // A single 1 gives the impulse response: the generators' taps, read
        // from the newest bit to the oldest.
        let coded = encode(&[1]);
        let first: Vec<u8> = coded.iter().step_by(2).copied().collect();
        let second: Vec<u8> = coded.iter().skip(1).step_by(2).copied().collect();
        assert_eq!(first, [1, 0, 1, 1, 0, 1, 1]);
        assert_eq!(second, [1, 1, 1, 1, 0, 0, 1]);
        assert_eq!(encode(&[0; 10]), vec![0; coded_len(10)]);
    }

    #[test]
    fn clean_and_noisy_llrs_decode_to_the_bits_sent() {
        let mut rng = Pcg64Mcg::seed_from_u64(3);
        for info in [1usize, 8, 40, 168, 288] {
            let bits: Vec<u8> = (0..info).map(|_| rng.random_range(0..2u8)).collect();
            let coded = encode(&bits);
            let clean: Vec<f32> = coded.iter().map(|&b| sign(b) * 4.0).collect();
            assert_eq!(decode(&clean, info).as_deref(), Some(&bits[..]));
            // BPSK at Eb/N0 5 dB (rate 1/2): about 1 % of the code bits come
            // in wrong, and the code corrects them all.
            let sigma = (1.0f32 / (2.0 * 0.5 * 10f32.powf(0.5))).sqrt();
            let noisy: Vec<f32> = coded
                .iter()
                .map(|&b| {
                    let n: f32 = rng.sample(StandardNormal);
                    2.0 * (sign(b) + sigma * n) / (sigma * sigma)
                })
                .collect();
            assert_eq!(decode(&noisy, info).as_deref(), Some(&bits[..]), "{info}");
        }
    }

    #[test]
    fn wrong_lengths_and_nonsense_llrs_give_none_or_bits_never_a_panic() {
        assert_eq!(decode(&[1.0; 5], 1), None);
        assert_eq!(decode(&[0.0; 12], 0), Some(vec![]));
        let odd = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 1e38, -1e38, 0.0];
        let llr: Vec<f32> = odd.iter().cycle().take(coded_len(20)).copied().collect();
        assert_eq!(decode(&llr, 20).map(|b| b.len()), Some(20));
    }
}
