//! The regions of a virtual function as a VMM sees them (VFIO region info).

use crate::vpci::layout::{Layout, MmapArea};

/// VFIO region index of the expansion ROM.
pub const ROM_REGION: u32 = 6;
/// VFIO region index of config space.
pub const CONFIG_REGION: u32 = 7;
/// Number of regions of a VFIO PCI device (BAR0-5, ROM, config, VGA).
pub const REGION_COUNT: u32 = 9;

/// One region's description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionInfo {
    /// VFIO region index.
    pub index: u32,
    /// Size in bytes (0 for an absent region).
    pub size: u64,
    /// Readable.
    pub read: bool,
    /// Writable.
    pub write: bool,
    /// Areas the VMM may mmap.
    pub mmap: Vec<MmapArea>,
}

/// Regions 0..=8 of a layout.
pub fn describe(layout: &Layout) -> Vec<RegionInfo> {
    (0..REGION_COUNT)
        .map(|index| {
            let (size, write, mmap) = match index {
                0..=5 => match layout.bar(index as u8) {
                    Some(bar) => (bar.size, true, bar.mmap.clone()),
                    None => (0, false, Vec::new()),
                },
                ROM_REGION => (layout.rom.as_ref().map_or(0, |r| r.size), false, Vec::new()),
                CONFIG_REGION => (u64::from(layout.config_size), true, Vec::new()),
                _ => (0, false, Vec::new()),
            };
            RegionInfo {
                index,
                size,
                read: size != 0,
                write: write && size != 0,
                mmap,
            }
        })
        .collect()
}
