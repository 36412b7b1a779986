//! The source side: pre-copy rounds until they converge, stop-copy, and the downtime.

use std::collections::VecDeque;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::destination::Destination;
use super::{MigratableDevice, MigrateError, PIPELINE_SLOTS};
use crate::migration::{MigrationFlags, MigrationState};
use crate::vfio_user::client::MigChunk;

/// How to run a migration.
#[derive(Debug, Clone)]
pub struct Options {
    /// Use PRE_COPY when the source offers it.
    pub precopy: bool,
    /// Most pre-copy rounds before stop-copy.
    pub max_precopy_rounds: u32,
    /// Pre-copy has converged when a round moved at most this many bytes.
    pub converge_bytes: u64,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            precopy: true,
            max_precopy_rounds: 30,
            converge_bytes: 64 << 10,
        }
    }
}

/// What the driver reports as it goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// The destination is RESUMING; the source offers these flags.
    Started {
        /// The source's migration flags.
        flags: MigrationFlags,
    },
    /// A pre-copy round moved `bytes` while the source kept running.
    PrecopyRound {
        /// Round number, from 0.
        round: u32,
        /// Bytes moved in the round.
        bytes: u64,
    },
    /// The source stopped; stop-copy moved `bytes`.
    StopCopy {
        /// Bytes moved while the source was stopped.
        bytes: u64,
    },
    /// The destination runs.
    Resumed,
}

/// What the VMM around the driver does at each step: report progress, and move what the
/// device state does not carry (guest memory dirtied by the device) while pre-copy runs and
/// once the source is stopped. An error abandons the migration.
pub trait Observer {
    /// A step was taken.
    fn progress(&mut self, _progress: &Progress) {}
    /// After each pre-copy round, while the source runs.
    fn precopy_round(&mut self) -> Result<(), String> {
        Ok(())
    }
    /// The source is stopped and its state drained, before the destination resumes.
    fn source_stopped(&mut self) -> Result<(), String> {
        Ok(())
    }
}

/// An observer that only logs.
impl Observer for () {}

/// A completed migration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The source's migration flags.
    pub flags: MigrationFlags,
    /// Bytes moved by each pre-copy round.
    pub precopy_rounds: Vec<u64>,
    /// Bytes moved while the source was stopped.
    pub stop_copy_bytes: u64,
    /// From the source stopping to the destination running.
    pub downtime: Duration,
    /// The whole migration.
    pub total: Duration,
}

impl Report {
    /// All bytes moved.
    pub fn bytes(&self) -> u64 {
        self.precopy_rounds.iter().sum::<u64>() + self.stop_copy_bytes
    }
}

/// Chunks sent to a destination that takes them ahead ([`Destination::send_shared_ahead`])
/// before the driver waits for it to take the oldest: its server loads one while the next
/// is on its way.
const WRITES_AHEAD: usize = 2;

/// Reads asked of the source ahead of taking them ([`MigratableDevice::read_ahead`]), when
/// it can: its server saves the next chunk while the driver takes the last one.
const READS_AHEAD: usize = 2;

/// Reads what the source has now (all of it in stop-copy) and sends it on: the next chunks
/// are read from the source (on a thread of its own) while the last one is sent to the
/// destination, through [`PIPELINE_SLOTS`] buffers (slots) that go round (no fresh pages per
/// chunk). A source that reads ahead has up to [`READS_AHEAD`] reads out at once. When
/// source and destination are vfio-user servers sharing one buffer ([`super::share_buffer`]),
/// each slot is a part of it: the source's server writes a chunk there and the destination's
/// takes it from there. A slot is read into again only once the destination took what it
/// held. A failure on either side stops both; the source's failure is reported first.
fn drain(
    source: &mut (impl MigratableDevice + Send + ?Sized),
    destination: &mut dyn Destination,
) -> Result<u64, MigrateError> {
    let chunk = source.chunk_size();
    type Slot = (usize, Vec<u8>);
    let (full_tx, full_rx) = mpsc::sync_channel::<(Slot, MigChunk)>(PIPELINE_SLOTS);
    let (empty_tx, empty_rx) = mpsc::channel::<Slot>();
    for slot in 0..PIPELINE_SLOTS {
        empty_tx
            .send((slot, Vec::new()))
            .expect("the receiver is here");
    }
    std::thread::scope(|scope| {
        let reader = scope.spawn(move || -> Result<(), MigrateError> {
            // Slots whose reads were asked for, oldest first.
            let mut asked: VecDeque<Slot> = VecDeque::new();
            // Until a short chunk: no more reads are asked for after it.
            let mut more = true;
            let mut depth = 1;
            loop {
                if more && asked.is_empty() {
                    // Ends when the sending side stops taking chunks (it failed).
                    let Ok(slot) = empty_rx.recv() else { break };
                    if source
                        .read_ahead(slot.0, chunk)
                        .map_err(MigrateError::Source)?
                    {
                        depth = READS_AHEAD;
                    }
                    asked.push_back(slot);
                }
                while more && asked.len() < depth {
                    let Ok(slot) = empty_rx.try_recv() else { break };
                    source
                        .read_ahead(slot.0, chunk)
                        .map_err(MigrateError::Source)?;
                    asked.push_back(slot);
                }
                let Some((slot, mut buf)) = asked.pop_front() else {
                    break;
                };
                let chunk_read = source
                    .read_chunk(slot, chunk, &mut buf)
                    .map_err(MigrateError::Source)?;
                more &= chunk_read.len() == chunk as usize;
                if full_tx.send(((slot, buf), chunk_read)).is_err() {
                    break;
                }
            }
            Ok(())
        });
        let mut moved = 0u64;
        let mut sent = Ok(());
        // Chunks sent to the destination ahead, oldest first, with their slots.
        let mut sending: VecDeque<(Slot, MigChunk)> = VecDeque::new();
        // Ends when the reader is done (the last chunk, or a failure).
        for (slot, chunk_read) in full_rx.iter() {
            moved += chunk_read.len() as u64;
            let result = match &chunk_read {
                MigChunk::Inline(range) if range.is_empty() => Ok(false),
                MigChunk::Inline(range) => destination.send(&slot.1[range.clone()]).map(|()| false),
                MigChunk::Shared { len: 0, .. } => Ok(false),
                // Bytes the source's server wrote into the shared buffer: the destination's
                // takes them from there, they are not copied here.
                MigChunk::Shared {
                    buffer,
                    offset,
                    len,
                } => destination.send_shared_ahead(buffer, *offset, *len),
            };
            let taken = match result {
                Ok(true) => {
                    sending.push_back((slot, chunk_read));
                    if sending.len() < WRITES_AHEAD {
                        continue;
                    }
                    take_sent(destination, &mut sending)
                }
                Ok(false) => Ok(slot),
                Err(e) => Err(e),
            };
            match taken {
                // The reader may have finished: then the buffer is not needed.
                Ok(slot) => drop(empty_tx.send(slot)),
                Err(e) => {
                    sent = Err(e);
                    break;
                }
            }
        }
        while sent.is_ok() && !sending.is_empty() {
            sent = take_sent(destination, &mut sending).map(drop);
        }
        // Unblocks a reader waiting for a buffer or for room.
        drop(full_rx);
        drop(empty_tx);
        let read = reader
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        read.and(sent).map(|()| moved)
    })
}

/// Waits for the destination to take the oldest chunk sent to it ahead; its slot.
fn take_sent(
    destination: &mut dyn Destination,
    sending: &mut VecDeque<((usize, Vec<u8>), MigChunk)>,
) -> Result<(usize, Vec<u8>), MigrateError> {
    let (slot, chunk) = sending.pop_front().expect("a chunk sent ahead");
    if let MigChunk::Shared {
        buffer,
        offset,
        len,
    } = &chunk
    {
        destination.send_shared(buffer, *offset, *len)?;
    }
    Ok(slot)
}

/// Migrates the state of `source` into `destination`. On success the destination runs and
/// the source is STOP; on failure the source runs again and the destination is put back.
pub fn migrate(
    source: &mut (impl MigratableDevice + Send + ?Sized),
    destination: &mut dyn Destination,
    options: &Options,
    observer: &mut dyn Observer,
) -> Result<Report, MigrateError> {
    let started = Instant::now();
    let flags = source.flags().map_err(MigrateError::Source)?;
    if !flags.contains(MigrationFlags::STOP_COPY) {
        return Err(MigrateError::Unsupported(flags));
    }
    destination.begin()?;
    observer.progress(&Progress::Started { flags });
    let mut rounds = Vec::new();
    let mut stopped_at = None;
    let result = run(
        source,
        destination,
        options,
        observer,
        flags,
        &mut rounds,
        &mut stopped_at,
    );
    match result {
        Ok(stop_copy_bytes) => {
            let downtime = stopped_at.map_or(Duration::ZERO, |t: Instant| t.elapsed());
            observer.progress(&Progress::Resumed);
            if let Err(e) = source.set_state(MigrationState::Stop) {
                tracing::warn!("source left in stop-copy: {e}");
            }
            Ok(Report {
                flags,
                precopy_rounds: rounds,
                stop_copy_bytes,
                downtime,
                total: started.elapsed(),
            })
        }
        Err(e) => {
            destination.abort();
            if let Err(back) = source.set_state(MigrationState::Running) {
                tracing::warn!("source not resumed after a failed migration: {back}");
            }
            Err(e)
        }
    }
}

/// The rounds and the stop-copy; returns the stop-copy bytes.
fn run(
    source: &mut (impl MigratableDevice + Send + ?Sized),
    destination: &mut dyn Destination,
    options: &Options,
    observer: &mut dyn Observer,
    flags: MigrationFlags,
    rounds: &mut Vec<u64>,
    stopped_at: &mut Option<Instant>,
) -> Result<u64, MigrateError> {
    if options.precopy && flags.contains(MigrationFlags::PRE_COPY) {
        source
            .set_state(MigrationState::PreCopy)
            .map_err(MigrateError::Source)?;
        for round in 0..options.max_precopy_rounds {
            let bytes = drain(source, destination)?;
            destination.sync()?;
            observer
                .precopy_round()
                .map_err(MigrateError::Destination)?;
            rounds.push(bytes);
            observer.progress(&Progress::PrecopyRound { round, bytes });
            let growing = rounds.len() > 1 && bytes >= rounds[rounds.len() - 2];
            if bytes <= options.converge_bytes || growing {
                break;
            }
        }
    }
    *stopped_at = Some(Instant::now());
    source
        .set_state(MigrationState::StopCopy)
        .map_err(MigrateError::Source)?;
    let bytes = drain(source, destination)?;
    observer.progress(&Progress::StopCopy { bytes });
    observer.source_stopped().map_err(MigrateError::Abandoned)?;
    destination.finish()?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::migration_driver::CallError;
    use crate::vfio_user::shared_buf::SharedBuffer;

    const CHUNK: u32 = 16;

    /// What every test source answers alike: stop-copy only, any state, nothing to load,
    /// chunks of [`CHUNK`], nothing to put back.
    macro_rules! test_source {
        () => {
            fn flags(&mut self) -> Result<MigrationFlags, CallError> {
                Ok(MigrationFlags::STOP_COPY)
            }
            fn set_state(&mut self, _: MigrationState) -> Result<(), CallError> {
                Ok(())
            }
            fn write(&mut self, _: &[u8]) -> Result<(), CallError> {
                Ok(())
            }
            fn chunk_size(&self) -> u32 {
                CHUNK
            }
            fn recover(&mut self) -> Result<(), CallError> {
                Ok(())
            }
        };
    }

    /// What every test destination answers alike: it begins, syncs and finishes at once.
    macro_rules! test_sink {
        () => {
            fn begin(&mut self) -> Result<(), MigrateError> {
                Ok(())
            }
            fn sync(&mut self) -> Result<(), MigrateError> {
                Ok(())
            }
            fn finish(&mut self) -> Result<(), MigrateError> {
                Ok(())
            }
            fn abort(&mut self) {}
        };
    }

    /// A source of `chunks` full chunks then a short one, failing its read number `fail_at`.
    struct Chunks {
        chunks: usize,
        reads: Arc<AtomicUsize>,
        fail_at: Option<usize>,
    }

    impl MigratableDevice for Chunks {
        test_source!();
        fn read(&mut self, max: u32) -> Result<Vec<u8>, CallError> {
            let n = self.reads.fetch_add(1, Ordering::SeqCst);
            if self.fail_at == Some(n) {
                return Err(CallError {
                    what: "read".into(),
                    source: "broken".into(),
                    errno: libc::EIO,
                    reason: None,
                });
            }
            let len = if n < self.chunks { max as usize } else { 3 };
            Ok(vec![n as u8; len])
        }
    }

    /// A source that reads ahead: `chunks` full chunks then a short one, numbered when they
    /// are asked for; counts the reads out at once.
    #[derive(Default)]
    struct Ahead {
        chunks: usize,
        asked: VecDeque<(usize, usize)>,
        next: usize,
        most_out: usize,
    }

    impl MigratableDevice for Ahead {
        test_source!();
        fn read(&mut self, _: u32) -> Result<Vec<u8>, CallError> {
            panic!("every read is asked ahead");
        }
        fn read_ahead(&mut self, slot: usize, _: u32) -> Result<bool, CallError> {
            self.asked.push_back((slot, self.next));
            self.next += 1;
            self.most_out = self.most_out.max(self.asked.len());
            Ok(true)
        }
        fn read_chunk(
            &mut self,
            slot: usize,
            max: u32,
            buf: &mut Vec<u8>,
        ) -> Result<MigChunk, CallError> {
            let (asked, n) = self.asked.pop_front().expect("a read asked ahead");
            assert_eq!(asked, slot, "reads are taken in the order asked");
            let len = match n.cmp(&self.chunks) {
                std::cmp::Ordering::Less => max as usize,
                std::cmp::Ordering::Equal => 3,
                std::cmp::Ordering::Greater => 0,
            };
            *buf = vec![n as u8; len];
            Ok(MigChunk::Inline(0..len))
        }
    }

    /// A source whose chunks land in a shared buffer, one part per slot: `chunks` full ones,
    /// then a short one, each filled with its number.
    struct SharedChunks {
        buffer: Arc<SharedBuffer>,
        chunks: usize,
        next: usize,
    }

    impl MigratableDevice for SharedChunks {
        test_source!();
        fn read(&mut self, _: u32) -> Result<Vec<u8>, CallError> {
            panic!("every chunk lands in the buffer");
        }
        fn read_chunk(
            &mut self,
            slot: usize,
            max: u32,
            _: &mut Vec<u8>,
        ) -> Result<MigChunk, CallError> {
            let n = self.next;
            self.next += 1;
            let len = if n < self.chunks { max as usize } else { 3 };
            let offset = (slot * CHUNK as usize) as u64;
            self.buffer.copy_in(offset, &vec![n as u8; len]).unwrap();
            Ok(MigChunk::Shared {
                buffer: Arc::clone(&self.buffer),
                offset,
                len,
            })
        }
    }

    /// A destination that takes shared chunks ahead: it notes each when it is sent ahead
    /// and reads it when it is taken (checking that its part of the buffer was left alone
    /// meanwhile), refusing take number `fail_at`; counts the chunks out at once.
    #[derive(Default)]
    struct AheadSink {
        out: VecDeque<(u64, Vec<u8>)>,
        got: Vec<u8>,
        most_out: usize,
        takes: usize,
        fail_at: Option<usize>,
    }

    impl Destination for AheadSink {
        test_sink!();
        fn send(&mut self, _: &[u8]) -> Result<(), MigrateError> {
            panic!("every chunk is shared");
        }
        fn send_shared_ahead(
            &mut self,
            buffer: &Arc<SharedBuffer>,
            offset: u64,
            len: usize,
        ) -> Result<bool, MigrateError> {
            let mut bytes = vec![0; len];
            buffer.copy_out(offset, &mut bytes).unwrap();
            self.out.push_back((offset, bytes));
            self.most_out = self.most_out.max(self.out.len());
            Ok(true)
        }
        fn send_shared(
            &mut self,
            buffer: &Arc<SharedBuffer>,
            offset: u64,
            len: usize,
        ) -> Result<(), MigrateError> {
            let (sent, bytes) = self.out.pop_front().expect("sent ahead");
            assert_eq!(
                (sent, bytes.len()),
                (offset, len),
                "taken in the order sent"
            );
            let mut now = vec![0; len];
            buffer.copy_out(offset, &mut now).unwrap();
            assert_eq!(now, bytes, "the part was read into while its chunk was out");
            self.takes += 1;
            if self.fail_at == Some(self.takes - 1) {
                return Err(MigrateError::Destination("refused".into()));
            }
            self.got.extend_from_slice(&bytes);
            Ok(())
        }
    }

    fn shared_chunks(chunks: usize) -> SharedChunks {
        let len = (PIPELINE_SLOTS * CHUNK as usize).next_multiple_of(4096) as u64;
        SharedChunks {
            buffer: Arc::new(SharedBuffer::create(len).unwrap()),
            chunks,
            next: 0,
        }
    }

    /// What a test source of `chunks` full chunks then a short one sends.
    fn chunks_then_short(chunks: u8) -> Vec<u8> {
        (0..chunks)
            .flat_map(|n| vec![n; CHUNK as usize])
            .chain([chunks; 3])
            .collect()
    }

    /// Keeps what it is sent; refuses its send number `fail_at`.
    #[derive(Default)]
    struct Sink {
        got: Vec<u8>,
        sends: usize,
        fail_at: Option<usize>,
    }

    impl Destination for Sink {
        test_sink!();
        fn send(&mut self, data: &[u8]) -> Result<(), MigrateError> {
            self.sends += 1;
            if self.fail_at == Some(self.sends - 1) {
                return Err(MigrateError::Destination("full".into()));
            }
            self.got.extend_from_slice(data);
            Ok(())
        }
    }

    fn source(chunks: usize, fail_at: Option<usize>) -> (Chunks, Arc<AtomicUsize>) {
        let reads = Arc::new(AtomicUsize::new(0));
        let source = Chunks {
            chunks,
            reads: Arc::clone(&reads),
            fail_at,
        };
        (source, reads)
    }

    #[test]
    fn every_chunk_arrives_in_order_and_reading_stops_at_the_short_one() {
        let (mut source, reads) = source(50, None);
        let mut sink = Sink::default();
        let moved = drain(&mut source, &mut sink).unwrap();
        let expected = chunks_then_short(50);
        assert_eq!(sink.got, expected);
        assert_eq!(moved, expected.len() as u64);
        assert_eq!(reads.load(Ordering::SeqCst), 51);
    }

    #[test]
    fn a_source_that_reads_ahead_has_reads_out_while_chunks_are_sent() {
        let mut source = Ahead {
            chunks: 50,
            ..Ahead::default()
        };
        let mut sink = Sink::default();
        drain(&mut source, &mut sink).unwrap();
        let expected = chunks_then_short(50);
        assert_eq!(sink.got, expected);
        assert_eq!(source.most_out, READS_AHEAD);
        // Nothing is asked for after the short chunk is taken; what was out is taken.
        assert!(source.next < 51 + READS_AHEAD, "{} reads", source.next);
        assert!(source.asked.is_empty());
    }

    #[test]
    fn a_destination_that_takes_chunks_ahead_has_the_next_one_while_it_loads() {
        let mut source = shared_chunks(50);
        let mut sink = AheadSink::default();
        let moved = drain(&mut source, &mut sink).unwrap();
        let expected = chunks_then_short(50);
        assert_eq!(sink.got, expected);
        assert_eq!(moved, expected.len() as u64);
        assert_eq!(sink.most_out, WRITES_AHEAD);
        assert!(sink.out.is_empty(), "every chunk sent ahead was taken");
    }

    #[test]
    fn a_refusal_taken_after_chunks_went_ahead_stops_the_drain() {
        let mut source = shared_chunks(1000);
        let mut sink = AheadSink {
            fail_at: Some(2),
            ..AheadSink::default()
        };
        let e = drain(&mut source, &mut sink).unwrap_err();
        assert!(matches!(e, MigrateError::Destination(_)), "{e}");
        assert_eq!(
            sink.got,
            [vec![0; CHUNK as usize], vec![1; CHUNK as usize]].concat()
        );
        // The source stopped: at most the chunks in flight were read past the refusal.
        assert!(
            source.next <= 3 + PIPELINE_SLOTS + WRITES_AHEAD,
            "{}",
            source.next
        );
    }

    #[test]
    fn a_destination_failure_stops_the_reads_from_the_source() {
        let (mut source, reads) = source(1000, None);
        let mut sink = Sink {
            fail_at: Some(1),
            ..Sink::default()
        };
        let e = drain(&mut source, &mut sink).unwrap_err();
        assert!(matches!(e, MigrateError::Destination(_)), "{e}");
        // The chunk sent, the refused one, and at most those in flight.
        assert!(reads.load(Ordering::SeqCst) <= 2 + PIPELINE_SLOTS + 1);
        assert_eq!(sink.got, vec![0; CHUNK as usize]);
    }

    #[test]
    fn a_source_failure_is_reported_after_what_was_read_is_sent() {
        let (mut source, _) = source(1000, Some(3));
        let mut sink = Sink::default();
        let e = drain(&mut source, &mut sink).unwrap_err();
        assert!(matches!(e, MigrateError::Source(_)), "{e}");
        assert_eq!(sink.got.len(), 3 * CHUNK as usize);
    }
}
