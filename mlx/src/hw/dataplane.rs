//! A VF's data plane: an echo ring in guest memory. The driver writes 32-byte entries
//! `{le64 value, le64 seq, le64 accum, le64 done}` with `value` set, then rings the doorbell
//! (PRODUCER, a free-running entry count). The VF takes the entries in order; for each it
//! counts a sequence number, folds the value into a running accumulator ([`mix`]) and writes
//! back `seq`, `accum` and `done = 1`. So the state mid-traffic (consumer index, sequence,
//! accumulator, doorbells rung but not yet served) means something, and a driver can check
//! after a move that nothing was lost or served twice.
//!
//! Registers (little-endian, in VF BAR 0's doorbell page, offsets from [`REGS`]): RING_BASE
//! (le64, 0x0), RING_SIZE (entries, a power of two up to [`MAX_RING`], 0x8), ENABLE (bit 0,
//! 0xc), PRODUCER (0x10), CONSUMER (read-only, 0x14), ERROR (read-only, 0x18), CTX_PAGES
//! (0x20) and CTX_SEED (0x24): the size in 4 KiB pages and the seed of the function's device
//! context memory (see `image`), TIMESTAMP (read-only le64, 0x28; counts while the
//! timestamp feature is on).

use vfio_variant::backend::DmaAccess;

/// Offset of the data-plane registers in VF BAR 0.
pub const REGS: u64 = 0x1000;
/// Register: ring base IOVA (le64).
pub const RING_BASE: u64 = 0x0;
/// Register: ring size in entries.
pub const RING_SIZE: u64 = 0x8;
/// Register: bit 0 enables the ring.
pub const ENABLE: u64 = 0xc;
/// Register: the doorbell (entries produced, free-running).
pub const PRODUCER: u64 = 0x10;
/// Register: entries served (free-running, read-only).
pub const CONSUMER: u64 = 0x14;
/// Register: non-zero after a fault (read-only).
pub const ERROR: u64 = 0x18;
/// Register: device context memory, in 4 KiB pages.
pub const CTX_PAGES: u64 = 0x20;
/// Register: device context seed.
pub const CTX_SEED: u64 = 0x24;
/// Register: hardware timestamp (le64, read-only).
pub const TIMESTAMP: u64 = 0x28;
/// Bytes of one ring entry.
pub const ENTRY_BYTES: u64 = 32;
/// Largest ring.
pub const MAX_RING: u32 = 4096;
/// ERROR: a DMA access failed.
pub const ERROR_DMA: u32 = 1;
/// ERROR: the doorbell claimed more entries than the ring has.
pub const ERROR_OVERRUN: u32 = 2;
/// ERROR: the ring was enabled with a bad size.
pub const ERROR_RING_SIZE: u32 = 4;

/// Folds `value`, the `seq`-th entry, into `accum`.
pub fn mix(accum: u64, seq: u64, value: u64) -> u64 {
    (accum ^ value ^ seq.rotate_left(32)).wrapping_mul(0x0000_0100_0000_01b3)
}

/// The data plane's registers and running state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DataPlane {
    /// Ring base IOVA.
    pub base: u64,
    /// Ring size in entries.
    pub size: u32,
    /// Ring enabled.
    pub enabled: bool,
    /// Doorbell: entries produced.
    pub producer: u32,
    /// Entries served.
    pub consumer: u32,
    /// Last sequence number given.
    pub seq: u64,
    /// Running accumulator.
    pub accum: u64,
    /// Fault bits.
    pub error: u32,
    /// Device context memory, 4 KiB pages.
    pub ctx_pages: u32,
    /// Device context seed.
    pub ctx_seed: u32,
}

impl DataPlane {
    /// Reads a 4-byte register (RING_BASE and TIMESTAMP as two halves); `timestamp` is the
    /// hardware clock when the feature is on.
    pub fn read(&self, offset: u64, timestamp: Option<u64>) -> u32 {
        let clock = timestamp.unwrap_or(0);
        match offset {
            RING_BASE => self.base as u32,
            o if o == RING_BASE + 4 => (self.base >> 32) as u32,
            RING_SIZE => self.size,
            ENABLE => u32::from(self.enabled),
            PRODUCER => self.producer,
            CONSUMER => self.consumer,
            ERROR => self.error,
            CTX_PAGES => self.ctx_pages,
            CTX_SEED => self.ctx_seed,
            TIMESTAMP => clock as u32,
            o if o == TIMESTAMP + 4 => (clock >> 32) as u32,
            _ => 0,
        }
    }

    /// Writes a 4-byte register; returns whether the doorbell was rung. Writes while the
    /// ring is enabled do not move it (RING_BASE, RING_SIZE) and are dropped.
    pub fn write(&mut self, offset: u64, value: u32) -> bool {
        match offset {
            RING_BASE if !self.enabled => self.base = (self.base & !0xffff_ffff) | u64::from(value),
            o if o == RING_BASE + 4 && !self.enabled => {
                self.base = (self.base & 0xffff_ffff) | (u64::from(value) << 32)
            }
            RING_SIZE if !self.enabled => self.size = value,
            ENABLE => {
                let enable = value & 1 != 0;
                if enable && (!self.size.is_power_of_two() || self.size > MAX_RING) {
                    self.error |= ERROR_RING_SIZE;
                    return false;
                }
                if !enable {
                    *self = Self {
                        ctx_pages: self.ctx_pages,
                        ctx_seed: self.ctx_seed,
                        ..Self::default()
                    };
                }
                self.enabled = enable;
            }
            PRODUCER => {
                if value.wrapping_sub(self.consumer) > self.size {
                    self.error |= ERROR_OVERRUN;
                    return false;
                }
                self.producer = value;
                return true;
            }
            CTX_PAGES => self.ctx_pages = value,
            CTX_SEED => self.ctx_seed = value,
            _ => {}
        }
        false
    }

    /// Entries produced but not served.
    pub fn pending(&self) -> u32 {
        self.producer.wrapping_sub(self.consumer)
    }

    /// Serves every pending entry; stops at the first DMA fault (ERROR_DMA). Returns the
    /// entries served.
    pub fn process(&mut self, mem: &dyn DmaAccess) -> u32 {
        if !self.enabled || self.error != 0 {
            return 0;
        }
        let mut served = 0;
        while self.pending() != 0 {
            let index = u64::from(self.consumer & (self.size - 1));
            let Some(entry) = self.base.checked_add(index * ENTRY_BYTES) else {
                self.error |= ERROR_DMA;
                break;
            };
            let mut value = [0u8; 8];
            if mem.read(entry, &mut value).is_err() {
                self.error |= ERROR_DMA;
                break;
            }
            let seq = self.seq + 1;
            let accum = mix(self.accum, seq, u64::from_le_bytes(value));
            let mut answer = [0u8; 24];
            answer[..8].copy_from_slice(&seq.to_le_bytes());
            answer[8..16].copy_from_slice(&accum.to_le_bytes());
            answer[16..].copy_from_slice(&1u64.to_le_bytes());
            if mem.write(entry + 8, &answer).is_err() {
                self.error |= ERROR_DMA;
                break;
            }
            self.seq = seq;
            self.accum = accum;
            self.consumer = self.consumer.wrapping_add(1);
            served += 1;
        }
        served
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vfio_variant::backend::emulated::HostMemory;

    #[test]
    fn entries_are_served_in_order_with_a_running_sequence_and_accumulator() {
        let mem = HostMemory::new(0x4000);
        let mut plane = DataPlane::default();
        plane.write(RING_BASE, 0x1000);
        plane.write(RING_SIZE, 4);
        plane.write(ENABLE, 1);
        for i in 0..6u64 {
            let slot = 0x1000 + (i % 4) * ENTRY_BYTES;
            mem.write(slot, &(100 + i).to_le_bytes()).unwrap();
            assert!(plane.write(PRODUCER, (i + 1) as u32));
            assert_eq!(plane.process(&mem), 1);
        }
        let mut accum = 0;
        for seq in 1..=6u64 {
            accum = mix(accum, seq, 99 + seq);
        }
        assert_eq!((plane.seq, plane.accum, plane.consumer), (6, accum, 6));
        let mut entry = [0u8; 32];
        mem.read(0x1000 + ENTRY_BYTES, &mut entry).unwrap();
        assert_eq!(u64::from_le_bytes(entry[8..16].try_into().unwrap()), 6);
    }

    #[test]
    fn faults_are_flagged_not_panicked() {
        let mem = HostMemory::new(0x1000);
        let mut plane = DataPlane::default();
        plane.write(RING_SIZE, 3);
        plane.write(ENABLE, 1);
        assert_eq!(plane.error, ERROR_RING_SIZE);
        let mut plane = DataPlane::default();
        plane.write(RING_BASE, 0xffff_ffff);
        plane.write(RING_BASE + 4, 0xffff_ffff);
        plane.write(RING_SIZE, 2);
        plane.write(ENABLE, 1);
        assert!(!plane.write(PRODUCER, 3));
        assert_eq!(plane.error, ERROR_OVERRUN);
        plane.error = 0;
        plane.write(PRODUCER, 2);
        assert_eq!(plane.process(&mem), 0);
        assert_eq!(plane.error, ERROR_DMA);
    }
}
