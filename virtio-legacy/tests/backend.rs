//! The backend over emulated hardware: profiles, the transitional refusal when the PF lacks
//! the legacy opcodes, layout binding against the physical VF, and a legacy driver using the
//! legacy I/O BAR of the virtual function (admin commands on the PF, QUEUE_NOTIFY straight to
//! the VF's notify area).

mod common;

use std::os::unix::net::UnixDatagram;
use std::sync::Arc;
use std::time::Duration;

use common::{DriverQueue, Irqs, Memory, ro, wo};
use vfio_variant::backend::emulated::{DmaSlot, HostMemory, IrqSlot};
use vfio_variant::backend::{
    Backend, BackendError, CreateRequest, DmaAccess, FunctionContext, FunctionError,
};
use vfio_variant::device::{CONFIG_REGION, VirtualFunction};
use vfio_variant::physical::PhysicalFunction;
use vfio_variant::vpci::{compile::compile, parse_layout};
use vfio_variant_virtio_legacy::VirtioLegacyBackend;
use vfio_variant_virtio_legacy::admin::{ADMIN_MEMORY, AdminQueue};
use vfio_variant_virtio_legacy::backend::{PROFILE_MODERN, PROFILE_TRANSITIONAL, Vf};
use vfio_variant_virtio_legacy::function::Attachment;
use vfio_variant_virtio_legacy::hw::net::{NetDevice, VIRTIO_NET_F_MAC};
use vfio_variant_virtio_legacy::hw::pf::{PfOptions, VirtioPf};
use vfio_variant_virtio_legacy::hw::transport::legacy;
use vfio_variant_virtio_legacy::hw::vf::VirtioVf;
use vfio_variant_virtio_legacy::hw::{
    DEVICE_TYPE_NET, STATUS_ACKNOWLEDGE, STATUS_DRIVER, STATUS_DRIVER_OK,
};

const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x01, 0x02, 0x03];

struct Setup {
    backend: VirtioLegacyBackend,
    hosts: Vec<UnixDatagram>,
    vfs: Vec<Arc<VirtioVf>>,
}

fn setup(num_vfs: usize, options: PfOptions) -> Setup {
    let host_memory: Arc<HostMemory> = Arc::new(HostMemory::new(ADMIN_MEMORY as usize));
    let mut vfs = Vec::new();
    let mut entries = Vec::new();
    let mut hosts = Vec::new();
    for i in 0..num_vfs {
        let (device, host) = NetDevice::new(MAC).unwrap();
        host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        hosts.push(host);
        let attachment = Attachment {
            dma: Arc::new(DmaSlot::default()),
            interrupts: Arc::new(IrqSlot::default()),
        };
        let vf = Arc::new(VirtioVf::new(
            format!("vf{}", i + 1),
            Box::new(device),
            attachment.dma.clone(),
            attachment.interrupts.clone(),
        ));
        entries.push(Vf {
            member: i as u64 + 1,
            function: vf.clone(),
            attachment: Some(attachment),
        });
        vfs.push(vf);
    }
    let pf = Arc::new(VirtioPf::new(
        "pf",
        vfs.clone(),
        options,
        host_memory.clone(),
        Irqs::new(),
    ));
    let admin = AdminQueue::setup(pf, host_memory, 0).unwrap();
    Setup {
        backend: VirtioLegacyBackend::new(DEVICE_TYPE_NET, Arc::new(admin), entries),
        hosts,
        vfs,
    }
}

fn request(backend: &VirtioLegacyBackend, profile: &str) -> CreateRequest {
    let text = backend.default_layout(profile).unwrap();
    CreateRequest {
        profile: profile.into(),
        instance: "i0".into(),
        layout: Arc::new(parse_layout(profile, &text).unwrap()),
        attributes: Vec::new(),
    }
}

fn available(backend: &VirtioLegacyBackend, profile: &str) -> u32 {
    backend
        .profiles()
        .into_iter()
        .find(|p| p.name == profile)
        .unwrap()
        .available_instances
}

#[test]
fn profiles_and_instances() {
    let s = setup(2, PfOptions::default());
    assert_eq!(s.backend.name(), "virtio-legacy");
    assert_eq!(available(&s.backend, PROFILE_MODERN), 2);
    assert_eq!(available(&s.backend, PROFILE_TRANSITIONAL), 2);
    let a = s
        .backend
        .create(&request(&s.backend, PROFILE_TRANSITIONAL))
        .unwrap();
    let _b = s
        .backend
        .create(&request(&s.backend, PROFILE_MODERN))
        .unwrap();
    assert_eq!(available(&s.backend, PROFILE_MODERN), 0);
    assert!(matches!(
        s.backend.create(&request(&s.backend, PROFILE_MODERN)),
        Err(BackendError::NoInstances(_))
    ));
    drop(a);
    assert_eq!(available(&s.backend, PROFILE_TRANSITIONAL), 1);
    assert!(matches!(
        s.backend.default_layout("fast"),
        Err(BackendError::UnknownProfile(_))
    ));
}

#[test]
fn transitional_is_refused_without_legacy_opcodes() {
    let s = setup(
        1,
        PfOptions {
            legacy_opcodes: false,
            ..PfOptions::default()
        },
    );
    assert_eq!(available(&s.backend, PROFILE_TRANSITIONAL), 0);
    match s.backend.create(&request(&s.backend, PROFILE_TRANSITIONAL)) {
        Err(BackendError::Refused(reason)) => {
            assert!(reason.contains("legacy opcodes"), "{reason}")
        }
        other => panic!("expected a refusal, got {:?}", other.err()),
    }
    // Nothing stayed provisioned; the modern profile still works.
    assert_eq!(available(&s.backend, PROFILE_MODERN), 1);
    let function = s
        .backend
        .create(&request(&s.backend, PROFILE_MODERN))
        .unwrap();
    assert!(matches!(
        function.legacy_io_read(0, &mut [0; 4]),
        Err(FunctionError::Unsupported(_))
    ));
}

#[test]
fn layouts_bind_to_the_physical_vf() {
    let s = setup(1, PfOptions::default());
    for profile in [PROFILE_MODERN, PROFILE_TRANSITIONAL] {
        let request = request(&s.backend, profile);
        let function = s.backend.create(&request).unwrap();
        let vf = VirtualFunction::new(Arc::new(compile(request.layout.clone())), function)
            .unwrap_or_else(|e| panic!("{profile}: {e}"));
        let mut id = [0u8; 4];
        vf.region_read(CONFIG_REGION, 0, &mut id).unwrap();
        let expected = if profile == PROFILE_MODERN {
            0x1041u16
        } else {
            0x1000
        };
        assert_eq!(u16::from_le_bytes([id[2], id[3]]), expected);
    }
}

struct Guest {
    vf: VirtualFunction,
    mem: Arc<Memory>,
}

impl Guest {
    fn io_read(&self, offset: u64, len: usize) -> u64 {
        let mut b = [0u8; 8];
        self.vf.region_read(0, offset, &mut b[..len]).unwrap();
        u64::from_le_bytes(b)
    }

    fn io_write(&self, offset: u64, len: usize, value: u64) {
        self.vf
            .region_write(0, offset, &value.to_le_bytes()[..len])
            .unwrap();
    }
}

fn transitional_guest(s: &Setup) -> Guest {
    let request = request(&s.backend, PROFILE_TRANSITIONAL);
    let function = s.backend.create(&request).unwrap();
    let vf = VirtualFunction::new(Arc::new(compile(request.layout.clone())), function).unwrap();
    let mem = Memory::new(1 << 20);
    vf.function().attach(FunctionContext {
        dma: mem.clone() as Arc<dyn DmaAccess>,
        interrupts: Irqs::new(),
    });
    // I/O and memory decoding, bus mastering.
    vf.region_write(CONFIG_REGION, 4, &[0x07, 0x00]).unwrap();
    Guest { vf, mem }
}

#[test]
fn legacy_registers_through_the_io_bar() {
    let s = setup(1, PfOptions::default());
    let guest = transitional_guest(&s);
    let host = guest.io_read(u64::from(legacy::HOST_FEATURES), 4);
    assert_ne!(host & VIRTIO_NET_F_MAC, 0);
    guest.io_write(u64::from(legacy::GUEST_FEATURES), 4, VIRTIO_NET_F_MAC);
    assert_eq!(s.vfs[0].transport().driver_features(), VIRTIO_NET_F_MAC);
    assert_eq!(guest.io_read(u64::from(legacy::QUEUE_NUM), 2), 256);
    // Device config at 20 without MSI-X, at 24 with it.
    let mac: Vec<u8> = (0..6).map(|i| guest.io_read(20 + i, 1) as u8).collect();
    assert_eq!(mac, MAC);
    guest
        .vf
        .region_write(CONFIG_REGION, 0x40 + 2, &[0x00, 0x80])
        .unwrap();
    assert!(s.vfs[0].msix_enabled(), "MSI-X enabled on the VF too");
    let mac: Vec<u8> = (0..6).map(|i| guest.io_read(24 + i, 1) as u8).collect();
    assert_eq!(mac, MAC);
    guest.io_write(u64::from(legacy::MSI_CONFIG_VECTOR), 2, 0);
    assert_eq!(guest.io_read(u64::from(legacy::MSI_CONFIG_VECTOR), 2), 0);
    // Bad accesses fail; nothing panics.
    let mut data = [0u8; 4];
    assert!(guest.vf.region_read(0, 30, &mut data).is_err());
    assert!(guest.vf.function().legacy_io_read(22, &mut data).is_err());
    assert!(
        guest
            .vf
            .function()
            .legacy_io_read(u64::MAX, &mut data)
            .is_err()
    );
    // A reset clears the VF.
    guest.io_write(u64::from(legacy::STATUS), 1, 1);
    guest.vf.reset().unwrap();
    assert_eq!(s.vfs[0].transport().status(), 0);
}

#[test]
fn legacy_driver_sends_and_receives() {
    let s = setup(1, PfOptions::default());
    let guest = transitional_guest(&s);
    let status = |v: u8| guest.io_write(u64::from(legacy::STATUS), 1, v.into());
    status(0);
    status(STATUS_ACKNOWLEDGE);
    status(STATUS_ACKNOWLEDGE | STATUS_DRIVER);
    guest.io_write(u64::from(legacy::GUEST_FEATURES), 4, VIRTIO_NET_F_MAC);
    let size = guest.io_read(u64::from(legacy::QUEUE_NUM), 2) as u16;
    let layout = |pfn: u64| {
        let desc = pfn * 4096;
        let avail = desc + 16 * u64::from(size);
        let used = (avail + 6 + 2 * u64::from(size)).div_ceil(4096) * 4096;
        DriverQueue::at(size, desc, avail, used)
    };
    guest.io_write(u64::from(legacy::QUEUE_SEL), 2, 0);
    guest.io_write(u64::from(legacy::QUEUE_PFN), 4, 0x10);
    guest.io_write(u64::from(legacy::QUEUE_SEL), 2, 1);
    guest.io_write(u64::from(legacy::QUEUE_PFN), 4, 0x20);
    status(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_DRIVER_OK);
    let mut rx = layout(0x10);
    let mut tx = layout(0x20);

    let mut packet = vec![0u8; 10];
    packet.extend_from_slice(b"guest to host");
    guest.mem.put(0x40000, &packet);
    let head = tx.add(&guest.mem, &[ro(0x40000, packet.len() as u32)]);
    guest.io_write(u64::from(legacy::QUEUE_NOTIFY), 2, 1);
    assert_eq!(tx.take_used(&guest.mem), Some((u32::from(head), 0)));
    let mut buffer = [0u8; 64];
    let n = s.hosts[0].recv(&mut buffer).unwrap();
    assert_eq!(&buffer[..n], b"guest to host");

    let head = rx.add(&guest.mem, &[wo(0x50000, 128)]);
    s.hosts[0].send(b"host to guest").unwrap();
    guest.io_write(u64::from(legacy::QUEUE_NOTIFY), 2, 0);
    assert_eq!(rx.take_used(&guest.mem), Some((u32::from(head), 10 + 13)));
    assert_eq!(guest.mem.get(0x50000 + 10, 13), b"host to guest");
    assert_eq!(guest.io_read(u64::from(legacy::ISR), 1), 1);
    assert_eq!(guest.io_read(u64::from(legacy::ISR), 1), 0);
}

#[test]
fn the_pf_admin_queue_survives_many_commands() {
    let s = setup(1, PfOptions::default());
    let guest = transitional_guest(&s);
    for i in 0..100u64 {
        guest.io_write(u64::from(legacy::QUEUE_SEL), 2, i % 2);
        assert_eq!(guest.io_read(u64::from(legacy::QUEUE_SEL), 2), i % 2);
    }
    let mut config = [0u8; 2];
    s.vfs[0].config_read(2, &mut config).unwrap();
    assert_eq!(u16::from_le_bytes(config), 0x1041, "the VF stays modern");
}

#[test]
fn legacy_accesses_of_two_functions_are_serialized_on_the_pf() {
    let s = setup(2, PfOptions::default());
    let a = transitional_guest(&s);
    let b = transitional_guest(&s);
    std::thread::scope(|scope| {
        for (guest, value) in [(&a, 0u64), (&b, 1u64)] {
            scope.spawn(move || {
                for _ in 0..200 {
                    guest.io_write(u64::from(legacy::QUEUE_SEL), 2, value);
                    assert_eq!(guest.io_read(u64::from(legacy::QUEUE_SEL), 2), value);
                }
            });
        }
    });
}
