//! `MlxBackend`: the VFs of one mlx-style PF, offered as `default` (every feature, not
//! migratable) or `migratable` (made migratable on the PF before the VF is exposed, giving up
//! the features that cannot migrate). Both are exposed with the operator's instance type
//! (catalog/mlx-vf.toml): the config space comes from the layout, never from the hardware,
//! so VFs of either hardware generation look the same to the guest.
//!
//! - [`cmd`]: the driver side of the PF's command queue;
//! - [`commands`]: the firmware commands, typed;
//! - [`function`]: a provisioned function;
//! - [`migration`]: the migration hooks (suspend/resume, save/load in chunks, pre-copy);
//! - [`records`]: the device-data records (FW_DATA, STOP_COPY_SIZE);
//! - [`dirty`]: dirty tracking through the firmware's page tracker.

pub mod cmd;
pub mod commands;
pub mod dirty;
pub mod function;
pub mod migration;
pub mod records;

use std::sync::Arc;

use vfio_variant::backend::pool::SlotPool;
use vfio_variant::backend::{Backend, BackendError, CreateRequest, Function, ProfileInfo};
use vfio_variant::physical::PhysicalFunction;

use crate::hw::firmware::FirmwareCaps;
use crate::hw::pci::Generation;
use crate::hw::pf::MlxPf;
use crate::hw::vf::MlxVf;
use vfio_variant::backend::emulated::HostMemory;

use cmd::{CommandQueue, HOST_MEMORY_SIZE};
use commands::MigrationCaps;
use function::MlxFunction;
use migration::VfMigration;

/// Profile name: the VF with every feature, not migratable.
pub const PROFILE_DEFAULT: &str = "default";
/// Profile name: a migratable VF.
pub const PROFILE_MIGRATABLE: &str = "migratable";
/// The instance type both profiles are exposed with by default (catalog/mlx-vf.toml).
pub const LAYOUT: &str = include_str!("../../../catalog/mlx-vf.toml");

/// One VF the backend can provision.
pub struct Vf {
    /// VF number (1-based), its function id in firmware commands.
    pub number: u16,
    /// The VF.
    pub function: Arc<dyn PhysicalFunction>,
    /// For an emulated VF, the model whose DMA is bound to guest memory on attach.
    pub emulated: Option<Arc<MlxVf>>,
}

/// The VFs of one mlx-style PF.
pub struct MlxBackend {
    queue: Arc<CommandQueue>,
    caps: MigrationCaps,
    vfs: Vec<Vf>,
    pool: SlotPool,
}

impl MlxBackend {
    /// A backend for `vfs` of the PF whose command queue is `queue`; asks the firmware for its
    /// migration capabilities once, as a driver does when it starts.
    pub fn new(queue: Arc<CommandQueue>, vfs: Vec<Vf>) -> Result<Self, BackendError> {
        let caps = commands::migration_caps(&queue)
            .map_err(|e| BackendError::Failed(format!("querying the PF's capabilities: {e}")))?;
        Ok(Self {
            queue,
            caps,
            pool: SlotPool::new(vfs.len()),
            vfs,
        })
    }

    /// A backend over an emulated `generation` PF named `name` with `num_vfs` VFs whose
    /// firmware offers `caps`; returns the PF too (for its VFs, as a test's hardware).
    pub fn emulated(
        name: &str,
        generation: Generation,
        num_vfs: u16,
        caps: FirmwareCaps,
    ) -> Result<(Self, Arc<MlxPf>), BackendError> {
        let memory = Arc::new(HostMemory::new(HOST_MEMORY_SIZE));
        let pf = Arc::new(MlxPf::new(name, generation, num_vfs, caps, memory.clone()));
        let queue = CommandQueue::new(pf.clone(), memory)
            .map_err(|e| BackendError::Failed(format!("setting up the command queue: {e}")))?;
        let vfs = pf
            .vfs()
            .iter()
            .map(|vf| Vf {
                number: vf.number(),
                function: vf.clone(),
                emulated: Some(vf.clone()),
            })
            .collect();
        Ok((Self::new(Arc::new(queue), vfs)?, pf))
    }

    /// The PF's migration capabilities.
    pub fn caps(&self) -> MigrationCaps {
        self.caps
    }

    fn provision(
        &self,
        index: usize,
        request: &CreateRequest,
    ) -> Result<MlxFunction, BackendError> {
        let vf = &self.vfs[index];
        let migratable = request.profile == PROFILE_MIGRATABLE;
        // A reset VF is not in use: the firmware takes the capability only then.
        vf.function.reset()?;
        commands::set_migratable(&self.queue, vf.number, migratable).map_err(|e| {
            BackendError::Refused(format!(
                "the PF refused to set VF {} {}migratable: {e}",
                vf.number,
                if migratable { "" } else { "non-" }
            ))
        })?;
        let caps = commands::vf_caps(&self.queue, vf.number)
            .map_err(|e| BackendError::Failed(format!("querying VF {}: {e}", vf.number)))?;
        if caps.migratable != migratable {
            return Err(BackendError::Failed(format!(
                "VF {} reports migratable = {}",
                vf.number, caps.migratable
            )));
        }
        Ok(MlxFunction::new(
            Arc::clone(&vf.function),
            vf.emulated.clone(),
            migratable.then(|| VfMigration::new(Arc::clone(&self.queue), caps.vhca_id, self.caps)),
            self.pool.releaser(index),
        ))
    }
}

impl Backend for MlxBackend {
    fn name(&self) -> &str {
        "mlx"
    }

    fn description(&self) -> &str {
        "mlx-style VFs with an instance-type config space, migratable through firmware commands"
    }

    fn profiles(&self) -> Vec<ProfileInfo> {
        let free = self.pool.free();
        vec![
            ProfileInfo {
                name: PROFILE_MIGRATABLE.into(),
                description: "migratable: made migratable on the PF before exposure; features \
                              that cannot migrate are off"
                    .into(),
                available_instances: if self.caps.migration { free } else { 0 },
                migratable: true,
            },
            ProfileInfo {
                name: PROFILE_DEFAULT.into(),
                description: "every feature of the VF; not migratable".into(),
                available_instances: free,
                migratable: false,
            },
        ]
    }

    fn default_layout(&self, profile: &str) -> Result<String, BackendError> {
        match profile {
            PROFILE_DEFAULT | PROFILE_MIGRATABLE => Ok(LAYOUT.to_string()),
            other => Err(BackendError::UnknownProfile(other.into())),
        }
    }

    fn create(&self, request: &CreateRequest) -> Result<Box<dyn Function>, BackendError> {
        if request.profile != PROFILE_DEFAULT && request.profile != PROFILE_MIGRATABLE {
            return Err(BackendError::UnknownProfile(request.profile.clone()));
        }
        if let Some((key, _)) = request.attributes.first() {
            return Err(BackendError::Refused(format!(
                "mlx has no attribute `{key}`"
            )));
        }
        if request.profile == PROFILE_MIGRATABLE && !self.caps.migration {
            return Err(BackendError::Refused(
                "the PF's firmware does not migrate VFs".into(),
            ));
        }
        let function = self
            .pool
            .claim(|index| self.provision(index, request))
            .ok_or_else(|| BackendError::NoInstances(request.profile.clone()))??;
        Ok(Box::new(function))
    }
}
