//! The migration data buffer of `mig_data_shared` (a project extension, docs/migration.md):
//! one memfd a client registers once per connection, that both sides map shared and
//! read-write, and that MIG_DATA_READ replies and MIG_DATA_WRITE requests then name by
//! offset and size instead of carrying the bytes.
//!
//! The client makes it ([`SharedBuffer::create`]) and seals it against shrinking, growing and
//! further sealing, but not against writing: both sides write it. The server trusts nothing
//! about the fd ([`SharedBuffer::check`]): it must be a memfd carrying those seals, of a
//! size within bounds; only then is it mapped.
//!
//! Why the seals make the mapping safe: if the peer could shrink the file, touching the
//! mapping past the new end would raise SIGBUS and kill the server. The peer can still write
//! the bytes at any time, so the bytes are only ever copied in or out
//! ([`SharedBuffer::copy_out`], [`SharedBuffer::copy_in`]) and checked in the copy, never in
//! place.
//!
//! A server may also make the buffer itself, for a source's reads
//! ([`SharedBuffer::create_exclusive`]): it maps it read-write first and then seals it with
//! F_SEAL_FUTURE_WRITE too, so that every other mapping of it, the client's and any other
//! server's it is registered with, is read-only ([`SharedBuffer::check`] maps such a buffer
//! read-only). Its maker is then the only writer, and saves migration data straight into it
//! ([`SharedBuffer::exclusive_mut`]): one copy fewer per chunk. Another connection of the
//! same process given that buffer (the destination of a migration this process serves both
//! ends of) shares the maker's mapping, and takes the bytes in place
//! ([`SharedBuffer::local`]); the two reach the bytes through range locks (`made_here.rs`).

mod made_here;

use std::ops::Range;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use memmap2::{MmapOptions, MmapRaw};
use rustix::fs::{FileType, MemfdFlags, SealFlags};

use made_here::{FileId, MadeHere};
pub use made_here::{ReadGuard, WriteGuard};

/// The seals a shared buffer must carry before it is mapped.
pub const SHARED_SEALS: SealFlags = SealFlags::SHRINK
    .union(SealFlags::GROW)
    .union(SealFlags::SEAL);

/// The seals a buffer carries when only its maker writes it
/// ([`SharedBuffer::create_exclusive`]).
pub const EXCLUSIVE_SEALS: SealFlags = SHARED_SEALS.union(SealFlags::FUTURE_WRITE);

/// Largest shared buffer taken, in transfers of the negotiated `max_data_xfer_size`: room
/// for a migration pipeline's chunks in flight.
pub const MAX_TRANSFERS_PER_BUFFER: u64 = 4;

/// Smallest shared buffer taken: one page.
pub const MIN_SHARED_BUFFER: u64 = 4096;

/// Why a shared buffer was not made, or was refused, or an offset in it was.
#[derive(Debug, thiserror::Error)]
pub enum SharedBufferError {
    /// Creating, sizing, sealing or mapping failed.
    #[error("{what}: {source}")]
    Io {
        /// The step that failed.
        what: &'static str,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The fd is not a regular file (a socket, a pipe, a device...).
    #[error("the fd is not a memfd (file type {0:?})")]
    NotAFile(FileType),
    /// The fd is a file that cannot be sealed (not a memfd).
    #[error("the fd is not a memfd (no seals: {0})")]
    NotSealable(std::io::Error),
    /// The memfd lacks some of [`SHARED_SEALS`].
    #[error("the memfd is not sealed against resizing (seals {0:?})")]
    Unsealed(SealFlags),
    /// The buffer's size is outside [[`MIN_SHARED_BUFFER`], `max`].
    #[error("a buffer of {size} bytes is outside {min}..={max}")]
    Size {
        /// The buffer's size.
        size: u64,
        /// The smallest taken.
        min: u64,
        /// The largest taken.
        max: u64,
    },
    /// The buffer is sealed against writes from this process (another process made it,
    /// [`SharedBuffer::create_exclusive`]): it can only be read.
    #[error("the buffer is another process's, sealed against writes here")]
    ReadOnly,
    /// An offset and size that do not lie within the buffer.
    #[error("{size} bytes at offset {offset} do not lie within a buffer of {len} bytes")]
    OutOfRange {
        /// The offset named.
        offset: u64,
        /// The size named.
        size: u64,
        /// The buffer's size.
        len: usize,
    },
}

impl SharedBufferError {
    /// The errno of the error reply refusing it.
    pub fn errno(&self) -> i32 {
        match self {
            Self::Io { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
            Self::Size { .. } => libc::E2BIG,
            Self::OutOfRange { .. } => libc::ERANGE,
            Self::ReadOnly => libc::EPERM,
            _ => libc::EINVAL,
        }
    }
}

fn io(what: &'static str) -> impl FnOnce(rustix::io::Errno) -> SharedBufferError {
    move |e| SharedBufferError::Io {
        what,
        source: e.into(),
    }
}

/// A memfd mapped shared, sealed with [`SHARED_SEALS`] (read-write), or with
/// [`EXCLUSIVE_SEALS`] (read-write for the process that made it, read-only for others).
pub struct SharedBuffer {
    fd: OwnedFd,
    mapping: Mapping,
}

/// How this process maps a buffer, which says who may write it.
enum Mapping {
    /// Every process that maps it, this one included (a client's buffer).
    Shared(MmapRaw),
    /// Its maker alone, another process: read-only here.
    ReadOnly(MmapRaw),
    /// This process alone ([`SharedBuffer::create_exclusive`]), through the one mapping
    /// every handle here shares; `maker` for the handle that made it, which alone writes.
    MadeHere {
        /// The buffer.
        made: Arc<MadeHere>,
        /// Whether this handle is its maker's.
        maker: bool,
    },
}

impl std::fmt::Debug for SharedBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mapping = match &self.mapping {
            Mapping::Shared(_) => "shared",
            Mapping::ReadOnly(_) => "read-only",
            Mapping::MadeHere { maker: true, .. } => "made here",
            Mapping::MadeHere { maker: false, .. } => "made here, read-only",
        };
        f.debug_struct("SharedBuffer")
            .field("len", &self.len())
            .field("mapping", &mapping)
            .finish_non_exhaustive()
    }
}

impl SharedBuffer {
    /// A fresh buffer of `len` bytes (a client's, to register), its pages faulted in once.
    pub fn create(len: u64) -> Result<Self, SharedBufferError> {
        let fd = rustix::fs::memfd_create(
            "vfio-user-mig-buffer",
            MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
        )
        .map_err(io("memfd_create"))?;
        rustix::fs::ftruncate(&fd, len).map_err(io("sizing the memfd"))?;
        rustix::fs::fcntl_add_seals(&fd, SHARED_SEALS).map_err(io("sealing the memfd"))?;
        Self::check(fd, len)
    }

    /// A fresh buffer of `len` bytes that only this process writes (a server's, for a
    /// source's reads): mapped read-write and faulted in, then sealed with
    /// [`EXCLUSIVE_SEALS`], so that no writable mapping of it can be made any more and
    /// `write(2)` and hole punching on its fd fail. Whoever is given its fd can only read it.
    pub fn create_exclusive(len: u64) -> Result<Self, SharedBufferError> {
        let fd = rustix::fs::memfd_create(
            "vfio-user-mig-buffer",
            MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
        )
        .map_err(io("memfd_create"))?;
        rustix::fs::ftruncate(&fd, len).map_err(io("sizing the memfd"))?;
        let size = usize::try_from(len).map_err(|_| SharedBufferError::Size {
            size: len,
            min: MIN_SHARED_BUFFER,
            max: usize::MAX as u64,
        })?;
        let map = map(&fd, size, false)?;
        rustix::fs::fcntl_add_seals(&fd, EXCLUSIVE_SEALS).map_err(io("sealing the memfd"))?;
        let id = file_id(&fd)?;
        Ok(Self {
            fd,
            mapping: Mapping::MadeHere {
                made: MadeHere::register(map, id),
                maker: true,
            },
        })
    }

    /// Takes `fd` as a peer's buffer of at most `max` bytes: refused unless it is a memfd
    /// sealed with [`SHARED_SEALS`] of [`MIN_SHARED_BUFFER`] to `max` bytes. A refused fd is
    /// closed. A buffer sealed against writes too (F_SEAL_FUTURE_WRITE or F_SEAL_WRITE:
    /// another process's [`SharedBuffer::create_exclusive`]) is mapped read-only; one this
    /// process made shares the maker's mapping, to be read only.
    pub fn check(fd: OwnedFd, max: u64) -> Result<Self, SharedBufferError> {
        let stat = rustix::fs::fstat(&fd).map_err(io("fstat of the memfd"))?;
        let kind = FileType::from_raw_mode(stat.st_mode);
        if kind != FileType::RegularFile {
            return Err(SharedBufferError::NotAFile(kind));
        }
        // Only memfds (and other shmem files) answer F_GET_SEALS; a shmem file made without
        // MFD_ALLOW_SEALING answers SEAL alone and is refused below.
        let seals = rustix::fs::fcntl_get_seals(&fd)
            .map_err(|e| SharedBufferError::NotSealable(e.into()))?;
        if !seals.contains(SHARED_SEALS) {
            return Err(SharedBufferError::Unsealed(seals));
        }
        // Read once sealed: the size can no longer change.
        let size = rustix::fs::fstat(&fd)
            .map(|s| u64::try_from(s.st_size).unwrap_or(0))
            .map_err(io("fstat of the memfd"))?;
        let refused = SharedBufferError::Size {
            size,
            min: MIN_SHARED_BUFFER,
            max,
        };
        if !(MIN_SHARED_BUFFER..=max).contains(&size) {
            return Err(refused);
        }
        let len = usize::try_from(size).map_err(|_| refused)?;
        if seals.contains(SealFlags::FUTURE_WRITE)
            && let Some(made) = MadeHere::find(file_id(&fd)?).filter(|m| m.len() == len)
        {
            let mapping = Mapping::MadeHere { made, maker: false };
            return Ok(Self { fd, mapping });
        }
        let mapping = if seals.intersects(SealFlags::FUTURE_WRITE | SealFlags::WRITE) {
            Mapping::ReadOnly(map(&fd, len, true)?)
        } else {
            Mapping::Shared(map(&fd, len, false)?)
        };
        Ok(Self { fd, mapping })
    }

    /// The bytes at `range` (from [`SharedBuffer::range`]) to write into, when this handle
    /// made the buffer and this process alone writes it ([`SharedBuffer::create_exclusive`]),
    /// once no one in this process reads or writes them; `None` for any other buffer, whose
    /// bytes are only ever copied in.
    pub fn exclusive_mut(&mut self, range: Range<usize>) -> Option<WriteGuard<'_>> {
        match &self.mapping {
            Mapping::MadeHere { made, maker: true } if within(&range, made.len()) => {
                Some(made.write(range))
            }
            _ => None,
        }
    }

    /// The bytes at `range` (from [`SharedBuffer::range`]) to read in place, when this process
    /// made the buffer and alone writes it, once no one in this process writes them; `None`
    /// for a buffer another process may write or made, whose bytes are copied out.
    pub fn local(&self, range: Range<usize>) -> Option<ReadGuard<'_>> {
        match &self.mapping {
            Mapping::MadeHere { made, .. } if within(&range, made.len()) => Some(made.read(range)),
            _ => None,
        }
    }

    /// Size in bytes.
    pub fn len(&self) -> usize {
        match &self.mapping {
            Mapping::Shared(map) | Mapping::ReadOnly(map) => map.len(),
            Mapping::MadeHere { made, .. } => made.len(),
        }
    }

    /// Always false: a buffer holds at least [`MIN_SHARED_BUFFER`] bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether someone else made the buffer and alone writes it: another process, or another
    /// handle of this one. It can only be read through this handle.
    pub fn is_read_only(&self) -> bool {
        matches!(
            self.mapping,
            Mapping::ReadOnly(_) | Mapping::MadeHere { maker: false, .. }
        )
    }

    /// The memfd, to register it with a server.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Where `size` bytes at `offset` are, if they lie within the buffer.
    pub fn range(&self, offset: u64, size: u64) -> Result<Range<usize>, SharedBufferError> {
        let len = self.len();
        match offset.checked_add(size) {
            // Both fit in `len`, a usize.
            Some(end) if end <= len as u64 => Ok(offset as usize..end as usize),
            _ => Err(SharedBufferError::OutOfRange { offset, size, len }),
        }
    }

    /// Copies `dst.len()` bytes at `offset` out of the buffer.
    pub fn copy_out(&self, offset: u64, dst: &mut [u8]) -> Result<(), SharedBufferError> {
        let range = self.range(offset, dst.len() as u64)?;
        let map = match &self.mapping {
            Mapping::Shared(map) | Mapping::ReadOnly(map) => map,
            Mapping::MadeHere { made, .. } => {
                dst.copy_from_slice(&made.read(range));
                return Ok(());
            }
        };
        // SAFETY: `range` lies within the mapping, which lives as long as `self` and cannot
        // lose pages (the memfd is sealed against shrinking); `dst` is our own memory, apart
        // from the mapping. The peer may write the same bytes meanwhile: the copy is then
        // torn, which is why nothing is checked before it is done.
        unsafe {
            std::ptr::copy_nonoverlapping(
                map.as_ptr().add(range.start),
                dst.as_mut_ptr(),
                dst.len(),
            );
        }
        Ok(())
    }

    /// Copies `src` into the buffer at `offset`.
    pub fn copy_in(&self, offset: u64, src: &[u8]) -> Result<(), SharedBufferError> {
        let range = self.range(offset, src.len() as u64)?;
        let map = match &self.mapping {
            Mapping::Shared(map) => map,
            Mapping::MadeHere { made, maker: true } => {
                made.write(range).copy_from_slice(src);
                return Ok(());
            }
            Mapping::ReadOnly(_) | Mapping::MadeHere { maker: false, .. } => {
                return Err(SharedBufferError::ReadOnly);
            }
        };
        // SAFETY: as in `copy_out`; the mapping is writable (shared, read-write: not a
        // read-only one, refused above).
        unsafe {
            std::ptr::copy_nonoverlapping(
                src.as_ptr(),
                map.as_mut_ptr().add(range.start),
                src.len(),
            );
        }
        Ok(())
    }
}

/// Whether `range` lies within `len` bytes.
fn within(range: &Range<usize>, len: usize) -> bool {
    range.start <= range.end && range.end <= len
}

/// The identity of the file `fd` is open on.
fn file_id(fd: &OwnedFd) -> Result<FileId, SharedBufferError> {
    let stat = rustix::fs::fstat(fd).map_err(io("fstat of the memfd"))?;
    Ok((stat.st_dev, stat.st_ino))
}

/// Maps `len` bytes of `fd` shared, read-write or read-only, faulted in.
fn map(fd: &OwnedFd, len: usize, read_only: bool) -> Result<MmapRaw, SharedBufferError> {
    let mut options = MmapOptions::new();
    options.len(len).populate();
    let mapped = if read_only {
        options.map_raw_read_only(fd)
    } else {
        options.map_raw(fd)
    };
    mapped.map_err(|source| SharedBufferError::Io {
        what: "mapping the memfd",
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_sides_see_each_others_bytes() {
        let ours = SharedBuffer::create(8192).unwrap();
        let dup = rustix::io::fcntl_dupfd_cloexec(ours.fd(), 0).unwrap();
        let theirs = SharedBuffer::check(dup, 1 << 20).unwrap();
        ours.copy_in(4096, b"state").unwrap();
        let mut got = [0u8; 5];
        theirs.copy_out(4096, &mut got).unwrap();
        assert_eq!(&got, b"state");
    }

    #[test]
    fn an_exclusive_buffer_is_written_by_its_maker_alone() {
        let mut ours = SharedBuffer::create_exclusive(8192).unwrap();
        ours.exclusive_mut(4096..4101)
            .unwrap()
            .copy_from_slice(b"state");
        let dup = || rustix::io::fcntl_dupfd_cloexec(ours.fd(), 0).unwrap();
        // Another handle of this process given the fd shares the mapping, to read only.
        let mut theirs = SharedBuffer::check(dup(), 1 << 20).unwrap();
        assert!(theirs.is_read_only());
        assert_eq!(&*theirs.local(4096..4101).unwrap(), b"state");
        let mut got = [0u8; 5];
        theirs.copy_out(4096, &mut got).unwrap();
        assert_eq!(&got, b"state");
        assert!(matches!(
            theirs.copy_in(0, b"x"),
            Err(SharedBufferError::ReadOnly)
        ));
        assert!(theirs.exclusive_mut(0..1).is_none());
        // Nothing the fd allows writes the bytes: no writable mapping, no write(2), no hole.
        let fd = dup();
        assert!(MmapOptions::new().len(8192).map_raw(&fd).is_err());
        assert!(rustix::io::pwrite(&fd, b"x", 4096).is_err());
        assert!(
            rustix::fs::fallocate(
                &fd,
                rustix::fs::FallocateFlags::PUNCH_HOLE | rustix::fs::FallocateFlags::KEEP_SIZE,
                0,
                8192
            )
            .is_err()
        );
        assert!(rustix::fs::ftruncate(&fd, 0).is_err());
        theirs.copy_out(4096, &mut got).unwrap();
        assert_eq!(&got, b"state");
        // A shared buffer has no exclusive bytes, nor local ones; ranges are checked.
        let mut shared = SharedBuffer::create(8192).unwrap();
        assert!(shared.exclusive_mut(0..1).is_none());
        assert!(shared.local(0..1).is_none());
        assert!(ours.exclusive_mut(8000..8193).is_none());
        assert!(theirs.local(8000..8193).is_none());
    }

    #[test]
    fn the_maker_does_not_write_what_another_handle_reads_in_place() {
        let mut ours = SharedBuffer::create_exclusive(8192).unwrap();
        let dup = rustix::io::fcntl_dupfd_cloexec(ours.fd(), 0).unwrap();
        let theirs = SharedBuffer::check(dup, 1 << 20).unwrap();
        let reading = theirs.local(0..4096).unwrap();
        // Elsewhere the maker writes at once.
        ours.exclusive_mut(4096..8192).unwrap().fill(2);
        let written = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|scope| {
            scope.spawn(|| {
                ours.exclusive_mut(4000..4100).unwrap().fill(1);
                written.store(true, std::sync::atomic::Ordering::SeqCst);
            });
            std::thread::sleep(std::time::Duration::from_millis(50));
            assert!(
                !written.load(std::sync::atomic::Ordering::SeqCst),
                "the maker wrote bytes being read in place"
            );
            assert!(reading.iter().all(|&b| b == 0));
            drop(reading);
        });
        assert!(written.load(std::sync::atomic::Ordering::SeqCst));
        let mut got = [0u8; 1];
        theirs.copy_out(4050, &mut got).unwrap();
        assert_eq!(got, [1]);
    }

    #[test]
    fn a_buffer_another_process_sealed_against_writes_is_mapped_read_only() {
        // Sealed as `create_exclusive` seals, but not made by it here: as another
        // process's buffer looks.
        let fd =
            rustix::fs::memfd_create("t", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING).unwrap();
        rustix::fs::ftruncate(&fd, 8192).unwrap();
        rustix::fs::fcntl_add_seals(&fd, EXCLUSIVE_SEALS).unwrap();
        let mut theirs = SharedBuffer::check(fd, 1 << 20).unwrap();
        assert!(theirs.is_read_only());
        assert!(theirs.local(0..1).is_none());
        assert!(theirs.exclusive_mut(0..1).is_none());
        assert!(matches!(
            theirs.copy_in(0, b"x"),
            Err(SharedBufferError::ReadOnly)
        ));
        let mut got = [1u8; 4];
        theirs.copy_out(0, &mut got).unwrap();
        assert_eq!(got, [0; 4]);
    }

    #[test]
    fn bad_fds_and_ranges_are_refused() {
        let check = |fd: OwnedFd| SharedBuffer::check(fd, 1 << 16).unwrap_err();
        let memfd = |len: u64, seals: SealFlags, flags: MemfdFlags| {
            let fd = rustix::fs::memfd_create("t", MemfdFlags::CLOEXEC | flags).unwrap();
            rustix::fs::ftruncate(&fd, len).unwrap();
            if !seals.is_empty() {
                rustix::fs::fcntl_add_seals(&fd, seals).unwrap();
            }
            fd
        };
        let sealing = MemfdFlags::ALLOW_SEALING;
        assert!(matches!(
            check(memfd(8192, SealFlags::empty(), sealing)),
            SharedBufferError::Unsealed(_)
        ));
        assert!(matches!(
            check(memfd(8192, SealFlags::GROW | SealFlags::SEAL, sealing)),
            SharedBufferError::Unsealed(_)
        ));
        assert!(matches!(
            check(memfd(8192, SealFlags::empty(), MemfdFlags::empty())),
            SharedBufferError::Unsealed(_)
        ));
        assert!(matches!(
            check(memfd(100, SHARED_SEALS, sealing)),
            SharedBufferError::Size { .. }
        ));
        assert!(matches!(
            check(memfd((1 << 16) + 4096, SHARED_SEALS, sealing)),
            SharedBufferError::Size { .. }
        ));
        let (socket, _other) = std::os::unix::net::UnixStream::pair().unwrap();
        assert!(matches!(
            check(OwnedFd::from(socket)),
            SharedBufferError::NotAFile(_)
        ));
        let file = std::fs::File::open(std::env::current_exe().unwrap()).unwrap();
        assert!(matches!(
            check(OwnedFd::from(file)),
            SharedBufferError::NotSealable(_)
        ));

        let buffer = SharedBuffer::create(8192).unwrap();
        assert_eq!(buffer.range(4096, 4096).unwrap(), 4096..8192);
        for (offset, size) in [(4097, 4096), (8192, 1), (u64::MAX, 2), (0, 8193)] {
            assert!(matches!(
                buffer.range(offset, size),
                Err(SharedBufferError::OutOfRange { .. })
            ));
        }
        assert!(buffer.copy_in(8190, b"abc").is_err());
    }
}
