//! End-to-end tests: encoder → simulated channel (`crate::sim`, with the
//! phone speaker's band limits) → streaming decoder, with fixed seeds. Each
//! runs a handful of trials; the statistics are the benchmark's
//! (`cargo bench --bench modem`).

use rand::{RngExt, SeedableRng};
use rand_pcg::Pcg64Mcg;

use super::*;
use crate::sim::{self, Channel, NoiseKind, Room};

/// A near-noiseless channel to build conditions from.
fn clean() -> Channel {
    Channel {
        snr_db: 60.0,
        lead_secs: (0.0, 0.3),
        ..Channel::default()
    }
}

/// Sends `payload` through `ch`, feeds the capture in random-size chunks,
/// returns everything the decoder emitted.
fn run(profile: Profile, payload: &[u8], ch: &Channel, seed: u64) -> Vec<Reception> {
    run_timed(profile, payload, ch, seed).0
}

/// [`run`], also returning the decoder's time and the capture's duration.
fn run_timed(
    profile: Profile,
    payload: &[u8],
    ch: &Channel,
    seed: u64,
) -> (Vec<Reception>, std::time::Duration, f64) {
    let tx = encode(payload, profile, 48_000).expect("encode");
    let rx = sim::transmit(&tx, 48_000, ch, seed).samples;
    let started = std::time::Instant::now();
    let mut dec = Decoder::new(ch.rx_rate).expect("decoder");
    let mut rng = Pcg64Mcg::seed_from_u64(seed ^ 0xabc);
    let mut out = Vec::new();
    let mut at = 0;
    while at < rx.len() {
        let end = (at + rng.random_range(1..=9_000)).min(rx.len());
        out.extend(dec.push_receptions(&rx[at..end]));
        at = end;
    }
    out.extend(dec.finish());
    (out, started.elapsed(), rx.len() as f64 / ch.rx_rate as f64)
}

fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = Pcg64Mcg::seed_from_u64(seed);
    (0..len).map(|_| rng.random::<u8>()).collect()
}

fn token(seed: u64) -> Vec<u8> {
    bytes(seed, 199)
}

fn assert_exactly(profile: Profile, ch: &Channel, seeds: std::ops::Range<u64>) {
    for seed in seeds {
        let payload = token(seed);
        let got = run(profile, &payload, ch, seed);
        assert_eq!(
            got.len(),
            1,
            "{profile:?} seed {seed}: {} receptions under {ch:?}",
            got.len()
        );
        assert_eq!(got[0].payload, payload);
        assert_eq!(got[0].profile, profile);
    }
}

#[test]
fn clean_round_trip_both_profiles_and_lengths() {
    for profile in Profile::ALL {
        for (seed, len) in [(1u64, 1usize), (2, 17), (3, 199), (4, 256)] {
            let payload = bytes(seed, len);
            let got = run(profile, &payload, &clean(), seed);
            assert_eq!(got.len(), 1, "{profile:?} len {len}");
            assert_eq!(got[0].payload, payload);
        }
    }
}

#[test]
fn fast_with_a_44k1_receiver_and_300_ppm_either_way() {
    for (ppm, seed) in [(300.0, 10u64), (-300.0, 11)] {
        let ch = Channel {
            snr_db: 10.0,
            noise: NoiseKind::Station,
            clock_ppm: ppm,
            rx_rate: 44_100,
            ..clean()
        };
        assert_exactly(Profile::Fast, &ch, seed..seed + 1);
    }
}

#[test]
fn fast_in_station_noise_and_a_small_room() {
    let ch = Channel {
        noise: NoiseKind::Station,
        snr_db: 5.0,
        room: Some(Room {
            rt60: 0.4,
            drr_db: 6.0,
        }),
        ..clean()
    };
    assert_exactly(Profile::Fast, &ch, 20..22);
}

#[test]
fn robust_in_loud_station_noise() {
    let ch = Channel {
        noise: NoiseKind::Station,
        snr_db: -10.0,
        clock_ppm: 200.0,
        rx_rate: 44_100,
        ..clean()
    };
    assert_exactly(Profile::Robust, &ch, 30..31);
}

#[test]
fn robust_in_a_hall() {
    let ch = Channel {
        noise: NoiseKind::Station,
        snr_db: 5.0,
        room: Some(Room {
            rt60: 2.0,
            drr_db: 0.0,
        }),
        ..clean()
    };
    assert_exactly(Profile::Robust, &ch, 40..41);
}

#[test]
fn back_to_back_frames_and_repeats() {
    let a = token(50);
    let b = token(51);
    let mut tx = encode(&a, Profile::Fast, 48_000).expect("a");
    tx.extend(vec![0.0; 4_800]);
    tx.extend(encode(&b, Profile::Robust, 48_000).expect("b"));
    tx.extend(vec![0.0; 4_800]);
    // `a` again: a repeat within the dedup window is not emitted twice.
    tx.extend(encode(&a, Profile::Fast, 48_000).expect("a again"));
    let ch = Channel {
        snr_db: 20.0,
        ..clean()
    };
    let rx = sim::transmit(&tx, 48_000, &ch, 52).samples;
    let mut dec = Decoder::new(48_000).expect("decoder");
    let mut got = dec.push(&rx);
    got.extend(dec.finish().into_iter().map(|r| r.payload));
    assert_eq!(got, vec![a, b]);
}

#[test]
fn noise_alone_never_yields_a_payload_and_memory_stays_bounded() {
    let mut rng = Pcg64Mcg::seed_from_u64(60);
    let mut dec = Decoder::new(44_100).expect("decoder");
    let mut max_buffer = 0;
    for second in 0..12 {
        let kind = if second % 2 == 0 {
            NoiseKind::Station
        } else {
            NoiseKind::White
        };
        let n = sim::noise::generate(kind, 44_100, 44_100, &mut rng);
        assert!(dec.push(&n).is_empty());
        max_buffer = max_buffer.max(dec.buffered());
    }
    assert!(dec.finish().is_empty());
    let bound = (decoder::MAX_BUFFER_SECONDS * 48_000.0) as usize + 48_000;
    assert!(max_buffer <= bound, "{max_buffer}");
}

#[test]
fn payload_arrives_within_100_ms_of_the_frame_end() {
    for profile in Profile::ALL {
        let payload = token(80);
        let tx = encode(&payload, profile, 48_000).expect("encode");
        let ch = Channel {
            snr_db: 20.0,
            ..clean()
        };
        let rx = sim::transmit(&tx, 48_000, &ch, 81);
        let frame_end = rx.signal_end;
        let rx = rx.samples;
        let mut dec = Decoder::new(48_000).expect("decoder");
        let mut fed = 0;
        let mut arrived = None;
        for chunk in rx.chunks(480) {
            fed += chunk.len();
            if !dec.push(chunk).is_empty() {
                arrived = Some(fed);
                break;
            }
        }
        let arrived = arrived.expect("decoded");
        let late = arrived.saturating_sub(frame_end) as f64 / 48_000.0;
        assert!(late <= 0.1, "{profile:?}: {late:.3} s after the frame");
    }
}

#[test]
fn any_sender_rate_to_any_receiver_rate() {
    let payload = token(90);
    for (tx_rate, rx_rate) in [(44_100u32, 48_000u32), (48_000, 96_000), (96_000, 44_100)] {
        for profile in Profile::ALL {
            let tx = encode(&payload, profile, tx_rate).expect("encode");
            let rx = resample::resample(&tx, tx_rate as f64, rx_rate as f64);
            let mut dec = Decoder::new(rx_rate).expect("decoder");
            let mut got = dec.push(&rx);
            got.extend(dec.finish().into_iter().map(|r| r.payload));
            assert_eq!(
                got,
                vec![payload.clone()],
                "{profile:?} {tx_rate} -> {rx_rate}"
            );
        }
    }
}

#[test]
fn decoder_can_move_to_a_capture_thread() {
    fn send<T: Send>() {}
    send::<Decoder>();
}

#[test]
fn hostile_input_does_not_panic() {
    let mut dec = Decoder::new(48_000).expect("decoder");
    assert!(dec.push(&[]).is_empty());
    assert!(dec.push(&[f32::NAN; 10_000]).is_empty());
    assert!(
        dec.push(&[f32::INFINITY, f32::NEG_INFINITY, 1e30])
            .is_empty()
    );
    assert!(dec.push(&vec![0.0; 100_000]).is_empty());
    // Hard-clipped square wave.
    let square: Vec<f32> = (0..50_000)
        .map(|i| if i / 7 % 2 == 0 { 1.0 } else { -1.0 })
        .collect();
    assert!(dec.push(&square).is_empty());
    assert!(Decoder::new(0).is_err());
    assert!(Decoder::new(16_000).is_err());
    assert!(Decoder::with_profiles(16_000, &[]).is_ok());
}

#[test]
fn clipped_and_quiet_signals_still_decode() {
    let payload = token(70);
    let tx = encode(&payload, Profile::Fast, 48_000).expect("encode");
    for gain in [0.001f32, 4.0] {
        let rx: Vec<f32> = tx.iter().map(|v| (v * gain).clamp(-1.0, 1.0)).collect();
        let mut dec = Decoder::new(48_000).expect("decoder");
        let mut got = dec.push(&rx);
        got.extend(dec.finish().into_iter().map(|r| r.payload));
        assert_eq!(got, vec![payload.clone()], "gain {gain}");
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]

    /// Garbage of every kind, in chunks of every size, at any rate the
    /// decoder takes: never a panic, never a payload.
    #[test]
    fn random_garbage_in_random_chunks_never_panics_or_yields_a_payload(
        rate in proptest::sample::select(vec![38_000u32, 44_100, 48_000, 96_000]),
        values in proptest::collection::vec(
            proptest::prop_oneof![
                proptest::num::f32::ANY,
                -1.0f32..1.0,
                proptest::strategy::Just(0.0f32),
            ],
            0..60_000,
        ),
        cuts in proptest::collection::vec(1usize..5_000, 1..40),
    ) {
        let mut decoder = Decoder::for_rate(rate).expect("rate the decoder takes");
        let mut at = 0;
        let mut emitted = 0;
        for cut in cuts.iter().cycle() {
            if at >= values.len() {
                break;
            }
            let end = (at + cut).min(values.len());
            emitted += decoder.push(&values[at..end]).len();
            at = end;
        }
        emitted += decoder.finish().len();
        proptest::prop_assert_eq!(emitted, 0);
    }
}

/// `payload` sent in `profile` with silence around it and a loud burst of
/// `amplitude` over `burst` (samples into the frame; clamped to its end);
/// returns the frame and the decoder after it has heard everything, and
/// checks that nothing came out.
fn with_body_destroyed(
    profile: Profile,
    payload: &[u8],
    burst: std::ops::Range<usize>,
    amplitude: f32,
    seed: u64,
) -> (Vec<f32>, Decoder) {
    let frame = encode(payload, profile, INTERNAL_RATE).expect("encode");
    let mut capture = vec![0.0f32; LEAD];
    capture.extend_from_slice(&frame);
    capture.extend(std::iter::repeat_n(0.0, LEAD));
    let mut rng = Pcg64Mcg::seed_from_u64(seed);
    for s in &mut capture[LEAD + burst.start..LEAD + burst.end.min(frame.len())] {
        *s += rng.random_range(-amplitude..amplitude);
    }
    let mut decoder = Decoder::new(INTERNAL_RATE).expect("decoder");
    let mut heard = decoder.push_receptions(&capture);
    heard.extend(decoder.finish());
    assert!(heard.is_empty(), "{heard:?}");
    (frame, decoder)
}

/// Silence before and after the frames of the destroyed-body tests.
const LEAD: usize = 14_400;

/// The decoder reported exactly one missed frame: `payload`'s, in `profile`,
/// where it started.
fn assert_missed_once(decoder: &mut Decoder, profile: Profile, payload: &[u8]) {
    let missed = decoder.take_missed();
    assert_eq!(missed.len(), 1, "{missed:?}");
    assert_eq!(missed[0].profile, profile);
    assert_eq!(missed[0].len, payload.len());
    assert!(missed[0].start.abs_diff(LEAD as u64) < 10, "{missed:?}");
    assert!(decoder.take_missed().is_empty(), "taken once");
}

#[test]
fn a_frame_whose_body_is_destroyed_is_reported_missed_not_emitted() {
    let payload = token(41);
    // Chirp (2048), reference symbol (4352), the first data symbol (which
    // holds the header) and the closing chirp stay clean; a loud burst
    // covers the other two data symbols.
    let burst = 2048 + 2 * 4352 + 256..2048 + 4 * 4352;
    let (frame, mut decoder) = with_body_destroyed(Profile::Fast, &payload, burst, 1.0, 3);
    assert_missed_once(&mut decoder, Profile::Fast, &payload);

    let mut clean_decoder = Decoder::new(INTERNAL_RATE).expect("decoder");
    let mut clean = vec![0.0f32; LEAD];
    clean.extend_from_slice(&frame);
    clean.extend(std::iter::repeat_n(0.0, LEAD));
    let mut heard = clean_decoder.push_receptions(&clean);
    heard.extend(clean_decoder.finish());
    assert_eq!(heard.len(), 1);
    assert!(clean_decoder.take_missed().is_empty());
}

#[test]
fn version_1_fast_frames_still_decode_once() {
    let ch = Channel {
        noise: NoiseKind::Station,
        snr_db: 10.0,
        room: Some(Room {
            rt60: 0.3,
            drr_db: 12.0,
        }),
        ..clean()
    };
    for seed in 0..3 {
        let payload = token(seed);
        let tx = crate::encoder::encode_format(&payload, crate::profile::Format::FastV1, 48_000)
            .expect("encode v1");
        let rx = sim::transmit(&tx, 48_000, &ch, seed).samples;
        let mut dec = Decoder::new(48_000).expect("decoder");
        let mut got = dec.push_receptions(&rx);
        got.extend(dec.finish());
        assert_eq!(got.len(), 1, "seed {seed}: {got:?}");
        assert_eq!(got[0].payload, payload);
        assert_eq!(got[0].profile, Profile::Fast);
    }
}

// Issue 16: the field trial's conditions where the fast profile failed,
// each in this simulator (`sim::field`, the grid bench's "issue
// conditions"), six seeds each.

/// The issue's condition `name`, six seeds, each decoded exactly once.
fn assert_issue_16(profile: Profile, name: &str, first_seed: u64) {
    let ch = sim::field::issue_16_condition(name).expect("a condition of issue 16");
    assert_exactly(profile, &ch, first_seed..first_seed + 6);
}

#[test]
fn fast_at_30_db_in_rt60_0_4_s_drr_10_db_with_plus_50_ppm() {
    assert_issue_16(
        Profile::Fast,
        "30 dB, RT60 0.4 s, DRR 10 dB, +50 ppm",
        1_600,
    );
}

#[test]
fn fast_in_station_10_db_rt60_0_6_s_drr_8_db_at_plus_150_ppm() {
    assert_issue_16(
        Profile::Fast,
        "station 10 dB, RT60 0.6 s, DRR 8 dB, +150 ppm",
        1_610,
    );
}

#[test]
fn fast_in_pink_5_db_rt60_0_8_s_drr_8_db_at_plus_300_ppm() {
    assert_issue_16(
        Profile::Fast,
        "pink 5 dB, RT60 0.8 s, DRR 8 dB, +300 ppm",
        1_620,
    );
}

#[test]
fn fast_in_white_0_db_at_plus_60_ppm() {
    assert_issue_16(Profile::Fast, "white 0 dB, +60 ppm, no room", 1_630);
}

#[test]
fn fast_in_white_2_db_rt60_0_3_s_drr_12_db_at_minus_40_ppm() {
    assert_issue_16(
        Profile::Fast,
        "white 2 dB, RT60 0.3 s, DRR 12 dB, -40 ppm",
        1_640,
    );
}

#[test]
fn fast_in_station_6_db_rt60_0_4_s_drr_10_db_plus_100_ppm_with_gain_pumping() {
    assert_issue_16(
        Profile::Fast,
        "station 6 dB, RT60 0.4 s, DRR 10 dB, +100 ppm, gain pumping ±6 dB",
        1_650,
    );
}

#[test]
fn fast_through_a_speaker_rolling_off_at_16_khz() {
    assert_issue_16(Profile::Fast, "speaker rolling off at 16 kHz", 1_660);
}

#[test]
fn fast_through_a_speaker_with_6_db_resonances() {
    assert_issue_16(Profile::Fast, "speaker with ±6 dB resonances", 1_670);
}

#[test]
fn fast_to_a_44k1_receiver_at_minus_200_ppm_in_rt60_1_s() {
    assert_issue_16(
        Profile::Fast,
        "44.1 kHz receiver at -200 ppm in RT60 1 s",
        1_680,
    );
}

#[test]
fn every_issue_16_condition_has_a_channel() {
    assert_eq!(sim::field::issue_16().len(), 12);
}

#[test]
fn a_chirp_where_a_shorter_frame_would_end_does_not_lose_the_frame() {
    // A chirp-like sound (an echo, a second phone) exactly where a frame of
    // one data symbol would put its closing chirp: the header then announces
    // three symbols, and the decoder must look further, not give up.
    let payload = token(77);
    let frame = encode(&payload, Profile::Fast, INTERNAL_RATE).expect("encode");
    let p = crate::profile::Format::FastV2.params();
    let chirp = crate::preamble::chirp(&p);
    let lead = 9_600;
    let mut capture = vec![0.0f32; lead];
    capture.extend_from_slice(&frame);
    capture.extend(std::iter::repeat_n(0.0, lead));
    let level = frame[..2048].iter().fold(0f32, |m, v| m.max(v.abs()));
    let fake = lead + p.chirp_len + 2 * p.symbol_len();
    for (s, c) in capture[fake..].iter_mut().zip(&chirp) {
        *s += 2.0 * level * c;
    }
    let mut decoder = Decoder::new(INTERNAL_RATE).expect("decoder");
    let mut heard = decoder.push_receptions(&capture);
    heard.extend(decoder.finish());
    assert_eq!(heard.len(), 1, "{heard:?}");
    assert_eq!(heard[0].payload, payload);
}

#[test]
fn version_1_robust_frames_still_decode_once() {
    let ch = Channel {
        noise: NoiseKind::Station,
        snr_db: 0.0,
        room: Some(Room {
            rt60: 1.0,
            drr_db: 8.0,
        }),
        ..clean()
    };
    for (seed, rate) in [(0, 48_000), (1, 44_100)] {
        let payload = token(seed);
        let tx = crate::encoder::encode_format(&payload, crate::profile::Format::RobustV1, 48_000)
            .expect("encode v1");
        let rx = sim::transmit(
            &tx,
            48_000,
            &Channel {
                rx_rate: rate,
                ..ch.clone()
            },
            seed,
        )
        .samples;
        let mut dec = Decoder::new(rate).expect("decoder");
        let mut got = dec.push_receptions(&rx);
        got.extend(dec.finish());
        assert_eq!(got.len(), 1, "seed {seed}: {got:?}");
        assert_eq!(got[0].payload, payload);
        assert_eq!(got[0].profile, Profile::Robust);
        assert!(
            dec.take_missed().is_empty(),
            "the v2 detector took no v1 frame for its own"
        );
    }
}

// Issue 16, robust: the grid's cells where version 1 fell short, DRR 0 dB
// in a hall with a phone's impairments (docs/modem.md §5.1).

/// A hall at DRR 0 dB, `rt60` long, heard through a speaker rolling off at
/// 16.3 kHz by a 44.1 kHz receiver, the sender's clock `ppm` off.
fn hall_at_drr_0(noise: NoiseKind, snr_db: f32, rt60: f32, ppm: f64) -> Channel {
    Channel {
        noise,
        snr_db,
        room: Some(Room { rt60, drr_db: 0.0 }),
        clock_ppm: ppm,
        rx_rate: 44_100,
        speaker: Some(sim::Speaker {
            low_pass_hz: 16_300.0,
            resonances: Vec::new(),
        }),
        ..clean()
    }
}

#[test]
fn robust_in_white_0_db_in_a_hall_at_drr_0_db_with_a_phone_at_minus_300_ppm() {
    // Version 1 read 49 of 60 such frames; the clock alone cost version 2
    // a fifth of them before it measured the tones' drift.
    let ch = hall_at_drr_0(NoiseKind::White, 0.0, 1.2, -300.0);
    assert_exactly(Profile::Robust, &ch, 160..164);
}

#[test]
fn robust_in_station_minus_10_db_in_a_2_s_hall_at_drr_0_db_at_plus_300_ppm() {
    let ch = hall_at_drr_0(NoiseKind::Station, -10.0, 2.0, 300.0);
    assert_exactly(Profile::Robust, &ch, 170..174);
}

#[test]
fn robust_in_a_2_s_hall_at_drr_minus_3_db_where_the_last_tone_rings_as_loud_as_this_one() {
    // Almost no noise: only the echo of earlier symbols stands in the way
    // (version 1 read about 80 % of these; version 2 counts each tone's
    // predicted echo as noise on it).
    let ch = Channel {
        room: Some(Room {
            rt60: 2.0,
            drr_db: -3.0,
        }),
        ..clean()
    };
    assert_exactly(Profile::Robust, &ch, 180..184);
}

#[test]
fn a_robust_frame_whose_body_is_destroyed_is_reported_missed_not_emitted() {
    let payload = token(43);
    // The chirp (4096) and the two header symbols (2304 each) stay clean; a
    // loud burst covers the rest of the frame.
    let (_, mut decoder) = with_body_destroyed(
        Profile::Robust,
        &payload,
        4096 + 2 * 2304 + 256..usize::MAX,
        2.0,
        4,
    );
    assert_missed_once(&mut decoder, Profile::Robust, &payload);
}
