//! Building blocks for emulated hardware models: what sits between an emulated function and
//! memory and interrupts. [`HostMemory`] is host memory at IOVA 0 (what a backend gives an
//! emulated PF for its queues); [`DmaSlot`] and [`IrqSlot`] stand for a function's IOMMU
//! domain and interrupt routing, empty until a guest attaches (as a VMM maps guest memory and
//! sets up interrupts for a real VF).

use std::sync::Arc;

use super::{DmaAccess, DmaError, Interrupt, InterruptSink};
use parking_lot::{Mutex, RwLock};

/// Host memory at IOVA 0: what a backend gives an emulated PF for its queues and buffers.
pub struct HostMemory(Mutex<Vec<u8>>);

impl HostMemory {
    /// `size` zeroed bytes.
    pub fn new(size: usize) -> Self {
        Self(Mutex::new(vec![0; size]))
    }

    /// Its size in bytes.
    pub fn size(&self) -> usize {
        self.0.lock().len()
    }

    fn range(&self, len: usize, iova: u64, size: usize) -> Result<usize, DmaError> {
        usize::try_from(iova)
            .ok()
            .filter(|at| at.checked_add(len).is_some_and(|end| end <= size))
            .ok_or(DmaError::Unmapped { iova, len })
    }
}

impl DmaAccess for HostMemory {
    fn read(&self, iova: u64, data: &mut [u8]) -> Result<(), DmaError> {
        let memory = self.0.lock();
        let at = self.range(data.len(), iova, memory.len())?;
        data.copy_from_slice(&memory[at..at + data.len()]);
        Ok(())
    }

    fn write(&self, iova: u64, data: &[u8]) -> Result<(), DmaError> {
        let mut memory = self.0.lock();
        let at = self.range(data.len(), iova, memory.len())?;
        memory[at..at + data.len()].copy_from_slice(data);
        Ok(())
    }
}

/// A function's DMA view that is empty (every access unmapped) until memory is bound.
#[derive(Default)]
pub struct DmaSlot(RwLock<Option<Arc<dyn DmaAccess>>>);

impl DmaSlot {
    /// Binds (or with `None` unbinds) the memory DMA reaches.
    pub fn bind(&self, memory: Option<Arc<dyn DmaAccess>>) {
        *self.0.write() = memory;
    }
}

impl DmaAccess for DmaSlot {
    fn read(&self, iova: u64, data: &mut [u8]) -> Result<(), DmaError> {
        match &*self.0.read() {
            Some(memory) => memory.read(iova, data),
            None => Err(DmaError::Unmapped {
                iova,
                len: data.len(),
            }),
        }
    }

    fn write(&self, iova: u64, data: &[u8]) -> Result<(), DmaError> {
        match &*self.0.read() {
            Some(memory) => memory.write(iova, data),
            None => Err(DmaError::Unmapped {
                iova,
                len: data.len(),
            }),
        }
    }
}

/// A function's interrupt routing: interrupts are dropped until a sink is bound.
#[derive(Default)]
pub struct IrqSlot(RwLock<Option<Arc<dyn InterruptSink>>>);

impl IrqSlot {
    /// Binds (or with `None` unbinds) where interrupts go.
    pub fn bind(&self, sink: Option<Arc<dyn InterruptSink>>) {
        *self.0.write() = sink;
    }
}

impl InterruptSink for IrqSlot {
    fn raise(&self, interrupt: Interrupt) {
        if let Some(sink) = &*self.0.read() {
            sink.raise(interrupt);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_memory_refuses_what_it_does_not_hold_and_a_slot_is_empty_until_bound() {
        let memory = Arc::new(HostMemory::new(4096));
        memory.write(4092, &[1, 2, 3, 4]).unwrap();
        assert!(memory.write(4093, &[0; 4]).is_err());
        assert!(memory.read(u64::MAX, &mut [0; 1]).is_err());
        let slot = DmaSlot::default();
        let mut b = [0u8; 4];
        assert!(slot.read(4092, &mut b).is_err());
        slot.bind(Some(memory));
        slot.read(4092, &mut b).unwrap();
        assert_eq!(b, [1, 2, 3, 4]);
    }
}
