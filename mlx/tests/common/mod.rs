//! Test harness: emulated mlx PFs, functions served over vfio-user socket pairs, guest memory
//! (a memfd mapped with DMA_MAP) and a data-plane driver that checks every answer.

#![allow(dead_code)]

use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::Duration;

use vfio_variant::backend::Backend;
use vfio_variant::device::VirtualFunction;
use vfio_variant::server::{Port, ServerConfig, serve_connection};
use vfio_variant::vfio_user::dma::{DmaMap, DmaMapFlags};
use vfio_variant::vfio_user::{Client, ClientOptions};
use vfio_variant::vpci::{compile::compile, parse_layout};
use vfio_variant_mlx::MlxBackend;
use vfio_variant_mlx::backend::LAYOUT;
use vfio_variant_mlx::hw::dataplane::{
    self, CONSUMER, CTX_PAGES, CTX_SEED, ENABLE, ENTRY_BYTES, PRODUCER, REGS, RING_BASE, RING_SIZE,
    mix,
};
use vfio_variant_mlx::hw::firmware::FirmwareCaps;
use vfio_variant_mlx::hw::pci::Generation;
use vfio_variant_mlx::hw::pf::MlxPf;
use vfio_variant_mlx::hw::vf::MlxVf;

/// Guest memory: 1 MiB at this IOVA.
pub const GUEST_BASE: u64 = 0x10_0000;
/// Size of guest memory.
pub const GUEST_SIZE: u64 = 1 << 20;
/// The ring, at the start of guest memory.
pub const RING: u64 = GUEST_BASE;
/// Entries of the ring.
pub const RING_ENTRIES: u32 = 256;
/// The config-space region.
pub const CONFIG_REGION: u32 = 7;

/// An emulated PF and the backend over it.
pub struct Host {
    /// The backend.
    pub backend: MlxBackend,
    /// The PF.
    pub pf: Arc<MlxPf>,
}

/// A PF of `generation` with two VFs whose firmware offers `caps`.
pub fn host(name: &str, generation: Generation, caps: FirmwareCaps) -> Host {
    let (backend, pf) = MlxBackend::emulated(name, generation, 2, caps).unwrap();
    Host { backend, pf }
}

/// The guest's memory: a memfd both hosts map (the VMM moved it).
pub fn guest_memory() -> Arc<File> {
    let fd = rustix::fs::memfd_create("guest", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
    rustix::fs::ftruncate(&fd, GUEST_SIZE).unwrap();
    Arc::new(File::from(fd))
}

/// One function served over a socket pair, with a client that mapped guest memory.
pub struct Served {
    /// The port.
    pub port: Arc<Port>,
    /// The client (the VMM).
    pub client: Client,
    /// The emulated VF behind the function.
    pub vf: Arc<MlxVf>,
}

/// Provisions a function of `profile` with `layout` and serves it.
pub fn serve_with(host: &Host, profile: &str, layout: &str, memory: &File) -> Served {
    let parsed = Arc::new(parse_layout("mlx-vf", layout).unwrap());
    let template = Arc::new(compile(parsed));
    let function = Arc::new(
        VirtualFunction::provision(&host.backend, template, profile, "fn", vec![]).unwrap(),
    );
    let name = function.function().physical().unwrap().name();
    let vf = host
        .pf
        .vfs()
        .iter()
        .find(|vf| vfio_variant::physical::PhysicalFunction::name(&***vf) == name)
        .unwrap()
        .clone();
    let port = Port::for_backend("fn", function, host.backend.name(), profile);
    let (ours, theirs) = UnixStream::pair().unwrap();
    let served = Arc::clone(&port);
    std::thread::spawn(move || {
        serve_connection(&served, &Arc::new(ServerConfig::default()), theirs);
    });
    let options = ClientOptions {
        timeout: Some(Duration::from_secs(60)),
        ..ClientOptions::default()
    };
    let mut client = Client::from_stream(ours, options).unwrap();
    client
        .dma_map(
            &DmaMap::new(
                GUEST_BASE,
                GUEST_SIZE,
                0,
                DmaMapFlags::READ | DmaMapFlags::WRITE,
            ),
            Some(memory.as_fd()),
        )
        .unwrap();
    let mut served = Served { port, client, vf };
    served.enumerate();
    served
}

/// [`serve_with`] the catalog's instance type.
pub fn serve(host: &Host, profile: &str, memory: &File) -> Served {
    serve_with(host, profile, LAYOUT, memory)
}

impl Served {
    /// Sets BAR 0 and COMMAND (memory, bus master) as a guest's firmware does.
    pub fn enumerate(&mut self) {
        for (offset, value) in [(0x10, 0xe000_000cu32), (0x14, 0x1), (0x04, 0x0006)] {
            self.client
                .region_write(CONFIG_REGION, offset, &value.to_le_bytes())
                .unwrap();
        }
    }

    /// The guest-visible config space, whole.
    pub fn config(&mut self) -> Vec<u8> {
        let mut config = vec![0u8; 4096];
        for (i, chunk) in config.chunks_mut(1024).enumerate() {
            self.client
                .region_read(CONFIG_REGION, (i * 1024) as u64, chunk)
                .unwrap();
        }
        config
    }

    /// Writes a data-plane register through the passed-through BAR 0 (region 0).
    pub fn register(&mut self, reg: u64, value: u32) {
        self.client
            .region_write(0, REGS + reg, &value.to_le_bytes())
            .unwrap();
    }
}

/// Reads a data-plane register of `vf` as the guest's mapped BAR does.
pub fn read_register(vf: &MlxVf, reg: u64) -> u32 {
    let mut b = [0u8; 4];
    vfio_variant::physical::PhysicalFunction::bar_read(vf, 0, REGS + reg, &mut b).unwrap();
    u32::from_le_bytes(b)
}

/// The guest driver of the echo ring: produces entries and checks every answer once.
pub struct Driver {
    memory: Arc<File>,
    /// Entries produced.
    pub produced: u32,
    /// Entries checked.
    pub checked: u32,
    accum: u64,
}

/// The value of entry `i`.
pub fn value(i: u32) -> u64 {
    u64::from(i).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x5555
}

impl Driver {
    /// Sets up the ring on `served` (through vfio-user), with a context memory of
    /// `ctx_pages` pages.
    pub fn start(served: &mut Served, memory: Arc<File>, ctx_pages: u32) -> Self {
        served.register(RING_BASE, RING as u32);
        served.register(RING_BASE + 4, (RING >> 32) as u32);
        served.register(RING_SIZE, RING_ENTRIES);
        served.register(CTX_PAGES, ctx_pages);
        served.register(CTX_SEED, 0x5eed);
        served.register(ENABLE, 1);
        Self {
            memory,
            produced: 0,
            checked: 0,
            accum: 0,
        }
    }

    fn slot(i: u32) -> u64 {
        RING - GUEST_BASE + u64::from(i % RING_ENTRIES) * ENTRY_BYTES
    }

    /// Writes `count` entries and rings `vf`'s doorbell (a write to the mapped BAR).
    pub fn send(&mut self, vf: &MlxVf, count: u32) {
        assert!(self.produced + count - self.checked <= RING_ENTRIES);
        for _ in 0..count {
            let mut entry = [0u8; ENTRY_BYTES as usize];
            entry[..8].copy_from_slice(&value(self.produced).to_le_bytes());
            self.memory
                .write_all_at(&entry, Self::slot(self.produced))
                .unwrap();
            self.produced += 1;
        }
        vfio_variant::physical::PhysicalFunction::bar_write(
            vf,
            0,
            REGS + PRODUCER,
            &self.produced.to_le_bytes(),
        )
        .unwrap();
        // The VF serves its ring on its own thread, after the doorbell write returned.
        vf.quiesce();
    }

    /// Checks every answered entry since the last check: each answered once, in order, with
    /// the sequence number and accumulator the device must have; returns how many.
    pub fn check(&mut self) -> u32 {
        let mut n = 0;
        while self.checked < self.produced {
            let mut entry = [0u8; ENTRY_BYTES as usize];
            self.memory
                .read_exact_at(&mut entry, Self::slot(self.checked))
                .unwrap();
            let word = |i: usize| u64::from_le_bytes(entry[i * 8..i * 8 + 8].try_into().unwrap());
            if word(3) != 1 {
                break;
            }
            let seq = u64::from(self.checked) + 1;
            self.accum = mix(self.accum, seq, value(self.checked));
            assert_eq!(word(1), seq, "entry {} answered out of order", self.checked);
            assert_eq!(word(2), self.accum, "entry {}: accumulator", self.checked);
            self.checked += 1;
            n += 1;
        }
        n
    }

    /// Checks that `vf` served everything produced, nothing more.
    pub fn check_all(&mut self, vf: &MlxVf) {
        vf.quiesce();
        self.check();
        assert_eq!(self.checked, self.produced, "entries left unanswered");
        assert_eq!(read_register(vf, CONSUMER), self.produced);
        assert_eq!(read_register(vf, dataplane::ERROR), 0);
    }
}
