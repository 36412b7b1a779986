//! A migratable function's migration hooks, mapping arcs to firmware commands as Linux's mlx5
//! vfio driver does (drivers/vfio/pci/mlx5/main.c):
//!
//! - RUNNING → RUNNING_P2P: SUSPEND_VHCA initiator; RUNNING_P2P → STOP: SUSPEND_VHCA
//!   responder; back: RESUME_VHCA responder, then initiator (the same on the PRE_COPY side);
//! - RUNNING → PRE_COPY (offered with multi-load and tracking state): a saving session whose
//!   first save sets tracking and writes the whole image; each later pre-copy round saves what
//!   changed (`incremental`); STOP_COPY saves the rest, incrementally after pre-copy or whole
//!   without; chunks of at most 8 MiB in chunk mode, each image's later chunks saved as
//!   `incremental` continuations;
//! - STOP → RESUMING → STOP: each FW_DATA record is loaded with LOAD_VHCA_STATE; leaving
//!   RESUMING checks the stream and the firmware both ended on a boundary.
//!
//! The device data is a stream of records (see [`super::records`]): STOP_COPY_SIZE first,
//! then one FW_DATA record per save.
//!
//! Simplifications against Linux: saves run synchronously when the stream is read, through
//! one state buffer (Linux keeps two chunk buffers so the firmware saves one while the other
//! is read); the destination loads each FW_DATA record when it is complete. Outside chunk
//! mode the state must fit that one 8 MiB buffer (Linux sizes its buffer to the state).

use std::sync::Arc;

use parking_lot::Mutex;
use vfio_variant::migration::{
    DirtyTracker, MigrationError, MigrationFlags, MigrationHooks, MigrationState, PrecopyInfo,
};

use crate::hw::ifc::{RESUME_INITIATOR, RESUME_RESPONDER, SUSPEND_INITIATOR, SUSPEND_RESPONDER};

use super::cmd::{CommandError, CommandQueue, STATE_BUFFER_SIZE};
use super::commands::{self, MigrationCaps};
use super::dirty::FirmwareDirtyTracker;
use super::records::{self, RECORD_HEADER_BYTES, Record, RecordError, RecordReader, TAG_FW_DATA};

impl From<RecordError> for MigrationError {
    fn from(e: RecordError) -> Self {
        MigrationError::InvalidData(e.to_string())
    }
}

fn device(e: CommandError) -> MigrationError {
    MigrationError::Device(e.to_string())
}

/// A saving session (PRE_COPY, PRE_COPY_P2P, STOP_COPY).
#[derive(Debug, Default)]
struct Saving {
    /// STOP_COPY_SIZE was sent.
    size_sent: bool,
    /// Pre-copy's first save (set_track) is still to come.
    needs_track: bool,
    /// The session began in pre-copy (later saves are incremental).
    tracked: bool,
    /// The initial image is written whole.
    initial_done: bool,
    /// An image is partly saved.
    image_more: bool,
    /// A pre-copy round ended with a complete image: the next read ends the round.
    round_done: bool,
    /// Stopped: saving the final state.
    last: bool,
    /// The final image was begun.
    last_begun: bool,
}

/// A loading session (RESUMING).
#[derive(Debug, Default)]
struct Loading {
    reader: RecordReader,
    /// The firmware holds a partly loaded image.
    partial: bool,
    /// FW_DATA records loaded.
    loaded: u64,
}

#[derive(Default)]
struct Session {
    pending: Vec<u8>,
    offset: usize,
    saving: Option<Saving>,
    loading: Option<Loading>,
}

/// The migration of one VF through the PF's firmware.
pub struct VfMigration {
    queue: Arc<CommandQueue>,
    vhca_id: u16,
    caps: MigrationCaps,
    session: Mutex<Session>,
    tracker: Option<FirmwareDirtyTracker>,
}

impl VfMigration {
    /// The migration of the VF `vhca_id` on the PF of `queue`, whose capabilities are `caps`.
    pub fn new(queue: Arc<CommandQueue>, vhca_id: u16, caps: MigrationCaps) -> Self {
        let tracker = caps
            .tracker
            .map(|limits| FirmwareDirtyTracker::new(Arc::clone(&queue), vhca_id, limits));
        Self {
            queue,
            vhca_id,
            caps,
            session: Mutex::new(Session::default()),
            tracker,
        }
    }

    /// Forgets any session (after a reset).
    pub fn reset(&self) {
        *self.session.lock() = Session::default();
        if let Some(tracker) = &self.tracker {
            tracker.stop();
        }
    }

    fn suspend(&self, op_mod: u16) -> Result<(), MigrationError> {
        commands::suspend(&self.queue, self.vhca_id, op_mod).map_err(device)
    }

    fn resume(&self, op_mod: u16) -> Result<(), MigrationError> {
        commands::resume(&self.queue, self.vhca_id, op_mod).map_err(device)
    }

    fn start_saving(&self, session: &mut Session, precopy: bool) {
        session.pending.clear();
        session.offset = 0;
        session.saving = Some(Saving {
            needs_track: precopy,
            tracked: precopy,
            ..Saving::default()
        });
    }

    /// Appends one FW_DATA record of the next save to `pending`; `false` when the save wrote
    /// nothing.
    fn save_record(
        &self,
        pending: &mut Vec<u8>,
        saving: &mut Saving,
        incremental: bool,
        set_track: bool,
    ) -> Result<bool, MigrationError> {
        pending.clear();
        pending.extend_from_slice(&[0; RECORD_HEADER_BYTES]);
        let next = commands::save(
            &self.queue,
            self.vhca_id,
            incremental,
            set_track,
            STATE_BUFFER_SIZE,
            pending,
        )
        .map_err(device)?;
        saving.image_more = next != 0;
        let size = (pending.len() - RECORD_HEADER_BYTES) as u64;
        if size == 0 {
            pending.clear();
            return Ok(false);
        }
        pending[..RECORD_HEADER_BYTES].copy_from_slice(&records::header(TAG_FW_DATA, 0, size));
        Ok(true)
    }

    /// Fills `pending` with the next record; `false` when there is none now.
    fn next_record(&self, session: &mut Session) -> Result<bool, MigrationError> {
        let size = if session.saving.as_ref().is_some_and(|s| !s.size_sent) {
            Some(self.stop_copy_size()?)
        } else {
            None
        };
        let Session {
            pending, saving, ..
        } = session;
        let Some(saving) = saving.as_mut() else {
            return Err(MigrationError::Device("not saving".into()));
        };
        if let Some(size) = size {
            saving.size_sent = true;
            *pending = records::stop_copy_size(size);
            return Ok(true);
        }
        if saving.image_more {
            let saved = self.save_record(pending, saving, true, false)?;
            if !saving.last && !saving.image_more {
                saving.round_done = true;
                saving.initial_done = true;
            }
            return Ok(saved);
        }
        if saving.last {
            if saving.last_begun {
                return Ok(false);
            }
            saving.last_begun = true;
            return self.save_record(pending, saving, saving.tracked, false);
        }
        if saving.needs_track {
            saving.needs_track = false;
            let saved = self.save_record(pending, saving, false, true)?;
            saving.round_done = !saving.image_more;
            saving.initial_done = !saving.image_more;
            return Ok(saved);
        }
        if std::mem::take(&mut saving.round_done) {
            return Ok(false);
        }
        let saved = self.save_record(pending, saving, true, false)?;
        saving.round_done = !saving.image_more;
        saving.initial_done = true;
        Ok(saved)
    }
}

impl MigrationHooks for VfMigration {
    fn flags(&self) -> MigrationFlags {
        let mut flags = MigrationFlags::STOP_COPY | MigrationFlags::P2P;
        if self.caps.precopy() {
            flags |= MigrationFlags::PRE_COPY;
        }
        flags
    }

    fn transition(&self, from: MigrationState, to: MigrationState) -> Result<(), MigrationError> {
        use MigrationState::*;
        let mut session = self.session.lock();
        match (from, to) {
            (Running, RunningP2p) | (PreCopy, PreCopyP2p) => self.suspend(SUSPEND_INITIATOR)?,
            (RunningP2p, Running) | (PreCopyP2p, PreCopy) => self.resume(RESUME_INITIATOR)?,
            (RunningP2p, Stop) => self.suspend(SUSPEND_RESPONDER)?,
            (Stop, RunningP2p) => self.resume(RESUME_RESPONDER)?,
            (Running, PreCopy) | (RunningP2p, PreCopyP2p) => self.start_saving(&mut session, true),
            (PreCopy, Running) | (PreCopyP2p, RunningP2p) | (StopCopy, Stop) => {
                session.saving = None;
                session.pending.clear();
            }
            (PreCopyP2p, StopCopy) => {
                self.suspend(SUSPEND_RESPONDER)?;
                if let Some(saving) = session.saving.as_mut() {
                    saving.last = true;
                }
            }
            (Stop, StopCopy) => {
                self.start_saving(&mut session, false);
                if let Some(saving) = session.saving.as_mut() {
                    saving.last = true;
                }
            }
            (Stop, Resuming) => session.loading = Some(Loading::default()),
            (Resuming, Stop) => {
                let loading = session.loading.take().unwrap_or_default();
                if !loading.reader.at_boundary() || loading.partial {
                    return Err(MigrationError::InvalidData(
                        "the device state ends inside a record or an image".into(),
                    ));
                }
                if loading.loaded == 0 {
                    return Err(MigrationError::InvalidData(
                        "the stream carries no device state".into(),
                    ));
                }
            }
            (from, to) => {
                return Err(MigrationError::Device(format!("no arc {from:?} -> {to:?}")));
            }
        }
        Ok(())
    }

    fn save(&self, buf: &mut [u8]) -> Result<usize, MigrationError> {
        let mut session = self.session.lock();
        if session.offset >= session.pending.len() {
            session.offset = 0;
            if !self.next_record(&mut session)? {
                session.pending.clear();
                return Ok(0);
            }
        }
        let Session {
            pending, offset, ..
        } = &mut *session;
        let n = (pending.len() - *offset).min(buf.len());
        buf[..n].copy_from_slice(&pending[*offset..*offset + n]);
        *offset += n;
        Ok(n)
    }

    fn load(&self, data: &[u8]) -> Result<(), MigrationError> {
        let mut session = self.session.lock();
        let Some(loading) = session.loading.as_mut() else {
            return Err(MigrationError::Device("not resuming".into()));
        };
        let Loading {
            reader,
            partial,
            loaded,
        } = loading;
        reader.feed(data, |record| match record {
            Record::StopCopySize(_) => Ok(()),
            Record::FwData(bytes) if bytes.is_empty() => Ok(()),
            Record::FwData(bytes) => {
                *partial = commands::load(&self.queue, self.vhca_id, &bytes).map_err(|e| {
                    MigrationError::InvalidData(format!("the firmware refused the state: {e}"))
                })?;
                *loaded += 1;
                Ok::<_, MigrationError>(())
            }
        })
    }

    fn precopy_info(&self) -> Result<PrecopyInfo, MigrationError> {
        let session = self.session.lock();
        let Some(saving) = session.saving.as_ref() else {
            return Err(MigrationError::Device("not in pre-copy".into()));
        };
        let pending = (session.pending.len() - session.offset) as u64;
        let firmware = if saving.needs_track {
            commands::query_state(&self.queue, self.vhca_id, false, self.caps.in_chunks)
        } else {
            commands::query_state(&self.queue, self.vhca_id, true, self.caps.in_chunks)
        }
        .map_err(device)?
        .remaining_total;
        let framed = firmware + firmware.div_ceil(u64::from(STATE_BUFFER_SIZE)) * 16;
        Ok(if saving.initial_done {
            PrecopyInfo {
                initial_bytes: 0,
                dirty_bytes: pending + framed,
            }
        } else {
            PrecopyInfo {
                initial_bytes: pending + framed,
                dirty_bytes: 0,
            }
        })
    }

    /// The whole image, its FW_DATA record headers and the STOP_COPY_SIZE record.
    fn stop_copy_size(&self) -> Result<u64, MigrationError> {
        let image = commands::query_state(&self.queue, self.vhca_id, false, self.caps.in_chunks)
            .map_err(device)?
            .remaining_total;
        let records = image.div_ceil(u64::from(STATE_BUFFER_SIZE)).max(1);
        Ok(image + records * RECORD_HEADER_BYTES as u64 + RECORD_HEADER_BYTES as u64 + 8)
    }

    fn dirty_tracker(&self) -> Option<&dyn DirtyTracker> {
        self.tracker.as_ref().map(|t| t as &dyn DirtyTracker)
    }
}
