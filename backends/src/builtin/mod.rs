//! Backends built into the `vfio-variant` command, registered statically through the same
//! trait as plugins.

pub mod sample;

use std::sync::Arc;

use crate::registry::{Registry, RegistryError};

/// Registers every built-in backend.
pub fn register_builtin(registry: &mut Registry) -> Result<(), RegistryError> {
    registry.register(Arc::new(sample::SampleBackend::new(1024)))?;
    // An emulated DSA PF: 8 WQs, 4 dedicated and 2 shared reserved for sub-devices.
    match vfio_variant_idxd::IdxdBackend::new(vfio_variant_idxd::IdxdConfig::default()) {
        Ok(idxd) => registry.register(Arc::new(idxd))?,
        Err(e) => tracing::warn!("idxd backend not registered: {e}"),
    }
    Ok(())
}
