//! The physical function under a virtual one: the seam where a real device (kernel VFIO) and an
//! emulated hardware model are interchangeable.
//!
//! Where to look: the trait in this file; the kernel-VFIO implementation in [`vfio`]; reading
//! a function's description from sysfs or captured files in [`sysfs`]; a function served
//! from a captured config space in [`captured`].

pub mod captured;
pub mod direct;
pub mod sysfs;
pub mod vfio;

pub use direct::{DirectBar, DirectError, DirectPath, MmapFile};

use crate::layout::BarKind;
use crate::pci::regs;

/// A physical BAR as the hardware reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PhysicalBar {
    /// I/O, 32-bit or 64-bit memory.
    pub kind: BarKind,
    /// Prefetchable memory.
    pub prefetchable: bool,
    /// Size in bytes.
    pub size: u64,
}

/// A snapshot of what a physical function looks like: its config space and BARs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PhysicalDescription {
    /// Config space bytes (256 or 4096).
    pub config: Vec<u8>,
    /// BARs 0-5 (the upper half of a 64-bit BAR is `None`).
    pub bars: [Option<PhysicalBar>; 6],
    /// Expansion ROM size, if any.
    pub rom_size: Option<u64>,
}

/// A failure of the physical function.
#[derive(Debug, thiserror::Error)]
pub enum PhysicalError {
    /// The access is outside the region.
    #[error("access of {len} bytes at {offset:#x} is outside {region}")]
    OutOfRange {
        /// Region name (`config`, `BAR 2`).
        region: String,
        /// Offset asked for.
        offset: u64,
        /// Length asked for.
        len: usize,
    },
    /// The function has no such BAR.
    #[error("the physical function has no BAR {0}")]
    NoSuchBar(u8),
    /// A file or device could not be used.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The input does not describe a PCI function.
    #[error("{0}")]
    Invalid(String),
    /// The kernel VFIO interface failed.
    #[error("VFIO: {0}")]
    Vfio(String),
}

/// A physical PCI function: a real device through kernel VFIO or an emulated hardware model.
pub trait PhysicalFunction: Send + Sync {
    /// A name for messages: a PCI address or the model's name.
    fn name(&self) -> String;
    /// Size of its config space (256 or 4096).
    fn config_size(&self) -> u16;
    /// Reads its config space.
    fn config_read(&self, offset: u16, data: &mut [u8]) -> Result<(), PhysicalError>;
    /// Writes its config space.
    fn config_write(&self, offset: u16, data: &[u8]) -> Result<(), PhysicalError>;
    /// BAR `index` as the hardware reports it.
    fn bar(&self, index: u8) -> Option<PhysicalBar>;
    /// Expansion ROM size (none unless the function says so).
    fn rom_size(&self) -> Option<u64> {
        None
    }
    /// Reads BAR `index` at `offset`.
    fn bar_read(&self, index: u8, offset: u64, data: &mut [u8]) -> Result<(), PhysicalError>;
    /// Writes BAR `index` at `offset`.
    fn bar_write(&self, index: u8, offset: u64, data: &[u8]) -> Result<(), PhysicalError>;
    /// Reads the expansion ROM.
    fn rom_read(&self, offset: u64, data: &mut [u8]) -> Result<(), PhysicalError> {
        Err(PhysicalError::OutOfRange {
            region: "expansion ROM".into(),
            offset,
            len: data.len(),
        })
    }
    /// Function level reset.
    fn reset(&self) -> Result<(), PhysicalError>;

    /// A snapshot of its config space and BARs.
    fn describe(&self) -> Result<PhysicalDescription, PhysicalError> {
        let mut config = vec![0u8; usize::from(self.config_size())];
        for (i, chunk) in config.chunks_mut(4).enumerate() {
            self.config_read((i * 4) as u16, chunk)?;
        }
        let mut bars = [None; regs::BAR_COUNT];
        for (i, bar) in bars.iter_mut().enumerate() {
            *bar = self.bar(i as u8);
        }
        Ok(PhysicalDescription {
            config,
            bars,
            rom_size: self.rom_size(),
        })
    }
}

/// Checks that `offset..offset+len` lies inside a region of `size` bytes.
pub(crate) fn check_access(
    region: impl FnOnce() -> String,
    offset: u64,
    len: usize,
    size: u64,
) -> Result<(), PhysicalError> {
    match offset.checked_add(len as u64) {
        Some(end) if end <= size => Ok(()),
        _ => Err(PhysicalError::OutOfRange {
            region: region(),
            offset,
            len,
        }),
    }
}
