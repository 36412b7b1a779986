//! The client's side of twin-socket mode: a thread that answers the server's DMA_READ and
//! DMA_WRITE requests on the twin socket (the fd the VERSION reply named by `fd_index`) with
//! the client's [`DmaHandler`](super::DmaHandler), whatever the main socket is doing. It ends
//! when the server closes the twin socket or when the client is dropped.

use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::thread::JoinHandle;
use std::time::Duration;

use rustix::fs::FileType;

use super::Limits;
use super::client::{SharedHandler, answer_request};
use super::dma::DmaLayout;
use super::socket::{ReadError, read_message, write_error_reply, write_reply};

/// The thread serving the twin socket; dropping it closes the socket and joins the thread.
pub(super) struct TwinServer {
    stream: UnixStream,
    thread: Option<JoinHandle<()>>,
}

impl TwinServer {
    /// Serves the twin socket `fd` with `dma`. Writes give up after `timeout` (a server
    /// that never reads loses its answers, not the client's thread).
    pub(super) fn start(
        fd: OwnedFd,
        dma: SharedHandler,
        limits: Limits,
        layout: DmaLayout,
        timeout: Option<Duration>,
    ) -> io::Result<Self> {
        let stat = rustix::fs::fstat(&fd)?;
        if FileType::from_raw_mode(stat.st_mode) != FileType::Socket {
            return Err(io::Error::other("the twin socket fd is no socket"));
        }
        let stream = UnixStream::from(fd);
        stream.set_read_timeout(None)?;
        stream.set_write_timeout(timeout)?;
        let served = stream.try_clone()?;
        let thread = std::thread::Builder::new()
            .name("vfio-user twin".into())
            .spawn(move || serve(&served, &dma, &limits, layout))?;
        Ok(Self {
            stream,
            thread: Some(thread),
        })
    }
}

impl Drop for TwinServer {
    fn drop(&mut self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Answers the server's requests until the twin socket ends or breaks.
fn serve(stream: &UnixStream, dma: &SharedHandler, limits: &Limits, layout: DmaLayout) {
    loop {
        let sent = match read_message(stream, limits) {
            Ok(msg) if msg.header.is_reply() => {
                tracing::debug!(id = msg.header.msg_id, "reply on the twin socket dropped");
                Ok(())
            }
            Ok(msg) => match answer_request(&msg, dma, limits, layout) {
                Ok(payload) => write_reply(stream, &msg.header, &payload, &[]),
                Err(errno) => write_error_reply(stream, &msg.header, errno),
            },
            Err(ReadError::Invalid {
                header,
                error,
                resynced: true,
            }) if !header.is_reply() => write_error_reply(stream, &header, error.errno()),
            Err(ReadError::Invalid { resynced: true, .. }) => Ok(()),
            Err(e) => {
                tracing::debug!("twin socket: {e}");
                return;
            }
        };
        if let Err(e) = sent {
            tracing::debug!("twin socket: {e}");
            return;
        }
    }
}
