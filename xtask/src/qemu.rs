//! `cargo xtask qemu`: QEMU built from Debian's source package with the project's vfio-user
//! migration patches (`contrib/qemu/patches/`, applied in the order of their `series` file),
//! inside the sid chroot of the e2e tests, cached between runs.
//!
//! The source tree and its build directory live in `qemu-patched-<key>/` beside the chroot
//! (by default `/var/cache/vfio-variant/`), `<key>` a hash of the source package version and
//! the configure flags: a change of either starts a fresh tree. The tree is a git repository
//! whose first commit is the unpacked upstream tarball (tag `pristine`); a change of the
//! patches resets it to `pristine`, applies the new series and lets ninja rebuild what
//! changed. The binary is then copied into the chroot under
//! `/usr/local/lib/vfio-variant-qemu/<patches hash>/`, which is what the e2e runs; a binary
//! there is reused as long as the patches do not change.
//!
//! The build runs in a mount namespace of its own (`unshare --mount`), so its bind mounts of
//! `/dev`, `/proc` and the tree into the chroot never touch a guest booting beside it.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::cmd::{have_program, run, workspace_root};
use crate::e2e::chroot;

/// The Debian source package built. Debian sid's own QEMU is 11.1.3, but the sid mirror
/// reachable here serves no source for it (nor for 11.1.2); 10.2.2 is the newest QEMU whose
/// source it serves, and it has the same hw/vfio-user client.
pub const SOURCE_VERSION: &str = "1:10.2.2+ds-1";
/// The upstream tarball of [`SOURCE_VERSION`] and the directory it unpacks to.
const TARBALL: &str = "qemu_10.2.2+ds.orig.tar.xz";
const TARBALL_DIR: &str = "qemu-10.2.2";

/// The configure flags: the x86_64 system emulator alone, no optional libraries. The vfio-user
/// client (Kconfig VFIO_USER) needs no option: it is built whenever VFIO_PCI is.
const CONFIGURE: &[&str] = &[
    "--target-list=x86_64-softmmu",
    "--without-default-features",
    "--disable-docs",
    "--disable-werror",
    "--disable-install-blobs",
    "--disable-tools",
];

/// What the build needs in the chroot.
const BUILD_DEPENDS: &[&str] = &[
    "build-essential",
    "ninja-build",
    "meson",
    "python3",
    "python3-venv",
    "python3-pycotap",
    "pkg-config",
    "libglib2.0-dev",
    "libfdt-dev",
    "device-tree-compiler",
];

/// Where the tree is mounted in the chroot while it builds.
const TREE_IN_CHROOT: &str = "/opt/vfio-variant-qemu";
/// Where built binaries are installed in the chroot, one directory per patch series.
const INSTALL_IN_CHROOT: &str = "usr/local/lib/vfio-variant-qemu";

/// The file in the tree that names the patch series its build directory holds the build of.
const BUILT_MARKER: &str = ".vfio-variant-built";

/// The apt source list the build adds to the chroot for `apt-get source`.
const DEB_SRC_LIST: &str = "etc/apt/sources.list.d/vfio-variant-deb-src.list";
const DEB_SRC_LINE: &str = "deb-src http://deb.debian.org/debian sid main\n";

/// The QEMU arguments that let the binary find its firmware: the chroot's Debian packages
/// (seabios, qemu-system-data), since the DFSG source ships none.
pub const FIRMWARE_ARGS: &[&str] = &["-L", "/usr/share/seabios", "-L", "/usr/share/qemu"];

/// The patched QEMU, ready in the chroot.
pub struct PatchedQemu {
    /// The binary, as a path inside the chroot.
    pub binary: String,
    /// The hash of the patch series it was built with.
    pub patches: String,
}

/// `cargo xtask qemu`: builds (or finds) the patched QEMU and prints where it is.
pub fn run_command(args: &[String]) -> Result<(), String> {
    if !args.is_empty() {
        return Err("usage: cargo xtask qemu".into());
    }
    crate::e2e::server::require_root()?;
    let root = chroot::ensure_chroot()?;
    let qemu = ensure(&root)?;
    println!(
        "{} (in the chroot {}; QEMU {SOURCE_VERSION} with the patches {})",
        qemu.binary,
        root.display(),
        qemu.patches
    );
    Ok(())
}

/// Builds the patched QEMU unless the chroot already has it for the current patches.
pub fn ensure(root: &Path) -> Result<PatchedQemu, String> {
    let patches = read_series()?;
    let patches_hash =
        hex(fnv1a(patches.iter().flat_map(|(name, text)| {
            [name.as_bytes(), text.as_slice()]
        })));
    let install_dir = root.join(INSTALL_IN_CHROOT).join(&patches_hash);
    let binary = install_dir.join("qemu-system-x86_64");
    let qemu = PatchedQemu {
        binary: format!("/{INSTALL_IN_CHROOT}/{patches_hash}/qemu-system-x86_64"),
        patches: patches_hash.clone(),
    };
    if binary.is_file() {
        return Ok(qemu);
    }
    let tree = tree_dir(root)?;
    eprintln!(
        "==> building QEMU {SOURCE_VERSION} with {} patch(es) in {} (10-30 minutes the first time)",
        patches.len(),
        tree.display()
    );
    fs::create_dir_all(&tree).map_err(|e| format!("cannot create {}: {e}", tree.display()))?;
    let built = fs::read_to_string(tree.join(BUILT_MARKER)).is_ok_and(|hash| hash == patches_hash)
        && tree.join("build/qemu-system-x86_64").is_file();
    if !built {
        build(root, &tree, &patches, &patches_hash)?;
    }
    remove_other_installs(root, &patches_hash)?;
    fs::create_dir_all(&install_dir)
        .map_err(|e| format!("cannot create {}: {e}", install_dir.display()))?;
    let staged = install_dir.join("qemu-system-x86_64.new");
    fs::copy(tree.join("build/qemu-system-x86_64"), &staged)
        .map_err(|e| format!("cannot copy QEMU into the chroot: {e}"))?;
    fs::rename(&staged, &binary)
        .map_err(|e| format!("cannot install {}: {e}", binary.display()))?;
    eprintln!(
        "==> patched QEMU installed at {} in the chroot",
        qemu.binary
    );
    Ok(qemu)
}

/// Unpacks the source if the tree has none, applies `patches` and builds; marks the tree as
/// built for `patches_hash`.
fn build(
    root: &Path,
    tree: &Path,
    patches: &[(String, Vec<u8>)],
    patches_hash: &str,
) -> Result<(), String> {
    let _ = fs::remove_file(tree.join(BUILT_MARKER));
    install_build_depends(root, tree)?;
    let src = tree.join("src");
    if !src.join(".git").is_dir() {
        unpack(root, tree)?;
    }
    apply(&src, patches)?;
    // With bzip2 on the PATH, configure unpacks the EDK2 firmware images for x86_64, which
    // the DFSG source package does not ship, and fails. build-essential brings bzip2 (through
    // dpkg-dev), so the build hides it behind /dev/null, in its own mount namespace.
    in_chroot(
        root,
        tree,
        "configure and build QEMU",
        &format!(
            "{{ [ ! -e /usr/bin/bzip2 ] || mount --bind /dev/null /usr/bin/bzip2; }} && \
             cd {TREE_IN_CHROOT} && mkdir -p build && cd build && \
             {{ [ -f build.ninja ] || ../src/configure {}; }} && ninja qemu-system-x86_64",
            CONFIGURE.join(" ")
        ),
    )?;
    fs::write(tree.join(BUILT_MARKER), patches_hash)
        .map_err(|e| format!("cannot write the build marker: {e}"))
}

/// The patches named by `contrib/qemu/patches/series`, in order, as (name, contents).
fn read_series() -> Result<Vec<(String, Vec<u8>)>, String> {
    let dir = workspace_root().join("contrib/qemu/patches");
    let series = fs::read_to_string(dir.join("series"))
        .map_err(|e| format!("cannot read {}/series: {e}", dir.display()))?;
    series
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|name| {
            fs::read(dir.join(name))
                .map(|text| (name.to_string(), text))
                .map_err(|e| format!("cannot read the patch {name}: {e}"))
        })
        .collect()
}

/// The tree's directory: beside the chroot, named after the source version and the flags.
fn tree_dir(root: &Path) -> Result<PathBuf, String> {
    let key = hex(fnv1a(
        std::iter::once(SOURCE_VERSION.as_bytes()).chain(CONFIGURE.iter().map(|f| f.as_bytes())),
    ));
    let parent = root
        .parent()
        .ok_or_else(|| format!("the chroot {} has no parent directory", root.display()))?;
    Ok(parent.join(format!("qemu-patched-{key}")))
}

/// Installs the build dependencies in the chroot, with a `deb-src` line for the source.
fn install_build_depends(root: &Path, tree: &Path) -> Result<(), String> {
    let list = root.join(DEB_SRC_LIST);
    if !list.is_file() {
        fs::write(&list, DEB_SRC_LINE)
            .map_err(|e| format!("cannot write {}: {e}", list.display()))?;
    }
    in_chroot(
        root,
        tree,
        "install QEMU's build dependencies in the chroot",
        &format!(
            "apt-get -q -o Acquire::Check-Valid-Until=false update && \
             DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends {}",
            BUILD_DEPENDS.join(" ")
        ),
    )
}

/// Fetches the upstream tarball with `apt-get source` and unpacks it as `tree/src`, a git
/// repository whose first commit (tag `pristine`) is the tarball.
fn unpack(root: &Path, tree: &Path) -> Result<(), String> {
    if !have_program("git") {
        chroot::apt_install(&["git"])?;
    }
    in_chroot(
        root,
        tree,
        &format!("fetch the source of qemu {SOURCE_VERSION}"),
        &format!(
            "cd {TREE_IN_CHROOT} && [ -f {TARBALL} ] || \
             apt-get source -q --download-only --tar-only qemu={SOURCE_VERSION}"
        ),
    )?;
    let unpacked = tree.join(TARBALL_DIR);
    let src = tree.join("src");
    for stale in [&unpacked, &src] {
        if stale.exists() {
            fs::remove_dir_all(stale)
                .map_err(|e| format!("cannot remove {}: {e}", stale.display()))?;
        }
    }
    run(
        "unpack QEMU",
        Command::new("tar")
            .args(["--no-same-owner", "-xf", TARBALL])
            .current_dir(tree),
    )?;
    fs::rename(&unpacked, &src)
        .map_err(|e| format!("cannot rename {}: {e}", unpacked.display()))?;
    let _ = fs::remove_file(tree.join(TARBALL));
    for args in [
        &["init", "-q"][..],
        &["add", "-A"],
        &[
            "commit",
            "-q",
            "-m",
            "qemu (Debian source package, unpacked)",
        ],
        &["tag", "pristine"],
    ] {
        git(&src, args)?;
    }
    Ok(())
}

/// Resets the tree to `pristine` and applies `patches` in order.
fn apply(src: &Path, patches: &[(String, Vec<u8>)]) -> Result<(), String> {
    git(src, &["checkout", "-q", "-f", "pristine"])?;
    git(src, &["clean", "-q", "-f", "-d"])?;
    let dir = workspace_root().join("contrib/qemu/patches");
    for (name, _) in patches {
        let patch = dir.join(name);
        run(
            &format!("apply {name}"),
            Command::new("git")
                .arg("-C")
                .arg(src)
                .args(["apply", "--whitespace=nowarn"])
                .arg(&patch),
        )?;
    }
    Ok(())
}

/// Runs git in `dir`, as a fixed identity and trusting the directory (it is root's).
fn git(dir: &Path, args: &[&str]) -> Result<(), String> {
    run(
        &format!("git {}", args.join(" ")),
        Command::new("git")
            .arg("-c")
            .arg(format!("safe.directory={}", dir.display()))
            .args([
                "-c",
                "user.name=vfio-variant",
                "-c",
                "user.email=ci@localhost",
            ])
            .arg("-C")
            .arg(dir)
            .args(args),
    )
}

/// Removes the binaries built from other patch series from the chroot.
fn remove_other_installs(root: &Path, keep: &str) -> Result<(), String> {
    let dir = root.join(INSTALL_IN_CHROOT);
    let Ok(entries) = fs::read_dir(&dir) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        if entry.file_name() != keep {
            fs::remove_dir_all(entry.path())
                .map_err(|e| format!("cannot remove {}: {e}", entry.path().display()))?;
        }
    }
    Ok(())
}

/// Runs `script` with `sh` in the chroot, with `/dev`, `/proc` and the tree (at
/// [`TREE_IN_CHROOT`]) mounted in a mount namespace of its own.
fn in_chroot(root: &Path, tree: &Path, step: &str, script: &str) -> Result<(), String> {
    let outer = "set -e\n\
                 mount --bind /dev \"$ROOT/dev\"\n\
                 mount -t proc proc \"$ROOT/proc\"\n\
                 mkdir -p \"$ROOT$TREE_IN_CHROOT\"\n\
                 mount --bind \"$TREE\" \"$ROOT$TREE_IN_CHROOT\"\n\
                 exec chroot \"$ROOT\" sh -c \"$SCRIPT\"\n";
    run(
        step,
        Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c", outer])
            .env("ROOT", root)
            .env("TREE", tree)
            .env("TREE_IN_CHROOT", TREE_IN_CHROOT)
            .env("SCRIPT", script),
    )
}

/// 64-bit FNV-1a over the concatenation of `parts`, each followed by a NUL.
fn fnv1a<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &byte in part.iter().chain(std::iter::once(&0)) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    hash
}

/// `value` as 16 hex digits.
fn hex(value: u64) -> String {
    format!("{value:016x}")
}

#[cfg(test)]
mod tests {
    use super::{fnv1a, hex};

    #[test]
    fn the_key_separates_parts_and_order() {
        let ab = fnv1a([&b"a"[..], b"b"]);
        assert_ne!(ab, fnv1a([&b"ab"[..]]));
        assert_ne!(ab, fnv1a([&b"b"[..], b"a"]));
        // The published FNV-1a 64 value of a single NUL byte (an empty part).
        assert_eq!(hex(fnv1a([&b""[..]])), "af63bd4c8601b7df");
    }
}
