//! `cargo xtask ci`: everything a submission must pass, in order, failing fast.

use std::path::Path;

use crate::cmd::{cargo, run as run_step, workspace_root};

/// Crates outside the workspace that CI checks too (fuzz targets, the example plugin, the
/// plugin loader's fixtures).
fn side_manifests() -> Vec<String> {
    let root = workspace_root();
    [
        "fuzz/Cargo.toml",
        "tests/plugin-example/Cargo.toml",
        "tests/plugin-variants/Cargo.toml",
    ]
    .iter()
    .filter(|m| root.join(m).is_file())
    .map(|m| m.to_string())
    .collect()
}

/// Runs every check.
pub fn run() -> Result<(), String> {
    let side = side_manifests();
    run_step("format", cargo().args(["fmt", "--all", "--check"]))?;
    for manifest in &side {
        run_step(
            &format!("format {manifest}"),
            cargo().args(["fmt", "--check", "--manifest-path", manifest]),
        )?;
    }
    run_step(
        "clippy",
        cargo().args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]),
    )?;
    eprintln!("==> framework layers (no import runs upward)");
    crate::layers::run().map_err(|e| format!("framework layers: {e}"))?;
    for manifest in &side {
        run_step(
            &format!("clippy {manifest}"),
            cargo().args([
                "clippy",
                "--all-targets",
                "--manifest-path",
                manifest,
                "--",
                "-D",
                "warnings",
            ]),
        )?;
    }
    run_step(
        "docs",
        cargo()
            .args(["doc", "--workspace", "--no-deps"])
            .env("RUSTDOCFLAGS", "-D warnings"),
    )?;
    if Path::new(&workspace_root().join("fuzz/Cargo.toml")).is_file() {
        run_step(
            "fuzz targets build",
            cargo().args(["build", "--manifest-path", "fuzz/Cargo.toml", "--bins"]),
        )?;
    }
    run_step(
        "tests",
        // Not --all-targets: that would run the benchmarks (harness = false) as tests.
        cargo().args(["test", "--workspace", "--lib", "--bins", "--tests"]),
    )?;
    run_step("doc tests", cargo().args(["test", "--workspace", "--doc"]))?;
    crate::e2e::chroot::ensure_host_tools()?;
    run_step(
        "live migration between two hosts (network namespaces)",
        cargo().args([
            "test",
            "-p",
            "vfio-variant-backends",
            "--test",
            "migration_hosts",
            "--",
            "--ignored",
        ]),
    )?;
    eprintln!("==> e2e");
    crate::e2e::server::run(&[])
}
