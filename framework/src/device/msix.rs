//! The MSI-X table and pending bit array of a function, served by the framework whatever the
//! backing of the BAR that holds them: a backend never sees an access to either.
//!
//! The table is guest-programmable memory (each entry resets with its mask bit set, as the PCI
//! spec says). Masking and pending follow VFIO: a VMM masks a vector with SET_IRQS, a vector
//! raised while masked is pending and delivered when unmasked, and the PBA reads those pending
//! bits (from the interrupt table the server attached, see [`super::VirtualFunction::set_msix_pending`]).
//! A VMM that emulates the table itself (QEMU does) never writes this copy.

use std::ops::Range;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::config::ConfigError;
use crate::layout::{CapabilityBody, Layout};
use crate::pci::cap;

/// Whether an MSI-X vector is pending.
pub type PendingFn = dyn Fn(u32) -> bool + Send + Sync;

/// Vector control bit 0: the vector is masked.
const VECTOR_MASKED: u8 = 1;

/// A function's MSI-X table and PBA.
pub(super) struct Msix {
    table_bar: u8,
    table: Range<u64>,
    pba_bar: u8,
    pba: Range<u64>,
    entries: Mutex<Vec<u8>>,
    pending: Mutex<Option<Arc<PendingFn>>>,
}

/// Where an access to a BAR falls.
pub(super) enum Place {
    /// Outside the table and PBA: the BAR's backing serves it.
    Elsewhere,
    /// Inside the table, at this offset in it.
    Table(usize),
    /// Inside the PBA, at this offset in it.
    Pba(u64),
    /// Partly inside the table or PBA.
    Straddles,
}

impl Msix {
    /// The table and PBA of a layout's MSI-X capability, if it has one.
    pub(super) fn new(layout: &Layout) -> Option<Self> {
        let params = layout.capabilities.iter().find_map(|c| match &c.body {
            CapabilityBody::Msix(p) => Some(*p),
            _ => None,
        })?;
        let vectors = u64::from(params.table_size);
        let table_start = u64::from(params.table_offset);
        let pba_start = u64::from(params.pba_offset);
        Some(Self {
            table_bar: params.table_bar,
            table: table_start..table_start + vectors * cap::MSIX_ENTRY_SIZE,
            pba_bar: params.pba_bar,
            pba: pba_start..pba_start + vectors.div_ceil(64) * 8,
            entries: Mutex::new(reset_entries(vectors)),
            pending: Mutex::new(None),
        })
    }

    /// Where an access of `len` bytes at `offset` of BAR `bar` falls.
    pub(super) fn place(&self, bar: u8, offset: u64, len: usize) -> Place {
        let end = offset.saturating_add(len as u64);
        for (at, range) in [(self.table_bar, &self.table), (self.pba_bar, &self.pba)] {
            if at != bar || end <= range.start || offset >= range.end {
                continue;
            }
            if offset < range.start || end > range.end {
                return Place::Straddles;
            }
            return if std::ptr::eq(range, &self.table) {
                Place::Table((offset - range.start) as usize)
            } else {
                Place::Pba(offset - range.start)
            };
        }
        Place::Elsewhere
    }

    pub(super) fn read_table(&self, at: usize, data: &mut [u8]) {
        data.copy_from_slice(&self.entries.lock()[at..at + data.len()]);
    }

    pub(super) fn write_table(&self, at: usize, data: &[u8]) {
        self.entries.lock()[at..at + data.len()].copy_from_slice(data);
    }

    /// The PBA's bytes at `at`: bit `v` of the array is vector `v`'s pending bit.
    pub(super) fn read_pba(&self, at: u64, data: &mut [u8]) {
        let pending = self.pending.lock().clone();
        let vectors = self.table.end.saturating_sub(self.table.start) / cap::MSIX_ENTRY_SIZE;
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = 0;
            for bit in 0..8u64 {
                let vector = (at + i as u64) * 8 + bit;
                if vector < vectors && pending.as_ref().is_some_and(|p| p(vector as u32)) {
                    *byte |= 1 << bit;
                }
            }
        }
    }

    pub(super) fn set_pending(&self, pending: Option<Arc<PendingFn>>) {
        *self.pending.lock() = pending;
    }

    /// The table's bytes, for a migration stream.
    pub(super) fn table_bytes(&self) -> Vec<u8> {
        self.entries.lock().clone()
    }

    /// Checks a saved table: empty (none saved) or exactly this table's size.
    pub(super) fn check_table(&self, saved: &[u8]) -> Result<(), ConfigError> {
        let size = self.entries.lock().len();
        if saved.is_empty() || saved.len() == size {
            Ok(())
        } else {
            Err(ConfigError::Saved(format!(
                "{} bytes of MSI-X table, the layout's has {size}",
                saved.len()
            )))
        }
    }

    /// Takes a table [`Msix::check_table`] accepted.
    pub(super) fn set_table(&self, saved: &[u8]) {
        self.entries.lock().copy_from_slice(saved);
    }

    /// Every entry back to its reset value (masked, zero address and data).
    pub(super) fn reset(&self) {
        let mut entries = self.entries.lock();
        let vectors = entries.len() as u64 / cap::MSIX_ENTRY_SIZE;
        *entries = reset_entries(vectors);
    }
}

fn reset_entries(vectors: u64) -> Vec<u8> {
    let mut entries = vec![0; (vectors * cap::MSIX_ENTRY_SIZE) as usize];
    for entry in entries.chunks_mut(cap::MSIX_ENTRY_SIZE as usize) {
        entry[12] = VECTOR_MASKED;
    }
    entries
}
