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
//! (MB/s are 10^6 bytes per second.) Usage:
//! `blkbench [--rand-seconds S] [--seq-seconds S] [--seq-block BYTES] [--seed N] DEVICE`.

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
}

const USAGE: &str =
    "usage: blkbench [--rand-seconds S] [--seq-seconds S] [--seq-block BYTES] [--seed N] DEVICE";

fn parse(args: &[String]) -> Result<Options, String> {
    let mut options = Options {
        device: String::new(),
        rand: Duration::from_secs(3),
        seq: Duration::from_secs(3),
        seq_block: 1 << 20,
        seed: 0x5eed_b10c,
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

/// Reads 4 KiB blocks at random for `duration`; returns (reads, seconds).
fn random_reads(file: &File, size: u64, options: &Options) -> Result<(u64, f64), String> {
    let blocks = size / BLOCK as u64;
    let mut rng = Rng::new(options.seed);
    let mut buffer = Aligned::new(BLOCK);
    let start = Instant::now();
    let mut reads = 0u64;
    while start.elapsed() < options.rand {
        let offset = rng.next() % blocks * BLOCK as u64;
        file.read_exact_at(buffer.get(BLOCK), offset)
            .map_err(|e| format!("{}: read 4 KiB at {offset}: {e}", options.device))?;
        reads += 1;
    }
    Ok((reads, start.elapsed().as_secs_f64()))
}

/// Reads large blocks in order, wrapping at the end, for `duration`; returns (bytes, seconds).
fn sequential_reads(file: &File, size: u64, options: &Options) -> Result<(u64, f64), String> {
    let block = options.seq_block as u64;
    let mut buffer = Aligned::new(options.seq_block);
    let start = Instant::now();
    let (mut offset, mut bytes) = (0u64, 0u64);
    while start.elapsed() < options.seq {
        if offset >= size {
            offset = 0;
        }
        let len = block.min(size - offset) as usize;
        file.read_exact_at(buffer.get(len), offset)
            .map_err(|e| format!("{}: read {len} bytes at {offset}: {e}", options.device))?;
        offset += len as u64;
        bytes += len as u64;
    }
    Ok((bytes, start.elapsed().as_secs_f64()))
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
    let (ios, rand_seconds) = random_reads(&file, size, options)?;
    let (bytes, seq_seconds) = sequential_reads(&file, size, options)?;
    println!(
        "BLKBENCH dev={} randread_iops={:.1} randread_ios={ios} seq_mbps={:.2} seq_bytes={bytes} \
         seed={}",
        options.device,
        ios as f64 / rand_seconds,
        bytes as f64 / seq_seconds / 1e6,
        options.seed
    );
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
        assert!(parse(&[]).is_err());
        assert!(parse(&["--seq-block".into(), "100".into(), "/dev/vda".into()]).is_err());
    }
}
