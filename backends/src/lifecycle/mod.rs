//! The lifecycle control plane: types with available instances, create (provisioned with its
//! profile before its socket appears), destroy, list, and persistent definitions.
//!
//! Where to look: the running service in this file; instance names in [`names`]; stored
//! definitions in [`definitions`]; the control socket and its JSON protocol in [`control`];
//! the run directory's owner lock and stale sockets in [`run_dir`].

pub mod atomic_file;
pub mod control;
pub mod definitions;
pub mod names;
pub mod run_dir;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use vfio_variant::backend::{Backend, BackendError, ProfileInfo};
use vfio_variant::config::ConfigTemplate;
use vfio_variant::device::{ProvisionError, VirtualFunction};
use vfio_variant::server::{Endpoint, EndpointError, Port, ServerConfig};
use vfio_variant::vpci::compat::fingerprint;
use vfio_variant::vpci::compile::compile;
use vfio_variant::vpci::{Layout, LayoutError, parse_layout};

use crate::registry::Registry;
use definitions::{Definition, DefinitionError, Definitions, Start};
use names::{check_name, new_uuid};

/// A backend and its profiles, as `types` shows them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BackendTypes {
    /// Backend name.
    pub backend: String,
    /// One line.
    pub description: String,
    /// Profiles with available instances.
    pub profiles: Vec<ProfileInfo>,
}

/// What to create.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CreateSpec {
    /// Backend name.
    pub backend: String,
    /// Profile name (the backend's first when absent).
    #[serde(default)]
    pub profile: Option<String>,
    /// Instance name or UUID (a new UUID when absent).
    #[serde(default)]
    pub name: Option<String>,
    /// vPCI layout as TOML text (the profile's default when absent).
    #[serde(default)]
    pub layout: Option<String>,
    /// Where the layout text came from (its file's path), for messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layout_file: Option<String>,
    /// Ordered provisioning attributes.
    #[serde(default)]
    pub attributes: Vec<(String, String)>,
}

/// What a check of a create request found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checked {
    /// The profile it resolves to (the backend's first when it names none).
    pub profile: String,
    /// Whether the backend provisioned it (and released it at once); false when no
    /// instance of the profile was free, so only the backend, profile and layout were checked.
    pub provisioned: bool,
}

/// A running instance, as `list` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InstanceInfo {
    /// Instance name.
    pub name: String,
    /// Backend.
    pub backend: String,
    /// Profile.
    pub profile: String,
    /// The layout's name.
    pub layout: String,
    /// Fingerprint of the guest-visible layout.
    pub fingerprint: String,
    /// The vfio-user socket.
    pub socket: PathBuf,
    /// Whether a VMM is connected.
    pub attached: bool,
    /// The device's migration state: `running`, or e.g. `stop` for a source whose state
    /// moved to another function.
    #[serde(default = "running")]
    pub state: String,
    /// Whether a stored definition has this name.
    pub defined: bool,
    /// The QEMU `-device` argument that attaches it.
    pub qemu_device: String,
    /// Whether the function can migrate (its backend offers VFIO migration).
    #[serde(default)]
    pub migratable: bool,
}

fn running() -> String {
    "running".into()
}

/// A lifecycle request that failed; the message says why.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// A bad name.
    #[error("{0}")]
    Name(String),
    /// The name is taken by a running instance.
    #[error("`{0}` already exists")]
    Exists(String),
    /// No running instance has this name.
    #[error("no running instance `{0}`")]
    Missing(String),
    /// No such backend or profile.
    #[error("{0}")]
    Unknown(String),
    /// The layout is invalid or does not fit the function.
    #[error("layout: {0}")]
    Layout(#[from] LayoutError),
    /// The backend refused or failed.
    #[error("backend: {0}")]
    Backend(#[from] BackendError),
    /// The socket could not be created.
    #[error("{0}")]
    Endpoint(#[from] EndpointError),
    /// A VMM is attached and the request was not forced.
    #[error("`{0}` is in use by a VMM; stop the VMM or pass --force")]
    InUse(String),
    /// A definition could not be read or stored.
    #[error("{0}")]
    Definition(#[from] DefinitionError),
    /// `stop` of a function that has no definition.
    #[error("`{0}` is not a defined function (it was made with `create`); use `destroy`")]
    NotDefined(String),
}

impl ServiceError {
    /// The kind of failure, as the CLI reports it (and chooses its exit code by).
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Name(_) | Self::Layout(_) => ErrorKind::Invalid,
            Self::Unknown(_) | Self::NotDefined(_) | Self::Missing(_) => ErrorKind::NotFound,
            Self::Exists(_) => ErrorKind::Conflict,
            Self::Backend(_) => ErrorKind::Backend,
            Self::Endpoint(_) => ErrorKind::Io,
            Self::InUse(_) => ErrorKind::Conflict,
            Self::Definition(e) => match e {
                DefinitionError::Name(_) => ErrorKind::Invalid,
                DefinitionError::Exists(_) => ErrorKind::Conflict,
                DefinitionError::Missing(_) => ErrorKind::NotFound,
                DefinitionError::File { .. } => ErrorKind::Io,
            },
        }
    }
}

/// What kind of failure an error is: one stable name and exit code each (docs/serve.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// Any other failure.
    Failed,
    /// The command line was refused (an unknown option, a missing argument).
    Usage,
    /// No server answers on the control socket.
    NoServer,
    /// The control socket (or a file) may not be used by this user.
    Permission,
    /// No such function, definition, backend or profile.
    NotFound,
    /// A bad name, layout, configuration or argument.
    Invalid,
    /// The name is taken, or the function is in use.
    Conflict,
    /// The backend refused, or the function cannot do it (e.g. not migratable).
    Backend,
    /// A file or socket could not be read or written.
    Io,
}

impl ErrorKind {
    /// The exit code of the command that failed this way.
    pub fn exit_code(self) -> u8 {
        match self {
            Self::Failed | Self::Usage => 2,
            Self::NoServer => 3,
            Self::Permission => 4,
            Self::NotFound => 5,
            Self::Invalid => 6,
            Self::Conflict => 7,
            Self::Backend => 8,
            Self::Io => 9,
        }
    }
}

/// A create request checked against the registry.
struct Resolved {
    name: String,
    backend: Arc<dyn Backend>,
    profile: String,
    layout: Arc<Layout>,
    /// Where the layout came from, for messages.
    source: String,
}

struct Instance {
    backend: String,
    profile: String,
    layout: String,
    fingerprint: String,
    endpoint: Endpoint,
    /// What it was created from (for `modify`).
    spec: CreateSpec,
}

/// Changes `modify` makes to a function; what is absent stays.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Changes {
    /// Another profile of the same backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    /// Another layout (TOML text).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layout: Option<String>,
    /// Where that layout came from, for messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layout_file: Option<String>,
    /// Back to the profile's default layout.
    #[serde(default)]
    pub default_layout: bool,
    /// New attributes, replacing all the old ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attributes: Option<Vec<(String, String)>>,
}

impl Changes {
    /// `spec` with these changes.
    pub fn apply(&self, mut spec: CreateSpec) -> CreateSpec {
        if let Some(profile) = &self.profile {
            spec.profile = Some(profile.clone());
        }
        if self.default_layout {
            spec.layout = None;
            spec.layout_file = None;
        }
        if let Some(layout) = &self.layout {
            spec.layout = Some(layout.clone());
            spec.layout_file = self.layout_file.clone();
        }
        if let Some(attributes) = &self.attributes {
            spec.attributes = attributes.clone();
        }
        spec
    }

    /// Whether anything changes.
    pub fn is_empty(&self) -> bool {
        self.profile.is_none()
            && self.layout.is_none()
            && !self.default_layout
            && self.attributes.is_none()
    }
}

/// The QEMU `-device` argument for a vfio-user socket.
pub fn qemu_device(socket: &Path) -> String {
    let json = serde_json::json!({
        "driver": "vfio-user-pci",
        "socket": { "path": socket.to_string_lossy(), "type": "unix" },
    });
    format!("-device '{json}'")
}

/// The functions one server process runs.
pub struct Service {
    registry: Registry,
    run_dir: PathBuf,
    server: Arc<ServerConfig>,
    definitions: Definitions,
    instances: Mutex<BTreeMap<String, Instance>>,
    /// Compiled layouts in use, shared by every function of one layout (a template is a few
    /// dozen KiB and never changes).
    templates: Mutex<Vec<Weak<ConfigTemplate>>>,
}

impl Service {
    /// A service with the backends of `registry`, sockets in `run_dir`, definitions in
    /// `state_dir`.
    pub fn new(
        registry: Registry,
        run_dir: PathBuf,
        state_dir: PathBuf,
        server: ServerConfig,
    ) -> Self {
        Self {
            registry,
            run_dir,
            server: Arc::new(server),
            definitions: Definitions::new(state_dir),
            instances: Mutex::new(BTreeMap::new()),
            templates: Mutex::new(Vec::new()),
        }
    }

    /// The compiled template of `layout`, shared with the functions already using it.
    fn template_for(&self, layout: &Arc<Layout>) -> Arc<ConfigTemplate> {
        let mut templates = self.templates.lock();
        templates.retain(|t| t.strong_count() > 0);
        if let Some(shared) = templates
            .iter()
            .filter_map(Weak::upgrade)
            .find(|t| **t.layout() == **layout)
        {
            return shared;
        }
        let template = Arc::new(compile(Arc::clone(layout)));
        templates.push(Arc::downgrade(&template));
        template
    }

    /// Where sockets are.
    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    /// The stored definitions.
    pub fn definitions(&self) -> &Definitions {
        &self.definitions
    }

    /// Backends and their profiles with available instances now.
    pub fn types(&self) -> Vec<BackendTypes> {
        self.registry
            .iter()
            .map(|b| BackendTypes {
                backend: b.name().to_string(),
                description: b.description().to_string(),
                profiles: b.profiles(),
            })
            .collect()
    }

    /// What `spec` resolves to: the canonical name, the backend, its profile (the first one
    /// when none is asked for) and the parsed layout.
    fn resolve(&self, spec: &CreateSpec) -> Result<Resolved, ServiceError> {
        let name = match &spec.name {
            Some(name) => check_name(name).map_err(ServiceError::Name)?,
            None => new_uuid(),
        };
        let backend = self.registry.get(&spec.backend).ok_or_else(|| {
            let known: Vec<&str> = self.registry.iter().map(|b| b.name()).collect();
            ServiceError::Unknown(format!(
                "no backend `{}` (have: {})",
                spec.backend,
                known.join(", ")
            ))
        })?;
        let profiles = backend.profiles();
        let profile = match &spec.profile {
            Some(p) => p.clone(),
            None => profiles.first().map(|p| p.name.clone()).ok_or_else(|| {
                ServiceError::Unknown(format!("backend `{}` offers no profile", spec.backend))
            })?,
        };
        if !profiles.iter().any(|p| p.name == profile) {
            let known: Vec<&str> = profiles.iter().map(|p| p.name.as_str()).collect();
            return Err(ServiceError::Unknown(format!(
                "backend `{}` has no profile `{profile}` (have: {})",
                spec.backend,
                known.join(", ")
            )));
        }
        let (text, source) = match &spec.layout {
            Some(text) => (
                text.clone(),
                spec.layout_file
                    .clone()
                    .unwrap_or_else(|| format!("layout given for {name}")),
            ),
            None => (
                backend.default_layout(&profile)?,
                format!("default layout of {}/{profile}", spec.backend),
            ),
        };
        let layout = Arc::new(parse_layout(&source, &text)?);
        Ok(Resolved {
            name,
            backend: Arc::clone(backend),
            profile,
            layout,
            source,
        })
    }

    /// Provisions the function `resolved` stands for (not yet exposed).
    fn provision(
        &self,
        resolved: &Resolved,
        spec: &CreateSpec,
    ) -> Result<(VirtualFunction, Arc<ConfigTemplate>), ServiceError> {
        let template = self.template_for(&resolved.layout);
        let vf = VirtualFunction::provision(
            resolved.backend.as_ref(),
            Arc::clone(&template),
            &resolved.profile,
            &resolved.name,
            spec.attributes.clone(),
        )
        .map_err(|e| match e {
            ProvisionError::Backend(e) => ServiceError::Backend(e),
            ProvisionError::Layout(mut e) => {
                // The check against the function's physical function has no place in the
                // file: name the file and the backend.
                if e.location.line == 0 {
                    e.location.file = resolved.source.clone();
                    e.message = format!("{} (backend `{}`)", e.message, spec.backend);
                }
                ServiceError::Layout(e)
            }
        })?;
        Ok((vf, template))
    }

    /// Checks what `spec` would create: the backend, the profile, the layout, and the
    /// backend's provisioning with them (undone at once); nothing is exposed. When no
    /// instance of the profile is free now, provisioning is not tried and the check says so.
    pub fn check(&self, spec: &CreateSpec) -> Result<Checked, ServiceError> {
        let resolved = self.resolve(spec)?;
        let provisioned = match self.provision(&resolved, spec) {
            Ok(_) => true,
            Err(ServiceError::Backend(BackendError::NoInstances(_))) => false,
            Err(e) => return Err(e),
        };
        Ok(Checked {
            profile: resolved.profile,
            provisioned,
        })
    }

    /// Provisions a function with its profile, puts it behind its layout, and only then
    /// exposes its socket. On any error nothing is left behind.
    pub fn create(&self, spec: &CreateSpec) -> Result<InstanceInfo, ServiceError> {
        let resolved = self.resolve(spec)?;
        let name = resolved.name.clone();
        let mut instances = self.instances.lock();
        if instances.contains_key(&name) {
            return Err(ServiceError::Exists(name));
        }
        let (vf, template) = self.provision(&resolved, spec)?;
        let fingerprint = fingerprint(&template);
        let vf = Arc::new(vf);
        let socket = self.run_dir.join(format!("{name}.sock"));
        let port = Port::for_backend(name.clone(), vf, &spec.backend, &resolved.profile);
        let endpoint = Endpoint::bind(port, &socket, Arc::clone(&self.server))?;
        let instance = Instance {
            backend: spec.backend.clone(),
            profile: resolved.profile.clone(),
            layout: resolved.layout.name.clone(),
            fingerprint,
            endpoint,
            spec: CreateSpec {
                name: Some(name.clone()),
                profile: Some(resolved.profile.clone()),
                ..spec.clone()
            },
        };
        let info = self.info(&name, &instance);
        instances.insert(name, instance);
        tracing::info!(function = %info.name, backend = %info.backend, profile = %info.profile, socket = %info.socket.display(), "created");
        Ok(info)
    }

    fn info(&self, name: &str, instance: &Instance) -> InstanceInfo {
        let socket = instance.endpoint.path().to_path_buf();
        InstanceInfo {
            name: name.to_string(),
            backend: instance.backend.clone(),
            profile: instance.profile.clone(),
            layout: instance.layout.clone(),
            fingerprint: instance.fingerprint.clone(),
            qemu_device: qemu_device(&socket),
            socket,
            attached: instance.endpoint.is_attached(),
            state: instance
                .endpoint
                .port()
                .migration_state()
                .name()
                .to_string(),
            defined: self.definitions.get(name).is_ok(),
            migratable: instance
                .endpoint
                .port()
                .function()
                .migration_flags()
                .is_some(),
        }
    }

    /// Destroys an instance; refused while a VMM is attached unless `force` (then the VMM is
    /// asked to release it and disconnected).
    pub fn destroy(&self, name: &str, force: bool) -> Result<(), ServiceError> {
        let name = &check_name(name).map_err(ServiceError::Name)?;
        let mut instances = self.instances.lock();
        let instance = instances
            .get(name)
            .ok_or_else(|| ServiceError::Missing(name.clone()))?;
        if instance.endpoint.is_attached() && !force {
            return Err(ServiceError::InUse(name.to_string()));
        }
        // Dropping the endpoint disconnects and removes the socket; dropping the function
        // returns its resources to the backend.
        instances.remove(name);
        tracing::info!(function = %name, forced = force, "destroyed");
        Ok(())
    }

    /// Changes a running function with no VMM attached: it is made again from its spec with
    /// `changes` (under its name and socket path); when that fails, the old function is
    /// made again and the error returned.
    pub fn modify(&self, name: &str, changes: &Changes) -> Result<InstanceInfo, ServiceError> {
        let name = check_name(name).map_err(ServiceError::Name)?;
        let old = {
            let instances = self.instances.lock();
            let instance = instances
                .get(&name)
                .ok_or_else(|| ServiceError::Missing(name.clone()))?;
            if instance.endpoint.is_attached() {
                return Err(ServiceError::InUse(name));
            }
            instance.spec.clone()
        };
        let new = changes.apply(old.clone());
        // Refuse what cannot be resolved (a bad profile or layout) before touching it.
        self.resolve(&new)?;
        self.destroy(&name, false)?;
        match self.create(&new) {
            Ok(info) => {
                tracing::info!(function = %name, profile = %info.profile, "modified");
                Ok(info)
            }
            Err(e) => {
                if let Err(again) = self.create(&old) {
                    tracing::warn!(function = %name, "modify failed ({e}), and so did restoring it: {again}");
                }
                Err(e)
            }
        }
    }

    /// Running instances, by name.
    pub fn list(&self) -> Vec<InstanceInfo> {
        self.instances
            .lock()
            .iter()
            .map(|(name, i)| self.info(name, i))
            .collect()
    }

    /// Destroys a running instance that has a definition (it stays defined); a function
    /// made with `create` alone is refused: `destroy` is for those.
    pub fn stop(&self, name: &str, force: bool) -> Result<(), ServiceError> {
        let name = check_name(name).map_err(ServiceError::Name)?;
        match self.definitions.get(&name) {
            Ok(_) => self.destroy(&name, force),
            Err(DefinitionError::Missing(_)) if self.instances.lock().contains_key(&name) => {
                Err(ServiceError::NotDefined(name))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Creates a defined instance.
    pub fn start(&self, name: &str) -> Result<InstanceInfo, ServiceError> {
        let definition = self.definitions.get(name)?;
        self.create(&spec_of(&definition))
    }

    /// Starts every definition marked `start = auto`; returns what failed.
    pub fn autostart(&self) -> Vec<(String, ServiceError)> {
        let mut failed = Vec::new();
        let definitions = match self.definitions.list() {
            Ok(d) => d,
            Err(e) => return vec![(self.definitions.dir().display().to_string(), e.into())],
        };
        for definition in definitions {
            match definition {
                Ok(d) if d.start == Start::Auto => {
                    if let Err(e) = self.create(&spec_of(&d)) {
                        failed.push((d.name.clone(), e));
                    }
                }
                Ok(_) => {}
                Err(e) => failed.push((self.definitions.dir().display().to_string(), e.into())),
            }
        }
        failed
    }

    /// Destroys every instance (the server is stopping).
    pub fn shutdown(&self) {
        let mut instances = self.instances.lock();
        if !instances.is_empty() {
            tracing::info!(
                functions = instances.len(),
                "stopping: destroying every function"
            );
        }
        instances.clear();
    }
}

/// The create request a definition stands for.
pub fn spec_of(definition: &Definition) -> CreateSpec {
    CreateSpec {
        backend: definition.backend.clone(),
        profile: Some(definition.profile.clone()),
        name: Some(definition.name.clone()),
        layout: definition.layout.clone(),
        layout_file: definition
            .layout
            .as_ref()
            .map(|_| format!("layout stored in definition {}", definition.name)),
        attributes: definition.attributes.clone(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::builtin::sample::SampleBackend;

    fn service(tag: &str) -> (Service, PathBuf) {
        let dir =
            std::env::temp_dir().join(format!("vfio-variant-service-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("run")).unwrap();
        let mut registry = Registry::new();
        registry.register(Arc::new(SampleBackend::new(2))).unwrap();
        (
            Service::new(
                registry,
                dir.join("run"),
                dir.join("state"),
                ServerConfig::default(),
            ),
            dir,
        )
    }

    #[test]
    fn create_list_destroy_and_available_instances() {
        let (s, dir) = service("basic");
        let a = s
            .create(&CreateSpec {
                backend: "sample".into(),
                name: Some("a".into()),
                ..Default::default()
            })
            .unwrap();
        assert!(a.socket.exists());
        assert!(a.qemu_device.contains("\"vfio-user-pci\"") && a.qemu_device.contains("a.sock"));
        let b = s
            .create(&CreateSpec {
                backend: "sample".into(),
                ..Default::default()
            })
            .unwrap();
        assert!(uuid::Uuid::parse_str(&b.name).is_ok());
        assert_eq!(s.types()[0].profiles[0].available_instances, 0);
        assert_eq!(
            s.templates.lock().len(),
            1,
            "one compiled template for both"
        );
        let err = s
            .create(&CreateSpec {
                backend: "sample".into(),
                name: Some("c".into()),
                ..Default::default()
            })
            .unwrap_err();
        assert!(err.to_string().contains("no instance"), "{err}");
        assert!(!dir.join("run/c.sock").exists(), "nothing left behind");
        assert!(matches!(
            s.create(&CreateSpec {
                backend: "sample".into(),
                name: Some("a".into()),
                ..Default::default()
            }),
            Err(ServiceError::Exists(_))
        ));
        assert_eq!(s.list().len(), 2);
        s.destroy("a", false).unwrap();
        assert!(!a.socket.exists());
        assert_eq!(s.types()[0].profiles[0].available_instances, 1);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn bad_requests_change_nothing() {
        let (s, dir) = service("bad");
        for spec in [
            CreateSpec {
                backend: "nope".into(),
                ..Default::default()
            },
            CreateSpec {
                backend: "sample".into(),
                profile: Some("fast".into()),
                ..Default::default()
            },
            CreateSpec {
                backend: "sample".into(),
                name: Some("../x".into()),
                ..Default::default()
            },
            CreateSpec {
                backend: "sample".into(),
                layout: Some("[vpci]\nformat = 1\n".into()),
                ..Default::default()
            },
            CreateSpec {
                backend: "sample".into(),
                attributes: vec![("mac".into(), "x".into())],
                ..Default::default()
            },
        ] {
            assert!(s.create(&spec).is_err());
        }
        assert!(s.list().is_empty());
        assert_eq!(s.types()[0].profiles[0].available_instances, 2);
        assert_eq!(std::fs::read_dir(dir.join("run")).unwrap().count(), 0);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn modify_restores_the_old_function_when_the_new_one_fails() {
        let (s, dir) = service("modify");
        let before = s
            .create(&CreateSpec {
                backend: "sample".into(),
                name: Some("m".into()),
                ..Default::default()
            })
            .unwrap();
        // The sample backend takes no attributes: the new function cannot be made.
        let refused = Changes {
            attributes: Some(vec![("speed".into(), "1".into())]),
            ..Changes::default()
        };
        assert!(matches!(
            s.modify("m", &refused),
            Err(ServiceError::Backend(_))
        ));
        let now = s.list();
        assert_eq!(now.len(), 1, "the old function is back");
        assert_eq!(now[0].fingerprint, before.fingerprint);
        assert!(now[0].socket.exists());
        assert!(matches!(
            s.modify("gone", &refused),
            Err(ServiceError::Missing(_))
        ));
        // A profile that does not resolve is refused before the function is touched.
        let unknown = Changes {
            profile: Some("fast".into()),
            ..Changes::default()
        };
        assert!(matches!(
            s.modify("m", &unknown),
            Err(ServiceError::Unknown(_))
        ));
        assert_eq!(s.types()[0].profiles[0].available_instances, 1);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn definitions_autostart() {
        let (s, dir) = service("defs");
        for (name, start) in [("auto", Start::Auto), ("manual", Start::Manual)] {
            s.definitions()
                .define(&Definition {
                    name: name.into(),
                    backend: "sample".into(),
                    profile: "default".into(),
                    layout: None,
                    attributes: vec![],
                    start,
                })
                .unwrap();
        }
        assert!(s.autostart().is_empty());
        let names: Vec<String> = s.list().into_iter().map(|i| i.name).collect();
        assert_eq!(names, ["auto"]);
        assert!(s.list()[0].defined);
        s.start("manual").unwrap();
        assert_eq!(s.list().len(), 2);
        assert!(s.start("missing").is_err());
        let _ = std::fs::remove_dir_all(dir);
    }
}
