//! A passthrough function: a real device on kernel VFIO behind its layout.

use vfio_variant::backend::{Function, FunctionError};
use vfio_variant::config::ConfigEvent;
use vfio_variant::pci::regs;
use vfio_variant::physical::vfio::VfioPhysicalFunction;
use vfio_variant::physical::{DirectPath, PhysicalFunction};

use super::host::Binding;
use super::{Lease, Provisioned};

/// COMMAND bits the guest's virtual COMMAND register gives the device: decoding, bus
/// mastering and the INTx disable (which vfio-pci virtualizes in turn).
const COMMAND_TO_DEVICE: u16 =
    regs::COMMAND_IO | regs::COMMAND_MEMORY | regs::COMMAND_BUS_MASTER | regs::COMMAND_INTX_DISABLE;

/// A function of the passthrough backend. Dropping it closes the device (the kernel resets
/// it and unmaps its IOMMU), unbinds it from vfio-pci when create bound it, puts back the VF
/// settings create made, and gives the address back to the backend.
pub struct PassthroughFunction {
    device: VfioPhysicalFunction,
    /// Dropped in this order, after `device`: the device is closed, then unbound, then the
    /// VF settings are put back, then the address is free again.
    _binding: Option<Binding>,
    _provisioned: Option<Provisioned>,
    _lease: Lease,
    address: String,
}

impl PassthroughFunction {
    /// Wraps an opened device; when the function is dropped, the device is closed, `binding`
    /// undone, what `provisioned` set on the VF put back and the `lease` given back.
    pub fn new(
        device: VfioPhysicalFunction,
        address: String,
        binding: Option<Binding>,
        provisioned: Option<Provisioned>,
        lease: Lease,
    ) -> Self {
        Self {
            device,
            _binding: binding,
            _provisioned: provisioned,
            _lease: lease,
            address,
        }
    }
}

impl Drop for PassthroughFunction {
    fn drop(&mut self) {
        // The fields are dropped after this, in their declared order.
        self.device.release();
    }
}

impl Function for PassthroughFunction {
    fn physical(&self) -> Option<&dyn PhysicalFunction> {
        Some(&self.device)
    }

    /// A real device DMAs into memory pinned in its IOMMU, never through messages.
    fn needs_shared_memory(&self) -> bool {
        true
    }

    fn direct(&self) -> Option<&dyn DirectPath> {
        Some(&self.device)
    }

    fn config_changed(&self, event: ConfigEvent) {
        let ConfigEvent::Command { old, new } = event else {
            return;
        };
        if (old ^ new) & COMMAND_TO_DEVICE == 0 {
            return;
        }
        let mut command = [0u8; 2];
        if let Err(e) = self.device.config_read(regs::COMMAND, &mut command) {
            tracing::warn!("{}: reading COMMAND: {e}", self.address);
            return;
        }
        let value = (u16::from_le_bytes(command) & !COMMAND_TO_DEVICE) | (new & COMMAND_TO_DEVICE);
        if let Err(e) = self
            .device
            .config_write(regs::COMMAND, &value.to_le_bytes())
        {
            tracing::warn!("{}: writing COMMAND: {e}", self.address);
        }
    }

    fn reset(&self) -> Result<(), FunctionError> {
        Ok(self.device.reset()?)
    }
}
