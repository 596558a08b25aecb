//! Capture threads: sound (cpal device, WAV files, raw stream) into the
//! modem decoder, frames (pipe, folder, V4L2) into the QR decoder. Each
//! sends decoded tokens down an unbounded channel to the acceptor and never
//! touches the database or the network, so a burst of taps queues instead
//! of stalling capture. Devices that fail are retried with backoff and
//! reported in the shared health.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{RecvTimeoutError, Sender};
use std::thread;
use std::time::{Duration, Instant};

use super::Shared;
use super::acceptor::Msg;
use super::config::{AudioConfig, AudioSource, CameraConfig, CameraSource};
use super::metrics::TapSource;
use super::rules::Tap;
use crate::backoff::Backoff;
use sonotap_audio::capture::{Capture, CaptureEvent};
use sonotap_audio::wav::{CHUNK_FRAMES, WavChunks};
use sonotap_modem::decoder::{DEDUP_SECONDS, Decoder, Reception};
use sonotap_qr::source::{FrameSource, PixelFormat, RawStreamSource, load_image};
use sonotap_qr::{DecodeOptions, Decoder as QrDecoder};

/// A capture device that delivers nothing for this long is restarted.
const SILENT_DEVICE: Duration = Duration::from_secs(5);
/// First wait before reopening a device that failed.
const MIN_BACKOFF: Duration = Duration::from_millis(500);
/// Longest wait between attempts to reopen a device.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The backoff between attempts to reopen a capture device: one local
/// device, so no jitter.
fn reopen_backoff() -> Backoff {
    Backoff::new(MIN_BACKOFF, MAX_BACKOFF)
}

/// Sleeps up to `d`, waking early when the daemon stops; false if it stopped.
fn nap(shared: &Shared, d: Duration) -> bool {
    shared.stop.nap(d)
}

fn stopping(shared: &Shared) -> bool {
    shared.stop.is_fired()
}

/// Reports `device` down (`detail`) and waits out the backoff before the
/// next attempt to reopen it; false if the daemon stopped meanwhile.
fn down_then_wait(shared: &Shared, device: &str, detail: &str, backoff: &mut Backoff) -> bool {
    shared.device(device, false, detail);
    nap(shared, backoff.failed_without_jitter())
}

/// Starts the audio thread.
pub fn spawn_audio(
    config: AudioConfig,
    shared: Arc<Shared>,
    taps: Sender<Msg>,
) -> io::Result<thread::JoinHandle<()>> {
    thread::Builder::new()
        .name("sonotap-audio".into())
        .spawn(move || match config.source {
            AudioSource::Device => device_loop(&config, &shared, &taps),
            AudioSource::Wav => wav_files(&config, &shared, &taps),
            AudioSource::Raw => raw_loop(&config, &shared, &taps),
        })
}

/// Feeds a decoder and turns receptions into taps, timing each frame's end
/// from the position of its last sample in the stream.
struct AudioFeed {
    decoder: Decoder,
    rate: u32,
    /// Samples pushed so far, at the input rate.
    pushed: u64,
}

impl AudioFeed {
    fn new(rate: u32) -> Result<Self, String> {
        Decoder::for_rate(rate)
            .map(|decoder| Self {
                decoder,
                rate,
                pushed: 0,
            })
            .map_err(|e| format!("{rate} Hz cannot carry the modem: {e}"))
    }

    /// Pushes a chunk whose last sample arrived at `arrived`.
    fn push(&mut self, chunk: &[f32], arrived: Instant, taps: &Sender<Msg>) -> bool {
        self.pushed += chunk.len() as u64;
        let receptions = self.decoder.push_receptions(chunk);
        self.send(receptions, arrived, taps)
    }

    fn finish(&mut self, taps: &Sender<Msg>) -> bool {
        let receptions = self.decoder.finish();
        self.send(receptions, Instant::now(), taps)
    }

    fn send(&self, receptions: Vec<Reception>, arrived: Instant, taps: &Sender<Msg>) -> bool {
        let decoded_at = Instant::now();
        // Where the stream is now, in the decoder's 48 kHz positions.
        let now48 = self.pushed as f64 * 48_000.0 / f64::from(self.rate);
        for r in receptions {
            let behind = ((now48 - r.end as f64) / 48_000.0).max(0.0);
            let frame_end = arrived
                .checked_sub(Duration::from_secs_f64(behind))
                .unwrap_or(arrived);
            tracing::debug!(
                profile = ?r.profile,
                bytes = r.payload.len(),
                decode_ms = decoded_at.saturating_duration_since(frame_end).as_secs_f64() * 1e3,
                "sound frame decoded"
            );
            let tap = Tap {
                payload: r.payload,
                source: TapSource::Audio,
                frame_end,
                decoded_at,
            };
            if taps.send(Msg::Tap(tap)).is_err() {
                return false;
            }
        }
        true
    }
}

fn device_loop(config: &AudioConfig, shared: &Shared, taps: &Sender<Msg>) {
    let name = config.device.as_deref();
    let label = name.unwrap_or("default input");
    let mut backoff = reopen_backoff();
    while !stopping(shared) {
        let capture = match Capture::start(name) {
            Ok(c) => c,
            Err(e) => {
                if !down_then_wait(
                    shared,
                    "audio",
                    &format!("{label}: {e} (retrying)"),
                    &mut backoff,
                ) {
                    return;
                }
                continue;
            }
        };
        let mut feed = match AudioFeed::new(capture.rate) {
            Ok(f) => f,
            Err(e) => {
                shared.device(
                    "audio",
                    false,
                    &format!("{}: {e} (retrying)", capture.device),
                );
                if !nap(shared, MAX_BACKOFF) {
                    return;
                }
                continue;
            }
        };
        shared.device(
            "audio",
            true,
            &format!("{}, {} Hz", capture.device, capture.rate),
        );
        tracing::info!(device = %capture.device, rate = capture.rate, "listening");
        let mut last_samples = Instant::now();
        let why = loop {
            if stopping(shared) {
                return;
            }
            match capture.events().recv_timeout(Duration::from_millis(100)) {
                Ok(CaptureEvent::Samples(chunk)) => {
                    let arrived = Instant::now();
                    last_samples = arrived;
                    backoff.succeeded();
                    if !feed.push(&chunk, arrived, taps) {
                        return;
                    }
                }
                Ok(CaptureEvent::Error(e)) => {
                    tracing::warn!(device = %capture.device, "audio device error: {e}");
                    shared.metrics.device_error("audio");
                }
                Err(RecvTimeoutError::Timeout) => {
                    if last_samples.elapsed() > SILENT_DEVICE {
                        break format!(
                            "{}: no audio for {} s (restarting)",
                            capture.device,
                            SILENT_DEVICE.as_secs()
                        );
                    }
                }
                Err(RecvTimeoutError::Disconnected) => {
                    break format!("{}: the capture stream ended (restarting)", capture.device);
                }
            }
        };
        tracing::warn!("{why}");
        drop(capture);
        if !down_then_wait(shared, "audio", &why, &mut backoff) {
            return;
        }
    }
}

/// Plays the WAV files in order (at real-time pace if asked) with silence
/// between them, then stops listening; for demos and benchmarks.
fn wav_files(config: &AudioConfig, shared: &Shared, taps: &Sender<Msg>) {
    let mut feed: Option<AudioFeed> = None;
    let started = Instant::now();
    let mut played = Duration::ZERO;
    let pace = |played: Duration| {
        if config.realtime {
            let due = started + played;
            let now = Instant::now();
            if due > now {
                thread::sleep(due - now);
            }
        }
    };
    let n = config.files.len();
    shared.device("audio", true, &format!("wav: {n} file(s)"));
    for (i, path) in config.files.iter().enumerate() {
        if stopping(shared) {
            return;
        }
        let mut wav = match WavChunks::open(path) {
            Ok(w) => w,
            Err(e) => {
                shared.device("audio", false, &e.to_string());
                shared.metrics.device_error("audio");
                continue;
            }
        };
        let rate = wav.rate();
        if feed.as_ref().is_none_or(|f| f.rate != rate) {
            if let Some(f) = feed.as_mut()
                && !f.finish(taps)
            {
                return;
            }
            match AudioFeed::new(rate) {
                Ok(f) => feed = Some(f),
                Err(e) => {
                    shared.device("audio", false, &format!("{}: {e}", path.display()));
                    continue;
                }
            }
        }
        let Some(f) = feed.as_mut() else { return };
        tracing::info!(file = %path.display(), "playing");
        loop {
            if stopping(shared) {
                return;
            }
            match wav.next_chunk() {
                Ok(Some(chunk)) => {
                    played += Duration::from_secs_f64(chunk.len() as f64 / f64::from(rate));
                    pace(played);
                    if !f.push(&chunk, Instant::now(), taps) {
                        return;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    shared.device("audio", false, &e.to_string());
                    break;
                }
            }
        }
        // Silence after each file: the gap, and at least enough to flush the last frame.
        let gap = config
            .gap
            .max(Duration::from_millis(if i + 1 == n { 500 } else { 0 }));
        let mut left = (gap.as_secs_f64() * f64::from(rate)) as usize;
        while left > 0 {
            let len = left.min(CHUNK_FRAMES);
            left -= len;
            played += Duration::from_secs_f64(len as f64 / f64::from(rate));
            pace(played);
            if !f.push(&vec![0.0; len], Instant::now(), taps) {
                return;
            }
        }
    }
    if let Some(f) = feed.as_mut() {
        f.finish(taps);
    }
    shared.device("audio", true, &format!("wav: {n} file(s) played"));
}

/// Opens `path` (`-`: standard input) for reading; whether it is a FIFO
/// (reopened when its writer closes) or not (read once).
fn open_stream(path: &Path) -> io::Result<(Box<dyn Read + Send>, bool)> {
    if path.as_os_str() == "-" {
        return Ok((Box::new(io::stdin()), false));
    }
    let file = File::open(path)?;
    let fifo = file.metadata()?.file_type().is_fifo();
    Ok((Box::new(io::BufReader::with_capacity(1 << 16, file)), fifo))
}

fn raw_loop(config: &AudioConfig, shared: &Shared, taps: &Sender<Msg>) {
    let (Some(path), Some(rate)) = (config.path.clone(), config.rate) else {
        return;
    };
    let mut backoff = reopen_backoff();
    while !stopping(shared) {
        let (mut reader, fifo) = match open_stream(&path) {
            Ok(r) => r,
            Err(e) => {
                let detail = format!("{}: {e} (retrying)", path.display());
                if !down_then_wait(shared, "audio", &detail, &mut backoff) {
                    return;
                }
                continue;
            }
        };
        let mut feed = match AudioFeed::new(rate) {
            Ok(f) => f,
            Err(e) => {
                shared.device("audio", false, &format!("{}: {e}", path.display()));
                return;
            }
        };
        shared.device(
            "audio",
            true,
            &format!("raw {} S16_LE, {rate} Hz", path.display()),
        );
        let mut buf = vec![0u8; CHUNK_FRAMES * 2];
        let mut carry: Option<u8> = None;
        loop {
            if stopping(shared) {
                return;
            }
            match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    let mut bytes: Vec<u8> = carry.take().into_iter().collect();
                    bytes.extend_from_slice(&buf[..n]);
                    if bytes.len() % 2 == 1 {
                        carry = bytes.pop();
                    }
                    let chunk: Vec<f32> = bytes
                        .chunks_exact(2)
                        .map(|b| f32::from(i16::from_le_bytes([b[0], b[1]])) / 32768.0)
                        .collect();
                    if !feed.push(&chunk, Instant::now(), taps) {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    shared.device(
                        "audio",
                        false,
                        &format!("{}: {e} (retrying)", path.display()),
                    );
                    shared.metrics.device_error("audio");
                    break;
                }
            }
        }
        if !feed.finish(taps) || !fifo {
            shared.device("audio", true, &format!("raw {}: ended", path.display()));
            return;
        }
    }
}

/// Starts the camera thread.
pub fn spawn_camera(
    config: CameraConfig,
    shared: Arc<Shared>,
    taps: Sender<Msg>,
) -> io::Result<thread::JoinHandle<()>> {
    thread::Builder::new()
        .name("sonotap-camera".into())
        .spawn(move || {
            let options = DecodeOptions {
                budget: config.budget,
                ..DecodeOptions::default()
            };
            let mut frames = FrameDecoder {
                decoder: QrDecoder::new(options),
                recent: VecDeque::new(),
            };
            match config.source {
                CameraSource::Pipe => pipe_loop(&config, &shared, &taps, &mut frames),
                CameraSource::Folder => folder(&config, &shared, &taps, &mut frames),
                CameraSource::V4l2 => v4l2_loop(&config, &shared, &taps, &mut frames),
            }
        })
}

/// How a source of frames stopped giving them.
enum Frames {
    /// It ended (a pipe's writer closed, a camera stream stopped).
    Ended,
    /// It failed.
    Failed(sonotap_qr::QrError),
    /// The daemon is stopping, or the acceptor is gone.
    Stopped,
}

/// The QR decoder plus the memory that keeps a code held in view from
/// being sent once per frame (as the modem's decoder does for echoes).
struct FrameDecoder {
    decoder: QrDecoder,
    recent: VecDeque<(Vec<u8>, Instant)>,
}

impl FrameDecoder {
    /// Decodes every frame `source` gives until it ends or fails, or the
    /// daemon stops.
    fn decode_all(
        &mut self,
        source: &mut impl FrameSource,
        shared: &Shared,
        taps: &Sender<Msg>,
    ) -> Frames {
        loop {
            if stopping(shared) {
                return Frames::Stopped;
            }
            match source.next_frame() {
                Ok(Some(frame)) => {
                    if !self.frame(&frame, Instant::now(), taps) {
                        return Frames::Stopped;
                    }
                }
                Ok(None) => return Frames::Ended,
                Err(e) => return Frames::Failed(e),
            }
        }
    }

    /// Decodes a frame that arrived at `arrived`; false when the acceptor is gone.
    fn frame(
        &mut self,
        frame: &sonotap_qr::GreyImage,
        arrived: Instant,
        taps: &Sender<Msg>,
    ) -> bool {
        let codes = self.decoder.decode(frame.as_frame());
        let decoded_at = Instant::now();
        let window = Duration::from_secs_f64(DEDUP_SECONDS);
        self.recent
            .retain(|(_, at)| decoded_at.duration_since(*at) < window);
        for code in codes {
            if let Some(seen) = self.recent.iter_mut().find(|(p, _)| *p == code.payload) {
                seen.1 = decoded_at;
                continue;
            }
            self.recent.push_back((code.payload.clone(), decoded_at));
            tracing::debug!(
                strategy = code.strategy,
                bytes = code.payload.len(),
                decode_ms = decoded_at.duration_since(arrived).as_secs_f64() * 1e3,
                "QR code decoded"
            );
            let tap = Tap {
                payload: code.payload,
                source: TapSource::Qr,
                frame_end: arrived,
                decoded_at,
            };
            if taps.send(Msg::Tap(tap)).is_err() {
                return false;
            }
        }
        true
    }
}

fn pipe_loop(
    config: &CameraConfig,
    shared: &Shared,
    taps: &Sender<Msg>,
    frames: &mut FrameDecoder,
) {
    let format = config.format;
    let what = format!(
        "pipe {} {}x{} {}",
        config.path.display(),
        config.width,
        config.height,
        format_name(format)
    );
    let mut backoff = reopen_backoff();
    while !stopping(shared) {
        let opened = open_stream(&config.path).and_then(|(reader, fifo)| {
            RawStreamSource::new(reader, config.width, config.height, format)
                .map(|s| (s, fifo))
                .map_err(io::Error::other)
        });
        let (mut source, fifo) = match opened {
            Ok(s) => s,
            Err(e) => {
                let detail = format!("{what}: {e} (retrying)");
                if !down_then_wait(shared, "camera", &detail, &mut backoff) {
                    return;
                }
                continue;
            }
        };
        shared.device("camera", true, &what);
        match frames.decode_all(&mut source, shared, taps) {
            Frames::Stopped => return,
            Frames::Ended => {}
            Frames::Failed(e) => {
                tracing::warn!("{what}: {e}");
                shared.metrics.device_error("camera");
            }
        }
        if !fifo {
            shared.device("camera", true, &format!("{what}: ended"));
            return;
        }
    }
}

/// The config's name for a pixel format, for the health line.
fn format_name(format: PixelFormat) -> &'static str {
    match format {
        PixelFormat::Y8 => "y8",
        PixelFormat::Yuyv => "yuyv",
    }
}

fn folder(config: &CameraConfig, shared: &Shared, taps: &Sender<Msg>, frames: &mut FrameDecoder) {
    let mut paths: Vec<PathBuf> = match std::fs::read_dir(&config.path) {
        Ok(entries) => entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.extension().and_then(|x| x.to_str()).is_some_and(|x| {
                    matches!(x.to_ascii_lowercase().as_str(), "png" | "jpg" | "jpeg")
                })
            })
            .collect(),
        Err(e) => {
            shared.device(
                "camera",
                false,
                &format!("folder {}: {e}", config.path.display()),
            );
            return;
        }
    };
    paths.sort();
    let what = format!("folder {}: {} image(s)", config.path.display(), paths.len());
    shared.device("camera", true, &what);
    for (i, path) in paths.iter().enumerate() {
        if i > 0 && !config.interval.is_zero() && !nap(shared, config.interval) {
            return;
        }
        if stopping(shared) {
            return;
        }
        match load_image(path) {
            Ok(image) => {
                if !frames.frame(&image, Instant::now(), taps) {
                    return;
                }
            }
            Err(e) => {
                tracing::warn!("{e}");
                shared.metrics.device_error("camera");
            }
        }
    }
    shared.device("camera", true, &format!("{what}, all read"));
}

#[cfg(feature = "v4l2")]
fn v4l2_loop(
    config: &CameraConfig,
    shared: &Shared,
    taps: &Sender<Msg>,
    frames: &mut FrameDecoder,
) {
    use sonotap_qr::v4l2::V4l2Source;
    let mut backoff = reopen_backoff();
    while !stopping(shared) {
        let mut camera = match V4l2Source::open(&config.path, config.width, config.height) {
            Ok(c) => c,
            Err(e) => {
                let detail = format!("{}: {e} (retrying)", config.path.display());
                if !down_then_wait(shared, "camera", &detail, &mut backoff) {
                    return;
                }
                continue;
            }
        };
        let (w, h) = camera.size();
        shared.device(
            "camera",
            true,
            &format!(
                "v4l2 {} {w}x{h} {:?}",
                config.path.display(),
                camera.pixel_format()
            ),
        );
        backoff.succeeded();
        match frames.decode_all(&mut camera, shared, taps) {
            Frames::Stopped => return,
            Frames::Ended => {}
            Frames::Failed(e) => {
                tracing::warn!("camera {}: {e}", config.path.display());
                shared.metrics.device_error("camera");
                shared.device(
                    "camera",
                    false,
                    &format!("{}: {e} (retrying)", config.path.display()),
                );
            }
        }
    }
}

#[cfg(not(feature = "v4l2"))]
fn v4l2_loop(
    config: &CameraConfig,
    shared: &Shared,
    _taps: &Sender<Msg>,
    _frames: &mut FrameDecoder,
) {
    // Config validation refuses this; kept so a stale config is reported, not ignored.
    shared.device(
        "camera",
        false,
        &format!(
            "{}: this build has no V4L2 support (build with --features v4l2)",
            config.path.display()
        ),
    );
}
