//! `cargo xtask ci | e2e | bench | fuzz | install-extras`: the project's automation, in Rust.

mod bench;
mod ci;
mod cmd;
mod e2e;
mod fuzz;
mod install;
mod layers;
mod peers;
mod qemu;

use std::process::ExitCode;

const USAGE: &str = "usage: cargo xtask <command>

commands:
  ci               everything CI checks: fmt, clippy -D warnings, layers, tests, docs, fuzz build, e2e
  e2e [--kernel RELEASE | nested | migration]
                   boot QEMU guests on the vfio-user server and check its functions from
                   unmodified kernels (Debian sid's and Debian 12's, or the chroot's kernel
                   RELEASE alone), and a real nvme and igb VF through kernel VFIO one VM
                   level down (`nested`: only that part), and a live migration of a guest
                   between two QEMUs built with contrib/qemu's patches (`migration`: only
                   that part) (needs root)
  bench [NAME...]  run the benchmarks (those whose name contains a NAME); prints
                   `BENCH name value unit [ratio=.. vs=..]` lines; `guest_blk`,
                   `nested_nvme` and `qemu_migration_downtime` boot QEMU guests (need
                   root, like e2e); `server` runs
                   libvfio-user's gpio sample beside ours, built once from ../shared/peers
                   (apt installs its build dependencies)
  fuzz [TARGET] [SECONDS]
                   run one fuzz target (or each in turn) for SECONDS (default 60)
  layers           the framework's modules in import order, bottom first; fails when an
                   import runs upward (two modules import each other, directly or not)
  qemu             build QEMU from Debian's source package with the vfio-user migration
                   patches of contrib/qemu/patches, in the e2e chroot (cached; needs root)
  install-extras [PREFIX]
                   build vfio-variant and install its shell completions (bash, zsh, fish)
                   and man pages under PREFIX (default /usr/local)
  capture-configs [OUT_DIR]
                   boot a QEMU guest and save its emulated devices' PCI config spaces
                   (default OUT_DIR: framework/tests/data/pci)
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("ci") => ci::run(),
        Some("bench") => bench::run(&args[1..]),
        Some("fuzz") => fuzz::run(&args[1..]),
        Some("e2e") => e2e::server::run(&args[1..]),
        Some("capture-configs") => e2e::capture::run(&args[1..]),
        Some("install-extras") => install::run(&args[1..]),
        Some("layers") => layers::run(),
        Some("qemu") => qemu::run_command(&args[1..]),
        Some("-h" | "--help" | "help") | None => {
            print!("{USAGE}");
            Ok(())
        }
        Some(other) => Err(format!("unknown command `{other}`\n\n{USAGE}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("xtask: {message}");
            ExitCode::FAILURE
        }
    }
}
