//! The conditions of issue 16's field trial (an independent channel model,
//! where the fast profile collapsed), rebuilt in this simulator: the grid
//! bench's "issue conditions" section and the modem's regression tests use
//! these very channels. Where the issue leaves a detail open (the noise of
//! "almost no noise", the room of the speaker rows, the resonances, the
//! pumping rate), the choice is written next to it.

use super::{Agc, Channel, NoiseKind, Resonance, Room, Speaker};

/// One row (or part of a row) of the issue's table.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldCondition {
    /// The condition as the issue words it.
    pub name: &'static str,
    /// The channel that reproduces it.
    pub channel: Channel,
}

fn room(rt60: f32, drr_db: f32) -> Option<Room> {
    Some(Room { rt60, drr_db })
}

fn quiet_room(clock_ppm: f64) -> Channel {
    // "Almost no noise (30 dB)": white noise, whole band.
    Channel {
        noise: NoiseKind::White,
        snr_db: 30.0,
        room: room(0.4, 10.0),
        clock_ppm,
        ..Channel::default()
    }
}

/// A gate in a station for the speaker rows: the issue names no noise or
/// room there, so station noise at 10 dB in RT60 0.4 s, DRR 10 dB.
fn gate(speaker: Speaker) -> Channel {
    Channel {
        noise: NoiseKind::Station,
        snr_db: 10.0,
        room: room(0.4, 10.0),
        speaker: Some(speaker),
        ..Channel::default()
    }
}

/// Every condition of the issue's table, rows with several settings split.
pub fn issue_16() -> Vec<FieldCondition> {
    let condition = |name, channel| FieldCondition { name, channel };
    vec![
        condition("30 dB, RT60 0.4 s, DRR 10 dB, +50 ppm", quiet_room(50.0)),
        condition("same room, 0 ppm", quiet_room(0.0)),
        condition("same room, +10 ppm", quiet_room(10.0)),
        condition("same room, +20 ppm", quiet_room(20.0)),
        condition(
            "station 10 dB, RT60 0.6 s, DRR 8 dB, +150 ppm",
            Channel {
                noise: NoiseKind::Station,
                snr_db: 10.0,
                room: room(0.6, 8.0),
                clock_ppm: 150.0,
                ..Channel::default()
            },
        ),
        condition(
            "pink 5 dB, RT60 0.8 s, DRR 8 dB, +300 ppm",
            Channel {
                noise: NoiseKind::Pink,
                snr_db: 5.0,
                room: room(0.8, 8.0),
                clock_ppm: 300.0,
                ..Channel::default()
            },
        ),
        condition(
            "white 0 dB, +60 ppm, no room",
            Channel {
                noise: NoiseKind::White,
                snr_db: 0.0,
                clock_ppm: 60.0,
                ..Channel::default()
            },
        ),
        condition(
            "white 2 dB, RT60 0.3 s, DRR 12 dB, -40 ppm",
            Channel {
                noise: NoiseKind::White,
                snr_db: 2.0,
                room: room(0.3, 12.0),
                clock_ppm: -40.0,
                ..Channel::default()
            },
        ),
        condition(
            "station 6 dB, RT60 0.4 s, DRR 10 dB, +100 ppm, gain pumping ±6 dB",
            Channel {
                noise: NoiseKind::Station,
                snr_db: 6.0,
                room: room(0.4, 10.0),
                clock_ppm: 100.0,
                // The reader's microphone AGC pumping at 2 Hz; the random
                // start inside the noise puts the frame at a random phase.
                receiver_agc: Some(Agc::Pumping {
                    depth_db: 6.0,
                    hz: 2.0,
                    phase: 0.0,
                }),
                ..Channel::default()
            },
        ),
        condition(
            "speaker rolling off at 16 kHz",
            gate(Speaker {
                low_pass_hz: 16_000.0,
                resonances: Vec::new(),
            }),
        ),
        condition(
            "speaker with ±6 dB resonances",
            // One peak in each profile's band and a dip in the fast one's.
            gate(Speaker {
                resonances: vec![
                    Resonance {
                        hz: 11_000.0,
                        gain_db: 6.0,
                        q: 2.0,
                    },
                    Resonance {
                        hz: 15_000.0,
                        gain_db: 6.0,
                        q: 4.0,
                    },
                    Resonance {
                        hz: 17_500.0,
                        gain_db: -6.0,
                        q: 3.0,
                    },
                ],
                ..Speaker::default()
            }),
        ),
        condition(
            "44.1 kHz receiver at -200 ppm in RT60 1 s",
            Channel {
                rx_rate: 44_100,
                clock_ppm: -200.0,
                room: room(1.0, 10.0),
                ..gate(Speaker::default())
            },
        ),
    ]
}

/// The condition named `name` (a test's shorthand for one row).
pub fn issue_16_condition(name: &str) -> Option<Channel> {
    issue_16()
        .into_iter()
        .find(|c| c.name == name)
        .map(|c| c.channel)
}
