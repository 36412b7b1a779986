//! A function's interrupt table: the client's eventfds per IRQ index and vector, masking and
//! pending state, following VFIO's SET_IRQS semantics (INTx is level-triggered and masks
//! itself when it fires, until the client unmasks it).

use std::os::fd::{AsRawFd, OwnedFd};

use parking_lot::Mutex;

use crate::vfio_user::irq::{IRQ_INDEX_INTX, PCI_NUM_IRQS, SetIrqs, SetIrqsFlags};

/// A SET_IRQS request that cannot be applied.
#[derive(Debug, thiserror::Error)]
pub enum IrqError {
    /// No such IRQ index.
    #[error("no IRQ index {0}")]
    NoIndex(u32),
    /// `start + count` is beyond the index's vectors.
    #[error("IRQ index {index} has {available} vectors; {start}+{count} asked")]
    Range {
        /// Index.
        index: u32,
        /// First vector asked.
        start: u32,
        /// Vectors asked.
        count: u32,
        /// Vectors the index has.
        available: u32,
    },
    /// The number of fds does not match `count`.
    #[error("{fds} eventfds for {count} vectors")]
    FdCount {
        /// Fds received.
        fds: usize,
        /// Vectors asked.
        count: u32,
    },
    /// A combination this server does not implement (e.g. an INTx unmask eventfd).
    #[error("unsupported SET_IRQS: {0}")]
    Unsupported(&'static str),
    /// An fd given as an eventfd is something else.
    #[error("fd {0} of SET_IRQS is not an eventfd")]
    NotEventfd(usize),
}

impl IrqError {
    /// The errno of the error reply.
    pub fn errno(&self) -> i32 {
        match self {
            Self::Unsupported(_) => libc::ENOTSUP,
            _ => libc::EINVAL,
        }
    }
}

#[derive(Default)]
struct Vector {
    eventfd: Option<OwnedFd>,
    masked: bool,
    pending: bool,
}

struct State {
    vectors: Vec<Vec<Vector>>,
    intx_level: bool,
}

/// The interrupt table of one function.
pub struct IrqTable {
    state: Mutex<State>,
}

/// Takes `fd` as a trigger eventfd. Only eventfds are accepted, and made non-blocking: a
/// pipe or socket given instead, or a blocking eventfd whose counter the client filled, would
/// block the thread raising the interrupt.
fn accept_eventfd(fd: &OwnedFd) -> bool {
    let link = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()));
    if !link.is_ok_and(|l| l.as_os_str() == "anon_inode:[eventfd]") {
        return false;
    }
    match rustix::fs::fcntl_getfl(fd) {
        Ok(flags) if flags.contains(rustix::fs::OFlags::NONBLOCK) => true,
        Ok(flags) => rustix::fs::fcntl_setfl(fd, flags | rustix::fs::OFlags::NONBLOCK).is_ok(),
        Err(_) => false,
    }
}

fn signal(fd: &OwnedFd) {
    // An eventfd counter overflowing (EAGAIN) still leaves the interrupt signalled.
    let _ = rustix::io::write(fd, &1u64.to_ne_bytes());
}

impl IrqTable {
    /// A table with `counts[i]` vectors at IRQ index `i` (INTx, MSI, MSI-X, ERR, REQ).
    pub fn new(counts: [u32; PCI_NUM_IRQS as usize]) -> Self {
        let vectors = counts
            .iter()
            .map(|n| (0..*n).map(|_| Vector::default()).collect())
            .collect();
        Self {
            state: Mutex::new(State {
                vectors,
                intx_level: false,
            }),
        }
    }

    /// Vectors at `index`.
    pub fn count(&self, index: u32) -> u32 {
        self.state
            .lock()
            .vectors
            .get(index as usize)
            .map_or(0, |v| v.len() as u32)
    }

    /// Applies a DEVICE_SET_IRQS request with the fds that came with it.
    pub fn set_irqs(&self, request: &SetIrqs, fds: Vec<OwnedFd>) -> Result<(), IrqError> {
        let mut state = self.state.lock();
        let index = request.index;
        let available = state
            .vectors
            .get(index as usize)
            .ok_or(IrqError::NoIndex(index))?
            .len() as u32;
        let data = request.flags & SetIrqsFlags::DATA_MASK;
        let action = request.flags & SetIrqsFlags::ACTION_MASK_ALL;
        if request.count == 0 {
            // count 0 with DATA_NONE and TRIGGER disables the whole index.
            if data == SetIrqsFlags::DATA_NONE
                && action == SetIrqsFlags::ACTION_TRIGGER
                && fds.is_empty()
            {
                for v in &mut state.vectors[index as usize] {
                    *v = Vector::default();
                }
                if index == IRQ_INDEX_INTX {
                    state.intx_level = false;
                }
                return Ok(());
            }
            return Err(IrqError::Range {
                index,
                start: request.start,
                count: 0,
                available,
            });
        }
        let end = request
            .start
            .checked_add(request.count)
            .filter(|e| *e <= available);
        let Some(end) = end else {
            return Err(IrqError::Range {
                index,
                start: request.start,
                count: request.count,
                available,
            });
        };
        let range = request.start as usize..end as usize;
        let selected: Vec<bool> = if data == SetIrqsFlags::DATA_BOOL {
            request.data.clone()
        } else {
            vec![true; range.len()]
        };
        match (data, action) {
            (SetIrqsFlags::DATA_EVENTFD, SetIrqsFlags::ACTION_TRIGGER) => {
                if !fds.is_empty() && fds.len() != range.len() {
                    return Err(IrqError::FdCount {
                        fds: fds.len(),
                        count: request.count,
                    });
                }
                if let Some(i) = fds.iter().position(|fd| !accept_eventfd(fd)) {
                    return Err(IrqError::NotEventfd(i));
                }
                let mut fds = fds.into_iter();
                for v in &mut state.vectors[index as usize][range] {
                    v.eventfd = fds.next();
                    v.pending = false;
                }
                Ok(())
            }
            (SetIrqsFlags::DATA_EVENTFD, _) => {
                Err(IrqError::Unsupported("eventfds for mask or unmask"))
            }
            (_, SetIrqsFlags::ACTION_TRIGGER) => {
                for (i, on) in range.zip(selected) {
                    if on {
                        Self::fire(&mut state, index, i);
                    }
                }
                Ok(())
            }
            (_, SetIrqsFlags::ACTION_MASK) => {
                for (i, on) in range.zip(selected) {
                    if on {
                        state.vectors[index as usize][i].masked = true;
                    }
                }
                Ok(())
            }
            _ => {
                for (i, on) in range.zip(selected) {
                    if on {
                        Self::unmask(&mut state, index, i);
                    }
                }
                Ok(())
            }
        }
    }

    fn fire(state: &mut State, index: u32, vector: usize) {
        let Some(v) = state
            .vectors
            .get_mut(index as usize)
            .and_then(|v| v.get_mut(vector))
        else {
            return;
        };
        if v.masked {
            v.pending = true;
            return;
        }
        if let Some(fd) = &v.eventfd {
            signal(fd);
            if index == IRQ_INDEX_INTX {
                // INTx masks itself until the client unmasks it (VFIO's AUTOMASKED).
                v.masked = true;
            }
        }
    }

    fn unmask(state: &mut State, index: u32, vector: usize) {
        let level = state.intx_level;
        let Some(v) = state
            .vectors
            .get_mut(index as usize)
            .and_then(|v| v.get_mut(vector))
        else {
            return;
        };
        v.masked = false;
        let pending = std::mem::take(&mut v.pending);
        let refire = if index == IRQ_INDEX_INTX {
            level
        } else {
            pending
        };
        if refire {
            Self::fire(state, index, vector);
        }
    }

    /// Whether vector `vector` of `index` was raised while masked and waits for its unmask
    /// (what the MSI-X PBA shows).
    pub fn pending(&self, index: u32, vector: u32) -> bool {
        self.state
            .lock()
            .vectors
            .get(index as usize)
            .and_then(|v| v.get(vector as usize))
            .is_some_and(|v| v.pending)
    }

    /// Raises vector `vector` of an edge-triggered index (MSI, MSI-X, ERR, REQ).
    pub fn raise(&self, index: u32, vector: u32) {
        let mut state = self.state.lock();
        Self::fire(&mut state, index, vector as usize);
    }

    /// Sets the INTx line level; a rising edge fires the INTx eventfd unless masked.
    pub fn set_intx(&self, asserted: bool) {
        let mut state = self.state.lock();
        let rising = asserted && !state.intx_level;
        state.intx_level = asserted;
        if !asserted {
            if let Some(v) = state.vectors[IRQ_INDEX_INTX as usize].first_mut() {
                v.pending = false;
            }
        } else if rising {
            Self::fire(&mut state, IRQ_INDEX_INTX, 0);
        }
    }

    /// Forgets every eventfd and mask (the client went away); the line level stays.
    pub fn clear(&self) {
        let mut state = self.state.lock();
        for index in &mut state.vectors {
            for v in index {
                *v = Vector::default();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use rustix::event::{EventfdFlags, eventfd};

    use super::*;
    use crate::vfio_user::irq::{IRQ_INDEX_MSIX, IRQ_INDEX_REQ};

    fn efd() -> (OwnedFd, OwnedFd) {
        let fd = eventfd(0, EventfdFlags::NONBLOCK | EventfdFlags::CLOEXEC).unwrap();
        let dup = rustix::io::dup(&fd).unwrap();
        (fd, dup)
    }

    fn count(fd: &OwnedFd) -> u64 {
        let mut buf = [0u8; 8];
        match rustix::io::read(fd, &mut buf) {
            Ok(8) => u64::from_ne_bytes(buf),
            _ => 0,
        }
    }

    fn set(flags: SetIrqsFlags, index: u32, start: u32, count: u32) -> SetIrqs {
        SetIrqs::new(flags, index, start, count)
    }

    #[test]
    fn msix_vectors_fire_mask_and_deliver_pending() {
        let table = IrqTable::new([1, 1, 4, 1, 1]);
        let (a, a2) = efd();
        let (b, b2) = efd();
        table
            .set_irqs(
                &set(
                    SetIrqsFlags::DATA_EVENTFD | SetIrqsFlags::ACTION_TRIGGER,
                    IRQ_INDEX_MSIX,
                    1,
                    2,
                ),
                vec![a2, b2],
            )
            .unwrap();
        table.raise(IRQ_INDEX_MSIX, 1);
        table.raise(IRQ_INDEX_MSIX, 2);
        table.raise(IRQ_INDEX_MSIX, 0);
        assert_eq!((count(&a), count(&b)), (1, 1));
        table
            .set_irqs(
                &set(
                    SetIrqsFlags::DATA_NONE | SetIrqsFlags::ACTION_MASK,
                    IRQ_INDEX_MSIX,
                    1,
                    1,
                ),
                vec![],
            )
            .unwrap();
        table.raise(IRQ_INDEX_MSIX, 1);
        assert_eq!(count(&a), 0);
        table
            .set_irqs(
                &set(
                    SetIrqsFlags::DATA_NONE | SetIrqsFlags::ACTION_UNMASK,
                    IRQ_INDEX_MSIX,
                    1,
                    1,
                ),
                vec![],
            )
            .unwrap();
        assert_eq!(count(&a), 1, "pending delivered on unmask");
        table
            .set_irqs(
                &set(
                    SetIrqsFlags::DATA_NONE | SetIrqsFlags::ACTION_TRIGGER,
                    IRQ_INDEX_MSIX,
                    0,
                    0,
                ),
                vec![],
            )
            .unwrap();
        table.raise(IRQ_INDEX_MSIX, 2);
        assert_eq!(count(&b), 0, "disabled index");
    }

    #[test]
    fn intx_is_level_triggered_and_automasked() {
        let table = IrqTable::new([1, 0, 0, 1, 1]);
        let (fd, dup) = efd();
        table
            .set_irqs(
                &set(
                    SetIrqsFlags::DATA_EVENTFD | SetIrqsFlags::ACTION_TRIGGER,
                    0,
                    0,
                    1,
                ),
                vec![dup],
            )
            .unwrap();
        table.set_intx(true);
        assert_eq!(count(&fd), 1);
        table.set_intx(true);
        assert_eq!(count(&fd), 0);
        let unmask = set(
            SetIrqsFlags::DATA_NONE | SetIrqsFlags::ACTION_UNMASK,
            0,
            0,
            1,
        );
        table.set_irqs(&unmask, vec![]).unwrap();
        assert_eq!(count(&fd), 1, "still asserted: fires again on unmask");
        table.set_intx(false);
        table.set_irqs(&unmask, vec![]).unwrap();
        assert_eq!(count(&fd), 0);
    }

    #[test]
    fn bad_requests_are_refused() {
        let table = IrqTable::new([1, 0, 2, 1, 1]);
        let trigger = SetIrqsFlags::DATA_EVENTFD | SetIrqsFlags::ACTION_TRIGGER;
        assert!(matches!(
            table.set_irqs(&set(trigger, 9, 0, 1), vec![]),
            Err(IrqError::NoIndex(9))
        ));
        assert!(matches!(
            table.set_irqs(&set(trigger, IRQ_INDEX_MSIX, 1, 2), vec![]),
            Err(IrqError::Range { .. })
        ));
        assert!(matches!(
            table.set_irqs(&set(trigger, IRQ_INDEX_MSIX, u32::MAX, 2), vec![]),
            Err(IrqError::Range { .. })
        ));
        let (_, dup) = efd();
        assert!(matches!(
            table.set_irqs(&set(trigger, IRQ_INDEX_MSIX, 0, 2), vec![dup]),
            Err(IrqError::FdCount { .. })
        ));
        let (_, dup) = efd();
        let unmask_fd = set(
            SetIrqsFlags::DATA_EVENTFD | SetIrqsFlags::ACTION_UNMASK,
            0,
            0,
            1,
        );
        assert_eq!(
            table.set_irqs(&unmask_fd, vec![dup]).unwrap_err().errno(),
            libc::ENOTSUP
        );
        let (fd, dup) = efd();
        table
            .set_irqs(&set(trigger, IRQ_INDEX_REQ, 0, 1), vec![dup])
            .unwrap();
        table.clear();
        table.raise(IRQ_INDEX_REQ, 0);
        assert_eq!(count(&fd), 0, "cleared with the client");
    }

    #[test]
    fn only_eventfds_and_never_blocking() {
        let table = IrqTable::new([1, 0, 2, 1, 1]);
        let trigger = SetIrqsFlags::DATA_EVENTFD | SetIrqsFlags::ACTION_TRIGGER;
        // A pipe would block the raiser once full: refused.
        let (_r, w) = std::io::pipe().unwrap();
        assert!(matches!(
            table.set_irqs(&set(trigger, IRQ_INDEX_MSIX, 0, 1), vec![w.into()]),
            Err(IrqError::NotEventfd(0))
        ));
        // A blocking eventfd whose counter the client filled: raising does not block.
        let fd = eventfd(0, EventfdFlags::CLOEXEC).unwrap();
        rustix::io::write(&fd, &(u64::MAX - 1).to_ne_bytes()).unwrap();
        let dup = rustix::io::dup(&fd).unwrap();
        table
            .set_irqs(&set(trigger, IRQ_INDEX_MSIX, 0, 1), vec![dup])
            .unwrap();
        let flags = rustix::fs::fcntl_getfl(&fd).unwrap();
        assert!(flags.contains(rustix::fs::OFlags::NONBLOCK));
        table.raise(IRQ_INDEX_MSIX, 0);
        assert_eq!(count(&fd), u64::MAX - 1);
    }
}
