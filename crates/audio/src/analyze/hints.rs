//! Plain-language advice for an installer, from the numbers.

use super::bands::Bands;
use super::{Analysis, CLIP_LEVEL};
use sonotap_modem::Profile;

/// Clipping worth a hint: more than this share of samples (0.001 %: one
/// sample in 100,000, i.e. a few per second at 48 kHz).
const CLIP_HINT_PERCENT: f64 = 0.001;
/// A frame this close to the decoder's limit (in-band SNR, dB) is heard
/// today and lost tomorrow. From the benchmarks' white noise (docs/modem.md
/// §5; in-band = whole-band + 4.8 dB for fast, + 4.9 dB for robust): fast
/// decodes at 0 dB whole band in rooms up to RT60 1 s and fails around
/// −2 dB (5 / 3 dB in band); robust decodes at −5 dB and fails at −10 dB
/// (0 / −5 dB in band). The margin is about 3 dB above the last success.
fn weak_frame_db(profile: Profile) -> f64 {
    match profile {
        Profile::Fast => 8.0,
        Profile::Robust => 3.0,
    }
}
/// A recording quieter than this peak (dBFS) has a microphone problem.
const QUIET_PEAK_DBFS: f64 = -50.0;
/// Band noise counts as high when its power per Hz is within this many dB
/// of the whole recording's (rooms are loudest at low frequencies; a band
/// as noisy per Hz as the rest has a source of its own: a switch-mode
/// supply, a fan, an ultrasonic sensor, or white noise from the microphone
/// preamplifier at too high a gain) ...
const BAND_DENSITY_MARGIN_DB: f64 = 3.0;
/// ... and it is above this absolute level, dBFS (below it is the
/// converter's own noise).
const BAND_NOISE_MIN_DBFS: f64 = -80.0;

pub(crate) fn advise(a: &Analysis, bands: &Bands) -> Vec<String> {
    let mut hints = Vec::new();
    if let Some(damage) = &a.damaged {
        hints.push(format!(
            "damaged file: analysed the first {:.1} s only ({damage})",
            a.duration_s
        ));
    }
    if a.levels.clipped_percent > CLIP_HINT_PERCENT {
        hints.push(format!(
            "clipping: {} samples ({:.3} %) at or above {:.0} % of full scale; move the phone \
             back or lower the microphone gain",
            a.levels.clipped_samples,
            a.levels.clipped_percent,
            CLIP_LEVEL * 100.0
        ));
    }
    let whole_density = a
        .noise_floor_dbfs
        .map(|db| db - 10.0 * (f64::from(a.rate) / 2.0).log10());
    for profile in Profile::ALL {
        let Some(floor) = bands
            .covers(profile)
            .then(|| bands.floor_dbfs(profile))
            .flatten()
        else {
            continue;
        };
        let density = floor - 10.0 * bands.band_width_hz(profile).max(1.0).log10();
        if floor > BAND_NOISE_MIN_DBFS
            && whole_density.is_some_and(|w| density > w - BAND_DENSITY_MARGIN_DB)
        {
            let (lo, hi) = profile.band_hz();
            hints.push(format!(
                "band noise high: the {} band ({:.1}–{:.1} kHz) sits at {floor:.1} dBFS most of \
                 the time, as loud per Hz as the whole recording; look for a source there \
                 (switch-mode supply, fan, ultrasonic sensor) or a microphone gain set too high",
                profile.name(),
                lo / 1000.0,
                hi / 1000.0
            ));
        }
    }
    for frame in &a.frames {
        let weak = Profile::from_name(frame.profile).map_or(f64::MAX, weak_frame_db);
        if let Some(snr) = frame.snr_db.filter(|&s| s < weak) {
            hints.push(format!(
                "weak frame at {:.2} s ({}, {snr:.1} dB in band): it decoded, but with little \
                 margin; hold the phone closer or reduce the noise in its band",
                frame.start_s, frame.profile
            ));
        }
    }
    if let Some(first) = a.missed.first() {
        hints.push(format!(
            "{} frame(s) heard but not decoded (the first at {:.2} s, {}): the phone is heard \
             and its header decoded, but the rest was lost to noise, echo or clipping; hold \
             the phone closer and steadier, or check for clipping and noise in its band",
            a.missed_count, first.start_s, first.profile
        ));
    }
    if a.frames.is_empty() && a.missed.is_empty() {
        if a.decoder_error.is_some() {
            hints.push(format!(
                "no frame can be heard in a recording at {} Hz: it holds frequencies up to {} Hz, \
                 and the modem's bands reach 17.9 kHz (robust) and 19.5 kHz (fast); record at \
                 44.1 or 48 kHz",
                a.rate,
                a.rate / 2
            ));
        } else if a.levels.peak_dbfs.is_none_or(|p| p < QUIET_PEAK_DBFS) {
            hints.push(
                "no frame heard, and the recording is nearly silent: check that the microphone \
                 is connected and its gain is up"
                    .into(),
            );
        } else {
            hints.push(
                "no frame heard: check that the phone plays the token (volume up, not muted), \
                 hold it within about 10 cm of the microphone, and check that the microphone \
                 hears above 18 kHz (some USB microphones cut off at 16 kHz)"
                    .into(),
            );
        }
    }
    hints
}
