//! DSA register offsets, fields, commands and status codes (BAR0, little endian).
//!
//! Facts from the DSA architecture specification as Linux's `drivers/dma/idxd/registers.h`
//! states them; names follow that header where it has one.

/// Version register (read-only): 1.0.
pub const VERSION: u64 = 0x00;
/// The value of [`VERSION`].
pub const VERSION_VALUE: u32 = 0x100;
/// General capabilities (64-bit).
pub const GENCAP: u64 = 0x10;
/// GENCAP: overlapping copies are supported.
pub const GENCAP_OVERLAP_COPY: u64 = 1 << 1;
/// GENCAP: the command capabilities register is present.
pub const GENCAP_CMD_CAP: u64 = 1 << 4;
/// GENCAP: shift of the maximum transfer size (bits 16-20).
pub const GENCAP_MAX_XFER_SHIFT: u32 = 16;
/// GENCAP: shift of the maximum batch size (bits 21-24).
pub const GENCAP_MAX_BATCH_SHIFT: u32 = 21;
/// GENCAP: the configuration registers are writable.
pub const GENCAP_CONFIG_EN: u64 = 1 << 31;
/// Work queue capabilities (64-bit).
pub const WQCAP: u64 = 0x20;
/// WQCAP: number of WQs (bits 16-23).
pub const WQCAP_NUM_WQS_SHIFT: u32 = 16;
/// WQCAP: shared mode supported.
pub const WQCAP_SHARED: u64 = 1 << 48;
/// WQCAP: dedicated mode supported.
pub const WQCAP_DEDICATED: u64 = 1 << 49;
/// WQCAP: WQ priority supported.
pub const WQCAP_PRIORITY: u64 = 1 << 51;
/// Group capabilities (64-bit): total read buffers (bits 0-7), number of groups (bits 8-15).
pub const GRPCAP: u64 = 0x30;
/// GRPCAP: number of groups field shift.
pub const GRPCAP_NUM_GROUPS_SHIFT: u32 = 8;
/// Engine capabilities (64-bit): number of engines (bits 0-7).
pub const ENGCAP: u64 = 0x38;
/// Operation capabilities: 256 bits, one per opcode.
pub const OPCAP: u64 = 0x40;
/// Offsets table: 16-bit entries in units of [`TABLE_MULT`]: GRPCFG, WQCFG, MSI-X permissions.
pub const OFFSETS: u64 = 0x60;
/// Unit of the offsets table.
pub const TABLE_MULT: u64 = 0x100;
/// General configuration (writable only while the device is disabled).
pub const GENCFG: u64 = 0x80;
/// General control: bit 0 software error interrupt enable, bit 1 halt interrupt enable.
pub const GENCTRL: u64 = 0x88;
/// GENCTRL: raise an interrupt on a software error.
pub const GENCTRL_SOFTERR_INT_EN: u32 = 1 << 0;
/// General status: device state in bits 0-1.
pub const GENSTS: u64 = 0x90;
/// GENSTS state: disabled.
pub const GENSTS_DISABLED: u32 = 0;
/// GENSTS state: enabled.
pub const GENSTS_ENABLED: u32 = 1;
/// Interrupt cause (write 1 to clear).
pub const INTCAUSE: u64 = 0x98;
/// INTCAUSE: software error.
pub const INTC_ERR: u32 = 1 << 0;
/// INTCAUSE: command completion.
pub const INTC_CMD: u32 = 1 << 1;
/// Command register: operand bits 0-19, command bits 20-24, interrupt request bit 31.
pub const CMD: u64 = 0xa0;
/// CMD: command field shift.
pub const CMD_SHIFT: u32 = 20;
/// CMD: request an interrupt on completion.
pub const CMD_INT_REQ: u32 = 1 << 31;
/// Command status: error bits 0-7, result bits 8-15 (shifted), active bit 31.
pub const CMDSTS: u64 = 0xa8;
/// CMDSTS: a command is in progress.
pub const CMDSTS_ACTIVE: u32 = 1 << 31;
/// CMDSTS: result field shift.
pub const CMDSTS_RES_SHIFT: u32 = 8;
/// Command capabilities: bit n set when command n is supported.
pub const CMDCAP: u64 = 0xb0;
/// Software error register (32 bytes); the first quadword holds valid/overflow (W1C).
pub const SWERR: u64 = 0xc0;
/// SWERR: valid.
pub const SWERR_VALID: u64 = 1 << 0;
/// SWERR: overflow (an error arrived while valid was set).
pub const SWERR_OVERFLOW: u64 = 1 << 1;
/// SWERR: the WQ index field is valid.
pub const SWERR_WQ_IDX_VALID: u64 = 1 << 3;
/// SWERR: error code field shift (bits 8-15).
pub const SWERR_ERROR_SHIFT: u32 = 8;
/// SWERR: WQ index field shift (bits 16-23).
pub const SWERR_WQ_IDX_SHIFT: u32 = 16;
/// SWERR error code of this model: a descriptor was written to a disabled WQ's portal.
pub const SWERR_WQ_NOT_ENABLED: u8 = 0x31;
/// SWERR error code of this model: a descriptor was written to a full WQ (more than its size
/// waiting to run) and dropped.
pub const SWERR_WQ_FULL: u8 = 0x32;
/// MSI-X permissions table offset (virtual device).
pub const MSIX_PERM: u64 = 0x300;
/// Group configuration table offset (64 bytes per group).
pub const GRPCFG: u64 = 0x400;
/// Bytes per group in GRPCFG.
pub const GRPCFG_SIZE: u64 = 64;
/// GRPCFG: WQ bitmap (32 bytes) at this offset within a group.
pub const GRPCFG_WQS: u64 = 0;
/// GRPCFG: engine bitmap (8 bytes) at this offset within a group.
pub const GRPCFG_ENGINES: u64 = 32;
/// GRPCFG: group flags (8 bytes) at this offset within a group.
pub const GRPCFG_FLAGS: u64 = 40;
/// Work queue configuration table offset (32 bytes per WQ).
pub const WQCFG: u64 = 0x500;
/// Bytes per WQ in WQCFG.
pub const WQCFG_SIZE: u64 = 32;
/// WQCFG dword 2: dedicated mode (1) or shared (0).
pub const WQCFG_MODE_DEDICATED: u32 = 1 << 0;
/// WQCFG dword 2: priority field shift (bits 4-7).
pub const WQCFG_PRIORITY_SHIFT: u32 = 4;
/// WQCFG dword 6: WQ state field shift (bits 30-31; 0 disabled, 1 enabled).
pub const WQCFG_STATE_SHIFT: u32 = 30;
/// Bytes of one portal page; each WQ has four (unlimited/limited x MSI-X/IMS).
pub const PORTAL_PAGE: u64 = 0x1000;
/// Portal bytes per WQ in BAR2.
pub const PORTALS_PER_WQ: u64 = 4 * PORTAL_PAGE;

/// Command codes (CMD bits 20-24).
pub mod cmd {
    /// Enable the device.
    pub const ENABLE_DEVICE: u32 = 1;
    /// Disable the device (and every WQ).
    pub const DISABLE_DEVICE: u32 = 2;
    /// Drain every WQ.
    pub const DRAIN_ALL: u32 = 3;
    /// Abort every WQ.
    pub const ABORT_ALL: u32 = 4;
    /// Reset the device.
    pub const RESET_DEVICE: u32 = 5;
    /// Enable a WQ (operand: WQ index).
    pub const ENABLE_WQ: u32 = 6;
    /// Disable WQs (operand: bitmap of 16 WQs, bits 16-19 select the set of 16).
    pub const DISABLE_WQ: u32 = 7;
    /// Drain WQs (operand as DISABLE_WQ).
    pub const DRAIN_WQ: u32 = 8;
    /// Abort WQs (operand as DISABLE_WQ).
    pub const ABORT_WQ: u32 = 9;
    /// Reset WQs: disable and return their configuration to defaults (operand as DISABLE_WQ).
    pub const RESET_WQ: u32 = 10;
    /// Drain a PASID's descriptors.
    pub const DRAIN_PASID: u32 = 11;
    /// Abort a PASID's descriptors.
    pub const ABORT_PASID: u32 = 12;
    /// Request an interrupt handle (operand: vector index; result: handle).
    pub const REQUEST_INT_HANDLE: u32 = 13;
    /// Release an interrupt handle.
    pub const RELEASE_INT_HANDLE: u32 = 14;
}

/// CMDSTS error codes (bits 0-7).
pub mod cmdsts {
    /// Success.
    pub const SUCCESS: u8 = 0x00;
    /// Unknown command.
    pub const INVAL_CMD: u8 = 0x01;
    /// WQ index out of range.
    pub const INVAL_WQIDX: u8 = 0x02;
    /// The device is already enabled.
    pub const ERR_DEV_ENABLED: u8 = 0x10;
    /// Enabling with bus mastering disabled.
    pub const ERR_BUSMASTER_EN: u8 = 0x12;
    /// A WQ's group has no engine.
    pub const ERR_GRP_CONFIG: u8 = 0x15;
    /// The device is not enabled.
    pub const ERR_DEV_NOTEN: u8 = 0x20;
    /// The WQ is already enabled.
    pub const ERR_WQ_ENABLED: u8 = 0x21;
    /// WQ size zero or beyond what is left of the total.
    pub const ERR_WQ_SIZE: u8 = 0x22;
    /// WQ priority zero.
    pub const ERR_WQ_PRIOR: u8 = 0x23;
    /// The WQ (or device) is not enabled.
    pub const ERR_DEV_NOT_EN: u8 = 0x32;
    /// Interrupt index out of range.
    pub const ERR_INVAL_INT_IDX: u8 = 0x41;
}
