//! Everything sonotap keeps on disk, kept one way: private files and
//! directories ([`fsutil`]: modes, size caps, atomic replacement), key
//! files ([`keys`]), and SQLite databases opened with the durable pragmas
//! and schema checks ([`sqlite`]).

#![deny(missing_docs)]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

#[cfg(feature = "ca")]
pub mod ca;
pub mod fsutil;
pub mod keys;
pub mod sqlite;
