//! QUERY_HCA_CAP and SET_HCA_CAP.

use super::{Firmware, Outcome, bad_param, output};
use crate::hw::ifc::*;

impl Firmware {
    pub(super) fn query_cap(&self, op_mod: u16, input: &[u8]) -> Outcome {
        let other = be16(input, CAP_IN_OTHER_FUNCTION) & 0x8000 != 0;
        let vf = if other {
            Some(self.vf_by_number(input)?)
        } else {
            None
        };
        let mut out = output(QUERY_HCA_CAP_OUTLEN);
        let body = &mut out[CAP_BODY..];
        match op_mod >> 1 {
            CAP_GENERAL => {
                let mut flags = 0;
                if self.caps.migration {
                    flags |= GENERAL_MIGRATION;
                }
                if self.caps.tracker.is_some() {
                    flags |= GENERAL_ADV_VIRTUALIZATION;
                }
                put_be32(body, 0, flags);
                let features = vf.map_or(self.caps.features, |vf| vf.features());
                put_be32(body, GENERAL_FEATURES, features);
                put_be16(body, GENERAL_VHCA_ID, vf.map_or(0, |vf| vf.vhca_id()));
                put_be16(body, GENERAL_NUM_VFS, self.vfs.len() as u16);
                body[GENERAL_GENERATION] = self.generation;
            }
            CAP_GENERAL_2 => {
                let mut flags = 0;
                if vf.is_some_and(|vf| vf.migratable()) {
                    flags |= GENERAL_2_MIGRATABLE;
                }
                for (on, bit) in [
                    (self.caps.multi_load, GENERAL_2_MULTI_LOAD),
                    (self.caps.tracking_state, GENERAL_2_TRACKING_STATE),
                    (self.caps.in_chunks, GENERAL_2_IN_CHUNKS),
                ] {
                    if on {
                        flags |= bit;
                    }
                }
                put_be32(body, 0, flags);
            }
            CAP_ADV_VIRTUALIZATION => {
                let limits = self.caps.tracker.ok_or(bad_param(SYNDROME_NO_CAPABILITY))?;
                put_be32(body, ADV_MAX_NUM_RANGE, limits.max_ranges);
                body[ADV_LOG_MIN_PAGE_SIZE] = limits.log_min_page_size;
                body[ADV_LOG_MAX_PAGE_SIZE] = limits.log_max_page_size;
                put_be32(body, ADV_MAX_REPORT, limits.max_report);
            }
            _ => return Err((STATUS_BAD_OP, SYNDROME_OPCODE)),
        }
        Ok(out)
    }

    pub(super) fn set_cap(&self, op_mod: u16, input: &[u8]) -> Outcome {
        if op_mod >> 1 != CAP_GENERAL_2 {
            return Err((STATUS_BAD_OP, SYNDROME_OPCODE));
        }
        if be16(input, CAP_IN_OTHER_FUNCTION) & 0x8000 == 0 {
            return Err(bad_param(SYNDROME_FIELD));
        }
        let vf = self.vf_by_number(input)?;
        let migratable = be32(input, CAP_BODY) & GENERAL_2_MIGRATABLE != 0;
        if migratable && !self.caps.migration {
            return Err(bad_param(SYNDROME_NO_CAPABILITY));
        }
        vf.set_migratable(migratable)
            .map_err(|syndrome| (STATUS_BAD_SYS_STATE, syndrome))?;
        Ok(output(HEADER_BYTES + 8))
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use crate::hw::dataplane::{ENABLE, RING_SIZE};
    use crate::hw::firmware::FirmwareCaps;
    use crate::hw::ifc::*;

    #[test]
    fn migratable_is_refused_once_in_use_and_needed_for_migration_commands() {
        let (fw, vf, _) = firmware(FirmwareCaps::default());
        assert_eq!(
            status(&fw.execute(&vhca(SUSPEND_VHCA, SUSPEND_INITIATOR, &vf, 0))),
            (STATUS_BAD_SYS_STATE, SYNDROME_NOT_MIGRATABLE)
        );
        assert_eq!(status(&set_migratable(&fw, true)), (0, 0));
        register(&vf, RING_SIZE, 4);
        register(&vf, ENABLE, 1);
        assert_eq!(
            status(&set_migratable(&fw, false)),
            (STATUS_BAD_SYS_STATE, SYNDROME_FUNCTION_IN_USE)
        );
        assert!(vf.migratable());
        let (fw, _, _) = firmware(FirmwareCaps {
            migration: false,
            ..FirmwareCaps::default()
        });
        assert_eq!(
            status(&set_migratable(&fw, true)),
            (STATUS_BAD_PARAM, SYNDROME_NO_CAPABILITY)
        );
    }
}
