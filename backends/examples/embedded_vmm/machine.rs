//! The VMM side of an in-process machine: guest memory mapped from a memfd and given to the
//! functions as their DMA, PCI config mechanism #1 (ports 0xcf8/0xcfc), and the routing of
//! port-I/O and MMIO exits to the BARs the guest programmed. Interrupts come back on an
//! eventfd per function. No sockets, no server: every exit is a call on a
//! [`VirtualFunction`].

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use memmap2::{MmapOptions, MmapRaw};
use parking_lot::{Mutex, RwLock};
use rustix::event::{EventfdFlags, PollFd, PollFlags, Timespec, eventfd, poll};
use vfio_variant::backend::{DmaAccess, DmaError, FunctionContext, Interrupt, InterruptSink};
use vfio_variant::device::{CONFIG_REGION, VirtualFunction};
use vfio_variant::layout::BarKind;
use vfio_variant::pci::regs;

/// The config address port of PCI configuration mechanism #1.
pub const CONFIG_ADDRESS: u16 = 0xcf8;
/// Its data ports (0xcfc..=0xcff).
pub const CONFIG_DATA: u16 = 0xcfc;

/// Guest RAM: a memfd mapped into the VMM at guest physical `base`.
pub struct GuestMemory {
    base: u64,
    map: MmapRaw,
}

impl GuestMemory {
    /// Maps `size` bytes of `memfd` as guest RAM at `base`.
    pub fn map(memfd: &OwnedFd, base: u64, size: usize) -> std::io::Result<Self> {
        let map = MmapOptions::new().len(size).map_raw(memfd.as_raw_fd())?;
        Ok(Self { base, map })
    }

    /// Where `iova..iova+len` is in the mapping.
    fn at(&self, iova: u64, len: usize) -> Result<usize, DmaError> {
        iova.checked_sub(self.base)
            .and_then(|at| usize::try_from(at).ok())
            .filter(|at| at.checked_add(len).is_some_and(|end| end <= self.map.len()))
            .ok_or(DmaError::Unmapped { iova, len })
    }
}

impl DmaAccess for GuestMemory {
    fn read(&self, iova: u64, data: &mut [u8]) -> Result<(), DmaError> {
        let at = self.at(iova, data.len())?;
        // SAFETY: `at` checked that the range lies inside the mapping, which lives as long as
        // `self`; guest memory is shared with the guest, so bytes may change under the copy
        // (as with any DMA), which a byte copy tolerates.
        unsafe {
            std::ptr::copy(self.map.as_ptr().add(at), data.as_mut_ptr(), data.len());
        }
        Ok(())
    }

    fn write(&self, iova: u64, data: &[u8]) -> Result<(), DmaError> {
        let at = self.at(iova, data.len())?;
        // SAFETY: as in `read`: inside the live, writable shared mapping.
        unsafe {
            std::ptr::copy(data.as_ptr(), self.map.as_mut_ptr().add(at), data.len());
        }
        Ok(())
    }
}

/// A function's interrupts as the VMM takes them: the INTx line and message vectors each
/// signal an eventfd (as KVM's irqfds would inject them).
pub struct Irqs {
    /// Signalled each time the INTx line rises.
    pub intx: OwnedFd,
    /// Signalled for each MSI/MSI-X vector raised.
    pub msg: OwnedFd,
}

impl Irqs {
    fn new() -> std::io::Result<Self> {
        Ok(Self {
            intx: eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?,
            msg: eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?,
        })
    }

    /// Waits up to `timeout` for the INTx line to rise; true (and the event taken) if it did.
    pub fn wait_intx(&self, timeout: Duration) -> bool {
        let timeout = Timespec {
            tv_sec: timeout.as_secs() as _,
            tv_nsec: timeout.subsec_nanos().into(),
        };
        let mut fds = [PollFd::new(&self.intx, PollFlags::IN)];
        if !matches!(poll(&mut fds, Some(&timeout)), Ok(n) if n > 0) {
            return false;
        }
        let mut count = [0u8; 8];
        rustix::io::read(&self.intx, &mut count).is_ok()
    }
}

impl InterruptSink for Irqs {
    fn raise(&self, interrupt: Interrupt) {
        let fd = match interrupt {
            // The device raises the line's level on each change; the rising edge injects.
            Interrupt::Intx(true) => &self.intx,
            Interrupt::Intx(false) => return,
            Interrupt::Msi(_) | Interrupt::Msix(_) | Interrupt::Error | Interrupt::Request => {
                &self.msg
            }
        };
        let _ = rustix::io::write(fd, &1u64.to_ne_bytes());
    }
}

/// One BAR decoded on the bus.
#[derive(Clone, Copy)]
struct Window {
    start: u64,
    size: u64,
    slot: usize,
    region: u32,
}

/// A PCI bus of in-process functions (bus 0, device number = slot) with the VMM's guest
/// memory: what a VMM's exit handlers call.
pub struct Machine {
    memory: Arc<GuestMemory>,
    functions: RwLock<Vec<Arc<VirtualFunction>>>,
    io: RwLock<Vec<Window>>,
    mmio: RwLock<Vec<Window>>,
    /// The last value written to [`CONFIG_ADDRESS`].
    config_address: Mutex<u32>,
}

/// What a vCPU exit asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Space {
    /// Port I/O.
    Io,
    /// Memory-mapped I/O.
    Mmio,
}

impl Machine {
    /// A machine with `memory` as guest RAM and no functions.
    pub fn new(memory: GuestMemory) -> Self {
        Self {
            memory: Arc::new(memory),
            functions: RwLock::new(Vec::new()),
            io: RwLock::new(Vec::new()),
            mmio: RwLock::new(Vec::new()),
            config_address: Mutex::new(0),
        }
    }

    /// Plugs `function` into the next slot: gives it guest memory and an interrupt sink, and
    /// decodes the BARs its config space holds (a migrated function's). Returns the slot and
    /// the function's interrupts.
    pub fn plug(&self, function: Arc<VirtualFunction>) -> std::io::Result<(usize, Arc<Irqs>)> {
        let irqs = Arc::new(Irqs::new()?);
        function.attach(FunctionContext {
            dma: Arc::clone(&self.memory) as _,
            interrupts: Arc::clone(&irqs) as _,
        });
        let slot = {
            let mut functions = self.functions.write();
            functions.push(function);
            functions.len() - 1
        };
        self.decode(slot);
        Ok((slot, irqs))
    }

    /// Re-reads where every function's BARs are: after a migration restored their config
    /// space, before the vCPUs run.
    pub fn rescan(&self) {
        for slot in 0..self.functions.read().len() {
            self.decode(slot);
        }
    }

    /// Re-reads where slot `slot`'s BARs are (after the guest moved one).
    fn decode(&self, slot: usize) {
        let function = Arc::clone(&self.functions.read()[slot]);
        let template = function.template();
        let layout = template.layout();
        let (mut io, mut mmio) = (self.io.write(), self.mmio.write());
        io.retain(|w| w.slot != slot);
        mmio.retain(|w| w.slot != slot);
        for bar in layout.bars.iter().flatten() {
            let Some(start) = function.bar_address(bar.index).filter(|&a| a != 0) else {
                continue;
            };
            let window = Window {
                start,
                size: bar.size,
                slot,
                region: bar.index.into(),
            };
            match bar.kind {
                BarKind::Io => io.push(window),
                BarKind::Memory32 | BarKind::Memory64 => mmio.push(window),
            }
        }
    }

    /// Where `address` falls: the function, its region and the offset in it.
    fn route(
        &self,
        space: Space,
        address: u64,
        len: usize,
    ) -> Option<(Arc<VirtualFunction>, u32, u64)> {
        let windows = match space {
            Space::Io => self.io.read(),
            Space::Mmio => self.mmio.read(),
        };
        let window = windows
            .iter()
            .find(|w| {
                address >= w.start
                    && (address - w.start)
                        .checked_add(len as u64)
                        .is_some_and(|end| end <= w.size)
            })
            .copied()?;
        drop(windows);
        let function = Arc::clone(self.functions.read().get(window.slot)?);
        Some((function, window.region, address - window.start))
    }

    /// The function and config offset [`CONFIG_ADDRESS`] selects, for an access at data port
    /// `port`.
    fn config_target(&self, port: u16) -> Option<(usize, u64)> {
        let address = *self.config_address.lock();
        let (enabled, bus, device, function) = (
            address & 1 << 31 != 0,
            (address >> 16) & 0xff,
            (address >> 11) & 0x1f,
            (address >> 8) & 0x7,
        );
        if !enabled || bus != 0 || function != 0 {
            return None;
        }
        let offset = u64::from(address & 0xfc) + u64::from(port - CONFIG_DATA);
        Some((device as usize, offset))
    }

    /// A write exit. Accesses nothing decodes are dropped, as on real hardware.
    pub fn write(&self, space: Space, address: u64, data: &[u8]) {
        if space == Space::Io && address == u64::from(CONFIG_ADDRESS) && data.len() == 4 {
            *self.config_address.lock() = u32::from_le_bytes(data.try_into().unwrap_or([0; 4]));
            return;
        }
        if space == Space::Io
            && (u64::from(CONFIG_DATA)..u64::from(CONFIG_DATA) + 4).contains(&address)
        {
            let Some((slot, offset)) = self.config_target(address as u16) else {
                return;
            };
            let Some(function) = self.functions.read().get(slot).cloned() else {
                return;
            };
            if let Err(e) = function.region_write(CONFIG_REGION, offset, data) {
                eprintln!("config write at {offset:#x} of slot {slot}: {e}");
            }
            let bars = u64::from(regs::BAR0)..u64::from(regs::BAR0) + 24;
            if bars.contains(&offset) {
                self.decode(slot);
            }
            return;
        }
        if let Some((function, region, offset)) = self.route(space, address, data.len())
            && let Err(e) = function.region_write(region, offset, data)
        {
            eprintln!("{space:?} write at {address:#x}: {e}");
        }
    }

    /// A read exit. Nothing decoded reads all ones.
    pub fn read(&self, space: Space, address: u64, data: &mut [u8]) {
        data.fill(0xff);
        if space == Space::Io
            && (u64::from(CONFIG_DATA)..u64::from(CONFIG_DATA) + 4).contains(&address)
        {
            let Some((slot, offset)) = self.config_target(address as u16) else {
                return;
            };
            if let Some(function) = self.functions.read().get(slot).cloned() {
                let _ = function.region_read(CONFIG_REGION, offset, data);
            }
            return;
        }
        if let Some((function, region, offset)) = self.route(space, address, data.len())
            && let Err(e) = function.region_read(region, offset, data)
        {
            eprintln!("{space:?} read at {address:#x}: {e}");
        }
    }
}
