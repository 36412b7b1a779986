//! The vfio-user server over real Unix sockets, with the framework's client and the sample
//! function. Prints `BENCH name value unit [ratio=.. vs=..]`:
//! - `config_read_rtt`: a 4-byte config read (REGION_READ of region 7), against
//!   `socketpair_pingpong_rtt`, a bare ping-pong of the same message sizes between two threads,
//!   their rounds interleaved;
//! - `posted_writes_per_second`: No_reply REGION_WRITEs to a BAR 0 register, each round closed
//!   by a read that sees the last one;
//! - `rss_per_idle_function` with its parts (`rss_per_function_template`, `_backend`,
//!   `_endpoint`): 1024 functions created as `vfio-variant create` does (sharing the compiled
//!   layout), each behind its own endpoint;
//! - `config_read_rtt_1024`: a round trip to one of them, the others idle, against the round
//!   trip with one function in the process;
//! - `config_read_rtt_polling`: the round trip with the server in polling mode, against the
//!   blocking ping-pong floor of the same rounds;
//! - `write_multi_writes_per_second`: the posted writes' values sent as REGION_WRITE_MULTI
//!   messages of 64 entries;
//! - `private_dma_4k_copy`: a 4 KiB copy by the sample's DMA engine within guest RAM the client
//!   keeps private (mapped without an fd), from the START write until DMA_STATUS reads done,
//!   the client answering the DMA_READ and DMA_WRITE on the main socket while it polls, and
//!   `private_dma_4k_copy_twin` the same in twin-socket mode (answered on the client's twin
//!   socket thread), its ratio against the first.
//!
//! Beside them, libvfio-user's gpio sample (a separate process, see [`libvfio_user`]), reached
//! with the same client and measured in the same rounds: `libvfio_user_config_read_rtt` (the
//! same 4-byte config read), `libvfio_user_posted_writes_per_second` (posted 4-byte writes to
//! its BAR, each round closed by a config read), and our figures against them:
//! `config_read_rtt_vs_libvfio_user`, `posted_writes_per_second` and
//! `write_multi_writes_per_second` (libvfio-user serves no REGION_WRITE_MULTI) take ratios
//! against libvfio-user when it runs. Without it (`cargo xtask bench` could not build it) a
//! `PEER` line says why and the other figures go on.
//!
//! Where threads run decides round trips on a small machine: a wake-up on another CPU costs
//! far more than a switch on the same one, and the scheduler places the client and the
//! server's threads differently from run to run. So round trips are measured with threads
//! pinned: the client on one CPU and the server on another (the plain names: a VMM's vCPU and
//! the server on cores of their own), and everything on one CPU (`_one_cpu`: what is left is
//! each side's own work and its thread switches); once more where the scheduler puts them
//! (`_unpinned`).

use std::hint::black_box;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vfio_variant::backend::{Backend, CreateRequest, Function};
use vfio_variant::config::ConfigTemplate;
use vfio_variant::device::{CONFIG_REGION, VirtualFunction};
use vfio_variant::server::{Endpoint, Port, ServerConfig};
use vfio_variant::vfio_user::access::WriteMultiEntry;
use vfio_variant::vfio_user::access::{RegionRead, RegionReadReply};
use vfio_variant::vfio_user::dma::{DmaMap, DmaMapFlags};
use vfio_variant::vfio_user::{
    Client, ClientOptions, Command, DmaHandler, HEADER_SIZE, Header, Payload,
};
use vfio_variant::vpci::{compile::compile, parse_layout};
use vfio_variant_backends::builtin::sample::registers::{
    DMA_CMD, DMA_CMD_START, DMA_DST_LO, DMA_LEN, DMA_SRC_LO, DMA_STATUS, DMA_STATUS_BUSY, SCRATCH,
};
use vfio_variant_backends::builtin::sample::{LAYOUT, SampleBackend};

use libvfio_user::{BAR as PEER_BAR, Peer};

mod libvfio_user;
mod plot;

/// Where the SVG chart of the side-by-side figures goes (set by `cargo xtask bench`).
const PLOT_ENV: &str = "VFIO_VARIANT_BENCH_PLOT";

/// The peer's name in figures.
const PEER: &str = "libvfio_user";

/// Rounds of every measurement; the median is reported.
const ROUNDS: usize = 7;
/// Round trips per round (15 to 70 µs each on this machine class, by placement).
const RTT_ITERATIONS: u32 = 5_000;
/// Round trips before the first round.
const WARMUP_ITERATIONS: u32 = 500;
/// Posted writes per round.
const POSTED_WRITES: u32 = 50_000;
/// Entries per REGION_WRITE_MULTI message (the server's default `max_write_multi` is 256).
const MULTI_ENTRIES: usize = 64;
/// Functions exposed at once for the memory figure.
const FUNCTIONS: usize = 1024;
/// File descriptors held per idle function (socket, stop eventfd, shared-memory memfd), with
/// one to spare.
const FDS_PER_FUNCTION: u64 = 4;
/// Bytes of each sample DMA copy in the private-RAM figures.
const DMA_BYTES: u32 = 4096;
/// Where the private guest RAM sits in the function's DMA space.
const RAM_IOVA: u64 = 0x10_0000;
/// Vendor and device ID of the sample function, as the first config dword reads.
const SAMPLE_IDS: [u8; 4] = [0x34, 0x12, 0xf8, 0x11];

/// Median of `samples`.
fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

/// Prints one figure, with its ratio to a baseline when there is one.
fn report(name: &str, value: f64, unit: &str, baseline: Option<(&str, f64)>) {
    match baseline {
        Some((base, base_value)) => println!(
            "BENCH {name} {value:.2} {unit} ratio={:.2} vs={base}",
            value / base_value
        ),
        None => println!("BENCH {name} {value:.2} {unit}"),
    }
}

/// µs per call of `op` over one round.
fn time_round(op: &mut dyn FnMut()) -> f64 {
    let start = Instant::now();
    for _ in 0..RTT_ITERATIONS {
        op();
    }
    start.elapsed().as_secs_f64() * 1e6 / f64::from(RTT_ITERATIONS)
}

/// Median µs per call of each of `ops`, their rounds interleaved so that all see the same
/// machine (the other load on it changes from second to second).
fn measure(ops: &mut [&mut dyn FnMut()]) -> Vec<f64> {
    for _ in 0..WARMUP_ITERATIONS {
        for op in ops.iter_mut() {
            op();
        }
    }
    let mut samples = vec![Vec::with_capacity(ROUNDS); ops.len()];
    for _ in 0..ROUNDS {
        for (op, samples) in ops.iter_mut().zip(&mut samples) {
            samples.push(time_round(op));
        }
    }
    samples.into_iter().map(median).collect()
}

/// The CPUs this process may run on.
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: `cpu_set_t` is a plain bit array: all zeros is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: the kernel writes at most `size_of_val(&set)` bytes into `set`, which lives here.
    let done = unsafe { libc::sched_getaffinity(0, size_of_val(&set), &mut set) };
    assert_eq!(done, 0, "sched_getaffinity");
    (0..libc::CPU_SETSIZE as usize)
        // SAFETY: `cpu` is below CPU_SETSIZE, the number of bits in `set`.
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect()
}

/// Moves the calling thread to `cpus`; threads it spawns from now on start there.
fn run_on(cpus: &[usize]) {
    // SAFETY: as in `allowed_cpus`, all zeros is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &cpu in cpus {
        // SAFETY: `cpu` came from `allowed_cpus`, so it is below CPU_SETSIZE.
        unsafe { libc::CPU_SET(cpu, &mut set) };
    }
    // SAFETY: the kernel reads `size_of_val(&set)` bytes of `set`, which lives here.
    let done = unsafe { libc::sched_setaffinity(0, size_of_val(&set), &set) };
    assert_eq!(done, 0, "sched_setaffinity {cpus:?}");
}

/// Where the client and the server's threads run. Threads inherit the affinity of the thread
/// that spawns them: an endpoint's acceptor that of the thread that binds it, a connection's
/// threads that of the acceptor.
#[derive(Debug, Clone)]
struct Placement {
    /// CPUs of the server's threads (and of the echo thread).
    server: Vec<usize>,
    /// CPUs of the client.
    client: Vec<usize>,
}

impl Placement {
    /// The client on the first allowed CPU, the server on the second (a VMM's vCPU and the
    /// server on cores of their own).
    fn split(allowed: &[usize]) -> Self {
        Self {
            server: vec![*allowed.get(1).unwrap_or(&allowed[0])],
            client: allowed[..1].to_vec(),
        }
    }

    /// Everything on `cpu`.
    fn one_cpu(cpu: usize) -> Self {
        Self {
            server: vec![cpu],
            client: vec![cpu],
        }
    }

    /// Wherever the scheduler puts them.
    fn unpinned(allowed: &[usize]) -> Self {
        Self {
            server: allowed.to_vec(),
            client: allowed.to_vec(),
        }
    }

    /// Runs `start` on the server's CPUs, so that the endpoints and threads it starts stay
    /// there, then moves the calling thread to the client's CPUs.
    fn serve<T>(&self, start: impl FnOnce() -> T) -> T {
        run_on(&self.server);
        let started = start();
        run_on(&self.client);
        started
    }
}

/// Sample functions, each behind its own endpoint in a directory of their own.
struct Functions {
    config: Arc<ServerConfig>,
    endpoints: Vec<Endpoint>,
    dir: PathBuf,
}

impl Functions {
    /// No function yet; sockets go to a new temporary directory named after `tag`.
    fn new(tag: &str, config: &Arc<ServerConfig>) -> Self {
        let dir =
            std::env::temp_dir().join(format!("vfio-variant-bench-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        Self {
            config: Arc::clone(config),
            endpoints: Vec::new(),
            dir,
        }
    }

    /// One function, exposed.
    fn single(tag: &str, config: &Arc<ServerConfig>) -> Self {
        let backend = SampleBackend::new(1);
        let template = template();
        let function = provision(&backend, &template);
        let mut functions = Self::new(tag, config);
        functions.expose(template, function);
        functions
    }

    /// Exposes a provisioned function on the next socket.
    fn expose(&mut self, template: Arc<ConfigTemplate>, function: Box<dyn Function>) {
        let name = format!("f{}", self.endpoints.len());
        let vf = VirtualFunction::new(template, function).expect("the sample layout binds");
        let path = self.dir.join(format!("{name}.sock"));
        let port = Port::new(name, Arc::new(vf));
        let endpoint = Endpoint::bind(port, &path, Arc::clone(&self.config)).expect("bind");
        self.endpoints.push(endpoint);
    }

    /// A client of function `index`, checked with one config read.
    fn connect(&self, index: usize) -> Client {
        let options = ClientOptions {
            timeout: Some(Duration::from_secs(10)),
            ..ClientOptions::default()
        };
        let mut client =
            Client::connect_with(self.endpoints[index].path(), options).expect("connect");
        let mut ids = [0u8; 4];
        client
            .region_read(CONFIG_REGION, 0, &mut ids)
            .expect("config read");
        assert_eq!(ids, SAMPLE_IDS);
        client
    }
}

impl Drop for Functions {
    fn drop(&mut self) {
        self.endpoints.clear();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Parses and compiles the sample layout.
fn template() -> Arc<ConfigTemplate> {
    Arc::new(compile(Arc::new(
        parse_layout("sample", LAYOUT).expect("sample layout"),
    )))
}

/// Provisions one sample function.
fn provision(backend: &SampleBackend, template: &ConfigTemplate) -> Box<dyn Function> {
    backend
        .create(&CreateRequest {
            profile: "default".into(),
            instance: "bench".into(),
            layout: Arc::clone(template.layout()),
            attributes: Vec::new(),
        })
        .expect("a sample function")
}

/// Resident memory of the process in KiB.
fn resident_kib() -> u64 {
    let rollup = std::fs::read_to_string("/proc/self/smaps_rollup").expect("smaps_rollup");
    rollup
        .lines()
        .find_map(|line| line.strip_prefix("Rss:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("an Rss line")
}

/// Raises the soft limit on open files to at least `needed` (up to the hard limit).
fn raise_fd_limit(needed: u64) {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current.is_none_or(|current| current >= needed) {
        return;
    }
    let current = Some(limit.maximum.map_or(needed, |max| max.min(needed)));
    setrlimit(Resource::Nofile, Rlimit { current, ..limit }).expect("raise RLIMIT_NOFILE");
}

/// A thread answering each message the size of a config read request on a socketpair with
/// one the size of its reply.
struct Echo {
    stream: UnixStream,
    request: Vec<u8>,
    answer: Vec<u8>,
    thread: std::thread::JoinHandle<()>,
}

impl Echo {
    /// Starts the thread (on the calling thread's CPUs).
    fn start() -> Self {
        let read = RegionRead {
            offset: 0,
            region: CONFIG_REGION,
            count: 4,
        }
        .to_bytes();
        let header = Header::request(1, Command::RegionRead, read.len());
        let request = [&header.encode()[..], &read].concat();
        let data = RegionReadReply {
            offset: 0,
            region: CONFIG_REGION,
            data: SAMPLE_IDS.to_vec(),
        }
        .to_bytes();
        let reply = [&header.reply(data.len()).encode()[..], &data].concat();
        assert_eq!(
            (request.len(), reply.len()),
            (2 * HEADER_SIZE, 2 * HEADER_SIZE + 4)
        );
        let (stream, mut peer) = UnixStream::pair().expect("socketpair");
        let answer = vec![0u8; reply.len()];
        let request_len = request.len();
        let thread = std::thread::spawn(move || {
            let mut request = vec![0u8; request_len];
            while peer.read_exact(&mut request).is_ok() {
                if peer.write_all(&reply).is_err() {
                    break;
                }
            }
        });
        Self {
            stream,
            request,
            answer,
            thread,
        }
    }

    /// One round trip.
    fn ping(&mut self) {
        self.stream
            .write_all(black_box(&self.request))
            .expect("ping");
        self.stream.read_exact(&mut self.answer).expect("pong");
        black_box(&self.answer);
    }

    /// Ends the thread.
    fn stop(self) {
        drop(self.stream);
        self.thread.join().expect("echo thread");
    }
}

/// One 4-byte read of the vendor and device IDs.
fn read_config(client: &mut Client) {
    let mut ids = [0u8; 4];
    client
        .region_read(CONFIG_REGION, 0, black_box(&mut ids))
        .expect("config read");
    black_box(ids);
}

/// Median µs per round trip.
#[derive(Debug, Clone, Copy)]
struct RoundTrips {
    /// Of the bare socketpair ping-pong.
    pingpong: f64,
    /// Of a config read through the server.
    rtt: f64,
    /// Of the same config read through libvfio-user's sample, when it runs.
    peer: Option<f64>,
}

/// Bare ping-pongs and config reads (through the server, and through the peer when there is
/// one), interleaved.
fn round_trips(echo: &mut Echo, client: &mut Client, peer: Option<&mut Client>) -> RoundTrips {
    let mut ping = || echo.ping();
    let mut ours = || read_config(client);
    match peer {
        None => {
            let medians = measure(&mut [&mut ping, &mut ours]);
            RoundTrips {
                pingpong: medians[0],
                rtt: medians[1],
                peer: None,
            }
        }
        Some(peer) => {
            let mut theirs = || read_config(peer);
            let medians = measure(&mut [&mut ping, &mut ours, &mut theirs]);
            RoundTrips {
                pingpong: medians[0],
                rtt: medians[1],
                peer: Some(medians[2]),
            }
        }
    }
}

/// Round trips of `client`, whose function was bound on `placement.server`, reported as
/// `config_read_rtt{suffix}` against `socketpair_pingpong_rtt{suffix}`, or against `single`
/// (the same placement with one function in the process) when given; and against
/// libvfio-user's sample when `peer` is its client.
fn rtt_figures(
    client: &mut Client,
    placement: &Placement,
    suffix: &str,
    single: Option<(&str, RoundTrips)>,
    peer: Option<&mut Client>,
) -> RoundTrips {
    let mut echo = placement.serve(Echo::start);
    let measured = round_trips(&mut echo, client, peer);
    echo.stop();
    let (pingpong, rtt) = (
        format!("socketpair_pingpong_rtt{suffix}"),
        format!("config_read_rtt{suffix}"),
    );
    match single {
        None => {
            report(&pingpong, measured.pingpong, "us", None);
            let baseline = Some((pingpong.as_str(), measured.pingpong));
            report(&rtt, measured.rtt, "us", baseline);
        }
        Some((single_suffix, single)) => {
            let baseline = format!("socketpair_pingpong_rtt{single_suffix}");
            let baseline = Some((baseline.as_str(), single.pingpong));
            report(&pingpong, measured.pingpong, "us", baseline);
            let baseline = format!("config_read_rtt{single_suffix}");
            let baseline = Some((baseline.as_str(), single.rtt));
            report(&rtt, measured.rtt, "us", baseline);
        }
    }
    if let Some(peer) = measured.peer {
        let name = format!("{PEER}_config_read_rtt{suffix}");
        report(&name, peer, "us", Some((&pingpong, measured.pingpong)));
        let ours = format!("config_read_rtt_vs_{PEER}{suffix}");
        report(&ours, measured.rtt, "us", Some((&name, peer)));
    }
    measured
}

/// libvfio-user's sample started on `placement.server`, with its client; `None` (after saying
/// why) when it cannot run.
fn start_peer(program: Option<&Path>, placement: &Placement, tag: &str) -> Option<(Peer, Client)> {
    let started = placement.serve(|| {
        Peer::start(program?, tag)
            .map_err(|e| println!("PEER {PEER} left out of the {tag} figures: {e}"))
            .ok()
    })?;
    match started.connect() {
        Ok(client) => Some((started, client)),
        Err(e) => {
            println!("PEER {PEER} left out of the {tag} figures: {e}");
            None
        }
    }
}

/// One function behind an endpoint bound on `placement.server`, with its round trips and
/// posted writes (when `posted_suffix` is given) reported with `suffix`; libvfio-user's sample
/// beside it when `peer` names its program.
fn single_function(
    placement: &Placement,
    config: &Arc<ServerConfig>,
    suffix: &str,
    posted_suffix: Option<&str>,
    peer: Option<&Path>,
) -> (RoundTrips, Option<Posted>) {
    let functions = placement.serve(|| Functions::single(suffix, config));
    let mut client = functions.connect(0);
    let mut peer = start_peer(peer, placement, suffix);
    let peer_client = peer.as_mut().map(|(_, client)| client);
    let measured = rtt_figures(&mut client, placement, suffix, None, peer_client);
    let posted = posted_suffix.map(|posted| {
        let peer_client = peer.as_mut().map(|(_, client)| client);
        posted_writes(&mut client, posted, peer_client)
    });
    (measured, posted)
}

/// Median writes per second of one placement.
#[derive(Debug, Clone, Copy)]
struct Posted {
    /// Posted REGION_WRITEs to the server.
    ours: f64,
    /// The same values as REGION_WRITE_MULTI entries.
    multi: f64,
    /// Posted writes to libvfio-user's sample, when it runs.
    peer: Option<f64>,
}

/// Writes per second of one round: `write` of each of [`POSTED_WRITES`] values from `base`,
/// closed by `close` (a read that sees the last one).
fn write_round(
    client: &mut Client,
    base: u32,
    write: fn(&mut Client, u32),
    close: fn(&mut Client, u32),
) -> f64 {
    let start = Instant::now();
    for i in base..base + POSTED_WRITES {
        write(client, i);
    }
    close(client, base + POSTED_WRITES - 1);
    f64::from(POSTED_WRITES) / start.elapsed().as_secs_f64()
}

/// A posted write of `value` to the sample's scratch register.
fn post_scratch(client: &mut Client, value: u32) {
    client
        .region_write_posted(0, SCRATCH, black_box(&value.to_le_bytes()))
        .expect("posted write");
}

/// Reads the sample's scratch register, which must hold `expected`.
fn check_scratch(client: &mut Client, expected: u32) {
    let mut last = [0u8; 4];
    client.region_read(0, SCRATCH, &mut last).expect("read");
    assert_eq!(u32::from_le_bytes(last), expected);
}

/// A posted write of `value` to the output register of libvfio-user's sample.
fn post_peer(client: &mut Client, value: u32) {
    client
        .region_write_posted(PEER_BAR, 0, black_box(&value.to_le_bytes()))
        .expect("posted write to libvfio-user's sample");
}

/// A config read, after which libvfio-user's sample has run every earlier write (it serves a
/// connection in order; its output register reads nothing back).
fn close_peer(client: &mut Client, _last: u32) {
    read_config(client);
}

/// Posted writes to BAR 0 per second, each round closed by a read that sees the last one;
/// the same writes as REGION_WRITE_MULTI messages of [`MULTI_ENTRIES`]; and posted writes to
/// the BAR of libvfio-user's sample (closed by a config read) when `peer` is its client;
/// rounds interleaved.
fn posted_writes(client: &mut Client, suffix: &str, mut peer: Option<&mut Client>) -> Posted {
    // Memory decoding and bus mastering on: BAR 0 answers.
    client
        .region_write(CONFIG_REGION, 4, &[0x06, 0x00])
        .expect("COMMAND");
    let (mut rates, mut multi, mut theirs) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..ROUNDS as u32 {
        let base = round * POSTED_WRITES;
        rates.push(write_round(client, base, post_scratch, check_scratch));
        multi.push(write_multi_round(client, base));
        if let Some(peer) = peer.as_deref_mut() {
            theirs.push(write_round(peer, base, post_peer, close_peer));
        }
    }
    let name = format!("posted_writes_per_second{suffix}");
    let multi_name = format!("write_multi_writes_per_second{suffix}");
    let (ours, multi) = (median(rates), median(multi));
    if theirs.is_empty() {
        report(&name, ours, "writes/s", None);
        report(&multi_name, multi, "writes/s", Some((&name, ours)));
        return Posted {
            ours,
            multi,
            peer: None,
        };
    }
    let peer_name = format!("{PEER}_posted_writes_per_second{suffix}");
    let theirs = median(theirs);
    report(&peer_name, theirs, "writes/s", None);
    report(&name, ours, "writes/s", Some((&peer_name, theirs)));
    // libvfio-user serves no REGION_WRITE_MULTI: its posted writes are its way to the same end.
    report(&multi_name, multi, "writes/s", Some((&peer_name, theirs)));
    Posted {
        ours,
        multi,
        peer: Some(theirs),
    }
}

/// Writes the chart of the round trips and posted writes, per placement, to `path`.
fn draw_chart(
    path: &Path,
    rtts: [(&'static str, RoundTrips); 3],
    posted: [(&'static str, Posted); 2],
) {
    let rtt = plot::Chart {
        title: "4-byte config read round trip (lower is better)",
        unit: "us",
        series: &["socketpair floor", "vfio-variant", "libvfio-user"],
        groups: rtts
            .iter()
            .map(|&(name, r)| plot::Group {
                name,
                values: vec![Some(r.pingpong), Some(r.rtt), r.peer],
            })
            .collect(),
    };
    let writes = plot::Chart {
        title: "posted 4-byte BAR writes (higher is better)",
        unit: "writes/s",
        series: &["vfio-variant", "libvfio-user", "vfio-variant WRITE_MULTI"],
        groups: posted
            .iter()
            .map(|&(name, p)| plot::Group {
                name,
                values: vec![Some(p.ours), p.peer, Some(p.multi)],
            })
            .collect(),
    };
    match plot::write(path, &[rtt, writes]) {
        Ok(()) => eprintln!("chart written to {}", path.display()),
        Err(e) => eprintln!("no chart ({}): {e}", path.display()),
    }
}

/// Writes per second of one round of REGION_WRITE_MULTI messages carrying the values of a
/// [`write_round`] from `base` to the scratch register, closed by a read of the last one.
fn write_multi_round(client: &mut Client, base: u32) -> f64 {
    let start = Instant::now();
    let mut entries = Vec::with_capacity(MULTI_ENTRIES);
    for chunk_start in (base..base + POSTED_WRITES).step_by(MULTI_ENTRIES) {
        entries.clear();
        let end = (chunk_start + MULTI_ENTRIES as u32).min(base + POSTED_WRITES);
        entries.extend(
            (chunk_start..end).map(|i| {
                WriteMultiEntry::new(0, SCRATCH, &i.to_le_bytes()).expect("a 4-byte entry")
            }),
        );
        let done = client
            .write_multi(black_box(&entries))
            .expect("REGION_WRITE_MULTI");
        assert_eq!(done, entries.len() as u64);
    }
    check_scratch(client, base + POSTED_WRITES - 1);
    f64::from(POSTED_WRITES) / start.elapsed().as_secs_f64()
}

/// Creates and exposes 1024 sample functions as `vfio-variant create` does (one compiled
/// template shared by the functions of a layout), reporting the resident memory each part of
/// a function adds.
fn many_functions(config: &Arc<ServerConfig>) -> Functions {
    raise_fd_limit(FUNCTIONS as u64 * FDS_PER_FUNCTION + 256);
    let backend = SampleBackend::new(FUNCTIONS as u32);
    let per_function = |from: u64, to: u64| to.saturating_sub(from) as f64 / FUNCTIONS as f64;

    let start = resident_kib();
    let shared = template();
    let templates: Vec<Arc<ConfigTemplate>> = (0..FUNCTIONS).map(|_| Arc::clone(&shared)).collect();
    let compiled = resident_kib();
    let provisioned: Vec<Box<dyn Function>> =
        templates.iter().map(|t| provision(&backend, t)).collect();
    let backends = resident_kib();
    let mut functions = Functions::new("many", config);
    for (template, function) in templates.into_iter().zip(provisioned) {
        functions.expose(template, function);
    }
    // Let every acceptor thread reach its poll.
    std::thread::sleep(Duration::from_millis(200));
    let exposed = resident_kib();

    let kib = |name: &str, value: f64| report(name, value, "KiB", None);
    kib("rss_per_idle_function", per_function(start, exposed));
    kib("rss_per_function_template", per_function(start, compiled));
    kib("rss_per_function_backend", per_function(compiled, backends));
    kib("rss_per_function_endpoint", per_function(backends, exposed));
    functions
}

fn main() {
    let allowed = allowed_cpus();
    if allowed.len() < 2 {
        eprintln!("one CPU allowed: the split figures run on one CPU too");
    }
    let peer = libvfio_user::program()
        .map_err(|e| println!("PEER {PEER} left out: {e}"))
        .ok();
    let peer = peer.as_deref();
    let config = Arc::new(ServerConfig::default());
    let split = Placement::split(&allowed);
    // On the server's CPU, where the 1024 functions' threads will be too.
    let one_cpu = Placement::one_cpu(split.server[0]);

    let (single, pinned_posted) = single_function(&split, &config, "", Some(""), peer);
    let (single_one_cpu, _) = single_function(&one_cpu, &config, "_one_cpu", None, peer);
    let (unpinned, unpinned_posted) = single_function(
        &Placement::unpinned(&allowed),
        &config,
        "_unpinned",
        Some("_unpinned"),
        peer,
    );
    if let (Some(path), Some(pinned_posted), Some(unpinned_posted)) =
        (std::env::var_os(PLOT_ENV), pinned_posted, unpinned_posted)
    {
        draw_chart(
            Path::new(&path),
            [
                ("pinned", single),
                ("one CPU", single_one_cpu),
                ("unpinned", unpinned),
            ],
            [("pinned", pinned_posted), ("unpinned", unpinned_posted)],
        );
    }
    // Polling mode (a server with a core of its own): the connection spins before sleeping.
    let polling = Arc::new(ServerConfig {
        poll: Some(Duration::from_micros(200)),
        ..ServerConfig::default()
    });
    single_function(&split, &polling, "_polling", Some("_polling"), None);
    private_dma(&split, &config);

    // 1024 functions bound on the server's CPU; clients of two of them, the others idle.
    let functions = split.serve(|| many_functions(&config));
    let middle = FUNCTIONS / 2;
    rtt_figures(
        &mut functions.connect(middle),
        &split,
        "_1024",
        Some(("", single)),
        None,
    );
    rtt_figures(
        &mut functions.connect(middle + 1),
        &one_cpu,
        "_1024_one_cpu",
        Some(("_one_cpu", single_one_cpu)),
        None,
    );
}

/// Guest RAM the client keeps to itself, at [`RAM_IOVA`], reached by the server's messages.
struct PrivateRam(Vec<u8>);

impl PrivateRam {
    fn range(&self, address: u64, len: usize) -> Result<std::ops::Range<usize>, i32> {
        let start = address
            .checked_sub(RAM_IOVA)
            .and_then(|at| usize::try_from(at).ok())
            .ok_or(libc::EFAULT)?;
        let end = start.checked_add(len).ok_or(libc::EFAULT)?;
        (end <= self.0.len())
            .then_some(start..end)
            .ok_or(libc::EFAULT)
    }
}

impl DmaHandler for PrivateRam {
    fn dma_read(&mut self, address: u64, buf: &mut [u8]) -> Result<(), i32> {
        let range = self.range(address, buf.len())?;
        buf.copy_from_slice(&self.0[range]);
        Ok(())
    }

    fn dma_write(&mut self, address: u64, data: &[u8]) -> Result<(), i32> {
        let range = self.range(address, data.len())?;
        self.0[range].copy_from_slice(data);
        Ok(())
    }
}

/// A client of the function of `functions` with private RAM mapped (no fd) and a copy of
/// [`DMA_BYTES`] programmed; in twin-socket mode with `twin`.
fn private_ram_client(functions: &Functions, twin: bool) -> Client {
    let options = ClientOptions {
        twin_socket: twin,
        timeout: Some(Duration::from_secs(10)),
        ..ClientOptions::default()
    };
    let mut client = Client::connect_with(functions.endpoints[0].path(), options).expect("connect");
    assert_eq!(client.twin_socket(), twin, "twin-socket mode as asked");
    client.set_dma_handler(Box::new(PrivateRam(vec![0x5a; 2 * DMA_BYTES as usize])));
    client
        .region_write(CONFIG_REGION, 4, &[0x06, 0x00])
        .expect("COMMAND");
    let map = DmaMap::new(
        RAM_IOVA,
        2 * u64::from(DMA_BYTES),
        0,
        DmaMapFlags::READ | DmaMapFlags::WRITE,
    );
    client.dma_map(&map, None).expect("DMA_MAP without an fd");
    for (register, value) in [
        (DMA_SRC_LO, RAM_IOVA as u32),
        (DMA_DST_LO, RAM_IOVA as u32 + DMA_BYTES),
        (DMA_LEN, DMA_BYTES),
    ] {
        client
            .region_write(0, register, &value.to_le_bytes())
            .expect("DMA register");
    }
    client
}

/// One copy: START, then DMA_STATUS until the engine is done.
fn private_copy(client: &mut Client) {
    client
        .region_write(0, DMA_CMD, &DMA_CMD_START.to_le_bytes())
        .expect("START");
    loop {
        let mut status = [0u8; 4];
        client
            .region_read(0, DMA_STATUS, &mut status)
            .expect("DMA_STATUS");
        match u32::from_le_bytes(status) {
            DMA_STATUS_BUSY => {}
            0 => return,
            other => panic!("the copy failed with DMA status {other}"),
        }
    }
}

/// The private-RAM copy with DMA answered on the main socket and on a twin socket, rounds
/// interleaved.
fn private_dma(placement: &Placement, config: &Arc<ServerConfig>) {
    let main_socket = placement.serve(|| Functions::single("private", config));
    let twin_socket = placement.serve(|| Functions::single("private_twin", config));
    let mut single = private_ram_client(&main_socket, false);
    let mut twin = private_ram_client(&twin_socket, true);
    let figures = measure(&mut [&mut || private_copy(&mut single), &mut || {
        private_copy(&mut twin)
    }]);
    report("private_dma_4k_copy", figures[0], "us", None);
    report(
        "private_dma_4k_copy_twin",
        figures[1],
        "us",
        Some(("private_dma_4k_copy", figures[0])),
    );
}
