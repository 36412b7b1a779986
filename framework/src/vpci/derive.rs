//! Derives a layout from a physical function: the same identity, BAR kinds and sizes and
//! capability chain, with capabilities decoded into declarative form where the framework
//! knows them, and a quirks table hiding what guests should not see.

use super::emit::emit;
use super::parse::default_header;
use crate::layout::LayoutError;
use crate::layout::MMAP_PAGE_SIZE;
use crate::layout::*;
use crate::pci::cap::{self, Chain};
use crate::pci::regs;
use crate::pci::walk::{self, FoundCapability};
use crate::physical::PhysicalDescription;

/// An extended capability guests should not see by default, and why.
pub struct Quirk {
    /// Extended capability ID.
    pub id: u16,
    /// Name for `--keep`.
    pub name: &'static str,
    /// Why it is hidden.
    pub reason: &'static str,
}

/// Extended capabilities hidden by default (as cloud-hypervisor and crosvm do).
pub const DEFAULT_QUIRKS: &[Quirk] = &[
    Quirk {
        id: cap::EXT_CAP_SRIOV,
        name: "sriov",
        reason: "SR-IOV is the host's: a guest must not create VFs of the physical function",
    },
    Quirk {
        id: cap::EXT_CAP_ARI,
        name: "ari",
        reason: "ARI describes the host's function numbering, not the guest's",
    },
    Quirk {
        id: cap::EXT_CAP_REBAR,
        name: "rebar",
        reason: "resizing a BAR would change the layout's fixed BAR sizes",
    },
];

/// Options of a derivation.
#[derive(Debug, Clone, Default)]
pub struct DeriveOptions {
    /// Layout name (`vpci.name`).
    pub name: String,
    /// Where the description came from, for the header comment.
    pub source: String,
    /// Quirks (by name) not to apply.
    pub keep: Vec<String>,
}

/// A derived layout with the notes the tool writes as comments.
#[derive(Debug, Clone)]
pub struct Derived {
    /// The layout.
    pub layout: Layout,
    /// What the derivation did that a reader should know.
    pub notes: Vec<String>,
}

impl Derived {
    /// The layout as TOML with the notes as comments.
    pub fn to_toml(&self) -> String {
        emit(&self.layout, &self.notes)
    }
}

fn u8_at(config: &[u8], o: u16) -> u8 {
    config.get(usize::from(o)).copied().unwrap_or(0)
}

fn u16_at(config: &[u8], o: u16) -> u16 {
    u16::from_le_bytes([u8_at(config, o), u8_at(config, o + 1)])
}

fn u32_at(config: &[u8], o: u16) -> u32 {
    u32::from(u16_at(config, o)) | (u32::from(u16_at(config, o + 2)) << 16)
}

/// Derives a layout from a physical function's description.
pub fn derive(
    physical: &PhysicalDescription,
    options: &DeriveOptions,
) -> Result<Derived, LayoutError> {
    let config = &physical.config;
    let mut notes = vec![format!(
        "Derived by `vfio-variant vpci derive` from {}.",
        if options.source.is_empty() {
            "a physical function"
        } else {
            &options.source
        }
    )];
    let walk_error = |e: walk::WalkError| {
        LayoutError::new(Default::default(), "<physical config>", e.to_string())
    };
    let standard = walk::standard_capabilities(config).map_err(walk_error)?;
    let extended = walk::extended_capabilities(config).map_err(walk_error)?;

    let identity = Identity {
        vendor_id: u16_at(config, regs::VENDOR_ID),
        device_id: u16_at(config, regs::DEVICE_ID),
        subsystem_vendor_id: u16_at(config, regs::SUBSYSTEM_VENDOR_ID),
        subsystem_id: u16_at(config, regs::SUBSYSTEM_ID),
        class_code: u32_at(config, regs::REVISION_ID) >> 8,
        revision: u8_at(config, regs::REVISION_ID),
    };
    let mut header = default_header();
    header.status_fixed =
        u16_at(config, regs::STATUS) & (regs::STATUS_66MHZ | regs::STATUS_FAST_B2B);
    header.interrupt_pin = u8_at(config, regs::INTERRUPT_PIN).min(4);
    if u8_at(config, regs::HEADER_TYPE) & regs::HEADER_TYPE_MULTIFUNCTION != 0 {
        notes.push(
            "The multi-function bit is cleared: the virtual function is exposed on its own.".into(),
        );
    }

    let capabilities = derive_capabilities(config, &standard, &mut notes);
    let msix = capabilities.iter().find_map(|c| match c.body {
        CapabilityBody::Msix(p) => Some(p),
        _ => None,
    });
    let bars = derive_bars(physical, msix.as_ref());
    let ext_capabilities = derive_ext_capabilities(config, &extended, options, &mut notes);
    let rom = physical.rom_size.map(|size| Rom {
        size,
        backing: RomBacking::Passthrough,
        origin: Origin::default(),
    });
    let layout = Layout {
        name: options.name.clone(),
        description: format!(
            "derived from {:04x}:{:04x}",
            identity.vendor_id, identity.device_id
        ),
        config_size: config.len() as u16,
        unowned: Unowned::Zero,
        identity,
        header,
        bars,
        rom,
        capabilities,
        capabilities_pointer: None,
        ext_capabilities,
        registers: Vec::new(),
    };
    // What derive writes must be what the parser accepts: check by reading it back.
    let text = emit(&layout, &notes);
    let reparsed = super::parse_layout("<derived>", &text)?;
    Ok(Derived {
        layout: reparsed,
        notes,
    })
}

fn derive_bars(physical: &PhysicalDescription, msix: Option<&MsixParams>) -> [Option<Bar>; 6] {
    let mut bars: [Option<Bar>; 6] = Default::default();
    for (index, p) in physical.bars.iter().enumerate() {
        let Some(p) = p else { continue };
        // Memory BARs are mmappable, except the pages holding the MSI-X table and PBA.
        let mut mmap = Vec::new();
        if p.kind != BarKind::Io && p.size >= MMAP_PAGE_SIZE {
            let trapped = msix
                .map(|m| m.trapped_pages(index as u8, MMAP_PAGE_SIZE))
                .unwrap_or_default();
            let mut at = 0;
            for (start, end) in trapped {
                if start > at {
                    mmap.push(MmapArea {
                        offset: at,
                        size: start - at,
                    });
                }
                at = at.max(end);
            }
            if at < p.size {
                mmap.push(MmapArea {
                    offset: at,
                    size: p.size - at,
                });
            }
        }
        bars[index] = Some(Bar {
            index: index as u8,
            kind: p.kind,
            prefetchable: p.prefetchable,
            size: p.size,
            backing: BarBacking::Passthrough {
                physical_bar: index as u8,
            },
            mmap,
            origin: Origin::default(),
        });
    }
    bars
}

/// The room a capability has before the next one (by offset) or the end of its area.
fn room(found: &[FoundCapability], offset: u16, end: u16) -> u16 {
    found
        .iter()
        .map(|f| f.offset)
        .filter(|o| *o > offset)
        .min()
        .unwrap_or(end)
        - offset
}

fn derive_capabilities(
    config: &[u8],
    found: &[FoundCapability],
    notes: &mut Vec<String>,
) -> Vec<Capability> {
    let mut out = Vec::new();
    for f in found {
        let o = f.offset;
        let id = f.id as u8;
        let room = room(found, o, Chain::Standard.area().end);
        let body = match id {
            cap::CAP_PM => {
                let pmc = u16_at(config, o + cap::PM_PMC);
                Some(CapabilityBody::Pm(PmParams {
                    version: (pmc & 7) as u8,
                    d1: pmc & (1 << 9) != 0,
                    d2: pmc & (1 << 10) != 0,
                    pme_support: (pmc >> 11) as u8 & 0x1f,
                    no_soft_reset: u16_at(config, o + cap::PM_PMCSR) & cap::PM_PMCSR_NO_SOFT_RESET
                        != 0,
                }))
            }
            cap::CAP_MSI => {
                let flags = u16_at(config, o + cap::MSI_FLAGS);
                let vectors = 1u8 << ((flags & cap::MSI_FLAGS_QMASK) >> 1).min(5);
                Some(CapabilityBody::Msi(MsiParams {
                    vectors,
                    address_64: flags & cap::MSI_FLAGS_64BIT != 0,
                    per_vector_masking: flags & cap::MSI_FLAGS_MASKBIT != 0,
                }))
            }
            cap::CAP_MSIX => {
                let flags = u16_at(config, o + cap::MSIX_FLAGS);
                let (table, pba) = (
                    u32_at(config, o + cap::MSIX_TABLE),
                    u32_at(config, o + cap::MSIX_PBA),
                );
                Some(CapabilityBody::Msix(MsixParams {
                    table_size: (flags & cap::MSIX_FLAGS_QSIZE) + 1,
                    table_bar: (table & 7) as u8,
                    table_offset: table & !7,
                    pba_bar: (pba & 7) as u8,
                    pba_offset: pba & !7,
                }))
            }
            cap::CAP_PCIE => derive_pcie(config, o),
            cap::CAP_VENDOR => {
                let len = u16::from(u8_at(config, o + 2)).clamp(3, room);
                let data = (3..len).map(|i| u8_at(config, o + i)).collect();
                Some(CapabilityBody::Vendor { data })
            }
            _ => None,
        };
        let body = match body {
            Some(body) if body.length() <= room => body,
            other => {
                if let Some(decoded) = other {
                    notes.push(format!(
                        "{} at {o:#x} is copied as raw bytes: its {} bytes would overlap the next capability.",
                        Chain::Standard.name(id.into()),
                        decoded.length()
                    ));
                } else {
                    notes.push(format!(
                        "{} ({id:#04x}) at {o:#x} is copied as {room} raw read-only bytes (up to the next capability).",
                        Chain::Standard.name(id.into())
                    ));
                }
                CapabilityBody::Raw {
                    id,
                    data: (2..room).map(|i| u8_at(config, o + i)).collect(),
                }
            }
        };
        out.push(Capability {
            offset: o,
            body,
            origin: Origin::default(),
        });
    }
    out
}

fn derive_pcie(config: &[u8], o: u16) -> Option<CapabilityBody> {
    let flags = u16_at(config, o + cap::PCIE_FLAGS);
    let device_type = match (flags >> 4) & 0xf {
        0 => PcieDeviceType::Endpoint,
        1 => PcieDeviceType::LegacyEndpoint,
        9 => PcieDeviceType::RcIntegratedEndpoint,
        _ => return None,
    };
    let devcap = u32_at(config, o + cap::PCIE_DEVCAP);
    let lnkcap = u32_at(config, o + cap::PCIE_LNKCAP);
    let width = ((lnkcap >> 4) & 0x3f) as u8;
    Some(CapabilityBody::Pcie(PcieParams {
        device_type,
        max_payload: 128 << (devcap & 7).min(5),
        flr: devcap & cap::PCIE_DEVCAP_FLR != 0,
        extended_tags: devcap & (1 << 5) != 0,
        link_speed: (lnkcap & 0xf).clamp(1, 6) as u8,
        link_width: if [1, 2, 4, 8, 12, 16, 32].contains(&width) {
            width
        } else {
            1
        },
    }))
}

fn derive_ext_capabilities(
    config: &[u8],
    found: &[FoundCapability],
    options: &DeriveOptions,
    notes: &mut Vec<String>,
) -> Vec<ExtCapability> {
    let mut out = Vec::new();
    for f in found {
        let o = f.offset;
        if let Some(q) = DEFAULT_QUIRKS
            .iter()
            .find(|q| q.id == f.id && !options.keep.iter().any(|k| k == q.name))
        {
            notes.push(format!(
                "Hidden: {} at {o:#x}: {} (keep it with --keep {}).",
                Chain::Extended.name(f.id),
                q.reason,
                q.name
            ));
            continue;
        }
        let room = room(found, o, Chain::Extended.area().end);
        let physical_of = |id: u16, length: u16| ExtCapabilityBody::Physical {
            id,
            physical_offset: o,
            length,
        };
        // The declarative length of what the table knows, when it fits before the next one.
        let fits = Chain::Extended
            .info(f.id)
            .and_then(|info| info.length)
            .is_some_and(|length| room >= length.min());
        let base = Chain::Extended.base_length(f.id);
        let body = match f.id {
            cap::EXT_CAP_AER if fits => {
                notes.push(format!("AER at {o:#x} is backed by the physical function (its status is the hardware's)."));
                physical_of(f.id, base)
            }
            cap::EXT_CAP_DSN if fits => {
                notes.push(format!(
                    "The device serial number at {o:#x} is read from the physical function."
                ));
                physical_of(f.id, base)
            }
            cap::EXT_CAP_ACS if fits => ExtCapabilityBody::Acs {
                capabilities: u16_at(config, o + 4) & 0x7f,
            },
            cap::EXT_CAP_ATS if fits => {
                let c = u16_at(config, o + 4);
                ExtCapabilityBody::Ats {
                    invalidate_queue_depth: (c & 0x1f) as u8,
                    page_aligned: c & (1 << 5) != 0,
                }
            }
            cap::EXT_CAP_PRI if fits => ExtCapabilityBody::Pri {
                outstanding_capacity: u32_at(config, o + 8),
            },
            cap::EXT_CAP_PASID if fits => {
                let c = u16_at(config, o + 4);
                ExtCapabilityBody::Pasid {
                    max_width: ((c >> 8) & 0x1f).clamp(1, 20) as u8,
                    execute: c & (1 << 1) != 0,
                    privileged: c & (1 << 2) != 0,
                }
            }
            id => {
                // Unknown length: up to the next capability, or 64 bytes for the last one.
                let length = if found.iter().any(|g| g.offset > o) {
                    room
                } else {
                    room.min(0x40)
                };
                notes.push(format!(
                    "{} ({id:#06x}) at {o:#x} is copied as {length} raw read-only bytes.",
                    Chain::Extended.name(id)
                ));
                ExtCapabilityBody::Raw {
                    id,
                    data: (4..length).map(|i| u8_at(config, o + i)).collect(),
                }
            }
        };
        out.push(ExtCapability {
            offset: o,
            version: f.version,
            body,
            origin: Origin::default(),
        });
    }
    // The extended chain must start at 0x100; when that capability was hidden, keep a null
    // header there linking to the rest (Linux does the same).
    if let Some(first) = out.first()
        && first.offset != regs::EXTENDED_CAPS_START
    {
        notes
            .push("A null extended capability header at 0x100 links to the remaining ones.".into());
        out.insert(
            0,
            ExtCapability {
                offset: regs::EXTENDED_CAPS_START,
                version: 0,
                body: ExtCapabilityBody::Raw {
                    id: 0,
                    data: Vec::new(),
                },
                origin: Origin::default(),
            },
        );
    }
    out
}
