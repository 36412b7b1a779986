//! The plugin loader: vendor backends in shared libraries, behind the same
//! [`Backend`](vfio_variant::backend::Backend) trait as the built-in ones.
//!
//! [`load_plugin`] opens a library, finds its entry symbol ([`ENTRY_SYMBOL`]), checks the
//! descriptor it returns (magic number, ABI major, a descriptor of at least the major's size,
//! no null entries) before calling anything else, and wraps it in a [`PluginBackend`];
//! [`register_plugin`] also adds it to a [`Registry`]. The library stays loaded as long as the
//! backend or any function it created exists. See [`vfio_variant::plugin`] for the ABI.
//!
//! Trust: loading a library runs its initialisers and its code runs in this process, so only
//! load plugins you would link. What the loader protects against is a *mismatched* or broken
//! plugin: wrong library, wrong version, errors and panics inside calls, malformed results.

mod adapter;
mod host;
pub mod sources;

pub use adapter::PluginBackend;

use std::ffi::CStr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use libloading::Library;
use vfio_variant::backend::BackendError;
use vfio_variant::plugin::abi::{BackendFns, FunctionFns};
use vfio_variant::plugin::{
    ABI_VERSION, ENTRY_SYMBOL, EntryFn, MAGIC, MIN_DESCRIPTOR_SIZE, PluginDescriptor,
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
    /// The framework version the plugin was built with (informational).
    framework_version: String,
    /// Its descriptor's size (larger than the host's: a newer release of the same major).
    descriptor_size: u32,
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
    let checked = unsafe { check_descriptor(path, descriptor) }?;
    let library = Arc::new(PluginLibrary {
        path: path.to_owned(),
        framework_version: checked.framework_version,
        descriptor_size: checked.size,
        backend: checked.backend,
        function: checked.function,
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

/// What a checked descriptor gives the host.
struct Checked {
    backend: BackendFns,
    function: FunctionFns,
    framework_version: String,
    size: u32,
}

/// Checks what an entry point returned, field by field, before trusting it as a descriptor.
///
/// # Safety
///
/// `descriptor` was returned by the entry point of a library that is still loaded.
unsafe fn check_descriptor(
    path: &Path,
    descriptor: *const PluginDescriptor,
) -> Result<Checked, PluginError> {
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
    if size < MIN_DESCRIPTOR_SIZE {
        return Err(invalid(&format!(
            "its descriptor is {size} bytes long, ABI version {ABI_VERSION} has at least {MIN_DESCRIPTOR_SIZE}"
        )));
    }
    // SAFETY: magic and major say this is a descriptor of our ABI, `size` bytes long in the
    // library's static data (at least the major's first descriptor).
    let descriptor = unsafe { read_prefix(descriptor, size as usize) };
    if descriptor.framework_version.is_null() {
        return Err(invalid("its descriptor has no framework version"));
    }
    // SAFETY: non-null; the ABI makes it a NUL-terminated string in the library's static data.
    let framework_version = unsafe { CStr::from_ptr(descriptor.framework_version) }
        .to_str()
        .map_err(|_| invalid("its framework version is not UTF-8"))?
        .to_string();
    let null = |table| {
        move |entry| PluginError::NullEntry {
            path: path.to_owned(),
            table,
            entry,
        }
    };
    let backend = descriptor.backend.check().map_err(null("backend"))?;
    let function = descriptor.function.check().map_err(null("function"))?;
    Ok(Checked {
        backend,
        function,
        framework_version,
        size,
    })
}

/// The host's view of a descriptor the plugin says is `size` bytes long: the bytes the host
/// knows are copied, and what the plugin's (older) descriptor lacks reads as zero (null
/// entries: absent).
///
/// # Safety
///
/// `descriptor` is aligned and valid for reads of `size` bytes, and `T` is plain data for
/// which all-zero bytes are a valid value (integers, nullable pointers, optional `extern "C"`
/// functions).
unsafe fn read_prefix<T: Copy>(descriptor: *const T, size: usize) -> T {
    let mut host = std::mem::MaybeUninit::<T>::zeroed();
    let known = size.min(size_of::<T>());
    // SAFETY: the caller makes `descriptor` valid for `size >= known` bytes; `host` has room
    // for `size_of::<T>() >= known` bytes and does not overlap the library's static data.
    unsafe {
        std::ptr::copy_nonoverlapping(
            descriptor.cast::<u8>(),
            host.as_mut_ptr().cast::<u8>(),
            known,
        )
    };
    // SAFETY: the first `known` bytes come from a valid `T` prefix written by the plugin, the
    // rest are zero, which the caller says is valid for every field of `T`.
    unsafe { host.assume_init() }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A descriptor of an imaginary later minor release: the major's fields, then one appended
    /// entry.
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Grown {
        first: u64,
        appended: Option<unsafe extern "C" fn() -> u32>,
    }

    unsafe extern "C" fn seven() -> u32 {
        7
    }

    #[test]
    fn an_older_descriptor_reads_what_it_lacks_as_absent() {
        // An older plugin: only `first` (8 bytes); the host of the later release sees its
        // appended entry as absent.
        let older = Grown {
            first: 42,
            appended: Some(seven),
        };
        // SAFETY: `older` is valid for 8 bytes; `Grown` is plain data valid as zeros.
        let seen = unsafe { read_prefix(&older, 8) };
        assert_eq!(seen.first, 42);
        assert!(seen.appended.is_none(), "past the plugin's size: absent");
        // SAFETY: as above, for the whole struct.
        let seen = unsafe { read_prefix(&older, size_of::<Grown>()) };
        // SAFETY: `seven` takes nothing and returns a number.
        assert_eq!(seen.appended.map(|f| unsafe { f() }), Some(7));
    }

    /// A descriptor of the previous minor framework release: the same major, another framework
    /// version, the major's first size.
    fn previous_release() -> PluginDescriptor {
        unsafe extern "C" fn new(
            _: *mut *mut vfio_variant::plugin::BackendHandle,
            _: *const vfio_variant::plugin::Sink<'_>,
        ) -> vfio_variant::plugin::Status {
            vfio_variant::plugin::Status::FAILED
        }
        let mut descriptor = PluginDescriptor::exported(new);
        descriptor.framework_version = c"0.0.9".as_ptr();
        descriptor.descriptor_size = MIN_DESCRIPTOR_SIZE;
        descriptor
    }

    #[test]
    fn a_plugin_of_the_previous_release_of_the_same_major_is_accepted() {
        let descriptor = previous_release();
        // SAFETY: a valid descriptor in this process's memory, alive for the call.
        let checked = unsafe { check_descriptor(Path::new("previous.so"), &descriptor) }
            .map_err(|e| e.to_string())
            .unwrap();
        assert_eq!(
            (checked.framework_version.as_str(), checked.size),
            ("0.0.9", MIN_DESCRIPTOR_SIZE)
        );
    }

    #[test]
    fn a_shorter_descriptor_or_another_major_is_refused() {
        let mut descriptor = previous_release();
        descriptor.descriptor_size = MIN_DESCRIPTOR_SIZE - 8;
        // SAFETY: as above.
        let error = unsafe { check_descriptor(Path::new("short.so"), &descriptor) }
            .err()
            .unwrap();
        assert!(error.to_string().contains("has at least"), "{error}");
        let mut descriptor = previous_release();
        descriptor.abi_version = ABI_VERSION + 1;
        // SAFETY: as above.
        let error = unsafe { check_descriptor(Path::new("next.so"), &descriptor) }
            .err()
            .unwrap();
        assert!(matches!(error, PluginError::AbiVersion { .. }), "{error}");
    }
}
