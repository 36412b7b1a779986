//! Framing over a connected `AF_UNIX` stream socket: one message at a time, file descriptors
//! as `SCM_RIGHTS`, reply helpers and the peer's credentials (`SO_PEERCRED`).

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

    /// Reads `len` bytes, growing the buffer as they arrive.
    fn read_payload(&mut self, len: usize) -> Result<Vec<u8>, ReadError> {
        let mut payload = Vec::with_capacity(len.min(READ_CHUNK));
        while payload.len() < len {
            let start = payload.len();
            let chunk = (len - start).min(READ_CHUNK);
            payload.resize(start + chunk, 0);
            self.fill(&mut payload[start..], false)?;
        }
        Ok(payload)
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
    let payload = rx.read_payload(len)?;
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

/// Writes one message: `header` with its `size` set from `payload`, the payload, and `fds`
/// as `SCM_RIGHTS` with the first bytes. Never raises SIGPIPE (a closed peer is `EPIPE`).
pub fn write_message(
    socket: impl AsFd,
    header: &Header,
    payload: &[u8],
    fds: &[BorrowedFd<'_>],
) -> io::Result<()> {
    let fd = socket.as_fd();
    let total = HEADER_SIZE + payload.len();
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
    while sent < total {
        let (head_part, payload_part) = if sent < HEADER_SIZE {
            (&head[sent..], payload)
        } else {
            (&head[..0], &payload[sent - HEADER_SIZE..])
        };
        let iov = [IoSlice::new(head_part), IoSlice::new(payload_part)];
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
}
