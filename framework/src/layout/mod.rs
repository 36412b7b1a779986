//! The validated vPCI layout: what a function's config space and BARs look like to a guest.
//!
//! This is the data model only; it sits below everything that reads or runs a layout
//! (`config`, `physical`, `vpci`), so they all import it from here. Built by
//! [`crate::vpci::parse_layout`] from the TOML text; every value here passed validation. Items
//! keep the [`Location`] they were declared at, so later checks (against a physical function)
//! can point at the line that asked for something.

mod error;

pub use error::{LayoutError, Location};

use crate::pci::cap::Chain;

/// Page size of mmappable areas (sparse mmap of BARs, the MSI-X pages a VMM traps).
pub const MMAP_PAGE_SIZE: u64 = 4096;

/// Where an item of a layout was declared: its table's location and field path.
///
/// Origins are not part of what a layout states: two layouts that state the same thing are
/// equal wherever their items were written, so `==` on origins is always true.
#[derive(Debug, Clone, Default)]
pub struct Origin {
    /// Where the item's table starts.
    pub location: Location,
    /// The item's path, for example `bar[1]` or `capability[0]`.
    pub path: String,
}

impl PartialEq for Origin {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for Origin {}

impl Origin {
    /// An error about `field` of this item.
    pub fn error(&self, field: &str, message: impl Into<String>) -> LayoutError {
        LayoutError::new(
            self.location.clone(),
            format!("{}.{field}", self.path),
            message,
        )
    }
}

/// A validated vPCI layout of one instance type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// Short name of the instance type.
    pub name: String,
    /// Free text for operators.
    pub description: String,
    /// 256 (conventional PCI) or 4096 (PCI Express extended config space).
    pub config_size: u16,
    /// What bytes owned by no capability do.
    pub unowned: Unowned,
    /// Vendor, device, subsystem, class, revision.
    pub identity: Identity,
    /// Header registers that are not identity or BARs.
    pub header: Header,
    /// BARs 0-5; the upper half of a 64-bit BAR is `None`.
    pub bars: [Option<Bar>; 6],
    /// The expansion ROM.
    pub rom: Option<Rom>,
    /// Standard capabilities, in chain order.
    pub capabilities: Vec<Capability>,
    /// Offset of the first standard capability (0x34), when it is not the first in the list.
    pub capabilities_pointer: Option<u16>,
    /// Extended capabilities, in chain order (the first must sit at 0x100).
    pub ext_capabilities: Vec<ExtCapability>,
    /// Per-register overrides, applied last.
    pub registers: Vec<RegisterOverride>,
}

/// What a byte owned by neither the header nor a capability does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unowned {
    /// Reads 0, writes are dropped.
    Zero,
    /// Reads and writes go to the same offset of the physical function.
    Passthrough,
}

/// Identity registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    /// Vendor ID.
    pub vendor_id: u16,
    /// Device ID.
    pub device_id: u16,
    /// Subsystem vendor ID.
    pub subsystem_vendor_id: u16,
    /// Subsystem ID.
    pub subsystem_id: u16,
    /// Class code: base class << 16 | sub-class << 8 | programming interface.
    pub class_code: u32,
    /// Revision ID.
    pub revision: u8,
}

/// Where a header register's value comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderSource {
    /// Emulated: a writable virtual register.
    Virtual,
    /// Read and written at the same offset of the physical function.
    Passthrough,
}

/// Header behaviour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// COMMAND bits the guest may change.
    pub command_writable: u16,
    /// STATUS bits that read as 1 (besides CAP_LIST, which follows the capabilities).
    pub status_fixed: u16,
    /// STATUS bits that are write-1-to-clear.
    pub status_rw1c: u16,
    /// Cache line size register.
    pub cache_line_size: HeaderSource,
    /// Latency timer register.
    pub latency_timer: HeaderSource,
    /// Header type bit 7.
    pub multifunction: bool,
    /// Interrupt pin: 0 none, 1-4 INTA-INTD.
    pub interrupt_pin: u8,
}

/// Kind of a BAR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BarKind {
    /// I/O space.
    Io,
    /// 32-bit memory.
    Memory32,
    /// 64-bit memory (uses the next slot for the upper half).
    Memory64,
}

/// What serves the accesses to a BAR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BarBacking {
    /// The backend's BAR handler.
    Emulated,
    /// The physical function's BAR of this index.
    Passthrough {
        /// Index of the physical BAR.
        physical_bar: u8,
    },
    /// The backend's legacy I/O emulation (an I/O BAR).
    LegacyIo,
}

/// An mmappable area of a BAR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MmapArea {
    /// Offset in the BAR (page aligned).
    pub offset: u64,
    /// Size (page aligned).
    pub size: u64,
}

/// A BAR.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bar {
    /// Slot 0-5.
    pub index: u8,
    /// I/O, 32-bit or 64-bit memory.
    pub kind: BarKind,
    /// Prefetchable (memory only).
    pub prefetchable: bool,
    /// Size in bytes: a power of two.
    pub size: u64,
    /// What serves accesses.
    pub backing: BarBacking,
    /// Areas the VMM may mmap (sparse mmap).
    pub mmap: Vec<MmapArea>,
    /// Where the BAR was declared.
    pub origin: Origin,
}

/// What serves expansion ROM reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RomBacking {
    /// The backend supplies the image.
    Emulated,
    /// The physical function's ROM.
    Passthrough,
}

/// The expansion ROM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rom {
    /// Size: a power of two, at least 2 KiB.
    pub size: u64,
    /// What serves reads.
    pub backing: RomBacking,
    /// Where it was declared.
    pub origin: Origin,
}

/// A standard capability.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capability {
    /// Offset of its header (0x40..0xff, dword aligned).
    pub offset: u16,
    /// What it is and where its content comes from.
    pub body: CapabilityBody,
    /// Where it was declared.
    pub origin: Origin,
}

/// Content of a standard capability.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CapabilityBody {
    /// Power management.
    Pm(PmParams),
    /// MSI.
    Msi(MsiParams),
    /// MSI-X.
    Msix(MsixParams),
    /// PCI Express.
    Pcie(PcieParams),
    /// Vendor-specific: the bytes after the length byte.
    Vendor {
        /// Bytes from offset 3 of the capability.
        data: Vec<u8>,
    },
    /// Any other capability, given as bytes after the header.
    Raw {
        /// Capability ID.
        id: u8,
        /// Bytes from offset 2 of the capability.
        data: Vec<u8>,
    },
    /// Backed by the physical function's capability at another offset.
    Physical {
        /// Capability ID (must match the physical one).
        id: u8,
        /// Offset of the physical capability.
        physical_offset: u16,
        /// Length in bytes.
        length: u16,
    },
}

/// Power management parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PmParams {
    /// PMC version field (3 = PM 1.2).
    pub version: u8,
    /// D1 supported.
    pub d1: bool,
    /// D2 supported.
    pub d2: bool,
    /// PME support bits (D0, D1, D2, D3hot, D3cold as bits 0-4).
    pub pme_support: u8,
    /// PMCSR No_Soft_Reset.
    pub no_soft_reset: bool,
}

/// MSI parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsiParams {
    /// Vectors: 1, 2, 4, 8, 16 or 32.
    pub vectors: u8,
    /// 64-bit message address.
    pub address_64: bool,
    /// Per-vector masking.
    pub per_vector_masking: bool,
}

/// MSI-X parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsixParams {
    /// Table entries (1-2048).
    pub table_size: u16,
    /// BAR holding the table.
    pub table_bar: u8,
    /// Offset of the table in that BAR (8-byte aligned).
    pub table_offset: u32,
    /// BAR holding the pending bit array.
    pub pba_bar: u8,
    /// Offset of the PBA in that BAR (8-byte aligned).
    pub pba_offset: u32,
}

impl MsixParams {
    /// The page-aligned ranges (`start..end` in BAR offsets) of BAR `bar` that hold the
    /// MSI-X table or the PBA: a VMM must trap them, never mmap them.
    pub fn trapped_pages(&self, bar: u8, page: u64) -> Vec<(u64, u64)> {
        let round_down = |o: u32| u64::from(o) / page * page;
        let mut trapped = Vec::new();
        if self.table_bar == bar {
            let end = u64::from(self.table_offset)
                + u64::from(self.table_size) * crate::pci::cap::MSIX_ENTRY_SIZE;
            trapped.push((round_down(self.table_offset), end.div_ceil(page) * page));
        }
        if self.pba_bar == bar {
            let end = u64::from(self.pba_offset) + u64::from(self.table_size).div_ceil(64) * 8;
            trapped.push((round_down(self.pba_offset), end.div_ceil(page) * page));
        }
        trapped.sort_unstable();
        trapped
    }
}

/// PCI Express device/port type (capabilities register bits 7:4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PcieDeviceType {
    /// PCI Express endpoint.
    Endpoint,
    /// Legacy PCI Express endpoint.
    LegacyEndpoint,
    /// Root-complex integrated endpoint (no link).
    RcIntegratedEndpoint,
}

impl PcieDeviceType {
    /// The value of the capabilities register field.
    pub fn code(self) -> u16 {
        match self {
            Self::Endpoint => 0,
            Self::LegacyEndpoint => 1,
            Self::RcIntegratedEndpoint => 9,
        }
    }

    /// The name used in layout files.
    pub fn name(self) -> &'static str {
        match self {
            Self::Endpoint => "endpoint",
            Self::LegacyEndpoint => "legacy-endpoint",
            Self::RcIntegratedEndpoint => "rc-integrated-endpoint",
        }
    }
}

/// PCI Express parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PcieParams {
    /// Device/port type.
    pub device_type: PcieDeviceType,
    /// Max payload size supported, bytes (128-4096).
    pub max_payload: u16,
    /// Function level reset supported.
    pub flr: bool,
    /// Extended tag field supported.
    pub extended_tags: bool,
    /// Max link speed, PCIe generation (1 = 2.5 GT/s .. 6 = 64 GT/s); ignored without a link.
    pub link_speed: u8,
    /// Max link width (lanes); ignored without a link.
    pub link_width: u8,
}

/// An extended capability.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtCapability {
    /// Offset of its header (0x100..0xfff, dword aligned).
    pub offset: u16,
    /// Capability version.
    pub version: u8,
    /// What it is and where its content comes from.
    pub body: ExtCapabilityBody,
    /// Where it was declared.
    pub origin: Origin,
}

/// Content of an extended capability.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExtCapabilityBody {
    /// Advanced error reporting.
    Aer,
    /// Device serial number.
    Dsn {
        /// The serial number.
        serial: u64,
    },
    /// Access control services.
    Acs {
        /// ACS capability bits (7 bits).
        capabilities: u16,
    },
    /// Address translation services.
    Ats {
        /// Invalidate queue depth (0 = 32).
        invalidate_queue_depth: u8,
        /// Page aligned request.
        page_aligned: bool,
    },
    /// Page request interface.
    Pri {
        /// Outstanding page request capacity.
        outstanding_capacity: u32,
    },
    /// Process address space ID.
    Pasid {
        /// Max PASID width (bits, 1-20).
        max_width: u8,
        /// Execute permission supported.
        execute: bool,
        /// Privileged mode supported.
        privileged: bool,
    },
    /// Vendor-specific extended capability.
    Vsec {
        /// VSEC ID.
        vsec_id: u16,
        /// VSEC revision.
        vsec_rev: u8,
        /// Bytes from offset 8.
        data: Vec<u8>,
    },
    /// Any other extended capability, given as bytes after the header.
    Raw {
        /// Capability ID.
        id: u16,
        /// Bytes from offset 4.
        data: Vec<u8>,
    },
    /// Backed by the physical function's capability at another offset.
    Physical {
        /// Capability ID (must match the physical one).
        id: u16,
        /// Offset of the physical capability.
        physical_offset: u16,
        /// Length in bytes.
        length: u16,
    },
}

/// Where the non-virtual bits of an overridden register come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegisterSource {
    /// The physical function's config space at this offset.
    Physical {
        /// Physical offset.
        offset: u16,
    },
    /// Computed by the backend on every access.
    Backend,
}

/// A per-register override.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisterOverride {
    /// Offset (aligned to `size`).
    pub offset: u16,
    /// 1, 2 or 4 bytes.
    pub size: u8,
    /// Reset value of the virtual bits.
    pub value: u32,
    /// Bits served from the virtual copy; the others come from `source`.
    pub virtual_mask: u32,
    /// Bits the guest may write.
    pub write_mask: u32,
    /// Bits that are write-1-to-clear.
    pub rw1c_mask: u32,
    /// Where the non-virtual bits come from.
    pub source: RegisterSource,
    /// Where it was declared.
    pub origin: Origin,
}

impl CapabilityBody {
    /// The capability ID.
    pub fn id(&self) -> u8 {
        use crate::pci::cap;
        match self {
            Self::Pm(_) => cap::CAP_PM,
            Self::Msi(_) => cap::CAP_MSI,
            Self::Msix(_) => cap::CAP_MSIX,
            Self::Pcie(_) => cap::CAP_PCIE,
            Self::Vendor { .. } => cap::CAP_VENDOR,
            Self::Raw { id, .. } | Self::Physical { id, .. } => *id,
        }
    }

    /// Length in bytes, header included.
    pub fn length(&self) -> u16 {
        let base = Chain::Standard.base_length(u16::from(self.id()));
        match self {
            Self::Pm(_) | Self::Msix(_) | Self::Pcie(_) => base,
            Self::Msi(p) => crate::pci::cap::msi_size(p.address_64, p.per_vector_masking),
            Self::Vendor { data } => base + data.len() as u16,
            Self::Raw { data, .. } => Chain::Standard.header_len() + data.len() as u16,
            Self::Physical { length, .. } => *length,
        }
    }
}

impl ExtCapabilityBody {
    /// The extended capability ID.
    pub fn id(&self) -> u16 {
        use crate::pci::cap;
        match self {
            Self::Aer => cap::EXT_CAP_AER,
            Self::Dsn { .. } => cap::EXT_CAP_DSN,
            Self::Acs { .. } => cap::EXT_CAP_ACS,
            Self::Ats { .. } => cap::EXT_CAP_ATS,
            Self::Pri { .. } => cap::EXT_CAP_PRI,
            Self::Pasid { .. } => cap::EXT_CAP_PASID,
            Self::Vsec { .. } => cap::EXT_CAP_VSEC,
            Self::Raw { id, .. } | Self::Physical { id, .. } => *id,
        }
    }

    /// Length in bytes, header included.
    pub fn length(&self) -> u16 {
        let base = Chain::Extended.base_length(self.id());
        match self {
            Self::Aer
            | Self::Dsn { .. }
            | Self::Acs { .. }
            | Self::Ats { .. }
            | Self::Pri { .. }
            | Self::Pasid { .. } => base,
            Self::Vsec { data, .. } => base + data.len() as u16,
            Self::Raw { data, .. } => Chain::Extended.header_len() + data.len() as u16,
            Self::Physical { length, .. } => *length,
        }
    }
}

/// A physical function's capability a layout's capability is backed by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PhysicalBacking {
    /// Offset of the physical capability.
    pub offset: u16,
    /// Length in bytes.
    pub length: u16,
}

/// What standard and extended capabilities have in common, so that one piece of code handles
/// both chains (checks, binding, writing out).
pub trait ChainItem {
    /// The chain the item sits in.
    const CHAIN: Chain;
    /// Offset of its header.
    fn offset(&self) -> u16;
    /// Its ID in its chain.
    fn id(&self) -> u16;
    /// Length in bytes, header included.
    fn length(&self) -> u16;
    /// Where it was declared.
    fn origin(&self) -> &Origin;
    /// The physical capability backing it, when it is backed by one.
    fn physical(&self) -> Option<PhysicalBacking>;
    /// Whether it is given as raw bytes (`kind = "raw"` whatever its ID).
    fn is_raw(&self) -> bool;

    /// Its `kind` in a layout file.
    fn kind(&self) -> &'static str {
        if self.is_raw() {
            crate::pci::cap::RAW_KIND
        } else {
            Self::CHAIN.kind(self.id())
        }
    }

    /// Its name, as lspci prints it.
    fn name(&self) -> &'static str {
        Self::CHAIN.name(self.id())
    }
}

impl ChainItem for Capability {
    const CHAIN: Chain = Chain::Standard;

    fn offset(&self) -> u16 {
        self.offset
    }

    fn id(&self) -> u16 {
        self.body.id().into()
    }

    fn length(&self) -> u16 {
        self.body.length()
    }

    fn origin(&self) -> &Origin {
        &self.origin
    }

    fn physical(&self) -> Option<PhysicalBacking> {
        match self.body {
            CapabilityBody::Physical {
                physical_offset,
                length,
                ..
            } => Some(PhysicalBacking {
                offset: physical_offset,
                length,
            }),
            _ => None,
        }
    }

    fn is_raw(&self) -> bool {
        matches!(self.body, CapabilityBody::Raw { .. })
    }
}

impl ChainItem for ExtCapability {
    const CHAIN: Chain = Chain::Extended;

    fn offset(&self) -> u16 {
        self.offset
    }

    fn id(&self) -> u16 {
        self.body.id()
    }

    fn length(&self) -> u16 {
        self.body.length()
    }

    fn origin(&self) -> &Origin {
        &self.origin
    }

    fn physical(&self) -> Option<PhysicalBacking> {
        match self.body {
            ExtCapabilityBody::Physical {
                physical_offset,
                length,
                ..
            } => Some(PhysicalBacking {
                offset: physical_offset,
                length,
            }),
            _ => None,
        }
    }

    fn is_raw(&self) -> bool {
        matches!(self.body, ExtCapabilityBody::Raw { .. })
    }
}

impl Layout {
    /// The BAR in slot `index`, if declared.
    pub fn bar(&self, index: u8) -> Option<&Bar> {
        self.bars.get(usize::from(index)).and_then(Option::as_ref)
    }

    /// Whether any part of the config space comes from a physical function.
    pub fn needs_physical(&self) -> bool {
        self.unowned == Unowned::Passthrough
            || self.header.cache_line_size == HeaderSource::Passthrough
            || self.header.latency_timer == HeaderSource::Passthrough
            || self
                .capabilities
                .iter()
                .any(|c| matches!(c.body, CapabilityBody::Physical { .. }))
            || self
                .ext_capabilities
                .iter()
                .any(|c| matches!(c.body, ExtCapabilityBody::Physical { .. }))
            || self.registers.iter().any(|r| {
                r.virtual_mask != all_ones(r.size)
                    && matches!(r.source, RegisterSource::Physical { .. })
            })
            || self
                .rom
                .as_ref()
                .is_some_and(|r| r.backing == RomBacking::Passthrough)
            || self
                .bars
                .iter()
                .flatten()
                .any(|b| matches!(b.backing, BarBacking::Passthrough { .. }))
    }
}

/// A mask of `size` bytes of ones.
pub fn all_ones(size: u8) -> u32 {
    match size {
        1 => 0xff,
        2 => 0xffff,
        _ => 0xffff_ffff,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pci::cap::{CAPABILITIES, Chain};

    /// Every declarative variant of the model, with no data.
    fn standard_bodies() -> Vec<CapabilityBody> {
        vec![
            CapabilityBody::Pm(PmParams {
                version: 3,
                d1: false,
                d2: false,
                pme_support: 0,
                no_soft_reset: true,
            }),
            CapabilityBody::Msi(MsiParams {
                vectors: 1,
                address_64: false,
                per_vector_masking: false,
            }),
            CapabilityBody::Msix(MsixParams {
                table_size: 1,
                table_bar: 0,
                table_offset: 0,
                pba_bar: 0,
                pba_offset: 0x800,
            }),
            CapabilityBody::Pcie(PcieParams {
                device_type: PcieDeviceType::Endpoint,
                max_payload: 128,
                flr: true,
                extended_tags: true,
                link_speed: 1,
                link_width: 1,
            }),
            CapabilityBody::Vendor { data: Vec::new() },
        ]
    }

    fn extended_bodies() -> Vec<ExtCapabilityBody> {
        vec![
            ExtCapabilityBody::Aer,
            ExtCapabilityBody::Dsn { serial: 1 },
            ExtCapabilityBody::Acs { capabilities: 0 },
            ExtCapabilityBody::Ats {
                invalidate_queue_depth: 0,
                page_aligned: true,
            },
            ExtCapabilityBody::Pri {
                outstanding_capacity: 32,
            },
            ExtCapabilityBody::Pasid {
                max_width: 20,
                execute: false,
                privileged: false,
            },
            ExtCapabilityBody::Vsec {
                vsec_id: 1,
                vsec_rev: 0,
                data: Vec::new(),
            },
        ]
    }

    #[test]
    fn every_emulated_kind_of_the_table_is_a_variant_with_the_tables_length() {
        let standard: Vec<(u16, u16)> = standard_bodies()
            .iter()
            .map(|b| (u16::from(b.id()), b.length()))
            .collect();
        let extended: Vec<(u16, u16)> = extended_bodies()
            .iter()
            .map(|b| (b.id(), b.length()))
            .collect();
        for info in CAPABILITIES.iter().filter(|c| c.kind.is_some()) {
            let bodies = match info.chain {
                Chain::Standard => &standard,
                Chain::Extended => &extended,
            };
            let length = bodies
                .iter()
                .find(|(id, _)| *id == info.id)
                .map(|(_, length)| *length)
                .unwrap_or_else(|| panic!("no variant for {}", info.name));
            assert_eq!(Some(length), info.length.map(|l| l.min()), "{}", info.name);
        }
        // And every variant is in the table.
        assert_eq!(
            standard.len() + extended.len(),
            CAPABILITIES.iter().filter(|c| c.kind.is_some()).count()
        );
    }

    #[test]
    fn both_chains_answer_through_one_trait() {
        let physical = Capability {
            offset: 0x40,
            body: CapabilityBody::Physical {
                id: crate::pci::cap::CAP_PCIE,
                physical_offset: 0x70,
                length: 60,
            },
            origin: Origin::default(),
        };
        assert_eq!(
            physical.physical(),
            Some(PhysicalBacking {
                offset: 0x70,
                length: 60
            })
        );
        assert_eq!((physical.kind(), physical.name()), ("pcie", "Express"));
        let raw = ExtCapability {
            offset: 0x100,
            version: 1,
            body: ExtCapabilityBody::Raw {
                id: crate::pci::cap::EXT_CAP_AER,
                data: vec![0; 4],
            },
            origin: Origin::default(),
        };
        // Raw bytes stay raw whatever their ID; the name is still the table's.
        assert_eq!(
            (raw.kind(), raw.name(), ChainItem::length(&raw)),
            ("raw", "Advanced Error Reporting", 8)
        );
        assert_eq!(raw.physical(), None);
    }
}
