//! Downtime of a transitional virtio-blk VF migrated under write load on one host: two
//! emulated virtio PFs sharing the disk image, a test VMM keeping writes in flight from its
//! vCPU thread, the VF moved back and forth with the migration driver (device state through
//! the PFs' admin queues, the VMM's 1 MiB of guest memory copied once the source is stopped).
//!
//! Prints `BENCH virtio_blk_migration_downtime <median> ms ratio=.. vs=vmm_pause_resume`: the
//! baseline is the same VMM pausing its vCPU, stopping the device, copying guest memory and
//! resuming, without migrating: what any VMM's downtime includes. Then the same migrations
//! in-process, the VMM of examples/embedded_vmm calling the `VirtualFunction`s directly (port
//! I/O exits, INTx on an eventfd, no sockets):
//! `BENCH virtio_blk_migration_downtime_in_process <median> ms ratio=.. vs=virtio_blk_migration_downtime`.

// The example's VMM; the bench leaves its MMIO path unused.
#[path = "../examples/embedded_vmm/guest.rs"]
#[allow(dead_code)]
mod guest;
#[path = "../examples/embedded_vmm/host.rs"]
mod host;
#[path = "../examples/embedded_vmm/machine.rs"]
#[allow(dead_code)]
mod machine;
#[path = "../tests/common/vmm.rs"]
mod vmm;

use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vfio_variant::backend::Backend;
use vfio_variant::device::VirtualFunction;
use vfio_variant::migration::MigrationState;
use vfio_variant::migration_driver::{
    LocalDestination, MigratableDevice, Observer, Options, migrate,
};
use vfio_variant::server::{Port, ServerConfig, serve_connection};
use vfio_variant::vfio_user::{Client, ClientOptions};
use vfio_variant::vpci::{compile::compile, parse_layout};
use vfio_variant_virtio_legacy::backend::PROFILE_TRANSITIONAL;
use vfio_variant_virtio_legacy::builtin::{EmulatedPf, blk_image};

use vmm::{Driver, GuestAccess, Shared, SourceVmm, Vcpu, memfd};

/// Migrations measured (alternating between the two PFs).
const MIGRATIONS: usize = 21;
/// Load between two migrations.
const RUN: Duration = Duration::from_millis(30);

/// One PF's transitional VF, served in this process; returns its VMM connection.
fn function(pf: &EmulatedPf) -> Client {
    let text = pf
        .default_layout(PROFILE_TRANSITIONAL)
        .expect("transitional layout");
    let template = Arc::new(compile(Arc::new(
        parse_layout("blk", &text).expect("catalog layout"),
    )));
    let vf = Arc::new(
        VirtualFunction::provision(pf, template, PROFILE_TRANSITIONAL, "blk", vec![])
            .expect("a free VF"),
    );
    let port = Port::new("blk", vf);
    let (ours, theirs) = UnixStream::pair().expect("socketpair");
    std::thread::spawn(move || serve_connection(&port, &Arc::new(ServerConfig::default()), theirs));
    Client::from_stream(ours, ClientOptions::default()).expect("negotiation")
}

fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

/// The baseline: pause, stop, copy guest memory, resume, on one device.
fn pause_resume(driver: Driver, other: &Pair<Shared, Shared>) -> (Driver, f64) {
    let mut device = driver.device.clone();
    let vcpu = Vcpu::start(driver);
    std::thread::sleep(RUN);
    let start = Instant::now();
    let mut vmm = SourceVmm {
        vcpu: Some(vcpu),
        driver: None,
        destination_memory: other.memory.try_clone().expect("memfd"),
        config: Vec::new(),
    };
    device
        .set_state(MigrationState::Stop)
        .expect("stop the device");
    vmm.source_stopped().expect("pause and copy");
    device
        .set_state(MigrationState::Running)
        .expect("resume the device");
    let elapsed = start.elapsed().as_secs_f64() * 1e3;
    (vmm.driver.take().expect("the driver"), elapsed)
}

/// Each PF's VF over its VMM connection, with its guest memory.
fn side(pf: &EmulatedPf) -> Pair<Shared, Shared> {
    let memory = memfd();
    let device = Shared::attach(function(pf), &memory);
    Pair {
        port: device.clone(),
        device,
        memory,
        resume: None,
    }
}

fn main() {
    let dir = std::env::temp_dir().join(format!("vfio-variant-downtime-{}", std::process::id()));
    let (a, b) = (dir.join("a"), dir.join("b"));
    std::fs::create_dir_all(&b).expect("bench directory");
    let pf_a = EmulatedPf::blk(&a, false).expect("PF a");
    // Shared storage: PF b's VF 1 disk is PF a's.
    let shared = blk_image(&b, 1);
    let _ = std::fs::remove_file(&shared);
    std::os::unix::fs::symlink(blk_image(&a, 1), &shared).expect("shared disk");
    let pf_b = EmulatedPf::blk(&b, false).expect("PF b");
    let sides = [side(&pf_a), side(&pf_b)];

    let first = &sides[0];
    let mut driver = Driver::init(
        first.device.clone(),
        first.memory.try_clone().expect("memfd"),
    );
    let mut baseline = Vec::new();
    for _ in 0..MIGRATIONS {
        let (back, ms) = pause_resume(driver, &sides[1]);
        driver = back;
        baseline.push(ms);
    }

    let downtimes = migrations(driver, &sides);
    drop(sides);
    let in_process = median(in_process(&dir.join("in-process")));
    let _ = std::fs::remove_dir_all(&dir);
    let (downtime, base) = (median(downtimes), median(baseline));
    println!("BENCH vmm_pause_resume {base:.2} ms");
    println!(
        "BENCH virtio_blk_migration_downtime {downtime:.2} ms ratio={:.2} vs=vmm_pause_resume",
        downtime / base
    );
    println!(
        "BENCH virtio_blk_migration_downtime_in_process {in_process:.2} ms ratio={:.2} \
         vs=virtio_blk_migration_downtime",
        in_process / downtime
    );
}

/// One function of a back-and-forth migration: the device the migration driver moves, the
/// port its guest driver reaches it by, its guest memory, and what its VMM does before the
/// guest runs on it (an in-process machine decodes the migrated BARs).
struct Pair<D, P> {
    device: D,
    port: P,
    memory: OwnedFd,
    resume: Option<Arc<machine::Machine>>,
}

/// Migrates the function `driver` drives back and forth between the two of `pairs`
/// [`MIGRATIONS`] times under write load; the downtimes in ms.
fn migrations<D: MigratableDevice + Clone + Send, P: GuestAccess>(
    mut driver: Driver<P>,
    pairs: &[Pair<D, P>; 2],
) -> Vec<f64> {
    let mut downtimes = Vec::new();
    for round in 0..MIGRATIONS {
        let (from, to) = (&pairs[round % 2], &pairs[1 - round % 2]);
        let mut destination = to.device.clone();
        // The last migration left it stopped: a reset makes it a fresh destination.
        destination.recover().expect("reset the destination");
        let vcpu = Vcpu::start(driver);
        std::thread::sleep(RUN);
        let mut vmm = SourceVmm {
            vcpu: Some(vcpu),
            driver: None,
            destination_memory: to.memory.try_clone().expect("memfd"),
            config: Vec::new(),
        };
        let report = migrate(
            &mut from.device.clone(),
            &mut LocalDestination::new(&mut destination),
            &Options::default(),
            &mut vmm,
        )
        .expect("migration");
        downtimes.push(report.downtime.as_secs_f64() * 1e3);
        if let Some(machine) = &to.resume {
            machine.rescan();
        }
        driver = vmm.driver.take().expect("the driver");
        driver.device = to.port.clone();
        driver.memory = to.memory.try_clone().expect("memfd");
    }
    let vcpu = Vcpu::start(driver);
    std::thread::sleep(RUN);
    let mut driver = vcpu.pause();
    driver.drain();
    assert!(
        driver.acked.len() > MIGRATIONS,
        "writes went on across migrations"
    );
    downtimes
}

/// The same migrations with the VMM of examples/embedded_vmm: no server, no sockets.
fn in_process(dir: &std::path::Path) -> Vec<f64> {
    let (hosts, _image) = host::Host::pair(dir);
    let pairs = hosts.each_ref().map(|host| {
        let device = host.function(PROFILE_TRANSITIONAL, "blk");
        Pair {
            port: host.plug(&device),
            device,
            memory: host.memory.try_clone().expect("memfd"),
            resume: Some(Arc::clone(&host.machine)),
        }
    });
    pairs[0].port.place_bars();
    let driver = Driver::init(
        pairs[0].port.clone(),
        pairs[0].memory.try_clone().expect("memfd"),
    );
    migrations(driver, &pairs)
}
