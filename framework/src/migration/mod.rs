//! Migration vocabulary shared by the framework and backends (VFIO migration v2): states,
//! flags, and the hooks a backend implements. Backends implement arc actions only; the
//! framework walks multi-step paths between states ([`StateMachine`], the walker of
//! `state.rs`); backends hand their state over as typed records ([`record`]) rather than
//! framing bytes themselves. DMA dirty logging keeps its bitmap in [`dirty`]. The stream a
//! function's state travels in is the device's (`crate::device::stream`): it carries the
//! layout's fingerprint and config space, which this vocabulary below them knows nothing of.

pub mod dirty;
pub mod record;
mod state;

pub use state::{StateMachine, TransitionError, is_direct_arc, next_step, path};

use std::ops::Range;

use bitflags::bitflags;

bitflags! {
    /// Migration features a function offers (VFIO_MIGRATION_*).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct MigrationFlags: u64 {
        /// STOP, RUNNING, STOP_COPY, RESUMING.
        const STOP_COPY = 1 << 0;
        /// RUNNING_P2P (and PRE_COPY_P2P with PRE_COPY).
        const P2P = 1 << 1;
        /// PRE_COPY.
        const PRE_COPY = 1 << 2;
    }
}

/// Device migration state (enum vfio_device_mig_state).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum MigrationState {
    /// A failed arc left the device here; only reset leaves it.
    Error = 0,
    /// Stopped, no DMA, no interrupts.
    Stop = 1,
    /// Running.
    Running = 2,
    /// Stopped, saving the final state.
    StopCopy = 3,
    /// Stopped, loading state.
    Resuming = 4,
    /// Running, but not initiating peer-to-peer DMA.
    RunningP2p = 5,
    /// Running, saving state ahead of stop-copy.
    PreCopy = 6,
    /// Pre-copy while quiesced for peer-to-peer.
    PreCopyP2p = 7,
}

impl MigrationState {
    /// The state with this VFIO number.
    pub fn from_raw(raw: u32) -> Option<Self> {
        Some(match raw {
            0 => Self::Error,
            1 => Self::Stop,
            2 => Self::Running,
            3 => Self::StopCopy,
            4 => Self::Resuming,
            5 => Self::RunningP2p,
            6 => Self::PreCopy,
            7 => Self::PreCopyP2p,
            _ => return None,
        })
    }

    /// The state's name for operators: `running`, `stop`, `stop-copy`, `pre-copy-p2p`...
    pub fn name(self) -> &'static str {
        match self {
            Self::Error => "error",
            Self::Stop => "stop",
            Self::Running => "running",
            Self::StopCopy => "stop-copy",
            Self::Resuming => "resuming",
            Self::RunningP2p => "running-p2p",
            Self::PreCopy => "pre-copy",
            Self::PreCopyP2p => "pre-copy-p2p",
        }
    }
}

/// Pre-copy progress (VFIO_MIG_GET_PRECOPY_INFO).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PrecopyInfo {
    /// Bytes of initial state not yet read.
    pub initial_bytes: u64,
    /// Bytes of state dirtied since.
    pub dirty_bytes: u64,
}

/// A migration hook failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MigrationError {
    /// The device refused the step or the data.
    #[error("{0}")]
    Device(String),
    /// The stream is corrupt or does not belong to this function.
    #[error("invalid migration data: {0}")]
    InvalidData(String),
}

/// What a migratable function implements.
pub trait MigrationHooks: Send + Sync {
    /// Features offered.
    fn flags(&self) -> MigrationFlags;
    /// Performs one direct arc `from` → `to`; only arcs the flags allow are asked for.
    fn transition(&self, from: MigrationState, to: MigrationState) -> Result<(), MigrationError>;
    /// Fills `buf` with the next bytes of device state while saving; 0 means no more data now
    /// (pre-copy) or the end (stop-copy).
    fn save(&self, buf: &mut [u8]) -> Result<usize, MigrationError>;
    /// Takes the next bytes of device state while resuming, in order, each piece verified.
    /// Keep it uncommitted until the RESUMING → STOP arc: the framework asks that arc only
    /// once the whole stream has arrived and checked out, and a reset drops the rest.
    fn load(&self, data: &[u8]) -> Result<(), MigrationError>;
    /// Pre-copy progress.
    fn precopy_info(&self) -> Result<PrecopyInfo, MigrationError>;
    /// Estimated bytes of the stop-copy state.
    fn stop_copy_size(&self) -> Result<u64, MigrationError>;
    /// Device-side dirty page tracking, when the device has it.
    fn dirty_tracker(&self) -> Option<&dyn DirtyTracker> {
        None
    }
}

/// Device-side dirty page tracking (VFIO DMA logging).
pub trait DirtyTracker: Send + Sync {
    /// Starts tracking `ranges`; returns the page size actually used (may round up).
    fn start(&self, page_size: u64, ranges: &[Range<u64>]) -> Result<u64, MigrationError>;
    /// Sets bit i of `bitmap` for each dirty page (iova + i * page_size) and clears the log of
    /// that range.
    fn report(
        &self,
        iova: u64,
        length: u64,
        page_size: u64,
        bitmap: &mut [u64],
    ) -> Result<(), MigrationError>;
    /// Stops tracking.
    fn stop(&self);
}
