//! Split virtqueues as a device processes them: descriptor table, available ring and used ring
//! in DMA memory, with chained and indirect descriptors.
//!
//! Everything read from guest memory is validated: a head or `next` index outside the table,
//! a chain longer than the table allows (a loop), a malformed indirect table, a readable
//! descriptor after a writable one, or an available index that moved by more than the queue
//! size is a [`VirtqueueError`]; the transport then sets NEEDS_RESET rather than going on.

use vfio_variant::backend::{DmaAccess, DmaError};

/// Descriptor flag: the chain continues at `next`.
pub const VIRTQ_DESC_F_NEXT: u16 = 1;
/// Descriptor flag: the buffer is device-writable.
pub const VIRTQ_DESC_F_WRITE: u16 = 2;
/// Descriptor flag: the buffer holds a table of indirect descriptors.
pub const VIRTQ_DESC_F_INDIRECT: u16 = 4;
/// Available ring flag: the driver does not want an interrupt.
pub const VIRTQ_AVAIL_F_NO_INTERRUPT: u16 = 1;
/// Size of one descriptor.
pub const DESC_SIZE: u64 = 16;
/// Largest queue size of a split virtqueue.
pub const MAX_QUEUE_SIZE: u16 = 32768;
/// Largest total length of one chain the models accept (bounds host allocations).
pub const MAX_CHAIN_BYTES: u64 = 16 << 20;

/// Why a queue is malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VirtqueueError {
    /// Guest memory could not be accessed.
    #[error("DMA: {0}")]
    Dma(#[from] DmaError),
    /// The available index moved by more than the queue size.
    #[error(
        "available index {avail} is {pending} entries ahead of {last}, more than the queue size"
    )]
    AvailOverrun {
        /// The driver's available index.
        avail: u16,
        /// The device's last seen index.
        last: u16,
        /// Entries pending.
        pending: u16,
    },
    /// A descriptor index is outside its table.
    #[error("descriptor index {index} outside a table of {size}")]
    IndexOutOfRange {
        /// The index.
        index: u16,
        /// The table size.
        size: u32,
    },
    /// The chain is longer than its table: a loop.
    #[error("descriptor chain loops (more than {0} descriptors)")]
    Loop(u32),
    /// An indirect descriptor is malformed.
    #[error("bad indirect descriptor: {0}")]
    BadIndirect(&'static str),
    /// A device-readable descriptor follows a device-writable one.
    #[error("device-readable descriptor after a device-writable one")]
    ReadableAfterWritable,
    /// The chain is longer than the model accepts.
    #[error("descriptor chain of more than {MAX_CHAIN_BYTES} bytes")]
    TooLong,
    /// A ring or table address plus an offset overflows.
    #[error("ring address {0:#x} overflows")]
    AddressOverflow(u64),
    /// The queue was configured with a size that is zero, not a power of two, or too large.
    #[error("queue size {0} is invalid")]
    BadSize(u16),
}

/// One guest buffer: address and length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Buffer {
    /// Guest address.
    pub addr: u64,
    /// Length in bytes.
    pub len: u32,
}

/// A descriptor chain popped from the available ring.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Chain {
    /// Head index, returned in the used ring.
    pub head: u16,
    /// Device-readable buffers, in order.
    pub readable: Vec<Buffer>,
    /// Device-writable buffers, in order.
    pub writable: Vec<Buffer>,
}

impl Chain {
    /// Total length of the readable buffers.
    pub fn readable_len(&self) -> u64 {
        self.readable.iter().map(|b| u64::from(b.len)).sum()
    }

    /// Total length of the writable buffers.
    pub fn writable_len(&self) -> u64 {
        self.writable.iter().map(|b| u64::from(b.len)).sum()
    }

    /// Reads all readable bytes (at most [`MAX_CHAIN_BYTES`], checked when popped).
    pub fn read_all(&self, mem: &dyn DmaAccess) -> Result<Vec<u8>, DmaError> {
        let mut out = vec![0u8; usize::try_from(self.readable_len()).unwrap_or(0)];
        let mut at = 0usize;
        for buffer in &self.readable {
            let len = buffer.len as usize;
            mem.read(buffer.addr, &mut out[at..at + len])?;
            at += len;
        }
        Ok(out)
    }

    /// Writes `data` into the writable buffers starting `offset` bytes into them; returns
    /// how many bytes fit.
    pub fn write_at(
        &self,
        mem: &dyn DmaAccess,
        mut offset: u64,
        mut data: &[u8],
    ) -> Result<usize, DmaError> {
        let mut written = 0;
        for buffer in &self.writable {
            if data.is_empty() {
                break;
            }
            let len = u64::from(buffer.len);
            if offset >= len {
                offset -= len;
                continue;
            }
            let n = usize::try_from((len - offset).min(data.len() as u64)).unwrap_or(0);
            let addr = buffer.addr.checked_add(offset).ok_or(DmaError::Unmapped {
                iova: buffer.addr,
                len: n,
            })?;
            mem.write(addr, &data[..n])?;
            data = &data[n..];
            written += n;
            offset = 0;
        }
        Ok(written)
    }
}

/// A split virtqueue's device side: its addresses and the device's ring positions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Virtqueue {
    size: u16,
    desc: u64,
    avail: u64,
    used: u64,
    last_avail: u16,
    used_idx: u16,
}

fn at(base: u64, offset: u64) -> Result<u64, VirtqueueError> {
    base.checked_add(offset)
        .ok_or(VirtqueueError::AddressOverflow(base))
}

fn read_u16(mem: &dyn DmaAccess, addr: u64) -> Result<u16, DmaError> {
    let mut b = [0u8; 2];
    mem.read(addr, &mut b)?;
    Ok(u16::from_le_bytes(b))
}

struct Descriptor {
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
}

fn read_desc(mem: &dyn DmaAccess, table: u64, index: u16) -> Result<Descriptor, VirtqueueError> {
    let mut b = [0u8; 16];
    mem.read(at(table, u64::from(index) * DESC_SIZE)?, &mut b)?;
    Ok(Descriptor {
        addr: u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]),
        len: u32::from_le_bytes([b[8], b[9], b[10], b[11]]),
        flags: u16::from_le_bytes([b[12], b[13]]),
        next: u16::from_le_bytes([b[14], b[15]]),
    })
}

impl Virtqueue {
    /// A queue of `size` entries at the given descriptor table, available (driver) ring and
    /// used (device) ring addresses.
    pub fn new(size: u16, desc: u64, avail: u64, used: u64) -> Result<Self, VirtqueueError> {
        if size == 0 || !size.is_power_of_two() || size > MAX_QUEUE_SIZE {
            return Err(VirtqueueError::BadSize(size));
        }
        Ok(Self {
            size,
            desc,
            avail,
            used,
            last_avail: 0,
            used_idx: 0,
        })
    }

    /// Queue size.
    pub fn size(&self) -> u16 {
        self.size
    }

    /// The device's ring positions: the next available entry it reads, and its used index.
    pub fn indices(&self) -> (u16, u16) {
        (self.last_avail, self.used_idx)
    }

    /// The queue continuing from saved ring positions (see [`Virtqueue::indices`]).
    pub fn with_indices(mut self, last_avail: u16, used_idx: u16) -> Self {
        self.last_avail = last_avail;
        self.used_idx = used_idx;
        self
    }

    /// Pops the next available chain, if any.
    pub fn pop(&mut self, mem: &dyn DmaAccess) -> Result<Option<Chain>, VirtqueueError> {
        let avail_idx = read_u16(mem, at(self.avail, 2)?)?;
        let pending = avail_idx.wrapping_sub(self.last_avail);
        if pending > self.size {
            return Err(VirtqueueError::AvailOverrun {
                avail: avail_idx,
                last: self.last_avail,
                pending,
            });
        }
        if pending == 0 {
            return Ok(None);
        }
        let slot = u64::from(self.last_avail % self.size);
        let head = read_u16(mem, at(self.avail, 4 + 2 * slot)?)?;
        let chain = self.walk(mem, head)?;
        self.last_avail = self.last_avail.wrapping_add(1);
        Ok(Some(chain))
    }

    fn walk(&self, mem: &dyn DmaAccess, head: u16) -> Result<Chain, VirtqueueError> {
        let mut chain = Chain {
            head,
            ..Chain::default()
        };
        let mut total = 0u64;
        let mut table = self.desc;
        let mut table_size = u32::from(self.size);
        let mut index = head;
        let mut count = 0u32;
        let mut indirect = false;
        loop {
            if u32::from(index) >= table_size {
                return Err(VirtqueueError::IndexOutOfRange {
                    index,
                    size: table_size,
                });
            }
            count += 1;
            if count > table_size {
                return Err(VirtqueueError::Loop(table_size));
            }
            let desc = read_desc(mem, table, index)?;
            if desc.flags & VIRTQ_DESC_F_INDIRECT != 0 {
                if indirect {
                    return Err(VirtqueueError::BadIndirect("nested indirect table"));
                }
                if desc.flags & VIRTQ_DESC_F_NEXT != 0 {
                    return Err(VirtqueueError::BadIndirect("indirect descriptor with NEXT"));
                }
                if desc.len == 0 || u64::from(desc.len) % DESC_SIZE != 0 {
                    return Err(VirtqueueError::BadIndirect("length not a multiple of 16"));
                }
                let entries = u64::from(desc.len) / DESC_SIZE;
                if entries > u64::from(MAX_QUEUE_SIZE) {
                    return Err(VirtqueueError::BadIndirect("table larger than a queue"));
                }
                indirect = true;
                table = desc.addr;
                table_size = entries as u32;
                index = 0;
                count = 0;
                continue;
            }
            total += u64::from(desc.len);
            if total > MAX_CHAIN_BYTES {
                return Err(VirtqueueError::TooLong);
            }
            let buffer = Buffer {
                addr: desc.addr,
                len: desc.len,
            };
            if desc.flags & VIRTQ_DESC_F_WRITE != 0 {
                chain.writable.push(buffer);
            } else if chain.writable.is_empty() {
                chain.readable.push(buffer);
            } else {
                return Err(VirtqueueError::ReadableAfterWritable);
            }
            if desc.flags & VIRTQ_DESC_F_NEXT == 0 {
                return Ok(chain);
            }
            index = desc.next;
        }
    }

    /// Returns a chain to the driver through the used ring with `len` bytes written.
    pub fn push_used(
        &mut self,
        mem: &dyn DmaAccess,
        head: u16,
        len: u32,
    ) -> Result<(), VirtqueueError> {
        let slot = u64::from(self.used_idx % self.size);
        let mut elem = [0u8; 8];
        elem[..4].copy_from_slice(&u32::from(head).to_le_bytes());
        elem[4..].copy_from_slice(&len.to_le_bytes());
        mem.write(at(self.used, 4 + 8 * slot)?, &elem)?;
        self.used_idx = self.used_idx.wrapping_add(1);
        mem.write(at(self.used, 2)?, &self.used_idx.to_le_bytes())?;
        Ok(())
    }

    /// Whether the driver wants an interrupt for used buffers (no NO_INTERRUPT flag).
    pub fn wants_interrupt(&self, mem: &dyn DmaAccess) -> Result<bool, VirtqueueError> {
        Ok(read_u16(mem, self.avail)? & VIRTQ_AVAIL_F_NO_INTERRUPT == 0)
    }
}
