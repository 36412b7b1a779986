//! Config-space emulation: a compiled template (reset values and per-bit rules, shared by every
//! function of a layout) and the per-function runtime that serves guest accesses.
//!
//! Where to look: the per-byte rules in [`template`], the access algorithm in [`space`], where
//! the bits the layout does not hold come from in [`backing`], what a write can report to the
//! interrupt layer in [`event`].

pub mod backing;
pub mod event;
pub mod space;
pub mod template;

pub use backing::{ConfigBacking, NoBacking, PhysicalFunctionBacking};
pub use event::ConfigEvent;
pub use space::{ConfigError, ConfigSpace};
pub use template::ConfigTemplate;
