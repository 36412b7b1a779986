//! The run directory one server owns: a lock that shows there is a live owner, and the
//! sockets a server that died (SIGKILL, a crash) left behind.
//!
//! `serve` takes an exclusive `flock` on `serve.lock` in the run directory before it touches
//! anything and holds it until it exits; the kernel drops it when the process dies, however it
//! dies. So a second server on the same directory is refused while the first lives (its
//! sockets are never removed), and a server that gets the lock knows every socket there is
//! stale.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::{FlockOperation, flock};

/// Name of the lock file in the run directory (a function's files all end in `.sock`).
pub const LOCK_FILE: &str = "serve.lock";

/// Why the run directory could not be claimed.
#[derive(Debug, thiserror::Error)]
pub enum RunDirError {
    /// A file operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
    /// Another live server holds the lock.
    #[error(
        "{dir} is in use by another running `vfio-variant serve`{}; stop it, or give this one \
         another --run-dir",
        pid.map(|p| format!(" (pid {p})")).unwrap_or_default()
    )]
    Busy {
        /// The run directory.
        dir: PathBuf,
        /// The owner's pid, as it wrote it in the lock file.
        pid: Option<u32>,
    },
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> RunDirError + '_ {
    move |source| RunDirError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A run directory this process owns, until it is dropped (or the process dies).
pub struct RunDir {
    path: PathBuf,
    _lock: File,
}

impl RunDir {
    /// Creates `path` if needed (mode 0700 unless `shared`, where others' VMMs reach the
    /// sockets through their group), takes its lock and removes the sockets left by a server
    /// that is gone. Returns the directory and the stale sockets removed.
    pub fn claim(path: &Path, shared: bool) -> Result<(Self, Vec<PathBuf>), RunDirError> {
        std::fs::create_dir_all(path).map_err(io_error(path))?;
        if !shared {
            // Nobody else needs to reach the sockets (best effort: the directory may be
            // someone else's, made for this server).
            let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700));
        }
        let lock_path = path.join(LOCK_FILE);
        let mut lock = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(io_error(&lock_path))?;
        match flock(&lock, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(rustix::io::Errno::WOULDBLOCK) => {
                let mut text = String::new();
                let _ = lock.read_to_string(&mut text);
                return Err(RunDirError::Busy {
                    dir: path.to_path_buf(),
                    pid: text.trim().parse().ok(),
                });
            }
            Err(e) => return Err(io_error(&lock_path)(e.into())),
        }
        let pid = std::process::id().to_string();
        lock.set_len(0)
            .and_then(|()| lock.rewind())
            .and_then(|()| lock.write_all(format!("{pid}\n").as_bytes()))
            .map_err(io_error(&lock_path))?;
        let stale = remove_stale_sockets(path)?;
        Ok((
            Self {
                path: path.to_path_buf(),
                _lock: lock,
            },
            stale,
        ))
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Removes every socket named `*.sock` in `dir` (the control socket and the functions'); only
/// for a directory whose lock this process holds.
fn remove_stale_sockets(dir: &Path) -> Result<Vec<PathBuf>, RunDirError> {
    let mut removed = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_error(dir))? {
        let entry = entry.map_err(io_error(dir))?;
        let path = entry.path();
        let is_socket = entry.file_type().is_ok_and(|t| t.is_socket());
        if is_socket && path.extension().is_some_and(|e| e == "sock") {
            std::fs::remove_file(&path).map_err(io_error(&path))?;
            removed.push(path);
        }
    }
    removed.sort();
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixListener;

    use super::*;

    #[test]
    fn one_owner_at_a_time_and_stale_sockets_removed() {
        let dir = std::env::temp_dir().join(format!("vfio-variant-rundir-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // What a killed server leaves: bound sockets nobody listens on any more.
        for name in ["control.sock", "a.sock"] {
            drop(UnixListener::bind(dir.join(name)).unwrap());
        }
        std::fs::write(dir.join("notes.sock"), "not a socket").unwrap();
        let (owner, stale) = RunDir::claim(&dir, false).unwrap();
        assert_eq!(stale, [dir.join("a.sock"), dir.join("control.sock")]);
        assert!(dir.join("notes.sock").exists(), "only sockets are removed");
        assert_eq!(owner.path(), dir);

        // While it is owned, a second claim is refused and removes nothing.
        let live = UnixListener::bind(dir.join("b.sock")).unwrap();
        match RunDir::claim(&dir, false) {
            Err(RunDirError::Busy { pid, .. }) => assert_eq!(pid, Some(std::process::id())),
            other => panic!("{:?}", other.map(|(_, s)| s)),
        }
        assert!(dir.join("b.sock").exists());
        drop(live);

        // Once the owner is gone, the next one takes it.
        drop(owner);
        let (_owner, stale) = RunDir::claim(&dir, false).unwrap();
        assert_eq!(stale, [dir.join("b.sock")]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
