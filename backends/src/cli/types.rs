//! `vfio-variant types`: the registered backends and their profiles.

use std::path::PathBuf;

use clap::Args;
use serde::Serialize;
use vfio_variant::backend::ProfileInfo;

use super::{CliError, Outcome, print_json};
use crate::builtin::register_builtin;
use crate::plugin::register_plugin;
use crate::registry::Registry;

/// Arguments of `types`.
#[derive(Args)]
pub struct TypesArgs {
    /// Also load a backend plugin (a shared library); may be repeated.
    #[arg(long, value_name = "LIBRARY")]
    plugin: Vec<PathBuf>,
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct BackendTypes {
    backend: String,
    description: String,
    profiles: Vec<ProfileInfo>,
}

/// The built-in backends plus the plugins named on the command line.
pub fn registry_with(plugins: &[PathBuf]) -> Result<Registry, CliError> {
    let mut registry = Registry::new();
    register_builtin(&mut registry).map_err(|e| CliError(e.to_string()))?;
    for path in plugins {
        register_plugin(&mut registry, path).map_err(|e| CliError(e.to_string()))?;
    }
    Ok(registry)
}

/// Lists backends and profiles with their available instances.
pub fn run(args: TypesArgs) -> Result<Outcome, CliError> {
    let registry = registry_with(&args.plugin)?;
    let types: Vec<BackendTypes> = registry
        .iter()
        .map(|b| BackendTypes {
            backend: b.name().to_string(),
            description: b.description().to_string(),
            profiles: b.profiles(),
        })
        .collect();
    if args.json {
        print_json(&types)?;
        return Ok(Outcome::Success);
    }
    for t in &types {
        println!("{}: {}", t.backend, t.description);
        for p in &t.profiles {
            println!(
                "  {:<16} available {:>5}{}  {}",
                p.name,
                p.available_instances,
                if p.migratable { "  migratable" } else { "" },
                p.description
            );
        }
    }
    Ok(Outcome::Success)
}
