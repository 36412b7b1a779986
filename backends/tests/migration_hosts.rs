//! Live migration between two hosts: two `vfio-variant serve` processes in two network
//! namespaces joined by a veth pair, sharing the virtio-blk image as two hosts share storage.
//! A test VMM drives the source's transitional virtio-blk VF with a legacy driver that keeps
//! writes in flight from its own "vCPU" thread; the VMM migrates the VF over TLS (certificates
//! on both sides, made for the test) to a VMM on the other host mid-I/O and the writes go on there. Afterwards every acknowledged write is in
//! the image, every request completed exactly once, and the guest-visible config space is
//! the same. A destination with another layout and a link cut mid-stream are refused, and the
//! source keeps running.
//!
//! Needs root (network namespaces, `ip`): `cargo xtask ci` runs it with `--ignored`.

use std::collections::BTreeSet;
use std::io::{self, Read, Write};
use std::net::TcpListener;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vfio_variant::migration::MigrationState;
use vfio_variant::migration_driver::tls::{self, TlsFiles};
use vfio_variant::migration_driver::{
    MigrateError, Options, RemoteDestination, Served, migrate, serve_destination,
};
use vfio_variant::vfio_user::client::{Client, ClientOptions};

mod common;

use common::pki::Ca;
use common::vmm::{
    BLOCK, DISK_BLOCKS, Driver, Shared, SourceVmm, Vcpu, block, config_space, memfd,
};

const BIN: &str = env!("CARGO_BIN_EXE_vfio-variant");

/// The two hosts' addresses on the veth link.
const SOURCE_IP: &str = "10.99.0.1";
const DESTINATION_IP: &str = "10.99.0.2";

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
            .env("VFIO_VARIANT_LOG", "warn")
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
        let client = loop {
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
        Shared::attach(client, memory)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The two VMMs' certificates, signed by one CA.
struct Keys {
    source: TlsFiles,
    destination: TlsFiles,
    /// A source certificate signed by another CA.
    impostor: TlsFiles,
}

impl Keys {
    fn new(dir: &Path) -> Self {
        let ca = Ca::new(dir, "migration");
        let rogue = Ca::new(dir, "rogue");
        Self {
            source: ca.issue("source", &[SOURCE_IP], &ca),
            destination: ca.issue("destination", &[DESTINATION_IP], &ca),
            impostor: rogue.issue("impostor", &[SOURCE_IP], &ca),
        }
    }

    /// The source VMM's authenticated link to `address`.
    fn connect(&self, address: &str) -> tls::SourceLink {
        tls::connect(
            address,
            None,
            tls::source_config(&self.source).unwrap(),
            Some(Duration::from_secs(30)),
        )
        .unwrap()
    }
}

/// A link that breaks after `left` bytes of messages.
struct Cut {
    inner: tls::SourceLink,
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
            self.inner.sock.shutdown(std::net::Shutdown::Both)?;
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

/// The destination VMM: accepts one migration on the other host into `device`, from a source
/// authenticated by the CA of `keys`.
fn destination_vmm(
    hosts: &Arc<Hosts>,
    keys: &Keys,
    device: Shared,
) -> (String, JoinHandle<Result<Served, String>>) {
    let (tx, rx) = std::sync::mpsc::channel();
    let hosts = Arc::clone(hosts);
    let config = tls::destination_config(&keys.destination).unwrap();
    let thread = std::thread::spawn(move || {
        hosts.enter(1);
        let listener = TcpListener::bind((DESTINATION_IP, 0)).unwrap();
        tx.send(listener.local_addr().unwrap().to_string()).unwrap();
        let (stream, peer) = listener.accept().map_err(|e| e.to_string())?;
        assert!(peer.ip().to_string() == SOURCE_IP, "over the veth link");
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .map_err(|e| e.to_string())?;
        let mut link = tls::accept(stream, config).map_err(|e| e.to_string())?;
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

fn image_block(image: &Path, at: u32) -> Vec<u8> {
    let mut data = vec![0u8; BLOCK];
    std::fs::File::open(image)
        .unwrap()
        .read_exact_at(&mut data, u64::from(at) * BLOCK as u64)
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
    let keys = Arc::new(Keys::new(&top.join("keys")));
    let source = Server::start(&hosts, 0, &top.join("source"), &image);
    let destination = Server::start(&hosts, 1, &top.join("destination"), &image);

    let source_memory = memfd();
    let device = source.attach("blk0", &source_memory);
    let driver = Driver::init(device.clone(), source_memory);
    let vcpu = Vcpu::start(driver);
    std::thread::sleep(Duration::from_millis(200));

    // 0. A source whose certificate another CA signed is refused at the handshake: the
    // destination function is never opened, the source goes on running.
    let untouched_memory = memfd();
    let untouched = destination.attach("blk0", &untouched_memory);
    let (address, served) = destination_vmm(&hosts, &keys, untouched.clone());
    let mut source_device = device.clone();
    let source_keys = Arc::clone(&keys);
    let error = on_source(&hosts, move || {
        let config = tls::source_config(&source_keys.impostor).unwrap();
        match tls::connect(&address, None, config, Some(Duration::from_secs(30))) {
            Ok(link) => migrate(
                &mut source_device,
                &mut RemoteDestination::new(link, "blk0"),
                &Options::default(),
                &mut (),
            )
            .map(|_| ())
            .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        }
        .unwrap_err()
    });
    let refused = served.join().unwrap().unwrap_err();
    assert!(refused.contains("TLS handshake"), "{refused} / {error}");
    assert_eq!(
        device.0.lock().mig_state().unwrap(),
        MigrationState::Running
    );
    assert_eq!(
        untouched.0.lock().mig_state().unwrap(),
        MigrationState::Running
    );
    drop(untouched);

    // 1. A destination with another layout (the modern profile) refuses the stream; the
    // source goes on running with the vCPU writing.
    let refused_memory = memfd();
    let modern = destination.attach("blk-modern", &refused_memory);
    let (address, served) = destination_vmm(&hosts, &keys, modern.clone());
    let mut source_device = device.clone();
    let source_keys = Arc::clone(&keys);
    let error = on_source(&hosts, move || {
        let link = source_keys.connect(&address);
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
    let (address, served) = destination_vmm(&hosts, &keys, target.clone());
    let mut source_device = device.clone();
    let source_keys = Arc::clone(&keys);
    let error = on_source(&hosts, move || {
        let link = Cut {
            inner: source_keys.connect(&address),
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
    let (address, served) = destination_vmm(&hosts, &keys, target.clone());
    let mut vmm = SourceVmm {
        vcpu: Some(vcpu),
        driver: None,
        destination_memory: destination_memory.try_clone().unwrap(),
        config: Vec::new(),
    };
    let mut source_device = device.clone();
    let source_keys = Arc::clone(&keys);
    let (report, mut vmm) = on_source(&hosts, move || {
        let link = source_keys.connect(&address);
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
    driver.drain();
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
    // The latest write of each block is in the image (the driver wraps around the disk).
    let first = driver.next_seq.saturating_sub(DISK_BLOCKS);
    for seq in first..driver.next_seq {
        let at = seq % DISK_BLOCKS;
        assert!(
            image_block(&image, at) == block(seq),
            "write {seq} in block {at}"
        );
    }
    if driver.next_seq < DISK_BLOCKS {
        assert!(
            image_block(&image, driver.next_seq).iter().all(|b| *b == 0),
            "nothing past the last request"
        );
    }
    drop((hosts, source, destination));
    let _ = std::fs::remove_dir_all(&top);
}
