//! The host-side adapter: a plugin's vtables behind the [`Backend`], [`Function`] and
//! [`MigrationHooks`] traits. Everything the plugin returns is checked (status, UTF-8, JSON,
//! lengths); a failing or panicking plugin call becomes an error, never a host crash.

use std::path::Path;
use std::ptr;
use std::sync::Arc;

use vfio_variant::backend::{
    Backend, BackendError, CreateRequest, Function, FunctionContext, FunctionError, ProfileInfo,
};
use vfio_variant::config::ConfigEvent;
use vfio_variant::migration::{MigrationError, MigrationFlags, MigrationHooks, PrecopyInfo};
use vfio_variant::plugin::abi::AbiValue;
use vfio_variant::plugin::{
    AbiError, Attribute, BackendHandle, Collector, FunctionHandle, HostContext, RawConfigEvent,
    RawCreateRequest, Sink, Status, Str,
};

use super::{PluginError, PluginLibrary, host};

/// Calls one entry with a fresh error sink and turns its status into a result.
fn call(entry: impl FnOnce(*const Sink<'_>) -> Status) -> Result<(), AbiError> {
    let mut message = Collector::message();
    let status = entry(&message.sink());
    AbiError::check(status, message)
}

/// Calls one entry that writes text to an output sink; returns the text, checked to be UTF-8.
fn call_text(
    entry: impl FnOnce(*const Sink<'_>, *const Sink<'_>) -> Status,
) -> Result<String, AbiError> {
    let mut out = Collector::new(Collector::TEXT_LIMIT);
    call(|error| entry(&out.sink(), error))?;
    out.into_text()
}

/// A backend from a plugin library, implementing [`Backend`] through the plugin's vtables.
///
/// Its functions implement [`Function`] and, when the plugin says so, [`MigrationHooks`] the
/// same way. Errors keep their kind where the ABI has a status for it (unknown profile, no
/// instances, refused, unsupported, bad access, invalid migration data); anything else, a panic
/// included, becomes `BackendError::Failed` / `FunctionError::Device` /
/// `MigrationError::Device` with the plugin's message. Calls whose trait method cannot fail
/// (`profiles`, `attach`, `config_changed`, dropping) log a failure with `tracing` instead;
/// `profiles` then returns no profiles. Not carried by the ABI: `Function::physical` and
/// `MigrationHooks::dirty_tracker` are `None`.
pub struct PluginBackend {
    handle: *mut BackendHandle,
    name: String,
    description: String,
    library: Arc<PluginLibrary>,
}

// SAFETY: the handle stands for the plugin's `Box<dyn Backend>`, which is `Send + Sync`; the ABI
// allows concurrent calls on a backend handle except `destroy`, which only `Drop` (with `&mut`)
// makes.
unsafe impl Send for PluginBackend {}
// SAFETY: as above.
unsafe impl Sync for PluginBackend {}

impl PluginBackend {
    /// Creates the plugin's backend and reads its name and description.
    pub(super) fn start(library: Arc<PluginLibrary>) -> Result<Self, PluginError> {
        let failed = |source: AbiError| PluginError::Backend {
            path: library.path.clone(),
            source: source.into(),
        };
        let mut handle = ptr::null_mut();
        // SAFETY: `new` with an out-pointer valid for one write and an error sink for the call.
        call(|error| unsafe { (library.backend.new)(&mut handle, error) }).map_err(failed)?;
        if handle.is_null() {
            return Err(PluginError::Invalid {
                path: library.path.clone(),
                reason: "its `new` succeeded without a backend handle".into(),
            });
        }
        // From here on, dropping `backend` destroys the plugin's backend.
        let mut backend = Self {
            handle,
            name: String::new(),
            description: String::new(),
            library: library.clone(),
        };
        // SAFETY: a live handle and sinks valid for the call.
        backend.name =
            call_text(|out, error| unsafe { (library.backend.name)(handle, out, error) })
                .map_err(failed)?;
        // SAFETY: a live handle and sinks valid for the call.
        backend.description =
            call_text(|out, error| unsafe { (library.backend.description)(handle, out, error) })
                .map_err(failed)?;
        if backend.name.is_empty() || backend.name.contains(char::is_whitespace) {
            return Err(PluginError::Invalid {
                path: library.path.clone(),
                reason: format!(
                    "backend name `{}` is empty or has white space",
                    backend.name
                ),
            });
        }
        Ok(backend)
    }

    /// The library this backend was loaded from.
    pub fn path(&self) -> &Path {
        &self.library.path
    }

    /// The framework version the plugin was built with (any release of the host's ABI major).
    pub fn framework_version(&self) -> &str {
        &self.library.framework_version
    }

    /// The size of the plugin's descriptor (at least the major's first size).
    pub fn descriptor_size(&self) -> u32 {
        self.library.descriptor_size
    }
}

impl Drop for PluginBackend {
    fn drop(&mut self) {
        let handle = self.handle;
        // SAFETY: the handle is live and given up here; nothing else uses it any more.
        if let Err(e) = call(|error| unsafe { (self.library.backend.destroy)(handle, error) }) {
            let e = BackendError::from(e);
            tracing::warn!(backend = %self.name, "plugin backend destroy failed: {e}");
        }
    }
}

impl std::fmt::Debug for PluginBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginBackend")
            .field("name", &self.name)
            .field("path", &self.library.path)
            .finish_non_exhaustive()
    }
}

impl Backend for PluginBackend {
    fn name(&self) -> &str {
        &self.name
    }

    fn description(&self) -> &str {
        &self.description
    }

    fn profiles(&self) -> Vec<ProfileInfo> {
        let handle = self.handle;
        // SAFETY: a live handle and sinks valid for the call.
        let json =
            call_text(|out, error| unsafe { (self.library.backend.profiles)(handle, out, error) });
        let profiles = json.map_err(BackendError::from).and_then(|json| {
            serde_json::from_str::<Vec<ProfileInfo>>(&json).map_err(|e| {
                BackendError::Failed(format!("the plugin's profiles are not valid JSON: {e}"))
            })
        });
        profiles.unwrap_or_else(|e| {
            tracing::warn!(backend = %self.name, "plugin profiles failed: {e}");
            Vec::new()
        })
    }

    fn default_layout(&self, profile: &str) -> Result<String, BackendError> {
        let handle = self.handle;
        let profile = Str::new(profile);
        // SAFETY: a live handle, a string and sinks valid for the call.
        Ok(call_text(|out, error| unsafe {
            (self.library.backend.default_layout)(handle, profile, out, error)
        })?)
    }

    fn create(&self, request: &CreateRequest) -> Result<Box<dyn Function>, BackendError> {
        let layout = request.layout.to_toml();
        let attributes: Vec<Attribute<'_>> = request
            .attributes
            .iter()
            .map(|(key, value)| Attribute {
                key: Str::new(key),
                value: Str::new(value),
            })
            .collect();
        let raw = RawCreateRequest {
            profile: Str::new(&request.profile),
            instance: Str::new(&request.instance),
            layout_toml: Str::new(&layout),
            attributes: if attributes.is_empty() {
                ptr::null()
            } else {
                attributes.as_ptr()
            },
            attributes_len: attributes.len(),
        };
        let handle = self.handle;
        let mut function = ptr::null_mut();
        // SAFETY: a live handle; the request, its strings and attributes, the out-pointer and the
        // sink are valid for the call.
        call(|error| unsafe { (self.library.backend.create)(handle, &raw, &mut function, error) })?;
        if function.is_null() {
            return Err(BackendError::Failed(
                "the plugin's create succeeded without a function handle".into(),
            ));
        }
        // From here on, dropping `function` destroys the plugin's function.
        let mut function = PluginFunction {
            handle: function,
            migration: None,
            library: self.library.clone(),
        };
        function.migration = function.query_migration()?;
        Ok(Box::new(function))
    }
}

/// The methods of trait `$want` that the call list gives a shape: each calls its vtable entry
/// with the arguments' C forms (the other entries are written by hand below).
macro_rules! forwarded {
    ($want:ident $(
        $(#[$meta:meta])*
        $field:ident: $shape:ident $($target:ident::$method:ident)? ($($args:tt)*) $(-> $ret:ty)?;
    )*) => {
        $(forwarded_method!($want; $field: $shape $($target::$method)? ($($args)*) $(-> $ret)?);)*
    };
}

/// The error type of a trait's methods.
macro_rules! trait_error {
    (Function) => {
        FunctionError
    };
    (MigrationHooks) => {
        MigrationError
    };
}

/// One forwarded method, when the entry belongs to trait `$want`.
macro_rules! forwarded_method {
    ($want:ident; $field:ident: custom ($($args:tt)*)) => {};
    (Function; $field:ident: $shape:ident MigrationHooks::$method:ident $($rest:tt)*) => {};
    (MigrationHooks; $field:ident: $shape:ident Function::$method:ident $($rest:tt)*) => {};
    ($want:ident; $field:ident: read $target:ident::$method:ident ($($arg:ident: $ty:ty),* $(,)?)) => {
        fn $method(&self, $($arg: $ty,)* data: &mut [u8]) -> Result<(), trait_error!($target)> {
            let (ptr, len) = (data.as_mut_ptr(), data.len());
            // SAFETY: a live handle, a buffer valid for writes of `len` bytes and a sink for the
            // call.
            Ok(call(|error| unsafe {
                (self.library.function.$field)(self.handle, $($arg.to_abi(),)* ptr, len, error)
            })?)
        }
    };
    ($want:ident; $field:ident: write $target:ident::$method:ident ($($arg:ident: $ty:ty),* $(,)?)) => {
        fn $method(&self, $($arg: $ty,)* data: &[u8]) -> Result<(), trait_error!($target)> {
            let (ptr, len) = (data.as_ptr(), data.len());
            // SAFETY: a live handle, a buffer valid for reads of `len` bytes and a sink for the
            // call.
            Ok(call(|error| unsafe {
                (self.library.function.$field)(self.handle, $($arg.to_abi(),)* ptr, len, error)
            })?)
        }
    };
    ($want:ident; $field:ident: call $target:ident::$method:ident ($($arg:ident: $ty:ty),* $(,)?)) => {
        fn $method(&self, $($arg: $ty),*) -> Result<(), trait_error!($target)> {
            // SAFETY: a live handle and a sink valid for the call.
            Ok(call(|error| unsafe {
                (self.library.function.$field)(self.handle, $($arg.to_abi(),)* error)
            })?)
        }
    };
    ($want:ident; $field:ident: value $target:ident::$method:ident ($($arg:ident: $ty:ty),* $(,)?) -> $ret:ty) => {
        fn $method(&self, $($arg: $ty),*) -> Result<$ret, trait_error!($target)> {
            let mut out = <$ret as AbiValue>::Raw::default();
            // SAFETY: a live handle, an out-pointer and a sink valid for the call.
            call(|error| unsafe {
                (self.library.function.$field)(self.handle, $($arg.to_abi(),)* &mut out, error)
            })?;
            Ok(<$ret as AbiValue>::from_abi(out)?)
        }
    };
}

/// A function from a plugin library.
struct PluginFunction {
    handle: *mut FunctionHandle,
    /// The migration features, when the function is migratable (asked once, at creation).
    migration: Option<MigrationFlags>,
    library: Arc<PluginLibrary>,
}

// SAFETY: the handle stands for the plugin's `Box<dyn Function>`, which is `Send + Sync`; the ABI
// allows concurrent calls on a function handle except `destroy`, which only `Drop` makes.
unsafe impl Send for PluginFunction {}
// SAFETY: as above.
unsafe impl Sync for PluginFunction {}

impl PluginFunction {
    /// Logs a failure the trait has no way to report.
    fn warn(&self, what: &str, error: FunctionError) {
        tracing::warn!(plugin = %self.library.path.display(), "plugin {what} failed: {error}");
    }

    /// Asks the plugin whether the function is migratable, and with which features.
    fn query_migration(&self) -> Result<Option<MigrationFlags>, BackendError> {
        let (mut supported, mut bits) = (0u32, 0u64);
        // SAFETY: a live handle; out-pointers and the sink are valid for the call.
        call(|error| unsafe {
            (self.library.function.migration)(self.handle, &mut supported, &mut bits, error)
        })?;
        match supported {
            0 => Ok(None),
            1 => MigrationFlags::from_bits(bits).map(Some).ok_or_else(|| {
                BackendError::Failed(format!(
                    "the plugin reports unknown migration flags {bits:#x}"
                ))
            }),
            other => Err(BackendError::Failed(format!(
                "the plugin reports migration support {other}, not 0 or 1"
            ))),
        }
    }
}

impl Drop for PluginFunction {
    fn drop(&mut self) {
        let handle = self.handle;
        // SAFETY: the handle is live and given up here; nothing else uses it any more.
        if let Err(e) = call(|error| unsafe { (self.library.function.destroy)(handle, error) }) {
            self.warn("function destroy", FunctionError::from(e));
        }
    }
}

impl Function for PluginFunction {
    vfio_variant::plugin_function_calls!(forwarded! { Function });

    fn attach(&self, context: FunctionContext) {
        let host = HostContext {
            ctx: Box::into_raw(Box::new(context)).cast_const().cast(),
            dma_read: host::dma_read,
            dma_write: host::dma_write,
            raise: host::raise,
            release: host::release,
        };
        // SAFETY: a live handle; the context stays valid until the plugin releases it (it owns
        // that reference from this call on), the sink for the call.
        let result =
            call(|error| unsafe { (self.library.function.attach)(self.handle, &host, error) });
        if let Err(e) = result {
            self.warn("attach", FunctionError::from(e));
        }
    }

    fn config_changed(&self, event: ConfigEvent) {
        let event = RawConfigEvent::from(event);
        // SAFETY: a live handle, an event and a sink valid for the call.
        if let Err(e) = call(|error| unsafe {
            (self.library.function.config_changed)(self.handle, &event, error)
        }) {
            self.warn("config_changed", FunctionError::from(e));
        }
    }

    fn migration(&self) -> Option<&dyn MigrationHooks> {
        self.migration.map(|_| self as &dyn MigrationHooks)
    }
}

impl MigrationHooks for PluginFunction {
    vfio_variant::plugin_function_calls!(forwarded! { MigrationHooks });

    fn flags(&self) -> MigrationFlags {
        self.migration.unwrap_or(MigrationFlags::empty())
    }

    fn save(&self, buf: &mut [u8]) -> Result<usize, MigrationError> {
        let (ptr, len) = (buf.as_mut_ptr(), buf.len());
        let mut written = 0usize;
        // SAFETY: a live handle, a buffer valid for writes of `len` bytes, an out-pointer and a
        // sink valid for the call.
        call(|error| unsafe {
            (self.library.function.migration_save)(self.handle, ptr, len, &mut written, error)
        })?;
        if written > len {
            return Err(MigrationError::Device(format!(
                "the plugin reports {written} bytes saved into a {len}-byte buffer"
            )));
        }
        Ok(written)
    }

    fn precopy_info(&self) -> Result<PrecopyInfo, MigrationError> {
        let mut info = PrecopyInfo::default();
        // SAFETY: a live handle, out-pointers and a sink valid for the call.
        call(|error| unsafe {
            (self.library.function.migration_precopy_info)(
                self.handle,
                &mut info.initial_bytes,
                &mut info.dirty_bytes,
                error,
            )
        })?;
        Ok(info)
    }
}
