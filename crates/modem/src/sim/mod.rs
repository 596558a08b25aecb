//! A simulated acoustic channel, phone speaker to reader microphone, for the
//! modem's tests and benchmarks (docs/modem.md §5): speaker band limits, room
//! reverberation, clock offset, a 44.1 kHz receiver, unknown gain, a random
//! start inside continuous noise, and white, pink, babble or station noise at
//! a given signal-to-noise ratio over the whole band. Seeded, so every trial
//! is reproducible. Resampling is the modem's own band-limited resampler.

pub mod filter;
pub mod noise;
pub mod reverb;

use rand::{RngExt, SeedableRng};
use rand_pcg::Pcg64Mcg;

pub use noise::NoiseKind;
pub use reverb::Room;

use filter::Biquad;

/// Everything between the phone's DAC and the reader's ADC.
#[derive(Debug, Clone, PartialEq)]
pub struct Channel {
    /// Phone speaker band limits: weak below ~400 Hz, rolling off above ~19.5 kHz.
    pub speaker: bool,
    /// Room reverberation, if any.
    pub room: Option<Room>,
    /// Sender clock error, parts per million (positive: fast).
    pub clock_ppm: f64,
    /// The receiver's sample rate.
    pub rx_rate: u32,
    /// Added noise.
    pub noise: NoiseKind,
    /// Signal-to-noise ratio over the whole band, dB, measured while the signal plays.
    pub snr_db: f32,
    /// Seconds of noise before the signal (a random start in this range).
    pub lead_secs: (f32, f32),
    /// Seconds of noise after the signal.
    pub tail_secs: f32,
}

impl Default for Channel {
    fn default() -> Self {
        Self {
            speaker: true,
            room: None,
            clock_ppm: 0.0,
            rx_rate: 48_000,
            noise: NoiseKind::White,
            snr_db: 30.0,
            lead_secs: (0.1, 0.6),
            tail_secs: 0.3,
        }
    }
}

/// What the reader's microphone captured.
#[derive(Debug, Clone, PartialEq)]
pub struct Received {
    /// Samples at `rate`, with a random overall gain, in [-1, 1].
    pub samples: Vec<f32>,
    /// The receiver's sample rate.
    pub rate: u32,
    /// Sample index where the signal starts.
    pub signal_start: usize,
    /// Sample index where the signal's direct path ends.
    pub signal_end: usize,
}

/// Sends `signal` (at `tx_rate`) through `channel`; `seed` fixes every random choice.
pub fn transmit(signal: &[f32], tx_rate: u32, channel: &Channel, seed: u64) -> Received {
    let mut rng = Pcg64Mcg::seed_from_u64(seed);
    let mut sound = signal.to_vec();
    if channel.speaker {
        let rate = f64::from(tx_rate);
        for mut f in [
            Biquad::high_pass(400.0, rate, 0.707),
            Biquad::high_pass(400.0, rate, 0.707),
            Biquad::low_pass(19_500.0, rate, 0.707),
            Biquad::low_pass(19_500.0, rate, 0.707),
        ] {
            f.run(&mut sound);
        }
    }
    // A sender clock `ppm` fast plays its nominal rate's samples faster.
    let sender_rate = f64::from(tx_rate) * (1.0 + channel.clock_ppm * 1e-6);
    let mut sound = crate::resample::resample(&sound, sender_rate, f64::from(channel.rx_rate));
    let direct_len = sound.len();
    if let Some(room) = channel.room {
        let h = reverb::impulse_response(room, channel.rx_rate, &mut rng);
        sound = reverb::convolve(&sound, &h);
    }
    let rate = channel.rx_rate as f32;
    let lead = (rng
        .random_range(channel.lead_secs.0..=channel.lead_secs.1.max(channel.lead_secs.0))
        * rate) as usize;
    let tail = (channel.tail_secs * rate) as usize;
    let total = lead + sound.len() + tail;
    let signal_power = noise::power(&sound[..direct_len]);
    let noise_power = signal_power / 10f64.powf(f64::from(channel.snr_db) / 10.0);
    let noise = noise::generate(channel.noise, total, channel.rx_rate, &mut rng);
    let k = noise_power.sqrt() as f32;
    let mut samples: Vec<f32> = noise.iter().map(|n| n * k).collect();
    for (i, s) in sound.iter().enumerate() {
        samples[lead + i] += s;
    }
    // Unknown microphone gain, never clipping.
    let peak = samples.iter().fold(0.0f32, |m, s| m.max(s.abs()));
    let gain = rng.random_range(0.05f32..0.9) / peak.max(1e-9);
    samples.iter_mut().for_each(|s| *s *= gain);
    Received {
        samples,
        rate: channel.rx_rate,
        signal_start: lead,
        signal_end: lead + direct_len,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::f64::consts::PI;

    #[test]
    fn snr_is_measured_over_the_whole_band() {
        let signal: Vec<f32> = (0..48_000)
            .map(|i| (2.0 * PI * 1_000.0 * f64::from(i) / 48_000.0).sin() as f32)
            .collect();
        let channel = Channel {
            speaker: false,
            snr_db: 0.0,
            lead_secs: (0.5, 0.5),
            tail_secs: 0.5,
            ..Channel::default()
        };
        let rx = transmit(&signal, 48_000, &channel, 11);
        assert_eq!(rx.signal_start, 24_000);
        let noise_only = noise::power(&rx.samples[..rx.signal_start]);
        let both = noise::power(&rx.samples[rx.signal_start..rx.signal_end]);
        let snr = 10.0 * ((both - noise_only) / noise_only).log10();
        assert!(snr.abs() < 0.5, "measured {snr} dB");
        assert!(rx.samples.iter().all(|s| s.abs() <= 1.0));
    }

    #[test]
    fn the_same_seed_gives_the_same_capture() {
        let signal = vec![0.5f32; 4_800];
        let channel = Channel {
            room: Some(Room {
                rt60: 0.4,
                drr_db: 6.0,
            }),
            rx_rate: 44_100,
            clock_ppm: 300.0,
            noise: NoiseKind::Station,
            ..Channel::default()
        };
        assert_eq!(
            transmit(&signal, 48_000, &channel, 5),
            transmit(&signal, 48_000, &channel, 5)
        );
        assert_ne!(
            transmit(&signal, 48_000, &channel, 5),
            transmit(&signal, 48_000, &channel, 6)
        );
    }
}
