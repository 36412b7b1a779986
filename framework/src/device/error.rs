//! Why a region access failed, and the errno a server answers with.

use crate::backend::FunctionError;
use crate::config::ConfigError;
use crate::physical::PhysicalError;

/// A refused or failed region access.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The function has no such region.
    #[error("no region {0}")]
    NoSuchRegion(u32),
    /// The region cannot be written.
    #[error("region {0} is read-only")]
    ReadOnly(u32),
    /// The access runs outside the region.
    #[error("access of {len} bytes at {offset:#x} is outside region {region}")]
    OutOfRange {
        /// Region index.
        region: u32,
        /// Offset asked for.
        offset: u64,
        /// Length asked for.
        len: usize,
    },
    /// The guest has the BAR's decoding off in COMMAND.
    #[error("region {region}: {what} decoding is disabled in the command register")]
    DecodingDisabled {
        /// Region index.
        region: u32,
        /// `I/O` or `memory`.
        what: &'static str,
    },
    /// The access runs partly over the MSI-X table or PBA.
    #[error(
        "access of {len} bytes at {offset:#x} of region {region} straddles the MSI-X table or PBA"
    )]
    MsixStraddle {
        /// Region index.
        region: u32,
        /// Offset asked for.
        offset: u64,
        /// Length asked for.
        len: usize,
    },
    /// Config space refused the access.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The backend refused or failed.
    #[error(transparent)]
    Function(#[from] FunctionError),
    /// The physical function failed.
    #[error(transparent)]
    Physical(#[from] PhysicalError),
}

impl DeviceError {
    /// The errno a vfio-user error reply carries for this error.
    pub fn errno(&self) -> i32 {
        match self {
            Self::NoSuchRegion(_) | Self::OutOfRange { .. } | Self::MsixStraddle { .. } => {
                libc::EINVAL
            }
            Self::ReadOnly(_) => libc::EPERM,
            Self::Config(ConfigError::OutOfRange { .. }) => libc::EINVAL,
            Self::Function(FunctionError::Unsupported(_)) => libc::ENOTSUP,
            Self::Function(FunctionError::BadAccess(_)) => libc::EINVAL,
            Self::DecodingDisabled { .. }
            | Self::Config(_)
            | Self::Function(_)
            | Self::Physical(_) => libc::EIO,
        }
    }
}
