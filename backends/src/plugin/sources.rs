//! Where plugins come from: libraries named one by one (`--plugin`, the config file's
//! `plugins`) and plugin directories (`--plugin-dir`, the config file's `plugin_dirs`,
//! `$VFIO_VARIANT_PLUGIN_DIR`), whose `*.so` files are all loaded, in name order.

use std::path::{Path, PathBuf};

/// The environment variable naming a plugin directory.
pub const PLUGIN_DIR_VARIABLE: &str = "VFIO_VARIANT_PLUGIN_DIR";

/// A plugin directory that could not be read.
#[derive(Debug, thiserror::Error)]
#[error("plugin directory `{}`: {source}", dir.display())]
pub struct SourceError {
    /// The directory.
    pub dir: PathBuf,
    /// Why.
    pub source: std::io::Error,
}

/// The libraries to load: `libraries` as given, then each directory's `*.so` files in name
/// order. A library named twice (the same path) is loaded once.
pub fn plugin_paths(libraries: &[PathBuf], dirs: &[PathBuf]) -> Result<Vec<PathBuf>, SourceError> {
    let mut paths: Vec<PathBuf> = Vec::new();
    let mut add = |path: PathBuf| {
        if !paths.contains(&path) {
            paths.push(path);
        }
    };
    libraries.iter().cloned().for_each(&mut add);
    for dir in dirs {
        let error = |source| SourceError {
            dir: dir.clone(),
            source,
        };
        let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(error)?
            .map(|entry| entry.map(|e| e.path()))
            .collect::<Result<_, _>>()
            .map_err(error)?;
        found.retain(|p| is_library(p));
        found.sort();
        found.into_iter().for_each(&mut add);
    }
    Ok(paths)
}

/// The plugin directory of the environment, if set.
pub fn env_plugin_dir() -> Option<PathBuf> {
    std::env::var_os(PLUGIN_DIR_VARIABLE)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

fn is_library(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "so") && path.is_file()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_gives_its_libraries_in_name_order_after_the_named_ones() {
        let dir = std::env::temp_dir().join(format!("vfio-variant-plugins-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sub.so")).unwrap();
        for name in ["b.so", "a.so", "notes.txt", "c.so.1"] {
            std::fs::write(dir.join(name), b"").unwrap();
        }
        let named = vec![PathBuf::from("/opt/x.so"), dir.join("a.so")];
        let paths = plugin_paths(&named, std::slice::from_ref(&dir)).unwrap();
        assert_eq!(
            paths,
            [
                PathBuf::from("/opt/x.so"),
                dir.join("a.so"),
                dir.join("b.so")
            ]
        );
        let missing = plugin_paths(&[], &[dir.join("missing")]).unwrap_err();
        assert!(missing.to_string().contains("missing"), "{missing}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
