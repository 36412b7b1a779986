//! A function's migration (VFIO migration v2): its state, walked one backend arc at a time
//! ([`StateMachine`]), and the framed stream ([`crate::device::stream`]) it saves into or
//! loads from. A server carries these calls over vfio-user; a VMM linking the framework calls
//! them on the [`VirtualFunction`](super::VirtualFunction) directly.
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
//!
//! A function without [`MigrationHooks`] refuses all of it ([`MigrationFailure::NotMigratable`]).
//! Any reset of the function (a VMM's, a guest's FLR) puts it back in RUNNING with no stream
//! open ([`Migration::reset`]).

use parking_lot::Mutex;

use crate::device::stream::{
    StreamError, StreamIdentity, StreamLimits, StreamLoader, StreamWriter, estimated_size,
};
use crate::migration::{
    MigrationError, MigrationFlags, MigrationHooks, MigrationState, PrecopyInfo, StateMachine,
    TransitionError,
};

/// What a resuming function's loader keeps: a record while it arrives (a source's records
/// are at most one read, 64 MiB at the most), and the records other than device data
/// (header, config space, optional ones), which the device does not take.
const LOADER_LIMITS: StreamLimits = StreamLimits {
    max_record: 256 << 20,
    max_stream: 64 << 20,
};

/// Why a migration call on a function failed.
#[derive(Debug, thiserror::Error)]
pub enum MigrationFailure {
    /// The function does not migrate (its profile has no [`MigrationHooks`]).
    #[error("the function does not migrate")]
    NotMigratable,
    /// The call does not fit the function's migration state.
    #[error("not possible in migration state {state}: {what}")]
    WrongState {
        /// The state the function is in.
        state: &'static str,
        /// What was asked.
        what: &'static str,
    },
    /// The state change was refused, or an arc failed (the function is then in ERROR).
    #[error("migration state change refused: {0}")]
    Transition(#[source] TransitionError),
    /// The stream being loaded was refused; nothing more reaches the device.
    #[error("stream refused: {0}")]
    Stream(#[source] StreamError),
    /// The device failed while saving or answering.
    #[error("{what}: {source}")]
    Device {
        /// What was asked.
        what: &'static str,
        /// The backend's error.
        #[source]
        source: MigrationError,
    },
}

impl MigrationFailure {
    /// The errno a VFIO device answers with: ENOTTY for a function that does not migrate, EIO
    /// for a device failure, EINVAL otherwise.
    pub fn errno(&self) -> i32 {
        match self {
            Self::NotMigratable => libc::ENOTTY,
            Self::WrongState { .. } => libc::EINVAL,
            Self::Transition(e) => e.errno(),
            Self::Stream(e) => e.errno(),
            Self::Device {
                source: MigrationError::InvalidData(_),
                ..
            } => libc::EINVAL,
            Self::Device { .. } => libc::EIO,
        }
    }
}

/// The state of a function that has used migration.
struct Session {
    machine: StateMachine,
    writer: Option<StreamWriter>,
    loader: Option<StreamLoader>,
}

/// A function's migration: its state and open stream, the reason of its last refusal, and
/// the names its streams carry.
pub(super) struct Migration {
    session: Mutex<Option<Session>>,
    /// Why the last migration step was refused.
    refusal: Mutex<Option<String>>,
    /// Backend and profile names carried in (and checked against) stream headers.
    names: Mutex<(String, String)>,
}

/// What a migration call needs of its function.
pub(super) trait Owner: Send + Sync {
    /// The backend's hooks, when the function migrates.
    fn hooks(&self) -> Option<&dyn MigrationHooks>;
    /// The stream identity of the function's layout with `backend` and `profile`.
    fn identity(&self, backend: &str, profile: &str) -> StreamIdentity;
    /// The guest's config-space state (a migration stream's config record).
    fn config_snapshot(&self) -> Vec<u8>;
    /// Takes the config-space state of a stream.
    fn config_restore(&self, saved: &[u8]) -> Result<(), String>;
}

/// The backend's hooks, with the stream applied before the arc that leaves RESUMING: the
/// config-space state first (checked before it changes anything), then the device's commit.
struct Resume<'a> {
    inner: &'a dyn MigrationHooks,
    owner: &'a dyn Owner,
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
            // The device data went to the device as it arrived (`write`).
            if let Some(config) = stream.config() {
                self.owner
                    .config_restore(config)
                    .map_err(MigrationError::InvalidData)?;
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

impl Migration {
    /// RUNNING, no stream; streams carry no backend or profile name until [`Self::name`].
    pub(super) fn new() -> Self {
        Self {
            session: Mutex::new(None),
            refusal: Mutex::new(None),
            names: Mutex::new((String::new(), String::new())),
        }
    }

    /// Names the backend and profile the function's streams carry; a destination refuses a
    /// stream of another backend or profile.
    pub(super) fn name(&self, backend: &str, profile: &str) {
        *self.names.lock() = (backend.to_string(), profile.to_string());
    }

    fn identity(&self, owner: &dyn Owner) -> StreamIdentity {
        let names = self.names.lock();
        owner.identity(&names.0, &names.1)
    }

    /// The function was reset: back to RUNNING, any stream dropped (the backend's own reset
    /// drops what it loaded).
    pub(super) fn reset(&self) {
        *self.session.lock() = None;
        *self.refusal.lock() = None;
    }

    /// The current state: RUNNING until migration is used, and after any reset since.
    pub(super) fn state(&self) -> MigrationState {
        self.session
            .lock()
            .as_ref()
            .map_or(MigrationState::Running, |s| s.machine.state())
    }

    /// Why the last migration step was refused, if one was since the last reset.
    pub(super) fn refusal(&self) -> Option<String> {
        self.refusal.lock().clone()
    }

    fn refuse(&self, e: MigrationFailure) -> MigrationFailure {
        *self.refusal.lock() = Some(e.to_string());
        e
    }

    /// Runs `f` on the session, created in RUNNING on first use.
    fn with<T>(
        &self,
        owner: &dyn Owner,
        f: impl FnOnce(&mut Session, &dyn MigrationHooks) -> Result<T, MigrationFailure>,
    ) -> Result<T, MigrationFailure> {
        let hooks = owner.hooks().ok_or(MigrationFailure::NotMigratable)?;
        let mut slot = self.session.lock();
        let session = slot.get_or_insert_with(|| Session {
            machine: StateMachine::new(hooks.flags()),
            writer: None,
            loader: None,
        });
        f(session, hooks).map_err(|e| match e {
            MigrationFailure::NotMigratable | MigrationFailure::WrongState { .. } => e,
            e => self.refuse(e),
        })
    }

    /// The flags the function offers.
    pub(super) fn flags(&self, owner: &dyn Owner) -> Result<MigrationFlags, MigrationFailure> {
        owner
            .hooks()
            .map(|h| h.flags())
            .ok_or(MigrationFailure::NotMigratable)
    }

    /// Moves to `want`, walking the backend's arcs; opens or drops the stream.
    pub(super) fn set_state(
        &self,
        owner: &dyn Owner,
        want: MigrationState,
    ) -> Result<MigrationState, MigrationFailure> {
        self.with(owner, |session, hooks| {
            let before = session.machine.state();
            let resume = Resume {
                inner: hooks,
                owner,
                loader: Mutex::new(session.loader.take()),
            };
            let result = session.machine.set_state(&resume, want);
            let after = session.machine.state();
            session.loader = resume.loader.into_inner();
            if after != MigrationState::Resuming {
                session.loader = None;
            } else if before != MigrationState::Resuming {
                session.loader = Some(StreamLoader::new(self.identity(owner), LOADER_LIMITS));
            }
            if !after.is_saving() {
                session.writer = None;
            } else if !before.is_saving() {
                session.writer = Some(StreamWriter::new(self.identity(owner)));
            }
            match result {
                Ok(()) => {
                    if after != before {
                        tracing::info!(from = before.name(), to = after.name(), "migration state");
                    }
                    Ok(after)
                }
                Err(e) => {
                    tracing::info!(
                        from = before.name(),
                        to = want.name(),
                        "migration state change refused: {e}"
                    );
                    Err(MigrationFailure::Transition(e))
                }
            }
        })
    }

    /// Fills `buf` with the next bytes of the stream being saved; fewer than `buf` holds
    /// means no more for now (pre-copy) or the end (stop-copy).
    pub(super) fn read(
        &self,
        owner: &dyn Owner,
        buf: &mut [u8],
    ) -> Result<usize, MigrationFailure> {
        self.with(owner, |session, hooks| {
            let state = session.machine.state();
            let last = state == MigrationState::StopCopy;
            let writer = session
                .writer
                .as_mut()
                .ok_or(MigrationFailure::WrongState {
                    state: state.name(),
                    what: "reading migration data",
                })?;
            if last && writer.needs_config() {
                // The device is stopped: the guest's config state is final.
                writer.set_config(owner.config_snapshot());
            }
            writer.read(hooks, buf, last).map_err(|source| {
                tracing::debug!("migration save: {source}");
                MigrationFailure::Device {
                    what: "saving",
                    source,
                }
            })
        })
    }

    /// Takes the next bytes of the stream being loaded; a corrupt stream or one for another
    /// function is refused before its data reaches the device.
    pub(super) fn write(&self, owner: &dyn Owner, data: &[u8]) -> Result<(), MigrationFailure> {
        self.with(owner, |session, hooks| {
            let state = session.machine.state();
            let loader = session
                .loader
                .as_mut()
                .ok_or(MigrationFailure::WrongState {
                    state: state.name(),
                    what: "loading migration data",
                })?;
            loader.feed_into(data, hooks).map_err(|e| {
                tracing::debug!("migration stream refused: {e}");
                MigrationFailure::Stream(e)
            })
        })
    }

    /// Pre-copy progress of the stream (framing included); only in PRE_COPY(_P2P).
    pub(super) fn precopy_info(&self, owner: &dyn Owner) -> Result<PrecopyInfo, MigrationFailure> {
        self.with(owner, |session, hooks| {
            let state = session.machine.state();
            let writer = session
                .writer
                .as_ref()
                .filter(|_| matches!(state, MigrationState::PreCopy | MigrationState::PreCopyP2p))
                .ok_or(MigrationFailure::WrongState {
                    state: state.name(),
                    what: "pre-copy info",
                })?;
            let device = hooks
                .precopy_info()
                .map_err(|source| MigrationFailure::Device {
                    what: "pre-copy info",
                    source,
                })?;
            Ok(writer.precopy_info(device))
        })
    }

    /// Estimated bytes of the stop-copy stream, framing included.
    pub(super) fn stop_copy_size(&self, owner: &dyn Owner) -> Result<u64, MigrationFailure> {
        let hooks = owner.hooks().ok_or(MigrationFailure::NotMigratable)?;
        let size = hooks
            .stop_copy_size()
            .map_err(|source| MigrationFailure::Device {
                what: "stop-copy size",
                source,
            })?;
        Ok(estimated_size(&self.identity(owner), size))
    }
}
