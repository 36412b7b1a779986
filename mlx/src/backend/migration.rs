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
use vfio_variant::migration::record::{RECORD_HEADER_BYTES, RecordReader, RecordWriter};
use vfio_variant::migration::{
    DirtyTracker, MigrationError, MigrationFlags, MigrationHooks, MigrationState, PrecopyInfo,
};

use crate::hw::ifc::{RESUME_INITIATOR, RESUME_RESPONDER, SUSPEND_INITIATOR, SUSPEND_RESPONDER};

use super::cmd::{CommandError, CommandQueue, STATE_BUFFER_SIZE};
use super::commands::{self, MigrationCaps};
use super::dirty::FirmwareDirtyTracker;
use super::records::{self, FW_DATA, MlxRecord, STOP_COPY_SIZE};

fn device(e: CommandError) -> MigrationError {
    MigrationError::Device(e.to_string())
}

/// Where a saving session is. Each read of the stream saves according to the phase
/// ([`Phase::action`]) and moves to the next ([`Phase::after`]); stopping the device moves a
/// pre-copy phase to its stop-copy one ([`Phase::stop`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Pre-copy: the initial image (saved setting the dirty tracking) is next.
    Initial,
    /// Pre-copy: the initial image is partly saved; its next chunk is next.
    InitialMore,
    /// Pre-copy: a round ended with a complete image; the next read returns nothing, which ends
    /// the round for the VMM.
    RoundEnd,
    /// Pre-copy: the next read saves what changed since the last image.
    Round,
    /// Pre-copy: a round's image is partly saved; its next chunk is next.
    RoundMore,
    /// Stopped while a pre-copy image was partly saved: its chunks come first, then the final
    /// image.
    FinalAfterImage,
    /// Stopped: the final image is next.
    Final,
    /// Stopped: the final image is partly saved; its next chunk is next.
    FinalMore,
    /// Stopped: the final image is saved; the stream ends.
    Done,
}

/// What a read does in a phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    /// Nothing (the end of a pre-copy round, or of the stream).
    Nothing,
    /// A save through SAVE_VHCA_STATE.
    Save {
        /// Only what changed since the last save (or the next chunk of an image).
        incremental: bool,
        /// Starts the firmware's dirty tracking.
        set_track: bool,
    },
}

impl Phase {
    /// What the next read does; `tracked` when the session began in pre-copy (the final image
    /// is then incremental).
    fn action(self, tracked: bool) -> Action {
        let save = |incremental, set_track| Action::Save {
            incremental,
            set_track,
        };
        match self {
            Self::Initial => save(false, true),
            Self::InitialMore
            | Self::Round
            | Self::RoundMore
            | Self::FinalAfterImage
            | Self::FinalMore => save(true, false),
            Self::Final => save(tracked, false),
            Self::RoundEnd | Self::Done => Action::Nothing,
        }
    }

    /// The phase after this phase's read; `more` when the save left the image incomplete.
    fn after(self, more: bool) -> Self {
        match (self, more) {
            (Self::Initial | Self::InitialMore, true) => Self::InitialMore,
            (Self::Round | Self::RoundMore, true) => Self::RoundMore,
            (Self::Initial | Self::InitialMore | Self::Round | Self::RoundMore, false) => {
                Self::RoundEnd
            }
            (Self::RoundEnd, _) => Self::Round,
            (Self::FinalAfterImage, true) => Self::FinalAfterImage,
            (Self::FinalAfterImage, false) => Self::Final,
            (Self::Final | Self::FinalMore, true) => Self::FinalMore,
            (Self::Final | Self::FinalMore | Self::Done, false) | (Self::Done, true) => Self::Done,
        }
    }

    /// The phase once the device stops (PRE_COPY_P2P → STOP_COPY): an image in progress is
    /// finished first, then the final image is saved.
    fn stop(self) -> Self {
        match self {
            Self::Initial | Self::RoundEnd | Self::Round => Self::Final,
            Self::InitialMore | Self::RoundMore => Self::FinalAfterImage,
            stopped @ (Self::FinalAfterImage | Self::Final | Self::FinalMore | Self::Done) => {
                stopped
            }
        }
    }

    /// Whether the initial image is complete (pre-copy then reports dirty bytes, not initial
    /// ones).
    fn initial_done(self) -> bool {
        !matches!(self, Self::Initial | Self::InitialMore)
    }
}

/// A saving session (PRE_COPY, PRE_COPY_P2P, STOP_COPY).
#[derive(Debug)]
struct Saving {
    /// The STOP_COPY_SIZE record was sent (it comes before any image).
    size_sent: bool,
    /// The session began in pre-copy.
    tracked: bool,
    /// Where the session is.
    phase: Phase,
}

impl Saving {
    /// A session beginning in pre-copy.
    fn precopy() -> Self {
        Self {
            size_sent: false,
            tracked: true,
            phase: Phase::Initial,
        }
    }

    /// A session beginning stopped (STOP → STOP_COPY).
    fn stopped() -> Self {
        Self {
            size_sent: false,
            tracked: false,
            phase: Phase::Final,
        }
    }
}

/// A loading session (RESUMING).
#[derive(Debug)]
struct Loading {
    reader: RecordReader,
    /// The firmware holds a partly loaded image.
    partial: bool,
    /// FW_DATA records loaded.
    loaded: u64,
}

impl Default for Loading {
    fn default() -> Self {
        Self {
            reader: RecordReader::new(&records::KINDS),
            partial: false,
            loaded: 0,
        }
    }
}

#[derive(Default)]
struct Session {
    /// The records of the saving session not yet read.
    writer: RecordWriter,
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

    fn start_saving(session: &mut Session, saving: Saving) {
        session.writer.clear();
        session.saving = Some(saving);
    }

    /// Writes one FW_DATA record of the next save; returns whether the save wrote anything
    /// and whether the image is still incomplete.
    fn save_record(
        &self,
        writer: &mut RecordWriter,
        incremental: bool,
        set_track: bool,
    ) -> Result<(bool, bool), MigrationError> {
        writer.clear();
        let mut next = 0;
        let size = writer.push_with(&FW_DATA, |payload| {
            next = commands::save(
                &self.queue,
                self.vhca_id,
                incremental,
                set_track,
                STATE_BUFFER_SIZE,
                payload,
            )
            .map_err(device)?;
            Ok::<_, MigrationError>(())
        })?;
        if size == 0 {
            writer.clear();
        }
        Ok((size != 0, next != 0))
    }

    /// Writes the next record; `false` when there is none now.
    fn next_record(&self, session: &mut Session) -> Result<bool, MigrationError> {
        let size = if session.saving.as_ref().is_some_and(|s| !s.size_sent) {
            Some(self.stop_copy_size()?)
        } else {
            None
        };
        let Session { writer, saving, .. } = session;
        let Some(saving) = saving.as_mut() else {
            return Err(MigrationError::Device("not saving".into()));
        };
        if let Some(size) = size {
            saving.size_sent = true;
            writer.clear();
            writer.push(&STOP_COPY_SIZE, &size.to_le_bytes())?;
            return Ok(true);
        }
        match saving.phase.action(saving.tracked) {
            Action::Nothing => {
                saving.phase = saving.phase.after(false);
                Ok(false)
            }
            Action::Save {
                incremental,
                set_track,
            } => {
                let (saved, more) = self.save_record(writer, incremental, set_track)?;
                saving.phase = saving.phase.after(more);
                Ok(saved)
            }
        }
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
            (Running, PreCopy) | (RunningP2p, PreCopyP2p) => {
                Self::start_saving(&mut session, Saving::precopy());
            }
            (PreCopy, Running) | (PreCopyP2p, RunningP2p) | (StopCopy, Stop) => {
                session.saving = None;
                session.writer.clear();
            }
            (PreCopyP2p, StopCopy) => {
                self.suspend(SUSPEND_RESPONDER)?;
                if let Some(saving) = session.saving.as_mut() {
                    saving.phase = saving.phase.stop();
                }
            }
            (Stop, StopCopy) => Self::start_saving(&mut session, Saving::stopped()),
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
        if session.writer.pending() == 0 && !self.next_record(&mut session)? {
            session.writer.clear();
            return Ok(0);
        }
        Ok(session.writer.read(buf))
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
        reader.feed(data, |record| match MlxRecord::try_from(record)? {
            MlxRecord::StopCopySize(_) => Ok(()),
            MlxRecord::FwData(bytes) if bytes.is_empty() => Ok(()),
            MlxRecord::FwData(bytes) => {
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
        let pending = session.writer.pending() as u64;
        // Before the initial image, the whole state; after it, what changed.
        let incremental = saving.phase != Phase::Initial;
        let firmware =
            commands::query_state(&self.queue, self.vhca_id, incremental, self.caps.in_chunks)
                .map_err(device)?
                .remaining_total;
        let framed = firmware + firmware.div_ceil(u64::from(STATE_BUFFER_SIZE)) * 16;
        Ok(if saving.phase.initial_done() {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the phases from `start` with the images' completeness given by `more` (one entry
    /// per save), stopping the device before read `stop_at`; returns the actions in order.
    fn run(start: Saving, more: &[bool], stop_at: Option<usize>) -> Vec<Action> {
        let mut saving = start;
        let mut more = more.iter().copied();
        let mut actions = Vec::new();
        for read in 0..16 {
            if stop_at == Some(read) {
                saving.phase = saving.phase.stop();
            }
            let action = saving.phase.action(saving.tracked);
            let image_more = match action {
                Action::Nothing => false,
                Action::Save { .. } => more.next().unwrap_or(false),
            };
            saving.phase = saving.phase.after(image_more);
            actions.push(action);
            if saving.phase == Phase::Done {
                break;
            }
        }
        actions
    }

    const fn save(incremental: bool, set_track: bool) -> Action {
        Action::Save {
            incremental,
            set_track,
        }
    }

    #[test]
    fn precopy_rounds_then_the_final_image() {
        // Initial image in two chunks, a round end, one round in one chunk, a round end, then
        // stopped: the final image, incremental, in one chunk.
        let actions = run(Saving::precopy(), &[true, false, false, false], Some(5));
        assert_eq!(
            actions,
            [
                save(false, true),
                save(true, false),
                Action::Nothing,
                save(true, false),
                Action::Nothing,
                save(true, false),
            ]
        );
    }

    #[test]
    fn stopping_inside_an_image_finishes_it_first() {
        // Stopped after the first chunk of the initial image: its second chunk, then the
        // final image in two chunks.
        let actions = run(Saving::precopy(), &[true, false, true, false], Some(1));
        assert_eq!(
            actions,
            [
                save(false, true),
                save(true, false),
                save(true, false),
                save(true, false),
            ]
        );
    }

    #[test]
    fn stop_copy_without_precopy_saves_one_whole_image() {
        let actions = run(Saving::stopped(), &[true, true, false], None);
        assert_eq!(
            actions,
            [save(false, false), save(true, false), save(true, false)]
        );
        // Stopped before pre-copy read anything: the final image right away, as the session
        // began tracked.
        assert_eq!(
            run(Saving::precopy(), &[false], Some(0)),
            [save(true, false)]
        );
    }

    #[test]
    fn phase_transitions() {
        use Phase::*;
        assert!(!Initial.initial_done() && !InitialMore.initial_done());
        assert!(RoundEnd.initial_done() && Round.initial_done() && RoundMore.initial_done());
        for stopped in [FinalAfterImage, Final, FinalMore, Done] {
            assert_eq!(stopped.stop(), stopped);
        }
        assert_eq!(Done.after(true), Done);
        assert_eq!(Done.action(true), Action::Nothing);
        assert_eq!(RoundEnd.after(false), Round);
    }
}
