//! The device-parts admin commands as the backend sends them (as Linux's
//! virtio_pci_modern.c does): capability discovery once per PF, and per VF the mode, the
//! device-parts objects and the parts themselves. Object ids are the driver's to pick, below
//! the limit it set with DRIVER_CAP_SET; [`PartsObjects`] hands them out per PF.

use parking_lot::Mutex;
use vfio_variant::migration::MigrationError;

use crate::admin::{AdminError, AdminQueue, MAX_PAYLOAD};
use crate::hw::pf::admin::*;

/// Largest device parts the backend saves or restores (a SET carries an 8-byte object header
/// in front of them).
pub const MAX_PARTS: usize = MAX_PAYLOAD - 8;

/// The device-parts object ids of one PF.
pub struct PartsObjects {
    used: Mutex<Vec<bool>>,
}

impl PartsObjects {
    /// Takes a free id.
    fn take(&self) -> Option<u32> {
        let mut used = self.used.lock();
        let free = used.iter().position(|u| !u)?;
        used[free] = true;
        u32::try_from(free).ok()
    }

    /// Returns an id.
    fn put(&self, id: u32) {
        let mut used = self.used.lock();
        if let Some(slot) = usize::try_from(id).ok().and_then(|i| used.get_mut(i)) {
            *slot = false;
        }
    }
}

/// The first le64 of a bitmap result (missing bytes are zero).
fn bitmap(result: &[u8]) -> u64 {
    let mut bytes = [0u8; 8];
    let n = result.len().min(8);
    bytes[..n].copy_from_slice(&result[..n]);
    u64::from_le_bytes(bytes)
}

/// Whether the PF can migrate its VFs, as Linux decides it: every device-parts opcode is
/// supported (and then put in use), VIRTIO_DEV_PARTS_CAP is listed, and the driver sets the
/// capability to the smaller of the get and set object limits. `None` when it cannot.
pub fn discover(admin: &AdminQueue) -> Result<Option<PartsObjects>, AdminError> {
    let supported = bitmap(&admin.command(LIST_QUERY, 0, &[], 8)?);
    if supported & MIGRATION_OPCODES != MIGRATION_OPCODES {
        return Ok(None);
    }
    admin.command(LIST_USE, 0, &supported.to_le_bytes(), 0)?;
    let caps = bitmap(&admin.self_command(CAP_ID_LIST_QUERY, &[], 8)?);
    if caps & (1 << DEV_PARTS_CAP) == 0 {
        return Ok(None);
    }
    let mut id = [0u8; 8];
    id[..2].copy_from_slice(&DEV_PARTS_CAP.to_le_bytes());
    let limits = admin.self_command(DEVICE_CAP_GET, &id, 2)?;
    let limit = match limits.as_slice() {
        [get, set] => (*get).min(*set),
        _ => 0,
    };
    if limit == 0 {
        return Ok(None);
    }
    let mut set = id.to_vec();
    set.extend_from_slice(&[limit, limit]);
    admin.self_command(DRIVER_CAP_SET, &set, 0)?;
    Ok(Some(PartsObjects {
        used: Mutex::new(vec![false; usize::from(limit)]),
    }))
}

fn failed(what: &str) -> impl FnOnce(AdminError) -> MigrationError + '_ {
    move |e| MigrationError::Device(format!("{what}: {e}"))
}

/// The object header `le16 type, u8 reserved[2], le32 id` of a device-parts object.
fn object_header(id: u32) -> Vec<u8> {
    let mut h = Vec::with_capacity(8);
    h.extend_from_slice(&RESOURCE_OBJ_DEV_PARTS.to_le_bytes());
    h.extend_from_slice(&[0, 0]);
    h.extend_from_slice(&id.to_le_bytes());
    h
}

/// The device-parts commands addressing one VF.
pub struct Member<'a> {
    /// The PF's admin queue.
    pub admin: &'a AdminQueue,
    /// The VF's member id.
    pub member: u64,
    /// The PF's object ids.
    pub objects: &'a PartsObjects,
}

impl Member<'_> {
    /// DEV_MODE_SET: stops the VF or lets it run.
    pub fn mode_set(&self, stopped: bool) -> Result<(), MigrationError> {
        let flags = if stopped { DEV_MODE_STOPPED } else { 0 };
        self.admin
            .command(DEV_MODE_SET, self.member, &[flags], 0)
            .map(|_| ())
            .map_err(failed("DEV_MODE_SET"))
    }

    /// RESOURCE_OBJ_CREATE of a device-parts object for `operation` (get or set).
    pub fn create(&self, operation: u8) -> Result<u32, MigrationError> {
        let id = self.objects.take().ok_or_else(|| {
            MigrationError::Device("no device-parts object id is free on the PF".into())
        })?;
        let mut data = object_header(id);
        data.extend_from_slice(&[0; 8]);
        data.push(operation);
        data.extend_from_slice(&[0; 7]);
        match self
            .admin
            .command(RESOURCE_OBJ_CREATE, self.member, &data, 0)
        {
            Ok(_) => Ok(id),
            Err(e) => {
                self.objects.put(id);
                Err(failed("RESOURCE_OBJ_CREATE")(e))
            }
        }
    }

    /// RESOURCE_OBJ_DESTROY; the id is free again even if the PF refused.
    pub fn destroy(&self, id: u32) -> Result<(), MigrationError> {
        let done = self
            .admin
            .command(RESOURCE_OBJ_DESTROY, self.member, &object_header(id), 0);
        self.objects.put(id);
        done.map(|_| ()).map_err(failed("RESOURCE_OBJ_DESTROY"))
    }

    /// DEV_PARTS_METADATA_GET of the size of all parts, through get object `id`.
    pub fn size(&self, id: u32) -> Result<u32, MigrationError> {
        let mut data = object_header(id);
        data.push(METADATA_TYPE_SIZE);
        data.extend_from_slice(&[0; 7]);
        let result = self
            .admin
            .command(DEV_PARTS_METADATA_GET, self.member, &data, 8)
            .map_err(failed("DEV_PARTS_METADATA_GET"))?;
        match result.get(..4) {
            Some(b) => Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            None => Err(MigrationError::Device(
                "DEV_PARTS_METADATA_GET returned no size".into(),
            )),
        }
    }

    /// DEV_PARTS_GET of all parts, through get object `id`, with room for `size` bytes.
    pub fn get_all(&self, id: u32, size: u32) -> Result<Vec<u8>, MigrationError> {
        let size = usize::try_from(size).unwrap_or(usize::MAX);
        if size == 0 || size > MAX_PARTS {
            return Err(MigrationError::Device(format!(
                "the VF's device parts are {size} bytes (at most {MAX_PARTS} are supported)"
            )));
        }
        let mut data = object_header(id);
        data.push(GET_TYPE_ALL);
        data.extend_from_slice(&[0; 7]);
        self.admin
            .command(DEV_PARTS_GET, self.member, &data, size)
            .map_err(failed("DEV_PARTS_GET"))
    }

    /// DEV_PARTS_SET of `parts` through set object `id`. A refusal for invalid data is
    /// [`MigrationError::InvalidData`].
    pub fn set(&self, id: u32, parts: &[u8]) -> Result<(), MigrationError> {
        let mut data = object_header(id);
        data.extend_from_slice(parts);
        match self.admin.command(DEV_PARTS_SET, self.member, &data, 0) {
            Ok(_) => Ok(()),
            Err(AdminError::Status {
                status: STATUS_EINVAL,
                ..
            }) => Err(MigrationError::InvalidData(
                "the VF refused the device parts".into(),
            )),
            Err(e) => Err(failed("DEV_PARTS_SET")(e)),
        }
    }
}
