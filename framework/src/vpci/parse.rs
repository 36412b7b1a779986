//! Reads a vPCI layout file (TOML) into a [`Layout`], refusing bad input with file, line,
//! column and field. Cross-item rules (overlaps, the chain, MSI-X placement) are in
//! [`super::checks`].

use toml::de::DeTable;

use super::checks::{self, Declared};
use super::fields::{Fields, Located, Source};
use crate::layout::LayoutError;
use crate::layout::*;
use crate::pci::cap::Chain;
use crate::pci::regs;

/// The format version this parser reads.
pub const FORMAT_VERSION: u64 = 1;

/// Parses and validates a layout. `file` names the source in error messages.
pub fn parse_layout(file: &str, text: &str) -> Result<Layout, LayoutError> {
    let source = Source { file, text };
    let document = DeTable::parse(text).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        let message = e.message().trim().to_string();
        LayoutError::new(source.location(&span), "<syntax>", message)
    })?;
    let root = Fields::new(source, document.get_ref(), document.span(), String::new());
    let mut declared = Declared::default();

    let vpci = root
        .table("vpci")?
        .ok_or_else(|| root.error("vpci", "missing required table [vpci]"))?;
    let format = vpci.require_uint("format", u64::MAX)?;
    if format.value != FORMAT_VERSION {
        return Err(vpci.error(
            "format",
            format!(
                "unsupported format {} (this reader knows {FORMAT_VERSION})",
                format.value
            ),
        ));
    }
    let name = vpci
        .string("name")?
        .ok_or_else(|| vpci.error("name", "missing required field"))?
        .value;
    let description = vpci
        .string("description")?
        .map(|d| d.value)
        .unwrap_or_default();
    let config_size = match vpci.uint("config_size", u64::from(u16::MAX))? {
        None => 256,
        Some(size) if size.value == 256 || size.value == 4096 => size.value as u16,
        Some(size) => {
            return Err(vpci
                .source()
                .error(&size.span, &size.field, "must be 256 or 4096"));
        }
    };
    let unowned = match vpci.choice("unowned", &["zero", "passthrough"])? {
        Some(v) if v.value == "passthrough" => Unowned::Passthrough,
        _ => Unowned::Zero,
    };
    vpci.finish()?;

    let identity_table = root
        .table("identity")?
        .ok_or_else(|| root.error("identity", "missing required table [identity]"))?;
    let identity = parse_identity(&identity_table)?;

    let mut bars: [Option<Bar>; 6] = Default::default();
    for table in root.tables("bar")? {
        let bar = parse_bar(&table)?;
        let slot = usize::from(bar.index);
        if bars[slot].is_some() {
            return Err(table.error("index", format!("BAR {} is declared twice", bar.index)));
        }
        bars[slot] = Some(bar);
    }
    checks::check_bar_slots(&bars)?;

    let header = match root.table("header")? {
        Some(t) => parse_header(&t, &mut declared)?,
        None => default_header(),
    };
    let rom = root.table("rom")?.map(|t| parse_rom(&t)).transpose()?;

    let mut caps = Vec::new();
    for table in root.tables("capability")? {
        caps.push(parse_capability(&table, &mut declared)?);
    }
    let mut ext_caps = Vec::new();
    for table in root.tables("ext_capability")? {
        ext_caps.push(parse_ext_capability(&table, &mut declared)?);
    }
    let mut registers = Vec::new();
    for table in root.tables("register")? {
        registers.push(parse_register(&table, config_size)?);
    }
    root.finish()?;

    let capabilities = checks::order_chain(caps, &declared)?;
    let ext_capabilities = checks::order_ext_chain(ext_caps, &declared)?;
    let layout = Layout {
        name,
        description,
        config_size,
        unowned,
        identity,
        header,
        bars,
        rom,
        capabilities_pointer: declared.capabilities_pointer.as_ref().map(|p| p.0),
        capabilities,
        ext_capabilities,
        registers,
    };
    checks::check_layout(&layout)?;
    Ok(layout)
}

fn parse_identity(t: &Fields<'_, '_>) -> Result<Identity, LayoutError> {
    let vendor_id = t.require_uint("vendor_id", 0xffff)?;
    if vendor_id.value == 0xffff || vendor_id.value == 0 {
        return Err(t.error(
            "vendor_id",
            "0x0000 and 0xffff are not vendor IDs (0xffff means no device)",
        ));
    }
    let identity = Identity {
        vendor_id: vendor_id.value as u16,
        device_id: t.require_uint("device_id", 0xffff)?.value as u16,
        subsystem_vendor_id: t
            .uint("subsystem_vendor_id", 0xffff)?
            .map_or(0, |v| v.value as u16),
        subsystem_id: t
            .uint("subsystem_id", 0xffff)?
            .map_or(0, |v| v.value as u16),
        class_code: t.require_uint("class_code", 0xff_ffff)?.value as u32,
        revision: t.uint("revision", 0xff)?.map_or(0, |v| v.value as u8),
    };
    t.finish()?;
    Ok(identity)
}

const COMMAND_BITS: &[(&str, u16)] = &[
    ("io", regs::COMMAND_IO),
    ("memory", regs::COMMAND_MEMORY),
    ("bus-master", regs::COMMAND_BUS_MASTER),
    ("special-cycles", regs::COMMAND_SPECIAL),
    ("memory-write-invalidate", regs::COMMAND_MWI),
    ("vga-palette-snoop", regs::COMMAND_VGA_SNOOP),
    ("parity-error-response", regs::COMMAND_PARITY),
    ("serr", regs::COMMAND_SERR),
    ("fast-back-to-back", regs::COMMAND_FAST_B2B),
    ("intx-disable", regs::COMMAND_INTX_DISABLE),
];

const STATUS_FIXED_BITS: &[(&str, u16)] = &[
    ("66mhz", regs::STATUS_66MHZ),
    ("fast-back-to-back", regs::STATUS_FAST_B2B),
];

const STATUS_ERROR_BITS: &[(&str, u16)] = &[
    ("master-data-parity-error", regs::STATUS_MASTER_PARITY),
    ("signaled-target-abort", regs::STATUS_SIG_TARGET_ABORT),
    ("received-target-abort", regs::STATUS_REC_TARGET_ABORT),
    ("received-master-abort", regs::STATUS_REC_MASTER_ABORT),
    ("signaled-system-error", regs::STATUS_SIG_SYSTEM_ERROR),
    ("detected-parity-error", regs::STATUS_DETECTED_PARITY),
];

/// Names of the COMMAND bits, for files and printing.
pub fn command_bit_names(bits: u16) -> Vec<&'static str> {
    names_of(COMMAND_BITS, bits)
}

/// Names of the fixed STATUS bits.
pub fn status_fixed_names(bits: u16) -> Vec<&'static str> {
    names_of(STATUS_FIXED_BITS, bits)
}

/// Names of the STATUS error (RW1C) bits.
pub fn status_error_names(bits: u16) -> Vec<&'static str> {
    names_of(STATUS_ERROR_BITS, bits)
}

fn names_of(table: &[(&'static str, u16)], bits: u16) -> Vec<&'static str> {
    table
        .iter()
        .filter(|(_, b)| bits & b != 0)
        .map(|(n, _)| *n)
        .collect()
}

fn bits_of(table: &[(&str, u16)], names: &[String]) -> u16 {
    names
        .iter()
        .filter_map(|n| table.iter().find(|(name, _)| name == n).map(|(_, b)| *b))
        .fold(0, |acc, b| acc | b)
}

/// The header behaviour when the file has no `[header]` table.
pub fn default_header() -> Header {
    Header {
        command_writable: regs::COMMAND_IO
            | regs::COMMAND_MEMORY
            | regs::COMMAND_BUS_MASTER
            | regs::COMMAND_PARITY
            | regs::COMMAND_SERR
            | regs::COMMAND_INTX_DISABLE,
        status_fixed: 0,
        status_rw1c: regs::STATUS_ERROR_BITS,
        cache_line_size: HeaderSource::Virtual,
        latency_timer: HeaderSource::Virtual,
        multifunction: false,
        interrupt_pin: 0,
    }
}

fn parse_header(t: &Fields<'_, '_>, declared: &mut Declared) -> Result<Header, LayoutError> {
    let mut header = default_header();
    let names = |table: &[(&'static str, u16)]| table.iter().map(|(n, _)| *n).collect::<Vec<_>>();
    if let Some(bits) = t.choices("command_writable", &names(COMMAND_BITS))? {
        header.command_writable = bits_of(COMMAND_BITS, &bits.value);
    }
    if let Some(bits) = t.choices("status", &names(STATUS_FIXED_BITS))? {
        header.status_fixed = bits_of(STATUS_FIXED_BITS, &bits.value);
    }
    if let Some(bits) = t.choices("status_rw1c", &names(STATUS_ERROR_BITS))? {
        header.status_rw1c = bits_of(STATUS_ERROR_BITS, &bits.value);
    }
    let source = |v: Option<Located<String>>| match v {
        Some(v) if v.value == "passthrough" => HeaderSource::Passthrough,
        _ => HeaderSource::Virtual,
    };
    header.cache_line_size = source(t.choice("cache_line_size", &["virtual", "passthrough"])?);
    header.latency_timer = source(t.choice("latency_timer", &["virtual", "passthrough"])?);
    header.multifunction = t.boolean("multifunction")?.is_some_and(|b| b.value);
    header.interrupt_pin = match t.choice("interrupt_pin", &["none", "A", "B", "C", "D"])? {
        None => 0,
        Some(pin) => match pin.value.as_str() {
            "A" => 1,
            "B" => 2,
            "C" => 3,
            "D" => 4,
            _ => 0,
        },
    };
    declared.capabilities_pointer = t
        .uint("capabilities_pointer", 0xff)?
        .map(|p| (p.value as u16, t.source().location(&p.span), p.field));
    t.finish()?;
    Ok(header)
}

fn parse_bar(t: &Fields<'_, '_>) -> Result<Bar, LayoutError> {
    let index = t.require_uint("index", 5)?;
    let kind = match t
        .choice("kind", &["io", "mem32", "mem64"])?
        .ok_or_else(|| t.error("kind", "missing required field (io, mem32 or mem64)"))?
        .value
        .as_str()
    {
        "io" => BarKind::Io,
        "mem32" => BarKind::Memory32,
        _ => BarKind::Memory64,
    };
    let prefetchable = t.boolean("prefetchable")?;
    if let Some(p) = &prefetchable
        && p.value
        && kind == BarKind::Io
    {
        return Err(t.error("prefetchable", "an I/O BAR cannot be prefetchable"));
    }
    let size = t
        .size("size")?
        .ok_or_else(|| t.error("size", "missing required field"))?;
    checks::check_bar_size(t, kind, &size)?;
    if kind == BarKind::Memory64 && index.value == 5 {
        return Err(t.error(
            "kind",
            "a 64-bit BAR cannot sit in slot 5 (it needs slot 6 for its upper half)",
        ));
    }
    let backing = match t
        .choice("backing", &["emulated", "passthrough", "legacy-io"])?
        .map(|b| b.value)
        .as_deref()
    {
        None | Some("emulated") => BarBacking::Emulated,
        Some("legacy-io") => {
            if kind != BarKind::Io {
                return Err(t.error(
                    "backing",
                    "legacy-io backing needs an I/O BAR (kind = \"io\")",
                ));
            }
            BarBacking::LegacyIo
        }
        Some(_) => BarBacking::Passthrough {
            physical_bar: t.uint("physical_bar", 5)?.map_or(index.value, |p| p.value) as u8,
        },
    };
    if !matches!(backing, BarBacking::Passthrough { .. }) && t.uint("physical_bar", 5)?.is_some() {
        return Err(t.error(
            "physical_bar",
            "only a passthrough BAR names a physical BAR",
        ));
    }
    let mut mmap = Vec::new();
    for area in t.tables("mmap")? {
        mmap.push(checks::parse_mmap_area(&area, kind, size.value, &mmap)?);
    }
    t.finish()?;
    let bar = Bar {
        index: index.value as u8,
        kind,
        prefetchable: prefetchable.is_some_and(|p| p.value),
        size: size.value,
        backing,
        mmap,
        origin: origin_of(t),
    };
    Ok(bar)
}

fn parse_rom(t: &Fields<'_, '_>) -> Result<Rom, LayoutError> {
    let size = t
        .size("size")?
        .ok_or_else(|| t.error("size", "missing required field"))?;
    if !size.value.is_power_of_two() || size.value < 2048 || size.value > 1 << 24 {
        return Err(t.error(
            "size",
            format!(
                "ROM size {:#x} must be a power of two from 2 KiB to 16 MiB",
                size.value
            ),
        ));
    }
    let backing = match t
        .choice("backing", &["emulated", "passthrough"])?
        .map(|b| b.value)
        .as_deref()
    {
        Some("passthrough") => RomBacking::Passthrough,
        _ => RomBacking::Emulated,
    };
    t.finish()?;
    Ok(Rom {
        size: size.value,
        backing,
        origin: origin_of(t),
    })
}

/// The `kind` of a `[[capability]]` or `[[ext_capability]]` table, one of the chain's.
fn kind_of(t: &Fields<'_, '_>, chain: Chain) -> Result<Located<String>, LayoutError> {
    let kinds = chain.kinds();
    t.choice("kind", &kinds)?.ok_or_else(|| {
        t.error(
            "kind",
            format!("missing required field (one of: {})", kinds.join(", ")),
        )
    })
}

/// The ID and length of a capability backed by the physical function: the ID is the table's
/// for `kind` (the file's `id` for `raw`), the length the table's when it is fixed, else the
/// file's.
fn physical_backing(
    t: &Fields<'_, '_>,
    chain: Chain,
    kind: &str,
) -> Result<(u16, u16), LayoutError> {
    let id = match chain.by_kind(kind) {
        Some(info) => info.id,
        None => t.require_uint("id", chain.max_id().into())?.value as u16,
    };
    let area = chain.area();
    let header = chain.header_len();
    let length = match (
        chain.fixed_length(id),
        t.uint("length", u64::from(area.end - area.start))?,
    ) {
        (Some(fixed), None) => fixed,
        (Some(fixed), Some(l)) if l.value == u64::from(fixed) => fixed,
        (Some(fixed), Some(_)) => {
            return Err(t.error("length", format!("this capability is {fixed} bytes long")));
        }
        (None, Some(l)) if l.value >= u64::from(header) => l.value as u16,
        (None, Some(_)) => {
            return Err(t.error(
                "length",
                format!(
                    "{} is at least {header} bytes long (its header)",
                    match chain {
                        Chain::Standard => "a capability",
                        Chain::Extended => "an extended capability",
                    }
                ),
            ));
        }
        (None, None) => {
            return Err(t.error(
                "length",
                "a physical capability of this kind needs its length",
            ));
        }
    };
    Ok((id, length))
}

fn parse_capability(
    t: &Fields<'_, '_>,
    declared: &mut Declared,
) -> Result<Capability, LayoutError> {
    let kind = kind_of(t, Chain::Standard)?;
    let offset = t.require_uint("offset", 0xff)?;
    let physical_offset = t.uint("physical_offset", 0xff)?;
    let body = if let Some(physical) = &physical_offset {
        let (id, length) = physical_backing(t, Chain::Standard, &kind.value)?;
        CapabilityBody::Physical {
            id: id as u8,
            physical_offset: physical.value as u16,
            length,
        }
    } else {
        match kind.value.as_str() {
            "pm" => CapabilityBody::Pm(parse_pm(t)?),
            "msi" => CapabilityBody::Msi(parse_msi(t)?),
            "msix" => CapabilityBody::Msix(parse_msix(t)?),
            "pcie" => CapabilityBody::Pcie(parse_pcie(t)?),
            "vendor" => {
                let data = t.bytes("data")?.map(|d| d.value).unwrap_or_default();
                if data.len() > 0xff - 3 {
                    return Err(t.error("data", "a vendor capability is at most 255 bytes long"));
                }
                CapabilityBody::Vendor { data }
            }
            _ => CapabilityBody::Raw {
                id: t.require_uint("id", 0xff)?.value as u8,
                data: t.bytes("data")?.map(|d| d.value).unwrap_or_default(),
            },
        }
    };
    let next = t.uint("next", 0xff)?;
    t.finish()?;
    let capability = Capability {
        offset: offset.value as u16,
        body,
        origin: origin_of(t),
    };
    declared.push_capability(t, &offset, next);
    Ok(capability)
}

fn parse_pm(t: &Fields<'_, '_>) -> Result<PmParams, LayoutError> {
    const PME: &[&str] = &["d0", "d1", "d2", "d3hot", "d3cold"];
    let pme_support = t.choices("pme_from", PME)?.map_or(0, |states| {
        states
            .value
            .iter()
            .filter_map(|s| PME.iter().position(|p| p == s))
            .fold(0u8, |acc, bit| acc | (1 << bit))
    });
    Ok(PmParams {
        version: t.uint("version", 7)?.map_or(3, |v| v.value as u8),
        d1: t.boolean("d1")?.is_some_and(|b| b.value),
        d2: t.boolean("d2")?.is_some_and(|b| b.value),
        pme_support,
        no_soft_reset: t.boolean("no_soft_reset")?.is_none_or(|b| b.value),
    })
}

fn parse_msi(t: &Fields<'_, '_>) -> Result<MsiParams, LayoutError> {
    let vectors = t.uint("vectors", 32)?.map_or(1, |v| v.value);
    if !vectors.is_power_of_two() {
        return Err(t.error("vectors", "MSI offers 1, 2, 4, 8, 16 or 32 vectors"));
    }
    Ok(MsiParams {
        vectors: vectors as u8,
        address_64: t.boolean("address_64")?.is_none_or(|b| b.value),
        per_vector_masking: t.boolean("per_vector_masking")?.is_some_and(|b| b.value),
    })
}

fn parse_msix(t: &Fields<'_, '_>) -> Result<MsixParams, LayoutError> {
    let table_size = t.require_uint("table_size", 2048)?;
    if table_size.value == 0 {
        return Err(t.error("table_size", "an MSI-X table has 1 to 2048 entries"));
    }
    let offset = |key: &str| -> Result<u32, LayoutError> {
        let v = t.require_uint(key, u64::from(u32::MAX))?;
        if v.value % 8 != 0 {
            return Err(t.error(
                key,
                "must be 8-byte aligned (the low 3 bits hold the BAR index)",
            ));
        }
        Ok(v.value as u32)
    };
    Ok(MsixParams {
        table_size: table_size.value as u16,
        table_bar: t.require_uint("table_bar", 5)?.value as u8,
        table_offset: offset("table_offset")?,
        pba_bar: t.require_uint("pba_bar", 5)?.value as u8,
        pba_offset: offset("pba_offset")?,
    })
}

fn parse_pcie(t: &Fields<'_, '_>) -> Result<PcieParams, LayoutError> {
    let device_type = match t
        .choice(
            "device_type",
            &["endpoint", "legacy-endpoint", "rc-integrated-endpoint"],
        )?
        .map(|d| d.value)
        .as_deref()
    {
        Some("legacy-endpoint") => PcieDeviceType::LegacyEndpoint,
        Some("rc-integrated-endpoint") => PcieDeviceType::RcIntegratedEndpoint,
        _ => PcieDeviceType::Endpoint,
    };
    let max_payload = t.uint("max_payload", 4096)?.map_or(128, |v| v.value);
    if !max_payload.is_power_of_two() || max_payload < 128 {
        return Err(t.error(
            "max_payload",
            "max payload is 128, 256, 512, 1024, 2048 or 4096 bytes",
        ));
    }
    let link_speed = t.uint("link_speed", 6)?.map_or(1, |v| v.value);
    if link_speed == 0 {
        return Err(t.error(
            "link_speed",
            "link speed is a PCIe generation from 1 (2.5 GT/s) to 6 (64 GT/s)",
        ));
    }
    let link_width = t.uint("link_width", 32)?.map_or(1, |v| v.value);
    if ![1, 2, 4, 8, 12, 16, 32].contains(&link_width) {
        return Err(t.error("link_width", "link width is 1, 2, 4, 8, 12, 16 or 32 lanes"));
    }
    Ok(PcieParams {
        device_type,
        max_payload: max_payload as u16,
        flr: t.boolean("flr")?.is_none_or(|b| b.value),
        extended_tags: t.boolean("extended_tags")?.is_none_or(|b| b.value),
        link_speed: link_speed as u8,
        link_width: link_width as u8,
    })
}

fn parse_ext_capability(
    t: &Fields<'_, '_>,
    declared: &mut Declared,
) -> Result<ExtCapability, LayoutError> {
    let kind = kind_of(t, Chain::Extended)?;
    let offset = t.require_uint("offset", 0xffc)?;
    let physical_offset = t.uint("physical_offset", 0xffc)?;
    let default_version = match kind.value.as_str() {
        "aer" => 2,
        _ => 1,
    };
    let version = t
        .uint("version", 0xf)?
        .map_or(default_version, |v| v.value as u8);
    let body = if let Some(physical) = &physical_offset {
        let (id, length) = physical_backing(t, Chain::Extended, &kind.value)?;
        ExtCapabilityBody::Physical {
            id,
            physical_offset: physical.value as u16,
            length,
        }
    } else {
        match kind.value.as_str() {
            "aer" => ExtCapabilityBody::Aer,
            "dsn" => ExtCapabilityBody::Dsn {
                serial: t.require_uint("serial", u64::MAX)?.value,
            },
            "acs" => ExtCapabilityBody::Acs {
                capabilities: t.uint("capabilities", 0x7f)?.map_or(0, |v| v.value as u16),
            },
            "ats" => ExtCapabilityBody::Ats {
                invalidate_queue_depth: t
                    .uint("invalidate_queue_depth", 31)?
                    .map_or(0, |v| v.value as u8),
                page_aligned: t.boolean("page_aligned")?.is_none_or(|b| b.value),
            },
            "pri" => ExtCapabilityBody::Pri {
                outstanding_capacity: t
                    .uint("outstanding_capacity", u64::from(u32::MAX))?
                    .map_or(32, |v| v.value as u32),
            },
            "pasid" => {
                let max_width = t.uint("max_width", 20)?.map_or(20, |v| v.value as u8);
                if max_width == 0 {
                    return Err(t.error("max_width", "a PASID is 1 to 20 bits wide"));
                }
                ExtCapabilityBody::Pasid {
                    max_width,
                    execute: t.boolean("execute")?.is_some_and(|b| b.value),
                    privileged: t.boolean("privileged")?.is_some_and(|b| b.value),
                }
            }
            "vsec" => ExtCapabilityBody::Vsec {
                vsec_id: t.require_uint("vsec_id", 0xffff)?.value as u16,
                vsec_rev: t.uint("vsec_rev", 0xf)?.map_or(0, |v| v.value as u8),
                data: t.bytes("data")?.map(|d| d.value).unwrap_or_default(),
            },
            _ => ExtCapabilityBody::Raw {
                id: t.require_uint("id", 0xffff)?.value as u16,
                data: t.bytes("data")?.map(|d| d.value).unwrap_or_default(),
            },
        }
    };
    if body.length() > 0xf00 {
        return Err(t.error("data", "too long for extended config space"));
    }
    t.finish()?;
    let capability = ExtCapability {
        offset: offset.value as u16,
        version,
        body,
        origin: origin_of(t),
    };
    declared.push_ext_capability(t, &offset);
    Ok(capability)
}

fn parse_register(t: &Fields<'_, '_>, config_size: u16) -> Result<RegisterOverride, LayoutError> {
    let offset = t.require_uint("offset", 0xfff)?;
    let size = t.uint("size", 4)?.map_or(4, |s| s.value);
    if ![1, 2, 4].contains(&size) {
        return Err(t.error("size", "a register is 1, 2 or 4 bytes"));
    }
    if offset.value % size != 0 {
        return Err(t.error(
            "offset",
            format!(
                "offset {:#x} is not aligned to the register size {size}",
                offset.value
            ),
        ));
    }
    if offset.value + size > u64::from(config_size) {
        return Err(t.error(
            "offset",
            format!(
                "offset {:#x} is outside the {config_size}-byte config space",
                offset.value
            ),
        ));
    }
    let ones = all_ones(size as u8);
    let mask = |key: &str, default: u32| -> Result<u32, LayoutError> {
        Ok(t.uint(key, u64::from(ones))?
            .map_or(default, |v| v.value as u32))
    };
    let value = mask("value", 0)?;
    let virtual_mask = mask("virtual_mask", ones)?;
    let write_mask = mask("write_mask", 0)?;
    let rw1c_mask = mask("rw1c_mask", 0)?;
    if write_mask & rw1c_mask != 0 {
        return Err(t.error(
            "rw1c_mask",
            "a bit cannot be both writable and write-1-to-clear",
        ));
    }
    let source = match t
        .choice("source", &["physical", "backend"])?
        .map(|s| s.value)
        .as_deref()
    {
        Some("backend") => RegisterSource::Backend,
        _ => RegisterSource::Physical {
            offset: t
                .uint("physical_offset", u64::from(config_size) - size)?
                .map_or(offset.value, |p| p.value) as u16,
        },
    };
    t.finish()?;
    let register = RegisterOverride {
        offset: offset.value as u16,
        size: size as u8,
        value,
        virtual_mask,
        write_mask,
        rw1c_mask,
        source,
        origin: origin_of(t),
    };
    Ok(register)
}

fn origin_of(t: &Fields<'_, '_>) -> Origin {
    Origin {
        location: t.source().location(&t.span()),
        path: t.path().to_string(),
    }
}
