//! `vfio-variant serve` killed with SIGKILL while functions exist and VMMs are attached, then
//! started again on the same directories: the stale sockets are removed, the `--auto`
//! definitions (one function of every built-in backend) come back, `list` tells the truth, a VMM that reconnects is served, the virtio
//! backend's scratch directory of the killed process is gone, and a second server on the live
//! server's run directory is refused without touching it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use vfio_variant::vfio_user::client::{Client, ClientOptions};
use vfio_variant_backends::builtin::sample::registers::SCRATCH;

const BIN: &str = env!("CARGO_BIN_EXE_vfio-variant");

/// A run directory, a state directory and a private temporary directory (for the virtio
/// backend's scratch files), as one host's server uses them.
struct Host {
    top: PathBuf,
}

impl Host {
    fn new() -> Self {
        let top = std::env::temp_dir().join(format!("vfio-variant-restart-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&top);
        std::fs::create_dir_all(top.join("tmp")).unwrap();
        Self { top }
    }

    fn run_dir(&self) -> PathBuf {
        self.top.join("run")
    }

    fn tmp(&self) -> PathBuf {
        self.top.join("tmp")
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(BIN);
        command
            .arg("--run-dir")
            .arg(self.run_dir())
            .arg("--state-dir")
            .arg(self.top.join("state"))
            .args(args)
            .env("TMPDIR", self.tmp())
            .env_remove("VFIO_VARIANT_VIRTIO_DIR")
            .env_remove("VFIO_VARIANT_RUN_DIR")
            .env_remove("VFIO_VARIANT_STATE_DIR");
        command
    }

    fn run(&self, args: &[&str]) -> Output {
        let out = self.command(args).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", text(&out));
        out
    }

    /// Starts `serve`, its stderr in `log`, and waits until it answers `list`.
    fn serve(&self, log: &str) -> Child {
        let log = std::fs::File::create(self.top.join(log)).unwrap();
        let child = self
            .command(&["serve"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.command(&["list"]).output().unwrap().status.success() {
            assert!(Instant::now() < deadline, "the server did not come up");
            std::thread::sleep(Duration::from_millis(20));
        }
        child
    }

    fn log(&self, log: &str) -> String {
        std::fs::read_to_string(self.top.join(log)).unwrap()
    }

    /// `list --json`: (name, defined, attached) of each running function.
    fn list(&self) -> Vec<(String, bool, bool)> {
        let out = self.run(&["list", "--json"]);
        let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        list.as_array()
            .unwrap()
            .iter()
            .map(|f| {
                (
                    f["name"].as_str().unwrap().to_string(),
                    f["defined"].as_bool().unwrap(),
                    f["attached"].as_bool().unwrap(),
                )
            })
            .collect()
    }

    fn socket(&self, name: &str) -> PathBuf {
        self.run_dir().join(format!("{name}.sock"))
    }

    /// Names of the files in `dir` that start with `prefix`, sorted.
    fn names(dir: &Path, prefix: &str) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.starts_with(prefix))
            .collect();
        names.sort();
        names
    }

    fn scratch(&self, pid: u32) -> PathBuf {
        self.tmp().join(format!("vfio-variant-virtio-{pid}"))
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.top);
    }
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A VMM's connection (the server takes one client per function: the last one may still be
/// on its way out).
fn connect(socket: &Path) -> Client {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let options = ClientOptions {
            timeout: Some(Duration::from_secs(10)),
            ..ClientOptions::default()
        };
        match Client::connect_with(socket, options) {
            Ok(client) => return client,
            Err(e) if Instant::now() > deadline => panic!("{}: {e}", socket.display()),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// A VMM's connection, with decoding on as a guest driver leaves it.
fn attach(socket: &Path) -> Client {
    let mut client = connect(socket);
    client.region_write(7, 4, &[0x02, 0x00]).unwrap();
    client
}

fn scratch_register(client: &mut Client) -> u32 {
    let mut data = [0u8; 4];
    client.region_read(0, SCRATCH, &mut data).unwrap();
    u32::from_le_bytes(data)
}

/// The `--auto` definitions: one function of every built-in backend, by name (sorted).
const AUTO: [(&str, &str, &str); 5] = [
    ("auto0", "sample", "default"),
    ("blk-auto", "virtio-blk", "transitional"),
    ("dsa-auto", "idxd", "1dwq"),
    ("mlx-auto", "mlx", "default"),
    ("net-auto", "virtio-net", "modern"),
];

/// The first 64 bytes of a function's config space, read by a VMM of its own.
fn header(socket: &Path) -> Vec<u8> {
    let mut client = connect(socket);
    let mut data = vec![0u8; 64];
    client.region_read(7, 0, &mut data).unwrap();
    data
}

#[test]
fn a_killed_server_restarts_clean_and_a_second_one_is_refused() {
    let host = Host::new();
    for (name, backend, profile) in AUTO {
        host.run(&[
            "define",
            name,
            "--backend",
            backend,
            "--profile",
            profile,
            "--auto",
        ]);
    }
    host.run(&["define", "manual0", "--backend", "sample"]);

    let mut first = host.serve("first.log");
    let headers: Vec<Vec<u8>> = AUTO
        .iter()
        .map(|(name, ..)| header(&host.socket(name)))
        .collect();
    host.run(&["create", "--backend", "sample", "--name", "adhoc"]);
    host.run(&["start", "manual0"]);
    let mut vmm = attach(&host.socket("auto0"));
    vmm.region_write(0, SCRATCH, &0x600d_f00du32.to_le_bytes())
        .unwrap();
    let mut other_vmm = attach(&host.socket("adhoc"));
    assert_eq!(scratch_register(&mut other_vmm), 0);
    assert!(host.list().contains(&("auto0".into(), true, true)));
    let killed_scratch = host.scratch(first.id());
    assert!(
        killed_scratch.join("virtio-blk-vf1.img").exists(),
        "{}",
        killed_scratch.display()
    );

    // SIGKILL: nothing of the server's own clean-up runs.
    first.kill().unwrap();
    first.wait().unwrap();
    let stale = Host::names(&host.run_dir(), "");
    assert_eq!(stale.len(), 9, "{stale:?}");
    for name in ["adhoc.sock", "auto0.sock", "control.sock", "manual0.sock"] {
        assert!(stale.contains(&name.to_string()), "{stale:?}");
    }
    assert!(
        vmm.region_read(0, SCRATCH, &mut [0u8; 4]).is_err(),
        "the VMM lost its server"
    );
    assert!(killed_scratch.exists(), "left behind by SIGKILL");
    // Meanwhile `list` says there is no server, rather than what ran.
    let out = host.command(&["list"]).output().unwrap();
    assert_eq!(out.status.code(), Some(3), "no_server");
    assert!(text(&out).contains("no server at"), "{}", text(&out));

    let mut second = host.serve("second.log");
    let log = host.log("second.log");
    assert!(log.contains("removed 8 socket(s)"), "{log}");
    // The auto definitions came back, one of every backend; nothing else claims to run.
    let running: Vec<(String, bool, bool)> = AUTO
        .iter()
        .map(|(name, ..)| (name.to_string(), true, false))
        .collect();
    assert_eq!(host.list(), running);
    let mut sockets: Vec<String> = AUTO
        .iter()
        .map(|(name, ..)| format!("{name}.sock"))
        .chain(["control.sock".into(), "serve.lock".into()])
        .collect();
    sockets.sort();
    assert_eq!(Host::names(&host.run_dir(), ""), sockets);
    // The killed server's scratch directory (two 64 MiB images) is gone; the new one is there.
    assert!(!killed_scratch.exists(), "{}", killed_scratch.display());
    assert_eq!(
        Host::names(&host.tmp(), "vfio-variant-virtio-"),
        [format!("vfio-variant-virtio-{}", second.id())]
    );

    // The VMM reconnects and is served (by a fresh device: its state died with the server).
    drop(vmm);
    let mut vmm = attach(&host.socket("auto0"));
    assert_eq!(scratch_register(&mut vmm), 0);
    vmm.region_write(0, SCRATCH, &0x0bad_cafeu32.to_le_bytes())
        .unwrap();
    assert!(host.list().contains(&("auto0".into(), true, true)));
    // Every backend's function is back as it was exposed.
    for ((name, ..), before) in AUTO.iter().zip(&headers).skip(1) {
        assert_eq!(&header(&host.socket(name)), before, "{name}");
    }

    // A second server on the live server's run directory is refused and touches nothing.
    let out = host.command(&["serve", "--no-autostart"]).output().unwrap();
    assert_eq!(out.status.code(), Some(7), "conflict: {}", text(&out));
    let said = text(&out);
    assert!(
        said.contains("in use by another running") && said.contains(&second.id().to_string()),
        "{said}"
    );
    assert_eq!(Host::names(&host.run_dir(), ""), sockets);
    assert_eq!(
        scratch_register(&mut vmm),
        0x0bad_cafe,
        "the VMM is still served"
    );
    assert_eq!(host.list().len(), AUTO.len());
    assert_eq!(
        Host::names(&host.tmp(), "vfio-variant-virtio-").len(),
        1,
        "the refused server made no scratch directory"
    );

    // The definitions are whole, and no temporary file was left.
    let out = host.run(&["list", "--defined", "--json"]);
    let defined: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(defined.as_array().unwrap().len(), AUTO.len() + 1);
    let mut files: Vec<String> = AUTO
        .iter()
        .map(|(name, ..)| format!("{name}.json"))
        .chain(["manual0.json".into()])
        .collect();
    files.sort();
    assert_eq!(Host::names(&host.top.join("state"), ""), files);

    // A clean stop removes the sockets and the scratch directory.
    drop(vmm);
    drop(other_vmm);
    let pid = rustix::process::Pid::from_child(&second);
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    assert!(second.wait().unwrap().success());
    assert_eq!(Host::names(&host.run_dir(), ""), ["serve.lock"]);
    assert!(Host::names(&host.tmp(), "vfio-variant-virtio-").is_empty());
}
