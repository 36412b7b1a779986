//! Typed access to the keys of a TOML table, with every error located by line, column and
//! field path, and unknown keys refused.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::ops::Range;

use toml::Spanned;
use toml::de::{DeArray, DeTable, DeValue};

use crate::layout::{LayoutError, Location};

/// The text being parsed, for turning spans into locations.
#[derive(Clone, Copy)]
pub(crate) struct Source<'a> {
    pub file: &'a str,
    pub text: &'a str,
}

impl Source<'_> {
    pub fn location(&self, span: &Range<usize>) -> Location {
        Location::at(self.file, self.text, span.start)
    }

    pub fn error(
        &self,
        span: &Range<usize>,
        field: &str,
        message: impl Into<String>,
    ) -> LayoutError {
        LayoutError::new(self.location(span), field, message)
    }
}

/// One TOML table being read: which keys were consumed, and its path for messages.
pub(crate) struct Fields<'a, 'i> {
    source: Source<'a>,
    table: &'a DeTable<'i>,
    span: Range<usize>,
    path: String,
    used: RefCell<BTreeSet<String>>,
}

/// A value with the place it came from.
pub(crate) struct Located<T> {
    pub value: T,
    pub span: Range<usize>,
    pub field: String,
}

impl<'a, 'i> Fields<'a, 'i> {
    pub fn new(
        source: Source<'a>,
        table: &'a DeTable<'i>,
        span: Range<usize>,
        path: String,
    ) -> Self {
        Self {
            source,
            table,
            span,
            path,
            used: RefCell::new(BTreeSet::new()),
        }
    }

    /// The path of `key` in this table.
    pub fn field(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    /// The path of the table itself.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Where the table starts.
    pub fn span(&self) -> Range<usize> {
        self.span.clone()
    }

    pub fn source(&self) -> Source<'a> {
        self.source
    }

    /// An error about `key` (at its value when present, else at the table). When `key` is
    /// absent and the table has an unread key spelt nearly like it, the error is at that key
    /// and names it: `sise` for `size`.
    pub fn error(&self, key: &str, message: impl Into<String>) -> LayoutError {
        let message = message.into();
        if let Some(value) = self.raw(key) {
            return self.source.error(&value.span(), &self.field(key), message);
        }
        match self.misspelling_of(key) {
            Some((found, span)) => self.source.error(
                &span,
                &self.field(key),
                format!("{message}; found `{found}`: a misspelling of `{key}`?"),
            ),
            None => self.source.error(&self.span, &self.field(key), message),
        }
    }

    /// An unread key of this table at most two edits away from `key`, and where its value is.
    fn misspelling_of(&self, key: &str) -> Option<(String, Range<usize>)> {
        let used = self.used.borrow();
        self.table
            .iter()
            .map(|(k, v)| (k.get_ref().as_ref(), v))
            .filter(|(k, _)| *k != key && !used.contains(*k))
            .map(|(k, v)| (edit_distance(k, key), k, v))
            .filter(|(d, _, _)| *d <= 2)
            .min_by_key(|(d, _, _)| *d)
            .map(|(_, k, v)| (k.to_string(), v.span()))
    }

    fn raw(&self, key: &str) -> Option<&'a Spanned<DeValue<'i>>> {
        self.table.get(key)
    }

    fn take(&self, key: &str) -> Option<&'a Spanned<DeValue<'i>>> {
        let value = self.raw(key)?;
        self.used.borrow_mut().insert(key.to_string());
        Some(value)
    }

    fn type_error(&self, key: &str, value: &Spanned<DeValue<'_>>, expected: &str) -> LayoutError {
        self.source.error(
            &value.span(),
            &self.field(key),
            format!("expected {expected}, found {}", value.get_ref().type_str()),
        )
    }

    /// An unsigned integer no larger than `max`.
    pub fn uint(&self, key: &str, max: u64) -> Result<Option<Located<u64>>, LayoutError> {
        let Some(value) = self.take(key) else {
            return Ok(None);
        };
        let number = match value.get_ref() {
            DeValue::Integer(integer) => parse_integer(integer.as_str(), integer.radix()),
            _ => return Err(self.type_error(key, value, "an integer")),
        };
        let number = number.ok_or_else(|| {
            self.source.error(
                &value.span(),
                &self.field(key),
                "expected a non-negative integer",
            )
        })?;
        if number > max {
            return Err(self.source.error(
                &value.span(),
                &self.field(key),
                format!("{number:#x} is out of range (at most {max:#x})"),
            ));
        }
        Ok(Some(self.located(key, value, number)))
    }

    /// A required unsigned integer no larger than `max`.
    pub fn require_uint(&self, key: &str, max: u64) -> Result<Located<u64>, LayoutError> {
        self.uint(key, max)?
            .ok_or_else(|| self.error(key, "missing required field"))
    }

    /// A size: an integer, or a string such as `"4K"`, `"16M"`, `"1G"` (powers of 1024).
    pub fn size(&self, key: &str) -> Result<Option<Located<u64>>, LayoutError> {
        let Some(value) = self.raw(key) else {
            return Ok(None);
        };
        if let DeValue::String(text) = value.get_ref() {
            self.used.borrow_mut().insert(key.to_string());
            let size = parse_size(text).ok_or_else(|| {
                self.source.error(
                    &value.span(),
                    &self.field(key),
                    format!("`{text}` is not a size (use bytes, or a number with K, M, G or T)"),
                )
            })?;
            return Ok(Some(self.located(key, value, size)));
        }
        self.uint(key, u64::MAX)
    }

    /// A boolean.
    pub fn boolean(&self, key: &str) -> Result<Option<Located<bool>>, LayoutError> {
        let Some(value) = self.take(key) else {
            return Ok(None);
        };
        match value.get_ref() {
            DeValue::Boolean(b) => Ok(Some(self.located(key, value, *b))),
            _ => Err(self.type_error(key, value, "true or false")),
        }
    }

    /// A string.
    pub fn string(&self, key: &str) -> Result<Option<Located<String>>, LayoutError> {
        let Some(value) = self.take(key) else {
            return Ok(None);
        };
        match value.get_ref() {
            DeValue::String(s) => Ok(Some(self.located(key, value, s.to_string()))),
            _ => Err(self.type_error(key, value, "a string")),
        }
    }

    /// A string that must be one of `choices`.
    pub fn choice(
        &self,
        key: &str,
        choices: &[&str],
    ) -> Result<Option<Located<String>>, LayoutError> {
        let Some(found) = self.string(key)? else {
            return Ok(None);
        };
        if choices.contains(&found.value.as_str()) {
            Ok(Some(found))
        } else {
            Err(self.source.error(
                &found.span,
                &found.field,
                format!("`{}` is not one of: {}", found.value, choices.join(", ")),
            ))
        }
    }

    /// An array of strings, each one of `choices`.
    pub fn choices(
        &self,
        key: &str,
        choices: &[&str],
    ) -> Result<Option<Located<Vec<String>>>, LayoutError> {
        let Some(value) = self.take(key) else {
            return Ok(None);
        };
        let DeValue::Array(items) = value.get_ref() else {
            return Err(self.type_error(key, value, "an array of strings"));
        };
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let field = format!("{}[{i}]", self.field(key));
            match item.get_ref() {
                DeValue::String(s) if choices.contains(&s.as_ref()) => out.push(s.to_string()),
                DeValue::String(s) => {
                    return Err(self.source.error(
                        &item.span(),
                        &field,
                        format!("`{s}` is not one of: {}", choices.join(", ")),
                    ));
                }
                other => {
                    return Err(self.source.error(
                        &item.span(),
                        &field,
                        format!("expected a string, found {}", other.type_str()),
                    ));
                }
            }
        }
        Ok(Some(self.located(key, value, out)))
    }

    /// An array of bytes (integers 0..=255).
    pub fn bytes(&self, key: &str) -> Result<Option<Located<Vec<u8>>>, LayoutError> {
        let Some(value) = self.take(key) else {
            return Ok(None);
        };
        let DeValue::Array(items) = value.get_ref() else {
            return Err(self.type_error(key, value, "an array of bytes"));
        };
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let byte = match item.get_ref() {
                DeValue::Integer(integer) => parse_integer(integer.as_str(), integer.radix())
                    .and_then(|n| u8::try_from(n).ok()),
                _ => None,
            };
            let byte = byte.ok_or_else(|| {
                self.source.error(
                    &item.span(),
                    &format!("{}[{i}]", self.field(key)),
                    "expected a byte (an integer from 0 to 0xff)",
                )
            })?;
            out.push(byte);
        }
        Ok(Some(self.located(key, value, out)))
    }

    /// A sub-table.
    pub fn table(&self, key: &str) -> Result<Option<Fields<'a, 'i>>, LayoutError> {
        let Some(value) = self.take(key) else {
            return Ok(None);
        };
        match value.get_ref() {
            DeValue::Table(table) => Ok(Some(Fields::new(
                self.source,
                table,
                value.span(),
                self.field(key),
            ))),
            _ => Err(self.type_error(key, value, "a table")),
        }
    }

    /// An array of tables (`[[key]]`), each named `key[i]` in messages.
    pub fn tables(&self, key: &str) -> Result<Vec<Fields<'a, 'i>>, LayoutError> {
        let Some(value) = self.take(key) else {
            return Ok(Vec::new());
        };
        let DeValue::Array(items) = value.get_ref() else {
            return Err(self.type_error(key, value, "an array of tables"));
        };
        tables_of(self.source, items, &self.field(key))
    }

    /// Refuses keys that were not read.
    pub fn finish(&self) -> Result<(), LayoutError> {
        let used = self.used.borrow();
        for (key, value) in self.table.iter() {
            if !used.contains(key.get_ref().as_ref()) {
                return Err(self.source.error(
                    &key.span(),
                    &self.field(key.get_ref()),
                    match value.get_ref() {
                        DeValue::Table(_) => "unknown table",
                        _ => "unknown field",
                    },
                ));
            }
        }
        Ok(())
    }

    fn located<T>(&self, key: &str, value: &Spanned<DeValue<'_>>, v: T) -> Located<T> {
        Located {
            value: v,
            span: value.span(),
            field: self.field(key),
        }
    }
}

fn tables_of<'a, 'i>(
    source: Source<'a>,
    items: &'a DeArray<'i>,
    path: &str,
) -> Result<Vec<Fields<'a, 'i>>, LayoutError> {
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let field = format!("{path}[{i}]");
        match item.get_ref() {
            DeValue::Table(table) => out.push(Fields::new(source, table, item.span(), field)),
            other => {
                return Err(source.error(
                    &item.span(),
                    &field,
                    format!("expected a table, found {}", other.type_str()),
                ));
            }
        }
    }
    Ok(out)
}

fn parse_integer(digits: &str, radix: u32) -> Option<u64> {
    let digits: String = digits.chars().filter(|c| *c != '_').collect();
    let digits = digits.strip_prefix('+').unwrap_or(&digits);
    u64::from_str_radix(digits, radix).ok()
}

/// Parses `"4096"`, `"4K"`, `"4KiB"`, `"16M"`, `"1G"`, `"1T"`.
pub(crate) fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().ok()?;
    let shift = match unit.trim() {
        "" | "B" => 0,
        "K" | "KiB" | "k" => 10,
        "M" | "MiB" => 20,
        "G" | "GiB" => 30,
        "T" | "TiB" => 40,
        _ => return None,
    };
    number.checked_mul(1u64 << shift)
}

/// Formats a size the way [`parse_size`] reads it back, choosing the largest exact unit.
pub(crate) fn format_size(size: u64) -> String {
    for (shift, unit) in [(40, "T"), (30, "G"), (20, "M"), (10, "K")] {
        if size >= 1 << shift && size.is_multiple_of(1 << shift) {
            return format!("{}{unit}", size >> shift);
        }
    }
    size.to_string()
}

/// The Levenshtein distance between two short keys.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitute = diagonal + usize::from(ca != *cb);
            diagonal = row[j + 1];
            row[j + 1] = substitute.min(row[j] + 1).min(diagonal + 1);
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_misspelt_required_key_is_named() {
        let text = "[vpci]\nformat = 1\nname = \"x\"\n[identity]\nvendor_id = 0x1af4\ndevice_id = 1\nclass_code = 0\n[[bar]]\nindex = 0\nkind = \"mem32\"\nsise = 4096\n";
        let e = crate::vpci::parse_layout("t.toml", text).unwrap_err();
        assert_eq!(e.location.line, 11, "{e}");
        assert!(
            e.to_string().contains(
                "bar[0].size: missing required field; found `sise`: a misspelling of `size`?"
            ),
            "{e}"
        );
        assert_eq!(edit_distance("sise", "size"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kind", "index"), 3);
    }

    #[test]
    fn sizes_round_trip() {
        for size in [4, 16, 4096, 1 << 20, 3 << 30, 1 << 40, 12_345] {
            assert_eq!(parse_size(&format_size(size)), Some(size));
        }
        assert_eq!(parse_size("4KiB"), Some(4096));
        assert_eq!(parse_size("4X"), None);
        assert_eq!(parse_size("99999999999999999T"), None);
    }

    #[test]
    fn integers_accept_toml_radixes() {
        assert_eq!(parse_integer("1_000", 10), Some(1000));
        assert_eq!(parse_integer("ff", 16), Some(255));
        assert_eq!(parse_integer("-1", 10), None);
    }
}
