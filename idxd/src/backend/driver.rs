//! The host driver's view of the PF: register reads and writes, and commands checked through
//! CMDSTS, as Linux's idxd driver issues them.

use std::sync::Arc;

use crate::hw::registers::{CMD, CMD_SHIFT, CMDSTS, CMDSTS_ACTIVE, CMDSTS_RES_SHIFT};
use crate::hw::{DsaDevice, device::RegisterError};

/// CMDSTS polls before a command that stays active is given up.
const MAX_POLLS: u32 = 1_000_000;

/// A command the PF refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("PF command {command} failed with CMDSTS error {status:#04x}")]
pub struct CommandError {
    /// Command code.
    pub command: u32,
    /// CMDSTS error code; 0xff when the registers could not be accessed or the command never
    /// completed.
    pub status: u8,
}

/// Register access to one PF.
#[derive(Clone)]
pub struct PfDriver {
    device: Arc<DsaDevice>,
}

impl PfDriver {
    /// A driver of `device`.
    pub fn new(device: Arc<DsaDevice>) -> Self {
        Self { device }
    }

    /// The device (for portal writes and IOMMU bindings).
    pub fn device(&self) -> &Arc<DsaDevice> {
        &self.device
    }

    /// Reads a 32-bit register.
    pub fn read32(&self, offset: u64) -> Result<u32, RegisterError> {
        let mut b = [0u8; 4];
        self.device.bar0_read(offset, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    /// Reads a 64-bit register.
    pub fn read64(&self, offset: u64) -> Result<u64, RegisterError> {
        let mut b = [0u8; 8];
        self.device.bar0_read(offset, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    /// Writes a 32-bit register.
    pub fn write32(&self, offset: u64, value: u32) -> Result<(), RegisterError> {
        self.device.bar0_write(offset, &value.to_le_bytes())
    }

    /// Issues a command, waits for CMDSTS to go inactive, and returns its result field.
    pub fn command(&self, command: u32, operand: u32) -> Result<u32, CommandError> {
        let failed = |status| CommandError { command, status };
        self.write32(CMD, (command << CMD_SHIFT) | (operand & 0xf_ffff))
            .map_err(|_| failed(0xff))?;
        let mut polls = 0u32;
        let status = loop {
            let status = self.read32(CMDSTS).map_err(|_| failed(0xff))?;
            if status & CMDSTS_ACTIVE == 0 {
                break status;
            }
            polls += 1;
            if polls == MAX_POLLS {
                return Err(failed(0xff));
            }
            std::thread::yield_now();
        };
        match (status & 0xff) as u8 {
            0 => Ok((status >> CMDSTS_RES_SHIFT) & 0xff),
            error => Err(failed(error)),
        }
    }

    /// The operand of DISABLE/DRAIN/ABORT/RESET_WQ naming WQ `wq`.
    pub fn wq_operand(wq: usize) -> u32 {
        (1 << (wq % 16)) | (((wq / 16) as u32) << 16)
    }
}
