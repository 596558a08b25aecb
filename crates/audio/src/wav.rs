//! WAV files: read any PCM or float layout in bounded chunks, write 16-bit mono.

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use hound::{SampleFormat, WavReader, WavSpec, WavWriter};

use super::AudioError;

/// Frames per chunk handed out by [`WavChunks`]: 100 ms at 48 kHz.
pub const CHUNK_FRAMES: usize = 4_800;

/// Reads a WAV file chunk by chunk as mono `f32`, so a long recording never
/// has to fit in memory.
pub struct WavChunks {
    reader: WavReader<BufReader<File>>,
    path: PathBuf,
    spec: WavSpec,
    frames_read: u64,
}

impl WavChunks {
    /// Opens `path`; 8/16/24/32-bit integer or 32-bit float, any channel count, any rate.
    pub fn open(path: &Path) -> Result<Self, AudioError> {
        let not_wav = |detail: String| AudioError::NotWav {
            path: path.into(),
            detail,
        };
        let reader = WavReader::open(path).map_err(|e| not_wav(e.to_string()))?;
        let spec = reader.spec();
        if spec.channels == 0 || spec.sample_rate == 0 {
            return Err(not_wav(format!(
                "{} channels at {} Hz",
                spec.channels, spec.sample_rate
            )));
        }
        match (spec.sample_format, spec.bits_per_sample) {
            (SampleFormat::Int, 1..=32) | (SampleFormat::Float, 32) => {}
            (format, bits) => {
                return Err(not_wav(format!(
                    "unsupported {bits}-bit {format:?} samples"
                )));
            }
        }
        Ok(Self {
            reader,
            path: path.into(),
            spec,
            frames_read: 0,
        })
    }

    /// The file's sample rate.
    pub fn rate(&self) -> u32 {
        self.spec.sample_rate
    }

    /// Bytes per frame (all channels) in the file's data chunk.
    pub fn bytes_per_frame(&self) -> u64 {
        u64::from(self.spec.channels) * u64::from(self.spec.bits_per_sample.div_ceil(8))
    }

    /// Length in seconds, from the header.
    pub fn duration_secs(&self) -> f64 {
        f64::from(self.reader.duration()) / f64::from(self.spec.sample_rate)
    }

    /// The next chunk of up to [`CHUNK_FRAMES`] mono frames; `None` at the end.
    pub fn next_chunk(&mut self) -> Result<Option<Vec<f32>>, AudioError> {
        let channels = usize::from(self.spec.channels);
        let mut mono = Vec::with_capacity(CHUNK_FRAMES);
        let mut frame_sum = 0.0f32;
        let mut in_frame = 0;
        let bits = self.spec.bits_per_sample;
        let scale = 1.0 / (1u64 << (bits.saturating_sub(1))) as f32;
        let path = &self.path;
        let frames_read = self.frames_read;
        let damaged = |e: hound::Error| AudioError::Damaged {
            path: path.clone(),
            frames: frames_read,
            detail: e.to_string(),
        };
        let wanted = CHUNK_FRAMES * channels;
        match self.spec.sample_format {
            SampleFormat::Float => {
                for sample in self.reader.samples::<f32>().take(wanted) {
                    let s = sample.map_err(damaged)?;
                    frame_sum += if s.is_finite() {
                        s.clamp(-1.0, 1.0)
                    } else {
                        0.0
                    };
                    in_frame += 1;
                    if in_frame == channels {
                        mono.push(frame_sum / channels as f32);
                        (frame_sum, in_frame) = (0.0, 0);
                    }
                }
            }
            SampleFormat::Int => {
                for sample in self.reader.samples::<i32>().take(wanted) {
                    frame_sum += sample.map_err(damaged)? as f32 * scale;
                    in_frame += 1;
                    if in_frame == channels {
                        mono.push(frame_sum / channels as f32);
                        (frame_sum, in_frame) = (0.0, 0);
                    }
                }
            }
        }
        self.frames_read += mono.len() as u64;
        Ok((!mono.is_empty()).then_some(mono))
    }
}

/// Writes mono samples as a 16-bit PCM WAV file (what phones play most reliably).
pub fn write_mono_16(path: &Path, samples: &[f32], rate: u32) -> Result<(), AudioError> {
    let write_err = |e: hound::Error| AudioError::Write {
        path: path.into(),
        detail: e.to_string(),
    };
    let spec = WavSpec {
        channels: 1,
        sample_rate: rate,
        bits_per_sample: 16,
        sample_format: SampleFormat::Int,
    };
    let mut writer = WavWriter::create(path, spec).map_err(write_err)?;
    for &s in samples {
        let value = (s.clamp(-1.0, 1.0) * f32::from(i16::MAX)).round() as i16;
        writer.write_sample(value).map_err(write_err)?;
    }
    writer.finalize().map_err(write_err)
}

/// Reads a whole (short) WAV file as mono `f32` and its rate.
pub fn read_mono(path: &Path) -> Result<(Vec<f32>, u32), AudioError> {
    let mut chunks = WavChunks::open(path)?;
    let mut all = Vec::new();
    while let Some(chunk) = chunks.next_chunk()? {
        all.extend_from_slice(&chunk);
    }
    Ok((all, chunks.rate()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, spec: WavSpec, frames: &[Vec<f64>]) {
        let mut w = WavWriter::create(path, spec).expect("create");
        for frame in frames {
            for &v in frame {
                match spec.sample_format {
                    SampleFormat::Float => w.write_sample(v as f32).expect("write"),
                    SampleFormat::Int => {
                        let max = (1i64 << (spec.bits_per_sample - 1)) as f64;
                        w.write_sample((v * max).round().min(max - 1.0) as i32)
                            .expect("write")
                    }
                }
            }
        }
        w.finalize().expect("finalize");
    }

    #[test]
    fn every_layout_reads_as_the_same_mono_signal() {
        let dir = tempfile::tempdir().expect("tempdir");
        let signal: Vec<f64> = (0..10_000).map(|i| 0.5 * (i as f64 * 0.01).sin()).collect();
        for (bits, format, channels) in [
            (16, SampleFormat::Int, 1),
            (24, SampleFormat::Int, 2),
            (32, SampleFormat::Int, 1),
            (8, SampleFormat::Int, 1),
            (32, SampleFormat::Float, 2),
        ] {
            let spec = WavSpec {
                channels,
                sample_rate: 44_100,
                bits_per_sample: bits,
                sample_format: format,
            };
            let path = dir.path().join(format!("{bits}-{format:?}-{channels}.wav"));
            let frames: Vec<Vec<f64>> = signal
                .iter()
                .map(|&v| vec![v; usize::from(channels)])
                .collect();
            write(&path, spec, &frames);
            let (mono, rate) = read_mono(&path).expect("read");
            assert_eq!(rate, 44_100);
            assert_eq!(mono.len(), signal.len());
            let tolerance = if bits == 8 { 0.01 } else { 1e-4 };
            for (a, b) in mono.iter().zip(&signal) {
                assert!(
                    (f64::from(*a) - b).abs() < tolerance,
                    "{bits}-bit {format:?}: {a} vs {b}"
                );
            }
        }
    }

    #[test]
    fn write_then_read_round_trips() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("x.wav");
        let samples = vec![0.0, 0.25, -0.5, 1.5, f32::NAN];
        write_mono_16(&path, &samples, 48_000).expect("write");
        let (back, rate) = read_mono(&path).expect("read");
        assert_eq!(rate, 48_000);
        assert!((back[1] - 0.25).abs() < 1e-4 && (back[2] + 0.5).abs() < 1e-4);
        assert!((back[3] - 1.0).abs() < 1e-3, "clipped, not wrapped");
    }

    #[test]
    fn non_wav_empty_and_truncated_files_give_clear_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let text = dir.path().join("notes.wav");
        std::fs::write(&text, "this is not audio").expect("write");
        assert!(matches!(
            WavChunks::open(&text),
            Err(AudioError::NotWav { .. })
        ));
        let empty = dir.path().join("empty.wav");
        std::fs::write(&empty, b"").expect("write");
        assert!(matches!(
            WavChunks::open(&empty),
            Err(AudioError::NotWav { .. })
        ));
        let good = dir.path().join("good.wav");
        write_mono_16(&good, &vec![0.1; 48_000], 48_000).expect("write");
        let bytes = std::fs::read(&good).expect("read");
        let cut = dir.path().join("cut.wav");
        std::fs::write(&cut, &bytes[..bytes.len() / 2 + 1]).expect("write");
        // Either refused up front or read up to the cut: never a panic.
        if let Ok(mut chunks) = WavChunks::open(&cut) {
            let mut total = 0;
            loop {
                match chunks.next_chunk() {
                    Ok(Some(c)) => total += c.len(),
                    Ok(None) => break,
                    Err(e) => {
                        assert!(matches!(e, AudioError::Damaged { .. }), "{e}");
                        break;
                    }
                }
            }
            assert!(total < 48_000);
        }
    }
}
