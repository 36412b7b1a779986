//! Migration over vfio-user: DEVICE_FEATURE MIGRATION, MIG_DEVICE_STATE, MIG_DATA_SIZE and
//! the project's PRECOPY_INFO ([`FEATURE_PRECOPY_INFO`]), and the framed stream
//! ([`crate::migration::stream`]) in MIG_DATA_READ/WRITE. DMA logging is in `dma_logging.rs`.
//!
//! A function without [`MigrationHooks`] answers ENOTTY to all of it, which is how VFIO says
//! "this device does not migrate". The migration state belongs to the function and outlives
//! connections: it is kept in the function's `Port`, and any reset of the function (DEVICE_RESET,
//! a guest's FLR) sets it back to RUNNING.
//!
//! Saving: entering PRE_COPY, PRE_COPY_P2P or STOP_COPY starts a [`StreamWriter`]; reads
//! return the stream, a short read meaning no more for now (pre-copy) or the end (stop-copy).
//! Resuming: entering RESUMING starts a [`StreamLoader`]; writes are checked as they arrive,
//! the header first (a stream for another layout, backend or profile is refused before any
//! data reaches the device), and each verified data record goes to the device's `load` at
//! once, so a state of any size moves through one record of memory. Leaving RESUMING asks the
//! backend's RESUMING → STOP arc (where the device commits what it loaded) only if the whole
//! stream arrived and is valid, after restoring the config space it carries; anything else
//! fails that arc, which leaves the device in ERROR until a reset drops what it loaded.

use std::sync::Arc;

use parking_lot::Mutex;

use crate::device::VirtualFunction;
use crate::migration::stream::{
    StreamIdentity, StreamLimits, StreamLoader, StreamWriter, estimated_size,
};
use crate::migration::{
    MigrationError, MigrationFlags, MigrationHooks, MigrationState, PrecopyInfo, StateMachine,
};
use crate::vfio_user::feature::{
    DEVICE_FEATURE_SIZE, DeviceFeature, FEATURE_MIG_DATA_SIZE, FEATURE_MIG_DEVICE_STATE,
    FEATURE_MIGRATION, FEATURE_MIGRATION_ERROR, FEATURE_PRECOPY_INFO, FeatureOps,
    MAX_MIGRATION_ERROR, MigDataSize, MigDeviceState, MigrationFeature,
};
use crate::vfio_user::mig_data::{MigDataRead, MigDataReadReply, MigDataWrite};
use crate::vfio_user::{Limits, Payload};

/// What a resuming function's loader keeps: a record while it arrives (the source's records
/// are at most one MIG_DATA_READ, 64 MiB at the most), and the records other than device
/// data (header, config space, optional ones), which the device does not take.
const LOADER_LIMITS: StreamLimits = StreamLimits {
    max_record: 256 << 20,
    max_stream: 64 << 20,
};

/// A function's migration state and its open stream.
struct FunctionMigration {
    driver: StateMachine,
    writer: Option<StreamWriter>,
    loader: Option<StreamLoader>,
    /// The function's reset count this state belongs to: any reset since (DEVICE_RESET, a
    /// guest's FLR) puts the function back in RUNNING with no stream open.
    resets: u64,
    /// Why the last migration step was refused (MIGRATION_ERROR).
    refusal: Option<String>,
}

type Shared = Arc<Mutex<FunctionMigration>>;

/// A port's migration state: created when a client first uses migration, kept as long as the
/// port (so it outlives connections).
pub(super) struct PortMigration {
    state: Mutex<Option<Shared>>,
    /// The payload buffer of the last MIG_DATA_READ reply, sent and handed back
    /// ([`PortMigration::recycle`]): the next read fills memory that is already mapped.
    spare: Mutex<Vec<u8>>,
    /// Backend and profile names carried in (and checked against) stream headers.
    backend: String,
    profile: String,
}

impl PortMigration {
    /// No migration state yet, for a function of `backend` with `profile`.
    pub(super) fn new(backend: String, profile: String) -> Self {
        Self {
            state: Mutex::new(None),
            spare: Mutex::new(Vec::new()),
            backend,
            profile,
        }
    }

    /// What the stream of `function` carries in its header.
    fn identity(&self, function: &VirtualFunction) -> StreamIdentity {
        StreamIdentity::new(&function.template(), &self.backend, &self.profile)
    }

    /// Where the function is in migration now: RUNNING until a client uses migration, and
    /// after any reset since.
    pub(super) fn current(&self, function: &VirtualFunction) -> MigrationState {
        let Some(state) = self.state.lock().clone() else {
            return MigrationState::Running;
        };
        let current = state.lock();
        if current.resets == function.reset_count() {
            current.driver.state()
        } else {
            MigrationState::Running
        }
    }

    /// Takes back the payload of a sent MIG_DATA_READ reply, for the next one; kept only while
    /// a stream is being saved.
    pub(super) fn recycle(&self, payload: Vec<u8>) {
        let saving = self
            .state
            .lock()
            .as_ref()
            .is_some_and(|state| state.lock().writer.is_some());
        if saving {
            *self.spare.lock() = payload;
        }
    }

    /// The function's migration state, as of its last reset.
    fn get_or_create(&self, function: &VirtualFunction, flags: MigrationFlags) -> Shared {
        let resets = function.reset_count();
        let mut slot = self.state.lock();
        let state = Arc::clone(slot.get_or_insert_with(|| {
            Arc::new(Mutex::new(FunctionMigration {
                driver: StateMachine::new(flags),
                writer: None,
                loader: None,
                resets,
                refusal: None,
            }))
        }));
        drop(slot);
        {
            let mut current = state.lock();
            if current.resets != resets {
                current.driver.reset();
                current.writer = None;
                current.loader = None;
                current.resets = resets;
                current.refusal = None;
            }
        }
        state
    }
}

/// The backend's hooks, with the stream applied before the arc that leaves RESUMING: the
/// config-space state first (checked before it changes anything), then the device data.
struct Resume<'a> {
    inner: &'a dyn MigrationHooks,
    function: &'a VirtualFunction,
    loader: Mutex<Option<StreamLoader>>,
}

impl MigrationHooks for Resume<'_> {
    fn flags(&self) -> MigrationFlags {
        self.inner.flags()
    }

    fn transition(&self, from: MigrationState, to: MigrationState) -> Result<(), MigrationError> {
        if from == MigrationState::Resuming {
            let loader = self
                .loader
                .lock()
                .take()
                .ok_or_else(|| MigrationError::InvalidData("no migration stream".into()))?;
            let stream = loader
                .finish()
                .map_err(|e| MigrationError::InvalidData(e.to_string()))?;
            // The device data went to the device as it arrived (`data_write`).
            if let Some(config) = stream.config() {
                self.function
                    .config_restore(config)
                    .map_err(|e| MigrationError::InvalidData(e.to_string()))?;
            }
        }
        self.inner.transition(from, to)
    }

    fn save(&self, buf: &mut [u8]) -> Result<usize, MigrationError> {
        self.inner.save(buf)
    }

    fn load(&self, data: &[u8]) -> Result<(), MigrationError> {
        self.inner.load(data)
    }

    fn precopy_info(&self) -> Result<PrecopyInfo, MigrationError> {
        self.inner.precopy_info()
    }

    fn stop_copy_size(&self) -> Result<u64, MigrationError> {
        self.inner.stop_copy_size()
    }
}

impl FunctionMigration {
    fn set_state(
        &mut self,
        function: &VirtualFunction,
        identity: &dyn Fn() -> StreamIdentity,
        want: MigrationState,
    ) -> Result<(), i32> {
        let hooks = function.function().migration().ok_or(libc::ENOTTY)?;
        let before = self.driver.state();
        let resume = Resume {
            inner: hooks,
            function,
            loader: Mutex::new(self.loader.take()),
        };
        let result = self.driver.set_state(&resume, want);
        let after = self.driver.state();
        self.loader = resume.loader.into_inner();
        if after != MigrationState::Resuming {
            self.loader = None;
        } else if before != MigrationState::Resuming {
            self.loader = Some(StreamLoader::new(identity(), LOADER_LIMITS));
        }
        if !after.is_saving() {
            self.writer = None;
        } else if !before.is_saving() {
            self.writer = Some(StreamWriter::new(identity()));
        }
        if result.is_ok() && after != before {
            tracing::info!(from = before.name(), to = after.name(), "migration state");
        }
        result.map_err(|e| {
            tracing::info!(
                from = before.name(),
                to = want.name(),
                "migration state change refused: {e}"
            );
            self.refusal = Some(e.to_string());
            e.errno()
        })
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
    migration: &PortMigration,
    function: &Arc<VirtualFunction>,
    request: &DeviceFeature,
) -> Result<Vec<u8>, i32> {
    let hooks = function.function().migration().ok_or(libc::ENOTTY)?;
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
    let state = migration.get_or_create(function, hooks.flags());
    let mut state = state.lock();
    let data = match request.feature {
        FEATURE_MIGRATION => MigrationFeature {
            flags: state.driver.flags(),
        }
        .to_bytes(),
        FEATURE_MIG_DATA_SIZE => {
            let size = hooks.stop_copy_size().map_err(|e| {
                tracing::debug!("stop-copy size: {e}");
                libc::EIO
            })?;
            MigDataSize {
                stop_copy_length: estimated_size(&migration.identity(function), size),
            }
            .to_bytes()
        }
        FEATURE_PRECOPY_INFO => {
            if !matches!(
                state.driver.state(),
                MigrationState::PreCopy | MigrationState::PreCopyP2p
            ) {
                return Err(libc::EINVAL);
            }
            let device = hooks.precopy_info().map_err(|e| {
                tracing::debug!("pre-copy info: {e}");
                libc::EIO
            })?;
            let writer = state.writer.as_ref().ok_or(libc::EINVAL)?;
            writer.precopy_info(device).to_bytes()
        }
        FEATURE_MIGRATION_ERROR => {
            let room = request.argsz.saturating_sub(DEVICE_FEATURE_SIZE);
            let mut text = state.refusal.clone().unwrap_or_default().into_bytes();
            text.truncate(room.min(MAX_MIGRATION_ERROR) as usize);
            text
        }
        _ if set => {
            let want = MigDeviceState::parse(&request.data, &Limits::default())
                .map_err(|e| e.errno())?
                .device_state;
            state.set_state(function, &|| migration.identity(function), want)?;
            MigDeviceState::new(state.driver.state()).to_bytes()
        }
        _ => MigDeviceState::new(state.driver.state()).to_bytes(),
    };
    Ok(request.reply_with(data).to_bytes())
}

/// MIG_DATA_READ: the next bytes of the stream while saving, as the reply's payload (encoded
/// in place, in the buffer of the last reply when it was handed back).
pub(super) fn data_read(
    migration: &PortMigration,
    function: &Arc<VirtualFunction>,
    request: &MigDataRead,
) -> Result<Vec<u8>, i32> {
    let hooks = function.function().migration().ok_or(libc::ENOTTY)?;
    let state = migration.get_or_create(function, hooks.flags());
    let mut state = state.lock();
    let last = state.driver.state() == MigrationState::StopCopy;
    let writer = state.writer.as_mut().ok_or(libc::EINVAL)?;
    if last && writer.needs_config() {
        // The device is stopped: the guest's config state is final.
        writer.set_config(function.config_snapshot());
    }
    let mut payload = std::mem::take(&mut *migration.spare.lock());
    let prefix = MigDataReadReply::PREFIX;
    // Only the bytes past the previous length are zeroed (and faulted in) again.
    payload.resize(prefix + request.size as usize, 0);
    let n = match writer.read(hooks, &mut payload[prefix..], last) {
        Ok(n) => n,
        Err(e) => {
            tracing::debug!("migration save: {e}");
            state.refusal = Some(format!("saving: {e}"));
            return Err(libc::EIO);
        }
    };
    payload.truncate(prefix + n);
    MigDataReadReply::encode_prefix(&mut payload);
    Ok(payload)
}

/// MIG_DATA_WRITE: the next bytes of the stream while resuming.
pub(super) fn data_write(
    migration: &PortMigration,
    function: &Arc<VirtualFunction>,
    request: &MigDataWrite,
) -> Result<(), i32> {
    let hooks = function.function().migration().ok_or(libc::ENOTTY)?;
    let state = migration.get_or_create(function, hooks.flags());
    let mut state = state.lock();
    let loader = state.loader.as_mut().ok_or(libc::EINVAL)?;
    loader.feed_into(&request.data, hooks).map_err(|e| {
        tracing::debug!("migration stream refused: {e}");
        state.refusal = Some(format!("stream refused: {e}"));
        e.errno()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_buffer_is_kept_only_while_a_stream_is_saved() {
        let migration = PortMigration::new("b".into(), "p".into());
        // No migration state: nothing is being saved, the buffer is freed.
        migration.recycle(vec![0; 4096]);
        assert!(migration.spare.lock().is_empty());
    }
}
