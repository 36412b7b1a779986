//! MIG_DATA_READ (17) and MIG_DATA_WRITE (18): the migration data stream.
//!
//! Sizes are bounded by `max_data_xfer_size` like the other data transfers.

use super::error::ProtocolError;
use super::wire::{Reader, len_u32, put_u32, put_u64};
use super::{Limits, Payload};

/// Size of the fixed part of MIG_DATA_READ/WRITE (`argsz`, `size`).
pub const MIG_DATA_SIZE: u32 = 8;

fn check_size(what: &'static str, size: u32, limits: &Limits) -> Result<(), ProtocolError> {
    if u64::from(size) > limits.max_data_xfer_size {
        return Err(ProtocolError::too_large(
            what,
            size.into(),
            limits.max_data_xfer_size,
        ));
    }
    Ok(())
}

/// MIG_DATA_READ request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MigDataRead {
    /// Largest reply payload (8 + `size`).
    pub argsz: u32,
    /// Bytes wanted.
    pub size: u32,
}

impl MigDataRead {
    /// A request for up to `size` bytes.
    pub fn new(size: u32) -> Self {
        Self {
            argsz: MIG_DATA_SIZE.saturating_add(size),
            size,
        }
    }
}

impl Payload for MigDataRead {
    fn parse(payload: &[u8], limits: &Limits) -> Result<Self, ProtocolError> {
        const WHAT: &str = "MIG_DATA_READ";
        let mut r = Reader::new(WHAT, payload);
        let argsz = r.u32()?;
        let size = r.u32()?;
        check_size(WHAT, size, limits)?;
        Ok(Self { argsz, size })
    }

    fn encode(&self, out: &mut Vec<u8>) {
        put_u32(out, self.argsz);
        put_u32(out, self.size);
    }
}

/// MIG_DATA_READ reply; fewer bytes than asked mean the end of the data (for now, in
/// pre-copy).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigDataReadReply {
    /// Size of the reply payload (8 + data).
    pub argsz: u32,
    /// The data (its length is `size` on the wire).
    pub data: Vec<u8>,
}

impl MigDataReadReply {
    /// Bytes before the data in the encoded reply (argsz, size).
    pub const PREFIX: usize = MIG_DATA_SIZE as usize;

    /// Writes argsz and size into the first [`MigDataReadReply::PREFIX`] bytes of `payload`,
    /// whose data follows them: the reply encoded in place, without copying the data.
    pub fn encode_prefix(payload: &mut [u8]) {
        let data = payload.len() - Self::PREFIX;
        let argsz = len_u32(payload.len());
        payload[..4].copy_from_slice(&argsz.to_le_bytes());
        payload[4..Self::PREFIX].copy_from_slice(&len_u32(data).to_le_bytes());
    }

    /// Checks an encoded reply as [`Payload::parse`] does and returns where its data is in
    /// `payload`, without copying it.
    pub fn data_range(
        payload: &[u8],
        limits: &Limits,
    ) -> Result<std::ops::Range<usize>, ProtocolError> {
        let (_, data) = parse_with_data("MIG_DATA_READ reply", payload, limits)?;
        Ok(Self::PREFIX..Self::PREFIX + data.len())
    }

    /// A reply carrying `data`.
    pub fn new(data: Vec<u8>) -> Self {
        Self {
            argsz: len_u32(data.len().saturating_add(MIG_DATA_SIZE as usize)),
            data,
        }
    }
}

fn parse_with_data<'a>(
    what: &'static str,
    payload: &'a [u8],
    limits: &Limits,
) -> Result<(u32, &'a [u8]), ProtocolError> {
    let mut r = Reader::new(what, payload);
    let argsz = r.u32()?;
    let size = r.u32()?;
    let data = r.counted_data(size.into(), limits.max_data_xfer_size)?;
    Ok((argsz, data))
}

fn encode_with_data(out: &mut Vec<u8>, argsz: u32, data: &[u8]) {
    put_u32(out, argsz);
    put_u32(out, len_u32(data.len()));
    out.extend_from_slice(data);
}

impl Payload for MigDataReadReply {
    fn parse(payload: &[u8], limits: &Limits) -> Result<Self, ProtocolError> {
        let (argsz, data) = parse_with_data("MIG_DATA_READ reply", payload, limits)?;
        Ok(Self {
            argsz,
            data: data.to_vec(),
        })
    }

    fn encode(&self, out: &mut Vec<u8>) {
        encode_with_data(out, self.argsz, &self.data);
    }
}

/// MIG_DATA_WRITE request (reply: no payload).
#[derive(Debug, Clone)]
pub struct MigDataWrite {
    /// Largest reply payload.
    pub argsz: u32,
    /// The data from `start` on (before it: the fixed part of a payload taken as it came,
    /// see [`MigDataWrite::from_payload`]).
    buffer: Vec<u8>,
    start: usize,
}

impl PartialEq for MigDataWrite {
    fn eq(&self, other: &Self) -> bool {
        self.argsz == other.argsz && self.data() == other.data()
    }
}

impl Eq for MigDataWrite {}

impl MigDataWrite {
    /// The data (its length is `size` on the wire).
    pub fn data(&self) -> &[u8] {
        &self.buffer[self.start..]
    }

    /// The buffer the data is in, for reuse.
    pub fn into_buffer(self) -> Vec<u8> {
        self.buffer
    }

    /// The fixed part (`argsz`, `size`) of the request writing `len` bytes, which the data
    /// follows on the wire.
    pub fn prefix(len: usize) -> [u8; MIG_DATA_SIZE as usize] {
        let mut out = [0u8; MIG_DATA_SIZE as usize];
        out[..4].copy_from_slice(&MIG_DATA_SIZE.to_ne_bytes());
        out[4..].copy_from_slice(&len_u32(len).to_ne_bytes());
        out
    }

    /// Parses `payload` as [`Payload::parse`] does, keeping it as the data's buffer: nothing
    /// is copied or moved.
    pub fn from_payload(mut payload: Vec<u8>, limits: &Limits) -> Result<Self, ProtocolError> {
        let (argsz, data) = parse_with_data("MIG_DATA_WRITE", &payload, limits)?;
        let start = MIG_DATA_SIZE as usize;
        payload.truncate(start + data.len());
        Ok(Self {
            argsz,
            buffer: payload,
            start,
        })
    }

    /// A request writing `data`.
    pub fn new(data: Vec<u8>) -> Self {
        Self {
            argsz: MIG_DATA_SIZE,
            buffer: data,
            start: 0,
        }
    }
}

/// Size of a MIG_DATA_READ or MIG_DATA_WRITE request naming bytes in the shared buffer
/// (`argsz`, `size`, `offset`).
pub const MIG_DATA_SHARED_SIZE: u32 = 16;

/// A MIG_DATA_READ or MIG_DATA_WRITE request on a connection that registered a shared buffer
/// (`mig_data_shared`, [`super::shared_buf`]): `size` bytes at `offset` in the buffer, which
/// a read fills (its reply is [`MigDataSharedReply`]) and a write takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MigDataShared {
    /// Size of the payload (16).
    pub argsz: u32,
    /// Bytes wanted (read) or given (write).
    pub size: u32,
    /// Where they are in the shared buffer.
    pub offset: u64,
}

impl MigDataShared {
    /// A request naming `size` bytes at `offset`.
    pub fn new(offset: u64, size: u32) -> Self {
        Self {
            argsz: MIG_DATA_SHARED_SIZE,
            size,
            offset,
        }
    }
}

impl Payload for MigDataShared {
    /// Refuses any other length than 16, an `argsz` other than 16 (which tells this form from
    /// an inline request of the same length) and a `size` above `max_data_xfer_size`
    /// (whether the bytes lie within the buffer is the buffer's check).
    fn parse(payload: &[u8], limits: &Limits) -> Result<Self, ProtocolError> {
        const WHAT: &str = "MIG_DATA in the shared buffer";
        let mut r = Reader::new(WHAT, payload);
        let argsz = r.u32()?;
        let size = r.u32()?;
        let offset = r.u64()?;
        if !r.rest().is_empty() {
            return Err(ProtocolError::invalid(
                WHAT,
                "inline bytes beside the shared buffer",
            ));
        }
        if argsz != MIG_DATA_SHARED_SIZE {
            return Err(ProtocolError::invalid(
                WHAT,
                format!("argsz {argsz} is not {MIG_DATA_SHARED_SIZE}"),
            ));
        }
        check_size(WHAT, size, limits)?;
        Ok(Self {
            argsz,
            size,
            offset,
        })
    }

    fn encode(&self, out: &mut Vec<u8>) {
        put_u32(out, self.argsz);
        put_u32(out, self.size);
        put_u64(out, self.offset);
    }
}

/// The MIG_DATA_READ reply to a [`MigDataShared`] request: `argsz` and `size` only, the
/// server having written `size` bytes into the shared buffer at the request's offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MigDataSharedReply {
    /// Size of the payload (8).
    pub argsz: u32,
    /// Bytes written into the shared buffer.
    pub size: u32,
}

impl MigDataSharedReply {
    /// The reply stating `size` bytes.
    pub fn new(size: u32) -> Self {
        Self {
            argsz: MIG_DATA_SIZE,
            size,
        }
    }
}

impl Payload for MigDataSharedReply {
    /// Refuses inline bytes after the fixed part and a `size` above `max_data_xfer_size`.
    fn parse(payload: &[u8], limits: &Limits) -> Result<Self, ProtocolError> {
        const WHAT: &str = "MIG_DATA_READ reply in the shared buffer";
        let mut r = Reader::new(WHAT, payload);
        let argsz = r.u32()?;
        let size = r.u32()?;
        if !r.rest().is_empty() {
            return Err(ProtocolError::invalid(
                WHAT,
                "inline bytes beside the shared buffer",
            ));
        }
        if argsz < MIG_DATA_SIZE {
            return Err(ProtocolError::invalid(
                WHAT,
                format!("argsz {argsz} is below {MIG_DATA_SIZE}"),
            ));
        }
        check_size(WHAT, size, limits)?;
        Ok(Self { argsz, size })
    }

    fn encode(&self, out: &mut Vec<u8>) {
        put_u32(out, self.argsz);
        put_u32(out, self.size);
    }
}

impl Payload for MigDataWrite {
    fn parse(payload: &[u8], limits: &Limits) -> Result<Self, ProtocolError> {
        let (argsz, data) = parse_with_data("MIG_DATA_WRITE", payload, limits)?;
        Ok(Self {
            argsz,
            buffer: data.to_vec(),
            start: 0,
        })
    }

    fn encode(&self, out: &mut Vec<u8>) {
        encode_with_data(out, self.argsz, self.data());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip<T: Payload + PartialEq + std::fmt::Debug>(value: &T) {
        assert_eq!(
            &T::parse(&value.to_bytes(), &Limits::default()).unwrap(),
            value
        );
    }

    #[test]
    fn round_trips_and_layout() {
        let read = MigDataRead::new(4096);
        assert_eq!(read.to_bytes().len(), 8);
        round_trip(&read);
        let reply = MigDataReadReply::new(vec![5; 10]);
        let bytes = reply.to_bytes();
        assert_eq!(&bytes[0..4], &18u32.to_ne_bytes());
        assert_eq!(&bytes[4..8], &10u32.to_ne_bytes());
        round_trip(&reply);
        round_trip(&MigDataReadReply::new(Vec::new()));
        round_trip(&MigDataWrite::new(vec![1, 2, 3]));
    }

    #[test]
    fn in_place_encodings_match_the_owned_ones() {
        let data: Vec<u8> = (0..100).collect();
        let mut payload = vec![0xff; MigDataReadReply::PREFIX];
        payload.extend_from_slice(&data);
        MigDataReadReply::encode_prefix(&mut payload);
        assert_eq!(payload, MigDataReadReply::new(data.clone()).to_bytes());
        let range = MigDataReadReply::data_range(&payload, &Limits::default()).unwrap();
        assert_eq!(&payload[range], &data[..]);
        let mut lying = payload.clone();
        lying[4..8].copy_from_slice(&200u32.to_ne_bytes());
        assert!(MigDataReadReply::data_range(&lying, &Limits::default()).is_err());

        let encoded = MigDataWrite::new(data.clone()).to_bytes();
        assert_eq!(
            [&MigDataWrite::prefix(data.len())[..], &data].concat(),
            encoded
        );
        let memory = encoded.clone();
        let at = memory.as_ptr().wrapping_add(MIG_DATA_SIZE as usize);
        let taken = MigDataWrite::from_payload(memory, &Limits::default()).unwrap();
        assert_eq!(
            taken,
            MigDataWrite::parse(&encoded, &Limits::default()).unwrap()
        );
        // Taken where it came: not copied, not moved.
        assert_eq!(taken.data().as_ptr(), at);
        assert_eq!(taken.data(), &data[..]);
    }

    #[test]
    fn a_write_taken_in_place_is_refused_as_a_parsed_one_is() {
        let limits = Limits {
            max_data_xfer_size: 16,
            ..Limits::default()
        };
        let mut lying = MigDataWrite::new(vec![1; 4]).to_bytes();
        lying[4..8].copy_from_slice(&8u32.to_ne_bytes());
        let big = MigDataWrite::new(vec![0; 17]).to_bytes();
        for bad in [lying, big, vec![0; 7]] {
            assert_eq!(
                MigDataWrite::from_payload(bad.clone(), &limits)
                    .unwrap_err()
                    .errno(),
                MigDataWrite::parse(&bad, &limits).unwrap_err().errno()
            );
        }
    }

    #[test]
    fn shared_reply() {
        let limits = Limits {
            max_data_xfer_size: 16,
            ..Limits::default()
        };
        round_trip(&MigDataSharedReply::new(16));
        assert_eq!(MigDataSharedReply::new(3).to_bytes().len(), 8);
        let too_big = MigDataSharedReply::new(17).to_bytes();
        assert_eq!(
            MigDataSharedReply::parse(&too_big, &limits)
                .unwrap_err()
                .errno(),
            7
        );
        let mut inline = MigDataSharedReply::new(1).to_bytes();
        inline.push(0);
        assert!(MigDataSharedReply::parse(&inline, &limits).is_err());
        let small_argsz = MigDataSharedReply { argsz: 4, size: 1 }.to_bytes();
        assert!(MigDataSharedReply::parse(&small_argsz, &limits).is_err());
    }

    #[test]
    fn shared_requests() {
        let limits = Limits {
            max_data_xfer_size: 16,
            ..Limits::default()
        };
        let request = MigDataShared::new(1 << 40, 16);
        assert_eq!(request.to_bytes().len(), 16);
        assert_eq!(
            MigDataShared::parse(&request.to_bytes(), &limits).unwrap(),
            request
        );
        let too_big = MigDataShared::new(0, 17).to_bytes();
        assert_eq!(
            MigDataShared::parse(&too_big, &limits).unwrap_err().errno(),
            7
        );
        let mut inline = request.to_bytes();
        inline.push(0);
        assert!(MigDataShared::parse(&inline, &limits).is_err());
        assert!(MigDataShared::parse(&request.to_bytes()[..12], &limits).is_err());
        // An inline write of 8 bytes has the same length.
        let inline = MigDataWrite::new(vec![0; 8]).to_bytes();
        assert_eq!(inline.len(), 16);
        assert!(MigDataShared::parse(&inline, &limits).is_err());
    }

    #[test]
    fn refusals() {
        let limits = Limits {
            max_data_xfer_size: 16,
            ..Limits::default()
        };
        assert_eq!(
            MigDataRead::parse(&MigDataRead::new(17).to_bytes(), &limits)
                .unwrap_err()
                .errno(),
            7
        );
        let big = MigDataWrite::new(vec![0; 17]).to_bytes();
        assert_eq!(MigDataWrite::parse(&big, &limits).unwrap_err().errno(), 7);
        let mut lying = MigDataWrite::new(vec![0; 4]).to_bytes();
        lying[4..8].copy_from_slice(&8u32.to_ne_bytes());
        assert_eq!(
            MigDataWrite::parse(&lying, &limits).unwrap_err().errno(),
            22
        );
        assert!(MigDataReadReply::parse(&[0; 7], &limits).is_err());
    }
}
