//! The QEMU live-migration part of `cargo xtask e2e`: QEMU with the project's vfio-user
//! migration patches ([`crate::qemu`], `contrib/qemu/`) against two `vfio-variant serve`
//! processes.
//!
//! 1. **Blocker.** A QEMU attached to a function that cannot migrate (the embedded default's
//!    `idxd0`) refuses QMP `migrate` with the patch's message.
//! 2. **Live migration mid-I/O.** Two servers share the virtio-blk VF's image, as two hosts
//!    share storage, and the two QEMUs run in two network namespaces joined by a veth pair
//!    (two hosts; the migration stream goes over TCP between them). A guest on the source QEMU, attached to the source server's transitional
//!    `virtio-blk0`, binds it with the unmodified legacy driver (`virtio_pci.force_legacy=1`)
//!    and writes generation after generation of blocks (`migration/init.sh`). Once it has
//!    written one, the host migrates the VM (QMP `migrate`) to a second QEMU started with
//!    `-incoming` and attached to the destination server's `virtio-blk0`, and, when
//!    `query-migrate` says completed, writes a marker into the image that tells the guest it
//!    runs on the destination. The guest then writes two more generations and reads every
//!    block back. The host checks that the device state moved (`vfio.transferred` > 0), that
//!    on the destination every block holds its last value (as the guest reads it, and in the
//!    image), that the config space the guest reads at the end equals the one at the start
//!    (all but the status register), that the device's interrupts are MSI-X and kept coming on
//!    the destination, and that neither QEMU printed anything on its standard error.
//! 3. **Baseline.** The same guest and migration with QEMU's own `virtio-blk-pci` (legacy,
//!    on the same image file), for the downtime next to the VF's.
//!
//! The downtimes are QEMU's own (`query-migrate` `downtime`, in ms) and go to the e2e summary.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use super::chroot::{Kernel, Mounts};
use super::guest::{Console, Guest, GuestError};
use super::initramfs::Initramfs;
use super::server::json::Json;
use super::server::ram_args;
use super::virtio::{Server, in_chroot};
use crate::qemu::{self, PatchedQemu};

/// The guest's `/init`.
const INIT: &str = include_str!("migration/init.sh");

/// The transitional virtio-blk VF of the embedded default, and a function that cannot migrate.
const VF: &str = "virtio-blk0";
const NOT_MIGRATABLE: &str = "idxd0";

/// What the patched QEMU says when a function cannot migrate.
const BLOCKER: &str = "the vfio-user server does not support migration";

/// Blocks the guest writes in each generation, the block the host marks when the migration
/// completed, and the most generations the guest writes waiting for that mark.
const BLOCKS: u64 = 16;
const MARKER: u64 = 1024;
const MAX_GENERATIONS: u32 = 400;
const BLOCK: u64 = 4096;
/// Size of the disk images (that of the VF's image, the backend's `BLK_IMAGE_SIZE`).
const IMAGE_SIZE: u64 = 64 << 20;

/// The two hosts' addresses on their veth link, and the destination's migration port.
const SOURCE_IP: &str = "10.99.7.1";
const DESTINATION_IP: &str = "10.99.7.2";
const MIGRATION_PORT: u16 = 4444;

/// How long a guest may run, the migration may take, and QMP may take to answer.
const GUEST_TIMEOUT: Duration = Duration::from_secs(400);
const MIGRATE_TIMEOUT: Duration = Duration::from_secs(180);
const QMP_TIMEOUT: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(100);

/// What the part found: the checks passed and a line for the e2e summary.
pub struct Outcome {
    /// Checks passed.
    pub checks: usize,
    /// The downtimes, for the summary.
    pub summary: String,
}

/// Runs the three parts on `kernel` with the server `binary`.
pub fn run(root: &Path, kernel: &Kernel, binary: &Path) -> Result<Outcome, String> {
    with_setup(root, kernel, binary, all_parts)
}

/// The downtimes of `cargo xtask bench qemu_migration`, in ms: the VF's and QEMU's own
/// virtio-blk-pci's, one of each per round, in interleaved rounds.
pub struct Downtimes {
    /// With the vfio-user virtio-blk VF.
    pub vf_ms: Vec<u64>,
    /// With QEMU's own virtio-blk-pci on an image of its own.
    pub stock_ms: Vec<u64>,
}

/// `rounds` live migrations mid-I/O of each guest, the VF's and QEMU's virtio-blk-pci's in
/// turn (each with its checks), for their downtimes.
pub fn bench(
    root: &Path,
    kernel: &Kernel,
    binary: &Path,
    rounds: usize,
) -> Result<Downtimes, String> {
    with_setup(
        root,
        kernel,
        binary,
        |setup, source, destination, shared, baseline| {
            let vf = Attach::Vf {
                source: source.function_socket_in_chroot(setup.root, VF)?,
                destination: destination.function_socket_in_chroot(setup.root, VF)?,
            };
            let stock = Attach::VirtioBlkPci {
                image: in_chroot(baseline, setup.root)?,
            };
            let mut downtimes = Downtimes {
                vf_ms: Vec::new(),
                stock_ms: Vec::new(),
            };
            for _ in 0..rounds {
                downtimes
                    .vf_ms
                    .push(migrate_guest(setup, &vf, shared)?.downtime_ms);
                downtimes
                    .stock_ms
                    .push(migrate_guest(setup, &stock, baseline)?.downtime_ms);
            }
            Ok(downtimes)
        },
    )
}

/// Starts the two servers and the two hosts and runs `parts` with them.
fn with_setup<T>(
    root: &Path,
    kernel: &Kernel,
    binary: &Path,
    parts: impl FnOnce(&Setup, &Server, &Server, &Path, &Path) -> Result<T, String>,
) -> Result<T, String> {
    let qemu = qemu::ensure(root)?;
    let initrd = Initramfs::new(INIT)
        .module("virtio_pci")
        .module("virtio_blk")
        .build(root, kernel)?;
    let dir = root
        .join("tmp")
        .join(format!("vfio-variant-e2e-migration-{}", std::process::id()));
    if dir.exists() {
        fs::remove_dir_all(&dir).map_err(|e| format!("cannot remove {}: {e}", dir.display()))?;
    }
    fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let shared = dir.join("shared.img");
    let baseline = dir.join("baseline.img");
    for image in [&shared, &baseline] {
        fs::File::create(image)
            .and_then(|file| file.set_len(IMAGE_SIZE))
            .map_err(|e| format!("cannot create {}: {e}", image.display()))?;
    }
    let mut source = Server::start_named(binary, root, "info", "migsrc", Some(&shared))?;
    let mut destination = Server::start_named(binary, root, "info", "migdst", Some(&shared))?;
    let _mounts = Mounts::new(root)?;
    let hosts = Hosts::new()?;
    let setup = Setup {
        root,
        hosts: &hosts,
        qemu: &qemu,
        kernel,
        initrd: &initrd,
        dir: &dir,
    };
    let outcome = parts(&setup, &source, &destination, &shared, &baseline).and_then(|outcome| {
        source.stop()?;
        destination.stop()?;
        Ok(outcome)
    });
    let outcome = outcome.map_err(|e| {
        format!(
            "{e}\n--- source server ---\n{}\n--- destination server ---\n{}",
            source.log_text(),
            destination.log_text()
        )
    });
    let _ = fs::remove_dir_all(&dir);
    outcome
}

/// What every VM of this part shares.
struct Setup<'a> {
    root: &'a Path,
    hosts: &'a Hosts,
    qemu: &'a PatchedQemu,
    kernel: &'a Kernel,
    initrd: &'a str,
    /// A directory under the chroot's `/tmp` for the QMP and migration sockets.
    dir: &'a Path,
}

fn all_parts(
    setup: &Setup,
    source: &Server,
    destination: &Server,
    shared: &Path,
    baseline: &Path,
) -> Result<Outcome, String> {
    let mut checks = blocker(setup, source)?;
    let vf = Attach::Vf {
        source: source.function_socket_in_chroot(setup.root, VF)?,
        destination: destination.function_socket_in_chroot(setup.root, VF)?,
    };
    let vf = migrate_guest(setup, &vf, shared)?;
    let stock = Attach::VirtioBlkPci {
        image: in_chroot(baseline, setup.root)?,
    };
    let stock = migrate_guest(setup, &stock, baseline)?;
    checks += vf.checks + stock.checks;
    let summary = format!(
        "QEMU live migration mid-I/O (patched QEMU {}): downtime {} ms with the vfio-user \
         virtio-blk VF ({} bytes of device state), {} ms with QEMU's virtio-blk-pci (x{:.2})",
        qemu::SOURCE_VERSION,
        vf.downtime_ms,
        vf.device_bytes,
        stock.downtime_ms,
        vf.downtime_ms as f64 / stock.downtime_ms.max(1) as f64
    );
    Ok(Outcome { checks, summary })
}

/// The QEMU arguments of the patched binary: `args` (a command line whose first word is
/// `qemu-system-x86_64`) with the binary's path and its firmware directories.
fn patched(qemu: &PatchedQemu, mut args: Vec<String>) -> Vec<String> {
    args[0] = qemu.binary.clone();
    args.splice(1..1, qemu::FIRMWARE_ARGS.iter().map(|arg| arg.to_string()));
    args
}

/// A root port and, behind it, the disk under test.
enum Attach {
    /// The transitional virtio-blk VF of each server.
    Vf { source: String, destination: String },
    /// QEMU's own legacy virtio-blk-pci on `image` (a path inside the chroot).
    VirtioBlkPci { image: String },
}

impl Attach {
    fn name(&self) -> &'static str {
        match self {
            Attach::Vf { .. } => "vfio-user",
            Attach::VirtioBlkPci { .. } => "virtio-blk-pci",
        }
    }

    /// The `-device` (and `-drive`) arguments of the source (or the destination).
    fn args(&self, destination: bool) -> Vec<String> {
        let mut args = vec![
            "-device".to_string(),
            "pcie-root-port,id=rp1,bus=pcie.0,addr=0x2,chassis=1".to_string(),
        ];
        match self {
            Attach::Vf {
                source,
                destination: to,
            } => {
                let socket = if destination { to } else { source };
                args.push("-device".into());
                args.push(format!(
                    r#"{{"driver":"vfio-user-pci","socket":{{"path":"{socket}","type":"unix"}},"bus":"rp1"}}"#
                ));
            }
            Attach::VirtioBlkPci { image } => {
                args.push("-drive".into());
                args.push(format!(
                    "file={image},if=none,id=d0,format=raw,file.locking=off"
                ));
                args.push("-device".into());
                args.push(
                    "virtio-blk-pci,drive=d0,bus=rp1,disable-legacy=off,disable-modern=on".into(),
                );
            }
        }
        args
    }
}

/// Part 1: `migrate` is refused for a VM attached to a function that cannot migrate.
fn blocker(setup: &Setup, server: &Server) -> Result<usize, String> {
    let socket = server.function_socket_in_chroot(setup.root, NOT_MIGRATABLE)?;
    let mut args: Vec<String> = [
        "qemu-system-x86_64",
        "-accel",
        "tcg",
        "-machine",
        "q35",
        "-m",
        "512",
        "-nographic",
        "-nodefaults",
        "-S",
        "-device",
        "pcie-root-port,id=rp1,bus=pcie.0,addr=0x2,chassis=1",
        "-device",
        &format!(
            r#"{{"driver":"vfio-user-pci","socket":{{"path":"{socket}","type":"unix"}},"bus":"rp1"}}"#
        ),
    ]
    .iter()
    .map(|arg| arg.to_string())
    .collect();
    args.extend(ram_args(true));
    let mut vm = Vm::start(setup, "blocker", None, patched(setup.qemu, args))?;
    let mut qmp = vm.qmp()?;
    let refused = qmp.execute("migrate", r#"{"uri":"exec:cat > /dev/null"}"#);
    let _ = qmp.execute("quit", "{}");
    vm.wait(QMP_TIMEOUT)?;
    match refused {
        Err(message) if message.contains(BLOCKER) => {
            eprintln!("==> migrate refused: {message}");
            Ok(1)
        }
        Err(message) => Err(format!(
            "migrate with {NOT_MIGRATABLE} attached was refused, but not by the blocker: {message}"
        )),
        Ok(_) => Err(format!(
            "QEMU accepted to migrate a VM with {NOT_MIGRATABLE}, which cannot migrate"
        )),
    }
}

/// What one migrated guest gave.
struct Migrated {
    checks: usize,
    downtime_ms: u64,
    device_bytes: u64,
}

/// Parts 2 and 3: a guest writing to `attach`, backed by `image` (on the host), migrated
/// mid-I/O; its checks and the downtime.
fn migrate_guest(setup: &Setup, attach: &Attach, image: &Path) -> Result<Migrated, String> {
    let name = attach.name();
    let image_file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(image)
        .map_err(|e| format!("cannot open {}: {e}", image.display()))?;
    image_file
        .write_all_at(&[0; BLOCK as usize], MARKER * BLOCK)
        .map_err(|e| format!("cannot clear the marker block: {e}"))?;
    let guest = |side: &str| {
        let guest = Guest::new(
            setup.root,
            &format!("migration-{name}-{side}"),
            setup.kernel,
            setup.initrd,
        )
        .append("virtio_pci.force_legacy=1")
        .append(&format!("e2e.blocks={BLOCKS}"))
        .append(&format!("e2e.marker={MARKER}"))
        .append(&format!("e2e.max={MAX_GENERATIONS}"))
        .args(ram_args(true))
        .args(attach.args(side == "destination"));
        patched(setup.qemu, guest.qemu_args())
    };
    let stream = format!("tcp:{DESTINATION_IP}:{MIGRATION_PORT}");
    let mut destination_args = guest("destination");
    destination_args.push("-incoming".into());
    destination_args.push(stream.clone());
    let mut source_args = guest("source");
    let trace = setup.dir.join(format!("trace-{name}.log"));
    source_args.extend([
        "-trace".to_string(),
        "vfio_user_device_feature".to_string(),
        "-trace".to_string(),
        "vfio_container_query_dirty_bitmap".to_string(),
        "-D".to_string(),
        in_chroot(&trace, setup.root)?,
    ]);
    let [source_host, destination_host] = &setup.hosts.names;
    let mut destination = Vm::start(
        setup,
        &format!("{name}-destination"),
        Some(destination_host),
        destination_args,
    )?;
    let mut source = Vm::start(
        setup,
        &format!("{name}-source"),
        Some(source_host),
        source_args,
    )?;
    source.wait_for_console("written=1", GUEST_TIMEOUT)?;
    let mut qmp = source.qmp()?;
    let started = Instant::now();
    eprintln!("==> migrating the {name} guest mid-I/O");
    qmp.execute("migrate", &format!(r#"{{"uri":"{stream}"}}"#))
        .map_err(|e| format!("migrate ({name}) failed: {e}"))?;
    let info = loop {
        let info = qmp
            .execute("query-migrate", "{}")
            .map_err(|e| format!("query-migrate ({name}) failed: {e}"))?;
        match info.get("status").and_then(Json::as_str) {
            Some("completed") => break info,
            Some("failed" | "cancelled") => {
                return Err(format!("the migration of the {name} guest failed: {info}"));
            }
            _ if started.elapsed() > MIGRATE_TIMEOUT => {
                return Err(format!(
                    "the migration of the {name} guest did not complete within {} s: {info}",
                    MIGRATE_TIMEOUT.as_secs()
                ));
            }
            _ => thread::sleep(POLL),
        }
    };
    let mut marker = b"MIGRATED\n".to_vec();
    marker.resize(BLOCK as usize, 0);
    image_file
        .write_all_at(&marker, MARKER * BLOCK)
        .and_then(|()| image_file.sync_data())
        .map_err(|e| format!("cannot write the marker block: {e}"))?;
    let _ = qmp.execute("quit", "{}");
    source.wait(QMP_TIMEOUT)?;
    let status = destination.wait(GUEST_TIMEOUT)?;
    let before = source.console();
    let after = destination.console();
    if !status.success() {
        return Err(after
            .error(format!(
                "the destination QEMU ({name}) failed ({status}); source console:\n{}",
                before.error("")
            ))
            .to_string());
    }
    let downtime_ms = info
        .get("downtime")
        .and_then(Json::as_u64)
        .ok_or_else(|| format!("query-migrate gave no downtime: {info}"))?;
    let device_bytes = info
        .get("vfio")
        .and_then(|vfio| vfio.get("transferred"))
        .and_then(Json::as_u64)
        .unwrap_or(0);
    let mut checks = check_guest(&before, &after, &image_file)?;
    if let Attach::Vf { .. } = attach {
        if device_bytes == 0 {
            return Err(format!(
                "the migration carried no device state (vfio transferred 0): {info}"
            ));
        }
        checks += 1;
        let features = fs::read_to_string(&trace)
            .map_err(|e| format!("cannot read QEMU's trace {}: {e}", trace.display()))?;
        let dirty = check_dma_logging(&features)?;
        eprintln!("==> {name}: the device's DMA logging reported {dirty} dirty page(s)");
        checks += 2;
    }
    eprintln!(
        "==> {name}: migrated in {:.1} s, downtime {downtime_ms} ms, {device_bytes} bytes of \
         device state; {checks} checks passed",
        started.elapsed().as_secs_f64()
    );
    Ok(Migrated {
        checks,
        downtime_ms,
        device_bytes,
    })
}

/// Checks what the guest printed on the source (`before`) and on the destination (`after`),
/// and the disk image; returns how many checks passed.
fn check_guest(before: &Console, after: &Console, image: &fs::File) -> Result<usize, GuestError> {
    for console in [before, after] {
        let stderr = console.qemu_stderr().trim();
        if !stderr.is_empty() {
            return Err(console.error(format!("QEMU printed on its standard error: {stderr}")));
        }
        if let Some(line) = console.text_lines().find(|line| line.starts_with("error=")) {
            return Err(console.error(format!("the guest reported {line}")));
        }
    }
    let start = before.section("before")?;
    if !start.contains(&"driver=virtio-pci") {
        return Err(before.error("the function is not bound to virtio-pci"));
    }
    let verify = after.section("verify")?;
    let value = |key: &str| -> Result<u64, GuestError> {
        verify
            .iter()
            .find_map(|line| line.strip_prefix(key)?.strip_prefix('='))
            .and_then(|text| text.parse().ok())
            .ok_or_else(|| after.error(format!("the guest printed no {key}")))
    };
    let (seen, last, bad) = (value("seen")?, value("last")?, value("bad")?);
    if bad != 0 || seen == 0 || last != seen + 2 {
        return Err(after.error(format!(
            "after the migration the guest read {bad} block(s) that do not hold their last \
             value (generation {last}; the migration was seen after generation {seen})"
        )));
    }
    for block in 0..BLOCKS {
        let mut data = [0; BLOCK as usize];
        image
            .read_exact_at(&mut data, block * BLOCK)
            .map_err(|e| after.error(format!("cannot read the image: {e}")))?;
        let want = format!("vfio-variant migration generation {last} block {block}\n");
        if !data.starts_with(want.as_bytes()) {
            return Err(after.error(format!(
                "block {block} of the image does not hold `{}`",
                want.trim_end()
            )));
        }
    }
    let config = |console: &Console, section: &str| -> Result<String, GuestError> {
        let lines = console.section(section)?;
        let hex: String = lines
            .iter()
            .filter_map(|line| line.strip_prefix("config="))
            .collect();
        if hex.len() != 512 {
            return Err(console.error(format!("section {section} has no 256-byte config space")));
        }
        // The status register (bytes 6-7) may change; the rest may not.
        Ok(format!("{}....{}", &hex[..12], &hex[16..]))
    };
    let (config_before, config_after) = (config(before, "before")?, config(after, "end")?);
    if config_before != config_after {
        return Err(after.error(format!(
            "the config space changed across the migration:\nbefore {config_before}\nafter  \
             {config_after}"
        )));
    }
    let interrupts = |section: &str| -> Result<(u64, bool), GuestError> {
        let lines = after.section(section)?;
        let irqs: Vec<&str> = lines
            .iter()
            .filter_map(|line| line.strip_prefix("irq="))
            .collect();
        let count = irqs.iter().map(|line| interrupt_count(line)).sum();
        Ok((
            count,
            !irqs.is_empty() && irqs.iter().all(|line| line.contains("MSIX")),
        ))
    };
    let ((seen_count, _), (end_count, msix)) = (interrupts("migrated")?, interrupts("end")?);
    if !msix || end_count <= seen_count {
        return Err(after.error(format!(
            "the device's interrupts are not MSI-X interrupts that kept coming on the \
             destination ({seen_count} when the migration was seen, {end_count} at the end)"
        )));
    }
    Ok(5)
}

/// Checks the source QEMU's trace: its DEVICE_FEATURE requests started DMA logging and asked
/// for reports (the STOP comes when QEMU cleans the migration up, which may be after the
/// source is told to quit), and the reports marked pages dirty in QEMU's bitmap (the guest's
/// I/O makes the device write its used ring all along, so some page must have been written).
/// Returns the number of pages the reports marked.
fn check_dma_logging(trace: &str) -> Result<u64, String> {
    let dirty: u64 = trace
        .lines()
        .filter(|line| line.contains("vfio_container_query_dirty_bitmap"))
        .filter_map(|line| {
            line.split("dirty_pages=")
                .nth(1)?
                .trim()
                .parse::<u64>()
                .ok()
        })
        .sum();
    let features: Vec<u32> = trace
        .lines()
        .filter_map(|line| line.split(" feature ").nth(1))
        .filter_map(|rest| rest.split_whitespace().next()?.parse().ok())
        .collect();
    // linux/vfio.h: VFIO_DEVICE_FEATURE_DMA_LOGGING_START, _REPORT.
    for (feature, what) in [(6, "START"), (8, "REPORT")] {
        if !features.contains(&feature) {
            return Err(format!(
                "QEMU sent no DEVICE_FEATURE DMA_LOGGING_{what} ({feature}) during the migration; features sent: {features:?}"
            ));
        }
    }
    if dirty == 0 {
        return Err(
            "the device's DMA logging reports marked no page dirty during the migration".into(),
        );
    }
    Ok(dirty)
}

/// The sum of the per-CPU counts of a `/proc/interrupts` line (`NN: c0 c1 ... chip ...`).
fn interrupt_count(line: &str) -> u64 {
    line.split_whitespace()
        .skip(1)
        .map_while(|word| word.parse::<u64>().ok())
        .sum()
}

/// A QEMU running in the chroot, its console and standard error in files, with a QMP socket;
/// killed on drop.
struct Vm {
    name: String,
    child: Child,
    console: PathBuf,
    stderr: PathBuf,
    /// The QMP socket on the host.
    qmp: PathBuf,
}

impl Vm {
    /// Starts QEMU with `args` (its first word the binary, a path inside the chroot) and a
    /// QMP socket, in the network namespace `host` if given.
    fn start(
        setup: &Setup,
        name: &str,
        host: Option<&str>,
        mut args: Vec<String>,
    ) -> Result<Vm, String> {
        let qmp = setup.dir.join(format!("qmp-{name}.sock"));
        let _ = fs::remove_file(&qmp);
        args.push("-qmp".into());
        args.push(format!(
            "unix:{},server=on,wait=off",
            in_chroot(&qmp, setup.root)?
        ));
        let base = std::env::temp_dir().join(format!(
            "vfio-variant-migration-{name}-{}",
            std::process::id()
        ));
        let console = base.with_extension("console");
        let stderr = base.with_extension("stderr");
        let create = |path: &Path| {
            fs::File::create(path).map_err(|e| format!("cannot create {}: {e}", path.display()))
        };
        let mut command = match host {
            Some(host) => {
                let mut command = Command::new("ip");
                command.args(["netns", "exec", host, "chroot"]);
                command
            }
            None => Command::new("chroot"),
        };
        command
            .arg(setup.root)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(create(&console)?)
            .stderr(create(&stderr)?);
        eprintln!(
            "==> starting QEMU `{name}` (console in {})",
            console.display()
        );
        let child = command
            .spawn()
            .map_err(|e| format!("cannot start {command:?}: {e}"))?;
        Ok(Vm {
            name: name.to_string(),
            child,
            console,
            stderr,
            qmp,
        })
    }

    /// A QMP connection, once QEMU has created its socket.
    fn qmp(&mut self) -> Result<Qmp, String> {
        let started = Instant::now();
        loop {
            if let Ok(stream) = UnixStream::connect(&self.qmp) {
                return Qmp::new(stream).map_err(|e| format!("QMP of `{}`: {e}", self.name));
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(self
                    .console()
                    .error(format!(
                        "QEMU `{}` exited ({status}) before QMP was up",
                        self.name
                    ))
                    .to_string());
            }
            if started.elapsed() > QMP_TIMEOUT {
                return Err(format!("QEMU `{}` opened no QMP socket", self.name));
            }
            thread::sleep(POLL);
        }
    }

    /// Waits until the console has a line `line`.
    fn wait_for_console(&mut self, line: &str, timeout: Duration) -> Result<(), String> {
        let started = Instant::now();
        loop {
            let console = self.console();
            if console.text_lines().any(|found| found == line) {
                return Ok(());
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(console
                    .error(format!("QEMU `{}` exited ({status})", self.name))
                    .to_string());
            }
            if started.elapsed() > timeout {
                return Err(console
                    .error(format!(
                        "the guest of `{}` never printed `{line}`",
                        self.name
                    ))
                    .to_string());
            }
            thread::sleep(POLL);
        }
    }

    /// Waits for QEMU to exit; kills it after `timeout`.
    fn wait(&mut self, timeout: Duration) -> Result<ExitStatus, String> {
        let started = Instant::now();
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return Ok(status),
                Ok(None) if started.elapsed() < timeout => thread::sleep(POLL),
                Ok(None) => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    return Err(self
                        .console()
                        .error(format!(
                            "QEMU `{}` did not exit within {} s and was killed",
                            self.name,
                            timeout.as_secs()
                        ))
                        .to_string());
                }
                Err(e) => return Err(format!("waiting for QEMU `{}`: {e}", self.name)),
            }
        }
    }

    /// The console so far, with QEMU's standard error.
    fn console(&self) -> Console {
        let stderr = fs::read(&self.stderr)
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_default();
        Console::from_log(&self.console, stderr)
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_file(&self.qmp);
    }
}

/// Two network namespaces (two hosts) joined by a veth pair; removed on drop.
struct Hosts {
    names: [String; 2],
}

impl Hosts {
    fn new() -> Result<Hosts, String> {
        let id = std::process::id();
        let hosts = Hosts {
            names: [format!("vvq-src-{id}"), format!("vvq-dst-{id}")],
        };
        let ip = |args: &[&str]| {
            super::output(
                &format!("ip {}", args.join(" ")),
                Command::new("ip").args(args),
            )
            .map(drop)
        };
        for name in &hosts.names {
            let _ = ip(&["netns", "del", name]);
            ip(&["netns", "add", name])?;
            ip(&["-n", name, "link", "set", "lo", "up"])?;
        }
        let links = [format!("vqs{id}"), format!("vqd{id}")];
        ip(&[
            "link", "add", &links[0], "type", "veth", "peer", "name", &links[1],
        ])?;
        for ((link, host), address) in links
            .iter()
            .zip(&hosts.names)
            .zip([SOURCE_IP, DESTINATION_IP])
        {
            ip(&["link", "set", link, "netns", host])?;
            ip(&[
                "-n",
                host,
                "addr",
                "add",
                &format!("{address}/24"),
                "dev",
                link,
            ])?;
            ip(&["-n", host, "link", "set", link, "up"])?;
        }
        Ok(hosts)
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for name in &self.names {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}

/// A QMP connection (capabilities negotiated).
struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Qmp {
    fn new(stream: UnixStream) -> Result<Qmp, String> {
        stream
            .set_read_timeout(Some(QMP_TIMEOUT))
            .map_err(|e| e.to_string())?;
        let writer = stream.try_clone().map_err(|e| e.to_string())?;
        let mut qmp = Qmp {
            reader: BufReader::new(stream),
            writer,
        };
        let greeting = qmp.line()?;
        if greeting.get("QMP").is_none() {
            return Err(format!("no QMP greeting: {greeting}"));
        }
        qmp.execute("qmp_capabilities", "{}")?;
        Ok(qmp)
    }

    /// Runs `command` with `arguments` (a JSON object); returns its `return` value, or its
    /// error's description. Events in between are skipped.
    fn execute(&mut self, command: &str, arguments: &str) -> Result<Json, String> {
        writeln!(
            self.writer,
            r#"{{"execute":"{command}","arguments":{arguments}}}"#
        )
        .map_err(|e| format!("cannot send {command}: {e}"))?;
        loop {
            let reply = self.line()?;
            if let Some(value) = reply.get("return") {
                return Ok(value.clone());
            }
            if let Some(error) = reply.get("error") {
                return Err(error
                    .get("desc")
                    .and_then(Json::as_str)
                    .unwrap_or("(no description)")
                    .to_string());
            }
        }
    }

    fn line(&mut self) -> Result<Json, String> {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) => Err("QMP closed".into()),
            Ok(_) => Json::parse(line.trim()),
            Err(e) => Err(format!("reading QMP: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{check_dma_logging, interrupt_count};

    #[test]
    fn dma_logging_needs_start_report_and_dirty_pages() {
        let start = "123@1.0:vfio_user_device_feature  feature 6 flags 0x20000\n";
        let report = "vfio_user_device_feature  feature 8 flags 0x10000\n";
        let dirty = "vfio_container_query_dirty_bitmap iova=0x0 size= 0x80000000 \
                     bitmap_size=0x10000 gpa=0x0 dirty_pages=3\n";
        assert_eq!(
            check_dma_logging(&format!("{start}{report}{dirty}{dirty}")),
            Ok(6)
        );
        // No page reported dirty, or no REPORT, or no START.
        assert!(check_dma_logging(&format!("{start}{report}")).is_err());
        assert!(check_dma_logging(&format!("{start}{dirty}")).is_err());
        assert!(check_dma_logging(&format!("{report}{dirty}")).is_err());
    }

    #[test]
    fn interrupt_lines_are_summed_over_cpus() {
        assert_eq!(
            interrupt_count(" 24:   10   32  IR-PCI-MSIX-0000:01:00.0   1-edge  virtio0-req.0"),
            42
        );
        assert_eq!(interrupt_count(" 25:  PCI-MSIX  virtio0-config"), 0);
    }
}
