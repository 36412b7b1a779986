//! One function's config space at run time: serves 1/2/4-byte (or longer) accesses at any
//! offset, merging virtual bits with bits read from the physical function or the backend, and
//! reports guest-visible changes (MSI/MSI-X enable, COMMAND, FLR, power state).

use std::sync::Arc;

use super::backing::ConfigBacking;
use super::event::ConfigEvent;
use super::template::{ByteSource, ConfigTemplate, Hook};
use crate::pci::{cap, regs};

/// A refused config-space access.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The access runs past the end of config space.
    #[error("config access at {offset:#x} of {len} bytes is outside the {size}-byte config space")]
    OutOfRange {
        /// Offset asked for.
        offset: u64,
        /// Length asked for.
        len: usize,
        /// Config space size.
        size: usize,
    },
    /// The layout needs a physical function (or backend) for this byte and there is none.
    #[error("config byte {0:#x} comes from a physical function, and none is attached")]
    NoPhysical(u16),
    /// A saved config space does not belong to this layout.
    #[error("saved config space: {0}")]
    Saved(String),
    /// The physical function or backend failed.
    #[error("config access at {offset:#x} failed in the {what}: {message}")]
    Backing {
        /// Offset of the failed access.
        offset: u16,
        /// `physical function` or `backend`.
        what: &'static str,
        /// Its error, in words.
        message: String,
    },
}

/// One function's config space.
#[derive(Debug, Clone)]
pub struct ConfigSpace {
    template: Arc<ConfigTemplate>,
    vconfig: Box<[u8]>,
}

impl ConfigSpace {
    /// A config space at its reset values.
    pub fn new(template: Arc<ConfigTemplate>) -> Self {
        let vconfig = template.reset.clone();
        Self { template, vconfig }
    }

    /// The template it runs.
    pub fn template(&self) -> &Arc<ConfigTemplate> {
        &self.template
    }

    /// Back to reset values (function reset).
    pub fn reset(&mut self) {
        self.vconfig.copy_from_slice(&self.template.reset);
    }

    /// Size in bytes.
    pub fn size(&self) -> usize {
        self.vconfig.len()
    }

    fn check_range(&self, offset: u64, len: usize) -> Result<usize, ConfigError> {
        let size = self.vconfig.len();
        match usize::try_from(offset) {
            Ok(start) if start.checked_add(len).is_some_and(|end| end <= size) => Ok(start),
            _ => Err(ConfigError::OutOfRange { offset, len, size }),
        }
    }

    /// Reads `data.len()` bytes at `offset`.
    pub fn read(
        &self,
        offset: u64,
        data: &mut [u8],
        backing: &dyn ConfigBacking,
    ) -> Result<(), ConfigError> {
        let start = self.check_range(offset, data.len())?;
        let t = &*self.template;
        let mut done = 0;
        while done < data.len() {
            let at = start + done;
            let len = piece_len(at, data.len() - done);
            let piece = &mut data[done..done + len];
            let virt = &t.virt[at..at + len];
            piece.copy_from_slice(&self.vconfig[at..at + len]);
            if virt.iter().any(|v| *v != 0xff) {
                let mut outside = [0u8; 4];
                fetch(t, at, &mut outside[..len], backing)?;
                for i in 0..len {
                    piece[i] = (piece[i] & virt[i]) | (outside[i] & !virt[i]);
                }
            }
            done += len;
        }
        Ok(())
    }

    /// Writes `data` at `offset`; guest-visible changes are passed to `events`.
    pub fn write(
        &mut self,
        offset: u64,
        data: &[u8],
        backing: &dyn ConfigBacking,
        events: &mut dyn FnMut(ConfigEvent),
    ) -> Result<(), ConfigError> {
        let start = self.check_range(offset, data.len())?;
        let mut done = 0;
        while done < data.len() {
            let at = start + done;
            let len = piece_len(at, data.len() - done);
            self.write_piece(at, &data[done..done + len], backing, events)?;
            done += len;
        }
        Ok(())
    }

    fn write_piece(
        &mut self,
        at: usize,
        value: &[u8],
        backing: &dyn ConfigBacking,
        events: &mut dyn FnMut(ConfigEvent),
    ) -> Result<(), ConfigError> {
        let t = Arc::clone(&self.template);
        let len = value.len();
        let dword = at & !3;
        let hook = t.hooks[dword / 4];
        let before = self.dword(dword);
        let mut outside_bits = false;
        for (i, byte) in value.iter().enumerate() {
            let (v, w, c) = (t.virt[at + i], t.write[at + i], t.rw1c[at + i]);
            let old = self.vconfig[at + i];
            let mut new = (old & !(w & v)) | (byte & w & v);
            new &= !(byte & c & v);
            self.vconfig[at + i] = new;
            outside_bits |= (w | c) & !v != 0;
        }
        if outside_bits {
            // Read-modify-write of the non-virtual bits: writable bits take the new value,
            // RW1C bits pass the ones written, everything else keeps the current value.
            let mut current = [0u8; 4];
            fetch(&t, at, &mut current[..len], backing)?;
            let mut out = [0u8; 4];
            for i in 0..len {
                let (v, w, c) = (t.virt[at + i], t.write[at + i], t.rw1c[at + i]);
                let keep = !v & !w & !c;
                out[i] = (current[i] & keep) | (value[i] & (w | c) & !v);
            }
            store(&t, at, &out[..len], backing)?;
        }
        if hook != Hook::None {
            self.run_hook(hook, before, events);
        }
        Ok(())
    }

    fn dword(&self, at: usize) -> u32 {
        let mut bytes = [0u8; 4];
        bytes.copy_from_slice(&self.vconfig[at..at + 4]);
        u32::from_le_bytes(bytes)
    }

    fn read16(&self, at: u16) -> u16 {
        let at = usize::from(at);
        u16::from_le_bytes([self.vconfig[at], self.vconfig[at + 1]])
    }

    fn write16(&mut self, at: u16, value: u16) {
        let at = usize::from(at);
        self.vconfig[at..at + 2].copy_from_slice(&value.to_le_bytes());
    }

    fn run_hook(&mut self, hook: Hook, before: u32, events: &mut dyn FnMut(ConfigEvent)) {
        match hook {
            Hook::None => {}
            Hook::Command => {
                let (old, new) = (before as u16, self.read16(regs::COMMAND));
                if old != new {
                    events(ConfigEvent::Command { old, new });
                }
            }
            Hook::MsiFlags(o) => {
                let at = o + cap::MSI_FLAGS;
                let mut flags = self.read16(at);
                // Multiple Message Enable never exceeds Multiple Message Capable.
                let capable = (flags & cap::MSI_FLAGS_QMASK) >> 1;
                let enabled = (flags & cap::MSI_FLAGS_QSIZE) >> 4;
                if enabled > capable {
                    flags = (flags & !cap::MSI_FLAGS_QSIZE) | (capable << 4);
                    self.write16(at, flags);
                }
                let old = (before >> 16) as u16;
                let mask = cap::MSI_FLAGS_ENABLE | cap::MSI_FLAGS_QSIZE;
                if old & mask != flags & mask {
                    events(ConfigEvent::Msi {
                        enabled: flags & cap::MSI_FLAGS_ENABLE != 0,
                        vectors: 1 << ((flags & cap::MSI_FLAGS_QSIZE) >> 4),
                    });
                }
            }
            Hook::MsixFlags(o) => {
                let flags = self.read16(o + cap::MSIX_FLAGS);
                let old = (before >> 16) as u16;
                let mask = cap::MSIX_FLAGS_ENABLE | cap::MSIX_FLAGS_MASKALL;
                if old & mask != flags & mask {
                    events(ConfigEvent::Msix {
                        enabled: flags & cap::MSIX_FLAGS_ENABLE != 0,
                        function_mask: flags & cap::MSIX_FLAGS_MASKALL != 0,
                    });
                }
            }
            Hook::PcieDevctl(at) => {
                let devctl = self.read16(at);
                if devctl & cap::PCIE_DEVCTL_FLR != 0 {
                    // The FLR bit always reads 0; the reset itself is the caller's job.
                    self.write16(at, devctl & !cap::PCIE_DEVCTL_FLR);
                    events(ConfigEvent::FunctionLevelReset);
                }
            }
            Hook::PmCsr { offset, d1, d2 } => {
                let shift = 8 * u32::from(offset % 4);
                let old_state = ((before >> shift) as u16 & cap::PM_PMCSR_POWER_STATE) as u8;
                let pmcsr = self.read16(offset);
                let state = (pmcsr & cap::PM_PMCSR_POWER_STATE) as u8;
                let supported = match state {
                    1 => d1,
                    2 => d2,
                    _ => true,
                };
                if !supported {
                    // Writes of an unsupported state are ignored (PCI PM 1.2, 5.4.1).
                    self.write16(
                        offset,
                        (pmcsr & !cap::PM_PMCSR_POWER_STATE) | u16::from(old_state),
                    );
                } else if state != old_state {
                    events(ConfigEvent::PowerState(state));
                }
            }
        }
    }

    /// Sets status bits the device reports (error status, PME status) in write-1-to-clear
    /// registers: only virtual RW1C bits among `bits` are set; the guest clears them by writing
    /// ones.
    pub fn set_rw1c_bits(&mut self, offset: u16, bits: &[u8]) -> Result<(), ConfigError> {
        let start = self.check_range(offset.into(), bits.len())?;
        for (i, b) in bits.iter().enumerate() {
            let at = start + i;
            self.vconfig[at] |= b & self.template.rw1c[at] & self.template.virt[at];
        }
        Ok(())
    }

    /// The state a guest gave the emulated config space (its virtual bytes), to carry in a
    /// migration stream. Bytes backed by a physical function are its own state.
    pub fn snapshot(&self) -> Vec<u8> {
        self.vconfig.to_vec()
    }

    /// Takes a state [`ConfigSpace::snapshot`] made on a function of the same layout, and
    /// reports the changes it makes as a guest write would (COMMAND, MSI, MSI-X, power
    /// state). A snapshot of another size, or whose read-only virtual bits differ from this
    /// layout's (other than the INTx status the device sets), is refused unchanged.
    pub fn restore(
        &mut self,
        saved: &[u8],
        events: &mut dyn FnMut(ConfigEvent),
    ) -> Result<(), ConfigError> {
        let t = Arc::clone(&self.template);
        if saved.len() != self.vconfig.len() {
            return Err(ConfigError::Saved(format!(
                "{} bytes for a {}-byte config space",
                saved.len(),
                self.vconfig.len()
            )));
        }
        let intx = regs::STATUS_INTERRUPT.to_le_bytes();
        for (at, byte) in saved.iter().enumerate() {
            let mut fixed = t.virt[at] & !(t.write[at] | t.rw1c[at]);
            if let Some(i) = at.checked_sub(usize::from(regs::STATUS)).filter(|i| *i < 2) {
                fixed &= !intx[i];
            }
            if (byte ^ t.reset[at]) & fixed != 0 {
                return Err(ConfigError::Saved(format!(
                    "read-only bits of byte {at:#x} differ ({byte:#04x}, the layout has {:#04x})",
                    t.reset[at]
                )));
            }
        }
        let before = self.vconfig.clone();
        for (at, byte) in saved.iter().enumerate() {
            let v = t.virt[at];
            self.vconfig[at] = (self.vconfig[at] & !v) | (byte & v);
        }
        for (index, hook) in t.hooks.iter().enumerate() {
            if *hook != Hook::None {
                let at = index * 4;
                let mut old = [0u8; 4];
                old.copy_from_slice(&before[at..at + 4]);
                self.run_hook(*hook, u32::from_le_bytes(old), events);
            }
        }
        Ok(())
    }

    /// The COMMAND register.
    pub fn command(&self) -> u16 {
        self.read16(regs::COMMAND)
    }

    /// Sets or clears STATUS.INTERRUPT (the INTx line state the guest sees).
    pub fn set_intx_status(&mut self, asserted: bool) {
        let status = self.read16(regs::STATUS);
        let status = if asserted {
            status | regs::STATUS_INTERRUPT
        } else {
            status & !regs::STATUS_INTERRUPT
        };
        self.write16(regs::STATUS, status);
    }

    /// STATUS.INTERRUPT.
    pub fn intx_status(&self) -> bool {
        self.read16(regs::STATUS) & regs::STATUS_INTERRUPT != 0
    }

    /// The address programmed into BAR `index` (both halves for a 64-bit BAR), type bits masked.
    pub fn bar_address(&self, index: u8) -> Option<u64> {
        let bar = self.template.layout.bar(index)?;
        let low = self.dword(usize::from(regs::bar_offset(usize::from(index))));
        Some(match bar.kind {
            crate::layout::BarKind::Io => u64::from(low & !0x3),
            crate::layout::BarKind::Memory32 => u64::from(low & !0xf),
            crate::layout::BarKind::Memory64 => {
                let high = self.dword(usize::from(regs::bar_offset(usize::from(index) + 1)));
                (u64::from(high) << 32) | u64::from(low & !0xf)
            }
        })
    }
}

/// The largest naturally aligned piece (4, 2 or 1 bytes) at `at` that fits in `left` and does
/// not cross a dword.
fn piece_len(at: usize, left: usize) -> usize {
    if at.is_multiple_of(4) && left >= 4 {
        4
    } else if at.is_multiple_of(2) && left >= 2 {
        2
    } else {
        1
    }
}

/// Reads the non-virtual bits of `out.len()` bytes at `at`, each from its own source.
fn fetch(
    t: &ConfigTemplate,
    at: usize,
    out: &mut [u8],
    backing: &dyn ConfigBacking,
) -> Result<(), ConfigError> {
    let sources = &t.source[at..at + out.len()];
    if let Some(run) = contiguous(sources) {
        return match run {
            ByteSource::Virtual => {
                out.fill(0);
                Ok(())
            }
            ByteSource::Physical(p) => backing.read_physical(p, out),
            ByteSource::Backend => backing.read_computed(at as u16, out),
        };
    }
    for (i, source) in sources.iter().enumerate() {
        let byte = &mut out[i..=i];
        match source {
            ByteSource::Virtual => byte[0] = 0,
            ByteSource::Physical(p) => backing.read_physical(*p, byte)?,
            ByteSource::Backend => backing.read_computed((at + i) as u16, byte)?,
        }
    }
    Ok(())
}

/// Writes the non-virtual bits back, each byte to its own source.
fn store(
    t: &ConfigTemplate,
    at: usize,
    data: &[u8],
    backing: &dyn ConfigBacking,
) -> Result<(), ConfigError> {
    let sources = &t.source[at..at + data.len()];
    if let Some(run) = contiguous(sources) {
        return match run {
            ByteSource::Virtual => Ok(()),
            ByteSource::Physical(p) => backing.write_physical(p, data),
            ByteSource::Backend => backing.write_computed(at as u16, data),
        };
    }
    for (i, source) in sources.iter().enumerate() {
        let byte = &data[i..=i];
        let writable = t.write[at + i] | t.rw1c[at + i];
        if writable & !t.virt[at + i] == 0 {
            continue;
        }
        match source {
            ByteSource::Virtual => {}
            ByteSource::Physical(p) => backing.write_physical(*p, byte)?,
            ByteSource::Backend => backing.write_computed((at + i) as u16, byte)?,
        }
    }
    Ok(())
}

/// When every byte comes from one source at consecutive offsets: the first byte's source.
fn contiguous(sources: &[ByteSource]) -> Option<ByteSource> {
    let first = *sources.first()?;
    let same = sources.iter().enumerate().all(|(i, s)| match (first, s) {
        (ByteSource::Virtual, ByteSource::Virtual) | (ByteSource::Backend, ByteSource::Backend) => {
            true
        }
        (ByteSource::Physical(a), ByteSource::Physical(b)) => {
            u32::from(*b) == u32::from(a) + i as u32
        }
        _ => false,
    });
    same.then_some(first)
}
