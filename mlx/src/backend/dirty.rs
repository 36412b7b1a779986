//! Dirty page tracking through the firmware's page tracker, as Linux's mlx5 vfio driver does
//! it (drivers/vfio/pci/mlx5/cmd.c, mlx5vf_start_page_tracker): the page size clamped to the
//! tracker's limits, ranges beyond its limit merged (the two closest ones first, as
//! `combine_ranges` does), a report read and cleared in pieces of at most the tracker's
//! report size, each dirty tracker page setting the bits of every reported page it covers.

use std::ops::Range;
use std::sync::Arc;

use parking_lot::Mutex;
use vfio_variant::migration::{DirtyTracker, MigrationError};

use super::cmd::CommandQueue;
use super::commands::{self, TrackerCaps};

/// A VF's dirty tracker through the PF's page tracker.
pub struct FirmwareDirtyTracker {
    queue: Arc<CommandQueue>,
    vhca_id: u16,
    limits: TrackerCaps,
    /// The tracker object and its page size, while a session runs.
    active: Mutex<Option<(u32, u64)>>,
}

/// Merges `ranges` (sorted, not overlapping) until at most `max` remain, each time joining
/// the two neighbours with the smallest gap between them.
pub fn merge_ranges(mut ranges: Vec<Range<u64>>, max: usize) -> Vec<Range<u64>> {
    ranges.sort_by_key(|r| r.start);
    while ranges.len() > max.max(1) {
        let Some(i) = (0..ranges.len() - 1)
            .min_by_key(|&i| ranges[i + 1].start.saturating_sub(ranges[i].end))
        else {
            break;
        };
        let next = ranges.remove(i + 1);
        ranges[i].end = ranges[i].end.max(next.end);
    }
    ranges
}

/// `ranges` widened to whole pages of `page_size` and joined where they then touch.
fn align_ranges(ranges: &[Range<u64>], page_size: u64) -> Vec<Range<u64>> {
    let mut aligned: Vec<Range<u64>> = Vec::with_capacity(ranges.len());
    for r in ranges {
        let start = r.start - r.start % page_size;
        let end = r.end.div_ceil(page_size).saturating_mul(page_size);
        match aligned.last_mut() {
            Some(last) if start <= last.end => last.end = last.end.max(end),
            _ => aligned.push(start..end),
        }
    }
    aligned
}

impl FirmwareDirtyTracker {
    /// The tracker of VF `vhca_id`, within `limits`.
    pub fn new(queue: Arc<CommandQueue>, vhca_id: u16, limits: TrackerCaps) -> Self {
        Self {
            queue,
            vhca_id,
            limits,
            active: Mutex::new(None),
        }
    }

    /// log2 of the page size the tracker uses for a requested one.
    fn log_page_size(&self, requested: u64) -> u8 {
        let log = requested.max(1).next_power_of_two().trailing_zeros() as u8;
        log.clamp(self.limits.log_min_page_size, self.limits.log_max_page_size)
    }
}

impl DirtyTracker for FirmwareDirtyTracker {
    fn start(&self, page_size: u64, ranges: &[Range<u64>]) -> Result<u64, MigrationError> {
        let mut active = self.active.lock();
        if active.is_some() {
            return Err(MigrationError::Device(
                "a dirty tracking session already runs".into(),
            ));
        }
        let log = self.log_page_size(page_size);
        let size = 1u64 << log;
        let merged = merge_ranges(ranges.to_vec(), self.limits.max_ranges as usize);
        let aligned = align_ranges(&merged, size);
        let id = commands::create_tracker(&self.queue, self.vhca_id, log, &aligned)
            .map_err(|e| MigrationError::Device(e.to_string()))?;
        *active = Some((id, size));
        Ok(size)
    }

    fn report(
        &self,
        iova: u64,
        length: u64,
        page_size: u64,
        bitmap: &mut [u64],
    ) -> Result<(), MigrationError> {
        let Some((id, tracked)) = *self.active.lock() else {
            return Err(MigrationError::Device("no dirty tracking session".into()));
        };
        if page_size == 0 || length == 0 {
            return Err(MigrationError::Device("empty report".into()));
        }
        let end = iova.saturating_add(length);
        let bits = (bitmap.len() as u64).saturating_mul(64);
        loop {
            let (pages, more) =
                commands::report_tracker(&self.queue, id, iova, length, self.limits.max_report)
                    .map_err(|e| MigrationError::Device(e.to_string()))?;
            for page in &pages {
                let first = (*page).max(iova);
                let last = page.saturating_add(tracked).min(end);
                if first >= last {
                    continue;
                }
                for bit in (first - iova) / page_size..=(last - 1 - iova) / page_size {
                    if bit < bits {
                        bitmap[(bit / 64) as usize] |= 1 << (bit % 64);
                    }
                }
            }
            if !more || pages.is_empty() {
                return Ok(());
            }
        }
    }

    fn stop(&self) {
        if let Some((id, _)) = self.active.lock().take()
            && let Err(e) = commands::destroy_tracker(&self.queue, id)
        {
            tracing::warn!("destroying page tracker {id}: {e}");
        }
    }
}

#[cfg(test)]
// Lists of one tracked range are meant, not ranges of numbers.
#[allow(clippy::single_range_in_vec_init)]
mod tests {
    use super::*;
    use crate::backend::cmd::HOST_MEMORY_SIZE;
    use crate::hw::firmware::FirmwareCaps;
    use crate::hw::pci::Generation;
    use crate::hw::pf::MlxPf;
    use vfio_variant::backend::emulated::HostMemory;

    #[test]
    fn page_sizes_are_clamped_and_a_coarse_page_sets_every_bit_it_covers() {
        let memory = Arc::new(HostMemory::new(HOST_MEMORY_SIZE));
        let pf = Arc::new(MlxPf::new(
            "pf",
            Generation::One,
            1,
            FirmwareCaps::default(),
            memory.clone(),
        ));
        let queue = Arc::new(CommandQueue::new(pf.clone(), memory).unwrap());
        let caps = commands::migration_caps(&queue).unwrap();
        commands::set_migratable(&queue, 1, true).unwrap();
        let vhca = commands::vf_caps(&queue, 1).unwrap().vhca_id;
        let tracker = FirmwareDirtyTracker::new(queue.clone(), vhca, caps.tracker.unwrap());
        assert_eq!(tracker.start(1 << 30, &[0..1 << 30]).unwrap(), 2 << 20);
        assert!(tracker.start(4096, &[0..4096]).is_err(), "one session");
        tracker.stop();
        assert_eq!(tracker.start(512, &[0..0x400000]).unwrap(), 4096);
        tracker.stop();
        assert_eq!(tracker.start(2 << 20, &[0..0x400000]).unwrap(), 2 << 20);
        // The device writes 4 bytes at 2 MiB + 8: the whole 2 MiB tracker page is dirty.
        let vf = &pf.vfs()[0];
        vf.tracker().lock().as_mut().unwrap().mark((2 << 20) + 8, 4);
        let mut bitmap = vec![0u64; 1024 / 64];
        tracker.report(0, 0x400000, 4096, &mut bitmap).unwrap();
        let set: u32 = bitmap.iter().map(|w| w.count_ones()).sum();
        assert_eq!(set, 512);
        assert_eq!(bitmap[8], u64::MAX);
        assert_eq!(bitmap[0], 0);
        tracker.stop();
        assert!(tracker.report(0, 4096, 4096, &mut bitmap).is_err());
    }

    #[test]
    fn the_closest_ranges_merge_first() {
        let ranges = vec![0..10, 100..110, 20..30, 1000..1010, 115..120];
        assert_eq!(
            merge_ranges(ranges.clone(), 3),
            vec![0..30, 100..120, 1000..1010]
        );
        assert_eq!(merge_ranges(ranges.clone(), 1), vec![0..1010]);
        assert_eq!(merge_ranges(ranges, 9).len(), 5);
    }

    #[test]
    fn ranges_widen_to_pages_and_join_when_they_touch() {
        assert_eq!(
            align_ranges(&[0x100..0x200, 0x1f00..0x2100, 0x5000..0x6000], 0x1000),
            vec![0..0x3000, 0x5000..0x6000]
        );
    }
}
