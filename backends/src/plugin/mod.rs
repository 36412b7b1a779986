//! The plugin loader: vendor backends in shared libraries, behind the same
//! [`Backend`](vfio_variant::backend::Backend) trait as the built-in ones.
//!
//! [`load_plugin`] opens a library, finds its entry symbol ([`ENTRY_SYMBOL`]), checks the
//! descriptor it returns (magic number, ABI version, descriptor size, framework version, no null
//! entries) before calling anything else, and wraps it in a [`PluginBackend`];
//! [`register_plugin`] also adds it to a [`Registry`]. The library stays loaded as long as the
//! backend or any function it created exists. See [`vfio_variant::plugin`] for the ABI.
//!
//! Trust: loading a library runs its initialisers and its code runs in this process, so only
//! load plugins you would link. What the loader protects against is a *mismatched* or broken
//! plugin: wrong library, wrong version, errors and panics inside calls, malformed results.

mod adapter;
mod host;

pub use adapter::PluginBackend;

use std::ffi::CStr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use libloading::Library;
use vfio_variant::backend::BackendError;
use vfio_variant::plugin::abi::{BackendFns, FunctionFns};
use vfio_variant::plugin::{
    ABI_VERSION, ENTRY_SYMBOL, EntryFn, FRAMEWORK_VERSION, MAGIC, PluginDescriptor,
};

use crate::registry::{Registry, RegistryError};

/// Why a plugin was not loaded.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// The file could not be opened as a shared library.
    #[error("cannot load `{}` as a shared library: {source}", path.display())]
    Open {
        /// The library.
        path: PathBuf,
        /// What the dynamic loader said.
        source: libloading::Error,
    },
    /// The library does not export the entry symbol.
    #[error("`{}` is not a vfio-variant backend: it does not export `{symbol}`", path.display())]
    NotABackend {
        /// The library.
        path: PathBuf,
        /// The symbol looked for.
        symbol: &'static str,
    },
    /// The descriptor does not start with the magic number.
    #[error(
        "`{}` is not a vfio-variant backend: its descriptor has magic {found:#018x}, expected {expected:#018x}",
        path.display()
    )]
    BadMagic {
        /// The library.
        path: PathBuf,
        /// The plugin's magic number.
        found: u64,
        /// [`MAGIC`].
        expected: u64,
    },
    /// The plugin was built for another version of the plugin ABI.
    #[error(
        "`{}` speaks plugin ABI version {plugin}, this host speaks version {host}",
        path.display()
    )]
    AbiVersion {
        /// The library.
        path: PathBuf,
        /// The plugin's ABI version.
        plugin: u32,
        /// The host's ([`ABI_VERSION`]).
        host: u32,
    },
    /// The plugin was built against another version of the framework.
    #[error(
        "`{}` was built with vfio-variant {plugin}, this host is vfio-variant {host}",
        path.display()
    )]
    FrameworkVersion {
        /// The library.
        path: PathBuf,
        /// The plugin's framework version.
        plugin: String,
        /// The host's ([`FRAMEWORK_VERSION`]).
        host: &'static str,
    },
    /// An entry of the descriptor's vtables is null.
    #[error(
        "`{}` has no `{table}.{entry}` function (a null pointer in its descriptor)",
        path.display()
    )]
    NullEntry {
        /// The library.
        path: PathBuf,
        /// `backend` or `function`.
        table: &'static str,
        /// The entry.
        entry: &'static str,
    },
    /// The descriptor, or what the plugin returned while being set up, breaks the ABI.
    #[error("`{}` is a broken vfio-variant backend: {reason}", path.display())]
    Invalid {
        /// The library.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The plugin's backend could not be created.
    #[error("the backend of `{}` failed to start: {source}", path.display())]
    Backend {
        /// The library.
        path: PathBuf,
        /// What it said.
        source: BackendError,
    },
    /// The backend loaded but could not be registered.
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

/// A loaded plugin library and its checked vtables. Functions and backends hold it in an
/// [`Arc`], so the code they call stays mapped as long as they exist.
struct PluginLibrary {
    path: PathBuf,
    backend: BackendFns,
    function: FunctionFns,
    /// Never used after loading; kept so the library is unloaded only when the last holder goes.
    _library: Library,
}

/// Loads a backend plugin: opens the library, checks its descriptor and creates its backend.
///
/// Nothing is registered anywhere; see [`register_plugin`].
pub fn load_plugin(path: impl AsRef<Path>) -> Result<Arc<PluginBackend>, PluginError> {
    let path = path.as_ref();
    // SAFETY: opening a library runs its initialisers, which no check can vet beforehand: the
    // operator vouches for the file by naming it as a plugin (see the module's trust note).
    let library = unsafe { Library::new(path) }.map_err(|source| PluginError::Open {
        path: path.to_owned(),
        source,
    })?;
    // SAFETY: `EntryFn` is the type the ABI fixes for this symbol name; a library that exports
    // the name with another meaning breaks the ABI (the magic number check below is the guard
    // against accidents). The pointer is copied out and used only while `library` is loaded.
    let entry = unsafe { library.get::<EntryFn>(ENTRY_SYMBOL) }
        .map(|symbol| *symbol)
        .map_err(|_| PluginError::NotABackend {
            path: path.to_owned(),
            symbol: symbol_name(),
        })?;
    // SAFETY: the entry point takes no arguments and returns a pointer to the library's static
    // descriptor; the library is loaded.
    let descriptor = unsafe { entry() };
    // SAFETY: the pointer was returned by the entry point of `library`, which is still loaded.
    let (backend, function) = unsafe { check_descriptor(path, descriptor) }?;
    let library = Arc::new(PluginLibrary {
        path: path.to_owned(),
        backend,
        function,
        _library: library,
    });
    PluginBackend::start(library).map(Arc::new)
}

/// Loads a backend plugin and registers its backend in `registry`; on any error, nothing is
/// registered (and the library is unloaded again).
pub fn register_plugin(
    registry: &mut Registry,
    path: impl AsRef<Path>,
) -> Result<Arc<PluginBackend>, PluginError> {
    let backend = load_plugin(path)?;
    registry.register(backend.clone())?;
    Ok(backend)
}

fn symbol_name() -> &'static str {
    // The constant is ASCII; the fallback is never taken.
    ENTRY_SYMBOL
        .to_str()
        .unwrap_or("vfio_variant_backend_entry")
}

/// Checks what an entry point returned, field by field, before trusting it as a descriptor.
///
/// # Safety
///
/// `descriptor` was returned by the entry point of a library that is still loaded.
unsafe fn check_descriptor(
    path: &Path,
    descriptor: *const PluginDescriptor,
) -> Result<(BackendFns, FunctionFns), PluginError> {
    let invalid = |reason: &str| PluginError::Invalid {
        path: path.to_owned(),
        reason: reason.to_string(),
    };
    if descriptor.is_null() || !descriptor.is_aligned() {
        return Err(invalid(
            "its entry point returned a null or misaligned descriptor",
        ));
    }
    // SAFETY: non-null and aligned, and the entry point of a loaded library returned it. Every
    // ABI version starts the descriptor with `magic`, so reading it is sound whatever the version.
    let magic = unsafe { (&raw const (*descriptor).magic).read() };
    if magic != MAGIC {
        return Err(PluginError::BadMagic {
            path: path.to_owned(),
            found: magic,
            expected: MAGIC,
        });
    }
    // SAFETY: with the magic number in place, `abi_version` and `descriptor_size` follow it in
    // every ABI version.
    let (abi_version, size) = unsafe {
        (
            (&raw const (*descriptor).abi_version).read(),
            (&raw const (*descriptor).descriptor_size).read(),
        )
    };
    if abi_version != ABI_VERSION {
        return Err(PluginError::AbiVersion {
            path: path.to_owned(),
            plugin: abi_version,
            host: ABI_VERSION,
        });
    }
    if usize::try_from(size).ok() != Some(size_of::<PluginDescriptor>()) {
        return Err(invalid(&format!(
            "its descriptor is {size} bytes long, ABI version {ABI_VERSION} has {}",
            size_of::<PluginDescriptor>()
        )));
    }
    // SAFETY: magic, version and size say this is a descriptor of our ABI, in the library's
    // static data; every field is plain data (integers, nullable pointers) valid for any bits.
    let descriptor = unsafe { &*descriptor };
    if descriptor.framework_version.is_null() {
        return Err(invalid("its descriptor has no framework version"));
    }
    // SAFETY: non-null; the ABI makes it a NUL-terminated string in the library's static data.
    let version = unsafe { CStr::from_ptr(descriptor.framework_version) }
        .to_str()
        .map_err(|_| invalid("its framework version is not UTF-8"))?;
    if version != FRAMEWORK_VERSION {
        return Err(PluginError::FrameworkVersion {
            path: path.to_owned(),
            plugin: version.to_string(),
            host: FRAMEWORK_VERSION,
        });
    }
    let null = |table| {
        move |entry| PluginError::NullEntry {
            path: path.to_owned(),
            table,
            entry,
        }
    };
    let backend = descriptor.backend.check().map_err(null("backend"))?;
    let function = descriptor.function.check().map_err(null("function"))?;
    Ok((backend, function))
}
