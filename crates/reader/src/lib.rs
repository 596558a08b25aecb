//! The reader: it checks a token offline ([`reader::Reader::present`]),
//! commits the record to its durable queue ([`store`]) and only then drives
//! the gate or vending machine ([`actuator`]); the [`sync`] uplink carries
//! queued records to the hub, and the [`daemon`] runs it all from audio
//! and camera sources. [`status`] is the operator's read-only view.
//!
//! Layers inside the crate: the device machines and drivers ([`actuator`])
//! depend on nothing else here; [`store`] keeps what they report; the
//! [`reader::Reader`] ties token, policy and store together; [`vend`] adapts
//! the reader to the vending driver's [`actuator::Charger`].

#![deny(missing_docs)]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod actuator;
pub mod backoff;
pub mod beacon;
pub mod clock;
pub mod daemon;
pub mod reader;
pub mod site;
pub mod status;
pub mod status_file;
pub mod store;
pub mod sync;
pub mod vend;
