//! A `migratable` function under data-plane traffic moves from a generation-1 PF to a
//! generation-2 PF over vfio-user with the framework's migration driver: the guest sees the
//! same config space before and after, and the data plane goes on with nothing lost or
//! served twice. Migrations the instance type or the profile does not allow are refused with a
//! reason while the source keeps running.

mod common;

use std::sync::Arc;

use common::*;
use parking_lot::Mutex;
use vfio_variant::migration::{MigrationFlags, MigrationState};
use vfio_variant::migration_driver::{
    LocalDestination, MigrateError, Observer, Options, Progress, migrate,
};
use vfio_variant::physical::PhysicalFunction;
use vfio_variant::vpci::compat::compare;
use vfio_variant::vpci::{compile::compile, parse_layout};
use vfio_variant_mlx::backend::{LAYOUT, PROFILE_DEFAULT, PROFILE_MIGRATABLE};
use vfio_variant_mlx::hw::dataplane::CONSUMER;
use vfio_variant_mlx::hw::firmware::FirmwareCaps;
use vfio_variant_mlx::hw::ifc::FEATURE_TIMESTAMP;
use vfio_variant_mlx::hw::pci::Generation;
use vfio_variant_mlx::hw::vf::MlxVf;

/// The guest keeps sending while pre-copy runs (the source serves it; each round's delta
/// carries the new data-plane state).
struct Traffic {
    driver: Arc<Mutex<Driver>>,
    vf: Arc<MlxVf>,
    rounds: u32,
    progress: Vec<Progress>,
}

impl Observer for Traffic {
    fn progress(&mut self, progress: &Progress) {
        self.progress.push(progress.clone());
    }

    fn precopy_round(&mut self) -> Result<(), String> {
        let mut driver = self.driver.lock();
        driver.check();
        if self.rounds < 3 {
            driver.send(&self.vf, 10);
        }
        self.rounds += 1;
        Ok(())
    }

    fn source_stopped(&mut self) -> Result<(), String> {
        // The vCPUs are stopped: the guest only looks.
        self.driver.lock().check();
        Ok(())
    }
}

#[test]
fn a_migratable_function_moves_to_the_next_generation_mid_traffic() {
    let old = host("gen1", Generation::One, FirmwareCaps::default());
    let new = host("gen2", Generation::Two, FirmwareCaps::default());
    let memory = guest_memory();
    let mut src = serve(&old, PROFILE_MIGRATABLE, &memory);
    let mut dst = serve(&new, PROFILE_MIGRATABLE, &memory);
    // The two VFs really differ underneath.
    let physical = |vf: &MlxVf| vf.describe().unwrap().config;
    assert_ne!(physical(&src.vf), physical(&dst.vf));
    assert_ne!(physical(&src.vf)[2..4], physical(&dst.vf)[2..4]);

    let driver = Arc::new(Mutex::new(Driver::start(&mut src, memory.clone(), 64)));
    driver.lock().send(&src.vf, 100);
    assert_eq!(driver.lock().check(), 100);
    let before = src.config();
    assert_eq!(&before[..4], &[0xb3, 0x15, 0x1e, 0x10]);

    let flags = src.client.migration_flags().unwrap();
    assert!(flags.contains(MigrationFlags::PRE_COPY | MigrationFlags::P2P));
    let mut traffic = Traffic {
        driver: driver.clone(),
        vf: src.vf.clone(),
        rounds: 0,
        progress: Vec::new(),
    };
    let report = migrate(
        &mut src.client,
        &mut LocalDestination::new(&mut dst.client),
        &Options::default(),
        &mut traffic,
    )
    .unwrap();
    assert!(!report.precopy_rounds.is_empty());
    // The first round carried the context memory (64 pages) and the rest far less.
    assert!(report.precopy_rounds[0] > 64 * 4096, "{report:?}");
    // Stop-copy: the config space (4 KiB) with the MSI-X table the framework serves (64
    // vectors of 16 bytes), the last delta (a header) and the framing.
    assert!(report.stop_copy_bytes < 4096 + 64 * 16 + 1024, "{report:?}");
    assert_eq!(traffic.progress.last(), Some(&Progress::Resumed));
    assert_eq!(src.client.mig_state().unwrap(), MigrationState::Stop);
    assert_eq!(dst.client.mig_state().unwrap(), MigrationState::Running);

    // Byte-identical config space, COMMAND and BAR 0 included.
    assert_eq!(dst.config(), before);
    // The destination goes on from where the source stopped: nothing lost or served twice.
    let mut driver = driver.lock();
    driver.check_all(&dst.vf);
    assert_eq!(read_register(&src.vf, CONSUMER), driver.produced);
    driver.send(&dst.vf, 50);
    driver.check_all(&dst.vf);
    // Traffic went on during pre-copy, and the source served it before it stopped.
    let during = 10 * traffic.rounds.min(3);
    assert!(during > 0);
    assert_eq!(driver.produced, 100 + during + 50);
    assert_eq!(read_register(&src.vf, CONSUMER), 100 + during);
}

#[test]
fn without_precopy_the_state_moves_while_stopped() {
    let old = host("gen1", Generation::One, FirmwareCaps::default());
    let new = host("gen2", Generation::Two, FirmwareCaps::default());
    let memory = guest_memory();
    let mut src = serve(&old, PROFILE_MIGRATABLE, &memory);
    let mut dst = serve(&new, PROFILE_MIGRATABLE, &memory);
    let mut driver = Driver::start(&mut src, memory.clone(), 3000);
    driver.send(&src.vf, 20);
    let options = Options {
        precopy: false,
        ..Options::default()
    };
    let report = migrate(
        &mut src.client,
        &mut LocalDestination::new(&mut dst.client),
        &options,
        &mut (),
    )
    .unwrap();
    // 3000 context pages need two chunks.
    assert!(report.stop_copy_bytes > 3000 * 4096, "{report:?}");
    driver.check_all(&dst.vf);
    driver.send(&dst.vf, 5);
    driver.check_all(&dst.vf);
}

/// Runs a migration expected to fail; checks the source still runs and serves.
fn refused(src: &mut Served, dst: &mut Served, driver: &mut Driver) -> MigrateError {
    let error = migrate(
        &mut src.client,
        &mut LocalDestination::new(&mut dst.client),
        &Options::default(),
        &mut (),
    )
    .unwrap_err();
    match src.client.mig_state() {
        Ok(state) => assert_eq!(state, MigrationState::Running),
        // A function without migration has no migration state.
        Err(e) => assert!(!src.vf.migratable(), "{e}"),
    }
    driver.send(&src.vf, 5);
    driver.check_all(&src.vf);
    error
}

#[test]
fn doorbells_latched_while_suspended_are_served_by_the_destination() {
    let old = host("gen1", Generation::One, FirmwareCaps::default());
    let new = host("gen2", Generation::Two, FirmwareCaps::default());
    let memory = guest_memory();
    let mut src = serve(&old, PROFILE_MIGRATABLE, &memory);
    let mut dst = serve(&new, PROFILE_MIGRATABLE, &memory);
    let mut driver = Driver::start(&mut src, memory.clone(), 8);
    driver.send(&src.vf, 40);
    assert_eq!(driver.check(), 40);
    // The initiator is suspended: the doorbell is taken but nothing is served.
    src.client
        .set_mig_state(MigrationState::RunningP2p)
        .unwrap();
    driver.send(&src.vf, 9);
    assert_eq!(driver.check(), 0);
    src.client.set_mig_state(MigrationState::StopCopy).unwrap();
    let mut stream = Vec::new();
    loop {
        let chunk = src.client.mig_data_read(65536).unwrap();
        stream.extend_from_slice(&chunk);
        if chunk.len() < 65536 {
            break;
        }
    }
    src.client.set_mig_state(MigrationState::Stop).unwrap();
    dst.client.set_mig_state(MigrationState::Resuming).unwrap();
    dst.client.mig_data_write(&stream).unwrap();
    dst.client.set_mig_state(MigrationState::Running).unwrap();
    driver.check_all(&dst.vf);
    assert_eq!(read_register(&src.vf, CONSUMER), 40);
    driver.send(&dst.vf, 3);
    driver.check_all(&dst.vf);
}

#[test]
fn a_target_of_another_instance_type_is_refused_and_the_source_keeps_running() {
    let old = host("gen1", Generation::One, FirmwareCaps::default());
    let new = host("gen2", Generation::Two, FirmwareCaps::default());
    let memory = guest_memory();
    let mut src = serve(&old, PROFILE_MIGRATABLE, &memory);
    let other = LAYOUT.replace("table_size = 64", "table_size = 32");
    assert_ne!(other, LAYOUT);
    let mut dst = serve_with(&new, PROFILE_MIGRATABLE, &other, &memory);
    let mut driver = Driver::start(&mut src, memory.clone(), 4);
    driver.send(&src.vf, 10);
    let error = refused(&mut src, &mut dst, &mut driver);
    assert!(matches!(error, MigrateError::Destination(_)), "{error}");
    // The reason, as `vfio-variant vpci compat` gives it to the operator.
    let template = |text: &str| compile(Arc::new(parse_layout("t", text).unwrap()));
    let differences = compare(&template(LAYOUT), &template(&other));
    assert!(
        differences.iter().any(|d| d.place.contains("MSI-X")),
        "{differences:?}"
    );
}

#[test]
fn hardware_that_cannot_serve_the_state_refuses_it_and_the_source_keeps_running() {
    let old = host("gen1", Generation::One, FirmwareCaps::default());
    // A generation-2 PF whose VFs lack the data plane the instance type needs.
    let lacking = FirmwareCaps {
        features: FEATURE_TIMESTAMP,
        ..FirmwareCaps::default()
    };
    let new = host("gen2", Generation::Two, lacking);
    let memory = guest_memory();
    let mut src = serve(&old, PROFILE_MIGRATABLE, &memory);
    let mut dst = serve(&new, PROFILE_MIGRATABLE, &memory);
    let mut driver = Driver::start(&mut src, memory.clone(), 4);
    driver.send(&src.vf, 10);
    let error = refused(&mut src, &mut dst, &mut driver);
    // The destination's firmware refused the state as it was loaded (SYNDROME_FEATURES), so
    // the stream was refused mid-way; the destination was reset and runs.
    assert!(matches!(error, MigrateError::Destination(_)), "{error}");
    assert!(error.to_string().contains("MIG_DATA_WRITE"), "{error}");
    assert_eq!(dst.client.mig_state().unwrap(), MigrationState::Running);
}

#[test]
fn a_default_function_is_not_migratable_and_keeps_its_features() {
    let old = host("gen1", Generation::One, FirmwareCaps::default());
    let new = host("gen2", Generation::Two, FirmwareCaps::default());
    let memory = guest_memory();
    let mut src = serve(&old, PROFILE_DEFAULT, &memory);
    let mut dst = serve(&new, PROFILE_MIGRATABLE, &memory);
    assert!(!src.vf.migratable());
    assert_ne!(src.vf.features() & FEATURE_TIMESTAMP, 0);
    let mut driver = Driver::start(&mut src, memory.clone(), 4);
    driver.send(&src.vf, 10);
    let error = refused(&mut src, &mut dst, &mut driver);
    assert!(matches!(error, MigrateError::Source(_)), "{error}");
}
