//! Test helpers: guest memory in a Vec, an interrupt recorder, and a driver's side of split
//! virtqueues and of the modern transport, all working through registers and DMA memory.

#![allow(dead_code)]

use std::sync::Arc;

use parking_lot::Mutex;
use vfio_variant::backend::{DmaAccess, DmaError, Interrupt, InterruptSink};
use vfio_variant::physical::PhysicalFunction;
use vfio_variant_virtio_legacy::hw::transport::{NOTIFY_MULTIPLIER, NOTIFY_OFFSET, common};
use vfio_variant_virtio_legacy::hw::vf::VirtioFunction;
use vfio_variant_virtio_legacy::hw::{
    STATUS_ACKNOWLEDGE, STATUS_DRIVER, STATUS_DRIVER_OK, STATUS_FEATURES_OK,
};

/// Waits until `done` holds, for 5 seconds at most; returns whether it does. Queues are
/// processed on the device's own thread, after the notifying write has returned.
pub fn wait_until(mut done: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !done() {
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_micros(200));
    }
    true
}

/// Guest memory: `size` bytes at IOVA 0.
pub struct Memory(Mutex<Vec<u8>>);

impl Memory {
    pub fn new(size: usize) -> Arc<Self> {
        Arc::new(Self(Mutex::new(vec![0; size])))
    }

    pub fn put(&self, iova: u64, data: &[u8]) {
        self.write(iova, data).unwrap();
    }

    pub fn get(&self, iova: u64, len: usize) -> Vec<u8> {
        let mut data = vec![0; len];
        self.read(iova, &mut data).unwrap();
        data
    }

    pub fn u16_at(&self, iova: u64) -> u16 {
        let b = self.get(iova, 2);
        u16::from_le_bytes([b[0], b[1]])
    }

    pub fn u32_at(&self, iova: u64) -> u32 {
        let b = self.get(iova, 4);
        u32::from_le_bytes([b[0], b[1], b[2], b[3]])
    }
}

impl DmaAccess for Memory {
    fn read(&self, iova: u64, data: &mut [u8]) -> Result<(), DmaError> {
        let memory = self.0.lock();
        let start = usize::try_from(iova).ok();
        match start.and_then(|s| s.checked_add(data.len()).map(|e| (s, e))) {
            Some((s, e)) if e <= memory.len() => {
                data.copy_from_slice(&memory[s..e]);
                Ok(())
            }
            _ => Err(DmaError::Unmapped {
                iova,
                len: data.len(),
            }),
        }
    }

    fn write(&self, iova: u64, data: &[u8]) -> Result<(), DmaError> {
        let mut memory = self.0.lock();
        let start = usize::try_from(iova).ok();
        match start.and_then(|s| s.checked_add(data.len()).map(|e| (s, e))) {
            Some((s, e)) if e <= memory.len() => {
                memory[s..e].copy_from_slice(data);
                Ok(())
            }
            _ => Err(DmaError::Unmapped {
                iova,
                len: data.len(),
            }),
        }
    }
}

/// Records interrupts.
#[derive(Default)]
pub struct Irqs(Mutex<Vec<Interrupt>>);

impl Irqs {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    pub fn take(&self) -> Vec<Interrupt> {
        std::mem::take(&mut *self.0.lock())
    }
}

impl InterruptSink for Irqs {
    fn raise(&self, interrupt: Interrupt) {
        self.0.lock().push(interrupt);
    }
}

/// One descriptor the driver adds: address, length, device-writable.
#[derive(Clone, Copy)]
pub struct Buf {
    pub addr: u64,
    pub len: u32,
    pub write: bool,
}

pub fn ro(addr: u64, len: u32) -> Buf {
    Buf {
        addr,
        len,
        write: false,
    }
}

pub fn wo(addr: u64, len: u32) -> Buf {
    Buf {
        addr,
        len,
        write: true,
    }
}

/// The driver's side of a split virtqueue.
pub struct DriverQueue {
    pub size: u16,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    next_desc: u16,
    avail_idx: u16,
    last_used: u16,
}

impl DriverQueue {
    /// A queue of `size` entries laid out from `base` (desc, avail, used, each page-aligned).
    pub fn new(size: u16, base: u64) -> Self {
        Self::at(size, base, base + 0x1000, base + 0x2000)
    }

    pub fn at(size: u16, desc: u64, avail: u64, used: u64) -> Self {
        Self {
            size,
            desc,
            avail,
            used,
            next_desc: 0,
            avail_idx: 0,
            last_used: 0,
        }
    }

    /// Writes descriptor `index` raw.
    pub fn write_desc(&self, mem: &Memory, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let mut d = Vec::with_capacity(16);
        d.extend_from_slice(&addr.to_le_bytes());
        d.extend_from_slice(&len.to_le_bytes());
        d.extend_from_slice(&flags.to_le_bytes());
        d.extend_from_slice(&next.to_le_bytes());
        mem.put(self.desc + 16 * u64::from(index), &d);
    }

    /// Makes descriptor `head` available.
    pub fn publish(&mut self, mem: &Memory, head: u16) {
        let slot = u64::from(self.avail_idx % self.size);
        mem.put(self.avail + 4 + 2 * slot, &head.to_le_bytes());
        self.avail_idx = self.avail_idx.wrapping_add(1);
        mem.put(self.avail + 2, &self.avail_idx.to_le_bytes());
    }

    /// Adds a chain of `bufs` and makes it available; returns its head.
    pub fn add(&mut self, mem: &Memory, bufs: &[Buf]) -> u16 {
        let head = self.next_desc;
        for (i, b) in bufs.iter().enumerate() {
            let index = (head + i as u16) % self.size;
            let last = i + 1 == bufs.len();
            let flags = if last { 0 } else { 1 } | if b.write { 2 } else { 0 };
            self.write_desc(mem, index, b.addr, b.len, flags, (index + 1) % self.size);
        }
        self.next_desc = (head + bufs.len() as u16) % self.size;
        self.publish(mem, head);
        head
    }

    /// Adds an indirect table at `table` holding `bufs`; returns the head.
    pub fn add_indirect(&mut self, mem: &Memory, table: u64, bufs: &[Buf]) -> u16 {
        for (i, b) in bufs.iter().enumerate() {
            let last = i + 1 == bufs.len();
            let flags = if last { 0u16 } else { 1 } | if b.write { 2 } else { 0 };
            let mut d = Vec::with_capacity(16);
            d.extend_from_slice(&b.addr.to_le_bytes());
            d.extend_from_slice(&b.len.to_le_bytes());
            d.extend_from_slice(&flags.to_le_bytes());
            d.extend_from_slice(&(i as u16 + 1).to_le_bytes());
            mem.put(table + 16 * i as u64, &d);
        }
        let head = self.next_desc;
        self.write_desc(mem, head, table, 16 * bufs.len() as u32, 4, 0);
        self.next_desc = (head + 1) % self.size;
        self.publish(mem, head);
        head
    }

    /// The next used element (id, len), waiting for the device (it processes a queue on its
    /// own thread after the notification) for a few seconds at most.
    pub fn take_used(&mut self, mem: &Memory) -> Option<(u32, u32)> {
        let last = self.last_used;
        wait_until(|| mem.u16_at(self.used + 2) != last);
        self.poll_used(mem)
    }

    /// The next used element (id, len), if there is one now.
    pub fn poll_used(&mut self, mem: &Memory) -> Option<(u32, u32)> {
        let idx = mem.u16_at(self.used + 2);
        if idx == self.last_used {
            return None;
        }
        let slot = u64::from(self.last_used % self.size);
        self.last_used = self.last_used.wrapping_add(1);
        Some((
            mem.u32_at(self.used + 4 + 8 * slot),
            mem.u32_at(self.used + 8 + 8 * slot),
        ))
    }
}

/// A modern virtio driver of a function's BAR 0.
pub struct ModernDriver<'a> {
    pub function: &'a dyn PhysicalFunction,
    /// Waited for after a notification, when the driver knows the VF.
    settle: Option<&'a VirtioFunction>,
}

impl<'a> ModernDriver<'a> {
    pub fn new(function: &'a dyn PhysicalFunction) -> Self {
        Self {
            function,
            settle: None,
        }
    }

    /// A driver of `vf` whose notifications return once the VF has processed them.
    pub fn of(vf: &'a VirtioFunction) -> Self {
        Self {
            function: vf,
            settle: Some(vf),
        }
    }

    pub fn read(&self, offset: u64, len: usize) -> u64 {
        let mut b = [0u8; 8];
        self.function.bar_read(0, offset, &mut b[..len]).unwrap();
        u64::from_le_bytes(b)
    }

    pub fn write(&self, offset: u64, len: usize, value: u64) {
        self.function
            .bar_write(0, offset, &value.to_le_bytes()[..len])
            .unwrap();
    }

    pub fn status(&self) -> u8 {
        self.read(common::DEVICE_STATUS, 1) as u8
    }

    pub fn device_features(&self) -> u64 {
        self.write(common::DEVICE_FEATURE_SELECT, 4, 0);
        let low = self.read(common::DEVICE_FEATURE, 4);
        self.write(common::DEVICE_FEATURE_SELECT, 4, 1);
        low | (self.read(common::DEVICE_FEATURE, 4) << 32)
    }

    /// Negotiates `features` (which must be offered); returns the status after FEATURES_OK.
    pub fn negotiate(&self, features: u64) -> u8 {
        self.write(common::DEVICE_STATUS, 1, 0);
        self.write(common::DEVICE_STATUS, 1, u64::from(STATUS_ACKNOWLEDGE));
        self.write(
            common::DEVICE_STATUS,
            1,
            u64::from(STATUS_ACKNOWLEDGE | STATUS_DRIVER),
        );
        self.write(common::DRIVER_FEATURE_SELECT, 4, 0);
        self.write(common::DRIVER_FEATURE, 4, features & 0xffff_ffff);
        self.write(common::DRIVER_FEATURE_SELECT, 4, 1);
        self.write(common::DRIVER_FEATURE, 4, features >> 32);
        self.write(
            common::DEVICE_STATUS,
            1,
            u64::from(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK),
        );
        self.status()
    }

    /// Sets up queue `index` as `queue` (64-bit addresses written as two halves, as Linux
    /// does) with MSI-X vector `vector`, and enables it.
    pub fn setup_queue(&self, index: u16, queue: &DriverQueue, vector: u16) {
        self.write(common::QUEUE_SELECT, 2, index.into());
        self.write(common::QUEUE_SIZE, 2, queue.size.into());
        self.write(common::QUEUE_MSIX_VECTOR, 2, vector.into());
        for (offset, value) in [
            (common::QUEUE_DESC, queue.desc),
            (common::QUEUE_DRIVER, queue.avail),
            (common::QUEUE_DEVICE, queue.used),
        ] {
            self.write(offset, 4, value & 0xffff_ffff);
            self.write(offset + 4, 4, value >> 32);
        }
        self.write(common::QUEUE_ENABLE, 2, 1);
    }

    pub fn driver_ok(&self) {
        let status = self.status();
        self.write(
            common::DEVICE_STATUS,
            1,
            u64::from(status | STATUS_DRIVER_OK),
        );
    }

    pub fn notify(&self, index: u16) {
        self.write(common::QUEUE_SELECT, 2, index.into());
        let off = self.read(common::QUEUE_NOTIFY_OFF, 2);
        self.write(
            NOTIFY_OFFSET + off * u64::from(NOTIFY_MULTIPLIER),
            2,
            index.into(),
        );
        if let Some(vf) = self.settle {
            vf.quiesce();
        }
    }
}
