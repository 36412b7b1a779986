//! Dirty report cost for a large tracked range: 64 GiB of guest memory at 4 KiB pages with
//! one page in 64 dirty, reported whole through the firmware's page tracker (MODIFY commands
//! through the command queue, addresses turned into bitmap bits), against the framework's
//! own software tracking (`DirtyBitmap`) with the same pages marked, in the same run.
//! Prints `BENCH name value unit ratio=.. vs=..`.

use std::hint::black_box;
use std::time::Instant;

use vfio_variant::backend::{Backend, CreateRequest};
use vfio_variant::migration::dirty::DirtyBitmap;
use vfio_variant::vpci::parse_layout;
use vfio_variant_mlx::MlxBackend;
use vfio_variant_mlx::backend::PROFILE_MIGRATABLE;
use vfio_variant_mlx::hw::firmware::FirmwareCaps;
use vfio_variant_mlx::hw::pci::Generation;

const BASE: u64 = 1 << 32;
const LENGTH: u64 = 64 << 30;
const PAGE: u64 = 4096;
/// One page in this many is dirty.
const STRIDE: u64 = 64;
const ROUNDS: usize = 5;

fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

fn main() {
    let (backend, pf) =
        MlxBackend::emulated("gen1", Generation::One, 1, FirmwareCaps::default()).expect("PF");
    let layout = parse_layout("mlx-vf", vfio_variant_mlx::backend::LAYOUT).expect("layout");
    let function = backend
        .create(&CreateRequest {
            profile: PROFILE_MIGRATABLE.into(),
            instance: "bench".into(),
            layout: std::sync::Arc::new(layout),
            attributes: Vec::new(),
        })
        .expect("function");
    let tracker = function
        .migration()
        .and_then(|m| m.dirty_tracker())
        .expect("a page tracker");
    let pages = LENGTH / PAGE;
    let dirty = pages / STRIDE;
    let words = (pages / 64) as usize;

    let tracked = BASE..BASE + LENGTH;
    let software = DirtyBitmap::new(PAGE, std::slice::from_ref(&tracked)).expect("bitmap");
    let mut bitmap = vec![0u64; words];
    let baseline = median(
        (0..ROUNDS)
            .map(|_| {
                for page in (0..pages).step_by(STRIDE as usize) {
                    software.mark(BASE + page * PAGE, 8);
                }
                let start = Instant::now();
                software
                    .report(BASE, LENGTH, PAGE, black_box(&mut bitmap))
                    .expect("report");
                start.elapsed().as_secs_f64() * 1e3
            })
            .collect(),
    );
    assert_eq!(
        bitmap
            .iter()
            .map(|w| u64::from(w.count_ones()))
            .sum::<u64>(),
        dirty
    );

    let used = tracker
        .start(PAGE, std::slice::from_ref(&tracked))
        .expect("start");
    assert_eq!(used, PAGE);
    let vf = &pf.vfs()[0];
    let device = median(
        (0..ROUNDS)
            .map(|_| {
                {
                    let mut slot = vf.tracker().lock();
                    let t = slot.as_mut().expect("tracker");
                    for page in (0..pages).step_by(STRIDE as usize) {
                        t.mark(BASE + page * PAGE, 8);
                    }
                }
                bitmap.fill(0);
                let start = Instant::now();
                tracker
                    .report(BASE, LENGTH, PAGE, black_box(&mut bitmap))
                    .expect("report");
                start.elapsed().as_secs_f64() * 1e3
            })
            .collect(),
    );
    assert_eq!(
        bitmap
            .iter()
            .map(|w| u64::from(w.count_ones()))
            .sum::<u64>(),
        dirty
    );
    tracker.stop();
    println!("BENCH mlx_dirty_report_software_bitmap_64g {baseline:.2} ms");
    println!(
        "BENCH mlx_dirty_report_page_tracker_64g {device:.2} ms ratio={:.2} vs=mlx_dirty_report_software_bitmap_64g",
        device / baseline
    );
}
