//! Emulated virtio hardware: what the backend drives as it would drive a real virtio PF and
//! its VFs.
//!
//! - [`virtqueue`]: split virtqueues in DMA memory;
//! - [`transport`]: the modern virtio-pci transport of one function (common config, notify,
//!   ISR and device config in a memory BAR) and the legacy register view of it;
//! - [`pci`]: the functions' physical config spaces;
//! - [`pf`]: a PF with an admin virtqueue taking the legacy and device-parts admin
//!   commands for its VFs;
//! - [`vf`]: modern-only VFs (net 0x1041, blk 0x1042);
//! - [`parts`]: a function's state as virtio device parts (device-parts migration);
//! - [`blk`], [`net`]: the device types behind a VF (a file; a datagram socket);
//!
//! Every model implements `vfio_variant::physical::PhysicalFunction` and takes guest memory
//! through a `vfio_variant::backend::DmaAccess` given when it is built (host memory and the
//! late-bound DMA and interrupt slots are the framework's, `vfio_variant::backend::emulated`).

pub mod blk;
pub mod net;
pub mod parts;
pub mod pci;
pub mod pf;
pub mod transport;
pub mod vf;
pub mod virtqueue;

use vfio_variant::backend::DmaAccess;

use virtqueue::{Virtqueue, VirtqueueError};

/// Device status: the driver found the device.
pub const STATUS_ACKNOWLEDGE: u8 = 1;
/// Device status: the driver knows how to drive it.
pub const STATUS_DRIVER: u8 = 2;
/// Device status: the driver is ready.
pub const STATUS_DRIVER_OK: u8 = 4;
/// Device status: feature negotiation is complete.
pub const STATUS_FEATURES_OK: u8 = 8;
/// Device status: the device hit an error and needs a reset.
pub const STATUS_NEEDS_RESET: u8 = 0x40;
/// Device status: the driver gave up.
pub const STATUS_FAILED: u8 = 0x80;

/// Feature bit: indirect descriptors.
pub const VIRTIO_F_INDIRECT_DESC: u64 = 1 << 28;
/// Feature bit: virtio 1.x (modern) device.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;
/// Feature bit: the device has an admin virtqueue.
pub const VIRTIO_F_ADMIN_VQ: u64 = 1 << 41;

/// Virtio device type: network card.
pub const DEVICE_TYPE_NET: u16 = 1;
/// Virtio device type: block device.
pub const DEVICE_TYPE_BLK: u16 = 2;

/// The device type behind a transport: its features, config and queue processing.
pub trait VirtioDevice: Send {
    /// Virtio device type (1 net, 2 blk).
    fn device_type(&self) -> u16;
    /// Device-specific feature bits offered (the transport adds its own).
    fn features(&self) -> u64;
    /// Number of queues.
    fn num_queues(&self) -> u16;
    /// The device-specific config area (read-only to the driver; the transport keeps a copy,
    /// taken when it is built and after [`VirtioDevice::restore_config`]).
    fn config(&self) -> Vec<u8>;
    /// Whether a device config saved from another device of this type can be restored here
    /// (by default only an identical one: the config describes the device, as a disk's
    /// capacity does).
    fn accepts_config(&self, config: &[u8]) -> bool {
        config == self.config().as_slice()
    }
    /// Takes a saved config [`VirtioDevice::accepts_config`] accepted (nothing to do by
    /// default).
    fn restore_config(&mut self, config: &[u8]) {
        let _ = config;
    }
    /// Processes what is available on queue `index` after a notification; `features` are the
    /// negotiated ones. Returns whether used buffers were added. Runs off the register path
    /// (the transport's worker), and may wait for guest memory reached by messages.
    fn process(
        &mut self,
        index: u16,
        queue: &mut Virtqueue,
        mem: &dyn DmaAccess,
        features: u64,
    ) -> Result<bool, VirtqueueError>;
    /// Queues that also make progress without a notification (a NIC's receive queue).
    fn polled_queues(&self) -> &[u16] {
        &[]
    }
    /// Device reset.
    fn reset(&mut self) {}
}
