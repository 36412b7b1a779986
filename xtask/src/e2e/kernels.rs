//! The guest kernels of the end-to-end tests, picked by release.
//!
//! Two generations boot the same guest checks:
//!
//! - **sid**: the kernel of the chroot's own `linux-image-amd64` (Debian sid, 7.x; the PCI
//!   transport `virtio_pci` is built in there);
//! - **Debian 12**: `linux-image-6.1.0-*-amd64` from the host's Debian 12 (bookworm) archive,
//!   unpacked into the chroot (its `virtio_pci` is a module, so the initramfs must load it and
//!   hand it its parameters, as modprobe would).
//!
//! The Debian 12 kernel is installed once: `apt-get download` on the host, `dpkg-deb -x` into a
//! staging directory, its image and modules copied into the chroot, `depmod` run inside the
//! chroot, and its release written to a stamp file; later runs find it by that stamp.
//! [`by_release`] finds any kernel the chroot holds, for `cargo xtask e2e --kernel RELEASE`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::chroot::{self, Kernel};
use super::output;
use crate::cmd::run;

/// The stamp naming the release of the Debian 12 kernel installed into the chroot.
const DEBIAN12_STAMP: &str = "var/cache/vfio-variant/debian12-kernel";

/// The kernel series Debian 12 ships: what the installed release must start with.
const DEBIAN12_SERIES: &str = "6.1.";

/// The kernels the guest checks run on, each with a short label for the summary.
pub fn both(root: &Path) -> Result<Vec<(String, Kernel)>, String> {
    Ok(vec![
        ("sid".to_string(), sid(root)?),
        ("debian12".to_string(), ensure_debian12(root)?),
    ])
}

/// The sid kernel: the one the chroot's package manager installed (`linux-image-<release>` in
/// its dpkg status).
pub fn sid(root: &Path) -> Result<Kernel, String> {
    let status_path = root.join("var/lib/dpkg/status");
    let status = fs::read_to_string(&status_path)
        .map_err(|e| format!("cannot read {}: {e}", status_path.display()))?;
    let release = installed_image(&status).ok_or_else(|| {
        format!(
            "the chroot's dpkg status ({}) lists no installed linux-image-<release>",
            status_path.display()
        )
    })?;
    by_release(root, &release)
}

/// The kernel of release `release` in the chroot: `/boot/vmlinuz-<release>` with its modules.
pub fn by_release(root: &Path, release: &str) -> Result<Kernel, String> {
    let image = root.join("boot").join(format!("vmlinuz-{release}"));
    let dep = chroot::modules_dir(root, release).join("modules.dep");
    if !image.is_file() || !dep.is_file() {
        return Err(format!(
            "the chroot has no kernel {release} (needs {} and {}); it has: {}",
            image.display(),
            dep.display(),
            releases(root).join(", ")
        ));
    }
    Ok(Kernel {
        image: format!("/boot/vmlinuz-{release}"),
        release: release.to_string(),
    })
}

/// Every kernel release in the chroot's `/boot`, sorted.
fn releases(root: &Path) -> Vec<String> {
    let mut releases: Vec<String> = fs::read_dir(root.join("boot"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            name.strip_prefix("vmlinuz-").map(str::to_string)
        })
        .collect();
    releases.sort();
    releases
}

/// The Debian 12 kernel, installed into the chroot first if it is not there yet.
pub fn ensure_debian12(root: &Path) -> Result<Kernel, String> {
    let stamp = root.join(DEBIAN12_STAMP);
    if let Ok(release) = fs::read_to_string(&stamp)
        && let Ok(kernel) = by_release(root, release.trim())
    {
        return Ok(kernel);
    }
    let package = debian12_package()?;
    let release = package
        .strip_prefix("linux-image-")
        .ok_or_else(|| format!("`{package}` is not a linux-image package"))?
        .to_string();
    if !release.starts_with(DEBIAN12_SERIES) {
        return Err(format!(
            "the host's archive offers {package}, not Debian 12's {DEBIAN12_SERIES}x kernel; \
             the e2e needs a Debian 12 host (or `cargo xtask e2e --kernel RELEASE`)"
        ));
    }
    eprintln!("==> installing the Debian 12 guest kernel {release} into the chroot");
    let staging = Staging::new(root.join(format!(
        "var/cache/vfio-variant/.kernel-staging-{}",
        std::process::id()
    )))?;
    run(
        &format!("apt-get download {package}"),
        Command::new("apt-get")
            .args(["download", "-q", &package])
            .current_dir(&staging.0),
    )?;
    let deb = fs::read_dir(&staging.0)
        .map_err(|e| format!("cannot list {}: {e}", staging.0.display()))?
        .flatten()
        .map(|entry| entry.path())
        .find(|path| path.extension().is_some_and(|ext| ext == "deb"))
        .ok_or_else(|| format!("apt-get download {package} left no .deb"))?;
    let unpacked = staging.0.join("root");
    run(
        &format!("unpack {}", deb.display()),
        Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpacked),
    )?;
    let modules_from = ["usr/lib/modules", "lib/modules"]
        .iter()
        .map(|dir| unpacked.join(dir).join(&release))
        .find(|dir| dir.is_dir())
        .ok_or_else(|| format!("{package} has no modules directory for {release}"))?;
    let modules_to = root.join("usr/lib/modules").join(&release);
    if modules_to.exists() {
        fs::remove_dir_all(&modules_to)
            .map_err(|e| format!("cannot remove {}: {e}", modules_to.display()))?;
    }
    run(
        "copy the Debian 12 kernel's modules into the chroot",
        Command::new("cp")
            .arg("-a")
            .arg(&modules_from)
            .arg(&modules_to),
    )?;
    let image = format!("vmlinuz-{release}");
    fs::copy(
        unpacked.join("boot").join(&image),
        root.join("boot").join(&image),
    )
    .map_err(|e| format!("cannot copy {image} into the chroot: {e}"))?;
    output(
        &format!("depmod {release} in the chroot"),
        Command::new("chroot")
            .arg(root)
            .args(["depmod", "-a", &release]),
    )?;
    let kernel = by_release(root, &release)?;
    if let Some(parent) = stamp.parent() {
        fs::create_dir_all(parent)
            .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
    }
    fs::write(&stamp, format!("{release}\n"))
        .map_err(|e| format!("cannot write {}: {e}", stamp.display()))?;
    Ok(kernel)
}

/// The host archive's current Debian 12 kernel package (`linux-image-6.1.0-N-amd64`), from
/// what its `linux-image-amd64` depends on; refreshes the package lists once if apt knows none.
fn debian12_package() -> Result<String, String> {
    let ask = || {
        output(
            "apt-cache depends linux-image-amd64",
            Command::new("apt-cache").args(["depends", "linux-image-amd64"]),
        )
        .ok()
        .and_then(|text| image_dependency(&text))
    };
    if let Some(package) = ask() {
        return Ok(package);
    }
    run(
        "apt-get update",
        Command::new("apt-get").args(["update", "-q"]),
    )?;
    ask().ok_or_else(|| {
        "the host's package archive has no linux-image-amd64 depending on a linux-image-<release>"
            .to_string()
    })
}

/// The `linux-image-<release>` a metapackage depends on, from `apt-cache depends` output.
fn image_dependency(text: &str) -> Option<String> {
    text.lines()
        .filter_map(|line| line.trim().strip_prefix("Depends:"))
        .map(str::trim)
        .find(|package| package.starts_with("linux-image-") && package != &"linux-image-amd64")
        .map(str::to_string)
}

/// The release of the installed `linux-image-<release>` package in a dpkg status file (the
/// metapackage `linux-image-amd64` aside).
fn installed_image(status: &str) -> Option<String> {
    status.split("\n\n").find_map(|stanza| {
        let field = |name: &str| {
            stanza
                .lines()
                .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
                .map(str::trim)
        };
        let release = field("Package")?.strip_prefix("linux-image-")?;
        let installed = field("Status").is_some_and(|s| s.ends_with(" installed"));
        (installed && release != "amd64" && !release.ends_with("-dbg")).then(|| release.to_string())
    })
}

/// A directory removed on drop.
struct Staging(PathBuf);

impl Staging {
    fn new(path: PathBuf) -> Result<Self, String> {
        if path.exists() {
            fs::remove_dir_all(&path)
                .map_err(|e| format!("cannot remove {}: {e}", path.display()))?;
        }
        fs::create_dir_all(&path).map_err(|e| format!("cannot create {}: {e}", path.display()))?;
        Ok(Staging(path))
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::{image_dependency, installed_image};

    #[test]
    fn the_metapackage_names_its_image() {
        let text = "linux-image-amd64\n  Depends: linux-image-6.1.0-48-amd64\n";
        assert_eq!(
            image_dependency(text).as_deref(),
            Some("linux-image-6.1.0-48-amd64")
        );
        assert_eq!(image_dependency("linux-image-amd64\n"), None);
    }

    #[test]
    fn the_installed_image_is_found_in_dpkg_status() {
        let status = "Package: linux-image-amd64\nStatus: install ok installed\n\n\
                      Package: linux-image-7.2.13+deb14-amd64\nStatus: install ok installed\n\n\
                      Package: linux-image-7.1.0-1-amd64\nStatus: deinstall ok config-files\n";
        assert_eq!(
            installed_image(status).as_deref(),
            Some("7.2.13+deb14-amd64")
        );
        assert_eq!(
            installed_image("Package: bash\nStatus: install ok installed\n"),
            None
        );
    }
}
