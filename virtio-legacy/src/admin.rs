//! The driver side of a PF's admin virtqueue: how the backend sends admin commands, through
//! the PF's registers (found from its virtio capabilities) and a split virtqueue in DMA
//! memory the backend owns. Commands are serialized: one in flight per PF.

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use vfio_variant::backend::{DmaAccess, DmaError};
use vfio_variant::pci::regs;
use vfio_variant::physical::{PhysicalError, PhysicalFunction};

use crate::hw::pf::admin::{COMMAND_HEADER, GROUP_SELF, GROUP_SRIOV, RESULT_HEADER, STATUS_OK};
use crate::hw::transport::common;
use crate::hw::{
    STATUS_ACKNOWLEDGE, STATUS_DRIVER, STATUS_DRIVER_OK, STATUS_FEATURES_OK, STATUS_NEEDS_RESET,
    VIRTIO_F_ADMIN_VQ, VIRTIO_F_VERSION_1,
};

/// Bytes of DMA memory the admin queue needs from its base IOVA.
pub const ADMIN_MEMORY: u64 = 0x3000;
/// Largest command data or result.
pub const MAX_PAYLOAD: usize = 0x800;
const QUEUE_SIZE: u16 = 4;
const DESC: u64 = 0x0;
const AVAIL: u64 = 0x100;
const USED: u64 = 0x200;
const COMMAND: u64 = 0x1000;
const RESULT: u64 = 0x2000;
/// How long a command may take.
const TIMEOUT: Duration = Duration::from_secs(5);

/// Why an admin command could not be sent or failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The PF's registers could not be accessed.
    #[error("PF: {0}")]
    Physical(#[from] PhysicalError),
    /// The admin queue memory could not be accessed.
    #[error("admin queue memory: {0}")]
    Dma(#[from] DmaError),
    /// The PF's config space has no virtio common or notify capability.
    #[error("the PF has no virtio {0} capability")]
    NoCapability(&'static str),
    /// The PF does not offer VIRTIO_F_ADMIN_VQ, or has no admin queue.
    #[error("the PF has no admin virtqueue")]
    NoAdminQueue,
    /// The PF refused the features (FEATURES_OK did not stick).
    #[error("the PF refused the features")]
    FeaturesRefused,
    /// The PF did not complete the command in time.
    #[error("admin command {0:#x} timed out")]
    Timeout(u16),
    /// The PF needs a reset (it found the admin queue malformed).
    #[error("the PF needs a reset")]
    NeedsReset,
    /// Command data or result too large.
    #[error("admin command payload of {0} bytes is too large")]
    TooLarge(usize),
    /// The PF answered with an error status.
    #[error("admin command {opcode:#x} failed: status {status}, qualifier {qualifier}")]
    Status {
        /// The opcode.
        opcode: u16,
        /// virtio admin status.
        status: u16,
        /// virtio admin status qualifier.
        qualifier: u16,
    },
}

/// Where a virtio structure is: BAR and offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Location {
    bar: u8,
    offset: u64,
}

struct Ring {
    avail_idx: u16,
    last_used: u16,
}

/// The admin virtqueue of one PF, from the driver's side.
pub struct AdminQueue {
    pf: Arc<dyn PhysicalFunction>,
    mem: Arc<dyn DmaAccess>,
    base: u64,
    common: Location,
    notify: Location,
    queue_index: u16,
    ring: Mutex<Ring>,
}

fn read_config(pf: &dyn PhysicalFunction, offset: u16, len: usize) -> Result<u32, AdminError> {
    let mut b = [0u8; 4];
    pf.config_read(offset, &mut b[..len])?;
    Ok(u32::from_le_bytes(b))
}

/// Finds the virtio common config and the notify address of the first admin queue's
/// notify_off 0 together with the multiplier.
fn find_caps(pf: &dyn PhysicalFunction) -> Result<(Location, Location, u32), AdminError> {
    let mut common = None;
    let mut notify = None;
    let mut at = read_config(pf, regs::CAPABILITIES_POINTER, 1)? as u16 & 0xfc;
    let mut seen = 0;
    while at >= regs::HEADER_END && seen < 48 {
        seen += 1;
        let id = read_config(pf, at, 1)?;
        let next = read_config(pf, at + 1, 1)? as u16 & 0xfc;
        if id == 0x09 {
            let kind = read_config(pf, at + 3, 1)?;
            let bar = read_config(pf, at + 4, 1)? as u8;
            let offset = u64::from(read_config(pf, at + 8, 4)?);
            let location = Location { bar, offset };
            match kind {
                1 if common.is_none() => common = Some(location),
                2 if notify.is_none() => {
                    notify = Some((location, read_config(pf, at + 16, 4)?));
                }
                _ => {}
            }
        }
        at = next;
    }
    let common = common.ok_or(AdminError::NoCapability("common config"))?;
    let (notify, multiplier) = notify.ok_or(AdminError::NoCapability("notify"))?;
    Ok((common, notify, multiplier))
}

impl AdminQueue {
    /// Resets the PF, negotiates VIRTIO_F_ADMIN_VQ and sets up its first admin queue in
    /// `mem` at `base` ([`ADMIN_MEMORY`] bytes the PF can reach by DMA).
    pub fn setup(
        pf: Arc<dyn PhysicalFunction>,
        mem: Arc<dyn DmaAccess>,
        base: u64,
    ) -> Result<Self, AdminError> {
        let (common, notify_base, multiplier) = find_caps(&*pf)?;
        let mut queue = Self {
            pf,
            mem,
            base,
            common,
            notify: notify_base,
            queue_index: 0,
            ring: Mutex::new(Ring {
                avail_idx: 0,
                last_used: 0,
            }),
        };
        queue.write_common(common::DEVICE_STATUS, &[0])?;
        queue.write_common(common::DEVICE_STATUS, &[STATUS_ACKNOWLEDGE])?;
        queue.write_common(common::DEVICE_STATUS, &[STATUS_ACKNOWLEDGE | STATUS_DRIVER])?;
        queue.write_common(common::DEVICE_FEATURE_SELECT, &1u32.to_le_bytes())?;
        let high = u64::from(queue.read_common32(common::DEVICE_FEATURE)?) << 32;
        if high & VIRTIO_F_ADMIN_VQ == 0 {
            return Err(AdminError::NoAdminQueue);
        }
        let features = VIRTIO_F_ADMIN_VQ | VIRTIO_F_VERSION_1;
        queue.write_common(common::DRIVER_FEATURE_SELECT, &1u32.to_le_bytes())?;
        queue.write_common(
            common::DRIVER_FEATURE,
            &((features >> 32) as u32).to_le_bytes(),
        )?;
        let ok = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK;
        queue.write_common(common::DEVICE_STATUS, &[ok])?;
        if queue.read_common_u8(common::DEVICE_STATUS)? & STATUS_FEATURES_OK == 0 {
            return Err(AdminError::FeaturesRefused);
        }
        let index = queue.read_common16(common::ADMIN_QUEUE_INDEX)?;
        if queue.read_common16(common::ADMIN_QUEUE_NUM)? == 0 {
            return Err(AdminError::NoAdminQueue);
        }
        // Zeroed rings.
        queue.mem.write(base, &[0u8; 0x300])?;
        queue.write_common(common::QUEUE_SELECT, &index.to_le_bytes())?;
        queue.write_common(common::QUEUE_SIZE, &QUEUE_SIZE.to_le_bytes())?;
        for (register, offset) in [
            (common::QUEUE_DESC, DESC),
            (common::QUEUE_DRIVER, AVAIL),
            (common::QUEUE_DEVICE, USED),
        ] {
            let address = base + offset;
            queue.write_common(register, &(address as u32).to_le_bytes())?;
            queue.write_common(register + 4, &((address >> 32) as u32).to_le_bytes())?;
        }
        let notify_off = queue.read_common16(common::QUEUE_NOTIFY_OFF)?;
        queue.write_common(common::QUEUE_ENABLE, &1u16.to_le_bytes())?;
        queue.write_common(common::DEVICE_STATUS, &[ok | STATUS_DRIVER_OK])?;
        queue.notify = Location {
            bar: notify_base.bar,
            offset: notify_base.offset + u64::from(notify_off) * u64::from(multiplier),
        };
        queue.queue_index = index;
        Ok(queue)
    }

    /// Sends a command of the SR-IOV group to `member` with `data`, leaving room for
    /// `result_len` result bytes; returns the result the PF wrote.
    pub fn command(
        &self,
        opcode: u16,
        member: u64,
        data: &[u8],
        result_len: usize,
    ) -> Result<Vec<u8>, AdminError> {
        self.send(GROUP_SRIOV, opcode, member, data, result_len)
    }

    /// Sends a command of the self group (the PF itself, member id 0), as the capability
    /// commands are.
    pub fn self_command(
        &self,
        opcode: u16,
        data: &[u8],
        result_len: usize,
    ) -> Result<Vec<u8>, AdminError> {
        self.send(GROUP_SELF, opcode, 0, data, result_len)
    }

    fn send(
        &self,
        group: u16,
        opcode: u16,
        member: u64,
        data: &[u8],
        result_len: usize,
    ) -> Result<Vec<u8>, AdminError> {
        if data.len() > MAX_PAYLOAD || result_len > MAX_PAYLOAD {
            return Err(AdminError::TooLarge(data.len().max(result_len)));
        }
        let mut ring = self.ring.lock();
        let mut command = Vec::with_capacity(COMMAND_HEADER + data.len());
        command.extend_from_slice(&opcode.to_le_bytes());
        command.extend_from_slice(&group.to_le_bytes());
        command.extend_from_slice(&[0; 12]);
        command.extend_from_slice(&member.to_le_bytes());
        command.extend_from_slice(data);
        self.mem.write(self.base + COMMAND, &command)?;
        self.mem
            .write(self.base + RESULT, &vec![0u8; RESULT_HEADER + result_len])?;
        self.write_desc(0, self.base + COMMAND, command.len() as u32, 1, 1)?;
        self.write_desc(
            1,
            self.base + RESULT,
            (RESULT_HEADER + result_len) as u32,
            2,
            0,
        )?;
        let slot = u64::from(ring.avail_idx % QUEUE_SIZE);
        self.mem
            .write(self.base + AVAIL + 4 + 2 * slot, &0u16.to_le_bytes())?;
        ring.avail_idx = ring.avail_idx.wrapping_add(1);
        self.mem
            .write(self.base + AVAIL + 2, &ring.avail_idx.to_le_bytes())?;
        self.pf.bar_write(
            self.notify.bar,
            self.notify.offset,
            &self.queue_index.to_le_bytes(),
        )?;
        let used_len = self.wait_used(&mut ring, opcode)?;
        let mut header = [0u8; RESULT_HEADER];
        self.mem.read(self.base + RESULT, &mut header)?;
        let status = u16::from_le_bytes([header[0], header[1]]);
        let qualifier = u16::from_le_bytes([header[2], header[3]]);
        if status != STATUS_OK {
            return Err(AdminError::Status {
                opcode,
                status,
                qualifier,
            });
        }
        let len = (used_len as usize)
            .saturating_sub(RESULT_HEADER)
            .min(result_len);
        let mut result = vec![0u8; len];
        self.mem
            .read(self.base + RESULT + RESULT_HEADER as u64, &mut result)?;
        Ok(result)
    }

    fn write_desc(
        &self,
        index: u64,
        addr: u64,
        len: u32,
        flags: u16,
        next: u16,
    ) -> Result<(), AdminError> {
        let mut d = [0u8; 16];
        d[..8].copy_from_slice(&addr.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        d[14..].copy_from_slice(&next.to_le_bytes());
        Ok(self.mem.write(self.base + DESC + 16 * index, &d)?)
    }

    /// Waits for the used element of the command in flight; returns its length.
    fn wait_used(&self, ring: &mut Ring, opcode: u16) -> Result<u32, AdminError> {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let mut idx = [0u8; 2];
            self.mem.read(self.base + USED + 2, &mut idx)?;
            if u16::from_le_bytes(idx) != ring.last_used {
                let slot = u64::from(ring.last_used % QUEUE_SIZE);
                ring.last_used = ring.last_used.wrapping_add(1);
                let mut len = [0u8; 4];
                self.mem.read(self.base + USED + 8 + 8 * slot, &mut len)?;
                return Ok(u32::from_le_bytes(len));
            }
            if self.read_common_u8(common::DEVICE_STATUS)? & STATUS_NEEDS_RESET != 0 {
                return Err(AdminError::NeedsReset);
            }
            if Instant::now() >= deadline {
                return Err(AdminError::Timeout(opcode));
            }
            std::thread::sleep(Duration::from_micros(50));
        }
    }

    fn write_common(&self, register: u64, data: &[u8]) -> Result<(), AdminError> {
        Ok(self
            .pf
            .bar_write(self.common.bar, self.common.offset + register, data)?)
    }

    fn read_common(&self, register: u64, data: &mut [u8]) -> Result<(), AdminError> {
        Ok(self
            .pf
            .bar_read(self.common.bar, self.common.offset + register, data)?)
    }

    fn read_common_u8(&self, register: u64) -> Result<u8, AdminError> {
        let mut b = [0u8; 1];
        self.read_common(register, &mut b)?;
        Ok(b[0])
    }

    fn read_common16(&self, register: u64) -> Result<u16, AdminError> {
        let mut b = [0u8; 2];
        self.read_common(register, &mut b)?;
        Ok(u16::from_le_bytes(b))
    }

    fn read_common32(&self, register: u64) -> Result<u32, AdminError> {
        let mut b = [0u8; 4];
        self.read_common(register, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }
}
