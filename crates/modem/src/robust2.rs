//! Format version 2 of the robust profile (docs/modem.md §2c, §3c): version
//! 1's 16-FSK symbols behind a falling chirp, a first-order Reed–Muller
//! header and the 802.11n rate-2/3 LDPC code fed with soft decisions — each
//! tone's energy, weighed against the noise measured in its group, instead
//! of the hard bytes version 1 hands to Reed–Solomon.
//!
//! Pure functions: what the cells of a frame are ([`layout`], [`cells`]),
//! and from tone energies back to a payload ([`fsk_llrs`],
//! [`decode_header`], [`decode_body`]). The decoder does the signal
//! processing around them.

use realfft::num_complex::Complex32;

use super::ModemError;
use super::codewords;
use super::frame2;
use super::ldpc::{self, LdpcDecoder};
use super::profile::{Modulation, Params};

/// The robust profile's version-2 numbers: version 1's symbols and band, a
/// chirp falling from 17.9 to 10.0 kHz (so neither version's detector
/// mistakes the other's frames for its own). `id`, `parity_percent` and
/// `header_parity` belong to the Reed–Solomon formats and are not used.
pub(crate) const PARAMS: Params = Params {
    id: 4,
    fft: 2048,
    cp: 256,
    ramp: 64,
    backoff: 96,
    first_bin: 427,
    bins: GROUPS * TONES,
    modulation: Modulation::Mfsk { bits: BITS },
    chirp_len: 4096,
    chirp_f0: 17_900.0,
    chirp_f1: 10_000.0,
    parity_percent: 0,
    header_parity: 0,
    threshold: 0.15,
};

/// Bits per cell.
pub(crate) const BITS: usize = 4;
/// Tones per group: one is lit per symbol.
pub(crate) const TONES: usize = 1 << BITS;
/// Groups (cells) per symbol.
pub(crate) const GROUPS: usize = 21;
/// Header cells: the first 32 cells (128 Reed–Muller bits).
pub(crate) const HEADER_CELLS: usize = 32;
/// Data symbols holding the header.
pub(crate) const HEADER_SYMBOLS: usize = HEADER_CELLS.div_ceil(GROUPS);
/// Largest |LLR| of one bit from one cell: the noise model (exponential
/// tone energies) is only a model, and an echo or a click that fits it
/// badly must not outvote the code.
const LLR_LIMIT: f32 = 16.0;

/// Where everything of a `len`-byte payload goes: the shared placement,
/// its slots being the cells after the header's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Layout(codewords::Placement);

impl std::ops::Deref for Layout {
    type Target = codewords::Placement;
    fn deref(&self) -> &codewords::Placement {
        &self.0
    }
}

/// The layout of a `len`-byte payload's frame (len in 1..=256).
pub(crate) fn layout(len: usize) -> Result<Layout, ModemError> {
    codewords::Placement::new(len, ldpc::TWO_THIRDS, BITS, GROUPS, HEADER_CELLS).map(Layout)
}

impl Layout {
    /// Total frame length in samples: chirp, data symbols, the last fade.
    pub fn frame_len(&self) -> usize {
        PARAMS.chirp_len + self.symbols * PARAMS.symbol_len() + PARAMS.ramp
    }

    /// Cell (symbol · GROUPS + group) of body cell `u` (0..slots).
    pub fn body_cell(&self, u: usize) -> usize {
        HEADER_CELLS + self.slot(u)
    }
}

/// A cell's value from four bits, the first the most significant.
fn value(bits: &[u8]) -> u8 {
    bits.iter().fold(0, |v, &b| (v << 1) | (b & 1))
}

/// Every cell's value (0..16, symbol-major): the header's 32, then the body.
pub(crate) fn cells(payload: &[u8]) -> Result<(Layout, Vec<u8>), ModemError> {
    let layout = layout(payload.len())?;
    let mut cells = vec![0u8; layout.symbols * GROUPS];
    let header = frame2::header_bits(payload.len());
    for (cell, bits) in cells.iter_mut().zip(header.chunks(BITS)) {
        *cell = value(bits);
    }
    let bits = codewords::encode(payload, ldpc::TWO_THIRDS);
    for u in 0..layout.slots {
        let v = layout.source(u);
        cells[layout.body_cell(u)] = value(&bits[BITS * v..BITS * (v + 1)]);
    }
    Ok((layout, cells))
}

/// Each symbol's tone energies scaled to the frame's mean level: a
/// receiver's AGC pumping on station noise moves whole symbols by several
/// dB, and a noise burst raises one symbol's level, so its tones count for
/// less.
pub(crate) fn levelled(mut energy: Vec<Vec<f32>>) -> Vec<Vec<f32>> {
    let levels: Vec<f32> = energy
        .iter()
        .map(|row| row.iter().sum::<f32>() / row.len().max(1) as f32)
        .collect();
    let mean = levels.iter().sum::<f32>() / levels.len().max(1) as f32;
    for (row, &level) in energy.iter_mut().zip(&levels) {
        if level > 0.0 && mean > 0.0 && level.is_finite() && mean.is_finite() {
            row.iter_mut().for_each(|e| *e *= mean / level);
        }
    }
    energy
}

/// The tone a cell of value `v` lights in its group (Gray code).
fn tone(v: usize) -> usize {
    usize::from(super::modulation::gray(v as u8))
}

/// How the soft decisions allow for the room's echo of earlier symbols: a
/// tone lit one or two symbols ago still rings in a reverberant hall, as
/// strong as the tone lit now at a direct-to-reverberant ratio near 0 dB.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Echo {
    /// Each tone's echo predicted from its own energy in the previous
    /// symbols ([`echo_predictor`]) and counted as extra noise on that tone,
    /// so a tone that rang just before weighs less, whatever it shows now.
    Predicted(Vec<f32>),
    /// A share of each tone's earlier energies subtracted from it
    /// (`modulation::suppress_echo`); `(0, 0)` leaves the energies as heard.
    Subtracted(f32, f32),
}

/// Coefficients a_1..a_`order` predicting, by least squares over the
/// frame, every tone's energy relative to its group's mean,
/// x(t) = E(t)/μ − 1, from its own past: x(t) ≈ Σ_j a_j·x(t−j). What is lit
/// now does not depend on what was lit before, so what the past predicts is
/// the echo (and a steady noise floor, which the mean removes).
pub(crate) fn echo_predictor(raw: &[Vec<f32>], order: usize) -> Vec<f32> {
    let means = group_means(raw);
    let x = |t: usize, b: usize| -> f64 {
        let mu = means[b / TONES];
        match raw[t].get(b) {
            Some(&e) if mu > 0.0 => f64::from(e / mu - 1.0),
            _ => 0.0,
        }
    };
    // Normal equations, solved by Gaussian elimination (order × order, the
    // matrix symmetric and, with the ridge, positive definite).
    let mut a = vec![vec![0f64; order + 1]; order];
    let mut past = vec![0f64; order];
    for t in order..raw.len() {
        for b in 0..GROUPS * TONES {
            for (j, p) in past.iter_mut().enumerate() {
                *p = x(t - 1 - j, b);
            }
            let y = x(t, b);
            for i in 0..order {
                for j in 0..order {
                    a[i][j] += past[i] * past[j];
                }
                a[i][order] += past[i] * y;
            }
        }
    }
    for (i, row) in a.iter_mut().enumerate() {
        row[i] += 1e-6 + 1e-3 * row[i];
    }
    for i in 0..order {
        let pivot = a[i][i];
        if !(pivot.abs() > 1e-12 && pivot.is_finite()) {
            return vec![0.0; order];
        }
        let (upper, lower) = a.split_at_mut(i + 1);
        let pivot_row = &upper[i];
        for row in lower.iter_mut() {
            let f = row[i] / pivot;
            for (x, p) in row[i..].iter_mut().zip(&pivot_row[i..]) {
                *x -= f * p;
            }
        }
    }
    let mut coef = vec![0f64; order];
    for i in (0..order).rev() {
        let known: f64 = (i + 1..order).map(|k| a[i][k] * coef[k]).sum();
        coef[i] = (a[i][order] - known) / a[i][i];
    }
    coef.into_iter()
        .map(|c| if c.is_finite() { c as f32 } else { 0.0 })
        .collect()
}

/// The relative frequency offset of the tones as heard (positive: higher
/// than sent), from where the strongest tone of every cell really lies
/// between its bins (`modulation::tone_drift`, groups of [`TONES`] from
/// the profile's first bin). `spectra` holds the used bins of each symbol.
pub(crate) fn tone_drift(spectra: &[Vec<Complex32>]) -> f64 {
    super::modulation::tone_drift(spectra, PARAMS.first_bin, TONES)
}

/// Mean tone energy of each group over the frame.
fn group_means(raw: &[Vec<f32>]) -> Vec<f32> {
    (0..GROUPS)
        .map(|g| {
            let (sum, count) = raw
                .iter()
                .filter_map(|row| row.get(g * TONES..(g + 1) * TONES))
                .fold((0f32, 0usize), |(s, n), e| {
                    (s + e.iter().sum::<f32>(), n + TONES)
                });
            sum / count.max(1) as f32
        })
        .collect()
}

/// The four LLRs (positive: bit 0) of every cell of a frame from its tone
/// energies as heard (`raw`: a row of GROUPS·TONES per symbol), allowing
/// for the room's echo as `echo` says.
///
/// Model: a tone's energy is exponential with mean I if unlit (noise and
/// echo) and S + I if lit (a tone faded by the room), so tone t is lit with
/// log-likelihood ratio E_t·S / (I·(S + I)) − ln(1 + S/I); a bit's LLR sums
/// the likelihoods of the eight values with the bit 0 against the eight
/// with it 1. Per group, over the frame: the noise N = median tone energy /
/// ln 2 (the one lit tone in 16 hardly moves a median) and S = 16 × mean −
/// 16·N. Subtracted echo: I = N for every tone, E the cleaned energy.
/// Predicted echo: I = N plus the tone's predicted excess over the mean
/// (at least N/4), E as heard.
pub(crate) fn fsk_llrs(raw: &[Vec<f32>], echo: &Echo) -> Vec<[f32; BITS]> {
    let cleaned;
    let energy = match echo {
        Echo::Subtracted(share, memory) if *share != 0.0 => {
            cleaned = super::modulation::suppress_echo(raw, (*share, *memory));
            &cleaned
        }
        _ => raw,
    };
    let means = group_means(raw);
    let mut out = vec![[0f32; BITS]; raw.len() * GROUPS];
    let mut scratch = Vec::with_capacity(raw.len() * TONES);
    let mut metric = [0f32; TONES];
    for (g, &mean) in means.iter().enumerate() {
        let tones = g * TONES..(g + 1) * TONES;
        scratch.clear();
        scratch.extend(raw.iter().filter_map(|r| r.get(tones.clone())).flatten());
        if scratch.is_empty() {
            continue;
        }
        let mid = scratch.len() / 2;
        let median = *scratch.select_nth_unstable_by(mid, f32::total_cmp).1;
        let noise = (median / std::f32::consts::LN_2).max(1e-12 * mean.max(0.0));
        let signal = (TONES as f32 * (mean - noise)).max(0.5 * noise);
        if !(noise > 0.0 && signal.is_finite()) {
            continue;
        }
        for (m, row) in energy.iter().enumerate() {
            let Some(e) = row.get(tones.clone()) else {
                continue;
            };
            for (v, slot) in metric.iter_mut().enumerate() {
                let t = tone(v);
                let interference = match echo {
                    Echo::Predicted(coef) => {
                        let excess: f32 = coef
                            .iter()
                            .enumerate()
                            .filter(|&(j, _)| m > j)
                            .map(|(j, a)| {
                                a * (raw[m - 1 - j].get(g * TONES + t).copied().unwrap_or(mean)
                                    - mean)
                            })
                            .sum();
                        (noise + excess).max(0.25 * noise)
                    }
                    Echo::Subtracted(..) => noise,
                };
                // Divided before multiplied: energies of a hostile, very
                // loud input must not overflow f32.
                *slot = (e[t] / interference) * (signal / (interference + signal))
                    - (1.0 + signal / interference).ln();
            }
            super::modulation::bit_llrs(&metric, &mut out[m * GROUPS + g], LLR_LIMIT);
        }
    }
    out
}

/// Decodes the header from the LLRs of (at least) the first
/// [`HEADER_CELLS`] cells: the payload length and the Reed–Muller
/// confidence (see `frame2::decode_header`).
pub(crate) fn decode_header(llr: &[[f32; BITS]]) -> Option<(usize, f32)> {
    let bits: Vec<f32> = llr.get(..HEADER_CELLS)?.iter().flatten().copied().collect();
    frame2::decode_header(&bits)
}

/// Decodes the body from every cell's LLRs (symbol-major, header cells
/// included and ignored): the payload if every codeword decodes and the
/// CRC-32 matches.
pub(crate) fn decode_body(
    llr: &[[f32; BITS]],
    layout: &Layout,
    ldpc: &LdpcDecoder,
) -> Option<Vec<u8>> {
    let mut bits = vec![0f32; layout.used * BITS];
    for u in 0..layout.slots {
        let cell = llr.get(layout.body_cell(u)).copied().unwrap_or_default();
        let v = layout.source(u);
        for (b, l) in bits[BITS * v..BITS * (v + 1)].iter_mut().zip(cell) {
            *b += l;
        }
    }
    codewords::decode(&bits, layout.len, ldpc).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_length_uses_every_cell_exactly_once() {
        let l = layout(200).expect("layout");
        assert_eq!((l.symbols, l.used), (37, 732));
        assert!(layout(256).is_ok() && layout(0).is_err() && layout(257).is_err());
        for len in 1..=256 {
            let l = layout(len).expect("layout");
            assert!(l.used <= l.slots, "{len}");
            let mut seen = vec![false; l.symbols * GROUPS];
            seen[..HEADER_CELLS].iter_mut().for_each(|s| *s = true);
            for u in 0..l.slots {
                let c = l.body_cell(u);
                assert!(!seen[c], "length {len}: cell {c} twice");
                seen[c] = true;
                assert!(l.source(u) < l.used);
            }
            assert!(seen.iter().all(|&s| s), "length {len}: every cell used");
        }
    }

    /// Tone energies of clean cells: the lit tone 1 + noise, the others noise.
    fn energies(cells: &[u8], noise: f32) -> Vec<Vec<f32>> {
        cells
            .chunks(GROUPS)
            .enumerate()
            .map(|(m, symbol)| {
                let mut row = vec![0f32; GROUPS * TONES];
                for (g, &v) in symbol.iter().enumerate() {
                    for t in 0..TONES {
                        let jitter = (crate::modulation::hash2(m as u32, (g * TONES + t) as u32)
                            % 1000) as f32
                            / 1000.0;
                        row[g * TONES + t] = noise * 2.0 * jitter;
                    }
                    row[g * TONES + tone(v as usize)] += 1.0;
                }
                row
            })
            .collect()
    }

    #[test]
    fn clean_cells_decode_back_to_the_payload() {
        let payload: Vec<u8> = (0..199u32).map(|i| (i * 31 % 256) as u8).collect();
        let (l, values) = cells(&payload).expect("cells");
        let e = energies(&values, 0.05);
        let llr = fsk_llrs(&e, &Echo::Subtracted(0.0, 0.0));
        for (cell, &v) in llr.iter().zip(&values) {
            for (bit, x) in cell.iter().enumerate() {
                let b = (v >> (BITS - 1 - bit)) & 1;
                assert!(if b == 0 { *x > 0.0 } else { *x < 0.0 });
            }
        }
        let ldpc = LdpcDecoder::new(ldpc::TWO_THIRDS);
        assert_eq!(decode_body(&llr, &l, &ldpc), Some(payload));
        assert_eq!(decode_header(&llr).map(|h| h.0), Some(199));
    }

    #[test]
    fn silence_and_nonsense_energies_give_no_llrs_and_no_panic() {
        let zeros = vec![vec![0f32; GROUPS * TONES]; 3];
        let mut one_nan = vec![0.5f32; GROUPS * TONES];
        one_nan[17] = f32::NAN;
        let odd = vec![
            vec![f32::NAN; 5],
            vec![f32::INFINITY; GROUPS * TONES],
            one_nan,
            vec![1e30; GROUPS * TONES],
        ];
        for echo in [Echo::Subtracted(0.0, 0.0), Echo::Subtracted(0.5, 0.5)] {
            assert!(fsk_llrs(&zeros, &echo).iter().flatten().all(|&x| x == 0.0));
            assert!(
                fsk_llrs(&odd, &echo)
                    .iter()
                    .flatten()
                    .all(|x| x.is_finite())
            );
        }
        for rows in [&zeros, &odd] {
            let coef = echo_predictor(rows, 2);
            assert!(coef.iter().all(|c| c.is_finite()));
            let llr = fsk_llrs(rows, &Echo::Predicted(coef));
            assert!(llr.iter().flatten().all(|x| x.is_finite()));
        }
        assert_eq!(decode_header(&[]), None);
    }

    #[test]
    fn the_echo_predictor_finds_how_much_of_the_last_symbol_rings_on() {
        // Each bin: what is lit now, plus an echo of its energy one symbol
        // ago, half as strong on average and, like a room's, fluctuating
        // (exponentially distributed around that).
        let mut state = 0x2545_f491_u32;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state
        };
        let mut exponential = || -(1.0 - (next() % 1_000_000) as f32 / 1_000_000.0).ln();
        let mut rows: Vec<Vec<f32>> = Vec::new();
        let mut lit_tones = Vec::new();
        for t in 0..60 {
            let mut row = vec![0f32; GROUPS * TONES];
            for e in row.iter_mut() {
                *e = 0.02 * exponential();
            }
            for g in 0..GROUPS {
                let lit = (exponential() * 1000.0) as usize % TONES;
                row[g * TONES + lit] += exponential();
                lit_tones.push(lit);
            }
            if t > 0 {
                for (e, before) in row.iter_mut().zip(&rows[t - 1]) {
                    *e += 0.5 * before * exponential();
                }
            }
            rows.push(row);
        }
        let coef = echo_predictor(&rows, 2);
        assert!(
            (coef[0] - 0.5).abs() < 0.05 && coef[1].abs() < 0.05,
            "{coef:?}"
        );
        // Predicting the echo as noise beats ignoring it on these rows.
        let values = lit_tones;
        let wrong = |llr: &[[f32; BITS]]| {
            llr.iter()
                .zip(&values)
                .filter(|&(cell, &lit)| {
                    let v = (0..TONES).find(|&v| tone(v) == lit).unwrap_or(0);
                    cell.iter()
                        .enumerate()
                        .any(|(bit, &x)| ((v >> (BITS - 1 - bit)) & 1 == 0) != (x > 0.0))
                })
                .count()
        };
        let predicted = wrong(&fsk_llrs(&rows, &Echo::Predicted(coef)));
        let ignored = wrong(&fsk_llrs(&rows, &Echo::Subtracted(0.0, 0.0)));
        assert!(predicted < ignored, "{predicted} against {ignored}");
    }

    #[test]
    fn tone_drift_measures_a_clock_offset_from_the_tones() {
        use std::f64::consts::TAU;
        let n = PARAMS.fft;
        for ppm in [-300.0, -50.0, 0.0, 120.0, 300.0] {
            let eps: f64 = ppm * 1e-6;
            let rows: Vec<Vec<Complex32>> = (0..4u32)
                .map(|m| {
                    // One lit tone per group, away from the group's edges.
                    let lit: Vec<usize> = (0..GROUPS)
                        .map(|g| {
                            PARAMS.first_bin
                                + g * TONES
                                + 1
                                + (crate::modulation::hash2(m, g as u32) % 14) as usize
                        })
                        .collect();
                    let x: Vec<f64> = (0..n)
                        .map(|i| {
                            lit.iter()
                                .map(|&k| {
                                    (TAU * k as f64 * (1.0 + eps) * i as f64 / n as f64 + k as f64)
                                        .sin()
                                })
                                .sum()
                        })
                        .collect();
                    (PARAMS.first_bin..PARAMS.first_bin + PARAMS.bins)
                        .map(|k| {
                            let (re, im) =
                                x.iter()
                                    .enumerate()
                                    .fold((0f64, 0f64), |(re, im), (i, &v)| {
                                        let a = TAU * (k * i) as f64 / n as f64;
                                        (re + v * a.cos(), im - v * a.sin())
                                    });
                            Complex32::new(re as f32, im as f32)
                        })
                        .collect()
                })
                .collect();
            let got = tone_drift(&rows) * 1e6;
            assert!((got - ppm).abs() < 10.0, "{ppm} ppm measured as {got:.1}");
        }
        assert_eq!(tone_drift(&[]), 0.0);
        assert_eq!(tone_drift(&[vec![Complex32::default(); PARAMS.bins]]), 0.0);
    }
}
