//! REGION_READ (9), REGION_WRITE (10) and REGION_WRITE_MULTI (15).

use super::error::ProtocolError;
use super::wire::{Reader, len_u32, put_u32, put_u64};
use super::{Limits, Payload};

fn check_range(what: &'static str, offset: u64, count: u64) -> Result<(), ProtocolError> {
    offset
        .checked_add(count)
        .map(|_| ())
        .ok_or_else(|| ProtocolError::invalid(what, "offset + count overflows"))
}

/// REGION_READ request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegionRead {
    /// Offset in the region.
    pub offset: u64,
    /// Region index.
    pub region: u32,
    /// Bytes to read (at most `max_data_xfer_size`).
    pub count: u32,
}

impl Payload for RegionRead {
    fn parse(payload: &[u8], limits: &Limits) -> Result<Self, ProtocolError> {
        const WHAT: &str = "REGION_READ";
        let mut r = Reader::new(WHAT, payload);
        let offset = r.u64()?;
        let region = r.u32()?;
        let count = r.u32()?;
        if u64::from(count) > limits.max_data_xfer_size {
            return Err(ProtocolError::too_large(
                WHAT,
                count.into(),
                limits.max_data_xfer_size,
            ));
        }
        check_range(WHAT, offset, count.into())?;
        Ok(Self {
            offset,
            region,
            count,
        })
    }

    fn encode(&self, out: &mut Vec<u8>) {
        put_u64(out, self.offset);
        put_u32(out, self.region);
        put_u32(out, self.count);
    }
}

/// Reads `{offset u64, region u32, count u32, data}`.
fn parse_with_data<'a>(
    what: &'static str,
    payload: &'a [u8],
    limits: &Limits,
) -> Result<(u64, u32, &'a [u8]), ProtocolError> {
    let mut r = Reader::new(what, payload);
    let offset = r.u64()?;
    let region = r.u32()?;
    let count = r.u32()?;
    let data = r.counted_data(count.into(), limits.max_data_xfer_size)?;
    check_range(what, offset, count.into())?;
    Ok((offset, region, data))
}

fn encode_with_data(out: &mut Vec<u8>, offset: u64, region: u32, data: &[u8]) {
    put_u64(out, offset);
    put_u32(out, region);
    put_u32(out, len_u32(data.len()));
    out.extend_from_slice(data);
}

/// REGION_READ reply: the bytes read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionReadReply {
    /// Offset in the region.
    pub offset: u64,
    /// Region index.
    pub region: u32,
    /// The bytes (their length is the count on the wire).
    pub data: Vec<u8>,
}

impl Payload for RegionReadReply {
    fn parse(payload: &[u8], limits: &Limits) -> Result<Self, ProtocolError> {
        let (offset, region, data) = parse_with_data("REGION_READ reply", payload, limits)?;
        Ok(Self {
            offset,
            region,
            data: data.to_vec(),
        })
    }

    fn encode(&self, out: &mut Vec<u8>) {
        encode_with_data(out, self.offset, self.region, &self.data);
    }
}

/// REGION_WRITE request (sent with No_reply for posted writes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionWrite {
    /// Offset in the region.
    pub offset: u64,
    /// Region index.
    pub region: u32,
    /// The bytes to write (at most `max_data_xfer_size`).
    pub data: Vec<u8>,
}

impl Payload for RegionWrite {
    fn parse(payload: &[u8], limits: &Limits) -> Result<Self, ProtocolError> {
        let (offset, region, data) = parse_with_data("REGION_WRITE", payload, limits)?;
        Ok(Self {
            offset,
            region,
            data: data.to_vec(),
        })
    }

    fn encode(&self, out: &mut Vec<u8>) {
        encode_with_data(out, self.offset, self.region, &self.data);
    }
}

/// REGION_WRITE reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegionWriteReply {
    /// Offset in the region.
    pub offset: u64,
    /// Region index.
    pub region: u32,
    /// Bytes written.
    pub count: u32,
}

impl Payload for RegionWriteReply {
    fn parse(payload: &[u8], _limits: &Limits) -> Result<Self, ProtocolError> {
        let mut r = Reader::new("REGION_WRITE reply", payload);
        Ok(Self {
            offset: r.u64()?,
            region: r.u32()?,
            count: r.u32()?,
        })
    }

    fn encode(&self, out: &mut Vec<u8>) {
        put_u64(out, self.offset);
        put_u32(out, self.region);
        put_u32(out, self.count);
    }
}

/// Largest write one REGION_WRITE_MULTI entry can carry.
pub const WRITE_MULTI_DATA: usize = 8;
/// Size of one REGION_WRITE_MULTI entry.
pub const WRITE_MULTI_ENTRY_SIZE: usize = 24;

/// One write of a REGION_WRITE_MULTI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteMultiEntry {
    /// Offset in the region.
    pub offset: u64,
    /// Region index.
    pub region: u32,
    /// Bytes to write, at most 8.
    pub count: u32,
    /// The bytes, in the first `count` places (the rest is kept as received).
    pub data: [u8; WRITE_MULTI_DATA],
}

impl WriteMultiEntry {
    /// An entry writing `bytes` (at most 8) at `offset` of `region`.
    pub fn new(region: u32, offset: u64, bytes: &[u8]) -> Result<Self, ProtocolError> {
        if bytes.len() > WRITE_MULTI_DATA {
            return Err(ProtocolError::too_large(
                "REGION_WRITE_MULTI entry",
                bytes.len() as u64,
                WRITE_MULTI_DATA as u64,
            ));
        }
        let mut data = [0u8; WRITE_MULTI_DATA];
        data[..bytes.len()].copy_from_slice(bytes);
        Ok(Self {
            offset,
            region,
            count: len_u32(bytes.len()),
            data,
        })
    }

    /// The bytes to write.
    pub fn bytes(&self) -> &[u8] {
        let len = (self.count as usize).min(WRITE_MULTI_DATA);
        &self.data[..len]
    }
}

/// REGION_WRITE_MULTI request: writes of at most 8 bytes, coalesced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteMulti {
    /// The writes, in order.
    pub entries: Vec<WriteMultiEntry>,
}

impl Payload for WriteMulti {
    fn parse(payload: &[u8], limits: &Limits) -> Result<Self, ProtocolError> {
        const WHAT: &str = "REGION_WRITE_MULTI";
        let mut r = Reader::new(WHAT, payload);
        let wr_cnt = r.u64()?;
        if wr_cnt > limits.max_write_multi {
            return Err(ProtocolError::too_large(
                WHAT,
                wr_cnt,
                limits.max_write_multi,
            ));
        }
        let needed = wr_cnt.saturating_mul(WRITE_MULTI_ENTRY_SIZE as u64);
        if needed > r.remaining() as u64 {
            return Err(ProtocolError::Truncated {
                what: WHAT,
                needed: usize::try_from(needed.saturating_add(8)).unwrap_or(usize::MAX),
                available: payload.len(),
            });
        }
        let mut entries = Vec::with_capacity(wr_cnt as usize);
        for _ in 0..wr_cnt {
            let offset = r.u64()?;
            let region = r.u32()?;
            let count = r.u32()?;
            let data = r.bytes8()?;
            if count as usize > WRITE_MULTI_DATA {
                return Err(ProtocolError::invalid(
                    WHAT,
                    format!("entry count {count} above {WRITE_MULTI_DATA}"),
                ));
            }
            check_range(WHAT, offset, count.into())?;
            entries.push(WriteMultiEntry {
                offset,
                region,
                count,
                data,
            });
        }
        Ok(Self { entries })
    }

    fn encode(&self, out: &mut Vec<u8>) {
        put_u64(out, self.entries.len() as u64);
        for e in &self.entries {
            put_u64(out, e.offset);
            put_u32(out, e.region);
            put_u32(out, e.count);
            out.extend_from_slice(&e.data);
        }
    }
}

/// REGION_WRITE_MULTI reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteMultiReply {
    /// Writes completed.
    pub wr_cnt: u64,
}

impl Payload for WriteMultiReply {
    fn parse(payload: &[u8], _limits: &Limits) -> Result<Self, ProtocolError> {
        let mut r = Reader::new("REGION_WRITE_MULTI reply", payload);
        Ok(Self { wr_cnt: r.u64()? })
    }

    fn encode(&self, out: &mut Vec<u8>) {
        put_u64(out, self.wr_cnt);
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
    fn read_write_round_trip_and_layout() {
        let read = RegionRead {
            offset: 0x10,
            region: 7,
            count: 4,
        };
        let bytes = read.to_bytes();
        assert_eq!(bytes.len(), 16);
        assert_eq!(&bytes[8..12], &7u32.to_ne_bytes());
        assert_eq!(&bytes[12..16], &4u32.to_ne_bytes());
        round_trip(&read);
        let reply = RegionReadReply {
            offset: 0x10,
            region: 7,
            data: vec![0x86, 0x80, 0x10, 0x10],
        };
        assert_eq!(reply.to_bytes().len(), 20);
        round_trip(&reply);
        round_trip(&RegionWrite {
            offset: 4,
            region: 0,
            data: vec![1, 2],
        });
        round_trip(&RegionWriteReply {
            offset: 4,
            region: 0,
            count: 2,
        });
    }

    #[test]
    fn read_write_refusals() {
        let limits = Limits {
            max_data_xfer_size: 8,
            ..Limits::default()
        };
        let big = RegionRead {
            offset: 0,
            region: 0,
            count: 9,
        }
        .to_bytes();
        assert_eq!(RegionRead::parse(&big, &limits).unwrap_err().errno(), 7);
        let wrap = RegionRead {
            offset: u64::MAX,
            region: 0,
            count: 2,
        }
        .to_bytes();
        assert_eq!(RegionRead::parse(&wrap, &limits).unwrap_err().errno(), 22);
        let write = RegionWrite {
            offset: 0,
            region: 0,
            data: vec![0; 9],
        }
        .to_bytes();
        assert_eq!(RegionWrite::parse(&write, &limits).unwrap_err().errno(), 7);
        let write = RegionWrite {
            offset: 0,
            region: 0,
            data: vec![0; 4],
        }
        .to_bytes();
        for len in 0..write.len() {
            assert_eq!(
                RegionWrite::parse(&write[..len], &limits)
                    .unwrap_err()
                    .errno(),
                22
            );
        }
        let mut long = write.clone();
        long.push(0);
        assert_eq!(RegionWrite::parse(&long, &limits).unwrap_err().errno(), 22);
    }

    #[test]
    fn write_multi_round_trip_and_layout() {
        let multi = WriteMulti {
            entries: vec![
                WriteMultiEntry::new(0, 0x100, &[1, 2, 3, 4]).unwrap(),
                WriteMultiEntry::new(2, 0x8, &[9; 8]).unwrap(),
            ],
        };
        let bytes = multi.to_bytes();
        assert_eq!(bytes.len(), 8 + 2 * 24);
        assert_eq!(&bytes[0..8], &2u64.to_ne_bytes());
        assert_eq!(&bytes[8 + 12..8 + 16], &4u32.to_ne_bytes());
        round_trip(&multi);
        assert_eq!(multi.entries[0].bytes(), &[1, 2, 3, 4]);
        round_trip(&WriteMultiReply { wr_cnt: 2 });
        assert!(WriteMultiEntry::new(0, 0, &[0; 9]).is_err());
    }

    #[test]
    fn write_multi_refusals() {
        let limits = Limits {
            max_write_multi: 4,
            ..Limits::default()
        };
        let mut huge = Vec::new();
        put_u64(&mut huge, u64::MAX);
        assert_eq!(WriteMulti::parse(&huge, &limits).unwrap_err().errno(), 7);
        let mut short = Vec::new();
        put_u64(&mut short, 3);
        short.extend_from_slice(&[0; 24 * 2]);
        assert_eq!(WriteMulti::parse(&short, &limits).unwrap_err().errno(), 22);
        let mut wide = WriteMulti {
            entries: vec![WriteMultiEntry::new(0, 0, &[1]).unwrap()],
        }
        .to_bytes();
        wide[8 + 12..8 + 16].copy_from_slice(&9u32.to_ne_bytes());
        assert_eq!(WriteMulti::parse(&wide, &limits).unwrap_err().errno(), 22);
    }
}
