//! The 16-byte message header, its flags and the command numbers.

use bitflags::bitflags;

use super::error::ProtocolError;
use super::wire::{Reader, put_u16, put_u32};

/// Size of the header that starts every message.
pub const HEADER_SIZE: usize = 16;

/// A vfio-user command (the header's `command` field). 14 (the old DIRTY_PAGES) is retired.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum Command {
    /// 1: version and capability negotiation (client to server).
    Version = 1,
    /// 2: make client memory available for DMA.
    DmaMap = 2,
    /// 3: withdraw client memory.
    DmaUnmap = 3,
    /// 4: device flags and region/IRQ counts.
    DeviceGetInfo = 4,
    /// 5: one region's flags, size, mmap offset and capabilities.
    DeviceGetRegionInfo = 5,
    /// 6: ioeventfd/ioregionfd sub-regions of a region.
    DeviceGetRegionIoFds = 6,
    /// 7: one IRQ index's flags and count.
    DeviceGetIrqInfo = 7,
    /// 8: set actions (eventfds, mask, trigger) for IRQs.
    DeviceSetIrqs = 8,
    /// 9: read from a region.
    RegionRead = 9,
    /// 10: write to a region.
    RegionWrite = 10,
    /// 11: read client memory (server to client).
    DmaRead = 11,
    /// 12: write client memory (server to client).
    DmaWrite = 12,
    /// 13: reset the device.
    DeviceReset = 13,
    /// 15: several small region writes in one message.
    RegionWriteMulti = 15,
    /// 16: get, set or probe a device feature (migration, DMA logging).
    DeviceFeature = 16,
    /// 17: read migration data.
    MigDataRead = 17,
    /// 18: write migration data.
    MigDataWrite = 18,
}

impl Command {
    /// Every command, in number order.
    pub const ALL: [Command; 17] = [
        Self::Version,
        Self::DmaMap,
        Self::DmaUnmap,
        Self::DeviceGetInfo,
        Self::DeviceGetRegionInfo,
        Self::DeviceGetRegionIoFds,
        Self::DeviceGetIrqInfo,
        Self::DeviceSetIrqs,
        Self::RegionRead,
        Self::RegionWrite,
        Self::DmaRead,
        Self::DmaWrite,
        Self::DeviceReset,
        Self::RegionWriteMulti,
        Self::DeviceFeature,
        Self::MigDataRead,
        Self::MigDataWrite,
    ];

    /// The command with this number; [`ProtocolError::UnknownCommand`] (ENOTSUP) otherwise.
    pub fn from_raw(raw: u16) -> Result<Self, ProtocolError> {
        Self::ALL
            .into_iter()
            .find(|c| c.raw() == raw)
            .ok_or(ProtocolError::UnknownCommand(raw))
    }

    /// The command number.
    pub fn raw(self) -> u16 {
        self as u16
    }

    /// Whether the server sends this command to the client (DMA_READ, DMA_WRITE).
    pub fn is_server_to_client(self) -> bool {
        matches!(self, Self::DmaRead | Self::DmaWrite)
    }
}

bitflags! {
    /// The header's `flags` field. Bits 0-3 are the message type (0 command, 1 reply).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct HeaderFlags: u32 {
        /// Type 1: a reply to the command with the same message id.
        const REPLY = 1;
        /// In a command: send no reply (posted writes).
        const NO_REPLY = 1 << 4;
        /// In a reply: the command failed; `error` holds an errno.
        const ERROR = 1 << 5;
    }
}

/// The bits of [`HeaderFlags`] holding the message type.
pub const MESSAGE_TYPE_MASK: u32 = 0xf;

/// The message header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Header {
    /// Chosen by the sender, echoed in the reply.
    pub msg_id: u16,
    /// The raw command number (see [`Header::command`]); kept raw so that a message with an
    /// unknown command can still be answered.
    pub command: u16,
    /// Size of the whole message, header included.
    pub size: u32,
    /// Type and flags.
    pub flags: HeaderFlags,
    /// errno of an error reply; reserved (0) otherwise.
    pub error: u32,
}

impl Header {
    /// The header of a command message with `payload_len` bytes of payload.
    pub fn request(msg_id: u16, command: Command, payload_len: usize) -> Self {
        Self {
            msg_id,
            command: command.raw(),
            size: message_size(payload_len),
            flags: HeaderFlags::empty(),
            error: 0,
        }
    }

    /// The header of a successful reply to `self` with `payload_len` bytes of payload.
    pub fn reply(&self, payload_len: usize) -> Self {
        Self {
            msg_id: self.msg_id,
            command: self.command,
            size: message_size(payload_len),
            flags: HeaderFlags::REPLY,
            error: 0,
        }
    }

    /// The header of an error reply to `self`: header only, Error flag, `error` = `errno`.
    pub fn error_reply(&self, errno: i32) -> Self {
        Self {
            msg_id: self.msg_id,
            command: self.command,
            size: HEADER_SIZE as u32,
            flags: HeaderFlags::REPLY | HeaderFlags::ERROR,
            error: errno.unsigned_abs(),
        }
    }

    /// Decodes the 16 bytes as they are, without checking anything.
    pub fn decode(bytes: &[u8; HEADER_SIZE]) -> Self {
        let mut r = Reader::new("header", bytes);
        // Cannot fail: the reader has exactly the 16 bytes it reads.
        let msg_id = r.u16().unwrap_or_default();
        let command = r.u16().unwrap_or_default();
        let size = r.u32().unwrap_or_default();
        let flags = HeaderFlags::from_bits_retain(r.u32().unwrap_or_default());
        let error = r.u32().unwrap_or_default();
        Self {
            msg_id,
            command,
            size,
            flags,
            error,
        }
    }

    /// Parses and validates a header from the start of `bytes`.
    pub fn parse(bytes: &[u8]) -> Result<Self, ProtocolError> {
        let mut r = Reader::new("header", bytes);
        let mut raw = [0u8; HEADER_SIZE];
        raw.copy_from_slice(r.take(HEADER_SIZE)?);
        let header = Self::decode(&raw);
        header.validate()?;
        Ok(header)
    }

    /// Checks the size (at least the header), the type (command or reply), that no unknown
    /// flag bit is set and that only a reply has the Error flag.
    pub fn validate(&self) -> Result<(), ProtocolError> {
        if (self.size as usize) < HEADER_SIZE {
            return Err(ProtocolError::invalid(
                "header",
                format!("size {} is smaller than the header", self.size),
            ));
        }
        let kind = self.flags.bits() & MESSAGE_TYPE_MASK;
        if kind > 1 {
            return Err(ProtocolError::invalid(
                "header",
                format!("message type {kind}"),
            ));
        }
        let unknown = self.flags.bits() & !(MESSAGE_TYPE_MASK | HeaderFlags::all().bits());
        if unknown != 0 {
            return Err(ProtocolError::invalid(
                "header",
                format!("unknown flag bits {unknown:#x}"),
            ));
        }
        if kind == 0 && self.flags.contains(HeaderFlags::ERROR) {
            return Err(ProtocolError::invalid(
                "header",
                "a command with the Error flag",
            ));
        }
        Ok(())
    }

    /// The 16 bytes on the wire.
    pub fn encode(&self) -> [u8; HEADER_SIZE] {
        let mut out = Vec::with_capacity(HEADER_SIZE);
        put_u16(&mut out, self.msg_id);
        put_u16(&mut out, self.command);
        put_u32(&mut out, self.size);
        put_u32(&mut out, self.flags.bits());
        put_u32(&mut out, self.error);
        let mut bytes = [0u8; HEADER_SIZE];
        bytes.copy_from_slice(&out);
        bytes
    }

    /// The command, if the number is a known one.
    pub fn command(&self) -> Result<Command, ProtocolError> {
        Command::from_raw(self.command)
    }

    /// Whether this is a reply (type 1).
    pub fn is_reply(&self) -> bool {
        self.flags.bits() & MESSAGE_TYPE_MASK == HeaderFlags::REPLY.bits()
    }

    /// Whether the sender wants no reply.
    pub fn no_reply(&self) -> bool {
        self.flags.contains(HeaderFlags::NO_REPLY)
    }

    /// Whether this is an error reply.
    pub fn is_error(&self) -> bool {
        self.flags.contains(HeaderFlags::ERROR)
    }

    /// The errno of an error reply (may be 0: the spec makes it optional).
    pub fn errno(&self) -> i32 {
        i32::try_from(self.error).unwrap_or(i32::MAX)
    }

    /// Payload size announced by the header (0 if `size` is below the header size).
    pub fn payload_len(&self) -> usize {
        (self.size as usize).saturating_sub(HEADER_SIZE)
    }
}

/// Header size plus `payload_len`, saturated to `u32::MAX` (a writer refuses such a message).
fn message_size(payload_len: usize) -> u32 {
    u32::try_from(payload_len.saturating_add(HEADER_SIZE)).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_numbers() {
        for (raw, expected) in [
            (1u16, Command::Version),
            (13, Command::DeviceReset),
            (18, Command::MigDataWrite),
        ] {
            assert_eq!(Command::from_raw(raw).unwrap(), expected);
            assert_eq!(expected.raw(), raw);
        }
        for raw in [0u16, 14, 19, 0xffff] {
            assert_eq!(
                Command::from_raw(raw),
                Err(ProtocolError::UnknownCommand(raw))
            );
        }
        assert_eq!(Command::ALL.len(), 17);
        assert!(Command::DmaRead.is_server_to_client());
        assert!(!Command::RegionRead.is_server_to_client());
    }

    #[test]
    fn header_round_trip_and_layout() {
        let h = Header::request(0x1234, Command::RegionWrite, 20);
        let bytes = h.encode();
        assert_eq!(&bytes[0..2], &0x1234u16.to_ne_bytes());
        assert_eq!(&bytes[2..4], &10u16.to_ne_bytes());
        assert_eq!(&bytes[4..8], &36u32.to_ne_bytes());
        assert_eq!(Header::parse(&bytes).unwrap(), h);
        assert_eq!(h.payload_len(), 20);
        assert!(!h.is_reply());

        let reply = h.reply(4);
        assert!(reply.is_reply() && !reply.is_error());
        assert_eq!((reply.msg_id, reply.command, reply.size), (0x1234, 10, 20));

        let err = h.error_reply(22);
        assert!(err.is_reply() && err.is_error());
        assert_eq!((err.size, err.errno()), (16, 22));
        assert_eq!(err.flags.bits(), 0x21);
    }

    #[test]
    fn header_refuses_bad_input() {
        assert!(matches!(
            Header::parse(&[0u8; 15]),
            Err(ProtocolError::Truncated { .. })
        ));
        let mut h = Header::request(1, Command::Version, 0);
        h.size = 15;
        assert_eq!(Header::parse(&h.encode()).unwrap_err().errno(), 22);
        let mut h = Header::request(1, Command::Version, 0);
        h.flags = HeaderFlags::from_bits_retain(2);
        assert!(Header::parse(&h.encode()).is_err());
        // Unknown flag bits are refused, as VFIO refuses unknown flags; so is a command
        // claiming to be an error.
        h.flags = HeaderFlags::from_bits_retain(0x100 | 1);
        assert_eq!(Header::parse(&h.encode()).unwrap_err().errno(), 22);
        h.flags = HeaderFlags::ERROR;
        assert_eq!(Header::parse(&h.encode()).unwrap_err().errno(), 22);
        h.flags = HeaderFlags::REPLY | HeaderFlags::ERROR;
        assert_eq!(Header::parse(&h.encode()).unwrap(), h);
        h.flags = HeaderFlags::NO_REPLY;
        assert_eq!(Header::parse(&h.encode()).unwrap(), h);
    }
}
