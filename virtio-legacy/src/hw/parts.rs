//! Device parts: a virtio function's state as a list of parts (virtio 1.4, "Device parts"),
//! what DEV_PARTS_GET returns and DEV_PARTS_SET takes.
//!
//! Each part is a 16-byte header `le16 part_type, u8 flags, u8 reserved, u8 selector[8],
//! le32 length` followed by `length` bytes of value (`struct virtio_dev_part_hdr` of Linux's
//! include/uapi/linux/virtio_pci.h). Flag bit 0 marks an optional part, which a reader may
//! skip; the selector is `le32 offset, le32 reserved` for [`types::PCI_COMMON_CFG`],
//! `le16 index, u8 reserved[6]` for the per-virtqueue parts, and zero otherwise.
//!
//! The spec's common parts (0x100-0x105) carry the features, common config registers, the
//! device status and each queue's configuration. They have no room for a split ring's
//! in-flight position, the device-specific config, or the ISR, so this model adds three
//! parts in the device-type range (0x200-0x5ff): [`types::SPLIT_VQ_STATE`],
//! [`types::DEVICE_CONFIG`] and [`types::ISR`].
//!
//! [`DeviceState::decode`] is strict: parts come in ascending type order (the spec's order),
//! each selector once and ascending; every reserved byte is zero; lengths are exact; an
//! unknown part is refused unless it is optional. Checks against a particular device (queue
//! count, offered features) are the transport's.

use std::collections::BTreeMap;

/// Length of a part header.
pub const PART_HEADER: usize = 16;
/// Part flag: the part is optional (VIRTIO_DEV_PART_F_OPTIONAL, bit 0).
pub const F_OPTIONAL: u8 = 1;
/// Length of a [`types::VQ_CFG`] value (`struct virtio_dev_part_vq_cfg`).
pub const VQ_CFG_LEN: usize = 32;
/// Length of a [`types::VQ_NOTIFY_CFG`] value (`struct virtio_dev_part_vq_notify_data`).
pub const VQ_NOTIFY_LEN: usize = 8;
/// Length of a [`types::SPLIT_VQ_STATE`] value.
pub const SPLIT_VQ_LEN: usize = 8;
/// Largest device-specific config a part may carry (the transport's config area).
pub const MAX_DEVICE_CONFIG: usize = 4096;

/// Part types.
pub mod types {
    /// Device features (`le64 feature_bits[]`), optional: checked on set, never applied.
    pub const DEV_FEATURES: u16 = 0x100;
    /// Driver features (`le64 feature_bits[]`).
    pub const DRV_FEATURES: u16 = 0x101;
    /// One field of the PCI common config, selected by its offset.
    pub const PCI_COMMON_CFG: u16 = 0x102;
    /// The device status byte.
    pub const DEVICE_STATUS: u16 = 0x103;
    /// One virtqueue's configuration (size, vector, enable, ring addresses).
    pub const VQ_CFG: u16 = 0x104;
    /// One virtqueue's notification config (`le16 queue_notify_off, le16 notif_config_data`).
    pub const VQ_NOTIFY_CFG: u16 = 0x105;
    /// This model: one split virtqueue's device-side position, `le16 last_avail_idx,
    /// le16 used_idx, le32 legacy_pfn` (the page the legacy interface gave, 0 for none).
    pub const SPLIT_VQ_STATE: u16 = 0x200;
    /// This model: the device-specific config area (blk capacity, net MAC and status).
    pub const DEVICE_CONFIG: u16 = 0x201;
    /// This model: the ISR status byte (interrupts not yet acknowledged).
    pub const ISR: u16 = 0x202;
}

/// Offsets (in `struct virtio_pci_common_cfg`) of the fields carried as PCI_COMMON_CFG parts.
pub mod common_offsets {
    /// le32 device_feature_select.
    pub const DEVICE_FEATURE_SELECT: u32 = 0x00;
    /// le32 driver_feature_select.
    pub const DRIVER_FEATURE_SELECT: u32 = 0x08;
    /// le16 config_msix_vector.
    pub const CONFIG_MSIX_VECTOR: u32 = 0x10;
    /// le16 num_queues (read-only: checked on set).
    pub const NUM_QUEUES: u32 = 0x12;
    /// le16 queue_select.
    pub const QUEUE_SELECT: u32 = 0x16;
}

/// Why a list of parts is malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PartsError {
    /// A header or value runs past the end.
    #[error("part at byte {0} is truncated")]
    Truncated(usize),
    /// A flag other than OPTIONAL is set.
    #[error("part {part_type:#x} has unknown flags {flags:#x}")]
    Flags {
        /// The part type.
        part_type: u16,
        /// The flags.
        flags: u8,
    },
    /// A reserved byte (header, selector or value) is not zero.
    #[error("part {0:#x} has a non-zero reserved field")]
    Reserved(u16),
    /// The value has the wrong length for its type.
    #[error("part {part_type:#x} has a value of {length} bytes")]
    Length {
        /// The part type.
        part_type: u16,
        /// The value length.
        length: usize,
    },
    /// Parts are out of the spec's order, or a selector repeats.
    #[error("part {0:#x} is out of order or repeated")]
    Order(u16),
    /// A mandatory part of a type this device does not know.
    #[error("unknown mandatory part {0:#x}")]
    UnknownMandatory(u16),
    /// A PCI_COMMON_CFG part for a field this device does not carry.
    #[error("no common config field at offset {0:#x}")]
    UnknownField(u32),
    /// A part every state has is missing.
    #[error("the {0} part is missing")]
    Missing(&'static str),
    /// Virtqueue parts do not describe queues 0..n each completely.
    #[error("virtqueue {0} is not described completely")]
    Queue(u16),
    /// A value is out of range.
    #[error("invalid {0}")]
    Value(&'static str),
}

/// One part as it is on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawPart<'a> {
    /// The part type.
    pub part_type: u16,
    /// Flags (bit 0: optional).
    pub flags: u8,
    /// The selector.
    pub selector: [u8; 8],
    /// The value.
    pub value: &'a [u8],
}

impl RawPart<'_> {
    /// Appends header and value to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.header());
        out.extend_from_slice(self.value);
    }

    /// The 16-byte header.
    pub fn header(&self) -> [u8; PART_HEADER] {
        let mut h = [0u8; PART_HEADER];
        h[0..2].copy_from_slice(&self.part_type.to_le_bytes());
        h[2] = self.flags;
        h[4..12].copy_from_slice(&self.selector);
        // Values are bounded by the input they came from or by the model (< 4 GiB).
        h[12..16].copy_from_slice(&(self.value.len() as u32).to_le_bytes());
        h
    }

    fn optional(&self) -> bool {
        self.flags & F_OPTIONAL != 0
    }

    /// The queue index of a per-virtqueue part's selector.
    fn index(&self) -> u16 {
        u16::from_le_bytes([self.selector[0], self.selector[1]])
    }

    /// The common config offset of a PCI_COMMON_CFG part's selector.
    fn offset(&self) -> u32 {
        u32::from_le_bytes([
            self.selector[0],
            self.selector[1],
            self.selector[2],
            self.selector[3],
        ])
    }
}

/// Splits `bytes` into parts, checking the headers: flags, the reserved byte, lengths.
pub fn split(bytes: &[u8]) -> Result<Vec<RawPart<'_>>, PartsError> {
    let mut parts = Vec::new();
    let mut at = 0usize;
    while at < bytes.len() {
        let header = bytes
            .get(at..at + PART_HEADER)
            .ok_or(PartsError::Truncated(at))?;
        let part_type = u16::from_le_bytes([header[0], header[1]]);
        let flags = header[2];
        if flags & !F_OPTIONAL != 0 {
            return Err(PartsError::Flags { part_type, flags });
        }
        if header[3] != 0 {
            return Err(PartsError::Reserved(part_type));
        }
        let mut selector = [0u8; 8];
        selector.copy_from_slice(&header[4..12]);
        let length = u32::from_le_bytes([header[12], header[13], header[14], header[15]]);
        let start = at + PART_HEADER;
        let end = usize::try_from(length)
            .ok()
            .and_then(|l| start.checked_add(l))
            .filter(|end| *end <= bytes.len())
            .ok_or(PartsError::Truncated(at))?;
        parts.push(RawPart {
            part_type,
            flags,
            selector,
            value: &bytes[start..end],
        });
        at = end;
    }
    Ok(parts)
}

/// The common config fields a state carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CommonCfg {
    /// device_feature_select.
    pub device_feature_select: u32,
    /// driver_feature_select.
    pub driver_feature_select: u32,
    /// config_msix_vector.
    pub config_msix_vector: u16,
    /// num_queues.
    pub num_queues: u16,
    /// queue_select.
    pub queue_select: u16,
}

/// One virtqueue's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QueueState {
    /// queue_size.
    pub size: u16,
    /// queue_msix_vector.
    pub msix_vector: u16,
    /// queue_enable.
    pub enabled: bool,
    /// Descriptor table address.
    pub desc: u64,
    /// Available (driver) ring address.
    pub driver: u64,
    /// Used (device) ring address.
    pub device: u64,
    /// queue_notify_off.
    pub notify_off: u16,
    /// The next available ring entry the device reads.
    pub last_avail_idx: u16,
    /// The device's used index.
    pub used_idx: u16,
    /// The legacy QUEUE_PFN (0: set up through the modern registers, or not at all).
    pub legacy_pfn: u32,
}

/// A function's state, as its parts carry it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DeviceState {
    /// The features the device offers (optional: only checked).
    pub device_features: Option<u64>,
    /// The features the driver wrote.
    pub driver_features: u64,
    /// Common config fields.
    pub common: CommonCfg,
    /// The device status.
    pub status: u8,
    /// Every virtqueue, by index.
    pub queues: Vec<QueueState>,
    /// The device-specific config area.
    pub device_config: Vec<u8>,
    /// The ISR status byte.
    pub isr: u8,
}

fn vq_selector(index: u16) -> [u8; 8] {
    let mut s = [0u8; 8];
    s[..2].copy_from_slice(&index.to_le_bytes());
    s
}

fn offset_selector(offset: u32) -> [u8; 8] {
    let mut s = [0u8; 8];
    s[..4].copy_from_slice(&offset.to_le_bytes());
    s
}

fn le16(b: &[u8]) -> u16 {
    u16::from_le_bytes([b[0], b[1]])
}

fn le32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

fn le64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

/// A `le64 feature_bits[]` value: at least one word, bits past 63 clear.
fn features(part: &RawPart<'_>) -> Result<u64, PartsError> {
    let value = part.value;
    if value.is_empty() || !value.len().is_multiple_of(8) {
        return Err(PartsError::Length {
            part_type: part.part_type,
            length: value.len(),
        });
    }
    if value[8..].iter().any(|b| *b != 0) {
        return Err(PartsError::Value("feature bits past 63"));
    }
    Ok(le64(value))
}

fn exact(part: &RawPart<'_>, length: usize) -> Result<(), PartsError> {
    if part.value.len() == length {
        Ok(())
    } else {
        Err(PartsError::Length {
            part_type: part.part_type,
            length: part.value.len(),
        })
    }
}

/// The per-virtqueue parts seen for one index.
#[derive(Default)]
struct QueueParts {
    cfg: Option<QueueState>,
    notify: bool,
    split: bool,
}

/// What a decoder has seen so far.
#[derive(Default)]
struct Decoder {
    state: DeviceState,
    driver_features: bool,
    status: bool,
    device_config: bool,
    isr: bool,
    common: Vec<u32>,
    queues: BTreeMap<u16, QueueParts>,
    last: Option<(u16, [u8; 8])>,
}

impl Decoder {
    /// Parts come in ascending type order; within a type, selectors strictly ascend.
    fn check_order(&mut self, part: &RawPart<'_>) -> Result<(), PartsError> {
        let key = (part.part_type, selector_key(part));
        if let Some((last_type, last_selector)) = self.last
            && (last_type, last_selector) >= key
        {
            return Err(PartsError::Order(part.part_type));
        }
        self.last = Some(key);
        Ok(())
    }

    fn selector_zero(part: &RawPart<'_>) -> Result<(), PartsError> {
        if part.selector.iter().any(|b| *b != 0) {
            return Err(PartsError::Reserved(part.part_type));
        }
        Ok(())
    }

    fn vq_selector(part: &RawPart<'_>) -> Result<u16, PartsError> {
        if part.selector[2..].iter().any(|b| *b != 0) {
            return Err(PartsError::Reserved(part.part_type));
        }
        Ok(part.index())
    }

    fn part(&mut self, part: &RawPart<'_>) -> Result<(), PartsError> {
        self.check_order(part)?;
        match part.part_type {
            types::DEV_FEATURES => {
                Self::selector_zero(part)?;
                self.state.device_features = Some(features(part)?);
            }
            types::DRV_FEATURES => {
                Self::selector_zero(part)?;
                self.state.driver_features = features(part)?;
                self.driver_features = true;
            }
            types::PCI_COMMON_CFG => self.common_field(part)?,
            types::DEVICE_STATUS => {
                Self::selector_zero(part)?;
                exact(part, 1)?;
                self.state.status = part.value[0];
                self.status = true;
            }
            types::VQ_CFG => {
                let index = Self::vq_selector(part)?;
                exact(part, VQ_CFG_LEN)?;
                let v = part.value;
                if le16(&v[6..8]) != 0 {
                    return Err(PartsError::Reserved(part.part_type));
                }
                let enabled = match le16(&v[4..6]) {
                    0 => false,
                    1 => true,
                    _ => return Err(PartsError::Value("queue_enable")),
                };
                self.queues.entry(index).or_default().cfg = Some(QueueState {
                    size: le16(&v[0..2]),
                    msix_vector: le16(&v[2..4]),
                    enabled,
                    desc: le64(&v[8..16]),
                    driver: le64(&v[16..24]),
                    device: le64(&v[24..32]),
                    ..QueueState::default()
                });
            }
            types::VQ_NOTIFY_CFG => {
                let index = Self::vq_selector(part)?;
                exact(part, VQ_NOTIFY_LEN)?;
                let v = part.value;
                if v[2..].iter().any(|b| *b != 0) {
                    // notif_config_data is 0 without VIRTIO_F_NOTIF_CONFIG_DATA.
                    return Err(PartsError::Reserved(part.part_type));
                }
                let queue = self.queue(index)?;
                queue.notify = true;
                if let Some(cfg) = &mut queue.cfg {
                    cfg.notify_off = le16(&v[0..2]);
                }
            }
            types::SPLIT_VQ_STATE => {
                let index = Self::vq_selector(part)?;
                exact(part, SPLIT_VQ_LEN)?;
                let v = part.value;
                let queue = self.queue(index)?;
                queue.split = true;
                if let Some(cfg) = &mut queue.cfg {
                    cfg.last_avail_idx = le16(&v[0..2]);
                    cfg.used_idx = le16(&v[2..4]);
                    cfg.legacy_pfn = le32(&v[4..8]);
                }
            }
            types::DEVICE_CONFIG => {
                Self::selector_zero(part)?;
                if part.value.len() > MAX_DEVICE_CONFIG {
                    return Err(PartsError::Length {
                        part_type: part.part_type,
                        length: part.value.len(),
                    });
                }
                self.state.device_config = part.value.to_vec();
                self.device_config = true;
            }
            types::ISR => {
                Self::selector_zero(part)?;
                exact(part, 1)?;
                if part.value[0] & !3 != 0 {
                    return Err(PartsError::Value("ISR"));
                }
                self.state.isr = part.value[0];
                self.isr = true;
            }
            _ if part.optional() => {}
            other => return Err(PartsError::UnknownMandatory(other)),
        }
        Ok(())
    }

    /// The queue a NOTIFY or SPLIT part refers to: its VQ_CFG came first (type order).
    fn queue(&mut self, index: u16) -> Result<&mut QueueParts, PartsError> {
        self.queues.get_mut(&index).ok_or(PartsError::Queue(index))
    }

    fn common_field(&mut self, part: &RawPart<'_>) -> Result<(), PartsError> {
        if le32(&part.selector[4..8]) != 0 {
            return Err(PartsError::Reserved(part.part_type));
        }
        let offset = part.offset();
        let c = &mut self.state.common;
        match offset {
            common_offsets::DEVICE_FEATURE_SELECT => {
                exact(part, 4)?;
                c.device_feature_select = le32(part.value);
            }
            common_offsets::DRIVER_FEATURE_SELECT => {
                exact(part, 4)?;
                c.driver_feature_select = le32(part.value);
            }
            common_offsets::CONFIG_MSIX_VECTOR => {
                exact(part, 2)?;
                c.config_msix_vector = le16(part.value);
            }
            common_offsets::NUM_QUEUES => {
                exact(part, 2)?;
                c.num_queues = le16(part.value);
            }
            common_offsets::QUEUE_SELECT => {
                exact(part, 2)?;
                c.queue_select = le16(part.value);
            }
            _ if part.optional() => return Ok(()),
            other => return Err(PartsError::UnknownField(other)),
        }
        self.common.push(offset);
        Ok(())
    }

    fn finish(mut self) -> Result<DeviceState, PartsError> {
        if !self.driver_features {
            return Err(PartsError::Missing("driver features"));
        }
        if !self.status {
            return Err(PartsError::Missing("device status"));
        }
        if !self.device_config {
            return Err(PartsError::Missing("device config"));
        }
        if !self.isr {
            return Err(PartsError::Missing("ISR"));
        }
        if self.common.len() != 5 {
            return Err(PartsError::Missing("common config"));
        }
        for (expected, (index, queue)) in self.queues.into_iter().enumerate() {
            match queue.cfg {
                Some(cfg) if usize::from(index) == expected && queue.notify && queue.split => {
                    self.state.queues.push(cfg);
                }
                _ => return Err(PartsError::Queue(index)),
            }
        }
        if self.state.queues.len() != usize::from(self.state.common.num_queues) {
            return Err(PartsError::Value("num_queues"));
        }
        Ok(self.state)
    }
}

/// The selector bytes in the order that makes "ascending" mean ascending index or offset.
fn selector_key(part: &RawPart<'_>) -> [u8; 8] {
    let mut key = part.selector;
    key.reverse();
    key
}

impl DeviceState {
    /// The parts, in the spec's order.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let mut put = |part_type: u16, flags: u8, selector: [u8; 8], value: &[u8]| {
            RawPart {
                part_type,
                flags,
                selector,
                value,
            }
            .encode_into(&mut out);
        };
        if let Some(features) = self.device_features {
            put(
                types::DEV_FEATURES,
                F_OPTIONAL,
                [0; 8],
                &features.to_le_bytes(),
            );
        }
        put(
            types::DRV_FEATURES,
            0,
            [0; 8],
            &self.driver_features.to_le_bytes(),
        );
        let c = &self.common;
        for (offset, value) in [
            (
                common_offsets::DEVICE_FEATURE_SELECT,
                c.device_feature_select.to_le_bytes().to_vec(),
            ),
            (
                common_offsets::DRIVER_FEATURE_SELECT,
                c.driver_feature_select.to_le_bytes().to_vec(),
            ),
            (
                common_offsets::CONFIG_MSIX_VECTOR,
                c.config_msix_vector.to_le_bytes().to_vec(),
            ),
            (
                common_offsets::NUM_QUEUES,
                c.num_queues.to_le_bytes().to_vec(),
            ),
            (
                common_offsets::QUEUE_SELECT,
                c.queue_select.to_le_bytes().to_vec(),
            ),
        ] {
            put(types::PCI_COMMON_CFG, 0, offset_selector(offset), &value);
        }
        put(types::DEVICE_STATUS, 0, [0; 8], &[self.status]);
        for (index, q) in (0u16..).zip(&self.queues) {
            let mut v = [0u8; VQ_CFG_LEN];
            v[0..2].copy_from_slice(&q.size.to_le_bytes());
            v[2..4].copy_from_slice(&q.msix_vector.to_le_bytes());
            v[4..6].copy_from_slice(&u16::from(q.enabled).to_le_bytes());
            v[8..16].copy_from_slice(&q.desc.to_le_bytes());
            v[16..24].copy_from_slice(&q.driver.to_le_bytes());
            v[24..32].copy_from_slice(&q.device.to_le_bytes());
            put(types::VQ_CFG, 0, vq_selector(index), &v);
        }
        for (index, q) in (0u16..).zip(&self.queues) {
            let mut v = [0u8; VQ_NOTIFY_LEN];
            v[0..2].copy_from_slice(&q.notify_off.to_le_bytes());
            put(types::VQ_NOTIFY_CFG, 0, vq_selector(index), &v);
        }
        for (index, q) in (0u16..).zip(&self.queues) {
            let mut v = [0u8; SPLIT_VQ_LEN];
            v[0..2].copy_from_slice(&q.last_avail_idx.to_le_bytes());
            v[2..4].copy_from_slice(&q.used_idx.to_le_bytes());
            v[4..8].copy_from_slice(&q.legacy_pfn.to_le_bytes());
            put(types::SPLIT_VQ_STATE, 0, vq_selector(index), &v);
        }
        put(types::DEVICE_CONFIG, 0, [0; 8], &self.device_config);
        put(types::ISR, 0, [0; 8], &[self.isr]);
        out
    }

    /// Parses and checks a list of parts (see the module documentation for the rules).
    pub fn decode(bytes: &[u8]) -> Result<Self, PartsError> {
        let mut decoder = Decoder::default();
        for part in split(bytes)? {
            decoder.part(&part)?;
        }
        decoder.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> DeviceState {
        DeviceState {
            device_features: Some(0x1_3000_0240),
            driver_features: 0x1_0000_0200,
            common: CommonCfg {
                device_feature_select: 1,
                driver_feature_select: 1,
                config_msix_vector: 0,
                num_queues: 2,
                queue_select: 1,
            },
            status: 0x0f,
            queues: vec![
                QueueState {
                    size: 16,
                    msix_vector: 1,
                    enabled: true,
                    desc: 0x1000,
                    driver: 0x2000,
                    device: 0x3000,
                    notify_off: 0,
                    last_avail_idx: 5,
                    used_idx: 3,
                    legacy_pfn: 0,
                },
                QueueState {
                    size: 256,
                    msix_vector: 0xffff,
                    notify_off: 1,
                    ..QueueState::default()
                },
            ],
            device_config: vec![1, 2, 3, 4, 5, 6, 1, 0, 1, 0],
            isr: 1,
        }
    }

    /// The byte offset of the `n`th part's header.
    fn part_at(bytes: &[u8], n: usize) -> usize {
        let mut at = 0;
        for _ in 0..n {
            at += PART_HEADER + le32(&bytes[at + 12..at + 16]) as usize;
        }
        at
    }

    #[test]
    fn round_trip() {
        let state = sample();
        let bytes = state.encode();
        assert_eq!(DeviceState::decode(&bytes).unwrap(), state);
        let without = DeviceState {
            device_features: None,
            ..state
        };
        assert_eq!(DeviceState::decode(&without.encode()).unwrap(), without);
    }

    #[test]
    fn headers_follow_the_spec_layout() {
        let bytes = sample().encode();
        // First part: DEV_FEATURES, optional, 8 bytes.
        assert_eq!(&bytes[..4], &[0x00, 0x01, F_OPTIONAL, 0]);
        assert_eq!(le32(&bytes[12..16]), 8);
        let parts = split(&bytes).unwrap();
        let types: Vec<u16> = parts.iter().map(|p| p.part_type).collect();
        let mut sorted = types.clone();
        sorted.sort();
        assert_eq!(types, sorted);
        let vq = parts.iter().find(|p| p.part_type == types::VQ_CFG).unwrap();
        assert_eq!(vq.value.len(), VQ_CFG_LEN);
    }

    #[test]
    fn truncation_anywhere_is_refused() {
        let bytes = sample().encode();
        for len in 0..bytes.len() {
            assert!(DeviceState::decode(&bytes[..len]).is_err(), "{len} bytes");
        }
    }

    #[test]
    fn a_length_past_the_end_is_refused() {
        let mut bytes = sample().encode();
        bytes[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(DeviceState::decode(&bytes), Err(PartsError::Truncated(0)));
    }

    #[test]
    fn unknown_flags_and_reserved_bytes_are_refused() {
        let mut bytes = sample().encode();
        bytes[2] = 0x02;
        assert!(matches!(
            DeviceState::decode(&bytes),
            Err(PartsError::Flags { .. })
        ));
        let mut bytes = sample().encode();
        bytes[3] = 1;
        assert_eq!(
            DeviceState::decode(&bytes),
            Err(PartsError::Reserved(types::DEV_FEATURES))
        );
        let mut bytes = sample().encode();
        bytes[4] = 1;
        assert_eq!(
            DeviceState::decode(&bytes),
            Err(PartsError::Reserved(types::DEV_FEATURES))
        );
    }

    #[test]
    fn wrong_lengths_are_refused() {
        // DEVICE_STATUS is the 8th part (features x2, common x5).
        let mut bytes = sample().encode();
        let at = part_at(&bytes, 7);
        assert_eq!(le16(&bytes[at..]), types::DEVICE_STATUS);
        bytes.insert(at + PART_HEADER, 0);
        bytes[at + 12] = 2;
        assert!(matches!(
            DeviceState::decode(&bytes),
            Err(PartsError::Length {
                part_type: types::DEVICE_STATUS,
                length: 2
            })
        ));
    }

    #[test]
    fn order_and_repetition_are_checked() {
        let state = sample();
        let bytes = state.encode();
        let parts = split(&bytes).unwrap();
        let mut swapped = Vec::new();
        parts[1].encode_into(&mut swapped);
        parts[0].encode_into(&mut swapped);
        for p in &parts[2..] {
            p.encode_into(&mut swapped);
        }
        assert_eq!(
            DeviceState::decode(&swapped),
            Err(PartsError::Order(types::DEV_FEATURES))
        );
        let mut repeated = Vec::new();
        parts[0].encode_into(&mut repeated);
        for p in &parts {
            p.encode_into(&mut repeated);
        }
        assert!(matches!(
            DeviceState::decode(&repeated[..]),
            Err(PartsError::Order(_))
        ));
    }

    #[test]
    fn unknown_parts_are_skipped_only_when_optional() {
        let mut bytes = sample().encode();
        let extra = RawPart {
            part_type: 0x5ff,
            flags: F_OPTIONAL,
            selector: [0; 8],
            value: &[9, 9, 9],
        };
        extra.encode_into(&mut bytes);
        assert_eq!(DeviceState::decode(&bytes).unwrap(), sample());
        let mut bytes = sample().encode();
        RawPart { flags: 0, ..extra }.encode_into(&mut bytes);
        assert_eq!(
            DeviceState::decode(&bytes),
            Err(PartsError::UnknownMandatory(0x5ff))
        );
    }

    #[test]
    fn missing_parts_and_incomplete_queues_are_refused() {
        let bytes = sample().encode();
        let parts = split(&bytes).unwrap();
        for skip in 1..parts.len() {
            let mut partial = Vec::new();
            for (i, p) in parts.iter().enumerate() {
                if i != skip {
                    p.encode_into(&mut partial);
                }
            }
            assert!(
                DeviceState::decode(&partial).is_err(),
                "without part {skip}"
            );
        }
        let mut state = sample();
        state.common.num_queues = 3;
        assert_eq!(
            DeviceState::decode(&state.encode()),
            Err(PartsError::Value("num_queues"))
        );
    }

    #[test]
    fn values_out_of_range_are_refused() {
        let mut state = sample();
        state.isr = 4;
        assert_eq!(
            DeviceState::decode(&state.encode()),
            Err(PartsError::Value("ISR"))
        );
        let bytes = sample().encode();
        let parts = split(&bytes).unwrap();
        let mut out = Vec::new();
        for p in &parts {
            if p.part_type == types::VQ_CFG && p.index() == 0 {
                let mut v = p.value.to_vec();
                v[4] = 2;
                RawPart { value: &v, ..*p }.encode_into(&mut out);
            } else {
                p.encode_into(&mut out);
            }
        }
        assert_eq!(
            DeviceState::decode(&out),
            Err(PartsError::Value("queue_enable"))
        );
    }
}
