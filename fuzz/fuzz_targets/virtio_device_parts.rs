//! Arbitrary bytes as the device parts of a DEV_PARTS_SET: never a panic; parts that decode
//! re-encode to parts that decode to the same state; restoring them into a stopped VF either
//! takes the whole state or leaves the VF exactly as it was.
#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use vfio_variant::backend::emulated::{DmaSlot, IrqSlot};
use vfio_variant_virtio_legacy::hw::net::NetDevice;
use vfio_variant_virtio_legacy::hw::parts::{DeviceState, split};
use vfio_variant_virtio_legacy::hw::vf::VirtioVf;

/// A stopped net VF (two queues) with no guest memory: restoring touches no ring.
fn vf() -> &'static VirtioVf {
    static VF: OnceLock<VirtioVf> = OnceLock::new();
    VF.get_or_init(|| {
        let (device, _host) = NetDevice::new([0x52, 0x54, 0, 0, 0, 1]).expect("socket pair");
        let vf = VirtioVf::new(
            "fuzz",
            Box::new(device),
            Arc::new(DmaSlot::default()),
            Arc::new(IrqSlot::default()),
        );
        vf.transport().set_stopped(true);
        vf
    })
}

fuzz_target!(|data: &[u8]| {
    let _ = split(data);
    let Ok(state) = DeviceState::decode(data) else {
        return;
    };
    let encoded = state.encode();
    assert_eq!(DeviceState::decode(&encoded).as_ref(), Ok(&state));
    let transport = vf().transport();
    let before = transport.device_state();
    match transport.restore_state(&state) {
        Ok(()) => {
            let after = transport.device_state();
            assert_eq!(after.driver_features, state.driver_features);
            assert_eq!(after.status, state.status);
            assert_eq!(after.queues, state.queues);
            assert_eq!(after.device_config, state.device_config);
        }
        Err(_) => assert_eq!(transport.device_state(), before),
    }
});
