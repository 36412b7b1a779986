//! The PF's admin virtqueue: every opcode, status and qualifier codes, the validation order,
//! no side effects on rejection, the PF without legacy opcodes, and a legacy driver running
//! a VF entirely through admin commands (plus notifications to the VF's notify area).

mod common;

use std::os::unix::net::UnixDatagram;
use std::sync::Arc;
use std::time::Duration;

use common::{DriverQueue, Irqs, Memory, ModernDriver, ro, wo};
use vfio_variant::physical::PhysicalFunction;
use vfio_variant_virtio_legacy::hw::net::{NetDevice, VIRTIO_NET_F_MAC};
use vfio_variant_virtio_legacy::hw::pf::admin::*;
use vfio_variant_virtio_legacy::hw::pf::{PfOptions, VirtioPf};
use vfio_variant_virtio_legacy::hw::transport::{QUEUE_MAX_SIZE, common as cc, legacy};
use vfio_variant_virtio_legacy::hw::vf::VirtioVf;
use vfio_variant_virtio_legacy::hw::{
    STATUS_ACKNOWLEDGE, STATUS_DRIVER, STATUS_DRIVER_OK, VIRTIO_F_ADMIN_VQ, VIRTIO_F_VERSION_1,
};

const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0xab, 0xcd, 0xef];
const ALL: u64 = 0x7f;
const CMD: u64 = 0x10000;
const RESULT: u64 = 0x11000;

struct Setup {
    mem: Arc<Memory>,
    pf: VirtioPf,
    admin: DriverQueue,
    host: UnixDatagram,
}

struct Reply {
    status: u16,
    qualifier: u16,
    result: Vec<u8>,
    used_len: u32,
}

fn setup(options: PfOptions) -> Setup {
    let mem = Memory::new(1 << 20);
    let irqs = Irqs::new();
    let (net, host) = NetDevice::new(MAC).unwrap();
    host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let vf1 = Arc::new(VirtioVf::new(
        "vf1",
        Box::new(net),
        mem.clone(),
        irqs.clone(),
    ));
    let (net2, _) = NetDevice::new(MAC).unwrap();
    let vf2 = Arc::new(VirtioVf::new(
        "vf2",
        Box::new(net2),
        mem.clone(),
        irqs.clone(),
    ));
    let pf = VirtioPf::new("pf", vec![vf1, vf2], options, mem.clone(), irqs);
    let admin = DriverQueue::new(16, 0x1000);
    {
        let driver = ModernDriver::new(&pf);
        assert_ne!(driver.device_features() & VIRTIO_F_ADMIN_VQ, 0);
        driver.negotiate(VIRTIO_F_VERSION_1 | VIRTIO_F_ADMIN_VQ);
        let index = driver.read(cc::ADMIN_QUEUE_INDEX, 2) as u16;
        assert_eq!(driver.read(cc::ADMIN_QUEUE_NUM, 2), 1);
        driver.setup_queue(index, &admin, NO_VECTOR_U16);
        driver.driver_ok();
    }
    Setup {
        mem,
        pf,
        admin,
        host,
    }
}

const NO_VECTOR_U16: u16 = 0xffff;

impl Setup {
    fn command(
        &mut self,
        opcode: u16,
        group: u16,
        member: u64,
        data: &[u8],
        result_len: u32,
    ) -> Reply {
        let mut command = opcode.to_le_bytes().to_vec();
        command.extend_from_slice(&group.to_le_bytes());
        command.extend_from_slice(&[0; 12]);
        command.extend_from_slice(&member.to_le_bytes());
        command.extend_from_slice(data);
        self.mem.put(CMD, &command);
        self.mem.put(RESULT, &vec![0xee; 8 + result_len as usize]);
        let head = self.admin.add(
            &self.mem,
            &[ro(CMD, command.len() as u32), wo(RESULT, 8 + result_len)],
        );
        ModernDriver::new(&self.pf).notify(0);
        let (id, used_len) = self.admin.take_used(&self.mem).expect("command completed");
        assert_eq!(id, u32::from(head));
        let reply = self.mem.get(RESULT, 8 + result_len as usize);
        Reply {
            status: u16::from_le_bytes([reply[0], reply[1]]),
            qualifier: u16::from_le_bytes([reply[2], reply[3]]),
            result: reply[8..used_len.max(8) as usize].to_vec(),
            used_len,
        }
    }

    fn sriov(&mut self, opcode: u16, member: u64, data: &[u8], result_len: u32) -> Reply {
        self.command(opcode, GROUP_SRIOV, member, data, result_len)
    }

    fn use_all(&mut self) {
        let r = self.sriov(LIST_USE, 0, &ALL.to_le_bytes(), 0);
        assert_eq!((r.status, r.qualifier), (STATUS_OK, Q_OK));
    }

    fn write_common(&mut self, member: u64, offset: u8, value: &[u8]) -> Reply {
        let mut data = vec![offset];
        data.extend_from_slice(&[0; 7]);
        data.extend_from_slice(value);
        self.sriov(LEGACY_COMMON_CFG_WRITE, member, &data, 0)
    }

    fn read_common(&mut self, member: u64, offset: u8, len: u32) -> Reply {
        self.sriov(LEGACY_COMMON_CFG_READ, member, &[offset], len)
    }

    fn vf(&self, member: u64) -> &Arc<VirtioVf> {
        self.pf.member(member).unwrap()
    }
}

fn ok(r: &Reply) {
    assert_eq!((r.status, r.qualifier), (STATUS_OK, Q_OK), "command failed");
}

fn rejected(r: &Reply, qualifier: u16) {
    assert_eq!((r.status, r.qualifier), (STATUS_EINVAL, qualifier));
    assert!(r.result.is_empty());
}

#[test]
fn pf_has_sriov_and_the_admin_queue() {
    let s = setup(PfOptions::default());
    let mut num_vfs = [0u8; 2];
    s.pf.config_read(0x110, &mut num_vfs).unwrap();
    assert_eq!(u16::from_le_bytes(num_vfs), 2);
    let mut vf_id = [0u8; 2];
    s.pf.config_read(0x11a, &mut vf_id).unwrap();
    assert_eq!(u16::from_le_bytes(vf_id), 0x1041);
}

#[test]
fn list_query_reports_the_supported_opcodes() {
    let mut s = setup(PfOptions::default());
    let r = s.sriov(LIST_QUERY, 0, &[], 8);
    ok(&r);
    assert_eq!(r.used_len, 16);
    assert_eq!(r.result, (ALL | MIGRATION_OPCODES).to_le_bytes());
    let mut s = setup(PfOptions {
        migration_opcodes: false,
        ..PfOptions::default()
    });
    let r = s.sriov(LIST_QUERY, 0, &[], 8);
    assert_eq!(r.result, ALL.to_le_bytes());
}

#[test]
fn list_use_gates_the_other_opcodes() {
    let mut s = setup(PfOptions::default());
    rejected(&s.read_common(1, legacy::STATUS, 1), Q_INVALID_OPCODE);
    s.use_all();
    ok(&s.read_common(1, legacy::STATUS, 1));
    // An unsupported opcode in the list is refused, and the list in use stays.
    let r = s.sriov(LIST_USE, 0, &(ALL | 1 << 0x12).to_le_bytes(), 0);
    rejected(&r, Q_INVALID_FIELD);
    ok(&s.read_common(1, legacy::STATUS, 1));
    // A short list is a bad field too.
    rejected(&s.sriov(LIST_USE, 0, &[1, 2], 0), Q_INVALID_FIELD);
    // Using only the list opcodes disables the legacy ones again.
    ok(&s.sriov(LIST_USE, 0, &3u64.to_le_bytes(), 0));
    rejected(&s.read_common(1, legacy::STATUS, 1), Q_INVALID_OPCODE);
}

#[test]
fn validation_order_is_group_then_opcode_then_member() {
    let mut s = setup(PfOptions::default());
    s.use_all();
    let r = s.command(0x30, 2, 99, &[], 0);
    rejected(&r, Q_INVALID_GROUP);
    let r = s.command(0x30, GROUP_SRIOV, 99, &[], 0);
    rejected(&r, Q_INVALID_OPCODE);
    let r = s.command(LEGACY_COMMON_CFG_READ, GROUP_SRIOV, 99, &[200], 1);
    rejected(&r, Q_INVALID_MEMBER);
    rejected(&s.read_common(0, legacy::STATUS, 1), Q_INVALID_MEMBER);
    rejected(&s.read_common(3, legacy::STATUS, 1), Q_INVALID_MEMBER);
    // The member is valid: now the field is checked.
    rejected(&s.read_common(1, 200, 1), Q_INVALID_FIELD);
    rejected(&s.read_common(1, legacy::HOST_FEATURES, 3), Q_INVALID_FIELD);
    // A command too short for its header.
    let head = s.admin.add(&s.mem, &[ro(CMD, 10), wo(RESULT, 8)]);
    ModernDriver::new(&s.pf).notify(0);
    assert_eq!(s.admin.take_used(&s.mem), Some((u32::from(head), 8)));
    assert_eq!(s.mem.u16_at(RESULT), STATUS_EINVAL);
    assert_eq!(s.mem.u16_at(RESULT + 2), Q_INVALID_COMMAND);
}

#[test]
fn rejected_commands_have_no_side_effects() {
    let mut s = setup(PfOptions::default());
    let driver_status = [STATUS_ACKNOWLEDGE | STATUS_DRIVER];
    // Not yet in use: refused, nothing changes.
    rejected(
        &s.write_common(1, legacy::STATUS, &driver_status),
        Q_INVALID_OPCODE,
    );
    s.use_all();
    let mut command = vec![legacy::STATUS];
    command.extend_from_slice(&[0; 7]);
    command.push(driver_status[0]);
    rejected(
        &s.command(LEGACY_COMMON_CFG_WRITE, 7, 1, &command, 0),
        Q_INVALID_GROUP,
    );
    rejected(
        &s.write_common(5, legacy::STATUS, &driver_status),
        Q_INVALID_MEMBER,
    );
    rejected(&s.write_common(1, legacy::STATUS, &[3, 0]), Q_INVALID_FIELD);
    rejected(&s.write_common(1, legacy::STATUS, &[]), Q_INVALID_FIELD);
    assert_eq!(s.vf(1).transport().status(), 0);
    assert_eq!(s.vf(2).transport().status(), 0);
    ok(&s.write_common(1, legacy::STATUS, &driver_status));
    assert_eq!(s.vf(1).transport().status(), driver_status[0]);
    assert_eq!(s.vf(2).transport().status(), 0, "only the member changed");
}

#[test]
fn legacy_common_registers() {
    let mut s = setup(PfOptions::default());
    s.use_all();
    let r = s.read_common(1, legacy::HOST_FEATURES, 4);
    ok(&r);
    let host = u32::from_le_bytes(r.result[..4].try_into().unwrap());
    assert_ne!(u64::from(host) & VIRTIO_NET_F_MAC, 0);
    ok(&s.write_common(
        1,
        legacy::GUEST_FEATURES,
        &(VIRTIO_NET_F_MAC as u32).to_le_bytes(),
    ));
    assert_eq!(s.vf(1).transport().driver_features(), VIRTIO_NET_F_MAC);
    let r = s.read_common(1, legacy::GUEST_FEATURES, 4);
    assert_eq!(r.result, (VIRTIO_NET_F_MAC as u32).to_le_bytes());
    let r = s.read_common(1, legacy::QUEUE_NUM, 2);
    assert_eq!(r.result, QUEUE_MAX_SIZE.to_le_bytes());
    ok(&s.write_common(1, legacy::QUEUE_SEL, &1u16.to_le_bytes()));
    assert_eq!(s.read_common(1, legacy::QUEUE_SEL, 2).result, [1, 0]);
    ok(&s.write_common(1, legacy::MSI_QUEUE_VECTOR, &2u16.to_le_bytes()));
    assert_eq!(s.read_common(1, legacy::MSI_QUEUE_VECTOR, 2).result, [2, 0]);
    ok(&s.write_common(1, legacy::MSI_CONFIG_VECTOR, &0u16.to_le_bytes()));
    assert_eq!(
        s.read_common(1, legacy::MSI_CONFIG_VECTOR, 2).result,
        [0, 0]
    );
    // The modern view shows the same state.
    let vf = Arc::clone(s.vf(1));
    let modern = ModernDriver::of(&vf);
    modern.write(cc::QUEUE_SELECT, 2, 1);
    assert_eq!(modern.read(cc::QUEUE_MSIX_VECTOR, 2), 2);
    assert_eq!(s.read_common(1, legacy::ISR, 1).result, [0]);
    // STATUS 0 resets.
    ok(&s.write_common(1, legacy::STATUS, &[0]));
    assert_eq!(s.vf(1).transport().driver_features(), 0);
}

#[test]
fn legacy_device_config() {
    let mut s = setup(PfOptions::default());
    s.use_all();
    let r = s.sriov(LEGACY_DEV_CFG_READ, 1, &[0], 6);
    ok(&r);
    assert_eq!(r.result, MAC);
    assert_eq!(r.used_len, 14);
    let r = s.sriov(LEGACY_DEV_CFG_READ, 1, &[4], 2);
    assert_eq!(r.result, &MAC[4..]);
    rejected(&s.sriov(LEGACY_DEV_CFG_READ, 1, &[8], 4), Q_INVALID_FIELD);
    rejected(&s.sriov(LEGACY_DEV_CFG_READ, 1, &[], 4), Q_INVALID_FIELD);
    rejected(&s.sriov(LEGACY_DEV_CFG_READ, 1, &[0], 0), Q_INVALID_FIELD);
    let mut write = vec![0u8; 8];
    write.extend_from_slice(&[1, 2]);
    ok(&s.sriov(LEGACY_DEV_CFG_WRITE, 1, &write, 0));
    assert_eq!(
        s.sriov(LEGACY_DEV_CFG_READ, 1, &[0], 6).result,
        MAC,
        "read-only"
    );
    write[0] = 200;
    rejected(
        &s.sriov(LEGACY_DEV_CFG_WRITE, 1, &write, 0),
        Q_INVALID_FIELD,
    );
}

#[test]
fn notify_info_points_at_the_vf_notify_area() {
    let mut s = setup(PfOptions::default());
    s.use_all();
    let r = s.sriov(LEGACY_NOTIFY_INFO, 2, &[], 64);
    ok(&r);
    assert_eq!(r.result.len(), 64);
    assert_eq!(r.result[0], NOTIFY_MEMBER);
    assert_eq!(r.result[1], 0, "VF BAR 0");
    assert_eq!(
        u64::from_le_bytes(r.result[8..16].try_into().unwrap()),
        0x3000
    );
    assert_eq!(r.result[16], NOTIFY_END);
    rejected(&s.sriov(LEGACY_NOTIFY_INFO, 9, &[], 64), Q_INVALID_MEMBER);
}

#[test]
fn pf_without_legacy_opcodes_refuses_them() {
    let mut s = setup(PfOptions {
        legacy_opcodes: false,
        migration_opcodes: false,
    });
    let r = s.sriov(LIST_QUERY, 0, &[], 8);
    ok(&r);
    assert_eq!(r.result, 3u64.to_le_bytes());
    rejected(
        &s.sriov(LIST_USE, 0, &ALL.to_le_bytes(), 0),
        Q_INVALID_FIELD,
    );
    ok(&s.sriov(LIST_USE, 0, &3u64.to_le_bytes(), 0));
    for opcode in 2..=6 {
        rejected(&s.sriov(opcode, 1, &[0; 9], 4), Q_INVALID_OPCODE);
    }
    assert_eq!(s.vf(1).transport().status(), 0);
}

#[test]
fn admin_queue_needs_the_feature() {
    let mem = Memory::new(1 << 20);
    let pf = VirtioPf::new(
        "pf",
        Vec::new(),
        PfOptions::default(),
        mem.clone(),
        Irqs::new(),
    );
    let mut admin = DriverQueue::new(16, 0x1000);
    let driver = ModernDriver::new(&pf);
    driver.negotiate(VIRTIO_F_VERSION_1);
    assert_eq!(driver.read(cc::ADMIN_QUEUE_NUM, 2), 0);
    driver.setup_queue(0, &admin, NO_VECTOR_U16);
    driver.driver_ok();
    admin.add(&mem, &[ro(CMD, 24), wo(RESULT, 16)]);
    driver.notify(0);
    assert_eq!(admin.poll_used(&mem), None);
}

/// A legacy virtio-net driver runs VF 1 through admin commands only, notifying through the
/// VF's notify area as LEGACY_NOTIFY_INFO says, with the 10-byte legacy header.
#[test]
fn legacy_driver_transmits_through_admin_commands() {
    let mut s = setup(PfOptions::default());
    s.use_all();
    ok(&s.write_common(1, legacy::STATUS, &[0]));
    ok(&s.write_common(1, legacy::STATUS, &[STATUS_ACKNOWLEDGE]));
    ok(&s.write_common(1, legacy::STATUS, &[STATUS_ACKNOWLEDGE | STATUS_DRIVER]));
    let host = s.read_common(1, legacy::HOST_FEATURES, 4).result;
    let host = u32::from_le_bytes(host[..4].try_into().unwrap());
    ok(&s.write_common(
        1,
        legacy::GUEST_FEATURES,
        &(host & VIRTIO_NET_F_MAC as u32).to_le_bytes(),
    ));
    // TX queue (1) at page 0x40: desc 0x40000, avail 0x41000, used 0x42000 (4 KiB aligned).
    ok(&s.write_common(1, legacy::QUEUE_SEL, &1u16.to_le_bytes()));
    let size = u16::from_le_bytes(
        s.read_common(1, legacy::QUEUE_NUM, 2).result[..2]
            .try_into()
            .unwrap(),
    );
    ok(&s.write_common(1, legacy::QUEUE_PFN, &0x40u32.to_le_bytes()));
    assert_eq!(
        s.read_common(1, legacy::QUEUE_PFN, 4).result,
        0x40u32.to_le_bytes()
    );
    ok(&s.write_common(
        1,
        legacy::STATUS,
        &[STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_DRIVER_OK],
    ));
    let info = s.sriov(LEGACY_NOTIFY_INFO, 1, &[], 64).result;
    let notify_bar = info[1];
    let notify_offset = u64::from_le_bytes(info[8..16].try_into().unwrap());

    let avail = 0x40000 + 16 * u64::from(size);
    let used = (avail + 6 + 2 * u64::from(size)).div_ceil(4096) * 4096;
    let mut tx = DriverQueue::at(size, 0x40000, avail, used);
    let frame = b"legacy frame";
    let mut packet = vec![0u8; 10];
    packet.extend_from_slice(frame);
    s.mem.put(0x50000, &packet);
    let head = tx.add(&s.mem, &[ro(0x50000, packet.len() as u32)]);
    // QUEUE_NOTIFY: 2 bytes, the queue index, straight to the VF.
    s.vf(1)
        .bar_write(notify_bar, notify_offset, &1u16.to_le_bytes())
        .unwrap();
    s.vf(1).quiesce();
    assert_eq!(tx.take_used(&s.mem), Some((u32::from(head), 0)));
    let mut buffer = [0u8; 256];
    let n = s.host.recv(&mut buffer).unwrap();
    assert_eq!(&buffer[..n], frame);

    // Receive: a legacy RX queue at page 0x60 gets the frame behind a 10-byte header.
    ok(&s.write_common(1, legacy::QUEUE_SEL, &0u16.to_le_bytes()));
    ok(&s.write_common(1, legacy::QUEUE_PFN, &0x60u32.to_le_bytes()));
    let avail = 0x60000 + 16 * u64::from(size);
    let used = (avail + 6 + 2 * u64::from(size)).div_ceil(4096) * 4096;
    let mut rx = DriverQueue::at(size, 0x60000, avail, used);
    let head = rx.add(&s.mem, &[wo(0x70000, 256)]);
    s.host.send(b"to the guest").unwrap();
    s.vf(1)
        .bar_write(notify_bar, notify_offset, &0u16.to_le_bytes())
        .unwrap();
    s.vf(1).quiesce();
    assert_eq!(rx.take_used(&s.mem), Some((u32::from(head), 10 + 12)));
    assert_eq!(s.mem.get(0x70000 + 10, 12), b"to the guest");
    // The used buffers set ISR (INTx, no MSI-X); reading it through an admin command clears it.
    assert_eq!(s.read_common(1, legacy::ISR, 1).result, [1]);
    assert_eq!(s.read_common(1, legacy::ISR, 1).result, [0]);
}
