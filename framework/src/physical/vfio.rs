//! A real physical function driven through kernel VFIO (group/container API, vfio-ioctls).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use vfio_ioctls::{VfioContainer, VfioDevice};

use super::{PhysicalBar, PhysicalError, PhysicalFunction, check_access};
use crate::pci::regs;
use crate::vpci::layout::BarKind;

/// VFIO region index of config space.
const CONFIG_REGION: u32 = 7;
/// VFIO region index of the expansion ROM.
const ROM_REGION: u32 = 6;

/// A PCI function bound to vfio-pci, opened through its IOMMU group.
pub struct VfioPhysicalFunction {
    sysfs: PathBuf,
    device: VfioDevice,
    // Keeps the container (and its group) open for as long as the device is used.
    _container: Arc<VfioContainer>,
    config_size: u16,
}

impl VfioPhysicalFunction {
    /// Opens the function at `sysfs` (`/sys/bus/pci/devices/DDDD:BB:DD.F`), which must be bound
    /// to vfio-pci, in a new VFIO container.
    pub fn open(sysfs: &Path) -> Result<Self, PhysicalError> {
        let container = Arc::new(
            VfioContainer::new(None)
                .map_err(|e| PhysicalError::Vfio(format!("opening /dev/vfio/vfio: {e}")))?,
        );
        let device = VfioDevice::new(
            sysfs,
            Arc::clone(&container) as Arc<dyn vfio_ioctls::VfioOps>,
            false,
        )
        .map_err(|e| PhysicalError::Vfio(format!("opening {}: {e}", sysfs.display())))?;
        let config_size = device
            .get_region_size(CONFIG_REGION)
            .min(regs::EXTENDED_CONFIG_SPACE_SIZE as u64) as u16;
        if config_size < regs::CONFIG_SPACE_SIZE as u16 {
            return Err(PhysicalError::Invalid(format!(
                "{}: config region is {config_size} bytes",
                sysfs.display()
            )));
        }
        Ok(Self {
            sysfs: sysfs.to_path_buf(),
            device,
            _container: container,
            config_size,
        })
    }

    fn config_dword(&self, offset: u16) -> u32 {
        let mut bytes = [0u8; 4];
        self.device
            .region_read(CONFIG_REGION, &mut bytes, offset.into());
        u32::from_le_bytes(bytes)
    }
}

impl PhysicalFunction for VfioPhysicalFunction {
    fn name(&self) -> String {
        self.sysfs.file_name().map_or_else(
            || self.sysfs.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        )
    }

    fn config_size(&self) -> u16 {
        self.config_size
    }

    fn config_read(&self, offset: u16, data: &mut [u8]) -> Result<(), PhysicalError> {
        check_access(
            || "config space".into(),
            offset.into(),
            data.len(),
            self.config_size.into(),
        )?;
        self.device.region_read(CONFIG_REGION, data, offset.into());
        Ok(())
    }

    fn config_write(&self, offset: u16, data: &[u8]) -> Result<(), PhysicalError> {
        check_access(
            || "config space".into(),
            offset.into(),
            data.len(),
            self.config_size.into(),
        )?;
        self.device.region_write(CONFIG_REGION, data, offset.into());
        Ok(())
    }

    fn bar(&self, index: u8) -> Option<PhysicalBar> {
        if usize::from(index) >= regs::BAR_COUNT {
            return None;
        }
        let size = self.device.get_region_size(index.into());
        if size == 0 {
            return None;
        }
        let register = self.config_dword(regs::bar_offset(usize::from(index)));
        let kind = if register & regs::BAR_IO != 0 {
            BarKind::Io
        } else if register & 0x6 == regs::BAR_MEM_64 {
            BarKind::Memory64
        } else {
            BarKind::Memory32
        };
        Some(PhysicalBar {
            kind,
            prefetchable: kind != BarKind::Io && register & regs::BAR_PREFETCH != 0,
            size,
        })
    }

    fn rom_size(&self) -> Option<u64> {
        Some(self.device.get_region_size(ROM_REGION)).filter(|s| *s != 0)
    }

    fn bar_read(&self, index: u8, offset: u64, data: &mut [u8]) -> Result<(), PhysicalError> {
        let size = self.bar(index).ok_or(PhysicalError::NoSuchBar(index))?.size;
        check_access(|| format!("BAR {index}"), offset, data.len(), size)?;
        self.device.region_read(index.into(), data, offset);
        Ok(())
    }

    fn bar_write(&self, index: u8, offset: u64, data: &[u8]) -> Result<(), PhysicalError> {
        let size = self.bar(index).ok_or(PhysicalError::NoSuchBar(index))?.size;
        check_access(|| format!("BAR {index}"), offset, data.len(), size)?;
        self.device.region_write(index.into(), data, offset);
        Ok(())
    }

    fn rom_read(&self, offset: u64, data: &mut [u8]) -> Result<(), PhysicalError> {
        let size = self
            .rom_size()
            .ok_or_else(|| PhysicalError::Invalid("no expansion ROM".into()))?;
        check_access(|| "expansion ROM".into(), offset, data.len(), size)?;
        self.device.region_read(ROM_REGION, data, offset);
        Ok(())
    }

    fn reset(&self) -> Result<(), PhysicalError> {
        self.device.reset();
        Ok(())
    }
}
