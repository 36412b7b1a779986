//! A function whose state is larger than 4 GiB migrates in chunk mode, through the framework's
//! stream as the server carries it (framed, checksummed, given to the destination record by
//! record): the firmware generates the device context memory as it saves it and checks every
//! page as it loads it, so the state is never held in memory, let alone twice; the process's
//! peak memory stays far below the state's size. Without chunk mode the firmware refuses such
//! a state.

mod common;

use std::sync::Arc;

use common::*;
use vfio_variant::device::VirtualFunction;
use vfio_variant::device::stream::{StreamIdentity, StreamLimits, StreamLoader, StreamWriter};
use vfio_variant::migration::{MigrationHooks, MigrationState};
use vfio_variant::vpci::{compile::compile, parse_layout};
use vfio_variant_mlx::backend::{LAYOUT, PROFILE_MIGRATABLE};
use vfio_variant_mlx::hw::dataplane::{CTX_PAGES, CTX_SEED, REGS};
use vfio_variant_mlx::hw::firmware::FirmwareCaps;
use vfio_variant_mlx::hw::image::PAGE_BYTES;
use vfio_variant_mlx::hw::pci::Generation;
use vfio_variant_mlx::hw::vf::MlxVf;

/// Context pages of a state just over 4 GiB and 8 MiB (so the last chunk is a partial one).
const PAGES: u32 = ((4u64 << 30) / PAGE_BYTES as u64) as u32 + 2048 + 3;

fn provision(host: &Host) -> VirtualFunction {
    let template = Arc::new(compile(Arc::new(parse_layout("mlx-vf", LAYOUT).unwrap())));
    VirtualFunction::provision(&host.backend, template, PROFILE_MIGRATABLE, "big", vec![]).unwrap()
}

fn set(vf: &MlxVf, reg: u64, value: u32) {
    vfio_variant::physical::PhysicalFunction::bar_write(vf, 0, REGS + reg, &value.to_le_bytes())
        .unwrap();
}

/// The peak resident memory of this process, in bytes.
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

fn walk(hooks: &dyn MigrationHooks, path: &[MigrationState]) {
    for pair in path.windows(2) {
        hooks.transition(pair[0], pair[1]).unwrap();
    }
}

#[test]
fn a_state_beyond_4_gib_moves_in_chunks_without_being_held() {
    use MigrationState::*;
    let old = host("gen1", Generation::One, FirmwareCaps::default());
    let new = host("gen2", Generation::Two, FirmwareCaps::default());
    let (src, dst) = (provision(&old), provision(&new));
    let (src_vf, dst_vf) = (&old.pf.vfs()[0], &new.pf.vfs()[0]);
    set(src_vf, CTX_PAGES, PAGES);
    set(src_vf, CTX_SEED, 0xbeef);
    let source = src.function().migration().unwrap();
    let destination = dst.function().migration().unwrap();

    let expected = source.stop_copy_size().unwrap();
    assert!(expected > 4 << 30);
    walk(source, &[Running, RunningP2p, Stop, StopCopy]);
    walk(destination, &[Running, RunningP2p, Stop, Resuming]);
    let identity =
        |vf: &VirtualFunction| StreamIdentity::new(&vf.template(), "mlx", PROFILE_MIGRATABLE);
    let mut writer = StreamWriter::new(identity(&src));
    // What the destination may hold: one record and the non-data records, nothing near the
    // state's size.
    let limits = StreamLimits {
        max_record: 2 << 20,
        max_stream: 1 << 20,
    };
    let mut loader = StreamLoader::new(identity(&dst), limits);
    let mut buf = vec![0u8; 1 << 20];
    let mut moved = 0u64;
    loop {
        let n = writer.read(source, &mut buf, true).unwrap();
        loader.feed_into(&buf[..n], destination).unwrap();
        moved += n as u64;
        if n < buf.len() {
            break;
        }
    }
    loader.finish().unwrap();
    assert!(moved > expected, "the state and its framing");
    walk(source, &[StopCopy, Stop]);
    walk(destination, &[Resuming, Stop, RunningP2p, Running]);
    assert_eq!(read_register(dst_vf, CTX_PAGES), PAGES);
    assert_eq!(read_register(dst_vf, CTX_SEED), 0xbeef);
    let peak = peak_rss();
    assert!(peak < 1 << 30, "peak resident memory {peak} bytes");
}

#[test]
fn without_chunk_mode_a_state_beyond_4_gib_is_refused() {
    use MigrationState::*;
    let caps = FirmwareCaps {
        in_chunks: false,
        ..FirmwareCaps::default()
    };
    let old = host("gen1", Generation::One, caps);
    let src = provision(&old);
    set(&old.pf.vfs()[0], CTX_PAGES, PAGES);
    let source = src.function().migration().unwrap();
    let error = source.stop_copy_size().unwrap_err();
    assert!(error.to_string().contains("syndrome 0x10005"), "{error}");
    walk(source, &[Running, RunningP2p, Stop, StopCopy]);
    assert!(source.save(&mut [0u8; 4096]).is_err());
}
