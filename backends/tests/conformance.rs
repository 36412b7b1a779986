//! Protocol conformance: one row per rule of the vfio-user spec (QEMU
//! docs/interop/vfio-user.rst) and of VFIO (linux/vfio.h and the kernel's ioctl handlers),
//! each sent as a raw message to a sample function; the row states its source and the answer
//! the rule asks for. After every row the connection must still answer a config read.

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustix::event::{EventfdFlags, eventfd};
use vfio_variant::device::VirtualFunction;
use vfio_variant::server::{Endpoint, Port, ServerConfig};
use vfio_variant::vfio_user::access::{RegionRead, RegionWrite};
use vfio_variant::vfio_user::device::DeviceInfo;
use vfio_variant::vfio_user::dma::{DmaMap, DmaMapFlags, DmaRead, DmaUnmap};
use vfio_variant::vfio_user::feature::{DeviceFeature, FEATURE_MIGRATION, FeatureOps};
use vfio_variant::vfio_user::header::{Command, Header, HeaderFlags};
use vfio_variant::vfio_user::irq::{IrqInfo, SetIrqs, SetIrqsFlags};
use vfio_variant::vfio_user::mig_data::MigDataRead;
use vfio_variant::vfio_user::region::{IoFdsRequest, RegionInfoRequest};
use vfio_variant::vfio_user::version::{Capabilities, Version};
use vfio_variant::vfio_user::{Limits, Payload, read_message, write_message};
use vfio_variant::vpci::{compile::compile, parse_layout};
use vfio_variant_backends::builtin::sample::{LAYOUT, SampleBackend};

/// What a row expects back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// A successful reply.
    Ok,
    /// An error reply with this errno.
    Errno(i32),
    /// No reply at all (a No_reply command, a stray reply).
    Nothing,
}

/// One message as a row sends it.
struct Raw {
    command: u16,
    flags: u32,
    payload: Vec<u8>,
    /// Eventfds attached with SCM_RIGHTS.
    fds: usize,
}

impl Raw {
    fn of(command: Command, payload: impl Payload) -> Self {
        Self {
            command: command.raw(),
            flags: 0,
            payload: payload.to_bytes(),
            fds: 0,
        }
    }

    fn flags(mut self, flags: u32) -> Self {
        self.flags = flags;
        self
    }

    fn fds(mut self, fds: usize) -> Self {
        self.fds = fds;
        self
    }

    /// Overwrites the u32 at `at` in the payload (an argsz, a flags field, a count).
    fn patch(mut self, at: usize, value: u32) -> Self {
        self.payload[at..at + 4].copy_from_slice(&value.to_ne_bytes());
        self
    }
}

struct Row {
    rule: &'static str,
    source: &'static str,
    message: Raw,
    expect: Expect,
}

fn row(rule: &'static str, source: &'static str, message: Raw, expect: Expect) -> Row {
    Row {
        rule,
        source,
        message,
        expect,
    }
}

const SPEC: &str = "vfio-user.rst";
const EINVAL: Expect = Expect::Errno(libc::EINVAL);

fn version() -> Raw {
    Raw::of(
        Command::Version,
        Version {
            major: 0,
            minor: 0,
            capabilities: Capabilities::qemu_proposal(),
        },
    )
}

fn config_read(offset: u64, count: u32) -> Raw {
    Raw::of(
        Command::RegionRead,
        RegionRead {
            offset,
            region: 7,
            count,
        },
    )
}

fn bar0_read(offset: u64, count: u32) -> Raw {
    Raw::of(
        Command::RegionRead,
        RegionRead {
            offset,
            region: 0,
            count,
        },
    )
}

fn dma_map(address: u64, size: u64) -> Raw {
    Raw::of(
        Command::DmaMap,
        DmaMap::new(address, size, 0, DmaMapFlags::READ | DmaMapFlags::WRITE),
    )
}

/// The rows that run on a connection after VERSION.
fn negotiated_rows() -> Vec<Row> {
    let get_info = || Raw::of(Command::DeviceGetInfo, DeviceInfo::request());
    let region_info = |argsz| {
        Raw::of(
            Command::DeviceGetRegionInfo,
            RegionInfoRequest { argsz, index: 2 },
        )
    };
    let io_fds = |flags, count| {
        Raw::of(
            Command::DeviceGetRegionIoFds,
            IoFdsRequest {
                argsz: 16,
                flags,
                index: 0,
                count,
            },
        )
    };
    let msix = |count| Raw::of(Command::DeviceSetIrqs, SetIrqs::eventfds(2, 0, count));
    let feature = || {
        Raw::of(
            Command::DeviceFeature,
            DeviceFeature::probe(FEATURE_MIGRATION, FeatureOps::GET),
        )
    };
    let write = |offset, data: Vec<u8>| {
        Raw::of(
            Command::RegionWrite,
            RegionWrite {
                offset,
                region: 7,
                data,
            },
        )
    };
    let mut unmap_all_at = DmaUnmap::all();
    unmap_all_at.address = 0x10_0000;
    vec![
        // Header.
        row(
            "a command gets a reply with its id and command",
            SPEC,
            config_read(0, 4),
            Expect::Ok,
        ),
        row(
            "message type other than command or reply",
            "vfio-user.rst Header: flags bits 0-3",
            config_read(0, 4).flags(2),
            EINVAL,
        ),
        row(
            "unknown header flag bits",
            "vfio-user.rst Header; VFIO refuses unknown flags",
            config_read(0, 4).flags(0x40),
            EINVAL,
        ),
        row(
            "Error flag on a command",
            "vfio-user.rst Header: Error is for replies",
            config_read(0, 4).flags(HeaderFlags::ERROR.bits()),
            EINVAL,
        ),
        row(
            "No_reply command gets no reply",
            "vfio-user.rst Header: No_reply",
            write(0x3c, vec![5]).flags(HeaderFlags::NO_REPLY.bits()),
            Expect::Nothing,
        ),
        row(
            "a failing No_reply command gets no reply either",
            "vfio-user.rst Header: No_reply",
            config_read(4096, 4).flags(HeaderFlags::NO_REPLY.bits()),
            Expect::Nothing,
        ),
        row(
            "a reply to nothing is dropped",
            "vfio-user.rst Header: replies match a command's id",
            config_read(0, 4).flags(HeaderFlags::REPLY.bits()),
            Expect::Nothing,
        ),
        row(
            "unknown command",
            "vfio-user.rst Commands",
            Raw {
                command: 99,
                flags: 0,
                payload: vec![],
                fds: 0,
            },
            Expect::Errno(libc::EOPNOTSUPP),
        ),
        row(
            "retired command 14",
            "vfio-user.rst Commands: 14 is retired",
            Raw {
                command: 14,
                flags: 0,
                payload: vec![],
                fds: 0,
            },
            Expect::Errno(libc::EOPNOTSUPP),
        ),
        row(
            "server-to-client command sent to the server",
            "vfio-user.rst DMA_READ: server to client",
            Raw::of(
                Command::DmaRead,
                DmaRead {
                    address: 0,
                    count: 4,
                },
            ),
            EINVAL,
        ),
        // argsz minimums.
        row(
            "DEVICE_GET_INFO argsz at its minimum",
            "linux/vfio.h VFIO_DEVICE_GET_INFO minsz 16",
            get_info(),
            Expect::Ok,
        ),
        row(
            "DEVICE_GET_INFO argsz below 16",
            "linux/vfio.h VFIO_DEVICE_GET_INFO minsz 16",
            get_info().patch(0, 15),
            EINVAL,
        ),
        row(
            "REGION_INFO argsz 32 (capabilities left out)",
            "linux/vfio.h VFIO_DEVICE_GET_REGION_INFO argsz rule",
            region_info(32),
            Expect::Ok,
        ),
        row(
            "REGION_INFO argsz below the fixed structure",
            "linux/vfio.h vfio_region_info minsz 32",
            region_info(31),
            EINVAL,
        ),
        row(
            "REGION_INFO argsz 0",
            "linux/vfio.h vfio_region_info minsz 32",
            region_info(0),
            EINVAL,
        ),
        row(
            "REGION_IO_FDS argsz below 16",
            "vfio-user.rst DEVICE_GET_REGION_IO_FDS",
            io_fds(0, 0).patch(0, 15),
            EINVAL,
        ),
        row(
            "REGION_IO_FDS with flags",
            "vfio-user.rst DEVICE_GET_REGION_IO_FDS: flags must be 0",
            io_fds(1, 0),
            EINVAL,
        ),
        row(
            "REGION_IO_FDS with a count",
            "vfio-user.rst DEVICE_GET_REGION_IO_FDS: count must be 0",
            io_fds(0, 1),
            EINVAL,
        ),
        row(
            "IRQ_INFO argsz below 16",
            "linux/vfio.h vfio_irq_info minsz 16",
            Raw::of(Command::DeviceGetIrqInfo, IrqInfo::request(2)).patch(0, 15),
            EINVAL,
        ),
        row(
            "SET_IRQS argsz below 20",
            "linux/vfio.h vfio_irq_set minsz 20",
            msix(0).patch(0, 19),
            EINVAL,
        ),
        row(
            "SET_IRQS bool data beyond argsz",
            "vfio_set_irqs_validate_and_prepare: minsz + data > argsz",
            Raw::of(
                Command::DeviceSetIrqs,
                SetIrqs::with_bools(SetIrqsFlags::ACTION_MASK, 2, 0, vec![true; 4]),
            )
            .patch(0, 23),
            EINVAL,
        ),
        row(
            "DMA_MAP argsz below 32",
            "linux/vfio.h vfio_iommu_type1_dma_map minsz 32",
            dma_map(0x80_0000, 0x1000).patch(0, 31),
            EINVAL,
        ),
        row(
            "DMA_UNMAP argsz below 24",
            "linux/vfio.h vfio_iommu_type1_dma_unmap minsz 24",
            Raw::of(Command::DmaUnmap, DmaUnmap::new(0x80_0000, 0x1000)).patch(0, 23),
            EINVAL,
        ),
        row(
            "DEVICE_FEATURE argsz below 8",
            "linux/vfio.h vfio_device_feature minsz 8",
            feature().patch(0, 7),
            EINVAL,
        ),
        row(
            "MIG_DATA_READ argsz below 8",
            "vfio-user.rst MIG_DATA_READ",
            Raw::of(Command::MigDataRead, MigDataRead::new(16)).patch(0, 7),
            EINVAL,
        ),
        // Unknown flag bits in payloads.
        row(
            "DMA_MAP unknown flags",
            "linux/vfio.h VFIO_IOMMU_MAP_DMA: READ, WRITE only",
            dma_map(0x80_0000, 0x1000).patch(4, 0x7),
            EINVAL,
        ),
        row(
            "DMA_UNMAP unknown flags",
            "linux/vfio.h VFIO_IOMMU_UNMAP_DMA: FLAG_ALL only here",
            Raw::of(Command::DmaUnmap, DmaUnmap::new(0x80_0000, 0x1000)).patch(4, 0x1),
            EINVAL,
        ),
        row(
            "SET_IRQS two DATA flags",
            "vfio_set_irqs_validate_and_prepare: one DATA, one ACTION",
            msix(0).patch(
                4,
                (SetIrqsFlags::DATA_NONE | SetIrqsFlags::DATA_BOOL | SetIrqsFlags::ACTION_TRIGGER)
                    .bits(),
            ),
            EINVAL,
        ),
        row(
            "SET_IRQS unknown flags",
            "vfio_set_irqs_validate_and_prepare",
            msix(0).patch(
                4,
                0x100 | (SetIrqsFlags::DATA_NONE | SetIrqsFlags::ACTION_TRIGGER).bits(),
            ),
            EINVAL,
        ),
        row(
            "DEVICE_FEATURE unknown op bits",
            "linux/vfio.h VFIO_DEVICE_FEATURE: GET, SET, PROBE",
            feature().patch(4, u32::from(FEATURE_MIGRATION) | 1 << 20),
            EINVAL,
        ),
        // Counts and fds.
        row(
            "fds with a command that takes none",
            "vfio-user.rst: fds only with DMA_MAP and SET_IRQS",
            config_read(0, 4).fds(1),
            EINVAL,
        ),
        row(
            "DMA_MAP with two fds",
            "vfio-user.rst DMA_MAP: at most one fd",
            dma_map(0x80_0000, 0x1000).fds(2),
            EINVAL,
        ),
        row(
            "SET_IRQS with more eventfds than count",
            "vfio-user.rst DEVICE_SET_IRQS: one fd per vector",
            msix(1).fds(2),
            EINVAL,
        ),
        row(
            "SET_IRQS with fewer eventfds than count",
            "vfio-user.rst DEVICE_SET_IRQS: one fd per vector",
            msix(2).fds(1),
            EINVAL,
        ),
        row(
            "SET_IRQS DATA_NONE with an fd",
            "vfio-user.rst DEVICE_SET_IRQS",
            Raw::of(
                Command::DeviceSetIrqs,
                SetIrqs::new(
                    SetIrqsFlags::DATA_NONE | SetIrqsFlags::ACTION_TRIGGER,
                    2,
                    0,
                    1,
                ),
            )
            .fds(1),
            EINVAL,
        ),
        row(
            "SET_IRQS beyond the index's vectors",
            "vfio_set_irqs_validate_and_prepare: start + count <= max",
            msix(1).patch(12, 4096).fds(1),
            EINVAL,
        ),
        row(
            "more fds than max_msg_fds",
            "vfio-user.rst VERSION max_msg_fds",
            msix(17).fds(17),
            Expect::Errno(libc::E2BIG),
        ),
        row(
            "REGION_WRITE count beyond its data",
            "vfio-user.rst REGION_WRITE: count bytes of data",
            write(0x3c, vec![1, 2, 3, 4]).patch(12, 8),
            EINVAL,
        ),
        row(
            "REGION_READ count above max_data_xfer_size",
            "vfio-user.rst VERSION max_data_xfer_size",
            config_read(0, (1 << 20) + 1),
            Expect::Errno(libc::E2BIG),
        ),
        // Accesses.
        row(
            "memory decoding on (COMMAND)",
            "PCI: BARs decode only with COMMAND.MEMORY",
            write(4, vec![0x06, 0x00]),
            Expect::Ok,
        ),
        row(
            "unaligned register access",
            "the function's registers are 32-bit aligned",
            bar0_read(2, 4),
            EINVAL,
        ),
        row(
            "access crossing the end of a region",
            "vfio-user.rst REGION_READ: inside the region",
            bar0_read(4094, 4),
            EINVAL,
        ),
        row(
            "access starting at the end of a region",
            "vfio-user.rst REGION_READ: inside the region",
            bar0_read(4096, 4),
            EINVAL,
        ),
        row(
            "config access crossing 4 KiB",
            "PCIe config space is 4 KiB",
            config_read(4092, 8),
            EINVAL,
        ),
        row(
            "offset + count wrapping",
            "vfio-user.rst REGION_READ",
            config_read(u64::MAX - 1, 4),
            EINVAL,
        ),
        row(
            "region index beyond the device's",
            "vfio-user.rst DEVICE_GET_INFO num_regions",
            Raw::of(
                Command::RegionRead,
                RegionRead {
                    offset: 0,
                    region: 9,
                    count: 4,
                },
            ),
            EINVAL,
        ),
        row(
            "REGION_INFO of an unknown index",
            "linux/vfio.h VFIO_DEVICE_GET_REGION_INFO",
            Raw::of(
                Command::DeviceGetRegionInfo,
                RegionInfoRequest {
                    argsz: 32,
                    index: 9,
                },
            ),
            EINVAL,
        ),
        // DMA ranges.
        row(
            "DMA_MAP without an fd",
            "vfio-user.rst DMA_MAP: no fd, DMA by message",
            dma_map(0x10_0000, 0x10000),
            Expect::Ok,
        ),
        row(
            "DMA_MAP overlapping a mapping",
            "vfio-user.rst DMA_MAP: overlap is EEXIST",
            dma_map(0x10_8000, 0x10000),
            Expect::Errno(libc::EEXIST),
        ),
        row(
            "DMA_MAP inside a mapping",
            "vfio-user.rst DMA_MAP: overlap is EEXIST",
            dma_map(0x10_1000, 0x1000),
            Expect::Errno(libc::EEXIST),
        ),
        row(
            "DMA_MAP wrapping the address space",
            "linux/vfio.h VFIO_IOMMU_MAP_DMA: iova + size overflow",
            dma_map(u64::MAX - 0xfff, 0x2000),
            EINVAL,
        ),
        row(
            "DMA_MAP of size 0",
            "linux/vfio.h VFIO_IOMMU_MAP_DMA: size 0",
            dma_map(0x40_0000, 0),
            EINVAL,
        ),
        row(
            "DMA_UNMAP not exactly a mapping",
            "vfio-user.rst DMA_UNMAP: must match a map",
            Raw::of(Command::DmaUnmap, DmaUnmap::new(0x10_0000, 0x1000)),
            EINVAL,
        ),
        row(
            "DMA_UNMAP FLAG_ALL with an address",
            "linux/vfio.h VFIO_DMA_UNMAP_FLAG_ALL: iova and size 0",
            Raw::of(Command::DmaUnmap, unmap_all_at),
            EINVAL,
        ),
        row(
            "DMA_UNMAP of the mapping",
            "vfio-user.rst DMA_UNMAP",
            Raw::of(Command::DmaUnmap, DmaUnmap::new(0x10_0000, 0x10000)),
            Expect::Ok,
        ),
        // VERSION once.
        row(
            "a second VERSION",
            "vfio-user.rst VERSION: the first message, once",
            version(),
            EINVAL,
        ),
    ]
}

fn efd() -> OwnedFd {
    eventfd(0, EventfdFlags::NONBLOCK | EventfdFlags::CLOEXEC).unwrap()
}

/// Sends `message` with id `id`, then a config read as a fence; returns what came back for
/// the message (`Nothing` when the fence's reply came first).
fn exchange(stream: &UnixStream, id: u16, message: &Raw) -> Expect {
    let fds: Vec<OwnedFd> = (0..message.fds).map(|_| efd()).collect();
    let borrowed: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
    let mut header = Header::request(id, Command::Version, message.payload.len());
    header.command = message.command;
    header.flags = HeaderFlags::from_bits_retain(message.flags);
    write_message(stream, &header, &message.payload, &borrowed).unwrap();
    let fence = config_read(0, 4);
    let mut fence_header = Header::request(id.wrapping_add(1), Command::RegionRead, 0);
    fence_header.command = fence.command;
    write_message(stream, &fence_header, &fence.payload, &[]).unwrap();
    let limits = Limits {
        max_data_xfer_size: 2 << 20,
        ..Limits::default()
    };
    let first = read_message(stream, &limits).unwrap();
    if first.header.msg_id == id && first.header.is_reply() {
        let fence_reply = read_message(stream, &limits).unwrap();
        assert_eq!(
            fence_reply.header.msg_id,
            id.wrapping_add(1),
            "the fence follows"
        );
        assert!(!fence_reply.header.is_error(), "the connection still works");
        if first.header.is_error() {
            Expect::Errno(first.header.errno())
        } else {
            Expect::Ok
        }
    } else {
        assert_eq!(
            first.header.msg_id,
            id.wrapping_add(1),
            "an unexpected message"
        );
        assert!(!first.header.is_error(), "the connection still works");
        Expect::Nothing
    }
}

fn endpoint(name: &str, dir: &std::path::Path, backend: &SampleBackend) -> Endpoint {
    let template = Arc::new(compile(Arc::new(parse_layout("sample", LAYOUT).unwrap())));
    let vf =
        Arc::new(VirtualFunction::provision(backend, template, "default", name, vec![]).unwrap());
    Endpoint::bind(
        Port::new(name, vf),
        &dir.join(format!("{name}.sock")),
        Arc::new(ServerConfig::default()),
    )
    .unwrap()
}

fn connect(endpoint: &Endpoint) -> UnixStream {
    let stream = UnixStream::connect(endpoint.path()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
}

#[test]
fn the_server_follows_every_rule_of_the_table() {
    let dir: PathBuf =
        std::env::temp_dir().join(format!("vfio-variant-conformance-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let backend = SampleBackend::new(4);
    let function = endpoint("conf", &dir, &backend);

    let mut failures = Vec::new();
    let mut total = 0;
    // VERSION first: before it every command is refused, and the connection goes on.
    let stream = connect(&function);
    let before = exchange_unnegotiated(&stream);
    total += 1;
    if before != EINVAL {
        failures.push(format!(
            "a command before VERSION [{SPEC} VERSION: the first message]: got {before:?}"
        ));
    }
    let mut id = 0x100u16;
    for row in negotiated_rows() {
        total += 1;
        id = id.wrapping_add(2);
        let got = exchange(&stream, id, &row.message);
        println!(
            "CONFORMANCE {:<48} [{}] {:?} -> {:?}",
            row.rule, row.source, row.expect, got
        );
        if got != row.expect {
            failures.push(format!(
                "{} [{}]: expected {:?}, got {:?}",
                row.rule, row.source, row.expect, got
            ));
        }
    }
    drop(stream);
    std::fs::remove_dir_all(&dir).unwrap();
    println!("CONFORMANCE rows passed {}/{total}", total - failures.len());
    assert!(
        failures.is_empty(),
        "rules broken:\n{}",
        failures.join("\n")
    );
}

/// A config read before VERSION, then VERSION; returns the answer to the config read.
fn exchange_unnegotiated(stream: &UnixStream) -> Expect {
    let read = config_read(0, 4);
    write_message(
        stream,
        &Header {
            command: read.command,
            ..Header::request(1, Command::RegionRead, 0)
        },
        &read.payload,
        &[],
    )
    .unwrap();
    let reply = read_message(stream, &Limits::default()).unwrap();
    let v = version();
    write_message(
        stream,
        &Header::request(2, Command::Version, 0),
        &v.payload,
        &[],
    )
    .unwrap();
    let negotiated = read_message(stream, &Limits::default()).unwrap();
    assert!(
        !negotiated.header.is_error(),
        "VERSION after a refused command"
    );
    if reply.header.is_error() {
        Expect::Errno(reply.header.errno())
    } else {
        Expect::Ok
    }
}
