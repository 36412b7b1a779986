//! The `vfio-variant` command's subcommands, one module each.

pub mod dirs;
pub mod lifecycle;
pub mod migrate;
pub mod plugin;
pub mod scaffold;
pub mod serve;
pub mod types;
pub mod vpci;

use std::process::ExitCode;

/// How a subcommand ended: success, a negative answer (e.g. incompatible layouts), or an error.
pub enum Outcome {
    /// Done; exit 0.
    Success,
    /// The answer is no (incompatible layouts); exit 1.
    No,
}

/// A failed subcommand: its message goes to stderr and the exit code is 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CliError(pub String);

impl From<vfio_variant::vpci::LayoutError> for CliError {
    fn from(e: vfio_variant::vpci::LayoutError) -> Self {
        Self(e.to_string())
    }
}

impl From<vfio_variant::physical::PhysicalError> for CliError {
    fn from(e: vfio_variant::physical::PhysicalError) -> Self {
        Self(e.to_string())
    }
}

/// The exit code of a subcommand's result.
pub fn exit_code(result: Result<Outcome, CliError>) -> ExitCode {
    match result {
        Ok(Outcome::Success) => ExitCode::SUCCESS,
        Ok(Outcome::No) => ExitCode::from(1),
        Err(e) => {
            eprintln!("vfio-variant: {e}");
            ExitCode::from(2)
        }
    }
}

/// Prints a value as pretty JSON on stdout.
pub fn print_json(value: &impl serde::Serialize) -> Result<(), CliError> {
    let text =
        serde_json::to_string_pretty(value).map_err(|e| CliError(format!("JSON output: {e}")))?;
    println!("{text}");
    Ok(())
}
