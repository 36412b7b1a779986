//! Arbitrary command queue entries and mailbox chains given to an emulated mlx PF: the entry
//! parser, the mailbox walk (alignment, block numbers, tokens, chain length), every command's
//! input parser and the firmware state they reach (migratable, suspend/resume, save/load
//! sessions, page trackers). Never a panic; the PF always hands each rung entry back to
//! software.
//!
//! Input: `count u8`, then `count % 9` entries of 64 bytes (the ownership bit is set for
//! them), then the rest: host memory contents from 0x1000 (mailboxes, state buffers).
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use vfio_variant::backend::DmaAccess;
use vfio_variant::backend::emulated::HostMemory;
use vfio_variant::physical::PhysicalFunction;
use vfio_variant_mlx::hw::firmware::FirmwareCaps;
use vfio_variant_mlx::hw::ifc::{
    ENTRY_SIZE, ENTRY_STATUS_OWN, INIT_CMD_DBELL, INIT_CMDQ_ADDR_L_SZ, OWNER_HW,
};
use vfio_variant_mlx::hw::pci::Generation;
use vfio_variant_mlx::hw::pf::MlxPf;

/// Host memory the PF reaches: 256 KiB at IOVA 0, the queue at 0.
const MEMORY: usize = 256 << 10;
/// Where the input's memory contents go.
const CONTENTS: usize = 0x1000;

fuzz_target!(|data: &[u8]| {
    let Some((&count, rest)) = data.split_first() else {
        return;
    };
    let entries = usize::from(count % 9).min(rest.len() / ENTRY_SIZE);
    let (entries, contents) = rest.split_at(entries * ENTRY_SIZE);
    let memory = Arc::new(HostMemory::new(MEMORY));
    let n = contents.len().min(MEMORY - CONTENTS);
    memory.write(CONTENTS as u64, &contents[..n]).unwrap();
    let pf = MlxPf::new(
        "fuzz",
        Generation::One,
        2,
        FirmwareCaps::default(),
        memory.clone(),
    );
    pf.bar_write(0, INIT_CMDQ_ADDR_L_SZ, &0u32.to_be_bytes())
        .unwrap();
    // Each entry is rung alone, in order, in slot 0: commands build on each other's state.
    for entry in entries.chunks_exact(ENTRY_SIZE) {
        let mut raw = [0u8; ENTRY_SIZE];
        raw.copy_from_slice(entry);
        raw[ENTRY_STATUS_OWN] |= OWNER_HW;
        memory.write(0, &raw).unwrap();
        pf.bar_write(0, INIT_CMD_DBELL, &1u32.to_be_bytes())
            .unwrap();
        memory.read(0, &mut raw).unwrap();
        assert_eq!(raw[ENTRY_STATUS_OWN] & OWNER_HW, 0, "entry not handed back");
    }
});
