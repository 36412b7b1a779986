//! Compiles a [`Layout`] into a [`ConfigTemplate`]: reset values and per-bit rules of every
//! byte of config space, following how Linux's vfio-pci virtualizes config space.

use std::sync::Arc;

use crate::config::ConfigTemplate;
use crate::config::template::{ByteSource, Hook, TemplateBuilder};
use crate::layout::*;
use crate::pci::cap::{self, Chain};
use crate::pci::regs;

/// Compiles a validated layout.
pub fn compile(layout: Arc<Layout>) -> ConfigTemplate {
    let size = usize::from(layout.config_size);
    let mut b = TemplateBuilder::new(size);
    if layout.unowned == Unowned::Passthrough {
        for offset in regs::HEADER_END..layout.config_size {
            b.physical(offset, 1, offset);
            b.physical_writable(offset, 1, 0xff, 0);
        }
    }
    header(&mut b, &layout);
    bars(&mut b, &layout);
    for (i, c) in layout.capabilities.iter().enumerate() {
        let next = layout.capabilities.get(i + 1).map_or(0, |n| n.offset);
        capability(&mut b, c, next);
    }
    for (i, c) in layout.ext_capabilities.iter().enumerate() {
        let next = layout.ext_capabilities.get(i + 1).map_or(0, |n| n.offset);
        ext_capability(&mut b, c, next);
    }
    if layout.config_size == 4096 && layout.ext_capabilities.is_empty() {
        // No extended capabilities: 0x100 reads 0 (Linux: "if none remain, 0x100 reads 0").
        b.register(regs::EXTENDED_CAPS_START, 4, 0, 0, 0);
    }
    for r in &layout.registers {
        register(&mut b, r);
    }
    b.finish(layout)
}

fn header(b: &mut TemplateBuilder, layout: &Layout) {
    let id = &layout.identity;
    let h = &layout.header;
    b.register(regs::VENDOR_ID, 2, id.vendor_id.into(), 0, 0);
    b.owner(0x00, 0x02, "header.vendor_id");
    b.register(regs::DEVICE_ID, 2, id.device_id.into(), 0, 0);
    b.owner(0x02, 0x04, "header.device_id");
    b.register(regs::COMMAND, 2, 0, h.command_writable.into(), 0);
    b.owner(0x04, 0x06, "header.command");
    let cap_list = if layout.capabilities.is_empty() {
        0
    } else {
        regs::STATUS_CAP_LIST
    };
    b.register(
        regs::STATUS,
        2,
        (h.status_fixed | cap_list).into(),
        0,
        h.status_rw1c.into(),
    );
    b.owner(0x06, 0x08, "header.status");
    b.hook(regs::COMMAND, Hook::Command);
    b.register(regs::REVISION_ID, 1, id.revision.into(), 0, 0);
    b.owner(0x08, 0x09, "header.revision");
    b.register(regs::CLASS_PROG_IF, 1, id.class_code & 0xff, 0, 0);
    b.register(regs::CLASS_PROG_IF + 1, 2, id.class_code >> 8, 0, 0);
    b.owner(0x09, 0x0c, "header.class_code");
    for (offset, source, name) in [
        (
            regs::CACHE_LINE_SIZE,
            h.cache_line_size,
            "header.cache_line_size",
        ),
        (regs::LATENCY_TIMER, h.latency_timer, "header.latency_timer"),
    ] {
        match source {
            HeaderSource::Virtual => b.register(offset, 1, 0, 0xff, 0),
            HeaderSource::Passthrough => {
                b.physical(offset, 1, offset);
                b.physical_writable(offset, 1, 0xff, 0);
            }
        }
        b.owner(offset, offset + 1, name);
    }
    let header_type = if h.multifunction {
        regs::HEADER_TYPE_MULTIFUNCTION
    } else {
        0
    };
    b.register(regs::HEADER_TYPE, 1, header_type.into(), 0, 0);
    b.owner(0x0e, 0x0f, "header.header_type");
    b.register(regs::BIST, 1, 0, 0, 0);
    b.owner(0x0f, 0x10, "header.bist");
    b.register(regs::CARDBUS_CIS, 4, 0, 0, 0);
    b.owner(0x28, 0x2c, "header.cardbus_cis");
    b.register(
        regs::SUBSYSTEM_VENDOR_ID,
        2,
        id.subsystem_vendor_id.into(),
        0,
        0,
    );
    b.owner(0x2c, 0x2e, "header.subsystem_vendor_id");
    b.register(regs::SUBSYSTEM_ID, 2, id.subsystem_id.into(), 0, 0);
    b.owner(0x2e, 0x30, "header.subsystem_id");
    let pointer = layout
        .capabilities_pointer
        .or_else(|| layout.capabilities.first().map(|c| c.offset))
        .unwrap_or(0);
    b.register(regs::CAPABILITIES_POINTER, 1, pointer.into(), 0, 0);
    b.owner(0x34, 0x35, "header.capabilities_pointer");
    b.owner(0x35, 0x3c, "header.reserved");
    b.register(regs::INTERRUPT_LINE, 1, 0, 0xff, 0);
    b.owner(0x3c, 0x3d, "header.interrupt_line");
    b.register(regs::INTERRUPT_PIN, 1, h.interrupt_pin.into(), 0, 0);
    b.owner(0x3d, 0x3e, "header.interrupt_pin");
    b.owner(0x3e, 0x40, "header.min_gnt_max_lat");
}

fn bars(b: &mut TemplateBuilder, layout: &Layout) {
    for bar in layout.bars.iter().flatten() {
        let offset = regs::bar_offset(usize::from(bar.index));
        let size_mask = !(bar.size - 1);
        let (type_bits, low_fixed) = match bar.kind {
            BarKind::Io => (regs::BAR_IO, 0x3),
            BarKind::Memory32 => (
                if bar.prefetchable {
                    regs::BAR_PREFETCH
                } else {
                    0
                },
                0xf,
            ),
            BarKind::Memory64 => (
                regs::BAR_MEM_64
                    | if bar.prefetchable {
                        regs::BAR_PREFETCH
                    } else {
                        0
                    },
                0xf,
            ),
        };
        // A BAR's address bits below its size read 0; sizing (write ones, read back) follows.
        b.register(offset, 4, type_bits, (size_mask as u32) & !low_fixed, 0);
        b.owner(offset, offset + 4, format!("bar[{}]", bar.index));
        if bar.kind == BarKind::Memory64 {
            b.register(offset + 4, 4, 0, (size_mask >> 32) as u32, 0);
            b.owner(offset + 4, offset + 8, format!("bar[{}].upper", bar.index));
        }
    }
    for index in 0..regs::BAR_COUNT {
        let offset = regs::bar_offset(index);
        let upper_of_64 = index > 0
            && layout
                .bar(index as u8 - 1)
                .is_some_and(|b| b.kind == BarKind::Memory64);
        if layout.bar(index as u8).is_none() && !upper_of_64 {
            b.owner(offset, offset + 4, format!("bar[{index}] (unimplemented)"));
        }
    }
    match &layout.rom {
        Some(rom) => {
            let write = (!(rom.size - 1) as u32 & regs::ROM_ADDRESS_MASK) | regs::ROM_ENABLE;
            b.register(regs::ROM_ADDRESS, 4, 0, write, 0);
            b.owner(0x30, 0x34, "rom");
        }
        None => b.owner(0x30, 0x34, "rom (unimplemented)"),
    }
}

fn capability(b: &mut TemplateBuilder, c: &Capability, next: u16) {
    let o = c.offset;
    let len = c.body.length();
    match &c.body {
        CapabilityBody::Pm(p) => pm(b, o, p),
        CapabilityBody::Msi(p) => msi(b, o, p),
        CapabilityBody::Msix(p) => msix(b, o, p),
        CapabilityBody::Pcie(p) => pcie(b, o, p),
        CapabilityBody::Vendor { data } => {
            b.register(o + 2, 1, u32::from(len), 0, 0);
            bytes(b, o + 3, data);
        }
        CapabilityBody::Raw { data, .. } => bytes(b, o + 2, data),
        CapabilityBody::Physical {
            id,
            physical_offset,
            length,
        } => {
            b.physical(o + 2, length - 2, physical_offset + 2);
            physical_rules(b, o, *id, *length);
        }
    }
    // The header is always virtual: the chain is the layout's, not the hardware's.
    b.register(o, 1, c.body.id().into(), 0, 0);
    b.register(o + 1, 1, next.into(), 0, 0);
    b.owner(
        o,
        o + len,
        format!(
            "capability {} @{o:#x}",
            Chain::Standard.name(c.body.id().into())
        ),
    );
}

fn bytes(b: &mut TemplateBuilder, offset: u16, data: &[u8]) {
    for (i, byte) in data.iter().enumerate() {
        b.register(offset + i as u16, 1, (*byte).into(), 0, 0);
    }
}

fn pm(b: &mut TemplateBuilder, o: u16, p: &PmParams) {
    let pmc = u32::from(p.version & 7)
        | if p.d1 { 1 << 9 } else { 0 }
        | if p.d2 { 1 << 10 } else { 0 }
        | (u32::from(p.pme_support & 0x1f) << 11);
    b.register(o + cap::PM_PMC, 2, pmc, 0, 0);
    let pmcsr = if p.no_soft_reset {
        cap::PM_PMCSR_NO_SOFT_RESET
    } else {
        0
    };
    let pme = if p.pme_support != 0 {
        cap::PM_PMCSR_PME_ENABLE
    } else {
        0
    };
    let rw1c = if p.pme_support != 0 {
        cap::PM_PMCSR_PME_STATUS
    } else {
        0
    };
    b.register(
        o + cap::PM_PMCSR,
        2,
        pmcsr.into(),
        (cap::PM_PMCSR_POWER_STATE | pme).into(),
        rw1c.into(),
    );
    b.register(o + 6, 2, 0, 0, 0);
    b.hook(
        o + cap::PM_PMCSR,
        Hook::PmCsr {
            offset: o + cap::PM_PMCSR,
            d1: p.d1,
            d2: p.d2,
        },
    );
}

fn msi(b: &mut TemplateBuilder, o: u16, p: &MsiParams) {
    let mmc = u16::from(p.vectors.trailing_zeros() as u8) << 1;
    let flags =
        mmc | if p.address_64 {
            cap::MSI_FLAGS_64BIT
        } else {
            0
        } | if p.per_vector_masking {
            cap::MSI_FLAGS_MASKBIT
        } else {
            0
        };
    b.register(
        o + cap::MSI_FLAGS,
        2,
        flags.into(),
        (cap::MSI_FLAGS_ENABLE | cap::MSI_FLAGS_QSIZE).into(),
        0,
    );
    b.hook(o, Hook::MsiFlags(o));
    b.register(o + 4, 4, 0, 0xffff_fffc, 0);
    let mut at = o + 8;
    if p.address_64 {
        b.register(at, 4, 0, 0xffff_ffff, 0);
        at += 4;
    }
    b.register(at, 2, 0, 0xffff, 0);
    if p.per_vector_masking {
        b.register(at + 2, 2, 0, 0, 0);
        let vectors_mask = if p.vectors == 32 {
            u32::MAX
        } else {
            (1u32 << p.vectors) - 1
        };
        b.register(at + 4, 4, 0, vectors_mask, 0);
        b.register(at + 8, 4, 0, 0, 0);
    }
}

fn msix(b: &mut TemplateBuilder, o: u16, p: &MsixParams) {
    b.register(
        o + cap::MSIX_FLAGS,
        2,
        u32::from(p.table_size - 1),
        (cap::MSIX_FLAGS_ENABLE | cap::MSIX_FLAGS_MASKALL).into(),
        0,
    );
    b.hook(o, Hook::MsixFlags(o));
    b.register(
        o + cap::MSIX_TABLE,
        4,
        p.table_offset | u32::from(p.table_bar),
        0,
        0,
    );
    b.register(
        o + cap::MSIX_PBA,
        4,
        p.pba_offset | u32::from(p.pba_bar),
        0,
        0,
    );
}

fn pcie(b: &mut TemplateBuilder, o: u16, p: &PcieParams) {
    let has_link = p.device_type != PcieDeviceType::RcIntegratedEndpoint;
    b.register(
        o + cap::PCIE_FLAGS,
        2,
        2 | (u32::from(p.device_type.code()) << 4),
        0,
        0,
    );
    let mps = u32::from(p.max_payload.trailing_zeros() as u16 - 7);
    let devcap = mps
        | if p.extended_tags { 1 << 5 } else { 0 }
        | (1 << 15) // role-based error reporting
        | if p.flr { cap::PCIE_DEVCAP_FLR } else { 0 };
    b.register(o + cap::PCIE_DEVCAP, 4, devcap, 0, 0);
    // DEVCTL reset value: relaxed ordering, no snoop, max read request 512 bytes.
    let devctl = (1 << 4) | (1 << 11) | (2 << 12);
    let flr = if p.flr { cap::PCIE_DEVCTL_FLR } else { 0 };
    b.register(
        o + cap::PCIE_DEVCTL,
        2,
        devctl,
        u32::from(cap::PCIE_DEVCTL_WRITABLE | flr),
        0,
    );
    b.register(o + cap::PCIE_DEVSTA, 2, 0, 0, cap::PCIE_DEVSTA_RW1C.into());
    b.hook(o + cap::PCIE_DEVCTL, Hook::PcieDevctl(o + cap::PCIE_DEVCTL));
    if has_link {
        let lnkcap = u32::from(p.link_speed) | (u32::from(p.link_width) << 4);
        b.register(o + cap::PCIE_LNKCAP, 4, lnkcap, 0, 0);
        b.register(
            o + cap::PCIE_LNKCTL,
            2,
            0,
            cap::PCIE_LNKCTL_WRITABLE.into(),
            0,
        );
        let lnksta = u32::from(p.link_speed) | (u32::from(p.link_width) << 4);
        b.register(o + cap::PCIE_LNKSTA, 2, lnksta, 0, 0);
        // Supported link speeds vector: every generation up to the maximum.
        let speeds = ((1u32 << p.link_speed) - 1) << 1;
        b.register(o + cap::PCIE_LNKCAP2, 4, speeds, 0, 0);
        b.register(o + cap::PCIE_LNKCTL2, 2, u32::from(p.link_speed), 0, 0);
    }
    b.register(
        o + cap::PCIE_DEVCTL2,
        2,
        0,
        cap::PCIE_DEVCTL2_WRITABLE.into(),
        0,
    );
}

/// Which bits of a physical-backed capability are writable or trapped, per kind.
fn physical_rules(b: &mut TemplateBuilder, o: u16, id: u8, length: u16) {
    match id {
        cap::CAP_PM => {
            // The power state is trapped (virtual); the rest is read from the hardware.
            b.virtualize(
                o + cap::PM_PMCSR,
                2,
                cap::PM_PMCSR_POWER_STATE.into(),
                0,
                cap::PM_PMCSR_POWER_STATE.into(),
            );
            b.hook(
                o + cap::PM_PMCSR,
                Hook::PmCsr {
                    offset: o + cap::PM_PMCSR,
                    d1: false,
                    d2: false,
                },
            );
        }
        cap::CAP_MSI => {
            // Enable and vector count only through the interrupt path: virtual.
            let mask = u32::from(cap::MSI_FLAGS_ENABLE | cap::MSI_FLAGS_QSIZE);
            b.virtualize(o + cap::MSI_FLAGS, 2, mask, 0, mask);
            b.hook(o, Hook::MsiFlags(o));
        }
        cap::CAP_MSIX => {
            let mask = u32::from(cap::MSIX_FLAGS_ENABLE | cap::MSIX_FLAGS_MASKALL);
            b.virtualize(o + cap::MSIX_FLAGS, 2, mask, 0, mask);
            b.hook(o, Hook::MsixFlags(o));
        }
        cap::CAP_PCIE => {
            b.physical_writable(o + cap::PCIE_DEVCTL, 2, cap::PCIE_DEVCTL_WRITABLE.into(), 0);
            b.physical_writable(o + cap::PCIE_DEVSTA, 2, 0, cap::PCIE_DEVSTA_RW1C.into());
            b.physical_writable(
                o + cap::PCIE_DEVCTL2,
                2,
                cap::PCIE_DEVCTL2_WRITABLE.into(),
                0,
            );
            let flr = u32::from(cap::PCIE_DEVCTL_FLR);
            b.virtualize(o + cap::PCIE_DEVCTL, 2, flr, 0, flr);
            b.hook(o + cap::PCIE_DEVCTL, Hook::PcieDevctl(o + cap::PCIE_DEVCTL));
        }
        cap::CAP_VENDOR => {
            // Vendor-specific registers take raw writes, as in Linux.
            for i in 3..length {
                b.physical_writable(o + i, 1, 0xff, 0);
            }
        }
        _ => {}
    }
}

fn ext_capability(b: &mut TemplateBuilder, c: &ExtCapability, next: u16) {
    let o = c.offset;
    let len = c.body.length();
    match &c.body {
        ExtCapabilityBody::Aer => {
            b.register(o + 0x04, 4, 0, 0, 0x03ff_f030); // uncorrectable status
            b.register(o + 0x08, 4, 0, 0x03ff_f030, 0); // uncorrectable mask
            b.register(o + 0x0c, 4, 0x0046_2030, 0x03ff_f030, 0); // severity
            b.register(o + 0x10, 4, 0, 0, 0x0000_f1c1); // correctable status
            b.register(o + 0x14, 4, 0x2000, 0x0000_f1c1, 0); // correctable mask
            b.register(o + 0x18, 4, 0, 0, 0); // capabilities and control
        }
        ExtCapabilityBody::Dsn { serial } => {
            b.register(o + 4, 4, *serial as u32, 0, 0);
            b.register(o + 8, 4, (*serial >> 32) as u32, 0, 0);
        }
        ExtCapabilityBody::Acs { capabilities } => {
            b.register(o + 4, 2, (*capabilities).into(), 0, 0);
            b.register(o + 6, 2, 0, (*capabilities).into(), 0);
        }
        ExtCapabilityBody::Ats {
            invalidate_queue_depth,
            page_aligned,
        } => {
            let capability =
                u32::from(*invalidate_queue_depth & 0x1f) | if *page_aligned { 1 << 5 } else { 0 };
            b.register(o + 4, 2, capability, 0, 0);
            b.register(o + 6, 2, 0, 0x801f, 0);
        }
        ExtCapabilityBody::Pri {
            outstanding_capacity,
        } => {
            b.register(o + 4, 2, 0, 0x0001, 0);
            b.register(o + 6, 2, 1 << 8, 0, 0x0003);
            b.register(o + 8, 4, *outstanding_capacity, 0, 0);
            b.register(o + 12, 4, 0, 0xffff_ffff, 0);
        }
        ExtCapabilityBody::Pasid {
            max_width,
            execute,
            privileged,
        } => {
            let capability = (u32::from(*max_width) << 8)
                | if *execute { 1 << 1 } else { 0 }
                | if *privileged { 1 << 2 } else { 0 };
            let control =
                1 | if *execute { 1 << 1 } else { 0 } | if *privileged { 1 << 2 } else { 0 };
            b.register(o + 4, 2, capability, 0, 0);
            b.register(o + 6, 2, 0, control, 0);
        }
        ExtCapabilityBody::Vsec {
            vsec_id,
            vsec_rev,
            data,
        } => {
            let header =
                u32::from(*vsec_id) | (u32::from(*vsec_rev & 0xf) << 16) | (u32::from(len) << 20);
            b.register(o + 4, 4, header, 0, 0);
            bytes(b, o + 8, data);
        }
        ExtCapabilityBody::Raw { data, .. } => bytes(b, o + 4, data),
        ExtCapabilityBody::Physical {
            id,
            physical_offset,
            length,
        } => {
            b.physical(o + 4, length - 4, physical_offset + 4);
            if *id == cap::EXT_CAP_AER {
                b.physical_writable(o + 0x04, 4, 0, 0x03ff_f030);
                b.physical_writable(o + 0x08, 4, 0x03ff_f030, 0);
                b.physical_writable(o + 0x0c, 4, 0x03ff_f030, 0);
                b.physical_writable(o + 0x10, 4, 0, 0x0000_f1c1);
                b.physical_writable(o + 0x14, 4, 0x0000_f1c1, 0);
            }
        }
    }
    b.register(
        o,
        4,
        cap::ext_cap_header(c.body.id(), c.version, next),
        0,
        0,
    );
    b.owner(
        o,
        o + len,
        format!(
            "ext capability {} @{o:#x}",
            Chain::Extended.name(c.body.id())
        ),
    );
}

fn register(b: &mut TemplateBuilder, r: &RegisterOverride) {
    for i in 0..u16::from(r.size) {
        let at = usize::from(r.offset + i);
        let shift = 8 * i;
        let virt = (r.virtual_mask >> shift) as u8;
        b.reset[at] = (r.value >> shift) as u8 & virt;
        b.virt[at] = virt;
        b.write[at] = (r.write_mask >> shift) as u8;
        b.rw1c[at] = (r.rw1c_mask >> shift) as u8;
        b.source[at] = if virt == 0xff {
            ByteSource::Virtual
        } else {
            match r.source {
                RegisterSource::Physical { offset } => ByteSource::Physical(offset + i),
                RegisterSource::Backend => ByteSource::Backend,
            }
        };
    }
}
