//! The lifecycle commands as an operator runs them: the real binary against a real
//! `vfio-variant serve` in its own run and state directories.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_vfio-variant");

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// A run and a state directory, and the server serving them (when started).
struct Host {
    dir: PathBuf,
    server: Option<Child>,
}

impl Host {
    /// Directories only: commands find no server.
    fn idle(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "vfio-variant-lifecycle-{tag}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self { dir, server: None }
    }

    /// A server with the embedded default functions (`sample0`, `mlx0`, ...).
    fn serving(tag: &str) -> Self {
        Self::serving_with(tag, Stdio::null(), &[])
    }

    /// As [`Host::serving`], its log going to `log`, with more environment.
    fn serving_with(tag: &str, log: impl Into<Stdio>, env: &[(&str, &str)]) -> Self {
        let mut host = Self::idle(tag);
        let server = host
            .command(&["serve", "--no-autostart"])
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        host.server = Some(server);
        let control = host.run_dir().join("control.sock");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !control.exists() || !host.run_dir().join("sample0.sock").exists() {
            assert!(Instant::now() < deadline, "no server");
            std::thread::sleep(Duration::from_millis(20));
        }
        host
    }

    fn run_dir(&self) -> PathBuf {
        self.dir.join("run")
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(BIN);
        command
            .arg("--run-dir")
            .arg(self.run_dir())
            .arg("--state-dir")
            .arg(self.dir.join("state"))
            .args(args)
            .current_dir(repo());
        command
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    fn json(&self, args: &[&str]) -> Value {
        let out = self.run(args);
        assert!(out.status.success(), "{args:?}: {out:?}");
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn names(&self) -> Vec<String> {
        self.json(&["list", "--json"])
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["name"].as_str().unwrap().to_string())
            .collect()
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        if let Some(server) = &mut self.server {
            let _ = server.kill();
            let _ = server.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn define_stores_the_profile_create_would_pick() {
    let host = Host::idle("defaults");
    for (name, backend) in [("n1", "virtio-net"), ("b1", "virtio-blk"), ("m1", "mlx")] {
        let out = host.run(&["define", name, "--backend", backend]);
        assert!(out.status.success(), "{out:?}");
    }
    let defined = host.json(&["list", "--defined", "--json"]);
    let profiles: Vec<(&str, &str)> = defined
        .as_array()
        .unwrap()
        .iter()
        .map(|d| (d["name"].as_str().unwrap(), d["profile"].as_str().unwrap()))
        .collect();
    assert_eq!(
        profiles,
        [
            ("b1", "transitional"),
            ("m1", "migratable"),
            ("n1", "transitional")
        ]
    );
    drop(host);

    // And they start, with the profile `create` gives.
    let host = Host::serving("defaults-start");
    assert!(
        host.run(&["define", "n1", "--backend", "virtio-net"])
            .status
            .success()
    );
    let started = host.json(&["start", "n1", "--json"]);
    assert_eq!(started["profile"], "transitional");
    let created = host.json(&["create", "--backend", "mlx", "--json"]);
    assert!(
        host.run(&["define", "m1", "--backend", "mlx"])
            .status
            .success()
    );
    let defined = host.json(&["list", "--defined", "--json"]);
    assert_eq!(defined[0]["profile"], created["profile"]);
}

#[test]
fn define_refuses_what_start_would_refuse() {
    for host in [Host::idle("refuse"), Host::serving("refuse-served")] {
        let cases: [(&[&str], i32, &str); 4] = [
            (
                &["define", "x", "--backend", "nope"],
                5,
                "no backend `nope`",
            ),
            (
                &["define", "x", "--backend", "sample", "--profile", "fast"],
                5,
                "no profile `fast`",
            ),
            (
                &[
                    "define",
                    "x",
                    "--backend",
                    "sample",
                    "--layout",
                    "catalog/mlx-vf.toml",
                ],
                6,
                "catalog/mlx-vf.toml: <physical function>",
            ),
            (&["define", "control", "--backend", "sample"], 6, "reserved"),
        ];
        for (args, code, message) in cases {
            let out = host.run(args);
            assert_eq!(out.status.code(), Some(code), "{args:?}: {out:?}");
            assert!(stderr(&out).contains(message), "{args:?}: {}", stderr(&out));
        }
        assert_eq!(
            host.json(&["list", "--defined", "--json"]),
            Value::Array(vec![])
        );
    }
}

#[test]
fn layout_errors_name_the_file() {
    let host = Host::serving("layout-file");
    let out = host.run(&[
        "create",
        "--backend",
        "sample",
        "--name",
        "s1",
        "--layout",
        "catalog/mlx-vf.toml",
    ]);
    assert_eq!(out.status.code(), Some(6), "{out:?}");
    let err = stderr(&out);
    assert!(
        err.contains("layout: catalog/mlx-vf.toml: <physical function>"),
        "{err}"
    );
    assert!(!err.contains(":0:0") && !err.contains("layout of"), "{err}");
    let out = host.run(&[
        "create",
        "--backend",
        "sample",
        "--layout",
        "catalog/mlx-vf.toml",
        "--json",
    ]);
    let error: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(error["error"]["file"], "catalog/mlx-vf.toml");
    assert_eq!(
        error["error"].get("line"),
        None,
        "no line for a whole-layout check"
    );

    let bad = host.dir.join("bad.toml");
    std::fs::write(&bad, "[vpci]\nformat = 1\nname = \"x\"\n[identity]\nvendor_id = 0x1af4\ndevice_id = 1\nclass_code = 0\n[[bar]]\nindex = 0\nkind = \"io\"\nsize = 512\n").unwrap();
    let out = host.run(&[
        "create",
        "--backend",
        "sample",
        "--name",
        "s2",
        "--layout",
        bad.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(6));
    let error: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(error["error"]["kind"], "invalid");
    let message = error["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("{}:11:8: bar[0].size", bad.display())),
        "{message}"
    );
    assert_eq!(error["error"]["file"], bad.to_str().unwrap());
    assert_eq!(error["error"]["line"], 11);
}

#[test]
fn reserved_names_and_uuid_spellings() {
    let host = Host::serving("names");
    let out = host.run(&["create", "--backend", "sample", "--name", "control"]);
    assert_eq!(out.status.code(), Some(6), "{out:?}");
    assert!(stderr(&out).contains("reserved"), "{}", stderr(&out));
    assert!(
        host.run_dir().join("control.sock").exists(),
        "the control socket stays"
    );

    let uuid = "0e0c0c7a-0d49-4c4f-8d3c-1a2b3c4d5e6f";
    let created = host.json(&[
        "create",
        "--backend",
        "sample",
        "--name",
        &uuid.to_uppercase(),
        "--json",
    ]);
    assert_eq!(created["name"], uuid);
    let out = host.run(&["create", "--backend", "sample", "--name", uuid]);
    assert_eq!(out.status.code(), Some(7), "{out:?}");
    assert!(stderr(&out).contains("already exists"));
    assert!(
        host.run(&["destroy", &uuid.to_uppercase()])
            .status
            .success()
    );
    assert!(!host.names().contains(&uuid.to_string()));
}

#[test]
fn json_errors_and_exit_codes() {
    let host = Host::serving("json-errors");
    let out = host.run(&["destroy", "nope", "--json"]);
    assert_eq!(out.status.code(), Some(5), "{out:?}");
    assert!(out.stderr.is_empty(), "{}", stderr(&out));
    let error: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(error["error"]["kind"], "not_found");
    assert!(error["error"]["message"].as_str().unwrap().contains("nope"));

    let out = host.run(&["destroy", "--colour", "x", "--json"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let error: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(error["error"]["kind"], "usage");
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("--colour"),
        "{error}"
    );

    let idle = Host::idle("json-no-server");
    let out = idle.run(&["list", "--json"]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let error: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(error["error"]["kind"], "no_server");
}

#[test]
fn types_and_list_tell_no_server_from_no_permission() {
    let idle = Host::idle("types-idle");
    let out = idle.run(&["types"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("\n  *migratable "),
        "types marks the default: {text}"
    );
    assert!(text.contains("\n   default "), "{text}");
    assert!(stderr(&out).contains("no server at"), "{}", stderr(&out));

    let host = Host::serving("types-permission");
    let as_other = |args: &[&str]| {
        let mut command = host.command(args);
        if rustix::process::geteuid().is_root() {
            std::os::unix::process::CommandExt::uid(&mut command, 65534);
        } else {
            let socket = host.run_dir().join("control.sock");
            std::fs::set_permissions(socket, std::os::unix::fs::PermissionsExt::from_mode(0o000))
                .unwrap();
        }
        command.output().unwrap()
    };
    for args in [&["types"][..], &["list"][..]] {
        let out = as_other(args);
        assert_eq!(out.status.code(), Some(4), "{args:?}: {out:?}");
        let err = stderr(&out);
        assert!(
            err.contains("permission denied on") || err.contains("not allowed"),
            "{err}"
        );
        assert!(!err.contains("no server"), "{err}");
    }
}

#[test]
fn stop_leaves_created_functions_alone() {
    let host = Host::serving("stop");
    let out = host.run(&["stop", "sample0"]);
    assert_eq!(out.status.code(), Some(5), "{out:?}");
    assert!(stderr(&out).contains("use `destroy`"), "{}", stderr(&out));
    assert!(host.names().contains(&"sample0".to_string()));

    assert!(
        host.run(&["define", "d1", "--backend", "sample"])
            .status
            .success()
    );
    assert!(host.run(&["start", "d1"]).status.success());
    assert!(host.run(&["stop", "d1"]).status.success());
    assert!(!host.names().contains(&"d1".to_string()));
    assert!(host.run(&["stop", "d1"]).status.code() == Some(5));
}

#[test]
fn a_config_with_a_bad_function_serves_none() {
    let host = Host::idle("config");
    let config = host.dir.join("serve.toml");
    std::fs::write(
        &config,
        "[[function]]\nname = \"good\"\nbackend = \"sample\"\n\n[[function]]\nname = \"bad\"\nbackend = \"sample\"\nprofile = \"nope\"\n",
    )
    .unwrap();
    let out = host
        .command(&[
            "serve",
            "--no-autostart",
            "--config",
            config.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(6), "{out:?}");
    let err = stderr(&out);
    assert!(
        err.contains("function[1] (bad)") && err.contains("no profile `nope`"),
        "{err}"
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("serving"));
    // No socket left behind (the run directory's lock file stays, as after any stop).
    let left: Vec<_> = std::fs::read_dir(host.run_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".sock"))
        .collect();
    assert!(left.is_empty(), "nothing left behind: {left:?}");
}

#[test]
fn a_passthrough_pf_that_is_not_a_pci_address_is_refused_before_anything_starts() {
    let host = Host::idle("pf");
    let config = host.dir.join("serve.toml");
    std::fs::write(&config, "[server]\npassthrough_pfs = [\"../devices\"]\n").unwrap();
    for args in [
        vec!["serve", "--passthrough-pf", "01:00.0"],
        vec!["serve", "--config", config.to_str().unwrap()],
    ] {
        let out = host.run(&args);
        assert_eq!(out.status.code(), Some(6), "{out:?}");
        assert!(stderr(&out).contains("is not a PCI address"), "{out:?}");
        assert!(
            !host.run_dir().exists(),
            "the run directory was not claimed"
        );
    }
}

#[test]
fn migration_messages_speak_to_operators() {
    let host = Host::serving("migrate");
    assert!(
        host.run(&[
            "create",
            "--backend",
            "mlx",
            "--profile",
            "default",
            "--name",
            "plain"
        ])
        .status
        .success()
    );
    let out = host.run(&["migrate", "plain", "--to", "mlx0"]);
    assert_eq!(out.status.code(), Some(8), "{out:?}");
    let err = stderr(&out);
    assert!(
        err.contains("function `plain` is not migratable (profile `default` of `mlx`)"),
        "{err}"
    );
    assert!(!err.contains("errno"), "{err}");

    assert!(
        host.run(&["create", "--backend", "sample", "--name", "target"])
            .status
            .success()
    );
    let out = host.run(&["migrate", "sample0", "--to", "target"]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("source offers stop-copy"), "{text}");
    assert!(!text.contains("MigrationFlags"), "{text}");

    let list = host.json(&["list", "--json"]);
    let state = |name: &str| {
        list.as_array()
            .unwrap()
            .iter()
            .find(|i| i["name"] == name)
            .unwrap()["state"]
            .clone()
    };
    assert_eq!(state("sample0"), "stop", "the source is left stopped");
    assert_eq!(state("target"), "running");
    let out = host.run(&["list"]);
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().find(|l| l.starts_with("sample0 ")).unwrap();
    assert!(line.ends_with("[stop]"), "{line}");
}

#[test]
fn the_event_log_names_functions_and_peers_and_is_quiet_when_idle() {
    let path = std::env::temp_dir().join(format!("vfio-variant-events-{}.log", std::process::id()));
    let log = std::fs::File::create(&path).unwrap();
    let host = Host::serving_with("events", log, &[("VFIO_VARIANT_LOG_FORMAT", "json")]);
    let create = host
        .command(&["create", "--backend", "sample", "--name", "t1"])
        .spawn()
        .unwrap();
    let create_pid = create.id();
    assert!(create.wait_with_output().unwrap().status.success());
    assert!(
        !host
            .run(&["create", "--backend", "sample", "--name", "t1"])
            .status
            .success()
    );
    let migrate = host
        .command(&["migrate", "sample0", "--to", "t1"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let migrate_pid = migrate.id();
    assert!(migrate.wait_with_output().unwrap().status.success());
    assert!(host.run(&["destroy", "t1"]).status.success());

    let events = || -> Vec<Value> {
        std::fs::read_to_string(&path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
            .collect()
    };
    // The detach lines come from the connection threads: wait for them.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut log = events();
    while log
        .iter()
        .filter(|e| e["fields"]["message"] == "detached")
        .count()
        < 2
    {
        assert!(Instant::now() < deadline, "{log:#?}");
        std::thread::sleep(Duration::from_millis(20));
        log = events();
    }
    let find = |message: &str, function: &str| -> Value {
        log.iter()
            .find(|e| {
                e["fields"]["message"]
                    .as_str()
                    .unwrap_or("")
                    .starts_with(message)
                    && (e["fields"]["function"] == function || e["span"]["function"] == function)
            })
            .unwrap_or_else(|| panic!("no `{message}` for {function} in {log:#?}"))
            .clone()
    };
    let created = find("created", "t1");
    assert_eq!(created["span"]["pid"], create_pid);
    assert_eq!(created["fields"]["backend"], "sample");
    let refused = log
        .iter()
        .find(|e| {
            e["fields"]["message"]
                .as_str()
                .unwrap_or("")
                .starts_with("refused")
        })
        .unwrap();
    assert_eq!(refused["fields"]["op"], "create");
    for function in ["sample0", "t1"] {
        let attached = find("attached", function);
        assert_eq!(attached["span"]["pid"], migrate_pid);
        assert_eq!(attached["span"]["uid"], rustix::process::geteuid().as_raw());
        find("detached", function);
    }
    let stop_copy = find("migration state", "sample0");
    assert_eq!(stop_copy["fields"]["to"], "stop-copy");
    find("destroyed", "t1");

    let before = std::fs::metadata(&path).unwrap().len();
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        std::fs::metadata(&path).unwrap().len(),
        before,
        "quiet when idle"
    );
    let _ = std::fs::remove_file(path);
}

#[test]
fn list_filters_defined_state_and_json_definitions() {
    let host = Host::serving("list");
    // list NAME and filters.
    let only = host.json(&["list", "mlx0", "--json"]);
    assert_eq!(only.as_array().unwrap().len(), 1);
    assert_eq!(only[0]["name"], "mlx0");
    let out = host.run(&["list", "nope"]);
    assert_eq!(out.status.code(), Some(5), "{out:?}");
    let virtio = host.json(&["list", "--backend", "virtio-net", "--json"]);
    assert_eq!(virtio.as_array().unwrap().len(), 1);
    assert_eq!(virtio[0]["backend"], "virtio-net");
    let none = host.json(&["list", "--backend", "mlx", "--profile", "default", "--json"]);
    assert_eq!(none, Value::Array(vec![]));

    // list --defined says which definitions run.
    let layout = host.dir.join("sample.toml");
    std::fs::write(&layout, vfio_variant_backends::builtin::sample::LAYOUT).unwrap();
    let out = host.run(&[
        "define",
        "d1",
        "--backend",
        "sample",
        "--layout",
        layout.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        host.run(&["define", "d2", "--backend", "sample", "--auto"])
            .status
            .success()
    );
    assert!(host.run(&["start", "d1"]).status.success());
    let text = String::from_utf8(host.run(&["list", "--defined"]).stdout).unwrap();
    assert!(
        text.contains("d1  sample/default  start manual  running"),
        "{text}"
    );
    assert!(
        text.contains("d2  sample/default  start auto  stopped"),
        "{text}"
    );
    let defined = host.json(&["list", "--defined", "--json"]);
    assert_eq!(defined[0]["running"], true);
    assert_eq!(defined[1]["running"], false);

    // --dumpjson gives what define --jsonfile takes.
    let out = host.run(&["list", "--dumpjson", "d1"]);
    assert!(out.status.success(), "{out:?}");
    let dump = host.dir.join("d1.json");
    std::fs::write(&dump, &out.stdout).unwrap();
    let out = host.run(&["define", "d3", "--jsonfile", dump.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let d3 = host.json(&["list", "--defined", "d3", "--json"]);
    assert_eq!(d3[0]["backend"], "sample");
    assert_eq!(
        d3[0]["layout"],
        vfio_variant_backends::builtin::sample::LAYOUT
    );
    assert_eq!(d3[0]["start"], "manual");

    // A JSON definition is checked as any other.
    std::fs::write(&dump, r#"{"backend": "sample", "profile": "fast"}"#).unwrap();
    let out = host.run(&["define", "d4", "--jsonfile", dump.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(5), "{out:?}");
    std::fs::write(&dump, "{\n  \"backend\": \"sample\",\n  \"colour\": 1\n}").unwrap();
    let out = host.run(&[
        "define",
        "d4",
        "--jsonfile",
        dump.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(6), "{out:?}");
    let error: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(error["error"]["file"], dump.to_str().unwrap());
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("colour")
    );
}

#[test]
fn modify_definitions_and_live_functions() {
    let host = Host::serving("modify");
    assert!(
        host.run(&["define", "n1", "--backend", "virtio-net"])
            .status
            .success()
    );
    let out = host.run(&["modify", "n1", "--profile", "modern", "--auto"]);
    assert!(out.status.success(), "{out:?}");
    let defined = host.json(&["list", "--defined", "n1", "--json"]);
    assert_eq!(defined[0]["profile"], "modern");
    assert_eq!(defined[0]["start"], "auto");
    let out = host.run(&["modify", "n1", "--profile", "nope"]);
    assert_eq!(out.status.code(), Some(5), "{out:?}");
    assert_eq!(
        host.json(&["list", "--defined", "n1", "--json"])[0]["profile"],
        "modern"
    );
    assert_eq!(
        host.run(&["modify", "n1"]).status.code(),
        Some(6),
        "nothing to change"
    );
    assert_eq!(
        host.run(&["modify", "nope", "--auto"]).status.code(),
        Some(5)
    );

    // Live: made again with the change, same socket.
    let before = host.json(&["list", "sample0", "--json"])[0].clone();
    let out = host.run(&["modify", "virtio-net0", "--live", "--profile", "modern"]);
    assert!(out.status.success(), "{out:?}");
    let after = host.json(&["list", "virtio-net0", "--json"]);
    assert_eq!(after[0]["profile"], "modern");
    let out = host.run(&["modify", "virtio-net0", "--live", "--profile", "nope"]);
    assert_eq!(out.status.code(), Some(5), "{out:?}");
    assert_eq!(
        host.json(&["list", "virtio-net0", "--json"])[0]["profile"],
        "modern"
    );

    // Refused while a VMM is attached; the function is untouched.
    let client =
        vfio_variant::vfio_user::client::Client::connect(host.run_dir().join("sample0.sock"))
            .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while host.json(&["list", "sample0", "--json"])[0]["attached"] != true {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(20));
    }
    let layout = host.dir.join("sample.toml");
    std::fs::write(&layout, vfio_variant_backends::builtin::sample::LAYOUT).unwrap();
    let out = host.run(&[
        "modify",
        "sample0",
        "--live",
        "--layout",
        layout.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(7), "{out:?}");
    assert!(stderr(&out).contains("in use by a VMM"));
    drop(client);
    let now = host.json(&["list", "sample0", "--json"])[0].clone();
    assert_eq!(now["fingerprint"], before["fingerprint"]);
}

#[test]
fn define_with_no_free_instance_checks_what_it_can() {
    let host = Host::serving("define-busy");
    // virtio-net has two VFs: virtio-net0 holds one, this the other.
    assert!(
        host.run(&["create", "--backend", "virtio-net", "--name", "n2"])
            .status
            .success()
    );
    let out = host.run(&["define", "n3", "--backend", "virtio-net"]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        stderr(&out).contains("no instance of virtio-net/transitional is free now"),
        "{}",
        stderr(&out)
    );
    // A bad layout is still refused.
    let out = host.run(&[
        "define",
        "n4",
        "--backend",
        "virtio-net",
        "--layout",
        "catalog/mlx-vf.toml",
        "--profile",
        "nope",
    ]);
    assert_eq!(out.status.code(), Some(5), "{out:?}");
    let out = host.run(&["start", "n3"]);
    assert_eq!(
        out.status.code(),
        Some(8),
        "no instance to start it on: {out:?}"
    );
    assert!(host.run(&["destroy", "n2"]).status.success());
    assert!(host.run(&["start", "n3"]).status.success());
}

/// The lines `serve` (spawned with its stdout piped) prints up to its last announcement
/// line. It writes them once, before it waits on its control socket: they are read on a
/// thread, so a server that never writes them fails the test (killed) instead of hanging it.
fn announcement(server: &mut Child) -> Vec<String> {
    use std::io::{BufRead, BufReader};
    let stdout = server.stdout.take().expect("serve's stdout piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut lines = Vec::new();
    while !lines.iter().any(|l: &String| l.starts_with("Guest RAM")) {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => lines.push(line),
            Err(e) => {
                let _ = server.kill();
                panic!("no announcement ({e}): {lines:#?}");
            }
        }
    }
    lines
}

/// The embedded default serves the functions it could create and names, on stderr and in
/// its summary, those it could not: here a run directory so long that the sockets of the
/// longer function names do not fit in a socket address, while the shorter ones do.
#[test]
fn serve_names_the_default_functions_it_could_not_create() {
    use std::io::Read;
    // A socket path holds at most 107 bytes: `control.sock` and `sample0.sock` (12) fit,
    // `virtio-blk0.sock` and `virtio-net0.sock` (16) do not.
    let base = Host::idle("long").run_dir().as_os_str().len();
    let padding = 93usize
        .checked_sub(base)
        .expect("the temporary directory is too long for this test");
    let host = Host::idle(&format!("long{}", "x".repeat(padding)));
    assert_eq!(host.run_dir().as_os_str().len(), 93);
    let mut server = host
        .command(&["serve", "--no-autostart"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = server.stderr.take().unwrap();
    let errors = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let lines = announcement(&mut server);
    let _ = server.kill();
    let _ = server.wait();
    let errors = errors.join().unwrap();
    let summary = lines
        .iter()
        .find(|l| l.starts_with("vfio-variant: serving"))
        .expect("a summary line");
    assert!(
        summary.contains("; 2 function(s) could not be created"),
        "{summary}"
    );
    for name in ["virtio-blk0", "virtio-net0"] {
        assert!(
            errors
                .lines()
                .any(|l| l.starts_with("vfio-variant: not served:") && l.contains(name)),
            "{name}: {errors}"
        );
    }
    assert!(
        lines.iter().any(|l| l.starts_with("sample0 ")),
        "{lines:#?}"
    );
    let _ = std::fs::remove_dir_all(&host.dir);
}

#[test]
fn serve_warns_that_stock_qemu_cannot_carry_a_migratable_functions_state() {
    let mut host = Host::idle("stock-qemu");
    let mut server = host
        .command(&["serve", "--no-autostart"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lines = announcement(&mut server);
    host.server = Some(server);
    let list = host.json(&["list", "--json"]);
    let (migratable, other): (Vec<&Value>, Vec<&Value>) = list
        .as_array()
        .unwrap()
        .iter()
        .partition(|i| i["migratable"] == true);
    let names = |infos: &[&Value]| -> Vec<String> {
        infos
            .iter()
            .map(|i| i["name"].as_str().unwrap().to_string())
            .collect()
    };
    let (migratable, other) = (names(&migratable), names(&other));
    assert!(migratable.contains(&"sample0".to_string()), "{list:#}");
    assert!(
        !other.is_empty(),
        "some default function does not migrate: {list:#}"
    );
    let warnings: Vec<&String> = lines.iter().filter(|l| l.starts_with("warning:")).collect();
    assert_eq!(warnings.len(), 1, "{lines:#?}");
    let warning = warnings[0];
    assert!(warning.contains("stock QEMU"), "{warning}");
    let named = warning
        .trim_start_matches("warning: ")
        .split(" can migrate")
        .next()
        .unwrap();
    assert_eq!(named, migratable.join(", "), "{warning}");
}
