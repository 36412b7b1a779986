//! The built-in emulated virtio PFs over real vfio-user sockets with the framework's client:
//! a legacy driver on the transitional VF's I/O BAR (region 0), guest memory a memfd mapped
//! with DMA_MAP, virtio-blk requests checked against the image file; BAR sizing; bad legacy
//! accesses; the isolation of two VFs of one PF; and a migration between two PFs with
//! requests in flight.

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

mod common;
use common::wait_until;

use vfio_variant::backend::Backend;
use vfio_variant::device::VirtualFunction;
use vfio_variant::migration::MigrationState;
use vfio_variant::server::{Endpoint, Port, ServerConfig};
use vfio_variant::vfio_user::client::{Client, ClientError, ClientOptions, DmaHandler};
use vfio_variant::vfio_user::dma::{DmaMap, DmaMapFlags};
use vfio_variant::vpci::{compile::compile, parse_layout};
use vfio_variant_virtio_legacy::backend::{PROFILE_MODERN, PROFILE_TRANSITIONAL};
use vfio_variant_virtio_legacy::builtin::{
    BLK_IMAGE_SIZE, EmulatedPf, NUM_VFS, blk_image, net_mac, net_socket,
};
use vfio_variant_virtio_legacy::hw::blk::{
    VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_S_OK, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use vfio_variant_virtio_legacy::hw::transport::legacy;
use vfio_variant_virtio_legacy::hw::{
    STATUS_ACKNOWLEDGE, STATUS_DRIVER, STATUS_DRIVER_OK, STATUS_NEEDS_RESET,
};

/// Guest memory: 1 MiB at this IOVA.
const GUEST_BASE: u64 = 0x10_0000;
const GUEST_SIZE: u64 = 1 << 20;
/// The legacy queue's page: the first guest page.
const QUEUE_PFN: u32 = (GUEST_BASE >> 12) as u32;
/// The legacy queue size (QUEUE_NUM).
const QUEUE_SIZE: u16 = 256;
/// Request buffers, past the queue's three pages.
const HEADER: u64 = GUEST_BASE + 0x4000;
const DATA: u64 = GUEST_BASE + 0x5000;
const STATUS_BYTE: u64 = GUEST_BASE + 0x8000;
const CONFIG_REGION: u32 = 7;

struct Dir(PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn dir(name: &str) -> Dir {
    let dir = std::env::temp_dir().join(format!(
        "vfio-variant-virtio-user-{name}-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    Dir(dir)
}

/// One function served on a socket, with a client and guest memory.
struct Guest {
    _endpoint: Endpoint,
    client: Client,
    memory: OwnedFd,
    avail_idx: u16,
    last_used: u16,
}

fn serve(pf: &EmulatedPf, dir: &Path, name: &str, profile: &str) -> Guest {
    serve_with(pf, dir, name, profile, Ram::Shared)
}

/// How the guest's RAM reaches the server.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Ram {
    /// Mapped with an fd (a shared memfd).
    Shared,
    /// Without an fd, by DMA_READ/DMA_WRITE messages, answered as QEMU answers them: only
    /// once the reply the client waits for has come.
    Private,
}

/// The guest's memfd reached by messages.
struct ByMessage(OwnedFd);

impl DmaHandler for ByMessage {
    fn dma_read(&mut self, address: u64, buf: &mut [u8]) -> Result<(), i32> {
        let at = address
            .checked_sub(GUEST_BASE)
            .ok_or(rustix::io::Errno::FAULT.raw_os_error())?;
        let len = buf.len();
        match rustix::io::pread(&self.0, buf, at) {
            Ok(n) if n == len => Ok(()),
            _ => Err(rustix::io::Errno::FAULT.raw_os_error()),
        }
    }
    fn dma_write(&mut self, address: u64, data: &[u8]) -> Result<(), i32> {
        let at = address
            .checked_sub(GUEST_BASE)
            .ok_or(rustix::io::Errno::FAULT.raw_os_error())?;
        match rustix::io::pwrite(&self.0, data, at) {
            Ok(n) if n == data.len() => Ok(()),
            _ => Err(rustix::io::Errno::FAULT.raw_os_error()),
        }
    }
}

fn serve_with(pf: &EmulatedPf, dir: &Path, name: &str, profile: &str, ram: Ram) -> Guest {
    let text = pf.default_layout(profile).unwrap();
    let layout = Arc::new(parse_layout(name, &text).unwrap());
    let template = Arc::new(compile(layout));
    let vf = Arc::new(VirtualFunction::provision(pf, template, profile, name, vec![]).unwrap());
    let endpoint = Endpoint::bind(
        Port::new(name, vf),
        &dir.join(format!("{name}.sock")),
        Arc::new(ServerConfig::default()),
    )
    .unwrap();
    let options = ClientOptions {
        timeout: Some(Duration::from_secs(if ram == Ram::Private {
            3
        } else {
            10
        })),
        ..ClientOptions::default()
    };
    let mut client = Client::connect_with(endpoint.path(), options).unwrap();
    let memory = rustix::fs::memfd_create("guest", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
    rustix::fs::ftruncate(&memory, GUEST_SIZE).unwrap();
    if ram == Ram::Private {
        client.set_dma_handler(Box::new(ByMessage(memory.try_clone().unwrap())));
        client.set_deferred_dma(true);
    }
    client
        .dma_map(
            &DmaMap::new(
                GUEST_BASE,
                GUEST_SIZE,
                0,
                DmaMapFlags::READ | DmaMapFlags::WRITE,
            ),
            (ram == Ram::Shared).then(|| memory.as_fd()),
        )
        .unwrap();
    Guest {
        _endpoint: endpoint,
        client,
        memory,
        avail_idx: 0,
        last_used: 0,
    }
}

impl Guest {
    fn config_write(&mut self, offset: u64, data: &[u8]) {
        self.client
            .region_write(CONFIG_REGION, offset, data)
            .unwrap();
    }

    fn config_read32(&mut self, offset: u64) -> u32 {
        let mut b = [0u8; 4];
        self.client
            .region_read(CONFIG_REGION, offset, &mut b)
            .unwrap();
        u32::from_le_bytes(b)
    }

    /// I/O decoding and bus mastering in COMMAND.
    fn enable_io(&mut self) {
        self.config_write(4, &[0x05, 0x00]);
    }

    fn try_io_read(&mut self, offset: u64, len: usize) -> Result<u64, ClientError> {
        let mut b = [0u8; 8];
        self.client.region_read(0, offset, &mut b[..len])?;
        Ok(u64::from_le_bytes(b))
    }

    fn io_read(&mut self, offset: u8, len: usize) -> u64 {
        self.try_io_read(offset.into(), len).unwrap()
    }

    fn try_io_write(&mut self, offset: u64, len: usize, value: u64) -> Result<(), ClientError> {
        self.client
            .region_write(0, offset, &value.to_le_bytes()[..len])
    }

    fn io_write(&mut self, offset: u8, len: usize, value: u64) {
        self.try_io_write(offset.into(), len, value).unwrap();
    }

    fn put(&self, iova: u64, data: &[u8]) {
        let n = rustix::io::pwrite(&self.memory, data, iova - GUEST_BASE).unwrap();
        assert_eq!(n, data.len());
    }

    fn get(&self, iova: u64, len: usize) -> Vec<u8> {
        let mut data = vec![0u8; len];
        let n = rustix::io::pread(&self.memory, &mut data, iova - GUEST_BASE).unwrap();
        assert_eq!(n, len);
        data
    }

    fn status(&mut self) -> u8 {
        self.io_read(legacy::STATUS, 1) as u8
    }

    /// The legacy driver's initialization, as Linux's virtio_pci_legacy does it: reset,
    /// ACKNOWLEDGE, DRIVER, features, queue 0 at [`QUEUE_PFN`], DRIVER_OK. Returns
    /// HOST_FEATURES.
    fn legacy_init(&mut self) -> u32 {
        self.io_write(legacy::STATUS, 1, 0);
        self.io_write(legacy::STATUS, 1, STATUS_ACKNOWLEDGE.into());
        self.io_write(
            legacy::STATUS,
            1,
            (STATUS_ACKNOWLEDGE | STATUS_DRIVER).into(),
        );
        let host = self.io_read(legacy::HOST_FEATURES, 4) as u32;
        self.io_write(legacy::GUEST_FEATURES, 4, host.into());
        self.io_write(legacy::QUEUE_SEL, 2, 0);
        assert_eq!(self.io_read(legacy::QUEUE_NUM, 2), u64::from(QUEUE_SIZE));
        self.put(GUEST_BASE, &[0u8; 0x3000]);
        self.io_write(legacy::QUEUE_PFN, 4, QUEUE_PFN.into());
        assert_eq!(self.io_read(legacy::QUEUE_PFN, 4), u64::from(QUEUE_PFN));
        self.io_write(
            legacy::STATUS,
            1,
            (STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_DRIVER_OK).into(),
        );
        self.avail_idx = 0;
        self.last_used = 0;
        host
    }

    fn desc(&self, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let mut d = Vec::with_capacity(16);
        d.extend_from_slice(&addr.to_le_bytes());
        d.extend_from_slice(&len.to_le_bytes());
        d.extend_from_slice(&flags.to_le_bytes());
        d.extend_from_slice(&next.to_le_bytes());
        self.put(GUEST_BASE + 16 * u64::from(index), &d);
    }

    /// One virtio-blk request: header, `len` data bytes at [`DATA`] (device-writable for a
    /// read), status. Returns the status byte and the used length.
    fn blk_request(&mut self, kind: u32, sector: u64, len: u32) -> (u8, u32) {
        let mut header = Vec::with_capacity(16);
        header.extend_from_slice(&kind.to_le_bytes());
        header.extend_from_slice(&0u32.to_le_bytes());
        header.extend_from_slice(&sector.to_le_bytes());
        self.put(HEADER, &header);
        self.put(STATUS_BYTE, &[0xff]);
        let data_flags = if kind == VIRTIO_BLK_T_IN { 1 | 2 } else { 1 };
        self.desc(0, HEADER, 16, 1, 1);
        self.desc(1, DATA, len, data_flags, 2);
        self.desc(2, STATUS_BYTE, 1, 2, 0);
        let avail = GUEST_BASE + 16 * u64::from(QUEUE_SIZE);
        let slot = u64::from(self.avail_idx % QUEUE_SIZE);
        self.put(avail + 4 + 2 * slot, &0u16.to_le_bytes());
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.put(avail + 2, &self.avail_idx.to_le_bytes());
        self.io_write(legacy::QUEUE_NOTIFY, 2, 0);
        let used = GUEST_BASE + 0x2000;
        // The notification is answered first; the VF processes the queue after. The
        // driver goes on reading a register meanwhile, as a vCPU does (a client that
        // answers DMA only between calls needs them).
        assert!(
            wait_until(|| {
                self.io_read(legacy::STATUS, 1);
                let idx = self.get(used + 2, 2);
                u16::from_le_bytes([idx[0], idx[1]]) == self.avail_idx
            }),
            "the request completed"
        );
        let slot = u64::from(self.last_used % QUEUE_SIZE);
        self.last_used = self.last_used.wrapping_add(1);
        let element = self.get(used + 4 + 8 * slot, 8);
        assert_eq!(&element[..4], &[0, 0, 0, 0], "descriptor head 0");
        let used_len = u32::from_le_bytes([element[4], element[5], element[6], element[7]]);
        (self.get(STATUS_BYTE, 1)[0], used_len)
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(13).wrapping_add(seed))
        .collect()
}

fn is_remote_error(result: Result<u64, ClientError>) -> bool {
    matches!(result, Err(ClientError::Remote { .. }))
}

#[test]
fn legacy_blk_driver_writes_and_reads_the_image() {
    legacy_blk_driver(Ram::Shared);
}

/// QUEUE_NOTIFY is an I/O write QEMU's vCPU waits for, holding the lock its DMA handling
/// needs: the VF must answer it before it reads the ring.
#[test]
fn legacy_blk_driver_with_private_ram_never_deadlocks() {
    legacy_blk_driver(Ram::Private);
}

fn legacy_blk_driver(ram: Ram) {
    let d = dir(if ram == Ram::Shared {
        "blk"
    } else {
        "blk-private"
    });
    let pf = EmulatedPf::blk(&d.0, false).unwrap();
    let mut g = serve_with(&pf, &d.0, "blk", PROFILE_TRANSITIONAL, ram);
    // Identity: transitional virtio-blk, revision 0.
    assert_eq!(g.config_read32(0), 0x1001_1af4);
    assert_eq!(g.config_read32(8) & 0xff, 0);
    // The I/O BAR refuses accesses until I/O decoding is on.
    assert!(is_remote_error(g.try_io_read(0, 4)));
    g.enable_io();
    let host = g.legacy_init();
    assert_ne!(u64::from(host) & VIRTIO_BLK_F_FLUSH, 0);
    assert_eq!(
        g.status(),
        STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_DRIVER_OK
    );
    // Device config at 20 (no MSI-X): capacity in sectors, byte by byte as Linux reads it.
    let capacity: Vec<u8> = (0..8).map(|i| g.io_read(20 + i, 1) as u8).collect();
    assert_eq!(
        u64::from_le_bytes(capacity.try_into().unwrap()),
        BLK_IMAGE_SIZE / 512
    );

    // A guest write lands in the image file.
    let data = pattern(4096, 3);
    g.put(DATA, &data);
    assert_eq!(
        g.blk_request(VIRTIO_BLK_T_OUT, 8, 4096),
        (VIRTIO_BLK_S_OK, 1)
    );
    let image = std::fs::File::open(blk_image(&d.0, 1)).unwrap();
    let mut stored = vec![0u8; 4096];
    image.read_exact_at(&mut stored, 8 * 512).unwrap();
    assert_eq!(stored, data);

    // Host-written data is read by the guest.
    let host_data = pattern(2048, 99);
    std::fs::OpenOptions::new()
        .write(true)
        .open(blk_image(&d.0, 1))
        .unwrap()
        .write_all_at(&host_data, 100 * 512)
        .unwrap();
    g.put(DATA, &[0u8; 2048]);
    assert_eq!(
        g.blk_request(VIRTIO_BLK_T_IN, 100, 2048),
        (VIRTIO_BLK_S_OK, 2048 + 1)
    );
    assert_eq!(g.get(DATA, 2048), host_data);
    // And what the guest wrote reads back.
    assert_eq!(
        g.blk_request(VIRTIO_BLK_T_IN, 8, 4096),
        (VIRTIO_BLK_S_OK, 4096 + 1)
    );
    assert_eq!(g.get(DATA, 4096), data);
}

#[test]
fn bar0_sizing_shows_the_legacy_io_bar() {
    let d = dir("sizing");
    for (pf, expected) in [
        (EmulatedPf::blk(&d.0, false).unwrap(), 0xffff_ffc1u32),
        (EmulatedPf::net(&d.0, false).unwrap(), 0xffff_ffe1),
    ] {
        let mut g = serve(&pf, &d.0, pf.name(), PROFILE_TRANSITIONAL);
        assert_eq!(g.config_read32(0x10) & 1, 1, "an I/O BAR");
        g.config_write(0x10, &u32::MAX.to_le_bytes());
        assert_eq!(g.config_read32(0x10), expected, "{}", pf.name());
        let info = g.client.region_info(0).unwrap();
        assert_eq!(info.info.size, u64::from(!(expected & !3) + 1));
    }
    // The modern profile has no I/O BAR 0.
    let pf = EmulatedPf::blk(&d.0, false).unwrap();
    let mut g = serve(&pf, &d.0, "modern", PROFILE_MODERN);
    g.config_write(0x10, &u32::MAX.to_le_bytes());
    assert_eq!(g.config_read32(0x10), 0);
}

#[test]
fn available_instances_count_the_unused_vfs() {
    let d = dir("instances");
    let pf = EmulatedPf::net(&d.0, false).unwrap();
    let available = |pf: &EmulatedPf| -> Vec<(String, u32)> {
        pf.profiles()
            .into_iter()
            .map(|p| (p.name, p.available_instances))
            .collect()
    };
    assert_eq!(pf.name(), "virtio-net");
    let all = NUM_VFS as u32;
    assert_eq!(
        available(&pf),
        [
            (PROFILE_TRANSITIONAL.to_string(), all),
            (PROFILE_MODERN.to_string(), all)
        ]
    );
    let g = serve(&pf, &d.0, "net", PROFILE_TRANSITIONAL);
    assert_eq!(available(&pf)[0].1, all - 1);
    drop(g);
}

#[test]
fn garbage_on_the_legacy_bar_is_refused_and_stays_on_its_vf() {
    let d = dir("garbage");
    let pf = EmulatedPf::blk(&d.0, false).unwrap();
    let mut bad = serve(&pf, &d.0, "bad", PROFILE_TRANSITIONAL);
    let mut good = serve(&pf, &d.0, "good", PROFILE_TRANSITIONAL);
    bad.enable_io();
    good.enable_io();
    good.legacy_init();
    bad.legacy_init();

    // Wrong widths: error replies, nothing changes.
    assert!(is_remote_error(bad.try_io_read(0, 2)));
    assert!(is_remote_error(bad.try_io_read(legacy::STATUS.into(), 4)));
    assert!(bad.try_io_write(legacy::QUEUE_SEL.into(), 4, 1).is_err());
    assert!(bad.try_io_write(legacy::STATUS.into(), 2, 0).is_err());
    assert_eq!(bad.io_read(legacy::QUEUE_SEL, 2), 0);
    // Straddling the common registers and the device config, past the end, too wide.
    assert!(is_remote_error(bad.try_io_read(18, 4)));
    assert!(is_remote_error(bad.try_io_read(62, 4)));
    assert!(is_remote_error(bad.try_io_read(64, 1)));
    assert!(is_remote_error(bad.try_io_read(0, 8)));
    assert!(bad.try_io_write(u64::MAX - 1, 2, 0).is_err());
    // Writes to read-only registers are refused by the device.
    assert!(
        bad.try_io_write(legacy::HOST_FEATURES.into(), 4, 0)
            .is_err()
    );
    assert!(bad.try_io_write(legacy::ISR.into(), 1, 0).is_err());
    // The device still works after all that.
    assert_eq!(
        bad.status(),
        STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_DRIVER_OK
    );

    // A queue outside mapped memory: the notification finds nothing mapped, the device
    // sets NEEDS_RESET.
    bad.io_write(legacy::QUEUE_PFN, 4, 0x0007_0000);
    bad.io_write(legacy::QUEUE_NOTIFY, 2, 0);
    assert!(wait_until(|| bad.status() & STATUS_NEEDS_RESET != 0));
    // A queue index that does not exist is ignored.
    bad.io_write(legacy::QUEUE_NOTIFY, 2, 7);

    // The other VF is untouched and serves requests.
    assert_eq!(
        good.status(),
        STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_DRIVER_OK
    );
    let data = pattern(512, 42);
    good.put(DATA, &data);
    assert_eq!(
        good.blk_request(VIRTIO_BLK_T_OUT, 0, 512),
        (VIRTIO_BLK_S_OK, 1)
    );
    let mut stored = vec![0u8; 512];
    std::fs::File::open(blk_image(&d.0, 2))
        .unwrap()
        .read_exact_at(&mut stored, 0)
        .unwrap();
    assert_eq!(stored, data);
    std::fs::File::open(blk_image(&d.0, 1))
        .unwrap()
        .read_exact_at(&mut stored, 0)
        .unwrap();
    assert_eq!(stored, vec![0u8; 512], "nothing reached the bad VF's image");

    // A reset (STATUS 0) recovers the bad VF.
    bad.io_write(legacy::STATUS, 1, 0);
    assert_eq!(bad.status(), 0);
    bad.legacy_init();
    assert_eq!(
        bad.blk_request(VIRTIO_BLK_T_IN, 0, 512),
        (VIRTIO_BLK_S_OK, 513)
    );
}

#[test]
fn legacy_net_exchanges_frames_with_the_host_socket() {
    let d = dir("net");
    let pf = EmulatedPf::net(&d.0, false).unwrap();
    let mut g = serve(&pf, &d.0, "net", PROFILE_TRANSITIONAL);
    g.enable_io();
    let mac: Vec<u8> = {
        g.io_write(legacy::STATUS, 1, 0);
        (0..6).map(|i| g.io_read(20 + i, 1) as u8).collect()
    };
    assert_eq!(mac, net_mac(1));
    // The host connects to the VF's socket from a bound socket of its own.
    let host_path = d.0.join("host.sock");
    let host = UnixDatagram::bind(&host_path).unwrap();
    host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    host.connect(net_socket(&d.0, 1)).unwrap();
    host.send(b"host to guest").unwrap();

    g.legacy_init();
    // Queue 0 (receive) is at QUEUE_PFN; queue 1 (transmit) three pages further.
    let tx_pfn = QUEUE_PFN + 3;
    g.io_write(legacy::QUEUE_SEL, 2, 1);
    g.io_write(legacy::QUEUE_PFN, 4, tx_pfn.into());
    // Receive: one 2 KiB buffer; the poller delivers the frame behind a 10-byte header.
    g.desc(0, DATA, 2048, 2, 0);
    let avail = GUEST_BASE + 16 * u64::from(QUEUE_SIZE);
    g.put(avail + 4, &0u16.to_le_bytes());
    g.put(avail + 2, &1u16.to_le_bytes());
    g.io_write(legacy::QUEUE_NOTIFY, 2, 0);
    let used = GUEST_BASE + 0x2000;
    let mut received = false;
    for _ in 0..500 {
        if g.get(used + 2, 2) == [1, 0] {
            received = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(received, "the host frame reached the receive queue");
    assert_eq!(g.get(used + 8, 4), (10u32 + 13).to_le_bytes());
    assert_eq!(g.get(DATA + 10, 13), b"host to guest");

    // Transmit: header and frame in one buffer; the frame goes to the host's socket.
    let tx = u64::from(tx_pfn) << 12;
    let mut packet = vec![0u8; 10];
    packet.extend_from_slice(b"guest to host");
    g.put(HEADER, &packet);
    let mut d0 = Vec::new();
    d0.extend_from_slice(&HEADER.to_le_bytes());
    d0.extend_from_slice(&(packet.len() as u32).to_le_bytes());
    d0.extend_from_slice(&[0; 4]);
    g.put(tx, &d0);
    let tx_avail = tx + 16 * u64::from(QUEUE_SIZE);
    g.put(tx_avail + 4, &0u16.to_le_bytes());
    g.put(tx_avail + 2, &1u16.to_le_bytes());
    g.io_write(legacy::QUEUE_NOTIFY, 2, 1);
    let mut buffer = [0u8; 64];
    let n = host.recv(&mut buffer).unwrap();
    assert_eq!(&buffer[..n], b"guest to host");
}

/// In-flight request `n` (1..8): descriptors 3n..3n+2, its own header, sector and status.
fn in_flight_write(g: &mut Guest, n: u16, sector: u64, data: &[u8]) {
    let at = u64::from(n);
    let header = GUEST_BASE + 0x9000 + 0x20 * at;
    let buffer = GUEST_BASE + 0xa000 + 0x200 * at;
    let status = GUEST_BASE + 0x9800 + at;
    let mut h = VIRTIO_BLK_T_OUT.to_le_bytes().to_vec();
    h.extend_from_slice(&[0; 4]);
    h.extend_from_slice(&sector.to_le_bytes());
    g.put(header, &h);
    g.put(buffer, data);
    g.put(status, &[0xff]);
    g.desc(3 * n, header, 16, 1, 3 * n + 1);
    g.desc(3 * n + 1, buffer, data.len() as u32, 1, 3 * n + 2);
    g.desc(3 * n + 2, status, 1, 2, 0);
    let avail = GUEST_BASE + 16 * u64::from(QUEUE_SIZE);
    let slot = u64::from(g.avail_idx % QUEUE_SIZE);
    g.put(avail + 4 + 2 * slot, &(3 * n).to_le_bytes());
    g.avail_idx = g.avail_idx.wrapping_add(1);
    g.put(avail + 2, &g.avail_idx.to_le_bytes());
    g.io_write(legacy::QUEUE_NOTIFY, 2, 0);
}

fn used_idx(g: &Guest) -> u16 {
    let idx = g.get(GUEST_BASE + 0x2000 + 2, 2);
    u16::from_le_bytes([idx[0], idx[1]])
}

#[test]
fn blk_vf_migrates_to_another_pf_with_requests_in_flight() {
    let a = dir("migrate-source");
    let b = dir("migrate-destination");
    let pf_a = EmulatedPf::blk(&a.0, false).unwrap();
    let mut src = serve(&pf_a, &a.0, "blk", PROFILE_TRANSITIONAL);
    src.enable_io();
    src.legacy_init();
    src.put(DATA, &pattern(512, 1));
    assert_eq!(
        src.blk_request(VIRTIO_BLK_T_OUT, 0, 512),
        (VIRTIO_BLK_S_OK, 1)
    );

    // Stopped, the VF takes notifications but processes nothing.
    src.client
        .set_mig_state(MigrationState::RunningP2p)
        .unwrap();
    in_flight_write(&mut src, 1, 1, &pattern(512, 2));
    in_flight_write(&mut src, 2, 2, &pattern(512, 3));
    assert_eq!(used_idx(&src), 1);
    src.client.set_mig_state(MigrationState::StopCopy).unwrap();
    let mut stream = Vec::new();
    loop {
        let chunk = src.client.mig_data_read(4096).unwrap();
        let n = chunk.len();
        stream.extend_from_slice(&chunk);
        if n < 4096 {
            break;
        }
    }
    src.client.set_mig_state(MigrationState::Stop).unwrap();

    // The disk and the guest's memory move; the destination PF has its own image file.
    std::fs::copy(blk_image(&a.0, 1), blk_image(&b.0, 1)).unwrap();
    let pf_b = EmulatedPf::blk(&b.0, false).unwrap();
    let mut dst = serve(&pf_b, &b.0, "blk", PROFILE_TRANSITIONAL);
    dst.put(GUEST_BASE, &src.get(GUEST_BASE, GUEST_SIZE as usize));
    dst.client.set_mig_state(MigrationState::Resuming).unwrap();
    dst.client.mig_data_write(&stream).unwrap();
    dst.client.set_mig_state(MigrationState::Running).unwrap();

    // The in-flight writes completed on the destination, once.
    assert!(wait_until(|| used_idx(&dst) == 3));
    assert_eq!(dst.get(GUEST_BASE + 0x9800 + 1, 2), [VIRTIO_BLK_S_OK; 2]);
    let sector = |dir: &Path, sector: u64| {
        let mut data = vec![0u8; 512];
        std::fs::File::open(blk_image(dir, 1))
            .unwrap()
            .read_exact_at(&mut data, sector * 512)
            .unwrap();
        data
    };
    assert_eq!(sector(&b.0, 1), pattern(512, 2));
    assert_eq!(sector(&b.0, 2), pattern(512, 3));
    assert_eq!(sector(&a.0, 1), vec![0; 512]);
    assert_eq!(sector(&a.0, 2), vec![0; 512]);

    // The VMM restores config space (I/O decoding); the driver goes on on the destination.
    dst.enable_io();
    assert_eq!(
        dst.status(),
        STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_DRIVER_OK
    );
    dst.avail_idx = src.avail_idx;
    dst.last_used = src.last_used.wrapping_add(2);
    dst.put(DATA, &[0; 512]);
    assert_eq!(
        dst.blk_request(VIRTIO_BLK_T_IN, 2, 512),
        (VIRTIO_BLK_S_OK, 513)
    );
    assert_eq!(dst.get(DATA, 512), pattern(512, 3));
}
