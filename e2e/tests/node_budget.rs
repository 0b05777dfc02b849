//! One node budget, shared fairly, on the live kernel: three teams'
//! ProbeSets compete for a small node budget in one standalone agent. The
//! plan the agent prints (its JSON report's `node_plan`, and each probe's
//! `ring_bytes` and `memory_bytes`) must be what the kernel really holds:
//! the ring buffer and histogram sizes the kernel reports for the maps of
//! each probe's programs, and locked bytes (`memlock` in the maps' fdinfo)
//! that never exceed the plan. Across namespaces the budget is shared
//! max-min fairly, whatever the teams' priorities: a tenant's priority
//! orders only its own namespace's probes.

use std::collections::{BTreeMap, BTreeSet};

use ringwarden_core::maps::{ProbeMaps, fixed_bytes, ringbuf_bytes};
use ringwarden_e2e::{StandaloneAgent, failures, require_bpf_privileges};
use ringwarden_ebpf_common::LatencyHist;

const KIB: u64 = 1024;

/// (namespace, ProbeSet, priority, maxSeries): distinct series counts tell
/// the probes' histogram maps apart in the kernel.
const TEAMS: [(&str, &str, i32, u32); 3] = [
    ("gold", "api", 10, 16),
    ("silver", "jobs", 5, 24),
    ("bronze", "batch", 0, 8),
];

/// 10 000 ev/s of 96-byte records for 100 ms, twice over: 256 KiB each.
const RING: u64 = 256 * KIB;

/// The teams, with their priorities reversed when `reversed`.
fn manifest(dir: &std::path::Path, reversed: bool) -> std::path::PathBuf {
    let docs: Vec<String> = TEAMS
        .iter()
        .zip(TEAMS.iter().rev())
        .map(|((ns, name, priority, series), (_, _, other, _))| {
            let priority = if reversed { other } else { priority };
            format!(
                "apiVersion: ringwarden.dev/v1alpha1\nkind: ProbeSet\n\
                 metadata: {{name: {name}, namespace: {ns}}}\n\
                 spec:\n  probes:\n    - {{name: sys, kind: syscalls, maxSeries: {series}, \
                 priority: {priority}, export: {{policy: all}}, peakEventRate: 10000}}\n"
            )
        })
        .collect();
    let path = dir.join("teams.yaml");
    std::fs::write(&path, docs.join("---\n")).unwrap();
    path
}

/// What the kernel reports for one map (`/proc/self/fdinfo` of a new fd
/// to it).
#[derive(Clone, Debug)]
struct KernelMap {
    map_type: u32,
    value_size: u64,
    max_entries: u64,
    memlock: u64,
}

const BPF_MAP_TYPE_ARRAY: u32 = 2;
const BPF_MAP_TYPE_RINGBUF: u32 = 27;

fn fdinfo(path: &str) -> BTreeMap<String, u64> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            Some((k.trim().to_owned(), v.trim().parse().ok()?))
        })
        .collect()
}

fn kernel_map(id: u32) -> KernelMap {
    use std::os::fd::{AsFd, AsRawFd};
    let info = aya::maps::MapInfo::from_id(id).unwrap_or_else(|e| panic!("map {id}: {e}"));
    let fd = info.fd().unwrap_or_else(|e| panic!("map {id}: {e}"));
    let f = fdinfo(&format!("/proc/self/fdinfo/{}", fd.as_fd().as_raw_fd()));
    KernelMap {
        map_type: f["map_type"] as u32,
        value_size: f["value_size"],
        max_entries: f["max_entries"],
        memlock: f["memlock"],
    }
}

/// Everything the agent holds in the kernel while it runs: each of its
/// programs with the ids of the maps it uses, and every map (used by a
/// program, or only held open by the agent).
struct Held {
    program_maps: BTreeMap<u32, Vec<u32>>,
    maps: BTreeMap<u32, KernelMap>,
}

fn held_by(pid: u32) -> Held {
    let mut programs = BTreeSet::new();
    let mut map_ids = BTreeSet::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fdinfo")).unwrap() {
        let f = fdinfo(entry.unwrap().path().to_str().unwrap());
        if let Some(&id) = f.get("prog_id") {
            programs.insert(id as u32);
        }
        if let Some(&id) = f.get("map_id") {
            map_ids.insert(id as u32);
        }
    }
    let mut program_maps = BTreeMap::new();
    for p in aya::programs::loaded_programs() {
        let Ok(p) = p else { continue };
        if programs.contains(&p.id()) {
            let ids = p.map_ids().unwrap().unwrap_or_default();
            map_ids.extend(&ids);
            program_maps.insert(p.id(), ids);
        }
    }
    Held {
        program_maps,
        maps: map_ids.into_iter().map(|id| (id, kernel_map(id))).collect(),
    }
}

/// Runs the agent on the teams with `budget`, reads what it holds in the
/// kernel once every probe has loaded or failed, and returns the final
/// report with that.
fn run(budget: u64, expect_loaded: usize, reversed: bool) -> (serde_json::Value, Held) {
    let dir = tempdir();
    let file = manifest(&dir, reversed);
    let budget_arg = budget.to_string();
    let mut agent = StandaloneAgent::start(&[], &file, "3s", &["--node-budget", &budget_arg]);
    agent.wait_loaded(expect_loaded);
    let held = held_by(agent.pid());
    let (reports, _log) = agent.finish();
    let report = reports.last().unwrap().clone();
    (report, held)
}

fn tempdir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("rw-node-budget-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The report's probe of `namespace`.
fn probe<'a>(report: &'a serde_json::Value, namespace: &str) -> Option<&'a serde_json::Value> {
    report["probes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["namespace"] == namespace)
}

/// The node plan's share of `namespace`'s ProbeSet.
fn share<'a>(report: &'a serde_json::Value, namespace: &str) -> &'a serde_json::Value {
    report["node_plan"]["probesets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["namespace"] == namespace)
        .unwrap_or_else(|| panic!("no share for {namespace} in {report}"))
}

/// Checks every loaded probe against the kernel, and the whole agent's
/// locked maps against the plan's total; returns the rings by namespace.
fn check_against_kernel(report: &serde_json::Value, held: &Held) -> BTreeMap<String, u64> {
    let mut rings = BTreeMap::new();
    let mut seen = BTreeSet::new();
    let mut planned_total = 0;
    let cpus = aya::util::nr_cpus().expect("possible CPUs") as u64;
    for (ns, _, _, series) in TEAMS {
        let Some(p) = probe(report, ns) else { continue };
        let planned = &share(report, ns)["probes"][0];
        let ring = planned["plan"]["ringBytes"].as_u64().unwrap();
        let memory = p["memory_bytes"].as_u64().unwrap();
        assert_eq!(
            p["ring_bytes"].as_u64().unwrap(),
            ring,
            "{ns}: report and plan"
        );
        assert_eq!(planned["memoryBytes"].as_u64().unwrap(), memory);
        planned_total += memory;
        let maps: BTreeSet<u32> = p["program_ids"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|id| held.program_maps[&(id.as_u64().unwrap() as u32)].clone())
            .collect();
        assert!(!maps.is_empty(), "{ns}: its programs use no map");
        let kernel: Vec<&KernelMap> = maps.iter().map(|id| &held.maps[id]).collect();
        let rings_seen: Vec<u64> = kernel
            .iter()
            .filter(|m| m.map_type == BPF_MAP_TYPE_RINGBUF)
            .map(|m| m.max_entries)
            .collect();
        assert_eq!(rings_seen, [ring], "{ns}: the kernel's ring buffer");
        let hist: Vec<(u64, u64)> = kernel
            .iter()
            .filter(|m| m.map_type == BPF_MAP_TYPE_ARRAY && m.value_size > 8000)
            .map(|m| (m.max_entries, m.value_size))
            .collect();
        // One per series slot and possible CPU.
        assert_eq!(
            hist,
            [(
                (u64::from(series) + 1) * cpus,
                size_of::<LatencyHist>() as u64
            )],
            "{ns}: the kernel's histograms"
        );
        let locked: u64 = kernel.iter().map(|m| m.memlock).sum();
        assert!(
            locked <= memory,
            "{ns}: the kernel charges {locked} B for the maps of its programs, the plan counted {memory}"
        );
        seen.extend(maps);
        rings.insert(ns.to_owned(), ring);
    }
    // Every map the agent holds, a program's or its own, is some probe's:
    // the kernel never charges more than the plan, and the plan counts
    // little the kernel does not (the header allowances, maps a kind's
    // programs do not use).
    let locked: u64 = held.maps.values().map(|m| m.memlock).sum();
    let loaded = rings.len() as u64;
    assert!(
        locked <= planned_total,
        "the kernel charges {locked} B for all the agent's maps, the plan {planned_total} B"
    );
    assert!(
        planned_total - locked <= loaded * 16 * KIB,
        "the plan counts {planned_total} B, the kernel {locked} B: more than 16 KiB a probe apart"
    );
    assert!(
        report["node_plan"]["usedBytes"].as_u64().unwrap() == planned_total,
        "the node plan's total is the sum of the loaded probes'"
    );
    rings
}

#[test]
fn three_teams_share_a_small_node_budget_as_planned_and_fairly_whatever_their_priorities() {
    require_bpf_privileges();
    let cpus = aya::util::nr_cpus().expect("possible CPUs") as u64;
    let page = ringwarden_node_agent::probes::page_size() as u64;
    assert_eq!(page, 4096, "the rings below are sized for 4 KiB pages");
    let fixed = |series| fixed_bytes(&ProbeMaps::new(series), cpus, page);
    let (gold, silver, bronze) = (fixed(16), fixed(24), fixed(8));

    // Less than the three full rings: each namespace gets an equal third
    // (none asks less). Bronze, the lowest priority, has the smallest maps,
    // so its third holds its full ring; gold's and silver's larger maps
    // leave room for halved rings.
    let budget = gold
        + silver
        + bronze
        + 2 * ringbuf_bytes(RING, page)
        + ringbuf_bytes(32 * KIB, page)
        + KIB;
    let fair = BTreeMap::from([
        ("bronze".to_owned(), RING),
        ("gold".to_owned(), RING / 2),
        ("silver".to_owned(), RING / 4),
    ]);
    for reversed in [false, true] {
        let (report, held) = run(budget, 3, reversed);
        assert!(failures(&report).is_empty(), "{report}");
        let rings = check_against_kernel(&report, &held);
        assert_eq!(
            rings, fair,
            "no namespace's grant depends on another's priority (reversed: {reversed})"
        );
        let g = share(&report, "gold");
        assert!(g["grantedBytes"].as_u64() < g["requestedBytes"].as_u64());
        assert_eq!(g["otherProbesets"], 2);
        assert_eq!(g["otherNamespaces"], 2);
        let why = g["probes"][0]["plan"]["reasons"][1].as_str().unwrap();
        assert!(
            why.starts_with("halved once more to fit namespace gold's share of the node budget")
                && why.contains("with 2 other ProbeSets in 2 other namespaces"),
            "{why}"
        );
        assert!(report["node_plan"]["usedBytes"].as_u64().unwrap() <= budget);
    }
}
