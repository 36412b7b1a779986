//! Initramfs images for the guests: busybox-static with a symlink for each of its applets, chosen
//! kernel modules with their dependencies, the caller's `/init` script and extra files, packed as a
//! plain newc cpio archive.
//!
//! Images are cached in the chroot (`/var/cache/vfio-variant/initramfs/<hash>.cpio`) under a hash of
//! everything that goes into them, so building the same image again costs a hash of its inputs.
//!
//! Modules come from the chroot's `/lib/modules/<release>`, decompressed on the host (`xz -d`), and
//! go to `/lib/modules/<name>.ko` in the image; `/lib/modules/order` lists them dependencies first
//! and `/bin/load-modules` (a script in the image) insmods them in that order, each with the
//! `module.parameter=value` settings of the kernel command line (`/bin/module-params`), as
//! modprobe would: so `virtio_pci.force_legacy=1` works whether `virtio_pci` is built in or a
//! module.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

use super::chroot::{self, Kernel};
use super::output;

/// Where images are kept, as a path inside the chroot.
const CACHE_DIR: &str = "/var/cache/vfio-variant/initramfs";

/// Bump when the layout of the images changes, so that cached ones are not reused.
const FORMAT: u32 = 2;

/// Cached images not used for this long are removed when a new one is built.
const KEEP_UNUSED: Duration = Duration::from_secs(7 * 24 * 60 * 60);

/// The script that loads the image's modules in dependency order, each with the parameters the
/// kernel command line gives it.
const LOAD_MODULES: &str = r#"#!/bin/sh
# Loads the modules this image was built with (/lib/modules/order), dependencies first, each with
# its parameters from the kernel command line, as modprobe would.
for m in $(cat /lib/modules/order); do
    insmod "/lib/modules/$m.ko" $(module-params "$m") || { echo "load-modules: insmod $m failed"; exit 1; }
done
"#;

/// What every guest's `/init` sources first (`. /lib/e2e.sh`): the kernel's file systems, a quiet
/// console, and `begin NAME` / `end NAME`, which print the `=== BEGIN NAME ===` /
/// `=== END NAME ===` markers the host reads sections between.
const PROLOGUE: &str = r#"# Sourced by the guest's /init first.
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
dmesg -n 1
begin() { echo "=== BEGIN $1 ==="; }
end() { echo "=== END $1 ==="; }
"#;

/// The script that prints the parameters the kernel command line gives module `$1`:
/// `virtio_pci.force_legacy=1` gives `virtio_pci` the parameter `force_legacy=1`. A parameter
/// of a built-in driver reaches it from the command line directly; a loadable module gets
/// them only from whoever loads it, and busybox insmod does not look. `-` and `_` in module
/// names are alike. `$CMDLINE` stands in for `/proc/cmdline` when set.
const MODULE_PARAMS: &str = r#"#!/bin/sh
want=$(echo "$1" | tr - _)
for arg in ${CMDLINE-$(cat /proc/cmdline)}; do
    case $arg in
        *.*=*)
            module=${arg%%.*}
            case $module in *=*) continue ;; esac
            [ "$(echo "$module" | tr - _)" = "$want" ] && echo "${arg#*.}"
            ;;
    esac
done
exit 0
"#;

/// Where the bytes of an extra file come from.
pub enum Source {
    /// These bytes.
    Bytes(Vec<u8>),
    /// A copy of this file on the host.
    Host(PathBuf),
}

/// An extra file of an image.
struct Extra {
    /// Its absolute path in the image.
    path: String,
    /// Its contents.
    source: Source,
    /// Its permission bits.
    mode: u32,
}

/// What goes into an image; [`Initramfs::build`] makes it.
pub struct Initramfs {
    /// The `/init` script.
    init: String,
    /// The modules asked for by name (their dependencies are added when building).
    modules: Vec<String>,
    /// Extra files.
    extras: Vec<Extra>,
}

impl Initramfs {
    /// An image that runs `init` (a script starting with `#!/bin/sh`) as `/init`.
    pub fn new(init: &str) -> Self {
        Initramfs {
            init: init.to_string(),
            modules: Vec::new(),
            extras: Vec::new(),
        }
    }

    /// Adds the kernel module `name` (`-` and `_` alike) and the modules it depends on.
    ///
    /// A module built into the kernel is accepted and left out.
    pub fn module(mut self, name: &str) -> Self {
        self.modules.push(name.to_string());
        self
    }

    /// Adds the file `path` (absolute, in the image) with the given contents and permission bits.
    pub fn file(mut self, path: &str, source: Source, mode: u32) -> Self {
        self.extras.push(Extra {
            path: path.to_string(),
            source,
            mode,
        });
        self
    }

    /// Builds the image (or finds it cached) for `kernel` of the chroot at `root`.
    ///
    /// Returns its path inside the chroot, for QEMU's `-initrd`.
    pub fn build(&self, root: &Path, kernel: &Kernel) -> Result<String, String> {
        if !self.init.starts_with("#!") {
            return Err("the initramfs /init script must start with `#!/bin/sh`".into());
        }
        let modules_dir = chroot::modules_dir(root, &kernel.release);
        let modules = resolve_modules(&modules_dir, &self.modules)?;
        let busybox = chroot::busybox(root)?;
        let mut files = vec![Extra {
            path: "/init".into(),
            source: Source::Bytes(self.init.clone().into_bytes()),
            mode: 0o755,
        }];
        files.push(Extra {
            path: "/bin/busybox".into(),
            source: Source::Host(busybox.clone()),
            mode: 0o755,
        });
        for (path, script) in [
            ("/bin/load-modules", LOAD_MODULES),
            ("/bin/module-params", MODULE_PARAMS),
        ] {
            files.push(Extra {
                path: path.into(),
                source: Source::Bytes(script.into()),
                mode: 0o755,
            });
        }
        files.push(Extra {
            path: "/lib/e2e.sh".into(),
            source: Source::Bytes(PROLOGUE.into()),
            mode: 0o644,
        });
        let order: String = modules
            .iter()
            .map(|(name, _)| format!("{name}\n"))
            .collect();
        files.push(Extra {
            path: "/lib/modules/order".into(),
            source: Source::Bytes(order.into_bytes()),
            mode: 0o644,
        });
        for extra in &self.extras {
            if !extra.path.starts_with('/') || extra.path == "/init" {
                return Err(format!(
                    "initramfs file `{}`: give an absolute path other than /init",
                    extra.path
                ));
            }
        }
        let key = cache_key(&kernel.release, &modules, files.iter().chain(&self.extras))?;

        let cache = root.join(CACHE_DIR.trim_start_matches('/'));
        let name = format!("{key:016x}.cpio");
        let image = cache.join(&name);
        let inside = format!("{CACHE_DIR}/{name}");
        if image.is_file() {
            // Marks it used, for pruning; an image that cannot be touched is still good.
            if let Ok(file) = fs::File::options().append(true).open(&image) {
                let _ = file.set_modified(SystemTime::now());
            }
            return Ok(inside);
        }

        eprintln!("==> building initramfs {inside}");
        fs::create_dir_all(&cache)
            .map_err(|e| format!("cannot create {}: {e}", cache.display()))?;
        let staging = Staging::new(cache.join(format!(".staging-{}", std::process::id())))?;
        for dir in [
            "dev",
            "proc",
            "sys",
            "tmp",
            "run",
            "root",
            "etc",
            "mnt",
            "lib/modules",
        ] {
            staging.dir(dir)?;
        }
        fs::set_permissions(staging.0.join("tmp"), fs::Permissions::from_mode(0o1777))
            .map_err(|e| format!("cannot set the mode of the initramfs /tmp: {e}"))?;
        for extra in files.iter().chain(&self.extras) {
            staging.file(extra)?;
        }
        staging.applets(&busybox)?;
        for (name, path) in &modules {
            staging.module(name, path)?;
        }
        staging.pack(&image)?;
        prune(&cache, &image);
        Ok(inside)
    }
}

/// A directory the image is assembled in; removed on drop.
struct Staging(PathBuf);

impl Staging {
    /// A fresh, empty staging directory at `path`.
    fn new(path: PathBuf) -> Result<Self, String> {
        if path.exists() {
            fs::remove_dir_all(&path)
                .map_err(|e| format!("cannot remove {}: {e}", path.display()))?;
        }
        fs::create_dir_all(&path).map_err(|e| format!("cannot create {}: {e}", path.display()))?;
        Ok(Staging(path))
    }

    /// The host path of `path` (absolute or relative, in the image).
    fn host(&self, path: &str) -> PathBuf {
        self.0.join(path.trim_start_matches('/'))
    }

    /// Creates the directory `path` of the image (and its parents).
    fn dir(&self, path: &str) -> Result<(), String> {
        let dir = self.host(path);
        fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))
    }

    /// Writes one file of the image.
    fn file(&self, extra: &Extra) -> Result<(), String> {
        let target = self.host(&extra.path);
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent)
                .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
        }
        let written = match &extra.source {
            Source::Bytes(bytes) => fs::write(&target, bytes),
            Source::Host(path) => fs::copy(path, &target).map(drop),
        };
        written
            .and_then(|()| fs::set_permissions(&target, fs::Permissions::from_mode(extra.mode)))
            .map_err(|e| format!("cannot write the initramfs file {}: {e}", extra.path))
    }

    /// Links every busybox applet to `/bin/busybox` in `/bin`, `/sbin`, `/usr/bin` and
    /// `/usr/sbin`: each of the last three is a symlink to `/bin` unless extra files made it a
    /// directory. Extra files of the same names win over applets.
    fn applets(&self, busybox: &Path) -> Result<(), String> {
        let list = output(
            "list the busybox applets",
            Command::new(busybox).arg("--list"),
        )?;
        let applets: Vec<&str> = list
            .lines()
            .map(str::trim)
            .filter(|applet| !applet.is_empty() && !applet.contains('/'))
            .collect();
        for (dir, to_bin) in [
            ("bin", ""),
            ("sbin", "bin"),
            ("usr/bin", "../bin"),
            ("usr/sbin", "../bin"),
        ] {
            let host = self.host(dir);
            if !to_bin.is_empty() && !host.exists() {
                self.dir("usr")?;
                symlink(to_bin, &host)
                    .map_err(|e| format!("cannot link /{dir} in the initramfs: {e}"))?;
                continue;
            }
            for applet in &applets {
                let link = host.join(applet);
                if fs::symlink_metadata(&link).is_err() {
                    symlink("/bin/busybox", &link)
                        .map_err(|e| format!("cannot link {}: {e}", link.display()))?;
                }
            }
        }
        Ok(())
    }

    /// Decompresses the module at host path `path` to `/lib/modules/<name>.ko`.
    fn module(&self, name: &str, path: &Path) -> Result<(), String> {
        let target = self.host(&format!("lib/modules/{name}.ko"));
        let file_name = path.to_string_lossy();
        if file_name.ends_with(".ko") {
            return fs::copy(path, &target)
                .map(drop)
                .map_err(|e| format!("cannot copy {}: {e}", path.display()));
        }
        if !file_name.ends_with(".ko.xz") {
            return Err(format!(
                "kernel module {}: only .ko and .ko.xz are supported",
                path.display()
            ));
        }
        let out = fs::File::create(&target)
            .map_err(|e| format!("cannot create {}: {e}", target.display()))?;
        let status = Command::new("xz")
            .arg("-dc")
            .arg(path)
            .stdout(out)
            .status()
            .map_err(|e| format!("cannot start `xz -dc {}`: {e}", path.display()))?;
        if status.success() {
            Ok(())
        } else {
            Err(format!(
                "decompressing a kernel module failed ({status}): xz -dc {}",
                path.display()
            ))
        }
    }

    /// Packs the staging directory as a newc cpio archive at `image` (through a temporary file).
    fn pack(&self, image: &Path) -> Result<(), String> {
        let partial = image.with_extension("cpio.partial");
        let out = fs::File::create(&partial)
            .map_err(|e| format!("cannot create {}: {e}", partial.display()))?;
        let mut find = Command::new("find")
            .args([".", "-print0"])
            .current_dir(&self.0)
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start `find`: {e}"))?;
        let names = find
            .stdout
            .take()
            .ok_or("`find` has no standard output to read")?;
        let cpio = Command::new("cpio")
            .args(["--null", "-o", "-H", "newc", "-R", "0:0", "--quiet"])
            .current_dir(&self.0)
            .stdin(names)
            .stdout(out)
            .status();
        let found = find.wait();
        let cpio = cpio.map_err(|e| format!("cannot start `cpio`: {e}"))?;
        let found = found.map_err(|e| format!("waiting for `find` failed: {e}"))?;
        if !found.success() || !cpio.success() {
            let _ = fs::remove_file(&partial);
            return Err(format!(
                "packing the initramfs failed (find: {found}, cpio: {cpio}): \
                 find . -print0 | cpio --null -o -H newc -R 0:0 in {}",
                self.0.display()
            ));
        }
        fs::rename(&partial, image).map_err(|e| format!("cannot create {}: {e}", image.display()))
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir_all(&self.0) {
            eprintln!("xtask: warning: cannot remove {}: {e}", self.0.display());
        }
    }
}

/// A hash of everything that goes into an image.
fn cache_key<'a>(
    release: &str,
    modules: &[(String, PathBuf)],
    files: impl Iterator<Item = &'a Extra>,
) -> Result<u64, String> {
    let mut hasher = DefaultHasher::new();
    (FORMAT, release, modules).hash(&mut hasher);
    for file in files {
        (&file.path, file.mode).hash(&mut hasher);
        match &file.source {
            Source::Bytes(bytes) => bytes.hash(&mut hasher),
            Source::Host(path) => fs::read(path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?
                .hash(&mut hasher),
        }
    }
    Ok(hasher.finish())
}

/// Removes cached images (other than `keep`) not used for [`KEEP_UNUSED`].
fn prune(cache: &Path, keep: &Path) {
    let Ok(entries) = fs::read_dir(cache) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let stale = entry
            .metadata()
            .and_then(|meta| meta.modified())
            .ok()
            .and_then(|modified| modified.elapsed().ok())
            .is_some_and(|age| age > KEEP_UNUSED);
        if stale && path != keep && path.extension().is_some_and(|ext| ext == "cpio") {
            let _ = fs::remove_file(&path);
        }
    }
}

/// The module name of a path in `modules.dep` (`kernel/drivers/vfio/pci/vfio-pci.ko.xz` is
/// `vfio_pci`).
fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split(".ko").next().unwrap_or(file);
    stem.replace('-', "_")
}

/// The modules `names` and everything they depend on, dependencies first, as (name, host path).
///
/// Reads `modules.dep` and `modules.builtin` in `modules_dir`; built-in modules are left out.
fn resolve_modules(modules_dir: &Path, names: &[String]) -> Result<Vec<(String, PathBuf)>, String> {
    if names.is_empty() {
        return Ok(Vec::new());
    }
    let read = |file: &str| {
        let path = modules_dir.join(file);
        fs::read_to_string(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))
    };
    let mut deps: HashMap<String, (String, Vec<String>)> = HashMap::new();
    for line in read("modules.dep")?.lines() {
        let Some((path, needs)) = line.split_once(':') else {
            continue;
        };
        let needs = needs.split_whitespace().map(module_name).collect();
        deps.insert(module_name(path), (path.to_string(), needs));
    }
    let builtin: HashSet<String> = read("modules.builtin")
        .unwrap_or_default()
        .lines()
        .map(module_name)
        .collect();

    let mut order = Vec::new();
    let mut seen = HashSet::new();
    for name in names {
        visit(&module_name(name), &deps, &builtin, &mut seen, &mut order)
            .map_err(|e| format!("{e} (in {})", modules_dir.display()))?;
    }
    Ok(order
        .into_iter()
        .map(|(name, path)| (name, modules_dir.join(path)))
        .collect())
}

/// Depth-first: appends the dependencies of `name`, then `name` itself, to `order`.
fn visit(
    name: &str,
    deps: &HashMap<String, (String, Vec<String>)>,
    builtin: &HashSet<String>,
    seen: &mut HashSet<String>,
    order: &mut Vec<(String, String)>,
) -> Result<(), String> {
    if !seen.insert(name.to_string()) {
        return Ok(());
    }
    let Some((path, needs)) = deps.get(name) else {
        if builtin.contains(name) {
            return Ok(());
        }
        return Err(format!(
            "kernel module `{name}` is neither a module nor built in"
        ));
    };
    for need in needs {
        visit(need, deps, builtin, seen, order)?;
    }
    order.push((name.to_string(), path.clone()));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{MODULE_PARAMS, module_name, visit};
    use std::collections::{HashMap, HashSet};
    use std::process::Command;

    /// What `/bin/module-params MODULE` prints for the kernel command line `cmdline`.
    fn params(module: &str, cmdline: &str) -> String {
        let out = Command::new("sh")
            .args(["-c", MODULE_PARAMS, "module-params", module])
            .env("CMDLINE", cmdline)
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap()
    }

    #[test]
    fn modules_get_their_command_line_parameters() {
        let cmdline = "console=ttyS0 virtio_pci.force_legacy=1 e2e.boot=1 \
                       virtio-pci.other=a.b memmap=2M$0x1f000000 x=1.2=3 virtio_pcix.no=1";
        assert_eq!(params("virtio_pci", cmdline), "force_legacy=1\nother=a.b\n");
        assert_eq!(params("virtio-pci", cmdline), "force_legacy=1\nother=a.b\n");
        assert_eq!(params("virtio_blk", cmdline), "");
        assert_eq!(params("e2e", cmdline), "boot=1\n");
    }

    #[test]
    fn module_names_are_normalized() {
        assert_eq!(
            module_name("kernel/drivers/vfio/pci/vfio-pci.ko.xz"),
            "vfio_pci"
        );
        assert_eq!(module_name("vfio_pci"), "vfio_pci");
        assert_eq!(module_name("kernel/a/b.ko"), "b");
    }

    #[test]
    fn dependencies_come_first() {
        let mut deps = HashMap::new();
        deps.insert("a".into(), ("a.ko.xz".into(), vec!["b".into(), "c".into()]));
        deps.insert("b".into(), ("b.ko.xz".into(), vec!["c".into()]));
        deps.insert("c".into(), ("c.ko.xz".into(), vec!["builtin".into()]));
        let builtin = HashSet::from(["builtin".to_string()]);
        let (mut seen, mut order) = (HashSet::new(), Vec::new());
        visit("a", &deps, &builtin, &mut seen, &mut order).unwrap();
        let names: Vec<&str> = order.iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(names, ["c", "b", "a"]);
        assert!(visit("missing", &deps, &builtin, &mut seen, &mut order).is_err());
    }
}
