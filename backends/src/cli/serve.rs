//! `vfio-variant serve`: runs the device server until SIGINT or SIGTERM.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;
use serde::Deserialize;
use vfio_variant::server::ServerConfig;

use super::dirs::Dirs;
use super::types::registry_with;
use super::{CliError, ErrorKind, Outcome, read_text};
use crate::builtin::passthrough::host::check_address;
use crate::lifecycle::run_dir::{RunDir, RunDirError};
use vfio_variant::vpci::MAX_LAYOUT_FILE;

/// Most bytes of a configuration file.
const MAX_CONFIG_FILE: u64 = 1 << 20;
use crate::lifecycle::{CreateSpec, InstanceInfo, Service, control};

/// Arguments of `serve`.
#[derive(Args)]
pub struct ServeArgs {
    /// Functions to run, instead of the embedded default (see docs/serve.md).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Also load a backend plugin (a shared library); may be repeated.
    #[arg(long, value_name = "LIBRARY")]
    plugin: Vec<PathBuf>,
    /// Also load every `*.so` plugin in this directory; may be repeated (and
    /// $VFIO_VARIANT_PLUGIN_DIR).
    #[arg(long, value_name = "DIR")]
    plugin_dir: Vec<PathBuf>,
    /// Start no function of the embedded default (only definitions and the config file's).
    #[arg(long)]
    no_default_functions: bool,
    /// Give sockets to this group (mode 0660) so VMMs running in it can connect.
    #[arg(long, value_name = "GID")]
    socket_group: Option<u32>,
    /// Peer uid allowed to connect; may be repeated [default: the server's uid].
    #[arg(long, value_name = "UID")]
    allow_uid: Vec<u32>,
    /// Do not start the definitions marked `start = auto`.
    #[arg(long)]
    no_autostart: bool,
    /// An SR-IOV PF (PCI address) whose free VFs the passthrough backend offers: VFs bound to
    /// no driver, bound to vfio-pci by create and unbound by destroy; may be repeated.
    #[arg(long, value_name = "ADDRESS")]
    passthrough_pf: Vec<String>,
}

/// The configuration file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    #[serde(default)]
    server: ServerSection,
    #[serde(default)]
    function: Vec<FunctionSection>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServerSection {
    socket_group: Option<u32>,
    #[serde(default)]
    allowed_uids: Vec<u32>,
    /// Plugin libraries, relative to the configuration file.
    #[serde(default)]
    plugins: Vec<PathBuf>,
    /// Plugin directories (every `*.so`), relative to the configuration file.
    #[serde(default)]
    plugin_dirs: Vec<PathBuf>,
    /// PFs whose free VFs the passthrough backend offers.
    #[serde(default)]
    passthrough_pfs: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FunctionSection {
    name: Option<String>,
    backend: String,
    profile: Option<String>,
    /// Path of a vPCI layout file, relative to the configuration file.
    layout: Option<PathBuf>,
    #[serde(default)]
    attributes: Vec<Attribute>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Attribute {
    name: String,
    value: String,
}

fn read_config(path: &std::path::Path) -> Result<ConfigFile, CliError> {
    let text = read_text(path, MAX_CONFIG_FILE)?;
    toml::from_str(&text).map_err(|e| CliError {
        line: e
            .span()
            .map(|span| text[..span.start.min(text.len())].matches('\n').count() + 1),
        ..CliError::file(path, e).with_kind(ErrorKind::Invalid)
    })
}

fn specs_of(config: &ConfigFile, base: &std::path::Path) -> Result<Vec<CreateSpec>, CliError> {
    config
        .function
        .iter()
        .map(|f| {
            let layout = match &f.layout {
                Some(path) => {
                    let path = base.join(path);
                    Some((
                        read_text(&path, MAX_LAYOUT_FILE)?,
                        path.display().to_string(),
                    ))
                }
                None => None,
            };
            let (layout, layout_file) = layout.unzip();
            Ok(CreateSpec {
                backend: f.backend.clone(),
                profile: f.profile.clone(),
                name: f.name.clone(),
                layout,
                layout_file,
                attributes: f
                    .attributes
                    .iter()
                    .map(|a| (a.name.clone(), a.value.clone()))
                    .collect(),
            })
        })
        .collect()
}

/// One emulated function of each backend, with its first profile. Real devices (the
/// passthrough backend) are only ever taken when asked for.
fn embedded_default(service: &Service) -> Vec<CreateSpec> {
    service
        .types()
        .into_iter()
        .filter(|t| t.backend != crate::builtin::passthrough::NAME)
        .filter_map(|t| {
            let profile = t.profiles.iter().find(|p| p.available_instances > 0)?;
            Some(CreateSpec {
                name: Some(format!("{}0", t.backend)),
                backend: t.backend,
                profile: Some(profile.name.clone()),
                ..CreateSpec::default()
            })
        })
        .collect()
}

fn announce(info: &InstanceInfo) {
    outln!("{}  {}", info.name, info.qemu_device);
}

/// The one-line warning for functions that can migrate: QEMU's vfio-user client (11.1)
/// carries no device state, so a QEMU live migration leaves such a function behind.
fn stock_qemu_warning(running: &[InstanceInfo]) -> Option<String> {
    let names: Vec<&str> = running
        .iter()
        .filter(|i| i.migratable)
        .map(|i| i.name.as_str())
        .collect();
    (!names.is_empty()).then(|| {
        format!(
            "warning: {} can migrate, but stock QEMU's vfio-user client carries no device state: \
             a QEMU live migration leaves the function dead on the destination; migrate it with \
             `vfio-variant migrate` or a VMM using migration_driver (docs/migration.md)",
            names.join(", ")
        )
    })
}

/// Runs the server.
pub fn run(args: ServeArgs, dirs: &Dirs) -> Result<Outcome, CliError> {
    let config = match &args.config {
        Some(path) => read_config(path)?,
        None => ConfigFile::default(),
    };
    let mut pfs = args.passthrough_pf.clone();
    pfs.extend(config.server.passthrough_pfs.iter().cloned());
    for pf in &pfs {
        check_address(pf).map_err(|e| CliError::new(ErrorKind::Invalid, e.to_string()))?;
    }
    let socket_group = args.socket_group.or(config.server.socket_group);
    // Before anything else: a second server on a live server's run directory stops here,
    // having touched nothing.
    let (run_dir, stale) = RunDir::claim(&dirs.run_dir(), socket_group.is_some()).map_err(|e| {
        let kind = match &e {
            RunDirError::Busy { .. } => ErrorKind::Conflict,
            RunDirError::Io { source, .. }
                if source.kind() == std::io::ErrorKind::PermissionDenied =>
            {
                ErrorKind::Permission
            }
            RunDirError::Io { .. } => ErrorKind::Io,
        };
        CliError::new(kind, e.to_string())
    })?;
    if !stale.is_empty() {
        eprintln!(
            "vfio-variant: removed {} socket(s) left by a server that did not stop cleanly",
            stale.len()
        );
    }
    let base = args
        .config
        .as_deref()
        .and_then(std::path::Path::parent)
        .unwrap_or(std::path::Path::new("."));
    let mut plugins = args.plugin.clone();
    plugins.extend(config.server.plugins.iter().map(|p| base.join(p)));
    let mut plugin_dirs = args.plugin_dir.clone();
    plugin_dirs.extend(config.server.plugin_dirs.iter().map(|p| base.join(p)));
    let registry = registry_with(&plugins, &plugin_dirs, &pfs)?;
    let mut allowed_uids = args.allow_uid.clone();
    allowed_uids.extend(&config.server.allowed_uids);
    let server = ServerConfig {
        socket_mode: if socket_group.is_some() { 0o660 } else { 0o600 },
        socket_group,
        allowed_uids,
        ..ServerConfig::default()
    };
    let control_path = control::socket_path(run_dir.path());
    let listener = control::bind(&control_path).map_err(|e| {
        let kind = match e.kind() {
            std::io::ErrorKind::AddrInUse => ErrorKind::Conflict,
            std::io::ErrorKind::PermissionDenied => ErrorKind::Permission,
            _ => ErrorKind::Io,
        };
        CliError::file(&control_path, e).with_kind(kind)
    })?;
    let service = Arc::new(Service::new(
        registry,
        run_dir.path().to_path_buf(),
        dirs.state_dir(),
        server,
    ));

    let (stop_reader, stop_writer) =
        UnixStream::pair().map_err(|e| CliError::failed(e.to_string()))?;
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        let writer = stop_writer
            .try_clone()
            .map_err(|e| CliError::failed(e.to_string()))?;
        signal_hook::low_level::pipe::register(signal, writer)
            .map_err(|e| CliError::failed(format!("signal handler: {e}")))?;
    }

    let mut failures = Vec::new();
    if !args.no_autostart {
        failures.extend(service.autostart());
    }
    let specs = match &args.config {
        Some(path) => specs_of(&config, path.parent().unwrap_or(std::path::Path::new(".")))?,
        None if service.list().is_empty() && !args.no_default_functions => {
            embedded_default(&service)
        }
        None => Vec::new(),
    };
    let mut refused = Vec::new();
    for (index, spec) in specs.iter().enumerate() {
        if let Err(e) = service.create(spec) {
            let name = spec.name.clone().unwrap_or_else(|| spec.backend.clone());
            refused.push(format!("function[{index}] ({name}): {e}"));
        }
    }
    for (name, error) in &failures {
        eprintln!("vfio-variant: autostart of {name} failed: {error}");
    }
    if let (Some(path), false) = (&args.config, refused.is_empty()) {
        // A configuration is all or nothing: a unit that starts half its functions looks
        // healthy to its supervisor.
        service.shutdown();
        let _ = std::fs::remove_file(&control_path);
        return Err(CliError {
            file: Some(path.display().to_string()),
            ..CliError::new(
                ErrorKind::Invalid,
                format!(
                    "{}: {} of {} function(s) could not be created, so none is served:\n  {}",
                    path.display(),
                    refused.len(),
                    specs.len(),
                    refused.join("\n  ")
                ),
            )
        });
    }
    // Without a configuration (the embedded default) the others are served: say which not.
    for line in &refused {
        eprintln!("vfio-variant: not served: {line}");
    }
    let running = service.list();
    let mut failed = String::new();
    if !failures.is_empty() {
        failed += &format!("; {} definition(s) failed to start", failures.len());
    }
    if !refused.is_empty() {
        failed += &format!("; {} function(s) could not be created", refused.len());
    }
    outln!(
        "vfio-variant: serving {} function(s){failed}; control socket {}",
        running.len(),
        control_path.display()
    );
    for info in &running {
        announce(info);
    }
    if let Some(line) = stock_qemu_warning(&running) {
        outln!("{line}");
    }
    outln!(
        "Guest RAM shared with the server is fastest, e.g. -object memory-backend-memfd,id=mem0,size=1G,share=on -numa node,memdev=mem0; private RAM works, by DMA messages (slower)"
    );
    let _ = std::io::stdout().flush();

    control::serve(Arc::clone(&service), listener, &stop_reader.into());
    service.shutdown();
    let _ = std::fs::remove_file(&control_path);
    eprintln!("vfio-variant: stopped");
    Ok(Outcome::Success)
}
