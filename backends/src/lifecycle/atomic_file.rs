//! Files that are never seen half-written: the contents go to a temporary file in the same
//! directory, which is synced and then renamed into place (refusing to replace a file), and
//! the directory is synced so the new name survives a power loss. A crash at any point leaves
//! either no file or the whole file (and at worst a hidden temporary file, which readers skip).

use std::fs::File;
use std::io::{self, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::fs::{CWD, RenameFlags, renameat_with};

/// Writes `contents` to `path`, which must not exist (`AlreadyExists` if it does, even when
/// another process creates it at the same time).
pub fn create_new(path: &Path, contents: &[u8]) -> io::Result<()> {
    write_into_place(path, contents, rename_new)
}

/// Writes `contents` to `path`, replacing the file there: a reader sees the old file or the
/// new one, whole.
pub fn replace(path: &Path, contents: &[u8]) -> io::Result<()> {
    write_into_place(path, contents, |from, to| std::fs::rename(from, to))
}

/// Writes `contents` to a synced temporary file beside `path`, `rename`s it to `path` and
/// syncs the directory.
fn write_into_place(
    path: &Path,
    contents: &[u8],
    rename: impl FnOnce(&Path, &Path) -> io::Result<()>,
) -> io::Result<()> {
    static SEQUENCE: AtomicU64 = AtomicU64::new(0);
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?;
    let temporary = dir.join(format!(
        ".{}.{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id(),
        SEQUENCE.fetch_add(1, Ordering::Relaxed)
    ));
    let written = write_synced(&temporary, contents).and_then(|()| rename(&temporary, path));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&temporary);
        return Err(e);
    }
    sync_dir(dir)
}

/// Removes `path` and syncs its directory.
pub fn remove(path: &Path) -> io::Result<()> {
    std::fs::remove_file(path)?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

fn write_synced(path: &Path, contents: &[u8]) -> io::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}

/// Renames `from` to `to` unless `to` exists.
fn rename_new(from: &Path, to: &Path) -> io::Result<()> {
    match renameat_with(CWD, from, CWD, to, RenameFlags::NOREPLACE) {
        Ok(()) => Ok(()),
        // A file system without RENAME_NOREPLACE: a hard link fails just as atomically.
        Err(rustix::io::Errno::INVAL) => {
            std::fs::hard_link(from, to)?;
            std::fs::remove_file(from)
        }
        Err(e) => Err(e.into()),
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_or_nothing_and_never_replaced() {
        let dir = std::env::temp_dir().join(format!("vfio-variant-atomic-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("a.json");
        create_new(&path, b"first").unwrap();
        let error = create_new(&path, b"second").unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&path).unwrap(), b"first");
        replace(&path, b"third").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"third");

        // Many writers of one name at once: exactly one wins, whole.
        let path = dir.join("raced.json");
        let winners: usize = std::thread::scope(|scope| {
            let writers: Vec<_> = (0..8u8)
                .map(|i| {
                    let path = &path;
                    scope.spawn(move || create_new(path, &[i; 4096]).is_ok())
                })
                .collect();
            writers
                .into_iter()
                .map(|w| usize::from(w.join().unwrap()))
                .sum()
        });
        assert_eq!(winners, 1);
        let contents = std::fs::read(&path).unwrap();
        assert_eq!(contents.len(), 4096);
        assert!(contents.iter().all(|b| *b == contents[0]));

        // No temporary file is left behind.
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["a.json", "raced.json"]);
        remove(&path).unwrap();
        assert!(!path.exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
