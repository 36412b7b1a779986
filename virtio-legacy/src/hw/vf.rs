//! Modern-only virtio VFs: device ID 0x1040 + device type (0x1041 net, 0x1042 blk),
//! revision 1, no I/O BAR. BAR 0 holds the virtio registers, BAR 2 the MSI-X table.
//!
//! The PF's legacy admin commands act on a VF through [`VirtioVf::legacy_common_read`] and
//! friends: the legacy register view of the same transport state, as the legacy interface
//! defines it.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::Mutex;
use rustix::event::{EventfdFlags, PollFd, PollFlags, Timespec, eventfd, poll};
use vfio_variant::backend::{DmaAccess, InterruptSink};
use vfio_variant::layout::BarKind;
use vfio_variant::physical::{PhysicalBar, PhysicalError, PhysicalFunction};

use super::pci::{
    self, CONFIG_SIZE, ConfigSpace, Identity, MSIX_BAR, MSIX_BAR_SIZE, MSIX_CAP, MSIX_ENABLE,
    PCIE_CAP, PCIE_FLR, VIRTIO_BAR,
};
use super::transport::{BAR_SIZE, LegacyError, Transport};
use super::{DEVICE_TYPE_BLK, DEVICE_TYPE_NET, VirtioDevice};

/// A thread moving what arrives for a VF (host frames) into its queues; stops on drop.
pub struct Poller {
    stop: Arc<AtomicBool>,
    /// Times the thread has run the queues.
    rounds: Arc<AtomicU64>,
    /// Written on drop, to end the thread's wait.
    wake: Arc<OwnedFd>,
    thread: Option<JoinHandle<()>>,
}

impl Poller {
    /// How many times the thread has woken to run the queues (each for frames that arrived,
    /// or to look again at frames waiting for buffers).
    pub fn rounds(&self) -> u64 {
        self.rounds.load(Ordering::SeqCst)
    }
}

impl Drop for Poller {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = rustix::io::write(&*self.wake, &1u64.to_ne_bytes());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Waits until `source` is readable (when given), `wake` is written, or `timeout` passes.
fn wait(source: Option<BorrowedFd<'_>>, wake: BorrowedFd<'_>, timeout: Option<Duration>) {
    let mut fds = vec![PollFd::new(&wake, PollFlags::IN)];
    if let Some(source) = &source {
        fds.push(PollFd::new(source, PollFlags::IN));
    }
    let timeout = timeout.and_then(|t| Timespec::try_from(t).ok());
    // EINTR and the like: the caller's loop looks again.
    let _ = poll(&mut fds, timeout.as_ref());
}

/// Whether `fd` is readable now.
fn readable(fd: BorrowedFd<'_>) -> bool {
    let mut fds = [PollFd::new(&fd, PollFlags::IN)];
    matches!(poll(&mut fds, Some(&Timespec::default())), Ok(n) if n > 0)
}

/// A modern-only virtio VF.
pub type VirtioVf = VirtioFunction;

/// A virtio function (a VF, or the function part of a PF) as hardware: config space, the
/// virtio register BAR and the MSI-X BAR.
pub struct VirtioFunction {
    name: String,
    transport: Transport,
    config: Mutex<ConfigSpace>,
    msix: Mutex<Vec<u8>>,
}

impl VirtioFunction {
    /// A VF named `name` around `device`, using `dma` for guest memory and raising its
    /// interrupts on `interrupts`.
    pub fn new(
        name: impl Into<String>,
        device: Box<dyn VirtioDevice>,
        dma: Arc<dyn DmaAccess>,
        interrupts: Arc<dyn InterruptSink>,
    ) -> Self {
        let device_type = device.device_type();
        let (class_code, msix_vectors) = match device_type {
            DEVICE_TYPE_NET => (0x02_0000, 3),
            DEVICE_TYPE_BLK => (0x01_0000, 2),
            _ => (0xff_0000, 2),
        };
        let config = ConfigSpace::virtio(Identity {
            device_id: 0x1040 + device_type,
            revision: 1,
            class_code,
            subsystem_id: 0x1100,
            msix_vectors,
        });
        let name = name.into();
        let transport =
            Transport::new(device, 0, None, dma, interrupts).with_worker(format!("{name}-queues"));
        Self::from_parts(name, config, transport)
    }

    /// A function from its config space and transport (the PF builds its own).
    pub(super) fn from_parts(name: String, config: ConfigSpace, transport: Transport) -> Self {
        Self {
            name,
            transport,
            config: Mutex::new(config),
            msix: Mutex::new(vec![0; MSIX_BAR_SIZE as usize]),
        }
    }

    /// The virtio transport (status, features) of the VF.
    pub fn transport(&self) -> &Transport {
        &self.transport
    }

    /// Waits until the notifications made so far are processed (queues are processed on
    /// the VF's own thread, after the notifying write has returned).
    pub fn quiesce(&self) {
        self.transport.quiesce();
    }

    /// Lets the receive side make progress (frames the host sent to a net VF).
    pub fn poll(&self) {
        self.transport.poll();
    }

    /// Starts a thread that calls [`VirtioVf::poll`] when `source` (the link, see
    /// [`crate::hw::net::NetDevice::wake_source`]) becomes readable, and sleeps otherwise: an
    /// idle VF wakes nobody. When frames are still waiting after the queues ran (the driver
    /// has given no buffers for them; its next notify delivers them), it looks again every
    /// `backoff` rather than spin on the readable link. The thread stops when the returned
    /// [`Poller`] is dropped or the VF is gone.
    pub fn spawn_poller(
        self: &Arc<Self>,
        source: OwnedFd,
        backoff: Duration,
    ) -> std::io::Result<Poller> {
        let vf = Arc::downgrade(self);
        let stop = Arc::new(AtomicBool::new(false));
        let wake = Arc::new(eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?);
        let rounds = Arc::new(AtomicU64::new(0));
        let (flag, woken, counter) = (Arc::clone(&stop), Arc::clone(&wake), Arc::clone(&rounds));
        let thread = std::thread::Builder::new()
            .name(format!("{}-poller", self.name))
            .spawn(move || {
                let mut waiting = false;
                while !flag.load(Ordering::SeqCst) {
                    if waiting {
                        wait(None, woken.as_fd(), Some(backoff));
                    } else {
                        wait(Some(source.as_fd()), woken.as_fd(), None);
                    }
                    if flag.load(Ordering::SeqCst) {
                        return;
                    }
                    let Some(vf) = vf.upgrade() else { return };
                    counter.fetch_add(1, Ordering::SeqCst);
                    vf.poll();
                    vf.quiesce();
                    waiting = readable(source.as_fd());
                }
            })?;
        Ok(Poller {
            stop,
            rounds,
            wake,
            thread: Some(thread),
        })
    }

    /// Whether MSI-X is enabled in config space (the legacy device config then starts at 24).
    pub fn msix_enabled(&self) -> bool {
        self.config.lock().read16(MSIX_CAP + 2) & MSIX_ENABLE != 0
    }

    /// Legacy common register read (offset in the legacy I/O BAR, below 24).
    pub fn legacy_common_read(&self, offset: u8, data: &mut [u8]) -> Result<(), LegacyError> {
        self.transport.legacy_common_read(offset, data)
    }

    /// Legacy common register write.
    pub fn legacy_common_write(&self, offset: u8, data: &[u8]) -> Result<(), LegacyError> {
        self.transport.legacy_common_write(offset, data)
    }

    /// Legacy device config read (offset from the start of the device config).
    pub fn legacy_device_read(&self, offset: u8, data: &mut [u8]) -> Result<(), LegacyError> {
        self.transport.device_config_read(offset.into(), data)
    }

    /// Legacy device config write.
    pub fn legacy_device_write(&self, offset: u8, data: &[u8]) -> Result<(), LegacyError> {
        self.transport.device_config_write(offset.into(), data)
    }

    fn function_reset(&self) {
        self.transport.reset();
        self.transport.set_msix_enabled(false);
        let mut config = self.config.lock();
        let control = config.read16(MSIX_CAP + 2) & !(MSIX_ENABLE | (1 << 14));
        config.put16(MSIX_CAP + 2, control);
        config.put16(vfio_variant::pci::regs::COMMAND, 0);
        self.msix.lock().fill(0);
    }
}

impl PhysicalFunction for VirtioFunction {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn config_size(&self) -> u16 {
        CONFIG_SIZE
    }

    fn config_read(&self, offset: u16, data: &mut [u8]) -> Result<(), PhysicalError> {
        self.config.lock().read(offset, data)
    }

    fn config_write(&self, offset: u16, data: &[u8]) -> Result<(), PhysicalError> {
        let (msix, flr) = {
            let mut config = self.config.lock();
            config.write(offset, data)?;
            let devctl = config.read16(PCIE_CAP + 8);
            if devctl & PCIE_FLR != 0 {
                config.put16(PCIE_CAP + 8, devctl & !PCIE_FLR);
            }
            (
                config.read16(MSIX_CAP + 2) & MSIX_ENABLE != 0,
                devctl & PCIE_FLR != 0,
            )
        };
        if flr {
            self.function_reset();
        } else {
            self.transport.set_msix_enabled(msix);
        }
        Ok(())
    }

    fn bar(&self, index: u8) -> Option<PhysicalBar> {
        match index {
            VIRTIO_BAR => Some(PhysicalBar {
                kind: BarKind::Memory64,
                prefetchable: true,
                size: BAR_SIZE,
            }),
            MSIX_BAR => Some(PhysicalBar {
                kind: BarKind::Memory32,
                prefetchable: false,
                size: MSIX_BAR_SIZE,
            }),
            _ => None,
        }
    }

    fn bar_read(&self, index: u8, offset: u64, data: &mut [u8]) -> Result<(), PhysicalError> {
        match index {
            VIRTIO_BAR => {
                pci::check_bar(index, offset, data.len(), BAR_SIZE)?;
                self.transport.bar_read(offset, data);
                Ok(())
            }
            MSIX_BAR => {
                pci::check_bar(index, offset, data.len(), MSIX_BAR_SIZE)?;
                let at = offset as usize;
                data.copy_from_slice(&self.msix.lock()[at..at + data.len()]);
                Ok(())
            }
            other => Err(PhysicalError::NoSuchBar(other)),
        }
    }

    fn bar_write(&self, index: u8, offset: u64, data: &[u8]) -> Result<(), PhysicalError> {
        match index {
            VIRTIO_BAR => {
                pci::check_bar(index, offset, data.len(), BAR_SIZE)?;
                self.transport.bar_write(offset, data);
                Ok(())
            }
            MSIX_BAR => {
                pci::check_bar(index, offset, data.len(), MSIX_BAR_SIZE)?;
                let at = offset as usize;
                self.msix.lock()[at..at + data.len()].copy_from_slice(data);
                Ok(())
            }
            other => Err(PhysicalError::NoSuchBar(other)),
        }
    }

    fn reset(&self) -> Result<(), PhysicalError> {
        self.function_reset();
        Ok(())
    }
}
