//! A hostile VMM against one server process running a function of every built-in backend
//! (as the embedded default builds them): memory that vanishes under DMA, files mapped past
//! their end, stray and surplus fds, stalls mid-message, replies never read, thousands of
//! reconnects and DMA maps. Each case must leave the server alive, every function serving, and
//! the server's fds and memory where they were. A witness function is timed all along: its
//! round trip during the abuse against before is printed (not asserted: timing is for
//! `cargo xtask bench`), with the cases passed and the fd and RSS figures.

use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rustix::event::{EventfdFlags, eventfd};
use rustix::fs::{MemfdFlags, SealFlags};
use vfio_variant::server::ServerConfig;
use vfio_variant::vfio_user::access::RegionRead;
use vfio_variant::vfio_user::client::{Client, ClientError, ClientOptions};
use vfio_variant::vfio_user::dma::{DmaMap, DmaMapFlags};
use vfio_variant::vfio_user::header::{Command, Header};
use vfio_variant::vfio_user::irq::{IRQ_INDEX_MSIX, SetIrqs};
use vfio_variant::vfio_user::region::RegionInfoRequest;
use vfio_variant::vfio_user::version::{Capabilities, Version};
use vfio_variant::vfio_user::{Limits, Payload, read_message, write_message};
use vfio_variant_backends::builtin::sample::registers as sample;
use vfio_variant_idxd::hw::completion::{Completion, status};
use vfio_variant_idxd::hw::descriptor::{Descriptor, flag, op};
use vfio_variant_idxd::hw::registers as idxd;
use vfio_variant_mlx::hw::dataplane as mlx;
use vfio_variant_virtio_legacy::hw::transport::legacy;
use vfio_variant_virtio_legacy::hw::{
    STATUS_ACKNOWLEDGE, STATUS_DRIVER, STATUS_DRIVER_OK, STATUS_NEEDS_RESET,
};

/// The functions under attack, by name and backend; `witness` is only ever used well.
const FUNCTIONS: [(&str, &str); 5] = [
    ("sample0", "sample"),
    ("idxd0", "idxd"),
    ("mlx0", "mlx"),
    ("blk0", "virtio-blk"),
    ("net0", "virtio-net"),
];
const GUEST: u64 = 0x10_0000;
/// DMA mappings a function keeps at most (offered at VERSION).
const MAX_DMA_MAPS: u64 = 256;
const MIB: u64 = 1 << 20;

#[path = "common/service.rs"]
#[allow(dead_code)]
mod service;
use service::{TestService as Server, eventually, open_fds};

impl Server {
    fn start_hostile() -> Self {
        let mut config = ServerConfig::default();
        config.offer.max_dma_maps = MAX_DMA_MAPS;
        let functions: Vec<(&str, &str)> = FUNCTIONS
            .into_iter()
            .chain([("witness", "sample")])
            .collect();
        Self::start("hostile", config, &functions)
    }

    fn client(&self, name: &str) -> Client {
        let options = ClientOptions {
            timeout: Some(Duration::from_secs(10)),
            ..ClientOptions::default()
        };
        Client::connect_with(self.socket(name), options)
            .unwrap_or_else(|e| panic!("connecting to {name}: {e}"))
    }

    /// Every function answers a config read (its vendor ID) on a fresh connection.
    fn all_serve(&self) {
        for (name, _) in FUNCTIONS {
            let mut c = self.client(name);
            let mut id = [0u8; 2];
            c.region_read(7, 0, &mut id).unwrap();
            assert_ne!(u16::from_le_bytes(id), 0xffff, "{name}");
            drop(c);
            self.wait_detached(name);
        }
    }
}

fn rss_kib() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4
}

fn memfd(len: u64) -> OwnedFd {
    let fd =
        rustix::fs::memfd_create("guest", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING).unwrap();
    rustix::fs::ftruncate(&fd, len).unwrap();
    fd
}

fn sealed_memfd(len: u64) -> OwnedFd {
    let fd = memfd(len);
    rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL)
        .unwrap();
    fd
}

fn efd() -> OwnedFd {
    eventfd(0, EventfdFlags::NONBLOCK | EventfdFlags::CLOEXEC).unwrap()
}

fn map(c: &mut Client, address: u64, size: u64, offset: u64, fd: &OwnedFd) -> Result<(), i32> {
    c.dma_map(
        &DmaMap::new(
            address,
            size,
            offset,
            DmaMapFlags::READ | DmaMapFlags::WRITE,
        ),
        Some(fd.as_fd()),
    )
    .map_err(|e| e.errno())
}

fn errno<T: std::fmt::Debug>(r: Result<T, ClientError>) -> i32 {
    match r {
        Err(ClientError::Remote { errno, .. }) => errno,
        other => panic!("expected an error reply, got {other:?}"),
    }
}

fn read32(c: &mut Client, region: u32, offset: u64) -> u32 {
    let mut data = [0u8; 4];
    c.region_read(region, offset, &mut data).unwrap();
    u32::from_le_bytes(data)
}

fn write32(c: &mut Client, region: u32, offset: u64, value: u32) {
    c.region_write(region, offset, &value.to_le_bytes())
        .unwrap();
}

/// COMMAND: I/O, memory and bus master.
fn enable(c: &mut Client) {
    c.region_write(7, 4, &[0x07, 0x00]).unwrap();
}

/// Sends `payload` as `command` with `fds` on the client's socket and returns the reply's
/// header (the client is idle: nothing else is in flight).
fn raw(c: &Client, id: u16, command: u16, payload: &[u8], fds: &[OwnedFd]) -> Header {
    let mut header = Header::request(id, Command::Version, payload.len());
    header.command = command;
    let borrowed: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
    write_message(c.stream(), &header, payload, &borrowed).unwrap();
    let reply = read_message(c.stream(), &Limits::default()).unwrap();
    assert_eq!(reply.header.msg_id, id);
    reply.header
}

// ---- DMA memory that vanishes or was never there ----

/// DMA_MAP of a range past the end of its file, of something that is no file, and of a
/// read-only fd for a writable mapping: EINVAL on every function.
fn mappings_past_the_file_are_refused(s: &Server) {
    for (name, _) in FUNCTIONS {
        let mut c = s.client(name);
        let small = memfd(0x1000);
        assert_eq!(
            map(&mut c, GUEST, 0x2000, 0, &small),
            Err(libc::EINVAL),
            "{name}"
        );
        assert_eq!(
            map(&mut c, GUEST, 0x1000, 0x1000, &small),
            Err(libc::EINVAL),
            "{name}"
        );
        let sealed = sealed_memfd(0x1000);
        assert_eq!(
            map(&mut c, GUEST, 0x2000, 0, &sealed),
            Err(libc::EINVAL),
            "{name}"
        );
        let (pipe, _w) = std::io::pipe().unwrap();
        assert_eq!(
            map(&mut c, GUEST, 0x1000, 0, &pipe.into()),
            Err(libc::EINVAL),
            "{name}"
        );
        assert_eq!(map(&mut c, GUEST, 0x1000, 0, &small), Ok(()), "{name}");
        drop(c);
        s.wait_detached(name);
    }
}

/// A client mapping ranges (without fds) until refused: exactly the offered number are kept,
/// the next is ENOSPC, on every function; unmapping makes room again.
fn dma_regions_are_bounded_per_function(s: &Server) {
    for (name, _) in FUNCTIONS {
        let mut c = s.client(name);
        let flags = DmaMapFlags::READ | DmaMapFlags::WRITE;
        for i in 0..MAX_DMA_MAPS {
            c.dma_map(&DmaMap::new(GUEST + i * 0x1000, 0x1000, 0, flags), None)
                .unwrap_or_else(|e| panic!("{name}: map {i}: {e}"));
        }
        let refused = c.dma_map(&DmaMap::new(0x1_0000_0000, 0x1000, 0, flags), None);
        assert_eq!(errno(refused), libc::ENOSPC, "{name}");
        c.dma_unmap_all().unwrap();
        c.dma_map(&DmaMap::new(0x1_0000_0000, 0x1000, 0, flags), None)
            .unwrap();
        drop(c);
        s.wait_detached(name);
    }
}

/// Guest memory in an unsealed memfd the client shrinks after mapping it.
struct Shrinking {
    client: Client,
    memory: OwnedFd,
}

impl Shrinking {
    fn new(s: &Server, name: &str) -> Self {
        let mut client = s.client(name);
        enable(&mut client);
        let memory = memfd(MIB);
        map(&mut client, GUEST, MIB, 0, &memory).unwrap();
        Self { client, memory }
    }

    fn put(&self, iova: u64, data: &[u8]) {
        rustix::io::pwrite(&self.memory, data, iova - GUEST).unwrap();
    }

    fn shrink(&self) {
        rustix::fs::ftruncate(&self.memory, 0).unwrap();
    }
}

fn sample_dma(c: &mut Client, src: u64, dst: u64) -> u32 {
    write32(c, 0, sample::DMA_SRC_LO, src as u32);
    write32(c, 0, sample::DMA_SRC_HI, (src >> 32) as u32);
    write32(c, 0, sample::DMA_DST_LO, dst as u32);
    write32(c, 0, sample::DMA_DST_HI, (dst >> 32) as u32);
    write32(c, 0, sample::DMA_LEN, 16);
    write32(c, 0, sample::DMA_CMD, sample::DMA_CMD_START);
    eventually("the sample DMA engine finishes", || {
        Some(read32(c, 0, sample::DMA_STATUS)).filter(|&s| s != sample::DMA_STATUS_BUSY)
    })
}

/// The sample engine: a read from gone memory is status 2, a write to it status 3.
fn sample_dma_into_shrunk_memory_faults(s: &Server) {
    let mut g = Shrinking::new(s, "sample0");
    let sealed = sealed_memfd(MIB);
    map(&mut g.client, 0x100_0000, MIB, 0, &sealed).unwrap();
    assert_eq!(sample_dma(&mut g.client, GUEST, 0x100_0000), 0);
    g.shrink();
    assert_eq!(
        sample_dma(&mut g.client, GUEST, 0x100_0000),
        2,
        "read fault"
    );
    assert_eq!(
        sample_dma(&mut g.client, 0x100_0000, GUEST),
        3,
        "write fault"
    );
    assert_eq!(read32(&mut g.client, 0, sample::ID), sample::ID_VALUE);
    drop(g);
    s.wait_detached("sample0");
}

/// A legacy virtio driver brings queue `queue` up in guest memory; the memory goes; the
/// next notify sets NEEDS_RESET.
fn virtio_queue_in_shrunk_memory_needs_reset(s: &Server, name: &str, queue: u16) {
    let mut g = Shrinking::new(s, name);
    let c = &mut g.client;
    let io = |c: &mut Client, offset: u8, bytes: &[u8]| {
        c.region_write(0, offset.into(), bytes).unwrap();
    };
    io(c, legacy::STATUS, &[0]);
    io(c, legacy::STATUS, &[STATUS_ACKNOWLEDGE]);
    io(c, legacy::STATUS, &[STATUS_ACKNOWLEDGE | STATUS_DRIVER]);
    io(c, legacy::GUEST_FEATURES, &0u32.to_le_bytes());
    io(c, legacy::QUEUE_SEL, &queue.to_le_bytes());
    io(c, legacy::QUEUE_PFN, &((GUEST >> 12) as u32).to_le_bytes());
    io(
        c,
        legacy::STATUS,
        &[STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_DRIVER_OK],
    );
    io(c, legacy::QUEUE_NOTIFY, &queue.to_le_bytes());
    let mut status = [0u8];
    c.region_read(0, legacy::STATUS.into(), &mut status)
        .unwrap();
    assert_eq!(status[0] & STATUS_NEEDS_RESET, 0, "{name}: healthy before");
    g.shrink();
    io(&mut g.client, legacy::QUEUE_NOTIFY, &queue.to_le_bytes());
    eventually(&format!("{name}: NEEDS_RESET"), || {
        g.client
            .region_read(0, legacy::STATUS.into(), &mut status)
            .unwrap();
        (status[0] & STATUS_NEEDS_RESET != 0).then_some(())
    });
    drop(g);
    s.wait_detached(name);
}

fn virtio_blk_queue_in_shrunk_memory_needs_reset(s: &Server) {
    virtio_queue_in_shrunk_memory_needs_reset(s, "blk0", 0);
}

fn virtio_net_queue_in_shrunk_memory_needs_reset(s: &Server) {
    virtio_queue_in_shrunk_memory_needs_reset(s, "net0", 1);
}

/// The mlx data plane's echo ring in guest memory; the memory goes; the next doorbell
/// sets ERROR_DMA.
fn mlx_ring_in_shrunk_memory_sets_its_error(s: &Server) {
    let mut g = Shrinking::new(s, "mlx0");
    let reg = |r: u64| mlx::REGS + r;
    let c = &mut g.client;
    write32(c, 0, reg(mlx::RING_BASE), GUEST as u32);
    write32(c, 0, reg(mlx::RING_BASE) + 4, 0);
    write32(c, 0, reg(mlx::RING_SIZE), 4);
    write32(c, 0, reg(mlx::ENABLE), 1);
    g.put(GUEST, &7u64.to_le_bytes());
    write32(&mut g.client, 0, reg(mlx::PRODUCER), 1);
    eventually("mlx0 consumes the first entry", || {
        (read32(&mut g.client, 0, reg(mlx::CONSUMER)) == 1).then_some(())
    });
    assert_eq!(read32(&mut g.client, 0, reg(mlx::ERROR)), 0);
    g.shrink();
    write32(&mut g.client, 0, reg(mlx::PRODUCER), 2);
    eventually("mlx0 sets ERROR_DMA", || {
        (read32(&mut g.client, 0, reg(mlx::ERROR)) & mlx::ERROR_DMA == mlx::ERROR_DMA).then_some(())
    });
    assert_eq!(read32(&mut g.client, 0, reg(mlx::CONSUMER)), 1);
    write32(&mut g.client, 0, reg(mlx::ENABLE), 0);
    drop(g);
    s.wait_detached("mlx0");
}

/// A DSA memmove from guest memory that went: a page-fault completion record.
fn dsa_memmove_from_shrunk_memory_completes_with_a_fault(s: &Server) {
    let mut g = Shrinking::new(s, "idxd0");
    let records = sealed_memfd(0x1000);
    let cr = 0x100_0000;
    map(&mut g.client, cr, 0x1000, 0, &records).unwrap();
    let command = |c: &mut Client, code: u32| {
        write32(c, 0, idxd::CMD, code << idxd::CMD_SHIFT);
        read32(c, 0, idxd::CMDSTS)
    };
    assert_eq!(command(&mut g.client, idxd::cmd::ENABLE_DEVICE), 0);
    assert_eq!(command(&mut g.client, idxd::cmd::ENABLE_WQ), 0);
    let memmove = Descriptor {
        opcode: op::MEMMOVE,
        flags: flag::CRAV | flag::RCR,
        completion_addr: cr,
        src: GUEST,
        dst: GUEST + 0x8000,
        size: 4096,
        ..Descriptor::default()
    };
    let submit = |c: &mut Client| {
        rustix::io::pwrite(&records, &[0u8; 32], 0).unwrap();
        c.region_write(2, 0, &memmove.encode()).unwrap();
        eventually("the DSA writes its completion record", || {
            let mut b = [0u8; 32];
            rustix::io::pread(&records, &mut b, 0).unwrap();
            Some(Completion::decode(&b)).filter(|record| record.status != 0)
        })
    };
    assert_eq!(submit(&mut g.client).status, status::SUCCESS);
    g.shrink();
    let faulted = submit(&mut g.client);
    assert_eq!(
        faulted.status & !status::FAULT_WRITE,
        status::PAGE_FAULT,
        "{faulted:?}"
    );
    assert_eq!(command(&mut g.client, idxd::cmd::DISABLE_DEVICE), 0);
    drop(g);
    s.wait_detached("idxd0");
}

// ---- protocol ----

/// REGION_INFO with an argsz below the fixed structure and a second VERSION: EINVAL on
/// every function, and the connection goes on.
fn short_region_info_and_second_version_are_refused(s: &Server) {
    for (name, _) in FUNCTIONS {
        let c = s.client(name);
        let short = RegionInfoRequest {
            argsz: 16,
            index: 0,
        }
        .to_bytes();
        let h = raw(&c, 0x7000, Command::DeviceGetRegionInfo.raw(), &short, &[]);
        assert_eq!((h.is_error(), h.errno()), (true, libc::EINVAL), "{name}");
        let version = Version {
            major: 0,
            minor: 0,
            capabilities: Capabilities::qemu_proposal(),
        }
        .to_bytes();
        let h = raw(&c, 0x7001, Command::Version.raw(), &version, &[]);
        assert_eq!((h.is_error(), h.errno()), (true, libc::EINVAL), "{name}");
        let mut c = c;
        assert!(c.region_info(7).is_ok(), "{name}");
        drop(c);
        s.wait_detached(name);
    }
}

/// A pipe given as an interrupt eventfd: refused on every function with MSI-X.
fn a_pipe_is_no_eventfd(s: &Server) {
    for (name, _) in FUNCTIONS {
        let mut c = s.client(name);
        if c.irq_info(IRQ_INDEX_MSIX).unwrap().count == 0 {
            continue;
        }
        let (_r, w) = std::io::pipe().unwrap();
        let w: OwnedFd = w.into();
        let refused = c.set_irqs(&SetIrqs::eventfds(IRQ_INDEX_MSIX, 0, 1), &[w.as_fd()]);
        assert_eq!(errno(refused), libc::EINVAL, "{name}");
        let good = efd();
        c.set_irqs(&SetIrqs::eventfds(IRQ_INDEX_MSIX, 0, 1), &[good.as_fd()])
            .unwrap();
        drop(c);
        s.wait_detached(name);
    }
}

// ---- fds, stalls, floods ----

/// Thousands of fds attached to commands that take none, and more fds than a message may
/// carry: refused and closed.
fn stray_fds_are_closed(s: &Server) -> String {
    let before = open_fds();
    let mut sent = 0;
    for (name, _) in FUNCTIONS {
        let c = s.client(name);
        let read = RegionRead {
            offset: 0,
            region: 7,
            count: 4,
        }
        .to_bytes();
        for i in 0..300u16 {
            let fds: Vec<OwnedFd> = (0..8).map(|_| efd()).collect();
            let h = raw(&c, i, Command::RegionRead.raw(), &read, &fds);
            assert_eq!(h.errno(), libc::EINVAL, "{name}");
            sent += fds.len();
        }
        for i in 0..20u16 {
            let fds: Vec<OwnedFd> = (0..40).map(|_| efd()).collect();
            let h = raw(&c, 1000 + i, Command::RegionRead.raw(), &read, &fds);
            assert_eq!(h.errno(), libc::E2BIG, "{name}");
            sent += fds.len();
        }
        drop(c);
        s.wait_detached(name);
    }
    let after = open_fds();
    assert_eq!(after, before, "fds of the process after {sent} stray fds");
    format!("{sent} stray fds: process fds {before} -> {after}")
}

/// A client that stops halfway through a header holds only its own function; once it goes,
/// the function is served again at once.
fn a_client_stalled_mid_message_holds_only_its_function(s: &Server) {
    let mut stalled = UnixStream::connect(s.socket("blk0")).unwrap();
    stalled.write_all(&[1, 0, 1, 0, 40]).unwrap();
    for (name, _) in FUNCTIONS.iter().filter(|(n, _)| *n != "blk0") {
        let mut c = s.client(name);
        assert!(c.device_info().is_ok(), "{name}");
        drop(c);
        s.wait_detached(name);
    }
    drop(stalled);
    let mut c = s.client("blk0");
    assert!(c.device_info().is_ok());
    drop(c);
    s.wait_detached("blk0");
}

/// A client that floods commands and never reads a reply: the server blocks writing to it
/// alone; every other function keeps serving; after it goes its function is served again.
fn a_client_that_never_reads_holds_only_its_function(s: &Server) {
    let c = s.client("mlx0");
    c.stream().set_nonblocking(true).unwrap();
    let read = RegionRead {
        offset: 0,
        region: 7,
        count: 4096,
    }
    .to_bytes();
    let mut sent = 0u32;
    for i in 0..100_000u32 {
        let header = Header::request(i as u16, Command::RegionRead, read.len());
        if write_message(c.stream(), &header, &read, &[]).is_err() {
            break;
        }
        sent += 1;
    }
    assert!(sent < 100_000, "the socket never filled");
    for (name, _) in FUNCTIONS.iter().filter(|(n, _)| *n != "mlx0") {
        let mut other = s.client(name);
        assert!(other.device_info().is_ok(), "{name}");
        drop(other);
        s.wait_detached(name);
    }
    drop(c);
    s.wait_detached("mlx0");
    let mut c = s.client("mlx0");
    assert!(c.device_info().is_ok());
    drop(c);
    s.wait_detached("mlx0");
}

/// 10 000 connect/VERSION/disconnect cycles, each reconnecting at once: every one is served,
/// fds come back exactly, RSS within 1 MiB, and a second 10 000 do not grow it (a leak of
/// 26 bytes per connection would).
fn ten_thousand_reconnects_leak_nothing(s: &Server) -> String {
    let cycles = || {
        for i in 0..10_000 {
            let options = ClientOptions {
                timeout: Some(Duration::from_secs(10)),
                ..ClientOptions::default()
            };
            if let Err(e) = Client::connect_with(s.socket("sample0"), options) {
                panic!("reconnect {i} refused: {e}");
            }
        }
        s.wait_detached("sample0");
    };
    for _ in 0..200 {
        drop(s.client("sample0"));
    }
    s.wait_detached("sample0");
    let (fds, rss) = (open_fds(), rss_kib());
    cycles();
    let (fds_after, rss_after) = (open_fds(), rss_kib());
    cycles();
    let rss_again = rss_kib();
    assert_eq!(fds_after, fds, "fds after 10 000 connections");
    assert!(
        rss_after <= rss + 1024 && rss_again <= rss_after + 256,
        "RSS grows with connections: {rss} KiB, {rss_after} KiB, {rss_again} KiB"
    );
    format!(
        "10000 connections: fds {fds} -> {fds_after}, RSS {rss} KiB -> {rss_after} KiB \
         (-> {rss_again} KiB after 10000 more)"
    )
}

/// 20 000 DMA maps (and unmaps) of sealed and unsealed memfds, each with its own fd over
/// the socket: fds and RSS come back; unsealed files held open are bounded.
fn twenty_thousand_dma_maps_leak_nothing(s: &Server) -> String {
    let sealed = sealed_memfd(MIB);
    let unsealed = memfd(MIB);
    let mut c = s.client("sample0");
    map(&mut c, GUEST, MIB, 0, &sealed).unwrap();
    c.dma_unmap(GUEST, MIB).unwrap();
    let (fds, rss) = (open_fds(), rss_kib());
    for i in 0..20_000u64 {
        let fd = if i % 2 == 0 { &sealed } else { &unsealed };
        let at = GUEST + (i % 16) * MIB;
        map(&mut c, at, MIB, 0, fd).unwrap();
        if i % 16 == 15 {
            c.dma_unmap_all().unwrap();
        }
    }
    c.dma_unmap_all().unwrap();
    let (fds_after, rss_after) = (open_fds(), rss_kib());
    // Distinct unsealed files held open are bounded per function.
    let files: Vec<OwnedFd> = (0..70).map(|_| memfd(0x1000)).collect();
    let refused = files
        .iter()
        .enumerate()
        .filter(|(i, f)| map(&mut c, 0x1_0000_0000 + *i as u64 * 0x1000, 0x1000, 0, f).is_err())
        .count();
    assert_eq!(refused, 70 - 64, "unsealed files beyond 64 are refused");
    drop(c);
    s.wait_detached("sample0");
    drop(files);
    assert_eq!(fds_after, fds, "fds after 20 000 DMA maps");
    assert!(
        rss_after <= rss + 1024,
        "RSS {rss} KiB -> {rss_after} KiB after 20 000 DMA maps"
    );
    format!("20000 DMA maps: fds {fds} -> {fds_after}, RSS {rss} KiB -> {rss_after} KiB")
}

// ---- the witness ----

/// Round trips kept by the microsecond, up to this many (longer ones count in the last):
/// the witness's memory is fixed, so it does not blur the RSS figures.
const HISTOGRAM_US: usize = 20_000;

/// Round trips of one phase.
struct Histogram(Vec<u64>);

impl Histogram {
    fn new() -> Self {
        Self(vec![0; HISTOGRAM_US])
    }

    fn add(&mut self, sample: Duration) {
        let us = usize::try_from(sample.as_micros()).unwrap_or(usize::MAX);
        self.0[us.min(HISTOGRAM_US - 1)] += 1;
    }

    fn count(&self) -> u64 {
        self.0.iter().sum()
    }

    fn median(&self) -> Duration {
        let half = self.count() / 2;
        let mut seen = 0;
        for (us, n) in self.0.iter().enumerate() {
            seen += n;
            if seen > half {
                return Duration::from_micros(us as u64);
            }
        }
        Duration::ZERO
    }
}

/// Times config reads on the witness function until told to stop; samples go to the phase
/// they were taken in.
struct Witness {
    phase: Arc<AtomicU8>,
    samples: Arc<Mutex<[Histogram; 2]>>,
    thread: Option<JoinHandle<()>>,
}

impl Witness {
    fn start(path: &Path) -> Self {
        let options = ClientOptions {
            timeout: Some(Duration::from_secs(10)),
            ..ClientOptions::default()
        };
        let mut c = Client::connect_with(path, options).unwrap();
        let phase = Arc::new(AtomicU8::new(0));
        let samples = Arc::new(Mutex::new([Histogram::new(), Histogram::new()]));
        let (p, s) = (Arc::clone(&phase), Arc::clone(&samples));
        let thread = std::thread::spawn(move || {
            let mut data = [0u8; 4];
            loop {
                let now = p.load(Ordering::SeqCst);
                if now > 1 {
                    return;
                }
                let start = Instant::now();
                c.region_read(7, 0, &mut data).unwrap();
                s.lock()[now as usize].add(start.elapsed());
                std::thread::sleep(Duration::from_micros(200));
            }
        });
        Self {
            phase,
            samples,
            thread: Some(thread),
        }
    }

    fn count(&self, phase: usize) -> u64 {
        self.samples.lock()[phase].count()
    }

    fn set_phase(&self, phase: u8) {
        self.phase.store(phase, Ordering::SeqCst);
    }

    /// Median round trips (before, during), to the microsecond.
    fn stop(mut self) -> (Duration, Duration) {
        self.set_phase(2);
        self.thread.take().unwrap().join().unwrap();
        let samples = self.samples.lock();
        (samples[0].median(), samples[1].median())
    }
}

/// A case: its name, and what it does, returning the figures it measured (if any).
type Case = (&'static str, fn(&Server) -> String);

/// A case that measures nothing.
macro_rules! quiet {
    ($case:ident) => {
        |s: &Server| {
            $case(s);
            String::new()
        }
    };
}

#[test]
fn a_hostile_client_takes_down_nothing() {
    let server = Server::start_hostile();
    server.all_serve();
    let witness = Witness::start(&server.socket("witness"));
    while witness.count(0) < 2000 {
        std::thread::sleep(Duration::from_millis(10));
    }
    witness.set_phase(1);

    let cases: Vec<Case> = vec![
        (
            "mappings past the file are refused",
            quiet!(mappings_past_the_file_are_refused),
        ),
        (
            "sample DMA into shrunk memory faults",
            quiet!(sample_dma_into_shrunk_memory_faults),
        ),
        (
            "virtio-blk queue in shrunk memory: NEEDS_RESET",
            quiet!(virtio_blk_queue_in_shrunk_memory_needs_reset),
        ),
        (
            "virtio-net queue in shrunk memory: NEEDS_RESET",
            quiet!(virtio_net_queue_in_shrunk_memory_needs_reset),
        ),
        (
            "mlx ring in shrunk memory: ERROR_DMA",
            quiet!(mlx_ring_in_shrunk_memory_sets_its_error),
        ),
        (
            "DSA memmove from shrunk memory: page fault record",
            quiet!(dsa_memmove_from_shrunk_memory_completes_with_a_fault),
        ),
        (
            "short REGION_INFO and second VERSION refused",
            quiet!(short_region_info_and_second_version_are_refused),
        ),
        ("a pipe is no eventfd", quiet!(a_pipe_is_no_eventfd)),
        (
            "DMA regions are bounded per function",
            quiet!(dma_regions_are_bounded_per_function),
        ),
        ("stray fds are closed", stray_fds_are_closed),
        (
            "stalled mid-message holds only its function",
            quiet!(a_client_stalled_mid_message_holds_only_its_function),
        ),
        (
            "never reading replies holds only its function",
            quiet!(a_client_that_never_reads_holds_only_its_function),
        ),
        (
            "10 000 reconnects leak nothing",
            ten_thousand_reconnects_leak_nothing,
        ),
        (
            "20 000 DMA maps leak nothing",
            twenty_thousand_dma_maps_leak_nothing,
        ),
    ];
    let total = cases.len();
    let mut failed = Vec::new();
    for (name, case) in &cases {
        match catch_unwind(AssertUnwindSafe(|| case(&server))) {
            Ok(figures) => println!("HOSTILE ok     {name} {figures}"),
            Err(_) => {
                println!("HOSTILE FAILED {name}");
                failed.push(*name);
            }
        }
    }
    let abused = witness.count(1);
    let (before, during) = witness.stop();
    server.all_serve();
    println!(
        "HOSTILE witness round trip: before {:.1} us, during abuse {:.1} us ({abused} samples), ratio {:.2}",
        before.as_secs_f64() * 1e6,
        during.as_secs_f64() * 1e6,
        during.as_secs_f64() / before.as_secs_f64()
    );
    println!("HOSTILE cases passed {}/{total}", total - failed.len());
    assert!(failed.is_empty(), "failed: {failed:?}");
}
