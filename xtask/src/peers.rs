//! Peers measured beside the project by `cargo xtask bench`: libvfio-user, built once from its
//! source tarball (in `$VFIO_VARIANT_PEERS`, by default `../shared/peers` beside the workspace)
//! into `target/peers/`, its build dependencies installed with apt when missing. The project
//! runs the peer's programs; it never takes their code.

use std::path::PathBuf;
use std::process::Command;

use crate::cmd::{run, target_dir, workspace_root};
use crate::e2e::chroot::apt_install;

/// The libvfio-user source: its tarball's name without `.tar.gz`, and its build directory's.
const LIBVFIO_USER: &str = "libvfio-user-efd091b";
/// The Debian packages libvfio-user's meson build needs.
const BUILD_DEPENDS: &[&str] = &[
    "meson",
    "ninja-build",
    "pkg-config",
    "libjson-c-dev",
    "libcmocka-dev",
];
/// The sample the bench runs, relative to the source directory.
const GPIO_SAMPLE: &str = "build/samples/gpio-pci-idio-16";

/// Where the peers' source tarballs are.
fn peers_dir() -> PathBuf {
    match std::env::var_os("VFIO_VARIANT_PEERS") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => workspace_root().join("../shared/peers"),
    }
}

/// Whether `dpkg-query`'s `${Status}` of a package says it is installed.
fn status_is_installed(status: &str) -> bool {
    status.split_whitespace().last() == Some("installed")
}

/// Whether the Debian package `name` is installed.
fn installed(name: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", name])
        .output()
        .is_ok_and(|out| {
            out.status.success() && status_is_installed(&String::from_utf8_lossy(&out.stdout))
        })
}

/// libvfio-user's gpio sample (`gpio-pci-idio-16`), built on first use and reused after.
pub fn libvfio_user_gpio() -> Result<PathBuf, String> {
    let source = target_dir().join("peers").join(LIBVFIO_USER);
    let program = source.join(GPIO_SAMPLE);
    if program.is_file() {
        return Ok(program);
    }
    let tarball = peers_dir().join(format!("{LIBVFIO_USER}.tar.gz"));
    if !tarball.is_file() {
        return Err(format!("no peer source at {}", tarball.display()));
    }
    let missing: Vec<&str> = BUILD_DEPENDS
        .iter()
        .copied()
        .filter(|package| !installed(package))
        .collect();
    apt_install(&missing)?;
    // A build that stopped half-way starts again from the tarball.
    let _ = std::fs::remove_dir_all(&source);
    std::fs::create_dir_all(&source).map_err(|e| format!("{}: {e}", source.display()))?;
    run(
        &format!("unpack {}", tarball.display()),
        Command::new("tar")
            .arg("-xzf")
            .arg(&tarball)
            .arg("-C")
            .arg(&source)
            .arg("--strip-components=1"),
    )?;
    run(
        "meson setup (libvfio-user)",
        Command::new("meson")
            .args(["setup", "build", "--buildtype=release"])
            .current_dir(&source),
    )?;
    run(
        "ninja (libvfio-user's gpio sample)",
        Command::new("ninja")
            .args(["-C", "build", "samples/gpio-pci-idio-16"])
            .current_dir(&source),
    )?;
    if program.is_file() {
        Ok(program)
    } else {
        Err(format!("the build made no {}", program.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dpkg_status_says_installed_only_when_it_is() {
        assert!(status_is_installed("install ok installed"));
        assert!(!status_is_installed("deinstall ok config-files"));
        assert!(!status_is_installed("unknown ok not-installed"));
        assert!(!status_is_installed(""));
    }
}
