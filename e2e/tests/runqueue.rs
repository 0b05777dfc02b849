//! `runqueue` against CPU contention the test makes: a sleeper shares CPU 0
//! with two busy threads, so every wakeup waits for the CPU. Alone in its
//! test binary, since other BPF programs busy on the same CPU make the known
//! gap wider: the count has been seen to miss up to 3 switch-ins in 200
//! (see docs/internals.md).

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use ringwarden_crds::ProbeKind;
use ringwarden_e2e::{Child, load_probe, pin_to_cpu, require_bpf_privileges};
use ringwarden_node_agent::probes::ProbeConfig;

/// `(timeslices run, ns waited on a run queue)` of a thread, from the
/// scheduler's own statistics.
fn schedstat(pid: u32) -> (u64, u64) {
    let s = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/schedstat"))
        .expect("schedstat (CONFIG_SCHED_INFO)");
    let v: Vec<u64> = s.split_whitespace().map(|x| x.parse().unwrap()).collect();
    (v[2], v[1])
}

/// A sleeper shares CPU 0 with two busy threads: every wakeup waits for
/// the CPU. The probe's count and summed wait must match the scheduler's
/// own per-thread statistics for the same interval.
#[test]
fn runqueue_waits_match_the_schedulers_own_statistics() {
    require_bpf_privileges();
    let mut sleeper = Child::spawn(
        env!("CARGO_BIN_EXE_syscall-load"),
        &[
            "--nanosleep",
            "200",
            "--nanosleep-ns",
            "1000000",
            "--cpu",
            "0",
            "--hold",
        ],
    );
    let stop = Arc::new(AtomicBool::new(false));
    let hogs: Vec<_> = (0..2)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                pin_to_cpu(0);
                while !stop.load(Ordering::Relaxed) {
                    std::hint::spin_loop();
                }
            })
        })
        .collect();
    // Asleep before the probe attaches: a child still starting up would be
    // runnable with a wait the probe never saw begin, and its switch-in
    // would count for the scheduler only.
    sleeper.wait_blocked_in_read();
    let mut config = ProbeConfig::new(ProbeKind::Runqueue);
    config.pids = vec![sleeper.pid()];
    let probe = load_probe(&config);
    let (runs0, wait0) = schedstat(sleeper.pid());
    let report: ringwarden_e2e::LoadReport = sleeper.go();
    sleeper.wait_blocked_in_read();
    let (runs1, wait1) = schedstat(sleeper.pid());
    let snap = probe.snapshot().unwrap();
    stop.store(true, Ordering::Relaxed);
    hogs.into_iter().for_each(|h| h.join().unwrap());

    let h = &snap.series["all"];
    let runs = runs1 - runs0;
    // Known gap (docs/internals.md): a switch-in can be missed, about one
    // in a few hundred; never one counted that the scheduler did not see.
    assert!(
        h.count() <= runs && h.count() + 3 >= runs,
        "{} waits counted, the scheduler saw {runs} switch-ins: {:?}",
        h.count(),
        snap.counters
    );
    assert!(
        h.count() + 3 >= report.nanosleep_ns.len() as u64,
        "a wait per wakeup at least"
    );
    // The scheduler sums the same waits with its run-queue clock, which
    // `__schedule` reads before picking the next task; the probe reads the
    // clock at the switch itself. So the probe's sum is not smaller, and
    // larger by at most the few µs of each pick.
    let waited = wait1 - wait0;
    let sum = h.sum_ns();
    assert!(
        // A missed switch-in also misses its wait: the lower bound holds
        // only when every switch-in was seen.
        (h.count() < runs || sum + waited / 50 >= waited) && sum <= waited + 15_000 * runs,
        "probe summed {sum} ns of waits over {runs} switch-ins, the scheduler {waited} ns"
    );
    // Each sleep took 1 ms plus timer slack plus its wait for the CPU.
    let overshoot: u64 = report
        .nanosleep_ns
        .iter()
        .map(|ns| ns.saturating_sub(1_000_000))
        .sum();
    assert!(
        sum <= overshoot + waited,
        "waits {sum} ns exceed what the sleeper saw"
    );
    assert_eq!(snap.counters.check_identities(), Ok(()));
}
