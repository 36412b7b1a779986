//! Framing over a connected `AF_UNIX` stream socket: one message at a time, file descriptors
//! as `SCM_RIGHTS`, reply helpers and the peer's credentials (`SO_PEERCRED`).

use std::collections::VecDeque;
use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::io::Errno;
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, recvmsg, sendmsg,
};

use super::Limits;
use super::error::ProtocolError;
use super::header::{Command, HEADER_SIZE, Header};
use super::message::{Reply, Request};

/// Largest payload [`read_message`] reads and throws away to stay in step after refusing an
/// oversized message; past it the connection cannot be resynchronized.
pub const DRAIN_LIMIT: u64 = 64 << 20;

/// Payload is read (and its buffer grown) this much at a time, so memory follows the bytes
/// actually received rather than the size a header claims.
const READ_CHUNK: usize = 64 << 10;

/// Payload capacity reserved up front (address space only: pages are touched as bytes
/// arrive); a larger payload grows past it as it is received.
const RESERVE_LIMIT: usize = 4 << 20;

/// One message as received.
#[derive(Debug)]
pub struct Message {
    /// The header.
    pub header: Header,
    /// The bytes after the header (`header.size - 16` of them).
    pub payload: Vec<u8>,
    /// File descriptors that came with the message (close-on-exec).
    pub fds: Vec<OwnedFd>,
}

impl Message {
    /// The command, if known.
    pub fn command(&self) -> Result<Command, ProtocolError> {
        self.header.command()
    }

    /// Parses the payload as a command message.
    pub fn request(&self, limits: &Limits) -> Result<Request, ProtocolError> {
        Request::parse(self.command()?, &self.payload, limits)
    }

    /// Parses the payload as a request, as [`Message::request`] does, taking the payload: a
    /// MIG_DATA_WRITE keeps it as its data (moved to its front, no second buffer). The
    /// payload is left empty whether or not it parses.
    pub fn take_request(&mut self, limits: &Limits) -> Result<Request, ProtocolError> {
        let command = self.command()?;
        Request::parse_owned(command, std::mem::take(&mut self.payload), limits)
    }

    /// Parses the payload as a successful reply.
    pub fn reply(&self, limits: &Limits) -> Result<Reply, ProtocolError> {
        Reply::parse(self.command()?, &self.payload, limits)
    }
}

/// Why [`read_message`] returned no message.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The peer closed the connection between two messages.
    #[error("peer closed the connection")]
    Closed,
    /// The socket failed, timed out, or closed in the middle of a message; the stream is out
    /// of step, close it.
    #[error("socket: {0}")]
    Io(#[from] io::Error),
    /// The message was refused. If `resynced`, it was read (or drained) to its end and the
    /// next message can be read: answer a command with an error reply of `error.errno()`
    /// (unless it is No_reply). Otherwise close the connection.
    #[error("message {} (command {}) refused: {error}", header.msg_id, header.command)]
    Invalid {
        /// The header as received.
        header: Header,
        /// What is wrong.
        error: ProtocolError,
        /// Whether the stream is still in step.
        resynced: bool,
    },
}

impl ReadError {
    /// Whether the connection can go on after this error.
    pub fn can_continue(&self) -> bool {
        matches!(self, Self::Invalid { resynced: true, .. })
    }
}

/// Receives bytes and collects the fds that come with them.
struct Receiver<'a> {
    fd: BorrowedFd<'a>,
    max_fds: usize,
    fds: Vec<OwnedFd>,
    /// Descriptors beyond `max_fds` (closed), or a truncated control message.
    excess_fds: usize,
    cmsg: Vec<MaybeUninit<u8>>,
}

impl<'a> Receiver<'a> {
    fn new(fd: BorrowedFd<'a>, max_fds: usize) -> Self {
        let space = rustix::cmsg_space!(ScmRights(max_fds.min(253)));
        Self {
            fd,
            max_fds,
            fds: Vec::new(),
            excess_fds: 0,
            cmsg: vec![MaybeUninit::uninit(); space],
        }
    }

    /// One `recvmsg`; returns the bytes received (0: end of stream).
    fn recv_some(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut control = RecvAncillaryBuffer::new(&mut self.cmsg);
            let mut iov = [IoSliceMut::new(buf)];
            match recvmsg(self.fd, &mut iov, &mut control, RecvFlags::CMSG_CLOEXEC) {
                Ok(msg) => {
                    if msg.flags.contains(ReturnFlags::CTRUNC) {
                        self.excess_fds += 1;
                    }
                    for message in control.drain() {
                        if let RecvAncillaryMessage::ScmRights(fds) = message {
                            for fd in fds {
                                if self.fds.len() < self.max_fds {
                                    self.fds.push(fd);
                                } else {
                                    // Dropping closes it.
                                    self.excess_fds += 1;
                                }
                            }
                        }
                    }
                    return Ok(msg.bytes);
                }
                Err(Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Fills `buf`. At the start of a message, an immediate end of stream is [`ReadError::Closed`].
    fn fill(&mut self, buf: &mut [u8], message_start: bool) -> Result<(), ReadError> {
        let mut done = 0;
        while done < buf.len() {
            let n = self.recv_some(&mut buf[done..])?;
            if n == 0 {
                return Err(if message_start && done == 0 {
                    ReadError::Closed
                } else {
                    ReadError::Io(io::ErrorKind::UnexpectedEof.into())
                });
            }
            done += n;
        }
        Ok(())
    }

    /// Reads `len` bytes into `payload`: over the bytes it holds (not zeroed again), then
    /// growing it as they arrive.
    fn read_payload(&mut self, len: usize, mut payload: Vec<u8>) -> Result<Vec<u8>, ReadError> {
        payload.truncate(len);
        payload.reserve(len.min(RESERVE_LIMIT) - payload.len().min(RESERVE_LIMIT));
        let mut done = 0;
        loop {
            self.fill(&mut payload[done..], false)?;
            done = payload.len();
            if done == len {
                return Ok(payload);
            }
            payload.resize(done + (len - done).min(READ_CHUNK), 0);
        }
    }

    /// Reads and discards `len` bytes.
    fn drain(&mut self, mut len: u64) -> Result<(), ReadError> {
        let mut scratch = vec![0u8; READ_CHUNK];
        while len > 0 {
            let chunk = usize::try_from(len).unwrap_or(READ_CHUNK).min(READ_CHUNK);
            self.fill(&mut scratch[..chunk], false)?;
            len -= chunk as u64;
        }
        Ok(())
    }
}

/// Reads exactly one message: the header first, then `size - 16` bytes; fds are taken from
/// whatever `recvmsg` brings them (the first one, for a sender that sends a message in one
/// `sendmsg`).
///
/// A message above `limits.max_message_size()` is drained (up to [`DRAIN_LIMIT`]) and
/// refused with [`ProtocolError::MessageTooLarge`]; more fds than `limits.max_msg_fds` are
/// closed and refused with [`ProtocolError::TooManyFds`]; a header whose type is neither
/// command nor reply is refused after its payload is read. See [`ReadError`] for what the
/// caller does next.
pub fn read_message(socket: impl AsFd, limits: &Limits) -> Result<Message, ReadError> {
    read_message_into(socket, limits, Vec::new())
}

/// Reads exactly one message as [`read_message`] does, its payload into `spare`'s memory
/// (cleared first): a caller that hands back the last payload reads the next one into pages
/// that are already mapped.
pub fn read_message_into(
    socket: impl AsFd,
    limits: &Limits,
    spare: Vec<u8>,
) -> Result<Message, ReadError> {
    let mut rx = Receiver::new(socket.as_fd(), limits.max_msg_fds);
    let mut raw = [0u8; HEADER_SIZE];
    rx.fill(&mut raw, true)?;
    let header = Header::decode(&raw);
    if (header.size as usize) < HEADER_SIZE {
        return Err(ReadError::Invalid {
            header,
            error: ProtocolError::invalid(
                "header",
                format!("size {} is smaller than the header", header.size),
            ),
            resynced: false,
        });
    }
    let len = header.payload_len();
    let max = limits.max_message_size();
    if u64::from(header.size) > max {
        let resynced = len as u64 <= DRAIN_LIMIT && rx.drain(len as u64).is_ok();
        return Err(ReadError::Invalid {
            header,
            error: ProtocolError::MessageTooLarge {
                size: header.size.into(),
                max,
            },
            resynced,
        });
    }
    let payload = rx.read_payload(len, spare)?;
    let refuse = |error| ReadError::Invalid {
        header,
        error,
        resynced: true,
    };
    header.validate().map_err(refuse)?;
    if rx.excess_fds > 0 {
        return Err(refuse(ProtocolError::TooManyFds {
            received: rx.fds.len() + rx.excess_fds,
            max: limits.max_msg_fds,
        }));
    }
    Ok(Message {
        header,
        payload,
        fds: rx.fds,
    })
}

/// Bytes a [`MessageReader`] asks for per `recvmsg`; messages larger than this are read past
/// the buffer, straight into their payload.
const BUFFER_SIZE: usize = 64 << 10;

/// File descriptors received for the message that starts at `start` (a byte offset in the
/// stream).
#[derive(Debug)]
struct FdsFor {
    start: u64,
    fds: Vec<OwnedFd>,
    /// Descriptors beyond the limit (closed), or a truncated control message.
    excess: usize,
}

/// Reads messages from a stream socket through a buffer, many per `recvmsg` when the peer
/// sends faster than they are handled.
///
/// File descriptors are given to the right message. A message's fds arrive with its first
/// byte (a sender attaches them to the first `sendmsg` of the message, as this module,
/// QEMU and libvfio-user do), and Linux ends a `recvmsg` right after the bytes that came with
/// fds: so fds returned by a `recvmsg` belong to the last message that starts in the bytes it
/// returned, or to the message in progress when none starts there. Messages larger than the
/// buffer are read in `recvmsg`s that stop at their end.
///
/// Everything read from the socket goes through one reader: bytes it has buffered are not in
/// the socket any more ([`MessageReader::has_message`] says whether one is waiting here).
#[derive(Debug)]
pub struct MessageReader {
    buf: Vec<u8>,
    /// Unread bytes are `buf[head..tail]`.
    head: usize,
    tail: usize,
    /// Stream offset of `buf[head]`.
    offset: u64,
    /// Stream offset of the first message start not yet walked past: every start before it
    /// is known.
    next_start: u64,
    /// Fds received and the message each belongs to, oldest first.
    fds: VecDeque<FdsFor>,
    cmsg: Vec<MaybeUninit<u8>>,
    max_fds: usize,
    /// A payload handed back ([`MessageReader::recycle`]): the next message larger than the
    /// buffer is read into its memory, already mapped, instead of fresh pages.
    spare: Vec<u8>,
}

impl Default for MessageReader {
    fn default() -> Self {
        Self::new()
    }
}

impl MessageReader {
    /// An empty reader.
    pub fn new() -> Self {
        Self {
            buf: vec![0; BUFFER_SIZE],
            head: 0,
            tail: 0,
            offset: 0,
            next_start: 0,
            fds: VecDeque::new(),
            cmsg: Vec::new(),
            max_fds: 0,
            spare: Vec::new(),
        }
    }

    /// Hands back the payload of a handled message: the next message larger than the buffer
    /// reuses its memory. Only the largest one handed back is kept.
    pub fn recycle(&mut self, payload: Vec<u8>) {
        if payload.capacity() > BUFFER_SIZE && payload.capacity() > self.spare.capacity() {
            self.spare = payload;
        }
    }

    /// Whether a whole message is buffered (reading it makes no system call).
    pub fn has_message(&self) -> bool {
        let available = self.tail - self.head;
        available >= HEADER_SIZE && {
            let header = Header::decode(
                self.buf[self.head..self.head + HEADER_SIZE]
                    .try_into()
                    .expect("16 bytes"),
            );
            (header.size as usize) >= HEADER_SIZE && available >= header.size as usize
        }
    }

    /// Stream offset just past the bytes received so far.
    fn received(&self) -> u64 {
        self.offset + (self.tail - self.head) as u64
    }

    /// The start of the last message that starts in `from..to` of the stream (the start of
    /// the message in progress at `from` when none does), walking message starts forward with
    /// the headers received so far.
    fn owner_of(&mut self, from: u64, to: u64, in_progress: u64) -> u64 {
        let mut owner = in_progress;
        let mut start = self.next_start;
        while start < to {
            if start >= from {
                owner = start;
            }
            // The size field (bytes 4..8 of the header) tells where the next message starts.
            let Some(at) = start
                .checked_sub(self.offset)
                .map(|d| self.head + d as usize)
            else {
                break;
            };
            if at + 8 > self.tail {
                break;
            }
            let size = u32::from_le_bytes(self.buf[at + 4..at + 8].try_into().expect("4 bytes"));
            if (size as usize) < HEADER_SIZE {
                // Out of step: the reader refuses this header and the stream ends.
                break;
            }
            start += u64::from(size);
            self.next_start = start;
        }
        owner
    }

    /// Gives fds received with the bytes `at..at + n` of the stream (`truncated`: some were
    /// lost) to their message: see [`MessageReader::owner_of`].
    fn received_fds(&mut self, received: Received, at: u64, in_progress: u64) {
        if received.fds.is_empty() && !received.truncated {
            return;
        }
        let owner = if received.bytes == 0 {
            in_progress
        } else {
            self.owner_of(at, at + received.bytes as u64, in_progress)
        };
        self.give_fds(owner, received.fds, usize::from(received.truncated));
    }

    /// Adds `fds` to those of the message starting at `start`, closing those beyond the limit.
    fn give_fds(&mut self, start: u64, fds: Vec<OwnedFd>, mut excess: usize) {
        let entry = match self.fds.iter_mut().find(|e| e.start == start) {
            Some(entry) => entry,
            None => {
                self.fds.push_back(FdsFor {
                    start,
                    fds: Vec::new(),
                    excess: 0,
                });
                self.fds.back_mut().expect("just pushed")
            }
        };
        for fd in fds {
            if entry.fds.len() < self.max_fds {
                entry.fds.push(fd);
            } else {
                // Dropping closes it.
                excess += 1;
            }
        }
        entry.excess += excess;
    }

    /// Takes the fds of the message starting at `start` (and drops any left for earlier
    /// ones, which were given to no message).
    fn take_fds(&mut self, start: u64) -> (Vec<OwnedFd>, usize) {
        while self.fds.front().is_some_and(|e| e.start < start) {
            self.fds.pop_front();
        }
        match self.fds.front() {
            Some(e) if e.start == start => {
                let e = self.fds.pop_front().expect("front exists");
                (e.fds, e.excess)
            }
            _ => (Vec::new(), 0),
        }
    }

    /// Makes at least `need` bytes available in the buffer (`need` <= [`BUFFER_SIZE`]),
    /// moving unread bytes to its front first when the tail has no room.
    fn fill_buffer(
        &mut self,
        fd: BorrowedFd<'_>,
        need: usize,
        message_start: u64,
    ) -> Result<(), ReadError> {
        while self.tail - self.head < need {
            if self.head + need > self.buf.len() || self.tail == self.buf.len() {
                self.buf.copy_within(self.head..self.tail, 0);
                self.tail -= self.head;
                self.head = 0;
            }
            let at = self.received();
            let received = recv(fd, &mut self.buf[self.tail..], &mut self.cmsg)?;
            let n = received.bytes;
            self.tail += n;
            self.received_fds(received, at, message_start);
            if n == 0 {
                return Err(if self.tail == self.head && at == message_start {
                    ReadError::Closed
                } else {
                    ReadError::Io(io::ErrorKind::UnexpectedEof.into())
                });
            }
        }
        Ok(())
    }

    /// Consumes `len` buffered bytes.
    fn consume(&mut self, len: usize) {
        self.head += len;
        self.offset += len as u64;
        if self.head == self.tail {
            self.head = 0;
            self.tail = 0;
        }
    }

    /// Reads `out.len()` bytes of the message that starts at `start`: the buffered ones, then
    /// straight from the socket, never past the end of `out`.
    fn read_exact(
        &mut self,
        fd: BorrowedFd<'_>,
        out: &mut [u8],
        start: u64,
    ) -> Result<(), ReadError> {
        let buffered = (self.tail - self.head).min(out.len());
        out[..buffered].copy_from_slice(&self.buf[self.head..self.head + buffered]);
        self.consume(buffered);
        let mut done = buffered;
        while done < out.len() {
            let at = self.offset;
            let received = recv(fd, &mut out[done..], &mut self.cmsg)?;
            let n = received.bytes;
            self.received_fds(received, at, start);
            if n == 0 {
                return Err(ReadError::Io(io::ErrorKind::UnexpectedEof.into()));
            }
            self.offset += n as u64;
            done += n;
        }
        Ok(())
    }

    /// Reads and throws away `len` bytes of the message that starts at `start`.
    fn drain(&mut self, fd: BorrowedFd<'_>, mut len: u64, start: u64) -> Result<(), ReadError> {
        let mut scratch = vec![0u8; READ_CHUNK];
        while len > 0 {
            let chunk = usize::try_from(len).unwrap_or(READ_CHUNK).min(READ_CHUNK);
            self.read_exact(fd, &mut scratch[..chunk], start)?;
            len -= chunk as u64;
        }
        Ok(())
    }

    /// Reads the next message, as [`read_message`] does (same checks, same errors), through
    /// the buffer.
    pub fn read(&mut self, socket: impl AsFd, limits: &Limits) -> Result<Message, ReadError> {
        let fd = socket.as_fd();
        self.max_fds = limits.max_msg_fds;
        let space = rustix::cmsg_space!(ScmRights(limits.max_msg_fds.min(253)));
        if self.cmsg.len() != space {
            self.cmsg = vec![MaybeUninit::uninit(); space];
        }
        let start = self.offset;
        self.fill_buffer(fd, HEADER_SIZE, start)?;
        let header = Header::decode(
            self.buf[self.head..self.head + HEADER_SIZE]
                .try_into()
                .expect("16 bytes"),
        );
        self.consume(HEADER_SIZE);
        if (header.size as usize) < HEADER_SIZE {
            return Err(ReadError::Invalid {
                header,
                error: ProtocolError::invalid(
                    "header",
                    format!("size {} is smaller than the header", header.size),
                ),
                resynced: false,
            });
        }
        // This message's end is the next start, whatever the walk knew before.
        self.next_start = self.next_start.max(start + u64::from(header.size));
        let len = header.payload_len();
        let max = limits.max_message_size();
        if u64::from(header.size) > max {
            let resynced = len as u64 <= DRAIN_LIMIT && self.drain(fd, len as u64, start).is_ok();
            self.take_fds(start);
            return Err(ReadError::Invalid {
                header,
                error: ProtocolError::MessageTooLarge {
                    size: header.size.into(),
                    max,
                },
                resynced,
            });
        }
        let mut payload = if len <= BUFFER_SIZE {
            Vec::with_capacity(len)
        } else {
            // Its bytes are read over as they are, not zeroed again.
            let mut spare = std::mem::take(&mut self.spare);
            spare.truncate(len);
            spare.reserve(len.min(RESERVE_LIMIT) - spare.len().min(RESERVE_LIMIT));
            spare
        };
        if len <= BUFFER_SIZE {
            self.fill_buffer(fd, len, start)?;
            payload.extend_from_slice(&self.buf[self.head..self.head + len]);
            self.consume(len);
        } else {
            // Read over what the spare holds, then grown as bytes arrive, so memory follows
            // what was actually received.
            let mut from = 0;
            loop {
                self.read_exact(fd, &mut payload[from..], start)?;
                from = payload.len();
                if from == len {
                    break;
                }
                payload.resize(from + (len - from).min(READ_CHUNK), 0);
            }
        }
        let (fds, excess) = self.take_fds(start);
        let refuse = |error| ReadError::Invalid {
            header,
            error,
            resynced: true,
        };
        header.validate().map_err(refuse)?;
        if excess > 0 {
            return Err(refuse(ProtocolError::TooManyFds {
                received: fds.len() + excess,
                max: limits.max_msg_fds,
            }));
        }
        Ok(Message {
            header,
            payload,
            fds,
        })
    }
}

/// What one `recvmsg` brought.
struct Received {
    /// Bytes (0: end of stream).
    bytes: usize,
    /// File descriptors (close-on-exec).
    fds: Vec<OwnedFd>,
    /// Whether the control message was truncated (fds were lost).
    truncated: bool,
}

/// One `recvmsg` into `buf`, with room for the fds `cmsg` has space for.
fn recv(fd: BorrowedFd<'_>, buf: &mut [u8], cmsg: &mut [MaybeUninit<u8>]) -> io::Result<Received> {
    loop {
        let mut control = RecvAncillaryBuffer::new(cmsg);
        let mut iov = [IoSliceMut::new(buf)];
        match recvmsg(fd, &mut iov, &mut control, RecvFlags::CMSG_CLOEXEC) {
            Ok(msg) => {
                let mut fds = Vec::new();
                for message in control.drain() {
                    if let RecvAncillaryMessage::ScmRights(received) = message {
                        fds.extend(received);
                    }
                }
                return Ok(Received {
                    bytes: msg.bytes,
                    fds,
                    truncated: msg.flags.contains(ReturnFlags::CTRUNC),
                });
            }
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Writes one message: `header` with its `size` set from `payload`, the payload, and `fds`
/// as `SCM_RIGHTS` with the first bytes. Never raises SIGPIPE (a closed peer is `EPIPE`).
pub fn write_message(
    socket: impl AsFd,
    header: &Header,
    payload: &[u8],
    fds: &[BorrowedFd<'_>],
) -> io::Result<()> {
    write_message_parts(socket, header, &[payload], fds)
}

/// Writes one message as [`write_message`] does, its payload being `parts` one after the
/// other (sent as they are, without gathering them into one buffer).
pub fn write_message_parts(
    socket: impl AsFd,
    header: &Header,
    parts: &[&[u8]],
    fds: &[BorrowedFd<'_>],
) -> io::Result<()> {
    let fd = socket.as_fd();
    let total = HEADER_SIZE + parts.iter().map(|p| p.len()).sum::<usize>();
    let size = u32::try_from(total)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "message above 4 GiB"))?;
    let head = Header { size, ..*header }.encode();

    let mut space = if fds.is_empty() {
        Vec::new()
    } else {
        vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(fds.len()))]
    };
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "too many file descriptors",
        ));
    }

    let mut sent = 0;
    let mut iov = Vec::with_capacity(parts.len() + 1);
    while sent < total {
        // The bytes not sent yet: the rest of the slice `sent` falls in, and those after it.
        iov.clear();
        let mut skip = sent;
        for part in std::iter::once(&head[..]).chain(parts.iter().copied()) {
            if skip >= part.len() {
                skip -= part.len();
                continue;
            }
            iov.push(IoSlice::new(&part[skip..]));
            skip = 0;
        }
        let result = if sent == 0 {
            sendmsg(fd, &iov, &mut control, SendFlags::NOSIGNAL)
        } else {
            sendmsg(
                fd,
                &iov,
                &mut SendAncillaryBuffer::default(),
                SendFlags::NOSIGNAL,
            )
        };
        match result {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => sent += n,
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Asks the kernel for a send buffer on `socket` that holds a whole message of `limits` (the
/// kernel caps it at `net.core.wmem_max`): a large MIG_DATA or REGION transfer then goes
/// out without the sender waiting for the reader every few tens of KiB. Only a hint: the
/// socket works the same when the kernel refuses it.
pub fn widen_send_buffer(socket: impl AsFd, limits: &Limits) {
    let want = usize::try_from(limits.max_message_size()).unwrap_or(usize::MAX);
    let fd = socket.as_fd();
    let current = rustix::net::sockopt::socket_send_buffer_size(fd).unwrap_or(0);
    if current >= want {
        return;
    }
    if let Err(e) = rustix::net::sockopt::set_socket_send_buffer_size(fd, want) {
        tracing::debug!("socket send buffer of {want} bytes refused: {e}");
    }
}

/// Sends the successful reply to `request` with `payload` and `fds`; sends nothing for a
/// No_reply command.
pub fn write_reply(
    socket: impl AsFd,
    request: &Header,
    payload: &[u8],
    fds: &[BorrowedFd<'_>],
) -> io::Result<()> {
    if request.no_reply() {
        return Ok(());
    }
    write_message(socket, &request.reply(payload.len()), payload, fds)
}

/// Sends the error reply to `request` (header only, Error flag, `errno`); sends nothing for
/// a No_reply command.
pub fn write_error_reply(socket: impl AsFd, request: &Header, errno: i32) -> io::Result<()> {
    if request.no_reply() {
        return Ok(());
    }
    write_message(socket, &request.error_reply(errno), &[], &[])
}

/// Credentials of the process at the other end of a Unix socket, as of `connect` or
/// `socketpair`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerCredentials {
    /// Process id.
    pub pid: i32,
    /// Effective user id.
    pub uid: u32,
    /// Effective group id.
    pub gid: u32,
}

/// The peer's credentials (`SO_PEERCRED`).
pub fn peer_credentials(socket: impl AsFd) -> io::Result<PeerCredentials> {
    let cred = rustix::net::sockopt::socket_peercred(socket)?;
    Ok(PeerCredentials {
        pid: cred.pid.as_raw_nonzero().get(),
        uid: cred.uid.as_raw(),
        gid: cred.gid.as_raw(),
    })
}

#[cfg(test)]
mod tests {
    use std::fs::File;
    use std::io::{Read, Write};
    use std::os::unix::fs::MetadataExt;
    use std::os::unix::net::UnixStream;

    use super::*;
    use crate::vfio_user::header::HeaderFlags;

    fn small_limits() -> Limits {
        Limits {
            max_data_xfer_size: 64,
            max_msg_fds: 2,
            max_write_multi: 1,
            max_irq_count: 1,
            max_dma_logging_ranges: 1,
            max_bitmap_size: 8,
            max_info_size: 64,
        }
    }

    #[test]
    fn passes_an_fd_with_scm_rights() {
        let (a, b) = UnixStream::pair().unwrap();
        let (mut pipe_r, pipe_w) = io::pipe().unwrap();
        let header = Header::request(5, Command::DmaMap, 3);
        write_message(&a, &header, b"abc", &[pipe_w.as_fd()]).unwrap();
        drop(pipe_w);
        let msg = read_message(&b, &Limits::default()).unwrap();
        assert_eq!(msg.header, header);
        assert_eq!(msg.payload, b"abc");
        assert_eq!(msg.fds.len(), 1);
        // The received fd is the pipe's write end: what goes in comes out of our read end.
        let mut w = File::from(msg.fds.into_iter().next().unwrap());
        w.write_all(b"through the fd").unwrap();
        drop(w);
        let mut got = String::new();
        pipe_r.read_to_string(&mut got).unwrap();
        assert_eq!(got, "through the fd");
    }

    #[test]
    fn keeps_message_boundaries_and_fds_apart() {
        let (a, b) = UnixStream::pair().unwrap();
        let (_r1, w1) = io::pipe().unwrap();
        let (_r2, w2) = io::pipe().unwrap();
        write_message(
            &a,
            &Header::request(1, Command::DeviceSetIrqs, 2),
            b"xy",
            &[w1.as_fd(), w2.as_fd()],
        )
        .unwrap();
        write_message(&a, &Header::request(2, Command::DeviceReset, 0), b"", &[]).unwrap();
        write_message(
            &a,
            &Header::request(3, Command::DmaMap, 1),
            b"z",
            &[w1.as_fd()],
        )
        .unwrap();
        let limits = Limits::default();
        let m1 = read_message(&b, &limits).unwrap();
        let m2 = read_message(&b, &limits).unwrap();
        let m3 = read_message(&b, &limits).unwrap();
        assert_eq!(
            (m1.header.msg_id, m1.payload.as_slice(), m1.fds.len()),
            (1, &b"xy"[..], 2)
        );
        assert_eq!(
            (m2.header.msg_id, m2.payload.len(), m2.fds.len()),
            (2, 0, 0)
        );
        assert_eq!(
            (m3.header.msg_id, m3.payload.as_slice(), m3.fds.len()),
            (3, &b"z"[..], 1)
        );
        drop(a);
        assert!(matches!(read_message(&b, &limits), Err(ReadError::Closed)));
    }

    #[test]
    fn large_message_crosses_the_socket_buffer() {
        let (a, b) = UnixStream::pair().unwrap();
        let payload: Vec<u8> = (0..(1 << 20) + 16).map(|i| i as u8).collect();
        let expected = payload.clone();
        let writer = std::thread::spawn(move || {
            write_message(
                &a,
                &Header::request(9, Command::RegionWrite, 0),
                &payload,
                &[],
            )
            .unwrap();
        });
        let msg = read_message(&b, &Limits::default()).unwrap();
        writer.join().unwrap();
        assert_eq!(msg.header.size as usize, expected.len() + 16);
        assert_eq!(msg.payload, expected);
    }

    #[test]
    fn parts_go_out_as_one_payload_across_partial_sends() {
        let (a, b) = UnixStream::pair().unwrap();
        let big: Vec<u8> = (0..(1 << 20) + 7).map(|i| (i * 7) as u8).collect();
        let parts: Vec<Vec<u8>> = vec![b"head".to_vec(), Vec::new(), big, b"tail".to_vec()];
        let expected = parts.concat();
        let sent = parts.clone();
        let writer = std::thread::spawn(move || {
            let slices: Vec<&[u8]> = sent.iter().map(Vec::as_slice).collect();
            let header = Header::request(3, Command::MigDataWrite, 0);
            write_message_parts(&a, &header, &slices, &[]).unwrap();
        });
        let msg = read_message(&b, &Limits::default()).unwrap();
        writer.join().unwrap();
        assert_eq!(msg.header.size as usize, expected.len() + HEADER_SIZE);
        assert_eq!(msg.payload, expected);
    }

    #[test]
    fn large_payloads_are_read_into_the_memory_handed_back() {
        let (a, b) = UnixStream::pair().unwrap();
        let payload = vec![0x5a_u8; 3 * BUFFER_SIZE];
        let sender = a.try_clone().unwrap();
        let writer = std::thread::spawn(move || {
            for id in 0..3 {
                let header = Header::request(id, Command::MigDataWrite, 0);
                write_message(&sender, &header, &payload, &[]).unwrap();
            }
        });
        let mut reader = MessageReader::new();
        let first = reader.read(&b, &Limits::default()).unwrap();
        let memory = first.payload.as_ptr();
        reader.recycle(first.payload);
        let second = reader.read(&b, &Limits::default()).unwrap();
        assert_eq!(second.payload.as_ptr(), memory);
        assert_eq!(second.payload, vec![0x5a; 3 * BUFFER_SIZE]);
        // Not handed back: the next one gets memory of its own.
        let third = reader.read(&b, &Limits::default()).unwrap();
        assert_ne!(third.payload.as_ptr(), second.payload.as_ptr());
        writer.join().unwrap();
        // A shorter message in the memory of a longer one holds its own bytes only.
        reader.recycle(third.payload);
        let short = vec![0xa5_u8; 2 * BUFFER_SIZE + 3];
        write_message(
            &a,
            &Header::request(4, Command::MigDataWrite, 0),
            &short,
            &[],
        )
        .unwrap();
        let fourth = reader.read(&b, &Limits::default()).unwrap();
        assert_eq!(fourth.payload, short);

        let (a, b) = UnixStream::pair().unwrap();
        let spare = Vec::with_capacity(BUFFER_SIZE * 4);
        let memory = spare.as_ptr();
        write_message(
            &a,
            &Header::request(1, Command::MigDataWrite, 0),
            &[1; 100],
            &[],
        )
        .unwrap();
        let msg = read_message_into(&b, &Limits::default(), spare).unwrap();
        assert_eq!(msg.payload.as_ptr(), memory);
        assert_eq!(msg.payload, vec![1; 100]);
    }

    #[test]
    fn send_buffer_is_widened_for_the_largest_message() {
        let (a, _b) = UnixStream::pair().unwrap();
        let limits = Limits::default();
        widen_send_buffer(&a, &limits);
        let cap: usize = std::fs::read_to_string("/proc/sys/net/core/wmem_max")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        let want = limits.max_message_size() as usize;
        let got = rustix::net::sockopt::socket_send_buffer_size(&a).unwrap();
        assert!(got >= want.min(cap), "{got} < min({want}, {cap})");
    }

    #[test]
    fn oversized_message_is_drained_and_refused() {
        let (a, b) = UnixStream::pair().unwrap();
        let limits = small_limits();
        let max = limits.max_message_size();
        assert_eq!(max, 16 + 80);
        write_message(
            &a,
            &Header::request(7, Command::RegionWrite, 0),
            &[0xee; 200],
            &[],
        )
        .unwrap();
        write_message(&a, &Header::request(8, Command::DeviceReset, 0), &[], &[]).unwrap();
        match read_message(&b, &limits) {
            Err(err @ ReadError::Invalid { .. }) => {
                assert!(err.can_continue());
                let ReadError::Invalid { header, error, .. } = err else {
                    unreachable!()
                };
                assert_eq!(header.msg_id, 7);
                assert_eq!(error, ProtocolError::MessageTooLarge { size: 216, max });
                assert_eq!(error.errno(), 90);
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        assert_eq!(read_message(&b, &limits).unwrap().header.msg_id, 8);
    }

    #[test]
    fn undersized_header_cannot_resync() {
        let (mut a, b) = UnixStream::pair().unwrap();
        let mut h = Header::request(1, Command::Version, 0);
        h.size = 8;
        a.write_all(&h.encode()).unwrap();
        let err = read_message(&b, &Limits::default()).unwrap_err();
        assert!(!err.can_continue());
    }

    #[test]
    fn truncated_stream_is_an_io_error() {
        let (mut a, b) = UnixStream::pair().unwrap();
        a.write_all(&Header::request(1, Command::RegionWrite, 10).encode())
            .unwrap();
        a.write_all(&[1, 2, 3]).unwrap();
        drop(a);
        match read_message(&b, &Limits::default()) {
            Err(ReadError::Io(e)) => assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof),
            other => panic!("{other:?}"),
        }
        let (mut a, b) = UnixStream::pair().unwrap();
        a.write_all(&[1, 2, 3]).unwrap();
        drop(a);
        assert!(matches!(
            read_message(&b, &Limits::default()),
            Err(ReadError::Io(_))
        ));
    }

    #[test]
    fn too_many_fds_are_closed_and_refused() {
        let (a, b) = UnixStream::pair().unwrap();
        let limits = small_limits();
        let pipes: Vec<_> = (0..5).map(|_| io::pipe().unwrap()).collect();
        let fds: Vec<_> = pipes.iter().map(|(_, w)| w.as_fd()).collect();
        write_message(
            &a,
            &Header::request(1, Command::DeviceSetIrqs, 0),
            &[],
            &fds,
        )
        .unwrap();
        write_message(&a, &Header::request(2, Command::DeviceReset, 0), &[], &[]).unwrap();
        match read_message(&b, &limits) {
            Err(ReadError::Invalid {
                error: ProtocolError::TooManyFds { received, max },
                resynced: true,
                ..
            }) => {
                assert!(received > max);
                assert_eq!(max, 2);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(read_message(&b, &limits).unwrap().header.msg_id, 2);
    }

    #[test]
    fn bad_type_is_refused_after_its_payload() {
        let (a, b) = UnixStream::pair().unwrap();
        let mut h = Header::request(4, Command::RegionRead, 0);
        h.flags = HeaderFlags::from_bits_retain(3);
        write_message(&a, &h, &[0; 16], &[]).unwrap();
        write_message(&a, &Header::request(5, Command::DeviceReset, 0), &[], &[]).unwrap();
        let err = read_message(&b, &Limits::default()).unwrap_err();
        assert!(err.can_continue());
        assert_eq!(
            read_message(&b, &Limits::default()).unwrap().header.msg_id,
            5
        );
    }

    #[test]
    fn reply_helpers() {
        let (a, b) = UnixStream::pair().unwrap();
        let limits = Limits::default();
        let request = Header::request(42, Command::RegionRead, 16);
        write_error_reply(&a, &request, 22).unwrap();
        write_reply(&a, &request, b"data", &[]).unwrap();
        let mut posted = Header::request(43, Command::RegionWrite, 20);
        posted.flags |= HeaderFlags::NO_REPLY;
        write_reply(&a, &posted, b"ignored", &[]).unwrap();
        write_error_reply(&a, &posted, 5).unwrap();
        write_message(&a, &Header::request(44, Command::DeviceReset, 0), &[], &[]).unwrap();

        let err = read_message(&b, &limits).unwrap();
        assert!(err.header.is_reply() && err.header.is_error());
        assert_eq!(
            (err.header.msg_id, err.header.command, err.header.errno()),
            (42, 9, 22)
        );
        assert!(err.payload.is_empty());
        let ok = read_message(&b, &limits).unwrap();
        assert!(ok.header.is_reply() && !ok.header.is_error());
        assert_eq!(
            (ok.header.msg_id, ok.payload.as_slice()),
            (42, &b"data"[..])
        );
        // Nothing was sent for the No_reply command.
        assert_eq!(read_message(&b, &limits).unwrap().header.msg_id, 44);
    }

    #[test]
    fn peer_credentials_of_a_socketpair() {
        let (a, _b) = UnixStream::pair().unwrap();
        let cred = peer_credentials(&a).unwrap();
        assert_eq!(cred.pid as u32, std::process::id());
        let me = std::fs::metadata("/proc/self").unwrap();
        assert_eq!(cred.uid, me.uid());
        assert_eq!(cred.gid, me.gid());
    }

    #[test]
    fn message_parses_as_request_or_reply() {
        let (a, b) = UnixStream::pair().unwrap();
        let limits = Limits::default();
        let req = Request::RegionRead(crate::vfio_user::access::RegionRead {
            offset: 0,
            region: 7,
            count: 4,
        });
        let mut payload = Vec::new();
        req.encode(&mut payload);
        write_message(
            &a,
            &Header::request(1, Command::RegionRead, 0),
            &payload,
            &[],
        )
        .unwrap();
        let msg = read_message(&b, &limits).unwrap();
        assert_eq!(msg.request(&limits).unwrap(), req);
        assert!(msg.reply(&limits).is_err());
        let mut h = Header::request(2, Command::RegionRead, 0);
        h.command = 14;
        write_message(&a, &h, &[], &[]).unwrap();
        let msg = read_message(&b, &limits).unwrap();
        assert_eq!(msg.request(&limits).unwrap_err().errno(), 95);
    }

    /// The inode of an fd: the same open file received twice has the same one.
    fn inode(fd: impl AsFd) -> u64 {
        rustix::fs::fstat(fd).unwrap().st_ino
    }

    #[test]
    fn buffered_reader_gives_fds_to_their_messages_among_plain_ones() {
        let (a, b) = UnixStream::pair().unwrap();
        let (_r1, w1) = io::pipe().unwrap();
        let (_r2, w2) = io::pipe().unwrap();
        let (_r3, w3) = io::pipe().unwrap();
        // (msg_id, payload length, fds): all sent before the first read, so that recvmsgs
        // gather several messages.
        let plan: Vec<(u16, usize, Vec<BorrowedFd<'_>>)> = vec![
            (1, 8, vec![]),
            (2, 3, vec![w1.as_fd(), w2.as_fd()]),
            (3, 0, vec![]),
            (4, 40, vec![]),
            (5, 1, vec![w3.as_fd()]),
            (6, 2, vec![w1.as_fd()]),
            (7, 0, vec![]),
            (8, BUFFER_SIZE + 100, vec![w2.as_fd()]),
            (9, 5, vec![]),
            (10, 5, vec![w3.as_fd()]),
        ];
        let writer = {
            let plan: Vec<(u16, usize, Vec<OwnedFd>)> = plan
                .iter()
                .map(|(id, len, fds)| {
                    let owned = fds.iter().map(|fd| fd.try_clone_to_owned().unwrap());
                    (*id, *len, owned.collect())
                })
                .collect();
            std::thread::spawn(move || {
                for (id, len, fds) in plan {
                    let borrowed: Vec<_> = fds.iter().map(|fd| fd.as_fd()).collect();
                    let payload = vec![id as u8; len];
                    let header = Header::request(id, Command::DmaMap, len);
                    write_message(&a, &header, &payload, &borrowed).unwrap();
                }
                a
            })
        };
        // Let the small messages pile up in the socket.
        std::thread::sleep(std::time::Duration::from_millis(50));
        let mut reader = MessageReader::new();
        let limits = Limits::default();
        for (id, len, fds) in &plan {
            let msg = reader.read(&b, &limits).unwrap();
            assert_eq!(msg.header.msg_id, *id);
            assert_eq!(msg.payload, vec![*id as u8; *len], "message {id}");
            let got: Vec<u64> = msg.fds.iter().map(inode).collect();
            let sent: Vec<u64> = fds.iter().map(inode).collect();
            assert_eq!(got, sent, "fds of message {id}");
        }
        drop(writer.join().unwrap());
        assert!(matches!(reader.read(&b, &limits), Err(ReadError::Closed)));
    }

    #[test]
    fn buffered_reader_reads_many_messages_per_recvmsg() {
        let (a, b) = UnixStream::pair().unwrap();
        for id in 1..=3 {
            write_message(&a, &Header::request(id, Command::DeviceReset, 0), &[], &[]).unwrap();
        }
        let mut reader = MessageReader::new();
        assert!(!reader.has_message());
        let limits = Limits::default();
        assert_eq!(reader.read(&b, &limits).unwrap().header.msg_id, 1);
        // The other two came with the first recvmsg.
        assert!(reader.has_message());
        drop(a);
        assert_eq!(reader.read(&b, &limits).unwrap().header.msg_id, 2);
        assert_eq!(reader.read(&b, &limits).unwrap().header.msg_id, 3);
        assert!(!reader.has_message());
        assert!(matches!(reader.read(&b, &limits), Err(ReadError::Closed)));
    }

    #[test]
    fn buffered_reader_refuses_as_read_message_does_and_stays_in_step() {
        let (a, b) = UnixStream::pair().unwrap();
        let limits = small_limits();
        let pipes: Vec<_> = (0..5).map(|_| io::pipe().unwrap()).collect();
        let fds: Vec<_> = pipes.iter().map(|(_, w)| w.as_fd()).collect();
        write_message(
            &a,
            &Header::request(1, Command::RegionWrite, 0),
            &[0xee; 200],
            &[],
        )
        .unwrap();
        write_message(
            &a,
            &Header::request(2, Command::DeviceSetIrqs, 0),
            &[],
            &fds,
        )
        .unwrap();
        let mut bad = Header::request(3, Command::RegionRead, 0);
        bad.flags = HeaderFlags::from_bits_retain(3);
        write_message(&a, &bad, &[0; 16], &[]).unwrap();
        write_message(&a, &Header::request(4, Command::DmaMap, 1), b"z", &fds[..1]).unwrap();
        (&a).write_all(&Header::request(5, Command::RegionWrite, 10).encode())
            .unwrap();
        (&a).write_all(&[1, 2, 3]).unwrap();
        let mut reader = MessageReader::new();
        match reader.read(&b, &limits) {
            Err(ReadError::Invalid {
                header,
                error: ProtocolError::MessageTooLarge { .. },
                resynced: true,
            }) => {
                assert_eq!(header.msg_id, 1)
            }
            other => panic!("{other:?}"),
        }
        match reader.read(&b, &limits) {
            Err(ReadError::Invalid {
                error: ProtocolError::TooManyFds { max: 2, .. },
                resynced: true,
                ..
            }) => {}
            other => panic!("{other:?}"),
        }
        assert!(reader.read(&b, &limits).unwrap_err().can_continue());
        let msg = reader.read(&b, &limits).unwrap();
        assert_eq!((msg.header.msg_id, msg.fds.len()), (4, 1));
        assert_eq!(inode(&msg.fds[0]), inode(fds[0]));
        // Message 5 claims 10 bytes and has 3: the stream ends inside it.
        drop(a);
        match reader.read(&b, &limits) {
            Err(ReadError::Io(e)) => assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof),
            other => panic!("{other:?}"),
        }
    }
}
