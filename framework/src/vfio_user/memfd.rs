//! Sealed memfds: how MIG_DATA_READ replies and MIG_DATA_WRITE requests carry their bytes
//! between two processes of one host when VERSION agreed on `mig_data_memfd` (a project
//! extension, docs/migration.md).
//!
//! The sender writes the bytes into a fresh memfd and seals it against writing, shrinking,
//! growing and further sealing ([`sealed_memfd`]) before the fd leaves. The receiver trusts nothing about the fd
//! ([`SealedData::check`]): it must be a memfd carrying exactly those four seals or more, of
//! exactly the size the message states, within the transfer bound; only then is it mapped,
//! read-only.
//!
//! Why the seals make the mapping safe: memory mapped from a file the peer still holds can
//! change or vanish under the reader. If the peer could shrink the file, touching the mapping
//! past the new end raises SIGBUS and kills the receiver; if it could write, the bytes would
//! change after they were checked. F_SEAL_SHRINK and F_SEAL_WRITE rule both out for everyone
//! (the sender included), and F_SEAL_SEAL keeps the set from changing.

use std::os::fd::{AsFd, OwnedFd};

use memmap2::{Mmap, MmapOptions};
use rustix::fs::{FileType, MemfdFlags, SealFlags};

/// The seals a memfd must carry before its bytes are used.
pub const REQUIRED_SEALS: SealFlags = SealFlags::WRITE
    .union(SealFlags::SHRINK)
    .union(SealFlags::GROW)
    .union(SealFlags::SEAL);

/// Why a memfd was not made, or was refused.
#[derive(Debug, thiserror::Error)]
pub enum MemfdError {
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
    /// The memfd lacks some of [`REQUIRED_SEALS`].
    #[error("the memfd is not sealed against writing and resizing (seals {0:?})")]
    Unsealed(SealFlags),
    /// The memfd's size is not the one the message states.
    #[error("the memfd holds {found} bytes, the message states {stated}")]
    WrongSize {
        /// Bytes the message states.
        stated: u64,
        /// Bytes in the memfd.
        found: u64,
    },
    /// The message states more bytes than the transfer bound.
    #[error("{stated} bytes exceed the transfer bound {max}")]
    TooLarge {
        /// Bytes the message states.
        stated: u64,
        /// The bound.
        max: u64,
    },
    /// A memfd with no bytes (an empty transfer carries no fd).
    #[error("an empty memfd")]
    Empty,
}

impl MemfdError {
    /// The errno of the error reply refusing it.
    pub fn errno(&self) -> i32 {
        match self {
            Self::Io { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
            Self::TooLarge { .. } => libc::E2BIG,
            _ => libc::EINVAL,
        }
    }
}

fn io(what: &'static str) -> impl FnOnce(rustix::io::Errno) -> MemfdError {
    move |e| MemfdError::Io {
        what,
        source: e.into(),
    }
}

/// A fresh memfd holding `bytes` (at least 1), sealed with [`REQUIRED_SEALS`]: the fd to send.
///
/// The bytes are written with write(2) rather than through a mapping: the kernel then fills
/// each new page whole without clearing it first and without a page fault per page, which on
/// the hosts measured here halves the cost of fresh memory (docs/performance.md).
pub fn sealed_memfd(bytes: &[u8]) -> Result<OwnedFd, MemfdError> {
    if bytes.is_empty() {
        return Err(MemfdError::Empty);
    }
    let fd = rustix::fs::memfd_create(
        "vfio-user-mig-data",
        MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
    )
    .map_err(io("memfd_create"))?;
    let mut rest = bytes;
    while !rest.is_empty() {
        match rustix::io::write(&fd, rest) {
            Ok(0) => {
                return Err(MemfdError::Io {
                    what: "writing the memfd",
                    source: std::io::ErrorKind::WriteZero.into(),
                });
            }
            Ok(n) => rest = &rest[n..],
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(io("writing the memfd")(e)),
        }
    }
    rustix::fs::fcntl_add_seals(&fd, REQUIRED_SEALS).map_err(io("sealing the memfd"))?;
    Ok(fd)
}

/// The bytes of a sealed memfd a peer sent, mapped read-only after [`SealedData::check`].
pub struct SealedData {
    fd: OwnedFd,
    map: Mmap,
}

impl std::fmt::Debug for SealedData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedData")
            .field("len", &self.map.len())
            .finish_non_exhaustive()
    }
}

impl SealedData {
    /// Takes `fd` as carrying `stated` bytes, at most `max`: refused unless it is a memfd
    /// sealed with [`REQUIRED_SEALS`] holding exactly `stated` bytes. A refused fd is closed.
    pub fn check(fd: OwnedFd, stated: u64, max: u64) -> Result<Self, MemfdError> {
        if stated > max {
            return Err(MemfdError::TooLarge { stated, max });
        }
        if stated == 0 {
            return Err(MemfdError::Empty);
        }
        let stat = rustix::fs::fstat(&fd).map_err(io("fstat of the memfd"))?;
        let kind = FileType::from_raw_mode(stat.st_mode);
        if kind != FileType::RegularFile {
            return Err(MemfdError::NotAFile(kind));
        }
        // Only memfds (and other shmem files) answer F_GET_SEALS; a shmem file made without
        // MFD_ALLOW_SEALING answers SEAL alone and is refused below.
        let seals =
            rustix::fs::fcntl_get_seals(&fd).map_err(|e| MemfdError::NotSealable(e.into()))?;
        if !seals.contains(REQUIRED_SEALS) {
            return Err(MemfdError::Unsealed(seals));
        }
        // Read once sealed: the size can no longer change.
        let found = rustix::fs::fstat(&fd)
            .map(|s| u64::try_from(s.st_size).unwrap_or(0))
            .map_err(io("fstat of the memfd"))?;
        if found != stated {
            return Err(MemfdError::WrongSize { stated, found });
        }
        let len = usize::try_from(stated).map_err(|_| MemfdError::TooLarge { stated, max })?;
        // SAFETY: the memfd is sealed against writing, shrinking and growing, and the seals
        // cannot be removed (F_SEAL_SEAL): its `len` bytes exist and stay as they are while
        // the mapping lives, whatever the sender does, so no access to the read-only mapping
        // can fault (SIGBUS) or see the bytes change under a `&[u8]`.
        let map = unsafe { MmapOptions::new().len(len).populate().map(&fd) }.map_err(|source| {
            MemfdError::Io {
                what: "mapping the memfd",
                source,
            }
        })?;
        Ok(Self { fd, map })
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        &self.map
    }

    /// The sealed memfd, e.g. to pass it on to another peer.
    pub fn fd(&self) -> impl AsFd + '_ {
        &self.fd
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealed(bytes: &[u8]) -> OwnedFd {
        sealed_memfd(bytes).unwrap()
    }

    #[test]
    fn a_sealed_memfd_round_trips() {
        let fd = sealed(b"state bytes");
        let data = SealedData::check(fd, 11, 1 << 20).unwrap();
        assert_eq!(data.as_slice(), b"state bytes");
        let seals = rustix::fs::fcntl_get_seals(data.fd()).unwrap();
        assert!(seals.contains(REQUIRED_SEALS));
    }

    #[test]
    fn bad_fds_are_refused() {
        let check = |fd: OwnedFd, stated| SealedData::check(fd, stated, 64).unwrap_err();
        assert!(matches!(
            check(sealed(b"abcd"), 5),
            MemfdError::WrongSize { .. }
        ));
        assert!(matches!(
            check(sealed(&[1; 65]), 65),
            MemfdError::TooLarge { .. }
        ));
        let unsealed =
            rustix::fs::memfd_create("t", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING).unwrap();
        rustix::fs::ftruncate(&unsealed, 4).unwrap();
        assert!(matches!(check(unsealed, 4), MemfdError::Unsealed(_)));
        let no_sealing = rustix::fs::memfd_create("t", MemfdFlags::CLOEXEC).unwrap();
        rustix::fs::ftruncate(&no_sealing, 4).unwrap();
        assert!(matches!(check(no_sealing, 4), MemfdError::Unsealed(_)));
        let (socket, _other) = std::os::unix::net::UnixStream::pair().unwrap();
        assert!(matches!(
            check(OwnedFd::from(socket), 4),
            MemfdError::NotAFile(_)
        ));
        // A regular file on disk (this test's executable) cannot be sealed.
        let file = std::fs::File::open(std::env::current_exe().unwrap()).unwrap();
        assert!(matches!(
            check(OwnedFd::from(file), 4),
            MemfdError::NotSealable(_)
        ));
        assert!(matches!(check(sealed(b"x"), 0), MemfdError::Empty));
        assert!(matches!(sealed_memfd(&[]), Err(MemfdError::Empty)));
    }
}
