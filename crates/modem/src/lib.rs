//! Acoustic modem: payment tokens as short bursts of sound (docs/modem.md).
//!
//! [`encode`] renders up to 256 payload bytes as PCM in one of two
//! [`Profile`]s; a [`Decoder`] takes PCM chunks of any size at any rate,
//! finds frames anywhere in the stream, and returns each payload once, only
//! after its forward error correction (LDPC, or Reed–Solomon for version-1
//! frames) and a CRC-32 check. The over-the-air formats are documented in
//! `docs/modem.md`.
//!
//! A reader's **beacon** ([`encode_beacon`], [`BeaconDecoder`]) is a
//! separate, short format above the payment bands (18.3–19.8 kHz) that
//! tells a phone which gate it stands at and the gate's current challenge.
//!
//! One DSP block per module: [`resample`], `preamble` (chirp and matched
//! filter), `ofdm` (symbols), `modulation` (DQPSK / M-FSK), `frame2` and
//! `robust2` (the profiles' formats 2), `codewords` over `ldpc`,
//! `interleave`, `rs` over `gf256`, `crc`, `framing`, and [`encoder`] /
//! [`decoder`]; the beacon's `beacon` (format) over `conv` (its
//! convolutional code) and `beacon_decoder`.

#![deny(missing_docs)]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

mod beacon;
mod beacon_decoder;
mod codewords;
mod conv;
mod crc;
pub mod decoder;
pub mod encoder;
mod frame2;
mod framing;
mod gf256;
mod interleave;
mod ldpc;
mod modulation;
mod ofdm;
mod preamble;
mod profile;
pub mod resample;
mod robust2;
mod rs;
mod silence;

pub use beacon::{BEACON_MAX_PAYLOAD, beacon_air_time, beacon_band_hz, encode_beacon};
pub use beacon_decoder::{BEACON_BUFFER_SECONDS, BeaconDecoder, BeaconReception};
pub use decoder::{Decoder, Missed, Reception};
pub use encoder::{air_time, encode};
pub use framing::MAX_PAYLOAD;
pub use profile::{INTERNAL_RATE, Profile};
pub use rs::RsError;

use thiserror::Error;

/// Why a payload could not be encoded or a decoder not be built.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ModemError {
    /// Nothing to send.
    #[error("payload is empty")]
    EmptyPayload,
    /// More than a frame carries.
    #[error("payload is {len} bytes; a frame carries at most {max}")]
    PayloadTooLong {
        /// Bytes given.
        len: usize,
        /// Largest payload.
        max: usize,
    },
    /// The sample rate cannot carry the profile's band (or is absurd).
    #[error("sample rate {rate} Hz cannot carry the {profile} profile")]
    UnsupportedRate {
        /// Rate asked for.
        rate: u32,
        /// Profile name.
        profile: &'static str,
    },
    /// Internal coding error (a bug if it ever shows).
    #[error("forward error correction: {0}")]
    Fec(#[from] RsError),
}

#[cfg(test)]
mod tests;

/// The channel simulator (feature `sim`): rooms, noise and clocks, for tests, benches and the demo.
#[cfg(any(test, feature = "sim"))]
pub mod sim;
