//! The nested part of `cargo xtask e2e`: a real function through kernel VFIO, one VM level down.
//!
//! L1 boots under TCG with QEMU's emulated Intel IOMMU and an nvme (a disk image on this host)
//! behind a root port; `-cpu max` gives it SVM, so L1 runs its own guests (L2) under KVM with the
//! chroot's QEMU, shared read-only over 9p. In one L1 boot (`nested/init.sh`):
//!
//! - the nvme is bound to vfio-pci, and a layout is derived from it (`vpci derive --sysfs`);
//!   `vpci compat` of it and `catalog/qemu-nvme.toml` (the nvme's capabilities relaid: PCIe
//!   and MSI-X moved, PM hidden, a vendor capability added) must list those four differences;
//! - baseline: L2 through QEMU's own `-device vfio-pci,host=...`;
//! - `vfio-variant serve` (a static build) exposes the nvme with the passthrough backend under
//!   `catalog/qemu-nvme.toml`, and L2 boots twice with `vfio-user-pci` to it (guest RAM in a
//!   shared memfd); during the second boot, `destroy` of the attached function must be refused.
//!
//! Each L2 (`nested/l2.sh`) runs the unmodified nvme driver: it reads the disk's first MiB and
//! writes a MiB of random data at its own slot, both with O_DIRECT, and reads it back. The host
//! then checks, per L2 boot: the first MiB's md5 equals the image's; the slot in the image on this
//! host holds what L2 wrote; the nvme's interrupts rose. Through vfio-user also: the config space
//! L2 read equals the catalog file in every read-only bit.
//!
//! Also: L2's QEMU maps the VFIO device fd the server handed out (BAR pages bypass the
//! server); `destroy` works once L2 has left, and the server exits 0. L0 also has an igb with
//! SR-IOV ([`check_vf`]): L1 makes a VF and leaves it unbound, and tells the server about the
//! PF, so `types` offers the VF. A create with a rate the PF refuses fails naming it and leaves
//! MAC and binding as they were. Create then binds the VF to vfio-pci and sets a MAC, VLAN 5 and
//! a rate on the PF over rtnetlink (read back with iproute2's `ip link show`, from this host);
//! the second vfio-user L2 also gets the VF: its unmodified igbvf driver must report that MAC and
//! get replies to pings of L1's VLAN 5 interface on the PF. Destroy must unbind the VF and put
//! its settings back.
//!
//! The whole L1 boot took about 130-150 s wall on an idle 2-core host, and up to 10 minutes with
//! other builds running. `cargo xtask bench` boots it once more with release builds and
//! `blkbench` in each L2 ([`bench()`]); while blkbench runs, L1 samples the server's threads
//! (CPU time and wake-ups, `bench_thread:` lines), and the second vfio-user boot runs QEMU with
//! vfio trace events (`bench_trace:` lines: messages to the server by kind, BAR accesses QEMU
//! trapped, interrupts QEMU handled itself, and where it mmapped the device's regions).

use std::fmt::Write as _;
use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::blkbench::{Figures, field};
use super::chroot::{self, Kernel};
use super::guest::{Console, Guest, GuestError};
use super::initramfs::{Initramfs, Source};
use super::output;
use super::server::checks::{Fields, Layout, compare_config, decode_hex};
use super::server::require_root;
use super::vfio::build_static_bin;

/// L1's `/init`.
const INIT: &str = include_str!("nested/init.sh");
/// L2's `/init`.
const L2_INIT: &str = include_str!("nested/l2.sh");
/// The instance type the nvme is served under: the device's capabilities relaid.
const NVME_TYPE: &str = include_str!("../../../catalog/qemu-nvme.toml");

/// The disk image: its size, and the first MiB filled with a known pattern.
const IMAGE_MIB: u64 = 16;
const MIB: usize = 1 << 20;

/// L1's RAM: its own, and L2's 256 MiB.
const L1_MEMORY_MIB: u32 = 1536;
/// How long L1 may run (three L2 boots under TCG).
const L1_TIMEOUT: Duration = Duration::from_secs(900);

/// The MAC the igb VF gets through its PF before it is exposed.
const VF_MAC: &str = "52:54:00:ab:cd:01";
/// Its VLAN and most transmit rate (Mb/s), as `ip link show` prints them.
const VF_VLAN: &str = "vlan 5";
const VF_RATE: &str = "max_tx_rate 100Mbps";
/// The MAC of the create the PF refuses (a minimum rate igb does not take).
const REFUSED_MAC: &str = "52:54:00:ab:cd:02";

/// The L2 boots: section name, the disk slot (MiB) it writes, whether it goes through the server.
const BOOTS: [(&str, u64, bool); 3] = [
    ("baseline", 1, false),
    ("user1", 2, true),
    ("user2", 3, true),
];

/// The first MiB of the image: a fixed pseudo-random pattern.
fn pattern() -> Vec<u8> {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    (0..MIB)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

/// The md5 of `bytes`, by `md5sum`.
fn md5(bytes: &[u8], scratch: &Path) -> Result<String, String> {
    fs::write(scratch, bytes).map_err(|e| format!("{}: {e}", scratch.display()))?;
    let out = output("md5sum", Command::new("md5sum").arg(scratch))?;
    let _ = fs::remove_file(scratch);
    out.split_whitespace()
        .next()
        .map(str::to_string)
        .ok_or_else(|| "md5sum printed nothing".into())
}

/// The disk image inside the chroot: (host path, path as QEMU in the chroot sees it).
fn make_image(root: &Path) -> Result<(PathBuf, String), String> {
    let inside = format!("/tmp/vfio-variant-nested-{}.img", std::process::id());
    let host = root.join(inside.trim_start_matches('/'));
    let mut file = fs::File::create(&host).map_err(|e| format!("{}: {e}", host.display()))?;
    file.write_all(&pattern())
        .and_then(|()| file.set_len(IMAGE_MIB * MIB as u64))
        .map_err(|e| format!("{}: {e}", host.display()))?;
    Ok((host, inside))
}

fn read_slot(image: &Path, slot: u64) -> Result<Vec<u8>, String> {
    let mut file = fs::File::open(image).map_err(|e| format!("{}: {e}", image.display()))?;
    let mut data = vec![0u8; MIB];
    file.seek(SeekFrom::Start(slot * MIB as u64))
        .and_then(|_| file.read_exact(&mut data))
        .map_err(|e| format!("{}: {e}", image.display()))?;
    Ok(data)
}

/// Removes the image however the run ends.
struct ImageFile(PathBuf);

impl Drop for ImageFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

/// Checks one L2 boot; returns the checks passed.
fn check_boot(
    console: &Console,
    name: &'static str,
    slot: u64,
    layout: Option<&Layout>,
    image: &Path,
    first_md5: &str,
) -> Result<usize, GuestError> {
    let lines = console.section(name)?;
    let fields = Fields::new(name, &lines);
    let fail = |what: String| console.error(format!("{name}: {what}"));
    let field = |key: &str| fields.text(key).map(str::to_string).map_err(&fail);
    if field("l2_done")? != "1" {
        return Err(fail("L2 did not finish".into()));
    }
    let driver = field("driver")?;
    if driver != "nvme" {
        return Err(fail(format!(
            "the function is bound to `{driver}` in L2, not nvme"
        )));
    }
    let read = field("read_md5")?;
    if read != first_md5 {
        return Err(fail(format!(
            "L2 read {read} from the first MiB, the image on L0 holds {first_md5}"
        )));
    }
    eprintln!(
        "    ok  {name}: unmodified nvme driver reads the image's first MiB (O_DIRECT, md5 {read})"
    );
    let written = field("written_md5")?;
    let back = field("readback_md5")?;
    let scratch = image.with_extension(format!("{name}.slot"));
    let on_disk = read_slot(image, slot)
        .and_then(|d| md5(&d, &scratch))
        .map_err(&fail)?;
    if written != back || written != on_disk {
        return Err(fail(format!(
            "L2 wrote {written} at MiB {slot}, read back {back}; the image on L0 holds {on_disk}"
        )));
    }
    eprintln!("    ok  {name}: what L2 wrote at MiB {slot} (O_DIRECT) is in the image on L0");
    let (before, after) = (
        fields.number("irq_before").map_err(&fail)?,
        fields.number("irq_after").map_err(&fail)?,
    );
    if after <= before {
        return Err(fail(format!(
            "nvme interrupts did not rise: {before} -> {after}"
        )));
    }
    eprintln!("    ok  {name}: nvme interrupts {before} -> {after}");
    let maps = fields.number("bar_mmaps").map_err(&fail)?;
    if maps == 0 {
        return Err(fail(
            "L2's QEMU has no mapping of the VFIO device: BAR accesses are not direct".into(),
        ));
    }
    eprintln!("    ok  {name}: L2's QEMU maps {maps} range(s) of the VFIO device fd");
    let mut passed = 4;
    if let Some(layout) = layout {
        let config = decode_hex(&field("config")?).map_err(&fail)?;
        let what = compare_config(&config, layout).map_err(&fail)?;
        eprintln!("    ok  {name}: {what}");
        passed += 1;
    }
    Ok(passed)
}

fn check_bind(console: &Console) -> Result<(), GuestError> {
    let bind = console.section("bind")?;
    if !bind.contains(&"driver=vfio-pci") || !bind.contains(&"kvm=/dev/kvm") {
        return Err(console.error(format!(
            "L1 did not bind the nvme to vfio-pci or has no KVM:\n{}",
            bind.join("\n")
        )));
    }
    eprintln!("    ok  L1: nvme bound to vfio-pci behind the IOMMU, KVM for L2");
    Ok(())
}

fn check_server(console: &Console) -> Result<usize, GuestError> {
    let user2 = console.section("user2")?;
    let refused = Fields::new("user2", &user2)
        .number("destroy_attached_status")
        .map_err(|e| console.error(e))?;
    if refused == 0 {
        return Err(console.error("destroy of the attached passthrough function was not refused"));
    }
    eprintln!("    ok  destroy while L2 is attached is refused");
    let busy = Fields::new("user2", &user2)
        .number("busy_status")
        .map_err(|e| console.error(e))?;
    if busy == 0 || !user2.iter().any(|l| l.contains("is busy")) {
        return Err(
            console.error("a second open of the served device was not refused as a busy group")
        );
    }
    eprintln!("    ok  the device's group is busy for another process while served");
    let teardown = console.section("teardown")?;
    let fields = Fields::new("teardown", &teardown);
    let status = |key: &str| fields.number(key).map_err(|e| console.error(e));
    if status("destroy_status")? != 0 || status("server_status")? != 0 {
        let log = console.section("serverlog")?.join("\n");
        return Err(console.error(format!(
            "destroy or the server's exit failed:\n{}\n--- server log\n{log}",
            teardown.join("\n")
        )));
    }
    let unfit = fields
        .number("unfit_status")
        .map_err(|e| console.error(e))?;
    let named = teardown
        .iter()
        .any(|l| l.starts_with("unfit: ") && l.contains("bar[0].size"));
    let left = fields
        .number("after_unfit_instances")
        .map_err(|e| console.error(e))?;
    let free = teardown
        .iter()
        .any(|l| l.starts_with("after_unfit_type: ") && l.contains("available     1"));
    if unfit == 0 || !named || left != 0 || !free {
        return Err(console.error(format!(
            "a layout with a BAR larger than the device's was not refused cleanly:\n{}",
            teardown.join("\n")
        )));
    }
    eprintln!("    ok  a layout that does not fit is refused naming bar[0].size; nothing is left");
    let types = console.section("types")?;
    if !types.iter().any(|l| l.contains("passthrough")) {
        return Err(console.error(format!(
            "`types` lists no passthrough backend:\n{}",
            types.join("\n")
        )));
    }
    eprintln!("    ok  destroy after L2 left, and the server exits 0");
    Ok(4)
}

/// The igb VF: offered free by `types`, refused cleanly when its PF refuses a setting,
/// provisioned (MAC, VLAN, rate) and bound by create, used by L2 over its VLAN, and put back
/// (settings and binding) by destroy. Returns the checks passed.
fn check_vf(console: &Console) -> Result<usize, GuestError> {
    let section = |name: &'static str| console.section(name);
    let (vf, refused, created, user2, teardown, types) = (
        section("vf")?,
        section("vf-refused")?,
        section("vf-create")?,
        section("user2")?,
        section("teardown")?,
        section("types")?,
    );
    let all = [&vf, &refused, &created, &user2, &teardown]
        .iter()
        .flat_map(|s| s.iter().copied())
        .collect::<Vec<&str>>();
    let fields = Fields::new("vf", &all);
    let fail = |what: String| console.error(format!("igb VF: {what}\n{}", all.join("\n")));
    let text = |key: &str| fields.text(key).map_err(&fail);
    let address = text("vf")?;
    let before = text("vf_line_before")?;
    if !text("vf_driver_before")?.is_empty() || before.is_empty() {
        return Err(fail(
            "the VF is bound before create, or ip shows no VF 0".into(),
        ));
    }
    let free = types
        .iter()
        .any(|l| l.contains(address) && l.contains("available     1") && l.contains("free VF"));
    if !free {
        return Err(fail(format!(
            "`types` does not offer {address} as a free VF of the PF named in the config:\n{}",
            types.join("\n")
        )));
    }
    eprintln!("    ok  `types` offers the PF's unbound VF {address} as an available instance");
    let status = |key: &str| fields.number(key).map_err(&fail);
    let named = refused.iter().any(|l| l.contains("refused rate of VF 0"));
    if status("vf_refused_status")? == 0
        || !named
        || !text("vf_driver_refused")?.is_empty()
        || text("vf_line_refused")? != before
    {
        return Err(fail(format!(
            "a create whose minimum rate the PF refuses was not refused cleanly (MAC \
             {REFUSED_MAC} put back, VF unbound): before `{before}`"
        )));
    }
    eprintln!(
        "    ok  a rate the PF refuses fails create naming it; MAC and binding are as before"
    );
    let line = text("vf_line_created")?;
    if status("vf_create_status")? != 0 || text("vf_driver_created")? != "vfio-pci" {
        return Err(fail(
            "the free VF was not created and bound to vfio-pci".into(),
        ));
    }
    for setting in [VF_MAC, VF_VLAN, VF_RATE] {
        if !line.contains(setting) {
            return Err(fail(format!("the PF shows `{line}`, without `{setting}`")));
        }
    }
    eprintln!(
        "    ok  create bound the VF to vfio-pci; the PF shows {VF_MAC}, {VF_VLAN}, {VF_RATE}"
    );
    let mac = text("vf_mac")?;
    if mac != VF_MAC {
        return Err(fail(format!(
            "L2's igbvf reports MAC `{mac}`, not {VF_MAC} set on the PF before exposure"
        )));
    }
    eprintln!("    ok  L2's unmodified igbvf reports the MAC set through the PF: {mac}");
    let replies = status("vf_ping_replies")?;
    let received = status("pf_vlan_rx_packets")?;
    if replies == 0 || received == 0 {
        return Err(fail(format!(
            "L2 got {replies} ping replies from L1's PF over VLAN 5 (its VLAN interface \
             received {received} packets)"
        )));
    }
    eprintln!(
        "    ok  L2 pings L1's PF through the VF: {replies} replies, {received} packets on the \
         PF's VLAN 5 interface"
    );
    let after = text("vf_line_after")?;
    if status("vf_destroy_status")? != 0 || after != before || !text("vf_driver_after")?.is_empty()
    {
        return Err(fail(format!(
            "destroy did not put the VF back: `{after}` (before create: `{before}`), driver \
             `{}`",
            text("vf_driver_after")?
        )));
    }
    let free_again = teardown
        .iter()
        .any(|l| l.starts_with("after_vf_type: ") && l.contains("available     1"));
    if !free_again {
        return Err(fail(
            "`types` does not offer the VF again after destroy".into(),
        ));
    }
    eprintln!("    ok  destroy unbound the VF and put its settings back: `{after}`");
    Ok(7)
}

/// Adds this host's iproute2 `ip` (busybox's shows no VF settings) and the libraries it loads
/// under `/opt/iproute2` of an image: run as `/opt/iproute2/ld.so --library-path /opt/iproute2
/// /opt/iproute2/ip`.
fn with_host_ip(mut image: Initramfs) -> Result<Initramfs, String> {
    let ip = ["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.is_file())
        .ok_or("iproute2's `ip` is not installed on this host")?;
    let ldd = output("list the libraries of ip", Command::new("ldd").arg(ip))?;
    image = image.file("/opt/iproute2/ip", Source::Host(ip.to_path_buf()), 0o755);
    for line in ldd.lines() {
        let line = line.trim();
        // `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)`, `/lib64/ld-linux-x86-64.so.2 (0x...)`
        let (name, path) = match line.split_once(" => ") {
            Some((name, rest)) => (name.to_string(), rest.split(' ').next().unwrap_or_default()),
            None if line.starts_with('/') => (
                "ld.so".to_string(),
                line.split(' ').next().unwrap_or_default(),
            ),
            None => continue,
        };
        if !path.starts_with('/') {
            return Err(format!("ldd {}: cannot place `{line}`", ip.display()));
        }
        image = image.file(
            &format!("/opt/iproute2/{name}"),
            Source::Host(PathBuf::from(path)),
            0o755,
        );
    }
    Ok(image)
}

/// L1's console after its boot, with the image it used and the md5 of the image's first MiB.
struct L1Run {
    console: Console,
    image: ImageFile,
    first_md5: String,
}

/// Boots L1 with the static `binary`; with `blkbench`, each L2 also runs it.
fn boot(
    root: &Path,
    kernel: &Kernel,
    binary: &Path,
    blkbench: Option<&Path>,
) -> Result<L1Run, String> {
    let (image, image_inside) = make_image(root)?;
    let image = ImageFile(image);
    let first_md5 = md5(&pattern(), &image.0.with_extension("first"))?;
    let mut l2 = Initramfs::new(L2_INIT).module("nvme").module("igbvf");
    if let Some(blkbench) = blkbench {
        l2 = l2.file("/bin/blkbench", Source::Host(blkbench.to_path_buf()), 0o755);
    }
    let l2_initrd = l2.build(root, kernel)?;
    let initrd = with_host_ip(Initramfs::new(INIT))?
        .file(
            "/etc/qemu-nvme.toml",
            Source::Bytes(NVME_TYPE.into()),
            0o644,
        )
        .module("8021q")
        .module("vfio-pci")
        .module("vfio_iommu_type1")
        .module("kvm-amd")
        .module("9p")
        .module("9pnet_virtio")
        .module("igb")
        .file(
            "/bin/vfio-variant",
            Source::Host(binary.to_path_buf()),
            0o755,
        )
        .build(root, kernel)?;
    let console = Guest::new(root, "e2e-nested", kernel, &initrd)
        .memory(L1_MEMORY_MIB)
        .append("intel_iommu=on")
        .append(&format!("e2e.kernel={}", kernel.image))
        .append(&format!("e2e.l2initrd={l2_initrd}"))
        .append(&format!("e2e.bench={}", u8::from(blkbench.is_some())))
        .args([
            "-cpu",
            "max",
            "-device",
            "intel-iommu",
            "-device",
            "pcie-root-port,id=rp1,bus=pcie.0,chassis=1",
            "-drive",
            &format!("file={image_inside},if=none,id=d0,format=raw,cache=none"),
            "-device",
            "nvme,drive=d0,serial=vv-nested,bus=rp1",
            "-device",
            "pcie-root-port,id=rp2,bus=pcie.0,chassis=2",
            "-netdev",
            "user,id=n0",
            "-device",
            "igb,netdev=n0,bus=rp2",
            "-virtfs",
            "local,path=/,mount_tag=root,security_model=none,readonly=on",
        ])
        .timeout(L1_TIMEOUT)
        .run()
        .map_err(String::from)?;
    Ok(L1Run {
        console,
        image,
        first_md5,
    })
}

/// Checks everything L1 printed; returns the number of checks passed.
fn check(run: &L1Run) -> Result<usize, GuestError> {
    let console = &run.console;
    check_bind(console)?;
    let layout_lines = console.section("layout")?;
    if !layout_lines.contains(&"status=0") {
        return Err(console.error(format!("vpci derive failed:\n{}", layout_lines.join("\n"))));
    }
    let compat = console.section("compat")?;
    let relaid = [
        "capability MSI-X moved from 0x40 to 0x90",
        "capability Express moved from 0x80 to 0x40",
        "capability Power Management at 0x60 only in the first layout",
        "capability Vendor Specific at 0xa0 only in the second layout",
    ];
    if !relaid.iter().all(|d| compat.iter().any(|l| l.contains(d))) {
        return Err(console.error(format!(
            "the nvme's instance type does not differ from the device as catalog/qemu-nvme.toml \
             says:\n{}",
            compat.join("\n")
        )));
    }
    eprintln!(
        "    ok  the nvme is served as catalog/qemu-nvme.toml: PCIe and MSI-X moved, PM hidden, a \
         vendor capability added"
    );
    let json = console.section("layout-json")?.join("\n");
    let layout = Layout::from_check_json(&json)
        .map_err(|e| console.error(format!("vpci check --json: {e}\n{json}")))?;
    let mut passed = 2;
    let mut summary = String::new();
    for (name, slot, through_server) in BOOTS {
        passed += check_boot(
            console,
            name,
            slot,
            through_server.then_some(&layout),
            &run.image.0,
            &run.first_md5,
        )?;
        let _ = write!(summary, " {name}");
    }
    passed += check_server(console)?;
    passed += check_vf(console)?;
    eprintln!("    ok  nested L2 boots:{summary}");
    Ok(passed)
}

/// Boots L1 with a static release build of `vfio-variant` (a debug build under TCG makes each
/// vfio-user L2 boot minutes longer) and checks everything; returns the number of checks passed.
pub fn run(root: &Path, kernel: &Kernel) -> Result<usize, String> {
    let binary = build_static_bin("vfio-variant-backends", "vfio-variant", true)?;
    let run = boot(root, kernel, &binary, None)?;
    check(&run).map_err(String::from)
}

/// The figures of `cargo xtask bench` from the nested setup.
#[derive(Debug, Clone, Copy)]
pub struct BenchResults {
    /// L2 through `vfio-user-pci` and the passthrough function: the mean of the two vfio-user
    /// boots.
    pub user: Figures,
    /// L2 through QEMU's own vfio-pci, in the same L1 boot: the mean of the boot before the
    /// vfio-user ones and the one after them.
    pub baseline: Figures,
    /// CPU seconds the server used while the vfio-user L2s ran blkbench (sampled each second
    /// by L1).
    pub server_cpu: f64,
    /// CPU seconds those L2s' QEMU used in the same windows.
    pub qemu_cpu: f64,
    /// CPU seconds the server used during the first vfio-user L2 boot (mapping its RAM
    /// included).
    pub server_cpu_boot: f64,
    /// CPU seconds L2's QEMU used in it.
    pub qemu_cpu_boot: f64,
}

/// The blkbench figures an L2 boot printed.
fn figures(console: &Console, name: &'static str) -> Result<Figures, GuestError> {
    let lines = console.section(name)?;
    let line = lines.iter().find(|l| l.starts_with("BLKBENCH "));
    line.and_then(|l| {
        Some(Figures {
            randread_iops: field(l, "randread_iops")?.parse().ok()?,
            seq_mbps: field(l, "seq_mbps")?.parse().ok()?,
        })
    })
    .ok_or_else(|| console.error(format!("`{name}`: no figures from blkbench")))
}

/// The mean of two boots' figures.
fn mean(a: Figures, b: Figures) -> Figures {
    Figures {
        randread_iops: (a.randread_iops + b.randread_iops) / 2.0,
        seq_mbps: (a.seq_mbps + b.seq_mbps) / 2.0,
    }
}

/// Boots L1 with release builds and blkbench in every L2, checks it as the e2e does (and the
/// second baseline boot), and returns the figures (needs root).
pub fn bench() -> Result<BenchResults, String> {
    require_root()?;
    let root = chroot::ensure_chroot()?;
    let root = fs::canonicalize(&root)
        .map_err(|e| format!("cannot resolve the chroot {}: {e}", root.display()))?;
    let kernel = super::kernels::sid(&root)?;
    let binary = build_static_bin("vfio-variant-backends", "vfio-variant", true)?;
    let blkbench = build_static_bin("xtask", "blkbench", true)?;
    let run = boot(&root, &kernel, &binary, Some(&blkbench))?;
    let results = || -> Result<BenchResults, GuestError> {
        check(&run)?;
        let console = &run.console;
        check_boot(console, "baseline2", 4, None, &run.image.0, &run.first_md5)?;
        let user1 = console.section("user1")?;
        let fields = Fields::new("user1", &user1);
        let ticks = fields
            .number("server_ticks")
            .map_err(|e| console.error(e))?;
        // `time` prints `qemu_seconds=.. qemu_cpu_seconds=USER+SYS` on one line.
        let qemu = user1
            .iter()
            .find_map(|l| field(l, "qemu_cpu_seconds"))
            .ok_or_else(|| console.error("user1: no qemu_cpu_seconds"))?;
        let qemu_cpu = qemu
            .split('+')
            .map(|t| t.parse::<f64>().ok())
            .sum::<Option<f64>>()
            .ok_or_else(|| console.error(format!("qemu_cpu_seconds={qemu}")))?;
        // /proc/PID/stat counts in USER_HZ, 100 a second.
        let (mut server, mut qemu) = (0, 0);
        for name in ["user1", "user2"] {
            let lines = console.section(name)?;
            let fields = Fields::new(name, &lines);
            let number = |key: &str| fields.number(key).map_err(|e| console.error(e));
            server += number("bench_server_ticks")?;
            qemu += number("bench_qemu_ticks")?;
        }
        let boots: Vec<(&str, Figures)> = ["baseline", "user1", "user2", "baseline2"]
            .into_iter()
            .map(|name| figures(console, name).map(|f| (name, f)))
            .collect::<Result<_, _>>()?;
        for (name, f) in &boots {
            eprintln!(
                "    {name}: {:.1} IOPS 4 KiB random reads, {:.1} MB/s sequential",
                f.randread_iops, f.seq_mbps
            );
        }
        Ok(BenchResults {
            user: mean(boots[1].1, boots[2].1),
            baseline: mean(boots[0].1, boots[3].1),
            server_cpu: server as f64 / 100.0,
            qemu_cpu: qemu as f64 / 100.0,
            server_cpu_boot: ticks as f64 / 100.0,
            qemu_cpu_boot: qemu_cpu,
        })
    };
    results().map_err(String::from)
}
