//! The IEEE 802.11n (802.11-2012 Annex F) rate-1/2 LDPC code with 1944-bit
//! codewords (Z = 81): the fast profile's forward error correction from
//! format version 2 on (docs/modem.md §3b).
//!
//! A standard code rather than one of our own: its parity-check matrix is a
//! published 12 × 24 table of cyclic shifts, its dual-diagonal parity part
//! makes encoding a few XORs per bit, and belief propagation on it decodes
//! within about 2 dB of capacity — the soft decisions a Reed–Solomon code on
//! bytes cannot use.
//!
//! Bit convention: LLR > 0 means the bit is more likely 0.

/// Lifting size: each base-matrix entry is a Z × Z cyclic permutation.
pub(crate) const Z: usize = 81;
/// Information bits per codeword.
pub(crate) const K: usize = 12 * Z;
/// Bits per codeword.
pub(crate) const N: usize = 24 * Z;

/// Base matrix: -1 is a zero block, s ≥ 0 the identity shifted by s (block
/// row r has its 1 in column (r + s) mod Z).
const BASE: [[i8; 24]; 12] = [
    [
        57, -1, -1, -1, 50, -1, 11, -1, 50, -1, 79, -1, 1, 0, -1, -1, -1, -1, -1, -1, -1, -1, -1,
        -1,
    ],
    [
        3, -1, 28, -1, 0, -1, -1, -1, 55, 7, -1, -1, -1, 0, 0, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    ],
    [
        30, -1, -1, -1, 24, 37, -1, -1, 56, 14, -1, -1, -1, -1, 0, 0, -1, -1, -1, -1, -1, -1, -1,
        -1,
    ],
    [
        62, 53, -1, -1, 53, -1, -1, 3, 35, -1, -1, -1, -1, -1, -1, 0, 0, -1, -1, -1, -1, -1, -1, -1,
    ],
    [
        40, -1, -1, 20, 66, -1, -1, 22, 28, -1, -1, -1, -1, -1, -1, -1, 0, 0, -1, -1, -1, -1, -1,
        -1,
    ],
    [
        0, -1, -1, -1, 8, -1, 42, -1, 50, -1, -1, 8, -1, -1, -1, -1, -1, 0, 0, -1, -1, -1, -1, -1,
    ],
    [
        69, 79, 79, -1, -1, -1, 56, -1, 52, -1, -1, -1, 0, -1, -1, -1, -1, -1, 0, 0, -1, -1, -1, -1,
    ],
    [
        65, -1, -1, -1, 38, 57, -1, -1, 72, -1, 27, -1, -1, -1, -1, -1, -1, -1, -1, 0, 0, -1, -1,
        -1,
    ],
    [
        64, -1, -1, -1, 14, 52, -1, -1, 30, -1, -1, 32, -1, -1, -1, -1, -1, -1, -1, -1, 0, 0, -1,
        -1,
    ],
    [
        -1, 45, -1, 70, 0, -1, -1, -1, 77, 9, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, 0, 0, -1,
    ],
    [
        2, 56, -1, 57, 35, -1, -1, -1, -1, -1, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, 0, 0,
    ],
    [
        24, -1, 61, -1, 60, -1, -1, 27, 51, -1, -1, 16, 1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
        0,
    ],
];

/// Block `x` (Z bits) multiplied by the shifted identity: out[r] = x[(r + s) mod Z].
fn shifted(x: &[u8], s: usize) -> impl Iterator<Item = u8> + '_ {
    (0..Z).map(move |r| x[(r + s) % Z])
}

/// Systematic encoding: `info` (K bits, 0/1) followed by K parity bits.
///
/// With λ_i = Σ_j P^{s_ij}·u_j over the information columns, the parity
/// blocks follow from the dual-diagonal part: p0 = Σ_i λ_i, p1 = λ0 + P^1·p0,
/// p_{i+1} = λ_i + p_i (+ p0 in block row 6).
pub(crate) fn encode(info: &[u8]) -> Vec<u8> {
    debug_assert_eq!(info.len(), K);
    let blocks: Vec<&[u8]> = info.chunks(Z).collect();
    let mut lambda = vec![vec![0u8; Z]; 12];
    for (row, l) in BASE.iter().zip(lambda.iter_mut()) {
        for (col, &s) in row.iter().take(12).enumerate() {
            if s >= 0 {
                for (a, b) in l.iter_mut().zip(shifted(blocks[col], s as usize)) {
                    *a ^= b & 1;
                }
            }
        }
    }
    let mut parity = vec![vec![0u8; Z]; 12];
    for l in &lambda {
        for (p, &b) in parity[0].iter_mut().zip(l) {
            *p ^= b;
        }
    }
    let p0 = parity[0].clone();
    parity[1] = lambda[0]
        .iter()
        .zip(shifted(&p0, 1))
        .map(|(a, b)| a ^ b)
        .collect();
    for i in 1..11 {
        let extra = BASE[i][12] >= 0;
        parity[i + 1] = (0..Z)
            .map(|r| lambda[i][r] ^ parity[i][r] ^ if extra { p0[r] } else { 0 })
            .collect();
    }
    let mut out = Vec::with_capacity(N);
    out.extend(info.iter().map(|b| b & 1));
    for p in parity {
        out.extend(p);
    }
    out
}

/// The parity checks as lists of bit positions (972 rows).
fn checks() -> Vec<Vec<u16>> {
    let mut rows = Vec::with_capacity(12 * Z);
    for row in &BASE {
        for r in 0..Z {
            let vars = row
                .iter()
                .enumerate()
                .filter(|(_, s)| **s >= 0)
                .map(|(col, &s)| (col * Z + (r + s as usize) % Z) as u16)
                .collect();
            rows.push(vars);
        }
    }
    rows
}

/// A belief-propagation decoder (layered normalised min-sum).
#[derive(Debug, Clone)]
pub(crate) struct LdpcDecoder {
    checks: Vec<Vec<u16>>,
}

/// Scale of check-to-bit messages (normalised min-sum).
const NORMALISE: f32 = 0.8;

impl LdpcDecoder {
    pub fn new() -> LdpcDecoder {
        LdpcDecoder { checks: checks() }
    }

    /// True if `bits` (N of them) satisfy every parity check.
    pub fn is_codeword(&self, bits: &[u8]) -> bool {
        self.checks
            .iter()
            .all(|c| c.iter().fold(0u8, |a, &v| a ^ bits[v as usize]) == 0)
    }

    /// Decodes N channel LLRs; returns the information bits and the
    /// a-posteriori LLRs of every bit, or None if no codeword was reached
    /// within `iterations`.
    pub fn decode(&self, llr: &[f32], iterations: usize) -> (Option<Vec<u8>>, Vec<f32>) {
        let mut post: Vec<f32> = llr.iter().map(|v| v.clamp(-60.0, 60.0)).collect();
        let mut messages: Vec<Vec<f32>> = self.checks.iter().map(|c| vec![0.0; c.len()]).collect();
        let mut extrinsic = Vec::with_capacity(12);
        let mut hard = Vec::with_capacity(N);
        for _ in 0..iterations {
            for (check, msgs) in self.checks.iter().zip(messages.iter_mut()) {
                extrinsic.clear();
                let mut sign = false;
                let (mut min1, mut min2, mut at) = (f32::INFINITY, f32::INFINITY, 0);
                for (i, (&v, m)) in check.iter().zip(msgs.iter()).enumerate() {
                    let q = post[v as usize] - m;
                    extrinsic.push(q);
                    sign ^= q < 0.0;
                    let a = q.abs();
                    if a < min1 {
                        min2 = min1;
                        min1 = a;
                        at = i;
                    } else if a < min2 {
                        min2 = a;
                    }
                }
                for (i, (&v, m)) in check.iter().zip(msgs.iter_mut()).enumerate() {
                    let q = extrinsic[i];
                    let magnitude = NORMALISE * if i == at { min2 } else { min1 };
                    let negative = sign ^ (q < 0.0);
                    *m = if negative { -magnitude } else { magnitude };
                    post[v as usize] = q + *m;
                }
            }
            hard.clear();
            hard.extend(post.iter().map(|&v| u8::from(v < 0.0)));
            if self.is_codeword(&hard) {
                return (Some(hard[..K].to_vec()), post);
            }
        }
        (None, post)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{RngExt, SeedableRng};
    use rand_distr::StandardNormal;
    use rand_pcg::Pcg64Mcg;

    fn random_info(rng: &mut Pcg64Mcg) -> Vec<u8> {
        (0..K).map(|_| rng.random_range(0..2u8)).collect()
    }

    #[test]
    fn encoded_words_satisfy_every_check() {
        let decoder = LdpcDecoder::new();
        let mut rng = Pcg64Mcg::seed_from_u64(1);
        for _ in 0..20 {
            let word = encode(&random_info(&mut rng));
            assert_eq!(word.len(), N);
            assert!(decoder.is_codeword(&word));
        }
        let mut word = encode(&random_info(&mut rng));
        word[1000] ^= 1;
        assert!(!decoder.is_codeword(&word));
    }

    #[test]
    fn every_column_of_the_base_matrix_is_used_and_parity_is_dual_diagonal() {
        for col in 0..24 {
            assert!(BASE.iter().any(|r| r[col] >= 0), "column {col}");
        }
        for (i, row) in BASE.iter().enumerate() {
            assert_eq!(row[13 + i.min(10)], 0);
        }
        assert_eq!(
            (BASE[0][12], BASE[6][12], BASE[11][12]),
            (1, 0, 1),
            "the h_b column the encoder relies on"
        );
    }

    #[test]
    fn decodes_through_gaussian_noise_at_2_5_db_and_fails_cleanly_on_garbage() {
        let decoder = LdpcDecoder::new();
        let mut rng = Pcg64Mcg::seed_from_u64(7);
        // BPSK at Eb/N0 = 2.5 dB, rate 1/2: noise variance 1 / (2 R Eb/N0).
        let sigma = (1.0 / 10f32.powf(0.25)).sqrt();
        let mut ok = 0;
        for _ in 0..20 {
            let info = random_info(&mut rng);
            let word = encode(&info);
            let llr: Vec<f32> = word
                .iter()
                .map(|&b| {
                    let x = if b == 0 { 1.0 } else { -1.0 };
                    let n: f32 = rng.sample(StandardNormal);
                    2.0 * (x + sigma * n) / (sigma * sigma)
                })
                .collect();
            if decoder.decode(&llr, 50).0.as_deref() == Some(&info[..]) {
                ok += 1;
            }
        }
        assert!(ok >= 19, "{ok}/20 decoded");
        let garbage: Vec<f32> = (0..N)
            .map(|_| rng.sample::<f32, _>(StandardNormal))
            .collect();
        assert!(decoder.decode(&garbage, 20).0.is_none());
    }
}
