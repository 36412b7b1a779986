//! A software model of an Intel DSA physical function.
//!
//! The model is driven only through its hardware interface: [`DsaCore::bar0_read`] /
//! [`DsaDevice::bar0_write`] for the register file and commands, [`DsaDevice::portal_write`]
//! for descriptor submission (run on the device's worker thread). What the IOMMU does on real
//! hardware (binding a work queue's PASID to an address space, routing its interrupts) is
//! [`DsaCore::bind_address_space`] and [`DsaCore::bind_interrupts`]; a [`DsaDevice`]
//! dereferences to its [`DsaCore`].

pub mod completion;
pub mod descriptor;
pub mod device;
pub mod engine;
pub mod registers;
pub mod wq;

pub use device::{DsaCore, DsaDevice, DsaGeometry, PortalError};
#[cfg(test)]
pub(crate) mod testing;
