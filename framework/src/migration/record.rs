//! Typed device records: a backend hands its device state to the framework as records (a
//! kind, a version and a payload) and gets them back the same way, instead of framing bytes
//! itself.
//!
//! A backend states its kinds once, in a table of [`RecordKind`]s (tag, name, the version it
//! writes and the oldest it reads, payload bounds, whether a reader may skip it). In
//! [`MigrationHooks::save`](super::MigrationHooks::save) it pushes records into a
//! [`RecordWriter`] and hands out the writer's bytes; in
//! [`MigrationHooks::load`](super::MigrationHooks::load) it feeds the bytes to a
//! [`RecordReader`], which gives it each record once complete and checked.
//!
//! # Format
//!
//! ```text
//! le64 size | le32 flags | le32 tag | payload (size bytes)
//! ```
//!
//! `flags` bit 0 marks a record a reader may skip when it does not know the tag; bits 16-23
//! hold the record's version; the other bits are reserved and must be 0. This is the layout
//! of the records of Linux's mlx5 variant driver (whose records are version 0). There is no
//! checksum here: the framework's stream ([`crate::device::stream`]) checksums every piece of device
//! data these records travel in, and gives a device only pieces it verified.
//!
//! The reader refuses, before the backend sees anything of the record: a payload outside its
//! kind's bounds (so nothing larger than the bound is ever allocated), a version outside the
//! kind's range, reserved flags, and a mandatory record of an unknown tag.

use thiserror::Error;

use super::MigrationError;

/// Bytes of a record's framing before its payload.
pub const RECORD_HEADER_BYTES: usize = 16;
/// Record flag: a reader that does not know the tag skips the record.
pub const FLAG_OPTIONAL: u32 = 1;
/// Where the version sits in the flags.
const VERSION_SHIFT: u32 = 16;
/// The flag bits a record may use: optional and the version.
const KNOWN_FLAGS: u32 = FLAG_OPTIONAL | (0xff << VERSION_SHIFT);

/// One kind of record a backend writes and reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordKind {
    /// The tag that identifies it in the stream.
    pub tag: u32,
    /// Its name, for messages.
    pub name: &'static str,
    /// The version this build writes (and the newest it reads).
    pub version: u8,
    /// The oldest version this build reads.
    pub oldest: u8,
    /// The smallest payload.
    pub min_payload: u64,
    /// The largest payload: a larger record is refused before anything of it is kept.
    pub max_payload: u64,
    /// Whether a reader that does not know it may skip it (written with [`FLAG_OPTIONAL`]).
    pub optional: bool,
}

/// A record refused by a [`RecordReader`] or a [`RecordWriter`].
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RecordError {
    /// A payload outside its kind's bounds.
    #[error("{kind} record of {size} bytes (from {min} to {max} allowed)")]
    Size {
        /// The kind's name.
        kind: &'static str,
        /// The record's payload size.
        size: u64,
        /// The smallest allowed.
        min: u64,
        /// The largest allowed.
        max: u64,
    },
    /// A version this build does not read.
    #[error("{kind} record of version {found} (this build reads {oldest} to {newest})")]
    Version {
        /// The kind's name.
        kind: &'static str,
        /// The record's version.
        found: u8,
        /// The oldest version read.
        oldest: u8,
        /// The newest version read.
        newest: u8,
    },
    /// A mandatory record of a tag the backend does not know.
    #[error("unknown mandatory record tag {0}")]
    UnknownTag(u32),
    /// Reserved flag bits set.
    #[error("record flags {0:#x}")]
    BadFlags(u32),
}

impl From<RecordError> for MigrationError {
    fn from(error: RecordError) -> Self {
        MigrationError::InvalidData(error.to_string())
    }
}

impl RecordKind {
    /// Whether `size` is a payload size of this kind.
    fn check_size(&self, size: u64) -> Result<(), RecordError> {
        if (self.min_payload..=self.max_payload).contains(&size) {
            Ok(())
        } else {
            Err(RecordError::Size {
                kind: self.name,
                size,
                min: self.min_payload,
                max: self.max_payload,
            })
        }
    }

    /// The flags this build writes the kind with.
    fn flags(&self) -> u32 {
        (u32::from(self.version) << VERSION_SHIFT) | if self.optional { FLAG_OPTIONAL } else { 0 }
    }
}

/// The framing of a record.
fn header(tag: u32, flags: u32, size: u64) -> [u8; RECORD_HEADER_BYTES] {
    let mut h = [0u8; RECORD_HEADER_BYTES];
    h[..8].copy_from_slice(&size.to_le_bytes());
    h[8..12].copy_from_slice(&flags.to_le_bytes());
    h[12..].copy_from_slice(&tag.to_le_bytes());
    h
}

/// Records a backend is handing out: framed as they are pushed, read out in pieces of any
/// size by [`MigrationHooks::save`](super::MigrationHooks::save).
#[derive(Debug, Default)]
pub struct RecordWriter {
    bytes: Vec<u8>,
    sent: usize,
}

impl RecordWriter {
    /// Appends a record of `kind` (at the version this build writes).
    pub fn push(&mut self, kind: &RecordKind, payload: &[u8]) -> Result<(), RecordError> {
        kind.check_size(payload.len() as u64)?;
        self.bytes
            .extend_from_slice(&header(kind.tag, kind.flags(), payload.len() as u64));
        self.bytes.extend_from_slice(payload);
        Ok(())
    }

    /// Appends a record of `kind` whose payload `fill` appends to the vector it is given (a
    /// device writing its state in place). A failing `fill`, or a payload out of bounds,
    /// leaves the writer as it was. Returns the payload's size.
    pub fn push_with<E: From<RecordError>>(
        &mut self,
        kind: &RecordKind,
        fill: impl FnOnce(&mut Vec<u8>) -> Result<(), E>,
    ) -> Result<u64, E> {
        let start = self.bytes.len();
        self.bytes.resize(start + RECORD_HEADER_BYTES, 0);
        let filled = fill(&mut self.bytes);
        let size = (self.bytes.len() - start - RECORD_HEADER_BYTES) as u64;
        let checked = filled.and_then(|()| kind.check_size(size).map_err(E::from));
        if let Err(e) = checked {
            self.bytes.truncate(start);
            return Err(e);
        }
        self.bytes[start..start + RECORD_HEADER_BYTES].copy_from_slice(&header(
            kind.tag,
            kind.flags(),
            size,
        ));
        Ok(size)
    }

    /// Copies the next bytes into `buf`; returns how many (0 when everything was read).
    pub fn read(&mut self, buf: &mut [u8]) -> usize {
        let rest = &self.bytes[self.sent..];
        let n = rest.len().min(buf.len());
        buf[..n].copy_from_slice(&rest[..n]);
        self.sent += n;
        if self.sent == self.bytes.len() {
            self.clear();
        }
        n
    }

    /// Bytes pushed and not yet read.
    pub fn pending(&self) -> usize {
        self.bytes.len() - self.sent
    }

    /// Drops everything not yet read.
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.sent = 0;
    }
}

/// A complete, checked record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Its kind, from the backend's table.
    pub kind: &'static RecordKind,
    /// The version it was written with (in the kind's range).
    pub version: u8,
    /// The payload (in the kind's bounds).
    pub payload: Vec<u8>,
}

/// What the reader is in the middle of.
#[derive(Debug, Clone, Copy)]
enum Body {
    Keep {
        kind: &'static RecordKind,
        version: u8,
        left: u64,
    },
    Skip {
        left: u64,
    },
}

/// Reads records as their bytes arrive, in pieces of any size.
#[derive(Debug)]
pub struct RecordReader {
    kinds: &'static [RecordKind],
    header: Vec<u8>,
    body: Option<Body>,
    payload: Vec<u8>,
}

impl RecordReader {
    /// A reader of the records `kinds` states.
    pub fn new(kinds: &'static [RecordKind]) -> Self {
        Self {
            kinds,
            header: Vec::with_capacity(RECORD_HEADER_BYTES),
            body: None,
            payload: Vec::new(),
        }
    }

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
                            // Bounded by the kind's largest payload, checked in start().
                            self.payload
                                .reserve(usize::try_from(left).unwrap_or(usize::MAX));
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
                Some(Body::Keep {
                    kind,
                    version,
                    left,
                }) => {
                    let n = left.min(data.len() as u64);
                    self.payload.extend_from_slice(&data[..n as usize]);
                    data = &data[n as usize..];
                    if n < left {
                        self.body = Some(Body::Keep {
                            kind,
                            version,
                            left: left - n,
                        });
                        return Ok(());
                    }
                    self.body = None;
                    let payload = std::mem::take(&mut self.payload);
                    found(Record {
                        kind,
                        version,
                        payload,
                    })?;
                }
            }
        }
    }

    /// Checks a complete header: what to do with the payload that follows.
    fn start(&self) -> Result<Body, RecordError> {
        let h = &self.header;
        let mut size = [0u8; 8];
        size.copy_from_slice(&h[..8]);
        let size = u64::from_le_bytes(size);
        let flags = u32::from_le_bytes([h[8], h[9], h[10], h[11]]);
        let tag = u32::from_le_bytes([h[12], h[13], h[14], h[15]]);
        if flags & !KNOWN_FLAGS != 0 {
            return Err(RecordError::BadFlags(flags));
        }
        let Some(kind) = self.kinds.iter().find(|k| k.tag == tag) else {
            return if flags & FLAG_OPTIONAL != 0 {
                Ok(Body::Skip { left: size })
            } else {
                Err(RecordError::UnknownTag(tag))
            };
        };
        let version = (flags >> VERSION_SHIFT) as u8;
        if !(kind.oldest..=kind.version).contains(&version) {
            return Err(RecordError::Version {
                kind: kind.name,
                found: version,
                oldest: kind.oldest,
                newest: kind.version,
            });
        }
        kind.check_size(size)?;
        Ok(Body::Keep {
            kind,
            version,
            left: size,
        })
    }

    /// Whether no record is partly read.
    pub fn at_boundary(&self) -> bool {
        self.body.is_none() && self.header.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DATA: RecordKind = RecordKind {
        tag: 0,
        name: "DATA",
        version: 2,
        oldest: 1,
        min_payload: 0,
        max_payload: 64,
        optional: false,
    };
    const SIZE: RecordKind = RecordKind {
        tag: 1,
        name: "SIZE",
        version: 0,
        oldest: 0,
        min_payload: 8,
        max_payload: 8,
        optional: true,
    };
    static KINDS: [RecordKind; 2] = [DATA, SIZE];

    fn read_all(stream: &[u8], piece: usize) -> Result<(Vec<Record>, bool), RecordError> {
        let mut reader = RecordReader::new(&KINDS);
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
    fn written_records_are_read_back_in_any_pieces() {
        let mut writer = RecordWriter::default();
        writer.push(&SIZE, &12345u64.to_le_bytes()).unwrap();
        // An unknown optional record (another build's) is skipped.
        writer.bytes.extend_from_slice(&header(7, FLAG_OPTIONAL, 5));
        writer.bytes.extend_from_slice(b"skip!");
        let size = writer
            .push_with(&DATA, |payload| {
                payload.extend_from_slice(b"abc");
                Ok::<_, RecordError>(())
            })
            .unwrap();
        assert_eq!(size, 3);
        writer.push(&DATA, &[]).unwrap();
        let mut stream = vec![0u8; writer.pending()];
        let mut at = 0;
        let total = stream.len();
        while at < total {
            at += writer.read(&mut stream[at..(at + 7).min(total)]);
        }
        assert_eq!(writer.pending(), 0);
        assert_eq!(writer.read(&mut [0; 4]), 0);
        for piece in [1, 3, 16, 1000] {
            let (found, boundary) = read_all(&stream, piece).unwrap();
            let summary: Vec<_> = found
                .iter()
                .map(|r| (r.kind.name, r.version, r.payload.clone()))
                .collect();
            assert_eq!(
                summary,
                [
                    ("SIZE", 0, 12345u64.to_le_bytes().to_vec()),
                    ("DATA", 2, b"abc".to_vec()),
                    ("DATA", 2, Vec::new()),
                ]
            );
            assert!(boundary);
        }
        let (_, boundary) = read_all(&stream[..stream.len() - 1], 7).unwrap();
        assert!(!boundary);
    }

    #[test]
    fn the_layout_is_the_mlx5_one() {
        // Version 0 and the optional flag: Linux's mlx5 STOP_COPY_SIZE record, byte for byte.
        let mut writer = RecordWriter::default();
        writer.push(&SIZE, &7u64.to_le_bytes()).unwrap();
        let mut bytes = [0u8; 24];
        assert_eq!(writer.read(&mut bytes), 24);
        assert_eq!(
            &bytes[..16],
            &[8, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0]
        );
    }

    #[test]
    fn bad_records_are_refused_before_their_payload() {
        let version = |v: u32| v << VERSION_SHIFT;
        let cases = [
            (header(9, 0, 0), RecordError::UnknownTag(9)),
            (
                header(0, 2 | version(2), 0),
                RecordError::BadFlags(0x2_0002),
            ),
            (
                header(0, version(2), 65),
                RecordError::Size {
                    kind: "DATA",
                    size: 65,
                    min: 0,
                    max: 64,
                },
            ),
            (
                header(0, version(2), u64::MAX),
                RecordError::Size {
                    kind: "DATA",
                    size: u64::MAX,
                    min: 0,
                    max: 64,
                },
            ),
            (
                header(1, FLAG_OPTIONAL, 4),
                RecordError::Size {
                    kind: "SIZE",
                    size: 4,
                    min: 8,
                    max: 8,
                },
            ),
            (
                header(0, version(3), 0),
                RecordError::Version {
                    kind: "DATA",
                    found: 3,
                    oldest: 1,
                    newest: 2,
                },
            ),
            (
                header(0, 0, 0),
                RecordError::Version {
                    kind: "DATA",
                    found: 0,
                    oldest: 1,
                    newest: 2,
                },
            ),
        ];
        for (bytes, expected) in cases {
            assert_eq!(read_all(&bytes, 16).unwrap_err(), expected);
        }
        // An older version still read is handed over with its version.
        let (found, _) = read_all(&header(0, version(1), 0), 16).unwrap();
        assert_eq!(found[0].version, 1);
    }

    #[test]
    fn the_writer_refuses_what_a_reader_would() {
        let mut writer = RecordWriter::default();
        assert!(writer.push(&SIZE, &[0; 4]).is_err());
        let too_long = writer.push_with(&DATA, |payload| {
            payload.extend_from_slice(&[0; 65]);
            Ok::<_, RecordError>(())
        });
        assert!(too_long.is_err());
        let failed = writer.push_with(&DATA, |payload| {
            payload.push(1);
            Err(RecordError::UnknownTag(0))
        });
        assert_eq!(failed, Err(RecordError::UnknownTag(0)));
        // Nothing of the refused records stays.
        assert_eq!(writer.pending(), 0);
    }
}
