//! `cargo xtask bench`: runs the benchmark binaries (harness = false) and passes their
//! `BENCH name value unit [ratio=.. vs=..]` lines through, then the guest block benchmark
//! ([`crate::e2e::blkbench`]), the nested nvme benchmark ([`crate::e2e::nested`]) and the
//! downtime of a QEMU live migration with the project's QEMU patches
//! ([`crate::e2e::qemu_migration`]); those need root: they boot QEMU guests. The `server` benchmark runs libvfio-user's gpio sample beside
//! ours ([`crate::peers`]); when it cannot be built the benchmark says so and goes on without
//! it. It draws its side-by-side figures as an SVG chart in `target/bench/server.svg`.

use crate::cmd::{cargo, run as run_step, target_dir};
use crate::e2e::{blkbench, nested, qemu_migration, server};
use crate::peers;

/// The benchmark that measures libvfio-user beside the server.
const PEER_BENCH: &str = "server";
/// The variable that names libvfio-user's gpio sample to it.
const PEER_ENV: &str = "VFIO_VARIANT_LIBVFIO_USER_GPIO";
/// The variable that names the SVG chart it writes.
const PLOT_ENV: &str = "VFIO_VARIANT_BENCH_PLOT";
/// The chart, under the target directory.
const PLOT: &str = "bench/server.svg";

/// Benchmarks: (package, bench target).
const BENCHES: &[(&str, &str)] = &[
    ("vfio-variant", "config_access"),
    ("vfio-variant-backends", "server"),
    ("vfio-variant-idxd", "engine"),
    ("vfio-variant-virtio-legacy", "legacy_io"),
    ("vfio-variant", "dirty_logging"),
    ("vfio-variant", "stop_copy"),
    ("vfio-variant-backends", "migration_downtime"),
    ("vfio-variant-backends", "idle"),
    ("vfio-variant-mlx", "state_chunks"),
    ("vfio-variant-mlx", "dirty_report"),
];

/// The name the guest block benchmark is selected by.
const GUEST_BLK: &str = "guest_blk";
/// The name the nested nvme benchmark (a real function through kernel VFIO) is selected by.
const NESTED_NVME: &str = "nested_nvme";

/// The name the QEMU live-migration downtime benchmark is selected by.
const QEMU_MIGRATION: &str = "qemu_migration_downtime";
/// Live migrations of each guest in that benchmark.
const QEMU_MIGRATION_ROUNDS: usize = 5;

/// Whether the benchmark `name` is selected by `args` (all are when there are none).
fn selected(args: &[String], name: &str) -> bool {
    args.is_empty() || args.iter().any(|a| name.contains(a.as_str()))
}

/// Runs every benchmark, or those whose name contains one of `args`.
pub fn run(args: &[String]) -> Result<(), String> {
    for (package, bench) in BENCHES {
        if !selected(args, bench) {
            continue;
        }
        let mut command = cargo();
        command.args(["bench", "--quiet", "-p", package, "--bench", bench]);
        if *bench == PEER_BENCH {
            let plot = target_dir().join(PLOT);
            if let Some(dir) = plot.parent() {
                let _ = std::fs::create_dir_all(dir);
            }
            command.env(PLOT_ENV, plot);
            match peers::libvfio_user_gpio() {
                Ok(program) => {
                    command.env(PEER_ENV, program);
                }
                Err(e) => eprintln!("==> libvfio-user left out of the bench: {e}"),
            }
        }
        run_step(&format!("bench {package}/{bench}"), &mut command)?;
    }
    if selected(args, GUEST_BLK) {
        eprintln!("==> bench {GUEST_BLK} (three QEMU guests under TCG, about 40 s each)");
        let all = blkbench::run()?;
        for results in all.iter().filter(|r| r.shared) {
            print_guest_blk(results);
        }
        print_private_ram(&all);
    }
    if selected(args, NESTED_NVME) {
        eprintln!("==> bench {NESTED_NVME} (L1 under TCG, four L2 boots under KVM in it)");
        print_nested(&nested::bench()?);
    }
    if selected(args, QEMU_MIGRATION) {
        eprintln!(
            "==> bench {QEMU_MIGRATION} ({QEMU_MIGRATION_ROUNDS} live migrations of each guest \
             between two patched QEMUs under TCG, about 15 s each)"
        );
        print_qemu_migration(&server::bench_migration(QEMU_MIGRATION_ROUNDS)?);
    }
    Ok(())
}

/// The middle value of `values` (the upper middle of an even count).
fn median(values: &[u64]) -> u64 {
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    sorted.get(sorted.len() / 2).copied().unwrap_or(0)
}

/// The `BENCH` lines of the QEMU live migration: the median downtime with the VF against the
/// median with QEMU's own virtio-blk-pci, over the same interleaved rounds.
fn print_qemu_migration(downtimes: &qemu_migration::Downtimes) {
    eprintln!(
        "==> downtimes (ms): VF {:?}, virtio-blk-pci {:?}",
        downtimes.vf_ms, downtimes.stock_ms
    );
    let (vf, stock) = (median(&downtimes.vf_ms), median(&downtimes.stock_ms));
    let baseline = "qemu_virtio_blk_pci_migration_downtime";
    println!(
        "BENCH {QEMU_MIGRATION} {vf} ms ratio={:.2} vs={baseline}",
        vf as f64 / stock.max(1) as f64
    );
    println!("BENCH {baseline} {stock} ms");
}

/// The price of private guest RAM: the VF's 4 KiB random-read IOPS on the legacy path with
/// private RAM (DMA by messages) against shared RAM, both boots of the same run.
fn print_private_ram(all: &[blkbench::Results]) {
    let legacy = |shared| {
        all.iter()
            .find(|r| r.shared == shared && r.path == blkbench::Path::Legacy)
    };
    if let (Some(private), Some(shared)) = (legacy(false), legacy(true)) {
        println!(
            "BENCH {GUEST_BLK}_private_randread_4k {:.2} IOPS ratio={:.2} vs={GUEST_BLK}_randread_4k",
            private.vf.randread_iops,
            private.vf.randread_iops / shared.vf.randread_iops
        );
    }
}

/// The `BENCH` lines of the nested nvme: L2 through the passthrough function (the mean of two
/// boots) against L2 through QEMU's own vfio-pci (the mean of a boot before and one after them),
/// and the server's CPU time against L2's QEMU's, while L2 runs blkbench and over the whole
/// first vfio-user L2 boot.
fn print_nested(results: &nested::BenchResults) {
    let (user, baseline) = (results.user, results.baseline);
    let vs = "qemu_vfio_pci";
    println!(
        "BENCH {NESTED_NVME}_randread_4k {:.2} IOPS ratio={:.2} vs={vs}",
        user.randread_iops,
        user.randread_iops / baseline.randread_iops
    );
    println!(
        "BENCH {NESTED_NVME}_seq_read {:.2} MB/s ratio={:.2} vs={vs}",
        user.seq_mbps,
        user.seq_mbps / baseline.seq_mbps
    );
    println!(
        "BENCH {vs}_nested_randread_4k {:.2} IOPS",
        baseline.randread_iops
    );
    println!("BENCH {vs}_nested_seq_read {:.2} MB/s", baseline.seq_mbps);
    println!(
        "BENCH {NESTED_NVME}_server_cpu {:.2} s ratio={:.4} vs=l2_qemu_cpu",
        results.server_cpu,
        results.server_cpu / results.qemu_cpu
    );
    println!(
        "BENCH {NESTED_NVME}_server_cpu_boot {:.2} s ratio={:.4} vs=l2_qemu_cpu_boot",
        results.server_cpu_boot,
        results.server_cpu_boot / results.qemu_cpu_boot
    );
}

/// The `BENCH` lines of one boot of the guest block benchmark: the VF's figures against QEMU's
/// own virtio-blk on the same path, then QEMU's. The legacy path's names have no path in them.
fn print_guest_blk(results: &blkbench::Results) {
    let (vf, builtin, ratio) = (results.vf, results.builtin, results.ratio);
    let path = results.path.name();
    let name = match results.path {
        blkbench::Path::Legacy => GUEST_BLK.to_string(),
        blkbench::Path::Modern => format!("{GUEST_BLK}_{path}"),
    };
    let baseline = format!("qemu_virtio_blk_{path}");
    println!(
        "BENCH {name}_randread_4k {:.2} IOPS ratio={:.2} vs={baseline}",
        vf.randread_iops, ratio.randread_iops
    );
    println!(
        "BENCH {name}_seq_read {:.2} MB/s ratio={:.2} vs={baseline}",
        vf.seq_mbps, ratio.seq_mbps
    );
    println!(
        "BENCH {baseline}_randread_4k {:.2} IOPS",
        builtin.randread_iops
    );
    println!("BENCH {baseline}_seq_read {:.2} MB/s", builtin.seq_mbps);
}

#[cfg(test)]
mod tests {
    use super::median;

    #[test]
    fn the_median_is_the_middle_of_the_sorted_values() {
        assert_eq!(median(&[66, 5, 9, 12, 7]), 9);
        assert_eq!(median(&[209, 3]), 209);
        assert_eq!(median(&[]), 0);
    }
}
