//! The VMM-side migration driver: moves a function's device state from a source function to
//! a destination function, as a VMM does for its devices (QEMU does not do it for vfio-user
//! devices, so Rust VMMs embed this and `vfio-variant migrate` runs it standalone).
//!
//! The source side ([`migrate`]) drives the source device through PRE_COPY rounds while the
//! amount of dirtied state keeps falling, then STOP_COPY, and measures the downtime from the
//! moment the source stops to the moment the destination runs. It talks to the destination
//! through a [`Destination`]: a device in the same process ([`LocalDestination`]) or a peer
//! reached over a byte stream, typically TCP ([`RemoteDestination`]), whose other end runs
//! [`serve_destination`] (the `vfio-variant migrate-agent`, or the destination VMM itself).
//! Between hosts that stream is TLS 1.3 with certificates on both sides ([`tls`]).
//!
//! Any failure before the destination runs leaves the source RUNNING and the destination out
//! of RESUMING: the destination checks the stream (layout fingerprint, backend, profile,
//! checksums) before it changes the device, so a refused migration changes nothing.
//!
//! Where to look: the device calls in this file; the source's rounds in `source.rs`; the
//! destination side in `destination.rs`; the messages between the two in `link.rs`; their
//! authenticated transport between hosts in `tls.rs`.

mod destination;
pub mod link;
mod source;
pub mod tls;

pub use destination::{
    Destination, LocalDestination, RemoteDestination, Served, serve_destination,
};
pub use source::{Observer, Options, Progress, Report, migrate};

use std::sync::Arc;

use crate::device::{MigrationFailure, VirtualFunction};
use crate::migration::{MigrationFlags, MigrationState};
use crate::vfio_user::client::{Client, ClientError, MigChunk};
use crate::vfio_user::shared_buf::{SharedBuffer, SharedBufferError};
use crate::vfio_user::version::QEMU_MAX_DATA_XFER_SIZE;

/// Chunks in flight while draining: read from the source, waiting, or being loaded by the
/// destination. A buffer shared with both servers ([`share_buffer`]) has one part per slot.
pub const PIPELINE_SLOTS: usize = 4;

/// The `len` bytes at `offset` in `buffer`, copied out.
pub(crate) fn copy_shared(
    buffer: &SharedBuffer,
    offset: u64,
    len: usize,
) -> Result<Vec<u8>, SharedBufferError> {
    let mut bytes = vec![0; len];
    buffer.copy_out(offset, &mut bytes)?;
    Ok(bytes)
}

/// Registers one shared buffer with both `source` and `destination` (vfio-user servers on
/// this host that agreed to `mig_data_shared`), one source chunk for each of the
/// [`PIPELINE_SLOTS`], so that the source writes each chunk into one part and the
/// destination takes it from there while the source fills the next parts: the driver copies
/// nothing. The source's server makes the buffer ([`Client::server_mig_buffer`]) and saves
/// straight into it; one that does not make buffers gets a fresh one of this process. `None`
/// when either side did not agree, or the destination's transfer bound is below the
/// source's chunk; the migration then moves inline bytes.
pub fn share_buffer(
    source: &mut Client,
    destination: &mut Client,
) -> Result<Option<Arc<SharedBuffer>>, ClientError> {
    if !source.negotiated().mig_data_shared || !destination.negotiated().mig_data_shared {
        return Ok(None);
    }
    let chunk = u64::from(source.chunk_size());
    if chunk > destination.negotiated().max_data_xfer_size {
        return Ok(None);
    }
    let len = (PIPELINE_SLOTS as u64 * chunk).next_multiple_of(4096);
    let buffer = match source.server_mig_buffer(len) {
        Ok(buffer) => buffer,
        Err(ClientError::Remote { errno, .. }) if errno == libc::EINVAL => {
            let buffer = Arc::new(SharedBuffer::create(len).map_err(ClientError::SharedBuffer)?);
            source.register_mig_buffer(Arc::clone(&buffer))?;
            buffer
        }
        Err(e) => return Err(e),
    };
    destination.register_mig_buffer(Arc::clone(&buffer))?;
    Ok(Some(buffer))
}

/// A migration that did not complete.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// The source device failed.
    #[error("source: {0}")]
    Source(#[source] CallError),
    /// The destination device failed or refused the state.
    #[error("destination: {0}")]
    Destination(String),
    /// The link to the destination failed.
    #[error("link to the destination: {0}")]
    Link(#[from] link::LinkError),
    /// The VMM around the driver abandoned the migration.
    #[error("abandoned: {0}")]
    Abandoned(String),
    /// The source cannot be migrated.
    #[error("the source function does not support migration (flags {0:?})")]
    Unsupported(MigrationFlags),
}

/// A call of the driver on a device that failed.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}{}", reason.as_ref().map(|r| format!(" ({r})")).unwrap_or_default())]
pub struct CallError {
    /// What was asked of the device.
    pub what: String,
    /// Why it failed: a [`ClientError`] over vfio-user, a [`MigrationFailure`] in-process.
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
    /// The errno the device answered with (ENOTTY: it does not migrate).
    pub errno: i32,
    /// The device's own account of a refusal (a vfio-user server's MIGRATION_ERROR).
    pub reason: Option<String>,
}

/// The calls the driver makes on a migratable device: VFIO migration v2. Implemented for a
/// vfio-user [`Client`] (a function served elsewhere) and for a [`VirtualFunction`] (a
/// function of this process, as a VMM linking the framework holds it).
pub trait MigratableDevice {
    /// The migration flags the device offers.
    fn flags(&mut self) -> Result<MigrationFlags, CallError>;
    /// Moves the device to `state` (the device walks multi-step paths itself).
    fn set_state(&mut self, state: MigrationState) -> Result<(), CallError>;
    /// Reads up to `max` bytes of the state being saved; fewer means no more for now
    /// (pre-copy) or the end (stop-copy).
    fn read(&mut self, max: u32) -> Result<Vec<u8>, CallError>;
    /// Reads as [`MigratableDevice::read`] does, into `buf`'s memory (its contents replaced):
    /// the data is `buf[range]`. The driver hands the same `buf` to every read, so a device
    /// that overrides this fills memory that is already mapped.
    fn read_into(
        &mut self,
        max: u32,
        buf: &mut Vec<u8>,
    ) -> Result<std::ops::Range<usize>, CallError> {
        *buf = self.read(max)?;
        Ok(0..buf.len())
    }
    /// Reads as [`MigratableDevice::read_into`] does, for pipeline slot `slot` (below
    /// [`PIPELINE_SLOTS`]: the driver reads into some slots while others are being loaded).
    /// A vfio-user server with a shared buffer ([`share_buffer`]) writes the bytes into that
    /// slot's part of it, and the driver has the destination take them from there. A read
    /// asked ahead for the slot ([`MigratableDevice::read_ahead`]) is taken here.
    fn read_chunk(
        &mut self,
        slot: usize,
        max: u32,
        buf: &mut Vec<u8>,
    ) -> Result<MigChunk, CallError> {
        let _ = slot;
        self.read_into(max, buf).map(MigChunk::Inline)
    }
    /// Asks now for the chunk [`MigratableDevice::read_chunk`] will take for `slot`, so that
    /// the device saves it while the driver does other things; the driver takes such reads
    /// in the order it asked. False (the default) when the device only reads when the chunk
    /// is taken.
    fn read_ahead(&mut self, slot: usize, max: u32) -> Result<bool, CallError> {
        let _ = (slot, max);
        Ok(false)
    }
    /// Gives the device the next bytes of the state being loaded.
    fn write(&mut self, data: &[u8]) -> Result<(), CallError>;
    /// Gives the device the `len` bytes at `offset` in a shared buffer; a vfio-user server
    /// that registered the same buffer takes them from there, any other device gets a copy.
    fn write_shared(
        &mut self,
        buffer: &Arc<SharedBuffer>,
        offset: u64,
        len: usize,
    ) -> Result<(), CallError> {
        write_copy(self, buffer, offset, len)
    }
    /// Sends the device the `len` bytes at `offset` in `buffer` now, so that it loads them
    /// while the driver does other things; [`MigratableDevice::write_shared`] of the same
    /// bytes then takes its answer, in the order sent. False (the default) when the device
    /// loads bytes only when they are written.
    fn write_ahead(
        &mut self,
        buffer: &Arc<SharedBuffer>,
        offset: u64,
        len: usize,
    ) -> Result<bool, CallError> {
        let _ = (buffer, offset, len);
        Ok(false)
    }
    /// Largest read or write the device takes at once.
    fn chunk_size(&self) -> u32;
    /// Puts a destination device back as it was after a refused or abandoned load (a device
    /// reset: the destination was not in use yet).
    fn recover(&mut self) -> Result<(), CallError>;
}

/// Gives `device` a copy of the `len` bytes at `offset` in `buffer` (a device that does not
/// share the buffer).
fn write_copy<D: MigratableDevice + ?Sized>(
    device: &mut D,
    buffer: &SharedBuffer,
    offset: u64,
    len: usize,
) -> Result<(), CallError> {
    let bytes = copy_shared(buffer, offset, len).map_err(|e| CallError {
        what: "copying out of the shared buffer".into(),
        errno: e.errno(),
        source: Box::new(e),
        reason: None,
    })?;
    device.write(&bytes)
}

/// Whether `buffer` is the one registered on `client`'s connection.
fn registered(client: &Client, buffer: &Arc<SharedBuffer>) -> bool {
    client.mig_buffer().is_some_and(|b| Arc::ptr_eq(b, buffer))
}

/// A chunk's length as MIG_DATA carries it (a chunk is at most a transfer, a u32).
fn chunk_len(len: usize) -> u32 {
    u32::try_from(len).unwrap_or(u32::MAX)
}

/// Where pipeline slot `slot`'s part of a shared buffer starts.
fn slot_offset(buffer: &SharedBuffer, slot: usize) -> u64 {
    ((slot % PIPELINE_SLOTS) * (buffer.len() / PIPELINE_SLOTS)) as u64
}

fn client_error(what: impl Into<String>) -> impl FnOnce(ClientError) -> CallError {
    move |source| CallError {
        what: what.into(),
        errno: source.errno(),
        source: Box::new(source),
        reason: None,
    }
}

/// `error`, with the server's reason when it refused a migration step and says why.
fn with_reason(client: &mut Client, mut error: CallError) -> CallError {
    let remote = error
        .source
        .downcast_ref::<ClientError>()
        .is_some_and(|e| matches!(e, ClientError::Remote { .. }));
    if remote {
        error.reason = client.migration_error().ok().filter(|r| !r.is_empty());
    }
    error
}

impl MigratableDevice for Client {
    fn flags(&mut self) -> Result<MigrationFlags, CallError> {
        self.migration_flags()
            .map_err(client_error("MIGRATION feature"))
    }

    fn set_state(&mut self, state: MigrationState) -> Result<(), CallError> {
        self.set_mig_state(state)
            .map_err(client_error(format!("set state {state:?}")))
            .map_err(|e| with_reason(self, e))
    }

    fn read(&mut self, max: u32) -> Result<Vec<u8>, CallError> {
        self.mig_data_read(max)
            .map_err(client_error("MIG_DATA_READ"))
    }

    fn read_into(
        &mut self,
        max: u32,
        buf: &mut Vec<u8>,
    ) -> Result<std::ops::Range<usize>, CallError> {
        self.mig_data_read_into(max, buf)
            .map_err(client_error("MIG_DATA_READ"))
    }

    fn read_chunk(
        &mut self,
        slot: usize,
        max: u32,
        buf: &mut Vec<u8>,
    ) -> Result<MigChunk, CallError> {
        let Some(buffer) = self.mig_buffer().cloned() else {
            return self.read_into(max, buf).map(MigChunk::Inline);
        };
        let offset = slot_offset(&buffer, slot);
        let n = self
            .mig_data_read_shared(offset, max)
            .map_err(client_error("MIG_DATA_READ"))?;
        Ok(MigChunk::Shared {
            buffer,
            offset,
            len: n as usize,
        })
    }

    fn read_ahead(&mut self, slot: usize, max: u32) -> Result<bool, CallError> {
        let Some(buffer) = self.mig_buffer() else {
            return Ok(false);
        };
        let offset = slot_offset(buffer, slot);
        self.mig_data_read_ahead(offset, max)
            .map_err(client_error("MIG_DATA_READ"))?;
        Ok(true)
    }

    fn write(&mut self, data: &[u8]) -> Result<(), CallError> {
        self.mig_data_write(data)
            .map_err(client_error("MIG_DATA_WRITE"))
            .map_err(|e| with_reason(self, e))
    }

    fn write_shared(
        &mut self,
        buffer: &Arc<SharedBuffer>,
        offset: u64,
        len: usize,
    ) -> Result<(), CallError> {
        if !registered(self, buffer) {
            return write_copy(self, buffer, offset, len);
        }
        self.mig_data_write_shared(offset, chunk_len(len))
            .map_err(client_error("MIG_DATA_WRITE"))
            .map_err(|e| with_reason(self, e))
    }

    fn write_ahead(
        &mut self,
        buffer: &Arc<SharedBuffer>,
        offset: u64,
        len: usize,
    ) -> Result<bool, CallError> {
        if !registered(self, buffer) {
            return Ok(false);
        }
        self.mig_data_write_ahead(offset, chunk_len(len))
            .map_err(client_error("MIG_DATA_WRITE"))?;
        Ok(true)
    }

    fn chunk_size(&self) -> u32 {
        // The largest read the server allows (bounded as QEMU bounds it), leaving room for
        // the message header and MIG_DATA's own fields.
        let max = self
            .negotiated()
            .max_data_xfer_size
            .min(QEMU_MAX_DATA_XFER_SIZE)
            .saturating_sub(64);
        u32::try_from(max.max(4096)).unwrap_or(1 << 20)
    }

    fn recover(&mut self) -> Result<(), CallError> {
        self.reset().map_err(client_error("device reset"))
    }
}

/// Largest read or write of an in-process function: the size of a stream record.
const IN_PROCESS_CHUNK: u32 = 1 << 20;

fn failure(what: impl Into<String>) -> impl FnOnce(MigrationFailure) -> CallError {
    move |source| CallError {
        what: what.into(),
        errno: source.errno(),
        source: Box::new(source),
        reason: None,
    }
}

/// The driver's calls on a function of this process.
macro_rules! in_process {
    ($device:ty) => {
        impl MigratableDevice for $device {
            fn flags(&mut self) -> Result<MigrationFlags, CallError> {
                self.migration_flags()
                    .ok_or(MigrationFailure::NotMigratable)
                    .map_err(failure("migration flags"))
            }

            fn set_state(&mut self, state: MigrationState) -> Result<(), CallError> {
                self.set_migration_state(state)
                    .map(drop)
                    .map_err(failure(format!("set state {state:?}")))
            }

            fn read(&mut self, max: u32) -> Result<Vec<u8>, CallError> {
                let mut data = Vec::new();
                let range = self.read_into(max, &mut data)?;
                data.truncate(range.end);
                Ok(data)
            }

            fn read_into(
                &mut self,
                max: u32,
                buf: &mut Vec<u8>,
            ) -> Result<std::ops::Range<usize>, CallError> {
                // Only bytes past the previous length are zeroed (and faulted in) again.
                buf.resize(max as usize, 0);
                let n = self
                    .migration_read(buf)
                    .map_err(failure("migration read"))?;
                Ok(0..n)
            }

            fn write(&mut self, data: &[u8]) -> Result<(), CallError> {
                self.migration_write(data)
                    .map_err(failure("migration write"))
            }

            fn chunk_size(&self) -> u32 {
                IN_PROCESS_CHUNK
            }

            fn recover(&mut self) -> Result<(), CallError> {
                self.reset().map_err(|source| CallError {
                    what: "device reset".into(),
                    errno: source.errno(),
                    source: Box::new(source),
                    reason: None,
                })
            }
        }
    };
}

in_process!(VirtualFunction);
// A function shared with the VMM's vCPU threads: the same calls, through the `Arc`.
in_process!(Arc<VirtualFunction>);
