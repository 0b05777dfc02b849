//! A program with one known function, `rw_uprobe_target`, for the uprobe
//! probe's tests: it calls it `--calls N` times, each spinning `--ns X`
//! nanoseconds, times every call itself and prints a JSON `CallReport`.
//!
//! With `--bench N` it instead calls the leaf `rw_uprobe_add` N times and
//! prints the mean ns per call (`bench-go`'s uprobe + uretprobe peer).
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

/// The benchmark's traced function (`--bench N`): a leaf, as `main.add`
/// in the Go benchmark target, so the probes' cost is all there is.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn rw_uprobe_add(a: u64, b: u64) -> u64 {
    a.wrapping_add(b)
}

fn main() {
    let bench = arg("--bench", 0);
    if bench > 0 {
        let stdout = std::io::stdout();
        writeln!(stdout.lock(), "ready").unwrap();
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line).unwrap();
        let t0 = clock_ns(libc::CLOCK_MONOTONIC);
        let mut s = 0;
        for i in 0..bench {
            s = rw_uprobe_add(std::hint::black_box(s), i);
        }
        let elapsed = clock_ns(libc::CLOCK_MONOTONIC) - t0;
        std::hint::black_box(s);
        let report =
            serde_json::json!({"calls": bench, "ns_per_call": elapsed as f64 / bench as f64});
        writeln!(stdout.lock(), "{report}").unwrap();
        return;
    }
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
