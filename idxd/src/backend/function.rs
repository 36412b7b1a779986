//! The virtual DSA device served to a VMM: one work queue, one group.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;
use vfio_variant::backend::{
    DmaAccess, DmaError, Function, FunctionContext, FunctionError, Interrupt, InterruptSink,
};
use vfio_variant::config::ConfigEvent;
use vfio_variant::pci::regs::COMMAND_BUS_MASTER;

use super::driver::PfDriver;
use super::pool::Pool;
use crate::hw::descriptor::DESCRIPTOR_SIZE;
use crate::hw::device::check_access;
use crate::hw::registers::*;
use crate::hw::wq::WqMode;
use crate::hw::{DsaDevice, PortalError};

/// Size of the virtual BAR0 and BAR2.
const BAR_SIZE: u64 = 0x2000;
/// MSI-X table and PBA (BAR0 0x600-0x800), served as plain memory.
const MSIX_RANGE: std::ops::Range<u64> = 0x600..0x800;
/// MSI-X permission table (BAR0 0x300, one 8-byte entry per vector), plain memory.
const MSIX_PERM_RANGE: std::ops::Range<u64> = MSIX_PERM..MSIX_PERM + 16;
/// MSI-X vector of command completions and errors.
const VECTOR_MISC: u32 = 0;
/// MSI-X vector of descriptor completions.
const VECTOR_COMPLETION: u32 = 1;
/// MSI-X vectors of the layout.
const VECTORS: u32 = 2;
/// WQCFG dword 2 bits the guest may write: block on fault and priority.
const WQCFG2_WRITABLE: u32 = 0xf2;

/// What the IOMMU binding of the sub-device's WQ reaches: its guest memory and interrupts.
#[derive(Default)]
pub(super) struct Attachment {
    context: OnceLock<FunctionContext>,
    msix_enabled: AtomicBool,
}

impl Attachment {
    fn raise_vector(&self, vector: u32) {
        if !self.msix_enabled.load(Ordering::SeqCst) {
            return;
        }
        if let Some(context) = self.context.get() {
            context.interrupts.raise(Interrupt::Msix(vector));
        }
    }
}

impl DmaAccess for Attachment {
    fn read(&self, iova: u64, data: &mut [u8]) -> Result<(), DmaError> {
        match self.context.get() {
            Some(context) => context.dma.read(iova, data),
            None => Err(DmaError::Unmapped {
                iova,
                len: data.len(),
            }),
        }
    }

    fn write(&self, iova: u64, data: &[u8]) -> Result<(), DmaError> {
        match self.context.get() {
            Some(context) => context.dma.write(iova, data),
            None => Err(DmaError::Unmapped {
                iova,
                len: data.len(),
            }),
        }
    }
}

impl InterruptSink for Attachment {
    /// Every descriptor completion of the WQ goes to the guest's vector 1.
    fn raise(&self, _: Interrupt) {
        self.raise_vector(VECTOR_COMPLETION);
    }
}

/// Host capability registers copied into the virtual device.
#[derive(Debug, Clone, Copy)]
pub(super) struct HostCaps {
    pub gencap: u64,
    pub grpcap: u64,
    pub engcap: u64,
    pub opcap: [u64; 4],
    pub cmdcap: u32,
    pub engines: u64,
}

/// Virtual register state.
struct State {
    enabled: bool,
    wq_enabled: bool,
    genctrl: u32,
    intcause: u32,
    cmd: u32,
    cmdsts: u32,
    swerr: u64,
    wqcfg2: u32,
    bus_master: bool,
    msix: Vec<u8>,
    msix_perm: Vec<u8>,
}

impl State {
    fn new(mode: WqMode) -> Self {
        Self {
            enabled: false,
            wq_enabled: false,
            genctrl: 0,
            intcause: 0,
            cmd: 0,
            cmdsts: 0,
            swerr: 0,
            wqcfg2: mode_bit(mode) | (1 << WQCFG_PRIORITY_SHIFT),
            bus_master: false,
            msix: vec![0; (MSIX_RANGE.end - MSIX_RANGE.start) as usize],
            msix_perm: vec![0; (MSIX_PERM_RANGE.end - MSIX_PERM_RANGE.start) as usize],
        }
    }
}

fn mode_bit(mode: WqMode) -> u32 {
    match mode {
        WqMode::Dedicated => WQCFG_MODE_DEDICATED,
        WqMode::Shared => 0,
    }
}

/// One sub-device: a virtual DSA device around one WQ of the PF.
pub struct IdxdFunction {
    driver: PfDriver,
    wq: usize,
    mode: WqMode,
    wq_size: u32,
    caps: HostCaps,
    attachment: Arc<Attachment>,
    state: Mutex<State>,
    pool: Pool,
}

impl IdxdFunction {
    pub(super) fn new(
        driver: PfDriver,
        wq: usize,
        mode: WqMode,
        wq_size: u32,
        caps: HostCaps,
        attachment: Arc<Attachment>,
        pool: Pool,
    ) -> Self {
        Self {
            driver,
            wq,
            mode,
            wq_size,
            caps,
            attachment,
            state: Mutex::new(State::new(mode)),
            pool,
        }
    }

    /// The PF work queue this sub-device owns.
    pub fn wq(&self) -> usize {
        self.wq
    }

    fn device(&self) -> &DsaDevice {
        self.driver.device()
    }

    /// Forwards a WQ command for this sub-device's WQ to the PF; the PF's error code if any.
    fn forward(&self, command: u32) -> u8 {
        match self.driver.command(command, PfDriver::wq_operand(self.wq)) {
            Ok(_) => cmdsts::SUCCESS,
            Err(e) => e.status,
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
        let s = self.state.lock();
        match offset {
            VERSION => VERSION_VALUE,
            0x10..0x18 => half((self.caps.gencap & !GENCAP_CONFIG_EN) | GENCAP_CMD_CAP),
            0x20..0x28 => half(
                u64::from(self.wq_size)
                    | (1 << WQCAP_NUM_WQS_SHIFT)
                    | WQCAP_PRIORITY
                    | match self.mode {
                        WqMode::Dedicated => WQCAP_DEDICATED,
                        WqMode::Shared => WQCAP_SHARED,
                    },
            ),
            0x30..0x38 => half((self.caps.grpcap & !0xff00) | (1 << GRPCAP_NUM_GROUPS_SHIFT)),
            0x38..0x40 => half(self.caps.engcap),
            0x40..0x60 => half(self.caps.opcap[((offset - OPCAP) / 8) as usize]),
            0x60 => (((WQCFG / TABLE_MULT) << 16) | (GRPCFG / TABLE_MULT)) as u32,
            0x64 => (MSIX_PERM / TABLE_MULT) as u32,
            GENCTRL => s.genctrl,
            GENSTS => u32::from(s.enabled),
            INTCAUSE => s.intcause,
            CMD => s.cmd,
            CMDSTS => s.cmdsts,
            CMDCAP => self.caps.cmdcap,
            0xc0..0xc8 => half(s.swerr),
            0x400..0x408 => half(1),
            0x420..0x428 => half(self.caps.engines),
            0x500 => self.wq_size,
            0x508 => s.wqcfg2,
            0x50c => {
                let gencap = self.caps.gencap;
                ((gencap >> GENCAP_MAX_XFER_SHIFT) & 0x1f) as u32
                    | ((((gencap >> GENCAP_MAX_BATCH_SHIFT) & 0xf) as u32) << 5)
            }
            0x518 => u32::from(s.wq_enabled) << WQCFG_STATE_SHIFT,
            _ => 0,
        }
    }

    fn write32(&self, offset: u64, value: u32) {
        let mut s = self.state.lock();
        match offset {
            GENCTRL => s.genctrl = value & 0x3,
            INTCAUSE => s.intcause &= !value,
            CMD => self.command(&mut s, value),
            SWERR => s.swerr &= !(u64::from(value) & (SWERR_VALID | SWERR_OVERFLOW)),
            0x508 if !s.wq_enabled => {
                s.wqcfg2 = (value & WQCFG2_WRITABLE) | mode_bit(self.mode);
            }
            _ => {}
        }
    }

    fn command(&self, s: &mut State, value: u32) {
        s.cmd = value;
        let code = (value >> CMD_SHIFT) & 0x1f;
        let operand = value & 0xf_ffff;
        let (error, result) = self.run_command(s, code, operand);
        s.cmdsts = u32::from(error) | (result << CMDSTS_RES_SHIFT);
        if value & CMD_INT_REQ != 0 {
            s.intcause |= INTC_CMD;
            self.attachment.raise_vector(VECTOR_MISC);
        }
    }

    fn run_command(&self, s: &mut State, code: u32, operand: u32) -> (u8, u32) {
        let only_our_wq = operand == 1;
        match code {
            cmd::ENABLE_DEVICE if s.enabled => (cmdsts::ERR_DEV_ENABLED, 0),
            cmd::ENABLE_DEVICE if !s.bus_master => (cmdsts::ERR_BUSMASTER_EN, 0),
            cmd::ENABLE_DEVICE => {
                s.enabled = true;
                (cmdsts::SUCCESS, 0)
            }
            cmd::DISABLE_DEVICE if !s.enabled => (cmdsts::ERR_DEV_NOTEN, 0),
            cmd::DISABLE_DEVICE | cmd::RESET_DEVICE => {
                let error = self.forward(cmd::DRAIN_WQ);
                let msix = std::mem::take(&mut s.msix);
                let msix_perm = std::mem::take(&mut s.msix_perm);
                let bus_master = s.bus_master;
                if code == cmd::RESET_DEVICE {
                    *s = State::new(self.mode);
                } else {
                    s.enabled = false;
                    s.wq_enabled = false;
                }
                (s.msix, s.msix_perm, s.bus_master) = (msix, msix_perm, bus_master);
                (error, 0)
            }
            cmd::DRAIN_ALL | cmd::DRAIN_PASID => (self.forward(cmd::DRAIN_WQ), 0),
            cmd::ABORT_ALL | cmd::ABORT_PASID => (self.forward(cmd::ABORT_WQ), 0),
            cmd::ENABLE_WQ if !s.enabled => (cmdsts::ERR_DEV_NOTEN, 0),
            cmd::ENABLE_WQ if operand != 0 => (cmdsts::INVAL_WQIDX, 0),
            cmd::ENABLE_WQ if s.wq_enabled => (cmdsts::ERR_WQ_ENABLED, 0),
            cmd::ENABLE_WQ if (s.wqcfg2 >> WQCFG_PRIORITY_SHIFT) & 0xf == 0 => {
                (cmdsts::ERR_WQ_PRIOR, 0)
            }
            cmd::ENABLE_WQ => {
                s.wq_enabled = true;
                (cmdsts::SUCCESS, 0)
            }
            cmd::DISABLE_WQ | cmd::DRAIN_WQ | cmd::ABORT_WQ | cmd::RESET_WQ if !only_our_wq => {
                (cmdsts::INVAL_WQIDX, 0)
            }
            cmd::DISABLE_WQ if !s.wq_enabled => (cmdsts::ERR_DEV_NOT_EN, 0),
            cmd::DISABLE_WQ | cmd::DRAIN_WQ => {
                if code == cmd::DISABLE_WQ {
                    s.wq_enabled = false;
                }
                (self.forward(cmd::DRAIN_WQ), 0)
            }
            cmd::ABORT_WQ => (self.forward(cmd::ABORT_WQ), 0),
            cmd::RESET_WQ => {
                s.wq_enabled = false;
                s.wqcfg2 = State::new(self.mode).wqcfg2;
                (self.forward(cmd::DRAIN_WQ), 0)
            }
            cmd::REQUEST_INT_HANDLE if operand >= VECTORS => (cmdsts::ERR_INVAL_INT_IDX, 0),
            cmd::REQUEST_INT_HANDLE => (cmdsts::SUCCESS, operand),
            cmd::RELEASE_INT_HANDLE => (cmdsts::SUCCESS, 0),
            _ => (cmdsts::INVAL_CMD, 0),
        }
    }

    fn software_error(&self, error: u8) {
        let mut s = self.state.lock();
        if s.swerr & SWERR_VALID != 0 {
            s.swerr |= SWERR_OVERFLOW;
        } else {
            s.swerr = SWERR_VALID | SWERR_WQ_IDX_VALID | (u64::from(error) << SWERR_ERROR_SHIFT);
        }
        s.intcause |= INTC_ERR;
        if s.genctrl & GENCTRL_SOFTERR_INT_EN != 0 {
            self.attachment.raise_vector(VECTOR_MISC);
        }
    }

    /// Moves a software error the PF recorded for this WQ into the virtual SWERR, as the host
    /// driver's error handler would.
    fn collect_pf_error(&self) {
        let Ok(swerr) = self.driver.read64(SWERR) else {
            return;
        };
        let ours = (swerr >> SWERR_WQ_IDX_SHIFT) & 0xff == self.wq as u64;
        if swerr & SWERR_VALID != 0 && swerr & SWERR_WQ_IDX_VALID != 0 && ours {
            let _ = self
                .driver
                .write32(SWERR, (SWERR_VALID | SWERR_OVERFLOW) as u32);
            self.software_error((swerr >> SWERR_ERROR_SHIFT) as u8);
        }
    }

    fn portal_write(&self, offset: u64, data: &[u8]) -> Result<(), FunctionError> {
        let Ok(descriptor) = <&[u8; DESCRIPTOR_SIZE]>::try_from(data) else {
            return Err(FunctionError::BadAccess(format!(
                "portals take 64-byte descriptors; got {} bytes",
                data.len()
            )));
        };
        if !offset.is_multiple_of(DESCRIPTOR_SIZE as u64) {
            return Err(FunctionError::BadAccess(format!(
                "descriptor at unaligned portal offset {offset:#x}"
            )));
        }
        let ready = {
            let s = self.state.lock();
            s.enabled && s.wq_enabled
        };
        if !ready {
            self.software_error(SWERR_WQ_NOT_ENABLED);
            return Ok(());
        }
        // The guest's unlimited and limited pages are the WQ's first two portal pages.
        match self.device().portal_write(self.wq, offset, descriptor) {
            Ok(()) => {}
            Err(PortalError::NotEnabled(_)) => self.software_error(SWERR_WQ_NOT_ENABLED),
            Err(e) => return Err(FunctionError::Device(e.to_string())),
        }
        self.collect_pf_error();
        Ok(())
    }
}

fn plain_read(memory: &[u8], at: u64, data: &mut [u8]) -> Result<(), FunctionError> {
    let range = at as usize..at as usize + data.len();
    let bytes = memory
        .get(range)
        .ok_or_else(|| FunctionError::BadAccess(format!("{} bytes at {at:#x}", data.len())))?;
    data.copy_from_slice(bytes);
    Ok(())
}

fn plain_write(memory: &mut [u8], at: u64, data: &[u8]) -> Result<(), FunctionError> {
    let range = at as usize..at as usize + data.len();
    memory
        .get_mut(range)
        .ok_or_else(|| FunctionError::BadAccess(format!("{} bytes at {at:#x}", data.len())))?
        .copy_from_slice(data);
    Ok(())
}

fn register_access(offset: u64, len: usize) -> Result<(), FunctionError> {
    check_access(offset, len, BAR_SIZE).map_err(|e| FunctionError::BadAccess(e.to_string()))
}

impl Function for IdxdFunction {
    fn attach(&self, context: FunctionContext) {
        let _ = self.attachment.context.set(context);
    }

    fn bar_read(&self, bar: u8, offset: u64, data: &mut [u8]) -> Result<(), FunctionError> {
        match bar {
            0 if MSIX_RANGE.contains(&offset) => {
                plain_read(&self.state.lock().msix, offset - MSIX_RANGE.start, data)
            }
            0 if MSIX_PERM_RANGE.contains(&offset) => plain_read(
                &self.state.lock().msix_perm,
                offset - MSIX_PERM_RANGE.start,
                data,
            ),
            0 => {
                register_access(offset, data.len())?;
                if (SWERR..SWERR + 8).contains(&offset) {
                    // Descriptors run after the portal write: their errors are collected
                    // when the guest looks.
                    self.collect_pf_error();
                }
                for (i, part) in data.chunks_exact_mut(4).enumerate() {
                    part.copy_from_slice(&self.read32(offset + 4 * i as u64).to_le_bytes());
                }
                Ok(())
            }
            // Portals read as all ones.
            2 if offset
                .checked_add(data.len() as u64)
                .is_some_and(|e| e <= BAR_SIZE) =>
            {
                data.fill(0xff);
                Ok(())
            }
            other => Err(FunctionError::BadAccess(format!(
                "{} bytes at {offset:#x} of BAR {other}",
                data.len()
            ))),
        }
    }

    fn bar_write(&self, bar: u8, offset: u64, data: &[u8]) -> Result<(), FunctionError> {
        match bar {
            0 if MSIX_RANGE.contains(&offset) => {
                plain_write(&mut self.state.lock().msix, offset - MSIX_RANGE.start, data)
            }
            0 if MSIX_PERM_RANGE.contains(&offset) => plain_write(
                &mut self.state.lock().msix_perm,
                offset - MSIX_PERM_RANGE.start,
                data,
            ),
            0 => {
                register_access(offset, data.len())?;
                for (i, part) in data.chunks_exact(4).enumerate() {
                    let value = u32::from_le_bytes([part[0], part[1], part[2], part[3]]);
                    self.write32(offset + 4 * i as u64, value);
                }
                Ok(())
            }
            2 if offset < BAR_SIZE => self.portal_write(offset, data),
            other => Err(FunctionError::BadAccess(format!(
                "{} bytes at {offset:#x} of BAR {other}",
                data.len()
            ))),
        }
    }

    fn config_changed(&self, event: ConfigEvent) {
        match event {
            ConfigEvent::Msix { enabled, .. } => {
                self.attachment
                    .msix_enabled
                    .store(enabled, Ordering::SeqCst);
            }
            ConfigEvent::Command { new, .. } => {
                self.state.lock().bus_master = new & COMMAND_BUS_MASTER != 0;
            }
            ConfigEvent::Msi { .. }
            | ConfigEvent::FunctionLevelReset
            | ConfigEvent::PowerState(_) => {}
        }
    }

    fn reset(&self) -> Result<(), FunctionError> {
        let mut s = self.state.lock();
        let error = self.forward(cmd::DRAIN_WQ);
        *s = State::new(self.mode);
        if error != cmdsts::SUCCESS {
            return Err(FunctionError::Device(format!(
                "draining work queue {} failed: CMDSTS {error:#04x}",
                self.wq
            )));
        }
        Ok(())
    }
}

impl Drop for IdxdFunction {
    fn drop(&mut self) {
        // Drain and disable the WQ on the PF, remove the IOMMU binding, return the WQ.
        let operand = PfDriver::wq_operand(self.wq);
        let _ = self.driver.command(cmd::DRAIN_WQ, operand);
        let _ = self.driver.command(cmd::DISABLE_WQ, operand);
        self.device().unbind(self.wq);
        self.pool.release(self.wq);
    }
}
