//! Instance names: a UUID or a short name safe as a socket file name.

/// Checks an instance name: a UUID, or 1-64 characters of `[A-Za-z0-9_.-]` not starting
/// with a dot.
pub fn check_name(name: &str) -> Result<(), String> {
    let valid = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if valid {
        Ok(())
    } else {
        Err(format!(
            "`{name}` is not an instance name (1-64 of letters, digits, `_`, `.`, `-`; not starting with `.`)"
        ))
    }
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
        assert!(check_name("net0").is_ok());
        assert!(check_name(&new_uuid()).is_ok());
        for bad in ["", ".hidden", "a/b", "../x", "a b", &"x".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }
}
