//! The destination side: where the source's stream goes, in the same process or across a link.

use std::io::{Read, Write};

use super::link::{LINK_VERSION, LinkError, Message};
use super::{CallError, MigratableDevice, MigrateError};
use crate::migration::MigrationState;
use std::sync::Arc;

use crate::vfio_user::shared_buf::SharedBuffer;

/// Where the source side sends the stream.
pub trait Destination {
    /// Puts the destination device in RESUMING.
    fn begin(&mut self) -> Result<(), MigrateError>;
    /// The next bytes of the stream.
    fn send(&mut self, data: &[u8]) -> Result<(), MigrateError>;
    /// The next bytes of the stream, `len` at `offset` in a buffer shared with the source's
    /// server. A destination on this host that registered the same buffer takes them from
    /// there; one across a link sends a copy (the default).
    fn send_shared(
        &mut self,
        buffer: &Arc<SharedBuffer>,
        offset: u64,
        len: usize,
    ) -> Result<(), MigrateError> {
        let bytes = super::copy_shared(buffer, offset, len)
            .map_err(|e| MigrateError::Destination(e.to_string()))?;
        self.send(&bytes)
    }
    /// Sends the bytes [`Destination::send_shared`] would, without waiting for the
    /// destination to take them; [`Destination::send_shared`] of the same bytes then waits
    /// for that, in the order sent. False (the default) when the destination takes bytes
    /// only when they are sent.
    fn send_shared_ahead(
        &mut self,
        buffer: &Arc<SharedBuffer>,
        offset: u64,
        len: usize,
    ) -> Result<bool, MigrateError> {
        let _ = (buffer, offset, len);
        Ok(false)
    }
    /// Returns once everything sent so far is loaded, or with the destination's refusal.
    fn sync(&mut self) -> Result<(), MigrateError>;
    /// The stream is complete: the destination checks it and runs.
    fn finish(&mut self) -> Result<(), MigrateError>;
    /// Abandons the migration; the destination device is put back as it was (best effort).
    fn abort(&mut self);
}

/// A destination device in this process (or reached over its own vfio-user connection).
pub struct LocalDestination<'a, D: MigratableDevice + ?Sized> {
    device: &'a mut D,
}

impl<'a, D: MigratableDevice + ?Sized> LocalDestination<'a, D> {
    /// Loads into `device`.
    pub fn new(device: &'a mut D) -> Self {
        Self { device }
    }
}

fn refused(e: CallError) -> MigrateError {
    MigrateError::Destination(e.to_string())
}

impl<D: MigratableDevice + ?Sized> Destination for LocalDestination<'_, D> {
    fn begin(&mut self) -> Result<(), MigrateError> {
        self.device
            .set_state(MigrationState::Resuming)
            .map_err(refused)
    }

    fn send(&mut self, data: &[u8]) -> Result<(), MigrateError> {
        self.device.write(data).map_err(refused)
    }

    fn send_shared(
        &mut self,
        buffer: &Arc<SharedBuffer>,
        offset: u64,
        len: usize,
    ) -> Result<(), MigrateError> {
        self.device
            .write_shared(buffer, offset, len)
            .map_err(refused)
    }

    fn send_shared_ahead(
        &mut self,
        buffer: &Arc<SharedBuffer>,
        offset: u64,
        len: usize,
    ) -> Result<bool, MigrateError> {
        self.device
            .write_ahead(buffer, offset, len)
            .map_err(refused)
    }

    fn sync(&mut self) -> Result<(), MigrateError> {
        Ok(())
    }

    fn finish(&mut self) -> Result<(), MigrateError> {
        self.device
            .set_state(MigrationState::Running)
            .map_err(refused)
    }

    fn abort(&mut self) {
        if let Err(e) = self.device.recover() {
            tracing::warn!("destination not put back after an abandoned migration: {e}");
        }
    }
}

/// A destination reached over a link (TCP to a `vfio-variant migrate-agent`, or to the
/// destination VMM), whose other end runs [`serve_destination`].
pub struct RemoteDestination<L: Read + Write> {
    link: L,
    function: String,
}

impl<L: Read + Write> RemoteDestination<L> {
    /// Migrates into the function called `function` at the other end of `link`.
    pub fn new(link: L, function: impl Into<String>) -> Self {
        Self {
            link,
            function: function.into(),
        }
    }

    fn expect(&mut self, want: &Message) -> Result<(), MigrateError> {
        match Message::read_from(&mut self.link)? {
            Message::Refused(reason) => Err(MigrateError::Destination(reason)),
            got if &got == want => Ok(()),
            got => Err(LinkError::Invalid(format!("expected {want:?}, got {got:?}")).into()),
        }
    }
}

impl<L: Read + Write> Destination for RemoteDestination<L> {
    fn begin(&mut self) -> Result<(), MigrateError> {
        Message::Hello {
            version: LINK_VERSION,
            function: self.function.clone(),
        }
        .write_to(&mut self.link)?;
        self.expect(&Message::Ready)
    }

    fn send(&mut self, data: &[u8]) -> Result<(), MigrateError> {
        for part in data.chunks(super::link::MAX_DATA) {
            Message::Data(part.to_vec()).write_to(&mut self.link)?;
        }
        Ok(())
    }

    fn sync(&mut self) -> Result<(), MigrateError> {
        Message::Sync.write_to(&mut self.link)?;
        self.expect(&Message::Ack)
    }

    fn finish(&mut self) -> Result<(), MigrateError> {
        Message::Finish.write_to(&mut self.link)?;
        self.expect(&Message::Resumed)
    }

    fn abort(&mut self) {
        if let Err(e) = Message::Abort.write_to(&mut self.link) {
            tracing::debug!("abort not delivered: {e}");
        }
    }
}

/// How a served migration ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Served {
    /// The destination runs with the migrated state.
    Resumed {
        /// Bytes of stream loaded.
        bytes: u64,
    },
    /// The migration was refused or abandoned; the device was put back.
    Refused(String),
}

/// The destination side of one migration over `link`: answers HELLO by putting the device
/// `open` returns for the named function in RESUMING, loads the DATA, and resumes it on
/// FINISH. A refused stream, an ABORT or a broken link put the device back
/// ([`MigratableDevice::recover`]).
pub fn serve_destination<L, D, O>(link: &mut L, open: O) -> Result<Served, LinkError>
where
    L: Read + Write,
    D: MigratableDevice,
    O: FnOnce(&str) -> Result<D, String>,
{
    let function = match Message::read_from(link)? {
        Message::Hello { version, function } if version == LINK_VERSION => function,
        Message::Hello { version, .. } => {
            let reason = format!("link version {version}, this side speaks {LINK_VERSION}");
            Message::Refused(reason.clone()).write_to(link)?;
            return Ok(Served::Refused(reason));
        }
        other => return Err(LinkError::Invalid(format!("expected HELLO, got {other:?}"))),
    };
    let mut device = match open(&function) {
        Ok(device) => device,
        Err(reason) => {
            Message::Refused(reason.clone()).write_to(link)?;
            return Ok(Served::Refused(reason));
        }
    };
    let refuse = |device: &mut D, link: &mut L, reason: String| {
        if let Err(e) = device.recover() {
            tracing::warn!("{function}: not put back after a refused migration: {e}");
        }
        Message::Refused(reason.clone()).write_to(link)?;
        // Take what the source sent before it read the refusal, so that it reads the
        // refusal rather than a reset link.
        while !matches!(Message::read_from(link), Ok(Message::Abort) | Err(_)) {}
        Ok(Served::Refused(reason))
    };
    if let Err(e) = device.set_state(MigrationState::Resuming) {
        return refuse(&mut device, link, e.to_string());
    }
    Message::Ready.write_to(link)?;
    let mut bytes = 0u64;
    loop {
        let message = match Message::read_from(link) {
            Ok(message) => message,
            Err(e) => {
                if let Err(e) = device.recover() {
                    tracing::warn!("{function}: not put back after a broken link: {e}");
                }
                return Err(e);
            }
        };
        match message {
            Message::Data(data) => {
                if let Err(e) = device.write(&data) {
                    return refuse(&mut device, link, format!("stream refused: {e}"));
                }
                bytes += data.len() as u64;
            }
            Message::Sync => Message::Ack.write_to(link)?,
            Message::Finish => {
                if let Err(e) = device.set_state(MigrationState::Running) {
                    return refuse(&mut device, link, format!("stream refused: {e}"));
                }
                Message::Resumed.write_to(link)?;
                return Ok(Served::Resumed { bytes });
            }
            Message::Abort => {
                if let Err(e) = device.recover() {
                    tracing::warn!("{function}: not put back after an abort: {e}");
                }
                return Ok(Served::Refused("abandoned by the source".into()));
            }
            other => {
                let reason = format!("unexpected {other:?} while resuming");
                return refuse(&mut device, link, reason);
            }
        }
    }
}
