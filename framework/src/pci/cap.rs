//! Capability IDs, the one table of what the framework knows about each ([`CAPABILITIES`]:
//! chain, ID, name, layout kind, length), and the register offsets inside the capabilities the
//! framework emulates (PM, MSI, MSI-X, PCI Express; extended: AER, ACS, ATS, PRI, PASID, DSN).

/// Standard capability ID: power management.
pub const CAP_PM: u8 = 0x01;
/// Standard capability ID: MSI.
pub const CAP_MSI: u8 = 0x05;
/// Standard capability ID: vendor-specific.
pub const CAP_VENDOR: u8 = 0x09;
/// Standard capability ID: PCI Express.
pub const CAP_PCIE: u8 = 0x10;
/// Standard capability ID: MSI-X.
pub const CAP_MSIX: u8 = 0x11;

/// Extended capability ID: advanced error reporting.
pub const EXT_CAP_AER: u16 = 0x0001;
/// Extended capability ID: device serial number.
pub const EXT_CAP_DSN: u16 = 0x0003;
/// Extended capability ID: vendor-specific extended capability.
pub const EXT_CAP_VSEC: u16 = 0x000b;
/// Extended capability ID: access control services.
pub const EXT_CAP_ACS: u16 = 0x000d;
/// Extended capability ID: alternative routing-ID interpretation.
pub const EXT_CAP_ARI: u16 = 0x000e;
/// Extended capability ID: address translation services.
pub const EXT_CAP_ATS: u16 = 0x000f;
/// Extended capability ID: single-root I/O virtualization.
pub const EXT_CAP_SRIOV: u16 = 0x0010;
/// Extended capability ID: page request interface.
pub const EXT_CAP_PRI: u16 = 0x0013;
/// Extended capability ID: resizable BAR.
pub const EXT_CAP_REBAR: u16 = 0x0015;
/// Extended capability ID: process address space ID.
pub const EXT_CAP_PASID: u16 = 0x001b;

/// The two capability chains of a config space.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Chain {
    /// Standard capabilities: 8-bit IDs, linked from the capabilities pointer (0x34) in
    /// 0x40..0x100, a 2-byte header (ID, next).
    Standard,
    /// Extended capabilities (PCI Express): 16-bit IDs, starting at 0x100, a 4-byte header (ID,
    /// version, next).
    Extended,
}

/// How long a capability is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Length {
    /// Always this many bytes (header included).
    Fixed(u16),
    /// At least this many bytes (the length of its declarative form without data); the rest
    /// depends on the capability's own registers or data.
    AtLeast(u16),
}

impl Length {
    /// The fixed length, or the least one.
    pub const fn min(self) -> u16 {
        match self {
            Self::Fixed(n) | Self::AtLeast(n) => n,
        }
    }

    /// The length when it is fixed.
    pub const fn fixed(self) -> Option<u16> {
        match self {
            Self::Fixed(n) => Some(n),
            Self::AtLeast(_) => None,
        }
    }
}

/// Reads the length a capability's registers state, from a config space and the capability's
/// offset; `None` when the bytes are not there.
pub type StatedLength = fn(&[u8], u16) -> Option<u16>;

/// What the framework knows about one capability ID: the one table parse, emit, bind, derive,
/// checks and printing look up.
#[derive(Debug, Clone, Copy)]
pub struct CapabilityInfo {
    /// The chain it sits in.
    pub chain: Chain,
    /// Its ID in that chain.
    pub id: u16,
    /// Its name, as lspci prints it.
    pub name: &'static str,
    /// Its `kind` in layout files, when the framework emulates it declaratively (others are
    /// `raw` or `physical_offset`-backed).
    pub kind: Option<&'static str>,
    /// Its length; only emulated capabilities have one here.
    pub length: Option<Length>,
    /// Whether a function may have more than one (vendor-specific ones).
    pub repeatable: bool,
    /// Reads the length the hardware states for it from a config space and its offset, for
    /// capabilities whose length their own registers give.
    pub stated_length: Option<StatedLength>,
}

impl CapabilityInfo {
    /// A capability the framework only names.
    const fn named(chain: Chain, id: u16, name: &'static str) -> Self {
        Self {
            chain,
            id,
            name,
            kind: None,
            length: None,
            repeatable: false,
            stated_length: None,
        }
    }

    /// A capability the framework emulates, with its layout `kind` and length.
    const fn emulated(
        chain: Chain,
        id: u16,
        name: &'static str,
        kind: &'static str,
        length: Length,
    ) -> Self {
        Self {
            kind: Some(kind),
            length: Some(length),
            ..Self::named(chain, id, name)
        }
    }
}

/// The MSI capability's length, from its message control register.
fn msi_stated_length(config: &[u8], offset: u16) -> Option<u16> {
    let at = usize::from(offset) + usize::from(MSI_FLAGS);
    let flags = u16::from_le_bytes([*config.get(at)?, *config.get(at + 1)?]);
    Some(msi_size(
        flags & MSI_FLAGS_64BIT != 0,
        flags & MSI_FLAGS_MASKBIT != 0,
    ))
}

/// A vendor-specific capability's length, from its length byte.
fn vendor_stated_length(config: &[u8], offset: u16) -> Option<u16> {
    config.get(usize::from(offset) + 2).map(|l| u16::from(*l))
}

/// Every capability ID the framework knows, standard then extended.
pub const CAPABILITIES: &[CapabilityInfo] = {
    use CapabilityInfo as C;
    use Chain::{Extended as E, Standard as S};
    &[
        C::emulated(S, CAP_PM as u16, "Power Management", "pm", Length::Fixed(8)),
        C::named(S, 0x02, "AGP"),
        C::named(S, 0x03, "Vital Product Data"),
        C::named(S, 0x04, "Slot Identification"),
        C {
            stated_length: Some(msi_stated_length),
            ..C::emulated(S, CAP_MSI as u16, "MSI", "msi", Length::AtLeast(10))
        },
        C::named(S, 0x06, "CompactPCI Hot Swap"),
        C::named(S, 0x07, "PCI-X"),
        C::named(S, 0x08, "HyperTransport"),
        C {
            repeatable: true,
            stated_length: Some(vendor_stated_length),
            ..C::emulated(
                S,
                CAP_VENDOR as u16,
                "Vendor Specific",
                "vendor",
                Length::AtLeast(3),
            )
        },
        C::named(S, 0x0a, "Debug port"),
        C::named(S, 0x0c, "Hot-plug"),
        C::named(S, 0x0d, "Subsystem"),
        C::emulated(S, CAP_PCIE as u16, "Express", "pcie", Length::Fixed(60)),
        C::emulated(S, CAP_MSIX as u16, "MSI-X", "msix", Length::Fixed(12)),
        C::named(S, 0x12, "SATA HBA"),
        C::named(S, 0x13, "PCI Advanced Features"),
        C::emulated(
            E,
            EXT_CAP_AER,
            "Advanced Error Reporting",
            "aer",
            Length::Fixed(0x48),
        ),
        C::named(E, 0x0002, "Virtual Channel"),
        C::emulated(
            E,
            EXT_CAP_DSN,
            "Device Serial Number",
            "dsn",
            Length::Fixed(0x0c),
        ),
        C::named(E, 0x0004, "Power Budgeting"),
        C {
            repeatable: true,
            ..C::emulated(
                E,
                EXT_CAP_VSEC,
                "Vendor Specific Information",
                "vsec",
                Length::AtLeast(8),
            )
        },
        // Without the egress control vector, which a physical ACS may add.
        C::emulated(
            E,
            EXT_CAP_ACS,
            "Access Control Services",
            "acs",
            Length::AtLeast(8),
        ),
        C::named(E, EXT_CAP_ARI, "Alternative Routing-ID Interpretation"),
        C::emulated(
            E,
            EXT_CAP_ATS,
            "Address Translation Service",
            "ats",
            Length::Fixed(8),
        ),
        C::named(E, EXT_CAP_SRIOV, "Single Root I/O Virtualization"),
        C::emulated(
            E,
            EXT_CAP_PRI,
            "Page Request Interface",
            "pri",
            Length::Fixed(0x10),
        ),
        C::named(E, EXT_CAP_REBAR, "Resizable BAR"),
        C::named(E, 0x0017, "Transaction Processing Hints"),
        C::named(E, 0x0018, "Latency Tolerance Reporting"),
        C::named(E, 0x0019, "Secondary PCI Express"),
        C::emulated(
            E,
            EXT_CAP_PASID,
            "Process Address Space ID",
            "pasid",
            Length::Fixed(8),
        ),
        C::named(E, 0x001e, "L1 PM Substates"),
    ]
};

/// The `kind` of capabilities a layout gives as bytes (any ID).
pub const RAW_KIND: &str = "raw";

impl Chain {
    /// Bytes of a capability header: ID and next (standard); ID, version and next (extended).
    pub const fn header_len(self) -> u16 {
        match self {
            Self::Standard => 2,
            Self::Extended => 4,
        }
    }

    /// Where capabilities of this chain sit: `0x40..0x100` or `0x100..0x1000`.
    pub const fn area(self) -> std::ops::Range<u16> {
        match self {
            Self::Standard => super::regs::HEADER_END..0x100,
            Self::Extended => super::regs::EXTENDED_CAPS_START..0x1000,
        }
    }

    /// The largest ID of this chain.
    pub const fn max_id(self) -> u16 {
        match self {
            Self::Standard => 0xff,
            Self::Extended => 0xffff,
        }
    }

    /// "capability" or "extended capability", for messages.
    pub const fn noun(self) -> &'static str {
        match self {
            Self::Standard => "capability",
            Self::Extended => "extended capability",
        }
    }

    /// The table's entry for `id` in this chain.
    pub fn info(self, id: u16) -> Option<&'static CapabilityInfo> {
        CAPABILITIES.iter().find(|c| c.chain == self && c.id == id)
    }

    /// The table's entry for a layout `kind` in this chain (`raw` has none).
    pub fn by_kind(self, kind: &str) -> Option<&'static CapabilityInfo> {
        CAPABILITIES
            .iter()
            .find(|c| c.chain == self && c.kind == Some(kind))
    }

    /// The `kind`s a layout file may give in this chain: the emulated ones, then `raw`.
    pub fn kinds(self) -> Vec<&'static str> {
        CAPABILITIES
            .iter()
            .filter(|c| c.chain == self)
            .filter_map(|c| c.kind)
            .chain([RAW_KIND])
            .collect()
    }

    /// The name of `id`, as lspci prints it; "Unknown" for IDs the table lacks.
    pub fn name(self, id: u16) -> &'static str {
        self.info(id).map_or("Unknown", |c| c.name)
    }

    /// The layout `kind` of `id`: its emulated kind, or `raw`.
    pub fn kind(self, id: u16) -> &'static str {
        self.info(id).and_then(|c| c.kind).unwrap_or(RAW_KIND)
    }

    /// The length of emulated capability `id` when it is fixed.
    pub fn fixed_length(self, id: u16) -> Option<u16> {
        self.info(id).and_then(|c| c.length).and_then(Length::fixed)
    }

    /// The length of the declarative form of emulated capability `id` before its data (the
    /// header's length for an ID the table gives no length).
    pub fn base_length(self, id: u16) -> u16 {
        self.info(id)
            .and_then(|c| c.length)
            .map_or(self.header_len(), Length::min)
    }
}

/// Power management: PMC register (16 bits) offset.
pub const PM_PMC: u16 = 2;
/// Power management: PMCSR register (16 bits) offset.
pub const PM_PMCSR: u16 = 4;
/// PMCSR: power state field (D0..D3hot).
pub const PM_PMCSR_POWER_STATE: u16 = 0x0003;
/// PMCSR: no soft reset.
pub const PM_PMCSR_NO_SOFT_RESET: u16 = 1 << 3;
/// PMCSR: PME enable.
pub const PM_PMCSR_PME_ENABLE: u16 = 1 << 8;
/// PMCSR: PME status (RW1C).
pub const PM_PMCSR_PME_STATUS: u16 = 1 << 15;

/// MSI: message control (16 bits) offset.
pub const MSI_FLAGS: u16 = 2;
/// MSI flags: enable.
pub const MSI_FLAGS_ENABLE: u16 = 1 << 0;
/// MSI flags: multiple message capable (log2 of vectors), bits 3:1.
pub const MSI_FLAGS_QMASK: u16 = 0x000e;
/// MSI flags: multiple message enable (log2 of vectors), bits 6:4.
pub const MSI_FLAGS_QSIZE: u16 = 0x0070;
/// MSI flags: 64-bit address capable.
pub const MSI_FLAGS_64BIT: u16 = 1 << 7;
/// MSI flags: per-vector masking capable.
pub const MSI_FLAGS_MASKBIT: u16 = 1 << 8;

/// Size of an MSI capability with the given features.
pub const fn msi_size(address_64: bool, per_vector_masking: bool) -> u16 {
    match (address_64, per_vector_masking) {
        (false, false) => 10,
        (true, false) => 14,
        (false, true) => 20,
        (true, true) => 24,
    }
}

/// MSI-X: message control (16 bits) offset.
pub const MSIX_FLAGS: u16 = 2;
/// MSI-X flags: table size minus one, bits 10:0.
pub const MSIX_FLAGS_QSIZE: u16 = 0x07ff;
/// MSI-X flags: function mask.
pub const MSIX_FLAGS_MASKALL: u16 = 1 << 14;
/// MSI-X flags: enable.
pub const MSIX_FLAGS_ENABLE: u16 = 1 << 15;
/// MSI-X: table offset and BIR (32 bits) offset.
pub const MSIX_TABLE: u16 = 4;
/// MSI-X: PBA offset and BIR (32 bits) offset.
pub const MSIX_PBA: u16 = 8;
/// Size of one MSI-X table entry.
pub const MSIX_ENTRY_SIZE: u64 = 16;

/// PCI Express: capabilities register (16 bits) offset.
pub const PCIE_FLAGS: u16 = 2;
/// PCI Express: device capabilities (32 bits).
pub const PCIE_DEVCAP: u16 = 4;
/// PCI Express: device control (16 bits).
pub const PCIE_DEVCTL: u16 = 8;
/// PCI Express: device status (16 bits).
pub const PCIE_DEVSTA: u16 = 10;
/// PCI Express: link capabilities (32 bits).
pub const PCIE_LNKCAP: u16 = 12;
/// PCI Express: link control (16 bits).
pub const PCIE_LNKCTL: u16 = 16;
/// PCI Express: link status (16 bits).
pub const PCIE_LNKSTA: u16 = 18;
/// PCI Express: device capabilities 2 (32 bits).
pub const PCIE_DEVCAP2: u16 = 36;
/// PCI Express: device control 2 (16 bits).
pub const PCIE_DEVCTL2: u16 = 40;
/// PCI Express: link capabilities 2 (32 bits).
pub const PCIE_LNKCAP2: u16 = 44;
/// PCI Express: link control 2 (16 bits).
pub const PCIE_LNKCTL2: u16 = 48;
/// Device capabilities: function level reset capable.
pub const PCIE_DEVCAP_FLR: u32 = 1 << 28;
/// Device control: initiate function level reset.
pub const PCIE_DEVCTL_FLR: u16 = 1 << 15;
/// Device control: bits a guest may write (error reporting enables, relaxed ordering,
/// max payload, extended tags, phantom functions, aux power, no snoop, max read request).
pub const PCIE_DEVCTL_WRITABLE: u16 = 0x7fff;
/// Device status: error bits, write-1-to-clear (correctable, non-fatal, fatal, unsupported request).
pub const PCIE_DEVSTA_RW1C: u16 = 0x000f;
/// Device control 2: completion timeout value/disable, LTR, 10-bit tags, OBFF (ARI bit 5 excluded).
pub const PCIE_DEVCTL2_WRITABLE: u16 = 0x1fdf;
/// Link control: bits a guest may write (ASPM control, RCB, common clock, extended sync, clock PM).
pub const PCIE_LNKCTL_WRITABLE: u16 = 0x01c3;

/// Extended capability header: ID bits 15:0, version 19:16, next 31:20.
pub const fn ext_cap_header(id: u16, version: u8, next: u16) -> u32 {
    (id as u32) | ((version as u32 & 0xf) << 16) | ((next as u32 & 0xffc) << 20)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_has_one_row_per_id_and_kind() {
        for (i, a) in CAPABILITIES.iter().enumerate() {
            assert!(a.id <= a.chain.max_id(), "{}", a.name);
            for b in &CAPABILITIES[..i] {
                assert!(
                    !(a.chain == b.chain && a.id == b.id),
                    "{:?} {:#x} twice",
                    a.chain,
                    a.id
                );
                assert!(
                    !(a.chain == b.chain && a.kind.is_some() && a.kind == b.kind),
                    "kind {:?} twice",
                    a.kind
                );
            }
            // A layout kind has a length and is not the raw kind.
            assert_eq!(a.kind.is_some(), a.length.is_some(), "{}", a.name);
            assert_ne!(a.kind, Some(RAW_KIND));
            if let Some(length) = a.length {
                assert!(length.min() >= a.chain.header_len(), "{}", a.name);
            }
        }
    }

    #[test]
    fn lookups_by_id_and_kind() {
        let s = Chain::Standard;
        let e = Chain::Extended;
        assert_eq!(s.name(CAP_MSIX.into()), "MSI-X");
        assert_eq!(s.name(0xee), "Unknown");
        assert_eq!(e.name(EXT_CAP_PASID), "Process Address Space ID");
        // The same number names different capabilities in the two chains.
        assert_eq!(s.name(0x10), "Express");
        assert_eq!(e.name(0x10), "Single Root I/O Virtualization");
        assert_eq!(s.by_kind("pcie").map(|c| c.id), Some(CAP_PCIE.into()));
        assert_eq!(e.by_kind("aer").map(|c| c.id), Some(EXT_CAP_AER));
        assert!(s.by_kind("aer").is_none() && s.by_kind(RAW_KIND).is_none());
        assert_eq!(s.kind(CAP_VENDOR.into()), "vendor");
        assert_eq!(s.kind(0x03), RAW_KIND);
        assert_eq!(s.kinds(), ["pm", "msi", "vendor", "pcie", "msix", "raw"]);
        assert_eq!(
            e.kinds(),
            ["aer", "dsn", "vsec", "acs", "ats", "pri", "pasid", "raw"]
        );
        assert_eq!(s.fixed_length(CAP_PCIE.into()), Some(60));
        assert_eq!(s.fixed_length(CAP_MSI.into()), None);
        assert_eq!(e.fixed_length(EXT_CAP_ACS), None);
        assert_eq!(e.base_length(EXT_CAP_ACS), 8);
        assert_eq!(e.base_length(EXT_CAP_SRIOV), 4);
        assert_eq!(s.base_length(0x03), 2);
        assert!(s.info(CAP_VENDOR.into()).unwrap().repeatable);
        assert!(!s.info(CAP_MSI.into()).unwrap().repeatable);
    }

    #[test]
    fn stated_lengths_come_from_the_registers() {
        let mut config = vec![0u8; 256];
        config[0x50] = CAP_MSI;
        config[0x52..0x54].copy_from_slice(&(MSI_FLAGS_64BIT | MSI_FLAGS_MASKBIT).to_le_bytes());
        config[0x60] = CAP_VENDOR;
        config[0x62] = 0x14;
        let stated = |id: u8, at: u16| {
            Chain::Standard
                .info(id.into())
                .and_then(|c| c.stated_length)
                .and_then(|f| f(&config, at))
        };
        assert_eq!(stated(CAP_MSI, 0x50), Some(24));
        assert_eq!(stated(CAP_VENDOR, 0x60), Some(0x14));
        assert_eq!(stated(CAP_PCIE, 0x60), None);
        // Past the end of config space there is nothing to read.
        assert_eq!(stated(CAP_VENDOR, 0xfe), None);
    }
}
