//! `vfio-variant migrate` and `migrate-agent` between two server processes (two run
//! directories standing for two hosts, the agent reached over TCP): the sample function's
//! registers, NVRAM, MSI-X table, shared memory and config space arrive, and a destination
//! with another layout is refused with the source still running.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use vfio_variant::migration::MigrationState;
use vfio_variant::vfio_user::client::{Client, ClientOptions};
use vfio_variant_backends::builtin::sample::LAYOUT;
use vfio_variant_backends::builtin::sample::registers::*;

const BIN: &str = env!("CARGO_BIN_EXE_vfio-variant");

/// A `vfio-variant serve` with one sample function `dev0`, in its own directories.
struct Host {
    dir: PathBuf,
    server: Child,
}

impl Host {
    fn start(name: &str, layout: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "vfio-variant-migrate-{name}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("run")).unwrap();
        std::fs::write(dir.join("layout.toml"), layout).unwrap();
        std::fs::write(
            dir.join("serve.toml"),
            "[[function]]\nname = \"dev0\"\nbackend = \"sample\"\nlayout = \"layout.toml\"\n",
        )
        .unwrap();
        let server = Command::new(BIN)
            .args(["serve", "--no-autostart", "--config"])
            .arg(dir.join("serve.toml"))
            .args(Self::dir_args(&dir))
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let host = Self { dir, server };
        let socket = host.socket();
        let deadline = Instant::now() + Duration::from_secs(20);
        while !socket.exists() {
            assert!(Instant::now() < deadline, "no socket {}", socket.display());
            std::thread::sleep(Duration::from_millis(20));
        }
        host
    }

    fn dir_args(dir: &Path) -> [String; 4] {
        [
            "--run-dir".into(),
            dir.join("run").display().to_string(),
            "--state-dir".into(),
            dir.join("state").display().to_string(),
        ]
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("run/dev0.sock")
    }

    fn connect(&self) -> Client {
        // The server takes one client at a time: wait for the last one to be gone.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let options = ClientOptions {
                timeout: Some(Duration::from_secs(10)),
                ..ClientOptions::default()
            };
            match Client::connect_with(self.socket(), options) {
                Ok(client) => return client,
                Err(e) if Instant::now() > deadline => panic!("connect: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(BIN);
        command.args(Self::dir_args(&self.dir)).args(args);
        command
    }

    /// Starts an agent for one migration; returns it and its address.
    fn agent(&self) -> (Child, String) {
        let mut agent = self
            .command(&["migrate-agent", "--listen", "127.0.0.1:0", "--once"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(agent.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        let address = line
            .trim()
            .rsplit(' ')
            .next()
            .expect("the agent prints its address")
            .to_string();
        (agent, address)
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn reg_read(c: &mut Client, offset: u64) -> u32 {
    let mut data = [0u8; 4];
    c.region_read(0, offset, &mut data).unwrap();
    u32::from_le_bytes(data)
}

fn reg_write(c: &mut Client, offset: u64, value: u32) {
    c.region_write(0, offset, &value.to_le_bytes()).unwrap();
}

fn config(c: &mut Client) -> Vec<u8> {
    let mut data = vec![0u8; 256];
    c.region_read(7, 0, &mut data).unwrap();
    data
}

fn shm_pattern() -> Vec<u8> {
    (0..4096u32).map(|i| (i * 7 + 3) as u8).collect()
}

/// Gives the source function state a guest would: decoding and bus mastering on, registers,
/// NVRAM, an MSI-X entry, shared memory. Returns its config space.
fn give_state(host: &Host) -> Vec<u8> {
    let mut c = host.connect();
    c.region_write(7, 4, &[0x06, 0x00]).unwrap();
    reg_write(&mut c, SCRATCH, 0x1234_5678);
    reg_write(&mut c, NVRAM, 0x0bad_cafe);
    reg_write(&mut c, DMA_LEN, 512);
    c.region_write(1, 0, &[0xfe, 0xe0, 0x00, 0x00, 0, 0, 0, 0, 0x41, 0, 0, 0])
        .unwrap();
    c.region_write(2, 8192, &shm_pattern()).unwrap();
    config(&mut c)
}

fn output(mut command: Command) -> (Output, String) {
    let out = command.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out, text)
}

#[test]
fn a_function_moves_to_another_host_through_the_agent() {
    let source = Host::start("src", LAYOUT);
    let destination = Host::start("dst", LAYOUT);
    let before = give_state(&source);

    let (mut agent, address) = destination.agent();
    let (out, text) = output(source.command(&["migrate", "dev0", "--agent", &address, "--json"]));
    assert!(out.status.success(), "{text}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        report["stop_copy_bytes"].as_u64().unwrap() > 64 << 10,
        "{report}"
    );
    assert!(report["downtime_us"].as_u64().is_some());
    assert!(agent.wait().unwrap().success());

    let mut c = destination.connect();
    assert_eq!(config(&mut c), before, "config space carried");
    assert_eq!(reg_read(&mut c, SCRATCH), 0x1234_5678);
    assert_eq!(reg_read(&mut c, NVRAM), 0x0bad_cafe);
    assert_eq!(reg_read(&mut c, DMA_LEN), 512);
    let mut msix = [0u8; 12];
    c.region_read(1, 0, &mut msix).unwrap();
    assert_eq!(msix, [0xfe, 0xe0, 0x00, 0x00, 0, 0, 0, 0, 0x41, 0, 0, 0]);
    let mut shm = vec![0u8; 4096];
    c.region_read(2, 8192, &mut shm).unwrap();
    assert_eq!(shm, shm_pattern());
    assert_eq!(c.mig_state().unwrap(), MigrationState::Running);
    drop(c);
    let mut c = source.connect();
    assert_eq!(
        c.mig_state().unwrap(),
        MigrationState::Stop,
        "the source is left stopped"
    );
}

#[test]
fn a_destination_with_another_layout_is_refused_and_the_source_keeps_running() {
    let source = Host::start("src-refused", LAYOUT);
    let other = LAYOUT.replace("device_id = 0x11f8", "device_id = 0x11f9");
    assert_ne!(other, LAYOUT);
    let destination = Host::start("dst-refused", &other);
    let before = give_state(&source);

    // Through the agent, and on this host (a socket path).
    let (mut agent, address) = destination.agent();
    let (out, text) = output(source.command(&["migrate", "dev0", "--agent", &address]));
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.contains("the source keeps running"), "{text}");
    assert!(
        text.contains("vPCI layout"),
        "the destination's reason: {text}"
    );
    assert_eq!(agent.wait().unwrap().code(), Some(1));
    let to = destination.socket().display().to_string();
    let (out, text) = output(source.command(&["migrate", "dev0", "--to", &to]));
    assert_eq!(out.status.code(), Some(2), "{text}");

    let mut c = source.connect();
    assert_eq!(c.mig_state().unwrap(), MigrationState::Running);
    assert_eq!(config(&mut c), before);
    assert_eq!(reg_read(&mut c, SCRATCH), 0x1234_5678);
    drop(c);
    let mut c = destination.connect();
    assert_eq!(c.mig_state().unwrap(), MigrationState::Running);
    c.region_write(7, 4, &[0x02, 0x00]).unwrap();
    assert_eq!(reg_read(&mut c, SCRATCH), 0, "the destination is unchanged");
}

#[test]
fn a_function_with_a_vmm_attached_is_not_taken_over() {
    let source = Host::start("src-attached", LAYOUT);
    let destination = Host::start("dst-attached", LAYOUT);
    let vmm = source.connect();
    let to = destination.socket().display().to_string();
    let (out, text) = output(source.command(&["migrate", "dev0", "--to", &to]));
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.contains("is a VMM attached?"), "{text}");
    drop(vmm);
}
