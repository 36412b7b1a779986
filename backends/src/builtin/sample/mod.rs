//! The sample backend: an emulated function with a register BAR, a DMA engine that copies
//! between two guest addresses and raises an interrupt, MSI-X and INTx. It is the server's own
//! test device (so the server is tested before any vendor backend) and a small example of the
//! backend traits.

mod function;
mod migration;
pub mod registers;

pub use function::SampleFunction;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use vfio_variant::backend::{Backend, BackendError, CreateRequest, Function, ProfileInfo};

/// The layout the sample function is exposed with by default.
pub const LAYOUT: &str = include_str!("layout.toml");

/// The sample backend, with a fixed number of instances.
pub struct SampleBackend {
    capacity: u32,
    in_use: Arc<AtomicU32>,
}

impl SampleBackend {
    /// A backend that can create `capacity` functions at once.
    pub fn new(capacity: u32) -> Self {
        Self {
            capacity,
            in_use: Arc::new(AtomicU32::new(0)),
        }
    }
}

impl Backend for SampleBackend {
    fn name(&self) -> &str {
        "sample"
    }

    fn description(&self) -> &str {
        "emulated sample function: registers, DMA engine, MSI-X, INTx"
    }

    fn profiles(&self) -> Vec<ProfileInfo> {
        vec![ProfileInfo {
            name: "default".into(),
            description: "the sample function".into(),
            available_instances: self
                .capacity
                .saturating_sub(self.in_use.load(Ordering::SeqCst)),
            migratable: true,
        }]
    }

    fn default_layout(&self, profile: &str) -> Result<String, BackendError> {
        match profile {
            "default" => Ok(LAYOUT.to_string()),
            other => Err(BackendError::UnknownProfile(other.to_string())),
        }
    }

    fn create(&self, request: &CreateRequest) -> Result<Box<dyn Function>, BackendError> {
        if request.profile != "default" {
            return Err(BackendError::UnknownProfile(request.profile.clone()));
        }
        if let Some((key, _)) = request.attributes.first() {
            return Err(BackendError::Refused(format!(
                "the sample function has no attribute `{key}`"
            )));
        }
        let capacity = self.capacity;
        self.in_use
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |used| {
                (used < capacity).then_some(used + 1)
            })
            .map_err(|_| BackendError::NoInstances(request.profile.clone()))?;
        match SampleFunction::new(Arc::clone(&self.in_use)) {
            Ok(function) => Ok(Box::new(function)),
            Err(e) => {
                self.in_use.fetch_sub(1, Ordering::SeqCst);
                Err(BackendError::Failed(format!(
                    "shared memory for the sample function: {e}"
                )))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use vfio_variant::testing::{Options, assert_conformance_with};
    use vfio_variant::vpci::parse_layout;

    fn request(profile: &str) -> CreateRequest {
        CreateRequest {
            profile: profile.into(),
            instance: "s0".into(),
            layout: Arc::new(parse_layout("sample", LAYOUT).unwrap()),
            attributes: Vec::new(),
        }
    }

    #[test]
    fn the_sample_backend_conforms() {
        // NVRAM survives resets by design.
        let options = Options::default().survives_reset(0, registers::NVRAM..registers::NVRAM + 4);
        assert_conformance_with(&SampleBackend::new(2), &options);
    }

    #[test]
    fn instances_are_counted_and_returned_on_drop() {
        let backend = SampleBackend::new(2);
        let a = backend.create(&request("default")).unwrap();
        let _b = backend.create(&request("default")).unwrap();
        assert_eq!(backend.profiles()[0].available_instances, 0);
        assert!(matches!(
            backend.create(&request("default")),
            Err(BackendError::NoInstances(_))
        ));
        drop(a);
        assert_eq!(backend.profiles()[0].available_instances, 1);
        assert!(matches!(
            backend.create(&request("fast")),
            Err(BackendError::UnknownProfile(_))
        ));
    }
}
