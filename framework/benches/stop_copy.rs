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
//! - `..._memfd_1gib`: the same with 64 MiB transfers and `mig_data_memfd`: each read reply is
//!   a fresh sealed memfd the client checks and maps read-only (populated: its bytes are
//!   readable without page faults, and are not copied again), and the driver passes the
//!   source's memfds on to the destination, which maps them and loads from them.
//!
//! Prints `BENCH name value unit ratio=.. vs=..`; ratios are throughput over memcpy's.

use std::hint::black_box;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use vfio_variant::backend::{Function, FunctionError};
use vfio_variant::device::VirtualFunction;
use vfio_variant::migration::{
    MigrationError, MigrationFlags, MigrationHooks, MigrationState, PrecopyInfo,
};
use vfio_variant::migration_driver::{LocalDestination, Options, migrate};
use vfio_variant::server::{Port, ServerConfig, serve_connection};
use vfio_variant::vfio_user::{Capabilities, Client, ClientOptions, ServerOffer};
use vfio_variant::vpci::{compile::compile, parse_layout};

const STATE: usize = 1 << 30;
const LAYOUT: &str = "[vpci]\nformat = 1\nname = \"bulk\"\nconfig_size = 256\n[identity]\n\
                      vendor_id = 0x1af4\ndevice_id = 0x10ff\nclass_code = 0xff0000\n";

/// A function whose device state is one large buffer.
struct Bulk {
    memory: Mutex<Vec<u8>>,
    cursor: Mutex<usize>,
}

impl Function for Bulk {
    fn reset(&self) -> Result<(), FunctionError> {
        Ok(())
    }
    fn migration(&self) -> Option<&dyn MigrationHooks> {
        Some(self)
    }
}

impl MigrationHooks for Bulk {
    fn flags(&self) -> MigrationFlags {
        MigrationFlags::STOP_COPY | MigrationFlags::P2P
    }
    fn transition(&self, _: MigrationState, _: MigrationState) -> Result<(), MigrationError> {
        *self.cursor.lock() = 0;
        Ok(())
    }
    fn save(&self, buf: &mut [u8]) -> Result<usize, MigrationError> {
        let mut cursor = self.cursor.lock();
        let memory = self.memory.lock();
        let n = (memory.len() - *cursor).min(buf.len());
        buf[..n].copy_from_slice(&memory[*cursor..*cursor + n]);
        *cursor += n;
        Ok(n)
    }
    fn load(&self, data: &[u8]) -> Result<(), MigrationError> {
        let mut cursor = self.cursor.lock();
        let mut memory = self.memory.lock();
        let end = *cursor + data.len();
        if end > memory.len() {
            return Err(MigrationError::InvalidData("too much state".into()));
        }
        memory[*cursor..end].copy_from_slice(data);
        *cursor = end;
        Ok(())
    }
    fn precopy_info(&self) -> Result<PrecopyInfo, MigrationError> {
        Err(MigrationError::Device("no pre-copy".into()))
    }
    fn stop_copy_size(&self) -> Result<u64, MigrationError> {
        Ok(STATE as u64)
    }
}

/// Largest transfer offered and asked for with `mig_data_memfd` (QEMU's bound).
const LARGE_XFER: u64 = 64 << 20;

/// How the bench's client connects: as QEMU does, asking for large transfers, or for large
/// transfers in memfds.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Inline,
    Large,
    Memfd,
}

impl Mode {
    /// The figures' infix.
    fn infix(self) -> &'static str {
        match self {
            Self::Inline => "",
            Self::Large => "_large",
            Self::Memfd => "_memfd",
        }
    }

    /// The transfer size asked for.
    fn xfer(self) -> u64 {
        match self {
            Self::Inline => 1 << 20,
            Self::Large | Self::Memfd => LARGE_XFER,
        }
    }
}

fn function(fill: u8, mode: Mode) -> (Client, Arc<VirtualFunction>) {
    let template = Arc::new(compile(Arc::new(
        parse_layout("bulk", LAYOUT).expect("bench layout"),
    )));
    let bulk = Bulk {
        memory: Mutex::new(vec![fill; STATE]),
        cursor: Mutex::new(0),
    };
    let vf = Arc::new(VirtualFunction::new(template, Box::new(bulk)).expect("bench function"));
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
    let options = match mode {
        Mode::Inline => ClientOptions::default(),
        Mode::Large | Mode::Memfd => ClientOptions {
            capabilities: Capabilities {
                max_data_xfer_size: Some(LARGE_XFER),
                ..Capabilities::qemu_proposal()
            },
            mig_data_memfd: mode == Mode::Memfd,
            ..ClientOptions::default()
        },
    };
    let client = Client::from_stream(ours, options).expect("negotiation");
    assert_eq!(client.negotiated().mig_data_memfd, mode == Mode::Memfd);
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

fn main() {
    // Both buffers touched first, as the functions' state is: the copy is measured, not the
    // page faults.
    let source = vec![0x5au8; STATE];
    let mut target = vec![0x01u8; STATE];
    let start = Instant::now();
    target.copy_from_slice(black_box(&source));
    black_box(&mut target);
    let memcpy = gib_per_s(start.elapsed());
    println!("BENCH memcpy_1gib {memcpy:.2} GiB/s");
    drop((source, target));

    let (_client, vf) = function(0x11, Mode::Inline);
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
    drop((_client, vf));

    for mode in [Mode::Inline, Mode::Large, Mode::Memfd] {
        let suffix = mode.infix();
        let read = read_over_vfio_user(mode);
        report(&format!("stop_copy_read{suffix}_1gib"), read, memcpy);
        let (total, downtime) = migrate_over_vfio_user(mode);
        report(&format!("stop_copy_migrate{suffix}_1gib"), total, memcpy);
        println!(
            "BENCH stop_copy_migrate{suffix}_1gib_downtime {:.1} ms",
            downtime.as_secs_f64() * 1e3
        );
    }
}

/// Reads the whole stop-copy stream over vfio-user; GiB/s.
fn read_over_vfio_user(mode: Mode) -> f64 {
    let (mut client, _vf) = function(0x11, mode);
    client
        .set_mig_state(MigrationState::StopCopy)
        .expect("stop-copy");
    let size = u32::try_from(mode.xfer()).expect("at most 64 MiB");
    let start = Instant::now();
    let mut bytes = 0usize;
    // One buffer for every inline reply, as a VMM keeps it.
    let mut reply = Vec::new();
    loop {
        let chunk = client
            .mig_data_read_chunk(size, &mut reply)
            .expect("MIG_DATA_READ");
        black_box(chunk.bytes(&reply));
        bytes += chunk.len();
        if chunk.len() < size as usize {
            break;
        }
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
fn migrate_over_vfio_user(mode: Mode) -> (f64, Duration) {
    let (mut source, _source_vf) = function(0x22, mode);
    let (mut destination, _destination_vf) = function(0x01, mode);
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
