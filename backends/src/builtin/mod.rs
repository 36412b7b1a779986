//! Backends built into the `vfio-variant` command, registered statically through the same
//! trait as plugins.

pub mod passthrough;
pub mod sample;

use std::sync::Arc;

use crate::registry::{Registry, RegistryError};

/// Registers every built-in backend; the passthrough backend also offers the free VFs of
/// `passthrough_pfs` (PCI addresses).
pub fn register_builtin(
    registry: &mut Registry,
    passthrough_pfs: &[String],
) -> Result<(), RegistryError> {
    registry.register(Arc::new(sample::SampleBackend::new(1024)))?;
    // Functions bound to vfio-pci, through kernel VFIO (none listed on a host without any),
    // and the free VFs of the PFs named.
    registry.register(Arc::new(
        passthrough::PassthroughBackend::new().with_pfs(passthrough_pfs),
    ))?;
    // An emulated DSA PF: 8 WQs, 4 dedicated and 2 shared reserved for sub-devices.
    match vfio_variant_idxd::IdxdBackend::new(vfio_variant_idxd::IdxdConfig::default()) {
        Ok(idxd) => registry.register(Arc::new(idxd))?,
        Err(e) => tracing::warn!("idxd backend not registered: {e}"),
    }
    // An emulated generation-1 mlx PF with 4 VFs (`default` or `migratable`).
    match vfio_variant_mlx::MlxBackend::emulated(
        "mlx",
        vfio_variant_mlx::hw::pci::Generation::One,
        4,
        vfio_variant_mlx::hw::firmware::FirmwareCaps::default(),
    ) {
        Ok((mlx, _pf)) => registry.register(Arc::new(mlx))?,
        Err(e) => tracing::warn!("mlx backend not registered: {e}"),
    }
    // Emulated virtio PFs with 2 VFs each: `virtio-blk` (image files) and `virtio-net`
    // (datagram sockets), in $VFIO_VARIANT_VIRTIO_DIR or a temporary directory.
    let (dir, temporary) = vfio_variant_virtio_legacy::builtin::files_dir();
    for build in [
        vfio_variant_virtio_legacy::builtin::EmulatedPf::blk,
        vfio_variant_virtio_legacy::builtin::EmulatedPf::net,
    ] {
        match build(&dir, temporary) {
            Ok(pf) => registry.register(Arc::new(pf))?,
            Err(e) => tracing::warn!("virtio backend not registered: {e}"),
        }
    }
    Ok(())
}
