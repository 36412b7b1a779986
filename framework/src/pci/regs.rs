//! Type 0 configuration header: register offsets and bits (PCI Local Bus 3.0, PCIe 6.0 ch. 7).

/// Size of conventional PCI config space.
pub const CONFIG_SPACE_SIZE: usize = 256;
/// Size of PCI Express extended config space.
pub const EXTENDED_CONFIG_SPACE_SIZE: usize = 4096;
/// Offset of the first extended capability.
pub const EXTENDED_CAPS_START: u16 = 0x100;

/// Vendor ID (16 bits).
pub const VENDOR_ID: u16 = 0x00;
/// Device ID (16 bits).
pub const DEVICE_ID: u16 = 0x02;
/// Command register (16 bits).
pub const COMMAND: u16 = 0x04;
/// Status register (16 bits).
pub const STATUS: u16 = 0x06;
/// Revision ID (8 bits).
pub const REVISION_ID: u16 = 0x08;
/// Class code: programming interface (8 bits); sub-class at 0x0a, base class at 0x0b.
pub const CLASS_PROG_IF: u16 = 0x09;
/// Cache line size (8 bits).
pub const CACHE_LINE_SIZE: u16 = 0x0c;
/// Latency timer (8 bits).
pub const LATENCY_TIMER: u16 = 0x0d;
/// Header type (8 bits); bit 7 = multi-function.
pub const HEADER_TYPE: u16 = 0x0e;
/// Built-in self test (8 bits).
pub const BIST: u16 = 0x0f;
/// Base address register 0; BAR n is at `BAR0 + 4 * n`.
pub const BAR0: u16 = 0x10;
/// Cardbus CIS pointer (32 bits).
pub const CARDBUS_CIS: u16 = 0x28;
/// Subsystem vendor ID (16 bits).
pub const SUBSYSTEM_VENDOR_ID: u16 = 0x2c;
/// Subsystem ID (16 bits).
pub const SUBSYSTEM_ID: u16 = 0x2e;
/// Expansion ROM base address (32 bits).
pub const ROM_ADDRESS: u16 = 0x30;
/// Capabilities pointer (8 bits).
pub const CAPABILITIES_POINTER: u16 = 0x34;
/// Interrupt line (8 bits).
pub const INTERRUPT_LINE: u16 = 0x3c;
/// Interrupt pin (8 bits): 0 none, 1..4 INTA..INTD.
pub const INTERRUPT_PIN: u16 = 0x3d;
/// Minimum grant (8 bits).
pub const MIN_GNT: u16 = 0x3e;
/// Maximum latency (8 bits).
pub const MAX_LAT: u16 = 0x3f;
/// End of the type 0 header; standard capabilities live in `HEADER_END..0x100`.
pub const HEADER_END: u16 = 0x40;

/// Number of BARs in a type 0 header.
pub const BAR_COUNT: usize = 6;

/// Command register: I/O space enable.
pub const COMMAND_IO: u16 = 1 << 0;
/// Command register: memory space enable.
pub const COMMAND_MEMORY: u16 = 1 << 1;
/// Command register: bus master enable.
pub const COMMAND_BUS_MASTER: u16 = 1 << 2;
/// Command register: special cycles.
pub const COMMAND_SPECIAL: u16 = 1 << 3;
/// Command register: memory write and invalidate.
pub const COMMAND_MWI: u16 = 1 << 4;
/// Command register: VGA palette snoop.
pub const COMMAND_VGA_SNOOP: u16 = 1 << 5;
/// Command register: parity error response.
pub const COMMAND_PARITY: u16 = 1 << 6;
/// Command register: SERR# enable.
pub const COMMAND_SERR: u16 = 1 << 8;
/// Command register: fast back-to-back enable.
pub const COMMAND_FAST_B2B: u16 = 1 << 9;
/// Command register: INTx emulation disable.
pub const COMMAND_INTX_DISABLE: u16 = 1 << 10;

/// Status register: INTx status (read-only, reflects a pending INTx).
pub const STATUS_INTERRUPT: u16 = 1 << 3;
/// Status register: capabilities list present.
pub const STATUS_CAP_LIST: u16 = 1 << 4;
/// Status register: 66 MHz capable.
pub const STATUS_66MHZ: u16 = 1 << 5;
/// Status register: fast back-to-back capable.
pub const STATUS_FAST_B2B: u16 = 1 << 7;
/// Status register: master data parity error (RW1C).
pub const STATUS_MASTER_PARITY: u16 = 1 << 8;
/// Status register: signaled target abort (RW1C).
pub const STATUS_SIG_TARGET_ABORT: u16 = 1 << 11;
/// Status register: received target abort (RW1C).
pub const STATUS_REC_TARGET_ABORT: u16 = 1 << 12;
/// Status register: received master abort (RW1C).
pub const STATUS_REC_MASTER_ABORT: u16 = 1 << 13;
/// Status register: signaled system error (RW1C).
pub const STATUS_SIG_SYSTEM_ERROR: u16 = 1 << 14;
/// Status register: detected parity error (RW1C).
pub const STATUS_DETECTED_PARITY: u16 = 1 << 15;
/// All error bits of the status register; they are write-1-to-clear.
pub const STATUS_ERROR_BITS: u16 = STATUS_MASTER_PARITY
    | STATUS_SIG_TARGET_ABORT
    | STATUS_REC_TARGET_ABORT
    | STATUS_REC_MASTER_ABORT
    | STATUS_SIG_SYSTEM_ERROR
    | STATUS_DETECTED_PARITY;

/// BAR bit 0: I/O space indicator.
pub const BAR_IO: u32 = 1 << 0;
/// BAR bits 2:1 = 0b10: 64-bit memory BAR.
pub const BAR_MEM_64: u32 = 0b10 << 1;
/// BAR bit 3: prefetchable memory.
pub const BAR_PREFETCH: u32 = 1 << 3;
/// Expansion ROM enable bit.
pub const ROM_ENABLE: u32 = 1 << 0;
/// Address bits of the expansion ROM register.
pub const ROM_ADDRESS_MASK: u32 = 0xffff_f800;

/// Header type: multi-function bit.
pub const HEADER_TYPE_MULTIFUNCTION: u8 = 0x80;

/// Offset of BAR register `index` (0..=5).
pub const fn bar_offset(index: usize) -> u16 {
    BAR0 + 4 * index as u16
}
