//! DEVICE_GET_IRQ_INFO (7) and DEVICE_SET_IRQS (8).

use bitflags::bitflags;

use super::error::ProtocolError;
use super::wire::{Reader, len_u32, put_u32};
use super::{Limits, Payload};

/// VFIO PCI IRQ index of INTx.
pub const IRQ_INDEX_INTX: u32 = 0;
/// VFIO PCI IRQ index of MSI.
pub const IRQ_INDEX_MSI: u32 = 1;
/// VFIO PCI IRQ index of MSI-X.
pub const IRQ_INDEX_MSIX: u32 = 2;
/// VFIO PCI IRQ index of the error interrupt.
pub const IRQ_INDEX_ERR: u32 = 3;
/// VFIO PCI IRQ index of the device request interrupt.
pub const IRQ_INDEX_REQ: u32 = 4;
/// Number of VFIO PCI IRQ indexes.
pub const PCI_NUM_IRQS: u32 = 5;

/// Size of DEVICE_GET_IRQ_INFO.
pub const IRQ_INFO_SIZE: u32 = 16;
/// Size of the fixed part of DEVICE_SET_IRQS.
pub const SET_IRQS_SIZE: u32 = 20;

bitflags! {
    /// IRQ info flags (VFIO_IRQ_INFO_*). Unknown bits are kept.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct IrqInfoFlags: u32 {
        /// Can be signalled through an eventfd.
        const EVENTFD = 1 << 0;
        /// Supports MASK and UNMASK.
        const MASKABLE = 1 << 1;
        /// Masks itself when it fires (INTx).
        const AUTOMASKED = 1 << 2;
        /// Sub-indexes cannot be added without disabling the index.
        const NORESIZE = 1 << 3;
    }
}

/// DEVICE_GET_IRQ_INFO request and reply (the request sets `argsz` and `index`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IrqInfo {
    /// Request: largest reply payload; reply: 16.
    pub argsz: u32,
    /// Flags (0 in the request).
    pub flags: IrqInfoFlags,
    /// IRQ index.
    pub index: u32,
    /// Number of interrupts of the index (0 in the request).
    pub count: u32,
}

impl IrqInfo {
    /// The request for `index`.
    pub fn request(index: u32) -> Self {
        Self {
            argsz: IRQ_INFO_SIZE,
            flags: IrqInfoFlags::empty(),
            index,
            count: 0,
        }
    }
}

impl Payload for IrqInfo {
    fn parse(payload: &[u8], _limits: &Limits) -> Result<Self, ProtocolError> {
        let mut r = Reader::new("DEVICE_GET_IRQ_INFO", payload);
        Ok(Self {
            argsz: r.u32()?,
            flags: IrqInfoFlags::from_bits_retain(r.u32()?),
            index: r.u32()?,
            count: r.u32()?,
        })
    }

    fn encode(&self, out: &mut Vec<u8>) {
        put_u32(out, self.argsz);
        put_u32(out, self.flags.bits());
        put_u32(out, self.index);
        put_u32(out, self.count);
    }
}

bitflags! {
    /// DEVICE_SET_IRQS flags: exactly one DATA_* and one ACTION_*.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct SetIrqsFlags: u32 {
        /// No data: act on every sub-index in range.
        const DATA_NONE = 1 << 0;
        /// One boolean byte per sub-index: act where true.
        const DATA_BOOL = 1 << 1;
        /// Eventfds sent as fds (none: de-assign).
        const DATA_EVENTFD = 1 << 2;
        /// Mask.
        const ACTION_MASK = 1 << 3;
        /// Unmask.
        const ACTION_UNMASK = 1 << 4;
        /// Trigger.
        const ACTION_TRIGGER = 1 << 5;
    }
}

impl SetIrqsFlags {
    /// The DATA_* bits.
    pub const DATA_MASK: Self = Self::DATA_NONE
        .union(Self::DATA_BOOL)
        .union(Self::DATA_EVENTFD);
    /// The ACTION_* bits.
    pub const ACTION_MASK_ALL: Self = Self::ACTION_MASK
        .union(Self::ACTION_UNMASK)
        .union(Self::ACTION_TRIGGER);
}

/// DEVICE_SET_IRQS request (reply: no payload). With DATA_EVENTFD the eventfds travel as the
/// message's fds; QEMU sends them in chunks of at most `max_msg_fds`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetIrqs {
    /// Size of the request payload including `data`.
    pub argsz: u32,
    /// One DATA_* and one ACTION_* flag.
    pub flags: SetIrqsFlags,
    /// IRQ index.
    pub index: u32,
    /// First sub-index.
    pub start: u32,
    /// Number of sub-indexes (0 with DATA_NONE and start 0: disable the whole index).
    pub count: u32,
    /// With DATA_BOOL, one value per sub-index; empty otherwise.
    pub data: Vec<bool>,
}

impl SetIrqs {
    /// A request without bool data; `argsz` is set.
    pub fn new(flags: SetIrqsFlags, index: u32, start: u32, count: u32) -> Self {
        Self {
            argsz: SET_IRQS_SIZE,
            flags,
            index,
            start,
            count,
            data: Vec::new(),
        }
    }

    /// Assigns (with fds) or de-assigns (without) trigger eventfds for `count` sub-indexes.
    pub fn eventfds(index: u32, start: u32, count: u32) -> Self {
        Self::new(
            SetIrqsFlags::DATA_EVENTFD | SetIrqsFlags::ACTION_TRIGGER,
            index,
            start,
            count,
        )
    }

    /// Disables every interrupt of `index`.
    pub fn disable(index: u32) -> Self {
        Self::new(
            SetIrqsFlags::DATA_NONE | SetIrqsFlags::ACTION_TRIGGER,
            index,
            0,
            0,
        )
    }

    /// Performs `action` on the sub-indexes from `start` where `mask` is true.
    pub fn with_bools(action: SetIrqsFlags, index: u32, start: u32, mask: Vec<bool>) -> Self {
        Self {
            argsz: SET_IRQS_SIZE.saturating_add(len_u32(mask.len())),
            flags: SetIrqsFlags::DATA_BOOL | action,
            index,
            start,
            count: len_u32(mask.len()),
            data: mask,
        }
    }

    /// Whether this disables the whole index (DATA_NONE, start 0, count 0).
    pub fn is_disable_all(&self) -> bool {
        self.flags.contains(SetIrqsFlags::DATA_NONE) && self.start == 0 && self.count == 0
    }
}

impl Payload for SetIrqs {
    fn parse(payload: &[u8], limits: &Limits) -> Result<Self, ProtocolError> {
        const WHAT: &str = "DEVICE_SET_IRQS";
        let mut r = Reader::new(WHAT, payload);
        let argsz = r.u32()?;
        let raw_flags = r.u32()?;
        let index = r.u32()?;
        let start = r.u32()?;
        let count = r.u32()?;
        let flags = SetIrqsFlags::from_bits(raw_flags)
            .ok_or_else(|| ProtocolError::invalid(WHAT, format!("flags {raw_flags:#x}")))?;
        if (flags & SetIrqsFlags::DATA_MASK).bits().count_ones() != 1
            || (flags & SetIrqsFlags::ACTION_MASK_ALL).bits().count_ones() != 1
        {
            return Err(ProtocolError::invalid(
                WHAT,
                format!("flags {raw_flags:#x}: need one DATA and one ACTION flag"),
            ));
        }
        if count > limits.max_irq_count {
            return Err(ProtocolError::too_large(
                WHAT,
                count.into(),
                limits.max_irq_count.into(),
            ));
        }
        if start.checked_add(count).is_none() {
            return Err(ProtocolError::invalid(WHAT, "start + count overflows"));
        }
        let data = if flags.contains(SetIrqsFlags::DATA_BOOL) {
            r.take(count as usize)?.iter().map(|&b| b != 0).collect()
        } else {
            Vec::new()
        };
        Ok(Self {
            argsz,
            flags,
            index,
            start,
            count,
            data,
        })
    }

    fn encode(&self, out: &mut Vec<u8>) {
        put_u32(out, self.argsz);
        put_u32(out, self.flags.bits());
        put_u32(out, self.index);
        put_u32(out, self.start);
        put_u32(out, self.count);
        out.extend(self.data.iter().map(|&b| u8::from(b)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip<T: Payload + PartialEq + std::fmt::Debug>(value: &T) {
        assert_eq!(
            &T::parse(&value.to_bytes(), &Limits::default()).unwrap(),
            value
        );
    }

    #[test]
    fn irq_info_round_trip() {
        round_trip(&IrqInfo::request(IRQ_INDEX_MSIX));
        let reply = IrqInfo {
            argsz: 16,
            flags: IrqInfoFlags::EVENTFD | IrqInfoFlags::NORESIZE,
            index: IRQ_INDEX_MSIX,
            count: 64,
        };
        assert_eq!(&reply.to_bytes()[4..8], &9u32.to_ne_bytes());
        round_trip(&reply);
        assert!(IrqInfo::parse(&reply.to_bytes()[..12], &Limits::default()).is_err());
    }

    #[test]
    fn set_irqs_round_trip_and_layout() {
        let ev = SetIrqs::eventfds(IRQ_INDEX_MSIX, 0, 4);
        let bytes = ev.to_bytes();
        assert_eq!(bytes.len(), 20);
        assert_eq!(&bytes[4..8], &(4u32 | 32).to_ne_bytes());
        round_trip(&ev);
        let off = SetIrqs::disable(IRQ_INDEX_INTX);
        assert!(off.is_disable_all());
        round_trip(&off);
        let bools = SetIrqs::with_bools(SetIrqsFlags::ACTION_UNMASK, 0, 0, vec![true, false, true]);
        let bytes = bools.to_bytes();
        assert_eq!(bytes.len(), 23);
        assert_eq!(&bytes[20..], &[1, 0, 1]);
        round_trip(&bools);
    }

    #[test]
    fn set_irqs_refusals() {
        let limits = Limits {
            max_irq_count: 8,
            ..Limits::default()
        };
        let two_data = SetIrqs::new(
            SetIrqsFlags::DATA_NONE | SetIrqsFlags::DATA_BOOL | SetIrqsFlags::ACTION_MASK,
            0,
            0,
            1,
        );
        assert_eq!(
            SetIrqs::parse(&two_data.to_bytes(), &limits)
                .unwrap_err()
                .errno(),
            22
        );
        let no_action = SetIrqs::new(SetIrqsFlags::DATA_NONE, 0, 0, 1);
        assert!(SetIrqs::parse(&no_action.to_bytes(), &limits).is_err());
        let mut unknown = SetIrqs::disable(0).to_bytes();
        unknown[4..8].copy_from_slice(&(1u32 | 8 | 64).to_ne_bytes());
        assert!(SetIrqs::parse(&unknown, &limits).is_err());
        let many = SetIrqs::eventfds(2, 0, 9);
        assert_eq!(
            SetIrqs::parse(&many.to_bytes(), &limits)
                .unwrap_err()
                .errno(),
            7
        );
        let wrap = SetIrqs::eventfds(2, u32::MAX, 2);
        assert!(SetIrqs::parse(&wrap.to_bytes(), &limits).is_err());
        // Bool data shorter than count.
        let mut short =
            SetIrqs::with_bools(SetIrqsFlags::ACTION_MASK, 0, 0, vec![true; 4]).to_bytes();
        short.pop();
        assert!(matches!(
            SetIrqs::parse(&short, &limits),
            Err(ProtocolError::Truncated { .. })
        ));
        assert!(SetIrqs::parse(&[0; 19], &limits).is_err());
    }
}
