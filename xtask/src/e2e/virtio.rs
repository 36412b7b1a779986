//! The virtio part of `cargo xtask e2e`: the transitional virtio-blk VF of `vfio-variant serve`
//! (its embedded default's `virtio-blk0`) under an unmodified guest kernel.
//!
//! Starts its own server (files of the emulated virtio PFs in a directory given with
//! `VFIO_VARIANT_VIRTIO_DIR`, log level `debug` unless `VFIO_VARIANT_LOG` says otherwise) and
//! boots three guests on `virtio-blk0` behind a `pcie-root-port`: the first with
//! `virtio_pci.force_legacy=1` (the legacy path: the I/O BAR, whose registers the server turns
//! into admin commands on the emulated PF) and QEMU's default private RAM (reached by
//! DMA_READ/DMA_WRITE messages; QUEUE_NOTIFY is an I/O write the vCPU waits for), the second
//! without (the modern path) and with RAM in a shared memfd, the third on the modern path with
//! private RAM. In each
//! boot the guest's `/init` (`virtio/init.sh`) writes a pattern to `/dev/vda` with `dd`, reads
//! it back, and reads a block the host wrote into the image before the boot; the host checks:
//!
//! - the function is the transitional virtio-blk (1af4:1001, revision 0) with an I/O BAR 0,
//!   bound to `virtio-pci`, and the negotiated features lack VIRTIO_F_VERSION_1 on the legacy
//!   path and have it on the modern one; the disk has the image's size;
//! - the guest's checksums of what it wrote and what it read back agree, and the image file
//!   holds the guest's pattern at the offset it wrote to;
//! - the guest reads what the host wrote (its first line and its checksum);
//! - the embedded default's mlx-style VF (`mlx0`, attached beside them, no driver binds it)
//!   shows the guest its instance type's config space (catalog/mlx-vf.toml), not the
//!   hardware's.
//!
//! Any failure shows the guest console, QEMU's standard error and the server's log.

use std::fs;
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::chroot::Kernel;
use super::guest::{Console, Guest, GuestError};
use super::initramfs::Initramfs;
use super::server::checks::{Layout, compare_config, decode_hex};
use super::server::compile_layout_file;

/// The guest's `/init`.
const INIT: &str = include_str!("virtio/init.sh");

/// The function the embedded default serves for the virtio-blk PF, and its image (VF 1).
const FUNCTION: &str = "virtio-blk0";
const IMAGE: &str = "virtio-blk-vf1.img";

/// The net function and its socket (VF 1).
const NET_FUNCTION: &str = "virtio-net0";
const NET_SOCKET: &str = "virtio-net-vf1.sock";

/// The host's end of the net VF's link: its MAC and IPv4 address (the guest is 10.0.2.15).
const HOST_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x02];
const HOST_IP: [u8; 4] = [10, 0, 2, 2];
const GUEST_IP: [u8; 4] = [10, 0, 2, 15];
/// The MAC of the net VF (the backend's `net_mac(1)`).
const GUEST_MAC: &str = "52:54:00:56:00:01";

/// The longest the host's end of the net link waits to receive or send one frame.
const LINK_WAIT: Duration = Duration::from_millis(100);

/// Size of the image (the backend's `BLK_IMAGE_SIZE`).
const IMAGE_SIZE: u64 = 64 << 20;

/// How long the server may take to create its sockets.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Block size of the guest's `dd`.
const BLOCK: u64 = 4096;

/// A `vfio-variant serve` of its own, stopped (SIGTERM) and cleaned up on drop (also used by
/// the guest block benchmark, [`super::blkbench`]).
pub struct Server {
    child: Child,
    /// Under the chroot's `/tmp`: `run`, `state`, `files`.
    base: PathBuf,
    log: PathBuf,
}

impl Server {
    /// Starts `binary` serving its embedded default with its directories under the chroot's
    /// `/tmp`, logging at `VFIO_VARIANT_LOG`, or at `level` when that is not set; returns once
    /// the virtio-blk function's socket exists.
    pub fn start(binary: &Path, root: &Path, level: &str) -> Result<Server, String> {
        Self::start_named(binary, root, level, "virtio", None)
    }

    /// As [`Server::start`], with `name` in the names of its directory and log (two servers
    /// with different names run side by side), and, when `shared_image` is given, the
    /// virtio-blk VF's image a symbolic link to it (shared storage, as two hosts have).
    pub fn start_named(
        binary: &Path,
        root: &Path,
        level: &str,
        name: &str,
        shared_image: Option<&Path>,
    ) -> Result<Server, String> {
        let base = root
            .join("tmp")
            .join(format!("vfio-variant-e2e-{name}-{}", std::process::id()));
        if base.exists() {
            fs::remove_dir_all(&base)
                .map_err(|e| format!("cannot remove {}: {e}", base.display()))?;
        }
        for dir in ["run", "state", "files"] {
            let dir = base.join(dir);
            fs::create_dir_all(&dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        if let Some(image) = shared_image {
            let link = base.join("files").join(IMAGE);
            std::os::unix::fs::symlink(image, &link).map_err(|e| {
                format!("cannot link {} to {}: {e}", link.display(), image.display())
            })?;
        }
        let log = std::env::temp_dir().join(format!(
            "vfio-variant-e2e-{name}-server-{}.log",
            std::process::id()
        ));
        let output =
            fs::File::create(&log).map_err(|e| format!("cannot create {}: {e}", log.display()))?;
        let errors = output
            .try_clone()
            .map_err(|e| format!("{}: {e}", log.display()))?;
        let level = std::env::var("VFIO_VARIANT_LOG").unwrap_or_else(|_| level.into());
        let mut command = Command::new(binary);
        command
            .arg("--run-dir")
            .arg(base.join("run"))
            .arg("--state-dir")
            .arg(base.join("state"))
            .arg("serve")
            .env("VFIO_VARIANT_LOG", &level)
            .env("VFIO_VARIANT_VIRTIO_DIR", base.join("files"))
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(output)
            .stderr(errors);
        eprintln!(
            "==> starting a server for {name} (log level {level}, log in {})",
            log.display()
        );
        let child = command
            .spawn()
            .map_err(|e| format!("cannot start {command:?}: {e}"))?;
        let mut server = Server { child, base, log };
        let socket = server.socket();
        let started = Instant::now();
        while !socket.exists() {
            if let Ok(Some(status)) = server.child.try_wait() {
                return Err(format!(
                    "the server exited ({status}) before serving {FUNCTION}\n{}",
                    server.log_text()
                ));
            }
            if started.elapsed() > START_TIMEOUT {
                return Err(format!(
                    "the server did not serve {FUNCTION} within {} s\n{}",
                    START_TIMEOUT.as_secs(),
                    server.log_text()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(server)
    }

    fn socket(&self) -> PathBuf {
        self.base.join("run").join(format!("{FUNCTION}.sock"))
    }

    /// The socket of the function `name`, as a path inside the chroot.
    pub fn function_socket_in_chroot(&self, root: &Path, name: &str) -> Result<String, String> {
        in_chroot(&self.base.join("run").join(format!("{name}.sock")), root)
    }

    /// The virtio-blk VF's image file (on the host).
    pub fn image(&self) -> PathBuf {
        self.base.join("files").join(IMAGE)
    }

    /// The virtio-blk function's socket's path inside the chroot.
    pub fn socket_in_chroot(&self, root: &Path) -> Result<String, String> {
        in_chroot(&self.socket(), root)
    }

    /// The virtio-blk VF's image file's path inside the chroot.
    pub fn image_in_chroot(&self, root: &Path) -> Result<String, String> {
        in_chroot(&self.image(), root)
    }

    /// The server's log, framed, for error messages.
    pub fn log_text(&self) -> String {
        format!(
            "--- server log ({}) ---\n{}\n--- end of server log ---",
            self.log.display(),
            String::from_utf8_lossy(&fs::read(&self.log).unwrap_or_default()).trim_end()
        )
    }

    /// Stops the server with SIGTERM; fails unless it exits 0.
    pub fn stop(&mut self) -> Result<(), String> {
        super::output(
            "send SIGTERM to the server",
            Command::new("kill").args(["-TERM", &self.child.id().to_string()]),
        )?;
        let started = Instant::now();
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) if status.success() => return Ok(()),
                Ok(Some(status)) => return Err(format!("the server exited with {status}")),
                Ok(None) if started.elapsed() < Duration::from_secs(10) => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Ok(None) => return Err("the server did not stop within 10 s".into()),
                Err(e) => return Err(format!("waiting for the server failed: {e}")),
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.base);
    }
}

/// The path of `path` (under `root`) inside the chroot at `root`.
pub(super) fn in_chroot(path: &Path, root: &Path) -> Result<String, String> {
    path.strip_prefix(root)
        .map(|inside| format!("/{}", inside.display()))
        .map_err(|_| format!("{} is not inside {}", path.display(), root.display()))
}

/// One boot: its kernel parameters and the blocks written.
struct Plan {
    boot: u32,
    legacy: bool,
    /// Guest RAM in a shared memfd; else QEMU's default private RAM.
    shared: bool,
    /// The 4 KiB block the guest writes (two blocks from there).
    write: u64,
    /// The 4 KiB block the host wrote before the boot.
    host: u64,
}

impl Plan {
    fn host_pattern(&self) -> (String, Vec<u8>) {
        let line = format!("vfio-variant e2e host pattern boot {}", self.boot);
        let mut block = Vec::with_capacity(BLOCK as usize);
        while block.len() < BLOCK as usize {
            block.extend_from_slice(line.as_bytes());
            block.push(b'\n');
        }
        block.truncate(BLOCK as usize);
        (line, block)
    }

    fn guest_pattern(&self) -> Vec<u8> {
        let line = format!("vfio-variant e2e guest pattern boot {}\n", self.boot);
        let mut block = Vec::with_capacity(2 * BLOCK as usize);
        while block.len() < 2 * BLOCK as usize {
            block.extend_from_slice(line.as_bytes());
        }
        block.truncate(2 * BLOCK as usize);
        block
    }
}

/// Fails with what the guest reported missing (its `error=` lines) in `section`, if anything.
fn guest_errors(console: &Console, section: &str, lines: &[&str]) -> Result<(), GuestError> {
    let errors: Vec<&str> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("error="))
        .collect();
    if errors.is_empty() {
        return Ok(());
    }
    Err(console.error(format!(
        "the guest's `{section}` step: {} (guest kernel {})",
        errors.join("; "),
        console
            .section("info")
            .ok()
            .and_then(|info| value(&info, "kernel").map(str::to_string))
            .unwrap_or_else(|| "unknown".into())
    )))
}

/// `key=value` from a section.
fn value<'a>(lines: &[&'a str], key: &str) -> Option<&'a str> {
    lines
        .iter()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
}

/// The SHA-256 of `data` by the host's `sha256sum`.
fn sha256(data: &[u8]) -> Result<String, String> {
    let path = std::env::temp_dir().join(format!("vfio-variant-e2e-sum-{}", std::process::id()));
    fs::write(&path, data).map_err(|e| format!("{}: {e}", path.display()))?;
    let out = super::output("sha256sum", Command::new("sha256sum").arg(&path));
    let _ = fs::remove_file(&path);
    out?.split_whitespace()
        .next()
        .map(str::to_string)
        .ok_or_else(|| "sha256sum printed nothing".to_string())
}

/// What the host's end of the link saw and answered.
#[derive(Default)]
struct LinkCounts {
    /// Frames received from the guest.
    frames: AtomicUsize,
    /// ARP requests for [`HOST_IP`] answered.
    arp: AtomicUsize,
    /// ICMP echo requests to [`HOST_IP`] answered.
    echo: AtomicUsize,
}

/// The host's end of the net VF's link: a datagram socket talking to the VF's socket, answering
/// ARP and ping for [`HOST_IP`] in a thread until dropped.
struct Link {
    stop: Arc<AtomicBool>,
    counts: Arc<LinkCounts>,
    thread: Option<JoinHandle<()>>,
    path: PathBuf,
}

impl Link {
    fn start(files: &Path) -> Result<Link, String> {
        let path = files.join("host-net.sock");
        let _ = fs::remove_file(&path);
        let socket = UnixDatagram::bind(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let vf = files.join(NET_SOCKET);
        // Bounded both ways: a VF that takes no frames (no driver bound, so no receive
        // buffers) fills the socket, and a blocked send would hang the link thread and the
        // join in `drop` with it.
        socket
            .connect(&vf)
            .and_then(|()| socket.set_read_timeout(Some(LINK_WAIT)))
            .and_then(|()| socket.set_write_timeout(Some(LINK_WAIT)))
            .map_err(|e| format!("{}: {e}", vf.display()))?;
        let stop = Arc::new(AtomicBool::new(false));
        let counts = Arc::new(LinkCounts::default());
        let thread = {
            let (stop, counts) = (Arc::clone(&stop), Arc::clone(&counts));
            thread::Builder::new()
                .name("e2e-net-link".into())
                .spawn(move || serve_link(&socket, &stop, &counts))
                .map_err(|e| format!("cannot start the link thread: {e}"))?
        };
        Ok(Link {
            stop,
            counts,
            thread: Some(thread),
            path,
        })
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        let _ = fs::remove_file(&self.path);
    }
}

/// An ARP request from the host for `GUEST_IP`: it tells the VF where the host is (the VF
/// sends to whoever sent it the last datagram).
fn arp_probe() -> Vec<u8> {
    let mut frame = vec![0xff; 6];
    frame.extend_from_slice(&HOST_MAC);
    frame.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
    frame.extend_from_slice(&HOST_MAC);
    frame.extend_from_slice(&HOST_IP);
    frame.extend_from_slice(&[0; 6]);
    frame.extend_from_slice(&GUEST_IP);
    frame
}

/// The Internet checksum of `data`.
fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The answer to a frame from the guest, if it is an ARP request or a ping for [`HOST_IP`].
fn answer(frame: &[u8], counts: &LinkCounts) -> Option<Vec<u8>> {
    let ethertype = frame.get(12..14)?;
    if ethertype == [0x08, 0x06] {
        let arp = frame.get(14..42)?;
        if arp[6..8] != [0, 1] || arp[24..28] != HOST_IP {
            return None;
        }
        let mut reply = arp[8..14].to_vec();
        reply.extend_from_slice(&HOST_MAC);
        reply.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 2]);
        reply.extend_from_slice(&HOST_MAC);
        reply.extend_from_slice(&HOST_IP);
        reply.extend_from_slice(&arp[8..18]);
        counts.arp.fetch_add(1, Ordering::SeqCst);
        return Some(reply);
    }
    if ethertype != [0x08, 0x00] {
        return None;
    }
    let ihl = usize::from(frame.get(14)? & 0xf) * 4;
    let total = usize::from(u16::from_be_bytes([*frame.get(16)?, *frame.get(17)?]));
    let icmp_at = 14 + ihl;
    if frame.get(23) != Some(&1)
        || frame.get(30..34)? != HOST_IP
        || frame.get(icmp_at) != Some(&8)
        || total < ihl + 8
        || frame.len() < 14 + total
    {
        return None;
    }
    let mut reply = frame[..14 + total].to_vec();
    reply.copy_within(6..12, 0);
    reply[6..12].copy_from_slice(&HOST_MAC);
    let (source, destination) = (frame[26..30].to_vec(), frame[30..34].to_vec());
    reply[26..30].copy_from_slice(&destination);
    reply[30..34].copy_from_slice(&source);
    reply[icmp_at] = 0;
    reply[icmp_at + 2..icmp_at + 4].copy_from_slice(&[0, 0]);
    let sum = checksum(&reply[icmp_at..14 + total]);
    reply[icmp_at + 2..icmp_at + 4].copy_from_slice(&sum.to_be_bytes());
    counts.echo.fetch_add(1, Ordering::SeqCst);
    Some(reply)
}

fn serve_link(socket: &UnixDatagram, stop: &AtomicBool, counts: &LinkCounts) {
    let mut buffer = vec![0u8; 65536];
    let mut last_probe: Option<Instant> = None;
    while !stop.load(Ordering::SeqCst) {
        if counts.frames.load(Ordering::SeqCst) == 0
            && last_probe.is_none_or(|at| at.elapsed() > Duration::from_millis(500))
        {
            // The VF drops what it cannot send, and the guest may not be up yet: probe again.
            let _ = socket.send(&arp_probe());
            last_probe = Some(Instant::now());
        }
        let Ok(n) = socket.recv(&mut buffer) else {
            continue;
        };
        counts.frames.fetch_add(1, Ordering::SeqCst);
        if let Some(reply) = answer(&buffer[..n], counts) {
            let _ = socket.send(&reply);
        }
    }
}

fn check_net(console: &Console, plan: &Plan, counts: &LinkCounts) -> Result<usize, GuestError> {
    let path = if plan.legacy { "legacy" } else { "modern" };
    let net = console.section("net")?;
    guest_errors(console, "net", &net)?;
    let version_1 = value(&net, "features").and_then(|f| f.as_bytes().get(32).copied());
    let received = net
        .iter()
        .any(|l| l.contains("3 packets transmitted, 3 packets received"));
    let (arp, echo) = (
        counts.arp.load(Ordering::SeqCst),
        counts.echo.load(Ordering::SeqCst),
    );
    if value(&net, "driver") != Some("virtio-pci")
        || value(&net, "mac") != Some(GUEST_MAC)
        || version_1 != Some(if plan.legacy { b'0' } else { b'1' })
        || value(&net, "ping") != Some("0")
        || !received
        // The guest may have learned the host's address from the host's own ARP probe, so
        // answering an ARP request is not required; answering the three echoes is.
        || echo < 3
    {
        return Err(console.error(format!(
            "virtio-net on the {path} path: the guest's ping of the host failed (the host \
             answered {arp} ARP and {echo} echo requests, saw {} frames):\n{}",
            counts.frames.load(Ordering::SeqCst),
            net.join("\n")
        )));
    }
    eprintln!(
        "    ok  boot {}: virtio-net on the {path} path: 3 pings answered by the host ({arp} ARP, \
         {echo} echo)",
        plan.boot
    );
    Ok(1)
}

/// The layout the transitional virtio-blk function is exposed with.
const BLK_LAYOUT: &str = "catalog/virtio-blk-transitional.toml";

/// The mlx-style VF of the embedded default, attached beside the virtio functions, and its
/// instance type.
const MLX_FUNCTION: &str = "mlx0";
const MLX_LAYOUT: &str = "catalog/mlx-vf.toml";

/// The mlx-style VF's config space, as the guest reads it (no driver binds it), equals its
/// instance type's layout, not the hardware's.
fn check_mlx(console: &Console, plan: &Plan, layout: &Layout) -> Result<usize, GuestError> {
    let hex: String = console.section("mlx-config")?.concat();
    if hex.is_empty() {
        return Err(console.error("the guest found no 15b3:101e function"));
    }
    let config = decode_hex(&hex)
        .map_err(|e| console.error(format!("the mlx config space the guest printed: {e}")))?;
    let matched = compare_config(&config, layout).map_err(|e| console.error(e))?;
    eprintln!(
        "    ok  boot {}: mlx0: {matched} of {MLX_LAYOUT}",
        plan.boot
    );
    Ok(1)
}

fn check_boot(
    console: &Console,
    plan: &Plan,
    image: &Path,
    layout: &Layout,
) -> Result<usize, GuestError> {
    let path = if plan.legacy { "legacy" } else { "modern" };
    let hex: String = console.section("config")?.concat();
    let config = decode_hex(&hex)
        .map_err(|e| console.error(format!("the config space the guest printed: {e}")))?;
    let matched = compare_config(&config, layout).map_err(|e| console.error(e))?;
    eprintln!("    ok  boot {}: {matched} of {BLK_LAYOUT}", plan.boot);
    let function = console.section("function")?;
    guest_errors(console, "function", &function)?;
    let show = || function.join("\n");
    if value(&function, "id") != Some("0x1af4:0x1001")
        || value(&function, "revision") != Some("0x00")
    {
        return Err(console.error(format!(
            "the guest does not see a transitional virtio-blk (1af4:1001 rev 0):\n{}",
            show()
        )));
    }
    // resource: start end flags; IORESOURCE_IO is 0x100.
    let io_bar = value(&function, "bar0")
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|f| u64::from_str_radix(f.trim_start_matches("0x"), 16).ok())
        .is_some_and(|flags| flags & 0x100 != 0);
    if !io_bar || value(&function, "driver") != Some("virtio-pci") {
        return Err(console.error(format!(
            "BAR 0 is not an I/O BAR or the function is not bound to virtio-pci:\n{}",
            show()
        )));
    }
    let version_1 = value(&function, "features").and_then(|f| f.as_bytes().get(32).copied());
    if version_1 != Some(if plan.legacy { b'0' } else { b'1' }) {
        return Err(console.error(format!(
            "the {path} path should {}negotiate VIRTIO_F_VERSION_1:\n{}",
            if plan.legacy { "not " } else { "" },
            show()
        )));
    }
    let sectors = (IMAGE_SIZE / 512).to_string();
    if value(&function, "disk") != Some(sectors.as_str()) {
        return Err(console.error(format!(
            "/dev/vda is missing or not {sectors} sectors:\n{}",
            show()
        )));
    }
    eprintln!(
        "    ok  boot {}: transitional virtio-blk on the {path} path",
        plan.boot
    );

    let write = console.section("write")?;
    guest_errors(console, "write", &write)?;
    let readback = console.section("readback")?;
    let expected = sha256(&plan.guest_pattern()).map_err(|e| console.error(e))?;
    if value(&write, "status") != Some("0")
        || value(&write, "sum") != Some(expected.as_str())
        || value(&readback, "sum") != Some(expected.as_str())
    {
        return Err(console.error(format!(
            "the guest's write and read-back disagree (expected sum {expected}):\n{}\n{}",
            write.join("\n"),
            readback.join("\n")
        )));
    }
    let mut stored = vec![0u8; 2 * BLOCK as usize];
    fs::File::open(image)
        .and_then(|f| f.read_exact_at(&mut stored, plan.write * BLOCK))
        .map_err(|e| console.error(format!("{}: {e}", image.display())))?;
    if stored != plan.guest_pattern() {
        return Err(console.error(format!(
            "the image does not hold the guest's pattern at {}; it has {:?}...",
            plan.write * BLOCK,
            String::from_utf8_lossy(&stored[..64])
        )));
    }
    eprintln!(
        "    ok  boot {}: the guest's dd reached the image and read back (sha256 {expected})",
        plan.boot
    );

    let host = console.section("host")?;
    let (line, block) = plan.host_pattern();
    let expected = sha256(&block).map_err(|e| console.error(e))?;
    if value(&host, "first") != Some(line.as_str()) || value(&host, "sum") != Some(&expected) {
        return Err(console.error(format!(
            "the guest did not read what the host wrote ({line:?}, sha256 {expected}):\n{}",
            host.join("\n")
        )));
    }
    eprintln!(
        "    ok  boot {}: the guest read the host's block",
        plan.boot
    );
    console.section("done")?;
    Ok(4)
}

/// Starts a server, boots the legacy and the modern guest on its virtio-blk VF, checks, stops
/// the server; returns the number of checks passed.
pub fn run(root: &Path, kernel: &Kernel, label: &str, binary: &Path) -> Result<usize, String> {
    // The PCI transport is a module in some kernels (Debian 12's) and built into others.
    let initrd = Initramfs::new(INIT)
        .module("virtio_pci")
        .module("virtio_blk")
        .module("virtio_net")
        .build(root, kernel)?;
    let mut server = Server::start(binary, root, "debug")?;
    let layout = compile_layout_file(binary, BLK_LAYOUT)?;
    let mlx_layout = compile_layout_file(binary, MLX_LAYOUT)?;
    let outcome = boots(
        root,
        (kernel, label),
        &initrd,
        &server,
        (&layout, &mlx_layout),
    )
    .and_then(|checks| {
        server.stop()?;
        Ok(checks + 1)
    });
    outcome.map_err(|e| format!("{e}\n{}", server.log_text()))
}

fn boots(
    root: &Path,
    (kernel, label): (&Kernel, &str),
    initrd: &str,
    server: &Server,
    (layout, mlx_layout): (&Layout, &Layout),
) -> Result<usize, String> {
    let socket = server.socket_in_chroot(root)?;
    let device = format!(
        r#"{{"driver":"vfio-user-pci","bus":"rp1","socket":{{"path":"{socket}","type":"unix"}}}}"#
    );
    let net_socket = server.function_socket_in_chroot(root, NET_FUNCTION)?;
    let net_device = format!(
        r#"{{"driver":"vfio-user-pci","bus":"rp2","socket":{{"path":"{net_socket}","type":"unix"}}}}"#
    );
    let mlx_socket = server.function_socket_in_chroot(root, MLX_FUNCTION)?;
    let mlx_device = format!(
        r#"{{"driver":"vfio-user-pci","bus":"rp3","socket":{{"path":"{mlx_socket}","type":"unix"}}}}"#
    );
    let mut checks = 0;
    for plan in [
        Plan {
            boot: 1,
            legacy: true,
            shared: false,
            write: 16,
            host: 256,
        },
        Plan {
            boot: 2,
            legacy: false,
            shared: true,
            write: 32,
            host: 512,
        },
        Plan {
            boot: 3,
            legacy: false,
            shared: false,
            write: 48,
            host: 768,
        },
    ] {
        let (_, block) = plan.host_pattern();
        let image = server.image();
        fs::OpenOptions::new()
            .write(true)
            .open(&image)
            .and_then(|f| f.write_all_at(&block, plan.host * BLOCK))
            .map_err(|e| format!("{}: {e}", image.display()))?;
        let mut guest = Guest::new(
            root,
            &format!("e2e-{label}-virtio-{}", plan.boot),
            kernel,
            initrd,
        )
        .append(&format!("e2e.boot={}", plan.boot))
        .append(&format!("e2e.write={}", plan.write))
        .append(&format!("e2e.host={}", plan.host));
        if plan.legacy {
            guest = guest.append("virtio_pci.force_legacy=1");
        }
        let link = Link::start(&server.base.join("files"))?;
        let console = guest
            .args(super::server::ram_args(plan.shared))
            .args([
                "-device",
                "pcie-root-port,id=rp1,bus=pcie.0,chassis=1",
                "-device",
                &device,
                "-device",
                "pcie-root-port,id=rp2,bus=pcie.0,chassis=2",
                "-device",
                &net_device,
                "-device",
                "pcie-root-port,id=rp3,bus=pcie.0,chassis=3",
                "-device",
                &mlx_device,
            ])
            .timeout(Duration::from_secs(180))
            .run()
            .map_err(String::from)?;
        checks += check_boot(&console, &plan, &image, layout).map_err(String::from)?;
        checks += check_net(&console, &plan, &link.counts).map_err(String::from)?;
        checks += check_mlx(&console, &plan, mlx_layout).map_err(String::from)?;
    }
    Ok(checks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_device_fails_with_the_guests_reason() {
        // What a kernel whose virtio_pci module was not loaded prints: the function without a
        // driver and no disk.
        let console = Console::from_text(
            "=== BEGIN info ===\nkernel=6.1.0-48-amd64\n=== END info ===\n\
             === BEGIN function ===\nid=0x1af4:0x1001\ndriver=none\n\
             error=no block device /dev/vda\n=== END function ===\n",
        );
        let function = console.section("function").unwrap();
        let error = guest_errors(&console, "function", &function)
            .unwrap_err()
            .to_string();
        assert!(error.contains("no block device /dev/vda"), "{error}");
        assert!(error.contains("6.1.0-48-amd64"), "{error}");
        let fine = Console::from_text("=== BEGIN net ===\ndriver=virtio-pci\n=== END net ===\n");
        let net = fine.section("net").unwrap();
        assert!(guest_errors(&fine, "net", &net).is_ok());
    }

    #[test]
    fn arp_requests_for_the_host_are_answered() {
        let counts = LinkCounts::default();
        let guest_mac = [0x52, 0x54, 0x00, 0x56, 0x00, 0x01];
        let mut request = vec![0xff; 6];
        request.extend_from_slice(&guest_mac);
        request.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
        request.extend_from_slice(&guest_mac);
        request.extend_from_slice(&GUEST_IP);
        request.extend_from_slice(&[0; 6]);
        request.extend_from_slice(&HOST_IP);
        let reply = answer(&request, &counts).unwrap();
        assert_eq!(&reply[..6], &guest_mac);
        assert_eq!(&reply[20..22], &[0, 2]);
        assert_eq!(&reply[22..28], &HOST_MAC);
        assert_eq!(&reply[28..32], &HOST_IP);
        assert_eq!(&reply[32..38], &guest_mac);
        assert_eq!(&reply[38..42], &GUEST_IP);
        // Not for the host: no answer.
        request[38..42].copy_from_slice(&[10, 0, 2, 3]);
        assert!(answer(&request, &counts).is_none());
        assert_eq!(counts.arp.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn pings_are_answered_with_a_valid_checksum() {
        let counts = LinkCounts::default();
        let mut frame = HOST_MAC.to_vec();
        frame.extend_from_slice(&[0x52, 0x54, 0x00, 0x56, 0x00, 0x01, 0x08, 0x00]);
        // IPv4: 20-byte header, total 28 + 4 bytes of payload, ICMP.
        let mut ip = vec![0x45, 0, 0, 32, 0, 1, 0x40, 0, 64, 1, 0, 0];
        ip.extend_from_slice(&GUEST_IP);
        ip.extend_from_slice(&HOST_IP);
        let sum = checksum(&ip);
        ip[10..12].copy_from_slice(&sum.to_be_bytes());
        let mut icmp = vec![8, 0, 0, 0, 0, 7, 0, 1, b'p', b'i', b'n', b'g'];
        let sum = checksum(&icmp);
        icmp[2..4].copy_from_slice(&sum.to_be_bytes());
        frame.extend_from_slice(&ip);
        frame.extend_from_slice(&icmp);
        let reply = answer(&frame, &counts).unwrap();
        assert_eq!(&reply[6..12], &HOST_MAC);
        assert_eq!(&reply[26..30], &HOST_IP);
        assert_eq!(&reply[30..34], &GUEST_IP);
        assert_eq!(checksum(&reply[14..34]), 0, "IP header checksum");
        assert_eq!(reply[34], 0, "echo reply");
        assert_eq!(checksum(&reply[34..]), 0, "ICMP checksum");
        assert_eq!(&reply[42..], b"ping");
    }
}
