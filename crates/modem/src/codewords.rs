//! A payload and its CRC-32 over shortened LDPC codewords: what both
//! version-2 formats carry (docs/modem.md §3b, §3c), whatever cells they
//! put the code bits on.
//!
//! The payload and its CRC-32 (big-endian) are read most significant bit
//! first and cut into as few codewords as hold them, the bits shared out as
//! evenly as possible (the first codewords take one more bit when they do
//! not divide). Each codeword is shortened: its information bits beyond its
//! share are zeros, known to both sides and not sent. Sent: each codeword's
//! information share, then its parity, codeword after codeword.

use super::ModemError;
use super::crc::crc32;
use super::framing::MAX_PAYLOAD;
use super::ldpc::{self, Code, LdpcDecoder};

/// Bytes of CRC-32 after the payload.
pub(crate) const CRC_LEN: usize = 4;
/// Belief-propagation iterations per decoding attempt.
const ITERATIONS: usize = 50;
/// LLR of a shortened (known zero) bit.
const KNOWN_ZERO: f32 = 60.0;

/// Multipliers tried, in order, for a frame's cell permutation.
const SPREAD: [usize; 4] = [97, 101, 103, 107];

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// Where a payload's code stream goes in a frame, alike for both formats 2:
/// the stream is cut into cells of `bits_per_cell` bits (`used` of them),
/// the frame has as few symbols as hold them after its header cells, and
/// every cell that is not the header's is a **slot**. Body cell u goes to
/// slot (u·spread) mod slots and carries [`Placement::source`]; which cell a
/// slot is, is the format's own business.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Placement {
    /// Payload bytes.
    pub len: usize,
    /// Data symbols.
    pub symbols: usize,
    /// Body cells carrying code bits.
    pub used: usize,
    /// Slots for body cells (every data cell but the header's).
    pub slots: usize,
    /// The permutation multiplier: body cell u goes to slot (u·spread) mod
    /// slots. The first of 97, 101, 103, 107 coprime to `slots`: they are
    /// primes, and no slot count of either format (at most 4·672) is
    /// divisible by all four; 1 would keep the map a bijection anyway.
    pub spread: usize,
}

impl Placement {
    /// The placement of a `len`-byte payload (1..=256) coded with `code`.
    pub fn new(
        len: usize,
        code: Code,
        bits_per_cell: usize,
        cells_per_symbol: usize,
        header_cells: usize,
    ) -> Result<Placement, ModemError> {
        if len == 0 {
            return Err(ModemError::EmptyPayload);
        }
        if len > MAX_PAYLOAD {
            return Err(ModemError::PayloadTooLong {
                len,
                max: MAX_PAYLOAD,
            });
        }
        // Payload and CRC are whole bytes and a codeword's parity a multiple
        // of 4 bits, so the code bits fill whole cells of 2 or 4 bits.
        let used = coded_bits(len, code) / bits_per_cell;
        let symbols = (header_cells + used).div_ceil(cells_per_symbol);
        let slots = symbols * cells_per_symbol - header_cells;
        let spread = SPREAD
            .into_iter()
            .find(|&s| gcd(s, slots) == 1)
            .unwrap_or(1);
        Ok(Placement {
            len,
            symbols,
            used,
            slots,
            spread,
        })
    }

    /// The slot of body cell `u` (0..slots).
    pub fn slot(&self, u: usize) -> usize {
        u * self.spread % self.slots
    }

    /// The stream cell that body cell `u` carries: itself for the first
    /// `used`, then copies of cells spread evenly over the stream, so no
    /// slot is wasted on filler.
    pub fn source(&self, u: usize) -> usize {
        if u < self.used {
            return u;
        }
        let extra = self.slots - self.used;
        (u - self.used) * self.used / extra.max(1)
    }
}

/// Information bits of each codeword for a `len`-byte payload.
pub(crate) fn info_bits(len: usize, code: Code) -> Vec<usize> {
    let bits = (len + CRC_LEN) * 8;
    let codewords = bits.div_ceil(code.k());
    (0..codewords)
        .map(|i| bits / codewords + usize::from(i < bits % codewords))
        .collect()
}

/// Code bits sent for a `len`-byte payload.
pub(crate) fn coded_bits(len: usize, code: Code) -> usize {
    let shares = info_bits(len, code);
    shares.iter().sum::<usize>() + shares.len() * code.parity()
}

/// The code bits (0/1) of `payload`, in the order sent.
pub(crate) fn encode(payload: &[u8], code: Code) -> Vec<u8> {
    let mut body = payload.to_vec();
    body.extend_from_slice(&crc32(payload).to_be_bytes());
    let bits: Vec<u8> = body
        .iter()
        .flat_map(|&byte| (0..8).rev().map(move |i| (byte >> i) & 1))
        .collect();
    let mut out = Vec::with_capacity(coded_bits(payload.len(), code));
    let mut at = 0;
    for k in info_bits(payload.len(), code) {
        let mut info = vec![0u8; code.k()];
        info[..k].copy_from_slice(&bits[at..at + k]);
        at += k;
        let word = ldpc::encode(code, &info);
        out.extend_from_slice(&word[..k]);
        out.extend_from_slice(&word[code.k()..]);
    }
    out
}

/// Decodes a `len`-byte payload from the LLRs (positive: bit 0) of its code
/// bits in the order sent. The payload if every codeword decodes and the
/// CRC-32 matches, else the a-posteriori LLRs of the code bits (for a
/// better channel estimate and another try).
pub(crate) fn decode(llr: &[f32], len: usize, ldpc: &LdpcDecoder) -> Result<Vec<u8>, Vec<f32>> {
    let code = ldpc.code();
    let (k_max, parity) = (code.k(), code.parity());
    let mut posterior = Vec::with_capacity(llr.len());
    let mut data = Vec::with_capacity((len + CRC_LEN) * 8);
    let mut ok = true;
    let mut at = 0;
    for k in info_bits(len, code) {
        let Some(sent) = llr.get(at..at + k + parity) else {
            return Err(vec![0.0; llr.len()]);
        };
        let mut word = vec![KNOWN_ZERO; ldpc::N];
        word[..k].copy_from_slice(&sent[..k]);
        word[k_max..].copy_from_slice(&sent[k..]);
        at += k + parity;
        let (decoded, post) = ldpc.decode(&word, ITERATIONS);
        posterior.extend_from_slice(&post[..k]);
        posterior.extend_from_slice(&post[k_max..]);
        match decoded {
            Some(info) => data.extend_from_slice(&info[..k]),
            None => ok = false,
        }
    }
    if ok {
        let bytes: Vec<u8> = data
            .chunks(8)
            .map(|b| b.iter().fold(0u8, |acc, &x| (acc << 1) | x))
            .collect();
        if bytes.len() == len + CRC_LEN {
            let (payload, crc) = bytes.split_at(len);
            if crc32(payload).to_be_bytes() == crc {
                return Ok(payload.to_vec());
            }
        }
    }
    Err(posterior)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_cover_payload_and_crc_in_as_few_codewords_as_hold_them() {
        assert_eq!(info_bits(200, ldpc::HALF), vec![816, 816]);
        assert_eq!(info_bits(200, ldpc::TWO_THIRDS), vec![816, 816]);
        assert_eq!(info_bits(1, ldpc::TWO_THIRDS), vec![40]);
        for len in 1..=256 {
            for code in [ldpc::HALF, ldpc::TWO_THIRDS] {
                let shares = info_bits(len, code);
                assert_eq!(shares.iter().sum::<usize>(), (len + CRC_LEN) * 8);
                assert!(shares.iter().all(|&k| k <= code.k()));
                assert_eq!(shares.len(), ((len + CRC_LEN) * 8).div_ceil(code.k()));
            }
        }
    }

    #[test]
    fn clean_bits_decode_and_a_wrong_crc_does_not() {
        let payload: Vec<u8> = (0..150u32).map(|i| (i * 7 % 256) as u8).collect();
        for code in [ldpc::HALF, ldpc::TWO_THIRDS] {
            let bits = encode(&payload, code);
            assert_eq!(bits.len(), coded_bits(payload.len(), code));
            let llr: Vec<f32> = bits
                .iter()
                .map(|&b| if b == 0 { 5.0 } else { -5.0 })
                .collect();
            let ldpc = LdpcDecoder::new(code);
            assert_eq!(decode(&llr, payload.len(), &ldpc), Ok(payload.clone()));
            // The same bits read as a payload one byte shorter: the CRC fails.
            assert!(decode(&llr[..llr.len() - 8], payload.len() - 1, &ldpc).is_err());
            assert!(decode(&llr[..100], payload.len(), &ldpc).is_err());
        }
    }
}
