//! The regions of a virtual function as a VMM sees them (VFIO region info).

use crate::layout::{Layout, MmapArea};
use crate::pci::region::{CONFIG_REGION, REGION_COUNT, ROM_REGION};

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

/// The areas of a passthrough BAR a VMM may mmap: inside the layout's `wanted` areas (which
/// leave out the MSI-X table and PBA pages) and inside what the device lets be mapped
/// (`mappable`), clipped to the BAR's `size`. Sorted, without overlaps.
pub fn passthrough_areas(wanted: &[MmapArea], mappable: &[MmapArea], size: u64) -> Vec<MmapArea> {
    let ranges = |areas: &[MmapArea]| -> Vec<(u64, u64)> {
        let mut r: Vec<(u64, u64)> = areas
            .iter()
            .map(|a| (a.offset, a.offset.saturating_add(a.size).min(size)))
            .filter(|(s, e)| s < e)
            .collect();
        r.sort_unstable();
        r
    };
    let (wanted, mappable) = (ranges(wanted), ranges(mappable));
    let mut merged: Vec<MmapArea> = Vec::new();
    let mut pieces: Vec<(u64, u64)> = wanted
        .iter()
        .flat_map(|&(ws, we)| {
            mappable
                .iter()
                .map(move |&(ms, me)| (ws.max(ms), we.min(me)))
                .filter(|(s, e)| s < e)
        })
        .collect();
    pieces.sort_unstable();
    // Merge what touches or overlaps (overlapping `wanted` or `mappable` areas).
    for (start, end) in pieces {
        match merged.last_mut() {
            Some(last) if last.offset + last.size >= start => {
                last.size = (last.offset + last.size).max(end) - last.offset;
            }
            _ => merged.push(MmapArea {
                offset: start,
                size: end - start,
            }),
        }
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;

    fn area(offset: u64, size: u64) -> MmapArea {
        MmapArea { offset, size }
    }

    #[test]
    fn the_device_and_the_layout_both_limit() {
        // The kernel's sparse areas leave a hole at page 1; the layout wants pages 1-3 only.
        let areas = passthrough_areas(
            &[area(0x1000, 0x3000)],
            &[area(0, 0x1000), area(0x2000, 0x2000)],
            0x4000,
        );
        assert_eq!(areas, vec![area(0x2000, 0x2000)]);
    }

    #[test]
    fn a_smaller_virtual_bar_clips_and_nothing_mappable_gives_nothing() {
        let areas = passthrough_areas(&[area(0, 0x8000)], &[area(0, 0x8000)], 0x2000);
        assert_eq!(areas, vec![area(0, 0x2000)]);
        assert!(passthrough_areas(&[area(0, 0x2000)], &[], 0x2000).is_empty());
        assert!(passthrough_areas(&[], &[area(0, 0x2000)], 0x2000).is_empty());
    }

    #[test]
    fn overlapping_and_adjacent_pieces_merge_and_holes_stay() {
        let areas = passthrough_areas(
            &[area(0, 0x2000), area(0x1000, 0x1000), area(0x3000, 0x1000)],
            &[area(0, 0x4000)],
            0x4000,
        );
        assert_eq!(areas, vec![area(0, 0x2000), area(0x3000, 0x1000)]);
    }
}
