//! Config-space emulation of a compiled layout (parsed by `vpci`, compiled to a template,
//! served by `config::ConfigSpace` over a captured physical function): the events a write
//! reports, how virtual and physical bits merge, range checks, snapshot and restore.

use std::sync::Arc;

use vfio_variant::config::{
    ConfigError, ConfigEvent, ConfigSpace, NoBacking, PhysicalFunctionBacking,
};
use vfio_variant::pci::regs;
use vfio_variant::physical::captured::CapturedFunction;
use vfio_variant::physical::{PhysicalDescription, PhysicalFunction};
use vfio_variant::vpci::{compile::compile, parse_layout};

const LAYOUT: &str = r#"
[vpci]
format = 1
name = "t"
config_size = 4096
[identity]
vendor_id = 0x1af4
device_id = 0x1041
class_code = 0x020000
[header]
interrupt_pin = "A"
[[bar]]
index = 0
kind = "mem32"
size = "4K"
[[capability]]
kind = "msi"
offset = 0x40
vectors = 4
[[capability]]
kind = "msix"
offset = 0x58
table_size = 8
table_bar = 0
table_offset = 0
pba_bar = 0
pba_offset = 0x800
[[capability]]
kind = "pcie"
offset = 0x64
[[capability]]
kind = "pm"
offset = 0xa0
[[capability]]
kind = "vendor"
offset = 0xa8
physical_offset = 0xc0
length = 8
[[ext_capability]]
kind = "aer"
offset = 0x100
physical_offset = 0x200
[[register]]
offset = 0x2c
size = 2
value = 0xabcd
virtual_mask = 0xff00
"#;

fn setup() -> (ConfigSpace, CapturedFunction) {
    let layout = Arc::new(parse_layout("t", LAYOUT).unwrap());
    let mut config = vec![0u8; 4096];
    config[0x2c] = 0x34;
    config[0x2d] = 0x12;
    config[0xc0..0xc8].copy_from_slice(&[0x09, 0x00, 0x08, 0xa1, 0xa2, 0xa3, 0xa4, 0xa5]);
    config[0x204..0x208].copy_from_slice(&0x0000_1010u32.to_le_bytes());
    let physical = CapturedFunction::new(
        "phys",
        PhysicalDescription {
            config,
            bars: [None; 6],
            rom_size: None,
        },
    );
    (ConfigSpace::new(Arc::new(compile(layout))), physical)
}

fn write(
    space: &mut ConfigSpace,
    physical: &CapturedFunction,
    offset: u64,
    data: &[u8],
) -> Vec<ConfigEvent> {
    let mut events = Vec::new();
    space
        .write(offset, data, &PhysicalFunctionBacking(physical), &mut |e| {
            events.push(e)
        })
        .unwrap();
    events
}

fn read(space: &ConfigSpace, physical: &CapturedFunction, offset: u64, len: usize) -> Vec<u8> {
    let mut data = vec![0u8; len];
    space
        .read(offset, &mut data, &PhysicalFunctionBacking(physical))
        .unwrap();
    data
}

#[test]
fn msi_enable_is_reported_and_vector_count_clamped() {
    let (mut space, phys) = setup();
    // Enable with 8 vectors asked (MME = 3) while 4 are capable (MMC = 2).
    let events = write(&mut space, &phys, 0x42, &[0x31, 0x00]);
    assert_eq!(
        events,
        vec![ConfigEvent::Msi {
            enabled: true,
            vectors: 4
        }]
    );
    assert_eq!(read(&space, &phys, 0x42, 1)[0] & 0x71, 0x21);
    assert!(write(&mut space, &phys, 0x42, &[0x21, 0x00]).is_empty());
}

#[test]
fn msix_and_command_changes_are_reported() {
    let (mut space, phys) = setup();
    assert_eq!(
        write(&mut space, &phys, 0x5a, &[0x00, 0xc0]),
        vec![ConfigEvent::Msix {
            enabled: true,
            function_mask: true
        }]
    );
    assert_eq!(read(&space, &phys, 0x5a, 2), vec![0x07, 0xc0]);
    assert_eq!(
        write(&mut space, &phys, 0x04, &[0x06, 0x04]),
        vec![ConfigEvent::Command {
            old: 0,
            new: 0x0406
        }]
    );
    assert_eq!(space.command(), 0x0406);
}

#[test]
fn flr_is_reported_and_reads_zero() {
    let (mut space, phys) = setup();
    let devctl = 0x64 + 8;
    let events = write(&mut space, &phys, devctl, &[0x00, 0x80]);
    assert_eq!(events, vec![ConfigEvent::FunctionLevelReset]);
    assert_eq!(read(&space, &phys, devctl, 2)[1] & 0x80, 0);
}

#[test]
fn unsupported_power_states_are_ignored() {
    let (mut space, phys) = setup();
    let pmcsr = 0xa0 + 4;
    assert!(write(&mut space, &phys, pmcsr, &[0x01, 0x00]).is_empty());
    assert_eq!(read(&space, &phys, pmcsr, 1)[0] & 3, 0);
    assert_eq!(
        write(&mut space, &phys, pmcsr, &[0x03, 0x00]),
        vec![ConfigEvent::PowerState(3)]
    );
}

#[test]
fn physical_bits_merge_and_writes_reach_hardware() {
    let (mut space, phys) = setup();
    // Register override: high byte virtual (0xab), low byte from hardware (0x34).
    assert_eq!(read(&space, &phys, 0x2c, 2), vec![0x34, 0xab]);
    // Vendor capability backed by physical 0xc0: header virtual, body from hardware.
    let vendor = read(&space, &phys, 0xa8, 8);
    assert_eq!(vendor[0], 0x09);
    assert_eq!(vendor[2..], [0x08, 0xa1, 0xa2, 0xa3, 0xa4, 0xa5]);
    // Vendor-specific registers take raw writes to hardware.
    write(&mut space, &phys, 0xac, &[0x55]);
    let mut hw = [0u8; 1];
    phys.config_read(0xc4, &mut hw).unwrap();
    assert_eq!(hw[0], 0x55);
    // AER uncorrectable status is RW1C in hardware: writing ones passes them through.
    write(&mut space, &phys, 0x104, &0x0000_0010u32.to_le_bytes());
    let mut status = [0u8; 4];
    phys.config_read(0x204, &mut status).unwrap();
    assert_eq!(u32::from_le_bytes(status), 0x10);
    // The extended header is virtual: next = 0, the AER ID.
    assert_eq!(read(&space, &phys, 0x100, 4), 0x0002_0001u32.to_le_bytes());
}

#[test]
fn accesses_split_at_boundaries_and_out_of_range_is_refused() {
    let (space, phys) = setup();
    // A 4-byte read at an odd offset, split into 1+2+1: device ID high byte, COMMAND,
    // STATUS low byte (CAP_LIST).
    assert_eq!(read(&space, &phys, 3, 4), vec![0x10, 0, 0, 0x10]);
    let whole = read(&space, &phys, 0, 4096);
    assert_eq!(&whole[0x2c..0x2e], &[0x34, 0xab]);
    let mut data = [0u8; 4];
    assert!(matches!(
        space.read(4094, &mut data, &NoBacking),
        Err(ConfigError::OutOfRange { .. })
    ));
    assert!(matches!(
        space.read(u64::MAX, &mut data, &NoBacking),
        Err(ConfigError::OutOfRange { .. })
    ));
    assert!(matches!(
        space.read(0x2c, &mut data, &NoBacking),
        Err(ConfigError::NoPhysical(0x2c))
    ));
}

#[test]
fn a_snapshot_restores_state_and_reports_it() {
    let (mut space, physical) = setup();
    write(
        &mut space,
        &physical,
        u64::from(regs::COMMAND),
        &[0x06, 0x00],
    );
    space.set_intx_status(true);
    let saved = space.snapshot();
    let (mut other, _) = setup();
    let mut events = Vec::new();
    other.restore(&saved, &mut |e| events.push(e)).unwrap();
    assert_eq!(other.snapshot(), saved);
    assert_eq!(other.command(), 0x0006);
    assert!(other.intx_status());
    assert!(events.contains(&ConfigEvent::Command { old: 0, new: 6 }));

    // Another size, or another read-only bit (the vendor ID), is refused unchanged.
    let (mut fresh, _) = setup();
    let reset = fresh.snapshot();
    assert!(fresh.restore(&saved[..64], &mut |_| {}).is_err());
    let mut forged = saved.clone();
    forged[0] ^= 1;
    assert!(matches!(
        fresh.restore(&forged, &mut |_| {}),
        Err(ConfigError::Saved(_))
    ));
    assert_eq!(fresh.snapshot(), reset);
}

#[test]
fn intx_status_and_reset() {
    let (mut space, phys) = setup();
    space.set_intx_status(true);
    assert_eq!(read(&space, &phys, 6, 1)[0] & 0x08, 0x08);
    write(&mut space, &phys, 0x3c, &[0x0b]);
    space.reset();
    assert_eq!(read(&space, &phys, 0x3c, 1)[0], 0);
    assert_eq!(read(&space, &phys, 6, 1)[0] & 0x08, 0);
}
