//! One client connection, served by one thread: it reads a message, runs it, answers, in
//! order. When a command needs client memory that was mapped without an fd, the same thread
//! sends DMA_READ/DMA_WRITE and keeps reading the socket until the answer comes, queueing
//! commands that arrive meanwhile; so the answer is never stuck behind the command that
//! asked for it. Device threads doing such DMA send their request and are handed the answer
//! by the connection thread, also while that thread waits for a device's worker to finish
//! (it pumps the socket meanwhile: [`crate::backend::worker`]).
//!
//! In twin-socket mode (the client asked for it in VERSION) those requests and their answers
//! use the second socket instead ([`super::twin`]): the main socket then carries only the
//! client's commands and the server's replies.

use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::thread::ThreadId;
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec, poll};

use parking_lot::{Mutex, RwLock};

use super::dma::RemoteMemory;
use super::handler::Session;
use super::twin::Twin;
use super::{Port, ServerConfig};
use crate::backend::DmaError;
use crate::backend::worker::{Pump, with_pump};
use crate::vfio_user::dma::{DmaLayout, DmaRead, DmaReadReply, DmaWrite};
use crate::vfio_user::header::{Command, Header};
use crate::vfio_user::socket::{
    Message, MessageReader, ReadError, widen_send_buffer, write_error_reply, write_message,
};
use crate::vfio_user::{Limits, Payload};

/// Commands that may wait while the connection thread waits for a DMA answer; past this (or
/// past [`MAX_QUEUED_BYTES`] of payload or [`MAX_QUEUED_FDS`] fds held by them) the DMA fails
/// rather than memory or fds growing without bound.
const MAX_QUEUED: usize = 4096;
/// Payload bytes the queued commands may hold.
const MAX_QUEUED_BYTES: usize = 16 << 20;
/// Fds the queued commands may hold.
const MAX_QUEUED_FDS: usize = 64;

/// Whether `queued` has room for `message`.
fn room_for(queued: &VecDeque<Message>, message: &Message) -> bool {
    let (bytes, fds) = queued
        .iter()
        .fold((0, 0), |(b, f), m| (b + m.payload.len(), f + m.fds.len()));
    queued.len() < MAX_QUEUED
        && bytes + message.payload.len() <= MAX_QUEUED_BYTES
        && fds + message.fds.len() <= MAX_QUEUED_FDS
}

/// The write side of a connection, shared by the connection thread and device threads.
pub(crate) struct Outbox {
    stream: UnixStream,
    lock: Mutex<()>,
}

impl Outbox {
    /// Sizes the socket's send buffer for messages of `limits` (a hint the kernel may cap).
    pub fn fit(&self, limits: &Limits) {
        widen_send_buffer(&self.stream, limits);
    }

    /// Whether the connection can carry fds: only a Unix socket passes them (SCM_RIGHTS),
    /// whatever type the stream was wrapped in.
    pub fn passes_fds(&self) -> bool {
        rustix::net::sockopt::socket_domain(&self.stream)
            .is_ok_and(|domain| domain == rustix::net::AddressFamily::UNIX)
    }

    /// The write side of `stream`.
    pub fn new(stream: UnixStream) -> Self {
        Self {
            stream,
            lock: Mutex::new(()),
        }
    }

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

/// The read side of a connection.
pub(crate) struct Inbox {
    stream: UnixStream,
    limits: Arc<RwLock<Limits>>,
    /// Spin this long for a message before sleeping (polling mode).
    poll: Option<Duration>,
    /// Commands read while waiting for a DMA answer, run next.
    queued: Mutex<VecDeque<Message>>,
    /// Reads many messages per system call when the client sends faster than they run.
    reader: Mutex<MessageReader>,
}

/// What the connection thread got from the socket.
enum Incoming {
    Command(Message),
    Reply(Message),
    /// A message refused with this errno; the stream is still in sync.
    Refused(Header, i32),
    /// The connection is over.
    Closed,
}

impl Inbox {
    /// Polling mode: spins until the socket has data or the budget is spent.
    fn spin(&self, budget: Duration) {
        let start = Instant::now();
        let mut fds = [PollFd::new(&self.stream, PollFlags::IN)];
        while start.elapsed() < budget {
            if matches!(poll(&mut fds, Some(&Timespec::default())), Ok(n) if n > 0) {
                return;
            }
            std::hint::spin_loop();
        }
    }

    fn read(&self) -> Incoming {
        let mut reader = self.reader.lock();
        if let Some(budget) = self.poll
            && !reader.has_message()
        {
            self.spin(budget);
        }
        let limits = self.limits.read().clone();
        match reader.read(self.stream.as_fd(), &limits) {
            Ok(message) if message.header.is_reply() => Incoming::Reply(message),
            Ok(message) => Incoming::Command(message),
            Err(ReadError::Invalid {
                header,
                error,
                resynced: true,
            }) => {
                tracing::debug!("bad message from the client: {error}");
                Incoming::Refused(header, error.errno())
            }
            Err(ReadError::Invalid { error, .. }) => {
                tracing::debug!("unrecoverable message from the client: {error}");
                Incoming::Closed
            }
            Err(ReadError::Closed) => Incoming::Closed,
            Err(ReadError::Io(e)) => {
                tracing::debug!("client socket: {e}");
                Incoming::Closed
            }
        }
    }
}

/// What a DMA request waits for: the client's answer, or why there is none.
pub(super) type Answer = Result<Message, DmaError>;

/// The DMA requests waiting for their answer, by message id.
#[derive(Default)]
pub(super) struct Waiters(Mutex<HashMap<u16, SyncSender<Answer>>>);

impl Waiters {
    /// Registers a request under `id`; its answer comes on the receiver.
    fn register(&self, id: u16) -> Receiver<Answer> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.0.lock().insert(id, tx);
        rx
    }

    /// Forgets the request under `id` (answered, or given up).
    fn forget(&self, id: u16) {
        self.0.lock().remove(&id);
    }

    /// Hands `answer` to the request waiting under `id`; an answer nobody waits for is
    /// dropped.
    pub(super) fn deliver(&self, id: u16, answer: Answer) {
        if let Some(waiter) = self.0.lock().remove(&id) {
            let _ = waiter.send(answer);
        } else {
            tracing::debug!(id, "reply to no pending request dropped");
        }
    }

    /// Fails every waiting request at once (their waiters see the channel closed).
    pub(super) fn clear(&self) {
        self.0.lock().clear();
    }
}

/// Client memory without an fd, reached with DMA_READ/DMA_WRITE on this connection.
pub(crate) struct RemoteDma {
    outbox: Arc<Outbox>,
    inbox: Arc<Inbox>,
    connection_thread: ThreadId,
    waiters: Arc<Waiters>,
    next_id: AtomicU16,
    layout: DmaLayout,
    timeout: Duration,
    /// The twin socket, once VERSION set twin-socket mode up.
    twin: OnceLock<Twin>,
}

impl RemoteDma {
    fn transact(&self, command: Command, payload: &[u8]) -> Result<Message, DmaError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let header = Header::request(id, command, payload.len());
        let answer = match self.twin.get() {
            Some(twin) => self.transact_on_twin(twin, command, &header, payload)?,
            None => self.transact_on_main(command, &header, payload)?,
        };
        if answer.header.command != command.raw() {
            return Err(DmaError::Transfer(format!(
                "the client answered {command:?} with a reply to command {}",
                answer.header.command
            )));
        }
        if answer.header.is_error() {
            return Err(DmaError::Transfer(format!(
                "the client refused {command:?} (errno {})",
                answer.header.errno()
            )));
        }
        Ok(answer)
    }

    /// Twin-socket mode: the request goes on the twin socket and its reader hands the
    /// answer over, whichever thread asks (the main socket is not read for it).
    fn transact_on_twin(
        &self,
        twin: &Twin,
        command: Command,
        header: &Header,
        payload: &[u8],
    ) -> Answer {
        let id = header.msg_id;
        let answer = self.waiters.register(id);
        if let Err(e) = twin.send(header, payload) {
            self.waiters.forget(id);
            return Err(DmaError::Transfer(format!(
                "sending {command:?} on the twin socket: {e}"
            )));
        }
        let answer = answer.recv_timeout(self.timeout);
        self.waiters.forget(id);
        answer.map_err(|_| {
            DmaError::Transfer(format!(
                "no answer to {command:?} on the twin socket within {:?}",
                self.timeout
            ))
        })?
    }

    /// One socket: the request goes on the main socket; the connection thread reads the
    /// answer itself, other threads are handed it by the connection thread.
    fn transact_on_main(&self, command: Command, header: &Header, payload: &[u8]) -> Answer {
        let id = header.msg_id;
        let inline = std::thread::current().id() == self.connection_thread;
        let waiter = (!inline).then(|| self.waiters.register(id));
        if let Err(e) = self.outbox.send(header, payload, &[]) {
            self.waiters.forget(id);
            return Err(DmaError::Transfer(format!("sending {command:?}: {e}")));
        }
        match waiter {
            Some(rx) => {
                let answer = rx.recv_timeout(self.timeout);
                self.waiters.forget(id);
                answer.map_err(|_| {
                    DmaError::Transfer(format!("no answer to {command:?} from the client"))
                })?
            }
            None => self.read_answer(id, command),
        }
    }

    /// Sets twin-socket mode up on `stream`, the server's end of the pair whose other end
    /// went to the client with the VERSION reply.
    fn attach_twin(&self, stream: UnixStream, main: &UnixStream) -> std::io::Result<()> {
        let twin = Twin::start(
            stream,
            Arc::clone(&self.waiters),
            Arc::clone(&self.inbox.limits),
            main.try_clone()?,
            self.timeout,
        )?;
        if let Err(twin) = self.twin.set(twin) {
            twin.close();
        }
        Ok(())
    }

    /// On the connection thread: reads until the answer to `id` comes, queueing commands and
    /// handing other answers to their waiters.
    fn read_answer(&self, id: u16, command: Command) -> Answer {
        loop {
            match self.inbox.read() {
                Incoming::Reply(message) if message.header.msg_id == id => return Ok(message),
                Incoming::Reply(message) => self.deliver(message),
                Incoming::Command(message) => {
                    let mut queued = self.inbox.queued.lock();
                    if !room_for(&queued, &message) {
                        return Err(DmaError::Transfer(format!(
                            "the client sent {} commands without answering {command:?}",
                            queued.len() + 1
                        )));
                    }
                    queued.push_back(message);
                }
                Incoming::Refused(header, errno) => {
                    let _ = self.outbox.error(&header, errno);
                }
                Incoming::Closed => {
                    return Err(DmaError::Transfer(format!(
                        "the client went away before answering {command:?}"
                    )));
                }
            }
        }
    }

    /// Hands a reply read on the main socket to the device thread waiting for it. In
    /// twin-socket mode answers belong on the twin socket: one on the main socket is dropped.
    fn deliver(&self, message: Message) {
        if self.twin.get().is_some() {
            tracing::debug!(
                id = message.header.msg_id,
                "reply on the main socket in twin-socket mode dropped"
            );
            return;
        }
        self.waiters.deliver(message.header.msg_id, Ok(message));
    }

    /// Ends twin-socket mode and fails every waiting request (the connection is going away).
    fn fail_all(&self) {
        if let Some(twin) = self.twin.get() {
            twin.close();
        }
        self.waiters.clear();
    }

    fn chunk(&self) -> usize {
        usize::try_from(self.inbox.limits.read().max_data_xfer_size)
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
            let limits = self.inbox.limits.read().clone();
            let reply = DmaReadReply::parse_layout(&message.payload, &limits, self.layout)
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

/// What the connection thread does while a command waits for a device's worker: reads the
/// socket, handing DMA answers to their waiters and queueing commands.
struct ConnectionPump {
    inbox: Arc<Inbox>,
    outbox: Arc<Outbox>,
    remote: Arc<RemoteDma>,
}

impl Pump for ConnectionPump {
    fn pump(&self, wake: BorrowedFd<'_>) -> bool {
        if self.inbox.queued.lock().len() >= MAX_QUEUED {
            // No room to queue what comes: stop reading (the worker's DMA times out).
            return false;
        }
        // A message read along with the one before it sits in the reader, and the socket
        // then looks idle: polling for it would wait until the worker gave up.
        if !self.inbox.reader.lock().has_message() {
            let mut fds = [
                PollFd::new(&self.inbox.stream, PollFlags::IN),
                PollFd::from_borrowed_fd(wake, PollFlags::IN),
            ];
            match poll(&mut fds, None) {
                Ok(_) if !fds[1].revents().is_empty() => return true,
                Ok(_) if !fds[0].revents().is_empty() => {}
                Ok(_) | Err(rustix::io::Errno::INTR) => return true,
                Err(_) => return false,
            }
        }
        match self.inbox.read() {
            Incoming::Reply(message) => self.remote.deliver(message),
            Incoming::Command(message) => self.inbox.queued.lock().push_back(message),
            Incoming::Refused(header, errno) => {
                let _ = self.outbox.error(&header, errno);
            }
            Incoming::Closed => return false,
        }
        true
    }
}

/// Serves one client on the calling thread until it disconnects (or breaks the protocol
/// beyond recovery); then unmaps its DMA and closes its eventfds. The device state stays.
pub(crate) fn serve(port: Arc<Port>, config: Arc<ServerConfig>, stream: UnixStream) {
    let (Ok(write_side), Ok(read_side)) = (stream.try_clone(), stream.try_clone()) else {
        tracing::warn!("cannot clone the client socket");
        return;
    };
    let outbox = Arc::new(Outbox::new(write_side));
    let limits = Arc::new(RwLock::new(config.limits.clone()));
    let inbox = Arc::new(Inbox {
        stream: read_side,
        limits: Arc::clone(&limits),
        poll: config.poll,
        queued: Mutex::new(VecDeque::new()),
        reader: Mutex::new(MessageReader::new()),
    });
    let remote = Arc::new(RemoteDma {
        outbox: Arc::clone(&outbox),
        inbox: Arc::clone(&inbox),
        connection_thread: std::thread::current().id(),
        waiters: Arc::new(Waiters::default()),
        next_id: AtomicU16::new(0),
        layout: config.dma_layout,
        timeout: config.dma_timeout,
        twin: OnceLock::new(),
    });
    port.dma
        .set_remote(Some(Arc::clone(&remote) as Arc<dyn RemoteMemory>));

    let pump = ConnectionPump {
        inbox: Arc::clone(&inbox),
        outbox: Arc::clone(&outbox),
        remote: Arc::clone(&remote),
    };
    let mut session = Session::new(&port, &config, &outbox, &limits);
    loop {
        let queued = inbox.queued.lock().pop_front();
        let incoming = match queued {
            Some(message) => Incoming::Command(message),
            None => inbox.read(),
        };
        match incoming {
            Incoming::Command(message) => {
                let mut spent = Vec::new();
                let keep = with_pump(&pump, || session.handle(message, &mut spent));
                inbox.reader.lock().recycle(spent);
                if !keep {
                    // A fatal protocol error (e.g. an unsupported major version): close.
                    break;
                }
                if let Some(twin) = session.take_twin()
                    && let Err(e) = remote.attach_twin(twin, &stream)
                {
                    // The client was told twin-socket mode is on: without it, close.
                    tracing::warn!("{}: cannot serve the twin socket: {e}", port.name());
                    break;
                }
            }
            Incoming::Reply(message) => remote.deliver(message),
            Incoming::Refused(header, errno) => {
                if outbox.error(&header, errno).is_err() {
                    break;
                }
            }
            Incoming::Closed => break,
        }
    }
    let _ = stream.shutdown(std::net::Shutdown::Both);
    remote.fail_all();
    // A logging session ends with its client, as it does when a VFIO device fd is closed.
    port.logging.stop(&port.function);
    port.dma.set_remote(None);
    port.dma.clear();
    port.irqs.clear();
    // On a real device: the client's memory leaves the IOMMU and its eventfds are unwired.
    if let Some(direct) = port.function.direct() {
        direct.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(payload: usize, fds: usize) -> Message {
        Message {
            header: Header::request(0, Command::RegionWrite, payload),
            payload: vec![0; payload],
            fds: (0..fds)
                .map(|_| rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC).unwrap())
                .collect(),
        }
    }

    /// A command and the answer to a device's DMA request that arrive in one read: the
    /// pump hands the buffered answer over at once instead of polling the idle socket.
    #[test]
    fn the_pump_hands_over_an_answer_already_read_with_the_command_before_it() {
        let (server, mut client) = UnixStream::pair().unwrap();
        let inbox = Arc::new(Inbox {
            stream: server.try_clone().unwrap(),
            limits: Arc::new(RwLock::new(Limits::default())),
            poll: None,
            queued: Mutex::new(VecDeque::new()),
            reader: Mutex::new(MessageReader::new()),
        });
        let outbox = Arc::new(Outbox::new(server));
        let remote = Arc::new(RemoteDma {
            outbox: Arc::clone(&outbox),
            inbox: Arc::clone(&inbox),
            connection_thread: std::thread::current().id(),
            waiters: Arc::new(Waiters::default()),
            next_id: AtomicU16::new(0),
            layout: DmaLayout::Spec,
            timeout: Duration::from_secs(1),
            twin: OnceLock::new(),
        });
        let answer = remote.waiters.register(7);
        let mut bytes = Header::request(1, Command::DeviceReset, 0)
            .encode()
            .to_vec();
        bytes.extend_from_slice(&Header::request(7, Command::DmaWrite, 0).reply(0).encode());
        std::io::Write::write_all(&mut client, &bytes).unwrap();
        assert!(matches!(inbox.read(), Incoming::Command(_)));
        assert!(inbox.reader.lock().has_message(), "both were read at once");

        let pump = ConnectionPump {
            inbox,
            outbox,
            remote: Arc::clone(&remote),
        };
        // The worker's wake-up fd never fires here: only the buffered answer can end the
        // pump's turn (a pump that polled the socket would block for good).
        let (done_tx, done) = mpsc::channel();
        std::thread::spawn(move || {
            let wake = rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC).unwrap();
            done_tx.send(pump.pump(wake.as_fd())).unwrap();
        });
        assert_eq!(done.recv_timeout(Duration::from_secs(30)), Ok(true));
        let delivered = answer.try_recv().expect("answer handed over").unwrap();
        assert_eq!(delivered.header.msg_id, 7);
        drop(client);
    }

    #[test]
    fn queued_commands_are_bounded_in_number_bytes_and_fds() {
        let mut queued = VecDeque::new();
        for _ in 0..MAX_QUEUED_FDS / 16 {
            assert!(room_for(&queued, &message(0, 16)));
            queued.push_back(message(0, 16));
        }
        assert!(!room_for(&queued, &message(0, 1)), "fds");
        assert!(room_for(&queued, &message(MAX_QUEUED_BYTES, 0)));
        queued.push_back(message(MAX_QUEUED_BYTES - 1, 0));
        assert!(!room_for(&queued, &message(2, 0)), "bytes");
        queued.clear();
        queued.extend((0..MAX_QUEUED).map(|_| message(0, 0)));
        assert!(!room_for(&queued, &message(0, 0)), "count");
    }
}
