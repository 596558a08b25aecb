//! The IEEE 802.11n (802.11-2012 Annex F) LDPC codes with 1944-bit
//! codewords (Z = 81): rate 1/2 for the fast profile (format 2,
//! docs/modem.md §3b) and rate 2/3 for the robust profile (format 2, §3c).
//!
//! Standard codes rather than ones of our own: each parity-check matrix is a
//! published table of cyclic shifts, their dual-diagonal parity part makes
//! encoding a few XORs per bit, and belief propagation on them decodes
//! within about 2 dB of capacity — the soft decisions a Reed–Solomon code on
//! bytes cannot use.
//!
//! Bit convention: LLR > 0 means the bit is more likely 0.

/// Lifting size: each base-matrix entry is a Z × Z cyclic permutation.
pub(crate) const Z: usize = 81;
/// Bits per codeword.
pub(crate) const N: usize = 24 * Z;

/// One of the codes: its base matrix, a row per block of Z checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Code {
    /// -1 is a zero block, s ≥ 0 the identity shifted by s (block row r has
    /// its 1 in column (r + s) mod Z).
    base: &'static [[i8; 24]],
}

impl Code {
    /// Parity bits per codeword.
    pub const fn parity(self) -> usize {
        self.base.len() * Z
    }

    /// Information bits per codeword.
    pub const fn k(self) -> usize {
        N - self.parity()
    }

    /// Information block columns of the base matrix.
    const fn info_blocks(self) -> usize {
        24 - self.base.len()
    }
}

/// Rate 1/2 (12 × 24 base matrix): the fast profile's code.
pub(crate) const HALF: Code = Code { base: &BASE_HALF };
/// Rate 2/3 (8 × 24 base matrix): the robust profile's code.
pub(crate) const TWO_THIRDS: Code = Code {
    base: &BASE_TWO_THIRDS,
};

#[rustfmt::skip]
const BASE_HALF: [[i8; 24]; 12] = [
    [57, -1, -1, -1, 50, -1, 11, -1, 50, -1, 79, -1,  1,  0, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1],
    [ 3, -1, 28, -1,  0, -1, -1, -1, 55,  7, -1, -1, -1,  0,  0, -1, -1, -1, -1, -1, -1, -1, -1, -1],
    [30, -1, -1, -1, 24, 37, -1, -1, 56, 14, -1, -1, -1, -1,  0,  0, -1, -1, -1, -1, -1, -1, -1, -1],
    [62, 53, -1, -1, 53, -1, -1,  3, 35, -1, -1, -1, -1, -1, -1,  0,  0, -1, -1, -1, -1, -1, -1, -1],
    [40, -1, -1, 20, 66, -1, -1, 22, 28, -1, -1, -1, -1, -1, -1, -1,  0,  0, -1, -1, -1, -1, -1, -1],
    [ 0, -1, -1, -1,  8, -1, 42, -1, 50, -1, -1,  8, -1, -1, -1, -1, -1,  0,  0, -1, -1, -1, -1, -1],
    [69, 79, 79, -1, -1, -1, 56, -1, 52, -1, -1, -1,  0, -1, -1, -1, -1, -1,  0,  0, -1, -1, -1, -1],
    [65, -1, -1, -1, 38, 57, -1, -1, 72, -1, 27, -1, -1, -1, -1, -1, -1, -1, -1,  0,  0, -1, -1, -1],
    [64, -1, -1, -1, 14, 52, -1, -1, 30, -1, -1, 32, -1, -1, -1, -1, -1, -1, -1, -1,  0,  0, -1, -1],
    [-1, 45, -1, 70,  0, -1, -1, -1, 77,  9, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,  0,  0, -1],
    [ 2, 56, -1, 57, 35, -1, -1, -1, -1, -1, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,  0,  0],
    [24, -1, 61, -1, 60, -1, -1, 27, 51, -1, -1, 16,  1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,  0],
];

#[rustfmt::skip]
const BASE_TWO_THIRDS: [[i8; 24]; 8] = [
    [61, 75,  4, 63, 56, -1, -1, -1, -1, -1, -1,  8, -1,  2, 17, 25,  1,  0, -1, -1, -1, -1, -1, -1],
    [56, 74, 77, 20, -1, -1, -1, 64, 24,  4, 67, -1,  7, -1, -1, -1, -1,  0,  0, -1, -1, -1, -1, -1],
    [28, 21, 68, 10,  7, 14, 65, -1, -1, -1, 23, -1, -1, -1, 75, -1, -1, -1,  0,  0, -1, -1, -1, -1],
    [48, 38, 43, 78, 76, -1, -1, -1, -1,  5, 36, -1, 15, 72, -1, -1, -1, -1, -1,  0,  0, -1, -1, -1],
    [40,  2, 53, 25, -1, 52, 62, -1, 20, -1, -1, 44, -1, -1, -1, -1,  0, -1, -1, -1,  0,  0, -1, -1],
    [69, 23, 64, 10, 22, -1, 21, -1, -1, -1, -1, -1, 68, 23, 29, -1, -1, -1, -1, -1, -1,  0,  0, -1],
    [12,  0, 68, 20, 55, 61, -1, 40, -1, -1, -1, 52, -1, -1, -1, 44, -1, -1, -1, -1, -1, -1,  0,  0],
    [58,  8, 34, 64, 78, -1, -1, 11, 78, 24, -1, -1, -1, -1, -1, 58,  1, -1, -1, -1, -1, -1, -1,  0],
];

/// Block `x` (Z bits) multiplied by the shifted identity: out[r] = x[(r + s) mod Z].
fn shifted(x: &[u8], s: usize) -> impl Iterator<Item = u8> + '_ {
    (0..Z).map(move |r| x[(r + s) % Z])
}

/// Systematic encoding with `code`: `info` (k bits, 0/1) followed by its
/// parity bits.
///
/// With λ_i = Σ_j P^{s_ij}·u_j over the information columns, the parity
/// blocks follow from the dual-diagonal part (its first column has shifts
/// 1, 0, 1 in the first, middle and last block rows): p0 = Σ_i λ_i,
/// p1 = λ0 + P^1·p0, p_{i+1} = λ_i + p_i (+ p0 in the middle block row).
pub(crate) fn encode(code: Code, info: &[u8]) -> Vec<u8> {
    debug_assert_eq!(info.len(), code.k());
    let rows = code.base.len();
    let first_parity = code.info_blocks();
    let blocks: Vec<&[u8]> = info.chunks(Z).collect();
    let mut lambda = vec![vec![0u8; Z]; rows];
    for (row, l) in code.base.iter().zip(lambda.iter_mut()) {
        for (col, &s) in row.iter().take(first_parity).enumerate() {
            if s >= 0 {
                for (a, b) in l.iter_mut().zip(shifted(blocks[col], s as usize)) {
                    *a ^= b & 1;
                }
            }
        }
    }
    let mut parity = vec![vec![0u8; Z]; rows];
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
    for i in 1..rows - 1 {
        let extra = code.base[i][first_parity] >= 0;
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

/// The parity checks of `code` as lists of bit positions (one per parity bit).
fn checks(code: Code) -> Vec<Vec<u16>> {
    let mut rows = Vec::with_capacity(code.parity());
    for row in code.base {
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
    code: Code,
    checks: Vec<Vec<u16>>,
}

/// Scale of check-to-bit messages (normalised min-sum).
const NORMALISE: f32 = 0.8;

impl LdpcDecoder {
    pub fn new(code: Code) -> LdpcDecoder {
        LdpcDecoder {
            code,
            checks: checks(code),
        }
    }

    /// The code it decodes.
    pub fn code(&self) -> Code {
        self.code
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
        let mut extrinsic = Vec::with_capacity(24);
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
                return (Some(hard[..self.code.k()].to_vec()), post);
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

    const CODES: [Code; 2] = [HALF, TWO_THIRDS];

    fn random_info(code: Code, rng: &mut Pcg64Mcg) -> Vec<u8> {
        (0..code.k()).map(|_| rng.random_range(0..2u8)).collect()
    }

    #[test]
    fn encoded_words_satisfy_every_check() {
        for code in CODES {
            let decoder = LdpcDecoder::new(code);
            let mut rng = Pcg64Mcg::seed_from_u64(1);
            for _ in 0..20 {
                let word = encode(code, &random_info(code, &mut rng));
                assert_eq!(word.len(), N);
                assert!(decoder.is_codeword(&word));
            }
            let mut word = encode(code, &random_info(code, &mut rng));
            word[1000] ^= 1;
            assert!(!decoder.is_codeword(&word));
        }
        assert_eq!((HALF.k(), TWO_THIRDS.k()), (972, 1296));
    }

    #[test]
    fn every_column_of_the_base_matrix_is_used_and_parity_is_dual_diagonal() {
        for code in CODES {
            let rows = code.base.len();
            let first = code.info_blocks();
            for col in 0..24 {
                assert!(code.base.iter().any(|r| r[col] >= 0), "column {col}");
            }
            for (i, row) in code.base.iter().enumerate() {
                assert_eq!(row[first + 1 + i.min(rows - 2)], 0);
                if i > 0 {
                    assert_eq!(row[first + i], 0, "the dual diagonal");
                }
            }
            let h: Vec<i8> = code.base.iter().map(|r| r[first]).collect();
            let mut expected = vec![-1i8; rows];
            (expected[0], expected[rows / 2], expected[rows - 1]) = (1, 0, 1);
            assert_eq!(h, expected, "the h_b column the encoder relies on");
        }
    }

    #[test]
    fn decodes_through_gaussian_noise_near_threshold_and_fails_cleanly_on_garbage() {
        // BPSK at Eb/N0 2.5 dB (rate 1/2) and 3.2 dB (rate 2/3): noise
        // variance 1 / (2 R Eb/N0).
        for (code, rate, ebn0_db) in [(HALF, 0.5f32, 2.5f32), (TWO_THIRDS, 2.0 / 3.0, 3.2)] {
            let decoder = LdpcDecoder::new(code);
            let mut rng = Pcg64Mcg::seed_from_u64(7);
            let sigma = (1.0 / (2.0 * rate * 10f32.powf(ebn0_db / 10.0))).sqrt();
            let mut ok = 0;
            for _ in 0..20 {
                let info = random_info(code, &mut rng);
                let word = encode(code, &info);
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
            assert!(ok >= 19, "{ok}/20 decoded at rate {rate}");
            let garbage: Vec<f32> = (0..N)
                .map(|_| rng.sample::<f32, _>(StandardNormal))
                .collect();
            assert!(decoder.decode(&garbage, 20).0.is_none());
        }
    }
}
