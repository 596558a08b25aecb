//! What a gate announces to the phones in front of it: who it is and a
//! short-lived challenge, by sound (the modem's beacon) and as a QR code on
//! its display. A wallet that picked it up signs a version-2 token bound to
//! that gate and challenge ([`crate::token::Token::sign_for_gate`]): a
//! recording of it replayed at another gate, or after the challenge's life,
//! is declined.
//!
//! The beacon is not signed (17 bytes keep it short on the air). A forged
//! beacon can only make a phone sign a token no gate will accept, which is
//! what jamming the sound would do too; it can never make a token valid at
//! a gate that did not issue the challenge. `docs/protocol.md` §3a has the
//! layout.

use thiserror::Error;

use crate::bytes::Cursor;
use crate::token::gate_binding;

/// The first byte of a beacon: tells it apart from a token (1 or 2) in a
/// QR code or a frame heard by mistake.
pub const BEACON_KIND: u8 = 0xB1;
/// Encoded length of a beacon.
pub const BEACON_LEN: usize = 17;

/// One beacon: the gate's reader tag, its current challenge, and its clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Beacon {
    /// The gate's reader tag (`token::reader_tag` of its reader id).
    pub reader_tag: u32,
    /// Random bytes the gate drew for this period.
    pub challenge: [u8; 8],
    /// The gate's clock when it sent this beacon, Unix seconds: the phone
    /// stamps its token in the gate's time, so its own clock does not matter.
    pub reader_time: u32,
}

/// Why some bytes are not a beacon.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum BeaconError {
    /// Not exactly 17 bytes.
    #[error("a beacon is exactly {BEACON_LEN} bytes, not {0}")]
    WrongLength(usize),
    /// The first byte is not 0xB1.
    #[error("not a beacon: first byte 0x{0:02x}, a beacon starts with 0xb1")]
    NotABeacon(u8),
}

impl Beacon {
    /// `0xB1 ‖ reader_tag (u32) ‖ challenge (8) ‖ reader_time (u32)`.
    pub fn encode(&self) -> [u8; BEACON_LEN] {
        let mut out = [0; BEACON_LEN];
        out[0] = BEACON_KIND;
        out[1..5].copy_from_slice(&self.reader_tag.to_be_bytes());
        out[5..13].copy_from_slice(&self.challenge);
        out[13..17].copy_from_slice(&self.reader_time.to_be_bytes());
        out
    }

    /// Parses exactly one beacon.
    pub fn decode(bytes: &[u8]) -> Result<Self, BeaconError> {
        if bytes.len() != BEACON_LEN {
            return Err(BeaconError::WrongLength(bytes.len()));
        }
        let mut c = Cursor::new(bytes);
        let read = |c: &mut Cursor<'_>| -> Result<Beacon, crate::bytes::Truncated> {
            let _kind = c.u8()?;
            Ok(Beacon {
                reader_tag: c.u32()?,
                challenge: c.array()?,
                reader_time: c.u32()?,
            })
        };
        if bytes[0] != BEACON_KIND {
            return Err(BeaconError::NotABeacon(bytes[0]));
        }
        read(&mut c).map_err(|_| BeaconError::WrongLength(bytes.len()))
    }

    /// What a token bound to this beacon carries (`token::gate_binding`).
    pub fn binding(&self) -> u32 {
        gate_binding(self.reader_tag, &self.challenge)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Beacon {
        Beacon {
            reader_tag: 0xd2e1_6d26,
            challenge: [1, 2, 3, 4, 5, 6, 7, 8],
            reader_time: 1_800_003_590,
        }
    }

    #[test]
    fn a_beacon_round_trips_through_its_17_bytes() {
        let bytes = sample().encode();
        assert_eq!(bytes[0], BEACON_KIND);
        assert_eq!(Beacon::decode(&bytes), Ok(sample()));
    }

    #[test]
    fn every_other_length_and_a_token_are_refused() {
        let bytes = sample().encode();
        for n in 0..BEACON_LEN {
            assert_eq!(
                Beacon::decode(&bytes[..n]),
                Err(BeaconError::WrongLength(n))
            );
        }
        let mut longer = bytes.to_vec();
        longer.push(0);
        assert_eq!(
            Beacon::decode(&longer),
            Err(BeaconError::WrongLength(BEACON_LEN + 1))
        );
        let mut token_like = bytes;
        token_like[0] = 1;
        assert_eq!(Beacon::decode(&token_like), Err(BeaconError::NotABeacon(1)));
    }

    #[test]
    fn the_binding_changes_with_the_gate_and_with_the_challenge() {
        let b = sample();
        let other_gate = Beacon {
            reader_tag: b.reader_tag + 1,
            ..b
        };
        let other_challenge = Beacon {
            challenge: [9; 8],
            ..b
        };
        assert_ne!(b.binding(), other_gate.binding());
        assert_ne!(b.binding(), other_challenge.binding());
        assert_eq!(
            b.binding(),
            Beacon {
                reader_time: 0,
                ..b
            }
            .binding(),
            "the clock is not part of the binding"
        );
    }
}
