//! The client's migration data calls: MIG_DATA_READ and MIG_DATA_WRITE, inline or through
//! the shared buffer of `mig_data_shared` (registered, or made by the server), and requests
//! on that buffer sent ahead of taking their replies.

use std::sync::Arc;

use super::{Client, ClientError};
use crate::vfio_user::Payload;
use crate::vfio_user::error::ProtocolError;
use crate::vfio_user::feature::{
    DEVICE_FEATURE_SIZE, DeviceFeature, FEATURE_MIG_DATA_BUFFER, FeatureOps, MigDataBufferSize,
};
use crate::vfio_user::header::{Command, HeaderFlags};
use crate::vfio_user::mig_data::{
    MigDataRead, MigDataReadReply, MigDataShared, MigDataSharedReply, MigDataWrite,
};
use crate::vfio_user::shared_buf::SharedBuffer;
use crate::vfio_user::socket::Message;
use crate::vfio_user::wire::len_u32;

/// Most MIG_DATA requests on the shared buffer a client sends ahead of taking their replies
/// ([`Client::mig_data_read_ahead`], [`Client::mig_data_write_ahead`]). The server answers in
/// the order sent, so their replies are taken oldest first: taking another request's while
/// an older one is out is refused. A migration state change or a reset drops those not taken.
pub const MAX_MIG_DATA_AHEAD: usize = 4;

/// A MIG_DATA request on the shared buffer sent and not yet taken.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Ahead {
    /// Its message id, which its reply carries.
    pub(super) id: u16,
    command: Command,
    offset: u64,
    size: u32,
}

/// What a MIG_DATA_READ brought.
#[derive(Debug)]
pub enum MigChunk {
    /// Inline bytes, at this range of the caller's buffer.
    Inline(std::ops::Range<usize>),
    /// Bytes the server wrote into the shared buffer (`mig_data_shared`).
    Shared {
        /// The buffer.
        buffer: Arc<SharedBuffer>,
        /// Where the bytes start in it.
        offset: u64,
        /// How many.
        len: usize,
    },
}

impl MigChunk {
    /// How many bytes.
    pub fn len(&self) -> usize {
        match self {
            Self::Inline(range) => range.len(),
            Self::Shared { len, .. } => *len,
        }
    }

    /// Whether no bytes came (the end of the data, for now).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Client {
    /// MIG_DATA_READ of up to `size` bytes; fewer means the end of the data (for now).
    pub fn mig_data_read(&mut self, size: u32) -> Result<Vec<u8>, ClientError> {
        let mut data = Vec::new();
        let range = self.mig_data_read_into(size, &mut data)?;
        // The data moved to the front of the received payload: no second buffer.
        data.truncate(range.end);
        data.drain(..range.start);
        Ok(data)
    }

    /// MIG_DATA_READ of up to `size` bytes, the reply received into `buf`'s memory (its
    /// contents replaced): the data is `buf[range]`. Handing the same `buf` to every read
    /// keeps the reply in memory that is already mapped. With a registered shared buffer the
    /// bytes come through its start and are copied into `buf`
    /// ([`Client::mig_data_read_shared`] leaves them there).
    pub fn mig_data_read_into(
        &mut self,
        size: u32,
        buf: &mut Vec<u8>,
    ) -> Result<std::ops::Range<usize>, ClientError> {
        if u64::from(size) > self.limits.max_data_xfer_size {
            return Err(ProtocolError::too_large(
                "MIG_DATA_READ",
                size.into(),
                self.limits.max_data_xfer_size,
            )
            .into());
        }
        if let Some(shared) = self.mig_buffer.clone() {
            let n = self.mig_data_read_shared(0, size.min(len_u32(shared.len())))?;
            buf.resize(n as usize, 0);
            shared.copy_out(0, buf).map_err(ClientError::SharedBuffer)?;
            return Ok(0..buf.len());
        }
        let request = MigDataRead::new(size).to_bytes();
        let id = self.send(Command::MigDataRead, &request, &[], HeaderFlags::empty())?;
        let msg = self.wait_into(id, Command::MigDataRead, std::mem::take(buf))?;
        *buf = msg.payload;
        if !msg.fds.is_empty() {
            return Err(ProtocolError::invalid(
                "MIG_DATA_READ reply",
                format!("{} fds", msg.fds.len()),
            )
            .into());
        }
        let range = MigDataReadReply::data_range(buf, &self.limits)?;
        if range.len() > size as usize {
            return Err(
                ProtocolError::invalid("MIG_DATA_READ reply", "more data than asked").into(),
            );
        }
        Ok(range)
    }

    /// MIG_DATA_WRITE of `data`, split at the negotiated transfer size. With a registered
    /// shared buffer the pieces go through its start.
    pub fn mig_data_write(&mut self, data: &[u8]) -> Result<(), ClientError> {
        if let Some(shared) = self.mig_buffer.clone() {
            for part in data.chunks(self.xfer_chunk().min(shared.len())) {
                shared.copy_in(0, part).map_err(ClientError::SharedBuffer)?;
                self.mig_data_write_shared(0, len_u32(part.len()))?;
            }
            return Ok(());
        }
        let chunk = self.xfer_chunk();
        for part in data.chunks(chunk) {
            // The fixed part and the data go out as they are: the data is not copied.
            let prefix = MigDataWrite::prefix(part.len());
            let id = self.send_parts(
                Command::MigDataWrite,
                &[&prefix, part],
                &[],
                HeaderFlags::empty(),
            )?;
            self.wait(id, Command::MigDataWrite)?;
        }
        Ok(())
    }

    /// Registers `buffer` as this connection's shared migration data buffer
    /// (`mig_data_shared`, FEATURE_MIG_DATA_BUFFER): from then on MIG_DATA_READ and
    /// MIG_DATA_WRITE name bytes in it, and [`Client::mig_data_read`] and
    /// [`Client::mig_data_write`] move their bytes through its start. The same buffer may be
    /// registered with several servers (a source and a destination), whose reads and writes
    /// then meet in it with no copy in between.
    pub fn register_mig_buffer(&mut self, buffer: Arc<SharedBuffer>) -> Result<(), ClientError> {
        let request = DeviceFeature::set(FEATURE_MIG_DATA_BUFFER, Vec::new()).to_bytes();
        let id = self.send(
            Command::DeviceFeature,
            &request,
            &[buffer.fd()],
            HeaderFlags::empty(),
        )?;
        self.wait(id, Command::DeviceFeature)?;
        self.mig_buffer = Some(buffer);
        Ok(())
    }

    /// Asks the server to make this connection's shared migration data buffer, `len` bytes
    /// (FEATURE_MIG_DATA_BUFFER GET, `mig_data_shared`): the server maps it first and seals
    /// it so that only it writes the bytes, and saves MIG_DATA_READs straight into it. The
    /// buffer comes back mapped read-only here; registered with another server (a
    /// destination, [`Client::register_mig_buffer`]) it carries this one's reads to that one's
    /// writes. A server that does not make buffers answers EINVAL
    /// ([`ClientError::Remote`]), and nothing changed.
    pub fn server_mig_buffer(&mut self, len: u64) -> Result<Arc<SharedBuffer>, ClientError> {
        let request = DeviceFeature {
            argsz: DEVICE_FEATURE_SIZE + MigDataBufferSize::LEN as u32,
            feature: FEATURE_MIG_DATA_BUFFER,
            ops: FeatureOps::GET,
            data: MigDataBufferSize { size: len }.to_bytes(),
        };
        let mut msg = self.call(Command::DeviceFeature, &request.to_bytes(), &[])?;
        let reply = DeviceFeature::parse(&msg.payload, &self.limits)?;
        let size = MigDataBufferSize::parse(&reply.data, &self.limits)?;
        let invalid = |what: String| ProtocolError::invalid("MIG_DATA_BUFFER reply", what);
        if msg.fds.len() != 1 || size.size != len {
            return Err(invalid(format!("{} fds, {} bytes", msg.fds.len(), size.size)).into());
        }
        let fd = msg.fds.pop().ok_or_else(|| invalid("no fd".into()))?;
        let buffer = SharedBuffer::check(fd, len).map_err(ClientError::SharedBuffer)?;
        if !buffer.is_read_only() {
            return Err(invalid("a buffer not sealed against our writes".into()).into());
        }
        let buffer = Arc::new(buffer);
        self.mig_buffer = Some(Arc::clone(&buffer));
        Ok(buffer)
    }

    /// The shared migration data buffer registered with the server, if any.
    pub fn mig_buffer(&self) -> Option<&Arc<SharedBuffer>> {
        self.mig_buffer.as_ref()
    }

    /// MIG_DATA_READ into the registered buffer: up to `size` bytes of the stream at
    /// `offset`; returns how many the server wrote there (fewer: the end, for now). When
    /// requests were sent ahead ([`Client::mig_data_read_ahead`]) this takes the oldest one's
    /// answer, which must be a read of the same `offset` and `size`.
    pub fn mig_data_read_shared(&mut self, offset: u64, size: u32) -> Result<u32, ClientError> {
        let msg = self.take_shared(Command::MigDataRead, offset, size)?;
        let reply = MigDataSharedReply::parse(&msg.payload, &self.limits)?;
        if reply.size > size {
            return Err(
                ProtocolError::invalid("MIG_DATA_READ reply", "more data than asked").into(),
            );
        }
        Ok(reply.size)
    }

    /// MIG_DATA_WRITE of the `size` bytes at `offset` in the registered buffer. When requests
    /// were sent ahead ([`Client::mig_data_write_ahead`]) this takes the oldest one's answer,
    /// which must be a write of the same `offset` and `size`.
    pub fn mig_data_write_shared(&mut self, offset: u64, size: u32) -> Result<(), ClientError> {
        self.take_shared(Command::MigDataWrite, offset, size)?;
        Ok(())
    }

    /// Sends a MIG_DATA_READ of up to `size` bytes of the stream into the registered buffer
    /// at `offset` without waiting for its reply: the server works on it while the caller
    /// does other things (copies out an earlier chunk, sends it on).
    /// [`Client::mig_data_read_shared`] with the same `offset` and `size` takes the answer.
    /// The bytes land in the buffer while the read is out: the caller leaves that range alone
    /// until it is taken. See [`MAX_MIG_DATA_AHEAD`] for the order of requests sent ahead.
    pub fn mig_data_read_ahead(&mut self, offset: u64, size: u32) -> Result<(), ClientError> {
        self.send_ahead(Command::MigDataRead, offset, size)
    }

    /// Sends a MIG_DATA_WRITE of the `size` bytes at `offset` in the registered buffer
    /// without waiting for its reply: the server loads them while the caller does other
    /// things. [`Client::mig_data_write_shared`] with the same `offset` and `size` takes the
    /// answer (the server's refusal, if any). The server reads the bytes while the write is
    /// out: the caller leaves that range alone until it is taken.
    pub fn mig_data_write_ahead(&mut self, offset: u64, size: u32) -> Result<(), ClientError> {
        self.send_ahead(Command::MigDataWrite, offset, size)
    }

    /// Forgets the MIG_DATA requests sent ahead and not taken, and their answers: after a
    /// reply to a later request (a state change, a reset), all of theirs have come.
    pub(super) fn drop_ahead(&mut self) {
        if !self.ahead.is_empty() {
            tracing::debug!(
                dropped = self.ahead.len(),
                "MIG_DATA requests sent ahead end with the stream"
            );
        }
        self.ahead.clear();
        self.early.clear();
    }

    /// Sends `command` on the registered buffer ahead of taking its reply.
    fn send_ahead(&mut self, command: Command, offset: u64, size: u32) -> Result<(), ClientError> {
        if self.ahead.len() >= MAX_MIG_DATA_AHEAD {
            return Err(ProtocolError::invalid(
                "MIG_DATA",
                format!("more than {MAX_MIG_DATA_AHEAD} requests sent ahead"),
            )
            .into());
        }
        let id = self.send_shared(command, offset, size)?;
        self.ahead.push_back(Ahead {
            id,
            command,
            offset,
            size,
        });
        Ok(())
    }

    /// The reply to `command` on the registered buffer: the oldest request sent ahead, which
    /// must be that one, or a request sent now.
    fn take_shared(
        &mut self,
        command: Command,
        offset: u64,
        size: u32,
    ) -> Result<Message, ClientError> {
        let id = match self.ahead.front() {
            Some(a) if (a.command, a.offset, a.size) == (command, offset, size) => a.id,
            Some(a) => {
                return Err(ProtocolError::invalid(
                    "MIG_DATA",
                    format!(
                        "{command:?} of {size} bytes at {offset} asked while the {:?} of {} \
                         bytes at {} sent ahead is not taken",
                        a.command, a.size, a.offset
                    ),
                )
                .into());
            }
            None => self.send_shared(command, offset, size)?,
        };
        let taken = self.wait(id, command);
        if self.ahead.front().is_some_and(|a| a.id == id) {
            self.ahead.pop_front();
        }
        let msg = taken?;
        if !msg.fds.is_empty() {
            return Err(
                ProtocolError::invalid("MIG_DATA reply", format!("{} fds", msg.fds.len())).into(),
            );
        }
        Ok(msg)
    }

    /// Sends `command` naming `size` bytes at `offset` in the registered buffer (checked
    /// against it first).
    fn send_shared(
        &mut self,
        command: Command,
        offset: u64,
        size: u32,
    ) -> Result<u16, ClientError> {
        if let Some(shared) = &self.mig_buffer {
            shared
                .range(offset, size.into())
                .map_err(ClientError::SharedBuffer)?;
        }
        let request = MigDataShared::new(offset, size).to_bytes();
        self.send(command, &request, &[], HeaderFlags::empty())
    }
}
