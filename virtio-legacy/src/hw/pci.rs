//! The physical config space of the emulated functions: bytes plus a write mask, with the
//! virtio vendor capabilities pointing into the function's memory BAR.

use vfio_variant::pci::regs;
use vfio_variant::physical::PhysicalError;

use super::transport::{
    AREA_SIZE, BAR_SIZE, COMMON_OFFSET, DEVICE_OFFSET, ISR_OFFSET, NOTIFY_MULTIPLIER, NOTIFY_OFFSET,
};

/// Size of the emulated config spaces.
pub const CONFIG_SIZE: u16 = 4096;
/// Index of the virtio register BAR (64-bit, prefetchable, [`BAR_SIZE`] bytes).
pub const VIRTIO_BAR: u8 = 0;
/// Index of the MSI-X BAR (32-bit, [`MSIX_BAR_SIZE`] bytes: table at 0, PBA at 0x800).
pub const MSIX_BAR: u8 = 2;
/// Size of the MSI-X BAR.
pub const MSIX_BAR_SIZE: u64 = 4096;
/// Offset of the MSI-X capability.
pub const MSIX_CAP: u16 = 0x40;
/// Offset of the first virtio vendor capability.
pub const VIRTIO_CAPS: u16 = 0x50;
/// Offset of the PCI Express capability.
pub const PCIE_CAP: u16 = 0xa0;
/// MSI-X message control: enable.
pub const MSIX_ENABLE: u16 = 1 << 15;
/// PCIe device control: initiate function level reset.
pub const PCIE_FLR: u16 = 1 << 15;

/// What identifies a function.
#[derive(Debug, Clone, Copy)]
pub struct Identity {
    /// PCI device ID.
    pub device_id: u16,
    /// Revision.
    pub revision: u8,
    /// Class code (base, sub, prog-if).
    pub class_code: u32,
    /// Subsystem ID.
    pub subsystem_id: u16,
    /// MSI-X table size.
    pub msix_vectors: u16,
}

/// A config space: bytes and which bits a write may change.
pub struct ConfigSpace {
    bytes: Vec<u8>,
    wmask: Vec<u8>,
}

impl ConfigSpace {
    /// The config space of a modern virtio function with `identity`: virtio register BAR 0,
    /// MSI-X BAR 2, MSI-X at [`MSIX_CAP`], the virtio capabilities, PCIe at [`PCIE_CAP`].
    pub fn virtio(identity: Identity) -> Self {
        let mut c = Self {
            bytes: vec![0; usize::from(CONFIG_SIZE)],
            wmask: vec![0; usize::from(CONFIG_SIZE)],
        };
        c.put16(regs::VENDOR_ID, 0x1af4);
        c.put16(regs::DEVICE_ID, identity.device_id);
        c.put16(regs::STATUS, regs::STATUS_CAP_LIST);
        c.bytes[usize::from(regs::REVISION_ID)] = identity.revision;
        let class = identity.class_code.to_le_bytes();
        c.bytes[0x09..0x0c].copy_from_slice(&class[..3]);
        c.put16(regs::SUBSYSTEM_VENDOR_ID, 0x1af4);
        c.put16(regs::SUBSYSTEM_ID, identity.subsystem_id);
        c.bytes[usize::from(regs::CAPABILITIES_POINTER)] = MSIX_CAP as u8;
        c.mask16(
            regs::COMMAND,
            regs::COMMAND_MEMORY | regs::COMMAND_BUS_MASTER | regs::COMMAND_INTX_DISABLE,
        );
        // BAR 0: 64-bit prefetchable; BAR 2: 32-bit.
        let bar0 = regs::bar_offset(0);
        c.put32(bar0, regs::BAR_MEM_64 | regs::BAR_PREFETCH);
        c.mask32(bar0, !(BAR_SIZE as u32 - 1));
        c.mask32(bar0 + 4, u32::MAX);
        let bar2 = regs::bar_offset(2);
        c.mask32(bar2, !(MSIX_BAR_SIZE as u32 - 1));

        // MSI-X: table in BAR 2 at 0, PBA at 0x800.
        c.bytes[usize::from(MSIX_CAP)] = 0x11;
        c.bytes[usize::from(MSIX_CAP) + 1] = VIRTIO_CAPS as u8;
        c.put16(
            MSIX_CAP + 2,
            identity.msix_vectors.saturating_sub(1) & 0x7ff,
        );
        c.mask16(MSIX_CAP + 2, MSIX_ENABLE | (1 << 14));
        c.put32(MSIX_CAP + 4, u32::from(MSIX_BAR));
        c.put32(MSIX_CAP + 8, 0x800 | u32::from(MSIX_BAR));

        // virtio_pci_cap: vndr, next, len, cfg_type, bar, id, pad[2], offset, length.
        let caps: [(u8, u64); 4] = [
            (1, COMMON_OFFSET),
            (3, ISR_OFFSET),
            (4, DEVICE_OFFSET),
            (2, NOTIFY_OFFSET),
        ];
        let mut at = VIRTIO_CAPS;
        for (i, (kind, offset)) in caps.iter().enumerate() {
            let len: u8 = if *kind == 2 { 20 } else { 16 };
            let next = if i + 1 == caps.len() {
                PCIE_CAP as u8
            } else {
                (at + 20) as u8
            };
            let base = usize::from(at);
            c.bytes[base] = 0x09;
            c.bytes[base + 1] = next;
            c.bytes[base + 2] = len;
            c.bytes[base + 3] = *kind;
            c.bytes[base + 4] = VIRTIO_BAR;
            c.put32(at + 8, *offset as u32);
            c.put32(at + 12, AREA_SIZE as u32);
            if *kind == 2 {
                c.put32(at + 16, NOTIFY_MULTIPLIER);
            }
            at += 20;
        }

        // PCI Express endpoint, FLR capable.
        let pcie = usize::from(PCIE_CAP);
        c.bytes[pcie] = 0x10;
        c.put16(PCIE_CAP + 2, 0x0002);
        c.put32(PCIE_CAP + 4, 1 << 28);
        c.mask16(PCIE_CAP + 8, PCIE_FLR);
        c
    }

    /// Reads config space.
    pub fn read(&self, offset: u16, data: &mut [u8]) -> Result<(), PhysicalError> {
        let at = self.range(offset, data.len())?;
        data.copy_from_slice(&self.bytes[at..at + data.len()]);
        Ok(())
    }

    /// Writes config space through the write mask.
    pub fn write(&mut self, offset: u16, data: &[u8]) -> Result<(), PhysicalError> {
        let at = self.range(offset, data.len())?;
        for (i, byte) in data.iter().enumerate() {
            let mask = self.wmask[at + i];
            self.bytes[at + i] = (self.bytes[at + i] & !mask) | (byte & mask);
        }
        Ok(())
    }

    /// A 16-bit register.
    pub fn read16(&self, offset: u16) -> u16 {
        let at = usize::from(offset);
        u16::from_le_bytes([self.bytes[at], self.bytes[at + 1]])
    }

    /// Sets a 16-bit register regardless of the write mask.
    pub fn put16(&mut self, offset: u16, value: u16) {
        let at = usize::from(offset);
        self.bytes[at..at + 2].copy_from_slice(&value.to_le_bytes());
    }

    fn put32(&mut self, offset: u16, value: u32) {
        let at = usize::from(offset);
        self.bytes[at..at + 4].copy_from_slice(&value.to_le_bytes());
    }

    fn mask16(&mut self, offset: u16, mask: u16) {
        let at = usize::from(offset);
        self.wmask[at..at + 2].copy_from_slice(&mask.to_le_bytes());
    }

    fn mask32(&mut self, offset: u16, mask: u32) {
        let at = usize::from(offset);
        self.wmask[at..at + 4].copy_from_slice(&mask.to_le_bytes());
    }

    /// Adds an SR-IOV extended capability at 0x100 with `num_vfs` VFs of `vf_device_id`.
    pub fn add_sriov(&mut self, num_vfs: u16, vf_device_id: u16) {
        self.put32(0x100, 0x0001_0010);
        self.put16(0x10c, num_vfs);
        self.put16(0x10e, num_vfs);
        self.put16(0x110, num_vfs);
        self.put16(0x114, 1);
        self.put16(0x116, 1);
        self.put16(0x11a, vf_device_id);
        self.mask16(0x108, 0x000f);
    }

    fn range(&self, offset: u16, len: usize) -> Result<usize, PhysicalError> {
        let at = usize::from(offset);
        match at.checked_add(len) {
            Some(end) if end <= self.bytes.len() => Ok(at),
            _ => Err(PhysicalError::OutOfRange {
                region: "config".into(),
                offset: offset.into(),
                len,
            }),
        }
    }
}

/// Checks a BAR access against its size.
pub fn check_bar(index: u8, offset: u64, len: usize, size: u64) -> Result<(), PhysicalError> {
    match offset.checked_add(len as u64) {
        Some(end) if end <= size => Ok(()),
        _ => Err(PhysicalError::OutOfRange {
            region: format!("BAR {index}"),
            offset,
            len,
        }),
    }
}
