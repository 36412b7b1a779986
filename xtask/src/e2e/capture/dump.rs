//! The guest's per-function dumps: parsed from the console, found by topology, checked, and
//! written out as files.

use std::fs;
use std::path::Path;

use crate::e2e::guest::Console;

/// The fewest lines a sysfs `resource` file has (6 BARs, the ROM, then IOV and bridge windows).
const MIN_RESOURCE_LINES: usize = 13;

/// One PCI function as the guest printed it.
pub struct Dump<'a> {
    /// The sysfs device path (`/sys/devices/pci0000:00/...`).
    pub path: &'a str,
    /// The sysfs `vendor`, `device` and `class` files.
    pub ids: [&'a str; 3],
    /// The bound driver, or `none`.
    pub driver: &'a str,
    /// The raw config bytes.
    pub config: Vec<u8>,
    /// The `resource` file, line by line.
    pub resource: Vec<&'a str>,
}

/// Finds the function at bus 0 `slot` (conventional) or behind the root port there (express).
pub fn find_device<'a>(
    console: &'a Console,
    slot: usize,
    express: bool,
) -> Result<(String, Dump<'a>), String> {
    let depth = if express { 2 } else { 1 };
    for (name, lines) in console.sections()? {
        let Some(bdf) = name.strip_prefix("dev ") else {
            continue;
        };
        let dump = parse_dump(&lines).map_err(|e| format!("section `{name}`: {e}"))?;
        if topology(dump.path) == Some((slot, depth)) {
            return Ok((bdf.to_string(), dump));
        }
    }
    let place = if express {
        "behind the root port at"
    } else {
        "at"
    };
    Err(format!(
        "the guest shows no PCI function {place} 00:{slot:02x}.0"
    ))
}

/// The bus-0 slot a sysfs device path starts from, and how many functions deep it is.
fn topology(path: &str) -> Option<(usize, usize)> {
    let below = path.strip_prefix("/sys/devices/pci0000:00/")?;
    let functions: Vec<&str> = below.split('/').collect();
    let first = functions.first()?.strip_prefix("0000:00:")?;
    let (slot, function) = first.split_once('.')?;
    if function != "0" {
        return None;
    }
    Some((usize::from_str_radix(slot, 16).ok()?, functions.len()))
}

/// Parses the lines `dump-pci` printed for one function.
pub fn parse_dump<'a>(lines: &[&'a str]) -> Result<Dump<'a>, String> {
    let field = |key: &str| {
        lines
            .iter()
            .find_map(|line| line.strip_prefix(key)?.strip_prefix('='))
            .ok_or_else(|| format!("no `{key}=` line"))
    };
    let position = |marker: &str| {
        lines
            .iter()
            .position(|line| *line == marker)
            .ok_or_else(|| format!("no `{marker}` line"))
    };
    let (config_at, resource_at) = (position("--- config")?, position("--- resource")?);
    if resource_at < config_at {
        return Err("`--- resource` comes before `--- config`".into());
    }
    let size: usize = field("size")?
        .trim()
        .parse()
        .map_err(|e| format!("bad size: {e}"))?;
    let mut config = Vec::with_capacity(size);
    for line in &lines[config_at + 1..resource_at] {
        for byte in line.split_whitespace() {
            let value = (byte.len() == 2)
                .then(|| u8::from_str_radix(byte, 16).ok())
                .flatten()
                .ok_or_else(|| format!("bad hex byte `{byte}` in line `{line}`"))?;
            config.push(value);
        }
    }
    if config.len() != size {
        return Err(format!(
            "{} config bytes printed, sysfs said {size}",
            config.len()
        ));
    }
    Ok(Dump {
        path: field("path")?,
        ids: [field("vendor")?, field("device")?, field("class")?],
        driver: field("driver")?,
        config,
        resource: lines[resource_at + 1..].to_vec(),
    })
}

/// Checks a captured function: config size, vendor and device ID, no driver, a full resource file.
pub fn check(dump: &Dump, size: usize, vendors: &[u16], devices: &[u16]) -> Result<(), String> {
    if dump.config.len() != size {
        return Err(format!(
            "config is {} bytes, expected {size}",
            dump.config.len()
        ));
    }
    let id = |at: usize| u16::from_le_bytes([dump.config[at], dump.config[at + 1]]);
    if !vendors.contains(&id(0)) || !devices.contains(&id(2)) {
        return Err(format!(
            "config starts with {:04x}:{:04x}, expected {vendors:04x?}:{devices:04x?}",
            id(0),
            id(2),
        ));
    }
    if dump.driver != "none" {
        return Err(format!(
            "the guest driver `{}` was bound when it was read",
            dump.driver
        ));
    }
    if dump.resource.len() < MIN_RESOURCE_LINES {
        return Err(format!(
            "resource has {} lines, expected at least {MIN_RESOURCE_LINES}",
            dump.resource.len()
        ));
    }
    let well_formed = |line: &&str| {
        let fields: Vec<&str> = line.split(' ').collect();
        fields.len() == 3
            && fields.iter().all(|field| {
                field.len() == 18
                    && field
                        .strip_prefix("0x")
                        .is_some_and(|hex| hex.bytes().all(|b| b.is_ascii_hexdigit()))
            })
    };
    match dump.resource.iter().find(|line| !well_formed(line)) {
        Some(line) => Err(format!("bad resource line `{line}`")),
        None => Ok(()),
    }
}

/// Writes `config` and `resource` of one function into `dir`, and its sysfs `vendor` and
/// `device` files when its config space reads all ones there (an SR-IOV VF).
pub fn write_device(dir: &Path, dump: &Dump) -> Result<(), String> {
    fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let resource: String = dump
        .resource
        .iter()
        .map(|line| format!("{line}\n"))
        .collect();
    let mut files = vec![
        ("config", dump.config.clone()),
        ("resource", resource.into_bytes()),
    ];
    if dump.config.starts_with(&[0xff, 0xff]) {
        let [vendor, device, _] = dump.ids;
        files.push(("vendor", format!("{vendor}\n").into_bytes()));
        files.push(("device", format!("{device}\n").into_bytes()));
    }
    for (file, bytes) in files {
        let path = dir.join(file);
        fs::write(&path, bytes).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{parse_dump, topology};

    #[test]
    fn topology_gives_slot_and_depth() {
        assert_eq!(
            topology("/sys/devices/pci0000:00/0000:00:0a.0"),
            Some((10, 1))
        );
        assert_eq!(
            topology("/sys/devices/pci0000:00/0000:00:05.0/0000:03:00.0"),
            Some((5, 2))
        );
        assert_eq!(topology("/sys/devices/pci0000:00/0000:00:1f.2"), None);
    }

    #[test]
    fn a_dump_is_parsed() {
        let lines = [
            "path=/sys/devices/pci0000:00/0000:00:02.0",
            "vendor=0x1234",
            "device=0x11e8",
            "class=0x00ff00",
            "driver=none",
            "size=2",
            "--- config",
            "34 12 ",
            "--- resource",
            "0x0000000000000000 0x0000000000000000 0x0000000000000000",
        ];
        let dump = parse_dump(&lines).unwrap();
        assert_eq!(dump.config, [0x34, 0x12]);
        assert_eq!(dump.resource.len(), 1);
        assert!(parse_dump(&lines[..8]).is_err());
    }
}
