//! Transmission profiles: band, symbol shape, modulation and code rate.
//!
//! Every figure here is part of the over-the-air format (docs/modem.md); a
//! phone implementation must use the same numbers. All sample counts are at
//! the modem's internal rate, [`INTERNAL_RATE`].

/// The rate every signal is generated and analysed at, Hz. Other rates are
/// reached by resampling.
pub const INTERNAL_RATE: u32 = 48_000;

/// Which signal to send: a speed / robustness trade-off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Profile {
    /// High-band (10.0–17.9 kHz) coherent QPSK with an LDPC code, 0.45 s for
    /// a 200-byte token: for gates, where the phone is held close.
    Fast,
    /// Audible-high (10.0–17.9 kHz) multicarrier 16-FSK with an LDPC code on
    /// soft decisions, 1.86 s for a 200-byte token: for loud, reverberant
    /// rooms.
    Robust,
}

impl Profile {
    /// Both profiles, in the order the decoder reports them.
    pub const ALL: [Profile; 2] = [Profile::Fast, Profile::Robust];

    /// The profile's name as used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Profile::Fast => "fast",
            Profile::Robust => "robust",
        }
    }

    /// Parses a command-line name (`fast` or `robust`).
    pub fn from_name(name: &str) -> Option<Profile> {
        Profile::ALL.into_iter().find(|p| p.name() == name)
    }

    /// The band the profile's data carriers occupy, Hz (lowest and highest
    /// carrier), e.g. to pick a microphone filter.
    pub fn band_hz(self) -> (f32, f32) {
        self.params().band_hz()
    }

    /// The numeric parameters of the format the encoder sends.
    pub(crate) fn params(self) -> Params {
        self.format().params()
    }

    /// The format the encoder sends for this profile.
    pub(crate) fn format(self) -> Format {
        match self {
            Profile::Fast => Format::FastV2,
            Profile::Robust => Format::RobustV2,
        }
    }

    /// The formats the decoder listens for when asked for this profile
    /// (the current one first).
    pub(crate) fn formats(self) -> &'static [Format] {
        match self {
            Profile::Fast => &[Format::FastV2, Format::FastV1],
            Profile::Robust => &[Format::RobustV2, Format::RobustV1],
        }
    }
}

/// An over-the-air format: what a profile sends now, or sent before.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Format {
    /// Fast, version 1: DQPSK and Reed–Solomon on 13.5–19.5 kHz (decoded, no
    /// longer sent).
    FastV1,
    /// Fast, version 2: coherent QPSK, LDPC and a clock-measuring second chirp
    /// on 10.0–17.9 kHz (`frame2`).
    FastV2,
    /// Robust, version 1: 16-FSK and Reed–Solomon (decoded, no longer sent).
    RobustV1,
    /// Robust, version 2: the same 16-FSK symbols, a falling chirp and LDPC
    /// on soft decisions (`robust2`).
    RobustV2,
}

impl Format {
    /// Every format, sent or still read.
    #[cfg(test)]
    pub const ALL: [Format; 4] = [
        Format::FastV1,
        Format::FastV2,
        Format::RobustV1,
        Format::RobustV2,
    ];

    /// The profile this format belongs to.
    pub fn profile(self) -> Profile {
        match self {
            Format::FastV1 | Format::FastV2 => Profile::Fast,
            Format::RobustV1 | Format::RobustV2 => Profile::Robust,
        }
    }

    /// The format's numeric parameters.
    pub fn params(self) -> Params {
        match self {
            Format::FastV2 => super::frame2::PARAMS,
            Format::RobustV2 => super::robust2::PARAMS,
            Format::FastV1 => Params {
                id: 1,
                fft: 4096,
                cp: 256,
                ramp: 64,
                backoff: 48,
                first_bin: 1152,
                bins: 512,
                modulation: Modulation::Dqpsk,
                chirp_len: 2048,
                chirp_f0: 13_500.0,
                chirp_f1: 19_400.0,
                parity_percent: 80,
                header_parity: 10,
                threshold: 0.22,
            },
            Format::RobustV1 => Params {
                id: 2,
                fft: 2048,
                cp: 256,
                ramp: 64,
                backoff: 96,
                first_bin: 427,
                bins: 336,
                modulation: Modulation::Mfsk { bits: 4 },
                chirp_len: 4096,
                chirp_f0: 10_000.0,
                chirp_f1: 17_900.0,
                parity_percent: 90,
                header_parity: 10,
                threshold: 0.15,
            },
        }
    }
}

/// How bits ride on the carriers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Modulation {
    /// Differential QPSK per carrier between consecutive symbols (2 bits per
    /// carrier per symbol); a known reference symbol comes first.
    Dqpsk,
    /// Coherent QPSK against a known reference symbol, two bits per carrier
    /// per symbol (format 2 of the fast profile, `frame2`).
    Qpsk,
    /// Non-coherent M-ary FSK: carriers form groups of 2^bits, one carrier
    /// per group is lit each symbol.
    Mfsk {
        /// Bits per group and symbol.
        bits: usize,
    },
}

/// Numeric parameters of a profile (see [`Profile::params`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Params {
    /// Profile number carried in the header.
    pub id: u8,
    /// FFT size (useful symbol length), samples.
    pub fft: usize,
    /// Cyclic prefix, samples.
    pub cp: usize,
    /// Raised-cosine cross-fade between symbols, samples (within the prefix).
    pub ramp: usize,
    /// How far before the end of the prefix the receiver's FFT window starts.
    pub backoff: usize,
    /// First FFT bin used.
    pub first_bin: usize,
    /// Number of consecutive bins used.
    pub bins: usize,
    /// Modulation of the bins.
    pub modulation: Modulation,
    /// Preamble chirp length, samples.
    pub chirp_len: usize,
    /// Chirp start frequency, Hz.
    pub chirp_f0: f32,
    /// Chirp end frequency, Hz (below `chirp_f0` for a falling chirp).
    pub chirp_f1: f32,
    /// Reed–Solomon parity bytes per 100 data bytes in the body.
    pub parity_percent: usize,
    /// Parity bytes of the header codeword.
    pub header_parity: usize,
    /// Normalised preamble correlation needed to attempt a decode.
    pub threshold: f32,
}

impl Params {
    /// Samples per symbol including the prefix.
    pub fn symbol_len(&self) -> usize {
        self.fft + self.cp
    }

    /// Bits carried by one cell (carrier or carrier group) of one symbol.
    pub fn bits_per_cell(&self) -> usize {
        match self.modulation {
            Modulation::Dqpsk | Modulation::Qpsk => 2,
            Modulation::Mfsk { bits } => bits,
        }
    }

    /// Cells per symbol.
    pub fn cells_per_symbol(&self) -> usize {
        match self.modulation {
            Modulation::Dqpsk | Modulation::Qpsk => self.bins,
            Modulation::Mfsk { bits } => self.bins >> bits,
        }
    }

    /// Symbols before the data that carry no bits (the DQPSK reference).
    pub fn reference_symbols(&self) -> usize {
        match self.modulation {
            Modulation::Dqpsk | Modulation::Qpsk => 1,
            Modulation::Mfsk { .. } => 0,
        }
    }

    /// Data symbols needed for `bytes` stream bytes.
    pub fn data_symbols(&self, bytes: usize) -> usize {
        let cells = (bytes * 8).div_ceil(self.bits_per_cell());
        cells.div_ceil(self.cells_per_symbol())
    }

    /// Total frame length in samples for a stream of `bytes` bytes: chirp,
    /// reference and data symbols, and the final cross-fade.
    pub fn frame_len(&self, bytes: usize) -> usize {
        self.chirp_len
            + (self.reference_symbols() + self.data_symbols(bytes)) * self.symbol_len()
            + self.ramp
    }

    /// The chirp's lowest and highest frequency, Hz.
    pub fn chirp_band(&self) -> (f32, f32) {
        (
            self.chirp_f0.min(self.chirp_f1),
            self.chirp_f0.max(self.chirp_f1),
        )
    }

    /// The band the profile occupies, Hz (lowest, highest bin centre).
    pub fn band_hz(&self) -> (f32, f32) {
        let bin = INTERNAL_RATE as f32 / self.fft as f32;
        (
            self.first_bin as f32 * bin,
            (self.first_bin + self.bins - 1) as f32 * bin,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bands_stay_inside_the_speaker_band_and_below_nyquist_at_44k1() {
        for p in Format::ALL {
            let q = p.params();
            let (lo, hi) = q.band_hz();
            let (chirp_lo, chirp_hi) = q.chirp_band();
            assert!(lo >= 9_000.0 && hi <= 19_500.0, "{p:?}: {lo}..{hi}");
            assert!(
                chirp_lo <= lo && hi <= chirp_hi + 100.0,
                "{p:?}: chirp covers the band"
            );
            assert!(chirp_lo < chirp_hi && chirp_hi <= 19_500.0);
            assert!(q.ramp + q.backoff <= q.cp);
            assert_eq!(q.bins % (q.bits_per_cell().max(1)), 0);
            if let Modulation::Mfsk { bits } = q.modulation {
                assert_eq!(q.bins % (1 << bits), 0);
            }
        }
    }

    #[test]
    fn names_round_trip() {
        for p in Profile::ALL {
            assert_eq!(Profile::from_name(p.name()), Some(p));
        }
        assert_eq!(Profile::from_name("slow"), None);
    }
}
