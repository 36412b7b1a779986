//! The emulated DSA's data path and its portal over vfio-user. Prints
//! `BENCH name value unit [ratio=.. vs=..]`:
//! - `memmove_{4k,64k,1m}_gbps`: MEMMOVE descriptors written to a PF portal, executed against
//!   guest memory mapped as the server maps it (a memfd in a DMA table), against `memcpy_*_gbps`, a plain copy of the same size measured
//!   in the same run (what the engine's page-bounded chunking and DMA accessors cost);
//! - `crc_gen_64k_gbps`: CRC_GEN over 64 KiB (the table-driven CRC-32C), against memcpy;
//! - `portal_submissions_per_s`: NOP descriptors with a completion record, each a 64-byte
//!   REGION_WRITE to BAR 2 of a sub-device over a real vfio-user socket.

use std::hint::black_box;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vfio_variant::backend::{Backend, CreateRequest};
use vfio_variant::device::VirtualFunction;
use vfio_variant::server::dma::DmaTable;
use vfio_variant::server::{Endpoint, Port, ServerConfig};
use vfio_variant::vfio_user::client::{Client, ClientOptions};
use vfio_variant::vfio_user::dma::{DmaMap, DmaMapFlags};
use vfio_variant::vpci::{compile::compile, parse_layout};
use vfio_variant_idxd::hw::descriptor::{Descriptor, flag, op};
use vfio_variant_idxd::hw::registers::{CMD, CMD_SHIFT, WQCFG, WQCFG_PRIORITY_SHIFT, cmd};
use vfio_variant_idxd::hw::{DsaDevice, DsaGeometry};
use vfio_variant_idxd::{IdxdBackend, IdxdConfig};

/// Rounds of every measurement; the median is reported.
const ROUNDS: usize = 5;
/// Entries of the benchmark's WQ: descriptors queued at most before the engine runs them.
const WQ_SIZE: usize = 16;
/// Bytes moved per round of a throughput figure.
const BYTES_PER_ROUND: usize = 256 << 20;
/// Descriptor submissions per round over vfio-user.
const SUBMISSIONS: u32 = 20_000;

fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

fn report(name: &str, value: f64, unit: &str, baseline: Option<(&str, f64)>) {
    match baseline {
        Some((base, base_value)) => println!(
            "BENCH {name} {value:.2} {unit} ratio={:.2} vs={base}",
            value / base_value
        ),
        None => println!("BENCH {name} {value:.2} {unit}"),
    }
}

/// Guest RAM sealed at its size, as QEMU's memfd backend makes it (so the server maps it).
fn sealed_memfd(size: u64) -> OwnedFd {
    use rustix::fs::{MemfdFlags, SealFlags};
    let fd = rustix::fs::memfd_create("guest", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)
        .expect("memfd");
    rustix::fs::ftruncate(&fd, size).expect("ftruncate");
    rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL)
        .expect("seals");
    fd
}

/// Guest memory as the server has it: a memfd mapped at IOVA 0 in a function's DMA table.
fn guest_memory(size: u64) -> Arc<DmaTable> {
    let fd = sealed_memfd(size);
    let table = DmaTable::new();
    table
        .map(0, size, 0, Some(fd), (true, true), 1)
        .expect("DMA map");
    Arc::new(table)
}

fn write32(device: &DsaDevice, offset: u64, value: u32) {
    device.bar0_write(offset, &value.to_le_bytes()).unwrap();
}

/// A PF with WQ 0 enabled and bound to `memory`.
fn pf(memory: Arc<DmaTable>) -> DsaDevice {
    let device = DsaDevice::new(DsaGeometry::default());
    write32(&device, 0x400, 1);
    write32(&device, 0x420, 1);
    write32(&device, CMD, cmd::ENABLE_DEVICE << CMD_SHIFT);
    write32(&device, WQCFG, WQ_SIZE as u32);
    write32(&device, WQCFG + 8, 1 | (1 << WQCFG_PRIORITY_SHIFT));
    write32(&device, CMD, cmd::ENABLE_WQ << CMD_SHIFT);
    device.bind_address_space(0, memory);
    device
}

fn gbps(bytes: usize, elapsed: Duration) -> f64 {
    bytes as f64 / elapsed.as_secs_f64() / 1e9
}

fn memcpy_gbps(size: usize) -> f64 {
    let source = vec![0x5au8; size];
    let mut destination = vec![0u8; size];
    let iterations = BYTES_PER_ROUND / size;
    median(
        (0..ROUNDS)
            .map(|_| {
                let start = Instant::now();
                for _ in 0..iterations {
                    destination.copy_from_slice(black_box(&source));
                    black_box(&mut destination);
                }
                gbps(size * iterations, start.elapsed())
            })
            .collect(),
    )
}

fn engine_gbps(device: &DsaDevice, opcode: u8, size: usize) -> f64 {
    let desc = Descriptor {
        opcode,
        flags: flag::CRAV | flag::RCR,
        completion_addr: 0,
        src: 0x1000,
        dst: 0x1000 + 2 * (1 << 20),
        size: size as u32,
        ..Descriptor::default()
    }
    .encode();
    let iterations = BYTES_PER_ROUND / size;
    median(
        (0..ROUNDS)
            .map(|_| {
                let start = Instant::now();
                for i in 0..iterations {
                    device.portal_write(0, 0, black_box(&desc)).unwrap();
                    // The worker runs them; the WQ holds 16.
                    if (i + 1) % WQ_SIZE == 0 {
                        device.quiesce();
                    }
                }
                device.quiesce();
                gbps(size * iterations, start.elapsed())
            })
            .collect(),
    )
}

fn portal_submissions() -> f64 {
    let dir = std::env::temp_dir().join(format!("vfio-variant-idxd-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let backend = IdxdBackend::new(IdxdConfig::default()).unwrap();
    let layout = Arc::new(parse_layout("bench", &backend.default_layout("1dwq").unwrap()).unwrap());
    let function = backend
        .create(&CreateRequest {
            profile: "1dwq".into(),
            instance: "bench".into(),
            layout: Arc::clone(&layout),
            attributes: vec![],
        })
        .unwrap();
    let vf = Arc::new(VirtualFunction::new(Arc::new(compile(layout)), function).unwrap());
    let endpoint = Endpoint::bind(
        Port::new("bench", vf),
        &dir.join("bench.sock"),
        Arc::new(ServerConfig::default()),
    )
    .unwrap();
    let options = ClientOptions {
        timeout: Some(Duration::from_secs(10)),
        ..ClientOptions::default()
    };
    let mut client = Client::connect_with(endpoint.path(), options).unwrap();
    let guest = sealed_memfd(1 << 20);
    client
        .dma_map(
            &DmaMap::new(
                0x10_0000,
                1 << 20,
                0,
                DmaMapFlags::READ | DmaMapFlags::WRITE,
            ),
            Some(std::os::fd::AsFd::as_fd(&guest)),
        )
        .unwrap();
    client.region_write(7, 4, &[0x06, 0x00]).unwrap();
    for code in [cmd::ENABLE_DEVICE, cmd::ENABLE_WQ] {
        client
            .region_write(0, CMD, &(code << CMD_SHIFT).to_le_bytes())
            .unwrap();
    }
    let nop = Descriptor {
        opcode: op::NOP,
        flags: flag::CRAV | flag::RCR,
        completion_addr: 0x10_0000,
        ..Descriptor::default()
    }
    .encode();
    let rate = median(
        (0..ROUNDS)
            .map(|_| {
                let start = Instant::now();
                for i in 0..SUBMISSIONS {
                    client.region_write(2, 0, &nop).unwrap();
                    if (i + 1) % WQ_SIZE as u32 == 0 {
                        backend.device().quiesce();
                    }
                }
                backend.device().quiesce();
                f64::from(SUBMISSIONS) / start.elapsed().as_secs_f64()
            })
            .collect(),
    );
    drop(endpoint);
    let _ = std::fs::remove_dir_all(&dir);
    rate
}

fn main() {
    let memory = guest_memory(8 << 20);
    let device = pf(memory);
    for (label, size) in [("4k", 4usize << 10), ("64k", 64 << 10), ("1m", 1 << 20)] {
        let baseline = format!("memcpy_{label}_gbps");
        let copy = memcpy_gbps(size);
        report(&baseline, copy, "GB/s", None);
        let moved = engine_gbps(&device, op::MEMMOVE, size);
        report(
            &format!("memmove_{label}_gbps"),
            moved,
            "GB/s",
            Some((&baseline, copy)),
        );
        if size == 64 << 10 {
            let crc = engine_gbps(&device, op::CRC_GEN, size);
            report("crc_gen_64k_gbps", crc, "GB/s", Some((&baseline, copy)));
        }
    }
    report(
        "portal_submissions_per_s",
        portal_submissions(),
        "desc/s",
        None,
    );
}
