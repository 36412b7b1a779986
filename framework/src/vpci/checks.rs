//! Cross-item rules of a layout: BAR slots and sizes, sparse mmap areas, the capability
//! chains, overlaps, duplicates, MSI-X placement, register overrides.

use std::ops::Range;

use super::fields::{Fields, Located};
use crate::layout::*;
use crate::layout::{LayoutError, Location};
use crate::pci::cap::{self, Chain};
use crate::pci::regs;

/// Where the parser found the offsets and `next` pointers of capabilities (in file order).
#[derive(Default)]
pub(crate) struct Declared {
    pub capabilities_pointer: Option<(u16, Location, String)>,
    caps: Vec<ChainEntry>,
    ext_caps: Vec<ChainEntry>,
}

struct ChainEntry {
    offset: (Location, String),
    next: Option<(u16, Location, String)>,
}

impl Declared {
    pub fn push_capability(
        &mut self,
        t: &Fields<'_, '_>,
        offset: &Located<u64>,
        next: Option<Located<u64>>,
    ) {
        let source = t.source();
        self.caps.push(ChainEntry {
            offset: (source.location(&offset.span), offset.field.clone()),
            next: next.map(|n| (n.value as u16, source.location(&n.span), n.field)),
        });
    }

    pub fn push_ext_capability(&mut self, t: &Fields<'_, '_>, offset: &Located<u64>) {
        self.ext_caps.push(ChainEntry {
            offset: (t.source().location(&offset.span), offset.field.clone()),
            next: None,
        });
    }
}

fn at_offset(entry: &ChainEntry, message: impl Into<String>) -> LayoutError {
    LayoutError::new(entry.offset.0.clone(), entry.offset.1.clone(), message)
}

/// Size rules of one BAR.
pub(crate) fn check_bar_size(
    t: &Fields<'_, '_>,
    kind: BarKind,
    size: &Located<u64>,
) -> Result<(), LayoutError> {
    let error = |message: String| Err(t.source().error(&size.span, &size.field, message));
    let size = size.value;
    if !size.is_power_of_two() {
        return error(format!("BAR size {size:#x} is not a power of two"));
    }
    match kind {
        BarKind::Io if size < 4 => error(format!("an I/O BAR is at least 4 bytes, not {size}")),
        BarKind::Io if size > 256 => {
            error(format!("an I/O BAR is at most 256 bytes, not {size:#x}"))
        }
        BarKind::Memory32 | BarKind::Memory64 if size < 16 => {
            error(format!("a memory BAR is at least 16 bytes, not {size}"))
        }
        BarKind::Memory32 if size > 1 << 31 => {
            error(format!("a 32-bit BAR is at most 2 GiB, not {size:#x}"))
        }
        BarKind::Memory64 if size > 1 << 62 => error(format!("BAR size {size:#x} is too large")),
        _ => Ok(()),
    }
}

/// One `[[bar.mmap]]` area: page aligned, inside its BAR, not overlapping the others.
pub(crate) fn parse_mmap_area(
    t: &Fields<'_, '_>,
    kind: BarKind,
    bar_size: u64,
    existing: &[MmapArea],
) -> Result<MmapArea, LayoutError> {
    if kind == BarKind::Io {
        return Err(t.error("offset", "an I/O BAR cannot be mmapped"));
    }
    let offset = t.size("offset")?.map_or(0, |o| o.value);
    let size = t
        .size("size")?
        .ok_or_else(|| t.error("size", "missing required field"))?
        .value;
    if offset % MMAP_PAGE_SIZE != 0 {
        return Err(t.error(
            "offset",
            format!("mmap areas are page aligned; {offset:#x} is not"),
        ));
    }
    if size == 0 || size % MMAP_PAGE_SIZE != 0 {
        return Err(t.error(
            "size",
            format!("mmap areas are whole pages; {size:#x} is not"),
        ));
    }
    if offset.checked_add(size).is_none_or(|end| end > bar_size) {
        return Err(t.error(
            "size",
            format!("area {offset:#x}+{size:#x} extends past the {bar_size:#x}-byte BAR"),
        ));
    }
    if existing
        .iter()
        .any(|a| overlaps(a.offset..a.offset + a.size, offset..offset + size))
    {
        return Err(t.error("offset", "overlaps another mmap area of this BAR"));
    }
    t.finish()?;
    Ok(MmapArea { offset, size })
}

/// A 64-bit BAR takes the next slot for its upper half.
pub(crate) fn check_bar_slots(bars: &[Option<Bar>; 6]) -> Result<(), LayoutError> {
    for (i, bar) in bars.iter().enumerate() {
        let Some(bar) = bar else { continue };
        if bar.kind == BarKind::Memory64
            && let Some(upper) = bars.get(i + 1).and_then(Option::as_ref)
        {
            return Err(upper.origin.error(
                "index",
                format!("slot {} is the upper half of 64-bit BAR {i}", i + 1),
            ));
        }
    }
    let legacy = bars
        .iter()
        .flatten()
        .filter(|b| b.backing == BarBacking::LegacyIo)
        .count();
    if legacy > 1 {
        let second = bars
            .iter()
            .flatten()
            .filter(|b| b.backing == BarBacking::LegacyIo)
            .nth(1);
        if let Some(second) = second {
            return Err(second
                .origin
                .error("backing", "only one BAR can be the legacy I/O BAR"));
        }
    }
    Ok(())
}

fn overlaps(a: Range<u64>, b: Range<u64>) -> bool {
    a.start < b.end && b.start < a.end
}

/// Resolves the standard chain: `next` pointers when given, else the file order.
pub(crate) fn order_chain(
    caps: Vec<Capability>,
    declared: &Declared,
) -> Result<Vec<Capability>, LayoutError> {
    check_placement(&caps, &declared.caps)?;
    check_next_pointers(declared)?;
    let head = match &declared.capabilities_pointer {
        Some((pointer, _, _)) => *pointer,
        None => caps.first().map_or(0, |c| c.offset),
    };
    let next_of = |i: usize| -> u16 {
        match &declared.caps[i].next {
            Some((next, _, _)) => *next,
            None => caps.get(i + 1).map_or(0, |c| c.offset),
        }
    };
    let pointer_error = |message: String| match &declared.capabilities_pointer {
        Some((_, location, field)) => LayoutError::new(location.clone(), field.clone(), message),
        None => LayoutError::new(Location::default(), "header.capabilities_pointer", message),
    };
    let mut order: Vec<usize> = Vec::with_capacity(caps.len());
    let mut current = head;
    let mut from: Option<usize> = None;
    while current != 0 {
        let Some(i) = caps.iter().position(|c| c.offset == current) else {
            let message = format!("broken chain: no capability is declared at {current:#x}");
            return Err(match from {
                Some(j) => chain_error(declared, j, message),
                None => pointer_error(message),
            });
        };
        if order.contains(&i) {
            let message = format!("cyclic chain: points back to the capability at {current:#x}");
            return Err(match from {
                Some(j) => chain_error(declared, j, message),
                None => pointer_error(message),
            });
        }
        order.push(i);
        from = Some(i);
        current = next_of(i);
    }
    if let Some(i) = (0..caps.len()).find(|i| !order.contains(i)) {
        return Err(at_offset(
            &declared.caps[i],
            format!(
                "the capability at {:#x} is not reachable from the chain",
                caps[i].offset
            ),
        ));
    }
    let mut slots: Vec<Option<Capability>> = caps.into_iter().map(Some).collect();
    Ok(order.into_iter().filter_map(|i| slots[i].take()).collect())
}

fn chain_error(declared: &Declared, from: usize, message: String) -> LayoutError {
    let entry = &declared.caps[from];
    match &entry.next {
        Some((_, location, field)) => LayoutError::new(location.clone(), field.clone(), message),
        None => at_offset(entry, message),
    }
}

/// Placement rules of one chain (standard or extended): dword aligned inside the chain's
/// area, not running past it, no overlaps, no duplicates of a capability that cannot repeat.
fn check_placement<C: ChainItem>(caps: &[C], entries: &[ChainEntry]) -> Result<(), LayoutError> {
    let chain = C::CHAIN;
    let area = chain.area();
    let last = area.end - 1;
    let (noun, list) = match chain {
        Chain::Standard => (chain.noun(), "capability"),
        Chain::Extended => (chain.noun(), "ext_capability"),
    };
    let span = |c: &C| u64::from(c.offset())..u64::from(c.offset()) + u64::from(c.length());
    for (i, c) in caps.iter().enumerate() {
        let entry = &entries[i];
        if !area.contains(&c.offset()) || c.offset() % 4 != 0 {
            return Err(at_offset(
                entry,
                format!(
                    "{noun} offset {:#x} must be dword aligned and in {:#x}..{last:#x}",
                    c.offset(),
                    area.start
                ),
            ));
        }
        if span(c).end > u64::from(area.end) {
            return Err(at_offset(
                entry,
                format!(
                    "{noun} at {:#x} ({} bytes) runs past {last:#x}",
                    c.offset(),
                    c.length()
                ),
            ));
        }
        for (j, other) in caps.iter().enumerate().take(i) {
            if overlaps(span(c), span(other)) {
                return Err(at_offset(
                    entry,
                    format!(
                        "{noun} at {:#x} overlaps {} ({list}[{j}]) at {:#x}",
                        c.offset(),
                        other.name(),
                        other.offset()
                    ),
                ));
            }
            let repeatable = chain.info(c.id()).is_some_and(|info| info.repeatable);
            if c.id() == other.id() && !repeatable {
                return Err(at_offset(
                    entry,
                    format!(
                        "duplicate {} {noun} (also at {:#x})",
                        c.name(),
                        other.offset()
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// The standard chain's `next` pointers: 0, or a dword-aligned offset in 0x40..0xff.
fn check_next_pointers(declared: &Declared) -> Result<(), LayoutError> {
    for entry in &declared.caps {
        if let Some((next, location, field)) = &entry.next
            && *next != 0
            && (*next < regs::HEADER_END || next % 4 != 0)
        {
            return Err(LayoutError::new(
                location.clone(),
                field.clone(),
                format!("next pointer {next:#x} must be 0 or a dword-aligned offset in 0x40..0xff"),
            ));
        }
    }
    Ok(())
}

/// Extended chain: file order, first at 0x100, no overlaps or duplicates.
pub(crate) fn order_ext_chain(
    caps: Vec<ExtCapability>,
    declared: &Declared,
) -> Result<Vec<ExtCapability>, LayoutError> {
    check_placement(&caps, &declared.ext_caps)?;
    if let Some(first) = caps.first()
        && first.offset != regs::EXTENDED_CAPS_START
    {
        return Err(at_offset(
            &declared.ext_caps[0],
            "broken chain: the first extended capability must be at 0x100",
        ));
    }
    Ok(caps)
}

/// Rules that need the whole layout.
pub(crate) fn check_layout(layout: &Layout) -> Result<(), LayoutError> {
    if let Some(first) = layout.ext_capabilities.first() {
        if layout.config_size < 4096 {
            return Err(first
                .origin
                .error("offset", "extended capabilities need config_size = 4096"));
        }
        if !layout
            .capabilities
            .iter()
            .any(|c| c.body.id() == cap::CAP_PCIE)
        {
            return Err(first.origin.error(
                "kind",
                "extended capabilities need a PCI Express capability (guests read extended config space only on PCIe functions)",
            ));
        }
    }
    for c in &layout.capabilities {
        if let CapabilityBody::Msix(msix) = &c.body {
            check_msix(layout, c, msix)?;
        }
    }
    check_registers(layout)
}

fn check_msix(layout: &Layout, c: &Capability, msix: &MsixParams) -> Result<(), LayoutError> {
    let table_len = u64::from(msix.table_size) * cap::MSIX_ENTRY_SIZE;
    let pba_len = u64::from(msix.table_size).div_ceil(64) * 8;
    let place = |bar: u8,
                 offset: u32,
                 len: u64,
                 what: &str,
                 field: &str|
     -> Result<Range<u64>, LayoutError> {
        let Some(b) = layout.bar(bar) else {
            return Err(c.origin.error(
                field,
                format!("the MSI-X {what} is in BAR {bar}, which is not declared"),
            ));
        };
        if b.kind == BarKind::Io {
            return Err(c.origin.error(
                field,
                format!("the MSI-X {what} cannot live in I/O BAR {bar}"),
            ));
        }
        let range = u64::from(offset)..u64::from(offset) + len;
        if range.end > b.size {
            return Err(c.origin.error(
                field,
                format!(
                    "the MSI-X {what} ({:#x}..{:#x}) is outside BAR {bar} ({:#x} bytes)",
                    range.start, range.end, b.size
                ),
            ));
        }
        if b.mmap
            .iter()
            .any(|a| overlaps(a.offset..a.offset + a.size, range.clone()))
        {
            return Err(c.origin.error(
                field,
                format!(
                    "the MSI-X {what} overlaps an mmap area of BAR {bar}; it must stay trapped"
                ),
            ));
        }
        Ok(range)
    };
    let table = place(
        msix.table_bar,
        msix.table_offset,
        table_len,
        "table",
        "table_offset",
    )?;
    let pba = place(msix.pba_bar, msix.pba_offset, pba_len, "PBA", "pba_offset")?;
    if msix.table_bar == msix.pba_bar && overlaps(table, pba) {
        return Err(c
            .origin
            .error("pba_offset", "the MSI-X PBA overlaps the table"));
    }
    Ok(())
}

fn check_registers(layout: &Layout) -> Result<(), LayoutError> {
    let mut reserved: Vec<(Range<u64>, String)> = vec![
        (
            u64::from(regs::BAR0)..u64::from(regs::CARDBUS_CIS),
            "the BAR registers (declare [[bar]] instead)".into(),
        ),
        (
            u64::from(regs::ROM_ADDRESS)..u64::from(regs::ROM_ADDRESS) + 4,
            "the ROM register (declare [rom] instead)".into(),
        ),
        (
            u64::from(regs::CAPABILITIES_POINTER)..u64::from(regs::CAPABILITIES_POINTER) + 1,
            "the capabilities pointer".into(),
        ),
    ];
    for c in &layout.capabilities {
        let o = u64::from(c.offset);
        reserved.push((
            o..o + 2,
            format!("the header of the capability at {:#x}", c.offset),
        ));
    }
    for c in &layout.ext_capabilities {
        let o = u64::from(c.offset);
        reserved.push((
            o..o + 4,
            format!("the header of the extended capability at {:#x}", c.offset),
        ));
    }
    for (i, r) in layout.registers.iter().enumerate() {
        let range = u64::from(r.offset)..u64::from(r.offset) + u64::from(r.size);
        if let Some((_, what)) = reserved
            .iter()
            .find(|(res, _)| overlaps(res.clone(), range.clone()))
        {
            return Err(r.origin.error(
                "offset",
                format!("register at {:#x} overlaps {what}", r.offset),
            ));
        }
        if let Some(other) = layout.registers[..i].iter().find(|o| {
            overlaps(
                u64::from(o.offset)..u64::from(o.offset) + u64::from(o.size),
                range.clone(),
            )
        }) {
            return Err(r.origin.error(
                "offset",
                format!(
                    "register at {:#x} overlaps the override at {:#x}",
                    r.offset, other.offset
                ),
            ));
        }
    }
    Ok(())
}
