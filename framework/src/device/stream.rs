//! The framed migration stream a function's state travels in (MIG_DATA_READ/WRITE).
//!
//! # Format
//!
//! A stream is a sequence of records. Each record is
//!
//! ```text
//! le64 size | le32 flags | le32 tag | payload (size bytes) | le32 checksum
//! ```
//!
//! `flags` bit 0 marks an optional record (the other bits are reserved and must be 0).
//! `checksum` is the CRC-32 (IEEE, as `crc32fast`) of the 16 framing bytes and the payload;
//! it follows the payload and is not counted in `size`.
//!
//! Records, in order:
//! - [`TAG_HEADER`] (first, exactly once): `le32 format version` ([`FORMAT_VERSION`]), then three
//!   strings, each `le32 length | UTF-8 bytes`: the vPCI layout fingerprint
//!   ([`fingerprint`]), the backend name and the profile name.
//! - [`TAG_DATA`] (any number): the bytes [`MigrationHooks::save`] produced, in order; each is
//!   given to [`MigrationHooks::load`] on the destination.
//! - Unknown records with the optional flag are skipped; unknown mandatory records fail the
//!   load.
//! - [`TAG_CONFIG`] (at most once, after the device data): the function's emulated config
//!   space as the guest left it (`VirtualFunction::config_snapshot`), taken once the device
//!   is stopped; the destination restores it before the device's state.
//! - [`TAG_END`] (last, empty): the stream is complete. Bytes after it are refused.
//!
//! # Loading
//!
//! [`StreamLoader`] takes the stream in pieces as they arrive. It checks each record when it is
//! complete (framing, size bounds, checksum, the header against this function). Either it
//! keeps the device data until the whole stream has arrived and is valid
//! ([`StreamLoader::feed`]; [`StreamLoader::finish`] returns a [`Stream`], and only
//! [`Stream::apply`] calls [`MigrationHooks::load`]), or it gives the device each data record
//! as soon as that record is verified ([`StreamLoader::feed_into`], what the server does, so
//! a state of any size moves through one record of memory). Either way a stream for another
//! function is refused before any data reaches the device, and a stream that ends early or
//! has a bad record is refused before the device leaves RESUMING: the device commits what
//! it loaded only in its RESUMING → STOP arc.

use crate::config::ConfigTemplate;
use crate::vpci::compat::{Difference, compare, fingerprint};

use crate::migration::{MigrationError, MigrationHooks, PrecopyInfo};

/// Version of the stream format this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// Record flag: a reader that does not know the tag may skip the record.
pub const FLAG_OPTIONAL: u32 = 1;
/// The header record: format version, layout fingerprint, backend, profile.
pub const TAG_HEADER: u32 = 1;
/// A piece of device state.
pub const TAG_DATA: u32 = 2;
/// The end of the stream (empty payload).
pub const TAG_END: u32 = 3;
/// The function's config-space state.
pub const TAG_CONFIG: u32 = 4;
/// Bytes of framing before a record's payload.
pub const RECORD_HEADER_SIZE: usize = 16;
/// Bytes of checksum after a record's payload.
pub const CHECKSUM_SIZE: usize = 4;
/// Largest header record payload accepted.
pub const MAX_HEADER_PAYLOAD: u64 = 64 * 1024;
/// Size of the device-data chunks [`StreamWriter`] asks the backend for.
pub const DEFAULT_CHUNK: usize = 64 * 1024;

/// What a stream says it holds, and what a destination function expects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamIdentity {
    /// The vPCI layout fingerprint (`sha256:` and 64 hex digits).
    pub fingerprint: String,
    /// The backend name.
    pub backend: String,
    /// The profile name.
    pub profile: String,
}

impl StreamIdentity {
    /// The identity of a function exposed with `template` by `backend` with `profile`.
    pub fn new(
        template: &ConfigTemplate,
        backend: impl Into<String>,
        profile: impl Into<String>,
    ) -> Self {
        Self {
            fingerprint: fingerprint(template),
            backend: backend.into(),
            profile: profile.into(),
        }
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        for text in [&self.fingerprint, &self.backend, &self.profile] {
            out.extend_from_slice(&len_u32(text.len()).to_le_bytes());
            out.extend_from_slice(text.as_bytes());
        }
        out
    }

    fn decode(payload: &[u8]) -> Result<Self, StreamError> {
        let mut rest = payload;
        let version = take_u32(&mut rest)?;
        if version != FORMAT_VERSION {
            return Err(StreamError::Version {
                found: version,
                supported: FORMAT_VERSION,
            });
        }
        let mut text = || -> Result<String, StreamError> {
            let len = usize::try_from(take_u32(&mut rest)?).unwrap_or(usize::MAX);
            if len > rest.len() {
                return Err(StreamError::BadHeader(
                    "a string runs past the record".into(),
                ));
            }
            let (bytes, tail) = rest.split_at(len);
            rest = tail;
            String::from_utf8(bytes.to_vec())
                .map_err(|_| StreamError::BadHeader("a string is not UTF-8".into()))
        };
        let identity = Self {
            fingerprint: text()?,
            backend: text()?,
            profile: text()?,
        };
        if !rest.is_empty() {
            return Err(StreamError::BadHeader(format!(
                "{} bytes after the profile",
                rest.len()
            )));
        }
        Ok(identity)
    }
}

fn take_u32(rest: &mut &[u8]) -> Result<u32, StreamError> {
    let Some((head, tail)) = rest.split_first_chunk::<4>() else {
        return Err(StreamError::BadHeader("too short".into()));
    };
    *rest = tail;
    Ok(u32::from_le_bytes(*head))
}

fn len_u32(len: usize) -> u32 {
    u32::try_from(len).unwrap_or(u32::MAX)
}

/// One record of a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// What the record is ([`TAG_HEADER`], [`TAG_DATA`], [`TAG_END`] or another tag).
    pub tag: u32,
    /// Whether a reader that does not know the tag may skip it.
    pub optional: bool,
    /// The payload.
    pub payload: Vec<u8>,
}

impl Record {
    /// Appends the framed record (framing, payload, checksum) to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let framing = framing(self.payload.len() as u64, self.flags(), self.tag);
        out.extend_from_slice(&framing);
        out.extend_from_slice(&self.payload);
        out.extend_from_slice(&checksum(&framing, &self.payload).to_le_bytes());
    }

    fn flags(&self) -> u32 {
        if self.optional { FLAG_OPTIONAL } else { 0 }
    }
}

fn framing(size: u64, flags: u32, tag: u32) -> [u8; RECORD_HEADER_SIZE] {
    let mut out = [0u8; RECORD_HEADER_SIZE];
    out[0..8].copy_from_slice(&size.to_le_bytes());
    out[8..12].copy_from_slice(&flags.to_le_bytes());
    out[12..16].copy_from_slice(&tag.to_le_bytes());
    out
}

fn checksum(framing: &[u8], payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(framing);
    hasher.update(payload);
    hasher.finalize()
}

/// A complete, valid stream: its header and every record in order (header and end included).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stream {
    identity: StreamIdentity,
    records: Vec<Record>,
}

impl Stream {
    /// The stream of `identity` carrying `data` as device-data records.
    pub fn new(identity: StreamIdentity, data: impl IntoIterator<Item = Vec<u8>>) -> Self {
        let mut records = vec![Record {
            tag: TAG_HEADER,
            optional: false,
            payload: identity.encode(),
        }];
        records.extend(data.into_iter().map(|payload| Record {
            tag: TAG_DATA,
            optional: false,
            payload,
        }));
        records.push(Record {
            tag: TAG_END,
            optional: false,
            payload: Vec::new(),
        });
        Self { identity, records }
    }

    /// What the header says.
    pub fn identity(&self) -> &StreamIdentity {
        &self.identity
    }

    /// Every record, in stream order.
    pub fn records(&self) -> &[Record] {
        &self.records
    }

    /// The device-data payloads, in order.
    pub fn device_data(&self) -> impl Iterator<Item = &[u8]> {
        self.records
            .iter()
            .filter(|r| r.tag == TAG_DATA)
            .map(|r| r.payload.as_slice())
    }

    /// The config-space state the stream carries, if any.
    pub fn config(&self) -> Option<&[u8]> {
        self.records
            .iter()
            .find(|r| r.tag == TAG_CONFIG)
            .map(|r| r.payload.as_slice())
    }

    /// Gives the device data to the device, in order (the function must be in RESUMING).
    pub fn apply(&self, hooks: &dyn MigrationHooks) -> Result<(), MigrationError> {
        self.device_data().try_for_each(|data| hooks.load(data))
    }

    /// The stream's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for record in &self.records {
            record.encode_into(&mut out);
        }
        out
    }
}

/// Bounds on what a loader accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamLimits {
    /// Largest record payload (default 4 GiB).
    pub max_record: u64,
    /// Largest part of the stream the loader keeps, framing included (default 4 GiB): all of
    /// it with [`StreamLoader::feed`], the records other than device data with
    /// [`StreamLoader::feed_into`].
    pub max_stream: u64,
}

impl Default for StreamLimits {
    fn default() -> Self {
        Self {
            max_record: 4 << 30,
            max_stream: 4 << 30,
        }
    }
}

/// Why a stream was refused. Nothing was given to the device.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    /// A record is larger than the limit.
    #[error("record {index} (tag {tag:#x}) has {size} bytes, more than the limit of {limit}")]
    RecordTooLarge {
        /// Position of the record in the stream.
        index: usize,
        /// Its tag.
        tag: u32,
        /// Its payload size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// The stream is larger than the limit.
    #[error("the stream is larger than the limit of {limit} bytes")]
    StreamTooLarge {
        /// The limit.
        limit: u64,
    },
    /// A record uses reserved flag bits.
    #[error("record {index} (tag {tag:#x}) has reserved flags {flags:#x}")]
    ReservedFlags {
        /// Position of the record in the stream.
        index: usize,
        /// Its tag.
        tag: u32,
        /// Its flags.
        flags: u32,
    },
    /// A record's checksum does not match its contents.
    #[error(
        "record {index} (tag {tag:#x}): checksum {found:#010x}, contents give {computed:#010x}"
    )]
    Checksum {
        /// Position of the record in the stream.
        index: usize,
        /// Its tag.
        tag: u32,
        /// The checksum in the stream.
        found: u32,
        /// The checksum of the contents.
        computed: u32,
    },
    /// The first record is not a header.
    #[error("the stream starts with a record of tag {tag:#x}, not a header")]
    MissingHeader {
        /// The first record's tag.
        tag: u32,
    },
    /// A known record where it may not be (a second header) or with a bad payload.
    #[error("record {index} (tag {tag:#x}) is misplaced or malformed")]
    BadRecord {
        /// Position of the record in the stream.
        index: usize,
        /// Its tag.
        tag: u32,
    },
    /// A mandatory record this build does not know.
    #[error("record {index} has unknown mandatory tag {tag:#x}")]
    UnknownMandatory {
        /// Position of the record in the stream.
        index: usize,
        /// Its tag.
        tag: u32,
    },
    /// The header record is malformed.
    #[error("malformed stream header: {0}")]
    BadHeader(String),
    /// The stream format version is not this build's.
    #[error("stream format version {found}; this build reads version {supported}")]
    Version {
        /// Version in the stream.
        found: u32,
        /// Version this build reads.
        supported: u32,
    },
    /// The stream comes from another backend.
    #[error("the stream is from backend `{found}`, this function's backend is `{expected}`")]
    Backend {
        /// Backend in the stream.
        found: String,
        /// This function's backend.
        expected: String,
    },
    /// The stream comes from another profile.
    #[error("the stream is of profile `{found}`, this function's profile is `{expected}`")]
    Profile {
        /// Profile in the stream.
        found: String,
        /// This function's profile.
        expected: String,
    },
    /// The stream comes from a function with another guest-visible layout.
    #[error("{}", layout_message(.found, .expected, .differences))]
    Layout {
        /// Fingerprint in the stream.
        found: String,
        /// This function's fingerprint.
        expected: String,
        /// Every difference between the source layout and this one, when the source layout
        /// was given to the loader (see [`StreamLoader::with_source_layout`]).
        differences: Vec<Difference>,
    },
    /// The stream ended before its end record.
    #[error("the stream ends early: {0}")]
    Truncated(String),
    /// Bytes follow the end record.
    #[error("{0} bytes follow the end record")]
    TrailingData(usize),
    /// The device refused a piece of state it was given ([`StreamLoader::feed_into`]).
    #[error("the device refused its state: {0}")]
    Device(String),
}

fn layout_message(found: &str, expected: &str, differences: &[Difference]) -> String {
    let mut text = format!(
        "the stream's vPCI layout (fingerprint {found}) differs from this function's ({expected})"
    );
    if !differences.is_empty() {
        let listed: Vec<String> = differences
            .iter()
            .map(|d| format!("{}: {}", d.place, d.detail))
            .collect();
        text.push_str(": ");
        text.push_str(&listed.join("; "));
    }
    text
}

impl StreamError {
    /// The errno to report (EINVAL: the data is invalid for this function).
    pub fn errno(&self) -> i32 {
        libc::EINVAL
    }
}

/// Takes a stream in pieces and checks it: whole before anything reaches the device
/// ([`StreamLoader::feed`]), or record by record, giving the device each data record once it
/// is verified ([`StreamLoader::feed_into`]).
///
/// After an error every later call returns the same error.
#[derive(Debug)]
pub struct StreamLoader {
    expected: StreamIdentity,
    source: Option<(String, Vec<Difference>)>,
    limits: StreamLimits,
    pending: Vec<u8>,
    records: Vec<Record>,
    /// Records taken so far, kept or given to the device.
    seen: usize,
    identity: Option<StreamIdentity>,
    ended: bool,
    total: u64,
    failed: Option<StreamError>,
}

impl StreamLoader {
    /// A loader for a function whose identity is `expected`.
    pub fn new(expected: StreamIdentity, limits: StreamLimits) -> Self {
        Self {
            expected,
            source: None,
            limits,
            pending: Vec::new(),
            records: Vec::new(),
            seen: 0,
            identity: None,
            ended: false,
            total: 0,
            failed: None,
        }
    }

    /// Names the source function's layout (`source`) and this function's (`target`), so a
    /// layout refusal lists every difference. Used when the stream's fingerprint is the
    /// source's.
    pub fn with_source_layout(mut self, source: &ConfigTemplate, target: &ConfigTemplate) -> Self {
        self.source = Some((fingerprint(source), compare(source, target)));
        self
    }

    /// Takes the next bytes of the stream, keeping every record until
    /// [`StreamLoader::finish`].
    pub fn feed(&mut self, bytes: &[u8]) -> Result<(), StreamError> {
        self.feed_with(bytes, None)
    }

    /// Takes the next bytes of the stream and gives each device-data record to `hooks`
    /// ([`MigrationHooks::load`]) as soon as it is complete and its checksum verified; the
    /// header comes first, so a stream for another function is refused before any data
    /// reaches the device. Only the other records are kept, so memory stays bounded by one
    /// record whatever the size of the stream. The device keeps what it loads uncommitted
    /// until RESUMING → STOP, which a caller asks only once [`StreamLoader::finish`] has
    /// accepted the whole stream.
    pub fn feed_into(
        &mut self,
        bytes: &[u8],
        hooks: &dyn MigrationHooks,
    ) -> Result<(), StreamError> {
        self.feed_with(bytes, Some(hooks))
    }

    fn feed_with(
        &mut self,
        bytes: &[u8],
        sink: Option<&dyn MigrationHooks>,
    ) -> Result<(), StreamError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let result = self.take(bytes, sink);
        if let Err(e) = &result {
            self.failed = Some(e.clone());
            self.pending = Vec::new();
            self.records = Vec::new();
        }
        result
    }

    /// Whether the end record has arrived.
    pub fn is_complete(&self) -> bool {
        self.failed.is_none() && self.ended
    }

    /// The stream, if everything arrived and is valid (without the data records already
    /// given to the device by [`StreamLoader::feed_into`]).
    pub fn finish(self) -> Result<Stream, StreamError> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        match self.identity {
            Some(identity) if self.ended => Ok(Stream {
                identity,
                records: self.records,
            }),
            _ if self.seen == 0 && self.pending.is_empty() => {
                Err(StreamError::Truncated("no data".into()))
            }
            _ if self.pending.is_empty() => Err(StreamError::Truncated(format!(
                "no end record after {} records",
                self.seen
            ))),
            _ => Err(StreamError::Truncated(format!(
                "{} bytes of an incomplete record {}",
                self.pending.len(),
                self.seen
            ))),
        }
    }

    fn take(&mut self, bytes: &[u8], sink: Option<&dyn MigrationHooks>) -> Result<(), StreamError> {
        if self.ended {
            return match bytes.len() {
                0 => Ok(()),
                n => Err(StreamError::TrailingData(n)),
            };
        }
        // The record in progress is completed with just the bytes it lacks; whole records
        // are then taken straight from `bytes`, and only an incomplete last one is kept.
        let mut input = bytes;
        while !self.pending.is_empty() {
            let needed = self
                .check_next(&self.pending)?
                .unwrap_or(RECORD_HEADER_SIZE);
            let missing = needed.saturating_sub(self.pending.len()).min(input.len());
            self.pending.extend_from_slice(&input[..missing]);
            input = &input[missing..];
            if self.pending.len() < needed {
                return Ok(());
            }
            if self
                .check_next(&self.pending)?
                .is_none_or(|n| n > self.pending.len())
            {
                // The framing just completed: now the whole length is known.
                continue;
            }
            let record = std::mem::take(&mut self.pending);
            let kept = self.take_record(&record, sink);
            // Keep the buffer (and its pages) for the next record that straddles a read.
            self.pending = record;
            self.pending.clear();
            kept?;
            self.check_trailing(input.len())?;
        }
        while let Some(needed) = self.check_next(input)? {
            if input.len() < needed {
                break;
            }
            self.take_record(&input[..needed], sink)?;
            input = &input[needed..];
            self.check_trailing(input.len())?;
        }
        self.pending.extend_from_slice(input);
        Ok(())
    }

    /// After the end record, no byte may follow.
    fn check_trailing(&self, left: usize) -> Result<(), StreamError> {
        if self.ended && left != 0 {
            return Err(StreamError::TrailingData(left));
        }
        Ok(())
    }

    /// Verifies one whole record (`raw`, framing to checksum) and takes it: device data to
    /// `sink` when there is one, the others kept.
    fn take_record(
        &mut self,
        raw: &[u8],
        sink: Option<&dyn MigrationHooks>,
    ) -> Result<(), StreamError> {
        let index = self.seen;
        let (framing, rest) = raw.split_at(RECORD_HEADER_SIZE);
        let (payload, sum) = rest.split_at(rest.len() - CHECKSUM_SIZE);
        let tag = u32::from_le_bytes([framing[12], framing[13], framing[14], framing[15]]);
        let found = u32::from_le_bytes([sum[0], sum[1], sum[2], sum[3]]);
        let computed = checksum(framing, payload);
        if found != computed {
            return Err(StreamError::Checksum {
                index,
                tag,
                found,
                computed,
            });
        }
        if let (TAG_DATA, Some(hooks)) = (tag, sink) {
            self.seen += 1;
            return hooks
                .load(payload)
                .map_err(|e| StreamError::Device(e.to_string()));
        }
        let record = Record {
            tag,
            optional: framing[8] & 1 != 0,
            payload: payload.to_vec(),
        };
        self.accept(index, record)
    }

    /// Checks the framing at the start of `rest`: the record's whole length, or `None` until
    /// the framing has arrived.
    fn check_next(&self, rest: &[u8]) -> Result<Option<usize>, StreamError> {
        let Some(framing) = rest.first_chunk::<RECORD_HEADER_SIZE>() else {
            return Ok(None);
        };
        let index = self.seen;
        let size = u64::from_le_bytes([
            framing[0], framing[1], framing[2], framing[3], framing[4], framing[5], framing[6],
            framing[7],
        ]);
        let flags = u32::from_le_bytes([framing[8], framing[9], framing[10], framing[11]]);
        let tag = u32::from_le_bytes([framing[12], framing[13], framing[14], framing[15]]);
        if flags & !FLAG_OPTIONAL != 0 {
            return Err(StreamError::ReservedFlags { index, tag, flags });
        }
        if index == 0 && tag != TAG_HEADER {
            return Err(StreamError::MissingHeader { tag });
        }
        let limit = if tag == TAG_HEADER {
            MAX_HEADER_PAYLOAD.min(self.limits.max_record)
        } else {
            self.limits.max_record
        };
        let too_large = StreamError::RecordTooLarge {
            index,
            tag,
            size,
            limit,
        };
        if size > limit {
            return Err(too_large);
        }
        let framed = size.saturating_add((RECORD_HEADER_SIZE + CHECKSUM_SIZE) as u64);
        if self.total.saturating_add(framed) > self.limits.max_stream {
            return Err(StreamError::StreamTooLarge {
                limit: self.limits.max_stream,
            });
        }
        usize::try_from(framed).map(Some).map_err(|_| too_large)
    }

    fn accept(&mut self, index: usize, record: Record) -> Result<(), StreamError> {
        let bad = || StreamError::BadRecord {
            index,
            tag: record.tag,
        };
        match record.tag {
            TAG_HEADER if index == 0 => {
                let identity = StreamIdentity::decode(&record.payload)?;
                self.check_identity(&identity)?;
                self.identity = Some(identity);
            }
            TAG_HEADER => return Err(bad()),
            TAG_DATA => {}
            TAG_CONFIG if !self.records.iter().any(|r| r.tag == TAG_CONFIG) => {}
            TAG_CONFIG => return Err(bad()),
            TAG_END if record.payload.is_empty() => self.ended = true,
            TAG_END => return Err(bad()),
            tag if !record.optional => return Err(StreamError::UnknownMandatory { index, tag }),
            // An unknown optional record: kept in order, never applied.
            _ => {}
        }
        self.total += (RECORD_HEADER_SIZE + CHECKSUM_SIZE + record.payload.len()) as u64;
        self.records.push(record);
        self.seen += 1;
        Ok(())
    }

    fn check_identity(&self, found: &StreamIdentity) -> Result<(), StreamError> {
        let expected = &self.expected;
        if found.backend != expected.backend {
            return Err(StreamError::Backend {
                found: found.backend.clone(),
                expected: expected.backend.clone(),
            });
        }
        if found.profile != expected.profile {
            return Err(StreamError::Profile {
                found: found.profile.clone(),
                expected: expected.profile.clone(),
            });
        }
        if found.fingerprint != expected.fingerprint {
            let differences = match &self.source {
                Some((source, differences)) if *source == found.fingerprint => differences.clone(),
                _ => Vec::new(),
            };
            return Err(StreamError::Layout {
                found: found.fingerprint.clone(),
                expected: expected.fingerprint.clone(),
                differences,
            });
        }
        Ok(())
    }
}

/// Estimated length of `identity`'s stream carrying `data` bytes of device state (framing
/// included, assuming the backend fills [`DEFAULT_CHUNK`]-byte chunks).
pub fn estimated_size(identity: &StreamIdentity, data: u64) -> u64 {
    let per_record = (RECORD_HEADER_SIZE + CHECKSUM_SIZE) as u64;
    let records = data.div_ceil(DEFAULT_CHUNK as u64).saturating_add(2);
    (identity.encode().len() as u64)
        .saturating_add(data)
        .saturating_add(records.saturating_mul(per_record))
}

/// Produces a function's stream from its [`MigrationHooks::save`], in reads of any size.
#[derive(Debug)]
pub struct StreamWriter {
    identity: StreamIdentity,
    chunk: usize,
    out: Vec<u8>,
    pos: usize,
    header_sent: bool,
    /// The config-space state to carry before the end, once given.
    config: Option<Vec<u8>>,
    ended: bool,
}

impl StreamWriter {
    /// A writer of `identity`'s stream, asking the backend for up to [`DEFAULT_CHUNK`] bytes
    /// at a time.
    pub fn new(identity: StreamIdentity) -> Self {
        Self {
            identity,
            chunk: DEFAULT_CHUNK,
            out: Vec::new(),
            pos: 0,
            header_sent: false,
            config: None,
            ended: false,
        }
    }

    /// Whether the stream still waits for the config-space state ([`StreamWriter::set_config`]).
    pub fn needs_config(&self) -> bool {
        self.config.is_none() && !self.ended
    }

    /// The config-space state to carry in a [`TAG_CONFIG`] record after the device data (the
    /// first one given counts).
    pub fn set_config(&mut self, snapshot: Vec<u8>) {
        if self.needs_config() {
            self.config = Some(snapshot);
        }
    }

    /// Fills `buf` with the next stream bytes. With `last` (stop-copy) the backend's end of
    /// data ends the stream; without it (pre-copy) it only ends what is available now. Fewer
    /// bytes than `buf` holds mean: the end (with `last`), or no more for now.
    pub fn read(
        &mut self,
        hooks: &dyn MigrationHooks,
        buf: &mut [u8],
        last: bool,
    ) -> Result<usize, MigrationError> {
        let mut filled = 0;
        while filled < buf.len() {
            if self.pos < self.out.len() {
                let n = (self.out.len() - self.pos).min(buf.len() - filled);
                buf[filled..filled + n].copy_from_slice(&self.out[self.pos..self.pos + n]);
                self.pos += n;
                filled += n;
                continue;
            }
            self.out.clear();
            self.pos = 0;
            let record = if !self.header_sent {
                self.header_sent = true;
                Record {
                    tag: TAG_HEADER,
                    optional: false,
                    payload: self.identity.encode(),
                }
            } else if self.ended {
                break;
            } else {
                let room = buf.len() - filled;
                let framed = RECORD_HEADER_SIZE + CHECKSUM_SIZE;
                let mut data = Vec::new();
                let n = if room > framed {
                    // Room for a whole record: the device saves straight into `buf`.
                    let dst = &mut buf[filled..];
                    let max = (room - framed).min(self.chunk);
                    let payload = &mut dst[RECORD_HEADER_SIZE..RECORD_HEADER_SIZE + max];
                    let n = hooks.save(payload)?.min(max);
                    if n > 0 {
                        let end = RECORD_HEADER_SIZE + n;
                        let framing = framing(n as u64, 0, TAG_DATA);
                        let sum = checksum(&framing, &dst[RECORD_HEADER_SIZE..end]);
                        dst[..RECORD_HEADER_SIZE].copy_from_slice(&framing);
                        dst[end..end + CHECKSUM_SIZE].copy_from_slice(&sum.to_le_bytes());
                        filled += end + CHECKSUM_SIZE;
                        continue;
                    }
                    0
                } else {
                    data = vec![0u8; self.chunk];
                    hooks.save(&mut data)?.min(self.chunk)
                };
                if n == 0 {
                    if !last {
                        break;
                    }
                    match self.config.as_mut().filter(|c| !c.is_empty()) {
                        Some(config) => Record {
                            tag: TAG_CONFIG,
                            optional: false,
                            payload: std::mem::take(config),
                        },
                        None => {
                            self.ended = true;
                            Record {
                                tag: TAG_END,
                                optional: false,
                                payload: Vec::new(),
                            }
                        }
                    }
                } else {
                    data.truncate(n);
                    Record {
                        tag: TAG_DATA,
                        optional: false,
                        payload: data,
                    }
                }
            };
            record.encode_into(&mut self.out);
        }
        Ok(filled)
    }

    /// Pre-copy progress of the stream, from the device's `device` progress: stream bytes
    /// produced but not read yet (the header record before the first read) count as initial
    /// bytes, and device bytes count with the framing of the records that will carry them.
    pub fn precopy_info(&self, device: PrecopyInfo) -> PrecopyInfo {
        let per_record = (RECORD_HEADER_SIZE + CHECKSUM_SIZE) as u64;
        let framed = |data: u64| {
            data.saturating_add(data.div_ceil(self.chunk as u64).saturating_mul(per_record))
        };
        let mut pending = (self.out.len() - self.pos) as u64;
        if !self.header_sent {
            pending += self.identity.encode().len() as u64 + per_record;
        }
        PrecopyInfo {
            initial_bytes: pending.saturating_add(framed(device.initial_bytes)),
            dirty_bytes: framed(device.dirty_bytes),
        }
    }

    /// Whether the whole stream, end record included, has been read.
    pub fn is_finished(&self) -> bool {
        self.ended && self.pos == self.out.len()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use parking_lot::Mutex;

    use super::*;
    use crate::migration::{MigrationFlags, MigrationState, PrecopyInfo};
    use crate::vpci::compile::compile;
    use crate::vpci::parse_layout;

    const LAYOUT: &str = r#"
[vpci]
format = 1
name = "a"
config_size = 256
[identity]
vendor_id = 0x1af4
device_id = 0x1041
class_code = 0x020000
[[bar]]
index = 0
kind = "mem32"
size = "16K"
backing = "emulated"
"#;

    fn template(text: &str) -> ConfigTemplate {
        compile(Arc::new(parse_layout("t", text).unwrap()))
    }

    fn identity() -> StreamIdentity {
        StreamIdentity::new(&template(LAYOUT), "scratch", "basic")
    }

    fn loader() -> StreamLoader {
        StreamLoader::new(identity(), StreamLimits::default())
    }

    fn load(bytes: &[u8]) -> Result<Stream, StreamError> {
        let mut loader = loader();
        loader.feed(bytes)?;
        loader.finish()
    }

    fn sample() -> Stream {
        Stream::new(identity(), [vec![1, 2, 3], vec![], vec![4; 100]])
    }

    /// A device that saves `state` in pieces and records what it loads.
    struct Device {
        state: Vec<u8>,
        saved: Mutex<usize>,
        loaded: Mutex<Vec<u8>>,
    }

    impl Device {
        fn new(state: Vec<u8>) -> Self {
            Self {
                state,
                saved: Mutex::new(0),
                loaded: Mutex::new(Vec::new()),
            }
        }
    }

    impl MigrationHooks for Device {
        fn flags(&self) -> MigrationFlags {
            MigrationFlags::STOP_COPY
        }
        fn transition(&self, _: MigrationState, _: MigrationState) -> Result<(), MigrationError> {
            Ok(())
        }
        fn save(&self, buf: &mut [u8]) -> Result<usize, MigrationError> {
            let mut saved = self.saved.lock();
            let n = (self.state.len() - *saved).min(buf.len()).min(1000);
            buf[..n].copy_from_slice(&self.state[*saved..*saved + n]);
            *saved += n;
            Ok(n)
        }
        fn load(&self, data: &[u8]) -> Result<(), MigrationError> {
            self.loaded.lock().extend_from_slice(data);
            Ok(())
        }
        fn precopy_info(&self) -> Result<PrecopyInfo, MigrationError> {
            Ok(PrecopyInfo::default())
        }
        fn stop_copy_size(&self) -> Result<u64, MigrationError> {
            Ok(self.state.len() as u64)
        }
    }

    fn with_record(stream: &Stream, at: usize, record: Record) -> Vec<u8> {
        let mut records = stream.records().to_vec();
        records.insert(at, record);
        let mut out = Vec::new();
        for r in &records {
            r.encode_into(&mut out);
        }
        out
    }

    proptest::proptest! {
        #[test]
        fn any_stream_round_trips_and_any_flipped_byte_is_refused(
            data in proptest::collection::vec(proptest::collection::vec(0u8..=255, 0..64), 0..5),
            piece in 1usize..64,
            flip in 0usize..10_000,
            bit in 0u8..8,
        ) {
            let stream = Stream::new(identity(), data);
            let bytes = stream.encode();
            let mut loader = loader();
            for chunk in bytes.chunks(piece) {
                loader.feed(chunk).unwrap();
            }
            proptest::prop_assert_eq!(loader.finish().unwrap(), stream.clone());
            let mut bad = bytes.clone();
            let at = flip % bad.len();
            bad[at] ^= 1 << bit;
            proptest::prop_assert!(load(&bad).is_err(), "flipped bit {} of byte {}", bit, at);
        }
    }

    #[test]
    fn the_config_state_travels_once_before_the_end() {
        let device = Device::new(vec![7; 2500]);
        let mut writer = StreamWriter::new(identity());
        writer.set_config(vec![0xab; 256]);
        writer.set_config(vec![0xcd; 256]);
        let mut bytes = Vec::new();
        let mut buf = vec![0u8; 700];
        loop {
            let n = writer.read(&device, &mut buf, true).unwrap();
            bytes.extend_from_slice(&buf[..n]);
            if n < buf.len() {
                break;
            }
        }
        let stream = load(&bytes).unwrap();
        assert_eq!(
            stream.config(),
            Some(&[0xab; 256][..]),
            "the first one given"
        );
        let tags: Vec<u32> = stream.records().iter().map(|r| r.tag).collect();
        assert_eq!(tags.first(), Some(&TAG_HEADER));
        assert_eq!(tags[tags.len() - 2..], [TAG_CONFIG, TAG_END]);
        // A second config record is refused.
        let twice = with_record(
            &stream,
            1,
            Record {
                tag: TAG_CONFIG,
                optional: false,
                payload: vec![0; 256],
            },
        );
        assert!(matches!(
            load(&twice),
            Err(StreamError::BadRecord {
                tag: TAG_CONFIG,
                ..
            })
        ));
        // Without one, the stream has none.
        assert_eq!(sample().config(), None);
    }

    #[test]
    fn round_trip_in_any_pieces() {
        let stream = sample();
        let bytes = stream.encode();
        assert_eq!(load(&bytes).unwrap(), stream);
        for piece in [1, 7, 16, 21, 4096] {
            let mut loader = loader();
            for chunk in bytes.chunks(piece) {
                loader.feed(chunk).unwrap();
            }
            assert!(loader.is_complete());
            assert_eq!(loader.finish().unwrap(), stream);
        }
        let device = Device::new(Vec::new());
        stream.apply(&device).unwrap();
        assert_eq!(
            *device.loaded.lock(),
            [vec![1, 2, 3], vec![4; 100]].concat()
        );
    }

    #[test]
    fn checksum_follows_the_payload() {
        let bytes = Stream::new(identity(), []).encode();
        let header_len = u64::from_le_bytes(bytes[0..8].try_into().unwrap()) as usize;
        let sum_at = RECORD_HEADER_SIZE + header_len;
        let sum = u32::from_le_bytes(bytes[sum_at..sum_at + 4].try_into().unwrap());
        assert_eq!(sum, crc32fast::hash(&bytes[..sum_at]));
        // The end record: framing and checksum only.
        assert_eq!(bytes.len(), sum_at + 4 + RECORD_HEADER_SIZE + CHECKSUM_SIZE);
    }

    #[test]
    fn writer_streams_what_the_device_saves() {
        let state: Vec<u8> = (0..5000u32).map(|i| i as u8).collect();
        // Reads too small for a record, just big enough, and larger than the state: records
        // are framed in the reader's buffer or staged, the stream is the same to a loader.
        for size in [1, 7, 20, 21, 333, 4096, 70_000] {
            let source = Device::new(state.clone());
            let mut writer = StreamWriter::new(identity());
            let mut bytes = Vec::new();
            let mut buf = vec![0u8; size];
            loop {
                let n = writer.read(&source, &mut buf, true).unwrap();
                bytes.extend_from_slice(&buf[..n]);
                if n < buf.len() {
                    break;
                }
            }
            assert!(writer.is_finished());
            assert_eq!(writer.read(&source, &mut buf, true).unwrap(), 0);
            let stream = load(&bytes).unwrap();
            assert_eq!(stream.encode(), bytes);
            let dest = Device::new(Vec::new());
            stream.apply(&dest).unwrap();
            assert_eq!(*dest.loaded.lock(), state, "{size}-byte reads");
        }
        let one_chunk = Stream::new(identity(), [state.clone()]).encode().len() as u64;
        assert_eq!(estimated_size(&identity(), state.len() as u64), one_chunk);
    }

    #[test]
    fn precopy_reads_pause_without_ending() {
        let source = Device::new(vec![9; 10]);
        let mut writer = StreamWriter::new(identity());
        let mut buf = vec![0u8; 4096];
        let n = writer.read(&source, &mut buf, false).unwrap();
        assert!(n < buf.len());
        assert_eq!(writer.read(&source, &mut buf, false).unwrap(), 0);
        assert!(!writer.is_finished());
        let mut bytes = buf[..n].to_vec();
        let m = writer.read(&source, &mut buf, true).unwrap();
        bytes.extend_from_slice(&buf[..m]);
        assert!(writer.is_finished());
        let stream = load(&bytes).unwrap();
        assert_eq!(
            stream.device_data().collect::<Vec<_>>().concat(),
            vec![9; 10]
        );
    }

    #[test]
    fn unknown_optional_records_are_skipped() {
        let stream = sample();
        let bytes = with_record(
            &stream,
            2,
            Record {
                tag: 0x99,
                optional: true,
                payload: vec![0xee; 40],
            },
        );
        let loaded = load(&bytes).unwrap();
        assert_eq!(loaded.encode(), bytes);
        assert_eq!(
            loaded.device_data().collect::<Vec<_>>(),
            stream.device_data().collect::<Vec<_>>()
        );
    }

    #[test]
    fn unknown_mandatory_records_are_refused() {
        let bytes = with_record(
            &sample(),
            2,
            Record {
                tag: 0x99,
                optional: false,
                payload: vec![],
            },
        );
        assert_eq!(
            load(&bytes),
            Err(StreamError::UnknownMandatory {
                index: 2,
                tag: 0x99
            })
        );
    }

    #[test]
    fn corrupt_records_are_refused() {
        let mut bytes = sample().encode();
        let last_data = bytes.len() - 2 * (RECORD_HEADER_SIZE + CHECKSUM_SIZE) - 50;
        bytes[last_data] ^= 1;
        assert!(matches!(
            load(&bytes),
            Err(StreamError::Checksum {
                index: 3,
                tag: TAG_DATA,
                ..
            })
        ));
        let mut flags = sample().encode();
        flags[8] = 2;
        assert!(matches!(
            load(&flags),
            Err(StreamError::ReservedFlags { index: 0, .. })
        ));
        let data_first = Stream::new(identity(), [vec![1]]).encode();
        let header_len = RECORD_HEADER_SIZE
            + CHECKSUM_SIZE
            + u64::from_le_bytes(data_first[0..8].try_into().unwrap()) as usize;
        assert_eq!(
            load(&data_first[header_len..]),
            Err(StreamError::MissingHeader { tag: TAG_DATA })
        );
        let second_header = with_record(&sample(), 1, sample().records()[0].clone());
        assert_eq!(
            load(&second_header),
            Err(StreamError::BadRecord {
                index: 1,
                tag: TAG_HEADER
            })
        );
    }

    #[test]
    fn early_ends_and_trailing_bytes_are_refused() {
        let bytes = sample().encode();
        for cut in [
            0,
            5,
            16,
            40,
            bytes.len() - 1,
            bytes.len() - 20,
            bytes.len() - 24,
        ] {
            assert!(
                matches!(load(&bytes[..cut]), Err(StreamError::Truncated(_))),
                "cut at {cut}"
            );
        }
        let mut long = bytes.clone();
        long.push(0);
        assert_eq!(load(&long), Err(StreamError::TrailingData(1)));
        let mut loader = loader();
        loader.feed(&bytes).unwrap();
        assert_eq!(loader.feed(&[1, 2]), Err(StreamError::TrailingData(2)));
        assert_eq!(loader.feed(&[]), Err(StreamError::TrailingData(2)));
    }

    #[test]
    fn sizes_are_bounded() {
        let limits = StreamLimits {
            max_record: 99,
            max_stream: 1 << 20,
        };
        let mut loader = StreamLoader::new(identity(), limits);
        assert!(matches!(
            loader.feed(&sample().encode()),
            Err(StreamError::RecordTooLarge {
                index: 3,
                size: 100,
                limit: 99,
                ..
            })
        ));
        // Refused from the framing alone, before the payload arrives.
        let mut huge = framing(u64::MAX, 0, TAG_HEADER).to_vec();
        huge.truncate(RECORD_HEADER_SIZE);
        assert!(matches!(
            load(&huge),
            Err(StreamError::RecordTooLarge { index: 0, .. })
        ));
        let small = StreamLimits {
            max_record: 1 << 20,
            max_stream: 300,
        };
        let mut loader = StreamLoader::new(identity(), small);
        assert_eq!(
            loader.feed(&sample().encode()),
            Err(StreamError::StreamTooLarge { limit: 300 })
        );
    }

    #[test]
    fn other_functions_streams_are_refused() {
        let other_backend = StreamIdentity {
            backend: "mlx".into(),
            ..identity()
        };
        let bytes = Stream::new(other_backend, []).encode();
        assert!(matches!(load(&bytes), Err(StreamError::Backend { .. })));
        let other_profile = StreamIdentity {
            profile: "big".into(),
            ..identity()
        };
        let bytes = Stream::new(other_profile, []).encode();
        let err = load(&bytes).unwrap_err();
        assert!(err.to_string().contains("`big`"), "{err}");

        let source = template(&LAYOUT.replace("size = \"16K\"", "size = \"32K\""));
        let from_source = StreamIdentity::new(&source, "scratch", "basic");
        let bytes = Stream::new(from_source.clone(), [vec![1]]).encode();
        let err = load(&bytes).unwrap_err();
        assert!(matches!(&err, StreamError::Layout { differences, .. } if differences.is_empty()));
        assert!(err.to_string().contains(&from_source.fingerprint), "{err}");
        let mut loader = loader().with_source_layout(&source, &template(LAYOUT));
        let err = loader.feed(&bytes).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("bar[0]"), "{text}");
        assert!(text.contains("size 0x8000 mmap [] vs"), "{text}");
        assert_eq!(err.errno(), libc::EINVAL);

        let mut header = identity().encode();
        header[0] = 2;
        let bytes = Stream {
            identity: identity(),
            records: vec![Record {
                tag: TAG_HEADER,
                optional: false,
                payload: header,
            }],
        }
        .encode();
        assert_eq!(
            load(&bytes),
            Err(StreamError::Version {
                found: 2,
                supported: 1
            })
        );
        for bad in [vec![1, 0, 0], vec![1, 0, 0, 0, 9, 0, 0, 0]] {
            let bytes = Stream {
                identity: identity(),
                records: vec![Record {
                    tag: TAG_HEADER,
                    optional: false,
                    payload: bad,
                }],
            }
            .encode();
            assert!(matches!(load(&bytes), Err(StreamError::BadHeader(_))));
        }
    }
}
