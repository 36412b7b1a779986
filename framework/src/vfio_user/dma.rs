//! DMA_MAP (2), DMA_UNMAP (3), and the server-to-client DMA_READ (11) / DMA_WRITE (12).
//!
//! The spec lays DMA_READ/WRITE out as `{address u64, count u64, data}`, and so does QEMU
//! 11.1.3's client (measured: a guest's DMA through it lands byte-exact only in this layout).
//! QEMU 10.1's client (hw/vfio-user/protocol.h, `VFIOUserDMARW`) used `{offset u64, count u32,
//! data}`, its data 12 bytes into the payload and 4 trailing bytes; [`DmaLayout::Qemu`] reads
//! and writes that form. A spec-layout DMA_READ request is understood by both. QEMU answers
//! DMA_WRITE with the header alone.

use bitflags::bitflags;

use super::error::ProtocolError;
use super::wire::{Reader, put_u32, put_u64};
use super::{Limits, Payload};

bitflags! {
    /// DMA_MAP flags.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct DmaMapFlags: u32 {
        /// The server may read the memory.
        const READ = 1 << 0;
        /// The server may write the memory.
        const WRITE = 1 << 1;
    }
}

bitflags! {
    /// DMA_UNMAP flags.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct DmaUnmapFlags: u32 {
        /// VFIO_DMA_UNMAP_FLAG_ALL: unmap every mapping (QEMU sends it); address and size
        /// are then not used.
        const ALL = 1 << 1;
    }
}

/// Size of the DMA_MAP payload.
pub const DMA_MAP_SIZE: u32 = 32;
/// Size of the DMA_UNMAP payload.
pub const DMA_UNMAP_SIZE: u32 = 24;

/// DMA_MAP request (reply: no payload). Comes with 0 or 1 fd; without one the server uses
/// DMA_READ/DMA_WRITE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DmaMap {
    /// Size of the structure (32).
    pub argsz: u32,
    /// Access allowed.
    pub flags: DmaMapFlags,
    /// Offset of the memory in the fd (0 without an fd).
    pub offset: u64,
    /// DMA (guest physical / IOVA) address.
    pub address: u64,
    /// Length in bytes (not 0; `address + size` does not overflow).
    pub size: u64,
}

impl DmaMap {
    /// A mapping of `size` bytes at `address`, found at `offset` in the fd sent along.
    pub fn new(address: u64, size: u64, offset: u64, flags: DmaMapFlags) -> Self {
        Self {
            argsz: DMA_MAP_SIZE,
            flags,
            offset,
            address,
            size,
        }
    }
}

impl Payload for DmaMap {
    fn parse(payload: &[u8], _limits: &Limits) -> Result<Self, ProtocolError> {
        const WHAT: &str = "DMA_MAP";
        let mut r = Reader::new(WHAT, payload);
        let argsz = r.u32()?;
        let raw_flags = r.u32()?;
        let flags = DmaMapFlags::from_bits(raw_flags)
            .ok_or_else(|| ProtocolError::invalid(WHAT, format!("flags {raw_flags:#x}")))?;
        let offset = r.u64()?;
        let address = r.u64()?;
        let size = r.u64()?;
        if size == 0 {
            return Err(ProtocolError::invalid(WHAT, "size 0"));
        }
        if address.checked_add(size).is_none() || offset.checked_add(size).is_none() {
            return Err(ProtocolError::invalid(WHAT, "range overflows"));
        }
        Ok(Self {
            argsz,
            flags,
            offset,
            address,
            size,
        })
    }

    fn encode(&self, out: &mut Vec<u8>) {
        put_u32(out, self.argsz);
        put_u32(out, self.flags.bits());
        put_u64(out, self.offset);
        put_u64(out, self.address);
        put_u64(out, self.size);
    }
}

/// DMA_UNMAP request; the reply echoes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DmaUnmap {
    /// Largest reply payload (24).
    pub argsz: u32,
    /// [`DmaUnmapFlags::ALL`] or nothing.
    pub flags: DmaUnmapFlags,
    /// Address of an earlier mapping.
    pub address: u64,
    /// Its exact size.
    pub size: u64,
}

impl DmaUnmap {
    /// Unmaps the mapping made at `address` with `size`.
    pub fn new(address: u64, size: u64) -> Self {
        Self {
            argsz: DMA_UNMAP_SIZE,
            flags: DmaUnmapFlags::empty(),
            address,
            size,
        }
    }

    /// Unmaps everything (VFIO_DMA_UNMAP_FLAG_ALL).
    pub fn all() -> Self {
        Self {
            flags: DmaUnmapFlags::ALL,
            ..Self::new(0, 0)
        }
    }

    /// Whether this unmaps everything.
    pub fn is_all(&self) -> bool {
        self.flags.contains(DmaUnmapFlags::ALL)
    }
}

impl Payload for DmaUnmap {
    fn parse(payload: &[u8], _limits: &Limits) -> Result<Self, ProtocolError> {
        const WHAT: &str = "DMA_UNMAP";
        let mut r = Reader::new(WHAT, payload);
        let argsz = r.u32()?;
        let raw_flags = r.u32()?;
        let flags = DmaUnmapFlags::from_bits(raw_flags)
            .ok_or_else(|| ProtocolError::invalid(WHAT, format!("flags {raw_flags:#x}")))?;
        let address = r.u64()?;
        let size = r.u64()?;
        Ok(Self {
            argsz,
            flags,
            address,
            size,
        })
    }

    fn encode(&self, out: &mut Vec<u8>) {
        put_u32(out, self.argsz);
        put_u32(out, self.flags.bits());
        put_u64(out, self.address);
        put_u64(out, self.size);
    }
}

/// Where DMA_READ reply data and DMA_WRITE request data sit in the payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DmaLayout {
    /// The spec: `{address u64, count u64, data}`.
    Spec,
    /// QEMU 10.1's client: `{address u64, count u32, data, 4 trailing bytes}`.
    Qemu,
}

fn check_range(what: &'static str, address: u64, count: u64) -> Result<(), ProtocolError> {
    address
        .checked_add(count)
        .map(|_| ())
        .ok_or_else(|| ProtocolError::invalid(what, "range overflows"))
}

/// Reads `{address, count, data}` in the given layout.
fn parse_access<'a>(
    what: &'static str,
    payload: &'a [u8],
    limits: &Limits,
    layout: DmaLayout,
) -> Result<(u64, &'a [u8]), ProtocolError> {
    let mut r = Reader::new(what, payload);
    let address = r.u64()?;
    let data = match layout {
        DmaLayout::Spec => {
            let count = r.u64()?;
            r.counted_data(count, limits.max_data_xfer_size)?
        }
        DmaLayout::Qemu => {
            let count = u64::from(r.u32()?);
            if count > limits.max_data_xfer_size {
                return Err(ProtocolError::too_large(
                    what,
                    count,
                    limits.max_data_xfer_size,
                ));
            }
            let len = usize::try_from(count)
                .map_err(|_| ProtocolError::too_large(what, count, usize::MAX as u64))?;
            let data = r.take(len)?;
            r.take(4)?;
            if r.remaining() != 0 {
                return Err(ProtocolError::invalid(what, "bytes after the data"));
            }
            data
        }
    };
    check_range(what, address, data.len() as u64)?;
    Ok((address, data))
}

fn encode_access(out: &mut Vec<u8>, address: u64, data: &[u8], layout: DmaLayout) {
    put_u64(out, address);
    match layout {
        DmaLayout::Spec => {
            put_u64(out, data.len() as u64);
            out.extend_from_slice(data);
        }
        DmaLayout::Qemu => {
            put_u32(out, super::wire::len_u32(data.len()));
            out.extend_from_slice(data);
            out.extend_from_slice(&[0; 4]);
        }
    }
}

/// DMA_READ request (server to client).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DmaRead {
    /// Client DMA address.
    pub address: u64,
    /// Bytes to read (at most `max_data_xfer_size`).
    pub count: u64,
}

impl Payload for DmaRead {
    fn parse(payload: &[u8], limits: &Limits) -> Result<Self, ProtocolError> {
        const WHAT: &str = "DMA_READ";
        let mut r = Reader::new(WHAT, payload);
        let address = r.u64()?;
        let count = r.u64()?;
        if count > limits.max_data_xfer_size {
            return Err(ProtocolError::too_large(
                WHAT,
                count,
                limits.max_data_xfer_size,
            ));
        }
        check_range(WHAT, address, count)?;
        Ok(Self { address, count })
    }

    fn encode(&self, out: &mut Vec<u8>) {
        put_u64(out, self.address);
        put_u64(out, self.count);
    }
}

/// DMA_READ reply: the data read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DmaReadReply {
    /// Client DMA address.
    pub address: u64,
    /// The bytes (the count on the wire is their length).
    pub data: Vec<u8>,
}

impl DmaReadReply {
    /// Parses a reply laid out as `layout`.
    pub fn parse_layout(
        payload: &[u8],
        limits: &Limits,
        layout: DmaLayout,
    ) -> Result<Self, ProtocolError> {
        let (address, data) = parse_access("DMA_READ reply", payload, limits, layout)?;
        Ok(Self {
            address,
            data: data.to_vec(),
        })
    }

    /// Appends the reply laid out as `layout`.
    pub fn encode_layout(&self, out: &mut Vec<u8>, layout: DmaLayout) {
        encode_access(out, self.address, &self.data, layout);
    }
}

impl Payload for DmaReadReply {
    fn parse(payload: &[u8], limits: &Limits) -> Result<Self, ProtocolError> {
        Self::parse_layout(payload, limits, DmaLayout::Spec)
    }

    fn encode(&self, out: &mut Vec<u8>) {
        self.encode_layout(out, DmaLayout::Spec);
    }
}

/// DMA_WRITE request (server to client).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DmaWrite {
    /// Client DMA address.
    pub address: u64,
    /// The bytes to write (at most `max_data_xfer_size`).
    pub data: Vec<u8>,
}

impl DmaWrite {
    /// Parses a request laid out as `layout`.
    pub fn parse_layout(
        payload: &[u8],
        limits: &Limits,
        layout: DmaLayout,
    ) -> Result<Self, ProtocolError> {
        let (address, data) = parse_access("DMA_WRITE", payload, limits, layout)?;
        Ok(Self {
            address,
            data: data.to_vec(),
        })
    }

    /// Appends the request laid out as `layout`.
    pub fn encode_layout(&self, out: &mut Vec<u8>, layout: DmaLayout) {
        encode_access(out, self.address, &self.data, layout);
    }
}

impl Payload for DmaWrite {
    fn parse(payload: &[u8], limits: &Limits) -> Result<Self, ProtocolError> {
        Self::parse_layout(payload, limits, DmaLayout::Spec)
    }

    fn encode(&self, out: &mut Vec<u8>) {
        self.encode_layout(out, DmaLayout::Spec);
    }
}

/// DMA_WRITE reply. Encoded as `{address u64, count u64}` (libvfio-user's form); parsing also
/// takes the spec table's `{address u64, count u32}` and QEMU's empty payload (address and
/// count 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DmaWriteReply {
    /// Client DMA address.
    pub address: u64,
    /// Bytes written.
    pub count: u64,
}

impl Payload for DmaWriteReply {
    fn parse(payload: &[u8], _limits: &Limits) -> Result<Self, ProtocolError> {
        let mut r = Reader::new("DMA_WRITE reply", payload);
        if payload.is_empty() {
            return Ok(Self {
                address: 0,
                count: 0,
            });
        }
        let address = r.u64()?;
        let count = if payload.len() >= 16 {
            r.u64()?
        } else {
            u64::from(r.u32()?)
        };
        Ok(Self { address, count })
    }

    fn encode(&self, out: &mut Vec<u8>) {
        put_u64(out, self.address);
        put_u64(out, self.count);
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
    fn map_unmap_round_trip_and_layout() {
        let map = DmaMap::new(0x1000, 0x2000, 0x10, DmaMapFlags::READ | DmaMapFlags::WRITE);
        let bytes = map.to_bytes();
        assert_eq!(bytes.len(), 32);
        assert_eq!(&bytes[0..4], &32u32.to_ne_bytes());
        assert_eq!(&bytes[4..8], &3u32.to_ne_bytes());
        assert_eq!(&bytes[16..24], &0x1000u64.to_ne_bytes());
        round_trip(&map);
        round_trip(&DmaUnmap::new(0x1000, 0x2000));
        let all = DmaUnmap::all();
        assert!(all.is_all());
        assert_eq!(&all.to_bytes()[4..8], &2u32.to_ne_bytes());
        round_trip(&all);
    }

    #[test]
    fn map_refusals() {
        let limits = Limits::default();
        let good = DmaMap::new(0x1000, 0x1000, 0, DmaMapFlags::READ).to_bytes();
        for len in 0..32 {
            assert!(matches!(
                DmaMap::parse(&good[..len], &limits),
                Err(ProtocolError::Truncated { .. })
            ));
        }
        let mut bad_flags = good.clone();
        bad_flags[4] = 4;
        assert_eq!(DmaMap::parse(&bad_flags, &limits).unwrap_err().errno(), 22);
        let zero = DmaMap::new(0x1000, 0, 0, DmaMapFlags::READ).to_bytes();
        assert!(DmaMap::parse(&zero, &limits).is_err());
        let wrap = DmaMap::new(u64::MAX, 2, 0, DmaMapFlags::READ).to_bytes();
        assert!(DmaMap::parse(&wrap, &limits).is_err());
        let mut bad_unmap = DmaUnmap::new(0, 1).to_bytes();
        bad_unmap[4] = 1;
        assert!(DmaUnmap::parse(&bad_unmap, &limits).is_err());
    }

    #[test]
    fn read_write_round_trip() {
        round_trip(&DmaRead {
            address: 0x8000,
            count: 64,
        });
        round_trip(&DmaReadReply {
            address: 0x8000,
            data: vec![1, 2, 3],
        });
        round_trip(&DmaWrite {
            address: 0x8000,
            data: vec![9; 17],
        });
        round_trip(&DmaWriteReply {
            address: 0x8000,
            count: 17,
        });
    }

    #[test]
    fn read_write_limits() {
        let limits = Limits {
            max_data_xfer_size: 16,
            ..Limits::default()
        };
        let big = DmaRead {
            address: 0,
            count: 17,
        }
        .to_bytes();
        assert_eq!(DmaRead::parse(&big, &limits).unwrap_err().errno(), 7);
        let big = DmaWrite {
            address: 0,
            data: vec![0; 17],
        }
        .to_bytes();
        assert_eq!(DmaWrite::parse(&big, &limits).unwrap_err().errno(), 7);
        // A count that does not match the data.
        let mut short = DmaWrite {
            address: 0,
            data: vec![0; 8],
        }
        .to_bytes();
        short.pop();
        assert_eq!(DmaWrite::parse(&short, &limits).unwrap_err().errno(), 22);
        // A huge count with no data is refused before anything is allocated.
        let mut huge = Vec::new();
        put_u64(&mut huge, 0);
        put_u64(&mut huge, u64::MAX);
        assert!(DmaReadReply::parse(&huge, &Limits::default()).is_err());
    }

    #[test]
    fn qemu_layout() {
        let limits = Limits::default();
        let write = DmaWrite {
            address: 0x1000,
            data: vec![0xaa, 0xbb, 0xcc, 0xdd, 0xee],
        };
        let mut bytes = Vec::new();
        write.encode_layout(&mut bytes, DmaLayout::Qemu);
        // QEMU: data right after a u32 count, then sizeof padding.
        assert_eq!(bytes.len(), 16 + 5);
        assert_eq!(&bytes[8..12], &5u32.to_ne_bytes());
        assert_eq!(bytes[12], 0xaa);
        assert_eq!(
            DmaWrite::parse_layout(&bytes, &limits, DmaLayout::Qemu).unwrap(),
            write
        );
        let reply = DmaReadReply {
            address: 0x1000,
            data: vec![1; 9],
        };
        let mut bytes = Vec::new();
        reply.encode_layout(&mut bytes, DmaLayout::Qemu);
        assert_eq!(
            DmaReadReply::parse_layout(&bytes, &limits, DmaLayout::Qemu).unwrap(),
            reply
        );
        // The same bytes do not pass as the spec layout.
        assert!(DmaReadReply::parse(&bytes, &limits).is_err());
    }

    #[test]
    fn write_reply_forms() {
        let limits = Limits::default();
        assert_eq!(
            DmaWriteReply::parse(&[], &limits).unwrap(),
            DmaWriteReply {
                address: 0,
                count: 0
            }
        );
        let mut spec_table = Vec::new();
        put_u64(&mut spec_table, 0x40);
        put_u32(&mut spec_table, 8);
        assert_eq!(
            DmaWriteReply::parse(&spec_table, &limits).unwrap(),
            DmaWriteReply {
                address: 0x40,
                count: 8
            }
        );
        assert!(DmaWriteReply::parse(&spec_table[..10], &limits).is_err());
    }
}
