//! The formats every sonotap party shares, as pure functions over bytes:
//! payment [`token`]s and credentials, a gate's [`beacon`], hash-chained
//! [`record`]s, what the readers of a site tell each other ([`site`]), the
//! offline [`policy`], amounts in [`currency`], and the signed messages
//! between reader and hub ([`wire`], [`api`]). No I/O and no async runtime:
//! a phone or hub written in Rust depends on this crate alone.
//! `docs/protocol.md` and `docs/sync.md` are the specification.

#![deny(missing_docs)]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod api;
pub mod beacon;
pub mod bytes;
pub mod currency;
pub mod policy;
pub mod record;
pub mod site;
pub mod token;
pub mod wire;

/// Fixed keys, credentials and tokens for tests (feature `testkit`).
#[cfg(any(test, feature = "testkit"))]
pub mod testkit;
