//! QEMU end-to-end infrastructure: a cached Debian sid chroot that provides QEMU (with the
//! vfio-user client) and a guest kernel ([`chroot`]), initramfs images built from busybox and the
//! kernel's modules ([`initramfs`]), guests booted under TCG whose serial console is parsed for
//! marker-delimited sections ([`guest`]), and their users: `cargo xtask capture-configs`
//! ([`capture`]), `cargo xtask e2e` ([`server`], [`vfio`] for kernel VFIO, [`nested`] for a real
//! function through kernel VFIO one VM level down, [`virtio`] for the virtio VFs,
//! [`qemu_migration`] for QEMU live migration with the project's patches) and the guest block
//! benchmark of `cargo xtask bench` ([`blkbench`]).

pub mod blkbench;
pub mod capture;
pub mod chroot;
pub mod guest;
pub mod initramfs;
pub mod kernels;
pub mod nested;
pub mod qemu_migration;
pub mod server;
pub mod vfio;
pub mod virtio;

use std::process::{Command, Stdio};

/// Runs `command` with its output captured and returns its standard output.
///
/// Fails naming the step, the command, its exit status and its standard error.
fn output(step: &str, command: &mut Command) -> Result<String, String> {
    let out = command
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{step}: cannot start {command:?}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{step} failed ({}): {command:?}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim_end()
        ))
    }
}
