//! `cargo xtask fuzz [TARGET] [SECONDS]`: runs the fuzz targets in fuzz/ with libFuzzer and
//! coverage instrumentation on the stable toolchain (SanitizerCoverage through -C flags).

use crate::cmd::{cargo, run as run_step, workspace_root};

/// The flags cargo-fuzz passes for `--sanitizer none`, all stable.
const COVERAGE_FLAGS: &str = "-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions -Coverflow-checks";

/// The one target installed here.
const HOST_TARGET: &str = "x86_64-unknown-linux-gnu";

fn targets() -> Result<Vec<String>, String> {
    let dir = workspace_root().join("fuzz/fuzz_targets");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .map_err(|e| format!("reading {}: {e}", dir.display()))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            e.path()
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
        })
        .collect();
    names.sort();
    Ok(names)
}

/// Builds the targets with coverage and runs one (or each) for a time.
pub fn run(args: &[String]) -> Result<(), String> {
    let all = targets()?;
    let (chosen, seconds) = match args {
        [] => (all.clone(), 60),
        [one] if one.parse::<u64>().is_ok() => (all.clone(), one.parse().unwrap_or(60)),
        [target] => (vec![target.clone()], 60),
        [target, secs, ..] => (
            vec![target.clone()],
            secs.parse()
                .map_err(|_| format!("`{secs}` is not a number of seconds"))?,
        ),
    };
    for target in &chosen {
        if !all.contains(target) {
            return Err(format!(
                "no fuzz target `{target}` (have: {})",
                all.join(", ")
            ));
        }
    }
    let target_dir = workspace_root().join("fuzz/target/coverage");
    run_step(
        "build fuzz targets with coverage",
        // An explicit --target keeps RUSTFLAGS off build scripts, which cannot link the
        // coverage hooks.
        cargo()
            .args([
                "build",
                "--release",
                "--manifest-path",
                "fuzz/Cargo.toml",
                "--bins",
            ])
            .args(["--target", HOST_TARGET, "--target-dir"])
            .arg(&target_dir)
            .env("RUSTFLAGS", COVERAGE_FLAGS),
    )?;
    for target in &chosen {
        let corpus = workspace_root().join("fuzz/corpus").join(target);
        let seeds = workspace_root().join("fuzz/seeds").join(target);
        std::fs::create_dir_all(&corpus)
            .map_err(|e| format!("creating {}: {e}", corpus.display()))?;
        let binary = target_dir.join(HOST_TARGET).join("release").join(target);
        let mut command = std::process::Command::new(binary);
        command
            .arg(&corpus)
            .arg(format!("-max_total_time={seconds}"))
            // Room for a 4 KiB config space and more.
            .arg("-max_len=16384")
            .arg("-print_final_stats=1")
            .current_dir(workspace_root());
        if seeds.is_dir() {
            command.arg(&seeds);
        }
        run_step(&format!("fuzz {target} for {seconds} s"), &mut command)?;
    }
    Ok(())
}
