//! Migration of the sample function (STOP_COPY and P2P): the whole device state (registers,
//! NVRAM, MSI-X table, shared-memory BAR) is saved once the function is stopped, and loaded
//! in one piece when it leaves RESUMING.
//!
//! Saved state, version 1, little endian: `u32 version, u32 scratch, u32 int_status, u64 src,
//! u64 dst, u32 len, u32 count, u32 status, u32 nvram`, the 4 KiB MSI-X BAR, the 64 KiB
//! shared-memory BAR. The interrupt and bus-master enables are config space, which the
//! framework carries.

use std::sync::atomic::Ordering;

use vfio_variant::migration::{
    MigrationError, MigrationFlags, MigrationHooks, MigrationState, PrecopyInfo,
};

use super::function::SampleFunction;
use super::registers::{DMA_STATUS_BUSY, SHM_SIZE};

/// Version of the saved state.
const VERSION: u32 = 1;
/// Bytes of registers before the MSI-X BAR.
const REGISTERS: usize = 4 * 7 + 8 * 2;
/// Size of the MSI-X BAR.
const MSIX_SIZE: usize = 4096;
/// Size of the whole saved state.
pub(super) const STATE_SIZE: usize = REGISTERS + MSIX_SIZE + SHM_SIZE;

/// A function's migration state.
#[derive(Default)]
pub(super) struct SampleMigration {
    /// No DMA, no interrupts (RUNNING_P2P and below).
    pub(super) stopped: bool,
    /// The saved state, and how much of it was read.
    saving: Option<(Vec<u8>, usize)>,
    /// The state being loaded.
    loading: Option<Vec<u8>>,
}

impl SampleFunction {
    fn save_state(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(STATE_SIZE);
        {
            let state = self.state.lock();
            for word in [VERSION, state.scratch, state.int_status] {
                out.extend_from_slice(&word.to_le_bytes());
            }
            out.extend_from_slice(&state.src.to_le_bytes());
            out.extend_from_slice(&state.dst.to_le_bytes());
            let nvram = self.nvram.load(Ordering::SeqCst);
            for word in [state.len, state.count, state.status, nvram] {
                out.extend_from_slice(&word.to_le_bytes());
            }
        }
        out.extend_from_slice(&self.msix_bar.lock());
        let at = out.len();
        out.resize(STATE_SIZE, 0);
        // In range by construction: SHM_SIZE bytes at offset 0.
        let _ = self.shared.read(0, &mut out[at..]);
        out
    }

    fn load_state(&self, saved: &[u8]) -> Result<(), MigrationError> {
        if saved.len() != STATE_SIZE {
            return Err(MigrationError::InvalidData(format!(
                "{} bytes of sample state, expected {STATE_SIZE}",
                saved.len()
            )));
        }
        let word = |at: usize| {
            u32::from_le_bytes([saved[at], saved[at + 1], saved[at + 2], saved[at + 3]])
        };
        let quad = |at: usize| u64::from(word(at)) | (u64::from(word(at + 4)) << 32);
        if word(0) != VERSION {
            return Err(MigrationError::InvalidData(format!(
                "sample state version {}, this build reads {VERSION}",
                word(0)
            )));
        }
        if word(36) == DMA_STATUS_BUSY {
            return Err(MigrationError::InvalidData(
                "sample state with a DMA transfer in flight".into(),
            ));
        }
        let mut state = self.state.lock();
        state.scratch = word(4);
        state.int_status = word(8);
        state.src = quad(12);
        state.dst = quad(20);
        state.len = word(28);
        state.count = word(32);
        state.status = word(36);
        self.nvram.store(word(40), Ordering::SeqCst);
        self.update_intx(&mut state);
        self.msix_bar
            .lock()
            .copy_from_slice(&saved[REGISTERS..REGISTERS + MSIX_SIZE]);
        self.shared
            .write(0, &saved[REGISTERS + MSIX_SIZE..])
            .map_err(|e| MigrationError::Device(e.to_string()))
    }
}

impl MigrationHooks for SampleFunction {
    fn flags(&self) -> MigrationFlags {
        MigrationFlags::STOP_COPY | MigrationFlags::P2P
    }

    fn transition(&self, from: MigrationState, to: MigrationState) -> Result<(), MigrationError> {
        use MigrationState::*;
        let mut migration = self.migration.lock();
        match (from, to) {
            (Running, RunningP2p) => {
                migration.stopped = true;
                drop(migration);
                // No DMA once stopped: a transfer in flight ends first.
                self.worker.quiesce();
            }
            (RunningP2p, Running) => migration.stopped = false,
            (Stop, StopCopy) => {
                drop(migration);
                let saved = self.save_state();
                self.migration.lock().saving = Some((saved, 0));
            }
            (StopCopy, Stop) => migration.saving = None,
            (Stop, Resuming) => migration.loading = Some(Vec::new()),
            (Resuming, Stop) => {
                let saved = migration.loading.take().unwrap_or_default();
                drop(migration);
                self.load_state(&saved)?;
            }
            _ => {}
        }
        Ok(())
    }

    fn save(&self, buf: &mut [u8]) -> Result<usize, MigrationError> {
        let mut migration = self.migration.lock();
        let Some((saved, sent)) = migration.saving.as_mut() else {
            return Ok(0);
        };
        let n = (saved.len() - *sent).min(buf.len());
        buf[..n].copy_from_slice(&saved[*sent..*sent + n]);
        *sent += n;
        Ok(n)
    }

    fn load(&self, data: &[u8]) -> Result<(), MigrationError> {
        let mut migration = self.migration.lock();
        let loading = migration
            .loading
            .as_mut()
            .ok_or_else(|| MigrationError::Device("not resuming".into()))?;
        if loading.len() + data.len() > STATE_SIZE {
            return Err(MigrationError::InvalidData(
                "more sample state than the function has".into(),
            ));
        }
        loading.extend_from_slice(data);
        Ok(())
    }

    fn precopy_info(&self) -> Result<PrecopyInfo, MigrationError> {
        Err(MigrationError::Device(
            "the sample function has no pre-copy".into(),
        ))
    }

    fn stop_copy_size(&self) -> Result<u64, MigrationError> {
        Ok(STATE_SIZE as u64)
    }
}
