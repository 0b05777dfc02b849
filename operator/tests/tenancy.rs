//! One hostile namespace beside a victim namespace and the platform's
//! ClusterProbeSet, through the operator's whole planning path (assess,
//! render the agents' configuration, share each node's budget as the agents
//! do): the hostile tenant declares the highest priority and rate it may,
//! 200 ProbeSets that select no node, SLOs on the platform's ClusterProbeSet
//! asking for no drops, and creates and deletes ProbeSets over and over.
//! The victim and the platform keep every probe, at least their fair share,
//! the same plan, and the platform's SLO its threshold slot.

mod common;

use std::sync::Arc;

use common::*;
use ringwarden_crds::{AgentConfig, ClusterProbeSet, ProbeSet, Slo, plan::plan_node};
use ringwarden_operator::reconcile::{render, slo::SloTarget, world::World};

const CPUS: u32 = 2;
const PAGE: u64 = 4096;
/// The platform's node budget.
const BUDGET: u64 = 64 << 20;

const VICTIM: &str = "
probes:
  - {name: sys, kind: syscalls, maxSeries: 64, peakEventRate: 2000, export: {policy: all}}
";
const HOSTILE: &str = "
ringBuffer: {nodeBudget: 64Gi}
probes:
  - {name: flood, kind: syscalls, maxSeries: 4096, priority: 1000, peakEventRate: 1e8,
     export: {policy: all}}
";
const NOWHERE: &str = "
nodeSelector: {no-such-label: nowhere}
probes:
  - {name: sys, kind: syscalls}
";

fn platform() -> ClusterProbeSet {
    let spec = serde_yaml_ng::from_str(
        "
sloNamespaces: [ops]
maxDropRate: 0.01
probes:
  - {name: sys, kind: syscalls, peakEventRate: 5000, export: {policy: all}}
  - {name: rq, kind: runqueue}
",
    )
    .unwrap();
    let mut c = ClusterProbeSet::new("platform", spec);
    c.metadata.generation = Some(1);
    c
}

fn on_platform(namespace: &str, name: &str, max_drop_rate: f64) -> Slo {
    slo(
        namespace,
        name,
        &format!(
            "{{clusterProbeSet: platform, probe: sys, indicator: {{latency: {{threshold: 5ms}}}}, \
             target: 99, maxDropRate: {max_drop_rate}}}"
        ),
    )
}

/// The agents' configuration for these objects on one node.
fn configuration(probesets: Vec<ProbeSet>, slos: &[Slo]) -> AgentConfig {
    let world = World {
        probesets: probesets.into_iter().map(Arc::new).collect(),
        cluster_probesets: vec![Arc::new(platform())],
        namespaces: ["ops", "shop", "evil"]
            .iter()
            .map(|n| (n.to_string(), Default::default()))
            .collect(),
        nodes: vec![("node-0".into(), Default::default())],
        slos: slos.iter().filter_map(SloTarget::from_slo).collect(),
        node_selector_labels: Default::default(),
        namespace_limits: Default::default(),
    };
    render::agent_config(&world.assess_all(), BUDGET)
}

/// What the node's agent loads: `(namespace, probe) → (ring bytes,
/// locked bytes)`; a probe it refuses is absent.
fn loaded(config: &AgentConfig) -> std::collections::BTreeMap<(String, String), (u64, u64)> {
    let planned = plan_node(&config.probes, config.node_budget_bytes, CPUS, PAGE).unwrap();
    config
        .probes
        .iter()
        .zip(&planned.probes)
        .zip(&planned.memory_bytes)
        .filter_map(|((p, outcome), memory)| {
            let planned = outcome.as_ref().ok()?;
            Some((
                (p.namespace.clone(), p.spec.name.clone()),
                (planned.ring_bytes, *memory),
            ))
        })
        .collect()
}

fn victim() -> ProbeSet {
    probeset("shop", "web", 1, VICTIM)
}

#[test]
fn a_hostile_namespace_takes_nothing_from_the_victim_or_the_platform() {
    let platform_slo = on_platform("ops", "platform-read", 0.01);
    // Alone: what the victim and the platform get without the tenant.
    let calm = configuration(vec![victim()], std::slice::from_ref(&platform_slo));
    let calm_loaded = loaded(&calm);

    // The hostile tenant: highest priority and rate, a huge request, 200
    // ProbeSets that select no node, and SLOs on the platform's probe
    // asking for no drops, named to sort before the platform's.
    let mut probesets = vec![victim(), probeset("evil", "flood", 1, HOSTILE)];
    probesets.extend((0..200).map(|i| probeset("evil", &format!("nowhere-{i}"), 1, NOWHERE)));
    let mut slos = vec![platform_slo.clone()];
    slos.extend((0..4).map(|i| on_platform("evil", &format!("a-{i}"), 0.0)));
    let hostile = configuration(probesets.clone(), &slos);
    let hostile_loaded = loaded(&hostile);

    // Nothing that selects no node reaches the agents.
    assert!(
        hostile
            .probes
            .iter()
            .all(|p| !p.probeset.starts_with("nowhere-")),
        "a ProbeSet selecting no node is in the configuration"
    );
    // The platform keeps every probe and its plan, whatever the tenant.
    for probe in ["sys", "rq"] {
        let key = (String::new(), probe.to_owned());
        assert_eq!(
            hostile_loaded.get(&key),
            calm_loaded.get(&key),
            "the platform's {probe}"
        );
        assert!(
            hostile_loaded.contains_key(&key),
            "the platform's {probe} is loaded"
        );
    }
    let platform_sys = |c: &AgentConfig| {
        c.probes
            .iter()
            .find(|p| p.namespace.is_empty() && p.spec.name == "sys")
            .unwrap()
            .clone()
    };
    let (calm_sys, hostile_sys) = (platform_sys(&calm), platform_sys(&hostile));
    assert_eq!(hostile_sys.max_drop_rate, 0.01, "no tenant SLO tightens it");
    assert_eq!(hostile_sys.sample_every, calm_sys.sample_every);
    // The platform's SLO keeps its threshold slot; the tenant's get none.
    let slots: Vec<&str> = hostile_sys
        .thresholds
        .iter()
        .map(|t| t.slo.as_str())
        .collect();
    assert_eq!(slots, ["ops/platform-read"]);

    // The victim keeps its probe, with at least its fair share: what the
    // platform leaves, halved between the two namespaces.
    let victim_key = ("shop".to_owned(), "sys".to_owned());
    let (_, victim_memory) = hostile_loaded[&victim_key];
    let platform_memory: u64 = hostile_loaded
        .iter()
        .filter(|((ns, _), _)| ns.is_empty())
        .map(|(_, (_, m))| m)
        .sum();
    let fair = (BUDGET - platform_memory) / 2;
    let (_, victim_asks) = calm_loaded[&victim_key];
    assert!(
        victim_memory >= victim_asks.min(fair),
        "the victim got {victim_memory} B, its fair share is {fair} B and it asks {victim_asks} B"
    );
    assert_eq!(hostile_loaded[&victim_key], calm_loaded[&victim_key]);
    let tenant: u64 = hostile_loaded
        .iter()
        .filter(|((ns, _), _)| ns == "evil")
        .map(|(_, (_, m))| m)
        .sum();
    assert!(tenant <= BUDGET - platform_memory - victim_memory);

    // ProbeSets created and deleted over and over never move the victim's
    // or the platform's plan.
    for round in 0..30 {
        let mut churned = probesets.clone();
        churned.extend((0..round % 7).map(|i| probeset("evil", &format!("churn-{i}"), 1, HOSTILE)));
        let now = loaded(&configuration(churned, &slos));
        assert_eq!(now[&victim_key], calm_loaded[&victim_key], "round {round}");
        for probe in ["sys", "rq"] {
            let key = (String::new(), probe.to_owned());
            assert_eq!(
                now[&key], calm_loaded[&key],
                "round {round}: the platform's {probe}"
            );
        }
    }
}
