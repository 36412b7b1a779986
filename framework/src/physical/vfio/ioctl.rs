//! The VFIO ioctls the direct path issues itself, so the kernel's errno reaches the client
//! (vfio-ioctls folds SET_IRQS and RESET failures into errors without one).

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// `_IO(VFIO_TYPE, VFIO_BASE + n)`: VFIO's ioctls carry no size or direction bits.
const fn vfio_io(n: u64) -> u64 {
    const VFIO_TYPE: u64 = b';' as u64;
    const VFIO_BASE: u64 = 100;
    (VFIO_TYPE << 8) | (VFIO_BASE + n)
}

const VFIO_DEVICE_SET_IRQS: u64 = vfio_io(10);
const VFIO_DEVICE_RESET: u64 = vfio_io(11);
const VFIO_IOMMU_MAP_DMA: u64 = vfio_io(13);
const VFIO_IOMMU_UNMAP_DMA: u64 = vfio_io(14);

/// `VFIO_DMA_MAP_FLAG_READ`: the device may read the range.
const DMA_MAP_READ: u32 = 1 << 0;
/// `VFIO_DMA_MAP_FLAG_WRITE`: the device may write the range.
const DMA_MAP_WRITE: u32 = 1 << 1;

/// `struct vfio_iommu_type1_dma_map`.
#[repr(C)]
struct DmaMap {
    argsz: u32,
    flags: u32,
    vaddr: u64,
    iova: u64,
    size: u64,
}

/// `struct vfio_iommu_type1_dma_unmap` without the bitmap.
#[repr(C)]
struct DmaUnmap {
    argsz: u32,
    flags: u32,
    iova: u64,
    size: u64,
}

fn check(ret: libc::c_int) -> io::Result<()> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// VFIO_IOMMU_MAP_DMA on a container.
///
/// # Safety
/// `vaddr..vaddr+size` must be a live mapping of this process that stays mapped until the
/// range is unmapped from the IOMMU: the device reads and writes it at any time.
pub(super) unsafe fn map_dma(
    container: BorrowedFd<'_>,
    iova: u64,
    size: u64,
    vaddr: *mut u8,
    writable: bool,
) -> io::Result<()> {
    let map = DmaMap {
        argsz: std::mem::size_of::<DmaMap>() as u32,
        flags: DMA_MAP_READ | if writable { DMA_MAP_WRITE } else { 0 },
        vaddr: vaddr as u64,
        iova,
        size,
    };
    // SAFETY: the fd is a VFIO container, `map` is a complete `vfio_iommu_type1_dma_map`
    // that lives across the call; the caller keeps the memory mapped (see above).
    check(unsafe { libc::ioctl(container.as_raw_fd(), VFIO_IOMMU_MAP_DMA as _, &map) })
}

/// VFIO_IOMMU_UNMAP_DMA of exactly `iova..iova+size`.
pub(super) fn unmap_dma(container: BorrowedFd<'_>, iova: u64, size: u64) -> io::Result<()> {
    let mut unmap = DmaUnmap {
        argsz: std::mem::size_of::<DmaUnmap>() as u32,
        flags: 0,
        iova,
        size,
    };
    // SAFETY: the fd is a VFIO container and `unmap` a complete `vfio_iommu_type1_dma_unmap`
    // (no bitmap flag, so the kernel reads no more), writable for the size it reports back.
    check(unsafe { libc::ioctl(container.as_raw_fd(), VFIO_IOMMU_UNMAP_DMA as _, &mut unmap) })?;
    if unmap.size != size {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("the IOMMU unmapped {:#x} bytes, not {size:#x}", unmap.size),
        ));
    }
    Ok(())
}

/// VFIO_DEVICE_SET_IRQS with `data` (bools or eventfd numbers) after the fixed part.
pub(super) fn set_irqs(
    device: BorrowedFd<'_>,
    flags: u32,
    index: u32,
    start: u32,
    count: u32,
    data: &[u8],
) -> io::Result<()> {
    const HEADER: usize = 20;
    let argsz = HEADER + data.len();
    // u32 words keep the buffer aligned for `struct vfio_irq_set`.
    let mut words = vec![0u32; argsz.div_ceil(4)];
    words[..5].copy_from_slice(&[argsz as u32, flags, index, start, count]);
    // SAFETY: `words` holds at least `argsz` bytes; the data part is written as bytes.
    let bytes = unsafe { std::slice::from_raw_parts_mut(words.as_mut_ptr().cast::<u8>(), argsz) };
    bytes[HEADER..].copy_from_slice(data);
    // SAFETY: the fd is a VFIO device and the buffer is a `vfio_irq_set` of `argsz` bytes;
    // eventfd numbers in it are open for the duration of the call (the kernel takes its own
    // references).
    check(unsafe {
        libc::ioctl(
            device.as_raw_fd(),
            VFIO_DEVICE_SET_IRQS as _,
            words.as_ptr(),
        )
    })
}

/// VFIO_DEVICE_RESET.
pub(super) fn reset(device: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: the fd is a VFIO device; the ioctl takes no argument.
    check(unsafe { libc::ioctl(device.as_raw_fd(), VFIO_DEVICE_RESET as _) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_are_vfio_s() {
        // From <linux/vfio.h>: ';' << 8 | (100 + n).
        assert_eq!(VFIO_DEVICE_SET_IRQS, 0x3b6e);
        assert_eq!(VFIO_DEVICE_RESET, 0x3b6f);
        assert_eq!(VFIO_IOMMU_MAP_DMA, 0x3b71);
        assert_eq!(VFIO_IOMMU_UNMAP_DMA, 0x3b72);
        assert_eq!(std::mem::size_of::<DmaMap>(), 32);
        assert_eq!(std::mem::size_of::<DmaUnmap>(), 24);
    }
}
