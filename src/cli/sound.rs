//! `sonotap modem …`: sound in and out for operators, installers and tests
//! (named `sound`, not `modem`, so it never shadows the modem crate).

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use serde_json::json;

use sonotap_audio::capture::{Capture, CaptureEvent};
use sonotap_audio::wav::{self, WavChunks};
use sonotap_modem::sim::{self, Channel, NoiseKind, Room};
use sonotap_modem::{self as modem, BeaconDecoder, BeaconReception, Decoder, Profile, Reception};

/// Parses a noise name for clap.
fn parse_noise(name: &str) -> Result<NoiseKind, String> {
    NoiseKind::ALL
        .into_iter()
        .find(|k| k.name() == name)
        .ok_or_else(|| format!(
            "unknown noise {name:?}: expected white, pink, babble, station, music, speech or beeps"
        ))
}

/// Parses `fast` or `robust` for clap.
pub(super) fn parse_profile(name: &str) -> Result<Profile, String> {
    Profile::from_name(name)
        .ok_or_else(|| format!("unknown profile {name:?}: expected fast or robust"))
}

#[derive(Debug, Subcommand)]
pub(super) enum ModemCommand {
    /// Render payload bytes from standard input as sound (what a wallet app plays)
    Encode {
        /// fast (0.45 s, for gates) or robust (about 2 s, for loud, reverberant rooms)
        #[arg(long, default_value = "fast", value_parser = parse_profile)]
        profile: Profile,
        /// Sample rate of the WAV file
        #[arg(long, default_value_t = modem::INTERNAL_RATE)]
        rate: u32,
        /// Where to write the sound (16-bit mono WAV)
        #[arg(long, value_name = "FILE.wav")]
        out: PathBuf,
    },
    /// Decode every payload in a WAV file: one line of hex each, in order
    Decode {
        /// Any WAV file hound reads: 8/16/24/32-bit integer or float, mono or stereo, any rate
        file: PathBuf,
        /// One JSON object per payload, with its profile and position
        #[arg(long)]
        json: bool,
    },
    /// Decode from a capture device as payloads arrive, until stopped
    Listen {
        /// Capture device: an ALSA PCM name (hw:1,0, default), a cpal id (alsa:…) or a description
        #[arg(long)]
        device: Option<String>,
        /// One JSON object per payload, with its profile and position
        #[arg(long)]
        json: bool,
        /// Stop after this many seconds of audio (default: run until stopped)
        #[arg(long, value_name = "SECONDS")]
        seconds: Option<f64>,
    },
    /// Pass a WAV file through a simulated room and microphone (noise, reverb, clock offset)
    Simulate {
        /// The sound as the phone would play it
        input: PathBuf,
        /// Noise: white, pink, babble, station (pink + babble + squeal tones), music, speech or beeps
        #[arg(long, default_value = "station", value_parser = parse_noise)]
        noise: NoiseKind,
        /// Signal-to-noise ratio over the whole band while the signal plays, dB
        #[arg(long, default_value_t = 10.0, allow_negative_numbers = true)]
        snr: f32,
        /// Reverberation time of the room, seconds (0: none)
        #[arg(long, default_value_t = 0.0)]
        rt60: f32,
        /// Direct-to-reverberant ratio, dB
        #[arg(long, default_value_t = 6.0, allow_negative_numbers = true)]
        drr: f32,
        /// Sender clock error, parts per million
        #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
        ppm: f64,
        /// Receiver sample rate
        #[arg(long, default_value_t = 48_000)]
        rate: u32,
        /// Seed for every random choice (the same seed gives the same file)
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Where to write what the microphone hears
        #[arg(long, value_name = "FILE.wav")]
        out: PathBuf,
    },
    /// A reader's beacon (18.3–19.8 kHz): which gate this is and its challenge
    #[command(subcommand)]
    Beacon(BeaconCommand),
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

#[derive(Debug, Subcommand)]
pub(super) enum BeaconCommand {
    /// Render a beacon payload as sound (what a reader's speaker repeats)
    Encode {
        /// The payload, 1–32 bytes in hex (a reader sends 17)
        #[arg(long, value_name = "HEX", value_parser = parse_beacon_hex)]
        hex: BeaconPayload,
        /// Sample rate of the WAV file (40.6 kHz and up)
        #[arg(long, default_value_t = modem::INTERNAL_RATE)]
        rate: u32,
        /// Where to write the sound (16-bit mono WAV)
        #[arg(long, value_name = "FILE.wav")]
        out: PathBuf,
    },
    /// Decode every beacon in a WAV file: one line of hex each, in order
    Decode {
        /// Any WAV file hound reads, at 40.6 kHz or more (44.1 and 48 kHz phones)
        file: PathBuf,
        /// One JSON object per beacon, with its position and level
        #[arg(long)]
        json: bool,
    },
}

/// A beacon payload from the command line (1–32 bytes).
#[derive(Debug, Clone)]
pub(super) struct BeaconPayload(Vec<u8>);

/// Parses a beacon payload given in hex for clap.
fn parse_beacon_hex(text: &str) -> Result<BeaconPayload, String> {
    let bytes = hex::decode(text.trim()).map_err(|e| format!("not hex: {e}"))?;
    if bytes.is_empty() || bytes.len() > modem::BEACON_MAX_PAYLOAD {
        return Err(format!(
            "{} bytes: a beacon carries 1 to {}",
            bytes.len(),
            modem::BEACON_MAX_PAYLOAD
        ));
    }
    Ok(BeaconPayload(bytes))
}

fn run_beacon(command: BeaconCommand) -> Result<ExitCode> {
    match command {
        BeaconCommand::Encode {
            hex: BeaconPayload(hex),
            rate,
            out,
        } => {
            let samples = modem::encode_beacon(&hex, rate)?;
            wav::write_mono_16(&out, &samples, rate)?;
            println!(
                "{} bytes as a beacon: {:.3} s of sound at {rate} Hz in {}",
                hex.len(),
                samples.len() as f64 / f64::from(rate),
                out.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        BeaconCommand::Decode { file, json } => decode_beacon_file(&file, json),
    }
}

fn print_beacon(out: &mut impl Write, beacon: &BeaconReception, json: bool) -> io::Result<()> {
    if json {
        let seconds = |samples: u64| samples as f64 / f64::from(modem::INTERNAL_RATE);
        let line = json!({
            "payload_hex": hex::encode(&beacon.payload),
            "start_s": seconds(beacon.start),
            "end_s": seconds(beacon.end),
            "level_dbfs": beacon.level_dbfs,
        });
        writeln!(out, "{line}")?;
    } else {
        writeln!(out, "{}", hex::encode(&beacon.payload))?;
    }
    out.flush()
}

fn decode_beacon_file(path: &Path, json: bool) -> Result<ExitCode> {
    let mut chunks = WavChunks::open(path)?;
    let Ok(mut decoder) = BeaconDecoder::new(chunks.rate()) else {
        eprintln!(
            "sonotap: no beacon found in {}: audio at {} Hz cannot hold the beacon's band \
             (up to 19.8 kHz; record at 44.1 or 48 kHz)",
            path.display(),
            chunks.rate()
        );
        return Ok(ExitCode::from(1));
    };
    let found = scan_wav(&mut chunks, |chunk| match chunk {
        Some(samples) => decoder.push(samples),
        None => decoder.finish(),
    })?;
    let mut out = io::stdout().lock();
    for beacon in &found {
        print_beacon(&mut out, beacon, json)?;
    }
    Ok(found_or_none(found.len(), "beacon", path, &chunks))
}

pub(super) fn run(command: ModemCommand) -> Result<ExitCode> {
    match command {
        ModemCommand::Encode { profile, rate, out } => {
            let mut payload = Vec::new();
            io::stdin()
                .take(modem::MAX_PAYLOAD as u64 + 1)
                .read_to_end(&mut payload)
                .context("cannot read the payload from standard input")?;
            let seconds = write_wav(&payload, profile, rate, &out)?;
            println!(
                "{} bytes as {} profile: {seconds:.3} s of sound at {rate} Hz in {}",
                payload.len(),
                profile.name(),
                out.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        ModemCommand::Decode { file, json } => decode_file(&file, json),
        ModemCommand::Listen {
            device,
            json,
            seconds,
        } => listen(device.as_deref(), json, seconds),
        ModemCommand::Simulate {
            input,
            noise,
            snr,
            rt60,
            drr,
            ppm,
            rate,
            seed,
            out,
        } => {
            let (samples, in_rate) = wav::read_mono(&input)?;
            if samples.len() > 600 * in_rate as usize {
                bail!("{} is longer than 10 minutes", input.display());
            }
            let channel = Channel {
                room: (rt60 > 0.0).then_some(Room { rt60, drr_db: drr }),
                clock_ppm: ppm,
                rx_rate: rate,
                noise,
                snr_db: snr,
                ..Channel::default()
            };
            let received = sim::transmit(&samples, in_rate, &channel, seed);
            wav::write_mono_16(&out, &received.samples, received.rate)?;
            println!(
                "{}: {} noise at {snr} dB SNR, rt60 {rt60} s, {ppm} ppm, {rate} Hz; signal at {:.3}..{:.3} s",
                out.display(),
                noise.name(),
                received.signal_start as f64 / f64::from(rate),
                received.signal_end as f64 / f64::from(rate)
            );
            Ok(ExitCode::SUCCESS)
        }
        ModemCommand::Beacon(command) => run_beacon(command),
        ModemCommand::Record {
            device,
            seconds,
            out,
        } => record(device.as_deref(), seconds, &out),
    }
}

/// Encodes `payload` and writes it as a 16-bit WAV; returns the air time.
pub(super) fn write_wav(payload: &[u8], profile: Profile, rate: u32, out: &Path) -> Result<f64> {
    let samples = modem::encode(payload, profile, rate)?;
    wav::write_mono_16(out, &samples, rate)?;
    Ok(samples.len() as f64 / f64::from(rate))
}

fn print_reception(out: &mut impl Write, reception: &Reception, json: bool) -> io::Result<()> {
    if json {
        let seconds = |samples: u64| samples as f64 / f64::from(modem::INTERNAL_RATE);
        let line = json!({
            "payload_hex": hex::encode(&reception.payload),
            "profile": reception.profile.name(),
            "start_s": seconds(reception.start),
            "end_s": seconds(reception.end),
        });
        writeln!(out, "{line}")?;
    } else {
        writeln!(out, "{}", hex::encode(&reception.payload))?;
    }
    out.flush()
}

fn decode_file(path: &Path, json: bool) -> Result<ExitCode> {
    let mut chunks = WavChunks::open(path)?;
    let Ok(mut decoder) = Decoder::for_rate(chunks.rate()) else {
        // Valid audio that cannot carry a payload: "none found", not an error.
        eprintln!(
            "sonotap: no payload found in {}: audio at {} Hz cannot hold the modem's bands \
             (robust reaches 17.9 kHz, fast 19.5 kHz; record at 44.1 or 48 kHz)",
            path.display(),
            chunks.rate()
        );
        return Ok(ExitCode::from(1));
    };
    let found = scan_wav(&mut chunks, |chunk| match chunk {
        Some(samples) => decoder.push_receptions(samples),
        None => decoder.finish(),
    })?;
    let mut out = io::stdout().lock();
    for reception in &found {
        print_reception(&mut out, reception, json)?;
    }
    Ok(found_or_none(found.len(), "payload", path, &chunks))
}

/// Every chunk of `chunks` through `step` (`Some(samples)`), then `step(None)`
/// to finish: what a streaming decoder found in the whole file, in order.
pub(super) fn scan_wav<T>(
    chunks: &mut WavChunks,
    mut step: impl FnMut(Option<&[f32]>) -> Vec<T>,
) -> Result<Vec<T>> {
    let mut found = Vec::new();
    while let Some(chunk) = chunks.next_chunk()? {
        found.extend(step(Some(&chunk)));
    }
    found.extend(step(None));
    Ok(found)
}

/// Success when something was found; else says so (what, and how much
/// audio was searched) and exits 1.
fn found_or_none(found: usize, what: &str, path: &Path, chunks: &WavChunks) -> ExitCode {
    if found > 0 {
        return ExitCode::SUCCESS;
    }
    eprintln!(
        "sonotap: no {what} found in {} ({:.1} s of audio)",
        path.display(),
        chunks.duration_secs()
    );
    ExitCode::from(1)
}

/// A capture device that delivers nothing for this long is broken, not quiet.
const SILENT_DEVICE: Duration = Duration::from_secs(10);

fn listen(device: Option<&str>, json: bool, seconds: Option<f64>) -> Result<ExitCode> {
    let capture = Capture::start(device)?;
    let mut decoder = Decoder::for_rate(capture.rate).with_context(|| {
        format!(
            "{} captures at {} Hz, too low for the modem",
            capture.device, capture.rate
        )
    })?;
    eprintln!(
        "sonotap: listening on {} at {} Hz",
        capture.device, capture.rate
    );
    let limit = seconds.map(|s| (s.max(0.0) * f64::from(capture.rate)) as u64);
    let mut heard = 0u64;
    let mut out = io::stdout().lock();
    let mut found = 0usize;
    loop {
        match capture.events().recv_timeout(SILENT_DEVICE) {
            Ok(CaptureEvent::Samples(chunk)) => {
                heard += chunk.len() as u64;
                for reception in decoder.push_receptions(&chunk) {
                    print_reception(&mut out, &reception, json)?;
                    found += 1;
                }
            }
            Ok(CaptureEvent::Error(e)) => eprintln!("sonotap: warning: {}: {e}", capture.device),
            Err(_) => bail!(
                "{} delivered no audio for {} s",
                capture.device,
                SILENT_DEVICE.as_secs()
            ),
        }
        if limit.is_some_and(|limit| heard >= limit) {
            for reception in decoder.finish() {
                print_reception(&mut out, &reception, json)?;
                found += 1;
            }
            return Ok(if found > 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            });
        }
    }
}

fn record(device: Option<&str>, seconds: f64, out: &Path) -> Result<ExitCode> {
    if !(seconds > 0.0 && seconds <= 3600.0) {
        bail!("--seconds must be more than 0 and at most 3600");
    }
    let capture = Capture::start(device)?;
    let wanted = (seconds * f64::from(capture.rate)) as usize;
    let mut samples = Vec::with_capacity(wanted);
    while samples.len() < wanted {
        match capture.events().recv_timeout(SILENT_DEVICE) {
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
