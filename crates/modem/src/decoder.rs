//! Streaming decoder: PCM chunks of any size and rate in, payloads out.
//!
//! Pipeline: sanitise (non-finite samples become 0) → resample to 48 kHz →
//! ring buffer → per format, a chirp matched filter (FFT overlap-save)
//! whose local maxima above the format's threshold become candidates →
//! per candidate: fast format 2: closing chirp (clock and length) →
//! resampling → channel from the reference symbol → Reed–Muller header →
//! LDPC body, re-estimating the channel from the code's soft output;
//! robust format 2: Reed–Muller header from two symbols → the clock from
//! the tones' drift → resampling → tone energies as soft decisions, the
//! room's echo predicted → LDPC body; both formats 1: clock-offset search
//! (DQPSK) → header → body → Reed–Solomon.
//! A payload is emitted only if every codeword decodes and the CRC-32 matches;
//! the same payload is not emitted again within [`DEDUP_SECONDS`], and
//! candidates inside a frame already decoded are skipped.
//!
//! Memory is bounded: at most [`MAX_BUFFER_SECONDS`] of audio is kept.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::sync::Arc;

use realfft::num_complex::Complex32;

use super::ModemError;
use super::encoder::RATE_RANGE;
use super::frame2::{self, Layout};
use super::framing;
use super::ldpc::{self, LdpcDecoder};
use super::modulation;
use super::ofdm::Ofdm;
use super::preamble::{self, Correlator, PeakPicker};
use super::profile::{Format, INTERNAL_RATE, Modulation, Params, Profile};
use super::resample::{Kernel, Resampler};
use super::robust2;

/// A repeat of the same payload within this many seconds is not emitted again.
pub const DEDUP_SECONDS: f64 = 5.0;
/// Audio kept at most, seconds (a bound on memory for an endless stream).
pub const MAX_BUFFER_SECONDS: f64 = 6.0;
/// Clock offsets (ppm) searched for DQPSK, in steps of [`EPS_STEP_PPM`].
const EPS_RANGE_PPM: f64 = 500.0;
const EPS_STEP_PPM: f64 = 100.0;
/// Residual clock offset searched after resampling, ppm (10 ppm steps).
const FINE_RANGE_PPM: f64 = 60.0;
/// Differential pairs scored per coarse clock-offset candidate.
const COARSE_SYMBOLS: usize = 1;
/// Memory of the decision-feedback DQPSK reference (0 = plain differential
/// detection; 0.6 and 0.95 did no better in the simulator); the second field
/// is unused.
const DF_TRIES: [(f32, f32); 1] = [(0.8, 0.0)];
/// Echo-suppression strengths tried for M-FSK, weakest first (see
/// `modulation::demod_mfsk_sequence`); the robust profile's format 2 tries
/// its echo predictor first, then the suppressions but the first.
const ECHO_TRIES: [(f32, f32); 5] = [(0.0, 0.0), (0.4, 0.4), (0.7, 0.7), (0.5, 0.8), (0.3, 0.9)];

/// One decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reception {
    /// The payload, CRC-checked.
    pub payload: Vec<u8>,
    /// The profile it was sent with.
    pub profile: Profile,
    /// Where its preamble starts, in samples at 48 kHz since the stream began.
    pub start: u64,
    /// Where the frame ends, same scale.
    pub end: u64,
}

/// A frame whose preamble and header were heard (so its profile and length
/// are known) but whose body did not decode: a phone that was heard but not
/// understood (too weak, clipped, an echo or a noise burst over the body).
/// Reported for diagnostics only ([`Decoder::take_missed`]); nothing about
/// it is trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Missed {
    /// The profile its header named.
    pub profile: Profile,
    /// Where its preamble starts, in samples at 48 kHz since the stream began.
    pub start: u64,
    /// The payload length its header announced.
    pub len: usize,
}

/// Missed frames kept until [`Decoder::take_missed`] collects them.
const MAX_MISSED: usize = 64;

#[derive(Debug, Clone)]
struct Detector {
    format: Format,
    params: Params,
    ofdm: Ofdm,
    corr: Correlator,
    /// Format 2's second chirp, searched in short blocks so it is found as
    /// soon as it has been heard.
    postamble: Option<Correlator>,
    /// Absolute index of the next correlation block.
    next: u64,
    peaks: PeakPicker,
    max_frame: usize,
}

#[derive(Debug, Clone)]
struct Candidate {
    detector: usize,
    /// Fractional absolute position of the chirp start.
    start: f64,
    /// Payload length once the header is decoded.
    len: Option<usize>,
    eps: f64,
    /// Preamble correlation score.
    score: f32,
    /// Format 2: frame lengths (data symbols) whose second chirp was looked
    /// for and not found.
    rejected: usize,
}

/// Streaming decoder for both profiles. Cloning one is much cheaper than
/// building one (the FFT plans and kernels are shared).
#[derive(Debug, Clone)]
pub struct Decoder {
    resampler: Resampler,
    /// Kernels for undoing a clock offset: short for the search, full for decoding.
    coarse_kernel: Arc<Kernel>,
    fine_kernel: Arc<Kernel>,
    buf: Vec<f32>,
    buf_start: u64,
    detectors: Vec<Detector>,
    pending: Vec<Candidate>,
    /// Decoded frames (detector, start, end), to skip their echoes.
    spans: VecDeque<(u64, u64)>,
    recent: VecDeque<(Vec<u8>, u64)>,
    /// Frames whose header decoded but body did not, oldest first (bounded).
    missed: VecDeque<Missed>,
    /// The fast profile's format-2 code (rate 1/2).
    fast_ldpc: LdpcDecoder,
    /// The robust profile's format-2 code (rate 2/3).
    robust_ldpc: LdpcDecoder,
}

impl Decoder {
    /// A decoder for input at `sample_rate` Hz listening for every profile.
    pub fn new(sample_rate: u32) -> Result<Decoder, ModemError> {
        Decoder::with_profiles(sample_rate, &Profile::ALL)
    }

    /// A decoder for every profile whose band audio at `sample_rate` can
    /// hold (at 32 kHz, none: such a recording cannot carry a payload).
    pub fn for_rate(sample_rate: u32) -> Result<Decoder, ModemError> {
        let fitting: Vec<Profile> = Profile::ALL
            .into_iter()
            .filter(|&p| super::encoder::check_rate(sample_rate, p).is_ok())
            .collect();
        if fitting.is_empty() {
            return Err(ModemError::UnsupportedRate {
                rate: sample_rate,
                profile: "any",
            });
        }
        Decoder::with_profiles(sample_rate, &fitting)
    }

    /// A decoder listening only for `profiles` (cheaper when the profile is
    /// known). Profiles whose band the input rate cannot hold are refused.
    pub fn with_profiles(sample_rate: u32, profiles: &[Profile]) -> Result<Decoder, ModemError> {
        if sample_rate < RATE_RANGE.0 || sample_rate > RATE_RANGE.1 {
            return Err(ModemError::UnsupportedRate {
                rate: sample_rate,
                profile: "any",
            });
        }
        let mut detectors = Vec::new();
        for &profile in profiles {
            super::encoder::check_rate(sample_rate, profile)?;
            for &format in profile.formats() {
                if !super::encoder::fits(sample_rate, format) {
                    continue;
                }
                let params = format.params();
                let chirp = preamble::chirp(&params);
                let band = params.chirp_band();
                let v2 = format == Format::FastV2;
                let max_frame = match format {
                    Format::FastV2 => frame2::layout(framing::MAX_PAYLOAD).map(|l| l.frame_len()),
                    Format::RobustV2 => {
                        robust2::layout(framing::MAX_PAYLOAD).map(|l| l.frame_len())
                    }
                    Format::FastV1 | Format::RobustV1 => {
                        Ok(params.frame_len(framing::stream_len(framing::MAX_PAYLOAD, &params)))
                    }
                };
                detectors.push(Detector {
                    format,
                    params,
                    ofdm: Ofdm::new(params.fft, params.cp, params.ramp),
                    corr: Correlator::new(&chirp, band, 4 * params.chirp_len),
                    postamble: v2.then(|| Correlator::new(&chirp, band, 2 * params.chirp_len)),
                    next: 0,
                    peaks: PeakPicker::default(),
                    max_frame: max_frame.unwrap_or(0),
                });
            }
        }
        let near_unity = 0.5 * 0.95 / (1.0 + EPS_RANGE_PPM * 1e-6);
        Ok(Decoder {
            resampler: Resampler::new(sample_rate as f64, INTERNAL_RATE as f64),
            coarse_kernel: Arc::new(Kernel::new(near_unity, 8)),
            fine_kernel: Arc::new(Kernel::new(near_unity, 32)),
            buf: Vec::new(),
            buf_start: 0,
            detectors,
            pending: Vec::new(),
            spans: VecDeque::new(),
            recent: VecDeque::new(),
            missed: VecDeque::new(),
            fast_ldpc: LdpcDecoder::new(ldpc::HALF),
            robust_ldpc: LdpcDecoder::new(ldpc::TWO_THIRDS),
        })
    }

    /// Feeds samples (any chunk size); returns the payloads completed by them.
    pub fn push(&mut self, samples: &[f32]) -> Vec<Vec<u8>> {
        self.push_receptions(samples)
            .into_iter()
            .map(|r| r.payload)
            .collect()
    }

    /// Like [`Decoder::push`], with the profile and position of each frame.
    pub fn push_receptions(&mut self, samples: &[f32]) -> Vec<Reception> {
        let clean: Vec<f32> = samples
            .iter()
            .map(|&v| {
                if v.is_finite() {
                    v.clamp(-1e6, 1e6)
                } else {
                    0.0
                }
            })
            .collect();
        let mut out = Vec::new();
        // Work through long inputs in pieces so the buffer bound holds.
        for piece in clean.chunks(INTERNAL_RATE as usize) {
            let resampled = self.resampler.process(piece);
            self.buf.extend_from_slice(&resampled);
            self.detect();
            out.extend(self.work_pending());
            self.trim();
        }
        out
    }

    /// Frames heard but not decoded since the last call (header decoded,
    /// body not), oldest first; at most the last 64 are kept. Collecting
    /// them changes nothing about decoding.
    pub fn take_missed(&mut self) -> Vec<Missed> {
        self.missed.drain(..).collect()
    }

    /// Flushes: treats the stream as ended (pads with silence so a frame at
    /// the very end can complete) and returns what that completes.
    pub fn finish(&mut self) -> Vec<Reception> {
        let pad = self
            .detectors
            .iter()
            .map(|d| d.corr.block() + d.params.symbol_len())
            .max()
            .unwrap_or(0);
        let mut out = Vec::new();
        // Silence through the resampler flushes its look-ahead; more silence
        // (already at 48 kHz) lets the last frame's windows complete.
        let silence = vec![0f32; pad];
        let resampled = self.resampler.process(&silence);
        self.buf.extend_from_slice(&resampled);
        self.buf.extend_from_slice(&silence);
        self.detect();
        out.extend(self.work_pending());
        self.trim();
        out
    }

    fn buf_end(&self) -> u64 {
        self.buf_start + self.buf.len() as u64
    }

    fn detect(&mut self) {
        let end = self.buf_end();
        for (index, det) in self.detectors.iter_mut().enumerate() {
            let block = det.corr.block() as u64;
            let hop = det.corr.hop() as u64;
            let len = det.params.chirp_len as u64;
            while det.next >= self.buf_start && det.next + block <= end {
                let from = (det.next - self.buf_start) as usize;
                let scores = det.corr.scores(&self.buf[from..from + block as usize]);
                for (start, score) in det.peaks.feed(det.next, &scores, det.params.threshold, len) {
                    let inside = self
                        .spans
                        .iter()
                        .any(|&(s, e)| start + len as f64 / 2.0 >= s as f64 && start < e as f64);
                    if !inside {
                        self.pending.push(Candidate {
                            detector: index,
                            start,
                            len: None,
                            eps: 0.0,
                            score,
                            rejected: 0,
                        });
                    }
                }
                det.next += hop;
            }
        }
    }

    /// The samples to demodulate a candidate from, and where its chirp
    /// starts in them. With a clock offset `eps` the stretch that
    /// holds the first `count` symbols is resampled so that the symbols sit
    /// at their nominal spacing again (this also removes the frequency
    /// shift, which at 2048-point symbols would otherwise cause
    /// inter-carrier interference).
    fn view(
        &self,
        det: &Detector,
        start: f64,
        eps: f64,
        count: usize,
        kernel: &Arc<Kernel>,
    ) -> Option<(Cow<'_, [f32]>, f64)> {
        let p = &det.params;
        let origin = start - self.buf_start as f64;
        if eps == 0.0 {
            return Some((Cow::Borrowed(&self.buf[..]), origin));
        }
        let margin = 128.0;
        let from = (origin + p.chirp_len as f64 - margin).max(0.0).floor();
        let to =
            origin + p.chirp_len as f64 + (count * p.symbol_len()) as f64 * (1.0 + eps) + margin;
        let to = (to.ceil().max(from) as usize).min(self.buf.len());
        let segment = self.buf.get(from as usize..to)?;
        let mut resampler = Resampler::with_kernel(Arc::clone(kernel), 1.0 + eps, 1.0);
        let mut out = resampler.process(segment);
        out.extend(resampler.finish());
        Some((Cow::Owned(out), (origin - from) / (1.0 + eps)))
    }

    /// Spectra of symbols `range` (reference included) for a chirp starting
    /// at `origin` in `samples`, with residual clock offset `eps` applied to
    /// the window positions. None if some window is outside the samples.
    fn spectra(
        det: &Detector,
        samples: &[f32],
        origin: f64,
        eps: f64,
        range: std::ops::Range<usize>,
    ) -> Option<Vec<Vec<Complex32>>> {
        let p = &det.params;
        range
            .map(|m| {
                let at = origin
                    + p.chirp_len as f64
                    + (m * p.symbol_len()) as f64 * (1.0 + eps)
                    + (p.cp - p.backoff) as f64;
                det.ofdm.analyze(samples, at)
            })
            .collect()
    }

    /// Absolute sample index just past the first `m` symbols (and the fade),
    /// allowing for the largest clock offset searched.
    fn symbol_end(det: &Detector, start: f64, m: usize) -> u64 {
        let p = &det.params;
        let at =
            start + p.chirp_len as f64 + (m * p.symbol_len()) as f64 * (1.0 + EPS_RANGE_PPM * 1e-6);
        at.max(0.0).ceil() as u64 + p.ramp as u64 + 160
    }

    /// Demodulated cells of data symbols `0..count`.
    fn cells(
        det: &Detector,
        samples: &[f32],
        origin: f64,
        eps: f64,
        echo: (f32, f32),
        count: usize,
    ) -> Option<Vec<(u8, f32)>> {
        let p = &det.params;
        let reference = p.reference_symbols();
        let spectra = Self::spectra(det, samples, origin, eps, 0..reference + count)?;
        Some(match p.modulation {
            Modulation::Dqpsk => modulation::demod_dqpsk_sequence(&spectra, p, echo.0),
            Modulation::Mfsk { bits } => modulation::demod_mfsk_sequence(&spectra, p, bits, echo),
            Modulation::Qpsk => return None,
        })
    }

    /// DQPSK constellation sharpness (Σ |d| cos 4∠d over carriers and the
    /// first `count` differential pairs) for window drift `eps`.
    fn sharpness(det: &Detector, samples: &[f32], origin: f64, eps: f64, count: usize) -> f64 {
        let p = &det.params;
        let Some(spectra) = Self::spectra(det, samples, origin, eps, 0..count + 1) else {
            return f64::NEG_INFINITY;
        };
        let mut sum = 0f64;
        for w in spectra.windows(2) {
            let used = p.first_bin..p.first_bin + p.bins;
            for (cur, prev) in w[1][used.clone()].iter().zip(&w[0][used]) {
                let d = cur * prev.conj();
                let n = d.norm();
                if n > 0.0 {
                    let u = d / n;
                    let q = u * u;
                    sum += ((q * q).re * n) as f64;
                }
            }
        }
        sum
    }

    /// Clock offset maximising the sharpness over a grid of `half_range`
    /// either side of `center` in `step`s, then refined by halving steps.
    fn search_eps(
        det: &Detector,
        samples: &[f32],
        origin: f64,
        count: usize,
        center: f64,
        half_range: f64,
        step: f64,
    ) -> f64 {
        let steps = (half_range / step).round() as i32;
        let mut best = (center, f64::NEG_INFINITY);
        for i in -steps..=steps {
            let eps = center + i as f64 * step;
            let m = Self::sharpness(det, samples, origin, eps, count);
            if m > best.1 {
                best = (eps, m);
            }
        }
        let mut step = step * 0.5;
        for _ in 0..3 {
            for eps in [best.0 - step, best.0 + step] {
                let m = Self::sharpness(det, samples, origin, eps, count);
                if m > best.1 {
                    best = (eps, m);
                }
            }
            step *= 0.5;
        }
        best.0
    }

    /// Cells of data symbols `0..count`, trying each clock offset in
    /// `coarse` (DQPSK: coarse search on window drift, resampling, fine
    /// search) and handing each result to `accept` until it returns Some.
    fn demodulate<T>(
        &self,
        det: &Detector,
        start: f64,
        count: usize,
        coarse: &[f64],
        mut accept: impl FnMut(&[(u8, f32)], f64) -> Option<T>,
    ) -> Option<T> {
        let p = &det.params;
        for &eps in coarse {
            let (samples, origin) = self.view(
                det,
                start,
                eps,
                p.reference_symbols() + count,
                &self.fine_kernel,
            )?;
            let fine = if p.modulation == Modulation::Dqpsk {
                Self::search_eps(
                    det,
                    &samples,
                    origin,
                    count,
                    0.0,
                    FINE_RANGE_PPM * 1e-6,
                    10e-6,
                )
            } else {
                0.0
            };
            let echoes: &[(f32, f32)] = match p.modulation {
                Modulation::Dqpsk | Modulation::Qpsk => &DF_TRIES,
                Modulation::Mfsk { .. } => &ECHO_TRIES,
            };
            for &echo in echoes {
                if let Some(cells) = Self::cells(det, &samples, origin, fine, echo, count)
                    && let Some(out) = accept(&cells, eps + fine)
                {
                    return Some(out);
                }
            }
        }
        None
    }

    /// Clock offsets worth demodulating with, best first. DQPSK: a grid over
    /// ±[`EPS_RANGE_PPM`] in [`EPS_STEP_PPM`] steps, each scored on the first
    /// `count` symbols after resampling (at 4096-point symbols a 300 ppm
    /// offset shifts the top carriers by half a bin, so the score is only
    /// meaningful once the offset is undone). M-FSK needs no phase, so only
    /// its drift stays inside the window margin, so no search is needed.
    fn coarse_eps(&self, det: &Detector, start: f64, count: usize) -> Vec<f64> {
        match det.params.modulation {
            Modulation::Dqpsk => {
                let steps = (EPS_RANGE_PPM / EPS_STEP_PPM).round() as i32;
                let pairs = count.clamp(1, COARSE_SYMBOLS);
                let mut scored: Vec<(f64, f64)> = (-steps..=steps)
                    .filter_map(|i| {
                        let eps = i as f64 * EPS_STEP_PPM * 1e-6;
                        let (samples, origin) =
                            self.view(det, start, eps, pairs + 1, &self.coarse_kernel)?;
                        Some((eps, Self::sharpness(det, &samples, origin, 0.0, pairs)))
                    })
                    .collect();
                scored.sort_by(|a, b| b.1.total_cmp(&a.1));
                scored.into_iter().take(2).map(|(eps, _)| eps).collect()
            }
            Modulation::Mfsk { .. } | Modulation::Qpsk => vec![0.0],
        }
    }

    fn work_pending(&mut self) -> Vec<Reception> {
        let mut out = Vec::new();
        let mut keep = Vec::new();
        let pending = std::mem::take(&mut self.pending);
        for mut cand in pending {
            match self.advance(&mut cand) {
                Step::Wait => keep.push(cand),
                Step::Drop => {}
                Step::Lost(missed) => {
                    if self.missed.len() == MAX_MISSED {
                        self.missed.pop_front();
                    }
                    self.missed.push_back(missed);
                }
                Step::Done(r) => {
                    self.spans.push_back((r.start, r.end));
                    let dup = self.recent.iter().any(|(p, end)| {
                        *p == r.payload
                            && r.end.saturating_sub(*end)
                                < (DEDUP_SECONDS * INTERNAL_RATE as f64) as u64
                    });
                    if !dup {
                        self.recent.push_back((r.payload.clone(), r.end));
                        out.push(r);
                    } else if let Some(entry) =
                        self.recent.iter_mut().find(|(p, _)| *p == r.payload)
                    {
                        entry.1 = entry.1.max(r.end);
                    }
                }
            }
        }
        // Candidates overlapping a frame just decoded are echoes of it.
        keep.retain(|c| {
            !self
                .spans
                .iter()
                .any(|&(s, e)| c.start + 1.0 >= s as f64 && c.start < e as f64)
        });
        self.pending = keep;
        out
    }

    fn advance(&self, cand: &mut Candidate) -> Step {
        let Some(det) = self.detectors.get(cand.detector) else {
            return Step::Drop;
        };
        match det.format {
            Format::FastV2 => return self.advance_v2(det, cand),
            Format::RobustV2 => return self.advance_robust_v2(det, cand),
            Format::FastV1 | Format::RobustV1 => {}
        }
        let p = det.params;
        let reference = p.reference_symbols();
        let end = self.buf_end();
        if cand.start + (p.chirp_len as f64) < self.buf_start as f64 {
            return Step::Drop;
        }
        let len = match cand.len {
            Some(len) => len,
            None => {
                let header_bytes = framing::header_len(&p);
                let header_syms = p.data_symbols(header_bytes);
                if Self::symbol_end(det, cand.start, reference + header_syms) > end {
                    return Step::Wait;
                }
                let coarse = self.coarse_eps(det, cand.start, header_syms);
                let found = self.demodulate(det, cand.start, header_syms, &coarse, |cells, eps| {
                    let (bytes, rel) = modulation::bytes_from_cells(cells, header_bytes, &p);
                    framing::decode_header(&bytes, &rel, &p).map(|len| (len, eps))
                });
                match found {
                    Some((len, eps)) => {
                        cand.len = Some(len);
                        cand.eps = eps;
                        len
                    }
                    None => return Step::Drop,
                }
            }
        };
        let stream = framing::stream_len(len, &p);
        let symbols = p.data_symbols(stream);
        if Self::symbol_end(det, cand.start, reference + symbols) > end {
            return Step::Wait;
        }
        let header = framing::header_len(&p);
        let mut decode = |cells: &[(u8, f32)], eps: f64| {
            let (bytes, rel) = modulation::bytes_from_cells(cells, stream, &p);
            let payload = framing::decode_body(bytes.get(header..)?, rel.get(header..)?, len, &p)?;
            Some((payload, eps))
        };
        // The header stage's clock estimate first; a fresh search if that fails.
        let mut found = None;
        if p.modulation == Modulation::Dqpsk {
            found = self.demodulate(det, cand.start, symbols, &[cand.eps], &mut decode);
        }
        if found.is_none() {
            let coarse: Vec<f64> = self
                .coarse_eps(det, cand.start, symbols)
                .into_iter()
                .filter(|e| p.modulation != Modulation::Dqpsk || (e - cand.eps).abs() > 20e-6)
                .collect();
            found = self.demodulate(det, cand.start, symbols, &coarse, &mut decode);
        }
        match found {
            Some((payload, eps)) => {
                let start = cand.start.max(0.0) as u64;
                let frame = p.frame_len(stream) as f64 * (1.0 + eps);
                Step::Done(Reception {
                    payload,
                    profile: det.format.profile(),
                    start,
                    end: start + frame as u64,
                })
            }
            None => Step::Lost(Missed {
                profile: det.format.profile(),
                start: cand.start.max(0.0) as u64,
                len,
            }),
        }
    }

    /// Format 2 of the fast profile: the second chirp gives the clock offset
    /// and the frame length, the frame is resampled, demodulated coherently
    /// against the reference symbol, and the header and LDPC body decoded;
    /// if the body does not decode, the channel is estimated again from
    /// every cell, weighted by the code's own soft output, and decoded again.
    fn advance_v2(&self, det: &Detector, cand: &mut Candidate) -> Step {
        let p = det.params;
        if cand.start + (p.chirp_len as f64) < self.buf_start as f64 {
            return Step::Drop;
        }
        let Some(post) = det.postamble.as_ref() else {
            return Step::Drop;
        };
        let longest = frame2::layout(framing::MAX_PAYLOAD).map_or(0, |l| l.symbols);
        for symbols in cand.rejected + 1..=longest {
            match self.find_postamble(det, post, cand, symbols) {
                PostambleSearch::Wait => return Step::Wait,
                PostambleSearch::Absent => cand.rejected = symbols,
                // A chirp-like echo where a shorter frame would end gets a
                // header that disagrees: look further.
                PostambleSearch::Found(at) => match self.decode_v2(det, cand.start, symbols, at) {
                    Some(step) => return step,
                    None => cand.rejected = symbols,
                },
            }
        }
        Step::Drop
    }

    /// Decodes a format-2 frame whose second chirp was found at `at` for
    /// `symbols` data symbols; None if its header does not announce that
    /// length (or is too weak to say).
    fn decode_v2(&self, det: &Detector, start: f64, symbols: usize, at: f64) -> Option<Step> {
        let p = det.params;
        let eps = (at - start) / frame2::postamble_offset(symbols) as f64 - 1.0;
        let (samples, origin) = self.view(det, start, eps, 1 + symbols, &self.fine_kernel)?;
        let spectra = Self::spectra(det, &samples, origin, 0.0, 0..1 + symbols)?;
        let cells: Vec<Vec<Complex32>> = spectra
            .iter()
            .map(|s| s[p.first_bin..p.first_bin + frame2::CARRIERS].to_vec())
            .collect();
        let raw: Vec<Complex32> = cells[0]
            .iter()
            .enumerate()
            .map(|(i, y)| y * frame2::reference(i).conj())
            .collect();
        // Equalised with the raw reference, a cell's spread per axis is the
        // noise of one symbol (half from the cell, half from the reference).
        let (_, _, noise) = qpsk_llrs(&cells[1..], &raw);
        let mut channel = shrink_channel(&raw, &noise);
        let (mut llr, mut corrections, _) = qpsk_llrs(&cells[1..], &channel);
        let header: Vec<f32> = frame2::HEADER_POSITIONS
            .iter()
            .flat_map(|&h| llr[h])
            .collect();
        let (len, confidence) = frame2::decode_header(&header)?;
        let layout = frame2::layout(len).ok()?;
        if confidence < HEADER_CONFIDENCE || layout.symbols != symbols {
            return None;
        }
        let first = start.max(0.0) as u64;
        for pass in 0..=CHANNEL_PASSES {
            match frame2::decode_body(&llr, &layout, &self.fast_ldpc) {
                Ok(payload) => {
                    let frame = layout.frame_len() as f64 * (1.0 + eps);
                    return Some(Step::Done(Reception {
                        payload,
                        profile: det.format.profile(),
                        start: first,
                        end: first + frame as u64,
                    }));
                }
                Err(posterior) if pass < CHANNEL_PASSES => {
                    let expected = expected_cells(&layout, &posterior);
                    channel = estimate_channel(&cells, &corrections, &expected, &noise);
                    (llr, corrections, _) = qpsk_llrs(&cells[1..], &channel);
                }
                Err(_) => {}
            }
        }
        Some(Step::Lost(Missed {
            profile: det.format.profile(),
            start: first,
            len,
        }))
    }

    /// Format 2 of the robust profile: the header from the first two
    /// symbols' tone energies; once the whole frame is in, the sender's
    /// clock from the tones' drift (undone by resampling), then the tone
    /// energies as soft decisions into the LDPC code, with the echo first
    /// predicted, then suppressed at each strength, until one decodes.
    fn advance_robust_v2(&self, det: &Detector, cand: &mut Candidate) -> Step {
        let p = det.params;
        if cand.start + (p.chirp_len as f64) < self.buf_start as f64 {
            return Step::Drop;
        }
        let origin = cand.start - self.buf_start as f64;
        let len = match cand.len {
            Some(len) => len,
            None => {
                let header = robust2::HEADER_SYMBOLS;
                if Self::symbol_end(det, cand.start, header) > self.buf_end() {
                    return Step::Wait;
                }
                let Some(spectra) = Self::spectra(det, &self.buf, origin, 0.0, 0..header) else {
                    return Step::Drop;
                };
                let energy = robust2::levelled(modulation::tone_energies(&spectra, &p));
                let llr = robust2::fsk_llrs(&energy, &robust2::Echo::Subtracted(0.0, 0.0));
                match robust2::decode_header(&llr) {
                    Some((len, confidence)) if confidence >= ROBUST_HEADER_CONFIDENCE => {
                        cand.len = Some(len);
                        len
                    }
                    _ => return Step::Drop,
                }
            }
        };
        let Ok(layout) = robust2::layout(len) else {
            return Step::Drop;
        };
        if Self::symbol_end(det, cand.start, layout.symbols) > self.buf_end() {
            return Step::Wait;
        }
        // The sender's clock from the tones' drift, undone by resampling and
        // measured again (the estimate from a drifted frame falls short).
        let bins_at = |eps: f64| -> Option<Vec<Vec<Complex32>>> {
            let (samples, origin) =
                self.view(det, cand.start, eps, layout.symbols, &self.fine_kernel)?;
            let spectra = Self::spectra(det, &samples, origin, 0.0, 0..layout.symbols)?;
            let used = p.first_bin..p.first_bin + p.bins;
            spectra
                .into_iter()
                .map(|s| s.get(used.clone()).map(<[_]>::to_vec))
                .collect()
        };
        let Some(mut bins) = bins_at(0.0) else {
            return Step::Drop;
        };
        let mut eps = 0.0;
        for _ in 0..CLOCK_PASSES {
            let drift = robust2::tone_drift(&bins);
            if drift.abs() < CLOCK_SETTLED_PPM * 1e-6 {
                break;
            }
            eps = (eps - drift).clamp(-EPS_RANGE_PPM * 1e-6, EPS_RANGE_PPM * 1e-6);
            match bins_at(eps) {
                Some(b) => bins = b,
                None => break,
            }
        }
        let first = cand.start.max(0.0) as u64;
        let decode = |bins: &[Vec<Complex32>]| {
            let energy = bins
                .iter()
                .map(|row| row.iter().map(|c| c.norm_sqr()).collect())
                .collect();
            let raw = robust2::levelled(energy);
            let mut tries = vec![robust2::Echo::Predicted(robust2::echo_predictor(
                &raw, ECHO_ORDER,
            ))];
            tries.extend(
                ECHO_TRIES[1..]
                    .iter()
                    .map(|&(share, memory)| robust2::Echo::Subtracted(share, memory)),
            );
            tries.iter().find_map(|echo| {
                robust2::decode_body(&robust2::fsk_llrs(&raw, echo), &layout, &self.robust_ldpc)
            })
        };
        // If the clock estimate was led astray (a loud in-band whistle can
        // outweigh the tones), the frame as heard gets its chance too.
        let mut found = decode(&bins).map(|payload| (payload, eps));
        if found.is_none() && eps != 0.0 {
            found = bins_at(0.0)
                .and_then(|b| decode(&b))
                .map(|payload| (payload, 0.0));
        }
        if let Some((payload, eps)) = found {
            return Step::Done(Reception {
                payload,
                profile: Profile::Robust,
                start: first,
                end: first + (layout.frame_len() as f64 * (1.0 + eps)) as u64,
            });
        }
        Step::Lost(Missed {
            profile: Profile::Robust,
            start: first,
            len,
        })
    }

    /// Looks for format 2's second chirp where a frame of `symbols` data
    /// symbols would put it (within ±[`EPS_RANGE_PPM`]).
    fn find_postamble(
        &self,
        det: &Detector,
        post: &Correlator,
        cand: &Candidate,
        symbols: usize,
    ) -> PostambleSearch {
        let p = &det.params;
        let nominal = frame2::postamble_offset(symbols) as f64;
        let expected = cand.start + nominal;
        let slack = (nominal * EPS_RANGE_PPM * 1e-6).ceil() + 4.0;
        // The block ends just after the latest chirp it must contain.
        let end = (expected + slack).ceil().max(0.0) as u64 + p.chirp_len as u64 + 1;
        if end > self.buf_end() {
            return PostambleSearch::Wait;
        }
        let Some(from) = end.checked_sub(post.block() as u64) else {
            return PostambleSearch::Absent;
        };
        if from < self.buf_start {
            return PostambleSearch::Absent;
        }
        let at = (from - self.buf_start) as usize;
        let scores = post.scores(&self.buf[at..at + post.block()]);
        let lo = ((expected - slack).floor() - from as f64).max(1.0) as usize;
        let hi = (((expected + slack).ceil() - from as f64) as usize).min(scores.len() - 2);
        let Some((best, score)) = (lo..=hi)
            .map(|i| (i, scores[i]))
            .max_by(|a, b| a.1.total_cmp(&b.1))
        else {
            return PostambleSearch::Absent;
        };
        if score < p.threshold.max(POSTAMBLE_SHARE * cand.score) {
            return PostambleSearch::Absent;
        }
        let frac = parabolic_offset(scores[best - 1], score, scores[best + 1]);
        PostambleSearch::Found(from as f64 + best as f64 + f64::from(frac))
    }

    fn trim(&mut self) {
        let end = self.buf_end();
        let limit = (MAX_BUFFER_SECONDS * INTERNAL_RATE as f64) as u64;
        let floor = end.saturating_sub(limit);
        // Candidates that can no longer complete inside the bound are dropped.
        self.pending.retain(|c| c.start.max(0.0) >= floor as f64);
        let mut keep_from = end;
        for det in &mut self.detectors {
            if det.next < floor {
                det.next = floor;
                det.peaks.reset();
            }
            keep_from = keep_from.min(det.next);
            if let Some(at) = det.peaks.held_at() {
                keep_from = keep_from.min(at.saturating_sub(2));
            }
        }
        for c in &self.pending {
            keep_from = keep_from.min((c.start.floor() - 2.0).max(0.0) as u64);
        }
        let keep_from = keep_from.max(floor).max(self.buf_start);
        let drop = ((keep_from - self.buf_start) as usize).min(self.buf.len());
        self.buf.drain(..drop);
        self.buf_start += drop as u64;
        let dedup = (DEDUP_SECONDS * INTERNAL_RATE as f64) as u64;
        while self.recent.front().is_some_and(|(_, e)| e + dedup < end) {
            self.recent.pop_front();
        }
        let longest = self
            .detectors
            .iter()
            .map(|d| d.max_frame as u64)
            .max()
            .unwrap_or(0);
        while self.spans.front().is_some_and(|&(_, e)| e + longest < end) {
            self.spans.pop_front();
        }
    }
}

/// Where between its neighbours a correlation peak really is (−0.5..0.5
/// samples), from the parabola through the three scores.
pub(crate) fn parabolic_offset(prev: f32, peak: f32, next: f32) -> f32 {
    let curve = prev - 2.0 * peak + next;
    if curve < 0.0 {
        (0.5 * (prev - next) / curve).clamp(-0.5, 0.5)
    } else {
        0.0
    }
}

/// Where format 2's second chirp is.
enum PostambleSearch {
    /// Not all of the audio it could be in has arrived.
    Wait,
    /// Not there: the frame is not this long.
    Absent,
    /// Its start, in absolute samples at 48 kHz.
    Found(f64),
}

/// Format 2's header: its best Reed–Muller correlation over the sum of
/// |LLR| must reach this (1 for a clean header, about 0.3 for noise; 0.5
/// means about three quarters of the soft weight agrees).
const HEADER_CONFIDENCE: f32 = 0.5;
/// Clock estimates of the robust profile's format 2 (each from the frame
/// resampled by the previous one), stopping once the residual drift is
/// below [`CLOCK_SETTLED_PPM`]: in a hall at DRR 0 dB the estimate falls
/// short by a third or so, and three passes bring ±300 ppm frames to the
/// success rate of 0 ppm ones (297/300 against 229/300 without).
const CLOCK_PASSES: usize = 3;
/// A residual drift below this needs no more resampling, ppm.
const CLOCK_SETTLED_PPM: f64 = 10.0;
/// Symbols of its own past the robust profile's format-2 echo predictor
/// uses (2 and 4 did alike in the simulator's halls, 1 and 8 worse).
const ECHO_ORDER: usize = 2;
/// The robust profile's format-2 header: as [`HEADER_CONFIDENCE`], lower
/// because its soft decisions are noisier (non-coherent tones, echoes);
/// the LDPC code and the CRC-32 still stand between a wrong length and a
/// payload.
const ROBUST_HEADER_CONFIDENCE: f32 = 0.4;
/// Format 2's second chirp must correlate at least this share of the first.
const POSTAMBLE_SHARE: f32 = 0.5;
/// Channel estimates after the first, each from the previous decoding's
/// soft output (on the grid's hardest trials, white noise at 0 dB with a
/// 16 kHz roll-off, 12 recovered 7 of 18 frames that 4 lost; the extra
/// passes run only on frames that are failing).
const CHANNEL_PASSES: usize = 12;
/// Carriers per group sharing one noise estimate: 64 (750 Hz) is narrow
/// enough to follow a speaker's roll-off and wide enough for a steady
/// estimate (on those trials 16 recovered 7 of 18, 32 9, 64 13, 112 12).
const NOISE_GROUP: usize = 64;

/// Two LLRs (positive: bit 0) per data cell of format 2, from the cells'
/// spectra (data symbols only) and a channel estimate per carrier: each
/// cell is turned back by its carrier's channel and by its symbol's common
/// gain (decision-directed: what is left of the clock offset after
/// resampling turns a symbol by up to a tenth of a turn, and an AGC pumping
/// on station noise changes its level by several dB), and scaled by its
/// carrier's strength over the noise measured around it (per group of
/// [`NOISE_GROUP`] carriers, times the symbol's own noise share), so
/// carriers a speaker rolls off or a room fades, and symbols a burst hit,
/// count for less. Also returns each symbol's correction (multiply its
/// cells by it) and the noise variance per group.
fn qpsk_llrs(
    symbols: &[Vec<Complex32>],
    channel: &[Complex32],
) -> (Vec<[f32; 2]>, Vec<Complex32>, Vec<f32>) {
    let carriers = channel.len();
    let half = std::f32::consts::FRAC_1_SQRT_2;
    let strength: Vec<f32> = channel.iter().map(|h| h.norm() * half).collect();
    let total: f32 = channel.iter().map(|h| h.norm()).sum();
    let mut corrections = Vec::with_capacity(symbols.len());
    // Equalised cells: y·conj(h)/|h| ≈ |h|·g·x (signal ±|h|/√2 per axis).
    let turned: Vec<Vec<Complex32>> = symbols
        .iter()
        .map(|symbol| {
            let mut row: Vec<Complex32> = symbol
                .iter()
                .zip(channel)
                .map(|(y, h)| {
                    let mag = h.norm();
                    if mag > 0.0 {
                        y * h.conj() / mag
                    } else {
                        Complex32::default()
                    }
                })
                .collect();
            // The symbol's gain g: Σ r·conj(decided point) / Σ |h|.
            let sum: Complex32 = row
                .iter()
                .map(|r| r * Complex32::new(half.copysign(r.re), -half.copysign(r.im)))
                .sum();
            let gain = if total > 0.0 {
                sum / total
            } else {
                Complex32::new(1.0, 0.0)
            };
            let correction = if gain.norm() > 1e-6 && gain.norm().is_finite() {
                gain.inv()
            } else {
                Complex32::new(1.0, 0.0)
            };
            row.iter_mut().for_each(|r| *r *= correction);
            corrections.push(correction);
            row
        })
        .collect();
    let deviation = |r: Complex32, a: f32| (r.re.abs() - a).powi(2) + (r.im.abs() - a).powi(2);
    // Each symbol's share of the noise (1 when all are alike).
    let per_symbol: Vec<f32> = turned
        .iter()
        .map(|row| {
            row.iter()
                .zip(&strength)
                .map(|(&r, &a)| deviation(r, a))
                .sum()
        })
        .collect();
    let mean = per_symbol.iter().sum::<f32>() / per_symbol.len().max(1) as f32;
    let share: Vec<f32> = per_symbol
        .iter()
        .map(|&d| if mean > 0.0 { (d / mean).max(0.1) } else { 1.0 })
        .collect();
    let mut out = vec![[0f32; 2]; symbols.len() * carriers];
    let mut noise = Vec::with_capacity(carriers.div_ceil(NOISE_GROUP));
    for group in (0..carriers).step_by(NOISE_GROUP) {
        let range = group..(group + NOISE_GROUP).min(carriers);
        let (mut spread, mut power, mut count) = (0f32, 0f32, 0f32);
        for (row, s) in turned.iter().zip(&share) {
            for i in range.clone() {
                spread += deviation(row[i], strength[i]) / s;
                power += strength[i] * strength[i];
                count += 2.0;
            }
        }
        let var = (spread / count.max(1.0)).max(1e-6 * power / count.max(1.0));
        noise.push(var);
        if !var.is_finite() || var <= 0.0 {
            continue;
        }
        for (m, (row, s)) in turned.iter().zip(&share).enumerate() {
            for i in range.clone() {
                let (r, a) = (row[i], strength[i]);
                let v = var * s;
                out[m * carriers + i] = [2.0 * a * r.re / v, 2.0 * a * r.im / v];
            }
        }
    }
    (out, corrections, noise)
}

/// Carriers either side averaged for the smooth part of the channel.
const SMOOTH_HALF_WIDTH: usize = 4;

/// Shrinks a least-squares channel estimate towards its smooth part, per
/// carrier by σ_R² / (σ_R² + e): the direct sound (speaker, timing) varies
/// slowly across carriers, a room's reverberation adds a part R that
/// changes from one carrier to the next; `error` is the estimate's noise
/// variance per group of [`NOISE_GROUP`] carriers, and σ_R² is what the
/// estimate's spread around its smooth part shows beyond that noise. In a
/// dry room the estimate becomes the smooth part (noise averaged over 9
/// carriers); where the room dominates, it stays as measured.
fn shrink_channel(raw: &[Complex32], error: &[f32]) -> Vec<Complex32> {
    let n = raw.len();
    let smooth: Vec<Complex32> = (0..n)
        .map(|i| {
            let lo = i.saturating_sub(SMOOTH_HALF_WIDTH);
            let hi = (i + SMOOTH_HALF_WIDTH + 1).min(n);
            raw[lo..hi].iter().sum::<Complex32>() / (hi - lo) as f32
        })
        .collect();
    let mut out = Vec::with_capacity(n);
    for (g, group) in (0..n).step_by(NOISE_GROUP).enumerate() {
        let range = group..(group + NOISE_GROUP).min(n);
        let e = error.get(g).copied().unwrap_or(0.0).max(0.0);
        let spread = range
            .clone()
            .map(|i| (raw[i] - smooth[i]).norm_sqr())
            .sum::<f32>()
            / range.len() as f32;
        let room = (spread - e).max(0.0);
        let w = if room + e > 0.0 {
            room / (room + e)
        } else {
            1.0
        };
        out.extend(range.map(|i| smooth[i] + (raw[i] - smooth[i]) * w));
    }
    out
}

/// The expected value of every data cell of format 2: header cells are
/// known; a body cell is its soft QPSK value from the decoder's
/// a-posteriori LLRs, (tanh(L0/2) + j·tanh(L1/2)) / √2.
fn expected_cells(layout: &Layout, posterior: &[[f32; 2]]) -> Vec<Complex32> {
    let mut cells = vec![Complex32::default(); layout.symbols * frame2::CARRIERS];
    let header = frame2::header_bits(layout.len);
    for (j, &h) in frame2::HEADER_POSITIONS.iter().enumerate() {
        cells[h] = frame2::qpsk(header[2 * j], header[2 * j + 1]);
    }
    let half = std::f32::consts::FRAC_1_SQRT_2;
    for u in 0..layout.slots {
        let at = layout.body_cell(u);
        if let (Some(c), Some(l)) = (cells.get_mut(at), posterior.get(at)) {
            *c = Complex32::new(half * (l[0] / 2.0).tanh(), half * (l[1] / 2.0).tanh());
        }
    }
    cells
}

/// Channel per carrier from the reference symbol and every data symbol's
/// expected cells, each data symbol corrected by its common gain first
/// (least squares: Σ y·conj(x) / Σ |x|²), shrunk towards its smooth part
/// given `noise`, one symbol's noise variance per group of carriers.
fn estimate_channel(
    cells: &[Vec<Complex32>],
    corrections: &[Complex32],
    expected: &[Complex32],
    noise: &[f32],
) -> Vec<Complex32> {
    let carriers = frame2::CARRIERS;
    let mut weight = vec![0f32; carriers];
    let raw: Vec<Complex32> = (0..carriers)
        .map(|i| {
            let mut num = cells[0][i] * frame2::reference(i).conj();
            let mut den = 1f32;
            for (m, symbol) in cells[1..].iter().enumerate() {
                let x = expected.get(m * carriers + i).copied().unwrap_or_default();
                let correction = corrections
                    .get(m)
                    .copied()
                    .unwrap_or(Complex32::new(1.0, 0.0));
                num += symbol[i] * correction * x.conj();
                den += x.norm_sqr();
            }
            weight[i] = den;
            num / den
        })
        .collect();
    // The estimate's noise: one symbol's, over the symbols' total weight.
    let error: Vec<f32> = weight
        .chunks(NOISE_GROUP)
        .zip(noise)
        .map(|(w, n)| n * w.len() as f32 / w.iter().sum::<f32>().max(1.0))
        .collect();
    shrink_channel(&raw, &error)
}

enum Step {
    Wait,
    Drop,
    /// Header decoded, body not: dropped like `Drop`, and noted.
    Lost(Missed),
    Done(Reception),
}

#[cfg(test)]
impl Decoder {
    /// Samples currently buffered (for the memory-bound test).
    pub(crate) fn buffered(&self) -> usize {
        self.buf.len() + self.pending.len()
    }
}
