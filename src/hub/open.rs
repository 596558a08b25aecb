//! Choosing the hub's database from a URL.

use std::path::Path;

use super::{Hub, HubError};

/// Opens the hub in `dir` with its state in `database` (`None`: the
/// embedded SQLite file `dir/hub.db`).
pub fn open_database(dir: &Path, database: Option<&str>, _now: u64) -> Result<Hub, HubError> {
    match database {
        None => Hub::open(dir),
        Some(url) => Err(HubError::Backend(format!(
            "unsupported database URL {url:?} (use postgres://… or leave it out for SQLite)"
        ))),
    }
}
