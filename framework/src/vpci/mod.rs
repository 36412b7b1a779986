//! The vPCI text file: one TOML file per instance type stating exactly the config space and
//! BARs a guest sees, independent of the physical function underneath.
//!
//! The file's model (what a layout states) is [`crate::layout`], below `physical` and `config`,
//! which this module builds on. Where to look here: reading it in [`parse`] (field by field)
//! and [`checks`] (rules across items), compiling it to a config-space template in
//! [`compile`], checking it against a physical function in [`bind`], deriving one from a
//! physical function in [`derive`](mod@derive), writing one out in [`emit`], comparing two in
//! [`compat`], printing in [`render`].

pub mod bind;
pub mod checks;
pub mod compat;

pub mod compile;
pub mod derive;
pub mod emit;

mod fields;
pub mod parse;
pub mod render;

/// The model, re-exported for the modules above that name it through `vpci`.
pub use crate::layout::{Layout, LayoutError, Location};
pub use parse::parse_layout;

/// Most bytes of a layout file (the catalog's are a few KiB).
pub const MAX_LAYOUT_FILE: u64 = 1 << 20;

/// Reads (at most [`MAX_LAYOUT_FILE`] bytes) and validates a layout file.
pub fn load_layout(path: &std::path::Path) -> Result<Layout, LayoutError> {
    use std::io::Read;
    let name = path.display().to_string();
    // The file as a whole: no line or column.
    let error = |message: String| {
        let location = Location {
            file: name.clone(),
            ..Location::default()
        };
        LayoutError::new(location, "<file>", message)
    };
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_LAYOUT_FILE + 1).read_to_end(&mut bytes))
        .map_err(|e| error(e.to_string()))?;
    if bytes.len() as u64 > MAX_LAYOUT_FILE {
        return Err(error(format!(
            "longer than {MAX_LAYOUT_FILE} bytes: not a layout file"
        )));
    }
    let text = String::from_utf8(bytes).map_err(|_| error("not UTF-8 text".into()))?;
    parse_layout(&name, &text)
}
