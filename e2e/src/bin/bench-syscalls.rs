//! `make bench`: what the syscalls probe adds to each probed syscall.
//!
//! Runs `syscall-load --getppid N --cpu 0` alternately without a probe and
//! with the syscalls probe attached system-wide (no filter, as the reference
//! probes run), and reports thread-CPU ns per call: median and range over
//! the repetitions, and the difference of the medians. Alternating runs in
//! one process keeps the baseline and the probe under the same conditions.

use std::{
    io::{BufRead, BufReader, Write},
    process::{Command, Stdio},
};

use ringwarden_e2e::{LoadReport, require_bpf_privileges};
use ringwarden_crds::ProbeKind;
use ringwarden_e2e::load_probe;
use ringwarden_node_agent::probes::ProbeConfig;

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map_or(default, |v| v.parse().expect("a number"))
}

/// One run of the load; returns ns of thread CPU per getppid.
fn run_load(calls: u64) -> f64 {
    let exe = std::env::current_exe()
        .unwrap()
        .with_file_name("syscall-load");
    let mut child = Command::new(&exe)
        .args(["--getppid", &calls.to_string(), "--cpu", "0"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", exe.display()));
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    child.stdin.take().unwrap().write_all(b"go\n").unwrap();
    line.clear();
    out.read_line(&mut line).unwrap();
    assert!(child.wait().unwrap().success());
    let report: LoadReport = serde_json::from_str(&line).unwrap();
    report.getppid_cpu_ns as f64 / calls as f64
}

fn summary(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

fn main() {
    require_bpf_privileges();
    let calls = arg("--calls", 3_000_000);
    let reps = arg("--reps", 5);
    let (mut base, mut probed) = (Vec::new(), Vec::new());
    let mut counted = 0;
    for _ in 0..reps {
        base.push(run_load(calls));
        let probe = load_probe(&ProbeConfig::new(ProbeKind::Syscalls));
        probed.push(run_load(calls));
        let snap = probe.snapshot().unwrap();
        counted = snap
            .series
            .get("getppid")
            .map_or(0, |h| h.count());
    }
    let (b, bmin, bmax) = summary(base);
    let (p, pmin, pmax) = summary(probed);
    println!(
        "syscalls probe, aggregation path: thread-CPU ns per getppid, {reps} reps of {calls} calls on CPU 0"
    );
    println!("{:<28} {:>8} {:>18}", "variant", "median", "range");
    println!(
        "{:<28} {:>8.1} {:>8.1} - {:<8.1}",
        "base (no probe)", b, bmin, bmax
    );
    println!(
        "{:<28} {:>8.1} {:>8.1} - {:<8.1}",
        "ringwarden syscalls probe", p, pmin, pmax
    );
    println!("added ns per syscall: {:+.1}", p - b);
    println!("getppid calls counted in the last probed run: {counted} (issued {calls})");
}
