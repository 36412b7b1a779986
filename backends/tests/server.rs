//! The device server over real sockets, with the framework's vfio-user client and the sample
//! backend: every command, DMA with and without fds, interrupts, reconnects, bad input.

use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rustix::event::{EventfdFlags, eventfd};
use vfio_variant::config::ConfigSpace;
use vfio_variant::device::VirtualFunction;
use vfio_variant::migration::{MigrationFlags, MigrationState};
use vfio_variant::server::{Endpoint, Port, ServerConfig};
use vfio_variant::vfio_user::access::WriteMultiEntry;
use vfio_variant::vfio_user::client::{Client, ClientError, ClientOptions, DmaHandler};
use vfio_variant::vfio_user::dma::{DmaMap, DmaMapFlags};
use vfio_variant::vfio_user::header::{Command, Header};
use vfio_variant::vfio_user::irq::{IRQ_INDEX_INTX, IRQ_INDEX_MSIX, SetIrqs, SetIrqsFlags};
use vfio_variant::vpci::{compile::compile, parse_layout};
use vfio_variant_backends::builtin::sample::{LAYOUT, SampleBackend, registers::*};

struct Fixture {
    dir: PathBuf,
    endpoint: Endpoint,
    _backend: SampleBackend,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn fixture(name: &str, config: ServerConfig) -> Fixture {
    let dir =
        std::env::temp_dir().join(format!("vfio-variant-server-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let backend = SampleBackend::new(4);
    let layout = Arc::new(parse_layout("sample", LAYOUT).unwrap());
    let template = Arc::new(compile(layout));
    let vf =
        Arc::new(VirtualFunction::provision(&backend, template, "default", name, vec![]).unwrap());
    let port = Port::new(name, vf);
    let endpoint =
        Endpoint::bind(port, &dir.join(format!("{name}.sock")), Arc::new(config)).unwrap();
    Fixture {
        dir,
        endpoint,
        _backend: backend,
    }
}

fn connect(f: &Fixture) -> Client {
    let options = ClientOptions {
        timeout: Some(Duration::from_secs(10)),
        ..ClientOptions::default()
    };
    Client::connect_with(f.endpoint.path(), options).unwrap()
}

fn read(c: &mut Client, region: u32, offset: u64, len: usize) -> Result<Vec<u8>, ClientError> {
    let mut data = vec![0u8; len];
    c.region_read(region, offset, &mut data).map(|()| data)
}

fn reg_read(c: &mut Client, offset: u64) -> u32 {
    let data = read(c, 0, offset, 4).unwrap();
    u32::from_le_bytes(data.try_into().unwrap())
}

fn reg_write(c: &mut Client, offset: u64, value: u32) {
    c.region_write(0, offset, &value.to_le_bytes()).unwrap();
}

/// DMA_STATUS once the transfer started by the last START is over (the engine runs after
/// the write is answered).
fn dma_status(c: &mut Client) -> u32 {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let status = reg_read(c, DMA_STATUS);
        if status != DMA_STATUS_BUSY || std::time::Instant::now() >= deadline {
            return status;
        }
        std::thread::sleep(Duration::from_micros(100));
    }
}

fn enable_memory(c: &mut Client) {
    c.region_write(7, 4, &[0x06, 0x00]).unwrap();
}

fn wait_detached(f: &Fixture) {
    for _ in 0..1000 {
        if !f.endpoint.is_attached() {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!("the server still has the old client");
}

fn memfd(len: u64) -> OwnedFd {
    let fd = rustix::fs::memfd_create("guest", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
    rustix::fs::ftruncate(&fd, len).unwrap();
    fd
}

fn efd() -> OwnedFd {
    eventfd(0, EventfdFlags::NONBLOCK | EventfdFlags::CLOEXEC).unwrap()
}

fn wait_count(fd: &OwnedFd) -> u64 {
    for _ in 0..200 {
        let mut buf = [0u8; 8];
        if let Ok(8) = rustix::io::read(fd, &mut buf) {
            return u64::from_ne_bytes(buf);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    0
}

#[test]
fn socket_is_private_and_config_space_is_the_layout() {
    let f = fixture("config", ServerConfig::default());
    let mode = std::fs::metadata(f.endpoint.path())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let mut c = connect(&f);
    let info = c.device_info().unwrap();
    assert_eq!((info.num_regions, info.num_irqs), (9, 5));
    let config = read(&mut c, 7, 0, 4096).unwrap();
    let template = Arc::new(compile(Arc::new(parse_layout("sample", LAYOUT).unwrap())));
    let mut expected = vec![0u8; 4096];
    ConfigSpace::new(template)
        .read(0, &mut expected, &vfio_variant::config::NoBacking)
        .unwrap();
    assert_eq!(config, expected);
    // Regions: BAR0 registers, BAR2 mmappable with one fd and a sparse area.
    let bar0 = c.region_info(0).unwrap();
    assert_eq!(bar0.info.size, 4096);
    let bar2 = c.region_info(2).unwrap();
    assert_eq!(bar2.info.size, 64 << 10);
    assert_eq!(bar2.fds.len(), 1);
    assert_eq!(bar2.info.sparse_areas().unwrap_or_default().len(), 1);
    assert_eq!(c.region_info(8).unwrap().info.size, 0);
    assert!(matches!(
        c.region_info(9),
        Err(ClientError::Remote {
            errno: libc::EINVAL,
            ..
        })
    ));
}

#[test]
fn registers_posted_writes_and_write_multi_keep_order() {
    let f = fixture("regs", ServerConfig::default());
    let mut c = connect(&f);
    assert!(
        matches!(
            read(&mut c, 0, ID, 4),
            Err(ClientError::Remote {
                errno: libc::EIO,
                ..
            })
        ),
        "memory decoding off"
    );
    enable_memory(&mut c);
    assert_eq!(reg_read(&mut c, ID), ID_VALUE);
    for i in 0..1000u32 {
        c.region_write_posted(0, SCRATCH, &i.to_le_bytes()).unwrap();
    }
    assert_eq!(reg_read(&mut c, SCRATCH), 999);
    c.write_multi(&[
        WriteMultiEntry::new(0, SCRATCH, &7u32.to_le_bytes()).unwrap(),
        WriteMultiEntry::new(0, DMA_LEN, &9u32.to_le_bytes()).unwrap(),
    ])
    .unwrap();
    assert_eq!(
        (reg_read(&mut c, SCRATCH), reg_read(&mut c, DMA_LEN)),
        (7, 9)
    );
    assert!(matches!(
        read(&mut c, 0, 2, 4),
        Err(ClientError::Remote {
            errno: libc::EINVAL,
            ..
        })
    ));
    assert!(matches!(
        read(&mut c, 0, 4096, 4),
        Err(ClientError::Remote {
            errno: libc::EINVAL,
            ..
        })
    ));
}

#[test]
fn dma_through_an_fd_and_msix_interrupt() {
    let f = fixture("dma", ServerConfig::default());
    let mut c = connect(&f);
    enable_memory(&mut c);
    let guest = memfd(1 << 20);
    let map = memmap2::MmapOptions::new()
        .len(1 << 20)
        .map_raw(&guest)
        .unwrap();
    c.dma_map(
        &DmaMap::new(
            0x10_0000,
            1 << 20,
            0,
            DmaMapFlags::READ | DmaMapFlags::WRITE,
        ),
        Some(guest.as_fd()),
    )
    .unwrap();
    // SAFETY: the test writes 16 bytes at offset 0x1000 of its own 1 MiB mapping.
    unsafe {
        std::ptr::copy_nonoverlapping(
            b"guest memory 16b".as_ptr(),
            map.as_mut_ptr().add(0x1000),
            16,
        )
    };
    let vector = efd();
    c.set_irqs(&SetIrqs::eventfds(IRQ_INDEX_MSIX, 0, 1), &[vector.as_fd()])
        .unwrap();
    // MSI-X enable in the virtual config space (capability at 0x40, control at 0x42).
    c.region_write(7, 0x42, &[0x00, 0x80]).unwrap();
    reg_write(&mut c, DMA_SRC_LO, 0x10_1000);
    reg_write(&mut c, DMA_DST_LO, 0x18_0000);
    reg_write(&mut c, DMA_LEN, 16);
    reg_write(&mut c, DMA_CMD, DMA_CMD_START | DMA_CMD_IRQ);
    assert_eq!(dma_status(&mut c), 0);
    let mut copied = [0u8; 16];
    // SAFETY: reads 16 bytes at offset 0x80000 of the test's own mapping.
    unsafe { std::ptr::copy_nonoverlapping(map.as_ptr().add(0x8_0000), copied.as_mut_ptr(), 16) };
    assert_eq!(&copied, b"guest memory 16b");
    assert_eq!(wait_count(&vector), 1);
    // Unmapped: the device reports a fault, the server keeps going.
    c.dma_unmap_all().unwrap();
    reg_write(&mut c, DMA_CMD, DMA_CMD_START);
    assert_eq!(dma_status(&mut c), 2);
}

struct VecMemory(Arc<Mutex<Vec<u8>>>);

impl DmaHandler for VecMemory {
    fn dma_read(&mut self, address: u64, buf: &mut [u8]) -> Result<(), i32> {
        let m = self.0.lock();
        let at = address as usize;
        buf.copy_from_slice(m.get(at..at + buf.len()).ok_or(libc::EFAULT)?);
        Ok(())
    }
    fn dma_write(&mut self, address: u64, data: &[u8]) -> Result<(), i32> {
        let mut m = self.0.lock();
        let at = address as usize;
        m.get_mut(at..at + data.len())
            .ok_or(libc::EFAULT)?
            .copy_from_slice(data);
        Ok(())
    }
}

#[test]
fn dma_without_an_fd_goes_through_dma_read_and_write_messages() {
    let f = fixture("remote", ServerConfig::default());
    let mut c = connect(&f);
    enable_memory(&mut c);
    let memory = Arc::new(Mutex::new(vec![0u8; 0x4000]));
    memory.lock()[0x100..0x108].copy_from_slice(b"no fd!!!");
    c.set_dma_handler(Box::new(VecMemory(Arc::clone(&memory))));
    c.dma_map(
        &DmaMap::new(0, 0x4000, 0, DmaMapFlags::READ | DmaMapFlags::WRITE),
        None,
    )
    .unwrap();
    reg_write(&mut c, DMA_SRC_LO, 0x100);
    reg_write(&mut c, DMA_DST_LO, 0x3000);
    reg_write(&mut c, DMA_LEN, 8);
    reg_write(&mut c, DMA_CMD, DMA_CMD_START);
    assert_eq!(dma_status(&mut c), 0);
    assert_eq!(&memory.lock()[0x3000..0x3008], b"no fd!!!");
}

#[test]
fn intx_fires_sets_status_and_needs_unmask() {
    let f = fixture("intx", ServerConfig::default());
    let mut c = connect(&f);
    enable_memory(&mut c);
    let line = efd();
    c.set_irqs(&SetIrqs::eventfds(IRQ_INDEX_INTX, 0, 1), &[line.as_fd()])
        .unwrap();
    reg_write(&mut c, RAISE, 0);
    assert_eq!(wait_count(&line), 1);
    assert_eq!(
        read(&mut c, 7, 6, 1).unwrap()[0] & 0x08,
        0x08,
        "STATUS.INTERRUPT set"
    );
    c.set_irqs(
        &SetIrqs::new(
            SetIrqsFlags::DATA_NONE | SetIrqsFlags::ACTION_UNMASK,
            IRQ_INDEX_INTX,
            0,
            1,
        ),
        &[],
    )
    .unwrap();
    assert_eq!(
        wait_count(&line),
        1,
        "still asserted: fires again after unmask"
    );
    reg_write(&mut c, INT_STATUS, INT_RAISED);
    assert_eq!(read(&mut c, 7, 6, 1).unwrap()[0] & 0x08, 0, "deasserted");
    c.set_irqs(
        &SetIrqs::new(
            SetIrqsFlags::DATA_NONE | SetIrqsFlags::ACTION_UNMASK,
            IRQ_INDEX_INTX,
            0,
            1,
        ),
        &[],
    )
    .unwrap();
    // COMMAND.INTX_DISABLE masks the line, not the condition (as a real function does).
    c.region_write(7, 4, &[0x06, 0x04]).unwrap();
    reg_write(&mut c, RAISE, 0);
    assert_eq!(
        read(&mut c, 7, 6, 1).unwrap()[0] & 0x08,
        0x08,
        "pending while disabled"
    );
    assert_eq!(wait_count(&line), 0, "no interrupt while disabled");
    c.region_write(7, 4, &[0x06, 0x00]).unwrap();
    assert_eq!(wait_count(&line), 1, "fires once enabled");
}

#[test]
fn reconnect_keeps_device_state_and_drops_client_resources() {
    let f = fixture("reconnect", ServerConfig::default());
    let mut c = connect(&f);
    enable_memory(&mut c);
    reg_write(&mut c, SCRATCH, 0x5eed);
    let guest = memfd(0x10000);
    c.dma_map(
        &DmaMap::new(0, 0x10000, 0, DmaMapFlags::READ | DmaMapFlags::WRITE),
        Some(guest.as_fd()),
    )
    .unwrap();
    // A second client is refused while the first is attached.
    let options = ClientOptions {
        timeout: Some(Duration::from_secs(2)),
        ..ClientOptions::default()
    };
    assert!(Client::connect_with(f.endpoint.path(), options.clone()).is_err());
    assert!(f.endpoint.is_attached());
    drop(c);
    wait_detached(&f);
    let mut c = Client::connect_with(f.endpoint.path(), options).unwrap();
    assert_eq!(
        reg_read(&mut c, SCRATCH),
        0x5eed,
        "device state survives the client"
    );
    reg_write(&mut c, DMA_LEN, 8);
    reg_write(&mut c, DMA_CMD, DMA_CMD_START);
    assert_eq!(
        dma_status(&mut c),
        2,
        "the old client's DMA mappings are gone"
    );
}

#[test]
fn the_sample_function_stops_for_migration() {
    let f = fixture("features", ServerConfig::default());
    let mut c = connect(&f);
    assert_eq!(
        c.migration_flags().unwrap(),
        MigrationFlags::STOP_COPY | MigrationFlags::P2P
    );
    // No stream outside the saving states.
    assert!(matches!(
        c.mig_data_read(64),
        Err(ClientError::Remote {
            errno: libc::EINVAL,
            ..
        })
    ));
    enable_memory(&mut c);
    c.set_mig_state(MigrationState::RunningP2p).unwrap();
    reg_write(&mut c, DMA_LEN, 8);
    reg_write(&mut c, DMA_CMD, DMA_CMD_START);
    assert_eq!(dma_status(&mut c), DMA_STATUS_STOPPED);
    assert_eq!(reg_read(&mut c, DMA_COUNT), 0, "nothing ran while stopped");
    c.set_mig_state(MigrationState::Running).unwrap();
    reg_write(&mut c, DMA_CMD, DMA_CMD_START);
    assert_ne!(dma_status(&mut c), DMA_STATUS_STOPPED);
    // A reset leaves any migration state: RUNNING again, and so does a guest's FLR
    // (PCIe DEVCTL at 0x58, Initiate FLR bit 15).
    c.set_mig_state(MigrationState::Stop).unwrap();
    c.reset().unwrap();
    assert_eq!(c.mig_state().unwrap(), MigrationState::Running);
    c.set_mig_state(MigrationState::Stop).unwrap();
    c.region_write(7, 0x58, &0x8000u16.to_le_bytes()).unwrap();
    assert_eq!(c.mig_state().unwrap(), MigrationState::Running);
}

fn raw_exchange(stream: &mut UnixStream, bytes: &[u8]) -> Header {
    stream.write_all(bytes).unwrap();
    let mut head = [0u8; 16];
    stream.read_exact(&mut head).unwrap();
    let header = Header::decode(&head);
    let mut rest = vec![0u8; header.payload_len()];
    stream.read_exact(&mut rest).unwrap();
    header
}

#[test]
fn malformed_messages_get_error_replies_and_the_connection_goes_on() {
    let f = fixture("garbage", ServerConfig::default());
    let mut s = UnixStream::connect(f.endpoint.path()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // Before VERSION: refused.
    let mut msg = Header::request(1, Command::DeviceGetInfo, 16)
        .encode()
        .to_vec();
    msg.extend_from_slice(&[16, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(raw_exchange(&mut s, &msg).errno(), libc::EINVAL);
    // Unknown command 99.
    let mut unknown = msg.clone();
    unknown[2] = 99;
    assert!(raw_exchange(&mut s, &unknown).is_error());
    // A truncated REGION_READ payload.
    let truncated = Header::request(3, Command::RegionRead, 4)
        .encode()
        .iter()
        .copied()
        .chain([0u8; 4])
        .collect::<Vec<u8>>();
    assert_eq!(raw_exchange(&mut s, &truncated).errno(), libc::EINVAL);
    // A claimed size far above the limits: refused, drained, connection kept.
    let mut huge = Header::request(4, Command::RegionWrite, 0)
        .encode()
        .to_vec();
    huge[4..8].copy_from_slice(&(8u32 << 20).to_le_bytes());
    s.write_all(&huge).unwrap();
    s.write_all(&vec![0u8; (8 << 20) - 16]).unwrap();
    let mut head = [0u8; 16];
    s.read_exact(&mut head).unwrap();
    assert!(Header::decode(&head).is_error());
    // The server still works: a new client after this one.
    drop(s);
    wait_detached(&f);
    let mut c = connect(&f);
    enable_memory(&mut c);
    assert_eq!(reg_read(&mut c, ID), ID_VALUE);
}

#[test]
fn a_stalled_client_does_not_stall_another_function() {
    let a = fixture("stall-a", ServerConfig::default());
    let b = fixture("stall-b", ServerConfig::default());
    // A client of `a` that connects, sends half a header and never reads.
    let mut stalled = UnixStream::connect(a.endpoint.path()).unwrap();
    stalled.write_all(&[1, 0, 1]).unwrap();
    let mut c = connect(&b);
    enable_memory(&mut c);
    for i in 0..100u32 {
        reg_write(&mut c, SCRATCH, i);
    }
    assert_eq!(reg_read(&mut c, SCRATCH), 99);
}

#[test]
fn peers_outside_the_allow_list_are_refused() {
    let config = ServerConfig {
        allowed_uids: vec![u32::MAX - 1],
        ..ServerConfig::default()
    };
    let f = fixture("uid", config);
    let options = ClientOptions {
        timeout: Some(Duration::from_secs(2)),
        ..ClientOptions::default()
    };
    assert!(Client::connect_with(f.endpoint.path(), options).is_err());
}

#[test]
fn polling_mode_serves_the_same() {
    let config = ServerConfig {
        poll: Some(Duration::from_micros(100)),
        ..ServerConfig::default()
    };
    let f = fixture("polling", config);
    let mut c = connect(&f);
    enable_memory(&mut c);
    for i in 0..200u32 {
        c.region_write_posted(0, SCRATCH, &i.to_le_bytes()).unwrap();
    }
    assert_eq!(reg_read(&mut c, SCRATCH), 199);
    assert_eq!(reg_read(&mut c, ID), ID_VALUE);
}

/// A client that behaves as QEMU does: it answers the server's DMA requests only once the
/// reply it waits for has come. A device that read guest memory before answering the write
/// that started the transfer would never get its data; the calls would time out.
#[test]
fn dma_by_message_never_holds_up_the_reply_to_the_write_that_started_it() {
    let f = fixture("deferring", ServerConfig::default());
    let options = ClientOptions {
        timeout: Some(Duration::from_secs(3)),
        ..ClientOptions::default()
    };
    let mut c = Client::connect_with(f.endpoint.path(), options).unwrap();
    enable_memory(&mut c);
    let memory = Arc::new(Mutex::new(vec![0u8; 0x4000]));
    memory.lock()[0x100..0x110].copy_from_slice(b"private guest ra");
    c.set_dma_handler(Box::new(VecMemory(Arc::clone(&memory))));
    c.set_deferred_dma(true);
    c.dma_map(
        &DmaMap::new(0, 0x4000, 0, DmaMapFlags::READ | DmaMapFlags::WRITE),
        None,
    )
    .unwrap();
    reg_write(&mut c, DMA_SRC_LO, 0x100);
    reg_write(&mut c, DMA_DST_LO, 0x2000);
    reg_write(&mut c, DMA_LEN, 16);
    for round in 1..=3 {
        memory.lock()[0x2000..0x2010].fill(0);
        c.region_write(0, DMA_CMD, &DMA_CMD_START.to_le_bytes())
            .expect("the START write is answered before the transfer reads memory");
        assert_eq!(dma_status(&mut c), 0);
        assert_eq!(reg_read(&mut c, DMA_COUNT), round);
        assert_eq!(&memory.lock()[0x2000..0x2010], b"private guest ra");
    }
}

/// The sample function, saying it cannot work without shared guest RAM (as a passthrough
/// function over real VFIO will).
struct NeedsShared(Box<dyn vfio_variant::backend::Function>);

impl vfio_variant::backend::Function for NeedsShared {
    fn reset(&self) -> Result<(), vfio_variant::backend::FunctionError> {
        self.0.reset()
    }
    fn needs_shared_memory(&self) -> bool {
        true
    }
}

#[test]
fn a_function_that_needs_shared_memory_refuses_dma_map_without_an_fd() {
    use vfio_variant::backend::{Backend, CreateRequest};
    let dir =
        std::env::temp_dir().join(format!("vfio-variant-server-shared-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let backend = SampleBackend::new(1);
    let layout = Arc::new(parse_layout("sample", LAYOUT).unwrap());
    let function = backend
        .create(&CreateRequest {
            profile: "default".into(),
            instance: "shared".into(),
            layout: Arc::clone(&layout),
            attributes: vec![],
        })
        .unwrap();
    let vf = Arc::new(
        VirtualFunction::new(Arc::new(compile(layout)), Box::new(NeedsShared(function))).unwrap(),
    );
    let endpoint = Endpoint::bind(
        Port::new("shared", vf),
        &dir.join("shared.sock"),
        Arc::new(ServerConfig::default()),
    )
    .unwrap();
    let mut c = Client::connect_with(
        endpoint.path(),
        ClientOptions {
            timeout: Some(Duration::from_secs(10)),
            ..ClientOptions::default()
        },
    )
    .unwrap();
    let rw = DmaMapFlags::READ | DmaMapFlags::WRITE;
    // Guest RAM without an fd: refused, and the connection goes on.
    assert!(matches!(
        c.dma_map(&DmaMap::new(0, 0x4000, 0, rw), None),
        Err(ClientError::Remote {
            errno: libc::ENOTSUP,
            ..
        })
    ));
    // A read-only range (a ROM, which QEMU never has in a file) is taken.
    c.dma_map(&DmaMap::new(0xc_0000, 0x1000, 0, DmaMapFlags::READ), None)
        .unwrap();
    // Shared RAM is taken.
    let guest = memfd(0x4000);
    c.dma_map(&DmaMap::new(0x10_0000, 0x4000, 0, rw), Some(guest.as_fd()))
        .unwrap();
    drop(c);
    drop(endpoint);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Stopping the function for migration waits for its DMA engine; the transfer in flight
/// reaches guest memory by messages whose answers the connection thread must hand over
/// while it waits, or the stop would stall until the DMA timed out.
#[test]
fn stopping_waits_for_dma_by_message_without_stalling_the_connection() {
    let config = ServerConfig {
        dma_timeout: Duration::from_secs(60),
        ..ServerConfig::default()
    };
    let f = fixture("stop-dma", config);
    let options = ClientOptions {
        timeout: Some(Duration::from_secs(3)),
        ..ClientOptions::default()
    };
    let mut c = Client::connect_with(f.endpoint.path(), options).unwrap();
    enable_memory(&mut c);
    let memory = Arc::new(Mutex::new(vec![0u8; 0x4000]));
    memory.lock()[0x100..0x108].copy_from_slice(b"in fligh");
    c.set_dma_handler(Box::new(VecMemory(Arc::clone(&memory))));
    c.dma_map(
        &DmaMap::new(0, 0x4000, 0, DmaMapFlags::READ | DmaMapFlags::WRITE),
        None,
    )
    .unwrap();
    reg_write(&mut c, DMA_SRC_LO, 0x100);
    reg_write(&mut c, DMA_DST_LO, 0x2000);
    reg_write(&mut c, DMA_LEN, 8);
    // The client answers DMA only while it waits for a reply: after this one, the
    // transfer still waits for at least its DMA_WRITE.
    reg_write(&mut c, DMA_CMD, DMA_CMD_START);
    c.set_mig_state(MigrationState::RunningP2p)
        .expect("the stop returns once the transfer in flight is done");
    assert_eq!(&memory.lock()[0x2000..0x2008], b"in fligh");
    assert_eq!(reg_read(&mut c, DMA_STATUS), 0);
    assert_eq!(reg_read(&mut c, DMA_COUNT), 1);
}
