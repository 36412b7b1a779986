//! A backend function as the kit sees it: every call the framework forwards is recorded, and
//! the interrupts it raises are kept.

use std::sync::Arc;

use parking_lot::Mutex;

use crate::backend::{Function, FunctionContext, FunctionError, Interrupt, InterruptSink};
use crate::config::ConfigEvent;
use crate::migration::MigrationHooks;
use crate::physical::{MmapFile, PhysicalFunction};

/// Where an access reached the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reached {
    /// `bar_read`/`bar_write` of this BAR.
    Bar(u8),
    /// `legacy_io_read`/`legacy_io_write`.
    LegacyIo,
}

/// One access that reached the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Access {
    pub(crate) target: Reached,
    pub(crate) offset: u64,
    pub(crate) len: usize,
}

/// The accesses that reached a function since the last [`Observed::take`].
pub(crate) type Log = Arc<Mutex<Vec<Access>>>;

/// A backend function wrapped to record what reaches it.
pub(crate) struct Observed {
    inner: Box<dyn Function>,
    log: Log,
}

impl Observed {
    pub(crate) fn new(inner: Box<dyn Function>) -> (Self, Log) {
        let log = Log::default();
        (
            Self {
                inner,
                log: Arc::clone(&log),
            },
            log,
        )
    }

    fn record(&self, target: Reached, offset: u64, len: usize) {
        self.log.lock().push(Access {
            target,
            offset,
            len,
        });
    }
}

impl Function for Observed {
    fn attach(&self, context: FunctionContext) {
        self.inner.attach(context);
    }
    fn bar_read(&self, bar: u8, offset: u64, data: &mut [u8]) -> Result<(), FunctionError> {
        self.record(Reached::Bar(bar), offset, data.len());
        self.inner.bar_read(bar, offset, data)
    }
    fn bar_write(&self, bar: u8, offset: u64, data: &[u8]) -> Result<(), FunctionError> {
        self.record(Reached::Bar(bar), offset, data.len());
        self.inner.bar_write(bar, offset, data)
    }
    fn bar_mmap(&self, bar: u8) -> Option<MmapFile> {
        self.inner.bar_mmap(bar)
    }
    fn legacy_io_read(&self, offset: u64, data: &mut [u8]) -> Result<(), FunctionError> {
        self.record(Reached::LegacyIo, offset, data.len());
        self.inner.legacy_io_read(offset, data)
    }
    fn legacy_io_write(&self, offset: u64, data: &[u8]) -> Result<(), FunctionError> {
        self.record(Reached::LegacyIo, offset, data.len());
        self.inner.legacy_io_write(offset, data)
    }
    fn rom_read(&self, offset: u64, data: &mut [u8]) -> Result<(), FunctionError> {
        self.inner.rom_read(offset, data)
    }
    fn config_read(&self, offset: u16, data: &mut [u8]) -> Result<(), FunctionError> {
        self.inner.config_read(offset, data)
    }
    fn config_write(&self, offset: u16, data: &[u8]) -> Result<(), FunctionError> {
        self.inner.config_write(offset, data)
    }
    fn config_changed(&self, event: ConfigEvent) {
        self.inner.config_changed(event);
    }
    fn physical(&self) -> Option<&dyn PhysicalFunction> {
        self.inner.physical()
    }
    fn reset(&self) -> Result<(), FunctionError> {
        self.inner.reset()
    }
    fn migration(&self) -> Option<&dyn MigrationHooks> {
        self.inner.migration()
    }
}

/// Keeps every interrupt raised.
#[derive(Default)]
pub(crate) struct Interrupts(pub(crate) Mutex<Vec<Interrupt>>);

impl InterruptSink for Interrupts {
    fn raise(&self, interrupt: Interrupt) {
        self.0.lock().push(interrupt);
    }
}
