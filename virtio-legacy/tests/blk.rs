//! virtio-blk VF over a temporary file, driven as a modern driver would: registers in BAR 0,
//! requests in DMA memory; plus the transport's interrupts and NEEDS_RESET on a bad ring.

mod common;

use std::fs::OpenOptions;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use common::{DriverQueue, Irqs, Memory, ModernDriver, ro, wo};
use vfio_variant::backend::Interrupt;
use vfio_variant::physical::PhysicalFunction;
use vfio_variant_virtio_legacy::hw::blk::*;
use vfio_variant_virtio_legacy::hw::pci::{MSIX_CAP, MSIX_ENABLE, PCIE_CAP, PCIE_FLR};
use vfio_variant_virtio_legacy::hw::transport::{ISR_OFFSET, NO_VECTOR};
use vfio_variant_virtio_legacy::hw::vf::VirtioVf;
use vfio_variant_virtio_legacy::hw::{STATUS_FEATURES_OK, STATUS_NEEDS_RESET, VIRTIO_F_VERSION_1};

const SECTORS: u64 = 64;

struct TempFile(PathBuf);

impl TempFile {
    fn new() -> Self {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "virtio-blk-test-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::write(&path, vec![0u8; (SECTORS * SECTOR_SIZE) as usize]).unwrap();
        Self(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

struct Setup {
    file: TempFile,
    mem: Arc<Memory>,
    irqs: Arc<Irqs>,
    vf: VirtioVf,
    queue: DriverQueue,
}

fn setup() -> Setup {
    let file = TempFile::new();
    let handle = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&file.0)
        .unwrap();
    let device = BlkDevice::new(handle, "serial-0123456789abcdefXYZ").unwrap();
    let mem = Memory::new(1 << 20);
    let irqs = Irqs::new();
    let vf = VirtioVf::new("vf1", Box::new(device), mem.clone(), irqs.clone());
    let queue = DriverQueue::new(16, 0x1000);
    {
        let driver = ModernDriver::of(&vf);
        let offered = driver.device_features();
        assert_ne!(offered & VIRTIO_BLK_F_FLUSH, 0);
        let status = driver.negotiate(VIRTIO_F_VERSION_1 | VIRTIO_BLK_F_FLUSH);
        assert_ne!(status & STATUS_FEATURES_OK, 0);
        driver.setup_queue(0, &queue, 0);
        driver.driver_ok();
    }
    Setup {
        file,
        mem,
        irqs,
        vf,
        queue,
    }
}

fn header(kind: u32, sector: u64) -> Vec<u8> {
    let mut h = kind.to_le_bytes().to_vec();
    h.extend_from_slice(&[0; 4]);
    h.extend_from_slice(&sector.to_le_bytes());
    h
}

/// Submits a request (header at 0x10000, data at 0x20000, status at 0x30000) and returns
/// (status, used length).
fn request(s: &mut Setup, kind: u32, sector: u64, out: Option<&[u8]>, in_len: u32) -> (u8, u32) {
    s.mem.put(0x10000, &header(kind, sector));
    s.mem.put(0x30000, &[0xff]);
    let mut bufs = vec![ro(0x10000, 16)];
    if let Some(data) = out {
        s.mem.put(0x20000, data);
        bufs.push(ro(0x20000, data.len() as u32));
    }
    if in_len > 0 {
        bufs.push(wo(0x20000, in_len));
    }
    bufs.push(wo(0x30000, 1));
    let head = s.queue.add(&s.mem, &bufs);
    ModernDriver::of(&s.vf).notify(0);
    let (id, len) = s.queue.take_used(&s.mem).expect("request completed");
    assert_eq!(id, u32::from(head));
    (s.mem.get(0x30000, 1)[0], len)
}

#[test]
fn identity_and_config() {
    let s = setup();
    let mut id = [0u8; 4];
    s.vf.config_read(0, &mut id).unwrap();
    assert_eq!(id, [0xf4, 0x1a, 0x42, 0x10]);
    assert!(s.vf.bar(1).is_none(), "no I/O BAR");
    let driver = ModernDriver::of(&s.vf);
    assert_eq!(driver.read(0x2000, 8), SECTORS);
    assert_eq!(driver.read(0x2000 + 20, 4), SECTOR_SIZE);
    assert_eq!(driver.read(0x2000 + 12, 4), u64::from(SEG_MAX));
}

#[test]
fn write_then_read_back() {
    let mut s = setup();
    let data: Vec<u8> = (0..1024u32).map(|i| (i * 7) as u8).collect();
    assert_eq!(
        request(&mut s, VIRTIO_BLK_T_OUT, 3, Some(&data), 0),
        (VIRTIO_BLK_S_OK, 1)
    );
    let on_disk = std::fs::read(&s.file.0).unwrap();
    assert_eq!(&on_disk[3 * 512..3 * 512 + 1024], &data[..]);
    s.mem.put(0x20000, &[0u8; 1024]);
    assert_eq!(
        request(&mut s, VIRTIO_BLK_T_IN, 3, None, 1024),
        (VIRTIO_BLK_S_OK, 1025)
    );
    assert_eq!(s.mem.get(0x20000, 1024), data);
}

#[test]
fn flush_and_get_id() {
    let mut s = setup();
    assert_eq!(
        request(&mut s, VIRTIO_BLK_T_FLUSH, 0, None, 0),
        (VIRTIO_BLK_S_OK, 1)
    );
    assert_eq!(
        request(&mut s, VIRTIO_BLK_T_GET_ID, 0, None, 20),
        (VIRTIO_BLK_S_OK, 21)
    );
    assert_eq!(s.mem.get(0x20000, 20), b"serial-0123456789abc");
}

#[test]
fn out_of_range_and_unsupported_requests() {
    let mut s = setup();
    assert_eq!(
        request(&mut s, VIRTIO_BLK_T_IN, SECTORS, None, 512).0,
        VIRTIO_BLK_S_IOERR
    );
    assert_eq!(
        request(&mut s, VIRTIO_BLK_T_OUT, u64::MAX, Some(&[1; 512]), 0).0,
        VIRTIO_BLK_S_IOERR
    );
    assert_eq!(request(&mut s, 99, 0, None, 0).0, VIRTIO_BLK_S_UNSUPP);
}

#[test]
fn interrupts_follow_msix_and_isr() {
    let mut s = setup();
    s.irqs.take();
    // INTx (MSI-X off): the line rises, reading ISR clears it and lowers the line.
    request(&mut s, VIRTIO_BLK_T_FLUSH, 0, None, 0);
    assert_eq!(s.irqs.take(), vec![Interrupt::Intx(true)]);
    let driver = ModernDriver::of(&s.vf);
    assert_eq!(driver.read(ISR_OFFSET, 1), 1);
    assert_eq!(s.irqs.take(), vec![Interrupt::Intx(false)]);
    assert_eq!(driver.read(ISR_OFFSET, 1), 0);
    // MSI-X on: the queue's vector.
    s.vf.config_write(MSIX_CAP + 2, &MSIX_ENABLE.to_le_bytes())
        .unwrap();
    request(&mut s, VIRTIO_BLK_T_FLUSH, 0, None, 0);
    assert_eq!(s.irqs.take(), vec![Interrupt::Msix(0)]);
    // No interrupt when the driver suppresses it.
    s.mem.put(s.queue.avail, &1u16.to_le_bytes());
    request(&mut s, VIRTIO_BLK_T_FLUSH, 0, None, 0);
    assert!(s.irqs.take().is_empty());
}

#[test]
fn malformed_ring_sets_needs_reset() {
    let mut s = setup();
    s.vf.config_write(MSIX_CAP + 2, &MSIX_ENABLE.to_le_bytes())
        .unwrap();
    let driver = ModernDriver::of(&s.vf);
    driver.write(0x10, 2, 1); // config_msix_vector
    // A two-descriptor loop.
    s.queue.write_desc(&s.mem, 0, 0x10000, 16, 1, 1);
    s.queue.write_desc(&s.mem, 1, 0x30000, 1, 1 | 2, 0);
    s.queue.publish(&s.mem, 0);
    driver.notify(0);
    assert_ne!(driver.status() & STATUS_NEEDS_RESET, 0);
    assert_eq!(s.irqs.take(), vec![Interrupt::Msix(1)]);
    assert_eq!(s.queue.poll_used(&s.mem), None);
    // Nothing more is processed until reset; reset clears it.
    driver.notify(0);
    assert!(s.irqs.take().is_empty());
    driver.write(0x14, 1, 0);
    assert_eq!(driver.status(), 0);
    assert_eq!(driver.read(0x10, 2), u64::from(NO_VECTOR));
}

#[test]
fn flr_resets_the_function() {
    let s = setup();
    let driver = ModernDriver::of(&s.vf);
    assert_ne!(driver.status(), 0);
    s.vf.config_write(PCIE_CAP + 8, &PCIE_FLR.to_le_bytes())
        .unwrap();
    assert_eq!(driver.status(), 0);
    let mut devctl = [0u8; 2];
    s.vf.config_read(PCIE_CAP + 8, &mut devctl).unwrap();
    assert_eq!(u16::from_le_bytes(devctl) & PCIE_FLR, 0);
}

#[test]
fn out_of_range_bar_accesses_fail_without_panic() {
    let s = setup();
    let mut data = [0u8; 8];
    assert!(s.vf.bar_read(0, 0x3ffc, &mut data).is_err());
    assert!(s.vf.bar_write(0, u64::MAX, &data).is_err());
    assert!(s.vf.bar_read(5, 0, &mut data).is_err());
    assert!(s.vf.config_read(4095, &mut data).is_err());
    // Odd widths in range are ignored, not fatal.
    s.vf.bar_write(0, 0x15, &data[..3]).unwrap();
    s.vf.bar_write(0, 0x3001, &data[..1]).unwrap();
}
