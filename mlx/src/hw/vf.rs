//! An mlx-style VF: its physical config space (per generation), BAR 0 with the data-plane
//! registers in the doorbell page, the echo data plane, and what the PF's firmware keeps about
//! it: features, the migratable capability, whether a driver brought it up, the suspend state
//! and its page tracker.
//!
//! A doorbell only kicks the VF's worker thread (`vfio_variant::backend::worker::Worker`),
//! which serves the ring without the VF's lock while it reaches guest memory: that memory may
//! be reached by messages a VMM answers only after the doorbell write's reply. A reset or a
//! disable does not wait for a pass in flight; its results are dropped.
//!
//! Suspending the initiator stops the VF from starting DMA (it returns once the pass in flight
//! ended): doorbells are latched, not served. Suspending the responder (only after the
//! initiator) freezes it for saving. Resuming goes the other way round and serves what was
//! latched.
//!
//! Simplification: the VF's own initialization segment and command queue (a real VF is an
//! HCA with its own) are not modelled; BAR 0 below the doorbell page reads the firmware
//! revision and zeros.

use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;
use vfio_variant::backend::worker::Worker;
use vfio_variant::backend::{DmaAccess, DmaError};
use vfio_variant::physical::{PhysicalBar, PhysicalError, PhysicalFunction};

use super::dataplane::{self, DataPlane};
use super::ifc::*;
use super::image::Header;
use super::pci::{self, ConfigSpace, Generation};
use super::tracker::PageTracker;
use vfio_variant::backend::emulated::DmaSlot;

/// Firmware revision both generations report.
pub const FW_REV: u32 = 0x0016_0023;

/// What the firmware keeps about a VF.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct VfState {
    plane: DataPlane,
    features: u32,
    migratable: bool,
    in_use: bool,
    initiator_suspended: bool,
    responder_suspended: bool,
    /// Changes when the ring is reset, disabled or restored: a pass in flight then drops
    /// what it did.
    epoch: u64,
}

/// What the VF's registers and its worker share.
struct Shared {
    state: Mutex<VfState>,
    tracker: Mutex<Option<PageTracker>>,
    dma: DmaSlot,
}

/// An emulated VF.
pub struct MlxVf {
    name: String,
    number: u16,
    generation: Generation,
    all_features: u32,
    config: Mutex<ConfigSpace>,
    shared: Arc<Shared>,
    worker: Worker,
    clock: Instant,
}

/// The VF's DMA as the device does it: through its IOMMU domain, noted by its page tracker.
struct TrackedDma<'a>(&'a Shared);

impl Shared {
    /// On the worker: serves the pending entries unless the initiator is suspended, on a
    /// copy of the ring state, merged back unless the ring was reset meanwhile.
    fn serve(&self) {
        loop {
            let (mut plane, epoch) = {
                let s = self.state.lock();
                if s.initiator_suspended || s.plane.pending() == 0 {
                    return;
                }
                (s.plane, s.epoch)
            };
            let served = plane.process(&TrackedDma(self));
            let mut s = self.state.lock();
            if s.epoch != epoch {
                return;
            }
            s.plane.consumer = plane.consumer;
            s.plane.seq = plane.seq;
            s.plane.accum = plane.accum;
            s.plane.error |= plane.error;
            if served == 0 {
                return;
            }
        }
    }
}

impl DmaAccess for TrackedDma<'_> {
    fn read(&self, iova: u64, data: &mut [u8]) -> Result<(), DmaError> {
        self.0.dma.read(iova, data)
    }

    fn write(&self, iova: u64, data: &[u8]) -> Result<(), DmaError> {
        self.0.dma.write(iova, data)?;
        if let Some(tracker) = self.0.tracker.lock().as_mut() {
            tracker.mark(iova, data.len() as u64);
        }
        Ok(())
    }
}

impl MlxVf {
    /// VF `number` (1-based) of a `generation` PF whose firmware offers `features`; all
    /// features on until the VF is made migratable.
    pub fn new(
        name: impl Into<String>,
        number: u16,
        generation: Generation,
        features: u32,
    ) -> Self {
        let name = name.into();
        let shared = Arc::new(Shared {
            state: Mutex::new(VfState {
                plane: DataPlane::default(),
                features,
                migratable: false,
                in_use: false,
                initiator_suspended: false,
                responder_suspended: false,
                epoch: 0,
            }),
            tracker: Mutex::new(None),
            dma: DmaSlot::default(),
        });
        let weak = Arc::downgrade(&shared);
        let worker = Worker::new(format!("{name}-ring"), move |_| {
            if let Some(shared) = weak.upgrade() {
                shared.serve();
            }
        });
        Self {
            name,
            number,
            generation,
            all_features: features,
            config: Mutex::new(ConfigSpace::new(generation, generation.vf_device_id())),
            shared,
            worker,
            clock: Instant::now(),
        }
    }

    /// Waits until the doorbells rung so far are served (or the ring stopped).
    pub fn quiesce(&self) {
        self.worker.quiesce();
    }

    /// The VF number (1-based), also its function id in commands.
    pub fn number(&self) -> u16 {
        self.number
    }

    /// Its vhca_id: the firmware's name for it in migration commands.
    pub fn vhca_id(&self) -> u16 {
        self.number + 0x100 * u16::from(self.generation.number())
    }

    /// Its hardware generation.
    pub fn generation(&self) -> Generation {
        self.generation
    }

    /// Binds (or unbinds) guest memory: the VF's IOMMU domain.
    pub fn bind_dma(&self, memory: Option<Arc<dyn DmaAccess>>) {
        self.shared.dma.bind(memory);
    }

    /// Enabled features.
    pub fn features(&self) -> u32 {
        self.shared.state.lock().features
    }

    /// Whether it is migratable.
    pub fn migratable(&self) -> bool {
        self.shared.state.lock().migratable
    }

    /// Whether a driver brought it up (enabled its data plane) since the last reset.
    pub fn in_use(&self) -> bool {
        self.shared.state.lock().in_use
    }

    /// Sets the migratable capability (SET_HCA_CAP on the VF): refused once a driver uses
    /// it; migratable switches off the features that cannot migrate, and back on without.
    pub fn set_migratable(&self, migratable: bool) -> Result<(), u32> {
        let mut s = self.shared.state.lock();
        if s.in_use {
            return Err(SYNDROME_FUNCTION_IN_USE);
        }
        s.migratable = migratable;
        s.features = if migratable {
            self.all_features & !NON_MIGRATABLE_FEATURES
        } else {
            self.all_features
        };
        Ok(())
    }

    /// SUSPEND_VHCA with `op_mod`.
    pub fn suspend(&self, op_mod: u16) -> Result<(), (u8, u32)> {
        let mut s = self.shared.state.lock();
        if !s.migratable {
            return Err((STATUS_BAD_SYS_STATE, SYNDROME_NOT_MIGRATABLE));
        }
        match op_mod {
            SUSPEND_INITIATOR => {
                s.initiator_suspended = true;
                drop(s);
                // No DMA once suspended: the pass in flight ends first.
                self.worker.quiesce();
            }
            SUSPEND_RESPONDER if s.initiator_suspended => s.responder_suspended = true,
            SUSPEND_RESPONDER => {
                return Err((STATUS_BAD_SYS_STATE, SYNDROME_BAD_SUSPEND_ORDER));
            }
            _ => return Err((STATUS_BAD_OP, SYNDROME_OPCODE)),
        }
        Ok(())
    }

    /// RESUME_VHCA with `op_mod`; resuming the initiator serves the latched doorbells.
    pub fn resume(&self, op_mod: u16) -> Result<(), (u8, u32)> {
        {
            let mut s = self.shared.state.lock();
            if !s.migratable {
                return Err((STATUS_BAD_SYS_STATE, SYNDROME_NOT_MIGRATABLE));
            }
            match op_mod {
                RESUME_RESPONDER => s.responder_suspended = false,
                RESUME_INITIATOR if !s.responder_suspended => s.initiator_suspended = false,
                RESUME_INITIATOR => {
                    return Err((STATUS_BAD_SYS_STATE, SYNDROME_BAD_SUSPEND_ORDER));
                }
                _ => return Err((STATUS_BAD_OP, SYNDROME_OPCODE)),
            }
        }
        self.serve();
        Ok(())
    }

    /// Whether it is fully suspended (initiator and responder).
    pub fn suspended(&self) -> bool {
        let s = self.shared.state.lock();
        s.initiator_suspended && s.responder_suspended
    }

    /// The header of its current state (for saving).
    pub fn snapshot(&self, with_context: bool) -> Header {
        let s = self.shared.state.lock();
        Header {
            features: s.features,
            plane: s.plane,
            with_context,
        }
    }

    /// Takes a loaded state: refused when it needs features this VF does not have.
    pub fn restore(&self, header: &Header) -> Result<(), u32> {
        let mut s = self.shared.state.lock();
        if header.features & !s.features != 0 {
            return Err(SYNDROME_FEATURES);
        }
        s.plane = header.plane;
        s.epoch += 1;
        Ok(())
    }

    /// The page tracker slot.
    pub fn tracker(&self) -> &Mutex<Option<PageTracker>> {
        &self.shared.tracker
    }

    /// Has the worker serve the data plane's pending entries.
    fn serve(&self) {
        self.worker.kick(1);
    }

    fn register_read(&self, offset: u64) -> u32 {
        let s = self.shared.state.lock();
        if offset == INIT_FW_REV {
            return FW_REV;
        }
        match offset.checked_sub(dataplane::REGS) {
            Some(o) if o < 0x1000 => {
                let clock = (s.features & FEATURE_TIMESTAMP != 0)
                    .then(|| self.clock.elapsed().as_nanos() as u64);
                s.plane.read(o, clock)
            }
            _ => 0,
        }
    }

    fn register_write(&self, offset: u64, value: u32) {
        let rung = {
            let mut s = self.shared.state.lock();
            match offset.checked_sub(dataplane::REGS) {
                Some(o) if o < 0x1000 => {
                    if o == dataplane::ENABLE {
                        if value & 1 != 0 {
                            s.in_use = true;
                        } else {
                            s.epoch += 1;
                        }
                    }
                    s.plane.write(o, value)
                }
                _ => false,
            }
        };
        if rung {
            self.serve();
        }
    }
}

impl PhysicalFunction for MlxVf {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn config_size(&self) -> u16 {
        super::pci::CONFIG_SIZE
    }

    fn config_read(&self, offset: u16, data: &mut [u8]) -> Result<(), PhysicalError> {
        self.config.lock().read(offset, data)
    }

    fn config_write(&self, offset: u16, data: &[u8]) -> Result<(), PhysicalError> {
        self.config.lock().write(offset, data)
    }

    fn bar(&self, index: u8) -> Option<PhysicalBar> {
        pci::bar0(index)
    }

    /// Registers are 4 bytes wide, aligned, little-endian; other accesses read zeros and are dropped.
    fn bar_read(&self, index: u8, offset: u64, data: &mut [u8]) -> Result<(), PhysicalError> {
        pci::register_read(index, offset, data, |at| {
            self.register_read(at).to_le_bytes()
        })
    }

    fn bar_write(&self, index: u8, offset: u64, data: &[u8]) -> Result<(), PhysicalError> {
        pci::register_write(index, offset, data, |at, value| {
            self.register_write(at, u32::from_le_bytes(value))
        })
    }

    /// FLR: the data plane, the suspend state and the tracker are cleared; the capabilities
    /// the PF set (migratable, features) stay.
    fn reset(&self) -> Result<(), PhysicalError> {
        let mut s = self.shared.state.lock();
        s.plane = DataPlane::default();
        s.in_use = false;
        s.initiator_suspended = false;
        s.responder_suspended = false;
        s.epoch += 1;
        *self.shared.tracker.lock() = None;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hw::dataplane::{ENABLE, PRODUCER, REGS, RING_BASE, RING_SIZE, TIMESTAMP};
    use vfio_variant::backend::emulated::HostMemory;

    fn write(vf: &MlxVf, reg: u64, value: u32) {
        vf.bar_write(0, REGS + reg, &value.to_le_bytes()).unwrap();
    }

    fn read(vf: &MlxVf, reg: u64) -> u32 {
        let mut b = [0u8; 4];
        vf.bar_read(0, REGS + reg, &mut b).unwrap();
        u32::from_le_bytes(b)
    }

    #[test]
    fn migratable_only_before_use_and_it_drops_the_timestamp() {
        let vf = MlxVf::new("vf1", 1, Generation::One, FEATURE_ECHO | FEATURE_TIMESTAMP);
        std::thread::sleep(std::time::Duration::from_millis(1));
        assert_ne!(read(&vf, TIMESTAMP), 0);
        vf.set_migratable(true).unwrap();
        assert_eq!(vf.features(), FEATURE_ECHO);
        assert_eq!(read(&vf, TIMESTAMP), 0);
        write(&vf, RING_SIZE, 4);
        write(&vf, ENABLE, 1);
        assert_eq!(vf.set_migratable(false), Err(SYNDROME_FUNCTION_IN_USE));
        vf.reset().unwrap();
        vf.set_migratable(false).unwrap();
        assert_eq!(vf.features(), FEATURE_ECHO | FEATURE_TIMESTAMP);
    }

    #[test]
    fn suspended_initiator_latches_doorbells_until_resumed_in_order() {
        let vf = MlxVf::new("vf1", 1, Generation::Two, FEATURE_ECHO);
        let memory = Arc::new(HostMemory::new(0x2000));
        vf.bind_dma(Some(memory.clone()));
        assert_eq!(
            vf.suspend(SUSPEND_INITIATOR),
            Err((STATUS_BAD_SYS_STATE, SYNDROME_NOT_MIGRATABLE))
        );
        vf.set_migratable(true).unwrap();
        write(&vf, RING_BASE, 0x1000);
        write(&vf, RING_SIZE, 8);
        write(&vf, ENABLE, 1);
        assert_eq!(
            vf.suspend(SUSPEND_RESPONDER),
            Err((STATUS_BAD_SYS_STATE, SYNDROME_BAD_SUSPEND_ORDER))
        );
        vf.suspend(SUSPEND_INITIATOR).unwrap();
        vf.suspend(SUSPEND_RESPONDER).unwrap();
        assert!(vf.suspended());
        write(&vf, PRODUCER, 2);
        assert_eq!(read(&vf, dataplane::CONSUMER), 0);
        assert_eq!(
            vf.resume(RESUME_INITIATOR),
            Err((STATUS_BAD_SYS_STATE, SYNDROME_BAD_SUSPEND_ORDER))
        );
        vf.resume(RESUME_RESPONDER).unwrap();
        vf.resume(RESUME_INITIATOR).unwrap();
        vf.quiesce();
        assert_eq!(read(&vf, dataplane::CONSUMER), 2);
    }

    #[test]
    fn odd_accesses_are_harmless() {
        let vf = MlxVf::new("vf1", 1, Generation::One, FEATURE_ECHO);
        let mut b = [0xffu8; 2];
        vf.bar_read(0, REGS, &mut b).unwrap();
        assert_eq!(b, [0, 0]);
        vf.bar_write(0, REGS + 1, &[1, 2, 3, 4]).unwrap();
        assert!(vf.bar_read(0, pci::BAR0_SIZE - 2, &mut [0; 4]).is_err());
        assert!(vf.bar_read(1, 0, &mut [0; 4]).is_err());
        assert_eq!(read(&vf, 0), 0);
    }

    /// Memory whose reads wait until the test opens the gate, as guest memory reached by
    /// messages waits for a VMM.
    struct Gated {
        memory: HostMemory,
        gate: Mutex<Option<std::sync::mpsc::Receiver<()>>>,
    }

    impl DmaAccess for Gated {
        fn read(&self, iova: u64, data: &mut [u8]) -> Result<(), DmaError> {
            if let Some(gate) = self.gate.lock().take() {
                let _ = gate.recv();
            }
            self.memory.read(iova, data)
        }
        fn write(&self, iova: u64, data: &[u8]) -> Result<(), DmaError> {
            self.memory.write(iova, data)
        }
    }

    #[test]
    fn the_doorbell_returns_before_the_ring_is_read_and_registers_answer_meanwhile() {
        let vf = Arc::new(MlxVf::new("vf1", 1, Generation::One, FEATURE_ECHO));
        let (open, gate) = std::sync::mpsc::channel();
        vf.bind_dma(Some(Arc::new(Gated {
            memory: HostMemory::new(0x2000),
            gate: Mutex::new(Some(gate)),
        })));
        write(&vf, RING_BASE, 0x1000);
        write(&vf, RING_SIZE, 8);
        write(&vf, ENABLE, 1);
        let (done, rung) = std::sync::mpsc::channel();
        let ringer = Arc::clone(&vf);
        std::thread::spawn(move || {
            write(&ringer, PRODUCER, 1);
            let _ = done.send(read(&ringer, dataplane::CONSUMER));
        });
        // The write and a register read came back while the entry waits for memory.
        let consumer = rung.recv_timeout(std::time::Duration::from_secs(10));
        open.send(()).unwrap();
        assert_eq!(consumer, Ok(0));
        vf.quiesce();
        assert_eq!(read(&vf, dataplane::CONSUMER), 1);
    }
}
