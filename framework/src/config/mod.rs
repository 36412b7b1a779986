//! Config-space emulation: a compiled template (reset values and per-bit rules, shared by every
//! function of a layout) and the per-function runtime that serves guest accesses.
//!
//! Where to look: the per-byte rules in [`template`], the access algorithm in [`space`], what
//! a write can report to the interrupt layer in [`event`].

pub mod event;
pub mod space;
pub mod template;

pub use event::ConfigEvent;
pub use space::{ConfigBacking, ConfigError, ConfigSpace, NoBacking};
pub use template::ConfigTemplate;
