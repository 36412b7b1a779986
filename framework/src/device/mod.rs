//! The virtual function: a compiled layout, its config-space emulation, and the router that
//! sends each region access to the config space, the backend, or the physical function.
//!
//! This is the object a server (or a Rust VMM in-process) calls: region indexes are VFIO's
//! (BAR0-5 = 0-5, ROM = 6, config = 7). It also owns the function's migration (state, stream,
//! config snapshot: `migration.rs`), its DMA dirty logging (`dma_logging.rs`) and the
//! interrupts it raises to whoever attached (`interrupts.rs`): nothing above it calls the
//! backend.

mod dma_logging;
mod error;
mod interrupts;
mod migration;
mod msix;
mod regions;
pub mod stream;

pub use crate::pci::region::{CONFIG_REGION, ROM_REGION};
pub use dma_logging::LoggingError;
pub use error::DeviceError;
pub use migration::MigrationFailure;
pub use msix::PendingFn;
pub use regions::{RegionInfo, passthrough_areas};

use std::ops::Range;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::backend::{
    Backend, BackendError, CreateRequest, Function, FunctionContext, FunctionError,
};
use crate::config::{
    ConfigBacking, ConfigError, ConfigEvent, ConfigSpace, ConfigTemplate, PhysicalFunctionBacking,
};
use crate::device::stream::StreamIdentity;
use crate::layout::{BarBacking, BarKind, MmapArea, RomBacking};
use crate::migration::{MigrationFlags, MigrationHooks, MigrationState, PrecopyInfo};
use crate::pci::regs;
use crate::physical::{DirectPath, MmapFile, PhysicalFunction};
use crate::vpci::LayoutError;
use crate::vpci::bind::bind;

/// A virtual PCI function.
pub struct VirtualFunction {
    config: Arc<Mutex<ConfigSpace>>,
    function: Box<dyn Function>,
    /// The MSI-X table and PBA, served here whatever backs their BAR.
    msix: Option<msix::Msix>,
    /// Where the function's interrupts go, and its INTx line.
    interrupts: Arc<interrupts::Interrupts>,
    /// Migration state and stream.
    migration: migration::Migration,
    /// DMA dirty logging.
    dma_logging: dma_logging::DmaLogging,
}

/// Sends config bits the layout does not hold to the physical function or the backend.
struct Backing<'a> {
    physical: Option<PhysicalFunctionBacking<'a>>,
    function: &'a dyn Function,
}

impl ConfigBacking for Backing<'_> {
    fn read_physical(&self, offset: u16, data: &mut [u8]) -> Result<(), ConfigError> {
        let physical = self
            .physical
            .as_ref()
            .ok_or(ConfigError::NoPhysical(offset))?;
        physical.read_physical(offset, data)
    }

    fn write_physical(&self, offset: u16, data: &[u8]) -> Result<(), ConfigError> {
        let physical = self
            .physical
            .as_ref()
            .ok_or(ConfigError::NoPhysical(offset))?;
        physical.write_physical(offset, data)
    }

    fn read_computed(&self, offset: u16, data: &mut [u8]) -> Result<(), ConfigError> {
        self.function
            .config_read(offset, data)
            .map_err(|e| backend_error(offset, e))
    }

    fn write_computed(&self, offset: u16, data: &[u8]) -> Result<(), ConfigError> {
        self.function
            .config_write(offset, data)
            .map_err(|e| backend_error(offset, e))
    }
}

fn backend_error(offset: u16, e: FunctionError) -> ConfigError {
    ConfigError::Backing {
        offset,
        what: "backend",
        message: e.to_string(),
    }
}

/// Why [`VirtualFunction::provision`] failed; nothing stays provisioned.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    /// The backend refused or failed.
    #[error("backend: {0}")]
    Backend(#[from] BackendError),
    /// The layout does not fit the function's physical function.
    #[error("layout: {0}")]
    Layout(#[from] LayoutError),
}

impl VirtualFunction {
    /// Provisions a function of `backend` with `profile` (the layout of `template` is what it
    /// will be exposed with) and puts it behind `template`: what `vfio-variant create` and a
    /// Rust VMM embedding a backend both do. Its migration streams carry the backend's name
    /// and the profile.
    pub fn provision(
        backend: &dyn Backend,
        template: Arc<ConfigTemplate>,
        profile: &str,
        instance: &str,
        attributes: Vec<(String, String)>,
    ) -> Result<Self, ProvisionError> {
        let function = backend.create(&CreateRequest {
            profile: profile.to_string(),
            instance: instance.to_string(),
            layout: Arc::clone(template.layout()),
            attributes,
        })?;
        let function = Self::new(template, function)?;
        function.set_stream_names(backend.name(), profile);
        Ok(function)
    }

    /// Puts a provisioned backend function behind a compiled layout. A layout that passes
    /// through what the function's physical function lacks is refused.
    pub fn new(
        template: Arc<ConfigTemplate>,
        function: Box<dyn Function>,
    ) -> Result<Self, LayoutError> {
        let layout = template.layout();
        match function.physical() {
            Some(physical) => {
                let description = physical.describe().map_err(|e| {
                    LayoutError::new(Default::default(), "<physical function>", e.to_string())
                })?;
                bind(layout, &description)?;
            }
            None if layout.needs_physical() => {
                let message = "the layout passes through from a physical function, and this function has none";
                return Err(LayoutError::new(
                    Default::default(),
                    "<physical function>",
                    message,
                ));
            }
            None => {}
        }
        let msix = msix::Msix::new(layout);
        let config = Arc::new(Mutex::new(ConfigSpace::new(template)));
        Ok(Self {
            msix,
            interrupts: Arc::new(interrupts::Interrupts::new(Arc::clone(&config))),
            config,
            function,
            migration: migration::Migration::new(),
            dma_logging: dma_logging::DmaLogging::default(),
        })
    }

    /// The backend's function, for backend tests and the conformance kit. A VMM or server
    /// drives the function through the device's own calls, never the backend.
    pub fn function(&self) -> &dyn Function {
        &*self.function
    }

    /// Gives the function guest memory and a sink for its interrupts. Writes through that
    /// memory are logged while a DMA logging session is on; the sink receives MSI/MSI-X/ERR/REQ
    /// vectors as the backend raises them, and the INTx line (the backend's condition masked
    /// by COMMAND.INTX_DISABLE) whenever it changes; a sink starts with the line deasserted,
    /// so an asserted line is raised to it at once.
    pub fn attach(&self, context: FunctionContext) {
        self.interrupts.attach(context.interrupts);
        self.function.attach(FunctionContext {
            dma: self.dma_logging.wrap(context.dma),
            interrupts: Arc::new(interrupts::FromBackend(Arc::clone(&self.interrupts))),
        });
    }

    /// Whether the function reaches guest RAM only through memory shared with it (a function
    /// on a real device): guest RAM offered without a file must then be refused.
    pub fn needs_shared_memory(&self) -> bool {
        self.function.needs_shared_memory()
    }

    /// The compiled layout.
    pub fn template(&self) -> Arc<ConfigTemplate> {
        Arc::clone(self.config.lock().template())
    }

    fn backing(&self) -> Backing<'_> {
        Backing {
            physical: self.function.physical().map(PhysicalFunctionBacking),
            function: &*self.function,
        }
    }

    /// Reads a region.
    pub fn region_read(
        &self,
        region: u32,
        offset: u64,
        data: &mut [u8],
    ) -> Result<(), DeviceError> {
        match region {
            CONFIG_REGION => Ok(self.config.lock().read(offset, data, &self.backing())?),
            ROM_REGION => self.rom_read(offset, data),
            index @ 0..=5 => {
                self.bar_access(index as u8, offset, data.len(), |target| match target {
                    BarTarget::Emulated(bar) => Ok(self.function.bar_read(bar, offset, data)?),
                    BarTarget::Physical(physical, bar) => Ok(physical.bar_read(bar, offset, data)?),
                    BarTarget::LegacyIo => Ok(self.function.legacy_io_read(offset, data)?),
                    BarTarget::MsixTable(msix, at) => {
                        msix.read_table(at, data);
                        Ok(())
                    }
                    BarTarget::MsixPba(msix, at) => {
                        msix.read_pba(at, data);
                        Ok(())
                    }
                })
            }
            _ => Err(DeviceError::NoSuchRegion(region)),
        }
    }

    /// Writes a region. A config write that asks for a function level reset resets the function.
    pub fn region_write(&self, region: u32, offset: u64, data: &[u8]) -> Result<(), DeviceError> {
        match region {
            CONFIG_REGION => self.config_write(offset, data),
            ROM_REGION => Err(DeviceError::ReadOnly(region)),
            index @ 0..=5 => {
                self.bar_access(index as u8, offset, data.len(), |target| match target {
                    BarTarget::Emulated(bar) => Ok(self.function.bar_write(bar, offset, data)?),
                    BarTarget::Physical(physical, bar) => {
                        Ok(physical.bar_write(bar, offset, data)?)
                    }
                    BarTarget::LegacyIo => Ok(self.function.legacy_io_write(offset, data)?),
                    BarTarget::MsixTable(msix, at) => {
                        msix.write_table(at, data);
                        Ok(())
                    }
                    // The PBA is read-only; writes are ignored (PCI spec).
                    BarTarget::MsixPba(..) => Ok(()),
                })
            }
            _ => Err(DeviceError::NoSuchRegion(region)),
        }
    }

    fn config_write(&self, offset: u64, data: &[u8]) -> Result<(), DeviceError> {
        let mut events: Vec<ConfigEvent> = Vec::new();
        self.config
            .lock()
            .write(offset, data, &self.backing(), &mut |e| events.push(e))?;
        // COMMAND.INTX_DISABLE may have changed.
        self.interrupts.sync_intx();
        for event in events {
            match event {
                ConfigEvent::FunctionLevelReset => self.reset()?,
                other => self.function.config_changed(other),
            }
        }
        Ok(())
    }

    /// The state a guest gave the config space, for a migration stream, followed by the
    /// MSI-X table the framework serves (when the layout has one).
    pub fn config_snapshot(&self) -> Vec<u8> {
        let mut snapshot = self.config.lock().snapshot();
        if let Some(msix) = &self.msix {
            snapshot.extend_from_slice(&msix.table_bytes());
        }
        snapshot
    }

    /// Takes a config-space state [`VirtualFunction::config_snapshot`] made on the source of
    /// a migration; the backend hears of the changes as of a guest's writes.
    pub fn config_restore(&self, saved: &[u8]) -> Result<(), DeviceError> {
        let mut events: Vec<ConfigEvent> = Vec::new();
        let size = self.config.lock().size();
        let (config, table) = saved.split_at(saved.len().min(size));
        if let Some(msix) = &self.msix {
            // A snapshot without the table (a source older than framework-served tables)
            // leaves the entries at their reset values.
            msix.check_table(table)?;
        } else if !table.is_empty() {
            return Err(ConfigError::Saved(format!(
                "{} bytes after config space, and the layout has no MSI-X table",
                table.len()
            ))
            .into());
        }
        self.config
            .lock()
            .restore(config, &mut |e| events.push(e))?;
        if let Some(msix) = &self.msix
            && !table.is_empty()
        {
            msix.set_table(table);
        }
        self.interrupts.sync_intx();
        for event in events {
            self.function.config_changed(event);
        }
        Ok(())
    }

    /// Resets the function: config space to its reset values, migration back to RUNNING with
    /// no stream open, then the backend (and through it the physical function).
    pub fn reset(&self) -> Result<(), DeviceError> {
        self.migration.reset();
        self.config.lock().reset();
        if let Some(msix) = &self.msix {
            msix.reset();
        }
        self.interrupts.sync_intx();
        self.function.reset()?;
        Ok(())
    }

    fn rom_read(&self, offset: u64, data: &mut [u8]) -> Result<(), DeviceError> {
        let template = self.template();
        let rom = template
            .layout()
            .rom
            .as_ref()
            .ok_or(DeviceError::NoSuchRegion(ROM_REGION))?;
        check(ROM_REGION, offset, data.len(), rom.size)?;
        match rom.backing {
            RomBacking::Emulated => Ok(self.function.rom_read(offset, data)?),
            RomBacking::Passthrough => {
                let physical = self
                    .function
                    .physical()
                    .ok_or(DeviceError::NoSuchRegion(ROM_REGION))?;
                Ok(physical.rom_read(offset, data)?)
            }
        }
    }

    fn bar_access(
        &self,
        index: u8,
        offset: u64,
        len: usize,
        access: impl FnOnce(BarTarget<'_>) -> Result<(), DeviceError>,
    ) -> Result<(), DeviceError> {
        let template = self.template();
        let bar = template
            .layout()
            .bar(index)
            .ok_or(DeviceError::NoSuchRegion(index.into()))?;
        check(index.into(), offset, len, bar.size)?;
        // Accesses reach a BAR only while the guest has its decoding enabled (as vfio-pci).
        let command = self.config.lock().command();
        let (bit, what) = match bar.kind {
            BarKind::Io => (regs::COMMAND_IO, "I/O"),
            _ => (regs::COMMAND_MEMORY, "memory"),
        };
        if command & bit == 0 {
            return Err(DeviceError::DecodingDisabled {
                region: index.into(),
                what,
            });
        }
        if let Some(msix) = &self.msix {
            match msix.place(index, offset, len) {
                msix::Place::Elsewhere => {}
                msix::Place::Table(at) => return access(BarTarget::MsixTable(msix, at)),
                msix::Place::Pba(at) => return access(BarTarget::MsixPba(msix, at)),
                msix::Place::Straddles => {
                    return Err(DeviceError::MsixStraddle {
                        region: index.into(),
                        offset,
                        len,
                    });
                }
            }
        }
        match bar.backing {
            BarBacking::Emulated => access(BarTarget::Emulated(index)),
            BarBacking::LegacyIo => access(BarTarget::LegacyIo),
            BarBacking::Passthrough { physical_bar } => {
                let physical = self
                    .function
                    .physical()
                    .ok_or(DeviceError::NoSuchRegion(index.into()))?;
                access(BarTarget::Physical(physical, physical_bar))
            }
        }
    }

    /// Where the MSI-X PBA reads its pending bits from: the server's interrupt table (VFIO
    /// SET_IRQS masking). Without it the PBA reads zero.
    pub fn set_msix_pending(&self, pending: Option<Arc<PendingFn>>) {
        if let Some(msix) = &self.msix {
            msix.set_pending(pending);
        }
    }

    /// Names the backend and profile the function's migration streams carry: a destination
    /// refuses a stream of another backend or profile (and of another layout, always).
    pub fn set_stream_names(&self, backend: &str, profile: &str) {
        self.migration.name(backend, profile);
    }

    /// The migration flags the function offers; `None` when it does not migrate.
    pub fn migration_flags(&self) -> Option<MigrationFlags> {
        self.migration.flags(self).ok()
    }

    /// The function's migration state: RUNNING until migration is used, and after any reset.
    pub fn migration_state(&self) -> MigrationState {
        self.migration.state()
    }

    /// Moves the function to migration state `want`, walking the backend's direct arcs; the
    /// state reached. A refused request changes nothing; a failed arc leaves it in ERROR,
    /// which only [`VirtualFunction::reset`] leaves.
    pub fn set_migration_state(
        &self,
        want: MigrationState,
    ) -> Result<MigrationState, MigrationFailure> {
        self.migration.set_state(self, want)
    }

    /// Fills `buf` with the next bytes of the migration stream while saving (PRE_COPY,
    /// STOP_COPY); fewer bytes than `buf` holds mean no more for now (pre-copy) or the end
    /// (stop-copy).
    pub fn migration_read(&self, buf: &mut [u8]) -> Result<usize, MigrationFailure> {
        self.migration.read(self, buf)
    }

    /// Takes the next bytes of a migration stream while RESUMING. A stream for another layout,
    /// backend or profile, or a corrupt record, is refused before its data reaches the device.
    pub fn migration_write(&self, data: &[u8]) -> Result<(), MigrationFailure> {
        self.migration.write(self, data)
    }

    /// Pre-copy progress of the stream (PRE_COPY and PRE_COPY_P2P only).
    pub fn precopy_info(&self) -> Result<PrecopyInfo, MigrationFailure> {
        self.migration.precopy_info(self)
    }

    /// Estimated bytes of the stream a stop-copy would read now.
    pub fn stop_copy_size(&self) -> Result<u64, MigrationFailure> {
        self.migration.stop_copy_size(self)
    }

    /// Why the last migration step was refused (since the last reset).
    pub fn migration_error(&self) -> Option<String> {
        self.migration.refusal()
    }

    /// Starts DMA dirty logging of `ranges` in pages of `page_size` (or the coarser pages
    /// the device's tracker uses): returns the page size the session reports in.
    pub fn dma_logging_start(
        &self,
        page_size: u64,
        ranges: &[Range<u64>],
    ) -> Result<u64, LoggingError> {
        self.dma_logging
            .start(self.function.migration(), page_size, ranges)
    }

    /// Sets bit i of `bitmap` for each page at `iova + i * page_size` written since the last
    /// report of it, and clears those pages' log.
    pub fn dma_logging_report(
        &self,
        iova: u64,
        length: u64,
        page_size: u64,
        bitmap: &mut [u64],
    ) -> Result<(), LoggingError> {
        self.dma_logging
            .report(self.function.migration(), iova, length, page_size, bitmap)
    }

    /// Ends the DMA logging session, if one is on.
    pub fn dma_logging_stop(&self) {
        self.dma_logging.stop(self.function.migration());
    }

    /// Whether a DMA logging session is on.
    pub fn dma_logging_on(&self) -> bool {
        self.dma_logging.is_on()
    }

    /// What each region is: size, access, mmappable areas.
    pub fn regions(&self) -> Vec<RegionInfo> {
        regions::describe(self.template().layout())
    }

    /// Where the guest placed BAR `index` (its address in config space, type bits masked):
    /// what an in-process VMM routes its MMIO and port-I/O exits by. `None` for no such BAR.
    pub fn bar_address(&self, index: u8) -> Option<u64> {
        self.config.lock().bar_address(index)
    }

    /// The direct path to the function's device, when it runs on kernel VFIO.
    pub fn direct(&self) -> Option<&dyn DirectPath> {
        self.function.direct()
    }

    /// The file a VMM may mmap for BAR `index` and the areas of the BAR it may map: an
    /// emulated BAR's file from the backend with the layout's areas; a passthrough BAR's
    /// device file from the direct path, with the layout's areas cut to what the device
    /// allows. `None`: every access is a message.
    pub fn region_mmap(&self, index: u8) -> Option<(MmapFile, Vec<MmapArea>)> {
        let template = self.template();
        let layout = template.layout();
        let bar = layout.bar(index)?;
        if bar.mmap.is_empty() {
            return None;
        }
        let (file, areas) = match bar.backing {
            BarBacking::Emulated => (self.function.bar_mmap(index)?, bar.mmap.clone()),
            BarBacking::LegacyIo => return None,
            BarBacking::Passthrough { physical_bar } => {
                let direct = self.function.direct()?.bar_file(physical_bar)?;
                // The layout's areas already leave out the MSI-X table and PBA pages (the
                // layout checks refuse an area over them).
                let areas = passthrough_areas(&bar.mmap, &direct.mappable, bar.size);
                (direct.file, areas)
            }
        };
        (!areas.is_empty()).then_some((file, areas))
    }
}

impl migration::Owner for VirtualFunction {
    fn hooks(&self) -> Option<&dyn MigrationHooks> {
        self.function.migration()
    }

    fn identity(&self, backend: &str, profile: &str) -> StreamIdentity {
        StreamIdentity::new(&self.template(), backend, profile)
    }

    fn config_snapshot(&self) -> Vec<u8> {
        VirtualFunction::config_snapshot(self)
    }

    fn config_restore(&self, saved: &[u8]) -> Result<(), String> {
        VirtualFunction::config_restore(self, saved).map_err(|e| e.to_string())
    }
}

enum BarTarget<'a> {
    Emulated(u8),
    Physical(&'a dyn PhysicalFunction, u8),
    LegacyIo,
    /// The MSI-X table, at this offset in it.
    MsixTable(&'a msix::Msix, usize),
    /// The MSI-X PBA, at this offset in it.
    MsixPba(&'a msix::Msix, u64),
}

fn check(region: u32, offset: u64, len: usize, size: u64) -> Result<(), DeviceError> {
    match offset.checked_add(len as u64) {
        Some(end) if end <= size => Ok(()),
        _ => Err(DeviceError::OutOfRange {
            region,
            offset,
            len,
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;
    use crate::backend::FunctionError;
    use crate::physical::captured::CapturedFunction;
    use crate::physical::{PhysicalBar, PhysicalDescription};
    use crate::vpci::{compile::compile, parse_layout};

    const LAYOUT: &str = r#"
[vpci]
format = 1
name = "t"
[identity]
vendor_id = 0x1af4
device_id = 0x1041
class_code = 0x020000
[[bar]]
index = 0
kind = "io"
size = 32
backing = "legacy-io"
[[bar]]
index = 1
kind = "mem32"
size = "4K"
backing = "emulated"
[[bar]]
index = 2
kind = "mem64"
size = "16K"
backing = "passthrough"
physical_bar = 4
[[capability]]
kind = "pcie"
offset = 0x40
"#;

    /// A function with a scratch register file in BAR 1 and a legacy I/O BAR echoing offsets.
    struct Scratch {
        physical: CapturedFunction,
        registers: Mutex<[u8; 4096]>,
        resets: Arc<AtomicU32>,
    }

    impl Function for Scratch {
        fn bar_read(&self, _: u8, offset: u64, data: &mut [u8]) -> Result<(), FunctionError> {
            let at = offset as usize;
            data.copy_from_slice(&self.registers.lock()[at..at + data.len()]);
            Ok(())
        }
        fn bar_write(&self, _: u8, offset: u64, data: &[u8]) -> Result<(), FunctionError> {
            let at = offset as usize;
            self.registers.lock()[at..at + data.len()].copy_from_slice(data);
            Ok(())
        }
        fn legacy_io_read(&self, offset: u64, data: &mut [u8]) -> Result<(), FunctionError> {
            data.fill(offset as u8);
            Ok(())
        }
        fn physical(&self) -> Option<&dyn PhysicalFunction> {
            Some(&self.physical)
        }
        fn reset(&self) -> Result<(), FunctionError> {
            self.resets.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    }

    fn function(physical_bar4: bool) -> Result<VirtualFunction, LayoutError> {
        function_counting(physical_bar4, Arc::default())
    }

    fn function_counting(
        physical_bar4: bool,
        resets: Arc<AtomicU32>,
    ) -> Result<VirtualFunction, LayoutError> {
        let mut bars = [None; 6];
        if physical_bar4 {
            bars[4] = Some(PhysicalBar {
                kind: BarKind::Memory64,
                prefetchable: false,
                size: 0x8000,
            });
        }
        let physical = CapturedFunction::new(
            "phys",
            PhysicalDescription {
                config: vec![0; 256],
                bars,
                rom_size: None,
            },
        );
        let scratch = Scratch {
            physical,
            registers: Mutex::new([0; 4096]),
            resets,
        };
        let template = Arc::new(compile(Arc::new(parse_layout("t", LAYOUT).unwrap())));
        VirtualFunction::new(template, Box::new(scratch))
    }

    #[test]
    fn binding_refuses_a_missing_physical_bar() {
        let e = function(false).err().expect("refused");
        assert_eq!(e.field, "bar[2].physical_bar");
    }

    #[test]
    fn bars_route_by_backing_once_decoding_is_on() {
        let vf = function(true).unwrap();
        let mut data = [0u8; 4];
        assert!(matches!(
            vf.region_read(1, 0, &mut data),
            Err(DeviceError::DecodingDisabled { .. })
        ));
        assert!(matches!(
            vf.region_read(0, 4, &mut data),
            Err(DeviceError::DecodingDisabled { what: "I/O", .. })
        ));
        vf.region_write(CONFIG_REGION, 4, &[0x03, 0x00]).unwrap();
        vf.region_write(1, 0x10, &[1, 2, 3, 4]).unwrap();
        vf.region_read(1, 0x10, &mut data).unwrap();
        assert_eq!(data, [1, 2, 3, 4]);
        vf.region_read(0, 6, &mut data).unwrap();
        assert_eq!(data, [6; 4]);
        vf.region_write(2, 0x3ffc, &[9, 9, 9, 9]).unwrap();
        let mut back = [0u8; 4];
        vf.function()
            .physical()
            .unwrap()
            .bar_read(4, 0x3ffc, &mut back)
            .unwrap();
        assert_eq!(back, [9; 4]);
        assert!(matches!(
            vf.region_read(2, 0x4000, &mut data),
            Err(DeviceError::OutOfRange { .. })
        ));
        assert!(matches!(
            vf.region_read(3, 0, &mut data),
            Err(DeviceError::NoSuchRegion(3))
        ));
        assert!(matches!(
            vf.region_read(9, 0, &mut data),
            Err(DeviceError::NoSuchRegion(9))
        ));
        assert_eq!(
            vf.region_write(ROM_REGION, 0, &data).unwrap_err().errno(),
            libc::EPERM
        );
    }

    const MSIX_LAYOUT: &str = r#"
[vpci]
format = 1
name = "m"
[identity]
vendor_id = 0x1af4
device_id = 0x1041
class_code = 0x020000
[[bar]]
index = 1
kind = "mem32"
size = "4K"
backing = "emulated"
[[capability]]
kind = "msix"
offset = 0x40
table_size = 3
table_bar = 1
table_offset = 0x100
pba_bar = 1
pba_offset = 0x200
"#;

    #[test]
    fn the_msix_table_and_pba_are_served_here_and_never_reach_the_backend() {
        let physical = CapturedFunction::new(
            "phys",
            PhysicalDescription {
                config: vec![0; 256],
                bars: [None; 6],
                rom_size: None,
            },
        );
        let scratch = Scratch {
            physical,
            registers: Mutex::new([0xaa; 4096]),
            resets: Arc::default(),
        };
        let template = Arc::new(compile(Arc::new(parse_layout("m", MSIX_LAYOUT).unwrap())));
        let vf = VirtualFunction::new(template, Box::new(scratch)).unwrap();
        vf.region_write(CONFIG_REGION, 4, &[0x02, 0x00]).unwrap();
        let mut entry = [0u8; 16];
        vf.region_read(1, 0x110, &mut entry).unwrap();
        assert_eq!(entry[12], 1, "entries reset masked");
        assert_eq!(entry[..12], [0; 12]);
        vf.region_write(1, 0x110, &[1, 2, 3, 4, 5, 6, 7, 8])
            .unwrap();
        vf.region_read(1, 0x110, &mut entry[..8]).unwrap();
        assert_eq!(entry[..8], [1, 2, 3, 4, 5, 6, 7, 8]);
        let mut pba = [0xffu8; 8];
        vf.region_read(1, 0x200, &mut pba).unwrap();
        assert_eq!(pba, [0; 8], "no pending source: nothing pending");
        vf.set_msix_pending(Some(Arc::new(|vector| vector == 2)));
        vf.region_write(1, 0x200, &[0xff; 8]).unwrap();
        vf.region_read(1, 0x200, &mut pba).unwrap();
        assert_eq!(
            pba,
            [0b100, 0, 0, 0, 0, 0, 0, 0],
            "pending bits; writes ignored"
        );
        // The backend's registers (all 0xaa) never answered for the table or PBA.
        let mut around = [0u8; 4];
        vf.region_read(1, 0xfc, &mut around).unwrap();
        assert_eq!(around, [0xaa; 4], "just before the table: the backend's");
        let straddle = vf.region_read(1, 0xfc, &mut [0u8; 8]).unwrap_err();
        assert_eq!(straddle.errno(), libc::EINVAL);
        vf.reset().unwrap();
        vf.region_write(CONFIG_REGION, 4, &[0x02, 0x00]).unwrap();
        vf.region_read(1, 0x110, &mut entry).unwrap();
        assert_eq!((entry[0], entry[12]), (0, 1), "reset brings entries back");
    }

    #[test]
    fn flr_resets_config_and_backend() {
        let resets = Arc::new(AtomicU32::new(0));
        let vf = function_counting(true, Arc::clone(&resets)).unwrap();
        vf.region_write(CONFIG_REGION, 4, &[0x02, 0x00]).unwrap();
        assert_eq!(resets.load(Ordering::SeqCst), 0);
        vf.region_write(CONFIG_REGION, 0x40 + 8, &[0x00, 0x80])
            .unwrap();
        assert_eq!(resets.load(Ordering::SeqCst), 1);
        let mut command = [0u8; 2];
        vf.region_read(CONFIG_REGION, 4, &mut command).unwrap();
        assert_eq!(command, [0, 0], "config space is back at its reset values");
    }

    const PLAIN_LAYOUT: &str = r#"
[vpci]
format = 1
name = "p"
[identity]
vendor_id = 0x1af4
device_id = 0x1041
class_code = 0x020000
[[bar]]
index = 1
kind = "mem32"
size = "4K"
backing = "emulated"
"#;

    /// A function with one register (BAR 1 offset 0) that migrates, committing a loaded value
    /// only on RESUMING -> STOP, and whose BAR 1 offset 4 sets its INTx condition.
    #[derive(Default)]
    struct Register {
        value: Mutex<u32>,
        loaded: Mutex<Option<u32>>,
        context: Mutex<Option<FunctionContext>>,
        migrates: bool,
        saved: std::sync::atomic::AtomicBool,
    }

    impl Function for Register {
        fn attach(&self, context: FunctionContext) {
            *self.context.lock() = Some(context);
        }
        fn bar_read(&self, _: u8, _: u64, data: &mut [u8]) -> Result<(), FunctionError> {
            data.copy_from_slice(&self.value.lock().to_le_bytes()[..data.len()]);
            Ok(())
        }
        fn bar_write(&self, _: u8, offset: u64, data: &[u8]) -> Result<(), FunctionError> {
            let context = self.context.lock().clone();
            match offset {
                0 => *self.value.lock() = u32::from(data[0]),
                4 => {
                    let interrupt = match data[0] {
                        0 | 1 => crate::backend::Interrupt::Intx(data[0] == 1),
                        vector => crate::backend::Interrupt::Msix(vector.into()),
                    };
                    context.unwrap().interrupts.raise(interrupt);
                }
                _ => return Err(FunctionError::BadAccess("no register".into())),
            }
            Ok(())
        }
        fn reset(&self) -> Result<(), FunctionError> {
            *self.loaded.lock() = None;
            Ok(())
        }
        fn migration(&self) -> Option<&dyn MigrationHooks> {
            self.migrates.then_some(self as _)
        }
    }

    impl MigrationHooks for Register {
        fn flags(&self) -> MigrationFlags {
            MigrationFlags::STOP_COPY
        }
        fn transition(
            &self,
            from: MigrationState,
            to: MigrationState,
        ) -> Result<(), crate::migration::MigrationError> {
            if (from, to) == (MigrationState::Resuming, MigrationState::Stop) {
                let loaded = self.loaded.lock().take();
                *self.value.lock() = loaded.expect("a loaded value");
            }
            if to == MigrationState::StopCopy {
                self.saved.store(false, std::sync::atomic::Ordering::SeqCst);
            }
            Ok(())
        }
        fn save(&self, buf: &mut [u8]) -> Result<usize, crate::migration::MigrationError> {
            if buf.len() < 4 || self.saved.swap(true, std::sync::atomic::Ordering::SeqCst) {
                return Ok(0);
            }
            buf[..4].copy_from_slice(&self.value.lock().to_le_bytes());
            Ok(4)
        }
        fn load(&self, data: &[u8]) -> Result<(), crate::migration::MigrationError> {
            *self.loaded.lock() = Some(u32::from_le_bytes(data.try_into().unwrap()));
            Ok(())
        }
        fn precopy_info(&self) -> Result<PrecopyInfo, crate::migration::MigrationError> {
            Ok(PrecopyInfo::default())
        }
        fn stop_copy_size(&self) -> Result<u64, crate::migration::MigrationError> {
            Ok(4)
        }
    }

    fn register(migrates: bool) -> VirtualFunction {
        let template = Arc::new(compile(Arc::new(parse_layout("p", PLAIN_LAYOUT).unwrap())));
        let function = Register {
            migrates,
            ..Register::default()
        };
        VirtualFunction::new(template, Box::new(function)).unwrap()
    }

    /// Records what the device raises.
    #[derive(Default)]
    struct Raised(Mutex<Vec<crate::backend::Interrupt>>);

    impl crate::backend::InterruptSink for Raised {
        fn raise(&self, interrupt: crate::backend::Interrupt) {
            self.0.lock().push(interrupt);
        }
    }

    struct NoMemory;

    impl crate::backend::DmaAccess for NoMemory {
        fn read(&self, iova: u64, data: &mut [u8]) -> Result<(), crate::backend::DmaError> {
            Err(crate::backend::DmaError::Unmapped {
                iova,
                len: data.len(),
            })
        }
        fn write(&self, iova: u64, data: &[u8]) -> Result<(), crate::backend::DmaError> {
            Err(crate::backend::DmaError::Unmapped {
                iova,
                len: data.len(),
            })
        }
    }

    #[test]
    fn the_device_raises_the_intx_line_when_it_changes_and_nothing_polls_it() {
        use crate::backend::Interrupt::{Intx, Msix};
        let vf = register(false);
        let raised = Arc::new(Raised::default());
        vf.attach(FunctionContext {
            dma: Arc::new(NoMemory),
            interrupts: Arc::clone(&raised) as _,
        });
        let take = || std::mem::take(&mut *raised.0.lock());
        assert_eq!(take(), [], "a deasserted line, at attach");
        vf.region_write(CONFIG_REGION, 4, &[0x02, 0x00]).unwrap();
        assert_eq!(
            take(),
            [],
            "a config write that changes no line raises nothing"
        );
        vf.region_write(1, 4, &[1]).unwrap();
        vf.region_write(1, 4, &[1]).unwrap();
        vf.region_write(1, 4, &[9]).unwrap();
        assert_eq!(
            take(),
            [Intx(true), Msix(9)],
            "the level once; vectors as raised"
        );
        // The guest masks INTx in COMMAND: the device drops the line itself.
        vf.region_write(CONFIG_REGION, 4, &[0x02, 0x04]).unwrap();
        assert_eq!(take(), [Intx(false)]);
        let mut status = [0u8; 2];
        vf.region_read(CONFIG_REGION, 6, &mut status).unwrap();
        assert_ne!(
            status[0] & 0x08,
            0,
            "STATUS.INTERRUPT follows the condition"
        );
        vf.region_write(CONFIG_REGION, 4, &[0x02, 0x00]).unwrap();
        assert_eq!(take(), [Intx(true)], "unmasked: the line comes back");
        vf.reset().unwrap();
        assert_eq!(take(), [Intx(false)], "a reset clears the condition");
        vf.region_write(CONFIG_REGION, 4, &[0x02, 0x00]).unwrap();
        vf.region_write(1, 4, &[1]).unwrap();
        take();
        // A new sink (a client reconnecting) hears of the asserted line at once.
        let again = Arc::new(Raised::default());
        vf.attach(FunctionContext {
            dma: Arc::new(NoMemory),
            interrupts: Arc::clone(&again) as _,
        });
        assert_eq!(*again.0.lock(), [Intx(true)]);
    }

    fn stream_of(vf: &VirtualFunction) -> Vec<u8> {
        assert_eq!(
            vf.set_migration_state(MigrationState::StopCopy).unwrap(),
            MigrationState::StopCopy
        );
        let mut stream = Vec::new();
        loop {
            let mut chunk = [0u8; 64];
            let n = vf.migration_read(&mut chunk).unwrap();
            stream.extend_from_slice(&chunk[..n]);
            if n < chunk.len() {
                return stream;
            }
        }
    }

    fn value(vf: &VirtualFunction) -> u8 {
        let mut data = [0u8; 1];
        vf.region_read(1, 0, &mut data).unwrap();
        data[0]
    }

    #[test]
    fn a_function_migrates_in_process_and_refuses_a_corrupt_stream_before_changing() {
        let source = register(true);
        source
            .region_write(CONFIG_REGION, 4, &[0x06, 0x00])
            .unwrap();
        source.region_write(1, 0, &[7]).unwrap();
        let stream = stream_of(&source);
        let destination = register(true);
        destination
            .region_write(CONFIG_REGION, 4, &[0x02, 0x00])
            .unwrap();

        // A corrupt record is refused as it arrives; leaving RESUMING fails, nothing moved.
        destination
            .set_migration_state(MigrationState::Resuming)
            .unwrap();
        let mut corrupt = stream.clone();
        let at = corrupt.len() - 30;
        corrupt[at] ^= 0xff;
        let refused = destination.migration_write(&corrupt).unwrap_err();
        assert_eq!(refused.errno(), libc::EINVAL);
        assert!(destination.migration_error().unwrap().contains("checksum"));
        assert!(
            destination
                .set_migration_state(MigrationState::Stop)
                .is_err()
        );
        assert_eq!(destination.migration_state(), MigrationState::Error);
        assert_eq!(value(&destination), 0, "the device never committed");

        // A reset clears the migration state directly.
        destination.reset().unwrap();
        assert_eq!(destination.migration_state(), MigrationState::Running);
        assert_eq!(destination.migration_error(), None);

        destination
            .region_write(CONFIG_REGION, 4, &[0x02, 0x00])
            .unwrap();
        destination
            .set_migration_state(MigrationState::Resuming)
            .unwrap();
        destination.migration_write(&stream).unwrap();
        destination
            .set_migration_state(MigrationState::Running)
            .unwrap();
        assert_eq!(value(&destination), 7);
        let mut config = [[0u8; 256]; 2];
        source
            .region_read(CONFIG_REGION, 0, &mut config[0])
            .unwrap();
        destination
            .region_read(CONFIG_REGION, 0, &mut config[1])
            .unwrap();
        assert_eq!(config[0], config[1], "config space moved with the state");
    }

    #[test]
    fn a_function_without_hooks_does_not_migrate() {
        let vf = register(false);
        assert_eq!(vf.migration_flags(), None);
        let e = vf.set_migration_state(MigrationState::Stop).unwrap_err();
        assert_eq!(e.errno(), libc::ENOTTY);
        assert_eq!(
            vf.dma_logging_start(4096, std::slice::from_ref(&(0..0x1000)))
                .unwrap_err()
                .errno(),
            libc::ENOTTY
        );
        assert_eq!(vf.migration_state(), MigrationState::Running);
    }

    #[test]
    fn regions_describe_the_layout() {
        let vf = function(true).unwrap();
        let regions = vf.regions();
        assert_eq!(regions.len(), 9);
        assert_eq!(
            (regions[0].size, regions[1].size, regions[2].size),
            (32, 4096, 0x4000)
        );
        assert_eq!(regions[3].size, 0);
        assert_eq!(regions[7].size, 256);
        assert!(!regions[8].read);
    }
}
