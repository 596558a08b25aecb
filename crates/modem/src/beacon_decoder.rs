//! Streaming beacon decoder (what a wallet app runs while the rider walks
//! up to the gate): PCM chunks of any size at 40.6 kHz or more in, every
//! beacon heard out (docs/modem.md §7).
//!
//! Pipeline: sanitise → resample to 48 kHz → ring buffer → the falling
//! chirp's matched filter, local maxima above the threshold as candidates
//! → the header symbol's Reed–Muller code (the length) → once the frame is
//! in, the sender's clock from the tones' drift (undone by resampling) →
//! tone energies as soft decisions → Viterbi → CRC-32. A beacon is
//! reported only if its CRC-32 matches; every repetition is reported (a
//! reader repeats its beacon, and a wallet wants to know it is still in
//! range and which challenge is the newest).
//!
//! Memory is bounded: at most [`BEACON_BUFFER_SECONDS`] of audio is kept.
//! Work per call is bounded by the audio it brings: one correlation block
//! per 12 289 samples, at most one candidate per chirp length.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::sync::Arc;

use realfft::num_complex::Complex32;

use super::ModemError;
use super::beacon::{self, GROUPS, PARAMS, TONES};
use super::modulation;
use super::ofdm::Ofdm;
use super::preamble::{self, Correlator, PeakPicker};
use super::profile::INTERNAL_RATE;
use super::resample::{Kernel, Resampler};

/// Audio kept at most, seconds: the longest beacon (1.05 s) and room to
/// wait for it.
pub const BEACON_BUFFER_SECONDS: f64 = 3.0;
/// The header's best Reed–Muller correlation over the sum of its |LLR|
/// must reach this (1 for a clean header; with 32 bits, noise reaches 0.5
/// now and then, and costs one Viterbi decode when it does).
const HEADER_CONFIDENCE: f32 = 0.5;
/// Clock offsets searched at most, either way (a phone and a reader are
/// within ±300 ppm of each other).
const EPS_LIMIT: f64 = 500e-6;
/// Clock estimates, each from the frame resampled by the one before (as
/// robust format 2's), stopping once the residual is below 10 ppm.
const CLOCK_PASSES: usize = 3;
const CLOCK_SETTLED: f64 = 10e-6;

/// One beacon heard.
#[derive(Debug, Clone, PartialEq)]
pub struct BeaconReception {
    /// The payload, as the reader gave it (CRC-checked).
    pub payload: Vec<u8>,
    /// Where its chirp starts, in samples at 48 kHz since the stream began.
    pub start: u64,
    /// Where the beacon ends, same scale.
    pub end: u64,
    /// How loud its tones were heard, dB relative to a full-scale sine
    /// (the strongest tone of each group, the groups' powers summed,
    /// averaged over the symbols). A phone hearing several gates binds to
    /// the loudest: the nearest.
    pub level_dbfs: f32,
}

#[derive(Debug, Clone, Copy)]
struct Candidate {
    /// Fractional absolute position of the chirp's start.
    start: f64,
    /// Payload length, once the header is decoded.
    len: Option<usize>,
}

enum Step {
    Wait,
    Drop,
    Done(BeaconReception),
}

/// Listens for readers' beacons in a stream of PCM.
#[derive(Debug)]
pub struct BeaconDecoder {
    resampler: Resampler,
    kernel: Arc<Kernel>,
    ofdm: Ofdm,
    corr: Correlator,
    buf: Vec<f32>,
    buf_start: u64,
    /// Absolute index of the next correlation block.
    next: u64,
    peaks: PeakPicker,
    pending: Vec<Candidate>,
    /// Beacons decoded (start, end): a chirp peak inside one is its echo.
    spans: VecDeque<(u64, u64)>,
}

impl BeaconDecoder {
    /// A decoder for input at `sample_rate` Hz (40.6 kHz and up: 44.1 and
    /// 48 kHz are what phones record at).
    pub fn new(sample_rate: u32) -> Result<BeaconDecoder, ModemError> {
        beacon::check_rate(sample_rate)?;
        let chirp = preamble::chirp(&PARAMS);
        Ok(BeaconDecoder {
            resampler: Resampler::new(f64::from(sample_rate), f64::from(INTERNAL_RATE)),
            kernel: Arc::new(Kernel::new(0.5 * 0.95 / (1.0 + EPS_LIMIT), 32)),
            ofdm: Ofdm::new(PARAMS.fft, PARAMS.cp, PARAMS.ramp),
            corr: Correlator::new(&chirp, PARAMS.chirp_band(), 4 * PARAMS.chirp_len),
            buf: Vec::new(),
            buf_start: 0,
            next: 0,
            peaks: PeakPicker::default(),
            pending: Vec::new(),
            spans: VecDeque::new(),
        })
    }

    /// Feeds samples (any chunk size); returns the beacons they completed.
    pub fn push(&mut self, samples: &[f32]) -> Vec<BeaconReception> {
        let mut out = Vec::new();
        // Pieces of a second, so the buffer bound holds for any chunk.
        for piece in samples.chunks(INTERNAL_RATE as usize) {
            let clean: Vec<f32> = piece
                .iter()
                .map(|&v| {
                    if v.is_finite() {
                        v.clamp(-1e6, 1e6)
                    } else {
                        0.0
                    }
                })
                .collect();
            let resampled = self.resampler.process(&clean);
            self.buf.extend_from_slice(&resampled);
            self.detect();
            out.extend(self.work());
            self.trim();
        }
        out
    }

    /// Treats the stream as ended (pads with silence so a beacon at the
    /// very end completes) and returns what that completes.
    pub fn finish(&mut self) -> Vec<BeaconReception> {
        let pad = self.corr.block() + PARAMS.symbol_len();
        let silence = vec![0f32; pad];
        let resampled = self.resampler.process(&silence);
        self.buf.extend_from_slice(&resampled);
        self.buf.extend_from_slice(&silence);
        self.detect();
        let out = self.work();
        self.trim();
        out
    }

    fn buf_end(&self) -> u64 {
        self.buf_start + self.buf.len() as u64
    }

    /// Chirp candidates: the largest score above the threshold within one
    /// chirp length (as the payment decoder's detectors).
    fn detect(&mut self) {
        let end = self.buf_end();
        let block = self.corr.block() as u64;
        let hop = self.corr.hop() as u64;
        let len = PARAMS.chirp_len as u64;
        while self.next >= self.buf_start && self.next + block <= end {
            let from = (self.next - self.buf_start) as usize;
            let scores = self.corr.scores(&self.buf[from..from + block as usize]);
            for (start, _) in self.peaks.feed(self.next, &scores, PARAMS.threshold, len) {
                let inside = self
                    .spans
                    .iter()
                    .any(|&(s, e)| start + len as f64 / 2.0 >= s as f64 && start < e as f64);
                if !inside {
                    self.pending.push(Candidate { start, len: None });
                }
            }
            self.next += hop;
        }
    }

    fn work(&mut self) -> Vec<BeaconReception> {
        let mut out = Vec::new();
        let mut keep = Vec::new();
        for mut cand in std::mem::take(&mut self.pending) {
            match self.advance(&mut cand) {
                Step::Wait => keep.push(cand),
                Step::Drop => {}
                Step::Done(r) => {
                    self.spans.push_back((r.start, r.end));
                    out.push(r);
                }
            }
        }
        keep.retain(|c| {
            !self
                .spans
                .iter()
                .any(|&(s, e)| c.start + 1.0 >= s as f64 && c.start < e as f64)
        });
        self.pending = keep;
        out
    }

    /// Absolute sample just past the first `m` symbols and their fade,
    /// allowing for the largest clock offset.
    fn symbol_end(start: f64, m: usize) -> u64 {
        let at =
            start + PARAMS.chirp_len as f64 + (m * PARAMS.symbol_len()) as f64 * (1.0 + EPS_LIMIT);
        at.max(0.0).ceil() as u64 + PARAMS.ramp as u64 + 160
    }

    /// The buffer, resampled by 1 + `eps` over the chirp's first `count`
    /// symbols when `eps` is not 0, and where the chirp starts in it.
    fn view(&self, start: f64, eps: f64, count: usize) -> Option<(Cow<'_, [f32]>, f64)> {
        let origin = start - self.buf_start as f64;
        if eps == 0.0 {
            return Some((Cow::Borrowed(&self.buf[..]), origin));
        }
        let margin = 128.0;
        let from = (origin + PARAMS.chirp_len as f64 - margin).max(0.0).floor();
        let to = origin
            + PARAMS.chirp_len as f64
            + (count * PARAMS.symbol_len()) as f64 * (1.0 + eps)
            + margin;
        let to = (to.ceil().max(from) as usize).min(self.buf.len());
        let segment = self.buf.get(from as usize..to)?;
        let mut resampler = Resampler::with_kernel(Arc::clone(&self.kernel), 1.0 + eps, 1.0);
        let mut out = resampler.process(segment);
        out.extend(resampler.finish());
        Some((Cow::Owned(out), (origin - from) / (1.0 + eps)))
    }

    /// The used bins of symbols `0..count` of the beacon whose chirp starts
    /// at `start`, the sender's clock taken as `eps`.
    fn bins(&self, start: f64, eps: f64, count: usize) -> Option<Vec<Vec<Complex32>>> {
        let (samples, origin) = self.view(start, eps, count)?;
        let used = PARAMS.first_bin..PARAMS.first_bin + PARAMS.bins;
        (0..count)
            .map(|m| {
                let at = origin
                    + PARAMS.chirp_len as f64
                    + (m * PARAMS.symbol_len()) as f64
                    + (PARAMS.cp - PARAMS.backoff) as f64;
                self.ofdm
                    .analyze(&samples, at)
                    .and_then(|s| s.get(used.clone()).map(<[_]>::to_vec))
            })
            .collect()
    }

    fn advance(&self, cand: &mut Candidate) -> Step {
        // (A chirp at the stream's very first sample can be placed a
        // fraction of a sample before it.)
        if cand.start + (PARAMS.chirp_len as f64) < self.buf_start as f64 {
            return Step::Drop;
        }
        let len = match cand.len {
            Some(len) => len,
            None => {
                if Self::symbol_end(cand.start, 1) > self.buf_end() {
                    return Step::Wait;
                }
                let Some(bins) = self.bins(cand.start, 0.0, 1) else {
                    return Step::Drop;
                };
                match beacon::decode_header(&beacon::llrs(&energies(&bins))) {
                    Some((len, confidence)) if confidence >= HEADER_CONFIDENCE => {
                        cand.len = Some(len);
                        len
                    }
                    _ => return Step::Drop,
                }
            }
        };
        let Ok(layout) = beacon::layout(len) else {
            return Step::Drop;
        };
        let symbols = layout.symbols();
        if Self::symbol_end(cand.start, symbols) > self.buf_end() {
            return Step::Wait;
        }
        let Some(mut bins) = self.bins(cand.start, 0.0, symbols) else {
            return Step::Drop;
        };
        // At 300 ppm a tone at 19.8 kHz sits a quarter bin off and leaks
        // into its neighbours: the clock from the tones, undone.
        let mut eps = 0.0;
        for _ in 0..CLOCK_PASSES {
            let drift = modulation::tone_drift(&bins, PARAMS.first_bin, TONES);
            if drift.abs() < CLOCK_SETTLED {
                break;
            }
            eps = (eps - drift).clamp(-EPS_LIMIT, EPS_LIMIT);
            match self.bins(cand.start, eps, symbols) {
                Some(b) => bins = b,
                None => break,
            }
        }
        let decode = |bins: &[Vec<Complex32>]| {
            let raw = energies(bins);
            let energy = super::robust2::levelled(raw.clone());
            beacon::decode_body(&beacon::llrs(&energy), &layout).map(|p| (p, level_dbfs(&raw)))
        };
        let mut found = decode(&bins).map(|p| (p, eps));
        if found.is_none() && eps != 0.0 {
            found = self
                .bins(cand.start, 0.0, symbols)
                .and_then(|b| decode(&b))
                .map(|p| (p, 0.0));
        }
        match found {
            Some(((payload, level_dbfs), eps)) => {
                let start = cand.start.max(0.0) as u64;
                let frame = layout.frame_len() as f64 * (1.0 + eps);
                Step::Done(BeaconReception {
                    payload,
                    start,
                    end: start + frame as u64,
                    level_dbfs,
                })
            }
            None => Step::Drop,
        }
    }

    fn trim(&mut self) {
        let end = self.buf_end();
        let limit = (BEACON_BUFFER_SECONDS * f64::from(INTERNAL_RATE)) as u64;
        let floor = end.saturating_sub(limit);
        self.pending.retain(|c| c.start.max(0.0) >= floor as f64);
        if self.next < floor {
            self.next = floor;
            self.peaks.reset();
        }
        let mut keep_from = self.next;
        if let Some(at) = self.peaks.held_at() {
            keep_from = keep_from.min(at.saturating_sub(2));
        }
        for c in &self.pending {
            keep_from = keep_from.min((c.start.floor() - 2.0).max(0.0) as u64);
        }
        let keep_from = keep_from.max(floor).max(self.buf_start);
        let drop = ((keep_from - self.buf_start) as usize).min(self.buf.len());
        self.buf.drain(..drop);
        self.buf_start += drop as u64;
        let longest = beacon::layout(beacon::BEACON_MAX_PAYLOAD).map_or(0, |l| l.frame_len());
        while self
            .spans
            .front()
            .is_some_and(|&(_, e)| e + (longest as u64) < end)
        {
            self.spans.pop_front();
        }
    }

    /// Samples buffered and candidates pending (for the memory-bound test).
    #[cfg(test)]
    pub(crate) fn buffered(&self) -> usize {
        self.buf.len() + self.pending.len()
    }
}

/// The level of a beacon's tones, dB relative to a full-scale sine: a sine
/// of amplitude A on a bin has |X|² = (A·N/2)², so A² = 4·|X|²/N²; per
/// symbol, the strongest tone of each group, summed over the groups;
/// averaged over the symbols. −200 for silence.
fn level_dbfs(energy: &[Vec<f32>]) -> f32 {
    let n = PARAMS.fft as f64;
    let per_symbol: Vec<f64> = energy
        .iter()
        .map(|row| {
            row.chunks_exact(TONES)
                .map(|g| f64::from(g.iter().copied().fold(0f32, f32::max)))
                .sum::<f64>()
                * 4.0
                / (n * n)
        })
        .collect();
    let mean = per_symbol.iter().sum::<f64>() / per_symbol.len().max(1) as f64;
    if mean > 0.0 && mean.is_finite() {
        (10.0 * mean.log10()).max(-200.0) as f32
    } else {
        -200.0
    }
}

/// Tone energies of each symbol's used bins.
fn energies(bins: &[Vec<Complex32>]) -> Vec<Vec<f32>> {
    bins.iter()
        .map(|row| {
            row.iter()
                .take(GROUPS * TONES)
                .map(|c| c.norm_sqr())
                .collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use rand::{RngExt, SeedableRng};
    use rand_pcg::Pcg64Mcg;

    use super::*;
    use crate::profile::Format;
    use crate::sim::{self, Channel, NoiseKind, Room, Speaker};
    use crate::{Decoder, Profile, encode, encode_beacon};

    /// What a reader sends: version, tag, challenge, time (17 bytes).
    fn reader_beacon(seed: u64) -> Vec<u8> {
        let mut rng = Pcg64Mcg::seed_from_u64(seed);
        (0..17).map(|_| rng.random::<u8>()).collect()
    }

    /// Feeds `samples` in random chunks of 1..=`max_chunk`; every reception.
    fn listen(rate: u32, samples: &[f32], seed: u64, max_chunk: usize) -> Vec<BeaconReception> {
        let mut decoder = BeaconDecoder::new(rate).expect("decoder");
        let mut rng = Pcg64Mcg::seed_from_u64(seed ^ 0xbeac);
        let mut out = Vec::new();
        let mut at = 0;
        while at < samples.len() {
            let end = (at + rng.random_range(1..=max_chunk)).min(samples.len());
            out.extend(decoder.push(&samples[at..end]));
            at = end;
        }
        out.extend(decoder.finish());
        out
    }

    #[test]
    fn beacons_of_every_size_round_trip_at_48_and_44_1_khz_in_random_chunks() {
        for (seed, len) in [(1u64, 1usize), (2, 17), (3, 32)] {
            let payload: Vec<u8> = reader_beacon(seed).into_iter().cycle().take(len).collect();
            for rate in [48_000u32, 44_100] {
                let mut capture = vec![0f32; 3_000];
                capture.extend(encode_beacon(&payload, rate).expect("encode"));
                capture.extend(vec![0f32; 2_000]);
                let got = listen(rate, &capture, seed, 7_000);
                assert_eq!(got.len(), 1, "len {len} at {rate} Hz: {got:?}");
                assert_eq!(got[0].payload, payload);
                let start = 3_000.0 * f64::from(INTERNAL_RATE) / f64::from(rate);
                assert!((got[0].start as f64 - start).abs() <= 2.0, "{got:?}");
                let air = crate::beacon_air_time(len).expect("air") * f64::from(INTERNAL_RATE);
                assert!(((got[0].end - got[0].start) as f64 - air).abs() <= 2.0);
            }
        }
    }

    /// The fast grid's hardest corner (docs/modem.md §5.1): white noise at
    /// 0 dB over the whole band, RT60 1 s at DRR 6 dB, a speaker rolling off
    /// at 16 kHz, a 44.1 kHz phone, the reader's clock 300 ppm off.
    #[test]
    fn a_beacon_is_heard_in_white_noise_at_0_db_in_a_ringing_room_with_a_300_ppm_clock() {
        for (seed, ppm) in [(10u64, 300.0), (11, -300.0), (12, 300.0)] {
            let channel = Channel {
                room: Some(Room {
                    rt60: 1.0,
                    drr_db: 6.0,
                }),
                clock_ppm: ppm,
                rx_rate: 44_100,
                noise: NoiseKind::White,
                snr_db: 0.0,
                speaker: Some(Speaker {
                    low_pass_hz: 16_000.0,
                    resonances: Vec::new(),
                }),
                ..Channel::default()
            };
            let payload = reader_beacon(seed);
            let got = sim::send_and_decode_beacon(&payload, &channel, seed).expect("run");
            assert_eq!(got, vec![payload], "seed {seed}");
        }
    }

    #[test]
    fn a_station_at_3_db_with_gain_pumping_does_not_stop_a_beacon() {
        let channel = Channel {
            room: Some(Room {
                rt60: 0.6,
                drr_db: 8.0,
            }),
            noise: NoiseKind::Station,
            snr_db: 3.0,
            receiver_agc: Some(sim::Agc::Pumping {
                depth_db: 6.0,
                hz: 3.0,
                phase: 0.0,
            }),
            ..Channel::default()
        };
        let payload = reader_beacon(20);
        let got = sim::send_and_decode_beacon(&payload, &channel, 20).expect("run");
        assert_eq!(got, vec![payload]);
    }

    #[test]
    fn every_repetition_is_reported_once_in_order_with_its_position() {
        let (a, b) = (reader_beacon(30), reader_beacon(31));
        let gap = vec![0f32; 14_400];
        let mut capture = gap.clone();
        let mut starts = Vec::new();
        for payload in [&a, &a, &b] {
            starts.push(capture.len() as u64);
            capture.extend(encode_beacon(payload, 48_000).expect("encode"));
            capture.extend_from_slice(&gap);
        }
        let got = listen(48_000, &capture, 30, 4_800);
        let payloads: Vec<&Vec<u8>> = got.iter().map(|r| &r.payload).collect();
        assert_eq!(payloads, vec![&a, &a, &b]);
        for (r, s) in got.iter().zip(starts) {
            assert!(r.start.abs_diff(s) <= 1, "{} vs {s}", r.start);
        }
    }

    #[test]
    fn the_level_says_how_loud_the_tones_were_heard() {
        let payload = reader_beacon(70);
        let tone = encode_beacon(&payload, 48_000).expect("encode");
        let mut levels = Vec::new();
        for gain in [1.0f32, 0.1] {
            let quiet: Vec<f32> = tone.iter().map(|v| v * gain).collect();
            let got = listen(48_000, &quiet, 70, 9_600);
            assert_eq!(got.len(), 1);
            levels.push(got[0].level_dbfs);
        }
        // 20 dB quieter reads 20 dB lower; the tones of a peak-0.8 beacon
        // sum to about −10 dBFS (16 tones sharing the peak, and the chirp).
        assert!((levels[0] - levels[1] - 20.0).abs() < 0.1, "{levels:?}");
        assert!((-16.0..-4.0).contains(&levels[0]), "{levels:?}");
    }

    /// Gates stand side by side: a phone 0.3 m from its gate hears the next
    /// gate's beacon too, about 10 dB weaker (1 m further), at any moment.
    #[test]
    fn a_neighbouring_gates_beacon_10_db_weaker_does_not_hide_the_nearer_one() {
        let (near, far) = (reader_beacon(80), reader_beacon(81));
        let near_pcm = encode_beacon(&near, 48_000).expect("encode");
        let far_pcm = encode_beacon(&far, 48_000).expect("encode");
        let weaker = 10f32.powf(-10.0 / 20.0);
        for offset in [-20_000i64, -7_001, -1_500, 0, 333, 4_000, 12_345] {
            let lead = 30_000usize;
            let mut capture = vec![0f32; lead + near_pcm.len() + 30_000];
            for (o, v) in capture[lead..].iter_mut().zip(&near_pcm) {
                *o += v;
            }
            let at = (lead as i64 + offset) as usize;
            for (o, v) in capture[at..].iter_mut().zip(&far_pcm) {
                *o += weaker * v;
            }
            let channel = Channel {
                noise: NoiseKind::Station,
                snr_db: 10.0,
                room: Some(Room {
                    rt60: 0.5,
                    drr_db: 8.0,
                }),
                ..Channel::default()
            };
            let heard = sim::transmit(&capture, 48_000, &channel, offset as u64).samples;
            let got = listen(48_000, &heard, 80, 4_800);
            let loudest = got
                .iter()
                .max_by(|a, b| a.level_dbfs.total_cmp(&b.level_dbfs));
            assert_eq!(
                loudest.map(|r| &r.payload),
                Some(&near),
                "offset {offset}: {got:?}"
            );
            assert!(got.iter().all(|r| r.payload == near || r.payload == far));
        }
    }

    #[test]
    fn the_payment_decoder_hears_no_payment_and_no_missed_frame_in_beacons() {
        let mut capture = Vec::new();
        for seed in 0..6 {
            capture.extend(encode_beacon(&reader_beacon(seed), 48_000).expect("encode"));
            capture.extend(vec![0f32; 4_800]);
        }
        for (channel, seed) in [
            (None, 0),
            (
                Some(Channel {
                    room: Some(Room {
                        rt60: 0.5,
                        drr_db: 8.0,
                    }),
                    snr_db: 20.0,
                    ..Channel::default()
                }),
                1,
            ),
        ] {
            let heard = match &channel {
                Some(ch) => sim::transmit(&capture, 48_000, ch, seed).samples,
                None => capture.clone(),
            };
            let mut decoder = Decoder::new(48_000).expect("decoder");
            let mut got = decoder.push_receptions(&heard);
            got.extend(decoder.finish());
            assert!(got.is_empty(), "{got:?}");
            assert!(decoder.take_missed().is_empty());
        }
    }

    #[test]
    fn the_beacon_decoder_hears_no_payment_frame_of_any_format() {
        let token: Vec<u8> = (0..199u32).map(|i| (i * 13 + 1) as u8).collect();
        let short: Vec<u8> = token[..17].to_vec();
        let mut capture = Vec::new();
        for format in Format::ALL {
            for payload in [&token, &short] {
                capture.extend(
                    crate::encoder::encode_format(payload, format, 48_000).expect("encode"),
                );
                capture.extend(vec![0f32; 4_800]);
            }
        }
        assert!(listen(48_000, &capture, 2, 9_600).is_empty());
        // And the payment decoder still reads them all alongside.
        let mut decoder = Decoder::new(48_000).expect("decoder");
        let mut got = decoder.push(&capture);
        got.extend(decoder.finish().into_iter().map(|r| r.payload));
        assert_eq!(
            got.len(),
            2,
            "deduplicated: the token and its first 17 bytes"
        );
    }

    /// The reader's own microphone hears its beacon while a phone pays: the
    /// beacon at the same level as the token (RMS), both in one recording.
    #[test]
    fn a_beacon_playing_over_a_payment_leaves_both_decodable() {
        let token: Vec<u8> = (0..199u32).map(|i| (i * 7 + 3) as u8).collect();
        let beacon = reader_beacon(40);
        for (profile, seed) in [(Profile::Fast, 0u64), (Profile::Robust, 1)] {
            let pay = encode(&token, profile, 48_000).expect("encode");
            let tone = encode_beacon(&beacon, 48_000).expect("beacon");
            let rms = |x: &[f32]| (x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32).sqrt();
            let gain = rms(&pay) / rms(&tone);
            let mut mixed = vec![0f32; 4_800];
            mixed.extend_from_slice(&pay);
            mixed.extend(vec![0f32; 4_800]);
            for (m, t) in mixed[2_400..].iter_mut().zip(&tone) {
                *m += gain * t;
            }
            let channel = Channel {
                noise: NoiseKind::Station,
                snr_db: 20.0,
                lead_secs: (0.1, 0.1),
                ..Channel::default()
            };
            let heard = sim::transmit(&mixed, 48_000, &channel, seed).samples;
            let mut decoder = Decoder::new(48_000).expect("decoder");
            let mut got = decoder.push(&heard);
            got.extend(decoder.finish().into_iter().map(|r| r.payload));
            assert_eq!(got, vec![token.clone()], "{profile:?}");
            let beacons: Vec<Vec<u8>> = listen(48_000, &heard, seed, 4_800)
                .into_iter()
                .map(|r| r.payload)
                .collect();
            assert_eq!(beacons, vec![beacon.clone()], "{profile:?}");
        }
    }

    #[test]
    fn noise_stays_below_the_chirp_threshold_and_payment_chirps_do_not_reach_it() {
        let chirp = preamble::chirp(&PARAMS);
        let corr = Correlator::new(&chirp, PARAMS.chirp_band(), 4 * PARAMS.chirp_len);
        let noise = sim::noise::generate(
            NoiseKind::White,
            corr.block(),
            48_000,
            &mut Pcg64Mcg::seed_from_u64(5),
        );
        let max = corr.scores(&noise).into_iter().fold(0.0, f32::max);
        assert!(max < 0.8 * PARAMS.threshold, "noise {max}");
        for format in Format::ALL {
            let mut x = vec![0f32; corr.block()];
            for (o, c) in x[1_000..].iter_mut().zip(preamble::chirp(&format.params())) {
                *o += c;
            }
            let max = corr.scores(&x).into_iter().fold(0.0, f32::max);
            assert!(max < 0.5 * PARAMS.threshold, "{format:?}: {max}");
            // And the payment detectors do not take the beacon's chirp.
            let p = format.params();
            let theirs = Correlator::new(&preamble::chirp(&p), p.chirp_band(), 4 * p.chirp_len);
            let mut y = vec![0f32; theirs.block()];
            for (o, c) in y[1_000..].iter_mut().zip(&chirp) {
                *o += c;
            }
            let max = theirs.scores(&y).into_iter().fold(0.0, f32::max);
            assert!(
                max < 0.5 * p.threshold,
                "{format:?} hears the beacon: {max}"
            );
        }
    }

    #[test]
    fn rates_below_40_6_khz_are_refused_and_higher_ones_decode() {
        assert!(matches!(
            BeaconDecoder::new(32_000),
            Err(ModemError::UnsupportedRate { rate: 32_000, .. })
        ));
        assert!(BeaconDecoder::new(0).is_err() && BeaconDecoder::new(u32::MAX).is_err());
        let payload = reader_beacon(50);
        let capture = encode_beacon(&payload, 96_000).expect("encode");
        let got = listen(96_000, &capture, 50, 20_000);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].payload, payload);
    }

    #[test]
    fn an_endless_noisy_stream_keeps_memory_bounded_and_yields_nothing() {
        let mut decoder = BeaconDecoder::new(44_100).expect("decoder");
        let mut rng = Pcg64Mcg::seed_from_u64(60);
        let mut most = 0;
        for kind in [NoiseKind::White, NoiseKind::Station, NoiseKind::Beeps] {
            let noise = sim::noise::generate(kind, 44_100 * 5, 44_100, &mut rng);
            for chunk in noise.chunks(441) {
                assert!(decoder.push(chunk).is_empty());
                most = most.max(decoder.buffered());
            }
        }
        // One huge chunk at once: processed a second at a time.
        let long = vec![0.25f32; 44_100 * 20];
        assert!(decoder.push(&long).is_empty());
        most = most.max(decoder.buffered());
        assert!(decoder.finish().is_empty());
        let bound = (BEACON_BUFFER_SECONDS * 48_000.0) as usize + 3 * 48_000;
        assert!(most <= bound, "{most} samples buffered");
    }

    #[test]
    fn the_decoder_can_move_to_a_capture_thread() {
        fn send<T: Send>() {}
        send::<BeaconDecoder>();
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(32))]

        /// Anything at all, cut anywhere: no panic, no payload.
        #[test]
        fn random_garbage_in_random_chunks_never_panics_or_yields_a_beacon(
            rate in proptest::sample::select(vec![44_100u32, 48_000, 96_000]),
            values in proptest::collection::vec(
                proptest::prop_oneof![
                    proptest::num::f32::ANY,
                    -1.0f32..1.0,
                    proptest::strategy::Just(0.0f32),
                    proptest::strategy::Just(1.0f32),
                ],
                0..30_000,
            ),
            cuts in proptest::collection::vec(1usize..5_000, 1..40),
        ) {
            let mut decoder = BeaconDecoder::new(rate).expect("decoder");
            let mut emitted = 0;
            let mut at = 0;
            for cut in cuts.iter().cycle() {
                if at >= values.len() {
                    break;
                }
                let end = (at + cut).min(values.len());
                emitted += decoder.push(&values[at..end]).len();
                at = end;
            }
            emitted += decoder.finish().len();
            proptest::prop_assert_eq!(emitted, 0);
        }

        /// A real beacon with random samples overwritten: the right payload
        /// or nothing, never another.
        #[test]
        fn a_damaged_beacon_gives_its_payload_or_nothing(
            seed in 0u64..1_000,
            hits in proptest::collection::vec((0usize..40_000, 1usize..3_000, -1.0f32..1.0), 0..6),
        ) {
            let payload = reader_beacon(seed);
            let mut capture = Vec::new();
            capture.extend(encode_beacon(&payload, 48_000).expect("encode"));
            for (at, len, value) in hits {
                let end = (at + len).min(capture.len());
                let from = at.min(end);
                capture[from..end].iter_mut().for_each(|v| *v = value);
            }
            for r in listen(48_000, &capture, seed, 3_000) {
                proptest::prop_assert_eq!(&r.payload, &payload);
            }
        }
    }
}
