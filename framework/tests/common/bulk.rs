//! A function whose whole device state is one buffer, moved by stop-copy: the state of the
//! migration tests and of the stop-copy bench (which takes this file with `#[path]`).

use std::sync::Arc;

use parking_lot::Mutex;
use vfio_variant::backend::{Function, FunctionError};
use vfio_variant::device::VirtualFunction;
use vfio_variant::migration::{
    MigrationError, MigrationFlags, MigrationHooks, MigrationState, PrecopyInfo,
};
use vfio_variant::vpci::{compile::compile, parse_layout};

/// The function's vPCI layout: IDs and nothing else.
const LAYOUT: &str = "[vpci]\nformat = 1\nname = \"bulk\"\nconfig_size = 256\n[identity]\n\
                      vendor_id = 0x1af4\ndevice_id = 0x10ff\nclass_code = 0xff0000\n";

/// A function whose device state is `memory`; `loaded` counts the bytes it was given.
pub struct Bulk {
    memory: Arc<Mutex<Vec<u8>>>,
    cursor: Mutex<usize>,
    loaded: Arc<Mutex<usize>>,
}

impl Bulk {
    /// A virtual function of the bulk layout whose state is `memory`; each byte a migration
    /// loads into it is counted in `loaded`.
    pub fn function(
        memory: Arc<Mutex<Vec<u8>>>,
        loaded: Arc<Mutex<usize>>,
    ) -> Arc<VirtualFunction> {
        let template = Arc::new(compile(Arc::new(
            parse_layout("bulk", LAYOUT).expect("bulk layout"),
        )));
        let bulk = Bulk {
            memory,
            cursor: Mutex::new(0),
            loaded,
        };
        Arc::new(VirtualFunction::new(template, Box::new(bulk)).expect("bulk function"))
    }
}

impl Function for Bulk {
    fn reset(&self) -> Result<(), FunctionError> {
        Ok(())
    }
    fn migration(&self) -> Option<&dyn MigrationHooks> {
        Some(self)
    }
}

impl MigrationHooks for Bulk {
    fn flags(&self) -> MigrationFlags {
        MigrationFlags::STOP_COPY | MigrationFlags::P2P
    }
    fn transition(&self, _: MigrationState, _: MigrationState) -> Result<(), MigrationError> {
        *self.cursor.lock() = 0;
        Ok(())
    }
    fn save(&self, buf: &mut [u8]) -> Result<usize, MigrationError> {
        let mut cursor = self.cursor.lock();
        let memory = self.memory.lock();
        let n = (memory.len() - *cursor).min(buf.len());
        buf[..n].copy_from_slice(&memory[*cursor..*cursor + n]);
        *cursor += n;
        Ok(n)
    }
    fn load(&self, data: &[u8]) -> Result<(), MigrationError> {
        let mut cursor = self.cursor.lock();
        let mut memory = self.memory.lock();
        let end = *cursor + data.len();
        if end > memory.len() {
            return Err(MigrationError::InvalidData("too much state".into()));
        }
        memory[*cursor..end].copy_from_slice(data);
        *cursor = end;
        *self.loaded.lock() += data.len();
        Ok(())
    }
    fn precopy_info(&self) -> Result<PrecopyInfo, MigrationError> {
        Err(MigrationError::Device("no pre-copy".into()))
    }
    fn stop_copy_size(&self) -> Result<u64, MigrationError> {
        Ok(self.memory.lock().len() as u64)
    }
}
