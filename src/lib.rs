//! sonotap: an offline payment reader for subway gates and vending machines.
//!
//! This crate is the `sonotap` command ([`cli`]); the work lives in the
//! workspace's crates (docs/architecture.md): `sonotap-protocol`,
//! `sonotap-disk`, `sonotap-modem`, `sonotap-audio`, `sonotap-qr`,
//! `sonotap-reader`, `sonotap-hub` and `sonotap-wallet`.

#![deny(missing_docs)]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod cli;
