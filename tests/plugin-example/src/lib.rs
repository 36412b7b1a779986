//! `example-scratchpad`: a small vfio-variant backend built as a plugin (a `cdylib`), written in
//! plain Rust against the framework's traits and exported with one macro call at the end.
//!
//! One profile, `scratchpad`, with [`CAPACITY`] instances: creating a function takes one,
//! dropping it gives it back. A function has an emulated BAR 0 of 32-bit registers
//! (see [`regs`]), an MSI-X capability whose table and PBA live in BAR 2 (served by the
//! framework: no access to them reaches this backend),
//! and stop-copy migration of its scratch and counter registers.
//!
//! The loader's compatibility and refusal fixtures are in `tests/plugin-variants/`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use parking_lot::Mutex;
use vfio_variant::backend::layout_check::LayoutRequirements;
use vfio_variant::backend::{
    Backend, BackendError, CreateRequest, DmaError, Function, FunctionContext, FunctionError,
    Interrupt, ProfileInfo,
};
use vfio_variant::config::ConfigEvent;
use vfio_variant::migration::{
    MigrationError, MigrationFlags, MigrationHooks, MigrationState, PrecopyInfo,
};

/// The backend's name.
const NAME: &str = "example-scratchpad";
/// The one profile.
const PROFILE: &str = "scratchpad";
/// Instances of the profile.
const CAPACITY: u32 = 2;

/// The default vPCI layout of the profile.
const LAYOUT: &str = r#"
[vpci]
format = 1
name = "example-scratchpad"
description = "Scratchpad example: registers, MSI-X and DMA in BAR 0"

[identity]
vendor_id = 0x1b36
device_id = 0x10f0
class_code = 0xff0000
revision = 1

[[bar]]
index = 0
kind = "mem32"
size = "4K"
backing = "emulated"

[[bar]]
index = 2
kind = "mem32"
size = "4K"
backing = "emulated"

[[capability]]
kind = "msix"
offset = 0x40
table_size = 2
table_bar = 2
table_offset = 0
pba_bar = 2
pba_offset = 0x800
"#;

/// BAR 0 registers: 32 bits wide, little-endian, accessed 4 bytes at a time.
pub mod regs {
    /// Read-only identification, [`ID_VALUE`].
    pub const ID: u64 = 0x00;
    /// Read-write scratch register; each write counts in [`COUNTER`].
    pub const SCRATCH: u64 = 0x04;
    /// Writes to [`SCRATCH`] since reset; writable.
    pub const COUNTER: u64 = 0x08;
    /// Writing `v` raises MSI-X vector `v`.
    pub const IRQ: u64 = 0x0c;
    /// Writing [`PANIC_MAGIC`] makes the backend panic (to test the host's panic path).
    pub const PANIC: u64 = 0x10;
    /// DMA source address, low half.
    pub const DMA_SRC_LO: u64 = 0x14;
    /// DMA source address, high half.
    pub const DMA_SRC_HI: u64 = 0x18;
    /// DMA destination address, low half.
    pub const DMA_DST_LO: u64 = 0x1c;
    /// DMA destination address, high half.
    pub const DMA_DST_HI: u64 = 0x20;
    /// DMA length in bytes (at most [`DMA_MAX`]).
    pub const DMA_LEN: u64 = 0x24;
    /// Writing 1 copies `DMA_LEN` bytes of guest memory from source to destination.
    pub const DMA_GO: u64 = 0x28;
    /// Result of the last copy: 0 done, 1 unmapped, 2 permission, 3 transfer error, 4 no
    /// guest memory attached.
    pub const DMA_STATUS: u64 = 0x2c;
    /// Read-only: 1 while the guest has MSI-X enabled.
    pub const MSIX_ENABLED: u64 = 0x30;
    /// End of the register block.
    pub const END: u64 = 0x34;

    /// The value of [`ID`] ("SCR1").
    pub const ID_VALUE: u32 = u32::from_le_bytes(*b"SCR1");
    /// The value that makes a write to [`PANIC`] panic.
    pub const PANIC_MAGIC: u32 = 0xdead_beef;
    /// The largest DMA copy.
    pub const DMA_MAX: u32 = 1 << 20;
}

/// The backend: counts available instances.
struct Scratchpad {
    available: Arc<AtomicU32>,
}

impl Scratchpad {
    fn new(capacity: u32) -> Self {
        Self {
            available: Arc::new(AtomicU32::new(capacity)),
        }
    }
}

impl Backend for Scratchpad {
    fn name(&self) -> &str {
        NAME
    }

    fn description(&self) -> &str {
        "Example plugin: a scratchpad function with registers, MSI-X and DMA"
    }

    fn profiles(&self) -> Vec<ProfileInfo> {
        vec![ProfileInfo {
            name: PROFILE.into(),
            description: "registers, MSI-X, DMA copy and stop-copy migration".into(),
            available_instances: self.available.load(Ordering::SeqCst),
            migratable: true,
        }]
    }

    fn default_layout(&self, profile: &str) -> Result<String, BackendError> {
        if profile != PROFILE {
            return Err(BackendError::UnknownProfile(profile.into()));
        }
        Ok(LAYOUT.trim_start().to_string())
    }

    fn create(&self, request: &CreateRequest) -> Result<Box<dyn Function>, BackendError> {
        if request.profile != PROFILE {
            return Err(BackendError::UnknownProfile(request.profile.clone()));
        }
        // BAR 0 holds the registers; the MSI-X table (served by the framework) gives the vectors.
        let facts = LayoutRequirements::new()
            .emulated_memory_bar(0, regs::END)
            .check(&request.layout)?;
        let msix_vectors = facts.msix_vectors;
        let mut initial_scratch = 0;
        for (key, value) in &request.attributes {
            match key.as_str() {
                "scratch" => {
                    initial_scratch = parse_u32(value).ok_or_else(|| {
                        BackendError::Refused(format!(
                            "attribute scratch = `{value}` is not a 32-bit number"
                        ))
                    })?
                }
                other => {
                    return Err(BackendError::Refused(format!(
                        "unknown attribute `{other}`"
                    )));
                }
            }
        }
        let instance = Instance::take(&self.available)
            .ok_or_else(|| BackendError::NoInstances(PROFILE.into()))?;
        Ok(Box::new(ScratchFunction {
            msix_vectors,
            initial_scratch,
            registers: Mutex::new(Registers::new(initial_scratch)),
            context: Mutex::new(None),
            migration: Mutex::new(Migration::default()),
            _instance: instance,
        }))
    }
}

fn parse_u32(text: &str) -> Option<u32> {
    match text.strip_prefix("0x") {
        Some(hex) => u32::from_str_radix(hex, 16).ok(),
        None => text.parse().ok(),
    }
}

/// One instance of the profile, given back when dropped.
struct Instance(Arc<AtomicU32>);

impl Instance {
    fn take(available: &Arc<AtomicU32>) -> Option<Self> {
        available
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .ok()
            .map(|_| Self(available.clone()))
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// The register file of BAR 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Registers {
    scratch: u32,
    counter: u32,
    dma_src: u64,
    dma_dst: u64,
    dma_len: u32,
    dma_status: u32,
    msix_enabled: bool,
}

impl Registers {
    fn new(scratch: u32) -> Self {
        Self {
            scratch,
            counter: 0,
            dma_src: 0,
            dma_dst: 0,
            dma_len: 0,
            dma_status: 0,
            msix_enabled: false,
        }
    }
}

/// Where a migration is.
#[derive(Debug, Default)]
struct Migration {
    /// Bytes of the saved state handed out so far.
    saved: usize,
    /// Bytes of state received so far.
    loading: Vec<u8>,
}

/// Saved state: `ID_VALUE`, scratch, counter, DMA source, destination and length,
/// little-endian.
const STATE_LEN: usize = 32;

/// A provisioned scratchpad function.
struct ScratchFunction {
    msix_vectors: u32,
    initial_scratch: u32,
    registers: Mutex<Registers>,
    context: Mutex<Option<FunctionContext>>,
    migration: Mutex<Migration>,
    _instance: Instance,
}

fn register(offset: u64, len: usize) -> Result<u64, FunctionError> {
    if len != 4 || !offset.is_multiple_of(4) || offset >= regs::END {
        return Err(FunctionError::BadAccess(format!(
            "{len} bytes at {offset:#x} (registers are 32-bit, below {:#x})",
            regs::END
        )));
    }
    Ok(offset)
}

impl ScratchFunction {
    fn context(&self) -> Option<FunctionContext> {
        self.context.lock().clone()
    }

    /// Copies guest memory as the DMA registers say; returns the new DMA_STATUS.
    fn copy(&self) -> Result<u32, FunctionError> {
        let (src, dst, len) = {
            let r = self.registers.lock();
            (r.dma_src, r.dma_dst, r.dma_len)
        };
        if len > regs::DMA_MAX {
            return Err(FunctionError::BadAccess(format!(
                "DMA length {len} is over {}",
                regs::DMA_MAX
            )));
        }
        let Some(context) = self.context() else {
            return Ok(4);
        };
        let mut buffer = vec![0; len as usize];
        let result = context
            .dma
            .read(src, &mut buffer)
            .and_then(|()| context.dma.write(dst, &buffer));
        Ok(match result {
            Ok(()) => 0,
            Err(DmaError::Unmapped { .. }) => 1,
            Err(DmaError::Permission { .. }) => 2,
            Err(DmaError::Transfer(_)) => 3,
        })
    }

    fn state(&self) -> [u8; STATE_LEN] {
        let r = self.registers.lock();
        let mut state = [0; STATE_LEN];
        state[..4].copy_from_slice(&regs::ID_VALUE.to_le_bytes());
        state[4..8].copy_from_slice(&r.scratch.to_le_bytes());
        state[8..12].copy_from_slice(&r.counter.to_le_bytes());
        state[12..20].copy_from_slice(&r.dma_src.to_le_bytes());
        state[20..28].copy_from_slice(&r.dma_dst.to_le_bytes());
        state[28..].copy_from_slice(&r.dma_len.to_le_bytes());
        state
    }
}

impl Function for ScratchFunction {
    fn attach(&self, context: FunctionContext) {
        *self.context.lock() = Some(context);
    }

    fn bar_read(&self, bar: u8, offset: u64, data: &mut [u8]) -> Result<(), FunctionError> {
        if bar != 0 {
            return Err(FunctionError::BadAccess(format!(
                "BAR {bar} is not served by the backend"
            )));
        }
        let r = *self.registers.lock();
        let value = match register(offset, data.len())? {
            regs::ID => regs::ID_VALUE,
            regs::SCRATCH => r.scratch,
            regs::COUNTER => r.counter,
            regs::DMA_SRC_LO => r.dma_src as u32,
            regs::DMA_SRC_HI => (r.dma_src >> 32) as u32,
            regs::DMA_DST_LO => r.dma_dst as u32,
            regs::DMA_DST_HI => (r.dma_dst >> 32) as u32,
            regs::DMA_LEN => r.dma_len,
            regs::DMA_STATUS => r.dma_status,
            regs::MSIX_ENABLED => u32::from(r.msix_enabled),
            _ => 0,
        };
        data.copy_from_slice(&value.to_le_bytes());
        Ok(())
    }

    fn bar_write(&self, bar: u8, offset: u64, data: &[u8]) -> Result<(), FunctionError> {
        if bar != 0 {
            return Err(FunctionError::BadAccess(format!(
                "BAR {bar} is not served by the backend"
            )));
        }
        let offset = register(offset, data.len())?;
        let value = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
        let low = |old: u64| (old & !0xffff_ffff) | u64::from(value);
        let high = |old: u64| (old & 0xffff_ffff) | (u64::from(value) << 32);
        match offset {
            regs::IRQ => {
                if value >= self.msix_vectors {
                    return Err(FunctionError::BadAccess(format!(
                        "MSI-X vector {value} of {}",
                        self.msix_vectors
                    )));
                }
                let context = self
                    .context()
                    .ok_or_else(|| FunctionError::Device("no interrupts attached".into()))?;
                context.interrupts.raise(Interrupt::Msix(value));
            }
            regs::PANIC if value == regs::PANIC_MAGIC => {
                panic!("scratchpad: panic register written with {value:#x}");
            }
            regs::DMA_GO if value == 1 => {
                let status = self.copy()?;
                self.registers.lock().dma_status = status;
            }
            _ => {
                let mut r = self.registers.lock();
                match offset {
                    regs::SCRATCH => {
                        r.scratch = value;
                        r.counter = r.counter.wrapping_add(1);
                    }
                    regs::COUNTER => r.counter = value,
                    regs::DMA_SRC_LO => r.dma_src = low(r.dma_src),
                    regs::DMA_SRC_HI => r.dma_src = high(r.dma_src),
                    regs::DMA_DST_LO => r.dma_dst = low(r.dma_dst),
                    regs::DMA_DST_HI => r.dma_dst = high(r.dma_dst),
                    regs::DMA_LEN => r.dma_len = value,
                    // Read-only registers and ignored values.
                    _ => {}
                }
            }
        }
        Ok(())
    }

    fn config_changed(&self, event: ConfigEvent) {
        if let ConfigEvent::Msix { enabled, .. } = event {
            self.registers.lock().msix_enabled = enabled;
        }
    }

    fn reset(&self) -> Result<(), FunctionError> {
        *self.registers.lock() = Registers::new(self.initial_scratch);
        *self.migration.lock() = Migration::default();
        Ok(())
    }

    fn migration(&self) -> Option<&dyn MigrationHooks> {
        Some(self)
    }
}

impl MigrationHooks for ScratchFunction {
    fn flags(&self) -> MigrationFlags {
        MigrationFlags::STOP_COPY
    }

    fn transition(&self, from: MigrationState, to: MigrationState) -> Result<(), MigrationError> {
        use MigrationState::*;
        match (from, to) {
            (Running, Stop) | (Stop, Running) | (StopCopy, Stop) => {}
            (Stop, StopCopy) => self.migration.lock().saved = 0,
            (Stop, Resuming) => self.migration.lock().loading.clear(),
            (Resuming, Stop) => {
                let loading = std::mem::take(&mut self.migration.lock().loading);
                if loading.len() != STATE_LEN {
                    return Err(MigrationError::InvalidData(format!(
                        "{} bytes of state, expected {STATE_LEN}",
                        loading.len()
                    )));
                }
                let u32_at =
                    |at: usize| u32::from_le_bytes(loading[at..at + 4].try_into().unwrap());
                let u64_at =
                    |at: usize| u64::from_le_bytes(loading[at..at + 8].try_into().unwrap());
                let mut r = self.registers.lock();
                (r.scratch, r.counter) = (u32_at(4), u32_at(8));
                (r.dma_src, r.dma_dst, r.dma_len) = (u64_at(12), u64_at(20), u32_at(28));
            }
            _ => return Err(MigrationError::Device(format!("no arc {from:?} -> {to:?}"))),
        }
        Ok(())
    }

    fn save(&self, buf: &mut [u8]) -> Result<usize, MigrationError> {
        let state = self.state();
        let mut migration = self.migration.lock();
        let rest = &state[migration.saved..];
        let n = rest.len().min(buf.len());
        buf[..n].copy_from_slice(&rest[..n]);
        migration.saved += n;
        Ok(n)
    }

    fn load(&self, data: &[u8]) -> Result<(), MigrationError> {
        let mut migration = self.migration.lock();
        migration.loading.extend_from_slice(data);
        let seen = migration.loading.len().min(4);
        if migration.loading[..seen] != regs::ID_VALUE.to_le_bytes()[..seen] {
            return Err(MigrationError::InvalidData("not scratchpad state".into()));
        }
        if migration.loading.len() > STATE_LEN {
            return Err(MigrationError::InvalidData(format!(
                "more than {STATE_LEN} bytes of state"
            )));
        }
        Ok(())
    }

    fn precopy_info(&self) -> Result<PrecopyInfo, MigrationError> {
        Err(MigrationError::Device("no pre-copy".into()))
    }

    fn stop_copy_size(&self) -> Result<u64, MigrationError> {
        Ok(STATE_LEN as u64)
    }
}

vfio_variant::export_backend!(Scratchpad::new(CAPACITY));

#[cfg(test)]
mod tests {
    #[test]
    fn conforms() {
        vfio_variant::testing::assert_conformance(&super::Scratchpad::new(super::CAPACITY));
    }
}
