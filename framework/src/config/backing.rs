//! Where the config bits a layout does not hold come from: the [`ConfigBacking`] a config
//! space reads and writes them through, for a purely virtual layout ([`NoBacking`]) and for a
//! physical function alone ([`PhysicalFunctionBacking`], as tools and tests use it; the device adds the
//! backend's computed registers).

use super::space::ConfigError;
use crate::physical::{PhysicalError, PhysicalFunction};

/// Access to what the layout does not hold itself: physical config space and backend-computed
/// registers.
pub trait ConfigBacking {
    /// Reads the physical function's config space.
    fn read_physical(&self, offset: u16, data: &mut [u8]) -> Result<(), ConfigError>;
    /// Writes the physical function's config space.
    fn write_physical(&self, offset: u16, data: &[u8]) -> Result<(), ConfigError>;
    /// Reads a backend-computed register.
    fn read_computed(&self, offset: u16, data: &mut [u8]) -> Result<(), ConfigError>;
    /// Writes a backend-computed register.
    fn write_computed(&self, offset: u16, data: &[u8]) -> Result<(), ConfigError>;
}

/// Backing for layouts that are purely virtual: any access to physical or computed bits fails.
pub struct NoBacking;

impl ConfigBacking for NoBacking {
    fn read_physical(&self, offset: u16, _: &mut [u8]) -> Result<(), ConfigError> {
        Err(ConfigError::NoPhysical(offset))
    }
    fn write_physical(&self, offset: u16, _: &[u8]) -> Result<(), ConfigError> {
        Err(ConfigError::NoPhysical(offset))
    }
    fn read_computed(&self, offset: u16, _: &mut [u8]) -> Result<(), ConfigError> {
        Err(ConfigError::NoPhysical(offset))
    }
    fn write_computed(&self, offset: u16, _: &[u8]) -> Result<(), ConfigError> {
        Err(ConfigError::NoPhysical(offset))
    }
}

/// Serves a config space's physical bits from a physical function. Backend-computed
/// registers are refused: a layout with those needs its backend's function.
pub struct PhysicalFunctionBacking<'a>(pub &'a dyn PhysicalFunction);

impl ConfigBacking for PhysicalFunctionBacking<'_> {
    fn read_physical(&self, offset: u16, data: &mut [u8]) -> Result<(), ConfigError> {
        self.0
            .config_read(offset, data)
            .map_err(|e| backing_error(offset, e))
    }

    fn write_physical(&self, offset: u16, data: &[u8]) -> Result<(), ConfigError> {
        self.0
            .config_write(offset, data)
            .map_err(|e| backing_error(offset, e))
    }

    fn read_computed(&self, offset: u16, _: &mut [u8]) -> Result<(), ConfigError> {
        Err(ConfigError::NoPhysical(offset))
    }

    fn write_computed(&self, offset: u16, _: &[u8]) -> Result<(), ConfigError> {
        Err(ConfigError::NoPhysical(offset))
    }
}

fn backing_error(offset: u16, e: PhysicalError) -> ConfigError {
    ConfigError::Backing {
        offset,
        what: "physical function",
        message: e.to_string(),
    }
}
