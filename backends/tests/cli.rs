//! The `vfio-variant vpci` commands as a user runs them.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vfio-variant"))
        .args(args)
        .current_dir(repo())
        .output()
        .unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).unwrap()
}

#[test]
fn check_prints_lspci_like_and_hex() {
    let out = run(&["vpci", "check", "catalog/virtio-net-transitional.toml"]);
    assert!(out.status.success(), "{out:?}");
    let text = stdout(&out);
    assert!(text.contains("Device 1af4:1000 (rev 00)"), "{text}");
    assert!(
        text.contains("Region 0: I/O ports [size=32] (legacy I/O)"),
        "{text}"
    );
    assert!(
        text.contains("Capabilities: [40] MSI-X: Enable- Count=3"),
        "{text}"
    );

    let out = run(&[
        "vpci",
        "check",
        "--hex",
        "catalog/virtio-net-transitional.toml",
    ]);
    let hex = stdout(&out);
    let lines: Vec<&str> = hex.lines().collect();
    assert_eq!(lines.len(), 256);
    assert_eq!(
        lines[0],
        "00: f4 1a 00 10 00 00 10 00 00 00 00 02 00 00 00 00"
    );
    assert!(lines[16].starts_with("100: "));
    assert!(lines.iter().all(|l| l.split(' ').count() == 17));
}

#[test]
fn check_json_and_physical_binding() {
    let out = run(&["vpci", "check", "--json", "catalog/idxd-1dwq.toml"]);
    let report: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(report["class_code"], 0x088000);
    assert_eq!(report["ext_capabilities"].as_array().unwrap().len(), 3);
    assert!(
        report["fingerprint"]
            .as_str()
            .unwrap()
            .starts_with("sha256:")
    );

    // A derived layout checked against the device it came from reads the hardware's bytes.
    let dir = repo().join("framework/tests/data/pci/igb");
    let out_file =
        std::env::temp_dir().join(format!("vfio-variant-cli-{}.toml", std::process::id()));
    let out = run(&[
        "vpci",
        "derive",
        "--sysfs",
        dir.to_str().unwrap(),
        "--name",
        "igb",
        "-o",
        out_file.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{out:?}");
    let derived = std::fs::read_to_string(&out_file).unwrap();
    assert!(
        derived.contains("# Hidden: Single Root I/O Virtualization"),
        "{derived}"
    );
    let out = run(&[
        "vpci",
        "check",
        "--hex",
        out_file.to_str().unwrap(),
        "--sysfs",
        dir.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{out:?}");
    let first = stdout(&out).lines().next().unwrap().to_string();
    let config = std::fs::read(dir.join("config")).unwrap();
    let expected: Vec<String> = config[..16].iter().map(|b| format!("{b:02x}")).collect();
    // Identity bytes as the device has them; COMMAND/STATUS are the layout's reset values.
    assert_eq!(first[4..15], expected[..4].join(" "));
    // Without the physical function, passthrough bytes cannot be printed.
    let out = run(&["vpci", "check", "--hex", out_file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("pass --sysfs"));
    let _ = std::fs::remove_file(out_file);
}

#[test]
fn compat_exit_codes_and_json() {
    let same = run(&[
        "vpci",
        "compat",
        "catalog/mlx-vf.toml",
        "catalog/mlx-vf.toml",
    ]);
    assert_eq!(same.status.code(), Some(0));
    assert!(stdout(&same).contains("compatible"));
    let other = run(&[
        "vpci",
        "compat",
        "--json",
        "catalog/virtio-net-transitional.toml",
        "catalog/virtio-blk-transitional.toml",
    ]);
    assert_eq!(other.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_str(&stdout(&other)).unwrap();
    assert_eq!(report["compatible"], false);
    let places: Vec<&str> = report["differences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["place"].as_str().unwrap())
        .collect();
    assert!(
        places.iter().any(|p| p.starts_with("header.device_id")),
        "{places:?}"
    );

    // Each difference in an operator's words, and whether it blocks.
    let cut = std::env::temp_dir().join(format!("vfio-variant-msix-{}.toml", std::process::id()));
    let text = std::fs::read_to_string(repo().join("catalog/mlx-vf.toml")).unwrap();
    std::fs::write(&cut, text.replace("table_size = 64", "table_size = 32")).unwrap();
    let out = run(&[
        "vpci",
        "compat",
        "catalog/mlx-vf.toml",
        cut.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    assert!(
        text.contains("  blocks: MSI-X table size 64 vs 32"),
        "{text}"
    );
    let out = run(&[
        "vpci",
        "compat",
        "catalog/virtio-net-transitional.toml",
        "catalog/virtio-blk-transitional.toml",
    ]);
    let text = stdout(&out);
    for line in [
        "BAR 0 size 32 bytes vs 64 bytes",
        "device ID 0x1000 vs 0x1001",
        "class code 0x020000 vs 0x010000",
    ] {
        assert!(
            text.contains(&format!("  blocks: {line}\n")),
            "{line}: {text}"
        );
    }
    assert!(!text.contains(" 00 "), "no raw bytes: {text}");
    let _ = std::fs::remove_file(cut);
}

#[test]
fn bad_files_are_refused_with_location() {
    let path = std::env::temp_dir().join(format!("vfio-variant-bad-{}.toml", std::process::id()));
    std::fs::write(&path, "[vpci]\nformat = 1\nname = \"x\"\n[identity]\nvendor_id = 0x1af4\ndevice_id = 1\nclass_code = 0\n[[bar]]\nindex = 0\nkind = \"io\"\nsize = 512\n").unwrap();
    let out = run(&["vpci", "check", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(6), "invalid");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "{}:11:8: bar[0].size: an I/O BAR is at most 256 bytes",
            path.display()
        )),
        "{err}"
    );
    let _ = std::fs::remove_file(path);
    let out = run(&["vpci", "check", "--json", "/nonexistent/layout.toml"]);
    assert_eq!(out.status.code(), Some(9), "io");
    let error: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(error["error"]["kind"], "io");
    assert_eq!(error["error"]["file"], "/nonexistent/layout.toml");
}

#[test]
fn input_files_are_read_with_a_limit() {
    for args in [
        &["vpci", "check", "/dev/zero"][..],
        &[
            "vpci",
            "derive",
            "--config",
            "/dev/zero",
            "--resource",
            "/dev/zero",
        ][..],
        &["create", "--backend", "sample", "--layout", "/dev/zero"][..],
        &["serve", "--config", "/dev/zero"][..],
    ] {
        let out = run(args);
        assert!(
            matches!(out.status.code(), Some(6 | 9)),
            "{args:?}: {out:?}"
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("/dev/zero: ") && err.contains("longer than") && !err.contains(":1:1"),
            "{args:?}: {err}"
        );
    }
}

#[test]
fn derive_refuses_a_config_space_cut_to_64_bytes() {
    let source = repo().join("framework/tests/data/pci/igb");
    let dir = std::env::temp_dir().join(format!("vfio-variant-cut-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = std::fs::read(source.join("config")).unwrap();
    std::fs::write(dir.join("config"), &config[..64]).unwrap();
    std::fs::copy(source.join("resource"), dir.join("resource")).unwrap();
    let out = run(&["vpci", "derive", "--sysfs", dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(4), "{out:?}");
    assert!(out.stdout.is_empty(), "no layout printed");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("only 64 bytes of config space")
            && err.contains("run as root, or read the device through --vfio"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn version_help_and_completions() {
    let version = stdout(&run(&["--version"]));
    assert!(
        version.starts_with("vfio-variant ")
            && version.contains("plugin ABI 1")
            && version.contains("vPCI layout format 1")
            && version.contains("migration stream format 1"),
        "{version}"
    );
    let help = stdout(&run(&["--help"]));
    assert!(help.contains("Examples:\n  vfio-variant serve"), "{help}");
    assert!(
        help.contains("docs/serve.md") && help.contains("3 no server"),
        "{help}"
    );
    // The directories: before any command, and on the commands that use them only.
    assert!(help.contains("--run-dir <DIR>"), "{help}");
    for (command, uses) in [
        (&["vpci", "check"][..], false),
        (&["vpci", "compat"][..], false),
        (&["completions"][..], false),
        (&["list"][..], true),
        (&["serve"][..], true),
        (&["migrate"][..], true),
    ] {
        let mut args = command.to_vec();
        args.push("--help");
        let help = stdout(&run(&args));
        assert_eq!(
            help.contains("--run-dir") && help.contains("--state-dir"),
            uses,
            "{command:?}: {help}"
        );
    }
    // Given after the command, they win over those before it.
    let empty = std::env::temp_dir().join(format!("vfio-variant-dirs-{}", std::process::id()));
    let out = run(&[
        "--run-dir",
        "/nonexistent/before",
        "list",
        "--run-dir",
        empty.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(empty.to_str().unwrap()), "{err}");
    assert!(stdout(&run(&["list", "--help"])).contains("vfio-variant list --dumpjson"));
    let bash = stdout(&run(&["completions", "bash"]));
    assert!(
        bash.contains("complete -F") && bash.contains("dumpjson"),
        "{bash}"
    );
}

#[test]
fn a_reader_that_goes_away_ends_the_command_quietly() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_vfio-variant"))
        .args([
            "vpci",
            "check",
            "--hex",
            "catalog/virtio-net-transitional.toml",
        ])
        .current_dir(repo())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"));
}

#[test]
fn the_relaid_nvme_type_fits_qemus_nvme_and_differs_from_it() {
    let nvme = [
        "framework/tests/data/pci/nvme/config",
        "framework/tests/data/pci/nvme/resource",
    ];
    let bound = run(&[
        "vpci",
        "check",
        "catalog/qemu-nvme.toml",
        "--config",
        nvme[0],
        "--resource",
        nvme[1],
    ]);
    assert!(bound.status.success(), "{bound:?}");
    let out_file = std::env::temp_dir().join(format!("vv-nvme-{}.toml", std::process::id()));
    let derived = run(&[
        "vpci",
        "derive",
        "--config",
        nvme[0],
        "--resource",
        nvme[1],
        "--name",
        "nvme",
        "-o",
        out_file.to_str().unwrap(),
    ]);
    assert!(derived.status.success(), "{derived:?}");
    let compat = run(&[
        "vpci",
        "compat",
        out_file.to_str().unwrap(),
        "catalog/qemu-nvme.toml",
    ]);
    let _ = std::fs::remove_file(&out_file);
    assert_eq!(compat.status.code(), Some(1));
    let text = stdout(&compat);
    for difference in [
        "capability MSI-X moved from 0x40 to 0x90",
        "capability Express moved from 0x80 to 0x40",
        "capability Power Management at 0x60 only in the first layout",
        "capability Vendor Specific at 0xa0 only in the second layout",
    ] {
        assert!(text.contains(difference), "{text}");
    }
}
