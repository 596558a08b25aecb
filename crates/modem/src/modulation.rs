//! Bits on carriers: the byte stream is cut into cells of `bits_per_cell`
//! bits (most significant bit first), cells fill each symbol in carrier
//! order, symbol after symbol. Unused cells of the last symbol carry
//! pseudo-random filler.
//!
//! * DQPSK: cell value v (2 bits) is Gray-coded to a quarter turn q
//!   (00→0, 01→1, 11→2, 10→3); carrier k of data symbol n has phase
//!   φ(n-1, k) + q·π/2, where symbol 0 is a known reference with phases
//!   [`reference_phase`]. The receiver needs no channel estimate.
//! * M-FSK: carriers form groups of M = 2^bits consecutive bins; cell value v
//!   lights bin gray(v) of its group, with pseudo-random phase. The receiver
//!   picks the strongest bin of each group (non-coherent, no phase needed).
//!
//! Demodulation returns each cell's value and a reliability (larger is more
//! trustworthy) that the Reed–Solomon decoder uses to choose erasures.

use realfft::num_complex::Complex32;

use super::profile::{Modulation, Params};

/// Deterministic pseudo-random 32-bit value for (a, b) (a hash, so the
/// format does not depend on a PRNG's sequence).
pub(crate) fn hash2(a: u32, b: u32) -> u32 {
    let mut x = a.wrapping_mul(0x9E37_79B1) ^ b.wrapping_mul(0x85EB_CA77) ^ 0x5151_5151;
    x ^= x >> 16;
    x = x.wrapping_mul(0x7FEB_352D);
    x ^= x >> 15;
    x = x.wrapping_mul(0x846C_A68B);
    x ^ (x >> 16)
}

/// Reference phase of bin `k` (a multiple of π/2).
pub(crate) fn reference_phase(k: usize) -> f32 {
    (hash2(1, k as u32) % 4) as f32 * std::f32::consts::FRAC_PI_2
}

const GRAY_QPSK: [u8; 4] = [0, 1, 3, 2];

pub(crate) fn gray(v: u8) -> u8 {
    v ^ (v >> 1)
}

fn gray_inverse(mut g: u8) -> u8 {
    let mut v = g;
    while g > 0 {
        g >>= 1;
        v ^= g;
    }
    v
}

/// Cuts `bytes` into cells, padded with filler to whole symbols.
pub(crate) fn cells_from_bytes(bytes: &[u8], p: &Params) -> Vec<u8> {
    let bits = p.bits_per_cell();
    let symbols = p.data_symbols(bytes.len());
    let total = symbols * p.cells_per_symbol();
    let mut cells = Vec::with_capacity(total);
    let mut acc = 0u32;
    let mut have = 0;
    for &b in bytes {
        acc = (acc << 8) | b as u32;
        have += 8;
        while have >= bits {
            have -= bits;
            cells.push(((acc >> have) & ((1 << bits) - 1)) as u8);
        }
    }
    if have > 0 {
        cells.push(((acc << (bits - have)) & ((1 << bits) - 1)) as u8);
    }
    while cells.len() < total {
        cells.push((hash2(2, cells.len() as u32) & ((1 << bits) - 1)) as u8);
    }
    cells
}

/// Reassembles `count` bytes from demodulated cells; a byte's reliability is
/// the lowest of the cells it touches.
pub(crate) fn bytes_from_cells(
    cells: &[(u8, f32)],
    count: usize,
    p: &Params,
) -> (Vec<u8>, Vec<f32>) {
    let bits = p.bits_per_cell();
    let mut bytes = Vec::with_capacity(count);
    let mut rel = Vec::with_capacity(count);
    for i in 0..count {
        let mut byte = 0u8;
        let mut r = f32::INFINITY;
        for bit in 0..8 {
            let pos = i * 8 + bit;
            let (value, cr) = cells.get(pos / bits).copied().unwrap_or((0, 0.0));
            let shift = bits - 1 - pos % bits;
            byte = (byte << 1) | ((value >> shift) & 1);
            r = r.min(cr);
        }
        bytes.push(byte);
        rel.push(if r.is_finite() { r } else { 0.0 });
    }
    (bytes, rel)
}

/// Spectra of every symbol (reference first, if any) carrying `cells`.
pub(crate) fn spectra(cells: &[u8], p: &Params) -> Vec<Vec<(usize, Complex32)>> {
    let per = p.cells_per_symbol().max(1);
    let mut out = Vec::new();
    match p.modulation {
        // Format 2 lays out its own cells (`frame2::cells`).
        Modulation::Qpsk => {}
        Modulation::Dqpsk => {
            let mut phase: Vec<f32> = (0..p.bins)
                .map(|i| reference_phase(p.first_bin + i))
                .collect();
            let render = |phase: &[f32]| -> Vec<(usize, Complex32)> {
                phase
                    .iter()
                    .enumerate()
                    .map(|(i, &ph)| (p.first_bin + i, Complex32::from_polar(1.0, ph)))
                    .collect()
            };
            out.push(render(&phase));
            for symbol in cells.chunks(per) {
                for (ph, &v) in phase.iter_mut().zip(symbol) {
                    let q = GRAY_QPSK[(v & 3) as usize];
                    *ph = (*ph + q as f32 * std::f32::consts::FRAC_PI_2) % std::f32::consts::TAU;
                }
                out.push(render(&phase));
            }
        }
        Modulation::Mfsk { bits } => {
            let m = 1usize << bits;
            // Lit tones carry the power of a whole group.
            let amp = (m as f32).sqrt();
            for (n, symbol) in cells.chunks(per).enumerate() {
                let spec = symbol
                    .iter()
                    .enumerate()
                    .map(|(g, &v)| {
                        let k = p.first_bin + g * m + gray(v) as usize;
                        let ph = (hash2(3 + n as u32, k as u32) % 1024) as f32
                            * std::f32::consts::TAU
                            / 1024.0;
                        (k, Complex32::from_polar(amp, ph))
                    })
                    .collect();
                out.push(spec);
            }
        }
    }
    out
}

/// Hard decisions and reliabilities from differential products
/// d = current · conj(reference), one per carrier.
fn decide_dqpsk(diffs: &[Complex32]) -> Vec<(u8, f32)> {
    let mean = diffs.iter().map(|d| d.norm()).sum::<f32>() / diffs.len().max(1) as f32;
    diffs
        .iter()
        .map(|d| {
            let angle = d.arg().rem_euclid(std::f32::consts::TAU);
            let q = ((angle / std::f32::consts::FRAC_PI_2).round() as usize) % 4;
            let off = (angle - q as f32 * std::f32::consts::FRAC_PI_2).abs();
            let off = off.min(std::f32::consts::TAU - off);
            let margin = (std::f32::consts::FRAC_PI_4 - off).max(0.0);
            let value = GRAY_QPSK.iter().position(|&g| g as usize == q).unwrap_or(0) as u8;
            let strength = if mean > 0.0 {
                (d.norm() / mean).min(2.0)
            } else {
                0.0
            };
            (value, margin * strength)
        })
        .collect()
}

fn used_bins(spectrum: &[Complex32], p: &Params) -> Vec<Complex32> {
    (p.first_bin..p.first_bin + p.bins)
        .map(|k| spectrum.get(k).copied().unwrap_or(Complex32::new(0.0, 0.0)))
        .collect()
}

/// DQPSK cells of one symbol from its spectrum and the previous one
/// (plain differential detection).
#[cfg(test)]
pub(crate) fn demod_dqpsk(prev: &[Complex32], cur: &[Complex32], p: &Params) -> Vec<(u8, f32)> {
    let prev = used_bins(prev, p);
    let diffs: Vec<Complex32> = used_bins(cur, p)
        .iter()
        .zip(&prev)
        .map(|(c, q)| c * q.conj())
        .collect();
    decide_dqpsk(&diffs)
}

/// DQPSK cells of every data symbol, given the spectra of the reference and
/// data symbols, by decision-feedback differential detection: each carrier's
/// reference is the previous symbol plus `memory` times the older reference
/// turned by the decided step, so noise and echoes in the reference average
/// out over symbols (memory 0 is plain differential detection).
pub(crate) fn demod_dqpsk_sequence(
    spectra: &[Vec<Complex32>],
    p: &Params,
    memory: f32,
) -> Vec<(u8, f32)> {
    let Some(first) = spectra.first() else {
        return Vec::new();
    };
    let mut reference = used_bins(first, p);
    let mut cells = Vec::with_capacity(spectra.len().saturating_sub(1) * p.bins);
    for spectrum in &spectra[1..] {
        let cur = used_bins(spectrum, p);
        let diffs: Vec<Complex32> = cur
            .iter()
            .zip(&reference)
            .map(|(c, r)| c * r.conj())
            .collect();
        let decided = decide_dqpsk(&diffs);
        for ((r, c), &(value, _)) in reference.iter_mut().zip(&cur).zip(&decided) {
            let q = GRAY_QPSK[(value & 3) as usize] as f32;
            let turn = Complex32::from_polar(1.0, q * std::f32::consts::FRAC_PI_2);
            *r = c + *r * turn * memory;
        }
        cells.extend(decided);
    }
    cells
}

/// M-FSK cells of one symbol from its bin energies.
fn decide_mfsk(energy: &[f32], p: &Params, bits: usize) -> Vec<(u8, f32)> {
    let m = 1usize << bits;
    energy
        .chunks_exact(m)
        .take(p.bins / m)
        .map(|group| {
            let mut best = (0usize, f32::NEG_INFINITY);
            let mut second = f32::NEG_INFINITY;
            for (t, &e) in group.iter().enumerate() {
                if e > best.1 {
                    second = best.1;
                    best = (t, e);
                } else if e > second {
                    second = e;
                }
            }
            let rel = if best.1 > 0.0 {
                (1.0 - second.max(0.0) / best.1).clamp(0.0, 1.0)
            } else {
                0.0
            };
            (gray_inverse(best.0 as u8), rel)
        })
        .collect()
}

/// M-FSK cells of one symbol from its spectrum.
#[cfg(test)]
pub(crate) fn demod_mfsk(cur: &[Complex32], p: &Params, bits: usize) -> Vec<(u8, f32)> {
    let energy: Vec<f32> = used_bins(cur, p).iter().map(|c| c.norm_sqr()).collect();
    decide_mfsk(&energy, p, bits)
}

/// Energies of the used bins of every symbol.
pub(crate) fn tone_energies(spectra: &[Vec<Complex32>], p: &Params) -> Vec<Vec<f32>> {
    spectra
        .iter()
        .map(|s| used_bins(s, p).iter().map(|c| c.norm_sqr()).collect())
        .collect()
}

/// Echo suppression for M-FSK: each bin's energy is reduced by `echo.0`
/// times an exponentially decaying (factor `echo.1` per symbol) sum of its
/// energy in earlier symbols, so the reverberation of recently lit bins does
/// not outshine the bin lit now. `(0, 0)` changes nothing; the right values
/// depend on the room (RT60 2 s at 48 ms symbols decays by about 0.7 per
/// symbol), so the decoder tries several. Rows longer than the first are
/// cut to its length.
pub(crate) fn suppress_echo(energy: &[Vec<f32>], echo: (f32, f32)) -> Vec<Vec<f32>> {
    let mut history = vec![0f32; energy.first().map_or(0, Vec::len)];
    energy
        .iter()
        .map(|row| {
            let cleaned = row
                .iter()
                .zip(&history)
                .map(|(e, h)| e - echo.0 * h)
                .collect();
            for (h, e) in history.iter_mut().zip(row) {
                *h = e + echo.1 * *h;
            }
            cleaned
        })
        .collect()
}

/// M-FSK cells of every symbol, with echo suppression ([`suppress_echo`]).
pub(crate) fn demod_mfsk_sequence(
    spectra: &[Vec<Complex32>],
    p: &Params,
    bits: usize,
    echo: (f32, f32),
) -> Vec<(u8, f32)> {
    suppress_echo(&tone_energies(spectra, p), echo)
        .iter()
        .flat_map(|energy| decide_mfsk(energy, p, bits))
        .collect()
}

/// The relative frequency offset of the tones as heard (positive: higher
/// than sent), from where the strongest tone of every cell really lies
/// between its bins, each weighed by its energy: a sender clock off by ε
/// moves bin k by about ε·k, which at 300 ppm is a quarter of a bin at the
/// top of the band — enough to leak a lit tone's energy into its
/// neighbours. `spectra` holds the used bins of each symbol, in groups of
/// `tones` (one lit per group) from FFT bin `first_bin`.
///
/// Per tone, Quinn's first estimator: a steady tone δ bins above bin k
/// in a rectangular window has X(k−1)/X(k) = δ/(1 + δ) and
/// X(k+1)/X(k) = −δ/(1 − δ), both real; the real parts of the two ratios
/// give δ from either side (the right one when both say the tone is to the
/// right). Noise and echo are not in phase with the tone, so they average
/// out of the real parts instead of pulling δ towards 0 as magnitudes do.
/// Tones at a group's edge are left out (their neighbour belongs to another
/// group); 0 if nothing is heard.
pub(crate) fn tone_drift(spectra: &[Vec<Complex32>], first_bin: usize, tones: usize) -> f64 {
    if tones < 3 {
        return 0.0;
    }
    let (mut num, mut den) = (0f64, 0f64);
    for row in spectra {
        for (g, group) in row.chunks_exact(tones).enumerate() {
            let Some((t, peak)) = group
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.norm_sqr().total_cmp(&b.1.norm_sqr()))
            else {
                continue;
            };
            let energy = peak.norm_sqr();
            if t == 0 || t == tones - 1 || !(energy > 0.0 && energy.is_finite()) {
                continue;
            }
            let left = (group[t - 1] / peak).re;
            let right = (group[t + 1] / peak).re;
            let from_left = left / (1.0 - left);
            let from_right = -right / (1.0 - right);
            let offset = if from_left > 0.0 && from_right > 0.0 {
                from_right
            } else {
                from_left
            };
            if !offset.is_finite() {
                continue;
            }
            let offset = f64::from(offset.clamp(-0.5, 0.5));
            let bin = (first_bin + g * tones + t) as f64;
            let weight = f64::from(energy);
            num += weight * offset * bin;
            den += weight * bin * bin;
        }
    }
    if den > 0.0 && (num / den).is_finite() {
        num / den
    } else {
        0.0
    }
}

/// One cell's bit LLRs (ln P(bit = 0) / P(bit = 1), first bit the most
/// significant of the symbol value) from the log-metric of each symbol
/// value, summed around the largest so nothing overflows. A value that is
/// not finite (a hostile input) says nothing: 0. Clamped to ±`limit`.
pub(crate) fn bit_llrs(metric: &[f32], out: &mut [f32], limit: f32) {
    let top = metric.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let bits = out.len();
    for (bit, llr) in out.iter_mut().enumerate() {
        let mask = 1 << (bits - 1 - bit);
        let (mut zero, mut one) = (0f32, 0f32);
        for (v, &x) in metric.iter().enumerate() {
            let p = (x - top).exp();
            if v & mask == 0 {
                zero += p;
            } else {
                one += p;
            }
        }
        let value = (zero.max(1e-30) / one.max(1e-30)).ln();
        *llr = if value.is_finite() && zero.is_finite() && one.is_finite() {
            value.clamp(-limit, limit)
        } else {
            0.0
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::Format;

    #[test]
    fn gray_codes_invert() {
        for v in 0..16u8 {
            assert_eq!(gray_inverse(gray(v)), v);
        }
    }

    #[test]
    fn cells_round_trip_bytes() {
        for profile in [Format::FastV1, Format::RobustV1] {
            let p = profile.params();
            let bytes: Vec<u8> = (0..57u8).map(|i| i.wrapping_mul(73)).collect();
            let cells = cells_from_bytes(&bytes, &p);
            assert_eq!(cells.len() % p.cells_per_symbol(), 0);
            let soft: Vec<(u8, f32)> = cells.iter().map(|&c| (c, 1.0)).collect();
            let (back, rel) = bytes_from_cells(&soft, bytes.len(), &p);
            assert_eq!(back, bytes);
            assert!(rel.iter().all(|&r| r == 1.0));
        }
    }

    fn dense(spec: &[(usize, Complex32)], size: usize) -> Vec<Complex32> {
        let mut v = vec![Complex32::new(0.0, 0.0); size];
        for &(k, c) in spec {
            v[k] = c;
        }
        v
    }

    #[test]
    fn dqpsk_survives_a_per_carrier_channel_and_a_common_rotation() {
        let p = Format::FastV1.params();
        let bytes: Vec<u8> = (0..80u8).collect();
        let cells = cells_from_bytes(&bytes, &p);
        let specs = spectra(&cells, &p);
        assert_eq!(specs.len(), 1 + p.data_symbols(bytes.len()));
        // Arbitrary complex gain per carrier: differential detection ignores it.
        let chan = |s: &[(usize, Complex32)]| -> Vec<Complex32> {
            let mut d = dense(s, p.fft / 2 + 1);
            for (k, v) in d.iter_mut().enumerate() {
                *v *= Complex32::from_polar(0.2 + (k % 7) as f32, k as f32 * 1.3);
            }
            d
        };
        let mut soft = Vec::new();
        for w in specs.windows(2) {
            soft.extend(demod_dqpsk(&chan(&w[0]), &chan(&w[1]), &p));
        }
        let (back, _) = bytes_from_cells(&soft, bytes.len(), &p);
        assert_eq!(back, bytes);
        let received: Vec<Vec<Complex32>> = specs.iter().map(|s| chan(s)).collect();
        for memory in [0.0, 0.6, 1.0] {
            let soft = demod_dqpsk_sequence(&received, &p, memory);
            let (back, _) = bytes_from_cells(&soft, bytes.len(), &p);
            assert_eq!(back, bytes, "memory {memory}");
        }
    }

    #[test]
    fn mfsk_round_trips_and_flags_ambiguous_groups() {
        let p = Format::RobustV1.params();
        let bits = p.bits_per_cell();
        let bytes: Vec<u8> = (0..100u8).map(|i| i ^ 0x5a).collect();
        let cells = cells_from_bytes(&bytes, &p);
        let specs = spectra(&cells, &p);
        let mut soft = Vec::new();
        for s in &specs {
            soft.extend(demod_mfsk(&dense(s, p.fft / 2 + 1), &p, bits));
        }
        let (back, rel) = bytes_from_cells(&soft, bytes.len(), &p);
        assert_eq!(back, bytes);
        assert!(rel.iter().all(|&r| r > 0.99));
        // A group with two equal tones is unreliable.
        let mut d = dense(&specs[0], p.fft / 2 + 1);
        d[p.first_bin] = Complex32::new(4.0, 0.0);
        d[p.first_bin + 1] = Complex32::new(0.0, 4.0);
        for t in 2..16 {
            d[p.first_bin + t] = Complex32::new(0.0, 0.0);
        }
        assert!(demod_mfsk(&d, &p, bits)[0].1 < 0.01);
    }
}
