//! The core traits a vendor backend implements.
//!
//! A [`Backend`] stands for one kind of physical function (a virtio PF's VFs, an mlx-style PF's
//! VFs, a DSA device's work queues). It offers profiles, provisions a function with a profile
//! *before* the function is exposed ([`Backend::create`]), and names the default vPCI layout of
//! each profile. The [`Function`] it returns serves what the layout does not handle
//! declaratively: emulated BARs, the legacy I/O BAR, backend-computed registers, reset and
//! migration. Dropping a function destroys it and returns its resources.
//!
//! Everything declarative (config space, BAR sizing, passthrough BARs, the capability chain) is
//! done by the framework from the layout; the backend never sees those accesses.
//!
//! # Contracts
//!
//! What the framework guarantees a backend, and what it expects; the conformance kit
//! (`vfio_variant::testing`, cargo feature `testing`) checks them. See also
//! `docs/backend-guide.md`.
//!
//! - **MSI-X table and PBA**: the framework serves the table and PBA of the layout's MSI-X
//!   capability, whatever backs their BAR (emulated, passthrough). No access that touches them
//!   reaches [`Function::bar_read`]/[`Function::bar_write`] or the physical function; an access
//!   that straddles their edge is refused (`EINVAL`). The table migrates with config space.
//! - **Accesses that reach a BAR hook**: only while the guest has the BAR's decoding (I/O or
//!   memory) on in COMMAND; always inside the BAR (`offset + data.len() <= size`); of any
//!   length the VMM sent (guests use 1, 2, 4 or 8 bytes) at any alignment. A hook answers what
//!   its registers do not take with [`FunctionError::BadAccess`]; it must never panic on an
//!   access (a plugin's panic is contained, a built-in's is not).
//! - **errno**: the server answers a failed access with [`FunctionError::BadAccess`] → `EINVAL`,
//!   [`FunctionError::Unsupported`] → `ENOTSUP`, [`FunctionError::Device`] and
//!   [`FunctionError::Physical`] → `EIO`; out of range → `EINVAL`; decoding off → `EIO`;
//!   read-only region → `EPERM` (see `DeviceError::errno`).
//! - **Interrupts** ([`InterruptSink::raise`]): a function raises only vectors its layout
//!   declares (MSI-X table size, MSI vectors, INTx only with an interrupt pin). Before
//!   [`Function::attach`] there is no sink: keep an [`emulated::IrqSlot`], which drops what is
//!   raised until bound. A vector the VMM has not set up (MSI-X off, no eventfd) is dropped; a
//!   vector the VMM masked (VFIO SET_IRQS) is kept pending, shown in the PBA, and delivered on
//!   unmask. A backend need not check MSI-X enable or masks itself.
//! - **Available instances**: [`ProfileInfo::available_instances`] counts down by one per
//!   created function and back when it is dropped; a refused `create` takes nothing. Use
//!   [`pool::SlotPool`] for a pool of VFs.
//! - **Layouts**: `create` checks the operator's layout with
//!   [`layout_check::LayoutRequirements`] before provisioning anything.
//! - **Reset**: [`Function::reset`] brings every register back to its state after create
//!   (except non-volatile storage the device documents).

mod context;
pub mod emulated;
pub mod layout_check;
pub mod pool;
pub mod worker;

pub use context::{DmaAccess, DmaError, FunctionContext, Interrupt, InterruptSink};

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::config::ConfigEvent;
use crate::layout::{Layout, LayoutError};
use crate::migration::MigrationHooks;
use crate::physical::{DirectPath, MmapFile, PhysicalError, PhysicalFunction};

/// A persona a backend can give a function, with how many can be created now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProfileInfo {
    /// Name used in `create` (`transitional`, `migratable`, `1dwq`).
    pub name: String,
    /// One line for operators.
    pub description: String,
    /// Functions of this profile that can be created now.
    pub available_instances: u32,
    /// Functions of this profile can be live-migrated.
    pub migratable: bool,
}

/// What to create: the profile is applied before the function is exposed.
#[derive(Debug, Clone)]
pub struct CreateRequest {
    /// Profile name.
    pub profile: String,
    /// Instance name or UUID.
    pub instance: String,
    /// The vPCI layout the function will be exposed with.
    pub layout: Arc<Layout>,
    /// Ordered attributes applied while provisioning (backend-specific `key = value`).
    pub attributes: Vec<(String, String)>,
}

/// Why a backend refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The backend has no such profile.
    #[error("unknown profile `{0}`")]
    UnknownProfile(String),
    /// No instance of the profile is available.
    #[error("no instance of profile `{0}` is available")]
    NoInstances(String),
    /// The request is refused, with the reason.
    #[error("refused: {0}")]
    Refused(String),
    /// The layout does not suit this backend or its physical function.
    #[error("layout: {0}")]
    Layout(#[from] LayoutError),
    /// The physical function failed.
    #[error("physical function: {0}")]
    Physical(#[from] PhysicalError),
    /// The backend failed (a plugin's error message, a device error).
    #[error("{0}")]
    Failed(String),
}

/// Why an access to a function failed.
#[derive(Debug, thiserror::Error)]
pub enum FunctionError {
    /// The function does not implement this.
    #[error("not supported: {0}")]
    Unsupported(String),
    /// The access is outside the region, or of a width the register does not take.
    #[error("bad access: {0}")]
    BadAccess(String),
    /// The physical function failed.
    #[error("physical function: {0}")]
    Physical(#[from] PhysicalError),
    /// The device failed.
    #[error("{0}")]
    Device(String),
}

/// A vendor backend: one kind of physical function.
///
/// `&self` methods may be called from several connections at once: keep shared state behind
/// locks (parking_lot).
pub trait Backend: Send + Sync {
    /// Short name (`virtio-legacy`, `mlx`, `idxd`).
    fn name(&self) -> &str;
    /// One line for operators.
    fn description(&self) -> &str;
    /// The profiles it offers, with available instances now.
    fn profiles(&self) -> Vec<ProfileInfo>;
    /// The default vPCI layout (TOML text, usually a catalog file) of a profile.
    fn default_layout(&self, profile: &str) -> Result<String, BackendError>;
    /// Provisions a function with a profile and returns it, ready to be exposed. On error
    /// nothing is left provisioned.
    fn create(&self, request: &CreateRequest) -> Result<Box<dyn Function>, BackendError>;
}

/// One provisioned function of a backend. Dropping it destroys it.
pub trait Function: Send + Sync {
    /// Gives the function access to guest memory and interrupts; called once, before it is
    /// exposed.
    fn attach(&self, context: FunctionContext) {
        let _ = context;
    }
    /// Reads an emulated BAR (one whose layout backing is `emulated`); a function without
    /// emulated BARs keeps the default refusal. Only called while memory (or I/O) decoding is
    /// on, inside the BAR, never for the MSI-X table or PBA (see the module's contracts).
    fn bar_read(&self, bar: u8, offset: u64, data: &mut [u8]) -> Result<(), FunctionError> {
        let _ = (offset, data);
        Err(FunctionError::Unsupported(format!("emulated BAR {bar}")))
    }
    /// Writes an emulated BAR; called as [`Function::bar_read`] is.
    fn bar_write(&self, bar: u8, offset: u64, data: &[u8]) -> Result<(), FunctionError> {
        let _ = (offset, data);
        Err(FunctionError::Unsupported(format!("emulated BAR {bar}")))
    }
    /// The file backing an emulated BAR's mmappable areas, if the device model has one.
    /// Without it the areas are served through `bar_read`/`bar_write` only.
    fn bar_mmap(&self, bar: u8) -> Option<MmapFile> {
        let _ = bar;
        None
    }
    /// Reads the legacy I/O BAR; only called while I/O decoding is enabled in COMMAND.
    fn legacy_io_read(&self, offset: u64, data: &mut [u8]) -> Result<(), FunctionError> {
        let _ = (offset, data);
        Err(FunctionError::Unsupported("legacy I/O".into()))
    }
    /// Writes the legacy I/O BAR; only called while I/O decoding is enabled in COMMAND.
    fn legacy_io_write(&self, offset: u64, data: &[u8]) -> Result<(), FunctionError> {
        let _ = (offset, data);
        Err(FunctionError::Unsupported("legacy I/O".into()))
    }
    /// Reads an emulated expansion ROM.
    fn rom_read(&self, offset: u64, data: &mut [u8]) -> Result<(), FunctionError> {
        let _ = (offset, data);
        Err(FunctionError::Unsupported("expansion ROM".into()))
    }
    /// Reads a register the layout marks `source = "backend"`.
    fn config_read(&self, offset: u16, data: &mut [u8]) -> Result<(), FunctionError> {
        let _ = (offset, data);
        Err(FunctionError::Unsupported(
            "computed config registers".into(),
        ))
    }
    /// Writes a register the layout marks `source = "backend"`.
    fn config_write(&self, offset: u16, data: &[u8]) -> Result<(), FunctionError> {
        let _ = (offset, data);
        Err(FunctionError::Unsupported(
            "computed config registers".into(),
        ))
    }
    /// A guest-visible config change (COMMAND, MSI/MSI-X enable, power state). FLR arrives
    /// as [`Function::reset`].
    fn config_changed(&self, event: ConfigEvent) {
        let _ = event;
    }
    /// The physical function, for passthrough BARs and config bits.
    fn physical(&self) -> Option<&dyn PhysicalFunction> {
        None
    }
    /// The direct path to a real device (IOMMU, interrupts, BAR mmaps), for a function on
    /// kernel VFIO. With one, the server maps DMA, wires interrupts and hands out passthrough
    /// BAR mmaps through it rather than serving them itself.
    fn direct(&self) -> Option<&dyn DirectPath> {
        None
    }
    /// Resets the function (FLR, or a VMM's device reset).
    fn reset(&self) -> Result<(), FunctionError>;
    /// Migration support, when the profile offers it.
    fn migration(&self) -> Option<&dyn MigrationHooks> {
        None
    }
    /// Whether the function can only reach guest RAM the VMM shares with the server (a file
    /// descriptor with every writable DMA mapping), as a passthrough function over real VFIO
    /// must. A function that says so has a writable DMA_MAP without an fd refused (ENOTSUP,
    /// logged with the function's name and the fix), and the VMM reports the error; the
    /// others reach such memory with DMA_READ/DMA_WRITE messages, doing their DMA off the
    /// register path ([`worker::Worker`]).
    fn needs_shared_memory(&self) -> bool {
        false
    }
}
