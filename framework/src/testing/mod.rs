//! The conformance kit: the standard checks any [`Backend`] can run,
//! in-process, without a server (cargo feature `testing`).
//!
//! A vendor adds one test line:
//!
//! ```ignore
//! #[test]
//! fn conforms() {
//!     vfio_variant::testing::assert_conformance(&MyBackend::new());
//! }
//! ```
//!
//! [`check_backend`] runs every check against each profile the backend offers, with the
//! profile's default layout, and returns a [`Report`] that names each failed check, profile and
//! access. The checks (see [`Check`]):
//! - **lifecycle**: every profile's layout compiles; a function creates and drops cleanly; the
//!   profile's available instances count down by one per function and back when it is dropped;
//!   creating past the last instance is refused with `NoInstances`;
//! - **failed-create**: a refused create (unknown profile, no instance left) leaves every
//!   profile's count as it was;
//! - **config-space**: every virtual read-only bit reads as the layout states, before and after
//!   the guest writes ones and zeros to every dword; writes change only writable bits;
//! - **bar-access**: accesses of width 1, 2, 4 and 8 at every alignment over the first
//!   [`PROBE_BYTES`] and the last bytes of each BAR, and past its end, end in a value or an
//!   error, never a panic; out-of-range ones get `EINVAL` and never reach the backend;
//! - **decoding**: with COMMAND's I/O or memory decoding off, no access reaches the backend;
//! - **reset**: after the guest writes ones to every probed register, a reset (FLR) brings
//!   config space and every register that reads stable back to their state after create;
//! - **interrupts**: a function that was never attached takes every access (its interrupts are
//!   dropped); an attached one raises only vectors its layout declares;
//! - **msix-table**: the MSI-X table and PBA pages are served by the framework and never reach
//!   the backend;
//! - **migration** (profiles that say `migratable`): the function has migration hooks offering
//!   STOP_COPY; every direct arc the flags allow is taken; a save goes through a checked stream
//!   into a second function, which then reads as the first did; a truncated state is refused;
//! - **panic**: a panic in any call is caught and reported as a failure of the check that made
//!   the call; so is a plugin's panic that the plugin boundary contained (an error whose message
//!   starts with [`PANICKED_PREFIX`](crate::plugin::abi::PANICKED_PREFIX)): run through
//!   `vfio-variant plugin check`, the kit shows the panic stays contained and still fails the
//!   backend for it.
//!
//! The kit creates functions and writes to their registers (ones everywhere it probes): run
//! it against emulated hardware or a spare device, never one in use.
//!
//! The kit drives the function as a guest would through [`VirtualFunction`]
//! (the router a server uses), so the backend sees exactly what it sees in production.

mod checks;
mod observed;
mod report;

#[cfg(test)]
mod fixtures;

pub use checks::{PROBE_BYTES, check_backend, check_backend_with};
pub use report::{Check, Failure, Report};

use std::ops::Range;

#[cfg(doc)]
use crate::device::VirtualFunction;

use crate::backend::Backend;

/// What a backend tells the kit about itself.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// BAR ranges that keep their value over a reset by design (non-volatile storage).
    pub(crate) survives_reset: Vec<(u8, Range<u64>)>,
}

impl Options {
    /// Bytes `range` of BAR `bar` keep their value over a reset by design (a device's
    /// non-volatile storage): the reset check leaves them out.
    pub fn survives_reset(mut self, bar: u8, range: Range<u64>) -> Self {
        self.survives_reset.push((bar, range));
        self
    }
}

/// Runs [`check_backend`] and panics with every failure when one check fails: the one line a
/// backend's test suite adds.
#[track_caller]
pub fn assert_conformance(backend: &dyn Backend) {
    assert_conformance_with(backend, &Options::default());
}

/// [`assert_conformance`] with what the backend tells the kit about itself.
#[track_caller]
pub fn assert_conformance_with(backend: &dyn Backend, options: &Options) {
    let report = check_backend_with(backend, options);
    if !report.passed() {
        panic!("{report}");
    }
}
