//! One client connection: a reader thread demultiplexes the socket (commands to the worker,
//! replies to the server's own DMA requests to their waiters), the worker runs commands in
//! order. A command that needs client memory without an fd sends DMA_READ/DMA_WRITE and waits
//! while the reader keeps reading, so the client's answer is never stuck behind the command.

use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::time::Duration;

use parking_lot::{Mutex, RwLock};

use super::dma::RemoteMemory;
use super::handler::Session;
use super::{Port, ServerConfig};
use crate::backend::DmaError;
use crate::vfio_user::dma::{DmaLayout, DmaRead, DmaReadReply, DmaWrite};
use crate::vfio_user::header::{Command, Header};
use crate::vfio_user::socket::{
    Message, ReadError, read_message, write_error_reply, write_message,
};
use crate::vfio_user::{Limits, Payload};

/// Commands queued between the reader and the worker; a client that floods the socket waits
/// on its own connection only.
const QUEUE_DEPTH: usize = 64;

/// The write side of a connection, shared by the worker and DMA requests from any thread.
pub(crate) struct Outbox {
    stream: UnixStream,
    lock: Mutex<()>,
}

impl Outbox {
    /// Sends one message, whole, even when several threads send at once.
    pub fn send(
        &self,
        header: &Header,
        payload: &[u8],
        fds: &[BorrowedFd<'_>],
    ) -> std::io::Result<()> {
        let _guard = self.lock.lock();
        write_message(self.stream.as_fd(), header, payload, fds)
    }

    /// Sends an error reply to `request` (nothing for a No_reply command).
    pub fn error(&self, request: &Header, errno: i32) -> std::io::Result<()> {
        let _guard = self.lock.lock();
        write_error_reply(self.stream.as_fd(), request, errno)
    }
}

/// Client memory without an fd, reached with DMA_READ/DMA_WRITE on this connection.
pub(crate) struct RemoteDma {
    outbox: Arc<Outbox>,
    pending: Mutex<HashMap<u16, SyncSender<Message>>>,
    next_id: AtomicU16,
    limits: Arc<RwLock<Limits>>,
    layout: DmaLayout,
    timeout: Duration,
}

impl RemoteDma {
    fn transact(&self, command: Command, payload: &[u8]) -> Result<Message, DmaError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::sync_channel(1);
        self.pending.lock().insert(id, tx);
        let header = Header::request(id, command, payload.len());
        let sent = self.outbox.send(&header, payload, &[]);
        let answer = sent
            .map_err(|e| DmaError::Transfer(format!("sending {command:?}: {e}")))
            .and_then(|()| {
                rx.recv_timeout(self.timeout).map_err(|_| {
                    DmaError::Transfer(format!("no answer to {command:?} from the client"))
                })
            });
        self.pending.lock().remove(&id);
        let message = answer?;
        if message.header.is_error() {
            return Err(DmaError::Transfer(format!(
                "the client refused {command:?} (errno {})",
                message.header.errno()
            )));
        }
        Ok(message)
    }

    /// Hands a reply to the thread waiting for it; a reply nobody waits for is dropped.
    fn deliver(&self, message: Message) {
        if let Some(waiter) = self.pending.lock().remove(&message.header.msg_id) {
            let _ = waiter.send(message);
        } else {
            tracing::debug!(
                id = message.header.msg_id,
                "reply to no pending request dropped"
            );
        }
    }

    /// Fails every waiting request (the connection is going away).
    fn fail_all(&self) {
        self.pending.lock().clear();
    }

    fn chunk(&self) -> usize {
        usize::try_from(self.limits.read().max_data_xfer_size)
            .unwrap_or(usize::MAX)
            .max(1)
    }
}

impl RemoteMemory for RemoteDma {
    fn read(&self, address: u64, data: &mut [u8]) -> Result<(), DmaError> {
        let chunk = self.chunk();
        for (i, piece) in data.chunks_mut(chunk).enumerate() {
            let at = address + (i * chunk) as u64;
            let request = DmaRead {
                address: at,
                count: piece.len() as u64,
            };
            let message = self.transact(Command::DmaRead, &request.to_bytes())?;
            let reply =
                DmaReadReply::parse_layout(&message.payload, &self.limits.read(), self.layout)
                    .map_err(|e| DmaError::Transfer(format!("DMA_READ reply: {e}")))?;
            if reply.address != at || reply.data.len() != piece.len() {
                return Err(DmaError::Transfer(
                    "DMA_READ reply for another range".into(),
                ));
            }
            piece.copy_from_slice(&reply.data);
        }
        Ok(())
    }

    fn write(&self, address: u64, data: &[u8]) -> Result<(), DmaError> {
        let chunk = self.chunk();
        for (i, piece) in data.chunks(chunk).enumerate() {
            let request = DmaWrite {
                address: address + (i * chunk) as u64,
                data: piece.to_vec(),
            };
            let mut payload = Vec::with_capacity(piece.len() + 16);
            request.encode_layout(&mut payload, self.layout);
            self.transact(Command::DmaWrite, &payload)?;
        }
        Ok(())
    }
}

/// Serves one client until it disconnects (or breaks the protocol beyond recovery); then
/// unmaps its DMA and closes its eventfds. The device state stays.
pub(crate) fn serve(port: Arc<Port>, config: Arc<ServerConfig>, stream: UnixStream) {
    let outbox = match stream.try_clone() {
        Ok(s) => Arc::new(Outbox {
            stream: s,
            lock: Mutex::new(()),
        }),
        Err(e) => {
            tracing::warn!("cannot clone the client socket: {e}");
            return;
        }
    };
    let limits = Arc::new(RwLock::new(config.limits.clone()));
    let remote = Arc::new(RemoteDma {
        outbox: Arc::clone(&outbox),
        pending: Mutex::new(HashMap::new()),
        next_id: AtomicU16::new(0),
        limits: Arc::clone(&limits),
        layout: config.dma_layout,
        timeout: config.dma_timeout,
    });
    port.dma
        .set_remote(Some(Arc::clone(&remote) as Arc<dyn RemoteMemory>));

    let (queue, commands) = mpsc::sync_channel::<Message>(QUEUE_DEPTH);
    let worker = {
        let (port, config, outbox, limits) = (
            Arc::clone(&port),
            Arc::clone(&config),
            Arc::clone(&outbox),
            Arc::clone(&limits),
        );
        let shutdown = stream.try_clone().ok();
        std::thread::Builder::new()
            .name(format!("vfio-user {}", port.name))
            .spawn(move || run_worker(&port, &config, &outbox, &limits, commands, shutdown))
    };
    let worker = match worker {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!("cannot start a worker thread: {e}");
            port.dma.set_remote(None);
            return;
        }
    };
    read_loop(&stream, &limits, &outbox, &remote, &queue);
    drop(queue);
    let _ = worker.join();
    remote.fail_all();
    port.dma.set_remote(None);
    port.dma.clear();
    port.irqs.clear();
}

fn read_loop(
    stream: &UnixStream,
    limits: &RwLock<Limits>,
    outbox: &Outbox,
    remote: &RemoteDma,
    queue: &SyncSender<Message>,
) {
    loop {
        let limits = limits.read().clone();
        match read_message(stream.as_fd(), &limits) {
            Ok(message) if message.header.is_reply() => remote.deliver(message),
            Ok(message) => {
                if queue.send(message).is_err() {
                    return;
                }
            }
            Err(ReadError::Invalid {
                header,
                error,
                resynced,
            }) => {
                tracing::debug!("bad message from the client: {error}");
                if outbox.error(&header, error.errno()).is_err() || !resynced {
                    return;
                }
            }
            Err(ReadError::Closed) => return,
            Err(ReadError::Io(e)) => {
                tracing::debug!("client socket: {e}");
                return;
            }
        }
    }
}

fn run_worker(
    port: &Port,
    config: &ServerConfig,
    outbox: &Outbox,
    limits: &RwLock<Limits>,
    commands: Receiver<Message>,
    shutdown: Option<UnixStream>,
) {
    let mut session = Session::new(port, config, outbox, limits);
    for message in commands {
        if !session.handle(message) {
            // A fatal protocol error (e.g. an unsupported major version): close.
            if let Some(stream) = &shutdown {
                let _ = stream.shutdown(std::net::Shutdown::Both);
            }
            break;
        }
    }
}
