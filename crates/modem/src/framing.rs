//! Frame bytes: a small header codeword, then the body codewords interleaved.
//!
//! ```text
//! header (own RS codeword):  [0xA0 | profile id] [payload length - 1] + header_parity
//! body:                      payload || CRC-32(payload) (big-endian), split into
//!                            c = ceil(B / k_max) near-equal RS codewords, each with
//!                            ceil(k * parity_percent / 100) parity bytes,
//!                            byte-interleaved across codewords
//! stream:                    header || interleaved body
//! ```
//!
//! The receiver decodes the header first (it fits in the first symbols), then
//! knows how long the body is. A payload is accepted only if every body
//! codeword decodes and the CRC-32 matches.

use super::ModemError;
use super::crc::crc32;
use super::interleave;
use super::profile::Params;
use super::rs::{BlockCode, ReedSolomon};

/// Largest payload a frame carries.
pub const MAX_PAYLOAD: usize = 256;
/// Data bytes in the header codeword.
const HEADER_DATA: usize = 2;
/// High nibble of the header's first byte.
const HEADER_MAGIC: u8 = 0xA0;
/// CRC bytes appended to the payload.
const CRC_LEN: usize = 4;

/// Header codeword length for a profile.
pub(crate) fn header_len(p: &Params) -> usize {
    HEADER_DATA + p.header_parity
}

fn parity_for(k: usize, p: &Params) -> usize {
    (k * p.parity_percent).div_ceil(100).max(2)
}

/// (data, parity) of each body codeword for a payload of `len` bytes.
pub(crate) fn body_shapes(len: usize, p: &Params) -> Vec<(usize, usize)> {
    let body = len + CRC_LEN;
    let mut k_max = 1;
    while k_max + 1 + parity_for(k_max + 1, p) <= 255 {
        k_max += 1;
    }
    let count = body.div_ceil(k_max);
    (0..count)
        .map(|i| {
            let k = body / count + usize::from(i < body % count);
            (k, parity_for(k, p))
        })
        .collect()
}

/// Stream length in bytes (header and body) for a payload of `len` bytes.
pub(crate) fn stream_len(len: usize, p: &Params) -> usize {
    header_len(p)
        + body_shapes(len, p)
            .iter()
            .map(|(k, r)| k + r)
            .sum::<usize>()
}

/// Builds the byte stream of a frame.
pub(crate) fn build_stream(payload: &[u8], p: &Params) -> Result<Vec<u8>, ModemError> {
    if payload.is_empty() {
        return Err(ModemError::EmptyPayload);
    }
    if payload.len() > MAX_PAYLOAD {
        return Err(ModemError::PayloadTooLong {
            len: payload.len(),
            max: MAX_PAYLOAD,
        });
    }
    let rs = ReedSolomon;
    let header = [HEADER_MAGIC | p.id, (payload.len() - 1) as u8];
    let mut stream = rs.encode(&header, p.header_parity)?;
    let mut body = payload.to_vec();
    body.extend_from_slice(&crc32(payload).to_be_bytes());
    let mut codewords = Vec::new();
    let mut at = 0;
    for (k, parity) in body_shapes(payload.len(), p) {
        codewords.push(rs.encode(&body[at..at + k], parity)?);
        at += k;
    }
    stream.extend(interleave::interleave(&codewords));
    Ok(stream)
}

/// Erasure attempts per codeword: 0, 1/8, ..., 7/8 of the parity.
const ERASURE_STEPS: usize = 8;

/// Decodes one codeword, retrying with the least reliable bytes erased (the
/// decoder then corrects e errors and f erasures while 2e + f <= parity; a
/// wrong guess is either refused by the decoder or caught by the CRC-32).
fn decode_codeword(cw: &[u8], reliability: &[f32], parity: usize) -> Option<Vec<u8>> {
    let rs = ReedSolomon;
    let mut order: Vec<usize> = (0..cw.len()).collect();
    order.sort_by(|&a, &b| {
        let ra = reliability.get(a).copied().unwrap_or(0.0);
        let rb = reliability.get(b).copied().unwrap_or(0.0);
        ra.total_cmp(&rb)
    });
    for eighth in 0..ERASURE_STEPS {
        let erase = parity * eighth / ERASURE_STEPS;
        let mut work = cw.to_vec();
        if rs.decode(&mut work, parity, &order[..erase]).is_ok() {
            return Some(work);
        }
    }
    None
}

/// Decodes the header codeword; returns the payload length.
pub(crate) fn decode_header(bytes: &[u8], reliability: &[f32], p: &Params) -> Option<usize> {
    let n = header_len(p);
    let cw = decode_codeword(bytes.get(..n)?, reliability, p.header_parity)?;
    if cw[0] != HEADER_MAGIC | p.id {
        return None;
    }
    Some(cw[1] as usize + 1)
}

/// Decodes the body (the stream after the header) of a `len`-byte payload;
/// returns the payload only if the CRC-32 matches.
pub(crate) fn decode_body(
    body: &[u8],
    reliability: &[f32],
    len: usize,
    p: &Params,
) -> Option<Vec<u8>> {
    let shapes = body_shapes(len, p);
    let lengths: Vec<usize> = shapes.iter().map(|(k, r)| k + r).collect();
    if body.len() < lengths.iter().sum() {
        return None;
    }
    let map = interleave::positions(&lengths);
    let mut data = Vec::with_capacity(len + CRC_LEN);
    for ((k, parity), idx) in shapes.iter().zip(&map) {
        let cw: Vec<u8> = idx.iter().map(|&i| body[i]).collect();
        let rel: Vec<f32> = idx
            .iter()
            .map(|&i| reliability.get(i).copied().unwrap_or(0.0))
            .collect();
        let fixed = decode_codeword(&cw, &rel, *parity)?;
        data.extend_from_slice(&fixed[..*k]);
    }
    let (payload, crc) = data.split_at(len);
    if crc32(payload).to_be_bytes() != crc {
        return None;
    }
    Some(payload.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::Format;
    use proptest::prelude::*;

    fn split(stream: &[u8], p: &Params) -> (Vec<u8>, Vec<u8>) {
        let h = header_len(p);
        (stream[..h].to_vec(), stream[h..].to_vec())
    }

    #[test]
    fn round_trip_every_length_clean() {
        for profile in [Format::FastV1, Format::RobustV1] {
            let p = profile.params();
            for len in [1usize, 2, 100, 199, 255, 256] {
                let payload: Vec<u8> = (0..len).map(|i| (i * 31 + 7) as u8).collect();
                let stream = build_stream(&payload, &p).expect("build");
                assert_eq!(stream.len(), stream_len(len, &p));
                let (h, b) = split(&stream, &p);
                let ones = vec![1.0; stream.len()];
                assert_eq!(decode_header(&h, &ones, &p), Some(len));
                assert_eq!(decode_body(&b, &ones, len, &p), Some(payload));
            }
        }
    }

    #[test]
    fn rejects_empty_and_oversized_payloads() {
        let p = Format::FastV1.params();
        assert_eq!(build_stream(&[], &p), Err(ModemError::EmptyPayload));
        assert!(matches!(
            build_stream(&[0; 257], &p),
            Err(ModemError::PayloadTooLong { len: 257, .. })
        ));
    }

    #[test]
    fn shapes_fit_the_code() {
        for profile in [Format::FastV1, Format::RobustV1] {
            let p = profile.params();
            for len in 1..=MAX_PAYLOAD {
                let shapes = body_shapes(len, &p);
                assert_eq!(shapes.iter().map(|s| s.0).sum::<usize>(), len + CRC_LEN);
                assert!(shapes.iter().all(|&(k, r)| k + r <= 255 && r >= 2));
            }
        }
    }

    #[test]
    fn erasure_hints_extend_correction() {
        let p = Format::FastV1.params();
        let payload = vec![0x42u8; 199];
        let stream = build_stream(&payload, &p).expect("build");
        let (_, mut body) = split(&stream, &p);
        let mut rel = vec![1.0f32; body.len()];
        // Corrupt 60% of parity's worth of bytes but flag them as unreliable.
        let parity: usize = body_shapes(199, &p).iter().map(|s| s.1).sum();
        let bad = parity * 6 / 10;
        for i in 0..bad {
            let at = (i * 7) % body.len();
            body[at] ^= 0x5a;
            rel[at] = 0.0;
        }
        assert_eq!(decode_body(&body, &rel, 199, &p), Some(payload));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// However many bytes are damaged, the body decoder returns either
        /// the payload that was sent or nothing.
        #[test]
        fn never_a_wrong_payload(
            payload in proptest::collection::vec(any::<u8>(), 1..=256),
            damage in proptest::collection::vec((any::<u16>(), 1u8..=255), 0..400),
            fast in any::<bool>(),
        ) {
            let profile = if fast { Format::FastV1 } else { Format::RobustV1 };
            let p = profile.params();
            let stream = build_stream(&payload, &p).expect("build");
            let (_, mut body) = split(&stream, &p);
            let n = body.len();
            for (at, x) in &damage {
                body[*at as usize % n] ^= x;
            }
            let rel: Vec<f32> = (0..n).map(|i| ((i * 37) % 11) as f32).collect();
            if let Some(out) = decode_body(&body, &rel, payload.len(), &p) {
                prop_assert_eq!(out, payload);
            }
        }
    }
}
