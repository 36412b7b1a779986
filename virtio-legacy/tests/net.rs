//! virtio-net VF on a Unix datagram socketpair: frames the driver transmits reach the host's
//! end; datagrams the host sends arrive on the receive queue behind a virtio_net_hdr.

mod common;

use std::os::unix::net::UnixDatagram;
use std::sync::Arc;
use std::time::Duration;

use common::{DriverQueue, Irqs, Memory, ModernDriver, ro, wo};
use vfio_variant_virtio_legacy::hw::VIRTIO_F_VERSION_1;
use vfio_variant_virtio_legacy::hw::net::*;
use vfio_variant_virtio_legacy::hw::vf::VirtioVf;

const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

struct Setup {
    mem: Arc<Memory>,
    vf: VirtioVf,
    host: UnixDatagram,
    rx: DriverQueue,
    tx: DriverQueue,
}

fn setup() -> Setup {
    let (device, host) = NetDevice::new(MAC).unwrap();
    host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mem = Memory::new(1 << 20);
    let vf = VirtioVf::new("vf1", Box::new(device), mem.clone(), Irqs::new());
    let rx = DriverQueue::new(16, 0x1000);
    let tx = DriverQueue::new(16, 0x4000);
    {
        let driver = ModernDriver::of(&vf);
        driver.negotiate(VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MAC);
        driver.setup_queue(RX_QUEUE, &rx, 0);
        driver.setup_queue(TX_QUEUE, &tx, 1);
        driver.driver_ok();
    }
    Setup {
        mem,
        vf,
        host,
        rx,
        tx,
    }
}

#[test]
fn config_has_the_mac_and_device_id() {
    let s = setup();
    let driver = ModernDriver::of(&s.vf);
    let mac: Vec<u8> = (0..6).map(|i| driver.read(0x2000 + i, 1) as u8).collect();
    assert_eq!(mac, MAC);
    assert_eq!(driver.read(0x2000 + 6, 2), 1, "link up");
    let mut id = [0u8; 2];
    vfio_variant::physical::PhysicalFunction::config_read(&s.vf, 2, &mut id).unwrap();
    assert_eq!(u16::from_le_bytes(id), 0x1041);
}

#[test]
fn transmitted_frames_reach_the_host() {
    let mut s = setup();
    let frame = b"\xff\xff\xff\xff\xff\xff\x52\x54\x00\x12\x34\x56\x08\x00payload";
    // Header and frame in separate descriptors, as Linux may send them.
    s.mem.put(0x10000, &[0u8; 12]);
    s.mem.put(0x11000, frame);
    let head =
        s.tx.add(&s.mem, &[ro(0x10000, 12), ro(0x11000, frame.len() as u32)]);
    ModernDriver::of(&s.vf).notify(TX_QUEUE);
    assert_eq!(s.tx.take_used(&s.mem), Some((u32::from(head), 0)));
    let mut buffer = [0u8; 2048];
    let n = s.host.recv(&mut buffer).unwrap();
    assert_eq!(&buffer[..n], frame);
}

#[test]
fn host_frames_are_received_with_a_header() {
    let mut s = setup();
    let head = s.rx.add(&s.mem, &[wo(0x20000, 2048)]);
    ModernDriver::of(&s.vf).notify(RX_QUEUE);
    assert_eq!(s.rx.poll_used(&s.mem), None, "nothing arrived yet");
    s.host.send(b"frame from the host").unwrap();
    s.vf.poll();
    let (id, len) = s.rx.take_used(&s.mem).unwrap();
    assert_eq!(id, u32::from(head));
    assert_eq!(len as usize, 12 + 19);
    let packet = s.mem.get(0x20000, len as usize);
    assert_eq!(&packet[..10], &[0; 10]);
    assert_eq!(&packet[10..12], &1u16.to_le_bytes(), "num_buffers");
    assert_eq!(&packet[12..], b"frame from the host");
}

#[test]
fn frames_wait_for_receive_buffers() {
    let mut s = setup();
    s.host.send(b"first").unwrap();
    s.host.send(b"second").unwrap();
    s.vf.poll();
    // No buffers yet: nothing is lost, the frames wait in order.
    let a = s.rx.add(&s.mem, &[wo(0x20000, 64)]);
    let b = s.rx.add(&s.mem, &[wo(0x21000, 64)]);
    ModernDriver::of(&s.vf).notify(RX_QUEUE);
    assert_eq!(s.rx.take_used(&s.mem), Some((u32::from(a), 17)));
    assert_eq!(s.rx.take_used(&s.mem), Some((u32::from(b), 18)));
    assert_eq!(s.mem.get(0x20000 + 12, 5), b"first");
    assert_eq!(s.mem.get(0x21000 + 12, 6), b"second");
}

#[test]
fn a_reset_device_moves_no_frames() {
    let mut s = setup();
    s.rx.add(&s.mem, &[wo(0x20000, 64)]);
    ModernDriver::of(&s.vf).write(0x14, 1, 0);
    s.host.send(b"dropped?").unwrap();
    s.vf.poll();
    s.vf.quiesce();
    assert_eq!(s.rx.poll_used(&s.mem), None);
}

#[test]
fn a_poller_delivers_frames_without_notifications() {
    let (device, host) = NetDevice::new(MAC).unwrap();
    let wake_source = device.wake_source().unwrap();
    let mem = Memory::new(1 << 20);
    let vf = Arc::new(VirtioVf::new(
        "vf1",
        Box::new(device),
        mem.clone(),
        Irqs::new(),
    ));
    let mut rx = DriverQueue::new(16, 0x1000);
    {
        let driver = ModernDriver::of(&vf);
        driver.negotiate(VIRTIO_F_VERSION_1);
        driver.setup_queue(RX_QUEUE, &rx, 0);
        driver.driver_ok();
    }
    rx.add(&mem, &[wo(0x20000, 2048)]);
    ModernDriver::of(&vf).notify(RX_QUEUE);
    let poller = vf
        .spawn_poller(wake_source, Duration::from_millis(1))
        .unwrap();
    host.send(b"unsolicited").unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let used = loop {
        if let Some(used) = rx.take_used(&mem) {
            break used;
        }
        assert!(std::time::Instant::now() < deadline, "frame not delivered");
        std::thread::sleep(Duration::from_millis(1));
    };
    assert_eq!(used.1, 12 + 11);
    drop(poller);
}

#[test]
fn an_idle_poller_sleeps_until_a_frame_arrives() {
    let (device, host) = NetDevice::new(MAC).unwrap();
    let wake_source = device.wake_source().unwrap();
    let mem = Memory::new(1 << 20);
    let vf = Arc::new(VirtioVf::new(
        "vf1",
        Box::new(device),
        mem.clone(),
        Irqs::new(),
    ));
    let mut rx = DriverQueue::new(16, 0x1000);
    {
        let driver = ModernDriver::of(&vf);
        driver.negotiate(VIRTIO_F_VERSION_1);
        driver.setup_queue(RX_QUEUE, &rx, 0);
        driver.driver_ok();
    }
    rx.add(&mem, &[wo(0x20000, 2048)]);
    ModernDriver::of(&vf).notify(RX_QUEUE);
    let poller = vf
        .spawn_poller(wake_source, Duration::from_millis(1))
        .unwrap();
    // A poller on a timer would have run the queues tens of times by now.
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(poller.rounds(), 0, "woke with nothing to do");
    host.send(b"wake up").unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while rx.take_used(&mem).is_none() {
        assert!(std::time::Instant::now() < deadline, "frame not delivered");
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(poller.rounds() >= 1);
    drop(poller);
}

#[test]
fn frames_waiting_for_buffers_come_with_the_drivers_next_buffers() {
    let (device, host) = NetDevice::new(MAC).unwrap();
    let wake_source = device.wake_source().unwrap();
    let mem = Memory::new(1 << 20);
    let vf = Arc::new(VirtioVf::new(
        "vf1",
        Box::new(device),
        mem.clone(),
        Irqs::new(),
    ));
    let mut rx = DriverQueue::new(16, 0x1000);
    {
        let driver = ModernDriver::of(&vf);
        driver.negotiate(VIRTIO_F_VERSION_1);
        driver.setup_queue(RX_QUEUE, &rx, 0);
        driver.driver_ok();
    }
    let poller = vf
        .spawn_poller(wake_source, Duration::from_millis(1))
        .unwrap();
    // No buffers yet: the frames wait (the poller backs off rather than spin).
    for frame in [&b"one"[..], b"two", b"three"] {
        host.send(frame).unwrap();
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    for (i, len) in [3usize, 3, 5].into_iter().enumerate() {
        let at = 0x20000 + 0x1000 * i as u64;
        rx.add(&mem, &[wo(at, 2048)]);
        ModernDriver::of(&vf).notify(RX_QUEUE);
        let used = loop {
            if let Some(used) = rx.take_used(&mem) {
                break used;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "frame {i} not delivered"
            );
            std::thread::sleep(Duration::from_millis(1));
        };
        assert_eq!(used.1 as usize, 12 + len, "frame {i}");
    }
    drop(poller);
}

/// Guest memory that counts the device's reads (each would be a DMA_READ message when the
/// VMM does not share its RAM).
struct Counting(Arc<Memory>, std::sync::atomic::AtomicUsize);

impl vfio_variant::backend::DmaAccess for Counting {
    fn read(&self, iova: u64, data: &mut [u8]) -> Result<(), vfio_variant::backend::DmaError> {
        self.1.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.0.read(iova, data)
    }
    fn write(&self, iova: u64, data: &[u8]) -> Result<(), vfio_variant::backend::DmaError> {
        self.0.write(iova, data)
    }
}

#[test]
fn polling_an_idle_receive_queue_reads_no_guest_memory() {
    let (device, _host) = NetDevice::new(MAC).unwrap();
    let mem = Memory::new(1 << 20);
    let counting = Arc::new(Counting(mem.clone(), Default::default()));
    let vf = VirtioVf::new("vf1", Box::new(device), counting.clone(), Irqs::new());
    let mut rx = DriverQueue::new(16, 0x1000);
    let driver = ModernDriver::of(&vf);
    driver.negotiate(VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MAC);
    driver.setup_queue(RX_QUEUE, &rx, 0);
    driver.driver_ok();
    rx.add(&mem, &[wo(0x20000, 2048)]);
    let before = counting.1.load(std::sync::atomic::Ordering::SeqCst);
    for _ in 0..10 {
        vf.poll();
        vf.quiesce();
    }
    assert_eq!(
        counting.1.load(std::sync::atomic::Ordering::SeqCst),
        before,
        "nothing arrived: nothing to read"
    );
}
