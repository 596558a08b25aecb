//! Live capture through cpal (ALSA on Linux).
//!
//! The callback converts each period to mono `f32` and hands it to a bounded
//! queue of several seconds. cpal calls it from its own reader thread, not
//! from a real-time interrupt context, so when the queue is full it waits:
//! a paced microphone never fills the queue while the consumer keeps up on
//! average, and if the consumer does fall behind, ALSA reports an overrun
//! (an [`CaptureEvent::Error`]) instead of samples silently vanishing. An
//! unpaced source (the file-backed test device runs hundreds of times faster
//! than real time) is read losslessly at the consumer's speed.

use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

use cpal::traits::{DeviceTrait, HostTrait, StreamTrait};
use cpal::{DeviceId, FromSample, Sample, SampleFormat, SizedSample, StreamConfig};

use super::AudioError;

/// The rate asked of a device when it offers a choice.
pub const PREFERRED_RATE: u32 = 48_000;
/// Chunks buffered between the callback and the consumer (several seconds).
const QUEUE_CHUNKS: usize = 512;

/// What the capture thread hears.
#[derive(Debug)]
pub enum CaptureEvent {
    /// Mono samples in [-1, 1] at the capture rate.
    Samples(Vec<f32>),
    /// The device reported an error (it may recover, or the stream may stop).
    Error(String),
}

/// A running capture stream; dropping it stops the stream.
pub struct Capture {
    // Declared (so dropped) before the stream: dropping the stream joins
    // cpal's worker thread, which may be waiting in `send` on a full queue;
    // with the receiver gone that send fails and the worker can exit.
    events: Receiver<CaptureEvent>,
    _stream: cpal::Stream,
    /// The device's id, e.g. `alsa:sonotap_test`.
    pub device: String,
    /// Samples per second delivered.
    pub rate: u32,
    /// Channels the device delivers (downmixed to mono).
    pub channels: u16,
}

impl Capture {
    /// Opens `device` (`None`: the default input) and starts capturing.
    ///
    /// `device` is a cpal id (`alsa:hw:0,0`), an ALSA PCM name (`sonotap_test`,
    /// `hw:1,0`, `default`), or a device's description.
    pub fn start(device: Option<&str>) -> Result<Self, AudioError> {
        let host = cpal::default_host();
        let device = find_device(&host, device)?;
        let id = device
            .id()
            .map_or_else(|_| "unknown".to_string(), |id| id.to_string());
        let supported = choose_config(&device)?;
        let format = supported.sample_format();
        let config: StreamConfig = supported.into();
        let (sender, events) = sync_channel(QUEUE_CHUNKS);
        let stream = match format {
            SampleFormat::I16 => build::<i16>(&device, &config, sender),
            SampleFormat::I32 => build::<i32>(&device, &config, sender),
            SampleFormat::F32 => build::<f32>(&device, &config, sender),
            SampleFormat::U8 => build::<u8>(&device, &config, sender),
            other => Err(AudioError::Device(format!(
                "{id}: unsupported sample format {other}"
            ))),
        }?;
        stream
            .play()
            .map_err(|e| AudioError::Device(format!("{id}: cannot start capture: {e}")))?;
        Ok(Self {
            events,
            _stream: stream,
            device: id,
            rate: config.sample_rate,
            channels: config.channels,
        })
    }

    /// The stream of captured chunks and device errors.
    pub fn events(&self) -> &Receiver<CaptureEvent> {
        &self.events
    }
}

fn find_device(host: &cpal::Host, name: Option<&str>) -> Result<cpal::Device, AudioError> {
    let Some(name) = name else {
        return host
            .default_input_device()
            .ok_or_else(|| AudioError::Device("no default input device".into()));
    };
    let by_id = |text: &str| {
        text.parse::<DeviceId>()
            .ok()
            .and_then(|id| host.device_by_id(&id))
    };
    if let Some(device) = by_id(name).or_else(|| by_id(&format!("alsa:{name}"))) {
        return Ok(device);
    }
    let devices: Vec<cpal::Device> = host
        .input_devices()
        .map_err(|e| AudioError::Device(format!("cannot list input devices: {e}")))?
        .collect();
    let describe = |d: &cpal::Device| {
        d.description()
            .map(|desc| desc.to_string())
            .unwrap_or_default()
    };
    if let Some(device) = devices.iter().find(|d| describe(d) == name) {
        return Ok(device.clone());
    }
    let known: Vec<String> = devices
        .iter()
        .filter_map(|d| d.id().ok().map(|id| id.to_string()))
        .collect();
    Err(AudioError::Device(format!(
        "no input device {name:?}; input devices: {}",
        if known.is_empty() {
            "none".into()
        } else {
            known.join(", ")
        }
    )))
}

/// The best stream the device offers for the modem: 48 kHz, else 44.1 kHz
/// (the modem's bands need at least ~40 kHz), preferring mono and 16-bit
/// (what the file-backed test device and most USB microphones give), then
/// any channel count and sample format cpal converts; else the device's
/// default configuration.
fn choose_config(device: &cpal::Device) -> Result<cpal::SupportedStreamConfig, AudioError> {
    let ranges: Vec<_> = device
        .supported_input_configs()
        .map(|ranges| ranges.collect())
        .unwrap_or_default();
    let usable = |f: SampleFormat| {
        matches!(
            f,
            SampleFormat::I16 | SampleFormat::I32 | SampleFormat::F32 | SampleFormat::U8
        )
    };
    for rate in [PREFERRED_RATE, 44_100] {
        let mut candidates: Vec<_> = ranges
            .iter()
            .filter(|r| usable(r.sample_format()))
            .filter_map(|r| r.try_with_sample_rate(rate))
            .collect();
        // Mono before stereo, 16-bit before other formats.
        candidates.sort_by_key(|c| (c.channels(), c.sample_format() != SampleFormat::I16));
        if let Some(best) = candidates.into_iter().next() {
            return Ok(best);
        }
    }
    device
        .default_input_config()
        .map_err(|e| AudioError::Device(format!("device cannot capture: {e}")))
}

fn build<T>(
    device: &cpal::Device,
    config: &StreamConfig,
    sender: SyncSender<CaptureEvent>,
) -> Result<cpal::Stream, AudioError>
where
    T: SizedSample,
    f32: FromSample<T>,
{
    let channels = usize::from(config.channels.max(1));
    let errors = sender.clone();
    device
        .build_input_stream::<T, _, _>(
            *config,
            move |data: &[T], _| {
                let mono: Vec<f32> = data
                    .chunks(channels)
                    .map(|frame| {
                        frame.iter().map(|&s| f32::from_sample(s)).sum::<f32>() / frame.len() as f32
                    })
                    .collect();
                // Fails only when the consumer is gone and the stream is being dropped.
                let _ = sender.send(CaptureEvent::Samples(mono));
            },
            move |err| {
                let _ = errors.try_send(CaptureEvent::Error(err.to_string()));
            },
            None,
        )
        .map_err(|e| AudioError::Device(format!("cannot open capture stream: {e}")))
}
