//! Device-parts migration of a virtio-blk VF between two emulated PFs (each with its own
//! image file of the same contents): requests the driver published while the source was
//! stopped complete on the destination exactly once, the used ring continues, and I/O goes
//! on; a virtio-net VF whose queued frame leaves from the destination's link, with the
//! source's MAC; the refusals (a PF without the commands, corrupt or foreign parts leaving
//! the destination unchanged); and the PF's device-parts commands themselves.

mod common;

use std::fs::OpenOptions;
use std::io::ErrorKind;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use common::{DriverQueue, Irqs, Memory, ModernDriver, ro, wo};
use vfio_variant::backend::emulated::{DmaSlot, HostMemory, IrqSlot};
use vfio_variant::backend::{Backend, CreateRequest, Function, FunctionContext};
use vfio_variant::migration::{MigrationError, MigrationHooks, MigrationState, StateMachine};
use vfio_variant::physical::PhysicalFunction;
use vfio_variant::vpci::parse_layout;
use vfio_variant_virtio_legacy::VirtioLegacyBackend;
use vfio_variant_virtio_legacy::admin::{ADMIN_MEMORY, AdminError, AdminQueue};
use vfio_variant_virtio_legacy::backend::{PROFILE_MODERN, Vf};
use vfio_variant_virtio_legacy::function::Attachment;
use vfio_variant_virtio_legacy::hw::blk::{
    BlkDevice, SECTOR_SIZE, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_S_OK, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use vfio_variant_virtio_legacy::hw::net::{NetDevice, VIRTIO_NET_F_MAC};
use vfio_variant_virtio_legacy::hw::parts::{DeviceState, F_OPTIONAL, RawPart, split, types};
use vfio_variant_virtio_legacy::hw::pf::admin::*;
use vfio_variant_virtio_legacy::hw::pf::{PfOptions, VirtioPf};
use vfio_variant_virtio_legacy::hw::transport::{DEVICE_OFFSET, common as cc};
use vfio_variant_virtio_legacy::hw::vf::VirtioVf;
use vfio_variant_virtio_legacy::hw::{
    DEVICE_TYPE_BLK, DEVICE_TYPE_NET, STATUS_DRIVER_OK, STATUS_FEATURES_OK, VIRTIO_F_VERSION_1,
    VirtioDevice,
};

use MigrationState::{Resuming, Running, Stop, StopCopy};

const SECTORS: u64 = 64;
const QUEUE: u64 = 0x1000;
const HEADERS: u64 = 0x10000;
const DATA: u64 = 0x20000;
const STATUS: u64 = 0x30000;

struct Image(PathBuf);

impl Image {
    fn new(contents: &[u8]) -> Self {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "virtio-migration-test-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::write(&path, contents).unwrap();
        Self(path)
    }

    fn contents(&self) -> Vec<u8> {
        std::fs::read(&self.0).unwrap()
    }

    fn sector(&self, sector: u64) -> Vec<u8> {
        let file = std::fs::File::open(&self.0).unwrap();
        let mut data = vec![0u8; SECTOR_SIZE as usize];
        file.read_exact_at(&mut data, sector * SECTOR_SIZE).unwrap();
        data
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// One emulated PF with one blk VF over its own image, and the backend over it.
struct Host {
    image: Image,
    vf: Arc<VirtioVf>,
    admin: Arc<AdminQueue>,
    backend: VirtioLegacyBackend,
}

fn host(contents: &[u8], options: PfOptions) -> Host {
    let image = Image::new(contents);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&image.0)
        .unwrap();
    let device = Box::new(BlkDevice::new(file, "disk").unwrap());
    let (vf, admin, backend) = pf(device, DEVICE_TYPE_BLK, options);
    Host {
        image,
        vf,
        admin,
        backend,
    }
}

/// A PF with one VF around `device`, and the backend over it.
fn pf(
    device: Box<dyn VirtioDevice>,
    device_type: u16,
    options: PfOptions,
) -> (Arc<VirtioVf>, Arc<AdminQueue>, VirtioLegacyBackend) {
    let attachment = Attachment {
        dma: Arc::new(DmaSlot::default()),
        interrupts: Arc::new(IrqSlot::default()),
    };
    let vf = Arc::new(VirtioVf::new(
        "vf1",
        device,
        attachment.dma.clone(),
        attachment.interrupts.clone(),
    ));
    let memory = Arc::new(HostMemory::new(ADMIN_MEMORY as usize));
    let pf = Arc::new(VirtioPf::new(
        "pf",
        vec![vf.clone()],
        options,
        memory.clone(),
        Irqs::new(),
    ));
    let admin = Arc::new(AdminQueue::setup(pf, memory, 0).unwrap());
    let backend = VirtioLegacyBackend::new(
        device_type,
        admin.clone(),
        vec![Vf {
            member: 1,
            function: vf.clone(),
            attachment: Some(attachment),
        }],
    );
    (vf, admin, backend)
}

impl Host {
    fn function(&self, mem: &Arc<Memory>, irqs: &Arc<Irqs>) -> Box<dyn Function> {
        function(&self.backend, mem, irqs)
    }
}

/// The backend's VF provisioned (modern profile) and attached to `mem`.
fn function(
    backend: &VirtioLegacyBackend,
    mem: &Arc<Memory>,
    irqs: &Arc<Irqs>,
) -> Box<dyn Function> {
    let text = backend.default_layout(PROFILE_MODERN).unwrap();
    let function = backend
        .create(&CreateRequest {
            profile: PROFILE_MODERN.into(),
            instance: "i0".into(),
            layout: Arc::new(parse_layout("vf", &text).unwrap()),
            attributes: Vec::new(),
        })
        .unwrap();
    function.attach(FunctionContext {
        dma: mem.clone(),
        interrupts: irqs.clone(),
    });
    function
}

/// The guest's blk driver: requests in slots of the header, data and status areas.
struct Guest {
    mem: Arc<Memory>,
    queue: DriverQueue,
}

impl Guest {
    fn new(mem: &Arc<Memory>) -> Self {
        Self {
            mem: mem.clone(),
            queue: DriverQueue::new(16, QUEUE),
        }
    }

    fn init(&self, function: &dyn Function) {
        let driver = ModernDriver::new(function.physical().unwrap());
        let status = driver.negotiate(VIRTIO_F_VERSION_1 | VIRTIO_BLK_F_FLUSH);
        assert_ne!(status & STATUS_FEATURES_OK, 0);
        driver.setup_queue(0, &self.queue, 0);
        driver.driver_ok();
    }

    /// Publishes request `slot` (a one-sector read or write) without notifying.
    fn publish(&mut self, slot: u64, kind: u32, sector: u64, data: &[u8]) -> u16 {
        let header = HEADERS + 16 * slot;
        let buffer = DATA + SECTOR_SIZE * slot;
        let mut h = kind.to_le_bytes().to_vec();
        h.extend_from_slice(&[0; 4]);
        h.extend_from_slice(&sector.to_le_bytes());
        self.mem.put(header, &h);
        self.mem.put(STATUS + slot, &[0xff]);
        let len = SECTOR_SIZE as u32;
        if kind == VIRTIO_BLK_T_OUT {
            self.mem.put(buffer, data);
            self.queue.add(
                &self.mem,
                &[ro(header, 16), ro(buffer, len), wo(STATUS + slot, 1)],
            )
        } else {
            self.queue.add(
                &self.mem,
                &[ro(header, 16), wo(buffer, len), wo(STATUS + slot, 1)],
            )
        }
    }

    fn status(&self, slot: u64) -> u8 {
        self.mem.get(STATUS + slot, 1)[0]
    }

    fn used_idx(&self) -> u16 {
        self.mem.u16_at(self.queue.used + 2)
    }
}

fn pattern(seed: u8) -> Vec<u8> {
    (0..SECTOR_SIZE)
        .map(|i| seed.wrapping_add(i as u8))
        .collect()
}

fn walk(driver: &mut StateMachine, hooks: &dyn MigrationHooks, to: MigrationState) {
    driver.set_state(hooks, to).unwrap();
}

/// Reads the whole stop-copy state in small pieces.
fn save_all(hooks: &dyn MigrationHooks) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 37];
    loop {
        let n = hooks.save(&mut buf).unwrap();
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&buf[..n]);
    }
}

/// The source VF with one completed write and two writes published while it was stopped,
/// migrated to a destination on another PF: returns the state bytes and the pieces.
struct Migrated {
    mem: Arc<Memory>,
    guest: Guest,
    source: Host,
    source_function: Box<dyn Function>,
    parts: Vec<u8>,
}

fn stop_and_save() -> Migrated {
    let mem = Memory::new(1 << 20);
    let source = host(
        &vec![0u8; (SECTORS * SECTOR_SIZE) as usize],
        PfOptions::default(),
    );
    assert!(source.backend.migratable());
    let irqs = Irqs::new();
    let function = source.function(&mem, &irqs);
    let mut guest = Guest::new(&mem);
    guest.init(&*function);
    let driver = ModernDriver::new(function.physical().unwrap());

    guest.publish(0, VIRTIO_BLK_T_OUT, 0, &pattern(1));
    driver.notify(0);
    source.vf.quiesce();
    assert_eq!(guest.used_idx(), 1);
    assert_eq!(guest.status(0), VIRTIO_BLK_S_OK);
    assert_eq!(source.image.sector(0), pattern(1));

    let hooks = function
        .migration()
        .expect("the PF has the device-parts commands");
    let mut states = StateMachine::new(hooks.flags());
    walk(&mut states, hooks, MigrationState::RunningP2p);
    assert!(source.vf.transport().stopped());
    irqs.take();
    // In flight: published and notified while the device is stopped.
    guest.publish(1, VIRTIO_BLK_T_OUT, 1, &pattern(2));
    guest.publish(2, VIRTIO_BLK_T_OUT, 2, &pattern(3));
    driver.notify(0);
    source.vf.quiesce();
    assert_eq!(guest.used_idx(), 1, "a stopped VF processes nothing");
    assert!(irqs.take().is_empty(), "a stopped VF raises nothing");
    // Registers still answer.
    assert_ne!(driver.status() & STATUS_DRIVER_OK, 0);

    walk(&mut states, hooks, StopCopy);
    let size = hooks.stop_copy_size().unwrap();
    let parts = save_all(hooks);
    assert_eq!(parts.len() as u64, size);
    walk(&mut states, hooks, Stop);
    assert_eq!(source.image.sector(1), vec![0; SECTOR_SIZE as usize]);
    Migrated {
        mem,
        guest,
        source,
        source_function: function,
        parts,
    }
}

fn load(hooks: &dyn MigrationHooks, states: &mut StateMachine, parts: &[u8]) {
    walk(states, hooks, Resuming);
    for chunk in parts.chunks(50) {
        hooks.load(chunk).unwrap();
    }
}

#[test]
fn in_flight_requests_complete_on_the_destination_exactly_once() {
    let mut m = stop_and_save();
    let state = DeviceState::decode(&m.parts).unwrap();
    assert_eq!(state.queues[0].last_avail_idx, 1);
    assert_eq!(state.queues[0].used_idx, 1);
    assert_eq!(state.queues[0].size, 16);

    // The destination's image has the same contents (a shared or copied disk).
    let destination = host(&m.source.image.contents(), PfOptions::default());
    let irqs = Irqs::new();
    let function = destination.function(&m.mem, &irqs);
    let hooks = function.migration().unwrap();
    let mut states = StateMachine::new(hooks.flags());
    load(hooks, &mut states, &m.parts);
    walk(&mut states, hooks, Stop);
    assert_eq!(destination.vf.transport().device_state(), state);
    assert_eq!(
        m.guest.used_idx(),
        1,
        "nothing runs before the VF is resumed"
    );
    walk(&mut states, hooks, Running);
    destination.vf.quiesce();

    // The two in-flight writes completed on the destination, once, in order.
    assert_eq!(m.guest.used_idx(), 3);
    assert_eq!(m.guest.queue.take_used(&m.mem).unwrap().0, 0);
    let heads: Vec<u32> = (0..2)
        .map(|_| m.guest.queue.take_used(&m.mem).unwrap().0)
        .collect();
    assert_eq!(heads, [3, 6]);
    assert_eq!(m.guest.status(1), VIRTIO_BLK_S_OK);
    assert_eq!(m.guest.status(2), VIRTIO_BLK_S_OK);
    assert_eq!(destination.image.sector(1), pattern(2));
    assert_eq!(destination.image.sector(2), pattern(3));
    assert_eq!(m.source.image.sector(1), vec![0; SECTOR_SIZE as usize]);
    assert_eq!(m.source.image.sector(2), vec![0; SECTOR_SIZE as usize]);
    assert!(!irqs.take().is_empty(), "the completions were signalled");

    // The driver goes on with the destination.
    let driver = ModernDriver::new(function.physical().unwrap());
    assert_ne!(driver.status() & STATUS_DRIVER_OK, 0);
    driver.write(cc::QUEUE_SELECT, 2, 0);
    assert_eq!(driver.read(cc::QUEUE_ENABLE, 2), 1);
    assert_eq!(driver.read(cc::QUEUE_DESC, 8), QUEUE);
    m.guest.publish(3, VIRTIO_BLK_T_IN, 2, &[]);
    driver.notify(0);
    destination.vf.quiesce();
    assert_eq!(m.guest.used_idx(), 4);
    assert_eq!(m.guest.status(3), VIRTIO_BLK_S_OK);
    assert_eq!(m.mem.get(DATA + 3 * SECTOR_SIZE, 512), pattern(3));
    drop(m.source_function);
}

#[test]
fn corrupt_or_foreign_parts_leave_the_destination_unchanged() {
    let m = stop_and_save();
    let destination = host(&m.source.image.contents(), PfOptions::default());
    let irqs = Irqs::new();
    let function = destination.function(&m.mem, &irqs);
    let hooks = function.migration().unwrap();
    let before = destination.vf.transport().device_state();

    // A mandatory part of an unknown type.
    let mut unknown = m.parts.clone();
    RawPart {
        part_type: 0x5ff,
        flags: 0,
        selector: [0; 8],
        value: &[1],
    }
    .encode_into(&mut unknown);
    // A queue enabled with a size that is not a power of two.
    let parsed = DeviceState::decode(&m.parts).unwrap();
    let mut bad_size = parsed.clone();
    bad_size.queues[0].size = 12;
    // Another disk (a different capacity).
    let mut other_disk = parsed.clone();
    other_disk.device_config[0] ^= 1;
    // A truncated list, and nothing at all.
    let truncated = m.parts[..m.parts.len() - 3].to_vec();
    for corrupt in [
        unknown,
        bad_size.encode(),
        other_disk.encode(),
        truncated,
        Vec::new(),
    ] {
        let mut states = StateMachine::new(hooks.flags());
        load(hooks, &mut states, &corrupt);
        match hooks.transition(Resuming, Stop) {
            Err(MigrationError::InvalidData(_)) => {}
            other => panic!("expected invalid data, got {other:?}"),
        }
        assert_eq!(destination.vf.transport().device_state(), before);
        // The device lets a reset take it back to running.
        function.reset().unwrap();
    }
    assert_eq!(m.guest.used_idx(), 1);

    // The good state still loads afterwards: no object leaked.
    let mut states = StateMachine::new(hooks.flags());
    load(hooks, &mut states, &m.parts);
    walk(&mut states, hooks, Running);
    destination.vf.quiesce();
    assert_eq!(m.guest.used_idx(), 3);
}

#[test]
fn a_pf_without_the_commands_offers_no_migration() {
    let h = host(
        &vec![0u8; 4096],
        PfOptions {
            migration_opcodes: false,
            ..PfOptions::default()
        },
    );
    assert!(!h.backend.migratable());
    assert!(h.backend.profiles().iter().all(|p| !p.migratable));
    let function = h.function(&Memory::new(4096), &Irqs::new());
    assert!(function.migration().is_none());
    // And the commands are refused by opcode.
    match h.admin.command(DEV_MODE_SET, 1, &[1], 0) {
        Err(AdminError::Status { qualifier, .. }) => assert_eq!(qualifier, Q_INVALID_OPCODE),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn migratable_profiles_are_reported() {
    let h = host(&vec![0u8; 4096], PfOptions::default());
    assert!(h.backend.profiles().iter().all(|p| p.migratable));
}

/// The refusal's status and qualifier.
fn refused(result: Result<Vec<u8>, AdminError>) -> (u16, u16) {
    match result {
        Err(AdminError::Status {
            status, qualifier, ..
        }) => (status, qualifier),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn object(id: u32, operation: u8) -> Vec<u8> {
    let mut d = RESOURCE_OBJ_DEV_PARTS.to_le_bytes().to_vec();
    d.extend_from_slice(&[0, 0]);
    d.extend_from_slice(&id.to_le_bytes());
    d.extend_from_slice(&[0; 8]);
    d.push(operation);
    d.extend_from_slice(&[0; 7]);
    d
}

fn request(id: u32, kind: u8) -> Vec<u8> {
    let mut d = object(id, 0)[..8].to_vec();
    d.push(kind);
    d.extend_from_slice(&[0; 7]);
    d
}

#[test]
fn the_pf_checks_device_parts_commands() {
    // The backend discovered migration: the capability is set (limit 4 of each).
    let h = host(&vec![0u8; 4096], PfOptions::default());
    let a = &*h.admin;
    // Capability commands belong to the self group.
    assert_eq!(
        refused(a.command(CAP_ID_LIST_QUERY, 0, &[], 8)),
        (STATUS_EINVAL, Q_INVALID_GROUP)
    );
    assert_eq!(
        a.self_command(CAP_ID_LIST_QUERY, &[], 8).unwrap(),
        1u64.to_le_bytes()
    );
    assert_eq!(
        refused(a.self_command(DEVICE_CAP_GET, &[1, 0, 0, 0, 0, 0, 0, 0], 2)),
        (STATUS_ENXIO, Q_INVALID_FIELD)
    );
    let mut cap = vec![0u8; 8];
    cap.extend_from_slice(&[DEV_PARTS_OBJECTS_LIMIT + 1, 1]);
    assert_eq!(
        refused(a.self_command(DRIVER_CAP_SET, &cap, 0)),
        (STATUS_EINVAL, Q_INVALID_FIELD)
    );

    // Objects: ids below the limit, unique, owned by their member.
    a.command(RESOURCE_OBJ_CREATE, 1, &object(0, DEV_PARTS_TYPE_GET), 0)
        .unwrap();
    assert_eq!(
        refused(a.command(RESOURCE_OBJ_CREATE, 1, &object(0, DEV_PARTS_TYPE_SET), 0)),
        (STATUS_EEXIST, Q_INVALID_FIELD)
    );
    assert_eq!(
        refused(a.command(RESOURCE_OBJ_CREATE, 1, &object(9, DEV_PARTS_TYPE_SET), 0)),
        (STATUS_EINVAL, Q_INVALID_FIELD)
    );
    assert_eq!(
        refused(a.command(RESOURCE_OBJ_CREATE, 1, &object(1, 2), 0)),
        (STATUS_EINVAL, Q_INVALID_FIELD)
    );
    // While objects exist the capability cannot change.
    let mut cap = vec![0u8; 8];
    cap.extend_from_slice(&[1, 1]);
    assert_eq!(
        refused(a.self_command(DRIVER_CAP_SET, &cap, 0)),
        (STATUS_EBUSY, Q_INVALID_COMMAND)
    );

    // Metadata: size, count, the header list; a result that does not fit is ENOMEM.
    let all = h.vf.transport().device_state().encode();
    let size = a
        .command(
            DEV_PARTS_METADATA_GET,
            1,
            &request(0, METADATA_TYPE_SIZE),
            8,
        )
        .unwrap();
    assert_eq!(size[..4], (all.len() as u32).to_le_bytes());
    let headers = split(&all).unwrap();
    let count = a
        .command(
            DEV_PARTS_METADATA_GET,
            1,
            &request(0, METADATA_TYPE_COUNT),
            8,
        )
        .unwrap();
    assert_eq!(count[..4], (headers.len() as u32).to_le_bytes());
    let list = a
        .command(
            DEV_PARTS_METADATA_GET,
            1,
            &request(0, METADATA_TYPE_LIST),
            0x400,
        )
        .unwrap();
    assert_eq!(list.len(), 8 + 16 * headers.len());
    assert_eq!(list[8..24], headers[0].header());
    assert_eq!(
        refused(a.command(DEV_PARTS_GET, 1, &request(0, GET_TYPE_ALL), 16)),
        (STATUS_ENOMEM, Q_NORESOURCE)
    );
    // GET all, and GET of selected parts.
    assert_eq!(
        a.command(DEV_PARTS_GET, 1, &request(0, GET_TYPE_ALL), all.len())
            .unwrap(),
        all
    );
    let status_part = headers
        .iter()
        .find(|p| p.part_type == types::DEVICE_STATUS)
        .unwrap();
    let mut selected = request(0, GET_TYPE_SELECTED);
    selected.extend_from_slice(&status_part.header());
    let mut expected = Vec::new();
    status_part.encode_into(&mut expected);
    assert_eq!(
        a.command(DEV_PARTS_GET, 1, &selected, 64).unwrap(),
        expected
    );
    assert_eq!(headers[0].flags, F_OPTIONAL);

    // SET needs a set object, and a stopped member.
    let mut set = object(0, 0)[..8].to_vec();
    set.extend_from_slice(&all);
    assert_eq!(
        refused(a.command(DEV_PARTS_SET, 1, &set, 0)),
        (STATUS_EINVAL, Q_INVALID_FIELD)
    );
    a.command(RESOURCE_OBJ_CREATE, 1, &object(1, DEV_PARTS_TYPE_SET), 0)
        .unwrap();
    let mut set = object(1, 0)[..8].to_vec();
    set.extend_from_slice(&all);
    assert_eq!(
        refused(a.command(DEV_PARTS_SET, 1, &set, 0)),
        (STATUS_EBUSY, Q_INVALID_COMMAND)
    );
    assert_eq!(
        refused(a.command(DEV_MODE_SET, 1, &[2], 0)),
        (STATUS_EINVAL, Q_INVALID_FIELD)
    );
    a.command(DEV_MODE_SET, 1, &[DEV_MODE_STOPPED], 0).unwrap();
    a.command(DEV_PARTS_SET, 1, &set, 0).unwrap();
    a.command(DEV_MODE_SET, 1, &[0], 0).unwrap();
    assert!(!h.vf.transport().stopped());

    // Destroy: once.
    a.command(RESOURCE_OBJ_DESTROY, 1, &object(1, 0)[..8], 0)
        .unwrap();
    assert_eq!(
        refused(a.command(RESOURCE_OBJ_DESTROY, 1, &object(1, 0)[..8], 0)),
        (STATUS_ENXIO, Q_INVALID_FIELD)
    );
    a.command(RESOURCE_OBJ_DESTROY, 1, &object(0, 0)[..8], 0)
        .unwrap();
}

#[test]
fn a_net_vf_sends_its_queued_frame_from_the_destination_with_its_mac() {
    const MAC_A: [u8; 6] = [0x52, 0x54, 0, 0, 0, 0xa];
    const MAC_B: [u8; 6] = [0x52, 0x54, 0, 0, 0, 0xb];
    let mem = Memory::new(1 << 20);
    let (net_a, link_a) = NetDevice::new(MAC_A).unwrap();
    let (net_b, link_b) = NetDevice::new(MAC_B).unwrap();
    link_a.set_nonblocking(true).unwrap();
    link_b.set_nonblocking(true).unwrap();
    let (_vf_a, _, backend_a) = pf(Box::new(net_a), DEVICE_TYPE_NET, PfOptions::default());
    let (vf_b, _, backend_b) = pf(Box::new(net_b), DEVICE_TYPE_NET, PfOptions::default());
    let source = function(&backend_a, &mem, &Irqs::new());
    let driver = ModernDriver::new(source.physical().unwrap());
    driver.negotiate(VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MAC);
    let mut tx = DriverQueue::new(16, 0x8000);
    driver.setup_queue(0, &DriverQueue::new(16, 0x1000), 0);
    driver.setup_queue(1, &tx, 1);
    driver.driver_ok();

    let hooks = source.migration().unwrap();
    let mut states = StateMachine::new(hooks.flags());
    walk(&mut states, hooks, MigrationState::RunningP2p);
    let mut packet = vec![0u8; 12];
    packet.extend_from_slice(b"queued while stopped");
    mem.put(0x20000, &packet);
    tx.add(&mem, &[ro(0x20000, packet.len() as u32)]);
    driver.notify(1);
    let mut buffer = [0u8; 64];
    assert_eq!(
        link_a.recv(&mut buffer).unwrap_err().kind(),
        ErrorKind::WouldBlock
    );
    walk(&mut states, hooks, StopCopy);
    let parts = save_all(hooks);
    walk(&mut states, hooks, Stop);

    let destination = function(&backend_b, &mem, &Irqs::new());
    let hooks = destination.migration().unwrap();
    let mut states = StateMachine::new(hooks.flags());
    load(hooks, &mut states, &parts);
    walk(&mut states, hooks, Running);
    vf_b.quiesce();
    let n = link_b.recv(&mut buffer).unwrap();
    assert_eq!(&buffer[..n], b"queued while stopped");
    assert_eq!(tx.take_used(&mem).map(|(id, _)| id), Some(0));
    assert_eq!(
        link_a.recv(&mut buffer).unwrap_err().kind(),
        ErrorKind::WouldBlock
    );
    // The VM keeps its MAC address.
    let mut mac = [0u8; 6];
    vf_b.bar_read(0, DEVICE_OFFSET, &mut mac).unwrap();
    assert_eq!(mac, MAC_A);
}
