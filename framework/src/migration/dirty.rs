//! The dirty bitmap of a DMA logging session (VFIO DMA_LOGGING_START/REPORT/STOP).
//!
//! A [`DirtyBitmap`] covers the IOVA ranges a session tracks, one bit per page. Writers mark
//! pages with [`DirtyBitmap::mark`] after their data is written; [`DirtyBitmap::report`] reads
//! and clears the bits of a range. Both take `&self` and may run concurrently without losing
//! a bit, and a report that takes a bit also sees the data written before it was set (so a
//! VMM never copies a page before the write that dirtied it).
//!
//! The bitmap is allocated lazily in chunks of [`CHUNK_PAGES`] pages (32 KiB of bitmap, 1 GiB
//! of IOVA at 4 KiB pages): starting a session over a 1 TiB range costs a table of 1024
//! empty slots, and a report writes zeros for chunks nothing was written to. Writers share a
//! chunk (an atomic OR per word under its read lock); a report holds each chunk alone for the
//! few microseconds it takes to copy and clear its 32 KiB with plain loads and stores, which
//! is close to a memory copy, where a locked swap per word costs several times one.
//!
//! # Rules, as Linux applies them (drivers/vfio/vfio_main.c and the mlx5 and pds drivers)
//!
//! - START: at least one range ([`DirtyError::NoRanges`]), at most [`MAX_RANGES`]
//!   ([`DirtyError::TooManyRanges`], E2BIG); each range non-empty, aligned to the requested
//!   page size, not overflowing (EOVERFLOW), and not overlapping another (EINVAL, Linux's
//!   interval-tree check). The page size used is the requested one rounded up to a power of
//!   two of at least [`MIN_PAGE_SIZE`] (the spec lets a device round it and report the size
//!   used); above [`MAX_PAGE_SIZE`] it is refused. Ranges that touch once aligned to that page
//!   size are merged, as a device may merge ranges it cannot track separately.
//! - REPORT: the session's page size, an IOVA aligned to it, a non-empty length inside one
//!   tracked range (adjacent requested ranges count as one), and a bitmap of exactly
//!   `ceil(length / page_size / 64)` words, which the report writes whole (a set bit for each
//!   dirty page, the others clear); the session's bits for the range are cleared.

use std::ops::Range;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::RwLock;

/// Smallest page size tracked and reported (4 KiB, the smallest Linux accepts in a REPORT).
pub const MIN_PAGE_SIZE: u64 = 4096;
/// Largest page size tracked (1 GiB).
pub const MAX_PAGE_SIZE: u64 = 1 << 30;
/// Most ranges one session tracks (Linux's core accepts 256 with 4 KiB pages).
pub const MAX_RANGES: usize = 1024;
/// Most pages one session tracks, all ranges together (256 TiB at 4 KiB pages; the bitmap is
/// allocated only where pages are written).
pub const MAX_PAGES: u64 = 1 << 36;
/// Pages per lazily allocated chunk of the bitmap.
pub const CHUNK_PAGES: u64 = 1 << 18;

/// Words of one chunk (32 KiB).
const CHUNK_WORDS: usize = (CHUNK_PAGES / 64) as usize;

/// A logging request or report the bitmap refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DirtyError {
    /// The page size is 0 or too large.
    #[error("page size {0:#x} cannot be tracked")]
    PageSize(u64),
    /// START without ranges.
    #[error("no ranges to track")]
    NoRanges,
    /// START with more ranges than [`MAX_RANGES`].
    #[error("{count} ranges to track, at most {max}")]
    TooManyRanges {
        /// Ranges asked for.
        count: usize,
        /// The bound.
        max: usize,
    },
    /// A range is empty or not aligned to the page size.
    #[error("range {iova:#x}+{length:#x} is empty or not aligned to {page_size:#x}")]
    Misaligned {
        /// Start of the range.
        iova: u64,
        /// Its length.
        length: u64,
        /// The page size it must be aligned to.
        page_size: u64,
    },
    /// A range runs past the end of the address space.
    #[error("range {iova:#x}+{length:#x} overflows")]
    Overflow {
        /// Start of the range.
        iova: u64,
        /// Its length.
        length: u64,
    },
    /// Two START ranges overlap.
    #[error("range {iova:#x}+{length:#x} overlaps another")]
    Overlap {
        /// Start of the range.
        iova: u64,
        /// Its length.
        length: u64,
    },
    /// The ranges hold more than [`MAX_PAGES`] pages.
    #[error("{pages} pages to track, at most {max}")]
    TooLarge {
        /// Pages asked for.
        pages: u64,
        /// The bound.
        max: u64,
    },
    /// A REPORT with a page size other than the session's.
    #[error("report page size {got:#x}, the session tracks {page_size:#x} pages")]
    ReportPageSize {
        /// The page size of the report.
        got: u64,
        /// The session's.
        page_size: u64,
    },
    /// A REPORT of a range that is not inside one tracked range.
    #[error("{iova:#x}+{length:#x} is not inside a tracked range")]
    Untracked {
        /// Start of the report.
        iova: u64,
        /// Its length.
        length: u64,
    },
    /// A REPORT into a bitmap of the wrong size.
    #[error("bitmap of {got} words, {expected} expected")]
    BitmapSize {
        /// Words given.
        got: usize,
        /// Words the report needs.
        expected: u64,
    },
}

impl DirtyError {
    /// The errno Linux answers with.
    pub fn errno(&self) -> i32 {
        match self {
            Self::TooManyRanges { .. } | Self::TooLarge { .. } => libc::E2BIG,
            Self::Overflow { .. } => libc::EOVERFLOW,
            _ => libc::EINVAL,
        }
    }
}

/// The page size a session asking for `requested` tracks: rounded up to a power of two of
/// at least [`MIN_PAGE_SIZE`]; 0 and sizes that round above [`MAX_PAGE_SIZE`] are refused.
pub fn tracking_page_size(requested: u64) -> Result<u64, DirtyError> {
    if requested == 0 {
        return Err(DirtyError::PageSize(requested));
    }
    requested
        .max(MIN_PAGE_SIZE)
        .checked_next_power_of_two()
        .filter(|&size| size <= MAX_PAGE_SIZE)
        .ok_or(DirtyError::PageSize(requested))
}

/// A chunk of the bitmap: [`CHUNK_WORDS`] words. Writers share it (atomic ORs under the read
/// lock); a report takes it alone for the time of reading and clearing its words, so that it
/// can do so with plain loads and stores (a locked read-modify-write per word would cost
/// several times a memory copy).
type Chunk = RwLock<Box<[AtomicU64]>>;

fn new_chunk() -> Chunk {
    RwLock::new((0..CHUNK_WORDS).map(|_| AtomicU64::new(0)).collect())
}

/// The mask of bits `lo..=hi` of a word.
fn bits(lo: u64, hi: u64) -> u64 {
    (!0u64 << lo) & (!0u64 >> (63 - hi))
}

/// One tracked range: pages `first..first + pages` (page numbers, IOVA >> page shift).
struct Tracked {
    first: u64,
    pages: u64,
    chunks: Box<[OnceLock<Chunk>]>,
}

impl Tracked {
    fn new(first: u64, pages: u64) -> Self {
        let chunks = pages.div_ceil(CHUNK_PAGES);
        Self {
            first,
            pages,
            chunks: (0..chunks).map(|_| OnceLock::new()).collect(),
        }
    }

    /// The last page (inclusive).
    fn last(&self) -> u64 {
        self.first + (self.pages - 1)
    }

    /// Runs `f(chunk, words)` for each chunk holding words `from..to` (relative to the
    /// range), with the chunk's word indexes; `None` for a chunk never written.
    fn chunks(&self, from: u64, to: u64, mut f: impl FnMut(Option<&Chunk>, Range<usize>, u64)) {
        let per_chunk = CHUNK_WORDS as u64;
        let mut w = from;
        while w < to {
            let chunk = w / per_chunk;
            let end = ((chunk + 1) * per_chunk).min(to);
            // Word indexes are below MAX_PAGES / 64, so they fit a usize.
            let slot = self.chunks.get(chunk as usize).and_then(OnceLock::get);
            let base = chunk * per_chunk;
            f(slot, (w - base) as usize..(end - base) as usize, w);
            w = end;
        }
    }

    /// Sets the bits of relative pages `lo..=hi`.
    fn set(&self, lo: u64, hi: u64) {
        let (first_word, last_word) = (lo / 64, hi / 64);
        let per_chunk = CHUNK_WORDS as u64;
        let mut w = first_word;
        while w <= last_word {
            let chunk = w / per_chunk;
            let end = ((chunk + 1) * per_chunk).min(last_word + 1);
            let Some(slot) = self.chunks.get(chunk as usize) else {
                return;
            };
            let words = slot.get_or_init(new_chunk).read();
            for w in w..end {
                let mask = bits(
                    if w == first_word { lo % 64 } else { 0 },
                    if w == last_word { hi % 64 } else { 63 },
                );
                // The read lock orders the data written before with the report that takes
                // the bit (it takes the write lock).
                words[(w - chunk * per_chunk) as usize].fetch_or(mask, Ordering::Relaxed);
            }
            w = end;
        }
    }

    /// Writes the bits of relative pages `lo..=hi` into `out` (bit 0 = page `lo`; every word of
    /// `out` written), clearing them.
    fn take(&self, lo: u64, hi: u64, out: &mut [u64]) {
        if !lo.is_multiple_of(64) {
            out.fill(0);
            self.take_shifted(lo, hi, out);
            return;
        }
        let (first_word, last_word) = (lo / 64, hi / 64);
        // Whole words first, then the last word's pages up to `hi`.
        let whole_end = if hi % 64 == 63 {
            last_word + 1
        } else {
            last_word
        };
        self.chunks(first_word, whole_end, |chunk, range, from| {
            let at = (from - first_word) as usize;
            let Some(dst) = out.get_mut(at..at + range.len()) else {
                return;
            };
            match chunk {
                None => dst.fill(0),
                Some(chunk) => {
                    let mut words = chunk.write();
                    for (d, word) in dst.iter_mut().zip(&mut words[range]) {
                        let word = word.get_mut();
                        *d = *word;
                        *word = 0;
                    }
                }
            }
        });
        if whole_end == last_word {
            let mask = bits(0, hi % 64);
            let mut taken = 0;
            self.chunks(last_word, last_word + 1, |chunk, range, _| {
                if let Some(chunk) = chunk {
                    let mut words = chunk.write();
                    let word = words[range.start].get_mut();
                    taken = *word & mask;
                    *word &= !mask;
                }
            });
            if let Some(d) = out.get_mut((last_word - first_word) as usize) {
                *d = taken;
            }
        }
    }

    /// [`Tracked::take`] for `lo` not at a word boundary: ORs each source word's bits into
    /// the two output words they straddle (`out` zeroed before).
    fn take_shifted(&self, lo: u64, hi: u64, out: &mut [u64]) {
        let (first_word, last_word) = (lo / 64, hi / 64);
        let shift = lo % 64;
        self.chunks(first_word, last_word + 1, |chunk, range, from| {
            let Some(chunk) = chunk else {
                return;
            };
            let mut words = chunk.write();
            for (w, word) in (from..).zip(&mut words[range]) {
                let mask = bits(
                    if w == first_word { shift } else { 0 },
                    if w == last_word { hi % 64 } else { 63 },
                );
                let word = word.get_mut();
                let taken = *word & mask;
                *word &= !mask;
                let o = (w - first_word) as usize;
                if let Some(d) = out.get_mut(o) {
                    *d |= taken >> shift;
                }
                if let Some(d) = o.checked_sub(1).and_then(|p| out.get_mut(p)) {
                    *d |= taken << (64 - shift);
                }
            }
        });
    }
}

/// The dirty pages of a logging session's ranges.
pub struct DirtyBitmap {
    page_shift: u32,
    /// Sorted, disjoint and not adjacent.
    ranges: Box<[Tracked]>,
}

impl std::fmt::Debug for DirtyBitmap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirtyBitmap")
            .field("page_size", &self.page_size())
            .field(
                "ranges",
                &self
                    .ranges
                    .iter()
                    .map(|r| (r.first << self.page_shift, r.pages))
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl DirtyBitmap {
    /// A clean bitmap of `ranges` for a START that asked for `requested_page_size`; the page
    /// size used is [`tracking_page_size`] of it (see [`DirtyBitmap::page_size`]).
    pub fn new(requested_page_size: u64, ranges: &[Range<u64>]) -> Result<Self, DirtyError> {
        let page_size = tracking_page_size(requested_page_size)?;
        if ranges.is_empty() {
            return Err(DirtyError::NoRanges);
        }
        if ranges.len() > MAX_RANGES {
            return Err(DirtyError::TooManyRanges {
                count: ranges.len(),
                max: MAX_RANGES,
            });
        }
        let mut sorted = Vec::with_capacity(ranges.len());
        for range in ranges {
            let (iova, length) = (range.start, range.end.wrapping_sub(range.start));
            if range.end < range.start {
                return Err(DirtyError::Overflow { iova, length });
            }
            if length == 0
                || !iova.is_multiple_of(requested_page_size)
                || !length.is_multiple_of(requested_page_size)
            {
                return Err(DirtyError::Misaligned {
                    iova,
                    length,
                    page_size: requested_page_size,
                });
            }
            sorted.push((iova, length));
        }
        sorted.sort_unstable();
        // Sorted by start, a range overlaps another exactly when it starts before the end of
        // the one before it.
        for pair in sorted.windows(2) {
            let ((start, length), (next, next_length)) = (pair[0], pair[1]);
            if next - start < length {
                return Err(DirtyError::Overlap {
                    iova: next,
                    length: next_length,
                });
            }
        }
        let page_shift = page_size.trailing_zeros();
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(sorted.len());
        for (iova, length) in sorted {
            let first = iova >> page_shift;
            let last = (iova + (length - 1)) >> page_shift;
            match merged.last_mut() {
                Some((_, prev_last)) if first <= prev_last.saturating_add(1) => {
                    *prev_last = (*prev_last).max(last);
                }
                _ => merged.push((first, last)),
            }
        }
        let pages = merged.iter().fold(0u64, |sum, (first, last)| {
            sum.saturating_add(last - first + 1)
        });
        if pages > MAX_PAGES {
            return Err(DirtyError::TooLarge {
                pages,
                max: MAX_PAGES,
            });
        }
        Ok(Self {
            page_shift,
            ranges: merged
                .into_iter()
                .map(|(first, last)| Tracked::new(first, last - first + 1))
                .collect(),
        })
    }

    /// The page size tracked (and that reports must use).
    pub fn page_size(&self) -> u64 {
        1 << self.page_shift
    }

    /// Marks the pages of `iova..iova + len` written; the parts outside the tracked ranges are
    /// ignored. Call it after the data is written.
    pub fn mark(&self, iova: u64, len: u64) {
        if len == 0 {
            return;
        }
        let first = iova >> self.page_shift;
        let last = iova.saturating_add(len - 1) >> self.page_shift;
        let start = self.ranges.partition_point(|r| r.last() < first);
        for range in self.ranges[start..].iter().take_while(|r| r.first <= last) {
            let lo = first.max(range.first) - range.first;
            let hi = last.min(range.last()) - range.first;
            range.set(lo, hi);
        }
    }

    /// DMA_LOGGING_REPORT: writes `bitmap` whole, bit `i` (word `i / 64`, bit `i % 64`) set
    /// when page `iova + i * page_size` was written since the last report of it, and clears
    /// those pages. A device-side tracker's bits are ORed in afterwards.
    pub fn report(
        &self,
        iova: u64,
        length: u64,
        page_size: u64,
        bitmap: &mut [u64],
    ) -> Result<(), DirtyError> {
        if page_size != self.page_size() {
            return Err(DirtyError::ReportPageSize {
                got: page_size,
                page_size: self.page_size(),
            });
        }
        if length == 0 || !iova.is_multiple_of(page_size) {
            return Err(DirtyError::Misaligned {
                iova,
                length,
                page_size,
            });
        }
        if iova.checked_add(length).is_none() {
            return Err(DirtyError::Overflow { iova, length });
        }
        let pages = length.div_ceil(page_size);
        let expected = pages.div_ceil(64);
        if bitmap.len() as u64 != expected {
            return Err(DirtyError::BitmapSize {
                got: bitmap.len(),
                expected,
            });
        }
        let first = iova >> self.page_shift;
        let last = first + (pages - 1);
        let at = self.ranges.partition_point(|r| r.last() < first);
        let range = self
            .ranges
            .get(at)
            .filter(|r| r.first <= first && last <= r.last())
            .ok_or(DirtyError::Untracked { iova, length })?;
        range.take(first - range.first, last - range.first, bitmap);
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::single_range_in_vec_init)]
mod tests {
    use super::*;

    const P: u64 = 4096;

    fn report(bitmap: &DirtyBitmap, iova: u64, pages: u64) -> Vec<u64> {
        let mut out = vec![0u64; pages.div_ceil(64) as usize];
        bitmap.report(iova, pages * P, P, &mut out).unwrap();
        out
    }

    #[test]
    fn page_sizes_round_up_to_a_power_of_two() {
        assert_eq!(tracking_page_size(4096), Ok(4096));
        assert_eq!(tracking_page_size(512), Ok(4096));
        assert_eq!(tracking_page_size(5000), Ok(8192));
        assert_eq!(tracking_page_size(1 << 21), Ok(1 << 21));
        assert!(tracking_page_size(0).is_err());
        assert!(tracking_page_size((1 << 30) + 1).is_err());
        assert!(tracking_page_size(u64::MAX).is_err());
    }

    #[test]
    fn marks_are_reported_once() {
        let bitmap = DirtyBitmap::new(P, &[0x10_0000..0x20_0000]).unwrap();
        bitmap.mark(0x10_0000, 1);
        bitmap.mark(0x10_0000 + 3 * P - 1, 2); // pages 2 and 3
        bitmap.mark(0x10_0000 + 64 * P, P); // page 64
        bitmap.mark(0, 0x10_0000); // before the range: ignored
        bitmap.mark(0x1f_f000, 0x1_0000); // the last page, and past the end
        let got = report(&bitmap, 0x10_0000, 256);
        assert_eq!(got, vec![0b1101, 1, 0, 1 << 63]);
        assert_eq!(report(&bitmap, 0x10_0000, 256), vec![0; 4]);
    }

    #[test]
    fn reports_of_part_of_a_range_leave_the_rest() {
        let bitmap = DirtyBitmap::new(P, &[0..200 * P]).unwrap();
        for page in [0, 5, 63, 64, 70, 130, 199] {
            bitmap.mark(page * P, P);
        }
        // Pages 5..=70: an offset that is not a multiple of 64.
        let got = report(&bitmap, 5 * P, 66);
        assert_eq!(got, vec![1 | 1 << 58 | 1 << 59, 1 << 1]);
        // What the report did not cover is still there; what it covered is gone.
        let all = report(&bitmap, 0, 200);
        assert_eq!(all, vec![1, 0, 1 << 2, 1 << 7]);
        // A length that is not a multiple of the page size counts the partial page.
        bitmap.mark(10 * P, 1);
        let mut out = [0u64; 1];
        bitmap.report(10 * P, P / 2, P, &mut out).unwrap();
        assert_eq!(out, [1]);
    }

    #[test]
    fn reports_write_the_whole_bitmap() {
        let bitmap = DirtyBitmap::new(P, &[0..(1 << 20) * P]).unwrap();
        bitmap.mark(P, P);
        bitmap.mark(CHUNK_PAGES * P, P);
        // Whatever the buffer held is overwritten: written chunks, untouched chunks, the
        // last partial word, and with an offset that is not a multiple of 64 pages.
        let mut out = vec![!0u64; (CHUNK_PAGES * 2 / 64) as usize + 1];
        bitmap
            .report(0, (CHUNK_PAGES * 2 + 3) * P, P, &mut out)
            .unwrap();
        let set: Vec<usize> = (0..out.len() * 64)
            .filter(|i| out[i / 64] & (1 << (i % 64)) != 0)
            .collect();
        assert_eq!(set, vec![1, CHUNK_PAGES as usize]);
        bitmap.mark(5 * P, P);
        let mut out = [!0u64; 2];
        bitmap.report(3 * P, 100 * P, P, &mut out).unwrap();
        assert_eq!(out, [1 << 2, 0]);
    }

    #[test]
    fn start_refusals() {
        let err = |ranges: &[Range<u64>]| DirtyBitmap::new(P, ranges).unwrap_err();
        assert_eq!(err(&[]), DirtyError::NoRanges);
        assert_eq!(err(&[0..P, P / 2..2 * P]).errno(), libc::EINVAL);
        assert!(matches!(
            err(&[2 * P..4 * P, 0..3 * P]),
            DirtyError::Overlap { iova, .. } if iova == 2 * P
        ));
        assert!(matches!(err(&[P..P]), DirtyError::Misaligned { .. }));
        assert!(matches!(err(&[0..P + 1]), DirtyError::Misaligned { .. }));
        let many: Vec<_> = (0..=MAX_RANGES as u64)
            .map(|i| i * P..(i + 1) * P)
            .collect();
        assert_eq!(err(&many).errno(), libc::E2BIG);
        assert_eq!(err(&[0..!(P - 1)]).errno(), libc::E2BIG);
        #[allow(clippy::reversed_empty_ranges)]
        let backwards = [2 * P..P];
        assert_eq!(err(&backwards).errno(), libc::EOVERFLOW);
        assert!(DirtyBitmap::new(0, &[0..P]).is_err());
        // 256 disjoint ranges are fine, and so is the top of the address space.
        let ranges: Vec<_> = (0..256u64).map(|i| i * 2 * P..(i * 2 + 1) * P).collect();
        DirtyBitmap::new(P, &ranges).unwrap();
        DirtyBitmap::new(P, &[u64::MAX - 2 * P + 1..u64::MAX - P + 1]).unwrap();
    }

    #[test]
    fn small_pages_round_and_adjacent_ranges_merge() {
        // 2 KiB pages asked for: tracked at 4 KiB; the two halves of a page become one range.
        let bitmap = DirtyBitmap::new(2048, &[0..2048, 2048..P, 8 * P..9 * P]).unwrap();
        assert_eq!(bitmap.page_size(), P);
        bitmap.mark(100, 1);
        assert_eq!(report(&bitmap, 0, 1), vec![1]);
        bitmap.mark(8 * P, 1);
        assert_eq!(report(&bitmap, 8 * P, 1), vec![1]);
    }

    #[test]
    fn report_refusals() {
        let bitmap = DirtyBitmap::new(P, &[0..128 * P, 256 * P..512 * P]).unwrap();
        let mut two = [0u64; 2];
        let refused = |iova, length, page_size, out: &mut [u64]| {
            bitmap.report(iova, length, page_size, out).unwrap_err()
        };
        assert!(matches!(
            refused(0, 128 * P, 2 * P, &mut two[..1]),
            DirtyError::ReportPageSize { .. }
        ));
        assert!(matches!(
            refused(0, 128 * P, P, &mut two[..1]),
            DirtyError::BitmapSize { expected: 2, .. }
        ));
        assert!(matches!(
            refused(64 * P, 128 * P, P, &mut two),
            DirtyError::Untracked { .. }
        ));
        assert!(matches!(
            refused(200 * P, 64 * P, P, &mut two[..1]),
            DirtyError::Untracked { .. }
        ));
        assert!(matches!(
            refused(1, P, P, &mut two[..1]),
            DirtyError::Misaligned { .. }
        ));
        assert!(matches!(
            refused(0, 0, P, &mut two[..0]),
            DirtyError::Misaligned { .. }
        ));
        assert_eq!(
            refused(u64::MAX - P + 1, 2 * P, P, &mut two[..1]).errno(),
            libc::EOVERFLOW
        );
        bitmap.report(256 * P, 128 * P, P, &mut two).unwrap();
    }

    #[test]
    fn a_terabyte_is_cheap_until_written() {
        let tib = 1u64 << 40;
        let bitmap = DirtyBitmap::new(P, &[0..tib]).unwrap();
        bitmap.mark(tib - P, P);
        bitmap.mark(tib / 2, 3 * P);
        let words = (tib / P / 64) as usize;
        let mut out = vec![0u64; words];
        bitmap.report(0, tib, P, &mut out).unwrap();
        assert_eq!(out[words - 1], 1 << 63);
        assert_eq!(out[words / 2], 0b111);
        assert_eq!(out.iter().map(|w| w.count_ones()).sum::<u32>(), 4);
        // Only the two chunks written were allocated.
        let range = &bitmap.ranges[0];
        assert_eq!(range.chunks.iter().filter(|c| c.get().is_some()).count(), 2);
    }

    #[test]
    fn concurrent_marks_are_never_lost() {
        let bitmap = std::sync::Arc::new(DirtyBitmap::new(P, &[0..4096 * P]).unwrap());
        let writers: Vec<_> = (0..4u64)
            .map(|t| {
                let bitmap = std::sync::Arc::clone(&bitmap);
                std::thread::spawn(move || {
                    for page in (t..4096).step_by(4) {
                        bitmap.mark(page * P, 1);
                    }
                })
            })
            .collect();
        let mut seen = vec![0u64; 64];
        for _ in 0..50 {
            let mut out = vec![0u64; 64];
            bitmap.report(0, 4096 * P, P, &mut out).unwrap();
            for (s, o) in seen.iter_mut().zip(&out) {
                assert_eq!(*s & o, 0, "a page reported twice");
                *s |= o;
            }
        }
        for w in writers {
            w.join().unwrap();
        }
        let mut out = vec![0u64; 64];
        bitmap.report(0, 4096 * P, P, &mut out).unwrap();
        for (s, o) in seen.iter_mut().zip(&out) {
            *s |= o;
        }
        assert!(seen.iter().all(|&w| w == !0));
    }
}
