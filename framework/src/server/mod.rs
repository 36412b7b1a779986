//! The vfio-user device server: one Unix socket per virtual function, any number of functions
//! per process, each connection served by its own thread so no client can stall another.
//!
//! Where to look: sockets, permissions and accepting clients in this file; a connection's
//! thread in `connection.rs`; what each command does in `handler.rs`; the migration commands in
//! `migration.rs`; DMA dirty logging in `dma_logging.rs`; the twin socket of twin-socket mode
//! in `twin.rs`; client memory in [`dma`]; client eventfds in [`irq`].

mod connection;
pub mod dma;
mod dma_logging;
mod handler;
pub mod irq;
mod migration;
mod twin;

use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::Mutex;
use rustix::event::{EventfdFlags, PollFd, PollFlags, eventfd, poll};

use crate::backend::{FunctionContext, Interrupt, InterruptSink};
use crate::device::VirtualFunction;
use crate::layout::CapabilityBody;
use crate::pci::cap;
use crate::vfio_user::dma::DmaLayout;
use crate::vfio_user::irq::{IRQ_INDEX_ERR, IRQ_INDEX_MSI, IRQ_INDEX_MSIX, IRQ_INDEX_REQ};
use crate::vfio_user::socket::peer_credentials;
use crate::vfio_user::{Limits, ServerOffer};
use dma::DmaTable;
use irq::IrqTable;

/// How the server exposes functions.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Permission bits of each socket (0o600: the owner only).
    pub socket_mode: u32,
    /// Group of each socket, when the VMMs run in a group rather than as the owner.
    pub socket_group: Option<u32>,
    /// Peer uids allowed to connect (SO_PEERCRED); empty allows the server's own uid only.
    pub allowed_uids: Vec<u32>,
    /// What VERSION offers. Twin-socket mode is offered by default (a client gets it only
    /// when it asks); `twin_socket: false` turns it off.
    pub offer: ServerOffer,
    /// Bounds on every message before VERSION settles the transfer size.
    pub limits: Limits,
    /// Layout of DMA_READ/DMA_WRITE messages (the spec's by default, which QEMU 11 uses).
    pub dma_layout: DmaLayout,
    /// How long a DMA_READ/DMA_WRITE waits for the client.
    pub dma_timeout: Duration,
    /// Polling mode, for servers on dedicated cores: a connection spins this long waiting for
    /// the next message before it sleeps in the kernel (`None`: it always sleeps).
    pub poll: Option<Duration>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            socket_mode: 0o600,
            socket_group: None,
            allowed_uids: Vec::new(),
            offer: ServerOffer {
                twin_socket: true,
                ..ServerOffer::default()
            },
            limits: Limits::default(),
            dma_layout: DmaLayout::Spec,
            dma_timeout: Duration::from_secs(5),
            poll: None,
        }
    }
}

impl ServerConfig {
    fn allows(&self, uid: u32) -> bool {
        if self.allowed_uids.is_empty() {
            uid == rustix::process::geteuid().as_raw()
        } else {
            self.allowed_uids.contains(&uid)
        }
    }
}

/// A function as the server holds it: the device, its DMA table and interrupt table. They
/// outlive connections: a new client finds the device as the last one left it.
pub struct Port {
    name: String,
    function: Arc<VirtualFunction>,
    dma: Arc<DmaTable>,
    irqs: Arc<IrqTable>,
    migration: migration::ReplyBuffer,
    logging: dma_logging::ReportBuffer,
}

/// Forwards a function's interrupts to the current client's eventfds.
struct PortInterrupts {
    irqs: Arc<IrqTable>,
}

impl InterruptSink for PortInterrupts {
    fn raise(&self, interrupt: Interrupt) {
        match interrupt {
            // The line as the device raises it (COMMAND.INTX_DISABLE applied).
            Interrupt::Intx(level) => self.irqs.set_intx(level),
            Interrupt::Msi(v) => self.irqs.raise(IRQ_INDEX_MSI, v),
            Interrupt::Msix(v) => self.irqs.raise(IRQ_INDEX_MSIX, v),
            Interrupt::Error => self.irqs.raise(IRQ_INDEX_ERR, 0),
            Interrupt::Request => self.irqs.raise(IRQ_INDEX_REQ, 0),
        }
    }
}

impl Port {
    /// Wraps a virtual function and attaches it to the port's DMA and interrupts.
    /// Its migration streams name no backend or profile; see [`Port::for_backend`].
    pub fn new(name: impl Into<String>, function: Arc<VirtualFunction>) -> Arc<Self> {
        Self::for_backend(name, function, "", "")
    }

    /// As [`Port::new`], for a function of `backend` with `profile`: migration streams carry
    /// both names, and a destination refuses a stream of another backend or profile.
    pub fn for_backend(
        name: impl Into<String>,
        function: Arc<VirtualFunction>,
        backend: &str,
        profile: &str,
    ) -> Arc<Self> {
        let layout = function.template().layout().clone();
        let intx = u32::from(layout.header.interrupt_pin != 0);
        let (mut msi, mut msix) = (0, 0);
        for c in &layout.capabilities {
            match &c.body {
                CapabilityBody::Msi(p) => msi = u32::from(p.vectors),
                CapabilityBody::Msix(p) => msix = u32::from(p.table_size),
                CapabilityBody::Physical {
                    id: cap::CAP_MSI, ..
                } => msi = 1,
                _ => {}
            }
        }
        let irqs = Arc::new(IrqTable::new([intx, msi, msix, 1, 1]));
        let dma = Arc::new(DmaTable::new());
        let pending = Arc::downgrade(&irqs);
        function.set_msix_pending(Some(Arc::new(move |vector| {
            pending
                .upgrade()
                .is_some_and(|irqs| irqs.pending(IRQ_INDEX_MSIX, vector))
        })));
        function.set_stream_names(backend, profile);
        function.attach(FunctionContext {
            dma: Arc::clone(&dma) as _,
            interrupts: Arc::new(PortInterrupts {
                irqs: Arc::clone(&irqs),
            }),
        });
        Arc::new(Self {
            name: name.into(),
            function,
            dma,
            irqs,
            migration: migration::ReplyBuffer::default(),
            logging: dma_logging::ReportBuffer::default(),
        })
    }

    /// The function's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The virtual function.
    pub fn function(&self) -> &Arc<VirtualFunction> {
        &self.function
    }

    /// The function's migration state (RUNNING for a function that never migrated): a
    /// source left in STOP after its state moved elsewhere shows here.
    pub fn migration_state(&self) -> crate::migration::MigrationState {
        self.function.migration_state()
    }
}

/// Serves one already connected client on the calling thread until it goes away: for a VMM
/// that hands over one end of a socketpair, and for tests. The device state stays.
pub fn serve_connection(port: &Arc<Port>, config: &Arc<ServerConfig>, stream: UnixStream) {
    connection::serve(Arc::clone(port), Arc::clone(config), stream);
}

/// Why a function could not be exposed.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    /// The socket could not be created.
    #[error("socket {path}: {source}")]
    Socket {
        /// Socket path.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
}

struct Shared {
    port: Arc<Port>,
    config: Arc<ServerConfig>,
    path: PathBuf,
    stopping: AtomicBool,
    /// Signalled to wake the acceptor when the endpoint goes away.
    stop: OwnedFd,
    client: Mutex<Option<UnixStream>>,
}

/// A function exposed on a Unix socket. Dropping it stops accepting, disconnects the client
/// and removes the socket.
pub struct Endpoint {
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl Endpoint {
    /// Creates the socket at `path` (mode and group from `config`) and serves `port` on it.
    pub fn bind(
        port: Arc<Port>,
        path: &Path,
        config: Arc<ServerConfig>,
    ) -> Result<Self, EndpointError> {
        let error = |source| EndpointError::Socket {
            path: path.to_path_buf(),
            source,
        };
        if std::fs::symlink_metadata(path)
            .is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()))
        {
            // A socket left by a server that is gone; a live one would still accept.
            if UnixStream::connect(path).is_err() {
                std::fs::remove_file(path).map_err(error)?;
            }
        }
        // Permissions are set right after bind (umask is process-wide, so not touched); a peer
        // that races in before is still checked against the allowed uids.
        let listener = UnixListener::bind(path).map_err(error)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(config.socket_mode))
            .map_err(error)?;
        if let Some(gid) = config.socket_group {
            rustix::fs::chown(path, None, Some(rustix::fs::Gid::from_raw(gid)))
                .map_err(|e| error(e.into()))?;
        }
        let stop = eventfd(0, EventfdFlags::CLOEXEC).map_err(|e| error(e.into()))?;
        let shared = Arc::new(Shared {
            port,
            config,
            path: path.to_path_buf(),
            stopping: AtomicBool::new(false),
            stop,
            client: Mutex::new(None),
        });
        let acceptor = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name(format!("accept {}", shared.port.name))
                .spawn(move || accept_loop(&shared, &listener))
                .map_err(error)?
        };
        Ok(Self {
            shared,
            acceptor: Some(acceptor),
        })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// The function served.
    pub fn port(&self) -> &Arc<Port> {
        &self.shared.port
    }

    /// Whether a client is connected.
    pub fn is_attached(&self) -> bool {
        self.shared.client.lock().is_some()
    }

    /// Asks the client to release the device (REQ interrupt), then disconnects it.
    pub fn disconnect(&self) {
        self.shared.port.irqs.raise(IRQ_INDEX_REQ, 0);
        if let Some(client) = self.shared.client.lock().as_ref() {
            let _ = client.shutdown(std::net::Shutdown::Both);
        }
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        self.disconnect();
        let _ = rustix::io::write(&self.shared.stop, &1u64.to_ne_bytes());
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        let _ = std::fs::remove_file(&self.shared.path);
    }
}

/// Waits for a client or the stop signal; `None` when stopping.
fn next_client(shared: &Shared, listener: &UnixListener) -> Option<io::Result<UnixStream>> {
    loop {
        if shared.stopping.load(Ordering::SeqCst) {
            return None;
        }
        let mut fds = [
            PollFd::new(listener, PollFlags::IN),
            PollFd::new(&shared.stop, PollFlags::IN),
        ];
        match poll(&mut fds, None) {
            Ok(_) if !fds[1].revents().is_empty() => return None,
            Ok(_) if !fds[0].revents().is_empty() => {
                return Some(listener.accept().map(|(s, _)| s));
            }
            Ok(_) | Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Some(Err(e.into())),
        }
    }
}

/// Whether the current client hung up (or its connection is already over).
fn previous_left(shared: &Shared) -> bool {
    let client = shared.client.lock();
    let Some(stream) = client.as_ref() else {
        return true;
    };
    let mut fds = [PollFd::new(stream, PollFlags::RDHUP)];
    matches!(poll(&mut fds, Some(&rustix::event::Timespec::default())), Ok(n) if n > 0)
        && fds[0]
            .revents()
            .intersects(PollFlags::HUP | PollFlags::RDHUP | PollFlags::ERR)
}

fn accept_loop(shared: &Arc<Shared>, listener: &UnixListener) {
    let mut connection: Option<JoinHandle<()>> = None;
    while let Some(stream) = next_client(shared, listener) {
        let stream = match stream {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("{}: accept: {e}", shared.port.name);
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        let peer = match peer_credentials(&stream) {
            Ok(peer) => peer,
            Err(e) => {
                tracing::warn!("{}: no peer credentials: {e}", shared.port.name);
                continue;
            }
        };
        if !shared.config.allows(peer.uid) {
            tracing::warn!(
                "{}: refused a client with uid {} (pid {})",
                shared.port.name,
                peer.uid,
                peer.pid
            );
            continue;
        }
        // Busy while the last client's connection is served, unless that client has hung up:
        // its thread may still be winding down (unmapping its DMA, closing its eventfds, its
        // `detached` line), and is joined below before the one that reconnected is served.
        let held = shared.client.lock().is_some();
        if held && !previous_left(shared) {
            tracing::warn!(
                "{}: refused a second client (pid {})",
                shared.port.name,
                peer.pid
            );
            continue;
        }
        // The previous client may have left a moment ago with its connection thread still
        // winding down (unmapping its DMA, closing its eventfds): wait for it, then serve the
        // one that reconnected.
        if let Some(previous) = connection.take() {
            let _ = previous.join();
        }
        // The handle `disconnect` shuts down; without one the client is not served.
        let handle = match stream.try_clone() {
            Ok(handle) => handle,
            Err(e) => {
                tracing::warn!("{}: cannot keep the client's socket: {e}", shared.port.name);
                continue;
            }
        };
        *shared.client.lock() = Some(handle);
        let served = Arc::clone(shared);
        let spawned = std::thread::Builder::new()
            .name(format!("client {}", shared.port.name))
            .spawn(move || {
                // Every line the connection logs (migration steps too) names the function
                // and the peer.
                let span = tracing::info_span!(
                    "client",
                    function = %served.port.name,
                    pid = peer.pid,
                    uid = peer.uid
                );
                let _entered = span.enter();
                tracing::info!("attached");
                connection::serve(Arc::clone(&served.port), Arc::clone(&served.config), stream);
                *served.client.lock() = None;
                tracing::info!("detached");
            });
        match spawned {
            Ok(handle) => connection = Some(handle),
            Err(e) => {
                tracing::warn!(
                    "{}: cannot start a connection thread: {e}",
                    shared.port.name
                );
                *shared.client.lock() = None;
            }
        }
    }
    if let Some(c) = connection {
        let _ = c.join();
    }
}
