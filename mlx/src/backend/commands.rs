//! The firmware commands the backend sends, typed: capabilities, the migratable capability,
//! suspend and resume, the migration state's size, save and load, and the page tracker.

use std::ops::Range;

use crate::hw::ifc::*;

use super::cmd::{CommandError, CommandQueue, STATE_BUFFER_SIZE};

/// The migration capabilities of a PF and one of its VFs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MigrationCaps {
    /// The device migrates functions (`migration`).
    pub migration: bool,
    /// `migration_multi_load`.
    pub multi_load: bool,
    /// `migration_tracking_state`.
    pub tracking_state: bool,
    /// `migration_in_chunks`.
    pub in_chunks: bool,
    /// The page tracker's limits, when there is one.
    pub tracker: Option<TrackerCaps>,
}

impl MigrationCaps {
    /// Whether PRE_COPY can be offered (as Linux's mlx5 driver decides).
    pub fn precopy(&self) -> bool {
        self.multi_load && self.tracking_state
    }
}

/// The page tracker's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrackerCaps {
    /// Most ranges.
    pub max_ranges: u32,
    /// log2 of the smallest page.
    pub log_min_page_size: u8,
    /// log2 of the largest page.
    pub log_max_page_size: u8,
    /// Most addresses per report.
    pub max_report: u32,
}

/// What QUERY_HCA_CAP says about one VF.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VfCaps {
    /// Its vhca_id.
    pub vhca_id: u16,
    /// Its enabled features.
    pub features: u32,
    /// Whether it is migratable.
    pub migratable: bool,
}

fn query(
    queue: &CommandQueue,
    cap_type: u16,
    function: Option<u16>,
) -> Result<Vec<u8>, CommandError> {
    let mut input = command(
        QUERY_HCA_CAP,
        (cap_type << 1) | HCA_CAP_OPMOD_GET_CUR,
        QUERY_HCA_CAP_INLEN,
    );
    if let Some(function) = function {
        put_be16(&mut input, CAP_IN_OTHER_FUNCTION, 0x8000);
        put_be16(&mut input, CAP_IN_FUNCTION_ID, function);
    }
    let out = queue.execute(&input, QUERY_HCA_CAP_OUTLEN)?;
    Ok(out[CAP_BODY..].to_vec())
}

/// The PF's migration capabilities.
pub fn migration_caps(queue: &CommandQueue) -> Result<MigrationCaps, CommandError> {
    let general = be32(&query(queue, CAP_GENERAL, None)?, 0);
    let general_2 = be32(&query(queue, CAP_GENERAL_2, None)?, 0);
    let tracker = if general & GENERAL_ADV_VIRTUALIZATION != 0 {
        let adv = query(queue, CAP_ADV_VIRTUALIZATION, None)?;
        Some(TrackerCaps {
            max_ranges: be32(&adv, ADV_MAX_NUM_RANGE),
            log_min_page_size: adv[ADV_LOG_MIN_PAGE_SIZE],
            log_max_page_size: adv[ADV_LOG_MAX_PAGE_SIZE],
            max_report: be32(&adv, ADV_MAX_REPORT),
        })
    } else {
        None
    };
    Ok(MigrationCaps {
        migration: general & GENERAL_MIGRATION != 0,
        multi_load: general_2 & GENERAL_2_MULTI_LOAD != 0,
        tracking_state: general_2 & GENERAL_2_TRACKING_STATE != 0,
        in_chunks: general_2 & GENERAL_2_IN_CHUNKS != 0,
        tracker,
    })
}

/// What the firmware says about VF `number`.
pub fn vf_caps(queue: &CommandQueue, number: u16) -> Result<VfCaps, CommandError> {
    let general = query(queue, CAP_GENERAL, Some(number))?;
    let general_2 = query(queue, CAP_GENERAL_2, Some(number))?;
    Ok(VfCaps {
        vhca_id: be16(&general, GENERAL_VHCA_ID),
        features: be32(&general, GENERAL_FEATURES),
        migratable: be32(&general_2, 0) & GENERAL_2_MIGRATABLE != 0,
    })
}

/// Makes VF `number` migratable or not (SET_HCA_CAP, general 2, other function).
pub fn set_migratable(
    queue: &CommandQueue,
    number: u16,
    migratable: bool,
) -> Result<(), CommandError> {
    let mut input = command(SET_HCA_CAP, CAP_GENERAL_2 << 1, SET_HCA_CAP_INLEN);
    put_be16(&mut input, CAP_IN_OTHER_FUNCTION, 0x8000);
    put_be16(&mut input, CAP_IN_FUNCTION_ID, number);
    put_be32(
        &mut input,
        CAP_BODY,
        if migratable { GENERAL_2_MIGRATABLE } else { 0 },
    );
    queue.execute(&input, HEADER_BYTES + 8).map(|_| ())
}

fn vhca_command(opcode: u16, op_mod: u16, vhca_id: u16, len: usize) -> Vec<u8> {
    let mut input = command(opcode, op_mod, len);
    put_be16(&mut input, VHCA_IN_ID, vhca_id);
    input
}

/// SUSPEND_VHCA with `op_mod` ([`SUSPEND_INITIATOR`] or [`SUSPEND_RESPONDER`]).
pub fn suspend(queue: &CommandQueue, vhca_id: u16, op_mod: u16) -> Result<(), CommandError> {
    let input = vhca_command(SUSPEND_VHCA, op_mod, vhca_id, VHCA_INLEN);
    queue.execute(&input, VHCA_OUTLEN).map(|_| ())
}

/// RESUME_VHCA with `op_mod` ([`RESUME_RESPONDER`] or [`RESUME_INITIATOR`]).
pub fn resume(queue: &CommandQueue, vhca_id: u16, op_mod: u16) -> Result<(), CommandError> {
    let input = vhca_command(RESUME_VHCA, op_mod, vhca_id, VHCA_INLEN);
    queue.execute(&input, VHCA_OUTLEN).map(|_| ())
}

/// What QUERY_VHCA_MIGRATION_STATE answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateSize {
    /// Buffer the next save needs.
    pub required: u32,
    /// Bytes the image still has in all.
    pub remaining_total: u64,
}

/// QUERY_VHCA_MIGRATION_STATE.
pub fn query_state(
    queue: &CommandQueue,
    vhca_id: u16,
    incremental: bool,
    chunk: bool,
) -> Result<StateSize, CommandError> {
    let mut input = vhca_command(QUERY_VHCA_MIGRATION_STATE, 0, vhca_id, VHCA_INLEN);
    let mut flags = 0;
    if incremental {
        flags |= FLAG_INCREMENTAL;
    }
    if chunk {
        flags |= FLAG_CHUNK;
    }
    input[VHCA_IN_FLAGS] = flags;
    let out = queue.execute(&input, QUERY_OUTLEN)?;
    Ok(StateSize {
        required: be32(&out, QUERY_OUT_REQUIRED_SIZE),
        remaining_total: be64(&out, QUERY_OUT_REMAINING_TOTAL),
    })
}

/// SAVE_VHCA_STATE into the state buffer (at most `size` bytes); the bytes are appended to
/// `out`; returns the next chunk's size (0 when the image is complete).
pub fn save(
    queue: &CommandQueue,
    vhca_id: u16,
    incremental: bool,
    set_track: bool,
    size: u32,
    out: &mut Vec<u8>,
) -> Result<u32, CommandError> {
    let mut input = vhca_command(SAVE_VHCA_STATE, 0, vhca_id, STATE_INLEN);
    let mut flags = 0;
    if incremental {
        flags |= FLAG_INCREMENTAL;
    }
    if set_track {
        flags |= FLAG_SET_TRACK;
    }
    input[VHCA_IN_FLAGS] = flags;
    put_be32(&mut input, STATE_IN_SIZE, size.min(STATE_BUFFER_SIZE));
    let output = queue.with_state_out(
        &mut input,
        SAVE_OUTLEN,
        |output| be32(output, SAVE_OUT_ACTUAL_SIZE) as usize,
        out,
    )?;
    Ok(be32(&output, SAVE_OUT_NEXT_SIZE))
}

/// LOAD_VHCA_STATE of `data`; returns whether the firmware holds a partly loaded image.
pub fn load(queue: &CommandQueue, vhca_id: u16, data: &[u8]) -> Result<bool, CommandError> {
    let mut input = vhca_command(LOAD_VHCA_STATE, 0, vhca_id, STATE_INLEN);
    let output = queue.with_state_in(&mut input, LOAD_OUTLEN, data)?;
    Ok(be32(&output, 8) != 0)
}

/// Creates a page tracker of `ranges` for `vhca_id` at `2^log_page_size`; returns its id.
pub fn create_tracker(
    queue: &CommandQueue,
    vhca_id: u16,
    log_page_size: u8,
    ranges: &[Range<u64>],
) -> Result<u32, CommandError> {
    let mut input = command(
        CREATE_GENERAL_OBJECT,
        0,
        TRACK_IN_RANGES + ranges.len() * TRACK_RANGE_BYTES,
    );
    put_be16(&mut input, OBJ_IN_TYPE, OBJ_TYPE_PAGE_TRACK);
    put_be16(&mut input, TRACK_IN_VHCA_ID, vhca_id);
    input[TRACK_IN_LOG_PAGE_SIZE] = log_page_size;
    put_be32(&mut input, TRACK_IN_NUM_RANGES, ranges.len() as u32);
    for (i, r) in ranges.iter().enumerate() {
        let at = TRACK_IN_RANGES + i * TRACK_RANGE_BYTES;
        put_be64(&mut input, at, r.start);
        put_be64(&mut input, at + 8, r.end - r.start);
    }
    let out = queue.execute(&input, OBJ_OUTLEN)?;
    Ok(be32(&out, OBJ_OUT_ID))
}

/// Takes at most `max` dirty pages of `iova..iova + length` from tracker `id` (read and
/// clear); returns them and whether more remain.
pub fn report_tracker(
    queue: &CommandQueue,
    id: u32,
    iova: u64,
    length: u64,
    max: u32,
) -> Result<(Vec<u64>, bool), CommandError> {
    let mut input = command(MODIFY_GENERAL_OBJECT, 0, TRACK_REPORT_INLEN);
    put_be16(&mut input, OBJ_IN_TYPE, OBJ_TYPE_PAGE_TRACK);
    put_be32(&mut input, OBJ_IN_ID, id);
    put_be64(&mut input, TRACK_IN_REPORT_IOVA, iova);
    put_be64(&mut input, TRACK_IN_REPORT_LENGTH, length);
    put_be32(&mut input, TRACK_IN_REPORT_MAX, max);
    let out = queue.execute(&input, TRACK_OUT_ADDRESSES + 8 * max as usize)?;
    let count = (be32(&out, TRACK_OUT_COUNT) as usize).min(max as usize);
    let pages = (0..count)
        .map(|i| be64(&out, TRACK_OUT_ADDRESSES + 8 * i))
        .collect();
    Ok((pages, be32(&out, TRACK_OUT_MORE) != 0))
}

/// Destroys tracker `id`.
pub fn destroy_tracker(queue: &CommandQueue, id: u32) -> Result<(), CommandError> {
    let mut input = command(DESTROY_GENERAL_OBJECT, 0, OBJ_DESTROY_INLEN);
    put_be16(&mut input, OBJ_IN_TYPE, OBJ_TYPE_PAGE_TRACK);
    put_be32(&mut input, OBJ_IN_ID, id);
    queue.execute(&input, OBJ_OUTLEN).map(|_| ())
}
