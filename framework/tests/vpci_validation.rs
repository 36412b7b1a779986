//! Every validation rule of the vPCI file refuses bad input with the right line and field.

use std::sync::Arc;

use vfio_variant::physical::sysfs::describe_bytes;
use vfio_variant::vpci::bind::bind;
use vfio_variant::vpci::{LayoutError, parse_layout};

const HEAD: &str = r#"[vpci]
format = 1
name = "t"
config_size = 4096

[identity]
vendor_id = 0x1af4
device_id = 0x1041
class_code = 0x020000
"#;

const MSIX_BAR: &str = r#"
[[bar]]
index = 1
kind = "mem32"
size = "4K"
"#;

fn refuse(body: &str) -> (String, LayoutError) {
    let text = format!("{HEAD}{body}");
    match parse_layout("layout.toml", &text) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(e) => (text, e),
    }
}

/// Asserts the error points at the first line containing `marker`, names `field`, and says
/// `words`.
fn expect(body: &str, marker: &str, field: &str, words: &str) {
    expect_nth(body, marker, 0, field, words);
}

/// As [`expect`], at the `nth` (from 0) line containing `marker`.
fn expect_nth(body: &str, marker: &str, nth: usize, field: &str, words: &str) {
    let (text, e) = refuse(body);
    let line = text
        .lines()
        .enumerate()
        .filter(|(_, l)| l.contains(marker))
        .nth(nth)
        .unwrap_or_else(|| panic!("marker {marker:?} not in text"))
        .0
        + 1;
    assert_eq!(e.location.file, "layout.toml");
    assert_eq!(e.location.line, line, "wrong line for {e}\n{text}");
    assert_eq!(e.field, field, "wrong field for {e}");
    assert!(e.message.contains(words), "{e} does not say {words:?}");
    assert!(
        e.to_string().starts_with(&format!("layout.toml:{line}:")),
        "{e}"
    );
}

#[test]
fn syntax_errors_are_located() {
    let e = parse_layout("f.toml", "[vpci]\nformat = 1\nname = \"x\n").unwrap_err();
    assert_eq!(e.location.line, 3);
    assert_eq!(e.field, "<syntax>");
}

#[test]
fn unknown_fields_and_wrong_types() {
    expect(
        "[header]\ninterupt_pin = \"A\"\n",
        "interupt_pin",
        "header.interupt_pin",
        "unknown field",
    );
    expect(
        "[[bar]]\nindex = \"zero\"\nkind = \"io\"\nsize = 4\n",
        "index = \"zero\"",
        "bar[0].index",
        "expected an integer",
    );
    expect(
        "[[bar]]\nindex = 0\nkind = \"mem16\"\nsize = 16\n",
        "mem16",
        "bar[0].kind",
        "not one of",
    );
}

#[test]
fn bar_sizes() {
    expect(
        "[[bar]]\nindex = 0\nkind = \"mem32\"\nsize = 24\n",
        "size = 24",
        "bar[0].size",
        "not a power of two",
    );
    expect(
        "[[bar]]\nindex = 0\nkind = \"mem32\"\nsize = 8\n",
        "size = 8",
        "bar[0].size",
        "at least 16 bytes",
    );
    expect(
        "[[bar]]\nindex = 0\nkind = \"io\"\nsize = 2\n",
        "size = 2",
        "bar[0].size",
        "at least 4 bytes",
    );
    expect(
        "[[bar]]\nindex = 0\nkind = \"io\"\nsize = 512\n",
        "size = 512",
        "bar[0].size",
        "at most 256 bytes",
    );
    expect(
        "[[bar]]\nindex = 0\nkind = \"mem32\"\nsize = \"3Q\"\n",
        "3Q",
        "bar[0].size",
        "not a size",
    );
}

#[test]
fn bar_slots() {
    expect(
        "[[bar]]\nindex = 5\nkind = \"mem64\"\nsize = 16\n",
        "kind = \"mem64\"",
        "bar[0].kind",
        "slot 5",
    );
    expect_nth(
        "[[bar]]\nindex = 2\nkind = \"mem64\"\nsize = 16\n[[bar]]\nindex = 3\nkind = \"mem32\"\nsize = 16\n",
        "[[bar]]",
        1,
        "bar[1].index",
        "upper half of 64-bit BAR 2",
    );
    expect_nth(
        "[[bar]]\nindex = 1\nkind = \"io\"\nsize = 4\n[[bar]]\nindex = 1\nkind = \"io\"\nsize = 4\n",
        "index = 1",
        1,
        "bar[1].index",
        "declared twice",
    );
    expect(
        "[[bar]]\nindex = 6\nkind = \"io\"\nsize = 4\n",
        "index = 6",
        "bar[0].index",
        "out of range",
    );
}

#[test]
fn mmap_areas() {
    expect(
        "[[bar]]\nindex = 0\nkind = \"mem32\"\nsize = \"8K\"\n[[bar.mmap]]\noffset = 100\nsize = \"4K\"\n",
        "offset = 100",
        "bar[0].mmap[0].offset",
        "page aligned",
    );
    expect(
        "[[bar]]\nindex = 0\nkind = \"mem32\"\nsize = \"8K\"\n[[bar.mmap]]\noffset = \"4K\"\nsize = \"12K\"\n",
        "size = \"12K\"",
        "bar[0].mmap[0].size",
        "extends past",
    );
}

#[test]
fn capability_offsets() {
    expect(
        "[[capability]]\nkind = \"pm\"\noffset = 0x42\n",
        "offset = 0x42",
        "capability[0].offset",
        "dword aligned",
    );
    expect(
        "[[capability]]\nkind = \"pm\"\noffset = 0x20\n",
        "offset = 0x20",
        "capability[0].offset",
        "0x40..0xff",
    );
    expect(
        "[[capability]]\nkind = \"pcie\"\noffset = 0xf0\n",
        "offset = 0xf0",
        "capability[0].offset",
        "runs past 0xff",
    );
    expect(
        "[[capability]]\nkind = \"pm\"\noffset = 0x100\n",
        "offset = 0x100",
        "capability[0].offset",
        "out of range",
    );
}

#[test]
fn overlapping_and_duplicate_capabilities() {
    expect(
        "[[capability]]\nkind = \"pcie\"\noffset = 0x40\n[[capability]]\nkind = \"pm\"\noffset = 0x60\n",
        "offset = 0x60",
        "capability[1].offset",
        "overlaps Express",
    );
    expect(
        "[[capability]]\nkind = \"pm\"\noffset = 0x40\n[[capability]]\nkind = \"pm\"\noffset = 0x48\n",
        "offset = 0x48",
        "capability[1].offset",
        "duplicate Power Management",
    );
}

#[test]
fn broken_cyclic_and_unreachable_chains() {
    expect(
        "[[capability]]\nkind = \"pm\"\noffset = 0x40\nnext = 0x80\n",
        "next = 0x80",
        "capability[0].next",
        "broken chain",
    );
    expect(
        "[[capability]]\nkind = \"pm\"\noffset = 0x40\n[[capability]]\nkind = \"msi\"\noffset = 0x50\nnext = 0x40\n",
        "next = 0x40",
        "capability[1].next",
        "cyclic chain",
    );
    expect(
        "[[capability]]\nkind = \"pm\"\noffset = 0x40\nnext = 0\n[[capability]]\nkind = \"msi\"\noffset = 0x50\n",
        "offset = 0x50",
        "capability[1].offset",
        "not reachable",
    );
    expect(
        "[header]\ncapabilities_pointer = 0x44\n[[capability]]\nkind = \"pm\"\noffset = 0x40\n",
        "capabilities_pointer",
        "header.capabilities_pointer",
        "broken chain",
    );
}

#[test]
fn extended_capabilities() {
    expect(
        "[[capability]]\nkind = \"pcie\"\noffset = 0x40\n[[ext_capability]]\nkind = \"pasid\"\noffset = 0x140\n",
        "offset = 0x140",
        "ext_capability[0].offset",
        "must be at 0x100",
    );
    expect(
        "[[capability]]\nkind = \"pcie\"\noffset = 0x40\n[[ext_capability]]\nkind = \"aer\"\noffset = 0x100\n[[ext_capability]]\nkind = \"aer\"\noffset = 0x148\n",
        "offset = 0x148",
        "ext_capability[1].offset",
        "duplicate Advanced Error Reporting",
    );
    expect(
        "[[capability]]\nkind = \"pcie\"\noffset = 0x40\n[[ext_capability]]\nkind = \"aer\"\noffset = 0x100\n[[ext_capability]]\nkind = \"pasid\"\noffset = 0x140\n",
        "offset = 0x140",
        "ext_capability[1].offset",
        "overlaps Advanced Error Reporting",
    );
    expect(
        "[[ext_capability]]\nkind = \"pasid\"\noffset = 0x100\n",
        "[[ext_capability]]",
        "ext_capability[0].kind",
        "PCI Express capability",
    );
    expect(
        "[[capability]]\nkind = \"pcie\"\noffset = 0x40\n[[ext_capability]]\nkind = \"dsn\"\noffset = 0x100\n",
        "[[ext_capability]]",
        "ext_capability[0].serial",
        "missing required field",
    );
}

#[test]
fn msix_placement() {
    let cap = |table_bar: u8, table_offset: u32, pba_offset: u32| {
        format!(
            "{MSIX_BAR}[[capability]]\nkind = \"msix\"\noffset = 0x40\ntable_size = 16\ntable_bar = {table_bar}\ntable_offset = {table_offset:#x}\npba_bar = 1\npba_offset = {pba_offset:#x}\n"
        )
    };
    expect(
        &cap(1, 0xff8, 0x800),
        "[[capability]]",
        "capability[0].table_offset",
        "outside BAR 1",
    );
    expect(
        &cap(1, 0, 0x1000),
        "[[capability]]",
        "capability[0].pba_offset",
        "outside BAR 1",
    );
    expect(
        &cap(3, 0, 0x800),
        "[[capability]]",
        "capability[0].table_offset",
        "not declared",
    );
    expect(
        &cap(1, 0, 0x80),
        "[[capability]]",
        "capability[0].pba_offset",
        "overlaps the table",
    );
    expect(
        &cap(1, 4, 0x800),
        "table_offset = 0x4",
        "capability[0].table_offset",
        "8-byte aligned",
    );
}

#[test]
fn register_overrides() {
    expect(
        "[[register]]\noffset = 0x41\nsize = 2\n",
        "offset = 0x41",
        "register[0].offset",
        "not aligned",
    );
    expect(
        "[[register]]\noffset = 0x10\nsize = 4\n",
        "[[register]]",
        "register[0].offset",
        "BAR registers",
    );
    expect(
        "[[register]]\noffset = 0x1000\nsize = 4\n",
        "offset = 0x1000",
        "register[0].offset",
        "out of range",
    );
    expect(
        "[[register]]\noffset = 0x2c\nsize = 2\nwrite_mask = 1\nrw1c_mask = 1\n",
        "rw1c_mask",
        "register[0].rw1c_mask",
        "both writable and write-1-to-clear",
    );
}

#[test]
fn required_tables_and_format() {
    let e = parse_layout("f", "[vpci]\nformat = 2\nname = \"x\"\n").unwrap_err();
    assert_eq!((e.location.line, e.field.as_str()), (2, "vpci.format"));
    let e = parse_layout("f", "[vpci]\nformat = 1\nname = \"x\"\n").unwrap_err();
    assert_eq!(e.field, "identity");
    let e = parse_layout("f", "[vpci]\nformat = 1\nname = \"x\"\n[identity]\nvendor_id = 0xffff\ndevice_id = 1\nclass_code = 0\n").unwrap_err();
    assert_eq!(
        (e.location.line, e.field.as_str()),
        (5, "identity.vendor_id")
    );
}

/// A physical function description with one 4 KiB memory BAR 0 and an MSI-X capability at 0x70.
fn physical() -> vfio_variant::physical::PhysicalDescription {
    let mut config = vec![0u8; 256];
    config[0..4].copy_from_slice(&[0xf4, 0x1a, 0x41, 0x10]);
    config[6] = 0x10; // capability list
    config[0x34] = 0x70;
    config[0x70] = 0x11; // MSI-X, end of chain
    let mut resource = String::from("0x00000000fe000000 0x00000000fe000fff 0x0000000000040200\n");
    for _ in 0..12 {
        resource.push_str("0x0000000000000000 0x0000000000000000 0x0000000000000000\n");
    }
    describe_bytes(config, &resource).unwrap()
}

fn bind_error(body: &str) -> (String, LayoutError) {
    let text = format!("{HEAD}{body}");
    let layout = Arc::new(parse_layout("layout.toml", &text).unwrap());
    (text, bind(&layout, &physical()).unwrap_err())
}

#[test]
fn passthrough_of_missing_physical_items() {
    let (text, e) = bind_error(
        "[[bar]]\nindex = 2\nkind = \"mem32\"\nsize = \"4K\"\nbacking = \"passthrough\"\n",
    );
    assert_eq!(e.field, "bar[0].physical_bar");
    assert!(e.message.contains("no BAR 2"), "{e}");
    assert_eq!(
        e.location.line,
        text.lines().position(|l| l.contains("[[bar]]")).unwrap() + 1
    );

    let (_, e) = bind_error(
        "[[bar]]\nindex = 0\nkind = \"mem32\"\nsize = \"8K\"\nbacking = \"passthrough\"\n",
    );
    assert_eq!(e.field, "bar[0].size");
    assert!(e.message.contains("smaller"), "{e}");

    let (_, e) =
        bind_error("[[capability]]\nkind = \"pcie\"\noffset = 0x40\nphysical_offset = 0x90\n");
    assert_eq!(e.field, "capability[0].physical_offset");
    assert!(
        e.message.contains("no Express capability at 0x90") && e.message.contains("MSI-X@0x70"),
        "{e}"
    );

    let (_, e) =
        bind_error("[[capability]]\nkind = \"pm\"\noffset = 0x40\nphysical_offset = 0x70\n");
    assert!(e.message.contains("is MSI-X"), "{e}");

    let (_, e) = bind_error("[rom]\nsize = \"64K\"\nbacking = \"passthrough\"\n");
    assert_eq!(e.field, "rom.backing");

    // And what exists binds.
    let ok = format!(
        "{HEAD}[[bar]]\nindex = 0\nkind = \"mem32\"\nsize = \"4K\"\nbacking = \"passthrough\"\n[[capability]]\nkind = \"msix\"\noffset = 0x40\nphysical_offset = 0x70\n"
    );
    bind(&parse_layout("ok", &ok).unwrap(), &physical()).unwrap();
}

/// A PCI Express function: MSI (32-bit, no masking) at 0x50, PCIe at 0x60, AER at 0x100.
fn express_physical() -> vfio_variant::physical::PhysicalDescription {
    let mut config = vec![0u8; 4096];
    config[0..4].copy_from_slice(&[0xf4, 0x1a, 0x41, 0x10]);
    config[6] = 0x10;
    config[0x34] = 0x50;
    config[0x50] = 0x05;
    config[0x51] = 0x60;
    config[0x60] = 0x10;
    config[0x100..0x104].copy_from_slice(&0x0002_0001u32.to_le_bytes());
    let resource = "0x0000000000000000 0x0000000000000000 0x0000000000000000\n".repeat(13);
    describe_bytes(config, &resource).unwrap()
}

#[test]
fn both_chains_bind_through_the_same_checks() {
    let bind_to = |body: &str| {
        let layout = parse_layout(
            "layout.toml",
            &format!("{HEAD}[[capability]]\nkind = \"pcie\"\noffset = 0x40\nphysical_offset = 0x60\n{body}"),
        )
        .unwrap();
        bind(&layout, &express_physical())
    };
    bind_to("[[ext_capability]]\nkind = \"aer\"\noffset = 0x100\nphysical_offset = 0x100\n")
        .unwrap();
    // The extended chain names what sits there, as the standard one does.
    let e =
        bind_to("[[ext_capability]]\nkind = \"dsn\"\noffset = 0x100\nphysical_offset = 0x100\n")
            .unwrap_err();
    assert_eq!(e.field, "ext_capability[0].physical_offset");
    assert!(
        e.message
            .contains("is Advanced Error Reporting (0x01), not Device Serial Number"),
        "{e}"
    );
    let e =
        bind_to("[[ext_capability]]\nkind = \"aer\"\noffset = 0x100\nphysical_offset = 0x140\n")
            .unwrap_err();
    assert!(
        e.message
            .contains("no Advanced Error Reporting extended capability at 0x140")
            && e.message.contains("Advanced Error Reporting@0x100"),
        "{e}"
    );
    // A length the hardware states (MSI's from its flags) must be the layout's.
    let e = bind_to(
        "[[capability]]\nkind = \"msi\"\noffset = 0x80\nphysical_offset = 0x50\nlength = 14\n",
    )
    .unwrap_err();
    assert!(e.message.contains("10 bytes long, not 14"), "{e}");
    bind_to("[[capability]]\nkind = \"msi\"\noffset = 0x80\nphysical_offset = 0x50\nlength = 10\n")
        .unwrap();
}
