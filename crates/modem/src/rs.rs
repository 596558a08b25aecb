//! Reed–Solomon codes over GF(256): systematic encoder and an errors-and-
//! erasures decoder (Berlekamp–Massey, Chien search, Forney).
//!
//! A codeword of `n <= 255` bytes is `k` data bytes followed by `p = n - k`
//! parity bytes (a shortened RS(255, 255 - p) code). The generator has the
//! roots α^0 .. α^(p-1). The decoder corrects `e` errors at unknown positions
//! and `f` erasures at known positions whenever `2e + f <= p`, and reports a
//! failure (instead of guessing) whenever the locator it finds is
//! inconsistent; a residual miscorrection beyond that bound is caught by the
//! frame's CRC-32.

use super::gf256;
use thiserror::Error;

/// Why a block could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RsError {
    /// The codeword or parity length is not one this code supports.
    #[error("invalid Reed-Solomon shape: {len} bytes with {parity} parity bytes")]
    BadShape {
        /// Codeword length given.
        len: usize,
        /// Parity bytes requested.
        parity: usize,
    },
    /// More errors than the code can correct (detected, nothing was changed).
    #[error("too many errors to correct")]
    TooManyErrors,
}

/// A forward-error-correcting block code over bytes, so the framing does not
/// depend on one implementation.
pub trait BlockCode {
    /// Appends the parity of `data` (length `parity`) and returns the codeword.
    fn encode(&self, data: &[u8], parity: usize) -> Result<Vec<u8>, RsError>;
    /// Corrects `codeword` in place; `erasures` are byte indices known to be
    /// unreliable. Returns how many bytes were changed.
    fn decode(
        &self,
        codeword: &mut [u8],
        parity: usize,
        erasures: &[usize],
    ) -> Result<usize, RsError>;
}

/// The Reed–Solomon code over GF(256) described in the module docs.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReedSolomon;

/// Generator polynomial, highest degree first, monic: Π (x - α^j), j < parity.
fn generator(parity: usize) -> Vec<u8> {
    let mut g = vec![1u8];
    for j in 0..parity {
        let root = gf256::exp(j);
        let mut next = vec![0u8; g.len() + 1];
        for (i, &c) in g.iter().enumerate() {
            next[i] ^= c;
            next[i + 1] ^= gf256::mul(c, root);
        }
        g = next;
    }
    g
}

fn check_shape(len: usize, parity: usize) -> Result<(), RsError> {
    if parity == 0 || parity >= len || len > 255 {
        return Err(RsError::BadShape { len, parity });
    }
    Ok(())
}

/// Syndromes S_j = c(α^j), j < parity; the codeword is highest degree first.
fn syndromes(codeword: &[u8], parity: usize) -> Vec<u8> {
    (0..parity)
        .map(|j| {
            let x = gf256::exp(j);
            codeword.iter().fold(0u8, |acc, &c| gf256::mul(acc, x) ^ c)
        })
        .collect()
}

impl BlockCode for ReedSolomon {
    fn encode(&self, data: &[u8], parity: usize) -> Result<Vec<u8>, RsError> {
        check_shape(data.len() + parity, parity)?;
        let g = generator(parity);
        // Remainder of data(x) * x^parity divided by g(x), by long division.
        let mut rem = vec![0u8; parity];
        for &d in data {
            let factor = d ^ rem[0];
            rem.rotate_left(1);
            rem[parity - 1] = 0;
            if factor != 0 {
                for (r, &gc) in rem.iter_mut().zip(&g[1..]) {
                    *r ^= gf256::mul(gc, factor);
                }
            }
        }
        let mut out = Vec::with_capacity(data.len() + parity);
        out.extend_from_slice(data);
        out.extend_from_slice(&rem);
        Ok(out)
    }

    fn decode(
        &self,
        codeword: &mut [u8],
        parity: usize,
        erasures: &[usize],
    ) -> Result<usize, RsError> {
        let n = codeword.len();
        check_shape(n, parity)?;
        let s = syndromes(codeword, parity);
        if s.iter().all(|&x| x == 0) {
            return Ok(0);
        }
        let mut erased: Vec<usize> = erasures.iter().copied().filter(|&p| p < n).collect();
        erased.sort_unstable();
        erased.dedup();
        let f = erased.len();
        if f > parity {
            return Err(RsError::TooManyErrors);
        }
        // Erasure locator Γ(x) = Π (1 + X_i x), lowest degree first.
        let mut gamma = vec![1u8];
        for &pos in &erased {
            let x = gf256::exp(n - 1 - pos);
            let mut next = vec![0u8; gamma.len() + 1];
            for (i, &c) in gamma.iter().enumerate() {
                next[i] ^= c;
                next[i + 1] ^= gf256::mul(c, x);
            }
            gamma = next;
        }
        // Berlekamp–Massey, started from the erasure locator.
        let mut c = gamma.clone();
        let mut b = gamma;
        let mut l = f;
        let mut m = 1usize;
        let mut b_scale = 1u8;
        for r in f..parity {
            let mut d = 0u8;
            for (i, &ci) in c.iter().enumerate().take(l + 1) {
                if i <= r {
                    d ^= gf256::mul(ci, s[r - i]);
                }
            }
            if d == 0 {
                m += 1;
                continue;
            }
            let coef = gf256::div(d, b_scale);
            let mut updated = c.clone();
            if updated.len() < b.len() + m {
                updated.resize(b.len() + m, 0);
            }
            for (i, &bi) in b.iter().enumerate() {
                updated[i + m] ^= gf256::mul(coef, bi);
            }
            if 2 * l <= r + f {
                b = std::mem::replace(&mut c, updated);
                l = r + f + 1 - l;
                b_scale = d;
                m = 1;
            } else {
                c = updated;
                m += 1;
            }
        }
        while c.len() > 1 && c[c.len() - 1] == 0 {
            c.pop();
        }
        let degree = c.len() - 1;
        if degree != l || l < f || 2 * (l - f) + f > parity {
            return Err(RsError::TooManyErrors);
        }
        // Chien search over the positions that exist in this (shortened) code.
        let mut positions = Vec::with_capacity(degree);
        for pos in 0..n {
            let x_inv = gf256::exp(255 - (n - 1 - pos) % 255);
            if gf256::poly_eval_low_first(&c, x_inv) == 0 {
                positions.push(pos);
            }
        }
        if positions.len() != degree {
            return Err(RsError::TooManyErrors);
        }
        // Forney: Ω = S·Λ mod x^parity; e = X·Ω(X⁻¹) / Λ'(X⁻¹).
        let mut omega = vec![0u8; parity];
        for (i, &ci) in c.iter().enumerate() {
            for (j, &sj) in s.iter().enumerate() {
                if i + j < parity {
                    omega[i + j] ^= gf256::mul(ci, sj);
                }
            }
        }
        let derivative: Vec<u8> = c
            .iter()
            .enumerate()
            .skip(1)
            .map(|(i, &ci)| if i % 2 == 1 { ci } else { 0 })
            .collect();
        let mut fixed = codeword.to_vec();
        for &pos in &positions {
            let power = n - 1 - pos;
            let x = gf256::exp(power);
            let x_inv = gf256::exp(255 - power % 255);
            let denom = gf256::poly_eval_low_first(&derivative, x_inv);
            if denom == 0 {
                return Err(RsError::TooManyErrors);
            }
            let num = gf256::mul(x, gf256::poly_eval_low_first(&omega, x_inv));
            fixed[pos] ^= gf256::div(num, denom);
        }
        if syndromes(&fixed, parity).iter().any(|&x| x != 0) {
            return Err(RsError::TooManyErrors);
        }
        let changed = fixed
            .iter()
            .zip(codeword.iter())
            .filter(|(a, b)| a != b)
            .count();
        codeword.copy_from_slice(&fixed);
        Ok(changed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn generator_has_the_expected_roots() {
        let g = generator(6);
        for j in 0..6 {
            let x = gf256::exp(j);
            let v = g.iter().fold(0u8, |acc, &c| gf256::mul(acc, x) ^ c);
            assert_eq!(v, 0, "α^{j} is not a root");
        }
    }

    #[test]
    fn codewords_have_zero_syndromes_and_are_systematic() {
        let data: Vec<u8> = (0..100u8).collect();
        let cw = ReedSolomon.encode(&data, 32).expect("encode");
        assert_eq!(&cw[..100], &data[..]);
        assert!(syndromes(&cw, 32).iter().all(|&s| s == 0));
    }

    #[test]
    fn rejects_bad_shapes() {
        assert!(ReedSolomon.encode(&[0u8; 250], 10).is_err());
        assert!(ReedSolomon.encode(&[1, 2, 3], 0).is_err());
        let mut short = [0u8; 4];
        assert!(ReedSolomon.decode(&mut short, 4, &[]).is_err());
    }

    #[test]
    fn corrects_a_full_load_of_errors_in_a_full_length_code() {
        let data: Vec<u8> = (0..223).map(|i| (i * 7 + 3) as u8).collect();
        let cw = ReedSolomon.encode(&data, 32).expect("encode");
        let mut bad = cw.clone();
        for i in 0..16 {
            bad[i * 15] ^= 0x5a ^ i as u8;
        }
        assert_eq!(ReedSolomon.decode(&mut bad, 32, &[]), Ok(16));
        assert_eq!(bad, cw);
    }

    fn corrupt(cw: &[u8], positions: &[usize], values: &[u8]) -> Vec<u8> {
        let mut bad = cw.to_vec();
        for (&p, &v) in positions.iter().zip(values) {
            bad[p % cw.len()] ^= v.max(1);
        }
        bad
    }

    /// Positions folded into a codeword of length `n`, sorted, without repeats.
    fn distinct_positions(positions: std::collections::HashSet<usize>, n: usize) -> Vec<usize> {
        let mut pos: Vec<usize> = positions.into_iter().map(|p| p % n).collect();
        pos.sort_unstable();
        pos.dedup();
        pos
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// Up to parity/2 errors at unknown positions are always corrected.
        #[test]
        fn corrects_up_to_t_errors(
            data in proptest::collection::vec(any::<u8>(), 1..200),
            parity in 2usize..56,
            positions in proptest::collection::hash_set(0usize..255, 0..28),
            values in proptest::collection::vec(any::<u8>(), 28),
        ) {
            prop_assume!(data.len() + parity <= 255);
            let cw = ReedSolomon.encode(&data, parity).expect("encode");
            let n = cw.len();
            let mut pos = distinct_positions(positions, n);
            pos.truncate(parity / 2);
            let mut bad = corrupt(&cw, &pos, &values);
            let fixed = ReedSolomon.decode(&mut bad, parity, &[]);
            prop_assert_eq!(fixed, Ok(pos.len()));
            prop_assert_eq!(bad, cw);
        }

        /// Errors and erasures together are corrected while 2e + f <= parity.
        #[test]
        fn corrects_errors_and_erasures(
            data in proptest::collection::vec(any::<u8>(), 1..150),
            parity in 4usize..60,
            positions in proptest::collection::hash_set(0usize..255, 0..60),
            values in proptest::collection::vec(any::<u8>(), 60),
            erase_share in 0usize..=100,
        ) {
            prop_assume!(data.len() + parity <= 255);
            let cw = ReedSolomon.encode(&data, parity).expect("encode");
            let n = cw.len();
            let mut pos = distinct_positions(positions, n);
            // Split into f erasures and e errors with 2e + f <= parity.
            let f = (pos.len() * erase_share / 100).min(parity);
            let e = ((parity - f) / 2).min(pos.len() - f);
            pos.truncate(f + e);
            let mut bad = corrupt(&cw, &pos, &values);
            let erasures = &pos[..f];
            // Erasing a correct byte is allowed too: add one if room is left.
            let mut erasures = erasures.to_vec();
            if 2 * e + f < parity {
                let extra = (0..n).find(|p| !pos.contains(p));
                if let Some(p) = extra {
                    erasures.push(p);
                }
            }
            let result = ReedSolomon.decode(&mut bad, parity, &erasures);
            prop_assert!(result.is_ok(), "{:?}", result);
            prop_assert_eq!(bad, cw);
        }

        /// Beyond the bound the decoder either fails or returns some valid
        /// codeword; it never returns a non-codeword, and never panics.
        #[test]
        fn beyond_t_fails_or_yields_a_codeword(
            data in proptest::collection::vec(any::<u8>(), 1..120),
            parity in 2usize..40,
            positions in proptest::collection::hash_set(0usize..255, 1..120),
            values in proptest::collection::vec(any::<u8>(), 120),
        ) {
            prop_assume!(data.len() + parity <= 255);
            let cw = ReedSolomon.encode(&data, parity).expect("encode");
            let n = cw.len();
            let pos = distinct_positions(positions, n);
            prop_assume!(2 * pos.len() > parity);
            let mut bad = corrupt(&cw, &pos, &values);
            if ReedSolomon.decode(&mut bad, parity, &[]).is_ok() {
                prop_assert!(syndromes(&bad, parity).iter().all(|&s| s == 0));
            }
        }
    }
}
