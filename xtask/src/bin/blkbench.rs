//! `blkbench`: the guest side of the block benchmark of `cargo xtask bench`.
//!
//! Built as a static executable and put into the guest's initramfs (see
//! `xtask/src/e2e/blkbench.rs`). It opens a block device with `O_DIRECT` (so the guest's page
//! cache is out of the way and every read is a request to the device) and reads it, one request
//! at a time (queue depth 1):
//!
//! - 4 KiB reads at random 4 KiB-aligned offsets (xorshift64* with a fixed seed, so every run
//!   reads the same sequence of blocks) for a fixed time;
//! - sequential reads of large blocks (1 MiB by default) from the start of the device, wrapping
//!   around at its end, for a fixed time.
//!
//! It prints one line:
//!
//! ```text
//! BLKBENCH dev=/dev/vda randread_iops=1234.5 randread_ios=6172 seq_mbps=56.7 seq_bytes=170917888
//! ```
//!
//! (MB/s are 10^6 bytes per second.) With `--calibrate N`, each phase runs in ten slices with a
//! fixed CPU loop of N iterations after each, and the line also gives the loop's mean time in
//! each phase (`randread_calibration_ms`, `seq_calibration_ms`): where the guest's speed moves
//! with its host's load, a figure per second times that time does not. Usage:
//! `blkbench [--rand-seconds S] [--seq-seconds S] [--seq-block BYTES] [--seed N]
//! [--calibrate N] DEVICE`.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Size of a random read, and the alignment of every offset and buffer.
const BLOCK: usize = 4096;

/// What to run, from the command line.
struct Options {
    device: String,
    rand: Duration,
    seq: Duration,
    seq_block: usize,
    seed: u64,
    /// Iterations of the calibration loop run after each tenth of a phase (0: none).
    calibrate: u64,
}

const USAGE: &str = "usage: blkbench [--rand-seconds S] [--seq-seconds S] [--seq-block BYTES] \
                     [--seed N] [--calibrate ITERATIONS] DEVICE";

/// Each phase runs in this many slices, a calibration loop after each.
const SLICES: u32 = 10;

fn parse(args: &[String]) -> Result<Options, String> {
    let mut options = Options {
        device: String::new(),
        rand: Duration::from_secs(3),
        seq: Duration::from_secs(3),
        seq_block: 1 << 20,
        seed: 0x5eed_b10c,
        calibrate: 0,
    };
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let mut value = || {
            args.next()
                .ok_or_else(|| format!("{arg} needs a value\n{USAGE}"))
        };
        let seconds = |v: &String| {
            v.parse::<f64>()
                .ok()
                .filter(|s| s.is_finite() && *s > 0.0)
                .map(Duration::from_secs_f64)
                .ok_or_else(|| format!("{arg}: not a positive number of seconds: {v}"))
        };
        match arg.as_str() {
            "--rand-seconds" => options.rand = seconds(value()?)?,
            "--seq-seconds" => options.seq = seconds(value()?)?,
            "--seq-block" => {
                let v = value()?;
                options.seq_block = v
                    .parse()
                    .ok()
                    .filter(|b| *b > 0 && b % BLOCK == 0)
                    .ok_or_else(|| format!("--seq-block: not a multiple of {BLOCK}: {v}"))?;
            }
            "--seed" => {
                let v = value()?;
                options.seed = v
                    .parse()
                    .map_err(|_| format!("--seed: not a number: {v}"))?;
            }
            "--calibrate" => {
                let v = value()?;
                options.calibrate = v
                    .parse()
                    .map_err(|_| format!("--calibrate: not a number: {v}"))?;
            }
            device if !device.starts_with('-') && options.device.is_empty() => {
                options.device = device.to_string();
            }
            other => return Err(format!("unexpected argument `{other}`\n{USAGE}")),
        }
    }
    if options.device.is_empty() {
        return Err(USAGE.to_string());
    }
    Ok(options)
}

/// xorshift64*: small, fast and the same on every run for the same seed.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        // Zero is xorshift's fixed point.
        Rng(seed.max(1))
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// A buffer of `len` bytes aligned to [`BLOCK`], as `O_DIRECT` needs, carved out of a larger
/// vector.
struct Aligned {
    storage: Vec<u8>,
    start: usize,
    len: usize,
}

impl Aligned {
    fn new(len: usize) -> Self {
        let storage = vec![0u8; len + BLOCK];
        let start = storage.as_ptr().align_offset(BLOCK);
        Aligned {
            storage,
            start,
            len,
        }
    }

    fn get(&mut self, len: usize) -> &mut [u8] {
        &mut self.storage[self.start..self.start + len.min(self.len)]
    }
}

/// Seconds a fixed amount of CPU work takes now: where the guest's speed moves with its host's
/// load (a guest under TCG on a shared machine), figures per second times this do not.
fn calibration(iterations: u64) -> f64 {
    let start = Instant::now();
    let mut rng = Rng::new(iterations);
    let mut sum = 0u64;
    for _ in 0..iterations {
        sum = sum.wrapping_add(rng.next());
    }
    std::hint::black_box(sum);
    start.elapsed().as_secs_f64()
}

/// What one phase did: units (reads or bytes) in `seconds` of reading, and the mean seconds of
/// the calibration runs between its slices (0 without calibration).
struct Phase {
    units: u64,
    seconds: f64,
    calibration: f64,
}

/// Runs `step` (one read; returns its units) for `duration`, in [`SLICES`] slices with a
/// calibration run after each when asked for; only the reading counts as time.
fn phase(
    duration: Duration,
    calibrate: u64,
    mut step: impl FnMut() -> Result<u64, String>,
) -> Result<Phase, String> {
    let slices = if calibrate == 0 { 1 } else { SLICES };
    let slice = duration / slices;
    let (mut units, mut seconds, mut calibration_total) = (0u64, 0f64, 0f64);
    for _ in 0..slices {
        let start = Instant::now();
        while start.elapsed() < slice {
            units += step()?;
        }
        seconds += start.elapsed().as_secs_f64();
        if calibrate != 0 {
            calibration_total += calibration(calibrate);
        }
    }
    Ok(Phase {
        units,
        seconds,
        calibration: calibration_total / f64::from(slices),
    })
}

/// Reads 4 KiB blocks at random for `duration` (units: reads).
fn random_reads(file: &File, size: u64, options: &Options) -> Result<Phase, String> {
    let blocks = size / BLOCK as u64;
    let mut rng = Rng::new(options.seed);
    let mut buffer = Aligned::new(BLOCK);
    phase(options.rand, options.calibrate, || {
        let offset = rng.next() % blocks * BLOCK as u64;
        file.read_exact_at(buffer.get(BLOCK), offset)
            .map_err(|e| format!("{}: read 4 KiB at {offset}: {e}", options.device))?;
        Ok(1)
    })
}

/// Reads large blocks in order, wrapping at the end, for `duration` (units: bytes).
fn sequential_reads(file: &File, size: u64, options: &Options) -> Result<Phase, String> {
    let block = options.seq_block as u64;
    let mut buffer = Aligned::new(options.seq_block);
    let mut offset = 0u64;
    phase(options.seq, options.calibrate, || {
        if offset >= size {
            offset = 0;
        }
        let len = block.min(size - offset) as usize;
        file.read_exact_at(buffer.get(len), offset)
            .map_err(|e| format!("{}: read {len} bytes at {offset}: {e}", options.device))?;
        offset += len as u64;
        Ok(len as u64)
    })
}

fn run(options: &Options) -> Result<(), String> {
    let mut file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(&options.device)
        .map_err(|e| format!("cannot open {} with O_DIRECT: {e}", options.device))?;
    let size = file
        .seek(SeekFrom::End(0))
        .map_err(|e| format!("{}: cannot find its size: {e}", options.device))?;
    if size < options.seq_block.max(BLOCK) as u64 {
        return Err(format!(
            "{} is too small ({size} bytes) for {}-byte reads",
            options.device, options.seq_block
        ));
    }
    let rand = random_reads(&file, size, options)?;
    let seq = sequential_reads(&file, size, options)?;
    let mut line = format!(
        "BLKBENCH dev={} randread_iops={:.1} randread_ios={} seq_mbps={:.2} seq_bytes={} seed={}",
        options.device,
        rand.units as f64 / rand.seconds,
        rand.units,
        seq.units as f64 / seq.seconds / 1e6,
        seq.units,
        options.seed
    );
    if options.calibrate != 0 {
        line += &format!(
            " randread_calibration_ms={:.3} seq_calibration_ms={:.3}",
            rand.calibration * 1e3,
            seq.calibration * 1e3
        );
    }
    println!("{line}");
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match parse(&args).and_then(|options| run(&options)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("blkbench: {message}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sequence_is_fixed_by_the_seed() {
        let (mut a, mut b) = (Rng::new(7), Rng::new(7));
        let first: Vec<u64> = (0..4).map(|_| a.next()).collect();
        assert_eq!(first, (0..4).map(|_| b.next()).collect::<Vec<_>>());
        assert_ne!(first[0], Rng::new(8).next());
        assert_ne!(Rng::new(0).next(), 0);
    }

    #[test]
    fn a_calibrated_phase_counts_only_its_reading_time() {
        let mut steps = 0u64;
        let phase = phase(Duration::from_millis(20), 10_000, || {
            steps += 1;
            std::thread::sleep(Duration::from_micros(200));
            Ok(2)
        })
        .unwrap();
        assert_eq!(phase.units, 2 * steps);
        assert!(phase.calibration > 0.0);
        assert!(
            phase.seconds >= 0.02 && phase.seconds < 1.0,
            "{}",
            phase.seconds
        );
        let plain = super::phase(Duration::from_millis(5), 0, || Ok(1)).unwrap();
        assert_eq!(plain.calibration, 0.0);
    }

    #[test]
    fn buffers_are_aligned() {
        let mut buffer = Aligned::new(3 * BLOCK);
        assert_eq!(buffer.get(BLOCK).as_ptr() as usize % BLOCK, 0);
        assert_eq!(buffer.get(usize::MAX).len(), 3 * BLOCK);
    }

    #[test]
    fn options_are_parsed() {
        let args: Vec<String> = ["--rand-seconds", "1.5", "--seq-block", "65536", "/dev/vdb"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let options = parse(&args).unwrap();
        assert_eq!(options.device, "/dev/vdb");
        assert_eq!(options.rand, Duration::from_millis(1500));
        assert_eq!(options.seq_block, 65536);
        assert_eq!(options.calibrate, 0);
        assert!(parse(&[]).is_err());
        assert!(parse(&["--seq-block".into(), "100".into(), "/dev/vda".into()]).is_err());
        let calibrated = parse(&["--calibrate".into(), "1000".into(), "/dev/vda".into()]).unwrap();
        assert_eq!(calibrated.calibrate, 1000);
        assert!(parse(&["--calibrate".into(), "x".into(), "/dev/vda".into()]).is_err());
    }
}
