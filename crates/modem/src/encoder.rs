//! Encoder: payload bytes to PCM (what the wallet app runs).
//!
//! Frame = chirp preamble, then (DQPSK and QPSK) one reference symbol, then
//! the data symbols, overlap-added with their cross-fades, then (QPSK, the
//! fast profile's format 2) the chirp again. The chirps are scaled to √2 ×
//! (format 2: 1 ×) the RMS of the data part and the whole frame to a peak of
//! [`PEAK`].

use super::ModemError;
use super::frame2;
use super::framing;
use super::modulation;
use super::ofdm::Ofdm;
use super::preamble;
use super::profile::{Format, INTERNAL_RATE, Params, Profile};
use super::resample::resample;
use super::robust2;

/// Peak amplitude of the rendered frame (full scale is 1.0).
pub const PEAK: f32 = 0.8;
/// Lowest and highest sample rates accepted for output or input.
pub(crate) const RATE_RANGE: (u32, u32) = (8_000, 768_000);

/// Checks that `rate` can carry `profile`'s band.
pub(crate) fn check_rate(rate: u32, profile: Profile) -> Result<(), ModemError> {
    if !fits(rate, profile.format()) {
        return Err(ModemError::UnsupportedRate {
            rate,
            profile: profile.name(),
        });
    }
    Ok(())
}

/// Whether audio at `rate` can carry `format`'s band (Nyquist at least
/// 500 Hz above the chirp's top).
pub(crate) fn fits(rate: u32, format: Format) -> bool {
    (RATE_RANGE.0..=RATE_RANGE.1).contains(&rate)
        && (rate as f32) / 2.0 >= format.params().chirp_band().1 + 500.0
}

/// Air time in seconds of a `len`-byte payload (the same at any output rate).
pub fn air_time(len: usize, profile: Profile) -> Result<f64, ModemError> {
    let samples = match profile.format() {
        Format::FastV2 => Some(frame2::layout(len)?.frame_len()),
        Format::RobustV2 => Some(robust2::layout(len)?.frame_len()),
        Format::FastV1 | Format::RobustV1 => None,
    };
    if let Some(samples) = samples {
        return Ok(samples as f64 / INTERNAL_RATE as f64);
    }
    let p = profile.params();
    if len == 0 {
        return Err(ModemError::EmptyPayload);
    }
    if len > framing::MAX_PAYLOAD {
        return Err(ModemError::PayloadTooLong {
            len,
            max: framing::MAX_PAYLOAD,
        });
    }
    Ok(p.frame_len(framing::stream_len(len, &p)) as f64 / INTERNAL_RATE as f64)
}

/// One symbol's non-zero bins: (bin, value).
type Spectrum = Vec<(usize, realfft::num_complex::Complex32)>;

/// The spectra of every symbol (reference first, if any) and whether a
/// second chirp follows them.
fn symbols(payload: &[u8], format: Format) -> Result<(Vec<Spectrum>, bool), ModemError> {
    let p = format.params();
    if format == Format::FastV2 {
        let (_, cells) = frame2::cells(payload)?;
        let bin = |i: usize| p.first_bin + i;
        let mut spectra = vec![
            (0..frame2::CARRIERS)
                .map(|i| (bin(i), frame2::reference(i)))
                .collect::<Vec<_>>(),
        ];
        for symbol in cells.chunks(frame2::CARRIERS) {
            spectra.push(
                symbol
                    .iter()
                    .enumerate()
                    .map(|(i, &v)| (bin(i), v))
                    .collect(),
            );
        }
        return Ok((spectra, true));
    }
    if format == Format::RobustV2 {
        let (_, cells) = robust2::cells(payload)?;
        return Ok((modulation::spectra(&cells, &p), false));
    }
    let stream = framing::build_stream(payload, &p)?;
    let cells = modulation::cells_from_bytes(&stream, &p);
    Ok((modulation::spectra(&cells, &p), false))
}

fn render(payload: &[u8], format: Format) -> Result<Vec<f32>, ModemError> {
    let p: Params = format.params();
    let (spectra, postamble) = symbols(payload, format)?;
    let ofdm = Ofdm::new(p.fft, p.cp, p.ramp);
    let step = ofdm.symbol_len();
    let body_end = p.chirp_len + spectra.len() * step;
    let len = if postamble {
        body_end + p.chirp_len
    } else {
        body_end + p.ramp
    };
    let mut out = vec![0f32; len];
    for (m, spec) in spectra.iter().enumerate() {
        let at = p.chirp_len + m * step;
        for (o, v) in out[at..].iter_mut().zip(ofdm.synthesize(spec)) {
            *o += v;
        }
    }
    // The chirps' level follows the symbols' RMS (format 1 and robust take
    // it over the final fade too, as they always did).
    let data = if postamble {
        &out[p.chirp_len..body_end]
    } else {
        &out[p.chirp_len..]
    };
    let rms = (data.iter().map(|v| v * v).sum::<f32>() / data.len().max(1) as f32).sqrt();
    // Format 2 spends less of the frame's energy on its two chirps (the
    // matched filter's gain of ~30 dB needs no more).
    let chirp_amp = rms
        * if postamble {
            1.0
        } else {
            std::f32::consts::SQRT_2
        };
    let chirp = preamble::chirp(&p);
    for (o, c) in out.iter_mut().zip(&chirp) {
        *o += c * chirp_amp;
    }
    if postamble {
        for (o, c) in out[body_end..].iter_mut().zip(&chirp) {
            *o += c * chirp_amp;
        }
    }
    let peak = out.iter().fold(0f32, |m, v| m.max(v.abs()));
    if peak > 0.0 {
        let g = PEAK / peak;
        out.iter_mut().for_each(|v| *v *= g);
    }
    Ok(out)
}

/// Renders `payload` (1..=256 bytes) as mono PCM at `sample_rate` Hz,
/// samples in -1..=1.
pub fn encode(payload: &[u8], profile: Profile, sample_rate: u32) -> Result<Vec<f32>, ModemError> {
    check_rate(sample_rate, profile)?;
    encode_format(payload, profile.format(), sample_rate)
}

/// [`encode`] in a given format (the fast profile's version 1 too, which the
/// decoder still reads).
pub(crate) fn encode_format(
    payload: &[u8],
    format: Format,
    sample_rate: u32,
) -> Result<Vec<f32>, ModemError> {
    let pcm = render(payload, format)?;
    if sample_rate == INTERNAL_RATE {
        return Ok(pcm);
    }
    let mut out = resample(&pcm, INTERNAL_RATE as f64, sample_rate as f64);
    // Resampling can overshoot slightly; keep the promise of -1..=1.
    out.iter_mut().for_each(|v| *v = v.clamp(-1.0, 1.0));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_air_times_meet_the_targets() {
        let fast = air_time(199, Profile::Fast).expect("fast");
        let robust = air_time(199, Profile::Robust).expect("robust");
        assert!(fast <= 0.45, "fast {fast}");
        assert!(robust <= 2.0, "robust {robust}");
        assert!(air_time(0, Profile::Fast).is_err());
        assert!(air_time(257, Profile::Fast).is_err());
        assert!(air_time(256, Profile::Robust).is_ok());
    }

    #[test]
    fn output_has_the_announced_length_and_level() {
        for profile in Profile::ALL {
            let pcm = encode(&[7u8; 199], profile, 48_000).expect("encode");
            let secs = air_time(199, profile).expect("air time");
            assert_eq!(pcm.len(), (secs * 48_000.0).round() as usize);
            let peak = pcm.iter().fold(0f32, |m, v| m.max(v.abs()));
            assert!((peak - PEAK).abs() < 1e-4);
            let at_44k1 = encode(&[7u8; 199], profile, 44_100).expect("encode 44.1");
            assert!((at_44k1.len() as f64 - secs * 44_100.0).abs() < 2.0);
        }
    }

    #[test]
    fn rejects_rates_that_cannot_carry_the_band() {
        assert!(matches!(
            encode(&[1], Profile::Fast, 32_000),
            Err(ModemError::UnsupportedRate { rate: 32_000, .. })
        ));
        assert!(encode(&[1], Profile::Robust, 0).is_err());
        assert!(encode(&[1], Profile::Robust, 44_100).is_ok());
    }

    #[test]
    fn energy_stays_in_the_profile_band() {
        use realfft::RealFftPlanner;
        for profile in Profile::ALL {
            let p = profile.params();
            let pcm = encode(&[0x33; 64], profile, 48_000).expect("encode");
            let n = pcm.len().next_power_of_two();
            let mut x = pcm.clone();
            x.resize(n, 0.0);
            let fft = RealFftPlanner::<f32>::new().plan_fft_forward(n);
            let mut spec = fft.make_output_vec();
            fft.process(&mut x, &mut spec).expect("fft");
            let hz = 48_000.0 / n as f32;
            let (mut inside, mut outside) = (0f32, 0f32);
            for (k, v) in spec.iter().enumerate() {
                let f = k as f32 * hz;
                if f >= p.chirp_band().0 - 1_000.0 && f <= p.chirp_band().1 + 1_000.0 {
                    inside += v.norm_sqr();
                } else {
                    outside += v.norm_sqr();
                }
            }
            let ratio_db = 10.0 * (outside / inside).log10();
            assert!(
                ratio_db < -30.0,
                "{profile:?}: out-of-band {ratio_db:.1} dB"
            );
        }
    }
}
