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

use super::layout::{Bar, BarKind};
use crate::config::ConfigTemplate;
use crate::config::template::ByteSource;
use crate::pci::cap;

/// One guest-visible difference between two layouts.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Difference {
    /// Where: a header field, a BAR, a capability, a config-space range.
    pub place: String,
    /// What differs, with the value on each side.
    pub detail: String,
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
        format!("ext capability {} @{offset:#x}", cap::ext_cap_name(id))
    } else {
        format!("capability {} @{offset:#x}", cap::cap_name(id as u8))
    }
}

/// Every guest-visible difference between a function exposed with `a` and resumed with `b`.
/// Empty means compatible.
pub fn compare(a: &ConfigTemplate, b: &ConfigTemplate) -> Vec<Difference> {
    let mut out = Vec::new();
    if a.size() != b.size() {
        out.push(Difference {
            place: "vpci.config_size".into(),
            detail: format!("{} vs {}", a.size(), b.size()),
        });
    }
    for index in 0..6u8 {
        let (x, y) = (a.layout().bar(index), b.layout().bar(index));
        let (dx, dy) = (describe_bar(x), describe_bar(y));
        if dx != dy {
            out.push(Difference {
                place: format!("bar[{index}]"),
                detail: format!("{dx} vs {dy}"),
            });
        }
    }
    let (rx, ry) = (
        a.layout().rom.as_ref().map(|r| r.size),
        b.layout().rom.as_ref().map(|r| r.size),
    );
    if rx != ry {
        let show = |r: Option<u64>| r.map_or("absent".to_string(), |s| format!("{s:#x} bytes"));
        out.push(Difference {
            place: "rom".into(),
            detail: format!("{} vs {}", show(rx), show(ry)),
        });
    }
    let (ca, cb) = (cap_set(a), cap_set(b));
    let mut skip: Vec<(u16, u16)> = Vec::new();
    for (side, only, template) in [
        ("first", ca.difference(&cb), a),
        ("second", cb.difference(&ca), b),
    ] {
        for &(extended, offset, id) in only {
            out.push(Difference {
                place: cap_label(extended, offset, id),
                detail: format!("only in the {side} layout"),
            });
            let end = template
                .owners
                .iter()
                .find(|o| o.start == offset)
                .map_or(offset + 1, |o| o.end);
            skip.push((offset, end));
        }
    }
    byte_differences(a, b, &skip, &mut out);
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
        out.push(Difference {
            place: format!("{owner} [{:#05x}..{:#05x}]", range.start, range.end),
            detail: parts.join("; "),
        });
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
    }

    #[test]
    fn every_visible_difference_is_listed() {
        let a = template(BASE);
        let b = template(
            &BASE
                .replace("device_id = 0x1041", "device_id = 0x1042")
                .replace("size = \"16K\"", "size = \"32K\"")
                .replace("table_size = 4", "table_size = 8")
                .replace(
                    "kind = \"pcie\"\noffset = 0x50",
                    "kind = \"pcie\"\noffset = 0x60",
                ),
        );
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
        assert!(
            places.iter().any(|p| p == "capability Express @0x60"),
            "{places:?}"
        );
        assert_ne!(fingerprint(&a), fingerprint(&b));
    }
}
