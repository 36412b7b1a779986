//! The emulated virtio PFs the `vfio-variant` command registers as built-in backends:
//! `virtio-blk` (VFs backed by sparse image files) and `virtio-net` (VFs whose link is a Unix
//! datagram socket the host connects to). Their PFs have the legacy and the device-parts
//! admin commands, so the functions are transitional-capable and migratable.
//!
//! Their files live in [`files_dir`]: `$VFIO_VARIANT_VIRTIO_DIR` when set (kept on exit),
//! else a fresh `vfio-variant-virtio-PID` directory under the temporary directory, removed
//! when the backend is dropped. A process that dies without dropping it (SIGKILL) cannot remove
//! it, so each such directory holds a shared `flock` on its `.owner` file while in use, and
//! [`files_dir`] removes those of processes that are gone. VF `n` of the blk PF is backed by
//! `virtio-blk-vfN.img` ([`BLK_IMAGE_SIZE`] bytes, sparse); VF `n` of the net PF is bound to
//! `virtio-net-vfN.sock` (a datagram socket: it transmits to whoever sent it the last
//! datagram). An image that exists is reused (its data kept); a stale socket is replaced, so
//! two servers must not share a directory.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustix::fs::{FlockOperation, flock};
use vfio_variant::backend::{Backend, BackendError, CreateRequest, Function, ProfileInfo};

use crate::admin::{ADMIN_MEMORY, AdminError, AdminQueue};
use crate::backend::{Vf, VirtioLegacyBackend};
use crate::function::Attachment;
use crate::hw::blk::BlkDevice;
use crate::hw::net::NetDevice;
use crate::hw::pf::{PfOptions, VirtioPf};
use crate::hw::vf::{Poller, VirtioVf};
use crate::hw::{DEVICE_TYPE_BLK, DEVICE_TYPE_NET, VirtioDevice};
use vfio_variant::backend::emulated::{DmaSlot, HostMemory, IrqSlot};

/// The environment variable naming the directory of the emulated devices' files.
pub const DIR_VARIABLE: &str = "VFIO_VARIANT_VIRTIO_DIR";
/// Size of each blk VF's image file.
pub const BLK_IMAGE_SIZE: u64 = 64 << 20;
/// VFs of each emulated PF.
pub const NUM_VFS: usize = 2;
/// How often a net VF looks again for host frames its driver has given no buffers for yet
/// (otherwise it waits for frames to arrive, and wakes for nothing else).
const RX_BACKOFF: Duration = Duration::from_millis(1);

/// Why an emulated PF could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuiltinError {
    /// A file or socket could not be created.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// The PF's admin queue could not be set up.
    #[error("admin queue of the emulated PF: {0}")]
    Admin(#[from] AdminError),
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> BuiltinError + '_ {
    move |source| BuiltinError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Where the emulated devices keep their files, and whether that directory is removed on
/// drop (it is unless it came from [`DIR_VARIABLE`]). A temporary one is named after this
/// process; those that processes now gone left in the temporary directory are removed first.
pub fn files_dir() -> (PathBuf, bool) {
    match std::env::var_os(DIR_VARIABLE).filter(|v| !v.is_empty()) {
        Some(dir) => (PathBuf::from(dir), false),
        None => {
            let parent = std::env::temp_dir();
            remove_stale_dirs(&parent);
            (
                parent.join(format!("{TEMPORARY_PREFIX}{}", std::process::id())),
                true,
            )
        }
    }
}

/// Name of a temporary files directory, before the owner's pid.
const TEMPORARY_PREFIX: &str = "vfio-variant-virtio-";
/// The lock file a temporary files directory's users hold (shared) while they use it.
const OWNER_LOCK: &str = ".owner";

/// Removes this user's temporary files directories in `parent` whose owner is gone: nobody
/// holds their lock, or (a directory without a lock file) their pid is no live process.
fn remove_stale_dirs(parent: &Path) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    let me = std::process::id();
    let uid = rustix::process::geteuid().as_raw();
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(TEMPORARY_PREFIX))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        let path = entry.path();
        let ours = std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir() && m.uid() == uid);
        if pid == me || !ours {
            continue;
        }
        // Held while the directory is removed, so that a process claiming it waits.
        let lock = match File::open(path.join(OWNER_LOCK)) {
            Ok(lock) => {
                if flock(&lock, FlockOperation::NonBlockingLockExclusive).is_err() {
                    continue;
                }
                Some(lock)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // Only "no such process" says it is gone (EPERM: someone else's, alive).
                let alive = rustix::process::Pid::from_raw(pid as i32).is_none_or(|p| {
                    rustix::process::test_kill_process(p) != Err(rustix::io::Errno::SRCH)
                });
                if alive {
                    continue;
                }
                None
            }
            Err(_) => continue,
        };
        match std::fs::remove_dir_all(&path) {
            Ok(()) => tracing::info!("removed {} (its process is gone)", path.display()),
            Err(e) => tracing::warn!("{}: not removed: {e}", path.display()),
        }
        drop(lock);
    }
}

/// Creates `dir` and takes a shared hold on its owner lock, so that no other process removes
/// it while this one uses it.
fn claim(dir: &Path) -> Result<File, BuiltinError> {
    loop {
        std::fs::create_dir_all(dir).map_err(io_error(dir))?;
        let path = dir.join(OWNER_LOCK);
        let lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_error(&path))?;
        flock(&lock, FlockOperation::LockShared).map_err(|e| io_error(&path)(e.into()))?;
        // Another process may have found the directory stale and removed it between the open
        // and the lock: then start again.
        let same = match (lock.metadata(), std::fs::symlink_metadata(&path)) {
            (Ok(held), Ok(named)) => held.ino() == named.ino() && held.dev() == named.dev(),
            _ => false,
        };
        if same {
            return Ok(lock);
        }
    }
}

/// The image file of blk VF `member` in `dir`.
pub fn blk_image(dir: &Path, member: u64) -> PathBuf {
    dir.join(format!("virtio-blk-vf{member}.img"))
}

/// The socket of net VF `member` in `dir`.
pub fn net_socket(dir: &Path, member: u64) -> PathBuf {
    dir.join(format!("virtio-net-vf{member}.sock"))
}

/// The MAC address of net VF `member`.
pub fn net_mac(member: u64) -> [u8; 6] {
    [0x52, 0x54, 0x00, 0x56, 0x00, member as u8]
}

/// The files of an emulated PF's VFs, removed on drop when their directory is temporary
/// (whose owner lock it then holds).
struct Files {
    paths: Vec<PathBuf>,
    remove_dir: Option<(PathBuf, File)>,
}

impl Drop for Files {
    fn drop(&mut self) {
        if let Some((dir, lock)) = &self.remove_dir {
            for path in &self.paths {
                let _ = std::fs::remove_file(path);
            }
            // The last user (no other hold on the lock) removes the lock and the directory.
            if flock(lock, FlockOperation::NonBlockingLockExclusive).is_ok() {
                let _ = std::fs::remove_file(dir.join(OWNER_LOCK));
                let _ = std::fs::remove_dir(dir);
            }
        }
    }
}

/// An emulated virtio PF with its VFs, served as a backend named after the device type.
pub struct EmulatedPf {
    name: &'static str,
    backend: VirtioLegacyBackend,
    files: Files,
    _pollers: Vec<Poller>,
}

impl EmulatedPf {
    /// A blk PF with [`NUM_VFS`] VFs whose images are created (sparse) in `dir`.
    pub fn blk(dir: &Path, remove_dir: bool) -> Result<Self, BuiltinError> {
        Self::build(DEVICE_TYPE_BLK, dir, remove_dir)
    }

    /// A net PF with [`NUM_VFS`] VFs whose sockets are bound in `dir`.
    pub fn net(dir: &Path, remove_dir: bool) -> Result<Self, BuiltinError> {
        Self::build(DEVICE_TYPE_NET, dir, remove_dir)
    }

    fn build(device_type: u16, dir: &Path, remove_dir: bool) -> Result<Self, BuiltinError> {
        let remove_dir = if remove_dir {
            Some((dir.to_path_buf(), claim(dir)?))
        } else {
            std::fs::create_dir_all(dir).map_err(io_error(dir))?;
            None
        };
        let name = if device_type == DEVICE_TYPE_BLK {
            "virtio-blk"
        } else {
            "virtio-net"
        };
        let mut files = Files {
            paths: Vec::new(),
            remove_dir,
        };
        let mut pollers = Vec::new();
        let mut wake_sources = Vec::new();
        let mut vfs = Vec::new();
        let mut entries = Vec::new();
        for member in 1..=NUM_VFS as u64 {
            let device: Box<dyn VirtioDevice> = if device_type == DEVICE_TYPE_BLK {
                let path = blk_image(dir, member);
                let file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .open(&path)
                    .map_err(io_error(&path))?;
                if file.metadata().map_err(io_error(&path))?.len() < BLK_IMAGE_SIZE {
                    file.set_len(BLK_IMAGE_SIZE).map_err(io_error(&path))?;
                }
                files.paths.push(path.clone());
                let id = format!("vfio-variant-vf{member}");
                Box::new(BlkDevice::new(file, &id).map_err(io_error(&path))?)
            } else {
                let path = net_socket(dir, member);
                let _ = std::fs::remove_file(&path);
                let device = NetDevice::bind(net_mac(member), &path).map_err(io_error(&path))?;
                wake_sources.push(device.wake_source().map_err(io_error(&path))?);
                files.paths.push(path);
                Box::new(device)
            };
            let attachment = Attachment {
                dma: Arc::new(DmaSlot::default()),
                interrupts: Arc::new(IrqSlot::default()),
            };
            let vf = Arc::new(VirtioVf::new(
                format!("{name}-vf{member}"),
                device,
                attachment.dma.clone(),
                attachment.interrupts.clone(),
            ));
            if let Some(source) = wake_sources.pop() {
                pollers.push(vf.spawn_poller(source, RX_BACKOFF).map_err(io_error(dir))?);
            }
            entries.push(Vf {
                member,
                function: vf.clone(),
                attachment: Some(attachment),
            });
            vfs.push(vf);
        }
        for (member, path) in files.paths.iter().enumerate() {
            tracing::info!("{name}: VF {} uses {}", member + 1, path.display());
        }
        let memory = Arc::new(HostMemory::new(ADMIN_MEMORY as usize));
        let physical = Arc::new(VirtioPf::new(
            format!("{name}-pf"),
            vfs,
            PfOptions::default(),
            memory.clone(),
            Arc::new(IrqSlot::default()),
        ));
        let admin = AdminQueue::setup(physical, memory, 0)?;
        Ok(Self {
            name,
            backend: VirtioLegacyBackend::new(device_type, Arc::new(admin), entries),
            files,
            _pollers: pollers,
        })
    }

    /// The files of the VFs (images or sockets), VF 1 first.
    pub fn files(&self) -> &[PathBuf] {
        &self.files.paths
    }
}

impl Backend for EmulatedPf {
    fn name(&self) -> &str {
        self.name
    }

    fn description(&self) -> &str {
        self.backend.description()
    }

    fn profiles(&self) -> Vec<ProfileInfo> {
        self.backend.profiles()
    }

    fn default_layout(&self, profile: &str) -> Result<String, BackendError> {
        self.backend.default_layout(profile)
    }

    fn create(&self, request: &CreateRequest) -> Result<Box<dyn Function>, BackendError> {
        self.backend.create(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(tag: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("vfio-variant-stale-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// A directory as a process with `pid` leaves it: images and all.
    fn left(parent: &Path, pid: u32, with_lock: bool) -> PathBuf {
        let dir = parent.join(format!("{TEMPORARY_PREFIX}{pid}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(blk_image(&dir, 1), b"image").unwrap();
        if with_lock {
            std::fs::write(dir.join(OWNER_LOCK), b"").unwrap();
        }
        dir
    }

    #[test]
    fn directories_of_processes_that_are_gone_are_removed() {
        let parent = scratch("dirs");
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let gone = child.id();
        child.wait().unwrap();
        let killed = left(&parent, gone, true);
        let old = left(&parent, gone + 1_000_000, false);
        let ancient = left(&parent, gone + 2_000_000, true);
        // In use: a process (here this one, under another pid's name) holds the lock.
        let in_use = left(&parent, std::os::unix::process::parent_id(), true);
        let _hold = claim(&in_use).unwrap();
        // Without a lock file, but its pid lives (pid 1 always does).
        let live_pid = left(&parent, 1, false);
        let not_ours = parent.join(format!("{TEMPORARY_PREFIX}x"));
        std::fs::create_dir_all(&not_ours).unwrap();
        let mine = left(&parent, std::process::id(), false);
        remove_stale_dirs(&parent);
        for dir in [&killed, &old, &ancient] {
            assert!(!dir.exists(), "{} removed", dir.display());
        }
        for dir in [&in_use, &live_pid, &not_ours, &mine] {
            assert!(dir.exists(), "{} kept", dir.display());
        }
        let _ = std::fs::remove_dir_all(&parent);
    }

    #[test]
    fn a_temporary_directory_goes_with_its_last_pf() {
        let parent = scratch("drop");
        let dir = parent.join(format!("{TEMPORARY_PREFIX}{}", std::process::id()));
        let blk = EmulatedPf::blk(&dir, true).unwrap();
        let net = EmulatedPf::net(&dir, true).unwrap();
        assert!(dir.join(OWNER_LOCK).exists());
        drop(blk);
        assert!(dir.exists(), "the net PF still uses it");
        drop(net);
        assert!(!dir.exists());
        let _ = std::fs::remove_dir_all(&parent);
    }
}
