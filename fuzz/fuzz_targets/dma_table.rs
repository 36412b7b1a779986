//! Arbitrary bytes as a client's moves on a function's DMA table and on the files behind it:
//! DMA_MAP of a sealed memfd, of unsealed memfds, or without an fd (at any offset and size,
//! in range of the file or not), DMA_UNMAP, device reads, writes and copies, and the client
//! truncating or growing its unsealed files at any moment. The server never takes a signal,
//! and a read that succeeds within one fd-backed mapping returns what the file holds there.
#![no_main]

use std::os::fd::OwnedFd;

use libfuzzer_sys::fuzz_target;
use vfio_variant::backend::DmaAccess;
use vfio_variant::server::dma::DmaTable;

const PAGE: u64 = 0x1000;
/// Pages of each file at the start.
const FILE_PAGES: u64 = 4;

/// File 0 is sealed against shrinking (mmapped by the table); files 1 and 2 are not.
fn files() -> Vec<OwnedFd> {
    use rustix::fs::{MemfdFlags, SealFlags};
    (0..3)
        .map(|i| {
            let fd = rustix::fs::memfd_create(
                "fuzz-guest",
                MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
            )
            .expect("memfd");
            rustix::fs::ftruncate(&fd, FILE_PAGES * PAGE).expect("size");
            let pattern: Vec<u8> = (0..FILE_PAGES * PAGE)
                .map(|b| (b as u8) ^ (i as u8))
                .collect();
            rustix::io::pwrite(&fd, &pattern, 0).expect("fill");
            if i == 0 {
                rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW)
                    .expect("seal");
            }
            fd
        })
        .collect()
}

/// A mapping the table accepted: where, and which file at which offset.
struct Mapped {
    iova: u64,
    size: u64,
    offset: u64,
    file: Option<usize>,
    readable: bool,
}

fuzz_target!(|data: &[u8]| {
    let files = files();
    let table = DmaTable::new();
    let mut mapped: Vec<Mapped> = Vec::new();
    for op in data.chunks_exact(6) {
        let iova = u64::from(op[1] % 16) * PAGE + u64::from(op[2] & 0x7) * 0x200;
        match op[0] % 6 {
            0 => {
                let size = u64::from(op[3] % 6) * PAGE + u64::from(op[2] >> 7) * 0x10;
                let offset = u64::from(op[4] % 6) * PAGE;
                let file = match op[5] % 4 {
                    3 => None,
                    i => Some(usize::from(i)),
                };
                let fd = file.map(|i| files[i].try_clone().expect("dup"));
                let access = (op[5] & 0x10 != 0, op[5] & 0x20 != 0);
                if table.map(iova, size, offset, fd, access, 8).is_ok() {
                    mapped.push(Mapped {
                        iova,
                        size,
                        offset,
                        file,
                        readable: access.0,
                    });
                }
            }
            1 => {
                let size = u64::from(op[3] % 6) * PAGE;
                if table.unmap(iova, size).is_ok() {
                    mapped.retain(|m| m.iova != iova);
                }
            }
            2 => {
                let mut buf = vec![0u8; usize::from(op[3].max(1)) * 32];
                if table.read(iova, &mut buf).is_ok()
                    && let Some(m) = mapped
                        .iter()
                        .find(|m| m.iova <= iova && iova + buf.len() as u64 <= m.iova + m.size)
                    && let Some(file) = m.file
                {
                    assert!(m.readable);
                    let mut expected = vec![0u8; buf.len()];
                    let at = m.offset + iova - m.iova;
                    let n = rustix::io::pread(&files[file], &mut expected, at).expect("pread");
                    assert_eq!(n, buf.len(), "a read past the end of the file succeeded");
                    assert_eq!(buf, expected, "a read returned other bytes than the file's");
                }
            }
            3 => {
                let _ = table.write(iova, &vec![op[4]; usize::from(op[3]) * 32]);
            }
            4 => {
                let dst = u64::from(op[4] % 16) * PAGE + u64::from(op[5]);
                let _ = table.copy(iova, dst, usize::from(op[3]) * 32);
            }
            _ => {
                // The client resizes one of its unsealed files.
                let file = 1 + usize::from(op[3] % 2);
                let _ = rustix::fs::ftruncate(&files[file], u64::from(op[4] % 8) * PAGE);
            }
        }
    }
    table.clear();
});
