//! The C-ABI types shared by a host and a plugin, and the conversions both sides use.
//!
//! Every type that crosses is `#[repr(C)]` (or a transparent integer) and every function is
//! `unsafe extern "C"`. Pointers given to a call are valid for that call only unless a call says
//! otherwise; buffers are `(ptr, len)` pairs where `ptr` may be null when `len` is 0.

use std::any::Any;
use std::ffi::{c_char, c_void};
use std::marker::PhantomData;
use std::panic::{AssertUnwindSafe, catch_unwind};

use crate::backend::{BackendError, DmaError, FunctionError, Interrupt};
use crate::config::ConfigEvent;
use crate::migration::{MigrationError, MigrationState};

/// The result of every call across the boundary. Any `i32` is a valid value; unknown ones are
/// treated as failures.
#[repr(transparent)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Status(pub i32);

impl Status {
    /// Success.
    pub const OK: Self = Self(0);
    /// A failure described only by its message (`BackendError::Failed`, `FunctionError::Device`,
    /// `MigrationError::Device`, `DmaError::Transfer`, and errors with no code of their own).
    pub const FAILED: Self = Self(1);
    /// The callee panicked; the message is the panic's.
    pub const PANICKED: Self = Self(2);
    /// `FunctionError::Unsupported`.
    pub const UNSUPPORTED: Self = Self(3);
    /// `FunctionError::BadAccess`.
    pub const BAD_ACCESS: Self = Self(4);
    /// `BackendError::UnknownProfile`; the message is the profile name.
    pub const UNKNOWN_PROFILE: Self = Self(5);
    /// `BackendError::NoInstances`; the message is the profile name.
    pub const NO_INSTANCES: Self = Self(6);
    /// `BackendError::Refused`; the message is the reason.
    pub const REFUSED: Self = Self(7);
    /// `MigrationError::InvalidData`.
    pub const INVALID_DATA: Self = Self(8);
    /// `DmaError::Unmapped` (rebuilt by the caller from the address and length it asked for).
    pub const DMA_UNMAPPED: Self = Self(9);
    /// `DmaError::Permission` (rebuilt by the caller from the address and direction).
    pub const DMA_PERMISSION: Self = Self(10);
    /// The call broke the ABI's rules (a null handle, a null buffer, text that is not UTF-8, an
    /// unknown enumeration value).
    pub const INVALID_ARGUMENT: Self = Self(11);
    /// More bytes were written to a [`Sink`] than its owner accepts.
    pub const TOO_LONG: Self = Self(12);
}

/// How the message of an error that stands for a plugin's caught panic starts (the host keeps
/// only a message for it: `FunctionError::Device`, `BackendError::Failed`, ...).
pub const PANICKED_PREFIX: &str = "plugin panicked: ";

/// A failed call as one side reports it to the other: a [`Status`] and a UTF-8 message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AbiError {
    /// Why (never [`Status::OK`]).
    pub status: Status,
    /// What the callee said.
    pub message: String,
}

impl AbiError {
    /// An error with this status and message.
    pub fn new(status: Status, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    /// A call that broke the ABI's rules.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(Status::INVALID_ARGUMENT, message)
    }

    /// A caught panic, with its message when it has one.
    pub fn panicked(payload: &(dyn Any + Send)) -> Self {
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".to_string());
        Self::new(Status::PANICKED, message)
    }

    /// The outcome of a call: `Ok` for [`Status::OK`], otherwise the status with the message the
    /// callee wrote into `message` (the caller's error sink).
    pub fn check(status: Status, message: Collector) -> Result<(), Self> {
        if status == Status::OK {
            Ok(())
        } else {
            Err(Self::new(status, message.into_message()))
        }
    }

    /// The message with what the status adds to it, for errors that keep only a message.
    fn describe(self) -> String {
        match self.status {
            Status::FAILED => self.message,
            Status::PANICKED => format!("{PANICKED_PREFIX}{}", self.message),
            Status::INVALID_ARGUMENT => {
                format!("invalid call across the plugin ABI: {}", self.message)
            }
            Status::TOO_LONG => format!("too much data across the plugin ABI: {}", self.message),
            Status::UNSUPPORTED => format!("not supported: {}", self.message),
            Status::BAD_ACCESS => format!("bad access: {}", self.message),
            Status::UNKNOWN_PROFILE => format!("unknown profile `{}`", self.message),
            Status::NO_INSTANCES => {
                format!("no instance of profile `{}` is available", self.message)
            }
            Status::REFUSED => format!("refused: {}", self.message),
            Status::INVALID_DATA => format!("invalid migration data: {}", self.message),
            Status::DMA_UNMAPPED | Status::DMA_PERMISSION => format!("DMA: {}", self.message),
            Status(other) => format!("plugin error status {other}: {}", self.message),
        }
    }

    /// The DMA error this stands for, for an access of `len` bytes at `iova` in `direction`
    /// (`readable` or `writable`).
    pub fn into_dma_error(self, iova: u64, len: usize, direction: &'static str) -> DmaError {
        match self.status {
            Status::DMA_UNMAPPED => DmaError::Unmapped { iova, len },
            Status::DMA_PERMISSION => DmaError::Permission { iova, direction },
            _ => DmaError::Transfer(self.describe()),
        }
    }
}

impl From<BackendError> for AbiError {
    fn from(error: BackendError) -> Self {
        match error {
            BackendError::UnknownProfile(profile) => Self::new(Status::UNKNOWN_PROFILE, profile),
            BackendError::NoInstances(profile) => Self::new(Status::NO_INSTANCES, profile),
            BackendError::Refused(reason) => Self::new(Status::REFUSED, reason),
            BackendError::Failed(message) => Self::new(Status::FAILED, message),
            other @ (BackendError::Layout(_) | BackendError::Physical(_)) => {
                Self::new(Status::FAILED, other.to_string())
            }
        }
    }
}

impl From<AbiError> for BackendError {
    fn from(error: AbiError) -> Self {
        match error.status {
            Status::UNKNOWN_PROFILE => Self::UnknownProfile(error.message),
            Status::NO_INSTANCES => Self::NoInstances(error.message),
            Status::REFUSED => Self::Refused(error.message),
            _ => Self::Failed(error.describe()),
        }
    }
}

impl From<FunctionError> for AbiError {
    fn from(error: FunctionError) -> Self {
        match error {
            FunctionError::Unsupported(what) => Self::new(Status::UNSUPPORTED, what),
            FunctionError::BadAccess(what) => Self::new(Status::BAD_ACCESS, what),
            FunctionError::Device(message) => Self::new(Status::FAILED, message),
            other @ FunctionError::Physical(_) => Self::new(Status::FAILED, other.to_string()),
        }
    }
}

impl From<AbiError> for FunctionError {
    fn from(error: AbiError) -> Self {
        match error.status {
            Status::UNSUPPORTED => Self::Unsupported(error.message),
            Status::BAD_ACCESS => Self::BadAccess(error.message),
            _ => Self::Device(error.describe()),
        }
    }
}

impl From<MigrationError> for AbiError {
    fn from(error: MigrationError) -> Self {
        match error {
            MigrationError::Device(message) => Self::new(Status::FAILED, message),
            MigrationError::InvalidData(message) => Self::new(Status::INVALID_DATA, message),
        }
    }
}

impl From<AbiError> for MigrationError {
    fn from(error: AbiError) -> Self {
        match error.status {
            Status::INVALID_DATA => Self::InvalidData(error.message),
            _ => Self::Device(error.describe()),
        }
    }
}

impl From<DmaError> for AbiError {
    fn from(error: DmaError) -> Self {
        match error {
            DmaError::Unmapped { .. } => Self::new(Status::DMA_UNMAPPED, error.to_string()),
            DmaError::Permission { .. } => Self::new(Status::DMA_PERMISSION, error.to_string()),
            DmaError::Transfer(message) => Self::new(Status::FAILED, message),
        }
    }
}

/// Runs one side's implementation of a call: `call` runs under `catch_unwind`; an error or a
/// panic is written to `error` and its status returned, so nothing unwinds across the boundary.
///
/// # Safety
///
/// `error` is null or points to a [`Sink`] that stays valid for the duration of this call.
pub unsafe fn guarded(
    error: *const Sink<'_>,
    call: impl FnOnce() -> Result<(), AbiError>,
) -> Status {
    let failure = match catch_unwind(AssertUnwindSafe(call)) {
        Ok(Ok(())) => return Status::OK,
        Ok(Err(failure)) => failure,
        Err(payload) => AbiError::panicked(&*payload),
    };
    // SAFETY: the caller guarantees `error` is null or valid for this call.
    if let Some(sink) = unsafe { error.as_ref() } {
        // The message is best effort: a sink that refuses it still gets the status.
        let _ = sink.put(failure.message.as_bytes());
    }
    failure.status
}

/// The bytes of an input buffer.
///
/// # Safety
///
/// `ptr` is null or valid for reads of `len` bytes, not written by anyone while `'a` lasts.
pub unsafe fn input<'a>(ptr: *const u8, len: usize) -> Result<&'a [u8], AbiError> {
    if len == 0 {
        return Ok(&[]);
    }
    if ptr.is_null() || len > isize::MAX as usize {
        return Err(AbiError::invalid(format!(
            "a null or oversized input buffer of {len} bytes"
        )));
    }
    // SAFETY: non-null, at most isize::MAX bytes, and valid for reads for 'a (the caller's
    // guarantee); bytes have no alignment or validity requirements.
    Ok(unsafe { std::slice::from_raw_parts(ptr, len) })
}

/// The bytes of an output buffer.
///
/// # Safety
///
/// `ptr` is null or valid for reads and writes of `len` bytes, and not accessed through any
/// other pointer while `'a` lasts.
pub unsafe fn output<'a>(ptr: *mut u8, len: usize) -> Result<&'a mut [u8], AbiError> {
    if len == 0 {
        return Ok(&mut []);
    }
    if ptr.is_null() || len > isize::MAX as usize {
        return Err(AbiError::invalid(format!(
            "a null or oversized output buffer of {len} bytes"
        )));
    }
    // SAFETY: non-null, at most isize::MAX bytes, valid and exclusive for 'a (the caller's
    // guarantee); any byte value is a valid u8.
    Ok(unsafe { std::slice::from_raw_parts_mut(ptr, len) })
}

/// A borrowed UTF-8 string: `(ptr, len)`, not NUL-terminated; `ptr` may be null when `len` is 0.
///
/// C view: `struct { const uint8_t *ptr; size_t len; }`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct Str<'a> {
    ptr: *const u8,
    len: usize,
    _borrow: PhantomData<&'a str>,
}

impl<'a> Str<'a> {
    /// Borrows `text` for a call.
    pub fn new(text: &'a str) -> Self {
        Self {
            ptr: text.as_ptr(),
            len: text.len(),
            _borrow: PhantomData,
        }
    }

    /// The text, checked to be UTF-8.
    ///
    /// # Safety
    ///
    /// `self` came from the other side of a call that is still running, which guarantees the
    /// bytes stay valid and unchanged until it returns (`'a` must not outlive that call).
    pub unsafe fn get(self) -> Result<&'a str, AbiError> {
        // SAFETY: the caller guarantees the buffer is valid for the call.
        let bytes = unsafe { input(self.ptr, self.len) }?;
        std::str::from_utf8(bytes)
            .map_err(|e| AbiError::invalid(format!("a string that is not UTF-8: {e}")))
    }
}

/// A callback into a byte buffer the caller owns: the way variable-length results and error
/// messages cross. The callee may call it any number of times during the call, from any thread
/// but not concurrently; the bytes append. Only [`Collector::sink`] makes one, so a `Sink` is
/// always valid while its lifetime lasts.
///
/// C view: `struct { void *ctx; int32_t (*write)(void *ctx, const uint8_t *data, size_t len); }`.
#[repr(C)]
#[derive(Debug)]
pub struct Sink<'a> {
    ctx: *mut c_void,
    write: unsafe extern "C" fn(ctx: *mut c_void, data: *const u8, len: usize) -> Status,
    _borrow: PhantomData<&'a mut Collector>,
}

impl Sink<'_> {
    /// Appends `data` to the owner's buffer; [`Status::TOO_LONG`] once the owner's limit is
    /// reached (what fits is kept).
    pub fn put(&self, data: &[u8]) -> Status {
        // SAFETY: a Sink only comes from `Collector::sink`, whose exclusive borrow of the
        // collector lasts as long as the sink; `write` is `collect`, which takes that pointer.
        unsafe { (self.write)(self.ctx, data.as_ptr(), data.len()) }
    }
}

/// The owner of a [`Sink`]'s buffer: collects what the other side writes, up to a limit.
#[derive(Debug)]
pub struct Collector {
    data: Vec<u8>,
    limit: usize,
    truncated: bool,
}

impl Collector {
    /// The limit for an error message.
    pub const MESSAGE_LIMIT: usize = 64 << 10;
    /// The limit for text results (profile JSON, layout files, names).
    pub const TEXT_LIMIT: usize = 16 << 20;

    /// An empty buffer that accepts up to `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Self {
            data: Vec::new(),
            limit,
            truncated: false,
        }
    }

    /// An empty buffer for an error message.
    pub fn message() -> Self {
        Self::new(Self::MESSAGE_LIMIT)
    }

    /// A sink writing into this buffer, for one call.
    pub fn sink(&mut self) -> Sink<'_> {
        Sink {
            ctx: std::ptr::from_mut(self).cast(),
            write: collect,
            _borrow: PhantomData,
        }
    }

    /// The text collected, checked: UTF-8 and within the limit.
    pub fn into_text(self) -> Result<String, AbiError> {
        if self.truncated {
            return Err(AbiError::new(
                Status::TOO_LONG,
                format!("text longer than {} bytes", self.limit),
            ));
        }
        String::from_utf8(self.data)
            .map_err(|e| AbiError::invalid(format!("text that is not UTF-8: {e}")))
    }

    /// The text collected as a message: invalid UTF-8 is replaced, truncation is marked.
    pub fn into_message(self) -> String {
        let mut message = String::from_utf8_lossy(&self.data).into_owned();
        if self.truncated {
            message.push_str(" [truncated]");
        }
        message
    }
}

/// The `write` function of a [`Collector`]'s sinks.
///
/// # Safety
///
/// `ctx` is the collector the sink was made from, still exclusively borrowed by the sink, and
/// `data` is null or valid for reads of `len` bytes.
unsafe extern "C" fn collect(ctx: *mut c_void, data: *const u8, len: usize) -> Status {
    // SAFETY: `ctx` is the exclusively borrowed collector (the sink's lifetime ties it).
    let collector = unsafe { &mut *ctx.cast::<Collector>() };
    // SAFETY: the caller guarantees `data` is valid for `len` bytes.
    let Ok(data) = (unsafe { input(data, len) }) else {
        return Status::INVALID_ARGUMENT;
    };
    let room = collector.limit.saturating_sub(collector.data.len());
    if data.len() > room {
        collector.data.extend_from_slice(&data[..room]);
        collector.truncated = true;
        return Status::TOO_LONG;
    }
    collector.data.extend_from_slice(data);
    Status::OK
}

/// An interrupt as it crosses: `kind` is one of the `KIND_` constants, `value` the INTx level
/// (0 or 1) or the vector.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawInterrupt {
    /// What kind of interrupt.
    pub kind: u32,
    /// INTx level or MSI/MSI-X vector; 0 otherwise.
    pub value: u32,
}

impl RawInterrupt {
    /// INTx; value is the level.
    pub const KIND_INTX: u32 = 0;
    /// MSI; value is the vector.
    pub const KIND_MSI: u32 = 1;
    /// MSI-X; value is the vector.
    pub const KIND_MSIX: u32 = 2;
    /// The error interrupt.
    pub const KIND_ERROR: u32 = 3;
    /// The device request interrupt.
    pub const KIND_REQUEST: u32 = 4;

    /// The interrupt, when the kind and value are known.
    pub fn decode(self) -> Option<Interrupt> {
        Some(match (self.kind, self.value) {
            (Self::KIND_INTX, level @ (0 | 1)) => Interrupt::Intx(level == 1),
            (Self::KIND_MSI, vector) => Interrupt::Msi(vector),
            (Self::KIND_MSIX, vector) => Interrupt::Msix(vector),
            (Self::KIND_ERROR, 0) => Interrupt::Error,
            (Self::KIND_REQUEST, 0) => Interrupt::Request,
            _ => return None,
        })
    }
}

impl From<Interrupt> for RawInterrupt {
    fn from(interrupt: Interrupt) -> Self {
        let (kind, value) = match interrupt {
            Interrupt::Intx(level) => (Self::KIND_INTX, u32::from(level)),
            Interrupt::Msi(vector) => (Self::KIND_MSI, vector),
            Interrupt::Msix(vector) => (Self::KIND_MSIX, vector),
            Interrupt::Error => (Self::KIND_ERROR, 0),
            Interrupt::Request => (Self::KIND_REQUEST, 0),
        };
        Self { kind, value }
    }
}

/// A [`ConfigEvent`] as it crosses: `kind` is one of the `KIND_` constants, `a` and `b` its
/// fields (booleans as 0 or 1).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawConfigEvent {
    /// What changed.
    pub kind: u32,
    /// COMMAND: old value; MSI, MSI-X: enabled; power: the state.
    pub a: u32,
    /// COMMAND: new value; MSI: vectors; MSI-X: function mask.
    pub b: u32,
}

impl RawConfigEvent {
    /// [`ConfigEvent::Command`].
    pub const KIND_COMMAND: u32 = 0;
    /// [`ConfigEvent::Msi`].
    pub const KIND_MSI: u32 = 1;
    /// [`ConfigEvent::Msix`].
    pub const KIND_MSIX: u32 = 2;
    /// [`ConfigEvent::FunctionLevelReset`].
    pub const KIND_FLR: u32 = 3;
    /// [`ConfigEvent::PowerState`].
    pub const KIND_POWER_STATE: u32 = 4;

    /// The event, when the kind and fields are in range.
    pub fn decode(self) -> Option<ConfigEvent> {
        let flag = |v: u32| match v {
            0 => Some(false),
            1 => Some(true),
            _ => None,
        };
        Some(match self.kind {
            Self::KIND_COMMAND => ConfigEvent::Command {
                old: u16::try_from(self.a).ok()?,
                new: u16::try_from(self.b).ok()?,
            },
            Self::KIND_MSI => ConfigEvent::Msi {
                enabled: flag(self.a)?,
                vectors: u8::try_from(self.b).ok()?,
            },
            Self::KIND_MSIX => ConfigEvent::Msix {
                enabled: flag(self.a)?,
                function_mask: flag(self.b)?,
            },
            Self::KIND_FLR => ConfigEvent::FunctionLevelReset,
            Self::KIND_POWER_STATE => ConfigEvent::PowerState(u8::try_from(self.a).ok()?),
            _ => return None,
        })
    }
}

impl From<ConfigEvent> for RawConfigEvent {
    fn from(event: ConfigEvent) -> Self {
        let (kind, a, b) = match event {
            ConfigEvent::Command { old, new } => {
                (Self::KIND_COMMAND, u32::from(old), u32::from(new))
            }
            ConfigEvent::Msi { enabled, vectors } => {
                (Self::KIND_MSI, u32::from(enabled), u32::from(vectors))
            }
            ConfigEvent::Msix {
                enabled,
                function_mask,
            } => (
                Self::KIND_MSIX,
                u32::from(enabled),
                u32::from(function_mask),
            ),
            ConfigEvent::FunctionLevelReset => (Self::KIND_FLR, 0, 0),
            ConfigEvent::PowerState(state) => (Self::KIND_POWER_STATE, u32::from(state), 0),
        };
        Self { kind, a, b }
    }
}

/// One `key = value` provisioning attribute.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct Attribute<'a> {
    /// The key.
    pub key: Str<'a>,
    /// The value.
    pub value: Str<'a>,
}

/// A [`CreateRequest`](crate::backend::CreateRequest) as it crosses. The layout travels as vPCI
/// TOML text (written by [`Layout::to_toml`](crate::vpci::Layout::to_toml)) and is parsed again
/// on the plugin's side.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct RawCreateRequest<'a> {
    /// Profile name.
    pub profile: Str<'a>,
    /// Instance name or UUID.
    pub instance: Str<'a>,
    /// The vPCI layout as TOML text.
    pub layout_toml: Str<'a>,
    /// The attributes, in order: `attributes_len` elements (null when 0).
    pub attributes: *const Attribute<'a>,
    /// Number of attributes.
    pub attributes_len: usize,
}

/// What a plugin's function needs from the host: guest memory and interrupts.
///
/// The plugin receives one reference to `ctx` with each `attach` call and calls `release`
/// exactly once when it no longer uses it (including when `attach` fails). Until then the
/// callbacks may be called from any thread, concurrently.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct HostContext {
    /// The host's state, passed back to every callback.
    pub ctx: *const c_void,
    /// Reads `len` bytes of guest memory at `iova` into `data`. Errors: [`Status::DMA_UNMAPPED`],
    /// [`Status::DMA_PERMISSION`], [`Status::FAILED`] with a message in `error`.
    pub dma_read: unsafe extern "C" fn(
        ctx: *const c_void,
        iova: u64,
        data: *mut u8,
        len: usize,
        error: *const Sink<'_>,
    ) -> Status,
    /// Writes `len` bytes from `data` to guest memory at `iova`; errors as for `dma_read`.
    pub dma_write: unsafe extern "C" fn(
        ctx: *const c_void,
        iova: u64,
        data: *const u8,
        len: usize,
        error: *const Sink<'_>,
    ) -> Status,
    /// Raises an interrupt.
    pub raise: unsafe extern "C" fn(ctx: *const c_void, interrupt: RawInterrupt) -> Status,
    /// Gives back the reference received with `attach`.
    pub release: unsafe extern "C" fn(ctx: *const c_void),
}

/// The opaque handle of a plugin's backend.
#[repr(C)]
pub struct BackendHandle {
    _opaque: [u8; 0],
}

/// The opaque handle of a plugin's function.
#[repr(C)]
pub struct FunctionHandle {
    _opaque: [u8; 0],
}

/// A value that crosses as an argument or result of a generated call (see
/// [`plugin_function_calls!`](crate::plugin_function_calls)): its C form, and the checked way
/// back from it.
pub trait AbiValue: Sized {
    /// The C form.
    type Raw: Copy + Default;
    /// The C form of `self`.
    fn to_abi(self) -> Self::Raw;
    /// The value a C form stands for, or why it stands for none.
    fn from_abi(raw: Self::Raw) -> Result<Self, AbiError>;
}

/// Integers cross as themselves.
macro_rules! abi_integers {
    ($($t:ty),*) => {
        $(
            impl AbiValue for $t {
                type Raw = $t;

                fn to_abi(self) -> $t {
                    self
                }

                fn from_abi(raw: $t) -> Result<Self, AbiError> {
                    Ok(raw)
                }
            }
        )*
    };
}

abi_integers!(u8, u16, u64);

/// A migration state crosses as its VFIO number.
impl AbiValue for MigrationState {
    type Raw = u32;

    fn to_abi(self) -> u32 {
        self as u32
    }

    fn from_abi(raw: u32) -> Result<Self, AbiError> {
        Self::from_raw(raw)
            .ok_or_else(|| AbiError::invalid(format!("unknown migration state {raw}")))
    }
}

/// The C type of one vtable entry, from its shape in a call list (see
/// [`plugin_function_calls!`](crate::plugin_function_calls)).
macro_rules! entry_fn {
    (custom ($($arg:ident: $ty:ty),* $(,)?)) => {
        unsafe extern "C" fn($($ty),*) -> Status
    };
    (read ($($arg:ident: $ty:ty),* $(,)?)) => {
        unsafe extern "C" fn(
            *const FunctionHandle,
            $(<$ty as AbiValue>::Raw,)*
            *mut u8,
            usize,
            *const Sink<'_>,
        ) -> Status
    };
    (write ($($arg:ident: $ty:ty),* $(,)?)) => {
        unsafe extern "C" fn(
            *const FunctionHandle,
            $(<$ty as AbiValue>::Raw,)*
            *const u8,
            usize,
            *const Sink<'_>,
        ) -> Status
    };
    (call ($($arg:ident: $ty:ty),* $(,)?)) => {
        unsafe extern "C" fn(*const FunctionHandle, $(<$ty as AbiValue>::Raw,)* *const Sink<'_>) -> Status
    };
    (value ($($arg:ident: $ty:ty),* $(,)?) -> $ret:ty) => {
        unsafe extern "C" fn(
            *const FunctionHandle,
            $(<$ty as AbiValue>::Raw,)*
            *mut <$ret as AbiValue>::Raw,
            *const Sink<'_>,
        ) -> Status
    };
}

/// Declares a vtable from a call list twice: the `#[repr(C)]` form with nullable entries that
/// crosses, and a checked form whose entries are known to be non-null.
macro_rules! vtable {
    (
        $(#[$meta:meta])*
        pub struct $name:ident;
        $(#[$checked_meta:meta])*
        pub struct $checked:ident;
        $(
            $(#[$field_meta:meta])*
            $field:ident: $shape:ident $($target:ident::$method:ident)? ($($args:tt)*) $(-> $ret:ty)?;
        )*
    ) => {
        $(#[$meta])*
        #[repr(C)]
        #[derive(Debug, Clone, Copy)]
        pub struct $name {
            $(
                $(#[$field_meta])*
                pub $field: Option<entry_fn!($shape ($($args)*) $(-> $ret)?)>,
            )*
        }

        $(#[$checked_meta])*
        #[derive(Debug, Clone, Copy)]
        pub struct $checked {
            $(
                $(#[$field_meta])*
                pub $field: entry_fn!($shape ($($args)*) $(-> $ret)?),
            )*
        }

        impl $name {
            /// The checked form, or the name of the first null entry.
            pub fn check(&self) -> Result<$checked, &'static str> {
                Ok($checked {
                    $($field: self.$field.ok_or(stringify!($field))?,)*
                })
            }
        }
    };
}

vtable! {
    /// The backend calls. Every call returns a [`Status`] and writes a failure's message to
    /// `error` (which may be null). `handle` is one `new` returned and `destroy` has not yet
    /// taken; calls on one handle may run concurrently, except `destroy`.
    pub struct BackendVTable;
    /// A [`BackendVTable`] whose entries are all present.
    pub struct BackendFns;
    /// Creates the backend (once per load); stores its handle in `*out`.
    new: custom(out: *mut *mut BackendHandle, error: *const Sink<'_>);
    /// Destroys the backend. Functions it created stay valid.
    destroy: custom(handle: *mut BackendHandle, error: *const Sink<'_>);
    /// Writes the backend's name (UTF-8) to `out`.
    name: custom(handle: *const BackendHandle, out: *const Sink<'_>, error: *const Sink<'_>);
    /// Writes the backend's one-line description (UTF-8) to `out`.
    description: custom(handle: *const BackendHandle, out: *const Sink<'_>, error: *const Sink<'_>);
    /// Writes the profiles as a JSON array of
    /// [`ProfileInfo`](crate::backend::ProfileInfo) to `out`.
    profiles: custom(handle: *const BackendHandle, out: *const Sink<'_>, error: *const Sink<'_>);
    /// Writes the default vPCI layout (TOML) of `profile` to `out`.
    default_layout: custom(
        handle: *const BackendHandle,
        profile: Str<'_>,
        out: *const Sink<'_>,
        error: *const Sink<'_>,
    );
    /// Provisions a function; stores its handle in `*out`.
    create: custom(
        handle: *const BackendHandle,
        request: *const RawCreateRequest<'_>,
        out: *mut *mut FunctionHandle,
        error: *const Sink<'_>,
    );
}

/// The function calls of the ABI in vtable order: the one list from which the
/// [`FunctionVTable`], the plugin's exported entries and the host's adapter are generated.
///
/// Invoked as `plugin_function_calls!(callback! { prefix })`, it expands to
/// `callback! { prefix entries }`. Each entry is
/// `name: shape Trait::method(arguments) -> result;` where the shape says how the call crosses
/// (the handle comes first and the error sink last in every shape):
///
/// - `read`: the arguments, then an output buffer `(data, len)` the method fills;
/// - `write`: the arguments, then an input buffer `(data, len)`;
/// - `call`: the arguments only;
/// - `value`: the arguments, then an out-pointer for the result;
/// - `custom(C parameters)`: no trait method; both sides write the entry by hand.
///
/// Arguments and results cross as their [`AbiValue`] form. `Trait` is `Function` or
/// `MigrationHooks` (the host answers `Status::UNSUPPORTED` for a function that is not
/// migratable). Changing this list changes the ABI: only appending is allowed within a major
/// (see [`ABI_VERSION`](crate::plugin::ABI_VERSION)).
#[doc(hidden)]
#[macro_export]
macro_rules! plugin_function_calls {
    ($callback:ident ! { $($prefix:tt)* }) => {
        $callback! {
            $($prefix)*
            /// Destroys the function (its resources return to the backend).
            destroy: custom(
                handle: *mut $crate::plugin::abi::FunctionHandle,
                error: *const $crate::plugin::abi::Sink<'_>,
            );
            /// Gives the function guest memory and interrupts; see [`HostContext`] for
            /// ownership.
            attach: custom(
                handle: *const $crate::plugin::abi::FunctionHandle,
                host: *const $crate::plugin::abi::HostContext,
                error: *const $crate::plugin::abi::Sink<'_>,
            );
            /// Reads an emulated BAR.
            bar_read: read Function::bar_read(bar: u8, offset: u64);
            /// Writes an emulated BAR.
            bar_write: write Function::bar_write(bar: u8, offset: u64);
            /// Reads the legacy I/O BAR.
            legacy_io_read: read Function::legacy_io_read(offset: u64);
            /// Writes the legacy I/O BAR.
            legacy_io_write: write Function::legacy_io_write(offset: u64);
            /// Reads the emulated expansion ROM.
            rom_read: read Function::rom_read(offset: u64);
            /// Reads a backend-computed config register.
            config_read: read Function::config_read(offset: u16);
            /// Writes a backend-computed config register.
            config_write: write Function::config_write(offset: u16);
            /// Reports a guest-visible config change.
            config_changed: custom(
                handle: *const $crate::plugin::abi::FunctionHandle,
                event: *const $crate::plugin::abi::RawConfigEvent,
                error: *const $crate::plugin::abi::Sink<'_>,
            );
            /// Resets the function.
            reset: call Function::reset();
            /// Whether the function is migratable: `*supported` is set to 1 (and `*flags` to
            /// its [`MigrationFlags`](crate::migration::MigrationFlags) bits) or 0.
            migration: custom(
                handle: *const $crate::plugin::abi::FunctionHandle,
                supported: *mut u32,
                flags: *mut u64,
                error: *const $crate::plugin::abi::Sink<'_>,
            );
            /// Performs one migration arc; states are
            /// [`MigrationState`](crate::migration::MigrationState) numbers.
            migration_transition: call MigrationHooks::transition(
                from: $crate::migration::MigrationState,
                to: $crate::migration::MigrationState,
            );
            /// Saves up to `len` bytes of device state into `data`; stores the count in
            /// `*written`.
            migration_save: custom(
                handle: *const $crate::plugin::abi::FunctionHandle,
                data: *mut u8,
                len: usize,
                written: *mut usize,
                error: *const $crate::plugin::abi::Sink<'_>,
            );
            /// Loads `len` bytes of device state.
            migration_load: write MigrationHooks::load();
            /// Stores the pre-copy progress in `*initial_bytes` and `*dirty_bytes`.
            migration_precopy_info: custom(
                handle: *const $crate::plugin::abi::FunctionHandle,
                initial_bytes: *mut u64,
                dirty_bytes: *mut u64,
                error: *const $crate::plugin::abi::Sink<'_>,
            );
            /// Stores the estimated stop-copy size in `*size`.
            migration_stop_copy_size: value MigrationHooks::stop_copy_size() -> u64;
        }
    };
}

crate::plugin_function_calls!(vtable! {
    /// The function calls. Every call returns a [`Status`] and writes a failure's message to
    /// `error` (which may be null). `handle` is one `create` returned and `destroy` has not yet
    /// taken; calls on one handle may run concurrently, except `destroy`. Buffers are
    /// `(data, len)` and valid for the call.
    pub struct FunctionVTable;
    /// A [`FunctionVTable`] whose entries are all present.
    pub struct FunctionFns;
});

/// What a plugin's [`ENTRY_SYMBOL`](super::ENTRY_SYMBOL) returns: who it is and its calls.
///
/// The host reads `magic`, then `abi_version`, then `descriptor_size` before anything else;
/// those three fields keep their place in every ABI version. The rest is only read when the
/// magic and the major ([`ABI_VERSION`](super::ABI_VERSION)) match and the size is at least
/// [`MIN_DESCRIPTOR_SIZE`](super::MIN_DESCRIPTOR_SIZE); see [`ABI_VERSION`](super::ABI_VERSION)
/// for how a descriptor grows within a major.
///
/// Rust compiler versions do not matter: only C-layout data crosses. What the ABI leaves out:
/// device-side dirty tracking
/// ([`MigrationHooks::dirty_tracker`](crate::migration::MigrationHooks::dirty_tracker) is `None`
/// for a plugin's functions; the framework's own dirty logging still works) and the physical
/// function
/// ([`Function::physical`](crate::backend::Function::physical) is `None`; a plugin drives its
/// physical function itself).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct PluginDescriptor {
    /// [`MAGIC`](super::MAGIC).
    pub magic: u64,
    /// [`ABI_VERSION`](super::ABI_VERSION) of the framework the plugin was built with.
    pub abi_version: u32,
    /// `size_of::<PluginDescriptor>()` in the plugin.
    pub descriptor_size: u32,
    /// [`FRAMEWORK_VERSION`](super::FRAMEWORK_VERSION) of the plugin, NUL-terminated.
    pub framework_version: *const c_char,
    /// The backend calls.
    pub backend: BackendVTable,
    /// The function calls.
    pub function: FunctionVTable,
}

// SAFETY: a descriptor is immutable data: integers, function pointers, and a pointer to a
// static NUL-terminated string that is never written. Sharing it between threads is sound.
unsafe impl Sync for PluginDescriptor {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_descriptor_of_the_major_keeps_its_size() {
        // Growing the descriptor is allowed (by appending); shrinking or reshaping what major 1
        // had is not.
        assert!(size_of::<PluginDescriptor>() >= super::super::MIN_DESCRIPTOR_SIZE as usize);
        assert_eq!(std::mem::offset_of!(PluginDescriptor, function), 80);
    }

    #[test]
    fn the_generated_vtables_keep_the_majors_order() {
        use std::mem::offset_of;
        let pointer = size_of::<usize>();
        let backend = [
            offset_of!(BackendVTable, new),
            offset_of!(BackendVTable, destroy),
            offset_of!(BackendVTable, name),
            offset_of!(BackendVTable, description),
            offset_of!(BackendVTable, profiles),
            offset_of!(BackendVTable, default_layout),
            offset_of!(BackendVTable, create),
        ];
        let function = [
            offset_of!(FunctionVTable, destroy),
            offset_of!(FunctionVTable, attach),
            offset_of!(FunctionVTable, bar_read),
            offset_of!(FunctionVTable, bar_write),
            offset_of!(FunctionVTable, legacy_io_read),
            offset_of!(FunctionVTable, legacy_io_write),
            offset_of!(FunctionVTable, rom_read),
            offset_of!(FunctionVTable, config_read),
            offset_of!(FunctionVTable, config_write),
            offset_of!(FunctionVTable, config_changed),
            offset_of!(FunctionVTable, reset),
            offset_of!(FunctionVTable, migration),
            offset_of!(FunctionVTable, migration_transition),
            offset_of!(FunctionVTable, migration_save),
            offset_of!(FunctionVTable, migration_load),
            offset_of!(FunctionVTable, migration_precopy_info),
            offset_of!(FunctionVTable, migration_stop_copy_size),
        ];
        for (offsets, size) in [
            (&backend[..], size_of::<BackendVTable>()),
            (&function[..], size_of::<FunctionVTable>()),
        ] {
            // One pointer after the other, in the list's order, nothing else.
            let expected: Vec<usize> = (0..offsets.len()).map(|i| i * pointer).collect();
            assert_eq!(offsets, &expected[..]);
            assert_eq!(size, expected.len() * pointer);
        }
        assert_eq!(
            size_of::<PluginDescriptor>(),
            super::super::MIN_DESCRIPTOR_SIZE as usize
        );
    }

    #[test]
    fn generated_entries_have_the_majors_c_signatures() {
        // The C types the list generates are the ones major 1 was written with.
        type BarRead = unsafe extern "C" fn(
            *const FunctionHandle,
            u8,
            u64,
            *mut u8,
            usize,
            *const Sink<'_>,
        ) -> Status;
        type Transition =
            unsafe extern "C" fn(*const FunctionHandle, u32, u32, *const Sink<'_>) -> Status;
        type StopCopySize =
            unsafe extern "C" fn(*const FunctionHandle, *mut u64, *const Sink<'_>) -> Status;
        type Load = unsafe extern "C" fn(
            *const FunctionHandle,
            *const u8,
            usize,
            *const Sink<'_>,
        ) -> Status;
        unsafe extern "C" fn new(_: *mut *mut BackendHandle, _: *const Sink<'_>) -> Status {
            Status::OK
        }
        let table = PluginDescriptor::exported(new).function;
        let bar_read: Option<BarRead> = table.bar_read;
        let transition: Option<Transition> = table.migration_transition;
        let stop_copy_size: Option<StopCopySize> = table.migration_stop_copy_size;
        let load: Option<Load> = table.migration_load;
        assert!(bar_read.is_some() && transition.is_some());
        assert!(stop_copy_size.is_some() && load.is_some());
        // The exported descriptor fills every entry.
        assert!(table.check().is_ok());
        assert_eq!(
            MigrationState::from_abi(MigrationState::StopCopy.to_abi()),
            Ok(MigrationState::StopCopy)
        );
        assert_eq!(
            MigrationState::from_abi(99).unwrap_err().status,
            Status::INVALID_ARGUMENT
        );
    }

    #[test]
    fn collector_limits_and_marks_truncation() {
        let mut collector = Collector::new(4);
        let sink = collector.sink();
        assert_eq!(sink.put(b"ab"), Status::OK);
        assert_eq!(sink.put(b"cdef"), Status::TOO_LONG);
        assert_eq!(collector.into_message(), "abcd [truncated]");

        let mut collector = Collector::new(4);
        let _ = collector.sink().put(b"abcdef");
        assert_eq!(collector.into_text().unwrap_err().status, Status::TOO_LONG);

        let mut collector = Collector::new(4);
        let _ = collector.sink().put(&[0xff, 0xfe]);
        assert_eq!(
            collector.into_text().unwrap_err().status,
            Status::INVALID_ARGUMENT
        );
    }

    #[test]
    fn guarded_reports_errors_and_panics() {
        let mut message = Collector::message();
        // SAFETY: the sink is valid for the call.
        let status = unsafe {
            guarded(&message.sink(), || {
                Err(AbiError::new(Status::REFUSED, "busy"))
            })
        };
        assert_eq!(status, Status::REFUSED);
        assert_eq!(message.into_message(), "busy");

        let mut message = Collector::message();
        // SAFETY: the sink is valid for the call.
        let status = unsafe { guarded(&message.sink(), || panic!("boom {}", 7)) };
        assert_eq!(status, Status::PANICKED);
        assert_eq!(message.into_message(), "boom 7");

        // SAFETY: a null error sink is allowed.
        assert_eq!(unsafe { guarded(std::ptr::null(), || Ok(())) }, Status::OK);
    }

    #[test]
    fn errors_round_trip() {
        let back: BackendError = AbiError::from(BackendError::NoInstances("p".into())).into();
        assert!(matches!(back, BackendError::NoInstances(p) if p == "p"));
        let back: FunctionError = AbiError::from(FunctionError::BadAccess("width".into())).into();
        assert!(matches!(back, FunctionError::BadAccess(m) if m == "width"));
        let back: MigrationError = AbiError::from(MigrationError::InvalidData("x".into())).into();
        assert_eq!(back, MigrationError::InvalidData("x".into()));
        let dma = AbiError::from(DmaError::Unmapped {
            iova: 0x1000,
            len: 8,
        })
        .into_dma_error(0x1000, 8, "readable");
        assert_eq!(
            dma,
            DmaError::Unmapped {
                iova: 0x1000,
                len: 8
            }
        );
        let back: FunctionError = AbiError::new(Status::PANICKED, "oops").into();
        assert!(matches!(back, FunctionError::Device(m) if m == "plugin panicked: oops"));
        let back: BackendError = AbiError::new(Status(99), "odd").into();
        assert!(matches!(back, BackendError::Failed(m) if m.contains("99")));
    }

    #[test]
    fn interrupts_and_events_round_trip() {
        for interrupt in [
            Interrupt::Intx(true),
            Interrupt::Intx(false),
            Interrupt::Msi(3),
            Interrupt::Msix(7),
            Interrupt::Error,
            Interrupt::Request,
        ] {
            assert_eq!(RawInterrupt::from(interrupt).decode(), Some(interrupt));
        }
        assert_eq!(RawInterrupt { kind: 0, value: 2 }.decode(), None);
        assert_eq!(RawInterrupt { kind: 9, value: 0 }.decode(), None);
        for event in [
            ConfigEvent::Command { old: 0, new: 6 },
            ConfigEvent::Msi {
                enabled: true,
                vectors: 4,
            },
            ConfigEvent::Msix {
                enabled: true,
                function_mask: false,
            },
            ConfigEvent::FunctionLevelReset,
            ConfigEvent::PowerState(3),
        ] {
            assert_eq!(RawConfigEvent::from(event).decode(), Some(event));
        }
        assert_eq!(
            RawConfigEvent {
                kind: 2,
                a: 2,
                b: 0
            }
            .decode(),
            None
        );
        assert_eq!(
            RawConfigEvent {
                kind: 0,
                a: 0x1_0000,
                b: 0
            }
            .decode(),
            None
        );
    }

    #[test]
    fn vtable_check_names_the_null_entry() {
        let mut vtable = BackendVTable {
            new: None,
            destroy: None,
            name: None,
            description: None,
            profiles: None,
            default_layout: None,
            create: None,
        };
        assert_eq!(vtable.check().unwrap_err(), "new");
        unsafe extern "C" fn new(_: *mut *mut BackendHandle, _: *const Sink<'_>) -> Status {
            Status::OK
        }
        vtable.new = Some(new);
        assert_eq!(vtable.check().unwrap_err(), "destroy");
    }
}
