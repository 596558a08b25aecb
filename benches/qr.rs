//! QR benchmark: per-frame decode time at 640×480, 1280×720 and 1920×1080
//! (median, p99, max) on synthetic camera frames, and the read rate on the
//! corpus under `signals/qr/`, side by side with zbar (`zbarimg`) and
//! zxing-cpp (`ZXingReader`) when they are installed.
//!
//! Then the photo corpus (`signals/qr/photo/`, issue 20) per category,
//! beside zxing-cpp and zbar through their Python bindings
//! (`benches/qr_others.py`: `pip install zxing-cpp pyzbar pillow`, and
//! `apt-get install zbar-tools` for libzbar).
//!
//! Run: `cargo bench --bench qr` (set `QR_BENCH_FRAMES` for frames per size,
//! `QR_BENCH_CORPUS` for another corpus directory, e.g. a fresh-seed set,
//! `QR_BENCH_PHOTOS` for another photo corpus).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use sonotap_qr::synth::{self, Effects, Scene};
use sonotap_qr::{DecodeOptions, Decoder, GreyImage, load_image};

/// The effect mixes timed at each size, cycled through.
fn effect_mixes() -> Vec<Effects> {
    let d = Effects::default();
    vec![
        d.clone(),
        Effects {
            tilt_deg: 30.0,
            ..d.clone()
        },
        Effects {
            motion_px: 5.0,
            ..d.clone()
        },
        Effects {
            glare: 2,
            ..d.clone()
        },
        Effects {
            moire: true,
            ..d.clone()
        },
        Effects {
            dark_mode: true,
            ..d.clone()
        },
        Effects {
            contrast: 0.3,
            ..d.clone()
        },
        Effects {
            occlusion: true,
            ..d.clone()
        },
    ]
}

/// The effect mix of frame `i` (as [`effect_mixes`] cycles them).
fn mixes_name(i: usize) -> &'static str {
    [
        "clean", "tilt 30", "motion 5", "glare", "moire", "dark", "contrast", "finger",
    ][i % 8]
}

fn frames(width: usize, height: usize, count: usize) -> Vec<GreyImage> {
    let mixes = effect_mixes();
    (0..count)
        .filter_map(|i| {
            let effects = mixes[i % mixes.len()].clone();
            let scene = Scene {
                name: format!("bench-{i}"),
                width,
                height,
                codes: 1,
                effects: effects.clone(),
            };
            let sample = synth::render(&scene, 1000 + i as u64).ok()?;
            // Store and reload as the camera would compress it.
            match effects.jpeg_quality {
                Some(q) => {
                    let bytes = synth::jpeg_bytes(&sample.image, q).ok()?;
                    sonotap_qr::source::load_image_bytes(&bytes, "bench").ok()
                }
                None => Some(sample.image),
            }
        })
        .collect()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// CPU time this thread has run (`clock_gettime(CLOCK_THREAD_CPUTIME_ID)`):
/// unlike the wall clock it leaves out the time other processes on a
/// shared machine held the core, at nanosecond resolution. `None` if the
/// call fails.
fn thread_cpu() -> Option<Duration> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the call's duration.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    (rc == 0).then(|| Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32))
}

fn time_decoder(name: &str, decoder: &Decoder, frames: &[GreyImage]) {
    let mut times = Vec::with_capacity(frames.len());
    let mut cpu = Vec::with_capacity(frames.len());
    let mut read = 0;
    let mut slowest = (Duration::ZERO, 0, "none");
    for (i, f) in frames.iter().enumerate() {
        let (t, c) = (Instant::now(), thread_cpu());
        let codes = decoder.decode(f.as_frame());
        let took = t.elapsed();
        times.push(took);
        if took > slowest.0 {
            slowest = (took, i, codes.first().map_or("none", |c| c.strategy));
        }
        if let (Some(c0), Some(c1)) = (c, thread_cpu()) {
            cpu.push(c1.saturating_sub(c0));
        }
        if !codes.is_empty() {
            read += 1;
        }
    }
    times.sort();
    cpu.sort();
    let (w, h) = frames
        .first()
        .map(|f| (f.width(), f.height()))
        .unwrap_or((0, 0));
    println!(
        "{name:>9} {w:>4}x{h:<4} frames {:>3}  read {:>3}  median {:>6.1} ms  p99 {:>6.1} ms  max {:>6.1} ms  | cpu median {:>6.1} ms  p99 {:>6.1} ms",
        frames.len(),
        read,
        ms(percentile(&times, 0.5)),
        ms(percentile(&times, 0.99)),
        ms(times.last().copied().unwrap_or_default()),
        ms(percentile(&cpu, 0.5)),
        ms(percentile(&cpu, 0.99)),
    );
    if name != "no-code" {
        println!(
            "          slowest: frame {} ({}), read by {}",
            slowest.1,
            mixes_name(slowest.1),
            slowest.2
        );
    }
}

fn corpus() -> Vec<(PathBuf, Vec<Vec<u8>>)> {
    let dir = std::env::var_os("QR_BENCH_CORPUS").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("signals/qr"),
        PathBuf::from,
    );
    sonotap_qr::synth::read_corpus(&dir).expect("signals/qr is a readable corpus")
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// Runs an external reader printing raw payload bytes; `None` if absent.
fn external(tool: &str, args: &[&str], file: &Path) -> Option<Vec<u8>> {
    let out = Command::new(tool).args(args).arg(file).output().ok()?;
    Some(out.stdout)
}

fn main() {
    let per_size: usize = std::env::var("QR_BENCH_FRAMES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(48);
    println!(
        "# per-frame decode time (gate = default options: stop at the first code, {} ms budget; thorough: every strategy, {} ms)",
        DecodeOptions::default().budget.as_millis(),
        DecodeOptions::thorough().budget.as_millis()
    );
    let gate = Decoder::new(DecodeOptions::default());
    let thorough = Decoder::new(DecodeOptions::thorough());
    for (w, h) in [(640, 480), (1280, 720), (1920, 1080)] {
        let fs = frames(w, h, per_size);
        time_decoder("gate", &gate, &fs);
        time_decoder("thorough", &thorough, &fs);
        let blank = vec![GreyImage::filled(w, h, 128).unwrap_or_else(|_| fs[0].clone()); 8];
        time_decoder("no-code", &gate, &blank);
    }

    let corpus_name = std::env::var("QR_BENCH_CORPUS").unwrap_or_else(|_| "signals/qr".into());
    println!("\n# read rate on {corpus_name} (codes read / codes in view)");
    let files = corpus();
    let total: usize = files.iter().map(|(_, p)| p.len()).sum();
    let mut ours = 0;
    let mut zbar: Option<usize> = Some(0);
    let mut zxing: Option<usize> = Some(0);
    let mut misses = Vec::new();
    for (path, payloads) in &files {
        let Ok(img) = load_image(path) else { continue };
        let found: Vec<Vec<u8>> = thorough
            .decode(img.as_frame())
            .into_iter()
            .map(|c| c.payload)
            .collect();
        let got = payloads.iter().filter(|p| found.contains(p)).count();
        if got < payloads.len() {
            misses.push(
                path.file_name()
                    .map(|n| n.to_string_lossy().to_string())
                    .unwrap_or_default(),
            );
        }
        ours += got;
        if let Some(n) = zbar.as_mut() {
            match external("zbarimg", &["-q", "--raw", "-Sbinary"], path) {
                Some(out) => *n += payloads.iter().filter(|p| contains(&out, p)).count(),
                None => zbar = None,
            }
        }
        if let Some(n) = zxing.as_mut() {
            match external("ZXingReader", &["-bytes"], path) {
                Some(out) => *n += payloads.iter().filter(|p| contains(&out, p)).count(),
                None => zxing = None,
            }
        }
    }
    let rate = |n: usize| 100.0 * n as f64 / total.max(1) as f64;
    println!("files {}  codes {total}", files.len());
    println!(
        "sonotap (rqrr + preparation)  {ours:>3}/{total}  {:5.1}%",
        rate(ours)
    );
    match zbar {
        Some(n) => println!(
            "zbar (zbarimg)                {n:>3}/{total}  {:5.1}%",
            rate(n)
        ),
        None => println!("zbar (zbarimg)                not installed"),
    }
    match zxing {
        Some(n) => println!(
            "zxing-cpp (ZXingReader)       {n:>3}/{total}  {:5.1}%",
            rate(n)
        ),
        None => println!("zxing-cpp (ZXingReader)       not installed"),
    }
    println!("sonotap missed: {misses:?}");
    photo_table(&thorough);
}

/// One reader's count on one category: codes read, codes in view, and the
/// time of each photo.
#[derive(Default)]
struct Tally {
    read: usize,
    codes: usize,
    ms: Vec<f64>,
}

impl Tally {
    fn add(&mut self, payloads: &[Vec<u8>], found: &[Vec<u8>], ms: f64) {
        self.read += payloads.iter().filter(|p| found.contains(p)).count();
        self.codes += payloads.len();
        self.ms.push(ms);
    }

    fn cell(&self) -> String {
        let mut ms = self.ms.clone();
        ms.sort_by(f64::total_cmp);
        let median = ms.get(ms.len() / 2).copied().unwrap_or(0.0);
        format!(
            "{:>5.1} % ({:>2}/{:<2}) {:>6.1} ms",
            100.0 * self.read as f64 / self.codes.max(1) as f64,
            self.read,
            self.codes,
            median
        )
    }
}

/// The photo corpus (`signals/qr/photo/`, issue 20), per category: codes
/// read and the median time per photo of sonotap (thorough options, as
/// `qr decode` reads a still), zxing-cpp and zbar (their Python bindings,
/// `benches/qr_others.py`, in-process timing; left out if not installed).
fn photo_table(thorough: &Decoder) {
    use sonotap_qr::photo::Category;
    let dir = std::env::var_os("QR_BENCH_PHOTOS").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("signals/qr/photo"),
        PathBuf::from,
    );
    let Ok(files) = sonotap_qr::synth::read_corpus(&dir) else {
        println!("\n# photo corpus: {} not readable", dir.display());
        return;
    };
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/qr_others.py");
    let others: Vec<serde_json::Value> = Command::new("python3")
        .arg(&script)
        .arg(&dir)
        .output()
        .ok()
        .map(|out| {
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect()
        })
        .unwrap_or_default();
    let mut table: Vec<(Category, [Tally; 3])> = Category::ALL
        .iter()
        .map(|&c| (c, Default::default()))
        .collect();
    let (mut have_zxing, mut have_zbar) = (false, false);
    for (path, payloads) in &files {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        let Some(row) = Category::of_file(&name)
            .and_then(|c| table.iter_mut().find(|(k, _)| *k == c))
            .map(|(_, t)| t)
        else {
            continue;
        };
        let Ok(img) = load_image(path) else { continue };
        let started = Instant::now();
        let found: Vec<Vec<u8>> = thorough
            .decode(img.as_frame())
            .into_iter()
            .map(|c| c.payload)
            .collect();
        row[0].add(payloads, &found, ms(started.elapsed()));
        let Some(line) = others.iter().find(|l| l["file"] == name.as_str()) else {
            continue;
        };
        for (i, key) in [(1, "zxing"), (2, "zbar")] {
            let Some(codes) = line[key].as_array() else {
                continue;
            };
            if i == 1 {
                have_zxing = true;
            } else {
                have_zbar = true;
            }
            let found: Vec<Vec<u8>> = codes
                .iter()
                .filter_map(|c| c.as_str().and_then(|h| hex::decode(h).ok()))
                .collect();
            let took = line[format!("{key}_ms")].as_f64().unwrap_or(0.0);
            row[i].add(payloads, &found, took);
        }
    }
    println!(
        "\n# photo corpus {} (codes read, median time per photo; sonotap: thorough options, {} ms budget plus {} ms a code read, up to {} ms)",
        dir.display(),
        DecodeOptions::thorough().budget.as_millis(),
        sonotap_qr::BUDGET_PER_CODE.as_millis(),
        sonotap_qr::STILL_BUDGET_CAP.as_millis()
    );
    println!(
        "{:<13} | {:<26} | {:<26} | {:<26}",
        "category", "sonotap", "zxing-cpp", "zbar"
    );
    let mut all: [Tally; 3] = Default::default();
    for (category, row) in &table {
        let cell = |i: usize, have: bool| {
            if have || i == 0 {
                row[i].cell()
            } else {
                "not installed".to_string()
            }
        };
        println!(
            "{:<13} | {} | {} | {}",
            category.name(),
            cell(0, true),
            cell(1, have_zxing),
            cell(2, have_zbar)
        );
        for (sum, t) in all.iter_mut().zip(row) {
            sum.read += t.read;
            sum.codes += t.codes;
            sum.ms.extend(&t.ms);
        }
    }
    println!(
        "{:<13} | {} | {} | {}",
        "all",
        all[0].cell(),
        all[1].cell(),
        all[2].cell()
    );
}
