//! `make bench`: what one read of a probe's histograms costs, against
//! series and CPUs (BENCHMARKS.md).
//!
//! For each layout (`--cpus`: the node's possible CPUs, then larger nodes'
//! layouts: the map is laid out for that many CPUs, the kernel fills the
//! ones that exist) and each `--series` count, a syscalls probe follows a
//! child that makes one syscall of each of S unassigned numbers (each
//! `ENOSYS`, each a series of its own). Timed, median of `--reps`:
//!
//! - **copy all**: every histogram of every slot and CPU through the `bpf`
//!   syscall, the bytes the agent copied per read before it mapped the
//!   inbox (then one lookup per slot copied all CPUs; here one per slot and
//!   CPU: the same bytes);
//! - **quiet read**: `Probe::snapshot` when nothing changed since the last;
//! - **busy read**: `Probe::snapshot` after the child made
//!   `--calls-per-series` more calls of every series on every CPU.
//!
//! The last column models a node whose every CPU had events: the busy
//! read's taking, scaled from the CPUs here to the layout's.

use std::{
    io::{BufRead, BufReader, Write},
    process::{Command, Stdio},
    time::Instant,
};

use aya::maps::{Array, Map, MapData};
use ringwarden_crds::ProbeKind;
use ringwarden_e2e::{load_probe, require_bpf_privileges};
use ringwarden_ebpf_common::LatencyHist;
use ringwarden_node_agent::probes::{Probe, ProbeConfig, ReadCost, possible_cpus};

/// Unassigned syscall numbers start well above the last real one.
const FIRST_UNASSIGNED: i64 = 10_000;

fn list(name: &str, default: &[u64]) -> Vec<u64> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map_or_else(
            || default.to_vec(),
            |v| {
                v.split(',')
                    .map(|n| n.parse().unwrap_or_else(|_| panic!("{name}: numbers")))
                    .collect()
            },
        )
}

/// The child: on each line `n k`, makes `k` calls of each syscall
/// `FIRST_UNASSIGNED..+n` on every CPU of the node in turn.
fn child() {
    let stdin = std::io::stdin();
    let mut out = std::io::stdout();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    for line in stdin.lock().lines() {
        let line = line.unwrap();
        let (n, k) = line.trim().split_once(' ').unwrap();
        let (n, k): (i64, u64) = (n.parse().unwrap(), k.parse().unwrap());
        for cpu in 0..cpus {
            ringwarden_e2e::pin_to_cpu(cpu);
            for i in 0..n {
                for _ in 0..k {
                    // SAFETY: an unassigned number; the kernel answers ENOSYS.
                    let r = unsafe { libc::syscall(FIRST_UNASSIGNED + i) };
                    assert_eq!(r, -1);
                }
            }
        }
        writeln!(out, "ok").unwrap();
        out.flush().unwrap();
    }
}

struct Workload {
    child: std::process::Child,
    out: BufReader<std::process::ChildStdout>,
}

impl Workload {
    fn spawn() -> Self {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .arg("--child")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let out = BufReader::new(child.stdout.take().unwrap());
        Self { child, out }
    }

    fn calls(&mut self, n: u64, k: u64) {
        let stdin = self.child.stdin.as_mut().unwrap();
        writeln!(stdin, "{n} {k}").unwrap();
        let mut line = String::new();
        self.out.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "ok");
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn minus(a: ReadCost, b: ReadCost) -> ReadCost {
    ReadCost {
        reads: a.reads - b.reads,
        scanned: a.scanned - b.scanned,
        taken: a.taken - b.taken,
        words: a.words - b.words,
        buckets: a.buckets - b.buckets,
    }
}

/// ms to copy every histogram of the map through the syscall.
fn copy_all(probe: &Probe) -> f64 {
    let id = probe.hist_map_id().expect("the histogram map's id");
    let data = MapData::from_id(id).unwrap();
    let map: Array<MapData, LatencyHist> = Array::try_from(Map::Array(data)).unwrap();
    let started = Instant::now();
    let mut events = 0u64;
    for i in 0..map.len() {
        let h = map.get(&i, 0).unwrap();
        events += h.buckets.iter().sum::<u64>();
    }
    std::hint::black_box(events);
    started.elapsed().as_secs_f64() * 1e3
}

fn main() {
    if std::env::args().any(|a| a == "--child") {
        return child();
    }
    require_bpf_privileges();
    let node = u64::from(possible_cpus().unwrap());
    let layouts = list("--cpus", &[node, 64, 192]);
    let series = list("--series", &[64, 256, 1024]);
    let reps = list("--reps", &[15])[0] as usize;
    let per = list("--calls-per-series", &[16])[0];
    let online = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    println!(
        "histogram reads, median of {reps}; the node has {node} possible CPUs, larger layouts are mapped but only {node} CPUs fill them"
    );
    println!(
        "| layout CPUs | series | map MiB | copy all ms | quiet read ms | busy read ms | busy: histograms taken | busy: buckets taken | copy all ÷ busy read | model: every CPU busy, ms |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for &cpus in &layouts {
        for &s in &series {
            let mut work = Workload::spawn();
            let mut config = ProbeConfig::new(ProbeKind::Syscalls);
            config.pids = vec![work.child.id()];
            // Room for the child's own reads and writes besides the S.
            config.max_series = s as u32 + 8;
            config.hist_cpus = Some(cpus as u32);
            let probe = load_probe(&config);
            // Every series takes its slot; the read takes the first events.
            work.calls(s, per);
            probe.snapshot().unwrap();
            let map_mib = ((s + 9) * cpus * size_of::<LatencyHist>() as u64) as f64 / 1048576.0;

            let copies: Vec<f64> = (0..reps.min(5)).map(|_| copy_all(&probe)).collect();
            let mut quiet = Vec::new();
            let mut busy = Vec::new();
            let mut busy_cost = ReadCost::default();
            for _ in 0..reps {
                let started = Instant::now();
                probe.snapshot().unwrap();
                quiet.push(started.elapsed().as_secs_f64() * 1e3);

                work.calls(s, per);
                let before = probe.read_cost();
                let started = Instant::now();
                probe.snapshot().unwrap();
                busy.push(started.elapsed().as_secs_f64() * 1e3);
                busy_cost = minus(probe.read_cost(), before);
            }
            let snap = probe.snapshot().unwrap();
            assert_eq!(snap.counters.check_identities(), Ok(()));
            // Each of the S series counted every one of its calls.
            let exact = snap
                .series
                .values()
                .filter(|h| h.count() == (reps as u64 + 1) * per * online)
                .count() as u64;
            assert!(exact >= s, "{exact} of {s} series counted exactly");
            let aggregated: u64 = snap.series.values().map(|h| h.count()).sum();
            assert_eq!(
                aggregated, snap.counters.aggregated,
                "every event taken once"
            );
            let (copy, quiet_ms, busy_ms) = (median(copies), median(quiet), median(busy));
            // Taking scales with the CPUs that had events: here `online`
            // of the layout's `cpus`.
            let all_busy = quiet_ms + (busy_ms - quiet_ms).max(0.0) * cpus as f64 / online as f64;
            println!(
                "| {cpus} | {s} | {map_mib:.1} | {copy:.2} | {quiet_ms:.3} | {busy_ms:.3} | {} | {} | {:.0}× | {all_busy:.2} |",
                busy_cost.taken,
                busy_cost.buckets,
                copy / busy_ms
            );
        }
    }
}
