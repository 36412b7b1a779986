//! The device-parts admin commands of the PF (virtio 1.4, as Linux's virtio_pci_modern.c and
//! drivers/vfio/pci/virtio/migrate.c use them):
//!
//! - self group (member id 0): CAP_ID_LIST_QUERY (bitmap with VIRTIO_DEV_PARTS_CAP),
//!   DEVICE_CAP_GET and DRIVER_CAP_SET of `struct virtio_dev_parts_cap` (how many get and set
//!   objects the driver may create; zero until it sets the capability);
//! - SR-IOV group (member = VF): RESOURCE_OBJ_CREATE/DESTROY of device-parts objects
//!   (`hdr{le16 type, u8 reserved[2], le32 id}, le64 flags, u8 type, u8 reserved[7]`; the
//!   driver picks the id below its limit), DEV_PARTS_METADATA_GET (size, count or header
//!   list of the parts), DEV_PARTS_GET (all, or the selected headers), DEV_PARTS_SET (only
//!   while the member is stopped; all-or-nothing) and DEV_MODE_SET (bit 0 stops the member).
//!
//! Objects belong to the PF and its member; a PF reset destroys them and the driver's
//! capability. Status codes: ENXIO for a missing object or capability, EEXIST for a used id,
//! ENOSPC past the limit, EBUSY for a capability change while objects exist or a SET on a
//! running member, ENOMEM when the result does not fit, EINVAL otherwise.

use std::collections::BTreeMap;

use super::admin::*;
use super::{Outcome, fail, ok};
use crate::hw::parts::{DeviceState, PART_HEADER, split};
use crate::hw::transport::RestoreError;
use crate::hw::vf::VirtioVf;

/// What a device-parts object is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Get,
    Set,
}

#[derive(Debug, Clone, Copy)]
struct Object {
    member: u64,
    kind: Kind,
}

/// The PF's device-parts capability and objects.
#[derive(Debug, Default)]
pub(super) struct PartsDevice {
    /// The driver's (get, set) object limits, from DRIVER_CAP_SET.
    driver_limits: (u8, u8),
    objects: BTreeMap<u32, Object>,
}

fn status(status: u16, qualifier: u16) -> Outcome {
    Outcome {
        status,
        qualifier,
        result: Vec::new(),
    }
}

fn le16(b: &[u8]) -> u16 {
    u16::from_le_bytes([b[0], b[1]])
}

fn le32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

fn zero(b: &[u8]) -> bool {
    b.iter().all(|x| *x == 0)
}

/// The object header `le16 type, u8 reserved[2], le32 id` of a device-parts object.
fn object_id(data: &[u8]) -> Result<u32, Outcome> {
    match data.get(..8) {
        Some(h) if le16(h) == RESOURCE_OBJ_DEV_PARTS && zero(&h[2..4]) => Ok(le32(&h[4..8])),
        _ => Err(fail(Q_INVALID_FIELD)),
    }
}

/// A result, or ENOMEM when the driver left too little room for it.
fn fitting(result: Vec<u8>, room: usize) -> Outcome {
    if result.len() > room {
        return status(STATUS_ENOMEM, Q_NORESOURCE);
    }
    ok(result)
}

impl PartsDevice {
    /// A PF reset: objects are destroyed, the driver's capability cleared.
    pub(super) fn reset(&mut self) {
        *self = Self::default();
    }

    /// CAP_ID_LIST_QUERY, DEVICE_CAP_GET, DRIVER_CAP_SET (self group).
    pub(super) fn capability(&mut self, opcode: u16, data: &[u8]) -> Outcome {
        if opcode == CAP_ID_LIST_QUERY {
            return ok((1u64 << DEV_PARTS_CAP).to_le_bytes().to_vec());
        }
        let Some(header) = data.get(..8).filter(|h| zero(&h[2..8])) else {
            return fail(Q_INVALID_FIELD);
        };
        if le16(header) != DEV_PARTS_CAP {
            return status(STATUS_ENXIO, Q_INVALID_FIELD);
        }
        if opcode == DEVICE_CAP_GET {
            return ok(vec![DEV_PARTS_OBJECTS_LIMIT, DEV_PARTS_OBJECTS_LIMIT]);
        }
        let Some(&[get, set]) = data.get(8..10) else {
            return fail(Q_INVALID_FIELD);
        };
        if get > DEV_PARTS_OBJECTS_LIMIT || set > DEV_PARTS_OBJECTS_LIMIT {
            return fail(Q_INVALID_FIELD);
        }
        if !self.objects.is_empty() {
            return status(STATUS_EBUSY, Q_INVALID_COMMAND);
        }
        self.driver_limits = (get, set);
        ok(Vec::new())
    }

    /// The commands addressed to member `member` (`vf`).
    pub(super) fn member_command(
        &mut self,
        opcode: u16,
        member: u64,
        vf: &VirtioVf,
        data: &[u8],
        room: usize,
    ) -> Outcome {
        let done = match opcode {
            DEV_MODE_SET => Self::mode_set(vf, data),
            RESOURCE_OBJ_CREATE => self.create(member, data),
            RESOURCE_OBJ_DESTROY => self.destroy(member, data),
            DEV_PARTS_METADATA_GET => self.metadata(member, vf, data, room),
            DEV_PARTS_GET => self.get(member, vf, data, room),
            DEV_PARTS_SET => self.set(member, vf, data),
            _ => Err(fail(Q_INVALID_OPCODE)),
        };
        done.unwrap_or_else(|outcome| outcome)
    }

    fn mode_set(vf: &VirtioVf, data: &[u8]) -> Result<Outcome, Outcome> {
        match data.first() {
            Some(&flags) if flags & !DEV_MODE_STOPPED == 0 => {
                vf.transport().set_stopped(flags & DEV_MODE_STOPPED != 0);
                Ok(ok(Vec::new()))
            }
            _ => Err(fail(Q_INVALID_FIELD)),
        }
    }

    fn create(&mut self, member: u64, data: &[u8]) -> Result<Outcome, Outcome> {
        let id = object_id(data)?;
        let kind = match data.get(8..24) {
            Some(rest) if zero(&rest[..8]) && zero(&rest[9..]) => match rest[8] {
                DEV_PARTS_TYPE_GET => Kind::Get,
                DEV_PARTS_TYPE_SET => Kind::Set,
                _ => return Err(fail(Q_INVALID_FIELD)),
            },
            _ => return Err(fail(Q_INVALID_FIELD)),
        };
        let limit = match kind {
            Kind::Get => self.driver_limits.0,
            Kind::Set => self.driver_limits.1,
        };
        if id >= u32::from(limit) {
            return Err(fail(Q_INVALID_FIELD));
        }
        if self.objects.contains_key(&id) {
            return Err(status(STATUS_EEXIST, Q_INVALID_FIELD));
        }
        if self.objects.values().filter(|o| o.kind == kind).count() >= usize::from(limit) {
            return Err(status(STATUS_ENOSPC, Q_NORESOURCE));
        }
        self.objects.insert(id, Object { member, kind });
        Ok(ok(Vec::new()))
    }

    /// The object `id` of `member`, which must be of `kind`.
    fn object(&self, member: u64, id: u32, kind: Kind) -> Result<(), Outcome> {
        match self.objects.get(&id) {
            Some(o) if o.member == member && o.kind == kind => Ok(()),
            Some(o) if o.member == member => Err(fail(Q_INVALID_FIELD)),
            _ => Err(status(STATUS_ENXIO, Q_INVALID_FIELD)),
        }
    }

    fn destroy(&mut self, member: u64, data: &[u8]) -> Result<Outcome, Outcome> {
        let id = object_id(data)?;
        match self.objects.get(&id) {
            Some(o) if o.member == member => {
                self.objects.remove(&id);
                Ok(ok(Vec::new()))
            }
            _ => Err(status(STATUS_ENXIO, Q_INVALID_FIELD)),
        }
    }

    /// The `hdr, u8 type, u8 reserved[7]` data of METADATA_GET and GET, for a GET object.
    fn get_request(&self, member: u64, data: &[u8]) -> Result<u8, Outcome> {
        let id = object_id(data)?;
        let kind = match data.get(8..16) {
            Some(rest) if zero(&rest[1..]) => rest[0],
            _ => return Err(fail(Q_INVALID_FIELD)),
        };
        self.object(member, id, Kind::Get)?;
        Ok(kind)
    }

    fn metadata(
        &self,
        member: u64,
        vf: &VirtioVf,
        data: &[u8],
        room: usize,
    ) -> Result<Outcome, Outcome> {
        let kind = self.get_request(member, data)?;
        let parts = vf.transport().device_state().encode();
        let headers = split(&parts).map_err(|_| fail(Q_INVALID_COMMAND))?;
        let count = u32::try_from(headers.len()).unwrap_or(u32::MAX);
        let mut result = Vec::new();
        match kind {
            METADATA_TYPE_SIZE => {
                let size = u32::try_from(parts.len()).unwrap_or(u32::MAX);
                result.extend_from_slice(&size.to_le_bytes());
            }
            METADATA_TYPE_COUNT => result.extend_from_slice(&count.to_le_bytes()),
            METADATA_TYPE_LIST => {
                result.extend_from_slice(&count.to_le_bytes());
                result.extend_from_slice(&[0; 4]);
                for part in &headers {
                    result.extend_from_slice(&part.header());
                }
                return Ok(fitting(result, room));
            }
            _ => return Err(fail(Q_INVALID_FIELD)),
        }
        result.extend_from_slice(&[0; 4]);
        Ok(fitting(result, room))
    }

    fn get(
        &self,
        member: u64,
        vf: &VirtioVf,
        data: &[u8],
        room: usize,
    ) -> Result<Outcome, Outcome> {
        let kind = self.get_request(member, data)?;
        let parts = vf.transport().device_state().encode();
        let result = match kind {
            GET_TYPE_ALL if data.len() == 16 => parts,
            GET_TYPE_SELECTED if (data.len() - 16).is_multiple_of(PART_HEADER) => {
                let wanted: Vec<(u16, &[u8])> = data[16..]
                    .chunks_exact(PART_HEADER)
                    .map(|h| (le16(h), &h[4..12]))
                    .collect();
                let mut out = Vec::new();
                for part in split(&parts).map_err(|_| fail(Q_INVALID_COMMAND))? {
                    if wanted
                        .iter()
                        .any(|(t, s)| *t == part.part_type && *s == part.selector)
                    {
                        part.encode_into(&mut out);
                    }
                }
                out
            }
            _ => return Err(fail(Q_INVALID_FIELD)),
        };
        Ok(fitting(result, room))
    }

    fn set(&self, member: u64, vf: &VirtioVf, data: &[u8]) -> Result<Outcome, Outcome> {
        let id = object_id(data)?;
        self.object(member, id, Kind::Set)?;
        let state = DeviceState::decode(&data[8..]).map_err(|_| fail(Q_INVALID_FIELD))?;
        match vf.transport().restore_state(&state) {
            Ok(()) => Ok(ok(Vec::new())),
            Err(RestoreError::Running) => Err(status(STATUS_EBUSY, Q_INVALID_COMMAND)),
            Err(RestoreError::Mismatch(_) | RestoreError::Invalid(_)) => Err(fail(Q_INVALID_FIELD)),
        }
    }
}
