//! The WQs the host reserved for sub-devices, and which are assigned.

use std::sync::Arc;

use parking_lot::Mutex;

use crate::hw::wq::WqMode;

/// One reserved WQ.
#[derive(Debug, Clone, Copy)]
struct Slot {
    wq: usize,
    mode: WqMode,
    assigned: bool,
}

/// The reserved WQs, shared by the backend and its functions (which return theirs on drop).
#[derive(Clone, Default)]
pub(super) struct Pool(Arc<Mutex<Vec<Slot>>>);

impl Pool {
    /// Reserves `wq` with `mode`.
    pub fn reserve(&self, wq: usize, mode: WqMode) {
        self.0.lock().push(Slot {
            wq,
            mode,
            assigned: false,
        });
    }

    /// Unassigned WQs of `mode`.
    pub fn available(&self, mode: WqMode) -> u32 {
        self.0
            .lock()
            .iter()
            .filter(|s| s.mode == mode && !s.assigned)
            .count() as u32
    }

    /// Takes the first free WQ of `mode` and runs `setup` on it; the WQ stays assigned only if
    /// `setup` succeeds.
    pub fn assign<T, E>(
        &self,
        mode: WqMode,
        setup: impl FnOnce(usize) -> Result<T, E>,
    ) -> Option<Result<T, E>> {
        let mut slots = self.0.lock();
        let slot = slots.iter_mut().find(|s| s.mode == mode && !s.assigned)?;
        let result = setup(slot.wq);
        slot.assigned = result.is_ok();
        Some(result)
    }

    /// Returns `wq` to the pool.
    pub fn release(&self, wq: usize) {
        if let Some(slot) = self.0.lock().iter_mut().find(|s| s.wq == wq) {
            slot.assigned = false;
        }
    }
}
