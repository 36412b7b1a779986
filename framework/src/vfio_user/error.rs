//! Protocol errors, each mapped to the errno a server puts in an error reply.

use rustix::io::Errno;

/// A message that does not follow the protocol, or goes beyond a negotiated limit.
///
/// [`ProtocolError::errno`] gives the errno to send back in an error reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// The payload ends before a field or the data it announces.
    #[error("{what}: truncated, needs {needed} bytes, has {available}")]
    Truncated {
        /// The message or structure being read.
        what: &'static str,
        /// Bytes needed up to the end of the field.
        needed: usize,
        /// Bytes present.
        available: usize,
    },
    /// A field has a value the protocol does not allow.
    #[error("{what}: {reason}")]
    Invalid {
        /// The message or structure being read.
        what: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// A size or count is above a limit (negotiated or configured).
    #[error("{what}: {value} is above the limit {limit}")]
    TooLarge {
        /// The size or count.
        what: &'static str,
        /// Its value.
        value: u64,
        /// The limit in force.
        limit: u64,
    },
    /// A whole message is larger than the largest one accepted on this connection.
    #[error("message of {size} bytes is above the maximum of {max}")]
    MessageTooLarge {
        /// The size in the header, header included.
        size: u64,
        /// The largest message accepted.
        max: u64,
    },
    /// A message came with more file descriptors than allowed.
    #[error("{received} file descriptors, at most {max} allowed")]
    TooManyFds {
        /// Descriptors received (at least; the kernel drops what does not fit).
        received: usize,
        /// The limit in force.
        max: usize,
    },
    /// The command number is not a vfio-user command (or is the retired 14).
    #[error("unknown command {0}")]
    UnknownCommand(u16),
    /// The peer proposed a protocol major version this implementation does not speak.
    #[error("unsupported protocol version {major}.{minor}")]
    UnsupportedVersion {
        /// Proposed major version.
        major: u16,
        /// Proposed minor version.
        minor: u16,
    },
    /// The VERSION capabilities are not valid JSON of the expected shape.
    #[error("VERSION capabilities: {0}")]
    Json(String),
    /// A valid request for something this side does not implement or did not negotiate.
    #[error("{0} is not supported")]
    Unsupported(&'static str),
}

impl ProtocolError {
    /// The errno for an error reply: `EINVAL` for malformed input, `E2BIG` for a size or
    /// count above a limit, `EMSGSIZE` for an oversized message, `ENOTSUP` for an unknown
    /// command, version or feature.
    pub fn errno(&self) -> i32 {
        let errno = match self {
            Self::Truncated { .. } | Self::Invalid { .. } | Self::Json(_) => Errno::INVAL,
            Self::TooLarge { .. } | Self::TooManyFds { .. } => Errno::TOOBIG,
            Self::MessageTooLarge { .. } => Errno::MSGSIZE,
            Self::UnknownCommand(_) | Self::UnsupportedVersion { .. } | Self::Unsupported(_) => {
                Errno::NOTSUP
            }
        };
        errno.raw_os_error()
    }

    /// Shorthand for [`ProtocolError::Invalid`].
    pub(crate) fn invalid(what: &'static str, reason: impl Into<String>) -> Self {
        Self::Invalid {
            what,
            reason: reason.into(),
        }
    }

    /// Shorthand for [`ProtocolError::TooLarge`].
    pub(crate) fn too_large(what: &'static str, value: u64, limit: u64) -> Self {
        Self::TooLarge { what, value, limit }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_mapping() {
        assert_eq!(
            ProtocolError::invalid("X", "bad").errno(),
            Errno::INVAL.raw_os_error()
        );
        assert_eq!(
            ProtocolError::Truncated {
                what: "X",
                needed: 4,
                available: 2
            }
            .errno(),
            Errno::INVAL.raw_os_error()
        );
        assert_eq!(
            ProtocolError::too_large("X", 2, 1).errno(),
            Errno::TOOBIG.raw_os_error()
        );
        assert_eq!(
            ProtocolError::MessageTooLarge { size: 2, max: 1 }.errno(),
            Errno::MSGSIZE.raw_os_error()
        );
        assert_eq!(
            ProtocolError::UnknownCommand(14).errno(),
            Errno::NOTSUP.raw_os_error()
        );
    }
}
