//! The device-data stream of an mlx function, as Linux's mlx5 vfio driver frames it: records
//! `{le64 size, le32 flags (bit 0 optional), le32 tag}` followed by `size` bytes. FW_DATA
//! (tag 0) carries the firmware's image bytes, one record per save (a chunk in chunk mode);
//! STOP_COPY_SIZE (tag 1, optional) carries the expected stop-copy size (le64) and comes
//! first. A reader skips unknown optional records and fails on unknown mandatory ones.

use thiserror::Error;

/// Bytes of a record header.
pub const RECORD_HEADER_BYTES: usize = 16;
/// Record flag: the record may be skipped by a reader that does not know its tag.
pub const FLAG_OPTIONAL: u32 = 1;
/// Tag: firmware image bytes.
pub const TAG_FW_DATA: u32 = 0;
/// Tag: the expected stop-copy size.
pub const TAG_STOP_COPY_SIZE: u32 = 1;
/// Largest FW_DATA payload a reader takes (one chunk).
pub const MAX_FW_DATA: u64 = crate::hw::ifc::MAX_CHUNK_SIZE as u64;

/// A stream the reader refuses.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RecordError {
    /// A FW_DATA record larger than a chunk.
    #[error("FW_DATA record of {0} bytes exceeds the {MAX_FW_DATA}-byte chunk")]
    TooLarge(u64),
    /// A STOP_COPY_SIZE record whose payload is not 8 bytes.
    #[error("STOP_COPY_SIZE record of {0} bytes")]
    BadStopCopySize(u64),
    /// A mandatory record of a tag this reader does not know.
    #[error("unknown mandatory record tag {0}")]
    UnknownTag(u32),
    /// Flags other than OPTIONAL.
    #[error("record flags {0:#x}")]
    BadFlags(u32),
}

/// Encodes a record header.
pub fn header(tag: u32, flags: u32, size: u64) -> [u8; RECORD_HEADER_BYTES] {
    let mut h = [0u8; RECORD_HEADER_BYTES];
    h[..8].copy_from_slice(&size.to_le_bytes());
    h[8..12].copy_from_slice(&flags.to_le_bytes());
    h[12..].copy_from_slice(&tag.to_le_bytes());
    h
}

/// A STOP_COPY_SIZE record.
pub fn stop_copy_size(size: u64) -> Vec<u8> {
    let mut record = header(TAG_STOP_COPY_SIZE, FLAG_OPTIONAL, 8).to_vec();
    record.extend_from_slice(&size.to_le_bytes());
    record
}

/// What a reader found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// The expected stop-copy size.
    StopCopySize(u64),
    /// A whole FW_DATA payload.
    FwData(Vec<u8>),
}

#[derive(Debug, Clone, Copy)]
enum Body {
    Keep { tag: u32, left: u64 },
    Skip { left: u64 },
}

/// Reads records as their bytes arrive.
#[derive(Debug, Default)]
pub struct RecordReader {
    header: Vec<u8>,
    body: Option<Body>,
    payload: Vec<u8>,
}

impl RecordReader {
    /// Takes the next bytes, handing each complete record to `found`.
    pub fn feed<E: From<RecordError>>(
        &mut self,
        mut data: &[u8],
        mut found: impl FnMut(Record) -> Result<(), E>,
    ) -> Result<(), E> {
        loop {
            match self.body {
                None => {
                    if data.is_empty() {
                        return Ok(());
                    }
                    let n = (RECORD_HEADER_BYTES - self.header.len()).min(data.len());
                    self.header.extend_from_slice(&data[..n]);
                    data = &data[n..];
                    if self.header.len() == RECORD_HEADER_BYTES {
                        let body = self.start()?;
                        if let Body::Keep { left, .. } = body {
                            // Bounded by start(): a chunk at most.
                            self.payload.reserve(left as usize);
                        }
                        self.body = Some(body);
                        self.header.clear();
                    }
                }
                Some(Body::Skip { left }) => {
                    let n = left.min(data.len() as u64);
                    data = &data[n as usize..];
                    self.body = (n < left).then_some(Body::Skip { left: left - n });
                    if self.body.is_some() {
                        return Ok(());
                    }
                }
                Some(Body::Keep { tag, left }) => {
                    let n = left.min(data.len() as u64);
                    self.payload.extend_from_slice(&data[..n as usize]);
                    data = &data[n as usize..];
                    if n < left {
                        self.body = Some(Body::Keep {
                            tag,
                            left: left - n,
                        });
                        return Ok(());
                    }
                    self.body = None;
                    let payload = std::mem::take(&mut self.payload);
                    if tag == TAG_FW_DATA {
                        found(Record::FwData(payload))?;
                    } else {
                        let mut size = [0u8; 8];
                        size.copy_from_slice(&payload);
                        found(Record::StopCopySize(u64::from_le_bytes(size)))?;
                    }
                }
            }
        }
    }

    fn start(&self) -> Result<Body, RecordError> {
        let h = &self.header;
        let mut size = [0u8; 8];
        size.copy_from_slice(&h[..8]);
        let size = u64::from_le_bytes(size);
        let flags = u32::from_le_bytes([h[8], h[9], h[10], h[11]]);
        let tag = u32::from_le_bytes([h[12], h[13], h[14], h[15]]);
        if flags & !FLAG_OPTIONAL != 0 {
            return Err(RecordError::BadFlags(flags));
        }
        match tag {
            TAG_FW_DATA if size > MAX_FW_DATA => Err(RecordError::TooLarge(size)),
            TAG_STOP_COPY_SIZE if size != 8 => Err(RecordError::BadStopCopySize(size)),
            TAG_FW_DATA | TAG_STOP_COPY_SIZE => Ok(Body::Keep { tag, left: size }),
            _ if flags & FLAG_OPTIONAL != 0 => Ok(Body::Skip { left: size }),
            _ => Err(RecordError::UnknownTag(tag)),
        }
    }

    /// Whether no record is partly read.
    pub fn at_boundary(&self) -> bool {
        self.body.is_none() && self.header.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(stream: &[u8], piece: usize) -> Result<(Vec<Record>, bool), RecordError> {
        let mut reader = RecordReader::default();
        let mut found = Vec::new();
        for chunk in stream.chunks(piece) {
            reader.feed(chunk, |r| {
                found.push(r);
                Ok::<_, RecordError>(())
            })?;
        }
        Ok((found, reader.at_boundary()))
    }

    #[test]
    fn records_are_found_in_any_pieces_and_unknown_optional_ones_skipped() {
        let mut stream = stop_copy_size(12345);
        stream.extend_from_slice(&header(7, FLAG_OPTIONAL, 5));
        stream.extend_from_slice(b"skip!");
        stream.extend_from_slice(&header(TAG_FW_DATA, 0, 3));
        stream.extend_from_slice(b"abc");
        stream.extend_from_slice(&header(TAG_FW_DATA, 0, 0));
        for piece in [1, 3, 16, 1000] {
            let (found, boundary) = read_all(&stream, piece).unwrap();
            assert_eq!(
                found,
                vec![
                    Record::StopCopySize(12345),
                    Record::FwData(b"abc".to_vec()),
                    Record::FwData(Vec::new())
                ]
            );
            assert!(boundary);
        }
        let (_, boundary) = read_all(&stream[..stream.len() - 1], 7).unwrap();
        assert!(!boundary);
    }

    #[test]
    fn bad_records_are_refused() {
        let cases = [
            (header(9, 0, 0), RecordError::UnknownTag(9)),
            (header(TAG_FW_DATA, 2, 0), RecordError::BadFlags(2)),
            (
                header(TAG_FW_DATA, 0, MAX_FW_DATA + 1),
                RecordError::TooLarge(MAX_FW_DATA + 1),
            ),
            (
                header(TAG_STOP_COPY_SIZE, FLAG_OPTIONAL, 4),
                RecordError::BadStopCopySize(4),
            ),
        ];
        for (bytes, expected) in cases {
            assert_eq!(read_all(&bytes, 16).unwrap_err(), expected);
        }
    }
}
