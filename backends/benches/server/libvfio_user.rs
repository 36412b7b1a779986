//! libvfio-user's gpio sample (`gpio-pci-idio-16`) as a side-by-side peer: a separate
//! process serving one client on a Unix socket, reached with the same client as our sample
//! function. `cargo xtask bench` builds it from the peer source beside the project and names
//! the program in [`PROGRAM_ENV`]; without it the peer figures are left out, and the bench
//! says why.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vfio_variant::device::CONFIG_REGION;
use vfio_variant::vfio_user::{Client, ClientOptions};

/// The variable `cargo xtask bench` sets to the sample's path.
pub const PROGRAM_ENV: &str = "VFIO_VARIANT_LIBVFIO_USER_GPIO";
/// The sample's only BAR; its register 0 takes output pins (any write is accepted).
pub const BAR: u32 = 2;
/// Vendor and device ID of the sample (0x494f, 0x0dc8), as the first config dword reads.
const IDS: [u8; 4] = [0x4f, 0x49, 0xc8, 0x0d];
/// How long the sample may take to create its socket.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// The sample's program, or why there is none.
pub fn program() -> Result<PathBuf, String> {
    let path = std::env::var_os(PROGRAM_ENV)
        .map(PathBuf::from)
        .ok_or_else(|| format!("{PROGRAM_ENV} is not set (`cargo xtask bench` sets it)"))?;
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!("{} is not a file", path.display()))
    }
}

/// One running sample with its socket directory; killed when dropped.
pub struct Peer {
    child: Child,
    dir: PathBuf,
    socket: PathBuf,
}

impl Peer {
    /// Starts `program` (on the calling thread's CPUs, which it inherits) and waits for its
    /// socket.
    pub fn start(program: &Path, tag: &str) -> Result<Self, String> {
        let dir = std::env::temp_dir().join(format!(
            "vfio-variant-bench-peer-{tag}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let socket = dir.join("gpio.sock");
        let child = Command::new(program)
            .arg(&socket)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", program.display()))?;
        let mut peer = Self { child, dir, socket };
        let start = Instant::now();
        while !peer.socket.exists() {
            if let Ok(Some(status)) = peer.child.try_wait() {
                return Err(format!("{} exited: {status}", program.display()));
            }
            if start.elapsed() > START_TIMEOUT {
                return Err(format!("{} made no socket", program.display()));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(peer)
    }

    /// Its one client, checked with one config read.
    pub fn connect(&self) -> Result<Client, String> {
        let options = ClientOptions {
            timeout: Some(Duration::from_secs(10)),
            ..ClientOptions::default()
        };
        let mut client = Client::connect_with(&self.socket, options)
            .map_err(|e| format!("connecting to libvfio-user's sample: {e}"))?;
        let mut ids = [0u8; 4];
        client
            .region_read(CONFIG_REGION, 0, &mut ids)
            .map_err(|e| format!("config read from libvfio-user's sample: {e}"))?;
        if ids != IDS {
            return Err(format!("libvfio-user's sample reads IDs {ids:02x?}"));
        }
        Ok(client)
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
