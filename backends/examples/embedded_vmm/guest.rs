//! The guest's view of a function on an in-process [`Machine`]: its legacy virtio driver's
//! register accesses become port-I/O exits (config space through ports 0xcf8/0xcfc), and it
//! waits for the function's INTx on the eventfd the machine injects from.

use std::sync::Arc;
use std::time::Duration;

use crate::machine::{CONFIG_ADDRESS, CONFIG_DATA, Irqs, Machine, Space};
use crate::vmm::GuestAccess;

/// Where the guest's firmware puts the legacy I/O BAR.
pub const IO_BASE: u16 = 0xc000;
/// Where it puts BAR 1 (the MSI-X table).
pub const MMIO_BASE: u32 = 0xfebf_0000;

/// A function on slot `slot` of a machine, as its guest driver reaches it.
#[derive(Clone)]
pub struct GuestPort {
    /// The machine.
    pub machine: Arc<Machine>,
    /// The function's slot (PCI device number).
    pub slot: usize,
    /// Its interrupts.
    pub irqs: Arc<Irqs>,
}

impl GuestPort {
    /// Selects config dword `offset` of the function.
    fn select(&self, offset: u16) {
        let address = 1u32 << 31 | (self.slot as u32) << 11 | u32::from(offset & 0xfc);
        self.machine
            .write(Space::Io, CONFIG_ADDRESS.into(), &address.to_le_bytes());
    }

    /// The firmware's part: the legacy I/O BAR at [`IO_BASE`], BAR 1 at [`MMIO_BASE`].
    pub fn place_bars(&self) {
        self.config_write(0x10, &u32::from(IO_BASE).to_le_bytes());
        self.config_write(0x14, &MMIO_BASE.to_le_bytes());
    }

    /// A guest load from `offset` of BAR 1: an MMIO exit.
    pub fn mmio_read(&self, offset: u64, data: &mut [u8]) {
        self.machine
            .read(Space::Mmio, u64::from(MMIO_BASE) + offset, data);
    }
}

impl GuestAccess for GuestPort {
    fn io_write(&self, offset: u8, data: &[u8]) {
        self.machine
            .write(Space::Io, u64::from(IO_BASE) + u64::from(offset), data);
    }

    fn io_read(&self, offset: u8, data: &mut [u8]) {
        self.machine
            .read(Space::Io, u64::from(IO_BASE) + u64::from(offset), data);
    }

    fn config_write(&self, offset: u16, data: &[u8]) {
        // Accesses within one dword, as a CPU makes them.
        for (i, chunk) in data.chunks(4).enumerate() {
            let at = offset + 4 * i as u16;
            self.select(at);
            self.machine
                .write(Space::Io, u64::from(CONFIG_DATA + (at & 3)), chunk);
        }
    }

    fn config_read(&self, offset: u16, data: &mut [u8]) {
        for (i, chunk) in data.chunks_mut(4).enumerate() {
            let at = offset + 4 * i as u16;
            self.select(at);
            self.machine
                .read(Space::Io, u64::from(CONFIG_DATA + (at & 3)), chunk);
        }
    }

    fn wait_interrupt(&self) -> bool {
        self.irqs.wait_intx(Duration::from_millis(10))
    }
}
