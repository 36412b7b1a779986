//! The idxd backend: profiles `1dwq` and `1swq`, one sub-device per reserved work queue.
//!
//! The backend owns one (emulated) DSA PF. At construction it acts as the host driver: it puts
//! the reserved WQs in group 0 with every engine (GRPCFG) and enables the device. `create`
//! takes a free reserved WQ, writes its WQCFG (size, mode, priority), issues ENABLE_WQ and
//! checks CMDSTS, then binds the WQ's address space and interrupts to the new function (the
//! IOMMU's part). Dropping the function drains and disables the WQ and returns it.

pub mod driver;
mod function;
mod pool;

pub use function::IdxdFunction;

use std::sync::Arc;

use vfio_variant::backend::{Backend, BackendError, CreateRequest, Function, ProfileInfo};

use crate::hw::registers::*;
use crate::hw::wq::WqMode;
use crate::hw::{DsaDevice, DsaGeometry, device::RegisterError};
use driver::{CommandError, PfDriver};
use function::{Attachment, HostCaps};
use pool::Pool;

/// The layout a `1dwq` sub-device is exposed with by default.
pub const LAYOUT_1DWQ: &str = include_str!("../../../catalog/idxd-1dwq.toml");

/// Profile of a dedicated-WQ sub-device.
pub const PROFILE_DEDICATED: &str = "1dwq";
/// Profile of a shared-WQ sub-device.
pub const PROFILE_SHARED: &str = "1swq";

/// The PF and how the host reserved its WQs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdxdConfig {
    /// The emulated PF's shape.
    pub geometry: DsaGeometry,
    /// Dedicated WQs reserved for sub-devices (the last WQs of the PF, before the shared ones).
    pub dedicated: u16,
    /// Shared WQs reserved for sub-devices (the PF's last WQs).
    pub shared: u16,
    /// Entries of each sub-device's WQ.
    pub wq_size: u16,
}

impl Default for IdxdConfig {
    fn default() -> Self {
        Self {
            geometry: DsaGeometry::default(),
            dedicated: 4,
            shared: 2,
            wq_size: 16,
        }
    }
}

/// Why the backend could not set up its PF.
#[derive(Debug, thiserror::Error)]
pub enum IdxdError {
    /// The configuration does not fit the PF.
    #[error("configuration: {0}")]
    Config(String),
    /// A register access failed.
    #[error("register access: {0}")]
    Register(#[from] RegisterError),
    /// The PF refused a command.
    #[error(transparent)]
    Command(#[from] CommandError),
}

/// The idxd backend over one DSA PF.
pub struct IdxdBackend {
    driver: PfDriver,
    wq_size: u16,
    caps: HostCaps,
    pool: Pool,
}

impl IdxdBackend {
    /// A backend over a new emulated PF, set up as `config` says.
    pub fn new(config: IdxdConfig) -> Result<Self, IdxdError> {
        let device = Arc::new(DsaDevice::new(config.geometry));
        let geometry = device.geometry();
        let reserved = config.dedicated + config.shared;
        if reserved == 0 || reserved > geometry.num_wqs {
            return Err(IdxdError::Config(format!(
                "{reserved} reserved work queues on a device with {}",
                geometry.num_wqs
            )));
        }
        if config.wq_size == 0
            || u32::from(config.wq_size) * u32::from(reserved) > u32::from(geometry.total_wq_size)
        {
            return Err(IdxdError::Config(format!(
                "{reserved} work queues of {} entries exceed the device's {}",
                config.wq_size, geometry.total_wq_size
            )));
        }
        let driver = PfDriver::new(device);
        let first = usize::from(geometry.num_wqs - reserved);
        let pool = Pool::default();
        let mut wqs = 0u64;
        for i in 0..usize::from(reserved) {
            let mode = if i < usize::from(config.dedicated) {
                WqMode::Dedicated
            } else {
                WqMode::Shared
            };
            pool.reserve(first + i, mode);
            wqs |= 1 << (first + i);
        }
        // Group 0: the reserved WQs and every engine; GRPCFG is writable while disabled.
        let engines = (1u64 << geometry.num_engines) - 1;
        driver.write32(GRPCFG + GRPCFG_WQS, wqs as u32)?;
        driver.write32(GRPCFG + GRPCFG_WQS + 4, (wqs >> 32) as u32)?;
        driver.write32(GRPCFG + GRPCFG_ENGINES, engines as u32)?;
        driver.write32(GRPCFG + GRPCFG_ENGINES + 4, (engines >> 32) as u32)?;
        if driver.read32(GENSTS)? & 3 != GENSTS_ENABLED {
            driver.command(cmd::ENABLE_DEVICE, 0)?;
        }
        let caps = HostCaps {
            gencap: driver.read64(GENCAP)?,
            grpcap: driver.read64(GRPCAP)?,
            engcap: driver.read64(ENGCAP)?,
            opcap: [
                driver.read64(OPCAP)?,
                driver.read64(OPCAP + 8)?,
                driver.read64(OPCAP + 16)?,
                driver.read64(OPCAP + 24)?,
            ],
            cmdcap: driver.read32(CMDCAP)?,
            engines: driver.read64(GRPCFG + GRPCFG_ENGINES)?,
        };
        Ok(Self {
            driver,
            wq_size: config.wq_size,
            caps,
            pool,
        })
    }

    /// The emulated PF (for tests and benchmarks that look at the host side).
    pub fn device(&self) -> &Arc<DsaDevice> {
        self.driver.device()
    }

    fn mode(profile: &str) -> Result<WqMode, BackendError> {
        match profile {
            PROFILE_DEDICATED => Ok(WqMode::Dedicated),
            PROFILE_SHARED => Ok(WqMode::Shared),
            other => Err(BackendError::UnknownProfile(other.to_string())),
        }
    }

    /// Configures WQ `wq` through WQCFG and enables it; on failure leaves it reset.
    fn enable_wq(&self, wq: usize, mode: WqMode) -> Result<(), CommandError> {
        let base = WQCFG + wq as u64 * WQCFG_SIZE;
        let mode_bit = match mode {
            WqMode::Dedicated => WQCFG_MODE_DEDICATED,
            WqMode::Shared => 0,
        };
        let configured = self
            .driver
            .write32(base, u32::from(self.wq_size))
            .and_then(|()| {
                self.driver
                    .write32(base + 8, mode_bit | (1 << WQCFG_PRIORITY_SHIFT))
            });
        if configured.is_err() {
            return Err(CommandError {
                command: cmd::ENABLE_WQ,
                status: 0xff,
            });
        }
        self.driver
            .command(cmd::ENABLE_WQ, wq as u32)
            .inspect_err(|_e| {
                let _ = self.driver.command(cmd::RESET_WQ, PfDriver::wq_operand(wq));
            })?;
        Ok(())
    }
}

impl Backend for IdxdBackend {
    fn name(&self) -> &str {
        "idxd"
    }

    fn description(&self) -> &str {
        "DSA work queues as sub-devices (emulated DSA)"
    }

    fn profiles(&self) -> Vec<ProfileInfo> {
        [
            (
                PROFILE_DEDICATED,
                "one dedicated DSA work queue",
                WqMode::Dedicated,
            ),
            (PROFILE_SHARED, "one shared DSA work queue", WqMode::Shared),
        ]
        .into_iter()
        .map(|(name, description, mode)| ProfileInfo {
            name: name.into(),
            description: description.into(),
            available_instances: self.pool.available(mode),
            migratable: false,
        })
        .collect()
    }

    fn default_layout(&self, profile: &str) -> Result<String, BackendError> {
        Ok(match Self::mode(profile)? {
            WqMode::Dedicated => LAYOUT_1DWQ.to_string(),
            WqMode::Shared => LAYOUT_1DWQ
                .replace("name = \"idxd-1dwq\"", "name = \"idxd-1swq\"")
                .replace("one dedicated work queue", "one shared work queue"),
        })
    }

    fn create(&self, request: &CreateRequest) -> Result<Box<dyn Function>, BackendError> {
        let mode = Self::mode(&request.profile)?;
        if let Some((key, _)) = request.attributes.first() {
            return Err(BackendError::Refused(format!(
                "idxd sub-devices have no attribute `{key}`"
            )));
        }
        let created = self.pool.assign(mode, |wq| {
            self.enable_wq(wq, mode)?;
            let attachment = Arc::new(Attachment::default());
            self.device().bind_address_space(wq, attachment.clone());
            self.device().bind_interrupts(wq, attachment.clone());
            Ok::<_, CommandError>(IdxdFunction::new(
                self.driver.clone(),
                wq,
                mode,
                u32::from(self.wq_size),
                self.caps,
                attachment,
                self.pool.clone(),
            ))
        });
        match created {
            None => Err(BackendError::NoInstances(request.profile.clone())),
            Some(Err(e)) => Err(BackendError::Failed(e.to_string())),
            Some(Ok(function)) => Ok(Box::new(function)),
        }
    }
}

#[cfg(test)]
mod tests;
