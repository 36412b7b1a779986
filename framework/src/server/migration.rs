//! Migration over vfio-user: DEVICE_FEATURE MIGRATION, MIG_DEVICE_STATE, MIG_DATA_SIZE,
//! MIGRATION_ERROR and the project's PRECOPY_INFO ([`FEATURE_PRECOPY_INFO`]), and the framed
//! stream in MIG_DATA_READ/WRITE. DMA logging is in `dma_logging.rs`.
//!
//! Only the translation between messages and the device's calls lives here: the migration
//! state, the stream and its checks belong to the function
//! ([`VirtualFunction::set_migration_state`] and the calls beside it), which outlives
//! connections. A function that does not migrate answers ENOTTY to all of it, which is how
//! VFIO says "this device does not migrate".

use parking_lot::Mutex;

use crate::device::VirtualFunction;
use crate::vfio_user::feature::{
    DEVICE_FEATURE_SIZE, DeviceFeature, FEATURE_MIG_DATA_SIZE, FEATURE_MIG_DEVICE_STATE,
    FEATURE_MIGRATION, FEATURE_MIGRATION_ERROR, FEATURE_PRECOPY_INFO, FeatureOps,
    MAX_MIGRATION_ERROR, MigDataSize, MigDeviceState, MigrationFeature,
};
use crate::vfio_user::mig_data::{
    MigDataRead, MigDataReadReply, MigDataShared, MigDataSharedReply, MigDataWrite,
};
use crate::vfio_user::shared_buf::{SharedBuffer, SharedBufferError};
use crate::vfio_user::{Limits, Payload};

/// The payload buffer of the last MIG_DATA_READ reply, sent and handed back
/// ([`ReplyBuffer::recycle`]): the next read fills memory that is already mapped.
#[derive(Default)]
pub(super) struct ReplyBuffer {
    spare: Mutex<Vec<u8>>,
}

impl ReplyBuffer {
    /// Takes back the payload of a sent MIG_DATA_READ reply, for the next one; kept only while
    /// `function` is saving a stream.
    pub(super) fn recycle(&self, function: &VirtualFunction, payload: Vec<u8>) {
        if function.migration_state().is_saving() {
            *self.spare.lock() = payload;
        }
    }
}

/// What a DEVICE_FEATURE request asks of a feature supporting `supported`.
pub(super) enum FeatureCall {
    /// A PROBE of supported operations: answered by repeating the request.
    Probe,
    /// A GET.
    Get,
    /// A SET.
    Set,
}

/// Sorts out `request` against the operations the feature supports (`vfio_check_feature`):
/// EINVAL for an operation it does not support.
pub(super) fn feature_call(
    request: &DeviceFeature,
    supported: FeatureOps,
) -> Result<FeatureCall, i32> {
    if request.ops.contains(FeatureOps::PROBE) {
        let asked = request.ops - FeatureOps::PROBE;
        return if supported.contains(asked) {
            Ok(FeatureCall::Probe)
        } else {
            Err(libc::EINVAL)
        };
    }
    if !supported.contains(request.ops) {
        return Err(libc::EINVAL);
    }
    if request.ops == FeatureOps::GET {
        Ok(FeatureCall::Get)
    } else if request.ops == FeatureOps::SET {
        Ok(FeatureCall::Set)
    } else {
        Err(libc::EINVAL)
    }
}

/// DEVICE_FEATURE for the migration features (and [`FEATURE_PRECOPY_INFO`]); the reply
/// payload or the errno.
pub(super) fn device_feature(
    function: &VirtualFunction,
    request: &DeviceFeature,
) -> Result<Vec<u8>, i32> {
    let flags = function.migration_flags().ok_or(libc::ENOTTY)?;
    let (supported, get_size) = match request.feature {
        FEATURE_MIGRATION | FEATURE_MIG_DATA_SIZE => (FeatureOps::GET, 8),
        FEATURE_MIG_DEVICE_STATE => (FeatureOps::GET | FeatureOps::SET, 8),
        FEATURE_PRECOPY_INFO => (FeatureOps::GET, 16),
        FEATURE_MIGRATION_ERROR => (FeatureOps::GET, 0),
        _ => return Err(libc::ENOTTY),
    };
    let set = match feature_call(request, supported)? {
        FeatureCall::Probe => return Ok(request.reply_with(Vec::new()).to_bytes()),
        FeatureCall::Get => false,
        FeatureCall::Set => true,
    };
    if !set && request.argsz < DEVICE_FEATURE_SIZE + get_size {
        return Err(libc::EINVAL);
    }
    let data = match request.feature {
        FEATURE_MIGRATION => MigrationFeature { flags }.to_bytes(),
        FEATURE_MIG_DATA_SIZE => MigDataSize {
            stop_copy_length: function.stop_copy_size().map_err(|e| e.errno())?,
        }
        .to_bytes(),
        FEATURE_PRECOPY_INFO => function.precopy_info().map_err(|e| e.errno())?.to_bytes(),
        FEATURE_MIGRATION_ERROR => {
            let room = request.argsz.saturating_sub(DEVICE_FEATURE_SIZE);
            let mut text = function.migration_error().unwrap_or_default().into_bytes();
            text.truncate(room.min(MAX_MIGRATION_ERROR) as usize);
            text
        }
        _ if set => {
            let want = MigDeviceState::parse(&request.data, &Limits::default())
                .map_err(|e| e.errno())?
                .device_state;
            let reached = function.set_migration_state(want).map_err(|e| e.errno())?;
            MigDeviceState::new(reached).to_bytes()
        }
        _ => MigDeviceState::new(function.migration_state()).to_bytes(),
    };
    Ok(request.reply_with(data).to_bytes())
}

/// MIG_DATA_READ: the next bytes of the stream while saving, as the reply's payload (encoded
/// in place, in the buffer of the last reply when it was handed back).
pub(super) fn data_read(
    buffer: &ReplyBuffer,
    function: &VirtualFunction,
    request: &MigDataRead,
) -> Result<Vec<u8>, i32> {
    function.migration_flags().ok_or(libc::ENOTTY)?;
    let mut payload = std::mem::take(&mut *buffer.spare.lock());
    let prefix = MigDataReadReply::PREFIX;
    // Only the bytes past the previous length are zeroed (and faulted in) again.
    payload.resize(prefix + request.size as usize, 0);
    let n = function
        .migration_read(&mut payload[prefix..])
        .map_err(|e| e.errno())?;
    payload.truncate(prefix + n);
    MigDataReadReply::encode_prefix(&mut payload);
    Ok(payload)
}

/// MIG_DATA_READ into the shared buffer: the next bytes of the stream at `request.offset` in
/// `shared`; the reply payload states how many. A buffer only this server writes
/// ([`SharedBuffer::create_exclusive`]) is saved into straight; into any other the bytes are
/// saved into the buffer the inline replies use (memory the client cannot write) and copied.
pub(super) fn data_read_shared(
    buffer: &ReplyBuffer,
    function: &VirtualFunction,
    shared: &mut SharedBuffer,
    request: &MigDataShared,
) -> Result<Vec<u8>, i32> {
    function.migration_flags().ok_or(libc::ENOTTY)?;
    // Checked before the device gives up a byte: a refused read loses nothing.
    let range = shared
        .range(request.offset, request.size.into())
        .map_err(|e| e.errno())?;
    let n = if let Some(mut bytes) = shared.exclusive_mut(range) {
        function.migration_read(&mut bytes).map_err(|e| e.errno())?
    } else {
        copied_read(buffer, function, shared, request)?
    };
    // At most `request.size` bytes were read.
    let size = u32::try_from(n).map_err(|_| libc::EIO)?;
    Ok(MigDataSharedReply::new(size).to_bytes())
}

/// The next bytes of the stream saved into the server's own memory and copied into `shared`
/// at `request.offset`; how many.
fn copied_read(
    buffer: &ReplyBuffer,
    function: &VirtualFunction,
    shared: &SharedBuffer,
    request: &MigDataShared,
) -> Result<usize, i32> {
    // Refused before the device gives up a byte: the stream cannot land in a read-only one.
    if shared.is_read_only() {
        return Err(SharedBufferError::ReadOnly.errno());
    }
    let mut saved = std::mem::take(&mut *buffer.spare.lock());
    // Only the bytes past the previous length are zeroed (and faulted in) again.
    saved.resize(request.size as usize, 0);
    let n = function
        .migration_read(&mut saved)
        .map_err(|e| e.errno())
        .and_then(|n| {
            shared
                .copy_in(request.offset, &saved[..n])
                .map_err(|e| e.errno())?;
            Ok(n)
        });
    buffer.recycle(function, saved);
    n
}

/// MIG_DATA_WRITE from the shared buffer: the bytes at `request.offset` are copied into
/// `scratch` (the server's own memory: the client may still be writing the buffer) before
/// the device sees them, unless this process made the buffer and alone writes it: then the
/// device takes them in place ([`SharedBuffer::local`]).
pub(super) fn data_write_shared(
    function: &VirtualFunction,
    shared: &SharedBuffer,
    request: &MigDataShared,
    scratch: &mut Vec<u8>,
) -> Result<(), i32> {
    function.migration_flags().ok_or(libc::ENOTTY)?;
    let range = shared
        .range(request.offset, request.size.into())
        .map_err(|e| e.errno())?;
    // A buffer this process made and alone writes: checked and loaded in place, the range
    // held against the maker's writes meanwhile.
    if let Some(bytes) = shared.local(range) {
        return function.migration_write(&bytes).map_err(|e| e.errno());
    }
    scratch.resize(request.size as usize, 0);
    shared
        .copy_out(request.offset, scratch)
        .map_err(|e| e.errno())?;
    function.migration_write(scratch).map_err(|e| e.errno())
}

/// MIG_DATA_WRITE: the next bytes of the stream while resuming.
pub(super) fn data_write(function: &VirtualFunction, request: &MigDataWrite) -> Result<(), i32> {
    function
        .migration_write(request.data())
        .map_err(|e| e.errno())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_and_operations_are_sorted_out_as_vfio_check_feature_does() {
        let request = |ops| DeviceFeature {
            argsz: DEVICE_FEATURE_SIZE,
            ops,
            feature: FEATURE_MIGRATION,
            data: Vec::new(),
        };
        let get = FeatureOps::GET;
        assert!(matches!(
            feature_call(&request(get), get),
            Ok(FeatureCall::Get)
        ));
        assert!(matches!(
            feature_call(&request(FeatureOps::PROBE | get), get),
            Ok(FeatureCall::Probe)
        ));
        assert_eq!(
            feature_call(&request(FeatureOps::PROBE | FeatureOps::SET), get).err(),
            Some(libc::EINVAL)
        );
        assert_eq!(
            feature_call(&request(FeatureOps::SET), get).err(),
            Some(libc::EINVAL)
        );
    }
}
