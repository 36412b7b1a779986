//! `vfio-variant plugin check LIB`: loads a plugin library without starting a server, checks
//! its descriptor, lists its profiles and runs the conformance kit through the plugin ABI.

use std::path::PathBuf;
use std::time::Instant;

use clap::{Args, Subcommand};
use vfio_variant::backend::Backend;
use vfio_variant::plugin::{ABI_VERSION, FRAMEWORK_VERSION, MIN_DESCRIPTOR_SIZE};
use vfio_variant::testing::check_backend;

use super::{CliError, Outcome};
use crate::plugin::load_plugin;

/// Plugin tools.
#[derive(Subcommand)]
pub enum PluginCommand {
    /// Load a plugin without starting a server: check its descriptor, list its profiles and
    /// run the conformance kit (exit 0: loads and conforms, 1: loads and fails a check, 2:
    /// refused). The kit creates functions and writes their registers: run it against
    /// emulated hardware or spare devices, or pass --no-conformance.
    Check(CheckArgs),
}

/// Arguments of `plugin check`.
#[derive(Args)]
pub struct CheckArgs {
    /// The plugin library.
    library: PathBuf,
    /// Only load it and list its profiles.
    #[arg(long)]
    no_conformance: bool,
}

/// Runs a plugin subcommand.
pub fn run(command: PluginCommand) -> Result<Outcome, CliError> {
    match command {
        PluginCommand::Check(args) => check(args),
    }
}

fn check(args: CheckArgs) -> Result<Outcome, CliError> {
    let backend = load_plugin(&args.library).map_err(|e| CliError::failed(e.to_string()))?;
    println!(
        "{}: backend `{}`: {}",
        args.library.display(),
        backend.name(),
        backend.description()
    );
    println!(
        "  built with vfio-variant {}, plugin ABI {ABI_VERSION}, descriptor {} bytes (this host: vfio-variant {FRAMEWORK_VERSION}, at least {MIN_DESCRIPTOR_SIZE} bytes)",
        backend.framework_version(),
        backend.descriptor_size()
    );
    for p in backend.profiles() {
        println!(
            "  profile {:<16} available {:>5}{}  {}",
            p.name,
            p.available_instances,
            if p.migratable { "  migratable" } else { "" },
            p.description
        );
    }
    if args.no_conformance {
        return Ok(Outcome::Success);
    }
    let started = Instant::now();
    let report = check_backend(&*backend);
    print!("{report}");
    println!("  conformance run: {} ms", started.elapsed().as_millis());
    Ok(if report.passed() {
        Outcome::Success
    } else {
        Outcome::No
    })
}
