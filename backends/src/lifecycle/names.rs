//! Instance names: a UUID or a short name safe as a socket file name.

/// Names that stand for the server's own sockets, never an instance's.
const RESERVED: &[&str] = &["control"];

/// Checks an instance name and returns its canonical spelling: a UUID (in lower case, so
/// two spellings of one UUID are one instance), or 1-64 characters of `[A-Za-z0-9_.-]` not
/// starting with a dot and not reserved (`control`: the control socket's name).
pub fn check_name(name: &str) -> Result<String, String> {
    if let Ok(uuid) = uuid::Uuid::try_parse(name) {
        return Ok(uuid.hyphenated().to_string());
    }
    let valid = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if !valid {
        return Err(format!(
            "`{name}` is not an instance name (1-64 of letters, digits, `_`, `.`, `-`; not starting with `.`)"
        ));
    }
    if RESERVED.contains(&name) {
        return Err(format!(
            "the name `{name}` is reserved (its socket would be the server's {name}.sock)"
        ));
    }
    Ok(name.to_string())
}

/// A new random instance name (a UUID), as mdevctl gives when none is asked for.
pub fn new_uuid() -> String {
    uuid::Uuid::new_v4().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(check_name("net0").unwrap(), "net0");
        let uuid = new_uuid();
        assert_eq!(check_name(&uuid).unwrap(), uuid);
        assert_eq!(check_name(&uuid.to_uppercase()).unwrap(), uuid);
        for bad in [
            "",
            ".hidden",
            "a/b",
            "../x",
            "a b",
            &"x".repeat(65),
            "control",
        ] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
        assert!(check_name("control").unwrap_err().contains("reserved"));
    }
}
