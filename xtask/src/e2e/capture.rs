//! `cargo xtask capture-configs [OUT_DIR]`: real PCI config spaces of QEMU's emulated devices, as
//! test data.
//!
//! Boots a q35 guest with the devices of [`DEVICES`] (PCIe ones behind `pcie-root-port`s), whose
//! `/init` prints each PCI function's sysfs `config` (hex) and `resource` between markers, and one
//! igb virtual function after enabling SR-IOV. The host writes, per device,
//! `OUT_DIR/<name>/config` (the raw bytes) and `OUT_DIR/<name>/resource` (verbatim), and a
//! `README` saying how they were captured. `OUT_DIR` defaults to `framework/tests/data/pci`.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

mod dump;

use self::dump::{Dump, check, find_device, parse_dump, write_device};
use super::chroot;
use super::guest::Guest;
use super::initramfs::{Initramfs, Source};
use super::output;
use crate::cmd::workspace_root;

/// The usage line of this command.
const USAGE: &str = "usage: cargo xtask capture-configs [OUT_DIR]";

/// The first slot on bus 0 used for the devices: device `i` (or its root port) sits at `i + 2`.
const FIRST_SLOT: usize = 2;

/// How long the capture guest may run.
const TIMEOUT: Duration = Duration::from_secs(600);

/// One device attached to the capture guest.
struct Device {
    /// Its directory under `OUT_DIR`.
    name: &'static str,
    /// The QEMU `-device` driver and properties (without bus, address and drive).
    qemu: &'static str,
    /// Whether it sits behind a `pcie-root-port` (a PCIe function with 4096 bytes of config).
    express: bool,
    /// Whether it needs a block backend (a null-co one is attached).
    drive: bool,
    /// The vendor ID it must report.
    vendor: u16,
    /// The device ID it must report.
    device: u16,
}

/// The devices captured, in slot order.
const DEVICES: &[Device] = &[
    Device {
        name: "virtio-blk-pci-legacy",
        qemu: "virtio-blk-pci,disable-modern=on",
        express: false,
        drive: true,
        vendor: 0x1af4,
        device: 0x1001,
    },
    Device {
        name: "virtio-net-pci-legacy",
        qemu: "virtio-net-pci,disable-modern=on",
        express: false,
        drive: false,
        vendor: 0x1af4,
        device: 0x1000,
    },
    Device {
        name: "edu",
        qemu: "edu",
        express: false,
        drive: false,
        vendor: 0x1234,
        device: 0x11e8,
    },
    Device {
        name: "virtio-net-pci-transitional",
        qemu: "virtio-net-pci,disable-legacy=off,disable-modern=off",
        express: true,
        drive: false,
        vendor: 0x1af4,
        device: 0x1000,
    },
    Device {
        name: "virtio-blk-pci-modern",
        qemu: "virtio-blk-pci,disable-legacy=on",
        express: true,
        drive: true,
        vendor: 0x1af4,
        device: 0x1042,
    },
    Device {
        name: "virtio-net-pci-modern",
        qemu: "virtio-net-pci,disable-legacy=on",
        express: true,
        drive: false,
        vendor: 0x1af4,
        device: 0x1041,
    },
    Device {
        name: "igb",
        qemu: "igb",
        express: true,
        drive: false,
        vendor: 0x8086,
        device: 0x10c9,
    },
    Device {
        name: "e1000e",
        qemu: "e1000e",
        express: true,
        drive: false,
        vendor: 0x8086,
        device: 0x10d3,
    },
    Device {
        name: "nvme",
        qemu: "nvme,serial=vfio-variant",
        express: true,
        drive: true,
        vendor: 0x1b36,
        device: 0x0010,
    },
    Device {
        name: "qemu-xhci",
        qemu: "qemu-xhci",
        express: true,
        drive: false,
        vendor: 0x1b36,
        device: 0x000d,
    },
];

/// The igb virtual function: its directory, and the vendor and device IDs it may report (a VF's
/// ID registers may read as all ones, as the SR-IOV spec has it).
const VF: (&str, &[u16], &[u16]) = ("igbvf", &[0x8086, 0xffff], &[0x10ca, 0xffff]);

/// Prints one PCI function between markers: `dump-pci NAME SYSFS_DIR`.
const DUMP_PCI: &str = r#"#!/bin/sh
name=$1
d=$2
echo "=== BEGIN $name ==="
echo "path=$(readlink -f "$d")"
echo "vendor=$(cat "$d/vendor")"
echo "device=$(cat "$d/device")"
echo "class=$(cat "$d/class")"
if [ -e "$d/driver" ]; then
    echo "driver=$(basename "$(readlink "$d/driver")")"
else
    echo "driver=none"
fi
echo "size=$(wc -c < "$d/config")"
echo "--- config"
hexdump -v -e '16/1 "%02x " "\n"' "$d/config"
echo "--- resource"
cat "$d/resource"
echo "=== END $name ==="
"#;

/// The guest's `/init`: every PCI function before any driver touches it, then igb's first VF.
const INIT: &str = r#"#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sysfs /sys
dmesg -n 1
echo "=== BEGIN info ==="
echo "kernel=$(uname -r)"
echo "=== END info ==="
for d in /sys/bus/pci/devices/*; do
    dump-pci "dev $(basename "$d")" "$d"
done
pf=
for d in /sys/bus/pci/devices/*; do
    if [ "$(cat "$d/vendor"):$(cat "$d/device")" = 0x8086:0x10c9 ]; then pf=$d; fi
done
if [ -n "$pf" ] && load-modules && echo 1 > "$pf/sriov_numvfs"; then
    dump-pci vf "$pf/virtfn0"
    echo 0 > "$pf/sriov_numvfs"
else
    echo "capture: could not enable a VF of igb ($pf)"
fi
echo "=== BEGIN done ==="
echo "=== END done ==="
poweroff -f
"#;

/// One function captured: where it goes, what QEMU device it is, where the guest saw it.
struct Captured<'a> {
    /// Its directory under `OUT_DIR`.
    name: &'static str,
    /// The QEMU device it is (for the README).
    qemu: &'static str,
    /// Its address in the guest.
    bdf: String,
    /// What the guest printed for it.
    dump: Dump<'a>,
}

/// Runs `cargo xtask capture-configs [OUT_DIR]`.
pub fn run(args: &[String]) -> Result<(), String> {
    let out_dir = match args {
        [] => workspace_root().join("framework/tests/data/pci"),
        [dir] if !dir.starts_with('-') => PathBuf::from(dir),
        _ => return Err(USAGE.to_string()),
    };
    let started = Instant::now();
    let root = chroot::ensure_chroot()?;
    let kernel = super::kernels::sid(&root)?;
    let initrd = Initramfs::new(INIT)
        .file("/bin/dump-pci", Source::Bytes(DUMP_PCI.into()), 0o755)
        .module("igb")
        .build(&root, &kernel)?;
    let guest = Guest::new(&root, "capture-configs", &kernel, &initrd)
        // Keeps the built-in virtio-pci driver off the virtio devices, so that their config
        // spaces are as the firmware left them.
        .append("initcall_blacklist=virtio_pci_driver_init")
        .args(qemu_args())
        .timeout(TIMEOUT);
    let console = guest.run()?;
    console.section("done")?;

    let mut captured = Vec::new();
    for (slot, device) in DEVICES.iter().enumerate() {
        let (bdf, dump) = find_device(&console, slot + FIRST_SLOT, device.express)
            .map_err(|e| console.error(format!("{}: {e}", device.name)))?;
        let size = if device.express { 4096 } else { 256 };
        check(&dump, size, &[device.vendor], &[device.device])
            .map_err(|e| console.error(format!("{} ({bdf}): {e}", device.name)))?;
        captured.push(Captured {
            name: device.name,
            qemu: device.qemu,
            bdf,
            dump,
        });
    }
    let (vf_name, vf_vendors, vf_devices) = VF;
    let vf = parse_dump(&console.section("vf")?)
        .map_err(|e| console.error(format!("section vf: {e}")))?;
    check(&vf, 4096, vf_vendors, vf_devices)
        .map_err(|e| console.error(format!("{vf_name}: {e}")))?;
    captured.push(Captured {
        name: vf_name,
        qemu: "VF 0 of igb",
        bdf: vf.path.rsplit('/').next().unwrap_or_default().to_string(),
        dump: vf,
    });

    fs::create_dir_all(&out_dir)
        .map_err(|e| format!("cannot create {}: {e}", out_dir.display()))?;
    for function in &captured {
        write_device(&out_dir.join(function.name), &function.dump)?;
    }
    let guest_kernel = console
        .section("info")?
        .iter()
        .find_map(|line| line.strip_prefix("kernel="))
        .unwrap_or(&kernel.release)
        .to_string();
    let readme = readme(&root, &guest_kernel, &guest, &captured)?;
    let readme_path = out_dir.join("README");
    fs::write(&readme_path, readme)
        .map_err(|e| format!("cannot write {}: {e}", readme_path.display()))?;
    for function in &captured {
        eprintln!(
            "    {:<28} {}  {} bytes",
            function.name,
            function.bdf,
            function.dump.config.len()
        );
    }
    eprintln!(
        "==> captured {} config spaces into {} in {:.0} s",
        captured.len(),
        out_dir.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The QEMU arguments that attach [`DEVICES`]: device `i` (or its root port) at slot `i + 2` of
/// bus 0, each drive a null-co block backend reading zeros.
fn qemu_args() -> Vec<String> {
    let mut args = Vec::new();
    for (i, device) in DEVICES.iter().enumerate() {
        let slot = i + FIRST_SLOT;
        let mut spec = device.qemu.to_string();
        if device.drive {
            args.push("-blockdev".to_string());
            args.push(format!("driver=null-co,node-name=drive{i},read-zeroes=on"));
            let _ = write!(spec, ",drive=drive{i}");
        }
        if device.express {
            args.push("-device".to_string());
            args.push(format!(
                "pcie-root-port,id=rp{slot},bus=pcie.0,addr={slot:#x},chassis={slot}"
            ));
            let _ = write!(spec, ",bus=rp{slot}");
        } else {
            let _ = write!(spec, ",bus=pcie.0,addr={slot:#x}");
        }
        args.push("-device".to_string());
        args.push(spec);
    }
    args
}

/// The README of the output directory: how the files were captured, and what each one is.
fn readme(
    root: &Path,
    guest_kernel: &str,
    guest: &Guest,
    captured: &[Captured],
) -> Result<String, String> {
    let qemu = chroot::qemu_version(root)?;
    let machines = output(
        "list the chroot's QEMU machine types",
        Command::new("chroot")
            .arg(root)
            .args(["qemu-system-x86_64", "-machine", "help"]),
    )?;
    let machine = machines
        .lines()
        .find(|line| line.starts_with("q35 "))
        .and_then(|line| line.split("(alias of ").nth(1))
        .map_or("q35".to_string(), |alias| {
            format!("q35 ({})", alias.trim_end_matches(')'))
        });
    let date = output(
        "ask for the date",
        Command::new("date").args(["-u", "+%Y-%m-%d"]),
    )?;

    let mut text = String::new();
    let _ = write!(
        text,
        "PCI config spaces of QEMU's emulated devices, for tests.

Captured by `cargo xtask capture-configs` (xtask/src/e2e/capture.rs), which boots a guest under
QEMU with the devices below. The guest's /init printed each PCI function's sysfs `config` (in hex)
and `resource` to the serial console; the host wrote them back out unchanged.

- QEMU: {qemu}, machine {machine}, TCG, default firmware (SeaBIOS)
- Guest kernel: Linux {guest_kernel} (Debian sid)
- Date: {date}

Each directory has:
- `config`: the bytes of /sys/bus/pci/devices/<bdf>/config read by root: 4096 for a PCIe function
  (behind a pcie-root-port), 256 for a conventional PCI one (on the q35 root bus).
- `resource`: that function's sysfs `resource` file, verbatim (BARs, ROM, SR-IOV BARs, windows).
- `vendor`, `device` (igbvf only): its sysfs `vendor` and `device` files, because a VF's config
  space reads 0xffff for both IDs, as the SR-IOV spec has it.

State when read: BARs and the command register as the firmware and the kernel set them up; no
driver bound (the built-in virtio-pci driver was kept off with
`initcall_blacklist=virtio_pci_driver_init`; the others are modules not loaded). igbvf is VF 0 of
igb, read after loading the igb driver for the PF and writing 1 to its `sriov_numvfs`.

| directory | QEMU -device | guest BDF | vendor device class | config bytes |
|---|---|---|---|---|
",
        date = date.trim(),
    );
    for function in captured {
        let [vendor, device, class] = function.dump.ids;
        let _ = writeln!(
            text,
            "| {} | `{}` | {} | {vendor} {device} {class} | {} |",
            function.name,
            function.qemu,
            function.bdf,
            function.dump.config.len()
        );
    }
    let _ = write!(
        text,
        "\nQEMU command line (inside the chroot):\n\n    {}\n",
        shell_command(&guest.qemu_args())
    );
    Ok(text)
}

/// `args` as a shell command, quoted where needed, one option (and its value) per line.
fn shell_command(args: &[String]) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || ",._=/:+-@%".contains(c);
    let mut text = String::new();
    for arg in args {
        if !text.is_empty() {
            text.push_str(if arg.starts_with('-') {
                " \\\n        "
            } else {
                " "
            });
        }
        if !arg.is_empty() && arg.chars().all(plain) {
            text.push_str(arg);
        } else {
            let _ = write!(text, "'{}'", arg.replace('\'', r"'\''"));
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::shell_command;

    #[test]
    fn shell_commands_are_quoted_when_needed() {
        let args = ["qemu", "-append", "console=ttyS0 panic=-1", "-x", "it's"].map(String::from);
        assert_eq!(
            shell_command(&args),
            "qemu \\\n        -append 'console=ttyS0 panic=-1' \\\n        -x 'it'\\''s'"
        );
    }
}
