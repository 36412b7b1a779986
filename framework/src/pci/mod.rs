//! PCI register definitions and a capability-chain walker over raw config-space bytes.
//!
//! Where to look: header registers and their bits in [`regs`], capability IDs and the one
//! capability table (chain, ID, name, layout kind, length) in [`cap`], VFIO's region numbering
//! in [`region`], walking either chain of a captured config space in [`walk`].

pub mod cap;
pub mod region;
pub mod regs;
pub mod walk;
