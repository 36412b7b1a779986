//! `cargo xtask bench`: runs the benchmark binaries (harness = false) and passes their
//! `BENCH name value unit [ratio=.. vs=..]` lines through.

use crate::cmd::{cargo, run as run_step};

/// Benchmarks: (package, bench target).
const BENCHES: &[(&str, &str)] = &[
    ("vfio-variant", "config_access"),
    ("vfio-variant-backends", "server"),
    ("vfio-variant-idxd", "engine"),
    ("vfio-variant-virtio-legacy", "legacy_io"),
];

/// Runs every benchmark, or those whose name contains one of `args`.
pub fn run(args: &[String]) -> Result<(), String> {
    for (package, bench) in BENCHES {
        if !args.is_empty() && !args.iter().any(|a| bench.contains(a.as_str())) {
            continue;
        }
        run_step(
            &format!("bench {package}/{bench}"),
            cargo().args(["bench", "--quiet", "-p", package, "--bench", bench]),
        )?;
    }
    Ok(())
}
