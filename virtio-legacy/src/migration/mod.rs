//! Migration of a VF by device parts, driving the PF's admin queue as Linux's
//! virtio-vfio-pci does (drivers/vfio/pci/virtio/migrate.c): flags STOP_COPY | P2P (no
//! pre-copy), and these arcs:
//!
//! - RUNNING → RUNNING_P2P: DEV_MODE_SET stopped; RUNNING_P2P → RUNNING: DEV_MODE_SET 0;
//!   RUNNING_P2P ↔ STOP: nothing (the VF is already stopped);
//! - STOP → STOP_COPY: RESOURCE_OBJ_CREATE (get), DEV_PARTS_METADATA_GET (size),
//!   DEV_PARTS_GET; [`MigrationHooks::save`] returns those bytes; STOP_COPY → STOP destroys
//!   the object;
//! - STOP → RESUMING: RESOURCE_OBJ_CREATE (set); [`MigrationHooks::load`] buffers;
//!   RESUMING → STOP: DEV_PARTS_SET, then the object is destroyed.
//!
//! The device-state bytes are the parts exactly as DEV_PARTS_GET returned them (the framework
//! frames and checks the stream around them). [`commands::discover`] decides whether the PF
//! can do this at all.

pub mod commands;

use std::sync::Arc;

use parking_lot::Mutex;
use vfio_variant::migration::{
    MigrationError, MigrationFlags, MigrationHooks, MigrationState, PrecopyInfo,
};

use crate::admin::AdminQueue;
use crate::hw::pf::admin::{DEV_PARTS_TYPE_GET, DEV_PARTS_TYPE_SET};
use commands::{MAX_PARTS, Member, PartsObjects};

/// An open save or load.
enum Session {
    Idle,
    /// STOP_COPY: the parts read, and how many bytes `save` returned.
    Saving {
        object: u32,
        parts: Vec<u8>,
        sent: usize,
    },
    /// RESUMING: the bytes `load` took.
    Resuming {
        object: u32,
        parts: Vec<u8>,
    },
}

/// The migration hooks of one VF.
pub struct VfMigration {
    admin: Arc<AdminQueue>,
    member: u64,
    objects: Arc<PartsObjects>,
    session: Mutex<Session>,
}

impl VfMigration {
    /// Hooks for VF `member` of the PF behind `admin`, taking object ids from `objects`.
    pub fn new(admin: Arc<AdminQueue>, member: u64, objects: Arc<PartsObjects>) -> Self {
        Self {
            admin,
            member,
            objects,
            session: Mutex::new(Session::Idle),
        }
    }

    fn commands(&self) -> Member<'_> {
        Member {
            admin: &self.admin,
            member: self.member,
            objects: &self.objects,
        }
    }

    /// Ends any open save or load, destroying its object (a reset, or the function going
    /// away).
    pub fn abort(&self) {
        let mut session = self.session.lock();
        if let Session::Saving { object, .. } | Session::Resuming { object, .. } = *session {
            // The id is returned either way; a PF that refuses has lost the object already.
            let _ = self.commands().destroy(object);
        }
        *session = Session::Idle;
    }

    fn start_saving(&self, session: &mut Session) -> Result<(), MigrationError> {
        let commands = self.commands();
        let object = commands.create(DEV_PARTS_TYPE_GET)?;
        let parts = commands
            .size(object)
            .and_then(|size| commands.get_all(object, size));
        match parts {
            Ok(parts) => {
                *session = Session::Saving {
                    object,
                    parts,
                    sent: 0,
                };
                Ok(())
            }
            Err(e) => {
                let _ = commands.destroy(object);
                Err(e)
            }
        }
    }

    fn finish_resuming(&self, session: &mut Session) -> Result<(), MigrationError> {
        let Session::Resuming { object, parts } = std::mem::replace(session, Session::Idle) else {
            return Err(MigrationError::Device("no load is open".into()));
        };
        let commands = self.commands();
        let done = if parts.is_empty() {
            Err(MigrationError::InvalidData(
                "the stream has no device parts".into(),
            ))
        } else {
            commands.set(object, &parts)
        };
        let destroyed = commands.destroy(object);
        done.and(destroyed)
    }
}

impl MigrationHooks for VfMigration {
    fn flags(&self) -> MigrationFlags {
        MigrationFlags::STOP_COPY | MigrationFlags::P2P
    }

    fn transition(&self, from: MigrationState, to: MigrationState) -> Result<(), MigrationError> {
        use MigrationState::{Resuming, Running, RunningP2p, Stop, StopCopy};
        let mut session = self.session.lock();
        match (from, to) {
            (Running, RunningP2p) => self.commands().mode_set(true),
            (RunningP2p, Running) => self.commands().mode_set(false),
            (RunningP2p, Stop) | (Stop, RunningP2p) => Ok(()),
            (Stop, StopCopy) => self.start_saving(&mut session),
            (StopCopy, Stop) => {
                drop(session);
                self.abort();
                Ok(())
            }
            (Stop, Resuming) => {
                let object = self.commands().create(DEV_PARTS_TYPE_SET)?;
                *session = Session::Resuming {
                    object,
                    parts: Vec::new(),
                };
                Ok(())
            }
            (Resuming, Stop) => self.finish_resuming(&mut session),
            _ => Err(MigrationError::Device(format!(
                "no arc {from:?} -> {to:?} for a virtio VF"
            ))),
        }
    }

    fn save(&self, buf: &mut [u8]) -> Result<usize, MigrationError> {
        match &mut *self.session.lock() {
            Session::Saving { parts, sent, .. } => {
                let rest = parts.get(*sent..).unwrap_or_default();
                let n = rest.len().min(buf.len());
                buf[..n].copy_from_slice(&rest[..n]);
                *sent += n;
                Ok(n)
            }
            _ => Err(MigrationError::Device("the VF is not saving".into())),
        }
    }

    fn load(&self, data: &[u8]) -> Result<(), MigrationError> {
        match &mut *self.session.lock() {
            Session::Resuming { parts, .. } => {
                if parts.len().saturating_add(data.len()) > MAX_PARTS {
                    return Err(MigrationError::InvalidData(format!(
                        "more than {MAX_PARTS} bytes of device parts"
                    )));
                }
                parts.extend_from_slice(data);
                Ok(())
            }
            _ => Err(MigrationError::Device("the VF is not resuming".into())),
        }
    }

    fn precopy_info(&self) -> Result<PrecopyInfo, MigrationError> {
        Err(MigrationError::Device(
            "a virtio VF offers no pre-copy".into(),
        ))
    }

    /// As Linux: METADATA_GET through the saving object, or a temporary get object.
    fn stop_copy_size(&self) -> Result<u64, MigrationError> {
        let session = self.session.lock();
        let commands = self.commands();
        if let Session::Saving { object, .. } = *session {
            return commands.size(object).map(u64::from);
        }
        let object = commands.create(DEV_PARTS_TYPE_GET)?;
        let size = commands.size(object);
        let destroyed = commands.destroy(object);
        let size = size?;
        destroyed.map(|()| u64::from(size))
    }
}
