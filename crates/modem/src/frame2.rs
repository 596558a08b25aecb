//! Format version 2 of the fast profile (docs/modem.md §2b, §3b): coherent
//! QPSK on 672 carriers against a known reference symbol, the 802.11n LDPC
//! code on soft decisions, a header in a first-order Reed–Muller code, and a
//! second chirp after the data whose distance from the first measures the
//! sender's clock.
//!
//! Pure functions: what the cells of a frame are ([`layout`], [`cells`]), and
//! from soft cell values back to a payload ([`decode_header`],
//! [`decode_body`]). The decoder does the signal processing around them.

use realfft::num_complex::Complex32;

use super::ModemError;
use super::codewords;
use super::ldpc::{self, LdpcDecoder};
use super::modulation::hash2;
use super::profile::{Modulation, Params};

/// The fast profile's version-2 numbers. `id`, `parity_percent` and
/// `header_parity` belong to the Reed–Solomon formats and are not used here
/// (format 2 is told apart by its chirp, its header is Reed–Muller).
pub(crate) const PARAMS: Params = Params {
    id: 3,
    fft: 4096,
    cp: 256,
    ramp: 64,
    backoff: 48,
    first_bin: 853,
    bins: CARRIERS,
    modulation: Modulation::Qpsk,
    chirp_len: 2048,
    chirp_f0: 9_900.0,
    chirp_f1: 17_900.0,
    parity_percent: 0,
    header_parity: 0,
    threshold: 0.22,
};

/// Data carriers per symbol.
pub(crate) const CARRIERS: usize = 672;
/// Header cells (128 Reed–Muller bits, two per cell), all in data symbol 0.
pub(crate) const HEADER_CELLS: usize = 64;

/// Where everything of a `len`-byte payload goes: the shared placement,
/// its slots being the data cells that are not the header's.
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
    codewords::Placement::new(len, ldpc::HALF, 2, CARRIERS, HEADER_CELLS).map(Layout)
}

impl Layout {
    /// Samples from the first chirp's start to the second chirp's start.
    pub fn postamble_at(&self) -> usize {
        postamble_offset(self.symbols)
    }

    /// Total frame length in samples (both chirps; the last symbol's fade
    /// lies under the second chirp).
    pub fn frame_len(&self) -> usize {
        self.postamble_at() + PARAMS.chirp_len
    }

    /// Data cell index (symbol · CARRIERS + carrier) of body slot `s`.
    fn slot_cell(s: usize) -> usize {
        // Slots are the data cells in order, skipping the header's cells
        // (all in symbol 0).
        if s >= CARRIERS - HEADER_CELLS {
            return s + HEADER_CELLS;
        }
        let mut cell = s;
        for &h in HEADER_POSITIONS.iter() {
            if h <= cell {
                cell += 1;
            } else {
                break;
            }
        }
        cell
    }

    /// Data cell of body cell `u` (0..slots).
    pub fn body_cell(&self, u: usize) -> usize {
        Self::slot_cell(self.slot(u))
    }
}

/// Samples from the first chirp's start to the second's in a frame of
/// `symbols` data symbols.
pub(crate) fn postamble_offset(symbols: usize) -> usize {
    PARAMS.chirp_len + (1 + symbols) * PARAMS.symbol_len()
}

/// Carriers of data symbol 0 holding the header: j-th at ⌊(2j+1)·672/128⌋.
pub(crate) const HEADER_POSITIONS: [usize; HEADER_CELLS] = header_positions();

const fn header_positions() -> [usize; HEADER_CELLS] {
    let mut out = [0; HEADER_CELLS];
    let mut j = 0;
    while j < HEADER_CELLS {
        out[j] = (2 * j + 1) * CARRIERS / (2 * HEADER_CELLS);
        j += 1;
    }
    out
}

/// QPSK point of two bits: (1 − 2·b0 + j·(1 − 2·b1)) / √2.
pub(crate) fn qpsk(b0: u8, b1: u8) -> Complex32 {
    let s = std::f32::consts::FRAC_1_SQRT_2;
    Complex32::new(
        if b0 & 1 == 0 { s } else { -s },
        if b1 & 1 == 0 { s } else { -s },
    )
}

/// Reference symbol value of carrier `i` (0..672).
pub(crate) fn reference(i: usize) -> Complex32 {
    let v = hash2(5, i as u32);
    qpsk((v & 1) as u8, ((v >> 1) & 1) as u8)
}

/// Header bits: the first-order Reed–Muller code RM(1,7) of `len − 1`:
/// bit j = parity((v & 0x7F) & j) XOR (v >> 7).
pub(crate) fn header_bits(len: usize) -> [u8; 128] {
    let v = (len - 1) as u32 & 0xFF;
    let mut out = [0u8; 128];
    for (j, b) in out.iter_mut().enumerate() {
        *b = (((v & 0x7F) & j as u32).count_ones() & 1) as u8 ^ (v >> 7) as u8;
    }
    out
}

/// Every data cell's value (symbol-major), reference symbol not included.
pub(crate) fn cells(payload: &[u8]) -> Result<(Layout, Vec<Complex32>), ModemError> {
    let layout = layout(payload.len())?;
    let mut cells = vec![Complex32::default(); layout.symbols * CARRIERS];
    let header = header_bits(payload.len());
    for (j, &pos) in HEADER_POSITIONS.iter().enumerate() {
        cells[pos] = qpsk(header[2 * j], header[2 * j + 1]);
    }
    let bits = codewords::encode(payload, ldpc::HALF);
    for u in 0..layout.slots {
        let v = layout.source(u);
        cells[layout.body_cell(u)] = qpsk(bits[2 * v], bits[2 * v + 1]);
    }
    Ok((layout, cells))
}

/// Decodes the header from the 128 LLRs of its cells (positive: bit 0), by
/// a fast Hadamard transform (maximum-likelihood for RM(1,7)). Returns the
/// payload length and the confidence: the winning correlation over the sum
/// of |LLR| (1 for a clean header, about 0.3 for noise).
pub(crate) fn decode_header(llr: &[f32]) -> Option<(usize, f32)> {
    if llr.len() != 128 {
        return None;
    }
    decode_rm1(llr).map(|(v, confidence)| (v as usize + 1, confidence))
}

/// Maximum-likelihood decoding of the first-order Reed–Muller code
/// RM(1, m) from the LLRs of its 2^m bits (bit j = parity(v & j) XOR top
/// bit of v), by a fast Hadamard transform: the m + 1 bits of v and the
/// confidence, the winning correlation over the sum of |LLR|. None unless
/// the length is a power of two from 2 to 2^16, or on silence.
pub(crate) fn decode_rm1(llr: &[f32]) -> Option<(u32, f32)> {
    let n = llr.len();
    if !(2..=1 << 16).contains(&n) || !n.is_power_of_two() {
        return None;
    }
    let mut w: Vec<f32> = llr.to_vec();
    let mut h = 1;
    while h < n {
        for i in (0..n).step_by(2 * h) {
            for j in i..i + h {
                let (a, b) = (w[j], w[j + h]);
                w[j] = a + b;
                w[j + h] = a - b;
            }
        }
        h *= 2;
    }
    let total: f32 = llr.iter().map(|v| v.abs()).sum();
    let (best, value) = w
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.abs().total_cmp(&b.1.abs()))?;
    if total <= 0.0 || total.is_nan() || !value.is_finite() || !total.is_finite() {
        return None;
    }
    let top = u32::from(*value < 0.0);
    Some((
        (top << n.trailing_zeros()) | best as u32,
        value.abs() / total,
    ))
}

/// Decodes the body from the two LLRs of every data cell (symbol-major,
/// header cells included and ignored). Returns the payload if
/// every codeword decodes and the CRC-32 matches, else the a-posteriori LLRs
/// of the body cells' bits (for another channel estimate).
pub(crate) fn decode_body(
    llr: &[[f32; 2]],
    layout: &Layout,
    ldpc: &LdpcDecoder,
) -> Result<Vec<u8>, Vec<[f32; 2]>> {
    let mut bits = vec![0f32; layout.used * 2];
    for u in 0..layout.slots {
        let cell = llr.get(layout.body_cell(u)).copied().unwrap_or([0.0; 2]);
        let v = layout.source(u);
        bits[2 * v] += cell[0];
        bits[2 * v + 1] += cell[1];
    }
    let posterior = match codewords::decode(&bits, layout.len, ldpc) {
        Ok(payload) => return Ok(payload),
        Err(posterior) => posterior,
    };
    let mut per_cell = vec![[0f32; 2]; llr.len()];
    for u in 0..layout.slots {
        let v = layout.source(u);
        if let Some(c) = per_cell.get_mut(layout.body_cell(u)) {
            *c = [posterior[2 * v], posterior[2 * v + 1]];
        }
    }
    Err(per_cell)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_length_uses_every_cell_exactly_once() {
        let l = layout(200).expect("layout");
        assert_eq!(l.symbols, 3);
        assert_eq!(codewords::info_bits(200, ldpc::HALF), vec![816, 816]);
        assert!(layout(256).is_ok() && layout(0).is_err() && layout(257).is_err());
        for len in 1..=256 {
            let l = layout(len).expect("layout");
            assert!(l.used <= l.slots, "{len}");
            let mut seen = vec![false; l.symbols * CARRIERS];
            for &h in &HEADER_POSITIONS {
                seen[h] = true;
            }
            for u in 0..l.slots {
                let c = l.body_cell(u);
                assert!(!seen[c], "length {len}: cell {c} twice");
                seen[c] = true;
                assert!(l.source(u) < l.used);
            }
            assert!(
                seen.iter().all(|&s| s),
                "length {len}: every cell carries something"
            );
        }
    }

    #[test]
    fn header_round_trips_every_length_through_its_decoder() {
        for len in 1..=256 {
            let llr: Vec<f32> = header_bits(len)
                .iter()
                .map(|&b| if b == 0 { 1.0 } else { -1.0 })
                .collect();
            let (got, confidence) = decode_header(&llr).expect("header");
            assert_eq!(got, len);
            assert!((confidence - 1.0).abs() < 1e-6);
        }
    }

    #[test]
    fn clean_cells_decode_back_to_the_payload() {
        let payload: Vec<u8> = (0..199u32).map(|i| (i * 31 % 256) as u8).collect();
        let (l, values) = cells(&payload).expect("cells");
        let llr: Vec<[f32; 2]> = values.iter().map(|c| [4.0 * c.re, 4.0 * c.im]).collect();
        let ldpc = LdpcDecoder::new(ldpc::HALF);
        assert_eq!(decode_body(&llr, &l, &ldpc), Ok(payload.clone()));
        let header: Vec<f32> = HEADER_POSITIONS.iter().flat_map(|&p| llr[p]).collect();
        assert_eq!(decode_header(&header).map(|h| h.0), Some(199));
    }
}
