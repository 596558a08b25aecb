//! The daemon's config file on arbitrary text: a config or a clear error,
//! never a panic.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use sonotap_reader::daemon::config::Config;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Config::parse(text, Path::new("fuzz.toml"), Path::new("/nonexistent"));
    }
});
