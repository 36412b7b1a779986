//! The sample function's device model.
//!
//! Its DMA engine runs off the register path: writing DMA_CMD with START latches the transfer,
//! sets DMA_STATUS to [`DMA_STATUS_BUSY`] and returns; the function's worker thread then copies
//! (guest memory may be reached by messages the VMM answers only after the write's reply) and
//! sets DMA_STATUS, DMA_COUNT and the interrupt. A START while busy is ignored.

use std::ops::Deref;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};

use memmap2::{MmapOptions, MmapRaw};
use parking_lot::Mutex;
use vfio_variant::backend::worker::Worker;
use vfio_variant::backend::{Function, FunctionContext, FunctionError, Interrupt};
use vfio_variant::config::ConfigEvent;
use vfio_variant::migration::MigrationHooks;
use vfio_variant::pci::regs::COMMAND_BUS_MASTER;
use vfio_variant::physical::MmapFile;

use super::migration::SampleMigration;
use super::registers::*;

/// Register and interrupt state.
#[derive(Default)]
pub(super) struct State {
    pub(super) scratch: u32,
    pub(super) int_status: u32,
    pub(super) src: u64,
    pub(super) dst: u64,
    pub(super) len: u32,
    pub(super) count: u32,
    pub(super) status: u32,
    msix_enabled: bool,
    msi_enabled: bool,
    bus_master: bool,
    intx_asserted: bool,
    /// The transfer latched by START, until the worker takes it.
    job: Option<Job>,
}

/// A transfer the DMA engine runs.
#[derive(Clone, Copy)]
struct Job {
    src: u64,
    dst: u64,
    len: u32,
    command: u32,
    /// [`SampleInner::resets`] when it started: a reset meanwhile drops its completion.
    resets: u64,
}

/// The shared-memory BAR: a memfd the VMM may mmap, mapped here too. It is sealed at its
/// size, so the VMM, which holds the fd, cannot shrink it under the server's mapping.
pub(super) struct SharedMemory {
    fd: Arc<OwnedFd>,
    map: MmapRaw,
}

impl SharedMemory {
    fn new() -> std::io::Result<Self> {
        use rustix::fs::{MemfdFlags, SealFlags};
        let fd = rustix::fs::memfd_create(
            "vfio-variant-sample-shm",
            MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
        )?;
        rustix::fs::ftruncate(&fd, SHM_SIZE as u64)?;
        rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL)?;
        let map = MmapOptions::new().len(SHM_SIZE).map_raw(&fd)?;
        Ok(Self {
            fd: Arc::new(fd),
            map,
        })
    }

    fn range(offset: u64, len: usize) -> Result<usize, FunctionError> {
        match usize::try_from(offset)
            .ok()
            .filter(|o| o.checked_add(len).is_some_and(|end| end <= SHM_SIZE))
        {
            Some(at) => Ok(at),
            None => Err(FunctionError::BadAccess(format!(
                "{len} bytes at {offset:#x} are outside BAR 2"
            ))),
        }
    }

    pub(super) fn read(&self, offset: u64, data: &mut [u8]) -> Result<(), FunctionError> {
        let at = Self::range(offset, data.len())?;
        // SAFETY: `at + data.len() <= SHM_SIZE == map.len()` (checked by `range`); the map
        // lives as long as `self` and the memfd is sealed at SHM_SIZE. The VMM may write the memfd concurrently through its own
        // mapping; bytes are copied without being interpreted.
        unsafe {
            std::ptr::copy_nonoverlapping(self.map.as_ptr().add(at), data.as_mut_ptr(), data.len())
        };
        Ok(())
    }

    pub(super) fn write(&self, offset: u64, data: &[u8]) -> Result<(), FunctionError> {
        let at = Self::range(offset, data.len())?;
        // SAFETY: as in `read`, the destination lies inside the live, writable mapping.
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), self.map.as_mut_ptr().add(at), data.len())
        };
        Ok(())
    }

    fn sum(&self) -> u32 {
        let mut page = [0u8; 4096];
        let _ = self.read(0, &mut page);
        page.chunks_exact(4)
            .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
            .fold(0u32, u32::wrapping_add)
    }

    fn clear(&self) {
        let _ = self.write(0, &vec![0u8; SHM_SIZE]);
    }
}

/// One sample function: its device state, and the worker running its DMA engine.
pub struct SampleFunction {
    inner: Arc<SampleInner>,
    pub(super) worker: Worker,
}

impl Deref for SampleFunction {
    type Target = SampleInner;

    fn deref(&self) -> &SampleInner {
        &self.inner
    }
}

/// The sample function's state, shared with its DMA worker.
pub struct SampleInner {
    pub(super) state: Mutex<State>,
    pub(super) msix_bar: Mutex<Vec<u8>>,
    pub(super) shared: SharedMemory,
    /// Survives function resets, as a device's non-volatile storage does.
    pub(super) nvram: AtomicU32,
    /// Migration state: stopped or not, the state being saved or loaded.
    pub(super) migration: Mutex<SampleMigration>,
    context: OnceLock<FunctionContext>,
    in_use: Arc<AtomicU32>,
    /// Function resets so far.
    resets: AtomicU64,
}

impl SampleFunction {
    /// A function at reset; `in_use` is decremented when it is dropped.
    pub(super) fn new(in_use: Arc<AtomicU32>) -> std::io::Result<Self> {
        let inner = Arc::new(SampleInner {
            state: Mutex::new(State::default()),
            msix_bar: Mutex::new(vec![0; 4096]),
            shared: SharedMemory::new()?,
            nvram: AtomicU32::new(0),
            migration: Mutex::new(SampleMigration::default()),
            context: OnceLock::new(),
            in_use,
            resets: AtomicU64::new(0),
        });
        let engine: Weak<SampleInner> = Arc::downgrade(&inner);
        let worker = Worker::new("sample-dma", move |_| {
            if let Some(inner) = engine.upgrade() {
                inner.run_job();
            }
        });
        Ok(Self { inner, worker })
    }
}

impl SampleInner {
    fn raise(&self, state: &mut State, vector: u32) {
        let Some(context) = self.context.get() else {
            return;
        };
        if self.migration.lock().stopped {
            return;
        }
        if state.msix_enabled {
            context.interrupts.raise(Interrupt::Msix(vector));
        } else if state.msi_enabled {
            context.interrupts.raise(Interrupt::Msi(vector));
        } else if !state.intx_asserted {
            state.intx_asserted = true;
            context.interrupts.raise(Interrupt::Intx(true));
        }
    }

    /// Lowers the INTx line once nothing is pending.
    pub(super) fn update_intx(&self, state: &mut State) {
        if state.intx_asserted && state.int_status == 0 {
            state.intx_asserted = false;
            if let Some(context) = self.context.get() {
                context.interrupts.raise(Interrupt::Intx(false));
            }
        }
    }

    /// START: refuses at once what needs no memory, else latches the transfer for the
    /// worker; returns whether the worker must run.
    fn start_dma(&self, state: &mut State, command: u32) -> bool {
        if self.migration.lock().stopped {
            state.status = DMA_STATUS_STOPPED;
            return false;
        }
        if state.status == DMA_STATUS_BUSY {
            return false;
        }
        let refused = if state.len > DMA_MAX_LEN {
            Some(1)
        } else if !state.bus_master {
            Some(4)
        } else {
            None
        };
        if let Some(status) = refused {
            self.complete(state, status, command);
            return false;
        }
        state.job = Some(Job {
            src: state.src,
            dst: state.dst,
            len: state.len,
            command,
            resets: self.resets.load(Ordering::SeqCst),
        });
        state.status = DMA_STATUS_BUSY;
        true
    }

    fn complete(&self, state: &mut State, status: u32, command: u32) {
        state.status = status;
        state.count = state.count.wrapping_add(1);
        if command & DMA_CMD_IRQ != 0 {
            state.int_status |= INT_DMA_DONE;
            self.raise(state, 0);
        }
    }

    /// On the worker: copies the latched transfer, without the state lock while it reaches
    /// guest memory, then completes it (unless the function was reset meanwhile).
    fn run_job(&self) {
        let Some(job) = self.state.lock().job.take() else {
            return;
        };
        let status = self.copy(&job);
        let mut state = self.state.lock();
        if self.resets.load(Ordering::SeqCst) == job.resets {
            self.complete(&mut state, status, job.command);
        }
    }

    fn copy(&self, job: &Job) -> u32 {
        let Some(context) = self.context.get() else {
            return 2;
        };
        let mut buffer = vec![0u8; job.len as usize];
        if context.dma.read(job.src, &mut buffer).is_err() {
            return 2;
        }
        if context.dma.write(job.dst, &buffer).is_err() {
            return 3;
        }
        0
    }

    fn register_read(&self, offset: u64) -> u32 {
        let state = self.state.lock();
        match offset {
            ID => ID_VALUE,
            SCRATCH => state.scratch,
            INT_STATUS => state.int_status,
            DMA_SRC_LO => state.src as u32,
            DMA_SRC_HI => (state.src >> 32) as u32,
            DMA_DST_LO => state.dst as u32,
            DMA_DST_HI => (state.dst >> 32) as u32,
            DMA_LEN => state.len,
            DMA_COUNT => state.count,
            DMA_STATUS => state.status,
            SHM_SUM => self.shared.sum(),
            NVRAM => self.nvram.load(Ordering::SeqCst),
            _ => 0,
        }
    }

    /// Writes a register; returns whether the DMA worker must run.
    fn register_write(&self, offset: u64, value: u32) -> bool {
        let mut state = self.state.lock();
        let state = &mut *state;
        match offset {
            SCRATCH => state.scratch = value,
            NVRAM => self.nvram.store(value, Ordering::SeqCst),
            INT_STATUS => {
                state.int_status &= !value;
                self.update_intx(state);
            }
            RAISE if value < VECTORS => {
                state.int_status |= INT_RAISED;
                self.raise(state, value);
            }
            RAISE => {}
            DMA_SRC_LO => state.src = (state.src & !0xffff_ffff) | u64::from(value),
            DMA_SRC_HI => state.src = (state.src & 0xffff_ffff) | (u64::from(value) << 32),
            DMA_DST_LO => state.dst = (state.dst & !0xffff_ffff) | u64::from(value),
            DMA_DST_HI => state.dst = (state.dst & 0xffff_ffff) | (u64::from(value) << 32),
            DMA_LEN => state.len = value,
            DMA_CMD if value & DMA_CMD_START != 0 => return self.start_dma(state, value),
            _ => {}
        }
        false
    }
}

impl Drop for SampleFunction {
    fn drop(&mut self) {
        self.in_use.fetch_sub(1, Ordering::SeqCst);
    }
}

fn check_register_access(offset: u64, len: usize) -> Result<(), FunctionError> {
    if len != 4 || !offset.is_multiple_of(4) {
        return Err(FunctionError::BadAccess(format!(
            "registers are 32-bit aligned; got {len} bytes at {offset:#x}"
        )));
    }
    Ok(())
}

impl Function for SampleFunction {
    fn attach(&self, context: FunctionContext) {
        let _ = self.context.set(context);
    }

    fn bar_read(&self, bar: u8, offset: u64, data: &mut [u8]) -> Result<(), FunctionError> {
        match bar {
            0 => {
                check_register_access(offset, data.len())?;
                data.copy_from_slice(&self.register_read(offset).to_le_bytes());
                Ok(())
            }
            1 => {
                let memory = self.msix_bar.lock();
                let at = offset as usize;
                data.copy_from_slice(&memory[at..at + data.len()]);
                Ok(())
            }
            2 => self.shared.read(offset, data),
            other => Err(FunctionError::BadAccess(format!("no emulated BAR {other}"))),
        }
    }

    fn bar_write(&self, bar: u8, offset: u64, data: &[u8]) -> Result<(), FunctionError> {
        match bar {
            0 => {
                check_register_access(offset, data.len())?;
                let mut value = [0u8; 4];
                value.copy_from_slice(data);
                if self.register_write(offset, u32::from_le_bytes(value)) {
                    self.worker.kick(1);
                }
                Ok(())
            }
            1 => {
                let mut memory = self.msix_bar.lock();
                let at = offset as usize;
                memory[at..at + data.len()].copy_from_slice(data);
                Ok(())
            }
            2 => self.shared.write(offset, data),
            other => Err(FunctionError::BadAccess(format!("no emulated BAR {other}"))),
        }
    }

    fn bar_mmap(&self, bar: u8) -> Option<MmapFile> {
        (bar == 2).then(|| MmapFile {
            fd: Arc::clone(&self.shared.fd),
            offset: 0,
        })
    }

    fn config_changed(&self, event: ConfigEvent) {
        let mut state = self.state.lock();
        match event {
            ConfigEvent::Msix { enabled, .. } => state.msix_enabled = enabled,
            ConfigEvent::Msi { enabled, .. } => state.msi_enabled = enabled,
            ConfigEvent::Command { new, .. } => {
                // INTx disable is the framework's: it masks the line, the condition stays.
                state.bus_master = new & COMMAND_BUS_MASTER != 0;
            }
            ConfigEvent::FunctionLevelReset | ConfigEvent::PowerState(_) => {}
        }
    }

    fn migration(&self) -> Option<&dyn MigrationHooks> {
        Some(self)
    }

    fn reset(&self) -> Result<(), FunctionError> {
        *self.migration.lock() = SampleMigration::default();
        // A transfer in flight is not waited for (its memory may be reached by messages the
        // VMM answers only after the reset's reply); its completion is dropped.
        self.resets.fetch_add(1, Ordering::SeqCst);
        let mut state = self.state.lock();
        state.int_status = 0;
        self.update_intx(&mut state);
        *state = State::default();
        self.msix_bar.lock().fill(0);
        self.shared.clear();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vfio_variant::backend::{DmaAccess, DmaError, InterruptSink};

    struct Memory(Mutex<Vec<u8>>);

    impl DmaAccess for Memory {
        fn read(&self, iova: u64, data: &mut [u8]) -> Result<(), DmaError> {
            let memory = self.0.lock();
            let range = iova as usize..iova as usize + data.len();
            data.copy_from_slice(memory.get(range).ok_or(DmaError::Unmapped {
                iova,
                len: data.len(),
            })?);
            Ok(())
        }
        fn write(&self, iova: u64, data: &[u8]) -> Result<(), DmaError> {
            let mut memory = self.0.lock();
            let range = iova as usize..iova as usize + data.len();
            memory
                .get_mut(range)
                .ok_or(DmaError::Unmapped {
                    iova,
                    len: data.len(),
                })?
                .copy_from_slice(data);
            Ok(())
        }
    }

    #[derive(Default)]
    struct Recorder(Mutex<Vec<Interrupt>>);

    impl InterruptSink for Recorder {
        fn raise(&self, interrupt: Interrupt) {
            self.0.lock().push(interrupt);
        }
    }

    fn attached() -> (SampleFunction, Arc<Memory>, Arc<Recorder>) {
        let f = SampleFunction::new(Arc::new(AtomicU32::new(1))).unwrap();
        let memory = Arc::new(Memory(Mutex::new(vec![0; 0x10000])));
        let irqs = Arc::new(Recorder::default());
        f.attach(FunctionContext {
            dma: memory.clone(),
            interrupts: irqs.clone(),
        });
        f.config_changed(ConfigEvent::Command {
            old: 0,
            new: COMMAND_BUS_MASTER,
        });
        (f, memory, irqs)
    }

    /// Writes a register and waits for the DMA work it started.
    fn write(f: &SampleFunction, offset: u64, value: u32) {
        f.bar_write(0, offset, &value.to_le_bytes()).unwrap();
        f.worker.quiesce();
    }

    fn read(f: &SampleFunction, offset: u64) -> u32 {
        let mut data = [0u8; 4];
        f.bar_read(0, offset, &mut data).unwrap();
        u32::from_le_bytes(data)
    }

    #[test]
    fn dma_copies_and_interrupts_by_mode() {
        let (f, memory, irqs) = attached();
        memory.0.lock()[0x1000..0x1010].copy_from_slice(b"sixteen bytes!!!");
        write(&f, DMA_SRC_LO, 0x1000);
        write(&f, DMA_DST_LO, 0x8000);
        write(&f, DMA_LEN, 16);
        write(&f, DMA_CMD, DMA_CMD_START | DMA_CMD_IRQ);
        assert_eq!(&memory.0.lock()[0x8000..0x8010], b"sixteen bytes!!!");
        assert_eq!((read(&f, DMA_COUNT), read(&f, DMA_STATUS)), (1, 0));
        assert_eq!(*irqs.0.lock(), vec![Interrupt::Intx(true)]);
        write(&f, INT_STATUS, INT_DMA_DONE);
        assert_eq!(irqs.0.lock().last(), Some(&Interrupt::Intx(false)));
        f.config_changed(ConfigEvent::Msix {
            enabled: true,
            function_mask: false,
        });
        write(&f, RAISE, 3);
        assert_eq!(irqs.0.lock().last(), Some(&Interrupt::Msix(3)));
    }

    /// Guest memory whose reads wait until the test opens the gate, as memory reached by
    /// messages waits for a VMM.
    struct Gated {
        memory: Memory,
        gate: Mutex<Option<std::sync::mpsc::Receiver<()>>>,
    }

    impl DmaAccess for Gated {
        fn read(&self, iova: u64, data: &mut [u8]) -> Result<(), DmaError> {
            if let Some(gate) = self.gate.lock().take() {
                gate.recv().unwrap();
            }
            self.memory.read(iova, data)
        }
        fn write(&self, iova: u64, data: &[u8]) -> Result<(), DmaError> {
            self.memory.write(iova, data)
        }
    }

    #[test]
    fn start_returns_before_the_copy_and_registers_answer_meanwhile() {
        let f = SampleFunction::new(Arc::new(AtomicU32::new(1))).unwrap();
        let (open, gate) = std::sync::mpsc::channel();
        let memory = Arc::new(Gated {
            memory: Memory(Mutex::new(vec![0; 0x10000])),
            gate: Mutex::new(Some(gate)),
        });
        memory.memory.0.lock()[0x1000..0x1004].copy_from_slice(b"late");
        f.attach(FunctionContext {
            dma: memory.clone(),
            interrupts: Arc::new(Recorder::default()),
        });
        f.config_changed(ConfigEvent::Command {
            old: 0,
            new: COMMAND_BUS_MASTER,
        });
        let start = |f: &SampleFunction| {
            f.bar_write(0, DMA_CMD, &DMA_CMD_START.to_le_bytes())
                .unwrap();
        };
        write(&f, DMA_SRC_LO, 0x1000);
        write(&f, DMA_DST_LO, 0x2000);
        write(&f, DMA_LEN, 4);
        // Without the worker this write would wait for the gate, and so would the test.
        start(&f);
        assert_eq!(read(&f, DMA_STATUS), DMA_STATUS_BUSY);
        assert_eq!(read(&f, DMA_COUNT), 0);
        start(&f); // ignored while busy
        open.send(()).unwrap();
        f.worker.quiesce();
        assert_eq!((read(&f, DMA_STATUS), read(&f, DMA_COUNT)), (0, 1));
        assert_eq!(&memory.memory.0.lock()[0x2000..0x2004], b"late");
    }

    #[test]
    fn dma_faults_are_reported_not_fatal() {
        let (f, _, _) = attached();
        f.config_changed(ConfigEvent::Command {
            old: COMMAND_BUS_MASTER,
            new: 0,
        });
        write(&f, DMA_LEN, 4);
        write(&f, DMA_CMD, DMA_CMD_START);
        assert_eq!(read(&f, DMA_STATUS), 4, "no DMA without bus mastering");
        f.config_changed(ConfigEvent::Command {
            old: 0,
            new: COMMAND_BUS_MASTER,
        });
        write(&f, DMA_SRC_LO, 0xfff0);
        write(&f, DMA_LEN, 64);
        write(&f, DMA_CMD, DMA_CMD_START);
        assert_eq!(read(&f, DMA_STATUS), 2);
        write(&f, DMA_LEN, DMA_MAX_LEN + 1);
        write(&f, DMA_CMD, DMA_CMD_START);
        assert_eq!(read(&f, DMA_STATUS), 1);
        assert!(f.bar_read(0, 2, &mut [0u8; 4]).is_err());
        assert!(f.bar_write(0, 0, &[0u8; 2]).is_err());
        assert_eq!(read(&f, ID), ID_VALUE);
    }

    #[test]
    fn shared_memory_is_the_mmapped_file() {
        let (f, _, _) = attached();
        let file = f.bar_mmap(2).expect("BAR 2 is mmappable");
        let map = MmapOptions::new().len(SHM_SIZE).map_raw(&*file.fd).unwrap();
        // SAFETY: the test writes 8 bytes at the start of its own 64 KiB mapping.
        unsafe {
            std::ptr::copy_nonoverlapping([1u8, 0, 0, 0, 2, 0, 0, 0].as_ptr(), map.as_mut_ptr(), 8)
        };
        assert_eq!(read(&f, SHM_SUM), 3);
        f.bar_write(2, 0x10, &5u32.to_le_bytes()).unwrap();
        assert_eq!(read(&f, SHM_SUM), 8);
        assert!(f.bar_write(2, SHM_SIZE as u64 - 2, &[0; 4]).is_err());
        // The VMM holds the fd but cannot shrink the memory under the device's mapping.
        assert!(rustix::fs::ftruncate(&*file.fd, 0).is_err());
        assert_eq!(read(&f, SHM_SUM), 8);
        write(&f, NVRAM, 0xfeed);
        write(&f, SCRATCH, 0xbeef);
        f.reset().unwrap();
        assert_eq!(read(&f, SHM_SUM), 0);
        assert_eq!(
            (read(&f, SCRATCH), read(&f, NVRAM)),
            (0, 0xfeed),
            "NVRAM survives reset"
        );
    }
}
