//! `derive` round trip on real config spaces captured from QEMU's emulated devices
//! (tests/data/pci, see its README): the derived layout, compiled and read back through the
//! config-space emulation, shows the source's identity, BAR types and sizes, and capability
//! chain, minus what the quirks table hides.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use pci_driver::config::PciConfig;
use pci_driver::config::caps::Capability;
use pci_driver::config::ext_caps::ExtendedCapability;
use pci_driver::regions::{AsPciSubregion, BackedByPciSubregion, PciMemoryRegion};
use vfio_variant::config::{ConfigSpace, PhysicalFunctionBacking};
use vfio_variant::layout::BarKind;
use vfio_variant::pci::cap;
use vfio_variant::physical::PhysicalDescription;
use vfio_variant::physical::captured::CapturedFunction;
use vfio_variant::physical::sysfs::describe_sysfs_dir;
use vfio_variant::vpci::bind::bind;
use vfio_variant::vpci::compile::compile;
use vfio_variant::vpci::derive::{DeriveOptions, derive};
use vfio_variant::vpci::parse_layout;

fn captured() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/pci");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("config").is_file())
        .collect();
    dirs.sort();
    assert!(
        dirs.len() >= 8,
        "captured config spaces are missing from {}",
        root.display()
    );
    dirs
}

/// Standard and extended capabilities as (offset, ID), in chain order.
type Chains = (Vec<(u64, u8)>, Vec<(u64, u16)>);

fn chains(config: &[u8]) -> Chains {
    let region = PciMemoryRegion::new(config);
    let pci = PciConfig::backed_by(&region);
    let standard = pci
        .capabilities()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c.as_subregion().offset_in_underlying_region(),
                c.header().capability_id().read().unwrap(),
            )
        })
        .collect();
    let extended = if config.len() == 4096 && standard_has_pcie(&pci) {
        pci.extended_capabilities()
            .unwrap()
            .iter()
            .map(|c| {
                (
                    c.as_subregion().offset_in_underlying_region(),
                    c.header().capability_id().read().unwrap(),
                )
            })
            .filter(|(_, id)| *id != 0)
            .collect()
    } else {
        Vec::new()
    };
    (standard, extended)
}

fn standard_has_pcie(pci: &PciConfig<'_>) -> bool {
    pci.capabilities()
        .unwrap()
        .iter()
        .any(|c| c.header().capability_id().read().unwrap() == cap::CAP_PCIE)
}

fn sized_bars(
    space: &mut ConfigSpace,
    backing: &PhysicalFunctionBacking<'_>,
) -> Vec<Option<(u64, u32)>> {
    for i in 0..6u64 {
        space
            .write(0x10 + 4 * i, &[0xff; 4], backing, &mut |_| {})
            .unwrap();
    }
    let mut regs = [0u8; 24];
    space.read(0x10, &mut regs, backing).unwrap();
    let dword = |i: usize| u32::from_le_bytes(regs[4 * i..4 * i + 4].try_into().unwrap());
    let mut out = vec![None; 6];
    let mut i = 0;
    while i < 6 {
        let low = dword(i);
        if low == 0 {
            i += 1;
            continue;
        }
        if low & 1 == 1 {
            out[i] = Some((u64::from(!(low & !3)) + 1, low & 1));
            i += 1;
        } else if low & 6 == 4 {
            let both = (u64::from(dword(i + 1)) << 32) | u64::from(low & !0xf);
            out[i] = Some(((!both).wrapping_add(1), low & 0xf));
            i += 2;
        } else {
            out[i] = Some((u64::from(!(low & !0xf)) + 1, low & 0xf));
            i += 1;
        }
    }
    out
}

/// BAR sizes and type bits as the resource file states them (an SR-IOV VF's BAR registers
/// read 0 from hardware; where they do not, they must agree).
fn physical_bar_types(description: &PhysicalDescription) -> Vec<Option<(u64, u32)>> {
    description
        .bars
        .iter()
        .enumerate()
        .map(|(i, b)| {
            b.map(|b| {
                let type_bits = match b.kind {
                    BarKind::Io => 1,
                    BarKind::Memory32 => 0,
                    BarKind::Memory64 => 4,
                } | if b.prefetchable { 8 } else { 0 };
                let register = u32::from_le_bytes(
                    description.config[0x10 + 4 * i..0x14 + 4 * i]
                        .try_into()
                        .unwrap(),
                );
                if register != 0 {
                    let mask = if b.kind == BarKind::Io { 1 } else { 0xf };
                    assert_eq!(
                        register & mask,
                        type_bits,
                        "BAR {i} register vs resource flags"
                    );
                }
                (b.size, type_bits)
            })
        })
        .collect()
}

#[test]
fn derived_layouts_read_back_like_the_source() {
    for dir in captured() {
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let description = describe_sysfs_dir(&dir).unwrap();
        let derived = derive(
            &description,
            &DeriveOptions {
                name: name.clone(),
                ..Default::default()
            },
        )
        .unwrap_or_else(|e| panic!("{name}: {e}"));
        let text = derived.to_toml();
        let layout =
            Arc::new(parse_layout(&name, &text).unwrap_or_else(|e| panic!("{name}: {e}\n{text}")));
        bind(&layout, &description).unwrap_or_else(|e| panic!("{name}: {e}"));
        let function = CapturedFunction::new(name.clone(), description.clone());
        let backing = PhysicalFunctionBacking(&function);
        let mut space = ConfigSpace::new(Arc::new(compile(Arc::clone(&layout))));
        let mut virtual_config = vec![0u8; space.size()];
        space.read(0, &mut virtual_config, &backing).unwrap();
        let source = &description.config;

        assert_eq!(virtual_config.len(), source.len(), "{name}: config size");
        for (what, range) in [
            ("vendor/device", 0..4),
            ("revision/class", 8..12),
            ("subsystem", 0x2c..0x30),
        ] {
            assert_eq!(
                virtual_config[range.clone()],
                source[range],
                "{name}: {what}"
            );
        }
        assert_eq!(virtual_config[0x3d], source[0x3d], "{name}: interrupt pin");

        let (std_src, ext_src) = chains(source);
        let (std_virt, ext_virt) = chains(&virtual_config);
        assert_eq!(std_virt, std_src, "{name}: standard capability chain");
        let hidden = [cap::EXT_CAP_SRIOV, cap::EXT_CAP_ARI, cap::EXT_CAP_REBAR];
        let expected: Vec<(u64, u16)> = ext_src
            .iter()
            .copied()
            .filter(|(_, id)| !hidden.contains(id))
            .collect();
        assert_eq!(ext_virt, expected, "{name}: extended capability chain");
        if ext_src.len() != expected.len() {
            assert!(
                text.contains("# Hidden:"),
                "{name}: hiding is stated in the output"
            );
        }

        assert_eq!(
            sized_bars(&mut space, &backing),
            physical_bar_types(&description),
            "{name}: BAR sizing"
        );
    }
}

#[test]
fn quirks_can_be_kept() {
    let dir = captured()
        .into_iter()
        .find(|d| d.ends_with("igb"))
        .expect("igb was captured");
    let description = describe_sysfs_dir(&dir).unwrap();
    let hidden = derive(
        &description,
        &DeriveOptions {
            name: "igb".into(),
            ..Default::default()
        },
    )
    .unwrap();
    assert!(
        !hidden
            .layout
            .ext_capabilities
            .iter()
            .any(|c| c.body.id() == cap::EXT_CAP_SRIOV)
    );
    let kept = derive(
        &description,
        &DeriveOptions {
            name: "igb".into(),
            keep: vec!["sriov".into(), "ari".into()],
            ..Default::default()
        },
    )
    .unwrap();
    assert!(
        kept.layout
            .ext_capabilities
            .iter()
            .any(|c| c.body.id() == cap::EXT_CAP_SRIOV)
    );
}
