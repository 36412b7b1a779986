//! The vfio-user wire protocol (QEMU docs/interop/vfio-user.rst) and a blocking client.
//!
//! - [`header`]: the 16-byte header, flags and command numbers.
//! - One module per command group with a request and reply type each, all implementing
//!   [`Payload`]: [`version`] (with the negotiation rules), [`dma`], [`device`], [`region`],
//!   [`access`] (REGION_READ/WRITE, WRITE_MULTI), [`irq`], [`feature`] (DEVICE_FEATURE and the
//!   migration / DMA logging payloads, and this project's PRECOPY_INFO extension:
//!   [`feature::FEATURE_PRECOPY_INFO`] `0xf001`, GET only, `{initial_bytes u64, dirty_bytes
//!   u64}`, valid in PRE_COPY and PRE_COPY_P2P only), [`mig_data`] (with [`shared_buf`]: the
//!   project's `mig_data_shared` extension, migration data through one shared buffer).
//! - [`message`]: [`Request`] and [`Reply`], dispatching on the command number; [`rules`]:
//!   what VFIO asks of a request's fields beyond their layout (argsz minimums, reserved
//!   fields, fds per command).
//! - [`socket`]: framing over a stream socket with fds as SCM_RIGHTS, reply helpers, peer
//!   credentials.
//! - [`client`]: a blocking client that also answers the server's DMA_READ/DMA_WRITE, on
//!   the main socket or, in twin-socket mode, on a thread serving the twin socket.
//!
//! Parsing never panics and never allocates more than the input holds: every size and count
//! is checked against the payload and against [`Limits`]. A [`ProtocolError`] carries the
//! errno a server sends back. All integers are in host byte order, as the protocol says.

pub mod access;
pub mod client;
pub mod device;
pub mod dma;
pub mod error;
pub mod feature;
pub mod header;
pub mod irq;
pub mod message;
pub mod mig_data;
pub mod region;
pub mod rules;
pub mod shared_buf;
pub mod socket;
mod twin;
pub mod version;
mod wire;

pub use client::{Client, ClientError, ClientOptions, DmaHandler, MAX_MIG_DATA_AHEAD, MigChunk};
pub use error::ProtocolError;
pub use header::{Command, HEADER_SIZE, Header, HeaderFlags};
pub use message::{Reply, Request};
pub use socket::{
    Message, MessageReader, PeerCredentials, ReadError, peer_credentials, read_message,
    read_message_into, widen_send_buffer, write_error_reply, write_message, write_message_parts,
    write_reply,
};
pub use version::{Capabilities, Negotiated, ServerOffer, Version, accept_reply, negotiate};

/// Bounds applied while reading and parsing messages. Start from [`Limits::default`] and
/// apply the negotiated values with [`Negotiated::limits`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest `count` of REGION_READ/WRITE, DMA_READ/WRITE and MIG_DATA_READ/WRITE.
    pub max_data_xfer_size: u64,
    /// Most file descriptors accepted with one message.
    pub max_msg_fds: usize,
    /// Most entries in one REGION_WRITE_MULTI (QEMU sends at most 200).
    pub max_write_multi: u64,
    /// Largest `count` of DEVICE_SET_IRQS.
    pub max_irq_count: u32,
    /// Most ranges in DMA_LOGGING_START (the kernel drivers accept at least 256).
    pub max_dma_logging_ranges: u32,
    /// Largest DMA_LOGGING_REPORT bitmap, in bytes.
    pub max_bitmap_size: u64,
    /// Largest payload of replies sized by the client's `argsz` (region info with its
    /// capabilities, region I/O fds) and of VERSION.
    pub max_info_size: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_data_xfer_size: version::DEFAULT_MAX_DATA_XFER_SIZE,
            max_msg_fds: version::QEMU_MAX_MSG_FDS as usize,
            max_write_multi: 256,
            max_irq_count: 2048,
            max_dma_logging_ranges: 1024,
            max_bitmap_size: 1 << 20,
            max_info_size: 64 << 10,
        }
    }
}

impl Limits {
    /// The largest payload any message may have under these limits.
    pub fn max_payload_size(&self) -> u64 {
        [
            // REGION_READ/WRITE and DMA_READ/WRITE: 16 bytes of fields, then data.
            16 + self.max_data_xfer_size,
            8 + 24 * self.max_write_multi,
            20 + u64::from(self.max_irq_count),
            // DEVICE_FEATURE header + DMA_LOGGING_START fields + ranges.
            8 + 16 + 16 * u64::from(self.max_dma_logging_ranges),
            // DEVICE_FEATURE header + DMA_LOGGING_REPORT fields + bitmap.
            8 + 24 + self.max_bitmap_size,
            u64::from(self.max_info_size),
        ]
        .into_iter()
        .max()
        .unwrap_or(0)
    }

    /// The largest message (header included) [`read_message`] accepts.
    pub fn max_message_size(&self) -> u64 {
        self.max_payload_size()
            .saturating_add(HEADER_SIZE as u64)
            .min(u64::from(u32::MAX))
    }
}

/// A request or reply payload (the bytes after the header).
pub trait Payload: Sized {
    /// Parses `payload`, checking every size and count against it and against `limits`.
    fn parse(payload: &[u8], limits: &Limits) -> Result<Self, ProtocolError>;

    /// Appends the wire form to `out`.
    fn encode(&self, out: &mut Vec<u8>);

    /// The wire form.
    fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(&mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_limits_cover_qemu() {
        let limits = Limits::default();
        assert!(limits.max_write_multi >= 200);
        assert!(limits.max_dma_logging_ranges >= 256);
        assert!(limits.max_payload_size() >= 16 + (1 << 20));
        assert_eq!(
            limits.max_message_size(),
            limits.max_payload_size() + HEADER_SIZE as u64
        );
        let huge = Limits {
            max_data_xfer_size: u64::MAX / 2,
            ..Limits::default()
        };
        assert_eq!(huge.max_message_size(), u64::from(u32::MAX));
    }
}
