//! The `syscalls` probe against the live kernel, checked against ground
//! truth the test makes itself: a child process with known syscall counts
//! and its own user-space timings.

use ringwarden_core::histogram::MAX_RELATIVE_ERROR;
use ringwarden_crds::ProbeKind;
use ringwarden_e2e::{
    Child, exact_percentile, load_probe as load, require_bpf_privileges, wait_until,
};
use ringwarden_node_agent::probes::{Probe, ProbeConfig};
use syscalls::Sysno;

struct Load;

impl Load {
    fn spawn(args: &[&str]) -> Child {
        Child::spawn(env!("CARGO_BIN_EXE_syscall-load"), args)
    }
}

fn load_probe(pids: Vec<u32>, comms: Vec<String>) -> Probe {
    let mut config = ProbeConfig::new(ProbeKind::Syscalls);
    config.pids = pids;
    config.comms = comms;
    // Every syscall this test's children make keeps a series of its own.
    config.max_series = 512;
    load(&config)
}

fn count(probe: &Probe, sysno: Sysno) -> u64 {
    probe
        .snapshot()
        .unwrap()
        .series
        .get(sysno.name())
        .map_or(0, |h| h.count())
}

#[test]
fn counts_and_latency_match_what_the_child_did() {
    require_bpf_privileges();
    let load = Load::spawn(&[
        "--getppid",
        "10000",
        "--nanosleep",
        "500",
        "--nanosleep-ns",
        "2000000",
    ]);
    // A bystander making the same syscalls outside the pid filter.
    let bystander = Load::spawn(&["--getppid", "3000", "--nanosleep", "20"]);
    let probe = load_probe(vec![load.pid()], vec![]);

    let other = std::thread::spawn(move || bystander.go_report());
    let report = load.go_report();
    other.join().unwrap();
    let snap = probe.snapshot().unwrap();

    // Counts are exact.
    let getppid = &snap.series["getppid"];
    let nanosleep = &snap.series["nanosleep"];
    assert_eq!(getppid.count(), report.getppid_calls);
    assert_eq!(nanosleep.count(), report.nanosleep_ns.len() as u64);
    assert_eq!(getppid.errors() + nanosleep.errors(), 0);

    // The identity holds to the event: the child was blocked in read when
    // the probe attached, so exactly that exit had no start.
    let c = snap.counters;
    assert_eq!(c.check_identities(), Ok(()), "{c:?}");
    assert_eq!(c.pairing_dropped, 1, "{c:?}");
    assert_eq!(c.sampled_out, 0);
    let aggregated: u64 = snap.series.values().map(|h| h.count()).sum();
    assert_eq!(
        aggregated, c.aggregated,
        "histograms hold every aggregated event"
    );

    // nanosleep's median agrees with the child's own timing within the
    // histogram's error bound plus scheduling noise (the user-space clock
    // also times the syscall entry and exit, a few µs at most).
    let truth = exact_percentile(&report.nanosleep_ns, 0.5);
    let measured = nanosleep.percentile(0.5).unwrap();
    let tolerance = truth as f64 * MAX_RELATIVE_ERROR + 20_000.0;
    assert!(
        (measured as f64 - truth as f64).abs() <= tolerance,
        "kernel p50 {measured} ns vs user-space p50 {truth} ns (tolerance {tolerance} ns)"
    );
    assert!(nanosleep.max_ns() <= *report.nanosleep_ns.iter().max().unwrap());
}

#[test]
fn a_comm_filter_counts_only_processes_with_that_name() {
    require_bpf_privileges();
    let wanted = Load::spawn(&["--name", "rw-wanted", "--getppid", "2000"]);
    let other = Load::spawn(&["--name", "rw-other", "--getppid", "1500"]);
    let probe = load_probe(vec![], vec!["rw-wanted".into()]);
    let t = std::thread::spawn(move || other.go_report());
    let report = wanted.go_report();
    t.join().unwrap();
    assert_eq!(count(&probe, Sysno::getppid), report.getppid_calls);
    assert_eq!(
        probe.snapshot().unwrap().counters.check_identities(),
        Ok(())
    );
}

#[test]
fn a_forked_childs_return_from_clone_is_neither_an_event_nor_a_loss() {
    require_bpf_privileges();
    // Children inherit the comm, so the filter sees both sides of each fork.
    let load = Load::spawn(&["--name", "rw-forker", "--forks", "200"]);
    let probe = load_probe(vec![], vec!["rw-forker".into()]);
    let report = load.go_report();
    let snap = probe.snapshot().unwrap();
    let c = snap.counters;
    assert_eq!(c.check_identities(), Ok(()), "{c:?}");
    // Only the read the parent was blocked in when the probe attached.
    assert_eq!(c.pairing_dropped, 1, "{c:?}");
    let clones: u64 = [Sysno::clone, Sysno::clone3, Sysno::fork, Sysno::vfork]
        .iter()
        .filter_map(|s| snap.series.get(s.name()))
        .map(|h| h.count())
        .sum();
    assert_eq!(
        clones, report.forks,
        "one event per fork: the parent's call"
    );
}

#[test]
fn the_agent_never_observes_itself_even_when_a_filter_names_it() {
    require_bpf_privileges();
    let probe = load_probe(vec![std::process::id()], vec![]);
    for _ in 0..1000 {
        // SAFETY: getppid takes no arguments.
        unsafe { libc_getppid() };
    }
    let snap = probe.snapshot().unwrap();
    assert_eq!(snap.counters.observed, 0, "{:?}", snap.counters);
    assert!(snap.series.is_empty());
}

unsafe fn libc_getppid() -> i64 {
    // SAFETY: plain syscall without arguments.
    unsafe { libc::syscall(libc::SYS_getppid) }
}

#[test]
fn dropping_a_probe_detaches_it_and_a_new_one_starts_from_zero() {
    require_bpf_privileges();
    let first = Load::spawn(&["--getppid", "500"]);
    let pid = first.pid();
    let probe = load_probe(vec![pid], vec![]);
    first.go_report();
    assert_eq!(count(&probe, Sysno::getppid), 500);
    let ids = probe.program_ids().to_vec();
    assert_eq!(ids.len(), 3, "fork, enter and exit programs");
    assert!(ids.iter().all(|id| loaded_program_ids().contains(id)));
    drop(probe);
    // The kernel frees programs after an RCU grace period.
    wait_until(
        &format!("programs {ids:?} unloaded after drop"),
        loaded_program_ids,
        |loaded| !ids.iter().any(|id| loaded.contains(id)),
    );

    let second = Load::spawn(&["--getppid", "700"]);
    let probe = load_probe(vec![second.pid()], vec![]);
    second.go_report();
    assert_eq!(count(&probe, Sysno::getppid), 700);
}

fn loaded_program_ids() -> Vec<u32> {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .map(|p| p.id())
        .collect()
}
