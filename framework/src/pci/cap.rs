//! Capability IDs, their names, and the register offsets inside the capabilities the
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

/// Human name of a standard capability ID, as lspci prints it.
pub fn cap_name(id: u8) -> &'static str {
    match id {
        CAP_PM => "Power Management",
        0x02 => "AGP",
        0x03 => "Vital Product Data",
        0x04 => "Slot Identification",
        CAP_MSI => "MSI",
        0x06 => "CompactPCI Hot Swap",
        0x07 => "PCI-X",
        0x08 => "HyperTransport",
        CAP_VENDOR => "Vendor Specific",
        0x0a => "Debug port",
        0x0c => "Hot-plug",
        0x0d => "Subsystem",
        0x12 => "SATA HBA",
        0x13 => "PCI Advanced Features",
        CAP_PCIE => "Express",
        CAP_MSIX => "MSI-X",
        _ => "Unknown",
    }
}

/// Human name of an extended capability ID, as lspci prints it.
pub fn ext_cap_name(id: u16) -> &'static str {
    match id {
        EXT_CAP_AER => "Advanced Error Reporting",
        0x0002 => "Virtual Channel",
        EXT_CAP_DSN => "Device Serial Number",
        0x0004 => "Power Budgeting",
        EXT_CAP_VSEC => "Vendor Specific Information",
        EXT_CAP_ACS => "Access Control Services",
        EXT_CAP_ARI => "Alternative Routing-ID Interpretation",
        EXT_CAP_ATS => "Address Translation Service",
        EXT_CAP_SRIOV => "Single Root I/O Virtualization",
        EXT_CAP_PRI => "Page Request Interface",
        EXT_CAP_REBAR => "Resizable BAR",
        0x0017 => "Transaction Processing Hints",
        0x0018 => "Latency Tolerance Reporting",
        0x0019 => "Secondary PCI Express",
        EXT_CAP_PASID => "Process Address Space ID",
        0x001e => "L1 PM Substates",
        _ => "Unknown",
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
/// Size of the PM capability.
pub const PM_SIZE: u16 = 8;

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
/// Size of the MSI-X capability.
pub const MSIX_SIZE: u16 = 12;
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
/// Size of a version 2 PCI Express capability of an endpoint.
pub const PCIE_SIZE: u16 = 60;
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

/// AER: size of the capability with the header log registers.
pub const AER_SIZE: u16 = 0x48;
/// DSN: size of the capability.
pub const DSN_SIZE: u16 = 0x0c;
/// ACS: size of the capability without the egress control vector.
pub const ACS_SIZE: u16 = 0x08;
/// ATS: size of the capability.
pub const ATS_SIZE: u16 = 0x08;
/// PRI: size of the capability.
pub const PRI_SIZE: u16 = 0x10;
/// PASID: size of the capability.
pub const PASID_SIZE: u16 = 0x08;
