//! The host's side of a [`HostContext`](vfio_variant::plugin::HostContext): callbacks a
//! plugin's function uses to reach guest memory and raise interrupts. `ctx` is a
//! `Box<FunctionContext>` made by `attach` and freed by [`release`]. Each callback runs under
//! `catch_unwind`, like the plugin's entries.

use std::ffi::c_void;

use vfio_variant::backend::FunctionContext;
use vfio_variant::plugin::abi::{AbiError, RawInterrupt, guarded, input, output};
use vfio_variant::plugin::{Sink, Status};

/// The context behind `ctx`.
///
/// # Safety
///
/// `ctx` is a context `attach` made that the plugin has not released, and stays so for `'a`.
unsafe fn context<'a>(ctx: *const c_void) -> Result<&'a FunctionContext, AbiError> {
    // SAFETY: a non-null `ctx` is a live `Box<FunctionContext>` (the caller's guarantee).
    unsafe { ctx.cast::<FunctionContext>().as_ref() }
        .ok_or_else(|| AbiError::invalid("null host context"))
}

// The callbacks' contract ("context contract" below) is `HostContext`'s: `ctx` is not yet
// released, `(data, len)` buffers and the error sink are null or valid for the call. That is
// what `context`, `input`, `output` and `guarded` require.

/// Reads guest memory for the plugin.
pub(super) unsafe extern "C" fn dma_read(
    ctx: *const c_void,
    iova: u64,
    data: *mut u8,
    len: usize,
    error: *const Sink<'_>,
) -> Status {
    // SAFETY: context contract (see above): `ctx`, the buffer and the sink are valid for the call.
    unsafe {
        guarded(error, || {
            Ok(context(ctx)?.dma.read(iova, output(data, len)?)?)
        })
    }
}

/// Writes guest memory for the plugin.
pub(super) unsafe extern "C" fn dma_write(
    ctx: *const c_void,
    iova: u64,
    data: *const u8,
    len: usize,
    error: *const Sink<'_>,
) -> Status {
    // SAFETY: context contract (see above): `ctx`, the buffer and the sink are valid for the call.
    unsafe {
        guarded(error, || {
            Ok(context(ctx)?.dma.write(iova, input(data, len)?)?)
        })
    }
}

/// Raises an interrupt for the plugin.
pub(super) unsafe extern "C" fn raise(ctx: *const c_void, interrupt: RawInterrupt) -> Status {
    let body = || {
        let decoded = interrupt
            .decode()
            .ok_or_else(|| AbiError::invalid(format!("unknown interrupt {interrupt:?}")))?;
        // SAFETY: context contract (see above): `ctx` is not yet released.
        unsafe { context(ctx) }?.interrupts.raise(decoded);
        Ok(())
    };
    // The plugin's `InterruptSink::raise` cannot report a failure, so it is logged here.
    let mut message = vfio_variant::plugin::Collector::message();
    // SAFETY: the sink is valid for the call.
    let status = unsafe { guarded(&message.sink(), body) };
    if let Err(e) = AbiError::check(status, message) {
        tracing::warn!(
            status = e.status.0,
            "plugin interrupt not raised: {}",
            e.message
        );
    }
    status
}

/// Frees the context when the plugin gives it back.
pub(super) unsafe extern "C" fn release(ctx: *const c_void) {
    let body = || {
        if !ctx.is_null() {
            // SAFETY: context contract: `ctx` is the `Box<FunctionContext>` `attach` made, and the
            // plugin gives up its only reference with this call.
            drop(unsafe { Box::from_raw(ctx.cast_mut().cast::<FunctionContext>()) });
        }
        Ok(())
    };
    // A panic while dropping the context (in a DMA or interrupt implementation's `Drop`) must
    // not unwind into the plugin; `guarded` catches it and there is nobody to tell.
    // SAFETY: a null error sink is allowed.
    let _ = unsafe { guarded(std::ptr::null(), body) };
}
