//! Client memory that came with an fd, and the rule that keeps the server alive whatever the
//! client does to the file afterwards:
//!
//! - At DMA_MAP the range must lie inside a regular file (`fstat`), opened with the access the
//!   mapping asks for.
//! - A file sealed against shrinking (`F_SEAL_SHRINK`, what QEMU's memfd backend does by
//!   default) is mmapped and copied directly: it can never lose the pages the mapping covers.
//! - Any other file (an unsealed memfd, a tmpfs file, ...) is reached with `pread`/`pwrite`,
//!   so a file that shrinks later turns an access into a DMA error, never a SIGBUS. A write
//!   first checks that the file still holds the range (`pwrite` past the end would grow it).
//!   An unsealed hugetlbfs file cannot be written with `pwrite`; a writable mapping of one is
//!   refused.
//! - Unsealed files are held open while mapped: one fd per distinct file and access mode
//!   however many ranges map it, at most [`MAX_HELD_FILES`] per function.

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Weak};

use memmap2::{MmapOptions, MmapRaw};
use rustix::fs::{FileType, OFlags, SealFlags};

use super::MapError;
use crate::backend::DmaError;

/// Distinct unsealed files a function's DMA table holds open at most.
pub const MAX_HELD_FILES: usize = 64;

/// One fd-backed range: mmapped, or read and written through the file.
pub(super) enum FdMemory {
    /// A file that cannot shrink, mapped for the range's size.
    Mapped(MmapRaw),
    /// A file that may shrink: the range starts at `offset` in it.
    File {
        /// The file, shared by every range of it.
        file: Arc<OwnedFd>,
        /// Where the range starts in the file.
        offset: u64,
    },
}

/// Identifies an open file for sharing one fd between the ranges that map it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct FileKey {
    dev: u64,
    ino: u64,
    writable: bool,
}

/// The unsealed files a table holds open, by identity.
#[derive(Default)]
pub(super) struct HeldFiles(HashMap<FileKey, Weak<OwnedFd>>);

impl HeldFiles {
    /// The fd already held for `key`, else `fd` (refused past [`MAX_HELD_FILES`]).
    fn share(&mut self, key: FileKey, fd: OwnedFd) -> Result<Arc<OwnedFd>, MapError> {
        if let Some(held) = self.0.get(&key).and_then(Weak::upgrade) {
            return Ok(held);
        }
        self.0.retain(|_, f| f.strong_count() > 0);
        if self.0.len() >= MAX_HELD_FILES {
            return Err(MapError::TooManyFiles(MAX_HELD_FILES));
        }
        let fd = Arc::new(fd);
        self.0.insert(key, Arc::downgrade(&fd));
        Ok(fd)
    }

    /// Files held now.
    pub(super) fn len(&self) -> usize {
        self.0.values().filter(|f| f.strong_count() > 0).count()
    }
}

fn refuse(why: impl Into<String>) -> MapError {
    MapError::Fd(why.into())
}

/// Checks `fd` for a mapping of `size` bytes at `offset` and chooses how to reach it.
pub(super) fn open(
    fd: OwnedFd,
    offset: u64,
    size: u64,
    (readable, writable): (bool, bool),
    held: &mut HeldFiles,
) -> Result<FdMemory, MapError> {
    let stat = rustix::fs::fstat(&fd).map_err(|e| refuse(format!("fstat: {e}")))?;
    if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
        return Err(refuse("not a regular file"));
    }
    let file_size = u64::try_from(stat.st_size).unwrap_or(0);
    if offset.checked_add(size).is_none_or(|end| end > file_size) {
        return Err(MapError::PastEnd {
            offset,
            size,
            file_size,
        });
    }
    let mode = rustix::fs::fcntl_getfl(&fd).map_err(|e| refuse(format!("F_GETFL: {e}")))?;
    let access = mode & OFlags::RWMODE;
    if (writable && access == OFlags::RDONLY) || (readable && access == OFlags::WRONLY) {
        return Err(refuse("opened without the access the mapping asks for"));
    }
    // Not a memfd (EINVAL): no seals.
    let seals = rustix::fs::fcntl_get_seals(&fd).unwrap_or(SealFlags::empty());
    if seals.contains(SealFlags::SHRINK) {
        let len = usize::try_from(size).map_err(|_| MapError::TooLarge {
            address: offset,
            size,
        })?;
        let mut options = MmapOptions::new();
        options.offset(offset).len(len);
        let map = if writable {
            options.map_raw(&fd)
        } else {
            options.map_raw_read_only(&fd)
        };
        return Ok(FdMemory::Mapped(map.map_err(MapError::Mmap)?));
    }
    if writable && on_hugetlbfs(&fd) {
        return Err(refuse(
            "an unsealed hugetlbfs file cannot be written safely; seal it with F_SEAL_SHRINK",
        ));
    }
    tracing::debug!(
        "DMA fd not sealed against shrinking: {size:#x} bytes at {offset:#x} served through the fd"
    );
    let key = FileKey {
        dev: stat.st_dev,
        ino: stat.st_ino,
        writable,
    };
    Ok(FdMemory::File {
        file: held.share(key, fd)?,
        offset,
    })
}

fn on_hugetlbfs(fd: &OwnedFd) -> bool {
    // `f_type` is a signed word of the platform's width; the magic fits in 32 bits.
    rustix::fs::fstatfs(fd).is_ok_and(|s| s.f_type as u32 == libc::HUGETLBFS_MAGIC as u32)
}

fn vanished(iova: u64, len: usize, why: impl std::fmt::Display) -> DmaError {
    DmaError::Transfer(format!(
        "client memory at {iova:#x} (+{len:#x}) is gone: {why}"
    ))
}

impl FdMemory {
    /// The host address of byte `within` of a mapped range.
    pub(super) fn host_ptr(&self, within: u64) -> Option<*mut u8> {
        match self {
            Self::Mapped(map) if within < map.len() as u64 => {
                Some(map.as_mut_ptr().wrapping_add(within as usize))
            }
            _ => None,
        }
    }

    /// Reads `data.len()` bytes at `within` (`iova` names the access in errors).
    pub(super) fn read(&self, within: u64, data: &mut [u8], iova: u64) -> Result<(), DmaError> {
        match self {
            Self::Mapped(map) => {
                let at = checked_in(map, within, data.len(), iova)?;
                // SAFETY: `at + data.len() <= map.len()` (checked by `checked_in`) and the
                // mapping lives as long as `self`; the file is sealed against shrinking, so
                // every page of the mapping stays backed. The client may write the memory
                // concurrently, as a device's DMA races the CPU; bytes are copied without
                // being interpreted.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        map.as_ptr().add(at),
                        data.as_mut_ptr(),
                        data.len(),
                    );
                }
                Ok(())
            }
            Self::File { file, offset } => {
                let mut done = 0;
                while done < data.len() {
                    let at = offset + within + done as u64;
                    match rustix::io::pread(file.as_fd(), &mut data[done..], at) {
                        Ok(0) => return Err(vanished(iova, data.len(), "the file shrank")),
                        Ok(n) => done += n,
                        Err(rustix::io::Errno::INTR) => {}
                        Err(e) => return Err(vanished(iova, data.len(), e)),
                    }
                }
                Ok(())
            }
        }
    }

    /// Writes `data` at `within` (`iova` names the access in errors).
    pub(super) fn write(&self, within: u64, data: &[u8], iova: u64) -> Result<(), DmaError> {
        match self {
            Self::Mapped(map) => {
                let at = checked_in(map, within, data.len(), iova)?;
                // SAFETY: as in `read`: the destination lies inside the live mapping of a
                // file that cannot shrink; the mapping was made writable (the table checks
                // the direction before calling).
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        data.as_ptr(),
                        map.as_mut_ptr().add(at),
                        data.len(),
                    );
                }
                Ok(())
            }
            Self::File { file, offset } => {
                let start = offset + within;
                // pwrite past the end would grow the file: memory that has gone stays gone.
                let size = rustix::fs::fstat(file.as_fd())
                    .map(|s| u64::try_from(s.st_size).unwrap_or(0))
                    .map_err(|e| vanished(iova, data.len(), e))?;
                if start + data.len() as u64 > size {
                    return Err(vanished(iova, data.len(), "the file shrank"));
                }
                let mut done = 0;
                while done < data.len() {
                    match rustix::io::pwrite(file.as_fd(), &data[done..], start + done as u64) {
                        Ok(0) => return Err(vanished(iova, data.len(), "short write")),
                        Ok(n) => done += n,
                        Err(rustix::io::Errno::INTR) => {}
                        Err(e) => return Err(vanished(iova, data.len(), e)),
                    }
                }
                Ok(())
            }
        }
    }
}

/// `within` as an index of `map` with `len` bytes after it inside the mapping.
fn checked_in(map: &MmapRaw, within: u64, len: usize, iova: u64) -> Result<usize, DmaError> {
    usize::try_from(within)
        .ok()
        .filter(|at| at.checked_add(len).is_some_and(|end| end <= map.len()))
        .ok_or(DmaError::Unmapped { iova, len })
}
