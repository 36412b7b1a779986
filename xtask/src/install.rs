//! `cargo xtask install-extras [PREFIX]`: the shell completions and man pages of
//! `vfio-variant`, generated from its command-line definition (`vfio-variant completions`,
//! `vfio-variant man`), installed under PREFIX (default `/usr/local`) where the shells and
//! `man` look for them.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::cmd;

/// Where each shell's completion script goes under the prefix.
const COMPLETIONS: [(&str, &str); 3] = [
    ("bash", "share/bash-completion/completions/vfio-variant"),
    ("zsh", "share/zsh/site-functions/_vfio-variant"),
    ("fish", "share/fish/vendor_completions.d/vfio-variant.fish"),
];

/// Installs under `args[0]` (default `/usr/local`).
pub fn run(args: &[String]) -> Result<(), String> {
    let prefix = PathBuf::from(args.first().map_or("/usr/local", String::as_str));
    cmd::run(
        "build vfio-variant",
        cmd::cargo().args(["build", "--release", "--bin", "vfio-variant"]),
    )?;
    let binary = cmd::target_dir().join("release/vfio-variant");
    install(&binary, &prefix)
}

/// Writes the completions and man pages `binary` generates under `prefix`.
fn install(binary: &Path, prefix: &Path) -> Result<(), String> {
    for (shell, place) in COMPLETIONS {
        let output = Command::new(binary)
            .args(["completions", shell])
            .output()
            .map_err(|e| format!("{}: {e}", binary.display()))?;
        if !output.status.success() {
            return Err(format!(
                "{} completions {shell}: {output:?}",
                binary.display()
            ));
        }
        let path = prefix.join(place);
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        fs::write(&path, output.stdout).map_err(|e| format!("{}: {e}", path.display()))?;
        eprintln!("installed {}", path.display());
    }
    let man = prefix.join("share/man/man1");
    cmd::run("man pages", Command::new(binary).arg("man").arg(&man))?;
    eprintln!("installed {}/vfio-variant*.1", man.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn installs_completions_and_man_pages_from_the_built_binary() {
        let binary = cmd::target_dir().join("debug/vfio-variant");
        if !binary.exists() {
            // Built by `cargo test -p vfio-variant-backends` or `cargo build`.
            cmd::run(
                "build vfio-variant",
                cmd::cargo().args(["build", "--bin", "vfio-variant"]),
            )
            .unwrap();
        }
        let prefix = std::env::temp_dir().join(format!("xtask-install-{}", std::process::id()));
        install(&binary, &prefix).unwrap();
        let bash = fs::read_to_string(prefix.join(COMPLETIONS[0].1)).unwrap();
        assert!(bash.contains("vfio-variant") && bash.contains("migrate-agent"));
        let page = fs::read_to_string(prefix.join("share/man/man1/vfio-variant.1")).unwrap();
        assert!(page.starts_with(".ie") || page.contains(".TH"), "{page}");
        assert!(
            prefix
                .join("share/man/man1/vfio-variant-vpci-compat.1")
                .exists()
        );
        let _ = fs::remove_dir_all(prefix);
    }
}
