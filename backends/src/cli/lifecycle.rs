//! `create | destroy | list | define | undefine | start | stop`: the lifecycle commands. They
//! talk to the running server over its control socket, except `define`/`undefine` (and
//! `list --defined`), which work on the stored definitions directly, as mdevctl does.

use std::path::PathBuf;

use clap::Args;
use serde_json::Value;

use super::dirs::Dirs;
use super::types::registry_with_dirs;
use super::{CliError, ErrorKind, Outcome, print_json, read_text};
use crate::lifecycle::control::{self, Request};
use crate::lifecycle::definitions::{Definition, DefinitionError, Definitions, Start};
use crate::lifecycle::names::check_name;
use crate::lifecycle::{
    Changes, Checked, CreateSpec, InstanceInfo, Service, ServiceError, spec_of,
};
use vfio_variant::vpci::MAX_LAYOUT_FILE;

fn attribute(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("`{text}` is not KEY=VALUE"))
}

/// What a function is made of, shared by `create` and `define`.
#[derive(Args)]
pub struct FunctionArgs {
    /// Backend name (see `vfio-variant types`).
    #[arg(long)]
    backend: String,
    /// Profile [default: the backend's first].
    #[arg(long)]
    profile: Option<String>,
    /// vPCI layout file [default: the profile's].
    #[arg(long, value_name = "FILE")]
    layout: Option<PathBuf>,
    /// Provisioning attribute, applied in order; may be repeated.
    #[arg(long = "attr", value_name = "KEY=VALUE", value_parser = attribute)]
    attributes: Vec<(String, String)>,
}

impl FunctionArgs {
    fn layout_text(&self) -> Result<Option<String>, CliError> {
        self.layout
            .as_ref()
            .map(|p| read_text(p, MAX_LAYOUT_FILE))
            .transpose()
    }

    /// `error` with the layout file (and line) named in its message, when it is this one's:
    /// the server's errors are text.
    fn locate(&self, error: CliError) -> CliError {
        let Some(path) = self.layout.as_ref().map(|p| p.display().to_string()) else {
            return error;
        };
        let Some(at) = error.message.find(&format!("{path}:")) else {
            return error;
        };
        let line = error.message[at + path.len() + 1..]
            .split(':')
            .next()
            .and_then(|l| l.parse().ok());
        CliError {
            file: Some(path),
            line,
            ..error
        }
    }

    /// The create request these arguments make, for instance `name`.
    fn spec(&self, name: Option<String>) -> Result<CreateSpec, CliError> {
        Ok(CreateSpec {
            backend: self.backend.clone(),
            profile: self.profile.clone(),
            name,
            layout: self.layout_text()?,
            layout_file: self.layout.as_ref().map(|p| p.display().to_string()),
            attributes: self.attributes.clone(),
        })
    }
}

fn definition_error(e: DefinitionError) -> CliError {
    let e = ServiceError::from(e);
    CliError::new(e.kind(), e.to_string())
}

/// Arguments of `create`.
#[derive(Args)]
pub struct CreateArgs {
    #[command(flatten)]
    function: FunctionArgs,
    /// Instance name or UUID [default: a new UUID].
    #[arg(long, alias = "uuid")]
    name: Option<String>,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `destroy` and `stop`.
#[derive(Args)]
pub struct DestroyArgs {
    /// Instance name.
    name: String,
    /// Even while a VMM is attached (it is asked to release the device, then disconnected).
    #[arg(long)]
    force: bool,
    /// Machine-readable errors.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `list`.
#[derive(Args)]
pub struct ListArgs {
    /// Only this function (name or UUID).
    name: Option<String>,
    /// List stored definitions, each marked running or not, instead of running functions.
    #[arg(long)]
    defined: bool,
    /// Only functions of this backend.
    #[arg(long)]
    backend: Option<String>,
    /// Only functions of this profile.
    #[arg(long)]
    profile: Option<String>,
    /// Print definitions in the file format `define --jsonfile` reads (one JSON array).
    #[arg(long, conflicts_with = "json")]
    dumpjson: bool,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

impl ListArgs {
    fn keeps(&self, name: &str, backend: &str, profile: &str) -> bool {
        self.name
            .as_deref()
            .is_none_or(|n| check_name(n).is_ok_and(|n| n == name))
            && self.backend.as_deref().is_none_or(|b| b == backend)
            && self.profile.as_deref().is_none_or(|p| p == profile)
    }
}

/// Arguments of `define`.
#[derive(Args)]
pub struct DefineArgs {
    /// Instance name or UUID.
    name: String,
    #[command(flatten)]
    function: Option<FunctionArgs>,
    /// The definition as JSON (a file's content, as `list --dumpjson` prints it: an object,
    /// or an array of one); its `name` is replaced by NAME.
    #[arg(
        long,
        value_name = "FILE",
        conflicts_with = "FunctionArgs",
        required_unless_present = "backend"
    )]
    jsonfile: Option<PathBuf>,
    /// Start it whenever the server starts.
    #[arg(long)]
    auto: bool,
    /// Machine-readable errors.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `modify`.
#[derive(Args)]
pub struct ModifyArgs {
    /// Instance name or UUID.
    name: String,
    /// Another profile of its backend.
    #[arg(long)]
    profile: Option<String>,
    /// Another vPCI layout file.
    #[arg(long, value_name = "FILE", conflicts_with = "default_layout")]
    layout: Option<PathBuf>,
    /// Back to the profile's default layout.
    #[arg(long)]
    default_layout: bool,
    /// Provisioning attribute, applied in order; replaces all the old ones; may be repeated.
    #[arg(long = "attr", value_name = "KEY=VALUE", value_parser = attribute)]
    attributes: Vec<(String, String)>,
    /// Remove every attribute.
    #[arg(long, conflicts_with = "attributes")]
    clear_attrs: bool,
    /// Start it whenever the server starts (the definition).
    #[arg(long, conflicts_with = "manual")]
    auto: bool,
    /// Start it only with `start` (the definition).
    #[arg(long)]
    manual: bool,
    /// Change the running function (made again with the changes; refused while a VMM is
    /// attached).
    #[arg(long)]
    live: bool,
    /// Change the stored definition [default, unless --live].
    #[arg(long)]
    defined: bool,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

impl ModifyArgs {
    fn changes(&self) -> Result<Changes, CliError> {
        Ok(Changes {
            profile: self.profile.clone(),
            layout: self
                .layout
                .as_ref()
                .map(|p| read_text(p, MAX_LAYOUT_FILE))
                .transpose()?,
            layout_file: self.layout.as_ref().map(|p| p.display().to_string()),
            default_layout: self.default_layout,
            attributes: if self.clear_attrs {
                Some(Vec::new())
            } else {
                (!self.attributes.is_empty()).then(|| self.attributes.clone())
            },
        })
    }
}

/// Arguments of `undefine` and `start`.
#[derive(Args)]
pub struct NameArgs {
    /// Instance name.
    name: String,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

fn request(dirs: &Dirs, request: &Request) -> Result<Value, CliError> {
    Ok(control::request(
        &control::socket_path(&dirs.run_dir()),
        request,
    )?)
}

fn print_instance(info: &InstanceInfo) {
    let state = if info.state == "running" {
        String::new()
    } else {
        format!("  [{}]", info.state)
    };
    outln!(
        "{}  {}/{}  layout {}  {}{}{state}",
        info.name,
        info.backend,
        info.profile,
        info.layout,
        info.socket.display(),
        if info.attached { "  (attached)" } else { "" }
    );
}

fn instance(value: Value) -> Result<InstanceInfo, CliError> {
    serde_json::from_value(value)
        .map_err(|e| CliError::failed(format!("bad answer from the server: {e}")))
}

/// `create`.
pub fn create(args: CreateArgs, dirs: &Dirs) -> Result<Outcome, CliError> {
    let spec = args.function.spec(args.name.clone())?;
    let value = request(dirs, &Request::Create(spec)).map_err(|e| args.function.locate(e))?;
    if args.json {
        print_json(&value)?;
    } else {
        let info = instance(value)?;
        print_instance(&info);
        outln!("  {}", info.qemu_device);
    }
    Ok(Outcome::Success)
}

/// `destroy`.
pub fn destroy(args: DestroyArgs, dirs: &Dirs) -> Result<Outcome, CliError> {
    request(
        dirs,
        &Request::Destroy {
            name: args.name,
            force: args.force,
        },
    )?;
    Ok(Outcome::Success)
}

/// `stop`.
pub fn stop(args: DestroyArgs, dirs: &Dirs) -> Result<Outcome, CliError> {
    request(
        dirs,
        &Request::Stop {
            name: args.name,
            force: args.force,
        },
    )?;
    Ok(Outcome::Success)
}

/// `start`.
pub fn start(args: NameArgs, dirs: &Dirs) -> Result<Outcome, CliError> {
    let value = request(dirs, &Request::Start { name: args.name })?;
    if args.json {
        print_json(&value)?;
    } else {
        let info = instance(value)?;
        print_instance(&info);
        outln!("  {}", info.qemu_device);
    }
    Ok(Outcome::Success)
}

/// A definition as `list --defined` shows it.
#[derive(serde::Serialize)]
struct DefinedView<'a> {
    #[serde(flatten)]
    definition: &'a Definition,
    /// Whether the running server has a function of this name.
    running: bool,
}

/// `list`.
pub fn list(args: ListArgs, dirs: &Dirs) -> Result<Outcome, CliError> {
    if args.defined || args.dumpjson {
        return list_defined(&args, dirs);
    }
    let value = request(dirs, &Request::List)?;
    let infos: Vec<InstanceInfo> = serde_json::from_value(value)
        .map_err(|e| CliError::failed(format!("bad answer from the server: {e}")))?;
    let infos: Vec<&InstanceInfo> = infos
        .iter()
        .filter(|i| args.keeps(&i.name, &i.backend, &i.profile))
        .collect();
    if let (Some(name), true) = (&args.name, infos.is_empty()) {
        return Err(CliError::new(
            ErrorKind::NotFound,
            format!("no running function `{name}` (with the filters given)"),
        ));
    }
    if args.json {
        print_json(&infos)?;
    } else {
        for info in infos {
            print_instance(info);
        }
    }
    Ok(Outcome::Success)
}

/// `list --defined` and `list --dumpjson`: the stored definitions, and which of them run
/// (when a server answers).
fn list_defined(args: &ListArgs, dirs: &Dirs) -> Result<Outcome, CliError> {
    let definitions = Definitions::new(dirs.state_dir());
    let mut found = Vec::new();
    for d in definitions.list().map_err(definition_error)? {
        match d {
            Ok(d) if args.keeps(&d.name, &d.backend, &d.profile) => found.push(d),
            Ok(_) => {}
            Err(e) => eprintln!("vfio-variant: {e}"),
        }
    }
    if let (Some(name), true) = (&args.name, found.is_empty()) {
        return Err(CliError::new(
            ErrorKind::NotFound,
            format!("`{name}` is not defined (with the filters given)"),
        ));
    }
    if args.dumpjson {
        print_json(&found)?;
        return Ok(Outcome::Success);
    }
    let running: Vec<String> =
        match control::request(&control::socket_path(&dirs.run_dir()), &Request::List) {
            Ok(value) => serde_json::from_value::<Vec<InstanceInfo>>(value)
                .map_err(|e| CliError::failed(format!("bad answer from the server: {e}")))?
                .into_iter()
                .map(|i| i.name)
                .collect(),
            Err(e) if e.kind == ErrorKind::NoServer => Vec::new(),
            Err(e) => return Err(e.into()),
        };
    let views: Vec<DefinedView> = found
        .iter()
        .map(|definition| DefinedView {
            definition,
            running: running.contains(&definition.name),
        })
        .collect();
    if args.json {
        print_json(&views)?;
    } else {
        for v in &views {
            let d = v.definition;
            let start = if d.start == Start::Auto {
                "auto"
            } else {
                "manual"
            };
            let state = if v.running { "running" } else { "stopped" };
            outln!(
                "{}  {}/{}  start {start}  {state}",
                d.name,
                d.backend,
                d.profile
            );
        }
    }
    Ok(Outcome::Success)
}

/// Checks what a definition would create, with the running server's backends (or, when
/// none runs, the built-in ones): the backend, the profile, the layout and the backend's
/// provisioning with them, undone at once. Returns the profile (the backend's first when
/// none is named, as `create` picks).
fn check_spec(spec: &CreateSpec, dirs: &Dirs) -> Result<String, CliError> {
    let checked: Checked = match control::request(
        &control::socket_path(&dirs.run_dir()),
        &Request::Check(spec.clone()),
    ) {
        Ok(value) => serde_json::from_value(value)
            .map_err(|e| CliError::failed(format!("bad answer from the server: {e}")))?,
        Err(e) if e.kind == ErrorKind::NoServer => {
            let local = Service::new(
                registry_with_dirs(&[], &[])?,
                dirs.run_dir(),
                dirs.state_dir(),
                Default::default(),
            );
            local
                .check(spec)
                .map_err(|e| CliError::new(e.kind(), e.to_string()))?
        }
        Err(e) => return Err(e.into()),
    };
    if !checked.provisioned {
        eprintln!(
            "vfio-variant: note: no instance of {}/{} is free now, so its provisioning was not \
             tried; the backend, profile and layout are checked",
            spec.backend, checked.profile
        );
    }
    Ok(checked.profile)
}

/// `define`: refused unless the server (or, with none running, the built-in backends) could
/// create it as asked.
pub fn define(args: DefineArgs, dirs: &Dirs) -> Result<Outcome, CliError> {
    let name = check_name(&args.name).map_err(|e| CliError::new(ErrorKind::Invalid, e))?;
    let (spec, start) = match (&args.function, &args.jsonfile) {
        (Some(function), _) => (function.spec(Some(name.clone()))?, None),
        (None, Some(path)) => {
            let definition = read_definition(path, &name)?;
            (spec_of(&definition), Some(definition.start))
        }
        (None, None) => {
            return Err(CliError::new(
                ErrorKind::Invalid,
                "define needs --backend or --jsonfile",
            ));
        }
    };
    let profile = check_spec(&spec, dirs).map_err(|e| match &args.function {
        Some(function) => function.locate(e),
        None => e,
    })?;
    let definition = Definition {
        name,
        backend: spec.backend,
        profile,
        layout: spec.layout,
        attributes: spec.attributes,
        start: if args.auto {
            Start::Auto
        } else {
            start.unwrap_or(Start::Manual)
        },
    };
    Definitions::new(dirs.state_dir())
        .define(&definition)
        .map_err(definition_error)?;
    Ok(Outcome::Success)
}

/// A definition from a JSON file (an object, or an array of one), named `name`.
fn read_definition(path: &std::path::Path, name: &str) -> Result<Definition, CliError> {
    let invalid = |e: String| CliError::file(path, e).with_kind(ErrorKind::Invalid);
    let text = read_text(path, 2 * MAX_LAYOUT_FILE)?;
    let mut value: Value = serde_json::from_str(&text).map_err(|e| CliError {
        line: Some(e.line()),
        ..invalid(e.to_string())
    })?;
    if let Value::Array(items) = &mut value {
        if items.len() != 1 {
            return Err(invalid(format!(
                "holds {} definitions; give one",
                items.len()
            )));
        }
        value = items.remove(0);
    }
    let Value::Object(object) = &mut value else {
        return Err(invalid("not a JSON object".into()));
    };
    object.insert("name".into(), Value::String(name.to_string()));
    object
        .entry("start")
        .or_insert_with(|| Value::String("manual".into()));
    serde_json::from_value(value).map_err(|e| invalid(e.to_string()))
}

/// `modify`: the definition (default), the running function (`--live`), or both.
pub fn modify(args: ModifyArgs, dirs: &Dirs) -> Result<Outcome, CliError> {
    let name = check_name(&args.name).map_err(|e| CliError::new(ErrorKind::Invalid, e))?;
    let changes = args.changes()?;
    let start = match (args.auto, args.manual) {
        (true, _) => Some(Start::Auto),
        (_, true) => Some(Start::Manual),
        _ => None,
    };
    if changes.is_empty() && start.is_none() {
        return Err(CliError::new(
            ErrorKind::Invalid,
            "nothing to change (give --profile, --layout, --default-layout, --attr, \
             --clear-attrs, --auto or --manual)",
        ));
    }
    if args.live && start.is_some() && !args.defined {
        return Err(CliError::new(
            ErrorKind::Invalid,
            "--auto and --manual change the definition: add --defined",
        ));
    }
    if args.defined || !args.live {
        let definitions = Definitions::new(dirs.state_dir());
        let old = definitions.get(&name).map_err(definition_error)?;
        let spec = changes.apply(spec_of(&old));
        let profile = check_spec(&spec, dirs)?;
        let definition = Definition {
            name: name.clone(),
            backend: spec.backend,
            profile,
            layout: spec.layout,
            attributes: spec.attributes,
            start: start.unwrap_or(old.start),
        };
        definitions.replace(&definition).map_err(definition_error)?;
        if !args.live {
            if args.json {
                print_json(&definition)?;
            }
            return Ok(Outcome::Success);
        }
    }
    let value = request(dirs, &Request::Modify { name, changes })?;
    if args.json {
        print_json(&value)?;
    } else {
        let info = instance(value)?;
        print_instance(&info);
        outln!("  {}", info.qemu_device);
    }
    Ok(Outcome::Success)
}

/// `undefine`.
pub fn undefine(args: NameArgs, dirs: &Dirs) -> Result<Outcome, CliError> {
    Definitions::new(dirs.state_dir())
        .undefine(&args.name)
        .map_err(definition_error)?;
    Ok(Outcome::Success)
}
