//! vfio-variant: a userspace framework for VFIO variant drivers.
//!
//! A physical PCI function (a virtio VF, an mlx-style VF, an idxd work queue) is profiled by a
//! vendor [`backend`] and exposed as a virtual function whose config space is stated by an
//! operator's [`vpci`] layout file, emulated by [`config`], not copied from the hardware.
//!
//! Layers, top to bottom: server (vfio-user) → device (compiled layout + config emulation +
//! region routing) → backend ([`backend::Backend`]) → physical function
//! ([`physical::PhysicalFunction`]: kernel VFIO or an emulated hardware model). Under all of
//! them sit the vocabularies: [`migration`], [`pci`] (registers and the capability table),
//! [`layout`] (the data model of a layout file, which [`vpci`] reads and writes) and
//! [`vfio_user`] (the protocol).
//!
//! The modules in import order, bottom first (`cargo xtask layers` checks that no import runs
//! upward): [`migration`], [`pci`], [`layout`], [`vfio_user`], [`physical`], [`config`],
//! [`vpci`], [`backend`], [`device`], [`migration_driver`], [`plugin`], [`server`], `testing`.

pub mod backend;
pub mod config;
pub mod device;
pub mod layout;
pub mod migration;
pub mod migration_driver;
pub mod pci;
pub mod physical;
pub mod plugin;
pub mod server;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod vfio_user;
pub mod vpci;
