//! `VirtioLegacyBackend`: the VFs of one virtio PF, offered as `modern` (as they are) or
//! `transitional` (with a legacy I/O BAR whose registers go through the PF's admin queue).
//! Both profiles migrate when the PF has the device-parts commands (found once, when the
//! backend is built, as Linux does when the PF's driver starts).

use std::sync::Arc;

use vfio_variant::backend::pool::SlotPool;
use vfio_variant::backend::{Backend, BackendError, CreateRequest, Function, ProfileInfo};
use vfio_variant::layout::{BarBacking, BarKind};
use vfio_variant::physical::PhysicalFunction;

use crate::admin::{AdminError, AdminQueue};
use crate::function::{Attachment, LegacyIo, VirtioLegacyFunction};
use crate::hw::pf::admin::{LEGACY_NOTIFY_INFO, LIST_QUERY, LIST_USE, NOTIFY_MEMBER};
use crate::hw::{DEVICE_TYPE_BLK, DEVICE_TYPE_NET};
use crate::migration::VfMigration;
use crate::migration::commands::{PartsObjects, discover};

/// Profile name: the VF as it is.
pub const PROFILE_MODERN: &str = "modern";
/// Profile name: the VF with a legacy I/O BAR.
pub const PROFILE_TRANSITIONAL: &str = "transitional";
/// Bitmap of the opcodes the transitional profile needs: LIST_QUERY, LIST_USE, legacy 2-6.
pub const LEGACY_OPCODES: u64 = 0x7f;

/// Default layouts.
pub mod layouts {
    /// Transitional virtio-net (catalog/virtio-net-transitional.toml).
    pub const NET_TRANSITIONAL: &str = include_str!("../../catalog/virtio-net-transitional.toml");
    /// Transitional virtio-blk (catalog/virtio-blk-transitional.toml).
    pub const BLK_TRANSITIONAL: &str = include_str!("../../catalog/virtio-blk-transitional.toml");
    /// Modern virtio-net.
    pub const NET_MODERN: &str = include_str!("layouts/virtio-net-modern.toml");
    /// Modern virtio-blk.
    pub const BLK_MODERN: &str = include_str!("layouts/virtio-blk-modern.toml");
}

/// One VF the backend can provision.
pub struct Vf {
    /// SR-IOV member id (VF number, 1-based).
    pub member: u64,
    /// The VF.
    pub function: Arc<dyn PhysicalFunction>,
    /// For an emulated VF, where guest DMA and interrupts are bound on attach.
    pub attachment: Option<Attachment>,
}

/// The VFs of one virtio PF.
pub struct VirtioLegacyBackend {
    device_type: u16,
    admin: Arc<AdminQueue>,
    vfs: Vec<Vf>,
    pool: SlotPool,
    /// The PF's device-parts object ids, when its VFs can migrate.
    migration: Option<Arc<PartsObjects>>,
}

impl VirtioLegacyBackend {
    /// A backend for `vfs` of type `device_type` (1 net, 2 blk), whose PF's admin queue is
    /// `admin`.
    /// Asks the PF whether its VFs can migrate (device-parts commands and capability); a PF
    /// that cannot answer is taken as one that cannot.
    pub fn new(device_type: u16, admin: Arc<AdminQueue>, vfs: Vec<Vf>) -> Self {
        let pool = SlotPool::new(vfs.len());
        let migration = match discover(&admin) {
            Ok(objects) => objects.map(Arc::new),
            Err(e) => {
                tracing::warn!("device-parts discovery on the PF failed: {e}");
                None
            }
        };
        Self {
            device_type,
            admin,
            vfs,
            pool,
            migration,
        }
    }

    /// Whether the PF can migrate its VFs (its functions then have migration hooks).
    pub fn migratable(&self) -> bool {
        self.migration.is_some()
    }

    /// The PF's supported admin opcodes if they include the legacy ones; the reason when
    /// they do not.
    fn query_legacy(&self) -> Result<u64, String> {
        let supported = self
            .admin
            .command(LIST_QUERY, 0, &[], 8)
            .map_err(|e| format!("LIST_QUERY failed: {e}"))?;
        let mut bitmap = [0u8; 8];
        let n = supported.len().min(8);
        bitmap[..n].copy_from_slice(&supported[..n]);
        let supported = u64::from_le_bytes(bitmap);
        if supported & LEGACY_OPCODES != LEGACY_OPCODES {
            return Err(format!(
                "the PF's admin queue lacks the legacy opcodes (supported {supported:#x}, \
                 needed {LEGACY_OPCODES:#x})"
            ));
        }
        Ok(supported)
    }

    /// Checks the PF offers the legacy opcodes and puts them in use (LIST_USE).
    fn check_legacy(&self) -> Result<(), String> {
        let supported = self.query_legacy()?;
        self.admin
            .command(LIST_USE, 0, &supported.to_le_bytes(), 0)
            .map_err(|e| format!("LIST_USE failed: {e}"))?;
        Ok(())
    }

    fn notify_info(&self, member: u64) -> Result<(u8, u64), String> {
        let info = self
            .admin
            .command(LEGACY_NOTIFY_INFO, member, &[], 64)
            .map_err(|e: AdminError| format!("LEGACY_NOTIFY_INFO failed: {e}"))?;
        info.chunks_exact(16)
            .take_while(|entry| entry[0] != 0)
            .find(|entry| entry[0] == NOTIFY_MEMBER)
            .map(|entry| {
                let mut offset = [0u8; 8];
                offset.copy_from_slice(&entry[8..16]);
                (entry[1], u64::from_le_bytes(offset))
            })
            .ok_or_else(|| "the PF gave no notify area in the VF".to_string())
    }

    fn provision(
        &self,
        index: usize,
        request: &CreateRequest,
    ) -> Result<VirtioLegacyFunction, BackendError> {
        let vf = &self.vfs[index];
        vf.function.reset()?;
        let legacy = if request.profile == PROFILE_TRANSITIONAL {
            let bar = request
                .layout
                .bars
                .iter()
                .flatten()
                .find(|bar| bar.backing == BarBacking::LegacyIo && bar.kind == BarKind::Io)
                .ok_or_else(|| BackendError::Refused("the layout has no legacy I/O BAR".into()))?;
            let (notify_bar, notify_offset) =
                self.notify_info(vf.member).map_err(BackendError::Refused)?;
            Some(LegacyIo {
                size: bar.size,
                notify_bar,
                notify_offset,
            })
        } else {
            None
        };
        Ok(VirtioLegacyFunction::new(
            Arc::clone(&vf.function),
            vf.member,
            Arc::clone(&self.admin),
            legacy,
            vf.attachment.clone(),
            self.migration.as_ref().map(|objects| {
                VfMigration::new(Arc::clone(&self.admin), vf.member, Arc::clone(objects))
            }),
            self.pool.releaser(index),
        ))
    }
}

impl Backend for VirtioLegacyBackend {
    fn name(&self) -> &str {
        "virtio-legacy"
    }

    fn description(&self) -> &str {
        "virtio VFs, modern or with a transitional legacy I/O BAR through the PF's admin queue"
    }

    /// Transitional first: what a default function of this backend gets when the PF can.
    fn profiles(&self) -> Vec<ProfileInfo> {
        let free = self.pool.free();
        vec![
            ProfileInfo {
                name: PROFILE_TRANSITIONAL.into(),
                description: "transitional: adds a legacy I/O BAR (needs the PF's legacy \
                              admin commands)"
                    .into(),
                available_instances: if self.query_legacy().is_ok() { free } else { 0 },
                migratable: self.migratable(),
            },
            ProfileInfo {
                name: PROFILE_MODERN.into(),
                description: "the modern virtio VF as it is".into(),
                available_instances: free,
                migratable: self.migratable(),
            },
        ]
    }

    fn default_layout(&self, profile: &str) -> Result<String, BackendError> {
        let text = match (profile, self.device_type) {
            (PROFILE_MODERN, DEVICE_TYPE_NET) => layouts::NET_MODERN,
            (PROFILE_MODERN, DEVICE_TYPE_BLK) => layouts::BLK_MODERN,
            (PROFILE_TRANSITIONAL, DEVICE_TYPE_NET) => layouts::NET_TRANSITIONAL,
            (PROFILE_TRANSITIONAL, DEVICE_TYPE_BLK) => layouts::BLK_TRANSITIONAL,
            (PROFILE_MODERN | PROFILE_TRANSITIONAL, other) => {
                return Err(BackendError::Failed(format!(
                    "no layout for virtio device type {other}"
                )));
            }
            (other, _) => return Err(BackendError::UnknownProfile(other.into())),
        };
        Ok(text.to_string())
    }

    fn create(&self, request: &CreateRequest) -> Result<Box<dyn Function>, BackendError> {
        if request.profile != PROFILE_MODERN && request.profile != PROFILE_TRANSITIONAL {
            return Err(BackendError::UnknownProfile(request.profile.clone()));
        }
        if let Some((key, _)) = request.attributes.first() {
            return Err(BackendError::Refused(format!(
                "virtio-legacy has no attribute `{key}`"
            )));
        }
        if request.profile == PROFILE_TRANSITIONAL {
            self.check_legacy().map_err(BackendError::Refused)?;
        }
        let function = self
            .pool
            .claim(|index| self.provision(index, request))
            .ok_or_else(|| BackendError::NoInstances(request.profile.clone()))??;
        Ok(Box::new(function))
    }
}
