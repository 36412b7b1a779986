//! Stop-copy throughput for a function with 1 GiB of device state, against a plain memcpy of
//! the same size in the same run:
//!
//! - `stop_copy_stream_1gib`: the framed stream read in-process from the `VirtualFunction`
//!   (what a Rust VMM linking the framework reads), 1 MiB reads;
//! - `stop_copy_read_1gib`: the framed stream read over vfio-user (MIG_DATA_READ) by a VMM
//!   that asks for nothing more than QEMU does: 1 MiB reads, inline bytes;
//! - `stop_copy_migrate_1gib`: the whole move with the migration driver, into a second
//!   function that checks the stream and loads the state, both over vfio-user as above;
//! - `..._large_1gib`: the same with the largest transfers the server allows (64 MiB), inline;
//! - `..._shared_1gib`: 1 MiB transfers through one buffer shared with the server
//!   (`mig_data_shared`, the server's buffer, which it saves into straight): the reader has
//!   two reads out at once, one per half of a 2 MiB buffer, and copies each chunk out (a VMM's use of the bytes) while the server saves the
//!   next; the driver registers one buffer with both servers, the source's writes chunks
//!   into some of its four parts while the destination's copies another part's into its own
//!   memory and loads it;
//! - `..._shared_large_1gib`: the same with 64 MiB transfers.
//!
//! Prints `BENCH name value unit ratio=.. vs=..`; ratios are throughput over memcpy's.
//! Arguments (after `--`) keep only the figures whose names contain one of them, e.g.
//! `cargo bench -p vfio-variant --bench stop_copy -- read_shared`; memcpy always runs.

use std::hint::black_box;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

#[path = "../tests/common/bulk.rs"]
mod bulk;
use bulk::Bulk;
use vfio_variant::device::VirtualFunction;
use vfio_variant::migration::MigrationState;
use vfio_variant::migration_driver::{LocalDestination, Options, migrate, share_buffer};
use vfio_variant::server::{Port, ServerConfig, serve_connection};
use vfio_variant::vfio_user::{Capabilities, Client, ClientOptions, ServerOffer};

const STATE: usize = 1 << 30;

/// Largest transfer offered and asked for (QEMU's bound).
const LARGE_XFER: u64 = 64 << 20;

/// How the bench's client connects: as QEMU does, asking for large transfers, or through a
/// shared buffer with either transfer size.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Inline,
    Large,
    Shared,
    SharedLarge,
}

impl Mode {
    /// The figures' infix.
    fn infix(self) -> &'static str {
        match self {
            Self::Inline => "",
            Self::Large => "_large",
            Self::Shared => "_shared",
            Self::SharedLarge => "_shared_large",
        }
    }

    /// The transfer size asked for.
    fn xfer(self) -> u64 {
        match self {
            Self::Inline | Self::Shared => 1 << 20,
            Self::Large | Self::SharedLarge => LARGE_XFER,
        }
    }
}

/// The device states of the functions: allocated and touched once for the whole run, and
/// refilled for each function. Memory freed here goes back to the host through this VM's
/// balloon (free page reporting), which takes a vCPU for a while; freeing gigabytes between
/// figures would have that land in the next ones.
struct States([Arc<Mutex<Vec<u8>>>; 2]);

impl States {
    fn new() -> Self {
        // Not zeros: a zeroed allocation is mapped lazily, and its pages would be faulted
        // in by the first figure.
        Self(std::array::from_fn(|i| {
            Arc::new(Mutex::new(vec![0x5a ^ i as u8; STATE]))
        }))
    }
}

/// A function whose state is `state`, filled with `fill`, served over a socketpair and
/// reached as `mode` says.
fn function(state: &Arc<Mutex<Vec<u8>>>, fill: u8, mode: Mode) -> (Client, Arc<VirtualFunction>) {
    state.lock().fill(fill);
    let vf = Bulk::function(Arc::clone(state), Arc::new(Mutex::new(0)));
    let port = Port::new("bulk", Arc::clone(&vf));
    let (ours, theirs) = UnixStream::pair().expect("socketpair");
    let config = ServerConfig {
        offer: ServerOffer {
            max_data_xfer_size: LARGE_XFER,
            ..ServerConfig::default().offer
        },
        ..ServerConfig::default()
    };
    std::thread::spawn(move || serve_connection(&port, &Arc::new(config), theirs));
    let shared = matches!(mode, Mode::Shared | Mode::SharedLarge);
    let options = ClientOptions {
        capabilities: Capabilities {
            max_data_xfer_size: Some(mode.xfer()),
            ..Capabilities::qemu_proposal()
        },
        mig_data_shared: shared,
        ..ClientOptions::default()
    };
    let client = Client::from_stream(ours, options).expect("negotiation");
    assert_eq!(client.negotiated().mig_data_shared, shared);
    (client, vf)
}

fn gib_per_s(elapsed: Duration) -> f64 {
    STATE as f64 / elapsed.as_secs_f64() / f64::from(1u32 << 30)
}

fn report(name: &str, value: f64, base: f64) {
    println!(
        "BENCH {name} {value:.2} GiB/s ratio={:.2} vs=memcpy_1gib",
        value / base
    );
}

/// Whether the figure `name` was asked for: every figure when no filter was given.
fn wanted(name: &str) -> bool {
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    filters.is_empty() || filters.iter().any(|f| name.contains(f.as_str()))
}

fn main() {
    let states = States::new();
    // Both buffers touched first, as the functions' state is: the copy is measured, not the
    // page faults.
    let memcpy = {
        let [source, target] = &states.0;
        let (source, mut target) = (source.lock(), target.lock());
        let start = Instant::now();
        target.copy_from_slice(black_box(&source));
        black_box(&mut *target);
        gib_per_s(start.elapsed())
    };
    println!("BENCH memcpy_1gib {memcpy:.2} GiB/s");

    if wanted("stop_copy_stream_1gib") {
        stream_in_process(&states, memcpy);
    }
    // The 64 MiB modes last: the buffers their connections free go back to the host
    // meanwhile (see `States`).
    for mode in [Mode::Inline, Mode::Shared, Mode::Large, Mode::SharedLarge] {
        let suffix = mode.infix();
        let name = format!("stop_copy_read{suffix}_1gib");
        if wanted(&name) {
            report(&name, read_over_vfio_user(&states, mode), memcpy);
        }
        let name = format!("stop_copy_migrate{suffix}_1gib");
        if wanted(&name) {
            let (total, downtime) = migrate_over_vfio_user(&states, mode);
            report(&name, total, memcpy);
            println!(
                "BENCH {name}_downtime {:.1} ms",
                downtime.as_secs_f64() * 1e3
            );
        }
    }
}

/// Reads the whole stream from the function in-process and reports it against `memcpy`.
fn stream_in_process(states: &States, memcpy: f64) {
    let (_client, vf) = function(&states.0[0], 0x11, Mode::Inline);
    vf.set_migration_state(MigrationState::StopCopy)
        .expect("stop-copy");
    let mut chunk = vec![0u8; 1 << 20];
    let start = Instant::now();
    let mut bytes = 0usize;
    loop {
        let n = vf.migration_read(&mut chunk).expect("save");
        bytes += n;
        black_box(&chunk);
        if n < chunk.len() {
            break;
        }
    }
    let stream = gib_per_s(start.elapsed());
    assert!(bytes > STATE, "the whole state and its framing");
    report("stop_copy_stream_1gib", stream, memcpy);
}

/// Reads the whole stop-copy stream over vfio-user; GiB/s.
fn read_over_vfio_user(states: &States, mode: Mode) -> f64 {
    let (mut client, _vf) = function(&states.0[0], 0x11, mode);
    client
        .set_mig_state(MigrationState::StopCopy)
        .expect("stop-copy");
    let size = u32::try_from(mode.xfer()).expect("at most 64 MiB");
    let shared = client.negotiated().mig_data_shared.then(|| {
        client
            .server_mig_buffer(2 * mode.xfer())
            .expect("the server's buffer")
    });
    let start = Instant::now();
    let mut bytes = 0usize;
    // One buffer for every reply (or copy out of the shared buffer), as a VMM keeps it.
    let mut reply = Vec::new();
    // Through the shared buffer, the next chunk is asked for before the last one is copied
    // out, so the server saves it meanwhile (two halves in flight, as a VMM would).
    if shared.is_some() {
        client.mig_data_read_ahead(0, size).expect("MIG_DATA_READ");
    }
    let mut half = 0;
    loop {
        let n = match &shared {
            Some(buffer) => {
                let offset = half * mode.xfer();
                half ^= 1;
                client
                    .mig_data_read_ahead(half * mode.xfer(), size)
                    .expect("MIG_DATA_READ");
                let n = client
                    .mig_data_read_shared(offset, size)
                    .expect("MIG_DATA_READ") as usize;
                reply.resize(n, 0);
                buffer.copy_out(offset, &mut reply).expect("in the buffer");
                n
            }
            None => client
                .mig_data_read_into(size, &mut reply)
                .expect("MIG_DATA_READ")
                .len(),
        };
        black_box(&reply);
        bytes += n;
        if n < size as usize {
            break;
        }
    }
    if shared.is_some() {
        // The read sent ahead past the end.
        let last = client
            .mig_data_read_shared(half * mode.xfer(), size)
            .expect("MIG_DATA_READ");
        assert_eq!(last, 0, "nothing past the end");
    }
    let read = gib_per_s(start.elapsed());
    assert!(bytes > STATE, "the whole state and its framing");
    client
        .set_mig_state(MigrationState::Running)
        .expect("resume");
    read
}

/// Migrates 1 GiB between two functions over vfio-user; GiB/s over the whole move, and the
/// downtime.
fn migrate_over_vfio_user(states: &States, mode: Mode) -> (f64, Duration) {
    let (mut source, _source_vf) = function(&states.0[0], 0x22, mode);
    let (mut destination, _destination_vf) = function(&states.0[1], 0x01, mode);
    let shared = share_buffer(&mut source, &mut destination).expect("shared buffer");
    assert_eq!(
        shared.is_some(),
        matches!(mode, Mode::Shared | Mode::SharedLarge)
    );
    let options = Options {
        precopy: false,
        ..Options::default()
    };
    let moved = migrate(
        &mut source,
        &mut LocalDestination::new(&mut destination),
        &options,
        &mut (),
    )
    .expect("migration");
    (gib_per_s(moved.total), moved.downtime)
}
