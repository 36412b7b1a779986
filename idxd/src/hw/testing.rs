//! Test doubles: paged guest memory and an interrupt recorder.

use std::collections::HashMap;

use parking_lot::Mutex;
use vfio_variant::backend::{DmaAccess, DmaError, Interrupt, InterruptSink};

const PAGE: u64 = 4096;

/// Memory with only some 4 KiB pages mapped.
#[derive(Default)]
pub struct PagedMemory(Mutex<HashMap<u64, Vec<u8>>>);

impl PagedMemory {
    /// Memory with `pages` pages mapped from `base`.
    pub fn new(base: u64, pages: u64) -> Self {
        let memory = Self::default();
        for p in 0..pages {
            memory
                .0
                .lock()
                .insert(base / PAGE + p, vec![0; PAGE as usize]);
        }
        memory
    }

    /// Unmaps the page holding `addr`.
    pub fn unmap(&self, addr: u64) {
        self.0.lock().remove(&(addr / PAGE));
    }

    /// Reads mapped memory (panics when unmapped: test helper).
    pub fn get(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut data = vec![0; len];
        self.read(addr, &mut data).unwrap();
        data
    }

    /// Writes mapped memory (panics when unmapped: test helper).
    pub fn put(&self, addr: u64, data: &[u8]) {
        self.write(addr, data).unwrap();
    }
}

impl DmaAccess for PagedMemory {
    fn read(&self, iova: u64, data: &mut [u8]) -> Result<(), DmaError> {
        let pages = self.0.lock();
        for (i, byte) in data.iter_mut().enumerate() {
            let a = iova + i as u64;
            let page = pages
                .get(&(a / PAGE))
                .ok_or(DmaError::Unmapped { iova, len: 1 })?;
            *byte = page[(a % PAGE) as usize];
        }
        Ok(())
    }

    fn write(&self, iova: u64, data: &[u8]) -> Result<(), DmaError> {
        let mut pages = self.0.lock();
        // Check first: a failed DMA writes nothing.
        for i in 0..data.len() as u64 {
            if !pages.contains_key(&((iova + i) / PAGE)) {
                return Err(DmaError::Unmapped { iova, len: 1 });
            }
        }
        for (i, byte) in data.iter().enumerate() {
            let a = iova + i as u64;
            if let Some(page) = pages.get_mut(&(a / PAGE)) {
                page[(a % PAGE) as usize] = *byte;
            }
        }
        Ok(())
    }
}

/// Records raised interrupts.
#[derive(Default)]
pub struct Recorder(pub Mutex<Vec<Interrupt>>);

impl InterruptSink for Recorder {
    fn raise(&self, interrupt: Interrupt) {
        self.0.lock().push(interrupt);
    }
}
