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
use super::{CliError, Outcome};
use crate::lifecycle::run_dir::RunDir;
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
    /// Give sockets to this group (mode 0660) so VMMs running in it can connect.
    #[arg(long, value_name = "GID")]
    socket_group: Option<u32>,
    /// Peer uid allowed to connect; may be repeated [default: the server's uid].
    #[arg(long, value_name = "UID")]
    allow_uid: Vec<u32>,
    /// Do not start the definitions marked `start = auto`.
    #[arg(long)]
    no_autostart: bool,
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

fn read_config(path: &PathBuf) -> Result<ConfigFile, CliError> {
    let text =
        std::fs::read_to_string(path).map_err(|e| CliError(format!("{}: {e}", path.display())))?;
    toml::from_str(&text).map_err(|e| CliError(format!("{}: {e}", path.display())))
}

fn specs_of(config: &ConfigFile, base: &std::path::Path) -> Result<Vec<CreateSpec>, CliError> {
    config
        .function
        .iter()
        .map(|f| {
            let layout = match &f.layout {
                Some(path) => {
                    let path = base.join(path);
                    Some(
                        std::fs::read_to_string(&path)
                            .map_err(|e| CliError(format!("{}: {e}", path.display())))?,
                    )
                }
                None => None,
            };
            Ok(CreateSpec {
                backend: f.backend.clone(),
                profile: f.profile.clone(),
                name: f.name.clone(),
                layout,
                attributes: f
                    .attributes
                    .iter()
                    .map(|a| (a.name.clone(), a.value.clone()))
                    .collect(),
            })
        })
        .collect()
}

/// One emulated function of each backend, with its first profile.
fn embedded_default(service: &Service) -> Vec<CreateSpec> {
    service
        .types()
        .into_iter()
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
    println!("{}  {}", info.name, info.qemu_device);
}

/// Runs the server.
pub fn run(args: ServeArgs, dirs: &Dirs) -> Result<Outcome, CliError> {
    let config = match &args.config {
        Some(path) => read_config(path)?,
        None => ConfigFile::default(),
    };
    let socket_group = args.socket_group.or(config.server.socket_group);
    // Before anything else: a second server on a live server's run directory stops here,
    // having touched nothing.
    let (run_dir, stale) = RunDir::claim(&dirs.run_dir(), socket_group.is_some())
        .map_err(|e| CliError(e.to_string()))?;
    if !stale.is_empty() {
        eprintln!(
            "vfio-variant: removed {} socket(s) left by a server that did not stop cleanly",
            stale.len()
        );
    }
    let registry = registry_with(&args.plugin)?;
    let mut allowed_uids = args.allow_uid.clone();
    allowed_uids.extend(&config.server.allowed_uids);
    let server = ServerConfig {
        socket_mode: if socket_group.is_some() { 0o660 } else { 0o600 },
        socket_group,
        allowed_uids,
        ..ServerConfig::default()
    };
    let control_path = control::socket_path(run_dir.path());
    let listener = control::bind(&control_path)
        .map_err(|e| CliError(format!("{}: {e}", control_path.display())))?;
    let service = Arc::new(Service::new(
        registry,
        run_dir.path().to_path_buf(),
        dirs.state_dir(),
        server,
    ));

    let (stop_reader, stop_writer) = UnixStream::pair().map_err(|e| CliError(e.to_string()))?;
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        let writer = stop_writer
            .try_clone()
            .map_err(|e| CliError(e.to_string()))?;
        signal_hook::low_level::pipe::register(signal, writer)
            .map_err(|e| CliError(format!("signal handler: {e}")))?;
    }

    let mut failures = Vec::new();
    if !args.no_autostart {
        failures.extend(service.autostart());
    }
    let specs = match &args.config {
        Some(path) => specs_of(&config, path.parent().unwrap_or(std::path::Path::new(".")))?,
        None if service.list().is_empty() => embedded_default(&service),
        None => Vec::new(),
    };
    for spec in &specs {
        if let Err(e) = service.create(spec) {
            failures.push((spec.name.clone().unwrap_or_else(|| spec.backend.clone()), e));
        }
    }
    for (name, error) in &failures {
        eprintln!("vfio-variant: {name}: {error}");
    }
    let running = service.list();
    println!(
        "vfio-variant: serving {} function(s); control socket {}",
        running.len(),
        control_path.display()
    );
    for info in &running {
        announce(info);
    }
    println!(
        "Guest RAM shared with the server is fastest, e.g. -object memory-backend-memfd,id=mem0,size=1G,share=on -numa node,memdev=mem0; private RAM works, by DMA messages (slower)"
    );
    let _ = std::io::stdout().flush();

    control::serve(Arc::clone(&service), listener, &stop_reader.into());
    service.shutdown();
    let _ = std::fs::remove_file(&control_path);
    eprintln!("vfio-variant: stopped");
    Ok(Outcome::Success)
}
