//! The messages between the source and the destination side of a migration, over any byte
//! stream (TCP between hosts).
//!
//! Each message is `{tag le32, length le32, payload}`. The source sends HELLO (link version,
//! the destination function's name), DATA (stream bytes, as the source device produced them),
//! SYNC (answer when everything so far is loaded), FINISH (resume the destination) and ABORT;
//! the destination answers READY (its device is RESUMING), ACK, RESUMED or REFUSED (with the
//! reason). The destination never trusts what it reads: lengths are bounded and unknown tags
//! refused.

use std::io::{self, Read, Write};

/// Version of this message set, carried in HELLO.
pub const LINK_VERSION: u32 = 1;

/// Largest DATA payload (16 MiB).
pub const MAX_DATA: usize = 16 << 20;
/// Largest text payload (a name or a reason).
pub const MAX_TEXT: usize = 4096;

const TAG_HELLO: u32 = 1;
const TAG_DATA: u32 = 2;
const TAG_SYNC: u32 = 3;
const TAG_FINISH: u32 = 4;
const TAG_ABORT: u32 = 5;
const TAG_READY: u32 = 0x101;
const TAG_ACK: u32 = 0x102;
const TAG_RESUMED: u32 = 0x103;
const TAG_REFUSED: u32 = 0x104;

/// A message on the link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Source: start a migration into `function` (empty: the one the destination serves).
    Hello {
        /// The sender's [`LINK_VERSION`].
        version: u32,
        /// Name of the destination function.
        function: String,
    },
    /// Source: the next bytes of the migration stream.
    Data(Vec<u8>),
    /// Source: answer ACK once everything sent so far is loaded.
    Sync,
    /// Source: the stream is complete; resume the destination.
    Finish,
    /// Source: the migration is abandoned; put the destination back as it was.
    Abort,
    /// Destination: the device is RESUMING, send the stream.
    Ready,
    /// Destination: everything up to the SYNC is loaded.
    Ack,
    /// Destination: the device runs with the migrated state.
    Resumed,
    /// Destination: the migration is refused; the device is back as it was.
    Refused(String),
}

/// A link failure.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The stream failed.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The peer closed the link.
    #[error("the peer closed the link")]
    Closed,
    /// The peer sent something this side does not understand.
    #[error("invalid message: {0}")]
    Invalid(String),
}

impl Message {
    fn tag(&self) -> u32 {
        match self {
            Self::Hello { .. } => TAG_HELLO,
            Self::Data(_) => TAG_DATA,
            Self::Sync => TAG_SYNC,
            Self::Finish => TAG_FINISH,
            Self::Abort => TAG_ABORT,
            Self::Ready => TAG_READY,
            Self::Ack => TAG_ACK,
            Self::Resumed => TAG_RESUMED,
            Self::Refused(_) => TAG_REFUSED,
        }
    }

    /// Writes the message to `out`.
    pub fn write_to(&self, out: &mut impl Write) -> Result<(), LinkError> {
        let payload: &[u8] = match self {
            Self::Hello { function, .. } => function.as_bytes(),
            Self::Data(data) => data,
            Self::Refused(reason) => reason.as_bytes(),
            _ => &[],
        };
        let limit = if matches!(self, Self::Data(_)) {
            MAX_DATA
        } else {
            MAX_TEXT
        };
        if payload.len() > limit {
            return Err(LinkError::Invalid(format!(
                "{} bytes in one message (at most {limit})",
                payload.len()
            )));
        }
        let mut header = Vec::with_capacity(12 + payload.len());
        header.extend_from_slice(&self.tag().to_le_bytes());
        let extra = if let Self::Hello { version, .. } = self {
            Some(version.to_le_bytes())
        } else {
            None
        };
        let length = payload.len() + extra.map_or(0, |e| e.len());
        header.extend_from_slice(&(length as u32).to_le_bytes());
        if let Some(extra) = extra {
            header.extend_from_slice(&extra);
        }
        // One write: a header sent alone would wait for its ACK (Nagle) before the payload.
        header.extend_from_slice(payload);
        out.write_all(&header)?;
        out.flush()?;
        Ok(())
    }

    /// Reads one message from `input`.
    pub fn read_from(input: &mut impl Read) -> Result<Self, LinkError> {
        let mut header = [0u8; 8];
        read_exact(input, &mut header)?;
        let tag = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        let length = u32::from_le_bytes([header[4], header[5], header[6], header[7]]) as usize;
        // Text messages may carry a version word before the text.
        let limit = if tag == TAG_DATA {
            MAX_DATA
        } else {
            MAX_TEXT + 4
        };
        if length > limit {
            return Err(LinkError::Invalid(format!(
                "tag {tag:#x} with {length} bytes (at most {limit})"
            )));
        }
        let mut payload = vec![0u8; length];
        read_exact(input, &mut payload)?;
        Self::parse(tag, payload)
    }

    fn parse(tag: u32, payload: Vec<u8>) -> Result<Self, LinkError> {
        let empty = |message: Self| {
            if payload.is_empty() {
                Ok(message)
            } else {
                Err(LinkError::Invalid(format!(
                    "tag {tag:#x} carries {} unexpected bytes",
                    payload.len()
                )))
            }
        };
        match tag {
            TAG_HELLO => {
                let Some((version, name)) = payload.split_first_chunk::<4>() else {
                    return Err(LinkError::Invalid("HELLO without a version".into()));
                };
                Ok(Self::Hello {
                    version: u32::from_le_bytes(*version),
                    function: text(name)?,
                })
            }
            TAG_DATA => Ok(Self::Data(payload)),
            TAG_SYNC => empty(Self::Sync),
            TAG_FINISH => empty(Self::Finish),
            TAG_ABORT => empty(Self::Abort),
            TAG_READY => empty(Self::Ready),
            TAG_ACK => empty(Self::Ack),
            TAG_RESUMED => empty(Self::Resumed),
            TAG_REFUSED => Ok(Self::Refused(text(&payload)?)),
            _ => Err(LinkError::Invalid(format!("unknown tag {tag:#x}"))),
        }
    }
}

fn text(bytes: &[u8]) -> Result<String, LinkError> {
    if bytes.len() > MAX_TEXT {
        return Err(LinkError::Invalid("text longer than 4096 bytes".into()));
    }
    String::from_utf8(bytes.to_vec()).map_err(|_| LinkError::Invalid("text is not UTF-8".into()))
}

fn read_exact(input: &mut impl Read, buf: &mut [u8]) -> Result<(), LinkError> {
    input.read_exact(buf).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            LinkError::Closed
        } else {
            LinkError::Io(e)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(message: Message) {
        let mut bytes = Vec::new();
        message.write_to(&mut bytes).unwrap();
        assert_eq!(Message::read_from(&mut bytes.as_slice()).unwrap(), message);
    }

    #[test]
    fn every_message_round_trips() {
        for message in [
            Message::Hello {
                version: LINK_VERSION,
                function: "virtio-blk0".into(),
            },
            Message::Data(vec![1, 2, 3]),
            Message::Data(Vec::new()),
            Message::Sync,
            Message::Finish,
            Message::Abort,
            Message::Ready,
            Message::Ack,
            Message::Resumed,
            Message::Refused("layout differs".into()),
        ] {
            round_trip(message);
        }
    }

    #[test]
    fn bad_input_is_refused() {
        let frame = |tag: u32, payload: &[u8]| {
            let mut bytes = tag.to_le_bytes().to_vec();
            bytes.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            bytes.extend_from_slice(payload);
            bytes
        };
        let read = |bytes: Vec<u8>| Message::read_from(&mut bytes.as_slice());
        assert!(matches!(read(frame(99, &[])), Err(LinkError::Invalid(_))));
        assert!(matches!(
            read(frame(TAG_SYNC, &[1])),
            Err(LinkError::Invalid(_))
        ));
        assert!(matches!(
            read(frame(TAG_HELLO, &[1])),
            Err(LinkError::Invalid(_))
        ));
        assert!(matches!(
            read(frame(TAG_REFUSED, &[0xff, 0xfe])),
            Err(LinkError::Invalid(_))
        ));
        // A length past the limit is refused before anything is allocated.
        let mut huge = TAG_DATA.to_le_bytes().to_vec();
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(read(huge), Err(LinkError::Invalid(_))));
        let mut long = TAG_REFUSED.to_le_bytes().to_vec();
        long.extend_from_slice(&(MAX_TEXT as u32 + 5).to_le_bytes());
        assert!(matches!(read(long), Err(LinkError::Invalid(_))));
        // A message cut short is a closed link.
        let mut cut = frame(TAG_DATA, &[1, 2, 3, 4]);
        cut.truncate(10);
        assert!(matches!(read(cut), Err(LinkError::Closed)));
        assert!(
            Message::Data(vec![0; MAX_DATA + 1])
                .write_to(&mut Vec::new())
                .is_err()
        );
    }
}
