//! Live migration inside one process, with no sockets: the example VMM of
//! examples/embedded_vmm builds two transitional virtio-blk VFs from the built-in backend on
//! two "hosts" sharing the disk, maps guest RAM, turns the guest's port-I/O exits into device
//! calls and takes the function's INTx from an eventfd. A legacy driver keeps writes in
//! flight from its vCPU thread while the VMM migrates the VF to the other function with
//! `vfio_variant::migration_driver` on the `VirtualFunction`s themselves. The checks are the
//! two-host test's: every acknowledged write exactly once and in the image, and the guest's
//! config space identical.

#[path = "../examples/embedded_vmm/guest.rs"]
mod guest;
#[path = "../examples/embedded_vmm/host.rs"]
mod host;
#[path = "../examples/embedded_vmm/machine.rs"]
mod machine;
#[path = "common/vmm.rs"]
#[allow(dead_code)]
mod vmm;

use std::collections::BTreeSet;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Duration;

use vfio_variant::migration::MigrationState;
use vfio_variant::migration_driver::{LocalDestination, MigrateError, Options, migrate};
use vfio_variant_virtio_legacy::backend::{PROFILE_MODERN, PROFILE_TRANSITIONAL};

use host::Host;
use vmm::{BLOCK, DISK_BLOCKS, Driver, GuestAccess, SourceVmm, Vcpu, block, config_space};

fn image_block(image: &Path, at: u32) -> Vec<u8> {
    let mut data = vec![0u8; BLOCK];
    std::fs::File::open(image)
        .unwrap()
        .read_exact_at(&mut data, u64::from(at) * BLOCK as u64)
        .unwrap();
    data
}

#[test]
fn a_virtio_blk_vf_migrates_in_process_mid_io() {
    let dir = std::env::temp_dir().join(format!("vfio-variant-embedded-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let ([a, b], image) = Host::pair(&dir);

    let source = a.function(PROFILE_TRANSITIONAL, "blk0");
    let port = a.plug(&source);
    port.place_bars();
    // Memory decoding on: an MMIO load of MSI-X entry 0's vector control (reset: masked).
    port.config_write(4, &[0x02, 0x00]);
    let mut control = [0u8; 4];
    port.mmio_read(12, &mut control);
    assert_eq!(
        u32::from_le_bytes(control),
        1,
        "MMIO exits reach the function"
    );
    let driver = Driver::init(port, a.memory.try_clone().unwrap());
    let vcpu = Vcpu::start(driver);
    std::thread::sleep(Duration::from_millis(200));

    // The destination VF takes VF 1 (the shared disk); a modern VF, another layout, VF 2.
    let destination = b.function(PROFILE_TRANSITIONAL, "blk0");
    let modern = b.function(PROFILE_MODERN, "blk-modern");

    // Another layout refuses the stream before it changes; the source goes on running.
    let error = migrate(
        &mut source.clone(),
        &mut LocalDestination::new(&mut modern.clone()),
        &Options::default(),
        &mut (),
    )
    .unwrap_err();
    assert!(matches!(error, MigrateError::Destination(_)), "{error}");
    assert!(error.to_string().contains("stream refused"), "{error}");
    assert_eq!(source.migration_state(), MigrationState::Running);
    assert_eq!(modern.migration_state(), MigrationState::Running);

    // The move, mid-I/O.
    std::thread::sleep(Duration::from_millis(100));
    let destination_port = b.plug(&destination);
    let mut vmm = SourceVmm {
        vcpu: Some(vcpu),
        driver: None,
        destination_memory: b.memory.try_clone().unwrap(),
        config: Vec::new(),
    };
    let report = migrate(
        &mut source.clone(),
        &mut LocalDestination::new(&mut destination.clone()),
        &Options::default(),
        &mut vmm,
    )
    .unwrap();
    assert_eq!(source.migration_state(), MigrationState::Stop);
    assert_eq!(destination.migration_state(), MigrationState::Running);
    b.machine.rescan();
    let mut driver = vmm.driver.take().unwrap();
    let acked_on_source = driver.acked.len();
    eprintln!(
        "migrated in-process mid-I/O: {acked_on_source} writes acknowledged on the source, {} \
         in flight, {} interrupts, {} bytes of device state, downtime {:?}",
        driver.in_flight(),
        driver.interrupts,
        report.bytes(),
        report.downtime
    );
    assert!(acked_on_source > 0, "the source did I/O");
    assert!(driver.interrupts > 0, "INTx came through the eventfd");

    // The vCPU goes on at the destination: same guest memory, the destination's function at
    // the BAR the migrated config space holds.
    driver.device = destination_port;
    driver.memory = b.memory.try_clone().unwrap();
    // Identical, but for STATUS.INTERRUPT: it follows the device's INTx condition, and a
    // request the source completed while stopping (its queue drains in STOP, where it raises
    // no interrupt) is signalled by the destination once it runs; the guest acknowledges it.
    let without_intx_status = |mut config: Vec<u8>| {
        config[6] &= !0x08;
        config
    };
    assert_eq!(
        without_intx_status(config_space(&driver.device)),
        without_intx_status(vmm.config.clone()),
        "guest-visible config space"
    );
    let interrupts_on_source = driver.interrupts;
    let vcpu = Vcpu::start(driver);
    std::thread::sleep(Duration::from_millis(300));
    let mut driver = vcpu.pause();
    driver.drain();
    assert!(
        driver.acked.len() > acked_on_source,
        "writes went on at the destination"
    );
    assert!(
        driver.interrupts > interrupts_on_source,
        "the destination's INTx reached this machine"
    );

    // Exactly once: every request was acknowledged once, and its block is in the image.
    let acked: BTreeSet<u32> = driver.acked.iter().copied().collect();
    assert_eq!(
        acked.len(),
        driver.acked.len(),
        "no request completed twice"
    );
    assert_eq!(
        acked,
        (0..driver.next_seq).collect(),
        "every request completed"
    );
    let first = driver.next_seq.saturating_sub(DISK_BLOCKS);
    for seq in first..driver.next_seq {
        let at = seq % DISK_BLOCKS;
        assert!(
            image_block(&image, at) == block(seq),
            "write {seq} in block {at}"
        );
    }
    drop((a, b));
    let _ = std::fs::remove_dir_all(&dir);
}
