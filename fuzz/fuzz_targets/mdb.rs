//! The MDB adapter's line parser (Qibixx) on arbitrary text: a parsed
//! line or an unknown one, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sonotap_reader::actuator::mdb::{parse_amount, qibixx};

fuzz_target!(|data: &[u8]| {
    let Some((&decimals, text)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(text);
    let _ = qibixx::parse(&text, decimals % 4);
    let _ = parse_amount(&text, decimals % 4);
});
