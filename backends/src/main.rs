//! `vfio-variant`: the device server, lifecycle and layout tools.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use vfio_variant_backends::cli::{self, types::TypesArgs, vpci::VpciCommand};

/// A userspace framework for VFIO variant drivers.
#[derive(Parser)]
#[command(name = "vfio-variant", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// vPCI layout tools: derive, check, compat.
    #[command(subcommand)]
    Vpci(VpciCommand),
    /// The registered backends and their profiles, with available instances.
    Types(TypesArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    cli::exit_code(match cli.command {
        Command::Vpci(command) => cli::vpci::run(command),
        Command::Types(args) => cli::types::run(args),
    })
}
