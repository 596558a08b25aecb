//! Store-and-forward: the reader's side of talking to the hub.
//!
//! [`sonotap_protocol::wire`] holds the signed formats both sides share; [`plan`] is the pure
//! state machine that decides what the uplink does next (upload, back off,
//! fetch the deny list), and [`client`] is the thin loop that carries its
//! decisions out over HTTP and SQLite, sending each request to another of
//! the reader's hubs when the one in use fails as [`failover`] says.

pub mod client;
pub mod export;
pub mod failover;
pub mod plan;
