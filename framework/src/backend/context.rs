//! What the framework gives a function: guest memory (DMA) and interrupts.

use std::sync::Arc;

/// A DMA access the framework could not serve.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DmaError {
    /// No mapping covers the range.
    #[error("no DMA mapping covers {len} bytes at {iova:#x}")]
    Unmapped {
        /// Start of the access.
        iova: u64,
        /// Length of the access.
        len: usize,
    },
    /// The mapping does not allow this direction.
    #[error("DMA mapping at {iova:#x} is not {direction}")]
    Permission {
        /// Start of the access.
        iova: u64,
        /// `readable` or `writable`.
        direction: &'static str,
    },
    /// The VMM could not complete the transfer.
    #[error("DMA transfer failed: {0}")]
    Transfer(String),
}

/// Guest memory as the function sees it (I/O virtual addresses).
pub trait DmaAccess: Send + Sync {
    /// Reads guest memory.
    fn read(&self, iova: u64, data: &mut [u8]) -> Result<(), DmaError>;
    /// Writes guest memory.
    fn write(&self, iova: u64, data: &[u8]) -> Result<(), DmaError>;
}

/// An interrupt a function raises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interrupt {
    /// INTx line asserted (true) or deasserted (false).
    Intx(bool),
    /// MSI vector.
    Msi(u32),
    /// MSI-X vector.
    Msix(u32),
    /// Error interrupt (VFIO ERR index).
    Error,
    /// Device request interrupt (VFIO REQ index).
    Request,
}

/// Where a function's interrupts go (the server maps them to the VMM's eventfds).
pub trait InterruptSink: Send + Sync {
    /// Raises (or for INTx, sets the level of) an interrupt.
    fn raise(&self, interrupt: Interrupt);
}

/// Given to [`super::Function::attach`].
#[derive(Clone)]
pub struct FunctionContext {
    /// Guest memory.
    pub dma: Arc<dyn DmaAccess>,
    /// Interrupts.
    pub interrupts: Arc<dyn InterruptSink>,
}
