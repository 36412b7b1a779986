//! The firmware interface: opcodes, op_mod values, status codes, syndromes, the initialization
//! segment's registers and the (simplified) field offsets of every command, as the driver and
//! the emulated firmware both use them. Named after include/linux/mlx5/mlx5_ifc.h and
//! drivers/net/ethernet/mellanox/mlx5/core/cmd.c; every multi-byte field is big-endian, as on
//! mlx5 hardware.

/// Initialization segment (PF BAR 0): firmware revision.
pub const INIT_FW_REV: u64 = 0x00;
/// Initialization segment: command interface revision (upper 16 bits).
pub const INIT_CMDIF_REV: u64 = 0x04;
/// Initialization segment: upper 32 bits of the command queue's address.
pub const INIT_CMDQ_ADDR_H: u64 = 0x10;
/// Initialization segment: lower bits of the address (4 KiB aligned), `log_cmdq_size` in
/// bits 7:4 and `log_cmdq_stride` in bits 3:0 (read-only).
pub const INIT_CMDQ_ADDR_L_SZ: u64 = 0x14;
/// Initialization segment: the command doorbell (bit i rings entry i).
pub const INIT_CMD_DBELL: u64 = 0x18;
/// Initialization segment: bit 31 set while the firmware initializes.
pub const INIT_INITIALIZING: u64 = 0x1fc;
/// Command interface revision the firmware speaks.
pub const CMDIF_REV: u16 = 5;
/// log2 of the number of command queue entries.
pub const LOG_CMDQ_SIZE: u32 = 5;
/// log2 of the command queue entry stride.
pub const LOG_CMDQ_STRIDE: u32 = 6;
/// Size of one command queue entry (`struct mlx5_cmd_layout`).
pub const ENTRY_SIZE: usize = 64;
/// Entries in the queue.
pub const ENTRIES: usize = 1 << LOG_CMDQ_SIZE;

/// Entry field: command type (must be [`CMD_TYPE_PCIE`]).
pub const ENTRY_TYPE: usize = 0;
/// Entry field: input length in bytes (be32).
pub const ENTRY_INLEN: usize = 4;
/// Entry field: first input mailbox (be64).
pub const ENTRY_IN_PTR: usize = 8;
/// Entry field: the first 16 bytes of input, inline.
pub const ENTRY_IN: usize = 16;
/// Entry field: the first 16 bytes of output, inline.
pub const ENTRY_OUT: usize = 32;
/// Entry field: first output mailbox (be64).
pub const ENTRY_OUT_PTR: usize = 48;
/// Entry field: output length in bytes (be32).
pub const ENTRY_OUTLEN: usize = 56;
/// Entry field: token the mailboxes must carry.
pub const ENTRY_TOKEN: usize = 60;
/// Entry field: delivery status in bits 7:1, ownership in bit 0.
pub const ENTRY_STATUS_OWN: usize = 63;
/// Bytes of input or output carried inline in the entry.
pub const INLINE_BYTES: usize = 16;
/// Command type of the PCIe command interface (MLX5_PCI_CMD_XPORT).
pub const CMD_TYPE_PCIE: u8 = 7;
/// Ownership bit: the entry belongs to the hardware.
pub const OWNER_HW: u8 = 1;

/// Mailbox (`struct mlx5_cmd_prot_block`): data bytes per block.
pub const MAILBOX_DATA: usize = 512;
/// Mailbox: offset of the next block's address (be64).
pub const MAILBOX_NEXT: usize = 560;
/// Mailbox: offset of the block number (be32).
pub const MAILBOX_BLOCK_NUM: usize = 568;
/// Mailbox: offset of the token.
pub const MAILBOX_TOKEN: usize = 573;
/// Size of one mailbox block.
pub const MAILBOX_SIZE: usize = 576;
/// Mailboxes must be aligned to this (simplified: 1 KiB).
pub const MAILBOX_ALIGN: u64 = 1024;
/// Longest command input or output the firmware takes (bounds the mailbox chains).
pub const MAX_MESSAGE: usize = 64 << 10;

/// Delivery status (status_own bits 7:1): delivered.
pub const DELIVERY_OK: u8 = 0x0;
/// Delivery status: a mailbox's token differs from the entry's.
pub const DELIVERY_TOKEN_ERR: u8 = 0x2;
/// Delivery status: mailbox block numbers out of sequence.
pub const DELIVERY_BAD_BLOCK_NUM_ERR: u8 = 0x3;
/// Delivery status: an output mailbox is not aligned.
pub const DELIVERY_OUT_PTR_ALIGN_ERR: u8 = 0x4;
/// Delivery status: an input mailbox is not aligned.
pub const DELIVERY_IN_PTR_ALIGN_ERR: u8 = 0x5;
/// Delivery status: the firmware could not read or write the command (DMA failed).
pub const DELIVERY_FW_ERR: u8 = 0x6;
/// Delivery status: bad input length.
pub const DELIVERY_IN_LENGTH_ERR: u8 = 0x7;
/// Delivery status: bad output length.
pub const DELIVERY_OUT_LENGTH_ERR: u8 = 0x8;
/// Delivery status: unknown command type.
pub const DELIVERY_CMD_IF_VER_ERR: u8 = 0x10;

/// Command status (output byte 0): success.
pub const STATUS_OK: u8 = 0x0;
/// Command status: internal error.
pub const STATUS_INT_ERR: u8 = 0x1;
/// Command status: unknown opcode or op_mod.
pub const STATUS_BAD_OP: u8 = 0x2;
/// Command status: a field is invalid.
pub const STATUS_BAD_PARAM: u8 = 0x3;
/// Command status: the system (function) is in the wrong state.
pub const STATUS_BAD_SYS_STATE: u8 = 0x4;
/// Command status: no such resource.
pub const STATUS_BAD_RES: u8 = 0x5;
/// Command status: the resource is busy.
pub const STATUS_RES_BUSY: u8 = 0x6;
/// Command status: a limit is exceeded.
pub const STATUS_LIM: u8 = 0x8;
/// Command status: the resource is in the wrong state.
pub const STATUS_BAD_RES_STATE: u8 = 0x9;
/// Command status: no resources left.
pub const STATUS_NO_RES: u8 = 0xf;
/// Command status: input length does not fit the opcode.
pub const STATUS_BAD_INP_LEN: u8 = 0x50;
/// Command status: output length does not fit the opcode.
pub const STATUS_BAD_OUTP_LEN: u8 = 0x51;

/// Syndrome (output bytes 4..8, this model's own values): no such function.
pub const SYNDROME_NO_FUNCTION: u32 = 0x0001_0001;
/// Syndrome: the function is exposed (in use); its capabilities are fixed.
pub const SYNDROME_FUNCTION_IN_USE: u32 = 0x0001_0002;
/// Syndrome: the function is not migratable.
pub const SYNDROME_NOT_MIGRATABLE: u32 = 0x0001_0003;
/// Syndrome: suspend or resume out of order.
pub const SYNDROME_BAD_SUSPEND_ORDER: u32 = 0x0001_0004;
/// Syndrome: the image does not fit the buffer, or exceeds 4 GiB outside chunk mode.
pub const SYNDROME_IMAGE_TOO_LARGE: u32 = 0x0001_0005;
/// Syndrome: the loaded image is corrupt.
pub const SYNDROME_BAD_IMAGE: u32 = 0x0001_0006;
/// Syndrome: the image needs features this function cannot provide.
pub const SYNDROME_FEATURES: u32 = 0x0001_0007;
/// Syndrome: the capability is not offered.
pub const SYNDROME_NO_CAPABILITY: u32 = 0x0001_0008;
/// Syndrome: a DMA buffer named by the command cannot be reached.
pub const SYNDROME_BUFFER: u32 = 0x0001_0009;
/// Syndrome: a field of the command is invalid.
pub const SYNDROME_FIELD: u32 = 0x0001_000a;
/// Syndrome: the input or output length does not fit the opcode.
pub const SYNDROME_LENGTH: u32 = 0x0001_000b;
/// Syndrome: unknown opcode or op_mod.
pub const SYNDROME_OPCODE: u32 = 0x0001_000c;
/// Syndrome: a page tracker already exists or does not.
pub const SYNDROME_TRACKER: u32 = 0x0001_000d;

/// Opcode: QUERY_HCA_CAP.
pub const QUERY_HCA_CAP: u16 = 0x100;
/// Opcode: SET_HCA_CAP (used here on another function, to make a VF migratable).
pub const SET_HCA_CAP: u16 = 0x109;
/// Opcode: SUSPEND_VHCA.
pub const SUSPEND_VHCA: u16 = 0x115;
/// Opcode: RESUME_VHCA.
pub const RESUME_VHCA: u16 = 0x116;
/// Opcode: QUERY_VHCA_MIGRATION_STATE.
pub const QUERY_VHCA_MIGRATION_STATE: u16 = 0x117;
/// Opcode: SAVE_VHCA_STATE.
pub const SAVE_VHCA_STATE: u16 = 0x118;
/// Opcode: LOAD_VHCA_STATE.
pub const LOAD_VHCA_STATE: u16 = 0x119;
/// Opcode: CREATE_GENERAL_OBJECT.
pub const CREATE_GENERAL_OBJECT: u16 = 0xa00;
/// Opcode: MODIFY_GENERAL_OBJECT.
pub const MODIFY_GENERAL_OBJECT: u16 = 0xa01;
/// Opcode: DESTROY_GENERAL_OBJECT.
pub const DESTROY_GENERAL_OBJECT: u16 = 0xa03;

/// Input header: opcode (be16).
pub const IN_OPCODE: usize = 0;
/// Input header: op_mod (be16).
pub const IN_OP_MOD: usize = 6;
/// Output header: status (u8).
pub const OUT_STATUS: usize = 0;
/// Output header: syndrome (be32).
pub const OUT_SYNDROME: usize = 4;
/// Bytes of the input and output headers.
pub const HEADER_BYTES: usize = 8;

/// QUERY/SET_HCA_CAP op_mod: the current values (bit 0); the capability type is op_mod >> 1.
pub const HCA_CAP_OPMOD_GET_CUR: u16 = 1;
/// Capability type: general device capabilities.
pub const CAP_GENERAL: u16 = 0x0;
/// Capability type: general device capabilities 2 (the migration bits).
pub const CAP_GENERAL_2: u16 = 0x20;
/// Capability type: advanced virtualization (the page tracker's limits).
pub const CAP_ADV_VIRTUALIZATION: u16 = 0x12;
/// QUERY/SET_HCA_CAP input: `other_function` in bit 15 (be16).
pub const CAP_IN_OTHER_FUNCTION: usize = 8;
/// QUERY/SET_HCA_CAP input: function id (be16; VF number, 1-based).
pub const CAP_IN_FUNCTION_ID: usize = 10;
/// SET_HCA_CAP input / QUERY_HCA_CAP output: where the capability starts.
pub const CAP_BODY: usize = 16;
/// Bytes of a capability body (simplified: 64).
pub const CAP_BODY_BYTES: usize = 64;
/// Input length of QUERY_HCA_CAP.
pub const QUERY_HCA_CAP_INLEN: usize = 16;
/// Output length of QUERY_HCA_CAP.
pub const QUERY_HCA_CAP_OUTLEN: usize = CAP_BODY + CAP_BODY_BYTES;
/// Input length of SET_HCA_CAP.
pub const SET_HCA_CAP_INLEN: usize = CAP_BODY + CAP_BODY_BYTES;

/// General cap (be32 flags at 0): the device can migrate functions (`migration`).
pub const GENERAL_MIGRATION: u32 = 1 << 0;
/// General cap: the device has a page tracker (`adv_virtualization`).
pub const GENERAL_ADV_VIRTUALIZATION: u32 = 1 << 1;
/// General cap: the function's enabled features (be32 at 4), other_function queries.
pub const GENERAL_FEATURES: usize = 4;
/// General cap: the function's vhca_id (be16 at 8), other_function queries.
pub const GENERAL_VHCA_ID: usize = 8;
/// General cap: number of VFs (be16 at 10).
pub const GENERAL_NUM_VFS: usize = 10;
/// General cap: the device's hardware generation (u8 at 12).
pub const GENERAL_GENERATION: usize = 12;
/// General cap 2 (be32 flags at 0): the function is migratable (settable on a VF).
pub const GENERAL_2_MIGRATABLE: u32 = 1 << 0;
/// General cap 2: several LOAD_VHCA_STATE per session (`migration_multi_load`).
pub const GENERAL_2_MULTI_LOAD: u32 = 1 << 1;
/// General cap 2: the firmware tracks state changes between saves
/// (`migration_tracking_state`).
pub const GENERAL_2_TRACKING_STATE: u32 = 1 << 2;
/// General cap 2: state saved and loaded in chunks (`migration_in_chunks`).
pub const GENERAL_2_IN_CHUNKS: u32 = 1 << 3;
/// Adv. virtualization cap: most ranges of one page tracker (be32 at 0,
/// `pg_track_max_num_range`).
pub const ADV_MAX_NUM_RANGE: usize = 0;
/// Adv. virtualization cap: log2 of the smallest tracked page (u8 at 4).
pub const ADV_LOG_MIN_PAGE_SIZE: usize = 4;
/// Adv. virtualization cap: log2 of the largest tracked page (u8 at 5).
pub const ADV_LOG_MAX_PAGE_SIZE: usize = 5;
/// Adv. virtualization cap: most dirty addresses one report returns (be32 at 8).
pub const ADV_MAX_REPORT: usize = 8;

/// Function feature: the echo data plane (migratable).
pub const FEATURE_ECHO: u32 = 1 << 0;
/// Function feature: a free-running hardware timestamp (cannot migrate; off when migratable).
pub const FEATURE_TIMESTAMP: u32 = 1 << 1;
/// Features that cannot migrate.
pub const NON_MIGRATABLE_FEATURES: u32 = FEATURE_TIMESTAMP;

/// SUSPEND_VHCA op_mod: stop initiating (MLX5_SUSPEND_VHCA_IN_OP_MOD_SUSPEND_INITIATOR).
pub const SUSPEND_INITIATOR: u16 = 0x0;
/// SUSPEND_VHCA op_mod: stop responding (MLX5_SUSPEND_VHCA_IN_OP_MOD_SUSPEND_RESPONDER).
pub const SUSPEND_RESPONDER: u16 = 0x1;
/// RESUME_VHCA op_mod: respond again (MLX5_RESUME_VHCA_IN_OP_MOD_RESUME_RESPONDER).
pub const RESUME_RESPONDER: u16 = 0x0;
/// RESUME_VHCA op_mod: initiate again (MLX5_RESUME_VHCA_IN_OP_MOD_RESUME_INITIATOR).
pub const RESUME_INITIATOR: u16 = 0x1;
/// VHCA commands input: the vhca_id (be16 at 10).
pub const VHCA_IN_ID: usize = 10;
/// Input length of SUSPEND_VHCA, RESUME_VHCA and QUERY_VHCA_MIGRATION_STATE.
pub const VHCA_INLEN: usize = 16;
/// Output length of SUSPEND_VHCA and RESUME_VHCA.
pub const VHCA_OUTLEN: usize = 16;

/// QUERY_VHCA_MIGRATION_STATE / SAVE_VHCA_STATE input: flags byte at 8.
pub const VHCA_IN_FLAGS: usize = 8;
/// Flag: incremental (only what changed since the last save of the session).
pub const FLAG_INCREMENTAL: u8 = 1 << 7;
/// Flag (SAVE): start tracking changes (`set_track`).
pub const FLAG_SET_TRACK: u8 = 1 << 6;
/// Flag (QUERY): answer for chunk mode (`chunk`).
pub const FLAG_CHUNK: u8 = 1 << 5;
/// QUERY_VHCA_MIGRATION_STATE output: size of the next save's buffer (be32 at 8,
/// `required_umem_size`).
pub const QUERY_OUT_REQUIRED_SIZE: usize = 8;
/// QUERY_VHCA_MIGRATION_STATE output: bytes the whole image still has (be64 at 16,
/// `remaining_total_size`).
pub const QUERY_OUT_REMAINING_TOTAL: usize = 16;
/// Output length of QUERY_VHCA_MIGRATION_STATE.
pub const QUERY_OUTLEN: usize = 24;
/// SAVE/LOAD input: buffer size (be32 at 12).
pub const STATE_IN_SIZE: usize = 12;
/// SAVE/LOAD input: buffer address in the PF's DMA space (be64 at 16; simplified from mkey+va).
pub const STATE_IN_ADDRESS: usize = 16;
/// Input length of SAVE_VHCA_STATE and LOAD_VHCA_STATE.
pub const STATE_INLEN: usize = 24;
/// SAVE output: bytes written (be32 at 8, `actual_image_size`).
pub const SAVE_OUT_ACTUAL_SIZE: usize = 8;
/// SAVE output: the next chunk's size, 0 when the image is complete (be32 at 12,
/// `next_required_umem_size`).
pub const SAVE_OUT_NEXT_SIZE: usize = 12;
/// Output length of SAVE_VHCA_STATE.
pub const SAVE_OUTLEN: usize = 16;
/// Output length of LOAD_VHCA_STATE.
pub const LOAD_OUTLEN: usize = 16;
/// Largest chunk of state one save moves in chunk mode (MAX_CHUNK_SIZE in Linux's mlx5 vfio
/// driver).
pub const MAX_CHUNK_SIZE: u32 = 8 << 20;

/// General object type of the page tracker (MLX5_OBJ_TYPE_PAGE_TRACK).
pub const OBJ_TYPE_PAGE_TRACK: u16 = 0x46;
/// General object input: object type (be16 at 8).
pub const OBJ_IN_TYPE: usize = 8;
/// General object input: object id (be32 at 12; out of CREATE at 8).
pub const OBJ_IN_ID: usize = 12;
/// CREATE/DESTROY/MODIFY output: object id (be32 at 8).
pub const OBJ_OUT_ID: usize = 8;
/// Page tracker CREATE input: vhca_id (be16 at 16).
pub const TRACK_IN_VHCA_ID: usize = 16;
/// Page tracker CREATE input: log2 page size (u8 at 18).
pub const TRACK_IN_LOG_PAGE_SIZE: usize = 18;
/// Page tracker CREATE input: number of ranges (be32 at 20).
pub const TRACK_IN_NUM_RANGES: usize = 20;
/// Page tracker CREATE input: first range (`{be64 start, be64 length}` each).
pub const TRACK_IN_RANGES: usize = 24;
/// Bytes of one tracked range.
pub const TRACK_RANGE_BYTES: usize = 16;
/// Page tracker MODIFY input: IOVA of the range to report (be64 at 16).
pub const TRACK_IN_REPORT_IOVA: usize = 16;
/// Page tracker MODIFY input: length of the range to report (be64 at 24).
pub const TRACK_IN_REPORT_LENGTH: usize = 24;
/// Page tracker MODIFY input: most addresses to return (be32 at 32).
pub const TRACK_IN_REPORT_MAX: usize = 32;
/// Input length of the page tracker's MODIFY (report).
pub const TRACK_REPORT_INLEN: usize = 36;
/// Page tracker MODIFY output: number of addresses returned (be32 at 8).
pub const TRACK_OUT_COUNT: usize = 8;
/// Page tracker MODIFY output: bit 0 set when more dirty pages remain (be32 at 12).
pub const TRACK_OUT_MORE: usize = 12;
/// Page tracker MODIFY output: the dirty page addresses (be64 each) from 16.
pub const TRACK_OUT_ADDRESSES: usize = 16;
/// Input length of DESTROY_GENERAL_OBJECT.
pub const OBJ_DESTROY_INLEN: usize = 16;
/// Output length of CREATE/DESTROY_GENERAL_OBJECT.
pub const OBJ_OUTLEN: usize = 16;

/// Reads a big-endian u16 at `at`, 0 where `bytes` is too short.
pub fn be16(bytes: &[u8], at: usize) -> u16 {
    let mut b = [0u8; 2];
    if let Some(src) = bytes.get(at..at + 2) {
        b.copy_from_slice(src);
    }
    u16::from_be_bytes(b)
}

/// Reads a big-endian u32 at `at`, 0 where `bytes` is too short.
pub fn be32(bytes: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    if let Some(src) = bytes.get(at..at + 4) {
        b.copy_from_slice(src);
    }
    u32::from_be_bytes(b)
}

/// Reads a big-endian u64 at `at`, 0 where `bytes` is too short.
pub fn be64(bytes: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    if let Some(src) = bytes.get(at..at + 8) {
        b.copy_from_slice(src);
    }
    u64::from_be_bytes(b)
}

/// Writes `value` big-endian at `at`; nothing where `bytes` is too short.
pub fn put_be16(bytes: &mut [u8], at: usize, value: u16) {
    if let Some(dst) = bytes.get_mut(at..at + 2) {
        dst.copy_from_slice(&value.to_be_bytes());
    }
}

/// Writes `value` big-endian at `at`; nothing where `bytes` is too short.
pub fn put_be32(bytes: &mut [u8], at: usize, value: u32) {
    if let Some(dst) = bytes.get_mut(at..at + 4) {
        dst.copy_from_slice(&value.to_be_bytes());
    }
}

/// Writes `value` big-endian at `at`; nothing where `bytes` is too short.
pub fn put_be64(bytes: &mut [u8], at: usize, value: u64) {
    if let Some(dst) = bytes.get_mut(at..at + 8) {
        dst.copy_from_slice(&value.to_be_bytes());
    }
}

/// A command input of `len` bytes with its opcode and op_mod set.
pub fn command(opcode: u16, op_mod: u16, len: usize) -> Vec<u8> {
    let mut input = vec![0u8; len.max(HEADER_BYTES)];
    put_be16(&mut input, IN_OPCODE, opcode);
    put_be16(&mut input, IN_OP_MOD, op_mod);
    input
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_round_trip_and_short_buffers_read_zero() {
        let mut b = command(SAVE_VHCA_STATE, 0, STATE_INLEN);
        put_be64(&mut b, STATE_IN_ADDRESS, 0x1122_3344_5566_7788);
        put_be32(&mut b, STATE_IN_SIZE, 0xdead_beef);
        assert_eq!(be16(&b, IN_OPCODE), 0x118);
        assert_eq!(b[0..2], [0x01, 0x18]);
        assert_eq!(be64(&b, STATE_IN_ADDRESS), 0x1122_3344_5566_7788);
        assert_eq!(be32(&b, STATE_IN_SIZE), 0xdead_beef);
        assert_eq!(be64(&b, 20), 0);
        put_be64(&mut b, 20, 1);
        assert_eq!(b.len(), STATE_INLEN);
    }
}
