//! Whether a function exposed with one layout can be resumed with another: every
//! guest-visible difference, and a stable fingerprint of the guest-visible layout to carry in
//! migration streams.
//!
//! Guest-visible: config-space values of virtual bits, which bits are virtual, writable and
//! RW1C, whether a bit comes from hardware, a backend or the layout, BAR kinds, sizes and mmap
//! areas, the ROM size. Not guest-visible (and so free to differ between hosts): names,
//! descriptions, BAR backings and the offsets of physical capabilities.

use std::collections::BTreeSet;
use std::fmt::Write;

use sha2::{Digest, Sha256};

use crate::config::ConfigTemplate;
use crate::config::template::ByteSource;
use crate::layout::{Bar, BarBacking, BarKind, ChainItem};
use crate::pci::cap::{self, Chain};

/// One guest-visible difference between two layouts.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Difference {
    /// Where: a header field, a BAR, a capability, a config-space range.
    pub place: String,
    /// What differs, with the value on each side.
    pub detail: String,
    /// The same in an operator's words: the field, the values decoded (sizes in units, IDs
    /// in hex, offsets when moved).
    pub explanation: String,
}

impl Difference {
    fn new(place: impl Into<String>, detail: impl Into<String>, explanation: String) -> Self {
        Self {
            place: place.into(),
            detail: detail.into(),
            explanation,
        }
    }
}

/// A size in the largest unit that divides it: `4 KiB`, `32 bytes`, `1 GiB`.
pub fn human_size(size: u64) -> String {
    const UNITS: [(u32, &str); 4] = [(40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")];
    for (shift, unit) in UNITS {
        if size >= 1 << shift && size.is_multiple_of(1 << shift) {
            return format!("{} {unit}", size >> shift);
        }
    }
    format!("{size} bytes")
}

fn bar_kind(bar: &Bar) -> String {
    let kind = match bar.kind {
        BarKind::Io => "I/O",
        BarKind::Memory32 => "32-bit memory",
        BarKind::Memory64 => "64-bit memory",
    };
    format!(
        "{kind}{}",
        if bar.prefetchable {
            " prefetchable"
        } else {
            ""
        }
    )
}

/// What differs between two BARs of one index, field by field.
fn explain_bar(index: u8, x: Option<&Bar>, y: Option<&Bar>) -> String {
    let whole = |b: Option<&Bar>| {
        b.map_or("absent".to_string(), |b| {
            format!("{} {}", bar_kind(b), human_size(b.size))
        })
    };
    let (Some(x), Some(y)) = (x, y) else {
        return format!("BAR {index} {} vs {}", whole(x), whole(y));
    };
    let mut parts = Vec::new();
    if bar_kind(x) != bar_kind(y) {
        parts.push(format!(
            "BAR {index} kind {} vs {}",
            bar_kind(x),
            bar_kind(y)
        ));
    }
    if x.size != y.size {
        parts.push(format!(
            "BAR {index} size {} vs {}",
            human_size(x.size),
            human_size(y.size)
        ));
    }
    if x.mmap != y.mmap {
        let areas = |b: &Bar| {
            let list: Vec<String> = b
                .mmap
                .iter()
                .map(|a| format!("{} at {:#x}", human_size(a.size), a.offset))
                .collect();
            if list.is_empty() {
                "none".to_string()
            } else {
                list.join(", ")
            }
        };
        parts.push(format!(
            "BAR {index} mmappable areas {} vs {}",
            areas(x),
            areas(y)
        ));
    }
    parts.join("; ")
}

/// The little-endian value of `bytes` (at most 8).
fn le(bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .rev()
        .fold(0, |value, byte| (value << 8) | u64::from(*byte))
}

/// A config-space field whose bytes differ, decoded: `range` of both templates, owned by
/// `owner` (`header.device_id`, `capability MSI-X @0x9c`).
fn explain_field(
    owner: &str,
    range: std::ops::Range<usize>,
    a: &ConfigTemplate,
    b: &ConfigTemplate,
) -> Option<String> {
    let value = |t: &ConfigTemplate, r: std::ops::Range<usize>| {
        le(&r.map(|j| t.reset[j] & t.virt[j]).collect::<Vec<u8>>())
    };
    let differs = |r: std::ops::Range<usize>| value(a, r.clone()) != value(b, r);
    if let Some(field) = owner.strip_prefix("header.") {
        let (x, y) = (value(a, range.clone()), value(b, range.clone()));
        let named =
            |name: &str, width: usize| format!("{name} {x:#0w$x} vs {y:#0w$x}", w = width + 2);
        return Some(match field {
            "vendor_id" => named("vendor ID", 4),
            "device_id" => named("device ID", 4),
            "subsystem_vendor_id" => named("subsystem vendor ID", 4),
            "subsystem_id" => named("subsystem ID", 4),
            "class_code" => named("class code", 6),
            "revision" | "revision_id" => named("revision", 2),
            "interrupt_pin" => {
                let pin = |p: u64| match p {
                    0 => "none".to_string(),
                    1..=4 => format!("INT{}", (b'A' + p as u8 - 1) as char),
                    _ => format!("{p}"),
                };
                format!("INTx pin {} vs {}", pin(x), pin(y))
            }
            _ if x != y => named(field, 2 * range.len()),
            _ => return None,
        });
    }
    let rest = owner.strip_prefix("capability ")?;
    let name = rest.split(" @").next().unwrap_or(rest);
    let start = range.start;
    let id = a.reset[start];
    let at = |offset: usize, len: usize| start + offset..(start + offset + len).min(range.end);
    let mut parts = Vec::new();
    match id {
        cap::CAP_MSIX => {
            if differs(at(2, 2)) {
                let size = |t| (value(t, at(2, 2)) & 0x7ff) + 1;
                parts.push(format!("MSI-X table size {} vs {}", size(a), size(b)));
            }
            for (label, offset) in [("table", 4), ("PBA", 8)] {
                if differs(at(offset, 4)) {
                    let place = |t| {
                        let v = value(t, at(offset, 4));
                        format!("BAR {} offset {:#x}", v & 7, v & !7)
                    };
                    parts.push(format!("MSI-X {label} at {} vs {}", place(a), place(b)));
                }
            }
        }
        cap::CAP_MSI if differs(at(2, 2)) => {
            let control = |t| value(t, at(2, 2));
            let vectors = |t| 1u64 << ((control(t) >> 1) & 7).min(5);
            if vectors(a) != vectors(b) {
                parts.push(format!("MSI vectors {} vs {}", vectors(a), vectors(b)));
            }
            let yes = |t, bit| if control(t) & bit != 0 { "yes" } else { "no" };
            for (label, bit) in [("64-bit addresses", 1 << 7), ("per-vector masking", 1 << 8)] {
                if yes(a, bit) != yes(b, bit) {
                    parts.push(format!("MSI {label} {} vs {}", yes(a, bit), yes(b, bit)));
                }
            }
        }
        _ => {}
    }
    if parts.is_empty() {
        // A register of the capability, by its offset in it.
        let first = range
            .clone()
            .find(|&j| (a.reset[j] & a.virt[j]) != (b.reset[j] & b.virt[j]))?;
        let register = first & !3;
        let r = register.max(start)..(register + 4).min(range.end);
        parts.push(format!(
            "{name} register at +{:#x}: {:#x} vs {:#x}",
            r.start - start,
            value(a, r.clone()),
            value(b, r)
        ));
    }
    Some(parts.join("; "))
}

/// The stable hash of a compiled layout's guest-visible content: `sha256:` and 64 hex digits.
pub fn fingerprint(template: &ConfigTemplate) -> String {
    let mut h = Sha256::new();
    h.update(b"vfio-variant vpci fingerprint v1\0");
    h.update((template.size() as u32).to_le_bytes());
    for i in 0..template.size() {
        let virt = template.virt[i];
        h.update([
            template.reset[i] & virt,
            virt,
            template.write[i],
            template.rw1c[i],
            source_tag(template.source[i]),
        ]);
    }
    let layout = template.layout();
    for index in 0..6u8 {
        match layout.bar(index) {
            None => h.update([0u8]),
            Some(bar) => {
                h.update([1u8, kind_tag(bar.kind), u8::from(bar.prefetchable)]);
                h.update(bar.size.to_le_bytes());
                h.update((bar.mmap.len() as u32).to_le_bytes());
                for area in &bar.mmap {
                    h.update(area.offset.to_le_bytes());
                    h.update(area.size.to_le_bytes());
                }
            }
        }
    }
    h.update(layout.rom.as_ref().map_or(0, |r| r.size).to_le_bytes());
    let digest = h.finalize();
    let mut text = String::from("sha256:");
    for byte in digest {
        let _ = write!(text, "{byte:02x}");
    }
    text
}

fn source_tag(source: ByteSource) -> u8 {
    match source {
        ByteSource::Virtual => 0,
        ByteSource::Physical(_) => 1,
        ByteSource::Backend => 2,
    }
}

fn kind_tag(kind: BarKind) -> u8 {
    match kind {
        BarKind::Io => 1,
        BarKind::Memory32 => 2,
        BarKind::Memory64 => 3,
    }
}

fn describe_bar(bar: Option<&Bar>) -> String {
    match bar {
        None => "absent".to_string(),
        Some(b) => {
            let kind = match b.kind {
                BarKind::Io => "I/O",
                BarKind::Memory32 => "32-bit memory",
                BarKind::Memory64 => "64-bit memory",
            };
            let areas: Vec<String> = b
                .mmap
                .iter()
                .map(|a| format!("{:#x}+{:#x}", a.offset, a.size))
                .collect();
            format!(
                "{kind}{} size {:#x} mmap [{}]",
                if b.prefetchable { " prefetchable" } else { "" },
                b.size,
                areas.join(", ")
            )
        }
    }
}

fn cap_set(template: &ConfigTemplate) -> BTreeSet<(bool, u16, u16)> {
    let layout = template.layout();
    let standard = layout
        .capabilities
        .iter()
        .map(|c| (false, c.offset, u16::from(c.body.id())));
    let extended = layout
        .ext_capabilities
        .iter()
        .map(|c| (true, c.offset, c.body.id()));
    standard.chain(extended).collect()
}

fn cap_label(extended: bool, offset: u16, id: u16) -> String {
    if extended {
        format!("ext capability {} @{offset:#x}", Chain::Extended.name(id))
    } else {
        format!("capability {} @{offset:#x}", Chain::Standard.name(id))
    }
}

/// The capabilities of one chain backed by the physical function: offset, what it is, and the
/// physical offset.
fn physical_backings<C: ChainItem>(caps: &[C]) -> impl Iterator<Item = (u16, String, u16)> + '_ {
    caps.iter().filter_map(|c| {
        c.physical().map(|backing| {
            (
                c.offset(),
                format!("{} {}", C::CHAIN.noun(), c.name()),
                backing.offset,
            )
        })
    })
}

/// Every guest-visible difference between a function exposed with `a` and resumed with `b`.
/// Empty means compatible.
pub fn compare(a: &ConfigTemplate, b: &ConfigTemplate) -> Vec<Difference> {
    let mut out = Vec::new();
    if a.size() != b.size() {
        out.push(Difference::new(
            "vpci.config_size",
            format!("{} vs {}", a.size(), b.size()),
            format!(
                "config space {} vs {}",
                human_size(a.size() as u64),
                human_size(b.size() as u64)
            ),
        ));
    }
    // The BAR registers follow from the BARs: a BAR that differs is one difference.
    let mut skip: Vec<(u16, u16)> = Vec::new();
    for index in 0..6u8 {
        let (x, y) = (a.layout().bar(index), b.layout().bar(index));
        let (dx, dy) = (describe_bar(x), describe_bar(y));
        if dx != dy {
            out.push(Difference::new(
                format!("bar[{index}]"),
                format!("{dx} vs {dy}"),
                explain_bar(index, x, y),
            ));
            let register = 0x10 + 4 * u16::from(index);
            let wide = [x, y]
                .iter()
                .any(|b| b.is_some_and(|b| b.kind == BarKind::Memory64));
            skip.push((register, register + if wide { 8 } else { 4 }));
        }
    }
    let (rx, ry) = (
        a.layout().rom.as_ref().map(|r| r.size),
        b.layout().rom.as_ref().map(|r| r.size),
    );
    if rx != ry {
        let show = |r: Option<u64>| r.map_or("absent".to_string(), |s| format!("{s:#x} bytes"));
        let human = |r: Option<u64>| r.map_or("absent".to_string(), human_size);
        out.push(Difference::new(
            "rom",
            format!("{} vs {}", show(rx), show(ry)),
            format!("expansion ROM {} vs {}", human(rx), human(ry)),
        ));
    }
    let (ca, cb) = (cap_set(a), cap_set(b));
    let only_a: Vec<_> = ca.difference(&cb).copied().collect();
    let only_b: Vec<_> = cb.difference(&ca).copied().collect();
    let end_of = |template: &ConfigTemplate, offset: u16| {
        template
            .owners
            .iter()
            .find(|o| o.start == offset)
            .map_or(offset + 1, |o| o.end)
    };
    let name = |extended: bool, id: u16| {
        let chain = if extended {
            Chain::Extended
        } else {
            Chain::Standard
        };
        format!("{} {}", chain.noun(), chain.name(id))
    };
    // A capability of one ID at another offset has moved; the rest are only on one side.
    let moved = |&(extended, _, id): &(bool, u16, u16), others: &[(bool, u16, u16)]| {
        others
            .iter()
            .filter(|(e, _, i)| *e == extended && *i == id)
            .count()
            == 1
    };
    for &(extended, offset, id) in &only_a {
        if moved(&(extended, offset, id), &only_b) && moved(&(extended, offset, id), &only_a) {
            let &(_, to, _) = only_b
                .iter()
                .find(|(e, _, i)| *e == extended && *i == id)
                .expect("counted above");
            out.push(Difference::new(
                cap_label(extended, offset, id),
                format!("at {offset:#x} vs {to:#x}"),
                format!("{} moved from {offset:#x} to {to:#x}", name(extended, id)),
            ));
            skip.push((offset, end_of(a, offset)));
            skip.push((to, end_of(b, to)));
        }
    }
    for (side, only, others, template) in [
        ("first", &only_a, &only_b, a),
        ("second", &only_b, &only_a, b),
    ] {
        for &(extended, offset, id) in only {
            if moved(&(extended, offset, id), others) && moved(&(extended, offset, id), only) {
                continue;
            }
            out.push(Difference::new(
                cap_label(extended, offset, id),
                format!("only in the {side} layout"),
                format!(
                    "{} at {offset:#x} only in the {side} layout",
                    name(extended, id)
                ),
            ));
            skip.push((offset, end_of(template, offset)));
        }
    }
    byte_differences(a, b, &skip, &mut out);
    out
}

/// Differences a guest cannot see, so migration goes ahead, that an operator may still want
/// to know of: where a BAR's content comes from and where a passed-through capability is on
/// the hardware.
pub fn warnings(a: &ConfigTemplate, b: &ConfigTemplate) -> Vec<Difference> {
    let mut out = Vec::new();
    let (la, lb) = (a.layout(), b.layout());
    let backing = |bar: &Bar| match bar.backing {
        BarBacking::Emulated => "emulated".to_string(),
        BarBacking::Passthrough { physical_bar } => format!("physical BAR {physical_bar}"),
        BarBacking::LegacyIo => "legacy I/O emulation".to_string(),
    };
    for index in 0..6u8 {
        if let (Some(x), Some(y)) = (la.bar(index), lb.bar(index))
            && backing(x) != backing(y)
        {
            out.push(Difference::new(
                format!("bar[{index}].backing"),
                format!("{} vs {}", backing(x), backing(y)),
                format!(
                    "BAR {index} is backed by {} vs {} (the device state must carry what the \
                     guest wrote there)",
                    backing(x),
                    backing(y)
                ),
            ));
        }
    }
    let physical = |t: &ConfigTemplate| -> Vec<(u16, String, u16)> {
        let layout = t.layout();
        physical_backings(&layout.capabilities)
            .chain(physical_backings(&layout.ext_capabilities))
            .collect()
    };
    let theirs = physical(b);
    for (offset, name, from) in physical(a) {
        if let Some((_, _, to)) = theirs.iter().find(|(o, n, _)| *o == offset && *n == name)
            && *to != from
        {
            out.push(Difference::new(
                format!("{name} @{offset:#x}.physical_offset"),
                format!("{from:#x} vs {to:#x}"),
                format!(
                    "{name} at {offset:#x} is read from the hardware's {from:#x} vs {to:#x} \
                     (the guest sees it at {offset:#x} on both)"
                ),
            ));
        }
    }
    out
}

fn byte_differences(
    a: &ConfigTemplate,
    b: &ConfigTemplate,
    skip: &[(u16, u16)],
    out: &mut Vec<Difference>,
) {
    let size = a.size().min(b.size());
    let differs = |i: usize| {
        let (va, vb) = (a.virt[i], b.virt[i]);
        a.reset[i] & va != b.reset[i] & vb
            || va != vb
            || a.write[i] != b.write[i]
            || a.rw1c[i] != b.rw1c[i]
            || source_tag(a.source[i]) != source_tag(b.source[i])
    };
    let mut i = 0;
    while i < size {
        let skipped = skip
            .iter()
            .any(|(s, e)| usize::from(*s) <= i && i < usize::from(*e));
        if skipped || !differs(i) {
            i += 1;
            continue;
        }
        // Report the whole field or capability the differing bytes belong to.
        let owner = a.owner_of(i as u16).to_string();
        let (start, end) = a
            .owners
            .iter()
            .find(|o| usize::from(o.start) <= i && i < usize::from(o.end))
            .map_or((i, i + 1), |o| {
                (usize::from(o.start), usize::from(o.end).min(size))
            });
        i = end;
        let range = start..end;
        let mut parts = Vec::new();
        let show = |bytes: &[u8]| {
            bytes
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let masked = |t: &ConfigTemplate| -> Vec<u8> {
            range.clone().map(|j| t.reset[j] & t.virt[j]).collect()
        };
        for (name, x, y) in [
            ("value", masked(a), masked(b)),
            (
                "virtual mask",
                a.virt[range.clone()].to_vec(),
                b.virt[range.clone()].to_vec(),
            ),
            (
                "write mask",
                a.write[range.clone()].to_vec(),
                b.write[range.clone()].to_vec(),
            ),
            (
                "RW1C mask",
                a.rw1c[range.clone()].to_vec(),
                b.rw1c[range.clone()].to_vec(),
            ),
        ] {
            if x != y {
                parts.push(format!("{name} {} vs {}", show(&x), show(&y)));
            }
        }
        let sources = |t: &ConfigTemplate| -> Vec<&str> {
            range
                .clone()
                .map(|j| match t.source[j] {
                    ByteSource::Virtual => "layout",
                    ByteSource::Physical(_) => "hardware",
                    ByteSource::Backend => "backend",
                })
                .collect()
        };
        if sources(a)
            .iter()
            .zip(sources(b).iter())
            .any(|(x, y)| x != y)
        {
            parts.push(format!(
                "source {} vs {}",
                sources(a).join("/"),
                sources(b).join("/")
            ));
        }
        let detail = parts.join("; ");
        let explanation = explain_field(&owner, range.clone(), a, b)
            .unwrap_or_else(|| format!("{owner}: {detail}"));
        out.push(Difference::new(
            format!("{owner} [{:#05x}..{:#05x}]", range.start, range.end),
            detail,
            explanation,
        ));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::vpci::compile::compile;
    use crate::vpci::parse_layout;

    const BASE: &str = r#"
[vpci]
format = 1
name = "a"
config_size = 4096
[identity]
vendor_id = 0x1af4
device_id = 0x1041
class_code = 0x020000
[[bar]]
index = 0
kind = "mem32"
size = "16K"
backing = "passthrough"
[[capability]]
kind = "msix"
offset = 0x40
table_size = 4
table_bar = 0
table_offset = 0x1000
pba_bar = 0
pba_offset = 0x1800
[[capability]]
kind = "pcie"
offset = 0x50
[[ext_capability]]
kind = "aer"
offset = 0x100
physical_offset = 0x140
"#;

    fn template(text: &str) -> ConfigTemplate {
        compile(Arc::new(parse_layout("t", text).unwrap()))
    }

    #[test]
    fn hidden_differences_are_compatible() {
        let a = template(BASE);
        let other = BASE
            .replace("name = \"a\"", "name = \"b\"\ndescription = \"gen 2\"")
            .replace("physical_offset = 0x140", "physical_offset = 0x200")
            .replace("backing = \"passthrough\"", "backing = \"emulated\"");
        let b = template(&other);
        assert_eq!(compare(&a, &b), vec![]);
        assert_eq!(fingerprint(&a), fingerprint(&b));
        let warned: Vec<String> = warnings(&a, &b)
            .into_iter()
            .map(|w| w.explanation)
            .collect();
        assert_eq!(
            warned,
            [
                "BAR 0 is backed by physical BAR 0 vs emulated (the device state must carry what the guest wrote there)",
                "extended capability Advanced Error Reporting at 0x100 is read from the hardware's 0x140 vs 0x200 (the guest sees it at 0x100 on both)"
            ]
        );
        assert!(warnings(&a, &a).is_empty());
    }

    /// BASE with another device ID, a larger BAR 0, more MSI-X vectors and the PCIe
    /// capability moved.
    fn four_differences() -> String {
        BASE.replace("device_id = 0x1041", "device_id = 0x1042")
            .replace("size = \"16K\"", "size = \"32K\"")
            .replace("table_size = 4", "table_size = 8")
            .replace(
                "kind = \"pcie\"\noffset = 0x50",
                "kind = \"pcie\"\noffset = 0x60",
            )
    }

    #[test]
    fn every_visible_difference_is_listed() {
        let (a, b) = (template(BASE), template(&four_differences()));
        let places: Vec<String> = compare(&a, &b).into_iter().map(|d| d.place).collect();
        assert!(
            places.iter().any(|p| p.starts_with("header.device_id")),
            "{places:?}"
        );
        assert!(places.iter().any(|p| p == "bar[0]"), "{places:?}");
        assert!(
            places
                .iter()
                .any(|p| p.starts_with("capability MSI-X @0x40")),
            "{places:?}"
        );
        assert!(
            places.iter().any(|p| p == "capability Express @0x50"),
            "{places:?}"
        );
        assert_eq!(
            places.len(),
            4,
            "a moved capability is one difference: {places:?}"
        );
        assert_ne!(fingerprint(&a), fingerprint(&b));
    }

    #[test]
    fn differences_are_explained_by_field() {
        let (a, b) = (template(BASE), template(&four_differences()));
        let explained: Vec<String> = compare(&a, &b).into_iter().map(|d| d.explanation).collect();
        for expected in [
            "device ID 0x1041 vs 0x1042",
            "BAR 0 size 16 KiB vs 32 KiB",
            "MSI-X table size 4 vs 8",
            "capability Express moved from 0x50 to 0x60",
        ] {
            assert!(
                explained.iter().any(|e| e == expected),
                "{expected}: {explained:#?}"
            );
        }
        assert_eq!(
            explained.len(),
            4,
            "the BAR register is not counted twice: {explained:#?}"
        );
        assert_eq!(human_size(4096), "4 KiB");
        assert_eq!(human_size(32), "32 bytes");
        assert_eq!(human_size(3 << 30), "3 GiB");
    }
}
