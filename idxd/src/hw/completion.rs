//! The 32-byte DSA completion record.
//!
//! Layout: byte 0 status (bit 7 set on a page fault: the fault was on a write), byte 1 result
//! (COMPARE*: 0 equal, 1 different), bytes 4-7 bytes completed (descriptors completed for
//! BATCH), 8-15 fault address, 16-23 CRC value (CRC_GEN, COPY_CRC).

/// Bytes in a completion record; its address must be aligned to it.
pub const COMPLETION_SIZE: usize = 32;

/// Completion status codes.
pub mod status {
    /// Success.
    pub const SUCCESS: u8 = 0x01;
    /// Success, but the checked result differs from the expected one.
    pub const SUCCESS_PRED: u8 = 0x02;
    /// Page fault: bytes completed and fault address tell how far it got.
    pub const PAGE_FAULT: u8 = 0x03;
    /// A batch with at least one failed descriptor.
    pub const BATCH_FAIL: u8 = 0x05;
    /// Page fault reading a batch's descriptor list.
    pub const BATCH_PAGE_FAULT: u8 = 0x06;
    /// Unsupported opcode (or a batch inside a batch).
    pub const BAD_OPCODE: u8 = 0x10;
    /// Transfer size zero or beyond the maximum.
    pub const XFER_ERANGE: u8 = 0x13;
    /// Batch descriptor count out of range.
    pub const DESC_CNT_ERANGE: u8 = 0x14;
    /// DUALCAST destinations differ in address bits 11:0.
    pub const DCAST_ERR: u8 = 0x17;
    /// Batch descriptor list not 64-byte aligned.
    pub const DESCLIST_ALIGN: u8 = 0x18;
    /// Completion record address could not be written.
    pub const CRA_XLAT: u8 = 0x1a;
    /// Completion record address not 32-byte aligned.
    pub const CRA_ALIGN: u8 = 0x1b;
    /// Status bit 7 on a page fault: the faulting access was a write.
    pub const FAULT_WRITE: u8 = 0x80;
}

/// A completion record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Completion {
    /// Status (with [`status::FAULT_WRITE`] on a write fault).
    pub status: u8,
    /// Operation result.
    pub result: u8,
    /// Bytes (or batch descriptors) completed.
    pub bytes_completed: u32,
    /// Faulting address.
    pub fault_addr: u64,
    /// CRC value.
    pub crc: u64,
}

impl Completion {
    /// A record with only a status.
    pub fn with_status(status: u8) -> Self {
        Self {
            status,
            ..Self::default()
        }
    }

    /// The status without the write-fault bit.
    pub fn code(&self) -> u8 {
        self.status & !status::FAULT_WRITE
    }

    /// Encodes the record as the device writes it.
    pub fn encode(&self) -> [u8; COMPLETION_SIZE] {
        let mut b = [0u8; COMPLETION_SIZE];
        b[0] = self.status;
        b[1] = self.result;
        b[4..8].copy_from_slice(&self.bytes_completed.to_le_bytes());
        b[8..16].copy_from_slice(&self.fault_addr.to_le_bytes());
        b[16..24].copy_from_slice(&self.crc.to_le_bytes());
        b
    }

    /// Decodes a record (what a driver reads back).
    pub fn decode(b: &[u8; COMPLETION_SIZE]) -> Self {
        let mut bytes = [0u8; 4];
        bytes.copy_from_slice(&b[4..8]);
        let mut fault = [0u8; 8];
        fault.copy_from_slice(&b[8..16]);
        let mut crc = [0u8; 8];
        crc.copy_from_slice(&b[16..24]);
        Self {
            status: b[0],
            result: b[1],
            bytes_completed: u32::from_le_bytes(bytes),
            fault_addr: u64::from_le_bytes(fault),
            crc: u64::from_le_bytes(crc),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_layout() {
        let c = Completion {
            status: status::PAGE_FAULT | status::FAULT_WRITE,
            result: 1,
            bytes_completed: 0x1234,
            fault_addr: 0xabcd_0000,
            crc: 0xe306_9283,
        };
        let b = c.encode();
        assert_eq!((b[0], b[1]), (0x83, 1));
        assert_eq!(&b[4..6], &[0x34, 0x12]);
        assert_eq!(&b[16..20], &[0x83, 0x92, 0x06, 0xe3]);
        assert_eq!(Completion::decode(&b), c);
        assert_eq!(c.code(), status::PAGE_FAULT);
    }
}
