//! Test fixtures for the plugin loader: one tiny backend (profile `one`, one instance, a
//! function with no BAR) behind the descriptor each feature asks for:
//! `other-release` (accepted), `wrong-abi`, `wrong-magic`, `null-entry` (refused) and
//! `no-entry` (no entry symbol at all).
#![cfg_attr(feature = "no-entry", allow(dead_code))]

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use vfio_variant::backend::{
    Backend, BackendError, CreateRequest, Function, FunctionError, ProfileInfo,
};

/// The layout of the profile: identity only.
const LAYOUT: &str = "[vpci]\nformat = 1\nname = \"one\"\n[identity]\nvendor_id = 0x1b36\ndevice_id = 0x10f3\nclass_code = 0xff0000\n";

/// One profile with one instance.
struct Tiny(Arc<AtomicU32>);

impl Backend for Tiny {
    fn name(&self) -> &str {
        "plugin-variant"
    }

    fn description(&self) -> &str {
        "the plugin loader's fixture"
    }

    fn profiles(&self) -> Vec<ProfileInfo> {
        vec![ProfileInfo {
            name: "one".into(),
            description: String::new(),
            available_instances: self.0.load(Ordering::SeqCst),
            migratable: false,
        }]
    }

    fn default_layout(&self, profile: &str) -> Result<String, BackendError> {
        match profile {
            "one" => Ok(LAYOUT.into()),
            other => Err(BackendError::UnknownProfile(other.into())),
        }
    }

    fn create(&self, request: &CreateRequest) -> Result<Box<dyn Function>, BackendError> {
        self.default_layout(&request.profile)?;
        self.0
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .map_err(|_| BackendError::NoInstances(request.profile.clone()))?;
        Ok(Box::new(Instance(Arc::clone(&self.0))))
    }
}

/// A function: gives its instance back when dropped.
struct Instance(Arc<AtomicU32>);

impl Drop for Instance {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

impl Function for Instance {
    fn reset(&self) -> Result<(), FunctionError> {
        Ok(())
    }
}

#[cfg(not(feature = "no-entry"))]
mod descriptor {
    use std::sync::Arc;
    use std::sync::atomic::AtomicU32;

    use vfio_variant::plugin::{BackendHandle, PluginDescriptor, Sink, Status, new_backend};

    unsafe extern "C" fn new(out: *mut *mut BackendHandle, error: *const Sink<'_>) -> Status {
        // SAFETY: this is the descriptor's `new` entry; the host calls it as the ABI describes,
        // which is what `new_backend` requires.
        unsafe { new_backend(out, error, || super::Tiny(Arc::new(AtomicU32::new(1)))) }
    }

    /// A descriptor of a release that appended two entries after the major's fields.
    #[repr(C)]
    struct Grown {
        descriptor: PluginDescriptor,
        appended: [usize; 2],
    }

    static GROWN: Grown = Grown {
        descriptor: {
            #[allow(unused_mut)]
            let mut descriptor = PluginDescriptor::exported(new);
            #[cfg(feature = "other-release")]
            {
                descriptor.framework_version = c"0.0.9".as_ptr();
                descriptor.descriptor_size = size_of::<Grown>() as u32;
            }
            #[cfg(feature = "wrong-abi")]
            {
                descriptor.abi_version = vfio_variant::plugin::ABI_VERSION + 1;
            }
            #[cfg(feature = "wrong-magic")]
            {
                descriptor.magic = u64::from_le_bytes(*b"notvfio!");
            }
            #[cfg(feature = "null-entry")]
            {
                descriptor.function.reset = None;
            }
            descriptor
        },
        appended: [0; 2],
    };

    /// The entry point, returning the variant's descriptor.
    #[unsafe(no_mangle)]
    pub extern "C" fn vfio_variant_backend_entry() -> *const PluginDescriptor {
        &GROWN.descriptor
    }
}

/// The `no-entry` variant exports only this: a shared library, but not a backend.
#[cfg(feature = "no-entry")]
#[unsafe(no_mangle)]
pub extern "C" fn plugin_variant_not_a_backend() -> u32 {
    7
}
