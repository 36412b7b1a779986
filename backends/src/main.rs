//! `vfio-variant`: the device server, lifecycle and layout tools.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use vfio_variant_backends::cli::dirs::Dirs;
use vfio_variant_backends::cli::lifecycle::{
    CreateArgs, DefineArgs, DestroyArgs, ListArgs, NameArgs,
};
use vfio_variant_backends::cli::migrate::{AgentArgs, MigrateArgs};
use vfio_variant_backends::cli::plugin::PluginCommand;
use vfio_variant_backends::cli::scaffold::NewBackendArgs;
use vfio_variant_backends::cli::serve::ServeArgs;
use vfio_variant_backends::cli::{self, types::TypesArgs, vpci::VpciCommand};

/// A userspace framework for VFIO variant drivers.
#[derive(Parser)]
#[command(name = "vfio-variant", version, about)]
struct Cli {
    #[command(flatten)]
    dirs: Dirs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the device server (with no --config: one emulated function of each backend).
    Serve(ServeArgs),
    /// The backends and their profiles, with available instances.
    Types(TypesArgs),
    /// Create a function on the running server (provisioned before its socket appears).
    Create(CreateArgs),
    /// Destroy a function (refused while a VMM is attached, unless --force).
    Destroy(DestroyArgs),
    /// Running functions, or stored definitions with --defined.
    List(ListArgs),
    /// Store a persistent definition.
    Define(DefineArgs),
    /// Remove a persistent definition.
    Undefine(NameArgs),
    /// Create a defined function on the running server.
    Start(NameArgs),
    /// Destroy a running defined function.
    Stop(DestroyArgs),
    /// Move a function's device state to another function (here, or through an agent).
    Migrate(MigrateArgs),
    /// Accept migrations from other hosts into this host's functions.
    MigrateAgent(AgentArgs),
    /// vPCI layout tools: derive, check, compat.
    #[command(subcommand)]
    Vpci(VpciCommand),
    /// Create a minimal backend plugin crate that builds and passes the conformance kit.
    NewBackend(NewBackendArgs),
    /// Plugin tools: check a library without starting a server.
    #[command(subcommand)]
    Plugin(PluginCommand),
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("VFIO_VARIANT_LOG"))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let dirs = &cli.dirs;
    cli::exit_code(match cli.command {
        Command::Serve(args) => cli::serve::run(args, dirs),
        Command::Types(args) => cli::types::run(args, dirs),
        Command::Create(args) => cli::lifecycle::create(args, dirs),
        Command::Destroy(args) => cli::lifecycle::destroy(args, dirs),
        Command::List(args) => cli::lifecycle::list(args, dirs),
        Command::Define(args) => cli::lifecycle::define(args, dirs),
        Command::Undefine(args) => cli::lifecycle::undefine(args, dirs),
        Command::Start(args) => cli::lifecycle::start(args, dirs),
        Command::Stop(args) => cli::lifecycle::stop(args, dirs),
        Command::Migrate(args) => cli::migrate::run(args, dirs),
        Command::MigrateAgent(args) => cli::migrate::agent(args, dirs),
        Command::Vpci(command) => cli::vpci::run(command),
        Command::Plugin(command) => cli::plugin::run(command),
        Command::NewBackend(args) => cli::scaffold::run(args),
    })
}
