//! The cached Debian sid chroot that provides QEMU (with `vfio-user-pci`), a guest kernel with its
//! modules and busybox-static, and [`Mounts`], the mounts QEMU needs while it runs inside it.
//!
//! Debian's own release ships no QEMU with the vfio-user client, and mixing sid packages into the
//! host breaks it, so everything the guests need comes from a chroot made by `debootstrap`. It is
//! made once and reused: `$VFIO_VARIANT_CACHE` names its directory, by default
//! `/var/cache/vfio-variant/sid-chroot`. Paths given to QEMU (kernel, initramfs, sockets) are
//! paths inside the chroot.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::output;
use crate::cmd::{have_program, run};

/// The packages the chroot gets on top of debootstrap's minimal base.
const PACKAGES: &str = "qemu-system-x86,linux-image-amd64,busybox-static";

/// What the stamp file holds: a change here rebuilds every cached chroot.
const RECIPE: &str = "debootstrap --variant=minbase --include=qemu-system-x86,linux-image-amd64,busybox-static sid\n";

/// The file written into the chroot once it is complete and checked.
const STAMP: &str = ".vfio-variant-ready";

/// The chroot's directory when `$VFIO_VARIANT_CACHE` is not set.
const DEFAULT_DIR: &str = "/var/cache/vfio-variant/sid-chroot";

/// Host programs the set-up and the initramfs builder run, with the Debian package of each.
const HOST_TOOLS: &[(&str, &str)] = &[
    ("debootstrap", "debootstrap"),
    ("cpio", "cpio"),
    ("xz", "xz-utils"),
    // Network namespaces for the two-host migration test.
    ("ip", "iproute2"),
];

/// The guest kernel found in the chroot.
#[derive(Debug, Clone)]
pub struct Kernel {
    /// The kernel release (`uname -r`), the name of its directory under `/lib/modules`.
    pub release: String,
    /// The kernel image, as a path inside the chroot (for QEMU's `-kernel`).
    pub image: String,
}

/// Returns the chroot's directory: `$VFIO_VARIANT_CACHE`, or `/var/cache/vfio-variant/sid-chroot`.
fn chroot_dir() -> PathBuf {
    match std::env::var_os("VFIO_VARIANT_CACHE") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => PathBuf::from(DEFAULT_DIR),
    }
}

/// Makes sure the chroot exists and is complete, setting it up if needed; returns its directory.
///
/// Idempotent: a chroot whose stamp file matches the current recipe is used as it is. Anything else
/// at that path (a half-made chroot from an interrupted run, an older recipe) is unmounted, removed
/// and made again. Also installs the host tools (debootstrap, cpio, xz) when they are missing.
pub fn ensure_chroot() -> Result<PathBuf, String> {
    ensure_host_tools()?;
    let dir = chroot_dir();
    if is_ready(&dir) {
        return Ok(dir);
    }
    eprintln!(
        "==> setting up the Debian sid chroot in {} (a few minutes)",
        dir.display()
    );
    remove_partial(&dir)?;
    if let Some(parent) = dir.parent() {
        fs::create_dir_all(parent)
            .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
    }
    run(
        "debootstrap Debian sid",
        Command::new("debootstrap")
            .arg("--variant=minbase")
            .arg(format!("--include={PACKAGES}"))
            .arg("sid")
            .arg(&dir),
    )?;
    check(&dir)?;
    fs::write(dir.join(STAMP), RECIPE)
        .map_err(|e| format!("cannot write {}: {e}", dir.join(STAMP).display()))?;
    eprintln!("==> the chroot in {} is ready", dir.display());
    Ok(dir)
}

/// Whether the chroot in `dir` was completed with the current recipe and still has its kernel.
fn is_ready(dir: &Path) -> bool {
    fs::read_to_string(dir.join(STAMP)).is_ok_and(|stamp| stamp == RECIPE)
        && super::kernels::sid(dir).is_ok()
        && busybox(dir).is_ok()
}

/// Checks a freshly made chroot: kernel, modules, busybox, and a QEMU with `vfio-user-pci`.
fn check(dir: &Path) -> Result<(), String> {
    let kernel = super::kernels::sid(dir)?;
    busybox(dir)?;
    let _mounts = Mounts::new(dir)?;
    let qemu = qemu_version(dir)?;
    let devices = output(
        "list the devices of the chroot's QEMU",
        Command::new("chroot")
            .arg(dir)
            .args(["qemu-system-x86_64", "-device", "help"]),
    )?;
    if !devices.contains("name \"vfio-user-pci\"") {
        return Err(format!(
            "the chroot's QEMU ({qemu}) has no `vfio-user-pci` device; Debian sid's QEMU should"
        ));
    }
    eprintln!("==> chroot has {qemu}, kernel {}", kernel.release);
    Ok(())
}

/// The first line of `qemu-system-x86_64 --version` in the chroot, e.g. `QEMU emulator version 11.1.3`.
pub fn qemu_version(dir: &Path) -> Result<String, String> {
    let text = output(
        "ask the chroot's QEMU for its version",
        Command::new("chroot")
            .arg(dir)
            .args(["qemu-system-x86_64", "--version"]),
    )?;
    Ok(text.lines().next().unwrap_or_default().trim().to_string())
}

/// Installs the host programs the set-up, the initramfs builder and the two-host migration
/// test need, when some are missing.
pub fn ensure_host_tools() -> Result<(), String> {
    let missing: Vec<&str> = HOST_TOOLS
        .iter()
        .filter(|(program, _)| !have_program(program))
        .map(|&(_, package)| package)
        .collect();
    apt_install(&missing)
}

/// Installs the Debian `packages` (none: does nothing).
///
/// Runs `apt-get update` first when the host has no package lists, or once after an install that
/// failed (stale lists).
pub fn apt_install(packages: &[&str]) -> Result<(), String> {
    if packages.is_empty() {
        return Ok(());
    }
    let update = || {
        run(
            "apt-get update",
            Command::new("apt-get").args(["update", "-q"]),
        )
    };
    let install = || {
        run(
            &format!("apt-get install {}", packages.join(" ")),
            Command::new("apt-get")
                .args(["install", "-y", "-q", "--no-install-recommends"])
                .args(packages)
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )
    };
    if !have_package_lists() {
        update()?;
        return install();
    }
    if install().is_err() {
        update()?;
        install()?;
    }
    Ok(())
}

/// Whether apt has any package lists (it has none before its first `apt-get update`).
fn have_package_lists() -> bool {
    fs::read_dir("/var/lib/apt/lists").is_ok_and(|entries| {
        entries
            .flatten()
            .any(|entry| entry.file_name().to_string_lossy().contains("_Packages"))
    })
}

/// Removes whatever is at `dir` (a half-made or outdated chroot), unmounting anything below first.
fn remove_partial(dir: &Path) -> Result<(), String> {
    if fs::symlink_metadata(dir).is_err() {
        return Ok(());
    }
    if !looks_like_a_chroot(dir) {
        return Err(format!(
            "{} is neither empty nor a (half-made) Debian chroot; not removing it \
             (VFIO_VARIANT_CACHE names the chroot's own directory)",
            dir.display()
        ));
    }
    eprintln!("==> removing the incomplete chroot in {}", dir.display());
    let canonical = canonical(dir)?;
    let mut points: Vec<PathBuf> = mount_points()?
        .into_iter()
        .filter(|point| point.starts_with(&canonical))
        .collect();
    // Deepest first, so that nested mounts come off before their parents.
    points.sort_by_key(|point| std::cmp::Reverse(point.components().count()));
    for point in &points {
        unmount(point)?;
    }
    if let Some(point) = mount_points()?
        .into_iter()
        .find(|point| point.starts_with(&canonical))
    {
        return Err(format!(
            "{} is still mounted; not removing {}",
            point.display(),
            dir.display()
        ));
    }
    fs::remove_dir_all(dir).map_err(|e| format!("cannot remove {}: {e}", dir.display()))
}

/// Whether `dir` is empty or holds what debootstrap makes (so that removing it loses nothing else).
fn looks_like_a_chroot(dir: &Path) -> bool {
    let empty = fs::read_dir(dir).is_ok_and(|mut entries| entries.next().is_none());
    empty
        || ["debootstrap", "var/lib/dpkg", STAMP]
            .iter()
            .any(|marker| fs::symlink_metadata(dir.join(marker)).is_ok())
}

/// The host path of the chroot's `/lib/modules/<release>` (through `/usr/lib` on merged-/usr systems).
pub fn modules_dir(dir: &Path, release: &str) -> PathBuf {
    let merged = dir.join("usr/lib/modules").join(release);
    if merged.is_dir() {
        merged
    } else {
        dir.join("lib/modules").join(release)
    }
}

/// The host path of the chroot's static busybox.
pub fn busybox(dir: &Path) -> Result<PathBuf, String> {
    ["usr/bin/busybox", "bin/busybox"]
        .iter()
        .map(|path| dir.join(path))
        .find(|path| path.is_file())
        .ok_or_else(|| format!("no busybox in {} (package busybox-static)", dir.display()))
}

/// `/dev` bind-mounted and `/proc` mounted in the chroot, for as long as this guard lives.
///
/// Dropping it unmounts both, also when the run that made it fails. A mount already there (left
/// by an interrupted run) is taken over as it is and unmounted on drop as well. Two runs at once
/// on the same chroot are not supported: the first to finish unmounts for both.
pub struct Mounts {
    /// What this guard unmounts on drop, in mount order.
    points: Vec<PathBuf>,
}

impl Mounts {
    /// Mounts `/dev` (bind) and `/proc` into the chroot at `dir`.
    pub fn new(dir: &Path) -> Result<Self, String> {
        let dir = canonical(dir)?;
        let mut guard = Mounts { points: Vec::new() };
        let mounted = mount_points()?;
        let dev = dir.join("dev");
        if !mounted.contains(&dev) {
            mount(
                "bind-mount /dev into the chroot",
                Command::new("mount").arg("--bind").arg("/dev").arg(&dev),
            )?;
        }
        guard.points.push(dev);
        let proc = dir.join("proc");
        if !mounted.contains(&proc) {
            mount(
                "mount proc in the chroot",
                Command::new("mount")
                    .args(["-t", "proc", "proc"])
                    .arg(&proc),
            )?;
        }
        guard.points.push(proc);
        Ok(guard)
    }
}

impl Drop for Mounts {
    fn drop(&mut self) {
        for point in self.points.iter().rev() {
            if let Err(message) = unmount(point) {
                eprintln!("xtask: warning: {message}");
            }
        }
    }
}

/// Runs a `mount` command quietly; fails with the command, its status and its message.
fn mount(step: &str, command: &mut Command) -> Result<(), String> {
    output(step, command).map(drop)
}

/// Unmounts `point`, lazily (`umount -l`) if a plain unmount fails (busy).
fn unmount(point: &Path) -> Result<(), String> {
    let plain = output(
        &format!("unmount {}", point.display()),
        Command::new("umount").arg(point),
    );
    if plain.is_ok() {
        return Ok(());
    }
    output(
        &format!("lazily unmount {}", point.display()),
        Command::new("umount").arg("-l").arg(point),
    )
    .map(drop)
}

/// `path` made absolute with symlinks resolved, as `/proc/self/mountinfo` shows mount points.
fn canonical(path: &Path) -> Result<PathBuf, String> {
    fs::canonicalize(path).map_err(|e| format!("cannot resolve {}: {e}", path.display()))
}

/// Every mount point of this process's mount namespace, from `/proc/self/mountinfo`.
fn mount_points() -> Result<Vec<PathBuf>, String> {
    let text = fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e: io::Error| format!("cannot read /proc/self/mountinfo: {e}"))?;
    Ok(text
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|field| PathBuf::from(unescape_mount_point(field)))
        .collect())
}

/// Decodes the octal escapes (`\040` for a space and so on) of a mountinfo field.
fn unescape_mount_point(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escape = bytes.get(i + 1..i + 4).filter(|digits| {
            bytes[i] == b'\\' && digits.iter().all(|digit| (b'0'..=b'7').contains(digit))
        });
        match escape {
            Some(digits) => {
                let value = digits
                    .iter()
                    .fold(0u32, |value, digit| value * 8 + u32::from(digit - b'0'));
                out.push(u8::try_from(value).unwrap_or(b'?'));
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::unescape_mount_point;

    #[test]
    fn mountinfo_escapes_are_decoded() {
        assert_eq!(unescape_mount_point(r"/a\040b\134c"), r"/a b\c");
        assert_eq!(unescape_mount_point(r"/plain\x"), r"/plain\x");
    }
}
