//! A function's DMA table: the client's memory as the device sees it, by I/O virtual address.
//! Ranges mapped with an fd are mmapped here and copied directly when the file cannot shrink,
//! and read and written through the file otherwise ([`fd`] states the rule); ranges without
//! an fd are reached with DMA_READ/DMA_WRITE messages to the client. (The pages a function
//! writes are logged by the device it is given to: `device::dma_logging`.)

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

use crate::backend::{DmaAccess, DmaError};
use fd::{FdMemory, HeldFiles};

pub mod fd;

/// Reaches client memory that was mapped without an fd.
pub trait RemoteMemory: Send + Sync {
    /// Reads client memory with DMA_READ.
    fn read(&self, address: u64, data: &mut [u8]) -> Result<(), DmaError>;
    /// Writes client memory with DMA_WRITE.
    fn write(&self, address: u64, data: &[u8]) -> Result<(), DmaError>;
}

/// Why a mapping was refused.
#[derive(Debug, thiserror::Error)]
pub enum MapError {
    /// It overlaps an existing mapping.
    #[error("DMA range {address:#x}+{size:#x} overlaps an existing mapping")]
    Overlap {
        /// Start of the refused range.
        address: u64,
        /// Its size.
        size: u64,
    },
    /// The table is full.
    #[error("too many DMA mappings (at most {0})")]
    TooMany(u64),
    /// The range is empty.
    #[error("DMA range at {0:#x} is empty")]
    Empty(u64),
    /// The range does not fit the address space or this process.
    #[error("DMA range {address:#x}+{size:#x} is too large")]
    TooLarge {
        /// Start of the refused range.
        address: u64,
        /// Its size.
        size: u64,
    },
    /// No mapping matches an unmap request exactly.
    #[error("no DMA mapping is exactly {address:#x}+{size:#x}")]
    NotMapped {
        /// Start asked for.
        address: u64,
        /// Size asked for.
        size: u64,
    },
    /// The fd could not be mapped.
    #[error("mmap of the DMA fd failed: {0}")]
    Mmap(std::io::Error),
    /// The range runs past the end of the fd's file.
    #[error("DMA fd holds {file_size:#x} bytes; {offset:#x}+{size:#x} runs past its end")]
    PastEnd {
        /// Offset asked for in the file.
        offset: u64,
        /// Size asked for.
        size: u64,
        /// Size of the file.
        file_size: u64,
    },
    /// The fd cannot back DMA memory (not a regular file, wrong access mode, ...).
    #[error("DMA fd refused: {0}")]
    Fd(String),
    /// The function holds as many unsealed files open as it may.
    #[error("too many unsealed DMA files held open (at most {0})")]
    TooManyFiles(usize),
}

impl MapError {
    /// The errno of the error reply.
    pub fn errno(&self) -> i32 {
        match self {
            Self::Overlap { .. } => libc::EEXIST,
            Self::TooMany(_) | Self::TooManyFiles(_) => libc::ENOSPC,
            Self::Empty(_)
            | Self::TooLarge { .. }
            | Self::NotMapped { .. }
            | Self::PastEnd { .. }
            | Self::Fd(_) => libc::EINVAL,
            Self::Mmap(_) => libc::EFAULT,
        }
    }
}

enum Backing {
    Fd(FdMemory),
    Remote,
}

struct Mapping {
    size: u64,
    readable: bool,
    writable: bool,
    backing: Backing,
}

/// The DMA table of one function, shared by its current connection and its backend.
#[derive(Default)]
pub struct DmaTable {
    maps: RwLock<BTreeMap<u64, Mapping>>,
    remote: RwLock<Option<Arc<dyn RemoteMemory>>>,
    /// Unsealed files held open by mappings.
    files: Mutex<HeldFiles>,
}

impl DmaTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets (or clears) the path to client memory mapped without an fd.
    pub fn set_remote(&self, remote: Option<Arc<dyn RemoteMemory>>) {
        *self.remote.write() = remote;
    }

    /// Adds `address..address+size`, backed by `fd` at `offset` when given.
    pub fn map(
        &self,
        address: u64,
        size: u64,
        offset: u64,
        fd: Option<OwnedFd>,
        (readable, writable): (bool, bool),
        max_maps: u64,
    ) -> Result<(), MapError> {
        if size == 0 {
            // It would take the key of a mapping at the same address and replace it.
            return Err(MapError::Empty(address));
        }
        let end = address
            .checked_add(size)
            .ok_or(MapError::TooLarge { address, size })?;
        let backing = match fd {
            None => Backing::Remote,
            Some(fd) => Backing::Fd(fd::open(
                fd,
                offset,
                size,
                (readable, writable),
                &mut self.files.lock(),
            )?),
        };
        let mut maps = self.maps.write();
        if maps.len() as u64 >= max_maps {
            return Err(MapError::TooMany(max_maps));
        }
        let before = maps.range(..end).next_back();
        if before.is_some_and(|(start, m)| start + m.size > address) {
            return Err(MapError::Overlap { address, size });
        }
        maps.insert(
            address,
            Mapping {
                size,
                readable,
                writable,
                backing,
            },
        );
        Ok(())
    }

    /// Removes the mapping that is exactly `address..address+size`. Returns once no access
    /// uses it any more.
    pub fn unmap(&self, address: u64, size: u64) -> Result<(), MapError> {
        let mut maps = self.maps.write();
        match maps.get(&address) {
            Some(m) if m.size == size => {
                maps.remove(&address);
                Ok(())
            }
            _ => Err(MapError::NotMapped { address, size }),
        }
    }

    /// Removes every mapping.
    pub fn clear(&self) {
        self.maps.write().clear();
    }

    /// Number of mappings.
    pub fn len(&self) -> usize {
        self.maps.read().len()
    }

    /// Whether there are no mappings.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Unsealed files held open by the mappings (see [`fd`]).
    pub fn held_files(&self) -> usize {
        self.files.lock().len()
    }

    /// Runs `f` on each mapped piece of `iova..iova+len`, in order; fails on a gap.
    fn walk(
        &self,
        iova: u64,
        len: usize,
        write: bool,
        mut f: impl FnMut(&Mapping, u64, usize, usize) -> Result<(), DmaError>,
    ) -> Result<(), DmaError> {
        let maps = self.maps.read();
        let mut done = 0usize;
        while done < len {
            let at = iova
                .checked_add(done as u64)
                .ok_or(DmaError::Unmapped { iova, len })?;
            let Some((start, mapping)) = maps.range(..=at).next_back() else {
                return Err(DmaError::Unmapped {
                    iova: at,
                    len: len - done,
                });
            };
            let within = at - start;
            if within >= mapping.size {
                return Err(DmaError::Unmapped {
                    iova: at,
                    len: len - done,
                });
            }
            if (write && !mapping.writable) || (!write && !mapping.readable) {
                let direction = if write { "writable" } else { "readable" };
                return Err(DmaError::Permission {
                    iova: at,
                    direction,
                });
            }
            let n = usize::try_from(mapping.size - within)
                .unwrap_or(usize::MAX)
                .min(len - done);
            f(mapping, within, done, n)?;
            done += n;
        }
        Ok(())
    }

    fn remote(&self) -> Result<Arc<dyn RemoteMemory>, DmaError> {
        self.remote
            .read()
            .clone()
            .ok_or_else(|| DmaError::Transfer("no client is connected".into()))
    }
}

impl DmaTable {
    /// The host address of `iova..iova+len` when one mmapped mapping holds it all with the
    /// access asked for.
    fn direct(
        maps: &BTreeMap<u64, Mapping>,
        iova: u64,
        len: usize,
        write: bool,
    ) -> Option<*mut u8> {
        let (start, mapping) = maps.range(..=iova).next_back()?;
        let within = iova - start;
        let end = within.checked_add(len as u64)?;
        if end > mapping.size || (write && !mapping.writable) || (!write && !mapping.readable) {
            return None;
        }
        match &mapping.backing {
            Backing::Fd(memory) => memory.host_ptr(within),
            Backing::Remote => None,
        }
    }
}

impl DmaAccess for DmaTable {
    fn copy(&self, src: u64, dst: u64, len: usize) -> Result<(), DmaError> {
        {
            let maps = self.maps.read();
            if let (Some(from), Some(to)) = (
                Self::direct(&maps, src, len, false),
                Self::direct(&maps, dst, len, true),
            ) {
                // SAFETY: `direct` checked that each range lies inside one live mapping (kept
                // mapped by the read lock held here) of a file that cannot shrink, with the
                // access needed; `ptr::copy` allows the ranges to overlap (they may be the same
                // memory mapped twice).
                unsafe { std::ptr::copy(from, to, len) };
                return Ok(());
            }
        }
        // Spanning mappings or reaching the client by message: through a bounce buffer.
        let mut buffer = vec![0u8; len];
        self.read(src, &mut buffer)?;
        self.write(dst, &buffer)
    }

    fn read(&self, iova: u64, data: &mut [u8]) -> Result<(), DmaError> {
        self.walk(
            iova,
            data.len(),
            false,
            |mapping, within, done, n| match &mapping.backing {
                Backing::Fd(memory) => {
                    memory.read(within, &mut data[done..done + n], iova + done as u64)
                }
                Backing::Remote => self
                    .remote()?
                    .read(iova + done as u64, &mut data[done..done + n]),
            },
        )
    }

    fn write(&self, iova: u64, data: &[u8]) -> Result<(), DmaError> {
        self.walk(
            iova,
            data.len(),
            true,
            |mapping, within, done, n| match &mapping.backing {
                Backing::Fd(memory) => {
                    memory.write(within, &data[done..done + n], iova + done as u64)
                }
                Backing::Remote => self
                    .remote()?
                    .write(iova + done as u64, &data[done..done + n]),
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn memfd(len: usize) -> OwnedFd {
        let fd = rustix::fs::memfd_create("dma-test", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        let mut file = std::fs::File::from(fd);
        file.write_all(&vec![0u8; len]).unwrap();
        file.into()
    }

    /// A memfd sealed as QEMU's memfd backend seals guest RAM.
    fn sealed_memfd(len: u64) -> OwnedFd {
        use rustix::fs::{MemfdFlags, SealFlags};
        let fd =
            rustix::fs::memfd_create("dma-test", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)
                .unwrap();
        rustix::fs::ftruncate(&fd, len).unwrap();
        rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL)
            .unwrap();
        fd
    }

    fn is_direct(table: &DmaTable, iova: u64) -> bool {
        DmaTable::direct(&table.maps.read(), iova, 1, false).is_some()
    }

    #[test]
    fn sealed_memfds_are_mapped_and_other_files_are_read_through_the_fd() {
        let table = DmaTable::new();
        table
            .map(
                0x1000,
                0x1000,
                0,
                Some(sealed_memfd(0x1000)),
                (true, true),
                8,
            )
            .unwrap();
        table
            .map(0x2000, 0x1000, 0, Some(memfd(0x1000)), (true, true), 8)
            .unwrap();
        assert!(is_direct(&table, 0x1000));
        assert!(!is_direct(&table, 0x2000));
        assert_eq!(table.held_files(), 1, "only the unsealed file is held open");
        // Both kinds read and write alike, across the boundary.
        table.write(0x1ff0, &[7; 0x20]).unwrap();
        let mut back = [0u8; 0x20];
        table.read(0x1ff0, &mut back).unwrap();
        assert_eq!(back, [7; 0x20]);
    }

    #[test]
    fn memory_that_shrinks_away_is_a_dma_error_not_a_signal() {
        let table = DmaTable::new();
        let file = memfd(0x4000);
        let client = file.try_clone().unwrap();
        table
            .map(0x10000, 0x4000, 0, Some(file), (true, true), 8)
            .unwrap();
        table.write(0x12000, b"before").unwrap();
        rustix::fs::ftruncate(&client, 0x1000).unwrap();
        let mut data = [0u8; 8];
        assert!(matches!(
            table.read(0x12000, &mut data),
            Err(DmaError::Transfer(_))
        ));
        assert!(matches!(
            table.write(0x13000, b"after"),
            Err(DmaError::Transfer(_))
        ));
        assert!(matches!(
            table.copy(0x10000, 0x13000, 8),
            Err(DmaError::Transfer(_))
        ));
        let size = rustix::fs::fstat(&client).unwrap().st_size;
        assert_eq!(size, 0x1000, "a DMA write never grows the file back");
        // What is left still works.
        table.write(0x10000, b"still").unwrap();
        table.read(0x10000, &mut data[..5]).unwrap();
        assert_eq!(&data[..5], b"still");
    }

    #[test]
    fn ranges_past_the_file_and_unfit_fds_are_refused() {
        let table = DmaTable::new();
        let einval = |r: Result<(), MapError>| r.unwrap_err().errno() == libc::EINVAL;
        assert!(einval(table.map(
            0,
            0x2000,
            0,
            Some(memfd(0x1000)),
            (true, true),
            8
        )));
        assert!(einval(table.map(
            0,
            0x1000,
            0x800,
            Some(memfd(0x1000)),
            (true, true),
            8
        )));
        assert!(einval(table.map(
            0,
            0x2000,
            0,
            Some(sealed_memfd(0x1000)),
            (true, true),
            8
        )));
        let (pipe, _w) = std::io::pipe().unwrap();
        assert!(einval(table.map(
            0,
            0x1000,
            0,
            Some(pipe.into()),
            (true, true),
            8
        )));
        // A read-only fd serves a read-only mapping only.
        let file = memfd(0x1000);
        let path = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&file));
        let read_only = || OwnedFd::from(std::fs::File::open(&path).unwrap());
        assert!(einval(table.map(
            0,
            0x1000,
            0,
            Some(read_only()),
            (true, true),
            8
        )));
        table
            .map(0, 0x1000, 0, Some(read_only()), (true, false), 8)
            .unwrap();
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn unsealed_hugetlbfs_files_are_mapped_writable_only_when_sealed() {
        use rustix::fs::MemfdFlags;
        let huge = || {
            let flags = MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING | MemfdFlags::HUGETLB;
            let fd = rustix::fs::memfd_create("dma-test", flags).ok()?;
            rustix::fs::ftruncate(&fd, 2 << 20).ok()?;
            Some(fd)
        };
        let Some(unsealed) = huge() else {
            eprintln!("no hugetlbfs here: nothing to check");
            return;
        };
        let table = DmaTable::new();
        let refused = table.map(0, 2 << 20, 0, Some(unsealed), (true, true), 8);
        assert_eq!(refused.unwrap_err().errno(), libc::EINVAL);
        let read_only = huge().unwrap();
        table
            .map(0, 2 << 20, 0, Some(read_only), (true, false), 8)
            .unwrap();
        // Sealed, it would be mmapped: whether that works depends on the host's huge pages.
    }

    #[test]
    fn unsealed_files_share_one_fd_and_are_bounded() {
        let table = DmaTable::new();
        let file = memfd(0x10_0000);
        for i in 0..64u64 {
            let dup = file.try_clone().unwrap();
            table
                .map(
                    i * 0x1000,
                    0x1000,
                    i * 0x1000,
                    Some(dup),
                    (true, true),
                    1024,
                )
                .unwrap();
        }
        assert_eq!(table.held_files(), 1);
        for i in 1..fd::MAX_HELD_FILES as u64 {
            table
                .map(
                    0x100_0000 + i * 0x1000,
                    0x1000,
                    0,
                    Some(memfd(0x1000)),
                    (true, true),
                    1024,
                )
                .unwrap();
        }
        assert_eq!(table.held_files(), fd::MAX_HELD_FILES);
        let refused = table.map(
            0x200_0000,
            0x1000,
            0,
            Some(memfd(0x1000)),
            (true, true),
            1024,
        );
        assert_eq!(refused.unwrap_err().errno(), libc::ENOSPC);
        // Another range of a file already held is still fine.
        table
            .map(
                0x300_0000,
                0x1000,
                0,
                Some(file.try_clone().unwrap()),
                (true, true),
                1024,
            )
            .unwrap();
        table.clear();
        assert_eq!(table.held_files(), 0);
    }

    #[test]
    fn mapped_ranges_read_and_write_across_mappings() {
        let table = DmaTable::new();
        table
            .map(0x1000, 0x1000, 0, Some(memfd(0x1000)), (true, true), 8)
            .unwrap();
        table
            .map(0x2000, 0x1000, 0x1000, Some(memfd(0x2000)), (true, true), 8)
            .unwrap();
        let data: Vec<u8> = (0..=255).cycle().take(0x100).collect();
        table.write(0x1f80, &data).unwrap();
        let mut back = vec![0u8; 0x100];
        table.read(0x1f80, &mut back).unwrap();
        assert_eq!(back, data);
        assert!(matches!(
            table.read(0x2f80, &mut back),
            Err(DmaError::Unmapped { iova: 0x3000, .. })
        ));
    }

    /// Found by the `dma_table` fuzz target: a mapping of size 0 at the start of another
    /// replaced it.
    #[test]
    fn an_empty_mapping_is_refused_and_replaces_nothing() {
        let table = DmaTable::new();
        table.map(0, 0x1000, 0, None, (false, false), 8).unwrap();
        let empty = table.map(0, 0, 0, None, (true, true), 8).unwrap_err();
        assert_eq!(empty.errno(), libc::EINVAL);
        assert!(matches!(
            table.read(0, &mut [0u8; 4]),
            Err(DmaError::Permission { .. })
        ));
    }

    #[test]
    fn overlaps_limits_and_exact_unmap() {
        let table = DmaTable::new();
        table.map(0x1000, 0x2000, 0, None, (true, true), 2).unwrap();
        assert_eq!(
            table
                .map(0x2000, 0x1000, 0, None, (true, true), 2)
                .unwrap_err()
                .errno(),
            libc::EEXIST
        );
        assert_eq!(
            table
                .map(0x0, 0x1001, 0, None, (true, true), 2)
                .unwrap_err()
                .errno(),
            libc::EEXIST
        );
        table
            .map(0x3000, 0x1000, 0, None, (true, false), 2)
            .unwrap();
        assert_eq!(
            table
                .map(0x8000, 0x1000, 0, None, (true, true), 2)
                .unwrap_err()
                .errno(),
            libc::ENOSPC
        );
        assert!(matches!(
            table.write(0x3000, &[1]),
            Err(DmaError::Permission { .. })
        ));
        assert_eq!(
            table.unmap(0x1000, 0x1000).unwrap_err().errno(),
            libc::EINVAL
        );
        table.unmap(0x1000, 0x2000).unwrap();
        table.clear();
        assert!(table.is_empty());
    }

    #[test]
    fn copy_within_and_across_mappings() {
        let table = DmaTable::new();
        table
            .map(0x1000, 0x2000, 0, Some(memfd(0x2000)), (true, true), 8)
            .unwrap();
        table
            .map(0x3000, 0x1000, 0, Some(memfd(0x1000)), (true, false), 8)
            .unwrap();
        table.write(0x1000, b"copy me").unwrap();
        table.copy(0x1000, 0x2800, 7).unwrap();
        let mut back = [0u8; 7];
        table.read(0x2800, &mut back).unwrap();
        assert_eq!(&back, b"copy me");
        // Overlapping, forwards: memmove semantics.
        table.copy(0x1000, 0x1002, 7).unwrap();
        table.read(0x1002, &mut back).unwrap();
        assert_eq!(&back, b"copy me");
        // Read-only destination and unmapped source are refused.
        assert!(matches!(
            table.copy(0x1000, 0x3000, 4),
            Err(DmaError::Permission { .. })
        ));
        assert!(matches!(
            table.copy(0x8000, 0x1000, 4),
            Err(DmaError::Unmapped { .. })
        ));
        // A source spanning two mappings goes through the bounce path.
        table.write(0x2ffc, b"span").unwrap();
        table.copy(0x2ffc, 0x1100, 8).unwrap();
        let mut spanned = [0u8; 8];
        table.read(0x1100, &mut spanned).unwrap();
        assert_eq!(&spanned[..4], b"span");
    }

    #[test]
    fn remote_ranges_need_a_client() {
        let table = DmaTable::new();
        table.map(0, 0x1000, 0, None, (true, true), 8).unwrap();
        assert!(matches!(
            table.read(0, &mut [0u8; 4]),
            Err(DmaError::Transfer(_))
        ));
    }
}
