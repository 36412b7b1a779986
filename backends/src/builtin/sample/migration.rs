//! Migration of the sample function (STOP_COPY and P2P): the whole device state is saved once
//! the function is stopped, and loaded when it leaves RESUMING.
//!
//! The state is three typed records ([`vfio_variant::migration::record`]), each of a fixed
//! size: REGISTERS (version 1, little endian: `u32 scratch, u32 int_status, u64 src, u64 dst,
//! u32 len, u32 count, u32 status, u32 nvram`), MSIX_TABLE (the 4 KiB MSI-X BAR) and
//! SHARED_MEMORY (the 64 KiB shared-memory BAR). A load keeps them until RESUMING → STOP,
//! which applies them only when all three arrived; anything else leaves the function as it
//! was. The interrupt and bus-master enables are config space, which the framework carries.

use std::sync::atomic::Ordering;

use vfio_variant::migration::record::{
    RECORD_HEADER_BYTES, Record, RecordKind, RecordReader, RecordWriter,
};
use vfio_variant::migration::{
    MigrationError, MigrationFlags, MigrationHooks, MigrationState, PrecopyInfo,
};

use super::function::SampleFunction;
use super::registers::{DMA_STATUS_BUSY, SHM_SIZE};

/// Bytes of the registers record.
const REGISTERS_SIZE: u64 = 4 * 6 + 8 * 2;
/// Size of the MSI-X BAR.
const MSIX_SIZE: u64 = 4096;

/// The device registers.
const REGISTERS: RecordKind = RecordKind {
    tag: 1,
    name: "REGISTERS",
    version: 1,
    oldest: 1,
    min_payload: REGISTERS_SIZE,
    max_payload: REGISTERS_SIZE,
    optional: false,
};

/// The MSI-X BAR (table and PBA).
const MSIX_TABLE: RecordKind = RecordKind {
    tag: 2,
    name: "MSIX_TABLE",
    version: 1,
    oldest: 1,
    min_payload: MSIX_SIZE,
    max_payload: MSIX_SIZE,
    optional: false,
};

/// The shared-memory BAR.
const SHARED_MEMORY: RecordKind = RecordKind {
    tag: 3,
    name: "SHARED_MEMORY",
    version: 1,
    oldest: 1,
    min_payload: SHM_SIZE as u64,
    max_payload: SHM_SIZE as u64,
    optional: false,
};

/// Every record of the sample's state, in the order they are written.
static KINDS: [RecordKind; 3] = [REGISTERS, MSIX_TABLE, SHARED_MEMORY];

/// Bytes of the whole saved state, framing included.
const STATE_SIZE: u64 =
    3 * RECORD_HEADER_BYTES as u64 + REGISTERS_SIZE + MSIX_SIZE + SHM_SIZE as u64;

/// The records of a load, kept until RESUMING → STOP.
struct Loading {
    reader: RecordReader,
    /// One slot per kind of [`KINDS`].
    records: [Option<Vec<u8>>; 3],
}

impl Default for Loading {
    fn default() -> Self {
        Self {
            reader: RecordReader::new(&KINDS),
            records: Default::default(),
        }
    }
}

impl Loading {
    /// Keeps a checked record; a second record of one kind is refused.
    fn keep(&mut self, record: Record) -> Result<(), MigrationError> {
        let slot = KINDS
            .iter()
            .position(|k| k.tag == record.kind.tag)
            .and_then(|i| self.records.get_mut(i))
            .ok_or_else(|| {
                MigrationError::InvalidData(format!("a {} record here", record.kind.name))
            })?;
        if slot.is_some() {
            return Err(MigrationError::InvalidData(format!(
                "a second {} record",
                record.kind.name
            )));
        }
        *slot = Some(record.payload);
        Ok(())
    }

    /// The three payloads, when the whole state arrived.
    fn complete(self) -> Result<[Vec<u8>; 3], MigrationError> {
        if !self.reader.at_boundary() {
            return Err(MigrationError::InvalidData(
                "the sample state ends inside a record".into(),
            ));
        }
        let [registers, msix, shared] = self.records;
        let missing = |kind: &RecordKind| {
            MigrationError::InvalidData(format!("the sample state has no {} record", kind.name))
        };
        Ok([
            registers.ok_or_else(|| missing(&REGISTERS))?,
            msix.ok_or_else(|| missing(&MSIX_TABLE))?,
            shared.ok_or_else(|| missing(&SHARED_MEMORY))?,
        ])
    }
}

/// A function's migration state.
#[derive(Default)]
pub(super) struct SampleMigration {
    /// No DMA, no interrupts (RUNNING_P2P and below).
    pub(super) stopped: bool,
    /// The saved state not yet read.
    saving: Option<RecordWriter>,
    /// The state being loaded.
    loading: Option<Loading>,
}

impl SampleFunction {
    fn save_state(&self) -> Result<RecordWriter, MigrationError> {
        let mut registers = Vec::with_capacity(REGISTERS_SIZE as usize);
        {
            let state = self.state.lock();
            for word in [state.scratch, state.int_status] {
                registers.extend_from_slice(&word.to_le_bytes());
            }
            registers.extend_from_slice(&state.src.to_le_bytes());
            registers.extend_from_slice(&state.dst.to_le_bytes());
            let nvram = self.nvram.load(Ordering::SeqCst);
            for word in [state.len, state.count, state.status, nvram] {
                registers.extend_from_slice(&word.to_le_bytes());
            }
        }
        let mut writer = RecordWriter::default();
        writer.push(&REGISTERS, &registers)?;
        writer.push(&MSIX_TABLE, &self.msix_bar.lock())?;
        let mut shared = vec![0; SHM_SIZE];
        // In range by construction: SHM_SIZE bytes at offset 0.
        let _ = self.shared.read(0, &mut shared);
        writer.push(&SHARED_MEMORY, &shared)?;
        Ok(writer)
    }

    /// Applies a whole loaded state (each record's size was checked by the reader).
    fn load_state(&self, [registers, msix, shared]: [Vec<u8>; 3]) -> Result<(), MigrationError> {
        let word = |at: usize| {
            u32::from_le_bytes([
                registers[at],
                registers[at + 1],
                registers[at + 2],
                registers[at + 3],
            ])
        };
        let quad = |at: usize| u64::from(word(at)) | (u64::from(word(at + 4)) << 32);
        if word(32) == DMA_STATUS_BUSY {
            return Err(MigrationError::InvalidData(
                "sample state with a DMA transfer in flight".into(),
            ));
        }
        let mut state = self.state.lock();
        state.scratch = word(0);
        state.int_status = word(4);
        state.src = quad(8);
        state.dst = quad(16);
        state.len = word(24);
        state.count = word(28);
        state.status = word(32);
        self.nvram.store(word(36), Ordering::SeqCst);
        self.update_intx(&mut state);
        self.msix_bar.lock().copy_from_slice(&msix);
        self.shared
            .write(0, &shared)
            .map_err(|e| MigrationError::Device(e.to_string()))
    }
}

impl MigrationHooks for SampleFunction {
    fn flags(&self) -> MigrationFlags {
        MigrationFlags::STOP_COPY | MigrationFlags::P2P
    }

    fn transition(&self, from: MigrationState, to: MigrationState) -> Result<(), MigrationError> {
        use MigrationState::*;
        let mut migration = self.migration.lock();
        match (from, to) {
            (Running, RunningP2p) => {
                migration.stopped = true;
                drop(migration);
                // No DMA once stopped: a transfer in flight ends first.
                self.worker.quiesce();
            }
            (RunningP2p, Running) => migration.stopped = false,
            (Stop, StopCopy) => {
                drop(migration);
                let saved = self.save_state()?;
                self.migration.lock().saving = Some(saved);
            }
            (StopCopy, Stop) => migration.saving = None,
            (Stop, Resuming) => migration.loading = Some(Loading::default()),
            (Resuming, Stop) => {
                let loaded = migration.loading.take().unwrap_or_default().complete()?;
                drop(migration);
                self.load_state(loaded)?;
            }
            _ => {}
        }
        Ok(())
    }

    fn save(&self, buf: &mut [u8]) -> Result<usize, MigrationError> {
        Ok(self
            .migration
            .lock()
            .saving
            .as_mut()
            .map_or(0, |writer| writer.read(buf)))
    }

    fn load(&self, data: &[u8]) -> Result<(), MigrationError> {
        let mut migration = self.migration.lock();
        let loading = migration
            .loading
            .as_mut()
            .ok_or_else(|| MigrationError::Device("not resuming".into()))?;
        let Loading { reader, .. } = loading;
        let mut found = Vec::new();
        reader.feed(data, |record| {
            found.push(record);
            Ok::<_, MigrationError>(())
        })?;
        found
            .into_iter()
            .try_for_each(|record| loading.keep(record))
    }

    fn precopy_info(&self) -> Result<PrecopyInfo, MigrationError> {
        Err(MigrationError::Device(
            "the sample function has no pre-copy".into(),
        ))
    }

    fn stop_copy_size(&self) -> Result<u64, MigrationError> {
        Ok(STATE_SIZE)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::AtomicU32;

    use vfio_variant::backend::Function;
    use vfio_variant::migration::record::RecordError;

    use super::super::registers::SCRATCH;
    use super::*;

    fn function() -> SampleFunction {
        SampleFunction::new(Arc::new(AtomicU32::new(1))).unwrap()
    }

    fn scratch(f: &SampleFunction) -> u32 {
        let mut data = [0u8; 4];
        f.bar_read(0, SCRATCH, &mut data).unwrap();
        u32::from_le_bytes(data)
    }

    /// The saved stream of a function whose scratch register holds `value`.
    fn saved(value: u32) -> Vec<u8> {
        let f = function();
        f.bar_write(0, SCRATCH, &value.to_le_bytes()).unwrap();
        f.transition(MigrationState::Stop, MigrationState::StopCopy)
            .unwrap();
        let mut out = Vec::new();
        let mut buf = [0u8; 5000];
        loop {
            let n = f.save(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        assert_eq!(out.len() as u64, f.stop_copy_size().unwrap());
        out
    }

    /// Loads `stream` in pieces of `piece` bytes into a function whose scratch holds 7.
    fn load(stream: &[u8], piece: usize) -> (SampleFunction, Result<(), MigrationError>) {
        let f = function();
        f.bar_write(0, SCRATCH, &7u32.to_le_bytes()).unwrap();
        f.transition(MigrationState::Stop, MigrationState::Resuming)
            .unwrap();
        let result = stream
            .chunks(piece)
            .try_for_each(|chunk| f.load(chunk))
            .and_then(|()| f.transition(MigrationState::Resuming, MigrationState::Stop));
        (f, result)
    }

    #[test]
    fn the_state_moves_as_three_typed_records() {
        let stream = saved(0x1234_5678);
        for piece in [1000, 4096, stream.len()] {
            let (f, result) = load(&stream, piece);
            result.unwrap();
            assert_eq!(scratch(&f), 0x1234_5678);
        }
    }

    #[test]
    fn an_incomplete_or_corrupt_state_leaves_the_function_as_it_was() {
        let stream = saved(0x1234_5678);
        // Ends inside the last record; without the last record; a record twice.
        let registers = RECORD_HEADER_BYTES + REGISTERS_SIZE as usize;
        let cut = [
            stream[..stream.len() - 1].to_vec(),
            stream[..registers + RECORD_HEADER_BYTES + MSIX_SIZE as usize].to_vec(),
            [&stream[..registers], &stream[..]].concat(),
        ];
        for (i, bad) in cut.iter().enumerate() {
            let (f, result) = load(bad, 4096);
            assert!(
                matches!(result, Err(MigrationError::InvalidData(_))),
                "case {i}: {result:?}"
            );
            assert_eq!(scratch(&f), 7, "case {i}");
        }
        // A registers record of another size is refused as it arrives.
        let mut wrong = stream.clone();
        wrong[..8].copy_from_slice(&(REGISTERS_SIZE + 4).to_le_bytes());
        let (f, result) = load(&wrong, 4096);
        assert_eq!(
            result,
            Err(MigrationError::from(RecordError::Size {
                kind: "REGISTERS",
                size: REGISTERS_SIZE + 4,
                min: REGISTERS_SIZE,
                max: REGISTERS_SIZE
            }))
        );
        assert_eq!(scratch(&f), 7);
    }
}
