//! The vPCI text file: one TOML file per instance type stating exactly the config space and
//! BARs a guest sees, independent of the physical function underneath.
//!
//! Where to look: the file's model in [`layout`], reading it in [`parse`] (field by field) and
//! [`checks`] (rules across items), compiling it to a config-space template in [`compile`],
//! checking it against a physical function in [`bind`], deriving one from a physical function in
//! [`derive`](mod@derive), writing one out in [`emit`], comparing two in [`compat`], printing in [`render`].

pub mod bind;
pub mod checks;
pub mod compat;

pub mod compile;
pub mod derive;
pub mod emit;

pub mod error;
mod fields;
pub mod layout;
pub mod parse;
pub mod render;

pub use error::{LayoutError, Location};
pub use layout::Layout;
pub use parse::parse_layout;

/// Reads and validates a layout file.
pub fn load_layout(path: &std::path::Path) -> Result<Layout, LayoutError> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|e| LayoutError::new(Location::at(&name, "", 0), "<file>", e.to_string()))?;
    parse_layout(&name, &text)
}
