//! Synthetic noises of a station: white, pink, speech babble, and the
//! station mix of pink, babble and drifting brake-squeal tones
//! (docs/modem.md §5); and, for false-payload tests, music, one talker and
//! gate beeps.

use std::f64::consts::PI;

use rand::RngExt;
use rand_distr::StandardNormal;
use rand_pcg::Pcg64Mcg;

use super::filter::Biquad;

/// Which noise to add.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoiseKind {
    /// Flat spectrum.
    White,
    /// −3 dB per octave, like most ambient noise.
    Pink,
    /// Several people talking at once.
    Babble,
    /// Pink + babble + squeal tones drifting between 2 and 9 kHz.
    Station,
    /// Notes with harmonics, chords and a beat: music, for false-alarm tests.
    Music,
    /// One talker: a voiced source through moving formants, hiss, pauses.
    Speech,
    /// Gate beeps: short tones of 1–4 kHz, some with harmonics up to 16 kHz, some chirps.
    Beeps,
}

impl NoiseKind {
    /// Every kind, for benchmarks.
    pub const ALL: [NoiseKind; 7] = [
        NoiseKind::White,
        NoiseKind::Pink,
        NoiseKind::Babble,
        NoiseKind::Station,
        NoiseKind::Music,
        NoiseKind::Speech,
        NoiseKind::Beeps,
    ];

    /// Short name for tables.
    pub fn name(self) -> &'static str {
        match self {
            NoiseKind::White => "white",
            NoiseKind::Pink => "pink",
            NoiseKind::Babble => "babble",
            NoiseKind::Station => "station",
            NoiseKind::Music => "music",
            NoiseKind::Speech => "speech",
            NoiseKind::Beeps => "beeps",
        }
    }
}

/// `len` samples of unit-power noise of `kind` at `rate` Hz.
pub fn generate(kind: NoiseKind, len: usize, rate: u32, rng: &mut Pcg64Mcg) -> Vec<f32> {
    let rate = f64::from(rate);
    let mut noise = match kind {
        NoiseKind::White => white(len, rng),
        NoiseKind::Pink => pink(len, rng),
        NoiseKind::Babble => babble(len, rate, rng),
        NoiseKind::Station => {
            let pink = normalised(pink(len, rng));
            let babble = normalised(babble(len, rate, rng));
            let squeal = normalised(squeal(len, rate, rng));
            // Power shares: pink 1/2, babble 1/4, squeal 1/4.
            (0..len)
                .map(|i| 0.707 * pink[i] + 0.5 * babble[i] + 0.5 * squeal[i])
                .collect()
        }
        NoiseKind::Music => music(len, rate, rng),
        NoiseKind::Speech => speech(len, rate, rng),
        NoiseKind::Beeps => beeps(len, rate, rng),
    };
    normalise(&mut noise);
    noise
}

/// Mean power of a signal.
pub fn power(samples: &[f32]) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    samples.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>() / samples.len() as f64
}

fn normalise(samples: &mut [f32]) {
    let p = power(samples);
    if p > 0.0 {
        let k = (1.0 / p.sqrt()) as f32;
        samples.iter_mut().for_each(|s| *s *= k);
    }
}

fn normalised(mut samples: Vec<f32>) -> Vec<f32> {
    normalise(&mut samples);
    samples
}

fn white(len: usize, rng: &mut Pcg64Mcg) -> Vec<f32> {
    (0..len)
        .map(|_| rng.sample::<f32, _>(StandardNormal))
        .collect()
}

/// Paul Kellet's pink-noise filter applied to white noise.
fn pink(len: usize, rng: &mut Pcg64Mcg) -> Vec<f32> {
    let mut b = [0.0f64; 7];
    (0..len)
        .map(|_| {
            let w: f64 = rng.sample(StandardNormal);
            b[0] = 0.99886 * b[0] + w * 0.0555179;
            b[1] = 0.99332 * b[1] + w * 0.0750759;
            b[2] = 0.96900 * b[2] + w * 0.1538520;
            b[3] = 0.86650 * b[3] + w * 0.3104856;
            b[4] = 0.55000 * b[4] + w * 0.5329522;
            b[5] = -0.7616 * b[5] - w * 0.0168980;
            let out = b[0] + b[1] + b[2] + b[3] + b[4] + b[5] + b[6] + w * 0.5362;
            b[6] = w * 0.115926;
            out as f32
        })
        .collect()
}

/// Six talkers: noise through two moving formant filters, switched on and
/// off at a syllable rate, band-limited like speech.
fn babble(len: usize, rate: f64, rng: &mut Pcg64Mcg) -> Vec<f32> {
    let mut sum = vec![0.0f32; len];
    for _ in 0..6 {
        let source = pink(len, rng);
        let mut f1 = Biquad::band_pass(rng.random_range(300.0..900.0), rate, 3.0);
        let mut f2 = Biquad::band_pass(rng.random_range(900.0..2_800.0), rate, 4.0);
        let mut lp = Biquad::low_pass(4_000.0, rate, 0.707);
        let syllable_hz = rng.random_range(3.0..6.0);
        let phase = rng.random_range(0.0..2.0 * PI);
        let level = rng.random_range(0.5f32..1.0);
        for (i, out) in sum.iter_mut().enumerate() {
            let s = f64::from(source[i]);
            let voiced = f1.step(s) + 0.6 * f2.step(s);
            let t = i as f64 / rate;
            let envelope = (PI * syllable_hz * t + phase).sin().abs().powf(1.5);
            *out += level * lp.step(voiced * envelope) as f32;
        }
    }
    sum
}

/// One to three squeal tones whose pitch drifts slowly between 2 and 9 kHz.
fn squeal(len: usize, rate: f64, rng: &mut Pcg64Mcg) -> Vec<f32> {
    let mut sum = vec![0.0f32; len];
    let tones = rng.random_range(1..=3);
    for _ in 0..tones {
        let centre = rng.random_range(2_500.0..8_500.0);
        let depth = rng.random_range(50.0..500.0);
        let drift_hz = rng.random_range(0.1..0.8);
        let drift_phase = rng.random_range(0.0..2.0 * PI);
        let mut phase = 0.0f64;
        for (i, out) in sum.iter_mut().enumerate() {
            let t = i as f64 / rate;
            let freq = (centre + depth * (2.0 * PI * drift_hz * t + drift_phase).sin())
                .clamp(2_000.0, 9_000.0);
            phase += 2.0 * PI * freq / rate;
            let swell = 0.6 + 0.4 * (2.0 * PI * 0.7 * t + drift_phase).sin();
            *out += (swell * phase.sin()) as f32;
        }
    }
    sum
}

/// Random melodies and chords: notes from an equal-tempered scale between
/// 65 Hz and 4 kHz, each with eight harmonics up to 16 kHz (bright
/// instruments reach the modem's bands), a plucked envelope, and a drum
/// hit (a noise burst) on every beat.
fn music(len: usize, rate: f64, rng: &mut Pcg64Mcg) -> Vec<f32> {
    let mut out = vec![0.0f32; len];
    let beat = (rate * rng.random_range(0.3..0.6)) as usize;
    let mut start = 0;
    while start < len {
        for _ in 0..rng.random_range(1..=3) {
            let semitone: i32 = rng.random_range(-33..=39); // around A4
            let freq = 440.0 * 2f64.powf(f64::from(semitone) / 12.0);
            let note_len = (beat * rng.random_range(1..=4)).min(len - start);
            for (n, out) in out[start..start + note_len].iter_mut().enumerate() {
                let t = n as f64 / rate;
                let envelope = (-t * 4.0).exp();
                let mut v = 0.0;
                for h in 1..=8 {
                    let f = freq * f64::from(h);
                    if f < 16_000.0 {
                        v += (2.0 * PI * f * t).sin() / f64::from(h);
                    }
                }
                *out += (envelope * v * 0.3) as f32;
            }
        }
        let hit = (rate * 0.05) as usize;
        for n in 0..hit.min(len - start) {
            let decay = (-(n as f64) / (rate * 0.01)).exp();
            out[start + n] += (decay * rng.sample::<f64, _>(StandardNormal) * 0.5) as f32;
        }
        start += beat;
    }
    out
}

/// One talker in phrases of 3–10 syllables with pauses of 0.2–1.2 s: a
/// sawtooth at a drifting pitch (rich in harmonics, like a glottal source)
/// through three formant filters that move every syllable, and now and then
/// a fricative (hiss above 3–6 kHz), the part of speech that reaches the
/// fast profile's band.
fn speech(len: usize, rate: f64, rng: &mut Pcg64Mcg) -> Vec<f32> {
    let mut out = vec![0.0f32; len];
    let pitch = rng.random_range(90.0..220.0);
    let mut at = (rate * rng.random_range(0.0..0.3)) as usize;
    let mut phase = 0.0f64;
    while at < len {
        for _ in 0..rng.random_range(3..=10) {
            let syllable = ((rate * rng.random_range(0.12..0.3)) as usize).min(len - at);
            let mut formants = [
                Biquad::band_pass(rng.random_range(300.0..900.0), rate, 5.0),
                Biquad::band_pass(rng.random_range(900.0..2_500.0), rate, 6.0),
                Biquad::band_pass(rng.random_range(2_300.0..3_300.0), rate, 8.0),
            ];
            let fricative = rng.random_bool(0.3);
            let mut hiss = Biquad::high_pass(rng.random_range(3_000.0..6_000.0), rate, 0.707);
            let intonation = rng.random_range(-0.15..0.15);
            for n in 0..syllable {
                let x = n as f64 / syllable as f64;
                let f0 = pitch * (1.0 + intonation * x);
                phase = (phase + f0 / rate).fract();
                let source = 2.0 * phase - 1.0;
                let voiced = formants[0].step(source)
                    + 0.5 * formants[1].step(source)
                    + 0.25 * formants[2].step(source);
                let envelope = (PI * x).sin().powf(0.7);
                let mut v = voiced * envelope;
                if fricative {
                    let noise: f64 = rng.sample(StandardNormal);
                    v += 0.03 * hiss.step(noise) * (PI * x).sin();
                }
                out[at + n] = v as f32;
            }
            at += syllable;
            if at >= len {
                break;
            }
        }
        at += (rate * rng.random_range(0.2..1.2)) as usize;
    }
    out
}

/// Gate and till beeps: one to three short tones (50–300 ms, 1–4 kHz) with
/// 5 ms ramps, every 0.3–2 s; a third pure, a third square-ish with odd
/// harmonics up to 16 kHz, a third chirps sweeping to half or twice their
/// start.
fn beeps(len: usize, rate: f64, rng: &mut Pcg64Mcg) -> Vec<f32> {
    let mut out = vec![0.0f32; len];
    let ramp = rate * 0.005;
    let mut at = (rate * rng.random_range(0.0..0.5)) as usize;
    while at < len {
        let start_hz: f64 = rng.random_range(1_000.0..4_000.0);
        let end_hz = match rng.random_range(0..3) {
            2 => start_hz * rng.random_range(0.5..2.0),
            _ => start_hz,
        };
        let harmonics = if rng.random_bool(0.4) { 15 } else { 1 };
        let duration = (rate * rng.random_range(0.05..0.3)) as usize;
        for _ in 0..rng.random_range(1..=3) {
            let end = (at + duration).min(len);
            let mut phase = 0.0f64;
            for (n, out) in out[at..end].iter_mut().enumerate() {
                let x = n as f64 / duration as f64;
                phase += (start_hz + (end_hz - start_hz) * x) / rate;
                let edge = (n as f64 / ramp).min((duration - n) as f64 / ramp).min(1.0);
                let mut v = 0.0;
                for h in (1..=harmonics).step_by(2) {
                    let f = f64::from(h) * start_hz.max(end_hz);
                    if f < 16_000.0 {
                        v += (2.0 * PI * f64::from(h) * phase).sin() / f64::from(h);
                    }
                }
                *out += (edge * v) as f32;
            }
            at = end + (rate * rng.random_range(0.05..0.15)) as usize;
            if at >= len {
                break;
            }
        }
        at += (rate * rng.random_range(0.3..2.0)) as usize;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    /// Share of power above `freq` Hz, by a crude high-pass.
    fn share_above(samples: &[f32], freq: f64, rate: f64) -> f64 {
        let mut hp = Biquad::high_pass(freq, rate, 0.707);
        let mut high = samples.to_vec();
        hp.run(&mut high);
        power(&high) / power(samples)
    }

    #[test]
    fn every_kind_has_unit_power_and_is_reproducible() {
        for kind in NoiseKind::ALL {
            let a = generate(kind, 48_000, 48_000, &mut Pcg64Mcg::seed_from_u64(7));
            let b = generate(kind, 48_000, 48_000, &mut Pcg64Mcg::seed_from_u64(7));
            assert_eq!(a, b, "{kind:?}");
            assert!((power(&a) - 1.0).abs() < 1e-3, "{kind:?}");
        }
    }

    #[test]
    fn pink_and_station_noise_are_mostly_low_frequency() {
        let mut rng = Pcg64Mcg::seed_from_u64(1);
        let white = generate(NoiseKind::White, 96_000, 48_000, &mut rng);
        let pink = generate(NoiseKind::Pink, 96_000, 48_000, &mut rng);
        let station = generate(NoiseKind::Station, 96_000, 48_000, &mut rng);
        let above = |s: &[f32]| share_above(s, 12_000.0, 48_000.0);
        assert!(above(&white) > 0.4, "white {}", above(&white));
        assert!(above(&pink) < 0.1, "pink {}", above(&pink));
        assert!(above(&station) < 0.1, "station {}", above(&station));
    }

    /// Share of 10 ms blocks quieter than 1/100 of the mean power.
    fn silent_share(samples: &[f32]) -> f64 {
        let blocks: Vec<f64> = samples.chunks(480).map(power).collect();
        blocks.iter().filter(|&&p| p < 0.01).count() as f64 / blocks.len() as f64
    }

    #[test]
    fn speech_pauses_and_reaches_the_high_band_only_a_little() {
        let speech = generate(
            NoiseKind::Speech,
            480_000,
            48_000,
            &mut Pcg64Mcg::seed_from_u64(4),
        );
        let silent = silent_share(&speech);
        assert!((0.1..0.6).contains(&silent), "silent {silent}");
        let high = share_above(&speech, 4_000.0, 48_000.0);
        assert!((0.001..0.2).contains(&high), "above 4 kHz {high}");
    }

    #[test]
    fn beeps_are_short_tones_some_reaching_past_8_khz() {
        let beeps = generate(
            NoiseKind::Beeps,
            960_000,
            48_000,
            &mut Pcg64Mcg::seed_from_u64(5),
        );
        let silent = silent_share(&beeps);
        assert!((0.3..0.95).contains(&silent), "silent {silent}");
        let high = share_above(&beeps, 8_000.0, 48_000.0);
        assert!((1e-4..0.3).contains(&high), "above 8 kHz {high}");
    }
}
