//! `make bench`: what timing a Go function adds to each of its calls.
//!
//! The leaf `main.add` of the Go target (`e2e/go/target`, built here with
//! Debian's Go) is called `--calls N` times, alternately untraced and with
//! ringwarden's Go probe (plain uprobes at the entry and the `RET`, paired
//! by goroutine). The peer is the classic uprobe + uretprobe pair on an
//! equivalent C-ABI leaf (`rw_uprobe_add` in `uprobe-target`), through
//! ringwarden's own native uprobe path: the mechanism bpftrace and BCC use,
//! which cannot be put on Go code (a uretprobe breaks when Go moves a
//! goroutine's stack). Reports the mean ns per call as each program timed
//! it: median and range over `--reps`, and the difference of the medians.

use std::path::Path;

use ringwarden_crds::ProbeKind;
use ringwarden_e2e::{Child, arg, go, load_probe, require_bpf_privileges};
use ringwarden_node_agent::probes::{Probe, ProbeConfig};
use serde_json::Value;

fn ns_per_call(report: &Value) -> f64 {
    report["ns_per_call"]
        .as_f64()
        .unwrap_or_else(|| panic!("no ns_per_call in {report}"))
}

fn probe(kind_binary: &Path, symbol: &str, pid: u32) -> Probe {
    let mut config = ProbeConfig::new(ProbeKind::Uprobe);
    config.uprobe = Some((kind_binary.display().to_string(), symbol.into()));
    config.pids = vec![pid];
    load_probe(&config)
}

/// One run of the Go target; traced or not.
fn run_go(bin: &Path, calls: u64, traced: bool) -> f64 {
    let child = go::GoChild::spawn(bin, &["bench", &calls.to_string()], &[]);
    let p = traced.then(|| probe(bin, "main.add", child.pid()));
    let report = child.run();
    if let Some(p) = p {
        let s = p.snapshot().unwrap();
        assert_eq!(s.series["main.add"].count(), calls, "every call timed");
        assert_eq!(s.counters.check_identities(), Ok(()));
    }
    ns_per_call(&report)
}

/// One run of the C-ABI peer; traced (uprobe + uretprobe) or not.
fn run_native(bin: &Path, calls: u64, traced: bool) -> f64 {
    let mut child = Child::spawn(bin.to_str().unwrap(), &["--bench", &calls.to_string()]);
    let p = traced.then(|| probe(bin, "rw_uprobe_add", child.pid()));
    let report: Value = child.go();
    if let Some(p) = p {
        let s = p.snapshot().unwrap();
        assert_eq!(s.series["rw_uprobe_add"].count(), calls, "every call timed");
    }
    ns_per_call(&report)
}

fn summary(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

fn main() {
    require_bpf_privileges();
    let calls = arg("--calls", 200_000);
    let reps = arg("--reps", 5) as usize;
    let dir = std::env::temp_dir().join(format!("ringwarden-bench-go-{}", std::process::id()));
    let (go_bin, _) = go::build_target(&dir);
    let native_bin = std::env::current_exe()
        .unwrap()
        .with_file_name("uprobe-target");
    let mut rows: Vec<(&str, Vec<f64>)> = vec![
        ("go, untraced", vec![]),
        ("go, ringwarden (uprobes at entry + RET)", vec![]),
        ("C ABI, untraced", vec![]),
        ("C ABI, uprobe + uretprobe", vec![]),
    ];
    for _ in 0..reps {
        rows[0].1.push(run_go(&go_bin, calls, false));
        rows[1].1.push(run_go(&go_bin, calls, true));
        rows[2].1.push(run_native(&native_bin, calls, false));
        rows[3].1.push(run_native(&native_bin, calls, true));
    }
    let _ = std::fs::remove_dir_all(&dir);
    println!("bench-go: {calls} calls of a leaf function per run, {reps} runs each, ns per call");
    println!("{:<44} {:>10} {:>21}", "variant", "median", "range");
    let medians: Vec<f64> = rows
        .iter()
        .map(|(name, v)| {
            let (m, lo, hi) = summary(v.clone());
            println!("{name:<44} {m:>10.1} {:>21}", format!("{lo:.1} .. {hi:.1}"));
            m
        })
        .collect();
    let go_added = medians[1] - medians[0];
    let native_added = medians[3] - medians[2];
    println!(
        "added per call: go +{go_added:.0} ns, C-ABI uprobe + uretprobe +{native_added:.0} ns, ratio {:.2}",
        go_added / native_added
    );
}
