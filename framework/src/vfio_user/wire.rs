//! Bounds-checked field access in host byte order (the protocol is host-endian).

use super::error::ProtocolError;

/// Reads fields front to back; every read is checked against the end of the buffer.
pub(crate) struct Reader<'a> {
    what: &'static str,
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// A reader over `buf`; `what` names the structure in errors.
    pub(crate) fn new(what: &'static str, buf: &'a [u8]) -> Self {
        Self { what, buf, pos: 0 }
    }

    /// The next `n` bytes.
    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], ProtocolError> {
        let available = self.buf.len();
        let end = self.pos.saturating_add(n);
        match self.buf.get(self.pos..end) {
            Some(bytes) => {
                self.pos = end;
                Ok(bytes)
            }
            None => Err(ProtocolError::Truncated {
                what: self.what,
                needed: end,
                available,
            }),
        }
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], ProtocolError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    /// A u16.
    pub(crate) fn u16(&mut self) -> Result<u16, ProtocolError> {
        self.array().map(u16::from_ne_bytes)
    }

    /// A u32.
    pub(crate) fn u32(&mut self) -> Result<u32, ProtocolError> {
        self.array().map(u32::from_ne_bytes)
    }

    /// A u64.
    pub(crate) fn u64(&mut self) -> Result<u64, ProtocolError> {
        self.array().map(u64::from_ne_bytes)
    }

    /// Eight raw bytes.
    pub(crate) fn bytes8(&mut self) -> Result<[u8; 8], ProtocolError> {
        self.array()
    }

    /// Everything not read yet.
    pub(crate) fn rest(&mut self) -> &'a [u8] {
        let rest = self.buf.get(self.pos..).unwrap_or_default();
        self.pos = self.buf.len();
        rest
    }

    /// Bytes not read yet.
    pub(crate) fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    /// The data announced by a `count` field: exactly `count` bytes must remain, and `count`
    /// must not exceed `limit`.
    pub(crate) fn counted_data(
        &mut self,
        count: u64,
        limit: u64,
    ) -> Result<&'a [u8], ProtocolError> {
        if count > limit {
            return Err(ProtocolError::too_large(self.what, count, limit));
        }
        let remaining = self.remaining();
        if count != remaining as u64 {
            return Err(ProtocolError::invalid(
                self.what,
                format!("count {count} but {remaining} data bytes"),
            ));
        }
        Ok(self.rest())
    }
}

/// Appends a u16.
pub(crate) fn put_u16(out: &mut Vec<u8>, value: u16) {
    out.extend_from_slice(&value.to_ne_bytes());
}

/// Appends a u32.
pub(crate) fn put_u32(out: &mut Vec<u8>, value: u32) {
    out.extend_from_slice(&value.to_ne_bytes());
}

/// Appends a u64.
pub(crate) fn put_u64(out: &mut Vec<u8>, value: u64) {
    out.extend_from_slice(&value.to_ne_bytes());
}

/// A length as the u32 of a count field (lengths are bounded by the message size, a u32).
pub(crate) fn len_u32(len: usize) -> u32 {
    u32::try_from(len).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_are_bounded() {
        let bytes = [1u8, 0, 2, 0, 0, 0];
        let mut r = Reader::new("T", &bytes);
        assert_eq!(r.u16().unwrap(), u16::from_ne_bytes([1, 0]));
        assert_eq!(r.u32().unwrap(), u32::from_ne_bytes([2, 0, 0, 0]));
        let err = r.u16().unwrap_err();
        assert_eq!(
            err,
            ProtocolError::Truncated {
                what: "T",
                needed: 8,
                available: 6
            }
        );
        assert_eq!(r.take(usize::MAX).unwrap_err().errno(), err.errno());
    }

    #[test]
    fn counted_data_checks_limit_and_length() {
        let bytes = [0u8; 4];
        assert!(Reader::new("T", &bytes).counted_data(4, 4).is_ok());
        assert!(matches!(
            Reader::new("T", &bytes).counted_data(4, 3),
            Err(ProtocolError::TooLarge { .. })
        ));
        assert!(matches!(
            Reader::new("T", &bytes).counted_data(3, 8),
            Err(ProtocolError::Invalid { .. })
        ));
    }
}
