//! An mlx-style PF: the initialization segment in BAR 0 (command queue address, doorbell),
//! the command queue in DMA memory, and the firmware behind it; its VFs.
//!
//! The driver writes the queue's address (4 KiB aligned) to CMDQ_ADDR_H/L, fills an entry,
//! gives it to the hardware (ownership bit) and rings the doorbell with the entry's bit. The
//! PF runs every rung entry the hardware owns before the doorbell write returns (the model is
//! synchronous; a driver still polls the ownership bit). Registers are big-endian, 4 bytes.

use std::sync::Arc;

use parking_lot::Mutex;
use vfio_variant::backend::DmaAccess;
use vfio_variant::physical::{PhysicalBar, PhysicalError, PhysicalFunction};

use super::cmdq::deliver;
use super::firmware::{Firmware, FirmwareCaps};
use super::ifc::*;
use super::pci::{self, CONFIG_SIZE, ConfigSpace, Generation};
use super::vf::{FW_REV, MlxVf};

/// An emulated PF.
pub struct MlxPf {
    name: String,
    generation: Generation,
    config: Mutex<ConfigSpace>,
    cmdq: Mutex<u64>,
    memory: Arc<dyn DmaAccess>,
    firmware: Firmware,
    vfs: Vec<Arc<MlxVf>>,
}

impl MlxPf {
    /// A `generation` PF named `name` with `num_vfs` VFs, whose firmware offers `caps` and
    /// reaches host memory (command queue, mailboxes, state buffers) through `memory`.
    pub fn new(
        name: impl Into<String>,
        generation: Generation,
        num_vfs: u16,
        caps: FirmwareCaps,
        memory: Arc<dyn DmaAccess>,
    ) -> Self {
        let name = name.into();
        let vfs: Vec<Arc<MlxVf>> = (1..=num_vfs)
            .map(|n| {
                Arc::new(MlxVf::new(
                    format!("{name}-vf{n}"),
                    n,
                    generation,
                    caps.features,
                ))
            })
            .collect();
        Self {
            config: Mutex::new(ConfigSpace::new(generation, generation.pf_device_id())),
            cmdq: Mutex::new(0),
            firmware: Firmware::new(caps, generation.number(), vfs.clone(), Arc::clone(&memory)),
            memory,
            vfs,
            name,
            generation,
        }
    }

    /// Its VFs, VF 1 first.
    pub fn vfs(&self) -> &[Arc<MlxVf>] {
        &self.vfs
    }

    /// Its hardware generation.
    pub fn generation(&self) -> Generation {
        self.generation
    }

    fn ring(&self, bits: u32) {
        let base = *self.cmdq.lock();
        for slot in 0..ENTRIES {
            if bits & (1 << slot) == 0 {
                continue;
            }
            let at = base + (slot * ENTRY_SIZE) as u64;
            let mut entry = [0u8; ENTRY_SIZE];
            if self.memory.read(at, &mut entry).is_err() || entry[ENTRY_STATUS_OWN] & OWNER_HW == 0
            {
                continue;
            }
            deliver(&*self.memory, &mut entry, |input| {
                self.firmware.execute(input)
            });
            // An entry that cannot be written back is lost, as on hardware.
            let _ = self.memory.write(at, &entry);
        }
    }

    fn register_read(&self, offset: u64) -> u32 {
        let cmdq = *self.cmdq.lock();
        match offset {
            INIT_FW_REV => FW_REV,
            INIT_CMDIF_REV => u32::from(CMDIF_REV) << 16,
            INIT_CMDQ_ADDR_H => (cmdq >> 32) as u32,
            INIT_CMDQ_ADDR_L_SZ => (cmdq as u32) | (LOG_CMDQ_SIZE << 4) | LOG_CMDQ_STRIDE,
            _ => 0,
        }
    }

    fn register_write(&self, offset: u64, value: u32) {
        match offset {
            INIT_CMDQ_ADDR_H => {
                let mut cmdq = self.cmdq.lock();
                *cmdq = (*cmdq & 0xffff_ffff) | (u64::from(value) << 32);
            }
            INIT_CMDQ_ADDR_L_SZ => {
                let mut cmdq = self.cmdq.lock();
                *cmdq = (*cmdq & !0xffff_ffff) | u64::from(value & 0xffff_f000);
            }
            INIT_CMD_DBELL => self.ring(value),
            _ => {}
        }
    }
}

impl PhysicalFunction for MlxPf {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn config_size(&self) -> u16 {
        CONFIG_SIZE
    }

    fn config_read(&self, offset: u16, data: &mut [u8]) -> Result<(), PhysicalError> {
        self.config.lock().read(offset, data)
    }

    fn config_write(&self, offset: u16, data: &[u8]) -> Result<(), PhysicalError> {
        self.config.lock().write(offset, data)
    }

    fn bar(&self, index: u8) -> Option<PhysicalBar> {
        pci::bar0(index)
    }

    /// Registers are 4 bytes, aligned, big-endian; other accesses read zeros and are dropped.
    fn bar_read(&self, index: u8, offset: u64, data: &mut [u8]) -> Result<(), PhysicalError> {
        pci::register_read(index, offset, data, |at| {
            self.register_read(at).to_be_bytes()
        })
    }

    fn bar_write(&self, index: u8, offset: u64, data: &[u8]) -> Result<(), PhysicalError> {
        pci::register_write(index, offset, data, |at, value| {
            self.register_write(at, u32::from_be_bytes(value))
        })
    }

    /// Resets the command interface (the queue address); the VFs are left alone.
    fn reset(&self) -> Result<(), PhysicalError> {
        *self.cmdq.lock() = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vfio_variant::backend::emulated::HostMemory;

    #[test]
    fn the_init_segment_reports_the_queue_and_runs_rung_entries() {
        let memory = Arc::new(HostMemory::new(0x10000));
        let pf = MlxPf::new(
            "pf",
            Generation::Two,
            2,
            FirmwareCaps::default(),
            memory.clone(),
        );
        pf.bar_write(0, INIT_CMDQ_ADDR_L_SZ, &0x4123u32.to_be_bytes())
            .unwrap();
        let mut b = [0u8; 4];
        pf.bar_read(0, INIT_CMDQ_ADDR_L_SZ, &mut b).unwrap();
        assert_eq!(u32::from_be_bytes(b), 0x4000 | 0x56);
        pf.bar_read(0, INIT_CMDIF_REV, &mut b).unwrap();
        assert_eq!(u32::from_be_bytes(b) >> 16, 5);

        let mut entry = [0u8; ENTRY_SIZE];
        entry[ENTRY_TYPE] = CMD_TYPE_PCIE;
        put_be32(&mut entry, ENTRY_INLEN, 16);
        put_be32(&mut entry, ENTRY_OUTLEN, 16);
        let input = command(QUERY_HCA_CAP, HCA_CAP_OPMOD_GET_CUR, 16);
        entry[ENTRY_IN..ENTRY_IN + 16].copy_from_slice(&input);
        entry[ENTRY_STATUS_OWN] = OWNER_HW;
        memory.write(0x4000 + 3 * 64, &entry).unwrap();
        // Not rung: untouched.
        pf.bar_write(0, INIT_CMD_DBELL, &1u32.to_be_bytes())
            .unwrap();
        memory.read(0x4000 + 3 * 64, &mut entry).unwrap();
        assert_eq!(entry[ENTRY_STATUS_OWN], OWNER_HW);
        pf.bar_write(0, INIT_CMD_DBELL, &8u32.to_be_bytes())
            .unwrap();
        memory.read(0x4000 + 3 * 64, &mut entry).unwrap();
        assert_eq!(entry[ENTRY_STATUS_OWN], 0);
        // Output is 16 bytes: status OK, but a query needs more room for the capability.
        assert_eq!(entry[ENTRY_OUT + OUT_STATUS], STATUS_OK);
        assert_eq!(pf.vfs().len(), 2);
        assert_eq!(pf.generation(), Generation::Two);
    }
}
