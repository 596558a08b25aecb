//! `sonotap analyze`: why a phone is not heard. One pass over a WAV file in
//! bounded memory feeds the real streaming decoders (which frames decode,
//! and which readers' beacons),
//! level statistics (peak, RMS, clipping), an STFT whose power is summed per
//! modem band (noise floor per band, SNR per frame), and a time-decimated
//! spectrogram rendered to PNG with the bands, frames and clipping marked.
//!
//! Pure analysis apart from reading the file ([`analyze`]) and writing the
//! picture ([`Report::write_png`]).

mod bands;
mod hints;
mod levels;
mod render;
mod stft;

use std::path::{Path, PathBuf};

use serde::Serialize;
use thiserror::Error;

use crate::AudioError;
use crate::wav::WavChunks;
use sonotap_modem::{BeaconDecoder, BeaconReception, Decoder, INTERNAL_RATE, Missed, Reception};

pub use bands::{Band, FLOOR_PERCENTILE};
pub use levels::CLIP_LEVEL;
pub use render::{MAX_WIDTH, SPECTRUM_ROWS, STRIP_ROWS, band_colour, profile_colour};
pub use stft::{FFT_LEN, HOP};

/// Why a file could not be analysed (exit 2).
#[derive(Debug, Error)]
pub enum AnalyzeError {
    /// Missing, unreadable, or not a WAV file.
    #[error(transparent)]
    Audio(#[from] AudioError),
    /// A WAV file without a single sample.
    #[error("{path}: no audio in the file")]
    Empty {
        /// The file.
        path: PathBuf,
    },
    /// The picture could not be written.
    #[error("cannot write {path}: {detail}")]
    Png {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        detail: String,
    },
}

/// Options for [`analyze`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// The widest spectrogram, pixels (columns); longer files are decimated
    /// in time. At most [`MAX_WIDTH`].
    pub max_width: u32,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            max_width: MAX_WIDTH,
        }
    }
}

/// Level statistics of the whole file.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LevelReport {
    /// Peak level, dBFS (`None`: digital silence).
    pub peak_dbfs: Option<f64>,
    /// RMS level, dBFS (full-scale square wave = 0).
    pub rms_dbfs: Option<f64>,
    /// Samples at or above [`CLIP_LEVEL`] of full scale.
    pub clipped_samples: u64,
    /// The same as a percentage of all samples.
    pub clipped_percent: f64,
}

/// Noise in one band: a payment profile's, or the beacon's.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BandReport {
    /// The profile (`fast`, `robust`), or `beacon`.
    pub profile: &'static str,
    /// Its band, Hz.
    pub low_hz: f32,
    /// Its band, Hz.
    pub high_hz: f32,
    /// In-band level exceeded 90 % of the time (L90), dBFS; `None` when the
    /// file's rate cannot hold the band.
    pub noise_floor_dbfs: Option<f64>,
}

/// One decoded frame.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FrameReport {
    /// The profile it was sent with.
    pub profile: &'static str,
    /// Where its preamble starts, seconds from the start of the file.
    pub start_s: f64,
    /// Where it ends, seconds.
    pub end_s: f64,
    /// Payload bytes (199 for a token).
    pub payload_len: usize,
    /// In-band SNR, dB (see `bands::Bands::snr`); `None` without noise
    /// around the frame to compare with.
    pub snr_db: Option<f64>,
    /// The same over the whole band (what the channel simulator sets).
    pub snr_wideband_db: Option<f64>,
    /// The payload, hex.
    pub payload_hex: String,
}

/// One reader's beacon heard (docs/modem.md §7): which gate and challenge.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BeaconReport {
    /// Where its chirp starts, seconds from the start of the file.
    pub start_s: f64,
    /// Where it ends, seconds.
    pub end_s: f64,
    /// Its band, Hz (lowest and highest tone).
    pub low_hz: f32,
    /// Its band, Hz.
    pub high_hz: f32,
    /// Payload bytes (17 for a reader's).
    pub payload_len: usize,
    /// In the beacon's band, dB; `None` without noise around it.
    pub snr_db: Option<f64>,
    /// Its tones' level, dB relative to a full-scale sine (the decoder's).
    pub level_dbfs: f32,
    /// The payload, hex.
    pub payload_hex: String,
}

/// A frame heard but not decoded: its preamble and header decoded (so its
/// profile and length are known), its body did not.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MissedReport {
    /// The profile its header named.
    pub profile: &'static str,
    /// Where its preamble starts, seconds.
    pub start_s: f64,
    /// Where it would have ended, seconds (from its announced length).
    pub end_s: f64,
    /// The payload length its header announced.
    pub payload_len: usize,
}

/// Missed frames listed at most (the count is always complete).
pub const MAX_MISSED_LISTED: usize = 100;

/// Where things are in the picture.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Layout {
    /// Columns (time).
    pub width: u32,
    /// Rows: [`SPECTRUM_ROWS`] of spectrum plus the [`STRIP_ROWS`] clipping strip.
    pub height: u32,
    /// STFT hops averaged into one column.
    pub hops_per_column: u64,
    /// Seconds per column.
    pub seconds_per_column: f64,
    /// Hz per spectrum row (row 0 is the top, the highest frequency).
    pub hz_per_row: f64,
}

impl Layout {
    /// The column holding time `seconds`.
    pub fn column(&self, seconds: f64) -> u32 {
        let c = (seconds.max(0.0) / self.seconds_per_column).floor();
        (c as u32).min(self.width.saturating_sub(1))
    }

    /// The spectrum row holding frequency `hz`.
    pub fn row(&self, hz: f64) -> u32 {
        let bin = (hz.max(0.0) / self.hz_per_row).round() as u32;
        (SPECTRUM_ROWS - 1).saturating_sub(bin.min(SPECTRUM_ROWS - 1))
    }
}

/// What `sonotap analyze` found.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Analysis {
    /// The file.
    pub file: PathBuf,
    /// Its sample rate, Hz.
    pub rate: u32,
    /// Seconds of audio read.
    pub duration_s: f64,
    /// Levels.
    pub levels: LevelReport,
    /// Noise per band: the payment profiles' and the beacon's.
    pub bands: Vec<BandReport>,
    /// Whole-band L90, dBFS.
    pub noise_floor_dbfs: Option<f64>,
    /// Decoded frames, in time order.
    pub frames: Vec<FrameReport>,
    /// Frames heard but not decoded, in time order (at most
    /// [`MAX_MISSED_LISTED`]).
    pub missed: Vec<MissedReport>,
    /// How many frames were heard but not decoded.
    pub missed_count: u64,
    /// Readers' beacons decoded, in time order (none in files below
    /// 40.6 kHz). They do not count as frames: a beacon is the reader
    /// speaking, not a phone paying.
    pub beacons: Vec<BeaconReport>,
    /// Why the decoder could not run (a rate too low for both bands).
    pub decoder_error: Option<String>,
    /// Damage found part way: the analysis covers what came before it.
    pub damaged: Option<String>,
    /// Plain-language advice for an installer.
    pub hints: Vec<String>,
    /// The picture's geometry.
    pub image: Layout,
}

/// An analysis and the spectrogram behind its picture.
pub struct Report {
    /// The numbers.
    pub analysis: Analysis,
    spectrogram: render::Spectrogram,
}

impl Report {
    /// Draws the picture: time on x, frequency on y, log-magnitude colour,
    /// bands dotted, frames boxed in their profile's colour, clipping red in
    /// the strip below.
    pub fn render(&self) -> image::RgbImage {
        self.spectrogram.render(&self.analysis)
    }

    /// Writes the picture as PNG.
    pub fn write_png(&self, path: &Path) -> Result<(), AnalyzeError> {
        self.render()
            .save_with_format(path, image::ImageFormat::Png)
            .map_err(|e| AnalyzeError::Png {
                path: path.into(),
                detail: e.to_string(),
            })
    }
}

/// A decoded frame or beacon waiting for the noise after it before its
/// SNR is taken.
struct Pending<R> {
    reception: R,
    /// File samples.
    span: std::ops::Range<u64>,
}

/// Beacons listed at most.
pub const MAX_BEACONS_LISTED: usize = 1000;

/// Analyses `path` in one pass, bounded memory whatever its length.
pub fn analyze(path: &Path, options: &Options) -> Result<Report, AnalyzeError> {
    let mut chunks = WavChunks::open(path)?;
    let rate = chunks.rate();
    // A truncated file's header claims more than is there: the file's size
    // bounds the estimate that sets the picture's decimation.
    let header_frames = (chunks.duration_secs() * f64::from(rate)) as u64;
    let file_frames = std::fs::metadata(path)
        .map(|m| m.len() / chunks.bytes_per_frame().max(1))
        .unwrap_or(header_frames);
    let expected_frames = header_frames.min(file_frames);
    let mut decoder = Decoder::for_rate(rate);
    let decoder_error = decoder.as_ref().err().map(|e| e.to_string());
    let mut stft = stft::Stft::new();
    let mut levels = levels::Levels::default();
    let mut bands = bands::Bands::new(rate);
    let mut spectrogram = render::Spectrogram::new(expected_frames, rate, options.max_width);
    let mut pending: Vec<Pending<Reception>> = Vec::new();
    let mut beacon_decoder = BeaconDecoder::new(rate).ok();
    let mut pending_beacons: Vec<Pending<BeaconReception>> = Vec::new();
    let mut beacons = Vec::new();
    let mut spans: Vec<std::ops::Range<u64>> = Vec::new();
    let mut frames = Vec::new();
    let mut damaged = None;
    let mut missed = Vec::new();
    let mut missed_count = 0u64;
    let mut note_missed = |decoder: &mut Decoder| {
        for m in decoder.take_missed() {
            missed_count += 1;
            if missed.len() < MAX_MISSED_LISTED {
                missed.push(missed_report(m));
            }
        }
    };
    let to_file =
        |at48: u64| (u128::from(at48) * u128::from(rate) / u128::from(INTERNAL_RATE)) as u64;
    let settle = (bands::SETTLE_SECONDS * f64::from(rate)) as u64;
    loop {
        let chunk = match chunks.next_chunk() {
            Ok(Some(chunk)) => chunk,
            Ok(None) => break,
            Err(e @ AudioError::Damaged { .. }) => {
                damaged = Some(e.to_string());
                break;
            }
            Err(e) => return Err(e.into()),
        };
        levels.push(&chunk, |i| spectrogram.mark_clipped(i));
        stft.push(&chunk, |hop, power| {
            bands.push(hop, power);
            spectrogram.push(hop, power);
        });
        if let Ok(decoder) = decoder.as_mut() {
            for reception in decoder.push_receptions(&chunk) {
                let span = to_file(reception.start)..to_file(reception.end);
                spans.push(span.clone());
                pending.push(Pending { reception, span });
            }
            note_missed(decoder);
        }
        if let Some(decoder) = beacon_decoder.as_mut() {
            for reception in decoder.push(&chunk) {
                let span = to_file(reception.start)..to_file(reception.end);
                spans.push(span.clone());
                pending_beacons.push(Pending { reception, span });
            }
        }
        let now = levels.samples;
        let (ready, waiting): (Vec<_>, Vec<_>) = pending
            .into_iter()
            .partition(|p| p.span.end + settle <= now);
        pending = waiting;
        frames.extend(ready.into_iter().map(|p| frame_report(&bands, p, &spans)));
        let (ready, waiting): (Vec<_>, Vec<_>) = pending_beacons
            .into_iter()
            .partition(|p| p.span.end + settle <= now);
        pending_beacons = waiting;
        beacons.extend(ready.into_iter().map(|p| beacon_report(&bands, p, &spans)));
        beacons.truncate(MAX_BEACONS_LISTED);
        // Old spans can no longer be in any noise window.
        let horizon = now.saturating_sub(20 * u64::from(rate));
        spans.retain(|s| s.end >= horizon);
    }
    if let Ok(decoder) = decoder.as_mut() {
        for reception in decoder.finish() {
            let span = to_file(reception.start)..to_file(reception.end);
            spans.push(span.clone());
            pending.push(Pending { reception, span });
        }
        note_missed(decoder);
    }
    if let Some(decoder) = beacon_decoder.as_mut() {
        for reception in decoder.finish() {
            let span = to_file(reception.start)..to_file(reception.end);
            spans.push(span.clone());
            pending_beacons.push(Pending { reception, span });
        }
    }
    frames.extend(pending.into_iter().map(|p| frame_report(&bands, p, &spans)));
    frames.sort_by(|a, b| a.start_s.total_cmp(&b.start_s));
    beacons.extend(
        pending_beacons
            .into_iter()
            .map(|p| beacon_report(&bands, p, &spans)),
    );
    beacons.truncate(MAX_BEACONS_LISTED);
    beacons.sort_by(|a, b| a.start_s.total_cmp(&b.start_s));
    if levels.samples == 0 {
        return Err(AnalyzeError::Empty { path: path.into() });
    }
    let band_reports = Band::ALL
        .into_iter()
        .map(|b| {
            let (low_hz, high_hz) = b.hz();
            BandReport {
                profile: b.name(),
                low_hz,
                high_hz,
                noise_floor_dbfs: bands.covers(b).then(|| bands.floor_dbfs(b)).flatten(),
            }
        })
        .collect();
    let mut analysis = Analysis {
        file: path.into(),
        rate,
        duration_s: levels.samples as f64 / f64::from(rate),
        levels: LevelReport {
            peak_dbfs: levels.peak_dbfs(),
            rms_dbfs: levels.rms_dbfs(),
            clipped_samples: levels.clipped,
            clipped_percent: levels.clipped_percent(),
        },
        bands: band_reports,
        noise_floor_dbfs: bands.total_floor_dbfs(),
        frames,
        missed,
        missed_count,
        beacons,
        decoder_error,
        damaged,
        hints: Vec::new(),
        image: spectrogram.layout(),
    };
    analysis.hints = hints::advise(&analysis, &bands);
    Ok(Report {
        analysis,
        spectrogram,
    })
}

fn missed_report(m: Missed) -> MissedReport {
    let start_s = m.start as f64 / f64::from(INTERNAL_RATE);
    MissedReport {
        profile: m.profile.name(),
        start_s,
        end_s: start_s + sonotap_modem::air_time(m.len, m.profile).unwrap_or(0.0),
        payload_len: m.len,
    }
}

fn beacon_report(
    bands: &bands::Bands,
    p: Pending<BeaconReception>,
    spans: &[std::ops::Range<u64>],
) -> BeaconReport {
    let others: Vec<_> = spans.iter().filter(|s| **s != p.span).cloned().collect();
    let snr = bands.snr(Band::Beacon, p.span.clone(), &others);
    let secs = |at48: u64| at48 as f64 / f64::from(INTERNAL_RATE);
    let (low_hz, high_hz) = Band::Beacon.hz();
    BeaconReport {
        start_s: secs(p.reception.start),
        end_s: secs(p.reception.end),
        low_hz,
        high_hz,
        payload_len: p.reception.payload.len(),
        snr_db: snr.map(|s| s.in_band_db),
        level_dbfs: p.reception.level_dbfs,
        payload_hex: hex::encode(&p.reception.payload),
    }
}

fn frame_report(
    bands: &bands::Bands,
    p: Pending<Reception>,
    spans: &[std::ops::Range<u64>],
) -> FrameReport {
    let others: Vec<_> = spans.iter().filter(|s| **s != p.span).cloned().collect();
    let snr = bands.snr(p.reception.profile, p.span.clone(), &others);
    let secs = |at48: u64| at48 as f64 / f64::from(INTERNAL_RATE);
    FrameReport {
        profile: p.reception.profile.name(),
        start_s: secs(p.reception.start),
        end_s: secs(p.reception.end),
        payload_len: p.reception.payload.len(),
        snr_db: snr.map(|s| s.in_band_db),
        snr_wideband_db: snr.map(|s| s.wideband_db),
        payload_hex: hex::encode(&p.reception.payload),
    }
}
