//! `make bench`: what the syscalls probe adds to each probed syscall.
//!
//! Runs `syscall-load --getppid N --cpu 0` alternately without a probe,
//! with the syscalls probe attached system-wide (no filter, as the reference
//! probes run) on the aggregation path, and with every event exported
//! through a planner-sized ring drained on a timer from CPU 1; reports
//! thread-CPU ns per call: median and range over the repetitions, and the
//! difference of the medians. Alternating runs in one process keeps the
//! baseline and the probes under the same conditions. Then measures the
//! consumer: ring read + decode + histogram per record.

use std::{
    io::{BufRead, BufReader, Write},
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use ringwarden_core::planner::{self, EVENT_BYTES, PlanInput, ProbeDemand};
use ringwarden_crds::ProbeKind;
use ringwarden_e2e::{LoadReport, arg, clock_ns, load_probe, pin_to_cpu, require_bpf_privileges};
use ringwarden_node_agent::probes::{Export, Probe, ProbeConfig, page_size};

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

/// Drains a probe's ring every `period` on its own thread (as the agent
/// does), until stopped; returns the probe and the records read.
fn drain_in_background(
    mut probe: Probe,
    period: Duration,
) -> (Arc<AtomicBool>, std::thread::JoinHandle<(Probe, u64)>) {
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let handle = std::thread::spawn(move || {
        // The consumer runs on the other CPU, like the reference loader.
        pin_to_cpu(1);
        let mut n = 0;
        loop {
            let done = s.load(Ordering::Relaxed);
            n += probe.drain(|ev| {
                std::hint::black_box(ev);
            });
            if done {
                return (probe, n);
            }
            std::thread::sleep(period);
        }
    });
    (stop, handle)
}

/// CPUs the kernel may run programs on.
fn cpus() -> u64 {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_NPROCESSORS_CONF) }.max(1) as u64
}

fn row(name: &str, (m, lo, hi): (f64, f64, f64)) {
    println!("{name:<34} {m:>8.1} {lo:>8.1} - {hi:<8.1}");
}

fn main() {
    require_bpf_privileges();
    let calls = arg("--calls", 3_000_000);
    let reps = arg("--reps", 5);
    let drain_ms = arg("--drain-ms", 10);
    let (mut base, mut aggregated, mut streamed) = (Vec::new(), Vec::new(), Vec::new());
    let mut counted = 0;
    let mut stream_drops = 0;
    let mut stream_received = 0;
    let mut ring_bytes = 0;
    for _ in 0..reps {
        let b = run_load(calls);
        base.push(b);

        let probe = load_probe(&ProbeConfig::new(ProbeKind::Syscalls));
        aggregated.push(run_load(calls));
        counted = probe
            .snapshot()
            .unwrap()
            .series
            .get("getppid")
            .map_or(0, |h| h.count());
        drop(probe);

        // The event path at full production rate, on a ring the planner
        // sizes for that rate and this drain interval.
        let rate = 1e9 / b;
        let mut demand = ProbeDemand::new("sys", EVENT_BYTES, rate, 0.0);
        demand.drain_interval = Duration::from_millis(drain_ms);
        let plan = planner::plan(&PlanInput {
            page_size: page_size().into(),
            node_budget_bytes: 1 << 30,
            max_bytes_per_probe: planner::DEFAULT_MAX_BYTES_PER_PROBE,
            probes: vec![demand],
        })
        .expect("a plan");
        ring_bytes = plan.probes[0].ring_bytes;
        let mut config = ProbeConfig::new(ProbeKind::Syscalls);
        config.export = Export::All;
        config.ring_bytes = ring_bytes as u32;
        let probe = load_probe(&config);
        let (stop, drainer) = drain_in_background(
            probe,
            Duration::from_millis(drain_ms / 2).max(Duration::from_millis(1)),
        );
        streamed.push(run_load(calls));
        stop.store(true, Ordering::Relaxed);
        let (probe, received) = drainer.join().unwrap();
        let c = probe.snapshot().unwrap().counters;
        stream_drops = c.ringbuf_dropped;
        stream_received = received;
        // The probe is still attached system-wide, so the identity holds up
        // to the events in flight while the counters are read: at most one
        // per CPU (either way, as the fields are copied one after another).
        let in_flight = c.exported.abs_diff(c.delivered + c.ringbuf_dropped);
        assert!(in_flight <= cpus(), "{c:?}");
    }
    let (b, a, s) = (summary(base), summary(aggregated), summary(streamed));
    println!("syscalls probe: thread-CPU ns per getppid, {reps} reps of {calls} calls on CPU 0");
    println!("{:<34} {:>8} {:>18}", "variant", "median", "range");
    row("base (no probe)", b);
    row("aggregation path (histograms)", a);
    row("event path (export all)", s);
    println!("added ns per syscall, aggregation path: {:+.1}", a.0 - b.0);
    println!(
        "added ns per syscall, event path: {:+.1} (ring {} KiB from the planner for {:.0} ev/s, \
         drained every {} ms; last run: {stream_received} records read, {stream_drops} dropped)",
        s.0 - b.0,
        ring_bytes >> 10,
        1e9 / b.0,
        drain_ms / 2
    );
    println!("getppid calls counted in the last aggregation run: {counted} (issued {calls})");
    consumer_bench(calls);
}

/// User-space cost per record: decode + add to a histogram, over records
/// the kernel wrote in a burst (nothing drained during it), then over the
/// same number of records in memory (no ring at all).
fn consumer_bench(calls: u64) {
    let mut config = ProbeConfig::new(ProbeKind::Syscalls);
    config.export = Export::All;
    config.ring_bytes = 1 << 30; // holds the whole burst
    let mut probe = load_probe(&config);
    run_load(calls);
    let mut h = ringwarden_core::histogram::Histogram::new();
    let cpu0 = clock_ns(libc::CLOCK_THREAD_CPUTIME_ID);
    let n = probe.drain(|ev| h.record(ev.latency_ns));
    let ring_ns = (clock_ns(libc::CLOCK_THREAD_CPUTIME_ID) - cpu0) as f64 / n as f64;
    assert_eq!(probe.snapshot().unwrap().counters.ringbuf_dropped, 0);

    let ev = ringwarden_ebpf_common::Event {
        magic: ringwarden_ebpf_common::EVENT_MAGIC,
        latency_ns: 1234,
        ..Default::default()
    };
    // SAFETY: plain integers without padding.
    let bytes: [u8; size_of::<ringwarden_ebpf_common::Event>()] =
        unsafe { std::mem::transmute_copy(&ev) };
    let mut h2 = ringwarden_core::histogram::Histogram::new();
    let cpu0 = clock_ns(libc::CLOCK_THREAD_CPUTIME_ID);
    for _ in 0..n {
        let e = ringwarden_ebpf_common::event::decode(std::hint::black_box(&bytes)).unwrap();
        h2.record(e.latency_ns);
    }
    let mem_ns = (clock_ns(libc::CLOCK_THREAD_CPUTIME_ID) - cpu0) as f64 / n as f64;
    println!(
        "consumer, {n} records: ring read + decode + histogram {ring_ns:.1} ns/record \
         ({:.1} M records/s); decode + histogram alone {mem_ns:.1} ns/record ({:.1} M records/s)",
        1e3 / ring_ns,
        1e3 / mem_ns
    );
}
