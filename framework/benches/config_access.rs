//! Config-space access cost in-process: ns per 4-byte virtualized read and write, against a
//! plain array read measured in the same run. Prints `BENCH name value unit ratio=.. vs=..`.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use vfio_variant::config::{ConfigSpace, NoBacking, PhysicalFunctionBacking};
use vfio_variant::physical::PhysicalDescription;
use vfio_variant::physical::captured::CapturedFunction;
use vfio_variant::vpci::{compile::compile, parse_layout};

const ITERATIONS: u32 = 2_000_000;
const ROUNDS: usize = 7;

/// Dword offsets a driver touches: IDs, COMMAND/STATUS, BARs, MSI-X control, PCIe DEVCTL, 0x100.
const OFFSETS: [u64; 8] = [0x00, 0x04, 0x10, 0x14, 0x40, 0x4c, 0x98, 0x100];

/// Median ns per operation over several rounds of `ITERATIONS` calls.
fn measure(mut op: impl FnMut(u64)) -> f64 {
    let mut samples = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        let start = Instant::now();
        for i in 0..ITERATIONS {
            op(OFFSETS[(i as usize) & 7]);
        }
        samples.push(start.elapsed().as_nanos() as f64 / f64::from(ITERATIONS));
    }
    samples.sort_by(f64::total_cmp);
    samples[ROUNDS / 2]
}

fn report(name: &str, value: f64, baseline: Option<(&str, f64)>) {
    match baseline {
        Some((base, base_value)) => {
            println!(
                "BENCH {name} {value:.2} ns ratio={:.2} vs={base}",
                value / base_value
            )
        }
        None => println!("BENCH {name} {value:.2} ns"),
    }
}

fn main() {
    let text = include_str!("../../catalog/virtio-net-transitional.toml");
    let layout = Arc::new(parse_layout("virtio-net-transitional", text).expect("catalog layout"));
    let template = Arc::new(compile(layout));
    let mut space = ConfigSpace::new(Arc::clone(&template));

    let array = vec![0x5au8; 4096];
    let baseline = measure(|offset| {
        let at = offset as usize;
        let mut value = [0u8; 4];
        value.copy_from_slice(&black_box(&array)[at..at + 4]);
        black_box(value);
    });
    report("config_array_read", baseline, None);

    let read = measure(|offset| {
        let mut value = [0u8; 4];
        black_box(&space)
            .read(black_box(offset), &mut value, &NoBacking)
            .expect("in range");
        black_box(value);
    });
    report(
        "config_read_virtual",
        read,
        Some(("config_array_read", baseline)),
    );

    let write = measure(|offset| {
        black_box(&mut space)
            .write(
                black_box(offset),
                &[0xff, 0xff, 0xff, 0xff],
                &NoBacking,
                &mut |e| {
                    black_box(e);
                },
            )
            .expect("in range");
    });
    report(
        "config_write_virtual",
        write,
        Some(("config_array_read", baseline)),
    );

    // Bits from a physical function (a layout passing unowned bytes through).
    let passthrough = text.replace("unowned = \"zero\"", "unowned = \"passthrough\"");
    let layout = Arc::new(parse_layout("passthrough", &passthrough).expect("layout"));
    let space = ConfigSpace::new(Arc::new(compile(layout)));
    let physical = CapturedFunction::new(
        "bench",
        PhysicalDescription {
            config: vec![0xa5; 4096],
            bars: [None; 6],
            rom_size: None,
        },
    );
    let backing = PhysicalFunctionBacking(&physical);
    let mixed = measure(|offset| {
        let mut value = [0u8; 4];
        black_box(&space)
            .read(black_box(offset | 0xe00), &mut value, &backing)
            .expect("in range");
        black_box(value);
    });
    report(
        "config_read_physical",
        mixed,
        Some(("config_array_read", baseline)),
    );
}
