//! Checks a layout against the physical function it will run on: everything it passes through
//! must exist there. One function per pass: BARs, the ROM, the capabilities of both chains,
//! register overrides, unowned bytes.

use crate::layout::*;
use crate::pci::walk;
use crate::physical::PhysicalDescription;

/// Refuses a layout that passes through a BAR, ROM, capability or register the physical
/// function does not have.
pub fn bind(layout: &Layout, physical: &PhysicalDescription) -> Result<(), LayoutError> {
    bind_bars(layout, physical)?;
    bind_rom(layout, physical)?;
    bind_capabilities(&layout.capabilities, physical)?;
    bind_capabilities(&layout.ext_capabilities, physical)?;
    bind_registers(layout, physical)?;
    bind_unowned(layout, physical)
}

/// Each passthrough BAR names a physical BAR of the same space, at least as large.
fn bind_bars(layout: &Layout, physical: &PhysicalDescription) -> Result<(), LayoutError> {
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
    Ok(())
}

/// A passthrough ROM needs a physical ROM at least as large.
fn bind_rom(layout: &Layout, physical: &PhysicalDescription) -> Result<(), LayoutError> {
    let Some(rom) = layout
        .rom
        .as_ref()
        .filter(|r| r.backing == RomBacking::Passthrough)
    else {
        return Ok(());
    };
    match physical.rom_size {
        None => Err(rom
            .origin
            .error("backing", "the physical function has no expansion ROM")),
        Some(size) if size < rom.size => Err(rom.origin.error(
            "size",
            format!(
                "the physical ROM is {size:#x} bytes, smaller than {:#x}",
                rom.size
            ),
        )),
        Some(_) => Ok(()),
    }
}

/// Each capability backed by the physical function (of either chain) names a physical
/// capability of the same ID, as long as the hardware states it, inside the chain's area.
fn bind_capabilities<C: ChainItem>(
    caps: &[C],
    physical: &PhysicalDescription,
) -> Result<(), LayoutError> {
    let chain = C::CHAIN;
    let config = &physical.config;
    // A chain the walker refuses has no capability to pass through.
    let found = walk::capabilities(config, chain).unwrap_or_default();
    let end = usize::from(chain.area().end).min(config.len());
    for c in caps {
        let Some(backing) = c.physical() else {
            continue;
        };
        let at = backing.offset;
        match found.iter().find(|f| f.offset == at) {
            Some(f) if f.id == c.id() => {}
            Some(f) => {
                return Err(c.origin().error(
                    "physical_offset",
                    format!(
                        "the physical {} at {at:#x} is {} ({:#04x}), not {}",
                        chain.noun(),
                        chain.name(f.id),
                        f.id,
                        c.name()
                    ),
                ));
            }
            None => {
                let list: Vec<String> = found
                    .iter()
                    .map(|f| format!("{}@{:#x}", chain.name(f.id), f.offset))
                    .collect();
                return Err(c.origin().error(
                    "physical_offset",
                    format!(
                        "the physical function has no {} {} at {at:#x} (it has: {})",
                        c.name(),
                        chain.noun(),
                        if list.is_empty() {
                            "none".to_string()
                        } else {
                            list.join(", ")
                        }
                    ),
                ));
            }
        }
        let stated = chain
            .info(c.id())
            .and_then(|info| info.stated_length)
            .and_then(|stated| stated(config, at));
        if let Some(real) = stated
            && real != backing.length
        {
            return Err(c.origin().error(
                "length",
                format!(
                    "the physical capability is {real} bytes long, not {}",
                    backing.length
                ),
            ));
        }
        if usize::from(at) + usize::from(backing.length) > end {
            return Err(c.origin().error(
                "length",
                format!("runs past the physical function's {} area", chain.noun()),
            ));
        }
    }
    Ok(())
}

/// A register override's physical bits lie inside the physical config space.
fn bind_registers(layout: &Layout, physical: &PhysicalDescription) -> Result<(), LayoutError> {
    let config_size = physical.config.len();
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
    Ok(())
}

/// Unowned bytes passed through need a physical config space as large as the layout's.
fn bind_unowned(layout: &Layout, physical: &PhysicalDescription) -> Result<(), LayoutError> {
    let config_size = physical.config.len();
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
