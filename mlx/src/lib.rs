//! The mlx backend: mlx-style VFs profiled on the PF before they are exposed (`default`, or
//! `migratable`, which gives up the features that cannot migrate), shown to the guest with the
//! operator's instance-type config space whatever the hardware generation underneath, and
//! migrated through firmware commands, as Linux's mlx5-vfio-pci does.
//!
//! Where to look: [`hw`] is the emulated hardware (PF with a command queue in DMA memory,
//! firmware, VFs with an echo data plane, two generations); [`backend`] is the `Backend`,
//! its functions, the driver side of the command queue, the migration hooks and the dirty
//! tracker.

pub mod backend;
pub mod hw;

pub use backend::MlxBackend;
