//! idxd sub-devices over real vfio-user sockets with the framework's client: guest memory is
//! a memfd mapped with DMA_MAP, descriptors are 64-byte REGION_WRITEs to BAR2, completion
//! records and data are read back from the memfd, interrupts arrive on eventfds.

use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustix::event::{EventfdFlags, eventfd};
use vfio_variant::backend::{Backend, CreateRequest};
use vfio_variant::device::VirtualFunction;
use vfio_variant::server::{Endpoint, Port, ServerConfig};
use vfio_variant::vfio_user::client::{Client, ClientOptions};
use vfio_variant::vfio_user::dma::{DmaMap, DmaMapFlags};
use vfio_variant::vfio_user::irq::{IRQ_INDEX_MSIX, SetIrqs};
use vfio_variant::vpci::{compile::compile, parse_layout};
use vfio_variant_idxd::hw::completion::{Completion, status};
use vfio_variant_idxd::hw::descriptor::{Descriptor, flag, op};
use vfio_variant_idxd::hw::engine::crc32c;
use vfio_variant_idxd::hw::registers::*;
use vfio_variant_idxd::{IdxdBackend, IdxdConfig};

const GUEST_SIZE: u64 = 1 << 20;

struct Device {
    endpoint: Endpoint,
    client: Client,
    guest: OwnedFd,
    /// IOVA of the guest memfd's byte 0.
    base: u64,
    /// Guest memory is reached by messages the client answers only during its calls.
    private: bool,
}

/// The guest's memfd reached by DMA_READ/DMA_WRITE messages.
struct ByMessage(OwnedFd, u64);

impl vfio_variant::vfio_user::client::DmaHandler for ByMessage {
    fn dma_read(&mut self, address: u64, buf: &mut [u8]) -> Result<(), i32> {
        let len = buf.len();
        let at = address.checked_sub(self.1).ok_or(libc_efault())?;
        match rustix::io::pread(&self.0, buf, at) {
            Ok(n) if n == len => Ok(()),
            _ => Err(libc_efault()),
        }
    }
    fn dma_write(&mut self, address: u64, data: &[u8]) -> Result<(), i32> {
        let at = address.checked_sub(self.1).ok_or(libc_efault())?;
        match rustix::io::pwrite(&self.0, data, at) {
            Ok(n) if n == data.len() => Ok(()),
            _ => Err(libc_efault()),
        }
    }
}

fn libc_efault() -> i32 {
    rustix::io::Errno::FAULT.raw_os_error()
}

fn socket_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vfio-variant-idxd-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Creates a sub-device of `profile`, exposes it on a socket, connects, maps guest memory at
/// `base`, enables memory decoding, bus mastering and MSI-X.
fn device(
    backend: &IdxdBackend,
    dir: &std::path::Path,
    name: &str,
    profile: &str,
    base: u64,
) -> Device {
    device_with(backend, dir, name, profile, base, false)
}

/// As [`device`]; with `private`, guest memory is mapped without an fd and the client
/// answers DMA as QEMU does, only once the reply it waits for came.
fn device_with(
    backend: &IdxdBackend,
    dir: &std::path::Path,
    name: &str,
    profile: &str,
    base: u64,
    private: bool,
) -> Device {
    let text = backend.default_layout(profile).unwrap();
    let layout = Arc::new(parse_layout(name, &text).unwrap());
    let template = Arc::new(compile(layout));
    let vf =
        Arc::new(VirtualFunction::provision(backend, template, profile, name, vec![]).unwrap());
    let endpoint = Endpoint::bind(
        Port::new(name, vf),
        &dir.join(format!("{name}.sock")),
        Arc::new(ServerConfig::default()),
    )
    .unwrap();
    let options = ClientOptions {
        timeout: Some(Duration::from_secs(10)),
        ..ClientOptions::default()
    };
    let mut client = Client::connect_with(endpoint.path(), options).unwrap();
    let guest = rustix::fs::memfd_create("guest", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
    rustix::fs::ftruncate(&guest, GUEST_SIZE).unwrap();
    if private {
        client.set_dma_handler(Box::new(ByMessage(guest.try_clone().unwrap(), base)));
        client.set_deferred_dma(true);
    }
    client
        .dma_map(
            &DmaMap::new(base, GUEST_SIZE, 0, DmaMapFlags::READ | DmaMapFlags::WRITE),
            (!private).then(|| guest.as_fd()),
        )
        .unwrap();
    // COMMAND: memory decoding and bus mastering; MSI-X enable (capability at 0x40).
    client.region_write(7, 4, &[0x06, 0x00]).unwrap();
    client.region_write(7, 0x42, &[0x00, 0x80]).unwrap();
    Device {
        endpoint,
        client,
        guest,
        base,
        private,
    }
}

impl Device {
    fn reg_read(&mut self, offset: u64) -> u32 {
        let mut data = [0u8; 4];
        self.client.region_read(0, offset, &mut data).unwrap();
        u32::from_le_bytes(data)
    }

    fn reg_write(&mut self, offset: u64, value: u32) {
        self.client
            .region_write(0, offset, &value.to_le_bytes())
            .unwrap();
    }

    fn command(&mut self, code: u32, operand: u32) -> u32 {
        self.reg_write(CMD, (code << CMD_SHIFT) | operand);
        self.reg_read(CMDSTS)
    }

    fn enable(&mut self) {
        assert_eq!(self.command(cmd::ENABLE_DEVICE, 0), 0);
        assert_eq!(self.command(cmd::ENABLE_WQ, 0), 0);
    }

    fn put(&self, iova: u64, data: &[u8]) {
        let written = rustix::io::pwrite(&self.guest, data, iova - self.base).unwrap();
        assert_eq!(written, data.len());
    }

    fn get(&self, iova: u64, len: usize) -> Vec<u8> {
        let mut data = vec![0u8; len];
        let read = rustix::io::pread(&self.guest, &mut data, iova - self.base).unwrap();
        assert_eq!(read, len);
        data
    }

    fn record(&self, iova: u64) -> Completion {
        let mut b = [0u8; 32];
        b.copy_from_slice(&self.get(iova, 32));
        Completion::decode(&b)
    }

    /// The completion record at `iova` once its status is written (descriptors run after
    /// the portal write returns; a driver polls the record), for 10 s at most.
    fn completed(&mut self, iova: u64) -> Completion {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            if self.private {
                // A call lets the client answer the device's DMA requests, as a running
                // vCPU lets QEMU's main loop.
                self.reg_read(GENSTS);
            }
            let record = self.record(iova);
            if record.status != 0 || std::time::Instant::now() >= deadline {
                return record;
            }
            std::thread::sleep(Duration::from_micros(100));
        }
    }

    /// Submits through the unlimited portal and returns the completion record.
    fn submit(&mut self, desc: &Descriptor) -> Completion {
        self.put(desc.completion_addr, &[0u8; 32]);
        self.client.region_write(2, 0, &desc.encode()).unwrap();
        self.completed(desc.completion_addr)
    }
}

fn desc(opcode: u8, completion: u64, src: u64, dst: u64, size: u32) -> Descriptor {
    Descriptor {
        opcode,
        flags: flag::CRAV | flag::RCR,
        completion_addr: completion,
        src,
        dst,
        size,
        ..Descriptor::default()
    }
}

fn data(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn efd() -> OwnedFd {
    eventfd(0, EventfdFlags::NONBLOCK | EventfdFlags::CLOEXEC).unwrap()
}

fn wait_count(fd: &OwnedFd) -> u64 {
    for _ in 0..400 {
        let mut buf = [0u8; 8];
        if let Ok(8) = rustix::io::read(fd, &mut buf) {
            return u64::from_ne_bytes(buf);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    0
}

#[test]
fn every_operation_through_the_portal() {
    let dir = socket_dir("ops");
    let backend = IdxdBackend::new(IdxdConfig::default()).unwrap();
    let mut d = device(&backend, &dir, "ops", "1dwq", 0x10_0000);
    // Config space is the catalog's; BAR0 shows one read-only WQ.
    let mut ids = [0u8; 4];
    d.client.region_read(7, 0, &mut ids).unwrap();
    assert_eq!(ids, [0x86, 0x80, 0x25, 0x0b]);
    assert_eq!(d.reg_read(GENCAP) & (GENCAP_CONFIG_EN as u32), 0);
    let info = d.client.region_info(2).unwrap();
    assert_eq!(info.info.size, 0x2000);
    assert_eq!((d.reg_read(WQCAP) >> 16) & 0xff, 1, "one WQ");
    d.enable();
    let (cr, src, dst, dst2) = (0x10_0000, 0x11_0000, 0x12_0000, 0x13_0000);
    let payload = data(10_000, 7);
    d.put(src, &payload);

    let c = d.submit(&desc(op::NOP, cr, 0, 0, 0));
    assert_eq!(c.status, status::SUCCESS);
    let c = d.submit(&desc(op::DRAIN, cr, 0, 0, 0));
    assert_eq!(c.status, status::SUCCESS);

    let c = d.submit(&desc(op::MEMMOVE, cr, src, dst, 10_000));
    assert_eq!((c.status, c.bytes_completed), (status::SUCCESS, 10_000));
    assert_eq!(d.get(dst, 10_000), payload);

    let c = d.submit(&desc(op::FILL, cr, 0x0102_0304_0506_0708, dst, 4096));
    assert_eq!(c.status, status::SUCCESS);
    assert_eq!(&d.get(dst, 8), &[8, 7, 6, 5, 4, 3, 2, 1]);

    let c = d.submit(&desc(
        op::COMPARE_PATTERN,
        cr,
        dst,
        0x0102_0304_0506_0708,
        4096,
    ));
    assert_eq!((c.status, c.result), (status::SUCCESS, 0));

    d.put(dst, &payload);
    let c = d.submit(&desc(op::COMPARE, cr, src, dst, 10_000));
    assert_eq!((c.status, c.result), (status::SUCCESS, 0));
    d.put(dst + 5000, &[!payload[5000]]);
    let mut checked = desc(op::COMPARE, cr, src, dst, 10_000);
    checked.flags |= flag::CHECK_RESULT;
    let c = d.submit(&checked);
    assert_eq!(
        (c.status, c.result, c.bytes_completed),
        (status::SUCCESS_PRED, 1, 5000)
    );

    let mut dualcast = desc(op::DUALCAST, cr, src, dst + 0x40, 3000);
    dualcast.extra = dst2 + 0x40;
    let c = d.submit(&dualcast);
    assert_eq!(c.status, status::SUCCESS);
    assert_eq!(d.get(dst + 0x40, 3000), payload[..3000]);
    assert_eq!(d.get(dst2 + 0x40, 3000), payload[..3000]);

    let c = d.submit(&desc(op::CRC_GEN, cr, src, 0, 10_000));
    assert_eq!(
        (c.status, c.crc),
        (status::SUCCESS, u64::from(crc32c(0, &payload)))
    );
    d.put(src + 0x3000, b"123456789");
    let c = d.submit(&desc(op::CRC_GEN, cr, src + 0x3000, 0, 9));
    assert_eq!(c.crc, 0xe306_9283);

    let mut copy_crc = desc(op::COPY_CRC, cr, src, dst2, 5000);
    copy_crc.extra = 0xffff_ffff;
    let c = d.submit(&copy_crc);
    assert_eq!(
        (c.status, c.crc),
        (
            status::SUCCESS,
            u64::from(crc32c(0xffff_ffff, &payload[..5000]))
        )
    );
    assert_eq!(d.get(dst2, 5000), payload[..5000]);

    let c = d.submit(&desc(op::CACHE_FLUSH, cr, 0, dst, 8192));
    assert_eq!(c.status, status::SUCCESS);

    // A batch of three, with their own completion records, through the limited portal.
    let list = 0x14_0000;
    let subs = [
        desc(op::FILL, cr + 0x20, 0xeeee_eeee_eeee_eeee, dst, 100),
        desc(op::MEMMOVE, cr + 0x40, src, dst + 0x1000, 100),
        desc(op::NOP, cr + 0x60, 0, 0, 0),
    ];
    for (i, s) in subs.iter().enumerate() {
        d.put(list + 64 * i as u64, &s.encode());
    }
    let batch = desc(op::BATCH, cr, list, 0, 3);
    d.put(cr, &[0u8; 32]);
    d.client.region_write(2, 0x1000, &batch.encode()).unwrap();
    let c = d.completed(cr);
    assert_eq!((c.status, c.bytes_completed), (status::SUCCESS, 3));
    assert_eq!(d.get(dst, 100), vec![0xee; 100]);
    assert_eq!(d.get(dst + 0x1000, 100), payload[..100]);
    for i in 1..=3 {
        assert_eq!(d.record(cr + 0x20 * i).status, status::SUCCESS);
    }

    // Invalid descriptors get error completion records.
    let c = d.submit(&desc(0x07, cr, src, dst, 64));
    assert_eq!(c.status, status::BAD_OPCODE);
    let c = d.submit(&desc(op::MEMMOVE, cr, src, dst, 0));
    assert_eq!(c.status, status::XFER_ERANGE);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn page_fault_completion_says_how_far_it_got() {
    let dir = socket_dir("fault");
    let backend = IdxdBackend::new(IdxdConfig::default()).unwrap();
    let mut d = device(&backend, &dir, "fault", "1dwq", 0x10_0000);
    d.enable();
    let end = 0x10_0000 + GUEST_SIZE;
    // Source runs 0x1800 bytes past the end of guest memory.
    let c = d.submit(&desc(
        op::MEMMOVE,
        0x10_0000,
        end - 0x800,
        0x10_1000,
        0x2000,
    ));
    assert_eq!(c.status, status::PAGE_FAULT);
    assert_eq!((c.bytes_completed, c.fault_addr), (0x800, end));
    // Destination faults: status bit 7 marks a write.
    let c = d.submit(&desc(op::FILL, 0x10_0000, 0, end - 0x100, 0x200));
    assert_eq!(c.status, status::PAGE_FAULT | status::FAULT_WRITE);
    assert_eq!((c.bytes_completed, c.fault_addr), (0x100, end));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn completion_interrupts_on_vector_1_and_commands_on_vector_0() {
    let dir = socket_dir("irq");
    let backend = IdxdBackend::new(IdxdConfig::default()).unwrap();
    let mut d = device(&backend, &dir, "irq", "1swq", 0x10_0000);
    let vectors = [efd(), efd()];
    d.client
        .set_irqs(
            &SetIrqs::eventfds(IRQ_INDEX_MSIX, 0, 2),
            &[vectors[0].as_fd(), vectors[1].as_fd()],
        )
        .unwrap();
    d.enable();
    let mut nop = desc(op::NOP, 0x10_0000, 0, 0, 0);
    nop.flags |= flag::RCI;
    nop.int_handle = 1;
    assert_eq!(d.submit(&nop).status, status::SUCCESS);
    assert_eq!(wait_count(&vectors[1]), 1);
    d.reg_write(CMD, CMD_INT_REQ | (cmd::DRAIN_ALL << CMD_SHIFT));
    assert_eq!(wait_count(&vectors[0]), 1);
    assert_eq!(d.reg_read(INTCAUSE), INTC_CMD);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn two_sub_devices_run_concurrently_and_are_isolated() {
    let dir = socket_dir("two");
    let backend = IdxdBackend::new(IdxdConfig::default()).unwrap();
    let mut a = device(&backend, &dir, "a", "1dwq", 0x10_0000);
    let mut b = device(&backend, &dir, "b", "1dwq", 0x80_0000);
    a.enable();
    b.enable();
    let run = |mut d: Device, seed: u8| {
        std::thread::spawn(move || {
            let base = d.base;
            for i in 0..50u8 {
                let payload = data(8192, seed.wrapping_add(i));
                d.put(base + 0x1_0000, &payload);
                let c = d.submit(&desc(
                    op::MEMMOVE,
                    base,
                    base + 0x1_0000,
                    base + 0x4_0000,
                    8192,
                ));
                assert_eq!(c.status, status::SUCCESS);
                assert_eq!(d.get(base + 0x4_0000, 8192), payload);
            }
            d
        })
    };
    let (ta, tb) = (run(a, 1), run(b, 100));
    let mut a = ta.join().unwrap();
    let b = tb.join().unwrap();
    // B's memory is unreachable from A: the address faults in A and B's bytes stay.
    b.put(0x85_0000, &[0x77; 64]);
    let c = a.submit(&desc(op::MEMMOVE, 0x10_0000, 0x85_0000, 0x10_2000, 64));
    assert_eq!((c.status, c.fault_addr), (status::PAGE_FAULT, 0x85_0000));
    let c = a.submit(&desc(op::FILL, 0x10_0000, 0, 0x85_0000, 64));
    assert_eq!(c.status, status::PAGE_FAULT | status::FAULT_WRITE);
    assert_eq!(b.get(0x85_0000, 64), vec![0x77; 64]);
    drop((a.endpoint, b.endpoint));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn lifecycle_counts_refusal_and_return() {
    let dir = socket_dir("life");
    let backend = IdxdBackend::new(IdxdConfig {
        dedicated: 2,
        shared: 1,
        ..IdxdConfig::default()
    })
    .unwrap();
    let counts = |b: &IdxdBackend| -> Vec<u32> {
        b.profiles().iter().map(|p| p.available_instances).collect()
    };
    assert_eq!(counts(&backend), vec![2, 1]);
    let a = device(&backend, &dir, "a", "1dwq", 0x10_0000);
    let b = device(&backend, &dir, "b", "1dwq", 0x10_0000);
    assert_eq!(counts(&backend), vec![0, 1]);
    let text = backend.default_layout("1dwq").unwrap();
    let refused = backend.create(&CreateRequest {
        profile: "1dwq".into(),
        instance: "c".into(),
        layout: Arc::new(parse_layout("c", &text).unwrap()),
        attributes: vec![],
    });
    assert!(refused.is_err_and(|e| e.to_string().contains("no instance")));
    assert_eq!(counts(&backend), vec![0, 1], "nothing changed");
    // Destroy: the server lets go of the function, the WQ returns to the pool.
    drop(a);
    for _ in 0..400 {
        if counts(&backend) == vec![1, 1] {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(counts(&backend), vec![1, 1]);
    drop(b);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A portal write is answered before the descriptor reads guest memory: with memory reached by
/// messages a QEMU-like client answers only after that reply, descriptors still complete.
#[test]
fn descriptors_run_with_guest_memory_reached_by_messages() {
    let dir = socket_dir("private");
    let backend = IdxdBackend::new(IdxdConfig::default()).unwrap();
    let mut d = device_with(&backend, &dir, "private", "1dwq", 0x10_0000, true);
    d.enable();
    let payload = data(4096, 9);
    d.put(0x10_1000, &payload);
    let c = d.submit(&desc(op::MEMMOVE, 0x10_0000, 0x10_1000, 0x10_4000, 4096));
    assert_eq!(c.status, status::SUCCESS);
    assert_eq!(d.get(0x10_4000, 4096), payload);
    drop(d.endpoint);
    let _ = std::fs::remove_dir_all(&dir);
}
