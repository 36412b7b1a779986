//! The backend's profiles and provisioning, the instance-type config space over both
//! generations, and dirty page tracking through the firmware's page tracker over vfio-user.

mod common;

use std::sync::Arc;

use common::*;
use vfio_variant::backend::{Backend, BackendError, CreateRequest};
use vfio_variant::physical::PhysicalFunction;
use vfio_variant::vfio_user::feature::DmaLoggingRange;
use vfio_variant::vpci::parse_layout;
use vfio_variant_mlx::backend::{LAYOUT, PROFILE_DEFAULT, PROFILE_MIGRATABLE};
use vfio_variant_mlx::hw::firmware::FirmwareCaps;
use vfio_variant_mlx::hw::ifc::{FEATURE_ECHO, FEATURE_TIMESTAMP};
use vfio_variant_mlx::hw::pci::Generation;

fn request(profile: &str) -> CreateRequest {
    CreateRequest {
        profile: profile.into(),
        instance: "fn".into(),
        layout: Arc::new(parse_layout("mlx-vf", LAYOUT).unwrap()),
        attributes: Vec::new(),
    }
}

fn available(host: &Host, profile: &str) -> u32 {
    host.backend
        .profiles()
        .into_iter()
        .find(|p| p.name == profile)
        .unwrap()
        .available_instances
}

#[test]
fn profiles_count_free_vfs_and_migratable_gives_up_what_cannot_migrate() {
    let host = host("gen1", Generation::One, FirmwareCaps::default());
    assert_eq!(available(&host, PROFILE_MIGRATABLE), 2);
    let migratable = host.backend.create(&request(PROFILE_MIGRATABLE)).unwrap();
    assert!(migratable.migration().is_some());
    let vf = &host.pf.vfs()[0];
    assert!(vf.migratable());
    assert_eq!(vf.features(), FEATURE_ECHO);
    let default = host.backend.create(&request(PROFILE_DEFAULT)).unwrap();
    assert!(default.migration().is_none());
    assert_eq!(
        host.pf.vfs()[1].features(),
        FEATURE_ECHO | FEATURE_TIMESTAMP
    );
    assert_eq!(available(&host, PROFILE_DEFAULT), 0);
    assert!(matches!(
        host.backend.create(&request(PROFILE_DEFAULT)),
        Err(BackendError::NoInstances(_))
    ));
    // Destroying gives the VF back; provisioned again as `default` it has its features.
    drop(migratable);
    assert_eq!(available(&host, PROFILE_MIGRATABLE), 1);
    let again = host.backend.create(&request(PROFILE_DEFAULT)).unwrap();
    assert!(!vf.migratable());
    assert_eq!(vf.features(), FEATURE_ECHO | FEATURE_TIMESTAMP);
    drop((again, default));
}

#[test]
fn requests_the_backend_cannot_serve_are_refused_and_nothing_stays_provisioned() {
    let host = host(
        "gen1",
        Generation::One,
        FirmwareCaps {
            migration: false,
            ..FirmwareCaps::default()
        },
    );
    assert_eq!(available(&host, PROFILE_MIGRATABLE), 0);
    let error = host
        .backend
        .create(&request(PROFILE_MIGRATABLE))
        .err()
        .unwrap();
    assert!(error.to_string().contains("does not migrate"), "{error}");
    assert!(matches!(
        host.backend.create(&request("fast")),
        Err(BackendError::UnknownProfile(_))
    ));
    let mut with_attribute = request(PROFILE_DEFAULT);
    with_attribute.attributes.push(("mac".into(), "x".into()));
    assert!(matches!(
        host.backend.create(&with_attribute),
        Err(BackendError::Refused(_))
    ));
    assert_eq!(available(&host, PROFILE_DEFAULT), 2);
    assert!(host.backend.default_layout("fast").is_err());
    assert_eq!(
        host.backend.default_layout(PROFILE_MIGRATABLE).unwrap(),
        LAYOUT
    );
}

#[test]
fn both_generations_show_the_instance_type_not_their_hardware() {
    let memory = guest_memory();
    let mut one = serve(
        &host("gen1", Generation::One, FirmwareCaps::default()),
        PROFILE_MIGRATABLE,
        &memory,
    );
    let mut two = serve(
        &host("gen2", Generation::Two, FirmwareCaps::default()),
        PROFILE_DEFAULT,
        &memory,
    );
    let (a, b) = (one.config(), two.config());
    assert_eq!(a, b);
    // The instance type's identity and capability offsets, not the VFs'.
    assert_eq!(&a[..4], &[0xb3, 0x15, 0x1e, 0x10]);
    assert_eq!(a[0x34], 0x60);
    let physical_one = one.vf.describe().unwrap().config;
    let physical_two = two.vf.describe().unwrap().config;
    assert_eq!(&physical_one[2..4], &0x101cu16.to_le_bytes());
    assert_eq!(&physical_two[2..4], &0x101eu16.to_le_bytes());
    assert_eq!(physical_two[0x34], 0x40);
}

#[test]
fn dma_logging_uses_the_page_tracker_with_merged_ranges() {
    let memory = guest_memory();
    let host = host("gen1", Generation::One, FirmwareCaps::default());
    let mut served = serve(&host, PROFILE_MIGRATABLE, &memory);
    let mut driver = Driver::start(&mut served, memory.clone(), 0);
    // Six ranges: more than the tracker's four, so the closest are merged.
    let ranges: Vec<DmaLoggingRange> = (0..6u64)
        .map(|i| DmaLoggingRange {
            iova: GUEST_BASE + i * 0x20000,
            length: 0x10000,
        })
        .collect();
    let page_size = served.client.dma_logging_start(4096, &ranges).unwrap();
    assert_eq!(page_size, 4096);
    {
        let tracker = host.pf.vfs()[0].tracker().lock();
        let tracked = tracker.as_ref().unwrap().ranges();
        assert_eq!(tracked.len(), 4);
        // Equal gaps: the first pair merges, then the merged range with the next.
        assert_eq!(tracked[0], GUEST_BASE..GUEST_BASE + 0x50000);
    }
    // 200 entries of 32 bytes: the device writes the ring's first two pages.
    driver.send(&served.vf, 128);
    driver.check();
    driver.send(&served.vf, 72);
    driver.check_all(&served.vf);
    let bitmap = served
        .client
        .dma_logging_report(GUEST_BASE, 0x10000, 4096)
        .unwrap();
    assert_eq!(bitmap, vec![0b11]);
    // Read and clear.
    let bitmap = served
        .client
        .dma_logging_report(GUEST_BASE, 0x10000, 4096)
        .unwrap();
    assert_eq!(bitmap, vec![0]);
    served.client.dma_logging_stop().unwrap();
    assert!(host.pf.vfs()[0].tracker().lock().is_none());
}

#[test]
fn precopy_is_offered_only_with_multi_load_and_tracking_state() {
    use vfio_variant::migration::MigrationFlags;
    let flags = |caps: FirmwareCaps| {
        let host = host("gen1", Generation::One, caps);
        let function = host.backend.create(&request(PROFILE_MIGRATABLE)).unwrap();
        function.migration().unwrap().flags()
    };
    let all = MigrationFlags::STOP_COPY | MigrationFlags::P2P | MigrationFlags::PRE_COPY;
    assert_eq!(flags(FirmwareCaps::default()), all);
    for caps in [
        FirmwareCaps {
            multi_load: false,
            ..FirmwareCaps::default()
        },
        FirmwareCaps {
            tracking_state: false,
            ..FirmwareCaps::default()
        },
    ] {
        assert_eq!(flags(caps), MigrationFlags::STOP_COPY | MigrationFlags::P2P);
    }
}
