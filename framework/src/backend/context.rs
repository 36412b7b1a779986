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

    /// Copies `len` bytes of guest memory from `src` to `dst` (the ranges may overlap: the
    /// result is as if the source were read whole first). On error some of the destination may
    /// have been written. The default goes through a bounce buffer; an implementation that
    /// maps guest memory copies directly.
    fn copy(&self, src: u64, dst: u64, len: usize) -> Result<(), DmaError> {
        let mut buffer = vec![0u8; len.min(BOUNCE)];
        let descending = dst > src && dst < src.saturating_add(len as u64);
        let mut done = 0;
        while done < len {
            let n = (len - done).min(BOUNCE);
            let at = if descending { len - done - n } else { done } as u64;
            self.read(src + at, &mut buffer[..n])?;
            self.write(dst + at, &buffer[..n])?;
            done += n;
        }
        Ok(())
    }
}

/// Bytes a default [`DmaAccess::copy`] moves at a time.
const BOUNCE: usize = 64 << 10;

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

/// Where a function's interrupts go: given to a backend by its device, and to a device by the
/// server (which maps them to the VMM's eventfds) or an in-process VMM.
pub trait InterruptSink: Send + Sync {
    /// Raises (or for INTx, sets the level of) an interrupt. Never blocks on the guest. A
    /// backend reports its INTx *condition*; the device in front of it (the sink a backend is
    /// given is the `VirtualFunction`'s) turns that into the line, masked by
    /// COMMAND.INTX_DISABLE, and raises the line to the VMM when it changes. What the server
    /// does with what reaches it: a vector without a VMM eventfd (MSI-X or MSI off) is dropped;
    /// a vector the VMM masked is kept pending (the MSI-X PBA shows it) and delivered when
    /// unmasked. A vector the layout does not declare is dropped, and breaks the backend
    /// contract (the conformance kit reports it).
    fn raise(&self, interrupt: Interrupt);
}

/// Given to [`super::Function::attach`] (by the function's device), and to
/// `VirtualFunction::attach` (by a server or an in-process VMM).
#[derive(Clone)]
pub struct FunctionContext {
    /// Guest memory.
    pub dma: Arc<dyn DmaAccess>,
    /// Interrupts.
    pub interrupts: Arc<dyn InterruptSink>,
}
