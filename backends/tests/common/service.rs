//! A `Service` running built-in functions in run and state directories of its own, for the
//! tests that drive the server over its sockets (hostile clients, twin-socket mode); a bounded
//! wait, and the process's fd and thread counts those tests compare.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use vfio_variant::server::ServerConfig;
use vfio_variant_backends::builtin::register_builtin;
use vfio_variant_backends::lifecycle::{CreateSpec, Service};
use vfio_variant_backends::registry::Registry;

/// The service and its directory, removed (functions destroyed first) on drop.
pub struct TestService {
    /// The lifecycle service serving the functions.
    pub service: Service,
    dir: PathBuf,
}

impl TestService {
    /// Serves `functions` (name, backend) with `config`, in a directory named after `tag`.
    pub fn start(tag: &str, config: ServerConfig, functions: &[(&str, &str)]) -> Self {
        let dir = std::env::temp_dir().join(format!("vfio-variant-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for sub in ["run", "state"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        let mut registry = Registry::new();
        register_builtin(&mut registry, &[]).unwrap();
        let service = Service::new(registry, dir.join("run"), dir.join("state"), config);
        for &(name, backend) in functions {
            service
                .create(&CreateSpec {
                    backend: backend.into(),
                    name: Some(name.into()),
                    ..CreateSpec::default()
                })
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        Self { service, dir }
    }

    /// The vfio-user socket of function `name`.
    pub fn socket(&self, name: &str) -> PathBuf {
        self.dir.join("run").join(format!("{name}.sock"))
    }

    /// Whether a client is attached to `name`.
    pub fn attached(&self, name: &str) -> bool {
        self.service
            .list()
            .iter()
            .any(|i| i.name == name && i.attached)
    }

    /// Waits until no client is attached to `name` any more.
    pub fn wait_detached(&self, name: &str) {
        eventually(&format!("{name} lets its client go"), || {
            (!self.attached(name)).then_some(())
        });
    }
}

impl Drop for TestService {
    fn drop(&mut self) {
        self.service.shutdown();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Polls `probe` until it gives `Some`; a bound, not a timing check: 10 s.
pub fn eventually<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(Instant::now() < deadline, "{what}: not within 10 s");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// The process's open fds.
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// The process's threads.
pub fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").unwrap().count()
}
