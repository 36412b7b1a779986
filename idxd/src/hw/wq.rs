//! Work queues: their configuration (WQCFG), state, bound address space and interrupts.

use std::collections::VecDeque;
use std::sync::Arc;

use vfio_variant::backend::{DmaAccess, DmaError, InterruptSink};

use super::descriptor::Descriptor;
use super::registers::{WQCFG_MODE_DEDICATED, WQCFG_PRIORITY_SHIFT, WQCFG_STATE_SHIFT};

/// How software submits to a WQ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WqMode {
    /// One client, MOVDIR64B.
    Dedicated,
    /// Several clients, ENQCMD with a PASID each.
    Shared,
}

/// An address space with nothing mapped: a WQ no IOMMU binding gave memory to.
struct Unbound;

impl DmaAccess for Unbound {
    fn read(&self, iova: u64, data: &mut [u8]) -> Result<(), DmaError> {
        Err(DmaError::Unmapped {
            iova,
            len: data.len(),
        })
    }

    fn write(&self, iova: u64, data: &[u8]) -> Result<(), DmaError> {
        Err(DmaError::Unmapped {
            iova,
            len: data.len(),
        })
    }
}

/// One work queue.
pub struct WorkQueue {
    /// The eight WQCFG dwords (the state field of dword 6 is computed from `enabled`).
    pub config: [u32; 8],
    /// Enabled by ENABLE_WQ.
    pub enabled: bool,
    /// The address space its descriptors use (the PASID binding).
    pub memory: Arc<dyn DmaAccess>,
    /// Where its completion interrupts go.
    pub interrupts: Option<Arc<dyn InterruptSink>>,
    /// Descriptors submitted and not yet run (at most the WQ's size).
    pub pending: VecDeque<Descriptor>,
}

impl Default for WorkQueue {
    fn default() -> Self {
        Self {
            config: [0; 8],
            enabled: false,
            memory: Arc::new(Unbound),
            interrupts: None,
            pending: VecDeque::new(),
        }
    }
}

impl WorkQueue {
    /// Configured size (WQCFG dword 0 bits 0-15).
    pub fn size(&self) -> u32 {
        self.config[0] & 0xffff
    }

    /// Configured mode (WQCFG dword 2 bit 0).
    pub fn mode(&self) -> WqMode {
        if self.config[2] & WQCFG_MODE_DEDICATED != 0 {
            WqMode::Dedicated
        } else {
            WqMode::Shared
        }
    }

    /// Configured priority (WQCFG dword 2 bits 4-7).
    pub fn priority(&self) -> u32 {
        (self.config[2] >> WQCFG_PRIORITY_SHIFT) & 0xf
    }

    /// WQCFG dword `index` as software reads it.
    pub fn config_dword(&self, index: usize) -> u32 {
        match index {
            6 => {
                (self.config[6] & !(3 << WQCFG_STATE_SHIFT))
                    | (u32::from(self.enabled) << WQCFG_STATE_SHIFT)
            }
            i => self.config.get(i).copied().unwrap_or(0),
        }
    }

    /// Unbinds memory and interrupts (the IOMMU binding is gone).
    pub fn unbind(&mut self) {
        self.memory = Arc::new(Unbound);
        self.interrupts = None;
    }
}
