//! The control socket: one JSON request per line, one JSON response per line.
//!
//! Requests: `{"op":"types"}`, `{"op":"list"}`, `{"op":"create", ...CreateSpec}`,
//! `{"op":"destroy","name":..,"force":..}`, `{"op":"start","name":..}`,
//! `{"op":"stop","name":..,"force":..}`, `{"op":"check", ...CreateSpec}`. Responses:
//! `{"ok":true,"result":..}` or `{"ok":false,"error":"..","kind":".."}`.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustix::event::{PollFd, PollFlags, poll};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use vfio_variant::vfio_user::socket::peer_credentials;

use super::{Changes, CreateSpec, ErrorKind, Service, ServiceError};

/// Longest request line accepted (a layout is a few KiB).
const MAX_LINE: u64 = 1 << 20;

/// A control request.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Request {
    /// Backends and profiles with available instances.
    Types,
    /// Running instances.
    List,
    /// Create an instance.
    Create(CreateSpec),
    /// Destroy an instance.
    Destroy {
        /// Instance name.
        name: String,
        /// Even while a VMM is attached.
        #[serde(default)]
        force: bool,
    },
    /// Create a defined instance.
    Start {
        /// Definition name.
        name: String,
    },
    /// Check what a create request would make (backend, profile, layout, provisioning)
    /// without exposing anything; the result is a [`super::Checked`].
    Check(CreateSpec),
    /// Change a running instance (made again with the changes; no VMM may be attached).
    Modify {
        /// Instance name.
        name: String,
        /// What changes.
        #[serde(flatten)]
        changes: Changes,
    },
    /// Destroy a defined instance.
    Stop {
        /// Instance name.
        name: String,
        /// Even while a VMM is attached.
        #[serde(default)]
        force: bool,
    },
}

impl Request {
    /// The request's `op`, for the event log.
    pub fn op(&self) -> &'static str {
        match self {
            Self::Types => "types",
            Self::List => "list",
            Self::Create(_) => "create",
            Self::Destroy { .. } => "destroy",
            Self::Start { .. } => "start",
            Self::Check(_) => "check",
            Self::Modify { .. } => "modify",
            Self::Stop { .. } => "stop",
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Response {
    ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    result: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kind: Option<ErrorKind>,
}

/// A request that failed: what kind of failure, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ControlError {
    /// The kind of failure.
    pub kind: ErrorKind,
    /// Why, in words.
    pub message: String,
}

impl ControlError {
    fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}

impl From<ServiceError> for ControlError {
    fn from(e: ServiceError) -> Self {
        Self::new(e.kind(), e.to_string())
    }
}

fn answer(service: &Service, request: Request) -> Result<Value, ControlError> {
    let json = |v: Result<Value, serde_json::Error>| {
        v.map_err(|e| ControlError::new(ErrorKind::Failed, e.to_string()))
    };
    match request {
        Request::Types => json(serde_json::to_value(service.types())),
        Request::List => json(serde_json::to_value(service.list())),
        Request::Create(spec) => json(serde_json::to_value(service.create(&spec)?)),
        Request::Check(spec) => json(serde_json::to_value(service.check(&spec)?)),
        Request::Start { name } => json(serde_json::to_value(service.start(&name)?)),
        Request::Modify { name, changes } => {
            json(serde_json::to_value(service.modify(&name, &changes)?))
        }
        Request::Destroy { name, force } => {
            service.destroy(&name, force)?;
            Ok(Value::Null)
        }
        Request::Stop { name, force } => {
            service.stop(&name, force)?;
            Ok(Value::Null)
        }
    }
}

fn handle(service: &Service, stream: UnixStream) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    loop {
        let mut line = String::new();
        match reader.by_ref().take(MAX_LINE).read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if !line.ends_with('\n') && line.len() as u64 >= MAX_LINE {
            let _ = write_response(
                &mut writer,
                Err(ControlError::new(
                    ErrorKind::Invalid,
                    format!("request longer than {MAX_LINE} bytes"),
                )),
            );
            return;
        }
        let result = serde_json::from_str::<Request>(&line)
            .map_err(|e| ControlError::new(ErrorKind::Invalid, format!("bad request: {e}")))
            .and_then(|request| {
                let changes =
                    !matches!(request, Request::Types | Request::List | Request::Check(_));
                let op = request.op();
                answer(service, request).inspect_err(|e| {
                    if changes {
                        tracing::info!(op, kind = ?e.kind, "refused: {e}");
                    }
                })
            });
        if write_response(&mut writer, result).is_err() {
            return;
        }
    }
}

fn write_response(
    writer: &mut UnixStream,
    result: Result<Value, ControlError>,
) -> std::io::Result<()> {
    let response = match result {
        Ok(result) => Response {
            ok: true,
            result: Some(result),
            error: None,
            kind: None,
        },
        Err(error) => Response {
            ok: false,
            result: None,
            error: Some(error.message),
            kind: Some(error.kind),
        },
    };
    let mut text = serde_json::to_string(&response).map_err(std::io::Error::other)?;
    text.push('\n');
    writer.write_all(text.as_bytes())
}

/// Creates the control socket (mode 0600) at `path`.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    if UnixStream::connect(path).is_ok() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            format!("{} is served by another running server", path.display()),
        ));
    }
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Serves control requests until `stop` becomes readable. Each client gets its own thread;
/// only peers with the server's uid (or root) are served.
pub fn serve(service: Arc<Service>, listener: UnixListener, stop: &OwnedFd) {
    let me = rustix::process::geteuid().as_raw();
    loop {
        let mut fds = [
            PollFd::new(&listener, PollFlags::IN),
            PollFd::new(stop, PollFlags::IN),
        ];
        match poll(&mut fds, None) {
            Ok(_) if !fds[1].revents().is_empty() => return,
            Ok(_) if !fds[0].revents().is_empty() => {}
            Ok(_) | Err(rustix::io::Errno::INTR) => continue,
            Err(e) => {
                tracing::warn!("control socket: {e}");
                return;
            }
        }
        let Ok((stream, _)) = listener.accept() else {
            continue;
        };
        let peer = match peer_credentials(&stream) {
            Ok(peer) if peer.uid == me || peer.uid == 0 => peer,
            Ok(peer) => {
                tracing::warn!(pid = peer.pid, uid = peer.uid, "control: refused a peer");
                continue;
            }
            Err(e) => {
                tracing::warn!("control: no peer credentials: {e}");
                continue;
            }
        };
        let (pid, uid) = (peer.pid, peer.uid);
        let service = Arc::clone(&service);
        let _ = std::thread::Builder::new()
            .name("control".into())
            .spawn(move || {
                // Lifecycle events name the peer that asked for them.
                let span = tracing::info_span!("control", pid, uid);
                let _entered = span.enter();
                handle(&service, stream);
            });
    }
}

/// Where the control socket of a run directory is.
pub fn socket_path(run_dir: &Path) -> PathBuf {
    run_dir.join("control.sock")
}

/// Connects to the control socket; the error tells "no server" from "not allowed".
pub fn connect(socket: &Path) -> Result<UnixStream, ControlError> {
    UnixStream::connect(socket).map_err(|e| match e.kind() {
        std::io::ErrorKind::PermissionDenied => ControlError::new(
            ErrorKind::Permission,
            format!(
                "permission denied on {}: run as the server's user or root",
                socket.display()
            ),
        ),
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => ControlError::new(
            ErrorKind::NoServer,
            format!(
                "no server at {} ({e}); start one with `vfio-variant serve`",
                socket.display()
            ),
        ),
        _ => ControlError::new(ErrorKind::Io, format!("{}: {e}", socket.display())),
    })
}

/// Sends one request to a running server and returns its result.
pub fn request(socket: &Path, request: &Request) -> Result<Value, ControlError> {
    let io = |e: std::io::Error| ControlError::new(ErrorKind::Io, format!("control socket: {e}"));
    let mut stream = connect(socket)?;
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .map_err(io)?;
    let mut text = serde_json::to_string(request)
        .map_err(|e| ControlError::new(ErrorKind::Failed, e.to_string()))?;
    text.push('\n');
    stream.write_all(text.as_bytes()).map_err(io)?;
    let mut line = String::new();
    BufReader::new(stream.take(64 << 20))
        .read_line(&mut line)
        .map_err(io)?;
    if line.is_empty() {
        // The server closes at once on a peer it does not serve.
        return Err(ControlError::new(
            ErrorKind::Permission,
            format!(
                "the server at {} hung up: this user is not allowed (same uid as the server, or root)",
                socket.display()
            ),
        ));
    }
    let response: Response = serde_json::from_str(&line).map_err(|e| {
        ControlError::new(
            ErrorKind::Failed,
            format!("bad response from the server: {e}"),
        )
    })?;
    match response {
        Response {
            ok: true, result, ..
        } => Ok(result.unwrap_or(Value::Null)),
        Response { error, kind, .. } => Err(ControlError::new(
            kind.unwrap_or(ErrorKind::Failed),
            error.unwrap_or_else(|| "the server refused without a reason".into()),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builtin::sample::SampleBackend;
    use crate::registry::Registry;
    use vfio_variant::server::ServerConfig;

    #[test]
    fn requests_over_the_socket() {
        let dir = std::env::temp_dir().join(format!("vfio-variant-control-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut registry = Registry::new();
        registry.register(Arc::new(SampleBackend::new(1))).unwrap();
        let service = Arc::new(Service::new(
            registry,
            dir.clone(),
            dir.join("state"),
            ServerConfig::default(),
        ));
        let path = socket_path(&dir);
        let listener = bind(&path).unwrap();
        assert!(
            bind(&path).is_err(),
            "a second server on the same socket is refused"
        );
        let stop = rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC).unwrap();
        let stop_writer = rustix::io::dup(&stop).unwrap();
        let server = {
            let service = Arc::clone(&service);
            std::thread::spawn(move || serve(service, listener, &stop))
        };
        let types = request(&path, &Request::Types).unwrap();
        assert_eq!(types[0]["profiles"][0]["available_instances"], 1);
        let created = request(
            &path,
            &Request::Create(CreateSpec {
                backend: "sample".into(),
                name: Some("x".into()),
                ..Default::default()
            }),
        )
        .unwrap();
        assert_eq!(created["name"], "x");
        let err = request(
            &path,
            &Request::Create(CreateSpec {
                backend: "sample".into(),
                ..Default::default()
            }),
        )
        .unwrap_err();
        assert!(err.message.contains("no instance"), "{err}");
        assert_eq!(err.kind, ErrorKind::Backend);
        assert_eq!(
            request(&path, &Request::List)
                .unwrap()
                .as_array()
                .unwrap()
                .len(),
            1
        );
        request(
            &path,
            &Request::Destroy {
                name: "x".into(),
                force: false,
            },
        )
        .unwrap();
        assert!(
            request(
                &path,
                &Request::Destroy {
                    name: "x".into(),
                    force: false
                }
            )
            .is_err()
        );
        // Garbage gets an error response, and the socket keeps working.
        let mut raw = UnixStream::connect(&path).unwrap();
        raw.write_all(b"{not json\n").unwrap();
        let mut line = String::new();
        BufReader::new(raw).read_line(&mut line).unwrap();
        assert!(line.contains("\"ok\":false"), "{line}");
        rustix::io::write(&stop_writer, &1u64.to_ne_bytes()).unwrap();
        server.join().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
