//! From a ProbeSet to what agents run: the quota plan applied to each probe.
//! Pure; the operator and standalone mode both use it.

use ringwarden_core::{
    maps::ProbeMaps,
    planner::{
        self, EVENT_BYTES, PlanError, PlanInput, ProbeDemand,
        node::{self, NodeInput, NodePlan, NodeProbeDemand, ProbeSetDemand},
    },
    quantity,
};

use std::collections::BTreeMap;

use crate::{
    AgentProbe, ExportPolicy, PlanStatus, ProbeKind, ProbePlanStatus, ProbeSet, ProbeSetSpec,
    ProbeSpec,
    agent::{MAX_PROBES_ANNOTATION, MAX_THRESHOLDS, NamespaceLimits, UPROBES_ANNOTATION},
    probeset::FieldError,
    slo::Slo,
};

/// Why a ProbeSet could not be planned: its spec problems, or a budget the
/// planner cannot meet.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PlanProbeSetError {
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Invalid(Vec<FieldError>),
    #[error("spec.ringBuffer.nodeBudget: {0}")]
    Budget(String),
}

/// What each probe of `spec` asks of the planner, in order.
/// `max_drop_rates[i]` is the drop rate allowed for probe `i`: the
/// ProbeSet's, tightened by the SLOs that watch the probe. A probe that
/// exports nothing needs no event path, whatever rate it declares.
pub fn demands(spec: &ProbeSetSpec, max_drop_rates: &[f64]) -> Vec<ProbeDemand> {
    spec.probes
        .iter()
        .zip(max_drop_rates)
        .map(|(p, &max_drop_rate)| ProbeDemand {
            requested_sampling: p.sampling,
            drain_interval: spec.ring_buffer.drain_interval,
            burst_factor: spec.ring_buffer.burst_factor,
            priority: p.priority,
            ..ProbeDemand::new(
                p.name.clone(),
                EVENT_BYTES,
                if p.export.policy == ExportPolicy::None {
                    0.0
                } else {
                    p.peak_event_rate
                },
                max_drop_rate,
            )
        })
        .collect()
}

/// Plans one ProbeSet for nodes with `page_size`-byte pages: each probe's
/// ring size and sampling, and the status that explains them. SLOs on its
/// probes add exact kernel thresholds (at most [`MAX_THRESHOLDS`] per
/// probe, by SLO name) and tighten the allowed drop rate to the strictest.
pub fn plan_probeset(
    ps: &ProbeSet,
    slos: &[Slo],
    page_size: u64,
) -> Result<(Vec<AgentProbe>, PlanStatus), PlanProbeSetError> {
    let errors = ps.spec.validate();
    if !errors.is_empty() {
        return Err(PlanProbeSetError::Invalid(errors));
    }
    let spec = &ps.spec;
    let budget = quantity::parse_bytes(&spec.ring_buffer.node_budget).map_err(|e| {
        PlanProbeSetError::Invalid(vec![FieldError {
            field: "spec.ringBuffer.nodeBudget".into(),
            message: e,
        }])
    })?;
    let namespace = ps
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let name = ps.metadata.name.clone().unwrap_or_default();
    // The SLOs watching each probe, by name, so the choice of the first
    // MAX_THRESHOLDS is deterministic.
    let watching: Vec<Vec<(String, &Slo)>> = spec
        .probes
        .iter()
        .map(|p| {
            let mut w: Vec<(String, &Slo)> = slos
                .iter()
                .filter(|s| {
                    let slo_namespace = s.metadata.namespace.as_deref().unwrap_or("default");
                    let on_this = match &s.spec.cluster_probe_set {
                        // A ClusterProbeSet reads as a ProbeSet without a
                        // namespace (manifest::parse_str).
                        Some(c) => ps.metadata.namespace.is_none() && *c == name,
                        None => slo_namespace == namespace && s.spec.probe_set == name,
                    };
                    on_this && s.spec.probe == p.name && s.spec.validate().is_empty()
                })
                .map(|s| {
                    let id = format!(
                        "{}/{}",
                        s.metadata.namespace.as_deref().unwrap_or("default"),
                        s.metadata.name.as_deref().unwrap_or("")
                    );
                    (id, s)
                })
                .collect();
            w.sort_by(|a, b| a.0.cmp(&b.0));
            w
        })
        .collect();
    let max_drop_rates: Vec<f64> = watching
        .iter()
        .map(|w| {
            w.iter()
                .map(|(_, s)| s.spec.max_drop_rate)
                .fold(spec.max_drop_rate, f64::min)
        })
        .collect();
    let input = PlanInput {
        page_size,
        node_budget_bytes: budget,
        max_bytes_per_probe: planner::DEFAULT_MAX_BYTES_PER_PROBE,
        probes: demands(spec, &max_drop_rates),
    };
    let plan = planner::plan(&input).map_err(|e| PlanProbeSetError::Budget(e.to_string()))?;
    let probes = spec
        .probes
        .iter()
        .zip(&plan.probes)
        .zip(&watching)
        .enumerate()
        .map(|(i, ((p, pp), w))| AgentProbe {
            namespace: namespace.clone(),
            probeset: name.clone(),
            spec: p.clone(),
            node_selector: spec.node_selector.clone(),
            pod_selector: spec.pod_selector.clone(),
            namespaces: None,
            // Without an event path the ring still exists, at its minimum.
            ring_bytes: pp.ring_bytes.max(page_size),
            sample_every: pp.sample_every,
            predicted_drop: pp.predicted_drop,
            burst_factor: spec.ring_buffer.burst_factor,
            max_drop_rate: input.probes[i].max_drop_rate,
            drain_interval: spec.ring_buffer.drain_interval,
            report_interval: spec.report_interval,
            thresholds: w
                .iter()
                .take(MAX_THRESHOLDS)
                .filter_map(|(id, s)| s.spec.threshold(id.clone()))
                .collect(),
        })
        .collect();
    let status = PlanStatus {
        budget_bytes: plan.budget_bytes,
        used_bytes: plan.used_bytes,
        probes: plan
            .probes
            .iter()
            .map(|pp| ProbePlanStatus {
                name: pp.name.clone(),
                ring_bytes: pp.ring_bytes,
                sample_every: pp.sample_every,
                predicted_drop: pp.predicted_drop,
                reasons: pp.reasons.clone(),
            })
            .collect(),
        node_share: None,
    };
    Ok((probes, status))
}

/// The sizes of a probe's maps that scale with its spec and kind, as the
/// agent creates them: `maxSeries` histograms, and a start map for
/// [`ProbeMaps::START_ENTRIES`] in-flight events for kinds that pair by
/// kernel object (tcpConnect, blockIO, runqueue) or by goroutine (uprobe,
/// counted as a Go binary, whose map is the larger, since the binary is
/// known only on the node; goRuntime).
pub fn probe_maps(spec: &ProbeSpec) -> ProbeMaps {
    let mut maps = ProbeMaps::new(spec.max_series);
    match spec.kind {
        ProbeKind::TcpConnect | ProbeKind::BlockIo | ProbeKind::Runqueue => {
            maps.obj_start_entries = ProbeMaps::START_ENTRIES;
        }
        ProbeKind::Uprobe => maps.go_start_entries = ProbeMaps::START_ENTRIES,
        ProbeKind::GoRuntime => maps.go_runtime_entries = ProbeMaps::START_ENTRIES,
        ProbeKind::Syscalls | ProbeKind::TcpRetransmit => {}
    }
    maps
}

/// What the probe asks of the node plan: its event path as declared, its
/// maps, and the ring its ProbeSet's own plan gave it.
pub fn node_demand(p: &AgentProbe) -> NodeProbeDemand {
    NodeProbeDemand {
        demand: ProbeDemand {
            requested_sampling: p.spec.sampling,
            drain_interval: p.drain_interval,
            burst_factor: p.burst_factor,
            priority: p.spec.priority,
            ..ProbeDemand::new(
                p.spec.name.clone(),
                EVENT_BYTES,
                if p.spec.export.policy == ExportPolicy::None {
                    0.0
                } else {
                    p.spec.peak_event_rate
                },
                p.max_drop_rate,
            )
        },
        maps: probe_maps(&p.spec),
        ring_request: p.ring_bytes,
    }
}

/// A node's probes under its budget: the plan, and per probe (in the
/// order given) the probe as the agent loads it, or why it is not loaded.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeProbes {
    pub plan: NodePlan,
    pub probes: Vec<Result<AgentProbe, String>>,
    /// Per probe, in the order given: the locked bytes of its maps, ring
    /// included (0 when not loaded).
    pub memory_bytes: Vec<u64>,
}

/// Shares `node_budget_bytes` (0: no node budget) among `probes`, the
/// probes one node runs, on a node with `cpus` possible CPUs and
/// `page_size`-byte pages ([`node::plan_node`]), with every namespace's
/// defaults. See [`plan_node_limited`].
pub fn plan_node(
    probes: &[AgentProbe],
    node_budget_bytes: u64,
    cpus: u32,
    page_size: u64,
) -> Result<NodeProbes, PlanError> {
    plan_node_limited(probes, &BTreeMap::new(), node_budget_bytes, cpus, page_size)
}

/// Shares `node_budget_bytes` (0: no node budget) among `probes`, the
/// probes one node runs, on a node with `cpus` possible CPUs and
/// `page_size`-byte pages ([`node::plan_node`]), within what `limits`
/// allows each namespace (absent: [`NamespaceLimits::default`]). A probe
/// keeps its ProbeSet's own ring unless the node budget cuts it; one that
/// the node cannot hold at all, or that its namespace's limits rule out
/// (a uprobe where uprobes are not allowed, a probe past `maxProbes`, by
/// priority then ProbeSet and name), comes back as the reason it is not
/// loaded. A priority above the namespace's highest counts as the highest.
/// ClusterProbeSets' probes (namespace `""`) have no limits.
pub fn plan_node_limited(
    probes: &[AgentProbe],
    limits: &BTreeMap<String, NamespaceLimits>,
    node_budget_bytes: u64,
    cpus: u32,
    page_size: u64,
) -> Result<NodeProbes, PlanError> {
    let default = NamespaceLimits::default();
    let limit =
        |p: &AgentProbe| (!p.is_cluster()).then(|| limits.get(&p.namespace).unwrap_or(&default));
    let mut refused: Vec<Option<String>> = vec![None; probes.len()];
    for (i, p) in probes.iter().enumerate() {
        if let Some(l) = limit(p)
            && !l.uprobes
            && p.spec.kind.uses_uprobes()
        {
            refused[i] = Some(format!(
                "not loaded: namespace {} does not allow uprobes (its Namespace's {UPROBES_ANNOTATION} annotation is not \"true\")",
                p.namespace
            ));
        }
    }
    // Per namespace, the first maxProbes probes by priority, ProbeSet, name.
    let mut by_namespace: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, p) in probes.iter().enumerate() {
        if refused[i].is_none() && !p.is_cluster() {
            by_namespace
                .entry(p.namespace.as_str())
                .or_default()
                .push(i);
        }
    }
    for (ns, mut members) in by_namespace {
        let max = limits.get(ns).unwrap_or(&default).max_probes as usize;
        members.sort_by_key(|&i| {
            let p = &probes[i];
            (
                std::cmp::Reverse(p.spec.priority),
                &p.probeset,
                &p.spec.name,
                i,
            )
        });
        for &i in members.iter().skip(max) {
            refused[i] = Some(format!(
                "not loaded: namespace {ns} may run {max} probes (its Namespace's {MAX_PROBES_ANNOTATION} annotation)"
            ));
        }
    }
    // Grouped by ProbeSet, keeping where each probe came from.
    let mut groups: Vec<(ProbeSetDemand, Vec<usize>)> = Vec::new();
    for (i, p) in probes.iter().enumerate() {
        if refused[i].is_some() {
            continue;
        }
        let at = groups
            .iter()
            .position(|(g, _)| g.namespace == p.namespace && g.name == p.probeset);
        let at = at.unwrap_or_else(|| {
            groups.push((
                ProbeSetDemand {
                    namespace: p.namespace.clone(),
                    name: p.probeset.clone(),
                    probes: Vec::new(),
                },
                Vec::new(),
            ));
            groups.len() - 1
        });
        let mut demand = node_demand(p);
        if let Some(l) = limit(p) {
            demand.demand.priority = demand.demand.priority.min(l.max_priority);
        }
        groups[at].0.probes.push(demand);
        groups[at].1.push(i);
    }
    let plan = node::plan_node(&NodeInput {
        page_size,
        cpus,
        node_budget_bytes: if node_budget_bytes == 0 {
            u64::MAX
        } else {
            node_budget_bytes
        },
        max_bytes_per_probe: planner::DEFAULT_MAX_BYTES_PER_PROBE,
        probesets: groups.iter().map(|(g, _)| g.clone()).collect(),
        namespace_bytes: limits
            .iter()
            .filter(|(ns, _)| !ns.is_empty())
            .filter_map(|(ns, l)| Some((ns.clone(), l.node_bytes?)))
            .collect(),
    })?;
    let mut out: Vec<Result<AgentProbe, String>> = refused
        .into_iter()
        .map(|r| Err(r.unwrap_or_default()))
        .collect();
    let mut memory_bytes = vec![0; probes.len()];
    for ((_, indices), share) in groups.iter().zip(&plan.probesets) {
        for (&i, s) in indices.iter().zip(&share.probes) {
            memory_bytes[i] = s.memory_bytes;
            out[i] = if s.admitted {
                Ok(AgentProbe {
                    // Without an event path the ring still exists, at its minimum.
                    ring_bytes: s.plan.ring_bytes.max(page_size),
                    sample_every: s.plan.sample_every,
                    predicted_drop: s.plan.predicted_drop,
                    ..probes[i].clone()
                })
            } else {
                Err(s.plan.reasons.last().cloned().unwrap_or_default())
            };
        }
    }
    Ok(NodeProbes {
        plan,
        probes: out,
        memory_bytes,
    })
}

/// Fraction of all exported events of `spec` that `plan` predicts the ring
/// buffers drop when every probe runs at its declared rate: each probe's
/// predicted drop weighted by the events it exports (its `peakEventRate`
/// over its sampling). 0 when no probe exports.
pub fn predicted_drop(spec: &ProbeSetSpec, plan: &planner::Plan) -> f64 {
    let (mut dropped, mut exported) = (0.0, 0.0);
    for (p, pp) in spec.probes.iter().zip(&plan.probes) {
        if pp.ring_bytes == 0 {
            continue;
        }
        let rate = p.peak_event_rate / pp.sample_every as f64;
        dropped += rate * pp.predicted_drop;
        exported += rate;
    }
    if exported > 0.0 {
        dropped / exported
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{Manifest, parse_str};

    fn probeset(yaml: &str) -> ProbeSet {
        match parse_str("t.yaml", yaml).unwrap().remove(0) {
            Manifest::ProbeSet(ps) => *ps,
            Manifest::Slo(_) => panic!("not a ProbeSet"),
        }
    }

    #[test]
    fn a_probe_without_export_gets_one_page_and_no_sampling() {
        let ps = probeset(
            "apiVersion: ringwarden.dev/v1alpha1\nkind: ProbeSet\nmetadata: {name: a}\n\
             spec:\n  probes:\n    - {name: sys, kind: syscalls}\n",
        );
        let (probes, status) = plan_probeset(&ps, &[], 4096).unwrap();
        assert_eq!(probes[0].ring_bytes, 4096);
        assert_eq!(probes[0].sample_every, 1);
        assert_eq!(probes[0].namespace, "default");
        assert_eq!(status.probes[0].name, "sys");
    }

    #[test]
    fn exported_events_size_the_ring_from_the_declared_rate() {
        // 10 000 ev/s × 96 B × 100 ms × 2 = 192 000 B → 256 KiB.
        let ps = probeset(
            "apiVersion: ringwarden.dev/v1alpha1\nkind: ProbeSet\nmetadata: {name: a, namespace: web}\n\
             spec:\n  probes:\n    - {name: sys, kind: syscalls, export: {policy: all}, peakEventRate: 10000}\n",
        );
        let (probes, status) = plan_probeset(&ps, &[], 4096).unwrap();
        assert_eq!(probes[0].ring_bytes, 256 << 10);
        assert_eq!(status.used_bytes, 256 << 10);
        assert!(!status.probes[0].reasons.is_empty());
    }

    #[test]
    fn slos_add_thresholds_and_tighten_the_drop_rate() {
        let ps = probeset(
            "apiVersion: ringwarden.dev/v1alpha1\nkind: ProbeSet\nmetadata: {name: a, namespace: web}\n\
             spec:\n  maxDropRate: 0.5\n  ringBuffer: {nodeBudget: 8Ki}\n  probes:\n    - {name: sys, kind: syscalls, export: {policy: all}, peakEventRate: 100000}\n",
        );
        let slo = |name: &str, drop: f64| -> Slo {
            match parse_str(
                "s.yaml",
                &format!(
                    "apiVersion: ringwarden.dev/v1alpha1\nkind: SLO\nmetadata: {{name: {name}, namespace: web}}\n\
                     spec: {{probeSet: a, probe: sys, series: [read], indicator: {{latency: {{threshold: 5ms}}}}, \
                     target: 99, maxDropRate: {drop}}}\n"
                ),
            )
            .unwrap()
            .remove(0)
            {
                Manifest::Slo(s) => *s,
                Manifest::ProbeSet(_) => panic!("not an SLO"),
            }
        };
        let (loose, _) = plan_probeset(&ps, &[slo("b", 0.5)], 4096).unwrap();
        let (strict, _) = plan_probeset(&ps, &[slo("b", 0.5), slo("a", 0.001)], 4096).unwrap();
        let t = &strict[0].thresholds;
        assert_eq!(t.len(), 2);
        assert_eq!(t[0].slo, "web/a", "sorted by name");
        assert_eq!(t[0].latency_ns, Some(5_000_000));
        assert_eq!(t[0].series, ["read"]);
        // A tiny budget: the stricter drop rate forces sparser sampling.
        assert!(strict[0].sample_every > loose[0].sample_every);
    }

    #[test]
    fn standalone_runs_a_cluster_probeset_with_the_slos_that_name_it() {
        let ps = probeset(
            "apiVersion: ringwarden.dev/v1alpha1\nkind: ClusterProbeSet\nmetadata: {name: node}\n\
             spec:\n  namespaceSelector: {matchLabels: {team: retail}}\n  probes:\n    - {name: sys, kind: syscalls}\n",
        );
        assert_eq!(ps.metadata.namespace, None);
        let slo = |spec: &str| -> Slo {
            match parse_str(
                "s.yaml",
                &format!(
                    "apiVersion: ringwarden.dev/v1alpha1\nkind: SLO\nmetadata: {{name: fast, namespace: shop}}\n\
                     spec: {{{spec}, probe: sys, indicator: {{errors: {{}}}}, target: 99}}\n"
                ),
            )
            .unwrap()
            .remove(0)
            {
                Manifest::Slo(s) => *s,
                Manifest::ProbeSet(_) => panic!("not an SLO"),
            }
        };
        let slos = [slo("clusterProbeSet: node"), slo("probeSet: node")];
        let (probes, _) = plan_probeset(&ps, &slos, 4096).unwrap();
        // Observing the host, as everything in standalone mode does.
        assert_eq!(probes[0].namespaces, None);
        let ids: Vec<&str> = probes[0]
            .thresholds
            .iter()
            .map(|t| t.slo.as_str())
            .collect();
        assert_eq!(
            ids,
            ["shop/fast"],
            "only the SLO naming the ClusterProbeSet"
        );
        assert_eq!(
            slos[0].spec.find_probe(Some("shop"), [&ps]).unwrap().name,
            "sys"
        );
    }

    #[test]
    fn the_probesets_predicted_drop_weights_each_probe_by_the_events_it_exports() {
        // 20000 ev/s into 64 KiB drops 1 − 682/1000; 10000 ev/s into
        // 128 KiB nothing; the histogram-only probe exports nothing.
        let ps = probeset(
            "apiVersion: ringwarden.dev/v1alpha1\nkind: ProbeSet\nmetadata: {name: a}\n\
             spec:\n  maxDropRate: 0.5\n  ringBuffer: {nodeBudget: 192Ki}\n  probes:\n\
             \x20   - {name: a, kind: syscalls, export: {policy: all}, peakEventRate: 20000}\n\
             \x20   - {name: b, kind: syscalls, export: {policy: all}, peakEventRate: 10000}\n\
             \x20   - {name: c, kind: runqueue}\n",
        );
        let input = PlanInput {
            page_size: 4096,
            node_budget_bytes: 192 << 10,
            max_bytes_per_probe: planner::DEFAULT_MAX_BYTES_PER_PROBE,
            probes: demands(&ps.spec, &[0.5; 3]),
        };
        let plan = planner::plan(&input).unwrap();
        let rings: Vec<u64> = plan.probes.iter().map(|p| p.ring_bytes >> 10).collect();
        assert_eq!(rings, [64, 128, 0]);
        let a = 1.0 - 682.0 / 1000.0;
        assert!((plan.probes[0].predicted_drop - a).abs() < 1e-12);
        let expected = 20_000.0 * a / 30_000.0;
        assert!((predicted_drop(&ps.spec, &plan) - expected).abs() < 1e-12);

        let quiet = probeset(
            "apiVersion: ringwarden.dev/v1alpha1\nkind: ProbeSet\nmetadata: {name: a}\n\
             spec:\n  probes:\n    - {name: c, kind: runqueue}\n",
        );
        let (_, status) = plan_probeset(&quiet, &[], 4096).unwrap();
        let plan = planner::plan(&PlanInput {
            page_size: 4096,
            node_budget_bytes: 64 << 20,
            max_bytes_per_probe: planner::DEFAULT_MAX_BYTES_PER_PROBE,
            probes: demands(&quiet.spec, &[0.01]),
        })
        .unwrap();
        assert_eq!(status.probes[0].predicted_drop, 0.0);
        assert_eq!(predicted_drop(&quiet.spec, &plan), 0.0);
    }

    #[test]
    fn without_a_node_budget_each_probe_keeps_its_probesets_own_plan() {
        let ps = probeset(
            "apiVersion: ringwarden.dev/v1alpha1\nkind: ProbeSet\nmetadata: {name: a, namespace: web}\n\
             spec:\n  maxDropRate: 0.5\n  ringBuffer: {nodeBudget: 8Ki}\n  probes:\n\
             \x20   - {name: sys, kind: syscalls, export: {policy: all}, peakEventRate: 100000}\n\
             \x20   - {name: rq, kind: runqueue, maxSeries: 8}\n",
        );
        let (probes, _) = plan_probeset(&ps, &[], 4096).unwrap();
        let node = plan_node(&probes, 0, 2, 4096).unwrap();
        assert_eq!(
            node.probes,
            probes.iter().cloned().map(Ok).collect::<Vec<_>>()
        );
        let maps = &node.plan.probesets[0].probes;
        assert_eq!(
            maps[1].map_bytes,
            ringwarden_core::maps::fixed_bytes(&probe_maps(&probes[1].spec), 2, 4096)
        );
        // The runqueue probe pairs by task in a start map of 16 384 entries.
        assert!(maps[1].map_bytes > 16_384 * 96);
    }

    fn syscalls(ns: &str, name: &str, priority: i32, kind: &str) -> ProbeSet {
        let extra = if kind == "uprobe" {
            ", uprobe: {binary: /usr/bin/app, symbol: main}"
        } else {
            ""
        };
        probeset(&format!(
            "apiVersion: ringwarden.dev/v1alpha1\nkind: ProbeSet\nmetadata: {{name: {name}, namespace: {ns}}}\n\
             spec:\n  probes:\n\
             \x20   - {{name: sys, kind: {kind}{extra}, export: {{policy: all}}, peakEventRate: 10000, priority: {priority}, maxSeries: 8}}\n"
        ))
    }

    #[test]
    fn a_node_budget_cuts_rings_and_leaves_out_what_it_cannot_hold() {
        let mut probes = Vec::new();
        for (name, prio) in [("p", 1), ("q", 0)] {
            let ps = syscalls("a", name, prio, "syscalls");
            probes.extend(plan_probeset(&ps, &[], 4096).unwrap().0);
        }
        let fixed = ringwarden_core::maps::fixed_bytes(&probe_maps(&probes[0].spec), 2, 4096);
        let ring = |r| ringwarden_core::maps::ringbuf_bytes(r, 4096);
        let node = plan_node(
            &probes,
            2 * fixed + ring(256 << 10) + ring(64 << 10),
            2,
            4096,
        )
        .unwrap();
        assert_eq!(node.probes[0].as_ref().unwrap().ring_bytes, 256 << 10);
        assert_eq!(node.probes[1].as_ref().unwrap().ring_bytes, 64 << 10);
        let node = plan_node(&probes, fixed + ring(256 << 10), 2, 4096).unwrap();
        let why = node.probes[1].as_ref().unwrap_err();
        assert!(why.starts_with("not loaded: its maps take"), "{why}");
        assert!(
            why.contains("with 1 other ProbeSet in 0 other namespaces"),
            "{why}"
        );
    }

    #[test]
    fn across_namespaces_the_node_budget_is_shared_equally_whatever_the_priorities() {
        let mut probes = Vec::new();
        for (ns, prio) in [("a", 1000), ("b", -1000)] {
            probes.extend(
                plan_probeset(&syscalls(ns, "p", prio, "syscalls"), &[], 4096)
                    .unwrap()
                    .0,
            );
        }
        let fixed = ringwarden_core::maps::fixed_bytes(&probe_maps(&probes[0].spec), 2, 4096);
        let ring = |r| ringwarden_core::maps::ringbuf_bytes(r, 4096);
        let node = plan_node(&probes, 2 * fixed + 2 * ring(128 << 10), 2, 4096).unwrap();
        assert_eq!(node.probes[0].as_ref().unwrap().ring_bytes, 128 << 10);
        assert_eq!(node.probes[1].as_ref().unwrap().ring_bytes, 128 << 10);
    }

    #[test]
    fn the_agents_enforce_each_namespaces_limits() {
        // Namespace a: at most 1 probe, no uprobes, priorities up to 0,
        // and one ring of 64 KiB with its maps.
        let mut probes = Vec::new();
        for (ns, name, prio, kind) in [
            ("a", "p", 5, "syscalls"),
            ("a", "q", 7, "uprobe"),
            ("a", "r", 0, "syscalls"),
            ("b", "p", 0, "uprobe"),
        ] {
            probes.extend(
                plan_probeset(&syscalls(ns, name, prio, kind), &[], 4096)
                    .unwrap()
                    .0,
            );
        }
        let fixed = ringwarden_core::maps::fixed_bytes(&probe_maps(&probes[0].spec), 2, 4096);
        let ring = |r| ringwarden_core::maps::ringbuf_bytes(r, 4096);
        let limits = BTreeMap::from([(
            "a".to_owned(),
            NamespaceLimits {
                node_bytes: Some(fixed + ring(64 << 10)),
                max_probes: 1,
                uprobes: false,
                max_priority: 0,
            },
        )]);
        let node = plan_node_limited(&probes, &limits, 0, 2, 4096).unwrap();
        let why = node.probes[1].as_ref().unwrap_err();
        assert!(why.contains("does not allow uprobes"), "{why}");
        assert!(why.contains(UPROBES_ANNOTATION), "{why}");
        // p and r both count as priority 0: by ProbeSet name, p stays.
        assert_eq!(node.probes[0].as_ref().unwrap().ring_bytes, 64 << 10);
        let why = node.probes[2].as_ref().unwrap_err();
        assert!(why.contains("may run 1 probes"), "{why}");
        assert!(why.contains(MAX_PROBES_ANNOTATION), "{why}");
        // Namespace b has the defaults: its uprobe runs with all it asks.
        assert_eq!(node.probes[3].as_ref().unwrap().ring_bytes, 256 << 10);
        let a = &node.plan.probesets[0];
        assert_eq!(a.namespace_limit_bytes, Some(fixed + ring(64 << 10)));
        assert_eq!(node.memory_bytes[0], fixed + ring(64 << 10));
    }

    #[test]
    fn a_budget_too_small_is_an_error_naming_the_field() {
        let ps = probeset(
            "apiVersion: ringwarden.dev/v1alpha1\nkind: ProbeSet\nmetadata: {name: a}\n\
             spec:\n  ringBuffer: {nodeBudget: \"1Ki\"}\n  probes:\n    - {name: sys, kind: syscalls, export: {policy: all}, peakEventRate: 10}\n",
        );
        let e = plan_probeset(&ps, &[], 4096).unwrap_err().to_string();
        assert!(e.starts_with("spec.ringBuffer.nodeBudget: "), "{e}");
    }
}
