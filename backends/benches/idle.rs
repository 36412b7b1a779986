//! `vfio-variant serve` with its default functions, left alone. Prints:
//! - `serve_idle_cpu`: the CPU time all its threads used over 10 s, in percent of one CPU
//!   (from each thread's `/proc/PID/task/TID/schedstat`, in nanoseconds);
//! - `serve_idle_wakeups_per_second`: how often its threads were switched in over the same
//!   time (their voluntary and involuntary context switches).
//!
//! An idle server waits on events only: both figures should stay near zero.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_vfio-variant");
/// How long the server is watched.
const WATCH: Duration = Duration::from_secs(10);
/// Time for start-up work (functions created, threads parked) before watching.
const SETTLE: Duration = Duration::from_secs(2);

/// CPU nanoseconds and context switches of all threads of process `pid`.
fn usage(pid: u32) -> (u64, u64) {
    let tasks = Path::new("/proc").join(pid.to_string()).join("task");
    let (mut cpu, mut switches) = (0, 0);
    for task in std::fs::read_dir(&tasks)
        .expect("the server's threads")
        .flatten()
    {
        let dir = task.path();
        // A thread that ended meanwhile counts no more.
        if let Ok(stat) = std::fs::read_to_string(dir.join("schedstat")) {
            cpu += stat
                .split_whitespace()
                .next()
                .and_then(|ns| ns.parse::<u64>().ok())
                .unwrap_or(0);
        }
        if let Ok(status) = std::fs::read_to_string(dir.join("status")) {
            switches += status
                .lines()
                .filter(|l| l.contains("ctxt_switches:"))
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum::<u64>();
        }
    }
    (cpu, switches)
}

fn command(top: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(BIN);
    command
        .arg("--run-dir")
        .arg(top.join("run"))
        .arg("--state-dir")
        .arg(top.join("state"))
        .args(args)
        .env("TMPDIR", top.join("tmp"))
        .env_remove("VFIO_VARIANT_VIRTIO_DIR")
        .env_remove("VFIO_VARIANT_RUN_DIR")
        .env_remove("VFIO_VARIANT_STATE_DIR");
    command
}

fn main() {
    let top: PathBuf =
        std::env::temp_dir().join(format!("vfio-variant-bench-idle-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&top);
    std::fs::create_dir_all(top.join("tmp")).expect("a temporary directory");
    let mut server = command(&top, &["serve"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("vfio-variant serve");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !command(&top, &["list"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
    {
        assert!(Instant::now() < deadline, "the server did not come up");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(SETTLE);
    let (cpu0, switches0) = usage(server.id());
    let start = Instant::now();
    std::thread::sleep(WATCH);
    let (cpu1, switches1) = usage(server.id());
    let elapsed = start.elapsed().as_secs_f64();
    let _ = server.kill();
    let _ = server.wait();
    let _ = std::fs::remove_dir_all(&top);
    let percent = cpu1.saturating_sub(cpu0) as f64 / 1e9 / elapsed * 100.0;
    let wakeups = switches1.saturating_sub(switches0) as f64 / elapsed;
    println!("BENCH serve_idle_cpu {percent:.3} %");
    println!("BENCH serve_idle_wakeups_per_second {wakeups:.1} /s");
}
