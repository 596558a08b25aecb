//! The reader's beacon (docs/modem.md §7): a short, quiet frame the gate's
//! speaker repeats above the payment bands (18.3–19.8 kHz) so that a phone
//! can learn which reader it stands at, and its current challenge, without
//! a network.
//!
//! 4-FSK on 16 groups of 4 bins (FFT 2048, 23.4 Hz apart), one header
//! symbol (the length in the Reed–Muller code RM(1,5)), then the payload and
//! its CRC-32 under the rate-1/2, K = 7 convolutional code ([`conv`]), its
//! bits spread over every symbol and group. A falling chirp of 19.8 → 18.25
//! kHz in front.
//!
//! Pure functions: the frame's cells ([`layout`], [`cells`]), the signal
//! ([`encode_beacon`]), and from tone energies back to a payload
//! ([`llrs`], [`decode_header`], [`decode_body`]). The streaming decoder
//! is `beacon_decoder`.

use realfft::num_complex::Complex32;

use super::ModemError;
use super::conv;
use super::crc::crc32;
use super::encoder::{PEAK, RATE_RANGE};
use super::frame2;
use super::modulation::{gray, hash2};
use super::ofdm::Ofdm;
use super::preamble;
use super::profile::{INTERNAL_RATE, Modulation, Params};
use super::resample::resample;

/// Largest beacon payload, bytes (a reader sends 17).
pub const BEACON_MAX_PAYLOAD: usize = 32;

/// The beacon's numbers. `id`, `parity_percent` and `header_parity` belong
/// to the Reed–Solomon formats and are not used.
pub(crate) const PARAMS: Params = Params {
    id: 0,
    fft: 2048,
    cp: 256,
    // A longer cross-fade than the payment formats' 64 samples: the
    // symbols' edges splatter less towards the payment band below.
    ramp: 128,
    backoff: 96,
    first_bin: FIRST_BIN,
    bins: GROUPS * TONES,
    modulation: Modulation::Mfsk { bits: BITS },
    chirp_len: 4096,
    chirp_f0: 19_800.0,
    chirp_f1: 18_250.0,
    parity_percent: 0,
    header_parity: 0,
    threshold: THRESHOLD,
};

/// First bin (18 304.7 Hz); the last is 844 (19 781.3 Hz).
const FIRST_BIN: usize = 781;
/// Bits per cell.
pub(crate) const BITS: usize = 2;
/// Tones per group: one is lit per symbol.
pub(crate) const TONES: usize = 1 << BITS;
/// Groups (cells) per symbol.
pub(crate) const GROUPS: usize = 16;
/// Code bits per symbol.
const SYMBOL_BITS: usize = GROUPS * BITS;
/// Bits of the CRC-32 after the payload.
const CRC_BITS: usize = 32;
/// Normalised chirp correlation that makes a candidate. White noise at
/// the beacon's time-bandwidth product (85 ms × 1.6 kHz) stays below it
/// (unit test `beacon_decoder::tests`); a false candidate costs one FFT
/// and a Reed–Muller decode.
const THRESHOLD: f32 = 0.3;
/// Largest |LLR| of one bit from one cell (as the robust profile's: the
/// noise model is only a model).
const LLR_LIMIT: f32 = 16.0;

/// Where the bits of a `len`-byte beacon go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Layout {
    /// Payload bytes.
    pub len: usize,
    /// Information bits: payload and CRC-32.
    pub info: usize,
    /// Code bits: `conv::coded_len(info)`.
    pub coded: usize,
    /// Data symbols (after the header symbol).
    pub data_symbols: usize,
    /// Bit slots: `SYMBOL_BITS · data_symbols`.
    pub slots: usize,
    /// Slot u holds bit (u · spread) mod slots of the data cells.
    pub spread: usize,
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// The layout of a `len`-byte beacon (1..=32).
pub(crate) fn layout(len: usize) -> Result<Layout, ModemError> {
    if len == 0 {
        return Err(ModemError::EmptyPayload);
    }
    if len > BEACON_MAX_PAYLOAD {
        return Err(ModemError::PayloadTooLong {
            len,
            max: BEACON_MAX_PAYLOAD,
        });
    }
    let info = 8 * len + CRC_BITS;
    let coded = conv::coded_len(info);
    let data_symbols = coded.div_ceil(SYMBOL_BITS);
    let slots = data_symbols * SYMBOL_BITS;
    // Near slots/φ²: the code bits next to each other in the stream land
    // far apart in time and frequency, and the two bits of a cell are far
    // apart in the stream.
    let spread = (slots * 382 / 1000..)
        .find(|&p| gcd(p, slots) == 1)
        .unwrap_or(1);
    Ok(Layout {
        len,
        info,
        coded,
        data_symbols,
        slots,
        spread,
    })
}

impl Layout {
    /// Symbols: the header's and the data's.
    pub fn symbols(&self) -> usize {
        1 + self.data_symbols
    }

    /// Frame length in samples: chirp, symbols, the last fade.
    pub fn frame_len(&self) -> usize {
        PARAMS.chirp_len + self.symbols() * PARAMS.symbol_len() + PARAMS.ramp
    }

    /// Data bit position (cell · BITS + bit, cells counted from data symbol
    /// 0) of slot `u`.
    pub fn position(&self, u: usize) -> usize {
        u * self.spread % self.slots
    }

    /// The code bit slot `u` carries: itself for the first `coded`, then
    /// copies spread evenly over the stream.
    pub fn source(&self, u: usize) -> usize {
        if u < self.coded {
            return u;
        }
        (u - self.coded) * self.coded / (self.slots - self.coded).max(1)
    }
}

/// The 32 header bits: RM(1,5) of `len − 1`, bit j = parity((len − 1) & j)
/// (the code's sixth, complementing bit is 0 in this version).
pub(crate) fn header_bits(len: usize) -> [u8; SYMBOL_BITS] {
    let v = (len.saturating_sub(1) & 0x1F) as u32;
    let mut out = [0u8; SYMBOL_BITS];
    for (j, b) in out.iter_mut().enumerate() {
        *b = ((v & j as u32).count_ones() & 1) as u8;
    }
    out
}

/// The code bits of `payload`: payload ‖ CRC-32 (big-endian), most
/// significant bit first, through the convolutional code.
fn code_bits(payload: &[u8]) -> Vec<u8> {
    let bits: Vec<u8> = payload
        .iter()
        .chain(&crc32(payload).to_be_bytes())
        .flat_map(|&byte| (0..8).rev().map(move |i| (byte >> i) & 1))
        .collect();
    conv::encode(&bits)
}

/// Every cell's value (0..4, symbol-major, GROUPS per symbol): the
/// header's symbol, then the data.
pub(crate) fn cells(payload: &[u8]) -> Result<(Layout, Vec<u8>), ModemError> {
    let layout = layout(payload.len())?;
    let mut bits = vec![0u8; SYMBOL_BITS * layout.symbols()];
    bits[..SYMBOL_BITS].copy_from_slice(&header_bits(payload.len()));
    let coded = code_bits(payload);
    for u in 0..layout.slots {
        bits[SYMBOL_BITS + layout.position(u)] = coded[layout.source(u)];
    }
    let cells = bits.chunks(BITS).map(|b| 2 * b[0] + b[1]).collect();
    Ok((layout, cells))
}

/// The FFT bin a cell of value `v` lights in group `g`.
fn lit_bin(g: usize, v: u8) -> usize {
    FIRST_BIN + g * TONES + usize::from(gray(v & 3))
}

/// The beacon at 48 kHz: chirp, symbols, scaled to a peak of [`PEAK`].
fn render(payload: &[u8]) -> Result<Vec<f32>, ModemError> {
    let (layout, cells) = cells(payload)?;
    let ofdm = Ofdm::new(PARAMS.fft, PARAMS.cp, PARAMS.ramp);
    let mut out = vec![0f32; layout.frame_len()];
    for (m, symbol) in cells.chunks(GROUPS).enumerate() {
        let bins: Vec<(usize, Complex32)> = symbol
            .iter()
            .enumerate()
            .map(|(g, &v)| {
                let k = lit_bin(g, v);
                let turn = (hash2(11 + m as u32, k as u32) % 1024) as f32 / 1024.0;
                (k, Complex32::from_polar(1.0, std::f32::consts::TAU * turn))
            })
            .collect();
        let at = PARAMS.chirp_len + m * PARAMS.symbol_len();
        for (o, v) in out[at..].iter_mut().zip(ofdm.synthesize(&bins)) {
            *o += v;
        }
    }
    let data = &out[PARAMS.chirp_len..];
    let rms = (data.iter().map(|v| v * v).sum::<f32>() / data.len().max(1) as f32).sqrt();
    let amp = rms * std::f32::consts::SQRT_2;
    for (o, c) in out.iter_mut().zip(preamble::chirp(&PARAMS)) {
        *o += c * amp;
    }
    let peak = out.iter().fold(0f32, |m, v| m.max(v.abs()));
    if peak > 0.0 {
        out.iter_mut().for_each(|v| *v *= PEAK / peak);
    }
    Ok(out)
}

/// Whether audio at `rate` Hz can carry the beacon (Nyquist at least
/// 500 Hz above its chirp's top: 40.6 kHz and up).
pub(crate) fn fits(rate: u32) -> bool {
    (RATE_RANGE.0..=RATE_RANGE.1).contains(&rate)
        && rate as f32 / 2.0 >= PARAMS.chirp_band().1 + 500.0
}

pub(crate) fn check_rate(rate: u32) -> Result<(), ModemError> {
    if fits(rate) {
        Ok(())
    } else {
        Err(ModemError::UnsupportedRate {
            rate,
            profile: "beacon",
        })
    }
}

/// Renders a reader's beacon carrying `payload` (1..=32 bytes) as mono PCM
/// at `sample_rate` Hz (40.6 kHz and up), samples in -1..=1, peak 0.8: the
/// caller sets the level it is played at.
pub fn encode_beacon(payload: &[u8], sample_rate: u32) -> Result<Vec<f32>, ModemError> {
    check_rate(sample_rate)?;
    let pcm = render(payload)?;
    if sample_rate == INTERNAL_RATE {
        return Ok(pcm);
    }
    let mut out = resample(&pcm, f64::from(INTERNAL_RATE), f64::from(sample_rate));
    out.iter_mut().for_each(|v| *v = v.clamp(-1.0, 1.0));
    Ok(out)
}

/// Air time in seconds of a `len`-byte beacon (0.664 s for a reader's 17).
pub fn beacon_air_time(len: usize) -> Result<f64, ModemError> {
    Ok(layout(len)?.frame_len() as f64 / f64::from(INTERNAL_RATE))
}

/// The band the beacon's tones occupy, Hz (lowest and highest tone).
pub fn beacon_band_hz() -> (f32, f32) {
    PARAMS.band_hz()
}

/// Two LLRs (positive: bit 0) per cell from the tone energies of whole
/// symbols (a row of GROUPS · TONES per symbol), as robust format 2 makes
/// them (`robust2::fsk_llrs`): a tone's energy is exponential with mean I
/// if unlit and S + I if lit, so tone t is lit with log-likelihood ratio
/// E_t·S/(I(I+S)) − ln(1 + S/I), and a bit's LLR sums the likelihoods of
/// the two values with it 0 against the two with it 1.
///
/// I is the noise, one figure for the band (1.5 kHz of station noise is
/// flat): the median energy over ln 3, since with one tone in four lit the
/// median is the unlit tones' two-thirds quantile. S is measured per group
/// over the rows (a speaker's slope or resonance makes groups differ) when
/// there are at least four of them, else over the band.
pub(crate) fn llrs(energy: &[Vec<f32>]) -> Vec<[f32; BITS]> {
    let mut out = vec![[0f32; BITS]; energy.len() * GROUPS];
    let mut all: Vec<f32> = energy
        .iter()
        .flat_map(|row| row.iter().take(GROUPS * TONES))
        .copied()
        .filter(|e| e.is_finite())
        .collect();
    if all.is_empty() {
        return out;
    }
    let mid = all.len() / 2;
    let median = *all.select_nth_unstable_by(mid, f32::total_cmp).1;
    let noise = median / 3f32.ln();
    let band_mean = all.iter().sum::<f32>() / all.len() as f32;
    let signal_of = |mean: f32| (TONES as f32 * (mean - noise)).max(0.5 * noise);
    let band_signal = signal_of(band_mean);
    let mut metric = [0f32; TONES];
    for g in 0..GROUPS {
        let tones = g * TONES..(g + 1) * TONES;
        let signal = if energy.len() >= 4 {
            let (sum, n) = energy
                .iter()
                .filter_map(|r| r.get(tones.clone()))
                .flatten()
                .filter(|e| e.is_finite())
                .fold((0f32, 0usize), |(s, n), e| (s + e, n + 1));
            signal_of(sum / n.max(1) as f32)
        } else {
            band_signal
        };
        if !(noise > 0.0 && signal > 0.0 && noise.is_finite() && signal.is_finite()) {
            continue;
        }
        for (m, row) in energy.iter().enumerate() {
            let Some(e) = row.get(tones.clone()) else {
                continue;
            };
            for (v, slot) in metric.iter_mut().enumerate() {
                let t = usize::from(gray(v as u8));
                let x = if e[t].is_finite() { e[t] } else { 0.0 };
                // Divided before multiplied, as robust's: a hostile, very
                // loud input must not overflow.
                *slot = (x / noise) * (signal / (noise + signal));
            }
            super::modulation::bit_llrs(&metric, &mut out[m * GROUPS + g], LLR_LIMIT);
        }
    }
    out
}

/// The payload length from the header symbol's LLRs (GROUPS cells) and the
/// Reed–Muller confidence; None if the code's sixth bit is set (not this
/// version of the beacon) or nothing was heard.
pub(crate) fn decode_header(llr: &[[f32; BITS]]) -> Option<(usize, f32)> {
    let bits: Vec<f32> = llr.get(..GROUPS)?.iter().flatten().copied().collect();
    let (v, confidence) = frame2::decode_rm1(&bits)?;
    (v < 32).then_some((v as usize + 1, confidence))
}

/// The payload from every cell's LLRs (symbol-major, the header's symbol
/// included and ignored), if the Viterbi decoder's bits end in a matching
/// CRC-32.
pub(crate) fn decode_body(llr: &[[f32; BITS]], layout: &Layout) -> Option<Vec<u8>> {
    let mut coded = vec![0f32; layout.coded];
    for u in 0..layout.slots {
        let at = layout.position(u);
        let cell = llr.get(GROUPS + at / BITS)?;
        coded[layout.source(u)] += cell[at % BITS];
    }
    let bits = conv::decode(&coded, layout.info)?;
    let bytes: Vec<u8> = bits
        .chunks(8)
        .map(|b| b.iter().fold(0u8, |acc, &x| (acc << 1) | x))
        .collect();
    let (payload, crc) = bytes.split_at(layout.len);
    (crc32(payload).to_be_bytes() == crc).then(|| payload.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_readers_17_byte_beacon_takes_two_thirds_of_a_second() {
        let l = layout(17).expect("layout");
        assert_eq!(
            (l.info, l.coded, l.data_symbols, l.slots),
            (168, 348, 11, 352)
        );
        assert_eq!(l.frame_len(), 31_872);
        assert!((beacon_air_time(17).expect("air") - 0.664).abs() < 1e-9);
        assert!(beacon_air_time(32).expect("air") < 1.05);
        assert!(layout(0).is_err() && layout(33).is_err());
    }

    #[test]
    fn every_slot_is_a_different_bit_of_the_data_cells() {
        for len in 1..=BEACON_MAX_PAYLOAD {
            let l = layout(len).expect("layout");
            let mut seen = vec![false; l.slots];
            for u in 0..l.slots {
                let p = l.position(u);
                assert!(!seen[p], "length {len}: position {p} twice");
                seen[p] = true;
                assert!(l.source(u) < l.coded);
            }
            // Neighbouring code bits never share a symbol.
            for u in 0..l.coded - 1 {
                let (a, b) = (l.position(u), l.position(u + 1));
                assert_ne!(a / SYMBOL_BITS, b / SYMBOL_BITS, "length {len}, bit {u}");
            }
        }
    }

    #[test]
    fn header_round_trips_every_length_and_refuses_the_other_half_of_the_code() {
        for len in 1..=BEACON_MAX_PAYLOAD {
            let llr: Vec<[f32; BITS]> = header_bits(len)
                .chunks(BITS)
                .map(|b| [1.0 - 2.0 * f32::from(b[0]), 1.0 - 2.0 * f32::from(b[1])])
                .collect();
            assert_eq!(decode_header(&llr).map(|h| h.0), Some(len));
            let flipped: Vec<[f32; BITS]> = llr.iter().map(|c| [-c[0], -c[1]]).collect();
            assert_eq!(decode_header(&flipped), None);
        }
        assert_eq!(decode_header(&[]), None);
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
                        let jitter = (hash2(m as u32, (g * TONES + t) as u32) % 1000) as f32;
                        row[g * TONES + t] = noise * 2.0 * jitter / 1000.0;
                    }
                    row[lit_bin(g, v) - FIRST_BIN] += 1.0;
                }
                row
            })
            .collect()
    }

    #[test]
    fn clean_cells_decode_back_to_the_payload_and_a_flipped_bit_is_corrected() {
        for len in [1usize, 17, 32] {
            let payload: Vec<u8> = (0..len as u32).map(|i| (i * 37 + 5) as u8).collect();
            let (l, values) = cells(&payload).expect("cells");
            let mut llr = llrs(&energies(&values, 0.05));
            assert_eq!(decode_header(&llr).map(|h| h.0), Some(len));
            assert_eq!(decode_body(&llr, &l), Some(payload.clone()));
            // Three whole cells lost (wrong and confident): the code copes.
            for c in [GROUPS + 3, GROUPS + 20, GROUPS + 41] {
                llr[c] = [-llr[c][0], -llr[c][1]];
            }
            assert_eq!(decode_body(&llr, &l), Some(payload.clone()));
            // Read as a shorter payload, the CRC fails.
            if len > 1 {
                let shorter = layout(len - 1).expect("layout");
                assert_eq!(decode_body(&llr, &shorter), None);
            }
        }
    }

    #[test]
    fn silence_and_nonsense_energies_give_finite_llrs_and_no_payload() {
        let l = layout(17).expect("layout");
        let zeros = vec![vec![0f32; GROUPS * TONES]; l.symbols()];
        assert!(llrs(&zeros).iter().flatten().all(|&x| x == 0.0));
        assert_eq!(decode_body(&llrs(&zeros), &l), None);
        let odd = vec![
            vec![f32::NAN; 5],
            vec![f32::INFINITY; GROUPS * TONES],
            vec![1e30; GROUPS * TONES],
            vec![-1.0; GROUPS * TONES],
        ];
        assert!(llrs(&odd).iter().flatten().all(|x| x.is_finite()));
        assert_eq!(decode_body(&llrs(&odd), &l), None);
        assert_eq!(decode_body(&[], &l), None);
    }

    #[test]
    fn the_beacon_stays_above_the_payment_bands() {
        use realfft::RealFftPlanner;
        let pcm = encode_beacon(&[0x5A; 17], 48_000).expect("encode");
        assert_eq!(pcm.len(), layout(17).expect("layout").frame_len());
        let n = pcm.len().next_power_of_two();
        let mut x = pcm.clone();
        x.resize(n, 0.0);
        let fft = RealFftPlanner::<f32>::new().plan_fft_forward(n);
        let mut spec = fft.make_output_vec();
        fft.process(&mut x, &mut spec).expect("fft");
        let hz = 48_000.0 / n as f32;
        let power = |lo: f32, hi: f32| -> f32 {
            spec.iter()
                .enumerate()
                .filter(|(k, _)| (lo..hi).contains(&(*k as f32 * hz)))
                .map(|(_, v)| v.norm_sqr())
                .sum()
        };
        let total = power(0.0, 24_000.0);
        // Under the payment formats' top (17.9 kHz): 50 dB down.
        let below = 10.0 * (power(0.0, 17_950.0) / total).log10();
        assert!(below < -50.0, "{below:.1} dB below 17.95 kHz");
        let (lo, hi) = beacon_band_hz();
        assert!(lo > 18_300.0 && hi < 19_800.0, "{lo}..{hi}");
        assert!(encode_beacon(&[1], 44_100).is_ok());
        assert!(matches!(
            encode_beacon(&[1], 40_000),
            Err(ModemError::UnsupportedRate { rate: 40_000, .. })
        ));
        assert!(encode_beacon(&[], 48_000).is_err());
        assert!(encode_beacon(&[0; 33], 48_000).is_err());
    }
}
