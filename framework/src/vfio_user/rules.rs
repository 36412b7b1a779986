//! The rules VFIO (linux/vfio.h and its ioctl handlers) and the vfio-user spec state for a
//! request's fields beyond their layout, in one place: the smallest `argsz` of each request,
//! the fields that must be 0, and how many fds a command may carry. [`super::Request::parse`]
//! applies [`check`]; the server applies [`max_fds`] to the message.

use super::device::DEVICE_INFO_SIZE;
use super::dma::{DMA_MAP_SIZE, DMA_UNMAP_SIZE};
use super::error::ProtocolError;
use super::feature::DEVICE_FEATURE_SIZE;
use super::irq::{IRQ_INFO_SIZE, SET_IRQS_SIZE, SetIrqsFlags};
use super::message::Request;
use super::mig_data::MIG_DATA_SIZE;
use super::region::REGION_INFO_SIZE;
use super::wire::len_u32;

/// Size of the DEVICE_GET_REGION_IO_FDS request and of its reply's fixed part.
const IO_FDS_SIZE: u32 = 16;

/// The request's `argsz` and the least VFIO accepts for it: the fixed structure, plus the
/// data the request announces (SET_IRQS with DATA_BOOL); `None` for requests without one.
fn argsz(request: &Request) -> Option<(&'static str, u32, u32)> {
    Some(match request {
        Request::DmaMap(m) => ("DMA_MAP", m.argsz, DMA_MAP_SIZE),
        Request::DmaUnmap(u) => ("DMA_UNMAP", u.argsz, DMA_UNMAP_SIZE),
        Request::DeviceGetInfo(i) => ("DEVICE_GET_INFO", i.argsz, DEVICE_INFO_SIZE),
        Request::RegionInfo(r) => ("DEVICE_GET_REGION_INFO", r.argsz, REGION_INFO_SIZE),
        Request::RegionIoFds(r) => ("DEVICE_GET_REGION_IO_FDS", r.argsz, IO_FDS_SIZE),
        Request::IrqInfo(i) => ("DEVICE_GET_IRQ_INFO", i.argsz, IRQ_INFO_SIZE),
        Request::SetIrqs(s) => (
            "DEVICE_SET_IRQS",
            s.argsz,
            SET_IRQS_SIZE.saturating_add(len_u32(s.data.len())),
        ),
        Request::DeviceFeature(f) => ("DEVICE_FEATURE", f.argsz, DEVICE_FEATURE_SIZE),
        Request::MigDataRead(r) => ("MIG_DATA_READ", r.argsz, MIG_DATA_SIZE),
        Request::MigDataWrite(w) => ("MIG_DATA_WRITE", w.argsz, MIG_DATA_SIZE),
        Request::Version(_)
        | Request::RegionRead(_)
        | Request::RegionWrite(_)
        | Request::DmaRead(_)
        | Request::DmaWrite(_)
        | Request::DeviceReset
        | Request::WriteMulti(_) => return None,
    })
}

/// Checks the rules a parsed request must follow; EINVAL otherwise.
pub fn check(request: &Request) -> Result<(), ProtocolError> {
    if let Some((what, argsz, min)) = argsz(request)
        && argsz < min
    {
        return Err(ProtocolError::invalid(
            what,
            format!("argsz {argsz} is below {min}"),
        ));
    }
    match request {
        // VFIO_DMA_UNMAP_FLAG_ALL unmaps everything: iova and size must be 0.
        Request::DmaUnmap(u) if u.is_all() && (u.address != 0 || u.size != 0) => Err(
            ProtocolError::invalid("DMA_UNMAP", "FLAG_ALL with an address or size"),
        ),
        // The request's flags and count are reserved (the server says which fds exist).
        Request::RegionIoFds(r) if r.flags != 0 || r.count != 0 => Err(ProtocolError::invalid(
            "DEVICE_GET_REGION_IO_FDS",
            format!("flags {:#x}, count {} (both must be 0)", r.flags, r.count),
        )),
        _ => Ok(()),
    }
}

/// How many fds a request may come with: one for DMA_MAP, one per vector for SET_IRQS with
/// DATA_EVENTFD, none otherwise.
pub fn max_fds(request: &Request) -> usize {
    match request {
        Request::DmaMap(_) => 1,
        Request::SetIrqs(s) if s.flags.contains(SetIrqsFlags::DATA_EVENTFD) => s.count as usize,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vfio_user::device::DeviceInfo;
    use crate::vfio_user::dma::{DmaMap, DmaMapFlags, DmaUnmap};
    use crate::vfio_user::feature::{DeviceFeature, FEATURE_MIGRATION, FeatureOps};
    use crate::vfio_user::header::Command;
    use crate::vfio_user::irq::{IrqInfo, SetIrqs};
    use crate::vfio_user::mig_data::{MigDataRead, MigDataWrite};
    use crate::vfio_user::region::{IoFdsRequest, RegionInfoRequest};
    use crate::vfio_user::{Limits, Payload};

    /// Every request with an `argsz`, at its minimum.
    fn at_minimum() -> Vec<(Command, Vec<u8>)> {
        let b = |p: &dyn Fn(&mut Vec<u8>)| {
            let mut out = Vec::new();
            p(&mut out);
            out
        };
        vec![
            (
                Command::DmaMap,
                b(&|o| DmaMap::new(0, 0x1000, 0, DmaMapFlags::READ).encode(o)),
            ),
            (
                Command::DmaUnmap,
                b(&|o| DmaUnmap::new(0, 0x1000).encode(o)),
            ),
            (
                Command::DeviceGetInfo,
                b(&|o| DeviceInfo::request().encode(o)),
            ),
            (
                Command::DeviceGetRegionInfo,
                b(&|o| {
                    RegionInfoRequest {
                        argsz: 32,
                        index: 0,
                    }
                    .encode(o)
                }),
            ),
            (
                Command::DeviceGetRegionIoFds,
                b(&|o| {
                    IoFdsRequest {
                        argsz: 16,
                        flags: 0,
                        index: 0,
                        count: 0,
                    }
                    .encode(o)
                }),
            ),
            (
                Command::DeviceGetIrqInfo,
                b(&|o| IrqInfo::request(0).encode(o)),
            ),
            (
                Command::DeviceSetIrqs,
                b(&|o| SetIrqs::eventfds(2, 0, 1).encode(o)),
            ),
            (
                Command::DeviceFeature,
                b(&|o| DeviceFeature::probe(FEATURE_MIGRATION, FeatureOps::GET).encode(o)),
            ),
            (Command::MigDataRead, b(&|o| MigDataRead::new(0).encode(o))),
            (
                Command::MigDataWrite,
                b(&|o| MigDataWrite::new(vec![]).encode(o)),
            ),
        ]
    }

    #[test]
    fn argsz_below_the_fixed_structure_is_einval() {
        let limits = Limits::default();
        for (command, bytes) in at_minimum() {
            Request::parse(command, &bytes, &limits)
                .unwrap_or_else(|e| panic!("{command:?} at its minimum: {e}"));
            let argsz = u32::from_ne_bytes(bytes[..4].try_into().unwrap());
            let mut low = bytes.clone();
            low[..4].copy_from_slice(&(argsz - 1).to_ne_bytes());
            let err = Request::parse(command, &low, &limits).unwrap_err();
            assert_eq!(err.errno(), libc::EINVAL, "{command:?} argsz {}", argsz - 1);
        }
        // SET_IRQS with bool data needs room for it.
        let mut set = SetIrqs::with_bools(SetIrqsFlags::ACTION_MASK, 2, 0, vec![true; 4]);
        set.argsz = SET_IRQS_SIZE + 3;
        let err = Request::parse(Command::DeviceSetIrqs, &set.to_bytes(), &limits).unwrap_err();
        assert_eq!(err.errno(), libc::EINVAL);
    }

    #[test]
    fn reserved_fields_must_be_zero() {
        let limits = Limits::default();
        let mut all = DmaUnmap::all();
        all.address = 0x1000;
        let err = Request::parse(Command::DmaUnmap, &all.to_bytes(), &limits).unwrap_err();
        assert_eq!(err.errno(), libc::EINVAL);
        for (flags, count) in [(1, 0), (0, 1)] {
            let r = IoFdsRequest {
                argsz: 16,
                flags,
                index: 0,
                count,
            };
            let err =
                Request::parse(Command::DeviceGetRegionIoFds, &r.to_bytes(), &limits).unwrap_err();
            assert_eq!(err.errno(), libc::EINVAL);
        }
    }

    #[test]
    fn fds_per_request() {
        assert_eq!(
            max_fds(&Request::DmaMap(DmaMap::new(0, 1, 0, DmaMapFlags::READ))),
            1
        );
        assert_eq!(max_fds(&Request::SetIrqs(SetIrqs::eventfds(2, 0, 5))), 5);
        assert_eq!(max_fds(&Request::SetIrqs(SetIrqs::disable(2))), 0);
        assert_eq!(max_fds(&Request::DeviceReset), 0);
    }
}
