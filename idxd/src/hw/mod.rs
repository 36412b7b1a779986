//! A software model of an Intel DSA physical function.
//!
//! The model is driven only through its hardware interface: [`DsaDevice::bar0_read`] /
//! [`DsaDevice::bar0_write`] for the register file and commands, [`DsaDevice::portal_write`]
//! for descriptor submission. What the IOMMU does on real hardware (binding a work queue's
//! PASID to an address space, routing its interrupts) is [`DsaDevice::bind_address_space`] and
//! [`DsaDevice::bind_interrupts`].

pub mod completion;
pub mod descriptor;
pub mod device;
pub mod engine;
pub mod registers;
pub mod wq;

pub use device::{DsaDevice, DsaGeometry, PortalError};
#[cfg(test)]
pub(crate) mod testing;
