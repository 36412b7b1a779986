//! The plugin ABI end to end: builds the example plugin (`tests/plugin-example`) and the
//! loader's fixtures (`tests/plugin-variants`: other releases, refusals) with cargo, loads them through the C ABI, and drives the example backend
//! through the same traits as a built-in one.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};

use vfio_variant::backend::{
    Backend, BackendError, CreateRequest, DmaAccess, DmaError, Function, FunctionContext,
    FunctionError, Interrupt, InterruptSink, ProfileInfo,
};
use vfio_variant::config::ConfigEvent;
use vfio_variant::migration::{MigrationError, MigrationFlags, MigrationState};
use vfio_variant::plugin::ABI_VERSION;
use vfio_variant::vpci::parse_layout;
use vfio_variant_backends::plugin::{PluginBackend, PluginError, load_plugin, register_plugin};
use vfio_variant_backends::registry::Registry;

const NAME: &str = "example-scratchpad";
const PROFILE: &str = "scratchpad";

/// BAR 0 registers of the example (see its `regs` module).
mod regs {
    pub const ID: u64 = 0x00;
    pub const SCRATCH: u64 = 0x04;
    pub const COUNTER: u64 = 0x08;
    pub const IRQ: u64 = 0x0c;
    pub const PANIC: u64 = 0x10;
    pub const DMA_SRC_LO: u64 = 0x14;
    pub const DMA_SRC_HI: u64 = 0x18;
    pub const DMA_DST_LO: u64 = 0x1c;
    pub const DMA_DST_HI: u64 = 0x20;
    pub const DMA_LEN: u64 = 0x24;
    pub const DMA_GO: u64 = 0x28;
    pub const DMA_STATUS: u64 = 0x2c;
    pub const MSIX_ENABLED: u64 = 0x30;
    pub const ID_VALUE: u32 = u32::from_le_bytes(*b"SCR1");
    pub const PANIC_MAGIC: u32 = 0xdead_beef;
}

/// The built libraries, one per variant of the example crate.
struct Plugins {
    good: PathBuf,
    wrong_abi: PathBuf,
    other_release: PathBuf,
    wrong_magic: PathBuf,
    null_entry: PathBuf,
    no_entry: PathBuf,
    dir: PathBuf,
}

fn workspace() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the backends crate is in the workspace")
}

fn plugins() -> &'static Plugins {
    static PLUGINS: OnceLock<Plugins> = OnceLock::new();
    PLUGINS.get_or_init(|| {
        let target = workspace().join("target/plugin-example");
        let dir = target.join("variants");
        std::fs::create_dir_all(&dir).expect("create the variants directory");
        // One after the other: the variants share the crate's output file name, so each is
        // copied out before the next build overwrites it.
        Plugins {
            good: build(&target, &dir, None),
            wrong_abi: build(&target, &dir, Some("wrong-abi")),
            other_release: build(&target, &dir, Some("other-release")),
            wrong_magic: build(&target, &dir, Some("wrong-magic")),
            null_entry: build(&target, &dir, Some("null-entry")),
            no_entry: build(&target, &dir, Some("no-entry")),
            dir,
        }
    })
}

/// Builds the example (`feature` `None`) or a variant of the loader's fixture crate
/// (`tests/plugin-variants`) and copies the library to `dir`; returns the copy.
fn build(target: &Path, dir: &Path, feature: Option<&str>) -> PathBuf {
    let manifest = workspace().join(match feature {
        None => "tests/plugin-example/Cargo.toml",
        Some(_) => "tests/plugin-variants/Cargo.toml",
    });
    let mut cargo = Command::new(env!("CARGO"));
    cargo
        .arg("build")
        .arg("--manifest-path")
        .arg(&manifest)
        .arg("--target-dir")
        .arg(target)
        .arg("--message-format=json-render-diagnostics");
    if let Some(feature) = feature {
        cargo.args(["--features", feature]);
    }
    let output = cargo.output().expect("run cargo");
    assert!(
        output.status.success(),
        "building the example plugin ({feature:?}) failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let library = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|m| m["reason"] == "compiler-artifact")
        .filter(|m| {
            m["target"]["kind"]
                .as_array()
                .is_some_and(|k| k.iter().any(|k| k == "cdylib"))
        })
        .find_map(|m| m["filenames"][0].as_str().map(PathBuf::from))
        .expect("cargo reports the cdylib it built");
    let name = format!("{}.so", feature.unwrap_or("good"));
    // Copy, then rename over the old copy: a library another test process has loaded keeps
    // its file.
    let temporary = dir.join(format!("{name}.{}.tmp", std::process::id()));
    std::fs::copy(&library, &temporary).expect("copy the plugin");
    let path = dir.join(name);
    std::fs::rename(&temporary, &path).expect("move the plugin in place");
    path
}

/// Guest memory for the test: `len` bytes at `base`; the upper half is read-only.
struct Memory {
    base: u64,
    bytes: Mutex<Vec<u8>>,
}

impl Memory {
    fn new(base: u64, len: usize) -> Self {
        Self {
            base,
            bytes: Mutex::new(vec![0; len]),
        }
    }

    fn range(&self, iova: u64, len: usize) -> Result<std::ops::Range<usize>, DmaError> {
        let start = iova
            .checked_sub(self.base)
            .and_then(|s| usize::try_from(s).ok());
        let size = self.bytes.lock().unwrap().len();
        match start {
            Some(start) if start + len <= size => Ok(start..start + len),
            _ => Err(DmaError::Unmapped { iova, len }),
        }
    }

    fn read_only_from(&self) -> u64 {
        self.base + self.bytes.lock().unwrap().len() as u64 / 2
    }
}

impl DmaAccess for Memory {
    fn read(&self, iova: u64, data: &mut [u8]) -> Result<(), DmaError> {
        let range = self.range(iova, data.len())?;
        data.copy_from_slice(&self.bytes.lock().unwrap()[range]);
        Ok(())
    }

    fn write(&self, iova: u64, data: &[u8]) -> Result<(), DmaError> {
        let range = self.range(iova, data.len())?;
        if iova + data.len() as u64 > self.read_only_from() {
            return Err(DmaError::Permission {
                iova,
                direction: "writable",
            });
        }
        self.bytes.lock().unwrap()[range].copy_from_slice(data);
        Ok(())
    }
}

/// Records raised interrupts.
#[derive(Default)]
struct Interrupts(Mutex<Vec<Interrupt>>);

impl InterruptSink for Interrupts {
    fn raise(&self, interrupt: Interrupt) {
        self.0.lock().unwrap().push(interrupt);
    }
}

fn load() -> Arc<PluginBackend> {
    load_plugin(&plugins().good).expect("the example plugin loads")
}

/// A create request for the profile with the default layout, parsed on the host.
fn request(backend: &dyn Backend, attributes: &[(&str, &str)]) -> CreateRequest {
    let text = backend.default_layout(PROFILE).expect("default layout");
    let layout = parse_layout("example default layout", &text).expect("the default layout parses");
    CreateRequest {
        profile: PROFILE.into(),
        instance: "vf0".into(),
        layout: Arc::new(layout),
        attributes: attributes
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

fn read(function: &dyn Function, offset: u64) -> u32 {
    let mut data = [0; 4];
    function
        .bar_read(0, offset, &mut data)
        .expect("register read");
    u32::from_le_bytes(data)
}

fn write(function: &dyn Function, offset: u64, value: u32) {
    function
        .bar_write(0, offset, &value.to_le_bytes())
        .expect("register write");
}

fn available(backend: &dyn Backend) -> u32 {
    let profiles = backend.profiles();
    assert_eq!(profiles.len(), 1);
    profiles[0].available_instances
}

#[test]
fn the_example_plugin_conforms_through_the_abi() {
    vfio_variant::testing::assert_conformance(&*load());
}

#[test]
fn registers_and_lists_profiles() {
    let mut registry = Registry::new();
    let backend = register_plugin(&mut registry, &plugins().good).expect("the example registers");
    assert_eq!(backend.path(), plugins().good);
    let registered = registry.get(NAME).expect("registered under its name");
    assert!(registered.description().contains("scratchpad"));
    assert_eq!(
        registered.profiles(),
        vec![ProfileInfo {
            name: PROFILE.into(),
            description: "registers, MSI-X, DMA copy and stop-copy migration".into(),
            available_instances: 2,
            migratable: true,
        }]
    );
    // A second load of the same library is a second backend of the same name: refused by the
    // registry, which keeps the first.
    let error = register_plugin(&mut registry, &plugins().good).unwrap_err();
    assert!(matches!(error, PluginError::Registry(_)), "{error}");
    assert_eq!(registry.iter().count(), 1);
}

#[test]
fn function_registers_interrupts_and_dma_cross_the_abi() {
    let backend = load();
    let function = backend
        .create(&request(&*backend, &[("scratch", "0x1234")]))
        .expect("create");
    let memory = Arc::new(Memory::new(0x10_0000, 0x2000));
    let interrupts = Arc::new(Interrupts::default());
    function.attach(FunctionContext {
        dma: memory.clone(),
        interrupts: interrupts.clone(),
    });

    // Registers.
    assert_eq!(read(&*function, regs::ID), regs::ID_VALUE);
    assert_eq!(
        read(&*function, regs::SCRATCH),
        0x1234,
        "the attribute crossed"
    );
    write(&*function, regs::SCRATCH, 0xcafe_f00d);
    assert_eq!(read(&*function, regs::SCRATCH), 0xcafe_f00d);
    assert_eq!(read(&*function, regs::COUNTER), 1);

    // Errors keep their kind.
    let error = function
        .bar_read(0, regs::SCRATCH, &mut [0; 2])
        .unwrap_err();
    assert!(matches!(error, FunctionError::BadAccess(_)), "{error}");
    let error = function.bar_write(1, 0, &[0; 4]).unwrap_err();
    assert!(matches!(error, FunctionError::BadAccess(_)), "{error}");
    let error = function.legacy_io_read(0, &mut [0; 4]).unwrap_err();
    assert!(matches!(error, FunctionError::Unsupported(_)), "{error}");
    assert!(function.physical().is_none());

    // Interrupts: the plugin raises through the host's sink.
    write(&*function, regs::IRQ, 0);
    write(&*function, regs::IRQ, 1);
    assert_eq!(
        *interrupts.0.lock().unwrap(),
        [Interrupt::Msix(0), Interrupt::Msix(1)]
    );
    let error = function
        .bar_write(0, regs::IRQ, &2u32.to_le_bytes())
        .unwrap_err();
    assert!(matches!(error, FunctionError::BadAccess(_)), "{error}");

    // Config events.
    function.config_changed(ConfigEvent::Msix {
        enabled: true,
        function_mask: false,
    });
    assert_eq!(read(&*function, regs::MSIX_ENABLED), 1);

    // DMA: the plugin copies guest memory through the host's DMA access.
    let pattern: Vec<u8> = (0..64).collect();
    memory.bytes.lock().unwrap()[0x100..0x140].copy_from_slice(&pattern);
    let dma = |src: u64, dst: u64, len: u32| {
        write(&*function, regs::DMA_SRC_LO, src as u32);
        write(&*function, regs::DMA_SRC_HI, (src >> 32) as u32);
        write(&*function, regs::DMA_DST_LO, dst as u32);
        write(&*function, regs::DMA_DST_HI, (dst >> 32) as u32);
        write(&*function, regs::DMA_LEN, len);
        write(&*function, regs::DMA_GO, 1);
        read(&*function, regs::DMA_STATUS)
    };
    assert_eq!(dma(0x10_0100, 0x10_0800, 64), 0);
    assert_eq!(memory.bytes.lock().unwrap()[0x800..0x840], pattern[..]);
    // Host DMA errors reach the plugin with their kind: unmapped, then not writable.
    assert_eq!(dma(0x20_0000, 0x10_0800, 64), 1);
    assert_eq!(dma(0x10_0100, 0x10_1800, 64), 2);

    // Reset restores the provisioned state.
    function.reset().expect("reset");
    assert_eq!(read(&*function, regs::SCRATCH), 0x1234);
    assert_eq!(read(&*function, regs::COUNTER), 0);
}

#[test]
fn a_panic_is_an_error_and_the_plugin_keeps_working() {
    let backend = load();
    let function = backend.create(&request(&*backend, &[])).expect("create");
    let error = function
        .bar_write(0, regs::PANIC, &regs::PANIC_MAGIC.to_le_bytes())
        .unwrap_err();
    match &error {
        FunctionError::Device(message) => {
            assert!(message.contains("panicked"), "{message}");
            assert!(
                message.contains("panic register written with 0xdeadbeef"),
                "{message}"
            );
        }
        other => panic!("expected a device error, got {other:?}"),
    }
    write(&*function, regs::SCRATCH, 7);
    assert_eq!(read(&*function, regs::SCRATCH), 7);
    assert_eq!(available(&*backend), 1);
}

#[test]
fn instances_count_down_and_up() {
    let backend = load();
    assert_eq!(available(&*backend), 2);
    let first = backend.create(&request(&*backend, &[])).expect("first");
    assert_eq!(available(&*backend), 1);
    let second = backend.create(&request(&*backend, &[])).expect("second");
    assert_eq!(available(&*backend), 0);
    let error = backend
        .create(&request(&*backend, &[]))
        .err()
        .expect("refused");
    assert!(
        matches!(&error, BackendError::NoInstances(p) if p == PROFILE),
        "{error}"
    );
    drop(first);
    assert_eq!(available(&*backend), 1);
    drop(second);
    assert_eq!(available(&*backend), 2);

    // Refusals keep their kind and take no instance.
    let mut unknown = request(&*backend, &[]);
    unknown.profile = "nope".into();
    let error = backend.create(&unknown).err().expect("refused");
    assert!(
        matches!(&error, BackendError::UnknownProfile(p) if p == "nope"),
        "{error}"
    );
    let error = backend
        .create(&request(&*backend, &[("colour", "blue")]))
        .err()
        .expect("refused");
    assert!(
        matches!(&error, BackendError::Refused(r) if r.contains("colour")),
        "{error}"
    );
    let error = backend.default_layout("nope").unwrap_err();
    assert!(
        matches!(&error, BackendError::UnknownProfile(p) if p == "nope"),
        "{error}"
    );
    assert_eq!(available(&*backend), 2);
}

#[test]
fn migration_crosses_the_abi() {
    let backend = load();
    let source = backend.create(&request(&*backend, &[])).expect("source");
    let target = backend.create(&request(&*backend, &[])).expect("target");
    write(&*source, regs::SCRATCH, 0x5eed);
    write(&*source, regs::COUNTER, 41);

    let hooks = source.migration().expect("migratable");
    assert_eq!(hooks.flags(), MigrationFlags::STOP_COPY);
    assert!(hooks.dirty_tracker().is_none());
    let error = hooks.precopy_info().unwrap_err();
    assert!(
        matches!(&error, MigrationError::Device(m) if m.contains("pre-copy")),
        "{error}"
    );
    hooks
        .transition(MigrationState::Running, MigrationState::Stop)
        .expect("stop");
    hooks
        .transition(MigrationState::Stop, MigrationState::StopCopy)
        .expect("stop-copy");
    assert_eq!(hooks.stop_copy_size().expect("size"), 32);
    let mut state = Vec::new();
    loop {
        let mut chunk = [0; 5];
        let n = hooks.save(&mut chunk).expect("save");
        if n == 0 {
            break;
        }
        state.extend_from_slice(&chunk[..n]);
    }
    assert_eq!(state.len(), 32);
    let error = hooks
        .transition(MigrationState::StopCopy, MigrationState::Running)
        .unwrap_err();
    assert!(matches!(error, MigrationError::Device(_)), "{error}");

    let hooks = target.migration().expect("migratable");
    hooks
        .transition(MigrationState::Stop, MigrationState::Resuming)
        .expect("resuming");
    let error = hooks.load(b"junk").unwrap_err();
    assert!(matches!(error, MigrationError::InvalidData(_)), "{error}");
    hooks
        .transition(MigrationState::Stop, MigrationState::Resuming)
        .expect("resuming again");
    for chunk in state.chunks(5) {
        hooks.load(chunk).expect("load");
    }
    hooks
        .transition(MigrationState::Resuming, MigrationState::Stop)
        .expect("loaded");
    assert_eq!(read(&*target, regs::SCRATCH), 0x5eed);
    assert_eq!(read(&*target, regs::COUNTER), 41);
}

#[test]
fn functions_keep_the_library_loaded() {
    let mut registry = Registry::new();
    let backend = register_plugin(&mut registry, &plugins().good).expect("register");
    let function = backend.create(&request(&*backend, &[])).expect("create");
    drop(backend);
    drop(registry);
    // The backend is gone; its function and the library's code are not.
    write(&*function, regs::SCRATCH, 3);
    assert_eq!(read(&*function, regs::SCRATCH), 3);
}

/// Loads `path` into a fresh registry; the load must fail and register nothing.
fn refuse(path: &Path) -> PluginError {
    let mut registry = Registry::new();
    let error = register_plugin(&mut registry, path).expect_err("the library is refused");
    assert_eq!(registry.iter().count(), 0, "nothing is registered");
    error
}

#[test]
fn refuses_another_abi_version() {
    let error = refuse(&plugins().wrong_abi);
    let message = error.to_string();
    assert!(
        matches!(error, PluginError::AbiVersion { plugin, host, .. } if plugin == ABI_VERSION + 1 && host == ABI_VERSION),
        "{message}"
    );
    assert!(
        message.contains(&format!("version {}", ABI_VERSION + 1)),
        "{message}"
    );
    assert!(
        message.contains(&format!("version {ABI_VERSION}")),
        "{message}"
    );
}

#[test]
fn accepts_another_release_of_the_same_abi_major_with_a_grown_descriptor() {
    let mut registry = Registry::new();
    let backend = register_plugin(&mut registry, &plugins().other_release).expect("accepted");
    assert_eq!(backend.framework_version(), "0.0.9");
    assert_eq!(backend.name(), "plugin-variant");
    assert!(backend.descriptor_size() > vfio_variant::plugin::MIN_DESCRIPTOR_SIZE);
    vfio_variant::testing::assert_conformance(&*backend);
}

#[test]
fn refuses_a_wrong_magic_number() {
    let error = refuse(&plugins().wrong_magic);
    assert!(matches!(error, PluginError::BadMagic { .. }), "{error}");
    assert!(
        error.to_string().contains("not a vfio-variant backend"),
        "{error}"
    );
}

#[test]
fn refuses_a_null_entry() {
    let error = refuse(&plugins().null_entry);
    assert!(
        matches!(
            error,
            PluginError::NullEntry {
                table: "function",
                entry: "reset",
                ..
            }
        ),
        "{error}"
    );
}

#[test]
fn refuses_a_library_without_the_entry_symbol() {
    let error = refuse(&plugins().no_entry);
    assert!(matches!(error, PluginError::NotABackend { .. }), "{error}");
    assert!(
        error.to_string().contains("not a vfio-variant backend"),
        "{error}"
    );
}

#[test]
fn refuses_what_is_not_a_library() {
    let text = plugins().dir.join("not-a-library.so");
    std::fs::write(&text, "this is a text file\n").expect("write the text file");
    let error = refuse(&text);
    assert!(matches!(error, PluginError::Open { .. }), "{error}");

    let error = refuse(&plugins().dir.join("no-such-file.so"));
    assert!(matches!(error, PluginError::Open { .. }), "{error}");
}

const BIN: &str = env!("CARGO_BIN_EXE_vfio-variant");

#[test]
fn plugin_check_loads_lists_and_runs_the_kit() {
    let output = Command::new(BIN)
        .args(["plugin", "check"])
        .arg(&plugins().good)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    assert!(stdout.contains("backend `example-scratchpad`"), "{stdout}");
    assert!(stdout.contains("profile scratchpad"), "{stdout}");
    assert!(stdout.contains("passed, 0 failures"), "{stdout}");

    let output = Command::new(BIN)
        .args(["plugin", "check"])
        .arg(&plugins().wrong_abi)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("plugin ABI version"), "{stderr}");
}

/// A scratch directory for one test, with `plugins/` holding the example.
fn plugin_home(name: &str) -> PathBuf {
    let dir = plugins().dir.join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("plugins")).unwrap();
    std::fs::create_dir_all(dir.join("run")).unwrap();
    std::fs::copy(&plugins().good, dir.join("plugins/scratchpad.so")).unwrap();
    dir
}

#[test]
fn types_loads_every_library_of_a_plugin_directory() {
    let dir = plugin_home("types");
    let output = Command::new(BIN)
        .arg("--run-dir")
        .arg(dir.join("run"))
        .args(["types", "--json", "--plugin-dir"])
        .arg(dir.join("plugins"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    assert!(stdout.contains("\"example-scratchpad\""), "{stdout}");
}

#[test]
fn serve_loads_the_plugins_its_config_file_names() {
    for (name, server) in [
        ("library", "plugins = [\"plugins/scratchpad.so\"]"),
        ("directory", "plugin_dirs = [\"plugins\"]"),
    ] {
        let dir = plugin_home(&format!("serve-{name}"));
        std::fs::write(
            dir.join("serve.toml"),
            format!(
                "[server]\n{server}\n[[function]]\nname = \"scr0\"\nbackend = \"example-scratchpad\"\n"
            ),
        )
        .unwrap();
        let mut child = Command::new(BIN)
            .arg("--run-dir")
            .arg(dir.join("run"))
            .arg("--state-dir")
            .arg(dir.join("state"))
            .args(["serve", "--no-autostart", "--config"])
            .arg(dir.join("serve.toml"))
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let socket = dir.join("run/scr0.sock");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while !socket.exists() && std::time::Instant::now() < deadline {
            if let Some(status) = child.try_wait().unwrap() {
                panic!("{name}: the server exited with {status}");
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let exists = socket.exists();
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(exists, "{name}: no socket {}", socket.display());
    }
}

#[test]
fn new_backend_makes_a_plugin_that_builds_loads_and_conforms() {
    let dir = plugins()
        .dir
        .join(format!("scaffold-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let created = Command::new(BIN)
        .args(["new-backend", "acme-counter", "--dir"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    // The example's lock file: the same dependency versions, already built in this target.
    std::fs::copy(
        workspace().join("tests/plugin-example/Cargo.lock"),
        dir.join("Cargo.lock"),
    )
    .unwrap();
    let target = workspace().join("target/plugin-example");
    let built = Command::new(env!("CARGO"))
        .arg("build")
        .arg("--manifest-path")
        .arg(dir.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target)
        .output()
        .unwrap();
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let checked = Command::new(BIN)
        .args(["plugin", "check"])
        .arg(target.join("debug/libacme_counter.so"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&checked.stdout);
    assert!(checked.status.success(), "{stdout}");
    assert!(stdout.contains("backend `acme-counter`"), "{stdout}");
    assert!(
        stdout.contains("2 profiles: basic, fast): passed"),
        "{stdout}"
    );
    let again = Command::new(BIN)
        .args(["new-backend", "acme-counter", "--dir"])
        .arg(&dir)
        .output()
        .unwrap();
    assert_eq!(
        again.status.code(),
        Some(2),
        "an existing directory is kept"
    );
}
