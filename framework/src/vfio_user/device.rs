//! DEVICE_GET_INFO (4). DEVICE_RESET (13) has no payload in either direction.

use bitflags::bitflags;

use super::error::ProtocolError;
use super::wire::{Reader, put_u32};
use super::{Limits, Payload};

bitflags! {
    /// Device flags (VFIO_DEVICE_FLAGS_*). Unknown bits are kept.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct DeviceFlags: u32 {
        /// The device supports DEVICE_RESET.
        const RESET = 1 << 0;
        /// The device is a PCI device.
        const PCI = 1 << 1;
    }
}

/// Size of the DEVICE_GET_INFO payload.
pub const DEVICE_INFO_SIZE: u32 = 16;

/// DEVICE_GET_INFO request and reply (the request has only `argsz` set).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceInfo {
    /// Request: largest reply payload; reply: size of the full reply (16).
    pub argsz: u32,
    /// Device flags.
    pub flags: DeviceFlags,
    /// Number of regions (at least 9 for PCI: BARs, ROM, config, VGA).
    pub num_regions: u32,
    /// Number of IRQ indexes (5 for PCI: INTx, MSI, MSI-X, ERR, REQ).
    pub num_irqs: u32,
}

impl DeviceInfo {
    /// The request.
    pub fn request() -> Self {
        Self {
            argsz: DEVICE_INFO_SIZE,
            flags: DeviceFlags::empty(),
            num_regions: 0,
            num_irqs: 0,
        }
    }
}

impl Payload for DeviceInfo {
    fn parse(payload: &[u8], _limits: &Limits) -> Result<Self, ProtocolError> {
        let mut r = Reader::new("DEVICE_GET_INFO", payload);
        Ok(Self {
            argsz: r.u32()?,
            flags: DeviceFlags::from_bits_retain(r.u32()?),
            num_regions: r.u32()?,
            num_irqs: r.u32()?,
        })
    }

    fn encode(&self, out: &mut Vec<u8>) {
        put_u32(out, self.argsz);
        put_u32(out, self.flags.bits());
        put_u32(out, self.num_regions);
        put_u32(out, self.num_irqs);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_truncation() {
        let limits = Limits::default();
        let info = DeviceInfo {
            argsz: 16,
            flags: DeviceFlags::RESET | DeviceFlags::PCI,
            num_regions: 9,
            num_irqs: 5,
        };
        let bytes = info.to_bytes();
        assert_eq!(bytes.len(), 16);
        assert_eq!(&bytes[4..8], &3u32.to_ne_bytes());
        assert_eq!(DeviceInfo::parse(&bytes, &limits).unwrap(), info);
        let req = DeviceInfo::request();
        assert_eq!(DeviceInfo::parse(&req.to_bytes(), &limits).unwrap(), req);
        for len in 0..16 {
            assert_eq!(
                DeviceInfo::parse(&bytes[..len], &limits)
                    .unwrap_err()
                    .errno(),
                22
            );
        }
    }
}
