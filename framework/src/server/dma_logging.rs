//! DMA dirty logging over vfio-user: DEVICE_FEATURE DMA_LOGGING_START (6), STOP (7) and
//! REPORT (8), for functions that migrate (the others answer ENOTTY, as VFIO does).
//!
//! A session belongs to the port (one at a time: a second START is refused with EBUSY; Linux's
//! drivers answer EINVAL) and ends with STOP or when the client goes away. The framework marks
//! the pages written through the port's [`DmaTable`]; a backend with a device-side
//! [`DirtyTracker`](crate::migration::DirtyTracker) is started, reported and stopped with it,
//! and its bits are ORed into each report. The rules for ranges, page sizes and reports are
//! those of [`crate::migration::dirty`].
//!
//! A REPORT's bitmap is bounded by the `max_bitmap_size` negotiated in VERSION (the server's
//! configured [`Limits::max_bitmap_size`] when the client did not negotiate migration); the
//! reply carrying it may exceed `max_data_xfer_size`, which bounds data transfers only.

use std::sync::Arc;

use parking_lot::Mutex;

use super::dma::DmaTable;
use super::migration::{FeatureCall, feature_call};
use crate::device::VirtualFunction;
use crate::migration::dirty::{DirtyBitmap, tracking_page_size};
use crate::migration::{MigrationError, MigrationHooks};
use crate::vfio_user::feature::{
    DEVICE_FEATURE_SIZE, DeviceFeature, DmaLoggingControl, DmaLoggingReport,
    FEATURE_DMA_LOGGING_REPORT, FEATURE_DMA_LOGGING_START, FEATURE_DMA_LOGGING_STOP, FeatureOps,
};
use crate::vfio_user::{Limits, Payload};

/// Bytes of a REPORT reply before the bitmap: DEVICE_FEATURE `argsz` and `flags`, then
/// `iova`, `length`, `page_size`.
const REPORT_HEAD: usize = DEVICE_FEATURE_SIZE as usize + 24;

/// The logging session of a port.
struct LogSession {
    bitmap: Arc<DirtyBitmap>,
    /// Whether the backend's tracker was started (and must be stopped).
    tracker: bool,
}

/// A port's DMA logging state.
#[derive(Default)]
pub(super) struct PortLogging {
    session: Mutex<Option<LogSession>>,
    /// The buffer of the last REPORT reply, reused by the next one (a report writes every
    /// word, so it needs no clearing, and its pages are already in memory); dropped when the
    /// session ends.
    spare: Mutex<Vec<u64>>,
}

/// What a logging feature answers.
pub(super) enum LogReply {
    /// A reply payload.
    Bytes(Vec<u8>),
    /// A REPORT reply: the payload as words (head, then the bitmap), sent without a copy.
    Words(Vec<u64>),
}

fn device_errno(e: &MigrationError) -> i32 {
    tracing::debug!("dirty tracker: {e}");
    match e {
        MigrationError::Device(_) => libc::EIO,
        MigrationError::InvalidData(_) => libc::EINVAL,
    }
}

impl PortLogging {
    /// Ends the session, if any (STOP, or the client went away).
    pub(super) fn stop(&self, dma: &DmaTable, hooks: Option<&dyn MigrationHooks>) {
        *self.spare.lock() = Vec::new();
        if let Some(session) = self.session.lock().take() {
            dma.set_dirty_log(None);
            if session.tracker
                && let Some(tracker) = hooks.and_then(|h| h.dirty_tracker())
            {
                tracker.stop();
            }
        }
    }

    /// Takes back the buffer of a REPORT reply once it is sent.
    pub(super) fn recycle(&self, words: Vec<u64>) {
        if self.session.lock().is_some() {
            *self.spare.lock() = words;
        }
    }

    /// DEVICE_FEATURE DMA_LOGGING_START, STOP or REPORT; `max_bitmap_size` bounds reports.
    pub(super) fn device_feature(
        &self,
        dma: &DmaTable,
        function: &VirtualFunction,
        request: &DeviceFeature,
        max_bitmap_size: u64,
    ) -> Result<LogReply, i32> {
        let hooks = function.function().migration().ok_or(libc::ENOTTY)?;
        let supported = match request.feature {
            FEATURE_DMA_LOGGING_START | FEATURE_DMA_LOGGING_STOP => FeatureOps::SET,
            FEATURE_DMA_LOGGING_REPORT => FeatureOps::GET,
            _ => return Err(libc::ENOTTY),
        };
        if let FeatureCall::Probe = feature_call(request, supported)? {
            return Ok(LogReply::Bytes(request.reply_with(Vec::new()).to_bytes()));
        }
        match request.feature {
            FEATURE_DMA_LOGGING_START => self.start(dma, hooks, request).map(LogReply::Bytes),
            FEATURE_DMA_LOGGING_STOP => {
                self.stop(dma, Some(hooks));
                Ok(LogReply::Bytes(request.reply_with(Vec::new()).to_bytes()))
            }
            _ => self
                .report(hooks, request, max_bitmap_size)
                .map(LogReply::Words),
        }
    }

    fn start(
        &self,
        dma: &DmaTable,
        hooks: &dyn MigrationHooks,
        request: &DeviceFeature,
    ) -> Result<Vec<u8>, i32> {
        let mut control =
            DmaLoggingControl::parse(&request.data, &Limits::default()).map_err(|e| e.errno())?;
        let mut session = self.session.lock();
        if session.is_some() {
            return Err(libc::EBUSY);
        }
        let ranges: Vec<_> = control
            .ranges
            .iter()
            .map(|r| r.iova..r.iova + r.length)
            .collect();
        let mut bitmap = DirtyBitmap::new(control.page_size, &ranges).map_err(|e| {
            tracing::debug!("DMA_LOGGING_START refused: {e}");
            e.errno()
        })?;
        let tracker = hooks.dirty_tracker();
        if let Some(tracker) = tracker {
            let used = tracker
                .start(bitmap.page_size(), &ranges)
                .map_err(|e| device_errno(&e))?;
            if used != bitmap.page_size() {
                // The device tracks coarser pages: so does the session, so that one bitmap
                // holds both sides' bits.
                let coarser = tracking_page_size(used)
                    .ok()
                    .filter(|&size| size == used && size > bitmap.page_size())
                    .and_then(|size| DirtyBitmap::new(size, &ranges).ok());
                match coarser {
                    Some(coarser) => bitmap = coarser,
                    None => {
                        tracing::debug!("the dirty tracker chose an unusable page size {used:#x}");
                        tracker.stop();
                        return Err(libc::EINVAL);
                    }
                }
            }
        }
        control.page_size = bitmap.page_size();
        let bitmap = Arc::new(bitmap);
        dma.set_dirty_log(Some(Arc::clone(&bitmap)));
        *session = Some(LogSession {
            bitmap,
            tracker: tracker.is_some(),
        });
        Ok(request.reply_with(control.to_bytes()).to_bytes())
    }

    fn report(
        &self,
        hooks: &dyn MigrationHooks,
        request: &DeviceFeature,
        max_bitmap_size: u64,
    ) -> Result<Vec<u64>, i32> {
        let limits = Limits {
            max_bitmap_size,
            ..Limits::default()
        };
        let report = DmaLoggingReport::parse(&request.data, &limits).map_err(|e| e.errno())?;
        // Bounded by max_bitmap_size just above.
        let words = report.bitmap_words().ok_or(libc::EINVAL)? as usize;
        let argsz = u32::try_from(REPORT_HEAD + 8 * words).map_err(|_| libc::E2BIG)?;
        if request.argsz < argsz {
            return Err(libc::EINVAL);
        }
        let session = self.session.lock();
        let session = session.as_ref().ok_or(libc::EINVAL)?;
        // The head (argsz and flags, iova, length, page_size) takes the first four words;
        // every word is written below.
        let mut payload = std::mem::take(&mut *self.spare.lock());
        payload.truncate(REPORT_HEAD / 8 + words);
        payload.resize(REPORT_HEAD / 8 + words, 0);
        let (head, bitmap) = payload.split_at_mut(REPORT_HEAD / 8);
        session
            .bitmap
            .report(report.iova, report.length, report.page_size, bitmap)
            .map_err(|e| {
                tracing::debug!("DMA_LOGGING_REPORT refused: {e}");
                e.errno()
            })?;
        if session.tracker
            && let Some(tracker) = hooks.dirty_tracker()
        {
            tracker
                .report(report.iova, report.length, report.page_size, bitmap)
                .map_err(|e| device_errno(&e))?;
        }
        let mut first = [0u8; 8];
        first[..4].copy_from_slice(&argsz.to_ne_bytes());
        first[4..].copy_from_slice(&request.flags().to_ne_bytes());
        head.copy_from_slice(&[
            u64::from_ne_bytes(first),
            report.iova,
            report.length,
            report.page_size,
        ]);
        Ok(payload)
    }
}
