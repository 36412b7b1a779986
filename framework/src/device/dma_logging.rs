//! DMA dirty logging (VFIO DMA logging) of a function that migrates: which pages of guest
//! memory the device wrote since the last report.
//!
//! One session at a time. While it is on, every write the function makes through the guest
//! memory it was given ([`super::VirtualFunction::attach`] wraps it in [`LoggedDma`]: `write`
//! and the destination of `copy`) marks its pages in the session's [`DirtyBitmap`] once the
//! data is written; with logging off a write pays one relaxed atomic load for it. A backend
//! with a device-side [`DirtyTracker`](crate::migration::DirtyTracker) is started, reported
//! and stopped with the session, and its bits are ORed into each report. The rules for
//! ranges, page sizes and reports are those of [`crate::migration::dirty`].

use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::{Mutex, RwLock};

use crate::backend::{DmaAccess, DmaError};
use crate::migration::dirty::{DirtyBitmap, DirtyError, tracking_page_size};
use crate::migration::{MigrationError, MigrationHooks};

/// Why a logging call failed.
#[derive(Debug, thiserror::Error)]
pub enum LoggingError {
    /// The function does not migrate, so it does not log either.
    #[error("the function does not migrate")]
    NotMigratable,
    /// A session is already on.
    #[error("a DMA logging session is already on")]
    Busy,
    /// No session is on.
    #[error("no DMA logging session is on")]
    NotLogging,
    /// The ranges, page size or report asked for are invalid.
    #[error(transparent)]
    Dirty(#[from] DirtyError),
    /// The device's tracker chose a page size the session cannot use.
    #[error("the device's dirty tracker chose an unusable page size {0:#x}")]
    TrackerPageSize(u64),
    /// The device's tracker failed.
    #[error("dirty tracker: {0}")]
    Tracker(#[source] MigrationError),
}

impl LoggingError {
    /// The errno a VFIO device answers with.
    pub fn errno(&self) -> i32 {
        match self {
            Self::NotMigratable => libc::ENOTTY,
            Self::Busy => libc::EBUSY,
            Self::NotLogging | Self::TrackerPageSize(_) => libc::EINVAL,
            Self::Dirty(e) => e.errno(),
            Self::Tracker(MigrationError::InvalidData(_)) => libc::EINVAL,
            Self::Tracker(MigrationError::Device(_)) => libc::EIO,
        }
    }
}

/// The bitmap of the session, when one is on; shared with the function's [`LoggedDma`].
#[derive(Default)]
struct DirtyLog {
    /// Whether `bitmap` is set: the only cost of a write while logging is off.
    on: AtomicBool,
    bitmap: RwLock<Option<Arc<DirtyBitmap>>>,
}

impl DirtyLog {
    fn set(&self, bitmap: Option<Arc<DirtyBitmap>>) {
        let mut slot = self.bitmap.write();
        self.on.store(bitmap.is_some(), Ordering::Relaxed);
        *slot = bitmap;
    }

    /// Marks `iova..iova+len` written, when logging is on.
    #[inline]
    fn mark(&self, iova: u64, len: usize) {
        if self.on.load(Ordering::Relaxed)
            && let Some(bitmap) = self.bitmap.read().as_ref()
        {
            bitmap.mark(iova, len as u64);
        }
    }
}

/// Guest memory as the function is given it: the VMM's, with the writes marked while a
/// session is on. A write that fails may have written part of its range: all of it is marked.
pub(super) struct LoggedDma {
    inner: Arc<dyn DmaAccess>,
    log: Arc<DirtyLog>,
}

impl DmaAccess for LoggedDma {
    fn read(&self, iova: u64, data: &mut [u8]) -> Result<(), DmaError> {
        self.inner.read(iova, data)
    }

    fn write(&self, iova: u64, data: &[u8]) -> Result<(), DmaError> {
        let result = self.inner.write(iova, data);
        self.log.mark(iova, data.len());
        result
    }

    fn copy(&self, src: u64, dst: u64, len: usize) -> Result<(), DmaError> {
        let result = self.inner.copy(src, dst, len);
        self.log.mark(dst, len);
        result
    }
}

/// The session of a function.
struct Session {
    bitmap: Arc<DirtyBitmap>,
    /// Whether the backend's tracker was started (and must be stopped).
    tracker: bool,
}

/// A function's DMA logging.
#[derive(Default)]
pub(super) struct DmaLogging {
    session: Mutex<Option<Session>>,
    log: Arc<DirtyLog>,
}

impl DmaLogging {
    /// `dma` with this function's writes logged.
    pub(super) fn wrap(&self, dma: Arc<dyn DmaAccess>) -> Arc<dyn DmaAccess> {
        Arc::new(LoggedDma {
            inner: dma,
            log: Arc::clone(&self.log),
        })
    }

    /// Whether a session is on.
    pub(super) fn is_on(&self) -> bool {
        self.session.lock().is_some()
    }

    /// Starts a session over `ranges`, in pages of `page_size` or the coarser ones the
    /// device's tracker uses; returns the page size the session reports in.
    pub(super) fn start(
        &self,
        hooks: Option<&dyn MigrationHooks>,
        page_size: u64,
        ranges: &[Range<u64>],
    ) -> Result<u64, LoggingError> {
        let hooks = hooks.ok_or(LoggingError::NotMigratable)?;
        let mut session = self.session.lock();
        if session.is_some() {
            return Err(LoggingError::Busy);
        }
        let mut bitmap = DirtyBitmap::new(page_size, ranges)?;
        let tracker = hooks.dirty_tracker();
        if let Some(tracker) = tracker {
            let used = tracker
                .start(bitmap.page_size(), ranges)
                .map_err(LoggingError::Tracker)?;
            if used != bitmap.page_size() {
                // The device tracks coarser pages: so does the session, so that one bitmap
                // holds both sides' bits.
                let coarser = tracking_page_size(used)
                    .ok()
                    .filter(|&size| size == used && size > bitmap.page_size())
                    .and_then(|size| DirtyBitmap::new(size, ranges).ok());
                match coarser {
                    Some(coarser) => bitmap = coarser,
                    None => {
                        tracker.stop();
                        return Err(LoggingError::TrackerPageSize(used));
                    }
                }
            }
        }
        let page_size = bitmap.page_size();
        let bitmap = Arc::new(bitmap);
        self.log.set(Some(Arc::clone(&bitmap)));
        *session = Some(Session {
            bitmap,
            tracker: tracker.is_some(),
        });
        Ok(page_size)
    }

    /// Sets bit i of `bitmap` for each page (`iova + i * page_size`) written since the last
    /// report of that range, and clears their log.
    pub(super) fn report(
        &self,
        hooks: Option<&dyn MigrationHooks>,
        iova: u64,
        length: u64,
        page_size: u64,
        bitmap: &mut [u64],
    ) -> Result<(), LoggingError> {
        let hooks = hooks.ok_or(LoggingError::NotMigratable)?;
        let session = self.session.lock();
        let session = session.as_ref().ok_or(LoggingError::NotLogging)?;
        session.bitmap.report(iova, length, page_size, bitmap)?;
        if session.tracker
            && let Some(tracker) = hooks.dirty_tracker()
        {
            tracker
                .report(iova, length, page_size, bitmap)
                .map_err(LoggingError::Tracker)?;
        }
        Ok(())
    }

    /// Ends the session, if one is on.
    pub(super) fn stop(&self, hooks: Option<&dyn MigrationHooks>) {
        if let Some(session) = self.session.lock().take() {
            self.log.set(None);
            if session.tracker
                && let Some(tracker) = hooks.and_then(|h| h.dirty_tracker())
            {
                tracker.stop();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Guest memory of 256 KiB at 0x10000; writes past it fail after writing what fits.
    struct Memory(Mutex<Vec<u8>>);

    impl DmaAccess for Memory {
        fn read(&self, iova: u64, data: &mut [u8]) -> Result<(), DmaError> {
            let at = (iova - 0x10000) as usize;
            data.copy_from_slice(&self.0.lock()[at..at + data.len()]);
            Ok(())
        }
        fn write(&self, iova: u64, data: &[u8]) -> Result<(), DmaError> {
            let mut memory = self.0.lock();
            let at = (iova - 0x10000) as usize;
            let n = data.len().min(memory.len() - at);
            memory[at..at + n].copy_from_slice(&data[..n]);
            if n < data.len() {
                return Err(DmaError::Unmapped {
                    iova: iova + n as u64,
                    len: data.len() - n,
                });
            }
            Ok(())
        }
    }

    struct Hooks;

    impl MigrationHooks for Hooks {
        fn flags(&self) -> crate::migration::MigrationFlags {
            crate::migration::MigrationFlags::STOP_COPY
        }
        fn transition(
            &self,
            _: crate::migration::MigrationState,
            _: crate::migration::MigrationState,
        ) -> Result<(), MigrationError> {
            Ok(())
        }
        fn save(&self, _: &mut [u8]) -> Result<usize, MigrationError> {
            Ok(0)
        }
        fn load(&self, _: &[u8]) -> Result<(), MigrationError> {
            Ok(())
        }
        fn precopy_info(&self) -> Result<crate::migration::PrecopyInfo, MigrationError> {
            Ok(Default::default())
        }
        fn stop_copy_size(&self) -> Result<u64, MigrationError> {
            Ok(0)
        }
    }

    /// The logged range: all of the memory.
    const RANGE: Range<u64> = 0x10000..0x50000;

    #[test]
    fn writes_through_the_wrapped_memory_mark_pages_only_while_logging() {
        const P: u64 = 4096;
        let logging = DmaLogging::default();
        let dma = logging.wrap(Arc::new(Memory(Mutex::new(vec![0; 0x40000]))));
        let hooks: Option<&dyn MigrationHooks> = Some(&Hooks);
        dma.write(0x10000, &[1]).unwrap();
        assert!(matches!(
            logging.report(hooks, 0x10000, 0x40000, P, &mut [0; 1]),
            Err(LoggingError::NotLogging)
        ));
        assert!(matches!(
            logging.start(None, P, std::slice::from_ref(&RANGE)),
            Err(LoggingError::NotMigratable)
        ));
        assert_eq!(
            logging
                .start(hooks, P, std::slice::from_ref(&RANGE))
                .unwrap(),
            P
        );
        assert!(matches!(
            logging.start(hooks, P, std::slice::from_ref(&RANGE)),
            Err(LoggingError::Busy)
        ));
        dma.write(0x11ffe, &[1; 4]).unwrap(); // pages 1 and 2
        dma.copy(0x10000, 0x15000, 8).unwrap(); // page 5
        // Runs past the memory: the whole range is marked (pages 63 and 64).
        assert!(dma.write(0x4f000, &[0; 0x2000]).is_err());
        // Reads mark nothing.
        dma.read(0x1a000, &mut [0u8; 8]).unwrap();
        let mut out = [0u64; 1];
        logging
            .report(hooks, 0x10000, 0x40000, P, &mut out)
            .unwrap();
        assert_eq!(out[0], 1 << 1 | 1 << 2 | 1 << 5 | 1 << 63);
        let mut out = [0u64; 1];
        logging
            .report(hooks, 0x10000, 0x40000, P, &mut out)
            .unwrap();
        assert_eq!(out[0], 0, "a report clears what it reported");
        logging.stop(hooks);
        assert!(!logging.is_on());
        dma.write(0x10000, &[1]).unwrap();
        assert_eq!(
            logging
                .start(hooks, P, std::slice::from_ref(&RANGE))
                .unwrap(),
            P
        );
        let mut out = [0u64; 1];
        logging
            .report(hooks, 0x10000, 0x40000, P, &mut out)
            .unwrap();
        assert_eq!(out[0], 0, "writes between sessions are not logged");
    }
}
