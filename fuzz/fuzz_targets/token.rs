//! The token and credential parsers on arbitrary bytes: an error or a
//! value, never a panic; a value re-encodes to the same bytes (canonical).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sonotap_protocol::token::{Credential, Token};

fuzz_target!(|data: &[u8]| {
    if let Ok(token) = Token::decode(data) {
        assert_eq!(
            token.encode(),
            data,
            "a token decodes from its one encoding"
        );
    }
    if let Ok(credential) = Credential::decode(data) {
        assert_eq!(
            credential.encode().as_slice(),
            data,
            "a credential decodes from its one encoding"
        );
    }
});
