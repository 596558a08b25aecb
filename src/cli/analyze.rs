//! `sonotap analyze FILE.wav [--png OUT.png] [--json]`: a field tool that
//! shows an installer why a phone is not heard.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;

use sonotap_audio::analyze::{self, Analysis, Options};

#[derive(Debug, Args)]
pub(super) struct AnalyzeArgs {
    /// The recording: any WAV file (8/16/24/32-bit integer or float, any rate)
    file: PathBuf,
    /// Draw a spectrogram here: bands dotted, frames boxed (green fast, cyan robust, white beacon), clipping red
    #[arg(long, value_name = "OUT.png")]
    png: Option<PathBuf>,
    /// One JSON object instead of text
    #[arg(long)]
    json: bool,
    /// Widest picture in pixels; longer recordings are decimated in time
    #[arg(long, default_value_t = analyze::MAX_WIDTH,
          value_parser = clap::value_parser!(u32).range(1..=i64::from(analyze::MAX_WIDTH)))]
    width: u32,
}

/// Exit 0 when at least one frame decoded, 1 when none (the picture is
/// still written), 2 (by error) on a file that cannot be analysed.
pub(super) fn run(args: AnalyzeArgs) -> Result<ExitCode> {
    let report = analyze::analyze(
        &args.file,
        &Options {
            max_width: args.width,
        },
    )?;
    if let Some(png) = &args.png {
        report.write_png(png)?;
    }
    let a = &report.analysis;
    let mut out = io::stdout().lock();
    if args.json {
        let mut value = serde_json::to_value(a)?;
        if let (Some(obj), Some(png)) = (value.as_object_mut(), &args.png) {
            obj.insert("png".into(), png.display().to_string().into());
        }
        writeln!(out, "{value}")?;
    } else {
        print_text(&mut out, a, args.png.as_deref())?;
    }
    Ok(match a.frames.is_empty() {
        false => ExitCode::SUCCESS,
        true => ExitCode::from(1),
    })
}

fn dbfs(v: Option<f64>) -> String {
    v.map_or("-inf dBFS".into(), |v| format!("{v:.1} dBFS"))
}

fn db(v: Option<f64>) -> String {
    v.map_or("n/a".into(), |v| format!("{v:.1} dB"))
}

fn print_text(out: &mut impl Write, a: &Analysis, png: Option<&Path>) -> io::Result<()> {
    writeln!(
        out,
        "file:      {} ({} Hz, {:.2} s)",
        a.file.display(),
        a.rate,
        a.duration_s
    )?;
    writeln!(
        out,
        "level:     peak {}, RMS {}, clipped {} samples ({:.4} %)",
        dbfs(a.levels.peak_dbfs),
        dbfs(a.levels.rms_dbfs),
        a.levels.clipped_samples,
        a.levels.clipped_percent
    )?;
    writeln!(
        out,
        "noise:     whole band {} (L90)",
        dbfs(a.noise_floor_dbfs)
    )?;
    for band in &a.bands {
        writeln!(
            out,
            "           {:<6} band {:>5.1}–{:.1} kHz: {}",
            band.profile,
            band.low_hz / 1000.0,
            band.high_hz / 1000.0,
            match band.noise_floor_dbfs {
                Some(v) => format!("{v:.1} dBFS (L90)"),
                None => "beyond this file's rate".into(),
            }
        )?;
    }
    if a.frames.is_empty() {
        writeln!(out, "frames:    none decoded")?;
    } else {
        writeln!(out, "frames:    {} decoded", a.frames.len())?;
        for f in &a.frames {
            writeln!(
                out,
                "  {:>8.3}–{:.3} s  {:<6} {:>3} bytes  SNR {} in band ({} whole band)",
                f.start_s,
                f.end_s,
                f.profile,
                f.payload_len,
                db(f.snr_db),
                db(f.snr_wideband_db)
            )?;
        }
    }
    if a.missed_count > 0 {
        writeln!(out, "missed:    {} heard but not decoded", a.missed_count)?;
        for m in &a.missed {
            writeln!(
                out,
                "  {:>8.3}–{:.3} s  {:<6} {:>3} bytes announced",
                m.start_s, m.end_s, m.profile, m.payload_len
            )?;
        }
    }
    if !a.beacons.is_empty() {
        writeln!(out, "beacons:   {} decoded", a.beacons.len())?;
        for b in &a.beacons {
            writeln!(
                out,
                "  {:>8.3}–{:.3} s  beacon {:.1}–{:.1} kHz {:>3} bytes  SNR {} in band  {}",
                b.start_s,
                b.end_s,
                b.low_hz / 1000.0,
                b.high_hz / 1000.0,
                b.payload_len,
                db(b.snr_db),
                b.payload_hex
            )?;
        }
    }
    for hint in &a.hints {
        writeln!(out, "hint:      {hint}")?;
    }
    if let Some(png) = png {
        writeln!(
            out,
            "picture:   {} ({}x{} px, {:.1} ms per column)",
            png.display(),
            a.image.width,
            a.image.height,
            a.image.seconds_per_column * 1000.0
        )?;
    }
    Ok(())
}
