//! Twin-socket mode (vfio-user spec, VERSION, `twin_socket`): the server's own requests to
//! the client (DMA_READ, DMA_WRITE) and the client's replies to them travel on a second
//! socket, so the main socket carries only the client's commands and the server's replies.
//!
//! The server creates the pair when the client proposes the mode (`twin_socket.supported`)
//! and the server offers it; the client's end goes with the VERSION reply as fd `fd_index`
//! (0). From then on:
//!
//! - a DMA request is sent on the twin socket and its answer is read there by this module's
//!   reader thread, which hands it to the thread that asked (a device's worker, or the
//!   connection thread): the client can answer it on its own thread, whatever its main
//!   socket is doing;
//! - a reply that is bad (a header that parses but a payload that does not) fails its DMA
//!   only; a reply nobody waits for is dropped; a command from the client on the twin
//!   socket gets an error reply;
//! - a client that closes the twin socket (or sends what cannot be framed, or never reads it
//!   while a request waits to be written for longer than the DMA timeout) loses its
//!   connection: the reader shuts the main socket down, and the connection ends as if the
//!   client had gone;
//! - the connection's end closes the twin socket and joins the reader.

use std::io;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::{Mutex, RwLock};

use super::connection::{Outbox, Waiters};
use crate::backend::DmaError;
use crate::vfio_user::Limits;
use crate::vfio_user::header::Header;
use crate::vfio_user::socket::{MessageReader, ReadError};

/// The server's end of a connection's twin socket and the thread reading it.
pub(super) struct Twin {
    outbox: Arc<Outbox>,
    /// The server's end, shut down to end the mode.
    stream: UnixStream,
    reader: Mutex<Option<JoinHandle<()>>>,
}

impl Twin {
    /// Serves the server's end `stream` of the twin socket: answers go to `waiters`; `main`
    /// (a handle on the main socket) is shut down when the twin socket ends. A request that
    /// cannot be written within `timeout` ends the twin socket.
    pub(super) fn start(
        stream: UnixStream,
        waiters: Arc<Waiters>,
        limits: Arc<RwLock<Limits>>,
        main: UnixStream,
        timeout: Duration,
    ) -> io::Result<Self> {
        stream.set_write_timeout(Some(timeout))?;
        let outbox = Arc::new(Outbox::new(stream.try_clone()?));
        let read_side = stream.try_clone()?;
        let span = tracing::Span::current();
        let name = std::thread::current()
            .name()
            .map_or_else(|| "twin".to_string(), |n| format!("twin of {n}"));
        let reader = {
            let outbox = Arc::clone(&outbox);
            std::thread::Builder::new().name(name).spawn(move || {
                let _entered = span.enter();
                read_answers(&read_side, &waiters, &limits, &outbox);
                // However the twin socket ended, the connection ends with it.
                waiters.clear();
                let _ = main.shutdown(std::net::Shutdown::Both);
            })?
        };
        Ok(Self {
            outbox,
            stream,
            reader: Mutex::new(Some(reader)),
        })
    }

    /// Sends one request. A request that could not be written (whole) leaves the stream out
    /// of step: the twin socket, and with it the connection, ends.
    pub(super) fn send(&self, header: &Header, payload: &[u8]) -> io::Result<()> {
        let sent = self.outbox.send(header, payload, &[]);
        if sent.is_err() {
            let _ = self.stream.shutdown(std::net::Shutdown::Both);
        }
        sent
    }

    /// Ends the mode: the twin socket is shut down and its reader joined.
    pub(super) fn close(&self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
        let reader = self.reader.lock().take();
        if let Some(reader) = reader {
            let _ = reader.join();
        }
    }
}

/// Reads the twin socket until it ends, handing answers to their waiters.
fn read_answers(stream: &UnixStream, waiters: &Waiters, limits: &RwLock<Limits>, outbox: &Outbox) {
    let mut reader = MessageReader::new();
    loop {
        let limits = limits.read().clone();
        match reader.read(stream.as_fd(), &limits) {
            Ok(message) if message.header.is_reply() => {
                waiters.deliver(message.header.msg_id, Ok(message));
            }
            Ok(message) => {
                tracing::debug!(
                    command = message.header.command,
                    "command from the client on the twin socket refused"
                );
                if outbox.error(&message.header, libc::EINVAL).is_err() {
                    return;
                }
            }
            Err(ReadError::Invalid {
                header,
                error,
                resynced: true,
            }) => {
                if header.is_reply() {
                    let why = format!("bad reply on the twin socket: {error}");
                    waiters.deliver(header.msg_id, Err(DmaError::Transfer(why)));
                } else if outbox.error(&header, error.errno()).is_err() {
                    return;
                }
            }
            Err(ReadError::Invalid { error, .. }) => {
                tracing::warn!("the client broke the twin socket's framing: {error}");
                return;
            }
            Err(ReadError::Closed) => {
                tracing::debug!("the client closed the twin socket");
                return;
            }
            Err(ReadError::Io(e)) => {
                tracing::debug!("twin socket: {e}");
                return;
            }
        }
    }
}
