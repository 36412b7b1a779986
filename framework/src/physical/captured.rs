//! A physical function served from a captured description: config space as captured (writes
//! land in memory), BARs as sparse zero-filled memory. Used to check layouts against a real
//! device's config space offline, and by tests.

use std::collections::HashMap;

use parking_lot::Mutex;

use super::{PhysicalBar, PhysicalDescription, PhysicalError, PhysicalFunction, check_access};

const PAGE: u64 = 4096;

/// BAR memory pages, allocated when first touched: (BAR index, page number) to bytes.
type Pages = HashMap<(u8, u64), Box<[u8]>>;

/// A physical function backed by a [`PhysicalDescription`].
pub struct CapturedFunction {
    name: String,
    description: PhysicalDescription,
    config: Mutex<Vec<u8>>,
    pages: Mutex<Pages>,
}

impl CapturedFunction {
    /// Serves `description` under `name`.
    pub fn new(name: impl Into<String>, description: PhysicalDescription) -> Self {
        let config = Mutex::new(description.config.clone());
        Self {
            name: name.into(),
            description,
            config,
            pages: Mutex::new(HashMap::new()),
        }
    }

    fn bar_size(&self, index: u8) -> Result<u64, PhysicalError> {
        self.bar(index)
            .map(|b| b.size)
            .ok_or(PhysicalError::NoSuchBar(index))
    }

    fn for_each_page(
        &self,
        index: u8,
        offset: u64,
        len: usize,
        mut f: impl FnMut(&mut [u8], std::ops::Range<usize>),
    ) -> Result<(), PhysicalError> {
        check_access(
            || format!("BAR {index}"),
            offset,
            len,
            self.bar_size(index)?,
        )?;
        let mut pages = self.pages.lock();
        let mut done = 0usize;
        while done < len {
            let at = offset + done as u64;
            let page = at / PAGE;
            let within = (at % PAGE) as usize;
            let n = (PAGE as usize - within).min(len - done);
            let memory = pages
                .entry((index, page))
                .or_insert_with(|| vec![0u8; PAGE as usize].into_boxed_slice());
            f(&mut memory[within..within + n], done..done + n);
            done += n;
        }
        Ok(())
    }
}

impl PhysicalFunction for CapturedFunction {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn config_size(&self) -> u16 {
        self.description.config.len() as u16
    }

    fn config_read(&self, offset: u16, data: &mut [u8]) -> Result<(), PhysicalError> {
        let config = self.config.lock();
        check_access(
            || "config space".into(),
            offset.into(),
            data.len(),
            config.len() as u64,
        )?;
        let at = usize::from(offset);
        data.copy_from_slice(&config[at..at + data.len()]);
        Ok(())
    }

    fn config_write(&self, offset: u16, data: &[u8]) -> Result<(), PhysicalError> {
        let mut config = self.config.lock();
        check_access(
            || "config space".into(),
            offset.into(),
            data.len(),
            config.len() as u64,
        )?;
        let at = usize::from(offset);
        config[at..at + data.len()].copy_from_slice(data);
        Ok(())
    }

    fn bar(&self, index: u8) -> Option<PhysicalBar> {
        self.description
            .bars
            .get(usize::from(index))
            .copied()
            .flatten()
    }

    fn rom_size(&self) -> Option<u64> {
        self.description.rom_size
    }

    fn bar_read(&self, index: u8, offset: u64, data: &mut [u8]) -> Result<(), PhysicalError> {
        self.for_each_page(index, offset, data.len(), |memory, range| {
            data[range].copy_from_slice(memory)
        })
    }

    fn bar_write(&self, index: u8, offset: u64, data: &[u8]) -> Result<(), PhysicalError> {
        self.for_each_page(index, offset, data.len(), |memory, range| {
            memory.copy_from_slice(&data[range])
        })
    }

    fn rom_read(&self, offset: u64, data: &mut [u8]) -> Result<(), PhysicalError> {
        // The captured description has the ROM's size, not its image: it reads as erased.
        let size = self
            .rom_size()
            .ok_or_else(|| PhysicalError::Invalid("no expansion ROM".into()))?;
        check_access(|| "expansion ROM".into(), offset, data.len(), size)?;
        data.fill(0xff);
        Ok(())
    }

    fn reset(&self) -> Result<(), PhysicalError> {
        *self.config.lock() = self.description.config.clone();
        self.pages.lock().clear();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::BarKind;

    #[test]
    fn bars_are_memory_and_reset_clears_them() {
        let mut bars = [None; 6];
        bars[2] = Some(PhysicalBar {
            kind: BarKind::Memory64,
            prefetchable: true,
            size: 1 << 34,
        });
        let f = CapturedFunction::new(
            "t",
            PhysicalDescription {
                config: vec![0; 256],
                bars,
                rom_size: None,
            },
        );
        f.bar_write(2, (1 << 34) - 6, &[1, 2, 3, 4, 5, 6]).unwrap();
        let mut back = [0u8; 6];
        f.bar_read(2, (1 << 34) - 6, &mut back).unwrap();
        assert_eq!(back, [1, 2, 3, 4, 5, 6]);
        assert!(f.bar_read(2, 1 << 34, &mut back).is_err());
        assert!(matches!(
            f.bar_read(1, 0, &mut back),
            Err(PhysicalError::NoSuchBar(1))
        ));
        f.reset().unwrap();
        f.bar_read(2, (1 << 34) - 6, &mut back).unwrap();
        assert_eq!(back, [0; 6]);
    }
}
