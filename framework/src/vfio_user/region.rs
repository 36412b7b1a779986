//! DEVICE_GET_REGION_INFO (5) with its capability chain, and DEVICE_GET_REGION_IO_FDS (6).
//!
//! Capabilities follow `struct vfio_info_cap_header {u16 id, u16 version, u32 next}` from
//! linux/vfio.h; `next` and `cap_offset` count from the start of the region info structure
//! (the payload), and 0 ends the chain.

use bitflags::bitflags;

use super::error::ProtocolError;
use super::wire::{Reader, put_u16, put_u32, put_u64};
use super::{Limits, Payload};

/// Size of `struct vfio_region_info`, the fixed part of the reply.
pub const REGION_INFO_SIZE: u32 = 32;
/// Capability id of VFIO_REGION_INFO_CAP_SPARSE_MMAP (version 1).
pub const CAP_SPARSE_MMAP: u16 = 1;
/// Capability id of VFIO_REGION_INFO_CAP_TYPE (version 1).
pub const CAP_TYPE: u16 = 2;
/// Capability id of VFIO_REGION_INFO_CAP_MSIX_MAPPABLE (version 1).
pub const CAP_MSIX_MAPPABLE: u16 = 3;

const CAP_HEADER_SIZE: usize = 8;
const WHAT: &str = "DEVICE_GET_REGION_INFO";
const WHAT_CAP: &str = "region capability";

bitflags! {
    /// Region flags (VFIO_REGION_INFO_FLAG_*). Unknown bits are kept.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct RegionFlags: u32 {
        /// The client may read the region.
        const READ = 1 << 0;
        /// The client may write the region.
        const WRITE = 1 << 1;
        /// The client may mmap the fd sent with the reply.
        const MMAP = 1 << 2;
        /// The reply has capabilities.
        const CAPS = 1 << 3;
    }
}

/// DEVICE_GET_REGION_INFO request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegionInfoRequest {
    /// Largest reply payload the client takes (at least 32).
    pub argsz: u32,
    /// Region index.
    pub index: u32,
}

impl Payload for RegionInfoRequest {
    fn parse(payload: &[u8], _limits: &Limits) -> Result<Self, ProtocolError> {
        let mut r = Reader::new(WHAT, payload);
        let argsz = r.u32()?;
        let _flags = r.u32()?;
        let index = r.u32()?;
        Ok(Self { argsz, index })
    }

    fn encode(&self, out: &mut Vec<u8>) {
        put_u32(out, self.argsz);
        put_u32(out, 0);
        put_u32(out, self.index);
        put_u32(out, 0);
        put_u64(out, 0);
        put_u64(out, 0);
    }
}

/// One mmappable area of a region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SparseMmapArea {
    /// Offset in the region (added to the region's mmap offset).
    pub offset: u64,
    /// Length.
    pub size: u64,
}

/// A region capability.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegionCap {
    /// VFIO_REGION_INFO_CAP_SPARSE_MMAP: only these areas may be mmapped.
    SparseMmap(Vec<SparseMmapArea>),
    /// VFIO_REGION_INFO_CAP_TYPE: a device-specific region.
    Type {
        /// Region type.
        kind: u32,
        /// Region subtype.
        subtype: u32,
    },
    /// VFIO_REGION_INFO_CAP_MSIX_MAPPABLE: the MSI-X table may be mmapped too.
    MsixMappable,
    /// Any other capability (or another version of a known one), kept as bytes.
    Other {
        /// Capability id.
        id: u16,
        /// Capability version.
        version: u16,
        /// The bytes after the capability header.
        data: Vec<u8>,
    },
}

impl RegionCap {
    fn id_version(&self) -> (u16, u16) {
        match self {
            Self::SparseMmap(_) => (CAP_SPARSE_MMAP, 1),
            Self::Type { .. } => (CAP_TYPE, 1),
            Self::MsixMappable => (CAP_MSIX_MAPPABLE, 1),
            Self::Other { id, version, .. } => (*id, *version),
        }
    }

    /// Bytes after the capability header.
    fn body_len(&self) -> usize {
        match self {
            Self::SparseMmap(areas) => 8 + 16 * areas.len(),
            Self::Type { .. } => 8,
            Self::MsixMappable => 0,
            Self::Other { data, .. } => data.len(),
        }
    }

    fn encode_body(&self, out: &mut Vec<u8>) {
        match self {
            Self::SparseMmap(areas) => {
                put_u32(out, super::wire::len_u32(areas.len()));
                put_u32(out, 0);
                for area in areas {
                    put_u64(out, area.offset);
                    put_u64(out, area.size);
                }
            }
            Self::Type { kind, subtype } => {
                put_u32(out, *kind);
                put_u32(out, *subtype);
            }
            Self::MsixMappable => {}
            Self::Other { data, .. } => out.extend_from_slice(data),
        }
    }

    fn parse_body(id: u16, version: u16, body: &[u8]) -> Result<Self, ProtocolError> {
        let mut r = Reader::new(WHAT_CAP, body);
        Ok(match (id, version) {
            (CAP_SPARSE_MMAP, 1) => {
                let nr_areas = r.u32()?;
                let _reserved = r.u32()?;
                // Refuse a count the bytes do not hold before allocating for it.
                let needed = u64::from(nr_areas) * 16;
                if needed > r.remaining() as u64 {
                    return Err(ProtocolError::Truncated {
                        what: WHAT_CAP,
                        needed: (8 + needed).try_into().unwrap_or(usize::MAX),
                        available: body.len(),
                    });
                }
                let mut areas = Vec::with_capacity(nr_areas as usize);
                for _ in 0..nr_areas {
                    areas.push(SparseMmapArea {
                        offset: r.u64()?,
                        size: r.u64()?,
                    });
                }
                Self::SparseMmap(areas)
            }
            (CAP_TYPE, 1) => Self::Type {
                kind: r.u32()?,
                subtype: r.u32()?,
            },
            (CAP_MSIX_MAPPABLE, 1) => Self::MsixMappable,
            _ => Self::Other {
                id,
                version,
                data: body.to_vec(),
            },
        })
    }
}

/// DEVICE_GET_REGION_INFO reply. With [`RegionFlags::MMAP`] the message carries the fd to
/// mmap.
///
/// The argsz rule: `argsz` is the size of the full reply. When the client's `argsz` is too
/// small for the capabilities, the reply holds the fixed structure only, with the needed
/// `argsz`, `cap_offset` 0 and [`RegionFlags::CAPS`] still set (as the kernel does); see
/// [`RegionInfoReply::reply_for`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionInfoReply {
    /// Size of the full reply, capabilities included.
    pub argsz: u32,
    /// Region flags.
    pub flags: RegionFlags,
    /// Region index.
    pub index: u32,
    /// Region size.
    pub size: u64,
    /// mmap offset in the fd (base of sparse areas).
    pub offset: u64,
    /// Capabilities in chain order; empty in a truncated reply.
    pub caps: Vec<RegionCap>,
}

impl RegionInfoReply {
    /// A full reply: sets [`RegionFlags::CAPS`] when there are capabilities, and `argsz`.
    pub fn new(
        index: u32,
        flags: RegionFlags,
        size: u64,
        offset: u64,
        caps: Vec<RegionCap>,
    ) -> Self {
        let mut reply = Self {
            argsz: 0,
            flags: if caps.is_empty() {
                flags
            } else {
                flags | RegionFlags::CAPS
            },
            index,
            size,
            offset,
            caps,
        };
        reply.argsz = reply.full_size();
        reply
    }

    /// Size of the full reply payload.
    pub fn full_size(&self) -> u32 {
        let caps: usize = self
            .caps
            .iter()
            .map(|c| CAP_HEADER_SIZE + c.body_len())
            .sum();
        super::wire::len_u32(REGION_INFO_SIZE as usize + caps)
    }

    /// The reply to a request with `client_argsz`: complete if it fits, else the fixed
    /// structure with the needed `argsz` (the argsz rule) and without CAPS: QEMU's vfio-user
    /// client refuses a reply that claims capabilities it does not carry (the kernel keeps
    /// the flag; libvfio-user does not), and asks again with the larger `argsz`.
    pub fn reply_for(&self, client_argsz: u32) -> Self {
        let full = self.full_size();
        if client_argsz >= full {
            Self {
                argsz: full,
                ..self.clone()
            }
        } else {
            Self {
                argsz: full,
                flags: self.flags - RegionFlags::CAPS,
                caps: Vec::new(),
                ..self.clone()
            }
        }
    }

    /// Whether this reply left capabilities out because the request's `argsz` was too small
    /// (whether or not it kept the CAPS flag, as the kernel does).
    pub fn is_truncated(&self) -> bool {
        self.caps.is_empty() && self.argsz > REGION_INFO_SIZE
    }

    /// The sparse mmap areas, if the region has that capability.
    pub fn sparse_areas(&self) -> Option<&[SparseMmapArea]> {
        self.caps.iter().find_map(|c| match c {
            RegionCap::SparseMmap(areas) => Some(areas.as_slice()),
            _ => None,
        })
    }
}

impl Payload for RegionInfoReply {
    fn parse(payload: &[u8], _limits: &Limits) -> Result<Self, ProtocolError> {
        let mut r = Reader::new(WHAT, payload);
        let argsz = r.u32()?;
        let flags = RegionFlags::from_bits_retain(r.u32()?);
        let index = r.u32()?;
        let cap_offset = r.u32()? as usize;
        let size = r.u64()?;
        let offset = r.u64()?;
        let mut caps = Vec::new();
        // A chain that starts past the payload is a truncated reply (some servers keep
        // cap_offset when they truncate).
        if flags.contains(RegionFlags::CAPS) && cap_offset != 0 && cap_offset < payload.len() {
            if cap_offset < REGION_INFO_SIZE as usize {
                return Err(ProtocolError::invalid(
                    WHAT,
                    format!("cap_offset {cap_offset} inside the fixed structure"),
                ));
            }
            let mut at = cap_offset;
            loop {
                let mut h = Reader::new(WHAT_CAP, payload.get(at..).unwrap_or_default());
                let id = h.u16()?;
                let version = h.u16()?;
                let next = h.u32()? as usize;
                let body_start = at + CAP_HEADER_SIZE;
                let body_end = if next == 0 {
                    payload.len()
                } else if next < body_start {
                    return Err(ProtocolError::invalid(
                        WHAT_CAP,
                        format!("next {next} does not move past the capability at {at}"),
                    ));
                } else if next >= payload.len() {
                    return Err(ProtocolError::Truncated {
                        what: WHAT_CAP,
                        needed: next.saturating_add(CAP_HEADER_SIZE),
                        available: payload.len(),
                    });
                } else {
                    next
                };
                let body = payload.get(body_start..body_end).unwrap_or_default();
                caps.push(RegionCap::parse_body(id, version, body)?);
                if next == 0 {
                    break;
                }
                at = next;
            }
        }
        Ok(Self {
            argsz,
            flags,
            index,
            size,
            offset,
            caps,
        })
    }

    fn encode(&self, out: &mut Vec<u8>) {
        put_u32(out, self.argsz);
        put_u32(out, self.flags.bits());
        put_u32(out, self.index);
        put_u32(
            out,
            if self.caps.is_empty() {
                0
            } else {
                REGION_INFO_SIZE
            },
        );
        put_u64(out, self.size);
        put_u64(out, self.offset);
        let mut at = REGION_INFO_SIZE as usize;
        for (i, cap) in self.caps.iter().enumerate() {
            let end = at + CAP_HEADER_SIZE + cap.body_len();
            let next = if i + 1 == self.caps.len() { 0 } else { end };
            let (id, version) = cap.id_version();
            put_u16(out, id);
            put_u16(out, version);
            put_u32(out, super::wire::len_u32(next));
            cap.encode_body(out);
            at = end;
        }
    }
}

/// VFIO_USER_IO_FD_TYPE_IOEVENTFD.
pub const IO_FD_TYPE_IOEVENTFD: u32 = 0;
/// VFIO_USER_IO_FD_TYPE_IOREGIONFD.
pub const IO_FD_TYPE_IOREGIONFD: u32 = 1;
/// Size of one sub-region entry.
pub const IO_FD_SUB_REGION_SIZE: usize = 40;
/// Size of the fixed part of DEVICE_GET_REGION_IO_FDS.
pub const IO_FDS_SIZE: u32 = 16;

/// DEVICE_GET_REGION_IO_FDS request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IoFdsRequest {
    /// Largest reply payload the client takes.
    pub argsz: u32,
    /// Must be 0.
    pub flags: u32,
    /// Region index.
    pub index: u32,
    /// Must be 0.
    pub count: u32,
}

impl Payload for IoFdsRequest {
    fn parse(payload: &[u8], _limits: &Limits) -> Result<Self, ProtocolError> {
        let mut r = Reader::new("DEVICE_GET_REGION_IO_FDS", payload);
        Ok(Self {
            argsz: r.u32()?,
            flags: r.u32()?,
            index: r.u32()?,
            count: r.u32()?,
        })
    }

    fn encode(&self, out: &mut Vec<u8>) {
        put_u32(out, self.argsz);
        put_u32(out, self.flags);
        put_u32(out, self.index);
        put_u32(out, self.count);
    }
}

/// One sub-region served through an fd (ioeventfd or ioregionfd).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IoFdSubRegion {
    /// Offset in the region.
    pub offset: u64,
    /// Length (0: any access size).
    pub size: u64,
    /// Index of the fd among the message's fds.
    pub fd_index: u32,
    /// [`IO_FD_TYPE_IOEVENTFD`] or [`IO_FD_TYPE_IOREGIONFD`].
    pub kind: u32,
    /// KVM_IOEVENTFD_FLAG_* or KVM_IOREGION_* flags.
    pub flags: u32,
    /// `datamatch` (ioeventfd) or `user_data` (ioregionfd).
    pub data: u64,
}

/// DEVICE_GET_REGION_IO_FDS reply; the message carries the fds the entries index.
///
/// `count` is the number of sub-regions the server has; `sub_regions` holds those that fit
/// in the client's `argsz` (all, unless the reply is truncated).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IoFdsReply {
    /// Size of the full reply.
    pub argsz: u32,
    /// 0.
    pub flags: u32,
    /// Region index.
    pub index: u32,
    /// Number of sub-regions.
    pub count: u32,
    /// The sub-regions present in this reply.
    pub sub_regions: Vec<IoFdSubRegion>,
}

impl IoFdsReply {
    /// A full reply.
    pub fn new(index: u32, sub_regions: Vec<IoFdSubRegion>) -> Self {
        let count = super::wire::len_u32(sub_regions.len());
        Self {
            argsz: super::wire::len_u32(
                IO_FDS_SIZE as usize + IO_FD_SUB_REGION_SIZE * sub_regions.len(),
            ),
            flags: 0,
            index,
            count,
            sub_regions,
        }
    }

    /// The reply to a request with `client_argsz`: complete if it fits, else the fixed part
    /// with the needed `argsz` and `count` (the argsz rule).
    pub fn reply_for(&self, client_argsz: u32) -> Self {
        if client_argsz >= self.argsz {
            self.clone()
        } else {
            Self {
                sub_regions: Vec::new(),
                ..self.clone()
            }
        }
    }
}

impl Payload for IoFdsReply {
    fn parse(payload: &[u8], _limits: &Limits) -> Result<Self, ProtocolError> {
        let mut r = Reader::new("DEVICE_GET_REGION_IO_FDS reply", payload);
        let argsz = r.u32()?;
        let flags = r.u32()?;
        let index = r.u32()?;
        let count = r.u32()?;
        let present = (r.remaining() / IO_FD_SUB_REGION_SIZE).min(count as usize);
        let mut sub_regions = Vec::with_capacity(present);
        for _ in 0..present {
            let offset = r.u64()?;
            let size = r.u64()?;
            let fd_index = r.u32()?;
            let kind = r.u32()?;
            let flags = r.u32()?;
            let _padding = r.u32()?;
            let data = r.u64()?;
            sub_regions.push(IoFdSubRegion {
                offset,
                size,
                fd_index,
                kind,
                flags,
                data,
            });
        }
        Ok(Self {
            argsz,
            flags,
            index,
            count,
            sub_regions,
        })
    }

    fn encode(&self, out: &mut Vec<u8>) {
        put_u32(out, self.argsz);
        put_u32(out, self.flags);
        put_u32(out, self.index);
        put_u32(out, self.count);
        for s in &self.sub_regions {
            put_u64(out, s.offset);
            put_u64(out, s.size);
            put_u32(out, s.fd_index);
            put_u32(out, s.kind);
            put_u32(out, s.flags);
            put_u32(out, 0);
            put_u64(out, s.data);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> RegionInfoReply {
        RegionInfoReply::new(
            0,
            RegionFlags::READ | RegionFlags::WRITE | RegionFlags::MMAP,
            0x4000,
            0x10000,
            vec![
                RegionCap::SparseMmap(vec![
                    SparseMmapArea {
                        offset: 0,
                        size: 0x1000,
                    },
                    SparseMmapArea {
                        offset: 0x3000,
                        size: 0x1000,
                    },
                ]),
                RegionCap::MsixMappable,
                RegionCap::Type {
                    kind: 1 << 31,
                    subtype: 7,
                },
                RegionCap::Other {
                    id: 99,
                    version: 3,
                    data: vec![1, 2, 3],
                },
            ],
        )
    }

    #[test]
    fn request_round_trip() {
        let req = RegionInfoRequest {
            argsz: 32,
            index: crate::pci::region::CONFIG_REGION,
        };
        let bytes = req.to_bytes();
        assert_eq!(bytes.len(), 32);
        assert_eq!(
            RegionInfoRequest::parse(&bytes, &Limits::default()).unwrap(),
            req
        );
        assert!(RegionInfoRequest::parse(&bytes[..11], &Limits::default()).is_err());
    }

    #[test]
    fn reply_round_trip_and_chain_layout() {
        let reply = sample();
        assert!(reply.flags.contains(RegionFlags::CAPS));
        let bytes = reply.to_bytes();
        assert_eq!(bytes.len() as u32, reply.argsz);
        assert_eq!(reply.argsz, 32 + (8 + 8 + 32) + 8 + (8 + 8) + (8 + 3));
        // cap_offset, then the sparse cap header {id 1, version 1, next}.
        assert_eq!(&bytes[12..16], &32u32.to_ne_bytes());
        assert_eq!(&bytes[32..34], &1u16.to_ne_bytes());
        assert_eq!(&bytes[34..36], &1u16.to_ne_bytes());
        assert_eq!(&bytes[36..40], &80u32.to_ne_bytes());
        assert_eq!(&bytes[40..44], &2u32.to_ne_bytes());
        let parsed = RegionInfoReply::parse(&bytes, &Limits::default()).unwrap();
        assert_eq!(parsed, reply);
        assert_eq!(parsed.sparse_areas().unwrap().len(), 2);
        assert!(!parsed.is_truncated());
    }

    #[test]
    fn argsz_too_small_gives_needed_size_and_truncated_payload() {
        let reply = sample();
        let full = reply.full_size();
        let short = reply.reply_for(REGION_INFO_SIZE);
        let bytes = short.to_bytes();
        assert_eq!(bytes.len(), REGION_INFO_SIZE as usize);
        assert_eq!(&bytes[0..4], &full.to_ne_bytes());
        assert_eq!(&bytes[12..16], &0u32.to_ne_bytes());
        let parsed = RegionInfoReply::parse(&bytes, &Limits::default()).unwrap();
        assert!(parsed.is_truncated());
        assert_eq!(parsed.argsz, full);
        assert!(parsed.caps.is_empty());
        assert!(parsed.flags.contains(RegionFlags::MMAP));
        assert!(
            !parsed.flags.contains(RegionFlags::CAPS),
            "QEMU refuses CAPS without capabilities"
        );
        // A kernel-style short reply (CAPS kept, cap_offset 0) reads as truncated too.
        let mut kernel = bytes.clone();
        let flags = (short.flags | RegionFlags::CAPS).bits();
        kernel[4..8].copy_from_slice(&flags.to_ne_bytes());
        assert!(
            RegionInfoReply::parse(&kernel, &Limits::default())
                .unwrap()
                .is_truncated()
        );
        // Enough room: the full reply.
        assert_eq!(reply.reply_for(full), reply);
        assert_eq!(reply.reply_for(u32::MAX), reply);
        // A server that keeps cap_offset while truncating is read the same way.
        let mut kept = bytes.clone();
        kept[12..16].copy_from_slice(&32u32.to_ne_bytes());
        assert_eq!(
            RegionInfoReply::parse(&kept, &Limits::default()).unwrap(),
            parsed
        );
    }

    #[test]
    fn malformed_chains_are_refused() {
        let limits = Limits::default();
        let bytes = sample().to_bytes();
        for len in 0..32 {
            assert!(RegionInfoReply::parse(&bytes[..len], &limits).is_err());
        }
        // A chain cut in the middle of the sparse areas.
        assert!(RegionInfoReply::parse(&bytes[..60], &limits).is_err());
        // A loop: next pointing back at itself.
        let mut looped = bytes.clone();
        looped[36..40].copy_from_slice(&32u32.to_ne_bytes());
        assert_eq!(
            RegionInfoReply::parse(&looped, &limits)
                .unwrap_err()
                .errno(),
            22
        );
        // next beyond the payload.
        let mut far = bytes.clone();
        far[36..40].copy_from_slice(&4000u32.to_ne_bytes());
        assert!(RegionInfoReply::parse(&far, &limits).is_err());
        // cap_offset inside the fixed part.
        let mut inside = bytes.clone();
        inside[12..16].copy_from_slice(&8u32.to_ne_bytes());
        assert!(RegionInfoReply::parse(&inside, &limits).is_err());
        // nr_areas far beyond the bytes present is refused without allocating.
        let mut many = RegionInfoReply::new(
            1,
            RegionFlags::READ,
            0x1000,
            0,
            vec![RegionCap::SparseMmap(vec![])],
        )
        .to_bytes();
        many[40..44].copy_from_slice(&u32::MAX.to_ne_bytes());
        assert!(matches!(
            RegionInfoReply::parse(&many, &limits),
            Err(ProtocolError::Truncated { .. })
        ));
    }

    #[test]
    fn io_fds_round_trip_and_truncation() {
        let limits = Limits::default();
        let req = IoFdsRequest {
            argsz: 16,
            flags: 0,
            index: 0,
            count: 0,
        };
        assert_eq!(IoFdsRequest::parse(&req.to_bytes(), &limits).unwrap(), req);
        let reply = IoFdsReply::new(
            0,
            vec![
                IoFdSubRegion {
                    offset: 0x100,
                    size: 4,
                    fd_index: 0,
                    kind: IO_FD_TYPE_IOEVENTFD,
                    flags: 1,
                    data: 0xdead,
                },
                IoFdSubRegion {
                    offset: 0x200,
                    size: 0,
                    fd_index: 1,
                    kind: IO_FD_TYPE_IOREGIONFD,
                    flags: 2,
                    data: 7,
                },
            ],
        );
        let bytes = reply.to_bytes();
        assert_eq!(bytes.len(), 16 + 80);
        assert_eq!(reply.argsz, 96);
        assert_eq!(IoFdsReply::parse(&bytes, &limits).unwrap(), reply);
        let short = reply.reply_for(16);
        let parsed = IoFdsReply::parse(&short.to_bytes(), &limits).unwrap();
        assert_eq!(
            (parsed.argsz, parsed.count, parsed.sub_regions.len()),
            (96, 2, 0)
        );
        assert!(IoFdsReply::parse(&bytes[..15], &limits).is_err());
    }
}
