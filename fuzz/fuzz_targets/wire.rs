//! Every wire format a reader or the hub reads from the network or a file
//! (docs/sync.md): batch, acknowledgement, deny entry, renewal note, time
//! statement, signed request, key set, beacon, site datagram and batch
//! file, on arbitrary bytes: an error or a value, never a panic; a value
//! re-encodes to the same bytes (canonical, nothing left over).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sonotap_protocol::beacon::Beacon;
use sonotap_protocol::site::SiteMessage;
use sonotap_protocol::wire::{
    Ack, Batch, DenyEntry, KeySet, RenewalNote, SignedRequest, TimeStatement,
};
use sonotap_reader::sync::export;

/// `decode`, then `encode` gives the bytes back.
macro_rules! canonical {
    ($data:expr, $ty:ty) => {
        if let Ok(value) = <$ty>::decode($data) {
            let again: Vec<u8> = value.encode().into();
            assert_eq!(again, $data, concat!(stringify!($ty), " is canonical"));
        }
    };
    ($data:expr, $ty:ty, fallible) => {
        if let Ok(value) = <$ty>::decode($data) {
            let again = value.encode().expect("a decoded value encodes");
            assert_eq!(again, $data, concat!(stringify!($ty), " is canonical"));
        }
    };
}

fuzz_target!(|data: &[u8]| {
    canonical!(data, Batch, fallible);
    canonical!(data, Ack, fallible);
    canonical!(data, DenyEntry, fallible);
    canonical!(data, SignedRequest, fallible);
    canonical!(data, KeySet, fallible);
    canonical!(data, RenewalNote);
    canonical!(data, TimeStatement);
    if let Ok(beacon) = Beacon::decode(data) {
        assert_eq!(beacon.encode().as_slice(), data, "Beacon is canonical");
    }
    let _ = SiteMessage::parse(data);
    let _ = export::decode_file(data);
});
