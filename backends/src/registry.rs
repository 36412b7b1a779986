//! The registry of backends a running service offers: built-in ones, registered statically,
//! and plugins loaded from shared libraries, all through the same [`Backend`] trait.

use std::sync::Arc;

use vfio_variant::backend::Backend;

/// A backend could not be registered.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// Another backend already has this name.
    #[error("a backend named `{0}` is already registered")]
    Duplicate(String),
}

/// The backends of one service, by name.
#[derive(Default)]
pub struct Registry {
    backends: Vec<Arc<dyn Backend>>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a backend; names are unique.
    pub fn register(&mut self, backend: Arc<dyn Backend>) -> Result<(), RegistryError> {
        if self.get(backend.name()).is_some() {
            return Err(RegistryError::Duplicate(backend.name().to_string()));
        }
        self.backends.push(backend);
        Ok(())
    }

    /// The backend named `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<dyn Backend>> {
        self.backends.iter().find(|b| b.name() == name)
    }

    /// All backends, in registration order.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<dyn Backend>> {
        self.backends.iter()
    }
}
