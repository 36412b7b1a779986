//! The 64-byte DSA work descriptor.
//!
//! Layout: bytes 0-3 PASID (bits 0-19) and privilege (bit 31); bytes 4-7 flags (bits 0-23)
//! and opcode (bits 24-31); 8 completion record address; 16 source address (the pattern for
//! FILL, the descriptor list for BATCH); 24 destination address (the second source for
//! COMPARE, the pattern for COMPARE_PATTERN); 32 transfer size (descriptor count for BATCH);
//! 36 interrupt handle; 40 operation-specific: expected result (COMPARE*), second destination
//! (DUALCAST), CRC seed (CRC_GEN, COPY_CRC).

/// Bytes in a descriptor.
pub const DESCRIPTOR_SIZE: usize = 64;

/// Operation codes.
pub mod op {
    /// No operation.
    pub const NOP: u8 = 0x00;
    /// A list of descriptors.
    pub const BATCH: u8 = 0x01;
    /// Completes once earlier descriptors have.
    pub const DRAIN: u8 = 0x02;
    /// Memory copy (overlap allowed).
    pub const MEMMOVE: u8 = 0x03;
    /// Fill with an 8-byte pattern.
    pub const FILL: u8 = 0x04;
    /// Compare two buffers.
    pub const COMPARE: u8 = 0x05;
    /// Compare a buffer with an 8-byte pattern.
    pub const COMPARE_PATTERN: u8 = 0x06;
    /// Copy to two destinations.
    pub const DUALCAST: u8 = 0x09;
    /// CRC-32C of a buffer.
    pub const CRC_GEN: u8 = 0x10;
    /// Copy and CRC-32C.
    pub const COPY_CRC: u8 = 0x11;
    /// Flush caches for a range.
    pub const CACHE_FLUSH: u8 = 0x20;
    /// Every opcode the model executes.
    pub const SUPPORTED: [u8; 11] = [
        NOP,
        BATCH,
        DRAIN,
        MEMMOVE,
        FILL,
        COMPARE,
        COMPARE_PATTERN,
        DUALCAST,
        CRC_GEN,
        COPY_CRC,
        CACHE_FLUSH,
    ];
}

/// Descriptor flags (bits 0-23 of bytes 4-7).
pub mod flag {
    /// Fence: within a batch, wait for (and stop after a failure of) earlier descriptors.
    pub const FENCE: u32 = 1 << 0;
    /// Completion record address valid.
    pub const CRAV: u32 = 1 << 2;
    /// Request a completion record.
    pub const RCR: u32 = 1 << 3;
    /// Request a completion interrupt.
    pub const RCI: u32 = 1 << 4;
    /// COMPARE*: check the result against the expected result.
    pub const CHECK_RESULT: u32 = 1 << 7;
}

/// A decoded descriptor. Fields are raw; the engine validates them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Descriptor {
    /// PASID field (the model binds address spaces per WQ and ignores it).
    pub pasid: u32,
    /// Flags (24 bits).
    pub flags: u32,
    /// Operation code.
    pub opcode: u8,
    /// Completion record address.
    pub completion_addr: u64,
    /// Source address, FILL pattern or BATCH descriptor list.
    pub src: u64,
    /// Destination address, COMPARE second source or COMPARE_PATTERN pattern.
    pub dst: u64,
    /// Transfer size, or BATCH descriptor count.
    pub size: u32,
    /// Interrupt handle.
    pub int_handle: u16,
    /// Bytes 40-47: expected result, second destination or CRC seed.
    pub extra: u64,
}

fn u32_at(bytes: &[u8; DESCRIPTOR_SIZE], at: usize) -> u32 {
    let mut v = [0u8; 4];
    v.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(v)
}

fn u64_at(bytes: &[u8; DESCRIPTOR_SIZE], at: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(v)
}

impl Descriptor {
    /// Decodes 64 bytes.
    pub fn decode(bytes: &[u8; DESCRIPTOR_SIZE]) -> Self {
        let word1 = u32_at(bytes, 4);
        Self {
            pasid: u32_at(bytes, 0) & 0xf_ffff,
            flags: word1 & 0xff_ffff,
            opcode: (word1 >> 24) as u8,
            completion_addr: u64_at(bytes, 8),
            src: u64_at(bytes, 16),
            dst: u64_at(bytes, 24),
            size: u32_at(bytes, 32),
            int_handle: u16::from_le_bytes([bytes[36], bytes[37]]),
            extra: u64_at(bytes, 40),
        }
    }

    /// Encodes into 64 bytes (what a driver writes to a portal).
    pub fn encode(&self) -> [u8; DESCRIPTOR_SIZE] {
        let mut b = [0u8; DESCRIPTOR_SIZE];
        b[0..4].copy_from_slice(&(self.pasid & 0xf_ffff).to_le_bytes());
        let word1 = (self.flags & 0xff_ffff) | (u32::from(self.opcode) << 24);
        b[4..8].copy_from_slice(&word1.to_le_bytes());
        b[8..16].copy_from_slice(&self.completion_addr.to_le_bytes());
        b[16..24].copy_from_slice(&self.src.to_le_bytes());
        b[24..32].copy_from_slice(&self.dst.to_le_bytes());
        b[32..36].copy_from_slice(&self.size.to_le_bytes());
        b[36..38].copy_from_slice(&self.int_handle.to_le_bytes());
        b[40..48].copy_from_slice(&self.extra.to_le_bytes());
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_decode_round_trip_and_field_offsets() {
        let d = Descriptor {
            pasid: 5,
            flags: flag::CRAV | flag::RCR,
            opcode: op::MEMMOVE,
            completion_addr: 0x1000,
            src: 0x2000,
            dst: 0x3000,
            size: 64,
            int_handle: 1,
            extra: 0xdead_beef,
        };
        let b = d.encode();
        assert_eq!(b[7], op::MEMMOVE);
        assert_eq!(b[4], 0x0c);
        assert_eq!(&b[16..18], &[0x00, 0x20]);
        assert_eq!(Descriptor::decode(&b), d);
    }
}
