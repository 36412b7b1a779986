//! One host of the in-process example: a built-in emulated virtio-blk PF, guest RAM and the
//! machine its functions are plugged into. Two hosts share the disk image of VF 1, as two
//! hosts share storage.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use vfio_variant::backend::Backend;
use vfio_variant::device::VirtualFunction;
use vfio_variant::vpci::{compile::compile, parse_layout};
use vfio_variant_virtio_legacy::builtin::{EmulatedPf, blk_image};

use crate::guest::GuestPort;
use crate::machine::{GuestMemory, Machine};
use crate::vmm::{GUEST_BASE, GUEST_SIZE, memfd};

/// A host: its virtio-blk PF, guest RAM (a memfd the VMM maps) and its machine.
pub struct Host {
    /// The emulated PF (the built-in `virtio-blk` backend), with two VFs.
    pub pf: EmulatedPf,
    /// Guest RAM.
    pub memory: OwnedFd,
    /// The VMM's machine.
    pub machine: Arc<Machine>,
}

impl Host {
    /// A host whose PF keeps its disk images in `dir`; with `shared`, VF 1's disk is that file.
    pub fn new(dir: &Path, shared: Option<&Path>) -> Self {
        std::fs::create_dir_all(dir).expect("host directory");
        if let Some(shared) = shared {
            let disk = blk_image(dir, 1);
            let _ = std::fs::remove_file(&disk);
            std::os::unix::fs::symlink(shared, &disk).expect("shared disk");
        }
        let pf = EmulatedPf::blk(dir, false).expect("virtio-blk PF");
        let memory = memfd();
        let ram = GuestMemory::map(&memory, GUEST_BASE, GUEST_SIZE as usize).expect("guest RAM");
        Self {
            pf,
            memory,
            machine: Arc::new(Machine::new(ram)),
        }
    }

    /// Two hosts under `dir` sharing VF 1's disk; the path of that disk.
    pub fn pair(dir: &Path) -> ([Self; 2], PathBuf) {
        let source = Self::new(&dir.join("a"), None);
        let image = blk_image(&dir.join("a"), 1);
        let destination = Self::new(&dir.join("b"), Some(&image));
        ([source, destination], image)
    }

    /// A function of `profile` on this host's PF (its streams name the backend and profile).
    pub fn function(&self, profile: &str, name: &str) -> Arc<VirtualFunction> {
        let text = self.pf.default_layout(profile).expect("catalog layout");
        let template = Arc::new(compile(Arc::new(
            parse_layout(name, &text).expect("layout"),
        )));
        let function = VirtualFunction::provision(&self.pf, template, profile, name, vec![])
            .expect("a free VF");
        Arc::new(function)
    }

    /// Plugs `function` into this host's machine.
    pub fn plug(&self, function: &Arc<VirtualFunction>) -> GuestPort {
        let (slot, irqs) = self
            .machine
            .plug(Arc::clone(function))
            .expect("interrupt eventfds");
        GuestPort {
            machine: Arc::clone(&self.machine),
            slot,
            irqs,
        }
    }
}
