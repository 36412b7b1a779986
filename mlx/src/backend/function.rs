//! A provisioned mlx function: the VF behind the instance-type layout. Its BAR 0 is passed
//! through and its config space is the layout's, so the function itself serves only reset,
//! guest memory for the emulated VF's DMA, and migration when its profile is `migratable`.

use std::sync::Arc;

use vfio_variant::backend::{Function, FunctionContext, FunctionError};
use vfio_variant::migration::MigrationHooks;
use vfio_variant::physical::PhysicalFunction;

use crate::hw::vf::MlxVf;

use super::migration::VfMigration;

/// One provisioned function.
pub struct MlxFunction {
    vf: Arc<dyn PhysicalFunction>,
    emulated: Option<Arc<MlxVf>>,
    migration: Option<VfMigration>,
    release: Box<dyn Fn() + Send + Sync>,
}

impl MlxFunction {
    /// The function of `vf` (with `emulated`, the model whose DMA is bound on attach),
    /// migrating through `migration`; `release` returns the VF to the backend on drop.
    pub fn new(
        vf: Arc<dyn PhysicalFunction>,
        emulated: Option<Arc<MlxVf>>,
        migration: Option<VfMigration>,
        release: Box<dyn Fn() + Send + Sync>,
    ) -> Self {
        Self {
            vf,
            emulated,
            migration,
            release,
        }
    }
}

impl Function for MlxFunction {
    fn attach(&self, context: FunctionContext) {
        if let Some(vf) = &self.emulated {
            vf.bind_dma(Some(context.dma));
        }
    }

    fn bar_read(&self, bar: u8, _: u64, _: &mut [u8]) -> Result<(), FunctionError> {
        Err(FunctionError::Unsupported(format!(
            "BAR {bar} is passed through, not emulated"
        )))
    }

    fn bar_write(&self, bar: u8, _: u64, _: &[u8]) -> Result<(), FunctionError> {
        Err(FunctionError::Unsupported(format!(
            "BAR {bar} is passed through, not emulated"
        )))
    }

    fn physical(&self) -> Option<&dyn PhysicalFunction> {
        Some(&*self.vf)
    }

    fn reset(&self) -> Result<(), FunctionError> {
        if let Some(migration) = &self.migration {
            migration.reset();
        }
        self.vf.reset()?;
        Ok(())
    }

    fn migration(&self) -> Option<&dyn MigrationHooks> {
        self.migration.as_ref().map(|m| m as &dyn MigrationHooks)
    }
}

impl Drop for MlxFunction {
    fn drop(&mut self) {
        if let Some(migration) = &self.migration {
            migration.reset();
        }
        if let Err(e) = self.vf.reset() {
            tracing::warn!("resetting {} on destroy: {e}", self.vf.name());
        }
        if let Some(vf) = &self.emulated {
            vf.bind_dma(None);
        }
        (self.release)();
    }
}
