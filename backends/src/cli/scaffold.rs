//! `vfio-variant new-backend NAME`: writes a minimal backend plugin crate (a counter and a
//! control register raising MSI-X vector 0, two profiles, a layout file, the conformance
//! kit's test) that builds and passes the kit as generated. The files are `backends/template/`.

use std::path::{Path, PathBuf};

use clap::Args;

use super::{CliError, Outcome};

/// Arguments of `new-backend`.
#[derive(Args)]
pub struct NewBackendArgs {
    /// The crate's name (the backend's name too): lowercase letters, digits and `-`.
    name: String,
    /// Where to create the crate [default: ./NAME].
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// The vfio-variant framework crate the plugin builds against [default: the one this
    /// command was built from].
    #[arg(long, value_name = "DIR")]
    framework: Option<PathBuf>,
}

/// The template's files: where each goes in the new crate, and its text.
const FILES: [(&str, &str); 3] = [
    ("Cargo.toml", include_str!("../../template/Cargo.toml.in")),
    ("layout.toml", include_str!("../../template/layout.toml.in")),
    ("src/lib.rs", include_str!("../../template/lib.rs.in")),
];

/// The framework crate this command was built from.
fn default_framework() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../framework")
}

fn valid_name(name: &str) -> bool {
    name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// Writes the crate.
pub fn run(args: NewBackendArgs) -> Result<Outcome, CliError> {
    if !valid_name(&args.name) {
        return Err(CliError::failed(format!(
            "`{}` is not a backend name: use lowercase letters, digits and `-`, starting with a letter",
            args.name
        )));
    }
    let dir = args.dir.unwrap_or_else(|| PathBuf::from(&args.name));
    if dir.exists() {
        return Err(CliError::failed(format!(
            "{} already exists",
            dir.display()
        )));
    }
    let framework = args.framework.unwrap_or_else(default_framework);
    let framework = std::fs::canonicalize(&framework)
        .map_err(|e| CliError::failed(format!("framework {}: {e}", framework.display())))?;
    let framework = framework
        .to_str()
        .ok_or_else(|| CliError::failed(format!("{} is not UTF-8", framework.display())))?;
    for (file, text) in FILES {
        let path = dir.join(file);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| CliError::failed(format!("{}: {e}", parent.display())))?;
        }
        let text = text
            .replace("{{name}}", &args.name)
            .replace("{{framework}}", framework);
        std::fs::write(&path, text)
            .map_err(|e| CliError::failed(format!("{}: {e}", path.display())))?;
    }
    println!(
        "created {}: `cargo test` runs the conformance kit, `cargo build` makes the plugin",
        dir.display()
    );
    Ok(Outcome::Success)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_crate_and_backend_names() {
        assert!(valid_name("acme-counter2"));
        for bad in ["", "Acme", "2x", "a_b", "a/b", "a b"] {
            assert!(!valid_name(bad), "{bad}");
        }
    }
}
