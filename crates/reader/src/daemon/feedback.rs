//! Accept / decline tones on a speaker, on their own thread so that
//! feedback never delays the gate. The output device is opened for each
//! tone (a reader plays a few per minute; holding a stream open would keep
//! the sound card busy for nothing). A missing device is logged once and
//! reported in the health; the daemon carries on.

use std::sync::Arc;
use std::sync::mpsc::Receiver;
use std::thread;
use std::time::Duration;

use cpal::traits::{DeviceTrait, HostTrait, StreamTrait};
use cpal::{FromSample, SampleFormat, SizedSample};

use super::Shared;
use super::config::FeedbackConfig;
use super::rules::Feedback;

/// Starts the tone thread; it ends when every sender is gone.
pub fn spawn(
    config: FeedbackConfig,
    shared: Arc<Shared>,
    rx: Receiver<Feedback>,
) -> std::io::Result<thread::JoinHandle<()>> {
    thread::Builder::new()
        .name("sonotap-feedback".into())
        .spawn(move || {
            let label = config.device.clone().unwrap_or_else(|| "default output".into());
            let mut failing = false;
            shared.device("feedback", true, &format!("tone on {label}"));
            while let Ok(feedback) = rx.recv() {
                match play(&config, feedback) {
                    Ok(()) => {
                        if failing {
                            failing = false;
                            shared.device("feedback", true, &format!("tone on {label}"));
                        }
                    }
                    Err(e) => {
                        if !failing {
                            failing = true;
                            tracing::warn!("feedback tone on {label}: {e} (riders get no tone; the gate is not affected)");
                            shared.device("feedback", false, &format!("{label}: {e}"));
                        }
                    }
                }
            }
        })
}

fn play(config: &FeedbackConfig, feedback: Feedback) -> Result<(), String> {
    play_samples(config.device.as_deref(), |rate| {
        let mut samples = Vec::new();
        for &(freq, dur) in feedback.tone() {
            let n = (dur.as_secs_f32() * rate) as usize;
            let ramp = (0.005 * rate) as usize;
            for i in 0..n {
                let envelope = (i.min(n - i) as f32 / ramp.max(1) as f32).min(1.0);
                let v = if freq > 0.0 {
                    (2.0 * std::f32::consts::PI * freq * i as f32 / rate).sin()
                        * config.volume
                        * envelope
                } else {
                    0.0
                };
                samples.push(v);
            }
        }
        Ok(samples)
    })
}

/// Plays what `make` renders at the output's rate on `device` (cpal id or
/// ALSA PCM name; the default output when `None`), and returns once it has
/// played. The device is opened for each call.
pub(super) fn play_samples(
    device: Option<&str>,
    make: impl FnOnce(f32) -> Result<Vec<f32>, String>,
) -> Result<(), String> {
    let host = cpal::default_host();
    let device = match device {
        None => host
            .default_output_device()
            .ok_or("no default output device")?,
        Some(name) => {
            let id = |t: &str| {
                t.parse::<cpal::DeviceId>()
                    .ok()
                    .and_then(|id| host.device_by_id(&id))
            };
            id(name)
                .or_else(|| id(&format!("alsa:{name}")))
                .ok_or_else(|| format!("no output device {name:?}"))?
        }
    };
    let supported = device.default_output_config().map_err(|e| e.to_string())?;
    let format = supported.sample_format();
    let config_out: cpal::StreamConfig = supported.into();
    let rate = config_out.sample_rate as f32;
    let channels = usize::from(config_out.channels.max(1));
    let samples = make(rate)?;
    let length = Duration::from_secs_f32(samples.len() as f32 / rate);
    let stream = match format {
        SampleFormat::I16 => build::<i16>(&device, &config_out, samples, channels),
        SampleFormat::I32 => build::<i32>(&device, &config_out, samples, channels),
        SampleFormat::F32 => build::<f32>(&device, &config_out, samples, channels),
        other => Err(format!("unsupported output sample format {other}")),
    }?;
    stream.play().map_err(|e| e.to_string())?;
    thread::sleep(length + Duration::from_millis(50));
    Ok(())
}

fn build<T>(
    device: &cpal::Device,
    config: &cpal::StreamConfig,
    samples: Vec<f32>,
    channels: usize,
) -> Result<cpal::Stream, String>
where
    T: SizedSample + FromSample<f32>,
{
    let mut pos = 0;
    device
        .build_output_stream::<T, _, _>(
            *config,
            move |data: &mut [T], _| {
                for frame in data.chunks_mut(channels) {
                    let v = samples.get(pos).copied().unwrap_or(0.0);
                    pos += 1;
                    for s in frame {
                        *s = T::from_sample(v);
                    }
                }
            },
            |e| tracing::debug!("feedback stream: {e}"),
            None,
        )
        .map_err(|e| e.to_string())
}
