//! VFIO's region indexes of a PCI function (`VFIO_PCI_*_REGION_INDEX` in linux/vfio.h): the
//! numbering a virtual function, the vfio-user protocol and kernel VFIO all use. BAR n is
//! region n.

/// The expansion ROM.
pub const ROM_REGION: u32 = 6;
/// Config space.
pub const CONFIG_REGION: u32 = 7;
/// Regions of a VFIO PCI device: BAR0-5, ROM, config, VGA.
pub const REGION_COUNT: u32 = 9;
