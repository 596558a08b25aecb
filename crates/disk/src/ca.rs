//! A CA bundle for a client that must trust a hub's own certificate
//! authority (`--ca`), read the same way by the wallet and the reader.

use std::path::Path;

use ureq::tls::{Certificate, PemItem};

/// A CA bundle is at most a few hundred KiB: a FIFO, a device or a larger
/// file is refused unread.
const MAX_CA_BYTES: u64 = 4 << 20;

/// The certificates of the PEM file at `path`, or why not (for the caller's
/// error, which names the path).
pub fn read_ca_bundle(path: &Path) -> Result<Vec<Certificate<'static>>, String> {
    let pem =
        crate::fsutil::read_regular_file_capped(path, MAX_CA_BYTES).map_err(|e| e.to_string())?;
    let certs: Vec<_> = ureq::tls::parse_pem(&pem)
        .filter_map(|item| match item {
            Ok(PemItem::Certificate(c)) => Some(Ok(c)),
            Ok(_) => None,
            Err(e) => Some(Err(e)),
        })
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    if certs.is_empty() {
        return Err("no certificate in the file".into());
    }
    Ok(certs)
}
