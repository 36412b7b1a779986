//! A virtio PF offering VIRTIO_F_ADMIN_VQ: one admin virtqueue (queue 0) taking the
//! SR-IOV group's commands for its VFs (member ids 1..=NumVFs): the legacy interface
//! commands, and the device-parts commands that migrate a VF (`pf/parts.rs`; their capability
//! commands address the self group, member id 0).
//!
//! A command is a descriptor chain: the driver-readable part is
//! `le16 opcode, le16 group_type, u8 reserved[12], le64 group_member_id, data`, the
//! device-writable part receives `le16 status, le16 status_qualifier, u8 reserved[4], result`.
//! The device checks the group, then the opcode (supported and in the used list), then the
//! member, then the command's fields; a rejected command changes nothing.
//!
//! After reset only LIST_QUERY and LIST_USE are in use; the driver enables the others with
//! LIST_USE. LIST_QUERY and LIST_USE address the group, so their member id is not checked.

mod parts;

use std::sync::Arc;

use vfio_variant::backend::{DmaAccess, InterruptSink};
use vfio_variant::physical::{PhysicalBar, PhysicalError, PhysicalFunction};

use super::pci::{ConfigSpace, Identity};
use super::transport::{NOTIFY_OFFSET, Transport};
use super::vf::{VirtioFunction, VirtioVf};
use super::virtqueue::{Chain, Virtqueue, VirtqueueError};
use super::{DEVICE_TYPE_NET, VIRTIO_F_ADMIN_VQ, VirtioDevice};

/// Admin command opcodes, status and qualifier codes, group types.
pub mod admin {
    /// Opcode: the supported opcodes (le64 bitmap result).
    pub const LIST_QUERY: u16 = 0x0;
    /// Opcode: the opcodes the driver uses (le64 bitmap data).
    pub const LIST_USE: u16 = 0x1;
    /// Opcode: write legacy common registers.
    pub const LEGACY_COMMON_CFG_WRITE: u16 = 0x2;
    /// Opcode: read legacy common registers.
    pub const LEGACY_COMMON_CFG_READ: u16 = 0x3;
    /// Opcode: write legacy device config.
    pub const LEGACY_DEV_CFG_WRITE: u16 = 0x4;
    /// Opcode: read legacy device config.
    pub const LEGACY_DEV_CFG_READ: u16 = 0x5;
    /// Opcode: where the member's notify area is.
    pub const LEGACY_NOTIFY_INFO: u16 = 0x6;
    /// Opcode (self group): the supported capability ids (le64 bitmaps).
    pub const CAP_ID_LIST_QUERY: u16 = 0x7;
    /// Opcode (self group): a device capability (`le16 id, u8 reserved[6]`).
    pub const DEVICE_CAP_GET: u16 = 0x8;
    /// Opcode (self group): sets a driver capability (`le16 id, u8 reserved[6], data`).
    pub const DRIVER_CAP_SET: u16 = 0x9;
    /// Opcode: creates a resource object.
    pub const RESOURCE_OBJ_CREATE: u16 = 0xa;
    /// Opcode: destroys a resource object.
    pub const RESOURCE_OBJ_DESTROY: u16 = 0xd;
    /// Opcode: size, count or header list of the member's device parts.
    pub const DEV_PARTS_METADATA_GET: u16 = 0xe;
    /// Opcode: the member's device parts.
    pub const DEV_PARTS_GET: u16 = 0xf;
    /// Opcode: restores the member's device parts.
    pub const DEV_PARTS_SET: u16 = 0x10;
    /// Opcode: stops the member or lets it run.
    pub const DEV_MODE_SET: u16 = 0x11;
    /// Group type: the owner device itself (capability commands).
    pub const GROUP_SELF: u16 = 0;
    /// Group type: SR-IOV (members are VFs).
    pub const GROUP_SRIOV: u16 = 1;
    /// Status: success.
    pub const STATUS_OK: u16 = 0;
    /// Status: no such object or capability.
    pub const STATUS_ENXIO: u16 = 6;
    /// Status: try again.
    pub const STATUS_EAGAIN: u16 = 11;
    /// Status: out of memory (or the result does not fit).
    pub const STATUS_ENOMEM: u16 = 12;
    /// Status: busy (objects exist; the member is running).
    pub const STATUS_EBUSY: u16 = 16;
    /// Status: the object id is in use.
    pub const STATUS_EEXIST: u16 = 17;
    /// Status: invalid command.
    pub const STATUS_EINVAL: u16 = 22;
    /// Status: no room for another object.
    pub const STATUS_ENOSPC: u16 = 28;
    /// Qualifier: success.
    pub const Q_OK: u16 = 0;
    /// Qualifier: the command is malformed.
    pub const Q_INVALID_COMMAND: u16 = 1;
    /// Qualifier: unsupported or unused opcode.
    pub const Q_INVALID_OPCODE: u16 = 2;
    /// Qualifier: a field of the command is invalid.
    pub const Q_INVALID_FIELD: u16 = 3;
    /// Qualifier: unknown group type.
    pub const Q_INVALID_GROUP: u16 = 4;
    /// Qualifier: no such member.
    pub const Q_INVALID_MEMBER: u16 = 5;
    /// Qualifier: out of resources.
    pub const Q_NORESOURCE: u16 = 6;
    /// Qualifier: try again.
    pub const Q_TRYAGAIN: u16 = 7;
    /// Length of the command header.
    pub const COMMAND_HEADER: usize = 24;
    /// Length of the result header.
    pub const RESULT_HEADER: usize = 8;
    /// LEGACY_NOTIFY_INFO entry flag: end of list.
    pub const NOTIFY_END: u8 = 0;
    /// LEGACY_NOTIFY_INFO entry flag: the area is in a PF (owner) BAR.
    pub const NOTIFY_OWNER: u8 = 1;
    /// LEGACY_NOTIFY_INFO entry flag: the area is in a VF (member) BAR.
    pub const NOTIFY_MEMBER: u8 = 2;
    /// LEGACY_NOTIFY_INFO: number of entries.
    pub const NOTIFY_ENTRIES: usize = 4;
    /// Capability id: device-parts objects (`struct virtio_dev_parts_cap {u8 get_limit,
    /// u8 set_limit}`).
    pub const DEV_PARTS_CAP: u16 = 0;
    /// How many get and how many set objects the PF offers.
    pub const DEV_PARTS_OBJECTS_LIMIT: u8 = 4;
    /// Resource object type: device parts.
    pub const RESOURCE_OBJ_DEV_PARTS: u16 = 0;
    /// Device-parts object operation: get.
    pub const DEV_PARTS_TYPE_GET: u8 = 0;
    /// Device-parts object operation: set.
    pub const DEV_PARTS_TYPE_SET: u8 = 1;
    /// METADATA_GET type: the size of all parts (`le32 size, le32 reserved`).
    pub const METADATA_TYPE_SIZE: u8 = 0;
    /// METADATA_GET type: the number of parts (`le32 count, le32 reserved`).
    pub const METADATA_TYPE_COUNT: u8 = 1;
    /// METADATA_GET type: count, reserved, then every part header.
    pub const METADATA_TYPE_LIST: u8 = 2;
    /// DEV_PARTS_GET type: the parts whose headers follow.
    pub const GET_TYPE_SELECTED: u8 = 0;
    /// DEV_PARTS_GET type: all parts.
    pub const GET_TYPE_ALL: u8 = 1;
    /// DEV_MODE_SET flag: stopped (bit VIRTIO_ADMIN_CMD_DEV_MODE_F_STOPPED = 0).
    pub const DEV_MODE_STOPPED: u8 = 1 << 0;
    /// Bitmap of the self-group capability opcodes (7-9).
    pub const CAPABILITY_OPCODES: u64 = 0b11_1000_0000;
    /// Bitmap of every device-parts opcode (7-0xa, 0xd-0x11).
    pub const MIGRATION_OPCODES: u64 = CAPABILITY_OPCODES | 0b11_1110_0100_0000_0000;
}

use admin::*;

/// Bitmap of the legacy opcodes 2..=6.
const LEGACY_OPCODES: u64 = 0b111_1100;
/// Bitmap of LIST_QUERY and LIST_USE.
const LIST_OPCODES: u64 = 0b11;

/// What kind of PF to build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PfOptions {
    /// Whether the admin queue supports the legacy opcodes (2-6).
    pub legacy_opcodes: bool,
    /// Whether the admin queue supports the device-parts (migration) opcodes.
    pub migration_opcodes: bool,
}

impl Default for PfOptions {
    fn default() -> Self {
        Self {
            legacy_opcodes: true,
            migration_opcodes: true,
        }
    }
}

/// The PF's device: the admin virtqueue and the group of VFs.
struct AdminDevice {
    members: Vec<Arc<VirtioVf>>,
    supported: u64,
    used: u64,
    parts: parts::PartsDevice,
}

struct Outcome {
    status: u16,
    qualifier: u16,
    result: Vec<u8>,
}

fn fail(qualifier: u16) -> Outcome {
    Outcome {
        status: STATUS_EINVAL,
        qualifier,
        result: Vec::new(),
    }
}

fn ok(result: Vec<u8>) -> Outcome {
    Outcome {
        status: STATUS_OK,
        qualifier: Q_OK,
        result,
    }
}

impl AdminDevice {
    fn execute(&mut self, command: &[u8], result_room: usize) -> Outcome {
        if command.len() < COMMAND_HEADER {
            return fail(Q_INVALID_COMMAND);
        }
        let opcode = u16::from_le_bytes([command[0], command[1]]);
        let group = u16::from_le_bytes([command[2], command[3]]);
        let mut m = [0u8; 8];
        m.copy_from_slice(&command[16..24]);
        let member = u64::from_le_bytes(m);
        let data = &command[COMMAND_HEADER..];

        if group != GROUP_SRIOV && group != GROUP_SELF {
            return fail(Q_INVALID_GROUP);
        }
        let bit = 1u64.checked_shl(u32::from(opcode)).unwrap_or(0);
        if bit & self.supported == 0 || bit & (self.used | LIST_OPCODES) == 0 {
            return fail(Q_INVALID_OPCODE);
        }
        // The capability commands belong to the self group, everything else to SR-IOV.
        if (bit & CAPABILITY_OPCODES != 0) != (group == GROUP_SELF) {
            return fail(Q_INVALID_GROUP);
        }
        if group == GROUP_SELF {
            if member != 0 {
                return fail(Q_INVALID_MEMBER);
            }
            return self.parts.capability(opcode, data);
        }
        if opcode == LIST_QUERY {
            return ok(self.supported.to_le_bytes().to_vec());
        }
        if opcode == LIST_USE {
            let Some(bitmap) = data.get(..8) else {
                return fail(Q_INVALID_FIELD);
            };
            let mut b = [0u8; 8];
            b.copy_from_slice(bitmap);
            let bitmap = u64::from_le_bytes(b);
            if bitmap & !self.supported != 0 {
                return fail(Q_INVALID_FIELD);
            }
            self.used = bitmap;
            return ok(Vec::new());
        }
        let vf = match usize::try_from(member)
            .ok()
            .filter(|m| *m >= 1)
            .and_then(|m| self.members.get(m - 1))
        {
            Some(vf) => Arc::clone(vf),
            None => return fail(Q_INVALID_MEMBER),
        };
        match opcode {
            LEGACY_COMMON_CFG_WRITE | LEGACY_DEV_CFG_WRITE => {
                if data.len() <= 8 {
                    return fail(Q_INVALID_FIELD);
                }
                let (offset, registers) = (data[0], &data[8..]);
                let done = if opcode == LEGACY_COMMON_CFG_WRITE {
                    vf.legacy_common_write(offset, registers)
                } else {
                    vf.legacy_device_write(offset, registers)
                };
                match done {
                    Ok(()) => ok(Vec::new()),
                    Err(_) => fail(Q_INVALID_FIELD),
                }
            }
            LEGACY_COMMON_CFG_READ | LEGACY_DEV_CFG_READ => {
                let Some(&offset) = data.first() else {
                    return fail(Q_INVALID_FIELD);
                };
                if result_room == 0 || result_room > 256 {
                    return fail(Q_INVALID_FIELD);
                }
                let mut registers = vec![0u8; result_room];
                let done = if opcode == LEGACY_COMMON_CFG_READ {
                    vf.legacy_common_read(offset, &mut registers)
                } else {
                    vf.legacy_device_read(offset, &mut registers)
                };
                match done {
                    Ok(()) => ok(registers),
                    Err(_) => fail(Q_INVALID_FIELD),
                }
            }
            LEGACY_NOTIFY_INFO => {
                let mut entries = vec![0u8; 16 * NOTIFY_ENTRIES];
                entries[0] = NOTIFY_MEMBER;
                entries[1] = super::pci::VIRTIO_BAR;
                entries[8..16].copy_from_slice(&NOTIFY_OFFSET.to_le_bytes());
                ok(entries)
            }
            _ => self
                .parts
                .member_command(opcode, member, &vf, data, result_room),
        }
    }

    fn complete(&mut self, chain: &Chain, mem: &dyn DmaAccess) -> Result<u32, VirtqueueError> {
        let room = chain.writable_len();
        if room < RESULT_HEADER as u64 {
            // No room for a status: the command cannot be answered.
            return Ok(0);
        }
        let command = chain.read_all(mem)?;
        let result_room = usize::try_from(room).unwrap_or(usize::MAX) - RESULT_HEADER;
        let outcome = self.execute(&command, result_room);
        let mut reply = Vec::with_capacity(RESULT_HEADER + outcome.result.len());
        reply.extend_from_slice(&outcome.status.to_le_bytes());
        reply.extend_from_slice(&outcome.qualifier.to_le_bytes());
        reply.extend_from_slice(&[0; 4]);
        reply.extend_from_slice(&outcome.result);
        Ok(chain.write_at(mem, 0, &reply)? as u32)
    }
}

impl VirtioDevice for AdminDevice {
    fn device_type(&self) -> u16 {
        DEVICE_TYPE_NET
    }

    fn features(&self) -> u64 {
        0
    }

    fn num_queues(&self) -> u16 {
        0
    }

    fn config(&self) -> Vec<u8> {
        vec![0; 8]
    }

    fn process(
        &mut self,
        _index: u16,
        queue: &mut Virtqueue,
        mem: &dyn DmaAccess,
        features: u64,
    ) -> Result<bool, VirtqueueError> {
        if features & VIRTIO_F_ADMIN_VQ == 0 {
            return Ok(false);
        }
        let mut used = false;
        while let Some(chain) = queue.pop(mem)? {
            let len = self.complete(&chain, mem)?;
            queue.push_used(mem, chain.head, len)?;
            used = true;
        }
        Ok(used)
    }

    fn reset(&mut self) {
        self.used = 0;
        self.parts.reset();
    }
}

/// A virtio PF with an admin virtqueue and its VFs.
pub struct VirtioPf {
    function: VirtioFunction,
    members: Vec<Arc<VirtioVf>>,
}

impl VirtioPf {
    /// A PF named `name` owning `members` (member id `i + 1` is `members[i]`); its admin
    /// virtqueue is queue 0, and it uses `dma` for guest memory.
    pub fn new(
        name: impl Into<String>,
        members: Vec<Arc<VirtioVf>>,
        options: PfOptions,
        dma: Arc<dyn DmaAccess>,
        interrupts: Arc<dyn InterruptSink>,
    ) -> Self {
        let mut supported = LIST_OPCODES;
        if options.legacy_opcodes {
            supported |= LEGACY_OPCODES;
        }
        if options.migration_opcodes {
            supported |= MIGRATION_OPCODES;
        }
        let device = AdminDevice {
            members: members.clone(),
            supported,
            used: 0,
            parts: parts::PartsDevice::default(),
        };
        let mut config = ConfigSpace::virtio(Identity {
            device_id: 0x1041,
            revision: 1,
            class_code: 0x02_0000,
            subsystem_id: 0x1100,
            msix_vectors: 2,
        });
        let vf_device_id = members
            .first()
            .and_then(|vf| {
                let mut id = [0u8; 2];
                vf.config_read(vfio_variant::pci::regs::DEVICE_ID, &mut id)
                    .ok()
                    .map(|()| u16::from_le_bytes(id))
            })
            .unwrap_or(0x1041);
        config.add_sriov(
            u16::try_from(members.len()).unwrap_or(u16::MAX),
            vf_device_id,
        );
        let transport = Transport::new(
            Box::new(device),
            VIRTIO_F_ADMIN_VQ,
            Some((0, 1)),
            dma,
            interrupts,
        );
        Self {
            function: VirtioFunction::from_parts(name.into(), config, transport),
            members,
        }
    }

    /// The VF with member id `member` (1-based).
    pub fn member(&self, member: u64) -> Option<&Arc<VirtioVf>> {
        usize::try_from(member)
            .ok()
            .and_then(|m| m.checked_sub(1))
            .and_then(|m| self.members.get(m))
    }

    /// The PF's transport.
    pub fn transport(&self) -> &Transport {
        self.function.transport()
    }
}

impl PhysicalFunction for VirtioPf {
    fn name(&self) -> String {
        self.function.name()
    }

    fn config_size(&self) -> u16 {
        self.function.config_size()
    }

    fn config_read(&self, offset: u16, data: &mut [u8]) -> Result<(), PhysicalError> {
        self.function.config_read(offset, data)
    }

    fn config_write(&self, offset: u16, data: &[u8]) -> Result<(), PhysicalError> {
        self.function.config_write(offset, data)
    }

    fn bar(&self, index: u8) -> Option<PhysicalBar> {
        self.function.bar(index)
    }

    fn bar_read(&self, index: u8, offset: u64, data: &mut [u8]) -> Result<(), PhysicalError> {
        self.function.bar_read(index, offset, data)
    }

    fn bar_write(&self, index: u8, offset: u64, data: &[u8]) -> Result<(), PhysicalError> {
        self.function.bar_write(index, offset, data)
    }

    fn rom_read(&self, offset: u64, data: &mut [u8]) -> Result<(), PhysicalError> {
        self.function.rom_read(offset, data)
    }

    fn reset(&self) -> Result<(), PhysicalError> {
        self.function.reset()
    }
}
