//! The compiled form of a layout: per byte, the reset value, which bits are virtual,
//! writable and write-1-to-clear, and where the non-virtual bits come from; per dword, the
//! side effect a write has. Immutable and shared by all functions of one layout.

use std::sync::Arc;

use crate::layout::Layout;

/// Where the non-virtual bits of a byte come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ByteSource {
    /// Nowhere: every bit is virtual (or reads 0).
    Virtual,
    /// The physical function's config space at this offset.
    Physical(u16),
    /// The backend computes it.
    Backend,
}

/// The side effect of writing a dword, checked after the bits are applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Hook {
    /// No side effect.
    None,
    /// COMMAND (and STATUS) at 0x04.
    Command,
    /// MSI message control, in the dword of the capability header at this offset.
    MsiFlags(u16),
    /// MSI-X message control, in the dword of the capability header at this offset.
    MsixFlags(u16),
    /// PCIe device control/status dword (FLR).
    PcieDevctl(u16),
    /// PM control/status dword; `d1`/`d2` say which states exist besides D0 and D3hot.
    PmCsr {
        /// Offset of the PMCSR register.
        offset: u16,
        /// D1 supported.
        d1: bool,
        /// D2 supported.
        d2: bool,
    },
}

/// A named range of config space: the header field or capability owning the bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    /// First byte.
    pub start: u16,
    /// One past the last byte.
    pub end: u16,
    /// What owns it, for messages (`header.command`, `capability MSI-X @0x40`).
    pub name: String,
}

/// A compiled layout.
#[derive(Debug, Clone)]
pub struct ConfigTemplate {
    pub(crate) layout: Arc<Layout>,
    pub(crate) reset: Box<[u8]>,
    pub(crate) virt: Box<[u8]>,
    pub(crate) write: Box<[u8]>,
    pub(crate) rw1c: Box<[u8]>,
    pub(crate) source: Box<[ByteSource]>,
    pub(crate) hooks: Box<[Hook]>,
    pub(crate) owners: Vec<Owner>,
}

impl ConfigTemplate {
    /// The layout this template was compiled from.
    pub fn layout(&self) -> &Arc<Layout> {
        &self.layout
    }

    /// Config space size (256 or 4096).
    pub fn size(&self) -> usize {
        self.reset.len()
    }

    /// Reset values of the virtual bits.
    pub fn reset_values(&self) -> &[u8] {
        &self.reset
    }

    /// Per byte: bits served from the virtual copy.
    pub fn virtual_mask(&self) -> &[u8] {
        &self.virt
    }

    /// Per byte: bits the guest may write.
    pub fn write_mask(&self) -> &[u8] {
        &self.write
    }

    /// Per byte: write-1-to-clear bits.
    pub fn rw1c_mask(&self) -> &[u8] {
        &self.rw1c
    }

    /// Per byte: where the non-virtual bits come from.
    pub fn byte_source(&self, offset: u16) -> ByteSource {
        self.source
            .get(usize::from(offset))
            .copied()
            .unwrap_or(ByteSource::Virtual)
    }

    /// The named owner of a byte (`unowned` when none).
    pub fn owner_of(&self, offset: u16) -> &str {
        self.owners
            .iter()
            .find(|o| o.start <= offset && offset < o.end)
            .map_or("unowned", |o| o.name.as_str())
    }

    /// Whether any byte needs a physical function (or a backend) to be read.
    pub fn needs_backing(&self) -> bool {
        self.source.iter().any(|s| *s != ByteSource::Virtual)
    }
}

/// Builds a template byte by byte; used by the layout compiler.
pub(crate) struct TemplateBuilder {
    pub reset: Vec<u8>,
    pub virt: Vec<u8>,
    pub write: Vec<u8>,
    pub rw1c: Vec<u8>,
    pub source: Vec<ByteSource>,
    pub hooks: Vec<Hook>,
    pub owners: Vec<Owner>,
}

impl TemplateBuilder {
    /// All bytes virtual, zero, read-only.
    pub fn new(size: usize) -> Self {
        Self {
            reset: vec![0; size],
            virt: vec![0xff; size],
            write: vec![0; size],
            rw1c: vec![0; size],
            source: vec![ByteSource::Virtual; size],
            hooks: vec![Hook::None; size / 4],
            owners: Vec::new(),
        }
    }

    /// A virtual register of `size` bytes: value, writable bits, RW1C bits.
    pub fn register(&mut self, offset: u16, size: u8, value: u32, write: u32, rw1c: u32) {
        for i in 0..usize::from(size) {
            let at = usize::from(offset) + i;
            let shift = 8 * i;
            self.reset[at] = (value >> shift) as u8;
            self.virt[at] = 0xff;
            self.write[at] = (write >> shift) as u8;
            self.rw1c[at] = (rw1c >> shift) as u8;
            self.source[at] = ByteSource::Virtual;
        }
    }

    /// Bytes `offset..offset+len` come from the physical function at `physical`; read-only.
    pub fn physical(&mut self, offset: u16, len: u16, physical: u16) {
        for i in 0..len {
            let at = usize::from(offset + i);
            self.reset[at] = 0;
            self.virt[at] = 0;
            self.write[at] = 0;
            self.rw1c[at] = 0;
            self.source[at] = ByteSource::Physical(physical + i);
        }
    }

    /// Within physical bytes, make `mask` of the register at `offset` writable to hardware.
    pub fn physical_writable(&mut self, offset: u16, size: u8, write: u32, rw1c: u32) {
        for i in 0..usize::from(size) {
            let at = usize::from(offset) + i;
            self.write[at] |= (write >> (8 * i)) as u8;
            self.rw1c[at] |= (rw1c >> (8 * i)) as u8;
        }
    }

    /// Within physical bytes, serve `mask` of the register at `offset` virtually.
    pub fn virtualize(&mut self, offset: u16, size: u8, mask: u32, value: u32, write: u32) {
        for i in 0..usize::from(size) {
            let at = usize::from(offset) + i;
            let shift = 8 * i;
            let m = (mask >> shift) as u8;
            self.virt[at] |= m;
            self.reset[at] = (self.reset[at] & !m) | ((value >> shift) as u8 & m);
            self.write[at] = (self.write[at] & !m) | ((write >> shift) as u8 & m);
            self.rw1c[at] &= !m;
        }
    }

    /// Records the side effect of writes to the dword containing `offset`.
    pub fn hook(&mut self, offset: u16, hook: Hook) {
        self.hooks[usize::from(offset / 4)] = hook;
    }

    /// Names a range for messages.
    pub fn owner(&mut self, start: u16, end: u16, name: impl Into<String>) {
        self.owners.push(Owner {
            start,
            end,
            name: name.into(),
        });
    }

    pub fn finish(self, layout: Arc<Layout>) -> ConfigTemplate {
        ConfigTemplate {
            layout,
            reset: self.reset.into(),
            virt: self.virt.into(),
            write: self.write.into(),
            rw1c: self.rw1c.into(),
            source: self.source.into(),
            hooks: self.hooks.into(),
            owners: self.owners,
        }
    }
}
