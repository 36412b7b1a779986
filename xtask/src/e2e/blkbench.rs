//! The guest block benchmark of `cargo xtask bench`: the transitional virtio-blk VF of
//! `vfio-variant serve` against QEMU's own virtio-blk-pci on the same backing file, both disks
//! in the same guest boot; one boot on the legacy virtio path, one on the modern path.
//!
//! Starts a server of its own (release build, log level `warn` unless `VFIO_VARIANT_LOG` says
//! otherwise), fills the VF's image with data (which also puts it in the host's page cache), and
//! boots a guest under TCG with two disks, twice:
//!
//! - the VF (`virtio-blk0`) through `vfio-user-pci`, behind a `pcie-root-port` (bus 1);
//! - QEMU's own `virtio-blk-pci` at [`BUILTIN_PCI`] on the same image file, opened read-only
//!   (the server has it open read-write: there must be one writer only, and the benchmark only
//!   reads). Its cache mode is QEMU's default (`writeback`: host page cache), because the server
//!   reads the file with plain `pread` through the page cache too.
//!
//! A third boot repeats the legacy path with QEMU's default private RAM (no memfd): the VF
//! then reaches guest memory by DMA_READ/DMA_WRITE messages, the price of not sharing.
//!
//! The first boot ([`Path::Legacy`]) has `virtio_pci.force_legacy=1` and QEMU's disk with
//! `disable-modern=on`: both disks are driven by the kernel's legacy virtio_pci path. The second
//! ([`Path::Modern`]) has neither, and QEMU's disk with `disable-legacy=on`: both are modern
//! virtio 1 devices to the guest. In each boot the guest's `/init`
//! (`blkbench/init.sh`) runs the static `blkbench` program (`xtask/src/bin/blkbench.rs`:
//! `O_DIRECT`, queue depth 1, 4 KiB random reads with a fixed seed, then 1 MiB sequential
//! reads, each for a fixed time) on each disk, [`ROUNDS`] rounds, swapping the order of the
//! disks every other round. The figures of a disk are the medians over the rounds; a ratio is
//! the median of the rounds' ratios (the two disks of a round ran back to back, so a ratio
//! compares them under the same load of the host, which is shared and noisy).

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::Path as FsPath;
use std::time::Duration;

use super::chroot::{self, Kernel};
use super::guest::{Console, Guest, GuestError};
use super::initramfs::{Initramfs, Source};
use super::server::{build_server, require_root};
use super::vfio::build_static_bin;
use super::virtio::Server;

/// The guest's `/init`.
const INIT: &str = include_str!("blkbench/init.sh");

/// Rounds over both disks: many short ones, so that the two disks of a round see about the
/// same load of the host.
const ROUNDS: u32 = 9;
/// Seconds of 4 KiB random reads per disk and round.
const RAND_SECONDS: f64 = 1.0;
/// Seconds of sequential reads per disk and round.
const SEQ_SECONDS: f64 = 0.5;
/// How long the guest may run (boot about 10 s, then the rounds).
const TIMEOUT: Duration = Duration::from_secs(150);

/// The guest's PCI address of QEMU's built-in disk (slot 5 of bus 0).
const BUILTIN_PCI: &str = "0000:00:05.0";
/// The guest's PCI address of the VF (behind the root port, bus 1).
const VF_PCI: &str = "0000:01:00.0";

/// The figures of one disk.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Figures {
    /// 4 KiB random reads per second.
    pub randread_iops: f64,
    /// Sequential reads, 10^6 bytes per second.
    pub seq_mbps: f64,
}

/// The virtio path the guest drives both disks through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// Legacy virtio (`virtio_pci.force_legacy=1`; the VF's legacy I/O BAR).
    Legacy,
    /// Modern virtio 1 (the VF's memory BAR).
    Modern,
}

impl Path {
    /// `legacy` or `modern`.
    pub fn name(self) -> &'static str {
        match self {
            Path::Legacy => "legacy",
            Path::Modern => "modern",
        }
    }
}

/// The figures of both disks in one boot: medians over the rounds.
#[derive(Debug, Clone, Copy)]
pub struct Results {
    /// The virtio path of the boot.
    pub path: Path,
    /// Guest RAM in a shared memfd; else QEMU's default private RAM (the VF reaches it by
    /// DMA_READ/DMA_WRITE messages).
    pub shared: bool,
    /// The transitional virtio-blk VF.
    pub vf: Figures,
    /// QEMU's built-in virtio-blk-pci.
    pub builtin: Figures,
    /// The VF's figures over the built-in disk's: medians of the rounds' ratios.
    pub ratio: Figures,
}

/// Builds what the guest needs, starts a server, boots the guest on each path and returns the
/// figures of each boot.
pub fn run() -> Result<Vec<Results>, String> {
    require_root()?;
    let root = chroot::ensure_chroot()?;
    let root = fs::canonicalize(&root)
        .map_err(|e| format!("cannot resolve the chroot {}: {e}", root.display()))?;
    let kernel = super::kernels::sid(&root)?;
    let binary = build_server(true)?;
    let blkbench = build_static_bin("xtask", "blkbench", true)?;
    let initrd = Initramfs::new(INIT)
        .module("virtio_blk")
        .file("/bin/blkbench", Source::Host(blkbench), 0o755)
        .build(&root, &kernel)?;
    let mut server = Server::start(&binary, &root, "warn")?;
    let outcome = fill(&server.image())
        .and_then(|()| {
            [
                (Path::Legacy, true),
                (Path::Modern, true),
                (Path::Legacy, false),
            ]
            .into_iter()
            .map(|(path, shared)| boot(&root, &kernel, &initrd, &server, path, shared))
            .collect::<Result<Vec<_>, _>>()
        })
        .and_then(|results| {
            server.stop()?;
            Ok(results)
        });
    outcome.map_err(|e| format!("{e}\n{}", server.log_text()))
}

/// Fills the image with a pattern that differs in every 4 KiB block (no holes to read).
fn fill(image: &FsPath) -> Result<(), String> {
    let file = fs::OpenOptions::new()
        .write(true)
        .open(image)
        .map_err(|e| format!("{}: {e}", image.display()))?;
    let size = file
        .metadata()
        .map_err(|e| format!("{}: {e}", image.display()))?
        .len();
    const CHUNK: u64 = 1 << 20;
    let mut chunk = vec![0u8; CHUNK as usize];
    for at in (0..size).step_by(CHUNK as usize) {
        for (i, word) in chunk.chunks_exact_mut(8).enumerate() {
            word.copy_from_slice(&(at + 8 * i as u64).to_le_bytes());
        }
        let len = CHUNK.min(size - at) as usize;
        file.write_all_at(&chunk[..len], at)
            .map_err(|e| format!("{}: {e}", image.display()))?;
    }
    file.sync_all()
        .map_err(|e| format!("{}: {e}", image.display()))
}

fn boot(
    root: &FsPath,
    kernel: &Kernel,
    initrd: &str,
    server: &Server,
    path: Path,
    shared: bool,
) -> Result<Results, String> {
    let socket = server.socket_in_chroot(root)?;
    let image = server.image_in_chroot(root)?;
    let vf = format!(
        r#"{{"driver":"vfio-user-pci","bus":"rp1","socket":{{"path":"{socket}","type":"unix"}}}}"#
    );
    let (builtin, guest) = match path {
        Path::Legacy => (
            "virtio-blk-pci,disable-modern=on",
            Guest::new(root, "bench-blk-legacy", kernel, initrd)
                .append("virtio_pci.force_legacy=1"),
        ),
        Path::Modern => (
            "virtio-blk-pci,disable-legacy=on",
            Guest::new(root, "bench-blk-modern", kernel, initrd),
        ),
    };
    let console = guest
        .append(&format!("blkbench.rounds={ROUNDS}"))
        .append(&format!("blkbench.rand={RAND_SECONDS}"))
        .append(&format!("blkbench.seq={SEQ_SECONDS}"))
        .append("blkbench.disks=2")
        .args(super::server::ram_args(shared))
        .args([
            "-device",
            "pcie-root-port,id=rp1,bus=pcie.0,chassis=1",
            "-device",
            &vf,
            "-drive",
            &format!("file={image},format=raw,if=none,id=d0,readonly=on"),
            "-device",
            &format!("{builtin},drive=d0,bus=pcie.0,addr=0x5"),
        ])
        .timeout(TIMEOUT)
        .run()
        .map_err(String::from)?;
    results(&console, path, shared).map_err(String::from)
}

/// `key=value` among the whitespace-separated words of `line`.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
}

fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

/// The figures from the guest's `bench-<round>-<disk>` sections.
fn results(console: &Console, path: Path, shared: bool) -> Result<Results, GuestError> {
    let disks = console.section("disks")?;
    let on = |pci: &str| disks.iter().any(|l| field(l, "pci") == Some(pci));
    if disks.len() != 2 || !on(VF_PCI) || !on(BUILTIN_PCI) {
        return Err(console.error(format!(
            "the guest should see the VF at {VF_PCI} and QEMU's disk at {BUILTIN_PCI}:\n{}",
            disks.join("\n")
        )));
    }
    // The features file has one character per bit; bit 32 is VIRTIO_F_VERSION_1.
    let version_1 = if path == Path::Modern { b'1' } else { b'0' };
    if !disks.iter().all(|l| {
        field(l, "features").and_then(|f| f.as_bytes().get(32).copied()) == Some(version_1)
    }) {
        return Err(console.error(format!(
            "the disks are not both on the {} path:\n{}",
            path.name(),
            disks.join("\n")
        )));
    }
    eprintln!("    {} path: {}", path.name(), disks.join("; "));
    let (mut vf, mut builtin) = (Vec::new(), Vec::new());
    for (name, lines) in console.sections().map_err(|e| console.error(e))? {
        if !name.starts_with("bench-") {
            continue;
        }
        let pci = lines.iter().find_map(|l| l.strip_prefix("pci="));
        let line = lines.iter().find(|l| l.starts_with("BLKBENCH "));
        let figures = line.and_then(|l| {
            Some(Figures {
                randread_iops: field(l, "randread_iops")?.parse().ok()?,
                seq_mbps: field(l, "seq_mbps")?.parse().ok()?,
            })
        });
        let (Some(pci), Some(figures)) = (pci, figures) else {
            return Err(console.error(format!(
                "`{name}`: no figures from blkbench:\n{}",
                lines.join("\n")
            )));
        };
        eprintln!(
            "    {name}: {pci}: {:.1} IOPS, {:.2} MB/s",
            figures.randread_iops, figures.seq_mbps
        );
        match pci {
            VF_PCI => vf.push(figures),
            BUILTIN_PCI => builtin.push(figures),
            other => return Err(console.error(format!("`{name}`: unknown disk at {other}"))),
        }
    }
    if vf.len() != ROUNDS as usize || builtin.len() != ROUNDS as usize {
        return Err(console.error(format!(
            "expected {ROUNDS} rounds on each disk, got {} on the VF and {} on QEMU's",
            vf.len(),
            builtin.len()
        )));
    }
    let summary = |all: &[Figures]| Figures {
        randread_iops: median(all.iter().map(|f| f.randread_iops).collect()),
        seq_mbps: median(all.iter().map(|f| f.seq_mbps).collect()),
    };
    let ratios: Vec<Figures> = vf
        .iter()
        .zip(&builtin)
        .map(|(vf, builtin)| Figures {
            randread_iops: vf.randread_iops / builtin.randread_iops,
            seq_mbps: vf.seq_mbps / builtin.seq_mbps,
        })
        .collect();
    Ok(Results {
        path,
        shared,
        vf: summary(&vf),
        builtin: summary(&builtin),
        ratio: summary(&ratios),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_and_medians() {
        let line = "BLKBENCH dev=/dev/vda randread_iops=12.5 randread_ios=25 seq_mbps=3.25";
        assert_eq!(field(line, "randread_iops"), Some("12.5"));
        assert_eq!(field(line, "randread_ios"), Some("25"));
        assert_eq!(field(line, "seq"), None);
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
    }
}
