//! `cargo xtask e2e`: the project's own server under a real VMM and an unmodified guest kernel.
//!
//! Starts `vfio-variant serve` (its embedded default: one `sample` function, `sample0`) with its
//! sockets inside the cached chroot, and boots QEMU's `vfio-user-pci` on it twice, without
//! restarting the server. QEMU runs under TCG on q35, the function behind a `pcie-root-port`, with
//! guest RAM private in boot 1 (QEMU's default: the server reaches it by DMA_READ/DMA_WRITE
//! messages) and in a shared memfd in boot 2 (the server maps it), and a reserved 2 MiB window of RAM
//! (`memmap=`) for the DMA buffers. The guest's `/init` (`server/init.sh`) uses only sysfs, busybox
//! `devmem` and `uio_pci_generic`, and prints what it saw between markers; the host then checks,
//! in each boot:
//!
//! - QEMU printed nothing on its standard error (its vfio-user client reports trouble there);
//! - the function sits behind the root port, and its config space, as the guest reads all 4096
//!   bytes of it, equals the layout compiled by `vfio-variant vpci check --json` in every bit
//!   that software may not change (outside the write and RW1C masks; QEMU changes none of them
//!   there, see [`Report::check_config`]);
//! - the BARs in the guest's `resource` file have the layout's types and sizes;
//! - COMMAND written through sysfs reads back, BAR 0's ID register reads `VFIO`, SCRATCH and
//!   NVRAM read back what was written;
//! - words written to the shared-memory BAR 2 read back, and the device sees them (SHM_SUM);
//! - the DMA engine copies a pattern between two guest-physical buffers, with status 0, and
//!   flags its completion in INT_STATUS;
//! - an INTx raised by the function reaches `uio_pci_generic` (the event count read from
//!   `/dev/uio0` goes up) and is acknowledged.
//!
//! Across the boots: SCRATCH and the shared memory read 0 when boot 2 starts (QEMU resets the
//! device when the guest starts, and that reset reached the function), while NVRAM still holds
//! what boot 1 wrote (it survives resets and reconnects). At the end the server is stopped with
//! SIGTERM; it must exit 0 and remove its sockets.
//!
//! All of this (the sample function, [`super::vfio`] and [`super::virtio`]) runs once on each
//! guest kernel of [`kernels::both`] (Debian sid's and Debian 12's), or on the one kernel that
//! `--kernel RELEASE` names. Without `--kernel`, the nested part ([`super::nested`]) and the
//! QEMU live migration with the project's patches ([`super::qemu_migration`]) follow, once,
//! on the sid kernel (`e2e nested` and `e2e migration` run one of them alone). The summary gives the checks passed per kernel and the time of
//! every boot.
//!
//! Needs root (chroot, mounts). The server's log (`VFIO_VARIANT_LOG`, `debug` unless set) goes to
//! `$TMPDIR/vfio-variant-e2e-server-<pid>.log` and is printed, with the guest console, on failure.

pub(super) mod checks;
pub(super) mod json;

use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use self::checks::{
    ID_VALUE, Layout, Report, check_command, check_dma, check_interrupt, check_register,
    check_shared_memory,
};
use self::json::Json;
use super::chroot::{self, Kernel};
use super::guest::{Console, Guest, GuestError};
use super::initramfs::Initramfs;
use super::kernels;
use super::output;
use crate::cmd::{cargo, run as run_step, target_dir, workspace_root};

/// The usage line of this command.
const USAGE: &str = "usage: cargo xtask e2e [--kernel RELEASE | nested | migration]";

/// The guest's `/init`.
const INIT: &str = include_str!("server/init.sh");

/// The sample function's layout, relative to the workspace root.
const SAMPLE_LAYOUT: &str = "backends/src/builtin/sample/layout.toml";

/// The function the embedded default serves.
const FUNCTION: &str = "sample0";

/// The bus-0 slot of the `pcie-root-port` the function sits behind.
const ROOT_PORT_SLOT: u8 = 2;

/// The start of a window of guest RAM the kernel is told to leave alone, for the DMA test's
/// buffers (`memmap=2M$0x1f000000`, inside the 512 MiB of guest RAM).
const DMA_WINDOW: u64 = 0x1f00_0000;
/// The window's size in MiB.
const DMA_WINDOW_MIB: u64 = 2;
/// Guest-physical source of the DMA test: the start of the window.
const DMA_SRC: u64 = DMA_WINDOW;
/// Guest-physical destination of the DMA test, 1 MiB into the window.
const DMA_DST: u64 = DMA_WINDOW + (1 << 20);
/// 32-bit words the DMA test copies.
const DMA_WORDS: usize = 16;
const _: () = assert!(DMA_DST + 4 * DMA_WORDS as u64 <= DMA_WINDOW + (DMA_WINDOW_MIB << 20));

/// How many guests boot against the same server.
const BOOTS: u32 = 2;
/// How long one guest may run (a boot takes 6-12 s under TCG here).
const BOOT_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the server may take to announce its functions.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the server may take to stop after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// How often the host checks whether the server has exited.
const POLL: Duration = Duration::from_millis(50);

/// Runs `cargo xtask e2e [--kernel RELEASE | nested]`: the guest checks on both guest kernels
/// ([`kernels::both`]) and the nested passthrough part ([`super::nested`]), or the guest
/// checks on the one kernel of the chroot named by `--kernel`, or only the nested part.
pub fn run(args: &[String]) -> Result<(), String> {
    if let [only] = args
        && only == "nested"
    {
        return run_nested();
    }
    if let [only] = args
        && only == "migration"
    {
        return run_migration();
    }
    let only = parse_args(args)?;
    require_root()?;
    let started = Instant::now();
    let root = chroot::ensure_chroot()?;
    let root = fs::canonicalize(&root)
        .map_err(|e| format!("cannot resolve the chroot {}: {e}", root.display()))?;
    let given = only.is_some();
    let kernels = match only {
        Some(release) => vec![("given".to_string(), kernels::by_release(&root, &release)?)],
        None => kernels::both(&root)?,
    };
    let binary = build_server(false)?;
    let layout = compile_layout(&binary)?;
    let static_binary = super::vfio::build_static()?;
    let setup = started.elapsed();
    let mut per_kernel = Vec::new();
    for (label, kernel) in &kernels {
        eprintln!("==> guest checks on the {label} kernel {}", kernel.release);
        let step = Instant::now();
        let passed = guest_checks(&root, kernel, label, &binary, &static_binary, &layout)
            .map_err(|e| format!("on the {label} guest kernel {}: {e}", kernel.release))?;
        per_kernel.push(format!(
            "{label} kernel {}: {passed} checks passed in {:.1} s",
            kernel.release,
            step.elapsed().as_secs_f64()
        ));
    }
    // A real nvme and igb VF one VM level down: L1 and L2 run the sid kernel, so this part
    // runs once, and not when one kernel was asked for.
    if !given {
        let step = Instant::now();
        let sid = kernels::sid(&root)?;
        let passed =
            super::nested::run(&root, &sid).map_err(|e| format!("nested passthrough: {e}"))?;
        per_kernel.push(format!(
            "nested passthrough (kernel {}): {passed} checks passed in {:.1} s",
            sid.release,
            step.elapsed().as_secs_f64()
        ));
    }
    // QEMU with the vfio-user migration patches: once, on the sid kernel, like the nested part.
    if !given {
        let step = Instant::now();
        let sid = kernels::sid(&root)?;
        let migration = super::qemu_migration::run(&root, &sid, &binary)
            .map_err(|e| format!("QEMU live migration: {e}"))?;
        per_kernel.push(format!(
            "QEMU live migration (kernel {}): {} checks passed in {:.1} s",
            sid.release,
            migration.checks,
            step.elapsed().as_secs_f64()
        ));
        eprintln!("e2e: {}", migration.summary);
    }
    let boots: Vec<String> = super::guest::boot_times()
        .iter()
        .map(|(name, took)| format!("{name} {:.1} s", took.as_secs_f64()))
        .collect();
    eprintln!(
        "e2e: {} ({})",
        per_kernel.join("; "),
        chroot::qemu_version(&root)?
    );
    eprintln!(
        "e2e: set-up {:.1} s; boots: {}; total {:.1} s",
        setup.as_secs_f64(),
        boots.join(", "),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The release `--kernel RELEASE` names, if given.
fn parse_args(args: &[String]) -> Result<Option<String>, String> {
    match args {
        [] => Ok(None),
        [flag, release] if flag == "--kernel" && !release.starts_with('-') => {
            Ok(Some(release.clone()))
        }
        _ => Err(USAGE.to_string()),
    }
}

/// Runs every guest check on `kernel` (labelled `label` in log file names): the sample
/// function (two boots against one server), kernel VFIO, and the virtio VFs.
fn guest_checks(
    root: &Path,
    kernel: &Kernel,
    label: &str,
    binary: &Path,
    static_binary: &Path,
    layout: &Layout,
) -> Result<usize, String> {
    let initrd = Initramfs::new(INIT)
        .module("uio_pci_generic")
        .build(root, kernel)?;
    let (mut server, announced) = Server::start(binary, root)?;
    let outcome = qemu_device(&announced, root)
        .and_then(|device| exercise(root, (kernel, label), &initrd, layout, &device))
        .and_then(|checks| Ok(checks + server.stop()?));
    let mut passed = outcome.map_err(|e| format!("{e}\n{}", server.log_text()))?;
    // The log is evidence for failures only.
    let _ = fs::remove_file(&server.log);
    passed += super::vfio::run(root, kernel, label, static_binary)?;
    passed += super::virtio::run(root, kernel, label, binary)?;
    Ok(passed)
}

/// `cargo xtask e2e nested`: only the nested part ([`super::nested`]), for working on it.
fn run_nested() -> Result<(), String> {
    require_root()?;
    let started = Instant::now();
    let root = chroot::ensure_chroot()?;
    let root = fs::canonicalize(&root)
        .map_err(|e| format!("cannot resolve the chroot {}: {e}", root.display()))?;
    let kernel = kernels::sid(&root)?;
    let checks = super::nested::run(&root, &kernel)?;
    eprintln!(
        "e2e nested: {checks} checks passed; total {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `cargo xtask e2e migration`: only the QEMU live-migration part ([`super::qemu_migration`]).
fn run_migration() -> Result<(), String> {
    require_root()?;
    let started = Instant::now();
    let root = chroot::ensure_chroot()?;
    let root = fs::canonicalize(&root)
        .map_err(|e| format!("cannot resolve the chroot {}: {e}", root.display()))?;
    let kernel = kernels::sid(&root)?;
    let binary = build_server(false)?;
    let outcome = super::qemu_migration::run(&root, &kernel, &binary)?;
    eprintln!("e2e migration: {}", outcome.summary);
    eprintln!(
        "e2e migration: {} checks passed; total {:.1} s",
        outcome.checks,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `cargo xtask bench qemu_migration`: `rounds` interleaved live migrations of the VF's guest
/// and of QEMU's own virtio-blk-pci's ([`super::qemu_migration::bench`]).
pub fn bench_migration(rounds: usize) -> Result<super::qemu_migration::Downtimes, String> {
    require_root()?;
    let root = chroot::ensure_chroot()?;
    let root = fs::canonicalize(&root)
        .map_err(|e| format!("cannot resolve the chroot {}: {e}", root.display()))?;
    let kernel = kernels::sid(&root)?;
    let binary = build_server(false)?;
    super::qemu_migration::bench(&root, &kernel, &binary, rounds)
}

/// Fails unless this process runs as root (its effective uid, from `/proc/self/status`).
pub fn require_root() -> Result<(), String> {
    let status = fs::read_to_string("/proc/self/status")
        .map_err(|e| format!("cannot read /proc/self/status: {e}"))?;
    let euid = status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .ok_or("no effective uid in /proc/self/status")?;
    if euid == "0" {
        Ok(())
    } else {
        Err(format!(
            "QEMU guests need root (a chroot, /dev and /proc mounted into it, QEMU run there); \
             run `cargo xtask e2e` or `cargo xtask bench` as root, as CI does (effective uid \
             here: {euid})"
        ))
    }
}

/// Builds `vfio-variant` (the release profile if `release`) and returns its path.
pub fn build_server(release: bool) -> Result<PathBuf, String> {
    let profile = if release { "release" } else { "debug" };
    run_step(
        &format!("build vfio-variant ({profile})"),
        cargo()
            .args([
                "build",
                "-p",
                "vfio-variant-backends",
                "--bin",
                "vfio-variant",
            ])
            .args(release.then_some("--release")),
    )?;
    let binary = target_dir().join(profile).join("vfio-variant");
    if binary.is_file() {
        Ok(binary)
    } else {
        Err(format!("the build made no {}", binary.display()))
    }
}

/// The sample layout compiled by `vfio-variant vpci check --json`.
fn compile_layout(binary: &Path) -> Result<Layout, String> {
    compile_layout_file(binary, SAMPLE_LAYOUT)
}

/// The layout at `path` (relative to the workspace root) compiled by
/// `vfio-variant vpci check --json`.
pub(super) fn compile_layout_file(binary: &Path, path: &str) -> Result<Layout, String> {
    let layout = workspace_root().join(path);
    let json = output(
        &format!("compile {path}"),
        Command::new(binary)
            .args(["vpci", "check", "--json"])
            .arg(&layout),
    )?;
    Layout::from_check_json(&json).map_err(|e| {
        format!(
            "`vfio-variant vpci check --json {}` printed unexpected JSON: {e}",
            layout.display()
        )
    })
}

/// What one boot writes and expects.
struct Plan {
    /// 1, 2, ...
    boot: u32,
    /// Written to SCRATCH.
    scratch: u32,
    /// Written to NVRAM.
    nvram: u32,
    /// What NVRAM must hold when the guest starts: 0 on a fresh server, else the last boot's.
    nvram_at_boot: u32,
    /// The first word of the DMA pattern and of the words written to the shared memory.
    seed: u32,
}

impl Plan {
    /// The plan of boot `boot` (from 1).
    fn new(boot: u32) -> Self {
        let nvram = |boot: u32| 0x4e56_0000 | boot;
        Plan {
            boot,
            scratch: 0x5c00_0000 | boot,
            nvram: nvram(boot),
            nvram_at_boot: if boot > 1 { nvram(boot - 1) } else { 0 },
            seed: 0xd0a0_0000 | (boot << 8),
        }
    }

    /// The kernel parameters `init.sh` reads.
    fn parameters(&self) -> Vec<String> {
        vec![
            format!("memmap={DMA_WINDOW_MIB}M${DMA_WINDOW:#x}"),
            format!("e2e.boot={}", self.boot),
            format!("e2e.scratch={:#x}", self.scratch),
            format!("e2e.nvram={:#x}", self.nvram),
            format!("e2e.src={DMA_SRC:#x}"),
            format!("e2e.dst={DMA_DST:#x}"),
            format!("e2e.seed={:#x}", self.seed),
            format!("e2e.words={DMA_WORDS}"),
        ]
    }
}

/// Boots the guests one after the other with the function `device` (a `-device` argument);
/// returns how many checks passed.
fn exercise(
    root: &Path,
    (kernel, label): (&Kernel, &str),
    initrd: &str,
    layout: &Layout,
    device: &str,
) -> Result<usize, String> {
    let mut passed = 0;
    for boot in 1..=BOOTS {
        let plan = Plan::new(boot);
        let mut guest = Guest::new(root, &format!("e2e-{label}-boot{boot}"), kernel, initrd)
            .args(qemu_args(device, boot != 1))
            .timeout(BOOT_TIMEOUT);
        for parameter in plan.parameters() {
            guest = guest.append(&parameter);
        }
        let console = guest.run()?;
        passed += check_boot(&console, layout, &plan)?;
    }
    Ok(passed)
}

/// The QEMU arguments that attach the function: guest RAM (`shared`: in a shared memfd,
/// else QEMU's default private RAM, reached by DMA_READ/DMA_WRITE messages), a root port,
/// the device.
fn qemu_args(device: &str, shared: bool) -> Vec<String> {
    let mut args = ram_args(shared);
    args.extend(
        [
            "-device",
            &format!("pcie-root-port,id=rp1,bus=pcie.0,addr={ROOT_PORT_SLOT:#x},chassis=1"),
            "-device",
            device,
        ]
        .iter()
        .map(|arg| arg.to_string()),
    );
    args
}

/// Guest RAM in a shared memfd the server maps (`shared`), or none: QEMU's default private
/// RAM, which the server reaches by DMA_READ/DMA_WRITE messages.
pub(super) fn ram_args(shared: bool) -> Vec<String> {
    if shared {
        [
            "-object",
            "memory-backend-memfd,id=mem0,size=512M,share=on",
            "-numa",
            "node,memdev=mem0",
        ]
        .iter()
        .map(|arg| arg.to_string())
        .collect()
    } else {
        Vec::new()
    }
}

/// Checks what the guest of `plan` printed; returns how many checks passed.
fn check_boot(console: &Console, layout: &Layout, plan: &Plan) -> Result<usize, GuestError> {
    let report = Report::parse(console)?;
    let boot = plan.boot;
    let (mmio, dma, irq) = (&report.mmio, &report.dma, &report.irq);
    let (scratch_at_boot, nvram_at_boot) = if boot == 1 {
        (
            "SCRATCH of a fresh server at boot",
            "NVRAM of a fresh server at boot",
        )
    } else {
        (
            "SCRATCH at boot (the reset QEMU sends at start reached the function)",
            "NVRAM at boot still holds what the previous boot wrote",
        )
    };
    let results = [
        check_quiet(console),
        report.check_placement(ROOT_PORT_SLOT),
        report.check_config(layout),
        report.check_bars(layout),
        check_command(mmio),
        check_register(mmio, "id", ID_VALUE, "BAR0 ID"),
        check_register(mmio, "scratch_at_boot", 0, scratch_at_boot),
        check_register(mmio, "nvram_at_boot", plan.nvram_at_boot, nvram_at_boot),
        check_register(mmio, "scratch", plan.scratch, "SCRATCH reads back"),
        check_register(mmio, "nvram", plan.nvram, "NVRAM reads back"),
        check_shared_memory(&report.shm, plan.seed, DMA_WORDS),
        check_dma(dma, plan.seed, DMA_WORDS),
        check_interrupt(irq),
    ];
    let mut passed = 0;
    for result in results {
        let what = result.map_err(|e| console.error(format!("boot {boot}: {e}")))?;
        eprintln!("    ok  boot {boot}: {what}");
        passed += 1;
    }
    Ok(passed)
}

/// The `-device` argument for QEMU in the chroot at `root`: the one the server `announced`,
/// with the socket's path as the chroot sees it and the device placed behind the root port `rp1`
/// (see [`Report::check_config`] for why).
fn qemu_device(announced: &Json, root: &Path) -> Result<String, String> {
    let socket = announced
        .get("socket")
        .and_then(|socket| socket.get("path"))
        .and_then(Json::as_str)
        .ok_or_else(|| format!("no socket path in `{announced}`"))?;
    let inside = Path::new(socket).strip_prefix(root).map_err(|_| {
        format!(
            "the socket {socket} is outside the chroot {}",
            root.display()
        )
    })?;
    if !Path::new(socket).exists() {
        return Err(format!(
            "the server announced {socket}, which does not exist"
        ));
    }
    let mut device = announced.clone();
    let mut socket_json = device.get("socket").cloned().unwrap_or(Json::Null);
    socket_json.set("path", Json::String(format!("/{}", inside.display())));
    device.set("socket", socket_json);
    device.set("bus", Json::String("rp1".into()));
    Ok(device.to_string())
}

/// QEMU printed nothing on its standard error: the vfio-user client reports protocol trouble
/// (a failed region access, a refused interrupt set-up) there, and carries on.
fn check_quiet(console: &Console) -> Result<String, String> {
    match console.qemu_stderr().trim() {
        "" => Ok("QEMU printed no warnings or errors".into()),
        said => Err(format!("QEMU printed on its standard error:\n{said}")),
    }
}

/// The running `vfio-variant serve`, its directories inside the chroot, and its log.
///
/// Dropping it kills the server if it still runs and removes its directories.
struct Server {
    /// The server process.
    child: Child,
    /// `CHROOT/tmp/vfio-variant-e2e-<pid>`: the run and state directories are inside.
    base: PathBuf,
    /// Its run directory (sockets).
    run_dir: PathBuf,
    /// Where its standard error goes.
    log: PathBuf,
}

impl Server {
    /// Starts the server with fresh directories under the chroot's `/tmp` and waits until it has
    /// announced its functions; returns it with the `-device` argument (parsed) it printed for
    /// [`FUNCTION`].
    fn start(binary: &Path, root: &Path) -> Result<(Server, Json), String> {
        let tmp = root.join("tmp");
        remove_stale(&tmp);
        let base = tmp.join(format!("vfio-variant-e2e-{}", std::process::id()));
        if base.exists() {
            fs::remove_dir_all(&base)
                .map_err(|e| format!("cannot remove {}: {e}", base.display()))?;
        }
        let (run_dir, state_dir) = (base.join("run"), base.join("state"));
        for dir in [&run_dir, &state_dir] {
            fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        let log = std::env::temp_dir().join(format!(
            "vfio-variant-e2e-server-{}.log",
            std::process::id()
        ));
        let stderr =
            fs::File::create(&log).map_err(|e| format!("cannot create {}: {e}", log.display()))?;
        let level = std::env::var("VFIO_VARIANT_LOG").unwrap_or_else(|_| "debug".into());
        let mut command = Command::new(binary);
        command
            .arg("--run-dir")
            .arg(&run_dir)
            .arg("--state-dir")
            .arg(&state_dir)
            .arg("serve")
            .env("VFIO_VARIANT_LOG", &level)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr);
        eprintln!(
            "==> starting the server (log level {level}, log in {})",
            log.display()
        );
        let mut child = command
            .spawn()
            .map_err(|e| format!("cannot start {command:?}: {e}"))?;
        let lines = match child.stdout.take() {
            Some(stdout) => forward_lines(stdout),
            None => {
                let _ = child.kill();
                let _ = child.wait();
                return Err("the server's standard output is not a pipe".into());
            }
        };
        let mut server = Server {
            child,
            base,
            run_dir,
            log,
        };
        match server.wait_for_announcement(&lines) {
            Ok(device) => Ok((server, device)),
            Err(e) => Err(format!("{e}\n{}", server.log_text())),
        }
    }

    /// Reads the server's announcement: `vfio-variant: serving N function(s); ...`, then one
    /// `NAME  -device '{json}'` line per function. Returns the parsed JSON of [`FUNCTION`].
    fn wait_for_announcement(&mut self, lines: &Receiver<String>) -> Result<Json, String> {
        let deadline = Instant::now() + START_TIMEOUT;
        let mut functions: Option<usize> = None;
        let mut devices = Vec::new();
        while functions.is_none_or(|count| devices.len() < count) {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match lines.recv_timeout(left) {
                Ok(line) => line,
                Err(RecvTimeoutError::Timeout) => {
                    return Err(format!(
                        "the server announced no functions within {} s",
                        START_TIMEOUT.as_secs()
                    ));
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self
                        .child
                        .wait()
                        .map_or_else(|e| format!("unknown: {e}"), |s| s.to_string());
                    return Err(format!(
                        "the server exited ({status}) before announcing its functions"
                    ));
                }
            };
            match functions {
                None => {
                    functions = line
                        .strip_prefix("vfio-variant: serving ")
                        .and_then(|rest| rest.split_whitespace().next())
                        .and_then(|count| count.parse().ok());
                }
                Some(_) => devices.push(line),
            }
        }
        let Some((_, argument)) = devices.iter().find_map(|line| {
            let (name, rest) = line.split_once(char::is_whitespace)?;
            (name == FUNCTION).then_some((name, rest.trim()))
        }) else {
            return Err(format!(
                "the server does not serve `{FUNCTION}`; it announced:\n{}",
                devices.join("\n")
            ));
        };
        let json = argument
            .strip_prefix("-device '")
            .and_then(|rest| rest.strip_suffix('\''))
            .ok_or_else(|| {
                format!("`{FUNCTION}` is announced without `-device '...'`: {argument}")
            })?;
        let device = Json::parse(json)
            .map_err(|e| format!("the -device argument of `{FUNCTION}`: {e}: {json}"))?;
        if device.get("driver").and_then(Json::as_str) != Some("vfio-user-pci") {
            return Err(format!(
                "`{FUNCTION}` is not a vfio-user-pci device: {json}"
            ));
        }
        eprintln!("==> the server serves {FUNCTION}: -device '{json}'");
        Ok(device)
    }

    /// Stops the server with SIGTERM; checks it exits 0 and removes its sockets. Returns the
    /// number of checks passed.
    fn stop(&mut self) -> Result<usize, String> {
        output(
            "send SIGTERM to the server",
            Command::new("kill")
                .args(["-TERM", &self.child.id().to_string()])
                .stdin(Stdio::null()),
        )?;
        let deadline = Instant::now() + STOP_TIMEOUT;
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() < deadline => thread::sleep(POLL),
                Ok(None) => {
                    return Err(format!(
                        "the server did not stop within {} s of SIGTERM",
                        STOP_TIMEOUT.as_secs()
                    ));
                }
                Err(e) => return Err(format!("waiting for the server failed: {e}")),
            }
        };
        if !status.success() {
            return Err(format!("the server exited with {status} after SIGTERM"));
        }
        eprintln!("    ok  the server stopped on SIGTERM with {status}");
        let entries = fs::read_dir(&self.run_dir)
            .map_err(|e| format!("cannot list {}: {e}", self.run_dir.display()))?;
        let left: Vec<String> = entries
            .flatten()
            .filter(|entry| entry.file_type().is_ok_and(|kind| kind.is_socket()))
            .map(|entry| entry.path().display().to_string())
            .collect();
        if !left.is_empty() {
            return Err(format!(
                "the server left its sockets behind: {}",
                left.join(", ")
            ));
        }
        eprintln!("    ok  the server removed its sockets");
        Ok(2)
    }

    /// The server's log, between markers, for failure messages.
    fn log_text(&self) -> String {
        let text = fs::read(&self.log)
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_else(|e| format!("(cannot read it: {e})"));
        format!(
            "--- server log ({}) ---\n{}\n--- end of server log ---",
            self.log.display(),
            text.trim_end()
        )
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if let Err(e) = fs::remove_dir_all(&self.base) {
            eprintln!("xtask: warning: cannot remove {}: {e}", self.base.display());
        }
    }
}

/// Sends each line read from `stream` over the returned channel, from a thread that reads until
/// the end of the stream (so the writer never blocks on a full pipe).
fn forward_lines(stream: impl std::io::Read + Send + 'static) -> Receiver<String> {
    let (sender, receiver) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            // The receiver stops listening once the server is up; later lines are dropped.
            let _ = sender.send(line);
        }
    });
    receiver
}

/// Removes the directories of earlier runs in the chroot's `tmp` whose process is gone.
fn remove_stale(tmp: &Path) {
    let Ok(entries) = fs::read_dir(tmp) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix("vfio-variant-e2e-") else {
            continue;
        };
        if pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists() {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}
