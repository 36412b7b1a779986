//! Save and load throughput of a migratable function's state in chunk mode: a generation-1
//! function's 512 MiB state saved through SAVE_VHCA_STATE chunks and loaded into a
//! generation-2 function through LOAD_VHCA_STATE, record framing and the command queue
//! included, against a plain memcpy of the same bytes in 8 MiB chunks measured in the same
//! run. Prints `BENCH name value unit ratio=.. vs=..`.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use vfio_variant::device::VirtualFunction;
use vfio_variant::migration::{MigrationHooks, MigrationState};
use vfio_variant::physical::PhysicalFunction;
use vfio_variant::vpci::{compile::compile, parse_layout};
use vfio_variant_mlx::MlxBackend;
use vfio_variant_mlx::backend::{LAYOUT, PROFILE_MIGRATABLE};
use vfio_variant_mlx::hw::dataplane::{CTX_PAGES, REGS};
use vfio_variant_mlx::hw::firmware::FirmwareCaps;
use vfio_variant_mlx::hw::pci::Generation;

/// Context pages: 512 MiB of state.
const PAGES: u32 = 128 * 1024;
/// Bytes read from the source at a time (the framework's default chunk is 64 KiB; a VMM
/// reading the stream directly takes more).
const READ: usize = 1 << 20;
const ROUNDS: usize = 3;

fn provision(backend: &MlxBackend) -> VirtualFunction {
    let template = Arc::new(compile(Arc::new(
        parse_layout("mlx-vf", LAYOUT).expect("catalog layout"),
    )));
    VirtualFunction::provision(backend, template, PROFILE_MIGRATABLE, "bench", vec![])
        .expect("a migratable function")
}

fn walk(hooks: &dyn MigrationHooks, path: &[MigrationState]) {
    for pair in path.windows(2) {
        hooks.transition(pair[0], pair[1]).expect("arc");
    }
}

/// Seconds to move one state from `source` to `destination`, and the bytes moved.
fn migrate_once(source: &dyn MigrationHooks, destination: &dyn MigrationHooks) -> (f64, u64) {
    use MigrationState::*;
    let mut buf = vec![0u8; READ];
    let start = Instant::now();
    walk(source, &[Running, RunningP2p, Stop, StopCopy]);
    walk(destination, &[Running, RunningP2p, Stop, Resuming]);
    let mut moved = 0u64;
    loop {
        let n = source.save(&mut buf).expect("save");
        if n == 0 {
            break;
        }
        destination.load(&buf[..n]).expect("load");
        moved += n as u64;
    }
    walk(source, &[StopCopy, Stop, RunningP2p, Running]);
    walk(destination, &[Resuming, Stop, RunningP2p, Running]);
    (start.elapsed().as_secs_f64(), moved)
}

fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

fn main() {
    let caps = FirmwareCaps::default();
    let (old, old_pf) = MlxBackend::emulated("gen1", Generation::One, 1, caps).expect("PF");
    let (new, _) = MlxBackend::emulated("gen2", Generation::Two, 1, caps).expect("PF");
    let (src, dst) = (provision(&old), provision(&new));
    old_pf.vfs()[0]
        .bar_write(0, REGS + CTX_PAGES, &PAGES.to_le_bytes())
        .expect("register");
    let source = src.function().migration().expect("migratable");
    let destination = dst.function().migration().expect("migratable");

    let mut bytes = 0;
    let state: Vec<f64> = (0..ROUNDS)
        .map(|_| {
            let (seconds, moved) = migrate_once(source, destination);
            bytes = moved;
            moved as f64 / seconds / f64::from(1 << 30)
        })
        .collect();
    let state = median(state);

    let chunk = 8 << 20;
    let from = vec![0x5au8; chunk];
    let mut to = vec![0u8; chunk];
    let copy: Vec<f64> = (0..ROUNDS)
        .map(|_| {
            let start = Instant::now();
            let mut done = 0u64;
            while done < bytes {
                let n = chunk.min((bytes - done) as usize);
                black_box(&mut to)[..n].copy_from_slice(&black_box(&from)[..n]);
                done += n as u64;
            }
            bytes as f64 / start.elapsed().as_secs_f64() / f64::from(1 << 30)
        })
        .collect();
    let copy = median(copy);
    println!("BENCH mlx_memcpy_8m {copy:.2} GiB/s");
    println!(
        "BENCH mlx_state_save_load_chunked {state:.2} GiB/s ratio={:.3} vs=mlx_memcpy_8m",
        state / copy
    );
}
