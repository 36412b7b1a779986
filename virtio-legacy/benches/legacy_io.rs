//! The cost of the legacy I/O BAR of a transitional virtio-blk VF: every register access but
//! QUEUE_NOTIFY becomes an admin command on the emulated PF's admin virtqueue (a descriptor
//! chain in DMA memory, a notify, the PF processing it, a used-ring entry). Prints
//! `BENCH legacy_admin_commands_per_second_<register> N commands/s` for 4-byte HOST_FEATURES
//! reads and 1-byte STATUS reads through the backend function (no socket involved).

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use vfio_variant::backend::{Backend, CreateRequest};
use vfio_variant::vpci::parse_layout;
use vfio_variant_virtio_legacy::backend::PROFILE_TRANSITIONAL;
use vfio_variant_virtio_legacy::builtin::EmulatedPf;

const ROUNDS: usize = 5;
const CALLS: u32 = 20_000;

fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

fn main() {
    let dir =
        std::env::temp_dir().join(format!("vfio-variant-bench-virtio-{}", std::process::id()));
    let pf = EmulatedPf::blk(&dir, true).expect("an emulated virtio-blk PF");
    let text = pf.default_layout(PROFILE_TRANSITIONAL).expect("layout");
    let layout = Arc::new(parse_layout("virtio-blk-transitional", &text).expect("catalog layout"));
    let function = pf
        .create(&CreateRequest {
            profile: PROFILE_TRANSITIONAL.into(),
            instance: "bench".into(),
            layout,
            attributes: Vec::new(),
        })
        .expect("a transitional function");
    for (name, offset, width) in [("host_features_read", 0u64, 4usize), ("status_read", 18, 1)] {
        let rate = median(
            (0..ROUNDS)
                .map(|_| {
                    let mut data = [0u8; 4];
                    let start = Instant::now();
                    for _ in 0..CALLS {
                        function
                            .legacy_io_read(black_box(offset), &mut data[..width])
                            .expect("legacy read");
                    }
                    f64::from(CALLS) / start.elapsed().as_secs_f64()
                })
                .collect(),
        );
        println!("BENCH legacy_admin_commands_per_second_{name} {rate:.0} commands/s");
    }
    drop(function);
    drop(pf);
}
