//! The modern virtio-pci transport of one function, in a memory BAR, and the legacy register
//! view of the same state (what the legacy admin commands act on).
//!
//! BAR layout (each area 4 KiB): common config at [`COMMON_OFFSET`], ISR at [`ISR_OFFSET`]
//! (reading clears it), device config at [`DEVICE_OFFSET`], notify area at [`NOTIFY_OFFSET`]
//! (queue `n` at `n * NOTIFY_MULTIPLIER`; the value written is the queue index).
//!
//! A notification only kicks queue processing; the register write returns before the queue
//! is read. A VF's transport processes its queues on its own thread
//! ([`vfio_variant::backend::worker::Worker`], [`Transport::with_worker`]): guest memory may be
//! reached by messages to a VMM that answers them only once the write that notified has its
//! reply. Processing never holds the register lock while it reaches memory, so register
//! accesses are answered while a queue is being processed. A transport without a worker (the
//! PF's admin queue, in the backend's own memory) processes in the notifier's thread. A reset
//! does not wait for a pass in flight: its results are dropped. A malformed ring sets
//! NEEDS_RESET and raises a config interrupt.
//!
//! The PF can stop the function (DEV_MODE_SET): stopping waits for the pass in flight; a
//! stopped function still takes register accesses and notifications, but processes no queue
//! and raises no interrupt; when it runs
//! again it processes what was made available meanwhile. Its state is read and restored as
//! device parts ([`Transport::device_state`], [`Transport::restore_state`]).

mod snapshot;

pub use snapshot::RestoreError;

use std::sync::Arc;

use parking_lot::Mutex;
use vfio_variant::backend::worker::Worker;
use vfio_variant::backend::{DmaAccess, Interrupt, InterruptSink};

use super::virtqueue::Virtqueue;
use super::{
    STATUS_DRIVER_OK, STATUS_FEATURES_OK, STATUS_NEEDS_RESET, VIRTIO_F_INDIRECT_DESC,
    VIRTIO_F_VERSION_1, VirtioDevice,
};

/// Offset of the common config area in the BAR.
pub const COMMON_OFFSET: u64 = 0x0000;
/// Offset of the ISR byte in the BAR.
pub const ISR_OFFSET: u64 = 0x1000;
/// Offset of the device config area in the BAR.
pub const DEVICE_OFFSET: u64 = 0x2000;
/// Offset of the notify area in the BAR.
pub const NOTIFY_OFFSET: u64 = 0x3000;
/// Size of each area.
pub const AREA_SIZE: u64 = 0x1000;
/// notify_off_multiplier: queue `n` is notified at `NOTIFY_OFFSET + n * NOTIFY_MULTIPLIER`.
pub const NOTIFY_MULTIPLIER: u32 = 4;
/// Size of the BAR.
pub const BAR_SIZE: u64 = 0x4000;
/// Queue size every queue offers.
pub const QUEUE_MAX_SIZE: u16 = 256;
/// No MSI-X vector.
pub const NO_VECTOR: u16 = 0xffff;

/// Common config registers (virtio 1.x `virtio_pci_common_cfg`), offsets in the area.
pub mod common {
    /// le32 device_feature_select.
    pub const DEVICE_FEATURE_SELECT: u64 = 0x00;
    /// le32 device_feature (read-only).
    pub const DEVICE_FEATURE: u64 = 0x04;
    /// le32 driver_feature_select.
    pub const DRIVER_FEATURE_SELECT: u64 = 0x08;
    /// le32 driver_feature.
    pub const DRIVER_FEATURE: u64 = 0x0c;
    /// le16 config_msix_vector.
    pub const CONFIG_MSIX_VECTOR: u64 = 0x10;
    /// le16 num_queues (read-only).
    pub const NUM_QUEUES: u64 = 0x12;
    /// u8 device_status.
    pub const DEVICE_STATUS: u64 = 0x14;
    /// u8 config_generation (read-only).
    pub const CONFIG_GENERATION: u64 = 0x15;
    /// le16 queue_select.
    pub const QUEUE_SELECT: u64 = 0x16;
    /// le16 queue_size.
    pub const QUEUE_SIZE: u64 = 0x18;
    /// le16 queue_msix_vector.
    pub const QUEUE_MSIX_VECTOR: u64 = 0x1a;
    /// le16 queue_enable.
    pub const QUEUE_ENABLE: u64 = 0x1c;
    /// le16 queue_notify_off (read-only).
    pub const QUEUE_NOTIFY_OFF: u64 = 0x1e;
    /// le64 queue_desc.
    pub const QUEUE_DESC: u64 = 0x20;
    /// le64 queue_driver (available ring).
    pub const QUEUE_DRIVER: u64 = 0x28;
    /// le64 queue_device (used ring).
    pub const QUEUE_DEVICE: u64 = 0x30;
    /// le16 queue_notify_data (read-only).
    pub const QUEUE_NOTIFY_DATA: u64 = 0x38;
    /// le16 queue_reset.
    pub const QUEUE_RESET: u64 = 0x3a;
    /// le16 admin_queue_index (read-only).
    pub const ADMIN_QUEUE_INDEX: u64 = 0x3c;
    /// le16 admin_queue_num (read-only).
    pub const ADMIN_QUEUE_NUM: u64 = 0x3e;
    /// Size of the structure.
    pub const SIZE: u64 = 0x40;
}

/// Legacy (virtio 0.9.5) register offsets, as a legacy I/O BAR shows them.
pub mod legacy {
    /// le32 HOST_FEATURES (read-only).
    pub const HOST_FEATURES: u8 = 0;
    /// le32 GUEST_FEATURES.
    pub const GUEST_FEATURES: u8 = 4;
    /// le32 QUEUE_PFN: page number of the selected queue, 0 disables it.
    pub const QUEUE_PFN: u8 = 8;
    /// le16 QUEUE_NUM (read-only).
    pub const QUEUE_NUM: u8 = 12;
    /// le16 QUEUE_SEL.
    pub const QUEUE_SEL: u8 = 14;
    /// le16 QUEUE_NOTIFY.
    pub const QUEUE_NOTIFY: u8 = 16;
    /// u8 STATUS (0 resets).
    pub const STATUS: u8 = 18;
    /// u8 ISR (reading clears).
    pub const ISR: u8 = 19;
    /// le16 MSI_CONFIG_VECTOR.
    pub const MSI_CONFIG_VECTOR: u8 = 20;
    /// le16 MSI_QUEUE_VECTOR.
    pub const MSI_QUEUE_VECTOR: u8 = 22;
    /// End of the common registers (device config follows at 24 with MSI-X, else 20).
    pub const COMMON_END: u8 = 24;
    /// Legacy queue alignment (and page size of QUEUE_PFN).
    pub const QUEUE_ALIGN: u64 = 4096;
}

/// A legacy register access the device refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LegacyError {
    /// No register of that width at that offset.
    #[error("no legacy register of {len} bytes at offset {offset}")]
    BadAccess {
        /// Offset in the area.
        offset: u64,
        /// Access width.
        len: usize,
    },
}

#[derive(Debug, Clone)]
struct Queue {
    size: u16,
    msix_vector: u16,
    enabled: bool,
    desc: u64,
    driver: u64,
    device: u64,
    legacy_pfn: u32,
    ring: Option<Virtqueue>,
    /// Changes whenever the ring is replaced: a pass in flight then drops its results.
    epoch: u64,
}

impl Queue {
    fn new(epoch: u64) -> Self {
        Self {
            size: QUEUE_MAX_SIZE,
            msix_vector: NO_VECTOR,
            enabled: false,
            desc: 0,
            driver: 0,
            device: 0,
            legacy_pfn: 0,
            ring: None,
            epoch,
        }
    }
}

struct State {
    /// The device config area (the device's, kept here so registers never wait for a pass).
    device_config: Vec<u8>,
    /// The device is reset before the next pass.
    device_reset: bool,
    /// The next queue epoch.
    epochs: u64,
    offered: u64,
    device_feature_select: u32,
    driver_feature_select: u32,
    driver_features: u64,
    config_msix_vector: u16,
    status: u8,
    config_generation: u8,
    queue_select: u16,
    queues: Vec<Queue>,
    isr: u8,
    intx_asserted: bool,
    msix_enabled: bool,
    admin_queues: Option<(u16, u16)>,
    stopped: bool,
}

impl State {
    fn epoch(&mut self) -> u64 {
        self.epochs += 1;
        self.epochs
    }

    /// A new queue `index` (disabled), whose epoch drops any pass in flight on the old one.
    fn fresh_queue(&mut self, index: usize) {
        let epoch = self.epoch();
        if let Some(q) = self.queues.get_mut(index) {
            *q = Queue::new(epoch);
        }
    }
}

/// What register accesses and queue processing share.
struct Inner {
    state: Mutex<State>,
    /// The device, held by a pass; register accesses never take it.
    device: Mutex<Box<dyn VirtioDevice>>,
    /// Queues that progress without a notification.
    polled: Vec<u16>,
    dma: Arc<dyn DmaAccess>,
    interrupts: Arc<dyn InterruptSink>,
}

/// The modern virtio-pci transport of one function.
pub struct Transport {
    inner: Arc<Inner>,
    /// Processes the queues off the register path; without it the notifier does.
    worker: Option<Worker>,
}

/// The bits of the queues to process.
fn queue_bit(index: u16) -> u64 {
    1u64.checked_shl(u32::from(index)).unwrap_or(0)
}

fn le(data: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let n = data.len().min(8);
    b[..n].copy_from_slice(&data[..n]);
    u64::from_le_bytes(b)
}

fn set_half(value: &mut u64, high: bool, half: u64) {
    if high {
        *value = (*value & 0xffff_ffff) | (half << 32);
    } else {
        *value = (*value & !0xffff_ffff) | (half & 0xffff_ffff);
    }
}

impl Transport {
    /// A transport around `device`, offering its features plus VERSION_1, INDIRECT_DESC and
    /// `extra_features`. `admin_queues` is `(first index, count)` of admin virtqueues, which
    /// count in num_queues after the device's own.
    pub fn new(
        device: Box<dyn VirtioDevice>,
        extra_features: u64,
        admin_queues: Option<(u16, u16)>,
        dma: Arc<dyn DmaAccess>,
        interrupts: Arc<dyn InterruptSink>,
    ) -> Self {
        let queues = device.num_queues() + admin_queues.map_or(0, |(_, n)| n);
        let offered =
            device.features() | VIRTIO_F_VERSION_1 | VIRTIO_F_INDIRECT_DESC | extra_features;
        let state = State {
            device_config: device.config(),
            device_reset: false,
            epochs: 0,
            offered,
            device_feature_select: 0,
            driver_feature_select: 0,
            driver_features: 0,
            config_msix_vector: NO_VECTOR,
            status: 0,
            config_generation: 0,
            queue_select: 0,
            queues: vec![Queue::new(0); usize::from(queues)],
            isr: 0,
            intx_asserted: false,
            msix_enabled: false,
            admin_queues,
            stopped: false,
        };
        let polled = device
            .polled_queues()
            .iter()
            .copied()
            .filter(|&q| q < queues)
            .collect();
        Self {
            inner: Arc::new(Inner {
                state: Mutex::new(state),
                device: Mutex::new(device),
                polled,
                dma,
                interrupts,
            }),
            worker: None,
        }
    }

    /// Processes the queues on a thread of their own, named `name`, started on the first
    /// notification and stopped when the transport is dropped.
    pub fn with_worker(mut self, name: impl Into<String>) -> Self {
        let inner = Arc::downgrade(&self.inner);
        self.worker = Some(Worker::new(name, move |bits| {
            if let Some(inner) = inner.upgrade() {
                inner.run(bits);
            }
        }));
        self
    }

    /// Waits until the notifications made so far are processed.
    pub fn quiesce(&self) {
        if let Some(worker) = &self.worker {
            worker.quiesce();
        }
    }

    /// Processes the queues in `bits`: kicks the worker, or runs them here.
    fn kick(&self, bits: u64) {
        if bits == 0 {
            return;
        }
        match &self.worker {
            Some(worker) => worker.kick(bits),
            None => self.inner.run(bits),
        }
    }

    fn lock(&self) -> parking_lot::MutexGuard<'_, State> {
        self.inner.state.lock()
    }

    /// The device status byte.
    pub fn status(&self) -> u8 {
        self.lock().status
    }

    /// The negotiated (driver) features.
    pub fn driver_features(&self) -> u64 {
        self.lock().driver_features
    }

    /// The features the device offers.
    pub fn offered_features(&self) -> u64 {
        self.lock().offered
    }

    /// Tells the transport whether MSI-X is enabled in config space (interrupt routing).
    pub fn set_msix_enabled(&self, enabled: bool) {
        self.lock().msix_enabled = enabled;
    }

    /// Function reset (FLR): the device is reset and runs.
    pub fn reset(&self) {
        let mut s = self.lock();
        self.inner.reset_locked(&mut s);
        s.stopped = false;
    }

    /// Whether the function is stopped (DEV_MODE_SET).
    pub fn stopped(&self) -> bool {
        self.lock().stopped
    }

    /// Stops the function, or lets it run again: it then processes what the driver made
    /// available while it was stopped, and asserts INTx for a pending ISR.
    pub fn set_stopped(&self, stopped: bool) {
        let mut s = self.lock();
        let was = s.stopped;
        s.stopped = stopped;
        if stopped {
            drop(s);
            // No DMA after this returns: the pass in flight ends first.
            self.quiesce();
        } else if was {
            let enabled = (0u16..)
                .zip(&s.queues)
                .filter(|(_, q)| q.ring.is_some())
                .fold(0, |bits, (index, _)| bits | queue_bit(index));
            self.inner.signal(&mut s, NO_VECTOR);
            drop(s);
            self.kick(enabled);
        }
    }
}

impl Inner {
    fn reset_locked(&self, s: &mut State) {
        s.device_reset = true;
        s.device_feature_select = 0;
        s.driver_feature_select = 0;
        s.driver_features = 0;
        s.config_msix_vector = NO_VECTOR;
        s.status = 0;
        s.queue_select = 0;
        for index in 0..s.queues.len() {
            s.fresh_queue(index);
        }
        s.isr = 0;
        self.update_intx(s);
    }

    /// One pass: the queues in `bits`, in order. Passes are serialized by the device lock.
    fn run(&self, bits: u64) {
        let mut device = self.device.lock();
        if std::mem::take(&mut self.state.lock().device_reset) {
            device.reset();
        }
        for index in 0..64u16 {
            if bits & queue_bit(index) != 0 {
                self.process(&mut **device, index);
            }
        }
    }

    /// Processes what is available on queue `index`, without the register lock while it
    /// reaches guest memory.
    fn process(&self, device: &mut dyn VirtioDevice, index: u16) {
        let (mut ring, features, epoch) = {
            let s = self.state.lock();
            if s.stopped || s.status & STATUS_DRIVER_OK == 0 || s.status & STATUS_NEEDS_RESET != 0 {
                return;
            }
            let Some(q) = s.queues.get(usize::from(index)) else {
                return;
            };
            let Some(ring) = q.ring.clone() else {
                return;
            };
            (ring, s.driver_features, q.epoch)
        };
        let result = device.process(index, &mut ring, &*self.dma, features);
        // Only when buffers were used: with memory reached by messages, a pass that found
        // nothing (a NIC's receive queue polled) costs no DMA.
        let wants = matches!(result, Ok(true)) && ring.wants_interrupt(&*self.dma).unwrap_or(true);
        let mut s = self.state.lock();
        let Some(q) = s
            .queues
            .get_mut(usize::from(index))
            .filter(|q| q.epoch == epoch && q.ring.is_some())
        else {
            // Reset or replaced meanwhile: what the pass did is dropped.
            return;
        };
        q.ring = Some(ring);
        let vector = q.msix_vector;
        match result {
            Ok(true) if wants => {
                s.isr |= 1;
                self.signal(&mut s, vector);
            }
            Ok(_) => {}
            Err(_) => self.needs_reset(&mut s),
        }
    }

    fn needs_reset(&self, s: &mut State) {
        if s.status & STATUS_NEEDS_RESET != 0 {
            return;
        }
        s.status |= STATUS_NEEDS_RESET;
        s.config_generation = s.config_generation.wrapping_add(1);
        s.isr |= 2;
        let vector = s.config_msix_vector;
        self.signal(s, vector);
    }

    fn signal(&self, s: &mut State, vector: u16) {
        if s.stopped {
            return;
        }
        if s.msix_enabled {
            if vector != NO_VECTOR {
                self.interrupts.raise(Interrupt::Msix(u32::from(vector)));
            }
        } else if !s.intx_asserted && s.isr != 0 {
            s.intx_asserted = true;
            self.interrupts.raise(Interrupt::Intx(true));
        }
    }

    fn update_intx(&self, s: &mut State) {
        if s.intx_asserted && s.isr == 0 {
            s.intx_asserted = false;
            self.interrupts.raise(Interrupt::Intx(false));
        }
    }
}

impl Transport {
    /// Reads the BAR. Reads of no register give zeros.
    pub fn bar_read(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let mut s = self.lock();
        let len = data.len() as u64;
        if let Some(at) = within(offset, len, COMMON_OFFSET, common::SIZE) {
            let image = Self::common_image(&s);
            let at = at as usize;
            data.copy_from_slice(&image[at..at + data.len()]);
        } else if offset == ISR_OFFSET && len == 1 {
            data[0] = s.isr;
            s.isr = 0;
            self.inner.update_intx(&mut s);
        } else if let Some(at) = within(offset, len, DEVICE_OFFSET, AREA_SIZE) {
            copy_out(&s.device_config, at, data);
        }
    }

    /// Writes the BAR. Writes of no register, and of the device config (read-only in every
    /// device here), are ignored. A notification returns before the queue is processed.
    pub fn bar_write(&self, offset: u64, data: &[u8]) {
        let len = data.len() as u64;
        if let Some(at) = within(offset, len, COMMON_OFFSET, common::SIZE) {
            self.common_write(&mut self.lock(), at, data);
        } else if within(offset, len, NOTIFY_OFFSET, AREA_SIZE).is_some() && (len == 2 || len == 4)
        {
            // Without VIRTIO_F_NOTIFICATION_DATA the value is the queue index.
            self.kick(queue_bit(le(&data[..2]) as u16));
        }
    }

    fn common_image(s: &State) -> [u8; common::SIZE as usize] {
        let mut image = [0u8; common::SIZE as usize];
        let mut put = |at: u64, bytes: &[u8]| {
            image[at as usize..at as usize + bytes.len()].copy_from_slice(bytes);
        };
        put(
            common::DEVICE_FEATURE_SELECT,
            &s.device_feature_select.to_le_bytes(),
        );
        let features = match s.device_feature_select {
            0 => s.offered as u32,
            1 => (s.offered >> 32) as u32,
            _ => 0,
        };
        put(common::DEVICE_FEATURE, &features.to_le_bytes());
        put(
            common::DRIVER_FEATURE_SELECT,
            &s.driver_feature_select.to_le_bytes(),
        );
        let driver = match s.driver_feature_select {
            0 => s.driver_features as u32,
            1 => (s.driver_features >> 32) as u32,
            _ => 0,
        };
        put(common::DRIVER_FEATURE, &driver.to_le_bytes());
        put(
            common::CONFIG_MSIX_VECTOR,
            &s.config_msix_vector.to_le_bytes(),
        );
        put(common::NUM_QUEUES, &(s.queues.len() as u16).to_le_bytes());
        put(common::DEVICE_STATUS, &[s.status]);
        put(common::CONFIG_GENERATION, &[s.config_generation]);
        put(common::QUEUE_SELECT, &s.queue_select.to_le_bytes());
        if let Some(q) = s.queues.get(usize::from(s.queue_select)) {
            put(common::QUEUE_SIZE, &q.size.to_le_bytes());
            put(common::QUEUE_MSIX_VECTOR, &q.msix_vector.to_le_bytes());
            put(common::QUEUE_ENABLE, &u16::from(q.enabled).to_le_bytes());
            put(common::QUEUE_NOTIFY_OFF, &s.queue_select.to_le_bytes());
            put(common::QUEUE_DESC, &q.desc.to_le_bytes());
            put(common::QUEUE_DRIVER, &q.driver.to_le_bytes());
            put(common::QUEUE_DEVICE, &q.device.to_le_bytes());
            put(common::QUEUE_NOTIFY_DATA, &s.queue_select.to_le_bytes());
        }
        if let Some((index, num)) = s.admin_queues
            && s.driver_features & super::VIRTIO_F_ADMIN_VQ != 0
        {
            put(common::ADMIN_QUEUE_INDEX, &index.to_le_bytes());
            put(common::ADMIN_QUEUE_NUM, &num.to_le_bytes());
        }
        image
    }

    fn common_write(&self, s: &mut State, offset: u64, data: &[u8]) {
        let value = le(data);
        let len = data.len();
        let select = usize::from(s.queue_select);
        let queue_writable = s.queues.get(select).is_some_and(|q| !q.enabled);
        match (offset, len) {
            (common::DEVICE_FEATURE_SELECT, 4) => s.device_feature_select = value as u32,
            (common::DRIVER_FEATURE_SELECT, 4) => s.driver_feature_select = value as u32,
            (common::DRIVER_FEATURE, 4) if s.status & STATUS_FEATURES_OK == 0 => {
                match s.driver_feature_select {
                    0 => set_half(&mut s.driver_features, false, value),
                    1 => set_half(&mut s.driver_features, true, value),
                    _ => {}
                }
            }
            (common::CONFIG_MSIX_VECTOR, 2) => s.config_msix_vector = value as u16,
            (common::DEVICE_STATUS, 1) => self.write_status(s, value as u8),
            (common::QUEUE_SELECT, 2) => s.queue_select = value as u16,
            (common::QUEUE_SIZE, 2) if queue_writable => s.queues[select].size = value as u16,
            (common::QUEUE_MSIX_VECTOR, 2) => {
                if let Some(q) = s.queues.get_mut(select) {
                    q.msix_vector = value as u16;
                }
            }
            (common::QUEUE_ENABLE, 2) if queue_writable && value == 1 => {
                let epoch = s.epoch();
                let q = &mut s.queues[select];
                match Virtqueue::new(q.size, q.desc, q.driver, q.device) {
                    Ok(ring) => {
                        q.ring = Some(ring);
                        q.enabled = true;
                        q.epoch = epoch;
                    }
                    Err(_) => self.inner.needs_reset(s),
                }
            }
            (common::QUEUE_DESC | common::QUEUE_DRIVER | common::QUEUE_DEVICE, 4 | 8)
            | (0x24 | 0x2c | 0x34, 4)
                if queue_writable =>
            {
                let q = &mut s.queues[select];
                let base = offset & !7;
                let field = match base {
                    common::QUEUE_DESC => &mut q.desc,
                    common::QUEUE_DRIVER => &mut q.driver,
                    _ => &mut q.device,
                };
                if len == 8 {
                    *field = value;
                } else {
                    set_half(field, offset != base, value);
                }
            }
            (common::QUEUE_RESET, 2) if value == 1 => s.fresh_queue(select),
            _ => {}
        }
    }

    fn write_status(&self, s: &mut State, value: u8) {
        if value == 0 {
            self.inner.reset_locked(s);
            return;
        }
        let mut value = value;
        if value & STATUS_FEATURES_OK != 0
            && s.status & STATUS_FEATURES_OK == 0
            && s.driver_features & !s.offered != 0
        {
            // Features the device did not offer: FEATURES_OK does not stick.
            value &= !STATUS_FEATURES_OK;
        }
        s.status = value | (s.status & STATUS_NEEDS_RESET);
    }

    /// Lets queues that progress on their own (a NIC's receive queue) process what arrived.
    pub fn poll(&self) {
        let bits = self
            .inner
            .polled
            .iter()
            .fold(0, |bits, &index| bits | queue_bit(index));
        self.kick(bits);
    }

    /// Reads a legacy common register (offset relative to the legacy I/O BAR).
    pub fn legacy_common_read(&self, offset: u8, data: &mut [u8]) -> Result<(), LegacyError> {
        let mut s = self.lock();
        let select = usize::from(s.queue_select);
        let value: u64 = match (offset, data.len()) {
            (legacy::HOST_FEATURES, 4) => s.offered & 0xffff_ffff,
            (legacy::GUEST_FEATURES, 4) => s.driver_features & 0xffff_ffff,
            (legacy::QUEUE_PFN, 4) => s.queues.get(select).map_or(0, |q| q.legacy_pfn.into()),
            (legacy::QUEUE_NUM, 2) => {
                if select < s.queues.len() {
                    u64::from(QUEUE_MAX_SIZE)
                } else {
                    0
                }
            }
            (legacy::QUEUE_SEL, 2) => s.queue_select.into(),
            (legacy::QUEUE_NOTIFY, 2) => 0,
            (legacy::STATUS, 1) => s.status.into(),
            (legacy::ISR, 1) => {
                let isr = s.isr;
                s.isr = 0;
                self.inner.update_intx(&mut s);
                isr.into()
            }
            (legacy::MSI_CONFIG_VECTOR, 2) => s.config_msix_vector.into(),
            (legacy::MSI_QUEUE_VECTOR, 2) => s
                .queues
                .get(select)
                .map_or(NO_VECTOR, |q| q.msix_vector)
                .into(),
            _ => {
                return Err(LegacyError::BadAccess {
                    offset: offset.into(),
                    len: data.len(),
                });
            }
        };
        data.copy_from_slice(&value.to_le_bytes()[..data.len()]);
        Ok(())
    }

    /// Writes a legacy common register (offset relative to the legacy I/O BAR).
    /// QUEUE_NOTIFY returns before the queue is processed.
    pub fn legacy_common_write(&self, offset: u8, data: &[u8]) -> Result<(), LegacyError> {
        let value = le(data);
        if (offset, data.len()) == (legacy::QUEUE_NOTIFY, 2) {
            self.kick(queue_bit(value as u16));
            return Ok(());
        }
        let mut s = self.lock();
        let select = usize::from(s.queue_select);
        match (offset, data.len()) {
            (legacy::GUEST_FEATURES, 4) => {
                // A legacy driver sees the low 32 feature bits only.
                s.driver_features = value & s.offered & 0xffff_ffff;
            }
            (legacy::QUEUE_PFN, 4) => {
                if select < s.queues.len() {
                    s.fresh_queue(select);
                    Self::set_legacy_pfn(&mut s.queues[select], value as u32);
                }
            }
            (legacy::QUEUE_SEL, 2) => s.queue_select = value as u16,
            (legacy::STATUS, 1) => {
                if value == 0 {
                    self.inner.reset_locked(&mut s);
                } else {
                    s.status = value as u8 | (s.status & STATUS_NEEDS_RESET);
                }
            }
            (legacy::MSI_CONFIG_VECTOR, 2) => s.config_msix_vector = value as u16,
            (legacy::MSI_QUEUE_VECTOR, 2) => {
                if let Some(q) = s.queues.get_mut(select) {
                    q.msix_vector = value as u16;
                }
            }
            _ => {
                return Err(LegacyError::BadAccess {
                    offset: offset.into(),
                    len: data.len(),
                });
            }
        }
        Ok(())
    }

    /// Points a fresh queue at the legacy ring at page `pfn` (0 leaves it disabled).
    fn set_legacy_pfn(q: &mut Queue, pfn: u32) {
        if pfn == 0 {
            return;
        }
        let size = QUEUE_MAX_SIZE;
        let desc = u64::from(pfn) * legacy::QUEUE_ALIGN;
        let avail = desc + u64::from(size) * 16;
        let avail_end = avail + 6 + 2 * u64::from(size);
        let used = avail_end.div_ceil(legacy::QUEUE_ALIGN) * legacy::QUEUE_ALIGN;
        q.size = size;
        q.desc = desc;
        q.driver = avail;
        q.device = used;
        q.legacy_pfn = pfn;
        q.ring = Virtqueue::new(size, desc, avail, used).ok();
        q.enabled = q.ring.is_some();
    }

    /// Reads the device config area at `offset` (legacy device config commands).
    pub fn device_config_read(&self, offset: u64, data: &mut [u8]) -> Result<(), LegacyError> {
        let config = self.lock().device_config.clone();
        match offset.checked_add(data.len() as u64) {
            Some(end) if end <= config.len() as u64 => {
                copy_out(&config, offset, data);
                Ok(())
            }
            _ => Err(LegacyError::BadAccess {
                offset,
                len: data.len(),
            }),
        }
    }

    /// Writes the device config area at `offset` (legacy device config commands): the
    /// config of every device here is read-only, so a write inside it changes nothing.
    pub fn device_config_write(&self, offset: u64, data: &[u8]) -> Result<(), LegacyError> {
        let size = self.lock().device_config.len() as u64;
        match offset.checked_add(data.len() as u64) {
            Some(end) if end <= size => Ok(()),
            _ => Err(LegacyError::BadAccess {
                offset,
                len: data.len(),
            }),
        }
    }
}

/// The offset of `offset..offset+len` in the area `start..start+size`, if it lies inside.
fn within(offset: u64, len: u64, start: u64, size: u64) -> Option<u64> {
    let at = offset.checked_sub(start)?;
    (at.checked_add(len)? <= size).then_some(at)
}

fn copy_out(source: &[u8], offset: u64, data: &mut [u8]) {
    for (i, byte) in data.iter_mut().enumerate() {
        *byte = usize::try_from(offset)
            .ok()
            .and_then(|o| o.checked_add(i))
            .and_then(|at| source.get(at))
            .copied()
            .unwrap_or(0);
    }
}
