//! Persistent definitions (as mdevctl keeps them): one JSON file per instance in the state
//! directory, started on demand or automatically when the server starts.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::atomic_file;
use super::names::check_name;

/// When a defined instance is started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Start {
    /// When the server starts.
    Auto,
    /// Only with `start`.
    Manual,
}

/// A stored definition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Definition {
    /// Instance name or UUID.
    pub name: String,
    /// Backend name.
    pub backend: String,
    /// Profile name.
    pub profile: String,
    /// The vPCI layout (TOML text) it is exposed with; the backend's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layout: Option<String>,
    /// Ordered provisioning attributes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attributes: Vec<(String, String)>,
    /// When it starts.
    pub start: Start,
}

/// A definition could not be stored or read.
#[derive(Debug, thiserror::Error)]
pub enum DefinitionError {
    /// A bad instance name.
    #[error("{0}")]
    Name(String),
    /// `define` of a name that is already defined.
    #[error("`{0}` is already defined")]
    Exists(String),
    /// No such definition.
    #[error("`{0}` is not defined")]
    Missing(String),
    /// A file could not be read or written.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
}

/// The definitions in one directory.
pub struct Definitions {
    dir: PathBuf,
}

impl Definitions {
    /// Definitions stored in `dir` (created when the first one is stored).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, name: &str) -> Result<PathBuf, DefinitionError> {
        let name = check_name(name).map_err(DefinitionError::Name)?;
        Ok(self.dir.join(format!("{name}.json")))
    }

    fn file_error(path: &Path, e: impl std::fmt::Display) -> DefinitionError {
        DefinitionError::File {
            path: path.to_path_buf(),
            message: e.to_string(),
        }
    }

    /// Stores a new definition. The file is never seen half-written, and two `define`s of
    /// one name cannot both succeed ([`atomic_file::create_new`]).
    pub fn define(&self, definition: &Definition) -> Result<(), DefinitionError> {
        let path = self.path(&definition.name)?;
        std::fs::create_dir_all(&self.dir).map_err(|e| Self::file_error(&self.dir, e))?;
        let text =
            serde_json::to_string_pretty(definition).map_err(|e| Self::file_error(&path, e))?;
        atomic_file::create_new(&path, (text + "\n").as_bytes()).map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => DefinitionError::Exists(definition.name.clone()),
            _ => Self::file_error(&path, e),
        })
    }

    /// Replaces an existing definition (`modify`): a crash leaves the old one or the new one
    /// ([`atomic_file::replace`]).
    pub fn replace(&self, definition: &Definition) -> Result<(), DefinitionError> {
        let path = self.path(&definition.name)?;
        if !path.exists() {
            return Err(DefinitionError::Missing(definition.name.clone()));
        }
        let text =
            serde_json::to_string_pretty(definition).map_err(|e| Self::file_error(&path, e))?;
        atomic_file::replace(&path, (text + "\n").as_bytes())
            .map_err(|e| Self::file_error(&path, e))
    }

    /// Removes a definition.
    pub fn undefine(&self, name: &str) -> Result<(), DefinitionError> {
        let path = self.path(name)?;
        atomic_file::remove(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => DefinitionError::Missing(name.to_string()),
            _ => Self::file_error(&path, e),
        })
    }

    /// Reads one definition.
    pub fn get(&self, name: &str) -> Result<Definition, DefinitionError> {
        let path = self.path(name)?;
        let text = std::fs::read_to_string(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => DefinitionError::Missing(name.to_string()),
            _ => Self::file_error(&path, e),
        })?;
        let definition: Definition =
            serde_json::from_str(&text).map_err(|e| Self::file_error(&path, e))?;
        if Some(&definition.name) != check_name(name).ok().as_ref() {
            return Err(Self::file_error(
                &path,
                format!("defines `{}`, not `{name}`", definition.name),
            ));
        }
        Ok(definition)
    }

    /// Every definition, by name; a broken file is reported, not skipped silently.
    pub fn list(&self) -> Result<Vec<Result<Definition, DefinitionError>>, DefinitionError> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Self::file_error(&self.dir, e)),
        };
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| !n.starts_with('.'))
            .filter_map(|n| n.strip_suffix(".json").map(str::to_string))
            .collect();
        names.sort();
        Ok(names.iter().map(|n| self.get(n)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn definition(name: &str) -> Definition {
        Definition {
            name: name.into(),
            backend: "sample".into(),
            profile: "default".into(),
            layout: None,
            attributes: vec![("a".into(), "1".into())],
            start: Start::Auto,
        }
    }

    #[test]
    fn define_list_get_undefine() {
        let dir = std::env::temp_dir().join(format!("vfio-variant-defs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let defs = Definitions::new(&dir);
        assert!(defs.list().unwrap().is_empty());
        defs.define(&definition("b")).unwrap();
        defs.define(&definition("a")).unwrap();
        assert!(matches!(
            defs.define(&definition("a")),
            Err(DefinitionError::Exists(_))
        ));
        let names: Vec<String> = defs
            .list()
            .unwrap()
            .into_iter()
            .map(|d| d.unwrap().name)
            .collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(defs.get("a").unwrap(), definition("a"));
        std::fs::write(dir.join("broken.json"), "{").unwrap();
        // What a define killed before its rename leaves: skipped.
        std::fs::write(dir.join(".c.json.123.0.tmp"), "{\"name\":").unwrap();
        assert!(defs.list().unwrap().iter().any(|d| d.is_err()));
        let mut changed = definition("a");
        changed.start = Start::Manual;
        defs.replace(&changed).unwrap();
        assert_eq!(defs.get("a").unwrap(), changed);
        assert!(matches!(
            defs.replace(&definition("c")),
            Err(DefinitionError::Missing(_))
        ));
        defs.undefine("a").unwrap();
        assert!(matches!(
            defs.undefine("a"),
            Err(DefinitionError::Missing(_))
        ));
        assert!(matches!(defs.get("../etc"), Err(DefinitionError::Name(_))));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
