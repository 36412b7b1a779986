//! The firmware's page tracker (general object MLX5_OBJ_TYPE_PAGE_TRACK): the pages of guest
//! memory a VF wrote by DMA inside a bounded number of ranges, at one page size. A report
//! returns dirty page addresses inside the range asked for, at most a given number, and
//! clears what it returns (read and clear); it says when more remain.
//!
//! Simplifications: mlx5 delivers reports through an RDMA queue pair the driver sets up
//! (`reporting_qpn`); here a MODIFY of the object asks for a report and gets the addresses in
//! the command's output. The address space size and message size limits are left out.

use std::collections::BTreeSet;
use std::ops::Range;

use super::ifc::{SYNDROME_FIELD, SYNDROME_TRACKER};

/// Limits of the page tracker, as QUERY_HCA_CAP reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrackerLimits {
    /// Most ranges of one tracker.
    pub max_ranges: u32,
    /// log2 of the smallest page size.
    pub log_min_page_size: u8,
    /// log2 of the largest page size.
    pub log_max_page_size: u8,
    /// Most addresses one report returns.
    pub max_report: u32,
}

impl Default for TrackerLimits {
    fn default() -> Self {
        Self {
            max_ranges: 4,
            log_min_page_size: 12,
            log_max_page_size: 21,
            max_report: 1024,
        }
    }
}

/// One page tracker of a VF.
#[derive(Debug)]
pub struct PageTracker {
    id: u32,
    page_size: u64,
    ranges: Vec<Range<u64>>,
    dirty: BTreeSet<u64>,
}

/// A report: dirty page addresses, and whether more remain in the range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Page-aligned addresses, ascending.
    pub pages: Vec<u64>,
    /// More dirty pages remain in the range.
    pub more: bool,
}

impl PageTracker {
    /// A tracker `id` of `ranges` at `2^log_page_size` bytes a page, checked against
    /// `limits`; the syndrome when refused.
    pub fn new(
        id: u32,
        log_page_size: u8,
        ranges: Vec<Range<u64>>,
        limits: &TrackerLimits,
    ) -> Result<Self, u32> {
        if !(limits.log_min_page_size..=limits.log_max_page_size).contains(&log_page_size) {
            return Err(SYNDROME_FIELD);
        }
        if ranges.is_empty() || ranges.len() > limits.max_ranges as usize {
            return Err(SYNDROME_TRACKER);
        }
        let page_size = 1u64 << log_page_size;
        let mut sorted = ranges.clone();
        sorted.sort_by_key(|r| r.start);
        for (i, r) in sorted.iter().enumerate() {
            if r.start >= r.end
                || !r.start.is_multiple_of(page_size)
                || !r.end.is_multiple_of(page_size)
                || sorted.get(i + 1).is_some_and(|next| next.start < r.end)
            {
                return Err(SYNDROME_FIELD);
            }
        }
        Ok(Self {
            id,
            page_size,
            ranges: sorted,
            dirty: BTreeSet::new(),
        })
    }

    /// The object id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The tracked ranges, sorted.
    pub fn ranges(&self) -> &[Range<u64>] {
        &self.ranges
    }

    /// Notes a DMA write of `len` bytes at `iova`: every tracked page it touches.
    pub fn mark(&mut self, iova: u64, len: u64) {
        if len == 0 {
            return;
        }
        let end = iova.saturating_add(len);
        for r in &self.ranges {
            let (start, stop) = (iova.max(r.start), end.min(r.end));
            let mut page = start - start % self.page_size;
            while page < stop {
                self.dirty.insert(page);
                page += self.page_size;
            }
        }
    }

    /// Takes at most `max` dirty pages of `iova..iova + length` (read and clear).
    pub fn report(&mut self, iova: u64, length: u64, max: u32) -> Report {
        let end = iova.saturating_add(length);
        let start = iova - iova % self.page_size;
        let pages: Vec<u64> = self
            .dirty
            .range(start..end)
            .take(max as usize)
            .copied()
            .collect();
        for page in &pages {
            self.dirty.remove(page);
        }
        let more = self.dirty.range(start..end).next().is_some();
        Report { pages, more }
    }
}

#[cfg(test)]
// Lists of one tracked range are meant, not ranges of numbers.
#[allow(clippy::single_range_in_vec_init)]
mod tests {
    use super::*;

    #[test]
    fn creation_checks_page_size_ranges_and_limits() {
        let limits = TrackerLimits::default();
        assert!(PageTracker::new(1, 12, vec![0..0x1000], &limits).is_ok());
        assert_eq!(
            PageTracker::new(1, 11, vec![0..0x1000], &limits).unwrap_err(),
            SYNDROME_FIELD
        );
        assert_eq!(
            PageTracker::new(1, 22, vec![0..0x40_0000], &limits).unwrap_err(),
            SYNDROME_FIELD
        );
        let five: Vec<_> = (0..5u64).map(|i| i * 0x2000..i * 0x2000 + 0x1000).collect();
        assert_eq!(
            PageTracker::new(1, 12, five, &limits).unwrap_err(),
            SYNDROME_TRACKER
        );
        for bad in [
            vec![0..0x800],
            vec![0x1000..0x1000],
            vec![0..0x2000, 0x1000..0x3000],
        ] {
            assert_eq!(
                PageTracker::new(1, 12, bad, &limits).unwrap_err(),
                SYNDROME_FIELD
            );
        }
    }

    #[test]
    fn reports_read_and_clear_within_the_range_and_say_when_more_remain() {
        let limits = TrackerLimits::default();
        let mut t = PageTracker::new(7, 12, vec![0x10000..0x20000], &limits).unwrap();
        t.mark(0x10ff0, 0x20);
        t.mark(0x1f000, 0x10000);
        t.mark(0x0, 0x1000);
        let first = t.report(0x10000, 0x10000, 2);
        assert_eq!(first.pages, vec![0x10000, 0x11000]);
        assert!(first.more);
        let second = t.report(0x10000, 0x10000, 2);
        assert_eq!(second.pages, vec![0x1f000]);
        assert!(!second.more);
        assert!(t.report(0x10000, 0x10000, 8).pages.is_empty());
    }
}
