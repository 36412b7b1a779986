//! Live migration between two hosts: two `vfio-variant serve` processes in two network
//! namespaces joined by a veth pair, sharing the virtio-blk image as two hosts share storage.
//! A test VMM drives the source's transitional virtio-blk VF with a legacy driver that keeps
//! writes in flight from its own "vCPU" thread; the VMM migrates the VF over TCP to a VMM on
//! the other host mid-I/O and the writes go on there. Afterwards every acknowledged write is in
//! the image, every request completed exactly once, and the guest-visible config space is
//! the same. A destination with another layout and a link cut mid-stream are refused, and the
//! source keeps running.
//!
//! Needs root (network namespaces, `ip`): `cargo xtask ci` runs it with `--ignored`.

use std::collections::BTreeSet;
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use vfio_variant::migrate::{
    DeviceError, MigratableDevice, MigrateError, Observer, Options, RemoteDestination, Served,
    migrate, serve_destination,
};
use vfio_variant::migration::{MigrationFlags, MigrationState};
use vfio_variant::vfio_user::client::{Client, ClientOptions};
use vfio_variant::vfio_user::dma::{DmaMap, DmaMapFlags};
use vfio_variant_virtio_legacy::hw::blk::{VIRTIO_BLK_S_OK, VIRTIO_BLK_T_OUT};
use vfio_variant_virtio_legacy::hw::transport::legacy;
use vfio_variant_virtio_legacy::hw::{STATUS_ACKNOWLEDGE, STATUS_DRIVER, STATUS_DRIVER_OK};

const BIN: &str = env!("CARGO_BIN_EXE_vfio-variant");

/// The two hosts' addresses on the veth link.
const SOURCE_IP: &str = "10.99.0.1";
const DESTINATION_IP: &str = "10.99.0.2";

/// Guest memory: 1 MiB at this IOVA; the queue in its first three pages.
const GUEST_BASE: u64 = 0x10_0000;
const GUEST_SIZE: u64 = 1 << 20;
const QUEUE_SIZE: u16 = 256;
const USED: u64 = GUEST_BASE + 0x2000;
/// Per-slot request headers, status bytes and 4 KiB data buffers.
const HEADERS: u64 = GUEST_BASE + 0x4000;
const STATUSES: u64 = GUEST_BASE + 0x5000;
const DATA: u64 = GUEST_BASE + 0x10_000;
/// Requests a driver keeps in flight.
const SLOTS: usize = 8;
/// Each write is one 4 KiB block: request `seq` writes block `seq`.
const BLOCK: usize = 4096;

fn run(command: &mut Command) {
    let status = command.status().unwrap();
    assert!(status.success(), "{command:?}: {status}");
}

/// Two network namespaces with a veth pair between them.
struct Hosts {
    names: [String; 2],
}

impl Hosts {
    fn new() -> Self {
        let id = std::process::id();
        let names = [format!("vv-src-{id}"), format!("vv-dst-{id}")];
        for name in &names {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
            run(Command::new("ip").args(["netns", "add", name]));
            run(Command::new("ip").args(["-n", name, "link", "set", "lo", "up"]));
        }
        let (a, b) = (format!("vvs{id}"), format!("vvd{id}"));
        run(Command::new("ip").args(["link", "add", &a, "type", "veth", "peer", "name", &b]));
        for ((link, ns), ip) in [(&a, &names[0]), (&b, &names[1])]
            .into_iter()
            .zip([SOURCE_IP, DESTINATION_IP])
        {
            run(Command::new("ip").args(["link", "set", link, "netns", ns]));
            run(Command::new("ip").args([
                "-n",
                ns,
                "addr",
                "add",
                &format!("{ip}/24"),
                "dev",
                link,
            ]));
            run(Command::new("ip").args(["-n", ns, "link", "set", link, "up"]));
        }
        Self { names }
    }

    /// Moves the calling thread into host `index`'s network namespace.
    fn enter(&self, index: usize) {
        let path = format!("/run/netns/{}", self.names[index]);
        let ns = std::fs::File::open(&path).unwrap();
        rustix::thread::move_into_link_name_space(
            ns.as_fd(),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )
        .unwrap();
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for name in &self.names {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}

/// A `vfio-variant serve` in one host's namespace, with a transitional virtio-blk VF `blk0`
/// and a modern one `blk-modern` (another layout).
struct Server {
    dir: PathBuf,
    child: Child,
}

impl Server {
    fn start(hosts: &Hosts, index: usize, dir: &Path, image: &Path) -> Self {
        let files = dir.join("virtio");
        std::fs::create_dir_all(&files).unwrap();
        // Shared storage: both hosts' VF 1 disk is the same file.
        let disk = files.join("virtio-blk-vf1.img");
        if !disk.exists() {
            std::os::unix::fs::symlink(image, &disk).unwrap();
        }
        std::fs::write(
            dir.join("serve.toml"),
            "[[function]]\nname = \"blk0\"\nbackend = \"virtio-blk\"\nprofile = \"transitional\"\n\n\
             [[function]]\nname = \"blk-modern\"\nbackend = \"virtio-blk\"\nprofile = \"modern\"\n",
        )
        .unwrap();
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &hosts.names[index],
                BIN,
                "serve",
                "--no-autostart",
            ])
            .arg("--config")
            .arg(dir.join("serve.toml"))
            .arg("--run-dir")
            .arg(dir.join("run"))
            .arg("--state-dir")
            .arg(dir.join("state"))
            .env("VFIO_VARIANT_VIRTIO_DIR", &files)
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let server = Self {
            dir: dir.to_path_buf(),
            child,
        };
        for name in ["blk0", "blk-modern"] {
            let deadline = Instant::now() + Duration::from_secs(30);
            while !server.socket(name).exists() {
                assert!(Instant::now() < deadline, "no socket for {name}");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        server
    }

    fn socket(&self, name: &str) -> PathBuf {
        self.dir.join(format!("run/{name}.sock"))
    }

    /// A VMM's connection to `name`, with `memory` mapped as guest RAM.
    fn attach(&self, name: &str, memory: &OwnedFd) -> Shared {
        // The server takes one client at a time: the last one may still be on its way out.
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut client = loop {
            let options = ClientOptions {
                timeout: Some(Duration::from_secs(20)),
                ..ClientOptions::default()
            };
            match Client::connect_with(self.socket(name), options) {
                Ok(client) => break client,
                Err(e) if Instant::now() > deadline => panic!("{name}: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        let map = DmaMap::new(
            GUEST_BASE,
            GUEST_SIZE,
            0,
            DmaMapFlags::READ | DmaMapFlags::WRITE,
        );
        client.dma_map(&map, Some(memory.as_fd())).unwrap();
        Shared(Arc::new(Mutex::new(client)))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A VMM's one connection to its function, shared by its vCPU and its migration driver.
#[derive(Clone)]
struct Shared(Arc<Mutex<Client>>);

impl MigratableDevice for Shared {
    fn flags(&mut self) -> Result<MigrationFlags, DeviceError> {
        self.0.lock().flags()
    }
    fn set_state(&mut self, state: MigrationState) -> Result<(), DeviceError> {
        self.0.lock().set_state(state)
    }
    fn read(&mut self, max: u32) -> Result<Vec<u8>, DeviceError> {
        MigratableDevice::read(&mut *self.0.lock(), max)
    }
    fn write(&mut self, data: &[u8]) -> Result<(), DeviceError> {
        MigratableDevice::write(&mut *self.0.lock(), data)
    }
    fn chunk_size(&self) -> u32 {
        self.0.lock().chunk_size()
    }
    fn recover(&mut self) -> Result<(), DeviceError> {
        self.0.lock().recover()
    }
}

fn memfd() -> OwnedFd {
    let fd = rustix::fs::memfd_create("guest", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
    rustix::fs::ftruncate(&fd, GUEST_SIZE).unwrap();
    fd
}

fn block(seq: u32) -> Vec<u8> {
    let mut data = vec![0u8; BLOCK];
    for (i, chunk) in data.chunks_mut(8).enumerate() {
        chunk.copy_from_slice(&(u64::from(seq) << 32 | i as u64).to_le_bytes());
    }
    data
}

/// The guest's legacy virtio-blk driver: one queue, [`SLOTS`] writes in flight, completions
/// polled from the used ring. Its state is what a VMM carries to the destination in guest
/// memory and vCPU state.
struct Driver {
    device: Shared,
    memory: OwnedFd,
    avail_idx: u16,
    last_used: u16,
    /// Sequence number of the request in each slot.
    slots: [Option<u32>; SLOTS],
    next_seq: u32,
    acked: Vec<u32>,
}

impl Driver {
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

    fn io_write(&self, offset: u8, len: usize, value: u64) {
        self.device
            .0
            .lock()
            .region_write(0, offset.into(), &value.to_le_bytes()[..len])
            .unwrap();
    }

    /// Linux's legacy initialization: reset, ACKNOWLEDGE, DRIVER, features, queue 0, DRIVER_OK.
    fn init(device: Shared, memory: OwnedFd) -> Self {
        device.0.lock().region_write(7, 4, &[0x05, 0x00]).unwrap();
        let driver = Self {
            device,
            memory,
            avail_idx: 0,
            last_used: 0,
            slots: [None; SLOTS],
            next_seq: 0,
            acked: Vec::new(),
        };
        driver.io_write(legacy::STATUS, 1, 0);
        driver.io_write(legacy::STATUS, 1, STATUS_ACKNOWLEDGE.into());
        driver.io_write(
            legacy::STATUS,
            1,
            (STATUS_ACKNOWLEDGE | STATUS_DRIVER).into(),
        );
        driver.io_write(legacy::GUEST_FEATURES, 4, 0);
        driver.io_write(legacy::QUEUE_SEL, 2, 0);
        driver.put(GUEST_BASE, &[0u8; 0x3000]);
        driver.io_write(legacy::QUEUE_PFN, 4, GUEST_BASE >> 12);
        let ok = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_DRIVER_OK;
        driver.io_write(legacy::STATUS, 1, ok.into());
        driver
    }

    fn desc(&self, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let mut d = addr.to_le_bytes().to_vec();
        d.extend_from_slice(&len.to_le_bytes());
        d.extend_from_slice(&flags.to_le_bytes());
        d.extend_from_slice(&next.to_le_bytes());
        self.put(GUEST_BASE + 16 * u64::from(index), &d);
    }

    /// Publishes the next write in a free slot and notifies; false when all slots are busy.
    fn submit(&mut self) -> bool {
        let Some(slot) = self.slots.iter().position(Option::is_none) else {
            return false;
        };
        let seq = self.next_seq;
        self.next_seq += 1;
        let (header, status, data) = (
            HEADERS + 16 * slot as u64,
            STATUSES + slot as u64,
            DATA + (BLOCK * slot) as u64,
        );
        let mut h = VIRTIO_BLK_T_OUT.to_le_bytes().to_vec();
        h.extend_from_slice(&0u32.to_le_bytes());
        h.extend_from_slice(&(u64::from(seq) * (BLOCK as u64 / 512)).to_le_bytes());
        self.put(header, &h);
        self.put(status, &[0xff]);
        self.put(data, &block(seq));
        let head = 3 * slot as u16;
        self.desc(head, header, 16, 1, head + 1);
        self.desc(head + 1, data, BLOCK as u32, 1, head + 2);
        self.desc(head + 2, status, 1, 2, 0);
        let avail = GUEST_BASE + 16 * u64::from(QUEUE_SIZE);
        let ring = avail + 4 + 2 * u64::from(self.avail_idx % QUEUE_SIZE);
        self.put(ring, &head.to_le_bytes());
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.put(avail + 2, &self.avail_idx.to_le_bytes());
        self.slots[slot] = Some(seq);
        self.io_write(legacy::QUEUE_NOTIFY, 2, 0);
        true
    }

    /// Takes the completions the device published; each must be of a request in flight.
    fn poll(&mut self) {
        let idx = self.get(USED + 2, 2);
        let used = u16::from_le_bytes([idx[0], idx[1]]);
        while self.last_used != used {
            let at = USED + 4 + 8 * u64::from(self.last_used % QUEUE_SIZE);
            let element = self.get(at, 8);
            let head = u32::from_le_bytes([element[0], element[1], element[2], element[3]]);
            let slot = head as usize / 3;
            let seq = self.slots[slot]
                .take()
                .unwrap_or_else(|| panic!("a completion of head {head}, not in flight"));
            assert_eq!(
                self.get(STATUSES + slot as u64, 1)[0],
                VIRTIO_BLK_S_OK,
                "write {seq}"
            );
            self.acked.push(seq);
            self.last_used = self.last_used.wrapping_add(1);
        }
    }

    fn in_flight(&self) -> usize {
        self.slots.iter().flatten().count()
    }
}

/// The vCPU: submits and polls until told to stop, then hands the driver back.
struct Vcpu {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Driver>,
}

impl Vcpu {
    fn start(mut driver: Driver) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::SeqCst) {
                driver.submit();
                driver.poll();
            }
            driver
        });
        Self { stop, thread }
    }

    fn pause(self) -> Driver {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().unwrap()
    }
}

/// The source VMM's side of the move: pause the vCPU once the device is stopped, and copy
/// guest memory to the destination VMM's.
struct SourceVmm {
    vcpu: Option<Vcpu>,
    driver: Option<Driver>,
    destination_memory: OwnedFd,
    /// The source's config space once stopped.
    config: Vec<u8>,
}

impl Observer for SourceVmm {
    fn source_stopped(&mut self) -> Result<(), String> {
        let driver = self.vcpu.take().ok_or("no vCPU")?.pause();
        self.config = config_space(&driver.device);
        let mut ram = vec![0u8; GUEST_SIZE as usize];
        rustix::io::pread(&driver.memory, &mut ram, 0).map_err(|e| e.to_string())?;
        rustix::io::pwrite(&self.destination_memory, &ram, 0).map_err(|e| e.to_string())?;
        self.driver = Some(driver);
        Ok(())
    }
}

/// A link that breaks after `left` bytes.
struct Cut {
    inner: TcpStream,
    left: usize,
}

impl Read for Cut {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf)
    }
}

impl Write for Cut {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.left == 0 {
            self.inner.shutdown(std::net::Shutdown::Both)?;
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        let n = buf.len().min(self.left);
        self.left -= n;
        self.inner.write(&buf[..n])
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// The destination VMM: accepts one migration on the other host into `device`.
fn destination_vmm(
    hosts: &Arc<Hosts>,
    device: Shared,
) -> (String, JoinHandle<Result<Served, String>>) {
    let (tx, rx) = std::sync::mpsc::channel();
    let hosts = Arc::clone(hosts);
    let thread = std::thread::spawn(move || {
        hosts.enter(1);
        let listener = TcpListener::bind((DESTINATION_IP, 0)).unwrap();
        tx.send(listener.local_addr().unwrap().to_string()).unwrap();
        let (mut link, peer) = listener.accept().map_err(|e| e.to_string())?;
        assert!(peer.ip().to_string() == SOURCE_IP, "over the veth link");
        let mut device = Some(device);
        serve_destination(&mut link, |_| device.take().ok_or("busy".to_string()))
            .map_err(|e| e.to_string())
    });
    (rx.recv().unwrap(), thread)
}

/// Runs `f` in a thread inside the source host's namespace.
fn on_source<T: Send + 'static>(hosts: &Arc<Hosts>, f: impl FnOnce() -> T + Send + 'static) -> T {
    let hosts = Arc::clone(hosts);
    std::thread::spawn(move || {
        hosts.enter(0);
        f()
    })
    .join()
    .unwrap()
}

fn config_space(device: &Shared) -> Vec<u8> {
    let mut data = vec![0u8; 256];
    device.0.lock().region_read(7, 0, &mut data).unwrap();
    data
}

fn image_block(image: &Path, seq: u32) -> Vec<u8> {
    let mut data = vec![0u8; BLOCK];
    std::fs::File::open(image)
        .unwrap()
        .read_exact_at(&mut data, u64::from(seq) * BLOCK as u64)
        .unwrap();
    data
}

#[test]
#[ignore = "needs root: network namespaces (cargo xtask ci runs it)"]
fn a_virtio_blk_vf_moves_to_another_host_mid_io() {
    let top = std::env::temp_dir().join(format!("vfio-variant-hosts-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&top);
    std::fs::create_dir_all(&top).unwrap();
    let image = top.join("shared-disk.img");
    std::fs::File::create(&image).unwrap();
    let hosts = Arc::new(Hosts::new());
    let source = Server::start(&hosts, 0, &top.join("source"), &image);
    let destination = Server::start(&hosts, 1, &top.join("destination"), &image);

    let source_memory = memfd();
    let device = source.attach("blk0", &source_memory);
    let driver = Driver::init(device.clone(), source_memory);
    let vcpu = Vcpu::start(driver);
    std::thread::sleep(Duration::from_millis(200));

    // 1. A destination with another layout (the modern profile) refuses the stream; the
    // source goes on running with the vCPU writing.
    let refused_memory = memfd();
    let modern = destination.attach("blk-modern", &refused_memory);
    let (address, served) = destination_vmm(&hosts, modern.clone());
    let mut source_device = device.clone();
    let error = on_source(&hosts, move || {
        let link = TcpStream::connect(&address).unwrap();
        migrate(
            &mut source_device,
            &mut RemoteDestination::new(link, "blk-modern"),
            &Options::default(),
            &mut (),
        )
        .unwrap_err()
    });
    assert!(matches!(error, MigrateError::Destination(_)), "{error}");
    assert!(matches!(served.join().unwrap(), Ok(Served::Refused(_))));
    assert_eq!(
        device.0.lock().mig_state().unwrap(),
        MigrationState::Running
    );
    drop(modern);

    // 2. The link cut mid-stream: the destination refuses what it got, the source resumes.
    let cut_memory = memfd();
    let target = destination.attach("blk0", &cut_memory);
    let (address, served) = destination_vmm(&hosts, target.clone());
    let mut source_device = device.clone();
    let error = on_source(&hosts, move || {
        let link = Cut {
            inner: TcpStream::connect(&address).unwrap(),
            left: 200,
        };
        migrate(
            &mut source_device,
            &mut RemoteDestination::new(link, "blk0"),
            &Options::default(),
            &mut (),
        )
        .unwrap_err()
    });
    assert!(matches!(error, MigrateError::Link(_)), "{error}");
    assert!(
        served.join().unwrap().is_err(),
        "the destination saw the link break"
    );
    assert_eq!(
        device.0.lock().mig_state().unwrap(),
        MigrationState::Running
    );
    assert_eq!(
        target.0.lock().mig_state().unwrap(),
        MigrationState::Running
    );
    drop(target);

    // 3. The move, mid-I/O.
    std::thread::sleep(Duration::from_millis(200));
    let destination_memory = memfd();
    let target = destination.attach("blk0", &destination_memory);
    let (address, served) = destination_vmm(&hosts, target.clone());
    let mut vmm = SourceVmm {
        vcpu: Some(vcpu),
        driver: None,
        destination_memory: destination_memory.try_clone().unwrap(),
        config: Vec::new(),
    };
    let mut source_device = device.clone();
    let (report, mut vmm) = on_source(&hosts, move || {
        let link = TcpStream::connect(&address).unwrap();
        let report = migrate(
            &mut source_device,
            &mut RemoteDestination::new(link, "blk0"),
            &Options::default(),
            &mut vmm,
        );
        (report, vmm)
    });
    let report = report.unwrap();
    assert!(matches!(served.join().unwrap(), Ok(Served::Resumed { .. })));
    assert_eq!(device.0.lock().mig_state().unwrap(), MigrationState::Stop);
    let mut driver = vmm.driver.take().unwrap();
    let in_flight = driver.in_flight();
    let acked_on_source = driver.acked.len();
    eprintln!(
        "migrated mid-I/O: {acked_on_source} writes acknowledged on the source, {in_flight} in \
         flight, {} bytes of device state, downtime {:?}",
        report.bytes(),
        report.downtime
    );
    assert!(acked_on_source > 0, "the source did I/O");

    // The vCPU goes on at the destination: same guest memory contents, the destination's
    // function.
    driver.device = target.clone();
    driver.memory = destination_memory;
    assert_eq!(
        config_space(&target),
        vmm.config,
        "guest-visible config space"
    );
    let vcpu = Vcpu::start(driver);
    std::thread::sleep(Duration::from_millis(300));
    let mut driver = vcpu.pause();
    for _ in 0..1000 {
        if driver.in_flight() == 0 {
            break;
        }
        driver.io_write(legacy::QUEUE_NOTIFY, 2, 0);
        driver.poll();
    }
    assert_eq!(driver.in_flight(), 0, "every write completed");
    assert!(
        driver.acked.len() > acked_on_source,
        "writes went on at the destination"
    );

    // Exactly once: every request was acknowledged once, and its block is in the image.
    let acked: BTreeSet<u32> = driver.acked.iter().copied().collect();
    assert_eq!(
        acked.len(),
        driver.acked.len(),
        "no request completed twice"
    );
    assert_eq!(
        acked,
        (0..driver.next_seq).collect(),
        "every request completed"
    );
    for seq in 0..driver.next_seq {
        assert!(
            image_block(&image, seq) == block(seq),
            "block {seq} in the image"
        );
    }
    assert!(
        image_block(&image, driver.next_seq).iter().all(|b| *b == 0),
        "nothing past the last request"
    );
    drop((hosts, source, destination));
    let _ = std::fs::remove_dir_all(&top);
}
