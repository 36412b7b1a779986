//! A real physical function driven through kernel VFIO (group/container API, vfio-ioctls),
//! with the data path vfio-pci-core gives a kernel variant driver: client memory in the
//! device's IOMMU (`iommu.rs`), the client's eventfds wired to the device's interrupts, and
//! BAR mmaps of the device file (see [`DirectPath`]).
//!
//! Only the group/container API is used: the guest kernels this is tested on have no iommufd
//! (CONFIG_IOMMUFD is not set), so the cdev path is not offered.

mod ioctl;
mod iommu;

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use vfio_ioctls::{VfioContainer, VfioDevice, VfioError, VfioRegionInfoCap};

use super::{
    DirectBar, DirectError, DirectPath, MmapFile, PhysicalBar, PhysicalError, PhysicalFunction,
    check_access,
};
use crate::layout::{BarKind, MmapArea};
use crate::pci::region::{CONFIG_REGION, ROM_REGION};
use crate::pci::regs;
use crate::vfio_user::irq::{PCI_NUM_IRQS, SetIrqs, SetIrqsFlags};
use iommu::{Iommu, IommuMappings};

/// VFIO region flag: the region may be mmapped (VFIO_REGION_INFO_FLAG_MMAP).
const REGION_FLAG_MMAP: u32 = 1 << 2;

/// A function's VFIO container as its IOMMU.
struct Container(Arc<VfioContainer>);

impl Iommu for Container {
    unsafe fn map(
        &self,
        iova: u64,
        size: u64,
        vaddr: *mut u8,
        writable: bool,
    ) -> std::io::Result<()> {
        // SAFETY: the container's fd lives as long as `self.0`; the caller keeps the memory
        // mapped until it is unmapped from the IOMMU.
        let container = unsafe { BorrowedFd::borrow_raw(self.0.as_raw_fd()) };
        // SAFETY: as required of this method's caller.
        unsafe { ioctl::map_dma(container, iova, size, vaddr, writable) }
    }

    fn unmap(&self, iova: u64, size: u64) -> std::io::Result<()> {
        // SAFETY: the container's fd lives as long as `self.0`.
        let container = unsafe { BorrowedFd::borrow_raw(self.0.as_raw_fd()) };
        ioctl::unmap_dma(container, iova, size)
    }
}

/// A PCI function bound to vfio-pci, opened through its IOMMU group.
pub struct VfioPhysicalFunction {
    sysfs: PathBuf,
    /// The device fd again, for VMMs to mmap BARs from. Declared before `device`: it must be
    /// closed first, or the group cannot leave its container when `device` is dropped.
    device_file: Arc<OwnedFd>,
    device: VfioDevice,
    /// Client memory in the container's IOMMU; the container (and group) stay open with it.
    dma: IommuMappings<Container>,
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
        .map_err(|e| open_error(sysfs, e))?;
        let config_size = device
            .get_region_size(CONFIG_REGION)
            .min(regs::EXTENDED_CONFIG_SPACE_SIZE as u64) as u16;
        if config_size < regs::CONFIG_SPACE_SIZE as u16 {
            return Err(PhysicalError::Invalid(format!(
                "{}: config region is {config_size} bytes",
                sysfs.display()
            )));
        }
        // SAFETY: the device fd is open for as long as `device` lives (this call only).
        let borrowed = unsafe { BorrowedFd::borrow_raw(device.as_raw_fd()) };
        let device_file = borrowed
            .try_clone_to_owned()
            .map_err(|source| PhysicalError::Io {
                what: format!("{}: duplicating the VFIO device fd", sysfs.display()),
                source,
            })?;
        Ok(Self {
            sysfs: sysfs.to_path_buf(),
            device_file: Arc::new(device_file),
            device,
            dma: IommuMappings::new(Container(container)),
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
        ioctl::reset(self.device_file.as_fd()).map_err(|source| PhysicalError::Io {
            what: format!("{}: VFIO_DEVICE_RESET", self.name()),
            source,
        })
    }
}

/// Explains a failure to open a function through its group: the cases an operator can fix.
fn open_error(sysfs: &Path, e: VfioError) -> PhysicalError {
    let name = sysfs.display();
    match &e {
        VfioError::OpenGroup(source, group) if source.raw_os_error() == Some(libc::EBUSY) => {
            PhysicalError::Vfio(format!(
                "{name}: IOMMU group {group} is busy: another process (a VMM, another server) \
                 has /dev/vfio/{group} open"
            ))
        }
        VfioError::GroupViable => PhysicalError::Vfio(format!(
            "{name}: its IOMMU group is not viable: every device in it must be bound to \
             vfio-pci (or have no driver); see {name}/iommu_group/devices"
        )),
        _ => PhysicalError::Vfio(format!("opening {name}: {e}")),
    }
}

impl VfioPhysicalFunction {
    /// Data of a SET_IRQS request as the kernel takes it: bools as bytes, eventfds as fd
    /// numbers (-1 for each vector when none came: unwire them).
    fn irq_data(request: &SetIrqs, fds: &[OwnedFd]) -> Result<Vec<u8>, DirectError> {
        let data = request.flags & SetIrqsFlags::DATA_MASK;
        if data == SetIrqsFlags::DATA_BOOL {
            if request.data.len() != request.count as usize {
                return Err(DirectError::Irq(format!(
                    "{} bools for {} vectors",
                    request.data.len(),
                    request.count
                )));
            }
            return Ok(request.data.iter().map(|b| u8::from(*b)).collect());
        }
        if data != SetIrqsFlags::DATA_EVENTFD {
            return Ok(Vec::new());
        }
        if !fds.is_empty() && fds.len() != request.count as usize {
            return Err(DirectError::Irq(format!(
                "{} eventfds for {} vectors",
                fds.len(),
                request.count
            )));
        }
        let numbers: Vec<i32> = if fds.is_empty() {
            vec![-1; request.count as usize]
        } else {
            fds.iter().map(|f| f.as_raw_fd()).collect()
        };
        Ok(numbers.iter().flat_map(|n| n.to_ne_bytes()).collect())
    }
}

impl DirectPath for VfioPhysicalFunction {
    fn dma_map(
        &self,
        iova: u64,
        size: u64,
        offset: u64,
        fd: Option<OwnedFd>,
        writable: bool,
    ) -> Result<(), DirectError> {
        self.dma.map(iova, size, offset, fd, writable)
    }

    fn dma_unmap(&self, iova: u64, size: u64) -> Result<(), DirectError> {
        self.dma.unmap(iova, size)
    }

    fn dma_unmap_all(&self) {
        self.dma.clear();
    }

    fn irq_count(&self, index: u32) -> u32 {
        self.device.get_irq_info(index).map_or(0, |i| i.count)
    }

    fn set_irqs(&self, request: &SetIrqs, fds: &[OwnedFd]) -> Result<(), DirectError> {
        let data = Self::irq_data(request, fds)?;
        ioctl::set_irqs(
            self.device_file.as_fd(),
            request.flags.bits(),
            request.index,
            request.start,
            request.count,
            &data,
        )
        .map_err(|source| DirectError::Kernel {
            what: format!(
                "VFIO_DEVICE_SET_IRQS index {} {}+{} flags {:#x}",
                request.index,
                request.start,
                request.count,
                request.flags.bits()
            ),
            source,
        })
    }

    fn bar_file(&self, bar: u8) -> Option<DirectBar> {
        if usize::from(bar) >= regs::BAR_COUNT {
            return None;
        }
        let index = u32::from(bar);
        let size = self.device.get_region_size(index);
        if size == 0 {
            return None;
        }
        let mappable = if self.device.get_region_flags(index) & REGION_FLAG_MMAP == 0 {
            Vec::new()
        } else {
            let sparse = self
                .device
                .get_region_caps(index)
                .into_iter()
                .find_map(|c| match c {
                    VfioRegionInfoCap::SparseMmap(s) => Some(s.areas),
                    _ => None,
                });
            match sparse {
                Some(areas) => areas
                    .iter()
                    .map(|a| MmapArea {
                        offset: a.offset,
                        size: a.size,
                    })
                    .collect(),
                None => vec![MmapArea { offset: 0, size }],
            }
        };
        Some(DirectBar {
            file: MmapFile {
                fd: Arc::clone(&self.device_file),
                offset: self.device.get_region_offset(index),
            },
            mappable,
        })
    }

    fn release(&self) {
        self.dma.clear();
        for index in 0..PCI_NUM_IRQS {
            if self.irq_count(index) == 0 {
                continue;
            }
            let flags = (SetIrqsFlags::DATA_NONE | SetIrqsFlags::ACTION_TRIGGER).bits();
            if let Err(e) = ioctl::set_irqs(self.device_file.as_fd(), flags, index, 0, 0, &[]) {
                tracing::debug!("{}: disabling IRQ index {index}: {e}", self.name());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eventfd() -> OwnedFd {
        rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC).unwrap()
    }

    #[test]
    fn irq_data_is_what_the_kernel_takes() {
        let trigger = SetIrqsFlags::DATA_EVENTFD | SetIrqsFlags::ACTION_TRIGGER;
        let set = SetIrqs::new(trigger, 2, 0, 2);
        let fds = [eventfd(), eventfd()];
        let data = VfioPhysicalFunction::irq_data(&set, &fds).unwrap();
        let numbers: Vec<i32> = data
            .chunks(4)
            .map(|c| i32::from_ne_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(numbers, vec![fds[0].as_raw_fd(), fds[1].as_raw_fd()]);
        // No fds: every vector is unwired.
        let data = VfioPhysicalFunction::irq_data(&set, &[]).unwrap();
        assert_eq!(
            data,
            [(-1i32).to_ne_bytes(), (-1i32).to_ne_bytes()].concat()
        );
        // One fd for two vectors is refused.
        assert!(VfioPhysicalFunction::irq_data(&set, &fds[..1]).is_err());
        // Bools as bytes, one per vector.
        let mut mask = SetIrqs::new(SetIrqsFlags::DATA_BOOL | SetIrqsFlags::ACTION_MASK, 0, 0, 1);
        mask.data = vec![true];
        assert_eq!(VfioPhysicalFunction::irq_data(&mask, &[]).unwrap(), [1]);
        mask.data = vec![];
        assert!(VfioPhysicalFunction::irq_data(&mask, &[]).is_err());
        let none = SetIrqs::new(
            SetIrqsFlags::DATA_NONE | SetIrqsFlags::ACTION_UNMASK,
            0,
            0,
            1,
        );
        assert!(
            VfioPhysicalFunction::irq_data(&none, &[])
                .unwrap()
                .is_empty()
        );
    }
}
