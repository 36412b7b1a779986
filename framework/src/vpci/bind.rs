//! Checks a layout against the physical function it will run on: everything it passes through
//! must exist there.

use crate::layout::LayoutError;
use crate::layout::*;
use crate::pci::{cap, walk};
use crate::physical::PhysicalDescription;

/// Refuses a layout that passes through a BAR, ROM, capability or register the physical
/// function does not have.
pub fn bind(layout: &Layout, physical: &PhysicalDescription) -> Result<(), LayoutError> {
    for bar in layout.bars.iter().flatten() {
        let BarBacking::Passthrough { physical_bar } = bar.backing else {
            continue;
        };
        let Some(p) = physical
            .bars
            .get(usize::from(physical_bar))
            .copied()
            .flatten()
        else {
            return Err(bar.origin.error(
                "physical_bar",
                format!("the physical function has no BAR {physical_bar}"),
            ));
        };
        if (p.kind == BarKind::Io) != (bar.kind == BarKind::Io) {
            return Err(bar.origin.error(
                "kind",
                format!(
                    "physical BAR {physical_bar} is {}; this BAR is not",
                    if p.kind == BarKind::Io {
                        "I/O"
                    } else {
                        "memory"
                    }
                ),
            ));
        }
        if p.size < bar.size {
            return Err(bar.origin.error(
                "size",
                format!(
                    "physical BAR {physical_bar} is {:#x} bytes, smaller than {:#x}",
                    p.size, bar.size
                ),
            ));
        }
    }
    if let Some(rom) = &layout.rom
        && rom.backing == RomBacking::Passthrough
    {
        match physical.rom_size {
            None => {
                return Err(rom
                    .origin
                    .error("backing", "the physical function has no expansion ROM"));
            }
            Some(size) if size < rom.size => {
                return Err(rom.origin.error(
                    "size",
                    format!(
                        "the physical ROM is {size:#x} bytes, smaller than {:#x}",
                        rom.size
                    ),
                ));
            }
            Some(_) => {}
        }
    }
    let config_size = physical.config.len();
    let standard = walk::standard_capabilities(&physical.config).unwrap_or_default();
    for c in &layout.capabilities {
        let CapabilityBody::Physical {
            id,
            physical_offset,
            length,
        } = &c.body
        else {
            continue;
        };
        let found = standard.iter().find(|f| f.offset == *physical_offset);
        match found {
            Some(f) if f.id == u16::from(*id) => {}
            Some(f) => {
                return Err(c.origin.error(
                    "physical_offset",
                    format!(
                        "the physical capability at {physical_offset:#x} is {} ({:#04x}), not {}",
                        cap::cap_name(f.id as u8),
                        f.id,
                        cap::cap_name(*id)
                    ),
                ));
            }
            None => {
                let list: Vec<String> = standard
                    .iter()
                    .map(|f| format!("{}@{:#x}", cap::cap_name(f.id as u8), f.offset))
                    .collect();
                return Err(c.origin.error(
                    "physical_offset",
                    format!(
                        "the physical function has no {} capability at {physical_offset:#x} (it has: {})",
                        cap::cap_name(*id),
                        if list.is_empty() { "none".to_string() } else { list.join(", ") }
                    ),
                ));
            }
        }
        let physical_length = physical_cap_length(&physical.config, *id, *physical_offset);
        if let Some(real) = physical_length
            && real != *length
        {
            return Err(c.origin.error(
                "length",
                format!("the physical capability is {real} bytes long, not {length}"),
            ));
        }
        if usize::from(*physical_offset) + usize::from(*length) > config_size.min(0x100) {
            return Err(c
                .origin
                .error("length", "runs past the physical capability area"));
        }
    }
    let extended = walk::extended_capabilities(&physical.config).unwrap_or_default();
    for c in &layout.ext_capabilities {
        let ExtCapabilityBody::Physical {
            id,
            physical_offset,
            length,
        } = &c.body
        else {
            continue;
        };
        if !extended
            .iter()
            .any(|f| f.offset == *physical_offset && f.id == *id)
        {
            let list: Vec<String> = extended
                .iter()
                .map(|f| format!("{}@{:#x}", cap::ext_cap_name(f.id), f.offset))
                .collect();
            return Err(c.origin.error(
                "physical_offset",
                format!(
                    "the physical function has no {} extended capability at {physical_offset:#x} (it has: {})",
                    cap::ext_cap_name(*id),
                    if list.is_empty() { "none".to_string() } else { list.join(", ") }
                ),
            ));
        }
        if usize::from(*physical_offset) + usize::from(*length) > config_size {
            return Err(c
                .origin
                .error("length", "runs past the physical config space"));
        }
    }
    for r in &layout.registers {
        if let RegisterSource::Physical { offset } = r.source
            && r.virtual_mask != all_ones(r.size)
            && usize::from(offset) + usize::from(r.size) > config_size
        {
            return Err(r.origin.error(
                "physical_offset",
                format!(
                    "{offset:#x} is outside the physical function's {config_size}-byte config space"
                ),
            ));
        }
    }
    if usize::from(layout.config_size) > config_size && layout.unowned == Unowned::Passthrough {
        return Err(LayoutError::new(
            layout
                .capabilities
                .first()
                .map(|c| c.origin.location.clone())
                .unwrap_or_default(),
            "vpci.unowned",
            format!(
                "passes through {} bytes, but the physical config space is {config_size}",
                layout.config_size
            ),
        ));
    }
    Ok(())
}

/// The length of a physical capability whose size the hardware states (MSI, vendor-specific).
fn physical_cap_length(config: &[u8], id: u8, offset: u16) -> Option<u16> {
    let at = usize::from(offset);
    match id {
        cap::CAP_MSI => {
            let flags = u16::from_le_bytes([*config.get(at + 2)?, *config.get(at + 3)?]);
            Some(cap::msi_size(
                flags & cap::MSI_FLAGS_64BIT != 0,
                flags & cap::MSI_FLAGS_MASKBIT != 0,
            ))
        }
        cap::CAP_VENDOR => config.get(at + 2).map(|l| u16::from(*l)),
        _ => None,
    }
}
