//! Prints a compiled layout: an lspci-like description, and the config space's reset values
//! in `lspci -xxxx` format.

use std::fmt::Write;

use super::compat::fingerprint;
use crate::config::ConfigTemplate;
use crate::layout::*;
use crate::pci::cap::{self, Chain};
use crate::pci::regs;

/// Config space bytes as `lspci -xxxx` prints them: `OFFSET: BYTE BYTE ...`, 16 a line.
pub fn hex_dump(config: &[u8]) -> String {
    let mut out = String::new();
    for (line, chunk) in config.chunks(16).enumerate() {
        let offset = line * 16;
        if offset < 0x100 {
            let _ = write!(out, "{offset:02x}:");
        } else {
            let _ = write!(out, "{offset:03x}:");
        }
        for byte in chunk {
            let _ = write!(out, " {byte:02x}");
        }
        out.push('\n');
    }
    out
}

fn size_text(size: u64) -> String {
    match size {
        s if s >= 1 << 30 && s % (1 << 30) == 0 => format!("{}G", s >> 30),
        s if s >= 1 << 20 && s % (1 << 20) == 0 => format!("{}M", s >> 20),
        s if s >= 1 << 10 && s % (1 << 10) == 0 => format!("{}K", s >> 10),
        s => s.to_string(),
    }
}

fn flag(on: bool) -> char {
    if on { '+' } else { '-' }
}

/// An lspci-like description of what the guest sees. `config` is the compiled config space
/// read back (virtual bits, and physical bits when a physical function backs it).
pub fn describe(template: &ConfigTemplate, config: &[u8]) -> String {
    let layout = template.layout();
    let byte = |o: u16| config.get(usize::from(o)).copied().unwrap_or(0);
    let word = |o: u16| u16::from_le_bytes([byte(o), byte(o + 1)]);
    let dword = |o: u16| u32::from(word(o)) | (u32::from(word(o + 2)) << 16);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "vPCI layout \"{}\": {}-byte config space, fingerprint {}",
        layout.name,
        template.size(),
        fingerprint(template)
    );
    if !layout.description.is_empty() {
        let _ = writeln!(out, "\t{}", layout.description);
    }
    let id = &layout.identity;
    let _ = writeln!(
        out,
        "Device {:04x}:{:04x} (rev {:02x}), class {:06x}",
        word(regs::VENDOR_ID),
        word(regs::DEVICE_ID),
        byte(regs::REVISION_ID),
        id.class_code
    );
    let _ = writeln!(
        out,
        "\tSubsystem: {:04x}:{:04x}",
        word(regs::SUBSYSTEM_VENDOR_ID),
        word(regs::SUBSYSTEM_ID)
    );
    let writable = super::parse::command_bit_names(layout.header.command_writable);
    let _ = writeln!(out, "\tControl: writable bits [{}]", writable.join(" "));
    let status = word(regs::STATUS);
    let _ = writeln!(
        out,
        "\tStatus: Cap{} 66MHz{} FastB2B{}; RW1C [{}]",
        flag(status & regs::STATUS_CAP_LIST != 0),
        flag(status & regs::STATUS_66MHZ != 0),
        flag(status & regs::STATUS_FAST_B2B != 0),
        super::parse::status_error_names(layout.header.status_rw1c).join(" ")
    );
    let pin = ["none", "A", "B", "C", "D"]
        .get(usize::from(byte(regs::INTERRUPT_PIN)))
        .copied()
        .unwrap_or("?");
    let _ = writeln!(out, "\tInterrupt: pin {pin}");
    for bar in layout.bars.iter().flatten() {
        let kind = match bar.kind {
            BarKind::Io => "I/O ports".to_string(),
            BarKind::Memory32 | BarKind::Memory64 => format!(
                "Memory ({}-bit, {})",
                if bar.kind == BarKind::Memory64 {
                    64
                } else {
                    32
                },
                if bar.prefetchable {
                    "prefetchable"
                } else {
                    "non-prefetchable"
                }
            ),
        };
        let backing = match bar.backing {
            BarBacking::Emulated => "emulated".to_string(),
            BarBacking::LegacyIo => "legacy I/O".to_string(),
            BarBacking::Passthrough { physical_bar } => format!("physical BAR {physical_bar}"),
        };
        let _ = write!(
            out,
            "\tRegion {}: {kind} [size={}] ({backing})",
            bar.index,
            size_text(bar.size)
        );
        if !bar.mmap.is_empty() {
            let areas: Vec<String> = bar
                .mmap
                .iter()
                .map(|a| format!("{:#x}+{}", a.offset, size_text(a.size)))
                .collect();
            let _ = write!(out, " mmap {}", areas.join(", "));
        }
        out.push('\n');
    }
    if let Some(rom) = &layout.rom {
        let _ = writeln!(
            out,
            "\tExpansion ROM: [size={}] ({:?})",
            size_text(rom.size),
            rom.backing
        );
    }
    for c in &layout.capabilities {
        let o = c.offset;
        let name = Chain::Standard.name(c.body.id().into());
        let physical = match c.body {
            CapabilityBody::Physical {
                physical_offset, ..
            } => format!(" (physical @{physical_offset:#x})"),
            _ => String::new(),
        };
        match c.body.id() {
            cap::CAP_MSI => {
                let flags = word(o + cap::MSI_FLAGS);
                let _ = writeln!(
                    out,
                    "\tCapabilities: [{o:02x}] MSI: Enable{} Count=1/{} Maskable{} 64bit{}{physical}",
                    flag(flags & cap::MSI_FLAGS_ENABLE != 0),
                    1 << ((flags & cap::MSI_FLAGS_QMASK) >> 1),
                    flag(flags & cap::MSI_FLAGS_MASKBIT != 0),
                    flag(flags & cap::MSI_FLAGS_64BIT != 0)
                );
            }
            cap::CAP_MSIX => {
                let flags = word(o + cap::MSIX_FLAGS);
                let (table, pba) = (dword(o + cap::MSIX_TABLE), dword(o + cap::MSIX_PBA));
                let _ = writeln!(
                    out,
                    "\tCapabilities: [{o:02x}] MSI-X: Enable{} Count={} Masked{}{physical}\n\t\tVector table: BAR={} offset={:08x}\n\t\tPBA: BAR={} offset={:08x}",
                    flag(flags & cap::MSIX_FLAGS_ENABLE != 0),
                    (flags & cap::MSIX_FLAGS_QSIZE) + 1,
                    flag(flags & cap::MSIX_FLAGS_MASKALL != 0),
                    table & 7,
                    table & !7,
                    pba & 7,
                    pba & !7
                );
            }
            cap::CAP_PCIE => {
                let flags = word(o + cap::PCIE_FLAGS);
                let devcap = dword(o + cap::PCIE_DEVCAP);
                let lnkcap = dword(o + cap::PCIE_LNKCAP);
                let kind = match (flags >> 4) & 0xf {
                    0 => "Endpoint",
                    1 => "Legacy Endpoint",
                    9 => "Root Complex Integrated Endpoint",
                    _ => "Other",
                };
                let _ = writeln!(
                    out,
                    "\tCapabilities: [{o:02x}] Express (v{}) {kind}{physical}\n\t\tDevCap: MaxPayload {} bytes, ExtTag{} FLReset{}\n\t\tLnkCap: Speed gen{}, Width x{}",
                    flags & 0xf,
                    128u32 << (devcap & 7),
                    flag(devcap & (1 << 5) != 0),
                    flag(devcap & cap::PCIE_DEVCAP_FLR != 0),
                    lnkcap & 0xf,
                    (lnkcap >> 4) & 0x3f
                );
            }
            cap::CAP_VENDOR => {
                let _ = writeln!(
                    out,
                    "\tCapabilities: [{o:02x}] {name}: Len={:02x}{physical}",
                    byte(o + 2)
                );
            }
            _ => {
                let _ = writeln!(
                    out,
                    "\tCapabilities: [{o:02x}] {name} ({:#04x}), {} bytes{physical}",
                    c.body.id(),
                    c.body.length()
                );
            }
        }
    }
    for c in &layout.ext_capabilities {
        let physical = match c.body {
            ExtCapabilityBody::Physical {
                physical_offset, ..
            } => format!(" (physical @{physical_offset:#x})"),
            _ => String::new(),
        };
        let _ = writeln!(
            out,
            "\tCapabilities: [{:03x} v{}] {} ({:#06x}), {} bytes{physical}",
            c.offset,
            c.version,
            Chain::Extended.name(c.body.id()),
            c.body.id(),
            c.body.length()
        );
    }
    for r in &layout.registers {
        let _ = writeln!(
            out,
            "\tRegister [{:03x}/{}]: value {:#x} virtual {:#x} write {:#x} rw1c {:#x} ({})",
            r.offset,
            r.size,
            r.value,
            r.virtual_mask,
            r.write_mask,
            r.rw1c_mask,
            match r.source {
                RegisterSource::Backend => "rest from backend".to_string(),
                RegisterSource::Physical { offset } => format!("rest from physical @{offset:#x}"),
            }
        );
    }
    out
}
