//! Emulated mlx-style hardware: what the backend drives as it would drive a real mlx5 PF and
//! its VFs, through registers and DMA memory.
//!
//! - [`ifc`]: the firmware interface (opcodes, op_mods, status codes, syndromes, fields);
//! - [`cmdq`]: command queue entries and mailbox chains in DMA memory;
//! - [`firmware`]: the commands (capabilities, migratable, suspend/resume, save/load of VF
//!   state, the page tracker);
//! - [`pf`]: the PF (initialization segment, doorbell, firmware);
//! - [`vf`]: the VFs (config space, BAR 0, suspend state);
//! - [`dataplane`]: a VF's echo ring in guest memory;
//! - [`image`]: a VF's saved state, with generated device context memory;
//! - [`tracker`]: the page tracker;
//! - [`pci`]: the two hardware generations' config spaces.
//!
//! Host memory and the VFs' late-bound guest memory are the framework's
//! (`vfio_variant::backend::emulated`).
//!
//! # Simplifications against mlx5 (include/linux/mlx5/mlx5_ifc.h, drivers/vfio/pci/mlx5)
//!
//! Kept: the opcodes (QUERY_HCA_CAP 0x100, SET_HCA_CAP 0x109, SUSPEND_VHCA 0x115,
//! RESUME_VHCA 0x116, QUERY_VHCA_MIGRATION_STATE 0x117, SAVE_VHCA_STATE 0x118,
//! LOAD_VHCA_STATE 0x119, CREATE/MODIFY/DESTROY_GENERAL_OBJECT 0xa00/0xa01/0xa03 with object
//! type 0x46), the suspend/resume op_mods, the capability bits named after mlx5's, the
//! delivery and command status codes, the 64-byte entry with 16 inline bytes each way, the
//! 576-byte mailbox with 512 data bytes, `next`, `block_num` and token, the ownership bit, the
//! 8 MiB chunk limit and the 4 GiB image limit outside chunk mode. Simplified:
//!
//! - field offsets inside commands and capabilities are this model's own (byte-aligned,
//!   big-endian), not mlx5's bit layouts; capability bodies are 64 bytes;
//! - no signatures (Linux leaves them off), mailboxes 1 KiB aligned, messages at most 64 KiB;
//! - commands run synchronously when the doorbell is written; no completion EQ/interrupt;
//! - SAVE/LOAD name a buffer by its address in the PF's DMA space instead of an mkey;
//!   LOAD says whether an image is left partly loaded;
//! - SET_HCA_CAP on another function only sets general-2 `migratable` (devlink's
//!   "port function migratable"); the features it switches off are this model's
//!   ([`ifc::FEATURE_TIMESTAMP`]);
//! - the page tracker reports in the output of MODIFY_GENERAL_OBJECT instead of over an RDMA
//!   queue pair, and has no address-space or message-size limits;
//! - a VF's own initialization segment and command queue are not modelled; its data plane is
//!   an echo ring ([`dataplane`]) instead of Ethernet queues.

pub mod cmdq;
pub mod dataplane;
pub mod firmware;
pub mod ifc;
pub mod image;
pub mod pci;
pub mod pf;
pub mod tracker;
pub mod vf;
