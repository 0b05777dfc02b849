//! Histogram reads against the live kernel: the agent takes only what the
//! kernel marked since its last read, and what it adds up stays exact
//! (ground truth: children with known syscall counts).

use ringwarden_crds::ProbeKind;
use ringwarden_e2e::{Child, load_probe, require_bpf_privileges};
use ringwarden_node_agent::probes::{Probe, ProbeConfig, ReadCost, Snapshot, possible_cpus};

fn spawn(args: &[&str]) -> Child {
    Child::spawn(env!("CARGO_BIN_EXE_syscall-load"), args)
}

fn probe_for(pids: Vec<u32>, hist_cpus: Option<u32>) -> Probe {
    let mut config = ProbeConfig::new(ProbeKind::Syscalls);
    config.pids = pids;
    config.max_series = 64;
    config.hist_cpus = hist_cpus;
    load_probe(&config)
}

/// A snapshot and what its read cost.
fn read(probe: &Probe) -> (Snapshot, ReadCost) {
    let before = probe.read_cost();
    let snap = probe.snapshot().unwrap();
    let after = probe.read_cost();
    let cost = ReadCost {
        reads: after.reads - before.reads,
        scanned: after.scanned - before.scanned,
        taken: after.taken - before.taken,
        words: after.words - before.words,
        buckets: after.buckets - before.buckets,
    };
    (snap, cost)
}

fn count(snap: &Snapshot, name: &str) -> u64 {
    snap.series.get(name).map_or(0, |h| h.count())
}

fn nonzero_buckets(snap: &Snapshot) -> u64 {
    snap.series
        .values()
        .map(|h| h.buckets().iter().filter(|&&n| n > 0).count() as u64)
        .sum()
}

/// Checks exactness and takes only-what-changed on a map laid out for
/// `layout` CPUs.
fn reads_take_only_what_changed(layout: Option<u32>) {
    require_bpf_privileges();
    let cpus = u64::from(layout.unwrap_or_else(|| possible_cpus().unwrap()));
    let first = spawn(&["--getppid", "3000"]);
    let second = spawn(&["--getppid", "2000", "--nanosleep", "50"]);
    let probe = probe_for(vec![first.pid(), second.pid()], layout);

    let first_report = first.go_report();
    let (one, cost) = read(&probe);
    assert_eq!(count(&one, "getppid"), first_report.getppid_calls);
    // What was taken is at most every bucket in use on every CPU.
    assert!(cost.taken >= 1, "{cost:?}");
    assert!(
        cost.buckets <= nonzero_buckets(&one) * cpus,
        "took {} buckets for {} in use on {cpus} CPUs",
        cost.buckets,
        nonzero_buckets(&one)
    );

    // Nothing happens now (the first child has exited, the second is
    // blocked): a read takes nothing, looks at each slot in use once per
    // CPU of the layout, and the histograms stay as they were.
    let (quiet, cost) = read(&probe);
    assert_eq!(quiet.series, one.series);
    assert_eq!(
        (cost.taken, cost.words, cost.buckets),
        (0, 0, 0),
        "{cost:?}"
    );
    assert_eq!(cost.scanned % cpus, 0, "{cost:?}");
    assert!(
        cost.scanned >= cpus * (one.series.len() as u64 + 1),
        "every slot in use, overflow included, on every CPU: {cost:?}"
    );

    let second_report = second.go_report();
    let (two, cost) = read(&probe);
    assert!(cost.taken >= 1, "{cost:?}");
    assert_eq!(
        count(&two, "getppid"),
        first_report.getppid_calls + second_report.getppid_calls
    );
    assert_eq!(
        count(&two, "nanosleep"),
        second_report.nanosleep_ns.len() as u64
    );
    // The identities hold to the event, and the histograms hold every
    // aggregated event: nothing taken twice, nothing left behind.
    let c = two.counters;
    assert_eq!(c.check_identities(), Ok(()), "{c:?}");
    let aggregated: u64 = two.series.values().map(|h| h.count()).sum();
    assert_eq!(aggregated, c.aggregated, "{c:?}");
    let sum: u64 = two.series.values().map(|h| h.sum_ns()).sum();
    assert!(sum >= second_report.nanosleep_ns.iter().sum::<u64>());
    // Cumulative: a later read never loses what an earlier one took.
    for (name, h) in &one.series {
        assert!(two.series[name].count() >= h.count(), "{name}");
    }
}

#[test]
fn reads_take_only_what_changed_and_counts_stay_exact() {
    reads_take_only_what_changed(None);
}

#[test]
fn on_the_layout_of_a_64_cpu_node_reads_stay_exact() {
    reads_take_only_what_changed(Some(64));
}

#[test]
fn a_histogram_map_past_the_kernels_array_limit_is_refused_with_the_field_to_lower() {
    require_bpf_privileges();
    let mut config = ProbeConfig::new(ProbeKind::Syscalls);
    config.max_series = 4096;
    config.hist_cpus = Some(192);
    let kernel = ringwarden_node_agent::probes::Kernel::open().unwrap();
    let err = Probe::load(&kernel, &config)
        .err()
        .expect("a 6.4 GiB histogram map is refused")
        .to_string();
    assert!(err.contains("lower maxSeries"), "{err}");
}

#[test]
fn reads_racing_the_kernel_on_every_cpu_lose_nothing_and_take_nothing_twice() {
    require_bpf_privileges();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let calls = 200_000u64;
    let children: Vec<Child> = (0..cpus)
        .map(|cpu| spawn(&["--getppid", &calls.to_string(), "--cpu", &cpu.to_string()]))
        .collect();
    let probe = probe_for(children.iter().map(Child::pid).collect(), None);
    let done = std::sync::atomic::AtomicBool::new(false);
    let (reports, seen) = std::thread::scope(|s| {
        // Reads as fast as they go while every CPU adds to the histograms.
        let reader = s.spawn(|| {
            let mut seen = Vec::new();
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                seen.push(count(&probe.snapshot().unwrap(), "getppid"));
            }
            seen
        });
        let reports: Vec<_> = children
            .into_iter()
            .map(|c| s.spawn(move || c.go_report()))
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().unwrap())
            .collect();
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        (reports, reader.join().unwrap())
    });
    let issued: u64 = reports.iter().map(|r| r.getppid_calls).sum();
    assert_eq!(issued, calls * cpus as u64);
    let (snap, _) = read(&probe);
    assert_eq!(count(&snap, "getppid"), issued, "every call, once");
    let aggregated: u64 = snap.series.values().map(|h| h.count()).sum();
    assert_eq!(aggregated, snap.counters.aggregated);
    assert_eq!(snap.counters.check_identities(), Ok(()));
    // The reads in between saw a count that only grew and never passed the truth.
    assert!(seen.len() > 10, "only {} reads raced the calls", seen.len());
    assert!(seen.windows(2).all(|w| w[0] <= w[1]), "{seen:?}");
    assert!(seen.iter().all(|&n| n <= issued));
}
