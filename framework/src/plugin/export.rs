//! The plugin side: the `extern "C"` wrappers [`export_backend!`](crate::export_backend)
//! instantiates around a Rust [`Backend`], and the adapter that turns the host's
//! [`HostContext`] back into a [`FunctionContext`].
//!
//! A backend handle is a `Box<Box<dyn Backend>>`, a function handle a `Box<Box<dyn Function>>`,
//! both owned by the plugin and freed by its `destroy` entries.

use std::ffi::c_void;
use std::sync::Arc;

use super::abi::{
    AbiError, AbiValue, Attribute, BackendHandle, BackendVTable, Collector, FunctionHandle,
    FunctionVTable, HostContext, PluginDescriptor, RawConfigEvent, RawCreateRequest, RawInterrupt,
    Sink, Status, Str, guarded, input, output,
};
use super::{ABI_VERSION, FRAMEWORK_VERSION_C, MAGIC};
use crate::backend::{
    Backend, CreateRequest, DmaAccess, DmaError, Function, FunctionContext, Interrupt,
    InterruptSink,
};
use crate::migration::MigrationHooks;
use crate::vpci::parse_layout;

/// The file name layout errors of a create request mention.
const REQUEST_LAYOUT_NAME: &str = "<plugin request>";

type BackendBox = Box<dyn Backend>;
type FunctionBox = Box<dyn Function>;

/// The descriptor's function vtable: every entry of the list, from [`function_entries`].
macro_rules! entries_vtable {
    ($(
        $(#[$meta:meta])*
        $field:ident: $shape:ident $($target:ident::$method:ident)? ($($args:tt)*) $(-> $ret:ty)?;
    )*) => {
        FunctionVTable {
            $($field: Some(function_entries::$field),)*
        }
    };
}

/// The entries of the list that have a shape (the `custom` ones are written by hand).
macro_rules! exported_entries {
    ($(
        $(#[$meta:meta])*
        $field:ident: $shape:ident $($target:ident::$method:ident)? ($($args:tt)*) $(-> $ret:ty)?;
    )*) => {
        $(exported_entry!($field: $shape $($target::$method)? ($($args)*) $(-> $ret)?);)*
    };
}

/// The object a generated entry calls: the function, or its migration hooks.
macro_rules! callee {
    (Function, $handle:ident) => {
        function($handle)
    };
    (MigrationHooks, $handle:ident) => {
        hooks($handle)
    };
}

/// One generated entry: decodes the C arguments (entry contract), calls the method under
/// `guarded`, encodes the result.
macro_rules! exported_entry {
    ($field:ident: custom ($($args:tt)*)) => {};
    ($field:ident: read $target:ident::$method:ident ($($arg:ident: $ty:ty),* $(,)?)) => {
        pub(super) unsafe extern "C" fn $field(
            handle: *const FunctionHandle,
            $($arg: <$ty as AbiValue>::Raw,)*
            data: *mut u8,
            len: usize,
            error: *const Sink<'_>,
        ) -> Status {
            // SAFETY: entry contract (see above): the handle, buffers and sinks are valid for
            // the call.
            unsafe {
                guarded(error, || {
                    let callee = callee!($target, handle)?;
                    Ok(callee.$method($(<$ty as AbiValue>::from_abi($arg)?,)* output(data, len)?)?)
                })
            }
        }
    };
    ($field:ident: write $target:ident::$method:ident ($($arg:ident: $ty:ty),* $(,)?)) => {
        pub(super) unsafe extern "C" fn $field(
            handle: *const FunctionHandle,
            $($arg: <$ty as AbiValue>::Raw,)*
            data: *const u8,
            len: usize,
            error: *const Sink<'_>,
        ) -> Status {
            // SAFETY: entry contract (see above): the handle, buffers and sinks are valid for
            // the call.
            unsafe {
                guarded(error, || {
                    let callee = callee!($target, handle)?;
                    Ok(callee.$method($(<$ty as AbiValue>::from_abi($arg)?,)* input(data, len)?)?)
                })
            }
        }
    };
    ($field:ident: call $target:ident::$method:ident ($($arg:ident: $ty:ty),* $(,)?)) => {
        pub(super) unsafe extern "C" fn $field(
            handle: *const FunctionHandle,
            $($arg: <$ty as AbiValue>::Raw,)*
            error: *const Sink<'_>,
        ) -> Status {
            // SAFETY: entry contract (see above): the handle and sinks are valid for the call.
            unsafe {
                guarded(error, || {
                    let callee = callee!($target, handle)?;
                    Ok(callee.$method($(<$ty as AbiValue>::from_abi($arg)?),*)?)
                })
            }
        }
    };
    ($field:ident: value $target:ident::$method:ident ($($arg:ident: $ty:ty),* $(,)?) -> $ret:ty) => {
        pub(super) unsafe extern "C" fn $field(
            handle: *const FunctionHandle,
            $($arg: <$ty as AbiValue>::Raw,)*
            out: *mut <$ret as AbiValue>::Raw,
            error: *const Sink<'_>,
        ) -> Status {
            // SAFETY: entry contract (see above): the handle, out-pointer and sinks are valid
            // for the call.
            unsafe {
                guarded(error, || {
                    let callee = callee!($target, handle)?;
                    let value: $ret = callee.$method($(<$ty as AbiValue>::from_abi($arg)?),*)?;
                    store(out, value.to_abi())
                })
            }
        }
    };
}

impl PluginDescriptor {
    /// The descriptor of a plugin whose backend `new` creates (the function
    /// [`export_backend!`](crate::export_backend) writes around [`new_backend`]); every other
    /// entry is this module's wrapper.
    pub const fn exported(
        new: unsafe extern "C" fn(*mut *mut BackendHandle, *const Sink<'_>) -> Status,
    ) -> Self {
        Self {
            magic: MAGIC,
            abi_version: ABI_VERSION,
            descriptor_size: size_of::<PluginDescriptor>() as u32,
            framework_version: FRAMEWORK_VERSION_C.as_ptr(),
            backend: BackendVTable {
                new: Some(new),
                destroy: Some(backend_destroy),
                name: Some(backend_name),
                description: Some(backend_description),
                profiles: Some(backend_profiles),
                default_layout: Some(backend_default_layout),
                create: Some(backend_create),
            },
            function: crate::plugin_function_calls!(entries_vtable! {}),
        }
    }
}

/// The body of a plugin's `new` entry: runs `construct` under `catch_unwind` and stores the
/// backend's handle in `*out`.
///
/// # Safety
///
/// `out` is null or valid for a write of one pointer; `error` is null or a valid [`Sink`] for
/// the call.
pub unsafe fn new_backend<B: Backend + 'static>(
    out: *mut *mut BackendHandle,
    error: *const Sink<'_>,
    construct: impl FnOnce() -> B,
) -> Status {
    let body = || {
        if out.is_null() {
            return Err(AbiError::invalid("null output pointer"));
        }
        let backend: BackendBox = Box::new(construct());
        let handle = Box::into_raw(Box::new(backend)).cast::<BackendHandle>();
        // SAFETY: `out` is null or valid for a write of one pointer (this function's contract).
        unsafe { store(out, handle) }
    };
    // SAFETY: `error` is null or valid for the call (this function's contract).
    unsafe { guarded(error, body) }
}

/// The backend behind a handle.
///
/// # Safety
///
/// `handle` is null or came from `new_backend` and was not destroyed, and stays so for `'a`.
unsafe fn backend<'a>(handle: *const BackendHandle) -> Result<&'a dyn Backend, AbiError> {
    // SAFETY: a non-null handle is a live `Box<BackendBox>` (the caller's guarantee).
    let backend = unsafe { handle.cast::<BackendBox>().as_ref() };
    backend
        .map(|b| &**b)
        .ok_or_else(|| AbiError::invalid("null backend handle"))
}

/// The function behind a handle.
///
/// # Safety
///
/// `handle` is null or came from `backend_create` and was not destroyed, and stays so for `'a`.
unsafe fn function<'a>(handle: *const FunctionHandle) -> Result<&'a dyn Function, AbiError> {
    // SAFETY: a non-null handle is a live `Box<FunctionBox>` (the caller's guarantee).
    let function = unsafe { handle.cast::<FunctionBox>().as_ref() };
    function
        .map(|f| &**f)
        .ok_or_else(|| AbiError::invalid("null function handle"))
}

/// The migration hooks of the function behind a handle.
///
/// # Safety
///
/// As for [`function`].
unsafe fn hooks<'a>(handle: *const FunctionHandle) -> Result<&'a dyn MigrationHooks, AbiError> {
    // SAFETY: forwarded from this function's contract.
    let function = unsafe { function(handle) }?;
    function
        .migration()
        .ok_or_else(|| AbiError::new(Status::UNSUPPORTED, "this function is not migratable"))
}

/// Writes `text` to the output sink `out`.
///
/// # Safety
///
/// `out` is null or a valid [`Sink`] for the call.
unsafe fn emit(out: *const Sink<'_>, text: &str) -> Result<(), AbiError> {
    // SAFETY: the caller guarantees `out` is null or valid.
    let sink = unsafe { out.as_ref() }.ok_or_else(|| AbiError::invalid("null output sink"))?;
    match sink.put(text.as_bytes()) {
        Status::OK => Ok(()),
        status => Err(AbiError::new(status, "the host did not accept the output")),
    }
}

/// Stores `value` in `*out`.
///
/// # Safety
///
/// `out` is null or valid for a write of one `T`.
unsafe fn store<T>(out: *mut T, value: T) -> Result<(), AbiError> {
    if out.is_null() {
        return Err(AbiError::invalid("null output pointer"));
    }
    // SAFETY: non-null and valid for a write (the caller's guarantee).
    unsafe { out.write(value) };
    Ok(())
}

// The wrappers below are the descriptor's entries. Their contract ("entry contract" below) is the
// vtable entries' (see `BackendVTable` and `FunctionVTable`): a handle is live for the call (not
// yet destroyed), sinks are null or valid for the call, `(data, len)` buffers and out-pointers
// are null or valid for the call. That is exactly what `backend`, `function`, `hooks`, `input`,
// `output`, `store`, `emit`, `Str::get` and `guarded` require. Each runs its body under
// `guarded`, so neither an error nor a panic leaves a wrapper other than as a status.

unsafe extern "C" fn backend_destroy(handle: *mut BackendHandle, error: *const Sink<'_>) -> Status {
    let body = || {
        if handle.is_null() {
            return Err(AbiError::invalid("null backend handle"));
        }
        // SAFETY: a non-null handle is the live `Box<BackendBox>` `new_backend` made, which the
        // host gives up with this call (entry contract).
        drop(unsafe { Box::from_raw(handle.cast::<BackendBox>()) });
        Ok(())
    };
    // SAFETY: `error` is null or valid for the call (entry contract).
    unsafe { guarded(error, body) }
}

unsafe extern "C" fn backend_name(
    handle: *const BackendHandle,
    out: *const Sink<'_>,
    error: *const Sink<'_>,
) -> Status {
    // SAFETY: entry contract (see above): the handle, buffers and sinks are valid for the call.
    unsafe { guarded(error, || emit(out, backend(handle)?.name())) }
}

unsafe extern "C" fn backend_description(
    handle: *const BackendHandle,
    out: *const Sink<'_>,
    error: *const Sink<'_>,
) -> Status {
    // SAFETY: entry contract (see above): the handle, buffers and sinks are valid for the call.
    unsafe { guarded(error, || emit(out, backend(handle)?.description())) }
}

unsafe extern "C" fn backend_profiles(
    handle: *const BackendHandle,
    out: *const Sink<'_>,
    error: *const Sink<'_>,
) -> Status {
    // SAFETY: entry contract (see above): the handle, buffers and sinks are valid for the call.
    unsafe {
        guarded(error, || {
            let profiles = backend(handle)?.profiles();
            let json = serde_json::to_string(&profiles)
                .map_err(|e| AbiError::new(Status::FAILED, e.to_string()))?;
            emit(out, &json)
        })
    }
}

unsafe extern "C" fn backend_default_layout(
    handle: *const BackendHandle,
    profile: Str<'_>,
    out: *const Sink<'_>,
    error: *const Sink<'_>,
) -> Status {
    // SAFETY: entry contract (see above): the handle, buffers and sinks are valid for the call.
    unsafe {
        guarded(error, || {
            let text = backend(handle)?.default_layout(profile.get()?)?;
            emit(out, &text)
        })
    }
}

unsafe extern "C" fn backend_create(
    handle: *const BackendHandle,
    request: *const RawCreateRequest<'_>,
    out: *mut *mut FunctionHandle,
    error: *const Sink<'_>,
) -> Status {
    let body = || {
        // SAFETY: `handle` is live for the call (entry contract).
        let backend = unsafe { backend(handle) }?;
        // SAFETY: `request` is null or valid for the call (entry contract).
        let raw =
            unsafe { request.as_ref() }.ok_or_else(|| AbiError::invalid("null create request"))?;
        let attributes: &[Attribute<'_>] = if raw.attributes_len == 0 {
            &[]
        } else if raw.attributes.is_null() {
            return Err(AbiError::invalid("null attribute array"));
        } else {
            // SAFETY: non-null and valid for `attributes_len` elements for the call (entry
            // contract).
            unsafe { std::slice::from_raw_parts(raw.attributes, raw.attributes_len) }
        };
        // SAFETY: the request's strings are valid for the call (entry contract).
        let text = |s: Str<'_>| unsafe { s.get() }.map(str::to_string);
        let attributes = attributes
            .iter()
            .map(|a| Ok((text(a.key)?, text(a.value)?)))
            .collect::<Result<Vec<_>, AbiError>>()?;
        let layout = parse_layout(REQUEST_LAYOUT_NAME, &text(raw.layout_toml)?).map_err(|e| {
            AbiError::new(
                Status::FAILED,
                format!("the host's layout does not parse: {e}"),
            )
        })?;
        let request = CreateRequest {
            profile: text(raw.profile)?,
            instance: text(raw.instance)?,
            layout: Arc::new(layout),
            attributes,
        };
        if out.is_null() {
            return Err(AbiError::invalid("null output pointer"));
        }
        let function: FunctionBox = backend.create(&request)?;
        let handle = Box::into_raw(Box::new(function)).cast::<FunctionHandle>();
        // SAFETY: `out` is non-null and valid for a write of one pointer (entry contract).
        unsafe { store(out, handle) }
    };
    // SAFETY: `error` is null or valid for the call (entry contract).
    unsafe { guarded(error, body) }
}

/// The function entries of the descriptor, one per entry of
/// [`plugin_function_calls!`](crate::plugin_function_calls) and named after it: generated for
/// the calls the list gives a shape, written here for the `custom` ones.
mod function_entries {
    use super::*;

    crate::plugin_function_calls!(exported_entries! {});

    pub(super) unsafe extern "C" fn destroy(
        handle: *mut FunctionHandle,
        error: *const Sink<'_>,
    ) -> Status {
        let body = || {
            if handle.is_null() {
                return Err(AbiError::invalid("null function handle"));
            }
            // SAFETY: a non-null handle is the live `Box<FunctionBox>` `backend_create` made, which
            // the host gives up with this call (entry contract).
            drop(unsafe { Box::from_raw(handle.cast::<FunctionBox>()) });
            Ok(())
        };
        // SAFETY: `error` is null or valid for the call (entry contract).
        unsafe { guarded(error, body) }
    }

    pub(super) unsafe extern "C" fn attach(
        handle: *const FunctionHandle,
        host: *const HostContext,
        error: *const Sink<'_>,
    ) -> Status {
        let body = || {
            // Take over the host's reference first, so that every path below releases it.
            // SAFETY: `host` is null or valid for the call (entry contract).
            let host =
                unsafe { host.as_ref() }.ok_or_else(|| AbiError::invalid("null host context"))?;
            let link = Arc::new(HostLink(*host));
            // SAFETY: `handle` is live for the call (entry contract).
            let function = unsafe { function(handle) }?;
            function.attach(FunctionContext {
                dma: link.clone(),
                interrupts: link,
            });
            Ok(())
        };
        // SAFETY: `error` is null or valid for the call (entry contract).
        unsafe { guarded(error, body) }
    }

    pub(super) unsafe extern "C" fn config_changed(
        handle: *const FunctionHandle,
        event: *const RawConfigEvent,
        error: *const Sink<'_>,
    ) -> Status {
        // SAFETY: entry contract (see above): the handle, buffers and sinks are valid for the call.
        unsafe {
            guarded(error, || {
                let function = function(handle)?;
                let raw = event
                    .as_ref()
                    .ok_or_else(|| AbiError::invalid("null config event"))?;
                let event = raw
                    .decode()
                    .ok_or_else(|| AbiError::invalid(format!("unknown config event {raw:?}")))?;
                function.config_changed(event);
                Ok(())
            })
        }
    }

    pub(super) unsafe extern "C" fn migration(
        handle: *const FunctionHandle,
        supported: *mut u32,
        flags: *mut u64,
        error: *const Sink<'_>,
    ) -> Status {
        // SAFETY: entry contract (see above): the handle, buffers and sinks are valid for the call.
        unsafe {
            guarded(error, || {
                let migration = function(handle)?.migration();
                store(flags, migration.map_or(0, |m| m.flags().bits()))?;
                store(supported, u32::from(migration.is_some()))
            })
        }
    }

    pub(super) unsafe extern "C" fn migration_save(
        handle: *const FunctionHandle,
        data: *mut u8,
        len: usize,
        written: *mut usize,
        error: *const Sink<'_>,
    ) -> Status {
        // SAFETY: entry contract (see above): the handle, buffers and sinks are valid for the call.
        unsafe {
            guarded(error, || {
                let hooks = hooks(handle)?;
                let buffer = output(data, len)?;
                let count = hooks.save(buffer)?;
                if count > len {
                    return Err(AbiError::new(
                        Status::FAILED,
                        format!("save reported {count} bytes for a {len}-byte buffer"),
                    ));
                }
                store(written, count)
            })
        }
    }

    pub(super) unsafe extern "C" fn migration_precopy_info(
        handle: *const FunctionHandle,
        initial_bytes: *mut u64,
        dirty_bytes: *mut u64,
        error: *const Sink<'_>,
    ) -> Status {
        // SAFETY: entry contract (see above): the handle, buffers and sinks are valid for the call.
        unsafe {
            guarded(error, || {
                let info = hooks(handle)?.precopy_info()?;
                store(initial_bytes, info.initial_bytes)?;
                store(dirty_bytes, info.dirty_bytes)
            })
        }
    }
}

/// The plugin's view of the host's [`HostContext`]: guest memory and interrupts. Dropping the
/// last reference releases the host's context.
struct HostLink(HostContext);

// SAFETY: the host's context contract: until `release`, its callbacks may be called from any
// thread, concurrently, with `ctx` (the host's state is `Send + Sync`).
unsafe impl Send for HostLink {}
// SAFETY: as above.
unsafe impl Sync for HostLink {}

impl Drop for HostLink {
    fn drop(&mut self) {
        // SAFETY: this link holds the one reference `attach` gave; it is given back once, here.
        unsafe { (self.0.release)(self.0.ctx) }
    }
}

impl HostLink {
    fn ctx(&self) -> *const c_void {
        self.0.ctx
    }
}

impl DmaAccess for HostLink {
    fn read(&self, iova: u64, data: &mut [u8]) -> Result<(), DmaError> {
        let mut message = Collector::message();
        // SAFETY: `ctx` is held until `release`; `data` is valid for writes of its length and the
        // sink for the call.
        let status = unsafe {
            (self.0.dma_read)(
                self.ctx(),
                iova,
                data.as_mut_ptr(),
                data.len(),
                &message.sink(),
            )
        };
        AbiError::check(status, message).map_err(|e| e.into_dma_error(iova, data.len(), "readable"))
    }

    fn write(&self, iova: u64, data: &[u8]) -> Result<(), DmaError> {
        let mut message = Collector::message();
        // SAFETY: `ctx` is held until `release`; `data` is valid for reads of its length and the
        // sink for the call.
        let status = unsafe {
            (self.0.dma_write)(self.ctx(), iova, data.as_ptr(), data.len(), &message.sink())
        };
        AbiError::check(status, message).map_err(|e| e.into_dma_error(iova, data.len(), "writable"))
    }
}

impl InterruptSink for HostLink {
    fn raise(&self, interrupt: Interrupt) {
        // SAFETY: `ctx` is held until `release`. The trait gives no way to report a failure;
        // the host logs its own.
        let _ = unsafe { (self.0.raise)(self.ctx(), RawInterrupt::from(interrupt)) };
    }
}
