//! The framework's conformance kit against the mlx backend over emulated PFs of both
//! generations.

use vfio_variant_mlx::MlxBackend;
use vfio_variant_mlx::hw::firmware::FirmwareCaps;
use vfio_variant_mlx::hw::pci::Generation;

#[test]
fn the_mlx_backend_conforms() {
    for generation in [Generation::One, Generation::Two] {
        let (backend, _pf) =
            MlxBackend::emulated("mlx", generation, 2, FirmwareCaps::default()).unwrap();
        vfio_variant::testing::assert_conformance(&backend);
    }
}
