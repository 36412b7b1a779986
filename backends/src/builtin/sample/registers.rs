//! Register map of the sample function's BAR 0 (32-bit registers, little endian).

/// Identification (read-only): `VFIO` in ASCII.
pub const ID: u64 = 0x00;
/// The value of [`ID`].
pub const ID_VALUE: u32 = 0x4f49_4656;
/// Scratch register: reads back what was written; kept across client reconnects, cleared by
/// a function reset.
pub const SCRATCH: u64 = 0x04;
/// Interrupt status (read), write 1 to clear: bit 0 = DMA done, bit 1 = raised by [`RAISE`].
pub const INT_STATUS: u64 = 0x08;
/// Interrupt status bit: a DMA transfer with [`DMA_CMD_IRQ`] completed.
pub const INT_DMA_DONE: u32 = 1 << 0;
/// Interrupt status bit: software raised an interrupt through [`RAISE`].
pub const INT_RAISED: u32 = 1 << 1;
/// Writing N raises MSI-X vector N (MSI-X on), else MSI (on), else INTx.
pub const RAISE: u64 = 0x0c;
/// DMA source address, low 32 bits.
pub const DMA_SRC_LO: u64 = 0x10;
/// DMA source address, high 32 bits.
pub const DMA_SRC_HI: u64 = 0x14;
/// DMA destination address, low 32 bits.
pub const DMA_DST_LO: u64 = 0x18;
/// DMA destination address, high 32 bits.
pub const DMA_DST_HI: u64 = 0x1c;
/// DMA length in bytes (at most [`DMA_MAX_LEN`]).
pub const DMA_LEN: u64 = 0x20;
/// DMA command: write [`DMA_CMD_START`] (and [`DMA_CMD_IRQ`]) to copy.
pub const DMA_CMD: u64 = 0x24;
/// DMA command bit: start the copy.
pub const DMA_CMD_START: u32 = 1 << 0;
/// DMA command bit: raise an interrupt (vector 0) when done.
pub const DMA_CMD_IRQ: u32 = 1 << 1;
/// Completed DMA transfers (read-only).
pub const DMA_COUNT: u64 = 0x28;
/// Status of the last transfer (read-only): 0 ok, 1 length too large, 2 read fault, 3 write
/// fault, 4 bus mastering disabled in COMMAND, [`DMA_STATUS_STOPPED`], [`DMA_STATUS_BUSY`].
pub const DMA_STATUS: u64 = 0x2c;
/// [`DMA_STATUS`]: the transfer started and has not finished (a driver polls until
/// [`DMA_COUNT`] goes up or the status changes; a START meanwhile is ignored).
pub const DMA_STATUS_BUSY: u32 = 6;
/// [`DMA_STATUS`]: the command came while the function was stopped for migration; nothing
/// was copied.
pub const DMA_STATUS_STOPPED: u32 = 5;
/// Largest DMA transfer.
pub const DMA_MAX_LEN: u32 = 1 << 20;
/// Wrapping sum of the first 1024 little-endian 32-bit words of the shared-memory BAR 2
/// (read-only): shows the device sees what was written through an mmap.
pub const SHM_SUM: u64 = 0x30;
/// Non-volatile register: survives function resets and client reconnects (models a device's
/// EEPROM).
pub const NVRAM: u64 = 0x34;
/// Size of the shared-memory BAR 2.
pub const SHM_SIZE: usize = 64 << 10;
