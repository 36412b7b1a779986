//! Booting a guest: QEMU from the chroot under TCG (q35, 512 MiB, no display), the caller's
//! devices and kernel parameters, a hard timeout, and the serial console captured to a file and
//! returned as a [`Console`].
//!
//! A guest reports to the host by printing sections to its console:
//!
//! ```text
//! === BEGIN name ===
//! ...lines...
//! === END name ===
//! ```
//!
//! Failures come as a [`GuestError`], whose `Display` shows the whole console.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use super::chroot::{Kernel, Mounts};

/// Guest RAM in MiB unless [`Guest::memory`] says otherwise (a memory backend given with the
/// caller's arguments must be this big).
const MEMORY_MIB: u32 = 512;

/// What the kernel prints when it gives up; with `panic=-1` and `-no-reboot` QEMU then exits 0.
const PANIC: &str = "Kernel panic - not syncing";

/// Guests booted by this process so far, to give each its own log files.
static BOOTED: AtomicUsize = AtomicUsize::new(0);

/// Every guest this process booted to the end, with how long it ran, in order.
static BOOT_TIMES: Mutex<Vec<(String, Duration)>> = Mutex::new(Vec::new());

/// The guests booted to the end so far, each with how long it ran.
pub fn boot_times() -> Vec<(String, Duration)> {
    BOOT_TIMES
        .lock()
        .map(|times| times.clone())
        .unwrap_or_default()
}

/// How often the host checks whether QEMU has exited.
const POLL: Duration = Duration::from_millis(50);

/// A guest to boot: kernel, initramfs, kernel parameters, QEMU arguments and a timeout.
pub struct Guest {
    /// The chroot QEMU runs in.
    root: PathBuf,
    /// A short name for log files and messages.
    name: String,
    /// The kernel image, inside the chroot.
    kernel: String,
    /// The initramfs, inside the chroot.
    initrd: String,
    /// Kernel parameters after `console=ttyS0 panic=-1 no_timer_check`.
    append: Vec<String>,
    /// QEMU arguments after the fixed ones (devices, backends).
    args: Vec<String>,
    /// How long QEMU may run before it is killed.
    timeout: Duration,
    /// Guest RAM in MiB.
    memory_mib: u32,
}

impl Guest {
    /// A guest named `name` booting `kernel` with `initrd` (a path inside the chroot at `root`).
    ///
    /// The timeout starts at 5 minutes.
    pub fn new(root: &Path, name: &str, kernel: &Kernel, initrd: &str) -> Self {
        Guest {
            root: root.to_path_buf(),
            name: name.to_string(),
            kernel: kernel.image.clone(),
            initrd: initrd.to_string(),
            append: Vec::new(),
            args: Vec::new(),
            timeout: Duration::from_secs(300),
            memory_mib: MEMORY_MIB,
        }
    }

    /// Adds a kernel command-line parameter.
    pub fn append(mut self, parameter: &str) -> Self {
        self.append.push(parameter.to_string());
        self
    }

    /// Adds QEMU arguments (paths in them are paths inside the chroot).
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Sets the guest's RAM in MiB.
    pub fn memory(mut self, mib: u32) -> Self {
        self.memory_mib = mib;
        self
    }

    /// Sets how long QEMU may run before it is killed.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The QEMU command line, without `chroot DIR` before it.
    pub fn qemu_args(&self) -> Vec<String> {
        // no_timer_check: under TCG on a loaded host the kernel's check that the timer
        // interrupt works through the (remapped) IO-APIC can time out and panic the boot.
        let mut cmdline = vec![
            "console=ttyS0".to_string(),
            "panic=-1".to_string(),
            "no_timer_check".to_string(),
        ];
        cmdline.extend(self.append.iter().cloned());
        let mut args: Vec<String> = [
            "qemu-system-x86_64",
            "-accel",
            "tcg",
            "-machine",
            "q35",
            "-m",
            &self.memory_mib.to_string(),
            "-nographic",
            "-nodefaults",
            "-serial",
            "stdio",
            "-no-reboot",
            "-kernel",
            &self.kernel,
            "-initrd",
            &self.initrd,
            "-append",
            &cmdline.join(" "),
        ]
        .iter()
        .map(|arg| arg.to_string())
        .collect();
        args.extend(self.args.iter().cloned());
        args
    }

    /// Boots the guest and waits for QEMU to exit; returns the console.
    ///
    /// Fails when QEMU cannot start, exits non-zero, outlives the timeout (it is killed), or the
    /// kernel panics (which includes `/init` exiting). The console is written to
    /// `$TMPDIR/vfio-variant-<name>-<pid>-<n>.console` as it goes, and QEMU's own messages to a
    /// `.stderr` file beside it.
    pub fn run(&self) -> Result<Console, GuestError> {
        let base = std::env::temp_dir().join(format!(
            "vfio-variant-{}-{}-{}",
            self.name,
            std::process::id(),
            BOOTED.fetch_add(1, Ordering::Relaxed)
        ));
        let log = base.with_extension("console");
        let stderr_log = base.with_extension("stderr");
        let fail = |message: String| GuestError {
            message,
            console: read_lossy(&log),
            log: log.clone(),
            qemu_stderr: read_lossy(&stderr_log),
        };
        let stdout = fs::File::create(&log)
            .map_err(|e| fail(format!("cannot create {}: {e}", log.display())))?;
        let stderr = fs::File::create(&stderr_log)
            .map_err(|e| fail(format!("cannot create {}: {e}", stderr_log.display())))?;
        let _mounts = Mounts::new(&self.root).map_err(fail)?;

        let mut command = Command::new("chroot");
        command
            .arg(&self.root)
            .args(self.qemu_args())
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        eprintln!(
            "==> booting guest `{}` (timeout {} s, console in {})",
            self.name,
            self.timeout.as_secs(),
            log.display()
        );
        let started = Instant::now();
        let mut child = command
            .spawn()
            .map_err(|e| fail(format!("cannot start {command:?}: {e}")))?;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if started.elapsed() < self.timeout => thread::sleep(POLL),
                Ok(None) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(fail(format!(
                        "guest `{}` did not finish within {} s; QEMU was killed: {command:?}",
                        self.name,
                        self.timeout.as_secs()
                    )));
                }
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(fail(format!("waiting for QEMU failed: {e}")));
                }
            }
        };
        let elapsed = started.elapsed();
        if !status.success() {
            return Err(fail(format!(
                "QEMU for guest `{}` failed ({status}): {command:?}",
                self.name,
            )));
        }
        let console = Console {
            text: read_lossy(&log).replace('\r', ""),
            log: log.clone(),
            qemu_stderr: read_lossy(&stderr_log),
        };
        if console.text.contains(PANIC) {
            return Err(console.error(format!(
                "the kernel of guest `{}` panicked (did /init exit or fail?)",
                self.name
            )));
        }
        eprintln!(
            "==> guest `{}` finished in {:.1} s",
            self.name,
            elapsed.as_secs_f64()
        );
        if let Ok(mut times) = BOOT_TIMES.lock() {
            times.push((self.name.clone(), elapsed));
        }
        Ok(console)
    }
}

/// Reads a log file as text (lossily); empty if it cannot be read.
fn read_lossy(path: &Path) -> String {
    fs::read(path)
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .unwrap_or_default()
}

/// What a guest printed on its serial console (carriage returns removed).
pub struct Console {
    /// The console text.
    text: String,
    /// The file it was captured to.
    log: PathBuf,
    /// What QEMU printed on its standard error (warnings, errors).
    qemu_stderr: String,
}

impl Console {
    /// The console captured to the file `log` by a QEMU run elsewhere, with what that QEMU
    /// printed on its standard error.
    pub fn from_log(log: &Path, qemu_stderr: String) -> Console {
        Console {
            text: read_lossy(log).replace('\r', ""),
            log: log.to_path_buf(),
            qemu_stderr,
        }
    }

    /// A console that printed `text` (for tests of what reads consoles).
    #[cfg(test)]
    pub fn from_text(text: &str) -> Console {
        Console {
            text: text.to_string(),
            log: PathBuf::from("/dev/null"),
            qemu_stderr: String::new(),
        }
    }

    /// The lines between `=== BEGIN name ===` and `=== END name ===`; fails unless the section
    /// appears exactly once and is closed.
    pub fn section(&self, name: &str) -> Result<Vec<&str>, GuestError> {
        let mut found = self
            .sections()
            .map_err(|e| self.error(e))?
            .into_iter()
            .filter(|(found, _)| *found == name);
        match (found.next(), found.next()) {
            (Some((_, lines)), None) => Ok(lines),
            (None, _) => Err(self.error(format!("the guest printed no section `{name}`"))),
            (Some(_), Some(_)) => {
                Err(self.error(format!("the guest printed section `{name}` more than once")))
            }
        }
    }

    /// Every section as (name, lines), in console order; fails on a section left open or an END
    /// without its BEGIN.
    pub fn sections(&self) -> Result<Vec<(&str, Vec<&str>)>, String> {
        let mut sections = Vec::new();
        let mut open: Option<(&str, Vec<&str>)> = None;
        for line in self.text.lines() {
            let line = line.trim_end();
            if let Some(name) = marker(line, "BEGIN") {
                if let Some((previous, _)) = open {
                    return Err(format!(
                        "section `{name}` begins inside section `{previous}`"
                    ));
                }
                open = Some((name, Vec::new()));
            } else if let Some(name) = marker(line, "END") {
                match open.take() {
                    Some((begun, lines)) if begun == name => sections.push((begun, lines)),
                    _ => return Err(format!("section `{name}` ends without beginning")),
                }
            } else if let Some((_, lines)) = open.as_mut() {
                lines.push(line);
            }
        }
        match open {
            Some((name, _)) => Err(format!("section `{name}` never ends")),
            None => Ok(sections),
        }
    }

    /// Every line of the console.
    pub fn text_lines(&self) -> impl Iterator<Item = &str> {
        self.text.lines().map(str::trim_end)
    }

    /// What QEMU printed on its standard error (empty when all went well).
    pub fn qemu_stderr(&self) -> &str {
        &self.qemu_stderr
    }

    /// A failure about this guest, with the console attached.
    pub fn error(&self, message: impl Into<String>) -> GuestError {
        GuestError {
            message: message.into(),
            console: self.text.clone(),
            log: self.log.clone(),
            qemu_stderr: self.qemu_stderr.clone(),
        }
    }
}

/// The name in a `=== KIND name ===` line.
fn marker<'a>(line: &'a str, kind: &str) -> Option<&'a str> {
    line.strip_prefix("=== ")?
        .strip_prefix(kind)?
        .strip_prefix(' ')?
        .strip_suffix(" ===")
}

/// A guest that failed: what went wrong, the console (shown whole by `Display`) and what QEMU
/// printed on its standard error (shown when not empty).
#[derive(Debug)]
pub struct GuestError {
    /// What went wrong.
    message: String,
    /// The console text so far.
    console: String,
    /// The file the console was captured to.
    log: PathBuf,
    /// QEMU's standard error.
    qemu_stderr: String,
}

impl fmt::Display for GuestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}", self.message)?;
        let stderr = self.qemu_stderr.trim_end();
        if !stderr.is_empty() {
            writeln!(f, "--- QEMU's standard error ---")?;
            writeln!(f, "{stderr}")?;
        }
        writeln!(f, "--- guest console ({}) ---", self.log.display())?;
        writeln!(f, "{}", self.console.trim_end())?;
        write!(f, "--- end of guest console ---")
    }
}

impl From<GuestError> for String {
    fn from(error: GuestError) -> String {
        error.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::Console;

    fn console(text: &str) -> Console {
        Console::from_text(text)
    }

    #[test]
    fn sections_are_found_between_markers() {
        let c = console(
            "boot\n=== BEGIN a ===\n1\n2\n=== END a ===\nnoise\n=== BEGIN b c ===\n=== END b c ===\n",
        );
        assert_eq!(c.section("a").unwrap(), ["1", "2"]);
        assert!(c.section("b c").unwrap().is_empty());
        assert!(c.section("x").is_err());
        assert_eq!(c.sections().unwrap().len(), 2);
    }

    #[test]
    fn broken_sections_are_errors() {
        assert!(console("=== BEGIN a ===\n1\n").sections().is_err());
        assert!(console("=== END a ===\n").sections().is_err());
        assert!(
            console("=== BEGIN a ===\n=== BEGIN b ===\n")
                .sections()
                .is_err()
        );
        let error = console("=== BEGIN a ===\n").section("a").unwrap_err();
        assert!(error.to_string().contains("=== BEGIN a ==="));
    }
}
