//! The kernel-VFIO part of `cargo xtask e2e`: the project's `VfioPhysicalFunction` on a real
//! kernel VFIO device.
//!
//! Boots a guest with QEMU's emulated Intel IOMMU and its `edu` device behind a root port,
//! binds `edu` to vfio-pci, and runs a static build of `vfio-variant` inside the guest:
//! `vpci derive --sysfs` (sysfs files) and `vpci derive --vfio` (the group/container API through
//! vfio-ioctls) must derive the same layout, and `vpci check --vfio` must bind it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::chroot::Kernel;
use super::guest::{Console, Guest, GuestError};
use super::initramfs::{Initramfs, Source};
use crate::cmd::{cargo, run as run_step, target_dir};

/// The guest's `/init`.
const INIT: &str = include_str!("vfio/init.sh");

/// The one target installed here; a static build of it runs in a bare initramfs.
const TARGET: &str = "x86_64-unknown-linux-gnu";

/// Builds `vfio-variant` as a static executable, small enough for an initramfs.
pub fn build_static() -> Result<PathBuf, String> {
    build_static_bin("vfio-variant-backends", "vfio-variant", false)
}

/// Builds the binary `bin` of `package` as a static executable (static-pie, no debug info,
/// stripped), which runs in a bare initramfs, with the release profile if `release`; returns its
/// path.
///
/// Static builds go to `static/` under the target directory, apart from the host's builds.
pub fn build_static_bin(package: &str, bin: &str, release: bool) -> Result<PathBuf, String> {
    let target_dir = target_dir().join("static");
    let profile = if release { "release" } else { "debug" };
    run_step(
        &format!("build a static {bin} ({profile}) for the guest"),
        cargo()
            .args(["build", "-p", package, "--bin", bin])
            .args(release.then_some("--release"))
            .args(["--target", TARGET, "--target-dir"])
            .arg(&target_dir)
            .env(
                "RUSTFLAGS",
                "-C target-feature=+crt-static -C debuginfo=0 -C strip=symbols",
            ),
    )?;
    let binary = target_dir.join(TARGET).join(profile).join(bin);
    if binary.is_file() {
        Ok(binary)
    } else {
        Err(format!("the build made no {}", binary.display()))
    }
}

/// The body of a derived layout: without its comment lines, which name where it came from.
fn body(lines: &[&str]) -> Vec<String> {
    lines
        .iter()
        .filter(|l| !l.starts_with('#') && !l.starts_with("status="))
        .map(|l| l.to_string())
        .collect()
}

fn status(console: &Console, section: &str) -> Result<(), GuestError> {
    let lines = console.section(section)?;
    match lines.iter().find_map(|l| l.strip_prefix("status=")) {
        Some("0") => Ok(()),
        other => Err(console.error(format!(
            "`{section}` failed (status {other:?}):\n{}",
            lines.join("\n")
        ))),
    }
}

/// Boots the guest and checks; returns the number of checks passed.
pub fn run(root: &Path, kernel: &Kernel, label: &str, binary: &Path) -> Result<usize, String> {
    let initrd = Initramfs::new(INIT)
        .module("vfio-pci")
        .module("vfio_iommu_type1")
        .file(
            "/bin/vfio-variant",
            Source::Host(binary.to_path_buf()),
            0o755,
        )
        .build(root, kernel)?;
    let console = Guest::new(root, &format!("e2e-{label}-vfio"), kernel, &initrd)
        .append("intel_iommu=on")
        .args([
            "-device",
            "intel-iommu",
            "-device",
            "pcie-root-port,id=rp1,bus=pcie.0,chassis=1",
            "-device",
            "edu,bus=rp1",
        ])
        .timeout(Duration::from_secs(120))
        .run()
        .map_err(String::from)?;
    let check = || -> Result<usize, GuestError> {
        let bind = console.section("bind")?;
        if !bind.contains(&"driver=vfio-pci") || !bind.iter().any(|l| l.starts_with("group=")) {
            return Err(console.error(format!(
                "edu is not bound to vfio-pci:\n{}",
                bind.join("\n")
            )));
        }
        eprintln!("    ok  edu bound to vfio-pci behind the IOMMU");
        status(&console, "sysfs")?;
        status(&console, "vfio")?;
        let (sysfs, vfio) = (
            body(&console.section("sysfs")?),
            body(&console.section("vfio")?),
        );
        if sysfs != vfio {
            return Err(console.error(format!(
                "derive through VFIO differs from derive through sysfs:\n--- sysfs\n{}\n--- vfio\n{}",
                sysfs.join("\n"),
                vfio.join("\n")
            )));
        }
        if !vfio.iter().any(|l| l.starts_with("vendor_id = 0x1234")) {
            return Err(console.error("the layout read through VFIO is not edu's"));
        }
        eprintln!(
            "    ok  vpci derive --vfio reads the same layout as --sysfs ({} lines)",
            vfio.len()
        );
        status(&console, "check")?;
        eprintln!("    ok  vpci check --vfio binds the derived layout to the device");
        Ok(3)
    };
    check().map_err(String::from)
}
