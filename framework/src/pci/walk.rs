//! Walks the capability chains of a config space given as raw bytes (a sysfs `config` file,
//! a physical function's config, or the compiled virtual one).

use super::cap::Chain;
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

/// A capability header as the chain states it.
struct Header {
    id: u16,
    version: u8,
    next: u16,
}

/// Where `chain` starts: the offset holding the first pointer and that pointer; `None` when the
/// config space has no such chain.
fn head(config: &[u8], chain: Chain) -> Option<(u16, u16)> {
    match chain {
        Chain::Standard => {
            let status =
                u16::from_le_bytes([byte(config, regs::STATUS), byte(config, regs::STATUS + 1)]);
            (status & regs::STATUS_CAP_LIST != 0).then(|| {
                let at = regs::CAPABILITIES_POINTER;
                (at, pointer(chain, byte(config, at).into()))
            })
        }
        Chain::Extended => (config.len() >= regs::EXTENDED_CONFIG_SPACE_SIZE)
            .then_some((regs::EXTENDED_CAPS_START, regs::EXTENDED_CAPS_START)),
    }
}

/// A next pointer as the chain reads it: the low two bits of a standard pointer are reserved
/// (PCI 3.0 6.7; Linux masks them too), an extended pointer is taken whole.
fn pointer(chain: Chain, raw: u16) -> u16 {
    match chain {
        Chain::Standard => raw & !3,
        Chain::Extended => raw,
    }
}

/// The header at `at`; `None` for an extended header of all zeros or all ones (Linux: no
/// capability there).
fn header(config: &[u8], chain: Chain, at: u16) -> Option<Header> {
    match chain {
        Chain::Standard => Some(Header {
            id: byte(config, at).into(),
            version: 0,
            next: pointer(chain, byte(config, at + 1).into()),
        }),
        Chain::Extended => {
            let header = dword(config, at);
            (header != 0 && header != u32::MAX).then_some(Header {
                id: (header & 0xffff) as u16,
                version: ((header >> 16) & 0xf) as u8,
                next: pointer(chain, (header >> 20) as u16),
            })
        }
    }
}

/// The capabilities of `chain` in chain order. Empty when the config space has no such chain:
/// STATUS.CAP_LIST clear (standard), a 256-byte config space or a null header at 0x100
/// (extended).
pub fn capabilities(config: &[u8], chain: Chain) -> Result<Vec<FoundCapability>, WalkError> {
    let Some((mut at, mut next)) = head(config, chain) else {
        return Ok(Vec::new());
    };
    let area = chain.area();
    let mut found: Vec<FoundCapability> = Vec::new();
    while next != 0 {
        if !area.contains(&next) || !next.is_multiple_of(4) || next > area.end - 4 {
            return Err(WalkError::BadPointer { at, next });
        }
        if found.iter().any(|c| c.offset == next) {
            return Err(WalkError::Cycle(next));
        }
        let Some(h) = header(config, chain, next) else {
            break;
        };
        found.push(FoundCapability {
            id: h.id,
            version: h.version,
            offset: next,
        });
        at = next;
        next = h.next;
    }
    Ok(found)
}

/// The standard capabilities in chain order ([`capabilities`] of the standard chain).
pub fn standard_capabilities(config: &[u8]) -> Result<Vec<FoundCapability>, WalkError> {
    capabilities(config, Chain::Standard)
}

/// The extended capabilities in chain order ([`capabilities`] of the extended chain).
pub fn extended_capabilities(config: &[u8]) -> Result<Vec<FoundCapability>, WalkError> {
    capabilities(config, Chain::Extended)
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

    #[test]
    fn one_walker_for_both_chains() {
        // A cycle in the extended chain, and a pointer below 0x100.
        let mut config = vec![0u8; 4096];
        config[0x100..0x104].copy_from_slice(&0x1401_0001u32.to_le_bytes());
        config[0x140..0x144].copy_from_slice(&0x1001_001bu32.to_le_bytes());
        assert_eq!(
            capabilities(&config, Chain::Extended),
            Err(WalkError::Cycle(0x100))
        );
        config[0x140..0x144].copy_from_slice(&0x0801_001bu32.to_le_bytes());
        assert_eq!(
            capabilities(&config, Chain::Extended),
            Err(WalkError::BadPointer {
                at: 0x140,
                next: 0x80
            })
        );
        // An unaligned extended pointer is refused, not masked.
        config[0x140..0x144].copy_from_slice(&0x1421_001bu32.to_le_bytes());
        assert_eq!(
            capabilities(&config, Chain::Extended),
            Err(WalkError::BadPointer {
                at: 0x140,
                next: 0x142
            })
        );
        // A null header ends the chain; at 0x100 there is none.
        config[0x140..0x144].copy_from_slice(&0x1801_001bu32.to_le_bytes());
        assert_eq!(capabilities(&config, Chain::Extended).unwrap().len(), 2);
        config[0x100..0x104].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(capabilities(&config, Chain::Extended), Ok(Vec::new()));
        // No extended chain in a conventional config space, no standard one without CAP_LIST.
        assert_eq!(
            capabilities(&config[..256], Chain::Extended),
            Ok(Vec::new())
        );
        let mut config = with_caps(&[(0x40, 0x05, 0)]);
        assert_eq!(capabilities(&config, Chain::Standard).unwrap().len(), 1);
        config[6] = 0;
        assert_eq!(capabilities(&config, Chain::Standard), Ok(Vec::new()));
        // The standard pointer's reserved low bits are masked; the header pointer is checked.
        let mut config = with_caps(&[(0x40, 0x05, 0x53), (0x50, 0x11, 0)]);
        assert_eq!(
            capabilities(&config, Chain::Standard)
                .unwrap()
                .iter()
                .map(|c| c.offset)
                .collect::<Vec<_>>(),
            vec![0x40, 0x50]
        );
        config[0x34] = 0x20;
        assert_eq!(
            capabilities(&config, Chain::Standard),
            Err(WalkError::BadPointer {
                at: 0x34,
                next: 0x20
            })
        );
    }
}
