//! Big-endian fixed-width reading and writing for the canonical encodings.
//!
//! Every encoding in sonotap is a fixed layout of fixed-width fields, so a
//! cursor that refuses to read past the end, and a final check that nothing
//! is left over, is all a parser needs to be canonical.

/// Reads fixed-width fields from a byte slice, front to back.
pub struct Cursor<'a> {
    buf: &'a [u8],
}

/// The input ended before the layout did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Truncated;

impl<'a> Cursor<'a> {
    /// A cursor at the start of `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    /// The next `N` bytes.
    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], Truncated> {
        let (head, rest) = self.buf.split_first_chunk::<N>().ok_or(Truncated)?;
        self.buf = rest;
        Ok(*head)
    }

    /// The next byte.
    pub fn u8(&mut self) -> Result<u8, Truncated> {
        Ok(self.array::<1>()?[0])
    }

    /// The next two bytes, big-endian.
    pub fn u16(&mut self) -> Result<u16, Truncated> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    /// The next four bytes, big-endian.
    pub fn u32(&mut self) -> Result<u32, Truncated> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    /// The next eight bytes, big-endian.
    pub fn u64(&mut self) -> Result<u64, Truncated> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    /// The next `n` bytes.
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], Truncated> {
        if n > self.buf.len() {
            return Err(Truncated);
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    /// A one-byte length followed by that many bytes.
    pub fn short_bytes(&mut self) -> Result<&'a [u8], Truncated> {
        let n = self.u8()?;
        self.take(usize::from(n))
    }

    /// Bytes not consumed yet; a canonical parser requires zero.
    pub fn remaining(&self) -> usize {
        self.buf.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_big_endian_and_stops_at_the_end() {
        let mut c = Cursor::new(&[1, 0, 2, 0, 0, 0, 3, 9]);
        assert_eq!(c.u8(), Ok(1));
        assert_eq!(c.u16(), Ok(2));
        assert_eq!(c.u32(), Ok(3));
        assert_eq!(c.remaining(), 1);
        assert_eq!(c.u16(), Err(Truncated));
        assert_eq!(c.u8(), Ok(9));
        assert_eq!(c.u8(), Err(Truncated));
    }
}
