//! Backends built into the `vfio-variant` command, registered statically through the same
//! trait as plugins.

pub mod sample;

use std::sync::Arc;

use crate::registry::{Registry, RegistryError};

/// Registers every built-in backend.
pub fn register_builtin(registry: &mut Registry) -> Result<(), RegistryError> {
    registry.register(Arc::new(sample::SampleBackend::new(1024)))
}
