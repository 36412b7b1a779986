//! DEVICE_FEATURE (16) and the payloads of the migration features it carries.
//!
//! Feature numbers and layouts follow linux/vfio.h (`VFIO_DEVICE_FEATURE_*`), except that
//! the DMA logging ranges and the dirty bitmap are inline in the message instead of
//! user pointers (docs/interop/vfio-user.rst, "VFIO_USER_DEVICE_FEATURE").
//!
//! # Project extension: PRECOPY_INFO
//!
//! Linux reads pre-copy progress with the VFIO_MIG_GET_PRECOPY_INFO ioctl on the migration
//! data fd, which vfio-user has no message for. This project carries it as
//! [`FEATURE_PRECOPY_INFO`] (`0xf001`), a DEVICE_FEATURE number far above the ones Linux
//! allocates (they are handed out in sequence from 0: 0-11 in linux/vfio.h as of 2025, with
//! proposals up to 14); `0xf000..=0xffff` is kept for this project's extensions.
//!
//! - GET only (PROBE answers GET); the reply data is [`PrecopyInfo`]: `initial_bytes u64,
//!   dirty_bytes u64`, host byte order, 16 bytes (`argsz` must leave room for them).
//! - Valid only while the device is in PRE_COPY or PRE_COPY_P2P; EINVAL in other states, as
//!   the ioctl; ENOTTY from a function that does not migrate.
//! - `initial_bytes` counts the stream bytes still to be read for the initial state (framing
//!   included), `dirty_bytes` those the device dirtied since; both are estimates that only
//!   guide the VMM's choice of when to stop copying.
//!
//! # Project extension: MIGRATION_ERROR
//!
//! A refused migration step answers only an errno (EINVAL for a stream that belongs to another
//! layout as for a flipped byte). [`FEATURE_MIGRATION_ERROR`] (`0xf002`) gives a migration
//! driver the reason, to show its operator:
//!
//! - GET only (PROBE answers GET); the reply data is the last refusal of a state change,
//!   MIG_DATA_READ or MIG_DATA_WRITE, as UTF-8 text, cut to what `argsz` leaves room for
//!   (at most [`MAX_MIGRATION_ERROR`] bytes); empty when nothing was refused since the last
//!   reset; ENOTTY from a function that does not migrate.
//!
//! # Project extension: MIG_DATA_BUFFER
//!
//! With `mig_data_shared` agreed in VERSION, [`FEATURE_MIG_DATA_BUFFER`] (`0xf003`) registers
//! the connection's shared migration data buffer ([`super::shared_buf`]):
//!
//! - SET, no data, the buffer's memfd as the message's one fd: the client's buffer. EINVAL
//!   when `mig_data_shared` was not agreed or the fd is not a memfd sealed against resizing,
//!   E2BIG when its size is outside one page to
//!   [`super::shared_buf::MAX_TRANSFERS_PER_BUFFER`] times `max_data_xfer_size`. A memfd
//!   also sealed against writes (another server's buffer) is mapped read-only: MIG_DATA_READ
//!   into it is refused with EPERM.
//! - GET, data [`MigDataBufferSize`] (the size wanted), no fd: the server makes the buffer
//!   itself, sealed so that only it writes the bytes (F_SEAL_FUTURE_WRITE), and replies with
//!   the same data and the memfd as the reply's one fd. It saves MIG_DATA_READs straight into
//!   it. Same bounds and errors as SET.
//! - Once per connection, either way (a second one: EBUSY); ENOTTY from a function that does
//!   not migrate. From then on MIG_DATA_READ and MIG_DATA_WRITE requests name bytes in the
//!   buffer ([`super::mig_data::MigDataShared`]).

use bitflags::bitflags;

use super::error::ProtocolError;
use super::wire::{Reader, put_u32, put_u64};
use super::{Limits, Payload};
use crate::migration::{MigrationFlags, MigrationState, PrecopyInfo};

/// VFIO_DEVICE_FEATURE_MIGRATION: migration flags ([`MigrationFeature`]).
pub const FEATURE_MIGRATION: u16 = 1;
/// VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE: the migration state ([`MigDeviceState`]).
pub const FEATURE_MIG_DEVICE_STATE: u16 = 2;
/// VFIO_DEVICE_FEATURE_DMA_LOGGING_START ([`DmaLoggingControl`]).
pub const FEATURE_DMA_LOGGING_START: u16 = 6;
/// VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP (no data).
pub const FEATURE_DMA_LOGGING_STOP: u16 = 7;
/// VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT ([`DmaLoggingReport`] /
/// [`DmaLoggingReportReply`]).
pub const FEATURE_DMA_LOGGING_REPORT: u16 = 8;
/// VFIO_DEVICE_FEATURE_MIG_DATA_SIZE: estimated stop-copy length ([`MigDataSize`]).
pub const FEATURE_MIG_DATA_SIZE: u16 = 9;

/// Project extension (not in Linux): pre-copy progress ([`PrecopyInfo`]); see the module
/// documentation.
pub const FEATURE_PRECOPY_INFO: u16 = 0xf001;

/// Project extension (not in Linux): the reason of the last refused migration step, as text;
/// see the module documentation.
pub const FEATURE_MIGRATION_ERROR: u16 = 0xf002;

/// Project extension (not in Linux): registers (SET) or makes (GET) the shared migration data
/// buffer; see the module documentation.
pub const FEATURE_MIG_DATA_BUFFER: u16 = 0xf003;
/// Longest MIGRATION_ERROR text.
pub const MAX_MIGRATION_ERROR: u32 = 4096;

/// Size of the fixed part of DEVICE_FEATURE (`argsz`, `flags`).
pub const DEVICE_FEATURE_SIZE: u32 = 8;
/// The feature-index bits of the `flags` field.
pub const FEATURE_INDEX_MASK: u32 = 0xffff;

bitflags! {
    /// What DEVICE_FEATURE does (bits 16-18 of `flags`).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct FeatureOps: u32 {
        /// Read the feature's data.
        const GET = 1 << 16;
        /// Write the feature's data.
        const SET = 1 << 17;
        /// Only ask whether GET and/or SET are supported.
        const PROBE = 1 << 18;
    }
}

const WHAT: &str = "DEVICE_FEATURE";

/// DEVICE_FEATURE request and reply. The reply to SET or PROBE repeats the request; the reply
/// to GET carries the data, with `argsz` covering it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceFeature {
    /// Request: largest reply payload; reply: size of the reply payload.
    pub argsz: u32,
    /// Feature index.
    pub feature: u16,
    /// GET, SET, PROBE (GET and SET together only with PROBE).
    pub ops: FeatureOps,
    /// Feature data.
    pub data: Vec<u8>,
}

impl DeviceFeature {
    /// A GET of `feature` whose data is at most `max_data` bytes.
    pub fn get(feature: u16, max_data: usize) -> Self {
        Self {
            argsz: super::wire::len_u32(max_data.saturating_add(DEVICE_FEATURE_SIZE as usize)),
            feature,
            ops: FeatureOps::GET,
            data: Vec::new(),
        }
    }

    /// A SET of `feature` to `data`.
    pub fn set(feature: u16, data: Vec<u8>) -> Self {
        Self {
            argsz: super::wire::len_u32(data.len().saturating_add(DEVICE_FEATURE_SIZE as usize)),
            feature,
            ops: FeatureOps::SET,
            data,
        }
    }

    /// A PROBE of `feature` for the operations in `ops` (GET and/or SET).
    pub fn probe(feature: u16, ops: FeatureOps) -> Self {
        Self {
            argsz: DEVICE_FEATURE_SIZE,
            feature,
            ops: ops | FeatureOps::PROBE,
            data: Vec::new(),
        }
    }

    /// The reply to this request carrying `data` (for GET) or repeating the request.
    pub fn reply_with(&self, data: Vec<u8>) -> Self {
        Self {
            argsz: super::wire::len_u32(data.len().saturating_add(DEVICE_FEATURE_SIZE as usize)),
            feature: self.feature,
            ops: self.ops,
            data,
        }
    }

    /// The raw `flags` field.
    pub fn flags(&self) -> u32 {
        u32::from(self.feature) | self.ops.bits()
    }
}

impl Payload for DeviceFeature {
    fn parse(payload: &[u8], _limits: &Limits) -> Result<Self, ProtocolError> {
        let mut r = Reader::new(WHAT, payload);
        let argsz = r.u32()?;
        let flags = r.u32()?;
        let ops = FeatureOps::from_bits(flags & !FEATURE_INDEX_MASK)
            .ok_or_else(|| ProtocolError::invalid(WHAT, format!("flags {flags:#x}")))?;
        if ops.contains(FeatureOps::GET | FeatureOps::SET) && !ops.contains(FeatureOps::PROBE) {
            return Err(ProtocolError::invalid(WHAT, "GET and SET without PROBE"));
        }
        // The mask keeps 16 bits.
        let feature = (flags & FEATURE_INDEX_MASK) as u16;
        Ok(Self {
            argsz,
            feature,
            ops,
            data: r.rest().to_vec(),
        })
    }

    fn encode(&self, out: &mut Vec<u8>) {
        put_u32(out, self.argsz);
        put_u32(out, self.flags());
        out.extend_from_slice(&self.data);
    }
}

/// Data of a MIGRATION GET reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MigrationFeature {
    /// STOP_COPY, P2P, PRE_COPY (unknown bits kept).
    pub flags: MigrationFlags,
}

impl Payload for MigrationFeature {
    fn parse(payload: &[u8], _limits: &Limits) -> Result<Self, ProtocolError> {
        let mut r = Reader::new("MIGRATION feature", payload);
        Ok(Self {
            flags: MigrationFlags::from_bits_retain(r.u64()?),
        })
    }

    fn encode(&self, out: &mut Vec<u8>) {
        put_u64(out, self.flags.bits());
    }
}

/// Data of MIG_DEVICE_STATE (SET request, GET reply).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MigDeviceState {
    /// The state to go to (SET) or the current state (GET).
    pub device_state: MigrationState,
    /// Unused over vfio-user (migration data travels in MIG_DATA_READ/WRITE).
    pub data_fd: i32,
}

impl MigDeviceState {
    /// `state`, with `data_fd` -1 (none).
    pub fn new(device_state: MigrationState) -> Self {
        Self {
            device_state,
            data_fd: -1,
        }
    }
}

impl Payload for MigDeviceState {
    fn parse(payload: &[u8], _limits: &Limits) -> Result<Self, ProtocolError> {
        const WHAT: &str = "MIG_DEVICE_STATE";
        let mut r = Reader::new(WHAT, payload);
        let raw = r.u32()?;
        let device_state = MigrationState::from_raw(raw)
            .ok_or_else(|| ProtocolError::invalid(WHAT, format!("device_state {raw}")))?;
        let data_fd = i32::from_ne_bytes(r.u32()?.to_ne_bytes());
        Ok(Self {
            device_state,
            data_fd,
        })
    }

    fn encode(&self, out: &mut Vec<u8>) {
        put_u32(out, self.device_state as u32);
        put_u32(out, u32::from_ne_bytes(self.data_fd.to_ne_bytes()));
    }
}

/// One IOVA range of DMA logging.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DmaLoggingRange {
    /// Start address.
    pub iova: u64,
    /// Length.
    pub length: u64,
}

/// Data of DMA_LOGGING_START (SET request and its reply, with the page size chosen).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DmaLoggingControl {
    /// Tracking granularity: a hint in the request, the chosen size in the reply.
    pub page_size: u64,
    /// Ranges to track; empty means all writes.
    pub ranges: Vec<DmaLoggingRange>,
}

impl Payload for DmaLoggingControl {
    fn parse(payload: &[u8], limits: &Limits) -> Result<Self, ProtocolError> {
        const WHAT: &str = "DMA_LOGGING_START";
        let mut r = Reader::new(WHAT, payload);
        let page_size = r.u64()?;
        let num_ranges = r.u32()?;
        let _reserved = r.u32()?;
        if num_ranges > limits.max_dma_logging_ranges {
            return Err(ProtocolError::too_large(
                WHAT,
                num_ranges.into(),
                limits.max_dma_logging_ranges.into(),
            ));
        }
        let needed = num_ranges as usize * 16;
        if needed > r.remaining() {
            return Err(ProtocolError::Truncated {
                what: WHAT,
                needed: 16 + needed,
                available: payload.len(),
            });
        }
        let mut ranges = Vec::with_capacity(num_ranges as usize);
        for _ in 0..num_ranges {
            let iova = r.u64()?;
            let length = r.u64()?;
            if iova.checked_add(length).is_none() {
                return Err(ProtocolError::invalid(WHAT, "range overflows"));
            }
            ranges.push(DmaLoggingRange { iova, length });
        }
        Ok(Self { page_size, ranges })
    }

    fn encode(&self, out: &mut Vec<u8>) {
        put_u64(out, self.page_size);
        put_u32(out, super::wire::len_u32(self.ranges.len()));
        put_u32(out, 0);
        for range in &self.ranges {
            put_u64(out, range.iova);
            put_u64(out, range.length);
        }
    }
}

/// Data of a DMA_LOGGING_REPORT GET request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DmaLoggingReport {
    /// Start of the range.
    pub iova: u64,
    /// Length of the range.
    pub length: u64,
    /// Bitmap granularity, a power of two.
    pub page_size: u64,
}

impl DmaLoggingReport {
    /// Number of u64 words of the bitmap (one bit per page); `None` if `page_size` is not
    /// a power of two.
    pub fn bitmap_words(&self) -> Option<u64> {
        if !self.page_size.is_power_of_two() {
            return None;
        }
        let pages = self.length.div_ceil(self.page_size);
        Some(pages.div_ceil(64))
    }

    fn check(&self, what: &'static str, limits: &Limits) -> Result<u64, ProtocolError> {
        let words = self.bitmap_words().ok_or_else(|| {
            ProtocolError::invalid(what, format!("page_size {:#x}", self.page_size))
        })?;
        if self.iova.checked_add(self.length).is_none() {
            return Err(ProtocolError::invalid(what, "range overflows"));
        }
        let bytes = words.saturating_mul(8);
        if bytes > limits.max_bitmap_size {
            return Err(ProtocolError::too_large(
                what,
                bytes,
                limits.max_bitmap_size,
            ));
        }
        Ok(words)
    }

    fn parse_fields(r: &mut Reader<'_>) -> Result<Self, ProtocolError> {
        Ok(Self {
            iova: r.u64()?,
            length: r.u64()?,
            page_size: r.u64()?,
        })
    }

    fn encode_fields(&self, out: &mut Vec<u8>) {
        put_u64(out, self.iova);
        put_u64(out, self.length);
        put_u64(out, self.page_size);
    }
}

impl Payload for DmaLoggingReport {
    fn parse(payload: &[u8], limits: &Limits) -> Result<Self, ProtocolError> {
        const WHAT: &str = "DMA_LOGGING_REPORT";
        let report = Self::parse_fields(&mut Reader::new(WHAT, payload))?;
        report.check(WHAT, limits)?;
        Ok(report)
    }

    fn encode(&self, out: &mut Vec<u8>) {
        self.encode_fields(out);
    }
}

/// Data of a DMA_LOGGING_REPORT GET reply: the request and the bitmap at offset 24.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DmaLoggingReportReply {
    /// The range reported.
    pub report: DmaLoggingReport,
    /// Bit `i` (word `i / 64`, bit `i % 64`) set: page `iova + i * page_size` was written.
    pub bitmap: Vec<u64>,
}

impl Payload for DmaLoggingReportReply {
    fn parse(payload: &[u8], limits: &Limits) -> Result<Self, ProtocolError> {
        const WHAT: &str = "DMA_LOGGING_REPORT reply";
        let mut r = Reader::new(WHAT, payload);
        let report = DmaLoggingReport::parse_fields(&mut r)?;
        let words = report.check(WHAT, limits)?;
        let bytes = r.rest();
        if bytes.len() as u64 != words.saturating_mul(8) {
            return Err(ProtocolError::invalid(
                WHAT,
                format!("bitmap of {} bytes, {} expected", bytes.len(), words * 8),
            ));
        }
        let bitmap = bytes
            .chunks_exact(8)
            .map(|c| {
                let mut w = [0u8; 8];
                w.copy_from_slice(c);
                u64::from_ne_bytes(w)
            })
            .collect();
        Ok(Self { report, bitmap })
    }

    fn encode(&self, out: &mut Vec<u8>) {
        self.report.encode_fields(out);
        out.extend_from_slice(words_as_bytes(&self.bitmap));
    }
}

/// The bytes of `words` in host byte order (the wire order), without copying.
pub(crate) fn words_as_bytes(words: &[u64]) -> &[u8] {
    // SAFETY: the pointer and length cover exactly the memory of `words`, which is borrowed
    // for the returned lifetime; u64 has no padding and every byte is initialized, and u8 has
    // no alignment requirement.
    unsafe { std::slice::from_raw_parts(words.as_ptr().cast::<u8>(), std::mem::size_of_val(words)) }
}

impl Payload for PrecopyInfo {
    fn parse(payload: &[u8], _limits: &Limits) -> Result<Self, ProtocolError> {
        let mut r = Reader::new("PRECOPY_INFO", payload);
        Ok(Self {
            initial_bytes: r.u64()?,
            dirty_bytes: r.u64()?,
        })
    }

    fn encode(&self, out: &mut Vec<u8>) {
        put_u64(out, self.initial_bytes);
        put_u64(out, self.dirty_bytes);
    }
}

/// Data of a MIG_DATA_SIZE GET reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MigDataSize {
    /// Estimated bytes of the stop-copy state.
    pub stop_copy_length: u64,
}

impl Payload for MigDataSize {
    fn parse(payload: &[u8], _limits: &Limits) -> Result<Self, ProtocolError> {
        let mut r = Reader::new("MIG_DATA_SIZE", payload);
        Ok(Self {
            stop_copy_length: r.u64()?,
        })
    }

    fn encode(&self, out: &mut Vec<u8>) {
        put_u64(out, self.stop_copy_length);
    }
}

/// Data of a MIG_DATA_BUFFER GET request and its reply: the size of the buffer the server
/// makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MigDataBufferSize {
    /// Bytes.
    pub size: u64,
}

impl MigDataBufferSize {
    /// Its length on the wire.
    pub const LEN: usize = 8;
}

impl Payload for MigDataBufferSize {
    fn parse(payload: &[u8], _limits: &Limits) -> Result<Self, ProtocolError> {
        let mut r = Reader::new("MIG_DATA_BUFFER", payload);
        Ok(Self { size: r.u64()? })
    }

    fn encode(&self, out: &mut Vec<u8>) {
        put_u64(out, self.size);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip<T: Payload + PartialEq + std::fmt::Debug>(value: &T) {
        assert_eq!(
            &T::parse(&value.to_bytes(), &Limits::default()).unwrap(),
            value
        );
    }

    #[test]
    fn device_feature_round_trip_and_layout() {
        let get = DeviceFeature::get(FEATURE_MIGRATION, 8);
        let bytes = get.to_bytes();
        assert_eq!(bytes.len(), 8);
        assert_eq!(&bytes[0..4], &16u32.to_ne_bytes());
        assert_eq!(&bytes[4..8], &(1u32 | 1 << 16).to_ne_bytes());
        round_trip(&get);
        let reply = get.reply_with(
            MigrationFeature {
                flags: MigrationFlags::STOP_COPY | MigrationFlags::PRE_COPY,
            }
            .to_bytes(),
        );
        assert_eq!(reply.argsz, 16);
        round_trip(&reply);
        round_trip(&DeviceFeature::set(
            FEATURE_MIG_DEVICE_STATE,
            MigDeviceState::new(MigrationState::StopCopy).to_bytes(),
        ));
        let probe =
            DeviceFeature::probe(FEATURE_DMA_LOGGING_START, FeatureOps::GET | FeatureOps::SET);
        assert_eq!(probe.flags(), 6 | 7 << 16);
        round_trip(&probe);
    }

    #[test]
    fn device_feature_refusals() {
        let limits = Limits::default();
        let mut both = DeviceFeature::get(1, 8).to_bytes();
        both[4..8].copy_from_slice(&(1u32 | 3 << 16).to_ne_bytes());
        assert_eq!(
            DeviceFeature::parse(&both, &limits).unwrap_err().errno(),
            22
        );
        let mut unknown = DeviceFeature::get(1, 8).to_bytes();
        unknown[4..8].copy_from_slice(&(1u32 | 1 << 19).to_ne_bytes());
        assert!(DeviceFeature::parse(&unknown, &limits).is_err());
        assert!(DeviceFeature::parse(&[0; 7], &limits).is_err());
    }

    #[test]
    fn payloads_round_trip() {
        round_trip(&MigrationFeature {
            flags: MigrationFlags::STOP_COPY | MigrationFlags::P2P,
        });
        let state = MigDeviceState::new(MigrationState::Resuming);
        let bytes = state.to_bytes();
        assert_eq!(&bytes[0..4], &4u32.to_ne_bytes());
        assert_eq!(&bytes[4..8], &u32::MAX.to_ne_bytes());
        round_trip(&state);
        let control = DmaLoggingControl {
            page_size: 4096,
            ranges: vec![
                DmaLoggingRange {
                    iova: 0,
                    length: 0xa0000,
                },
                DmaLoggingRange {
                    iova: 0x100000,
                    length: 0x7ff00000,
                },
            ],
        };
        let bytes = control.to_bytes();
        assert_eq!(bytes.len(), 16 + 32);
        assert_eq!(&bytes[8..12], &2u32.to_ne_bytes());
        round_trip(&control);
        let report = DmaLoggingReport {
            iova: 0x100000,
            length: 65 * 4096,
            page_size: 4096,
        };
        assert_eq!(report.bitmap_words(), Some(2));
        round_trip(&report);
        let reply = DmaLoggingReportReply {
            report,
            bitmap: vec![0b1011, 1],
        };
        assert_eq!(reply.to_bytes().len(), 24 + 16);
        round_trip(&reply);
        round_trip(&MigDataSize {
            stop_copy_length: 1 << 33,
        });
        let info = PrecopyInfo {
            initial_bytes: 1 << 40,
            dirty_bytes: 3,
        };
        let bytes = info.to_bytes();
        assert_eq!(bytes.len(), 16);
        assert_eq!(&bytes[8..], &3u64.to_ne_bytes());
        round_trip(&info);
    }

    #[test]
    fn payload_refusals() {
        let limits = Limits {
            max_dma_logging_ranges: 2,
            max_bitmap_size: 64,
            ..Limits::default()
        };
        let bad_state = [9u8, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(
            MigDeviceState::parse(&bad_state, &limits)
                .unwrap_err()
                .errno(),
            22
        );
        let mut many = Vec::new();
        put_u64(&mut many, 4096);
        put_u32(&mut many, 3);
        put_u32(&mut many, 0);
        assert_eq!(
            DmaLoggingControl::parse(&many, &limits)
                .unwrap_err()
                .errno(),
            7
        );
        let mut short = Vec::new();
        put_u64(&mut short, 4096);
        put_u32(&mut short, 2);
        put_u32(&mut short, 0);
        short.extend_from_slice(&[0; 16]);
        assert!(matches!(
            DmaLoggingControl::parse(&short, &limits),
            Err(ProtocolError::Truncated { .. })
        ));
        let odd_page = DmaLoggingReport {
            iova: 0,
            length: 4096,
            page_size: 3000,
        };
        assert_eq!(
            DmaLoggingReport::parse(&odd_page.to_bytes(), &limits)
                .unwrap_err()
                .errno(),
            22
        );
        let huge = DmaLoggingReport {
            iova: 0,
            length: 1 << 40,
            page_size: 4096,
        };
        assert_eq!(
            DmaLoggingReport::parse(&huge.to_bytes(), &limits)
                .unwrap_err()
                .errno(),
            7
        );
        let report = DmaLoggingReport {
            iova: 0,
            length: 4096 * 64,
            page_size: 4096,
        };
        let wrong_len = DmaLoggingReportReply {
            report,
            bitmap: vec![0, 0],
        };
        assert!(DmaLoggingReportReply::parse(&wrong_len.to_bytes(), &limits).is_err());
    }
}
