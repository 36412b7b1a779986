//! Where a server keeps its sockets (run directory) and definitions (state directory).

use std::path::PathBuf;

use clap::Args;

/// The directories shared by `serve` and the commands that talk to it: options of the
/// commands that use them, and of `vfio-variant` itself (`vfio-variant --run-dir DIR list`).
#[derive(Args, Clone, Debug)]
pub struct Dirs {
    /// Sockets: one per function and `control.sock` [default: $VFIO_VARIANT_RUN_DIR,
    /// /run/vfio-variant as root, else $XDG_RUNTIME_DIR/vfio-variant or
    /// /tmp/vfio-variant-UID].
    #[arg(long, value_name = "DIR")]
    pub run_dir: Option<PathBuf>,
    /// Persistent definitions [default: $VFIO_VARIANT_STATE_DIR, /var/lib/vfio-variant as
    /// root, else $XDG_STATE_HOME/vfio-variant or ~/.local/state/vfio-variant].
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
}

fn env_dir(name: &str) -> Option<PathBuf> {
    std::env::var_os(name)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

impl Dirs {
    /// The run directory.
    pub fn run_dir(&self) -> PathBuf {
        let uid = rustix::process::geteuid().as_raw();
        self.run_dir
            .clone()
            .or_else(|| env_dir("VFIO_VARIANT_RUN_DIR"))
            .unwrap_or_else(|| {
                if uid == 0 {
                    PathBuf::from("/run/vfio-variant")
                } else if let Some(runtime) = env_dir("XDG_RUNTIME_DIR") {
                    runtime.join("vfio-variant")
                } else {
                    PathBuf::from(format!("/tmp/vfio-variant-{uid}"))
                }
            })
    }

    /// The state directory.
    pub fn state_dir(&self) -> PathBuf {
        let uid = rustix::process::geteuid().as_raw();
        self.state_dir
            .clone()
            .or_else(|| env_dir("VFIO_VARIANT_STATE_DIR"))
            .unwrap_or_else(|| {
                if uid == 0 {
                    PathBuf::from("/var/lib/vfio-variant")
                } else if let Some(state) = env_dir("XDG_STATE_HOME") {
                    state.join("vfio-variant")
                } else {
                    env_dir("HOME")
                        .unwrap_or_else(|| PathBuf::from("/tmp"))
                        .join(".local/state/vfio-variant")
                }
            })
    }
}
