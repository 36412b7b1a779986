//! One function's config space at run time: serves 1/2/4-byte (or longer) accesses at any
//! offset, merging virtual bits with bits read from the physical function or the backend, and
//! reports guest-visible changes (MSI/MSI-X enable, COMMAND, FLR, power state).

use std::sync::Arc;

use super::event::ConfigEvent;
use super::template::{ByteSource, ConfigTemplate, Hook};
use crate::pci::{cap, regs};

/// Access to what the layout does not hold itself: physical config space and backend-computed
/// registers.
pub trait ConfigBacking {
    /// Reads the physical function's config space.
    fn read_physical(&self, offset: u16, data: &mut [u8]) -> Result<(), ConfigError>;
    /// Writes the physical function's config space.
    fn write_physical(&self, offset: u16, data: &[u8]) -> Result<(), ConfigError>;
    /// Reads a backend-computed register.
    fn read_computed(&self, offset: u16, data: &mut [u8]) -> Result<(), ConfigError>;
    /// Writes a backend-computed register.
    fn write_computed(&self, offset: u16, data: &[u8]) -> Result<(), ConfigError>;
}

/// Backing for layouts that are purely virtual: any access to physical or computed bits fails.
pub struct NoBacking;

impl ConfigBacking for NoBacking {
    fn read_physical(&self, offset: u16, _: &mut [u8]) -> Result<(), ConfigError> {
        Err(ConfigError::NoPhysical(offset))
    }
    fn write_physical(&self, offset: u16, _: &[u8]) -> Result<(), ConfigError> {
        Err(ConfigError::NoPhysical(offset))
    }
    fn read_computed(&self, offset: u16, _: &mut [u8]) -> Result<(), ConfigError> {
        Err(ConfigError::NoPhysical(offset))
    }
    fn write_computed(&self, offset: u16, _: &[u8]) -> Result<(), ConfigError> {
        Err(ConfigError::NoPhysical(offset))
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::physical::captured::CapturedFunction;
    use crate::physical::{PhysicalBacking, PhysicalDescription, PhysicalFunction};
    use crate::vpci::{compile::compile, parse_layout};

    const LAYOUT: &str = r#"
[vpci]
format = 1
name = "t"
config_size = 4096
[identity]
vendor_id = 0x1af4
device_id = 0x1041
class_code = 0x020000
[header]
interrupt_pin = "A"
[[bar]]
index = 0
kind = "mem32"
size = "4K"
[[capability]]
kind = "msi"
offset = 0x40
vectors = 4
[[capability]]
kind = "msix"
offset = 0x58
table_size = 8
table_bar = 0
table_offset = 0
pba_bar = 0
pba_offset = 0x800
[[capability]]
kind = "pcie"
offset = 0x64
[[capability]]
kind = "pm"
offset = 0xa0
[[capability]]
kind = "vendor"
offset = 0xa8
physical_offset = 0xc0
length = 8
[[ext_capability]]
kind = "aer"
offset = 0x100
physical_offset = 0x200
[[register]]
offset = 0x2c
size = 2
value = 0xabcd
virtual_mask = 0xff00
"#;

    fn setup() -> (ConfigSpace, CapturedFunction) {
        let layout = Arc::new(parse_layout("t", LAYOUT).unwrap());
        let mut config = vec![0u8; 4096];
        config[0x2c] = 0x34;
        config[0x2d] = 0x12;
        config[0xc0..0xc8].copy_from_slice(&[0x09, 0x00, 0x08, 0xa1, 0xa2, 0xa3, 0xa4, 0xa5]);
        config[0x204..0x208].copy_from_slice(&0x0000_1010u32.to_le_bytes());
        let physical = CapturedFunction::new(
            "phys",
            PhysicalDescription {
                config,
                bars: [None; 6],
                rom_size: None,
            },
        );
        (ConfigSpace::new(Arc::new(compile(layout))), physical)
    }

    fn write(
        space: &mut ConfigSpace,
        physical: &CapturedFunction,
        offset: u64,
        data: &[u8],
    ) -> Vec<ConfigEvent> {
        let mut events = Vec::new();
        space
            .write(offset, data, &PhysicalBacking(physical), &mut |e| {
                events.push(e)
            })
            .unwrap();
        events
    }

    fn read(space: &ConfigSpace, physical: &CapturedFunction, offset: u64, len: usize) -> Vec<u8> {
        let mut data = vec![0u8; len];
        space
            .read(offset, &mut data, &PhysicalBacking(physical))
            .unwrap();
        data
    }

    #[test]
    fn msi_enable_is_reported_and_vector_count_clamped() {
        let (mut space, phys) = setup();
        // Enable with 8 vectors asked (MME = 3) while 4 are capable (MMC = 2).
        let events = write(&mut space, &phys, 0x42, &[0x31, 0x00]);
        assert_eq!(
            events,
            vec![ConfigEvent::Msi {
                enabled: true,
                vectors: 4
            }]
        );
        assert_eq!(read(&space, &phys, 0x42, 1)[0] & 0x71, 0x21);
        assert!(write(&mut space, &phys, 0x42, &[0x21, 0x00]).is_empty());
    }

    #[test]
    fn msix_and_command_changes_are_reported() {
        let (mut space, phys) = setup();
        assert_eq!(
            write(&mut space, &phys, 0x5a, &[0x00, 0xc0]),
            vec![ConfigEvent::Msix {
                enabled: true,
                function_mask: true
            }]
        );
        assert_eq!(read(&space, &phys, 0x5a, 2), vec![0x07, 0xc0]);
        assert_eq!(
            write(&mut space, &phys, 0x04, &[0x06, 0x04]),
            vec![ConfigEvent::Command {
                old: 0,
                new: 0x0406
            }]
        );
        assert_eq!(space.command(), 0x0406);
    }

    #[test]
    fn flr_is_reported_and_reads_zero() {
        let (mut space, phys) = setup();
        let devctl = 0x64 + 8;
        let events = write(&mut space, &phys, devctl, &[0x00, 0x80]);
        assert_eq!(events, vec![ConfigEvent::FunctionLevelReset]);
        assert_eq!(read(&space, &phys, devctl, 2)[1] & 0x80, 0);
    }

    #[test]
    fn unsupported_power_states_are_ignored() {
        let (mut space, phys) = setup();
        let pmcsr = 0xa0 + 4;
        assert!(write(&mut space, &phys, pmcsr, &[0x01, 0x00]).is_empty());
        assert_eq!(read(&space, &phys, pmcsr, 1)[0] & 3, 0);
        assert_eq!(
            write(&mut space, &phys, pmcsr, &[0x03, 0x00]),
            vec![ConfigEvent::PowerState(3)]
        );
    }

    #[test]
    fn physical_bits_merge_and_writes_reach_hardware() {
        let (mut space, phys) = setup();
        // Register override: high byte virtual (0xab), low byte from hardware (0x34).
        assert_eq!(read(&space, &phys, 0x2c, 2), vec![0x34, 0xab]);
        // Vendor capability backed by physical 0xc0: header virtual, body from hardware.
        let vendor = read(&space, &phys, 0xa8, 8);
        assert_eq!(vendor[0], 0x09);
        assert_eq!(vendor[2..], [0x08, 0xa1, 0xa2, 0xa3, 0xa4, 0xa5]);
        // Vendor-specific registers take raw writes to hardware.
        write(&mut space, &phys, 0xac, &[0x55]);
        let mut hw = [0u8; 1];
        phys.config_read(0xc4, &mut hw).unwrap();
        assert_eq!(hw[0], 0x55);
        // AER uncorrectable status is RW1C in hardware: writing ones passes them through.
        write(&mut space, &phys, 0x104, &0x0000_0010u32.to_le_bytes());
        let mut status = [0u8; 4];
        phys.config_read(0x204, &mut status).unwrap();
        assert_eq!(u32::from_le_bytes(status), 0x10);
        // The extended header is virtual: next = 0, the AER ID.
        assert_eq!(read(&space, &phys, 0x100, 4), 0x0002_0001u32.to_le_bytes());
    }

    #[test]
    fn accesses_split_at_boundaries_and_out_of_range_is_refused() {
        let (space, phys) = setup();
        // A 4-byte read at an odd offset, split into 1+2+1: device ID high byte, COMMAND,
        // STATUS low byte (CAP_LIST).
        assert_eq!(read(&space, &phys, 3, 4), vec![0x10, 0, 0, 0x10]);
        let whole = read(&space, &phys, 0, 4096);
        assert_eq!(&whole[0x2c..0x2e], &[0x34, 0xab]);
        let mut data = [0u8; 4];
        assert!(matches!(
            space.read(4094, &mut data, &NoBacking),
            Err(ConfigError::OutOfRange { .. })
        ));
        assert!(matches!(
            space.read(u64::MAX, &mut data, &NoBacking),
            Err(ConfigError::OutOfRange { .. })
        ));
        assert!(matches!(
            space.read(0x2c, &mut data, &NoBacking),
            Err(ConfigError::NoPhysical(0x2c))
        ));
    }

    #[test]
    fn a_snapshot_restores_state_and_reports_it() {
        let (mut space, physical) = setup();
        write(
            &mut space,
            &physical,
            u64::from(regs::COMMAND),
            &[0x06, 0x00],
        );
        space.set_intx_status(true);
        let saved = space.snapshot();
        let (mut other, _) = setup();
        let mut events = Vec::new();
        other.restore(&saved, &mut |e| events.push(e)).unwrap();
        assert_eq!(other.snapshot(), saved);
        assert_eq!(other.command(), 0x0006);
        assert!(other.intx_status());
        assert!(events.contains(&ConfigEvent::Command { old: 0, new: 6 }));

        // Another size, or another read-only bit (the vendor ID), is refused unchanged.
        let (mut fresh, _) = setup();
        let reset = fresh.snapshot();
        assert!(fresh.restore(&saved[..64], &mut |_| {}).is_err());
        let mut forged = saved.clone();
        forged[0] ^= 1;
        assert!(matches!(
            fresh.restore(&forged, &mut |_| {}),
            Err(ConfigError::Saved(_))
        ));
        assert_eq!(fresh.snapshot(), reset);
    }

    #[test]
    fn intx_status_and_reset() {
        let (mut space, phys) = setup();
        space.set_intx_status(true);
        assert_eq!(read(&space, &phys, 6, 1)[0] & 0x08, 0x08);
        write(&mut space, &phys, 0x3c, &[0x0b]);
        space.reset();
        assert_eq!(read(&space, &phys, 0x3c, 1)[0], 0);
        assert_eq!(read(&space, &phys, 6, 1)[0] & 0x08, 0);
    }
}
