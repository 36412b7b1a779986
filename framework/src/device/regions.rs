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

/// The areas of a passthrough BAR a VMM may mmap: inside the layout's `wanted` areas, inside
/// what the device lets be mapped (`mappable`), and off the `trapped` pages (MSI-X table and
/// PBA), clipped to the BAR's `size`. Sorted, without overlaps.
pub fn passthrough_areas(
    wanted: &[MmapArea],
    mappable: &[MmapArea],
    trapped: &[(u64, u64)],
    size: u64,
) -> Vec<MmapArea> {
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
    let mut out: Vec<MmapArea> = Vec::new();
    for &(ws, we) in &wanted {
        for &(ms, me) in &mappable {
            let (mut start, end) = (ws.max(ms), we.min(me));
            if start >= end {
                continue;
            }
            let mut holes: Vec<(u64, u64)> = trapped.to_vec();
            holes.sort_unstable();
            for (hs, he) in holes {
                if he <= start || hs >= end {
                    continue;
                }
                if hs > start {
                    out.push(MmapArea {
                        offset: start,
                        size: hs - start,
                    });
                }
                start = start.max(he);
            }
            if start < end {
                out.push(MmapArea {
                    offset: start,
                    size: end - start,
                });
            }
        }
    }
    out.sort_unstable_by_key(|a| a.offset);
    // Merge what touches or overlaps (overlapping `wanted` or `mappable` areas).
    let mut merged: Vec<MmapArea> = Vec::new();
    for a in out {
        match merged.last_mut() {
            Some(last) if last.offset + last.size >= a.offset => {
                let end = (last.offset + last.size).max(a.offset + a.size);
                last.size = end - last.offset;
            }
            _ => merged.push(a),
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
    fn msix_pages_stay_trapped_inside_what_both_sides_allow() {
        // A 16 KiB BAR, MSI-X table in page 2 and PBA in page 3; the device maps it all.
        let areas = passthrough_areas(
            &[area(0, 0x4000)],
            &[area(0, 0x4000)],
            &[(0x2000, 0x3000), (0x3000, 0x4000)],
            0x4000,
        );
        assert_eq!(areas, vec![area(0, 0x2000)]);
    }

    #[test]
    fn the_device_and_the_layout_both_limit() {
        // The kernel's sparse areas leave a hole at page 1; the layout wants pages 1-3 only.
        let areas = passthrough_areas(
            &[area(0x1000, 0x3000)],
            &[area(0, 0x1000), area(0x2000, 0x2000)],
            &[],
            0x4000,
        );
        assert_eq!(areas, vec![area(0x2000, 0x2000)]);
    }

    #[test]
    fn a_smaller_virtual_bar_clips_and_nothing_mappable_gives_nothing() {
        let areas = passthrough_areas(&[area(0, 0x8000)], &[area(0, 0x8000)], &[], 0x2000);
        assert_eq!(areas, vec![area(0, 0x2000)]);
        assert!(passthrough_areas(&[area(0, 0x2000)], &[], &[], 0x2000).is_empty());
        assert!(passthrough_areas(&[], &[area(0, 0x2000)], &[], 0x2000).is_empty());
    }

    #[test]
    fn a_trapped_page_in_the_middle_splits_an_area() {
        let areas = passthrough_areas(
            &[area(0, 0x4000), area(0x1000, 0x1000)],
            &[area(0, 0x4000)],
            &[(0x1000, 0x2000)],
            0x4000,
        );
        assert_eq!(areas, vec![area(0, 0x1000), area(0x2000, 0x2000)]);
    }
}
