//! Batch files for sites without a network: `reader export` writes every
//! unsynced record as signed batches; `hub import` feeds each one through
//! the same checks and idempotency as an upload.
//!
//! Layout: `"sonotap/v1/batches\0"` ‖ u32 count ‖ count × (u32 length ‖
//! batch), big-endian, nothing after the last batch. The file adds no
//! signature of its own: each batch carries its reader's.

use crate::reader::{Reader, ReaderError};
use sonotap_protocol::bytes::Cursor;
use sonotap_protocol::wire::{Batch, MAX_BATCH_RECORDS, Totals, WireError};

/// First bytes of a batch file.
pub const FILE_DOMAIN: &[u8] = b"sonotap/v1/batches\0";

const WHAT: &str = "batch file";

/// The largest batch file written or read: 1 GiB, over three million
/// records of under 300 bytes each (a 199-byte token, a 64-byte signature,
/// time, kind and amount), months of a busy gate. `hub import` reads no more than this,
/// whatever the file claims; a reader with more unsynced records needs a
/// network sync (or an export after part of them is synced).
pub const MAX_FILE_BYTES: u64 = 1 << 30;

/// Every unsynced record of `reader`, as batches, with their totals.
pub fn build(reader: &Reader, now: u64) -> Result<(Vec<Batch>, Totals), ReaderError> {
    let mut batches = Vec::new();
    let mut totals = Totals::default();
    let mut after = 0;
    while let Some(batch) = reader.next_batch(after, MAX_BATCH_RECORDS, now)? {
        let t = batch.totals();
        totals.count += t.count;
        totals.charged += t.charged;
        totals.voided += t.voided;
        after = batch.last_seq();
        batches.push(batch);
    }
    Ok((batches, totals))
}

/// Encodes batches into one file.
pub fn encode_file(batches: &[Batch]) -> Result<Vec<u8>, WireError> {
    let mut out = Vec::new();
    out.extend_from_slice(FILE_DOMAIN);
    let count = u32::try_from(batches.len()).map_err(|_| WireError::Invalid {
        what: WHAT,
        detail: "too many batches".into(),
    })?;
    out.extend_from_slice(&count.to_be_bytes());
    for batch in batches {
        let bytes = batch.encode()?;
        let len = u32::try_from(bytes.len()).map_err(|_| WireError::Invalid {
            what: WHAT,
            detail: "batch too large".into(),
        })?;
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&bytes);
        if out.len() as u64 > MAX_FILE_BYTES {
            return Err(WireError::Invalid {
                what: WHAT,
                detail: format!(
                    "more than {MAX_FILE_BYTES} bytes, more than `hub import` reads; sync over the network instead"
                ),
            });
        }
    }
    Ok(out)
}

/// Splits a file into its encoded batches (each is decoded and checked by
/// the hub as if uploaded).
pub fn decode_file(bytes: &[u8]) -> Result<Vec<&[u8]>, WireError> {
    let truncated = |_| WireError::Truncated { what: WHAT };
    let mut c = Cursor::new(bytes);
    match c.take(FILE_DOMAIN.len()) {
        Ok(tag) if tag == FILE_DOMAIN => {}
        _ => return Err(WireError::Domain { what: WHAT }),
    }
    let count = c.u32().map_err(truncated)?;
    let mut out = Vec::new();
    for _ in 0..count {
        let len = c.u32().map_err(truncated)?;
        out.push(c.take(len as usize).map_err(truncated)?);
    }
    match c.remaining() {
        0 => Ok(out),
        extra => Err(WireError::Trailing { what: WHAT, extra }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_framing_refuses_truncation_and_trailing_bytes() {
        let mut file = FILE_DOMAIN.to_vec();
        file.extend_from_slice(&2u32.to_be_bytes());
        for body in [&b"abc"[..], &b"de"[..]] {
            file.extend_from_slice(&(body.len() as u32).to_be_bytes());
            file.extend_from_slice(body);
        }
        assert_eq!(decode_file(&file).unwrap(), [&b"abc"[..], &b"de"[..]]);
        for len in 0..file.len() {
            assert!(decode_file(&file[..len]).is_err(), "length {len}");
        }
        file.push(0);
        assert!(matches!(
            decode_file(&file),
            Err(WireError::Trailing { .. })
        ));
        assert!(matches!(
            decode_file(b"sonotap/v1/batch\0xx"),
            Err(WireError::Domain { .. })
        ));
    }
}
