//! The physical config spaces of the two hardware generations' VFs and PFs. Both have the
//! same BAR 0 (64-bit prefetchable, [`BAR0_SIZE`]: initialization segment, doorbells, MSI-X
//! table at 0x2000) and the same command interface; their capability chains differ:
//!
//! | | generation 1 | generation 2 |
//! |---|---|---|
//! | VF device ID | 0x101c | 0x101e |
//! | PCI Express | 0x60 | 0x40 |
//! | MSI-X | 0x9c | 0x7c |
//! | vendor-specific | none | 0x88 |
//! | extended | AER at 0x100 | ARI at 0x100, AER at 0x150 |

use vfio_variant::layout::BarKind;
use vfio_variant::pci::{cap, regs};
use vfio_variant::physical::{PhysicalBar, PhysicalError};

/// Size of the config spaces.
pub const CONFIG_SIZE: u16 = 4096;
/// Size of BAR 0 of every function.
pub const BAR0_SIZE: u64 = 32 << 20;
/// Mellanox's PCI vendor ID.
pub const VENDOR_ID: u16 = 0x15b3;
/// Offset of the MSI-X table in BAR 0.
pub const MSIX_TABLE_OFFSET: u32 = 0x2000;
/// Offset of the MSI-X PBA in BAR 0.
pub const MSIX_PBA_OFFSET: u32 = 0x2800;
/// MSI-X vectors of a VF.
pub const MSIX_VECTORS: u16 = 64;

/// A hardware generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Generation {
    /// The older generation.
    One,
    /// The newer generation: other device IDs and capability offsets, one more capability.
    Two,
}

impl Generation {
    /// Its number as the firmware reports it.
    pub fn number(self) -> u8 {
        match self {
            Self::One => 1,
            Self::Two => 2,
        }
    }

    /// Device ID of its VFs.
    pub fn vf_device_id(self) -> u16 {
        match self {
            Self::One => 0x101c,
            Self::Two => 0x101e,
        }
    }

    /// Device ID of its PFs.
    pub fn pf_device_id(self) -> u16 {
        match self {
            Self::One => 0x101b,
            Self::Two => 0x101d,
        }
    }

    /// Offsets of (PCI Express, MSI-X, vendor-specific) capabilities.
    fn capability_offsets(self) -> (u16, u16, Option<u16>) {
        match self {
            Self::One => (0x60, 0x9c, None),
            Self::Two => (0x40, 0x7c, Some(0x88)),
        }
    }
}

/// A config space: bytes and which bits a write may change.
pub struct ConfigSpace {
    bytes: Vec<u8>,
    wmask: Vec<u8>,
}

impl ConfigSpace {
    /// The config space of a function of `generation` with `device_id`.
    pub fn new(generation: Generation, device_id: u16) -> Self {
        let mut c = Self {
            bytes: vec![0; usize::from(CONFIG_SIZE)],
            wmask: vec![0; usize::from(CONFIG_SIZE)],
        };
        let (pcie, msix, vendor) = generation.capability_offsets();
        c.put(regs::VENDOR_ID, &VENDOR_ID.to_le_bytes());
        c.put(regs::DEVICE_ID, &device_id.to_le_bytes());
        c.put(regs::STATUS, &regs::STATUS_CAP_LIST.to_le_bytes());
        c.put(regs::CLASS_PROG_IF, &[0x00, 0x00, 0x02]);
        c.put(regs::SUBSYSTEM_VENDOR_ID, &VENDOR_ID.to_le_bytes());
        c.put(
            regs::SUBSYSTEM_ID,
            &(0x0040 + u16::from(generation.number())).to_le_bytes(),
        );
        c.put(regs::CAPABILITIES_POINTER, &[pcie as u8]);
        let command = regs::COMMAND_MEMORY | regs::COMMAND_BUS_MASTER;
        c.mask(regs::COMMAND, &command.to_le_bytes());
        let bar0 = regs::bar_offset(0);
        c.put(bar0, &(regs::BAR_MEM_64 | regs::BAR_PREFETCH).to_le_bytes());
        c.mask(bar0, &(!(BAR0_SIZE as u32 - 1)).to_le_bytes());
        c.mask(bar0 + 4, &u32::MAX.to_le_bytes());

        // PCI Express endpoint, FLR capable, then MSI-X, then (generation 2) a vendor cap.
        c.put(pcie, &[cap::CAP_PCIE, msix as u8, 0x02, 0x00]);
        c.put(pcie + cap::PCIE_DEVCAP, &cap::PCIE_DEVCAP_FLR.to_le_bytes());
        let next = vendor.map_or(0, |v| v as u8);
        let size = (MSIX_VECTORS - 1).to_le_bytes();
        c.put(msix, &[cap::CAP_MSIX, next, size[0], size[1]]);
        c.put(msix + cap::MSIX_TABLE, &MSIX_TABLE_OFFSET.to_le_bytes());
        c.put(msix + cap::MSIX_PBA, &MSIX_PBA_OFFSET.to_le_bytes());
        if let Some(vendor) = vendor {
            c.put(vendor, &[cap::CAP_VENDOR, 0, 8, generation.number()]);
        }
        let aer = cap::ext_cap_header(cap::EXT_CAP_AER, 2, 0);
        match generation {
            Generation::One => c.put(regs::EXTENDED_CAPS_START, &aer.to_le_bytes()),
            Generation::Two => {
                let ari = cap::ext_cap_header(cap::EXT_CAP_ARI, 1, 0x150);
                c.put(regs::EXTENDED_CAPS_START, &ari.to_le_bytes());
                c.put(0x150, &aer.to_le_bytes());
            }
        }
        c
    }

    fn put(&mut self, offset: u16, data: &[u8]) {
        let at = usize::from(offset);
        self.bytes[at..at + data.len()].copy_from_slice(data);
    }

    fn mask(&mut self, offset: u16, mask: &[u8]) {
        let at = usize::from(offset);
        self.wmask[at..at + mask.len()].copy_from_slice(mask);
    }

    fn check(offset: u16, len: usize) -> Result<usize, PhysicalError> {
        let at = usize::from(offset);
        if at + len > usize::from(CONFIG_SIZE) {
            return Err(PhysicalError::OutOfRange {
                region: "config".into(),
                offset: u64::from(offset),
                len,
            });
        }
        Ok(at)
    }

    /// Reads config bytes.
    pub fn read(&self, offset: u16, data: &mut [u8]) -> Result<(), PhysicalError> {
        let at = Self::check(offset, data.len())?;
        data.copy_from_slice(&self.bytes[at..at + data.len()]);
        Ok(())
    }

    /// Writes config bytes through the write mask.
    pub fn write(&mut self, offset: u16, data: &[u8]) -> Result<(), PhysicalError> {
        let at = Self::check(offset, data.len())?;
        for (i, &value) in data.iter().enumerate() {
            let mask = self.wmask[at + i];
            self.bytes[at + i] = (self.bytes[at + i] & !mask) | (value & mask);
        }
        Ok(())
    }
}

/// BAR 0 of the PF and of the VFs: 64-bit, prefetchable, [`BAR0_SIZE`] bytes.
pub(crate) fn bar0(index: u8) -> Option<PhysicalBar> {
    (index == 0).then_some(PhysicalBar {
        kind: BarKind::Memory64,
        prefetchable: true,
        size: BAR0_SIZE,
    })
}

fn check_bar0(index: u8, offset: u64, len: usize) -> Result<(), PhysicalError> {
    if index != 0 {
        return Err(PhysicalError::NoSuchBar(index));
    }
    match offset.checked_add(len as u64) {
        Some(end) if end <= BAR0_SIZE => Ok(()),
        _ => Err(PhysicalError::OutOfRange {
            region: "BAR 0".into(),
            offset,
            len,
        }),
    }
}

/// A read of BAR 0's 32-bit registers: an aligned 4-byte access reads `register(offset)`;
/// other widths inside the BAR read zeros.
pub(crate) fn register_read(
    index: u8,
    offset: u64,
    data: &mut [u8],
    register: impl FnOnce(u64) -> [u8; 4],
) -> Result<(), PhysicalError> {
    check_bar0(index, offset, data.len())?;
    data.fill(0);
    if data.len() == 4 && offset.is_multiple_of(4) {
        data.copy_from_slice(&register(offset));
    }
    Ok(())
}

/// A write of BAR 0's 32-bit registers: an aligned 4-byte access goes to `register`; other
/// widths inside the BAR are dropped.
pub(crate) fn register_write(
    index: u8,
    offset: u64,
    data: &[u8],
    register: impl FnOnce(u64, [u8; 4]),
) -> Result<(), PhysicalError> {
    check_bar0(index, offset, data.len())?;
    if let Ok(value) = <[u8; 4]>::try_from(data)
        && offset.is_multiple_of(4)
    {
        register(offset, value);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_generations_differ_in_ids_and_capability_offsets() {
        let one = ConfigSpace::new(Generation::One, Generation::One.vf_device_id());
        let two = ConfigSpace::new(Generation::Two, Generation::Two.vf_device_id());
        assert_ne!(one.bytes, two.bytes);
        assert_eq!(one.bytes[0x34], 0x60);
        assert_eq!(two.bytes[0x34], 0x40);
        assert_eq!(&one.bytes[0x9c..0x9e], &[cap::CAP_MSIX, 0]);
        assert_eq!(&two.bytes[0x7c..0x7e], &[cap::CAP_MSIX, 0x88]);
        assert_eq!(two.bytes[0x88], cap::CAP_VENDOR);
    }

    #[test]
    fn writes_change_only_writable_bits_and_out_of_range_is_refused() {
        let mut c = ConfigSpace::new(Generation::One, 0x101c);
        c.write(regs::VENDOR_ID, &[0xff, 0xff]).unwrap();
        c.write(regs::bar_offset(0), &[0xff; 4]).unwrap();
        let mut b = [0u8; 4];
        c.read(regs::VENDOR_ID, &mut b[..2]).unwrap();
        assert_eq!(u16::from_le_bytes([b[0], b[1]]), VENDOR_ID);
        c.read(regs::bar_offset(0), &mut b).unwrap();
        assert_eq!(u32::from_le_bytes(b), 0xfe00_000c);
        assert!(c.read(4095, &mut b).is_err());
    }
}
