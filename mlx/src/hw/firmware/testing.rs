//! Helpers of the firmware's unit tests: a firmware with one VF, commands and their status.

use std::sync::Arc;

use vfio_variant::physical::PhysicalFunction;

use super::{Firmware, FirmwareCaps};
use crate::hw::dataplane::REGS;
use crate::hw::ifc::*;
use crate::hw::pci::Generation;
use crate::hw::vf::MlxVf;
use vfio_variant::backend::emulated::HostMemory;

pub(super) const BUFFER: u64 = 0x1000;

pub(super) fn firmware(caps: FirmwareCaps) -> (Firmware, Arc<MlxVf>, Arc<HostMemory>) {
    let memory = Arc::new(HostMemory::new(0x1000 + (MAX_CHUNK_SIZE as usize)));
    let vf = Arc::new(MlxVf::new("vf1", 1, Generation::One, caps.features));
    let fw = Firmware::new(caps, 1, vec![vf.clone()], memory.clone());
    (fw, vf, memory)
}

pub(super) fn status(out: &[u8]) -> (u8, u32) {
    (out[OUT_STATUS], be32(out, OUT_SYNDROME))
}

pub(super) fn vhca(opcode: u16, op_mod: u16, vf: &MlxVf, flags: u8) -> Vec<u8> {
    let mut input = command(opcode, op_mod, STATE_INLEN);
    put_be16(&mut input, VHCA_IN_ID, vf.vhca_id());
    input[VHCA_IN_FLAGS] = flags;
    put_be32(&mut input, STATE_IN_SIZE, MAX_CHUNK_SIZE);
    put_be64(&mut input, STATE_IN_ADDRESS, BUFFER);
    input
}

pub(super) fn set_migratable(fw: &Firmware, on: bool) -> Vec<u8> {
    let mut input = command(SET_HCA_CAP, CAP_GENERAL_2 << 1, SET_HCA_CAP_INLEN);
    put_be16(&mut input, CAP_IN_OTHER_FUNCTION, 0x8000);
    put_be16(&mut input, CAP_IN_FUNCTION_ID, 1);
    put_be32(&mut input, CAP_BODY, u32::from(on));
    fw.execute(&input)
}

pub(super) fn register(vf: &MlxVf, reg: u64, value: u32) {
    vf.bar_write(0, REGS + reg, &value.to_le_bytes()).unwrap();
}

pub(super) fn stop(fw: &Firmware, vf: &MlxVf) {
    for op_mod in [SUSPEND_INITIATOR, SUSPEND_RESPONDER] {
        assert_eq!(
            status(&fw.execute(&vhca(SUSPEND_VHCA, op_mod, vf, 0))),
            (0, 0)
        );
    }
}
