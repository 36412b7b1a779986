//! The plugin ABI: a vendor backend in a shared library, loaded by the host at run time.
//!
//! A plugin is a `cdylib` crate that implements [`Backend`](crate::backend::Backend) in plain
//! Rust and ends with one line:
//!
//! ```ignore
//! vfio_variant::export_backend!(MyBackend::new());
//! ```
//!
//! The macro exports one C symbol, [`ENTRY_SYMBOL`] (`vfio_variant_backend_entry`), an
//! `extern "C" fn() -> *const PluginDescriptor`. The [`PluginDescriptor`] carries a magic
//! number, the [`ABI_VERSION`], its own size, the [`FRAMEWORK_VERSION`] the plugin was built
//! against, and two vtables of `extern "C"` functions over opaque handles
//! ([`BackendVTable`], [`FunctionVTable`]). The host (`vfio-variant-backends`' plugin loader)
//! checks those facts before it calls anything and wraps the vtables back into the
//! [`Backend`](crate::backend::Backend) and [`Function`](crate::backend::Function) traits.
//!
//! Rules of the boundary (both sides follow them; see [`abi`] for each call):
//! - Only `#[repr(C)]` data, integers, raw pointers and `extern "C"` function pointers cross.
//!   Nothing with a Rust layout does, so host and plugin may be built by different compilers.
//! - Data travels as `(ptr, len)` byte buffers; strings as UTF-8 `(ptr, len)` ([`Str`]).
//! - Nothing allocated on one side is freed by the other. Variable-length results (names,
//!   profile JSON, layout text, error messages) are written through a [`Sink`], a callback into
//!   a buffer the *caller* owns.
//! - Every call returns a [`Status`]; a failure's message goes to the caller's error sink.
//! - Every exported wrapper runs under [`std::panic::catch_unwind`]: a panic becomes
//!   [`Status::PANICKED`] with the panic message and never unwinds across the boundary (the
//!   plugin must be built with `panic = "unwind"`, the default).
//! - Each side has its own copy of the framework's statics (a plugin's `tracing` events do not
//!   reach the host's subscriber, for example).

pub mod abi;
mod export;

pub use abi::{
    AbiError, Attribute, BackendHandle, BackendVTable, Collector, FunctionHandle, FunctionVTable,
    HostContext, PluginDescriptor, RawConfigEvent, RawCreateRequest, Sink, Status, Str,
};
pub use export::new_backend;

use std::ffi::CStr;

/// The number at the start of every [`PluginDescriptor`] (`"vfvarbe1"` in little-endian bytes).
pub const MAGIC: u64 = u64::from_le_bytes(*b"vfvarbe1");

/// The major version of the C ABI in this module: a host loads only plugins of its own major.
///
/// Compatibility policy: within one major, a framework release may only *append* to the
/// descriptor (new entries, new vtables after the last one); it never moves, removes or
/// changes the meaning of what is there. So a host reads a plugin's `descriptor_size` as "at
/// least [`MIN_DESCRIPTOR_SIZE`]": from a newer plugin it uses the prefix it knows, and for an
/// older plugin it treats the entries past the plugin's size as absent (the trait's default
/// behaviour). Plugins built against any framework release of the same major load; the
/// major is raised for any other change (a signature, a status's meaning, a moved field).
pub const ABI_VERSION: u32 = 1;

/// The size of the first descriptor of ABI major [`ABI_VERSION`]: a plugin's descriptor is at
/// least this long. Frozen for the major; later releases append after it.
pub const MIN_DESCRIPTOR_SIZE: u32 = 216;

/// The version of the framework crate (`CARGO_PKG_VERSION`). A plugin's is informational
/// (reported by `vfio-variant plugin check`): the ABI major decides compatibility, and the data
/// behind the ABI (layout text, profile JSON) is versioned on its own (`format = 1`, serde
/// fields that only grow).
pub const FRAMEWORK_VERSION: &str = env!("CARGO_PKG_VERSION");

/// [`FRAMEWORK_VERSION`] as the NUL-terminated string a descriptor points at.
pub(crate) const FRAMEWORK_VERSION_C: &CStr =
    match CStr::from_bytes_with_nul(concat!(env!("CARGO_PKG_VERSION"), "\0").as_bytes()) {
        Ok(version) => version,
        Err(_) => panic!("the package version contains a NUL byte"),
    };

/// The symbol a plugin exports: `extern "C" fn() -> *const PluginDescriptor`.
pub const ENTRY_SYMBOL: &CStr = c"vfio_variant_backend_entry";

/// The type of the [`ENTRY_SYMBOL`] function.
pub type EntryFn = unsafe extern "C" fn() -> *const PluginDescriptor;

/// Exports a [`Backend`](crate::backend::Backend) from a `cdylib` crate as a vfio-variant plugin.
///
/// `$constructor` is an expression of a type that implements `Backend + 'static`; it is
/// evaluated when the host creates the backend (once per load), under `catch_unwind`. The macro
/// expands to the [`ENTRY_SYMBOL`] function returning a static [`PluginDescriptor`]; use it once
/// per library.
///
/// ```ignore
/// vfio_variant::export_backend!(Scratchpad::new(2));
/// ```
#[macro_export]
macro_rules! export_backend {
    ($constructor:expr $(,)?) => {
        /// The vfio-variant plugin entry point: returns this library's backend descriptor.
        #[unsafe(no_mangle)]
        pub extern "C" fn vfio_variant_backend_entry() -> *const $crate::plugin::PluginDescriptor {
            unsafe extern "C" fn __vfio_variant_new_backend(
                out: *mut *mut $crate::plugin::BackendHandle,
                error: *const $crate::plugin::Sink<'_>,
            ) -> $crate::plugin::Status {
                // SAFETY: this function is the descriptor's `new` entry; the host calls it with the
                // pointers that entry's contract describes, which is what `new_backend` requires.
                unsafe { $crate::plugin::new_backend(out, error, || $constructor) }
            }
            static DESCRIPTOR: $crate::plugin::PluginDescriptor =
                $crate::plugin::PluginDescriptor::exported(__vfio_variant_new_backend);
            &DESCRIPTOR
        }
    };
}
