//! Errors in a vPCI layout file, located by file, line, column and field.

use std::fmt;

/// Where in a layout file something was written.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Location {
    /// The file name as given to the parser (`<input>` for text without a file).
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub column: usize,
}

impl Location {
    /// The location of byte `offset` of `source`.
    pub fn at(file: &str, source: &str, offset: usize) -> Self {
        let offset = offset.min(source.len());
        let before = source.get(..offset).unwrap_or(source);
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = before
            .get(line_start..)
            .map_or(1, |s| s.chars().count() + 1);
        Self {
            file: file.to_string(),
            line,
            column,
        }
    }
}

impl fmt::Display for Location {
    /// `file:line:column`; a location without a line (a check of the whole layout) is the
    /// file alone.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}", self.file)
        } else {
            write!(f, "{}:{}:{}", self.file, self.line, self.column)
        }
    }
}

/// A layout refused by the parser, the validator or the physical-function check.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct LayoutError {
    /// Where the offending value (or the table missing a key) is.
    pub location: Location,
    /// The field path, for example `bar[1].size` or `capability[msix@0x40].table_offset`.
    pub field: String,
    /// What is wrong, in words.
    pub message: String,
}

impl LayoutError {
    /// An error at `location` about `field`.
    pub fn new(location: Location, field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            location,
            field: field.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for LayoutError {
    /// `file:line:column: field: message`, leaving out what the location does not have.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.location.file.is_empty() || self.location.line > 0 {
            write!(f, "{}: ", self.location)?;
        }
        write!(f, "{}: {}", self.field, self.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn location_counts_lines_and_columns() {
        let text = "a = 1\nbé = 2\n";
        assert_eq!(Location::at("f", text, 0).to_string(), "f:1:1");
        let at = text.find('2').unwrap();
        assert_eq!(Location::at("f", text, at).to_string(), "f:2:6");
        assert_eq!(Location::at("f", text, 1000).line, 3);
        let whole = Location {
            file: "f.toml".into(),
            ..Location::default()
        };
        assert_eq!(whole.to_string(), "f.toml", "no made-up line and column");
        let nowhere = LayoutError::new(Location::default(), "<physical function>", "gone");
        assert_eq!(nowhere.to_string(), "<physical function>: gone");
    }
}
