//! A function's interrupts on their way to the VMM: the device raises them, nothing polls it.
//!
//! The backend raises MSI, MSI-X, ERR and REQ interrupts and reports its INTx *condition*;
//! [`Interrupts`] passes the vectors on to the sink the VMM (or a server) attached, keeps
//! STATUS.INTERRUPT in line with the condition, and raises the INTx *line* — the condition
//! masked by COMMAND.INTX_DISABLE — to the sink whenever it changes: when the backend reports
//! a new condition, and when a config write, a config restore or a reset changes what masks
//! it. The sink sees `Interrupt::Intx(level)` only on a change of level.

use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

use crate::backend::{Interrupt, InterruptSink};
use crate::config::ConfigSpace;
use crate::pci::regs;

/// The attached sink and the INTx line last raised to it.
pub(super) struct Interrupts {
    config: Arc<Mutex<ConfigSpace>>,
    sink: RwLock<Option<Arc<dyn InterruptSink>>>,
    line: Mutex<bool>,
}

impl Interrupts {
    /// No sink yet, the line deasserted.
    pub(super) fn new(config: Arc<Mutex<ConfigSpace>>) -> Self {
        Self {
            config,
            sink: RwLock::new(None),
            line: Mutex::new(false),
        }
    }

    /// Sends interrupts to `sink` from now on. A sink starts with the line deasserted: an
    /// asserted one is raised at once.
    pub(super) fn attach(&self, sink: Arc<dyn InterruptSink>) {
        *self.sink.write() = Some(sink);
        *self.line.lock() = false;
        self.sync_intx();
    }

    /// The line as config space makes it: the condition, unless the guest disabled INTx.
    fn level(&self) -> bool {
        let config = self.config.lock();
        config.intx_status() && config.command() & regs::COMMAND_INTX_DISABLE == 0
    }

    /// Raises the INTx line to the sink if it changed since it was last raised.
    pub(super) fn sync_intx(&self) {
        let mut line = self.line.lock();
        let level = self.level();
        if *line != level {
            *line = level;
            if let Some(sink) = self.sink.read().as_ref() {
                sink.raise(Interrupt::Intx(level));
            }
        }
    }

    fn raise(&self, interrupt: Interrupt) {
        match interrupt {
            Interrupt::Intx(condition) => {
                self.config.lock().set_intx_status(condition);
                self.sync_intx();
            }
            other => {
                if let Some(sink) = self.sink.read().as_ref() {
                    sink.raise(other);
                }
            }
        }
    }
}

/// The sink a backend is given: its interrupts go through the function's [`Interrupts`].
pub(super) struct FromBackend(pub(super) Arc<Interrupts>);

impl InterruptSink for FromBackend {
    fn raise(&self, interrupt: Interrupt) {
        self.0.raise(interrupt);
    }
}
