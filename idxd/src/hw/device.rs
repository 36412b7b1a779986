//! The DSA physical function: BAR0 register file, command processing, portals.
//!
//! A portal write queues its descriptor on the WQ (at most the WQ's size; more are dropped
//! with a software error) and returns; the device's worker thread runs the WQs' descriptors
//! (`vfio_variant::backend::worker::Worker`), without a WQ's lock while it reaches memory,
//! which may be guest memory reached by messages a VMM answers only after the portal write's
//! reply. The drain, abort, disable and reset commands wait for the descriptors in flight;
//! abort and reset drop the queued ones first.

use std::ops::Deref;
use std::sync::Arc;

use parking_lot::Mutex;
use vfio_variant::backend::worker::Worker;
use vfio_variant::backend::{DmaAccess, Interrupt, InterruptSink};

use super::descriptor::{DESCRIPTOR_SIZE, Descriptor, op};
use super::engine::{Engine, Events};
use super::registers::*;
use super::wq::WorkQueue;

/// Size of the PF's BAR0 register file.
pub const BAR0_SIZE: u64 = 0x1000;
/// Interrupt handles the PF hands out (REQUEST_INT_HANDLE).
const INT_HANDLES: u32 = 64;
/// Largest transfer: 2 MiB (GENCAP max_xfer_shift 21).
const MAX_XFER_SHIFT: u32 = 21;
/// Largest batch: 32 descriptors (GENCAP max_batch_shift 5).
const MAX_BATCH_SHIFT: u32 = 5;

/// The shape of the emulated device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DsaGeometry {
    /// Work queues (1 to 64).
    pub num_wqs: u16,
    /// Total WQ entries shared by all WQs.
    pub total_wq_size: u16,
    /// Groups (1 to 4).
    pub num_groups: u8,
    /// Engines (1 to 64).
    pub num_engines: u8,
}

impl Default for DsaGeometry {
    fn default() -> Self {
        Self {
            num_wqs: 8,
            total_wq_size: 128,
            num_groups: 4,
            num_engines: 4,
        }
    }
}

/// Why a portal write did not queue a descriptor.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PortalError {
    /// No such WQ.
    #[error("no work queue {0}")]
    NoSuchWq(usize),
    /// The offset is outside the WQ's portals or not 64-byte aligned.
    #[error("portal offset {0:#x} is not a 64-byte aligned offset in the WQ's portals")]
    BadOffset(u64),
    /// The WQ is not enabled: the descriptor was dropped and SWERR set.
    #[error("work queue {0} is not enabled")]
    NotEnabled(usize),
}

/// Why a BAR0 access was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegisterError {
    /// Not a naturally aligned 4- or 8-byte access inside BAR0.
    #[error("bad register access: {len} bytes at {offset:#x}")]
    BadAccess {
        /// Offset of the access.
        offset: u64,
        /// Its length.
        len: usize,
    },
}

#[derive(Default)]
struct Groups {
    wqs: u64,
    engines: u64,
    flags: u64,
}

#[derive(Default)]
struct Registers {
    gencfg: u32,
    genctrl: u32,
    enabled: bool,
    intcause: u32,
    cmd: u32,
    cmdsts: u32,
    swerr: [u64; 4],
    groups: Vec<Groups>,
}

/// An emulated DSA physical function: its registers and WQs, and the worker running the
/// descriptors submitted to them.
pub struct DsaDevice {
    core: Arc<DsaCore>,
    worker: Worker,
}

impl Deref for DsaDevice {
    type Target = DsaCore;

    fn deref(&self) -> &DsaCore {
        &self.core
    }
}

/// The DSA's registers and WQs, shared with its worker.
pub struct DsaCore {
    geometry: DsaGeometry,
    engine: Engine,
    registers: Mutex<Registers>,
    wqs: Vec<Mutex<WorkQueue>>,
}

/// Checks a register access: 4 or 8 naturally aligned bytes inside a file of `size` bytes.
pub(crate) fn check_access(offset: u64, len: usize, size: u64) -> Result<(), RegisterError> {
    let bad = RegisterError::BadAccess { offset, len };
    match len {
        4 | 8
            if offset.is_multiple_of(len as u64)
                && offset.checked_add(len as u64).is_some_and(|e| e <= size) =>
        {
            Ok(())
        }
        _ => Err(bad),
    }
}

impl DsaDevice {
    /// A device at reset with `geometry` (clamped to what the register layout holds).
    pub fn new(geometry: DsaGeometry) -> Self {
        let core = Arc::new(DsaCore::new(geometry));
        let weak = Arc::downgrade(&core);
        let worker = Worker::new("dsa-engine", move |wqs| {
            if let Some(core) = weak.upgrade() {
                core.run(wqs);
            }
        });
        Self { core, worker }
    }

    /// Writes BAR0 (4 or 8 naturally aligned bytes; an 8-byte write is low then high dword).
    /// A drain, abort, disable or reset command returns once the descriptors in flight ran.
    pub fn bar0_write(&self, offset: u64, data: &[u8]) -> Result<(), RegisterError> {
        if self.core.bar0_write(offset, data)? {
            self.worker.quiesce();
        }
        Ok(())
    }

    /// Waits until the descriptors submitted so far have run.
    pub fn quiesce(&self) {
        self.worker.quiesce();
    }

    /// A 64-byte write to WQ `wq`'s portals at `offset` (MOVDIR64B or ENQCMD): queues the
    /// descriptor; the worker runs it against the WQ's address space and raises its
    /// completion interrupts.
    pub fn portal_write(
        &self,
        wq: usize,
        offset: u64,
        bytes: &[u8; DESCRIPTOR_SIZE],
    ) -> Result<(), PortalError> {
        let queue = self.wqs.get(wq).ok_or(PortalError::NoSuchWq(wq))?;
        if offset >= PORTALS_PER_WQ || !offset.is_multiple_of(DESCRIPTOR_SIZE as u64) {
            return Err(PortalError::BadOffset(offset));
        }
        let refused = {
            let mut queue = queue.lock();
            if !queue.enabled {
                Some(SWERR_WQ_NOT_ENABLED)
            } else if queue.pending.len() >= queue.size().max(1) as usize {
                Some(SWERR_WQ_FULL)
            } else {
                queue.pending.push_back(Descriptor::decode(bytes));
                None
            }
        };
        match refused {
            Some(error) => {
                self.software_error(wq, error);
                if error == SWERR_WQ_NOT_ENABLED {
                    return Err(PortalError::NotEnabled(wq));
                }
            }
            // At most 64 WQs (the geometry is clamped).
            None => self.worker.kick(1 << wq),
        }
        Ok(())
    }
}

impl DsaCore {
    fn new(geometry: DsaGeometry) -> Self {
        let geometry = DsaGeometry {
            num_wqs: geometry.num_wqs.clamp(1, 64),
            total_wq_size: geometry.total_wq_size.max(1),
            num_groups: geometry.num_groups.clamp(1, 4),
            num_engines: geometry.num_engines.clamp(1, 64),
        };
        let registers = Registers {
            groups: (0..geometry.num_groups)
                .map(|_| Groups::default())
                .collect(),
            ..Registers::default()
        };
        Self {
            geometry,
            engine: Engine {
                max_transfer: 1 << MAX_XFER_SHIFT,
                max_batch: 1 << MAX_BATCH_SHIFT,
            },
            registers: Mutex::new(registers),
            wqs: (0..geometry.num_wqs)
                .map(|_| Mutex::new(WorkQueue::default()))
                .collect(),
        }
    }

    /// The device's shape.
    pub fn geometry(&self) -> DsaGeometry {
        self.geometry
    }

    /// GENCAP as the device reports it.
    pub fn gencap(&self) -> u64 {
        GENCAP_OVERLAP_COPY
            | GENCAP_CMD_CAP
            | (u64::from(MAX_XFER_SHIFT) << GENCAP_MAX_XFER_SHIFT)
            | (u64::from(MAX_BATCH_SHIFT) << GENCAP_MAX_BATCH_SHIFT)
            | GENCAP_CONFIG_EN
    }

    /// OPCAP: one bit per supported opcode.
    pub fn opcap(&self) -> [u64; 4] {
        let mut bits = [0u64; 4];
        for code in op::SUPPORTED {
            bits[usize::from(code / 64)] |= 1 << (code % 64);
        }
        bits
    }

    /// CMDCAP: one bit per supported command.
    pub fn cmdcap(&self) -> u32 {
        (cmd::ENABLE_DEVICE..=cmd::RELEASE_INT_HANDLE).fold(0, |caps, c| caps | (1 << c))
    }

    /// IOMMU: binds the address space (PASID) WQ `wq`'s descriptors use.
    pub fn bind_address_space(&self, wq: usize, memory: Arc<dyn DmaAccess>) {
        if let Some(queue) = self.wqs.get(wq) {
            queue.lock().memory = memory;
        }
    }

    /// Interrupt routing: where completion interrupts of WQ `wq` go, as MSI-X of the
    /// descriptor's interrupt handle.
    pub fn bind_interrupts(&self, wq: usize, interrupts: Arc<dyn InterruptSink>) {
        if let Some(queue) = self.wqs.get(wq) {
            queue.lock().interrupts = Some(interrupts);
        }
    }

    /// Removes WQ `wq`'s address space and interrupt bindings.
    pub fn unbind(&self, wq: usize) {
        if let Some(queue) = self.wqs.get(wq) {
            queue.lock().unbind();
        }
    }

    /// Reads BAR0 (4 or 8 naturally aligned bytes).
    pub fn bar0_read(&self, offset: u64, data: &mut [u8]) -> Result<(), RegisterError> {
        check_access(offset, data.len(), BAR0_SIZE)?;
        for (i, part) in data.chunks_exact_mut(4).enumerate() {
            part.copy_from_slice(&self.read32(offset + 4 * i as u64).to_le_bytes());
        }
        Ok(())
    }

    /// Writes BAR0; returns whether a command must wait for the descriptors in flight.
    fn bar0_write(&self, offset: u64, data: &[u8]) -> Result<bool, RegisterError> {
        check_access(offset, data.len(), BAR0_SIZE)?;
        let mut drain = false;
        for (i, part) in data.chunks_exact(4).enumerate() {
            let value = u32::from_le_bytes([part[0], part[1], part[2], part[3]]);
            drain |= self.write32(offset + 4 * i as u64, value);
        }
        Ok(drain)
    }

    /// On the worker: runs the descriptors queued on the WQs in `wqs`, each without the WQ's
    /// lock while it reaches memory.
    fn run(&self, wqs: u64) {
        for (index, queue) in self.wqs.iter().enumerate() {
            if wqs & (1 << index) == 0 {
                continue;
            }
            loop {
                let (desc, memory, sink) = {
                    let mut queue = queue.lock();
                    let Some(desc) = queue.pending.pop_front() else {
                        break;
                    };
                    (desc, Arc::clone(&queue.memory), queue.interrupts.clone())
                };
                let mut events = Events::default();
                self.engine.submit(&*memory, &desc, &mut events);
                if let Some(sink) = sink {
                    for handle in &events.interrupts {
                        sink.raise(Interrupt::Msix(u32::from(*handle)));
                    }
                }
                if let Some(&error) = events.software_errors.first() {
                    self.software_error(index, error);
                }
            }
        }
    }

    fn read32(&self, offset: u64) -> u32 {
        let half = |v: u64| {
            if offset.is_multiple_of(8) {
                v as u32
            } else {
                (v >> 32) as u32
            }
        };
        let g = self.geometry;
        let r = self.registers.lock();
        match offset {
            VERSION => VERSION_VALUE,
            0x10..0x18 => half(self.gencap()),
            0x20..0x28 => half(
                u64::from(g.total_wq_size)
                    | (u64::from(g.num_wqs) << WQCAP_NUM_WQS_SHIFT)
                    | WQCAP_SHARED
                    | WQCAP_DEDICATED
                    | WQCAP_PRIORITY,
            ),
            0x30..0x38 => half(0x40 | (u64::from(g.num_groups) << GRPCAP_NUM_GROUPS_SHIFT)),
            0x38..0x40 => half(u64::from(g.num_engines)),
            0x40..0x60 => half(self.opcap()[((offset - OPCAP) / 8) as usize]),
            0x60 => (((WQCFG / TABLE_MULT) << 16) | (GRPCFG / TABLE_MULT)) as u32,
            0x64 => (MSIX_PERM / TABLE_MULT) as u32,
            GENCFG => r.gencfg,
            GENCTRL => r.genctrl,
            GENSTS => {
                if r.enabled {
                    GENSTS_ENABLED
                } else {
                    GENSTS_DISABLED
                }
            }
            INTCAUSE => r.intcause,
            CMD => r.cmd,
            CMDSTS => r.cmdsts,
            CMDCAP => self.cmdcap(),
            0xc0..0xe0 => half(r.swerr[((offset - SWERR) / 8) as usize]),
            o if (GRPCFG..GRPCFG + GRPCFG_SIZE * u64::from(g.num_groups)).contains(&o) => {
                let group = &r.groups[((o - GRPCFG) / GRPCFG_SIZE) as usize];
                match ((o - GRPCFG) % GRPCFG_SIZE) & !7 {
                    GRPCFG_WQS => half(group.wqs),
                    GRPCFG_ENGINES => half(group.engines),
                    GRPCFG_FLAGS => half(group.flags),
                    _ => 0,
                }
            }
            o if (WQCFG..WQCFG + WQCFG_SIZE * u64::from(g.num_wqs)).contains(&o) => {
                drop(r);
                let wq = ((o - WQCFG) / WQCFG_SIZE) as usize;
                self.wqs[wq]
                    .lock()
                    .config_dword(((o % WQCFG_SIZE) / 4) as usize)
            }
            _ => 0,
        }
    }

    /// Writes a register; returns whether a command must wait for the descriptors in flight.
    fn write32(&self, offset: u64, value: u32) -> bool {
        let g = self.geometry;
        let mut r = self.registers.lock();
        let set_half = |v: &mut u64| {
            *v = if offset.is_multiple_of(8) {
                (*v & !0xffff_ffff) | u64::from(value)
            } else {
                (*v & 0xffff_ffff) | (u64::from(value) << 32)
            }
        };
        match offset {
            GENCFG if !r.enabled => r.gencfg = value,
            GENCTRL => r.genctrl = value & 0x3,
            INTCAUSE => r.intcause &= !value,
            CMD => return self.command(&mut r, value),
            SWERR => r.swerr[0] &= !(u64::from(value) & (SWERR_VALID | SWERR_OVERFLOW)),
            o if !r.enabled
                && (GRPCFG..GRPCFG + GRPCFG_SIZE * u64::from(g.num_groups)).contains(&o) =>
            {
                let group = &mut r.groups[((o - GRPCFG) / GRPCFG_SIZE) as usize];
                match ((o - GRPCFG) % GRPCFG_SIZE) & !7 {
                    GRPCFG_WQS => set_half(&mut group.wqs),
                    GRPCFG_ENGINES => set_half(&mut group.engines),
                    GRPCFG_FLAGS => set_half(&mut group.flags),
                    _ => {}
                }
            }
            o if (WQCFG..WQCFG + WQCFG_SIZE * u64::from(g.num_wqs)).contains(&o) => {
                drop(r);
                let mut wq = self.wqs[((o - WQCFG) / WQCFG_SIZE) as usize].lock();
                let dword = ((o % WQCFG_SIZE) / 4) as usize;
                // Writable while the WQ is disabled; dwords 4-7 hold occupancy and state.
                if !wq.enabled && dword < 4 {
                    wq.config[dword] = value;
                }
            }
            _ => {}
        }
        false
    }

    /// The WQs a DISABLE/DRAIN/ABORT/RESET_WQ operand names (bitmap of 16, set in bits 16-19).
    fn wq_set(&self, operand: u32) -> Vec<usize> {
        let base = ((operand >> 16) & 0xf) as usize * 16;
        (0..16)
            .filter(|bit| operand & (1 << bit) != 0)
            .map(|bit| base + bit)
            .collect()
    }

    /// Runs a command; returns whether it must wait for the descriptors in flight (after
    /// the register lock is released: the worker records errors under it).
    fn command(&self, r: &mut Registers, value: u32) -> bool {
        r.cmd = value;
        let code = (value >> CMD_SHIFT) & 0x1f;
        let operand = value & 0xf_ffff;
        let (error, result) = self.run_command(r, code, operand);
        r.cmdsts = u32::from(error) | (result << CMDSTS_RES_SHIFT);
        if value & CMD_INT_REQ != 0 {
            r.intcause |= INTC_CMD;
        }
        matches!(
            code,
            cmd::DISABLE_DEVICE
                | cmd::RESET_DEVICE
                | cmd::DRAIN_ALL
                | cmd::ABORT_ALL
                | cmd::DRAIN_PASID
                | cmd::ABORT_PASID
                | cmd::DISABLE_WQ
                | cmd::DRAIN_WQ
                | cmd::ABORT_WQ
                | cmd::RESET_WQ
        )
    }

    fn run_command(&self, r: &mut Registers, code: u32, operand: u32) -> (u8, u32) {
        match code {
            cmd::ENABLE_DEVICE if r.enabled => (cmdsts::ERR_DEV_ENABLED, 0),
            cmd::ENABLE_DEVICE => {
                r.enabled = true;
                (cmdsts::SUCCESS, 0)
            }
            cmd::DISABLE_DEVICE | cmd::RESET_DEVICE
                if code == cmd::DISABLE_DEVICE && !r.enabled =>
            {
                (cmdsts::ERR_DEV_NOTEN, 0)
            }
            cmd::DISABLE_DEVICE | cmd::RESET_DEVICE => {
                for wq in &self.wqs {
                    let mut wq = wq.lock();
                    wq.enabled = false;
                    if code == cmd::RESET_DEVICE {
                        wq.config = [0; 8];
                        wq.pending.clear();
                    }
                }
                r.enabled = false;
                if code == cmd::RESET_DEVICE {
                    r.gencfg = 0;
                    r.genctrl = 0;
                    r.groups.iter_mut().for_each(|g| *g = Groups::default());
                }
                (cmdsts::SUCCESS, 0)
            }
            // The wait for the descriptors in flight follows (`command`'s caller); an abort
            // drops the queued ones first.
            cmd::DRAIN_ALL | cmd::DRAIN_PASID => (cmdsts::SUCCESS, 0),
            cmd::ABORT_ALL | cmd::ABORT_PASID => {
                for wq in &self.wqs {
                    wq.lock().pending.clear();
                }
                (cmdsts::SUCCESS, 0)
            }
            cmd::ENABLE_WQ => (self.enable_wq(r, operand as usize), 0),
            cmd::DISABLE_WQ | cmd::DRAIN_WQ | cmd::ABORT_WQ | cmd::RESET_WQ => {
                let set = self.wq_set(operand);
                if set.iter().any(|&i| i >= self.wqs.len()) {
                    return (cmdsts::INVAL_WQIDX, 0);
                }
                for i in set {
                    let mut wq = self.wqs[i].lock();
                    match code {
                        cmd::DISABLE_WQ if !wq.enabled => return (cmdsts::ERR_DEV_NOT_EN, 0),
                        cmd::DISABLE_WQ => wq.enabled = false,
                        cmd::RESET_WQ => {
                            wq.enabled = false;
                            wq.config = [0; 8];
                            wq.pending.clear();
                        }
                        cmd::ABORT_WQ => wq.pending.clear(),
                        _ => {}
                    }
                }
                (cmdsts::SUCCESS, 0)
            }
            cmd::REQUEST_INT_HANDLE if operand >= INT_HANDLES => (cmdsts::ERR_INVAL_INT_IDX, 0),
            cmd::REQUEST_INT_HANDLE => (cmdsts::SUCCESS, operand),
            cmd::RELEASE_INT_HANDLE => (cmdsts::SUCCESS, 0),
            _ => (cmdsts::INVAL_CMD, 0),
        }
    }

    fn enable_wq(&self, r: &Registers, index: usize) -> u8 {
        if !r.enabled {
            return cmdsts::ERR_DEV_NOTEN;
        }
        let Some(queue) = self.wqs.get(index) else {
            return cmdsts::INVAL_WQIDX;
        };
        let used: u32 = self
            .wqs
            .iter()
            .enumerate()
            .filter(|&(i, _)| i != index)
            .map(|(_, wq)| wq.lock())
            .filter(|wq| wq.enabled)
            .map(|wq| wq.size())
            .sum();
        let mut wq = queue.lock();
        if wq.enabled {
            return cmdsts::ERR_WQ_ENABLED;
        }
        if wq.size() == 0 || used + wq.size() > u32::from(self.geometry.total_wq_size) {
            return cmdsts::ERR_WQ_SIZE;
        }
        if wq.priority() == 0 {
            return cmdsts::ERR_WQ_PRIOR;
        }
        let grouped = r
            .groups
            .iter()
            .any(|g| g.wqs & (1 << index) != 0 && g.engines != 0);
        if !grouped {
            return cmdsts::ERR_GRP_CONFIG;
        }
        wq.enabled = true;
        cmdsts::SUCCESS
    }

    fn software_error(&self, wq: usize, error: u8) {
        let mut r = self.registers.lock();
        if r.swerr[0] & SWERR_VALID != 0 {
            r.swerr[0] |= SWERR_OVERFLOW;
        } else {
            r.swerr[0] = SWERR_VALID
                | SWERR_WQ_IDX_VALID
                | (u64::from(error) << SWERR_ERROR_SHIFT)
                | ((wq as u64 & 0xff) << SWERR_WQ_IDX_SHIFT);
        }
        r.intcause |= INTC_ERR;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hw::completion::{Completion, status};
    use crate::hw::descriptor::flag;
    use crate::hw::testing::{PagedMemory, Recorder};

    fn read64(d: &DsaDevice, offset: u64) -> u64 {
        let mut b = [0u8; 8];
        d.bar0_read(offset, &mut b).unwrap();
        u64::from_le_bytes(b)
    }

    fn read32(d: &DsaDevice, offset: u64) -> u32 {
        let mut b = [0u8; 4];
        d.bar0_read(offset, &mut b).unwrap();
        u32::from_le_bytes(b)
    }

    fn write32(d: &DsaDevice, offset: u64, value: u32) {
        d.bar0_write(offset, &value.to_le_bytes()).unwrap();
    }

    fn command(d: &DsaDevice, code: u32, operand: u32) -> u32 {
        write32(d, CMD, (code << CMD_SHIFT) | operand);
        let sts = read32(d, CMDSTS);
        assert_eq!(sts & CMDSTS_ACTIVE, 0);
        sts
    }

    fn configure_wq(d: &DsaDevice, wq: u64, size: u32, mode: u32, priority: u32) {
        write32(d, WQCFG + wq * WQCFG_SIZE, size);
        write32(
            d,
            WQCFG + wq * WQCFG_SIZE + 8,
            mode | (priority << WQCFG_PRIORITY_SHIFT),
        );
    }

    fn grouped_device() -> DsaDevice {
        let d = DsaDevice::new(DsaGeometry::default());
        write32(&d, GRPCFG + GRPCFG_WQS, 0xff);
        write32(&d, GRPCFG + GRPCFG_ENGINES, 0xf);
        d
    }

    #[test]
    fn capabilities_and_offsets() {
        let d = DsaDevice::new(DsaGeometry::default());
        assert_eq!(read32(&d, VERSION), VERSION_VALUE);
        let gencap = read64(&d, GENCAP);
        assert_ne!(gencap & GENCAP_CONFIG_EN, 0);
        assert_eq!((gencap >> GENCAP_MAX_XFER_SHIFT) & 0x1f, 21);
        let wqcap = read64(&d, WQCAP);
        assert_eq!((wqcap & 0xffff, (wqcap >> 16) & 0xff), (128, 8));
        assert_eq!((read64(&d, GRPCAP) >> 8) & 0xff, 4);
        assert_eq!(read64(&d, ENGCAP), 4);
        assert_eq!(read64(&d, OPCAP) & 0xf, 0xf, "NOP, BATCH, DRAIN, MEMMOVE");
        assert_eq!(read64(&d, OPCAP) >> 0x10 & 0x3, 0x3, "CRC_GEN, COPY_CRC");
        assert_eq!(read32(&d, OFFSETS), 0x0005_0004);
        assert_eq!(read32(&d, OFFSETS + 4), 3);
        assert_eq!(read32(&d, CMDCAP), 0x7ffe);
        assert!(d.bar0_read(2, &mut [0u8; 4]).is_err());
        assert!(d.bar0_read(0x10, &mut [0u8; 2]).is_err());
        assert!(d.bar0_write(BAR0_SIZE, &[0u8; 4]).is_err());
    }

    #[test]
    fn command_errors() {
        let d = grouped_device();
        assert_eq!(
            command(&d, cmd::DISABLE_DEVICE, 0),
            u32::from(cmdsts::ERR_DEV_NOTEN)
        );
        assert_eq!(
            command(&d, cmd::ENABLE_WQ, 0),
            u32::from(cmdsts::ERR_DEV_NOTEN)
        );
        write32(&d, GENCFG, 0x5);
        assert_eq!(read32(&d, GENCFG), 0x5, "writable while disabled");
        assert_eq!(command(&d, cmd::ENABLE_DEVICE, 0), 0);
        assert_eq!(read32(&d, GENSTS), GENSTS_ENABLED);
        write32(&d, GENCFG, 0);
        assert_eq!(read32(&d, GENCFG), 0x5, "read-only while enabled");
        assert_eq!(
            command(&d, cmd::ENABLE_DEVICE, 0),
            u32::from(cmdsts::ERR_DEV_ENABLED)
        );
        assert_eq!(
            command(&d, cmd::ENABLE_WQ, 0),
            u32::from(cmdsts::ERR_WQ_SIZE)
        );
        configure_wq(&d, 0, 16, WQCFG_MODE_DEDICATED, 0);
        assert_eq!(
            command(&d, cmd::ENABLE_WQ, 0),
            u32::from(cmdsts::ERR_WQ_PRIOR)
        );
        configure_wq(&d, 0, 200, WQCFG_MODE_DEDICATED, 1);
        assert_eq!(
            command(&d, cmd::ENABLE_WQ, 0),
            u32::from(cmdsts::ERR_WQ_SIZE)
        );
        configure_wq(&d, 0, 16, WQCFG_MODE_DEDICATED, 1);
        assert_eq!(command(&d, cmd::ENABLE_WQ, 0), 0);
        assert_eq!(read32(&d, WQCFG + 24) >> WQCFG_STATE_SHIFT, 1);
        write32(&d, WQCFG, 32);
        assert_eq!(
            read32(&d, WQCFG),
            16,
            "WQCFG read-only while the WQ is enabled"
        );
        assert_eq!(
            command(&d, cmd::ENABLE_WQ, 0),
            u32::from(cmdsts::ERR_WQ_ENABLED)
        );
        assert_eq!(
            command(&d, cmd::ENABLE_WQ, 99),
            u32::from(cmdsts::INVAL_WQIDX)
        );
        assert_eq!(
            command(&d, cmd::DISABLE_WQ, 1 << 1),
            u32::from(cmdsts::ERR_DEV_NOT_EN)
        );
        assert_eq!(
            command(&d, cmd::DISABLE_WQ, 1 << 16 | 1),
            u32::from(cmdsts::INVAL_WQIDX)
        );
        assert_eq!(command(&d, cmd::DRAIN_WQ, 1), 0);
        assert_eq!(command(&d, cmd::DISABLE_WQ, 1), 0);
        assert_eq!(
            command(&d, cmd::REQUEST_INT_HANDLE, 5),
            5 << CMDSTS_RES_SHIFT
        );
        assert_eq!(
            command(&d, cmd::REQUEST_INT_HANDLE, 64),
            u32::from(cmdsts::ERR_INVAL_INT_IDX)
        );
        assert_eq!(command(&d, 0x1f, 0), u32::from(cmdsts::INVAL_CMD));
        // A WQ outside any group with engines cannot be enabled.
        configure_wq(&d, 1, 16, 0, 1);
        write32(&d, CMD, cmd::DISABLE_DEVICE << CMD_SHIFT);
        write32(&d, GRPCFG + GRPCFG_WQS, 0x1);
        assert_eq!(command(&d, cmd::ENABLE_DEVICE, 0), 0);
        assert_eq!(
            command(&d, cmd::ENABLE_WQ, 1),
            u32::from(cmdsts::ERR_GRP_CONFIG)
        );
        // Interrupt request on a command sets INTCAUSE, write 1 clears it.
        write32(&d, CMD, CMD_INT_REQ | (cmd::DRAIN_ALL << CMD_SHIFT));
        assert_eq!(read32(&d, INTCAUSE), INTC_CMD);
        write32(&d, INTCAUSE, INTC_CMD);
        assert_eq!(read32(&d, INTCAUSE), 0);
        // RESET_DEVICE clears the configuration.
        assert_eq!(command(&d, cmd::RESET_DEVICE, 0), 0);
        assert_eq!(
            (read32(&d, GENSTS), read32(&d, WQCFG), read32(&d, GRPCFG)),
            (0, 0, 0)
        );
    }

    #[test]
    fn portal_runs_descriptors_in_the_bound_address_space() {
        let d = grouped_device();
        command(&d, cmd::ENABLE_DEVICE, 0);
        configure_wq(&d, 2, 16, 0, 1);
        let memory = Arc::new(PagedMemory::new(0x10000, 4));
        let irqs = Arc::new(Recorder::default());
        let desc = Descriptor {
            opcode: op::FILL,
            flags: flag::CRAV | flag::RCR | flag::RCI,
            completion_addr: 0x10000,
            src: 0x4242_4242_4242_4242,
            dst: 0x11000,
            size: 100,
            int_handle: 1,
            ..Descriptor::default()
        };
        // Disabled: dropped, SWERR set.
        assert_eq!(
            d.portal_write(2, 0, &desc.encode()),
            Err(PortalError::NotEnabled(2))
        );
        let swerr = read64(&d, SWERR);
        assert_eq!(
            swerr & (SWERR_VALID | SWERR_WQ_IDX_VALID),
            SWERR_VALID | SWERR_WQ_IDX_VALID
        );
        assert_eq!((swerr >> SWERR_ERROR_SHIFT) as u8, SWERR_WQ_NOT_ENABLED);
        assert_eq!((swerr >> SWERR_WQ_IDX_SHIFT) as u8, 2);
        assert_eq!(read32(&d, INTCAUSE) & INTC_ERR, INTC_ERR);
        assert_eq!(
            d.portal_write(2, 0, &desc.encode()),
            Err(PortalError::NotEnabled(2))
        );
        assert_ne!(read64(&d, SWERR) & SWERR_OVERFLOW, 0);
        write32(&d, SWERR, (SWERR_VALID | SWERR_OVERFLOW) as u32);
        assert_eq!(read64(&d, SWERR) & 3, 0);
        // Enabled but no address space bound: the record cannot be written (SWERR).
        assert_eq!(command(&d, cmd::ENABLE_WQ, 2), 0);
        d.portal_write(2, 0x1000, &desc.encode()).unwrap();
        d.quiesce();
        assert_eq!(
            (read64(&d, SWERR) >> SWERR_ERROR_SHIFT) as u8,
            status::CRA_XLAT
        );
        // Bound.
        d.bind_address_space(2, memory.clone());
        d.bind_interrupts(2, irqs.clone());
        d.portal_write(2, 0x40, &desc.encode()).unwrap();
        d.quiesce();
        assert_eq!(memory.get(0x11000, 100), vec![0x42; 100]);
        let mut record = [0u8; 32];
        record.copy_from_slice(&memory.get(0x10000, 32));
        assert_eq!(Completion::decode(&record).status, status::SUCCESS);
        assert_eq!(*irqs.0.lock(), vec![Interrupt::Msix(1)]);
        assert_eq!(
            d.portal_write(2, 0x20, &desc.encode()),
            Err(PortalError::BadOffset(0x20))
        );
        assert_eq!(
            d.portal_write(2, PORTALS_PER_WQ, &desc.encode()),
            Err(PortalError::BadOffset(PORTALS_PER_WQ))
        );
        assert_eq!(
            d.portal_write(9, 0, &desc.encode()),
            Err(PortalError::NoSuchWq(9))
        );
        // Unbound again: nothing reaches the old memory.
        d.unbind(2);
        memory.put(0x11000, &[0; 100]);
        d.portal_write(2, 0, &desc.encode()).unwrap();
        d.quiesce();
        assert_eq!(memory.get(0x11000, 100), vec![0; 100]);
    }

    /// Memory whose first read waits until the test opens the gate, as guest memory reached
    /// by messages waits for a VMM.
    struct Gated {
        memory: PagedMemory,
        gate: Mutex<Option<std::sync::mpsc::Receiver<()>>>,
    }

    impl DmaAccess for Gated {
        fn read(&self, iova: u64, data: &mut [u8]) -> Result<(), vfio_variant::backend::DmaError> {
            if let Some(gate) = self.gate.lock().take() {
                gate.recv().unwrap();
            }
            self.memory.read(iova, data)
        }
        fn write(&self, iova: u64, data: &[u8]) -> Result<(), vfio_variant::backend::DmaError> {
            self.memory.write(iova, data)
        }
    }

    #[test]
    fn portal_writes_return_before_descriptors_run_and_a_full_wq_drops() {
        let d = grouped_device();
        command(&d, cmd::ENABLE_DEVICE, 0);
        configure_wq(&d, 1, 2, 0, 1);
        assert_eq!(command(&d, cmd::ENABLE_WQ, 1), 0);
        let (open, gate) = std::sync::mpsc::channel();
        let memory = Arc::new(Gated {
            memory: PagedMemory::new(0x10000, 4),
            gate: Mutex::new(Some(gate)),
        });
        memory.memory.put(0x11000, &[7; 64]);
        d.bind_address_space(1, memory.clone());
        let copy = |record: u64, dst: u64| Descriptor {
            opcode: op::MEMMOVE,
            flags: flag::CRAV | flag::RCR,
            completion_addr: record,
            src: 0x11000,
            dst,
            size: 64,
            ..Descriptor::default()
        };
        // The first waits in the worker for its source; the writes do not wait for it.
        d.portal_write(1, 0, &copy(0x10000, 0x12000).encode())
            .unwrap();
        let queued = |d: &DsaDevice| d.wqs[1].lock().pending.len();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while queued(&d) != 0 && std::time::Instant::now() < deadline {
            std::thread::yield_now();
        }
        d.portal_write(1, 0, &copy(0x10020, 0x12100).encode())
            .unwrap();
        d.portal_write(1, 0, &copy(0x10040, 0x12200).encode())
            .unwrap();
        assert_eq!(read64(&d, SWERR) & SWERR_VALID, 0);
        // A third waiting one does not fit the WQ (size 2): dropped, SWERR.
        d.portal_write(1, 0, &copy(0x10060, 0x12300).encode())
            .unwrap();
        assert_eq!(
            (read64(&d, SWERR) >> SWERR_ERROR_SHIFT) as u8,
            SWERR_WQ_FULL
        );
        // Registers answer meanwhile.
        assert_eq!(read32(&d, GENSTS), GENSTS_ENABLED);
        open.send(()).unwrap();
        d.quiesce();
        for (record, dst) in [(0x10000, 0x12000), (0x10020, 0x12100), (0x10040, 0x12200)] {
            let mut r = [0u8; 32];
            r.copy_from_slice(&memory.memory.get(record, 32));
            assert_eq!(Completion::decode(&r).status, status::SUCCESS);
            assert_eq!(memory.memory.get(dst, 64), vec![7; 64]);
        }
        assert_eq!(memory.memory.get(0x12300, 64), vec![0; 64]);
    }
}
