//! Walks the capability chains of a config space given as raw bytes (a sysfs `config` file,
//! a physical function's config, or the compiled virtual one).

use super::regs;

/// A capability found in a chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FoundCapability {
    /// Capability ID (8 bits for standard, 16 bits for extended capabilities).
    pub id: u16,
    /// Capability version (extended capabilities only; 0 for standard ones).
    pub version: u8,
    /// Offset of the capability header in config space.
    pub offset: u16,
}

/// Why a chain could not be walked to its end.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WalkError {
    /// The chain visits an offset a second time.
    #[error("capability chain loops back to offset {0:#x}")]
    Cycle(u16),
    /// A next pointer is not dword aligned or points outside the capability area.
    #[error("capability at {at:#x} points to invalid offset {next:#x}")]
    BadPointer {
        /// Offset of the capability holding the pointer (0x34 for the header's pointer).
        at: u16,
        /// The invalid pointer.
        next: u16,
    },
}

fn byte(config: &[u8], offset: u16) -> u8 {
    config.get(usize::from(offset)).copied().unwrap_or(0)
}

fn dword(config: &[u8], offset: u16) -> u32 {
    let mut value = [0u8; 4];
    for (i, b) in value.iter_mut().enumerate() {
        *b = byte(config, offset + i as u16);
    }
    u32::from_le_bytes(value)
}

/// The standard capabilities in chain order. An empty list when STATUS.CAP_LIST is clear.
pub fn standard_capabilities(config: &[u8]) -> Result<Vec<FoundCapability>, WalkError> {
    let status = u16::from_le_bytes([byte(config, regs::STATUS), byte(config, regs::STATUS + 1)]);
    if status & regs::STATUS_CAP_LIST == 0 {
        return Ok(Vec::new());
    }
    let mut found = Vec::new();
    let mut at = regs::CAPABILITIES_POINTER;
    // The low two bits of the pointers are reserved (PCI 3.0 6.7); Linux masks them too.
    let mut next = u16::from(byte(config, at)) & !3;
    while next != 0 {
        if !(regs::HEADER_END..=0xfc).contains(&next) {
            return Err(WalkError::BadPointer { at, next });
        }
        if found.iter().any(|c: &FoundCapability| c.offset == next) {
            return Err(WalkError::Cycle(next));
        }
        found.push(FoundCapability {
            id: u16::from(byte(config, next)),
            version: 0,
            offset: next,
        });
        at = next;
        next = u16::from(byte(config, next + 1)) & !3;
    }
    Ok(found)
}

/// The extended capabilities in chain order. Empty for a 256-byte config space, or when the
/// dword at 0x100 is 0 or all ones.
pub fn extended_capabilities(config: &[u8]) -> Result<Vec<FoundCapability>, WalkError> {
    if config.len() < regs::EXTENDED_CONFIG_SPACE_SIZE {
        return Ok(Vec::new());
    }
    let mut found = Vec::new();
    let mut at = regs::EXTENDED_CAPS_START;
    loop {
        let header = dword(config, at);
        if header == 0 || header == u32::MAX {
            // Linux: an all-zero header at 0x100 means no extended capabilities.
            break;
        }
        if found.iter().any(|c: &FoundCapability| c.offset == at) {
            return Err(WalkError::Cycle(at));
        }
        found.push(FoundCapability {
            id: (header & 0xffff) as u16,
            version: ((header >> 16) & 0xf) as u8,
            offset: at,
        });
        let next = (header >> 20) as u16;
        if next == 0 {
            break;
        }
        if next < regs::EXTENDED_CAPS_START || !next.is_multiple_of(4) {
            return Err(WalkError::BadPointer { at, next });
        }
        at = next;
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_caps(chain: &[(u16, u8, u8)]) -> Vec<u8> {
        let mut config = vec![0u8; 256];
        config[6] = regs::STATUS_CAP_LIST as u8;
        config[0x34] = chain.first().map_or(0, |c| c.0 as u8);
        for &(offset, id, next) in chain {
            config[usize::from(offset)] = id;
            config[usize::from(offset) + 1] = next;
        }
        config
    }

    #[test]
    fn walks_standard_chain_in_pointer_order() {
        let config = with_caps(&[(0x60, 0x11, 0x40), (0x40, 0x05, 0)]);
        let caps = standard_capabilities(&config).unwrap();
        assert_eq!(
            caps.iter().map(|c| (c.offset, c.id)).collect::<Vec<_>>(),
            vec![(0x60, 0x11), (0x40, 0x05)]
        );
    }

    #[test]
    fn detects_cycle_and_bad_pointer() {
        let config = with_caps(&[(0x40, 0x05, 0x50), (0x50, 0x11, 0x40)]);
        assert_eq!(standard_capabilities(&config), Err(WalkError::Cycle(0x40)));
        let config = with_caps(&[(0x40, 0x05, 0x10)]);
        assert_eq!(
            standard_capabilities(&config),
            Err(WalkError::BadPointer {
                at: 0x40,
                next: 0x10
            })
        );
    }

    #[test]
    fn walks_extended_chain() {
        let mut config = vec![0u8; 4096];
        config[0x100..0x104].copy_from_slice(&0x1401_0001u32.to_le_bytes());
        config[0x140..0x144].copy_from_slice(&0x0001_001bu32.to_le_bytes());
        let caps = extended_capabilities(&config).unwrap();
        assert_eq!(caps.len(), 2);
        assert_eq!(
            (caps[1].id, caps[1].offset, caps[1].version),
            (0x1b, 0x140, 1)
        );
    }
}
