//! The migration state commands: QUERY_VHCA_MIGRATION_STATE, SAVE_VHCA_STATE and
//! LOAD_VHCA_STATE, and the save and load sessions they keep per VF.

use super::{Firmware, Outcome, bad_param, output};
use crate::hw::ifc::*;
use crate::hw::image::{Header, ImageReader, ImageWriter};
use crate::hw::vf::MlxVf;

/// A VF's save session: the image being written, whether changes are tracked, and the
/// header of the last image saved.
#[derive(Default)]
pub(super) struct SaveSession {
    writer: Option<(ImageWriter, Header)>,
    tracking: bool,
    last: Option<Header>,
}

/// A VF's load session.
#[derive(Default)]
pub(super) struct LoadSession {
    reader: ImageReader,
    loads: u32,
}

/// Bytes of an image the firmware generates and writes at a time.
const SAVE_PIECE: u64 = 1 << 20;

impl Firmware {
    /// The header of the image a new save would start: the whole state, or with
    /// `incremental` what changed since the last image saved (`None` when nothing did; the
    /// context memory only when it changed).
    fn next_image(
        &self,
        vf: &MlxVf,
        session: &SaveSession,
        incremental: bool,
    ) -> Result<Option<Header>, (u8, u32)> {
        let now = vf.snapshot(false);
        let has_context = now.plane.ctx_pages > 0;
        let last = match (incremental, session.last) {
            (true, _) if !session.tracking => return Err(bad_param(SYNDROME_FIELD)),
            (true, Some(last)) => last,
            _ => {
                return Ok(Some(Header {
                    with_context: has_context,
                    ..now
                }));
            }
        };
        let context_changed = (now.plane.ctx_pages, now.plane.ctx_seed)
            != (last.plane.ctx_pages, last.plane.ctx_seed);
        if last == now && !context_changed {
            return Ok(None);
        }
        Ok(Some(Header {
            with_context: context_changed && has_context,
            ..now
        }))
    }

    pub(super) fn query_migration(&self, input: &[u8]) -> Outcome {
        let vf = self.migratable_vf(input)?;
        let flags = input[VHCA_IN_FLAGS];
        let chunk = flags & FLAG_CHUNK != 0;
        if chunk && !self.caps.in_chunks {
            return Err(bad_param(SYNDROME_NO_CAPABILITY));
        }
        let saves = self.saves.lock();
        let empty = SaveSession::default();
        let session = saves.get(&vf.vhca_id()).unwrap_or(&empty);
        let incremental = flags & FLAG_INCREMENTAL != 0;
        let remaining = match &session.writer {
            Some((writer, _)) if incremental => writer.remaining(),
            _ => self
                .next_image(vf, session, incremental)?
                .map_or(0, |h| h.image_len()),
        };
        let required = if chunk {
            remaining.min(u64::from(MAX_CHUNK_SIZE)) as u32
        } else {
            u32::try_from(remaining).map_err(|_| (STATUS_LIM, SYNDROME_IMAGE_TOO_LARGE))?
        };
        let mut out = output(QUERY_OUTLEN);
        put_be32(&mut out, QUERY_OUT_REQUIRED_SIZE, required);
        put_be64(&mut out, QUERY_OUT_REMAINING_TOTAL, remaining);
        Ok(out)
    }

    pub(super) fn save(&self, input: &[u8]) -> Outcome {
        let vf = self.migratable_vf(input)?;
        let flags = input[VHCA_IN_FLAGS];
        let (incremental, set_track) = (flags & FLAG_INCREMENTAL != 0, flags & FLAG_SET_TRACK != 0);
        if (incremental || set_track) && !self.caps.tracking_state {
            return Err(bad_param(SYNDROME_NO_CAPABILITY));
        }
        let mut saves = self.saves.lock();
        let session = saves.entry(vf.vhca_id()).or_default();
        if !(vf.suspended() || set_track || incremental && session.tracking) {
            return Err((STATUS_BAD_SYS_STATE, SYNDROME_NOT_MIGRATABLE));
        }
        if !incremental {
            // A new full image; `set_track` also starts tracking what changes after it.
            session.writer = None;
            if set_track {
                *session = SaveSession {
                    tracking: true,
                    ..SaveSession::default()
                };
            }
        }
        if session.writer.is_none() {
            let Some(header) = self.next_image(vf, session, incremental)? else {
                return Ok(output(SAVE_OUTLEN));
            };
            if !self.caps.in_chunks && header.image_len() > u64::from(u32::MAX) {
                return Err((STATUS_LIM, SYNDROME_IMAGE_TOO_LARGE));
            }
            session.writer = Some((ImageWriter::new(&header), header));
        }
        let size = u64::from(be32(input, STATE_IN_SIZE));
        let address = be64(input, STATE_IN_ADDRESS);
        let Some((writer, header)) = session.writer.as_mut() else {
            return Err((STATUS_INT_ERR, SYNDROME_FIELD));
        };
        let remaining = writer.remaining();
        let n = if self.caps.in_chunks {
            remaining.min(size).min(u64::from(MAX_CHUNK_SIZE))
        } else if remaining <= size {
            remaining
        } else {
            return Err(bad_param(SYNDROME_IMAGE_TOO_LARGE));
        };
        if n == 0 && remaining > 0 {
            return Err(bad_param(SYNDROME_IMAGE_TOO_LARGE));
        }
        // Checked before anything is written, so a bad buffer changes nothing.
        let reachable = |at: u64| self.memory.read(at, &mut [0u8; 1]).is_ok();
        if address.checked_add(n).is_none()
            || !reachable(address)
            || (n > 0 && !reachable(address + n - 1))
        {
            return Err(bad_param(SYNDROME_BUFFER));
        }
        let header = *header;
        // Written in pieces: an image of up to 4 GiB outside chunk mode is never held whole.
        let mut piece = vec![0u8; n.min(SAVE_PIECE) as usize];
        let mut done = 0u64;
        while done < n {
            let len = (n - done).min(SAVE_PIECE) as usize;
            writer.fill(&mut piece[..len]);
            if self.memory.write(address + done, &piece[..len]).is_err() {
                session.writer = None;
                return Err(bad_param(SYNDROME_BUFFER));
            }
            done += len as u64;
        }
        let left = writer.remaining();
        if left == 0 {
            session.writer = None;
            session.last = Some(Header {
                with_context: false,
                ..header
            });
        }
        let mut out = output(SAVE_OUTLEN);
        put_be32(&mut out, SAVE_OUT_ACTUAL_SIZE, n as u32);
        put_be32(
            &mut out,
            SAVE_OUT_NEXT_SIZE,
            left.min(u64::from(MAX_CHUNK_SIZE)) as u32,
        );
        Ok(out)
    }

    pub(super) fn load(&self, input: &[u8]) -> Outcome {
        let vf = self.migratable_vf(input)?;
        if !vf.suspended() {
            return Err((STATUS_BAD_SYS_STATE, SYNDROME_NOT_MIGRATABLE));
        }
        let size = be32(input, STATE_IN_SIZE) as usize;
        if size > MAX_CHUNK_SIZE as usize {
            return Err(bad_param(SYNDROME_IMAGE_TOO_LARGE));
        }
        let mut loads = self.loads.lock();
        let session = loads.entry(vf.vhca_id()).or_default();
        if session.loads > 0 && !self.caps.multi_load {
            return Err((STATUS_BAD_SYS_STATE, SYNDROME_NO_CAPABILITY));
        }
        let mut bytes = vec![0u8; size];
        self.memory
            .read(be64(input, STATE_IN_ADDRESS), &mut bytes)
            .map_err(|_| bad_param(SYNDROME_BUFFER))?;
        session.loads += 1;
        let before = session.reader.last().copied();
        let fed = session.reader.feed(&bytes);
        let applied = fed.and_then(|()| match session.reader.last() {
            Some(header) if Some(*header) != before => vf.restore(header),
            _ => Ok(()),
        });
        if let Err(syndrome) = applied {
            loads.remove(&vf.vhca_id());
            return Err(bad_param(syndrome));
        }
        let mut out = output(LOAD_OUTLEN);
        put_be32(&mut out, 8, u32::from(!session.reader.at_boundary()));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use crate::hw::dataplane::{CTX_PAGES, CTX_SEED, ENABLE, PRODUCER, RING_SIZE};
    use crate::hw::firmware::FirmwareCaps;
    use crate::hw::ifc::*;
    use crate::hw::image::{Header, ImageReader};
    use vfio_variant::backend::DmaAccess;

    #[test]
    fn a_running_vf_saves_only_with_tracking_and_a_stopped_one_in_chunks() {
        let (fw, vf, memory) = firmware(FirmwareCaps::default());
        set_migratable(&fw, true);
        register(&vf, CTX_PAGES, 3000);
        register(&vf, CTX_SEED, 9);
        let image = 80 + 3000 * 4096u64;
        let query = fw.execute(&vhca(QUERY_VHCA_MIGRATION_STATE, 0, &vf, FLAG_CHUNK));
        assert_eq!(be64(&query, QUERY_OUT_REMAINING_TOTAL), image);
        assert_eq!(be32(&query, QUERY_OUT_REQUIRED_SIZE), MAX_CHUNK_SIZE);
        assert_eq!(
            status(&fw.execute(&vhca(SAVE_VHCA_STATE, 0, &vf, 0))),
            (STATUS_BAD_SYS_STATE, SYNDROME_NOT_MIGRATABLE)
        );
        // Pre-copy: the whole image with tracking, in chunks.
        let first = fw.execute(&vhca(SAVE_VHCA_STATE, 0, &vf, FLAG_SET_TRACK));
        assert_eq!(be32(&first, SAVE_OUT_ACTUAL_SIZE), MAX_CHUNK_SIZE);
        let next = be32(&first, SAVE_OUT_NEXT_SIZE);
        assert_eq!(u64::from(next), image - u64::from(MAX_CHUNK_SIZE));
        let mut reader = ImageReader::default();
        let mut chunk = vec![0u8; MAX_CHUNK_SIZE as usize];
        memory.read(BUFFER, &mut chunk).unwrap();
        reader.feed(&chunk).unwrap();
        let second = fw.execute(&vhca(SAVE_VHCA_STATE, 0, &vf, FLAG_INCREMENTAL));
        assert_eq!(be32(&second, SAVE_OUT_ACTUAL_SIZE), next);
        assert_eq!(be32(&second, SAVE_OUT_NEXT_SIZE), 0);
        memory.read(BUFFER, &mut chunk[..next as usize]).unwrap();
        reader.feed(&chunk[..next as usize]).unwrap();
        assert!(reader.at_boundary());
        // Nothing changed: an incremental save is empty; a doorbell makes a header-only one.
        let nothing = fw.execute(&vhca(SAVE_VHCA_STATE, 0, &vf, FLAG_INCREMENTAL));
        assert_eq!(be32(&nothing, SAVE_OUT_ACTUAL_SIZE), 0);
        stop(&fw, &vf);
        register(&vf, RING_SIZE, 4);
        register(&vf, ENABLE, 1);
        register(&vf, PRODUCER, 1);
        let delta = fw.execute(&vhca(SAVE_VHCA_STATE, 0, &vf, FLAG_INCREMENTAL));
        assert_eq!(be32(&delta, SAVE_OUT_ACTUAL_SIZE), 80);
    }

    #[test]
    fn outside_chunk_mode_the_image_must_fit_and_loads_are_single() {
        let caps = FirmwareCaps {
            in_chunks: false,
            multi_load: false,
            ..FirmwareCaps::default()
        };
        let (fw, vf, _) = firmware(caps);
        set_migratable(&fw, true);
        register(&vf, CTX_PAGES, 3000);
        stop(&fw, &vf);
        assert_eq!(
            status(&fw.execute(&vhca(QUERY_VHCA_MIGRATION_STATE, 0, &vf, FLAG_CHUNK))),
            (STATUS_BAD_PARAM, SYNDROME_NO_CAPABILITY)
        );
        assert_eq!(
            status(&fw.execute(&vhca(SAVE_VHCA_STATE, 0, &vf, 0))),
            (STATUS_BAD_PARAM, SYNDROME_IMAGE_TOO_LARGE)
        );
        register(&vf, CTX_PAGES, 1 << 20);
        assert_eq!(
            status(&fw.execute(&vhca(QUERY_VHCA_MIGRATION_STATE, 0, &vf, 0))),
            (STATUS_LIM, SYNDROME_IMAGE_TOO_LARGE)
        );
        register(&vf, CTX_PAGES, 0);
        let saved = fw.execute(&vhca(SAVE_VHCA_STATE, 0, &vf, 0));
        assert_eq!(be32(&saved, SAVE_OUT_ACTUAL_SIZE), 80);
        let mut load = vhca(LOAD_VHCA_STATE, 0, &vf, 0);
        put_be32(&mut load, STATE_IN_SIZE, 80);
        assert_eq!(status(&fw.execute(&load)), (0, 0));
        assert_eq!(
            status(&fw.execute(&load)),
            (STATUS_BAD_SYS_STATE, SYNDROME_NO_CAPABILITY)
        );
    }

    #[test]
    fn a_load_needing_features_the_vf_lacks_is_refused() {
        let (fw, vf, memory) = firmware(FirmwareCaps::default());
        set_migratable(&fw, true);
        stop(&fw, &vf);
        let header = Header {
            features: FEATURE_ECHO | FEATURE_TIMESTAMP,
            ..vf.snapshot(false)
        };
        memory.write(BUFFER, &header.encode()).unwrap();
        let mut load = vhca(LOAD_VHCA_STATE, 0, &vf, 0);
        put_be32(&mut load, STATE_IN_SIZE, 80);
        assert_eq!(
            status(&fw.execute(&load)),
            (STATUS_BAD_PARAM, SYNDROME_FEATURES)
        );
        memory.write(BUFFER, &[0u8; 80]).unwrap();
        assert_eq!(
            status(&fw.execute(&load)),
            (STATUS_BAD_PARAM, SYNDROME_BAD_IMAGE)
        );
    }
}
