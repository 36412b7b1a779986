//! A blocking vfio-user client over a Unix stream socket.
//!
//! One request is outstanding at a time (posted writes aside). While the client waits for a
//! reply it answers the server's DMA_READ/DMA_WRITE requests through its [`DmaHandler`],
//! then goes on waiting. Replies are matched by message id and command; a reply with another
//! id (say, one that arrived after a timeout) is dropped.
//!
//! In twin-socket mode ([`ClientOptions::twin_socket`], when the server agrees) the server's
//! requests come on a second socket instead, answered by a thread of the client's own with
//! the same handler, whether or not a call is waiting; requests on the main socket are then
//! refused.
//!
//! With [`ClientOptions::mig_data_shared`], when the server agrees, migration data moves
//! through one buffer shared with the server ([`Client::register_mig_buffer`]) rather than
//! through the socket.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use rustix::io::Errno;

use super::access::{
    RegionRead, RegionReadReply, RegionWrite, WriteMulti, WriteMultiEntry, WriteMultiReply,
};
use super::device::DeviceInfo;
use super::dma::{DmaLayout, DmaMap, DmaRead, DmaReadReply, DmaUnmap, DmaWrite, DmaWriteReply};
use super::error::ProtocolError;
use super::feature::{
    DEVICE_FEATURE_SIZE, DeviceFeature, DmaLoggingControl, DmaLoggingRange, DmaLoggingReport,
    DmaLoggingReportReply, FEATURE_DMA_LOGGING_REPORT, FEATURE_DMA_LOGGING_START,
    FEATURE_DMA_LOGGING_STOP, FEATURE_MIG_DATA_SIZE, FEATURE_MIG_DEVICE_STATE, FEATURE_MIGRATION,
    FEATURE_MIGRATION_ERROR, FEATURE_PRECOPY_INFO, FeatureOps, MAX_MIGRATION_ERROR, MigDataSize,
    MigDeviceState, MigrationFeature,
};
use super::header::{Command, Header, HeaderFlags};
use super::irq::{IrqInfo, SetIrqs, SetIrqsFlags};
use super::region::{
    IoFdsReply, IoFdsRequest, REGION_INFO_SIZE, RegionInfoReply, RegionInfoRequest,
};
use super::shared_buf::{SharedBuffer, SharedBufferError};
use super::socket::{
    Message, ReadError, read_message, read_message_into, widen_send_buffer, write_error_reply,
    write_message, write_message_parts, write_reply,
};
use super::twin::TwinServer;
use super::version::{
    Capabilities, Negotiated, PROTOCOL_MAJOR, PROTOCOL_MINOR, TwinSocket, Version, accept_reply,
};
mod mig_data;

use super::{Limits, Payload};
use crate::migration::{MigrationFlags, MigrationState, PrecopyInfo};
pub use mig_data::{MAX_MIG_DATA_AHEAD, MigChunk};

/// Client memory the server reaches with DMA_READ/DMA_WRITE (memory mapped without an fd).
pub trait DmaHandler: Send {
    /// Fills `buf` from DMA address `address`; `Err(errno)` is sent back as the error.
    fn dma_read(&mut self, address: u64, buf: &mut [u8]) -> Result<(), i32>;
    /// Writes `data` at DMA address `address`; `Err(errno)` is sent back as the error.
    fn dma_write(&mut self, address: u64, data: &[u8]) -> Result<(), i32>;
}

/// How a [`Client`] connects.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Capabilities proposed in VERSION (`twin_socket` comes from
    /// [`ClientOptions::twin_socket`]).
    pub capabilities: Capabilities,
    /// Limits for reading the server's messages; the negotiated transfer size replaces
    /// `max_data_xfer_size`, and the proposal's `max_msg_fds` replaces `max_msg_fds`.
    pub limits: Limits,
    /// Read and write timeout of the socket (`None`: wait forever).
    pub timeout: Option<Duration>,
    /// Layout of the server's DMA_WRITE requests and of DMA_READ replies: the spec's by
    /// default, as QEMU 11's client uses it.
    pub dma_layout: DmaLayout,
    /// Asks for twin-socket mode: the server's DMA requests then come on a second socket,
    /// answered on a thread of the client's own. Off by default, as QEMU 11 proposes it.
    /// A server that does not agree leaves the client in one-socket mode
    /// ([`Negotiated::twin_socket`] says which).
    pub twin_socket: bool,
    /// Asks for `mig_data_shared` (a project extension): migration data through one buffer
    /// registered with [`Client::register_mig_buffer`], for a server on the same host. Off
    /// by default; [`Negotiated::mig_data_shared`] says whether the server agreed.
    pub mig_data_shared: bool,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            capabilities: Capabilities::qemu_proposal(),
            limits: Limits::default(),
            timeout: None,
            dma_layout: DmaLayout::Spec,
            twin_socket: false,
            mig_data_shared: false,
        }
    }
}

/// A client call that failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket failed or timed out; the connection is no longer used.
    #[error("socket: {0}")]
    Io(#[from] io::Error),
    /// The server closed the connection.
    #[error("server closed the connection")]
    Closed,
    /// A reply did not follow the protocol, or a request could not be made.
    #[error("protocol: {0}")]
    Protocol(#[from] ProtocolError),
    /// The server answered with an error reply.
    #[error("{command:?} failed: errno {errno}")]
    Remote {
        /// The command that failed.
        command: Command,
        /// The errno of the error reply.
        errno: i32,
    },
    /// An earlier failure left the connection out of step.
    #[error("connection unusable after an earlier failure")]
    Broken,
    /// Twin-socket mode was agreed but its socket could not be taken or served.
    #[error("twin socket: {0}")]
    Twin(String),
    /// The shared migration data buffer could not be made, or refused an offset.
    #[error("shared migration data buffer: {0}")]
    SharedBuffer(#[source] SharedBufferError),
}

impl ClientError {
    /// An errno describing the failure (the server's for [`ClientError::Remote`]).
    pub fn errno(&self) -> i32 {
        match self {
            Self::Io(e) => e.raw_os_error().unwrap_or(Errno::IO.raw_os_error()),
            Self::Closed | Self::Broken => Errno::CONNRESET.raw_os_error(),
            Self::Twin(_) => Errno::PROTO.raw_os_error(),
            Self::SharedBuffer(e) => e.errno(),
            Self::Protocol(e) => e.errno(),
            Self::Remote { errno, .. } => *errno,
        }
    }
}

impl From<ReadError> for ClientError {
    fn from(e: ReadError) -> Self {
        match e {
            ReadError::Closed => Self::Closed,
            ReadError::Io(e) => Self::Io(e),
            ReadError::Invalid { error, .. } => Self::Protocol(error),
        }
    }
}

/// A DEVICE_GET_REGION_INFO reply and the fds that came with it (the region's fd when MMAP).
#[derive(Debug)]
pub struct RegionInfoWithFds {
    /// The reply.
    pub info: RegionInfoReply,
    /// The fds.
    pub fds: Vec<OwnedFd>,
}

/// A region's I/O fd sub-regions and their fds.
#[derive(Debug)]
pub struct RegionIoFds {
    /// The reply.
    pub reply: IoFdsReply,
    /// The fds the sub-regions index.
    pub fds: Vec<OwnedFd>,
}

/// Largest region info (or I/O fds) reply asked for before the server says how much it
/// needs.
const FIRST_INFO_ARGSZ: u32 = REGION_INFO_SIZE + 256;

/// The memory the server's DMA requests reach, shared with the twin socket's thread.
pub(super) type SharedHandler = Arc<Mutex<Option<Box<dyn DmaHandler>>>>;

/// A blocking vfio-user client.
pub struct Client {
    stream: UnixStream,
    next_id: u16,
    limits: Limits,
    negotiated: Negotiated,
    dma: SharedHandler,
    dma_layout: DmaLayout,
    /// The thread answering DMA requests on the twin socket, in twin-socket mode.
    twin: Option<TwinServer>,
    broken: bool,
    /// Server requests read while waiting for a reply, answered once it came (when set).
    deferred: Option<VecDeque<Message>>,
    /// The shared migration data buffer registered with the server, if any.
    mig_buffer: Option<Arc<SharedBuffer>>,
    /// MIG_DATA requests on the shared buffer sent ahead of taking their replies
    /// ([`Client::mig_data_read_ahead`]), oldest first.
    ahead: VecDeque<mig_data::Ahead>,
    /// Replies to requests sent ahead that came while another reply was awaited.
    early: Vec<Message>,
}

/// Server requests a deferring client holds while it waits for one reply.
const MAX_DEFERRED: usize = 1024;

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("next_id", &self.next_id)
            .field("negotiated", &self.negotiated)
            .field("dma_handler", &self.dma.lock().is_some())
            .field("broken", &self.broken)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Connects to the server socket at `path` with default options and negotiates.
    pub fn connect(path: impl AsRef<Path>) -> Result<Self, ClientError> {
        Self::connect_with(path, ClientOptions::default())
    }

    /// Connects to the server socket at `path` and negotiates.
    pub fn connect_with(
        path: impl AsRef<Path>,
        options: ClientOptions,
    ) -> Result<Self, ClientError> {
        Self::from_stream(UnixStream::connect(path)?, options)
    }

    /// Negotiates the version over an already connected stream.
    pub fn from_stream(stream: UnixStream, options: ClientOptions) -> Result<Self, ClientError> {
        stream.set_read_timeout(options.timeout)?;
        stream.set_write_timeout(options.timeout)?;
        let mut capabilities = options.capabilities;
        capabilities.twin_socket = options.twin_socket.then_some(TwinSocket {
            supported: true,
            fd_index: None,
        });
        capabilities.mig_data_shared = options.mig_data_shared.then_some(true);
        let limits = Limits {
            max_msg_fds: usize::try_from(capabilities.max_msg_fds()).unwrap_or(usize::MAX),
            ..options.limits
        };
        let proposal = Version {
            major: PROTOCOL_MAJOR,
            minor: PROTOCOL_MINOR,
            capabilities,
        };
        let payload = proposal.to_bytes();
        write_message(
            &stream,
            &Header::request(0, Command::Version, payload.len()),
            &payload,
            &[],
        )?;
        let msg = read_message(&stream, &limits)?;
        if !msg.header.is_reply() || msg.header.msg_id != 0 {
            return Err(ProtocolError::invalid(
                "VERSION",
                "first message is not the VERSION reply",
            )
            .into());
        }
        check_reply(&msg.header, Command::Version)?;
        let reply = Version::parse(&msg.payload, &limits)?;
        let negotiated = accept_reply(&proposal, &reply)?;
        let limits = Limits {
            max_data_xfer_size: negotiated.max_data_xfer_size,
            // A DMA_LOGGING_REPORT reply may carry a bitmap of the negotiated size.
            max_bitmap_size: negotiated
                .migration
                .and_then(|m| m.max_bitmap_size)
                .unwrap_or(limits.max_bitmap_size),
            ..limits
        };
        let dma: SharedHandler = Arc::default();
        let twin = if negotiated.twin_socket {
            let index = reply
                .capabilities
                .twin_socket
                .and_then(|t| t.fd_index)
                .unwrap_or_default();
            let fd = usize::try_from(index)
                .ok()
                .and_then(|i| msg.fds.into_iter().nth(i))
                .ok_or_else(|| ClientError::Twin(format!("the VERSION reply has no fd {index}")))?;
            let serving = TwinServer::start(
                fd,
                Arc::clone(&dma),
                limits.clone(),
                options.dma_layout,
                options.timeout,
            );
            Some(serving.map_err(|e| ClientError::Twin(e.to_string()))?)
        } else {
            None
        };
        widen_send_buffer(&stream, &limits);
        Ok(Self {
            stream,
            next_id: 1,
            limits,
            negotiated,
            dma,
            dma_layout: options.dma_layout,
            twin,
            broken: false,
            deferred: None,
            mig_buffer: None,
            ahead: VecDeque::new(),
            early: Vec::new(),
        })
    }

    /// The session parameters agreed in VERSION.
    pub fn negotiated(&self) -> &Negotiated {
        &self.negotiated
    }

    /// Sets the memory the server's DMA_READ/DMA_WRITE requests reach. Without one they
    /// are answered with EFAULT. In twin-socket mode the twin socket's thread uses it from
    /// then on.
    pub fn set_dma_handler(&mut self, handler: Box<dyn DmaHandler>) {
        *self.dma.lock() = Some(handler);
    }

    /// Whether the server's DMA requests come on a twin socket, served on a thread of the
    /// client's own.
    pub fn twin_socket(&self) -> bool {
        self.twin.is_some()
    }

    /// With `true`, the server's DMA requests that arrive while a call waits for its reply
    /// are answered only once that reply came, as QEMU answers them (its vCPU waits for the
    /// reply holding the lock its DMA handling needs). A server that waits for DMA before it
    /// replies then never gets an answer: the call times out ([`Client::set_timeout`]).
    /// Requests on a twin socket do not wait for anything.
    pub fn set_deferred_dma(&mut self, deferred: bool) {
        self.deferred = deferred.then(VecDeque::new);
    }

    /// Sets the socket's read and write timeout. A timed-out call leaves the connection
    /// unusable.
    pub fn set_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.stream.set_read_timeout(timeout)?;
        self.stream.set_write_timeout(timeout)
    }

    fn fail(&mut self, error: impl Into<ClientError>) -> ClientError {
        self.broken = true;
        error.into()
    }

    fn send(
        &mut self,
        command: Command,
        payload: &[u8],
        fds: &[BorrowedFd<'_>],
        flags: HeaderFlags,
    ) -> Result<u16, ClientError> {
        self.send_parts(command, &[payload], fds, flags)
    }

    /// Sends a request whose payload is `parts` one after the other.
    fn send_parts(
        &mut self,
        command: Command,
        parts: &[&[u8]],
        fds: &[BorrowedFd<'_>],
        flags: HeaderFlags,
    ) -> Result<u16, ClientError> {
        if self.broken {
            return Err(ClientError::Broken);
        }
        if fds.len() as u64 > self.negotiated.max_msg_fds {
            return Err(ProtocolError::TooManyFds {
                received: fds.len(),
                max: self.negotiated.max_msg_fds as usize,
            }
            .into());
        }
        let id = self.next_id;
        self.next_id = id.wrapping_add(1);
        let len = parts.iter().map(|p| p.len()).sum();
        let mut header = Header::request(id, command, len);
        header.flags |= flags;
        write_message_parts(&self.stream, &header, parts, fds).map_err(|e| self.fail(e))?;
        Ok(id)
    }

    /// Sends a request and waits for its reply.
    fn call(
        &mut self,
        command: Command,
        payload: &[u8],
        fds: &[BorrowedFd<'_>],
    ) -> Result<Message, ClientError> {
        let id = self.send(command, payload, fds, HeaderFlags::empty())?;
        self.wait(id, command)
    }

    fn wait(&mut self, id: u16, command: Command) -> Result<Message, ClientError> {
        self.wait_into(id, command, Vec::new())
    }

    /// Waits for the reply to `id` as [`Client::wait`] does, reading the first message that
    /// arrives into `spare`'s memory.
    fn wait_into(
        &mut self,
        id: u16,
        command: Command,
        mut spare: Vec<u8>,
    ) -> Result<Message, ClientError> {
        if let Some(at) = self.early.iter().position(|m| m.header.msg_id == id) {
            let msg = self.early.swap_remove(at);
            return self.checked(msg, command);
        }
        loop {
            let read = read_message_into(&self.stream, &self.limits, std::mem::take(&mut spare));
            let msg = match read {
                Ok(msg) => msg,
                Err(ReadError::Invalid {
                    header,
                    error,
                    resynced: true,
                }) => {
                    if !header.is_reply() {
                        // A malformed request from the server: refuse it, keep waiting.
                        write_error_reply(&self.stream, &header, error.errno())
                            .map_err(|e| self.fail(e))?;
                        continue;
                    }
                    if header.msg_id == id {
                        return Err(error.into());
                    }
                    if self.ahead.iter().any(|r| r.id == header.msg_id) {
                        // A request sent ahead whose answer is lost: the stream is out of step.
                        return Err(self.fail(error));
                    }
                    continue;
                }
                Err(e) => return Err(self.fail(e)),
            };
            if !msg.header.is_reply() {
                match self.deferred.as_mut() {
                    Some(queue) if queue.len() < MAX_DEFERRED => queue.push_back(msg),
                    Some(_) => {
                        return Err(self.fail(io::Error::other(format!(
                            "more than {MAX_DEFERRED} server requests while waiting"
                        ))));
                    }
                    None => self.serve(msg)?,
                }
                continue;
            }
            if msg.header.msg_id != id && self.ahead.iter().any(|r| r.id == msg.header.msg_id) {
                // One reply per request sent ahead: at most MAX_MIG_DATA_AHEAD wait here.
                self.early.push(msg);
                continue;
            }
            if msg.header.msg_id != id {
                tracing::debug!(
                    id = msg.header.msg_id,
                    command = msg.header.command,
                    "dropping a reply nobody waits for"
                );
                continue;
            }
            while let Some(request) = self.deferred.as_mut().and_then(VecDeque::pop_front) {
                self.serve(request)?;
            }
            return self.checked(msg, command);
        }
    }

    /// `msg` if it is a successful reply to `command`; a reply that breaks the protocol
    /// leaves the connection unusable.
    fn checked(&mut self, msg: Message, command: Command) -> Result<Message, ClientError> {
        if let Err(e) = check_reply(&msg.header, command) {
            if matches!(e, ClientError::Protocol(_)) {
                self.broken = true;
            }
            return Err(e);
        }
        Ok(msg)
    }

    /// Answers a command the server sent (refused in twin-socket mode: the server's
    /// commands belong on the twin socket).
    fn serve(&mut self, msg: Message) -> Result<(), ClientError> {
        let outcome = if self.twin.is_some() {
            tracing::debug!(
                command = msg.header.command,
                "server command on the main socket in twin-socket mode refused"
            );
            Err(Errno::INVAL.raw_os_error())
        } else {
            answer_request(&msg, &self.dma, &self.limits, self.dma_layout)
        };
        let sent = match outcome {
            Ok(payload) => write_reply(&self.stream, &msg.header, &payload, &[]),
            Err(errno) => write_error_reply(&self.stream, &msg.header, errno),
        };
        sent.map_err(|e| self.fail(e))
    }

    /// DEVICE_GET_INFO.
    pub fn device_info(&mut self) -> Result<DeviceInfo, ClientError> {
        let msg = self.call(
            Command::DeviceGetInfo,
            &DeviceInfo::request().to_bytes(),
            &[],
        )?;
        Ok(DeviceInfo::parse(&msg.payload, &self.limits)?)
    }

    /// DEVICE_GET_REGION_INFO, asking again with the size the server needs when the
    /// capabilities did not fit.
    pub fn region_info(&mut self, index: u32) -> Result<RegionInfoWithFds, ClientError> {
        let mut argsz = FIRST_INFO_ARGSZ;
        loop {
            let request = RegionInfoRequest { argsz, index };
            let msg = self.call(Command::DeviceGetRegionInfo, &request.to_bytes(), &[])?;
            let info = RegionInfoReply::parse(&msg.payload, &self.limits)?;
            if info.is_truncated() && info.argsz > argsz {
                if argsz != FIRST_INFO_ARGSZ {
                    return Err(ProtocolError::invalid(
                        "DEVICE_GET_REGION_INFO reply",
                        "truncated again",
                    )
                    .into());
                }
                argsz = self.info_argsz(info.argsz)?;
                continue;
            }
            return Ok(RegionInfoWithFds { info, fds: msg.fds });
        }
    }

    fn info_argsz(&self, needed: u32) -> Result<u32, ClientError> {
        if needed > self.limits.max_info_size {
            return Err(ProtocolError::too_large(
                "reply argsz",
                needed.into(),
                self.limits.max_info_size.into(),
            )
            .into());
        }
        Ok(needed)
    }

    /// DEVICE_GET_REGION_IO_FDS, asking again with the size the server needs.
    pub fn region_io_fds(&mut self, index: u32) -> Result<RegionIoFds, ClientError> {
        let mut argsz = FIRST_INFO_ARGSZ;
        loop {
            let request = IoFdsRequest {
                argsz,
                flags: 0,
                index,
                count: 0,
            };
            let msg = self.call(Command::DeviceGetRegionIoFds, &request.to_bytes(), &[])?;
            let reply = IoFdsReply::parse(&msg.payload, &self.limits)?;
            if reply.argsz > argsz && (reply.sub_regions.len() as u64) < u64::from(reply.count) {
                if argsz != FIRST_INFO_ARGSZ {
                    return Err(ProtocolError::invalid(
                        "DEVICE_GET_REGION_IO_FDS reply",
                        "truncated again",
                    )
                    .into());
                }
                argsz = self.info_argsz(reply.argsz)?;
                continue;
            }
            return Ok(RegionIoFds {
                reply,
                fds: msg.fds,
            });
        }
    }

    /// DEVICE_GET_IRQ_INFO.
    pub fn irq_info(&mut self, index: u32) -> Result<IrqInfo, ClientError> {
        let msg = self.call(
            Command::DeviceGetIrqInfo,
            &IrqInfo::request(index).to_bytes(),
            &[],
        )?;
        Ok(IrqInfo::parse(&msg.payload, &self.limits)?)
    }

    /// DEVICE_SET_IRQS. With DATA_EVENTFD, `fds` holds one eventfd per sub-index (or none to
    /// de-assign); more than the server's `max_msg_fds` go in several messages, as QEMU does.
    pub fn set_irqs(
        &mut self,
        request: &SetIrqs,
        fds: &[BorrowedFd<'_>],
    ) -> Result<(), ClientError> {
        let max = usize::try_from(self.negotiated.max_msg_fds).unwrap_or(usize::MAX);
        if !request.flags.contains(SetIrqsFlags::DATA_EVENTFD) || fds.len() <= max {
            self.call(Command::DeviceSetIrqs, &request.to_bytes(), fds)?;
            return Ok(());
        }
        if fds.len() != request.count as usize || max == 0 {
            return Err(
                ProtocolError::invalid("DEVICE_SET_IRQS", "one eventfd per sub-index").into(),
            );
        }
        for (i, chunk) in fds.chunks(max).enumerate() {
            let part = SetIrqs {
                start: request.start + (i * max) as u32,
                count: chunk.len() as u32,
                ..request.clone()
            };
            self.call(Command::DeviceSetIrqs, &part.to_bytes(), chunk)?;
        }
        Ok(())
    }

    fn xfer_chunk(&self) -> usize {
        usize::try_from(self.limits.max_data_xfer_size)
            .unwrap_or(usize::MAX)
            .clamp(1, u32::MAX as usize)
    }

    /// REGION_READ of `buf.len()` bytes at `offset`, split at the negotiated transfer size.
    pub fn region_read(
        &mut self,
        region: u32,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<(), ClientError> {
        let chunk = self.xfer_chunk();
        let mut at = offset;
        for part in buf.chunks_mut(chunk) {
            let request = RegionRead {
                offset: at,
                region,
                count: part.len() as u32,
            };
            let msg = self.call(Command::RegionRead, &request.to_bytes(), &[])?;
            let reply = RegionReadReply::parse(&msg.payload, &self.limits)?;
            if reply.data.len() != part.len() {
                return Err(ProtocolError::invalid(
                    "REGION_READ reply",
                    format!("{} bytes for {} asked", reply.data.len(), part.len()),
                )
                .into());
            }
            part.copy_from_slice(&reply.data);
            at = at.wrapping_add(part.len() as u64);
        }
        Ok(())
    }

    fn write_region(
        &mut self,
        region: u32,
        offset: u64,
        data: &[u8],
        posted: bool,
    ) -> Result<(), ClientError> {
        let chunk = self.xfer_chunk();
        let mut at = offset;
        for part in data.chunks(chunk) {
            let request = RegionWrite {
                offset: at,
                region,
                data: part.to_vec(),
            };
            if posted {
                self.send(
                    Command::RegionWrite,
                    &request.to_bytes(),
                    &[],
                    HeaderFlags::NO_REPLY,
                )?;
            } else {
                self.call(Command::RegionWrite, &request.to_bytes(), &[])?;
            }
            at = at.wrapping_add(part.len() as u64);
        }
        Ok(())
    }

    /// REGION_WRITE, waiting for each reply.
    pub fn region_write(
        &mut self,
        region: u32,
        offset: u64,
        data: &[u8],
    ) -> Result<(), ClientError> {
        self.write_region(region, offset, data, false)
    }

    /// Posted REGION_WRITE (No_reply): returns once sent; the server handles it before any
    /// later command.
    pub fn region_write_posted(
        &mut self,
        region: u32,
        offset: u64,
        data: &[u8],
    ) -> Result<(), ClientError> {
        self.write_region(region, offset, data, true)
    }

    /// REGION_WRITE_MULTI (only when `write_multiple` was negotiated); returns the number
    /// of writes the server completed.
    pub fn write_multi(&mut self, entries: &[WriteMultiEntry]) -> Result<u64, ClientError> {
        if !self.negotiated.write_multiple {
            return Err(ProtocolError::Unsupported("REGION_WRITE_MULTI (not negotiated)").into());
        }
        let request = WriteMulti {
            entries: entries.to_vec(),
        };
        let msg = self.call(Command::RegionWriteMulti, &request.to_bytes(), &[])?;
        Ok(WriteMultiReply::parse(&msg.payload, &self.limits)?.wr_cnt)
    }

    /// DMA_MAP, with the fd of the memory when the server may mmap it.
    pub fn dma_map(&mut self, map: &DmaMap, fd: Option<BorrowedFd<'_>>) -> Result<(), ClientError> {
        let fds: Vec<BorrowedFd<'_>> = fd.into_iter().collect();
        self.call(Command::DmaMap, &map.to_bytes(), &fds)?;
        Ok(())
    }

    /// DMA_UNMAP of the mapping made at `address` with `size`.
    pub fn dma_unmap(&mut self, address: u64, size: u64) -> Result<(), ClientError> {
        self.call(
            Command::DmaUnmap,
            &DmaUnmap::new(address, size).to_bytes(),
            &[],
        )?;
        Ok(())
    }

    /// DMA_UNMAP of everything (VFIO_DMA_UNMAP_FLAG_ALL).
    pub fn dma_unmap_all(&mut self) -> Result<(), ClientError> {
        self.call(Command::DmaUnmap, &DmaUnmap::all().to_bytes(), &[])?;
        Ok(())
    }

    /// DEVICE_RESET.
    ///
    /// MIG_DATA requests sent ahead and not taken are dropped with their answers, as a
    /// migration state change drops them ([`Client::set_mig_state`]).
    pub fn reset(&mut self) -> Result<(), ClientError> {
        let reset = self.call(Command::DeviceReset, &[], &[]);
        self.drop_ahead();
        reset?;
        Ok(())
    }

    /// DEVICE_FEATURE as given; returns the reply.
    pub fn device_feature(
        &mut self,
        request: &DeviceFeature,
    ) -> Result<DeviceFeature, ClientError> {
        let msg = self.call(Command::DeviceFeature, &request.to_bytes(), &[])?;
        Ok(DeviceFeature::parse(&msg.payload, &self.limits)?)
    }

    /// GET of `feature` (data of at most `max_data` bytes); returns the data.
    pub fn feature_get(&mut self, feature: u16, max_data: usize) -> Result<Vec<u8>, ClientError> {
        Ok(self
            .device_feature(&DeviceFeature::get(feature, max_data))?
            .data)
    }

    /// SET of `feature` to `data`; returns the reply's data.
    pub fn feature_set(&mut self, feature: u16, data: Vec<u8>) -> Result<Vec<u8>, ClientError> {
        Ok(self
            .device_feature(&DeviceFeature::set(feature, data))?
            .data)
    }

    /// PROBE of `feature` for `ops`; `Ok` if supported, the server's error otherwise.
    pub fn feature_probe(&mut self, feature: u16, ops: FeatureOps) -> Result<(), ClientError> {
        self.device_feature(&DeviceFeature::probe(feature, ops))?;
        Ok(())
    }

    /// The MIGRATION feature: the device's migration flags.
    pub fn migration_flags(&mut self) -> Result<MigrationFlags, ClientError> {
        let data = self.feature_get(FEATURE_MIGRATION, 8)?;
        Ok(MigrationFeature::parse(&data, &self.limits)?.flags)
    }

    /// MIG_DEVICE_STATE GET: the current migration state.
    pub fn mig_state(&mut self) -> Result<MigrationState, ClientError> {
        let data = self.feature_get(FEATURE_MIG_DEVICE_STATE, 8)?;
        Ok(MigDeviceState::parse(&data, &self.limits)?.device_state)
    }

    /// MIG_DEVICE_STATE SET: moves the device to `state`.
    ///
    /// MIG_DATA requests sent ahead and not taken ([`Client::mig_data_read_ahead`]) are
    /// dropped with their answers: the server answered them before this, and the stream they
    /// carried ends with the state it was in.
    pub fn set_mig_state(&mut self, state: MigrationState) -> Result<(), ClientError> {
        let set = self.feature_set(
            FEATURE_MIG_DEVICE_STATE,
            MigDeviceState::new(state).to_bytes(),
        );
        self.drop_ahead();
        set?;
        Ok(())
    }

    /// MIG_DATA_SIZE GET: estimated stop-copy bytes.
    pub fn mig_data_size(&mut self) -> Result<u64, ClientError> {
        let data = self.feature_get(FEATURE_MIG_DATA_SIZE, 8)?;
        Ok(MigDataSize::parse(&data, &self.limits)?.stop_copy_length)
    }

    /// DMA_LOGGING_START over `ranges` (empty: everything); returns the page size the device
    /// chose.
    pub fn dma_logging_start(
        &mut self,
        page_size: u64,
        ranges: &[DmaLoggingRange],
    ) -> Result<u64, ClientError> {
        let control = DmaLoggingControl {
            page_size,
            ranges: ranges.to_vec(),
        };
        let data = self.feature_set(FEATURE_DMA_LOGGING_START, control.to_bytes())?;
        if data.is_empty() {
            return Ok(page_size);
        }
        Ok(DmaLoggingControl::parse(&data, &self.limits)?.page_size)
    }

    /// DMA_LOGGING_STOP.
    pub fn dma_logging_stop(&mut self) -> Result<(), ClientError> {
        self.feature_set(FEATURE_DMA_LOGGING_STOP, Vec::new())?;
        Ok(())
    }

    /// DMA_LOGGING_REPORT of `length` bytes at `iova`: the dirty bitmap, one bit per page.
    pub fn dma_logging_report(
        &mut self,
        iova: u64,
        length: u64,
        page_size: u64,
    ) -> Result<Vec<u64>, ClientError> {
        let report = DmaLoggingReport {
            iova,
            length,
            page_size,
        };
        // Validates page_size and the bitmap size against our limits.
        let report = DmaLoggingReport::parse(&report.to_bytes(), &self.limits)?;
        let words = report.bitmap_words().unwrap_or_default();
        let request = DeviceFeature {
            data: report.to_bytes(),
            ..DeviceFeature::get(FEATURE_DMA_LOGGING_REPORT, 24 + 8 * words as usize)
        };
        // The reply's data is parsed in place: the bitmap may be tens of MiB.
        let msg = self.call(Command::DeviceFeature, &request.to_bytes(), &[])?;
        let data = msg
            .payload
            .get(DEVICE_FEATURE_SIZE as usize..)
            .ok_or_else(|| ProtocolError::invalid("DMA_LOGGING_REPORT reply", "truncated"))?;
        let parsed = DmaLoggingReportReply::parse(data, &self.limits)?;
        if parsed.report != report {
            return Err(
                ProtocolError::invalid("DMA_LOGGING_REPORT reply", "for another range").into(),
            );
        }
        Ok(parsed.bitmap)
    }

    /// PRECOPY_INFO GET (this project's extension, [`FEATURE_PRECOPY_INFO`]): the pre-copy
    /// progress; EINVAL outside PRE_COPY and PRE_COPY_P2P.
    pub fn precopy_info(&mut self) -> Result<PrecopyInfo, ClientError> {
        let data = self.feature_get(FEATURE_PRECOPY_INFO, 16)?;
        Ok(PrecopyInfo::parse(&data, &self.limits)?)
    }

    /// MIGRATION_ERROR (a project extension): why the last migration step was refused, empty
    /// when none was.
    pub fn migration_error(&mut self) -> Result<String, ClientError> {
        let data = self.feature_get(FEATURE_MIGRATION_ERROR, MAX_MIGRATION_ERROR as usize)?;
        Ok(String::from_utf8_lossy(&data).into_owned())
    }

    /// The socket, e.g. to poll it.
    pub fn stream(&self) -> &UnixStream {
        &self.stream
    }
}

impl AsFd for Client {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.stream.as_fd()
    }
}

/// The answer to a command from the server: a DMA_READ or DMA_WRITE reaches `dma` (EFAULT
/// without one); anything else is EOPNOTSUPP. `Err` is the errno of the error reply.
pub(super) fn answer_request(
    msg: &Message,
    dma: &SharedHandler,
    limits: &Limits,
    layout: DmaLayout,
) -> Result<Vec<u8>, i32> {
    let no_memory = || Err(Errno::FAULT.raw_os_error());
    match msg.header.command() {
        Ok(Command::DmaRead) => {
            let req = DmaRead::parse(&msg.payload, limits).map_err(|e| e.errno())?;
            // Bounded by max_data_xfer_size in parse.
            let mut data = vec![0u8; req.count as usize];
            match dma.lock().as_mut() {
                Some(handler) => handler.dma_read(req.address, &mut data),
                None => no_memory(),
            }?;
            let mut payload = Vec::with_capacity(data.len() + 16);
            DmaReadReply {
                address: req.address,
                data,
            }
            .encode_layout(&mut payload, layout);
            Ok(payload)
        }
        Ok(Command::DmaWrite) => {
            let req =
                DmaWrite::parse_layout(&msg.payload, limits, layout).map_err(|e| e.errno())?;
            match dma.lock().as_mut() {
                Some(handler) => handler.dma_write(req.address, &req.data),
                None => no_memory(),
            }?;
            Ok(DmaWriteReply {
                address: req.address,
                count: req.data.len() as u64,
            }
            .to_bytes())
        }
        Ok(_) => Err(Errno::NOTSUP.raw_os_error()),
        Err(e) => Err(e.errno()),
    }
}

/// Checks a reply header for `command`: same command, and no Error flag.
fn check_reply(header: &Header, command: Command) -> Result<(), ClientError> {
    if header.command != command.raw() {
        return Err(ProtocolError::invalid(
            "reply",
            format!("command {} answers {:?}", header.command, command),
        )
        .into());
    }
    if header.is_error() {
        return Err(ClientError::Remote {
            command,
            errno: header.errno(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;
    use std::sync::{Arc, Mutex};
    use std::thread;

    use super::*;
    use crate::vfio_user::access::RegionWriteReply;
    use crate::vfio_user::device::DeviceFlags;
    use crate::vfio_user::dma::DmaMapFlags;
    use crate::vfio_user::irq::IrqInfoFlags;
    use crate::vfio_user::message::Request;
    use crate::vfio_user::mig_data::{MigDataReadReply, MigDataSharedReply};
    use crate::vfio_user::region::{
        IO_FD_TYPE_IOEVENTFD, IoFdSubRegion, RegionCap, RegionFlags, SparseMmapArea,
    };
    use crate::vfio_user::version::{ServerOffer, negotiate};

    const EFAULT: i32 = 14;

    /// Guest memory backed by a Vec, at DMA address `base`.
    #[derive(Clone)]
    struct GuestMemory {
        base: u64,
        bytes: Arc<Mutex<Vec<u8>>>,
    }

    impl GuestMemory {
        fn range(&self, address: u64, len: usize) -> Result<std::ops::Range<usize>, i32> {
            let start = usize::try_from(address.checked_sub(self.base).ok_or(EFAULT)?)
                .map_err(|_| EFAULT)?;
            let end = start.checked_add(len).ok_or(EFAULT)?;
            if end > self.bytes.lock().unwrap().len() {
                return Err(EFAULT);
            }
            Ok(start..end)
        }
    }

    impl DmaHandler for GuestMemory {
        fn dma_read(&mut self, address: u64, buf: &mut [u8]) -> Result<(), i32> {
            let range = self.range(address, buf.len())?;
            buf.copy_from_slice(&self.bytes.lock().unwrap()[range]);
            Ok(())
        }

        fn dma_write(&mut self, address: u64, data: &[u8]) -> Result<(), i32> {
            let range = self.range(address, data.len())?;
            self.bytes.lock().unwrap()[range].copy_from_slice(data);
            Ok(())
        }
    }

    /// A tiny responder thread (not a server): answers VERSION with `offer`, then hands each
    /// message to `respond` until the client hangs up.
    fn responder(
        offer: ServerOffer,
        mut respond: impl FnMut(&UnixStream, Message) + Send + 'static,
    ) -> (UnixStream, thread::JoinHandle<()>) {
        let (client_end, server_end) = UnixStream::pair().unwrap();
        let handle = thread::spawn(move || {
            let limits = Limits::default();
            let hello = read_message(&server_end, &limits).unwrap();
            assert_eq!(hello.command().unwrap(), Command::Version);
            let proposal = Version::parse(&hello.payload, &limits).unwrap();
            let (reply, _) = negotiate(&proposal, &offer).unwrap();
            write_reply(&server_end, &hello.header, &reply.to_bytes(), &[]).unwrap();
            loop {
                match read_message(&server_end, &limits) {
                    Ok(msg) => respond(&server_end, msg),
                    Err(ReadError::Closed) => break,
                    Err(e) => panic!("responder: {e}"),
                }
            }
        });
        (client_end, handle)
    }

    /// Sends a server-to-client request and returns the client's answer.
    fn ask(s: &UnixStream, id: u16, command: Command, payload: &[u8]) -> Message {
        write_message(
            s,
            &Header::request(id, command, payload.len()),
            payload,
            &[],
        )
        .unwrap();
        let answer = read_message(s, &Limits::default()).unwrap();
        assert!(answer.header.is_reply());
        assert_eq!(
            (answer.header.msg_id, answer.command().unwrap()),
            (id, command)
        );
        answer
    }

    #[test]
    fn answers_dma_requests_while_waiting_for_a_reply() {
        let base = 0x10_0000;
        let memory = GuestMemory {
            base,
            bytes: Arc::new(Mutex::new((0..4096u32).map(|i| i as u8).collect())),
        };
        let (stream, server) = responder(ServerOffer::default(), move |s, msg| {
            let limits = Limits::default();
            let Request::RegionRead(read) = msg.request(&limits).unwrap() else {
                panic!("unexpected {:?}", msg.header);
            };
            // Mid-request, the device reads guest memory...
            let req = DmaRead {
                address: base + 0x10,
                count: 8,
            };
            let answer = ask(s, 0x100, Command::DmaRead, &req.to_bytes());
            assert!(!answer.header.is_error());
            let got = DmaReadReply::parse(&answer.payload, &limits).unwrap();
            assert_eq!(got.address, base + 0x10);
            // ...writes it...
            let write = DmaWrite {
                address: base + 0x20,
                data: b"written!".to_vec(),
            };
            let answer = ask(s, 0x101, Command::DmaWrite, &write.to_bytes());
            let ack = DmaWriteReply::parse(&answer.payload, &limits).unwrap();
            assert_eq!((ack.address, ack.count), (base + 0x20, 8));
            // ...misses it...
            let outside = DmaRead {
                address: 0,
                count: 4,
            };
            let answer = ask(s, 0x102, Command::DmaRead, &outside.to_bytes());
            assert!(answer.header.is_error());
            assert_eq!(answer.header.errno(), EFAULT);
            // ...and sends a command the client does not serve.
            let answer = ask(s, 0x103, Command::DeviceReset, &[]);
            assert_eq!(answer.header.errno(), 95);
            // A stale reply the client must drop.
            let stale = Header {
                flags: HeaderFlags::REPLY,
                ..Header::request(0x7777, Command::RegionRead, 0)
            };
            write_message(s, &stale, &[], &[]).unwrap();
            // Then the reply the client waits for, carrying what DMA read.
            let reply = RegionReadReply {
                offset: read.offset,
                region: read.region,
                data: got.data,
            };
            write_reply(s, &msg.header, &reply.to_bytes(), &[]).unwrap();
        });
        let options = ClientOptions {
            dma_layout: DmaLayout::Spec,
            ..ClientOptions::default()
        };
        let mut client = Client::from_stream(stream, options).unwrap();
        client.set_dma_handler(Box::new(memory.clone()));
        let mut buf = [0u8; 8];
        client.region_read(7, 0, &mut buf).unwrap();
        assert_eq!(buf, [0x10, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17]);
        assert_eq!(&memory.bytes.lock().unwrap()[0x20..0x28], b"written!");
        drop(client);
        server.join().unwrap();
    }

    /// What the responder of [`client_api_against_a_responder`] saw.
    #[derive(Default)]
    struct Seen {
        region_info_argsz: Vec<u32>,
        set_irqs: Vec<(u32, u32, usize)>,
        dma_map_fds: Vec<usize>,
        unmap_all: bool,
        resets: usize,
        mig_state: Option<MigrationState>,
        mig_written: Vec<u8>,
        logging_ranges: usize,
    }

    fn serve_device(
        s: &UnixStream,
        msg: Message,
        bar: &mut [u8],
        mig_stream: &mut Vec<u8>,
        seen: &Mutex<Seen>,
    ) {
        let limits = Limits::default();
        let mut seen = seen.lock().unwrap();
        let (_keep, fd) = io::pipe().unwrap();
        let reply: Vec<u8> = match msg.request(&limits).unwrap() {
            Request::DeviceGetInfo(_) => DeviceInfo {
                argsz: 16,
                flags: DeviceFlags::RESET | DeviceFlags::PCI,
                num_regions: 9,
                num_irqs: 5,
            }
            .to_bytes(),
            Request::RegionInfo(r) => {
                seen.region_info_argsz.push(r.argsz);
                let areas = (0..40)
                    .map(|i| SparseMmapArea {
                        offset: i * 0x1000,
                        size: 0x800,
                    })
                    .collect();
                let info = RegionInfoReply::new(
                    r.index,
                    RegionFlags::READ | RegionFlags::WRITE | RegionFlags::MMAP,
                    0x40000,
                    0,
                    vec![RegionCap::SparseMmap(areas)],
                );
                let payload = info.reply_for(r.argsz).to_bytes();
                write_reply(s, &msg.header, &payload, &[fd.as_fd()]).unwrap();
                return;
            }
            Request::RegionIoFds(r) => {
                let subs = (0..10)
                    .map(|i| IoFdSubRegion {
                        offset: i * 4,
                        size: 4,
                        fd_index: 0,
                        kind: IO_FD_TYPE_IOEVENTFD,
                        flags: 0,
                        data: i,
                    })
                    .collect();
                let payload = IoFdsReply::new(r.index, subs).reply_for(r.argsz).to_bytes();
                write_reply(s, &msg.header, &payload, &[fd.as_fd()]).unwrap();
                return;
            }
            Request::IrqInfo(r) => IrqInfo {
                argsz: 16,
                flags: IrqInfoFlags::EVENTFD | IrqInfoFlags::NORESIZE,
                index: r.index,
                count: 8,
            }
            .to_bytes(),
            Request::SetIrqs(r) => {
                seen.set_irqs.push((r.start, r.count, msg.fds.len()));
                Vec::new()
            }
            Request::RegionWrite(w) => {
                let at = w.offset as usize;
                bar[at..at + w.data.len()].copy_from_slice(&w.data);
                RegionWriteReply {
                    offset: w.offset,
                    region: w.region,
                    count: w.data.len() as u32,
                }
                .to_bytes()
            }
            Request::RegionRead(r) => {
                let at = r.offset as usize;
                RegionReadReply {
                    offset: r.offset,
                    region: r.region,
                    data: bar[at..at + r.count as usize].to_vec(),
                }
                .to_bytes()
            }
            Request::WriteMulti(m) => {
                for e in &m.entries {
                    let at = e.offset as usize;
                    bar[at..at + e.bytes().len()].copy_from_slice(e.bytes());
                }
                WriteMultiReply {
                    wr_cnt: m.entries.len() as u64,
                }
                .to_bytes()
            }
            Request::DmaMap(_) => {
                seen.dma_map_fds.push(msg.fds.len());
                Vec::new()
            }
            Request::DmaUnmap(u) => {
                seen.unmap_all |= u.is_all();
                u.to_bytes()
            }
            Request::DeviceReset => {
                seen.resets += 1;
                Vec::new()
            }
            Request::DeviceFeature(f) => {
                let data = match (f.feature, f.ops) {
                    (FEATURE_MIGRATION, FeatureOps::GET) => MigrationFeature {
                        flags: MigrationFlags::STOP_COPY | MigrationFlags::P2P,
                    }
                    .to_bytes(),
                    (FEATURE_MIG_DEVICE_STATE, FeatureOps::SET) => {
                        let state = MigDeviceState::parse(&f.data, &limits).unwrap();
                        seen.mig_state = Some(state.device_state);
                        f.data.clone()
                    }
                    (FEATURE_MIG_DEVICE_STATE, FeatureOps::GET) => {
                        MigDeviceState::new(seen.mig_state.unwrap_or(MigrationState::Running))
                            .to_bytes()
                    }
                    (FEATURE_MIG_DATA_SIZE, FeatureOps::GET) => MigDataSize {
                        stop_copy_length: 1234,
                    }
                    .to_bytes(),
                    (FEATURE_DMA_LOGGING_START, FeatureOps::SET) => {
                        let mut control = DmaLoggingControl::parse(&f.data, &limits).unwrap();
                        seen.logging_ranges = control.ranges.len();
                        control.page_size = 8192;
                        control.to_bytes()
                    }
                    (FEATURE_DMA_LOGGING_STOP, FeatureOps::SET) => Vec::new(),
                    (FEATURE_DMA_LOGGING_REPORT, FeatureOps::GET) => {
                        let report = DmaLoggingReport::parse(&f.data, &limits).unwrap();
                        let words = report.bitmap_words().unwrap() as usize;
                        let mut bitmap = vec![0u64; words];
                        bitmap[0] = 0b101;
                        DmaLoggingReportReply { report, bitmap }.to_bytes()
                    }
                    _ => {
                        write_error_reply(s, &msg.header, 95).unwrap();
                        return;
                    }
                };
                f.reply_with(data).to_bytes()
            }
            Request::MigDataRead(r) => {
                let n = (r.size as usize).min(mig_stream.len());
                MigDataReadReply::new(mig_stream.drain(..n).collect()).to_bytes()
            }
            Request::MigDataWrite(w) => {
                seen.mig_written.extend_from_slice(w.data());
                Vec::new()
            }
            other => panic!("unexpected {other:?}"),
        };
        write_reply(s, &msg.header, &reply, &[]).unwrap();
    }

    #[test]
    fn client_api_against_a_responder() {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let offer = ServerOffer {
            max_msg_fds: 2,
            migration_max_bitmap_size: Some(1 << 20),
            ..ServerOffer::default()
        };
        let mut bar = vec![0u8; 0x1000];
        let mut mig_stream: Vec<u8> = (0..10).collect();
        let shared = Arc::clone(&seen);
        let (stream, server) = responder(offer, move |s, msg| {
            serve_device(s, msg, &mut bar, &mut mig_stream, &shared);
        });
        let mut client = Client::from_stream(stream, ClientOptions::default()).unwrap();
        assert_eq!(client.negotiated().max_msg_fds, 2);
        assert!(client.negotiated().write_multiple);

        let info = client.device_info().unwrap();
        assert_eq!((info.num_regions, info.num_irqs), (9, 5));
        assert!(info.flags.contains(DeviceFlags::RESET | DeviceFlags::PCI));

        // 40 sparse areas do not fit the first argsz: the client asks again.
        let region = client.region_info(0).unwrap();
        assert_eq!(region.info.sparse_areas().unwrap().len(), 40);
        assert_eq!(region.fds.len(), 1);
        assert!(region.info.flags.contains(RegionFlags::MMAP));
        let full = region.info.full_size();
        assert_eq!(
            seen.lock().unwrap().region_info_argsz,
            vec![FIRST_INFO_ARGSZ, full]
        );

        let io_fds = client.region_io_fds(0).unwrap();
        assert_eq!(io_fds.reply.sub_regions.len(), 10);
        assert_eq!(io_fds.fds.len(), 1);

        let irq = client.irq_info(2).unwrap();
        assert_eq!((irq.index, irq.count), (2, 8));

        // Five eventfds, at most two per message: 2 + 2 + 1.
        let pipes: Vec<_> = (0..5).map(|_| io::pipe().unwrap()).collect();
        let fds: Vec<_> = pipes.iter().map(|(_, w)| w.as_fd()).collect();
        client.set_irqs(&SetIrqs::eventfds(2, 0, 5), &fds).unwrap();
        client.set_irqs(&SetIrqs::disable(2), &[]).unwrap();
        assert_eq!(
            seen.lock().unwrap().set_irqs,
            vec![(0, 2, 2), (2, 2, 2), (4, 1, 1), (0, 0, 0)]
        );

        // A posted write is ordered before the read that follows it.
        client.region_write_posted(0, 0x10, &[1, 2, 3, 4]).unwrap();
        client.region_write(0, 0x14, &[5, 6]).unwrap();
        let entries = [
            WriteMultiEntry::new(0, 0x20, &[7]).unwrap(),
            WriteMultiEntry::new(0, 0x21, &[8, 9]).unwrap(),
        ];
        assert_eq!(client.write_multi(&entries).unwrap(), 2);
        let mut buf = [0u8; 0x13];
        client.region_read(0, 0x10, &mut buf).unwrap();
        assert_eq!(&buf[..6], &[1, 2, 3, 4, 5, 6]);
        assert_eq!(&buf[0x10..], &[7, 8, 9]);

        let (_r, memfd) = io::pipe().unwrap();
        let map = DmaMap::new(0x1000, 0x1000, 0, DmaMapFlags::READ | DmaMapFlags::WRITE);
        client.dma_map(&map, Some(memfd.as_fd())).unwrap();
        client
            .dma_map(&DmaMap::new(0xc0000, 0x40000, 0, DmaMapFlags::READ), None)
            .unwrap();
        client.dma_unmap(0x1000, 0x1000).unwrap();
        client.dma_unmap_all().unwrap();
        client.reset().unwrap();

        assert_eq!(
            client.migration_flags().unwrap(),
            MigrationFlags::STOP_COPY | MigrationFlags::P2P
        );
        client.set_mig_state(MigrationState::Stop).unwrap();
        assert_eq!(client.mig_state().unwrap(), MigrationState::Stop);
        assert_eq!(client.mig_data_size().unwrap(), 1234);
        let range = DmaLoggingRange {
            iova: 0,
            length: 1 << 20,
        };
        assert_eq!(client.dma_logging_start(4096, &[range]).unwrap(), 8192);
        let bitmap = client.dma_logging_report(0, 1 << 20, 4096).unwrap();
        assert_eq!(bitmap.len(), 4);
        assert_eq!(bitmap[0], 0b101);
        client.dma_logging_stop().unwrap();
        // An unsupported feature is the server's error, and the connection goes on.
        let err = client.feature_probe(42, FeatureOps::GET).unwrap_err();
        assert!(matches!(
            err,
            ClientError::Remote {
                command: Command::DeviceFeature,
                errno: 95
            }
        ));
        assert_eq!(err.errno(), 95);

        assert_eq!(client.mig_data_read(4).unwrap(), vec![0, 1, 2, 3]);
        assert_eq!(client.mig_data_read(8).unwrap(), vec![4, 5, 6, 7, 8, 9]);
        assert!(client.mig_data_read(8).unwrap().is_empty());
        client.mig_data_write(b"state").unwrap();

        drop(client);
        server.join().unwrap();
        let seen = seen.lock().unwrap();
        assert_eq!(seen.dma_map_fds, vec![1, 0]);
        assert!(seen.unmap_all);
        assert_eq!(seen.resets, 1);
        assert_eq!(seen.mig_state, Some(MigrationState::Stop));
        assert_eq!(seen.mig_written, b"state");
        assert_eq!(seen.logging_ranges, 1);
    }

    #[test]
    fn timeout_leaves_the_client_broken() {
        let (stream, server) = responder(ServerOffer::default(), |_, _| {});
        let options = ClientOptions {
            timeout: Some(Duration::from_millis(50)),
            ..ClientOptions::default()
        };
        let mut client = Client::from_stream(stream, options).unwrap();
        let err = client.device_info().unwrap_err();
        match &err {
            ClientError::Io(e) => assert!(matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            )),
            other => panic!("{other:?}"),
        }
        assert!(matches!(client.device_info(), Err(ClientError::Broken)));
        drop(client);
        server.join().unwrap();
    }

    #[test]
    fn refuses_bad_version_replies() {
        type Answer = Box<dyn FnOnce(&UnixStream, &Header) + Send>;
        let cases: Vec<Answer> = vec![
            Box::new(|s, h| {
                let mut reply = Version::default();
                reply.capabilities.max_msg_fds = Some(17);
                write_reply(s, h, &reply.to_bytes(), &[]).unwrap();
            }),
            Box::new(|s, h| write_error_reply(s, h, 95).unwrap()),
            Box::new(|s, h| {
                let reply = Version {
                    major: 1,
                    ..Version::default()
                };
                write_reply(s, h, &reply.to_bytes(), &[]).unwrap();
            }),
            Box::new(|s, _| drop(s.try_clone().unwrap().shutdown(std::net::Shutdown::Both))),
        ];
        for answer in cases {
            let (client_end, server_end) = UnixStream::pair().unwrap();
            let server = thread::spawn(move || {
                let hello = read_message(&server_end, &Limits::default()).unwrap();
                answer(&server_end, &hello.header);
            });
            assert!(Client::from_stream(client_end, ClientOptions::default()).is_err());
            server.join().unwrap();
        }
    }

    #[test]
    fn write_multi_needs_negotiation() {
        let (stream, server) = responder(ServerOffer::default(), |_, msg| {
            panic!("sent {:?}", msg.header)
        });
        let options = ClientOptions {
            capabilities: Capabilities::default(),
            ..ClientOptions::default()
        };
        let mut client = Client::from_stream(stream, options).unwrap();
        assert!(!client.negotiated().write_multiple);
        let entry = WriteMultiEntry::new(0, 0, &[1]).unwrap();
        assert!(matches!(
            client.write_multi(&[entry]),
            Err(ClientError::Protocol(ProtocolError::Unsupported(_)))
        ));
        // One fd per message by default: two are refused before anything is sent.
        let (_r1, w1) = io::pipe().unwrap();
        let (_r2, w2) = io::pipe().unwrap();
        let err = client
            .set_irqs(&SetIrqs::disable(0), &[w1.as_fd(), w2.as_fd()])
            .unwrap_err();
        assert!(matches!(
            err,
            ClientError::Protocol(ProtocolError::TooManyFds {
                received: 2,
                max: 1
            })
        ));
        drop(client);
        server.join().unwrap();
    }

    /// Answers VERSION as a twin-socket server would, with `fds` (the client's end of a
    /// pair among them) and `fd_index`; returns the main and twin sockets' server ends.
    fn twin_handshake(fd_index: u64, extra_fds: usize) -> (UnixStream, UnixStream, Client) {
        let (client_end, server_end) = UnixStream::pair().unwrap();
        let (twin_client, twin_server) = UnixStream::pair().unwrap();
        let server = thread::spawn(move || {
            let limits = Limits::default();
            let hello = read_message(&server_end, &limits).unwrap();
            let proposal = Version::parse(&hello.payload, &limits).unwrap();
            assert_eq!(
                proposal.capabilities.twin_socket,
                Some(TwinSocket {
                    supported: true,
                    fd_index: None
                })
            );
            let offer = ServerOffer {
                twin_socket: true,
                ..ServerOffer::default()
            };
            let (mut reply, negotiated) = negotiate(&proposal, &offer).unwrap();
            assert!(negotiated.twin_socket);
            reply.capabilities.twin_socket = Some(TwinSocket {
                supported: true,
                fd_index: Some(fd_index),
            });
            let pipes: Vec<_> = (0..extra_fds).map(|_| io::pipe().unwrap()).collect();
            let mut fds: Vec<BorrowedFd<'_>> = pipes.iter().map(|(r, _)| r.as_fd()).collect();
            fds.push(twin_client.as_fd());
            write_reply(&server_end, &hello.header, &reply.to_bytes(), &fds).unwrap();
            server_end
        });
        let options = ClientOptions {
            twin_socket: true,
            timeout: Some(Duration::from_secs(10)),
            ..ClientOptions::default()
        };
        let client = Client::from_stream(client_end, options);
        let server_end = server.join().unwrap();
        (server_end, twin_server, client.unwrap())
    }

    #[test]
    fn twin_socket_requests_are_answered_without_a_call_waiting() {
        let base = 0x10_0000;
        let memory = GuestMemory {
            base,
            bytes: Arc::new(Mutex::new(vec![0u8; 4096])),
        };
        // The twin socket is the last of two fds.
        let (main, twin, mut client) = twin_handshake(1, 1);
        assert!(client.twin_socket() && client.negotiated().twin_socket);
        client.set_dma_handler(Box::new(memory.clone()));
        // No call is waiting: the client's own thread answers on the twin socket.
        let write = DmaWrite {
            address: base + 8,
            data: b"by twin".to_vec(),
        };
        let answer = ask(&twin, 1, Command::DmaWrite, &write.to_bytes());
        assert!(!answer.header.is_error());
        assert_eq!(&memory.bytes.lock().unwrap()[8..15], b"by twin");
        let read = DmaRead {
            address: base + 8,
            count: 7,
        };
        let answer = ask(&twin, 2, Command::DmaRead, &read.to_bytes());
        let got = DmaReadReply::parse(&answer.payload, &Limits::default()).unwrap();
        assert_eq!(got.data, b"by twin");
        // Outside the memory, and a command the client does not serve: error replies.
        let outside = DmaRead {
            address: 0,
            count: 4,
        };
        assert_eq!(
            ask(&twin, 3, Command::DmaRead, &outside.to_bytes())
                .header
                .errno(),
            EFAULT
        );
        assert_eq!(ask(&twin, 4, Command::DeviceReset, &[]).header.errno(), 95);
        // A DMA request on the main socket is refused while a call waits.
        let responder = thread::spawn(move || {
            let limits = Limits::default();
            let call = read_message(&main, &limits).unwrap();
            let answer = ask(&main, 9, Command::DmaRead, &read.to_bytes());
            assert_eq!(answer.header.errno(), libc::EINVAL);
            write_error_reply(&main, &call.header, 95).unwrap();
            main
        });
        assert!(matches!(
            client.reset(),
            Err(ClientError::Remote { errno: 95, .. })
        ));
        let main = responder.join().unwrap();
        // Dropping the client closes its end of the twin socket and stops its thread.
        drop(client);
        assert!(matches!(
            read_message(&twin, &Limits::default()),
            Err(ReadError::Closed)
        ));
        drop(main);
    }

    /// Connects a client asking for twin-socket mode to a server that agrees (fd_index 0)
    /// but sends `fd` (none, or whatever it is) with the reply: the client refuses it.
    fn twin_reply_with(fd: Option<OwnedFd>) {
        let (client_end, server_end) = UnixStream::pair().unwrap();
        let server = thread::spawn(move || {
            let limits = Limits::default();
            let hello = read_message(&server_end, &limits).unwrap();
            let proposal = Version::parse(&hello.payload, &limits).unwrap();
            let offer = ServerOffer {
                twin_socket: true,
                ..ServerOffer::default()
            };
            let (reply, _) = negotiate(&proposal, &offer).unwrap();
            let fds: Vec<BorrowedFd<'_>> = fd.iter().map(AsFd::as_fd).collect();
            write_reply(&server_end, &hello.header, &reply.to_bytes(), &fds).unwrap();
        });
        let options = ClientOptions {
            twin_socket: true,
            ..ClientOptions::default()
        };
        let err = Client::from_stream(client_end, options).unwrap_err();
        assert!(matches!(err, ClientError::Twin(_)), "{err}");
        server.join().unwrap();
    }

    #[test]
    fn a_twin_socket_reply_without_its_fd_is_refused() {
        twin_reply_with(None);
    }

    #[test]
    fn a_twin_socket_fd_that_is_no_socket_is_refused() {
        let (r, _w) = io::pipe().unwrap();
        twin_reply_with(Some(r.into()));
    }

    #[test]
    fn a_mig_data_read_reply_with_fds_or_more_than_asked_is_refused() {
        let mut calls = 0;
        let (stream, server) = responder(ServerOffer::default(), move |s, msg| {
            calls += 1;
            let (r, _w) = io::pipe().unwrap();
            let fd = OwnedFd::from(r);
            match calls {
                // An fd beside inline bytes; then too many bytes for a shared read.
                1 => {
                    let payload = MigDataReadReply::new(vec![1; 4]).to_bytes();
                    write_reply(s, &msg.header, &payload, &[fd.as_fd()]).unwrap();
                }
                2 => {
                    let payload = MigDataSharedReply::new(65).to_bytes();
                    write_reply(s, &msg.header, &payload, &[]).unwrap();
                }
                _ => {
                    let payload = MigDataReadReply::new(vec![1; 4]).to_bytes();
                    write_reply(s, &msg.header, &payload, &[]).unwrap();
                }
            }
        });
        let mut client = Client::from_stream(stream, ClientOptions::default()).unwrap();
        let err = client.mig_data_read(4096).unwrap_err();
        assert!(matches!(err, ClientError::Protocol(_)), "{err:?}");
        let err = client.mig_data_read_shared(0, 64).unwrap_err();
        assert!(matches!(err, ClientError::Protocol(_)), "{err:?}");
        // The connection goes on.
        assert_eq!(client.mig_data_read(4096).unwrap(), vec![1; 4]);
        drop(client);
        server.join().unwrap();
    }
}
