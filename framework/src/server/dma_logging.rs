//! DMA dirty logging over vfio-user: DEVICE_FEATURE DMA_LOGGING_START (6), STOP (7) and
//! REPORT (8), for functions that migrate (the others answer ENOTTY, as VFIO does).
//!
//! Only the translation between messages and the device's calls lives here: the session (one
//! at a time: a second START is refused with EBUSY; Linux's drivers answer EINVAL), the marking
//! of pages and the device's tracker belong to the function
//! ([`VirtualFunction::dma_logging_start`] and the calls beside it). A session ends with STOP
//! or when the client goes away.
//!
//! A REPORT's bitmap is bounded by the `max_bitmap_size` negotiated in VERSION (the server's
//! configured [`Limits::max_bitmap_size`] when the client did not negotiate migration); the
//! reply carrying it may exceed `max_data_xfer_size`, which bounds data transfers only.

use parking_lot::Mutex;

use super::migration::{FeatureCall, feature_call};
use crate::device::{LoggingError, VirtualFunction};
use crate::vfio_user::feature::{
    DEVICE_FEATURE_SIZE, DeviceFeature, DmaLoggingControl, DmaLoggingReport,
    FEATURE_DMA_LOGGING_REPORT, FEATURE_DMA_LOGGING_START, FEATURE_DMA_LOGGING_STOP, FeatureOps,
};
use crate::vfio_user::{Limits, Payload};

/// Bytes of a REPORT reply before the bitmap: DEVICE_FEATURE `argsz` and `flags`, then
/// `iova`, `length`, `page_size`.
const REPORT_HEAD: usize = DEVICE_FEATURE_SIZE as usize + 24;

/// The buffer of the last REPORT reply, reused by the next one (a report writes every word,
/// so it needs no clearing, and its pages are already in memory); dropped when the session
/// ends.
#[derive(Default)]
pub(super) struct ReportBuffer {
    spare: Mutex<Vec<u64>>,
}

/// What a logging feature answers.
pub(super) enum LogReply {
    /// A reply payload.
    Bytes(Vec<u8>),
    /// A REPORT reply: the payload as words (head, then the bitmap), sent without a copy.
    Words(Vec<u64>),
}

fn errno(e: LoggingError) -> i32 {
    tracing::debug!("DMA logging: {e}");
    e.errno()
}

impl ReportBuffer {
    /// Ends the function's session, if any (STOP, or the client went away).
    pub(super) fn stop(&self, function: &VirtualFunction) {
        *self.spare.lock() = Vec::new();
        function.dma_logging_stop();
    }

    /// Takes back the buffer of a REPORT reply once it is sent.
    pub(super) fn recycle(&self, function: &VirtualFunction, words: Vec<u64>) {
        if function.dma_logging_on() {
            *self.spare.lock() = words;
        }
    }

    /// DEVICE_FEATURE DMA_LOGGING_START, STOP or REPORT; `max_bitmap_size` bounds reports.
    pub(super) fn device_feature(
        &self,
        function: &VirtualFunction,
        request: &DeviceFeature,
        max_bitmap_size: u64,
    ) -> Result<LogReply, i32> {
        function.migration_flags().ok_or(libc::ENOTTY)?;
        let supported = match request.feature {
            FEATURE_DMA_LOGGING_START | FEATURE_DMA_LOGGING_STOP => FeatureOps::SET,
            FEATURE_DMA_LOGGING_REPORT => FeatureOps::GET,
            _ => return Err(libc::ENOTTY),
        };
        if let FeatureCall::Probe = feature_call(request, supported)? {
            return Ok(LogReply::Bytes(request.reply_with(Vec::new()).to_bytes()));
        }
        match request.feature {
            FEATURE_DMA_LOGGING_START => {
                let mut control = DmaLoggingControl::parse(&request.data, &Limits::default())
                    .map_err(|e| e.errno())?;
                let ranges: Vec<_> = control
                    .ranges
                    .iter()
                    .map(|r| r.iova..r.iova + r.length)
                    .collect();
                control.page_size = function
                    .dma_logging_start(control.page_size, &ranges)
                    .map_err(errno)?;
                Ok(LogReply::Bytes(
                    request.reply_with(control.to_bytes()).to_bytes(),
                ))
            }
            FEATURE_DMA_LOGGING_STOP => {
                self.stop(function);
                Ok(LogReply::Bytes(request.reply_with(Vec::new()).to_bytes()))
            }
            _ => self
                .report(function, request, max_bitmap_size)
                .map(LogReply::Words),
        }
    }

    fn report(
        &self,
        function: &VirtualFunction,
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
        // The head (argsz and flags, iova, length, page_size) takes the first four words;
        // every word is written below.
        let mut payload = std::mem::take(&mut *self.spare.lock());
        payload.truncate(REPORT_HEAD / 8 + words);
        payload.resize(REPORT_HEAD / 8 + words, 0);
        let (head, bitmap) = payload.split_at_mut(REPORT_HEAD / 8);
        function
            .dma_logging_report(report.iova, report.length, report.page_size, bitmap)
            .map_err(errno)?;
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
