//! The two data paths and their accounting against the live kernel: ring
//! buffer export (exact `exported = delivered + ringbuf_dropped`),
//! sampling, exact SLO thresholds, the overflow series and cgroup filters.
//! Ground truth is what the `syscall-load` child did and timed itself.

use ringwarden_crds::ProbeKind;
use ringwarden_e2e::{Child, LoadReport, load_probe, require_bpf_privileges};
use ringwarden_ebpf_common::{EVENT_ERROR, HIGH_WATER_EVERY, THRESHOLD_LATENCY, ThresholdSlot};
use ringwarden_node_agent::probes::{Export, ProbeConfig, page_size};
use syscalls::Sysno;

fn spawn(args: &[&str]) -> Child {
    Child::spawn(env!("CARGO_BIN_EXE_syscall-load"), args)
}

fn syscalls_for(pid: u32) -> ProbeConfig {
    let mut c = ProbeConfig::new(ProbeKind::Syscalls);
    c.pids = vec![pid];
    c
}

/// Failed calls exported one by one: with a one-page ring and no draining
/// during the burst, most are dropped, and every one is accounted for.
#[test]
fn a_one_page_ring_drops_a_burst_and_accounts_for_every_event() {
    require_bpf_privileges();
    const N: u64 = 5_000;
    let child = spawn(&["--fail", "5000"]);
    let mut config = syscalls_for(child.pid());
    config.export = Export::Errors;
    config.ring_bytes = page_size();
    let mut probe = load_probe(&config);
    let report = child.go_report();
    assert_eq!(report.fails, N);

    let mut received = 0;
    let mut closes = 0;
    probe.drain(|ev| {
        received += 1;
        assert_eq!(
            ev.flags & EVENT_ERROR,
            EVENT_ERROR,
            "only errors are exported"
        );
        assert_eq!(ev.tgid, report.pid);
        if ev.series.id == Sysno::close.id() as u64 {
            closes += 1;
            assert_eq!(ev.value, -9, "EBADF");
        }
    });
    let c = probe.snapshot().unwrap().counters;
    assert_eq!(c.check_identities(), Ok(()), "{c:?}");
    assert_eq!(
        c.exported, N,
        "exactly the failed calls are exported: {c:?}"
    );
    assert_eq!(c.delivered + c.ringbuf_dropped, N);
    assert!(
        c.ringbuf_dropped > 0,
        "a page cannot hold {N} records: {c:?}"
    );
    assert_eq!(received, c.delivered, "every delivered record is read back");
    assert_eq!(closes, received);
}

#[test]
fn a_ring_sized_for_the_burst_drops_nothing() {
    require_bpf_privileges();
    const N: u64 = 5_000;
    let child = spawn(&["--fail", "5000"]);
    let mut config = syscalls_for(child.pid());
    config.export = Export::All;
    // 5 000 records of 96 B fit in 512 KiB with room for the other calls.
    config.ring_bytes = 512 << 10;
    let mut probe = load_probe(&config);
    let report = child.go_report();
    let mut received = 0u64;
    probe.drain(|_| received += 1);
    let snap = probe.snapshot().unwrap();
    let c = snap.counters;
    assert_eq!(c.check_identities(), Ok(()), "{c:?}");
    assert_eq!(c.ringbuf_dropped, 0, "{c:?}");
    assert_eq!(c.exported, c.aggregated, "policy all exports every event");
    assert_eq!(received, c.delivered);
    assert_eq!(snap.series["close"].count(), report.fails);
    assert_eq!(snap.series["close"].errors(), report.fails);
    // Nothing was read during the burst, so the ring peaked at every
    // delivered record. The fill is sampled after one record in
    // HIGH_WATER_EVERY on each CPU: the mark trails by fewer per CPU.
    let cpus = aya::util::nr_cpus().unwrap() as u64;
    let peak = c.delivered * 96;
    assert!(
        snap.ring_high_water + (HIGH_WATER_EVERY - 1) * cpus * 96 >= peak && peak >= N * 96,
        "high water {}, peak {peak}",
        snap.ring_high_water
    );
    assert!(snap.ring_high_water <= snap.ring_bytes);
}

/// Export `slowerThan` picks exactly the calls above the threshold.
#[test]
fn slower_than_exports_only_slow_events() {
    require_bpf_privileges();
    let child = spawn(&[
        "--nanosleep",
        "40",
        "--nanosleep-ns",
        "200000",
        "--nanosleep-alt-ns",
        "3000000",
    ]);
    let mut config = syscalls_for(child.pid());
    config.export = Export::SlowerThan(1_500_000);
    config.ring_bytes = 64 << 10;
    let mut probe = load_probe(&config);
    let report = child.go_report();
    let mut slow = Vec::new();
    probe.drain(|ev| slow.push((ev.series.id, ev.latency_ns)));
    // The child times each call from outside, so its figure is never below
    // the kernel's: a call it timed at 1.5 ms or less cannot be exported,
    // and the 20 calls asked to sleep 3 ms must be. On a busy machine a
    // 200 µs sleep can overrun 1.5 ms too, and may then be exported.
    let timed_slow = report
        .nanosleep_ns
        .iter()
        .filter(|&&ns| ns > 1_500_000)
        .count();
    assert!(
        timed_slow >= 20,
        "every other sleep is 3 ms: {:?}",
        report.nanosleep_ns
    );
    assert!(
        (20..=timed_slow).contains(&slow.len()),
        "{} exported, {timed_slow} timed slower than 1.5 ms: {slow:?}",
        slow.len()
    );
    assert!(
        slow.iter()
            .all(|&(nr, ns)| nr == Sysno::nanosleep.id() as u64 && ns > 1_500_000)
    );
}

#[test]
fn sampling_keeps_one_in_n_and_counts_the_rest() {
    require_bpf_privileges();
    let child = spawn(&["--getppid", "20000", "--cpu", "0"]);
    let mut config = syscalls_for(child.pid());
    config.sample_every = 10;
    let probe = load_probe(&config);
    let report = child.go_report();
    let snap = probe.snapshot().unwrap();
    let c = snap.counters;
    assert_eq!(c.check_identities(), Ok(()), "{c:?}");
    // One CPU, one sampler tick per paired event: exactly every tenth is
    // kept (the read the child was blocked in at attach is a pairing loss).
    let paired = c.observed - c.pairing_dropped;
    assert_eq!(c.aggregated, paired.div_ceil(10), "{c:?}");
    assert_eq!(c.sampled_out, paired - c.aggregated);
    let kept = snap.series["getppid"].count();
    assert!(
        kept.abs_diff(report.getppid_calls / 10) <= 2,
        "{kept} of {} getppid kept",
        report.getppid_calls
    );
}

/// An SLO threshold counts good/total exactly, before sampling, against
/// the child's own timings.
#[test]
fn a_threshold_counts_exactly_what_the_child_timed() {
    require_bpf_privileges();
    let child = spawn(&[
        "--nanosleep",
        "60",
        "--nanosleep-ns",
        "500000",
        "--nanosleep-alt-ns",
        "2500000",
        "--getppid",
        "100",
    ]);
    let mut config = syscalls_for(child.pid());
    let mut slot = ThresholdSlot {
        latency_ns: 1_500_000,
        mode: THRESHOLD_LATENCY,
        nseries: 1,
        ..Default::default()
    };
    slot.series[0] = Sysno::nanosleep.id() as u64;
    config.thresholds = vec![("default/sleep-fast".into(), slot)];
    config.sample_every = 7; // sampling must not change the exact counts
    let probe = load_probe(&config);
    let report = child.go_report();
    let t = &probe.snapshot().unwrap().thresholds[0];
    let good = report
        .nanosleep_ns
        .iter()
        .filter(|&&ns| ns <= 1_500_000)
        .count() as u64;
    assert_eq!(t.slo, "default/sleep-fast");
    assert_eq!(
        t.total,
        report.nanosleep_ns.len() as u64,
        "only nanosleep counts"
    );
    assert_eq!(t.good, good, "timings {:?}", report.nanosleep_ns);
}

#[test]
fn series_beyond_max_series_fold_into_other_and_are_counted() {
    require_bpf_privileges();
    let child = spawn(&[
        "--getppid",
        "300",
        "--nanosleep",
        "3",
        "--nanosleep-ns",
        "1000",
        "--fail",
        "50",
    ]);
    let mut config = syscalls_for(child.pid());
    config.max_series = 1;
    let probe = load_probe(&config);
    let report = child.go_report();
    let snap = probe.snapshot().unwrap();
    let c = snap.counters;
    assert_eq!(c.check_identities(), Ok(()), "{c:?}");
    assert!(
        snap.series.len() <= 2,
        "one series and other: {:?}",
        snap.series.keys()
    );
    let total: u64 = snap.series.values().map(|h| h.count()).sum();
    assert_eq!(total, c.aggregated, "no event is lost by folding");
    assert_eq!(snap.series["other"].count(), c.series_folded);
    assert!(
        c.series_folded >= report.fails.min(report.getppid_calls),
        "{c:?}"
    );
}

/// A cgroup v2 directory for one test, removed on drop.
struct TestCgroup(std::path::PathBuf);

impl TestCgroup {
    fn new(name: &str) -> Self {
        let root = ringwarden_node_agent::probes::cgroup2_mount()
            .expect("a cgroup2 file system (cgroup filters need cgroup v2)");
        let dir = root.join(format!("rw-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir(dir.join("leaf"));
        let _ = std::fs::remove_dir(&dir);
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        std::fs::create_dir(dir.join("leaf")).unwrap();
        Self(dir)
    }

    fn leaf(&self) -> std::path::PathBuf {
        self.0.join("leaf")
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(self.leaf());
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// A process moved into a cgroup below the filtered one is counted; one
/// outside is not.
#[test]
fn a_cgroup_filter_counts_processes_below_it_only() {
    require_bpf_privileges();
    let cg = TestCgroup::new("filter");
    let inside = spawn(&["--getppid", "1234"]);
    let outside = spawn(&["--getppid", "999"]);
    std::fs::write(cg.leaf().join("cgroup.procs"), inside.pid().to_string())
        .expect("move the child into the test cgroup");
    let mut config = ProbeConfig::new(ProbeKind::Syscalls);
    config.cgroup_ids =
        vec![ringwarden_node_agent::probes::cgroup_id(cg.0.to_str().unwrap()).unwrap()];
    let probe = load_probe(&config);
    let t = std::thread::spawn(move || outside.go_report());
    let report: LoadReport = inside.go_report();
    t.join().unwrap();
    let snap = probe.snapshot().unwrap();
    assert_eq!(snap.series["getppid"].count(), report.getppid_calls);
    assert_eq!(snap.counters.check_identities(), Ok(()));
}

/// Every field of an exported record names the task that made the call: the
/// syscalls probe reads them through the task's BTF pointer, not helpers.
#[test]
fn exported_records_name_the_task_and_its_cgroup() {
    require_bpf_privileges();
    let cg = TestCgroup::new("record");
    let child = spawn(&["--name", "rw-record", "--fail", "50"]);
    std::fs::write(cg.leaf().join("cgroup.procs"), child.pid().to_string())
        .expect("move the child into the test cgroup");
    let cgroup_id = ringwarden_node_agent::probes::cgroup_id(cg.leaf().to_str().unwrap()).unwrap();
    let mut config = syscalls_for(child.pid());
    config.export = Export::Errors;
    config.ring_bytes = 64 << 10;
    let mut probe = load_probe(&config);
    let report = child.go_report();
    let mut records = 0;
    probe.drain(|ev| {
        records += 1;
        assert_eq!((ev.pid, ev.tgid), (report.pid, report.pid), "{ev:?}");
        assert_eq!(&ev.comm, b"rw-record\0\0\0\0\0\0\0", "{ev:?}");
        assert_eq!(ev.cgroup_id, cgroup_id, "{ev:?}");
        assert_eq!(ev.series.id, Sysno::close.id() as u64, "{ev:?}");
        assert_eq!(ev.value, -9, "EBADF");
        assert!(ev.latency_ns > 0 && ev.ts_ns > ev.latency_ns, "{ev:?}");
    });
    assert_eq!(records, report.fails);
}
