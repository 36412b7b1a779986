//! The PF's firmware: runs one command (its input bytes) and answers with its output bytes,
//! a status and a syndrome on failure. A refused command changes nothing.
//!
//! Commands and their semantics, after Linux's drivers/vfio/pci/mlx5/cmd.c:
//!
//! - QUERY_HCA_CAP: general (migration, page tracker), general 2 (migratable, multi-load,
//!   tracking state, in chunks) and advanced virtualization (tracker limits) capabilities,
//!   of the PF or, with `other_function`, of a VF (its features, vhca_id, migratable);
//! - SET_HCA_CAP (general 2, `other_function`): makes a VF migratable or not; refused once a
//!   driver brought the VF up (BAD_SYS_STATE, [`SYNDROME_FUNCTION_IN_USE`]);
//! - SUSPEND_VHCA / RESUME_VHCA with the initiator and responder op_mods;
//! - QUERY_VHCA_MIGRATION_STATE: the size the next save needs (`required_umem_size`, at most
//!   [`MAX_CHUNK_SIZE`] with `chunk`) and what the image still has in all
//!   (`remaining_total_size`); outside chunk mode an image beyond 4 GiB cannot be saved;
//! - SAVE_VHCA_STATE: writes the VF's image into a buffer of the PF's DMA space. On a running
//!   VF only with the tracking-state capability: `set_track` starts tracking with a full
//!   image, `incremental` then saves what changed since (nothing when nothing did). In chunk
//!   mode each save writes the next at most [`MAX_CHUNK_SIZE`] bytes and says the size of the
//!   next (`next_required_umem_size`, 0 at the end), and an `incremental` save continues an
//!   image not yet written whole (as Linux saves the chunks after the first); otherwise the
//!   image must fit the buffer. A save without `incremental` always starts a new full image;
//! - LOAD_VHCA_STATE: takes image bytes into a suspended VF; several loads per session only
//!   with multi-load; each complete image is checked and applied (refused when it needs
//!   features the VF lacks); a session starts when the responder is suspended and ends
//!   when it resumes;
//! - CREATE / MODIFY (report) / DESTROY_GENERAL_OBJECT of the page tracker.
//!
//! Simplifications: SAVE and LOAD name their buffer by an address in the PF's DMA space (no
//! mkey); LOAD answers at 8 (be32) whether an image is left partly loaded, so the driver can
//! tell a complete state when it leaves RESUMING; capability bodies are 64 bytes with this
//! model's own offsets (see `ifc`).
//!
//! Where to look: the capability commands in `caps.rs`, the migration state commands
//! (sessions, save, load) in `state.rs`, the page tracker objects in `tracking.rs`.

mod caps;
mod state;
mod tracking;

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use vfio_variant::backend::DmaAccess;

use super::ifc::*;
use super::tracker::TrackerLimits;
use super::vf::MlxVf;
use state::{LoadSession, SaveSession};

/// What the firmware offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FirmwareCaps {
    /// Features its VFs have (see `ifc::FEATURE_*`).
    pub features: u32,
    /// VF migration (`migration`).
    pub migration: bool,
    /// `migration_multi_load`.
    pub multi_load: bool,
    /// `migration_tracking_state`.
    pub tracking_state: bool,
    /// `migration_in_chunks`.
    pub in_chunks: bool,
    /// The page tracker, with its limits.
    pub tracker: Option<TrackerLimits>,
}

impl Default for FirmwareCaps {
    /// Everything on.
    fn default() -> Self {
        Self {
            features: FEATURE_ECHO | FEATURE_TIMESTAMP,
            migration: true,
            multi_load: true,
            tracking_state: true,
            in_chunks: true,
            tracker: Some(TrackerLimits::default()),
        }
    }
}

/// The firmware of one PF.
pub struct Firmware {
    caps: FirmwareCaps,
    generation: u8,
    vfs: Vec<Arc<MlxVf>>,
    memory: Arc<dyn DmaAccess>,
    saves: Mutex<HashMap<u16, SaveSession>>,
    loads: Mutex<HashMap<u16, LoadSession>>,
    next_object: Mutex<u32>,
}

pub(super) type Outcome = Result<Vec<u8>, (u8, u32)>;

pub(super) fn output(len: usize) -> Vec<u8> {
    vec![0u8; len]
}

fn failure(status: u8, syndrome: u32) -> Vec<u8> {
    let mut out = output(HEADER_BYTES);
    out[OUT_STATUS] = status;
    put_be32(&mut out, OUT_SYNDROME, syndrome);
    out
}

pub(super) fn bad_param(syndrome: u32) -> (u8, u32) {
    (STATUS_BAD_PARAM, syndrome)
}

impl Firmware {
    /// The firmware of a `generation` PF with `vfs`, reaching host memory through `memory`.
    pub fn new(
        caps: FirmwareCaps,
        generation: u8,
        vfs: Vec<Arc<MlxVf>>,
        memory: Arc<dyn DmaAccess>,
    ) -> Self {
        Self {
            caps,
            generation,
            vfs,
            memory,
            saves: Mutex::new(HashMap::new()),
            loads: Mutex::new(HashMap::new()),
            next_object: Mutex::new(1),
        }
    }

    /// Runs one command; the output always starts with status and syndrome.
    pub fn execute(&self, input: &[u8]) -> Vec<u8> {
        let opcode = be16(input, IN_OPCODE);
        let op_mod = be16(input, IN_OP_MOD);
        let needed = match opcode {
            QUERY_HCA_CAP => QUERY_HCA_CAP_INLEN,
            SET_HCA_CAP => SET_HCA_CAP_INLEN,
            SUSPEND_VHCA | RESUME_VHCA | QUERY_VHCA_MIGRATION_STATE => VHCA_INLEN,
            SAVE_VHCA_STATE | LOAD_VHCA_STATE => STATE_INLEN,
            CREATE_GENERAL_OBJECT => TRACK_IN_RANGES,
            MODIFY_GENERAL_OBJECT => TRACK_REPORT_INLEN,
            DESTROY_GENERAL_OBJECT => OBJ_DESTROY_INLEN,
            _ => return failure(STATUS_BAD_OP, SYNDROME_OPCODE),
        };
        if input.len() < needed {
            return failure(STATUS_BAD_INP_LEN, SYNDROME_LENGTH);
        }
        let outcome = match opcode {
            QUERY_HCA_CAP => self.query_cap(op_mod, input),
            SET_HCA_CAP => self.set_cap(op_mod, input),
            SUSPEND_VHCA => self.vf_by_vhca(input).and_then(|vf| {
                vf.suspend(op_mod)?;
                if op_mod == SUSPEND_RESPONDER {
                    // A stopped function takes a new state from scratch.
                    self.loads.lock().remove(&vf.vhca_id());
                }
                Ok(output(VHCA_OUTLEN))
            }),
            RESUME_VHCA => self.vf_by_vhca(input).and_then(|vf| {
                vf.resume(op_mod)?;
                if op_mod == RESUME_RESPONDER {
                    self.loads.lock().remove(&vf.vhca_id());
                }
                Ok(output(VHCA_OUTLEN))
            }),
            QUERY_VHCA_MIGRATION_STATE => self.query_migration(input),
            SAVE_VHCA_STATE => self.save(input),
            LOAD_VHCA_STATE => self.load(input),
            CREATE_GENERAL_OBJECT => self.create_tracker(input),
            MODIFY_GENERAL_OBJECT => self.report(input),
            _ => self.destroy_tracker(input),
        };
        outcome.unwrap_or_else(|(status, syndrome)| failure(status, syndrome))
    }

    pub(super) fn vf_by_number(&self, input: &[u8]) -> Result<&Arc<MlxVf>, (u8, u32)> {
        let id = be16(input, CAP_IN_FUNCTION_ID);
        self.vfs
            .iter()
            .find(|vf| vf.number() == id)
            .ok_or(bad_param(SYNDROME_NO_FUNCTION))
    }

    pub(super) fn vf_by_vhca(&self, input: &[u8]) -> Result<&Arc<MlxVf>, (u8, u32)> {
        self.find_vhca(be16(input, VHCA_IN_ID))
    }

    pub(super) fn find_vhca(&self, vhca: u16) -> Result<&Arc<MlxVf>, (u8, u32)> {
        self.vfs
            .iter()
            .find(|vf| vf.vhca_id() == vhca)
            .ok_or(bad_param(SYNDROME_NO_FUNCTION))
    }

    pub(super) fn migratable_vf(&self, input: &[u8]) -> Result<&Arc<MlxVf>, (u8, u32)> {
        let vf = self.vf_by_vhca(input)?;
        if !self.caps.migration || !vf.migratable() {
            return Err((STATUS_BAD_SYS_STATE, SYNDROME_NOT_MIGRATABLE));
        }
        Ok(vf)
    }
}

#[cfg(test)]
mod testing;

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;

    #[test]
    fn short_inputs_and_unknown_opcodes_are_refused() {
        let (fw, _, _) = firmware(FirmwareCaps::default());
        assert_eq!(status(&fw.execute(&[])), (STATUS_BAD_OP, SYNDROME_OPCODE));
        let short = command(SAVE_VHCA_STATE, 0, 10);
        assert_eq!(
            status(&fw.execute(&short)),
            (STATUS_BAD_INP_LEN, SYNDROME_LENGTH)
        );
        let query = command(QUERY_HCA_CAP, 0x7 << 1, QUERY_HCA_CAP_INLEN);
        assert_eq!(
            status(&fw.execute(&query)),
            (STATUS_BAD_OP, SYNDROME_OPCODE)
        );
    }
}
