//! DMA_LOGGING_REPORT of a 1 TiB range at 4 KiB pages (256 Mi pages, a 32 MiB bitmap) through
//! the dirty bitmap the server's logging code keeps, against a plain copy of a 32 MiB bitmap
//! measured in the same run. Reports go into one buffer reused from report to report, as the
//! server reuses its reply buffer, and the copy into one buffer allocated once. Prints
//! `BENCH name value unit ratio=.. vs=..`.
//!
//! Figures:
//! - `bitmap_copy_32mib`: the baseline, a memcpy of 32 MiB.
//! - `dma_logging_report_1tib`: the figure of the issue (goal: ratio at most 2): every 1 GiB
//!   chunk of the bitmap written to, one page in 64 dirty (every word has a bit to take).
//! - `dma_logging_report_1tib_sparse`: one page in 4096 dirty (most words clean).
//! - `dma_logging_report_1tib_dense`: every page dirty (every word has 64 bits to take).
//! - `dma_logging_report_1tib_untouched`: nothing written since START (no chunk allocated).
//! - `dma_logging_report_1tib_socket`: the whole REPORT over a vfio-user socket to a served
//!   function (a few pages written through the server's DMA table), the client's parse of the
//!   32 MiB reply included.

use std::hint::black_box;
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use vfio_variant::backend::{Function, FunctionContext, FunctionError};
use vfio_variant::device::VirtualFunction;
use vfio_variant::migration::dirty::DirtyBitmap;
use vfio_variant::migration::{
    MigrationError, MigrationFlags, MigrationHooks, MigrationState, PrecopyInfo,
};
use vfio_variant::server::{Port, ServerConfig, serve_connection};
use vfio_variant::vfio_user::dma::{DmaMap, DmaMapFlags};
use vfio_variant::vfio_user::feature::DmaLoggingRange;
use vfio_variant::vfio_user::{Client, ClientOptions};
use vfio_variant::vpci::{compile::compile, parse_layout};

const PAGE: u64 = 4096;
const TIB: u64 = 1 << 40;
const WORDS: usize = (TIB / PAGE / 64) as usize;
const ROUNDS: usize = 9;

fn median(mut samples: Vec<Duration>) -> f64 {
    samples.sort();
    samples[samples.len() / 2].as_secs_f64() * 1e3
}

/// Marks every `step`-th page of the terabyte (each `mark` call covers one page).
fn dirty(bitmap: &DirtyBitmap, step: u64) {
    if step == 1 {
        // Whole chunks at a time: one call per GiB.
        for gib in 0..(TIB >> 30) {
            bitmap.mark(gib << 30, 1 << 30);
        }
        return;
    }
    let mut page = 0;
    while page < TIB / PAGE {
        bitmap.mark(page * PAGE, 1);
        page += step;
    }
}

/// Median ms of a full report into `out`, with `step` dirtying before each.
fn report(bitmap: &DirtyBitmap, step: Option<u64>, out: &mut [u64]) -> f64 {
    let mut samples = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        if let Some(step) = step {
            dirty(bitmap, step);
        }
        let start = Instant::now();
        bitmap
            .report(0, TIB, PAGE, black_box(&mut *out))
            .expect("the range is tracked");
        black_box(&*out);
        samples.push(start.elapsed());
    }
    median(samples)
}

/// A migratable function with no state; the bench writes through its DMA context.
#[derive(Default)]
struct Migratable {
    context: Arc<OnceLock<FunctionContext>>,
}

impl Function for Migratable {
    fn attach(&self, context: FunctionContext) {
        let _ = self.context.set(context);
    }
    fn reset(&self) -> Result<(), FunctionError> {
        Ok(())
    }
    fn migration(&self) -> Option<&dyn MigrationHooks> {
        Some(self)
    }
}

impl MigrationHooks for Migratable {
    fn flags(&self) -> MigrationFlags {
        MigrationFlags::all()
    }
    fn transition(&self, _: MigrationState, _: MigrationState) -> Result<(), MigrationError> {
        Ok(())
    }
    fn save(&self, _: &mut [u8]) -> Result<usize, MigrationError> {
        Ok(0)
    }
    fn load(&self, _: &[u8]) -> Result<(), MigrationError> {
        Ok(())
    }
    fn precopy_info(&self) -> Result<PrecopyInfo, MigrationError> {
        Ok(PrecopyInfo::default())
    }
    fn stop_copy_size(&self) -> Result<u64, MigrationError> {
        Ok(0)
    }
}

const LAYOUT: &str = r#"
[vpci]
format = 1
name = "bench"
config_size = 256
[identity]
vendor_id = 0x1af4
device_id = 0x10fd
class_code = 0xff0000
"#;

/// Guest RAM sealed at its size, as QEMU's memfd backend makes it (so the server maps it).
fn memfd(len: usize) -> OwnedFd {
    use rustix::fs::{MemfdFlags, SealFlags};
    let fd = rustix::fs::memfd_create("guest", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)
        .expect("memfd");
    let mut file = std::fs::File::from(fd);
    file.write_all(&vec![0u8; len]).expect("memfd size");
    rustix::fs::fcntl_add_seals(&file, SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL)
        .expect("seals");
    file.into()
}

/// Median ms of a REPORT of the terabyte over a socket.
fn over_socket() -> f64 {
    let template = Arc::new(compile(Arc::new(
        parse_layout("bench", LAYOUT).expect("bench layout"),
    )));
    let context = Arc::new(OnceLock::new());
    let function = Migratable {
        context: Arc::clone(&context),
    };
    let function = Arc::new(VirtualFunction::new(template, Box::new(function)).expect("function"));
    let port = Port::new("bench", function);
    let (ours, theirs) = UnixStream::pair().expect("socketpair");
    let server = std::thread::spawn(move || {
        serve_connection(&port, &Arc::new(ServerConfig::default()), theirs);
    });
    let mut client = Client::from_stream(ours, ClientOptions::default()).expect("client");
    let guest = memfd(1 << 20);
    client
        .dma_map(
            &DmaMap::new(0, 1 << 20, 0, DmaMapFlags::READ | DmaMapFlags::WRITE),
            Some(guest.as_fd()),
        )
        .expect("DMA_MAP");
    client
        .dma_logging_start(
            PAGE,
            &[DmaLoggingRange {
                iova: 0,
                length: TIB,
            }],
        )
        .expect("DMA_LOGGING_START");
    let dma = &context.get().expect("attached").dma;
    let mut samples = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        for page in [0, 7, 64, 255] {
            dma.write(page * PAGE, b"dirty").expect("DMA write");
        }
        let start = Instant::now();
        let bitmap = client
            .dma_logging_report(0, TIB, PAGE)
            .expect("DMA_LOGGING_REPORT");
        samples.push(start.elapsed());
        assert_eq!(bitmap[0], 1 | 1 << 7);
        black_box(bitmap);
    }
    drop(client);
    let _ = server.join();
    median(samples)
}

fn line(name: &str, ms: f64, base: Option<f64>) {
    match base {
        Some(base) => println!(
            "BENCH {name} {ms:.2} ms ratio={:.2} vs=bitmap_copy_32mib",
            ms / base
        ),
        None => println!("BENCH {name} {ms:.2} ms"),
    }
}

fn main() {
    let src: Vec<u64> = (0..WORDS as u64)
        .map(|i| i.wrapping_mul(0x9e37_79b9))
        .collect();
    let mut dst = vec![0u64; WORDS];
    let mut samples = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        let start = Instant::now();
        dst.copy_from_slice(black_box(&src));
        black_box(&dst);
        samples.push(start.elapsed());
    }
    let copy = median(samples);
    line("bitmap_copy_32mib", copy, None);

    // The reply buffer, in memory already as the server's reused one is.
    let mut out = vec![!0u64; WORDS];
    let untouched = DirtyBitmap::new(PAGE, std::slice::from_ref(&(0..TIB))).expect("a 1 TiB range");
    line(
        "dma_logging_report_1tib_untouched",
        report(&untouched, None, &mut out),
        Some(copy),
    );

    let bitmap = DirtyBitmap::new(PAGE, std::slice::from_ref(&(0..TIB))).expect("a 1 TiB range");
    line(
        "dma_logging_report_1tib",
        report(&bitmap, Some(64), &mut out),
        Some(copy),
    );
    line(
        "dma_logging_report_1tib_sparse",
        report(&bitmap, Some(4096), &mut out),
        Some(copy),
    );
    line(
        "dma_logging_report_1tib_dense",
        report(&bitmap, Some(1), &mut out),
        Some(copy),
    );
    drop(out);
    line("dma_logging_report_1tib_socket", over_socket(), Some(copy));
}
