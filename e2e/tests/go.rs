//! Go programs, traced live: function latency from plain uprobes at the
//! entry and every return of a Go function, paired by goroutine, and the
//! Go runtime's own pauses (`goRuntime`).
//!
//! The traced program (`e2e/go/target`) is built here with Debian's Go
//! (`golang-1.19-go`, installed by `make deps`), once with its symbol table
//! and once stripped (`-ldflags=-s -w`, functions then come from
//! `.gopclntab`). Ground truth is what the program measures of itself:
//! its own timing of every call, and `runtime/metrics`.

use std::{
    path::{Path, PathBuf},
    sync::OnceLock,
};

use ringwarden_core::histogram::MAX_RELATIVE_ERROR;
use ringwarden_crds::ProbeKind;
use ringwarden_e2e::{
    exact_percentile,
    go::{self, GoChild},
    load_probe, require_bpf_privileges, wait_until,
};
use ringwarden_node_agent::probes::{Probe, ProbeConfig, Snapshot, process_alive};
use serde_json::Value;

/// The tests of this file run one at a time: they time calls against the
/// program's own clock, which waits for a CPU whenever another test runs.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The traced program, built once per test binary: (with symbols, stripped).
fn binaries() -> &'static (PathBuf, PathBuf) {
    static BUILT: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    BUILT
        .get_or_init(|| go::build_target(&Path::new(env!("CARGO_TARGET_TMPDIR")).join("go-target")))
}

/// A uprobe probe on `function` of `bin`, observing only `pid`.
fn function_probe(bin: &Path, function: &str, pid: u32) -> Probe {
    let mut config = ProbeConfig::new(ProbeKind::Uprobe);
    config.uprobe = Some((bin.display().to_string(), function.to_string()));
    config.pids = vec![pid];
    load_probe(&config)
}

/// A function's calls, checked: the accounting identities hold exactly.
fn settled(probe: &mut Probe, function: &str, observed: u64) -> Snapshot {
    let snap = wait_until(
        &format!("{function} counts {observed} calls"),
        || {
            probe.sweep_exited(process_alive);
            probe.snapshot().unwrap()
        },
        |s| s.counters.observed >= observed,
    );
    assert_eq!(snap.counters.check_identities(), Ok(()), "{function}");
    assert_eq!(
        snap.counters.observed, observed,
        "{function}: every call observed once"
    );
    snap
}

fn u64_of(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("report has no {key}: {v}"))
}

/// Calls from many goroutines, which block and yield mid-call so they
/// resume on other threads: counted exactly, timed as the program times
/// them.
fn times_calls_exactly(bin: &Path) {
    require_bpf_privileges();
    let _serial = serial();
    let child = GoChild::spawn(bin, &["calls", "8", "150"], &[("GOMAXPROCS", "2")]);
    let mut work = function_probe(bin, "main.work", child.pid());
    let mut handle = function_probe(bin, "main.(*Server).handle", child.pid());
    let report = child.run();
    assert!(u64_of(&report, "gomaxprocs") >= 2);
    let calls = u64_of(&report, "calls");
    assert_eq!(calls, 8 * 150);
    // Pairing by thread would lose these; by goroutine none is lost.
    assert!(
        u64_of(&report, "migrated") > 0,
        "no call moved to another thread: the test proves nothing ({report})"
    );
    let snap = settled(&mut work, "main.work", calls);
    assert_eq!(snap.counters.pairing_dropped, 0);
    assert_eq!(snap.counters.start_map_full, 0);
    let h = &snap.series["main.work"];
    assert_eq!(h.count(), calls);
    let durations: Vec<u64> = report["durations_ns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_u64().unwrap())
        .collect();
    // The program's timing also holds the two uprobe traps and its clock
    // reads (a few microseconds, BENCHMARKS.md), and any wait for a CPU
    // between the return and its clock read: 8 goroutines share 2 CPUs.
    const MARGIN_NS: f64 = 50_000.0;
    for q in [0.5, 0.99] {
        let truth = exact_percentile(&durations, q) as f64;
        let measured = h.percentile(q).unwrap() as f64;
        assert!(
            (measured - truth).abs() <= truth * MAX_RELATIVE_ERROR + MARGIN_NS,
            "p{}: probe {measured} ns, program {truth} ns",
            q * 100.0
        );
    }
    let snap = settled(&mut handle, "main.(*Server).handle", 1000);
    assert_eq!(snap.series["main.(*Server).handle"].count(), 1000);
    assert_eq!(snap.counters.pairing_dropped, 0);
}

#[test]
fn a_go_function_is_timed_exactly_across_threads() {
    times_calls_exactly(&binaries().0);
}

#[test]
fn a_stripped_go_function_is_timed_exactly_across_threads() {
    times_calls_exactly(&binaries().1);
}

/// The report of a workload's run, without what differs between runs.
fn outcome(mut report: Value) -> Value {
    let o = report.as_object_mut().unwrap();
    o.remove("pid");
    o.remove("gomaxprocs");
    report
}

#[test]
fn hostile_go_functions_never_break_the_target_and_are_counted_exactly() {
    require_bpf_privileges();
    let _serial = serial();
    let bin = &binaries().0;
    const ROUNDS: u64 = 50;
    let rounds = ROUNDS.to_string();
    let env = [("GOMAXPROCS", "2")];
    let untraced = outcome(GoChild::spawn(bin, &["hostile", &rounds], &env).run());

    let child = GoChild::spawn(bin, &["hostile", &rounds], &env);
    let pid = child.pid();
    let mut probes: Vec<(&str, Probe)> = [
        "main.recurse",
        "main.grow",
        "main.mayPanic",
        "main.exitEarly",
        "main.blockOn",
    ]
    .into_iter()
    .map(|f| (f, function_probe(bin, f, pid)))
    .collect();
    let traced = outcome(child.run());
    // Same output as without probes, and a normal exit (checked in run).
    assert_eq!(traced, untraced);

    fn probe<'a>(probes: &'a mut [(&str, Probe)], name: &str) -> &'a mut Probe {
        &mut probes
            .iter_mut()
            .find(|(f, _)| *f == name)
            .expect("probe loaded")
            .1
    }
    // Recursion 5 and 20 deep: every level is a call. A goroutine holds 8
    // calls of one function in flight (GO_FRAMES); the 12 deeper ones of
    // each 20-deep recursion are counted lost, the other levels pair.
    let s = settled(
        probe(&mut probes, "main.recurse"),
        "main.recurse",
        ROUNDS * 25,
    );
    assert_eq!(s.counters.aggregated, ROUNDS * (5 + 8));
    assert_eq!(s.counters.pairing_dropped, ROUNDS * 12);
    assert_eq!(s.counters.start_map_full, ROUNDS * 12);
    // A 16 KiB frame on a fresh goroutine: Go copies the stack mid-call,
    // more than once; every call still pairs.
    let s = settled(probe(&mut probes, "main.grow"), "main.grow", ROUNDS * 6);
    assert_eq!(s.counters.aggregated, ROUNDS * 6);
    assert_eq!(s.counters.pairing_dropped, 0);
    // Recovered panics never return: found at the goroutine's next call,
    // the last one when the process is gone.
    let s = settled(
        probe(&mut probes, "main.mayPanic"),
        "main.mayPanic",
        ROUNDS * 2,
    );
    assert_eq!(s.counters.aggregated, ROUNDS);
    assert_eq!(s.counters.pairing_dropped, ROUNDS);
    // runtime.Goexit inside the call: likewise.
    let s = settled(
        probe(&mut probes, "main.exitEarly"),
        "main.exitEarly",
        ROUNDS * 4,
    );
    assert_eq!(s.counters.aggregated, ROUNDS * 3);
    assert_eq!(s.counters.pairing_dropped, ROUNDS);
    // Blocked across the call for at least 20 ms while others ran.
    let s = settled(probe(&mut probes, "main.blockOn"), "main.blockOn", ROUNDS);
    assert_eq!(s.counters.aggregated, ROUNDS);
    let h = &s.series["main.blockOn"];
    assert!(h.percentile(0.01).unwrap() >= 20_000_000, "{h:?}");
}

#[test]
fn go_runtime_pauses_and_cycles_match_the_runtimes_own_metrics() {
    require_bpf_privileges();
    let _serial = serial();
    let bin = &binaries().1;
    const CYCLES: u64 = 20;
    const MEMSTATS: u64 = 10;
    // The collector runs only when the program asks.
    let child = GoChild::spawn(
        bin,
        &["gc", &CYCLES.to_string(), &MEMSTATS.to_string()],
        &[("GOGC", "off"), ("GOMAXPROCS", "2")],
    );
    let pid = child.pid();
    let mut config = ProbeConfig::new(ProbeKind::GoRuntime);
    config.uprobe = Some((bin.display().to_string(), String::new()));
    config.pids = vec![pid];
    let mut probe = load_probe(&config);
    let report = child.run();
    assert_eq!(u64_of(&report, "cycles"), CYCLES);
    let pause_n: Vec<u64> = report["pause_n"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    let pauses: u64 = pause_n.iter().sum();
    // Two stops per cycle: sweep termination and mark termination.
    assert_eq!(pauses, 2 * CYCLES);

    let expected = pauses + CYCLES + MEMSTATS;
    let snap = settled(&mut probe, "goRuntime", expected);
    assert_eq!(snap.counters.pairing_dropped, 0);
    let series = |name: &str| {
        snap.series
            .get(&format!("{name} (pid {pid})"))
            .unwrap_or_else(|| panic!("no {name} series: {:?}", snap.series.keys()))
    };
    assert_eq!(series("gc-pause").count(), pauses);
    assert_eq!(series("gc-cycle").count(), CYCLES);
    assert_eq!(series("stw-other").count(), MEMSTATS);

    // Go's own pause histogram, as bucket bounds in ns: the probe's pause
    // begins where the runtime's begins but ends when the world has
    // restarted, after the runtime has stopped its clock (mark
    // termination); so ours may be longer by that restart.
    let bounds = |key: &str| -> Vec<f64> {
        report[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() * 1e9)
            .collect()
    };
    let (low, high) = (bounds("pause_low"), bounds("pause_high"));
    let go_quantile = |q: f64| -> (f64, f64) {
        let rank = (q * pauses as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, n) in pause_n.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return (low[i], high[i]);
            }
        }
        unreachable!()
    };
    let pause = series("gc-pause");
    const RESTART_NS: f64 = 25_000.0;
    for q in [0.5, 0.9] {
        let (lo, hi) = go_quantile(q);
        let ours = pause.percentile(q).unwrap() as f64;
        assert!(
            ours >= lo * (1.0 - MAX_RELATIVE_ERROR) - 2_000.0
                && ours <= hi * (1.0 + MAX_RELATIVE_ERROR) + RESTART_NS,
            "gc pause p{}: probe {ours} ns, runtime [{lo}, {hi}] ns",
            q * 100.0
        );
    }
    // A cycle spans its two pauses.
    let cycle = series("gc-cycle");
    assert!(cycle.sum_ns() >= pause.sum_ns(), "{cycle:?} {pause:?}");
}

#[test]
fn go_probes_refuse_what_they_cannot_time_with_the_reason() {
    require_bpf_privileges();
    let bin = &binaries().0;
    let kernel = ringwarden_node_agent::probes::Kernel::open().unwrap();
    let load = |kind: ProbeKind, binary: &str, symbol: &str| {
        let mut config = ProbeConfig::new(kind);
        config.uprobe = Some((binary.to_string(), symbol.to_string()));
        Probe::load(&kernel, &config)
            .err()
            .expect("refused")
            .to_string()
    };
    // A name without its package: the message offers the full one.
    let e = load(ProbeKind::Uprobe, &bin.display().to_string(), "work");
    assert!(e.contains("\"work\"") || e.contains("work is not"), "{e}");
    assert!(e.contains("main.work") && e.contains("go tool nm"), "{e}");
    let e = load(ProbeKind::GoRuntime, "/bin/true", "");
    assert!(e.contains("not built by Go"), "{e}");
}

#[test]
fn slos_point_at_a_go_function_and_at_gc_pauses_in_the_standalone_agent() {
    require_bpf_privileges();
    let _serial = serial();
    let bin = binaries().0.display().to_string();
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("go-slo");
    std::fs::create_dir_all(&dir).unwrap();
    let manifest = dir.join("go.yaml");
    std::fs::write(
        &manifest,
        format!(
            r#"apiVersion: ringwarden.dev/v1alpha1
kind: ProbeSet
metadata: {{name: web, namespace: default}}
spec:
  probes:
    - name: handle
      kind: uprobe
      uprobe: {{binary: {bin}, symbol: "main.(*Server).handle"}}
    - name: gc
      kind: goRuntime
      goRuntime: {{binary: {bin}}}
---
apiVersion: ringwarden.dev/v1alpha1
kind: SLO
metadata: {{name: handle-fast, namespace: default}}
spec:
  probeSet: web
  probe: handle
  series: ["main.(*Server).handle"]
  indicator: {{latency: {{threshold: 1s}}}}
  target: 99
  window: 1h
---
apiVersion: ringwarden.dev/v1alpha1
kind: SLO
metadata: {{name: gc-short, namespace: default}}
spec:
  probeSet: web
  probe: gc
  series: [gc-pause]
  indicator: {{latency: {{threshold: 1s}}}}
  target: 99
  window: 1h
"#
        ),
    )
    .unwrap();
    let mut agent = ringwarden_e2e::StandaloneAgent::start(&[], &manifest, "6s", &[]);
    agent.wait_loaded(2);
    let calls = GoChild::spawn(&binaries().0, &["calls", "2", "10"], &[]);
    let gc = GoChild::spawn(&binaries().0, &["gc", "5", "0"], &[("GOGC", "off")]);
    let gc_pid = gc.pid();
    calls.run();
    gc.run();
    let (reports, log) = agent.finish();
    let last = reports.last().unwrap();
    assert!(ringwarden_e2e::failures(last).is_empty(), "{log}");
    let slo = |name: &str| {
        last["slos"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["slo"].as_str().is_some_and(|n| n.ends_with(name)))
            .unwrap_or_else(|| panic!("no SLO {name}: {last}"))
            .clone()
    };
    let handle = slo("handle-fast");
    assert_eq!(handle["total"], 1000, "{handle}");
    assert_eq!(handle["good"], 1000, "{handle}");
    assert!(handle["observed_latency_ns"].as_u64().is_some(), "{handle}");
    // Two pauses per forced cycle, from the series kept per process.
    let pauses = slo("gc-short");
    assert_eq!(pauses["total"], 10, "{pauses}");
    assert!(pauses["observed_latency_ns"].as_u64().is_some(), "{pauses}");
    let text = last.to_string();
    assert!(text.contains(&format!("gc-pause (pid {gc_pid})")), "{text}");
}
