//! The `vfio-variant` command's subcommands, one module each.

/// `print!` whose reader may go away (`| head`): the command then ends quietly, as Unix
/// tools do, instead of panicking.
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::cli::write_out(format_args!($($arg)*))
    };
}

/// `println!` as [`out!`].
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::cli::write_out(format_args!("{}\n", format_args!($($arg)*)))
    };
}

pub mod dirs;
pub mod lifecycle;
pub mod migrate;
pub mod plugin;
pub mod scaffold;
pub mod serve;
pub mod types;
pub mod vpci;

use std::io::Write;
use std::process::ExitCode;

use serde::Serialize;

pub use crate::lifecycle::ErrorKind;
use crate::lifecycle::control::ControlError;

/// How a subcommand ended: success, a negative answer (e.g. incompatible layouts), or an error.
pub enum Outcome {
    /// Done; exit 0.
    Success,
    /// The answer is no (incompatible layouts); exit 1.
    No,
}

/// A failed subcommand: its kind chooses the exit code (docs/serve.md), and with `--json` it
/// is printed on stdout as `{"error": {"kind", "message", "file", "line"}}`.
#[derive(Debug, Clone, thiserror::Error, Serialize)]
#[error("{message}")]
pub struct CliError {
    /// The kind of failure.
    pub kind: ErrorKind,
    /// Why, in words.
    pub message: String,
    /// The file at fault, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// The line in `file`, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
}

impl CliError {
    /// An error of `kind`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            file: None,
            line: None,
        }
    }

    /// A failure of no particular kind.
    pub fn failed(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Failed, message)
    }

    /// A file that could not be read or written.
    pub fn file(path: &std::path::Path, error: impl std::fmt::Display) -> Self {
        Self {
            file: Some(path.display().to_string()),
            ..Self::new(ErrorKind::Io, format!("{}: {error}", path.display()))
        }
    }

    /// The same error, of another kind.
    pub fn with_kind(self, kind: ErrorKind) -> Self {
        Self { kind, ..self }
    }
}

impl From<vfio_variant::vpci::LayoutError> for CliError {
    fn from(e: vfio_variant::vpci::LayoutError) -> Self {
        let location = &e.location;
        // `<file>`: the file could not be read at all.
        let kind = if e.field == "<file>" {
            ErrorKind::Io
        } else {
            ErrorKind::Invalid
        };
        Self {
            file: (!location.file.is_empty()).then(|| location.file.clone()),
            line: (location.line > 0).then_some(location.line),
            ..Self::new(kind, e.to_string())
        }
    }
}

impl From<vfio_variant::physical::PhysicalError> for CliError {
    fn from(e: vfio_variant::physical::PhysicalError) -> Self {
        Self::new(ErrorKind::Io, e.to_string())
    }
}

impl From<ControlError> for CliError {
    fn from(e: ControlError) -> Self {
        Self::new(e.kind, e.message)
    }
}

/// Reads a text file of at most `limit` bytes (a layout, a configuration): a longer one
/// (`/dev/zero`, a wrong path) is refused rather than read to its end.
pub fn read_text(path: &std::path::Path, limit: u64) -> Result<String, CliError> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(limit + 1).read_to_end(&mut bytes))
        .map_err(|e| CliError::file(path, e))?;
    if bytes.len() as u64 > limit {
        return Err(CliError::file(path, format!("longer than {limit} bytes"))
            .with_kind(ErrorKind::Invalid));
    }
    String::from_utf8(bytes)
        .map_err(|_| CliError::file(path, "not UTF-8 text").with_kind(ErrorKind::Invalid))
}

/// The exit code of a subcommand's result; an error is printed on stderr, or as JSON on
/// stdout when `json`.
pub fn exit_code(result: Result<Outcome, CliError>, json: bool) -> ExitCode {
    match result {
        Ok(Outcome::Success) => ExitCode::SUCCESS,
        Ok(Outcome::No) => ExitCode::from(1),
        Err(e) => {
            if json {
                let _ = print_json(&serde_json::json!({ "error": e }));
            } else {
                eprintln!("vfio-variant: {e}");
            }
            ExitCode::from(e.kind.exit_code())
        }
    }
}

/// Writes to stdout; when the reader went away, exits 0 at once (nothing is left to say).
pub fn write_out(text: std::fmt::Arguments<'_>) {
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout.write_fmt(text).and_then(|()| stdout.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("vfio-variant: stdout: {e}");
        std::process::exit(i32::from(ErrorKind::Io.exit_code()));
    }
}

/// Prints a value as pretty JSON on stdout (a reader that went away is not an error).
pub fn print_json(value: &impl Serialize) -> Result<(), CliError> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| CliError::failed(format!("JSON output: {e}")))?;
    outln!("{text}");
    Ok(())
}
