//! A test VMM for a transitional virtio-blk VF: guest memory in a memfd, a legacy virtio-blk
//! driver keeping writes in flight from a vCPU thread, and the VMM's part of a migration
//! (pause the vCPU once the device is stopped, move guest memory). The driver reaches its
//! function through a [`GuestAccess`]: the VMM's one vfio-user connection ([`Shared`]), or an
//! in-process VMM's port-I/O exits (examples/embedded_vmm). Shared by the two-host migration
//! test, the in-process one and the downtime benchmark.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use parking_lot::Mutex;
use vfio_variant::migration::{MigrationFlags, MigrationState};
use vfio_variant::migration_driver::{CallError, MigratableDevice, Observer};
use vfio_variant::vfio_user::client::Client;
use vfio_variant::vfio_user::dma::{DmaMap, DmaMapFlags};
use vfio_variant_virtio_legacy::hw::blk::{VIRTIO_BLK_S_OK, VIRTIO_BLK_T_OUT};
use vfio_variant_virtio_legacy::hw::transport::legacy;
use vfio_variant_virtio_legacy::hw::{STATUS_ACKNOWLEDGE, STATUS_DRIVER, STATUS_DRIVER_OK};

/// Guest memory: 1 MiB at this IOVA; the queue in its first three pages.
pub const GUEST_BASE: u64 = 0x10_0000;
/// Size of guest memory.
pub const GUEST_SIZE: u64 = 1 << 20;
const QUEUE_SIZE: u16 = 256;
const USED: u64 = GUEST_BASE + 0x2000;
/// Per-slot request headers, status bytes and 4 KiB data buffers.
const HEADERS: u64 = GUEST_BASE + 0x4000;
const STATUSES: u64 = GUEST_BASE + 0x5000;
const DATA: u64 = GUEST_BASE + 0x10_000;
/// Requests a driver keeps in flight.
const SLOTS: usize = 8;
/// Each write is one 4 KiB block: request `seq` writes block `seq % DISK_BLOCKS`.
pub const BLOCK: usize = 4096;
/// Blocks on the disk (the built-in PFs' 64 MiB images).
pub const DISK_BLOCKS: u32 = 16384;

/// How the guest reaches its function: its legacy I/O BAR and its config space.
pub trait GuestAccess: Clone + Send + 'static {
    /// Writes `data` at `offset` of the legacy I/O BAR.
    fn io_write(&self, offset: u8, data: &[u8]);
    /// Reads at `offset` of the legacy I/O BAR.
    fn io_read(&self, offset: u8, data: &mut [u8]);
    /// Writes config space.
    fn config_write(&self, offset: u16, data: &[u8]);
    /// Reads config space.
    fn config_read(&self, offset: u16, data: &mut [u8]);
    /// Waits a moment for the function's interrupt; true when one came (the driver then
    /// acknowledges it by reading ISR). Without interrupts the driver only polls.
    fn wait_interrupt(&self) -> bool {
        false
    }
}

/// A VMM's one connection to its function, shared by its vCPU and its migration driver.
#[derive(Clone)]
pub struct Shared(pub Arc<Mutex<Client>>);

impl GuestAccess for Shared {
    fn io_write(&self, offset: u8, data: &[u8]) {
        self.0.lock().region_write(0, offset.into(), data).unwrap();
    }
    fn io_read(&self, offset: u8, data: &mut [u8]) {
        self.0.lock().region_read(0, offset.into(), data).unwrap();
    }
    fn config_write(&self, offset: u16, data: &[u8]) {
        self.0.lock().region_write(7, offset.into(), data).unwrap();
    }
    fn config_read(&self, offset: u16, data: &mut [u8]) {
        self.0.lock().region_read(7, offset.into(), data).unwrap();
    }
}

impl Shared {
    /// A VMM's connection with `memory` mapped as guest RAM.
    pub fn attach(mut client: Client, memory: &OwnedFd) -> Self {
        let map = DmaMap::new(
            GUEST_BASE,
            GUEST_SIZE,
            0,
            DmaMapFlags::READ | DmaMapFlags::WRITE,
        );
        client.dma_map(&map, Some(memory.as_fd())).unwrap();
        Self(Arc::new(Mutex::new(client)))
    }
}

impl MigratableDevice for Shared {
    fn flags(&mut self) -> Result<MigrationFlags, CallError> {
        self.0.lock().flags()
    }
    fn set_state(&mut self, state: MigrationState) -> Result<(), CallError> {
        self.0.lock().set_state(state)
    }
    fn read(&mut self, max: u32) -> Result<Vec<u8>, CallError> {
        MigratableDevice::read(&mut *self.0.lock(), max)
    }
    fn write(&mut self, data: &[u8]) -> Result<(), CallError> {
        MigratableDevice::write(&mut *self.0.lock(), data)
    }
    fn chunk_size(&self) -> u32 {
        self.0.lock().chunk_size()
    }
    fn recover(&mut self) -> Result<(), CallError> {
        self.0.lock().recover()
    }
}

/// Guest RAM, sealed at its size as QEMU's memfd backend makes it (so the server maps it).
pub fn memfd() -> OwnedFd {
    use rustix::fs::{MemfdFlags, SealFlags};
    let fd =
        rustix::fs::memfd_create("guest", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING).unwrap();
    rustix::fs::ftruncate(&fd, GUEST_SIZE).unwrap();
    rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL)
        .unwrap();
    fd
}

/// What request `seq` writes.
pub fn block(seq: u32) -> Vec<u8> {
    let mut data = vec![0u8; BLOCK];
    for (i, chunk) in data.chunks_mut(8).enumerate() {
        chunk.copy_from_slice(&(u64::from(seq) << 32 | i as u64).to_le_bytes());
    }
    data
}

/// The guest's legacy virtio-blk driver: one queue, [`SLOTS`] writes in flight, completions
/// polled from the used ring. Its state is what a VMM carries to the destination in guest
/// memory and vCPU state.
pub struct Driver<P: GuestAccess = Shared> {
    /// The function.
    pub device: P,
    /// Guest RAM.
    pub memory: OwnedFd,
    avail_idx: u16,
    last_used: u16,
    /// Sequence number of the request in each slot.
    slots: [Option<u32>; SLOTS],
    /// The next request's sequence number (the number submitted so far).
    pub next_seq: u32,
    /// Sequence numbers of the acknowledged requests, in completion order.
    pub acked: Vec<u32>,
    /// Interrupts taken (each acknowledged by reading ISR).
    pub interrupts: u64,
}

impl<P: GuestAccess> Driver<P> {
    fn put(&self, iova: u64, data: &[u8]) {
        let n = rustix::io::pwrite(&self.memory, data, iova - GUEST_BASE).unwrap();
        assert_eq!(n, data.len());
    }

    fn get(&self, iova: u64, len: usize) -> Vec<u8> {
        let mut data = vec![0u8; len];
        let n = rustix::io::pread(&self.memory, &mut data, iova - GUEST_BASE).unwrap();
        assert_eq!(n, len);
        data
    }

    pub fn io_write(&self, offset: u8, len: usize, value: u64) {
        self.device.io_write(offset, &value.to_le_bytes()[..len]);
    }

    /// Linux's legacy initialization: reset, ACKNOWLEDGE, DRIVER, features, queue 0, DRIVER_OK.
    pub fn init(device: P, memory: OwnedFd) -> Self {
        device.config_write(4, &[0x05, 0x00]);
        let driver = Self {
            device,
            memory,
            avail_idx: 0,
            last_used: 0,
            slots: [None; SLOTS],
            next_seq: 0,
            acked: Vec::new(),
            interrupts: 0,
        };
        driver.io_write(legacy::STATUS, 1, 0);
        driver.io_write(legacy::STATUS, 1, STATUS_ACKNOWLEDGE.into());
        driver.io_write(
            legacy::STATUS,
            1,
            (STATUS_ACKNOWLEDGE | STATUS_DRIVER).into(),
        );
        driver.io_write(legacy::GUEST_FEATURES, 4, 0);
        driver.io_write(legacy::QUEUE_SEL, 2, 0);
        driver.put(GUEST_BASE, &[0u8; 0x3000]);
        driver.io_write(legacy::QUEUE_PFN, 4, GUEST_BASE >> 12);
        let ok = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_DRIVER_OK;
        driver.io_write(legacy::STATUS, 1, ok.into());
        driver
    }

    fn desc(&self, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let mut d = addr.to_le_bytes().to_vec();
        d.extend_from_slice(&len.to_le_bytes());
        d.extend_from_slice(&flags.to_le_bytes());
        d.extend_from_slice(&next.to_le_bytes());
        self.put(GUEST_BASE + 16 * u64::from(index), &d);
    }

    /// Publishes the next write in a free slot and notifies; false when all slots are busy.
    fn submit(&mut self) -> bool {
        let Some(slot) = self.slots.iter().position(Option::is_none) else {
            return false;
        };
        let seq = self.next_seq;
        self.next_seq += 1;
        let (header, status, data) = (
            HEADERS + 16 * slot as u64,
            STATUSES + slot as u64,
            DATA + (BLOCK * slot) as u64,
        );
        let mut h = VIRTIO_BLK_T_OUT.to_le_bytes().to_vec();
        h.extend_from_slice(&0u32.to_le_bytes());
        h.extend_from_slice(&(u64::from(seq % DISK_BLOCKS) * (BLOCK as u64 / 512)).to_le_bytes());
        self.put(header, &h);
        self.put(status, &[0xff]);
        self.put(data, &block(seq));
        let head = 3 * slot as u16;
        self.desc(head, header, 16, 1, head + 1);
        self.desc(head + 1, data, BLOCK as u32, 1, head + 2);
        self.desc(head + 2, status, 1, 2, 0);
        let avail = GUEST_BASE + 16 * u64::from(QUEUE_SIZE);
        let ring = avail + 4 + 2 * u64::from(self.avail_idx % QUEUE_SIZE);
        self.put(ring, &head.to_le_bytes());
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.put(avail + 2, &self.avail_idx.to_le_bytes());
        self.slots[slot] = Some(seq);
        self.io_write(legacy::QUEUE_NOTIFY, 2, 0);
        true
    }

    /// With every slot busy, waits for the function's interrupt and acknowledges it (reading
    /// ISR lowers the INTx line), as Linux's legacy driver does.
    fn wait(&mut self) {
        if self.in_flight() == SLOTS {
            self.take_interrupt();
        }
    }

    /// Waits a moment for the function's interrupt and acknowledges it.
    fn take_interrupt(&mut self) {
        if self.device.wait_interrupt() {
            let mut isr = [0u8];
            self.device.io_read(legacy::ISR, &mut isr);
            self.interrupts += 1;
        }
    }

    /// Takes the completions the device published; each must be of a request in flight.
    pub fn poll(&mut self) {
        let idx = self.get(USED + 2, 2);
        let used = u16::from_le_bytes([idx[0], idx[1]]);
        while self.last_used != used {
            let at = USED + 4 + 8 * u64::from(self.last_used % QUEUE_SIZE);
            let element = self.get(at, 8);
            let head = u32::from_le_bytes([element[0], element[1], element[2], element[3]]);
            let slot = head as usize / 3;
            let seq = self.slots[slot]
                .take()
                .unwrap_or_else(|| panic!("a completion of head {head}, not in flight"));
            assert_eq!(
                self.get(STATUSES + slot as u64, 1)[0],
                VIRTIO_BLK_S_OK,
                "write {seq}"
            );
            self.acked.push(seq);
            self.last_used = self.last_used.wrapping_add(1);
        }
    }

    pub fn in_flight(&self) -> usize {
        self.slots.iter().flatten().count()
    }

    /// Notifies and polls until every request in flight has completed.
    pub fn drain(&mut self) {
        for _ in 0..1000 {
            if self.in_flight() == 0 {
                return;
            }
            self.io_write(legacy::QUEUE_NOTIFY, 2, 0);
            self.take_interrupt();
            self.poll();
        }
        panic!("{} requests never completed", self.in_flight());
    }
}

/// The vCPU: submits and polls until told to stop, then hands the driver back.
pub struct Vcpu<P: GuestAccess = Shared> {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Driver<P>>,
}

impl<P: GuestAccess> Vcpu<P> {
    /// Runs `driver` in a new thread.
    pub fn start(mut driver: Driver<P>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::SeqCst) {
                driver.submit();
                driver.wait();
                driver.poll();
            }
            driver
        });
        Self { stop, thread }
    }

    /// Stops the thread and takes the driver back.
    pub fn pause(self) -> Driver<P> {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().unwrap()
    }
}

/// The source VMM's side of the move: pause the vCPU once the device is stopped, and copy
/// guest memory to the destination VMM's.
pub struct SourceVmm<P: GuestAccess = Shared> {
    /// The running vCPU.
    pub vcpu: Option<Vcpu<P>>,
    /// The driver, once the vCPU is paused.
    pub driver: Option<Driver<P>>,
    /// Where guest memory goes.
    pub destination_memory: OwnedFd,
    /// The source's config space once stopped.
    pub config: Vec<u8>,
}

impl<P: GuestAccess> Observer for SourceVmm<P> {
    fn source_stopped(&mut self) -> Result<(), String> {
        let driver = self.vcpu.take().ok_or("no vCPU")?.pause();
        self.config = config_space(&driver.device);
        let mut ram = vec![0u8; GUEST_SIZE as usize];
        rustix::io::pread(&driver.memory, &mut ram, 0).map_err(|e| e.to_string())?;
        rustix::io::pwrite(&self.destination_memory, &ram, 0).map_err(|e| e.to_string())?;
        self.driver = Some(driver);
        Ok(())
    }
}

/// A function's config space (256 bytes).
pub fn config_space(device: &impl GuestAccess) -> Vec<u8> {
    let mut data = vec![0u8; 256];
    device.config_read(0, &mut data);
    data
}
