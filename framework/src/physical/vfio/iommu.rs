//! The client memory a function's device may reach: each fd-backed DMA_MAP is mmapped (shared)
//! into the server and mapped into the device's IOMMU at the client's address, until unmap.

use std::collections::BTreeMap;
use std::io;
use std::os::fd::OwnedFd;

use memmap2::{MmapOptions, MmapRaw};
use parking_lot::Mutex;

use crate::physical::DirectError;

/// The IOMMU of a function's device (a VFIO container).
pub(super) trait Iommu: Send + Sync {
    /// Maps `vaddr..vaddr+size` at `iova`.
    ///
    /// # Safety
    /// The memory must stay mapped in this process until [`Iommu::unmap`] of the range.
    unsafe fn map(&self, iova: u64, size: u64, vaddr: *mut u8, writable: bool) -> io::Result<()>;
    /// Unmaps exactly `iova..iova+size`.
    fn unmap(&self, iova: u64, size: u64) -> io::Result<()>;
}

struct Entry {
    size: u64,
    /// The server's mapping of the client's memory; `None` for a read-only range that came
    /// without an fd and is not in the IOMMU.
    memory: Option<MmapRaw>,
}

/// The DMA mappings of one function, by IOVA.
pub(super) struct IommuMappings<I> {
    iommu: I,
    maps: Mutex<BTreeMap<u64, Entry>>,
}

/// The IOMMU page: DMA ranges are mapped in whole pages of it.
const PAGE: u64 = crate::layout::MMAP_PAGE_SIZE;

fn memlock_limit() -> String {
    match rustix::process::getrlimit(rustix::process::Resource::Memlock).current {
        Some(bytes) => format!("{bytes} bytes"),
        None => "unlimited".into(),
    }
}

impl<I: Iommu> IommuMappings<I> {
    pub fn new(iommu: I) -> Self {
        Self {
            iommu,
            maps: Mutex::new(BTreeMap::new()),
        }
    }

    /// Adds `iova..iova+size`, the client's `fd` at `offset`.
    ///
    /// A range without an fd cannot be reached by a real device. A writable one (guest RAM)
    /// is refused, naming the fix; a read-only one (firmware ROM, which no device DMAs from)
    /// is recorded but left out of the IOMMU, so the client's view of its memory still holds
    /// and a device access there faults at the IOMMU.
    pub fn map(
        &self,
        iova: u64,
        size: u64,
        offset: u64,
        fd: Option<OwnedFd>,
        writable: bool,
    ) -> Result<(), DirectError> {
        let end = iova.checked_add(size);
        if size == 0 || end.is_none() || !(iova | size | offset).is_multiple_of(PAGE) {
            return Err(DirectError::Unaligned { iova, size, offset });
        }
        let mut maps = self.maps.lock();
        let end = end.unwrap_or(u64::MAX);
        if maps
            .range(..end)
            .next_back()
            .is_some_and(|(start, e)| start + e.size > iova)
        {
            return Err(DirectError::Overlap { iova, size });
        }
        let memory = match fd {
            None if writable => return Err(DirectError::NeedsFd { iova, size }),
            None => {
                tracing::debug!(
                    "read-only DMA range {iova:#x}+{size:#x} without an fd: not in the IOMMU"
                );
                None
            }
            Some(fd) => {
                let len = usize::try_from(size).map_err(|_| DirectError::Unaligned {
                    iova,
                    size,
                    offset,
                })?;
                let mut options = MmapOptions::new();
                options.offset(offset).len(len);
                let memory = if writable {
                    options.map_raw(&fd)
                } else {
                    options.map_raw_read_only(&fd)
                }
                .map_err(DirectError::Mmap)?;
                // SAFETY: `memory` is a live shared mapping of `size` bytes that the entry
                // keeps until the range is unmapped from the IOMMU (unmap, unmap-all, drop);
                // the server never makes Rust references into it.
                unsafe { self.iommu.map(iova, size, memory.as_mut_ptr(), writable) }.map_err(
                    |source| match source.raw_os_error() {
                        Some(libc::ENOMEM) => DirectError::MemlockLimit {
                            iova,
                            size,
                            limit: memlock_limit(),
                        },
                        _ => DirectError::Kernel {
                            what: format!("mapping DMA range {iova:#x}+{size:#x} into the IOMMU"),
                            source,
                        },
                    },
                )?;
                Some(memory)
            }
        };
        maps.insert(iova, Entry { size, memory });
        Ok(())
    }

    /// Removes the mapping that is exactly `iova..iova+size`.
    pub fn unmap(&self, iova: u64, size: u64) -> Result<(), DirectError> {
        let mut maps = self.maps.lock();
        match maps.get(&iova) {
            Some(e) if e.size == size => {
                let entry = maps.remove(&iova).expect("looked up under the same lock");
                self.release(iova, entry)
            }
            _ => Err(DirectError::NotMapped { iova, size }),
        }
    }

    /// Removes every mapping.
    pub fn clear(&self) {
        let maps = std::mem::take(&mut *self.maps.lock());
        for (iova, entry) in maps {
            if let Err(e) = self.release(iova, entry) {
                tracing::warn!("{e}");
            }
        }
    }

    /// Number of mappings.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.maps.lock().len()
    }

    fn release(&self, iova: u64, entry: Entry) -> Result<(), DirectError> {
        if entry.memory.is_none() {
            return Ok(());
        }
        let size = entry.size;
        let result = self.iommu.unmap(iova, size);
        if result.is_err() {
            // The device may still reach the pages: keep them mapped here rather than let the
            // address range be reused under a live IOMMU mapping.
            std::mem::forget(entry);
        }
        result.map_err(|source| DirectError::Kernel {
            what: format!("unmapping DMA range {iova:#x}+{size:#x} from the IOMMU"),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::Arc;

    use super::*;

    /// An IOMMU that records what is mapped and fails as told.
    #[derive(Default, Clone)]
    struct Recording {
        mapped: Arc<Mutex<Vec<(u64, u64, bool)>>>,
        fail_with: Arc<Mutex<Option<i32>>>,
    }

    impl Iommu for Recording {
        unsafe fn map(
            &self,
            iova: u64,
            size: u64,
            vaddr: *mut u8,
            writable: bool,
        ) -> io::Result<()> {
            assert!(!vaddr.is_null());
            if let Some(errno) = *self.fail_with.lock() {
                return Err(io::Error::from_raw_os_error(errno));
            }
            self.mapped.lock().push((iova, size, writable));
            Ok(())
        }
        fn unmap(&self, iova: u64, size: u64) -> io::Result<()> {
            let mut mapped = self.mapped.lock();
            let at = mapped
                .iter()
                .position(|m| m.0 == iova && m.1 == size)
                .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
            mapped.remove(at);
            Ok(())
        }
    }

    fn memfd(len: usize) -> OwnedFd {
        let fd = rustix::fs::memfd_create("iommu-test", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        let mut file = std::fs::File::from(fd);
        file.write_all(&vec![0u8; len]).unwrap();
        file.into()
    }

    #[test]
    fn fd_ranges_reach_the_iommu_and_unmap_undoes_them() {
        let iommu = Recording::default();
        let maps = IommuMappings::new(iommu.clone());
        maps.map(0x10000, 0x2000, 0, Some(memfd(0x3000)), true)
            .unwrap();
        maps.map(0x20000, 0x1000, 0x2000, Some(memfd(0x3000)), false)
            .unwrap();
        assert_eq!(
            *iommu.mapped.lock(),
            vec![(0x10000, 0x2000, true), (0x20000, 0x1000, false)]
        );
        assert_eq!(
            maps.unmap(0x10000, 0x1000).unwrap_err().errno(),
            libc::EINVAL
        );
        maps.unmap(0x10000, 0x2000).unwrap();
        assert_eq!(*iommu.mapped.lock(), vec![(0x20000, 0x1000, false)]);
        maps.clear();
        assert!(iommu.mapped.lock().is_empty());
        assert_eq!(maps.len(), 0);
    }

    #[test]
    fn refusals_leave_nothing_behind() {
        let iommu = Recording::default();
        let maps = IommuMappings::new(iommu.clone());
        maps.map(0x10000, 0x2000, 0, Some(memfd(0x2000)), true)
            .unwrap();
        // Overlapping, from below and from inside.
        for (iova, size) in [(0xf000, 0x2000), (0x11000, 0x1000)] {
            let e = maps
                .map(iova, size, 0, Some(memfd(0x2000)), true)
                .unwrap_err();
            assert!(matches!(e, DirectError::Overlap { .. }), "{e}");
            assert_eq!(e.errno(), libc::EEXIST);
        }
        // Guest RAM without an fd: refused, naming the fix.
        let e = maps.map(0x40000, 0x1000, 0, None, true).unwrap_err();
        assert_eq!(e.errno(), libc::EINVAL);
        assert!(
            e.to_string().contains("memory-backend-memfd,share=on"),
            "{e}"
        );
        // Unaligned.
        let e = maps
            .map(0x50800, 0x1000, 0, Some(memfd(0x1000)), true)
            .unwrap_err();
        assert!(matches!(e, DirectError::Unaligned { .. }));
        // The pinning limit, reported as such.
        *iommu.fail_with.lock() = Some(libc::ENOMEM);
        let e = maps
            .map(0x60000, 0x1000, 0, Some(memfd(0x1000)), true)
            .unwrap_err();
        assert!(matches!(e, DirectError::MemlockLimit { .. }), "{e}");
        assert_eq!(e.errno(), libc::ENOMEM);
        assert!(e.to_string().contains("RLIMIT_MEMLOCK"));
        // Another kernel error keeps its errno.
        *iommu.fail_with.lock() = Some(libc::EPERM);
        let e = maps
            .map(0x60000, 0x1000, 0, Some(memfd(0x1000)), true)
            .unwrap_err();
        assert_eq!(e.errno(), libc::EPERM);
        assert_eq!(maps.len(), 1);
        assert_eq!(iommu.mapped.lock().len(), 1);
    }

    #[test]
    fn read_only_ranges_without_an_fd_stay_out_of_the_iommu() {
        let iommu = Recording::default();
        let maps = IommuMappings::new(iommu.clone());
        maps.map(0xfffc0000, 0x40000, 0, None, false).unwrap();
        assert!(iommu.mapped.lock().is_empty());
        // Still a mapping for overlap checks and exact unmap.
        assert!(matches!(
            maps.map(0xfffc0000, 0x1000, 0, Some(memfd(0x1000)), false),
            Err(DirectError::Overlap { .. })
        ));
        maps.unmap(0xfffc0000, 0x40000).unwrap();
        assert_eq!(maps.len(), 0);
    }
}
