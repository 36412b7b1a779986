//! `vfio-variant`: the device server, lifecycle and layout tools.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use vfio_variant_backends::cli::dirs::Dirs;
use vfio_variant_backends::cli::lifecycle::{
    CreateArgs, DefineArgs, DestroyArgs, ListArgs, ModifyArgs, NameArgs,
};
use vfio_variant_backends::cli::migrate::{AgentArgs, MigrateArgs};
use vfio_variant_backends::cli::plugin::PluginCommand;
use vfio_variant_backends::cli::scaffold::NewBackendArgs;
use vfio_variant_backends::cli::serve::ServeArgs;
use vfio_variant_backends::cli::{self, types::TypesArgs, vpci::VpciCommand};

/// Examples shown after the top-level help.
const EXAMPLES: &str = "\
Examples:
  vfio-variant serve                                 # one emulated function of each backend
  vfio-variant types                                 # backends, profiles, available instances
  vfio-variant create --backend mlx --name vm1-nic   # provisioned, then its socket appears
  vfio-variant list --json
  vfio-variant define net0 --backend virtio-net --auto && vfio-variant start net0
  vfio-variant migrate vm1-nic --agent 192.0.2.2:4500
  vfio-variant vpci compat catalog/mlx-vf.toml my-type.toml
  vfio-variant --run-dir /run/vfio-variant list      # directories: before or after the command

Exit codes: 0 done, 1 incompatible (vpci compat), 2 failed or bad usage, 3 no server,
4 permission, 5 not found, 6 invalid, 7 conflict, 8 backend refused, 9 I/O.
Documentation: docs/serve.md (server, lifecycle, exit codes), docs/vpci-format.md
(layouts), docs/migration.md; `man vfio-variant` once installed (cargo xtask install-extras).";

/// The version line: the release, and the versions of what it shares with other programs.
fn version() -> String {
    format!(
        "{} (plugin ABI {}, vPCI layout format {}, migration stream format {}, migration link {})",
        env!("CARGO_PKG_VERSION"),
        vfio_variant::plugin::ABI_VERSION,
        vfio_variant::vpci::parse::FORMAT_VERSION,
        vfio_variant::device::stream::FORMAT_VERSION,
        vfio_variant::migration_driver::link::LINK_VERSION,
    )
}

/// Virtual PCI functions for VMs: a vfio-user server of VFIO variant-driver functions,
/// their lifecycle, layouts and migration.
#[derive(Parser)]
#[command(name = "vfio-variant", after_help = EXAMPLES)]
struct Cli {
    #[command(flatten)]
    dirs: Dirs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the device server (with no --config: one emulated function of each backend).
    Serve(WithDirs<ServeArgs>),
    /// The backends and their profiles, with available instances.
    Types(WithDirs<TypesArgs>),
    /// Create a function on the running server (provisioned before its socket appears).
    #[command(
        after_help = "Examples:\n  vfio-variant create --backend sample --name fn1\n  \
        vfio-variant create --backend mlx --profile default --layout my-type.toml --json"
    )]
    Create(WithDirs<CreateArgs>),
    /// Destroy a function (refused while a VMM is attached, unless --force).
    Destroy(WithDirs<DestroyArgs>),
    /// Running functions, or stored definitions with --defined.
    #[command(
        after_help = "Examples:\n  vfio-variant list\n  vfio-variant list mlx0 --json\n  \
        vfio-variant list --backend virtio-net\n  vfio-variant list --defined\n  \
        vfio-variant list --dumpjson net0 > net0.json"
    )]
    List(WithDirs<ListArgs>),
    /// Store a persistent definition (checked as `start` would use it).
    #[command(
        after_help = "Examples:\n  vfio-variant define net0 --backend virtio-net --auto\n  \
        vfio-variant define net1 --jsonfile net0.json"
    )]
    Define(WithDirs<DefineArgs>),
    /// Change a definition, or with --live the running function.
    #[command(
        after_help = "Examples:\n  vfio-variant modify net0 --profile modern --auto\n  \
        vfio-variant modify net0 --layout my-type.toml --live --defined"
    )]
    Modify(WithDirs<ModifyArgs>),
    /// Remove a persistent definition.
    Undefine(WithDirs<NameArgs>),
    /// Create a defined function on the running server.
    Start(WithDirs<NameArgs>),
    /// Destroy a running defined function.
    Stop(WithDirs<DestroyArgs>),
    /// Move a function's device state to another function (here, or through an agent).
    Migrate(WithDirs<MigrateArgs>),
    /// Accept migrations from other hosts into this host's functions.
    MigrateAgent(WithDirs<AgentArgs>),
    /// vPCI layout tools: derive, check, compat.
    #[command(subcommand)]
    Vpci(VpciCommand),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    #[command(
        after_help = "Example:\n  vfio-variant completions bash > /usr/share/bash-completion/completions/vfio-variant"
    )]
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Write the man pages (vfio-variant.1 and one per command) into a directory.
    Man {
        /// Where to write them.
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
    /// Create a minimal backend plugin crate that builds and passes the conformance kit.
    NewBackend(NewBackendArgs),
    /// Plugin tools: check a library without starting a server.
    #[command(subcommand)]
    Plugin(PluginCommand),
}

/// A command's arguments with the directories, which may also be given before the command.
#[derive(Args)]
struct WithDirs<T: Args> {
    #[command(flatten)]
    dirs: Dirs,
    #[command(flatten)]
    args: T,
}

impl<T: Args> WithDirs<T> {
    /// The command's arguments, and its directories (those given before the command where it
    /// gives none).
    fn split(self, before: &Dirs) -> (T, Dirs) {
        let dirs = Dirs {
            run_dir: self.dirs.run_dir.or_else(|| before.run_dir.clone()),
            state_dir: self.dirs.state_dir.or_else(|| before.state_dir.clone()),
        };
        (self.args, dirs)
    }
}

/// The command line's definition, with its version line.
fn command() -> clap::Command {
    Cli::command().version(version())
}

/// Writes `vfio-variant.1` and `vfio-variant-COMMAND.1` (and `vfio-variant-vpci-COMMAND.1`).
fn write_man_pages(dir: &Path) -> Result<cli::Outcome, cli::CliError> {
    fn write(command: &clap::Command, name: &str, dir: &Path) -> Result<(), cli::CliError> {
        let path = dir.join(format!("{name}.1"));
        let mut page = Vec::new();
        clap_mangen::Man::new(command.clone().name(name.to_string()))
            .render(&mut page)
            .map_err(|e| cli::CliError::file(&path, e))?;
        std::fs::write(&path, page).map_err(|e| cli::CliError::file(&path, e))?;
        for sub in command
            .get_subcommands()
            .filter(|s| !s.is_hide_set() && s.get_name() != "help")
        {
            write(sub, &format!("{name}-{}", sub.get_name()), dir)?;
        }
        Ok(())
    }
    std::fs::create_dir_all(dir).map_err(|e| cli::CliError::file(dir, e))?;
    let mut command = command();
    command.build();
    write(&command, "vfio-variant", dir)?;
    Ok(cli::Outcome::Success)
}

/// Logs to stderr: `VFIO_VARIANT_LOG` filters (default `info` for the long-running commands,
/// whose event log it is, `warn` for the others); `VFIO_VARIANT_LOG_FORMAT=json` gives one
/// JSON object per line.
fn init_logging(command: &Command) {
    // vfio-ioctls warns about every interrupt index a device lacks (ERR, REQ) when it opens
    // one: expected, and nothing an operator can act on.
    let default = match command {
        Command::Serve(_) | Command::MigrateAgent(_) => "info,vfio_ioctls=error",
        _ => "warn,vfio_ioctls=error",
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
    let cli = match command()
        .try_get_matches()
        .and_then(|m| Cli::from_arg_matches(&m))
    {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    init_logging(&cli.command);
    let dirs = &cli.dirs;
    let json = wants_json(&cli.command);
    let result = match cli.command {
        Command::Serve(a) => with(a, dirs, cli::serve::run),
        Command::Types(a) => with(a, dirs, cli::types::run),
        Command::Create(a) => with(a, dirs, cli::lifecycle::create),
        Command::Destroy(a) => with(a, dirs, cli::lifecycle::destroy),
        Command::List(a) => with(a, dirs, cli::lifecycle::list),
        Command::Define(a) => with(a, dirs, cli::lifecycle::define),
        Command::Modify(a) => with(a, dirs, cli::lifecycle::modify),
        Command::Undefine(a) => with(a, dirs, cli::lifecycle::undefine),
        Command::Start(a) => with(a, dirs, cli::lifecycle::start),
        Command::Stop(a) => with(a, dirs, cli::lifecycle::stop),
        Command::Migrate(a) => with(a, dirs, cli::migrate::run),
        Command::MigrateAgent(a) => with(a, dirs, cli::migrate::agent),
        Command::Vpci(command) => cli::vpci::run(command),
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut command(),
                "vfio-variant",
                &mut std::io::stdout(),
            );
            Ok(cli::Outcome::Success)
        }
        Command::Man { dir } => write_man_pages(&dir),
        Command::Plugin(command) => cli::plugin::run(command),
        Command::NewBackend(args) => cli::scaffold::run(args),
    };
    cli::exit_code(result, json)
}

/// A command line clap refused: as clap prints it, or with `--json` as a JSON error of kind
/// `usage` (help and version are printed as asked).
fn usage_error(error: clap::Error) -> ExitCode {
    use clap::error::ErrorKind as Clap;
    let json = std::env::args().skip(1).any(|a| a == "--json");
    if !json || matches!(error.kind(), Clap::DisplayHelp | Clap::DisplayVersion) {
        error.exit();
    }
    let message = error.render().to_string();
    let message = message
        .trim()
        .trim_start_matches("error: ")
        .lines()
        .next()
        .unwrap_or_default()
        .to_string();
    cli::exit_code(
        Err(cli::CliError::new(cli::ErrorKind::Usage, message)),
        true,
    )
}

/// Runs `run` with a command's arguments and directories.
fn with<T: Args>(
    command: WithDirs<T>,
    before: &Dirs,
    run: impl FnOnce(T, &Dirs) -> Result<cli::Outcome, cli::CliError>,
) -> Result<cli::Outcome, cli::CliError> {
    let (args, dirs) = command.split(before);
    run(args, &dirs)
}

/// Whether the command asked for JSON output (errors are then JSON on stdout too).
fn wants_json(command: &Command) -> bool {
    match command {
        Command::Serve(_)
        | Command::MigrateAgent(_)
        | Command::Completions { .. }
        | Command::Man { .. }
        | Command::NewBackend(_)
        | Command::Plugin(_) => false,
        Command::Types(a) => a.args.json,
        Command::Create(a) => a.args.json,
        Command::Destroy(a) | Command::Stop(a) => a.args.json,
        Command::List(a) => a.args.json,
        Command::Define(a) => a.args.json,
        Command::Modify(a) => a.args.json,
        Command::Undefine(a) | Command::Start(a) => a.args.json,
        Command::Migrate(a) => a.args.json(),
        Command::Vpci(c) => c.json(),
    }
}
