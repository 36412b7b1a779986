//! `migrate` and `migrate-agent`: moving a function's device state to another function, on
//! this host or on another one reached over TCP through the agent there.
//!
//! Both sides speak vfio-user to their function's socket, so the functions must not have a
//! VMM attached (the server takes one client per function); a VMM that keeps its connection
//! embeds `vfio_variant::migration_driver` instead. Between hosts the link is TLS 1.3 with a
//! certificate on each side (`vfio_variant::migration_driver::tls`); there is no plaintext mode.
//! On this host the state goes through one buffer shared with both servers
//! (`migration_driver::share_buffer`) when both offer `mig_data_shared`, inline otherwise.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::time::Duration;

use clap::Args;
use rustix::io::Errno;
use serde_json::json;
use vfio_variant::migration::MigrationFlags;
use vfio_variant::migration_driver::{
    LocalDestination, MigrateError, Observer, Options, Progress, RemoteDestination, Report, Served,
    migrate, serve_destination, share_buffer, tls,
};
use vfio_variant::vfio_user::{Client, ClientError, ClientOptions};

use super::dirs::Dirs;
use super::{CliError, ErrorKind, Outcome, print_json};
use crate::lifecycle::InstanceInfo;
use crate::lifecycle::control::{self, Request};
use crate::lifecycle::names::check_name;

/// How long one side waits on a silent other before it gives up (the agent puts the function
/// back; the source runs again).
const AGENT_LINK_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the agent gives a peer to complete the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most handshakes the agent runs at once; a peer past that is turned away at once.
const MAX_HANDSHAKES: usize = 16;

/// Arguments of `migrate`.
#[derive(Args)]
pub struct MigrateArgs {
    /// The source function: a name in the run directory, or a socket path.
    source: String,
    /// The destination function on this host: a name in the run directory, or a socket path.
    #[arg(long, value_name = "FUNCTION", required_unless_present = "agent")]
    to: Option<String>,
    /// A `vfio-variant migrate-agent` on the destination host (needs --cert, --key, --ca).
    #[arg(
        long,
        value_name = "HOST:PORT",
        conflicts_with = "to",
        requires_all = ["cert", "key", "ca"]
    )]
    agent: Option<String>,
    /// The destination function's name at the agent [default: the source's name].
    #[arg(long, value_name = "NAME", requires = "agent")]
    function: Option<String>,
    /// This host's certificate (PEM), presented to the agent.
    #[arg(long, value_name = "FILE", requires = "agent")]
    cert: Option<PathBuf>,
    /// The private key of --cert (PEM).
    #[arg(long, value_name = "FILE", requires = "agent")]
    key: Option<PathBuf>,
    /// The CA certificate(s) (PEM) the agent's certificate must be signed by.
    #[arg(long, value_name = "FILE", requires = "agent")]
    ca: Option<PathBuf>,
    /// The name the agent's certificate must carry [default: the host part of --agent].
    #[arg(long, value_name = "NAME", requires = "agent")]
    agent_name: Option<String>,
    /// Stop the source at once instead of running pre-copy rounds first.
    #[arg(long)]
    no_precopy: bool,
    /// Most pre-copy rounds.
    #[arg(long, default_value_t = 30)]
    max_rounds: u32,
    /// Machine-readable output (the report, at the end).
    #[arg(long)]
    json: bool,
}

impl MigrateArgs {
    /// Whether `--json` was given.
    pub fn json(&self) -> bool {
        self.json
    }
}

/// Arguments of `migrate-agent`.
#[derive(Args)]
pub struct AgentArgs {
    /// Address to accept migrations on (the only one the agent binds).
    #[arg(long, value_name = "HOST:PORT")]
    listen: String,
    /// This host's certificate (PEM), presented to sources.
    #[arg(long, value_name = "FILE")]
    cert: PathBuf,
    /// The private key of --cert (PEM).
    #[arg(long, value_name = "FILE")]
    key: PathBuf,
    /// The CA certificate(s) (PEM) a source's certificate must be signed by.
    #[arg(long, value_name = "FILE")]
    client_ca: PathBuf,
    /// Serve one migration, then exit (with its outcome).
    #[arg(long)]
    once: bool,
}

/// A function's socket: a path as given, or the name's socket in the run directory.
fn socket(function: &str, dirs: &Dirs) -> PathBuf {
    if function.contains('/') {
        PathBuf::from(function)
    } else {
        dirs.run_dir().join(format!("{function}.sock"))
    }
}

/// Connects to `function`'s socket, asking for `mig_data_shared` (used only when both sides
/// of a migration on this host offer it).
fn connect(function: &str, dirs: &Dirs) -> Result<Client, String> {
    let path = socket(function, dirs);
    let options = ClientOptions {
        mig_data_shared: true,
        ..ClientOptions::default()
    };
    Client::connect_with(&path, options).map_err(|e| match e {
        // The server closes a second client's connection at once.
        ClientError::Closed => busy(&path),
        ClientError::Io(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
            ) =>
        {
            busy(&path)
        }
        e => format!("{}: {e}", path.display()),
    })
}

/// What to say when the server hung up on us.
fn busy(path: &std::path::Path) -> String {
    format!(
        "{}: the server closed the connection: is a VMM attached? (one client per function; \
         a VMM migrates its functions itself with vfio_variant::migration_driver)",
        path.display()
    )
}

/// Prints each step as it happens (on stderr with --json, so stdout is the report only).
struct Printer {
    json: bool,
}

impl Observer for Printer {
    fn progress(&mut self, progress: &Progress) {
        let line = match progress {
            Progress::Started { flags } => {
                format!("destination resuming; source offers {}", flag_names(*flags))
            }
            Progress::PrecopyRound { round, bytes } => {
                format!("pre-copy round {round}: {bytes} bytes")
            }
            Progress::StopCopy { bytes } => format!("source stopped; stop-copy: {bytes} bytes"),
            Progress::Resumed => "destination running".to_string(),
        };
        if self.json {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
    }
}

/// Migration flags as operators read them: `stop-copy, p2p, pre-copy`.
fn flag_names(flags: MigrationFlags) -> String {
    let names: Vec<String> = flags
        .iter_names()
        .map(|(name, _)| name.to_lowercase().replace('_', "-"))
        .collect();
    if names.is_empty() {
        "no migration".into()
    } else {
        names.join(", ")
    }
}

/// What to say when the source cannot migrate: its profile (from the server, when the
/// source is a function name there) and where to look for one that can.
fn not_migratable(source: &str, dirs: &Dirs) -> CliError {
    let profile = control::request(&control::socket_path(&dirs.run_dir()), &Request::List)
        .ok()
        .and_then(|list| serde_json::from_value::<Vec<InstanceInfo>>(list).ok())
        .and_then(|list| list.into_iter().find(|i| i.name == name_of(source)))
        .map(|i| format!(" (profile `{}` of `{}`)", i.profile, i.backend))
        .unwrap_or_default();
    CliError::new(
        ErrorKind::Backend,
        format!(
            "function `{source}` is not migratable{profile}; `vfio-variant types` marks the \
             profiles that are"
        ),
    )
}

/// Prints the report; `shared` is the size of the buffer the state went through, if it did.
fn print_report(report: &Report, shared: Option<usize>, json: bool) -> Result<(), CliError> {
    if json {
        return print_json(&json!({
            "flags": report.flags.bits(),
            "precopy_rounds": report.precopy_rounds,
            "stop_copy_bytes": report.stop_copy_bytes,
            "bytes": report.bytes(),
            "downtime_us": report.downtime.as_micros() as u64,
            "total_us": report.total.as_micros() as u64,
            "shared_buffer_bytes": shared,
        }));
    }
    let through = match shared {
        Some(len) => format!("through a shared buffer of {} KiB", len >> 10),
        None => "inline".to_string(),
    };
    println!(
        "migrated {} bytes in {:.1} ms ({through}); downtime {:.3} ms",
        report.bytes(),
        report.total.as_secs_f64() * 1e3,
        report.downtime.as_secs_f64() * 1e3
    );
    Ok(())
}

/// `vfio-variant migrate`.
pub fn run(args: MigrateArgs, dirs: &Dirs) -> Result<Outcome, CliError> {
    let options = Options {
        precopy: !args.no_precopy,
        max_precopy_rounds: args.max_rounds,
        ..Options::default()
    };
    let mut source = connect(&args.source, dirs).map_err(CliError::failed)?;
    let mut printer = Printer { json: args.json };
    let mut shared = None;
    let report = if let Some(agent) = &args.agent {
        let (Some(cert), Some(key), Some(ca)) = (&args.cert, &args.key, &args.ca) else {
            return Err(CliError::failed(
                "--agent needs --cert, --key and --ca (see docs/migration.md)",
            ));
        };
        let files = tls::TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
            ca: ca.clone(),
        };
        let config = tls::source_config(&files).map_err(|e| CliError::failed(e.to_string()))?;
        let link = tls::connect(
            agent,
            args.agent_name.as_deref(),
            config,
            Some(AGENT_LINK_TIMEOUT),
        )
        .map_err(|e| CliError::failed(format!("no migration, the source keeps running: {e}")))?;
        let name = match &args.function {
            Some(name) => name.clone(),
            None => name_of(&args.source),
        };
        let mut destination = RemoteDestination::new(link, name);
        migrate(&mut source, &mut destination, &options, &mut printer)
    } else {
        let to = args.to.as_deref().unwrap_or_default();
        let mut target = connect(to, dirs).map_err(CliError::failed)?;
        // Without a shared buffer the state goes inline; the migration itself says why a
        // function that does not migrate (ENOTTY) cannot.
        match share_buffer(&mut source, &mut target) {
            Ok(buffer) => shared = buffer.map(|b| b.len()),
            Err(e) if e.errno() == Errno::NOTTY.raw_os_error() => {}
            Err(e) => tracing::warn!("no shared buffer, the state goes inline: {e}"),
        }
        let mut destination = LocalDestination::new(&mut target);
        migrate(&mut source, &mut destination, &options, &mut printer)
    }
    .map_err(|e| match e {
        MigrateError::Unsupported(_) => not_migratable(&args.source, dirs),
        MigrateError::Source(e) if e.errno == Errno::NOTTY.raw_os_error() => {
            not_migratable(&args.source, dirs)
        }
        e => CliError::failed(format!("migration failed, the source keeps running: {e}")),
    })?;
    print_report(&report, shared, args.json)?;
    Ok(Outcome::Success)
}

/// The function name in a name or socket path (`/run/x/blk0.sock` is `blk0`).
fn name_of(function: &str) -> String {
    let base = function.rsplit('/').next().unwrap_or(function);
    base.strip_suffix(".sock").unwrap_or(base).to_string()
}

/// Accepts peers on `listener` for ever, each handshake on a thread of its own (so a peer that
/// stalls delays no other), and hands the authenticated links on to `links`. A peer that is
/// not authenticated is refused before anything it sends is read as a message: no function is
/// opened for it.
fn authenticate(
    listener: TcpListener,
    config: Arc<tls::ServerConfig>,
    links: mpsc::Sender<(tls::DestinationLink, SocketAddr)>,
) {
    let in_flight = Arc::new(AtomicUsize::new(0));
    loop {
        let (stream, peer) = match listener.accept() {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!("accept: {e}");
                continue;
            }
        };
        if in_flight.fetch_add(1, Ordering::AcqRel) >= MAX_HANDSHAKES {
            in_flight.fetch_sub(1, Ordering::AcqRel);
            println!("{peer}: refused: {MAX_HANDSHAKES} handshakes already in progress");
            continue;
        }
        let (config, links, counter) = (config.clone(), links.clone(), in_flight.clone());
        let spawned = std::thread::Builder::new()
            .name("handshake".into())
            .spawn(move || {
                let result = handshake(stream, config);
                counter.fetch_sub(1, Ordering::AcqRel);
                match result {
                    // The receiver is gone only when the agent is exiting.
                    Ok(link) => drop(links.send((link, peer))),
                    Err(e) => println!("{peer}: refused: {e}"),
                }
            });
        if let Err(e) = spawned {
            in_flight.fetch_sub(1, Ordering::AcqRel);
            tracing::warn!("{peer}: no thread for the handshake: {e}");
        }
    }
}

/// The agent's side of one peer's handshake, with the link's timeouts.
fn handshake(
    stream: TcpStream,
    config: Arc<tls::ServerConfig>,
) -> Result<tls::DestinationLink, String> {
    stream
        .set_read_timeout(Some(HANDSHAKE_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(AGENT_LINK_TIMEOUT)))
        .and_then(|()| stream.set_nodelay(true))
        .map_err(|e| e.to_string())?;
    let link = tls::accept(stream, config).map_err(|e| e.to_string())?;
    link.sock
        .set_read_timeout(Some(AGENT_LINK_TIMEOUT))
        .map_err(|e| e.to_string())?;
    Ok(link)
}

/// `vfio-variant migrate-agent`.
pub fn agent(args: AgentArgs, dirs: &Dirs) -> Result<Outcome, CliError> {
    let config = tls::destination_config(&tls::TlsFiles {
        cert: args.cert.clone(),
        key: args.key.clone(),
        ca: args.client_ca.clone(),
    })
    .map_err(|e| CliError::failed(e.to_string()))?;
    let listener = TcpListener::bind(&args.listen)
        .map_err(|e| CliError::failed(format!("{}: {e}", args.listen)))?;
    let address = listener
        .local_addr()
        .map_err(|e| CliError::failed(format!("{}: {e}", args.listen)))?;
    println!("vfio-variant: accepting migrations on {address}");
    let (sender, links) = mpsc::channel();
    std::thread::Builder::new()
        .name("accept".into())
        .spawn(move || authenticate(listener, config, sender))
        .map_err(|e| CliError::failed(format!("accept thread: {e}")))?;
    // One migration at a time, in the order the sources were authenticated.
    for (mut link, peer) in links {
        let outcome = serve_destination(&mut link, |name| {
            check_name(name).and_then(|name| connect(&name, dirs))
        });
        let resumed = matches!(outcome, Ok(Served::Resumed { .. }));
        match outcome {
            Ok(Served::Resumed { bytes }) => {
                println!("{peer}: migration resumed ({bytes} bytes)");
            }
            Ok(Served::Refused(reason)) => println!("{peer}: migration refused: {reason}"),
            Err(e) => println!("{peer}: migration abandoned: {e}"),
        }
        if args.once {
            return Ok(if resumed {
                Outcome::Success
            } else {
                Outcome::No
            });
        }
    }
    Err(CliError::failed("the accept thread stopped"))
}
