//! Backend and virtual-device tests (the socket-level ones are in `idxd/tests`).

use std::sync::Arc;

use vfio_variant::backend::{FunctionContext, Interrupt};
use vfio_variant::config::ConfigEvent;
use vfio_variant::pci::regs::COMMAND_BUS_MASTER;
use vfio_variant::vpci::parse_layout;

use super::*;
use crate::hw::completion::{Completion, status};
use crate::hw::descriptor::{Descriptor, flag, op};
use crate::hw::testing::{PagedMemory, Recorder};

fn request(profile: &str) -> CreateRequest {
    CreateRequest {
        profile: profile.into(),
        instance: "wq".into(),
        layout: Arc::new(parse_layout("idxd", LAYOUT_1DWQ).unwrap()),
        attributes: Vec::new(),
    }
}

fn backend() -> IdxdBackend {
    IdxdBackend::new(IdxdConfig::default()).unwrap()
}

fn available(b: &IdxdBackend) -> Vec<u32> {
    b.profiles().iter().map(|p| p.available_instances).collect()
}

fn pf_wq_state(b: &IdxdBackend, wq: u64) -> u32 {
    let mut v = [0u8; 4];
    b.device()
        .bar0_read(WQCFG + wq * WQCFG_SIZE + 24, &mut v)
        .unwrap();
    u32::from_le_bytes(v) >> WQCFG_STATE_SHIFT
}

fn read32(f: &dyn Function, offset: u64) -> u32 {
    let mut v = [0u8; 4];
    f.bar_read(0, offset, &mut v).unwrap();
    u32::from_le_bytes(v)
}

fn read64(f: &dyn Function, offset: u64) -> u64 {
    let mut v = [0u8; 8];
    f.bar_read(0, offset, &mut v).unwrap();
    u64::from_le_bytes(v)
}

fn write32(f: &dyn Function, offset: u64, value: u32) {
    f.bar_write(0, offset, &value.to_le_bytes()).unwrap();
}

fn command(f: &dyn Function, code: u32, operand: u32) -> u32 {
    write32(f, CMD, (code << CMD_SHIFT) | operand);
    read32(f, CMDSTS)
}

struct Attached {
    function: Box<dyn Function>,
    memory: Arc<PagedMemory>,
    irqs: Arc<Recorder>,
}

fn attached(b: &IdxdBackend, profile: &str) -> Attached {
    let function = b.create(&request(profile)).unwrap();
    let memory = Arc::new(PagedMemory::new(0x10_0000, 8));
    let irqs = Arc::new(Recorder::default());
    function.attach(FunctionContext {
        dma: memory.clone(),
        interrupts: irqs.clone(),
    });
    function.config_changed(ConfigEvent::Command {
        old: 0,
        new: COMMAND_BUS_MASTER,
    });
    function.config_changed(ConfigEvent::Msix {
        enabled: true,
        function_mask: false,
    });
    Attached {
        function,
        memory,
        irqs,
    }
}

fn enable(f: &dyn Function) {
    assert_eq!(command(f, cmd::ENABLE_DEVICE, 0), 0);
    assert_eq!(command(f, cmd::ENABLE_WQ, 0), 0);
}

#[test]
fn profiles_count_reserved_wqs_and_layouts_parse() {
    let b = backend();
    assert_eq!(available(&b), vec![4, 2]);
    for profile in [PROFILE_DEDICATED, PROFILE_SHARED] {
        let text = b.default_layout(profile).unwrap();
        let layout = parse_layout(profile, &text).unwrap();
        assert_eq!(layout.bar(0).unwrap().size, 0x2000);
    }
    assert!(
        b.default_layout(PROFILE_SHARED)
            .unwrap()
            .contains("idxd-1swq")
    );
    assert!(matches!(
        b.default_layout("2dwq"),
        Err(BackendError::UnknownProfile(_))
    ));
    assert!(
        IdxdBackend::new(IdxdConfig {
            dedicated: 8,
            shared: 1,
            ..IdxdConfig::default()
        })
        .is_err()
    );
    assert!(
        IdxdBackend::new(IdxdConfig {
            wq_size: 100,
            ..IdxdConfig::default()
        })
        .is_err()
    );
}

#[test]
fn create_enables_a_pf_wq_and_drop_returns_it() {
    let b = backend();
    let functions: Vec<_> = (0..4)
        .map(|_| b.create(&request("1dwq")).unwrap())
        .collect();
    assert_eq!(available(&b), vec![0, 2]);
    assert!((2..6).all(|wq| pf_wq_state(&b, wq) == 1));
    let before: Vec<u32> = (0..8).map(|wq| pf_wq_state(&b, wq)).collect();
    assert!(matches!(
        b.create(&request("1dwq")),
        Err(BackendError::NoInstances(_))
    ));
    assert_eq!(
        (0..8).map(|wq| pf_wq_state(&b, wq)).collect::<Vec<_>>(),
        before
    );
    assert_eq!(available(&b), vec![0, 2], "nothing changed");
    let shared = b.create(&request("1swq")).unwrap();
    assert_eq!(pf_wq_state(&b, 6), 1);
    let mut mode = [0u8; 4];
    b.device()
        .bar0_read(WQCFG + 6 * WQCFG_SIZE + 8, &mut mode)
        .unwrap();
    assert_eq!(u32::from_le_bytes(mode) & WQCFG_MODE_DEDICATED, 0);
    drop(functions);
    assert!((2..6).all(|wq| pf_wq_state(&b, wq) == 0));
    assert_eq!(available(&b), vec![4, 1]);
    drop(shared);
    assert_eq!(available(&b), vec![4, 2]);
    let mut with_attribute = request("1dwq");
    with_attribute.attributes.push(("pasid".into(), "1".into()));
    assert!(matches!(
        b.create(&with_attribute),
        Err(BackendError::Refused(_))
    ));
    assert!(matches!(
        b.create(&request("x")),
        Err(BackendError::UnknownProfile(_))
    ));
    assert_eq!(available(&b), vec![4, 2]);
}

#[test]
fn virtual_registers_show_one_wq_and_one_group() {
    let b = backend();
    let a = attached(&b, "1dwq");
    let f = &*a.function;
    assert_eq!(read32(f, VERSION), VERSION_VALUE);
    let gencap = read64(f, GENCAP);
    assert_eq!(gencap & GENCAP_CONFIG_EN, 0);
    assert_ne!(gencap & GENCAP_CMD_CAP, 0);
    let wqcap = read64(f, WQCAP);
    assert_eq!((wqcap & 0xffff, (wqcap >> 16) & 0xff), (16, 1));
    assert_ne!(wqcap & WQCAP_DEDICATED, 0);
    assert_eq!(wqcap & WQCAP_SHARED, 0);
    assert_eq!((read64(f, GRPCAP) >> 8) & 0xff, 1);
    assert_eq!(read64(f, ENGCAP), 4);
    assert_eq!(read32(f, OFFSETS), 0x0005_0004);
    assert_eq!(read32(f, OFFSETS + 4), 3);
    assert_eq!(read64(f, GRPCFG + GRPCFG_WQS), 1);
    assert_eq!(read64(f, GRPCFG + GRPCFG_ENGINES), 0xf);
    assert_eq!(read32(f, WQCFG), 16);
    assert_eq!(read32(f, WQCFG + 12), 21 | (5 << 5));
    // Dword 2 is writable only while the WQ is disabled, and the mode bit is fixed.
    write32(f, WQCFG + 8, 3 << WQCFG_PRIORITY_SHIFT);
    assert_eq!(
        read32(f, WQCFG + 8),
        (3 << WQCFG_PRIORITY_SHIFT) | WQCFG_MODE_DEDICATED
    );
    write32(f, WQCFG, 99);
    assert_eq!(read32(f, WQCFG), 16, "size is read-only");
    enable(f);
    assert_eq!(read32(f, WQCFG + 24) >> WQCFG_STATE_SHIFT, 1);
    write32(f, WQCFG + 8, 5 << WQCFG_PRIORITY_SHIFT);
    assert_eq!(read32(f, WQCFG + 8) >> WQCFG_PRIORITY_SHIFT & 0xf, 3);
    // The MSI-X table and permissions are plain memory.
    f.bar_write(0, 0x610, &[1, 2, 3, 4]).unwrap();
    let mut back = [0u8; 4];
    f.bar_read(0, 0x610, &mut back).unwrap();
    assert_eq!(back, [1, 2, 3, 4]);
    assert!(f.bar_read(0, 0x11, &mut [0u8; 4]).is_err());
    let shared = b.create(&request("1swq")).unwrap();
    let wqcap = read64(&*shared, WQCAP);
    assert_eq!(
        (wqcap & WQCAP_SHARED != 0, wqcap & WQCAP_DEDICATED),
        (true, 0)
    );
    assert_eq!(read32(&*shared, WQCFG + 8) & WQCFG_MODE_DEDICATED, 0);
}

#[test]
fn virtual_commands_and_their_errors() {
    let b = backend();
    let a = attached(&b, "1dwq");
    let f = &*a.function;
    let err = |code: u8| u32::from(code);
    assert_eq!(command(f, cmd::ENABLE_WQ, 0), err(cmdsts::ERR_DEV_NOTEN));
    assert_eq!(
        command(f, cmd::DISABLE_DEVICE, 0),
        err(cmdsts::ERR_DEV_NOTEN)
    );
    f.config_changed(ConfigEvent::Command { old: 0, new: 0 });
    assert_eq!(
        command(f, cmd::ENABLE_DEVICE, 0),
        err(cmdsts::ERR_BUSMASTER_EN)
    );
    f.config_changed(ConfigEvent::Command {
        old: 0,
        new: COMMAND_BUS_MASTER,
    });
    assert_eq!(command(f, cmd::ENABLE_DEVICE, 0), 0);
    assert_eq!(read32(f, GENSTS), GENSTS_ENABLED);
    assert_eq!(
        command(f, cmd::ENABLE_DEVICE, 0),
        err(cmdsts::ERR_DEV_ENABLED)
    );
    assert_eq!(command(f, cmd::ENABLE_WQ, 1), err(cmdsts::INVAL_WQIDX));
    write32(f, WQCFG + 8, 0);
    assert_eq!(command(f, cmd::ENABLE_WQ, 0), err(cmdsts::ERR_WQ_PRIOR));
    write32(f, WQCFG + 8, 1 << WQCFG_PRIORITY_SHIFT);
    assert_eq!(command(f, cmd::DISABLE_WQ, 1), err(cmdsts::ERR_DEV_NOT_EN));
    assert_eq!(command(f, cmd::ENABLE_WQ, 0), 0);
    assert_eq!(command(f, cmd::ENABLE_WQ, 0), err(cmdsts::ERR_WQ_ENABLED));
    assert_eq!(command(f, cmd::DRAIN_WQ, 2), err(cmdsts::INVAL_WQIDX));
    assert_eq!(command(f, cmd::DRAIN_WQ, 1), 0);
    assert_eq!(command(f, cmd::ABORT_WQ, 1), 0);
    assert_eq!(command(f, cmd::DRAIN_ALL, 0), 0);
    assert_eq!(
        command(f, cmd::REQUEST_INT_HANDLE, 1),
        1 << CMDSTS_RES_SHIFT
    );
    assert_eq!(
        command(f, cmd::REQUEST_INT_HANDLE, 2),
        err(cmdsts::ERR_INVAL_INT_IDX)
    );
    assert_eq!(command(f, 0x1e, 0), err(cmdsts::INVAL_CMD));
    assert_eq!(command(f, cmd::DISABLE_WQ, 1), 0);
    assert_eq!(read32(f, WQCFG + 24), 0);
    // The PF WQ stays enabled for the sub-device's lifetime.
    assert_eq!(pf_wq_state(&b, 2), 1);
    // A command with an interrupt request: INTCAUSE and vector 0.
    a.irqs.0.lock().clear();
    write32(f, CMD, CMD_INT_REQ | (cmd::DRAIN_ALL << CMD_SHIFT));
    assert_eq!(read32(f, INTCAUSE), INTC_CMD);
    assert_eq!(*a.irqs.0.lock(), vec![Interrupt::Msix(0)]);
    write32(f, INTCAUSE, INTC_CMD);
    assert_eq!(read32(f, INTCAUSE), 0);
    assert_eq!(command(f, cmd::RESET_DEVICE, 0), 0);
    assert_eq!(read32(f, GENSTS), 0);
}

fn fill(completion: u64, dst: u64, size: u32) -> Descriptor {
    Descriptor {
        opcode: op::FILL,
        flags: flag::CRAV | flag::RCR | flag::RCI,
        completion_addr: completion,
        src: 0x5a5a_5a5a_5a5a_5a5a,
        dst,
        size,
        int_handle: 1,
        ..Descriptor::default()
    }
}

fn record(memory: &PagedMemory, at: u64) -> Completion {
    let mut b = [0u8; 32];
    b.copy_from_slice(&memory.get(at, 32));
    Completion::decode(&b)
}

#[test]
fn portal_submits_to_the_wq_and_completions_raise_vector_1() {
    let b = backend();
    let a = attached(&b, "1dwq");
    let f = &*a.function;
    let desc = fill(0x10_0000, 0x10_1000, 256);
    // Not enabled: dropped, virtual SWERR, vector 0 when software errors interrupt.
    write32(f, GENCTRL, GENCTRL_SOFTERR_INT_EN);
    f.bar_write(2, 0, &desc.encode()).unwrap();
    assert_eq!(a.memory.get(0x10_1000, 4), vec![0; 4]);
    let swerr = read64(f, SWERR);
    assert_eq!(swerr & SWERR_VALID, SWERR_VALID);
    assert_eq!((swerr >> SWERR_ERROR_SHIFT) as u8, SWERR_WQ_NOT_ENABLED);
    assert_eq!(*a.irqs.0.lock(), vec![Interrupt::Msix(0)]);
    write32(f, SWERR, SWERR_VALID as u32);
    a.irqs.0.lock().clear();
    enable(f);
    f.bar_write(2, 0x1000, &desc.encode()).unwrap();
    b.device().quiesce();
    assert_eq!(a.memory.get(0x10_1000, 256), vec![0x5a; 256]);
    assert_eq!(record(&a.memory, 0x10_0000).status, status::SUCCESS);
    assert_eq!(*a.irqs.0.lock(), vec![Interrupt::Msix(1)]);
    // A bad descriptor without a completion record: the PF's SWERR reaches the guest's.
    let bad = Descriptor {
        opcode: 0x7f,
        ..Descriptor::default()
    };
    f.bar_write(2, 0x40, &bad.encode()).unwrap();
    b.device().quiesce();
    assert_eq!(
        (read64(f, SWERR) >> SWERR_ERROR_SHIFT) as u8,
        status::BAD_OPCODE
    );
    let mut pf = [0u8; 8];
    b.device().bar0_read(SWERR, &mut pf).unwrap();
    assert_eq!(u64::from_le_bytes(pf) & SWERR_VALID, 0, "host cleared it");
    // Bad portal accesses are refused, not panics.
    assert!(f.bar_write(2, 0, &[0u8; 8]).is_err());
    assert!(f.bar_write(2, 0x20, &desc.encode()).is_err());
    assert!(f.bar_write(2, 0x2000, &desc.encode()).is_err());
    let mut portal = [0u8; 4];
    f.bar_read(2, 0, &mut portal).unwrap();
    assert_eq!(portal, [0xff; 4]);
}

#[test]
fn sub_devices_are_isolated() {
    let b = backend();
    let a = attached(&b, "1dwq");
    let c = attached(&b, "1swq");
    enable(&*a.function);
    enable(&*c.function);
    // Only C's memory has 0x20_0000.
    let c_memory = PagedMemory::new(0x20_0000, 1);
    let c2 = b.create(&request("1dwq")).unwrap();
    c2.attach(FunctionContext {
        dma: Arc::new(c_memory),
        interrupts: Arc::new(Recorder::default()),
    });
    let desc = fill(0x10_0000, 0x20_0000, 64);
    a.function.bar_write(2, 0, &desc.encode()).unwrap();
    b.device().quiesce();
    let r = record(&a.memory, 0x10_0000);
    assert_eq!(
        (r.status, r.fault_addr),
        (status::PAGE_FAULT | status::FAULT_WRITE, 0x20_0000)
    );
    // Dropping a function unbinds its address space: nothing reaches the old memory.
    drop(c2);
    c.function
        .bar_write(2, 0, &fill(0x10_0000, 0x10_2000, 64).encode())
        .unwrap();
    b.device().quiesce();
    assert_eq!(c.memory.get(0x10_2000, 64), vec![0x5a; 64]);
    assert_eq!(a.memory.get(0x10_2000, 64), vec![0; 64]);
}

#[test]
fn reset_drains_and_returns_the_virtual_device_to_its_reset_state() {
    let b = backend();
    let a = attached(&b, "1dwq");
    let f = &*a.function;
    enable(f);
    write32(f, GENCTRL, 1);
    f.reset().unwrap();
    assert_eq!(
        (read32(f, GENSTS), read32(f, GENCTRL), read32(f, WQCFG + 24)),
        (0, 0, 0)
    );
    assert_eq!(pf_wq_state(&b, 2), 1);
}
