//! A function on a real device, as the server sees it: DMA maps, SET_IRQS and passthrough BAR
//! mmaps go to the function's direct path (a recording one here), not to the server's tables.

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::thread::JoinHandle;

use parking_lot::Mutex;
use vfio_variant::backend::{Function, FunctionError};
use vfio_variant::device::VirtualFunction;
use vfio_variant::layout::{BarKind, MmapArea};
use vfio_variant::physical::captured::CapturedFunction;
use vfio_variant::physical::{
    DirectBar, DirectError, DirectPath, MmapFile, PhysicalBar, PhysicalDescription,
    PhysicalFunction,
};
use vfio_variant::server::{Port, ServerConfig, serve_connection};
use vfio_variant::vfio_user::dma::{DmaMap, DmaMapFlags};
use vfio_variant::vfio_user::irq::{IRQ_INDEX_MSIX, SetIrqs, SetIrqsFlags};
use vfio_variant::vfio_user::region::{RegionCap, RegionFlags, SparseMmapArea};
use vfio_variant::vfio_user::{Client, ClientOptions};
use vfio_variant::vpci::compile::compile;
use vfio_variant::vpci::parse_layout;

/// BAR 0 is the device's, 16 KiB; the MSI-X table (8 vectors) is in page 2, the PBA in page 3.
const LAYOUT: &str = r#"
[vpci]
format = 1
name = "direct"
config_size = 256
[identity]
vendor_id = 0x1b36
device_id = 0x0010
class_code = 0x010802
[[bar]]
index = 0
kind = "mem64"
size = "16K"
backing = "passthrough"
physical_bar = 0
[[bar.mmap]]
offset = 0
size = "8K"
[[capability]]
kind = "msix"
offset = 0x40
table_size = 8
table_bar = 0
table_offset = 0x2000
pba_bar = 0
pba_offset = 0x3000
"#;

/// What reached the direct path.
#[derive(Default)]
struct Seen {
    maps: Vec<(u64, u64, bool)>,
    unmaps: Vec<(u64, u64)>,
    irqs: Vec<(u32, u32, u32, usize)>,
    releases: usize,
}

struct Recording {
    seen: Arc<Mutex<Seen>>,
    file: Arc<OwnedFd>,
}

impl DirectPath for Recording {
    fn dma_map(
        &self,
        iova: u64,
        size: u64,
        _offset: u64,
        fd: Option<OwnedFd>,
        writable: bool,
    ) -> Result<(), DirectError> {
        if fd.is_none() && writable {
            return Err(DirectError::NeedsFd { iova, size });
        }
        self.seen.lock().maps.push((iova, size, fd.is_some()));
        Ok(())
    }
    fn dma_unmap(&self, iova: u64, size: u64) -> Result<(), DirectError> {
        self.seen.lock().unmaps.push((iova, size));
        Ok(())
    }
    fn dma_unmap_all(&self) {
        self.seen.lock().unmaps.push((0, u64::MAX));
    }
    fn irq_count(&self, index: u32) -> u32 {
        if index == IRQ_INDEX_MSIX { 64 } else { 1 }
    }
    fn set_irqs(&self, request: &SetIrqs, fds: &[OwnedFd]) -> Result<(), DirectError> {
        self.seen
            .lock()
            .irqs
            .push((request.index, request.start, request.count, fds.len()));
        Ok(())
    }
    fn bar_file(&self, bar: u8) -> Option<DirectBar> {
        (bar == 0).then(|| DirectBar {
            file: MmapFile {
                fd: Arc::clone(&self.file),
                offset: 0x5000_0000_0000,
            },
            // The kernel lets all of it be mapped but page 1.
            mappable: vec![
                MmapArea {
                    offset: 0,
                    size: 0x1000,
                },
                MmapArea {
                    offset: 0x2000,
                    size: 0x2000,
                },
            ],
        })
    }
    fn release(&self) {
        self.seen.lock().releases += 1;
    }
}

struct OnDevice {
    physical: CapturedFunction,
    direct: Recording,
}

impl Function for OnDevice {
    fn physical(&self) -> Option<&dyn PhysicalFunction> {
        Some(&self.physical)
    }
    fn direct(&self) -> Option<&dyn DirectPath> {
        Some(&self.direct)
    }
    fn reset(&self) -> Result<(), FunctionError> {
        Ok(())
    }
}

fn memfd() -> OwnedFd {
    rustix::fs::memfd_create("direct-test", rustix::fs::MemfdFlags::CLOEXEC).unwrap()
}

fn eventfd() -> OwnedFd {
    rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC).unwrap()
}

fn start(seen: Arc<Mutex<Seen>>) -> (Client, JoinHandle<()>) {
    let mut bars = [None; 6];
    bars[0] = Some(PhysicalBar {
        kind: BarKind::Memory64,
        prefetchable: false,
        size: 0x4000,
    });
    let physical = CapturedFunction::new(
        "dev",
        PhysicalDescription {
            config: vec![0; 256],
            bars,
            rom_size: None,
        },
    );
    let function = OnDevice {
        physical,
        direct: Recording {
            seen,
            file: Arc::new(memfd()),
        },
    };
    let template = Arc::new(compile(Arc::new(parse_layout("direct", LAYOUT).unwrap())));
    let vf = Arc::new(VirtualFunction::new(template, Box::new(function)).unwrap());
    let port = Port::new("direct", vf);
    let (ours, theirs) = UnixStream::pair().unwrap();
    let server = std::thread::spawn(move || {
        serve_connection(&port, &Arc::new(ServerConfig::default()), theirs);
    });
    (
        Client::from_stream(ours, ClientOptions::default()).unwrap(),
        server,
    )
}

#[test]
fn dma_irqs_and_bar_mmaps_go_to_the_device() {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let (mut client, server) = start(Arc::clone(&seen));
    let rw = DmaMapFlags::READ | DmaMapFlags::WRITE;

    // Guest RAM without an fd is refused; with one it reaches the device's IOMMU.
    let e = client
        .dma_map(&DmaMap::new(0x10_0000, 0x1000, 0, rw), None)
        .unwrap_err();
    assert_eq!(e.errno(), libc::EINVAL);
    let fd = memfd();
    client
        .dma_map(&DmaMap::new(0x20_0000, 0x1000, 0, rw), Some(fd.as_fd()))
        .unwrap();
    client
        .dma_map(
            &DmaMap::new(0xfffc_0000, 0x1000, 0, DmaMapFlags::READ),
            None,
        )
        .unwrap();
    client.dma_unmap(0x20_0000, 0x1000).unwrap();
    client.dma_unmap_all().unwrap();

    // MSI-X: the layout's 8 vectors (the device has 64), with the client's eventfds.
    let info = client.irq_info(IRQ_INDEX_MSIX).unwrap();
    assert_eq!(info.count, 8);
    let fds: Vec<OwnedFd> = (0..8).map(|_| eventfd()).collect();
    let borrowed: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
    let trigger = SetIrqsFlags::DATA_EVENTFD | SetIrqsFlags::ACTION_TRIGGER;
    client
        .set_irqs(&SetIrqs::new(trigger, IRQ_INDEX_MSIX, 0, 8), &borrowed)
        .unwrap();
    let e = client
        .set_irqs(&SetIrqs::new(trigger, IRQ_INDEX_MSIX, 4, 8), &borrowed)
        .unwrap_err();
    assert_eq!(e.errno(), libc::EINVAL, "beyond the layout's vectors");

    // BAR 0: the device file at the region's offset; the layout maps pages 0-1 (pages 2-3
    // hold the MSI-X table and PBA), the kernel leaves out page 1.
    let region = client.region_info(0).unwrap();
    assert!(region.info.flags.contains(RegionFlags::MMAP));
    assert_eq!(region.info.offset, 0x5000_0000_0000);
    assert_eq!(region.fds.len(), 1);
    assert_eq!(
        region.info.caps,
        vec![RegionCap::SparseMmap(vec![SparseMmapArea {
            offset: 0,
            size: 0x1000
        }])]
    );

    drop(client);
    server.join().unwrap();
    let seen = seen.lock();
    assert_eq!(
        seen.maps,
        vec![(0x20_0000, 0x1000, true), (0xfffc_0000, 0x1000, false)]
    );
    assert_eq!(seen.unmaps, vec![(0x20_0000, 0x1000), (0, u64::MAX)]);
    assert_eq!(seen.irqs, vec![(IRQ_INDEX_MSIX, 0, 8, 8)]);
    assert_eq!(
        seen.releases, 1,
        "the client going away releases the device"
    );
}
