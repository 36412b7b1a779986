//! Reading a physical function's description from a sysfs device directory
//! (`/sys/bus/pci/devices/DDDD:BB:DD.F`) or from a captured `config` and `resource` file pair.

use std::path::Path;

use super::{PhysicalBar, PhysicalDescription, PhysicalError};
use crate::layout::BarKind;
use crate::pci::regs;

/// `IORESOURCE_IO` in the flags column of sysfs `resource`.
const IORESOURCE_IO: u64 = 0x100;
/// `IORESOURCE_MEM`.
const IORESOURCE_MEM: u64 = 0x200;
/// `IORESOURCE_PREFETCH`.
const IORESOURCE_PREFETCH: u64 = 0x2000;
/// `IORESOURCE_MEM_64`.
const IORESOURCE_MEM_64: u64 = 0x0010_0000;
/// Index of the expansion ROM line in `resource`.
const ROM_RESOURCE: usize = 6;

/// Most bytes read from a `config` file: a PCIe extended config space.
const MAX_CONFIG_FILE: u64 = regs::EXTENDED_CONFIG_SPACE_SIZE as u64;
/// Most bytes read from a `resource` file (sysfs writes a few hundred).
const MAX_RESOURCE_FILE: u64 = 64 << 10;

/// Reads at most `limit` bytes of `path`; a longer file (`/dev/zero`, a wrong path) is
/// refused rather than read to its end.
fn read(path: &Path, limit: u64) -> Result<Vec<u8>, PhysicalError> {
    use std::io::Read;
    let io = |source| PhysicalError::Io {
        what: format!("reading {}", path.display()),
        source,
    };
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(limit + 1).read_to_end(&mut bytes))
        .map_err(io)?;
    if bytes.len() as u64 > limit {
        return Err(PhysicalError::Invalid(format!(
            "{}: longer than {limit} bytes, so not a sysfs `{}` file",
            path.display(),
            path.file_name().map_or("".into(), |n| n.to_string_lossy())
        )));
    }
    Ok(bytes)
}

/// Reads `DIR/config` and `DIR/resource`.
pub fn describe_sysfs_dir(dir: &Path) -> Result<PhysicalDescription, PhysicalError> {
    describe_files(&dir.join("config"), &dir.join("resource"))
}

/// Reads a config-space file and a sysfs-format resource file. An SR-IOV VF reads vendor and
/// device ID 0xffff from hardware; then the IDs are taken from sysfs-format `vendor` and
/// `device` files beside the config file.
pub fn describe_files(
    config: &Path,
    resource: &Path,
) -> Result<PhysicalDescription, PhysicalError> {
    let mut config_bytes = read(config, MAX_CONFIG_FILE)?;
    if config_bytes.get(..2) == Some(&[0xff, 0xff]) {
        let dir = config.parent().unwrap_or(Path::new("."));
        for (name, offset) in [("vendor", regs::VENDOR_ID), ("device", regs::DEVICE_ID)] {
            let path = dir.join(name);
            if let Ok(text) = std::fs::read_to_string(&path) {
                let id = u16::from_str_radix(text.trim().trim_start_matches("0x"), 16).map_err(
                    |_| PhysicalError::Invalid(format!("{}: not a hex ID", path.display())),
                )?;
                let at = usize::from(offset);
                config_bytes[at..at + 2].copy_from_slice(&id.to_le_bytes());
            }
        }
    }
    let resource_text = String::from_utf8(read(resource, MAX_RESOURCE_FILE)?)
        .map_err(|_| PhysicalError::Invalid(format!("{}: not a text file", resource.display())))?;
    describe_bytes(config_bytes, &resource_text).map_err(|e| {
        PhysicalError::Invalid(format!(
            "{} / {}: {e}",
            config.display(),
            resource.display()
        ))
    })
}

/// Builds a description from config bytes and the text of a sysfs `resource` file.
pub fn describe_bytes(mut config: Vec<u8>, resource: &str) -> Result<PhysicalDescription, String> {
    if config.len() < 64 {
        return Err(format!(
            "config space is {} bytes; a PCI header is 64",
            config.len()
        ));
    }
    // sysfs gives 64 bytes to unprivileged readers, 256 or 4096 to root.
    let size = if config.len() >= regs::EXTENDED_CONFIG_SPACE_SIZE {
        regs::EXTENDED_CONFIG_SPACE_SIZE
    } else {
        regs::CONFIG_SPACE_SIZE
    };
    config.resize(size, 0);
    let vendor = u16::from_le_bytes([config[0], config[1]]);
    if vendor == 0xffff || vendor == 0 {
        return Err(format!(
            "vendor ID {vendor:#06x}: no function there (an SR-IOV VF reads 0xffff: give its IDs in `vendor` and `device` files)"
        ));
    }
    if config[usize::from(regs::HEADER_TYPE)] & 0x7f != 0 {
        return Err("not a type 0 (endpoint) header".to_string());
    }
    let mut lines = Vec::new();
    for (n, line) in resource.lines().enumerate() {
        let fields: Vec<u64> = line
            .split_whitespace()
            .map(|f| u64::from_str_radix(f.trim_start_matches("0x"), 16))
            .collect::<Result<_, _>>()
            .map_err(|_| format!("resource line {}: expected three hex numbers", n + 1))?;
        let [start, end, flags] = fields[..] else {
            return Err(format!(
                "resource line {}: expected three hex numbers",
                n + 1
            ));
        };
        lines.push((start, end, flags));
    }
    if lines.len() <= ROM_RESOURCE {
        return Err(format!(
            "resource has {} lines; sysfs gives at least 7",
            lines.len()
        ));
    }
    let size_of = |(start, end, _): (u64, u64, u64)| -> Option<u64> {
        (end > start || (end == start && start != 0)).then(|| end - start + 1)
    };
    let mut bars = [None; regs::BAR_COUNT];
    let mut index = 0;
    while index < regs::BAR_COUNT {
        let line = lines[index];
        let flags = line.2;
        let Some(size) = size_of(line) else {
            index += 1;
            continue;
        };
        let kind = if flags & IORESOURCE_IO != 0 {
            BarKind::Io
        } else if flags & IORESOURCE_MEM != 0 {
            if flags & IORESOURCE_MEM_64 != 0 {
                BarKind::Memory64
            } else {
                BarKind::Memory32
            }
        } else {
            return Err(format!(
                "resource {index}: flags {flags:#x} are neither I/O nor memory"
            ));
        };
        bars[index] = Some(PhysicalBar {
            kind,
            prefetchable: flags & IORESOURCE_PREFETCH != 0,
            size,
        });
        index += if kind == BarKind::Memory64 { 2 } else { 1 };
    }
    Ok(PhysicalDescription {
        config,
        bars,
        rom_size: size_of(lines[ROM_RESOURCE]),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resource(lines: &[(u64, u64, u64)]) -> String {
        let mut text = String::new();
        for i in 0..13 {
            let (s, e, f) = lines.get(i).copied().unwrap_or((0, 0, 0));
            text.push_str(&format!("0x{s:016x} 0x{e:016x} 0x{f:016x}\n"));
        }
        text
    }

    #[test]
    fn reads_bar_kinds_and_sizes() {
        let mut config = vec![0u8; 256];
        config[0] = 0xf4;
        config[1] = 0x1a;
        let text = resource(&[
            (0xc000, 0xc01f, 0x40101),
            (0xfe000000, 0xfe000fff, 0x40200),
            (0, 0, 0),
            (0, 0, 0),
            (0xfe800000, 0xfe803fff, 0x14220c),
            (0, 0, 0),
            (0xfeb80000, 0xfebbffff, 0x46200),
        ]);
        let d = describe_bytes(config, &text).unwrap();
        assert_eq!(d.bars[0].unwrap().kind, BarKind::Io);
        assert_eq!(d.bars[0].unwrap().size, 32);
        assert_eq!(d.bars[1].unwrap().kind, BarKind::Memory32);
        assert_eq!(d.bars[1].unwrap().size, 4096);
        let bar4 = d.bars[4].unwrap();
        assert_eq!(
            (bar4.kind, bar4.prefetchable, bar4.size),
            (BarKind::Memory64, true, 0x4000)
        );
        assert_eq!(d.bars[5], None);
        assert_eq!(d.rom_size, Some(0x40000));
    }

    #[test]
    fn refuses_garbage() {
        assert!(describe_bytes(vec![0; 16], "").is_err());
        let mut config = vec![0u8; 256];
        config[0] = 0x86;
        assert!(describe_bytes(config.clone(), "zz").is_err());
        assert!(describe_bytes(config, "0x0 0x0 0x0\n").is_err());
    }
}
