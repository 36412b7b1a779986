//! The idxd backend: Intel DSA work queues exposed as on-demand sub-devices.
//!
//! [`hw`] is a software model of a DSA physical function: its BAR0 register file, work queues
//! with portals, and an engine executing descriptors against DMA memory bound per work queue
//! (the PASID/IOMMU binding). [`backend`] drives that model exactly as a host driver drives
//! the hardware (register writes, commands, CMDSTS), and serves each work queue to a VMM as a
//! whole virtual DSA device with one work queue and one group.

pub mod backend;
pub mod hw;

pub use backend::{IdxdBackend, IdxdConfig, IdxdError, IdxdFunction, LAYOUT_1DWQ};
