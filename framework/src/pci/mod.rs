//! PCI register definitions and a capability-chain walker over raw config-space bytes.
//!
//! Where to look: header registers and their bits in [`regs`], capability IDs, names and
//! standard sizes in [`cap`], VFIO's region numbering in [`region`], walking a captured config space in [`walk`].

pub mod cap;
pub mod region;
pub mod regs;
pub mod walk;
