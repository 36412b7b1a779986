//! A VMM that links the framework and runs functions in its own process, with no sockets
//! and no server (docs/embedding.md walks through it):
//!
//! - it builds transitional virtio-blk VFs from the built-in virtio-blk backend on two
//!   "hosts" sharing the disk (`host.rs`);
//! - it maps guest RAM and gives it to the functions as their DMA (`machine.rs`);
//! - it turns the guest's port-I/O and MMIO exits into calls on the `VirtualFunction`
//!   (config space through ports 0xcf8/0xcfc) and takes interrupts from an eventfd;
//! - while the guest's legacy virtio-blk driver (`tests/common/vmm.rs`, through `guest.rs`)
//!   keeps writes in flight, it live-migrates the VF to the other host's function with
//!   `vfio_variant::migration_driver`, and the guest goes on there.
//!
//! Run: `cargo run -p vfio-variant-backends --example embedded_vmm`. The same code runs as
//! the `embedded_vmm` integration test, with its checks.

mod guest;
mod host;
mod machine;
// Shared with the tests: the guest driver, its vCPU and the VMM's part of a migration.
#[path = "../../tests/common/vmm.rs"]
#[allow(dead_code)]
mod vmm;

use std::time::Duration;

use vfio_variant::migration_driver::{LocalDestination, Options, migrate};
use vfio_variant_virtio_legacy::backend::PROFILE_TRANSITIONAL;

use host::Host;
use vmm::{Driver, GuestAccess, SourceVmm, Vcpu};

fn main() {
    let dir = std::env::temp_dir().join(format!("vfio-variant-embedded-{}", std::process::id()));
    let ([a, b], _image) = Host::pair(&dir);

    // Host a: the VF, placed by the guest's firmware; its driver starts writing.
    let source = a.function(PROFILE_TRANSITIONAL, "blk0");
    let port = a.plug(&source);
    port.place_bars();
    port.config_write(4, &[0x02, 0x00]);
    let mut control = [0u8; 4];
    port.mmio_read(12, &mut control);
    println!(
        "MSI-X entry 0 vector control over MMIO: {:#x}",
        u32::from_le_bytes(control)
    );
    let vcpu = Vcpu::start(Driver::init(port, a.memory.try_clone().expect("memfd")));
    std::thread::sleep(Duration::from_millis(300));

    // Host b: the destination function, plugged into its machine before the move.
    let destination = b.function(PROFILE_TRANSITIONAL, "blk0");
    let destination_port = b.plug(&destination);
    let mut vmm = SourceVmm {
        vcpu: Some(vcpu),
        driver: None,
        destination_memory: b.memory.try_clone().expect("memfd"),
        config: Vec::new(),
    };
    let report = migrate(
        &mut source.clone(),
        &mut LocalDestination::new(&mut destination.clone()),
        &Options::default(),
        &mut vmm,
    )
    .expect("migration");
    b.machine.rescan();
    let mut driver = vmm.driver.take().expect("the paused vCPU's driver");
    println!(
        "migrated: {} writes acknowledged on host a, {} bytes of device state, downtime {:?}",
        driver.acked.len(),
        report.bytes(),
        report.downtime
    );

    // The guest goes on at host b.
    let before = driver.acked.len();
    driver.device = destination_port;
    driver.memory = b.memory.try_clone().expect("memfd");
    let vcpu = Vcpu::start(driver);
    std::thread::sleep(Duration::from_millis(300));
    let mut driver = vcpu.pause();
    driver.drain();
    println!(
        "{} more writes acknowledged on host b; {} interrupts taken in all",
        driver.acked.len() - before,
        driver.interrupts
    );
    drop((a, b));
    let _ = std::fs::remove_dir_all(&dir);
}
