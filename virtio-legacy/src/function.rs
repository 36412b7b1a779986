//! One provisioned virtio VF: its memory BAR passed through, MSI-X emulated in BAR 1, for
//! the transitional profile a legacy I/O BAR served through the PF's admin queue, and when
//! the PF has the device-parts commands, migration ([`crate::migration`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use vfio_variant::backend::{Function, FunctionContext, FunctionError};
use vfio_variant::config::ConfigEvent;
use vfio_variant::migration::MigrationHooks;
use vfio_variant::pci::regs;
use vfio_variant::physical::PhysicalFunction;

use crate::admin::{AdminError, AdminQueue};
use crate::hw::pf::admin::{
    LEGACY_COMMON_CFG_READ, LEGACY_COMMON_CFG_WRITE, LEGACY_DEV_CFG_READ, LEGACY_DEV_CFG_WRITE,
};
use crate::hw::transport::legacy;
use crate::migration::VfMigration;

/// BAR 1 holds the MSI-X table and PBA (served by the framework); the rest is reserved.
const MSIX_BAR: u8 = 1;
/// Its size.
const MSIX_BAR_SIZE: usize = 4096;

/// Where the guest's DMA and interrupts reach an emulated VF (for a real VF the IOMMU and
/// the VFIO interrupt setup do this).
#[derive(Clone)]
pub struct Attachment {
    /// The VF's DMA view.
    pub dma: Arc<vfio_variant::backend::emulated::DmaSlot>,
    /// The VF's interrupt routing.
    pub interrupts: Arc<vfio_variant::backend::emulated::IrqSlot>,
}

/// The legacy I/O BAR of a transitional function.
pub(crate) struct LegacyIo {
    /// Size of the I/O BAR.
    pub size: u64,
    /// The VF's notify address for QUEUE_NOTIFY (from LEGACY_NOTIFY_INFO).
    pub notify_bar: u8,
    /// Offset of the notify address in that BAR.
    pub notify_offset: u64,
}

/// A provisioned VF.
pub struct VirtioLegacyFunction {
    pub(crate) vf: Arc<dyn PhysicalFunction>,
    pub(crate) member: u64,
    pub(crate) admin: Arc<AdminQueue>,
    pub(crate) legacy: Option<LegacyIo>,
    pub(crate) attachment: Option<Attachment>,
    pub(crate) msix_enabled: AtomicBool,
    pub(crate) migration: Option<VfMigration>,
    /// Returned to the backend's pool on drop.
    pub(crate) release: Box<dyn Fn() + Send + Sync>,
}

impl VirtioLegacyFunction {
    pub(crate) fn new(
        vf: Arc<dyn PhysicalFunction>,
        member: u64,
        admin: Arc<AdminQueue>,
        legacy: Option<LegacyIo>,
        attachment: Option<Attachment>,
        migration: Option<VfMigration>,
        release: Box<dyn Fn() + Send + Sync>,
    ) -> Self {
        Self {
            vf,
            member,
            admin,
            legacy,
            attachment,
            msix_enabled: AtomicBool::new(false),
            migration,
            release,
        }
    }

    /// Where the legacy device config starts: 24 with MSI-X enabled, else 20.
    fn config_start(&self) -> u64 {
        if self.msix_enabled.load(Ordering::SeqCst) {
            u64::from(legacy::COMMON_END)
        } else {
            u64::from(legacy::MSI_CONFIG_VECTOR)
        }
    }

    fn legacy_access(&self, offset: u64, len: usize) -> Result<&LegacyIo, FunctionError> {
        let io = self
            .legacy
            .as_ref()
            .ok_or_else(|| FunctionError::Unsupported("legacy I/O (modern profile)".into()))?;
        let end = offset.checked_add(len as u64);
        let start = self.config_start();
        let fits = end.is_some_and(|end| end <= io.size && (offset >= start || end <= start));
        if len == 0 || len > 4 || !fits {
            return Err(FunctionError::BadAccess(format!(
                "{len} bytes at {offset:#x} of the legacy I/O BAR"
            )));
        }
        Ok(io)
    }

    /// Toggles MSI-X on the physical VF, found through its capability list.
    fn set_physical_msix(&self, enabled: bool) {
        let mut at = [0u8; 1];
        if self
            .vf
            .config_read(regs::CAPABILITIES_POINTER, &mut at)
            .is_err()
        {
            return;
        }
        let mut cap = u16::from(at[0] & 0xfc);
        for _ in 0..48 {
            if cap < regs::HEADER_END {
                return;
            }
            let mut header = [0u8; 2];
            if self.vf.config_read(cap, &mut header).is_err() {
                return;
            }
            if header[0] == 0x11 {
                let mut control = [0u8; 2];
                if self.vf.config_read(cap + 2, &mut control).is_ok() {
                    let mut value = u16::from_le_bytes(control) & !(1 << 14);
                    if enabled {
                        value |= 1 << 15;
                    } else {
                        value &= !(1 << 15);
                    }
                    let _ = self.vf.config_write(cap + 2, &value.to_le_bytes());
                }
                return;
            }
            cap = u16::from(header[1] & 0xfc);
        }
    }
}

fn admin_failed(e: AdminError) -> FunctionError {
    FunctionError::Device(format!("legacy register access through the PF: {e}"))
}

impl Drop for VirtioLegacyFunction {
    fn drop(&mut self) {
        if let Some(migration) = &self.migration {
            migration.abort();
        }
        if let Some(attachment) = &self.attachment {
            attachment.dma.bind(None);
            attachment.interrupts.bind(None);
        }
        let _ = self.vf.reset();
        (self.release)();
    }
}

impl Function for VirtioLegacyFunction {
    fn attach(&self, context: FunctionContext) {
        if let Some(attachment) = &self.attachment {
            attachment.dma.bind(Some(context.dma));
            attachment.interrupts.bind(Some(context.interrupts));
        }
    }

    fn bar_read(&self, bar: u8, offset: u64, data: &mut [u8]) -> Result<(), FunctionError> {
        if bar != MSIX_BAR {
            return Err(FunctionError::BadAccess(format!("no emulated BAR {bar}")));
        }
        // The framework serves the MSI-X table and PBA; the rest of the BAR is reserved.
        msix_range(offset, data.len())?;
        data.fill(0);
        Ok(())
    }

    fn bar_write(&self, bar: u8, offset: u64, data: &[u8]) -> Result<(), FunctionError> {
        if bar != MSIX_BAR {
            return Err(FunctionError::BadAccess(format!("no emulated BAR {bar}")));
        }
        msix_range(offset, data.len())?;
        Ok(())
    }

    fn legacy_io_read(&self, offset: u64, data: &mut [u8]) -> Result<(), FunctionError> {
        self.legacy_access(offset, data.len())?;
        let start = self.config_start();
        let result = if offset < start {
            self.admin.command(
                LEGACY_COMMON_CFG_READ,
                self.member,
                &[offset as u8],
                data.len(),
            )
        } else {
            self.admin.command(
                LEGACY_DEV_CFG_READ,
                self.member,
                &[(offset - start) as u8],
                data.len(),
            )
        }
        .map_err(admin_failed)?;
        if result.len() != data.len() {
            return Err(FunctionError::Device(format!(
                "the PF returned {} bytes for a {}-byte legacy read",
                result.len(),
                data.len()
            )));
        }
        data.copy_from_slice(&result);
        Ok(())
    }

    fn legacy_io_write(&self, offset: u64, data: &[u8]) -> Result<(), FunctionError> {
        let io = self.legacy_access(offset, data.len())?;
        if offset == u64::from(legacy::QUEUE_NOTIFY) && data.len() == 2 {
            return Ok(self.vf.bar_write(io.notify_bar, io.notify_offset, data)?);
        }
        let start = self.config_start();
        let (opcode, register) = if offset < start {
            (LEGACY_COMMON_CFG_WRITE, offset as u8)
        } else {
            (LEGACY_DEV_CFG_WRITE, (offset - start) as u8)
        };
        let mut command = vec![register, 0, 0, 0, 0, 0, 0, 0];
        command.extend_from_slice(data);
        self.admin
            .command(opcode, self.member, &command, 0)
            .map(|_| ())
            .map_err(admin_failed)
    }

    fn config_changed(&self, event: ConfigEvent) {
        if let ConfigEvent::Msix { enabled, .. } = event
            && self.msix_enabled.swap(enabled, Ordering::SeqCst) != enabled
        {
            self.set_physical_msix(enabled);
        }
    }

    fn physical(&self) -> Option<&dyn PhysicalFunction> {
        Some(&*self.vf)
    }

    fn reset(&self) -> Result<(), FunctionError> {
        if let Some(migration) = &self.migration {
            migration.abort();
        }
        self.vf.reset()?;
        self.msix_enabled.store(false, Ordering::SeqCst);
        Ok(())
    }

    fn migration(&self) -> Option<&dyn MigrationHooks> {
        self.migration.as_ref().map(|m| m as &dyn MigrationHooks)
    }
}

fn msix_range(offset: u64, len: usize) -> Result<usize, FunctionError> {
    usize::try_from(offset)
        .ok()
        .filter(|at| at.checked_add(len).is_some_and(|end| end <= MSIX_BAR_SIZE))
        .ok_or_else(|| {
            FunctionError::BadAccess(format!("{len} bytes at {offset:#x} are outside BAR 1"))
        })
}
