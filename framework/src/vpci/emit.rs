//! Writes a [`Layout`] as a vPCI TOML file that reads back to an equal layout.

use std::fmt::Write;

use super::fields::format_size;
use super::parse::{command_bit_names, default_header, status_error_names, status_fixed_names};
use crate::layout::*;
use crate::pci::cap::RAW_KIND;

impl Layout {
    /// The layout as vPCI TOML text; `parse_layout` of it gives an equal layout.
    pub fn to_toml(&self) -> String {
        emit(self, &[])
    }
}

/// The layout as TOML, with `comments` (one per line) at the top.
pub fn emit(layout: &Layout, comments: &[String]) -> String {
    let mut out = String::new();
    for comment in comments {
        for line in comment.lines() {
            let _ = writeln!(out, "# {line}");
        }
    }
    if !comments.is_empty() {
        out.push('\n');
    }
    let _ = writeln!(out, "[vpci]\nformat = 1\nname = {}", quote(&layout.name));
    if !layout.description.is_empty() {
        let _ = writeln!(out, "description = {}", quote(&layout.description));
    }
    let _ = writeln!(out, "config_size = {}", layout.config_size);
    let unowned = match layout.unowned {
        Unowned::Zero => "zero",
        Unowned::Passthrough => "passthrough",
    };
    let _ = writeln!(out, "unowned = \"{unowned}\"");

    let id = &layout.identity;
    let _ = writeln!(
        out,
        "\n[identity]\nvendor_id = {:#06x}\ndevice_id = {:#06x}\nsubsystem_vendor_id = {:#06x}\nsubsystem_id = {:#06x}\nclass_code = {:#08x}\nrevision = {:#04x}",
        id.vendor_id,
        id.device_id,
        id.subsystem_vendor_id,
        id.subsystem_id,
        id.class_code,
        id.revision
    );
    header(&mut out, layout);
    for bar in layout.bars.iter().flatten() {
        self::bar(&mut out, bar);
    }
    if let Some(rom) = &layout.rom {
        let backing = match rom.backing {
            RomBacking::Emulated => "emulated",
            RomBacking::Passthrough => "passthrough",
        };
        let _ = writeln!(
            out,
            "\n[rom]\nsize = \"{}\"\nbacking = \"{backing}\"",
            format_size(rom.size)
        );
    }
    for c in &layout.capabilities {
        capability(&mut out, c);
    }
    for c in &layout.ext_capabilities {
        ext_capability(&mut out, c);
    }
    for r in &layout.registers {
        register(&mut out, r);
    }
    out
}

fn quote(text: &str) -> String {
    let mut q = String::with_capacity(text.len() + 2);
    q.push('"');
    for ch in text.chars() {
        match ch {
            '"' => q.push_str("\\\""),
            '\\' => q.push_str("\\\\"),
            '\n' => q.push_str("\\n"),
            '\t' => q.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(q, "\\u{:04x}", c as u32);
            }
            c => q.push(c),
        }
    }
    q.push('"');
    q
}

fn list(names: &[&str]) -> String {
    let quoted: Vec<String> = names.iter().map(|n| format!("\"{n}\"")).collect();
    format!("[{}]", quoted.join(", "))
}

fn bytes(data: &[u8]) -> String {
    let items: Vec<String> = data.iter().map(|b| format!("{b:#04x}")).collect();
    format!("[{}]", items.join(", "))
}

fn header(out: &mut String, layout: &Layout) {
    let h = &layout.header;
    let d = default_header();
    let _ = writeln!(out, "\n[header]");
    if h.command_writable != d.command_writable {
        let _ = writeln!(
            out,
            "command_writable = {}",
            list(&command_bit_names(h.command_writable))
        );
    }
    if h.status_fixed != d.status_fixed {
        let _ = writeln!(
            out,
            "status = {}",
            list(&status_fixed_names(h.status_fixed))
        );
    }
    if h.status_rw1c != d.status_rw1c {
        let _ = writeln!(
            out,
            "status_rw1c = {}",
            list(&status_error_names(h.status_rw1c))
        );
    }
    if h.cache_line_size == HeaderSource::Passthrough {
        let _ = writeln!(out, "cache_line_size = \"passthrough\"");
    }
    if h.latency_timer == HeaderSource::Passthrough {
        let _ = writeln!(out, "latency_timer = \"passthrough\"");
    }
    if h.multifunction {
        let _ = writeln!(out, "multifunction = true");
    }
    let pin = ["none", "A", "B", "C", "D"]
        .get(usize::from(h.interrupt_pin))
        .copied()
        .unwrap_or("none");
    let _ = writeln!(out, "interrupt_pin = \"{pin}\"");
    if let Some(pointer) = layout.capabilities_pointer {
        let _ = writeln!(out, "capabilities_pointer = {pointer:#04x}");
    }
}

fn bar(out: &mut String, bar: &Bar) {
    let kind = match bar.kind {
        BarKind::Io => "io",
        BarKind::Memory32 => "mem32",
        BarKind::Memory64 => "mem64",
    };
    let _ = writeln!(out, "\n[[bar]]\nindex = {}\nkind = \"{kind}\"", bar.index);
    if bar.prefetchable {
        let _ = writeln!(out, "prefetchable = true");
    }
    let _ = writeln!(out, "size = \"{}\"", format_size(bar.size));
    match bar.backing {
        BarBacking::Emulated => {
            let _ = writeln!(out, "backing = \"emulated\"");
        }
        BarBacking::LegacyIo => {
            let _ = writeln!(out, "backing = \"legacy-io\"");
        }
        BarBacking::Passthrough { physical_bar } => {
            let _ = writeln!(
                out,
                "backing = \"passthrough\"\nphysical_bar = {physical_bar}"
            );
        }
    }
    for area in &bar.mmap {
        let offset = if area.offset == 0 {
            "0".to_string()
        } else {
            format!("\"{}\"", format_size(area.offset))
        };
        let _ = writeln!(
            out,
            "[[bar.mmap]]\noffset = {offset}\nsize = \"{}\"",
            format_size(area.size)
        );
    }
}

fn capability(out: &mut String, c: &Capability) {
    let kind = c.kind();
    let _ = writeln!(
        out,
        "\n[[capability]]\nkind = \"{kind}\"\noffset = {:#04x}",
        c.offset
    );
    match &c.body {
        CapabilityBody::Pm(p) => {
            let _ = writeln!(out, "version = {}", p.version);
            if p.d1 {
                let _ = writeln!(out, "d1 = true");
            }
            if p.d2 {
                let _ = writeln!(out, "d2 = true");
            }
            let states = ["d0", "d1", "d2", "d3hot", "d3cold"];
            let pme: Vec<&str> = (0..5)
                .filter(|i| p.pme_support & (1 << i) != 0)
                .map(|i| states[i])
                .collect();
            if !pme.is_empty() {
                let _ = writeln!(out, "pme_from = {}", list(&pme));
            }
            let _ = writeln!(out, "no_soft_reset = {}", p.no_soft_reset);
        }
        CapabilityBody::Msi(p) => {
            let _ = writeln!(
                out,
                "vectors = {}\naddress_64 = {}\nper_vector_masking = {}",
                p.vectors, p.address_64, p.per_vector_masking
            );
        }
        CapabilityBody::Msix(p) => {
            let _ = writeln!(
                out,
                "table_size = {}\ntable_bar = {}\ntable_offset = {:#x}\npba_bar = {}\npba_offset = {:#x}",
                p.table_size, p.table_bar, p.table_offset, p.pba_bar, p.pba_offset
            );
        }
        CapabilityBody::Pcie(p) => {
            let _ = writeln!(
                out,
                "device_type = \"{}\"\nmax_payload = {}\nflr = {}\nextended_tags = {}",
                p.device_type.name(),
                p.max_payload,
                p.flr,
                p.extended_tags
            );
            if p.device_type != PcieDeviceType::RcIntegratedEndpoint {
                let _ = writeln!(
                    out,
                    "link_speed = {}\nlink_width = {}",
                    p.link_speed, p.link_width
                );
            }
        }
        CapabilityBody::Vendor { data } => {
            let _ = writeln!(out, "data = {}", bytes(data));
        }
        CapabilityBody::Raw { id, data } => {
            let _ = writeln!(out, "id = {id:#04x}\ndata = {}", bytes(data));
        }
        CapabilityBody::Physical {
            id,
            physical_offset,
            length,
        } => {
            if kind == RAW_KIND {
                let _ = writeln!(out, "id = {id:#04x}");
            }
            let _ = writeln!(
                out,
                "physical_offset = {physical_offset:#04x}\nlength = {length}"
            );
        }
    }
}

fn ext_capability(out: &mut String, c: &ExtCapability) {
    let kind = c.kind();
    let _ = writeln!(
        out,
        "\n[[ext_capability]]\nkind = \"{kind}\"\noffset = {:#05x}\nversion = {}",
        c.offset, c.version
    );
    match &c.body {
        ExtCapabilityBody::Aer => {}
        ExtCapabilityBody::Dsn { serial } => {
            let _ = writeln!(out, "serial = {serial:#018x}");
        }
        ExtCapabilityBody::Acs { capabilities } => {
            let _ = writeln!(out, "capabilities = {capabilities:#04x}");
        }
        ExtCapabilityBody::Ats {
            invalidate_queue_depth,
            page_aligned,
        } => {
            let _ = writeln!(
                out,
                "invalidate_queue_depth = {invalidate_queue_depth}\npage_aligned = {page_aligned}"
            );
        }
        ExtCapabilityBody::Pri {
            outstanding_capacity,
        } => {
            let _ = writeln!(out, "outstanding_capacity = {outstanding_capacity}");
        }
        ExtCapabilityBody::Pasid {
            max_width,
            execute,
            privileged,
        } => {
            let _ = writeln!(
                out,
                "max_width = {max_width}\nexecute = {execute}\nprivileged = {privileged}"
            );
        }
        ExtCapabilityBody::Vsec {
            vsec_id,
            vsec_rev,
            data,
        } => {
            let _ = writeln!(
                out,
                "vsec_id = {vsec_id:#06x}\nvsec_rev = {vsec_rev}\ndata = {}",
                bytes(data)
            );
        }
        ExtCapabilityBody::Raw { id, data } => {
            let _ = writeln!(out, "id = {id:#06x}\ndata = {}", bytes(data));
        }
        ExtCapabilityBody::Physical {
            id,
            physical_offset,
            length,
        } => {
            if kind == RAW_KIND {
                let _ = writeln!(out, "id = {id:#06x}");
            }
            let _ = writeln!(
                out,
                "physical_offset = {physical_offset:#05x}\nlength = {length}"
            );
        }
    }
}

fn register(out: &mut String, r: &RegisterOverride) {
    let width = usize::from(r.size) * 2 + 2;
    let _ = writeln!(
        out,
        "\n[[register]]\noffset = {:#05x}\nsize = {}\nvalue = {:#0width$x}\nvirtual_mask = {:#0width$x}\nwrite_mask = {:#0width$x}\nrw1c_mask = {:#0width$x}",
        r.offset, r.size, r.value, r.virtual_mask, r.write_mask, r.rw1c_mask
    );
    match r.source {
        RegisterSource::Backend => {
            let _ = writeln!(out, "source = \"backend\"");
        }
        RegisterSource::Physical { offset } if offset != r.offset => {
            let _ = writeln!(out, "physical_offset = {offset:#05x}");
        }
        RegisterSource::Physical { .. } => {}
    }
}

#[cfg(test)]
mod tests {
    use crate::layout::*;
    use crate::pci::cap::{CAPABILITIES, Chain, Length, RAW_KIND};
    use crate::vpci::parse_layout;

    const HEAD: &str = "[vpci]\nformat = 1\nname = \"t\"\nconfig_size = 4096\n\n[identity]\nvendor_id = 0x1af4\ndevice_id = 0x1041\nclass_code = 0x020000\n\n[[bar]]\nindex = 0\nkind = \"mem32\"\nsize = \"4K\"\n";

    /// A PCI Express capability at 0x40, which extended capabilities need.
    const PCIE: &str = "\n[[capability]]\nkind = \"pcie\"\noffset = 0x40\n";

    /// The fields a declarative capability of `kind` cannot go without.
    fn required(kind: &str) -> &'static str {
        match kind {
            "msix" => {
                "table_size = 4\ntable_bar = 0\ntable_offset = 0\npba_bar = 0\npba_offset = 0x800\n"
            }
            "dsn" => "serial = 0x1234\n",
            "vsec" => "vsec_id = 7\ndata = [1, 2, 3, 4]\n",
            "vendor" => "data = [1, 2, 3]\n",
            _ => "",
        }
    }

    /// Parses, emits and parses again; both layouts are equal and the text names the kind.
    fn round_trip(body: &str, kind: &str) -> Layout {
        let text = format!("{HEAD}{body}");
        let layout = parse_layout("t", &text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let emitted = layout.to_toml();
        assert!(
            emitted.contains(&format!("kind = \"{kind}\"")),
            "{kind}:\n{emitted}"
        );
        let again = parse_layout("emitted", &emitted).unwrap_or_else(|e| panic!("{e}\n{emitted}"));
        assert_eq!(layout, again, "{kind}");
        layout
    }

    /// A capability of `kind` in `chain`, declared or backed by the physical function.
    fn declaration(chain: Chain, kind: &str, id: u16, physical: Option<u16>) -> String {
        let (table, offset) = match chain {
            Chain::Standard => ("capability", 0x80),
            Chain::Extended => ("ext_capability", 0x100),
        };
        let mut text = format!("\n[[{table}]]\nkind = \"{kind}\"\noffset = {offset:#x}\n");
        if kind == RAW_KIND {
            text.push_str(&format!("id = {id:#x}\n"));
        }
        match physical {
            Some(length) => text.push_str(&format!(
                "physical_offset = {offset:#x}\nlength = {length}\n"
            )),
            None => text.push_str(required(kind)),
        }
        text
    }

    #[test]
    fn every_capability_of_the_table_round_trips() {
        for info in CAPABILITIES {
            let kind = info.kind.unwrap_or(RAW_KIND);
            let prefix = match info.chain {
                Chain::Standard => "",
                Chain::Extended => PCIE,
            };
            // Backed by the physical function: the table's fixed length, or one the file states.
            let length = match info.length {
                Some(Length::Fixed(n)) => n,
                Some(Length::AtLeast(n)) => n + 4,
                None => info.chain.header_len() + 4,
            };
            let text = format!(
                "{prefix}{}",
                declaration(info.chain, kind, info.id, Some(length))
            );
            let layout = round_trip(&text, kind);
            let (id, parsed_length) = match info.chain {
                Chain::Standard => {
                    let c = layout.capabilities.last().unwrap();
                    (c.id(), ChainItem::length(c))
                }
                Chain::Extended => {
                    let c = layout.ext_capabilities.last().unwrap();
                    (c.id(), ChainItem::length(c))
                }
            };
            assert_eq!((id, parsed_length), (info.id, length), "{}", info.name);

            // Declared: the emulated kinds with their defaults, the others as raw bytes.
            let text = format!("{prefix}{}", declaration(info.chain, kind, info.id, None));
            round_trip(&text, kind);
        }
    }

    #[test]
    fn a_fixed_length_other_than_the_tables_is_refused() {
        for info in CAPABILITIES {
            let Some(Length::Fixed(n)) = info.length else {
                continue;
            };
            let prefix = match info.chain {
                Chain::Standard => "",
                Chain::Extended => PCIE,
            };
            let text = format!(
                "{HEAD}{prefix}{}",
                declaration(
                    info.chain,
                    info.kind.unwrap_or(RAW_KIND),
                    info.id,
                    Some(n + 4)
                )
            );
            let e = parse_layout("t", &text).unwrap_err();
            assert!(
                e.message.contains(&format!("is {n} bytes long")),
                "{}: {e}",
                info.name
            );
        }
    }
}
