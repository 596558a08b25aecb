//! sonotap: an offline payment reader for subway gates and vending machines.
//!
//! A phone presents a signed payment token (by sound or QR code); the reader
//! checks it offline against trusted issuer keys, its deny list and each
//! wallet's counters and limits, commits a signed, hash-chained record to
//! SQLite, and only then actuates. Modules are split by domain, with pure
//! logic ([`token`], [`policy`], [`record`]) apart from I/O ([`store`],
//! [`keys`], [`reader`], [`wallet`], [`hub`]).

#![deny(missing_docs)]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod actuator;
pub mod analyze;
pub mod audio;
pub mod cli;
pub mod currency;
pub mod daemon;
pub mod fsutil;
pub mod hub;
pub mod keys;
pub mod modem;
pub mod policy;
pub mod qr;
pub mod reader;
pub mod record;
pub mod sim;
pub mod status;
pub mod store;
pub mod sync;
pub mod token;
pub mod wallet;

#[cfg(test)]
mod testkit;
