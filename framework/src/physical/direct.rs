//! The direct path of a function on a real device: what vfio-pci-core gives a variant driver
//! in the kernel. Client memory goes into the device's IOMMU, the client's eventfds are wired
//! to the device's interrupts, and BAR pages are mmapped by the VMM, so neither DMA, nor
//! interrupts, nor doorbell writes pass through the server.
//!
//! Kernel VFIO ([`super::vfio`]) implements it; a backend's function on such a device returns it
//! from [`Function::direct`](crate::backend::Function::direct), and the server then sends
//! DMA_MAP/UNMAP, SET_IRQS and passthrough BAR region info there instead of to its own tables.

use std::os::fd::OwnedFd;
use std::sync::Arc;

use crate::layout::MmapArea;
use crate::vfio_user::irq::SetIrqs;

/// Why a direct-path request was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum DirectError {
    /// A DMA_MAP without an fd: a real device cannot DMA through messages.
    #[error(
        "DMA range {iova:#x}+{size:#x} came without an fd: a real device cannot DMA through \
         messages; give the VM fd-backed shared memory (e.g. QEMU's \
         `-object memory-backend-memfd,share=on`)"
    )]
    NeedsFd {
        /// Start of the refused range.
        iova: u64,
        /// Its size.
        size: u64,
    },
    /// The range overlaps an existing mapping.
    #[error("DMA range {iova:#x}+{size:#x} overlaps an existing mapping")]
    Overlap {
        /// Start of the refused range.
        iova: u64,
        /// Its size.
        size: u64,
    },
    /// Address, size or fd offset is not page aligned, or the range wraps.
    #[error("DMA range {iova:#x}+{size:#x} (fd offset {offset:#x}) is not page aligned")]
    Unaligned {
        /// Start of the refused range.
        iova: u64,
        /// Its size.
        size: u64,
        /// Offset in the fd.
        offset: u64,
    },
    /// No mapping is exactly this range.
    #[error("no DMA mapping is exactly {iova:#x}+{size:#x}")]
    NotMapped {
        /// Start asked for.
        iova: u64,
        /// Size asked for.
        size: u64,
    },
    /// Pinning the memory would pass the locked-memory limit.
    #[error(
        "pinning DMA range {iova:#x}+{size:#x} for the IOMMU exceeds RLIMIT_MEMLOCK \
         ({limit}); raise the server's locked-memory limit (ulimit -l, LimitMEMLOCK=)"
    )]
    MemlockLimit {
        /// Start of the refused range.
        iova: u64,
        /// Its size.
        size: u64,
        /// The limit, as text (`65536 bytes`, `unlimited`).
        limit: String,
    },
    /// The client's fd could not be mapped into the server.
    #[error("mmap of the DMA fd failed: {0}")]
    Mmap(#[source] std::io::Error),
    /// An interrupt request the device cannot take.
    #[error("SET_IRQS: {0}")]
    Irq(String),
    /// The kernel refused.
    #[error("{what}: {source}")]
    Kernel {
        /// What was being done.
        what: String,
        /// The kernel's error.
        source: std::io::Error,
    },
}

impl DirectError {
    /// The errno of the error reply.
    pub fn errno(&self) -> i32 {
        match self {
            Self::NeedsFd { .. } | Self::Unaligned { .. } | Self::NotMapped { .. } => libc::EINVAL,
            Self::Irq(_) => libc::EINVAL,
            Self::Overlap { .. } => libc::EEXIST,
            Self::MemlockLimit { .. } => libc::ENOMEM,
            Self::Mmap(_) => libc::EFAULT,
            Self::Kernel { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
        }
    }
}

/// A file a VMM may mmap to reach a BAR's mmappable areas (the layout's `[[bar.mmap]]`)
/// without a message per access.
#[derive(Debug, Clone)]
pub struct MmapFile {
    /// The file (a device file, or a memfd an emulated model also maps).
    pub fd: Arc<OwnedFd>,
    /// Where byte 0 of the BAR is in the file.
    pub offset: u64,
}

/// Where a passthrough BAR can be mmapped: the device's file at the region's offset, and the
/// areas of it the device allows to be mapped (before the layout's trapped pages are taken out).
#[derive(Debug, Clone)]
pub struct DirectBar {
    /// The file and the offset of byte 0 of the BAR in it.
    pub file: MmapFile,
    /// Areas the device lets a process mmap, in BAR offsets.
    pub mappable: Vec<MmapArea>,
}

/// A function's direct path to its device.
pub trait DirectPath: Send + Sync {
    /// Maps client memory (`fd` at `offset`, `size` bytes) into the device's IOMMU at `iova`
    /// (the client's address). `fd` is `None` for a mapping that came without one: refused.
    fn dma_map(
        &self,
        iova: u64,
        size: u64,
        offset: u64,
        fd: Option<OwnedFd>,
        writable: bool,
    ) -> Result<(), DirectError>;
    /// Removes the mapping that is exactly `iova..iova+size`.
    fn dma_unmap(&self, iova: u64, size: u64) -> Result<(), DirectError>;
    /// Removes every mapping.
    fn dma_unmap_all(&self);
    /// Vectors the device has at IRQ `index`.
    fn irq_count(&self, index: u32) -> u32;
    /// Applies a SET_IRQS request to the device with the client's eventfds.
    fn set_irqs(&self, request: &SetIrqs, fds: &[OwnedFd]) -> Result<(), DirectError>;
    /// Where physical BAR `bar` can be mmapped, when it can.
    fn bar_file(&self, bar: u8) -> Option<DirectBar>;
    /// The client went away: unmap its memory and unwire its eventfds.
    fn release(&self);
}
