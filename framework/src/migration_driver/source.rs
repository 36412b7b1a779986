//! The source side: pre-copy rounds until they converge, stop-copy, and the downtime.

use std::time::{Duration, Instant};

use super::destination::Destination;
use super::{MigratableDevice, MigrateError};
use crate::migration::{MigrationFlags, MigrationState};

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

/// Reads what the source has now (all of it in stop-copy) and sends it on.
fn drain(
    source: &mut (impl MigratableDevice + ?Sized),
    destination: &mut dyn Destination,
) -> Result<u64, MigrateError> {
    let chunk = source.chunk_size();
    let mut moved = 0u64;
    // One buffer for every read: no fresh pages per chunk.
    let mut buf = Vec::new();
    loop {
        let range = source
            .read_into(chunk, &mut buf)
            .map_err(MigrateError::Source)?;
        let data = &buf[range];
        moved += data.len() as u64;
        if !data.is_empty() {
            destination.send(data)?;
        }
        if data.len() < chunk as usize {
            return Ok(moved);
        }
    }
}

/// Migrates the state of `source` into `destination`. On success the destination runs and
/// the source is STOP; on failure the source runs again and the destination is put back.
pub fn migrate(
    source: &mut (impl MigratableDevice + ?Sized),
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
    source: &mut (impl MigratableDevice + ?Sized),
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
