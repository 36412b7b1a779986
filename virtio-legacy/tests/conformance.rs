//! The framework's conformance kit against the emulated virtio-blk and virtio-net PFs.

use vfio_variant_virtio_legacy::builtin::EmulatedPf;

#[test]
fn the_virtio_legacy_backends_conform() {
    let dir = std::env::temp_dir().join(format!("vfio-variant-conformance-{}", std::process::id()));
    for build in [EmulatedPf::blk, EmulatedPf::net] {
        vfio_variant::testing::assert_conformance(&build(&dir, true).unwrap());
    }
}
