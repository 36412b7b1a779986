//! `vfio-variant vpci derive | check | compat`: layout tools.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::{Args, Subcommand};
use serde::Serialize;
use vfio_variant::config::{
    ConfigError, ConfigSpace, ConfigTemplate, NoBacking, PhysicalFunctionBacking,
};
use vfio_variant::layout::{BarBacking, BarKind, ChainItem};
use vfio_variant::physical::PhysicalDescription;
use vfio_variant::physical::PhysicalFunction;
use vfio_variant::physical::captured::CapturedFunction;
use vfio_variant::physical::sysfs::{describe_files, describe_sysfs_dir};
use vfio_variant::physical::vfio::VfioPhysicalFunction;
use vfio_variant::vpci::compat::{Difference, compare, fingerprint, warnings};
use vfio_variant::vpci::derive::{DEFAULT_QUIRKS, DeriveOptions, derive};
use vfio_variant::vpci::{Layout, bind::bind, compile::compile, load_layout, render};

use super::{CliError, ErrorKind, Outcome, print_json};

/// Layout tools.
#[derive(Subcommand)]
pub enum VpciCommand {
    /// Derive a layout from a physical function (sysfs directory, or config + resource files).
    Derive(DeriveArgs),
    /// Validate a layout and print it compiled (lspci-like, or `lspci -xxxx` hex with --hex).
    Check(CheckArgs),
    /// Can a function exposed with layout A be resumed with layout B? Lists every difference.
    Compat(CompatArgs),
}

impl VpciCommand {
    /// Whether `--json` was given.
    pub fn json(&self) -> bool {
        match self {
            Self::Derive(_) => false,
            Self::Check(a) => a.json,
            Self::Compat(a) => a.json,
        }
    }
}

/// Where a physical function's description comes from.
#[derive(Args)]
pub struct PhysicalArgs {
    /// A sysfs PCI device directory (reads `config` and `resource`).
    #[arg(long, value_name = "DIR", conflicts_with_all = ["config", "resource", "vfio"])]
    sysfs: Option<PathBuf>,
    /// A function bound to vfio-pci, given by its sysfs directory: read through kernel VFIO.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["config", "resource"])]
    vfio: Option<PathBuf>,
    /// A config-space file (as sysfs `config`); needs --resource.
    #[arg(long, value_name = "FILE", requires = "resource")]
    config: Option<PathBuf>,
    /// A sysfs-format `resource` file (BAR sizes); needs --config.
    #[arg(long, value_name = "FILE", requires = "config")]
    resource: Option<PathBuf>,
}

/// Refuses a `config` file shorter than a PCI config space: sysfs gives unprivileged
/// readers its first 64 bytes only, and the capabilities past them would be lost.
fn whole_config(path: &Path) -> Result<(), CliError> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(256).read_to_end(&mut bytes))
        .map_err(|e| CliError::file(path, e))?;
    if bytes.len() < 256 {
        return Err(CliError::new(
            ErrorKind::Permission,
            format!(
                "{}: only {} bytes of config space could be read (sysfs gives the first 64 to \
                 unprivileged users): run as root, or read the device through --vfio",
                path.display(),
                bytes.len()
            ),
        ));
    }
    Ok(())
}

impl PhysicalArgs {
    fn describe(&self) -> Result<Option<(PhysicalDescription, String)>, CliError> {
        if let Some(dir) = &self.sysfs {
            whole_config(&dir.join("config"))?;
            return Ok(Some((describe_sysfs_dir(dir)?, dir.display().to_string())));
        }
        if let Some(dir) = &self.vfio {
            let function = VfioPhysicalFunction::open(dir)?;
            return Ok(Some((
                function.describe()?,
                format!("{} through VFIO", dir.display()),
            )));
        }
        match (&self.config, &self.resource) {
            (Some(config), Some(resource)) => Ok(Some((
                whole_config(config).and_then(|()| Ok(describe_files(config, resource)?))?,
                format!("{} and {}", config.display(), resource.display()),
            ))),
            _ => Ok(None),
        }
    }
}

/// Arguments of `vpci derive`.
#[derive(Args)]
pub struct DeriveArgs {
    #[command(flatten)]
    physical: PhysicalArgs,
    /// Name of the instance type.
    #[arg(long, default_value = "derived")]
    name: String,
    /// Keep a capability the quirks table hides by default (sriov, ari, rebar).
    #[arg(long, value_name = "QUIRK")]
    keep: Vec<String>,
    /// Write the layout here instead of stdout.
    #[arg(short, long, value_name = "FILE")]
    output: Option<PathBuf>,
}

/// Arguments of `vpci check`.
#[derive(Args)]
pub struct CheckArgs {
    /// The layout file.
    file: PathBuf,
    /// Check it against this physical function, and read its passthrough bytes from it.
    #[command(flatten)]
    physical: PhysicalArgs,
    /// Print the compiled config space's reset values as `lspci -xxxx` does.
    #[arg(long, conflicts_with = "json")]
    hex: bool,
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
}

/// Arguments of `vpci compat`.
#[derive(Args)]
pub struct CompatArgs {
    /// Layout the function is exposed with now.
    a: PathBuf,
    /// Layout it would be resumed with.
    b: PathBuf,
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
}

/// Runs a `vpci` subcommand.
pub fn run(command: VpciCommand) -> Result<Outcome, CliError> {
    match command {
        VpciCommand::Derive(args) => derive_command(args),
        VpciCommand::Check(args) => check_command(args),
        VpciCommand::Compat(args) => compat_command(args),
    }
}

fn derive_command(args: DeriveArgs) -> Result<Outcome, CliError> {
    let Some((description, source)) = args.physical.describe()? else {
        return Err(CliError::new(
            ErrorKind::Invalid,
            "vpci derive needs --sysfs DIR, or --config FILE --resource FILE",
        ));
    };
    for keep in &args.keep {
        if !DEFAULT_QUIRKS.iter().any(|q| q.name == keep) {
            let names: Vec<&str> = DEFAULT_QUIRKS.iter().map(|q| q.name).collect();
            return Err(CliError::failed(format!(
                "--keep {keep}: no such quirk (known: {})",
                names.join(", ")
            )));
        }
    }
    let options = DeriveOptions {
        name: args.name,
        source,
        keep: args.keep,
    };
    let derived = derive(&description, &options)?;
    let text = derived.to_toml();
    match args.output {
        Some(path) => std::fs::write(&path, text)
            .map_err(|e| CliError::failed(format!("writing {}: {e}", path.display())))?,
        None => out!("{text}"),
    }
    Ok(Outcome::Success)
}

/// The compiled config space as the guest reads it after reset.
fn read_config(
    layout: &Arc<Layout>,
    physical: Option<&PhysicalDescription>,
) -> Result<(Arc<ConfigTemplate>, Vec<u8>), CliError> {
    let template = Arc::new(compile(Arc::clone(layout)));
    let space = ConfigSpace::new(Arc::clone(&template));
    let mut config = vec![0u8; space.size()];
    let result = match physical {
        Some(p) => {
            let function = CapturedFunction::new("physical function", p.clone());
            space.read(0, &mut config, &PhysicalFunctionBacking(&function))
        }
        None => space.read(0, &mut config, &NoBacking),
    };
    result.map_err(|e| match e {
        ConfigError::NoPhysical(offset) => CliError::failed(format!(
            "config byte {offset:#x} comes from the physical function; pass --sysfs DIR or --config/--resource to read it"
        )),
        other => CliError::failed(other.to_string()),
    })?;
    Ok((template, config))
}

fn check_command(args: CheckArgs) -> Result<Outcome, CliError> {
    let layout = Arc::new(load_layout(&args.file)?);
    let physical = args.physical.describe()?;
    if let Some((description, _)) = &physical {
        bind(&layout, description)?;
    }
    let physical = physical.as_ref().map(|(d, _)| d);
    if args.hex {
        let (_, config) = read_config(&layout, physical)?;
        out!("{}", render::hex_dump(&config));
        return Ok(Outcome::Success);
    }
    let needs_physical = compile(Arc::clone(&layout)).needs_backing() && physical.is_none();
    let (template, config) = if needs_physical {
        // Describe what the layout states; physical bytes read as 0 in the summary.
        let template = Arc::new(compile(Arc::clone(&layout)));
        let config = template.reset_values().to_vec();
        (template, config)
    } else {
        read_config(&layout, physical)?
    };
    if args.json {
        print_json(&CheckReport::new(
            &layout,
            &template,
            &config,
            needs_physical,
        ))?;
    } else {
        out!("{}", render::describe(&template, &config));
        if needs_physical {
            outln!(
                "\t(bits from the physical function are shown as 0: pass --sysfs or --config/--resource)"
            );
        }
    }
    Ok(Outcome::Success)
}

#[derive(Serialize)]
struct CheckReport {
    file_valid: bool,
    name: String,
    config_size: u16,
    fingerprint: String,
    vendor_id: u16,
    device_id: u16,
    subsystem_vendor_id: u16,
    subsystem_id: u16,
    class_code: u32,
    revision: u8,
    bars: Vec<BarReport>,
    capabilities: Vec<CapReport>,
    ext_capabilities: Vec<CapReport>,
    physical_bits_known: bool,
    /// Reset values as hex, one byte after another.
    config: String,
    /// Bits the guest may write, as hex per byte.
    write_mask: String,
    /// Write-1-to-clear bits, as hex per byte.
    rw1c_mask: String,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[derive(Serialize)]
struct BarReport {
    index: u8,
    kind: &'static str,
    prefetchable: bool,
    size: u64,
    backing: String,
    mmap: Vec<[u64; 2]>,
}

#[derive(Serialize)]
struct CapReport {
    offset: u16,
    id: u16,
    length: u16,
    physical_offset: Option<u16>,
}

impl CheckReport {
    fn new(
        layout: &Layout,
        template: &ConfigTemplate,
        config: &[u8],
        needs_physical: bool,
    ) -> Self {
        let id = &layout.identity;
        Self {
            file_valid: true,
            name: layout.name.clone(),
            config_size: layout.config_size,
            fingerprint: fingerprint(template),
            vendor_id: id.vendor_id,
            device_id: id.device_id,
            subsystem_vendor_id: id.subsystem_vendor_id,
            subsystem_id: id.subsystem_id,
            class_code: id.class_code,
            revision: id.revision,
            bars: layout
                .bars
                .iter()
                .flatten()
                .map(|b| BarReport {
                    index: b.index,
                    kind: match b.kind {
                        BarKind::Io => "io",
                        BarKind::Memory32 => "mem32",
                        BarKind::Memory64 => "mem64",
                    },
                    prefetchable: b.prefetchable,
                    size: b.size,
                    backing: match b.backing {
                        BarBacking::Emulated => "emulated".into(),
                        BarBacking::LegacyIo => "legacy-io".into(),
                        BarBacking::Passthrough { physical_bar } => {
                            format!("passthrough:{physical_bar}")
                        }
                    },
                    mmap: b.mmap.iter().map(|a| [a.offset, a.size]).collect(),
                })
                .collect(),
            capabilities: cap_reports(&layout.capabilities),
            ext_capabilities: cap_reports(&layout.ext_capabilities),
            physical_bits_known: !needs_physical,
            config: hex(config),
            write_mask: hex(template.write_mask()),
            rw1c_mask: hex(template.rw1c_mask()),
        }
    }
}

/// The report of each capability of one chain.
fn cap_reports<C: ChainItem>(caps: &[C]) -> Vec<CapReport> {
    caps.iter()
        .map(|c| CapReport {
            offset: c.offset(),
            id: c.id(),
            length: c.length(),
            physical_offset: c.physical().map(|p| p.offset),
        })
        .collect()
}

#[derive(Serialize)]
struct CompatReport<'a> {
    compatible: bool,
    a: &'a Path,
    b: &'a Path,
    fingerprint_a: String,
    fingerprint_b: String,
    /// Guest-visible: each blocks migration.
    differences: Vec<Difference>,
    /// Not guest-visible: migration goes ahead.
    warnings: Vec<Difference>,
}

fn compat_command(args: CompatArgs) -> Result<Outcome, CliError> {
    let a = compile(Arc::new(load_layout(&args.a)?));
    let b = compile(Arc::new(load_layout(&args.b)?));
    let report = CompatReport {
        compatible: false,
        a: &args.a,
        b: &args.b,
        fingerprint_a: fingerprint(&a),
        fingerprint_b: fingerprint(&b),
        differences: compare(&a, &b),
        warnings: warnings(&a, &b),
    };
    let report = CompatReport {
        compatible: report.differences.is_empty(),
        ..report
    };
    if args.json {
        print_json(&report)?;
    } else {
        outln!("{}: {}", args.a.display(), report.fingerprint_a);
        outln!("{}: {}", args.b.display(), report.fingerprint_b);
        if report.compatible {
            outln!(
                "compatible: a function exposed with the first layout can be resumed with the second"
            );
        } else {
            outln!(
                "incompatible: {} guest-visible difference(s)",
                report.differences.len()
            );
            for d in &report.differences {
                outln!("  blocks: {}", d.explanation);
            }
        }
        for w in &report.warnings {
            outln!("  warning (does not block): {}", w.explanation);
        }
    }
    Ok(if report.compatible {
        Outcome::Success
    } else {
        Outcome::No
    })
}
