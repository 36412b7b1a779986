//! Support shared by the integration tests.

pub mod pki;
pub mod vmm;
