//! `vfio-variant types`: the registered backends and their profiles.

use std::path::PathBuf;

use clap::Args;

use super::dirs::Dirs;
use super::{CliError, ErrorKind, Outcome, print_json};
use crate::builtin::register_builtin;
use crate::lifecycle::BackendTypes;
use crate::lifecycle::control::{self, Request};
use crate::plugin::register_plugin;
use crate::plugin::sources::{env_plugin_dir, plugin_paths};
use crate::registry::Registry;

/// Arguments of `types`.
#[derive(Args)]
pub struct TypesArgs {
    /// Also load a backend plugin (a shared library); may be repeated.
    #[arg(long, value_name = "LIBRARY")]
    plugin: Vec<PathBuf>,
    /// Also load every `*.so` plugin in this directory; may be repeated.
    #[arg(long, value_name = "DIR")]
    plugin_dir: Vec<PathBuf>,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

/// The built-in backends, the `plugins` named, and every `*.so` of the plugin directories
/// `dirs` and `$VFIO_VARIANT_PLUGIN_DIR` (see [`crate::plugin::sources`]).
pub fn registry_with_dirs(plugins: &[PathBuf], dirs: &[PathBuf]) -> Result<Registry, CliError> {
    registry_with(plugins, dirs, &[])
}

/// As [`registry_with_dirs`], with the passthrough backend also offering the free VFs of
/// `passthrough_pfs`.
pub fn registry_with(
    plugins: &[PathBuf],
    dirs: &[PathBuf],
    passthrough_pfs: &[String],
) -> Result<Registry, CliError> {
    let mut registry = Registry::new();
    register_builtin(&mut registry, passthrough_pfs)
        .map_err(|e| CliError::failed(e.to_string()))?;
    let mut dirs = dirs.to_vec();
    dirs.extend(env_plugin_dir());
    for path in plugin_paths(plugins, &dirs).map_err(|e| CliError::failed(e.to_string()))? {
        register_plugin(&mut registry, path).map_err(|e| CliError::failed(e.to_string()))?;
    }
    Ok(registry)
}

/// Lists backends and profiles with their available instances: the running server's when
/// there is one (and no `--plugin` was given), else those this command registers itself,
/// said so on stderr. A server that does not let this user in is an error.
pub fn run(args: TypesArgs, dirs: &Dirs) -> Result<Outcome, CliError> {
    let socket = control::socket_path(&dirs.run_dir());
    let from_server = if args.plugin.is_empty() && args.plugin_dir.is_empty() {
        match control::request(&socket, &Request::Types) {
            Ok(value) => Some(value),
            Err(e) if e.kind == ErrorKind::NoServer => {
                eprintln!(
                    "vfio-variant: no server at {}: these are the built-in backends as a new \
                     server would offer them",
                    socket.display()
                );
                None
            }
            Err(e) => return Err(e.into()),
        }
    } else {
        None
    };
    let types: Vec<BackendTypes> = match from_server {
        Some(value) => serde_json::from_value(value)
            .map_err(|e| CliError::failed(format!("bad answer from the server: {e}")))?,
        None => {
            let registry = registry_with_dirs(&args.plugin, &args.plugin_dir)?;
            registry
                .iter()
                .map(|b| BackendTypes {
                    backend: b.name().to_string(),
                    description: b.description().to_string(),
                    profiles: b.profiles(),
                })
                .collect()
        }
    };
    if args.json {
        print_json(&types)?;
        return Ok(Outcome::Success);
    }
    for t in &types {
        outln!("{}: {}", t.backend, t.description);
        for (i, p) in t.profiles.iter().enumerate() {
            // The first profile is the one create, define and --config use when none is given.
            outln!(
                "  {}{:<16} available {:>5}{}  {}",
                if i == 0 { "*" } else { " " },
                p.name,
                p.available_instances,
                if p.migratable { "  migratable" } else { "" },
                p.description
            );
        }
    }
    if !types.is_empty() {
        outln!("(* the profile used when --profile is left out)");
    }
    Ok(Outcome::Success)
}
