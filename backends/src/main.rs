//! `vfio-variant`: the device server, lifecycle and layout tools.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use vfio_variant_backends::cli::dirs::Dirs;
use vfio_variant_backends::cli::lifecycle::{
    CreateArgs, DefineArgs, DestroyArgs, ListArgs, NameArgs,
};
use vfio_variant_backends::cli::migrate::{AgentArgs, MigrateArgs};
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
}

/// Logs to stderr: `VFIO_VARIANT_LOG` filters (default `info` for the long-running commands,
/// whose event log it is, `warn` for the others); `VFIO_VARIANT_LOG_FORMAT=json` gives one
/// JSON object per line.
fn init_logging(command: &Command) {
    let default = match command {
        Command::Serve(_) | Command::MigrateAgent(_) => "info",
        _ => "warn",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("VFIO_VARIANT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if std::env::var("VFIO_VARIANT_LOG_FORMAT").is_ok_and(|f| f == "json") {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.command);
    let dirs = &cli.dirs;
    let json = wants_json(&cli.command);
    let result = match cli.command {
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
    };
    cli::exit_code(result, json)
}

/// Whether the command asked for JSON output (errors are then JSON on stdout too).
fn wants_json(command: &Command) -> bool {
    match command {
        Command::Serve(_) | Command::MigrateAgent(_) => false,
        Command::Types(a) => a.json,
        Command::Create(a) => a.json,
        Command::Destroy(a) | Command::Stop(a) => a.json,
        Command::List(a) => a.json,
        Command::Define(a) => a.json,
        Command::Undefine(a) | Command::Start(a) => a.json,
        Command::Migrate(a) => a.json(),
        Command::Vpci(c) => c.json(),
    }
}
