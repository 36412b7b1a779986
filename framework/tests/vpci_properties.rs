//! Property tests: generated valid layouts compile, an independent walker (pci-driver) finds
//! every declared capability, writes change only writable bits, RW1C bits clear, BAR sizing
//! reads back the declared size and type.

use std::fmt::Write;
use std::sync::Arc;

use pci_driver::config::PciConfig;
use pci_driver::config::caps::Capability;
use pci_driver::config::ext_caps::ExtendedCapability;
use pci_driver::regions::{AsPciSubregion, BackedByPciSubregion, PciMemoryRegion};
use proptest::prelude::*;
use vfio_variant::config::{ConfigSpace, NoBacking};
use vfio_variant::layout::BarKind;
use vfio_variant::vpci::compile::compile;
use vfio_variant::vpci::{Layout, parse_layout};

#[derive(Debug, Clone)]
enum Cap {
    Pm,
    Msi {
        vectors_log2: u8,
        address_64: bool,
        masking: bool,
    },
    Msix {
        entries: u16,
    },
    Pcie,
    Vendor {
        len: u8,
    },
    Raw {
        id: u8,
        len: u8,
    },
}

#[derive(Debug, Clone)]
enum Ext {
    Aer,
    Dsn,
    Acs,
    Ats,
    Pri,
    Pasid,
    Vsec { len: u8 },
}

#[derive(Debug, Clone)]
struct Spec {
    extended: bool,
    bars: Vec<(u8, u8, bool)>,
    caps: Vec<(Cap, u8)>,
    ext: Vec<(Ext, u8)>,
    pin: u8,
}

fn cap_strategy() -> impl Strategy<Value = Cap> {
    prop_oneof![
        Just(Cap::Pm),
        (0u8..=5, any::<bool>(), any::<bool>()).prop_map(|(v, a, m)| Cap::Msi {
            vectors_log2: v,
            address_64: a,
            masking: m
        }),
        (1u16..=64).prop_map(|entries| Cap::Msix { entries }),
        Just(Cap::Pcie),
        (0u8..24).prop_map(|len| Cap::Vendor { len }),
        (0x12u8..0x14, 0u8..12).prop_map(|(id, len)| Cap::Raw { id, len }),
    ]
}

fn ext_strategy() -> impl Strategy<Value = Ext> {
    prop_oneof![
        Just(Ext::Aer),
        Just(Ext::Dsn),
        Just(Ext::Acs),
        Just(Ext::Ats),
        Just(Ext::Pri),
        Just(Ext::Pasid),
        (0u8..32).prop_map(|len| Ext::Vsec { len }),
    ]
}

fn spec_strategy() -> impl Strategy<Value = Spec> {
    (
        any::<bool>(),
        prop::collection::vec((0u8..4, 0u8..21, any::<bool>()), 6),
        prop::collection::vec((cap_strategy(), 0u8..3), 0..7),
        prop::collection::vec((ext_strategy(), 0u8..3), 0..6),
        0u8..5,
    )
        .prop_map(|(extended, bars, caps, ext, pin)| Spec {
            extended,
            bars,
            caps,
            ext,
            pin,
        })
}

/// Builds a valid layout file from a spec, skipping what would be invalid.
fn layout_text(spec: &Spec) -> String {
    let mut t = String::new();
    let size = if spec.extended { 4096 } else { 256 };
    let pins = ["none", "A", "B", "C", "D"];
    let _ = write!(
        t,
        "[vpci]\nformat = 1\nname = \"generated\"\nconfig_size = {size}\n[identity]\nvendor_id = 0x1234\ndevice_id = 0x5678\nsubsystem_vendor_id = 0x1af4\nsubsystem_id = 7\nclass_code = 0x020000\nrevision = 3\n[header]\ninterrupt_pin = \"{}\"\n",
        pins[usize::from(spec.pin)]
    );
    let mut memory_bar: Option<(u8, u64)> = None;
    let mut slot = 0usize;
    while slot < 6 {
        let (kind, size_log2, prefetch) = spec.bars[slot];
        let index = slot;
        slot += 1;
        let (name, size) = match kind {
            0 => continue,
            1 => ("io", 1u64 << (2 + size_log2 % 7)),
            2 => ("mem32", 1u64 << (4 + size_log2)),
            _ if index == 5 => continue,
            _ => {
                slot += 1;
                ("mem64", 1u64 << (4 + size_log2))
            }
        };
        let prefetch = prefetch && name != "io";
        let _ = write!(
            t,
            "[[bar]]\nindex = {index}\nkind = \"{name}\"\nprefetchable = {prefetch}\nsize = {size}\n"
        );
        if name != "io" && memory_bar.is_none() {
            memory_bar = Some((index as u8, size));
        }
    }
    let mut offset = 0x40u32;
    let mut has_pcie = false;
    let mut seen: Vec<u8> = Vec::new();
    for (cap, gap) in &spec.caps {
        let (body, len, id) = match cap {
            Cap::Pm => (
                "kind = \"pm\"\nd1 = true\npme_from = [\"d0\", \"d3hot\"]\n".to_string(),
                8,
                1,
            ),
            Cap::Msi {
                vectors_log2,
                address_64,
                masking,
            } => {
                let len = match (address_64, masking) {
                    (false, false) => 10,
                    (true, false) => 14,
                    (false, true) => 20,
                    (true, true) => 24,
                };
                (
                    format!(
                        "kind = \"msi\"\nvectors = {}\naddress_64 = {address_64}\nper_vector_masking = {masking}\n",
                        1 << vectors_log2
                    ),
                    len,
                    5,
                )
            }
            Cap::Msix { entries } => {
                let Some((bar, size)) = memory_bar else {
                    continue;
                };
                let table = u64::from(*entries) * 16;
                let pba = table.div_ceil(8) * 8;
                if pba + u64::from(*entries).div_ceil(64) * 8 > size {
                    continue;
                }
                (
                    format!(
                        "kind = \"msix\"\ntable_size = {entries}\ntable_bar = {bar}\ntable_offset = 0\npba_bar = {bar}\npba_offset = {pba}\n"
                    ),
                    12,
                    0x11,
                )
            }
            Cap::Pcie => ("kind = \"pcie\"\nmax_payload = 512\n".to_string(), 60, 0x10),
            Cap::Vendor { len } => {
                let data: Vec<String> = (0..*len).map(|i| format!("{i}")).collect();
                (
                    format!("kind = \"vendor\"\ndata = [{}]\n", data.join(", ")),
                    3 + u32::from(*len),
                    9,
                )
            }
            Cap::Raw { id, len } => {
                let data: Vec<String> = (0..*len).map(|i| format!("{}", 255 - i)).collect();
                (
                    format!("kind = \"raw\"\nid = {id}\ndata = [{}]\n", data.join(", ")),
                    2 + u32::from(*len),
                    *id,
                )
            }
        };
        if id != 9 && seen.contains(&id) {
            continue;
        }
        let at = offset + u32::from(*gap) * 4;
        if at + len > 0x100 {
            break;
        }
        seen.push(id);
        has_pcie |= id == 0x10;
        let _ = write!(t, "[[capability]]\noffset = {at:#x}\n{body}");
        offset = (at + len).div_ceil(4) * 4;
    }
    if spec.extended && has_pcie {
        let mut offset = 0x100u32;
        let mut seen: Vec<&str> = Vec::new();
        for (i, (ext, gap)) in spec.ext.iter().enumerate() {
            let (kind, body, len) = match ext {
                Ext::Aer => ("aer", String::new(), 0x48),
                Ext::Dsn => ("dsn", "serial = 0x0123456789abcdef\n".to_string(), 12),
                Ext::Acs => ("acs", "capabilities = 0x1f\n".to_string(), 8),
                Ext::Ats => ("ats", String::new(), 8),
                Ext::Pri => ("pri", String::new(), 16),
                Ext::Pasid => (
                    "pasid",
                    "max_width = 16\nprivileged = true\n".to_string(),
                    8,
                ),
                Ext::Vsec { len } => {
                    let data: Vec<String> = (0..*len).map(|i| format!("{i}")).collect();
                    (
                        "vsec",
                        format!("vsec_id = 0x23\ndata = [{}]\n", data.join(", ")),
                        8 + u32::from(*len),
                    )
                }
            };
            if kind != "vsec" && seen.contains(&kind) {
                continue;
            }
            let at = if i == 0 {
                offset
            } else {
                offset + u32::from(*gap) * 4
            };
            if at + len > 0x1000 {
                break;
            }
            seen.push(kind);
            let _ = write!(
                t,
                "[[ext_capability]]\nkind = \"{kind}\"\noffset = {at:#x}\n{body}"
            );
            offset = (at + len).div_ceil(4) * 4;
        }
    }
    t
}

fn compiled(spec: &Spec) -> (Arc<Layout>, ConfigSpace) {
    let text = layout_text(spec);
    let layout =
        Arc::new(parse_layout("generated", &text).unwrap_or_else(|e| panic!("{e}\n{text}")));
    let space = ConfigSpace::new(Arc::new(compile(Arc::clone(&layout))));
    (layout, space)
}

fn read_all(space: &ConfigSpace) -> Vec<u8> {
    let mut bytes = vec![0u8; space.size()];
    space.read(0, &mut bytes, &NoBacking).unwrap();
    bytes
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn valid_layouts_compile_and_write_back_equal(spec in spec_strategy()) {
        let (layout, _) = compiled(&spec);
        let again = parse_layout("emitted", &layout.to_toml()).unwrap();
        prop_assert_eq!(&*layout, &again);
    }

    #[test]
    fn independent_walker_finds_every_capability(spec in spec_strategy()) {
        let (layout, space) = compiled(&spec);
        let bytes = read_all(&space);
        let region = PciMemoryRegion::new(&bytes);
        let config = PciConfig::backed_by(&region);
        let found: Vec<(u64, u8)> = config
            .capabilities()
            .unwrap()
            .iter()
            .map(|c| (c.as_subregion().offset_in_underlying_region(), c.header().capability_id().read().unwrap()))
            .collect();
        let declared: Vec<(u64, u8)> = layout.capabilities.iter().map(|c| (u64::from(c.offset), c.body.id())).collect();
        prop_assert_eq!(found, declared);
        if !layout.ext_capabilities.is_empty() {
            let found: Vec<(u64, u16)> = config
                .extended_capabilities()
                .unwrap()
                .iter()
                .map(|c| (c.as_subregion().offset_in_underlying_region(), c.header().capability_id().read().unwrap()))
                .collect();
            let declared: Vec<(u64, u16)> =
                layout.ext_capabilities.iter().map(|c| (u64::from(c.offset), c.body.id())).collect();
            prop_assert_eq!(found, declared);
        }
    }

    #[test]
    fn writes_change_only_writable_bits(spec in spec_strategy(), writes in prop::collection::vec((0u16..4096, 0usize..3, any::<u32>()), 1..64)) {
        let (_, mut space) = compiled(&spec);
        let template = Arc::clone(space.template());
        for (offset, width, value) in writes {
            let len = [1usize, 2, 4][width];
            let offset = u64::from(offset) % space.size() as u64;
            if offset as usize + len > space.size() {
                let refused = space.write(offset, &value.to_le_bytes()[..len], &NoBacking, &mut |_| {}).is_err();
                prop_assert!(refused, "a write past the end is refused");
                continue;
            }
            let before = read_all(&space);
            space.write(offset, &value.to_le_bytes()[..len], &NoBacking, &mut |_| {}).unwrap();
            let after = read_all(&space);
            for i in 0..space.size() {
                let changed = before[i] ^ after[i];
                let allowed = template.write_mask()[i] | template.rw1c_mask()[i];
                prop_assert_eq!(changed & !allowed, 0, "byte {:#x} changed {:#04x}, writable {:#04x}", i, changed, allowed);
                // RW1C bits only ever go from 1 to 0 on a guest write.
                prop_assert_eq!(after[i] & !before[i] & template.rw1c_mask()[i], 0);
            }
        }
    }

    #[test]
    fn rw1c_bits_clear_when_written_with_ones(spec in spec_strategy(), set in any::<u32>(), clear in any::<u32>()) {
        let (_, mut space) = compiled(&spec);
        let template = Arc::clone(space.template());
        let rw1c: Vec<usize> = (0..space.size() / 4).map(|d| d * 4).filter(|d| template.rw1c_mask()[*d..d + 4].iter().any(|m| *m != 0)).collect();
        for dword in rw1c {
            space.set_rw1c_bits(dword as u16, &set.to_le_bytes()).unwrap();
            let mut before = [0u8; 4];
            space.read(dword as u64, &mut before, &NoBacking).unwrap();
            space.write(dword as u64, &clear.to_le_bytes(), &NoBacking, &mut |_| {}).unwrap();
            let mut after = [0u8; 4];
            space.read(dword as u64, &mut after, &NoBacking).unwrap();
            for i in 0..4 {
                let mask = template.rw1c_mask()[dword + i];
                prop_assert_eq!(after[i] & mask, before[i] & mask & !clear.to_le_bytes()[i]);
            }
        }
    }

    #[test]
    fn bar_sizing_reads_back_declared_size_and_type(spec in spec_strategy()) {
        let (layout, mut space) = compiled(&spec);
        for index in 0..6u8 {
            let offset = 0x10 + 4 * u64::from(index);
            space.write(offset, &[0xff; 4], &NoBacking, &mut |_| {}).unwrap();
        }
        let bytes = read_all(&space);
        let dword = |o: usize| u32::from_le_bytes([bytes[o], bytes[o + 1], bytes[o + 2], bytes[o + 3]]);
        for index in 0..6u8 {
            let low = dword(0x10 + 4 * usize::from(index));
            match layout.bar(index) {
                None => {
                    let upper_half = index > 0 && layout.bar(index - 1).is_some_and(|b| b.kind == BarKind::Memory64);
                    if !upper_half {
                        prop_assert_eq!(low, 0, "unimplemented BAR {} reads 0", index);
                    }
                }
                Some(bar) => {
                    let (size, kind) = match bar.kind {
                        BarKind::Io => (u64::from(!(low & !0x3)).wrapping_add(1) & 0xffff_ffff, low & 1),
                        BarKind::Memory32 => (u64::from(!(low & !0xf)) + 1, low & 0x7),
                        BarKind::Memory64 => {
                            let high = dword(0x14 + 4 * usize::from(index));
                            let both = (u64::from(high) << 32) | u64::from(low & !0xf);
                            ((!both).wrapping_add(1), low & 0x7)
                        }
                    };
                    let expected_kind = match bar.kind {
                        BarKind::Io => 1,
                        BarKind::Memory32 => 0,
                        BarKind::Memory64 => 4,
                    };
                    prop_assert_eq!(kind, expected_kind);
                    if bar.kind != BarKind::Io {
                        prop_assert_eq!(low & 0x8 != 0, bar.prefetchable);
                    }
                    prop_assert_eq!(size, bar.size, "BAR {} low {:#x}", index, low);
                }
            }
        }
    }
}
