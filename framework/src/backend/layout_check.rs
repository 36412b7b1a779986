//! Checking an operator's layout at `create`: what a backend's function needs from the layout
//! it will be exposed with, stated once and checked before anything is provisioned.
//!
//! ```
//! use vfio_variant::backend::layout_check::LayoutRequirements;
//! # let text = "[vpci]\nformat = 1\nname = \"x\"\n[identity]\nvendor_id = 1\ndevice_id = 2\nclass_code = 0\n[[bar]]\nindex = 0\nkind = \"mem32\"\nsize = \"4K\"\nbacking = \"emulated\"\n";
//! # let layout = vfio_variant::vpci::parse_layout("x", text).unwrap();
//! let needs = LayoutRequirements::new().emulated_memory_bar(0, 0x40);
//! let facts = needs.check(&layout)?;
//! assert_eq!(facts.msix_vectors, 0);
//! # Ok::<(), vfio_variant::backend::BackendError>(())
//! ```

use super::BackendError;
use crate::layout::{BarBacking, BarKind, CapabilityBody, Layout};

/// What a function needs from its layout.
#[derive(Debug, Clone, Default)]
pub struct LayoutRequirements {
    /// BARs that must be emulated memory BARs of at least this size.
    emulated: Vec<(u8, u64)>,
    /// MSI-X vectors the function needs at least.
    msix: Option<u16>,
}

/// What the checked layout gives the function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LayoutFacts {
    /// MSI-X table size (0 without MSI-X): the vectors the function may raise.
    pub msix_vectors: u32,
    /// MSI vectors (0 without MSI).
    pub msi_vectors: u32,
    /// Whether the function has an INTx pin.
    pub intx: bool,
}

impl LayoutRequirements {
    /// Nothing required yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// BAR `index` must be a memory BAR backed by the backend (`emulated`) of at least
    /// `min_size` bytes.
    pub fn emulated_memory_bar(mut self, index: u8, min_size: u64) -> Self {
        self.emulated.push((index, min_size));
        self
    }

    /// The layout must have an MSI-X capability with at least `vectors` entries.
    pub fn msix(mut self, vectors: u16) -> Self {
        self.msix = Some(vectors);
        self
    }

    /// Checks `layout`; a refusal names what is missing.
    pub fn check(&self, layout: &Layout) -> Result<LayoutFacts, BackendError> {
        let refuse = |m: String| {
            Err(BackendError::Refused(format!(
                "layout `{}`: {m}",
                layout.name
            )))
        };
        for &(index, min_size) in &self.emulated {
            match layout.bar(index) {
                Some(bar)
                    if bar.backing == BarBacking::Emulated
                        && bar.kind != BarKind::Io
                        && bar.size >= min_size => {}
                Some(bar) => {
                    return refuse(format!(
                        "BAR {index} must be an emulated memory BAR of at least {min_size} bytes; it is {:?} {:?} of {} bytes",
                        bar.kind, bar.backing, bar.size
                    ));
                }
                None => return refuse(format!("BAR {index} is missing")),
            }
        }
        let mut facts = LayoutFacts {
            intx: layout.header.interrupt_pin != 0,
            ..LayoutFacts::default()
        };
        for c in &layout.capabilities {
            match &c.body {
                CapabilityBody::Msix(p) => facts.msix_vectors = p.table_size.into(),
                CapabilityBody::Msi(p) => facts.msi_vectors = p.vectors.into(),
                _ => {}
            }
        }
        if let Some(vectors) = self.msix
            && facts.msix_vectors < u32::from(vectors)
        {
            return refuse(format!(
                "needs an MSI-X capability with at least {vectors} vectors; it has {}",
                facts.msix_vectors
            ));
        }
        Ok(facts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vpci::parse_layout;

    const LAYOUT: &str = r#"
[vpci]
format = 1
name = "t"
[identity]
vendor_id = 1
device_id = 2
class_code = 0
[[bar]]
index = 0
kind = "mem32"
size = "4K"
backing = "emulated"
[[bar]]
index = 2
kind = "io"
size = 32
backing = "legacy-io"
[[capability]]
kind = "msix"
offset = 0x40
table_size = 2
table_bar = 0
table_offset = 0x800
pba_bar = 0
pba_offset = 0xc00
"#;

    #[test]
    fn requirements_refuse_what_is_missing_and_report_the_vectors() {
        let layout = parse_layout("t", LAYOUT).unwrap();
        let facts = LayoutRequirements::new()
            .emulated_memory_bar(0, 0x1000)
            .msix(2)
            .check(&layout)
            .unwrap();
        assert_eq!(
            (facts.msix_vectors, facts.msi_vectors, facts.intx),
            (2, 0, false)
        );
        let refused = |r: LayoutRequirements| r.check(&layout).unwrap_err().to_string();
        assert!(
            refused(LayoutRequirements::new().emulated_memory_bar(0, 0x2000))
                .contains("at least 8192 bytes")
        );
        assert!(
            refused(LayoutRequirements::new().emulated_memory_bar(2, 4)).contains("BAR 2 must be")
        );
        assert!(
            refused(LayoutRequirements::new().emulated_memory_bar(1, 4))
                .contains("BAR 1 is missing")
        );
        assert!(
            refused(LayoutRequirements::new().msix(3)).contains("at least 3 vectors; it has 2")
        );
    }
}
