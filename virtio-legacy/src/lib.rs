//! The virtio-legacy backend: a modern-only virtio VF shown to the guest with a transitional
//! persona (a legacy I/O BAR), the legacy registers reached through the PF's admin
//! virtqueue, as Linux's virtio-vfio-pci does.
//!
//! Where to look: [`backend`] is the `Backend` (profiles `transitional` and `modern`),
//! [`function`] the provisioned function (legacy I/O BAR), [`admin`] the driver side of the
//! PF's admin virtqueue, [`migration`] the VF's migration through the PF's device-parts
//! commands, [`builtin`] the emulated PFs the `vfio-variant` command serves as
//! `virtio-blk` and `virtio-net`; [`hw`] is the emulated virtio hardware (split virtqueues,
//! the modern virtio-pci transport, a PF with an admin virtqueue, net and blk VFs), driven by
//! registers and DMA memory as real hardware is.

pub mod admin;
pub mod backend;
pub mod builtin;
pub mod function;
pub mod hw;
pub mod migration;

pub use backend::VirtioLegacyBackend;
