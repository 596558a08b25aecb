//! Sound in and out: WAV files (any format hound reads) and live capture
//! through cpal. Everything arrives as mono `f32` chunks in [-1, 1] with its
//! sample rate, which is what the modem's decoder takes.

#![deny(missing_docs)]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod capture;
pub mod wav;

use std::path::PathBuf;

use thiserror::Error;

/// Why audio could not be read, written or captured.
#[derive(Debug, Error)]
pub enum AudioError {
    /// The file could not be opened or is not a WAV file hound understands.
    #[error("{path}: not a readable WAV file ({detail})")]
    NotWav {
        /// The file.
        path: PathBuf,
        /// What hound said.
        detail: String,
    },
    /// A WAV file whose samples stop making sense part way (truncated, damaged).
    #[error("{path}: damaged WAV data after {frames} frames ({detail})")]
    Damaged {
        /// The file.
        path: PathBuf,
        /// Frames read before the damage.
        frames: u64,
        /// What hound said.
        detail: String,
    },
    /// Writing a WAV file failed.
    #[error("cannot write {path}: {detail}")]
    Write {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        detail: String,
    },
    /// No such capture device, or it cannot capture.
    #[error("audio device: {0}")]
    Device(String),
}

pub mod analyze;
