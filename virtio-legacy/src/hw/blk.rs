//! virtio-blk backed by a file: VIRTIO_BLK_T_IN, OUT, FLUSH and GET_ID, one request queue.

use std::fs::File;
use std::os::unix::fs::FileExt;

use vfio_variant::backend::DmaAccess;

use super::transport::QUEUE_MAX_SIZE;
use super::virtqueue::{Chain, Virtqueue, VirtqueueError};
use super::{DEVICE_TYPE_BLK, VirtioDevice};

/// Request type: read.
pub const VIRTIO_BLK_T_IN: u32 = 0;
/// Request type: write.
pub const VIRTIO_BLK_T_OUT: u32 = 1;
/// Request type: flush.
pub const VIRTIO_BLK_T_FLUSH: u32 = 4;
/// Request type: device ID string (20 bytes).
pub const VIRTIO_BLK_T_GET_ID: u32 = 8;
/// Status: success.
pub const VIRTIO_BLK_S_OK: u8 = 0;
/// Status: I/O error.
pub const VIRTIO_BLK_S_IOERR: u8 = 1;
/// Status: unsupported request.
pub const VIRTIO_BLK_S_UNSUPP: u8 = 2;
/// Feature: the device has a flush command.
pub const VIRTIO_BLK_F_FLUSH: u64 = 1 << 9;
/// Feature: seg_max is valid.
pub const VIRTIO_BLK_F_SEG_MAX: u64 = 1 << 2;
/// Feature: blk_size is valid.
pub const VIRTIO_BLK_F_BLK_SIZE: u64 = 1 << 6;
/// Sector size of requests.
pub const SECTOR_SIZE: u64 = 512;
/// Length of the GET_ID string.
pub const ID_LEN: usize = 20;
/// Data segments a request may have (seg_max): as many as a full queue holds besides the
/// header and status descriptors, as QEMU's virtio-blk offers. Without it a driver sends one
/// segment per request (Linux: max_segments 1), so a large read becomes many requests.
pub const SEG_MAX: u32 = QUEUE_MAX_SIZE as u32 - 2;

/// A virtio-blk device over a file.
pub struct BlkDevice {
    file: File,
    capacity: u64,
    id: [u8; ID_LEN],
}

impl BlkDevice {
    /// A device over `file` (its size, rounded down to sectors, is the capacity) answering
    /// GET_ID with `id` (truncated to 20 bytes).
    pub fn new(file: File, id: &str) -> std::io::Result<Self> {
        let capacity = file.metadata()?.len() / SECTOR_SIZE;
        let mut serial = [0u8; ID_LEN];
        let n = id.len().min(ID_LEN);
        serial[..n].copy_from_slice(&id.as_bytes()[..n]);
        Ok(Self {
            file,
            capacity,
            id: serial,
        })
    }

    /// Serves one request; returns the status byte and the data bytes written.
    fn serve(&self, chain: &Chain, header: &[u8], mem: &dyn DmaAccess) -> (u8, u32) {
        let kind = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        let mut s = [0u8; 8];
        s.copy_from_slice(&header[8..16]);
        let sector = u64::from_le_bytes(s);
        // The last writable byte is the status.
        let data_in = chain.writable_len().saturating_sub(1);
        let in_range = |len: u64| {
            sector
                .checked_mul(SECTOR_SIZE)
                .and_then(|start| start.checked_add(len))
                .is_some_and(|end| end <= self.capacity * SECTOR_SIZE)
        };
        match kind {
            VIRTIO_BLK_T_IN => {
                if !in_range(data_in) {
                    return (VIRTIO_BLK_S_IOERR, 0);
                }
                let mut buffer = vec![0u8; data_in as usize];
                if self
                    .file
                    .read_exact_at(&mut buffer, sector * SECTOR_SIZE)
                    .is_err()
                {
                    return (VIRTIO_BLK_S_IOERR, 0);
                }
                match chain.write_at(mem, 0, &buffer) {
                    Ok(n) => (VIRTIO_BLK_S_OK, n as u32),
                    Err(_) => (VIRTIO_BLK_S_IOERR, 0),
                }
            }
            VIRTIO_BLK_T_OUT => {
                let Ok(all) = chain.read_all(mem) else {
                    return (VIRTIO_BLK_S_IOERR, 0);
                };
                let data = &all[16..];
                if !in_range(data.len() as u64) {
                    return (VIRTIO_BLK_S_IOERR, 0);
                }
                match self.file.write_all_at(data, sector * SECTOR_SIZE) {
                    Ok(()) => (VIRTIO_BLK_S_OK, 0),
                    Err(_) => (VIRTIO_BLK_S_IOERR, 0),
                }
            }
            VIRTIO_BLK_T_FLUSH => match self.file.sync_all() {
                Ok(()) => (VIRTIO_BLK_S_OK, 0),
                Err(_) => (VIRTIO_BLK_S_IOERR, 0),
            },
            VIRTIO_BLK_T_GET_ID => {
                let n = (data_in as usize).min(ID_LEN);
                match chain.write_at(mem, 0, &self.id[..n]) {
                    Ok(n) => (VIRTIO_BLK_S_OK, n as u32),
                    Err(_) => (VIRTIO_BLK_S_IOERR, 0),
                }
            }
            _ => (VIRTIO_BLK_S_UNSUPP, 0),
        }
    }
}

impl VirtioDevice for BlkDevice {
    fn device_type(&self) -> u16 {
        DEVICE_TYPE_BLK
    }

    fn features(&self) -> u64 {
        VIRTIO_BLK_F_FLUSH | VIRTIO_BLK_F_BLK_SIZE | VIRTIO_BLK_F_SEG_MAX
    }

    fn num_queues(&self) -> u16 {
        1
    }

    /// capacity (le64), size_max (zero), seg_max (le32), geometry (zero), blk_size (le32).
    fn config(&self) -> Vec<u8> {
        let mut config = vec![0u8; 24];
        config[..8].copy_from_slice(&self.capacity.to_le_bytes());
        config[12..16].copy_from_slice(&SEG_MAX.to_le_bytes());
        config[20..24].copy_from_slice(&(SECTOR_SIZE as u32).to_le_bytes());
        config
    }

    fn process(
        &mut self,
        _index: u16,
        queue: &mut Virtqueue,
        mem: &dyn DmaAccess,
        _features: u64,
    ) -> Result<bool, VirtqueueError> {
        let mut used = false;
        while let Some(chain) = queue.pop(mem)? {
            let mut header = [0u8; 16];
            let readable = chain.readable_len();
            let writable = chain.writable_len();
            let len = if readable < 16 || writable < 1 {
                // Not a request: nothing can be answered, return the buffers untouched.
                0
            } else {
                let mut head = 0usize;
                for buffer in &chain.readable {
                    let n = (buffer.len as usize).min(16 - head);
                    mem.read(buffer.addr, &mut header[head..head + n])?;
                    head += n;
                    if head == 16 {
                        break;
                    }
                }
                let (status, data) = self.serve(&chain, &header, mem);
                chain.write_at(mem, writable - 1, &[status])?;
                data + 1
            };
            queue.push_used(mem, chain.head, len)?;
            used = true;
        }
        Ok(used)
    }
}
