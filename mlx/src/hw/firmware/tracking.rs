//! The page tracker objects: CREATE, MODIFY (report) and DESTROY_GENERAL_OBJECT.

use std::sync::Arc;

use super::{Firmware, Outcome, bad_param, output};
use crate::hw::ifc::*;
use crate::hw::tracker::PageTracker;
use crate::hw::vf::MlxVf;

impl Firmware {
    fn tracker_vf(&self, input: &[u8]) -> Result<&Arc<MlxVf>, (u8, u32)> {
        if be16(input, OBJ_IN_TYPE) != OBJ_TYPE_PAGE_TRACK {
            return Err(bad_param(SYNDROME_FIELD));
        }
        let id = be32(input, OBJ_IN_ID);
        self.vfs
            .iter()
            .find(|vf| vf.tracker().lock().as_ref().is_some_and(|t| t.id() == id))
            .ok_or((STATUS_BAD_RES, SYNDROME_TRACKER))
    }

    pub(super) fn create_tracker(&self, input: &[u8]) -> Outcome {
        let limits = self.caps.tracker.ok_or(bad_param(SYNDROME_NO_CAPABILITY))?;
        if be16(input, OBJ_IN_TYPE) != OBJ_TYPE_PAGE_TRACK {
            return Err(bad_param(SYNDROME_FIELD));
        }
        let vf = self.find_vhca(be16(input, TRACK_IN_VHCA_ID))?;
        if !vf.migratable() {
            return Err((STATUS_BAD_SYS_STATE, SYNDROME_NOT_MIGRATABLE));
        }
        let count = be32(input, TRACK_IN_NUM_RANGES) as usize;
        let room = (input.len() - TRACK_IN_RANGES) / TRACK_RANGE_BYTES;
        if count > room {
            return Err((STATUS_BAD_INP_LEN, SYNDROME_LENGTH));
        }
        let ranges = (0..count)
            .map(|i| {
                let at = TRACK_IN_RANGES + i * TRACK_RANGE_BYTES;
                let start = be64(input, at);
                let end = start.checked_add(be64(input, at + 8));
                end.map(|end| start..end).ok_or(bad_param(SYNDROME_FIELD))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut slot = vf.tracker().lock();
        if slot.is_some() {
            return Err((STATUS_RES_BUSY, SYNDROME_TRACKER));
        }
        let id = {
            let mut next = self.next_object.lock();
            let id = *next;
            *next = next.wrapping_add(1).max(1);
            id
        };
        let tracker = PageTracker::new(id, input[TRACK_IN_LOG_PAGE_SIZE], ranges, &limits)
            .map_err(bad_param)?;
        *slot = Some(tracker);
        let mut out = output(OBJ_OUTLEN);
        put_be32(&mut out, OBJ_OUT_ID, id);
        Ok(out)
    }

    pub(super) fn report(&self, input: &[u8]) -> Outcome {
        let limits = self.caps.tracker.ok_or(bad_param(SYNDROME_NO_CAPABILITY))?;
        let vf = self.tracker_vf(input)?;
        let max = be32(input, TRACK_IN_REPORT_MAX)
            .min(limits.max_report)
            .min(((MAX_MESSAGE - TRACK_OUT_ADDRESSES) / 8) as u32);
        let mut slot = vf.tracker().lock();
        let tracker = slot.as_mut().ok_or((STATUS_BAD_RES, SYNDROME_TRACKER))?;
        let report = tracker.report(
            be64(input, TRACK_IN_REPORT_IOVA),
            be64(input, TRACK_IN_REPORT_LENGTH),
            max,
        );
        let mut out = output(TRACK_OUT_ADDRESSES + 8 * report.pages.len());
        put_be32(&mut out, TRACK_OUT_COUNT, report.pages.len() as u32);
        put_be32(&mut out, TRACK_OUT_MORE, u32::from(report.more));
        for (i, page) in report.pages.iter().enumerate() {
            put_be64(&mut out, TRACK_OUT_ADDRESSES + 8 * i, *page);
        }
        Ok(out)
    }

    pub(super) fn destroy_tracker(&self, input: &[u8]) -> Outcome {
        let vf = self.tracker_vf(input)?;
        *vf.tracker().lock() = None;
        Ok(output(OBJ_OUTLEN))
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use crate::hw::firmware::FirmwareCaps;
    use crate::hw::ifc::*;

    #[test]
    fn one_tracker_per_vf_reports_and_is_destroyed() {
        let (fw, vf, _) = firmware(FirmwareCaps::default());
        set_migratable(&fw, true);
        let mut create = command(CREATE_GENERAL_OBJECT, 0, TRACK_IN_RANGES + 16);
        put_be16(&mut create, OBJ_IN_TYPE, OBJ_TYPE_PAGE_TRACK);
        put_be16(&mut create, TRACK_IN_VHCA_ID, vf.vhca_id());
        create[TRACK_IN_LOG_PAGE_SIZE] = 12;
        put_be32(&mut create, TRACK_IN_NUM_RANGES, 1);
        put_be64(&mut create, TRACK_IN_RANGES + 8, 0x10000);
        let out = fw.execute(&create);
        assert_eq!(status(&out), (0, 0));
        let id = be32(&out, OBJ_OUT_ID);
        assert_eq!(
            status(&fw.execute(&create)),
            (STATUS_RES_BUSY, SYNDROME_TRACKER)
        );
        vf.tracker().lock().as_mut().unwrap().mark(0x3000, 8);
        let mut report = command(MODIFY_GENERAL_OBJECT, 0, TRACK_REPORT_INLEN);
        put_be16(&mut report, OBJ_IN_TYPE, OBJ_TYPE_PAGE_TRACK);
        put_be32(&mut report, OBJ_IN_ID, id);
        put_be64(&mut report, TRACK_IN_REPORT_LENGTH, 0x10000);
        put_be32(&mut report, TRACK_IN_REPORT_MAX, 8);
        let out = fw.execute(&report);
        assert_eq!(be32(&out, TRACK_OUT_COUNT), 1);
        assert_eq!(be64(&out, TRACK_OUT_ADDRESSES), 0x3000);
        let mut destroy = command(DESTROY_GENERAL_OBJECT, 0, OBJ_DESTROY_INLEN);
        put_be16(&mut destroy, OBJ_IN_TYPE, OBJ_TYPE_PAGE_TRACK);
        put_be32(&mut destroy, OBJ_IN_ID, id);
        assert_eq!(status(&fw.execute(&destroy)), (0, 0));
        assert_eq!(
            status(&fw.execute(&report)),
            (STATUS_BAD_RES, SYNDROME_TRACKER)
        );
        // More ranges than the input holds.
        put_be32(&mut create, TRACK_IN_NUM_RANGES, 2);
        assert_eq!(
            status(&fw.execute(&create)),
            (STATUS_BAD_INP_LEN, SYNDROME_LENGTH)
        );
    }
}
