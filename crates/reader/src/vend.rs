//! The reader's side of a vend: [`ReaderCharger`] is the [`Charger`] the
//! vending driver ([`crate::actuator::Vending::session`]) calls, backed by a
//! [`Reader`]; the actuator layer knows only the trait, never the reader or
//! its store.

use std::num::NonZeroU32;

use crate::actuator::{ActuationOutcome, Charger, Denial};
use crate::reader::Reader;
use crate::store::VoidError;

/// A [`Charger`] that charges a token at a reader: the charge and the void
/// are signed, chained records; the vend's success or failure is stored as
/// an actuation beside them.
pub struct ReaderCharger<'a> {
    reader: &'a mut Reader,
    token: &'a [u8],
    device: String,
    clock: &'a dyn Fn() -> u64,
}

impl<'a> ReaderCharger<'a> {
    /// Charges `token` at `reader`, with `clock` giving Unix seconds.
    pub fn new(
        reader: &'a mut Reader,
        token: &'a [u8],
        device: &str,
        clock: &'a dyn Fn() -> u64,
    ) -> Self {
        Self {
            reader,
            token,
            device: device.into(),
            clock,
        }
    }
}

impl Charger for ReaderCharger<'_> {
    fn charge(&mut self, price: u32, _item: u16) -> Result<u64, Denial> {
        let price = NonZeroU32::new(price)
            .ok_or_else(|| Denial::NotCharged("a vend at price 0 is not charged".into()))?;
        let outcome = self
            .reader
            .present_vend(self.token, price, &self.device, (self.clock)())
            .map_err(|e| {
                Denial::NotCharged(format!("the reader's store failed, nothing charged: {e}"))
            })?;
        outcome
            .decision
            .map(|committed| committed.seq)
            .map_err(Denial::Policy)
    }

    fn vended(&mut self, seq: u64, price: u32, item: u16) -> Result<(), String> {
        self.reader
            .confirm_vend(
                seq,
                (self.clock)(),
                &self.device,
                &format!("item {item} at {price}"),
            )
            .map_err(|e| e.to_string())
    }

    fn void(&mut self, seq: u64, reason: &str) -> Result<(), String> {
        void_vend(self.reader, seq, reason, &self.device, (self.clock)()).map_err(|e| e.to_string())
    }
}

/// Voids vend charge `seq` (a signed void record, which also ends the
/// charge's pending state), then stores `vend_failed` beside it. `Ok` only
/// once the void record is committed (or was before: a retry after an
/// answer that was lost); the actuation row is a note, so failing to store
/// it is logged and does not make the void owed again.
pub fn void_vend(
    reader: &mut Reader,
    seq: u64,
    reason: &str,
    device: &str,
    now: u64,
) -> Result<(), VoidError> {
    match reader.void(seq, reason, now) {
        Ok(_) | Err(VoidError::AlreadyVoided { .. }) => {}
        Err(e) => return Err(e),
    }
    if let Err(e) = reader.record_actuation(seq, now, device, ActuationOutcome::VendFailed, reason)
    {
        tracing::warn!(
            seq,
            "charge voided; storing the vend_failed note beside it failed: {e}"
        );
    }
    Ok(())
}
