//! A guest driving a virtual DSA device with arbitrary register writes and descriptors: every
//! BAR0 access (commands, WQ and group configuration, interrupt registers) and portal write
//! of BAR2, against 64 KiB of guest memory with a hole in it. Never a panic; nothing outside
//! the guest's memory is touched (the memory is the only DMA the function has).
//!
//! Input: a sequence of operations, each `kind u8, offset le16, length u8, data`:
//! kind % 4 = 0 BAR0 write, 1 BAR0 read, 2 a 64-byte descriptor to the portal (the data,
//! padded), 3 a config event (bus master, MSI-X enable, reset).
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use parking_lot::Mutex;
use vfio_variant::backend::{
    Backend, CreateRequest, DmaAccess, DmaError, FunctionContext, Interrupt, InterruptSink,
};
use vfio_variant::config::ConfigEvent;
use vfio_variant::pci::regs::COMMAND_BUS_MASTER;
use vfio_variant::vpci::parse_layout;
use vfio_variant_idxd::backend::{PROFILE_DEDICATED, PROFILE_SHARED};
use vfio_variant_idxd::{IdxdBackend, IdxdConfig, LAYOUT_1DWQ};

const BASE: u64 = 0x1_0000;
const SIZE: usize = 64 << 10;
/// A page of the range that is not mapped (faults).
const HOLE: u64 = BASE + 0x8000;

/// Guest memory: one flat buffer with an unmapped page.
struct Memory(Mutex<Vec<u8>>);

impl Memory {
    fn range(iova: u64, len: usize) -> Result<usize, DmaError> {
        let fault = DmaError::Unmapped { iova, len };
        let start = iova.checked_sub(BASE).ok_or(fault.clone())? as usize;
        let end = start.checked_add(len).ok_or(fault.clone())?;
        let hole = (HOLE - BASE) as usize;
        if end > SIZE || (start < hole + 4096 && end > hole) {
            return Err(fault);
        }
        Ok(start)
    }
}

impl DmaAccess for Memory {
    fn read(&self, iova: u64, data: &mut [u8]) -> Result<(), DmaError> {
        let at = Self::range(iova, data.len())?;
        data.copy_from_slice(&self.0.lock()[at..at + data.len()]);
        Ok(())
    }

    fn write(&self, iova: u64, data: &[u8]) -> Result<(), DmaError> {
        let at = Self::range(iova, data.len())?;
        self.0.lock()[at..at + data.len()].copy_from_slice(data);
        Ok(())
    }
}

struct Ignore;

impl InterruptSink for Ignore {
    fn raise(&self, _: Interrupt) {}
}

fuzz_target!(|input: &[u8]| {
    let Some((&profile, mut rest)) = input.split_first() else {
        return;
    };
    let backend = IdxdBackend::new(IdxdConfig::default()).expect("default geometry");
    let profile = if profile & 1 == 0 {
        PROFILE_DEDICATED
    } else {
        PROFILE_SHARED
    };
    let function = backend
        .create(&CreateRequest {
            profile: profile.into(),
            instance: "fuzz".into(),
            layout: Arc::new(parse_layout("idxd", LAYOUT_1DWQ).expect("catalog layout")),
            attributes: Vec::new(),
        })
        .expect("a free work queue");
    function.attach(FunctionContext {
        dma: Arc::new(Memory(Mutex::new(vec![0; SIZE]))),
        interrupts: Arc::new(Ignore),
    });
    while let [kind, o0, o1, len, tail @ ..] = rest {
        let offset = u64::from(u16::from_le_bytes([*o0, *o1]));
        let len = usize::from(*len).min(tail.len());
        let (data, next) = tail.split_at(len);
        rest = next;
        match kind % 4 {
            0 => {
                let _ = function.bar_write(0, offset, data);
            }
            1 => {
                let mut buf = vec![0u8; data.len().clamp(1, 8)];
                let _ = function.bar_read(0, offset, &mut buf);
            }
            2 => {
                let mut descriptor = [0u8; 64];
                descriptor[..data.len().min(64)].copy_from_slice(&data[..data.len().min(64)]);
                let _ = function.bar_write(2, offset & 0xfc0, &descriptor);
            }
            _ => function.config_changed(match offset % 3 {
                0 => ConfigEvent::Command {
                    old: 0,
                    new: COMMAND_BUS_MASTER,
                },
                1 => ConfigEvent::Msix {
                    enabled: true,
                    function_mask: false,
                },
                _ => ConfigEvent::FunctionLevelReset,
            }),
        }
    }
});
