//! The emulated virtio PFs the `vfio-variant` command registers as built-in backends:
//! `virtio-blk` (VFs backed by sparse image files) and `virtio-net` (VFs whose link is a Unix
//! datagram socket the host connects to). Their PFs have the legacy and the device-parts
//! admin commands, so the functions are transitional-capable and migratable.
//!
//! Their files live in [`files_dir`]: `$VFIO_VARIANT_VIRTIO_DIR` when set (kept on exit),
//! else a fresh `vfio-variant-virtio-PID` directory under the temporary directory, removed
//! when the backend is dropped. VF `n` of the blk PF is backed by `virtio-blk-vfN.img`
//! ([`BLK_IMAGE_SIZE`] bytes, sparse); VF `n` of the net PF is bound to `virtio-net-vfN.sock`
//! (a datagram socket: it transmits to whoever sent it the last datagram). An image that
//! exists is reused (its data kept); a stale socket is replaced, so two servers must not share
//! a directory.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

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
/// How often a net VF's receive queue looks for host frames.
const POLL_INTERVAL: Duration = Duration::from_millis(1);

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
/// drop (it is unless it came from [`DIR_VARIABLE`]).
pub fn files_dir() -> (PathBuf, bool) {
    match std::env::var_os(DIR_VARIABLE).filter(|v| !v.is_empty()) {
        Some(dir) => (PathBuf::from(dir), false),
        None => (
            std::env::temp_dir().join(format!("vfio-variant-virtio-{}", std::process::id())),
            true,
        ),
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

/// The files of an emulated PF's VFs, removed on drop when their directory is temporary.
struct Files {
    paths: Vec<PathBuf>,
    remove_dir: Option<PathBuf>,
}

impl Drop for Files {
    fn drop(&mut self) {
        if let Some(dir) = &self.remove_dir {
            for path in &self.paths {
                let _ = std::fs::remove_file(path);
            }
            // Only when empty: the other PF may still use it.
            let _ = std::fs::remove_dir(dir);
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
        std::fs::create_dir_all(dir).map_err(io_error(dir))?;
        let name = if device_type == DEVICE_TYPE_BLK {
            "virtio-blk"
        } else {
            "virtio-net"
        };
        let mut files = Files {
            paths: Vec::new(),
            remove_dir: remove_dir.then(|| dir.to_path_buf()),
        };
        let mut pollers = Vec::new();
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
            if device_type == DEVICE_TYPE_NET {
                pollers.push(vf.spawn_poller(POLL_INTERVAL).map_err(io_error(dir))?);
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
