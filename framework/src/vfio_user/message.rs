//! Requests and replies of every command, dispatched on the command number.

use super::access::{
    RegionRead, RegionReadReply, RegionWrite, RegionWriteReply, WriteMulti, WriteMultiReply,
};
use super::device::DeviceInfo;
use super::dma::{DmaMap, DmaRead, DmaReadReply, DmaUnmap, DmaWrite, DmaWriteReply};
use super::error::ProtocolError;
use super::feature::DeviceFeature;
use super::header::Command;
use super::irq::{IrqInfo, SetIrqs};
use super::mig_data::{MigDataRead, MigDataReadReply, MigDataWrite};
use super::region::{IoFdsReply, IoFdsRequest, RegionInfoReply, RegionInfoRequest};
use super::version::Version;
use super::{Limits, Payload};

/// A command message's payload, by command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// VERSION proposal.
    Version(Version),
    /// DMA_MAP (0 or 1 fd with the message).
    DmaMap(DmaMap),
    /// DMA_UNMAP.
    DmaUnmap(DmaUnmap),
    /// DEVICE_GET_INFO.
    DeviceGetInfo(DeviceInfo),
    /// DEVICE_GET_REGION_INFO.
    RegionInfo(RegionInfoRequest),
    /// DEVICE_GET_REGION_IO_FDS.
    RegionIoFds(IoFdsRequest),
    /// DEVICE_GET_IRQ_INFO.
    IrqInfo(IrqInfo),
    /// DEVICE_SET_IRQS (eventfds with the message).
    SetIrqs(SetIrqs),
    /// REGION_READ.
    RegionRead(RegionRead),
    /// REGION_WRITE.
    RegionWrite(RegionWrite),
    /// DMA_READ (server to client).
    DmaRead(DmaRead),
    /// DMA_WRITE (server to client).
    DmaWrite(DmaWrite),
    /// DEVICE_RESET (no payload).
    DeviceReset,
    /// REGION_WRITE_MULTI.
    WriteMulti(WriteMulti),
    /// DEVICE_FEATURE.
    DeviceFeature(DeviceFeature),
    /// MIG_DATA_READ.
    MigDataRead(MigDataRead),
    /// MIG_DATA_WRITE.
    MigDataWrite(MigDataWrite),
}

impl Request {
    /// Parses the payload of a `command` message and checks [`super::rules::check`].
    pub fn parse(command: Command, payload: &[u8], limits: &Limits) -> Result<Self, ProtocolError> {
        let request = Self::parse_layout(command, payload, limits)?;
        super::rules::check(&request)?;
        Ok(request)
    }

    /// Parses like [`Request::parse`], taking the payload: a MIG_DATA_WRITE keeps it as its
    /// data (moved to its front) rather than copying it into a new buffer.
    pub fn parse_owned(
        command: Command,
        payload: Vec<u8>,
        limits: &Limits,
    ) -> Result<Self, ProtocolError> {
        if command != Command::MigDataWrite {
            return Self::parse(command, &payload, limits);
        }
        let request = Self::MigDataWrite(MigDataWrite::from_payload(payload, limits)?);
        super::rules::check(&request)?;
        Ok(request)
    }

    fn parse_layout(
        command: Command,
        payload: &[u8],
        limits: &Limits,
    ) -> Result<Self, ProtocolError> {
        Ok(match command {
            Command::Version => Self::Version(Version::parse(payload, limits)?),
            Command::DmaMap => Self::DmaMap(DmaMap::parse(payload, limits)?),
            Command::DmaUnmap => Self::DmaUnmap(DmaUnmap::parse(payload, limits)?),
            Command::DeviceGetInfo => Self::DeviceGetInfo(DeviceInfo::parse(payload, limits)?),
            Command::DeviceGetRegionInfo => {
                Self::RegionInfo(RegionInfoRequest::parse(payload, limits)?)
            }
            Command::DeviceGetRegionIoFds => {
                Self::RegionIoFds(IoFdsRequest::parse(payload, limits)?)
            }
            Command::DeviceGetIrqInfo => Self::IrqInfo(IrqInfo::parse(payload, limits)?),
            Command::DeviceSetIrqs => Self::SetIrqs(SetIrqs::parse(payload, limits)?),
            Command::RegionRead => Self::RegionRead(RegionRead::parse(payload, limits)?),
            Command::RegionWrite => Self::RegionWrite(RegionWrite::parse(payload, limits)?),
            Command::DmaRead => Self::DmaRead(DmaRead::parse(payload, limits)?),
            Command::DmaWrite => Self::DmaWrite(DmaWrite::parse(payload, limits)?),
            Command::DeviceReset => Self::DeviceReset,
            Command::RegionWriteMulti => Self::WriteMulti(WriteMulti::parse(payload, limits)?),
            Command::DeviceFeature => Self::DeviceFeature(DeviceFeature::parse(payload, limits)?),
            Command::MigDataRead => Self::MigDataRead(MigDataRead::parse(payload, limits)?),
            Command::MigDataWrite => Self::MigDataWrite(MigDataWrite::parse(payload, limits)?),
        })
    }

    /// The command this request belongs to.
    pub fn command(&self) -> Command {
        match self {
            Self::Version(_) => Command::Version,
            Self::DmaMap(_) => Command::DmaMap,
            Self::DmaUnmap(_) => Command::DmaUnmap,
            Self::DeviceGetInfo(_) => Command::DeviceGetInfo,
            Self::RegionInfo(_) => Command::DeviceGetRegionInfo,
            Self::RegionIoFds(_) => Command::DeviceGetRegionIoFds,
            Self::IrqInfo(_) => Command::DeviceGetIrqInfo,
            Self::SetIrqs(_) => Command::DeviceSetIrqs,
            Self::RegionRead(_) => Command::RegionRead,
            Self::RegionWrite(_) => Command::RegionWrite,
            Self::DmaRead(_) => Command::DmaRead,
            Self::DmaWrite(_) => Command::DmaWrite,
            Self::DeviceReset => Command::DeviceReset,
            Self::WriteMulti(_) => Command::RegionWriteMulti,
            Self::DeviceFeature(_) => Command::DeviceFeature,
            Self::MigDataRead(_) => Command::MigDataRead,
            Self::MigDataWrite(_) => Command::MigDataWrite,
        }
    }

    /// Appends the payload.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Self::Version(p) => p.encode(out),
            Self::DmaMap(p) => p.encode(out),
            Self::DmaUnmap(p) => p.encode(out),
            Self::DeviceGetInfo(p) => p.encode(out),
            Self::RegionInfo(p) => p.encode(out),
            Self::RegionIoFds(p) => p.encode(out),
            Self::IrqInfo(p) => p.encode(out),
            Self::SetIrqs(p) => p.encode(out),
            Self::RegionRead(p) => p.encode(out),
            Self::RegionWrite(p) => p.encode(out),
            Self::DmaRead(p) => p.encode(out),
            Self::DmaWrite(p) => p.encode(out),
            Self::DeviceReset => {}
            Self::WriteMulti(p) => p.encode(out),
            Self::DeviceFeature(p) => p.encode(out),
            Self::MigDataRead(p) => p.encode(out),
            Self::MigDataWrite(p) => p.encode(out),
        }
    }
}

/// A successful reply's payload, by command. Replies without payload ignore any bytes
/// sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// VERSION reply.
    Version(Version),
    /// DMA_MAP reply (no payload).
    DmaMap,
    /// DMA_UNMAP reply (the request repeated).
    DmaUnmap(DmaUnmap),
    /// DEVICE_GET_INFO reply.
    DeviceGetInfo(DeviceInfo),
    /// DEVICE_GET_REGION_INFO reply (fd with the message when MMAP).
    RegionInfo(RegionInfoReply),
    /// DEVICE_GET_REGION_IO_FDS reply (fds with the message).
    RegionIoFds(IoFdsReply),
    /// DEVICE_GET_IRQ_INFO reply.
    IrqInfo(IrqInfo),
    /// DEVICE_SET_IRQS reply (no payload).
    SetIrqs,
    /// REGION_READ reply.
    RegionRead(RegionReadReply),
    /// REGION_WRITE reply.
    RegionWrite(RegionWriteReply),
    /// DMA_READ reply (client to server).
    DmaRead(DmaReadReply),
    /// DMA_WRITE reply (client to server).
    DmaWrite(DmaWriteReply),
    /// DEVICE_RESET reply (no payload).
    DeviceReset,
    /// REGION_WRITE_MULTI reply.
    WriteMulti(WriteMultiReply),
    /// DEVICE_FEATURE reply.
    DeviceFeature(DeviceFeature),
    /// MIG_DATA_READ reply.
    MigDataRead(MigDataReadReply),
    /// MIG_DATA_WRITE reply (no payload).
    MigDataWrite,
}

impl Reply {
    /// Parses the payload of a successful reply to `command`.
    pub fn parse(command: Command, payload: &[u8], limits: &Limits) -> Result<Self, ProtocolError> {
        Ok(match command {
            Command::Version => Self::Version(Version::parse(payload, limits)?),
            Command::DmaMap => Self::DmaMap,
            Command::DmaUnmap => Self::DmaUnmap(DmaUnmap::parse(payload, limits)?),
            Command::DeviceGetInfo => Self::DeviceGetInfo(DeviceInfo::parse(payload, limits)?),
            Command::DeviceGetRegionInfo => {
                Self::RegionInfo(RegionInfoReply::parse(payload, limits)?)
            }
            Command::DeviceGetRegionIoFds => Self::RegionIoFds(IoFdsReply::parse(payload, limits)?),
            Command::DeviceGetIrqInfo => Self::IrqInfo(IrqInfo::parse(payload, limits)?),
            Command::DeviceSetIrqs => Self::SetIrqs,
            Command::RegionRead => Self::RegionRead(RegionReadReply::parse(payload, limits)?),
            Command::RegionWrite => Self::RegionWrite(RegionWriteReply::parse(payload, limits)?),
            Command::DmaRead => Self::DmaRead(DmaReadReply::parse(payload, limits)?),
            Command::DmaWrite => Self::DmaWrite(DmaWriteReply::parse(payload, limits)?),
            Command::DeviceReset => Self::DeviceReset,
            Command::RegionWriteMulti => Self::WriteMulti(WriteMultiReply::parse(payload, limits)?),
            Command::DeviceFeature => Self::DeviceFeature(DeviceFeature::parse(payload, limits)?),
            Command::MigDataRead => Self::MigDataRead(MigDataReadReply::parse(payload, limits)?),
            Command::MigDataWrite => Self::MigDataWrite,
        })
    }

    /// The command this reply answers.
    pub fn command(&self) -> Command {
        match self {
            Self::Version(_) => Command::Version,
            Self::DmaMap => Command::DmaMap,
            Self::DmaUnmap(_) => Command::DmaUnmap,
            Self::DeviceGetInfo(_) => Command::DeviceGetInfo,
            Self::RegionInfo(_) => Command::DeviceGetRegionInfo,
            Self::RegionIoFds(_) => Command::DeviceGetRegionIoFds,
            Self::IrqInfo(_) => Command::DeviceGetIrqInfo,
            Self::SetIrqs => Command::DeviceSetIrqs,
            Self::RegionRead(_) => Command::RegionRead,
            Self::RegionWrite(_) => Command::RegionWrite,
            Self::DmaRead(_) => Command::DmaRead,
            Self::DmaWrite(_) => Command::DmaWrite,
            Self::DeviceReset => Command::DeviceReset,
            Self::WriteMulti(_) => Command::RegionWriteMulti,
            Self::DeviceFeature(_) => Command::DeviceFeature,
            Self::MigDataRead(_) => Command::MigDataRead,
            Self::MigDataWrite => Command::MigDataWrite,
        }
    }

    /// Appends the payload.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Self::Version(p) => p.encode(out),
            Self::DmaUnmap(p) => p.encode(out),
            Self::DeviceGetInfo(p) => p.encode(out),
            Self::RegionInfo(p) => p.encode(out),
            Self::RegionIoFds(p) => p.encode(out),
            Self::IrqInfo(p) => p.encode(out),
            Self::RegionRead(p) => p.encode(out),
            Self::RegionWrite(p) => p.encode(out),
            Self::DmaRead(p) => p.encode(out),
            Self::DmaWrite(p) => p.encode(out),
            Self::WriteMulti(p) => p.encode(out),
            Self::DeviceFeature(p) => p.encode(out),
            Self::MigDataRead(p) => p.encode(out),
            Self::DmaMap | Self::SetIrqs | Self::DeviceReset | Self::MigDataWrite => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vfio_user::access::WriteMultiEntry;
    use crate::vfio_user::dma::DmaMapFlags;
    use crate::vfio_user::feature::{FEATURE_MIGRATION, FeatureOps};
    use crate::vfio_user::region::{RegionCap, RegionFlags, SparseMmapArea};
    use crate::vfio_user::version::Capabilities;

    fn requests() -> Vec<Request> {
        vec![
            Request::Version(Version {
                major: 0,
                minor: 0,
                capabilities: Capabilities::qemu_proposal(),
            }),
            Request::DmaMap(DmaMap::new(0, 0x1000, 0, DmaMapFlags::READ)),
            Request::DmaUnmap(DmaUnmap::all()),
            Request::DeviceGetInfo(DeviceInfo::request()),
            Request::RegionInfo(RegionInfoRequest {
                argsz: 32,
                index: 7,
            }),
            Request::RegionIoFds(IoFdsRequest {
                argsz: 16,
                flags: 0,
                index: 0,
                count: 0,
            }),
            Request::IrqInfo(IrqInfo::request(2)),
            Request::SetIrqs(SetIrqs::eventfds(2, 0, 3)),
            Request::RegionRead(RegionRead {
                offset: 0,
                region: 7,
                count: 4,
            }),
            Request::RegionWrite(RegionWrite {
                offset: 4,
                region: 7,
                data: vec![6, 0],
            }),
            Request::DmaRead(DmaRead {
                address: 0x1000,
                count: 8,
            }),
            Request::DmaWrite(DmaWrite {
                address: 0x1000,
                data: vec![1; 8],
            }),
            Request::DeviceReset,
            Request::WriteMulti(WriteMulti {
                entries: vec![WriteMultiEntry::new(0, 8, &[1, 2]).unwrap()],
            }),
            Request::DeviceFeature(DeviceFeature::probe(FEATURE_MIGRATION, FeatureOps::GET)),
            Request::MigDataRead(MigDataRead::new(512)),
            Request::MigDataWrite(MigDataWrite::new(vec![3; 5])),
        ]
    }

    fn replies() -> Vec<Reply> {
        vec![
            Reply::Version(Version::default()),
            Reply::DmaMap,
            Reply::DmaUnmap(DmaUnmap::new(0x1000, 0x1000)),
            Reply::DeviceGetInfo(DeviceInfo {
                argsz: 16,
                flags: crate::vfio_user::device::DeviceFlags::PCI,
                num_regions: 9,
                num_irqs: 5,
            }),
            Reply::RegionInfo(RegionInfoReply::new(
                2,
                RegionFlags::READ | RegionFlags::MMAP,
                0x2000,
                0,
                vec![RegionCap::SparseMmap(vec![SparseMmapArea {
                    offset: 0x1000,
                    size: 0x1000,
                }])],
            )),
            Reply::RegionIoFds(IoFdsReply::new(0, vec![])),
            Reply::IrqInfo(IrqInfo::request(0)),
            Reply::SetIrqs,
            Reply::RegionRead(RegionReadReply {
                offset: 0,
                region: 7,
                data: vec![1, 2, 3, 4],
            }),
            Reply::RegionWrite(RegionWriteReply {
                offset: 4,
                region: 7,
                count: 2,
            }),
            Reply::DmaRead(DmaReadReply {
                address: 0x1000,
                data: vec![7; 3],
            }),
            Reply::DmaWrite(DmaWriteReply {
                address: 0x1000,
                count: 3,
            }),
            Reply::DeviceReset,
            Reply::WriteMulti(WriteMultiReply { wr_cnt: 1 }),
            Reply::DeviceFeature(
                DeviceFeature::get(FEATURE_MIGRATION, 8).reply_with(vec![1, 0, 0, 0, 0, 0, 0, 0]),
            ),
            Reply::MigDataRead(MigDataReadReply::new(vec![9; 4])),
            Reply::MigDataWrite,
        ]
    }

    #[test]
    fn every_command_round_trips() {
        let limits = Limits::default();
        let requests = requests();
        let replies = replies();
        assert_eq!(requests.len(), Command::ALL.len());
        assert_eq!(replies.len(), Command::ALL.len());
        for (command, request) in Command::ALL.into_iter().zip(&requests) {
            assert_eq!(request.command(), command);
            let mut bytes = Vec::new();
            request.encode(&mut bytes);
            assert_eq!(&Request::parse(command, &bytes, &limits).unwrap(), request);
        }
        for (command, reply) in Command::ALL.into_iter().zip(&replies) {
            assert_eq!(reply.command(), command);
            let mut bytes = Vec::new();
            reply.encode(&mut bytes);
            assert_eq!(&Reply::parse(command, &bytes, &limits).unwrap(), reply);
        }
    }

    #[test]
    fn truncated_requests_are_einval() {
        let limits = Limits::default();
        for request in requests() {
            let mut bytes = Vec::new();
            request.encode(&mut bytes);
            // Every fixed-size prefix is refused (VERSION's 4-byte prefix is a valid bare
            // version, and a reset has no payload).
            let fixed = match request.command() {
                Command::DeviceReset => 0,
                Command::DeviceGetRegionInfo => 12,
                _ => bytes.len(),
            };
            for len in 0..fixed {
                if matches!(request.command(), Command::Version) && len == 4 {
                    continue;
                }
                let err = Request::parse(request.command(), &bytes[..len], &limits).unwrap_err();
                assert_eq!(err.errno(), 22, "{:?} cut to {len}", request.command());
            }
        }
    }
}
