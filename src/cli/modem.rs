//! `sonotap modem …`: sound in and out for operators, installers and tests.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use clap::Subcommand;

use crate::audio::capture::{Capture, CaptureEvent};
use crate::audio::wav;

#[derive(Debug, Subcommand)]
pub(super) enum ModemCommand {
    /// Record what a capture device hears to a WAV file (to check level, noise, clipping)
    Record {
        /// Capture device: an ALSA PCM name (hw:1,0, default), a cpal id (alsa:…) or a description
        #[arg(long)]
        device: Option<String>,
        /// How long to record
        #[arg(long, default_value_t = 5.0, value_name = "SECONDS")]
        seconds: f64,
        /// Where to write the recording (16-bit mono)
        #[arg(long, value_name = "FILE.wav")]
        out: PathBuf,
    },
}

pub(super) fn run(command: ModemCommand) -> Result<ExitCode> {
    match command {
        ModemCommand::Record {
            device,
            seconds,
            out,
        } => record(device.as_deref(), seconds, &out),
    }
}

fn record(device: Option<&str>, seconds: f64, out: &std::path::Path) -> Result<ExitCode> {
    if !(seconds > 0.0 && seconds <= 3600.0) {
        bail!("--seconds must be more than 0 and at most 3600");
    }
    let capture = Capture::start(device)?;
    let wanted = (seconds * f64::from(capture.rate)) as usize;
    let mut samples = Vec::with_capacity(wanted);
    // A device that stops delivering must not hang the command.
    let deadline = Instant::now() + Duration::from_secs_f64(seconds * 2.0 + 5.0);
    while samples.len() < wanted {
        let left = deadline.saturating_duration_since(Instant::now());
        match capture.events().recv_timeout(left) {
            Ok(CaptureEvent::Samples(chunk)) => samples.extend_from_slice(&chunk),
            Ok(CaptureEvent::Error(e)) => eprintln!(
                "sonotap: warning: {}: {e} (samples may be missing)",
                capture.device
            ),
            Err(_) => bail!(
                "{} delivered {} of {wanted} samples before going silent",
                capture.device,
                samples.len()
            ),
        }
    }
    samples.truncate(wanted);
    let (device_id, rate, channels) = (capture.device.clone(), capture.rate, capture.channels);
    drop(capture); // stop the stream before the slow part
    wav::write_mono_16(out, &samples, rate)?;
    let peak = samples.iter().fold(0.0f32, |m, s| m.max(s.abs()));
    let rms = (samples.iter().map(|s| f64::from(*s).powi(2)).sum::<f64>()
        / samples.len().max(1) as f64)
        .sqrt();
    let db = |x: f64| {
        if x > 0.0 {
            20.0 * x.log10()
        } else {
            f64::NEG_INFINITY
        }
    };
    println!(
        "recorded {:.1} s from {} at {} Hz ({} channel(s) mixed to mono): peak {:.1} dBFS, rms {:.1} dBFS{}",
        samples.len() as f64 / f64::from(rate),
        device_id,
        rate,
        channels,
        db(f64::from(peak)),
        db(rms),
        if peak >= 0.999 { ", CLIPPING" } else { "" },
    );
    Ok(ExitCode::SUCCESS)
}
