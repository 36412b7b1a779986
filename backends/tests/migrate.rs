//! `vfio-variant migrate` and `migrate-agent` between two server processes (two run
//! directories standing for two hosts, the agent reached over TLS): the sample function's
//! registers, NVRAM, MSI-X table, shared memory and config space arrive, a destination with
//! another layout is refused with the source still running, and peers that are not
//! authenticated change nothing on either side.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitStatus, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vfio_variant::migration::MigrationState;
use vfio_variant::migration_driver::link::{LINK_VERSION, Message};
use vfio_variant::migration_driver::tls::{self, TlsFiles};
use vfio_variant::vfio_user::client::{Client, ClientOptions};
use vfio_variant_backends::builtin::sample::LAYOUT;
use vfio_variant_backends::builtin::sample::registers::*;

#[path = "common/pki.rs"]
mod pki;

const BIN: &str = env!("CARGO_BIN_EXE_vfio-variant");

/// The keys of a test: one CA signs the agent's and the source's certificates.
struct Keys {
    dir: PathBuf,
    ca: pki::Ca,
    agent: TlsFiles,
    source: TlsFiles,
}

impl Keys {
    fn new(name: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("vfio-variant-keys-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let ca = pki::Ca::new(&dir, "migration");
        let agent = ca.issue("agent", &["127.0.0.1"], &ca);
        let source = ca.issue("source", &["source.example"], &ca);
        Self {
            dir,
            ca,
            agent,
            source,
        }
    }

    /// The `migrate` arguments presenting `files`.
    fn source_args(files: &TlsFiles) -> Vec<String> {
        [
            ("--cert", &files.cert),
            ("--key", &files.key),
            ("--ca", &files.ca),
        ]
        .into_iter()
        .flat_map(|(flag, path)| [flag.to_string(), path.display().to_string()])
        .collect()
    }
}

impl Drop for Keys {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A running `migrate-agent --once`.
struct Agent {
    child: Child,
    address: String,
    out: BufReader<ChildStdout>,
}

impl Agent {
    /// Waits for it to exit; returns its status and what it printed after its address.
    fn finish(mut self) -> (ExitStatus, String) {
        let mut text = String::new();
        self.out.read_to_string(&mut text).unwrap();
        (self.child.wait().unwrap(), text)
    }
}

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
            // The event log of the server (info by default) would fill the test output.
            .env("VFIO_VARIANT_LOG", "warn")
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

    /// Waits until the server has seen the last client go (it refuses a new one until then).
    fn wait_detached(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let out = self.command(&["list", "--json"]).output().unwrap();
            let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            if list[0]["attached"] == false {
                return;
            }
            assert!(Instant::now() < deadline, "a client stays attached: {list}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(BIN);
        command.args(Self::dir_args(&self.dir)).args(args);
        command
    }

    /// Starts an agent for one migration, authenticated with `keys.agent`.
    fn agent(&self, keys: &Keys) -> Agent {
        let mut child = self
            .command(&["migrate-agent", "--listen", "127.0.0.1:0", "--once"])
            .arg("--cert")
            .arg(&keys.agent.cert)
            .arg("--key")
            .arg(&keys.agent.key)
            .arg("--client-ca")
            .arg(&keys.agent.ca)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        let address = line
            .trim()
            .rsplit(' ')
            .next()
            .expect("the agent prints its address")
            .to_string();
        assert!(
            address.starts_with("127.0.0.1:"),
            "bound where told: {line}"
        );
        Agent {
            child,
            address,
            out,
        }
    }

    /// `migrate dev0 --agent` to `agent`, presenting `files`, with `extra` arguments.
    fn migrate_to(&self, agent: &Agent, files: &TlsFiles, extra: &[&str]) -> (Output, String) {
        let mut command = self.command(&["migrate", "dev0", "--agent", &agent.address]);
        command.args(Keys::source_args(files)).args(extra);
        output(command)
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
    let keys = Keys::new("moves");
    let source = Host::start("src", LAYOUT);
    let destination = Host::start("dst", LAYOUT);
    let before = give_state(&source);

    let agent = destination.agent(&keys);
    let (out, text) = source.migrate_to(&agent, &keys.source, &["--json"]);
    assert!(out.status.success(), "{text}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        report["stop_copy_bytes"].as_u64().unwrap() > 64 << 10,
        "{report}"
    );
    assert!(report["downtime_us"].as_u64().is_some());
    assert_eq!(
        report["shared_buffer_bytes"],
        serde_json::Value::Null,
        "{report}"
    );
    assert!(agent.finish().0.success());
    assert_carried(&source, &destination, &before);
}

#[test]
fn a_function_moves_on_this_host_through_one_shared_buffer() {
    let source = Host::start("src-local", LAYOUT);
    let destination = Host::start("dst-local", LAYOUT);
    let before = give_state(&source);
    source.wait_detached();
    let to = destination.socket().display().to_string();
    let (out, text) = output(source.command(&["migrate", "dev0", "--to", &to, "--json"]));
    assert!(out.status.success(), "{text}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // Four transfers of the negotiated 1 MiB, less the framing, rounded up to pages.
    assert_eq!(report["shared_buffer_bytes"], 4 << 20, "{report}");
    assert!(
        report["stop_copy_bytes"].as_u64().unwrap() > 64 << 10,
        "{report}"
    );
    assert_carried(&source, &destination, &before);
    // Without --json the line says how the state went.
    source.wait_detached();
    destination.wait_detached();
    let (out, text) = output(destination.command(&[
        "migrate",
        "dev0",
        "--to",
        &source.socket().display().to_string(),
    ]));
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("through a shared buffer of 4096 KiB"),
        "{text}"
    );
}

/// The state `give_state` gave `source` (whose config space was `before`) runs on
/// `destination`, and `source` is left stopped.
fn assert_carried(source: &Host, destination: &Host, before: &[u8]) {
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
    let keys = Keys::new("refused");
    let source = Host::start("src-refused", LAYOUT);
    let other = LAYOUT.replace("device_id = 0x11f8", "device_id = 0x11f9");
    assert_ne!(other, LAYOUT);
    let destination = Host::start("dst-refused", &other);
    let before = give_state(&source);

    // Through the agent, and on this host (a socket path).
    let agent = destination.agent(&keys);
    let (out, text) = source.migrate_to(&agent, &keys.source, &[]);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.contains("the source keeps running"), "{text}");
    assert!(
        text.contains("vPCI layout"),
        "the destination's reason: {text}"
    );
    assert_eq!(agent.finish().0.code(), Some(1));
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

/// Reads a register of `host`'s function over a connection of its own.
fn scratch(host: &Host) -> u32 {
    reg_read(&mut host.connect(), SCRATCH)
}

#[test]
fn peers_that_are_not_authenticated_change_nothing_on_either_side() {
    let keys = Keys::new("unauthenticated");
    let source = Host::start("src-unauth", LAYOUT);
    let destination = Host::start("dst-unauth", LAYOUT);
    let before = give_state(&source);
    // A mark that a device reset (what a refused migration does to its destination) clears.
    let mut c = destination.connect();
    c.region_write(7, 4, &[0x02, 0x00]).unwrap();
    reg_write(&mut c, SCRATCH, 0x5a5a_5a5a);
    drop(c);
    let agent = destination.agent(&keys);

    // A source whose certificate another CA signed.
    let rogue = pki::Ca::new(&keys.dir, "rogue");
    let impostor = rogue.issue("impostor", &["source.example"], &keys.ca);
    let (out, text) = source.migrate_to(&agent, &impostor, &[]);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.contains("the source keeps running"), "{text}");

    // An agent whose certificate does not name the address the source dialled.
    let (out, text) =
        source.migrate_to(&agent, &keys.source, &["--agent-name", "elsewhere.example"]);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.contains("TLS handshake"), "{text}");

    // A source that presents no certificate at all.
    let anonymous = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_root_certificates({
        let mut roots = rustls::RootCertStore::empty();
        use rustls::pki_types::pem::PemObject;
        let ca = rustls::pki_types::CertificateDer::from_pem_file(keys.ca.file()).unwrap();
        roots.add(ca).unwrap();
        roots
    })
    .with_no_client_auth();
    let refused = tls::connect(
        &agent.address,
        None,
        Arc::new(anonymous),
        Some(Duration::from_secs(10)),
    )
    .map_err(|e| e.to_string())
    .and_then(|mut link| {
        Message::Hello {
            version: LINK_VERSION,
            function: "dev0".into(),
        }
        .write_to(&mut link)
        .and_then(|()| Message::read_from(&mut link))
        .map_err(|e| e.to_string())
    });
    assert!(refused.is_err(), "{refused:?}");

    // A peer that speaks the link's messages in plaintext.
    let mut plain = TcpStream::connect(&agent.address).unwrap();
    let mut bytes = Vec::new();
    Message::Hello {
        version: LINK_VERSION,
        function: "dev0".into(),
    }
    .write_to(&mut bytes)
    .unwrap();
    Message::Data(vec![0; 64]).write_to(&mut bytes).unwrap();
    Message::Finish.write_to(&mut bytes).unwrap();
    plain.write_all(&bytes).unwrap();
    let mut answer = Vec::new();
    let _ = plain.read_to_end(&mut answer);
    assert!(
        Message::read_from(&mut answer.as_slice()).is_err(),
        "no message answers a plaintext peer"
    );

    // Nothing changed: the source runs with its state, the destination was never opened.
    let mut c = source.connect();
    assert_eq!(c.mig_state().unwrap(), MigrationState::Running);
    assert_eq!(config(&mut c), before);
    assert_eq!(reg_read(&mut c, SCRATCH), 0x1234_5678);
    drop(c);
    let mut c = destination.connect();
    assert_eq!(c.mig_state().unwrap(), MigrationState::Running);
    assert_eq!(config(&mut c)[4], 0x02, "the destination was not reset");
    assert_eq!(
        reg_read(&mut c, SCRATCH),
        0x5a5a_5a5a,
        "the destination was not touched"
    );
    drop(c);
    source.wait_detached();
    destination.wait_detached();

    // A peer that connects and says nothing holds up no one: the agent went on waiting and
    // takes the authenticated source's migration while that peer's handshake still waits (and
    // exits with --once before it times out).
    let silent = TcpStream::connect(&agent.address).unwrap();
    let (out, text) = source.migrate_to(&agent, &keys.source, &[]);
    assert!(out.status.success(), "{text}");
    let (status, said) = agent.finish();
    assert!(status.success(), "{said}");
    assert_eq!(said.matches(": refused: ").count(), 4, "{said}");
    drop(silent);
    assert_eq!(
        scratch(&destination),
        0x1234_5678,
        "the migrated state arrived"
    );
}

#[test]
fn the_commands_refuse_to_run_without_keys() {
    let keys = Keys::new("nokeys");
    let source = Host::start("src-nokeys", LAYOUT);
    let (out, text) =
        output(source.command(&["migrate-agent", "--listen", "127.0.0.1:0", "--once"]));
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.contains("--cert"), "{text}");
    let (out, text) = output(source.command(&["migrate", "dev0", "--agent", "127.0.0.1:9"]));
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.contains("--cert"), "{text}");
    // A key file that is not one: refused before anything is bound or dialled.
    let mut agent = source.command(&["migrate-agent", "--listen", "127.0.0.1:0"]);
    agent
        .arg("--cert")
        .arg(&keys.agent.cert)
        .arg("--key")
        .arg(&keys.agent.cert)
        .arg("--client-ca")
        .arg(&keys.agent.ca);
    let (out, text) = output(agent);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.contains("agent.pem"), "{text}");
}
