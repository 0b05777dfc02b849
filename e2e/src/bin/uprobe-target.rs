//! A program with one known function, `rw_uprobe_target`, for the uprobe
//! probe's tests: it calls it `--calls N` times, each spinning `--ns X`
//! nanoseconds, times every call itself and prints a JSON `CallReport`.
//!
//! Protocol as `syscall-load`: print `ready`, wait for a line, run.

use std::io::{BufRead, Write};

use ringwarden_e2e::{CallReport, arg, clock_ns};

/// The function the probe times. Exported unmangled and never inlined so
/// the symbol exists and is called.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn rw_uprobe_target(spin_ns: u64) -> u64 {
    let end = clock_ns(libc::CLOCK_MONOTONIC) + spin_ns;
    let mut spins = 0;
    while clock_ns(libc::CLOCK_MONOTONIC) < end {
        spins += 1;
    }
    std::hint::black_box(spins)
}

fn main() {
    let calls = arg("--calls", 100);
    let ns = arg("--ns", 100_000);
    let stdout = std::io::stdout();
    writeln!(stdout.lock(), "ready").unwrap();
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).unwrap();
    let mut durations_ns = Vec::with_capacity(calls as usize);
    for _ in 0..calls {
        let t0 = clock_ns(libc::CLOCK_MONOTONIC);
        std::hint::black_box(rw_uprobe_target(std::hint::black_box(ns)));
        durations_ns.push(clock_ns(libc::CLOCK_MONOTONIC) - t0);
    }
    let report = CallReport {
        pid: std::process::id(),
        durations_ns,
    };
    writeln!(stdout.lock(), "{}", serde_json::to_string(&report).unwrap()).unwrap();
}
