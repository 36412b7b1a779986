//! Buffers this process made and alone writes ([`super::SharedBuffer::create_exclusive`]),
//! known by their memfd's identity, so that another connection of this process given the
//! same memfd (the destination of a migration whose source this process serves too) uses the
//! same mapping instead of a read-only one of its own, and takes the bytes in place.
//!
//! Every handle on such a buffer in this process reaches its bytes through [`RangeLocks`]: a
//! range being written (a source's save) is not read, and a range being read (a
//! destination's check and load) is not written, whatever the client asks of the two
//! connections. No other process can write the bytes at all (F_SEAL_FUTURE_WRITE).

use std::ops::{Deref, DerefMut, Range};
use std::sync::{Arc, Weak};

use memmap2::MmapRaw;
use parking_lot::{Condvar, Mutex};

/// A buffer made here: its mapping (the one writable mapping of it anywhere), the ranges in
/// use, and the identity of its memfd.
pub(super) struct MadeHere {
    map: MmapRaw,
    locks: RangeLocks,
    id: FileId,
}

/// A file's identity: device and inode.
pub(super) type FileId = (u64, u64);

/// The buffers made here that are still alive.
static MADE_HERE: Mutex<Vec<Weak<MadeHere>>> = Mutex::new(Vec::new());

impl MadeHere {
    /// Registers `map`, the only writable mapping of the memfd `id`, as made here.
    pub(super) fn register(map: MmapRaw, id: FileId) -> Arc<Self> {
        let made = Arc::new(Self {
            map,
            locks: RangeLocks::default(),
            id,
        });
        let mut all = MADE_HERE.lock();
        all.retain(|weak| weak.strong_count() > 0);
        all.push(Arc::downgrade(&made));
        made
    }

    /// The buffer made here whose memfd is `id`, if it is alive.
    pub(super) fn find(id: FileId) -> Option<Arc<Self>> {
        MADE_HERE
            .lock()
            .iter()
            .filter_map(Weak::upgrade)
            .find(|made| made.id == id)
    }

    /// Its size in bytes.
    pub(super) fn len(&self) -> usize {
        self.map.len()
    }

    /// `range` (within the buffer), once no one in this process writes any of it, until the
    /// guard is dropped.
    pub(super) fn read(&self, range: Range<usize>) -> ReadGuard<'_> {
        let lock = self.locks.lock(range.clone(), Use::Read);
        // SAFETY: `range` lies within the mapping (the callers check it against `len`),
        // which lives as long as `self` and cannot lose pages: the memfd is sealed against
        // shrinking, and hole punching is refused under F_SEAL_FUTURE_WRITE. No other
        // process can write these bytes (every other mapping is read-only, write(2) fails),
        // and in this process only a write lock gives access for writing, which `lock`
        // excludes for as long as the guard lives.
        let bytes =
            unsafe { std::slice::from_raw_parts(self.map.as_ptr().add(range.start), range.len()) };
        ReadGuard { bytes, _lock: lock }
    }

    /// `range` (within the buffer) to write, once no one in this process reads or writes
    /// any of it, until the guard is dropped.
    pub(super) fn write(&self, range: Range<usize>) -> WriteGuard<'_> {
        let lock = self.locks.lock(range.clone(), Use::Write);
        // SAFETY: as in `read`; the mapping is this process's writable one, and `lock`
        // excludes every other reader and writer of `range` in this process for as long as
        // the guard lives.
        let bytes = unsafe {
            std::slice::from_raw_parts_mut(self.map.as_mut_ptr().add(range.start), range.len())
        };
        WriteGuard { bytes, _lock: lock }
    }
}

/// Bytes of a buffer made here, read-locked.
pub struct ReadGuard<'a> {
    bytes: &'a [u8],
    _lock: RangeLock<'a>,
}

impl Deref for ReadGuard<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.bytes
    }
}

/// Bytes of a buffer made here, write-locked.
pub struct WriteGuard<'a> {
    bytes: &'a mut [u8],
    _lock: RangeLock<'a>,
}

impl Deref for WriteGuard<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.bytes
    }
}

impl DerefMut for WriteGuard<'_> {
    fn deref_mut(&mut self) -> &mut [u8] {
        self.bytes
    }
}

/// What a range is held for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Use {
    Read,
    Write,
}

/// Ranges of a buffer held for reading or writing: overlapping ranges are held by any number
/// of readers or by one writer. A writer waiting for a range goes before readers that come
/// after it, so that readers (another connection, maybe another client's that was given the
/// memfd) cannot keep the maker from writing.
#[derive(Default)]
struct RangeLocks {
    state: Mutex<Held>,
    released: Condvar,
}

/// The ranges held, and those writers wait for.
#[derive(Default)]
struct Held {
    held: Vec<(Range<usize>, Use)>,
    writers_waiting: Vec<Range<usize>>,
}

fn overlap(a: &Range<usize>, b: &Range<usize>) -> bool {
    a.start < b.end && b.start < a.end
}

impl RangeLocks {
    /// Holds `range` for `how` once nothing held conflicts with it (and, for a reader, no
    /// writer waits for any of it). A holder never waits for another range while it holds
    /// one, so this cannot deadlock.
    fn lock(&self, range: Range<usize>, how: Use) -> RangeLock<'_> {
        let mut state = self.state.lock();
        if how == Use::Write {
            state.writers_waiting.push(range.clone());
        }
        loop {
            let held = state.held.iter().any(|(other, used)| {
                (how == Use::Write || *used == Use::Write) && overlap(other, &range)
            });
            let writer_first =
                how == Use::Read && state.writers_waiting.iter().any(|w| overlap(w, &range));
            if !held && !writer_first {
                break;
            }
            self.released.wait(&mut state);
        }
        if how == Use::Write
            && let Some(at) = state.writers_waiting.iter().position(|w| *w == range)
        {
            state.writers_waiting.swap_remove(at);
        }
        state.held.push((range.clone(), how));
        RangeLock {
            locks: self,
            range,
            how,
        }
    }
}

/// A range held until dropped.
struct RangeLock<'a> {
    locks: &'a RangeLocks,
    range: Range<usize>,
    how: Use,
}

impl Drop for RangeLock<'_> {
    fn drop(&mut self) {
        let mut state = self.locks.state.lock();
        if let Some(at) = state
            .held
            .iter()
            .position(|(range, how)| *range == self.range && *how == self.how)
        {
            state.held.swap_remove(at);
        }
        self.locks.released.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_write_waits_for_overlapping_readers_and_not_for_others() {
        let locks = Arc::new(RangeLocks::default());
        let reading = locks.lock(100..200, Use::Read);
        // Readers share; a writer elsewhere does not wait.
        drop(locks.lock(150..250, Use::Read));
        drop(locks.lock(200..300, Use::Write));
        let written = Arc::new(AtomicBool::new(false));
        let writer = {
            let (locks, written) = (Arc::clone(&locks), Arc::clone(&written));
            std::thread::spawn(move || {
                let _held = locks.lock(0..101, Use::Write);
                written.store(true, Ordering::SeqCst);
            })
        };
        std::thread::sleep(Duration::from_millis(50));
        assert!(
            !written.load(Ordering::SeqCst),
            "a write overlapping a read went ahead"
        );
        drop(reading);
        writer.join().unwrap();
        assert!(written.load(Ordering::SeqCst));
        let state = locks.state.lock();
        assert!(state.held.is_empty() && state.writers_waiting.is_empty());
    }

    #[test]
    fn a_waiting_writer_goes_before_readers_that_come_after_it() {
        let locks = Arc::new(RangeLocks::default());
        let first = locks.lock(0..100, Use::Read);
        let order = Arc::new(Mutex::new(Vec::new()));
        std::thread::scope(|scope| {
            scope.spawn(|| {
                let _held = locks.lock(50..60, Use::Write);
                order.lock().push("writer");
            });
            // Until the writer waits.
            while locks.state.lock().writers_waiting.is_empty() {
                std::thread::yield_now();
            }
            scope.spawn(|| {
                let _held = locks.lock(0..100, Use::Read);
                order.lock().push("reader");
            });
            std::thread::sleep(Duration::from_millis(50));
            assert!(order.lock().is_empty(), "{:?}", order.lock());
            drop(first);
        });
        assert_eq!(*order.lock(), ["writer", "reader"]);
    }
}
