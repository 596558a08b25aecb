//! sonotap's one integration test binary (as ripgrep does): each module
//! drives the real `sonotap` executable or the library against real files.

mod accounts;
mod analyze_cli;
mod audio_capture;
mod cli_flow;
mod crash;
mod daemon;
mod failover;
mod fleet;
mod hardening_clear;
mod hardening_files;
mod hardening_net;
mod hardening_sync;
mod hardening_vend;
mod hardening_wallet;
mod hub_postgres;
mod hub_postgres_restart;
mod hw;
mod layers;
mod modem_cli;
/// The throwaway PostgreSQL cluster the hub crate's tests use.
#[path = "../../crates/hub/src/backend/postgres/test_server.rs"]
mod pg_server;
mod powercut;
mod protocol_vectors;
mod qr_cli;
mod replays;
mod signals;
mod site;
mod status_cli;
#[path = "../support/mod.rs"]
mod support;
mod sync;
mod util;
mod wallet_web;
