//! The framework's conformance kit against the idxd backend over an emulated DSA device.

use vfio_variant_idxd::{IdxdBackend, IdxdConfig};

#[test]
fn the_idxd_backend_conforms() {
    vfio_variant::testing::assert_conformance(&IdxdBackend::new(IdxdConfig::default()).unwrap());
}
